/* One-row and one-column matrix products for MLX's Linux CPU backend.
 *
 * MLX computes every float32 matrix product with cblas_sgemm, also the vector-matrix products of
 * batch-1 decoding (M = 1). OpenBLAS's sgemm packs the whole weight matrix first, which doubles the
 * memory traffic of such a product; its sgemv does not. Loaded into the global symbol scope before
 * OpenBLAS and MLX (see runtime.py), this library's cblas_sgemm hands M = 1 and N = 1 row-major
 * products to sgemv and everything else to OpenBLAS's sgemm. The two OpenBLAS entry points are
 * bound at run time by primespeech_bind_blas; until then every call fails loudly instead of
 * computing nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

static sgemm_fn openblas_sgemm;
static sgemv_fn openblas_sgemv;
static volatile long forwarded_calls;

int primespeech_bind_blas(void *sgemm, void *sgemv) {
    if (sgemm == NULL || sgemv == NULL) return -1;
    openblas_sgemm = (sgemm_fn)sgemm;
    openblas_sgemv = (sgemv_fn)sgemv;
    return 0;
}

long primespeech_forwarded_calls(void) { return forwarded_calls; }

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
    openblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
