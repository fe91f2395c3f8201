/* ferry: the RPC server (`ferry serve`). Speaks ggml's RPC protocol v5.x so
 * unmodified ggml / llama.cpp clients can offload graphs to ferry's CPU
 * engine. Several clients at once, each with its own buffers; nothing a
 * client sends can crash the server or touch another client's data. */
#ifndef FERRY_SERVER_H
#define FERRY_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_server_config {
    const char *host;          /* IPv4 literal or "localhost"; default "127.0.0.1" */
    int port;                  /* default 50052; 0 picks a free port (tests) */
    int n_threads;             /* engine threads; default: cores / 2, at least 1 */
    const char *cache_dir;     /* tensor cache directory, NULL = no cache */
    uint64_t cache_max_bytes;  /* cache size bound, least recently used evicted */
    uint64_t mem_limit;        /* bytes all clients together may allocate; default: physical RAM */
    int max_conns;             /* connections served at once. Default: min(1024, RAM / 8 MiB,
                                  open-file hard limit - 64), or $FERRY_MAX_CONNS. When all are
                                  taken, the one idle longest is evicted to make room (below);
                                  with none idle, the new one is refused with a log line (and,
                                  for ferry clients, an error reply saying why) */
    int max_conns_per_peer;    /* connections one IP address may hold; 0 (default): half of
                                  max_conns, at least 1; $FERRY_MAX_CONNS_PER_PEER */
    int evict_grace_ms;        /* a connection is evicted only after this long without a
                                  command; default 1000 */
    bool evict_loaded;         /* under pressure, connections holding buffers may be evicted
                                  too (those holding none go first); default false: never */
    int hello_timeout_ms;      /* time a new connection has to send HELLO */
    int idle_timeout_ms;       /* between requests, for connections holding no buffers;
                                  default 60000 ($FERRY_IDLE_TIMEOUT_MS); 0 = none. A
                                  connection holding buffers is never closed for idleness */
    int frame_timeout_ms;      /* from a frame's first byte to its last */
    uint64_t max_payload;      /* largest SET_TENSOR / GRAPH_COMPUTE payload accepted */
    bool no_ferry_ext;         /* behave exactly like a ggml server: no HELLO extension flag,
                                  FERRY_STATS refused (tests); default false */
    int transport;             /* FERRY_TRANSPORT_AUTO (default): RDMA for clients that offer it
                                  when a device is there; _TCP: never; _RDMA: required, clients
                                  without it are refused and create fails without a device */
    const char *rdma_dev;      /* RDMA device name; NULL: $FERRY_RDMA_DEV or the one whose GID
                                  is the address the client connected to */
    const char *rdma_ip;       /* use the GID of this IPv4 address; NULL: $FERRY_RDMA_IP or the
                                  connection's local address */
    const char *const *model_paths; /* GGUF files or directories whose tensors a matching
                                       SET_TENSOR_HASH gets from local disk; indexed at create */
    int n_model_paths;
    const char *model_index_dir; /* where their indexes are kept; NULL: cache_dir/local-index,
                                    else $XDG_CACHE_HOME/ferry or ~/.cache/ferry */
};

#ifndef FERRY_TRANSPORT_AUTO
#define FERRY_TRANSPORT_AUTO 0
#define FERRY_TRANSPORT_TCP 1
#define FERRY_TRANSPORT_RDMA 2
#endif

/* Fills every field with its default. */
void ferry_server_config_defaults(struct ferry_server_config *cfg);

struct ferry_server;

/* Binds and listens; does not serve yet. */
int ferry_server_create(const struct ferry_server_config *cfg, struct ferry_server **out,
                        struct ferry_error *err);
/* The bound port (useful with port 0). */
int ferry_server_port(const struct ferry_server *s);
/* The connection limits in effect, in words, for a banner: "1024 (min of
 * 1024, 15 GiB RAM / 8 MiB, 1048512 fds), 512 per peer, idle timeout 60 s
 * without buffers". */
void ferry_server_describe_limits(const struct ferry_server *s, char *out, size_t cap);
/* Serves until ferry_server_stop; returns FERRY_OK after a stop. */
int ferry_server_run(struct ferry_server *s, struct ferry_error *err);
/* Asks a running server to stop: async-signal-safe and callable from any
 * thread. Open connections are closed and their buffers freed. */
void ferry_server_stop(struct ferry_server *s);
void ferry_server_destroy(struct ferry_server *s);

/* Live counters, for tests, logs and `ferry bench`. */
struct ferry_server_stats {
    uint64_t conns_accepted, conns_refused, conns_open;
    uint64_t conns_dropped; /* closed by the server for a protocol violation or timeout */
    uint64_t conns_evicted; /* idle ones closed to make room for a new one */
    uint64_t conns_idle_closed; /* closed after idle_timeout_ms holding no buffers (also dropped) */
    uint64_t buffers_open, bytes_allocated;
    uint64_t commands, bytes_in, bytes_out;
    uint64_t graphs_computed, compute_ns;
    uint64_t cache_hits, cache_misses, cache_files, cache_bytes;
    uint64_t local_hits, local_bytes;  /* tensors (and bytes) filled from the local model files */
    uint64_t local_files, local_tensors, local_indexed_bytes; /* what those files hold */
    uint64_t local_bytes_mapped; /* of local_bytes, mapped from the file rather than copied */
    uint64_t cpu_user_ns, cpu_sys_ns; /* the server process's CPU time */
};
void ferry_server_get_stats(struct ferry_server *s, struct ferry_server_stats *out);
/* Waits until the tensor cache's queued writes are on disk (they run on a
 * writer thread, off the connections); no-op without a cache. */
void ferry_server_cache_flush(struct ferry_server *s);

#ifdef __cplusplus
}
#endif
#endif
