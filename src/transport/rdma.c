/* The RDMA transport: a reliable-connected queue pair over rdma-core's
 * libibverbs (RoCE v2, RoCE v1 or InfiniBand), reached by upgrading an
 * established TCP connection during HELLO.
 *
 * The wire format is ggml's (docs/rpc-protocol.md sections 7 and 8), so ggml peers
 * interoperate:
 *   caps      24 bytes: qpn u32le (0 = no RDMA), psn u32le, raw GID (16);
 *   queue     RC; INIT (port, pkey 0, remote write/read + local write),
 *             RTR (path MTU, peer qpn/psn, GRH to the peer's GID),
 *             RTS (ggml: timeout 14, retry_cnt 7, rnr_retry 7; ferry: to_rts);
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

int ferry_conn_peer_counters(struct ferry_conn *c, struct ferry_conn_stats *out, struct ferry_error *err) {
    (void)c;
    memset(out, 0, sizeof *out);
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "this build has no RDMA transport");
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
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "transport/net.h"
#include "transport/rdma_internal.h"

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
static atomic_llong pinned_bytes;

size_t rdma_pinned_add(long long delta) { return (size_t)(atomic_fetch_add(&pinned_bytes, delta) + delta); }

/* ---- helpers ---------------------------------------------------------------- */

static const char *env_first(const char *a, const char *b) {
    const char *v = getenv(a);
    if (v && *v) return v;
    v = b ? getenv(b) : NULL;
    return v && *v ? v : NULL;
}

int rdma_mtu_bytes(enum ibv_mtu m) { return 128 << m; }

/* The largest RoCE MTU whose packets (plus RoCE v2's IP/UDP/BTH/RETH/ICRC
 * headers, under 96 bytes) fit an IP MTU. */
