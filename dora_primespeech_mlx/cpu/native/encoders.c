/* Native kernels of the CPU encoders (HuBERT, RoBERTa): element-wise work, small convolutions and
 * attention around the BLAS products, on float32 rows.
 *
 * MLX's CPU backend compiles its fused element-wise kernels without -march (SSE2, no FMA) and runs
 * each on one thread, and joins its CPU streams through host synchronisation, so the softmax,
 * GELU, LayerNorm, im2col copies and grouped convolution between an encoder's matrix products
 * cost as much as the products themselves. These kernels are written with GCC's generic 16-float
 * vectors, cloned for AVX-512, AVX2+FMA and the baseline (picked at load time), and spread over the
 * library's worker pool (pool.c); products go to the cblas_sgemm bound by ps_bind_sgemm (the one
 * MLX itself calls: OpenBLAS).
 *
 * Accuracy (float32): exp relative error < 2e-7 (Cephes' expf polynomial), GELU absolute error
 * < 1e-6 (a rational erf fit), LayerNorm two-pass statistics in float32.
 * Every exported function returns 0, -1 when memory ran out, -2 for arguments it does not take.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "pool.h"

enum { MAX_JOBS = POOL_MAX_THREADS }; /* buffers (threads) per call */

/* Lanes of a where mask is set, else b (mask from a vector comparison: all ones or zeros). */
INLINE vf vselect(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

INLINE vf vmax(vf a, vf b) { return vselect(a > b, a, b); }

INLINE vf vmin(vf a, vf b) { return vselect(a < b, a, b); }

INLINE float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < W; i++) s += v[i];
    return s;
}

