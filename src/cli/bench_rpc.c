/* ferry bench rpc: what a ggml RPC server costs over a link, measured
 * against the bare link between the same two endpoints.
 *
 * Every RPC figure has a bare-TCP twin moving the same bytes the same way:
 * GET_ALIGNMENT (13-byte request, 16-byte answer) against a 13/16-byte
 * ping-pong; GRAPH_RECOMPUTE + a 64-byte GET_TENSOR against a 334/72-byte
 * ping-pong; SET_TENSOR + a GET_ALIGNMENT that proves delivery against a
 * sink transfer + its 1-byte ack; GET_TENSOR against a source transfer.
 * CPU per operation: this thread's getrusage (the in-process net peer runs
 * in other threads), and the server's own counters through ferry's
 * FERRY_STATS extension when the server is ferry's (else n/a).
 * Over RDMA, what one small request costs the transport on each side:
 * work requests posted, completions, sleeps on the completion channel and
 * wake-ups from it; the server's side through the transport's own STATS
 * message (ferry framing only). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/bench.h"
#include "cli/opts.h"
#include "client/internal.h" /* the connection, for its transport's counters */
#include "ferry/client.h"
#include "transport/transport.h"

#define TIME_CAP_S 10.0       /* per latency measure */
#define BW_TARGET_S 0.5       /* per bandwidth measure (--quick: 0.1) */
#define BW_MAX_REPS 10000
#define GRAPH_REQ_BYTES 334   /* GRAPH_RECOMPUTE 9+4 and GET_TENSOR 9+312 */
#define GRAPH_RSP_BYTES 72    /* 8 + 64 */
#define NA -1.0               /* "not available" in results */
#define COUNT_REQS 500        /* small requests in a row for the per-request counters */

struct rpc_opts {
    const char *rpc, *net;
    bool json, quick, quiet;
    int iterations;
    uint64_t max_size;
    int transport; /* FERRY_TRANSPORT_* */
    const char *rdma_dev, *rdma_ip;
    int hello_timeout_ms; /* 0: the client's default */
};

struct bench {
    struct rpc_opts o;
    struct ferry_client *c;
    bool is_ferry;
    int net_fd;
    /* tiny graph: out = a + b, 16 floats each */
    struct ferry_remote_buffer small;
    struct ferry_tensor a, b, out;
    /* bandwidth: one I8 tensor over the largest size */
    struct ferry_remote_buffer big;
    struct ferry_tensor t;
    uint8_t *host;
    int step, n_steps;
};

/* CPU marks: this thread, and the server's counters when it reports them. */
struct cpu_mark {
    uint64_t client_ns, server_ns;
    bool server_ok;
};

static void cpu_mark(struct bench *b, struct cpu_mark *m) {
    m->server_ok = false;
    m->server_ns = 0;
    if (b->c && b->is_ferry) {
        struct ferry_client_server_stats st;
        if (ferry_client_server_stats(b->c, &st, NULL) == FERRY_OK) {
            m->server_ok = true;
            m->server_ns = st.cpu_user_ns + st.cpu_sys_ns;
        }
    }
    m->client_ns = bench_thread_cpu_ns(); /* after the stats call: it is not the op's cost */
}

struct cpu_cost {
    double client_us, server_us; /* per operation; server NA when unknown */
};

static void cpu_cost(const struct cpu_mark *m0, struct cpu_mark *m1, struct bench *b, int ops,
                     struct cpu_cost *out) {
    uint64_t client_end = bench_thread_cpu_ns();
    cpu_mark(b, m1);
    m1->client_ns = client_end;
    out->client_us = ops ? (double)(m1->client_ns - m0->client_ns) / 1e3 / ops : NA;
    out->server_us = m0->server_ok && m1->server_ok && ops ? (double)(m1->server_ns - m0->server_ns) / 1e3 / ops : NA;
}

static void progress(struct bench *b, const char *fmt, const char *what) {
    b->step++;
    if (!b->o.quiet) {
        fprintf(stderr, "bench: [%d/%d] ", b->step, b->n_steps);
        fprintf(stderr, fmt, what);
        fputc('\n', stderr);
    }
}

/* ---- round trips ------------------------------------------------------------- */

struct rtt {
    struct bench_latency lat;
    struct cpu_cost cpu;
    uint32_t req, rsp; /* bare TCP only */
};

typedef int (*op_fn)(struct bench *b, uint64_t size, struct ferry_error *err);

static int op_alignment(struct bench *b, uint64_t size, struct ferry_error *err) {
    (void)size;
    uint64_t al;
    return ferry_client_alignment(b->c, 0, &al, err);
}

static int op_graph(struct bench *b, uint64_t size, struct ferry_error *err) {
    (void)size;
    float res[16];
    struct ferry_tensor *nodes[1] = { &b->out };
    int rc = ferry_client_graph_compute(b->c, 0, nodes, 1, err); /* RECOMPUTE after the first */
    if (rc == FERRY_OK) rc = ferry_client_get_tensor(b->c, &b->out, 0, res, sizeof res, err);
    return rc;
}

