/* The ggml RPC wire format: command sizes, the 296-byte tensor record,
 * per-command encoders and decoders, FNV-1a. Bytes and rules only; the
 * server and the client own the sockets and the buffers. */
#include "proto/rpc.h"

#include <string.h>

/* rpc_tensor field offsets (docs/rpc-protocol.md section 4). */
enum {
    OFF_ID = 0,
    OFF_TYPE = 8,
    OFF_BUFFER = 12,
    OFF_NE = 20,
    OFF_NB = 36,
    OFF_OP = 52,
    OFF_OP_PARAMS = 56,
    OFF_FLAGS = 120,
    OFF_SRC = 124,
    OFF_VIEW_SRC = 204,
    OFF_VIEW_OFFS = 212,
    OFF_DATA = 220,
    OFF_NAME = 228,
    OFF_USE_COUNT = 292,
};
_Static_assert(OFF_USE_COUNT + 4 == FERRY_RPC_TENSOR_SIZE, "rpc_tensor layout");

static const char *const cmd_names[FERRY_RPC_CMD_COUNT] = {
    "ALLOC_BUFFER", "GET_ALIGNMENT", "GET_MAX_SIZE", "BUFFER_GET_BASE", "FREE_BUFFER",
    "BUFFER_CLEAR", "SET_TENSOR", "SET_TENSOR_HASH", "GET_TENSOR", "COPY_TENSOR",
    "GRAPH_COMPUTE", "GET_DEVICE_MEMORY", "INIT_TENSOR", "GET_ALLOC_SIZE", "HELLO",
    "DEVICE_COUNT", "GRAPH_RECOMPUTE", "MEMSET_TENSOR",
};

const char *ferry_rpc_cmd_name(int cmd) {
    if (cmd == FERRY_RPC_CMD_FERRY_STATS) return "FERRY_STATS";
    if (cmd == FERRY_RPC_CMD_FERRY_LOAD_LOCAL) return "FERRY_LOAD_LOCAL";
    return cmd >= 0 && cmd < FERRY_RPC_CMD_COUNT ? cmd_names[cmd] : "?";
}

/* ---- frames ---------------------------------------------------------------- */

void ferry_rpc_encode_frame_header(uint8_t cmd, uint64_t size, uint8_t out[FERRY_RPC_FRAME_HEADER_SIZE]) {
    out[0] = cmd;
    ferry_put_le64(out + 1, size);
}

void ferry_rpc_decode_frame_header(const uint8_t in[FERRY_RPC_FRAME_HEADER_SIZE], uint8_t *cmd,
                                   uint64_t *size) {
    *cmd = in[0];
    *size = ferry_get_le64(in + 1);
}

/* How a request's size is judged. */
enum size_rule { EXACT, AT_LEAST };

struct request_size {
    enum size_rule rule;
    uint64_t size;
};

static const struct request_size request_sizes[FERRY_RPC_CMD_COUNT] = {
    [FERRY_RPC_CMD_ALLOC_BUFFER] = { EXACT, FERRY_RPC_ALLOC_BUFFER_SIZE },
    [FERRY_RPC_CMD_GET_ALIGNMENT] = { EXACT, FERRY_RPC_DEVICE_REQ_SIZE },
    [FERRY_RPC_CMD_GET_MAX_SIZE] = { EXACT, FERRY_RPC_DEVICE_REQ_SIZE },
    [FERRY_RPC_CMD_BUFFER_GET_BASE] = { EXACT, FERRY_RPC_BUFFER_REQ_SIZE },
    [FERRY_RPC_CMD_FREE_BUFFER] = { EXACT, FERRY_RPC_BUFFER_REQ_SIZE },
    [FERRY_RPC_CMD_BUFFER_CLEAR] = { EXACT, FERRY_RPC_BUFFER_CLEAR_SIZE },
    [FERRY_RPC_CMD_SET_TENSOR] = { AT_LEAST, FERRY_RPC_SET_TENSOR_HEADER_SIZE },
    [FERRY_RPC_CMD_SET_TENSOR_HASH] = { EXACT, FERRY_RPC_SET_TENSOR_HASH_SIZE },
    [FERRY_RPC_CMD_GET_TENSOR] = { EXACT, FERRY_RPC_GET_TENSOR_SIZE },
    [FERRY_RPC_CMD_COPY_TENSOR] = { EXACT, FERRY_RPC_COPY_TENSOR_SIZE },
    [FERRY_RPC_CMD_GRAPH_COMPUTE] = { AT_LEAST, FERRY_RPC_GRAPH_MIN_SIZE },
    [FERRY_RPC_CMD_GET_DEVICE_MEMORY] = { EXACT, FERRY_RPC_DEVICE_REQ_SIZE },
    [FERRY_RPC_CMD_INIT_TENSOR] = { EXACT, FERRY_RPC_INIT_TENSOR_SIZE },
    [FERRY_RPC_CMD_GET_ALLOC_SIZE] = { EXACT, FERRY_RPC_GET_ALLOC_SIZE_SIZE },
    [FERRY_RPC_CMD_HELLO] = { EXACT, FERRY_RPC_CONN_CAPS_SIZE },
    [FERRY_RPC_CMD_DEVICE_COUNT] = { EXACT, 0 },
    [FERRY_RPC_CMD_GRAPH_RECOMPUTE] = { EXACT, FERRY_RPC_DEVICE_REQ_SIZE },
    [FERRY_RPC_CMD_MEMSET_TENSOR] = { EXACT, FERRY_RPC_MEMSET_TENSOR_SIZE },
};

