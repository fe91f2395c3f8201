/* bench_cache: what the server's tensor cache saves a client that loads
 * the same weights again, against sending them.
 *
 *   bench_cache [--mib TOTAL] [--tensor-mib SIZE] [--rounds N]
 *
 * An in-process `ferry serve` on loopback; the client uploads TOTAL MiB in
 * tensors of SIZE MiB (above the 10 MiB hash threshold) the way ggml's and
 * ferry's clients do (SET_TENSOR_HASH first, the bytes on a miss):
 *   send       a server without a cache: the hash probe misses and every
 *              byte crosses the socket (what ggml's client always does)
 *   send-raw   the same with no hash probe at all
 *   store      first load into a cache: miss, send, the server writes files
 *   hit        a second load: every tensor from the cache
 *   restart    the first load after a server restart (the cache's record of
 *              which files it has verified is kept beside them)
 *   verify     the same with that record deleted: each file re-hashed once
 * Each line gives the best of N rounds, in ms and MB/s of tensor bytes, and
 * the client's own FNV-1a hashing, which every line but `send-raw`
 * includes. A hit is worth it when it beats `send`. */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "ferry/tensor.h"
#include "proto/rpc.h"

struct server {
    struct ferry_server *s;
    pthread_t thread;
    char endpoint[48];
};

static void *serve(void *arg) {
    struct ferry_error err;
    ferry_server_run(arg, &err);
    return NULL;
}

static int server_start(struct server *sv, const char *cache_dir) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.cache_dir = cache_dir;
    cfg.cache_max_bytes = 64ull << 30;
    struct ferry_error err;
    if (ferry_server_create(&cfg, &sv->s, &err)) {
        fprintf(stderr, "bench_cache: server: %s\n", err.msg);
        return -1;
    }
    snprintf(sv->endpoint, sizeof sv->endpoint, "127.0.0.1:%d", ferry_server_port(sv->s));
    pthread_create(&sv->thread, NULL, serve, sv->s);
    return 0;
}

static void server_stop(struct server *sv) {
    ferry_server_stop(sv->s);
    pthread_join(sv->thread, NULL);
    ferry_server_destroy(sv->s);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One load of every tensor; returns ms, or -1 on an error. *hits counts
 * tensors the server took from its cache. */
static double load(const char *endpoint, uint8_t *data, int n_tensors, uint64_t tsize, bool by_hash, int *hits) {
    struct ferry_client *c = NULL;
    struct ferry_error err;
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    if (ferry_client_connect(endpoint, &o, &c, &err)) {
        fprintf(stderr, "bench_cache: %s\n", err.msg);
        return -1;
    }
    struct ferry_remote_buffer buf;
    struct ferry_tensor *t = calloc((size_t)n_tensors, sizeof *t);
    double ms = -1;
    *hits = 0;
    if (t && !ferry_client_alloc_buffer(c, 0, (uint64_t)n_tensors * tsize, &buf, &err)) {
        int rc = 0;
        const double t0 = now_ms();
        for (int i = 0; i < n_tensors && !rc; i++) {
            int64_t ne[1] = { (int64_t)tsize };
            ferry_tensor_init(&t[i], FERRY_TYPE_I8, 1, ne, NULL);
            snprintf(t[i].name, sizeof t[i].name, "w%d", i);
            rc = ferry_remote_tensor_place(&t[i], &buf, (uint64_t)i * tsize, &err);
            bool hit = false;
            if (!rc)
                rc = by_hash ? ferry_client_upload(c, &t[i], 0, data + (size_t)i * tsize, tsize, &hit, &err)
                             : ferry_client_set_tensor(c, &t[i], 0, data + (size_t)i * tsize, tsize, &err);
            *hits += hit;
        }
        /* a round trip, so that the last SET_TENSOR has landed */
        uint32_t devices;
        if (!rc) rc = ferry_client_device_count(c, &devices, &err);
        if (!rc) ms = now_ms() - t0;
        else fprintf(stderr, "bench_cache: %s\n", err.msg);
    }
    free(t);
    ferry_client_close(c);
    return ms;
}

static void line(const char *what, double ms, uint64_t bytes, int hits, int n) {
    printf("%-8s %9.1f ms %8.0f MB/s   %d/%d from the cache\n", what, ms, bytes / 1e3 / ms, hits, n);
}

int main(int argc, char **argv) {
    int total_mib = 512, tensor_mib = 32, rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mib")) total_mib = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tensor-mib")) tensor_mib = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        else break;
    }
    if (total_mib < 16 || tensor_mib < 11 || tensor_mib > total_mib || rounds < 1 || (argc - 1) % 2) {
        fprintf(stderr, "usage: bench_cache [--mib TOTAL>=16] [--tensor-mib SIZE>10] [--rounds N]\n");
        return 2;
    }
    ferry_log_set_level(FERRY_LOG_WARN);
    const uint64_t tsize = (uint64_t)tensor_mib << 20;
    const int n = total_mib / tensor_mib;
    const uint64_t bytes = (uint64_t)n * tsize;
    uint8_t *data = malloc(bytes);
    if (!data) return 1;
    uint64_t x = 88172645463325252ull;
    for (uint64_t i = 0; i < bytes / 8; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(data + 8 * i, &x, 8);
    }
    char dir[] = "/tmp/ferry-bench-cache-XXXXXX";
    if (!mkdtemp(dir)) return 1;

    double t0 = now_ms();
    uint64_t sink = 0;
    for (int i = 0; i < n; i++) sink ^= ferry_fnv1a64(data + (size_t)i * tsize, tsize);
    const double hash_ms = now_ms() - t0;
    printf("%d tensors of %d MiB (%.0f MB); client FNV-1a hashing: %.1f ms (%.0f MB/s)%s\n", n, tensor_mib,
           bytes / 1e6, hash_ms, bytes / 1e3 / hash_ms, sink ? "" : " ");

    struct server sv;
    double best;
    int hits = 0;
#define BEST(expr)                                                 \
    best = 1e30;                                                   \
    for (int r = 0; r < rounds; r++) {                             \
        double ms = (expr);                                        \
        if (ms < 0) return 1;                                      \
        if (ms < best) best = ms;                                  \
    }
    if (server_start(&sv, NULL)) return 1;
    BEST(load(sv.endpoint, data, n, tsize, true, &hits));
    line("send", best, bytes, hits, n);
    BEST(load(sv.endpoint, data, n, tsize, false, &hits));
    line("send-raw", best, bytes, hits, n);
    server_stop(&sv);

    if (server_start(&sv, dir)) return 1;
    best = load(sv.endpoint, data, n, tsize, true, &hits);
    if (best < 0) return 1;
    line("store", best, bytes, hits, n);
    BEST(load(sv.endpoint, data, n, tsize, true, &hits));
    line("hit", best, bytes, hits, n);
    server_stop(&sv);

    if (server_start(&sv, dir)) return 1;
    best = load(sv.endpoint, data, n, tsize, true, &hits);
    if (best < 0) return 1;
    line("restart", best, bytes, hits, n);
    server_stop(&sv);

    char index[sizeof dir + 32];
    snprintf(index, sizeof index, "%s/.ferry-verified", dir);
    unlink(index);
    if (server_start(&sv, dir)) return 1;
    best = load(sv.endpoint, data, n, tsize, true, &hits);
    if (best < 0) return 1;
    line("verify", best, bytes, hits, n);
    server_stop(&sv);

    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0))) continue;
        char path[sizeof dir + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d) closedir(d);
    rmdir(dir);
    free(data);
    return 0;
}
