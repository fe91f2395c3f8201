/* ferry client: the connection, the request/response plumbing and one
 * function per protocol command.
 *
 * A request is one ferry_conn_send: the 9-byte frame header and payload
 * segments that point at the caller's memory (tensor data goes out without
 * a copy). A response is read in two steps, its length checked exactly
 * before a byte of payload is read, so GET_TENSOR lands straight in the
 * caller's buffer. Any I/O or protocol failure closes the connection: the
 * stream is out of sync, and the server drops its side on errors anyway. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/internal.h"
#include "ferry/log.h"

_Static_assert(FERRY_CLIENT_CMD_SLOTS == FERRY_RPC_CMD_COUNT, "one stats slot per command");

void ferry_client_options_defaults(struct ferry_client_options *o) {
    memset(o, 0, sizeof *o); /* transport auto, RDMA device and IP from the environment */
    o->connect_timeout_ms = 5000;
    o->response_timeout_ms = 300000;
    o->frame_timeout_ms = 60000;
    o->hello_timeout_ms = 5000;
    const char *v = getenv("FERRY_HELLO_TIMEOUT_MS");
    if (v && *v) {
        char *end = NULL;
        long ms = strtol(v, &end, 10);
        if (*end == '\0' && ms >= 0 && ms <= INT32_MAX) o->hello_timeout_ms = (int)ms;
        else ferry_log_warn("ignoring FERRY_HELLO_TIMEOUT_MS=%s: expected milliseconds", v);
    }
}

/* ---- connection state ------------------------------------------------------- */

static int mark_broken(struct ferry_client *c, int rc, struct ferry_error *err) {
    snprintf(c->broken_reason, sizeof c->broken_reason, "%s", err->msg);
    ferry_log_warn("client %s: connection lost: %s", c->endpoint, err->msg);
    ferry_conn_close(c->conn);
    c->conn = NULL;
    client_forget_graphs(c);
    return rc;
}

/* While connecting: the caller reports the error, so no log line here
 * (the reason would otherwise be printed twice). */
static int connect_failed(struct ferry_client *c, int rc, struct ferry_error *err) {
    snprintf(c->broken_reason, sizeof c->broken_reason, "%s", err->msg);
    ferry_conn_close(c->conn);
    c->conn = NULL;
    return rc;
}

/* A ferry server's error reply, its mark already read (see
 * docs/protocol-extensions.md): the reason it gave, as our error. */
static int error_reply(struct ferry_client *c, struct ferry_error *err) {
    uint8_t more[8], raw[FERRY_RPC_ERROR_MAX_REASON];
    char text[FERRY_RPC_ERROR_MAX_REASON + 1];
    uint32_t code = 0, len = 0;
    struct ferry_error e;
    if (ferry_conn_recv_payload(c->conn, more, sizeof more, &e) != FERRY_OK ||
        ferry_rpc_decode_error(more, &code, &len, &e) != FERRY_OK ||
        (len > 0 && ferry_conn_recv_payload(c->conn, raw, len, &e) != FERRY_OK))
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: broken error reply: %s", c->endpoint, e.msg);
    ferry_rpc_printable(raw, len, text, sizeof text);
    if (code == FERRY_RPC_ERROR_BUSY || code == FERRY_RPC_ERROR_PEER_LIMIT)
        return ferry_fail(err, FERRY_ERR_REFUSED, "%s: server refused: %s", c->endpoint, text);
    return ferry_fail(err, FERRY_ERR_CLOSED, "%s: the server closed the connection: %s", c->endpoint, text);
}

/* The server closed where a response should be, without saying why: a
 * ggml server (or a ferry server we could not ask) does that on any
 * request it rejects. Name the likely causes. */
static int closed_without_reply(struct ferry_client *c, uint8_t cmd, struct ferry_error *err) {
    return ferry_fail(err, FERRY_ERR_CLOSED,
                      "%s: the server closed the connection instead of answering %s: it rejects requests it "
                      "cannot serve (e.g. a device it does not have) and closes idle or surplus connections; "
                      "its log says which",
                      c->endpoint, ferry_rpc_cmd_name(cmd));
}

int client_check_open(struct ferry_client *c, struct ferry_error *err) {
    if (c->conn) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_CLOSED, "%s: connection is down (%s); reconnect first",
                      c->endpoint, c->broken_reason);
}

void client_forget_graphs(struct ferry_client *c) {
    for (int i = 0; i < FERRY_CLIENT_MAX_DEVICES; i++) {
        free(c->graphs[i].payload);
        c->graphs[i].payload = NULL;
        c->graphs[i].len = 0;
    }
}

