/* The client library (src/client) against in-process `ferry serve`
 * instances on ephemeral loopback ports: every call with its result
 * checked, a remote graph matching the local engine bit for bit,
 * GRAPH_RECOMPUTE on the second run, several clients and threads on two
 * servers, and the failure paths: a refused connect, a server stopped
 * under a running GET_TENSOR, fail-fast calls afterwards, and reconnecting
 * to a restarted server whose cache restores a >10 MiB weight. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/client.h"
#include "ferry/engine.h"
#include "ferry/log.h"
#include "ferry/server.h"
#include "proto/rpc.h"
#include "transport/transport.h"
#include "testutil.h"

#define MIB (1024ull * 1024)

/* ---- servers ----------------------------------------------------------------------- */

static bool server_start(struct test_server *ts, int port, const char *cache_dir) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = port;
    cfg.n_threads = 2;
    cfg.mem_limit = 256 * MIB;
    cfg.max_payload = 64 * MIB;
    cfg.cache_dir = cache_dir;
    cfg.cache_max_bytes = 64 * MIB;
    return test_server_start(ts, &cfg);
}

static struct ferry_client *open_client(const char *endpoint) {
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.response_timeout_ms = 10000; /* nothing here may hang */
    o.frame_timeout_ms = 10000;
    struct ferry_client *c = NULL;
    struct ferry_error err;
    CHECK(ferry_client_connect(endpoint, &o, &c, &err) == FERRY_OK, "connect %s: %s", endpoint, err.msg);
    return c;
}

/* ---- a small model: out = w x + bias ------------------------------------------------ */

struct model {
    int K, M, P;
    struct ferry_tensor w, x, bias, mm, out;
    float *wd, *xd, *bd; /* host copies of the inputs */
};

static void model_init(struct model *m, int K, int M, int P, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->K = K, m->M = M, m->P = P;
    int64_t nw[2] = { K, M }, nx[2] = { K, P }, no[2] = { M, P };
    ferry_tensor_init(&m->w, FERRY_TYPE_F32, 2, nw, NULL);
    ferry_tensor_init(&m->x, FERRY_TYPE_F32, 2, nx, NULL);
    ferry_tensor_init(&m->bias, FERRY_TYPE_F32, 2, no, NULL);
    ferry_tensor_init(&m->mm, FERRY_TYPE_F32, 2, no, NULL);
    ferry_tensor_init(&m->out, FERRY_TYPE_F32, 2, no, NULL);
    strcpy(m->w.name, "w"), strcpy(m->x.name, "x"), strcpy(m->bias.name, "bias");
    strcpy(m->mm.name, "mm"), strcpy(m->out.name, "out");
    m->mm.op = FERRY_OP_MUL_MAT, m->mm.src[0] = &m->w, m->mm.src[1] = &m->x;
    m->mm.flags = FERRY_FLAG_COMPUTE;
    m->out.op = FERRY_OP_ADD, m->out.src[0] = &m->mm, m->out.src[1] = &m->bias;
    m->out.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    m->wd = malloc(sizeof(float) * K * M);
    m->xd = malloc(sizeof(float) * K * P);
    m->bd = malloc(sizeof(float) * M * P);
    for (int i = 0; i < K * M; i++) m->wd[i] = test_rand_uniform(&seed, -1, 1);
    for (int i = 0; i < K * P; i++) m->xd[i] = test_rand_uniform(&seed, -1, 1);
    for (int i = 0; i < M * P; i++) m->bd[i] = test_rand_uniform(&seed, -1, 1);
}

static void model_free(struct model *m) {
    free(m->wd), free(m->xd), free(m->bd);
}