int ferry_rpc_check_request_size(uint8_t cmd, uint64_t size, uint64_t max_payload,
                                 struct ferry_error *err) {
    if (cmd == FERRY_RPC_CMD_FERRY_STATS) {
        if (size != 0)
            return ferry_fail(err, FERRY_ERR_PROTOCOL, "FERRY_STATS: request size %llu, expected 0",
                              (unsigned long long)size);
        return FERRY_OK;
    }
    if (cmd == FERRY_RPC_CMD_FERRY_LOAD_LOCAL) {
        if (size != FERRY_RPC_FERRY_LOAD_LOCAL_SIZE)
            return ferry_fail(err, FERRY_ERR_PROTOCOL, "FERRY_LOAD_LOCAL: request size %llu, expected %d",
                              (unsigned long long)size, FERRY_RPC_FERRY_LOAD_LOCAL_SIZE);
        return FERRY_OK;
    }
    if (cmd >= FERRY_RPC_CMD_COUNT)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "unknown command %u", (unsigned)cmd);
    const struct request_size *r = &request_sizes[cmd];
    if (r->rule == EXACT) {
        if (size != r->size)
            return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: request size %llu, expected %llu",
                              cmd_names[cmd], (unsigned long long)size, (unsigned long long)r->size);
        return FERRY_OK;
    }
    if (size < r->size)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: request size %llu below the minimum %llu",
                          cmd_names[cmd], (unsigned long long)size, (unsigned long long)r->size);
    if (size > max_payload)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: request size %llu above the limit %llu",
                          cmd_names[cmd], (unsigned long long)size,
                          (unsigned long long)max_payload);
    return FERRY_OK;
}

enum ferry_rpc_rsp_kind ferry_rpc_response_kind(uint8_t cmd, uint64_t *size) {
    uint64_t n = 0;
    switch (cmd) {
    case FERRY_RPC_CMD_SET_TENSOR:
    case FERRY_RPC_CMD_GRAPH_COMPUTE:
    case FERRY_RPC_CMD_GRAPH_RECOMPUTE:
        return FERRY_RPC_RSP_NONE;
    case FERRY_RPC_CMD_GET_TENSOR:
        return FERRY_RPC_RSP_VARIABLE;
    case FERRY_RPC_CMD_ALLOC_BUFFER: n = 16; break;
    case FERRY_RPC_CMD_GET_ALIGNMENT:
    case FERRY_RPC_CMD_GET_MAX_SIZE:
    case FERRY_RPC_CMD_BUFFER_GET_BASE:
    case FERRY_RPC_CMD_GET_ALLOC_SIZE: n = 8; break;
    case FERRY_RPC_CMD_FREE_BUFFER:
    case FERRY_RPC_CMD_BUFFER_CLEAR:
    case FERRY_RPC_CMD_INIT_TENSOR:
    case FERRY_RPC_CMD_MEMSET_TENSOR: n = 0; break;
    case FERRY_RPC_CMD_SET_TENSOR_HASH:
    case FERRY_RPC_CMD_COPY_TENSOR: n = 1; break;
    case FERRY_RPC_CMD_GET_DEVICE_MEMORY: n = 16; break;
    case FERRY_RPC_CMD_HELLO: n = FERRY_RPC_HELLO_RSP_SIZE; break;
    case FERRY_RPC_CMD_DEVICE_COUNT: n = 4; break;
    case FERRY_RPC_CMD_FERRY_STATS: n = FERRY_RPC_FERRY_STATS_RSP_SIZE; break;
    case FERRY_RPC_CMD_FERRY_LOAD_LOCAL: n = 1; break;
    default: return FERRY_RPC_RSP_NONE;
    }
    if (size) *size = n;
    return FERRY_RPC_RSP_FIXED;
}

