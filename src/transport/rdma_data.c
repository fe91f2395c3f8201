/* The RDMA data path, after HELLO switched a connection to its queue pair.
 *
 * Two framings share it:
 *   ggml   what a ggml peer speaks: every header part its own SEND, the
 *          payload in SENDs of at most 256 KiB, no immediates; receivers
 *          rely on rnr_retry when no buffer is posted.
 *   ferry  between two ferry peers (docs/protocol-extensions.md): every
 *          SEND carries an immediate with its kind and the credits it
 *          returns, a sender never posts more than the peer has buffers
 *          for, small pieces of one message share one SEND, and large
 *          payloads move by RDMA WRITE between registered memory: SET-like
 *          payloads after an RTS/CTS handshake into the receiver's buffer,
 *          reply payloads into a sink the requester named beforehand.
 * The receiver treats what arrives as one byte stream either way; markers
 * (RTS, SINKDONE) keep their place in it. */
#ifdef FERRY_HAVE_RDMA

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "ferry/log.h"
#include "transport/rdma_internal.h"

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#define REMOTE_SIZE 20 /* addr u64, len u64, rkey u32: a CTS or a sink */

static void encode_remote(uint8_t out[REMOTE_SIZE], uint64_t addr, uint64_t len, uint32_t rkey) {
    ferry_put_le64(out, addr);
    ferry_put_le64(out + 8, len);
    ferry_put_le32(out + 16, rkey);
}

static int broken(struct rdma_conn *r, int code, struct ferry_error *err, const char *what) {
    r->broken = true;
    return ferry_fail(err, code, "%s: %s", r->base.name, what);
}

/* ---- registered memory -------------------------------------------------------------- */

static struct rdma_region *find_region(struct rdma_conn *r, const void *p, size_t len) {
    const uint8_t *b = p;
    for (size_t i = 0; i < r->n_regions; i++) {
        struct rdma_region *g = r->regions[i];
        if (b >= g->p && len <= g->len && (size_t)(b - g->p) <= g->len - len) return g;
    }
    return NULL;
}

