/* The RDMA transport.
 *
 * Everywhere: --transport parsing; with no RDMA device on the host, auto
 * falls back to TCP and required mode (client and server) is refused with a
 * reason, and a HELLO carrying RDMA caps still gets zeros back.
 *
 * With FERRY_TEST_RDMA=1 (scripts/rdma-test.sh sets it inside the Soft-RoCE
 * guest: rxe0 on veth0 198.18.0.1, rxe1 on veth1 198.18.0.2), the real
 * suite over the verbs stack: every command over RDMA with the server on
 * rxe1 and the client on rxe0 (so packets cross the veth pair), 64 MiB
 * SET_TENSOR and GET_TENSOR, several connections at once, malformed caps,
 * required-but-absent refusals, a client killed mid-transfer (the server
 * keeps serving) and a server killed mid-transfer (the client gets an error
 * within seconds), and what a small request costs in ferry framing: one
 * SEND each way, no credit message, at most one wake-up per side (the
 * server's counters through the transport's STATS message). Peers that must die run as child processes of this
 * program (fork + exec of itself with a role argument), killed by PID.
 *
 * `test_rdma --mtu-mismatch` is the part scripts/rdma-test.sh runs again
 * after giving veth0 a 9000-byte MTU (veth1 keeps 1500): a 64 MiB transfer
 * must not hang. `test_rdma --blips [ENDPOINT]` (scripts/rdma-test.sh
 * --blips) puts transient loss on the RDMA path that every connection must
 * survive; `--partition` and `--server-killed` print how long a real loss
 * takes to be noticed. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/internal.h" /* the client's connection, for the server's transport counters */
#include "ferry/client.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "rpc_client_raw.h"
#include "testutil.h"
#include "transport/transport.h"

#define MIB (1024ull * 1024)
#define SERVER_IP "198.18.0.2" /* rxe1 */
#define CLIENT_DEV "rxe0"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- servers and clients --------------------------------------------------------- */

/* ggml: the server plays a ggml one (no HELLO extension), so the
 * connection uses ggml's RDMA framing. */
static bool server_start_as(struct test_server *ts, const char *host, int transport, bool ggml) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.no_ferry_ext = ggml;
    cfg.host = host;
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 512 * MIB;
    cfg.max_payload = 256 * MIB;
    cfg.transport = transport;
    return test_server_start(ts, &cfg);
}

static bool server_start(struct test_server *ts, const char *host, int transport) {
    return server_start_as(ts, host, transport, false);
}

static int client_open(const char *endpoint, int transport, const char *dev, struct ferry_client **c,
                       struct ferry_error *err) {
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.response_timeout_ms = 60000; /* nothing here may hang; the guest CPU is slow */
    o.frame_timeout_ms = 60000;
    o.transport = transport;
    o.rdma_dev = dev;
    *c = NULL;
    return ferry_client_connect(endpoint, &o, c, err);
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
    uint64_t s = seed;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = test_rand_u64(&s);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) p[i] = (uint8_t)test_rand_u64(&s);
}

/* ---- everywhere -------------------------------------------------------------------- */

static void test_parse(void) {
    struct ferry_error err;
    int m = -1;
    CHECK(ferry_transport_parse("auto", &m, &err) == FERRY_OK && m == FERRY_TRANSPORT_AUTO, "auto");
    CHECK(ferry_transport_parse("tcp", &m, &err) == FERRY_OK && m == FERRY_TRANSPORT_TCP, "tcp");
    CHECK(ferry_transport_parse("rdma", &m, &err) == FERRY_OK && m == FERRY_TRANSPORT_RDMA, "rdma");
    CHECK(ferry_transport_parse("RDMA!", &m, &err) == FERRY_ERR_INVALID, "junk refused");
    CHECK(ferry_transport_parse(NULL, &m, &err) == FERRY_ERR_INVALID, "NULL refused");
    CHECK(strcmp(ferry_transport_name(FERRY_TRANSPORT_RDMA), "rdma") == 0, "name");
}

/* No device: auto is TCP, required is a clear refusal on both sides. */
static void test_no_device(void) {
    char why[256];
    if (!CHECK(!ferry_rdma_available(why, sizeof why), "no RDMA device expected here")) return;
    printf("  (RDMA unavailable: %s)\n", why);
    struct test_server ts;
    if (!server_start(&ts, "127.0.0.1", FERRY_TRANSPORT_AUTO)) return;
    struct ferry_error err;
    struct ferry_client *c = NULL;
    CHECK(client_open(ts.endpoint, FERRY_TRANSPORT_AUTO, NULL, &c, &err) == FERRY_OK, "auto connects: %s", err.msg);
    if (c) {
        CHECK(strcmp(ferry_client_transport(c, NULL, 0), "tcp") == 0, "auto falls back to tcp");
        uint32_t n = 0;
        CHECK(ferry_client_device_count(c, &n, &err) == FERRY_OK && n == 1, "a command works over the fallback");
        struct ferry_client_conn_stats cs;
        CHECK(ferry_client_conn_stats(c, &cs) && cs.msgs_sent >= 2 && cs.bytes_out > 0 && cs.sends_posted == 0 &&
                  cs.recvs_posted == 0 && cs.writes_posted == 0 && cs.reads_posted == 0 && cs.completions == 0 &&
                  cs.cq_sleeps == 0,
              "connection stats over tcp: %" PRIu64 " messages out, no verbs work", cs.msgs_sent);
        ferry_client_close(c);
    }
    double t0 = now_s();
    int rc = client_open(ts.endpoint, FERRY_TRANSPORT_RDMA, NULL, &c, &err);
    CHECK(rc == FERRY_ERR_UNSUPPORTED && c == NULL && strstr(err.msg, "RDMA required") != NULL,
          "required RDMA without a device is refused (rc %d: %s)", rc, err.msg);
    CHECK(now_s() - t0 < 5, "refused at once");

    /* a HELLO that offers RDMA gets zero caps back (ggml's client then stays on TCP) */
    struct rpc_raw *raw = NULL;
    if (CHECK(rpc_raw_connect("127.0.0.1", ts.port, 5000, &raw, &err) == FERRY_OK, "raw connect: %s", err.msg)) {
        uint8_t caps[24] = { 0x11, 0x22, 0x03, 0, 0x11, 0x22, 0x03, 0 };
        caps[18] = caps[19] = 0xff, caps[20] = 127, caps[23] = 1;
        uint8_t cmd = FERRY_RPC_CMD_HELLO, len[8];
        ferry_put_le64(len, 24);
        struct iovec hdr[2] = { { &cmd, 1 }, { len, 8 } }, body = { caps, 24 };
        uint8_t rl[8], rsp[28];
        bool ok = ferry_conn_send(raw->conn, hdr, 2, &body, 1, &err) == FERRY_OK &&
                  ferry_conn_recv_header(raw->conn, rl, 8, &err) == FERRY_OK && ferry_get_le64(rl) == 28 &&
                  ferry_conn_recv_payload(raw->conn, rsp, 28, &err) == FERRY_OK;
        static const uint8_t zero[24];
        CHECK(ok && memcmp(rsp + 4, zero, 24) == 0, "RDMA caps answered with zeros: %s", ok ? "" : err.msg);
        rpc_raw_close(raw);
    }
    test_server_stop(&ts);

    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.transport = FERRY_TRANSPORT_RDMA;
    struct ferry_server *s = NULL;
    rc = ferry_server_create(&cfg, &s, &err);
    CHECK(rc == FERRY_ERR_UNSUPPORTED && s == NULL && strstr(err.msg, "RDMA required"),
          "a server that requires RDMA without a device does not start (%s)", err.msg);
    if (s) ferry_server_destroy(s);
}

