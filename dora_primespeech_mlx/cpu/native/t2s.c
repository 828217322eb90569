/* One decode step of GPT-SoVITS's T2S transformer for a batch of rows, and the attention of its
 * prefill, on the CPU.
 *
 * The decode step is memory-bound, so t2s_step does the whole step in one call and reads as little
 * as it can: each weight once per step for all rows, from the packed panels of panels.c (float16
 * when the model's values are exactly float16: upstream stores its checkpoints in half precision,
 * so nothing is rounded), and each row's keys and values once, laid out for 16-position vectors.
 * Arithmetic is float32 throughout. The threads of the library's pool (the caller and, on two
 * cores, one helper) meet at barriers between the phases of a layer.
 *
 * Layouts (row-major, float32 unless said):
 *   weights: panels of 32 output features (panels.h);
 *   keys:    per layer [cache rows][heads][capacity / 16][head_dim][16] (16 positions per vector);
 *   values:  per layer [cache rows][heads][capacity][head_dim].
 * The exported functions return 0, or -2 for arguments they do not take.
 */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "common.h"
#include "panels.h"
#include "pool.h"

enum { AHEAD = 64, MAX_HEAD_DIM = 128, MAX_ROWS = 64, SPINS = 20000 };
enum { P_QKV_W, P_QKV_B, P_OUT_W, P_OUT_B, P_FF1_W, P_FF1_B, P_FF2_W, P_FF2_B, P_LN1_W, P_LN1_B, P_LN2_W,
       P_LN2_B, PARAMS_PER_LAYER };

/* exp(x) for x <= 0: 2^n * e^r with |r| <= ln2 / 2 and a degree-6 polynomial for e^r (relative
 * error ~2e-7); below -87 the result is 0 (the softmax weight of a position that far down). */
INLINE vf vexp_nonpositive(vf x) {
    const vi keep = x > -87.0f;
    x = (vf)((vi)x & keep); /* masked lanes compute exp(0) and are zeroed below */
    const vf shifter = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf t = x * 1.44269504088896341f + shifter;
    vf n = t - shifter;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi scale = ((vi)t - (vi)shifter + 127) << 23;
    return (vf)((vi)(p * (vf)scale) & keep);
}

/* ---------------------------------------------------------------- attention of the new position */

typedef struct {
    const float *qkv; /* [rows][3 * dims]: q | k | v of the new position */
    float *keys, *values, *context; /* layer caches; context [rows][dims] */
    const int *cache_rows, *valid_from;
    int heads, head_dim, dims;
    long capacity, offset;
    float scale;
    float *scores; /* [capacity] for this thread */
} attention_t;

/* Key and value of position `at` into one row/head's caches (kt: key tiles, vv: value rows). */
INLINE void write_kv(const int hd, float *kt, float *vv, long at, const float *k, const float *v) {
    for (int d = 0; d < hd; d++) {
        kt[(at / LANES) * hd * LANES + (long)d * LANES + at % LANES] = k[d];
        vv[at * hd + d] = v[d];
    }
}

/* ctx[hd] = softmax(qs . keys[from..to]) @ values[from..to] for one row/head (qs already scaled;
 * s: scratch for the scores); `hd` is a constant after inlining, so the head's vectors stay in
 * registers. */
