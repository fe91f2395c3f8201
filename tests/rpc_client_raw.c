/* The raw test client: framing with src/proto, bytes with src/transport.
 * Response lengths are checked exactly, as ggml's client does, so a server
 * that answers with the wrong size fails the test instead of desyncing it. */
#include "rpc_client_raw.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ferry/types.h"

int rpc_raw_connect(const char *host, int port, int timeout_ms, struct rpc_raw **out,
                    struct ferry_error *err) {
    *out = NULL;
    struct rpc_raw *c = calloc(1, sizeof *c);
    if (!c) return ferry_fail(err, FERRY_ERR_NOMEM, "rpc_raw: out of memory");
    int rc = ferry_tcp_connect(host, port, timeout_ms, &c->conn, err);
    if (rc != FERRY_OK) {
        free(c);
        return rc;
    }
    rpc_raw_set_timeout(c, RPC_RAW_DEFAULT_TIMEOUT_MS);
    *out = c;
    return FERRY_OK;
}

int rpc_raw_open(const char *host, int port, struct rpc_raw **out, struct ferry_error *err) {
    int rc = rpc_raw_connect(host, port, RPC_RAW_DEFAULT_TIMEOUT_MS, out, err);
    if (rc != FERRY_OK) return rc;
    struct ferry_rpc_hello_rsp rsp;
    rc = rpc_raw_hello(*out, &rsp);
    if (rc != FERRY_OK) {
        if (err) *err = (*out)->err;
        rpc_raw_close(*out);
        *out = NULL;
    }
    return rc;
}

void rpc_raw_close(struct rpc_raw *c) {
    if (!c) return;
    ferry_conn_close(c->conn);
    free(c);
}

void rpc_raw_set_timeout(struct rpc_raw *c, int timeout_ms) {
    struct ferry_conn_timeouts t = {.idle_ms = timeout_ms, .frame_ms = timeout_ms};
    ferry_conn_set_timeouts(c->conn, t);
}

const char *rpc_raw_local(const struct rpc_raw *c) { return ferry_conn_local(c->conn); }

/* ---- hostile half ------------------------------------------------------------ */

int rpc_raw_send_bytes(struct rpc_raw *c, const void *p, size_t n) {
    struct iovec seg = {(void *)p, n};
    return ferry_conn_send(c->conn, NULL, 0, &seg, 1, &c->err);
}

int rpc_raw_send_frame(struct rpc_raw *c, uint8_t cmd, uint64_t announced, const void *payload,
                       size_t n) {
    uint8_t hdr[FERRY_RPC_FRAME_HEADER_SIZE];
    ferry_rpc_encode_frame_header(cmd, announced, hdr);
    /* two header parts, as ggml frames a request: cmd, then the length */
    struct iovec parts[2] = {{hdr, 1}, {hdr + 1, 8}};
    struct iovec seg = {(void *)payload, n};
    return ferry_conn_send(c->conn, parts, 2, &seg, n ? 1 : 0, &c->err);
}

/* Polls the socket itself and peeks, so the stream stays untouched. */
int rpc_raw_poll_closed(struct rpc_raw *c, int timeout_ms) {
    int fd = ferry_conn_fd(c->conn);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int64_t deadline = ferry_transport_now_ms() + timeout_ms;
    for (int guard = 0; guard < 100000; guard++) {
        int64_t left = deadline - ferry_transport_now_ms();
        if (left < 0) left = 0;
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        uint8_t b;
        ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0) return 1;
        if (r > 0) return -1;
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
            if (left == 0) return 0;
            continue;
        }
        return 1; /* ECONNRESET and friends: the server is gone from this socket */
    }
    return 0;
}

/* ---- well-behaved half ------------------------------------------------------- */

