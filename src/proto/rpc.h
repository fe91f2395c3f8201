/* ferry: the ggml RPC wire format (protocol v5.x), bytes and rules only.
 *
 * This layer never touches a socket. The server uses it to check frame
 * sizes, decode requests and encode responses; the client library uses it
 * the other way round. Every integer is encoded little-endian field by field
 * (never by copying a packed struct), so the layout is the spec's on any
 * host. Reference: docs/rpc-protocol.md sections 2, 4, 5 and 6.
 *
 * Errors: framing and length problems are FERRY_ERR_PROTOCOL, bad content
 * (types, ids, extents, device indices) FERRY_ERR_INVALID; the reason is in
 * the struct ferry_error so the server can log it and close that connection. */
#ifndef FERRY_PROTO_RPC_H
#define FERRY_PROTO_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/tensor.h"
#include "util/bytes.h"

/* The protocol revision ferry implements: 5.1.0 (the 296-byte record ends
 * in use_count). Our client accepts servers with this major and a minor up
 * to ours, as ggml's does. */
#define FERRY_RPC_VERSION_MAJOR 5
#define FERRY_RPC_VERSION_MINOR 1
#define FERRY_RPC_VERSION_PATCH 0

/* What the ferry server tells clients in HELLO. 5.0 is accepted by both 5.0
 * and 5.1 ggml clients (5.1 would lock 5.0 clients out); the server reads
 * use_count either way, since a 5.0 client sends zero there. */
#define FERRY_RPC_ADVERTISED_MAJOR 5
#define FERRY_RPC_ADVERTISED_MINOR 0
#define FERRY_RPC_ADVERTISED_PATCH 0

enum ferry_rpc_cmd {
    FERRY_RPC_CMD_ALLOC_BUFFER = 0,
    FERRY_RPC_CMD_GET_ALIGNMENT = 1,
    FERRY_RPC_CMD_GET_MAX_SIZE = 2,
    FERRY_RPC_CMD_BUFFER_GET_BASE = 3,
    FERRY_RPC_CMD_FREE_BUFFER = 4,
    FERRY_RPC_CMD_BUFFER_CLEAR = 5,
    FERRY_RPC_CMD_SET_TENSOR = 6,
    FERRY_RPC_CMD_SET_TENSOR_HASH = 7,
    FERRY_RPC_CMD_GET_TENSOR = 8,
    FERRY_RPC_CMD_COPY_TENSOR = 9,
    FERRY_RPC_CMD_GRAPH_COMPUTE = 10,
    FERRY_RPC_CMD_GET_DEVICE_MEMORY = 11,
    FERRY_RPC_CMD_INIT_TENSOR = 12,
    FERRY_RPC_CMD_GET_ALLOC_SIZE = 13,
    FERRY_RPC_CMD_HELLO = 14,
    FERRY_RPC_CMD_DEVICE_COUNT = 15,
    FERRY_RPC_CMD_GRAPH_RECOMPUTE = 16,
    FERRY_RPC_CMD_MEMSET_TENSOR = 17,
    FERRY_RPC_CMD_COUNT = 18,
};

/* ferry-only extension (docs/protocol-extensions.md), invisible to ggml
 * peers: the ferry server sets bit 0 of HELLO response byte 3 (ggml's
 * padding, which its clients ignore), and only then may a client send
 * FERRY_STATS (empty request, 48-byte answer). Other unknown ids stay
 * refused. */
#define FERRY_RPC_CMD_FERRY_STATS 64
#define FERRY_RPC_HELLO_FLAG_EXT_STATS 0x01
/* bit 1: the server's RDMA caps are on offer with ferry's framing too
 * (the client may send its negotiation record over TCP); bits 4-7, when
 * the client offered RDMA and the server's caps are zero: why
 * (FERRY_RDMA_REFUSED_*). */
#define FERRY_RPC_HELLO_FLAG_RDMA_EXT 0x02
/* bit 2: the server answers with error replies (below) before it closes */
#define FERRY_RPC_HELLO_FLAG_ERRORS 0x04
#define FERRY_RPC_HELLO_REFUSAL_SHIFT 4
/* bit 3: the server holds model files of its own and answers
 * FERRY_LOAD_LOCAL: the tensor record (296 bytes), the model's content key
 * (u64, ferry_gguf_content_key) and the tensor's byte offset in that file
 * (u64); the answer is one byte, 1 when the server filled the whole tensor
 * from its copy, 0 when it holds no such tensor (the client then sends the
 * bytes itself). */
