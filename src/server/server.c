/* ferry server: the listener, the accept loop, one thread per connection,
 * stop, and the live counters.
 *
 * The accept loop polls the listening socket and a self-pipe; stop writes
 * one byte to the pipe (async-signal-safe), after which the loop shuts
 * every open connection's socket down (their threads wake with an error,
 * free their buffers and exit) and joins the threads. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ferry/log.h"
#include "server/internal.h"

/* An integer from the environment, or def when unset or out of [min, max]
 * (with a warning: a typo must not silently change a limit). */
static int env_int(const char *name, int def, long min, long max) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return def;
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > max) {
        ferry_log_warn("ignoring %s=%s: expected an integer in %ld..%ld", name, v, min, max);
        return def;
    }
    return (int)n;
}

void ferry_server_config_defaults(struct ferry_server_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 50052;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->n_threads = cores >= 2 ? (int)(cores / 2) : 1;
    cfg->cache_dir = NULL;
    cfg->cache_max_bytes = 10ull << 30;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    cfg->mem_limit = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 8ull << 30;
    cfg->max_conns = env_int("FERRY_MAX_CONNS", server_default_max_conns(NULL, 0), 1, 1 << 20);
    cfg->max_conns_per_peer = env_int("FERRY_MAX_CONNS_PER_PEER", 0, 0, 1 << 20);
    cfg->evict_grace_ms = 1000;
    cfg->evict_loaded = false;
    cfg->hello_timeout_ms = 10000;
    cfg->idle_timeout_ms = env_int("FERRY_IDLE_TIMEOUT_MS", 60000, 0, INT32_MAX);
    cfg->frame_timeout_ms = FERRY_CONN_DEFAULT_FRAME_MS;
    cfg->max_payload = cfg->mem_limit; /* a SET_TENSOR cannot be larger than all memory */
}

bool server_mem_reserve(struct ferry_server *s, uint64_t size) {
    uint64_t cur = atomic_load(&s->bytes_allocated);
    for (;;) {
        if (size > s->cfg.mem_limit || cur > s->cfg.mem_limit - size) return false;
        if (atomic_compare_exchange_weak(&s->bytes_allocated, &cur, cur + size)) return true;
    }
}

void server_mem_release(struct ferry_server *s, uint64_t size) {
    atomic_fetch_sub(&s->bytes_allocated, size);
}

/* The weights of --model, indexed with every core: the server serves
 * nothing until they are. */
static int open_local_weights(struct ferry_server *s, const struct ferry_server_config *cfg,
                              struct ferry_error *err) {
    char dir[4096];
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n = cfg->model_index_dir ? snprintf(dir, sizeof dir, "%s", cfg->model_index_dir)
            : s->cache_dir       ? snprintf(dir, sizeof dir, "%s/local-index", s->cache_dir)
            : xdg && *xdg        ? snprintf(dir, sizeof dir, "%s/ferry", xdg)
            : home && *home      ? snprintf(dir, sizeof dir, "%s/.cache/ferry", home)
                                 : -1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return ferry_local_weights_open(cfg->model_paths, cfg->n_model_paths, n > 0 && (size_t)n < sizeof dir ? dir : NULL,
                                    cores > 0 ? (int)cores : 1, &s->local, err);
}

