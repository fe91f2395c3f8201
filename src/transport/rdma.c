/* The RDMA transport: a reliable-connected queue pair over rdma-core's
 * libibverbs (RoCE v2, RoCE v1 or InfiniBand), reached by upgrading an
 * established TCP connection during HELLO.
 *
 * The wire format is ggml's (docs/ggml-rpc-protocol.md sections 7 and 8, in
 * the project's shared documentation), so ggml peers interoperate:
 *   caps      24 bytes: qpn u32le (0 = no RDMA), psn u32le, raw GID (16);
 *   queue     RC; INIT (port, pkey 0, remote write/read + local write),
 *             RTR (path MTU, peer qpn/psn, GRH to the peer's GID),
 *             RTS (timeout 14, retry_cnt 7, rnr_retry 7);
 *   framing   two-sided SEND only: every header part is one SEND, the
 *             payload SENDs of at most 256 KiB; receive buffers of 256 KiB;
 *   liveness  the TCP socket stays open and idle; it closing means the
 *             peer is gone.
 * Beyond ggml's transport: several SENDs in flight, completions waited for
 * on a completion channel after a short spin (0 % CPU when idle), every
 * wait bounded by the caller's deadline and broken by the liveness socket,
 * a path MTU that cannot exceed what either end's link carries, the
 * memlock limit checked before anything is pinned, and required mode
 * (--transport rdma) failing with a reason instead of staying on TCP.
 *
 * The verbs code follows rdma-core's ibv_rc_pingpong: open device, PD,
 * completion channel, CQ, QP, MRs; post receives; INIT, RTR, RTS. */
#include "transport/transport.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"

static const char *const transport_names[] = { "auto", "tcp", "rdma" };

int ferry_transport_parse(const char *s, int *mode, struct ferry_error *err) {
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, transport_names[i]) == 0) {
            *mode = i;
            return FERRY_OK;
        }
    return ferry_fail(err, FERRY_ERR_INVALID, "transport '%s': expected auto, tcp or rdma",
                      s ? s : "(null)");
}

const char *ferry_transport_name(int mode) {
    return mode >= 0 && mode < 3 ? transport_names[mode] : "?";
}

#ifndef FERRY_HAVE_RDMA

bool ferry_rdma_available(char *why, size_t cap) {
    if (why && cap) snprintf(why, cap, "this build has no RDMA transport (libibverbs-dev was missing when it was built)");
    return false;
}

int ferry_rdma_list_devices(char *out, size_t cap) {
    if (out && cap) out[0] = '\0';
    return 0;
}

int ferry_rdma_wrap(struct ferry_conn *tcp, const struct ferry_rdma_options *o,
                    struct ferry_conn **out, struct ferry_error *err) {
    if (o->mode == FERRY_TRANSPORT_RDMA) {
        ferry_conn_close(tcp);
        *out = NULL;
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                          "RDMA required, but this build has no RDMA transport (install libibverbs-dev and rebuild)");
    }
    *out = tcp;
    return FERRY_OK;
}

#else /* FERRY_HAVE_RDMA */

#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "transport/net.h"

#define RDMA_CHUNK (256u * 1024) /* largest SEND; each receive buffer */
#define RX_DEPTH 16              /* receive ring: 4 MiB */
#define TX_SLOTS 4               /* send bounce buffers: 1 MiB */
#define SQ_DEPTH 16              /* SENDs in flight (inline ones need no slot) */
#define CQ_DEPTH (RX_DEPTH + SQ_DEPTH + 4)
#define INLINE_WANT 256
#define SEND_TAG (1ull << 32) /* wr_id of a SEND: SEND_TAG | slot (or NO_SLOT) */
#define NO_SLOT 0xffffu
#define DEFAULT_SPIN_US 50
#define DRAIN_MS 1000 /* at close: how long queued SENDs may take to leave */

