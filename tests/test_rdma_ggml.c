/* ferry's RDMA transport against ggml's, with this test playing the ggml peer.
 *
 * ggml's RDMA transport (ggml-rpc transport.cpp, protocol v5) is reproduced
 * here with a few verbs calls of the test's own, not src/transport/rdma.c,
 * so that what is checked is the wire and not ferry against itself:
 *   - HELLO over TCP with caps {qpn u32le, psn u32le, GID}; the GID is the
 *     IPv4-mapped one (::ffff:a.b.c.d) of the TCP socket's local address,
 *     port 1, RoCE v2 preferred;
 *   - one RC queue pair; RTR (hop limit 1, min_rnr_timer 1) and RTS
 *     (timeout 14, retry_cnt 7, rnr_retry 7) once the HELLO response is out
 *     (server) or in (client); TCP then stays open and silent;
 *   - plain IBV_WR_SEND only, one in flight, 24 receive buffers of 256 KiB.
 *     A request is [cmd: one 1-byte SEND][length: one 8-byte SEND]
 *     [payload: SENDs of at most 256 KiB], a response [length][payload]:
 *     ggml's receiver copies each SEND whole into the variable it is
 *     reading, so these boundaries are part of the protocol.
 *
 * Part 1: a ggml client against ferry's server (auto mode, so the server
 * may set flag bits in HELLO byte 3, which a ggml client ignores).
 * Part 2: a ggml server (byte 3 = 0) on a thread, against ferry's client.
 * Both check that ferry sends ggml's framing and nothing else: every SEND
 * 1 byte to 256 KiB, each command byte and each length its own SEND, no
 * immediate data, only SEND completions, nothing more on TCP after HELLO.
 * Part 3: ferry's own framing between ferry peers (docs/protocol-extensions.md),
 * played by a hostile client with the same verbs code against ferry's
 * server: one correct exchange first, then one fresh connection per
 * violation (no immediate, unknown kind, excess credits, CTS without RTS,
 * malformed RTS, wrapping sink, stray WDONE, a STATS question it did not
 * negotiate, bad records, a client that
 * stops mid-frame). Each must be dropped within 10 s, counted, and leave
 * the server serving a ferry client as before.
 *
 * Needs FERRY_TEST_RDMA=1 and the Soft-RoCE guest of scripts/rdma-test.sh
 * (rxe0 on 198.18.0.1, rxe1 on 198.18.0.2); otherwise it prints "skipped"
 * and exits 77. Clients run on $FERRY_RDMA_DEV (default rxe0), servers on
 * rxe1, so the traffic crosses the veth pair. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#ifndef FERRY_HAVE_RDMA

int main(void) {
    printf("skipped: this build has no RDMA transport\n");
    return 77;
}

#else

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "proto/rpc.h"

#define MIB (1024ull * 1024)
#define CHUNK (256u * 1024) /* ggml's RDMA_CHUNK: largest SEND, each receive buffer */
#define RX_DEPTH 24         /* ggml's receive ring */
#define CLIENT_IP "198.18.0.1"
#define SERVER_IP "198.18.0.2"
#define SERVER_DEV "rxe1"
#define WAIT_MS 20000  /* any one wait; the guest's emulated CPU is slow */
#define TIME_BOUND_S 120

/* ggml's numbers, spelled out so the fake peers do not lean on ferry's. */
enum {
    CMD_ALLOC_BUFFER = 0,
    CMD_GET_ALIGNMENT = 1,
    CMD_GET_MAX_SIZE = 2,
    CMD_BUFFER_GET_BASE = 3,
    CMD_FREE_BUFFER = 4,
    CMD_SET_TENSOR = 6,
    CMD_GET_TENSOR = 8,
    CMD_GET_DEVICE_MEMORY = 11,
    CMD_HELLO = 14,
    CMD_DEVICE_COUNT = 15,
};
#define GGML_TYPE_F32 0
#define GGML_TYPE_I8 24
#define TENSOR_SIZE 296
#define CAPS_SIZE 24

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One printed line per check, pass or fail, counted by testutil. */
__attribute__((format(printf, 3, 4))) static bool check_line(bool ok, int line, const char *fmt, ...) {
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (ok) {
        test_passed++;
        printf("  ok    %s\n", m);
    } else {
        test_failed++;
        printf("  FAIL  %s (line %d)\n", m, line);
    }
    fflush(stdout);
    return ok;
}
#define EXPECT(cond, ...) check_line((cond), __LINE__, __VA_ARGS__)

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = test_rand_u64(&seed);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
}

/* ---- TCP: HELLO only, then liveness ------------------------------------------------- */

static bool tcp_write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k, n -= (size_t)k;
    }
    return true;
}

static bool tcp_read_all(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    double deadline = now_s() + WAIT_MS / 1e3;
    while (n > 0) {
        struct pollfd pf = { fd, POLLIN, 0 };
        int left = (int)((deadline - now_s()) * 1e3);
        if (left <= 0 || poll(&pf, 1, left) <= 0) return false;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k, n -= (size_t)k;
    }
    return true;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static bool sockaddr_of(const char *ip, int port, struct sockaddr_in *a) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, ip, &a->sin_addr) == 1;
}

/* A client socket bound to src first, so that its local address (and with
 * it the GID ggml's probe looks for) is src's even though the kernel routes
 * a connection between two local addresses over lo. */
static int tcp_connect_from(const char *src, const char *dst, int port) {
    struct sockaddr_in sa, da;
    if (!sockaddr_of(src, 0, &sa) || !sockaddr_of(dst, port, &da)) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || connect(fd, (struct sockaddr *)&da, sizeof da) != 0) {
        close(fd);
        return -1;
    }
    nodelay(fd);
    return fd;
}

/* ggml's probe target: the IPv4-mapped GID of the socket's local address. */
static bool local_gid(int fd, uint8_t gid[16], char *ip, size_t cap) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0 || a.sin_family != AF_INET) return false;
    memset(gid, 0, 16);
    gid[10] = gid[11] = 0xff;
    memcpy(gid + 12, &a.sin_addr.s_addr, 4);
    inet_ntop(AF_INET, &a.sin_addr, ip, (socklen_t)cap);
    return true;
}

/* ---- a ggml RDMA endpoint ------------------------------------------------------------ */

/* What one side saw arrive over RDMA. */
struct wire {
    uint64_t sends, bytes, headers;
    uint32_t largest;
    uint64_t bad_size, bad_framing, with_imm, bad_opcode, errors;
};

struct gpeer {
    const char *who; /* for messages */
    int fd;          /* the TCP connection: HELLO, then liveness */
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_cq *scq, *rcq;
    struct ibv_qp *qp;
    struct ibv_mr *tx_mr, *rx_mr;
    uint8_t *tx, *rx;
    char dev[64];
    int gid_index;
    bool roce_v2;
    enum ibv_mtu mtu;
    uint32_t psn;
    uint8_t gid[16];
    uint64_t tcp_bytes; /* arrived on TCP after the switch: must stay 0 */
    bool gone;          /* the peer closed TCP */
    struct wire w;
    int n_bad;
    char first_bad[256];
};

__attribute__((format(printf, 2, 3))) static void bad(struct gpeer *p, const char *fmt, ...) {
    char m[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    fprintf(stderr, "  [%s] %s\n", p->who, m);
    if (p->n_bad++ == 0) snprintf(p->first_bad, sizeof p->first_bad, "%s", m);
}

/* The first device (named dev, or any) whose port 1 has target among its
 * GIDs; RoCE v2 entries first, then RoCE v1, as ggml chooses. */
static struct ibv_context *open_by_gid(const char *dev, const uint8_t target[16], int *index, bool *v2,
                                       char *name, size_t cap) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    struct ibv_context *found = NULL;
    for (int d = 0; list && d < n && !found; d++) {
        if (dev && strcmp(ibv_get_device_name(list[d]), dev) != 0) continue;
        struct ibv_context *ctx = ibv_open_device(list[d]);
        struct ibv_port_attr pa;
        if (!ctx) continue;
        int v2i = -1, v1i = -1;
        if (ibv_query_port(ctx, 1, &pa) == 0)
            for (int i = 0; i < pa.gid_tbl_len; i++) {
                struct ibv_gid_entry e;
                if (ibv_query_gid_ex(ctx, 1, (uint32_t)i, &e, 0) != 0 || memcmp(e.gid.raw, target, 16) != 0)
                    continue;
                if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && v2i < 0) v2i = i;
                if (e.gid_type == IBV_GID_TYPE_ROCE_V1 && v1i < 0) v1i = i;
            }
        if (v2i < 0 && v1i < 0) {
            ibv_close_device(ctx);
            continue;
        }
        *index = v2i >= 0 ? v2i : v1i;
        *v2 = v2i >= 0;
        snprintf(name, cap, "%s", ibv_get_device_name(list[d]));
        found = ctx;
    }
    if (list) ibv_free_device_list(list);
    return found;
}