INLINE float hmax(vf v) {
    float m = v[0];
    for (int i = 1; i < W; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* exp(x): x = n ln2 + r with |r| <= ln2 / 2, a polynomial for exp(r) (Cephes expf), times 2^n
 * built in the exponent bits; 0 below -87.3 (where float32 has no normal result), so masked or
 * far-off scores weigh exactly nothing. NaN never reaches it (softmax subtracts a finite row
 * maximum). */
INLINE vf vexp(vf x) {
    vi underflow = x < -87.3365447505531f;
    x = vmax(vmin(x, (vf){} + 88.3762626647949f), (vf){} - 87.3365447505531f);
    vf fx = x * 1.44269504088896341f + 0.5f;
    vf n = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
    n = n - vselect(n > fx, (vf){} + 1.0f, (vf){}); /* floor */
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf z = x * x;
    vf y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x
            + 1.6666665459e-1f) * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return vselect(underflow, (vf){}, y * (vf)bits);
}

/* erf(y) ~ y P(y^2) / Q(y^2) on [-4, 4] (erf rounds to +-1 in float32 beyond): the least-squares
 * rational fit of models/kernels.py, here with GELU's scalings folded in: GELU(x) = x (1/2 + c
 * P'(c^2) / Q'(c^2)) with c = x clipped to +-4 sqrt 2. */
INLINE vf vgelu(vf x) {
    const float lim = 5.65685424949238f;
    vf c = vmax(vmin(x, (vf){} + lim), (vf){} - lim);
    vf z = c * c;
    vf p = (((((1.9498986028e-06f * 0.03125f) * z + 0.00029204062283f * 0.0625f) * z
              + 0.0041674864938f * 0.125f) * z + 0.053973118522f * 0.25f) * z
            + 0.20002909523f * 0.5f) * z + 1.1283788451f;
    vf q = (((((3.743163417e-05f * 0.03125f) * z + 0.0012566965953f * 0.0625f) * z
              + 0.01577179394f * 0.125f) * z + 0.11804471526f * 0.25f) * z
            + 0.51060108642f * 0.5f) * z + 1.0f;
    return x * (0.5f + (0.35355339059327373f * c) * p / q);
}

/* ---- row kernels ---- */

/* softmax(scale * row) in place, row of n floats. */
CLONES static void softmax_row(float *x, long n, float scale) {
    long i = 0;
    vf m = (vf){} - INFINITY;
    for (; i + W <= n; i += W) m = vmax(m, vload(x + i));
    float mx = hmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    vf s = (vf){};
    float ss = 0.0f;
    for (i = 0; i + W <= n; i += W) {
        vf e = vexp((vload(x + i) - mx) * scale);
        vstore(x + i, e);
        s += e;
    }
    if (i < n) {
        float tail[W] = {0};
        memcpy(tail, x + i, sizeof(float) * (size_t)(n - i));
        vf e = vexp((vload(tail) - mx) * scale);
        for (long j = 0; j < n - i; j++) {
            x[i + j] = e[j];
            ss += e[j];
        }
    }
    float inv = 1.0f / (hsum(s) + ss);
    for (i = 0; i + W <= n; i += W) vstore(x + i, vload(x + i) * inv);
    for (; i < n; i++) x[i] *= inv;
}

CLONES static void gelu_span(float *x, long n) {
    long i = 0;
    for (; i + W <= n; i += W) vstore(x + i, vgelu(vload(x + i)));
    if (i < n) {
        float tail[W] = {0};
        memcpy(tail, x + i, sizeof(float) * (size_t)(n - i));
        vf y = vgelu(vload(tail));
        for (long j = 0; j < n - i; j++) x[i + j] = y[j];
    }
}

/* out = LayerNorm(x + r) * w + b over one row of n (n a multiple of W); out may alias x or r. */
CLONES static void add_layer_norm_row(float *out, const float *x, const float *r, const float *w,
                                      const float *b, long n, float eps) {
    vf s = (vf){};
    for (long i = 0; i < n; i += W) {
        vf v = vload(x + i) + vload(r + i);
        vstore(out + i, v);
        s += v;
    }
    float mean = hsum(s) / (float)n;
    vf q = (vf){};
    for (long i = 0; i < n; i += W) {
        vf d = vload(out + i) - mean;
        q += d * d;
    }
    float rstd = 1.0f / sqrtf(hsum(q) / (float)n + eps);
    for (long i = 0; i < n; i += W)
        vstore(out + i, (vload(out + i) - mean) * rstd * vload(w + i) + vload(b + i));
}

/* Grouped 1-D convolution, channels-last: out[t, g*co + o] = bias[g*co + o] + sum over taps j and
 * input channels c of xp[t + j, g*ci + c] * w[g][j][c][o]. xp is the zero-padded input (row stride
 * `channels`) with R - 1 more rows than the convolution reads, w is [groups][kernel][ci][co] with co
 * a multiple of W, at most MAX_CO_VECS * W. A block of R output rows keeps R x (co / W)
 * accumulators in registers while the group's weights stream through once per block; `rows` (<= R)
 * of them are stored. */
enum { R = 8, MAX_CO_VECS = 3 };

CLONES static void grouped_conv_block(float *out, const float *xp, const float *w, const float *bias,
                                      long channels, long ci, long co, long kernel, long g, long t,
                                      long rows) {
    const long nv = co / W;
    vf acc[R][MAX_CO_VECS];
    for (long r = 0; r < R; r++)
        for (long v = 0; v < nv; v++) acc[r][v] = vload(bias + g * co + v * W);
    const float *wg = w + g * kernel * ci * co;
    const float *xg = xp + g * ci;
    for (long j = 0; j < kernel; j++) {
        for (long c = 0; c < ci; c++) {
            const float *wv = wg + (j * ci + c) * co;
            vf w0 = vload(wv);
            vf w1 = nv > 1 ? vload(wv + W) : (vf){}, w2 = nv > 2 ? vload(wv + 2 * W) : (vf){};
            const float *xc = xg + (t + j) * channels + c;
            for (long r = 0; r < R; r++) {
                float xs = xc[r * channels];
                acc[r][0] += xs * w0;
                if (nv > 1) acc[r][1] += xs * w1;
                if (nv > 2) acc[r][2] += xs * w2;
            }
        }
    }
    for (long r = 0; r < rows; r++)
        for (long v = 0; v < nv; v++) vstore(out + (t + r) * channels + g * co + v * W, acc[r][v]);
}

/* out[t, o] = GELU(shift[o] + sum over j < k of x[t * hop + j] * w[j][o]) for t < rows, o < c (a
 * multiple of W): a strided convolution of a one-channel signal with its bias and activation. */
CLONES static void small_conv_gelu_rows(float *out, const float *x, long rows, long hop, long k,
                                        const float *w, const float *shift, long c) {
    for (long t = 0; t < rows; t++) {
        const float *xt = x + t * hop;
        for (long o = 0; o < c; o += W) {
            vf acc = vload(shift + o);
            for (long j = 0; j < k; j++) acc += xt[j] * vload(w + j * c + o);
            vstore(out + t * c + o, vgelu(acc));
        }
    }
}

/* row[i] += bias[i], then GELU when `gelu`; n a multiple of W. */
CLONES static void bias_act_row(float *row, const float *bias, long n, int gelu) {
    for (long i = 0; i < n; i += W) {
        vf v = vload(row + i) + vload(bias + i);
        vstore(row + i, gelu ? vgelu(v) : v);
    }
}

/* The rows of one output pair p of a kernel-3 stride-2 convolution, from input rows r[i] = x[4p + i]
 * (NULL past the end: zeros): even = [r0 - r2, r1], odd = [r3, r4 - r2], mid = r2. */
CLONES static void pair_frames_row(float *even, float *odd, float *mid, const float *const *r, long c) {
    for (long i = 0; i < c; i += W) {
        vf x[5];
        for (int k = 0; k < 5; k++) x[k] = r[k] ? vload(r[k] + i) : (vf){};
        vstore(even + i, x[0] - x[2]);
        vstore(even + c + i, x[1]);
        vstore(odd + i, x[3]);
        vstore(odd + c + i, x[4] - x[2]);
        vstore(mid + i, x[2]);
    }
}

/* ---- products through the BLAS that MLX uses ---- */

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
static sgemm_fn blas_sgemm;

/* The cblas_sgemm to call (the one MLX's products resolve to); returns 0, or -1 for NULL. */
int ps_bind_sgemm(void *sgemm) {
    blas_sgemm = (sgemm_fn)sgemm;
    return sgemm == NULL ? -1 : 0;
}

typedef struct {
    int lane, lanes, heads;
    long dh, ld, total;
    float scale;
    float *const *q, *const *k, *const *v;
    const long *rows;
    float *out;
    int status;
} attention_job_t;

/* Softmax attention of one lane's queries (rows[lane] x heads * dh, row stride ld) against the keys
 * and values of every lane, head by head: the scores of one head stay in cache between the two
 * products and the softmax, and the output goes straight to its columns of `out`. */
static void attention_lane(attention_job_t *j) {
    long m = j->rows[j->lane];
    float *scores = malloc(sizeof(float) * (size_t)(m * j->total));
    if (scores == NULL) {
        j->status = -1;
        return;
    }
    /* Pieces that follow each other in memory (views of one array) are taken in one product. */
    int runs = 1;
    long run_rows[MAX_JOBS] = {j->rows[0]};
    const float *run_k[MAX_JOBS] = {j->k[0]}, *run_v[MAX_JOBS] = {j->v[0]};
    for (int l = 1; l < j->lanes; l++) {
        if (j->k[l] == run_k[runs - 1] + run_rows[runs - 1] * j->ld &&
            j->v[l] == run_v[runs - 1] + run_rows[runs - 1] * j->ld) {
            run_rows[runs - 1] += j->rows[l];
        } else {
            run_rows[runs] = j->rows[l];
            run_k[runs] = j->k[l];
            run_v[runs++] = j->v[l];
        }
    }
    for (int h = 0; h < j->heads; h++) {
        const float *q = j->q[j->lane] + h * j->dh;
        long col = 0;
        for (int l = 0; l < runs; l++) {
            blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, (int)m, (int)run_rows[l], (int)j->dh, 1.0f, q,
                       (int)j->ld, run_k[l] + h * j->dh, (int)j->ld, 0.0f, scores + col, (int)j->total);
            col += run_rows[l];
        }
        for (long i = 0; i < m; i++) softmax_row(scores + i * j->total, j->total, j->scale);
        col = 0;
        for (int l = 0; l < runs; l++) {
            blas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, (int)m, (int)j->dh, (int)run_rows[l], 1.0f,
                       scores + col, (int)j->total, run_v[l] + h * j->dh, (int)j->ld, l == 0 ? 0.0f : 1.0f,
                       j->out + h * j->dh, (int)j->ld);
            col += run_rows[l];
        }
    }
    free(scores);
    j->status = 0;
}