/* Devices the kernel exposes (rdma_rxe, mlx5, ...): sysfs, no library. */
static int count_sysfs_devices(void) {
    DIR *d = opendir("/sys/class/infiniband");
    if (d == NULL) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* Bytes this process has pinned for RDMA, against RLIMIT_MEMLOCK. */
static atomic_ullong pinned_bytes;

struct rdma_conn {
    struct ferry_conn base; /* first, so a ferry_conn * is an rdma_conn * */
    struct ferry_conn *tcp; /* the data path until the switch, then liveness */
    struct ferry_rdma_options opts;
    char dev_opt[64], ip_opt[64];
    bool offered; /* our caps carry a queue pair */
    bool active;  /* data goes over the queue pair */
    bool broken;  /* a completion failed: skip the drain at close */

    /* verbs objects, in the order they are made */
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint8_t *rx_buf, *tx_buf;
    struct ibv_mr *rx_mr, *tx_mr;
    size_t pinned;
    unsigned unacked_events;

    char dev_name[IBV_SYSFS_NAME_MAX];
    uint8_t port;
    int gid_index;
    union ibv_gid gid;
    bool roce_v2;
    enum ibv_mtu port_mtu, mtu;
    uint32_t max_inline;
    uint32_t psn;

    uint32_t peer_qpn, peer_psn;
    union ibv_gid peer_gid;

    /* received messages not yet handed out, in arrival order */
    uint16_t rx_slot[RX_DEPTH];
    uint32_t rx_len[RX_DEPTH];
    unsigned rx_head, rx_count;
    size_t rx_pos; /* bytes of the head message already handed out */

    bool tx_busy[TX_SLOTS];
    unsigned tx_next;
    unsigned sq_inflight;
    int spin_us;

    char info[400];
};

/* ---- helpers ---------------------------------------------------------------- */

static const char *env_first(const char *a, const char *b) {
    const char *v = getenv(a);
    if (v && *v) return v;
    v = b ? getenv(b) : NULL;
    return v && *v ? v : NULL;
}

static int mtu_bytes(enum ibv_mtu m) { return 128 << m; }

/* The largest RoCE MTU whose packets (plus RoCE v2's IP/UDP/BTH/RETH/ICRC
 * headers, under 96 bytes) fit an IP MTU. */
static enum ibv_mtu mtu_for_ip_mtu(int ip_mtu) {
    static const enum ibv_mtu m[] = { IBV_MTU_4096, IBV_MTU_2048, IBV_MTU_1024, IBV_MTU_512 };
    for (int i = 0; i < 4; i++)
        if (mtu_bytes(m[i]) + 96 <= ip_mtu) return m[i];
    return IBV_MTU_256;
}

static void gid_str(const union ibv_gid *g, char *out, size_t cap) {
    if (!inet_ntop(AF_INET6, g->raw, out, (socklen_t)cap)) snprintf(out, cap, "?");
}

static bool gid_is_v4(const union ibv_gid *g, struct in_addr *a) {
    static const uint8_t pfx[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(g->raw, pfx, 12) != 0) return false;
    if (a) memcpy(&a->s_addr, g->raw + 12, 4);
    return true;
}

static void gid_from_v4(struct in_addr a, union ibv_gid *g) {
    memset(g, 0, sizeof *g);
    g->raw[10] = g->raw[11] = 0xff;
    memcpy(g->raw + 12, &a.s_addr, 4);
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- availability ------------------------------------------------------------- */

bool ferry_rdma_available(char *why, size_t cap) {
    if (count_sysfs_devices() > 0) return true;
    if (why && cap)
        snprintf(why, cap, "no RDMA device on this host (/sys/class/infiniband is empty: load a driver, "
                           "e.g. rdma_rxe with `rdma link add rxe0 type rxe netdev eth0`)");
    return false;
}

/* Memory the receive ring and the send buffers pin per connection. */
static size_t pin_need(void) { return (size_t)(RX_DEPTH + TX_SLOTS) * RDMA_CHUNK; }

/* CAP_IPC_LOCK lifts RLIMIT_MEMLOCK for memory registration. */
static bool has_ipc_lock(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return false;
    char line[256];
    unsigned long long eff = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "CapEff: %llx", &eff) == 1) break;
    fclose(f);
    return (eff >> 14) & 1; /* CAP_IPC_LOCK */
}

static int check_memlock(size_t need, struct ferry_error *err) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return FERRY_OK;
    if (has_ipc_lock()) return FERRY_OK;
    unsigned long long used = atomic_load(&pinned_bytes);
    if (used + need <= rl.rlim_cur) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_NOMEM,
                      "RDMA needs %zu KiB of locked memory per connection (%llu KiB in use), but the "
                      "memlock limit is %llu KiB: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity "
                      "for a systemd service, or memlock in /etc/security/limits.conf)",
                      need / 1024, used / 1024, (unsigned long long)rl.rlim_cur / 1024);
}

/* ---- device, port and GID --------------------------------------------------------- */

/* The GID on (ctx, port) whose raw bytes equal target, RoCE v2 before v1
 * (before IB); -1 when none. With target NULL: the first IPv4-mapped one. */
static int find_gid(struct ibv_context *ctx, uint8_t port, int tbl_len, const union ibv_gid *target,
                    bool *v2) {
    int best = -1, best_rank = 99;
    for (int i = 0; i < tbl_len; i++) {
        struct ibv_gid_entry e;
        if (ibv_query_gid_ex(ctx, port, (uint32_t)i, &e, 0) != 0) continue;
        bool match = target ? memcmp(e.gid.raw, target->raw, 16) == 0 : gid_is_v4(&e.gid, NULL);
        if (!match) continue;
        int rank = e.gid_type == IBV_GID_TYPE_ROCE_V2 ? 0 : e.gid_type == IBV_GID_TYPE_ROCE_V1 ? 1 : 2;
        if (rank < best_rank) {
            best = i;
            best_rank = rank;
            *v2 = rank == 0;
        }
        if (rank == 0) break;
    }
    return best;
}

/* Opens the device, port and GID this connection uses: the device named by
 * the options (or any), the port and GID whose address is the chosen IP
 * (the TCP connection's local address by default). */