#define FERRY_RPC_HELLO_FLAG_EXT_LOCAL 0x08
#define FERRY_RPC_CMD_FERRY_LOAD_LOCAL 65
#define FERRY_RPC_FERRY_LOAD_LOCAL_SIZE 312
#define FERRY_RPC_FERRY_STATS_RSP_SIZE 48

#define FERRY_RPC_TENSOR_SIZE 296   /* one serialized rpc_tensor */
#define FERRY_RPC_CONN_CAPS_SIZE 24 /* HELLO request: RDMA caps */
#define FERRY_RPC_HELLO_RSP_SIZE 28 /* version (4) + caps */
#define FERRY_RPC_FRAME_HEADER_SIZE 9 /* cmd u8 + size u64 */
#define FERRY_RPC_RSP_HEADER_SIZE 8   /* size u64 */

/* Fixed request payload sizes (docs/rpc-protocol.md section 5). */
#define FERRY_RPC_ALLOC_BUFFER_SIZE 12
#define FERRY_RPC_DEVICE_REQ_SIZE 4 /* GET_ALIGNMENT, GET_MAX_SIZE, GET_DEVICE_MEMORY, GRAPH_RECOMPUTE */
#define FERRY_RPC_BUFFER_REQ_SIZE 8 /* BUFFER_GET_BASE, FREE_BUFFER */
#define FERRY_RPC_BUFFER_CLEAR_SIZE 9
#define FERRY_RPC_SET_TENSOR_HEADER_SIZE 304 /* tensor + offset; data follows */
#define FERRY_RPC_SET_TENSOR_HASH_SIZE 312
#define FERRY_RPC_GET_TENSOR_SIZE 312
#define FERRY_RPC_COPY_TENSOR_SIZE 592
#define FERRY_RPC_INIT_TENSOR_SIZE 296
#define FERRY_RPC_GET_ALLOC_SIZE_SIZE 3260 /* device + tensor + 10 srcs */
#define FERRY_RPC_MEMSET_TENSOR_SIZE 313
#define FERRY_RPC_GRAPH_MIN_SIZE 8 /* device + n_nodes; the rest is checked by the graph decoder */

const char *ferry_rpc_cmd_name(int cmd); /* "?" for unknown ids */

/* ---- frames -------------------------------------------------------------- */

void ferry_rpc_encode_frame_header(uint8_t cmd, uint64_t size, uint8_t out[FERRY_RPC_FRAME_HEADER_SIZE]);
void ferry_rpc_decode_frame_header(const uint8_t in[FERRY_RPC_FRAME_HEADER_SIZE], uint8_t *cmd,
                                   uint64_t *size);

/* The request-size rule, applied by the server before it reads or allocates
 * a payload: unknown commands are refused; fixed-size commands must match
 * exactly; SET_TENSOR needs at least its 304-byte header and GRAPH_COMPUTE
 * at least 8 bytes; DEVICE_COUNT is empty. Variable-length payloads above
 * max_payload are refused, so no length up to 2^64-1 ever reaches malloc
 * (fixed sizes are bounded by themselves). FERRY_OK or FERRY_ERR_PROTOCOL. */
int ferry_rpc_check_request_size(uint8_t cmd, uint64_t size, uint64_t max_payload,
                                 struct ferry_error *err);

enum ferry_rpc_rsp_kind {
    FERRY_RPC_RSP_NONE,     /* nothing comes back: SET_TENSOR, GRAPH_COMPUTE, GRAPH_RECOMPUTE */
    FERRY_RPC_RSP_FIXED,    /* exactly *size bytes (0: the empty response) */
    FERRY_RPC_RSP_VARIABLE, /* GET_TENSOR: exactly the size that was asked for */
};
/* What a command answers; *size is set for FIXED. Unknown commands: NONE. */
enum ferry_rpc_rsp_kind ferry_rpc_response_kind(uint8_t cmd, uint64_t *size);
/* The client's check of a response length; requested is GET_TENSOR's size. */
int ferry_rpc_check_response_size(uint8_t cmd, uint64_t size, uint64_t requested,
                                  struct ferry_error *err);