int client_call(struct ferry_client *c, uint8_t cmd, const struct iovec *payload, int n_payload,
                void *rsp, uint64_t rsp_len, struct ferry_error *err) {
    int rc = client_check_open(c, err);
    if (rc) return rc;
    uint64_t len = 0;
    for (int i = 0; i < n_payload; i++) len += payload[i].iov_len;
    uint8_t cmd_byte = cmd, len_bytes[8];
    ferry_put_le64(len_bytes, len);
    /* two header parts, as ggml reads them; TCP coalesces all into one write */
    struct iovec hdr[2] = { { &cmd_byte, 1 }, { len_bytes, 8 } };
    /* a large answer of known size (GET_TENSOR) may be written by the
     * server straight into rsp (RDMA between ferry peers) */
    if (rsp_len > 0 && (rc = ferry_conn_offer_sink(c->conn, rsp, (size_t)rsp_len, err)))
        return mark_broken(c, rc, err);
    rc = ferry_conn_send(c->conn, hdr, 2, payload, n_payload, err);
    if (rc) return mark_broken(c, rc, err);
    if (cmd < FERRY_CLIENT_CMD_SLOTS) c->stats.requests[cmd]++; /* not FERRY_STATS */
    c->stats.bytes_out += FERRY_RPC_FRAME_HEADER_SIZE + len;
    if (ferry_rpc_response_kind(cmd, NULL) == FERRY_RPC_RSP_NONE) return FERRY_OK;

    uint8_t rsp_hdr[FERRY_RPC_RSP_HEADER_SIZE];
    uint64_t in0 = ferry_conn_stats(c->conn)->bytes_in;
    rc = ferry_conn_recv_header(c->conn, rsp_hdr, sizeof rsp_hdr, err);
    if (rc == FERRY_ERR_CLOSED && ferry_conn_stats(c->conn)->bytes_in == in0) rc = closed_without_reply(c, cmd, err);
    if (rc) return mark_broken(c, rc, err);
    uint64_t size = ferry_get_le64(rsp_hdr);
    if (size == FERRY_RPC_ERROR_MARK && c->asked_errors) return mark_broken(c, error_reply(c, err), err);
    rc = ferry_rpc_check_response_size(cmd, size, rsp_len, err);
    if (rc) return mark_broken(c, rc, err);
    if (size > 0 && (rc = ferry_conn_recv_payload(c->conn, rsp, size, err)))
        return mark_broken(c, rc, err);
    c->stats.bytes_in += FERRY_RPC_RSP_HEADER_SIZE + size;
    return FERRY_OK;
}

static int call1(struct ferry_client *c, uint8_t cmd, const void *req, size_t n, void *rsp,
                 uint64_t rsp_len, struct ferry_error *err) {
    struct iovec v = { (void *)req, n };
    return client_call(c, cmd, &v, n ? 1 : 0, rsp, rsp_len, err);
}

/* What a peer that is not a ggml RPC server sent instead of a HELLO
 * response: the 8 bytes read and whatever else arrives at once. */
static void peer_said(struct ferry_conn *conn, const uint8_t first[8], char *out, size_t cap) {
    uint8_t got[64];
    memcpy(got, first, 8);
    size_t n = 8;
    struct ferry_error e;
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ 200, 200 });
    while (n < sizeof got && ferry_conn_recv_header(conn, got + n, 1, &e) == FERRY_OK) n++;
    ferry_rpc_printable(got, n, out, cap);
}

/* HELLO, under the short hello timeout, with errors that say what the
 * peer is when it does not answer like a ggml RPC server. */