static bool gp_post_recv(struct gpeer *p, uint64_t slot) {
    struct ibv_sge sge = { (uintptr_t)(p->rx + slot * CHUNK), CHUNK, p->rx_mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *badwr;
    return ibv_post_recv(p->qp, &wr, &badwr) == 0;
}

static void gp_close(struct gpeer *p) {
    if (p->qp) ibv_destroy_qp(p->qp);
    if (p->tx_mr) ibv_dereg_mr(p->tx_mr);
    if (p->rx_mr) ibv_dereg_mr(p->rx_mr);
    if (p->scq) ibv_destroy_cq(p->scq);
    if (p->rcq) ibv_destroy_cq(p->rcq);
    if (p->pd) ibv_dealloc_pd(p->pd);
    if (p->ctx) ibv_close_device(p->ctx);
    free(p->tx);
    free(p->rx);
    p->qp = NULL, p->tx_mr = p->rx_mr = NULL, p->scq = p->rcq = NULL, p->pd = NULL, p->ctx = NULL;
    p->tx = p->rx = NULL;
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
}

/* ggml's probe: device, CQs (16 and 28 entries), RC QP, a 256 KiB send
 * buffer, 24 receive buffers posted in INIT, a random 24-bit PSN. The
 * receive MR grants no remote access: ggml never hands out an rkey, so an
 * RDMA WRITE from the peer is an error it must never attempt. */
static bool gp_open(struct gpeer *p, const char *dev, int fd) {
    uint8_t target[16];
    char ip[INET_ADDRSTRLEN];
    p->fd = fd;
    if (!local_gid(fd, target, ip, sizeof ip)) return bad(p, "getsockname failed"), false;
    p->ctx = open_by_gid(dev, target, &p->gid_index, &p->roce_v2, p->dev, sizeof p->dev);
    if (!p->ctx) return bad(p, "no device %s with the GID ::ffff:%s on port 1", dev ? dev : "(any)", ip), false;
    memcpy(p->gid, target, 16);
    struct ibv_port_attr pa;
    if (ibv_query_port(p->ctx, 1, &pa) != 0) return bad(p, "ibv_query_port failed"), false;
    p->mtu = pa.active_mtu;
    p->pd = ibv_alloc_pd(p->ctx);
    p->scq = p->pd ? ibv_create_cq(p->ctx, 16, NULL, NULL, 0) : NULL;
    p->rcq = p->scq ? ibv_create_cq(p->ctx, RX_DEPTH + 4, NULL, NULL, 0) : NULL;
    if (!p->rcq) return bad(p, "PD/CQ creation failed: %s", strerror(errno)), false;
    struct ibv_qp_init_attr qi = {
        .send_cq = p->scq,
        .recv_cq = p->rcq,
        .cap = { .max_send_wr = 4, .max_recv_wr = RX_DEPTH + 4, .max_send_sge = 1, .max_recv_sge = 1 },
        .qp_type = IBV_QPT_RC,
    };
    p->qp = ibv_create_qp(p->pd, &qi);
    p->tx = aligned_alloc(4096, CHUNK);
    p->rx = aligned_alloc(4096, (size_t)RX_DEPTH * CHUNK);
    if (!p->qp || !p->tx || !p->rx) return bad(p, "QP or buffers: %s", strerror(errno)), false;
    p->tx_mr = ibv_reg_mr(p->pd, p->tx, CHUNK, IBV_ACCESS_LOCAL_WRITE);
    p->rx_mr = ibv_reg_mr(p->pd, p->rx, (size_t)RX_DEPTH * CHUNK, IBV_ACCESS_LOCAL_WRITE);
    if (!p->tx_mr || !p->rx_mr) return bad(p, "ibv_reg_mr: %s", strerror(errno)), false;
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = 1,
        .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE,
    };
    if (ibv_modify_qp(p->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0)
        return bad(p, "QP to INIT failed"), false;
    for (uint64_t i = 0; i < RX_DEPTH; i++)
        if (!gp_post_recv(p, i)) return bad(p, "ibv_post_recv failed"), false;
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r = (uint32_t)(now_s() * 1e6);
    p->psn = r & 0xffffff;
    return true;
}

static void gp_caps(const struct gpeer *p, uint8_t out[CAPS_SIZE]) {
    put_u32(out, p->qp->qp_num);
    put_u32(out + 4, p->psn);
    memcpy(out + 8, p->gid, 16);
}

/* RTR with ggml's attributes, toward the peer's caps. */
static bool gp_rtr(struct gpeer *p, const uint8_t caps[CAPS_SIZE]) {
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = p->mtu,
        .dest_qp_num = get_u32(caps),
        .rq_psn = get_u32(caps + 4),
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = 1,
        .ah_attr = { .is_global = 1, .port_num = 1, .dlid = 0 },
    };
    memcpy(a.ah_attr.grh.dgid.raw, caps + 8, 16);
    a.ah_attr.grh.hop_limit = 1;
    a.ah_attr.grh.sgid_index = (uint8_t)p->gid_index;
    if (ibv_modify_qp(p->qp, &a,
                      IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0)
        return bad(p, "QP to RTR failed: %s", strerror(errno)), false;
    return true;
}

static bool gp_rts(struct gpeer *p) {
    struct ibv_qp_attr s = {
        .qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .sq_psn = p->psn, .max_rd_atomic = 1,
    };
    if (ibv_modify_qp(p->qp, &s,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC) != 0)
        return bad(p, "QP to RTS failed: %s", strerror(errno)), false;
    return true;
}

/* RTR then RTS: what a ggml peer does once the HELLO exchange is over. */
static bool gp_connect(struct gpeer *p, const uint8_t caps[CAPS_SIZE]) {
    return gp_rtr(p, caps) && gp_rts(p);
}

/* The TCP socket after the switch: any byte on it is a protocol error (ggml
 * never reads it again); end of stream means the peer is gone. */
static void gp_watch_tcp(struct gpeer *p) {
    struct pollfd pf = { p->fd, POLLIN | POLLRDHUP, 0 };
    if (p->gone || poll(&pf, 1, 0) <= 0) return;
    uint8_t junk[512];
    ssize_t k = recv(p->fd, junk, sizeof junk, MSG_DONTWAIT);
    if (k > 0) {
        if (p->tcp_bytes == 0) bad(p, "%zd byte(s) arrived on TCP after the switch to RDMA (first 0x%02x)", k, junk[0]);
        p->tcp_bytes += (uint64_t)k;
    } else if (k == 0 || (pf.revents & (POLLHUP | POLLERR | POLLRDHUP))) {
        p->gone = true;
    }
}

/* One completion from cq within timeout_ms (polled as ggml does, yielding
 * so the emulated guest's rxe work can run). 1: *wc holds it; 0: the peer
 * closed TCP first; -1: a failed completion or the time ran out. */
static int gp_poll(struct gpeer *p, struct ibv_cq *cq, struct ibv_wc *wc, int timeout_ms) {
    double deadline = now_s() + timeout_ms / 1e3;
    for (unsigned i = 0;; i++) {
        int n = ibv_poll_cq(cq, 1, wc);
        if (n < 0) return bad(p, "ibv_poll_cq failed"), -1;
        if (n == 1) {
            if (wc->status == IBV_WC_SUCCESS) return 1;
            p->w.errors++;
            if (cq == p->rcq && wc->status == IBV_WC_LOC_LEN_ERR) p->w.bad_size++;
            bad(p, "%s completion failed: %s%s", cq == p->rcq ? "receive" : "send", ibv_wc_status_str(wc->status),
                cq == p->rcq && wc->status == IBV_WC_LOC_LEN_ERR ? " (a SEND larger than the 256 KiB receive buffer)"
                                                                : "");
            return -1;
        }
        if ((i & 63) == 0) {
            bool was_gone = p->gone;
            gp_watch_tcp(p);
            if (p->gone && !was_gone) continue; /* one more look at the CQ: SENDs acked before the close */
            if (p->gone) return 0;
            if (now_s() > deadline) return bad(p, "no completion within %d ms", timeout_ms), -1;
        }
        sched_yield();
    }
}

/* One SEND of len bytes (1..CHUNK), then wait for its completion: ggml's
 * stop-and-wait, one work request in flight. */
static bool gp_send_msg(struct gpeer *p, const void *data, uint32_t len) {
    memcpy(p->tx, data, len);
    struct ibv_sge sge = { (uintptr_t)p->tx, len, p->tx_mr->lkey };
    struct ibv_send_wr wr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
                              .send_flags = IBV_SEND_SIGNALED },
                       *badwr;
    if (ibv_post_send(p->qp, &wr, &badwr) != 0) return bad(p, "ibv_post_send failed"), false;
    struct ibv_wc wc;
    int r = gp_poll(p, p->scq, &wc, WAIT_MS);
    if (r == 0) bad(p, "the peer closed while a SEND was under way");
    return r == 1;
}

/* ggml's send_data: len bytes cut into SENDs of at most 256 KiB; none for 0. */
static bool gp_send_data(struct gpeer *p, const void *data, uint64_t len) {
    const uint8_t *s = data;
    for (uint64_t off = 0; off < len; off += CHUNK)
        if (!gp_send_msg(p, s + off, (uint32_t)(len - off < CHUNK ? len - off : CHUNK))) return false;
    return true;
}

/* One SEND from the peer: what every SEND must be is checked here; at most
 * cap bytes are copied to dst and the buffer re-posted at once, as ggml
 * does. Returns as gp_poll. */
