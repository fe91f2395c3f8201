/* The server (src/server) end to end over loopback: an in-process server on
 * an ephemeral port and a small raw client built on proto + transport.
 * Every command is exercised with its result checked: HELLO bytes, opaque
 * handles and bases, SET/GET round trips, MEMSET, COPY, CLEAR, INIT,
 * GET_ALLOC_SIZE, device memory accounting, GRAPH_COMPUTE against a naive
 * reference and GRAPH_RECOMPUTE, the tensor cache (store, hit on another
 * connection, corruption, LRU bound), isolation between clients, protocol
 * violations closing only their connection, and the connection limit.
 * Every wait is bounded by client-side timeouts, so nothing here can hang. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/server.h"
#include "proto/rpc.h"
#include "transport/transport.h"
#include "testutil.h"

#define NO_RSP ((size_t)-1)
#define MIB (1024ull * 1024)
static const struct ferry_conn_timeouts SAFE = { .idle_ms = 10000, .frame_ms = 10000 };

static int g_port;
static uint64_t g_mem_limit = 256 * MIB;

/* ---- a raw client ----------------------------------------------------------- */

/* Sends one request (payload = a + b) and, unless rsp_n is NO_RSP, reads a
 * response that must be exactly rsp_n bytes. */
static int call2(struct ferry_conn *c, uint8_t cmd, const void *a, size_t an, const void *b, size_t bn,
                 void *rsp, size_t rsp_n) {
    struct ferry_error err;
    uint8_t cmdb = cmd, len[8];
    ferry_put_le64(len, an + bn);
    struct iovec hdr[2] = { { &cmdb, 1 }, { len, 8 } };
    struct iovec body[2] = { { (void *)a, an }, { (void *)b, bn } };
    int rc = ferry_conn_send(c, hdr, 2, body, 2, &err);
    if (rc || rsp_n == NO_RSP) return rc;
    uint8_t rl[8];
    rc = ferry_conn_recv_header(c, rl, 8, &err);
    if (rc) return rc;
    if (ferry_get_le64(rl) != rsp_n) return FERRY_ERR_PROTOCOL;
    return ferry_conn_recv_payload(c, rsp, rsp_n, &err);
}
static int call(struct ferry_conn *c, uint8_t cmd, const void *req, size_t n, void *rsp, size_t rsp_n) {
    return call2(c, cmd, req, n, NULL, 0, rsp, rsp_n);
}

/* Is the connection closed by the server? (Reads nothing else.) */
static bool closed_by_server(struct ferry_conn *c) {
    struct ferry_error err;
    uint8_t b[8];
    ferry_conn_set_timeouts(c, (struct ferry_conn_timeouts){ 5000, 5000 });
    return ferry_conn_recv_header(c, b, 8, &err) != FERRY_OK;
}

static struct ferry_conn *connect_raw(void) {
    struct ferry_conn *c = NULL;
    struct ferry_error err;
    if (!CHECK(ferry_tcp_connect("127.0.0.1", g_port, 2000, &c, &err) == FERRY_OK, "connect: %s", err.msg))
        return NULL;
    ferry_conn_set_timeouts(c, SAFE);
    return c;
}

static struct ferry_conn *connect_hello(void) {
    struct ferry_conn *c = connect_raw();
    if (c == NULL) return NULL;
    uint8_t caps[24] = { 0 }, rsp[28];
    if (!CHECK(call(c, FERRY_RPC_CMD_HELLO, caps, 24, rsp, 28) == FERRY_OK, "HELLO answered")) {
        ferry_conn_close(c);
        return NULL;
    }
    /* byte 3 (ggml's padding) carries ferry's extension flags */
    uint8_t want[28] = { 5, 0, 0, FERRY_RPC_HELLO_FLAG_EXT_STATS };
    CHECK(memcmp(rsp, want, 28) == 0, "HELLO response is 5.0.0, extension flag, zero caps");
    return c;
}

static uint64_t u64_call(struct ferry_conn *c, uint8_t cmd, const void *req, size_t n) {
    uint8_t r[8] = { 0 };
    if (call(c, cmd, req, n, r, 8) != FERRY_OK) return UINT64_MAX;
    return ferry_get_le64(r);
}

static uint64_t alloc_buffer(struct ferry_conn *c, uint64_t size, uint64_t *got_size) {
    uint8_t req[12], rsp[16] = { 0 };
    struct ferry_rpc_alloc_buffer a = { 0, size };
    ferry_rpc_encode_alloc_buffer(&a, req);
    if (call(c, FERRY_RPC_CMD_ALLOC_BUFFER, req, 12, rsp, 16) != FERRY_OK) return 0;
    if (got_size) *got_size = ferry_get_le64(rsp + 8);
    return ferry_get_le64(rsp);
}

static uint64_t buffer_base(struct ferry_conn *c, uint64_t h) {
    uint8_t req[8];
    ferry_rpc_encode_buffer(h, req);
    return u64_call(c, FERRY_RPC_CMD_BUFFER_GET_BASE, req, 8);
}

static int free_buffer(struct ferry_conn *c, uint64_t h) {
    uint8_t req[8];
    ferry_rpc_encode_buffer(h, req);
    return call(c, FERRY_RPC_CMD_FREE_BUFFER, req, 8, NULL, 0);
}

static void device_memory(struct ferry_conn *c, uint64_t *free_mem, uint64_t *total) {
    uint8_t req[4], rsp[16] = { 0 };
    ferry_rpc_encode_device(0, req);
    CHECK(call(c, FERRY_RPC_CMD_GET_DEVICE_MEMORY, req, 4, rsp, 16) == FERRY_OK, "GET_DEVICE_MEMORY");
    *free_mem = ferry_get_le64(rsp);
    *total = ferry_get_le64(rsp + 8);
}