/* A bare-TCP ping-pong and its RPC twin, interleaved in ROUNDS blocks so
 * both see the same machine (scheduler, frequency, neighbours): a ratio of
 * two runs minutes apart would measure the noise. */
#define ROUNDS 10

static int rtt_pair(struct bench *b, uint32_t req, uint32_t rsp, op_fn fn, struct rtt *tcp,
                    struct rtt *rpc, struct ferry_error *err) {
    int it = b->o.iterations, warm = it / 10 + 1, rc = FERRY_OK, n_tcp = 0, n_rpc = 0;
    double *st = malloc(sizeof(double) * (size_t)it), *sr = malloc(sizeof(double) * (size_t)it);
    if (!st || !sr) {
        free(st);
        free(sr);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < warm && rc == FERRY_OK; i++) rc = fn(b, 0, err);
    int got = 0;
    if (rc == FERRY_OK && b->net_fd >= 0)
        rc = bench_net_pingpong(b->net_fd, req, rsp, warm, 0, TIME_CAP_S, st, &got, err);
    uint64_t tcp_cpu = 0, rpc_cpu = 0, srv_ns = 0;
    bool srv_ok = true;
    double t_end = bench_now_s() + 2 * TIME_CAP_S;
    for (int round = 0; round < ROUNDS && rc == FERRY_OK && bench_now_s() < t_end; round++) {
        int block = it / ROUNDS + (round < it % ROUNDS);
        if (b->net_fd >= 0) { /* no bare link: the RPC side alone */
            uint64_t c0 = bench_thread_cpu_ns();
            rc = bench_net_pingpong(b->net_fd, req, rsp, 0, block, TIME_CAP_S / ROUNDS, st + n_tcp, &got, err);
            tcp_cpu += bench_thread_cpu_ns() - c0;
            n_tcp += got;
            if (rc) break;
        }
        struct cpu_mark m0, m1;
        cpu_mark(b, &m0);
        double t_block = bench_now_s() + TIME_CAP_S / ROUNDS;
        for (int i = 0; i < block && rc == FERRY_OK; i++) {
            double t0 = bench_now_s();
            rc = fn(b, 0, err);
            double t1 = bench_now_s();
            sr[n_rpc++] = (t1 - t0) * 1e6;
            if (t1 > t_block) break;
        }
        uint64_t c1 = bench_thread_cpu_ns();
        cpu_mark(b, &m1);
        rpc_cpu += c1 - m0.client_ns;
        if (m0.server_ok && m1.server_ok) srv_ns += m1.server_ns - m0.server_ns;
        else srv_ok = false;
    }
    tcp->cpu.client_us = n_tcp ? (double)tcp_cpu / 1e3 / n_tcp : NA;
    tcp->cpu.server_us = NA;
    tcp->req = req, tcp->rsp = rsp;
    rpc->cpu.client_us = n_rpc ? (double)rpc_cpu / 1e3 / n_rpc : NA;
    rpc->cpu.server_us = srv_ok && n_rpc ? (double)srv_ns / 1e3 / n_rpc : NA;
    bench_latency_from(st, n_tcp, &tcp->lat);
    if (n_tcp == 0) tcp->lat.min_us = tcp->lat.p50_us = tcp->lat.p99_us = NA;
    bench_latency_from(sr, n_rpc, &rpc->lat);
    free(st);
    free(sr);
    return rc;
}

/* ---- per-request transport counters ------------------------------------------ */

struct side_counts {
    bool ok;
    double sends, recvs, writes, completions, sleeps, wakeups, spin_us;
};

struct per_req {
    int n;
    struct side_counts client, server;
};

static void side_delta(const struct ferry_conn_stats *a, const struct ferry_conn_stats *z, int n,
                       struct side_counts *out) {
    out->ok = true;
    out->sends = (double)(z->sends_posted - a->sends_posted) / n;
    out->recvs = (double)(z->recvs_posted - a->recvs_posted) / n;
    out->writes = (double)(z->writes_posted - a->writes_posted) / n;
    out->completions = (double)(z->completions - a->completions) / n;
    out->sleeps = (double)(z->cq_sleeps - a->cq_sleeps) / n;
    out->wakeups = (double)(z->cq_wakeups - a->cq_wakeups) / n;
    out->spin_us = (double)(z->spin_us - a->spin_us) / n;
}

/* Counters of this side (after asking) and of the server (its answer to
 * STATS; ok false when the framing has none). */
