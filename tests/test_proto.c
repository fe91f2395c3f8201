/* The protocol layer (src/proto): byte-exact layouts against the spec's
 * offsets, the request/response size rules, per-command codecs, FNV-1a
 * vectors, tensor validation and resolution, the GRAPH_COMPUTE round trip
 * (encode -> decode -> compute, checked against a naive loop) and every
 * hostile graph we could think of.
 *
 *   test_proto [golden-dir]                  run the tests
 *   test_proto --write-corpus FRAME GRAPH    write fuzz seed files */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ferry/engine.h"
#include "proto/rpc.h"
#include "testutil.h"

/* ---- helpers written from the spec, independent of the code under test ---- */

static void le_put(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t le_get(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* Fake per-connection buffers: opaque handles and remote base addresses,
 * backed by host arrays. The same handles and bases as fuzz/fuzz_graph.c,
 * so the seeds written by --write-corpus decode there. */
#define BUF_A 0x1000u
#define BASE_A 0x10000u
#define BUF_B 0x2000u
#define BASE_B 0x20000u
#define BUF_SIZE 1024u

struct fake_buffer {
    uint64_t handle, base, size;
    uint8_t *mem;
};
struct fake_buffers {
    struct fake_buffer b[2];
    int calls;
};

static _Alignas(64) uint8_t mem_a[BUF_SIZE];
static _Alignas(64) uint8_t mem_b[BUF_SIZE];
static struct fake_buffers buffers = {
    { { BUF_A, BASE_A, BUF_SIZE, mem_a }, { BUF_B, BASE_B, BUF_SIZE, mem_b } }, 0
};

static int fake_resolve(void *ctx, uint64_t buffer, uint64_t data, size_t nbytes, void **host,
                        struct ferry_error *err) {
    struct fake_buffers *fb = ctx;
    fb->calls++;
    for (int i = 0; i < 2; i++) {
        const struct fake_buffer *b = &fb->b[i];
        if (b->handle != buffer) continue;
        if (data < b->base || data - b->base > b->size || nbytes > b->size - (data - b->base))
            return ferry_fail(err, FERRY_ERR_INVALID, "extent outside buffer");
        *host = b->mem + (data - b->base);
        return FERRY_OK;
    }
    return ferry_fail(err, FERRY_ERR_INVALID, "unknown buffer %#llx", (unsigned long long)buffer);
}

/* ---- constants and sizes ---------------------------------------------------- */

static void test_constants(void) {
    CHECK(FERRY_RPC_VERSION_MAJOR == 5 && FERRY_RPC_VERSION_MINOR == 1 && FERRY_RPC_VERSION_PATCH == 0,
          "protocol version 5.1.0");
    CHECK(FERRY_RPC_ADVERTISED_MAJOR == 5 && FERRY_RPC_ADVERTISED_MINOR == 0,
          "advertised version 5.0 (accepted by 5.0 and 5.1 clients)");
    CHECK(FERRY_RPC_CMD_HELLO == 14 && FERRY_RPC_CMD_COUNT == 18 && FERRY_RPC_CMD_MEMSET_TENSOR == 17,
          "command ids");
    CHECK(FERRY_RPC_CONN_CAPS_SIZE == 24 && FERRY_RPC_TENSOR_SIZE == 296, "caps and record sizes");
    CHECK(strcmp(ferry_rpc_cmd_name(FERRY_RPC_CMD_GRAPH_COMPUTE), "GRAPH_COMPUTE") == 0 &&
              strcmp(ferry_rpc_cmd_name(18), "?") == 0,
          "command names");
}

/* Request payload sizes from the table in docs/rpc-protocol.md section 5; -1: at least 304,
 * -2: at least 8. */
static const int64_t spec_request_size[18] = {
    12, 4, 4, 8, 8, 9, -1, 312, 312, 592, -2, 4, 296, 3260, 24, 0, 4, 313,
};

static void test_request_sizes(void) {
    struct ferry_error err;
    const uint64_t max = 1 << 20;
    for (int cmd = 0; cmd < 18; cmd++) {
        int64_t s = spec_request_size[cmd];
        if (s >= 0) {
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, (uint64_t)s, max, &err) == FERRY_OK,
                  "cmd %d exact size %lld", cmd, (long long)s);
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, (uint64_t)s + 1, max, &err) == FERRY_ERR_PROTOCOL,
                  "cmd %d size+1", cmd);
            if (s > 0)
                CHECK(ferry_rpc_check_request_size((uint8_t)cmd, (uint64_t)s - 1, max, &err) ==
                          FERRY_ERR_PROTOCOL,
                      "cmd %d size-1", cmd);
        } else {
            uint64_t min = s == -1 ? 304 : 8;
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, min - 1, max, &err) == FERRY_ERR_PROTOCOL,
                  "cmd %d below minimum", cmd);
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, min, max, &err) == FERRY_OK,
                  "cmd %d minimum", cmd);
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, max, max, &err) == FERRY_OK,
                  "cmd %d at the limit", cmd);
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, max + 1, max, &err) == FERRY_ERR_PROTOCOL,
                  "cmd %d above the limit", cmd);
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, (uint64_t)1 << 63, max, &err) ==
                      FERRY_ERR_PROTOCOL,
                  "cmd %d 2^63 (killed ggml's server)", cmd);
        }
        /* absurd lengths are refused for every command, whatever the limit */
        int rc = ferry_rpc_check_request_size((uint8_t)cmd, UINT64_MAX, max, &err);
        CHECK(rc == FERRY_ERR_PROTOCOL && err.msg[0], "cmd %d 2^64-1: %d", cmd, rc);
        CHECK(ferry_rpc_check_request_size((uint8_t)cmd, UINT64_MAX - 1, UINT64_MAX - 2, &err) ==
                  FERRY_ERR_PROTOCOL,
              "cmd %d 2^64-2 with a huge limit", cmd);
    }
    for (int cmd = 18; cmd < 256; cmd++)
        if (cmd != FERRY_RPC_CMD_FERRY_STATS)
            CHECK(ferry_rpc_check_request_size((uint8_t)cmd, 0, max, &err) == FERRY_ERR_PROTOCOL,
                  "unknown command %d", cmd);
    /* ferry's extension: FERRY_STATS is empty, exactly */
    CHECK(ferry_rpc_check_request_size(FERRY_RPC_CMD_FERRY_STATS, 0, max, &err) == FERRY_OK,
          "FERRY_STATS with an empty request");
    CHECK(ferry_rpc_check_request_size(FERRY_RPC_CMD_FERRY_STATS, 1, max, &err) == FERRY_ERR_PROTOCOL &&
              ferry_rpc_check_request_size(FERRY_RPC_CMD_FERRY_STATS, UINT64_MAX, UINT64_MAX, &err) ==
                  FERRY_ERR_PROTOCOL,
          "FERRY_STATS with a payload refused");
    CHECK(ferry_rpc_check_request_size(FERRY_RPC_CMD_DEVICE_COUNT, 0, 0, &err) == FERRY_OK,
          "DEVICE_COUNT is empty");
    CHECK(ferry_rpc_check_request_size(FERRY_RPC_CMD_SET_TENSOR, 304, 303, &err) == FERRY_ERR_PROTOCOL,
          "SET_TENSOR with a limit below its header");
}

static void test_response_sizes(void) {
    /* docs/rpc-protocol.md section 13: none for 6, 10, 16; empty for 4, 5, 12, 17 */
    static const int64_t want[18] = { 16, 8, 8, 8, 0, 0, -1, 1, -2, 1, -1, 16, 0, 8, 28, 4, -1, 0 };
    struct ferry_error err;
    for (int cmd = 0; cmd < 18; cmd++) {
        uint64_t size = 12345;
        enum ferry_rpc_rsp_kind k = ferry_rpc_response_kind((uint8_t)cmd, &size);
        if (want[cmd] == -1) {
            CHECK(k == FERRY_RPC_RSP_NONE, "cmd %d has no response", cmd);
            CHECK(ferry_rpc_check_response_size((uint8_t)cmd, 0, 0, &err) == FERRY_ERR_PROTOCOL,
                  "cmd %d: any response is unexpected", cmd);
        } else if (want[cmd] == -2) {
            CHECK(k == FERRY_RPC_RSP_VARIABLE, "GET_TENSOR answers the asked size");
            CHECK(ferry_rpc_check_response_size((uint8_t)cmd, 100, 100, &err) == FERRY_OK &&
                      ferry_rpc_check_response_size((uint8_t)cmd, 99, 100, &err) == FERRY_ERR_PROTOCOL &&
                      ferry_rpc_check_response_size((uint8_t)cmd, UINT64_MAX, 100, &err) == FERRY_ERR_PROTOCOL,
                  "GET_TENSOR response length");
        } else {
            CHECK(k == FERRY_RPC_RSP_FIXED && size == (uint64_t)want[cmd], "cmd %d response %llu", cmd,
                  (unsigned long long)size);
            CHECK(ferry_rpc_check_response_size((uint8_t)cmd, (uint64_t)want[cmd], 0, &err) == FERRY_OK &&
                      ferry_rpc_check_response_size((uint8_t)cmd, (uint64_t)want[cmd] + 1, 0, &err) ==
                          FERRY_ERR_PROTOCOL &&
                      ferry_rpc_check_response_size((uint8_t)cmd, UINT64_MAX, 0, &err) == FERRY_ERR_PROTOCOL,
                  "cmd %d response length check", cmd);
        }
    }
}

/* ---- the tensor record ------------------------------------------------------- */

