/* ferry server internals shared by server.c (listener, threads, stats),
 * conn.c (one connection's command loop), admit.c (who gets a slot, who is
 * evicted), refuse.c (telling refused clients why) and limits.c (how many
 * connections fit). */
#ifndef FERRY_SERVER_INTERNAL_H
#define FERRY_SERVER_INTERNAL_H

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "ferry/engine.h"
#include "ferry/server.h"
#include "proto/rpc.h"
#include "server/cache.h"
#include "server/local_weights.h"
#include "transport/transport.h"

/* A GRAPH_COMPUTE payload is copied into memory before decoding: bound it
 * separately from SET_TENSOR payloads, which land in tensor memory. */
#define FERRY_SERVER_MAX_GRAPH_PAYLOAD (1ull << 30)

struct server_conn {
    struct ferry_server *server;
    struct ferry_conn *conn;
    pthread_t thread;
    char addr[FERRY_CONN_ADDR_MAX]; /* the peer's IP, no port: the per-peer bound's key */
    /* written by the connection thread, read by the accept loop when it
     * looks for a connection to evict */
    _Atomic bool busy;              /* a command is in flight */
    _Atomic uint32_t n_buffers;     /* buffers it holds */
    _Atomic uint64_t idle_since_ns; /* when its last command finished (or it was accepted) */
    _Atomic bool evicted;           /* closed to make room: not a drop */
    /* under conns_lock */
    bool holds_slot; /* counted in slots_used until evicted or finished */
    bool closing;    /* set before the thread closes conn: nobody touches the socket after */
    bool finished;   /* the thread is done and may be joined */
    struct server_conn *next;
};

/* A connection refused at accept: the accept loop reads its HELLO without
 * blocking and, if the client asked for error replies, says why before
 * closing (refuse.c). */
struct server_refusal {
    struct ferry_conn *conn;
    int64_t deadline_ms;
    uint32_t code; /* FERRY_RPC_ERROR_* */
    char reason[160];
    uint8_t got[FERRY_RPC_FRAME_HEADER_SIZE + FERRY_RPC_CONN_CAPS_SIZE];
    size_t n;
};
#define SERVER_MAX_REFUSALS 64

struct ferry_server {
    struct ferry_server_config cfg;
    char host[64];
    char rdma_dev[64], rdma_ip[64]; /* copies: the caller's strings need not outlive create */
    char *cache_dir;
    struct ferry_listener *listener;
    int stop_pipe[2]; /* ferry_server_stop writes a byte; run polls the read end */
    atomic_bool stopping;

    struct ferry_engine *engine;
    pthread_mutex_t engine_lock; /* held only while a graph computes */
    struct ferry_cache *cache;   /* NULL: no cache */
    struct ferry_local_weights *local; /* NULL: no --model */

    pthread_mutex_t conns_lock;
    struct server_conn *conns;
    int n_conns;    /* threads not yet joined */
    int slots_used; /* under conns_lock: connections that count against max_conns */
    char limits[256]; /* how max_conns was chosen, for the startup log */

    struct server_refusal refusals[SERVER_MAX_REFUSALS]; /* the accept loop's own */
    int n_refusals;

    _Atomic uint64_t conns_accepted, conns_refused, conns_open, conns_dropped;
    _Atomic uint64_t conns_evicted, conns_idle_closed;
    _Atomic uint64_t buffers_open, bytes_allocated;
    _Atomic uint64_t commands, bytes_in, bytes_out;
    _Atomic uint64_t graphs_computed, compute_ns;
};

/* The connection thread's body (conn.c). */
void *server_conn_main(void *arg);

/* The connection table (admit.c), called by the accept loop only. Makes
 * room for a new connection from addr: FERRY_OK with a slot taken (an idle
 * connection may have been evicted for it), or the refusal's code
 * (FERRY_RPC_ERROR_*) and reason. */
int server_admit(struct ferry_server *s, const char *addr, uint32_t *code, char *why, size_t cap);
/* The connection thread gives its slot back (unless evicted) as it ends. */
void server_release(struct ferry_server *s, struct server_conn *sc);

/* Refused connections (refuse.c): queued, then answered or closed by
 * server_refusals_poll; their pollfds go into p. */
void server_refuse(struct ferry_server *s, struct ferry_conn *c, uint32_t code, const char *why);
int server_refusals_pollfds(struct ferry_server *s, struct pollfd *p, int *timeout_ms);
void server_refusals_poll(struct ferry_server *s, const struct pollfd *p);
void server_refusals_close_all(struct ferry_server *s);

/* Resource-based default for max_conns (limits.c), and why, in words. */
int server_default_max_conns(char *why, size_t cap);
/* Raises the open-file soft limit so max_conns connections fit, if the
 * hard limit allows. */
void server_fit_fd_limit(struct ferry_server *s);

/* Reserves size bytes of the server-wide mem_limit; false when over it. */
bool server_mem_reserve(struct ferry_server *s, uint64_t size);
void server_mem_release(struct ferry_server *s, uint64_t size);

/* Monotonic nanoseconds: timings, idleness. */
static inline uint64_t server_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