int ferry_rpc_check_response_size(uint8_t cmd, uint64_t size, uint64_t requested,
                                  struct ferry_error *err) {
    uint64_t want = 0;
    switch (ferry_rpc_response_kind(cmd, &want)) {
    case FERRY_RPC_RSP_NONE:
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s has no response", ferry_rpc_cmd_name(cmd));
    case FERRY_RPC_RSP_VARIABLE: want = requested; break;
    case FERRY_RPC_RSP_FIXED: break;
    }
    if (size != want)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: response size %llu, expected %llu",
                          ferry_rpc_cmd_name(cmd), (unsigned long long)size,
                          (unsigned long long)want);
    return FERRY_OK;
}

/* ---- the tensor record ------------------------------------------------------ */

void ferry_rpc_tensor_encode(const struct ferry_rpc_tensor *t, uint8_t out[FERRY_RPC_TENSOR_SIZE]) {
    ferry_put_le64(out + OFF_ID, t->id);
    ferry_put_le32(out + OFF_TYPE, t->type);
    ferry_put_le64(out + OFF_BUFFER, t->buffer);
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        ferry_put_le32(out + OFF_NE + 4 * i, t->ne[i]);
        ferry_put_le32(out + OFF_NB + 4 * i, t->nb[i]);
    }
    ferry_put_le32(out + OFF_OP, t->op);
    for (int i = 0; i < FERRY_MAX_OP_PARAMS; i++)
        ferry_put_le32(out + OFF_OP_PARAMS + 4 * i, (uint32_t)t->op_params[i]);
    ferry_put_le32(out + OFF_FLAGS, (uint32_t)t->flags);
    for (int i = 0; i < FERRY_MAX_SRC; i++) ferry_put_le64(out + OFF_SRC + 8 * i, t->src[i]);
    ferry_put_le64(out + OFF_VIEW_SRC, t->view_src);
    ferry_put_le64(out + OFF_VIEW_OFFS, t->view_offs);
    ferry_put_le64(out + OFF_DATA, t->data);
    /* NUL-terminated and zero-padded, as the client's snprintf leaves it */
    size_t n = strnlen(t->name, FERRY_MAX_NAME - 1);
    memset(out + OFF_NAME, 0, FERRY_MAX_NAME);
    memcpy(out + OFF_NAME, t->name, n);
    ferry_put_le32(out + OFF_USE_COUNT, (uint32_t)t->use_count);
}

void ferry_rpc_tensor_decode(const uint8_t in[FERRY_RPC_TENSOR_SIZE], struct ferry_rpc_tensor *t) {
    t->id = ferry_get_le64(in + OFF_ID);
    t->type = ferry_get_le32(in + OFF_TYPE);
    t->buffer = ferry_get_le64(in + OFF_BUFFER);
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        t->ne[i] = ferry_get_le32(in + OFF_NE + 4 * i);
        t->nb[i] = ferry_get_le32(in + OFF_NB + 4 * i);
    }
    t->op = ferry_get_le32(in + OFF_OP);
    for (int i = 0; i < FERRY_MAX_OP_PARAMS; i++)
        t->op_params[i] = (int32_t)ferry_get_le32(in + OFF_OP_PARAMS + 4 * i);
    t->flags = (int32_t)ferry_get_le32(in + OFF_FLAGS);
    for (int i = 0; i < FERRY_MAX_SRC; i++) t->src[i] = ferry_get_le64(in + OFF_SRC + 8 * i);
    t->view_src = ferry_get_le64(in + OFF_VIEW_SRC);
    t->view_offs = ferry_get_le64(in + OFF_VIEW_OFFS);
    t->data = ferry_get_le64(in + OFF_DATA);
    memcpy(t->name, in + OFF_NAME, FERRY_MAX_NAME);
    t->name[FERRY_MAX_NAME - 1] = '\0'; /* a hostile name need not be terminated */
    t->use_count = (int32_t)ferry_get_le32(in + OFF_USE_COUNT);
}

bool ferry_rpc_tensor_is_null(const struct ferry_rpc_tensor *t) {
    uint8_t raw[FERRY_RPC_TENSOR_SIZE];
    ferry_rpc_tensor_encode(t, raw);
    for (size_t i = 0; i < sizeof raw; i++)
        if (raw[i]) return false;
    return true;
}