/* A contiguous 1-D or 2-D record at (buffer, data). */
static struct ferry_rpc_tensor rec(enum ferry_type type, int64_t ne0, int64_t ne1, uint64_t buffer,
                                   uint64_t data) {
    struct ferry_tensor t;
    int64_t ne[2] = { ne0, ne1 };
    ferry_tensor_init(&t, type, 2, ne, NULL);
    struct ferry_rpc_tensor r;
    ferry_rpc_tensor_from_ferry(&t, 0x1000 + data, buffer, data, &r, NULL);
    return r;
}

static int set_tensor(struct ferry_conn *c, const struct ferry_rpc_tensor *t, uint64_t offset,
                      const void *data, size_t n) {
    uint8_t hdr[FERRY_RPC_SET_TENSOR_HEADER_SIZE];
    ferry_rpc_encode_set_tensor_header(t, offset, hdr);
    return call2(c, FERRY_RPC_CMD_SET_TENSOR, hdr, sizeof hdr, data, n, NULL, NO_RSP);
}

static int get_tensor(struct ferry_conn *c, const struct ferry_rpc_tensor *t, uint64_t offset, void *out,
                      size_t n) {
    uint8_t req[FERRY_RPC_GET_TENSOR_SIZE];
    struct ferry_rpc_get_tensor g = { *t, offset, n };
    ferry_rpc_encode_get_tensor(&g, req);
    return call(c, FERRY_RPC_CMD_GET_TENSOR, req, sizeof req, out, n);
}

static int set_tensor_hash(struct ferry_conn *c, const struct ferry_rpc_tensor *t, uint64_t hash) {
    uint8_t req[FERRY_RPC_SET_TENSOR_HASH_SIZE], r = 0xff;
    struct ferry_rpc_set_tensor_hash h = { *t, 0, hash };
    ferry_rpc_encode_set_tensor_hash(&h, req);
    if (call(c, FERRY_RPC_CMD_SET_TENSOR_HASH, req, sizeof req, &r, 1) != FERRY_OK) return -1;
    return r;
}

static uint32_t device_count(struct ferry_conn *c) {
    uint8_t r[4] = { 0 };
    if (call(c, FERRY_RPC_CMD_DEVICE_COUNT, NULL, 0, r, 4) != FERRY_OK) return 0;
    return ferry_get_le32(r);
}

/* Is addr inside any mapping of this process? */
static bool mapped_here(uint64_t addr) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) return false;
    char line[512];
    bool hit = false;
    while (!hit && fgets(line, sizeof line, f)) {
        unsigned long long lo, hi;
        if (sscanf(line, "%llx-%llx", &lo, &hi) == 2 && addr >= lo && addr < hi) hit = true;
    }
    fclose(f);
    return hit;
}

static uint64_t server_allocated(struct ferry_server *s) {
    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    return st.bytes_allocated;
}

/* Waits (bounded) until the server's allocation count is `want`. */
static bool wait_allocated(struct ferry_server *s, uint64_t want) {
    for (int i = 0; i < 200; i++) {
        if (server_allocated(s) == want) return true;
        usleep(10000);
    }
    return false;
}

/* ---- the tests ------------------------------------------------------------- */

