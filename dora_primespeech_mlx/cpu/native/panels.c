/* Products on pre-packed weight panels.
 *
 * BLAS's sgemm packs the weight matrix on every call, which costs more than the arithmetic when the
 * activations have few rows (a decode step: 1-16; a RoBERTa sentence: ~50). Here weights are packed
 * once, at load, into panels of 32 output features that a register-blocked kernel streams: up to 12
 * rows x 32 features of accumulators, one pass over the weights per 12 rows. Weights are read as
 * float16 where the model's values are exactly float16 (nothing is rounded); arithmetic is float32.
 *
 * Layout: panels of 32 output features, [ceil(n / 32)][k][32] (float16 or float32), zero-padded.
 * The exported functions return 0, or -2 for arguments they do not take (panel_pack: 1 when asked
 * for float16 panels of values that are not all float16).
 */
#include "panels.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "pool.h"

typedef uint16_t vhu __attribute__((vector_size(LANES * sizeof(uint16_t)), aligned(2), may_alias));

/* float16 -> float32 with integer operations, which every clone vectorises (GCC converts a _Float16
 * vector one element at a time): the magnitude bits moved into float32's place and rescaled by 2^112
 * (exact for normal and subnormal values; the weights are finite), then the sign. */
INLINE vf load_half(const uint16_t *p) {
    const vi h = __builtin_convertvector(*(const vhu *)p, vi);
    const vf magnitude = (vf)((h & 0x7fff) << 13) * 0x1p112f;
    return (vf)((vi)magnitude | ((h & 0x8000) << 16));
}

/* The cases of a switch on the rows of a pass (1..12), each calling `fn` with a constant row count so
 * that its accumulators live in registers. */
#define ROWS_CASES(fn)                                                                                      \
    case 1: fn(1, m, r0, p); break;                                                                         \
    case 2: fn(2, m, r0, p); break;                                                                         \
    case 3: fn(3, m, r0, p); break;                                                                         \
    case 4: fn(4, m, r0, p); break;                                                                         \
    case 5: fn(5, m, r0, p); break;                                                                         \
    case 6: fn(6, m, r0, p); break;                                                                         \
    case 7: fn(7, m, r0, p); break;                                                                         \
    case 8: fn(8, m, r0, p); break;                                                                         \
    case 9: fn(9, m, r0, p); break;                                                                         \
    case 10: fn(10, m, r0, p); break;                                                                       \
    case 11: fn(11, m, r0, p); break;                                                                       \
    default: fn(12, m, r0, p); break

/* Panels p0..p1 of a product, the rows in passes of `group` through the row kernel `fn`: one function
 * per instruction set (`attributes` gives its target), so that the kernel inlines with its vectors. */