/* ---- over the verbs stack ---------------------------------------------------------- */

/* Every command, over RDMA. */
static void test_every_command(struct test_server *ts) {
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (!CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK,
               "required RDMA connects: %s", err.msg))
        return;
    char line[512];
    const char *kind = ferry_client_transport(c, line, sizeof line);
    printf("  client: %s\n", line);
    CHECK(strcmp(kind, "rdma") == 0 && strstr(line, CLIENT_DEV) && strstr(line, "mtu"), "on rdma: %s", line);
    uint32_t n = 0;
    uint64_t fm = 0, tm = 0, al = 0, mx = 0;
    CHECK(ferry_client_device_count(c, &n, &err) == FERRY_OK && n == 1, "DEVICE_COUNT");
    CHECK(ferry_client_device_memory(c, 0, &fm, &tm, &err) == FERRY_OK && tm == 512 * MIB, "GET_DEVICE_MEMORY");
    CHECK(ferry_client_alignment(c, 0, &al, &err) == FERRY_OK && al >= 16, "GET_ALIGNMENT");
    CHECK(ferry_client_max_size(c, 0, &mx, &err) == FERRY_OK && mx > 0, "GET_MAX_SIZE");
    CHECK(ferry_client_server_is_ferry(c), "ferry server seen");
    struct ferry_client_server_stats ss;
    CHECK(ferry_client_server_stats(c, &ss, &err) == FERRY_OK && ss.commands > 0, "FERRY_STATS: %s", err.msg);

    struct ferry_remote_buffer buf;
    if (!CHECK(ferry_client_alloc_buffer(c, 0, 1 * MIB, &buf, &err) == FERRY_OK, "ALLOC_BUFFER (+GET_BASE): %s",
               err.msg)) {
        ferry_client_close(c);
        return;
    }
    CHECK(ferry_client_buffer_clear(c, &buf, 0, &err) == FERRY_OK, "BUFFER_CLEAR");
    struct ferry_tensor a, b, sum, cp;
    int64_t ne[2] = { 256, 64 };
    ferry_tensor_init(&a, FERRY_TYPE_F32, 2, ne, NULL);
    ferry_tensor_init(&b, FERRY_TYPE_F32, 2, ne, NULL);
    ferry_tensor_init(&sum, FERRY_TYPE_F32, 2, ne, NULL);
    ferry_tensor_init(&cp, FERRY_TYPE_F32, 2, ne, NULL);
    strcpy(a.name, "a"), strcpy(b.name, "b"), strcpy(sum.name, "sum"), strcpy(cp.name, "cp");
    size_t nb = ferry_nbytes(&a);
    ferry_remote_tensor_place(&a, &buf, 0, &err);
    ferry_remote_tensor_place(&b, &buf, nb, &err);
    ferry_remote_tensor_place(&sum, &buf, 2 * nb, &err);
    ferry_remote_tensor_place(&cp, &buf, 3 * nb, &err);
    sum.op = FERRY_OP_ADD, sum.src[0] = &a, sum.src[1] = &b, sum.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    float *ad = malloc(nb), *bd = malloc(nb), *got = malloc(nb);
    for (size_t i = 0; i < nb / 4; i++) ad[i] = (float)i, bd[i] = 0.5f * (float)i;
    uint64_t sz = 0;
    CHECK(ferry_client_init_tensor(c, &a, &err) == FERRY_OK, "INIT_TENSOR");
    CHECK(ferry_client_get_alloc_size(c, 0, &a, &sz, &err) == FERRY_OK && sz == nb, "GET_ALLOC_SIZE");
    CHECK(ferry_client_set_tensor(c, &a, 0, ad, nb, &err) == FERRY_OK, "SET_TENSOR");
    bool hit = true;
    CHECK(ferry_client_set_tensor_hash(c, &b, 0, bd, nb, &hit, &err) == FERRY_OK && !hit, "SET_TENSOR_HASH (miss)");
    CHECK(ferry_client_set_tensor(c, &b, 0, bd, nb, &err) == FERRY_OK, "SET_TENSOR b");
    struct ferry_tensor *nodes[1] = { &sum };
    CHECK(ferry_client_graph_compute(c, 0, nodes, 1, &err) == FERRY_OK, "GRAPH_COMPUTE: %s", err.msg);
    CHECK(ferry_client_get_tensor(c, &sum, 0, got, nb, &err) == FERRY_OK, "GET_TENSOR");
    bool ok = true;
    for (size_t i = 0; i < nb / 4; i++) ok &= got[i] == 1.5f * (float)i;
    CHECK(ok, "a + b computed over RDMA");
    CHECK(ferry_client_graph_compute(c, 0, nodes, 1, &err) == FERRY_OK, "GRAPH_RECOMPUTE: %s", err.msg);
    bool copied = false;
    CHECK(ferry_client_copy_tensor(c, &a, &cp, &copied, &err) == FERRY_OK && copied, "COPY_TENSOR");
    CHECK(ferry_client_get_tensor(c, &cp, 0, got, nb, &err) == FERRY_OK && memcmp(got, ad, nb) == 0, "copy landed");
    CHECK(ferry_client_memset_tensor(c, &cp, 16, 64, 0xab, &err) == FERRY_OK, "MEMSET_TENSOR");
    uint8_t m[96];
    CHECK(ferry_client_get_tensor(c, &cp, 0, m, sizeof m, &err) == FERRY_OK && m[16] == 0xab && m[79] == 0xab &&
              m[80] != 0xab, "memset landed");
    CHECK(ferry_client_free_buffer(c, &buf, &err) == FERRY_OK, "FREE_BUFFER");
    CHECK(strcmp(ferry_client_transport(c, NULL, 0), "rdma") == 0, "still on rdma");
    free(ad), free(bd), free(got);
    ferry_client_close(c);
}