int rpc_raw_request(struct rpc_raw *c, uint8_t cmd, const void *payload, size_t n, void *rsp,
                    size_t rsp_len) {
    ferry_error_clear(&c->err);
    int rc = rpc_raw_send_frame(c, cmd, n, payload, n);
    if (rc != FERRY_OK) return rc;
    uint64_t fixed = 0;
    if (ferry_rpc_response_kind(cmd, &fixed) == FERRY_RPC_RSP_NONE) return FERRY_OK;
    uint8_t len[FERRY_RPC_RSP_HEADER_SIZE];
    rc = ferry_conn_recv_header(c->conn, len, sizeof len, &c->err);
    if (rc != FERRY_OK) return rc;
    uint64_t size = ferry_get_le64(len);
    rc = ferry_rpc_check_response_size(cmd, size, rsp_len, &c->err);
    if (rc != FERRY_OK) return rc;
    if (size != rsp_len)
        return ferry_fail(&c->err, FERRY_ERR_PROTOCOL, "%s: response of %llu bytes, caller expects %zu",
                          ferry_rpc_cmd_name(cmd), (unsigned long long)size, rsp_len);
    return ferry_conn_recv_payload(c->conn, rsp, rsp_len, &c->err);
}

int rpc_raw_hello(struct rpc_raw *c, struct ferry_rpc_hello_rsp *out) {
    struct ferry_rpc_conn_caps caps = {0};
    uint8_t req[FERRY_RPC_CONN_CAPS_SIZE], rsp[FERRY_RPC_HELLO_RSP_SIZE];
    ferry_rpc_encode_hello(&caps, req);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_HELLO, req, sizeof req, rsp, sizeof rsp);
    if (rc != FERRY_OK) return rc;
    struct ferry_rpc_hello_rsp h;
    rc = ferry_rpc_decode_hello_rsp(rsp, sizeof rsp, &h, &c->err);
    if (rc == FERRY_OK) rc = ferry_rpc_check_server_version(&h, &c->err);
    if (rc == FERRY_OK && out) *out = h;
    return rc;
}

int rpc_raw_device_count(struct rpc_raw *c, uint32_t *count) {
    uint8_t rsp[4];
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_DEVICE_COUNT, NULL, 0, rsp, sizeof rsp);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u32_rsp(rsp, sizeof rsp, count, &c->err);
}

int rpc_raw_alloc_buffer(struct rpc_raw *c, uint32_t device, uint64_t size, uint64_t *handle,
                         uint64_t *remote_size) {
    struct ferry_rpc_alloc_buffer req = {.device = device, .size = size};
    uint8_t p[FERRY_RPC_ALLOC_BUFFER_SIZE], rsp[16];
    ferry_rpc_encode_alloc_buffer(&req, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_ALLOC_BUFFER, p, sizeof p, rsp, sizeof rsp);
    if (rc != FERRY_OK) return rc;
    struct ferry_rpc_alloc_buffer_rsp r;
    rc = ferry_rpc_decode_alloc_buffer_rsp(rsp, sizeof rsp, &r, &c->err);
    if (rc != FERRY_OK) return rc;
    if (handle) *handle = r.remote_ptr;
    if (remote_size) *remote_size = r.remote_size;
    return FERRY_OK;
}

/* The commands that take a u32 device and answer a u64. */
static int device_u64(struct rpc_raw *c, uint8_t cmd, uint32_t device, uint64_t *v) {
    uint8_t p[FERRY_RPC_DEVICE_REQ_SIZE], rsp[8];
    ferry_rpc_encode_device(device, p);
    int rc = rpc_raw_request(c, cmd, p, sizeof p, rsp, sizeof rsp);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u64_rsp(rsp, sizeof rsp, v, &c->err);
}

int rpc_raw_get_alignment(struct rpc_raw *c, uint32_t device, uint64_t *alignment) {
    return device_u64(c, FERRY_RPC_CMD_GET_ALIGNMENT, device, alignment);
}

int rpc_raw_get_max_size(struct rpc_raw *c, uint32_t device, uint64_t *max_size) {
    return device_u64(c, FERRY_RPC_CMD_GET_MAX_SIZE, device, max_size);
}

int rpc_raw_buffer_get_base(struct rpc_raw *c, uint64_t handle, uint64_t *base) {
    uint8_t p[FERRY_RPC_BUFFER_REQ_SIZE], rsp[8];
    ferry_rpc_encode_buffer(handle, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_BUFFER_GET_BASE, p, sizeof p, rsp, sizeof rsp);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u64_rsp(rsp, sizeof rsp, base, &c->err);
}

