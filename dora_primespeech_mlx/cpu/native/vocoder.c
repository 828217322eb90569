/* Direct 1-D convolutions of the SoVITS vocoder (HiFi-GAN ResBlock1, transposed and output
 * convolutions), on float32 channels-last rows, spread over the library's worker pool (pool.c).
 * Every exported function returns 0, -1 when memory ran out, -2 for arguments it does not take.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "pool.h"

enum { MAX_JOBS = POOL_MAX_THREADS }; /* threads per call */

/* ---- direct 1-D convolution of the vocoder (HiFi-GAN ResBlock1, transposed and output convolutions) ----
 * out[t, :] = act_out(bias + residual[t, :] + sum over taps j and input channels c of
 *             act_in(x)[t + j * dilation - pad, c] * w[j][c][:]) (then (sum[t, :] + that) * scale
 * where `sum` is given) for t < T_out, with x [T, C_in] zero outside [0, T). Channels-last rows;
 * C_out a multiple of 16. T_out = T with pad = dilation (k - 1) / 2 is a 'same' convolution; a
 * transposed convolution of stride s is one too, on blocks of s output rows (see native_ops.py).
 *
 * MLX runs these as one BLAS product per tap over the whole sequence (k passes over memory, BLAS
 * call overheads that dominate at 16-64 channels) and its element-wise kernels single-threaded.
 * Here the threads take chunks of output rows as they come free: a chunk's input window (halo
 * included, zero padded) is activated once into the thread's scratch, then register-blocked tiles
 * of MR rows x NV * 16 output channels accumulate over every tap and input channel with broadcast
 * FMAs, streaming the weights packed once per layer as [cout / NR][kernel][cin][NR] (NR = 32
 * output channels, or 16 where cout is not a multiple of 32), and write the epilogue. Tile shapes
 * per instruction set (their accumulators fill the vector registers): AVX-512 12 x 32 and 24 x 16,
 * AVX2 6 x 16, baseline 3 x 16. */

typedef struct {
    float *out;
    const float *x, *residual, *sum, *wp, *bias;
    long t, t_out, cin, cout, kernel, dilation, pad, nr; /* t: input rows */
    float slope_in, slope_out, scale;
    int act_in, act_out;
} vconv_t;

/* The tiles, for vectors VT of L floats (VI: their comparison masks): a tile is `rows` (<= mr)
 * output rows x nv vectors of channels starting at window row 0 of `xw` (row stride cin), weights
 * `wp` (row stride ldw per (tap, input channel)); `o` is the tile's first output element (row stride
 * cout), as are `res` and `sum` where given. mr, nv (and fixed_cin, the input width where it is a
 * constant, else 0) are constants after inlining, so the accumulators stay in registers. Written
 * once for 16-, 8- and 4-float vectors: GCC lowers 16-float vectors poorly on AVX2. */