static int snapshot(struct bench *b, struct ferry_conn_stats *mine, struct ferry_conn_stats *peer, bool *peer_ok,
                    bool mine_first, struct ferry_error *err) {
    pthread_mutex_lock(&b->c->lock);
    struct ferry_conn *conn = b->c->conn;
    int rc = FERRY_OK;
    if (conn == NULL) {
        rc = ferry_fail(err, FERRY_ERR_CLOSED, "connection lost");
    } else {
        if (mine_first) *mine = *ferry_conn_stats(conn);
        struct ferry_error e;
        rc = ferry_conn_peer_counters(conn, peer, &e);
        *peer_ok = rc == FERRY_OK;
        if (rc == FERRY_ERR_UNSUPPORTED) rc = FERRY_OK;
        else if (rc) ferry_fail(err, rc, "%s", e.msg);
        if (!mine_first) *mine = *ferry_conn_stats(conn);
    }
    pthread_mutex_unlock(&b->c->lock);
    return rc;
}

/* COUNT_REQS GET_ALIGNMENTs in a row, and what each cost on both sides;
 * the counters are read outside the span (the server's answer to the
 * first STATS is the one extra message in it). */
static int count_small(struct bench *b, struct per_req *out, struct ferry_error *err) {
    memset(out, 0, sizeof *out);
    if (strcmp(ferry_client_transport(b->c, NULL, 0), "rdma") != 0) return FERRY_OK; /* verbs only */
    struct ferry_conn_stats m0, m1, p0, p1;
    bool ok0 = false, ok1 = false;
    int n = b->o.iterations < COUNT_REQS ? b->o.iterations : COUNT_REQS, rc;
    if ((rc = snapshot(b, &m0, &p0, &ok0, false, err))) return rc;
    for (int i = 0; i < n; i++)
        if ((rc = op_alignment(b, 0, err))) return rc;
    if ((rc = snapshot(b, &m1, &p1, &ok1, true, err))) return rc;
    out->n = n;
    side_delta(&m0, &m1, n, &out->client);
    if (ok0 && ok1) side_delta(&p0, &p1, n, &out->server);
    return FERRY_OK;
}

/* ---- bandwidth --------------------------------------------------------------- */

static int op_set(struct bench *b, uint64_t size, struct ferry_error *err) {
    /* plain SET_TENSOR (no response), then a round trip so the time covers delivery */
    int rc = ferry_client_set_tensor(b->c, &b->t, 0, b->host, size, err);
    return rc ? rc : op_alignment(b, 0, err);
}
static int op_get(struct bench *b, uint64_t size, struct ferry_error *err) {
    return ferry_client_get_tensor(b->c, &b->t, 0, b->host, size, err);
}
static int op_sink(struct bench *b, uint64_t size, struct ferry_error *err) {
    return bench_net_sink(b->net_fd, b->host, size, err);
}
static int op_source(struct bench *b, uint64_t size, struct ferry_error *err) {
    return bench_net_source(b->net_fd, b->host, size, err);
}

struct bw {
    double gbps;
    struct cpu_cost cpu;
};

static int run_reps(struct bench *b, op_fn fn, bool rpc, uint64_t size, struct bw *out,
                    struct ferry_error *err) {
    if (!rpc && b->net_fd < 0) { /* no bare link to compare with */
        out->gbps = out->cpu.client_us = out->cpu.server_us = NA;
        return FERRY_OK;
    }
    int rc = fn(b, size, err); /* warm-up */
    if (rc) return rc;
    double target = b->o.quick ? BW_TARGET_S / 5 : BW_TARGET_S;
    int cap = b->o.quick ? BW_MAX_REPS / 10 : BW_MAX_REPS, reps = 0;
    struct cpu_mark m0 = { 0 }, m1 = { 0 };
    if (rpc) cpu_mark(b, &m0);
    else m0.client_ns = bench_thread_cpu_ns(), m0.server_ok = false;
    double t0 = bench_now_s(), t = t0;
    while (reps < 2 || (t - t0 < target && reps < cap)) {
        if ((rc = fn(b, size, err))) return rc;
        reps++;
        t = bench_now_s();
    }
    if (rpc) {
        cpu_cost(&m0, &m1, b, reps, &out->cpu);
    } else {
        out->cpu.client_us = (double)(bench_thread_cpu_ns() - m0.client_ns) / 1e3 / reps;
        out->cpu.server_us = NA;
    }
    out->gbps = (double)size * reps / (t - t0) / 1e9;
    return FERRY_OK;
}

struct bw_row {
    uint64_t size;
    struct bw sink, set, source, get;
};

/* ---- setup ------------------------------------------------------------------- */

