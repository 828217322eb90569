/* One persistent helper thread per library, for work split two ways: run_job(job, arg, 2) runs
 * job(arg, 1, 2) on the helper while the caller runs job(arg, 0, 2), then waits for it. The helper
 * starts on first use and sleeps between jobs. A call that finds it busy (another thread using the
 * library at the same time) or cannot start it runs job(arg, 0, 1) alone, as does threads < 2.
 * A forked child has no helper thread (and maybe a held lock): it starts afresh. */
#ifndef PRIMESPEECH_NATIVE_HELPER_THREAD_H
#define PRIMESPEECH_NATIVE_HELPER_THREAD_H

#include <pthread.h>

typedef void (*job_fn)(void *arg, int tid, int threads);

static pthread_mutex_t helper_busy = PTHREAD_MUTEX_INITIALIZER, helper_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t helper_go = PTHREAD_COND_INITIALIZER, helper_done = PTHREAD_COND_INITIALIZER;
static job_fn helper_job;
static void *helper_arg;
static int helper_pending, helper_started, helper_failed;

static void *helper_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&helper_lock);
    for (;;) {
        while (!helper_pending) pthread_cond_wait(&helper_go, &helper_lock);
        pthread_mutex_unlock(&helper_lock);
        helper_job(helper_arg, 1, 2);
        pthread_mutex_lock(&helper_lock);
        helper_pending = 0;
        pthread_cond_signal(&helper_done);
    }
    return NULL;
}

static void helper_after_fork(void) {
    pthread_mutex_init(&helper_busy, NULL);
    pthread_mutex_init(&helper_lock, NULL);
    pthread_cond_init(&helper_go, NULL);
    pthread_cond_init(&helper_done, NULL);
    helper_pending = helper_started = helper_failed = 0;
}

__attribute__((constructor)) static void helper_init(void) { pthread_atfork(NULL, NULL, helper_after_fork); }

static int helper_ready(void) {
    if (helper_started) return 1;
    if (helper_failed) return 0;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, helper_main, NULL) != 0) helper_failed = 1;
    else helper_started = 1;
    pthread_attr_destroy(&attr);
    return helper_started;
}

static void run_job(job_fn job, void *arg, int threads) {
    int two = threads > 1 && pthread_mutex_trylock(&helper_busy) == 0;
    if (two && !helper_ready()) {
        pthread_mutex_unlock(&helper_busy);
        two = 0;
    }
    if (!two) {
        job(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&helper_lock);
    helper_job = job;
    helper_arg = arg;
    helper_pending = 1;
    pthread_cond_signal(&helper_go);
    pthread_mutex_unlock(&helper_lock);
    job(arg, 0, 2);
    pthread_mutex_lock(&helper_lock);
    while (helper_pending) pthread_cond_wait(&helper_done, &helper_lock);
    pthread_mutex_unlock(&helper_lock);
    pthread_mutex_unlock(&helper_busy);
}

/* [from, to): share `tid` of `threads` of n items. */
static void share(long n, int tid, int threads, long *from, long *to) {
    *from = n * tid / threads;
    *to = n * (tid + 1) / threads;
}

#endif