static void attention_task(void *arg, int index) {
    attention_lane(&((attention_job_t *)arg)[index]);
}

/* ---- jobs over threads ---- */

typedef struct {
    int kind;
    float *out;
    const float *x, *r, *w, *b;
    long rows, cols;
    float param;
    long t0, groups, kernel; /* grouped convolution: first output row, groups, taps */
    long hop, width;         /* windows and small convolutions: input step per row, window width */
    long k, n0;              /* linear: inner size, first output column */
    float *out2, *out3;      /* pair frames: odd and middle outputs; pair conv: odd and middle inputs */
    const float *w2;         /* pair conv: W0 + W2 */
} job_t;

enum { GELU = 1, ADD_LAYER_NORM = 2, GROUPED_CONV = 3, WINDOWS = 4, SMALL_CONV_GELU = 5, LINEAR = 6,
       PAIR_FRAMES = 7, PAIR_CONV = 8 };

static void run_kind(const job_t *j) {
    switch (j->kind) {
    case GELU:
        gelu_span(j->out, j->rows * j->cols);
        break;
    case ADD_LAYER_NORM:
        for (long i = 0; i < j->rows; i++)
            add_layer_norm_row(j->out + i * j->cols, j->x + i * j->cols, j->r + i * j->cols, j->w, j->b,
                               j->cols, j->param);
        break;
    case WINDOWS:
        for (long i = 0; i < j->rows; i++)
            memcpy(j->out + i * j->width, j->x + i * j->hop, sizeof(float) * (size_t)j->width);
        break;
    case SMALL_CONV_GELU:
        small_conv_gelu_rows(j->out, j->x, j->rows, j->hop, j->width, j->w, j->b, j->cols);
        break;
    case LINEAR: { /* columns [n0, n0 + width) of x @ w^T + b, then GELU when param != 0 */
        float *out = j->out + j->n0;
        blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, (int)j->rows, (int)j->width, (int)j->k, 1.0f, j->x, (int)j->k,
                   j->w + j->n0 * j->k, (int)j->k, 0.0f, out, (int)j->cols);
        for (long i = 0; i < j->rows; i++)
            bias_act_row(out + i * j->cols, j->b + j->n0, j->width, j->param != 0.0f);
        break;
    }
    case PAIR_FRAMES: /* pairs [t0, t0 + rows) of a kernel-3 stride-2 convolution's input, see ps_pair_conv */
        for (long p = j->t0; p < j->t0 + j->rows; p++) {
            long c = j->cols;
            const float *r[5];
            for (int i = 0; i < 5; i++) r[i] = 4 * p + i < j->width ? j->x + (4 * p + i) * c : NULL;
            float *even = j->out + p * 2 * c, *odd = j->out2 + p * 2 * c, *mid = j->out3 + p * c;
            pair_frames_row(even, odd, mid, r, c);
        }
        break;
    case PAIR_CONV: { /* columns [n0, n0 + width): y_even = mid (W0+W2) + even [W0; W1], y_odd = ... */
        int n = (int)j->width, m = (int)j->rows, ci = (int)j->k, ldy = (int)(2 * j->cols);
        float *even_out = j->out + j->n0, *odd_out = j->out + j->cols + j->n0;
        blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, ci, 1.0f, j->out3, ci, j->w2 + j->n0 * ci, ci, 0.0f,
                   even_out, ldy);
        for (long i = 0; i < m; i++)
            memcpy(odd_out + i * ldy, even_out + i * ldy, sizeof(float) * (size_t)n);
        const float *w01 = j->w + j->n0 * 3 * ci, *w12 = w01 + ci; /* [W0 W1] and [W1 W2] of each row */
        blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, 2 * ci, 1.0f, j->x, 2 * ci, w01, 3 * ci, 1.0f,
                   even_out, ldy);
        blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, 2 * ci, 1.0f, j->out2, 2 * ci, w12, 3 * ci, 1.0f,
                   odd_out, ldy);
        for (long i = 0; i < 2 * m; i++)
            bias_act_row(j->out + i * j->cols + j->n0, j->b + j->n0, n, j->param != 0.0f);
        break;
    }
    case GROUPED_CONV: {
        long ci = j->cols / j->groups;
        for (long g = 0; g < j->groups; g++)
            for (long t = j->t0; t < j->t0 + j->rows; t += R) {
                long n = j->t0 + j->rows - t;
                grouped_conv_block(j->out, j->x, j->w, j->b, j->cols, ci, ci, j->kernel, g, t,
                                   n < R ? n : R);
            }
        break;
    }
    }
}