/* The same graph on the local engine: the reference, bit for bit. */
static float *model_local(const struct model *m) {
    struct model l = *m;
    float *mmd = malloc(sizeof(float) * m->M * m->P), *outd = malloc(sizeof(float) * m->M * m->P);
    l.w.data = m->wd, l.x.data = m->xd, l.bias.data = m->bd, l.mm.data = mmd, l.out.data = outd;
    l.w.buffer = l.x.buffer = l.bias.buffer = l.mm.buffer = l.out.buffer = NULL;
    l.mm.src[0] = &l.w, l.mm.src[1] = &l.x, l.out.src[0] = &l.mm, l.out.src[1] = &l.bias;
    struct ferry_engine *e = ferry_engine_create(2);
    struct ferry_tensor *nodes[2] = { &l.mm, &l.out };
    struct ferry_error err;
    CHECK(ferry_engine_compute(e, nodes, 2, &err) == FERRY_OK, "local compute: %s", err.msg);
    ferry_engine_destroy(e);
    free(mmd);
    return outd;
}

/* Places the model's tensors: w alone in wbuf, the rest packed in buf. */
static bool model_place(struct model *m, struct ferry_remote_buffer *wbuf, struct ferry_remote_buffer *buf) {
    struct ferry_error err;
    uint64_t off = 0;
    bool ok = ferry_remote_tensor_place(&m->w, wbuf, 0, &err) == FERRY_OK;
    struct ferry_tensor *rest[4] = { &m->x, &m->bias, &m->mm, &m->out };
    for (int i = 0; i < 4 && ok; i++) {
        ok = ferry_remote_tensor_place(rest[i], buf, off, &err) == FERRY_OK;
        off += (ferry_nbytes(rest[i]) + 63) / 64 * 64;
    }
    return CHECK(ok, "tensors placed: %s", ok ? "" : err.msg);
}

static size_t model_buf_size(const struct model *m) {
    return 64 + 4 * ((sizeof(float) * (size_t)m->K * m->P + 63) / 64 * 64 +
                     (sizeof(float) * (size_t)m->M * m->P + 63) / 64 * 64);
}

static int model_upload_inputs(struct ferry_client *c, struct model *m, struct ferry_error *err) {
    int rc = ferry_client_set_tensor(c, &m->x, 0, m->xd, ferry_nbytes(&m->x), err);
    if (!rc) rc = ferry_client_set_tensor(c, &m->bias, 0, m->bd, ferry_nbytes(&m->bias), err);
    return rc;
}

/* Computes remotely and compares with the local engine, bit for bit. */
static bool model_check(struct ferry_client *c, struct model *m, const char *what) {
    struct ferry_tensor *nodes[2] = { &m->mm, &m->out };
    struct ferry_error err;
    size_t n = ferry_nbytes(&m->out);
    float *got = malloc(n), *want = model_local(m);
    int rc = ferry_client_graph_compute(c, 0, nodes, 2, &err);
    if (!rc) rc = ferry_client_get_tensor(c, &m->out, 0, got, n, &err);
    bool ok = CHECK(rc == FERRY_OK && memcmp(got, want, n) == 0, "%s: remote result equals the local engine's (%s)",
                    what, rc ? err.msg : "bit for bit");
    free(got), free(want);
    return ok;
}

/* ---- every call ----------------------------------------------------------------------- */

