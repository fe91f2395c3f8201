#include "threadpool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

struct worker {
    struct ferry_threadpool *pool;
    pthread_t thread;
    int ith;
};

struct ferry_threadpool {
    int n_threads;
    unsigned spins; /* barrier spins before sleeping; 0 when oversubscribed */
    struct worker *workers;

    pthread_mutex_t lock;
    pthread_cond_t wake;      /* a new job, or shutdown */
    pthread_cond_t done;      /* the last worker finished the job */
    unsigned long generation; /* bumped for each job */
    int running;              /* workers still inside the current job */
    int shutdown;
    ferry_job_fn fn;
    void *arg;

    /* sense-reversing barrier; waiters that stopped spinning sleep on
     * barrier_sense with a futex, counted in barrier_sleepers */
    atomic_int barrier_count;
    atomic_int barrier_sense;
    atomic_int barrier_sleepers;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void futex_wait(atomic_int *addr, int expected) {
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(atomic_int *addr) {
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Spin while the wait is likely short (a node's work split evenly); then
 * sleep, so that on a busy machine a waiting thread hands its core to the
 * one everybody waits for instead of burning the time slice it needs.
 * With more threads than CPUs the thread everybody waits for is often not
 * running at all: spinning only delays it, so such a pool sleeps at once. */
#define BARRIER_SPINS 2048

static int cpus_allowed(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void ferry_threadpool_barrier(struct ferry_threadpool *pool) {
    if (pool->n_threads == 1) return;
    int sense = atomic_load_explicit(&pool->barrier_sense, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&pool->barrier_count, 1, memory_order_acq_rel) ==
        pool->n_threads - 1) {
        atomic_store_explicit(&pool->barrier_count, 0, memory_order_relaxed);
        atomic_store(&pool->barrier_sense, !sense); /* seq_cst: ordered before the load below */
        if (atomic_load(&pool->barrier_sleepers) > 0) futex_wake_all(&pool->barrier_sense);
        return;
    }
    for (unsigned spins = 0; spins < pool->spins; spins++) {
        if (atomic_load_explicit(&pool->barrier_sense, memory_order_acquire) != sense) return;
        cpu_relax();
    }
    /* Registered before re-checking: either the last thread sees a sleeper
     * and wakes, or this thread sees the flipped sense (both seq_cst). */
    atomic_fetch_add(&pool->barrier_sleepers, 1);
    while (atomic_load(&pool->barrier_sense) == sense) futex_wait(&pool->barrier_sense, sense);
    atomic_fetch_sub(&pool->barrier_sleepers, 1);
}

static void *worker_main(void *p) {
    struct worker *w = p;
    struct ferry_threadpool *pool = w->pool;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (pool->generation == seen && !pool->shutdown) pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->shutdown) {
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        seen = pool->generation;
        ferry_job_fn fn = pool->fn;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->lock);

        fn(arg, w->ith, pool->n_threads);

        pthread_mutex_lock(&pool->lock);
        if (--pool->running == 0) pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->lock);
    }
}

struct ferry_threadpool *ferry_threadpool_create(int n_threads) {
    if (n_threads < 1) return NULL;
    struct ferry_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pool->spins = n_threads <= cpus_allowed() ? BARRIER_SPINS : 0;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->barrier_count, 0);
    atomic_init(&pool->barrier_sense, 0);
    atomic_init(&pool->barrier_sleepers, 0);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (!pool->workers) goto fail;
        for (int i = 0; i < n_threads - 1; i++) {
            pool->workers[i].pool = pool;
            pool->workers[i].ith = i + 1;
            if (pthread_create(&pool->workers[i].thread, NULL, worker_main, &pool->workers[i]) != 0) {
                pool->n_threads = i + 1; /* join the ones that started */
                ferry_threadpool_destroy(pool);
                return NULL;
            }
        }
    }
    return pool;
fail:
    free(pool);
    return NULL;
}

void ferry_threadpool_destroy(struct ferry_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->shutdown = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->workers[i].thread, NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool->workers);
    free(pool);
}

int ferry_threadpool_size(const struct ferry_threadpool *pool) { return pool->n_threads; }

void ferry_threadpool_run(struct ferry_threadpool *pool, ferry_job_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->running = pool->n_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    fn(arg, 0, pool->n_threads);

    pthread_mutex_lock(&pool->lock);
    while (pool->running > 0) pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