int ferry_rpc_tensor_from_ferry(const struct ferry_tensor *t, uint64_t id, uint64_t buffer,
                                uint64_t data, struct ferry_rpc_tensor *out, struct ferry_error *err) {
    memset(out, 0, sizeof *out);
    if ((int)t->type < 0 || (int)t->op < 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': bad type or op", t->name);
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        /* the wire has 32 bits; ggml narrows silently, which corrupts shapes */
        if (t->ne[i] < 0 || (uint64_t)t->ne[i] > UINT32_MAX || t->nb[i] > UINT32_MAX)
            return ferry_fail(err, FERRY_ERR_INVALID,
                              "tensor '%s': ne[%d]=%lld / nb[%d]=%zu do not fit 32 bits", t->name,
                              i, (long long)t->ne[i], i, t->nb[i]);
        out->ne[i] = (uint32_t)t->ne[i];
        out->nb[i] = (uint32_t)t->nb[i];
    }
    out->id = id;
    out->type = (uint32_t)t->type;
    out->buffer = buffer;
    out->op = (uint32_t)t->op;
    memcpy(out->op_params, t->op_params, sizeof out->op_params);
    out->flags = t->flags;
    out->view_offs = t->view_offs;
    out->data = data;
    memcpy(out->name, t->name, FERRY_MAX_NAME);
    out->name[FERRY_MAX_NAME - 1] = '\0';
    return FERRY_OK;
}

int ferry_rpc_tensor_describe(const struct ferry_rpc_tensor *r, struct ferry_tensor *t,
                              size_t *nbytes, struct ferry_error *err) {
    memset(t, 0, sizeof *t);
    if (r->type >= FERRY_TYPE_COUNT || !ferry_type_valid((int)r->type))
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor %#llx: invalid type %u",
                          (unsigned long long)r->id, r->type);
    t->type = (enum ferry_type)r->type;
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        t->ne[i] = (int64_t)r->ne[i];
        t->nb[i] = (size_t)r->nb[i];
    }
    /* an out-of-range op is kept as is; the engine and the graph decoder refuse it */
    t->op = (enum ferry_op)(r->op > INT32_MAX ? INT32_MAX : (int32_t)r->op);
    memcpy(t->op_params, r->op_params, sizeof t->op_params);
    t->flags = r->flags;
    t->view_offs = (size_t)r->view_offs;
    memcpy(t->name, r->name, FERRY_MAX_NAME);
    t->name[FERRY_MAX_NAME - 1] = '\0';
    if (!ferry_nbytes_checked(t, nbytes))
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor %#llx ('%s'): byte extent overflows",
                          (unsigned long long)r->id, t->name);
    return FERRY_OK;
}

int ferry_rpc_tensor_resolve(const struct ferry_rpc_tensor *r, ferry_rpc_resolve_fn resolve,
                             void *ctx, struct ferry_tensor *t, size_t *nbytes,
                             struct ferry_error *err) {
    int rc = ferry_rpc_tensor_describe(r, t, nbytes, err);
    if (rc) return rc;
    if (r->buffer == 0) {
        if (r->data != 0)
            return ferry_fail(err, FERRY_ERR_INVALID,
                              "tensor %#llx ('%s'): data %#llx without a buffer",
                              (unsigned long long)r->id, t->name, (unsigned long long)r->data);
        return FERRY_OK; /* no memory: fine for tensors nobody reads */
    }
    uint64_t end;
    if (__builtin_add_overflow(r->data, (uint64_t)*nbytes, &end))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "tensor %#llx ('%s'): extent %#llx + %zu wraps around",
                          (unsigned long long)r->id, t->name, (unsigned long long)r->data, *nbytes);
    if (!resolve)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor %#llx: no buffers to resolve against",
                          (unsigned long long)r->id);
    void *host = NULL;
    rc = resolve(ctx, r->buffer, r->data, *nbytes, &host, err);
    if (rc) return rc;
    t->data = host;
    return FERRY_OK;
}

int ferry_rpc_resolve_region(const struct ferry_rpc_tensor *r, uint64_t offset, uint64_t size,
                             ferry_rpc_resolve_fn resolve, void *ctx, void **host_ptr,
                             struct ferry_error *err) {
    if (r->buffer == 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor %#llx has no buffer",
                          (unsigned long long)r->id);
    struct ferry_tensor t;
    size_t nbytes;
    int rc = ferry_rpc_tensor_resolve(r, resolve, ctx, &t, &nbytes, err);
    if (rc) return rc;
    if (offset > nbytes || size > nbytes - offset)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "tensor %#llx ('%s'): region %llu+%llu outside its %zu bytes",
                          (unsigned long long)r->id, t.name, (unsigned long long)offset,
                          (unsigned long long)size, nbytes);
    *host_ptr = t.data ? (uint8_t *)t.data + offset : NULL;
    return FERRY_OK;
}

size_t ferry_rpc_type_alignment(int type) {
    switch (type) {
    case FERRY_TYPE_F32:
    case FERRY_TYPE_I32:
    case FERRY_TYPE_Q8_K: return 4;
    case FERRY_TYPE_I64:
    case FERRY_TYPE_F64: return 8;
    case FERRY_TYPE_I8:
    case FERRY_TYPE_MXFP4:
    case FERRY_TYPE_NVFP4: return 1;
    default: return 2; /* f16, bf16, i16, and blocks that start or end with an f16 scale */
    }
}