static void test_calls(struct test_server *ts) {
    struct ferry_client *c = open_client(ts->endpoint);
    if (!c) return;
    struct ferry_error err;
    uint32_t n_dev = 0;
    uint64_t free_mem = 0, total = 0, align = 0, max_size = 0;
    CHECK(ferry_client_device_count(c, &n_dev, &err) == FERRY_OK && n_dev == 1, "device_count = %u", n_dev);
    CHECK(ferry_client_device_memory(c, 0, &free_mem, &total, &err) == FERRY_OK && total == 256 * MIB &&
              free_mem <= total, "device_memory %" PRIu64 "/%" PRIu64, free_mem, total);
    CHECK(ferry_client_alignment(c, 0, &align, &err) == FERRY_OK && align >= 16 && (align & (align - 1)) == 0,
          "alignment %" PRIu64, align);
    CHECK(ferry_client_max_size(c, 0, &max_size, &err) == FERRY_OK && max_size >= MIB, "max_size %" PRIu64, max_size);

    struct ferry_remote_buffer buf, tiny;
    if (!CHECK(ferry_client_alloc_buffer(c, 0, 64 * 1024, &buf, &err) == FERRY_OK, "alloc: %s", err.msg)) {
        ferry_client_close(c);
        return;
    }
    CHECK(buf.handle != 0 && buf.size == 64 * 1024 && buf.place_base == buf.base && buf.client == c,
          "buffer filled in");
    uint64_t free_after = 0;
    ferry_client_device_memory(c, 0, &free_after, &total, &err);
    CHECK(free_after + 64 * 1024 <= free_mem, "free memory dropped by the allocation");
    CHECK(ferry_client_alloc_buffer(c, 0, 512 * MIB, &tiny, &err) == FERRY_ERR_NOMEM && !ferry_client_is_broken(c),
          "an allocation over the limit is NOMEM and the connection stays");

    struct ferry_tensor a, b, v;
    int64_t ne[2] = { 64, 4 };
    ferry_tensor_init(&a, FERRY_TYPE_F32, 2, ne, NULL);
    ferry_tensor_init(&b, FERRY_TYPE_F32, 2, ne, NULL);
    strcpy(a.name, "a"), strcpy(b.name, "b");
    CHECK(ferry_remote_tensor_place(&a, &buf, 0, &err) == FERRY_OK &&
              ferry_remote_tensor_place(&b, &buf, 4096, &err) == FERRY_OK,
          "place");
    CHECK(ferry_remote_tensor_place(&b, &buf, 64 * 1024 - 512, &err) == FERRY_ERR_INVALID, "place past the end refused");
    ferry_remote_tensor_place(&b, &buf, 4096, &err);

    float src[256], got[256];
    uint64_t seed = 3;
    for (int i = 0; i < 256; i++) src[i] = test_rand_uniform(&seed, -5, 5);
    CHECK(ferry_client_set_tensor(c, &a, 0, src, sizeof src, &err) == FERRY_OK, "set_tensor");
    CHECK(ferry_client_get_tensor(c, &a, 0, got, sizeof got, &err) == FERRY_OK && !memcmp(got, src, sizeof src),
          "get_tensor returns what was set");
    CHECK(ferry_client_get_tensor(c, &a, 512, got, 256, &err) == FERRY_OK && !memcmp(got, src + 128, 256),
          "get_tensor at an offset");
    CHECK(ferry_client_get_tensor(c, &a, 512, got, 1024, &err) == FERRY_ERR_INVALID && !ferry_client_is_broken(c),
          "a region past the tensor is refused locally");

    bool ok = false;
    CHECK(ferry_client_copy_tensor(c, &a, &b, &ok, &err) == FERRY_OK && ok, "copy_tensor");
    CHECK(ferry_client_get_tensor(c, &b, 0, got, sizeof got, &err) == FERRY_OK && !memcmp(got, src, sizeof src),
          "copy landed");
    CHECK(ferry_client_memset_tensor(c, &b, 16, 32, 0xff, &err) == FERRY_OK, "memset_tensor");
    uint8_t raw[64];
    ferry_client_get_tensor(c, &b, 0, raw, 64, &err);
    CHECK(!memcmp(raw, src, 16) && raw[16] == 0xff && raw[47] == 0xff && !memcmp(raw + 48, (uint8_t *)src + 48, 16),
          "memset touched exactly its region");

    /* a view of a's second row */
    int64_t nrow[1] = { 64 };
    ferry_tensor_init(&v, FERRY_TYPE_F32, 1, nrow, NULL);
    v.op = FERRY_OP_VIEW;
    CHECK(ferry_remote_tensor_view(&v, &a, 256, &err) == FERRY_OK, "view");
    CHECK(ferry_client_get_tensor(c, &v, 0, got, 256, &err) == FERRY_OK && !memcmp(got, src + 64, 256),
          "get through a view");

    CHECK(ferry_client_init_tensor(c, &a, &err) == FERRY_OK, "init_tensor");
    uint64_t asz = 0;
    CHECK(ferry_client_get_alloc_size(c, 0, &a, &asz, &err) == FERRY_OK && asz == ferry_nbytes(&a),
          "get_alloc_size = nbytes (%" PRIu64 ")", asz);
    bool hit = true;
    CHECK(ferry_client_set_tensor_hash(c, &a, 0, src, sizeof src, &hit, &err) == FERRY_OK && !hit,
          "set_tensor_hash of unknown data: miss");
    CHECK(ferry_client_upload(c, &a, 0, src, sizeof src, &hit, &err) == FERRY_OK && !hit, "small upload");

    CHECK(ferry_client_buffer_clear(c, &buf, 0x5a, &err) == FERRY_OK, "buffer_clear");
    ferry_client_get_tensor(c, &b, 0, raw, 64, &err);
    CHECK(raw[0] == 0x5a && raw[63] == 0x5a, "cleared");

    struct ferry_client_stats st;
    ferry_client_get_stats(c, &st);
    CHECK(st.requests[FERRY_RPC_CMD_HELLO] == 1 && st.requests[FERRY_RPC_CMD_GET_TENSOR] == 6 &&
              st.requests[FERRY_RPC_CMD_SET_TENSOR] == 2 && st.requests[FERRY_RPC_CMD_ALLOC_BUFFER] == 2,
          "requests counted per command");
    CHECK(st.bytes_out > 2 * sizeof src && st.bytes_in > 6 * 256, "bytes counted");

    CHECK(ferry_client_free_buffer(c, &buf, &err) == FERRY_OK && buf.client == NULL, "free_buffer");
    CHECK(ferry_client_get_tensor(c, &a, 0, got, 16, &err) == FERRY_ERR_INVALID, "a freed buffer's tensor is refused");
    uint64_t free_end = 0;
    ferry_client_device_memory(c, 0, &free_end, &total, &err);
    CHECK(free_end == free_mem, "memory back after free");
    ferry_client_close(c);

    struct ferry_client *bad = NULL;
    CHECK(ferry_client_connect("127.0.0.1", NULL, &bad, &err) == FERRY_ERR_INVALID && !bad, "endpoint without port");
    CHECK(ferry_client_connect("127.0.0.1:0", NULL, &bad, &err) == FERRY_ERR_INVALID, "port 0");
}