static struct rdma_region *add_region(struct rdma_conn *r, void *p, size_t len, int access, bool temp,
                                      struct ferry_error *err) {
    if (rdma_check_memlock(len, err)) return NULL;
    if (r->n_regions == r->cap_regions) {
        size_t cap = r->cap_regions ? r->cap_regions * 2 : 16;
        struct rdma_region **v = realloc(r->regions, cap * sizeof *v);
        if (v == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory"), NULL;
        r->regions = v;
        r->cap_regions = cap;
    }
    struct rdma_region *g = calloc(1, sizeof *g);
    if (g == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory"), NULL;
    g->mr = ibv_reg_mr(r->pd, p, len, access);
    if (g->mr == NULL) {
        int e = errno;
        free(g);
        ferry_fail(err, e == ENOMEM || e == EAGAIN ? FERRY_ERR_NOMEM : FERRY_ERR_IO,
                   "%s: registering %zu bytes: %s", r->base.name, len, strerror(e));
        return NULL;
    }
    g->p = p;
    g->len = len;
    g->temp = temp;
    rdma_pinned_add((long long)len);
    if (temp) r->base.stats.mr_regs++;
    r->regions[r->n_regions++] = g;
    return g;
}

static void drop_region(struct rdma_conn *r, struct rdma_region *g) {
    for (size_t i = 0; i < r->n_regions; i++)
        if (r->regions[i] == g) {
            r->regions[i] = r->regions[--r->n_regions];
            ibv_dereg_mr(g->mr);
            rdma_pinned_add(-(long long)g->len);
            free(g);
            return;
        }
}

void rdma_release_regions(struct rdma_conn *r) {
    while (r->n_regions) drop_region(r, r->regions[r->n_regions - 1]);
    free(r->regions);
    r->regions = NULL;
    r->cap_regions = 0;
    memset(&r->sink, 0, sizeof r->sink);
}

/* A server buffer, once, at allocation: the peer may then WRITE into it
 * where a CTS grants. Only ferry mode uses it; elsewhere it is a no-op. */
int rdma_reg_mem(struct ferry_conn *c, void *ptr, size_t len, void **handle, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    *handle = NULL;
    if (r->state != ST_FERRY || len == 0) return FERRY_OK;
    struct rdma_region *g =
        add_region(r, ptr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, false, err);
    if (g == NULL) return err->code;
    *handle = g;
    return FERRY_OK;
}

void rdma_unreg_mem(struct ferry_conn *c, void *handle) {
    if (handle) drop_region((struct rdma_conn *)c, handle);
}

static void clear_sink(struct rdma_conn *r) {
    if (r->sink.reg && r->sink.reg->temp) drop_region(r, r->sink.reg);
    memset(&r->sink, 0, sizeof r->sink);
}

/* The requester's side of a reply by WRITE: dst is registered (a range
 * for this one reply unless it lies in a registered region) and described
 * to the peer ahead of the request. Any failure only means SENDs. */
int rdma_offer_sink(struct ferry_conn *c, void *dst, size_t len, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    clear_sink(r);
    if (dst == NULL || r->state != ST_FERRY || len < r->write_min) return FERRY_OK;
    struct rdma_region *g = find_region(r, dst, len);
    if (g == NULL) {
        struct ferry_error e;
        g = add_region(r, dst, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, true, &e);
        if (g == NULL) {
            ferry_log_debug("%s: no sink for %zu bytes: %s", r->base.peer, len, e.msg);
            return FERRY_OK;
        }
    }
    (void)err;
    r->sink.active = true;
    r->sink.sent = false;
    r->sink.p = dst;
    r->sink.len = len;
    r->sink.reg = g;
    return FERRY_OK;
}

/* ---- completions ---------------------------------------------------------------- */

int rdma_post_recv(struct rdma_conn *r, unsigned slot, struct ferry_error *err) {
    struct ibv_sge sge = { (uintptr_t)(r->rx_buf + (size_t)slot * RDMA_CHUNK), RDMA_CHUNK, r->rx_mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *bad = NULL;
    int e = ibv_post_recv(r->qp, &wr, &bad);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_post_recv: %s", r->base.name, strerror(e));
    r->base.stats.recvs_posted++;
    return FERRY_OK;
}

/* A buffer is free again: post it, and in ferry mode owe the peer a credit. */
static int repost(struct rdma_conn *r, unsigned slot, struct ferry_error *err) {
    int rc = rdma_post_recv(r, slot, err);
    if (rc == FERRY_OK && r->state == ST_FERRY) r->rx_unreturned++;
    return rc;
}

static int rxq_push(struct rdma_conn *r, uint8_t kind, unsigned slot, uint64_t len, struct ferry_error *err) {
    if (r->rx_count >= RXQ_CAP)
        return broken(r, FERRY_ERR_PROTOCOL, err, "peer sent more messages than it had credits for");
    struct rx_entry *e = &r->rxq[(r->rx_head + r->rx_count) % RXQ_CAP];
    e->kind = kind;
    e->slot = (uint16_t)slot;
    e->len = len;
    r->rx_count++;
    return FERRY_OK;
}

static void rxq_pop(struct rdma_conn *r) {
    r->rx_head = (r->rx_head + 1) % RXQ_CAP;
    r->rx_count--;
    r->rx_pos = 0;
}

/* ---- counters (STATS) ------------------------------------------------------------ */

/* The counters a STATS answer carries, in this order. */
static uint64_t *stats_field(struct ferry_conn_stats *s, unsigned i) {
    uint64_t *f[STATS_FIELDS] = { &s->sends_posted, &s->recvs_posted, &s->writes_posted, &s->completions,
                                  &s->cq_sleeps,    &s->cq_wakeups,   &s->credit_msgs,   &s->spin_us };
    return f[i];
}

static void stats_decode(struct ferry_conn_stats *s, const uint8_t *p, uint32_t count) {
    memset(s, 0, sizeof *s);
    for (unsigned i = 0; i < count && i < STATS_FIELDS; i++) *stats_field(s, i) = ferry_get_le64(p + 8 * i);
}

/* One receive completion. In ggml mode it is stream bytes; in ferry mode
 * its immediate says what it is, and everything but stream bytes is taken
 * here so its buffer goes straight back to the ring. */
static int on_recv(struct rdma_conn *r, const struct ibv_wc *wc, struct ferry_error *err) {
    unsigned slot = (unsigned)wc->wr_id;
    bool write = wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM; /* byte_len: what was written, not received */
    if (slot >= RX_DEPTH || (!write && wc->byte_len > RDMA_CHUNK))
        return broken(r, FERRY_ERR_IO, err, "unexpected receive completion");
    bool imm = (wc->wc_flags & IBV_WC_WITH_IMM) != 0;
    if (r->state == ST_PENDING) { /* the client's first message came over the queue pair: ggml */
        if (imm) return broken(r, FERRY_ERR_PROTOCOL, err, "immediate data before the framing was agreed");
        r->state = ST_GGML;
        ferry_log_debug("%s: ggml framing (the client sent no ferry record)", r->base.peer);
    }
    if (r->state != ST_FERRY) {
        if (write) return broken(r, FERRY_ERR_PROTOCOL, err, "RDMA WRITE from a ggml-framing peer");
        if (imm) return broken(r, FERRY_ERR_PROTOCOL, err, "immediate data from a ggml-framing peer");
        if (wc->byte_len == 0) return repost(r, slot, err);
        return rxq_push(r, K_DATA, slot, wc->byte_len, err);
    }
    if (!imm) return broken(r, FERRY_ERR_PROTOCOL, err, "a message without its immediate");
    uint32_t v = ntohl(wc->imm_data);
    if ((uint64_t)r->tx_credits + IMM_CREDITS(v) > r->peer_depth)
        return broken(r, FERRY_ERR_PROTOCOL, err, "peer returned more credits than it has buffers");
    r->tx_credits += IMM_CREDITS(v);
    const uint8_t *p = r->rx_buf + (size_t)slot * RDMA_CHUNK;
    uint32_t len = wc->byte_len;
    uint64_t marker = 0; /* bytes of an RTS or SINKDONE marker to queue */
    uint8_t kind = (uint8_t)IMM_KIND(v);
    switch (kind) {
    case K_DATA:
        if (write || len == 0) return broken(r, FERRY_ERR_PROTOCOL, err, "malformed data message");
        return rxq_push(r, K_DATA, slot, len, err);
    case K_CREDIT:
        if (write || len) return broken(r, FERRY_ERR_PROTOCOL, err, "malformed credit message");
        break;
    case K_RTS:
        if (write || len != 8 || (marker = ferry_get_le64(p)) == 0)
            return broken(r, FERRY_ERR_PROTOCOL, err, "malformed RTS");
        break;
    case K_CTS:
    case K_SINK: {
        if (write || len != REMOTE_SIZE) return broken(r, FERRY_ERR_PROTOCOL, err, "malformed CTS or sink");
        struct rdma_remote m = { true, ferry_get_le64(p), ferry_get_le64(p + 8), ferry_get_le32(p + 16) };
        uint64_t end;
        if (__builtin_add_overflow(m.addr, m.len, &end))
            return broken(r, FERRY_ERR_PROTOCOL, err, "CTS or sink range overflows");
        if (kind == K_CTS) {
            if (!r->rts_outstanding) return broken(r, FERRY_ERR_PROTOCOL, err, "CTS without an RTS");
            r->rts_outstanding = false;
            r->cts = m;
        } else {
            if (m.len == 0) return broken(r, FERRY_ERR_PROTOCOL, err, "empty sink");
            r->peer_sink = m;
        }
        break;
    }
    case K_WDONE:
        if (!write) return broken(r, FERRY_ERR_PROTOCOL, err, "malformed write completion");
        if (!r->granted) return broken(r, FERRY_ERR_PROTOCOL, err, "write completion without a CTS");
        r->granted = false;
        r->wdone = true;
        break;
    case K_SINKDONE:
        if (!write || !r->sink.active || !r->sink.sent)
            return broken(r, FERRY_ERR_PROTOCOL, err, "sink written without being offered");
        marker = r->sink.len;
        break;
    case K_STATS:
        if (write || !(r->features & REC_FEAT_STATS)) return broken(r, FERRY_ERR_PROTOCOL, err, "malformed STATS");
        if (len == 0) { /* a question: answered as soon as a credit allows (answer_stats) */
            r->stats_owed = true;
            break;
        }
        if (!r->stats_waiting || len < 4 || ferry_get_le32(p) > 64 || len != 4 + 8 * ferry_get_le32(p))
            return broken(r, FERRY_ERR_PROTOCOL, err, "STATS answer malformed or not asked for");
        stats_decode(&r->peer_stats, p + 4, ferry_get_le32(p));
        r->stats_waiting = false;
        break;
    default: return broken(r, FERRY_ERR_PROTOCOL, err, "unknown message kind");
    }
    int rc = repost(r, slot, err);
    if (rc == FERRY_OK && marker) rc = rxq_push(r, kind, NO_SLOT, marker, err);
    return rc;
}

static int check_liveness(struct rdma_conn *r, struct ferry_error *err);

/* A work completion with an error ends the connection. Whether the peer
 * is gone is the liveness socket's to say, not the queue pair's: retries
 * run out on a live peer too, when the RDMA path loses every packet for
 * longer than the retry budget while TCP still gets through. */
static int failed_completion(struct rdma_conn *r, const struct ibv_wc *wc, struct ferry_error *err) {
    r->broken = true;
    const char *op = wc->wr_id & SEND_TAG ? "send" : "receive";
    int rc = check_liveness(r, err);
    if (rc) return rc; /* it closed: the peer left, and that is the news */
    if (wc->status == IBV_WC_RETRY_EXC_ERR || wc->status == IBV_WC_RNR_RETRY_EXC_ERR) {
        double try_s = 4.096e-6 * (double)(1ull << r->ack_timeout);
        return ferry_fail(err, FERRY_ERR_CLOSED,
                          "%s: RDMA path lost: no acknowledgement for %u tries of %.2f s (at least %.1f s) "
                          "while the peer's TCP connection is still up; the peer may be alive but its queue "
                          "pair is unreachable (%s: %s)",
                          r->base.name, r->retry_cnt + 1u, try_s, try_s * (r->retry_cnt + 1u), op,
                          ibv_wc_status_str(wc->status));
    }
    bool flushed = wc->status == IBV_WC_WR_FLUSH_ERR;
    bool local = wc->status == IBV_WC_LOC_QP_OP_ERR;
    return ferry_fail(err, flushed ? FERRY_ERR_CLOSED : FERRY_ERR_IO, "%s: %s failed: %s%s", r->base.name, op,
                      ibv_wc_status_str(wc->status),
                      local ? " (this host's RDMA device could not send: its link is down or it has no route to "
                              "the peer)"
                            : "");
}

/* Reaps what has completed: receives join the ready queue, sends free
 * their slot. Returns how many completions it took, or an error. */
static int reap(struct rdma_conn *r, struct ferry_error *err) {
    struct ibv_wc wc[16];
    int total = 0;
    for (;;) {
        int n = ibv_poll_cq(r->cq, 16, wc);
        if (n < 0) return broken(r, FERRY_ERR_IO, err, "ibv_poll_cq failed");
        r->base.stats.completions += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) return failed_completion(r, &wc[i], err);
            if (wc[i].wr_id & SEND_TAG) {
                unsigned slot = (unsigned)(wc[i].wr_id & 0xffff);
                if (slot < TX_SLOTS) r->tx_busy[slot] = false;
                if (r->sq_inflight) r->sq_inflight--;
            } else {
                r->rx_seen++;
                int rc = on_recv(r, &wc[i], err);
                if (rc) return rc;
            }
        }
        total += n;
        if (n < 16) return total;
    }
}

/* The credits owed to the peer, handed over with the next message. */
static uint32_t take_credits(struct rdma_conn *r) {
    uint32_t give = r->rx_unreturned > 0xffff ? 0xffff : r->rx_unreturned;
    r->rx_unreturned -= give;
    return give;
}

static unsigned solicited(const struct rdma_conn *r) {
    return (r->features & REC_FEAT_SOLICITED) ? IBV_SEND_SOLICITED : 0;
}

/* Returns the buffers re-posted so far in a message of their own, when
 * enough have piled up and nothing else is going the peer's way. Uses the
 * credit kept back for this, never waits. */
static int return_credits(struct rdma_conn *r, struct ferry_error *err) {
    if (r->state != ST_FERRY || r->rx_unreturned < RX_DEPTH / 2 || r->tx_credits < 1 ||
        r->sq_inflight >= SQ_DEPTH)
        return FERRY_OK;
    uint32_t give = take_credits(r); /* a failed post breaks the connection: nothing to undo */
    struct ibv_send_wr wr = { .wr_id = SEND_TAG | NO_SLOT, .num_sge = 0, .opcode = IBV_WR_SEND_WITH_IMM,
                              .send_flags = IBV_SEND_SIGNALED | solicited(r), .imm_data = htonl(IMM(K_CREDIT, give)) },
                       *bad = NULL;
    int e = ibv_post_send(r->qp, &wr, &bad);
    if (e) return broken(r, FERRY_ERR_IO, err, "posting a credit message failed");
    r->tx_credits--;
    r->sq_inflight++;
    r->base.stats.sends_posted++;
    r->base.stats.credit_msgs++;
    return FERRY_OK;
}

/* The TCP socket carries nothing after the switch: readable means the peer
 * closed it (or broke the protocol). */
static int check_liveness(struct rdma_conn *r, struct ferry_error *err) {
    char b;
    ssize_t n = recv(r->base.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return ferry_fail(err, FERRY_ERR_CLOSED, "%s: peer closed the connection", r->base.name);
    if (n > 0)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: peer sent TCP data after the switch to RDMA",
                          r->base.name);
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_CLOSED, "%s: connection lost: %s", r->base.name, strerror(errno));
}