static int setup_graph(struct bench *b, struct ferry_error *err) {
    int rc = ferry_client_alloc_buffer(b->c, 0, 4096, &b->small, err);
    if (rc) return rc;
    int64_t ne[1] = { 16 };
    ferry_tensor_init(&b->a, FERRY_TYPE_F32, 1, ne, NULL);
    ferry_tensor_init(&b->b, FERRY_TYPE_F32, 1, ne, NULL);
    ferry_tensor_init(&b->out, FERRY_TYPE_F32, 1, ne, NULL);
    b->out.op = FERRY_OP_ADD;
    b->out.src[0] = &b->a, b->out.src[1] = &b->b;
    b->out.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    if ((rc = ferry_remote_tensor_place(&b->a, &b->small, 0, err)) ||
        (rc = ferry_remote_tensor_place(&b->b, &b->small, 256, err)) ||
        (rc = ferry_remote_tensor_place(&b->out, &b->small, 512, err)))
        return rc;
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = (float)i;
    if ((rc = ferry_client_set_tensor(b->c, &b->a, 0, v, sizeof v, err)) ||
        (rc = ferry_client_set_tensor(b->c, &b->b, 0, v, sizeof v, err)))
        return rc;
    float res[16];
    if ((rc = op_graph(b, 0, err)) || (rc = ferry_client_get_tensor(b->c, &b->out, 0, res, sizeof res, err)))
        return rc;
    for (int i = 0; i < 16; i++)
        if (res[i] != 2.0f * (float)i)
            return ferry_fail(err, FERRY_ERR_INVALID, "tiny graph: out[%d] = %g, expected %g", i, res[i],
                              2.0 * i);
    return FERRY_OK;
}

/* The sizes to run: up to --max-size, and what the server can hold. */
static int plan_sizes(struct bench *b, uint64_t *sizes, int *n, uint64_t *skipped, int *n_skipped,
                      struct ferry_error *err) {
    uint64_t free_mem = 0, total = 0;
    int rc = ferry_client_device_memory(b->c, 0, &free_mem, &total, err);
    if (rc) return rc;
    *n = *n_skipped = 0;
    for (int i = 0; i < BENCH_N_SIZES; i++) {
        if (bench_sizes[i] > b->o.max_size) break;
        if (bench_sizes[i] + 4096 > free_mem) skipped[(*n_skipped)++] = bench_sizes[i];
        else sizes[(*n)++] = bench_sizes[i];
    }
    /* the server may still refuse (other clients): drop the largest until it fits */
    while (*n > 0) {
        uint64_t big = sizes[*n - 1];
        rc = ferry_client_alloc_buffer(b->c, 0, big, &b->big, err);
        if (rc == FERRY_OK) break;
        if (rc != FERRY_ERR_NOMEM) return rc;
        skipped[(*n_skipped)++] = big;
        (*n)--;
    }
    if (*n == 0) return FERRY_OK;
    uint64_t big = sizes[*n - 1];
    int64_t ne[1] = { (int64_t)big };
    ferry_tensor_init(&b->t, FERRY_TYPE_I8, 1, ne, NULL);
    if ((rc = ferry_remote_tensor_place(&b->t, &b->big, 0, err))) return rc;
    b->host = malloc((size_t)big);
    if (b->host == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "no host memory for %" PRIu64 " bytes", big);
    for (uint64_t i = 0; i < big; i++) b->host[i] = (uint8_t)(i * 31 + 7); /* faulted in, not zero */
    return FERRY_OK;
}

/* ---- output ------------------------------------------------------------------ */

static double ratio(double x, double y) { return x > 0 && y > 0 ? x / y : NA; }

static void json_num(FILE *f, const char *key, double v, bool comma) {
    if (v < 0) fprintf(f, "\"%s\":null%s", key, comma ? "," : "");
    else fprintf(f, "\"%s\":%.4f%s", key, v, comma ? "," : "");
}

static void json_rtt(FILE *f, const char *name, const struct rtt *r, const struct rtt *base, bool comma) {
    fprintf(f, "\"%s\":{", name);
    if (base == NULL) fprintf(f, "\"req_bytes\":%u,\"rsp_bytes\":%u,", r->req, r->rsp);
    fprintf(f, "\"n\":%d,", r->lat.n);
    json_num(f, "min_us", r->lat.min_us, true);
    json_num(f, "p50_us", r->lat.p50_us, true);
    json_num(f, "p99_us", r->lat.p99_us, true);
    if (base) {
        json_num(f, "ratio_min", ratio(r->lat.min_us, base->lat.min_us), true);
        json_num(f, "ratio_p50", ratio(r->lat.p50_us, base->lat.p50_us), true);
        json_num(f, "ratio_p99", ratio(r->lat.p99_us, base->lat.p99_us), true);
        json_num(f, "server_cpu_us", r->cpu.server_us, true);
    }
    json_num(f, "client_cpu_us", r->cpu.client_us, false);
    fprintf(f, "}%s", comma ? "," : "");
}

static const struct bw_row *row_of(const struct bw_row *rows, int n, uint64_t size) {
    for (int i = 0; i < n; i++)
        if (rows[i].size == size) return &rows[i];
    return NULL;
}