static int hello(struct ferry_client *c, const uint8_t req[FERRY_RPC_CONN_CAPS_SIZE],
                 uint8_t rsp[FERRY_RPC_HELLO_RSP_SIZE], struct ferry_error *err) {
    struct ferry_conn *conn = c->conn;
    uint8_t cmd = FERRY_RPC_CMD_HELLO, len[8];
    ferry_put_le64(len, FERRY_RPC_CONN_CAPS_SIZE);
    struct iovec hdr[2] = { { &cmd, 1 }, { len, 8 } };
    struct iovec body = { (void *)req, FERRY_RPC_CONN_CAPS_SIZE };
    int ms = ferry_conn_get_timeouts(conn).idle_ms;
    int rc = ferry_conn_send(conn, hdr, 2, &body, 1, err);
    if (rc) return rc;
    c->stats.requests[FERRY_RPC_CMD_HELLO]++;
    c->stats.bytes_out += FERRY_RPC_FRAME_HEADER_SIZE + FERRY_RPC_CONN_CAPS_SIZE;
    uint8_t h[FERRY_RPC_RSP_HEADER_SIZE];
    uint64_t in0 = ferry_conn_stats(conn)->bytes_in;
    rc = ferry_conn_recv_header(conn, h, sizeof h, err);
    if (rc == FERRY_ERR_TIMEOUT && ferry_conn_stats(conn)->bytes_in == in0)
        return ferry_fail(err, rc,
                          "%s did not answer HELLO within %d ms: it is not a ggml RPC server, or it is "
                          "overloaded (the limit is hello_timeout_ms, $FERRY_HELLO_TIMEOUT_MS)",
                          c->endpoint, ms);
    if (rc == FERRY_ERR_CLOSED && ferry_conn_stats(conn)->bytes_in == in0)
        return ferry_fail(err, rc,
                          "%s closed the connection at HELLO without an answer: the server may be at its "
                          "connection limit or refuse this address, require RDMA, or not be a ggml RPC "
                          "server (a ggml or ferry server logs why)",
                          c->endpoint);
    if (rc) return rc;
    uint64_t size = ferry_get_le64(h);
    if (size == FERRY_RPC_ERROR_MARK && c->asked_errors) return error_reply(c, err);
    if (size != FERRY_RPC_HELLO_RSP_SIZE) {
        char said[64];
        peer_said(conn, h, said, sizeof said);
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s is not a ggml RPC server (it answered '%s')", c->endpoint,
                          said);
    }
    rc = ferry_conn_recv_payload(conn, rsp, FERRY_RPC_HELLO_RSP_SIZE, err);
    if (rc == FERRY_OK) c->stats.bytes_in += FERRY_RPC_RSP_HEADER_SIZE + FERRY_RPC_HELLO_RSP_SIZE;
    return rc;
}

static int open_conn(struct ferry_client *c, struct ferry_error *err) {
    struct ferry_conn *conn = NULL;
    c->hello_flags = 0;
    c->asked_errors = false;
    int rc = ferry_tcp_connect(c->host, c->port, c->opts.connect_timeout_ms, &conn, err);
    if (rc) {
        snprintf(c->broken_reason, sizeof c->broken_reason, "%s", err->msg);
        return rc;
    }
    /* the HELLO exchange and the RDMA handshake under the hello timeout */
    int hello_ms = c->opts.hello_timeout_ms > 0 ? c->opts.hello_timeout_ms : c->opts.response_timeout_ms;
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ hello_ms, hello_ms });
    /* HELLO may upgrade it to RDMA */
    struct ferry_rdma_options ro = { .mode = c->opts.transport, .server = false, .dev = c->opts.rdma_dev,
                                     .ip = c->opts.rdma_ip, .gid_index = -1 };
    rc = ferry_conn_offer_upgrade(conn, &ro, &conn, err);
    if (rc) {
        snprintf(c->broken_reason, sizeof c->broken_reason, "%s", err->msg);
        return rc;
    }
    c->conn = conn;
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ hello_ms, hello_ms });
    /* our caps: the transport's (RDMA queue pair) or zeros, which carry the
     * request for error replies (a ggml server reads nothing past qpn 0) */
    uint8_t req[FERRY_RPC_CONN_CAPS_SIZE] = { 0 }, rsp[FERRY_RPC_HELLO_RSP_SIZE];
    size_t caps_len = 0;
    rc = ferry_conn_local_caps(conn, req, sizeof req, &caps_len, err);
    if (rc) return connect_failed(c, rc, err);
    ferry_rpc_caps_mark(req, FERRY_RPC_CAPS_FEAT_ERRORS);
    c->asked_errors = ferry_rpc_caps_features(req) != 0;
    if ((rc = hello(c, req, rsp, err))) return connect_failed(c, rc, err);
    struct ferry_rpc_hello_rsp hello;
    if ((rc = ferry_rpc_decode_hello_rsp(rsp, sizeof rsp, &hello, err)) ||
        (rc = ferry_rpc_check_server_version(&hello, err))) {
        char m[sizeof err->msg];
        snprintf(m, sizeof m, "%s", err->msg);
        ferry_fail(err, rc, "%s: %s", c->endpoint, m);
        return connect_failed(c, rc, err);
    }
    /* the server's caps follow the 4 version bytes; a ferry server says in
     * byte 3 whether its RDMA framing is on offer, or why it refused RDMA */
    const struct ferry_rpc_hello_ext ext = ferry_rpc_hello_ext_of(hello.flags);
    rc = ferry_conn_peer_caps(conn, rsp + 4, FERRY_RPC_CONN_CAPS_SIZE, err);
    if (rc == FERRY_ERR_UNSUPPORTED && ext.refusal) {
        char m[sizeof err->msg];
        snprintf(m, sizeof m, "%s", err->msg);
        ferry_fail(err, rc, "%s: %s", m, ferry_rdma_refusal_text(ext.refusal));
    }
    if (rc == FERRY_OK) rc = ferry_conn_confirm(conn, ext.rdma_ext, err);
    if (rc) return connect_failed(c, rc, err);
    c->hello_flags = hello.flags;
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ c->opts.response_timeout_ms,
                                                                c->opts.frame_timeout_ms });
    char line[512];
    ferry_conn_describe(conn, line, sizeof line);
    ferry_log(strcmp(ferry_conn_transport(conn), "tcp") ? FERRY_LOG_INFO : FERRY_LOG_DEBUG,
              "client %s: connected, server protocol %u.%u.%u, transport %s", c->endpoint, hello.major,
              hello.minor, hello.patch, line);
    return FERRY_OK;
}