static int post_wr(struct rdma_conn *r, struct ibv_send_wr *wr, struct ferry_error *err);

/* The peer asked for our counters: answer inline, when a credit (beyond
 * the one kept back) and a send-queue entry are free; else later. Never
 * waits, so it may run inside any wait. */
static int answer_stats(struct rdma_conn *r, struct ferry_error *err) {
    if (!r->stats_owed || r->tx_credits < 2 || r->sq_inflight >= SQ_DEPTH) return FERRY_OK;
    uint8_t m[STATS_BYTES];
    ferry_put_le32(m, STATS_FIELDS);
    for (unsigned i = 0; i < STATS_FIELDS; i++) ferry_put_le64(m + 4 + 8 * i, *stats_field(&r->base.stats, i));
    struct ibv_sge sge = { (uintptr_t)m, sizeof m, 0 };
    struct ibv_send_wr wr = { .wr_id = SEND_TAG | NO_SLOT, .sg_list = &sge, .num_sge = 1,
                              .opcode = IBV_WR_SEND_WITH_IMM, .send_flags = IBV_SEND_INLINE };
    wr.imm_data = htonl(IMM(K_STATS, take_credits(r)));
    r->stats_owed = false;
    return post_wr(r, &wr, err);
}

static int reaped(struct rdma_conn *r, struct ferry_error *err) {
    int rc = answer_stats(r, err);
    return rc ? rc : return_credits(r, err);
}