static void json_side(FILE *f, const char *name, const struct side_counts *s, bool comma) {
    fprintf(f, "\"%s\":", name);
    if (!s->ok) {
        fprintf(f, "null%s", comma ? "," : "");
        return;
    }
    fprintf(f, "{\"sends\":%.3f,\"recvs\":%.3f,\"writes\":%.3f,\"completions\":%.3f,\"cq_sleeps\":%.3f,"
               "\"cq_wakeups\":%.3f,\"spin_us\":%.2f}%s",
            s->sends, s->recvs, s->writes, s->completions, s->sleeps, s->wakeups, s->spin_us, comma ? "," : "");
}

static void print_json(FILE *f, struct bench *b, const char *net_desc, const struct rtt rt[4], const struct per_req *pr,
                       const struct bw_row *rows, int n_rows, const uint64_t *skipped, int n_skipped) {
    if (b->net_fd >= 0)
        fprintf(f, "{\"tool\":\"ferry bench rpc\",\"rpc\":\"%s\",\"net\":\"%s\",\"net_peer\":\"%s\",", b->o.rpc,
                net_desc, b->o.net ? "external" : "in-process");
    else
        fprintf(f, "{\"tool\":\"ferry bench rpc\",\"rpc\":\"%s\",\"net\":null,\"net_peer\":null,", b->o.rpc);
    fprintf(f, "\"server_is_ferry\":%s,\"iterations\":%d,\"quick\":%s,", b->is_ferry ? "true" : "false",
            b->o.iterations, b->o.quick ? "true" : "false");
    fprintf(f, "\"set_tensor_mode\":\"plain SET_TENSOR, no SET_TENSOR_HASH probe\",");
    fprintf(f, "\"latency\":{");
    json_rtt(f, "tcp_pingpong", &rt[0], NULL, true);
    json_rtt(f, "get_alignment", &rt[1], &rt[0], true);
    json_rtt(f, "tcp_pingpong_graph", &rt[2], NULL, true);
    json_rtt(f, "graph_get64", &rt[3], &rt[2], false);
    fprintf(f, "},\"per_request\":");
    if (pr->n) {
        fprintf(f, "{\"requests\":%d,", pr->n);
        json_side(f, "client", &pr->client, true);
        json_side(f, "server", &pr->server, false);
        fprintf(f, "}");
    } else {
        fprintf(f, "null");
    }
    fprintf(f, ",\"bandwidth\":[");
    for (int i = 0; i < n_rows; i++) {
        const struct bw_row *r = &rows[i];
        fprintf(f, "%s{\"size\":%" PRIu64 ",", i ? "," : "", r->size);
        json_num(f, "tcp_sink_gbps", r->sink.gbps, true);
        json_num(f, "set_gbps", r->set.gbps, true);
        json_num(f, "set_ratio", ratio(r->set.gbps, r->sink.gbps), true);
        json_num(f, "tcp_source_gbps", r->source.gbps, true);
        json_num(f, "get_gbps", r->get.gbps, true);
        json_num(f, "get_ratio", ratio(r->get.gbps, r->source.gbps), true);
        json_num(f, "tcp_sink_client_cpu_us", r->sink.cpu.client_us, true);
        json_num(f, "tcp_source_client_cpu_us", r->source.cpu.client_us, true);
        json_num(f, "set_client_cpu_us", r->set.cpu.client_us, true);
        json_num(f, "set_server_cpu_us", r->set.cpu.server_us, true);
        json_num(f, "get_client_cpu_us", r->get.cpu.client_us, true);
        json_num(f, "get_server_cpu_us", r->get.cpu.server_us, false);
        fprintf(f, "}");
    }
    fprintf(f, "],\"skipped_sizes\":[");
    for (int i = 0; i < n_skipped; i++) fprintf(f, "%s%" PRIu64, i ? "," : "", skipped[i]);
    const struct bw_row *r64 = row_of(rows, n_rows, 64ull << 20);
    fprintf(f, "],\"acceptance\":{");
    json_num(f, "small_rtt_ratio", ratio(rt[1].lat.p50_us, rt[0].lat.p50_us), true);
    json_num(f, "set_64mib_ratio", r64 ? ratio(r64->set.gbps, r64->sink.gbps) : NA, true);
    json_num(f, "get_64mib_ratio", r64 ? ratio(r64->get.gbps, r64->source.gbps) : NA, false);
    fprintf(f, "}}\n");
}

static void fmt_num(char *buf, size_t n, const char *fmt, double v) {
    if (v < 0) snprintf(buf, n, "n/a");
    else snprintf(buf, n, fmt, v);
}

static void table_rtt(FILE *f, const char *name, const struct rtt *r, const struct rtt *base) {
    char rat[16], cc[16], sc[16];
    if (base) fmt_num(rat, sizeof rat, "%.2fx", ratio(r->lat.p50_us, base->lat.p50_us));
    else snprintf(rat, sizeof rat, "-");
    fmt_num(cc, sizeof cc, "%.1f", r->cpu.client_us);
    if (base) fmt_num(sc, sizeof sc, "%.1f", r->cpu.server_us);
    else snprintf(sc, sizeof sc, "-");
    if (r->lat.n == 0) {
        fprintf(f, "  %-36s    n/a (no bare link)\n", name);
        return;
    }
    fprintf(f, "  %-36s %6d %8.1f %8.1f %8.1f %9s %8s %8s\n", name, r->lat.n, r->lat.min_us, r->lat.p50_us,
            r->lat.p99_us, rat, cc, sc);
}