static void test_basics(struct ferry_server *s) {
    struct ferry_conn *c = connect_hello();
    if (c == NULL) return;
    CHECK(device_count(c) == 1, "DEVICE_COUNT is 1");
    uint8_t dev[4];
    ferry_rpc_encode_device(0, dev);
    CHECK(u64_call(c, FERRY_RPC_CMD_GET_ALIGNMENT, dev, 4) == 32, "GET_ALIGNMENT is 32");
    CHECK(u64_call(c, FERRY_RPC_CMD_GET_MAX_SIZE, dev, 4) == g_mem_limit, "GET_MAX_SIZE is the mem limit");
    uint64_t fm, tm;
    device_memory(c, &fm, &tm);
    CHECK(fm == g_mem_limit && tm == g_mem_limit, "all memory free at start (%" PRIu64 "/%" PRIu64 ")", fm, tm);

    uint64_t s1, s2, s0;
    uint64_t h1 = alloc_buffer(c, 1 * MIB, &s1), h2 = alloc_buffer(c, 4096, &s2), h0 = alloc_buffer(c, 0, &s0);
    CHECK(h1 && h2 && h0 && h1 != h2 && h1 != h0 && h2 != h0, "handles non-zero and unique");
    CHECK(s1 == MIB && s2 == 4096 && s0 == 0, "sizes as asked");
    CHECK(buffer_base(c, h0) == 0, "zero-size buffer has base 0");
    uint64_t over = alloc_buffer(c, g_mem_limit, &s0);
    CHECK(over == 0 && s0 == 0, "allocation over the limit answers 0/0");
    device_memory(c, &fm, &tm);
    CHECK(fm == g_mem_limit - MIB - 4096 && tm == g_mem_limit, "device memory reflects allocations");
    CHECK(server_allocated(s) == MIB + 4096, "server stats count allocations");

    uint64_t b1 = buffer_base(c, h1), b2 = buffer_base(c, h2);
    CHECK(b1 && b2 && b1 % 32 == 0 && b2 % 32 == 0, "bases non-zero and aligned");
    CHECK(b2 >= b1 + MIB || b1 >= b2 + 4096, "fake ranges do not overlap");
    CHECK(!mapped_here(b1) && !mapped_here(b2) && !mapped_here(b1 + MIB - 1),
          "bases are not addresses of this process");
    CHECK(h1 != b1 && !mapped_here(h1), "handles are not addresses of this process");

    /* SET / GET round trip, with an offset */
    enum { N = 256 };
    float data[N], back[N];
    uint64_t rs = 7;
    for (int i = 0; i < N; i++) data[i] = test_rand_uniform(&rs, -1, 1);
    struct ferry_rpc_tensor t1 = rec(FERRY_TYPE_F32, N, 1, h1, b1 + 4096);
    CHECK(set_tensor(c, &t1, 0, data, sizeof data) == FERRY_OK, "SET_TENSOR sent");
    CHECK(get_tensor(c, &t1, 0, back, sizeof back) == FERRY_OK && !memcmp(data, back, sizeof data),
          "GET_TENSOR returns what SET_TENSOR wrote");
    CHECK(get_tensor(c, &t1, 64, back, 128) == FERRY_OK && !memcmp((uint8_t *)data + 64, back, 128),
          "GET_TENSOR with an offset");

    /* MEMSET_TENSOR */
    uint8_t req[FERRY_RPC_MEMSET_TENSOR_SIZE];
    struct ferry_rpc_memset_tensor ms = { t1, 16, 32, 0xab };
    ferry_rpc_encode_memset_tensor(&ms, req);
    CHECK(call(c, FERRY_RPC_CMD_MEMSET_TENSOR, req, sizeof req, NULL, 0) == FERRY_OK, "MEMSET_TENSOR");
    uint8_t raw[N * 4];
    CHECK(get_tensor(c, &t1, 0, raw, sizeof raw) == FERRY_OK, "GET after MEMSET");
    bool ok = !memcmp(raw, data, 16) && !memcmp(raw + 48, (uint8_t *)data + 48, sizeof raw - 48);
    for (int i = 16; i < 48; i++) ok = ok && raw[i] == 0xab;
    CHECK(ok, "MEMSET_TENSOR filled exactly its region");

    /* COPY_TENSOR into the small buffer */
    struct ferry_rpc_tensor t2 = rec(FERRY_TYPE_F32, N, 1, h2, b2 + 1024);
    uint8_t creq[FERRY_RPC_COPY_TENSOR_SIZE], result = 0;
    struct ferry_rpc_copy_tensor cp = { t1, t2 };
    ferry_rpc_encode_copy_tensor(&cp, creq);
    CHECK(call(c, FERRY_RPC_CMD_COPY_TENSOR, creq, sizeof creq, &result, 1) == FERRY_OK && result == 1,
          "COPY_TENSOR answers 1");
    uint8_t raw2[N * 4];
    CHECK(get_tensor(c, &t2, 0, raw2, sizeof raw2) == FERRY_OK && !memcmp(raw, raw2, sizeof raw),
          "COPY_TENSOR copied the bytes");

    /* BUFFER_CLEAR */
    uint8_t clr[9];
    struct ferry_rpc_buffer_clear bc = { h2, 7 };
    ferry_rpc_encode_buffer_clear(&bc, clr);
    CHECK(call(c, FERRY_RPC_CMD_BUFFER_CLEAR, clr, 9, NULL, 0) == FERRY_OK, "BUFFER_CLEAR");
    struct ferry_rpc_tensor whole2 = rec(FERRY_TYPE_I8, 4096, 1, h2, b2);
    uint8_t all[4096];
    CHECK(get_tensor(c, &whole2, 0, all, sizeof all) == FERRY_OK, "GET after clear");
    ok = true;
    for (int i = 0; i < 4096; i++) ok = ok && all[i] == 7;
    CHECK(ok, "BUFFER_CLEAR filled the whole buffer");

    /* INIT_TENSOR and GET_ALLOC_SIZE */
    uint8_t ireq[FERRY_RPC_INIT_TENSOR_SIZE];
    ferry_rpc_encode_init_tensor(&t1, ireq);
    CHECK(call(c, FERRY_RPC_CMD_INIT_TENSOR, ireq, sizeof ireq, NULL, 0) == FERRY_OK, "INIT_TENSOR: empty answer");
    static uint8_t areq[FERRY_RPC_GET_ALLOC_SIZE_SIZE];
    struct ferry_rpc_get_alloc_size ga;
    memset(&ga, 0, sizeof ga);
    ga.tensor = rec(FERRY_TYPE_F32, 10, 3, 0, 0);
    ferry_rpc_encode_get_alloc_size(&ga, areq);
    CHECK(u64_call(c, FERRY_RPC_CMD_GET_ALLOC_SIZE, areq, sizeof areq) == 120, "GET_ALLOC_SIZE is nbytes");

    /* FREE_BUFFER releases memory */
    CHECK(free_buffer(c, h2) == FERRY_OK, "FREE_BUFFER");
    device_memory(c, &fm, &tm);
    CHECK(fm == g_mem_limit - MIB, "device memory reflects FREE_BUFFER");

    /* a region past the tensor closes the connection */
    CHECK(get_tensor(c, &t1, 1000, back, 100) != FERRY_OK, "GET_TENSOR past the tensor is refused");
    ferry_conn_close(c);
    CHECK(wait_allocated(s, 0), "disconnect frees the connection's buffers");
}

/* out = mul_mat(w, x) + bias: w [K, M], x [K, P] -> [M, P] */
enum { K = 16, M = 5, P = 3 };
struct graph_map {
    struct ferry_tensor *t[5];
    uint64_t off[5];
    uint64_t buffer, base;
};
static int map_locate(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                      struct ferry_error *err) {
    struct graph_map *m = ctx;
    for (int i = 0; i < 5; i++)
        if (m->t[i] == t) {
            *buffer = m->buffer;
            *data = m->base + m->off[i];
            return FERRY_OK;
        }
    return ferry_fail(err, FERRY_ERR_INVALID, "unmapped");
}

