/* The library's one pool of worker threads, shared by every kernel. */
#ifndef PRIMESPEECH_CPU_POOL_H
#define PRIMESPEECH_CPU_POOL_H

#include "common.h"

enum { POOL_MAX_THREADS = 16 }; /* the caller and up to 15 workers */

typedef void (*pool_fn)(void *arg, int tid, int threads);
typedef void (*task_fn)(void *arg, int index);

/* Runs fn(arg, tid, n) for every tid < n at the same time on n threads, the caller being tid 0, and
 * returns n when all are done. n <= threads (capped at POOL_MAX_THREADS): n = 1 (the caller alone)
 * while another call holds the workers, and fewer where workers cannot be started. The n threads
 * run concurrently, so fn may wait for its peers (barriers). */
HIDDEN int pool_run(pool_fn fn, void *arg, int threads);

/* fn(arg, i) for every i < tasks, on up to `threads` threads taking the tasks as they come free. */
HIDDEN void pool_tasks(task_fn fn, void *arg, int tasks, int threads);

#endif