static enum ibv_mtu mtu_for_ip_mtu(int ip_mtu) {
    static const enum ibv_mtu m[] = { IBV_MTU_4096, IBV_MTU_2048, IBV_MTU_1024, IBV_MTU_512 };
    for (int i = 0; i < 4; i++)
        if (rdma_mtu_bytes(m[i]) + 96 <= ip_mtu) return m[i];
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

int rdma_check_memlock(size_t need, struct ferry_error *err) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return FERRY_OK;
    if (has_ipc_lock()) return FERRY_OK;
    unsigned long long used = (unsigned long long)atomic_load(&pinned_bytes);
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

/* Finding the device, port and GID is most of a connection's verbs setup
 * (opening every device, reading GID tables: ~8 ms of ~10 under
 * emulation), so the answer is kept per process: key (device option, IP,
 * GID index option) -> open context, port, GID index. A hit is checked
 * (port still active, GID still there) before use. Contexts are shared by
 * connections safely (each has its own protection domain) and stay open. */
#define DEV_CACHE 8
static struct {
    char key[160];
    struct ibv_context *ctx;
    char name[IBV_SYSFS_NAME_MAX];
    uint8_t port;
    int gid_index;
    bool v2;
    union ibv_gid gid;
} dev_cache[DEV_CACHE];
static int dev_cache_n;
static pthread_mutex_t dev_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void dev_key(const struct rdma_conn *r, const char *ip, char *key, size_t cap) {
    snprintf(key, cap, "%s|%s|%d", r->opts.dev ? r->opts.dev : "", ip, r->opts.gid_index);
}

static bool dev_cache_get(struct rdma_conn *r, const char *key) {
    bool hit = false;
    pthread_mutex_lock(&dev_cache_lock);
    for (int i = 0; i < dev_cache_n && i < DEV_CACHE && !hit; i++) {
        if (strcmp(dev_cache[i].key, key) != 0) continue;
        struct ibv_port_attr pa;
        union ibv_gid g;
        if (ibv_query_port(dev_cache[i].ctx, dev_cache[i].port, &pa) != 0 || pa.state != IBV_PORT_ACTIVE ||
            ibv_query_gid(dev_cache[i].ctx, dev_cache[i].port, dev_cache[i].gid_index, &g) != 0 ||
            memcmp(g.raw, dev_cache[i].gid.raw, 16) != 0)
            break; /* stale: search again */
        r->ctx = dev_cache[i].ctx;
        r->ctx_cached = true;
        r->port = dev_cache[i].port;
        r->gid_index = dev_cache[i].gid_index;
        r->roce_v2 = dev_cache[i].v2;
        r->gid = g;
        r->port_mtu = pa.active_mtu;
        r->max_msg = pa.max_msg_sz;
        snprintf(r->dev_name, sizeof r->dev_name, "%s", dev_cache[i].name);
        hit = true;
    }
    pthread_mutex_unlock(&dev_cache_lock);
    return hit;
}

static void dev_cache_put(struct rdma_conn *r, const char *key) {
    pthread_mutex_lock(&dev_cache_lock);
    int slot = -1;
    for (int i = 0; i < dev_cache_n; i++)
        if (strcmp(dev_cache[i].key, key) == 0) slot = i; /* a stale entry: replaced (its context stays open) */
    if (slot < 0 && dev_cache_n < DEV_CACHE) slot = dev_cache_n++;
    if (slot >= 0) {
        snprintf(dev_cache[slot].key, sizeof dev_cache[slot].key, "%s", key);
        dev_cache[slot].ctx = r->ctx;
        snprintf(dev_cache[slot].name, sizeof dev_cache[slot].name, "%s", r->dev_name);
        dev_cache[slot].port = r->port;
        dev_cache[slot].gid_index = r->gid_index;
        dev_cache[slot].v2 = r->roce_v2;
        dev_cache[slot].gid = r->gid;
        r->ctx_cached = true;
    }
    pthread_mutex_unlock(&dev_cache_lock);
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
    char key[160];
    dev_key(r, ipstr, key, sizeof key);
    if (dev_cache_get(r, key)) return FERRY_OK;

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
            r->max_msg = pa.max_msg_sz;
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
    if (r->ctx) {
        dev_cache_put(r, key);
        return FERRY_OK;
    }
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

/* INIT, and the whole receive ring posted: where a new queue pair starts,
 * and where a reset one starts again. */
static int to_init(struct rdma_conn *r, struct ferry_error *err) {
    struct ibv_qp_attr qa = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = r->port,
        .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE,
    };
    int e = ibv_modify_qp(r->qp, &qa, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to INIT: %s", r->base.name, strerror(e));
    r->rx_head = r->rx_count = 0;
    r->rx_pos = 0;
    for (unsigned i = 0; i < RX_DEPTH; i++) {
        int rc = rdma_post_recv(r, i, err);
        if (rc) return rc;
    }
    return FERRY_OK;
}

/* PD, completion channel, CQ, QP (RESET -> INIT), the two MRs and the
 * posted receive ring: everything but the peer's address. */
static int create_qp(struct rdma_conn *r, struct ferry_error *err) {
    const char *what;
    int rc = rdma_check_memlock(pin_need(), err);
    if (rc) return rc;
    if (!(r->pd = ibv_alloc_pd(r->ctx))) { what = "ibv_alloc_pd"; goto fail; }
    if (!(r->ch = ibv_create_comp_channel(r->ctx))) { what = "ibv_create_comp_channel"; goto fail; }
    int fl = fcntl(r->ch->fd, F_GETFL);
    if (fl < 0 || fcntl(r->ch->fd, F_SETFL, fl | O_NONBLOCK) < 0) { what = "fcntl"; goto fail; }
    if (!(r->cq = ibv_create_cq(r->ctx, CQ_DEPTH, NULL, r->ch, 0))) { what = "ibv_create_cq"; goto fail; }
    struct ibv_qp_init_attr ia = {
        .send_cq = r->cq,
        .recv_cq = r->cq,
        .cap = { .max_send_wr = SQ_DEPTH, .max_recv_wr = RX_DEPTH, .max_send_sge = MAX_SGE,
                 .max_recv_sge = 1, .max_inline_data = INLINE_WANT },
        .qp_type = IBV_QPT_RC,
    };
    if (!(r->qp = ibv_create_qp(r->pd, &ia))) { what = "ibv_create_qp"; goto fail; }
    r->max_inline = ia.cap.max_inline_data;
    r->psn = (r->qp->qp_num * 2654435761u) & 0xffffff;

    r->rx_buf = pinned_alloc((size_t)RX_DEPTH * RDMA_CHUNK);
    r->tx_buf = pinned_alloc((size_t)TX_SLOTS * RDMA_CHUNK);
    if (!r->rx_buf || !r->tx_buf) return ferry_fail(err, FERRY_ERR_NOMEM, "RDMA: out of memory for buffers");
    /* the ring only ever receives SENDs: no remote access to it */
    r->rx_mr = ibv_reg_mr(r->pd, r->rx_buf, (size_t)RX_DEPTH * RDMA_CHUNK, IBV_ACCESS_LOCAL_WRITE);
    if (!r->rx_mr) { what = "ibv_reg_mr (receive ring)"; goto fail; }
    r->tx_mr = ibv_reg_mr(r->pd, r->tx_buf, (size_t)TX_SLOTS * RDMA_CHUNK, IBV_ACCESS_LOCAL_WRITE);
    if (!r->tx_mr) { what = "ibv_reg_mr (send buffers)"; goto fail; }
    r->pinned = pin_need();
    rdma_pinned_add((long long)r->pinned);
    return to_init(r, err);
fail:;
    int saved = errno;
    if (saved == ENOMEM || saved == EAGAIN)
        return ferry_fail(err, FERRY_ERR_NOMEM, "%s: %s: %s (the memlock limit? try `ulimit -l unlimited`)",
                          r->base.name, what, strerror(saved));
    return ferry_fail(err, FERRY_ERR_IO, "%s: %s: %s", r->base.name, what, strerror(saved));
}

static void destroy_verbs(struct rdma_conn *r) {
    if (r->qp) ibv_destroy_qp(r->qp);
    rdma_release_regions(r);
    if (r->rx_mr) ibv_dereg_mr(r->rx_mr);
    if (r->tx_mr) ibv_dereg_mr(r->tx_mr);
    if (r->pinned) rdma_pinned_add(-(long long)r->pinned);
    if (r->cq) {
        if (r->unacked_events) ibv_ack_cq_events(r->cq, r->unacked_events);
        ibv_destroy_cq(r->cq);
    }
    if (r->ch) ibv_destroy_comp_channel(r->ch);
    if (r->pd) ibv_dealloc_pd(r->pd);
    if (r->ctx && !r->ctx_cached) ibv_close_device(r->ctx);
    r->ctx_cached = false;
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
    r->offered = false;
}

/* The largest path MTU this side can use: our port's active MTU, no more
 * than the TCP connection's segments show the path carries, and no more
 * than the peer's link allows when its GID is an address of this host (a
 * same-host peer on another device). A larger MTU on one end is the hang
 * seen with mismatched netdev MTUs. ggml peers do not say theirs, so with
 * them this is the MTU; ferry peers agree on the smaller of two. */
static enum ibv_mtu choose_mtu(struct rdma_conn *r) {
    enum ibv_mtu m = r->port_mtu;
    const char *cap = getenv("FERRY_RDMA_MTU"); /* a cap the user sets: 256 .. 4096 */
    for (enum ibv_mtu i = IBV_MTU_256; cap && *cap && i <= IBV_MTU_4096; i++)
        if (atoi(cap) == rdma_mtu_bytes(i) && i < m) m = i;
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
static int to_rtr(struct rdma_conn *r, enum ibv_mtu mtu, struct ferry_error *err) {
    r->mtu = mtu;
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

static void describe_update(struct rdma_conn *r) {
    char lg[INET6_ADDRSTRLEN], pg[INET6_ADDRSTRLEN];
    gid_str(&r->gid, lg, sizeof lg);
    gid_str(&r->peer_gid, pg, sizeof pg);
    const char *framing = r->state == ST_FERRY     ? "ferry framing"
                          : r->state == ST_PENDING ? "framing not yet known"
                                                   : "ggml framing";
    int n = snprintf(r->info, sizeof r->info,
                     "rdma %s: device %s port %u gid[%d] %s (%s) -> %s, qpn %u -> %u, mtu %d, %s", r->base.peer,
                     r->dev_name, r->port, r->gid_index, lg, r->roce_v2 ? "RoCEv2" : "RoCEv1/IB", pg,
                     r->qp ? r->qp->qp_num : 0, r->peer_qpn, rdma_mtu_bytes(r->mtu), framing);
    if (r->state == ST_FERRY && n > 0 && (size_t)n < sizeof r->info)
        snprintf(r->info + n, sizeof r->info - (size_t)n, " (%u credits, WRITE from %llu KiB)", r->peer_depth,
                 (unsigned long long)r->write_min / 1024);
}

/* The liveness socket carries nothing once RDMA runs, so a peer host that
 * vanishes (power, cable) without closing it would go unnoticed while the
 * queue pair is idle: TCP keepalive probes it. A probe every second after
 * 3 s of silence, 6 unanswered ones to give up: the peer is declared dead
 * 9 s after it went silent, and a loss of up to ~5 s on the TCP path
 * (an answered probe resets the count) is survived. */
static void keepalive(int fd) {
    int on = 1, idle = KEEPALIVE_IDLE_S, intvl = KEEPALIVE_INTVL_S, cnt = KEEPALIVE_CNT;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* $NAME as an integer in [lo, hi], else def. */
static int env_int(const char *name, int lo, int hi, int def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) {
        ferry_log_warn("$%s=%s: expected %d..%d, using %d", name, s, lo, hi, def);
        return def;
    }
    return (int)v;
}

/* RTR -> RTS; from here on every byte goes over the queue pair.
 *
 * The retry budget: a send is retried when no acknowledgement came within
 * the ack timeout (4.096 us * 2^ACK_TIMEOUT: 1.07 s), RETRY_CNT times
 * (6), so the queue pair fails a send only after 7 tries over at least
 * 7.5 s without an acknowledgement. That rides out what a live network
 * does (an ARP/ND refresh, a link flap, a switch reconverging, a pause
 * storm); a dead peer is told by the liveness socket instead (it closes,
 * or keepalive gives up). retry_cnt is 6, not ggml's 7: Soft-RoCE takes 7
 * to mean "retry forever" (as the spec says only of rnr_retry), and then
 * a partition that leaves TCP up would never fail a send. Both can be
 * overridden ($FERRY_RDMA_ACK_TIMEOUT, $FERRY_RDMA_RETRY_CNT) to measure
 * other budgets. */
static int to_rts(struct rdma_conn *r, enum rdma_state state, struct ferry_error *err) {
    struct ibv_qp_attr qa = {
        .qp_state = IBV_QPS_RTS,
        .timeout = (uint8_t)env_int("FERRY_RDMA_ACK_TIMEOUT", 1, 31, ACK_TIMEOUT),
        .retry_cnt = (uint8_t)env_int("FERRY_RDMA_RETRY_CNT", 0, 7, RETRY_CNT),
        .rnr_retry = 7,
        .sq_psn = r->psn,
        .max_rd_atomic = 1,
    };
    r->ack_timeout = qa.timeout;
    r->retry_cnt = qa.retry_cnt;
    int e = ibv_modify_qp(r->qp, &qa,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                              IBV_QP_MAX_QP_RD_ATOMIC);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to RTS: %s", r->base.name, strerror(e));
    r->spin_cap_us = DEFAULT_SPIN_CAP_US;
    const char *s = getenv("FERRY_RDMA_SPIN_US");
    if (s && *s) r->spin_cap_us = atoi(s) < 0 ? 0 : atoi(s);
    r->send_chunk = RDMA_CHUNK;
    r->state = state;
    keepalive(r->base.fd);
    snprintf(r->base.name, sizeof r->base.name, "rdma %s", r->base.peer);
    describe_update(r);
    return FERRY_OK;
}

/* Back to RESET and up to RTR again with another path MTU (which only the
 * INIT -> RTR step sets). Nothing has been sent on the queue pair yet; the
 * reset drops the posted receives, so the ring is posted afresh. */
static int requalify(struct rdma_conn *r, enum ibv_mtu mtu, struct ferry_error *err) {
    struct ibv_qp_attr qa = { .qp_state = IBV_QPS_RESET };
    int e = ibv_modify_qp(r->qp, &qa, IBV_QP_STATE);
    if (e) return ferry_fail(err, FERRY_ERR_IO, "%s: queue pair to RESET: %s", r->base.name, strerror(e));
    struct ibv_wc wc[16];
    while (ibv_poll_cq(r->cq, 16, wc) > 0) {} /* flushes of the old ring, if the device made any */
    int rc = to_init(r, err);
    return rc ? rc : to_rtr(r, mtu, err);
}

/* ---- HELLO hooks -------------------------------------------------------------------- */

static void encode_caps(const struct rdma_conn *r, uint8_t out[24]) {
    ferry_put_le32(out, r->qp->qp_num);
    ferry_put_le32(out + 4, r->psn);
    memcpy(out + 8, r->gid.raw, 16);
}

/* The peer's caps: false when it offers no RDMA (qpn 0); an error when a
 * field is out of range. */
static int decode_caps(struct rdma_conn *r, const uint8_t *in, size_t len, bool *offered,
                       struct ferry_error *err) {
    *offered = false;
    if (len < 24) return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: %zu caps bytes (expected 24)", r->base.name, len);
    uint32_t qpn = ferry_get_le32(in), psn = ferry_get_le32(in + 4);
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
    if (!ferry_rdma_available(why, sizeof why)) {
        r->refusal = FERRY_RDMA_REFUSED_NO_DEVICE;
        return required(r) ? ferry_fail(err, FERRY_ERR_UNSUPPORTED, "RDMA required, but %s", why)
                           : FERRY_ERR_UNSUPPORTED;
    }
    int64_t t0 = now_us();
    int rc = open_device(r, err);
    int64_t t1 = now_us();
    if (rc) r->refusal = FERRY_RDMA_REFUSED_NO_GID;
    if (rc == FERRY_OK && (rc = create_qp(r, err)))
        r->refusal = rc == FERRY_ERR_NOMEM ? FERRY_RDMA_REFUSED_MEMLOCK : FERRY_RDMA_REFUSED_SETUP;
    if (rc == FERRY_OK && r->max_msg == 0) r->max_msg = 1u << 20; /* a device that does not say */
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
    ferry_log_debug("%s: RDMA queue pair %u on %s port %u gid[%d] ready in %.1f ms (device %.1f ms)", r->base.peer,
                    r->qp->qp_num, r->dev_name, r->port, r->gid_index, (double)(now_us() - t0) / 1e3,
                    (double)(t1 - t0) / 1e3);
    r->offered = true;
    r->refusal = FERRY_RDMA_REFUSED_NONE;
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
                                             : "%s: RDMA required, but the server did not accept it",
                              r->base.peer);
        if (r->offered) destroy_verbs(r); /* stays TCP: free what we made */
        return FERRY_OK;
    }
    if (!r->opts.server) return FERRY_OK; /* the client moves on in confirm, once it knows the framing */
    rc = prepare(r, err);
    if (rc) return required(r) ? rc : FERRY_OK;
    /* The server reaches RTR before its response leaves, so the client's
     * first SEND always finds a receive posted. */
    rc = to_rtr(r, choose_mtu(r), err);
    if (rc) {
        destroy_verbs(r);
        r->refusal = FERRY_RDMA_REFUSED_SETUP;
        if (!required(r)) {
            ferry_log_warn("%s: RDMA not possible, staying on TCP: %s", r->base.peer, err->msg);
            return FERRY_OK;
        }
        return rc;
    }
    return FERRY_OK;
}

/* ---- the ferry negotiation (over TCP, after HELLO) ------------------------------------- *
 * 96 bytes each way: "FRDM", version 1, status (0 switch, 1 refuse), pad,
 * u32 path MTU in bytes, u32 receive ring depth, u32 receive buffer size,
 * u32 features (REC_FEAT_*), 72 bytes reason (NUL-terminated). */
#define REC_SIZE 96
#define REC_VERSION 1
#define REC_TIMEOUT_MS 5000

struct record {
    uint8_t status;
    uint32_t mtu, depth, rx_size, features;
    char reason[72];
};

static void set_reason(struct record *m, const char *why) {
    size_t n = strnlen(why, sizeof m->reason - 1);
    memcpy(m->reason, why, n);
    m->reason[n] = '\0';
}

static void rec_encode(const struct record *m, uint8_t out[REC_SIZE]) {
    memset(out, 0, REC_SIZE);
    memcpy(out, "FRDM", 4);
    out[4] = REC_VERSION;
    out[5] = m->status;
    ferry_put_le32(out + 8, m->mtu);
    ferry_put_le32(out + 12, m->depth);
    ferry_put_le32(out + 16, m->rx_size);
    ferry_put_le32(out + 20, m->features);
    snprintf((char *)out + 24, 72, "%s", m->reason);
}

static bool mtu_from_bytes(uint32_t b, enum ibv_mtu *m) {
    for (enum ibv_mtu i = IBV_MTU_256; i <= IBV_MTU_4096; i++)
        if ((uint32_t)rdma_mtu_bytes(i) == b) return *m = i, true;
    return false;
}

static int rec_decode(struct rdma_conn *r, const uint8_t in[REC_SIZE], struct record *m, struct ferry_error *err) {
    if (memcmp(in, "FRDM", 4) != 0 || in[4] != REC_VERSION || in[5] > 1)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: not a ferry RDMA record (or another version)", r->base.name);
    m->status = in[5];
    m->mtu = ferry_get_le32(in + 8);
    m->depth = ferry_get_le32(in + 12);
    m->rx_size = ferry_get_le32(in + 16);
    m->features = ferry_get_le32(in + 20);
    memcpy(m->reason, in + 24, 72);
    m->reason[71] = '\0';
    enum ibv_mtu mtu;
    if (m->status == 0 && (!mtu_from_bytes(m->mtu, &mtu) || m->depth < 4 || m->depth > 4096 || m->rx_size < 4096))
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: ferry RDMA record out of range (mtu %u, depth %u, buffer %u)",
                          r->base.name, m->mtu, m->depth, m->rx_size);
    return FERRY_OK;
}

static int rec_send(struct rdma_conn *r, const struct record *m, struct ferry_error *err) {
    uint8_t b[REC_SIZE];
    rec_encode(m, b);
    struct iovec v = { b, sizeof b };
    return r->tcp->ops->send(r->tcp, &v, 1, 1, ferry_transport_deadline_after(REC_TIMEOUT_MS), err);
}

static int rec_recv(struct rdma_conn *r, struct record *m, struct ferry_error *err) {
    uint8_t b[REC_SIZE];
    size_t have = 0;
    int64_t deadline = ferry_transport_deadline_after(REC_TIMEOUT_MS);
    while (have < sizeof b) {
        size_t got = 0;
        int rc = r->tcp->ops->recv_some(r->tcp, b + have, sizeof b - have, &got, deadline, err);
        if (rc) return rc;
        have += got;
    }
    return rec_decode(r, b, m, err);
}

/* Ours: what this side receives into, and what it proposes. A STATS
 * answer goes inline, so only a queue pair that can send it offers it. */
static struct record rec_ours(const struct rdma_conn *r, enum ibv_mtu mtu) {
    struct record m = { .status = 0, .mtu = (uint32_t)rdma_mtu_bytes(mtu), .depth = RX_DEPTH,
                        .rx_size = RDMA_CHUNK, .features = REC_FEAT_WRITE | REC_FEAT_SOLICITED };
    if (r->max_inline >= STATS_BYTES) m.features |= REC_FEAT_STATS;
    return m;
}

static void enter_ferry(struct rdma_conn *r, const struct record *peer) {
    r->state = ST_FERRY;
    r->peer_depth = peer->depth;
    r->tx_credits = peer->depth;
    r->rx_unreturned = 0;
    r->send_chunk = peer->rx_size < RDMA_CHUNK ? peer->rx_size : RDMA_CHUNK;
    r->features = peer->features & rec_ours(r, r->mtu).features; /* what both sides have */
    r->write_min = (peer->features & REC_FEAT_WRITE) ? DEFAULT_WRITE_MIN : UINT64_MAX;
    const char *w = getenv("FERRY_RDMA_WRITE_MIN");
    if (w && *w && (peer->features & REC_FEAT_WRITE)) r->write_min = strtoull(w, NULL, 0) ? strtoull(w, NULL, 0) : 1;
    describe_update(r);
}

/* Both sides stay on TCP: free the verbs objects. */
static void back_to_tcp(struct rdma_conn *r, int refusal) {
    destroy_verbs(r);
    r->state = ST_TCP;
    r->refusal = refusal;
    snprintf(r->base.name, sizeof r->base.name, "tcp %s", r->base.peer);
}

/* Server, in ST_PENDING: the client's record arrived on the TCP socket, so
 * the client is ferry. Agree on the smaller path MTU (resetting our queue
 * pair if it must come down), answer, and switch; or stay on TCP together
 * when either side refuses. */
int rdma_server_record(struct rdma_conn *r, struct ferry_error *err) {
    struct record peer;
    int rc = rec_recv(r, &peer, err);
    if (rc) {
        r->broken = true;
        return rc;
    }
    if (peer.status != 0) {
        ferry_log_warn("%s: the client refused RDMA (%s): staying on TCP", r->base.peer, peer.reason);
        back_to_tcp(r, FERRY_RDMA_REFUSED_NONE);
        if (required(r)) return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: RDMA required, but the client refused it: %s", r->base.peer, peer.reason);
        return FERRY_OK;
    }
    enum ibv_mtu want = IBV_MTU_256;
    mtu_from_bytes(peer.mtu, &want);
    struct record ours = rec_ours(r, want < r->mtu ? want : r->mtu);
    if (want < r->mtu) {
        struct ferry_error e;
        if (requalify(r, want, &e) || to_rts(r, ST_PENDING, &e)) {
            ours.status = 1;
            set_reason(&ours, e.msg);
        }
    }
    if ((rc = rec_send(r, &ours, err))) {
        r->broken = true;
        return rc;
    }
    if (ours.status != 0) {
        ferry_log_warn("%s: RDMA refused, staying on TCP: %s", r->base.peer, ours.reason);
        back_to_tcp(r, FERRY_RDMA_REFUSED_SETUP);
        return FERRY_OK;
    }
    enter_ferry(r, &peer);
    ferry_log_info("%s: transport %s", r->base.peer, r->info);
    return FERRY_OK;
}

/* Client, the server advertised the extension: RTR at the MTU we can do,
 * tell the server (or refuse, saying why), take its answer (the agreed MTU
 * and its ring) and only then switch. Nothing is ever sent on the queue
 * pair before both sides said yes. */
static int client_negotiate(struct rdma_conn *r, struct ferry_error *err) {
    enum ibv_mtu mtu = choose_mtu(r);
    struct ferry_error e;
    struct record ours = rec_ours(r, mtu);
    if (to_rtr(r, mtu, &e)) {
        ours.status = 1;
        set_reason(&ours, e.msg);
    }
    int rc = rec_send(r, &ours, err);
    if (rc == FERRY_OK && ours.status != 0) {
        back_to_tcp(r, FERRY_RDMA_REFUSED_SETUP);
        if (required(r)) return ferry_fail(err, FERRY_ERR_IO, "RDMA required, but: %s", e.msg);
        ferry_log_warn("%s: RDMA not possible, staying on TCP: %s", r->base.peer, e.msg);
        return FERRY_OK;
    }
    struct record peer;
    if (rc == FERRY_OK) rc = rec_recv(r, &peer, err);
    if (rc) return rc;
    if (peer.status != 0) {
        back_to_tcp(r, FERRY_RDMA_REFUSED_SETUP);
        if (required(r))
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: RDMA required, but the server refused it: %s",
                              r->base.peer, peer.reason);
        ferry_log_warn("%s: the server refused RDMA (%s): staying on TCP", r->base.peer, peer.reason);
        return FERRY_OK;
    }
    enum ibv_mtu agreed = IBV_MTU_256;
    mtu_from_bytes(peer.mtu, &agreed);
    if (agreed > mtu)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: server agreed on a path MTU of %u, above our %d",
                          r->base.peer, peer.mtu, rdma_mtu_bytes(mtu));
    if (agreed < mtu && (rc = requalify(r, agreed, err))) return rc;
    if ((rc = to_rts(r, ST_FERRY, err))) return rc;
    enter_ferry(r, &peer);
    return FERRY_OK;
}

