/* The transport-independent half: argument checks, frame deadlines and
 * message/byte counters, on top of each transport's send and recv_some. */
#include "transport/transport.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "transport/net.h"

int64_t ferry_transport_now_ms(void) { return ferry_net_now_ms(); }

int64_t ferry_transport_deadline_after(int ms) {
    return ms > 0 ? ferry_net_now_ms() + ms : -1;
}

void ferry_conn_init(struct ferry_conn *c, const struct ferry_conn_ops *ops, int fd) {
    memset(c, 0, sizeof *c);
    c->ops = ops;
    c->fd = fd;
    c->timeouts.idle_ms = FERRY_CONN_DEFAULT_IDLE_MS;
    c->timeouts.frame_ms = FERRY_CONN_DEFAULT_FRAME_MS;
    c->frame_deadline = -1;
}

/* ---- send ----------------------------------------------------------------- */

int ferry_conn_send(struct ferry_conn *c, const struct iovec *hdr, int hdr_n,
                    const struct iovec *payload, int payload_n, struct ferry_error *err) {
    if (hdr_n < 0 || payload_n < 0 || hdr_n + payload_n > FERRY_CONN_MAX_IOV)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %d + %d segments (at most %d)", c->name,
                          hdr_n, payload_n, FERRY_CONN_MAX_IOV);
    struct iovec iov[FERRY_CONN_MAX_IOV];
    size_t total = 0;
    for (int i = 0; i < hdr_n; i++) iov[i] = hdr[i];
    for (int i = 0; i < payload_n; i++) iov[hdr_n + i] = payload[i];
    for (int i = 0; i < hdr_n + payload_n; i++) {
        if (iov[i].iov_len > SIZE_MAX - total)
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: message size overflows", c->name);
        total += iov[i].iov_len;
    }
    int64_t deadline = ferry_transport_deadline_after(c->timeouts.frame_ms);
    int rc = c->ops->send(c, iov, hdr_n + payload_n, hdr_n, deadline, err);
    if (rc != FERRY_OK) return rc;
    c->stats.msgs_sent++;
    c->stats.bytes_out += total;
    return FERRY_OK;
}

/* ---- receive -------------------------------------------------------------- */

/* Hands out up to len bytes already read ahead; returns how many. These
 * few bytes are the only ones the transport copies (stats.copies). */
static size_t take_ahead(struct ferry_conn *c, uint8_t *buf, size_t len) {
    size_t n = c->ahead_len - c->ahead_pos;
    if (n > len) n = len;
    if (n) {
        memcpy(buf, c->ahead + c->ahead_pos, n);
        c->ahead_pos += n;
        c->stats.copies += n;
    }
    return n;
}

/* Fills buf[0..len) from the stream, all before the frame deadline. */
static int recv_exact(struct ferry_conn *c, uint8_t *buf, size_t len, struct ferry_error *err) {
    size_t done = take_ahead(c, buf, len);
    while (done < len) {
        size_t got = 0;
        int rc = c->ops->recv_some(c, buf + done, len - done, &got, c->frame_deadline, err);
        if (rc != FERRY_OK) return rc;
        done += got;
        c->stats.bytes_in += got;
    }
    return FERRY_OK;
}

/* Refills the read-ahead buffer (which must be empty) with what is there,
 * waiting until the deadline for at least one byte. */
static int read_ahead(struct ferry_conn *c, int64_t deadline, struct ferry_error *err) {
    size_t got = 0;
    int rc = c->ops->recv_some(c, c->ahead, sizeof c->ahead, &got, deadline, err);
    if (rc != FERRY_OK) return rc;
    c->ahead_pos = 0;
    c->ahead_len = got;
    c->stats.bytes_in += got;
    return FERRY_OK;
}

static void start_frame(struct ferry_conn *c) {
    c->in_frame = true;
    c->frame_deadline = ferry_transport_deadline_after(c->timeouts.frame_ms);
}