/* ---- the serialized tensor (docs/rpc-protocol.md section 4) --------------- */

struct ferry_rpc_tensor {
    uint64_t id;   /* client's identity for the tensor; 0 = none */
    uint32_t type;
    uint64_t buffer; /* server buffer handle or 0 */
    uint32_t ne[FERRY_MAX_DIMS];
    uint32_t nb[FERRY_MAX_DIMS];
    uint32_t op;
    int32_t op_params[FERRY_MAX_OP_PARAMS];
    int32_t flags;
    uint64_t src[FERRY_MAX_SRC];
    uint64_t view_src;
    uint64_t view_offs;
    uint64_t data; /* absolute server address (base + offset) or 0 */
    char name[FERRY_MAX_NAME];
    int32_t use_count; /* v5.1; zero padding before */
};

void ferry_rpc_tensor_encode(const struct ferry_rpc_tensor *t, uint8_t out[FERRY_RPC_TENSOR_SIZE]);
/* Raw decode, no validation (cannot fail); name is always NUL-terminated. */
void ferry_rpc_tensor_decode(const uint8_t in[FERRY_RPC_TENSOR_SIZE], struct ferry_rpc_tensor *t);
bool ferry_rpc_tensor_is_null(const struct ferry_rpc_tensor *t); /* all 296 bytes zero */

/* Client side: a record from a ferry tensor. ne/nb must fit the wire's 32
 * bits (ggml narrows silently; we refuse); src/view_src ids are the caller's. */
int ferry_rpc_tensor_from_ferry(const struct ferry_tensor *t, uint64_t id, uint64_t buffer,
                                uint64_t data, struct ferry_rpc_tensor *out, struct ferry_error *err);

/* Maps a remote extent [data, data + nbytes) of buffer `buffer` to host
 * memory. The server implements it with its per-connection buffer table:
 * handles and addresses are opaque per-connection values. It must fail
 * (FERRY_ERR_INVALID) for an unknown handle or an extent not wholly inside
 * the buffer. Proto calls it only with buffer != 0 and data + nbytes not
 * wrapping. */
typedef int (*ferry_rpc_resolve_fn)(void *ctx, uint64_t buffer, uint64_t data, size_t nbytes,
                                    void **host_ptr, struct ferry_error *err);

/* Server side: validates a record into a tensor description: type in range
 * and not removed, ne/nb widened, nbytes overflow-checked. Fills type, ne,
 * nb, op, op_params, flags, view_offs, name; src, view_src and data are
 * left NULL. *nbytes receives ggml_nbytes. */
int ferry_rpc_tensor_describe(const struct ferry_rpc_tensor *r, struct ferry_tensor *t,
                              size_t *nbytes, struct ferry_error *err);

/* describe(), then the memory: buffer 0 with data 0 is a tensor without
 * memory (data NULL); buffer 0 with data != 0 is refused; otherwise the
 * whole extent goes through the resolver and t->data is the host address. */
int ferry_rpc_tensor_resolve(const struct ferry_rpc_tensor *r, ferry_rpc_resolve_fn resolve,
                             void *ctx, struct ferry_tensor *t, size_t *nbytes,
                             struct ferry_error *err);

/* For SET_TENSOR, GET_TENSOR, SET_TENSOR_HASH and MEMSET_TENSOR: resolves
 * the tensor (which must have a buffer) and checks that [offset, offset +
 * size) lies inside it; *host_ptr is the first byte of that region. */
int ferry_rpc_resolve_region(const struct ferry_rpc_tensor *r, uint64_t offset, uint64_t size,
                             ferry_rpc_resolve_fn resolve, void *ctx, void **host_ptr,
                             struct ferry_error *err);

/* The alignment the engine needs for a type's data and strides: 4 for
 * f32/i32 and q8_K (float scale), 8 for i64/f64, 2 for f16/bf16/i16 and
 * blocks with f16 fields, 1 for i8, mxfp4 and nvfp4. */