/* How long a wait for the peer's next message spins before it sleeps:
 * twice the typical wait after the same kind of message (plus a floor),
 * at most the cap; nothing beyond the floor when the typical wait is
 * longer than the cap (spinning would not catch it). docs/rdma-waiting.md
 * says why. */
static int64_t spin_budget(const struct rdma_conn *r) {
    int64_t cap = r->spin_cap_us, est = r->wait_est[r->wait_key];
    if (cap <= 0) return 0;
    if (est > cap) return SPIN_FLOOR_US < cap ? SPIN_FLOOR_US : cap;
    int64_t b = 2 * est + SPIN_FLOOR_US;
    return b < cap ? b : cap;
}

/* A wait of w us for the peer's next message ended: waits up to twice the
 * cap move the estimate (up fast, down slowly), so a wait made long by
 * both sides sleeping is still seen as traffic worth spinning for; a
 * longer one means the peer was idle and halves it, so an idle connection
 * stops spinning. */
static void learn_wait(struct rdma_conn *r, int64_t w) {
    uint32_t *e = &r->wait_est[r->wait_key];
    if (w > 2 * (int64_t)r->spin_cap_us) *e /= 2;
    else if (w > *e) *e = (uint32_t)((*e + w + 1) / 2);
    else *e = (uint32_t)((3 * (int64_t)*e + w) / 4);
}