#define VCONV_KERNELS(SUFFIX, VT, VI, L)                                                                   \
    INLINE VT vload##SUFFIX(const float *p) {                                                          \
        VT v;                                                                                          \
        memcpy(&v, p, sizeof v);                                                                       \
        return v;                                                                                      \
    }                                                                                                  \
                                                                                                       \
    INLINE VT leaky##SUFFIX(VT v, float slope) {                                                       \
        VT s = v * slope;                                                                              \
        VI mask = v > 0.0f;                                                                            \
        return (VT)(((VI)v & mask) | ((VI)s & ~mask));                                                 \
    }                                                                                                  \
                                                                                                       \
    INLINE void vconv_tile##SUFFIX(const vconv_t *a, float *o, const float *res, const float *sum,      \
                                   const float *xw, const float *wp, const float *bias, long ldw,      \
                                   long rows, const int mr, const int nv, const long fixed_cin) {      \
        VT acc[24][4];                                                                                 \
        const long cin = fixed_cin ? fixed_cin : a->cin, step = a->dilation * cin, ldo = a->cout;      \
        _Pragma("GCC unroll 24") for (int r = 0; r < mr; r++)                                          \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                                       \
                acc[r][v] = bias ? vload##SUFFIX(bias + v * L) : (VT){};                               \
        for (long j = 0; j < a->kernel; j++) {                                                         \
            const float *xj = xw + j * step, *wj = wp + j * cin * ldw;                                 \
            for (long c = 0; c < cin; c++) {                                                           \
                VT wv[4];                                                                              \
                _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                                   \
                    wv[v] = vload##SUFFIX(wj + c * ldw + v * L);                                       \
                _Pragma("GCC unroll 24") for (int r = 0; r < mr; r++) {                                \
                    float x = xj[r * cin + c];                                                         \
                    _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) acc[r][v] += x * wv[v];       \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        _Pragma("GCC unroll 24") for (int r = 0; r < mr; r++) {                                        \
            if (r >= rows) break; /* constant indices into acc (kept in registers) */                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {                                     \
                long at = r * ldo + v * L;                                                             \
                VT y = acc[r][v];                                                                      \
                if (res) y += vload##SUFFIX(res + at);                                                 \
                if (a->act_out) y = leaky##SUFFIX(y, a->slope_out);                                    \
                if (sum) y = vload##SUFFIX(sum + at) + y;                                              \
                if (a->scale != 1.0f) y = y * a->scale;                                                \
                memcpy(o + at, &y, sizeof y);                                                          \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    /* Output rows [t0, t0 + rows) from the activated window xw (window row i = input row           \
     * t0 - pad + i), tiles of mr rows x nv * L channels over the output blocks. */                   \
    INLINE void vconv_rows##SUFFIX(const vconv_t *a, long t0, long rows, const float *xw, const int mr, \
                                   const int nv, const long fixed_cin) {                               \
        const long nr = a->nr, cout = a->cout, per_block = a->kernel * a->cin * nr;                    \
        for (long b = 0; b < cout / nr; b++)                                                           \
            for (long h = 0; h < nr; h += nv * L) {                                                    \
                const float *wp = a->wp + b * per_block + h, *bias = a->bias ? a->bias + b * nr + h : NULL; \
                for (long r0 = 0; r0 < rows; r0 += mr) {                                               \
                    long at = (t0 + r0) * cout + b * nr + h, n = rows - r0 < mr ? rows - r0 : mr;      \
                    vconv_tile##SUFFIX(a, a->out + at, a->residual ? a->residual + at : NULL,          \
                                       a->sum ? a->sum + at : NULL, xw + r0 * a->cin, wp, bias, nr, n, \
                                       mr, nv, fixed_cin);                                             \
                }                                                                                      \
            }                                                                                          \
    }

typedef float vf8 __attribute__((vector_size(8 * sizeof(float))));
typedef int vi8 __attribute__((vector_size(8 * sizeof(int))));
typedef float vf4 __attribute__((vector_size(4 * sizeof(float))));
typedef int vi4 __attribute__((vector_size(4 * sizeof(int))));

VCONV_KERNELS(16, vf, vi, 16)
VCONV_KERNELS(8, vf8, vi8, 8)
VCONV_KERNELS(4, vf4, vi4, 4)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("arch=x86-64-v4"))) static void vconv_rows_v4(const vconv_t *a, long t0, long rows,
                                                                    const float *xw) {
    if (a->nr == 32)
        vconv_rows16(a, t0, rows, xw, 12, 2, 0);
    else if (a->cin == W) /* 16 channels: row offsets as constants, not 24 registers */
        vconv_rows16(a, t0, rows, xw, 24, 1, W);
    else
        vconv_rows16(a, t0, rows, xw, 24, 1, 0);
}

__attribute__((target("arch=x86-64-v3"))) static void vconv_rows_v3(const vconv_t *a, long t0, long rows,
                                                                    const float *xw) {
    vconv_rows8(a, t0, rows, xw, 6, 2, 0);
}
#endif

static void vconv_rows_base(const vconv_t *a, long t0, long rows, const float *xw) {
    vconv_rows4(a, t0, rows, xw, 3, 4, 0);
}

typedef void (*vconv_rows_fn)(const vconv_t *, long, long, const float *);

static vconv_rows_fn vconv_rows_for_cpu; /* the tile shapes in use */
static long vconv_mr;                    /* rows of a chunk are a multiple of this */
static int vconv_level, vconv_best;      /* x86-64 level of those tiles (4, 3, or 1: baseline), the best here */

/* Use the tiles of x86-64 level `level` (4: AVX-512, 3: AVX2, 1: baseline); -2 where this CPU or
 * build has none of that level. */
static int vconv_use(int level) {
    if (level == 4 || level == 3) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
        __builtin_cpu_init();
        if (level == 4 && __builtin_cpu_supports("x86-64-v4")) {
            vconv_rows_for_cpu = vconv_rows_v4;
            vconv_mr = 24;
        } else if (level == 3 && __builtin_cpu_supports("x86-64-v3")) {
            vconv_rows_for_cpu = vconv_rows_v3;
            vconv_mr = 6;
        } else {
            return -2;
        }
#else
        return -2;
#endif
    } else if (level == 1) {
        vconv_rows_for_cpu = vconv_rows_base;
        vconv_mr = 3;
    } else {
        return -2;
    }
    vconv_level = level;
    return level;
}