size_t ferry_rpc_type_alignment(int type);
/* data and every stride of a non-trivial dim must be multiples of it;
 * tensors without memory or with no bytes pass. */
int ferry_rpc_check_alignment(const struct ferry_tensor *t, struct ferry_error *err);

/* ---- commands (docs/rpc-protocol.md section 5) ---------------------------- */

struct ferry_rpc_conn_caps {
    uint32_t qpn; /* 0 = no RDMA */
    uint32_t psn;
    uint8_t gid[16];
};

struct ferry_rpc_hello_rsp {
    uint8_t major, minor, patch;
    uint8_t flags; /* byte 3: zero from ggml; FERRY_RPC_HELLO_FLAG_* from ferry */
    struct ferry_rpc_conn_caps caps;
};

struct ferry_rpc_alloc_buffer {
    uint32_t device;
    uint64_t size;
};
struct ferry_rpc_alloc_buffer_rsp {
    uint64_t remote_ptr; /* handle; 0 = allocation failed */
    uint64_t remote_size;
};
struct ferry_rpc_buffer_clear {
    uint64_t buffer;
    uint8_t value;
};
/* SET_TENSOR: the 304-byte header; the data (data_size bytes) follows it.
 * data points into the payload when the whole payload was decoded, else NULL. */
struct ferry_rpc_set_tensor {
    struct ferry_rpc_tensor tensor;
    uint64_t offset;
    uint64_t data_size;
    const uint8_t *data;
};
struct ferry_rpc_set_tensor_hash {
    struct ferry_rpc_tensor tensor;
    uint64_t offset;
    uint64_t hash;
};
struct ferry_rpc_load_local {
    struct ferry_rpc_tensor tensor;
    uint64_t key, file_offset;
};
struct ferry_rpc_get_tensor {
    struct ferry_rpc_tensor tensor;
    uint64_t offset;
    uint64_t size;
};
struct ferry_rpc_copy_tensor {
    struct ferry_rpc_tensor src;
    struct ferry_rpc_tensor dst;
};
struct ferry_rpc_get_alloc_size {
    uint32_t device;
    struct ferry_rpc_tensor tensor;
    struct ferry_rpc_tensor srcs[FERRY_MAX_SRC]; /* all-zero record = no src */
};
struct ferry_rpc_memset_tensor {
    struct ferry_rpc_tensor tensor;
    uint64_t offset;
    uint64_t size;
    uint8_t value;
};
struct ferry_rpc_device_memory {
    uint64_t free_mem;
    uint64_t total_mem;
};
/* What the graph decoder reads first; the counts are already checked
 * against the payload length. */
struct ferry_rpc_graph_header {
    uint32_t device;
    uint32_t n_nodes;
    uint32_t n_tensors;
    size_t nodes_offset;   /* of nodes[0] */
    size_t tensors_offset; /* of the first record */
};

/* One decoded request of any command (the server's dispatch input). */
struct ferry_rpc_request {
    uint8_t cmd;
    union {
        struct ferry_rpc_conn_caps hello;
        struct ferry_rpc_alloc_buffer alloc_buffer;
        uint32_t device; /* GET_ALIGNMENT, GET_MAX_SIZE, GET_DEVICE_MEMORY, GRAPH_RECOMPUTE */
        uint64_t buffer; /* BUFFER_GET_BASE, FREE_BUFFER */
        struct ferry_rpc_buffer_clear buffer_clear;
        struct ferry_rpc_set_tensor set_tensor;
        struct ferry_rpc_set_tensor_hash set_tensor_hash;
        struct ferry_rpc_load_local load_local;
        struct ferry_rpc_get_tensor get_tensor;
        struct ferry_rpc_copy_tensor copy_tensor;
        struct ferry_rpc_tensor init_tensor;
        struct ferry_rpc_get_alloc_size get_alloc_size;
        struct ferry_rpc_memset_tensor memset_tensor;
        struct ferry_rpc_graph_header graph; /* GRAPH_COMPUTE: header only, see graph decode */
    } u;
};

/* Applies the size rule (without a payload bound) and decodes the fields.
 * Tensor records come back raw: validating them is resolve()'s job, which
 * needs the server's buffers. */