int ferry_rpc_check_alignment(const struct ferry_tensor *t, struct ferry_error *err) {
    size_t nbytes;
    if (!t->data || !ferry_nbytes_checked(t, &nbytes) || nbytes == 0) return FERRY_OK;
    size_t a = ferry_rpc_type_alignment(t->type);
    if ((uintptr_t)t->data % a != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': %s data not %zu-byte aligned",
                          t->name, ferry_type_name(t->type), a);
    for (int i = 0; i < FERRY_MAX_DIMS; i++)
        if (t->ne[i] > 1 && t->nb[i] % a != 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': %s stride nb[%d]=%zu not %zu-byte aligned",
                              t->name, ferry_type_name(t->type), i, t->nb[i], a);
    return FERRY_OK;
}

/* ---- per-command requests ----------------------------------------------------- */

static void encode_caps(const struct ferry_rpc_conn_caps *c, uint8_t *out) {
    ferry_put_le32(out, c->qpn);
    ferry_put_le32(out + 4, c->psn);
    memcpy(out + 8, c->gid, sizeof c->gid);
}

static void decode_caps(const uint8_t *in, struct ferry_rpc_conn_caps *c) {
    c->qpn = ferry_get_le32(in);
    c->psn = ferry_get_le32(in + 4);
    memcpy(c->gid, in + 8, sizeof c->gid);
}

size_t ferry_rpc_encode_hello(const struct ferry_rpc_conn_caps *c, uint8_t out[FERRY_RPC_CONN_CAPS_SIZE]) {
    encode_caps(c, out);
    return FERRY_RPC_CONN_CAPS_SIZE;
}

size_t ferry_rpc_encode_alloc_buffer(const struct ferry_rpc_alloc_buffer *r,
                                     uint8_t out[FERRY_RPC_ALLOC_BUFFER_SIZE]) {
    ferry_put_le32(out, r->device);
    ferry_put_le64(out + 4, r->size);
    return FERRY_RPC_ALLOC_BUFFER_SIZE;
}

size_t ferry_rpc_encode_device(uint32_t device, uint8_t out[FERRY_RPC_DEVICE_REQ_SIZE]) {
    ferry_put_le32(out, device);
    return FERRY_RPC_DEVICE_REQ_SIZE;
}

size_t ferry_rpc_encode_buffer(uint64_t buffer, uint8_t out[FERRY_RPC_BUFFER_REQ_SIZE]) {
    ferry_put_le64(out, buffer);
    return FERRY_RPC_BUFFER_REQ_SIZE;
}

size_t ferry_rpc_encode_buffer_clear(const struct ferry_rpc_buffer_clear *r,
                                     uint8_t out[FERRY_RPC_BUFFER_CLEAR_SIZE]) {
    ferry_put_le64(out, r->buffer);
    out[8] = r->value;
    return FERRY_RPC_BUFFER_CLEAR_SIZE;
}

size_t ferry_rpc_encode_set_tensor_header(const struct ferry_rpc_tensor *t, uint64_t offset,
                                          uint8_t out[FERRY_RPC_SET_TENSOR_HEADER_SIZE]) {
    ferry_rpc_tensor_encode(t, out);
    ferry_put_le64(out + FERRY_RPC_TENSOR_SIZE, offset);
    return FERRY_RPC_SET_TENSOR_HEADER_SIZE;
}

size_t ferry_rpc_encode_set_tensor_hash(const struct ferry_rpc_set_tensor_hash *r,
                                        uint8_t out[FERRY_RPC_SET_TENSOR_HASH_SIZE]) {
    ferry_rpc_tensor_encode(&r->tensor, out);
    ferry_put_le64(out + 296, r->offset);
    ferry_put_le64(out + 304, r->hash);
    return FERRY_RPC_SET_TENSOR_HASH_SIZE;
}

size_t ferry_rpc_encode_load_local(const struct ferry_rpc_load_local *r,
                                   uint8_t out[FERRY_RPC_FERRY_LOAD_LOCAL_SIZE]) {
    ferry_rpc_tensor_encode(&r->tensor, out);
    ferry_put_le64(out + 296, r->key);
    ferry_put_le64(out + 304, r->file_offset);
    return FERRY_RPC_FERRY_LOAD_LOCAL_SIZE;
}

size_t ferry_rpc_encode_get_tensor(const struct ferry_rpc_get_tensor *r,
                                   uint8_t out[FERRY_RPC_GET_TENSOR_SIZE]) {
    ferry_rpc_tensor_encode(&r->tensor, out);
    ferry_put_le64(out + 296, r->offset);
    ferry_put_le64(out + 304, r->size);
    return FERRY_RPC_GET_TENSOR_SIZE;
}

