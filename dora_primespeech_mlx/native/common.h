/* Definitions shared by the native libraries (each .c file is its own library; this header only
 * saves writing them three times). */
#ifndef PRIMESPEECH_NATIVE_COMMON_H
#define PRIMESPEECH_NATIVE_COMMON_H

/* Functions compiled for AVX-512, AVX2+FMA and the baseline, picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define INLINE static inline __attribute__((always_inline))

/* A spin-wait's pause. */
INLINE void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#endif