int ferry_rpc_decode_request(uint8_t cmd, const uint8_t *payload, size_t len,
                             struct ferry_rpc_request *out, struct ferry_error *err);

/* Request encoders (client side). Each writes exactly the size named by
 * its constant and returns it. */
size_t ferry_rpc_encode_hello(const struct ferry_rpc_conn_caps *c, uint8_t out[FERRY_RPC_CONN_CAPS_SIZE]);
size_t ferry_rpc_encode_alloc_buffer(const struct ferry_rpc_alloc_buffer *r,
                                     uint8_t out[FERRY_RPC_ALLOC_BUFFER_SIZE]);
size_t ferry_rpc_encode_device(uint32_t device, uint8_t out[FERRY_RPC_DEVICE_REQ_SIZE]);
size_t ferry_rpc_encode_buffer(uint64_t buffer, uint8_t out[FERRY_RPC_BUFFER_REQ_SIZE]);
size_t ferry_rpc_encode_buffer_clear(const struct ferry_rpc_buffer_clear *r,
                                     uint8_t out[FERRY_RPC_BUFFER_CLEAR_SIZE]);
size_t ferry_rpc_encode_set_tensor_header(const struct ferry_rpc_tensor *t, uint64_t offset,
                                          uint8_t out[FERRY_RPC_SET_TENSOR_HEADER_SIZE]);
size_t ferry_rpc_encode_set_tensor_hash(const struct ferry_rpc_set_tensor_hash *r,
                                        uint8_t out[FERRY_RPC_SET_TENSOR_HASH_SIZE]);
size_t ferry_rpc_encode_load_local(const struct ferry_rpc_load_local *r,
                                   uint8_t out[FERRY_RPC_FERRY_LOAD_LOCAL_SIZE]);
size_t ferry_rpc_encode_get_tensor(const struct ferry_rpc_get_tensor *r,
                                   uint8_t out[FERRY_RPC_GET_TENSOR_SIZE]);
size_t ferry_rpc_encode_copy_tensor(const struct ferry_rpc_copy_tensor *r,
                                    uint8_t out[FERRY_RPC_COPY_TENSOR_SIZE]);
size_t ferry_rpc_encode_init_tensor(const struct ferry_rpc_tensor *t,
                                    uint8_t out[FERRY_RPC_INIT_TENSOR_SIZE]);
size_t ferry_rpc_encode_get_alloc_size(const struct ferry_rpc_get_alloc_size *r,
                                       uint8_t out[FERRY_RPC_GET_ALLOC_SIZE_SIZE]);
size_t ferry_rpc_encode_memset_tensor(const struct ferry_rpc_memset_tensor *r,
                                      uint8_t out[FERRY_RPC_MEMSET_TENSOR_SIZE]);

/* Responses: encoders for the server, decoders (exact length) for the client. */
size_t ferry_rpc_encode_hello_rsp(const struct ferry_rpc_hello_rsp *r, uint8_t out[FERRY_RPC_HELLO_RSP_SIZE]);
int ferry_rpc_decode_hello_rsp(const uint8_t *p, size_t len, struct ferry_rpc_hello_rsp *r,
                               struct ferry_error *err);
/* Client: the server's version must have our major and a minor <= ours. */
int ferry_rpc_check_server_version(const struct ferry_rpc_hello_rsp *r, struct ferry_error *err);
/* Server: our advertised version and the given caps (zeros for no RDMA). */
void ferry_rpc_hello_rsp_init(struct ferry_rpc_hello_rsp *r, const struct ferry_rpc_conn_caps *caps);

/* Byte 3 of a ferry server's HELLO response, made and read in one place:
 * ferry's extensions are on; rdma_ext when the server's caps also offer
 * ferry's RDMA framing; refusal (FERRY_RDMA_REFUSED_*, 0 for none) when the
 * client offered RDMA and the server's caps are zero. A ggml server sends 0. */
struct ferry_rpc_hello_ext {
    bool ferry;    /* a ferry server: FERRY_STATS and the extensions exist */
    bool rdma_ext; /* ferry's RDMA framing is on offer */
    bool local;    /* FERRY_LOAD_LOCAL: the server holds model files */
    bool errors;   /* the server sends error replies (the client asked for them) */
    int refusal;   /* why the server refused RDMA, 0 if it did not */
};
uint8_t ferry_rpc_hello_flags(const struct ferry_rpc_hello_ext *ext);
struct ferry_rpc_hello_ext ferry_rpc_hello_ext_of(uint8_t flags);