static void table_side(FILE *f, const char *name, const struct side_counts *s) {
    if (!s->ok) {
        fprintf(f, "  %-8s n/a (its counters need ferry's RDMA framing)\n", name);
        return;
    }
    fprintf(f, "  %-8s %9.2f %7.2f %7.2f %12.2f %8.2f %9.2f %9.1f\n", name, s->sends, s->recvs, s->writes,
            s->completions, s->sleeps, s->wakeups, s->spin_us);
}

static void print_table(FILE *f, struct bench *b, const char *net_desc, const struct rtt rt[4], const struct per_req *pr,
                        const struct bw_row *rows, int n_rows, const uint64_t *skipped, int n_skipped) {
    if (b->net_fd >= 0)
        fprintf(f, "ferry bench rpc: server %s (%s), bare TCP peer %s (%s)\n\n", b->o.rpc,
                b->is_ferry ? "ferry: server CPU via FERRY_STATS" : "not ferry: server CPU n/a", net_desc,
                b->o.net ? "external" : "in-process thread");
    else
        fprintf(f, "ferry bench rpc: server %s (%s), no bare TCP comparison (--net none, or the server\n"
                   "is on another host and no --net peer was given: run `ferry bench net --listen` there)\n\n",
                b->o.rpc, b->is_ferry ? "ferry: server CPU via FERRY_STATS" : "not ferry: server CPU n/a");
    char line[400];
    ferry_client_transport(b->c, line, sizeof line);
    fprintf(f, "transport: %s\n\n", line);
    fprintf(f, "round trips (us)                           n      min      p50      p99   p50/TCP  cpu/op: client  server\n");
    char name[64];
    snprintf(name, sizeof name, "bare TCP ping-pong %u/%u B", rt[0].req, rt[0].rsp);
    table_rtt(f, name, &rt[0], NULL);
    table_rtt(f, "GET_ALIGNMENT", &rt[1], &rt[0]);
    snprintf(name, sizeof name, "bare TCP ping-pong %u/%u B", rt[2].req, rt[2].rsp);
    table_rtt(f, name, &rt[2], NULL);
    table_rtt(f, "GRAPH_RECOMPUTE + GET_TENSOR 64 B", &rt[3], &rt[2]);
    if (pr->n) {
        fprintf(f, "\nper GET_ALIGNMENT (%d in a row)  SENDs   recvs  WRITEs  completions   sleeps  wake-ups  spin us\n",
                pr->n);
        fprintf(f, "  (posted: SENDs, receives, WRITEs; sleeps and wake-ups on the completion channel)\n");
        table_side(f, "client", &pr->client);
        table_side(f, "server", &pr->server);
    }
    if (n_rows) {
        fprintf(f, "\nbandwidth (GB/s)  TCP sink  SET_TENSOR  ratio  TCP source  GET_TENSOR  ratio"
                   "   cpu/op us: SET client/server  GET client/server\n");
        for (int i = 0; i < n_rows; i++) {
            const struct bw_row *r = &rows[i];
            char sz[32], sr[16], gr[16], c1[16], c2[16], c3[16], c4[16], tk[16], ts[16];
            fmt_num(tk, sizeof tk, "%.3f", r->sink.gbps);
            fmt_num(ts, sizeof ts, "%.3f", r->source.gbps);
            fmt_num(sr, sizeof sr, "%.2f", ratio(r->set.gbps, r->sink.gbps));
            fmt_num(gr, sizeof gr, "%.2f", ratio(r->get.gbps, r->source.gbps));
            fmt_num(c1, sizeof c1, "%.1f", r->set.cpu.client_us);
            fmt_num(c2, sizeof c2, "%.1f", r->set.cpu.server_us);
            fmt_num(c3, sizeof c3, "%.1f", r->get.cpu.client_us);
            fmt_num(c4, sizeof c4, "%.1f", r->get.cpu.server_us);
            fprintf(f, "  %-14s %9s %11.3f %6s %11s %11.3f %6s   %14s/%-10s %10s/%s\n",
                    bench_size_name(r->size, sz, sizeof sz), tk, r->set.gbps, sr, ts, r->get.gbps, gr, c1, c2, c3, c4);
        }
    }
    for (int i = 0; i < n_skipped; i++) {
        char sz[32];
        fprintf(f, "  %-14s skipped: more than the server's free memory\n", bench_size_name(skipped[i], sz, sizeof sz));
    }
    fprintf(f, "\nnote: SET_TENSOR is measured plain; ggml's client probes SET_TENSOR_HASH first above 10 MiB.\n"
               "      SET rows include a GET_ALIGNMENT round trip per transfer (proof of delivery), as the\n"
               "      TCP sink includes its 1-byte ack. CPU: client = this thread; server = whole process.\n");
}