/* ---- graphs ------------------------------------------------------------------------------ */

static void test_graph(struct test_server *ts) {
    struct ferry_client *c = open_client(ts->endpoint);
    if (!c) return;
    struct ferry_error err;
    struct model m;
    model_init(&m, 96, 40, 7, 21);
    struct ferry_remote_buffer wbuf, buf;
    ferry_client_alloc_buffer(c, 0, ferry_nbytes(&m.w), &wbuf, &err);
    ferry_client_alloc_buffer(c, 0, model_buf_size(&m), &buf, &err);
    if (model_place(&m, &wbuf, &buf)) {
        ferry_client_set_tensor(c, &m.w, 0, m.wd, ferry_nbytes(&m.w), &err);
        model_upload_inputs(c, &m, &err);
        struct ferry_server_stats s0, s1;
        ferry_server_get_stats(ts->s, &s0);
        model_check(c, &m, "first compute");
        for (int i = 0; i < m.K * m.P; i++) m.xd[i] *= -0.5f;
        model_upload_inputs(c, &m, &err);
        model_check(c, &m, "second compute with a new input");
        struct ferry_client_stats st;
        ferry_client_get_stats(c, &st);
        ferry_server_get_stats(ts->s, &s1);
        CHECK(st.graphs_sent == 1 && st.graphs_recomputed == 1 && st.requests[FERRY_RPC_CMD_GRAPH_RECOMPUTE] == 1,
              "the second run was GRAPH_RECOMPUTE (sent %" PRIu64 ", recomputed %" PRIu64 ")", st.graphs_sent,
              st.graphs_recomputed);
        CHECK(s1.graphs_computed == s0.graphs_computed + 2, "the server computed both");

        /* freeing any buffer forgets the stored graph: the next run is sent whole */
        struct ferry_remote_buffer extra;
        ferry_client_alloc_buffer(c, 0, 4096, &extra, &err);
        ferry_client_free_buffer(c, &extra, &err);
        model_check(c, &m, "after a free");
        ferry_client_get_stats(c, &st);
        CHECK(st.graphs_sent == 2 && st.graphs_recomputed == 1, "sent whole after a free");

        /* a tensor of another client is refused before anything is sent */
        struct ferry_client *c2 = open_client(ts->endpoint);
        struct ferry_tensor *nodes[2] = { &m.mm, &m.out };
        if (c2) {
            CHECK(ferry_client_graph_compute(c2, 0, nodes, 2, &err) == FERRY_ERR_INVALID && !ferry_client_is_broken(c2),
                  "graph with another connection's tensors refused: %s", err.msg);
            ferry_client_close(c2);
        }
    }
    ferry_client_close(c);
    CHECK(buf.client == NULL && wbuf.handle == 0, "close detaches buffers");
    model_free(&m);
}

