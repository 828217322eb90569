/* One-row and one-column matrix products for MLX's Linux CPU backend.
 *
 * MLX computes every float32 matrix product with cblas_sgemm, also the vector-matrix products of
 * batch-1 decoding (M = 1). OpenBLAS's sgemm packs the whole weight matrix first, which doubles the
 * memory traffic of such a product; its sgemv does not. Loaded into the global symbol scope before
 * OpenBLAS and MLX (see runtime.py), this library's cblas_sgemm hands M = 1 and N = 1 row-major
 * products to sgemv and everything else to OpenBLAS's sgemm. The two OpenBLAS entry points are
 * bound at run time by primespeech_bind_blas; until then every call fails loudly instead of
 * computing nothing.
 *
 * Skinny products (2..16 rows times a transposed weight matrix, as in batched decoding) are no
 * better off in sgemm: packing the weights costs more than the few rows' arithmetic. They are
 * computed here instead, reading each weight row once for all rows of A, the weight rows split
 * between this thread and one persistent helper thread when OpenBLAS may use two threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "helper_thread.h"

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, SKINNY_MAX_M = 16, SKINNY_MIN_N = 64 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

typedef int (*threads_fn)(void);

static sgemm_fn openblas_sgemm;
static sgemv_fn openblas_sgemv;
static threads_fn openblas_threads;
static volatile long forwarded_calls, skinny_calls;

int primespeech_bind_blas(void *sgemm, void *sgemv) {
    if (sgemm == NULL || sgemv == NULL) return -1;
    openblas_sgemm = (sgemm_fn)sgemm;
    openblas_sgemv = (sgemv_fn)sgemv;
    return 0;
}

/* openblas_get_num_threads: the skinny kernel uses a second thread only when OpenBLAS may. */
void primespeech_bind_threads(void *get_num_threads) { openblas_threads = (threads_fn)get_num_threads; }

long primespeech_forwarded_calls(void) { return forwarded_calls; }
long primespeech_skinny_calls(void) { return skinny_calls; }

/* ---- skinny products: c[:m, n0:n1] = alpha * a[:m, :k] @ b[n0:n1, :k]^T + beta * c ---- */
typedef struct {
    int m, n0, n1, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
} skinny_job;

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* Pairwise (a short dependency chain: a scalar loop over 16 lanes cost more than the products). */
static inline float hsum(v16 v) {
    v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
}

static inline void put(const skinny_job *job, int i, int j, float sum) {
    float *out = job->c + (size_t)i * job->ldc + j;
    *out = job->beta == 0.0f ? job->alpha * sum : job->alpha * sum + job->beta * *out;
}

static inline float tail_dot(const float *x, const float *w, int from, int k) {
    float s = 0.0f;
    for (int p = from; p < k; p++) s += x[p] * w[p];
    return s;
}

/* Two weight rows against four rows of A per pass: eight independent accumulators keep the FMA
 * units busy while each weight row is read from memory once. */