/* 64 MiB each way, checked byte for byte. */
static bool big_roundtrip(struct ferry_client *c, size_t n, uint64_t seed, double *set_s, double *get_s) {
    struct ferry_error err;
    struct ferry_remote_buffer buf;
    if (!CHECK(ferry_client_alloc_buffer(c, 0, n, &buf, &err) == FERRY_OK, "alloc %zu: %s", n, err.msg)) return false;
    struct ferry_tensor t;
    int64_t ne[1] = { (int64_t)n };
    ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
    ferry_remote_tensor_place(&t, &buf, 0, &err);
    uint8_t *src = malloc(n), *dst = malloc(n);
    fill(src, n, seed);
    memset(dst, 0, n);
    double t0 = now_s();
    int rc = ferry_client_set_tensor(c, &t, 0, src, n, &err);
    double t1 = now_s();
    if (rc == FERRY_OK) rc = ferry_client_get_tensor(c, &t, 0, dst, n, &err);
    double t2 = now_s();
    if (set_s) *set_s = t1 - t0;
    if (get_s) *get_s = t2 - t1;
    bool ok = CHECK(rc == FERRY_OK && memcmp(src, dst, n) == 0, "%zu bytes round trip: %s", n,
                    rc ? err.msg : "identical");
    if (rc == FERRY_OK) ferry_client_free_buffer(c, &buf, &err);
    free(src), free(dst);
    return ok;
}

static void test_big(struct test_server *ts) {
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (!CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
               err.msg))
        return;
    double s = 0, g = 0;
    if (big_roundtrip(c, 64 * MIB, 7, &s, &g))
        printf("  64 MiB SET_TENSOR %.2f s (%.1f MB/s), GET_TENSOR %.2f s (%.1f MB/s)\n", s, 64 * 1.048576 / s, g,
               64 * 1.048576 / g);
    CHECK(big_roundtrip(c, 256 * 1024 + 1, 8, NULL, NULL), "a payload one byte over a chunk");
    CHECK(big_roundtrip(c, 100, 9, NULL, NULL), "a small (inline) payload");
    ferry_client_close(c);

    /* ferry framing with RDMA WRITE off (both ends of this process read the
     * variable): 16 MiB each way as SENDs, 64 of them on a ring of 16, so
     * credits must come back in credit messages while data flows */
    setenv("FERRY_RDMA_WRITE_MIN", "1099511627776", 1);
    if (CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
              err.msg)) {
        struct ferry_client_conn_stats s0, s1;
        ferry_client_conn_stats(c, &s0);
        CHECK(big_roundtrip(c, 16 * MIB, 10, NULL, NULL), "16 MiB by SENDs under credits");
        ferry_client_conn_stats(c, &s1);
        CHECK(s1.writes_posted == s0.writes_posted && s1.credit_msgs > s0.credit_msgs,
              "no WRITE, and the client returned credits while receiving (%" PRIu64 " credit messages, %" PRIu64
              " waits for credits)",
              s1.credit_msgs - s0.credit_msgs, s1.credit_waits - s0.credit_waits);
        ferry_client_close(c);
    }
    /* WRITE offered for a payload whose destination is not registered (a
     * server buffer under 1 MiB): the server answers "send it", and GET's
     * sink goes unused */
    setenv("FERRY_RDMA_WRITE_MIN", "65536", 1);
    if (CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
              err.msg)) {
        struct ferry_client_conn_stats s0, s1;
        ferry_client_conn_stats(c, &s0);
        CHECK(big_roundtrip(c, 600 * 1024 + 3, 11, NULL, NULL), "600 KiB offered by WRITE, sent by SEND");
        ferry_client_conn_stats(c, &s1);
        CHECK(s1.writes_posted == s0.writes_posted && s1.mr_regs > s0.mr_regs,
              "the client registered its memory (%" PRIu64 " times) but wrote nothing", s1.mr_regs - s0.mr_regs);
        ferry_client_close(c);
    }
    unsetenv("FERRY_RDMA_WRITE_MIN");
}

/* ---- figures: verbs work and CPU copies of one 64 MiB transfer ---------------------- */

/* The server's counters, as its per-connection summary line logs them. */
struct verbs_figures {
    uint64_t sends, recvs, writes, reads, completions, sleeps, copies, credit_msgs, credit_waits, written;
};

static bool parse_summary(const char *text, struct verbs_figures *f) {
    const char *p = strstr(text, "; rdma: ");
    return p && sscanf(p, "; rdma: %" SCNu64 " sends, %" SCNu64 " recvs, %" SCNu64 " writes, %" SCNu64
                          " reads posted, %" SCNu64 " completions, %" SCNu64 " cq sleeps, %" SCNu64
                          " bytes copied, %" SCNu64 " credit messages, %" SCNu64 " credit waits, %" SCNu64
                          " bytes written",
                       &f->sends, &f->recvs, &f->writes, &f->reads, &f->completions, &f->sleeps,
                       &f->copies, &f->credit_msgs, &f->credit_waits, &f->written) == 10;
}

/* Receiver-not-ready NAKs the guest's two rxe devices received, from their
 * hardware counters (what `rdma statistic` shows); -1 when unreadable. */
static long long rnr_naks(void) {
    long long total = 0;
    for (int d = 0; d < 2; d++) {
        char path[128];
        snprintf(path, sizeof path, "/sys/class/infiniband/rxe%d/ports/1/hw_counters/rcvd_rnr_err", d);
        FILE *f = fopen(path, "r");
        long long v = -1;
        if (f == NULL || fscanf(f, "%lld", &v) != 1) v = -1;
        if (f) fclose(f);
        if (v < 0) return -1;
        total += v;
    }
    return total;
}

/* One connection that moves 64 MiB one way (SET_TENSOR, or GET_TENSOR of a
 * fresh buffer), so the server's summary on close covers that transfer
 * (plus HELLO, ALLOC_BUFFER, FREE_BUFFER and its initial receive ring).
 * The client's figures are the transfer alone. The server's log is caught
 * from stderr while the connection lives, then written back. */