static void reference(const float *w, const float *x, const float *bias, float *out) {
    for (int p = 0; p < P; p++)
        for (int m = 0; m < M; m++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)w[m * K + k] * x[p * K + k];
            out[p * M + m] = (float)acc + bias[p * M + m];
        }
}

static bool close_enough(const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++)
        if (fabsf(a[i] - b[i]) > 1e-4f * (1 + fabsf(b[i]))) return false;
    return true;
}

static void test_graph(struct ferry_server *s) {
    struct ferry_conn *c = connect_hello();
    if (c == NULL) return;
    uint64_t h = alloc_buffer(c, 64 * 1024, NULL), base = buffer_base(c, h);
    struct ferry_tensor w, x, bias, mm, out;
    int64_t nw[2] = { K, M }, nx[2] = { K, P }, no[2] = { M, P };
    ferry_tensor_init(&w, FERRY_TYPE_F32, 2, nw, NULL);
    ferry_tensor_init(&x, FERRY_TYPE_F32, 2, nx, NULL);
    ferry_tensor_init(&bias, FERRY_TYPE_F32, 2, no, NULL);
    ferry_tensor_init(&mm, FERRY_TYPE_F32, 2, no, NULL);
    ferry_tensor_init(&out, FERRY_TYPE_F32, 2, no, NULL);
    strcpy(w.name, "w"); strcpy(x.name, "x"); strcpy(bias.name, "bias");
    strcpy(mm.name, "mm"); strcpy(out.name, "out");
    mm.op = FERRY_OP_MUL_MAT; mm.src[0] = &w; mm.src[1] = &x; mm.flags = FERRY_FLAG_COMPUTE;
    out.op = FERRY_OP_ADD; out.src[0] = &mm; out.src[1] = &bias;
    out.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    struct graph_map m = { { &w, &x, &bias, &mm, &out }, { 0, 1024, 2048, 3072, 4096 }, h, base };

    float wd[K * M], xd[K * P], bd[M * P], want[M * P], got[M * P];
    uint64_t rs = 11;
    for (int i = 0; i < K * M; i++) wd[i] = test_rand_uniform(&rs, -1, 1);
    for (int i = 0; i < K * P; i++) xd[i] = test_rand_uniform(&rs, -1, 1);
    for (int i = 0; i < M * P; i++) bd[i] = test_rand_uniform(&rs, -1, 1);
    struct ferry_rpc_tensor rw = rec(FERRY_TYPE_F32, K, M, h, base + 0);
    struct ferry_rpc_tensor rx = rec(FERRY_TYPE_F32, K, P, h, base + 1024);
    struct ferry_rpc_tensor rb = rec(FERRY_TYPE_F32, M, P, h, base + 2048);
    struct ferry_rpc_tensor ro = rec(FERRY_TYPE_F32, M, P, h, base + 4096);
    set_tensor(c, &rw, 0, wd, sizeof wd);
    set_tensor(c, &rx, 0, xd, sizeof xd);
    set_tensor(c, &rb, 0, bd, sizeof bd);

    struct ferry_rpc_graph_client cb = { &m, NULL, map_locate, NULL };
    struct ferry_tensor *nodes[2] = { &mm, &out };
    uint8_t *p = NULL;
    size_t len = 0;
    struct ferry_error err;
    if (!CHECK(ferry_rpc_graph_encode(0, nodes, 2, &cb, &p, &len, &err) == FERRY_OK, "encode: %s", err.msg)) {
        ferry_conn_close(c);
        return;
    }
    CHECK(call(c, FERRY_RPC_CMD_GRAPH_COMPUTE, p, len, NULL, NO_RSP) == FERRY_OK, "GRAPH_COMPUTE sent");
    free(p);
    reference(wd, xd, bd, want);
    CHECK(get_tensor(c, &ro, 0, got, sizeof got) == FERRY_OK && close_enough(got, want, M * P),
          "GRAPH_COMPUTE result matches the reference");

    for (int i = 0; i < K * P; i++) xd[i] = test_rand_uniform(&rs, -2, 2);
    set_tensor(c, &rx, 0, xd, sizeof xd);
    uint8_t dev[4];
    ferry_rpc_encode_device(0, dev);
    CHECK(call(c, FERRY_RPC_CMD_GRAPH_RECOMPUTE, dev, 4, NULL, NO_RSP) == FERRY_OK, "GRAPH_RECOMPUTE sent");
    reference(wd, xd, bd, want);
    CHECK(get_tensor(c, &ro, 0, got, sizeof got) == FERRY_OK && close_enough(got, want, M * P),
          "GRAPH_RECOMPUTE after a new input gives the new result");

    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    CHECK(st.graphs_computed >= 2, "stats count graphs (%" PRIu64 ")", st.graphs_computed);

    /* freeing a buffer the graph used makes RECOMPUTE a violation */
    CHECK(free_buffer(c, h) == FERRY_OK, "FREE_BUFFER of the graph's buffer");
    call(c, FERRY_RPC_CMD_GRAPH_RECOMPUTE, dev, 4, NULL, NO_RSP);
    CHECK(device_count(c) == 0 && closed_by_server(c), "RECOMPUTE after FREE_BUFFER closes the connection");
    ferry_conn_close(c);
}


/* A graph over 1 MiB on the wire (the server grows its receive buffer):
 * x_{i+1} = x_i + b, 4000 times. */
