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

/* RTR then RTS with ggml's attributes, toward the peer's caps. */
static bool gp_connect(struct gpeer *p, const uint8_t caps[CAPS_SIZE]) {
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
    struct ibv_qp_attr s = {
        .qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .sq_psn = p->psn, .max_rd_atomic = 1,
    };
    if (ibv_modify_qp(p->qp, &s,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC) != 0)
        return bad(p, "QP to RTS failed: %s", strerror(errno)), false;
    return true;
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

static void part1(void) {
    printf("-- part 1: a ggml client (this test) against ferry's server\n");
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.host = SERVER_IP;
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 512 * MIB;
    cfg.max_payload = 256 * MIB;
    cfg.transport = FERRY_TRANSPORT_AUTO;
    cfg.rdma_dev = SERVER_DEV; /* not $FERRY_RDMA_DEV, which names the client's device */
    struct test_server ts;
    if (!EXPECT(test_server_start(&ts, &cfg), "ferry server on %s (auto, device %s)", SERVER_IP, SERVER_DEV)) return;
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
    return test_summary();
}

#endif /* FERRY_HAVE_RDMA */