/* A record with a distinct value in every field. */
static void distinct_record(struct ferry_rpc_tensor *r) {
    memset(r, 0, sizeof *r);
    r->id = 0x0102030405060708ull;
    r->type = 0x11121314;
    r->buffer = 0x2122232425262728ull;
    for (int i = 0; i < 4; i++) {
        r->ne[i] = 0x31000000u + (uint32_t)i;
        r->nb[i] = 0x41000000u + (uint32_t)i;
    }
    r->op = 0x51525354;
    for (int i = 0; i < 16; i++) r->op_params[i] = (int32_t)(0x61000000 + i);
    r->op_params[15] = -2; /* negative values survive */
    r->flags = 0x71727374;
    for (int i = 0; i < 10; i++) r->src[i] = 0x8100000000000000ull + (uint64_t)i;
    r->view_src = 0x9192939495969798ull;
    r->view_offs = 0xa1a2a3a4a5a6a7a8ull;
    r->data = 0xb1b2b3b4b5b6b7b8ull;
    strcpy(r->name, "blk.0.attn_q.weight");
    r->use_count = 0x0c0d0e0f;
}

static void test_tensor_layout(void) {
    struct ferry_rpc_tensor r, back;
    distinct_record(&r);
    uint8_t out[FERRY_RPC_TENSOR_SIZE], want[FERRY_RPC_TENSOR_SIZE];
    memset(out, 0xee, sizeof out);
    ferry_rpc_tensor_encode(&r, out);

    /* docs/rpc-protocol.md section 4's offsets, written out by hand */
    memset(want, 0, sizeof want);
    le_put(want + 0, r.id, 8);
    le_put(want + 8, r.type, 4);
    le_put(want + 12, r.buffer, 8);
    for (int i = 0; i < 4; i++) {
        le_put(want + 20 + 4 * i, r.ne[i], 4);
        le_put(want + 36 + 4 * i, r.nb[i], 4);
    }
    le_put(want + 52, r.op, 4);
    for (int i = 0; i < 16; i++) le_put(want + 56 + 4 * i, (uint32_t)r.op_params[i], 4);
    le_put(want + 120, (uint32_t)r.flags, 4);
    for (int i = 0; i < 10; i++) le_put(want + 124 + 8 * i, r.src[i], 8);
    le_put(want + 204, r.view_src, 8);
    le_put(want + 212, r.view_offs, 8);
    le_put(want + 220, r.data, 8);
    memcpy(want + 228, r.name, strlen(r.name));
    le_put(want + 292, (uint32_t)r.use_count, 4);
    int first_diff = -1;
    for (int i = 0; i < FERRY_RPC_TENSOR_SIZE && first_diff < 0; i++)
        if (out[i] != want[i]) first_diff = i;
    CHECK(first_diff < 0, "rpc_tensor bytes match section 4 (first difference at %d)", first_diff);
    CHECK(out[0] == 0x08 && out[7] == 0x01 && out[8] == 0x14 && out[52] == 0x54 && out[292] == 0x0f,
          "little-endian spot checks");

    ferry_rpc_tensor_decode(out, &back);
    bool same = back.id == r.id && back.type == r.type && back.buffer == r.buffer &&
                memcmp(back.ne, r.ne, sizeof r.ne) == 0 && memcmp(back.nb, r.nb, sizeof r.nb) == 0 &&
                back.op == r.op && memcmp(back.op_params, r.op_params, sizeof r.op_params) == 0 &&
                back.flags == r.flags && memcmp(back.src, r.src, sizeof r.src) == 0 &&
                back.view_src == r.view_src && back.view_offs == r.view_offs && back.data == r.data &&
                strcmp(back.name, r.name) == 0 && back.use_count == r.use_count;
    CHECK(same, "decode(encode(r)) == r");

    /* a hostile name without a terminator comes back terminated */
    memset(out + 228, 'x', 64);
    ferry_rpc_tensor_decode(out, &back);
    CHECK(strlen(back.name) == 63, "unterminated name is cut at 63 chars");

    struct ferry_rpc_tensor zero;
    memset(&zero, 0, sizeof zero);
    CHECK(ferry_rpc_tensor_is_null(&zero) && !ferry_rpc_tensor_is_null(&r), "null record");
    ferry_rpc_tensor_encode(&zero, out);
    CHECK(all_zero(out, sizeof out), "a NULL tensor is 296 zero bytes");
}

/* ggml_nbytes from docs/rpc-protocol.md section 10, in 128-bit arithmetic. */
static unsigned __int128 ref_nbytes(const uint32_t *ne, const uint32_t *nb, int64_t bs, size_t ts) {
    for (int i = 0; i < 4; i++)
        if (ne[i] == 0) return 0;
    unsigned __int128 n;
    if (bs == 1) {
        n = ts;
        for (int i = 0; i < 4; i++) n += (unsigned __int128)(ne[i] - 1) * nb[i];
    } else {
        n = (unsigned __int128)ne[0] * nb[0] / (unsigned __int128)bs;
        for (int i = 1; i < 4; i++) n += (unsigned __int128)(ne[i] - 1) * nb[i];
    }
    return n;
}

static void plain_record(struct ferry_rpc_tensor *r, uint64_t id, uint32_t type, uint32_t ne0,
                         uint32_t ne1, uint64_t buffer, uint64_t data) {
    memset(r, 0, sizeof *r);
    r->id = id;
    r->type = type;
    r->buffer = buffer;
    r->data = data;
    int64_t bs = ferry_blck_size((int)type);
    size_t ts = ferry_type_size((int)type);
    r->ne[0] = ne0;
    r->ne[1] = ne1;
    r->ne[2] = r->ne[3] = 1;
    r->nb[0] = (uint32_t)ts;
    r->nb[1] = (uint32_t)(ts * (ne0 / (uint32_t)(bs > 0 ? bs : 1)));
    r->nb[2] = r->nb[1] * ne1;
    r->nb[3] = r->nb[2];
    snprintf(r->name, sizeof r->name, "t%llu", (unsigned long long)id);
}

static void test_describe(void) {
    struct ferry_error err;
    struct ferry_tensor t;
    size_t nbytes;
    struct ferry_rpc_tensor r;
    /* every valid type id widens and gets ggml's nbytes */
    int n_valid = 0;
    for (uint32_t type = 0; type < 43; type++) {
        if (!ferry_type_valid((int)type)) continue;
        n_valid++;
        int64_t bs = ferry_blck_size((int)type);
        plain_record(&r, 1, type, (uint32_t)(bs * 3), 5, 0, 0);
        r.ne[2] = 2;
        r.nb[3] = 0xfffffff0u; /* a big stride on a trivial dim */
        int rc = ferry_rpc_tensor_describe(&r, &t, &nbytes, &err);
        unsigned __int128 want = ref_nbytes(r.ne, r.nb, bs, ferry_type_size((int)type));
        CHECK(rc == FERRY_OK && nbytes == (size_t)want && t.type == (enum ferry_type)type &&
                  t.ne[0] == bs * 3 && t.ne[1] == 5 && t.nb[1] == r.nb[1] && t.nb[3] == 0xfffffff0u,
              "type %u describes (rc %d, nbytes %zu)", type, rc, nbytes);
    }
    CHECK(n_valid == 43 - 8, "35 valid type ids");
    /* removed and out-of-range ids */
    static const uint32_t bad_types[] = { 4, 5, 31, 32, 33, 36, 37, 38, 43, 44, 1000, 0x80000000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        plain_record(&r, 1, 0, 4, 4, 0, 0);
        r.type = bad_types[i];
        int rc = ferry_rpc_tensor_describe(&r, &t, &nbytes, &err);
        CHECK(rc == FERRY_ERR_INVALID && err.msg[0], "type %u refused", bad_types[i]);
    }
    /* ne/nb are u32 on the wire: all-ones is the largest widening */
    plain_record(&r, 1, FERRY_TYPE_I8, 4, 4, 0, 0);
    for (int i = 0; i < 4; i++) r.ne[i] = UINT32_MAX;
    CHECK(ferry_rpc_tensor_describe(&r, &t, &nbytes, &err) == FERRY_OK &&
              nbytes == (size_t)ref_nbytes(r.ne, r.nb, 1, 1),
          "huge ne with small strides still fits 64 bits");
    for (int i = 0; i < 4; i++) r.nb[i] = UINT32_MAX;
    CHECK(ferry_rpc_tensor_describe(&r, &t, &nbytes, &err) == FERRY_ERR_INVALID && t.ne[3] == (int64_t)UINT32_MAX,
          "extent beyond 64 bits refused, ne widened without sign");
    /* a big extent that still fits 64 bits describes fine (the buffer check refuses it later) */
    plain_record(&r, 1, FERRY_TYPE_F32, 4, 2, 0, 0);
    r.nb[1] = UINT32_MAX;
    CHECK(ferry_rpc_tensor_describe(&r, &t, &nbytes, &err) == FERRY_OK &&
              nbytes == (size_t)ref_nbytes(r.ne, r.nb, 1, 4),
          "huge stride describes");
    /* zero-sized dims are allowed and have no bytes */
    plain_record(&r, 1, FERRY_TYPE_F32, 0, 7, 0, 0);
    CHECK(ferry_rpc_tensor_describe(&r, &t, &nbytes, &err) == FERRY_OK && nbytes == 0, "empty tensor");
}