enum { CHAIN = 4000, CW = 4 };
struct chain_map {
    struct ferry_tensor *t; /* x_0 .. x_CHAIN, then b */
    uint64_t buffer, base;
};
static int chain_locate(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                        struct ferry_error *err) {
    struct chain_map *m = ctx;
    ptrdiff_t i = t - m->t;
    if (i < 0 || i > CHAIN + 1) return ferry_fail(err, FERRY_ERR_INVALID, "unmapped");
    *buffer = m->buffer;
    *data = m->base + (uint64_t)i * CW * 4;
    return FERRY_OK;
}

static void test_big_graph(void) {
    struct ferry_conn *c = connect_hello();
    if (c == NULL) return;
    uint64_t h = alloc_buffer(c, (CHAIN + 2) * CW * 4, NULL);
    struct chain_map m = { calloc(CHAIN + 2, sizeof(struct ferry_tensor)), h, buffer_base(c, h) };
    struct ferry_tensor **nodes = calloc(CHAIN, sizeof *nodes);
    int64_t ne[1] = { CW };
    for (int i = 0; i < CHAIN + 2; i++) ferry_tensor_init(&m.t[i], FERRY_TYPE_F32, 1, ne, NULL);
    struct ferry_tensor *b = &m.t[CHAIN + 1];
    for (int i = 1; i <= CHAIN; i++) {
        m.t[i].op = FERRY_OP_ADD;
        m.t[i].src[0] = &m.t[i - 1];
        m.t[i].src[1] = b;
        m.t[i].flags = FERRY_FLAG_COMPUTE;
        nodes[i - 1] = &m.t[i];
    }
    float x0[CW] = { 1, 2, 3, 4 }, bv[CW] = { 0.5f, -1, 0.25f, 0 }, got[CW];
    struct ferry_rpc_tensor r0 = rec(FERRY_TYPE_F32, CW, 1, h, m.base);
    struct ferry_rpc_tensor rb = rec(FERRY_TYPE_F32, CW, 1, h, m.base + (CHAIN + 1) * CW * 4);
    struct ferry_rpc_tensor rl = rec(FERRY_TYPE_F32, CW, 1, h, m.base + CHAIN * CW * 4);
    set_tensor(c, &r0, 0, x0, sizeof x0);
    set_tensor(c, &rb, 0, bv, sizeof bv);
    struct ferry_rpc_graph_client cb = { &m, NULL, chain_locate, NULL };
    uint8_t *p = NULL;
    size_t len = 0;
    struct ferry_error err;
    if (CHECK(ferry_rpc_graph_encode(0, nodes, CHAIN, &cb, &p, &len, &err) == FERRY_OK, "encode: %s", err.msg)) {
        CHECK(len > (1u << 20), "graph payload of %zu bytes", len);
        call(c, FERRY_RPC_CMD_GRAPH_COMPUTE, p, len, NULL, NO_RSP);
        bool ok = get_tensor(c, &rl, 0, got, sizeof got) == FERRY_OK;
        for (int i = 0; i < CW; i++) ok = ok && got[i] == x0[i] + CHAIN * bv[i];
        CHECK(ok, "a 4000-node graph computes");
    }
    free(p);
    free(nodes);
    free(m.t);
    ferry_conn_close(c);
}

static bool file_exists(const char *dir, uint64_t hash, uint64_t *size) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%016" PRIx64, dir, hash);
    struct stat sb;
    if (stat(path, &sb) != 0) return false;
    if (size) *size = (uint64_t)sb.st_size;
    return true;
}