/* ---- the run ----------------------------------------------------------------- */

static int read_max_size(const char *cmd, const char *name, const char *v, void *dest) {
    uint64_t x;
    if (bench_parse_size(v, &x) || x < bench_sizes[0]) {
        fprintf(stderr, "ferry %s: %s '%s': a size of at least 4K (e.g. 64M)\n", cmd, name, v);
        return -1;
    }
    *(uint64_t *)dest = x;
    return 0;
}

static int parse_rpc_opts(int argc, char **argv, struct rpc_opts *o) {
    *o = (struct rpc_opts){ .iterations = 2000, .max_size = 1ull << 30, .transport = FERRY_TRANSPORT_AUTO };
    struct opt opts[] = {
        { .names = "--rpc", .kind = OPT_STRING, .dest = &o->rpc, .arg = "HOST:PORT", .help = "the server (required)" },
        { .names = "--net", .kind = OPT_STRING, .dest = &o->net, .arg = "HOST:PORT",
          .help = "a `ferry bench net --listen` peer on the server's host; without it\n"
                  "a loopback server gets a peer in a thread of this process, a\n"
                  "server on another host is measured without the bare-link comparison;\n"
                  "none: no comparison" },
        { .names = "--iterations", .kind = OPT_INT, .dest = &o->iterations, .arg = "N",
          .help = "round trips per latency measure (default 2000; 10 s cap each)", .lo = 1, .hi = 10000000 },
        { .names = "--max-size", .kind = OPT_FN, .dest = &o->max_size, .arg = "SIZE", .fn = read_max_size,
          .help = "largest transfer, e.g. 64M (default 1G)" },
        { .names = "--quick", .kind = OPT_FLAG, .dest = &o->quick, .help = "up to 64 MiB, shorter bandwidth runs" },
        { .names = "--json", .kind = OPT_FLAG, .dest = &o->json, .help = "one JSON object on stdout instead of the table" },
        { .names = "--quiet", .kind = OPT_FLAG, .dest = &o->quiet, .help = "no progress lines on stderr" },
        { .names = "--transport", .kind = OPT_FN, .dest = &o->transport, .arg = "T", .fn = opt_read_transport,
          .help = "auto | tcp | rdma (rdma: required, no fallback)" },
        { .names = "--rdma-dev", .kind = OPT_STRING, .dest = &o->rdma_dev, .arg = "NAME",
          .help = "RDMA device (default $FERRY_RDMA_DEV, else the one whose GID is\n"
                  "the TCP source address)" },
        { .names = "--rdma-ip", .kind = OPT_STRING, .dest = &o->rdma_ip, .arg = "ADDR",
          .help = "use the RDMA GID of this IPv4 address (default $FERRY_RDMA_IP)" },
        { .names = "--hello-timeout", .kind = OPT_INT, .dest = &o->hello_timeout_ms, .arg = "MS",
          .help = "give up on a server that does not answer HELLO within MS ms\n"
                  "(default 5000, or $FERRY_HELLO_TIMEOUT_MS)", .lo = 1, .hi = 86400000 },
        { 0 },
    };
    const struct opts_cmd cmd = {
        "bench rpc", "bench rpc --rpc HOST:PORT [--net HOST:PORT] [options]",
        "Measures any ggml RPC server against the bare TCP link to the same host:\n"
        "  round trips (min/p50/p99): GET_ALIGNMENT, and a tiny graph (RECOMPUTE) + 64-byte read\n"
        "  SET_TENSOR / GET_TENSOR bandwidth, 4 KiB .. 1 GiB (sizes the server cannot hold are skipped)\n"
        "  each as a ratio to bare TCP ping-pong / stream moving the same bytes\n"
        "  CPU per operation: client, and server when it is ferry's (FERRY_STATS extension)",
        opts, NULL,
    };
    int st = opts_parse(&cmd, argc, argv);
    if (st >= 0) return st;
    if (o->quick && o->max_size > (64ull << 20)) o->max_size = 64ull << 20;
    if (o->rpc == NULL) return opts_usage_error(&cmd, "--rpc HOST:PORT is required");
    return -1;
}