int ferry_conn_recv_header(struct ferry_conn *c, void *buf, size_t len, struct ferry_error *err) {
    if (len == 0) return ferry_fail(err, FERRY_ERR_INVALID, "%s: empty header", c->name);
    /* Between frames only the idle timeout applies; the frame clock starts
     * with the first byte, so a slow computation on the other side is not
     * mistaken for a stalled frame. */
    if (c->ahead_pos == c->ahead_len) {
        int rc = read_ahead(c, ferry_transport_deadline_after(c->timeouts.idle_ms), err);
        if (rc == FERRY_ERR_TIMEOUT)
            return ferry_fail(err, rc, "%s: idle for %d ms", c->name, c->timeouts.idle_ms);
        if (rc != FERRY_OK) return rc;
    }
    start_frame(c);
    uint8_t *out = buf;
    size_t done = take_ahead(c, out, len);
    int rc = FERRY_OK;
    while (done < len && rc == FERRY_OK) {
        rc = read_ahead(c, c->frame_deadline, err);
        if (rc == FERRY_OK) done += take_ahead(c, out + done, len - done);
    }
    if (rc == FERRY_ERR_CLOSED)
        return ferry_fail(err, rc, "%s: peer closed in the middle of a header", c->name);
    if (rc == FERRY_ERR_TIMEOUT)
        return ferry_fail(err, rc, "%s: header not complete within %d ms", c->name,
                          c->timeouts.frame_ms);
    if (rc != FERRY_OK) return rc;
    c->stats.msgs_recv++;
    return FERRY_OK;
}

static int payload_error(struct ferry_conn *c, int rc, struct ferry_error *err) {
    if (rc == FERRY_ERR_CLOSED)
        return ferry_fail(err, rc, "%s: peer closed in the middle of a payload", c->name);
    if (rc == FERRY_ERR_TIMEOUT)
        return ferry_fail(err, rc, "%s: frame not complete within %d ms", c->name,
                          c->timeouts.frame_ms);
    return rc;
}

int ferry_conn_recv_payload(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err) {
    if (len > 0 && dst == NULL)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: payload without destination", c->name);
    if (!c->in_frame) start_frame(c); /* payload without a header: still bounded */
    int rc = recv_exact(c, dst, len, err);
    return rc == FERRY_OK ? FERRY_OK : payload_error(c, rc, err);
}

int ferry_conn_discard(struct ferry_conn *c, uint64_t len, uint64_t max, struct ferry_error *err) {
    if (len > max)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "%s: refusing to skip %llu bytes (at most %llu)", c->name,
                          (unsigned long long)len, (unsigned long long)max);
    if (!c->in_frame) start_frame(c);
    uint8_t sink[16384];
    while (len > 0) {
        size_t n = len < sizeof sink ? (size_t)len : sizeof sink;
        int rc = recv_exact(c, sink, n, err);
        if (rc != FERRY_OK) return payload_error(c, rc, err);
        len -= n;
    }
    return FERRY_OK;
}

/* ---- accessors and hooks -------------------------------------------------- */

void ferry_conn_set_timeouts(struct ferry_conn *c, struct ferry_conn_timeouts t) {
    c->timeouts.idle_ms = t.idle_ms > 0 ? t.idle_ms : 0;
    c->timeouts.frame_ms = t.frame_ms > 0 ? t.frame_ms : 0;
}

struct ferry_conn_timeouts ferry_conn_get_timeouts(const struct ferry_conn *c) {
    return c->timeouts;
}

const struct ferry_conn_stats *ferry_conn_stats(const struct ferry_conn *c) { return &c->stats; }
void ferry_conn_reset_stats(struct ferry_conn *c) { memset(&c->stats, 0, sizeof c->stats); }

int ferry_conn_fd(const struct ferry_conn *c) { return c->fd; }
const char *ferry_conn_name(const struct ferry_conn *c) { return c->name; }
const char *ferry_conn_peer(const struct ferry_conn *c) { return c->peer; }
const char *ferry_conn_local(const struct ferry_conn *c) { return c->local; }