static int open_device(struct rdma_conn *r, struct ferry_error *err) {
    const char *dev = r->opts.dev;
    const char *ip = r->opts.ip;
    union ibv_gid target;
    struct in_addr a;
    if (ip) {
        if (inet_pton(AF_INET, ip, &a) != 1)
            return ferry_fail(err, FERRY_ERR_INVALID, "RDMA IP '%s' is not an IPv4 address", ip);
    } else {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        if (getsockname(r->base.fd, (struct sockaddr *)&sa, &len) != 0 || sa.sin_family != AF_INET)
            return ferry_fail(err, FERRY_ERR_IO, "%s: no local IPv4 address to choose an RDMA GID by",
                              r->base.name);
        a = sa.sin_addr;
    }
    gid_from_v4(a, &target);
    char ipstr[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a, ipstr, sizeof ipstr);

    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (list == NULL || n == 0) {
        if (list) ibv_free_device_list(list);
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "no RDMA device on this host");
    }
    bool dev_seen = false;
    char tried[256] = "";
    for (int d = 0; d < n && r->ctx == NULL; d++) {
        const char *name = ibv_get_device_name(list[d]);
        if (dev && strcmp(dev, name) != 0) continue;
        dev_seen = true;
        struct ibv_context *ctx = ibv_open_device(list[d]);
        if (ctx == NULL) continue;
        struct ibv_device_attr da;
        if (ibv_query_device(ctx, &da) != 0) da.phys_port_cnt = 1;
        for (uint8_t p = 1; p <= da.phys_port_cnt && r->ctx == NULL; p++) {
            struct ibv_port_attr pa;
            if (ibv_query_port(ctx, p, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) continue;
            bool v2 = false;
            int idx = r->opts.gid_index;
            if (idx >= 0) {
                union ibv_gid g;
                if (idx >= pa.gid_tbl_len || ibv_query_gid(ctx, p, idx, &g) != 0) continue;
                struct ibv_gid_entry e;
                v2 = ibv_query_gid_ex(ctx, p, (uint32_t)idx, &e, 0) == 0 && e.gid_type == IBV_GID_TYPE_ROCE_V2;
            } else {
                idx = find_gid(ctx, p, pa.gid_tbl_len, &target, &v2);
                /* a device named explicitly, with no GID of the TCP address:
                 * its first IPv4 GID (a same-host peer on another device) */
                if (idx < 0 && dev && !ip) idx = find_gid(ctx, p, pa.gid_tbl_len, NULL, &v2);
            }
            if (idx < 0) continue;
            r->ctx = ctx;
            r->port = p;
            r->gid_index = idx;
            r->roce_v2 = v2;
            r->port_mtu = pa.active_mtu;
            if (ibv_query_gid(ctx, p, idx, &r->gid) != 0) r->ctx = NULL;
            snprintf(r->dev_name, sizeof r->dev_name, "%s", name);
        }
        if (r->ctx == NULL) {
            ibv_close_device(ctx);
            size_t l = strlen(tried);
            snprintf(tried + l, sizeof tried - l, "%s%s", l ? ", " : "", name);
        }
    }
    ibv_free_device_list(list);
    if (r->ctx) return FERRY_OK;
    if (dev && !dev_seen)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "RDMA device '%s' not found", dev);
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                      "no active RDMA port has a GID for %s (devices: %s); pick one with the RDMA "
                      "device or IP option (FERRY_RDMA_DEV, FERRY_RDMA_IP)",
                      ipstr, tried[0] ? tried : "none");
}

/* ---- verbs objects -------------------------------------------------------------- */

static void *pinned_alloc(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 4096, n) == 0 ? p : NULL;
}