static int gp_recv_msg(struct gpeer *p, void *dst, uint64_t cap, uint32_t *len) {
    struct ibv_wc wc;
    int r = gp_poll(p, p->rcq, &wc, WAIT_MS);
    if (r != 1) return r;
    struct wire *w = &p->w;
    w->sends++;
    w->bytes += wc.byte_len;
    if (wc.byte_len > w->largest) w->largest = wc.byte_len;
    if (wc.opcode != IBV_WC_RECV) {
        w->bad_opcode++;
        bad(p, "a completion with opcode %d (%s), expected IBV_WC_RECV", (int)wc.opcode,
            wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM ? "RDMA WRITE with immediate" : "?");
    }
    if (wc.wc_flags & IBV_WC_WITH_IMM) {
        w->with_imm++;
        bad(p, "a message with immediate data 0x%08x", ntohl(wc.imm_data));
    }
    if (wc.byte_len == 0 || wc.byte_len > CHUNK) {
        w->bad_size++;
        bad(p, "a SEND of %u bytes (must be 1..%u)", wc.byte_len, CHUNK);
    }
    memcpy(dst, p->rx + wc.wr_id * CHUNK, wc.byte_len < cap ? wc.byte_len : cap);
    if (!gp_post_recv(p, wc.wr_id)) return bad(p, "re-posting a receive failed"), -1;
    *len = wc.byte_len;
    return 1;
}

/* A header part (command byte, length): exactly one SEND of exactly n
 * bytes, since ggml reads each into its own n-byte variable. */
static bool gp_recv_exact(struct gpeer *p, void *dst, uint32_t n, const char *what) {
    uint32_t len = 0;
    int r = gp_recv_msg(p, dst, n, &len);
    if (r != 1) return bad(p, "%s: nothing arrived%s", what, r == 0 ? " (peer closed)" : ""), false;
    p->w.headers++;
    if (len != n) {
        p->w.bad_framing++;
        bad(p, "%s: a SEND of %u bytes, expected its own SEND of exactly %u", what, len, n);
        return false;
    }
    return true;
}

/* A payload: SENDs adding up to exactly n bytes, none running past it. */
static bool gp_recv_payload(struct gpeer *p, uint8_t *dst, uint64_t n, const char *what) {
    for (uint64_t got = 0; got < n;) {
        uint32_t len = 0;
        int r = gp_recv_msg(p, dst + got, n - got, &len);
        if (r != 1)
            return bad(p, "%s: payload stopped at %" PRIu64 " of %" PRIu64 " bytes", what, got, n), false;
        if (len > n - got) {
            p->w.bad_framing++;
            bad(p, "%s: a SEND of %u bytes with only %" PRIu64 " of the payload left", what, len, n - got);
            return false;
        }
        got += len;
    }
    return true;
}

/* Waits ms for any further SEND: after the last response none may come. */
static bool gp_quiet(struct gpeer *p, int ms) {
    double end = now_s() + ms / 1e3;
    while (now_s() < end) {
        struct ibv_wc wc;
        if (ibv_poll_cq(p->rcq, 1, &wc) != 0) {
            bad(p, "an unexpected completion (status %s, %u bytes)", ibv_wc_status_str(wc.status), wc.byte_len);
            return false;
        }
        gp_watch_tcp(p);
        usleep(1000);
    }
    return true;
}

/* The checks every part ends with, on what `p` received from ferry. */
static void expect_wire(struct gpeer *p, const char *from) {
    const struct wire *w = &p->w;
    EXPECT(w->sends > 0 && w->bad_size == 0, "every SEND from %s held 1..%u bytes (%" PRIu64 " SENDs, %" PRIu64
           " bytes, largest %u)", from, CHUNK, w->sends, w->bytes, w->largest);
    EXPECT(w->headers > 0 && w->bad_framing == 0, "%s sent each command byte and length as its own SEND (%" PRIu64
           " header parts)", from, w->headers);
    EXPECT(w->with_imm == 0, "no immediate data from %s (IBV_WC_WITH_IMM never set)", from);
    EXPECT(w->bad_opcode == 0, "every completion was IBV_WC_RECV (no RDMA WRITE with immediate from %s)", from);
    EXPECT(w->errors == 0, "no failed completion on the ggml side");
    EXPECT(p->tcp_bytes == 0, "nothing from %s on TCP after the HELLO exchange (%" PRIu64 " bytes)", from,
           p->tcp_bytes);
    if (p->n_bad) printf("  first problem seen by the %s: %s\n", p->who, p->first_bad);
}

/* A serialized tensor for the fake client: a 1-D, contiguous tensor of
 * `type` at base + offset in buffer `handle`. */
static void make_tensor(uint8_t out[TENSOR_SIZE], uint64_t id, uint32_t type, uint64_t handle, uint64_t addr,
                        uint32_t ne0, const char *name) {
    struct ferry_rpc_tensor t;
    memset(&t, 0, sizeof t);
    uint32_t es = type == GGML_TYPE_F32 ? 4 : 1;
    t.id = id, t.type = type, t.buffer = handle, t.data = addr;
    t.ne[0] = ne0, t.ne[1] = t.ne[2] = t.ne[3] = 1;
    t.nb[0] = es, t.nb[1] = t.nb[2] = t.nb[3] = ne0 * es;
    snprintf(t.name, sizeof t.name, "%s", name);
    ferry_rpc_tensor_encode(&t, out);
}

/* ---- part 1: a ggml client against ferry's server ---------------------------------- */

/* ggml's send_rpc_cmd: [cmd][length][payload], each its own send_data. */
static bool gc_request(struct gpeer *p, uint8_t cmd, const void *payload, uint64_t len) {
    uint8_t l[8];
    put_u64(l, len);
    return gp_send_data(p, &cmd, 1) && gp_send_data(p, l, 8) && gp_send_data(p, payload, len);
}

/* ggml's recv_msg: the length (which must be `want`) then the payload. */
static bool gc_response(struct gpeer *p, void *out, uint64_t want, const char *what) {
    uint8_t l[8];
    if (!gp_recv_exact(p, l, 8, what)) return false;
    uint64_t n = get_u64(l);
    if (n != want) return bad(p, "%s: response length %" PRIu64 ", expected %" PRIu64, what, n, want), false;
    return gp_recv_payload(p, out, n, what);
}

static bool gc_call(struct gpeer *p, uint8_t cmd, const void *req, uint64_t len, void *rsp, uint64_t rsp_len,
                    const char *what) {
    return gc_request(p, cmd, req, len) && gc_response(p, rsp, rsp_len, what);
}

/* HELLO over TCP as ggml's client sends it; fills the server's response. */
static bool gc_hello(struct gpeer *p, uint8_t rsp[28]) {
    uint8_t req[9 + CAPS_SIZE], l[8];
    req[0] = CMD_HELLO;
    put_u64(req + 1, CAPS_SIZE);
    gp_caps(p, req + 9);
    if (!tcp_write_all(p->fd, req, sizeof req) || !tcp_read_all(p->fd, l, 8)) return false;
    if (!EXPECT(get_u64(l) == 28, "HELLO response length %" PRIu64 " (expected 28)", get_u64(l))) return false;
    return tcp_read_all(p->fd, rsp, 28);
}

/* SET_TENSOR then GET_TENSOR of n bytes at offset `at` of the buffer, as
 * one tensor covering them; the bytes must come back unchanged. */
static bool gc_set_get(struct gpeer *p, uint64_t handle, uint64_t base, uint64_t at, uint32_t type, uint64_t n,
                       uint64_t seed) {
    uint32_t ne0 = (uint32_t)(type == GGML_TYPE_F32 ? n / 4 : n);
    uint8_t *req = malloc(304 + n), *got = malloc(n), get[312];
    bool ok = req && got;
    if (ok) {
        make_tensor(req, 0x1000 + seed, type, handle, base + at, ne0, "t");
        put_u64(req + 296, 0);
        fill(req + 304, n, seed);
        memset(got, 0, n);
        ok = EXPECT(gc_request(p, CMD_SET_TENSOR, req, 304 + n), "SET_TENSOR of %" PRIu64 " bytes (%s), no response",
                    n, type == GGML_TYPE_F32 ? "F32" : "I8");
    }
    if (ok) {
        memcpy(get, req, 296);
        put_u64(get + 296, 0);
        put_u64(get + 304, n);
        ok = EXPECT(gc_call(p, CMD_GET_TENSOR, get, sizeof get, got, n, "GET_TENSOR"),
                    "GET_TENSOR of %" PRIu64 " bytes: length as one 8-byte SEND, then the payload", n);
    }
    if (ok) ok = EXPECT(memcmp(got, req + 304, n) == 0, "%" PRIu64 " bytes came back unchanged", n);
    free(req);
    free(got);
    return ok;
}

