/* Products on pre-packed weight panels (panels.c), shared with the T2S decode step (t2s.c). */
#ifndef PRIMESPEECH_CPU_PANELS_H
#define PRIMESPEECH_CPU_PANELS_H

#include <stdint.h>

#include "common.h"

enum { LANES = 16, PANEL = 32, MAX_GROUP = 12 };

typedef float vfu __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));

INLINE vf load(const float *p) { return *(const vfu *)p; }
INLINE void store(float *p, vf v) { *(vfu *)p = v; }
INLINE vf splat(float x) { return (vf){0} + x; }

typedef struct {
    const float *a; /* [rows][k] */
    const void *w;  /* panels */
    int half, rows;
    long k, n;
    const float *bias;     /* [n] or NULL */
    const float *residual; /* [rows][n] (row stride n) or NULL */
    int relu;
    float *c;  /* [rows][ldc] */
    long ldc;
} product_t;


/* Panels p0..p1 of a product. */
HIDDEN void product_panels(const product_t *m, long p0, long p1);

/* Thread `tid` of `threads`' share of a product's panels. */
INLINE void run_product(const product_t *m, int tid, int threads) {
    long p0, p1;
    share((m->n + PANEL - 1) / PANEL, tid, threads, &p0, &p1);
    product_panels(m, p0, p1);
}

#endif