static int post_recv(struct rdma_conn *r, unsigned slot, struct ferry_error *err) {
    struct ibv_sge sge = { (uintptr_t)(r->rx_buf + (size_t)slot * RDMA_CHUNK), RDMA_CHUNK, r->rx_mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *bad = NULL;
    int e = ibv_post_recv(r->qp, &wr, &bad);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_post_recv: %s", r->base.name, strerror(e));
    r->base.stats.recvs_posted++;
    return FERRY_OK;
}

/* PD, completion channel, CQ, QP (RESET -> INIT), the two MRs and the
 * posted receive ring: everything but the peer's address. */
static int create_qp(struct rdma_conn *r, struct ferry_error *err) {
    const char *what;
    int rc = check_memlock(pin_need(), err);
    if (rc) return rc;
    if (!(r->pd = ibv_alloc_pd(r->ctx))) { what = "ibv_alloc_pd"; goto fail; }
    if (!(r->ch = ibv_create_comp_channel(r->ctx))) { what = "ibv_create_comp_channel"; goto fail; }
    int fl = fcntl(r->ch->fd, F_GETFL);
    if (fl < 0 || fcntl(r->ch->fd, F_SETFL, fl | O_NONBLOCK) < 0) { what = "fcntl"; goto fail; }
    if (!(r->cq = ibv_create_cq(r->ctx, CQ_DEPTH, NULL, r->ch, 0))) { what = "ibv_create_cq"; goto fail; }
    struct ibv_qp_init_attr ia = {
        .send_cq = r->cq,
        .recv_cq = r->cq,
        .cap = { .max_send_wr = SQ_DEPTH, .max_recv_wr = RX_DEPTH, .max_send_sge = 1,
                 .max_recv_sge = 1, .max_inline_data = INLINE_WANT },
        .qp_type = IBV_QPT_RC,
    };
    if (!(r->qp = ibv_create_qp(r->pd, &ia))) { what = "ibv_create_qp"; goto fail; }
    r->max_inline = ia.cap.max_inline_data;
    r->psn = (r->qp->qp_num * 2654435761u) & 0xffffff;

    r->rx_buf = pinned_alloc((size_t)RX_DEPTH * RDMA_CHUNK);
    r->tx_buf = pinned_alloc((size_t)TX_SLOTS * RDMA_CHUNK);
    if (!r->rx_buf || !r->tx_buf) return ferry_fail(err, FERRY_ERR_NOMEM, "RDMA: out of memory for buffers");
    r->rx_mr = ibv_reg_mr(r->pd, r->rx_buf, (size_t)RX_DEPTH * RDMA_CHUNK,
                          IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!r->rx_mr) { what = "ibv_reg_mr (receive ring)"; goto fail; }
    r->tx_mr = ibv_reg_mr(r->pd, r->tx_buf, (size_t)TX_SLOTS * RDMA_CHUNK, IBV_ACCESS_LOCAL_WRITE);
    if (!r->tx_mr) { what = "ibv_reg_mr (send buffers)"; goto fail; }
    r->pinned = pin_need();
    atomic_fetch_add(&pinned_bytes, r->pinned);

    struct ibv_qp_attr qa = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = r->port,
        .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE,
    };
    int e = ibv_modify_qp(r->qp, &qa, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to INIT: %s", r->base.name, strerror(e));
    for (unsigned i = 0; i < RX_DEPTH; i++)
        if ((rc = post_recv(r, i, err))) return rc;
    return FERRY_OK;
fail:;
    int saved = errno;
    if (saved == ENOMEM || saved == EAGAIN)
        return ferry_fail(err, FERRY_ERR_NOMEM, "%s: %s: %s (the memlock limit? try `ulimit -l unlimited`)",
                          r->base.name, what, strerror(saved));
    return ferry_fail(err, FERRY_ERR_IO, "%s: %s: %s", r->base.name, what, strerror(saved));
}

static void destroy_verbs(struct rdma_conn *r) {
    if (r->qp) ibv_destroy_qp(r->qp);
    if (r->rx_mr) ibv_dereg_mr(r->rx_mr);
    if (r->tx_mr) ibv_dereg_mr(r->tx_mr);
    if (r->pinned) atomic_fetch_sub(&pinned_bytes, r->pinned);
    if (r->cq) {
        if (r->unacked_events) ibv_ack_cq_events(r->cq, r->unacked_events);
        ibv_destroy_cq(r->cq);
    }
    if (r->ch) ibv_destroy_comp_channel(r->ch);
    if (r->pd) ibv_dealloc_pd(r->pd);
    if (r->ctx) ibv_close_device(r->ctx);
    free(r->rx_buf);
    free(r->tx_buf);
    r->qp = NULL;
    r->rx_mr = r->tx_mr = NULL;
    r->pinned = 0;
    r->cq = NULL;
    r->ch = NULL;
    r->pd = NULL;
    r->ctx = NULL;
    r->rx_buf = r->tx_buf = NULL;
    r->unacked_events = 0;
}

/* The path MTU for ggml-compatible mode, where the peer does not say its
 * own: our port's active MTU, no more than the TCP connection's segments
 * show the path carries, and no more than the peer's link allows when its
 * GID is an address of this host (a same-host peer on another device). A
 * larger MTU on one end is the hang seen with mismatched netdev MTUs. */
static enum ibv_mtu choose_mtu(struct rdma_conn *r) {
    enum ibv_mtu m = r->port_mtu;
    int mss = 0;
    socklen_t len = sizeof mss;
    if (getsockopt(r->base.fd, IPPROTO_TCP, TCP_MAXSEG, &mss, &len) == 0 && mss > 0) {
        enum ibv_mtu t = mtu_for_ip_mtu(mss + 40);
        if (t < m) m = t;
    }
    struct in_addr peer;
    struct ifaddrs *ifs = NULL;
    if (gid_is_v4(&r->peer_gid, &peer) && getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
            if (((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr != peer.s_addr) continue;
            char path[IF_NAMESIZE + 32];
            snprintf(path, sizeof path, "/sys/class/net/%s/mtu", i->ifa_name);
            FILE *f = fopen(path, "r");
            int ip_mtu = 0;
            if (f) {
                if (fscanf(f, "%d", &ip_mtu) != 1) ip_mtu = 0;
                fclose(f);
            }
            if (ip_mtu > 0) {
                enum ibv_mtu t = mtu_for_ip_mtu(ip_mtu);
                if (t < m) m = t;
            }
        }
        freeifaddrs(ifs);
    }
    return m;
}

/* INIT -> RTR: the peer's queue pair, PSN and GID are known. */
static int to_rtr(struct rdma_conn *r, struct ferry_error *err) {
    r->mtu = choose_mtu(r);
    struct ibv_qp_attr qa = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = r->mtu,
        .dest_qp_num = r->peer_qpn,
        .rq_psn = r->peer_psn,
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = 1,
        .ah_attr = {
            .is_global = 1,
            .grh = { .dgid = r->peer_gid, .sgid_index = (uint8_t)r->gid_index, .hop_limit = 64 },
            .dlid = 0,
            .sl = 0,
            .src_path_bits = 0,
            .port_num = r->port,
        },
    };
    int e = ibv_modify_qp(r->qp, &qa,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to RTR: %s", r->base.name, strerror(e));
    return FERRY_OK;
}

/* RTR -> RTS; from here on every byte goes over the queue pair. */
static int to_rts(struct rdma_conn *r, struct ferry_error *err) {
    struct ibv_qp_attr qa = {
        .qp_state = IBV_QPS_RTS,
        .timeout = 14,
        .retry_cnt = 7,
        .rnr_retry = 7,
        .sq_psn = r->psn,
        .max_rd_atomic = 1,
    };
    int e = ibv_modify_qp(r->qp, &qa,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                              IBV_QP_MAX_QP_RD_ATOMIC);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to RTS: %s", r->base.name, strerror(e));
    char lg[INET6_ADDRSTRLEN], pg[INET6_ADDRSTRLEN];
    gid_str(&r->gid, lg, sizeof lg);
    gid_str(&r->peer_gid, pg, sizeof pg);
    snprintf(r->info, sizeof r->info, "rdma %s: device %s port %u gid[%d] %s (%s) -> %s, qpn %u -> %u, mtu %d",
             r->base.peer, r->dev_name, r->port, r->gid_index, lg, r->roce_v2 ? "RoCEv2" : "RoCEv1/IB", pg,
             r->qp->qp_num, r->peer_qpn, mtu_bytes(r->mtu));
    snprintf(r->base.name, sizeof r->base.name, "rdma %s", r->base.peer);
    r->active = true;
    return FERRY_OK;
}

/* ---- completions ---------------------------------------------------------------- */

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

/* Reaps what has completed: receives join the ready queue, SENDs free
 * their slot. Returns how many completions it took, or an error. */
static int reap(struct rdma_conn *r, struct ferry_error *err) {
    struct ibv_wc wc[16];
    int total = 0;
    for (;;) {
        int n = ibv_poll_cq(r->cq, 16, wc);
        if (n < 0) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_poll_cq failed", r->base.name);
        r->base.stats.completions += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                r->broken = true;
                bool gone = wc[i].status == IBV_WC_RETRY_EXC_ERR || wc[i].status == IBV_WC_RNR_RETRY_EXC_ERR ||
                            wc[i].status == IBV_WC_WR_FLUSH_ERR;
                return ferry_fail(err, gone ? FERRY_ERR_CLOSED : FERRY_ERR_IO, "%s: %s failed: %s%s",
                                  r->base.name, wc[i].wr_id & SEND_TAG ? "send" : "receive",
                                  ibv_wc_status_str(wc[i].status), gone ? " (the peer is gone)" : "");
            }
            if (wc[i].wr_id & SEND_TAG) {
                unsigned slot = (unsigned)(wc[i].wr_id & 0xffff);
                if (slot < TX_SLOTS) r->tx_busy[slot] = false;
                if (r->sq_inflight) r->sq_inflight--;
            } else {
                unsigned slot = (unsigned)wc[i].wr_id;
                if (slot >= RX_DEPTH || r->rx_count >= RX_DEPTH || wc[i].byte_len > RDMA_CHUNK) {
                    r->broken = true;
                    return ferry_fail(err, FERRY_ERR_IO, "%s: unexpected receive completion", r->base.name);
                }
                unsigned tail = (r->rx_head + r->rx_count) % RX_DEPTH;
                r->rx_slot[tail] = (uint16_t)slot;
                r->rx_len[tail] = wc[i].byte_len;
                r->rx_count++;
            }
        }
        total += n;
        if (n < 16) return total;
    }
}