/* Waits until at least one completion was reaped (want_recv: a receive):
 * spins for the budget above (send completions: SPIN_FLOOR_US), then arms
 * the CQ, polls once more and sleeps on the completion channel and the
 * liveness socket, until the deadline (-1: none). A peer that sets the
 * solicited bit on its messages lets a wait for a receive sleep through
 * send completions. A server still waiting to learn the client's framing
 * also takes the client's record here. */
int rdma_progress(struct rdma_conn *r, bool want_recv, int64_t deadline, struct ferry_error *err) {
    uint64_t rx0 = r->rx_seen;
#define DONE(n) ((n) > 0 && (!want_recv || r->rx_seen != rx0))
    int n = reap(r, err);
    if (n < 0) return n;
    if (DONE(n)) return reaped(r, err);
    int64_t t0 = now_us(), t = t0;
    int64_t spin_end = t0 + (want_recv ? spin_budget(r) : (r->spin_cap_us > 0 ? SPIN_FLOOR_US : 0));
    while (t < spin_end) {
        for (int i = 0; i < 64; i++) {
            n = reap(r, err);
            if (n < 0) return n;
            if (DONE(n)) break;
        }
        /* on a busy host the peer, or the kernel thread that moves our
         * packets (Soft-RoCE), may need this core: let them have it */
        if (!DONE(n)) sched_yield();
        t = now_us();
        if (DONE(n)) {
            r->base.stats.spin_us += (uint64_t)(t - t0);
            if (want_recv) learn_wait(r, t - t0);
            return reaped(r, err);
        }
    }
    r->base.stats.spin_us += (uint64_t)(t - t0);
    bool sol = want_recv && (r->features & REC_FEAT_SOLICITED);
    for (;;) {
        int e = ibv_req_notify_cq(r->cq, sol);
        if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_req_notify_cq: %s", r->base.name, strerror(e));
        n = reap(r, err);
        if (n < 0) return n;
        if (DONE(n)) {
            if (want_recv) learn_wait(r, now_us() - t0);
            return reaped(r, err);
        }
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - ferry_transport_now_ms();
            if (left <= 0) return ferry_fail(err, FERRY_ERR_TIMEOUT, "%s: timed out", r->base.name);
            timeout = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd p[2] = { { .fd = r->ch->fd, .events = POLLIN },
                               { .fd = r->base.fd, .events = POLLIN | POLLRDHUP } };
        r->base.stats.waits++;
        r->base.stats.cq_sleeps++;
        r->base.stats.syscalls++;
        int pr = poll(p, 2, timeout);
        if (pr < 0 && errno != EINTR)
            return ferry_fail(err, FERRY_ERR_IO, "%s: poll: %s", r->base.name, strerror(errno));
        if (pr <= 0) continue;
        if (p[1].revents) {
            char b;
            if (r->state == ST_PENDING && recv(r->base.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1)
                return rdma_server_record(r, err);
            int rc = check_liveness(r, err);
            if (rc) {
                n = reap(r, err); /* what completed before the peer left still counts */
                if (n > 0) return FERRY_OK;
                return rc;
            }
        }
        if (p[0].revents & POLLIN) {
            struct ibv_cq *cq;
            void *ctx;
            if (ibv_get_cq_event(r->ch, &cq, &ctx) == 0) {
                r->base.stats.cq_wakeups++;
                if (++r->unacked_events >= 64) {
                    ibv_ack_cq_events(r->cq, r->unacked_events);
                    r->unacked_events = 0;
                }
            }
        }
    }
#undef DONE
}

/* At close: lets queued sends leave, briefly. */
void rdma_drain(struct rdma_conn *r) {
    struct ferry_error e;
    int64_t deadline = ferry_transport_now_ms() + DRAIN_MS;
    while (r->sq_inflight > 0 && rdma_progress(r, false, deadline, &e) == FERRY_OK) {}
}

/* ---- sending -------------------------------------------------------------------------- */

static int post_wr(struct rdma_conn *r, struct ibv_send_wr *wr, struct ferry_error *err) {
    wr->send_flags |= IBV_SEND_SIGNALED;
    if ((r->features & REC_FEAT_SOLICITED) &&
        (wr->opcode == IBV_WR_SEND_WITH_IMM || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM))
        wr->send_flags |= IBV_SEND_SOLICITED; /* wakes a peer that sleeps for messages only */
    struct ibv_send_wr *bad = NULL;
    int e = ibv_post_send(r->qp, wr, &bad);
    if (e) return broken(r, FERRY_ERR_IO, err, strerror(e));
    r->sq_inflight++;
    if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
        r->base.stats.writes_posted++;
    else
        r->base.stats.sends_posted++;
    if (wr->opcode == IBV_WR_SEND_WITH_IMM || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) r->tx_credits--;
    r->base.stats.syscalls++; /* a doorbell, counted like a send call */
    return FERRY_OK;
}

/* Room for one more work request: a free send-queue entry and, for a
 * message the peer must receive (ferry mode), credits: one is always kept
 * back so a credit message can be sent whatever happens. */
static int wait_room(struct rdma_conn *r, uint32_t credits, int64_t deadline, struct ferry_error *err) {
    bool counted = false;
    while (r->sq_inflight >= SQ_DEPTH || (r->state == ST_FERRY && r->tx_credits < credits)) {
        if (r->state == ST_FERRY && r->tx_credits < credits && !counted) {
            r->base.stats.credit_waits++;
            counted = true;
        }
        int rc = rdma_progress(r, r->sq_inflight < SQ_DEPTH, deadline, err); /* credits come with receives */
        if (rc) return rc;
    }
    return FERRY_OK;
}

/* One SEND of v[0..n) (len bytes, at most one chunk): inline from the
 * caller's memory when small enough, else copied into a send buffer. In
 * ferry mode it carries kind and the credits owed. */
static int post_bytes(struct rdma_conn *r, const struct iovec *v, int n, size_t len, uint8_t kind, int64_t deadline,
                      struct ferry_error *err) {
    bool ferry = r->state == ST_FERRY;
    bool inl = len <= r->max_inline && n <= MAX_SGE;
    unsigned slot = NO_SLOT;
    int rc;
    if (!inl) { /* a send buffer first: waiting for one may not eat into credits */
        slot = r->tx_next;
        while (r->tx_busy[slot])
            if ((rc = rdma_progress(r, false, deadline, err))) return rc;
    }
    if ((rc = wait_room(r, ferry ? (kind == K_CREDIT ? 1 : 2) : 0, deadline, err))) return rc;
    struct ibv_sge sge[MAX_SGE];
    struct ibv_send_wr wr = { .wr_id = SEND_TAG | slot, .sg_list = sge };
    if (inl) {
        for (int i = 0; i < n; i++) sge[i] = (struct ibv_sge){ (uintptr_t)v[i].iov_base, (uint32_t)v[i].iov_len, 0 };
        wr.num_sge = n;
        wr.send_flags = IBV_SEND_INLINE;
    } else {
        uint8_t *dst = r->tx_buf + (size_t)slot * RDMA_CHUNK;
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            memcpy(dst + off, v[i].iov_base, v[i].iov_len);
            off += v[i].iov_len;
        }
        r->base.stats.copies += len;
        r->tx_busy[slot] = true;
        r->tx_next = (slot + 1) % TX_SLOTS;
        sge[0] = (struct ibv_sge){ (uintptr_t)dst, (uint32_t)len, r->tx_mr->lkey };
        wr.num_sge = 1;
    }
    if (ferry) {
        wr.opcode = IBV_WR_SEND_WITH_IMM;
        wr.imm_data = htonl(IMM(kind, take_credits(r)));
    } else {
        wr.opcode = IBV_WR_SEND;
    }
    return post_wr(r, &wr, err);
}