INLINE void attend_range(const int hd, const float *qs, const float *kt, const float *vv, long from, long to,
                         float *s, float *ctx) {
    const long b0 = from / LANES, b1 = to / LANES;
    /* The caches come from memory, one row/head after another: prefetch AHEAD blocks (positions)
     * in front of both streams so that many lines are in flight. */
    for (long b = b0; b <= b1; b++) {
        const float *kb = kt + b * hd * LANES;
        vf acc0 = splat(0.0f), acc1 = splat(0.0f);
        int d = 0;
        for (; d + 1 < hd; d += 2) {
            __builtin_prefetch(kb + (AHEAD + d) * LANES);
            __builtin_prefetch(kb + (AHEAD + d + 1) * LANES);
            acc0 += splat(qs[d]) * load(kb + (long)d * LANES);
            acc1 += splat(qs[d + 1]) * load(kb + (long)(d + 1) * LANES);
        }
        if (d < hd) acc0 += splat(qs[d]) * load(kb + (long)d * LANES);
        store(s + (b - b0) * LANES, acc0 + acc1);
    }
    const long first = from - b0 * LANES, last = to - b0 * LANES, span = (b1 - b0 + 1) * LANES;
    for (long i = 0; i < first; i++) s[i] = -INFINITY;
    for (long i = last + 1; i < span; i++) s[i] = -INFINITY;
    vf top = splat(-INFINITY);
    for (long i = 0; i < span; i += LANES) {
        vf v = load(s + i);
        vi more = v > top;
        top = (vf)(((vi)v & more) | ((vi)top & ~more));
    }
    float peak = top[0];
    for (int l = 1; l < LANES; l++) peak = top[l] > peak ? top[l] : peak;
    vf total = splat(0.0f);
    for (long i = 0; i < span; i += LANES) {
        vf e = vexp_nonpositive(load(s + i) - peak);
        store(s + i, e);
        total += e;
    }
    float sum = 0.0f;
    for (int l = 0; l < LANES; l++) sum += total[l];
    /* two interleaved sums (even and odd positions) halve the FMA dependency chains */
    vf even[MAX_HEAD_DIM / LANES], odd[MAX_HEAD_DIM / LANES];
    const int vecs = hd / LANES;
    for (int j = 0; j < vecs; j++) even[j] = odd[j] = splat(0.0f);
    long i = first;
    for (; i + 1 <= last; i += 2) {
        const vf w0 = splat(s[i]), w1 = splat(s[i + 1]);
        const float *v = vv + (b0 * LANES + i) * hd;
        for (int j = 0; j < 2 * vecs; j++) __builtin_prefetch(v + AHEAD * LANES + j * LANES);
        for (int j = 0; j < vecs; j++) {
            even[j] += w0 * load(v + j * LANES);
            odd[j] += w1 * load(v + hd + j * LANES);
        }
    }
    if (i <= last) {
        const vf w0 = splat(s[i]);
        const float *v = vv + (b0 * LANES + i) * hd;
        for (int j = 0; j < vecs; j++) even[j] += w0 * load(v + j * LANES);
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < vecs; j++) store(ctx + j * LANES, (even[j] + odd[j]) * inv);
}

INLINE void head_caches(const attention_t *t, int cache_row, int head, int hd, float **kt, float **vv) {
    *kt = t->keys + ((long)cache_row * t->heads + head) * (t->capacity / LANES) * hd * LANES;
    *vv = t->values + ((long)cache_row * t->heads + head) * t->capacity * hd;
}

/* Decode: the new position's key/value at `offset`, then its query over [valid_from, offset]. */
INLINE void attend_new(const int hd, const attention_t *t, int row, int head) {
    float *kt, *vv, qs[MAX_HEAD_DIM];
    head_caches(t, t->cache_rows[row], head, hd, &kt, &vv);
    const float *q = t->qkv + (long)row * 3 * t->dims + (long)head * hd;
    write_kv(hd, kt, vv, t->offset, q + t->dims, q + 2 * t->dims);
    for (int d = 0; d < hd; d++) qs[d] = q[d] * t->scale;
    attend_range(hd, qs, kt, vv, t->valid_from ? t->valid_from[row] : 0, t->offset, t->scores,
                 t->context + (long)row * t->dims + (long)head * hd);
}

/* Prefill of row `row` (cache row `row`; positions 0..offset-1, left-padded by valid_from[row],
 * text positions below n_text): every key/value into the caches, then text queries over the row's
 * text and audio queries over its text and the audio up to themselves; padded queries get zeros. */
INLINE void attend_prefill(const int hd, const attention_t *t, int row, int head, long n_text) {
    float *kt, *vv, qs[MAX_HEAD_DIM];
    head_caches(t, row, head, hd, &kt, &vv);
    const long length = t->offset, pad = t->valid_from ? t->valid_from[row] : 0;
    for (long i = 0; i < length; i++) {
        const float *q = t->qkv + ((long)row * length + i) * 3 * t->dims + (long)head * hd;
        write_kv(hd, kt, vv, i, q + t->dims, q + 2 * t->dims);
    }
    for (long i = 0; i < length; i++) {
        float *ctx = t->context + ((long)row * length + i) * t->dims + (long)head * hd;
        if (i < pad) {
            memset(ctx, 0, sizeof(float) * (size_t)hd);
            continue;
        }
        const float *q = t->qkv + ((long)row * length + i) * 3 * t->dims + (long)head * hd;
        for (int d = 0; d < hd; d++) qs[d] = q[d] * t->scale;
        attend_range(hd, qs, kt, vv, pad, i < n_text ? n_text - 1 : i, t->scores, ctx);
    }
}