int rpc_raw_free_buffer(struct rpc_raw *c, uint64_t handle) {
    uint8_t p[FERRY_RPC_BUFFER_REQ_SIZE];
    ferry_rpc_encode_buffer(handle, p);
    return rpc_raw_request(c, FERRY_RPC_CMD_FREE_BUFFER, p, sizeof p, NULL, 0);
}

int rpc_raw_buffer_clear(struct rpc_raw *c, uint64_t handle, uint8_t value) {
    struct ferry_rpc_buffer_clear req = {.buffer = handle, .value = value};
    uint8_t p[FERRY_RPC_BUFFER_CLEAR_SIZE];
    ferry_rpc_encode_buffer_clear(&req, p);
    return rpc_raw_request(c, FERRY_RPC_CMD_BUFFER_CLEAR, p, sizeof p, NULL, 0);
}

int rpc_raw_set_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                       const void *data, size_t n) {
    /* header and data gathered into one frame, no copy of the data */
    uint8_t head[FERRY_RPC_SET_TENSOR_HEADER_SIZE], hdr[FERRY_RPC_FRAME_HEADER_SIZE];
    ferry_rpc_encode_set_tensor_header(t, offset, head);
    ferry_rpc_encode_frame_header(FERRY_RPC_CMD_SET_TENSOR, sizeof head + (uint64_t)n, hdr);
    struct iovec parts[2] = {{hdr, 1}, {hdr + 1, 8}};
    struct iovec segs[2] = {{head, sizeof head}, {(void *)data, n}};
    ferry_error_clear(&c->err);
    return ferry_conn_send(c->conn, parts, 2, segs, 2, &c->err);
}

int rpc_raw_set_tensor_hash(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                            uint64_t hash, uint8_t *result) {
    struct ferry_rpc_set_tensor_hash req = {.tensor = *t, .offset = offset, .hash = hash};
    uint8_t p[FERRY_RPC_SET_TENSOR_HASH_SIZE], rsp[1];
    ferry_rpc_encode_set_tensor_hash(&req, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_SET_TENSOR_HASH, p, sizeof p, rsp, sizeof rsp);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u8_rsp(rsp, sizeof rsp, result, &c->err);
}

int rpc_raw_get_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                       uint64_t size, void *dst) {
    struct ferry_rpc_get_tensor req = {.tensor = *t, .offset = offset, .size = size};
    uint8_t p[FERRY_RPC_GET_TENSOR_SIZE];
    ferry_rpc_encode_get_tensor(&req, p);
    if (size > SIZE_MAX) return ferry_fail(&c->err, FERRY_ERR_INVALID, "GET_TENSOR size too big");
    return rpc_raw_request(c, FERRY_RPC_CMD_GET_TENSOR, p, sizeof p, dst, (size_t)size);
}

int rpc_raw_copy_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *src,
                        const struct ferry_rpc_tensor *dst, uint8_t *result) {
    struct ferry_rpc_copy_tensor req = {.src = *src, .dst = *dst};
    uint8_t p[FERRY_RPC_COPY_TENSOR_SIZE], rsp[1];
    ferry_rpc_encode_copy_tensor(&req, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_COPY_TENSOR, p, sizeof p, rsp, sizeof rsp);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u8_rsp(rsp, sizeof rsp, result, &c->err);
}

int rpc_raw_graph_compute(struct rpc_raw *c, const void *payload, size_t n) {
    return rpc_raw_request(c, FERRY_RPC_CMD_GRAPH_COMPUTE, payload, n, NULL, 0);
}

int rpc_raw_graph_recompute(struct rpc_raw *c, uint32_t device) {
    uint8_t p[FERRY_RPC_DEVICE_REQ_SIZE];
    ferry_rpc_encode_device(device, p);
    return rpc_raw_request(c, FERRY_RPC_CMD_GRAPH_RECOMPUTE, p, sizeof p, NULL, 0);
}