/* Sends the bytes of v[0..n) as a stream of SENDs of at most one chunk
 * (ggml: 256 KiB; ferry: also what the peer's buffers take). */
static int send_stream(struct rdma_conn *r, const struct iovec *v, int n, int64_t deadline, struct ferry_error *err) {
    int i = 0;
    size_t off = 0;
    for (;;) {
        struct iovec part[FERRY_CONN_MAX_IOV];
        int np = 0;
        size_t len = 0;
        while (i < n && len < r->send_chunk) {
            size_t k = v[i].iov_len - off;
            if (k > r->send_chunk - len) k = r->send_chunk - len;
            if (k) part[np++] = (struct iovec){ (uint8_t *)v[i].iov_base + off, k };
            len += k;
            off += k;
            if (off == v[i].iov_len) i++, off = 0;
        }
        if (len == 0) return FERRY_OK;
        int rc = post_bytes(r, part, np, len, K_DATA, deadline, err);
        if (rc) return rc;
    }
}

static int send_ctrl(struct rdma_conn *r, uint8_t kind, const void *p, size_t len, int64_t deadline,
                     struct ferry_error *err) {
    struct iovec v = { (void *)p, len };
    return post_bytes(r, &v, len ? 1 : 0, len, kind, deadline, err);
}

#define NO_IMM 0xff /* write_range: no immediate on the last WRITE either */

/* RDMA WRITEs of src[0..len) (registered, lkey) to the peer's raddr, the
 * last one with an immediate of kind (unless NO_IMM) so the peer learns
 * it is there. */
static int write_range(struct rdma_conn *r, const uint8_t *src, uint64_t len, uint32_t lkey, uint64_t raddr,
                       uint32_t rkey, uint8_t kind, int64_t deadline, struct ferry_error *err) {
    uint64_t step = r->max_msg < MAX_WRITE ? r->max_msg : MAX_WRITE;
    uint64_t off = 0;
    do {
        uint64_t k = len - off < step ? len - off : step;
        bool last = off + k == len && kind != NO_IMM;
        int rc = wait_room(r, last ? 2 : 0, deadline, err);
        if (rc) return rc;
        struct ibv_sge sge = { (uintptr_t)(src + off), (uint32_t)k, lkey };
        struct ibv_send_wr wr = { .wr_id = SEND_TAG | NO_SLOT, .sg_list = &sge, .num_sge = 1,
                                  .opcode = last ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE };
        wr.wr.rdma.remote_addr = raddr + off;
        wr.wr.rdma.rkey = rkey;
        if (last) wr.imm_data = htonl(IMM(kind, take_credits(r)));
        if ((rc = post_wr(r, &wr, err))) return rc;
        off += k;
    } while (off < len);
    r->base.stats.write_bytes += len;
    return FERRY_OK;
}