/* ALLOC_BUFFER ... FREE_BUFFER over the queue pair. */
static void gc_commands(struct gpeer *p) {
    uint8_t req[12], rsp[16];
    put_u32(req, 0);
    put_u64(req + 4, 16 * MIB);
    if (!EXPECT(gc_call(p, CMD_ALLOC_BUFFER, req, 12, rsp, 16, "ALLOC_BUFFER"), "ALLOC_BUFFER 16 MiB answered"))
        return;
    uint64_t handle = get_u64(rsp), size = get_u64(rsp + 8), base = 0;
    if (!EXPECT(handle != 0 && size == 16 * MIB, "a buffer handle 0x%" PRIx64 " of %" PRIu64 " bytes", handle, size))
        return;
    put_u64(req, handle);
    bool ok = gc_call(p, CMD_BUFFER_GET_BASE, req, 8, rsp, 8, "BUFFER_GET_BASE");
    if (ok) base = get_u64(rsp);
    if (!EXPECT(ok && base != 0, "BUFFER_GET_BASE: 0x%" PRIx64, base)) return;
    if (!gc_set_get(p, handle, base, 0, GGML_TYPE_F32, 1024, 1)) return;
    if (!gc_set_get(p, handle, base, 64 * 1024, GGML_TYPE_I8, 5 * MIB + 7, 2)) return;
    put_u32(req, 0);
    if (EXPECT(gc_call(p, CMD_GET_DEVICE_MEMORY, req, 4, rsp, 16, "GET_DEVICE_MEMORY"), "GET_DEVICE_MEMORY answered"))
        EXPECT(get_u64(rsp + 8) > 0 && get_u64(rsp) <= get_u64(rsp + 8),
               "device memory: %" PRIu64 " free of %" PRIu64 " bytes", get_u64(rsp), get_u64(rsp + 8));
    put_u64(req, handle);
    EXPECT(gc_call(p, CMD_FREE_BUFFER, req, 8, rsp, 0, "FREE_BUFFER"),
           "FREE_BUFFER: the empty response is one 8-byte SEND of 0");
    EXPECT(gp_quiet(p, 300), "no SEND after the last response");
}

/* ferry's server in this process, in auto mode on SERVER_DEV (not
 * $FERRY_RDMA_DEV, which names the client's device). */
static bool ferry_server_up(struct test_server *ts) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.host = SERVER_IP;
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 512 * MIB;
    cfg.max_payload = 256 * MIB;
    cfg.transport = FERRY_TRANSPORT_AUTO;
    cfg.rdma_dev = SERVER_DEV;
    return EXPECT(test_server_start(ts, &cfg), "ferry server on %s (auto, device %s)", SERVER_IP, SERVER_DEV);
}

static void part1(void) {
    printf("-- part 1: a ggml client (this test) against ferry's server\n");
    struct test_server ts;
    if (!ferry_server_up(&ts)) return;
    struct ferry_server_stats st0, st;
    ferry_server_get_stats(ts.s, &st0);

    const char *dev = getenv("FERRY_RDMA_DEV");
    if (!dev || !*dev) dev = "rxe0";
    struct gpeer p = { .who = "ggml client", .fd = -1 };
    int fd = tcp_connect_from(CLIENT_IP, SERVER_IP, ts.port);
    bool opened = EXPECT(fd >= 0, "TCP from %s to %s", CLIENT_IP, ts.endpoint) && gp_open(&p, dev, fd);
    if (fd >= 0 && EXPECT(opened, "ggml probe: %s gid[%d]%s, qpn %u, psn 0x%06x", p.dev, p.gid_index,
                          p.roce_v2 ? " RoCEv2" : "", p.qp ? p.qp->qp_num : 0, p.psn)) {
        uint8_t rsp[28];
        bool hello = gc_hello(&p, rsp);
        if (EXPECT(hello, "HELLO over TCP answered") &&
            EXPECT(rsp[0] == 5 && rsp[1] <= 1, "server version %u.%u.%u acceptable to a 5.1 client", rsp[0], rsp[1],
                   rsp[2])) {
            printf("  HELLO byte 3 (flags) = 0x%02x, ignored as ggml's client does\n", rsp[3]);
            uint32_t qpn = get_u32(rsp + 4), psn = get_u32(rsp + 8);
            char gid[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, rsp + 12, gid, sizeof gid);
            if (EXPECT(qpn != 0 && qpn <= 0xffffff && psn <= 0xffffff, "server caps: qpn %u, psn 0x%06x, gid %s", qpn,
                       psn, gid) &&
                EXPECT(gp_connect(&p, rsp + 4), "queue pair to RTR and RTS (mtu %d)", 128 << p.mtu))
                gc_commands(&p);
        }
        expect_wire(&p, "ferry's server");
    }
    gp_close(&p);
    double t0 = now_s();
    do {
        ferry_server_get_stats(ts.s, &st);
        if (st.conns_open == st0.conns_open) break;
        usleep(20000);
    } while (now_s() - t0 < 20);
    EXPECT(st.conns_open == st0.conns_open, "ferry's server saw the ggml client leave (%.1f s)", now_s() - t0);
    EXPECT(st.conns_dropped == st0.conns_dropped, "ferry's server found no protocol violation in the ggml client");
    test_server_stop(&ts);
}

/* ---- part 2: a ggml server against ferry's client ---------------------------------- */

#define FS_BUFS 8
#define FS_MAX_ALLOC (64 * MIB)
#define FS_MAX_REQ (16 * MIB + 304)
#define FS_FREE_MEM (3ull << 30)
#define FS_TOTAL_MEM (4ull << 30)

struct fbuf {
    uint64_t handle, base, size;
    uint8_t *mem;
};

struct fake_server {
    int lfd, port;
    pthread_t thread;
    struct gpeer p;
    bool hello, rdma, clean_end; /* results, read after the join */
    uint8_t client_caps[CAPS_SIZE];
    uint32_t hello_len;
    uint8_t hello_cmd;
    int unserved; /* a command id this server does not implement, or -1 */
    char cmds[512];
    size_t cmds_len;
    struct fbuf bufs[FS_BUFS];
    uint64_t next_handle;
    uint8_t *req;
};

static struct fbuf *fs_find(struct fake_server *fs, uint64_t handle) {
    for (int i = 0; i < FS_BUFS; i++)
        if (fs->bufs[i].mem && fs->bufs[i].handle == handle) return &fs->bufs[i];
    return NULL;
}

/* ggml's region check: [data + offset, + size) inside the tensor's buffer. */
static uint8_t *fs_region(struct fake_server *fs, const uint8_t *rec, uint64_t offset, uint64_t size) {
    struct ferry_rpc_tensor t;
    ferry_rpc_tensor_decode(rec, &t);
    struct fbuf *b = fs_find(fs, t.buffer);
    if (!b || t.data < b->base || t.data - b->base > b->size || offset > b->size - (t.data - b->base)) return NULL;
    uint64_t at = t.data - b->base + offset;
    return size <= b->size - at ? b->mem + at : NULL;
}

/* ggml's send_msg: [length][payload]. */
static bool fs_respond(struct fake_server *fs, const void *data, uint64_t len) {
    uint8_t l[8];
    put_u64(l, len);
    return gp_send_data(&fs->p, l, 8) && gp_send_data(&fs->p, data, len);
}

/* The request sizes a ggml server insists on; -1 for a variable one. */
static int64_t fs_request_size(uint8_t cmd) {
    switch (cmd) {
    case CMD_ALLOC_BUFFER: return 12;
    case CMD_GET_ALIGNMENT:
    case CMD_GET_MAX_SIZE:
    case CMD_GET_DEVICE_MEMORY: return 4;
    case CMD_BUFFER_GET_BASE:
    case CMD_FREE_BUFFER: return 8;
    case CMD_GET_TENSOR: return 312;
    case CMD_DEVICE_COUNT: return 0;
    default: return -1;
    }
}

static bool fs_alloc(struct fake_server *fs, const uint8_t *q) {
    uint8_t rsp[16] = { 0 }; /* 0/0: allocation failed, the connection stays */
    uint64_t size = get_u64(q + 4);
    if (get_u32(q) != 0) return bad(&fs->p, "ALLOC_BUFFER for device %u", get_u32(q)), false;
    for (int i = 0; i < FS_BUFS && size <= FS_MAX_ALLOC; i++) {
        struct fbuf *b = &fs->bufs[i];
        if (b->mem) continue;
        b->mem = calloc(1, size ? size : 1);
        if (!b->mem) break;
        b->handle = fs->next_handle++;
        b->base = 0x7f3000000000ull + (uint64_t)i * 0x100000000ull; /* an opaque server address */
        b->size = size;
        put_u64(rsp, b->handle);
        put_u64(rsp + 8, size);
        break;
    }
    return fs_respond(fs, rsp, 16);
}

/* One request read and answered. 1: served; 0: the client closed the
 * connection; -1: a violation (the connection is dropped, as ggml does). */
