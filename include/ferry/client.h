/* ferry: the client library. One struct ferry_client is one connection to
 * one ggml RPC v5 server ("host:port"), ferry's own or ggml's.
 *
 * Every call returns FERRY_OK or a negative ferry_status with a reason in
 * err; nothing aborts. After an I/O, timeout or protocol error the client
 * is broken: every later call fails fast with FERRY_ERR_CLOSED until
 * ferry_client_reconnect(), which opens a new connection and re-creates
 * the client's buffers (their contents are gone with the old connection;
 * large uploads come back cheaply through ferry_client_restore()).
 *
 * Calls on one client are serialized by a mutex, so several threads may
 * share it; clients are independent, so one process can talk to several
 * servers at once.
 *
 * Remote tensors. A struct ferry_tensor lives in a remote buffer when
 * t->buffer points at a struct ferry_remote_buffer and t->data holds
 * buf->place_base + offset, as ferry_remote_tensor_place() sets it (views:
 * same buffer, data + view offset). place_base is the server's base address
 * when the buffer was first allocated and never changes afterwards, so
 * tensors stay valid across a reconnect; the client translates to the
 * current server address (buf->base + offset) whenever it sends a tensor.
 * Tensors with t->buffer == NULL go on the wire without memory. */
#ifndef FERRY_CLIENT_H
#define FERRY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Uploads above this size are probed with SET_TENSOR_HASH first and
 * remembered for ferry_client_restore(), as the server caches them. */
#define FERRY_CLIENT_HASH_MIN_SIZE (10ull * 1024 * 1024)
/* GRAPH_RECOMPUTE is tracked for devices below this index. */
#define FERRY_CLIENT_MAX_DEVICES 16
/* One stats slot per protocol command id (ggml's numbering, 0..17). */
#define FERRY_CLIENT_CMD_SLOTS 18

struct ferry_client_options {
    int connect_timeout_ms;  /* TCP connect; default 5000 */
    int response_timeout_ms; /* wait for a response's first byte (includes
                                the server computing a graph); default
                                300000; 0 = forever */
    int frame_timeout_ms;    /* each send, and a response after its first
                                byte; default 60000; 0 = no limit */
    int hello_timeout_ms;    /* the HELLO exchange (and the RDMA upgrade
                                handshake) only: a peer that is not a ggml
                                RPC server fails fast; default 5000, or
                                $FERRY_HELLO_TIMEOUT_MS; 0 = response timeout */
    int transport;           /* FERRY_TRANSPORT_AUTO (default): RDMA when both
                                sides can, else TCP; _TCP; _RDMA: required,
                                connect fails with the reason otherwise */
    const char *rdma_dev;    /* RDMA device name; NULL: $FERRY_RDMA_DEV, or
                                the one whose GID is our TCP source address */
    const char *rdma_ip;     /* use the GID of this IPv4 address; NULL:
                                $FERRY_RDMA_IP or the TCP source address */
    uint64_t hash_min_size;  /* ferry_client_upload probes uploads of at least
                                this many bytes by hash first; 0 (default):
                                above FERRY_CLIENT_HASH_MIN_SIZE with a ggml
                                server (what ggml's client does), every
                                upload with a ferry server (which caches what
                                was probed, whatever its size) */
};

#ifndef FERRY_TRANSPORT_AUTO
#define FERRY_TRANSPORT_AUTO 0
#define FERRY_TRANSPORT_TCP 1
#define FERRY_TRANSPORT_RDMA 2
#endif
void ferry_client_options_defaults(struct ferry_client_options *o);

struct ferry_client;

/* A buffer on the server. The caller owns the struct (it must stay at the
 * same address until freed or the client is closed); the client fills it
 * and keeps it in its registry, updating handle and base on reconnect. */
struct ferry_remote_buffer {
    uint64_t handle;     /* server handle on the current connection; 0 = lost */
    uint64_t base;       /* current server address of byte 0 */
    uint64_t place_base; /* base that placed tensors' data is relative to */
    uint64_t size;
    uint32_t device;
    struct ferry_client *client; /* NULL once freed */
    struct ferry_remote_buffer *prev, *next; /* the client's registry */
};

/* Requests and bytes sent by command, and what happened to graphs. */
struct ferry_client_stats {
    uint64_t requests[FERRY_CLIENT_CMD_SLOTS];
    uint64_t bytes_out, bytes_in; /* frames, headers included */
    uint64_t graphs_sent, graphs_recomputed;
    uint64_t reconnects;
};

/* Connects to "host:port" (IPv4 literal or localhost), sends HELLO and
 * checks the server's version. opts NULL = defaults. FERRY_ERR_REFUSED
 * when nobody listens. */