static void test_cache(struct ferry_server *s, const char *dir) {
    const size_t n = 11 * MIB; /* over the 10 MiB threshold */
    uint8_t *d[4];
    uint64_t hash[4], rs = 99;
    for (int k = 0; k < 4; k++) {
        d[k] = malloc(n);
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = test_rand_u64(&rs);
            memcpy(d[k] + i, &v, 8);
        }
        hash[k] = ferry_fnv1a64(d[k], n);
    }
    struct ferry_conn *a = connect_hello(), *b = connect_hello();
    if (a == NULL || b == NULL) goto out;
    uint64_t ha = alloc_buffer(a, 12 * MIB, NULL), hb = alloc_buffer(b, 12 * MIB, NULL);
    struct ferry_rpc_tensor ta = rec(FERRY_TYPE_I8, (int64_t)n, 1, ha, buffer_base(a, ha));
    struct ferry_rpc_tensor tb = rec(FERRY_TYPE_I8, (int64_t)n, 1, hb, buffer_base(b, hb));

    CHECK(set_tensor_hash(a, &ta, hash[0]) == 0, "SET_TENSOR_HASH misses on an empty cache");
    CHECK(set_tensor(a, &ta, 0, d[0], n) == FERRY_OK && device_count(a) == 1, "large SET_TENSOR");
    ferry_server_cache_flush(s);
    uint64_t fsize = 0;
    CHECK(file_exists(dir, hash[0], &fsize) && fsize == n, "the cache file is named by FNV-1a");

    /* another connection gets the data from the cache */
    uint8_t *back = malloc(n);
    CHECK(set_tensor_hash(b, &tb, hash[0]) == 1, "SET_TENSOR_HASH hits on another connection");
    CHECK(get_tensor(b, &tb, 0, back, n) == FERRY_OK && !memcmp(back, d[0], n), "the cached data landed");

    /* a corrupted file is a miss and is removed */
    char path[1024];
    snprintf(path, sizeof path, "%s/%016" PRIx64, dir, hash[0]);
    FILE *f = fopen(path, "r+b");
    if (f) {
        fseek(f, 12345, SEEK_SET);
        fputc(d[0][12345] ^ 0x5a, f);
        fclose(f);
    }
    /* b's tensor holds d[0] from the hit above; overwrite one byte so the
     * region is recognisably b's own, then check a corrupt hit leaves it be */
    uint8_t mark = 0xa5;
    CHECK(set_tensor(b, &tb, 7, &mark, 1) == FERRY_OK, "mark b's tensor");
    CHECK(set_tensor_hash(b, &tb, hash[0]) == 0, "a corrupted cache file is a miss");
    CHECK(!file_exists(dir, hash[0], NULL), "the corrupted file is removed");
    CHECK(get_tensor(b, &tb, 0, back, n) == FERRY_OK && back[7] == mark && back[12345] == d[0][12345] &&
              !memcmp(back + 8, d[0] + 8, n - 8), "a corrupt cache file never reaches tensor memory");

    /* only what a missed probe asked for is stored: not a SET_TENSOR on
     * its own (an activation), nor one of another region than the probe's */
    set_tensor(a, &ta, 0, d[1], n);
    CHECK(set_tensor_hash(a, &ta, hash[2]) == 0, "probe for d2");
    set_tensor(a, &ta, 0, d[1], 4096); /* the same start, other bytes: hash check refuses */
    CHECK(device_count(a) == 1, "unprobed and mismatched stores");
    ferry_server_cache_flush(s);
    CHECK(!file_exists(dir, hash[1], NULL) && !file_exists(dir, hash[2], NULL),
          "a SET_TENSOR without a probe, or not matching its probe's hash, is not cached");

    /* LRU bound (30 MiB): store 1 and 2, touch 1, store 3: 2 goes */
    for (int k = 1; k <= 2; k++) {
        CHECK(set_tensor_hash(a, &ta, hash[k]) == 0, "probe %d misses", k);
        set_tensor(a, &ta, 0, d[k], n);
    }
    CHECK(device_count(a) == 1, "two more stores");
    ferry_server_cache_flush(s);
    CHECK(set_tensor_hash(b, &tb, hash[1]) == 1, "hit on the first of them");
    CHECK(set_tensor_hash(a, &ta, hash[3]) == 0, "probe 3 misses");
    set_tensor(a, &ta, 0, d[3], n);
    CHECK(device_count(a) == 1, "a third store");
    ferry_server_cache_flush(s);
    CHECK(file_exists(dir, hash[1], NULL) && file_exists(dir, hash[3], NULL) && !file_exists(dir, hash[2], NULL),
          "the least recently used file was evicted");
    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    CHECK(st.cache_hits == 2 && st.cache_misses == 6 && st.cache_files == 2 && st.cache_bytes == 2 * n,
          "cache stats: %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64 " files, %" PRIu64 " bytes",
          st.cache_hits, st.cache_misses, st.cache_files, st.cache_bytes);
    free(back);
out:
    ferry_conn_close(a);
    ferry_conn_close(b);
    for (int k = 0; k < 4; k++) free(d[k]);
    CHECK(wait_allocated(s, 0), "both connections' buffers freed");
}

static void test_isolation(struct ferry_server *s) {
    struct ferry_conn *a = connect_hello(), *b = connect_hello();
    if (a == NULL || b == NULL) {
        ferry_conn_close(a);
        ferry_conn_close(b);
        return;
    }
    uint64_t ha = alloc_buffer(a, 4096, NULL), hb = alloc_buffer(b, 8192, NULL);
    CHECK(ha && hb && ha != hb, "each client has its own buffer");
    uint64_t fm, tm;
    device_memory(a, &fm, &tm);
    CHECK(fm == g_mem_limit - 4096 - 8192, "device memory counts all clients");
    CHECK(buffer_base(b, ha) == UINT64_MAX && closed_by_server(b), "A's handle is unknown to B: B closed");
    ferry_conn_close(b);
    CHECK(wait_allocated(s, 4096), "B's buffer freed on its disconnect");
    device_memory(a, &fm, &tm);
    CHECK(fm == g_mem_limit - 4096, "device memory reflects B's release");
    CHECK(buffer_base(a, ha) != UINT64_MAX && device_count(a) == 1, "A unaffected");
    ferry_conn_close(a);
    CHECK(wait_allocated(s, 0), "A's buffer freed");
}

static void test_violations(struct ferry_server *s) {
    struct ferry_server_stats before, after;
    ferry_server_get_stats(s, &before);
    /* no HELLO first */
    struct ferry_conn *c = connect_raw();
    if (c) {
        call(c, FERRY_RPC_CMD_DEVICE_COUNT, NULL, 0, NULL, NO_RSP);
        CHECK(closed_by_server(c), "a command before HELLO closes");
        ferry_conn_close(c);
    }
    /* HELLO of the wrong size */
    if ((c = connect_raw())) {
        call(c, FERRY_RPC_CMD_HELLO, NULL, 0, NULL, NO_RSP);
        CHECK(closed_by_server(c), "an empty HELLO closes");
        ferry_conn_close(c);
    }
    /* repeated HELLO, unknown command, bad size */
    uint8_t caps[24] = { 0 };
    if ((c = connect_hello())) {
        call(c, FERRY_RPC_CMD_HELLO, caps, 24, NULL, NO_RSP);
        CHECK(closed_by_server(c), "a second HELLO closes");
        ferry_conn_close(c);
    }
    if ((c = connect_hello())) {
        call(c, 18, NULL, 0, NULL, NO_RSP);
        CHECK(closed_by_server(c), "an unknown command closes");
        ferry_conn_close(c);
    }
    if ((c = connect_hello())) {
        call(c, FERRY_RPC_CMD_GET_ALIGNMENT, caps, 5, NULL, NO_RSP);
        CHECK(closed_by_server(c), "a wrong request size closes");
        ferry_conn_close(c);
    }
    if ((c = connect_hello())) {
        uint8_t dev[4];
        ferry_rpc_encode_device(1, dev);
        call(c, FERRY_RPC_CMD_GET_ALIGNMENT, dev, 4, NULL, NO_RSP);
        CHECK(closed_by_server(c), "device 1 closes");
        ferry_conn_close(c);
    }
    for (int i = 0; i < 200; i++) {
        ferry_server_get_stats(s, &after);
        if (after.conns_open == 0) break;
        usleep(10000);
    }
    CHECK(after.conns_dropped - before.conns_dropped == 6, "six connections dropped (%" PRIu64 ")",
          after.conns_dropped - before.conns_dropped);
}