CLONES static void skinny_rows(const skinny_job *job) {
    const int m = job->m, k = job->k, k16 = job->k & ~15;
    const float *a = job->a;
    for (int j = job->n0; j < job->n1; j += 2) {
        const int pair = j + 1 < job->n1;
        const float *w0 = job->b + (size_t)j * job->ldb, *w1 = pair ? w0 + job->ldb : w0;
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            const float *x0 = a + (size_t)i * job->lda, *x1 = x0 + job->lda, *x2 = x1 + job->lda,
                        *x3 = x2 + job->lda;
            v16 s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0}, s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};
            for (int p = 0; p < k16; p += 16) {
                v16 a0 = *(const v16u *)(x0 + p), a1 = *(const v16u *)(x1 + p), a2 = *(const v16u *)(x2 + p),
                    a3 = *(const v16u *)(x3 + p), b0 = *(const v16u *)(w0 + p), b1 = *(const v16u *)(w1 + p);
                s00 += a0 * b0; s01 += a1 * b0; s02 += a2 * b0; s03 += a3 * b0;
                s10 += a0 * b1; s11 += a1 * b1; s12 += a2 * b1; s13 += a3 * b1;
            }
            put(job, i, j, hsum(s00) + tail_dot(x0, w0, k16, k));
            put(job, i + 1, j, hsum(s01) + tail_dot(x1, w0, k16, k));
            put(job, i + 2, j, hsum(s02) + tail_dot(x2, w0, k16, k));
            put(job, i + 3, j, hsum(s03) + tail_dot(x3, w0, k16, k));
            if (pair) {
                put(job, i, j + 1, hsum(s10) + tail_dot(x0, w1, k16, k));
                put(job, i + 1, j + 1, hsum(s11) + tail_dot(x1, w1, k16, k));
                put(job, i + 2, j + 1, hsum(s12) + tail_dot(x2, w1, k16, k));
                put(job, i + 3, j + 1, hsum(s13) + tail_dot(x3, w1, k16, k));
            }
        }
        for (; i < m; i++) {
            const float *x = a + (size_t)i * job->lda;
            v16 s0 = {0}, s1 = {0};
            for (int p = 0; p < k16; p += 16) {
                v16 xv = *(const v16u *)(x + p);
                s0 += xv * *(const v16u *)(w0 + p);
                s1 += xv * *(const v16u *)(w1 + p);
            }
            put(job, i, j, hsum(s0) + tail_dot(x, w0, k16, k));
            if (pair) put(job, i, j + 1, hsum(s1) + tail_dot(x, w1, k16, k));
        }
    }
}

/* job(arg, tid, threads): this thread's share of the weight rows. */
static void skinny_part(void *arg, int tid, int threads) {
    skinny_job part = *(const skinny_job *)arg; /* the whole product, weight rows 0..n1 */
    long from, to;
    share(part.n1, tid, threads, &from, &to);
    part.n0 = (int)from;
    part.n1 = (int)to;
    skinny_rows(&part);
}

static void skinny(int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                   float beta, float *c, int ldc) {
    skinny_job whole = {m, 0, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
    run_job(skinny_part, &whole, openblas_threads != NULL && openblas_threads() > 1 ? 2 : 1);
}

static void zero_strided(float *y, int n, int inc) {
    if (inc == 1) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) y[(size_t)i * inc] = 0.0f;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (openblas_sgemm == NULL) {
        fprintf(stderr, "dora_primespeech_mlx: cblas_sgemm called before primespeech_bind_blas\n");
        abort();
    }
    if (order == ROW_MAJOR && k > 0 && m == 1 && n > 1) {
        /* c[0, :n] = alpha * x @ op(B) + beta * c, x = op(A)[0, :] */
        int inc_x = trans_a == NO_TRANS ? 1 : lda;
        if (beta == 0.0f) zero_strided(c, n, 1); /* c may hold anything, NaN included */
        if (trans_b == NO_TRANS)                  /* B is [k, n]: y = B^T x */
            openblas_sgemv(ROW_MAJOR, 112, k, n, alpha, b, ldb, a, inc_x, beta, c, 1);
        else                                      /* B is [n, k]: y = B x */
            openblas_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_x, beta, c, 1);
        forwarded_calls++;
        return;
    }
    if (order == ROW_MAJOR && k > 0 && n == 1 && m > 1) {
        /* c[:m, 0] = alpha * op(A) @ x + beta * c, x = op(B)[:, 0] */
        int inc_x = trans_b == NO_TRANS ? ldb : 1;
        if (beta == 0.0f) zero_strided(c, m, ldc);
        if (trans_a == NO_TRANS)                  /* A is [m, k] */
            openblas_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, inc_x, beta, c, ldc);
        else                                      /* A is [k, m] */
            openblas_sgemv(ROW_MAJOR, 112, k, m, alpha, a, lda, b, inc_x, beta, c, ldc);
        forwarded_calls++;
        return;
    }
    if (order == ROW_MAJOR && trans_a == NO_TRANS && trans_b == TRANS && m >= 2 && m <= SKINNY_MAX_M &&
        n >= SKINNY_MIN_N && k > 0) {
        skinny(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        skinny_calls++;
        return;
    }
    openblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