static void run_job_task(void *arg, int index) { run_kind(&((job_t *)arg)[index]); }

static int run_jobs(job_t *jobs, int n) {
    pool_tasks(run_job_task, jobs, n, n);
    return 0;
}

/* ---- exported; the element-wise ones take `n` buffers (a thread each) of rows[i] x cols floats ---- */

int ps_conv_rows(void) { return R; }

/* x[i] = GELU(x[i]) (exact erf form). */
int ps_gelu(float **x, const long *rows, int n, long cols) {
    job_t jobs[MAX_JOBS];
    if (n < 1 || n > MAX_JOBS) return -2;
    for (int i = 0; i < n; i++) jobs[i] = (job_t){.kind = GELU, .out = x[i], .rows = rows[i], .cols = cols};
    return run_jobs(jobs, n);
}

/* out[i] = LayerNorm(x[i] + r[i]) * w + b over rows of cols (a multiple of 16); out[i] may be
 * x[i] or r[i]. */
int ps_add_layer_norm(float **out, float *const *x, float *const *r, const long *rows, int n, long cols,
                      const float *w, const float *b, float eps) {
    job_t jobs[MAX_JOBS];
    if (n < 1 || n > MAX_JOBS || cols % W != 0) return -2;
    for (int i = 0; i < n; i++)
        jobs[i] = (job_t){.kind = ADD_LAYER_NORM, .out = out[i], .x = x[i], .r = r[i], .w = w, .b = b,
                          .rows = rows[i], .cols = cols, .param = eps};
    return run_jobs(jobs, n);
}