/* Waits until at least one completion was reaped: spins briefly, then arms
 * the CQ, polls once more and sleeps on the completion channel and the
 * liveness socket, until the deadline (-1: none). */
static int progress(struct rdma_conn *r, int64_t deadline, struct ferry_error *err) {
    int n = reap(r, err);
    if (n != 0) return n < 0 ? n : FERRY_OK;
    int64_t spin_end = now_us() + r->spin_us;
    do {
        for (int i = 0; i < 64; i++) {
            n = reap(r, err);
            if (n != 0) return n < 0 ? n : FERRY_OK;
        }
    } while (now_us() < spin_end);
    for (;;) {
        int e = ibv_req_notify_cq(r->cq, 0);
        if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_req_notify_cq: %s", r->base.name, strerror(e));
        n = reap(r, err);
        if (n != 0) return n < 0 ? n : FERRY_OK;
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
            if (ibv_get_cq_event(r->ch, &cq, &ctx) == 0 && ++r->unacked_events >= 64) {
                ibv_ack_cq_events(r->cq, r->unacked_events);
                r->unacked_events = 0;
            }
        }
    }
}

/* ---- data path -------------------------------------------------------------------- */

static int post_send(struct rdma_conn *r, const void *p, uint32_t len, uint32_t lkey, unsigned slot,
                     bool inl, struct ferry_error *err) {
    struct ibv_sge sge = { (uintptr_t)p, len, lkey };
    struct ibv_send_wr wr = {
        .wr_id = SEND_TAG | slot,
        .sg_list = &sge,
        .num_sge = 1,
        .opcode = IBV_WR_SEND,
        .send_flags = IBV_SEND_SIGNALED | (inl ? IBV_SEND_INLINE : 0),
    }, *bad = NULL;
    int e = ibv_post_send(r->qp, &wr, &bad);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: ibv_post_send: %s", r->base.name, strerror(e));
    r->sq_inflight++;
    r->base.stats.sends_posted++;
    r->base.stats.syscalls++; /* a doorbell, counted like a send call */
    return FERRY_OK;
}

