/* bench_conns: the server under connection pressure, in one process.
 *
 *   bench_conns [--max-conns N] [--per-peer N] [--bursts N] [--burst N] [--idle N] [--seconds S]
 *
 * An in-process server (its defaults unless told) on a loopback port. Meanwhile:
 *   - `idle` connections from 127.0.0.2 complete HELLO and then sit idle;
 *   - bursts of `burst` connections from 127.0.0.3..: all opened (connect +
 *     HELLO), then all closed, `bursts` times (default 10 x 100 = 1,000);
 *   - 4 workers from 127.0.0.1 through libferry: a buffer, SET_TENSOR of two
 *     inputs, GRAPH_COMPUTE (add), GET_TENSOR, checked, over and over.
 * Each second it prints the process's RSS and thread count (from
 * /proc/self/status: the server's and the bench's own threads) and the
 * server's counters; at the end, each worker's rounds and failures. The
 * point: the workers never fail, whatever the others do. Figures, no
 * pass/fail thresholds; exit 1 only if a worker failed. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "proto/rpc.h"

#define WORKERS 4
#define N 4096 /* floats per input */

static int g_port;
static atomic_bool g_done;
static atomic_int g_burst_ok, g_burst_refused, g_idle_up;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- raw connections from a chosen loopback address ------------------------------ */

static int raw_open(const char *from) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = { .sin_family = AF_INET }, b = { .sin_family = AF_INET, .sin_port = htons((uint16_t)g_port) };
    inet_pton(AF_INET, from, &a.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &b.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || connect(fd, (struct sockaddr *)&b, sizeof b)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* HELLO with zero caps (a ggml client); false when the server closed instead. */
static bool raw_hello(int fd) {
    uint8_t req[9 + 24] = { FERRY_RPC_CMD_HELLO, 24 }, rsp[8 + 28];
    if (send(fd, req, sizeof req, MSG_NOSIGNAL) != (ssize_t)sizeof req) return false;
    for (size_t got = 0; got < sizeof rsp;) {
        ssize_t r = recv(fd, rsp + got, sizeof rsp - got, 0);
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

static void *idle_main(void *arg) {
    int n = *(int *)arg;
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n && !atomic_load(&g_done); i++) {
        fds[i] = raw_open("127.0.0.2");
        if (fds[i] >= 0 && raw_hello(fds[i])) atomic_fetch_add(&g_idle_up, 1);
    }
    while (!atomic_load(&g_done)) usleep(50000);
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    return NULL;
}

struct bursts {
    int n, size;
};

static void *burst_main(void *arg) {
    struct bursts *b = arg;
    int *fds = calloc((size_t)b->size, sizeof *fds);
    for (int k = 0; k < b->n && !atomic_load(&g_done); k++) {
        char from[32];
        snprintf(from, sizeof from, "127.0.0.%d", 3 + k % 8); /* several hosts */
        for (int i = 0; i < b->size; i++) {
            fds[i] = raw_open(from);
            bool ok = fds[i] >= 0 && raw_hello(fds[i]);
            atomic_fetch_add(ok ? &g_burst_ok : &g_burst_refused, 1);
        }
        usleep(100000); /* held a moment, all at once */
        for (int i = 0; i < b->size; i++)
            if (fds[i] >= 0) close(fds[i]);
        usleep(100000);
    }
    free(fds);
    return NULL;
}

/* ---- workers through libferry ---------------------------------------------------- */

struct worker {
    int id;
    uint64_t rounds, failures;
    char last_error[256];
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", g_port);
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.response_timeout_ms = 30000;
    struct ferry_client *c = NULL;
    struct ferry_error err;
    if (ferry_client_connect(ep, &o, &c, &err) != FERRY_OK) {
        w->failures++;
        snprintf(w->last_error, sizeof w->last_error, "%s", err.msg);
        return NULL;
    }
    struct ferry_tensor a, b, sum;
    int64_t ne[1] = { N };
    ferry_tensor_init(&a, FERRY_TYPE_F32, 1, ne, NULL);
    ferry_tensor_init(&b, FERRY_TYPE_F32, 1, ne, NULL);
    ferry_tensor_init(&sum, FERRY_TYPE_F32, 1, ne, NULL);
    sum.op = FERRY_OP_ADD, sum.src[0] = &a, sum.src[1] = &b, sum.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    struct ferry_remote_buffer buf;
    float *x = malloc(3 * N * sizeof(float)), *y = x + N, *got = y + N;
    int rc = ferry_client_alloc_buffer(c, 0, 3 * N * sizeof(float), &buf, &err);
    if (!rc) rc = ferry_remote_tensor_place(&a, &buf, 0, &err);
    if (!rc) rc = ferry_remote_tensor_place(&b, &buf, N * sizeof(float), &err);
    if (!rc) rc = ferry_remote_tensor_place(&sum, &buf, 2 * N * sizeof(float), &err);
    struct ferry_tensor *nodes[1] = { &sum };
    while (!rc && !atomic_load(&g_done)) {
        for (int i = 0; i < N; i++) x[i] = (float)(i + w->id), y[i] = (float)(w->rounds % 1000);
        rc = ferry_client_set_tensor(c, &a, 0, x, N * sizeof(float), &err);
        if (!rc) rc = ferry_client_set_tensor(c, &b, 0, y, N * sizeof(float), &err);
        if (!rc) rc = ferry_client_graph_compute(c, 0, nodes, 1, &err);
        if (!rc) rc = ferry_client_get_tensor(c, &sum, 0, got, N * sizeof(float), &err);
        for (int i = 0; i < N && !rc; i++)
            if (got[i] != x[i] + y[i]) rc = ferry_fail(&err, FERRY_ERR_INVALID, "wrong sum at %d", i);
        if (!rc) w->rounds++;
    }
    if (rc) {
        w->failures++;
        snprintf(w->last_error, sizeof w->last_error, "%s", err.msg);
    }
    free(x);
    ferry_client_close(c);
    return NULL;
}

/* ---- the process, from /proc/self/status ------------------------------------------- */

static void proc_status(long *rss_kib, long *threads) {
    *rss_kib = *threads = -1;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) *rss_kib = strtol(line + 6, NULL, 10);
        if (!strncmp(line, "Threads:", 8)) *threads = strtol(line + 8, NULL, 10);
    }
    if (f) fclose(f);
}