static void test_resolve(void) {
    struct ferry_error err;
    struct ferry_tensor t;
    size_t nbytes;
    struct ferry_rpc_tensor r;
    void *host;

    plain_record(&r, 1, FERRY_TYPE_F32, 8, 4, 0, 0);
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_OK &&
              t.data == NULL && nbytes == 128,
          "buffer 0, data 0: no memory");
    r.data = BASE_A;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_ERR_INVALID,
          "buffer 0 with data: refused");
    r.buffer = 0x999;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_ERR_INVALID,
          "unknown buffer: refused");
    r.buffer = BUF_A;
    r.data = BASE_A + 64;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_OK &&
              t.data == mem_a + 64,
          "resolved into host memory");
    r.data = BASE_A + BUF_SIZE - 128;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_OK,
          "extent ending at the buffer end");
    r.data = BASE_A + BUF_SIZE - 124;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_ERR_INVALID,
          "extent past the buffer end");
    r.data = BASE_A - 4;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_ERR_INVALID,
          "extent before the buffer");
    /* data + nbytes wraps: refused before the resolver ever sees it */
    int calls = buffers.calls;
    r.data = UINT64_MAX - 64;
    CHECK(ferry_rpc_tensor_resolve(&r, fake_resolve, &buffers, &t, &nbytes, &err) == FERRY_ERR_INVALID &&
              buffers.calls == calls,
          "wrapping extent refused");

    /* regions inside a tensor (SET_TENSOR, GET_TENSOR, MEMSET_TENSOR) */
    plain_record(&r, 1, FERRY_TYPE_F32, 8, 4, BUF_B, BASE_B + 256);
    CHECK(ferry_rpc_resolve_region(&r, 16, 32, fake_resolve, &buffers, &host, &err) == FERRY_OK &&
              host == mem_b + 256 + 16,
          "region resolved");
    CHECK(ferry_rpc_resolve_region(&r, 128, 0, fake_resolve, &buffers, &host, &err) == FERRY_OK,
          "empty region at the end");
    CHECK(ferry_rpc_resolve_region(&r, 0, 128, fake_resolve, &buffers, &host, &err) == FERRY_OK,
          "whole tensor");
    CHECK(ferry_rpc_resolve_region(&r, 0, 129, fake_resolve, &buffers, &host, &err) == FERRY_ERR_INVALID,
          "region past the tensor");
    CHECK(ferry_rpc_resolve_region(&r, 129, 0, fake_resolve, &buffers, &host, &err) == FERRY_ERR_INVALID,
          "offset past the tensor");
    CHECK(ferry_rpc_resolve_region(&r, UINT64_MAX, 2, fake_resolve, &buffers, &host, &err) == FERRY_ERR_INVALID,
          "offset + size overflow");
    CHECK(ferry_rpc_resolve_region(&r, 8, UINT64_MAX, fake_resolve, &buffers, &host, &err) == FERRY_ERR_INVALID,
          "size 2^64-1");
    r.buffer = 0;
    r.data = 0;
    CHECK(ferry_rpc_resolve_region(&r, 0, 0, fake_resolve, &buffers, &host, &err) == FERRY_ERR_INVALID,
          "region of a tensor without a buffer");
}

static void test_alignment(void) {
    struct ferry_error err;
    struct ferry_tensor t;
    static const struct { int type; size_t align; } want[] = {
        { FERRY_TYPE_F32, 4 }, { FERRY_TYPE_I32, 4 }, { FERRY_TYPE_F16, 2 }, { FERRY_TYPE_BF16, 2 },
        { FERRY_TYPE_I16, 2 }, { FERRY_TYPE_I64, 8 }, { FERRY_TYPE_F64, 8 }, { FERRY_TYPE_I8, 1 },
        { FERRY_TYPE_Q4_0, 2 }, { FERRY_TYPE_Q8_0, 2 }, { FERRY_TYPE_Q4_K, 2 }, { FERRY_TYPE_Q6_K, 2 },
        { FERRY_TYPE_Q8_K, 4 }, { FERRY_TYPE_IQ4_XS, 2 }, { FERRY_TYPE_MXFP4, 1 }, { FERRY_TYPE_NVFP4, 1 },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(ferry_rpc_type_alignment(want[i].type) == want[i].align, "alignment of %s",
              ferry_type_name(want[i].type));
    /* every valid type's block size is a multiple of its alignment, so
     * contiguous rows of an aligned tensor stay aligned */
    for (int type = 0; type < FERRY_TYPE_COUNT; type++)
        if (ferry_type_valid(type))
            CHECK(ferry_type_size(type) % ferry_rpc_type_alignment(type) == 0, "%s block vs alignment",
                  ferry_type_name(type));

    int64_t ne[2] = { 4, 2 };
    ferry_tensor_init(&t, FERRY_TYPE_F32, 2, ne, mem_a + 64);
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_OK, "aligned f32");
    t.data = mem_a + 66;
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_ERR_INVALID, "f32 at +2");
    t.data = mem_a + 64;
    t.nb[1] = 18;
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_ERR_INVALID, "f32 row stride 18");
    t.ne[1] = 1;
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_OK, "a stride of a trivial dim does not matter");
    t.data = NULL;
    t.ne[1] = 2;
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_OK, "no memory, nothing to align");
    ferry_tensor_init(&t, FERRY_TYPE_I8, 2, ne, mem_a + 3);
    CHECK(ferry_rpc_check_alignment(&t, &err) == FERRY_OK, "i8 anywhere");
}

/* ---- commands ----------------------------------------------------------------- */

static void test_hello(void) {
    struct ferry_error err;
    uint8_t out[FERRY_RPC_HELLO_RSP_SIZE];
    struct ferry_rpc_hello_rsp rsp = { .major = 5, .minor = 1, .patch = 0 };
    CHECK(ferry_rpc_encode_hello_rsp(&rsp, out) == 28, "HELLO response is 28 bytes");
    /* what ggml 5.1.0 sends without RDMA (docs/rpc-protocol.md section 5, HELLO) */
    CHECK(out[0] == 5 && out[1] == 1 && out[2] == 0 && out[3] == 0 && all_zero(out + 4, 24),
          "05 01 00 00 + 24 zero bytes");
    ferry_rpc_hello_rsp_init(&rsp, NULL);
    ferry_rpc_encode_hello_rsp(&rsp, out);
    CHECK(out[0] == FERRY_RPC_ADVERTISED_MAJOR && out[1] == FERRY_RPC_ADVERTISED_MINOR &&
              out[2] == FERRY_RPC_ADVERTISED_PATCH && out[3] == 0 && all_zero(out + 4, 24),
          "ferry's HELLO response: advertised version, no RDMA");

    struct ferry_rpc_conn_caps caps = { .qpn = 0x00abcdef, .psn = 0x00123456 };
    for (int i = 0; i < 16; i++) caps.gid[i] = (uint8_t)(0xf0 + i);
    uint8_t req[24];
    CHECK(ferry_rpc_encode_hello(&caps, req) == 24, "HELLO request is 24 bytes");
    CHECK(le_get(req, 4) == 0x00abcdef && le_get(req + 4, 4) == 0x00123456 && req[8] == 0xf0 &&
              req[23] == 0xff,
          "caps layout: qpn, psn, gid");
    struct ferry_rpc_request r;
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_HELLO, req, 24, &r, &err) == FERRY_OK &&
              r.u.hello.qpn == caps.qpn && r.u.hello.psn == caps.psn &&
              memcmp(r.u.hello.gid, caps.gid, 16) == 0,
          "HELLO request decodes");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_HELLO, req, 0, &r, &err) == FERRY_ERR_PROTOCOL,
          "pre-v4 empty HELLO refused");

    ferry_rpc_hello_rsp_init(&rsp, &caps);
    ferry_rpc_encode_hello_rsp(&rsp, out);
    struct ferry_rpc_hello_rsp back;
    CHECK(ferry_rpc_decode_hello_rsp(out, 28, &back, &err) == FERRY_OK && back.caps.qpn == caps.qpn &&
              memcmp(back.caps.gid, caps.gid, 16) == 0 && back.major == 5,
          "HELLO response round trip");
    CHECK(ferry_rpc_decode_hello_rsp(out, 3, &back, &err) == FERRY_ERR_PROTOCOL, "v1 3-byte HELLO response");
    CHECK(back.flags == 0, "ferry_rpc_hello_rsp_init leaves the extension flags clear");

    /* ferry's extension flag rides in byte 3 (ggml's padding) and nowhere else */
    ferry_rpc_hello_rsp_init(&rsp, NULL);
    rsp.flags = FERRY_RPC_HELLO_FLAG_EXT_STATS;
    ferry_rpc_encode_hello_rsp(&rsp, out);
    CHECK(out[0] == FERRY_RPC_ADVERTISED_MAJOR && out[1] == FERRY_RPC_ADVERTISED_MINOR && out[3] == 0x01 &&
              all_zero(out + 4, 24),
          "extension flag in byte 3 only");
    CHECK(ferry_rpc_decode_hello_rsp(out, 28, &back, &err) == FERRY_OK && back.flags == 0x01 &&
              ferry_rpc_check_server_version(&back, &err) == FERRY_OK,
          "non-zero padding byte decodes and passes the version check");
    out[3] = 0xff;
    CHECK(ferry_rpc_decode_hello_rsp(out, 28, &back, &err) == FERRY_OK && back.flags == 0xff &&
              ferry_rpc_check_server_version(&back, &err) == FERRY_OK,
          "any padding value is accepted");

    /* the client's version rule: major 5, minor <= 1, patch ignored */
    static const struct { uint8_t ma, mi, pa; bool ok; } v[] = {
        { 5, 0, 0, true }, { 5, 1, 0, true }, { 5, 1, 9, true }, { 5, 2, 0, false },
        { 4, 0, 0, false }, { 6, 0, 0, false }, { 0, 0, 0, false },
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        struct ferry_rpc_hello_rsp h = { .major = v[i].ma, .minor = v[i].mi, .patch = v[i].pa };
        int rc = ferry_rpc_check_server_version(&h, &err);
        CHECK((rc == FERRY_OK) == v[i].ok, "server version %u.%u.%u", v[i].ma, v[i].mi, v[i].pa);
    }
}