/* ---- several clients, threads and servers ------------------------------------------------------ */

struct worker {
    struct ferry_client *c; /* shared by two workers for the per-connection lock */
    int id, ok;
};

static void *work(void *arg) {
    struct worker *w = arg;
    struct ferry_error err;
    struct ferry_remote_buffer buf;
    if (ferry_client_alloc_buffer(w->c, 0, 8192, &buf, &err)) return NULL;
    struct ferry_tensor t;
    int64_t ne[1] = { 1024 };
    ferry_tensor_init(&t, FERRY_TYPE_F32, 1, ne, NULL);
    ferry_remote_tensor_place(&t, &buf, 4096, &err);
    float d[1024], got[1024];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 1024; i++) d[i] = (float)(w->id * 100000 + round * 1000 + i);
        if (ferry_client_set_tensor(w->c, &t, 0, d, sizeof d, &err) ||
            ferry_client_get_tensor(w->c, &t, 0, got, sizeof got, &err) || memcmp(d, got, sizeof d))
            break;
        w->ok++;
    }
    ferry_client_free_buffer(w->c, &buf, &err);
    return NULL;
}

static void test_concurrency(struct test_server *a, struct test_server *b) {
    enum { CLIENTS = 4, WORKERS = 8 };
    struct ferry_client *cs[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) cs[i] = open_client(i % 2 ? b->endpoint : a->endpoint);
    for (int i = 0; i < CLIENTS; i++)
        if (!cs[i]) goto out;
    struct worker ws[WORKERS];
    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        ws[i] = (struct worker){ cs[i % CLIENTS], i, 0 };
        pthread_create(&th[i], NULL, work, &ws[i]);
    }
    int total = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(th[i], NULL);
        total += ws[i].ok;
    }
    CHECK(total == WORKERS * 20, "8 threads on 4 clients of 2 servers: %d/%d round trips right", total, WORKERS * 20);
    struct ferry_server_stats sa, sb;
    ferry_server_get_stats(a->s, &sa);
    ferry_server_get_stats(b->s, &sb);
    CHECK(sa.buffers_open == 0 && sb.buffers_open == 0, "all buffers freed on both servers");
out:
    for (int i = 0; i < CLIENTS; i++) ferry_client_close(cs[i]);
}

/* ---- failures and reconnect ----------------------------------------------------------------------- */

static int closed_port(void) {
    struct ferry_listener *l = NULL;
    struct ferry_error err;
    if (ferry_tcp_listen("127.0.0.1", 0, &l, &err)) return 1;
    int port = ferry_listener_port(l);
    ferry_listener_close(l);
    return port;
}

/* A peer that is not an RPC server: it answers HELLO with 5 bytes. */
static void *bad_hello(void *arg) {
    struct ferry_listener *l = arg;
    struct ferry_conn *conn = NULL;
    struct ferry_error err;
    if (ferry_listener_accept(l, 5000, &conn, &err)) return NULL;
    uint8_t req[9 + 24], rsp[8 + 5] = { 5 };
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ 5000, 5000 });
    if (!ferry_conn_recv_header(conn, req, sizeof req, &err)) {
        struct iovec v = { rsp, sizeof rsp };
        ferry_conn_send(conn, &v, 1, NULL, 0, &err);
        ferry_conn_recv_header(conn, req, 1, &err); /* until the client closes */
    }
    ferry_conn_close(conn);
    return NULL;
}

/* A web server: it reads a line and answers 400 (HELLO has no newline,
 * so this one answers as soon as the request arrived). */