static void vconv_pick(void) {
    if (vconv_use(4) < 0 && vconv_use(3) < 0) vconv_use(1);
    vconv_best = vconv_level;
}

static pthread_once_t vconv_once = PTHREAD_ONCE_INIT;

/* The x86-64 level of the convolution tiles in use (4: AVX-512, 3: AVX2, 1: baseline) when `level`
 * is 0; else switches to that level's tiles (for tests: not while a convolution runs) and returns
 * it, or -2 where this CPU or build has none of that level. */
int ps_vconv_level(int level) {
    pthread_once(&vconv_once, vconv_pick);
    if (level == 0) return vconv_level;
    if (level > vconv_best) return -2;
    return vconv_use(level);
}

/* act_in(x) rows [first, first + n) of the input (zeros outside [0, t)) into xw; CLONES for the
 * element-wise pass. */
CLONES static void vconv_window(const vconv_t *a, long first, long n, float *xw) {
    const long cin = a->cin;
    for (long i = 0; i < n; i++) {
        long t = first + i;
        float *dst = xw + i * cin;
        if (t < 0 || t >= a->t) {
            memset(dst, 0, sizeof(float) * (size_t)cin);
            continue;
        }
        const float *src = a->x + t * cin;
        if (!a->act_in) {
            memcpy(dst, src, sizeof(float) * (size_t)cin);
            continue;
        }
        long c = 0;
        for (; c + W <= cin; c += W) vstore(dst + c, leaky16(vload(src + c), a->slope_in));
        for (; c < cin; c++) dst[c] = src[c] > 0.0f ? src[c] : src[c] * a->slope_in;
    }
}

typedef struct {
    const vconv_t *conv;
    long chunk, chunks, mr;
    atomic_long next; /* the next chunk to take: threads on a busy core simply take fewer */
    int status[MAX_JOBS];
} vconv_work_t;

/* Each thread's window buffer (the pool's workers and every calling thread), kept between calls
 * and freed when its thread ends. */
typedef struct {
    float *buffer;
    size_t size; /* floats */
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    scratch_t *s = (scratch_t *)p;
    free(s->buffer);
    free(s);
}

static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }

/* This thread's buffer of at least `need` floats, or NULL when memory ran out. */
static float *thread_scratch(size_t need) {
    pthread_once(&scratch_once, scratch_key_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->size < need) {
        free(s->buffer);
        s->buffer = malloc(sizeof(float) * need);
        s->size = s->buffer ? need : 0;
    }
    return s->buffer;
}