/* ---- error replies (docs/protocol-extensions.md, FERRY_EXT_ERRORS) ------------
 * ggml's protocol has no error reply: a server closes. A ferry client asks
 * for one in its HELLO caps when it offers no RDMA (qpn 0, where ggml reads
 * nothing else): bytes 8..11 "FRRY", 12..15 u32le feature bits. A ferry
 * server then may send, where a response's 8-byte length would be, the
 * error mark, u32le code, u32le reason length, the reason (printable ASCII,
 * at most FERRY_RPC_ERROR_MAX_REASON bytes), and close. */
#define FERRY_RPC_CAPS_FEAT_ERRORS 0x1u
#define FERRY_RPC_ERROR_MARK 0x5252455952524546ull /* "FERRYERR" little-endian */
#define FERRY_RPC_ERROR_HEADER_SIZE 16             /* mark, code, length */
#define FERRY_RPC_ERROR_MAX_REASON 200

enum ferry_rpc_error_code {
    FERRY_RPC_ERROR_BUSY = 1,       /* at the connection limit */
    FERRY_RPC_ERROR_PEER_LIMIT = 2, /* this address holds its share of connections */
    FERRY_RPC_ERROR_REQUEST = 3,    /* the request was refused (the reason says why) */
    FERRY_RPC_ERROR_EVICTED = 4,    /* closed to make room for another client */
    FERRY_RPC_ERROR_TIMEOUT = 5,    /* idle too long */
};

/* Client: marks zero (no RDMA) caps with `features`; caps offering RDMA
 * are left alone (their GID is real). */
void ferry_rpc_caps_mark(uint8_t caps[FERRY_RPC_CONN_CAPS_SIZE], uint32_t features);
/* Server: the features a HELLO request's caps ask for; 0 for ggml's. */
uint32_t ferry_rpc_caps_features(const uint8_t caps[FERRY_RPC_CONN_CAPS_SIZE]);
/* The whole reply into out (cap >= FERRY_RPC_ERROR_HEADER_SIZE +
 * FERRY_RPC_ERROR_MAX_REASON); the reason is sanitized and cut. Returns its size. */
size_t ferry_rpc_encode_error(uint32_t code, const char *reason, uint8_t *out, size_t cap);
/* The 8 bytes after the mark: code and reason length, checked. */
int ferry_rpc_decode_error(const uint8_t p[8], uint32_t *code, uint32_t *len, struct ferry_error *err);
const char *ferry_rpc_error_name(uint32_t code);
/* Peer bytes for a message: printable ASCII kept, anything else '.', cut
 * at the first line end or cap - 1 bytes (then "..."). */
void ferry_rpc_printable(const uint8_t *in, size_t n, char *out, size_t cap);

/* FERRY_STATS answer: the server's counters since it started. */
struct ferry_rpc_ferry_stats {
    uint64_t cpu_user_ns, cpu_sys_ns; /* the server process (getrusage) */
    uint64_t commands, bytes_in, bytes_out, compute_ns;
};
size_t ferry_rpc_encode_ferry_stats(const struct ferry_rpc_ferry_stats *r,
                                    uint8_t out[FERRY_RPC_FERRY_STATS_RSP_SIZE]);
int ferry_rpc_decode_ferry_stats(const uint8_t *p, size_t len, struct ferry_rpc_ferry_stats *r,
                                 struct ferry_error *err);

size_t ferry_rpc_encode_alloc_buffer_rsp(const struct ferry_rpc_alloc_buffer_rsp *r, uint8_t out[16]);
int ferry_rpc_decode_alloc_buffer_rsp(const uint8_t *p, size_t len,
                                      struct ferry_rpc_alloc_buffer_rsp *r, struct ferry_error *err);
size_t ferry_rpc_encode_device_memory(const struct ferry_rpc_device_memory *r, uint8_t out[16]);
int ferry_rpc_decode_device_memory(const uint8_t *p, size_t len, struct ferry_rpc_device_memory *r,
                                   struct ferry_error *err);