/* Zero-copy work reads the caller's memory until it completes: wait for
 * the send queue to empty before handing the memory back. */
static int wait_sent(struct rdma_conn *r, int64_t deadline, struct ferry_error *err) {
    while (r->sq_inflight > 0) {
        int rc = rdma_progress(r, false, deadline, err);
        if (rc) return rc;
    }
    return FERRY_OK;
}

/* A large payload segment: offered by RTS; the receiver answers with where
 * to WRITE it (all or part; the rest is offered again) or with nothing, and
 * then it goes as SENDs. */
static int send_by_write(struct rdma_conn *r, const uint8_t *p, size_t n, int64_t deadline, struct ferry_error *err) {
    struct rdma_region *g = find_region(r, p, n);
    if (g == NULL) {
        struct ferry_error e;
        g = add_region(r, (void *)p, n, 0, true, &e); /* a WRITE only reads it */
        if (g == NULL) {
            ferry_log_debug("%s: %zu bytes by SEND: %s", r->base.peer, n, e.msg);
            struct iovec v = { (void *)p, n };
            return send_stream(r, &v, 1, deadline, err);
        }
    }
    int rc = FERRY_OK;
    size_t off = 0;
    while (off < n && rc == FERRY_OK) {
        uint8_t m[8];
        ferry_put_le64(m, n - off);
        r->rts_outstanding = true;
        r->cts.valid = false;
        if ((rc = send_ctrl(r, K_RTS, m, sizeof m, deadline, err))) break;
        while (!r->cts.valid && rc == FERRY_OK) rc = rdma_progress(r, true, deadline, err);
        if (rc) break;
        struct rdma_remote grant = r->cts;
        r->cts.valid = false;
        if (grant.len == 0) { /* no registered memory there: SENDs */
            struct iovec v = { (void *)(p + off), n - off };
            rc = send_stream(r, &v, 1, deadline, err);
            break;
        }
        if (grant.len > n - off) {
            rc = broken(r, FERRY_ERR_PROTOCOL, err, "CTS grants more than was offered");
            break;
        }
        rc = write_range(r, p + off, grant.len, g->mr->lkey, grant.addr, grant.rkey, K_WDONE, deadline, err);
        off += grant.len;
    }
    if (rc == FERRY_OK) rc = wait_sent(r, deadline, err);
    if (g->temp && !r->broken) drop_region(r, g);
    return rc;
}

/* The reply to a request that named a sink: header as a SEND, payload
 * written straight into the sink, when it fits exactly and lies in
 * registered memory here. false: not possible, send it the usual way. */
static bool sink_fits(struct rdma_conn *r, const struct iovec *v, int n, const struct rdma_remote *s) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        total += v[i].iov_len;
        if (v[i].iov_len && find_region(r, v[i].iov_base, v[i].iov_len) == NULL) return false;
    }
    return total == s->len;
}

static int ferry_send(struct rdma_conn *r, const struct iovec *iov, int n, int hdr_parts, int64_t deadline,
                      struct ferry_error *err) {
    int rc;
    if (r->sink.active && r->sink.sent) clear_sink(r); /* an earlier reply did not use it */
    if (r->sink.active) {
        uint8_t m[REMOTE_SIZE];
        encode_remote(m, (uintptr_t)r->sink.p, r->sink.len, r->sink.reg->mr->rkey);
        if ((rc = send_ctrl(r, K_SINK, m, sizeof m, deadline, err))) return rc;
        r->sink.sent = true;
    }
    if (r->peer_sink.valid) {
        struct rdma_remote s = r->peer_sink;
        r->peer_sink.valid = false; /* good for this reply only */
        if (sink_fits(r, iov + hdr_parts, n - hdr_parts, &s)) {
            if ((rc = send_stream(r, iov, hdr_parts, deadline, err))) return rc;
            int last = n - 1; /* sink_fits: the payload is not empty */
            while (iov[last].iov_len == 0) last--;
            uint64_t at = s.addr;
            for (int i = hdr_parts; i <= last; i++) {
                if (iov[i].iov_len == 0) continue;
                struct rdma_region *g = find_region(r, iov[i].iov_base, iov[i].iov_len);
                /* only the last WRITE says "done" */
                rc = write_range(r, iov[i].iov_base, iov[i].iov_len, g->mr->lkey, at, s.rkey,
                                 i == last ? K_SINKDONE : NO_IMM, deadline, err);
                if (rc) return rc;
                at += iov[i].iov_len;
            }
            return wait_sent(r, deadline, err);
        }
    }
    /* the stream; payload segments of write_min bytes or more by WRITE */
    int start = 0;
    for (int i = hdr_parts; i < n; i++) {
        if (iov[i].iov_len < r->write_min) continue;
        if ((rc = send_stream(r, iov + start, i - start, deadline, err))) return rc;
        if ((rc = send_by_write(r, iov[i].iov_base, iov[i].iov_len, deadline, err))) return rc;
        start = i + 1;
    }
    return send_stream(r, iov + start, n - start, deadline, err);
}