static void *http_peer(void *arg) {
    struct ferry_listener *l = arg;
    struct ferry_conn *conn = NULL;
    struct ferry_error err;
    if (ferry_listener_accept(l, 5000, &conn, &err)) return NULL;
    uint8_t req[9 + 24];
    ferry_conn_set_timeouts(conn, (struct ferry_conn_timeouts){ 5000, 5000 });
    if (!ferry_conn_recv_header(conn, req, sizeof req, &err)) {
        static const char rsp[] = "HTTP/1.0 400 Bad request\x01\r\nServer: SimpleHTTP/0.6\r\n\r\n<html>...";
        struct iovec v = { (void *)rsp, sizeof rsp - 1 };
        ferry_conn_send(conn, &v, 1, NULL, 0, &err);
        ferry_conn_recv_header(conn, req, 1, &err); /* until the client closes */
    }
    ferry_conn_close(conn);
    return NULL;
}

static void test_bad_peers(void) {
    struct ferry_listener *l = NULL;
    struct ferry_error err;
    if (!CHECK(ferry_tcp_listen("127.0.0.1", 0, &l, &err) == FERRY_OK, "listen")) return;
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", ferry_listener_port(l));
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.hello_timeout_ms = 200; /* the long response timeout does not apply to HELLO */
    struct ferry_client *c = NULL;
    /* nobody accepts: the kernel completes the connect, HELLO gets no answer */
    CHECK(ferry_client_connect(ep, &o, &c, &err) == FERRY_ERR_TIMEOUT && !c, "silent peer: TIMEOUT (%s)", err.msg);
    char want[160];
    snprintf(want, sizeof want, "%s did not answer HELLO within 200 ms", ep);
    CHECK(strstr(err.msg, want) && strstr(err.msg, "not a ggml RPC server"), "the message says what happened: %s",
          err.msg);
    ferry_listener_close(l);

    if (!CHECK(ferry_tcp_listen("127.0.0.1", 0, &l, &err) == FERRY_OK, "listen")) return;
    snprintf(ep, sizeof ep, "127.0.0.1:%d", ferry_listener_port(l));
    pthread_t th;
    pthread_create(&th, NULL, bad_hello, l);
    o.response_timeout_ms = 5000;
    CHECK(ferry_client_connect(ep, &o, &c, &err) == FERRY_ERR_PROTOCOL && !c, "short HELLO answer: PROTOCOL (%s)",
          err.msg);
    pthread_join(th, NULL);
    ferry_listener_close(l);

    /* a web server: it answers, with text */
    if (!CHECK(ferry_tcp_listen("127.0.0.1", 0, &l, &err) == FERRY_OK, "listen")) return;
    snprintf(ep, sizeof ep, "127.0.0.1:%d", ferry_listener_port(l));
    pthread_create(&th, NULL, http_peer, l);
    CHECK(ferry_client_connect(ep, &o, &c, &err) == FERRY_ERR_PROTOCOL && !c, "web server: PROTOCOL (%s)", err.msg);
    snprintf(want, sizeof want, "%s is not a ggml RPC server (it answered 'HTTP/1.0 400 Bad request.')", ep);
    CHECK(strstr(err.msg, want) != NULL, "the message quotes its first line, sanitized: %s", err.msg);
    pthread_join(th, NULL);
    ferry_listener_close(l);

    /* the hello timeout's default comes from the environment */
    setenv("FERRY_HELLO_TIMEOUT_MS", "1234", 1);
    ferry_client_options_defaults(&o);
    CHECK(o.hello_timeout_ms == 1234, "FERRY_HELLO_TIMEOUT_MS sets the default (%d)", o.hello_timeout_ms);
    unsetenv("FERRY_HELLO_TIMEOUT_MS");
    ferry_client_options_defaults(&o);
    CHECK(o.hello_timeout_ms == 5000, "default 5000 ms (%d)", o.hello_timeout_ms);
}

/* A server at its limit, or asked for a device it does not have: a ferry
 * server says why (error replies); a ggml server only closes, and the
 * message names the likely causes. */