static void *serve(void *arg) {
    struct ferry_error err;
    ferry_server_run(arg, &err);
    return NULL;
}

int main(int argc, char **argv) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 2;
    cfg.mem_limit = 1ull << 30;
    int n_idle = 200, seconds = 0;
    struct bursts b = { 10, 100 };
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v && !strcmp(argv[i], "--max-conns")) cfg.max_conns = atoi(v), i++;
        else if (v && !strcmp(argv[i], "--per-peer")) cfg.max_conns_per_peer = atoi(v), i++;
        else if (v && !strcmp(argv[i], "--bursts")) b.n = atoi(v), i++;
        else if (v && !strcmp(argv[i], "--burst")) b.size = atoi(v), i++;
        else if (v && !strcmp(argv[i], "--idle")) n_idle = atoi(v), i++;
        else if (v && !strcmp(argv[i], "--seconds")) seconds = atoi(v), i++;
        else {
            fprintf(stderr, "usage: bench_conns [--max-conns N] [--per-peer N] [--bursts N] [--burst N] [--idle N] "
                            "[--seconds S]\n");
            return 2;
        }
    }
    /* a thousand sockets on each side of loopback: the soft limit is often 1024 */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    ferry_log_set_level(getenv("FERRY_BENCH_VERBOSE") ? FERRY_LOG_INFO : FERRY_LOG_ERROR);
    struct ferry_server *s = NULL;
    struct ferry_error err;
    if (ferry_server_create(&cfg, &s, &err) != FERRY_OK) {
        fprintf(stderr, "bench_conns: %s\n", err.msg);
        return 1;
    }
    g_port = ferry_server_port(s);
    char limits[512];
    ferry_server_describe_limits(s, limits, sizeof limits);
    printf("server: max connections %s; open-file limit %llu\n", limits, (unsigned long long)rl.rlim_cur);
    printf("load: %d idle after HELLO (127.0.0.2), %d bursts of %d (127.0.0.3-10), %d workers (127.0.0.1)\n", n_idle,
           b.n, b.size, WORKERS);
    pthread_t st, it, bt, wt[WORKERS];
    pthread_create(&st, NULL, serve, s);
    long rss0, thr0;
    proc_status(&rss0, &thr0);
    struct worker w[WORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < WORKERS; i++) {
        w[i].id = i;
        pthread_create(&wt[i], NULL, worker_main, &w[i]);
    }
    pthread_create(&it, NULL, idle_main, &n_idle);
    pthread_create(&bt, NULL, burst_main, &b);
    double t0 = now_s();
    printf("%6s %9s %8s %6s %9s %8s %8s %8s %10s %10s\n", "t(s)", "rss(MiB)", "threads", "open", "accepted",
           "refused", "evicted", "idle-up", "burst-ok", "burst-ref");
    long rss_max = 0, thr_max = 0;
    bool bursts_done = false;
    for (int tick = 0;; tick++) {
        usleep(tick == 0 ? 0 : 1000000);
        struct ferry_server_stats ss;
        ferry_server_get_stats(s, &ss);
        long rss, thr;
        proc_status(&rss, &thr);
        if (rss > rss_max) rss_max = rss;
        if (thr > thr_max) thr_max = thr;
        printf("%6.1f %9.1f %8ld %6" PRIu64 " %9" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8d %10d %10d\n", now_s() - t0,
               (double)rss / 1024, thr, ss.conns_open, ss.conns_accepted, ss.conns_refused, ss.conns_evicted,
               atomic_load(&g_idle_up), atomic_load(&g_burst_ok), atomic_load(&g_burst_refused));
        fflush(stdout);
        bursts_done = atomic_load(&g_burst_ok) + atomic_load(&g_burst_refused) >= b.n * b.size;
        if ((seconds > 0 && now_s() - t0 >= seconds) || (seconds == 0 && bursts_done) || now_s() - t0 > 600) break;
    }
    atomic_store(&g_done, true);
    pthread_join(bt, NULL);
    pthread_join(it, NULL);
    int failed = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(wt[i], NULL);
        printf("worker %d: %" PRIu64 " rounds (alloc once; set a, set b, compute, get, check), %" PRIu64
               " failures%s%s\n",
               i, w[i].rounds, w[i].failures, w[i].failures ? ": " : "", w[i].last_error);
        failed += w[i].failures > 0;
    }
    printf("process: RSS %.1f MiB before load, peak %.1f MiB; threads %ld before, peak %ld\n", (double)rss0 / 1024,
           (double)rss_max / 1024, thr0, thr_max);
    ferry_server_stop(s);
    pthread_join(st, NULL);
    ferry_server_destroy(s);
    printf("%s\n", failed ? "FAILED: a worker failed" : "ok: no worker failed");
    return failed ? 1 : 0;
}