static int fs_one(struct fake_server *fs) {
    struct gpeer *p = &fs->p;
    uint8_t cmd = 0, l[8], rsp[16];
    uint32_t len = 0;
    int r = gp_recv_msg(p, &cmd, 1, &len);
    if (r != 1) return r;
    p->w.headers++;
    if (len != 1) {
        p->w.bad_framing++;
        return bad(p, "command: a SEND of %u bytes, expected its own 1-byte SEND", len), -1;
    }
    if (!gp_recv_exact(p, l, 8, "request length")) return -1;
    uint64_t n = get_u64(l);
    fs->cmds_len += (size_t)snprintf(fs->cmds + fs->cmds_len, sizeof fs->cmds - fs->cmds_len, "%s%s",
                                     fs->cmds_len ? " " : "", ferry_rpc_cmd_name(cmd));
    if (fs->cmds_len >= sizeof fs->cmds) fs->cmds_len = sizeof fs->cmds - 1;
    int64_t want = fs_request_size(cmd);
    bool known = want >= 0 || cmd == CMD_SET_TENSOR;
    if (!known) {
        fs->unserved = cmd;
        return bad(p, "command %u (%s) is not served by this ggml server", cmd, ferry_rpc_cmd_name(cmd)), -1;
    }
    if (want >= 0 ? n != (uint64_t)want : (n < 304 || n > FS_MAX_REQ))
        return bad(p, "%s with a %" PRIu64 "-byte payload", ferry_rpc_cmd_name(cmd), n), -1;
    if (!gp_recv_payload(p, fs->req, n, ferry_rpc_cmd_name(cmd))) return -1;
    const uint8_t *q = fs->req;
    struct fbuf *b;
    uint8_t *at;
    switch (cmd) {
    case CMD_ALLOC_BUFFER: return fs_alloc(fs, q) ? 1 : -1;
    case CMD_GET_ALIGNMENT: put_u64(rsp, 32); return fs_respond(fs, rsp, 8) ? 1 : -1;
    case CMD_GET_MAX_SIZE: put_u64(rsp, UINT64_MAX); return fs_respond(fs, rsp, 8) ? 1 : -1;
    case CMD_DEVICE_COUNT: put_u32(rsp, 1); return fs_respond(fs, rsp, 4) ? 1 : -1;
    case CMD_GET_DEVICE_MEMORY:
        if (get_u32(q) != 0) return bad(p, "GET_DEVICE_MEMORY for device %u", get_u32(q)), -1;
        put_u64(rsp, FS_FREE_MEM);
        put_u64(rsp + 8, FS_TOTAL_MEM);
        return fs_respond(fs, rsp, 16) ? 1 : -1;
    case CMD_BUFFER_GET_BASE:
        if (!(b = fs_find(fs, get_u64(q)))) return bad(p, "BUFFER_GET_BASE: unknown buffer"), -1;
        put_u64(rsp, b->base);
        return fs_respond(fs, rsp, 8) ? 1 : -1;
    case CMD_FREE_BUFFER:
        if (!(b = fs_find(fs, get_u64(q)))) return bad(p, "FREE_BUFFER: unknown buffer"), -1;
        free(b->mem);
        b->mem = NULL;
        return fs_respond(fs, NULL, 0) ? 1 : -1;
    case CMD_SET_TENSOR: /* no response */
        if (!(at = fs_region(fs, q, get_u64(q + 296), n - 304))) return bad(p, "SET_TENSOR outside its buffer"), -1;
        memcpy(at, q + 304, n - 304);
        return 1;
    case CMD_GET_TENSOR:
        if (!(at = fs_region(fs, q, get_u64(q + 296), get_u64(q + 304))))
            return bad(p, "GET_TENSOR outside its buffer"), -1;
        return fs_respond(fs, at, get_u64(q + 304)) ? 1 : -1;
    }
    return -1;
}

/* ggml's server side of HELLO: the 24-byte caps over TCP, its own probe,
 * the response (version 5.1.0, byte 3 zero, its caps), then RTR and RTS. */
static bool fs_hello(struct fake_server *fs, int fd) {
    uint8_t h[9], rsp[8 + 28] = { 0 };
    if (!tcp_read_all(fd, h, 9)) return bad(&fs->p, "no HELLO"), false;
    fs->hello_cmd = h[0];
    fs->hello_len = (uint32_t)get_u64(h + 1);
    if (h[0] != CMD_HELLO || get_u64(h + 1) != CAPS_SIZE)
        return bad(&fs->p, "first frame: command %u, %" PRIu64 " bytes", h[0], get_u64(h + 1)), false;
    if (!tcp_read_all(fd, fs->client_caps, CAPS_SIZE)) return bad(&fs->p, "HELLO caps cut short"), false;
    fs->hello = true;
    if (!gp_open(&fs->p, SERVER_DEV, fd)) return false;
    put_u64(rsp, 28);
    rsp[8] = 5, rsp[9] = 1, rsp[10] = 0, rsp[11] = 0;
    gp_caps(&fs->p, rsp + 12);
    if (!tcp_write_all(fd, rsp, sizeof rsp)) return bad(&fs->p, "HELLO response not sent"), false;
    if (get_u32(fs->client_caps) == 0) return bad(&fs->p, "the client offered no RDMA"), false;
    fs->rdma = gp_connect(&fs->p, fs->client_caps);
    return fs->rdma;
}

static void *fs_main(void *arg) {
    struct fake_server *fs = arg;
    struct pollfd pf = { fs->lfd, POLLIN, 0 };
    if (poll(&pf, 1, WAIT_MS) != 1) {
        bad(&fs->p, "nobody connected");
        return NULL;
    }
    int fd = accept(fs->lfd, NULL, NULL);
    if (fd < 0) {
        bad(&fs->p, "accept: %s", strerror(errno));
        return NULL;
    }
    nodelay(fd);
    fs->p.fd = fd;
    if (fs_hello(fs, fd)) {
        int r;
        while ((r = fs_one(fs)) == 1) {}
        fs->clean_end = r == 0;
    }
    gp_close(&fs->p); /* ggml drops the connection after any violation */
    return NULL;
}

static bool fs_start(struct fake_server *fs) {
    memset(fs, 0, sizeof *fs);
    fs->p.who = "ggml server";
    fs->p.fd = -1;
    fs->unserved = -1;
    fs->next_handle = 0x5a00;
    fs->req = malloc(FS_MAX_REQ);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    fs->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (!fs->req || fs->lfd < 0 || !sockaddr_of(SERVER_IP, 0, &a)) return false;
    setsockopt(fs->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fs->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fs->lfd, 1) != 0 ||
        getsockname(fs->lfd, (struct sockaddr *)&a, &len) != 0)
        return false;
    fs->port = ntohs(a.sin_port);
    return pthread_create(&fs->thread, NULL, fs_main, fs) == 0;
}

static void fs_finish(struct fake_server *fs) {
    pthread_join(fs->thread, NULL);
    close(fs->lfd);
    for (int i = 0; i < FS_BUFS; i++) free(fs->bufs[i].mem);
    free(fs->req);
}

static const char *why(int rc, const struct ferry_error *e) {
    return rc == FERRY_OK ? "ok" : e->msg;
}

/* What ferry's client does against the ggml server: connect, query memory,
 * a buffer, 5 MiB there and back, free it. */
static void drive_ferry_client(struct fake_server *fs, const char *dev) {
    char endpoint[48], line[512];
    snprintf(endpoint, sizeof endpoint, "%s:%d", SERVER_IP, fs->port);
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.transport = FERRY_TRANSPORT_AUTO;
    o.rdma_dev = dev;
    o.response_timeout_ms = WAIT_MS;
    o.frame_timeout_ms = WAIT_MS;
    struct ferry_client *c = NULL;
    struct ferry_error err = { 0 };
    int rc = ferry_client_connect(endpoint, &o, &c, &err);
    if (!EXPECT(rc == FERRY_OK, "ferry's client connects to %s: %s", endpoint, why(rc, &err))) return;
    const char *kind = ferry_client_transport(c, line, sizeof line);
    EXPECT(strcmp(kind, "rdma") == 0, "ferry's client is on rdma: %s", line);
    EXPECT(!ferry_client_server_is_ferry(c), "HELLO byte 3 = 0: ferry's client takes it for a ggml server");
    uint64_t fm = 0, tm = 0;
    rc = ferry_client_device_memory(c, 0, &fm, &tm, &err);
    EXPECT(rc == FERRY_OK && fm == FS_FREE_MEM && tm == FS_TOTAL_MEM,
           "GET_DEVICE_MEMORY: %" PRIu64 " free of %" PRIu64 ", as the ggml server said: %s", fm, tm, why(rc, &err));
    struct ferry_remote_buffer buf;
    const size_t n = 5 * MIB;
    rc = ferry_client_alloc_buffer(c, 0, 8 * MIB, &buf, &err);
    if (EXPECT(rc == FERRY_OK, "ALLOC_BUFFER 8 MiB + BUFFER_GET_BASE: %s", why(rc, &err))) {
        struct ferry_tensor t;
        int64_t ne[1] = { (int64_t)n };
        ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
        ferry_remote_tensor_place(&t, &buf, 0, &err);
        uint8_t *src = malloc(n), *dst = calloc(1, n);
        fill(src, n, 42);
        rc = ferry_client_set_tensor(c, &t, 0, src, n, &err);
        EXPECT(rc == FERRY_OK, "SET_TENSOR 5 MiB: %s", why(rc, &err));
        rc = ferry_client_get_tensor(c, &t, 0, dst, n, &err);
        EXPECT(rc == FERRY_OK, "GET_TENSOR 5 MiB: %s", why(rc, &err));
        EXPECT(memcmp(src, dst, n) == 0, "the 5 MiB came back unchanged");
        free(src);
        free(dst);
        rc = ferry_client_free_buffer(c, &buf, &err);
        EXPECT(rc == FERRY_OK, "FREE_BUFFER: %s", why(rc, &err));
    }
    struct ferry_client_conn_stats cs;
    bool have = ferry_client_conn_stats(c, &cs);
    EXPECT(have && cs.writes_posted == 0 && cs.reads_posted == 0,
           "ferry's client posted no RDMA WRITE/READ (%" PRIu64 " SENDs)", cs.sends_posted);
    EXPECT(strcmp(ferry_client_transport(c, NULL, 0), "rdma") == 0, "still on rdma at the end");
    ferry_client_close(c);
}