static int rdma_confirm(struct ferry_conn *c, bool ext, struct ferry_error *err) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (!r->offered || (!r->opts.server && r->peer_qpn == 0)) { /* TCP it is */
        if (r->offered) destroy_verbs(r);
        return FERRY_OK;
    }
    if (c->ahead_pos != c->ahead_len)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: peer sent data before the switch to RDMA", c->name);
    if (r->opts.server) return to_rts(r, ext ? ST_PENDING : ST_GGML, err);
    if (ext) return client_negotiate(r, err);
    int rc = to_rtr(r, choose_mtu(r), err);
    return rc ? rc : to_rts(r, ST_GGML, err);
}

static int rdma_refusal(const struct ferry_conn *c) { return ((const struct rdma_conn *)c)->refusal; }

static void rdma_close(struct ferry_conn *c) {
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (r->state != ST_TCP && !r->broken) rdma_drain(r);
    destroy_verbs(r);
    ferry_conn_close(r->tcp);
    free(r);
}

static const char *rdma_describe(const struct ferry_conn *c, char *out, size_t cap) {
    const struct rdma_conn *r = (const struct rdma_conn *)c;
    bool on = r->state != ST_TCP;
    if (out && cap) {
        if (on) snprintf(out, cap, "%s", r->info);
        else if (r->refusal) snprintf(out, cap, "tcp %s (RDMA not used: %s)", c->peer, ferry_rdma_refusal_text(r->refusal));
        else snprintf(out, cap, "tcp %s", c->peer);
    }
    return on ? "rdma" : "tcp";
}