int ferry_client_connect(const char *endpoint, const struct ferry_client_options *opts,
                         struct ferry_client **out, struct ferry_error *err);
/* Closes the connection (the server frees the buffers with it); buffers
 * still registered are detached (client NULL, handle 0). NULL is fine. */
void ferry_client_close(struct ferry_client *c);
/* Reopens the connection, HELLOs, and re-allocates every registered buffer
 * (new handle and base, same place_base). A buffer the server refuses gets
 * handle 0 and the call returns FERRY_ERR_NOMEM with the connection up. */
int ferry_client_reconnect(struct ferry_client *c, struct ferry_error *err);
bool ferry_client_is_broken(struct ferry_client *c);
/* The data path in use, "tcp" or "rdma" ("none" when broken); with line
 * given, a description (RDMA: device, port, GID, MTU). */
const char *ferry_client_transport(struct ferry_client *c, char *line, size_t cap);
const char *ferry_client_endpoint(const struct ferry_client *c);
void ferry_client_get_stats(struct ferry_client *c, struct ferry_client_stats *out);
/* What the current connection's transport did since it opened (counters
 * restart with a reconnect). copies: bytes the transport memcpy'd (RDMA
 * bounce buffers; 0 for TCP payloads). The verbs counters are 0 on TCP. */
struct ferry_client_conn_stats {
    uint64_t msgs_sent, msgs_recv, bytes_out, bytes_in;
    uint64_t syscalls, copies, waits;
    uint64_t sends_posted, recvs_posted, writes_posted, reads_posted;
    uint64_t completions, cq_sleeps;
    /* ferry-to-ferry RDMA: credit-only messages, waits for credits, memory
     * registrations for one transfer, bytes moved by RDMA WRITE */
    uint64_t credit_msgs, credit_waits, mr_regs, write_bytes;
};
/* False, with *out zeroed, when the connection is down. */
bool ferry_client_conn_stats(struct ferry_client *c, struct ferry_client_conn_stats *out);

/* ---- ferry's extension (docs/protocol-extensions.md) ----------------------- */

/* True when the server's HELLO said it is ferry's and answers FERRY_STATS. */
bool ferry_client_server_is_ferry(struct ferry_client *c);
/* A ferry server's counters since it started (the whole process). */
struct ferry_client_server_stats {
    uint64_t cpu_user_ns, cpu_sys_ns;
    uint64_t commands, bytes_in, bytes_out, compute_ns;
};
/* FERRY_ERR_UNSUPPORTED, with nothing sent, when the server is not ferry's. */
int ferry_client_server_stats(struct ferry_client *c, struct ferry_client_server_stats *out,
                              struct ferry_error *err);

/* True when the server holds model files of its own (FERRY_LOAD_LOCAL). */
bool ferry_client_server_has_local(struct ferry_client *c);
/* Asks the server to fill t (placed, whole) from its own copy of the model
 * file whose ferry_gguf_content_key is key, from that file's byte
 * file_offset: *loaded true when it did (no payload crossed the network),
 * false when it holds no such tensor. FERRY_ERR_UNSUPPORTED, with nothing
 * sent, when the server is not a ferry server with model files. */
int ferry_client_load_local(struct ferry_client *c, const struct ferry_tensor *t, uint64_t key,
                            uint64_t file_offset, bool *loaded, struct ferry_error *err);

/* ---- devices ----------------------------------------------------------------- */

int ferry_client_device_count(struct ferry_client *c, uint32_t *count, struct ferry_error *err);
int ferry_client_device_memory(struct ferry_client *c, uint32_t device, uint64_t *free_mem,
                               uint64_t *total_mem, struct ferry_error *err);
int ferry_client_alignment(struct ferry_client *c, uint32_t device, uint64_t *alignment,
                           struct ferry_error *err);
int ferry_client_max_size(struct ferry_client *c, uint32_t device, uint64_t *max_size,
                          struct ferry_error *err);

/* ---- buffers ----------------------------------------------------------------- */

/* ALLOC_BUFFER + BUFFER_GET_BASE. The server refusing (handle 0) is
 * FERRY_ERR_NOMEM; the connection stays usable. */
int ferry_client_alloc_buffer(struct ferry_client *c, uint32_t device, uint64_t size,
                              struct ferry_remote_buffer *buf, struct ferry_error *err);
/* FREE_BUFFER and unregisters. On a broken client it only unregisters
 * (the server freed it with the connection) and returns FERRY_OK. */