int ferry_server_create(const struct ferry_server_config *cfg, struct ferry_server **out,
                        struct ferry_error *err) {
    *out = NULL;
    struct ferry_server *s = calloc(1, sizeof *s);
    if (s == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    s->cfg = *cfg;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    snprintf(s->host, sizeof s->host, "%s", cfg->host ? cfg->host : "127.0.0.1");
    s->cfg.host = s->host;
    if (cfg->rdma_dev) {
        snprintf(s->rdma_dev, sizeof s->rdma_dev, "%s", cfg->rdma_dev);
        s->cfg.rdma_dev = s->rdma_dev;
    }
    if (cfg->rdma_ip) {
        snprintf(s->rdma_ip, sizeof s->rdma_ip, "%s", cfg->rdma_ip);
        s->cfg.rdma_ip = s->rdma_ip;
    }
    if (s->cfg.n_threads < 1) s->cfg.n_threads = 1;
    char why[256];
    int auto_conns = server_default_max_conns(why, sizeof why);
    if (s->cfg.max_conns < 1) s->cfg.max_conns = auto_conns;
    if (s->cfg.max_conns == auto_conns) snprintf(s->limits, sizeof s->limits, "%s", why);
    if (s->cfg.max_conns_per_peer < 1) s->cfg.max_conns_per_peer = s->cfg.max_conns / 2;
    if (s->cfg.max_conns_per_peer < 1) s->cfg.max_conns_per_peer = 1;
    if (s->cfg.max_conns_per_peer > s->cfg.max_conns) s->cfg.max_conns_per_peer = s->cfg.max_conns;
    if (s->cfg.evict_grace_ms < 0) s->cfg.evict_grace_ms = 0;
    if (s->cfg.idle_timeout_ms < 0) s->cfg.idle_timeout_ms = 0;
    /* zeros mean "the default" for the bounds a zeroed config would break */
    struct ferry_server_config def;
    ferry_server_config_defaults(&def);
    if (s->cfg.mem_limit == 0) s->cfg.mem_limit = def.mem_limit;
    if (s->cfg.max_payload == 0) s->cfg.max_payload = s->cfg.mem_limit;
    if (s->cfg.cache_max_bytes == 0) s->cfg.cache_max_bytes = def.cache_max_bytes;
    pthread_mutex_init(&s->engine_lock, NULL);
    pthread_mutex_init(&s->conns_lock, NULL);
    int rc;
    if (cfg->cache_dir) {
        s->cache_dir = strdup(cfg->cache_dir);
        s->cfg.cache_dir = s->cache_dir;
        rc = s->cache_dir ? ferry_cache_open(s->cache_dir, s->cfg.cache_max_bytes, &s->cache, err)
                          : ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
        if (rc) goto fail;
    }
    if (cfg->n_model_paths > 0 && (rc = open_local_weights(s, cfg, err)) != FERRY_OK) goto fail;
    if (pipe2(s->stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = ferry_fail(err, FERRY_ERR_IO, "pipe: %s", strerror(errno));
        goto fail;
    }
    /* never serve numbers from kernels that compute wrong ones */
    if ((rc = ferry_engine_self_check(NULL, err)) != FERRY_OK) goto fail;
    s->engine = ferry_engine_create(s->cfg.n_threads);
    if (s->engine == NULL) {
        rc = ferry_fail(err, FERRY_ERR_NOMEM, "cannot start %d engine threads", s->cfg.n_threads);
        goto fail;
    }
    if (s->cfg.transport < FERRY_TRANSPORT_AUTO || s->cfg.transport > FERRY_TRANSPORT_RDMA) {
        rc = ferry_fail(err, FERRY_ERR_INVALID, "transport %d: expected auto, tcp or rdma", s->cfg.transport);
        goto fail;
    }
    if (s->cfg.transport == FERRY_TRANSPORT_RDMA && !ferry_rdma_available(why, sizeof why)) {
        rc = ferry_fail(err, FERRY_ERR_UNSUPPORTED, "RDMA required (--transport rdma), but %s", why);
        goto fail;
    }
    server_fit_fd_limit(s);
    rc = ferry_tcp_listen(s->host, cfg->port, &s->listener, err);
    if (rc) goto fail;
    *out = s;
    return FERRY_OK;
fail:
    ferry_server_destroy(s);
    return rc;
}

int ferry_server_port(const struct ferry_server *s) { return ferry_listener_port(s->listener); }

void ferry_server_stop(struct ferry_server *s) {
    atomic_store(&s->stopping, true);
    char b = 1;
    ssize_t w = write(s->stop_pipe[1], &b, 1); /* full pipe: a stop is already pending */
    (void)w;
}

/* Joins threads that have finished; all of them when `all`. Only the run
 * thread changes the list, so it walks it without the lock; `finished`
 * and the links themselves (read by admit under the lock) need it. */
static void reap(struct ferry_server *s, bool all) {
    struct server_conn **pp = &s->conns;
    while (*pp) {
        struct server_conn *sc = *pp;
        pthread_mutex_lock(&s->conns_lock);
        bool done = sc->finished;
        pthread_mutex_unlock(&s->conns_lock);
        if (done || all) {
            pthread_join(sc->thread, NULL);
            pthread_mutex_lock(&s->conns_lock);
            *pp = sc->next;
            pthread_mutex_unlock(&s->conns_lock);
            s->n_conns--;
            free(sc);
        } else {
            pp = &sc->next;
        }
    }
}

/* "127.0.0.1:41234" -> "127.0.0.1": the per-peer bound counts addresses. */
static void peer_addr(const char *peer, char *out, size_t cap) {
    snprintf(out, cap, "%s", peer);
    char *colon = strrchr(out, ':');
    if (colon) *colon = '\0';
}

static void accept_one(struct ferry_server *s) {
    struct ferry_conn *c = NULL;
    struct ferry_error err;
    if (ferry_listener_accept(s->listener, 0, &c, &err) != FERRY_OK) {
        if (err.code != FERRY_ERR_TIMEOUT) ferry_log_warn("accept: %s", err.msg);
        return;
    }
    char addr[FERRY_CONN_ADDR_MAX], why[160];
    peer_addr(ferry_conn_peer(c), addr, sizeof addr);
    uint32_t code = 0;
    if (server_admit(s, addr, &code, why, sizeof why) != FERRY_OK) {
        ferry_log_warn("refusing %s: %s", ferry_conn_peer(c), why);
        atomic_fetch_add(&s->conns_refused, 1);
        server_refuse(s, c, code, why); /* reads its HELLO, tells a ferry client why */
        return;
    }
    /* HELLO may upgrade it to RDMA */
    struct ferry_rdma_options ro = { .mode = s->cfg.transport, .server = true, .dev = s->cfg.rdma_dev,
                                     .ip = s->cfg.rdma_ip, .gid_index = -1 };
    const char *fail = NULL;
    int rc = 0;
    struct server_conn *sc = NULL;
    if (ferry_conn_offer_upgrade(c, &ro, &c, &err) != FERRY_OK) {
        c = NULL; /* taken, also on failure */
        fail = err.msg;
    } else if ((sc = calloc(1, sizeof *sc)) == NULL) {
        fail = "out of memory";
    } else {
        sc->server = s;
        sc->conn = c;
        snprintf(sc->addr, sizeof sc->addr, "%s", addr);
        atomic_store(&sc->idle_since_ns, server_now_ns());
        sc->holds_slot = true;
        sc->next = s->conns; /* listed before the thread runs: release finds it under the lock */
        pthread_mutex_lock(&s->conns_lock);
        s->conns = sc;
        pthread_mutex_unlock(&s->conns_lock);
        atomic_fetch_add(&s->conns_accepted, 1);
        atomic_fetch_add(&s->conns_open, 1);
        if ((rc = pthread_create(&sc->thread, NULL, server_conn_main, sc)) == 0) {
            s->n_conns++;
            return;
        }
        fail = strerror(rc);
        pthread_mutex_lock(&s->conns_lock);
        s->conns = sc->next;
        pthread_mutex_unlock(&s->conns_lock);
        atomic_fetch_sub(&s->conns_open, 1);
        atomic_fetch_sub(&s->conns_accepted, 1);
    }
    ferry_log_error("refusing %s: %s%s", addr, rc ? "cannot start a thread: " : "", fail);
    atomic_fetch_add(&s->conns_refused, 1);
    pthread_mutex_lock(&s->conns_lock);
    s->slots_used--; /* admit took it */
    pthread_mutex_unlock(&s->conns_lock);
    ferry_conn_close(c);
    free(sc);
}

int ferry_server_run(struct ferry_server *s, struct ferry_error *err) {
    (void)err;
    char limits[512];
    ferry_server_describe_limits(s, limits, sizeof limits);
    ferry_log_info("serving on %s:%d: max connections %s", s->host, ferry_server_port(s), limits);
    struct pollfd p[2 + SERVER_MAX_REFUSALS];
    while (!atomic_load(&s->stopping)) {
        reap(s, false);
        p[0] = (struct pollfd){ .fd = ferry_listener_fd(s->listener), .events = POLLIN };
        p[1] = (struct pollfd){ .fd = s->stop_pipe[0], .events = POLLIN };
        int timeout = 1000;
        int n_ref = server_refusals_pollfds(s, p + 2, &timeout);
        int n = poll(p, (nfds_t)(2 + n_ref), timeout);
        if (n < 0 && errno != EINTR) {
            ferry_log_error("poll: %s", strerror(errno));
            break;
        }
        if (n < 0) continue;
        if (p[1].revents) break;
        server_refusals_poll(s, p + 2); /* answers, and closes those past their deadline */
        if (p[0].revents & POLLIN) accept_one(s);
    }
    server_refusals_close_all(s);
    /* wake every connection thread: a shut-down socket fails their next I/O */
    pthread_mutex_lock(&s->conns_lock);
    for (struct server_conn *sc = s->conns; sc; sc = sc->next)
        if (!sc->closing) shutdown(ferry_conn_fd(sc->conn), SHUT_RDWR);
    pthread_mutex_unlock(&s->conns_lock);
    reap(s, true);
    char drain[64];
    while (read(s->stop_pipe[0], drain, sizeof drain) > 0) {}
    return FERRY_OK;
}

void ferry_server_destroy(struct ferry_server *s) {
    if (s == NULL) return;
    reap(s, true);
    ferry_listener_close(s->listener);
    ferry_engine_destroy(s->engine);
    ferry_cache_close(s->cache);
    ferry_local_weights_close(s->local);
    if (s->stop_pipe[0] >= 0) close(s->stop_pipe[0]);
    if (s->stop_pipe[1] >= 0) close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->engine_lock);
    pthread_mutex_destroy(&s->conns_lock);
    free(s->cache_dir);
    free(s);
}

static uint64_t tv_ns(struct timeval tv) {
    return (uint64_t)tv.tv_sec * 1000000000ull + (uint64_t)tv.tv_usec * 1000ull;
}

void ferry_server_get_stats(struct ferry_server *s, struct ferry_server_stats *out) {
    memset(out, 0, sizeof *out);
    out->conns_accepted = atomic_load(&s->conns_accepted);
    out->conns_refused = atomic_load(&s->conns_refused);
    out->conns_open = atomic_load(&s->conns_open);
    out->conns_dropped = atomic_load(&s->conns_dropped);
    out->conns_evicted = atomic_load(&s->conns_evicted);
    out->conns_idle_closed = atomic_load(&s->conns_idle_closed);
    out->buffers_open = atomic_load(&s->buffers_open);
    out->bytes_allocated = atomic_load(&s->bytes_allocated);
    out->commands = atomic_load(&s->commands);
    out->bytes_in = atomic_load(&s->bytes_in);
    out->bytes_out = atomic_load(&s->bytes_out);
    out->graphs_computed = atomic_load(&s->graphs_computed);
    out->compute_ns = atomic_load(&s->compute_ns);
    if (s->local) {
        struct ferry_local_weights_stats ls;
        ferry_local_weights_get_stats(s->local, &ls);
        out->local_hits = ls.hits;
        out->local_bytes = ls.bytes_served;
        out->local_files = ls.files;
        out->local_tensors = ls.tensors;
        out->local_indexed_bytes = ls.bytes;
        out->local_bytes_mapped = ls.bytes_mapped;
    }
    if (s->cache) {
        struct ferry_cache_stats cs;
        ferry_cache_get_stats(s->cache, &cs);
        out->cache_hits = cs.hits;
        out->cache_misses = cs.misses;
        out->cache_files = cs.files;
        out->cache_bytes = cs.bytes;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        out->cpu_user_ns = tv_ns(ru.ru_utime);
        out->cpu_sys_ns = tv_ns(ru.ru_stime);
    }
}

void ferry_server_cache_flush(struct ferry_server *s) {
    if (s->cache) ferry_cache_flush(s->cache);
}