#define PRODUCT_PANELS(name, attributes, fn)                                                               \
    attributes static void name(const product_t *m, long p0, long p1, int group) {                         \
        for (long p = p0; p < p1; p++) {                                                                    \
            for (int r0 = 0; r0 < m->rows; r0 += group) {                                                   \
                switch (m->rows - r0 < group ? m->rows - r0 : group) {                                      \
                ROWS_CASES(fn);                                                                             \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

/* c[r0 + r, panel p's columns] = out[r] + bias + residual, then ReLU where asked. */
static void panel_epilogue(const product_t *m, int r0, int rows, long p, float out[][PANEL]) {
    const long col0 = p * PANEL, cols = m->n - col0 < PANEL ? m->n - col0 : PANEL;
    for (int r = 0; r < rows; r++) {
        float *c = m->c + (long)(r0 + r) * m->ldc + col0;
        const float *res = m->residual ? m->residual + (long)(r0 + r) * m->n + col0 : NULL;
        for (long j = 0; j < cols; j++) {
            float v = out[r][j];
            if (m->bias) v += m->bias[col0 + j];
            if (res) v += res[j];
            if (m->relu && v < 0.0f) v = 0.0f;
            c[j] = v;
        }
    }
}

/* R rows of a times panel p: accumulators R x 32 in registers, weights streamed once. */
INLINE void panel_rows(const int R, const product_t *m, int r0, long p) {
    vf acc[MAX_GROUP][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = splat(0.0f);
    const float *a = m->a + (long)r0 * m->k;
    const long k = m->k;
    if (m->half) {
        const uint16_t *w = (const uint16_t *)m->w + p * k * PANEL;
        for (long i = 0; i < k; i++, w += PANEL) {
            vf w0 = load_half(w), w1 = load_half(w + LANES);
#pragma GCC unroll 12
            for (int r = 0; r < R; r++) {
                vf x = splat(a[r * k + i]);
                acc[r][0] += x * w0;
                acc[r][1] += x * w1;
            }
        }
    } else {
        const float *w = (const float *)m->w + p * k * PANEL;
        for (long i = 0; i < k; i++, w += PANEL) {
            vf w0 = load(w), w1 = load(w + LANES);
#pragma GCC unroll 12
            for (int r = 0; r < R; r++) {
                vf x = splat(a[r * k + i]);
                acc[r][0] += x * w0;
                acc[r][1] += x * w1;
            }
        }
    }
    float out[MAX_GROUP][PANEL];
    for (int r = 0; r < R; r++) {
        store(out[r], acc[r][0]);
        store(out[r] + LANES, acc[r][1]);
    }
    panel_epilogue(m, r0, R, p, out);
}

PRODUCT_PANELS(product_panels_generic, CLONES, panel_rows)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define HAVE_AVX512_KERNEL 1

/* The AVX-512 form of panel_rows: float16 panels widened by vcvtph2ps (one instruction per 16
 * values), the rows' values broadcast straight from memory into the FMAs. */
AVX512 INLINE void panel_rows_avx512(const int R, const product_t *m, int r0, long p) {
    __m512 acc[MAX_GROUP][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float *a = m->a + (long)r0 * m->k;
    const long k = m->k;
    if (m->half) {
        const uint16_t *w = (const uint16_t *)m->w + p * k * PANEL;
        for (long i = 0; i < k; i++, w += PANEL) {
            const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w));
            const __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + LANES)));
#pragma GCC unroll 12
            for (int r = 0; r < R; r++) {
                const __m512 x = _mm512_set1_ps(a[r * k + i]);
                acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
            }
        }
    } else {
        const float *w = (const float *)m->w + p * k * PANEL;
        for (long i = 0; i < k; i++, w += PANEL) {
            const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + LANES);
#pragma GCC unroll 12
            for (int r = 0; r < R; r++) {
                const __m512 x = _mm512_set1_ps(a[r * k + i]);
                acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
            }
        }
    }
    float out[MAX_GROUP][PANEL];
    for (int r = 0; r < R; r++) {
        _mm512_storeu_ps(out[r], acc[r][0]);
        _mm512_storeu_ps(out[r] + LANES, acc[r][1]);
    }
    panel_epilogue(m, r0, R, p, out);
}

PRODUCT_PANELS(product_panels_avx512, AVX512, panel_rows_avx512)

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* The AVX2 form of panel_rows (GCC keeps 16-float vectors on the stack without AVX-512, which made
 * the generic kernel ~10x slower than sgemv on AVX2): a panel in two passes of 16 features, R <= 6
 * rows x 2 registers of 8 accumulators each, float16 widened by vcvtph2ps. Each feature sums over k
 * in the same order as the other kernels, so the results are the same bits. */
AVX2 INLINE void panel_rows_avx2(const int R, const product_t *m, int r0, long p) {
    float out[MAX_GROUP][PANEL];
    const float *a = m->a + (long)r0 * m->k;
    const long k = m->k;
    for (int h = 0; h < PANEL; h += LANES) {
        __m256 acc[MAX_GROUP][2];
        for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        if (m->half) {
            const uint16_t *w = (const uint16_t *)m->w + p * k * PANEL + h;
            for (long i = 0; i < k; i++, w += PANEL) {
                const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
                const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 8)));
#pragma GCC unroll 12
                for (int r = 0; r < R; r++) {
                    const __m256 x = _mm256_set1_ps(a[r * k + i]);
                    acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
                }
            }
        } else {
            const float *w = (const float *)m->w + p * k * PANEL + h;
            for (long i = 0; i < k; i++, w += PANEL) {
                const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 12
                for (int r = 0; r < R; r++) {
                    const __m256 x = _mm256_set1_ps(a[r * k + i]);
                    acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            _mm256_storeu_ps(out[r] + h, acc[r][0]);
            _mm256_storeu_ps(out[r] + h + 8, acc[r][1]);
        }
    }
    panel_epilogue(m, r0, R, p, out);
}

PRODUCT_PANELS(product_panels_avx2, AVX2, panel_rows_avx2)
#endif