static void test_command_codecs(void) {
    struct ferry_error err;
    struct ferry_rpc_request r;
    uint8_t buf[FERRY_RPC_GET_ALLOC_SIZE_SIZE];
    struct ferry_rpc_tensor t1, t2;
    distinct_record(&t1);
    plain_record(&t2, 77, FERRY_TYPE_F16, 16, 2, BUF_B, BASE_B);

    struct ferry_rpc_alloc_buffer ab = { 3, 0x0102030405060708ull };
    CHECK(ferry_rpc_encode_alloc_buffer(&ab, buf) == 12 && le_get(buf, 4) == 3 &&
              le_get(buf + 4, 8) == ab.size,
          "ALLOC_BUFFER layout");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_ALLOC_BUFFER, buf, 12, &r, &err) == FERRY_OK &&
              r.u.alloc_buffer.device == 3 && r.u.alloc_buffer.size == ab.size,
          "ALLOC_BUFFER decode");

    static const uint8_t device_cmds[] = { FERRY_RPC_CMD_GET_ALIGNMENT, FERRY_RPC_CMD_GET_MAX_SIZE,
                                           FERRY_RPC_CMD_GET_DEVICE_MEMORY, FERRY_RPC_CMD_GRAPH_RECOMPUTE };
    for (size_t i = 0; i < sizeof device_cmds; i++) {
        CHECK(ferry_rpc_encode_device(0xdeadbeef, buf) == 4 && le_get(buf, 4) == 0xdeadbeef, "device layout");
        CHECK(ferry_rpc_decode_request(device_cmds[i], buf, 4, &r, &err) == FERRY_OK &&
                  r.u.device == 0xdeadbeef,
              "%s decode", ferry_rpc_cmd_name(device_cmds[i]));
    }
    static const uint8_t buffer_cmds[] = { FERRY_RPC_CMD_BUFFER_GET_BASE, FERRY_RPC_CMD_FREE_BUFFER };
    for (size_t i = 0; i < sizeof buffer_cmds; i++) {
        CHECK(ferry_rpc_encode_buffer(0x1122334455667788ull, buf) == 8 && buf[0] == 0x88, "handle layout");
        CHECK(ferry_rpc_decode_request(buffer_cmds[i], buf, 8, &r, &err) == FERRY_OK &&
                  r.u.buffer == 0x1122334455667788ull,
              "%s decode", ferry_rpc_cmd_name(buffer_cmds[i]));
    }
    struct ferry_rpc_buffer_clear bc = { 0xabcdull, 0x5a };
    CHECK(ferry_rpc_encode_buffer_clear(&bc, buf) == 9 && buf[8] == 0x5a, "BUFFER_CLEAR layout");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_BUFFER_CLEAR, buf, 9, &r, &err) == FERRY_OK &&
              r.u.buffer_clear.buffer == 0xabcd && r.u.buffer_clear.value == 0x5a,
          "BUFFER_CLEAR decode");

    /* SET_TENSOR: header + data */
    uint8_t st[304 + 5];
    CHECK(ferry_rpc_encode_set_tensor_header(&t2, 40, st) == 304 && le_get(st + 296, 8) == 40 &&
              le_get(st, 8) == 77,
          "SET_TENSOR header layout");
    memcpy(st + 304, "hello", 5);
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_SET_TENSOR, st, sizeof st, &r, &err) == FERRY_OK &&
              r.u.set_tensor.offset == 40 && r.u.set_tensor.data_size == 5 &&
              memcmp(r.u.set_tensor.data, "hello", 5) == 0 && r.u.set_tensor.tensor.id == 77,
          "SET_TENSOR decode");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_SET_TENSOR, st, 303, &r, &err) == FERRY_ERR_PROTOCOL,
          "SET_TENSOR shorter than its header");

    struct ferry_rpc_set_tensor_hash sh = { t2, 8, 0xcbf29ce484222325ull };
    CHECK(ferry_rpc_encode_set_tensor_hash(&sh, buf) == 312 && le_get(buf + 296, 8) == 8 &&
              le_get(buf + 304, 8) == sh.hash,
          "SET_TENSOR_HASH layout");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_SET_TENSOR_HASH, buf, 312, &r, &err) == FERRY_OK &&
              r.u.set_tensor_hash.hash == sh.hash && r.u.set_tensor_hash.offset == 8,
          "SET_TENSOR_HASH decode");

    struct ferry_rpc_get_tensor gt = { t2, 4, 60 };
    CHECK(ferry_rpc_encode_get_tensor(&gt, buf) == 312 && le_get(buf + 304, 8) == 60, "GET_TENSOR layout");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_GET_TENSOR, buf, 312, &r, &err) == FERRY_OK &&
              r.u.get_tensor.offset == 4 && r.u.get_tensor.size == 60,
          "GET_TENSOR decode");

    struct ferry_rpc_copy_tensor ct = { t1, t2 };
    CHECK(ferry_rpc_encode_copy_tensor(&ct, buf) == 592 && le_get(buf, 8) == t1.id &&
              le_get(buf + 296, 8) == 77,
          "COPY_TENSOR layout: src then dst");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_COPY_TENSOR, buf, 592, &r, &err) == FERRY_OK &&
              r.u.copy_tensor.src.data == t1.data && r.u.copy_tensor.dst.id == 77,
          "COPY_TENSOR decode");

    CHECK(ferry_rpc_encode_init_tensor(&t2, buf) == 296, "INIT_TENSOR size");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_INIT_TENSOR, buf, 296, &r, &err) == FERRY_OK &&
              r.u.init_tensor.id == 77 && r.u.init_tensor.type == FERRY_TYPE_F16,
          "INIT_TENSOR decode");

    struct ferry_rpc_get_alloc_size gas;
    memset(&gas, 0, sizeof gas);
    gas.device = 1;
    gas.tensor = t1;
    gas.srcs[0] = t2;
    gas.srcs[9] = t2;
    gas.srcs[9].id = 99;
    CHECK(ferry_rpc_encode_get_alloc_size(&gas, buf) == 3260 && le_get(buf, 4) == 1 &&
              le_get(buf + 4, 8) == t1.id && le_get(buf + 300, 8) == 77 && all_zero(buf + 596, 296) &&
              le_get(buf + 300 + 9 * 296, 8) == 99,
          "GET_ALLOC_SIZE layout: device, tensor @4, srcs @300");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_GET_ALLOC_SIZE, buf, 3260, &r, &err) == FERRY_OK &&
              r.u.get_alloc_size.device == 1 && r.u.get_alloc_size.tensor.id == t1.id &&
              r.u.get_alloc_size.srcs[0].id == 77 && ferry_rpc_tensor_is_null(&r.u.get_alloc_size.srcs[1]) &&
              r.u.get_alloc_size.srcs[9].id == 99,
          "GET_ALLOC_SIZE decode");

    struct ferry_rpc_memset_tensor ms = { t2, 2, 30, 0x7f };
    CHECK(ferry_rpc_encode_memset_tensor(&ms, buf) == 313 && buf[312] == 0x7f && le_get(buf + 304, 8) == 30,
          "MEMSET_TENSOR layout");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_MEMSET_TENSOR, buf, 313, &r, &err) == FERRY_OK &&
              r.u.memset_tensor.value == 0x7f && r.u.memset_tensor.offset == 2 && r.u.memset_tensor.size == 30,
          "MEMSET_TENSOR decode");

    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_DEVICE_COUNT, buf, 0, &r, &err) == FERRY_OK, "DEVICE_COUNT");
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_DEVICE_COUNT, buf, 1, &r, &err) == FERRY_ERR_PROTOCOL,
          "DEVICE_COUNT with a payload");
    CHECK(ferry_rpc_decode_request(18, buf, 0, &r, &err) == FERRY_ERR_PROTOCOL, "command 18");

    /* frame headers */
    uint8_t fh[9];
    ferry_rpc_encode_frame_header(FERRY_RPC_CMD_SET_TENSOR, 0x0000000102030405ull, fh);
    uint8_t cmd;
    uint64_t size;
    ferry_rpc_decode_frame_header(fh, &cmd, &size);
    CHECK(fh[0] == 6 && fh[1] == 0x05 && fh[5] == 0x01 && fh[8] == 0 && cmd == 6 && size == 0x0102030405ull,
          "frame header: cmd, u64le size");

    /* responses */
    struct ferry_rpc_alloc_buffer_rsp abr = { 0x1000, 4096 }, abr2;
    ferry_rpc_encode_alloc_buffer_rsp(&abr, buf);
    CHECK(le_get(buf, 8) == 0x1000 && le_get(buf + 8, 8) == 4096 &&
              ferry_rpc_decode_alloc_buffer_rsp(buf, 16, &abr2, &err) == FERRY_OK &&
              abr2.remote_ptr == 0x1000 && abr2.remote_size == 4096 &&
              ferry_rpc_decode_alloc_buffer_rsp(buf, 15, &abr2, &err) == FERRY_ERR_PROTOCOL,
          "ALLOC_BUFFER response");
    struct ferry_rpc_device_memory dm = { 111, 222 }, dm2;
    ferry_rpc_encode_device_memory(&dm, buf);
    CHECK(le_get(buf, 8) == 111 && ferry_rpc_decode_device_memory(buf, 16, &dm2, &err) == FERRY_OK &&
              dm2.total_mem == 222,
          "GET_DEVICE_MEMORY response");
    uint64_t u64;
    ferry_rpc_encode_u64_rsp(UINT64_MAX, buf);
    CHECK(ferry_rpc_decode_u64_rsp(buf, 8, &u64, &err) == FERRY_OK && u64 == UINT64_MAX &&
              ferry_rpc_decode_u64_rsp(buf, 9, &u64, &err) == FERRY_ERR_PROTOCOL,
          "u64 response");
    uint32_t u32;
    ferry_rpc_encode_u32_rsp(2, buf);
    CHECK(le_get(buf, 4) == 2 && ferry_rpc_decode_u32_rsp(buf, 4, &u32, &err) == FERRY_OK && u32 == 2,
          "DEVICE_COUNT response");
    uint8_t u8, one = 1, two = 2;
    CHECK(ferry_rpc_decode_u8_rsp(&one, 1, &u8, &err) == FERRY_OK && u8 == 1 &&
              ferry_rpc_decode_u8_rsp(&two, 1, &u8, &err) == FERRY_ERR_PROTOCOL &&
              ferry_rpc_decode_u8_rsp(&one, 0, &u8, &err) == FERRY_ERR_PROTOCOL,
          "result byte");
}

/* ---- FNV-1a ----------------------------------------------------------------------- */

