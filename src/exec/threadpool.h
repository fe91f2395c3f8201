/* A fixed pool of worker threads that run one job at a time on all threads.
 *
 * The caller's thread is thread 0, so a pool of n threads starts n-1
 * workers. Between jobs the workers sleep on a condition variable; inside a
 * job, ferry_threadpool_barrier() spins briefly and then sleeps on a futex,
 * which keeps the per-node synchronization of a decode step cheap; a pool
 * with more threads than the CPUs it may run on sleeps without spinning. */
#ifndef FERRY_THREADPOOL_H
#define FERRY_THREADPOOL_H

struct ferry_threadpool;

typedef void (*ferry_job_fn)(void *arg, int ith, int nth);

struct ferry_threadpool *ferry_threadpool_create(int n_threads);
void ferry_threadpool_destroy(struct ferry_threadpool *pool);
int ferry_threadpool_size(const struct ferry_threadpool *pool);
/* Runs fn(arg, ith, nth) on every thread and returns when all are done. */
void ferry_threadpool_run(struct ferry_threadpool *pool, ferry_job_fn fn, void *arg);
void ferry_threadpool_barrier(struct ferry_threadpool *pool);

#endif