size_t ferry_rpc_encode_copy_tensor(const struct ferry_rpc_copy_tensor *r,
                                    uint8_t out[FERRY_RPC_COPY_TENSOR_SIZE]) {
    ferry_rpc_tensor_encode(&r->src, out);
    ferry_rpc_tensor_encode(&r->dst, out + FERRY_RPC_TENSOR_SIZE);
    return FERRY_RPC_COPY_TENSOR_SIZE;
}

size_t ferry_rpc_encode_init_tensor(const struct ferry_rpc_tensor *t,
                                    uint8_t out[FERRY_RPC_INIT_TENSOR_SIZE]) {
    ferry_rpc_tensor_encode(t, out);
    return FERRY_RPC_INIT_TENSOR_SIZE;
}

size_t ferry_rpc_encode_get_alloc_size(const struct ferry_rpc_get_alloc_size *r,
                                       uint8_t out[FERRY_RPC_GET_ALLOC_SIZE_SIZE]) {
    ferry_put_le32(out, r->device);
    ferry_rpc_tensor_encode(&r->tensor, out + 4);
    for (int i = 0; i < FERRY_MAX_SRC; i++)
        ferry_rpc_tensor_encode(&r->srcs[i], out + 4 + FERRY_RPC_TENSOR_SIZE * (size_t)(i + 1));
    return FERRY_RPC_GET_ALLOC_SIZE_SIZE;
}

size_t ferry_rpc_encode_memset_tensor(const struct ferry_rpc_memset_tensor *r,
                                      uint8_t out[FERRY_RPC_MEMSET_TENSOR_SIZE]) {
    ferry_rpc_tensor_encode(&r->tensor, out);
    ferry_put_le64(out + 296, r->offset);
    ferry_put_le64(out + 304, r->size);
    out[312] = r->value;
    return FERRY_RPC_MEMSET_TENSOR_SIZE;
}

int ferry_rpc_decode_request(uint8_t cmd, const uint8_t *p, size_t len,
                             struct ferry_rpc_request *out, struct ferry_error *err) {
    int rc = ferry_rpc_check_request_size(cmd, len, UINT64_MAX, err);
    if (rc) return rc;
    memset(out, 0, sizeof *out);
    out->cmd = cmd;
    if (cmd == FERRY_RPC_CMD_FERRY_LOAD_LOCAL) {
        ferry_rpc_tensor_decode(p, &out->u.load_local.tensor);
        out->u.load_local.key = ferry_get_le64(p + 296);
        out->u.load_local.file_offset = ferry_get_le64(p + 304);
        return FERRY_OK;
    }
    switch ((enum ferry_rpc_cmd)cmd) {
    case FERRY_RPC_CMD_HELLO:
        decode_caps(p, &out->u.hello);
        break;
    case FERRY_RPC_CMD_ALLOC_BUFFER:
        out->u.alloc_buffer.device = ferry_get_le32(p);
        out->u.alloc_buffer.size = ferry_get_le64(p + 4);
        break;
    case FERRY_RPC_CMD_GET_ALIGNMENT:
    case FERRY_RPC_CMD_GET_MAX_SIZE:
    case FERRY_RPC_CMD_GET_DEVICE_MEMORY:
    case FERRY_RPC_CMD_GRAPH_RECOMPUTE:
        out->u.device = ferry_get_le32(p);
        break;
    case FERRY_RPC_CMD_BUFFER_GET_BASE:
    case FERRY_RPC_CMD_FREE_BUFFER:
        out->u.buffer = ferry_get_le64(p);
        break;
    case FERRY_RPC_CMD_BUFFER_CLEAR:
        out->u.buffer_clear.buffer = ferry_get_le64(p);
        out->u.buffer_clear.value = p[8];
        break;
    case FERRY_RPC_CMD_SET_TENSOR:
        ferry_rpc_tensor_decode(p, &out->u.set_tensor.tensor);
        out->u.set_tensor.offset = ferry_get_le64(p + 296);
        out->u.set_tensor.data_size = len - FERRY_RPC_SET_TENSOR_HEADER_SIZE;
        out->u.set_tensor.data = p + FERRY_RPC_SET_TENSOR_HEADER_SIZE;
        break;
    case FERRY_RPC_CMD_SET_TENSOR_HASH:
        ferry_rpc_tensor_decode(p, &out->u.set_tensor_hash.tensor);
        out->u.set_tensor_hash.offset = ferry_get_le64(p + 296);
        out->u.set_tensor_hash.hash = ferry_get_le64(p + 304);
        break;
    case FERRY_RPC_CMD_GET_TENSOR:
        ferry_rpc_tensor_decode(p, &out->u.get_tensor.tensor);
        out->u.get_tensor.offset = ferry_get_le64(p + 296);
        out->u.get_tensor.size = ferry_get_le64(p + 304);
        break;
    case FERRY_RPC_CMD_COPY_TENSOR:
        ferry_rpc_tensor_decode(p, &out->u.copy_tensor.src);
        ferry_rpc_tensor_decode(p + FERRY_RPC_TENSOR_SIZE, &out->u.copy_tensor.dst);
        break;
    case FERRY_RPC_CMD_INIT_TENSOR:
        ferry_rpc_tensor_decode(p, &out->u.init_tensor);
        break;
    case FERRY_RPC_CMD_GET_ALLOC_SIZE:
        out->u.get_alloc_size.device = ferry_get_le32(p);
        ferry_rpc_tensor_decode(p + 4, &out->u.get_alloc_size.tensor);
        for (int i = 0; i < FERRY_MAX_SRC; i++)
            ferry_rpc_tensor_decode(p + 4 + FERRY_RPC_TENSOR_SIZE * (size_t)(i + 1),
                                    &out->u.get_alloc_size.srcs[i]);
        break;
    case FERRY_RPC_CMD_MEMSET_TENSOR:
        ferry_rpc_tensor_decode(p, &out->u.memset_tensor.tensor);
        out->u.memset_tensor.offset = ferry_get_le64(p + 296);
        out->u.memset_tensor.size = ferry_get_le64(p + 304);
        out->u.memset_tensor.value = p[312];
        break;
    case FERRY_RPC_CMD_GRAPH_COMPUTE:
        return ferry_rpc_graph_parse_header(p, len, &out->u.graph, err);
    case FERRY_RPC_CMD_DEVICE_COUNT:
    case FERRY_RPC_CMD_COUNT:
        break;
    }
    return FERRY_OK;
}