static void test_refusals(void) {
    for (int ggml = 0; ggml < 2; ggml++) {
        struct ferry_server_config cfg;
        ferry_server_config_defaults(&cfg);
        cfg.port = 0;
        cfg.n_threads = 1;
        cfg.mem_limit = 16 * MIB;
        cfg.max_conns = 2;
        cfg.max_conns_per_peer = 2; /* all from 127.0.0.1 */
        cfg.no_ferry_ext = ggml;    /* plays a ggml server */
        struct test_server ts;
        if (!test_server_start(&ts, &cfg)) return;
        struct ferry_client *holder = open_client(ts.endpoint), *other = open_client(ts.endpoint), *c = NULL;
        struct ferry_remote_buffer buf, buf2;
        struct ferry_error err;
        CHECK(holder && ferry_client_alloc_buffer(holder, 0, 4096, &buf, &err) == FERRY_OK && other &&
                  ferry_client_alloc_buffer(other, 0, 4096, &buf2, &err) == FERRY_OK,
              "both slots hold a buffer");
        int rc = ferry_client_connect(ts.endpoint, NULL, &c, &err);
        if (!ggml) {
            CHECK(rc == FERRY_ERR_REFUSED && !c, "at the limit: REFUSED (%s)", ferry_status_name(rc));
            CHECK(strstr(err.msg, "server refused: 2 connections open (max 2), none idle") != NULL,
                  "the server's reason is shown: %s", err.msg);
        } else {
            CHECK(rc == FERRY_ERR_CLOSED && !c, "ggml server at its limit: CLOSED (%s)", ferry_status_name(rc));
            CHECK(strstr(err.msg, "closed the connection at HELLO") && strstr(err.msg, "connection limit"),
                  "the likely causes are named: %s", err.msg);
        }
        ferry_client_close(c);
        uint64_t align = 0;
        rc = holder ? ferry_client_alignment(holder, 5, &align, &err) : FERRY_ERR_CLOSED;
        CHECK(rc == FERRY_ERR_CLOSED, "device 5: the connection ends (%s)", ferry_status_name(rc));
        if (!ggml)
            CHECK(strstr(err.msg, "the server closed the connection: device 5 out of range"),
                  "with the server's reason: %s", err.msg);
        else
            CHECK(strstr(err.msg, "instead of answering GET_ALIGNMENT") && strstr(err.msg, "a device it does not have"),
                  "with the likely causes: %s", err.msg);
        ferry_client_close(holder);
        ferry_client_close(other);
        test_server_stop(&ts);
    }
}

struct getter {
    struct ferry_client *c;
    struct ferry_tensor *t;
    void *dst;
    int rc, rounds;
};

static void *get_loop(void *arg) {
    struct getter *g = arg;
    struct ferry_error err;
    for (g->rounds = 0; g->rounds < 400; g->rounds++)
        if ((g->rc = ferry_client_get_tensor(g->c, g->t, 0, g->dst, ferry_nbytes(g->t), &err))) break;
    return NULL;
}