static const struct ferry_conn_ops rdma_ops = {
    .kind = "rdma",
    .send = rdma_send,
    .recv_some = rdma_recv_some,
    .reg_mem = rdma_reg_mem,
    .unreg_mem = rdma_unreg_mem,
    .local_caps = rdma_local_caps,
    .peer_caps = rdma_peer_caps,
    .confirm = rdma_confirm,
    .offer_sink = rdma_offer_sink,
    .refusal = rdma_refusal,
    .close = rdma_close,
    .describe = rdma_describe,
};

int ferry_conn_peer_counters(struct ferry_conn *c, struct ferry_conn_stats *out, struct ferry_error *err) {
    memset(out, 0, sizeof *out);
    struct rdma_conn *r = (struct rdma_conn *)c;
    if (c->ops != &rdma_ops || r->state != ST_FERRY || !(r->features & REC_FEAT_STATS))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: the peer's counters need ferry's RDMA framing", c->name);
    return rdma_query_stats(r, out, ferry_transport_deadline_after(5000), err);
}

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
                                    ibv_port_state_str(pa.state), rdma_mtu_bytes(pa.active_mtu));
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

/* With or without RDMA in the build: --transport tcp leaves the connection
 * bare and remembers why, anything else asks ferry_rdma_wrap. */
int ferry_conn_offer_upgrade(struct ferry_conn *tcp, const struct ferry_rdma_options *o,
                             struct ferry_conn **out, struct ferry_error *err) {
    if (o->mode == FERRY_TRANSPORT_TCP) {
        tcp->refusal = FERRY_RDMA_REFUSED_TCP_ONLY;
        *out = tcp;
        return FERRY_OK;
    }
    return ferry_rdma_wrap(tcp, o, out, err);
}