/* Connects until the server takes it (a refusal or an eviction in flight
 * can race with the connection that should make room going idle). */
static struct ferry_conn *connect_until_served(void) {
    for (int i = 0; i < 100; i++) {
        struct ferry_conn *c = connect_raw();
        uint8_t caps[24] = { 0 }, rsp[28];
        if (c && call(c, FERRY_RPC_CMD_HELLO, caps, 24, rsp, 28) == FERRY_OK) return c;
        ferry_conn_close(c);
        usleep(20000);
    }
    return NULL;
}

/* Full of connections that hold buffers: the next is refused. Once one of
 * them holds none, the next evicts it instead (evict_grace_ms is 0 here). */
static void test_max_conns(struct ferry_server *s, int max_conns) {
    struct ferry_conn *c[8] = { 0 };
    uint64_t h[8] = { 0 };
    for (int i = 0; i < max_conns; i++) {
        c[i] = connect_hello();
        h[i] = c[i] ? alloc_buffer(c[i], 4096, NULL) : 0;
    }
    struct ferry_server_stats before, after;
    ferry_server_get_stats(s, &before);
    struct ferry_conn *extra = connect_raw();
    if (extra) {
        uint8_t caps[24] = { 0 }, rsp[28];
        CHECK(call(extra, FERRY_RPC_CMD_HELLO, caps, 24, rsp, 28) != FERRY_OK,
              "connection past max_conns refused while every slot holds buffers");
        ferry_conn_close(extra);
    }
    ferry_server_get_stats(s, &after);
    CHECK(after.conns_refused == before.conns_refused + 1, "refusal counted");
    CHECK(c[0] && device_count(c[0]) == 1, "open connections unaffected");
    /* c[1] lets go of its buffer: now it is the idle one to evict */
    CHECK(c[1] && free_buffer(c[1], h[1]) == FERRY_OK, "free c[1]'s buffer");
    extra = connect_until_served();
    CHECK(extra && device_count(extra) == 1, "a new connection is served by evicting the idle one");
    CHECK(c[1] && closed_by_server(c[1]), "the idle connection was evicted");
    ferry_server_get_stats(s, &after);
    CHECK(after.conns_evicted == before.conns_evicted + 1, "one eviction (%" PRIu64 ")",
          after.conns_evicted - before.conns_evicted);
    CHECK(c[0] && device_count(c[0]) == 1 && c[2] && device_count(c[2]) == 1,
          "connections holding buffers are never evicted");
    ferry_conn_close(extra);
    for (int i = 0; i < max_conns; i++) ferry_conn_close(c[i]);
    for (int i = 0; i < 200; i++) {
        ferry_server_get_stats(s, &after);
        if (after.conns_open == 0) break;
        usleep(10000);
    }
    CHECK(after.conns_open == 0, "all closed");
    CHECK(after.conns_dropped == before.conns_dropped, "an eviction is not a drop");
    /* and room again */
    struct ferry_conn *again = connect_hello();
    CHECK(again && device_count(again) == 1, "a new connection fits again");
    ferry_conn_close(again);
}

/* A client that asks for error replies (HELLO caps marked) is told why
 * its connection ends instead of seeing only a close. */
static void test_error_replies(void) {
    struct ferry_conn *c = connect_raw();
    if (c == NULL) return;
    uint8_t caps[24] = { 0 }, rsp[28];
    ferry_rpc_caps_mark(caps, FERRY_RPC_CAPS_FEAT_ERRORS);
    CHECK(call(c, FERRY_RPC_CMD_HELLO, caps, 24, rsp, 28) == FERRY_OK, "marked HELLO answered");
    CHECK(rsp[3] & FERRY_RPC_HELLO_FLAG_ERRORS, "the server agrees to send error replies (flags %#x)", rsp[3]);
    uint8_t dev[4], hdr[8], more[8];
    ferry_rpc_encode_device(7, dev);
    struct ferry_error err;
    CHECK(call(c, FERRY_RPC_CMD_GET_ALIGNMENT, dev, 4, NULL, NO_RSP) == FERRY_OK, "send GET_ALIGNMENT device 7");
    bool got = ferry_conn_recv_header(c, hdr, 8, &err) == FERRY_OK && ferry_get_le64(hdr) == FERRY_RPC_ERROR_MARK &&
               ferry_conn_recv_payload(c, more, 8, &err) == FERRY_OK;
    CHECK(got, "an error reply instead of a close");
    uint32_t code = 0, len = 0;
    char reason[FERRY_RPC_ERROR_MAX_REASON + 1] = { 0 };
    if (got && ferry_rpc_decode_error(more, &code, &len, &err) == FERRY_OK &&
        ferry_conn_recv_payload(c, reason, len, &err) == FERRY_OK)
        CHECK(code == FERRY_RPC_ERROR_REQUEST && strstr(reason, "device 7 out of range"),
              "it names the reason: code %u, '%s'", code, reason);
    CHECK(closed_by_server(c), "and then the server closes");
    ferry_conn_close(c);
    /* a ggml client (unmarked caps) never sees one */
    if ((c = connect_hello())) {
        call(c, FERRY_RPC_CMD_GET_ALIGNMENT, dev, 4, NULL, NO_RSP);
        CHECK(closed_by_server(c), "unmarked: a plain close");
        ferry_conn_close(c);
    }
}

