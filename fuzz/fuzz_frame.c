/* libFuzzer target: one request frame (cmd u8 | size u64le | payload)
 * through the size rule and the per-command decoders, as the server sees
 * it, and the payload through the response decoders, as the client sees
 * it. Decoded tensors are resolved against two fake buffers; decoded
 * requests must survive encode -> decode -> encode unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/rpc.h"

#define MAX_PAYLOAD (1u << 20)
#include "fake_buffers.h"

static void resolve_tensor(const struct ferry_rpc_tensor *r) {
    struct ferry_tensor t;
    size_t nbytes;
    struct ferry_error err;
    if (ferry_rpc_tensor_resolve(r, fake_resolve, NULL, &t, &nbytes, &err) != FERRY_OK) return;
    if (t.data && nbytes) {
        volatile uint8_t sink = ((const uint8_t *)t.data)[nbytes - 1];
        (void)sink;
    }
    (void)ferry_rpc_check_alignment(&t, &err);
}

static void resolve_region(const struct ferry_rpc_tensor *r, uint64_t offset, uint64_t size) {
    void *host;
    struct ferry_error err;
    resolve_tensor(r);
    if (ferry_rpc_resolve_region(r, offset, size, fake_resolve, NULL, &host, &err) != FERRY_OK) return;
    if (size) {
        volatile uint8_t sink = ((const uint8_t *)host)[0];
        sink ^= ((const uint8_t *)host)[size - 1];
        (void)sink;
    }
}

/* Re-encodes a decoded request; 0 for commands without a fixed encoding. */
static size_t encode(const struct ferry_rpc_request *q, uint8_t *out) {
    switch (q->cmd) {
    case FERRY_RPC_CMD_HELLO: return ferry_rpc_encode_hello(&q->u.hello, out);
    case FERRY_RPC_CMD_ALLOC_BUFFER: return ferry_rpc_encode_alloc_buffer(&q->u.alloc_buffer, out);
    case FERRY_RPC_CMD_GET_ALIGNMENT:
    case FERRY_RPC_CMD_GET_MAX_SIZE:
    case FERRY_RPC_CMD_GET_DEVICE_MEMORY:
    case FERRY_RPC_CMD_GRAPH_RECOMPUTE: return ferry_rpc_encode_device(q->u.device, out);
    case FERRY_RPC_CMD_BUFFER_GET_BASE:
    case FERRY_RPC_CMD_FREE_BUFFER: return ferry_rpc_encode_buffer(q->u.buffer, out);
    case FERRY_RPC_CMD_BUFFER_CLEAR: return ferry_rpc_encode_buffer_clear(&q->u.buffer_clear, out);
    case FERRY_RPC_CMD_SET_TENSOR:
        return ferry_rpc_encode_set_tensor_header(&q->u.set_tensor.tensor, q->u.set_tensor.offset, out);
    case FERRY_RPC_CMD_SET_TENSOR_HASH: return ferry_rpc_encode_set_tensor_hash(&q->u.set_tensor_hash, out);
    case FERRY_RPC_CMD_GET_TENSOR: return ferry_rpc_encode_get_tensor(&q->u.get_tensor, out);
    case FERRY_RPC_CMD_COPY_TENSOR: return ferry_rpc_encode_copy_tensor(&q->u.copy_tensor, out);
    case FERRY_RPC_CMD_INIT_TENSOR: return ferry_rpc_encode_init_tensor(&q->u.init_tensor, out);
    case FERRY_RPC_CMD_GET_ALLOC_SIZE: return ferry_rpc_encode_get_alloc_size(&q->u.get_alloc_size, out);
    case FERRY_RPC_CMD_MEMSET_TENSOR: return ferry_rpc_encode_memset_tensor(&q->u.memset_tensor, out);
    case FERRY_RPC_CMD_FERRY_LOAD_LOCAL: return ferry_rpc_encode_load_local(&q->u.load_local, out);
    default: return 0;
    }
}