static void figures_transfer(struct test_server *ts, bool set, bool ggml) {
    const char *what = set ? (ggml ? "ggml framing: SET_TENSOR" : "ferry framing: SET_TENSOR")
                           : (ggml ? "ggml framing: GET_TENSOR" : "ferry framing: GET_TENSOR");
    const uint64_t n = 64 * MIB, chunks = n / (256 * 1024);
    struct ferry_server_stats st;
    double t0 = now_s();
    do { /* earlier connections gone, so the one summary caught is this one's */
        ferry_server_get_stats(ts->s, &st);
        if (st.conns_open == 0) break;
        usleep(20000);
    } while (now_s() - t0 < 30);
    if (!CHECK(st.conns_open == 0, "%s: no other connection open", what)) return;
    fflush(stderr);
    FILE *cap = tmpfile();
    int saved = dup(2);
    if (!CHECK(cap && saved >= 0 && dup2(fileno(cap), 2) >= 0, "catch stderr")) {
        if (cap) fclose(cap);
        if (saved >= 0) close(saved);
        return;
    }
    struct ferry_error err;
    struct ferry_client *c = NULL;
    struct ferry_client_conn_stats c0 = { 0 }, c1 = { 0 };
    long long rnr0 = -1, rnr1 = -1;
    bool ok = false;
    uint8_t *data = malloc(n);
    if (client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK && data) {
        struct ferry_remote_buffer buf;
        if (ferry_client_alloc_buffer(c, 0, n, &buf, &err) == FERRY_OK) {
            struct ferry_tensor t;
            int64_t ne[1] = { (int64_t)n };
            ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
            ferry_remote_tensor_place(&t, &buf, 0, &err);
            fill(data, n, set ? 21 : 22);
            ferry_client_conn_stats(c, &c0);
            rnr0 = rnr_naks();
            int rc = set ? ferry_client_set_tensor(c, &t, 0, data, n, &err)
                         : ferry_client_get_tensor(c, &t, 0, data, n, &err);
            rnr1 = rnr_naks();
            ferry_client_conn_stats(c, &c1);
            ok = rc == FERRY_OK;
            ferry_client_free_buffer(c, &buf, &err);
        }
    }
    ferry_client_close(c);
    free(data);
    t0 = now_s();
    do { /* the summary is logged before the server counts the connection gone */
        ferry_server_get_stats(ts->s, &st);
        if (st.conns_open == 0) break;
        usleep(20000);
    } while (now_s() - t0 < 30);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char text[16384] = "";
    rewind(cap);
    size_t got = fread(text, 1, sizeof text - 1, cap);
    text[got] = 0;
    fclose(cap);
    fputs(text, stderr); /* the server's lines stay in the log */
    if (!CHECK(ok, "%s of 64 MiB for the figures: %s", what, err.msg)) return;
    struct verbs_figures sv = { 0 };
    if (!CHECK(parse_summary(text, &sv), "the server's summary carries the rdma counters")) return;
    struct verbs_figures cl = { c1.sends_posted - c0.sends_posted, c1.recvs_posted - c0.recvs_posted,
                                c1.writes_posted - c0.writes_posted, c1.reads_posted - c0.reads_posted,
                                c1.completions - c0.completions,     c1.cq_sleeps - c0.cq_sleeps,
                                c1.copies - c0.copies,               c1.credit_msgs - c0.credit_msgs,
                                c1.credit_waits - c0.credit_waits,   c1.write_bytes - c0.write_bytes };
    const struct verbs_figures *tx = set ? &cl : &sv, *rx = set ? &sv : &cl;
    if (ggml) {
        /* the data side: at least one SEND per 256 KiB chunk, each copied
         * through a bounce buffer; the other side one receive per chunk */
        CHECK(tx->sends >= chunks && tx->copies >= n, "%s: sender posted %" PRIu64 " SENDs (>= %" PRIu64
              "), copied %" PRIu64 " bytes (>= 64 MiB)", what, tx->sends, chunks, tx->copies);
        CHECK(rx->recvs >= chunks && rx->completions >= chunks && rx->copies >= n,
              "%s: receiver re-posted %" PRIu64 " receives, reaped %" PRIu64 " completions (>= %" PRIu64
              "), copied %" PRIu64 " bytes",
              what, rx->recvs, rx->completions, chunks, rx->copies);
        CHECK(cl.writes == 0 && cl.reads == 0 && sv.writes == 0 && sv.reads == 0,
              "%s: no RDMA WRITE/READ in ggml-compatible mode", what);
        CHECK(set ? cl.copies < n + n / 64 : sv.copies < n + n / 64, "%s: one copy of the data on the sending side",
              what);
    } else {
        /* the data moves by RDMA WRITE between the caller's memory and the
         * server's registered buffer: a handful of work requests, and no
         * CPU copy of it on either side */
        CHECK(tx->writes >= 1 && tx->written == n, "%s: the sender wrote the 64 MiB by RDMA WRITE (%" PRIu64
              " WRITEs, %" PRIu64 " bytes)", what, tx->writes, tx->written);
        CHECK(cl.copies < 64 * 1024 && sv.copies < 64 * 1024,
              "%s: no bounce copies (client %" PRIu64 ", server %" PRIu64 " bytes copied)", what, cl.copies,
              sv.copies);
        CHECK(cl.sends + sv.sends < 64, "%s: a handful of SENDs (client %" PRIu64 ", server %" PRIu64 ")", what,
              cl.sends, sv.sends);
        if (rnr0 >= 0 && rnr1 >= 0)
            CHECK(rnr1 == rnr0, "%s: no receiver-not-ready NAK (credits): %lld", what, rnr1 - rnr0);
    }
    if (rnr0 >= 0 && rnr1 >= 0) printf("figures: %s 64 MiB: %lld RNR NAKs\n", what, rnr1 - rnr0);
    printf("figures: %s 64 MiB: client (this transfer): %" PRIu64 " sends, %" PRIu64 " recvs, %" PRIu64
           " writes, %" PRIu64 " reads posted, %" PRIu64 " completions, %" PRIu64 " cq sleeps, %" PRIu64
           " bytes copied, %" PRIu64 " bytes written, %" PRIu64 " credit messages, %" PRIu64
           " credit waits | server (whole connection): %" PRIu64 " sends, %" PRIu64 " recvs, %" PRIu64
           " writes, %" PRIu64 " reads posted, %" PRIu64 " completions, %" PRIu64 " cq sleeps, %" PRIu64
           " bytes copied, %" PRIu64 " bytes written, %" PRIu64 " credit messages, %" PRIu64 " credit waits\n",
           what, cl.sends, cl.recvs, cl.writes, cl.reads, cl.completions, cl.sleeps, cl.copies, cl.written,
           cl.credit_msgs, cl.credit_waits, sv.sends, sv.recvs, sv.writes, sv.reads, sv.completions, sv.sleeps,
           sv.copies, sv.written, sv.credit_msgs, sv.credit_waits);
    fflush(stdout);
}

static void test_reconnect_cost(struct test_server *ts, const char *what);

static void test_figures(struct test_server *ts) {
    figures_transfer(ts, true, false);
    figures_transfer(ts, false, false);
    struct test_server g;
    if (!CHECK(server_start_as(&g, SERVER_IP, FERRY_TRANSPORT_RDMA, true), "a server in ggml's framing")) return;
    figures_transfer(&g, true, true);
    figures_transfer(&g, false, true);
    test_reconnect_cost(&g, "ggml framing");
    test_server_stop(&g);
    test_reconnect_cost(ts, "ferry framing");
}

/* This side's counters and the peer's (STATS), outside any request;
 * ours before the question (mine_first) or after the answer, so that a
 * span between two calls holds none of our STATS messages. */