static void *run_server(void *arg) {
    struct ferry_error err;
    ferry_server_run(arg, &err);
    return NULL;
}
static void *(*const run_server_fn)(void *) = run_server;

/* A second server: no cache, short timeouts. */
static void test_timeouts_no_cache(void) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.mem_limit = 16 * MIB;
    cfg.hello_timeout_ms = 200;
    cfg.idle_timeout_ms = 300;
    struct ferry_server *s = NULL;
    struct ferry_error err;
    if (!CHECK(ferry_server_create(&cfg, &s, &err) == FERRY_OK, "create: %s", err.msg)) return;
    int saved_port = g_port;
    g_port = ferry_server_port(s);
    pthread_t th;
    pthread_create(&th, NULL, run_server_fn, s);

    struct ferry_conn *c = connect_hello();
    if (c) {
        uint64_t h = alloc_buffer(c, 4096, NULL);
        struct ferry_rpc_tensor t = rec(FERRY_TYPE_F32, 16, 1, h, buffer_base(c, h));
        CHECK(set_tensor_hash(c, &t, 0x1234) == 0, "SET_TENSOR_HASH without a cache answers 0");
        usleep(600 * 1000); /* past the idle timeout */
        CHECK(device_count(c) == 1, "a client holding a buffer is never dropped for idleness");
        CHECK(free_buffer(c, h) == FERRY_OK, "free it");
        usleep(600 * 1000);
        CHECK(closed_by_server(c), "an idle client holding nothing is dropped after idle_timeout_ms");
        ferry_conn_close(c);
    }
    if ((c = connect_raw())) {
        int64_t t0 = ferry_transport_now_ms();
        CHECK(closed_by_server(c), "no HELLO: dropped");
        CHECK(ferry_transport_now_ms() - t0 < 3000, "within the hello timeout");
        ferry_conn_close(c);
    }
    ferry_server_stop(s);
    pthread_join(th, NULL);
    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    CHECK(st.conns_dropped == 2 && st.bytes_allocated == 0, "both dropped, memory freed");
    CHECK(st.conns_idle_closed == 1, "one closed for idleness (%" PRIu64 ")", st.conns_idle_closed);
    ferry_server_destroy(s);
    g_port = saved_port;
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    if (!getenv("FERRY_TEST_VERBOSE")) ferry_log_set_level(FERRY_LOG_ERROR);
    char dir[] = "/tmp/ferry-test-cache-XXXXXX";
    if (!CHECK(mkdtemp(dir) != NULL, "mkdtemp")) return test_summary();
    char cache_dir[600];
    snprintf(cache_dir, sizeof cache_dir, "%s/sub/rpc", dir); /* created by the server */

    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 2;
    cfg.mem_limit = g_mem_limit;
    cfg.max_payload = g_mem_limit;
    cfg.max_conns = 3;
    cfg.max_conns_per_peer = 3; /* every test client is 127.0.0.1 */
    cfg.evict_grace_ms = 0;
    cfg.cache_dir = cache_dir;
    cfg.cache_max_bytes = 30 * MIB;
    struct ferry_server *s = NULL;
    struct ferry_error err;
    if (!CHECK(ferry_server_create(&cfg, &s, &err) == FERRY_OK, "create: %s", err.msg)) return test_summary();
    g_port = ferry_server_port(s);
    CHECK(g_port > 0, "bound port %d", g_port);
    pthread_t th;
    pthread_create(&th, NULL, run_server, s);

    test_basics(s);
    test_graph(s);
    test_big_graph();
    test_cache(s, cache_dir);
    test_isolation(s);
    test_violations(s);
    test_max_conns(s, cfg.max_conns);
    test_error_replies();
    test_timeouts_no_cache();

    /* a connection left open is closed by stop */
    struct ferry_conn *left = connect_hello();
    uint64_t h = left ? alloc_buffer(left, 1 * MIB, NULL) : 0;
    CHECK(h != 0, "buffer on a connection left open");
    ferry_server_stop(s);
    pthread_join(th, NULL);
    struct ferry_server_stats st;
    ferry_server_get_stats(s, &st);
    CHECK(st.conns_open == 0 && st.bytes_allocated == 0 && st.buffers_open == 0,
          "stop closed everything (open %" PRIu64 ", bytes %" PRIu64 ", buffers %" PRIu64 ")", st.conns_open,
          st.bytes_allocated, st.buffers_open);
    CHECK(st.commands > 50 && st.bytes_in > 40 * MIB && st.bytes_out > 11 * MIB, "traffic counted");
    if (left) CHECK(closed_by_server(left), "the open connection was closed");
    ferry_conn_close(left);
    ferry_server_destroy(s);

    test_remove_dir(cache_dir);
    snprintf(cache_dir, sizeof cache_dir, "%s/sub", dir);
    rmdir(cache_dir);
    rmdir(dir);
    return test_summary();
}