/* n_text < 0: a decode step's new position; else the prefill of a row. */
CLONES static void attend(const attention_t *t, int row, int head, long n_text) {
    switch (t->head_dim) {
    case 16: n_text < 0 ? attend_new(16, t, row, head) : attend_prefill(16, t, row, head, n_text); break;
    case 32: n_text < 0 ? attend_new(32, t, row, head) : attend_prefill(32, t, row, head, n_text); break;
    case 64: n_text < 0 ? attend_new(64, t, row, head) : attend_prefill(64, t, row, head, n_text); break;
    default:
        n_text < 0 ? attend_new(t->head_dim, t, row, head) : attend_prefill(t->head_dim, t, row, head, n_text);
        break;
    }
}

/* x <- LayerNorm(x) over `dims`, two-pass statistics. */
static void layer_norm(float *x, long dims, const float *w, const float *b, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (long i = 0; i < dims; i++) mean += x[i];
    mean /= (float)dims;
    for (long i = 0; i < dims; i++) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / sqrtf(var / (float)dims + eps);
    for (long i = 0; i < dims; i++) x[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

/* ---------------------------------------------------------------- the step */

typedef struct {
    int layers, dims, heads, ffn, vocab, half, rows;
    long capacity, offset;
    float eps;
    void *const *params;      /* PARAMS_PER_LAYER per layer, then the logits panels */
    float *const *caches;     /* keys, values per layer */
    const int *cache_rows, *valid_from;
    float *x, *logits;        /* [rows][dims] in (embedded new code) and out (last hidden); [rows][vocab] */
    float *qkv, *context, *hidden, *ffn_buf, *scores; /* scratch; scores [threads][capacity] */
    atomic_int arrived, phase; /* the step's barrier: threads arrived, and its flips so far (mod 2) */
} step_t;

/* Waits until every thread of the step has arrived; `phase` is this thread's count of barriers
 * passed (mod 2), which the last thread to arrive publishes. */
static void barrier(step_t *s, int threads, int *phase) {
    if (threads == 1) return;
    const int next = !*phase;
    *phase = next;
    if (atomic_fetch_add(&s->arrived, 1) == threads - 1) {
        atomic_store(&s->arrived, 0);
        atomic_store(&s->phase, next);
        return;
    }
    for (int spin = 0; atomic_load(&s->phase) != next; spin++) {
        if (spin < SPINS) cpu_relax();
        else sched_yield();
    }
}

static void step_body(step_t *s, int tid, int threads) {
    const long d = s->dims;
    long r0, r1;
    int phase = 0;
    for (int layer = 0; layer < s->layers; layer++) {
        void *const *p = s->params + (long)layer * PARAMS_PER_LAYER;
        product_t qkv = {s->x, p[P_QKV_W], s->half, s->rows, d, 3 * d, p[P_QKV_B], NULL, 0, s->qkv, 3 * d};
        run_product(&qkv, tid, threads);
        barrier(s, threads, &phase);
        attention_t att = {s->qkv, s->caches[2 * layer], s->caches[2 * layer + 1], s->context,
                           s->cache_rows, s->valid_from, s->heads, (int)(d / s->heads), (int)d,
                           s->capacity, s->offset, 1.0f / sqrtf((float)(d / s->heads)),
                           s->scores + tid * s->capacity};
        long t0, t1;
        share((long)s->rows * s->heads, tid, threads, &t0, &t1);
        for (long task = t0; task < t1; task++) attend(&att, (int)(task / s->heads), (int)(task % s->heads), -1);
        barrier(s, threads, &phase);
        product_t out = {s->context, p[P_OUT_W], s->half, s->rows, d, d, p[P_OUT_B], s->x, 0, s->hidden, d};
        run_product(&out, tid, threads);
        barrier(s, threads, &phase);
        share(s->rows, tid, threads, &r0, &r1);
        for (long r = r0; r < r1; r++) layer_norm(s->hidden + r * d, d, p[P_LN1_W], p[P_LN1_B], s->eps);
        barrier(s, threads, &phase);
        product_t ff1 = {s->hidden, p[P_FF1_W], s->half, s->rows, d, s->ffn, p[P_FF1_B], NULL, 1, s->ffn_buf,
                         s->ffn};
        run_product(&ff1, tid, threads);
        barrier(s, threads, &phase);
        product_t ff2 = {s->ffn_buf, p[P_FF2_W], s->half, s->rows, s->ffn, d, p[P_FF2_B], s->hidden, 0, s->x, d};
        run_product(&ff2, tid, threads);
        barrier(s, threads, &phase);
        for (long r = r0; r < r1; r++) layer_norm(s->x + r * d, d, p[P_LN2_W], p[P_LN2_B], s->eps);
        barrier(s, threads, &phase);
    }
    product_t logits = {s->x, s->params[(long)s->layers * PARAMS_PER_LAYER], s->half, s->rows, d, s->vocab,
                        NULL, NULL, 0, s->logits, s->vocab};
    run_product(&logits, tid, threads);
}
static void step_job(void *arg, int tid, int threads) { step_body((step_t *)arg, tid, threads); }

typedef struct {
    attention_t att;
    long n_text, rows;
} prefill_t;

static void prefill_job(void *arg, int tid, int threads) {
    const prefill_t *p = (const prefill_t *)arg;
    attention_t att = p->att;
    att.scores += tid * att.capacity;
    long t0, t1;
    share((long)att.heads * p->rows, tid, threads, &t0, &t1);
    for (long task = t0; task < t1; task++) attend(&att, (int)(task / att.heads), (int)(task % att.heads), p->n_text);
}

/* Whether attention takes `heads` heads of a `dims`-wide model over caches of `capacity` positions. */
static int heads_supported(long dims, long heads, long capacity) {
    return heads >= 1 && dims % heads == 0 && (dims / heads) % LANES == 0 && dims / heads <= MAX_HEAD_DIM &&
           capacity % LANES == 0;
}

/* dims: layers, model dims, heads, ffn dims, vocab, half (0/1), rows, capacity, offset, threads.
 * x [rows][dims] holds the embedded new codes and receives the last hidden state; logits [rows][vocab]. */
int t2s_step(const long *dims, float eps, void *const *params, float *const *caches, const int *cache_rows,
             const int *valid_from, float *x, float *logits, float *const *scratch) {
    step_t s = {(int)dims[0], (int)dims[1], (int)dims[2], (int)dims[3], (int)dims[4], (int)dims[5],
                (int)dims[6], dims[7], dims[8], eps, params, caches, cache_rows, valid_from,
                x, logits, scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], 0, 0};
    if (s.layers < 1 || !heads_supported(s.dims, s.heads, s.capacity) || s.rows < 1 || s.rows > MAX_ROWS ||
        s.offset < 0 || s.offset >= s.capacity)
        return -2;
    for (int r = 0; r < s.rows; r++)
        if (valid_from && (valid_from[r] < 0 || valid_from[r] > s.offset)) return -2;
    pool_run(step_job, &s, (int)dims[9]);
    return 0;
}

/* One layer's prefill attention. dims: rows, positions, model dims, heads, capacity, n_text, threads.
 * qkv [rows][positions][3 * dims] (q | k | v); keys/values: the layer's caches, cache row r = row r,
 * filled at positions 0..positions-1; valid_from [rows]: each row's left padding (NULL: none);
 * context [rows][positions][dims]; scores [threads][capacity] scratch. */
int t2s_prefill_attention(const long *dims, const float *qkv, float *keys, float *values, const int *valid_from,
                          float *context, float *scores) {
    const long rows = dims[0], length = dims[1], d = dims[2], heads = dims[3], capacity = dims[4];
    if (rows < 1 || length < 1 || !heads_supported(d, heads, capacity) || length > capacity || dims[5] < 1 ||
        dims[5] > length)
        return -2;
    for (long r = 0; r < rows; r++)
        if (valid_from && (valid_from[r] < 0 || valid_from[r] >= dims[5])) return -2;
    prefill_t p = {{qkv, keys, values, context, NULL, valid_from, (int)heads, (int)(d / heads), (int)d, capacity,
                    length, 1.0f / sqrtf((float)(d / heads)), scores},
                   dims[5], rows};
    pool_run(prefill_job, &p, (int)dims[6]);
    return 0;
}