static void part2(void) {
    printf("-- part 2: ferry's client against a ggml server (this test)\n");
    const char *dev = getenv("FERRY_RDMA_DEV");
    if (!dev || !*dev) dev = "rxe0";
    struct fake_server *fs = malloc(sizeof *fs);
    if (!EXPECT(fs && fs_start(fs), "ggml server listening on %s (device %s)", SERVER_IP, SERVER_DEV)) {
        free(fs);
        return;
    }
    drive_ferry_client(fs, dev);
    fs_finish(fs);
    struct gpeer *p = &fs->p;
    char gid[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, fs->client_caps + 8, gid, sizeof gid);
    EXPECT(fs->hello, "ferry's client opened with HELLO of 24 caps bytes (command %u, %u bytes)", fs->hello_cmd,
           fs->hello_len);
    EXPECT(get_u32(fs->client_caps) != 0 && get_u32(fs->client_caps) <= 0xffffff &&
               get_u32(fs->client_caps + 4) <= 0xffffff,
           "its caps: qpn %u, psn 0x%06x, gid %s", get_u32(fs->client_caps), get_u32(fs->client_caps + 4), gid);
    EXPECT(fs->rdma, "the ggml server's queue pair reached RTS (%s gid[%d], mtu %d)", p->dev, p->gid_index,
           128 << p->mtu);
    printf("  commands served: %s\n", fs->cmds_len ? fs->cmds : "(none)");
    EXPECT(fs->unserved < 0, "every command was one a ggml server serves (unserved: %d)", fs->unserved);
    EXPECT(fs->clean_end, "the connection ended with the client closing, not with a violation");
    expect_wire(p, "ferry's client");
    free(fs);
}

/* ---- control: the two fake peers against each other -------------------------------- */

/* Before believing what they say about ferry: the fake client and the fake
 * server must understand each other, and the server must catch a command
 * byte sent together with its length in one SEND (a coalescing that would
 * make a real ggml server overwrite memory). */
static void control(void) {
    printf("-- control: the ggml client against the ggml server, both this test's\n");
    const char *dev = getenv("FERRY_RDMA_DEV");
    if (!dev || !*dev) dev = "rxe0";
    struct fake_server *fs = malloc(sizeof *fs);
    if (!EXPECT(fs && fs_start(fs), "ggml server listening on %s", SERVER_IP)) {
        free(fs);
        return;
    }
    struct gpeer p = { .who = "ggml client", .fd = -1 };
    int fd = tcp_connect_from(CLIENT_IP, SERVER_IP, fs->port);
    uint8_t rsp[28], req[9];
    bool up = fd >= 0 && gp_open(&p, dev, fd) && gc_hello(&p, rsp) && rsp[3] == 0 && gp_connect(&p, rsp + 4);
    if (EXPECT(up, "connected over RDMA")) {
        put_u32(req, 0);
        bool ok = gc_call(&p, CMD_GET_DEVICE_MEMORY, req, 4, rsp, 16, "GET_DEVICE_MEMORY");
        EXPECT(ok && get_u64(rsp) == FS_FREE_MEM && get_u64(rsp + 8) == FS_TOTAL_MEM, "GET_DEVICE_MEMORY answered");
        req[0] = CMD_GET_DEVICE_MEMORY; /* cmd and length in one 9-byte SEND */
        put_u64(req + 1, 4);
        gp_send_msg(&p, req, 9);
    }
    if (!up) gp_close(&p); /* so that the server stops waiting */
    fs_finish(fs);         /* it drops the connection on the violation */
    gp_close(&p);
    EXPECT(fs->p.w.bad_framing == 1 && !fs->clean_end, "a 9-byte SEND of command and length is caught (%s)",
           fs->p.first_bad);
    free(fs);
}

/* ---- part 3: a hostile ferry-framing client against ferry's server ----------------- */

/* ferry's framing between two ferry peers (docs/protocol-extensions.md,
 * "RDMA between two ferry peers"), spelled out here from the document. */
enum { FK_DATA = 0, FK_CREDIT = 1, FK_RTS = 2, FK_CTS = 3, FK_SINK = 4, FK_WDONE = 5, FK_STATS = 7 };
#define HELLO_FLAG_RDMA_EXT 0x02
#define REC_SIZE 96
#define REC_MTU 1024
#define REC_DEPTH 16        /* announced; the fake client posts 24, so it never runs short */
#define CLOSE_WAIT_S 10.0   /* how long the server has to drop a hostile connection */

/* Every hostile case, in the order they run. */
enum fr_case {
    FR_NO_IMM,     /* a: a SEND without immediate data */
    FR_BAD_KIND,   /* b: kind 9 */
    FR_CREDITS,    /* c: 0xffff credits returned */
    FR_CTS,        /* d: a CTS with no RTS outstanding */
    FR_RTS_EMPTY,  /* e: an RTS of 0 bytes */
    FR_RTS_ZERO,   /* e: an RTS offering n = 0 */
    FR_SINK_WRAP,  /* f: a sink whose addr + len overflows */
    FR_WDONE,      /* g: a WDONE write with no CTS granted */
    FR_STATS,      /* g2: a STATS question, a feature this client did not negotiate */
    FR_BAD_MAGIC,  /* h: a record that is not "FRDM" */
    FR_BAD_MTU,    /* h: a record with path MTU 3000 */
    FR_STOPS,      /* i: a request, half of the next, then silence and a TCP FIN */
    FR_N
};

static const struct {
    const char *id, *what;
    bool violation; /* the server must count it as a protocol error (conns_dropped) */
    bool own_record; /* sends its own record instead of the valid negotiation */
} fr_cases[FR_N] = {
    [FR_NO_IMM] = { "a", "a SEND without immediate data", true, false },
    [FR_BAD_KIND] = { "b", "a SEND_WITH_IMM of unknown kind 9", true, false },
    [FR_CREDITS] = { "c", "a CREDIT message returning 0xffff credits (the ring has 16)", true, false },
    [FR_CTS] = { "d", "a CTS with no RTS outstanding", true, false },
    [FR_RTS_EMPTY] = { "e1", "an RTS of 0 bytes (must be 8)", true, false },
    [FR_RTS_ZERO] = { "e2", "an RTS offering n = 0", true, false },
    [FR_SINK_WRAP] = { "f", "a SINK whose addr + len overflows u64", true, false },
    [FR_WDONE] = { "g", "a 0-byte RDMA_WRITE_WITH_IMM of kind WDONE (addr 0, rkey 0), no CTS granted", true, false },
    [FR_STATS] = { "g2", "a STATS question (kind 7) without the feature in its record", true, false },
    [FR_BAD_MAGIC] = { "h1", "a record with magic \"XRDM\" instead of the valid one", true, true },
    [FR_BAD_MTU] = { "h2", "a record with path MTU 3000 instead of the valid one", true, true },
    [FR_STOPS] = { "i", "GET_DEVICE_MEMORY plus the head of a SET_TENSOR, then nothing and a TCP FIN", false, false },
};

/* The immediate as verbs carry it: network byte order. */
static uint32_t fr_imm(uint32_t kind, uint32_t credits) {
    return htonl(kind << 28 | credits);
}

/* A record as a ferry client sends it: switch, with this magic and MTU. */
static void fr_record(uint8_t out[REC_SIZE], const char *magic, uint32_t mtu) {
    memset(out, 0, REC_SIZE);
    memcpy(out, magic, 4);
    out[4] = 1; /* version */
    out[5] = 0; /* status: switch */
    put_u32(out + 8, mtu);
    put_u32(out + 12, REC_DEPTH);
    put_u32(out + 16, CHUNK);
    put_u32(out + 20, 1); /* features: accepts RDMA WRITE */
}

/* GET_DEVICE_MEMORY for device 0 as one stream piece: cmd, u64 length 4, u32. */
static void fr_get_mem_request(uint8_t out[13]) {
    out[0] = CMD_GET_DEVICE_MEMORY;
    put_u64(out + 1, 4);
    put_u32(out + 9, 0);
}

struct fr_conn {
    struct gpeer p;
    uint8_t flags;            /* HELLO byte 3 */
    uint8_t answer[REC_SIZE]; /* the server's record */
    char fail[200];           /* why the setup stopped short */
};

__attribute__((format(printf, 2, 3))) static bool fr_fail(struct fr_conn *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fail, sizeof c->fail, fmt, ap);
    va_end(ap);
    return false;
}

/* TCP and a probe from CLIENT_IP, HELLO with caps, the flag that says
 * ferry's framing is on offer, then RTR at path MTU 1024. */