/* ---- responses ------------------------------------------------------------------ */

static int check_rsp_len(const char *what, size_t len, size_t want, struct ferry_error *err) {
    if (len != want)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s response: %zu bytes, expected %zu", what,
                          len, want);
    return FERRY_OK;
}

void ferry_rpc_hello_rsp_init(struct ferry_rpc_hello_rsp *r, const struct ferry_rpc_conn_caps *caps) {
    memset(r, 0, sizeof *r);
    r->major = FERRY_RPC_ADVERTISED_MAJOR;
    r->minor = FERRY_RPC_ADVERTISED_MINOR;
    r->patch = FERRY_RPC_ADVERTISED_PATCH;
    if (caps) r->caps = *caps;
}

uint8_t ferry_rpc_hello_flags(const struct ferry_rpc_hello_ext *ext) {
    if (!ext->ferry) return 0;
    uint8_t f = FERRY_RPC_HELLO_FLAG_EXT_STATS;
    if (ext->errors) f |= FERRY_RPC_HELLO_FLAG_ERRORS;
    if (ext->rdma_ext) f |= FERRY_RPC_HELLO_FLAG_RDMA_EXT;
    else f |= (uint8_t)((ext->refusal & 0x0f) << FERRY_RPC_HELLO_REFUSAL_SHIFT);
    if (ext->local) f |= FERRY_RPC_HELLO_FLAG_EXT_LOCAL;
    return f;
}

struct ferry_rpc_hello_ext ferry_rpc_hello_ext_of(uint8_t flags) {
    struct ferry_rpc_hello_ext e = { 0 };
    e.ferry = (flags & FERRY_RPC_HELLO_FLAG_EXT_STATS) != 0;
    if (e.ferry) {
        e.rdma_ext = (flags & FERRY_RPC_HELLO_FLAG_RDMA_EXT) != 0;
        e.errors = (flags & FERRY_RPC_HELLO_FLAG_ERRORS) != 0;
        e.refusal = flags >> FERRY_RPC_HELLO_REFUSAL_SHIFT;
        e.local = (flags & FERRY_RPC_HELLO_FLAG_EXT_LOCAL) != 0;
    }
    return e;
}

size_t ferry_rpc_encode_hello_rsp(const struct ferry_rpc_hello_rsp *r, uint8_t out[FERRY_RPC_HELLO_RSP_SIZE]) {
    out[0] = r->major;
    out[1] = r->minor;
    out[2] = r->patch;
    out[3] = r->flags; /* ggml's padding: ferry's extension flags */
    encode_caps(&r->caps, out + 4);
    return FERRY_RPC_HELLO_RSP_SIZE;
}