static bool both_counters(struct ferry_client *c, struct ferry_conn_stats *mine, struct ferry_conn_stats *peer,
                          bool mine_first, struct ferry_error *err) {
    pthread_mutex_lock(&c->lock);
    if (c->conn && mine_first) *mine = *ferry_conn_stats(c->conn);
    bool ok = c->conn && ferry_conn_peer_counters(c->conn, peer, err) == FERRY_OK;
    if (ok && !mine_first) *mine = *ferry_conn_stats(c->conn);
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* N small requests in a row between ferry peers: one inline SEND each
 * way, never a credit-only message, and no wake-up beyond the one a
 * sleeping side needs for the message it waits for (send completions do
 * not wake it: solicited events). With a ggml-framing server there are no
 * peer counters to ask for. */
static void test_small_cost(struct test_server *ts) {
    enum { N = 200 };
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (!CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
               err.msg))
        return;
    struct ferry_conn_stats m0, m1, p0, p1;
    bool ok = both_counters(c, &m0, &p0, false, &err);
    CHECK(ok, "the server's counters over STATS: %s", ok ? "" : err.msg);
    for (int i = 0; i < N && ok; i++) {
        uint64_t al = 0;
        ok = CHECK(ferry_client_alignment(c, 0, &al, &err) == FERRY_OK && al > 0, "GET_ALIGNMENT %d: %s", i, err.msg);
    }
    if (ok && CHECK(both_counters(c, &m1, &p1, true, &err), "the server's counters again: %s", err.msg)) {
        /* the server's span holds its answer to the first STATS too */
        uint64_t cs = m1.sends_posted - m0.sends_posted, ss = p1.sends_posted - p0.sends_posted;
        CHECK(cs == N && (ss == N || ss == N + 1), "one SEND per request each way (client %" PRIu64 ", server %" PRIu64
              " for %d)", cs, ss, N);
        CHECK(m1.credit_msgs == m0.credit_msgs && p1.credit_msgs == p0.credit_msgs, "no credit message (client %" PRIu64
              ", server %" PRIu64 ")", m1.credit_msgs - m0.credit_msgs, p1.credit_msgs - p0.credit_msgs);
        uint64_t cw = m1.cq_wakeups - m0.cq_wakeups, sw = p1.cq_wakeups - p0.cq_wakeups;
        CHECK(cw <= N && sw <= N + 1, "at most one wake-up per request per side (client %" PRIu64 ", server %" PRIu64
              ")", cw, sw);
        printf("figures: per small request, ferry framing: client %.2f SENDs, %.2f completions, %.2f sleeps, %.2f "
               "wake-ups, %.1f us spin | server %.2f SENDs, %.2f completions, %.2f sleeps, %.2f wake-ups, %.1f us spin\n",
               (double)cs / N, (double)(m1.completions - m0.completions) / N, (double)(m1.cq_sleeps - m0.cq_sleeps) / N,
               (double)cw / N, (double)(m1.spin_us - m0.spin_us) / N, (double)ss / N,
               (double)(p1.completions - p0.completions) / N, (double)(p1.cq_sleeps - p0.cq_sleeps) / N, (double)sw / N,
               (double)(p1.spin_us - p0.spin_us) / N);
    }
    ferry_client_close(c);
    struct test_server g;
    if (!CHECK(server_start_as(&g, SERVER_IP, FERRY_TRANSPORT_RDMA, true), "a server in ggml's framing")) return;
    if (CHECK(client_open(g.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s", err.msg)) {
        pthread_mutex_lock(&c->lock);
        int rc = ferry_conn_peer_counters(c->conn, &p0, &err);
        pthread_mutex_unlock(&c->lock);
        CHECK(rc == FERRY_ERR_UNSUPPORTED, "no STATS in ggml's framing (rc %d)", rc);
        uint64_t al = 0;
        CHECK(ferry_client_alignment(c, 0, &al, &err) == FERRY_OK, "the connection is unharmed: %s", err.msg);
        ferry_client_close(c);
    }
    test_server_stop(&g);
}

struct worker {
    const char *endpoint;
    int id;
    bool ok;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (client_open(w->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) != FERRY_OK) {
        fprintf(stderr, "worker %d: %s\n", w->id, err.msg);
        return NULL;
    }
    w->ok = strcmp(ferry_client_transport(c, NULL, 0), "rdma") == 0;
    for (int i = 0; i < 3 && w->ok; i++) w->ok = big_roundtrip(c, 4 * MIB + (size_t)w->id * 4096, (uint64_t)(w->id * 10 + i), NULL, NULL);
    ferry_client_close(c);
    return NULL;
}

static void test_several(struct test_server *ts) {
    enum { N = 4 };
    pthread_t th[N];
    struct worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct worker){ ts->endpoint, i, false };
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    int good = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        good += w[i].ok;
    }
    CHECK(good == N, "%d connections at once, each with 3 x 4 MiB both ways: %d ok", N, good);
}

/* Malformed caps close the connection; the server keeps serving. */
static void test_bad_caps(struct test_server *ts) {
    struct ferry_error err;
    static const uint8_t bad[3][24] = {
        { 0x01, 0x00, 0x00, 0x01, 0x01 },                                  /* qpn over 24 bits */
        { 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10 },                  /* psn over 24 bits */
        { 0x05, 0x00, 0x00, 0x00, 0x05 },                                  /* zero GID */
    };
    for (int k = 0; k < 3; k++) {
        struct rpc_raw *raw = NULL;
        if (!CHECK(rpc_raw_connect(SERVER_IP, ts->port, 5000, &raw, &err) == FERRY_OK, "raw connect: %s", err.msg))
            return;
        uint8_t cmd = FERRY_RPC_CMD_HELLO, len[8], rl[8];
        ferry_put_le64(len, 24);
        struct iovec hdr[2] = { { &cmd, 1 }, { len, 8 } }, body = { (void *)bad[k], 24 };
        int rc = ferry_conn_send(raw->conn, hdr, 2, &body, 1, &err);
        if (rc == FERRY_OK) rc = ferry_conn_recv_header(raw->conn, rl, 8, &err);
        CHECK(rc == FERRY_ERR_CLOSED, "bad caps %d: the server closes (rc %d)", k, rc);
        rpc_raw_close(raw);
    }
    struct ferry_client *c = NULL;
    CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "still serving: %s",
          err.msg);
    ferry_client_close(c);
}