static bool fr_hello(struct fr_conn *c, const char *dev, int port) {
    struct gpeer *p = &c->p;
    uint8_t req[9 + CAPS_SIZE], rsp[8 + 28];
    int fd = tcp_connect_from(CLIENT_IP, SERVER_IP, port);
    if (fd < 0) return fr_fail(c, "TCP connect: %s", strerror(errno));
    if (!gp_open(p, dev, fd)) return fr_fail(c, "probe: %s", p->first_bad);
    req[0] = CMD_HELLO;
    put_u64(req + 1, CAPS_SIZE);
    gp_caps(p, req + 9);
    if (!tcp_write_all(fd, req, sizeof req) || !tcp_read_all(fd, rsp, sizeof rsp) || get_u64(rsp) != 28)
        return fr_fail(c, "HELLO not answered");
    c->flags = rsp[11];
    if (!(c->flags & HELLO_FLAG_RDMA_EXT) || get_u32(rsp + 12) == 0)
        return fr_fail(c, "HELLO byte 3 = 0x%02x, qpn %u: ferry's framing not on offer", c->flags, get_u32(rsp + 12));
    p->mtu = IBV_MTU_1024;
    if (!gp_rtr(p, rsp + 12)) return fr_fail(c, "RTR: %s", p->first_bad);
    return true;
}

/* The valid record, the server's answer (FRDM, switch, MTU 1024), RTS:
 * only then may anything go on the queue pair. */
static bool fr_negotiate(struct fr_conn *c) {
    uint8_t rec[REC_SIZE], *a = c->answer;
    fr_record(rec, "FRDM", REC_MTU);
    if (!tcp_write_all(c->p.fd, rec, sizeof rec)) return fr_fail(c, "record not sent");
    if (!tcp_read_all(c->p.fd, a, REC_SIZE)) return fr_fail(c, "no 96-byte answer to the record");
    if (memcmp(a, "FRDM", 4) != 0 || a[5] != 0 || get_u32(a + 8) != REC_MTU)
        return fr_fail(c, "answer: magic %02x%02x%02x%02x, status %u, mtu %u (reason \"%.71s\")", a[0], a[1], a[2], a[3],
                       a[5], get_u32(a + 8), (const char *)a + 24);
    return gp_rts(&c->p) || fr_fail(c, "RTS: %s", c->p.first_bad);
}

/* The connection as far as the case goes: through the valid negotiation,
 * or (own_record) only to RTR, its record still to be sent. */
static bool fr_open(struct fr_conn *c, const char *dev, int port, bool own_record) {
    memset(c, 0, sizeof *c);
    c->p.who = "ferry-framing client";
    c->p.fd = -1;
    return fr_hello(c, dev, port) && (own_record || fr_negotiate(c));
}

/* One work request, then its completion: SEND, SEND_WITH_IMM, or
 * RDMA_WRITE_WITH_IMM to address 0 with rkey 0 (this client was never
 * granted one). Returns the completion status, -1 when none came. */
static int fr_post(struct gpeer *p, enum ibv_wr_opcode op, uint32_t imm, const void *data, uint32_t len) {
    if (len) memcpy(p->tx, data, len);
    struct ibv_sge sge = { (uintptr_t)p->tx, len, p->tx_mr->lkey };
    struct ibv_send_wr wr = { .wr_id = 2, .sg_list = &sge, .num_sge = len ? 1 : 0, .opcode = op,
                              .send_flags = IBV_SEND_SIGNALED },
                       *badwr;
    if (op != IBV_WR_SEND) wr.imm_data = imm;
    if (ibv_post_send(p->qp, &wr, &badwr) != 0) return -1;
    double deadline = now_s() + WAIT_MS / 1e3;
    struct ibv_wc wc;
    while (now_s() < deadline) {
        int n = ibv_poll_cq(p->scq, 1, &wc);
        if (n < 0) return -1;
        if (n == 1) return (int)wc.status;
        sched_yield();
    }
    return -1;
}

/* The next receive completion (within WAIT_MS); its first bytes to out. */
static bool fr_recv(struct gpeer *p, struct ibv_wc *wc, uint8_t *out, uint32_t cap) {
    double deadline = now_s() + WAIT_MS / 1e3;
    while (now_s() < deadline) {
        int n = ibv_poll_cq(p->rcq, 1, wc);
        if (n < 0) return false;
        if (n == 1) {
            if (wc->status != IBV_WC_SUCCESS) return false;
            memcpy(out, p->rx + wc->wr_id * CHUNK, wc->byte_len < cap ? wc->byte_len : cap);
            return true;
        }
        sched_yield();
    }
    return false;
}

/* Until the server drops the connection: end of stream on TCP, or our
 * queue pair in error (the responder refused what it got). NULL when
 * neither happened within limit_s. */
static const char *fr_wait_closed(struct gpeer *p, double limit_s, double *took) {
    double t0 = now_s();
    for (;;) {
        struct ibv_qp_attr a;
        struct ibv_qp_init_attr ia;
        *took = now_s() - t0;
        if (ibv_query_qp(p->qp, &a, IBV_QP_STATE, &ia) == 0 && a.qp_state == IBV_QPS_ERR)
            return "its queue pair went to error";
        struct pollfd pf = { p->fd, POLLIN | POLLRDHUP, 0 };
        if (poll(&pf, 1, 20) > 0) {
            uint8_t b[256];
            ssize_t k = recv(p->fd, b, sizeof b, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) return "its TCP socket reached end of stream";
            if (k > 0) p->tcp_bytes += (uint64_t)k; /* none may come: reported by the caller */
        }
        if (*took > limit_s) return NULL;
    }
}

/* The server's counters once its connections are all gone (or limit_s). */
static struct ferry_server_stats fr_settled(struct test_server *ts, double limit_s) {
    struct ferry_server_stats st;
    double t0 = now_s();
    for (;;) {
        ferry_server_get_stats(ts->s, &st);
        if (st.conns_open == 0 || now_s() - t0 > limit_s) return st;
        usleep(10000);
    }
}

/* A well-behaved ferry client, RDMA required: ALLOC_BUFFER 2 MiB, then
 * 1 MiB + 1 byte there and back (over the 1 MiB mark, so by RTS/CTS and
 * WRITE, and into a sink), unchanged. false with the reason in out. */
static bool fr_good_client(const char *endpoint, const char *dev, uint64_t seed, char *out, size_t cap) {
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.transport = FERRY_TRANSPORT_RDMA;
    o.rdma_dev = dev;
    o.response_timeout_ms = o.frame_timeout_ms = WAIT_MS;
    const size_t n = MIB + 1;
    uint8_t *src = malloc(n), *dst = calloc(1, n);
    struct ferry_client *c = NULL;
    struct ferry_error err = { 0 };
    struct ferry_remote_buffer buf;
    struct ferry_tensor t;
    struct ferry_client_conn_stats cs = { 0 };
    int64_t ne[1] = { (int64_t)n };
    const char *step = "connect";
    int rc = src && dst ? ferry_client_connect(endpoint, &o, &c, &err) : FERRY_ERR_NOMEM;
    if (rc == FERRY_OK) step = "ALLOC_BUFFER", rc = ferry_client_alloc_buffer(c, 0, 2 * MIB, &buf, &err);
    if (rc == FERRY_OK) {
        fill(src, n, seed);
        ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
        step = "placing the tensor", rc = ferry_remote_tensor_place(&t, &buf, 0, &err);
        if (rc == FERRY_OK) step = "SET_TENSOR", rc = ferry_client_set_tensor(c, &t, 0, src, n, &err);
        if (rc == FERRY_OK) step = "GET_TENSOR", rc = ferry_client_get_tensor(c, &t, 0, dst, n, &err);
        ferry_client_conn_stats(c, &cs);
        if (rc == FERRY_OK) step = "FREE_BUFFER", rc = ferry_client_free_buffer(c, &buf, &err);
    }
    bool same = rc == FERRY_OK && memcmp(src, dst, n) == 0;
    const char *kind = c ? ferry_client_transport(c, NULL, 0) : "none";
    if (rc != FERRY_OK)
        snprintf(out, cap, "%s failed: %s", step, src && dst ? err.msg : "out of memory");
    else if (!same || strcmp(kind, "rdma") != 0)
        snprintf(out, cap, "on %s, the bytes came back %s", kind, same ? "unchanged" : "CHANGED");
    else
        snprintf(out, cap, "on rdma, %" PRIu64 " bytes by RDMA WRITE, unchanged", cs.write_bytes);
    ferry_client_close(c);
    free(src);
    free(dst);
    return same && strcmp(kind, "rdma") == 0;
}

/* The well-behaved run first, so that the hostile ones are known to fail
 * for their own fault: a correct DATA message holding GET_DEVICE_MEMORY,
 * answered by one SEND_WITH_IMM of kind DATA with length and 16 bytes. */