static void test_failures(const char *cache_dir) {
    struct ferry_error err;
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", closed_port());
    struct ferry_client *c = NULL;
    CHECK(ferry_client_connect(ep, NULL, &c, &err) == FERRY_ERR_REFUSED && !c, "closed port: REFUSED (%s)", err.msg);

    struct test_server ts;
    if (!server_start(&ts, 0, cache_dir)) return;
    int port = ts.port;
    if (!(c = open_client(ts.endpoint))) {
        test_server_stop(&ts);
        return;
    }
    /* w is 12 MiB: uploaded through the hash probe, cached by the server */
    struct model m;
    model_init(&m, 1024, 3072, 4, 77);
    struct ferry_remote_buffer wbuf, buf;
    ferry_client_alloc_buffer(c, 0, ferry_nbytes(&m.w), &wbuf, &err);
    ferry_client_alloc_buffer(c, 0, model_buf_size(&m), &buf, &err);
    bool hit = true;
    if (!model_place(&m, &wbuf, &buf)) goto out;
    CHECK(ferry_client_upload(c, &m.w, 0, m.wd, ferry_nbytes(&m.w), &hit, &err) == FERRY_OK && !hit,
          "12 MiB upload: hash miss, then sent");
    model_upload_inputs(c, &m, &err);
    model_check(c, &m, "big model");
    uint64_t old_handle = wbuf.handle, old_base = wbuf.base;

    /* the server goes away while GET_TENSOR of 12 MiB runs in a loop */
    float *dst = malloc(ferry_nbytes(&m.w));
    struct getter g = { c, &m.w, dst, 0, 0 };
    pthread_t th;
    pthread_create(&th, NULL, get_loop, &g);
    usleep(30 * 1000);
    test_server_stop(&ts);
    pthread_join(th, NULL);
    free(dst);
    CHECK(g.rc == FERRY_ERR_CLOSED || g.rc == FERRY_ERR_IO, "stopped under a GET_TENSOR loop: an error after %d gets (%s)",
          g.rounds, ferry_status_name(g.rc));
    CHECK(ferry_client_is_broken(c), "the client knows it is broken");
    int64_t t0 = ferry_transport_now_ms();
    uint32_t n = 0;
    CHECK(ferry_client_device_count(c, &n, &err) == FERRY_ERR_CLOSED, "later calls fail: %s", err.msg);
    CHECK(ferry_client_graph_compute(c, 0, (struct ferry_tensor *[]){ &m.out }, 1, &err) == FERRY_ERR_CLOSED,
          "graph compute fails fast too");
    CHECK(ferry_transport_now_ms() - t0 < 100, "fast");
    CHECK(ferry_client_reconnect(c, &err) == FERRY_ERR_REFUSED, "reconnect with no server: REFUSED");

    /* a new server on the same port, with the same cache */
    if (!server_start(&ts, port, cache_dir)) goto out;
    CHECK(ferry_client_reconnect(c, &err) == FERRY_OK, "reconnect: %s", err.msg);
    CHECK(!ferry_client_is_broken(c) && wbuf.handle != 0 && wbuf.handle != old_handle && wbuf.place_base == old_base,
          "buffers re-created (handle %#" PRIx64 " -> %#" PRIx64 ", base %#" PRIx64 " -> %#" PRIx64 ")", old_handle,
          wbuf.handle, old_base, wbuf.base);
    uint32_t restored = 0, missing = 9;
    CHECK(ferry_client_restore(c, &restored, &missing, &err) == FERRY_OK && restored == 1 && missing == 0,
          "restore: %u restored, %u missing", restored, missing);
    struct ferry_server_stats st;
    ferry_server_get_stats(ts.s, &st);
    CHECK(st.cache_hits == 1 && st.bytes_in < MIB, "the weight came from the server's cache (%" PRIu64 " bytes in)",
          st.bytes_in);
    model_upload_inputs(c, &m, &err);
    model_check(c, &m, "graph after reconnect and restore");
    struct ferry_client_stats cs;
    ferry_client_get_stats(c, &cs);
    CHECK(cs.reconnects == 1 && cs.graphs_recomputed == 0, "a reconnect never sends GRAPH_RECOMPUTE for the old graph");

    /* an overwritten upload is not restored */
    ferry_client_memset_tensor(c, &m.w, 0, 4, 0, &err);
    CHECK(ferry_client_restore(c, &restored, &missing, &err) == FERRY_OK && restored == 0 && missing == 0,
          "overwritten uploads are forgotten");
    test_server_stop(&ts);
out:
    ferry_client_close(c);
    model_free(&m);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    if (!getenv("FERRY_TEST_VERBOSE")) ferry_log_set_level(FERRY_LOG_ERROR);
    char dir[] = "/tmp/ferry-test-client-XXXXXX";
    if (!CHECK(mkdtemp(dir) != NULL, "mkdtemp")) return test_summary();

    struct test_server a, b;
    if (server_start(&a, 0, dir)) {
        if (server_start(&b, 0, NULL)) {
            test_calls(&a);
            test_graph(&a);
            test_concurrency(&a, &b);
            test_server_stop(&b);
        }
        test_server_stop(&a);
    }
    test_failures(dir);
    test_bad_peers();
    test_refusals();
    test_remove_dir(dir);
    return test_summary();
}
