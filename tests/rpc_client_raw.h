/* A raw ggml-RPC client for tests, built on src/proto and src/transport.
 *
 * Two halves. The well-behaved half sends one well-formed request per
 * command and reads its response, checking the response length exactly as
 * ggml's client does. The hostile half sends whatever the caller likes:
 * arbitrary bytes, frames whose announced length differs from what follows,
 * and tells whether the server has closed the connection. Nothing here
 * blocks for long: every connection carries idle and frame timeouts.
 *
 * Every call returns FERRY_OK or a negative ferry status; the reason of the
 * last failure is in c->err. Sends never raise SIGPIPE (the transport uses
 * MSG_NOSIGNAL). */
#ifndef FERRY_TESTS_RPC_CLIENT_RAW_H
#define FERRY_TESTS_RPC_CLIENT_RAW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/rpc.h"
#include "transport/transport.h"

/* What a test client waits for a response at most, unless changed. */
#define RPC_RAW_DEFAULT_TIMEOUT_MS 5000

struct rpc_raw {
    struct ferry_conn *conn;
    struct ferry_error err; /* reason of the last failure */
};

/* Connects (no HELLO yet). */
int rpc_raw_connect(const char *host, int port, int timeout_ms, struct rpc_raw **out,
                    struct ferry_error *err);
/* Connects and does HELLO with zero caps; checks the server's version. */
int rpc_raw_open(const char *host, int port, struct rpc_raw **out, struct ferry_error *err);
void rpc_raw_close(struct rpc_raw *c); /* NULL is fine */
/* Both idle and frame timeouts of the client side. */
void rpc_raw_set_timeout(struct rpc_raw *c, int timeout_ms);
/* "127.0.0.1:41234": our end, as the server sees its peer. */
const char *rpc_raw_local(const struct rpc_raw *c);

/* ---- hostile half ------------------------------------------------------------ */

/* Writes n arbitrary bytes as they are. */
int rpc_raw_send_bytes(struct rpc_raw *c, const void *p, size_t n);
/* A frame header announcing `announced` bytes, followed by n payload bytes
 * (n may be less or more than announced). */
int rpc_raw_send_frame(struct rpc_raw *c, uint8_t cmd, uint64_t announced, const void *payload,
                       size_t n);
/* Waits up to timeout_ms: 1 if the server closed the connection (EOF or
 * reset), 0 if it is still open and silent, -1 if it sent data instead (the
 * data is left unread). */
int rpc_raw_poll_closed(struct rpc_raw *c, int timeout_ms);

/* ---- well-behaved half ------------------------------------------------------- */

/* One request and, where the command has one, its response: rsp_len must
 * be the exact size the response must have (GET_TENSOR: the size asked).
 * Commands without a response return after the send. */
int rpc_raw_request(struct rpc_raw *c, uint8_t cmd, const void *payload, size_t n, void *rsp,
                    size_t rsp_len);

int rpc_raw_hello(struct rpc_raw *c, struct ferry_rpc_hello_rsp *rsp);
int rpc_raw_device_count(struct rpc_raw *c, uint32_t *count);
int rpc_raw_alloc_buffer(struct rpc_raw *c, uint32_t device, uint64_t size, uint64_t *handle,
                         uint64_t *remote_size);
int rpc_raw_get_alignment(struct rpc_raw *c, uint32_t device, uint64_t *alignment);
int rpc_raw_get_max_size(struct rpc_raw *c, uint32_t device, uint64_t *max_size);
int rpc_raw_buffer_get_base(struct rpc_raw *c, uint64_t handle, uint64_t *base);
int rpc_raw_free_buffer(struct rpc_raw *c, uint64_t handle);
int rpc_raw_buffer_clear(struct rpc_raw *c, uint64_t handle, uint8_t value);
int rpc_raw_set_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                       const void *data, size_t n);
int rpc_raw_set_tensor_hash(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                            uint64_t hash, uint8_t *result);
int rpc_raw_get_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                       uint64_t size, void *dst);
int rpc_raw_copy_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *src,
                        const struct ferry_rpc_tensor *dst, uint8_t *result);
int rpc_raw_graph_compute(struct rpc_raw *c, const void *payload, size_t n);
int rpc_raw_graph_recompute(struct rpc_raw *c, uint32_t device);
int rpc_raw_get_device_memory(struct rpc_raw *c, uint32_t device, uint64_t *free_mem,
                              uint64_t *total_mem);
int rpc_raw_init_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t);
int rpc_raw_get_alloc_size(struct rpc_raw *c, const struct ferry_rpc_get_alloc_size *r,
                           uint64_t *size);
int rpc_raw_memset_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                          uint64_t size, uint8_t value);

/* ---- building requests --------------------------------------------------------- */

/* A contiguous 2-D record (ne2 = ne3 = 1) of a valid type at `data` in
 * `buffer`, op NONE, named "t<id>". */
void rpc_raw_tensor_2d(struct ferry_rpc_tensor *r, uint64_t id, uint32_t type, uint32_t ne0,
                       uint32_t ne1, uint64_t buffer, uint64_t data);
/* A GRAPH_COMPUTE payload: device | n_nodes | node ids | n_tensors |
 * records. malloc'd; *len is its length. */
uint8_t *rpc_raw_graph_build(uint32_t device, const uint64_t *nodes, uint32_t n_nodes,
                             const struct ferry_rpc_tensor *recs, uint32_t n_recs, size_t *len);

#endif