static void test_ferry_stats(void) {
    struct ferry_error err;
    struct ferry_rpc_ferry_stats st = { 1, 2, 3, 4, 5, 0x0102030405060708ull }, back;
    uint8_t out[FERRY_RPC_FERRY_STATS_RSP_SIZE];
    CHECK(ferry_rpc_encode_ferry_stats(&st, out) == 48, "FERRY_STATS answer is 48 bytes");
    CHECK(le_get(out, 8) == 1 && le_get(out + 16, 8) == 3 && out[40] == 0x08 && out[47] == 0x01,
          "FERRY_STATS little-endian layout");
    CHECK(ferry_rpc_decode_ferry_stats(out, 48, &back, &err) == FERRY_OK && back.cpu_user_ns == 1 &&
              back.cpu_sys_ns == 2 && back.commands == 3 && back.bytes_in == 4 && back.bytes_out == 5 &&
              back.compute_ns == st.compute_ns,
          "FERRY_STATS round trip");
    CHECK(ferry_rpc_decode_ferry_stats(out, 47, &back, &err) == FERRY_ERR_PROTOCOL, "short FERRY_STATS refused");
    uint64_t n = 0;
    CHECK(ferry_rpc_response_kind(FERRY_RPC_CMD_FERRY_STATS, &n) == FERRY_RPC_RSP_FIXED && n == 48,
          "FERRY_STATS response kind");
    CHECK(strcmp(ferry_rpc_cmd_name(FERRY_RPC_CMD_FERRY_STATS), "FERRY_STATS") == 0, "name");
    struct ferry_rpc_request r;
    CHECK(ferry_rpc_decode_request(FERRY_RPC_CMD_FERRY_STATS, out, 0, &r, &err) == FERRY_OK,
          "FERRY_STATS request decodes");
}

static void test_fnv(void) {
    CHECK(ferry_fnv1a64("", 0) == 0xcbf29ce484222325ull, "FNV-1a of empty");
    CHECK(ferry_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cull, "FNV-1a of \"a\"");
    CHECK(ferry_fnv1a64("foobar", 6) == 0x85944171f73967e8ull, "FNV-1a of \"foobar\"");
    /* incremental over random splits equals one shot */
    uint64_t s = 7;
    uint8_t data[1000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)test_rand_u64(&s);
    uint64_t whole = ferry_fnv1a64(data, sizeof data);
    /* reference: the definition, byte by byte */
    uint64_t ref = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof data; i++) ref = (ref ^ data[i]) * 0x100000001b3ull;
    CHECK(whole == ref, "FNV-1a of 1000 bytes");
    for (int rep = 0; rep < 20; rep++) {
        uint64_t h = FERRY_FNV1A64_INIT;
        size_t at = 0;
        while (at < sizeof data) {
            size_t n = (size_t)(test_rand_u64(&s) % 97);
            if (n > sizeof data - at) n = sizeof data - at;
            h = ferry_fnv1a64_update(h, data + at, n);
            at += n;
        }
        CHECK(h == whole, "incremental FNV-1a, split %d", rep);
    }
}

/* ---- graphs: a test-side payload builder -------------------------------------------- */

/* Writes device | n_nodes | ids | n_tensors | records (docs/rpc-protocol.md section 6). */
static uint8_t *build_graph(uint32_t device, const uint64_t *nodes, uint32_t n_nodes,
                            const struct ferry_rpc_tensor *recs, uint32_t n_recs, size_t *len) {
    *len = 12 + 8 * (size_t)n_nodes + 296 * (size_t)n_recs;
    uint8_t *p = malloc(*len);
    le_put(p, device, 4);
    le_put(p + 4, n_nodes, 4);
    for (uint32_t i = 0; i < n_nodes; i++) le_put(p + 8 + 8 * i, nodes[i], 8);
    le_put(p + 8 + 8 * (size_t)n_nodes, n_recs, 4);
    for (uint32_t i = 0; i < n_recs; i++) ferry_rpc_tensor_encode(&recs[i], p + 12 + 8 * (size_t)n_nodes + 296 * (size_t)i);
    return p;
}

/* The base valid graph: c = a + b, f32 [8,4], a and b in buffer A, c in B. */
enum { ID_A = 0x101, ID_B = 0x102, ID_C = 0x103 };
static void base_graph(struct ferry_rpc_tensor r[3], uint64_t *node) {
    plain_record(&r[0], ID_A, FERRY_TYPE_F32, 8, 4, BUF_A, BASE_A);
    plain_record(&r[1], ID_B, FERRY_TYPE_F32, 8, 4, BUF_A, BASE_A + 128);
    plain_record(&r[2], ID_C, FERRY_TYPE_F32, 8, 4, BUF_B, BASE_B);
    r[2].op = FERRY_OP_ADD;
    r[2].src[0] = ID_A;
    r[2].src[1] = ID_B;
    r[2].flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    r[0].flags = r[1].flags = FERRY_FLAG_INPUT;
    r[0].use_count = r[1].use_count = 1;
    *node = ID_C;
}

/* Decodes; on failure checks the code, the message and that nothing leaked out. */
static int decode(const uint8_t *p, size_t len, uint32_t n_devices, struct ferry_rpc_graph **g,
                  struct ferry_error *err) {
    ferry_error_clear(err);
    int rc = ferry_rpc_graph_decode(p, len, n_devices, fake_resolve, &buffers, g, err);
    if (rc) {
        if (*g) rc = 12345; /* must never hand out a graph on failure */
        if (!err->msg[0]) rc = 12346;
        return rc;
    }
    /* what the server does next: the engine plans it (op rules, memory) */
    static struct ferry_engine *planner;
    if (!planner) planner = ferry_engine_create(1);
    struct ferry_engine_plan *plan = NULL;
    rc = ferry_engine_plan(planner, (*g)->nodes, (int)(*g)->n_nodes, &plan, err);
    ferry_engine_plan_free(plan);
    if (rc) {
        if (!err->msg[0]) rc = 12346;
        ferry_rpc_graph_free(*g);
        *g = NULL;
    }
    return rc;
}

static int decode_recs(uint32_t device, const uint64_t *nodes, uint32_t n_nodes,
                       const struct ferry_rpc_tensor *recs, uint32_t n_recs, struct ferry_error *err) {
    size_t len;
    uint8_t *p = build_graph(device, nodes, n_nodes, recs, n_recs, &len);
    struct ferry_rpc_graph *g = NULL;
    int rc = decode(p, len, 2, &g, err);
    ferry_rpc_graph_free(g);
    free(p);
    return rc;
}

static void test_graph_base(void) {
    struct ferry_error err;
    struct ferry_rpc_tensor r[3];
    uint64_t node;
    base_graph(r, &node);
    size_t len;
    uint8_t *p = build_graph(1, &node, 1, r, 3, &len);
    CHECK(len == 12 + 8 + 3 * 296, "base graph length");
    struct ferry_rpc_graph *g = NULL;
    int rc = decode(p, len, 2, &g, &err);
    if (CHECK(rc == FERRY_OK, "base graph decodes: %s", err.msg)) {
        CHECK(g->device == 1 && g->n_nodes == 1 && g->n_tensors == 3, "counts");
        CHECK(g->nodes[0] == &g->tensors[2] && g->tensors[2].src[0] == &g->tensors[0] &&
                  g->tensors[2].src[1] == &g->tensors[1] && g->tensors[2].src[2] == NULL,
              "wiring");
        CHECK(g->tensors[0].data == mem_a && g->tensors[1].data == mem_a + 128 && g->tensors[2].data == mem_b,
              "host addresses");
        CHECK(g->ids[1] == ID_B && g->use_count[0] == 1 && g->use_count[2] == 0, "ids and use counts");
        CHECK(g->n_buffers == 2 && g->buffers[0] == BUF_A && g->buffers[1] == BUF_B &&
                  ferry_rpc_graph_uses_buffer(g, BUF_A) && ferry_rpc_graph_uses_buffer(g, BUF_B) &&
                  !ferry_rpc_graph_uses_buffer(g, 0x3000) && !ferry_rpc_graph_uses_buffer(g, 0),
              "referenced buffers");
        CHECK(strcmp(g->tensors[2].name, "t259") == 0, "names");
    }
    ferry_rpc_graph_free(g);

    /* trailing bytes are ignored, as ggml does */
    uint8_t *longer = malloc(len + 7);
    memcpy(longer, p, len);
    memset(longer + len, 0xcc, 7);
    g = NULL;
    CHECK(decode(longer, len + 7, 2, &g, &err) == FERRY_OK, "trailing bytes ignored");
    ferry_rpc_graph_free(g);
    free(longer);

    /* every truncation fails cleanly (the records no longer fit) */
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        uint8_t *t = malloc(n ? n : 1);
        memcpy(t, p, n);
        g = NULL;
        if (decode(t, n, 2, &g, &err) != FERRY_ERR_PROTOCOL) bad++;
        free(t);
    }
    CHECK(bad == 0, "all %zu truncations refused with PROTOCOL (%d not)", len, bad);

    /* device index */
    g = NULL;
    CHECK(decode(p, len, 1, &g, &err) == FERRY_ERR_INVALID, "device 1 of 1 refused");
    le_put(p, UINT32_MAX, 4);
    CHECK(decode(p, len, 2, &g, &err) == FERRY_ERR_INVALID, "device 2^32-1 refused");
    le_put(p, 0, 4);
    CHECK(decode(p, len, 0, &g, &err) == FERRY_ERR_INVALID, "no devices at all");

    /* counts that overflow or exceed the payload */
    le_put(p + 4, UINT32_MAX, 4);
    CHECK(decode(p, len, 2, &g, &err) == FERRY_ERR_PROTOCOL, "n_nodes 2^32-1");
    le_put(p + 4, 1, 4);
    le_put(p + 16, UINT32_MAX, 4);
    CHECK(decode(p, len, 2, &g, &err) == FERRY_ERR_PROTOCOL, "n_tensors 2^32-1");
    le_put(p + 16, 4, 4);
    CHECK(decode(p, len, 2, &g, &err) == FERRY_ERR_PROTOCOL, "n_tensors one too many");
    le_put(p + 16, 2, 4);
    CHECK(decode(p, len, 2, &g, &err) == FERRY_ERR_INVALID, "n_tensors one too few: node c is missing");
    le_put(p + 16, 3, 4);
    free(p);

    /* the header parser on its own, at the limits */
    struct ferry_rpc_graph_header h;
    uint8_t hdr[12] = { 0 };
    CHECK(ferry_rpc_graph_parse_header(hdr, 12, &h, &err) == FERRY_OK && h.n_nodes == 0 && h.n_tensors == 0 &&
              h.tensors_offset == 12,
          "empty graph header");
    CHECK(ferry_rpc_graph_parse_header(hdr, 11, &h, &err) == FERRY_ERR_PROTOCOL, "no n_tensors");
    le_put(hdr + 4, 0x20000000u, 4); /* 8 * n = 2^32 */
    CHECK(ferry_rpc_graph_parse_header(hdr, 12, &h, &err) == FERRY_ERR_PROTOCOL, "n_nodes 2^29");

    /* an empty graph is fine: nothing to run */
    g = NULL;
    memset(hdr, 0, sizeof hdr);
    CHECK(decode(hdr, 12, 1, &g, &err) == FERRY_OK && g->n_nodes == 0 && g->n_tensors == 0 && g->n_buffers == 0,
          "empty graph decodes");
    ferry_rpc_graph_free(g);
}