int ferry_client_free_buffer(struct ferry_client *c, struct ferry_remote_buffer *buf,
                             struct ferry_error *err);
int ferry_client_buffer_clear(struct ferry_client *c, struct ferry_remote_buffer *buf,
                              uint8_t value, struct ferry_error *err);

/* Places t at buf + offset (t->buffer, t->data); t's extent must fit. */
int ferry_remote_tensor_place(struct ferry_tensor *t, struct ferry_remote_buffer *buf,
                              uint64_t offset, struct ferry_error *err);
/* A view of base (same buffer), view_offs bytes in: sets view_src,
 * view_offs, buffer and data; the caller sets type/ne/nb/op first. */
int ferry_remote_tensor_view(struct ferry_tensor *view, struct ferry_tensor *base,
                             size_t view_offs, struct ferry_error *err);

/* ---- tensors ----------------------------------------------------------------- */

/* SET_TENSOR: one write, the payload straight from data. No response
 * comes back, so a failure shows on the next call. */
int ferry_client_set_tensor(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                            const void *data, uint64_t size, struct ferry_error *err);
/* SET_TENSOR_HASH with FNV-1a of data: *hit true if the server applied
 * its cached copy (then nothing else needs sending). */
int ferry_client_set_tensor_hash(struct ferry_client *c, const struct ferry_tensor *t,
                                 uint64_t offset, const void *data, uint64_t size, bool *hit,
                                 struct ferry_error *err);
/* What ggml's client does: from the options' hash_min_size on (by default
 * above FERRY_CLIENT_HASH_MIN_SIZE for a ggml server, everything for a
 * ferry server) probe the hash first, send the data on a miss, and remember
 * the upload for ferry_client_restore(); smaller ones are one SET_TENSOR.
 * Use it for weights: the server caches what was probed. hit may be NULL. */
int ferry_client_upload(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                        const void *data, uint64_t size, bool *hit, struct ferry_error *err);
/* The protocol's hash of tensor bytes (FNV-1a-64, as SET_TENSOR_HASH). */
uint64_t ferry_fnv1a64(const void *data, size_t n);
/* ferry_client_upload with the FNV-1a-64 of data already known (hashed
 * by several threads at once, say): hash must be ferry's hash of those
 * size bytes, or the server's cache refuses to store them. */
int ferry_client_upload_hashed(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                               const void *data, uint64_t size, uint64_t hash, bool *hit,
                               struct ferry_error *err);
/* GET_TENSOR: the response lands straight in data. */
int ferry_client_get_tensor(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                            void *data, uint64_t size, struct ferry_error *err);
/* COPY_TENSOR: *ok false when the server's backend cannot copy. */
int ferry_client_copy_tensor(struct ferry_client *c, const struct ferry_tensor *src,
                             const struct ferry_tensor *dst, bool *ok, struct ferry_error *err);
int ferry_client_memset_tensor(struct ferry_client *c, const struct ferry_tensor *t,
                               uint64_t offset, uint64_t size, uint8_t value,
                               struct ferry_error *err);
int ferry_client_init_tensor(struct ferry_client *c, const struct ferry_tensor *t,
                             struct ferry_error *err);
/* GET_ALLOC_SIZE with t and its sources. */
int ferry_client_get_alloc_size(struct ferry_client *c, uint32_t device,
                                const struct ferry_tensor *t, uint64_t *size,
                                struct ferry_error *err);

/* ---- graphs ------------------------------------------------------------------ */

/* Sends the graph (nodes in execution order; every tensor it reaches is
 * sent, dependencies first). When the encoded graph is byte-for-byte the
 * last one computed on this device, on this connection, with no buffer
 * freed since, GRAPH_RECOMPUTE (4 bytes) goes instead. Nothing comes
 * back: read the outputs with ferry_client_get_tensor. Nodes to run need
 * FERRY_FLAG_COMPUTE. */
int ferry_client_graph_compute(struct ferry_client *c, uint32_t device,
                               struct ferry_tensor *const *nodes, uint32_t n_nodes,
                               struct ferry_error *err);

/* ---- after a reconnect ------------------------------------------------------- */

/* Re-applies remembered large uploads (ferry_client_upload above the
 * threshold, still valid: not overwritten by a later set, memset or clear)
 * with SET_TENSOR_HASH only, in upload order. *restored counts cache hits;
 * *missing the uploads the server no longer has, which the caller must
 * upload again from its host copy. Either pointer may be NULL. */
int ferry_client_restore(struct ferry_client *c, uint32_t *restored, uint32_t *missing,
                         struct ferry_error *err);

#ifdef __cplusplus
}
#endif
#endif