static void fr_control(struct test_server *ts, const char *dev) {
    struct ferry_server_stats st0, st;
    ferry_server_get_stats(ts->s, &st0);
    struct fr_conn c;
    bool up = fr_open(&c, dev, ts->port, false);
    if (EXPECT(up, "control: HELLO byte 3 = 0x%02x (bit 0x02 set), QP at RTR (mtu 1024), record sent, answer "
               "FRDM / status 0 / mtu %u / depth %u, RTS%s%s", c.flags, get_u32(c.answer + 8),
               get_u32(c.answer + 12), up ? "" : ": ", c.fail)) {
        uint8_t req[13], rsp[24] = { 0 };
        struct ibv_wc wc;
        fr_get_mem_request(req);
        int s = fr_post(&c.p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_DATA, 0), req, sizeof req);
        bool got = s == IBV_WC_SUCCESS && fr_recv(&c.p, &wc, rsp, sizeof rsp);
        uint32_t imm = got && (wc.wc_flags & IBV_WC_WITH_IMM) ? ntohl(wc.imm_data) : 0xffffffffu;
        EXPECT(got && wc.opcode == IBV_WC_RECV && (wc.wc_flags & IBV_WC_WITH_IMM) && imm >> 28 == FK_DATA &&
                   wc.byte_len == 24 && get_u64(rsp) == 16,
               "control: GET_DEVICE_MEMORY as one DATA message is answered by one SEND_WITH_IMM of kind %u "
               "(credits %u), %u bytes, length %" PRIu64,
               imm >> 28, imm & 0xffff, got ? wc.byte_len : 0, get_u64(rsp));
        EXPECT(got && get_u64(rsp + 16) > 0 && get_u64(rsp + 8) <= get_u64(rsp + 16),
               "control: device memory %" PRIu64 " free of %" PRIu64, get_u64(rsp + 8), get_u64(rsp + 16));
    }
    gp_close(&c.p);
    st = fr_settled(ts, CLOSE_WAIT_S);
    EXPECT(st.conns_open == 0 && st.conns_dropped == st0.conns_dropped,
           "control: the connection ended cleanly (conns_open %" PRIu64 ", conns_dropped +%" PRIu64 ")",
           st.conns_open, st.conns_dropped - st0.conns_dropped);
}

/* What one hostile client does in place of well-behaved traffic. Returns
 * the completion status of its work request (-1: none). */
static int fr_misbehave(struct fr_conn *c, enum fr_case which) {
    struct gpeer *p = &c->p;
    uint8_t m[32], rec[REC_SIZE];
    fr_get_mem_request(m);
    switch (which) {
    case FR_NO_IMM: return fr_post(p, IBV_WR_SEND, 0, m, 13);
    case FR_BAD_KIND: return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(9, 0), m, 13);
    case FR_CREDITS: return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_CREDIT, 0xffff), NULL, 0);
    case FR_CTS: /* a plausible grant, only nobody asked for it */
        put_u64(m, 0x10000), put_u64(m + 8, 4096), put_u32(m + 16, 0x1234);
        return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_CTS, 0), m, 20);
    case FR_RTS_EMPTY: return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_RTS, 0), NULL, 0);
    case FR_RTS_ZERO: put_u64(m, 0); return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_RTS, 0), m, 8);
    case FR_SINK_WRAP:
        put_u64(m, UINT64_MAX - 4095), put_u64(m + 8, 8192), put_u32(m + 16, 0x1234);
        return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_SINK, 0), m, 20);
    case FR_WDONE: return fr_post(p, IBV_WR_RDMA_WRITE_WITH_IMM, fr_imm(FK_WDONE, 0), NULL, 0);
    case FR_STATS: return fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_STATS, 0), NULL, 0);
    case FR_BAD_MAGIC:
    case FR_BAD_MTU:
        fr_record(rec, which == FR_BAD_MAGIC ? "XRDM" : "FRDM", which == FR_BAD_MAGIC ? REC_MTU : 3000);
        return tcp_write_all(p->fd, rec, sizeof rec) ? IBV_WC_SUCCESS : -1;
    case FR_STOPS: { /* the SET_TENSOR promises 368 payload bytes that never come */
        m[13] = CMD_SET_TENSOR;
        put_u64(m + 14, 304 + 64);
        int s = fr_post(p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_DATA, 0), m, 22);
        shutdown(p->fd, SHUT_WR); /* still able to see the server close its end */
        return s;
    }
    case FR_N: break;
    }
    return -1;
}

/* For the record when a connection outlived its violation: a correct
 * request on it, answered or not. */
static void fr_note_alive(struct fr_conn *c) {
    uint8_t req[13], rsp[24] = { 0 };
    struct ibv_wc wc;
    fr_get_mem_request(req);
    bool alive = fr_post(&c->p, IBV_WR_SEND_WITH_IMM, fr_imm(FK_DATA, 0), req, sizeof req) == IBV_WC_SUCCESS &&
                 fr_recv(&c->p, &wc, rsp, sizeof rsp) && wc.byte_len == 24 && get_u64(rsp) == 16;
    printf("  note: that connection %s\n", alive ? "still serves: GET_DEVICE_MEMORY on it is answered"
                                                   : "does not answer GET_DEVICE_MEMORY either");
}

static const char *fr_status(int s) {
    return s < 0 ? "no completion" : ibv_wc_status_str((enum ibv_wc_status)s);
}

/* One hostile connection, then what must hold: that connection dropped
 * within CLOSE_WAIT_S, counted, none left open, and a ferry client served
 * as if nothing had happened. */
static void fr_case(struct test_server *ts, const char *dev, enum fr_case which) {
    const char *id = fr_cases[which].id;
    printf("  case %s: %s\n", id, fr_cases[which].what);
    struct ferry_server_stats st0, st;
    ferry_server_get_stats(ts->s, &st0);
    struct fr_conn c;
    bool up = fr_open(&c, dev, ts->port, fr_cases[which].own_record);
    if (EXPECT(up, "%s: connected and %s%s%s", id, fr_cases[which].own_record ? "at RTR" : "negotiated (FRDM, mtu 1024)",
               up ? "" : ": ", c.fail)) {
        int s = fr_misbehave(&c, which);
        double took = 0;
        const char *how = fr_wait_closed(&c.p, CLOSE_WAIT_S, &took);
        if (how)
            EXPECT(true, "%s: the server dropped the connection: %s after %.2f s (our work request: %s)", id, how, took,
                   fr_status(s));
        else {
            EXPECT(false, "%s: the server dropped the connection: still open after %.0f s (our work request: %s)", id,
                   CLOSE_WAIT_S, fr_status(s));
            fr_note_alive(&c);
        }
        EXPECT(c.p.tcp_bytes == 0, "%s: nothing came on TCP after the negotiation (%" PRIu64 " bytes)", id,
               c.p.tcp_bytes);
    }
    gp_close(&c.p);
    st = fr_settled(ts, CLOSE_WAIT_S);
    uint64_t dropped = st.conns_dropped - st0.conns_dropped;
    if (fr_cases[which].violation)
        EXPECT(st.conns_open == 0 && dropped >= 1,
               "%s: conns_open back to %" PRIu64 ", conns_dropped +%" PRIu64 " (a protocol error)", id, st.conns_open,
               dropped);
    else
        EXPECT(st.conns_open == 0, "%s: conns_open back to %" PRIu64 " (conns_dropped +%" PRIu64 ")", id,
               st.conns_open, dropped);
    char endpoint[48], line[400];
    snprintf(endpoint, sizeof endpoint, "%s:%d", SERVER_IP, ts->port);
    bool ok = fr_good_client(endpoint, dev, 100 + (uint64_t)which, line, sizeof line);
    EXPECT(ok, "%s: then a ferry client does 1 MiB + 1 byte SET/GET: %s", id, line);
    struct ferry_server_stats after = fr_settled(ts, CLOSE_WAIT_S);
    EXPECT(after.conns_open == 0 && after.conns_dropped == st.conns_dropped,
           "%s: and leaves cleanly (conns_open %" PRIu64 ", conns_dropped +%" PRIu64 ")", id, after.conns_open,
           after.conns_dropped - st.conns_dropped);
}

static void part3(void) {
    printf("-- part 3: hostile ferry-framing clients (this test) against ferry's server\n");
    struct test_server ts;
    if (!ferry_server_up(&ts)) return;
    const char *dev = getenv("FERRY_RDMA_DEV");
    if (!dev || !*dev) dev = "rxe0";
    fr_control(&ts, dev);
    for (int i = 0; i < FR_N; i++) fr_case(&ts, dev, (enum fr_case)i);
    test_server_stop(&ts);
}

/* ---- main ----------------------------------------------------------------------------- */

static void on_alarm(int sig) {
    (void)sig;
    static const char m[] = "FAIL  test_rdma_ggml: time bound reached, something hung\n";
    if (write(1, m, sizeof m - 1) < 0) {}
    _exit(1);
}

static bool have_devices(void) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (list) ibv_free_device_list(list);
    return n > 0;
}

int main(void) {
    const char *env = getenv("FERRY_TEST_RDMA");
    if (!env || strcmp(env, "1") != 0) {
        printf("skipped: set FERRY_TEST_RDMA=1 (scripts/rdma-test.sh runs it in the Soft-RoCE guest)\n");
        return 77;
    }
    if (!have_devices()) {
        printf("skipped: no RDMA device\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(TIME_BOUND_S); /* never hang, whatever a peer does */
    ferry_log_set_level(FERRY_LOG_WARN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t0 = now_s();
    control();
    printf("  [%.1f s]\n", now_s() - t0);
    part1();
    printf("  [%.1f s]\n", now_s() - t0);
    part2();
    printf("  [%.1f s]\n", now_s() - t0);
    part3();
    printf("  [%.1f s]\n", now_s() - t0);
    return test_summary();
}

#endif /* FERRY_HAVE_RDMA */