static void vconv_part(void *arg, int tid, int threads) {
    (void)threads;
    vconv_work_t *w = (vconv_work_t *)arg;
    const vconv_t *a = w->conv;
    long halo = (a->kernel - 1) * a->dilation;
    float *xw = thread_scratch((size_t)((w->chunk + w->mr + halo) * a->cin));
    if (xw == NULL) {
        w->status[tid] = -1;
        return;
    }
    for (long i; (i = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed)) < w->chunks;) {
        long t = i * w->chunk, rows = a->t_out - t < w->chunk ? a->t_out - t : w->chunk;
        long padded = (rows + w->mr - 1) / w->mr * w->mr; /* the last tile reads whole rows past the end */
        vconv_window(a, t - a->pad, padded + halo, xw);
        vconv_rows_for_cpu(a, t, rows, xw);
    }
}

/* Packs w [cout][kernel][cin] (MLX's Conv1d layout) into dst [cout / nr][kernel][cin][nr] for
 * ps_vconv, nr = 32 when cout is a multiple of 32, else 16; -2 unless cout is a multiple of 16. */
int ps_vconv_pack(float *dst, const float *w, long cout, long kernel, long cin) {
    if (cout < W || cout % W != 0 || kernel < 1 || cin < 1) return -2;
    long nr = cout % (2 * W) == 0 ? 2 * W : W;
    for (long b = 0; b < cout / nr; b++)
        for (long j = 0; j < kernel; j++)
            for (long c = 0; c < cin; c++)
                for (long o = 0; o < nr; o++)
                    dst[((b * kernel + j) * cin + c) * nr + o] = w[((b * nr + o) * kernel + j) * cin + c];
    return 0;
}

/* out [t_out, cout] = the convolution above of x [t, cin] with weights packed by ps_vconv_pack,
 * plus bias [cout] and residual [t_out, cout] (each may be NULL); leaky ReLU with slope_in on the
 * input when act_in and with slope_out on the result when act_out; then, where sum [t_out, cout] is
 * given, (sum + result) * scale. out may be the same buffer as residual or sum (each element is
 * read before it is written, by the same thread) but must not overlap x. Chunks of output rows go
 * to `threads` threads as they come free. -2 for cout not a multiple of 16, pad outside
 * [0, (kernel - 1) dilation], other sizes or thread counts out of range. */
int ps_vconv(float *out, const float *x, const float *residual, const float *sum, const float *wp,
             const float *bias, long t, long t_out, long cin, long cout, long kernel, long dilation, long pad,
             int act_in, float slope_in, int act_out, float slope_out, float scale, int threads) {
    if (out == NULL || x == NULL || wp == NULL || t < 1 || t_out < 1 || cin < 1 || cout < W || cout % W != 0 ||
        kernel < 1 || dilation < 1 || pad < 0 || pad > (kernel - 1) * dilation || threads < 1 ||
        threads > MAX_JOBS)
        return -2;
    pthread_once(&vconv_once, vconv_pick);
    vconv_t conv = {.out = out, .x = x, .residual = residual, .sum = sum, .wp = wp, .bias = bias, .t = t,
                    .t_out = t_out, .cin = cin, .cout = cout, .kernel = kernel, .dilation = dilation, .pad = pad,
                    .nr = cout % (2 * W) == 0 ? 2 * W : W, .slope_in = slope_in, .slope_out = slope_out,
                    .scale = scale, .act_in = act_in, .act_out = act_out};
    /* chunks of whole tiles, of ~32k input floats (the window and a block's weights stay in L2) and
     * at least two per thread */
    long mr = vconv_mr, chunk = 32768 / cin, share = (t_out + 2 * threads - 1) / (2 * threads);
    chunk = ((chunk < share ? chunk : share) + mr - 1) / mr * mr;
    vconv_work_t work = {.conv = &conv, .chunk = chunk, .chunks = (t_out + chunk - 1) / chunk, .mr = mr};
    atomic_init(&work.next, 0);
    int n = pool_run(vconv_part, &work, threads < work.chunks ? threads : (int)work.chunks);
    int status = 0;
    for (int i = 0; i < n; i++)
        if (work.status[i] != 0) status = work.status[i];
    return status;
}