int rdma_send(struct ferry_conn *c, const struct iovec *iov, int n, int hdr_parts, int64_t deadline,
              struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (r->state == ST_TCP) {
        uint64_t s0 = r->tcp->stats.syscalls;
        int rc = r->tcp->ops->send(r->tcp, iov, n, hdr_parts, deadline, err);
        c->stats.syscalls += r->tcp->stats.syscalls - s0;
        return rc;
    }
    if (r->state == ST_PENDING) r->state = ST_GGML; /* the server speaks first: the client cannot be ferry */
    if (n > 0 && iov[0].iov_len > 0) r->wait_key = *(const uint8_t *)iov[0].iov_base; /* a client's command */
    int rc;
    if (r->state == ST_FERRY) {
        rc = ferry_send(r, iov, n, hdr_parts, deadline, err);
    } else {
        rc = FERRY_OK;
        for (int i = 0; i < hdr_parts && rc == FERRY_OK; i++) /* each header part its own SEND */
            rc = send_stream(r, &iov[i], 1, deadline, err);
        if (rc == FERRY_OK) rc = send_stream(r, iov + hdr_parts, n - hdr_parts, deadline, err);
    }
    if (rc == FERRY_ERR_TIMEOUT)
        return ferry_fail(err, rc, "%s: send not complete within %d ms (peer not receiving)", c->name,
                          c->timeouts.frame_ms);
    return rc;
}

int rdma_query_stats(struct rdma_conn *r, struct ferry_conn_stats *out, int64_t deadline, struct ferry_error *err) {
    r->stats_waiting = true;
    int rc = send_ctrl(r, K_STATS, NULL, 0, deadline, err);
    while (rc == FERRY_OK && r->stats_waiting) rc = rdma_progress(r, true, deadline, err);
    r->stats_waiting = false;
    if (rc == FERRY_OK) *out = r->peer_stats;
    return rc;
}

/* ---- receiving ------------------------------------------------------------------------ */

/* The head of the stream is an RTS: grant the peer a WRITE into buf when
 * buf lies in registered memory (*placed = bytes written), else ask for
 * SENDs (*placed = 0). */
static int accept_write(struct rdma_conn *r, void *buf, size_t len, size_t *placed, int64_t deadline,
                        struct ferry_error *err) {
    uint64_t n = r->rxq[r->rx_head].len;
    size_t m = n < len ? (size_t)n : len;
    struct rdma_region *g = find_region(r, buf, m);
    rxq_pop(r);
    uint8_t msg[REMOTE_SIZE];
    encode_remote(msg, g ? (uintptr_t)buf : 0, g ? m : 0, g ? g->mr->rkey : 0);
    r->wdone = false;
    r->granted = g != NULL;
    int rc = send_ctrl(r, K_CTS, msg, sizeof msg, deadline, err);
    *placed = 0;
    if (rc || g == NULL) return rc;
    while (!r->wdone)
        if ((rc = rdma_progress(r, true, deadline, err))) return rc;
    r->wdone = false;
    *placed = m;
    return FERRY_OK;
}

int rdma_recv_some(struct ferry_conn *c, void *buf, size_t len, size_t *got, int64_t deadline,
                   struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    uint8_t *out = buf;
    size_t done = 0;
    int rc;
    while (done < len) {
        if (r->state == ST_TCP) {
            if (done) break;
            uint64_t s0 = r->tcp->stats.syscalls, w0 = r->tcp->stats.waits;
            rc = r->tcp->ops->recv_some(r->tcp, buf, len, got, deadline, err);
            c->stats.syscalls += r->tcp->stats.syscalls - s0;
            c->stats.waits += r->tcp->stats.waits - w0;
            return rc;
        }
        if (r->rx_count == 0) {
            if (done) break;
            if ((rc = rdma_progress(r, true, deadline, err))) return rc;
            continue;
        }
        struct rx_entry *e = &r->rxq[r->rx_head];
        if (e->kind == K_RTS) {
            if (done) break; /* hand out what came before it first */
            size_t placed = 0;
            if ((rc = accept_write(r, out, len, &placed, deadline, err))) return rc;
            done = placed;
            if (placed) break;
            continue;
        }
        /* a sink's bytes are already where the caller will read them: do
         * not let a header's read-ahead take (and copy) them */
        if (e->kind == K_SINKDONE && done) break;
        size_t k = e->len - r->rx_pos < len - done ? (size_t)(e->len - r->rx_pos) : len - done;
        const uint8_t *src = e->kind == K_SINKDONE ? r->sink.p + r->rx_pos
                                                   : r->rx_buf + (size_t)e->slot * RDMA_CHUNK + r->rx_pos;
        if (src != out + done) { /* a sink read into the memory it names needs no copy */
            memcpy(out + done, src, k);
            r->base.stats.copies += k;
        }
        done += k;
        r->rx_pos += k;
        if (r->rx_pos == e->len) { /* used up: its buffer takes the next message */
            uint8_t kind = e->kind;
            unsigned slot = e->slot;
            rxq_pop(r);
            if (kind == K_SINKDONE) clear_sink(r);
            else if ((rc = repost(r, slot, err))) return rc;
        }
    }
    if ((rc = return_credits(r, err))) return rc;
    *got = done;
    return FERRY_OK;
}

#endif /* FERRY_HAVE_RDMA */