/* Sends segs[0..n) as one logical piece: SENDs of at most RDMA_CHUNK. A
 * chunk small enough goes inline from the caller's memory, others through
 * a send buffer. */
static int send_piece(struct rdma_conn *r, const struct iovec *segs, int n, int64_t deadline,
                      struct ferry_error *err) {
    int si = 0;
    size_t off = 0, left = 0;
    for (int i = 0; i < n; i++) left += segs[i].iov_len;
    while (left > 0) {
        while (si < n && off == segs[si].iov_len) si++, off = 0;
        size_t chunk = left < RDMA_CHUNK ? left : RDMA_CHUNK;
        int rc;
        while (r->sq_inflight >= SQ_DEPTH)
            if ((rc = progress(r, deadline, err))) return rc;
        if (chunk <= r->max_inline && chunk <= segs[si].iov_len - off) {
            rc = post_send(r, (const uint8_t *)segs[si].iov_base + off, (uint32_t)chunk, 0, NO_SLOT, true, err);
            if (rc) return rc;
            off += chunk;
        } else {
            unsigned slot = r->tx_next;
            while (r->tx_busy[slot])
                if ((rc = progress(r, deadline, err))) return rc;
            uint8_t *dst = r->tx_buf + (size_t)slot * RDMA_CHUNK;
            size_t done = 0;
            while (done < chunk) {
                while (off == segs[si].iov_len) si++, off = 0;
                size_t k = segs[si].iov_len - off;
                if (k > chunk - done) k = chunk - done;
                memcpy(dst + done, (const uint8_t *)segs[si].iov_base + off, k);
                done += k;
                off += k;
            }
            r->base.stats.copies += chunk;
            r->tx_busy[slot] = true;
            r->tx_next = (slot + 1) % TX_SLOTS;
            rc = post_send(r, dst, (uint32_t)chunk, r->tx_mr->lkey, slot, false, err);
            if (rc) return rc;
        }
        left -= chunk;
    }
    return FERRY_OK;
}

static int rdma_send(struct ferry_conn *c, const struct iovec *iov, int n, int hdr_parts, int64_t deadline,
                     struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (!r->active) {
        uint64_t s0 = r->tcp->stats.syscalls;
        int rc = r->tcp->ops->send(r->tcp, iov, n, hdr_parts, deadline, err);
        c->stats.syscalls += r->tcp->stats.syscalls - s0;
        return rc;
    }
    int rc;
    for (int i = 0; i < hdr_parts; i++) /* each header part its own SEND */
        if ((rc = send_piece(r, &iov[i], 1, deadline, err))) return rc;
    rc = send_piece(r, iov + hdr_parts, n - hdr_parts, deadline, err);
    if (rc == FERRY_ERR_TIMEOUT)
        return ferry_fail(err, rc, "%s: send not complete within %d ms (peer not receiving)", c->name,
                          c->timeouts.frame_ms);
    return rc;
}

static int rdma_recv_some(struct ferry_conn *c, void *buf, size_t len, size_t *got, int64_t deadline,
                          struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (!r->active) {
        uint64_t s0 = r->tcp->stats.syscalls, w0 = r->tcp->stats.waits;
        int rc = r->tcp->ops->recv_some(r->tcp, buf, len, got, deadline, err);
        c->stats.syscalls += r->tcp->stats.syscalls - s0;
        c->stats.waits += r->tcp->stats.waits - w0;
        return rc;
    }
    size_t done = 0;
    while (done == 0 && len > 0) {
        while (r->rx_count == 0) {
            int rc = progress(r, deadline, err);
            if (rc) return rc;
        }
        while (done < len && r->rx_count > 0) {
            unsigned slot = r->rx_slot[r->rx_head];
            size_t mlen = r->rx_len[r->rx_head];
            size_t k = mlen - r->rx_pos;
            if (k > len - done) k = len - done;
            memcpy((uint8_t *)buf + done, r->rx_buf + (size_t)slot * RDMA_CHUNK + r->rx_pos, k);
            r->base.stats.copies += k;
            done += k;
            r->rx_pos += k;
            if (r->rx_pos == mlen) { /* message used up: its buffer takes the next one */
                r->rx_head = (r->rx_head + 1) % RX_DEPTH;
                r->rx_count--;
                r->rx_pos = 0;
                int rc = post_recv(r, slot, err);
                if (rc) return rc;
            }
        }
    }
    *got = done;
    return FERRY_OK;
}