static void test_refusals(struct test_server *rdma_srv) {
    struct ferry_error err;
    struct ferry_client *c = NULL;
    /* server on TCP only, client requires RDMA */
    struct test_server tcp_srv;
    if (server_start(&tcp_srv, SERVER_IP, FERRY_TRANSPORT_TCP)) {
        double t0 = now_s();
        int rc = client_open(tcp_srv.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err);
        CHECK(rc == FERRY_ERR_UNSUPPORTED && strstr(err.msg, "server did not accept"),
              "required RDMA against a TCP-only server: refused (%s)", err.msg);
        CHECK(now_s() - t0 < 10, "at once");
        rc = client_open(tcp_srv.endpoint, FERRY_TRANSPORT_AUTO, CLIENT_DEV, &c, &err);
        CHECK(rc == FERRY_OK && strcmp(ferry_client_transport(c, NULL, 0), "tcp") == 0, "auto: TCP with it");
        ferry_client_close(c);
        test_server_stop(&tcp_srv);
    }
    /* server requires RDMA, client offers none */
    int rc = client_open(rdma_srv->endpoint, FERRY_TRANSPORT_TCP, NULL, &c, &err);
    CHECK(rc != FERRY_OK && c == NULL, "a TCP-only client is refused by a server requiring RDMA (%s)", err.msg);
    /* no such device */
    rc = client_open(rdma_srv->endpoint, FERRY_TRANSPORT_RDMA, "nosuchdev0", &c, &err);
    CHECK(rc == FERRY_ERR_UNSUPPORTED && strstr(err.msg, "nosuchdev0"), "unknown device named: %s", err.msg);
    /* auto with an unknown device: TCP, and the server (requiring RDMA) refuses */
    rc = client_open(rdma_srv->endpoint, FERRY_TRANSPORT_AUTO, "nosuchdev0", &c, &err);
    CHECK(rc != FERRY_OK, "auto without a usable device against a server requiring RDMA: refused");
}

/* ---- killed peers (child processes) --------------------------------------------------- */

static const char *self_exe;

static pid_t spawn(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        execv(self_exe, argv);
        _exit(127);
    }
    return pid;
}

/* child: a client that uploads 64 MiB again and again until killed */
static int child_client(const char *endpoint) {
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (client_open(endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) != FERRY_OK) {
        fprintf(stderr, "child client: %s\n", err.msg);
        return 1;
    }
    for (;;) big_roundtrip(c, 64 * MIB, 1, NULL, NULL);
}

/* child: a server on SERVER_IP that prints its port and serves until killed */
static int child_server(void) {
    struct test_server ts;
    if (!server_start(&ts, SERVER_IP, FERRY_TRANSPORT_RDMA)) return 1;
    printf("PORT %d\n", ts.port);
    fflush(stdout);
    pthread_join(ts.thread, NULL);
    return 0;
}

static void test_client_killed(struct test_server *ts) {
    struct ferry_server_stats before, after;
    /* connections of the tests before may still be closing: wait until
     * the count holds still for half a second (10 s at most), so that the
     * child's close is the only change measured below */
    ferry_server_get_stats(ts->s, &before);
    double settle = now_s(), still = now_s();
    while (now_s() - settle < 10 && now_s() - still < 0.5) {
        usleep(20000);
        ferry_server_get_stats(ts->s, &after);
        if (after.conns_open != before.conns_open) before = after, still = now_s();
    }
    ferry_server_get_stats(ts->s, &before);
    char *argv[] = { (char *)self_exe, "--child-client", ts->endpoint, NULL };
    pid_t pid = spawn(argv);
    if (!CHECK(pid > 0, "fork")) return;
    /* wait until it is moving data, then kill it mid-transfer */
    double t0 = now_s();
    for (;;) {
        ferry_server_get_stats(ts->s, &after);
        if (after.bytes_in > before.bytes_in + 8 * MIB || now_s() - t0 > 60) break;
        usleep(20000);
    }
    CHECK(after.bytes_in > before.bytes_in + 8 * MIB, "the child client transfers");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    double tk = now_s();
    for (;;) {
        ferry_server_get_stats(ts->s, &after);
        if (after.conns_open == before.conns_open || now_s() - tk > 30) break;
        usleep(20000);
    }
    CHECK(after.conns_open == before.conns_open, "the server noticed the dead client in %.1f s", now_s() - tk);
    struct ferry_error err;
    struct ferry_client *c = NULL;
    CHECK(client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "still serving: %s",
          err.msg);
    if (c) CHECK(big_roundtrip(c, 4 * MIB, 3, NULL, NULL), "and moving data");
    ferry_client_close(c);
}

/* A server in a child process (its own environment and verbs state);
 * returns its pid and port, or -1. */
static pid_t spawn_server(int *port_out) {
    int pfd[2];
    if (!CHECK(pipe(pfd) == 0, "pipe")) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        char *argv[] = { (char *)self_exe, "--child-server", NULL };
        execv(self_exe, argv);
        _exit(127);
    }
    close(pfd[1]);
    FILE *f = fdopen(pfd[0], "r");
    int port = 0;
    char line[64];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "PORT %d", &port) == 1) break;
    if (f) fclose(f);
    if (!CHECK(port > 0, "child server started")) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    *port_out = port;
    return pid;
}