int ferry_conn_reg_mem(struct ferry_conn *c, void *ptr, size_t len, void **handle,
                       struct ferry_error *err) {
    *handle = NULL;
    return c->ops->reg_mem ? c->ops->reg_mem(c, ptr, len, handle, err) : FERRY_OK;
}

void ferry_conn_unreg_mem(struct ferry_conn *c, void *handle) {
    if (c->ops->unreg_mem) c->ops->unreg_mem(c, handle);
}

int ferry_conn_local_caps(struct ferry_conn *c, uint8_t *out, size_t cap, size_t *len,
                          struct ferry_error *err) {
    *len = 0;
    return c->ops->local_caps ? c->ops->local_caps(c, out, cap, len, err) : FERRY_OK;
}

int ferry_conn_peer_caps(struct ferry_conn *c, const uint8_t *in, size_t len,
                         struct ferry_error *err) {
    return c->ops->peer_caps ? c->ops->peer_caps(c, in, len, err) : FERRY_OK;
}

int ferry_conn_confirm(struct ferry_conn *c, bool ext, struct ferry_error *err) {
    return c->ops->confirm ? c->ops->confirm(c, ext, err) : FERRY_OK;
}

int ferry_conn_offer_sink(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err) {
    return c->ops->offer_sink ? c->ops->offer_sink(c, dst, len, err) : FERRY_OK;
}

int ferry_conn_rdma_refusal(const struct ferry_conn *c) {
    if (c->ops->refusal) return c->ops->refusal(c);
    /* a bare TCP connection: RDMA turned off, or there was no device */
    return c->refusal ? c->refusal : FERRY_RDMA_REFUSED_NO_DEVICE;
}

void ferry_conn_describe_counters(const struct ferry_conn *c, char *out, size_t cap) {
    const struct ferry_conn_stats *cs = &c->stats;
    if (strcmp(ferry_conn_transport(c), "rdma") != 0) {
        if (cap) out[0] = '\0';
        return;
    }
    snprintf(out, cap,
             "; rdma: %" PRIu64 " sends, %" PRIu64 " recvs, %" PRIu64 " writes, %" PRIu64 " reads posted, %" PRIu64
             " completions, %" PRIu64 " cq sleeps, %" PRIu64 " bytes copied, %" PRIu64 " credit messages, %" PRIu64
             " credit waits, %" PRIu64 " bytes written",
             cs->sends_posted, cs->recvs_posted, cs->writes_posted, cs->reads_posted, cs->completions, cs->cq_sleeps,
             cs->copies, cs->credit_msgs, cs->credit_waits, cs->write_bytes);
}

const char *ferry_rdma_refusal_text(int code) {
    switch (code) {
    case FERRY_RDMA_REFUSED_NONE: return "not refused";
    case FERRY_RDMA_REFUSED_NO_DEVICE: return "it has no RDMA device (or was built without RDMA)";
    case FERRY_RDMA_REFUSED_TCP_ONLY: return "it runs with --transport tcp";
    case FERRY_RDMA_REFUSED_MEMLOCK: return "its locked-memory limit is too low (raise it there: ulimit -l)";
    case FERRY_RDMA_REFUSED_NO_GID: return "no active RDMA port there has a GID for the address it was reached at";
    case FERRY_RDMA_REFUSED_SETUP: return "setting up its queue pair failed (see the server's log)";
    default: return "an unknown reason";
    }
}

void ferry_conn_close(struct ferry_conn *c) {
    if (c) c->ops->close(c);
}

const char *ferry_conn_transport(const struct ferry_conn *c) {
    return c->ops->describe ? c->ops->describe(c, NULL, 0) : c->ops->kind;
}

void ferry_conn_describe(const struct ferry_conn *c, char *out, size_t cap) {
    if (c->ops->describe) c->ops->describe(c, out, cap);
    else snprintf(out, cap, "%s %s", c->ops->kind, c->peer);
}