/* "host:port", split at the first ':' as ggml does. */
static int parse_endpoint(struct ferry_client *c, const char *endpoint, struct ferry_error *err) {
    const char *colon = endpoint ? strchr(endpoint, ':') : NULL;
    if (!colon || colon == endpoint || (size_t)(colon - endpoint) >= sizeof c->host)
        return ferry_fail(err, FERRY_ERR_INVALID, "endpoint '%s': expected host:port",
                          endpoint ? endpoint : "(null)");
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || port < 1 || port > 65535)
        return ferry_fail(err, FERRY_ERR_INVALID, "endpoint '%s': bad port", endpoint);
    memcpy(c->host, endpoint, (size_t)(colon - endpoint));
    c->host[colon - endpoint] = '\0';
    c->port = (int)port;
    snprintf(c->endpoint, sizeof c->endpoint, "%s:%d", c->host, c->port);
    return FERRY_OK;
}

int ferry_client_connect(const char *endpoint, const struct ferry_client_options *opts,
                         struct ferry_client **out, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    *out = NULL;
    struct ferry_client *c = calloc(1, sizeof *c);
    if (!c) return ferry_fail(err, FERRY_ERR_NOMEM, "client: out of memory");
    if (opts) c->opts = *opts;
    else ferry_client_options_defaults(&c->opts);
    int rc = parse_endpoint(c, endpoint, err);
    if (!rc) rc = open_conn(c, err);
    if (rc) {
        ferry_conn_close(c->conn);
        free(c);
        return rc;
    }
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return FERRY_OK;
}