static int use_generic; /* panel_force_generic: tests run the generic kernel where a specialised one exists */

enum { GENERIC, WITH_AVX2, WITH_AVX512 };

/* The kernel the products use: AVX-512, AVX2 (with FMA and F16C) or the generic vector one. */
static int kernel_in_use(void) {
#if defined(HAVE_AVX512_KERNEL)
    static int best = -1;
    if (best < 0) {
        __builtin_cpu_init();
        best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("f16c") ? WITH_AVX512
               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
                   ? WITH_AVX2
                   : GENERIC;
    }
    return use_generic ? GENERIC : best;
#else
    return GENERIC;
#endif
}

/* 1: products use the generic vector kernel even where an AVX-512 or AVX2 one is available; 0: auto.
 * Returns 2 when the AVX-512 kernel is in use afterwards, 1 for the AVX2 one, 0 for the generic one. */
int panel_force_generic(int generic) {
    use_generic = generic != 0;
    return kernel_in_use();
}

/* Panels p0..p1 of a product, the rows in passes of at most 12 (AVX-512: 24 accumulators of the 32
 * registers) or 6 (16 registers), as even as the row count allows. */
void product_panels(const product_t *m, long p0, long p1) {
    const int kernel = kernel_in_use();
    const int widest = kernel == WITH_AVX512 ? MAX_GROUP : MAX_GROUP / 2;
    const int passes = (m->rows + widest - 1) / widest, group = (m->rows + passes - 1) / passes;
#ifdef HAVE_AVX512_KERNEL
    if (kernel == WITH_AVX512) {
        product_panels_avx512(m, p0, p1, group);
        return;
    }
    if (kernel == WITH_AVX2) {
        product_panels_avx2(m, p0, p1, group);
        return;
    }
#endif
    product_panels_generic(m, p0, p1, group);
}

typedef struct {
    const float *w;
    long n, k;
    void *dst;
    int half;
    atomic_int inexact;
} pack_t;

/* Panels p0..p1 of a pack_t; stops early once some value is found not to be a float16. */
CLONES static void pack_range(pack_t *t, long p0, long p1) {
    const long n = t->n, k = t->k;
    for (long p = p0; p < p1 && !atomic_load(&t->inexact); p++) {
        for (int j = 0; j < PANEL; j++) {
            const long row = p * PANEL + j;
            const float *src = t->w + row * k;
            if (t->half) {
                _Float16 *out = (_Float16 *)t->dst + p * k * PANEL + j;
                for (long i = 0; i < k; i++) {
                    const float v = row < n ? src[i] : 0.0f;
                    const _Float16 h = (_Float16)v;
                    if ((float)h != v) {
                        atomic_store(&t->inexact, 1);
                        return;
                    }
                    out[i * PANEL] = h;
                }
            } else {
                float *out = (float *)t->dst + p * k * PANEL + j;
                for (long i = 0; i < k; i++) out[i * PANEL] = row < n ? src[i] : 0.0f;
            }
        }
    }
}

static void pack_job(void *arg, int tid, int threads) {
    pack_t *t = (pack_t *)arg;
    long p0, p1;
    share((t->n + PANEL - 1) / PANEL, tid, threads, &p0, &p1);
    pack_range(t, p0, p1);
}

/* dst = w [n][k] as panels [ceil(n / 32)][k][32], zero-padded; float16 (its bits) when `half`.
 * Returns 1, with dst incomplete, when `half` is asked for and a value is not exactly a float16. */
int panel_pack(const float *w, long n, long k, void *dst, int half, int threads) {
    if (n < 1 || k < 1) return -2;
    pack_t t = {w, n, k, dst, half, 0};
    pool_run(pack_job, &t, threads);
    return atomic_load(&t.inexact) ? 1 : 0;
}

static void product_job(void *arg, int tid, int threads) { run_product((const product_t *)arg, tid, threads); }

/* c [rows][n] = a [rows][k] @ W^T + bias (NULL: none), W given as panels (half: float16 values). */
int panel_product(const float *a, long rows, long k, const void *panels, int half, long n, const float *bias,
                  float *c, int threads) {
    if (rows < 1 || rows > 1L << 30 || k < 1 || n < 1) return -2;
    product_t m = {a, panels, half, (int)rows, k, n, bias, NULL, 0, c, n};
    pool_run(product_job, &m, threads);
    return 0;
}