int ferry_bench_rpc_main(int argc, char **argv, FILE *out) {
    struct bench b;
    memset(&b, 0, sizeof b);
    b.net_fd = -1;
    (void)out; /* --help goes to stdout, as every command's */
    int st = parse_rpc_opts(argc, argv, &b.o);
    if (st >= 0) return st;
    char rpc_host[64], net_host[64], net_desc[96];
    int rpc_port, net_port;
    if (bench_parse_endpoint(b.o.rpc, rpc_host, sizeof rpc_host, &rpc_port) || rpc_port == 0) {
        fprintf(stderr, "ferry bench rpc: --rpc wants HOST:PORT, got '%s'\n", b.o.rpc);
        return 2;
    }
    bool no_net = b.o.net && !strcmp(b.o.net, "none");
    if (b.o.net && !no_net) {
        if (bench_parse_endpoint(b.o.net, net_host, sizeof net_host, &net_port) || net_port == 0) {
            fprintf(stderr, "ferry bench rpc: --net wants HOST:PORT, got '%s'\n", b.o.net);
            return 2;
        }
    }
    bool bare = !no_net && (b.o.net || bench_is_loopback(rpc_host)); /* a peer on the server's host */
    if (no_net) b.o.net = NULL;
    if (!bare && !no_net && !b.o.quiet)
        fprintf(stderr, "ferry bench rpc: %s is on another host and no --net peer was given: measuring the server "
                        "alone, without the bare-link comparison (run `ferry bench net --listen` there and pass "
                        "--net HOST:PORT for it)\n",
                b.o.rpc);

    struct ferry_error err;
    ferry_error_clear(&err);
    struct bench_net_peer *peer = NULL;
    uint64_t sizes[BENCH_N_SIZES], skipped[BENCH_N_SIZES];
    int n_sizes = 0, n_skipped = 0, n_rows = 0, rc = FERRY_OK;
    struct bw_row rows[BENCH_N_SIZES];
    struct rtt rt[4];
    struct per_req pr;
    memset(rt, 0, sizeof rt);
    memset(&pr, 0, sizeof pr);
    memset(rows, 0, sizeof rows);
    if (bare && !b.o.net) {
        snprintf(net_host, sizeof net_host, "%s", "127.0.0.1");
        if ((rc = bench_net_peer_start(net_host, 0, &peer, &err))) goto out;
        net_port = bench_net_peer_port(peer);
    }
    snprintf(net_desc, sizeof net_desc, "%s:%d", bare ? net_host : "none", bare ? net_port : 0);
    if (bare && (rc = bench_net_connect(net_host, net_port, &b.net_fd, &err))) goto out;
    struct ferry_client_options copts;
    ferry_client_options_defaults(&copts);
    copts.transport = b.o.transport;
    copts.rdma_dev = b.o.rdma_dev;
    copts.rdma_ip = b.o.rdma_ip;
    if (b.o.hello_timeout_ms) copts.hello_timeout_ms = b.o.hello_timeout_ms;
    if ((rc = ferry_client_connect(b.o.rpc, &copts, &b.c, &err))) goto out;
    b.is_ferry = ferry_client_server_is_ferry(b.c);
    if ((rc = setup_graph(&b, &err))) goto out;
    if ((rc = plan_sizes(&b, sizes, &n_sizes, skipped, &n_skipped, &err))) goto out;
    b.n_steps = 2 + n_sizes;

    progress(&b, "%s", "GET_ALIGNMENT round trips, interleaved with bare TCP ping-pong 13/16 B");
    if ((rc = rtt_pair(&b, 13, 16, op_alignment, &rt[0], &rt[1], &err))) goto out;
    if ((rc = count_small(&b, &pr, &err))) goto out;
    progress(&b, "%s", "GRAPH_RECOMPUTE + GET_TENSOR 64 B, interleaved with bare TCP ping-pong 334/72 B");
    if ((rc = rtt_pair(&b, GRAPH_REQ_BYTES, GRAPH_RSP_BYTES, op_graph, &rt[2], &rt[3], &err))) goto out;

    for (int i = 0; i < n_sizes; i++) {
        char sz[32];
        struct bw_row *r = &rows[n_rows];
        r->size = sizes[i];
        progress(&b, "bandwidth %s: TCP sink, SET_TENSOR, TCP source, GET_TENSOR", bench_size_name(sizes[i], sz, sizeof sz));
        if ((rc = run_reps(&b, op_sink, false, sizes[i], &r->sink, &err)) ||
            (rc = run_reps(&b, op_set, true, sizes[i], &r->set, &err)) ||
            (rc = run_reps(&b, op_source, false, sizes[i], &r->source, &err)) ||
            (rc = run_reps(&b, op_get, true, sizes[i], &r->get, &err)))
            goto out;
        n_rows++;
    }
    if (b.o.json) print_json(out, &b, net_desc, rt, &pr, rows, n_rows, skipped, n_skipped);
    else print_table(out, &b, net_desc, rt, &pr, rows, n_rows, skipped, n_skipped);
    fflush(out);

out:
    if (rc) fprintf(stderr, "ferry bench rpc: %s\n", err.msg);
    if (b.c) {
        if (b.big.client) ferry_client_free_buffer(b.c, &b.big, NULL);
        if (b.small.client) ferry_client_free_buffer(b.c, &b.small, NULL);
        ferry_client_close(b.c);
    }
    if (b.net_fd >= 0) close(b.net_fd);
    bench_net_peer_stop(peer);
    free(b.host);
    return rc ? 1 : 0;
}
