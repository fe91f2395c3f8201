/* ferry server internals shared by server.c (listener, threads, stats) and
 * conn.c (one connection's command loop). */
#ifndef FERRY_SERVER_INTERNAL_H
#define FERRY_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/engine.h"
#include "ferry/server.h"
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
    bool closing; /* set under conns_lock before the thread closes conn */
    bool finished; /* the thread is done and may be joined */
    struct server_conn *next;
};

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
    int n_conns; /* threads not yet joined */

    _Atomic uint64_t conns_accepted, conns_refused, conns_open, conns_dropped;
    _Atomic uint64_t buffers_open, bytes_allocated;
    _Atomic uint64_t commands, bytes_in, bytes_out;
    _Atomic uint64_t graphs_computed, compute_ns;
};

/* The connection thread's body (conn.c). */
void *server_conn_main(void *arg);

/* Reserves size bytes of the server-wide mem_limit; false when over it. */
bool server_mem_reserve(struct ferry_server *s, uint64_t size);
void server_mem_release(struct ferry_server *s, uint64_t size);

uint64_t server_now_ns(void);

#endif