/* u64 answers: GET_ALIGNMENT, GET_MAX_SIZE, BUFFER_GET_BASE, GET_ALLOC_SIZE. */
size_t ferry_rpc_encode_u64_rsp(uint64_t v, uint8_t out[8]);
int ferry_rpc_decode_u64_rsp(const uint8_t *p, size_t len, uint64_t *v, struct ferry_error *err);
/* u32 answer: DEVICE_COUNT. */
size_t ferry_rpc_encode_u32_rsp(uint32_t v, uint8_t out[4]);
int ferry_rpc_decode_u32_rsp(const uint8_t *p, size_t len, uint32_t *v, struct ferry_error *err);
/* u8 answers: SET_TENSOR_HASH and COPY_TENSOR results (0 or 1). */
int ferry_rpc_decode_u8_rsp(const uint8_t *p, size_t len, uint8_t *v, struct ferry_error *err);

/* FNV-1a 64 (SET_TENSOR_HASH, cache file names): util/hash.h */
#include "util/hash.h"

/* ---- GRAPH_COMPUTE payload (docs/rpc-protocol.md section 6; graph.c) ------- */

/* Checks the structure's lengths (overflow-safe): len >= 8, the node list
 * and the record count fit, then the records fit. Trailing bytes are
 * ignored, as ggml does. The device index is not checked here. */
int ferry_rpc_graph_parse_header(const uint8_t *p, size_t len, struct ferry_rpc_graph_header *h,
                                 struct ferry_error *err);

/* A decoded graph that keeps every wire rule, ready to be planned by the
 * engine (which checks what its ops need). */
struct ferry_rpc_graph {
    uint32_t device;
    uint32_t n_tensors;
    struct ferry_tensor *tensors; /* one per record, in record order; src/view_src wired */
    uint64_t *ids;                /* record id of tensors[i] */
    int32_t *use_count;           /* use_count of tensors[i] */
    uint32_t n_nodes;
    struct ferry_tensor **nodes; /* execution order; point into tensors */
    uint32_t n_buffers;
    uint64_t *buffers; /* distinct buffer handles referenced, ascending */
};

/* Server side. Validates everything before anything can run: lengths,
 * device < n_devices, every record (id != 0 and unique, op known and not a
 * custom op, type valid, extent inside its buffer via the resolver, data
 * and strides aligned), every src/view_src id resolvable, views consistent
 * with their base, no cycles, node ids known. What the ops need (types,
 * shapes, memory for every node that runs) is the engine's to check, once,
 * when it plans the graph (ferry_engine_plan). Duplicate ids are
 * rejected: ggml's client deduplicates by pointer, so they never occur in
 * honest traffic. */
int ferry_rpc_graph_decode(const uint8_t *p, size_t len, uint32_t n_devices,
                           ferry_rpc_resolve_fn resolve, void *ctx, struct ferry_rpc_graph **out,
                           struct ferry_error *err);
void ferry_rpc_graph_free(struct ferry_rpc_graph *g);
/* For GRAPH_RECOMPUTE: does the stored graph reference this buffer? */
bool ferry_rpc_graph_uses_buffer(const struct ferry_rpc_graph *g, uint64_t buffer);

/* Client side: how a local tensor appears on the wire. Any callback may be
 * NULL: id defaults to the pointer value, locate to buffer 0 / data 0 (no
 * remote memory), use_count to 0. */
struct ferry_rpc_graph_client {
    void *ctx;
    uint64_t (*id)(void *ctx, const struct ferry_tensor *t);
    int (*locate)(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                  struct ferry_error *err);
    int32_t (*use_count)(void *ctx, const struct ferry_tensor *t);
};

/* Builds the payload the way ggml's client does: for each node in order a
 * depth-first post-order walk over src[0..9] then view_src, deduplicated by
 * pointer. *out is malloc'd (free() it); *out_len is its length. */
int ferry_rpc_graph_encode(uint32_t device, struct ferry_tensor *const *nodes, uint32_t n_nodes,
                           const struct ferry_rpc_graph_client *cb, uint8_t **out,
                           size_t *out_len, struct ferry_error *err);

#endif