/* out [t_out, channels] = grouped convolution of xp ([t_out + kernel - 1 + R - 1, channels], see
 * grouped_conv_block) with w [groups][kernel][ci][ci], plus bias; output rows split over `threads`. */
int ps_grouped_conv(float *out, const float *xp, long t_out, long channels, long groups, long kernel,
                    const float *w, const float *bias, int threads) {
    job_t jobs[MAX_JOBS];
    long ci = channels / groups;
    if (threads < 1 || threads > MAX_JOBS || channels % groups != 0 || ci % W != 0 ||
        ci > MAX_CO_VECS * W)
        return -2;
    long per = (t_out + threads - 1) / threads;
    per = (per + R - 1) / R * R;
    int n = 0;
    for (long t0 = 0; t0 < t_out && n < threads; t0 += per, n++) {
        long rows = t_out - t0 < per ? t_out - t0 : per;
        jobs[n] = (job_t){.kind = GROUPED_CONV, .out = out, .x = xp, .w = w, .b = bias, .rows = rows,
                          .cols = channels, .t0 = t0, .groups = groups, .kernel = kernel};
    }
    return run_jobs(jobs, n);
}

/* out[i] [rows[i], width] = the overlapping windows x[i][t * hop : t * hop + width] (im2col of a
 * channels-last strided convolution), one thread per buffer. */
int ps_windows(float **out, float *const *x, const long *rows, int n, long hop, long width) {
    job_t jobs[MAX_JOBS];
    if (n < 1 || n > MAX_JOBS) return -2;
    for (int i = 0; i < n; i++)
        jobs[i] = (job_t){.kind = WINDOWS, .out = out[i], .x = x[i], .rows = rows[i], .hop = hop,
                          .width = width};
    return run_jobs(jobs, n);
}

/* out[i] [rows[i], c] = GELU(shift + windows of x[i] (width k, step hop) @ w [k, c]), one thread per
 * buffer; c a multiple of 16. */
int ps_small_conv_gelu(float **out, float *const *x, const long *rows, int n, long hop, long k,
                       const float *w, const float *shift, long c) {
    job_t jobs[MAX_JOBS];
    if (n < 1 || n > MAX_JOBS || c % W != 0) return -2;
    for (int i = 0; i < n; i++)
        jobs[i] = (job_t){.kind = SMALL_CONV_GELU, .out = out[i], .x = x[i], .w = w, .b = shift,
                          .rows = rows[i], .cols = c, .hop = hop, .width = k};
    return run_jobs(jobs, n);
}

/* Softmax self-attention over a sequence held in `lanes` consecutive time pieces: piece i has
 * rows[i] frames of queries q[i], keys k[i] and values v[i] ([rows[i], heads * dh], row stride ld);
 * out[i] (same layout) receives softmax(scale q k^T) v of its queries over all keys. One thread
 * per piece; needs ps_bind_sgemm first. */