void ferry_client_close(struct ferry_client *c) {
    if (!c) return;
    pthread_mutex_lock(&c->lock);
    ferry_conn_close(c->conn);
    c->conn = NULL;
    while (c->buffers) client_unregister(c, c->buffers);
    free(c->memos);
    client_forget_graphs(c);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int ferry_client_reconnect(struct ferry_client *c, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    pthread_mutex_lock(&c->lock);
    ferry_conn_close(c->conn);
    c->conn = NULL;
    client_forget_graphs(c); /* the new connection has no stored graph */
    int rc = open_conn(c, err);
    int lost = 0;
    for (struct ferry_remote_buffer *b = c->buffers; b && !rc; b = b->next) {
        int brc = client_alloc_remote(c, b, err);
        if (brc == FERRY_ERR_NOMEM) lost++;
        else rc = brc;
    }
    if (!rc) {
        c->stats.reconnects++;
        if (lost) rc = ferry_fail(err, FERRY_ERR_NOMEM, "%s: reconnected, but %d buffer(s) could not be re-allocated",
                                  c->endpoint, lost);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

bool ferry_client_is_broken(struct ferry_client *c) {
    pthread_mutex_lock(&c->lock);
    bool broken = c->conn == NULL;
    pthread_mutex_unlock(&c->lock);
    return broken;
}

const char *ferry_client_transport(struct ferry_client *c, char *line, size_t cap) {
    pthread_mutex_lock(&c->lock);
    const char *kind = c->conn ? ferry_conn_transport(c->conn) : "none";
    if (line && cap) {
        if (c->conn) ferry_conn_describe(c->conn, line, cap);
        else snprintf(line, cap, "none (%s)", c->broken_reason);
    }
    pthread_mutex_unlock(&c->lock);
    return kind;
}

const char *ferry_client_endpoint(const struct ferry_client *c) { return c->endpoint; }

void ferry_client_get_stats(struct ferry_client *c, struct ferry_client_stats *out) {
    pthread_mutex_lock(&c->lock);
    *out = c->stats;
    pthread_mutex_unlock(&c->lock);
}

bool ferry_client_conn_stats(struct ferry_client *c, struct ferry_client_conn_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->lock);
    bool up = c->conn != NULL;
    if (up) {
        const struct ferry_conn_stats *s = ferry_conn_stats(c->conn);
        *out = (struct ferry_client_conn_stats){
            .msgs_sent = s->msgs_sent,         .msgs_recv = s->msgs_recv,
            .bytes_out = s->bytes_out,         .bytes_in = s->bytes_in,
            .syscalls = s->syscalls,           .copies = s->copies,
            .waits = s->waits,                 .sends_posted = s->sends_posted,
            .recvs_posted = s->recvs_posted,   .writes_posted = s->writes_posted,
            .reads_posted = s->reads_posted,   .completions = s->completions,
            .cq_sleeps = s->cq_sleeps,         .credit_msgs = s->credit_msgs,
            .credit_waits = s->credit_waits,   .mr_regs = s->mr_regs,
            .write_bytes = s->write_bytes,
        };
    }
    pthread_mutex_unlock(&c->lock);
    return up;
}

/* ---- ferry's extension -------------------------------------------------------- */

bool ferry_client_server_is_ferry(struct ferry_client *c) {
    pthread_mutex_lock(&c->lock);
    bool yes = (c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_STATS) != 0;
    pthread_mutex_unlock(&c->lock);
    return yes;
}

int ferry_client_server_stats(struct ferry_client *c, struct ferry_client_server_stats *out,
                              struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    pthread_mutex_lock(&c->lock);
    int rc;
    uint8_t rsp[FERRY_RPC_FERRY_STATS_RSP_SIZE];
    struct ferry_rpc_ferry_stats st;
    /* a ggml server would drop the connection on an unknown command */
    if (!(c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_STATS))
        rc = ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: not a ferry server (no FERRY_STATS)", c->endpoint);
    else if ((rc = client_call(c, FERRY_RPC_CMD_FERRY_STATS, NULL, 0, rsp, sizeof rsp, err)) == FERRY_OK &&
             (rc = ferry_rpc_decode_ferry_stats(rsp, sizeof rsp, &st, err)) == FERRY_OK)
        *out = (struct ferry_client_server_stats){ st.cpu_user_ns, st.cpu_sys_ns, st.commands,
                                                   st.bytes_in,    st.bytes_out,  st.compute_ns };
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- devices ------------------------------------------------------------------ */

static int device_u64(struct ferry_client *c, uint8_t cmd, uint32_t device, uint64_t *v,
                      struct ferry_error *err) {
    uint8_t req[FERRY_RPC_DEVICE_REQ_SIZE], rsp[8];
    ferry_rpc_encode_device(device, req);
    pthread_mutex_lock(&c->lock);
    int rc = call1(c, cmd, req, sizeof req, rsp, sizeof rsp, err);
    pthread_mutex_unlock(&c->lock);
    return rc ? rc : ferry_rpc_decode_u64_rsp(rsp, sizeof rsp, v, err);
}

int ferry_client_device_count(struct ferry_client *c, uint32_t *count, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    uint8_t rsp[4];
    pthread_mutex_lock(&c->lock);
    int rc = call1(c, FERRY_RPC_CMD_DEVICE_COUNT, NULL, 0, rsp, sizeof rsp, err);
    pthread_mutex_unlock(&c->lock);
    return rc ? rc : ferry_rpc_decode_u32_rsp(rsp, sizeof rsp, count, err);
}

int ferry_client_device_memory(struct ferry_client *c, uint32_t device, uint64_t *free_mem,
                               uint64_t *total_mem, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    uint8_t req[FERRY_RPC_DEVICE_REQ_SIZE], rsp[16];
    ferry_rpc_encode_device(device, req);
    pthread_mutex_lock(&c->lock);
    int rc = call1(c, FERRY_RPC_CMD_GET_DEVICE_MEMORY, req, sizeof req, rsp, sizeof rsp, err);
    pthread_mutex_unlock(&c->lock);
    struct ferry_rpc_device_memory m;
    if (!rc && !(rc = ferry_rpc_decode_device_memory(rsp, sizeof rsp, &m, err))) {
        *free_mem = m.free_mem;
        *total_mem = m.total_mem;
    }
    return rc;
}

int ferry_client_alignment(struct ferry_client *c, uint32_t device, uint64_t *alignment,
                           struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    return device_u64(c, FERRY_RPC_CMD_GET_ALIGNMENT, device, alignment, err);
}

int ferry_client_max_size(struct ferry_client *c, uint32_t device, uint64_t *max_size,
                          struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    return device_u64(c, FERRY_RPC_CMD_GET_MAX_SIZE, device, max_size, err);
}

/* ---- tensors -------------------------------------------------------------------- */

/* [offset, offset + size) must lie inside the tensor: checked here so a
 * caller's mistake is an INVALID answer, not a connection the server drops. */
static int tensor_region(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                         uint64_t size, struct ferry_rpc_tensor *r, struct ferry_error *err) {
    int rc = client_tensor_record(c, t, r, err);
    if (rc) return rc;
    if (!t->buffer) return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s' has no remote buffer", t->name);
    size_t n = ferry_nbytes(t);
    if (offset > n || size > n - offset)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': region %llu+%llu outside its %zu bytes",
                          t->name, (unsigned long long)offset, (unsigned long long)size, n);
    return FERRY_OK;
}

static int set_tensor_locked(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                             const void *data, uint64_t size, struct ferry_error *err) {
    struct ferry_rpc_tensor r;
    int rc = tensor_region(c, t, offset, size, &r, err);
    if (rc) return rc;
    uint8_t hdr[FERRY_RPC_SET_TENSOR_HEADER_SIZE];
    ferry_rpc_encode_set_tensor_header(&r, offset, hdr);
    struct iovec v[2] = { { hdr, sizeof hdr }, { (void *)data, size } };
    uint64_t at = 0;
    client_tensor_offset(t, 0, &at, NULL);
    client_memo_drop(c, t->buffer, at + offset, size);
    return client_call(c, FERRY_RPC_CMD_SET_TENSOR, v, 2, NULL, 0, err);
}

static int set_hash_locked(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                           uint64_t size, uint64_t hash, bool *hit, struct ferry_error *err) {
    struct ferry_rpc_set_tensor_hash q = { .offset = offset, .hash = hash };
    int rc = tensor_region(c, t, offset, size, &q.tensor, err);
    if (rc) return rc;
    uint8_t req[FERRY_RPC_SET_TENSOR_HASH_SIZE], rsp[1];
    ferry_rpc_encode_set_tensor_hash(&q, req);
    rc = call1(c, FERRY_RPC_CMD_SET_TENSOR_HASH, req, sizeof req, rsp, 1, err);
    uint8_t v = 0;
    if (!rc) rc = ferry_rpc_decode_u8_rsp(rsp, 1, &v, err);
    *hit = !rc && v == 1;
    return rc;
}

int ferry_client_set_tensor(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                            const void *data, uint64_t size, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    pthread_mutex_lock(&c->lock);
    int rc = set_tensor_locked(c, t, offset, data, size, err);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_set_tensor_hash(struct ferry_client *c, const struct ferry_tensor *t,
                                 uint64_t offset, const void *data, uint64_t size, bool *hit,
                                 struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    uint64_t hash = ferry_fnv1a64(data, size); /* outside the lock: it is the slow part */
    pthread_mutex_lock(&c->lock);
    int rc = set_hash_locked(c, t, offset, size, hash, hit, err);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ferry's extension: the server fills a weight from its own model file. */
bool ferry_client_server_has_local(struct ferry_client *c) {
    pthread_mutex_lock(&c->lock);
    bool yes = (c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_STATS) &&
               (c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_LOCAL);
    pthread_mutex_unlock(&c->lock);
    return yes;
}

int ferry_client_load_local(struct ferry_client *c, const struct ferry_tensor *t, uint64_t key,
                            uint64_t file_offset, bool *loaded, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    *loaded = false;
    pthread_mutex_lock(&c->lock);
    int rc;
    struct ferry_rpc_load_local q = { .key = key, .file_offset = file_offset };
    if (!(c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_STATS) || !(c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_LOCAL)) {
        rc = ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: the server holds no model files (no FERRY_LOAD_LOCAL)",
                        c->endpoint);
    } else if ((rc = tensor_region(c, t, 0, ferry_nbytes(t), &q.tensor, err)) == FERRY_OK) {
        uint8_t req[FERRY_RPC_FERRY_LOAD_LOCAL_SIZE], rsp[1], v = 0;
        ferry_rpc_encode_load_local(&q, req);
        rc = call1(c, FERRY_RPC_CMD_FERRY_LOAD_LOCAL, req, sizeof req, rsp, 1, err);
        if (!rc) rc = ferry_rpc_decode_u8_rsp(rsp, 1, &v, err);
        *loaded = !rc && v == 1;
        if (*loaded) {
            /* what was there before is gone: a remembered upload over it
             * must not be restored after a reconnect */
            uint64_t at = 0;
            client_tensor_offset(t, 0, &at, NULL);
            client_memo_drop(c, t->buffer, at, ferry_nbytes(t));
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int upload(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset, const void *data,
                  uint64_t size, const uint64_t *known_hash, bool *hit, struct ferry_error *err) {
    bool cached = false;
    pthread_mutex_lock(&c->lock);
    const uint64_t min = c->opts.hash_min_size               ? c->opts.hash_min_size
                         : c->hello_flags & FERRY_RPC_HELLO_FLAG_EXT_STATS ? 1
                                                                         : FERRY_CLIENT_HASH_MIN_SIZE + 1;
    pthread_mutex_unlock(&c->lock);
    if (size < min) {
        if (hit) *hit = false;
        return ferry_client_set_tensor(c, t, offset, data, size, err);
    }
    uint64_t hash = known_hash ? *known_hash : ferry_fnv1a64(data, size);
    pthread_mutex_lock(&c->lock);
    int rc = set_hash_locked(c, t, offset, size, hash, &cached, err);
    if (!rc && !cached) rc = set_tensor_locked(c, t, offset, data, size, err);
    uint64_t at = 0;
    if (!rc && !client_tensor_offset(t, 0, &at, NULL)) client_memo_add(c, t->buffer, at + offset, size, hash);
    pthread_mutex_unlock(&c->lock);
    if (hit) *hit = cached;
    return rc;
}

int ferry_client_upload(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                        const void *data, uint64_t size, bool *hit, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    return upload(c, t, offset, data, size, NULL, hit, err);
}

int ferry_client_upload_hashed(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                               const void *data, uint64_t size, uint64_t hash, bool *hit, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    return upload(c, t, offset, data, size, &hash, hit, err);
}

int ferry_client_get_tensor(struct ferry_client *c, const struct ferry_tensor *t, uint64_t offset,
                            void *data, uint64_t size, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    struct ferry_rpc_get_tensor q = { .offset = offset, .size = size };
    pthread_mutex_lock(&c->lock);
    int rc = tensor_region(c, t, offset, size, &q.tensor, err);
    if (!rc) {
        uint8_t req[FERRY_RPC_GET_TENSOR_SIZE];
        ferry_rpc_encode_get_tensor(&q, req);
        rc = call1(c, FERRY_RPC_CMD_GET_TENSOR, req, sizeof req, data, size, err);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_copy_tensor(struct ferry_client *c, const struct ferry_tensor *src,
                             const struct ferry_tensor *dst, bool *ok, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    struct ferry_rpc_copy_tensor q;
    uint8_t req[FERRY_RPC_COPY_TENSOR_SIZE], rsp[1], v = 0;
    *ok = false;
    pthread_mutex_lock(&c->lock);
    int rc = tensor_region(c, src, 0, 0, &q.src, err);
    if (!rc) rc = tensor_region(c, dst, 0, ferry_nbytes(src), &q.dst, err);
    if (!rc) {
        uint64_t at = 0;
        client_tensor_offset(dst, 0, &at, NULL);
        client_memo_drop(c, dst->buffer, at, ferry_nbytes(src));
        ferry_rpc_encode_copy_tensor(&q, req);
        rc = call1(c, FERRY_RPC_CMD_COPY_TENSOR, req, sizeof req, rsp, 1, err);
    }
    pthread_mutex_unlock(&c->lock);
    if (!rc && !(rc = ferry_rpc_decode_u8_rsp(rsp, 1, &v, err))) *ok = v == 1;
    return rc;
}

int ferry_client_memset_tensor(struct ferry_client *c, const struct ferry_tensor *t,
                               uint64_t offset, uint64_t size, uint8_t value,
                               struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    struct ferry_rpc_memset_tensor q = { .offset = offset, .size = size, .value = value };
    pthread_mutex_lock(&c->lock);
    int rc = tensor_region(c, t, offset, size, &q.tensor, err);
    if (!rc) {
        uint64_t at = 0;
        client_tensor_offset(t, 0, &at, NULL);
        client_memo_drop(c, t->buffer, at + offset, size);
        uint8_t req[FERRY_RPC_MEMSET_TENSOR_SIZE];
        ferry_rpc_encode_memset_tensor(&q, req);
        rc = call1(c, FERRY_RPC_CMD_MEMSET_TENSOR, req, sizeof req, NULL, 0, err);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_init_tensor(struct ferry_client *c, const struct ferry_tensor *t,
                             struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    struct ferry_rpc_tensor r;
    pthread_mutex_lock(&c->lock);
    int rc = client_tensor_record(c, t, &r, err);
    if (!rc) {
        uint8_t req[FERRY_RPC_INIT_TENSOR_SIZE];
        ferry_rpc_encode_init_tensor(&r, req);
        rc = call1(c, FERRY_RPC_CMD_INIT_TENSOR, req, sizeof req, NULL, 0, err);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_get_alloc_size(struct ferry_client *c, uint32_t device,
                                const struct ferry_tensor *t, uint64_t *size,
                                struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    struct ferry_rpc_get_alloc_size *q = calloc(1, sizeof *q); /* ~3.3 KB of records */
    if (!q) return ferry_fail(err, FERRY_ERR_NOMEM, "get_alloc_size: out of memory");
    q->device = device;
    uint8_t *req = malloc(FERRY_RPC_GET_ALLOC_SIZE_SIZE), rsp[8];
    pthread_mutex_lock(&c->lock);
    int rc = req ? client_tensor_record(c, t, &q->tensor, err)
                 : ferry_fail(err, FERRY_ERR_NOMEM, "get_alloc_size: out of memory");
    for (int i = 0; i < FERRY_MAX_SRC && !rc; i++)
        if (t->src[i]) rc = client_tensor_record(c, t->src[i], &q->srcs[i], err);
    if (!rc) {
        for (int i = 0; i < FERRY_MAX_SRC; i++) q->tensor.src[i] = (uint64_t)(uintptr_t)t->src[i];
        ferry_rpc_encode_get_alloc_size(q, req);
        rc = call1(c, FERRY_RPC_CMD_GET_ALLOC_SIZE, req, FERRY_RPC_GET_ALLOC_SIZE_SIZE, rsp, 8, err);
    }
    pthread_mutex_unlock(&c->lock);
    if (!rc) rc = ferry_rpc_decode_u64_rsp(rsp, 8, size, err);
    free(req);
    free(q);
    return rc;
}

/* ---- graphs ----------------------------------------------------------------------- */

int ferry_client_graph_compute(struct ferry_client *c, uint32_t device,
                               struct ferry_tensor *const *nodes, uint32_t n_nodes,
                               struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    if (n_nodes == 0) return ferry_fail(err, FERRY_ERR_INVALID, "graph_compute: no nodes");
    struct ferry_rpc_graph_client cb = { .ctx = c, .locate = client_locate };
    uint8_t *payload = NULL;
    size_t len = 0;
    pthread_mutex_lock(&c->lock);
    /* encoded under the lock: buffer addresses change on reconnect */
    int rc = client_check_open(c, err);
    if (!rc) rc = ferry_rpc_graph_encode(device, nodes, n_nodes, &cb, &payload, &len, err);
    if (rc) goto out;
    struct last_graph *last = device < FERRY_CLIENT_MAX_DEVICES ? &c->graphs[device] : NULL;
    if (last && last->payload && last->len == len && memcmp(last->payload, payload, len) == 0) {
        uint8_t req[FERRY_RPC_DEVICE_REQ_SIZE];
        ferry_rpc_encode_device(device, req);
        rc = call1(c, FERRY_RPC_CMD_GRAPH_RECOMPUTE, req, sizeof req, NULL, 0, err);
        if (!rc) c->stats.graphs_recomputed++;
        goto out;
    }
    rc = call1(c, FERRY_RPC_CMD_GRAPH_COMPUTE, payload, len, NULL, 0, err);
    if (rc) goto out;
    c->stats.graphs_sent++;
    if (last) {
        free(last->payload);
        last->payload = payload; /* kept for the next comparison */
        last->len = len;
        payload = NULL;
    }
out:
    pthread_mutex_unlock(&c->lock);
    free(payload);
    return rc;
}