int rpc_raw_get_device_memory(struct rpc_raw *c, uint32_t device, uint64_t *free_mem,
                              uint64_t *total_mem) {
    uint8_t p[FERRY_RPC_DEVICE_REQ_SIZE], rsp[16];
    ferry_rpc_encode_device(device, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_GET_DEVICE_MEMORY, p, sizeof p, rsp, sizeof rsp);
    if (rc != FERRY_OK) return rc;
    struct ferry_rpc_device_memory m;
    rc = ferry_rpc_decode_device_memory(rsp, sizeof rsp, &m, &c->err);
    if (rc != FERRY_OK) return rc;
    if (free_mem) *free_mem = m.free_mem;
    if (total_mem) *total_mem = m.total_mem;
    return FERRY_OK;
}

int rpc_raw_init_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t) {
    uint8_t p[FERRY_RPC_INIT_TENSOR_SIZE];
    ferry_rpc_encode_init_tensor(t, p);
    return rpc_raw_request(c, FERRY_RPC_CMD_INIT_TENSOR, p, sizeof p, NULL, 0);
}

int rpc_raw_get_alloc_size(struct rpc_raw *c, const struct ferry_rpc_get_alloc_size *r,
                           uint64_t *size) {
    uint8_t *p = malloc(FERRY_RPC_GET_ALLOC_SIZE_SIZE), rsp[8];
    if (!p) return ferry_fail(&c->err, FERRY_ERR_NOMEM, "rpc_raw: out of memory");
    ferry_rpc_encode_get_alloc_size(r, p);
    int rc = rpc_raw_request(c, FERRY_RPC_CMD_GET_ALLOC_SIZE, p, FERRY_RPC_GET_ALLOC_SIZE_SIZE, rsp,
                             sizeof rsp);
    free(p);
    return rc != FERRY_OK ? rc : ferry_rpc_decode_u64_rsp(rsp, sizeof rsp, size, &c->err);
}

int rpc_raw_memset_tensor(struct rpc_raw *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                          uint64_t size, uint8_t value) {
    struct ferry_rpc_memset_tensor req = {.tensor = *t, .offset = offset, .size = size, .value = value};
    uint8_t p[FERRY_RPC_MEMSET_TENSOR_SIZE];
    ferry_rpc_encode_memset_tensor(&req, p);
    return rpc_raw_request(c, FERRY_RPC_CMD_MEMSET_TENSOR, p, sizeof p, NULL, 0);
}

/* ---- building requests --------------------------------------------------------- */

void rpc_raw_tensor_2d(struct ferry_rpc_tensor *r, uint64_t id, uint32_t type, uint32_t ne0,
                       uint32_t ne1, uint64_t buffer, uint64_t data) {
    memset(r, 0, sizeof *r);
    r->id = id;
    r->type = type;
    r->buffer = buffer;
    r->data = data;
    int64_t bs = ferry_blck_size((int)type);
    uint32_t ts = (uint32_t)ferry_type_size((int)type);
    r->ne[0] = ne0;
    r->ne[1] = ne1;
    r->ne[2] = r->ne[3] = 1;
    r->nb[0] = ts;
    r->nb[1] = ts * (ne0 / (uint32_t)(bs > 0 ? bs : 1));
    r->nb[2] = r->nb[1] * ne1;
    r->nb[3] = r->nb[2];
    snprintf(r->name, sizeof r->name, "t%llu", (unsigned long long)id);
}

uint8_t *rpc_raw_graph_build(uint32_t device, const uint64_t *nodes, uint32_t n_nodes,
                             const struct ferry_rpc_tensor *recs, uint32_t n_recs, size_t *len) {
    size_t at = 8 + 8 * (size_t)n_nodes;
    *len = at + 4 + FERRY_RPC_TENSOR_SIZE * (size_t)n_recs;
    uint8_t *p = malloc(*len);
    if (!p) return NULL;
    ferry_put_le32(p, device);
    ferry_put_le32(p + 4, n_nodes);
    for (uint32_t i = 0; i < n_nodes; i++) ferry_put_le64(p + 8 + 8 * (size_t)i, nodes[i]);
    ferry_put_le32(p + at, n_recs);
    for (uint32_t i = 0; i < n_recs; i++)
        ferry_rpc_tensor_encode(&recs[i], p + at + 4 + FERRY_RPC_TENSOR_SIZE * (size_t)i);
    return p;
}