static void test_server_killed(void) {
    int port = 0;
    pid_t pid = spawn_server(&port);
    if (pid < 0) return;
    char endpoint[48];
    snprintf(endpoint, sizeof endpoint, "%s:%d", SERVER_IP, port);
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (CHECK(client_open(endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s", err.msg)) {
        struct ferry_remote_buffer buf;
        size_t n = 64 * MIB;
        if (CHECK(ferry_client_alloc_buffer(c, 0, n, &buf, &err) == FERRY_OK, "alloc")) {
            struct ferry_tensor t;
            int64_t ne[1] = { (int64_t)n };
            ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
            ferry_remote_tensor_place(&t, &buf, 0, &err);
            uint8_t *p = calloc(1, n);
            ferry_client_set_tensor(c, &t, 0, p, n, &err); /* warm up */
            pid_t killer = fork();
            if (killer == 0) { /* kill the server while a GET_TENSOR is under way */
                usleep(300000);
                kill(pid, SIGKILL);
                _exit(0);
            }
            double t0 = now_s();
            int rc = FERRY_OK;
            for (int i = 0; i < 100 && rc == FERRY_OK; i++) rc = ferry_client_get_tensor(c, &t, 0, p, n, &err);
            double dt = now_s() - t0;
            waitpid(killer, NULL, 0);
            CHECK(rc != FERRY_OK && ferry_client_is_broken(c), "the client gets an error: %s", err.msg);
            printf("  server killed: client error after %.2f s of transfers: %s\n", dt, err.msg);
            uint32_t nd;
            CHECK(ferry_client_device_count(c, &nd, &err) == FERRY_ERR_CLOSED, "later calls fail fast");
            free(p);
        }
        ferry_client_close(c);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Two ferry peers agree on the smaller path MTU: the client caps its own
 * at 512 ($FERRY_RDMA_MTU), the server (another process, 1024) takes its
 * queue pair back to RESET and up again at 512 before answering. */
static void test_mtu_agree(void) {
    int port = 0;
    unsetenv("FERRY_RDMA_MTU");
    pid_t pid = spawn_server(&port);
    if (pid < 0) return;
    setenv("FERRY_RDMA_MTU", "512", 1);
    char endpoint[48];
    snprintf(endpoint, sizeof endpoint, "%s:%d", SERVER_IP, port);
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (CHECK(client_open(endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s", err.msg)) {
        char line[512];
        ferry_client_transport(c, line, sizeof line);
        printf("  client: %s\n", line);
        CHECK(strstr(line, "mtu 512,") && strstr(line, "ferry framing"), "agreed on mtu 512: %s", line);
        CHECK(big_roundtrip(c, 4 * MIB, 12, NULL, NULL), "4 MiB at the agreed MTU");
        ferry_client_close(c);
    }
    unsetenv("FERRY_RDMA_MTU");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Connection setup, HELLO and (between ferry peers) the negotiation
 * included: what a reconnect costs. */
static void test_reconnect_cost(struct test_server *ts, const char *what) {
    struct ferry_error err;
    double total = 0;
    int n = 0;
    ferry_log_set_level(FERRY_LOG_DEBUG); /* each side's setup time */
    for (int i = 0; i < 10; i++) {
        struct ferry_client *c = NULL;
        double t0 = now_s();
        int rc = client_open(ts->endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err);
        double dt = now_s() - t0;
        if (!CHECK(rc == FERRY_OK, "connect %d: %s", i, err.msg)) break;
        ferry_client_close(c);
        total += dt;
        n++;
    }
    ferry_log_set_level(FERRY_LOG_INFO);
    if (n) printf("figures: %s: connect + HELLO + RDMA setup, mean of %d: %.1f ms\n", what, n, total / n * 1e3);
}

static void test_mtu_mismatch(void) {
    struct test_server ts;
    if (!server_start(&ts, SERVER_IP, FERRY_TRANSPORT_RDMA)) return;
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (CHECK(client_open(ts.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
              err.msg)) {
        char line[512];
        ferry_client_transport(c, line, sizeof line);
        printf("  client: %s\n", line);
        CHECK(big_roundtrip(c, 64 * MIB, 11, NULL, NULL), "64 MiB with mismatched link MTUs");
        ferry_client_close(c);
    }
    test_server_stop(&ts);
}

/* Run with a memlock limit below one connection's 5 MiB and without
 * CAP_IPC_LOCK: required RDMA fails at once saying what to do; auto says
 * why in a warning and works over TCP. */
static void test_memlock(void) {
    struct test_server ts;
    if (!server_start(&ts, SERVER_IP, FERRY_TRANSPORT_AUTO)) return;
    struct ferry_error err;
    struct ferry_client *c = NULL;
    double t0 = now_s();
    int rc = client_open(ts.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err);
    CHECK(rc == FERRY_ERR_NOMEM && strstr(err.msg, "memlock") && strstr(err.msg, "ulimit -l"),
          "required RDMA under a small memlock limit: refused with advice (%s)", err.msg);
    CHECK(now_s() - t0 < 10, "at once");
    printf("  %s\n", err.msg);
    rc = client_open(ts.endpoint, FERRY_TRANSPORT_AUTO, CLIENT_DEV, &c, &err);
    CHECK(rc == FERRY_OK && strcmp(ferry_client_transport(c, NULL, 0), "tcp") == 0, "auto: TCP, with a warning");
    if (c) CHECK(big_roundtrip(c, 1 * MIB, 5, NULL, NULL), "and it works");
    ferry_client_close(c);
    test_server_stop(&ts);
}

/* ---- a partition: the RDMA path fails while TCP (over lo) stays up ------------------ */

/* Only the queue pair can tell: the liveness socket is fine. The sender's
 * retries run out (7 tries of 1.07 s: 7.5 s or a little more), its
 * completion fails, and the client gets an error that names the peer and
 * says the RDMA path, not the peer, was lost; the server drops that
 * connection and goes on serving. Needs root (tc, ip link). */
static void test_partition(void) {
    struct test_server ts;
    if (!server_start(&ts, SERVER_IP, FERRY_TRANSPORT_RDMA)) return;
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (CHECK(client_open(ts.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "connect: %s",
              err.msg)) {
        CHECK(big_roundtrip(c, 4 * MIB, 31, NULL, NULL), "a transfer before the partition");
        struct ferry_remote_buffer buf;
        size_t n = 4 * MIB;
        uint8_t *p = calloc(1, n);
        if (CHECK(p && ferry_client_alloc_buffer(c, 0, n, &buf, &err) == FERRY_OK, "alloc: %s", err.msg)) {
            struct ferry_tensor t;
            int64_t ne[1] = { (int64_t)n };
            ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
            ferry_remote_tensor_place(&t, &buf, 0, &err);
            /* every packet rxe0 sends is dropped (netem), as on a cut
             * cable; without netem, the link goes down instead */
            bool netem = system("tc qdisc add dev veth0 root netem loss 100% 2>/dev/null") == 0;
            if (!netem) CHECK(system("ip link set dev veth0 down") == 0, "veth0 down");
            double t0 = now_s();
            int rc = ferry_client_set_tensor(c, &t, 0, p, n, &err);
            if (rc == FERRY_OK) rc = ferry_client_get_tensor(c, &t, 0, p, n, &err);
            double took = now_s() - t0;
            CHECK(rc != FERRY_OK && took < 30, "the transfer across the partition fails after %.2f s: %s", took,
                  rc ? err.msg : "no error");
            CHECK(rc != FERRY_OK && strstr(err.msg, SERVER_IP) && strstr(err.msg, "RDMA path lost"),
                  "the error names the peer and what was lost: %s", rc ? err.msg : "no error");
            printf("  partition (%s): the client's transfer failed after %.2f s: %s\n",
                   netem ? "all packets dropped" : "link down", took, rc ? err.msg : "-");
            CHECK(system(netem ? "tc qdisc del dev veth0 root" : "ip link set dev veth0 up") == 0, "veth0 back");
        }
        free(p);
        ferry_client_close(c);
    }
    usleep(500000);
    if (CHECK(client_open(ts.endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK,
              "a new client after the partition: %s", err.msg)) {
        CHECK(big_roundtrip(c, 4 * MIB, 33, NULL, NULL), "the server still serves");
        ferry_client_close(c);
    }
    test_server_stop(&ts);
}

/* ---- transient loss: the connection rides it out ------------------------------------ */

/* Runs cmd (sh -c) after delay_us in a child process; returns its pid. */
static pid_t later(const char *cmd, unsigned delay_us) {
    pid_t pid = fork();
    if (pid == 0) {
        usleep(delay_us);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static bool small_request(struct ferry_client *c, const char *what) {
    struct ferry_error err;
    uint32_t n = 0;
    return CHECK(ferry_client_device_count(c, &n, &err) == FERRY_OK && n >= 1, "%s: a small request: %s", what,
                 err.msg);
}

#define BLACKOUT(t)                                                                                      \
    "tc qdisc add dev veth0 root netem loss 100%; tc qdisc add dev veth1 root netem loss 100%; sleep " t \
    "; tc qdisc del dev veth0 root; tc qdisc del dev veth1 root"

/* What a live network does to a connection, between requests and under a
 * transfer: the neighbour cache flushed (the next packets wait for ARP),
 * veth0 down for 300 ms and 3 s between requests, every packet lost both
 * ways for 300 ms and 3 s under a transfer (a cable pulled beyond
 * the switch: the hosts' links stay up). The queue pair's retry budget (7
 * tries of 1.07 s) covers each, so every transfer must finish with
 * correct bytes on the same connection. (veth0 taken down under a
 * transfer is not among them: Soft-RoCE then finds no route and fails the
 * work request locally, without a retry.) Needs root (ip, tc). */
static void blips_against(const char *endpoint, const char *what) {
    static const struct {
        const char *name, *cmd;
        bool during; /* under a 64 MiB transfer, else between two requests */
    } blips[] = {
        { "neighbours flushed between requests", "ip neigh flush all", false },
        { "neighbours flushed under 64 MiB", "ip neigh flush all", true },
        { "veth0 down 300 ms between requests", "ip link set dev veth0 down; sleep 0.3; ip link set dev veth0 up",
          false },
        { "veth0 down 3 s between requests", "ip link set dev veth0 down; sleep 3; ip link set dev veth0 up", false },
        { "all packets lost 300 ms under 64 MiB", BLACKOUT("0.3"), true },
        { "all packets lost 3 s under 64 MiB", BLACKOUT("3"), true },
    };
    struct ferry_error err;
    struct ferry_client *c = NULL;
    if (!CHECK(client_open(endpoint, FERRY_TRANSPORT_RDMA, CLIENT_DEV, &c, &err) == FERRY_OK, "%s: connect: %s",
               what, err.msg))
        return;
    char line[512];
    printf("  %s: %s\n", what, ferry_client_transport(c, line, sizeof line) ? line : "?");
    for (size_t i = 0; i < sizeof blips / sizeof blips[0]; i++) {
        if (!small_request(c, blips[i].name)) break;
        double t0 = now_s();
        pid_t pid = -1;
        if (blips[i].during) pid = later(blips[i].cmd, 150000);
        else CHECK(system(blips[i].cmd) == 0, "%s", blips[i].cmd);
        double t1 = now_s();
        bool ok = big_roundtrip(c, blips[i].during ? 64 * MIB : 4 * MIB, 40 + i, NULL, NULL);
        if (pid > 0) waitpid(pid, NULL, 0);
        ok = ok && small_request(c, blips[i].name);
        CHECK(ok && !ferry_client_is_broken(c), "%s, %s: the connection survives", what, blips[i].name);
        printf("figures: %s, %s: %s, the transfer took %.2f s\n", what, blips[i].name, ok ? "survived" : "FAILED",
               now_s() - t1 + (blips[i].during ? t1 - t0 : 0));
        if (!ok) break;
    }
    ferry_client_close(c);
}

/* test_rdma --blips [ENDPOINT]: against a ferry server in ferry framing
 * and one in ggml framing (in this process), and against ENDPOINT (a
 * ggml rpc-server on rxe1, from scripts/rdma-test.sh) when given. */
static void test_blips(const char *ggml_endpoint) {
    if (system("ip link set dev veth0 up; tc qdisc del dev veth0 root 2>/dev/null")) {} /* a clean start */
    for (int ggml = 0; ggml < 2; ggml++) {
        struct test_server ts;
        if (!server_start_as(&ts, SERVER_IP, FERRY_TRANSPORT_RDMA, ggml)) continue;
        blips_against(ts.endpoint, ggml ? "ferry client -> ferry server (ggml framing)"
                                         : "ferry client <-> ferry server");
        test_server_stop(&ts);
    }
    if (ggml_endpoint) blips_against(ggml_endpoint, "ferry client -> ggml rpc-server");
    if (system("ip link set dev veth0 up")) {}
}

int main(int argc, char **argv) {
    self_exe = argv[0];
    ferry_log_set_level(FERRY_LOG_WARN);
    if (argc >= 3 && strcmp(argv[1], "--child-client") == 0) return child_client(argv[2]);
    if (argc >= 2 && strcmp(argv[1], "--child-server") == 0) return child_server();
    if (argc >= 4 && strcmp(argv[1], "--hold") == 0) { /* an idle RDMA client, for CPU measurements */
        struct ferry_error err;
        struct ferry_client *c = NULL;
        if (client_open(argv[2], FERRY_TRANSPORT_RDMA, NULL, &c, &err) != FERRY_OK) {
            fprintf(stderr, "hold: %s\n", err.msg);
            return 1;
        }
        printf("hold: connected, idle for %s s\n", argv[3]);
        fflush(stdout);
        sleep((unsigned)atoi(argv[3]));
        uint32_t n = 0;
        int rc = ferry_client_device_count(c, &n, &err);
        ferry_client_close(c);
        return rc == FERRY_OK ? 0 : 1;
    }
    const char *env = getenv("FERRY_TEST_RDMA");
    bool real = env && strcmp(env, "1") == 0;
    if (argc >= 2 && strcmp(argv[1], "--memlock") == 0) {
        test_memlock();
        return test_summary();
    }
    if (argc >= 2 && strcmp(argv[1], "--partition") == 0) {
        test_partition();
        return test_summary();
    }
    if (argc >= 2 && strcmp(argv[1], "--blips") == 0) {
        test_blips(argc >= 3 ? argv[2] : NULL);
        return test_summary();
    }
    if (argc >= 2 && strcmp(argv[1], "--server-killed") == 0) {
        test_server_killed();
        return test_summary();
    }
    if (argc >= 2 && strcmp(argv[1], "--mtu-mismatch") == 0) {
        test_mtu_mismatch();
        return test_summary();
    }
    test_parse();
    if (!real) {
        test_no_device();
        return test_summary();
    }
    ferry_log_set_level(FERRY_LOG_INFO);
    char devs[1024];
    ferry_rdma_list_devices(devs, sizeof devs);
    printf("RDMA devices:\n%s\n", devs);
    double t0 = now_s();
    test_server_killed();
    printf("  [%.1f s] server killed\n", now_s() - t0);
    test_mtu_agree();
    printf("  [%.1f s] mtu agreed\n", now_s() - t0);
    struct test_server ts;
    if (!server_start(&ts, SERVER_IP, FERRY_TRANSPORT_RDMA)) return test_summary();
    test_every_command(&ts);
    printf("  [%.1f s] every command\n", now_s() - t0);
    test_big(&ts);
    printf("  [%.1f s] 64 MiB\n", now_s() - t0);
    test_figures(&ts);
    printf("  [%.1f s] figures\n", now_s() - t0);
    test_small_cost(&ts);
    printf("  [%.1f s] small requests\n", now_s() - t0);
    test_several(&ts);
    printf("  [%.1f s] several\n", now_s() - t0);
    test_bad_caps(&ts);
    test_refusals(&ts);
    printf("  [%.1f s] refusals\n", now_s() - t0);
    test_client_killed(&ts);
    printf("  [%.1f s] client killed\n", now_s() - t0);
    test_server_stop(&ts);
    return test_summary();
}