static void server_side(uint8_t cmd, const uint8_t *p, size_t len) {
    static struct ferry_rpc_request q, q2; /* GET_ALLOC_SIZE makes these a few KiB */
    static uint8_t once[FERRY_RPC_GET_ALLOC_SIZE_SIZE], twice[FERRY_RPC_GET_ALLOC_SIZE_SIZE];
    struct ferry_error err;
    if (ferry_rpc_check_request_size(cmd, len, MAX_PAYLOAD, &err) != FERRY_OK) return;
    if (ferry_rpc_decode_request(cmd, p, len, &q, &err) != FERRY_OK) {
        if (cmd != FERRY_RPC_CMD_GRAPH_COMPUTE) abort(); /* the size rule was the only check */
        return;
    }
    switch (cmd) {
    case FERRY_RPC_CMD_SET_TENSOR:
        if (q.u.set_tensor.data_size != len - 304) abort();
        resolve_region(&q.u.set_tensor.tensor, q.u.set_tensor.offset, q.u.set_tensor.data_size);
        break;
    case FERRY_RPC_CMD_SET_TENSOR_HASH: resolve_region(&q.u.set_tensor_hash.tensor, q.u.set_tensor_hash.offset, 0); break;
    case FERRY_RPC_CMD_GET_TENSOR: resolve_region(&q.u.get_tensor.tensor, q.u.get_tensor.offset, q.u.get_tensor.size); break;
    case FERRY_RPC_CMD_MEMSET_TENSOR:
        resolve_region(&q.u.memset_tensor.tensor, q.u.memset_tensor.offset, q.u.memset_tensor.size);
        break;
    case FERRY_RPC_CMD_COPY_TENSOR:
        resolve_tensor(&q.u.copy_tensor.src);
        resolve_tensor(&q.u.copy_tensor.dst);
        break;
    case FERRY_RPC_CMD_INIT_TENSOR: resolve_tensor(&q.u.init_tensor); break;
    case FERRY_RPC_CMD_FERRY_LOAD_LOCAL: resolve_tensor(&q.u.load_local.tensor); break;
    case FERRY_RPC_CMD_GET_ALLOC_SIZE:
        resolve_tensor(&q.u.get_alloc_size.tensor);
        for (int i = 0; i < FERRY_MAX_SRC; i++)
            if (!ferry_rpc_tensor_is_null(&q.u.get_alloc_size.srcs[i])) resolve_tensor(&q.u.get_alloc_size.srcs[i]);
        break;
    case FERRY_RPC_CMD_GRAPH_COMPUTE: {
        struct ferry_rpc_graph *g = NULL;
        if (ferry_rpc_graph_decode(p, len, 2, fake_resolve, NULL, &g, &err) == FERRY_OK) ferry_rpc_graph_free(g);
        else if (g) abort();
        return;
    }
    default: break;
    }
    /* encode(decode(x)) is a fixed point after one pass (names normalise once) */
    size_t n1 = encode(&q, once);
    if (!n1) return;
    /* SET_TENSOR re-encodes its header only: that decodes as a write of 0 bytes */
    if (ferry_rpc_decode_request(cmd, once, n1, &q2, &err) != FERRY_OK) abort();
    size_t n2 = encode(&q2, twice);
    if (n1 != n2 || memcmp(once, twice, n1) != 0) abort();
}

static void client_side(uint8_t cmd, uint64_t declared, const uint8_t *p, size_t len) {
    struct ferry_error err;
    (void)ferry_rpc_check_response_size(cmd, len, declared, &err);
    struct ferry_rpc_hello_rsp h;
    if (ferry_rpc_decode_hello_rsp(p, len, &h, &err) == FERRY_OK) (void)ferry_rpc_check_server_version(&h, &err);
    struct ferry_rpc_alloc_buffer_rsp ab;
    (void)ferry_rpc_decode_alloc_buffer_rsp(p, len, &ab, &err);
    struct ferry_rpc_device_memory dm;
    (void)ferry_rpc_decode_device_memory(p, len, &dm, &err);
    uint64_t u64;
    uint32_t u32;
    uint8_t u8;
    (void)ferry_rpc_decode_u64_rsp(p, len, &u64, &err);
    (void)ferry_rpc_decode_u32_rsp(p, len, &u32, &err);
    (void)ferry_rpc_decode_u8_rsp(p, len, &u8, &err);
    /* a ferry server's error reply in place of a response's length */
    uint32_t code, reason_len;
    if (len >= 8 && ferry_rpc_decode_error(p, &code, &reason_len, &err) == FERRY_OK) (void)ferry_rpc_error_name(code);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!mem[0]) {
        mem[0] = calloc(1, BUF_SIZE);
        mem[1] = calloc(1, BUF_SIZE);
    }
    if (size < FERRY_RPC_FRAME_HEADER_SIZE) return 0;
    uint8_t cmd;
    uint64_t declared;
    ferry_rpc_decode_frame_header(data, &cmd, &declared);
    const uint8_t *p = data + FERRY_RPC_FRAME_HEADER_SIZE;
    size_t len = size - FERRY_RPC_FRAME_HEADER_SIZE;
    struct ferry_error err;
    /* the declared length decides whether the server reads on at all */
    int rc = ferry_rpc_check_request_size(cmd, declared, MAX_PAYLOAD, &err);
    if (rc == FERRY_OK && declared > MAX_PAYLOAD) abort(); /* no fixed size is that large */
    /* the payload as actually present */
    server_side(cmd, p, len);
    client_side(cmd, declared, p, len);
    return 0;
}