int ps_attention(int lanes, float *const *q, float *const *k, float *const *v, const long *rows, int heads,
                 long dh, long ld, float scale, float **out) {
    attention_job_t jobs[MAX_JOBS];
    if (blas_sgemm == NULL || lanes < 1 || lanes > MAX_JOBS || ld < heads * dh) return -2;
    long total = 0;
    for (int i = 0; i < lanes; i++) total += rows[i];
    for (int i = 0; i < lanes; i++)
        jobs[i] = (attention_job_t){.lane = i, .lanes = lanes, .heads = heads, .dh = dh, .ld = ld,
                                    .total = total, .scale = scale, .q = q, .k = k, .v = v, .rows = rows,
                                    .out = out[i]};
    pool_tasks(attention_task, jobs, lanes, lanes);
    int status = 0;
    for (int i = 0; i < lanes; i++)
        if (jobs[i].status != 0) status = jobs[i].status;
    return status;
}

/* out [m, n] = x [m, k] @ w [n, k]^T + bias (then GELU when `gelu`), the output columns split over
 * `threads` threads (multiples of 16 each; each reads only its rows of w); needs ps_bind_sgemm. */
int ps_linear(float *out, const float *x, long m, long k, const float *w, const float *bias, long n, int gelu,
              int threads) {
    job_t jobs[MAX_JOBS];
    if (blas_sgemm == NULL || threads < 1 || threads > MAX_JOBS || n % W != 0 || n == 0) return -2;
    long per = (n / W + threads - 1) / threads * W;
    int count = 0;
    for (long n0 = 0; n0 < n; n0 += per)
        jobs[count++] = (job_t){.kind = LINEAR, .out = out, .x = x, .w = w, .b = bias, .rows = m, .cols = n,
                                .param = gelu ? 1.0f : 0.0f, .k = k, .n0 = n0,
                                .width = n - n0 < per ? n - n0 : per};
    return run_jobs(jobs, count);
}

/* A kernel-3 stride-2 convolution (channels-last, weight w [n][3][ci], bias, then GELU when `gelu`)
 * of x [x_rows, ci] for output rows 2p and 2p + 1, p < pairs, with five products per pair instead
 * of six: y[2p] = W0 x[4p] + W1 x[4p+1] + W2 x[4p+2] = (x[4p] - x[4p+2]) W0 + x[4p+1] W1 + S and
 * y[2p+1] = x[4p+3] W1 + (x[4p+4] - x[4p+2]) W2 + S share S = x[4p+2] (W0 + W2); w02 holds W0 + W2
 * [n][ci]. Rows past x_rows count as zeros (their outputs are not valid rows). even/odd [pairs,
 * 2 ci] and mid [pairs, ci] are work buffers; y is [2 pairs, n]. Threads split the pairs for the
 * frames and the output columns for the products; needs ps_bind_sgemm. */
int ps_pair_conv(float *y, const float *x, long x_rows, long ci, const float *w, const float *w02,
                 const float *bias, long n, int gelu, long pairs, float *even, float *odd, float *mid,
                 int threads) {
    job_t jobs[MAX_JOBS];
    if (blas_sgemm == NULL || threads < 1 || threads > MAX_JOBS || ci % W != 0 || n % W != 0 || pairs < 1)
        return -2;
    int count = 0;
    for (int i = 0; i < threads; i++) {
        long p0 = pairs * i / threads, p1 = pairs * (i + 1) / threads;
        if (p1 > p0)
            jobs[count++] = (job_t){.kind = PAIR_FRAMES, .out = even, .out2 = odd, .out3 = mid, .x = x,
                                    .t0 = p0, .rows = p1 - p0, .cols = ci, .width = x_rows};
    }
    run_jobs(jobs, count);
    long per = (n / W + threads - 1) / threads * W;
    count = 0;
    for (long n0 = 0; n0 < n; n0 += per)
        jobs[count++] = (job_t){.kind = PAIR_CONV, .out = y, .x = even, .out2 = odd, .out3 = mid, .w = w,
                                .w2 = w02, .b = bias, .rows = pairs, .cols = n, .k = ci, .n0 = n0,
                                .width = n - n0 < per ? n - n0 : per, .param = gelu ? 1.0f : 0.0f};
    return run_jobs(jobs, count);
}