static void test_graph_hostile(void) {
    struct ferry_error err;
    struct ferry_rpc_tensor r[4];
    uint64_t node;
    int rc;
#define VARIANT(setup, want, what)                                   \
    do {                                                             \
        base_graph(r, &node);                                        \
        uint32_t n_recs = 3;                                         \
        (void)n_recs;                                                \
        setup;                                                       \
        rc = decode_recs(0, &node, 1, r, n_recs, &err);              \
        CHECK(rc == (want), "%s: rc %d (%s)", what, rc, err.msg);    \
    } while (0)

    VARIANT((void)0, FERRY_OK, "base");
    VARIANT(node = 0x999, FERRY_ERR_INVALID, "unknown node id");
    VARIANT(node = 0, FERRY_ERR_INVALID, "node id 0");
    VARIANT(r[1].id = 0, FERRY_ERR_INVALID, "record id 0");
    VARIANT(r[1].id = ID_A, FERRY_ERR_INVALID, "duplicate ids");
    VARIANT(r[2].src[1] = 0x777, FERRY_ERR_INVALID, "dangling src id");
    VARIANT(r[2].src[9] = 0x777, FERRY_ERR_INVALID, "dangling src[9]");
    VARIANT(r[0].view_src = 0x777, FERRY_ERR_INVALID, "dangling view_src id");
    VARIANT(r[2].src[0] = ID_C, FERRY_ERR_INVALID, "self cycle via src");
    VARIANT((r[2].src[2] = ID_C, r[2].flags = 0), FERRY_ERR_INVALID, "self cycle in a non-compute node");
    VARIANT(r[0].src[0] = ID_C, FERRY_ERR_INVALID, "two-tensor cycle");
    VARIANT((r[0].src[3] = ID_B, r[1].src[0] = ID_C), FERRY_ERR_INVALID, "three-tensor cycle");
    VARIANT((r[0].view_src = ID_C, r[0].buffer = BUF_B, r[0].data = BASE_B, r[0].view_offs = 0,
             r[2].view_src = 0),
            FERRY_ERR_INVALID, "cycle through view_src");
    for (uint32_t op = FERRY_OP_MAP_CUSTOM1; op <= FERRY_OP_CUSTOM; op++) {
        /* a function pointer and userdata in op_params, as ggml stores them */
        VARIANT((r[2].op = op, r[2].op_params[0] = 0x401000, r[2].op_params[1] = 0x7fff,
                 r[2].op_params[2] = 1, r[2].op_params[4] = 0x1234),
                FERRY_ERR_INVALID, "custom op on a node");
        VARIANT(r[0].op = op, FERRY_ERR_INVALID, "custom op on a leaf");
        VARIANT((r[2].op = op, r[2].flags = 0), FERRY_ERR_INVALID, "custom op without COMPUTE flag");
    }
    VARIANT(r[2].op = FERRY_OP_COUNT, FERRY_ERR_INVALID, "op 101");
    VARIANT(r[0].op = UINT32_MAX, FERRY_ERR_INVALID, "op 2^32-1");
    static const uint32_t bad_types[] = { 4, 5, 31, 33, 36, 38, 43, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        VARIANT(r[1].type = bad_types[i], FERRY_ERR_INVALID, "invalid type on a leaf");
        VARIANT(r[2].type = bad_types[i], FERRY_ERR_INVALID, "invalid type on a node");
    }
    /* extents */
    VARIANT(r[1].data = BASE_A + BUF_SIZE - 64, FERRY_ERR_INVALID, "tensor past its buffer end");
    VARIANT(r[1].data = BASE_A - 128, FERRY_ERR_INVALID, "tensor before its buffer");
    VARIANT(r[1].data = BASE_B, FERRY_ERR_INVALID, "data of another buffer");
    VARIANT(r[1].nb[1] = UINT32_MAX - 3, FERRY_ERR_INVALID, "huge stride");
    VARIANT(r[1].nb[3] = UINT32_MAX, FERRY_OK, "huge stride of a trivial dim");
    VARIANT((r[1].ne[3] = 2, r[1].nb[3] = UINT32_MAX - 3), FERRY_ERR_INVALID, "huge stride of dim 3");
    VARIANT((r[1].ne[1] = r[1].ne[2] = r[1].ne[3] = UINT32_MAX, r[1].nb[1] = r[1].nb[2] = r[1].nb[3] = UINT32_MAX),
            FERRY_ERR_INVALID, "extent beyond 64 bits");
    VARIANT(r[1].data = UINT64_MAX - 16, FERRY_ERR_INVALID, "data + size wraps");
    VARIANT(r[1].buffer = 0x999, FERRY_ERR_INVALID, "unknown buffer with data");
    VARIANT((r[1].buffer = 0x999, r[1].data = 0), FERRY_ERR_INVALID, "unknown buffer without data");
    VARIANT(r[1].buffer = 0, FERRY_ERR_INVALID, "no buffer but data");
    VARIANT((r[1].buffer = 0, r[1].data = 0, r[2].flags = 0), FERRY_OK,
            "a tensor without memory is fine if nothing computes with it");
    VARIANT((r[1].buffer = 0, r[1].data = 0), FERRY_ERR_INVALID, "a computed node's src without memory");
    VARIANT((r[2].buffer = 0, r[2].data = 0), FERRY_ERR_INVALID, "a computed node without memory");
    VARIANT((r[2].buffer = 0, r[2].data = 0, r[2].ne[1] = 0, r[1].ne[1] = 0, r[0].ne[1] = 0), FERRY_OK,
            "an empty computed node needs no memory");
    /* alignment */
    VARIANT((r[1].data = BASE_A + 130), FERRY_ERR_INVALID, "misaligned f32 data");
    VARIANT((r[1].nb[1] = 34, r[1].nb[2] = r[1].nb[3] = 34 * 4), FERRY_ERR_INVALID, "misaligned f32 stride");
    /* views: data must equal base data + view_offs, in the same buffer */
    struct ferry_rpc_tensor *v = &r[3];
#define MAKE_VIEW                                                                        \
    (n_recs = 4, plain_record(v, 0x104, FERRY_TYPE_F32, 8, 2, BUF_A, BASE_A + 32),       \
     v->op = FERRY_OP_VIEW, v->src[0] = ID_A, v->view_src = ID_A, v->view_offs = 32,     \
     r[2].src[0] = 0x104, r[2].op = FERRY_OP_ADD, r[2].ne[1] = 2, r[1].ne[1] = 2)
    VARIANT(MAKE_VIEW, FERRY_OK, "consistent view");
    VARIANT((MAKE_VIEW, v->data = BASE_A + 36), FERRY_ERR_INVALID, "view data != base + offs");
    VARIANT((MAKE_VIEW, v->view_offs = UINT64_MAX), FERRY_ERR_INVALID, "view_offs overflow");
    VARIANT((MAKE_VIEW, v->buffer = BUF_B, v->data = BASE_B + 32), FERRY_ERR_INVALID, "view in another buffer");
    VARIANT((MAKE_VIEW, v->buffer = 0, v->data = 0), FERRY_ERR_INVALID, "view without memory of a base with");
    VARIANT((MAKE_VIEW, v->view_src = 0x104), FERRY_ERR_INVALID, "view of itself");
    VARIANT((MAKE_VIEW, v->view_src = 0x104, v->view_offs = 0, v->src[0] = 0), FERRY_ERR_INVALID,
            "view of itself at offset 0: a cycle");
    /* nodes the engine refuses */
    VARIANT(r[1].ne[0] = 7, FERRY_ERR_INVALID, "ADD with mismatched shapes");
    VARIANT((r[2].op = FERRY_OP_ARGMAX), FERRY_ERR_UNSUPPORTED, "a node the engine cannot run (ARGMAX into f32)");
    VARIANT((r[2].op = FERRY_OP_ARGMAX, r[2].flags = 0), FERRY_OK,
            "a node the engine cannot run, not flagged COMPUTE (the engine skips it)");
#undef MAKE_VIEW
#undef VARIANT
}

/* A chain as deep as the payload allows must not exhaust the C stack:
 * the cycle search and the client's walk are iterative. */