int ferry_rpc_decode_hello_rsp(const uint8_t *p, size_t len, struct ferry_rpc_hello_rsp *r,
                               struct ferry_error *err) {
    int rc = check_rsp_len("HELLO", len, FERRY_RPC_HELLO_RSP_SIZE, err);
    if (rc) return rc;
    r->major = p[0];
    r->minor = p[1];
    r->patch = p[2];
    r->flags = p[3]; /* any value is fine: ggml sends 0 */
    decode_caps(p + 4, &r->caps);
    return FERRY_OK;
}

int ferry_rpc_check_server_version(const struct ferry_rpc_hello_rsp *r, struct ferry_error *err) {
    /* patch is ignored, as ggml's client does */
    if (r->major != FERRY_RPC_VERSION_MAJOR || r->minor > FERRY_RPC_VERSION_MINOR)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "RPC server version mismatch: %u.%u.%u",
                          r->major, r->minor, r->patch);
    return FERRY_OK;
}

size_t ferry_rpc_encode_ferry_stats(const struct ferry_rpc_ferry_stats *r,
                                    uint8_t out[FERRY_RPC_FERRY_STATS_RSP_SIZE]) {
    const uint64_t v[6] = { r->cpu_user_ns, r->cpu_sys_ns, r->commands,
                            r->bytes_in,    r->bytes_out,  r->compute_ns };
    for (int i = 0; i < 6; i++) ferry_put_le64(out + 8 * i, v[i]);
    return FERRY_RPC_FERRY_STATS_RSP_SIZE;
}

int ferry_rpc_decode_ferry_stats(const uint8_t *p, size_t len, struct ferry_rpc_ferry_stats *r,
                                 struct ferry_error *err) {
    int rc = check_rsp_len("FERRY_STATS", len, FERRY_RPC_FERRY_STATS_RSP_SIZE, err);
    if (rc) return rc;
    uint64_t *v[6] = { &r->cpu_user_ns, &r->cpu_sys_ns, &r->commands,
                       &r->bytes_in,    &r->bytes_out,  &r->compute_ns };
    for (int i = 0; i < 6; i++) *v[i] = ferry_get_le64(p + 8 * i);
    return FERRY_OK;
}

size_t ferry_rpc_encode_alloc_buffer_rsp(const struct ferry_rpc_alloc_buffer_rsp *r, uint8_t out[16]) {
    ferry_put_le64(out, r->remote_ptr);
    ferry_put_le64(out + 8, r->remote_size);
    return 16;
}

int ferry_rpc_decode_alloc_buffer_rsp(const uint8_t *p, size_t len,
                                      struct ferry_rpc_alloc_buffer_rsp *r, struct ferry_error *err) {
    int rc = check_rsp_len("ALLOC_BUFFER", len, 16, err);
    if (rc) return rc;
    r->remote_ptr = ferry_get_le64(p);
    r->remote_size = ferry_get_le64(p + 8);
    return FERRY_OK;
}

size_t ferry_rpc_encode_device_memory(const struct ferry_rpc_device_memory *r, uint8_t out[16]) {
    ferry_put_le64(out, r->free_mem);
    ferry_put_le64(out + 8, r->total_mem);
    return 16;
}

int ferry_rpc_decode_device_memory(const uint8_t *p, size_t len, struct ferry_rpc_device_memory *r,
                                   struct ferry_error *err) {
    int rc = check_rsp_len("GET_DEVICE_MEMORY", len, 16, err);
    if (rc) return rc;
    r->free_mem = ferry_get_le64(p);
    r->total_mem = ferry_get_le64(p + 8);
    return FERRY_OK;
}

size_t ferry_rpc_encode_u64_rsp(uint64_t v, uint8_t out[8]) {
    ferry_put_le64(out, v);
    return 8;
}

int ferry_rpc_decode_u64_rsp(const uint8_t *p, size_t len, uint64_t *v, struct ferry_error *err) {
    int rc = check_rsp_len("u64", len, 8, err);
    if (rc) return rc;
    *v = ferry_get_le64(p);
    return FERRY_OK;
}

size_t ferry_rpc_encode_u32_rsp(uint32_t v, uint8_t out[4]) {
    ferry_put_le32(out, v);
    return 4;
}

int ferry_rpc_decode_u32_rsp(const uint8_t *p, size_t len, uint32_t *v, struct ferry_error *err) {
    int rc = check_rsp_len("u32", len, 4, err);
    if (rc) return rc;
    *v = ferry_get_le32(p);
    return FERRY_OK;
}

int ferry_rpc_decode_u8_rsp(const uint8_t *p, size_t len, uint8_t *v, struct ferry_error *err) {
    int rc = check_rsp_len("result", len, 1, err);
    if (rc) return rc;
    if (p[0] > 1) return ferry_fail(err, FERRY_ERR_PROTOCOL, "result byte %u is not 0 or 1", p[0]);
    *v = p[0];
    return FERRY_OK;
}