/* ---- HELLO hooks -------------------------------------------------------------------- */

static void encode_caps(const struct rdma_conn *r, uint8_t out[24]) {
    uint32_t qpn = r->qp->qp_num, psn = r->psn;
    for (int i = 0; i < 4; i++) {
        out[i] = (uint8_t)(qpn >> (8 * i));
        out[4 + i] = (uint8_t)(psn >> (8 * i));
    }
    memcpy(out + 8, r->gid.raw, 16);
}

/* The peer's caps: false when it offers no RDMA (qpn 0); an error when a
 * field is out of range. */
static int decode_caps(struct rdma_conn *r, const uint8_t *in, size_t len, bool *offered,
                       struct ferry_error *err) {
    *offered = false;
    if (len < 24) return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: %zu caps bytes (expected 24)", r->base.name, len);
    uint32_t qpn = 0, psn = 0;
    for (int i = 0; i < 4; i++) {
        qpn |= (uint32_t)in[i] << (8 * i);
        psn |= (uint32_t)in[4 + i] << (8 * i);
    }
    if (qpn == 0) return FERRY_OK;
    static const uint8_t zero[16];
    if (qpn > 0xffffff || psn > 0xffffff || memcmp(in + 8, zero, 16) == 0)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: invalid RDMA caps (qpn %#x, psn %#x%s)", r->base.name,
                          qpn, psn, memcmp(in + 8, zero, 16) == 0 ? ", zero GID" : "");
    r->peer_qpn = qpn;
    r->peer_psn = psn;
    memcpy(r->peer_gid.raw, in + 8, 16);
    *offered = true;
    return FERRY_OK;
}

static bool required(const struct rdma_conn *r) { return r->opts.mode == FERRY_TRANSPORT_RDMA; }

/* Device, queue pair and buffers; in auto mode a failure only means TCP. */
static int prepare(struct rdma_conn *r, struct ferry_error *err) {
    char why[200];
    if (!ferry_rdma_available(why, sizeof why))
        return required(r) ? ferry_fail(err, FERRY_ERR_UNSUPPORTED, "RDMA required, but %s", why)
                           : FERRY_ERR_UNSUPPORTED;
    int64_t t0 = now_us();
    int rc = open_device(r, err);
    if (rc == FERRY_OK) rc = create_qp(r, err);
    if (rc) {
        destroy_verbs(r);
        if (required(r)) {
            char m[sizeof err->msg];
            snprintf(m, sizeof m, "%s", err->msg);
            return ferry_fail(err, rc, "RDMA required, but: %s", m);
        }
        ferry_log_warn("%s: RDMA not possible, staying on TCP: %s", r->base.peer, err->msg);
        return rc;
    }
    ferry_log_debug("%s: RDMA queue pair %u on %s port %u gid[%d] ready in %.1f ms", r->base.peer,
                    r->qp->qp_num, r->dev_name, r->port, r->gid_index, (double)(now_us() - t0) / 1e3);
    r->offered = true;
    return FERRY_OK;
}

static int rdma_local_caps(struct ferry_conn *c, uint8_t *out, size_t cap, size_t *len, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    *len = 0;
    if (cap < 24) return ferry_fail(err, FERRY_ERR_INVALID, "caps buffer of %zu bytes", cap);
    if (!r->opts.server) { /* the client offers first */
        int rc = prepare(r, err);
        if (rc && required(r)) return rc;
    }
    memset(out, 0, 24);
    if (r->offered) encode_caps(r, out);
    *len = 24;
    return FERRY_OK;
}

static int rdma_peer_caps(struct ferry_conn *c, const uint8_t *in, size_t len, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    bool peer_offers;
    int rc = decode_caps(r, in, len, &peer_offers, err);
    if (rc) return rc;
    if (!peer_offers) {
        if (required(r))
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                              r->opts.server ? "%s: RDMA required, but the client offered none"
                                             : "%s: RDMA required, but the server did not accept it (no RDMA "
                                               "device there, or it runs with --transport tcp)",
                              r->base.peer);
        if (r->offered) destroy_verbs(r); /* stays TCP: free what we made */
        r->offered = false;
        return FERRY_OK;
    }
    if (r->opts.server) {
        rc = prepare(r, err);
        if (rc) return required(r) ? rc : FERRY_OK;
    } else if (!r->offered) {
        return FERRY_OK; /* a server offering to a client that did not: stay TCP */
    }
    /* The server reaches RTR before its response leaves, so the client's
     * first SEND always finds a receive posted. */
    rc = to_rtr(r, err);
    if (rc) {
        destroy_verbs(r);
        r->offered = false;
        if (r->opts.server && !required(r)) {
            ferry_log_warn("%s: RDMA not possible, staying on TCP: %s", r->base.peer, err->msg);
            return FERRY_OK;
        }
        return rc;
    }
    return FERRY_OK;
}