static void test_graph_deep(void) {
    enum { N = 60000 };
    struct ferry_error err;
    struct ferry_rpc_tensor *r = calloc(N, sizeof *r);
    for (uint32_t i = 0; i < N; i++) {
        plain_record(&r[i], 1000 + i, FERRY_TYPE_F32, 1, 1, 0, 0);
        if (i) r[i].src[0] = 1000 + i - 1;
    }
    uint64_t node = 1000 + N - 1;
    CHECK(decode_recs(0, &node, 1, r, N, &err) == FERRY_OK, "deep chain decodes: %s", err.msg);
    r[0].src[0] = 1000 + N - 1;
    CHECK(decode_recs(0, &node, 1, r, N, &err) == FERRY_ERR_INVALID, "deep cycle found");
    free(r);

    /* client side */
    struct ferry_tensor *t = calloc(N, sizeof *t);
    int64_t ne[1] = { 1 };
    for (int i = 0; i < N; i++) {
        ferry_tensor_init(&t[i], FERRY_TYPE_F32, 1, ne, NULL);
        if (i) t[i].src[0] = &t[i - 1];
    }
    struct ferry_tensor *last = &t[N - 1];
    uint8_t *p;
    size_t len;
    int rc = ferry_rpc_graph_encode(0, &last, 1, NULL, &p, &len, &err);
    CHECK(rc == FERRY_OK && len == 12 + 8 + 296 * (size_t)N, "deep chain encodes");
    if (rc == FERRY_OK) {
        /* post-order: the root of the chain comes first */
        CHECK(le_get(p + 20, 8) == (uint64_t)(uintptr_t)&t[0], "dependencies first");
        struct ferry_rpc_graph *g = NULL;
        CHECK(decode(p, len, 1, &g, &err) == FERRY_OK && g->n_tensors == N, "and decodes: %s", err.msg);
        ferry_rpc_graph_free(g);
        free(p);
    }
    free(t);
}

/* ---- graph round trip: client encode -> server decode -> compute ---------------------- */

struct client_map {
    struct ferry_tensor *t[8];
    uint64_t buffer[8], offset[8];
    int n;
    bool custom_ids;
};

static int find_tensor(const struct client_map *m, const struct ferry_tensor *t) {
    for (int i = 0; i < m->n; i++)
        if (m->t[i] == t) return i;
    return -1;
}

static uint64_t client_id(void *ctx, const struct ferry_tensor *t) {
    struct client_map *m = ctx;
    return m->custom_ids ? 0x5000 + (uint64_t)find_tensor(m, t) : (uint64_t)(uintptr_t)t;
}

static int client_locate(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                         struct ferry_error *err) {
    struct client_map *m = ctx;
    int i = find_tensor(m, t);
    if (i < 0) return ferry_fail(err, FERRY_ERR_INVALID, "tensor not mapped");
    *buffer = m->buffer[i];
    *data = (m->buffer[i] == BUF_A ? BASE_A : BASE_B) + m->offset[i];
    return FERRY_OK;
}

static int32_t client_use_count(void *ctx, const struct ferry_tensor *t) {
    return (int32_t)find_tensor(ctx, t) + 10;
}

static void test_graph_round_trip(bool custom_ids, struct ferry_engine *engine) {
    struct ferry_error err;
    /* d = view(a + b, rows 1..2) * w, all f32 */
    struct ferry_tensor a, b, c, v, w, d;
    int64_t ne84[2] = { 8, 4 }, ne82[2] = { 8, 2 };
    ferry_tensor_init(&a, FERRY_TYPE_F32, 2, ne84, NULL);
    ferry_tensor_init(&b, FERRY_TYPE_F32, 2, ne84, NULL);
    ferry_tensor_init(&c, FERRY_TYPE_F32, 2, ne84, NULL);
    ferry_tensor_init(&v, FERRY_TYPE_F32, 2, ne82, NULL);
    ferry_tensor_init(&w, FERRY_TYPE_F32, 2, ne82, NULL);
    ferry_tensor_init(&d, FERRY_TYPE_F32, 2, ne82, NULL);
    strcpy(a.name, "a"); strcpy(b.name, "b"); strcpy(c.name, "c");
    strcpy(v.name, "c (view)"); strcpy(w.name, "w"); strcpy(d.name, "d");
    c.op = FERRY_OP_ADD; c.src[0] = &a; c.src[1] = &b; c.flags = FERRY_FLAG_COMPUTE;
    v.op = FERRY_OP_VIEW; v.src[0] = &c; v.view_src = &c; v.view_offs = 32; v.flags = FERRY_FLAG_COMPUTE;
    v.op_params[0] = 32;
    d.op = FERRY_OP_MUL; d.src[0] = &v; d.src[1] = &w; d.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    a.flags = b.flags = w.flags = FERRY_FLAG_INPUT;

    struct client_map m = {
        { &a, &b, &c, &v, &w, &d },
        { BUF_A, BUF_A, BUF_B, BUF_B, BUF_A, BUF_B },
        { 0, 128, 0, 32, 256, 256 },
        6, custom_ids,
    };
    struct ferry_rpc_graph_client cb = { &m, client_id, client_locate, client_use_count };
    struct ferry_tensor *nodes[3] = { &c, &v, &d };
    uint8_t *p = NULL;
    size_t len = 0;
    int rc = ferry_rpc_graph_encode(1, nodes, 3, &cb, &p, &len, &err);
    if (!CHECK(rc == FERRY_OK, "encode: %s", err.msg)) return;
    CHECK(len == 12 + 3 * 8 + 6 * 296, "payload length %zu", len);
    CHECK(le_get(p, 4) == 1 && le_get(p + 4, 4) == 3 && le_get(p + 32, 4) == 6, "header");
    CHECK(le_get(p + 8, 8) == client_id(&m, &c) && le_get(p + 16, 8) == client_id(&m, &v) &&
              le_get(p + 24, 8) == client_id(&m, &d),
          "node ids in order");
    /* ggml's order: post-order over srcs then view_src, deduplicated */
    const struct ferry_tensor *order[6] = { &a, &b, &c, &v, &w, &d };
    for (int i = 0; i < 6; i++) {
        const uint8_t *rec = p + 36 + 296 * i;
        int k = find_tensor(&m, order[i]);
        CHECK(le_get(rec, 8) == client_id(&m, order[i]), "record %d is %s", i, order[i]->name);
        CHECK(le_get(rec + 12, 8) == m.buffer[k] &&
                  le_get(rec + 220, 8) == (m.buffer[k] == BUF_A ? BASE_A : BASE_B) + m.offset[k],
              "record %d buffer and data", i);
        CHECK(le_get(rec + 292, 4) == (uint64_t)(k + 10), "record %d use_count", i);
    }
    CHECK(le_get(p + 36 + 3 * 296 + 204, 8) == client_id(&m, &c) &&
              le_get(p + 36 + 3 * 296 + 212, 8) == 32,
          "view record carries view_src and view_offs");

    struct ferry_rpc_graph *g = NULL;
    rc = decode(p, len, 2, &g, &err);
    free(p);
    if (!CHECK(rc == FERRY_OK, "decode: %s", err.msg)) return;
    CHECK(g->n_tensors == 6 && g->n_nodes == 3 && g->device == 1, "decoded counts");
    for (int i = 0; i < 6; i++) {
        const struct ferry_tensor *o = order[i], *t = &g->tensors[i];
        int k = find_tensor(&m, o);
        uint8_t *mem = m.buffer[k] == BUF_A ? mem_a : mem_b;
        bool same = t->type == o->type && memcmp(t->ne, o->ne, sizeof o->ne) == 0 &&
                    memcmp(t->nb, o->nb, sizeof o->nb) == 0 && t->op == o->op &&
                    memcmp(t->op_params, o->op_params, sizeof o->op_params) == 0 &&
                    t->flags == o->flags && strcmp(t->name, o->name) == 0 &&
                    t->view_offs == o->view_offs && t->data == mem + m.offset[k];
        CHECK(same, "tensor %s survives the round trip", o->name);
        for (int s = 0; s < FERRY_MAX_SRC; s++) {
            int want = o->src[s] ? find_tensor(&m, o->src[s]) : -1;
            int got = t->src[s] ? (int)(t->src[s] - g->tensors) : -1;
            /* decoded indices are record order; map through `order` */
            int got_k = got >= 0 ? find_tensor(&m, order[got]) : -1;
            CHECK(want == got_k, "%s src[%d]", o->name, s);
        }
        int want_v = o->view_src ? find_tensor(&m, o->view_src) : -1;
        int got_v = t->view_src ? find_tensor(&m, order[t->view_src - g->tensors]) : -1;
        CHECK(want_v == got_v, "%s view_src", o->name);
        CHECK(g->use_count[i] == k + 10, "%s use_count", o->name);
    }
    CHECK(g->nodes[0] == &g->tensors[2] && g->nodes[1] == &g->tensors[3] && g->nodes[2] == &g->tensors[5],
          "node order");
    CHECK(g->n_buffers == 2, "two buffers referenced");

    /* run it, and compare with a naive loop over the host memory */
    uint64_t s = 42;
    float *fa = (float *)mem_a, *fb = (float *)(mem_a + 128), *fw = (float *)(mem_a + 256);
    for (int i = 0; i < 32; i++) {
        fa[i] = test_rand_uniform(&s, -2, 2);
        fb[i] = test_rand_uniform(&s, -2, 2);
    }
    for (int i = 0; i < 16; i++) fw[i] = test_rand_uniform(&s, -2, 2);
    memset(mem_b, 0, BUF_SIZE);
    rc = ferry_engine_compute(engine, g->nodes, (int)g->n_nodes, &err);
    CHECK(rc == FERRY_OK, "compute: %s", err.msg);
    const float *fd = (const float *)(mem_b + 256);
    double worst = 0;
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 8; i++) {
            double want = ((double)fa[(r + 1) * 8 + i] + (double)fb[(r + 1) * 8 + i]) * (double)fw[r * 8 + i];
            double diff = want - fd[r * 8 + i];
            if (diff < 0) diff = -diff;
            if (diff > worst) worst = diff;
        }
    CHECK(worst < 1e-5, "d = view(a + b) * w matches the naive loop (max error %g)", worst);
    ferry_rpc_graph_free(g);
}

