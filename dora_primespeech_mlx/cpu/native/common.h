/* Definitions shared by the source files of the one CPU library (dora_primespeech_mlx.cpu._kernels). */
#ifndef PRIMESPEECH_CPU_COMMON_H
#define PRIMESPEECH_CPU_COMMON_H

#include <string.h>

/* Functions compiled for AVX-512, AVX2+FMA and the baseline, picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define INLINE static inline __attribute__((always_inline))

/* Shared between the library's source files, not exported. */
#define HIDDEN __attribute__((visibility("hidden")))

/* GCC's generic vectors of 16 floats (and their comparison masks), lowered to whatever the clone's
 * instruction set has. */
#define W 16
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int vi __attribute__((vector_size(W * sizeof(int))));

INLINE vf vload(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* A spin-wait's pause. */
INLINE void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* [from, to): share `tid` of `threads` of n items. */
INLINE void share(long n, int tid, int threads, long *from, long *to) {
    *from = n * tid / threads;
    *to = n * (tid + 1) / threads;
}

#endif