static int rdma_confirm(struct ferry_conn *c, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (!r->offered) return FERRY_OK; /* TCP it is */
    if (c->ahead_pos != c->ahead_len)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: peer sent data before the switch to RDMA", c->name);
    r->spin_us = DEFAULT_SPIN_US;
    const char *s = getenv("FERRY_RDMA_SPIN_US");
    if (s && *s) r->spin_us = atoi(s) < 0 ? 0 : atoi(s);
    return to_rts(r, err);
}

static void rdma_close(struct ferry_conn *c) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (r->active && !r->broken) { /* let queued SENDs leave, briefly */
        struct ferry_error e;
        int64_t deadline = ferry_transport_now_ms() + DRAIN_MS;
        while (r->sq_inflight > 0 && progress(r, deadline, &e) == FERRY_OK) {}
    }
    destroy_verbs(r);
    ferry_conn_close(r->tcp);
    free(r);
}

static const char *rdma_describe(const struct ferry_conn *c, char *out, size_t cap) {
    const struct rdma_conn *r = (const struct rdma_conn *)c;
    if (out && cap) {
        if (r->active) snprintf(out, cap, "%s", r->info);
        else snprintf(out, cap, "tcp %s", c->peer);
    }
    return r->active ? "rdma" : "tcp";
}

static const struct ferry_conn_ops rdma_ops = {
    .kind = "rdma",
    .send = rdma_send,
    .recv_some = rdma_recv_some,
    .local_caps = rdma_local_caps,
    .peer_caps = rdma_peer_caps,
    .confirm = rdma_confirm,
    .close = rdma_close,
    .describe = rdma_describe,
};

int ferry_rdma_wrap(struct ferry_conn *tcp, const struct ferry_rdma_options *o, struct ferry_conn **out,
                    struct ferry_error *err) {
    *out = NULL;
    if (o->mode != FERRY_TRANSPORT_RDMA && !ferry_rdma_available(NULL, 0)) {
        *out = tcp; /* auto, and nothing to upgrade to: plain TCP */
        return FERRY_OK;
    }
    struct rdma_conn *r = calloc(1, sizeof *r);
    if (r == NULL) {
        ferry_conn_close(tcp);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory for a connection");
    }
    ferry_conn_init(&r->base, &rdma_ops, tcp->fd);
    r->base.timeouts = tcp->timeouts;
    memcpy(r->base.name, tcp->name, sizeof r->base.name);
    memcpy(r->base.peer, tcp->peer, sizeof r->base.peer);
    memcpy(r->base.local, tcp->local, sizeof r->base.local);
    r->tcp = tcp;
    r->opts = *o;
    r->gid_index = -1;
    const char *dev = o->dev && *o->dev ? o->dev : env_first("FERRY_RDMA_DEV", "GGML_RDMA_DEV");
    const char *ip = o->ip && *o->ip ? o->ip : env_first("FERRY_RDMA_IP", NULL);
    snprintf(r->dev_opt, sizeof r->dev_opt, "%s", dev ? dev : "");
    snprintf(r->ip_opt, sizeof r->ip_opt, "%s", ip ? ip : "");
    r->opts.dev = dev ? r->dev_opt : NULL;
    r->opts.ip = ip ? r->ip_opt : NULL;
    if (r->opts.gid_index < 0) {
        const char *g = env_first("FERRY_RDMA_GID", "GGML_RDMA_GID");
        if (g) r->opts.gid_index = atoi(g);
    }
    *out = &r->base;
    return FERRY_OK;
}

int ferry_rdma_list_devices(char *out, size_t cap) {
    if (!out || !cap) return 0;
    out[0] = '\0';
    if (count_sysfs_devices() == 0) return 0;
    int n = 0, count = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    size_t len = 0;
    for (int d = 0; list && d < n; d++) {
        struct ibv_context *ctx = ibv_open_device(list[d]);
        if (!ctx) continue;
        struct ibv_device_attr da;
        if (ibv_query_device(ctx, &da) != 0) da.phys_port_cnt = 1;
        for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
            struct ibv_port_attr pa;
            if (ibv_query_port(ctx, p, &pa) != 0) continue;
            len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, "%s%s port %u: %s, mtu %d",
                                    count ? "\n" : "", ibv_get_device_name(list[d]), p,
                                    ibv_port_state_str(pa.state), mtu_bytes(pa.active_mtu));
            for (int i = 0; i < pa.gid_tbl_len && i < 64; i++) {
                struct ibv_gid_entry e;
                struct in_addr a;
                if (ibv_query_gid_ex(ctx, p, (uint32_t)i, &e, 0) != 0 || !gid_is_v4(&e.gid, &a)) continue;
                char ip[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &a, ip, sizeof ip);
                len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, ", gid[%d] %s%s", i, ip,
                                        e.gid_type == IBV_GID_TYPE_ROCE_V2 ? " (RoCEv2)" : "");
            }
            count++;
        }
        ibv_close_device(ctx);
    }
    if (list) ibv_free_device_list(list);
    return count;
}

#endif /* FERRY_HAVE_RDMA */