static void test_graph_encode_errors(void) {
    struct ferry_error err;
    uint8_t *p;
    size_t len;
    struct ferry_tensor t;
    int64_t ne[1] = { 4 };
    ferry_tensor_init(&t, FERRY_TYPE_F32, 1, ne, NULL);
    struct ferry_tensor *nodes[1] = { NULL };
    CHECK(ferry_rpc_graph_encode(0, nodes, 1, NULL, &p, &len, &err) == FERRY_ERR_INVALID && p == NULL,
          "NULL node refused");
    nodes[0] = &t;
    t.ne[0] = (int64_t)UINT32_MAX + 1;
    CHECK(ferry_rpc_graph_encode(0, nodes, 1, NULL, &p, &len, &err) == FERRY_ERR_INVALID,
          "ne beyond 32 bits refused (ggml would narrow it)");
    t.ne[0] = 4;
    t.nb[1] = (size_t)UINT32_MAX + 1;
    CHECK(ferry_rpc_graph_encode(0, nodes, 1, NULL, &p, &len, &err) == FERRY_ERR_INVALID,
          "nb beyond 32 bits refused");
    t.nb[1] = 16;
    /* a client-side cycle terminates (dedup on entry), like ggml's walk */
    t.src[0] = &t;
    CHECK(ferry_rpc_graph_encode(0, nodes, 1, NULL, &p, &len, &err) == FERRY_OK && len == 12 + 8 + 296,
          "client cycle terminates");
    free(p);
    t.src[0] = NULL;
    /* without callbacks: ids are pointers, no memory */
    CHECK(ferry_rpc_graph_encode(0, nodes, 1, NULL, &p, &len, &err) == FERRY_OK &&
              le_get(p + 8, 8) == (uint64_t)(uintptr_t)&t && le_get(p + 20, 8) == (uint64_t)(uintptr_t)&t &&
              le_get(p + 20 + 12, 8) == 0 && le_get(p + 20 + 220, 8) == 0,
          "default id and location");
    free(p);
}

/* ---- fuzz seeds ------------------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const uint8_t *p, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

/* A graph seed must decode, or the fuzzer starts from the error paths only. */
static int write_graph_seed(const char *dir, const char *name, const uint8_t *p, size_t n) {
    struct ferry_error err;
    struct ferry_rpc_graph *g = NULL;
    if (decode(p, n, 2, &g, &err) != FERRY_OK) {
        fprintf(stderr, "seed %s does not decode: %s\n", name, err.msg);
        return -1;
    }
    ferry_rpc_graph_free(g);
    return write_file(dir, name, p, n);
}

/* fuzz_frame input: cmd u8 | size u64le | payload */
static int write_frame(const char *dir, const char *name, uint8_t cmd, const uint8_t *payload, size_t n) {
    uint8_t *f = malloc(9 + n);
    ferry_rpc_encode_frame_header(cmd, n, f);
    if (n) memcpy(f + 9, payload, n);
    int rc = write_file(dir, name, f, 9 + n);
    free(f);
    return rc;
}

static int write_corpus(const char *frame_dir, const char *graph_dir) {
    mkdir(frame_dir, 0755);
    mkdir(graph_dir, 0755);
    int rc = 0;
    struct ferry_rpc_tensor r[4];
    uint64_t node;
    base_graph(r, &node);
    uint8_t buf[FERRY_RPC_GET_ALLOC_SIZE_SIZE];
    struct ferry_rpc_conn_caps caps = { 0 };
    rc |= write_frame(frame_dir, "hello", FERRY_RPC_CMD_HELLO, buf, ferry_rpc_encode_hello(&caps, buf));
    struct ferry_rpc_alloc_buffer ab = { 0, 4096 };
    rc |= write_frame(frame_dir, "alloc_buffer", 0, buf, ferry_rpc_encode_alloc_buffer(&ab, buf));
    rc |= write_frame(frame_dir, "get_alignment", 1, buf, ferry_rpc_encode_device(0, buf));
    rc |= write_frame(frame_dir, "free_buffer", 4, buf, ferry_rpc_encode_buffer(BUF_A, buf));
    struct ferry_rpc_buffer_clear bc = { BUF_B, 0 };
    rc |= write_frame(frame_dir, "buffer_clear", 5, buf, ferry_rpc_encode_buffer_clear(&bc, buf));
    uint8_t st[304 + 16];
    ferry_rpc_encode_set_tensor_header(&r[0], 16, st);
    memset(st + 304, 0x3f, 16);
    rc |= write_frame(frame_dir, "set_tensor", 6, st, sizeof st);
    struct ferry_rpc_set_tensor_hash sh = { r[1], 0, 0x14610b25330cc325ull };
    rc |= write_frame(frame_dir, "set_tensor_hash", 7, buf, ferry_rpc_encode_set_tensor_hash(&sh, buf));
    struct ferry_rpc_get_tensor gt = { r[2], 8, 64 };
    rc |= write_frame(frame_dir, "get_tensor", 8, buf, ferry_rpc_encode_get_tensor(&gt, buf));
    struct ferry_rpc_copy_tensor ct = { r[0], r[2] };
    rc |= write_frame(frame_dir, "copy_tensor", 9, buf, ferry_rpc_encode_copy_tensor(&ct, buf));
    rc |= write_frame(frame_dir, "init_tensor", 12, buf, ferry_rpc_encode_init_tensor(&r[1], buf));
    struct ferry_rpc_memset_tensor ms = { r[2], 4, 16, 0 };
    rc |= write_frame(frame_dir, "memset_tensor", 17, buf, ferry_rpc_encode_memset_tensor(&ms, buf));
    rc |= write_frame(frame_dir, "device_count", 15, buf, 0);
    rc |= write_frame(frame_dir, "graph_recompute", 16, buf, ferry_rpc_encode_device(0, buf));
    struct ferry_rpc_get_alloc_size gas;
    memset(&gas, 0, sizeof gas);
    gas.tensor = r[2];
    gas.srcs[0] = r[0];
    gas.srcs[1] = r[1];
    rc |= write_frame(frame_dir, "get_alloc_size", 13, buf, ferry_rpc_encode_get_alloc_size(&gas, buf));
    size_t len;
    uint8_t *g = build_graph(0, &node, 1, r, 3, &len);
    rc |= write_frame(frame_dir, "graph_compute", 10, g, len);
    rc |= write_graph_seed(graph_dir, "add", g, len);
    free(g);
    /* a view and two nodes */
    struct ferry_rpc_tensor *v = &r[3];
    plain_record(v, 0x104, FERRY_TYPE_F32, 8, 2, BUF_A, BASE_A + 32);
    v->op = FERRY_OP_VIEW;
    v->src[0] = v->view_src = ID_A;
    v->view_offs = 32;
    v->flags = FERRY_FLAG_COMPUTE;
    r[2].src[0] = 0x104;
    r[2].ne[1] = r[1].ne[1] = 2;
    uint64_t nodes2[2] = { 0x104, ID_C };
    struct ferry_rpc_tensor order[4] = { r[0], r[3], r[1], r[2] };
    g = build_graph(1, nodes2, 2, order, 4, &len);
    rc |= write_graph_seed(graph_dir, "view_add", g, len);
    free(g);
    /* a unary op in buffer B */
    struct ferry_rpc_tensor u[2];
    plain_record(&u[0], 0x201, FERRY_TYPE_F32, 16, 1, BUF_B, BASE_B + 512);
    plain_record(&u[1], 0x202, FERRY_TYPE_F32, 16, 1, BUF_B, BASE_B + 576);
    u[1].op = FERRY_OP_UNARY;
    u[1].op_params[0] = FERRY_UNARY_SILU;
    u[1].src[0] = 0x201;
    u[1].flags = FERRY_FLAG_COMPUTE;
    uint64_t n3 = 0x202;
    g = build_graph(0, &n3, 1, u, 2, &len);
    rc |= write_graph_seed(graph_dir, "silu", g, len);
    free(g);
    uint8_t empty[12] = { 0 };
    rc |= write_graph_seed(graph_dir, "empty", empty, sizeof empty);
    if (rc) fprintf(stderr, "could not write the corpus\n");
    return rc ? 1 : 0;
}

/* Byte 3 of the HELLO response: written and read by one pair of functions,
 * the values on the wire as docs/protocol-extensions.md gives them. */
static void test_hello_flags(void) {
    struct ferry_rpc_hello_ext none = { 0 }, ferry = { .ferry = true }, ext = { .ferry = true, .rdma_ext = true },
                               refused = { .ferry = true, .refusal = 2 };
    CHECK(ferry_rpc_hello_flags(&none) == 0, "a ggml-compatible answer has byte 3 zero");
    CHECK(ferry_rpc_hello_flags(&ferry) == 0x01, "ferry extensions: bit 0");
    CHECK(ferry_rpc_hello_flags(&ext) == 0x03, "ferry RDMA framing: bits 0 and 1");
    CHECK(ferry_rpc_hello_flags(&refused) == 0x21, "refusal 2 in bits 4-7");
    for (int f = 0; f < 256; f++) {
        struct ferry_rpc_hello_ext e = ferry_rpc_hello_ext_of((uint8_t)f);
        if (!(f & 1)) {
            CHECK(!e.ferry && !e.rdma_ext && !e.refusal, "flags %#x without bit 0 mean nothing", f);
            continue;
        }
        CHECK(e.ferry && e.rdma_ext == ((f & 2) != 0) && e.refusal == f >> 4, "flags %#x read back", f);
        if (!(f & 0x0c) && (!(f & 2) || !(f >> 4)))
            CHECK(ferry_rpc_hello_flags(&e) == f, "flags %#x round trip: %#x", f, ferry_rpc_hello_flags(&e));
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2], argv[3]);
    test_constants();
    test_hello_flags();
    test_request_sizes();
    test_response_sizes();
    test_tensor_layout();
    test_describe();
    test_resolve();
    test_alignment();
    test_hello();
    test_command_codecs();
    test_ferry_stats();
    test_fnv();
    test_graph_base();
    test_graph_hostile();
    test_graph_deep();
    test_graph_encode_errors();
    struct ferry_engine *engine = ferry_engine_create(2);
    if (CHECK(engine != NULL, "engine")) {
        test_graph_round_trip(false, engine);
        test_graph_round_trip(true, engine);
        ferry_engine_destroy(engine);
    }
    return test_summary();
}
