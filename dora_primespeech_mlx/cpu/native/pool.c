/* The one pool of worker threads of the library, shared by every kernel.
 *
 * Calls come in quick succession (tens per encoder layer, one per T2S decode step), and a thread
 * woken from sleep starts late on an idle virtual CPU, so a worker spins a fraction of a
 * millisecond (SPINS pauses) for the next call before it sleeps. Workers start on the first call
 * that asks for them (none at load time), one fewer than the threads asked for: on two cores, the
 * caller and one helper. Every started worker acknowledges every call (taking part or not) before
 * the next one is published. One call at a time holds the workers; a call from another thread
 * meanwhile runs on its caller alone rather than wait. A forked child has none of the parent's
 * workers (and maybe a held lock): it starts afresh.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "common.h"

enum { SPINS = 4000 };

static struct {
    pthread_mutex_t busy; /* held by the call that has the workers */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_long generation; /* bumped for every call */
    atomic_int pending;     /* workers yet to acknowledge the current call */
    pool_fn fn;
    void *arg;
    int threads;            /* of the current call: workers 1..threads - 1 take part */
    int workers;            /* started */
    int failed;             /* pthread_create failed: no more tries */
    long first_seen[POOL_MAX_THREADS];
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void *worker_main(void *arg) {
    const int tid = (int)(intptr_t)arg;
    long seen = pool.first_seen[tid];
    for (;;) {
        long now = atomic_load_explicit(&pool.generation, memory_order_acquire);
        for (int i = 0; now == seen && i < SPINS; i++) {
            cpu_relax();
            now = atomic_load_explicit(&pool.generation, memory_order_acquire);
        }
        if (now == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = now;
        if (tid < pool.threads) pool.fn(pool.arg, tid, pool.threads);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel);
    }
    return NULL;
}

static void pool_after_fork(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_store(&pool.pending, 0);
    pool.workers = pool.failed = 0;
}

__attribute__((constructor)) static void pool_init(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

/* Starts workers until `wanted` run (holding pool.busy); returns how many run. */
static int start_workers(int wanted) {
    while (pool.workers < wanted && !pool.failed) {
        const int tid = pool.workers + 1;
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.first_seen[tid] = atomic_load(&pool.generation);
        if (pthread_create(&thread, &attr, worker_main, (void *)(intptr_t)tid) != 0) pool.failed = 1;
        else pool.workers = tid;
        pthread_attr_destroy(&attr);
    }
    return pool.workers;
}

int pool_run(pool_fn fn, void *arg, int threads) {
    if (threads > POOL_MAX_THREADS) threads = POOL_MAX_THREADS;
    if (threads < 2 || pthread_mutex_trylock(&pool.busy) != 0) {
        fn(arg, 0, 1);
        return 1;
    }
    const int workers = start_workers(threads - 1);
    if (workers == 0) {
        pthread_mutex_unlock(&pool.busy);
        fn(arg, 0, 1);
        return 1;
    }
    const int n = workers + 1 < threads ? workers + 1 : threads;
    pool.fn = fn;
    pool.arg = arg;
    pool.threads = n;
    atomic_store_explicit(&pool.pending, workers, memory_order_release);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(arg, 0, n);
    for (int spin = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spin++) {
        if (spin < SPINS) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool.busy);
    return n;
}

typedef struct {
    task_fn fn;
    void *arg;
    int tasks;
    atomic_int next;
} tasks_t;

static void take_tasks(void *arg, int tid, int threads) {
    (void)tid, (void)threads;
    tasks_t *t = (tasks_t *)arg;
    for (int i; (i = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed)) < t->tasks;) t->fn(t->arg, i);
}

void pool_tasks(task_fn fn, void *arg, int tasks, int threads) {
    tasks_t t = {fn, arg, tasks, 0};
    pool_run(take_tasks, &t, threads < tasks ? threads : tasks);
}

/* Worker threads started so far (0 until a call asks for a second thread). */
int ps_pool_workers(void) { return pool.workers; }
