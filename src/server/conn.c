/* ferry server: one connection. HELLO gate, then the command loop: read a
 * frame header, check its size rule, decode, dispatch, answer. Any
 * violation closes this connection only, with a log line that says why.
 *
 * Data paths avoid copies: SET_TENSOR's payload is received straight into
 * tensor memory once its header has been validated, GET_TENSOR's answer is
 * sent straight from it in one gathered send. The engine mutex is held only
 * while a graph computes; no I/O ever happens under a server-wide lock. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>

#include "ferry/log.h"
#include "proto/rpc.h"
#include "server/buffers.h"
#include "server/internal.h"

#define N_DEVICES 1 /* one CPU device */

struct conn_state {
    struct ferry_server *s;
    struct server_conn *sc;
    struct ferry_conn *c;
    struct buffer_table buffers;
    struct ferry_rpc_graph *last_graph; /* for GRAPH_RECOMPUTE, with its plan */
    struct ferry_engine_plan *last_plan;
    uint64_t commands, compute_ns, graphs;
    uint64_t counted_in, counted_out; /* transport bytes already added to server stats */
    bool hung_up; /* the client closed between requests: the normal end */
    bool idled_out; /* idle_timeout_ms passed between requests */
    bool errors;  /* the client asked for error replies (docs/protocol-extensions.md) */
    bool reg_warned; /* a buffer could not be registered for RDMA (said once) */
    /* the last SET_TENSOR_HASH that missed: a SET_TENSOR of exactly that
     * region next is what the client wants cached (server/cache.h) */
    struct {
        bool valid;
        void *host; /* where the probed region starts */
        uint64_t hash;
    } probe;
};

static void account(struct conn_state *st) {
    const struct ferry_conn_stats *cs = ferry_conn_stats(st->c);
    atomic_fetch_add(&st->s->bytes_in, cs->bytes_in - st->counted_in);
    atomic_fetch_add(&st->s->bytes_out, cs->bytes_out - st->counted_out);
    st->counted_in = cs->bytes_in;
    st->counted_out = cs->bytes_out;
}

/* One response: the 8-byte length and the payload, gathered into one write. */
static int respond(struct conn_state *st, const void *p, size_t n, struct ferry_error *err) {
    uint8_t len[FERRY_RPC_RSP_HEADER_SIZE];
    ferry_put_le64(len, n);
    struct iovec hdr = { len, sizeof len };
    struct iovec body = { (void *)p, n };
    return ferry_conn_send(st->c, &hdr, 1, &body, n ? 1 : 0, err);
}

static int respond_u64(struct conn_state *st, uint64_t v, struct ferry_error *err) {
    uint8_t b[8];
    ferry_rpc_encode_u64_rsp(v, b);
    return respond(st, b, sizeof b, err);
}

static int check_device(uint32_t device, struct ferry_error *err) {
    if (device >= N_DEVICES)
        return ferry_fail(err, FERRY_ERR_INVALID, "device %u out of range (%d device)", device, N_DEVICES);
    return FERRY_OK;
}

/* The stored graph and its plan go together: a plan points into the graph. */
static void forget_graph(struct conn_state *st) {
    ferry_engine_plan_free(st->last_plan);
    ferry_rpc_graph_free(st->last_graph);
    st->last_plan = NULL;
    st->last_graph = NULL;
}

static int compute(struct conn_state *st, const struct ferry_engine_plan *plan, struct ferry_error *err) {
    struct ferry_server *s = st->s;
    pthread_mutex_lock(&s->engine_lock);
    uint64_t t0 = server_now_ns();
    int rc = ferry_engine_run(s->engine, plan, err);
    uint64_t dt = server_now_ns() - t0;
    pthread_mutex_unlock(&s->engine_lock);
    st->compute_ns += dt;
    st->graphs++;
    atomic_fetch_add(&s->compute_ns, dt);
    atomic_fetch_add(&s->graphs_computed, 1);
    return rc;
}

/* Large buffers are registered with the transport once, here, so RDMA can
 * WRITE tensor data straight into them (a no-op on TCP and with ggml
 * peers). Failing that (e.g. the memlock limit) costs only speed: their
 * payloads then come as SENDs. */
#define REG_MIN (1u << 20)
static void register_buffer(struct conn_state *st, struct srv_buffer *b) {
    if (b->size < REG_MIN) return;
    struct ferry_error e;
    if (ferry_conn_reg_mem(st->c, b->mem, (size_t)b->size, &b->reg, &e) != FERRY_OK && !st->reg_warned) {
        st->reg_warned = true;
        ferry_log_warn("%s: buffer of %" PRIu64 " bytes not registered for RDMA WRITE (%s); its data goes by SEND",
                       ferry_conn_peer(st->c), b->size, e.msg);
    }
}

static int do_alloc_buffer(struct conn_state *st, const struct ferry_rpc_alloc_buffer *r,
                           struct ferry_error *err) {
    int rc = check_device(r->device, err);
    if (rc) return rc;
    struct ferry_rpc_alloc_buffer_rsp rsp = { 0, 0 };
    if (!server_mem_reserve(st->s, r->size)) {
        ferry_log_info("%s: ALLOC_BUFFER of %" PRIu64 " bytes over the memory limit", ferry_conn_peer(st->c),
                       r->size);
    } else {
        struct srv_buffer *b = buffers_alloc(&st->buffers, r->size);
        if (b == NULL) {
            server_mem_release(st->s, r->size);
            ferry_log_warn("%s: ALLOC_BUFFER of %" PRIu64 " bytes failed: out of memory",
                           ferry_conn_peer(st->c), r->size);
        } else {
            rsp.remote_ptr = b->handle;
            rsp.remote_size = b->size;
            atomic_fetch_add(&st->s->buffers_open, 1);
            atomic_fetch_add(&st->sc->n_buffers, 1);
            register_buffer(st, b);
        }
    }
    uint8_t out[16];
    ferry_rpc_encode_alloc_buffer_rsp(&rsp, out);
    return respond(st, out, sizeof out, err);
}

static struct srv_buffer *known_buffer(struct conn_state *st, uint64_t handle, struct ferry_error *err) {
    struct srv_buffer *b = buffers_find(&st->buffers, handle);
    if (b == NULL)
        ferry_fail(err, FERRY_ERR_INVALID, "unknown buffer handle %#llx", (unsigned long long)handle);
    return b;
}

static int do_free_buffer(struct conn_state *st, uint64_t handle, struct ferry_error *err) {
    uint64_t size;
    struct srv_buffer *b = buffers_find(&st->buffers, handle);
    if (b && b->reg) ferry_conn_unreg_mem(st->c, b->reg);
    if (!buffers_free(&st->buffers, handle, &size))
        return ferry_fail(err, FERRY_ERR_INVALID, "FREE_BUFFER of unknown handle %#llx",
                          (unsigned long long)handle);
    server_mem_release(st->s, size);
    atomic_fetch_sub(&st->s->buffers_open, 1);
    atomic_fetch_sub(&st->sc->n_buffers, 1);
    /* the stored graph points into that memory: it can never run again */
    if (st->last_graph && ferry_rpc_graph_uses_buffer(st->last_graph, handle)) forget_graph(st);
    return respond(st, NULL, 0, err);
}

static int do_set_tensor(struct conn_state *st, uint64_t size, struct ferry_error *err) {
    uint8_t hdr[FERRY_RPC_SET_TENSOR_HEADER_SIZE];
    int rc = ferry_conn_recv_payload(st->c, hdr, sizeof hdr, err);
    if (rc) return rc;
    struct ferry_rpc_request req;
    rc = ferry_rpc_decode_request(FERRY_RPC_CMD_SET_TENSOR, hdr, sizeof hdr, &req, err);
    if (rc) return rc;
    uint64_t n = size - FERRY_RPC_SET_TENSOR_HEADER_SIZE;
    void *host = NULL;
    rc = ferry_rpc_resolve_region(&req.u.set_tensor.tensor, req.u.set_tensor.offset, n, buffers_resolve,
                                  &st->buffers, &host, err);
    if (rc) return rc;
    rc = ferry_conn_recv_payload(st->c, host, (size_t)n, err); /* straight into the tensor */
    if (rc) return rc;
    /* the bytes a missed probe asked for: copied to the cache's writer,
     * which checks their hash and writes them off this thread */
    if (st->s->cache && st->probe.valid && st->probe.host == host)
        ferry_cache_store_async(st->s->cache, st->probe.hash, host, n);
    st->probe.valid = false;
    return FERRY_OK;
}

static int do_set_tensor_hash(struct conn_state *st, const struct ferry_rpc_set_tensor_hash *r,
                              struct ferry_error *err) {
    uint8_t result = 0;
    /* the server's own model files first: no payload, no cache file */
    struct ferry_local_weights *local = st->s->local;
    int64_t local_size = local ? ferry_local_weights_lookup(local, r->hash) : -1;
    if (local_size >= 0) {
        void *host = NULL;
        int rc = ferry_rpc_resolve_region(&r->tensor, r->offset, (uint64_t)local_size, buffers_resolve,
                                          &st->buffers, &host, err);
        if (rc) return rc;
        result = ferry_local_weights_load(local, r->hash, host, (uint64_t)local_size) == FERRY_OK;
    }
    struct ferry_cache *cache = result ? NULL : st->s->cache;
    if (cache) {
        int64_t n = ferry_cache_lookup(cache, r->hash);
        if (n < 0) {
            ferry_cache_note_miss(cache);
        } else {
            void *host = NULL;
            int rc = ferry_rpc_resolve_region(&r->tensor, r->offset, (uint64_t)n, buffers_resolve,
                                              &st->buffers, &host, err);
            if (rc) return rc;
            result = ferry_cache_load(cache, r->hash, host, (uint64_t)n) == FERRY_OK;
        }
    }
    st->probe.valid = false;
    if (!result && cache) {
        /* remember the region the client will send next: the probe's
         * extent must itself be valid (the SET_TENSOR that follows is
         * checked again on its own) */
        struct ferry_tensor t;
        size_t size = 0;
        void *host = NULL;
        struct ferry_error ignored;
        if (ferry_rpc_tensor_describe(&r->tensor, &t, &size, &ignored) == FERRY_OK && size > r->offset &&
            ferry_rpc_resolve_region(&r->tensor, r->offset, size - r->offset, buffers_resolve, &st->buffers, &host,
                                     &ignored) == FERRY_OK) {
            st->probe.valid = true;
            st->probe.host = host;
            st->probe.hash = r->hash;
        }
    }
    return respond(st, &result, 1, err);
}

static int do_get_tensor(struct conn_state *st, const struct ferry_rpc_get_tensor *r,
                         struct ferry_error *err) {
    void *host = NULL;
    int rc = ferry_rpc_resolve_region(&r->tensor, r->offset, r->size, buffers_resolve, &st->buffers,
                                      &host, err);
    if (rc) return rc;
    return respond(st, host, (size_t)r->size, err); /* straight from tensor memory */
}

static int do_copy_tensor(struct conn_state *st, const struct ferry_rpc_copy_tensor *r,
                          struct ferry_error *err) {
    if (r->src.buffer == 0 || r->dst.buffer == 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "COPY_TENSOR needs both tensors in buffers");
    struct ferry_tensor src, dst;
    size_t src_bytes, dst_bytes;
    int rc = ferry_rpc_tensor_resolve(&r->src, buffers_resolve, &st->buffers, &src, &src_bytes, err);
    if (rc) return rc;
    rc = ferry_rpc_tensor_resolve(&r->dst, buffers_resolve, &st->buffers, &dst, &dst_bytes, err);
    if (rc) return rc;
    void *to = NULL;
    rc = buffers_resolve(&st->buffers, r->dst.buffer, r->dst.data, src_bytes, &to, err);
    if (rc) return rc;
    if (src_bytes > 0) memmove(to, src.data, src_bytes); /* the two may overlap */
    uint8_t result = 1;
    return respond(st, &result, 1, err);
}

static int do_memset_tensor(struct conn_state *st, const struct ferry_rpc_memset_tensor *r,
                            struct ferry_error *err) {
    void *host = NULL;
    int rc = ferry_rpc_resolve_region(&r->tensor, r->offset, r->size, buffers_resolve, &st->buffers,
                                      &host, err);
    if (rc) return rc;
    if (r->size > 0) memset(host, r->value, (size_t)r->size);
    return respond(st, NULL, 0, err);
}

static int do_graph_compute(struct conn_state *st, uint64_t size, struct ferry_error *err) {
    if (size > FERRY_SERVER_MAX_GRAPH_PAYLOAD)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "GRAPH_COMPUTE payload of %" PRIu64 " bytes (max %llu)",
                          size, (unsigned long long)FERRY_SERVER_MAX_GRAPH_PAYLOAD);
    /* Memory grows with the bytes that actually arrive (doubling from 1 MiB),
     * so a header that announces a huge graph and sends nothing costs little. */
    size_t cap = size < (1u << 20) ? (size_t)size : (1u << 20), got = 0;
    uint8_t *p = malloc(cap ? cap : 1);
    if (p == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "no memory for a %" PRIu64 "-byte graph", size);
    int rc = FERRY_OK;
    while (rc == FERRY_OK && got < size) {
        if (got == cap) {
            size_t next = cap * 2 < size ? cap * 2 : (size_t)size;
            uint8_t *q = realloc(p, next);
            if (q == NULL) {
                rc = ferry_fail(err, FERRY_ERR_NOMEM, "no memory for a %" PRIu64 "-byte graph", size);
                break;
            }
            p = q;
            cap = next;
        }
        rc = ferry_conn_recv_payload(st->c, p + got, cap - got, err);
        if (rc == FERRY_OK) got = cap;
    }
    struct ferry_rpc_graph *g = NULL;
    if (rc == FERRY_OK)
        rc = ferry_rpc_graph_decode(p, (size_t)size, N_DEVICES, buffers_resolve, &st->buffers, &g, err);
    free(p);
    if (rc) return rc;
    /* checked once here, outside the engine lock; GRAPH_RECOMPUTE reuses the plan */
    struct ferry_engine_plan *plan = NULL;
    rc = ferry_engine_plan(st->s->engine, g->nodes, (int)g->n_nodes, &plan, err);
    if (rc) {
        ferry_rpc_graph_free(g);
        if (err) {
            char reason[sizeof err->msg];
            memcpy(reason, err->msg, sizeof reason);
            ferry_fail(err, rc, "GRAPH_COMPUTE: %s", reason);
        }
        return rc;
    }
    forget_graph(st);
    st->last_graph = g;
    st->last_plan = plan;
    return compute(st, plan, err);
}

static int do_graph_recompute(struct conn_state *st, uint32_t device, struct ferry_error *err) {
    int rc = check_device(device, err);
    if (rc) return rc;
    if (st->last_graph == NULL)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "GRAPH_RECOMPUTE without a stored graph (none computed, or a buffer it used was freed)");
    return compute(st, st->last_plan, err);
}

static int do_device_memory(struct conn_state *st, uint32_t device, struct ferry_error *err) {
    int rc = check_device(device, err);
    if (rc) return rc;
    uint64_t limit = st->s->cfg.mem_limit, used = atomic_load(&st->s->bytes_allocated);
    struct ferry_rpc_device_memory m = { used < limit ? limit - used : 0, limit };
    uint8_t out[16];
    ferry_rpc_encode_device_memory(&m, out);
    return respond(st, out, sizeof out, err);
}

/* ferry's extension (docs/protocol-extensions.md): the server's counters. */
static int do_ferry_stats(struct conn_state *st, struct ferry_error *err) {
    account(st); /* bring this connection's bytes into the totals */
    struct ferry_server_stats s;
    ferry_server_get_stats(st->s, &s);
    struct ferry_rpc_ferry_stats r = { s.cpu_user_ns, s.cpu_sys_ns, s.commands,
                                       s.bytes_in,    s.bytes_out,  s.compute_ns };
    uint8_t out[FERRY_RPC_FERRY_STATS_RSP_SIZE];
    ferry_rpc_encode_ferry_stats(&r, out);
    return respond(st, out, sizeof out, err);
}

/* ferry's extension: a tensor filled from the server's own copy of the
 * client's model file (docs/protocol-extensions.md). Only a whole indexed
 * tensor, into a destination whose extent the resolver accepts; 0 when the
 * server holds no such tensor. */
static int do_load_local(struct conn_state *st, const struct ferry_rpc_load_local *r, struct ferry_error *err) {
    uint8_t result = 0;
    if (st->s->local) {
        struct ferry_tensor t;
        size_t n = 0;
        int rc = ferry_rpc_tensor_describe(&r->tensor, &t, &n, err);
        if (rc) return rc;
        void *host = NULL;
        rc = ferry_rpc_resolve_region(&r->tensor, 0, n, buffers_resolve, &st->buffers, &host, err);
        if (rc) return rc;
        /* a plain anonymous mapping can take the file's pages instead of a
         * copy; memory registered for RDMA must keep its own pages */
        const struct srv_buffer *b = buffers_find(&st->buffers, r->tensor.buffer);
        result = (b && b->mapped && !b->reg
                      ? ferry_local_weights_map_at(st->s->local, r->key, r->file_offset, host, n)
                      : ferry_local_weights_load_at(st->s->local, r->key, r->file_offset, host, n)) == FERRY_OK;
    }
    return respond(st, &result, 1, err);
}

/* Fixed-size commands: the payload is already in `p`. */
static int dispatch_fixed(struct conn_state *st, uint8_t cmd, const uint8_t *p, size_t len,
                          struct ferry_error *err) {
    struct ferry_rpc_request req;
    int rc = ferry_rpc_decode_request(cmd, p, len, &req, err);
    if (rc) return rc;
    struct srv_buffer *b;
    switch (cmd) {
    case FERRY_RPC_CMD_ALLOC_BUFFER: return do_alloc_buffer(st, &req.u.alloc_buffer, err);
    case FERRY_RPC_CMD_GET_ALIGNMENT:
        if ((rc = check_device(req.u.device, err))) return rc;
        return respond_u64(st, FERRY_BUFFER_ALIGNMENT, err);
    case FERRY_RPC_CMD_GET_MAX_SIZE:
        /* the memory limit: no single buffer can be larger (ggml's CPU says SIZE_MAX) */
        if ((rc = check_device(req.u.device, err))) return rc;
        return respond_u64(st, st->s->cfg.mem_limit, err);
    case FERRY_RPC_CMD_BUFFER_GET_BASE:
        if ((b = known_buffer(st, req.u.buffer, err)) == NULL) return err->code;
        return respond_u64(st, b->base, err);
    case FERRY_RPC_CMD_FREE_BUFFER: return do_free_buffer(st, req.u.buffer, err);
    case FERRY_RPC_CMD_BUFFER_CLEAR:
        if ((b = known_buffer(st, req.u.buffer_clear.buffer, err)) == NULL) return err->code;
        if (b->size > 0) memset(b->mem, req.u.buffer_clear.value, (size_t)b->size);
        return respond(st, NULL, 0, err);
    case FERRY_RPC_CMD_SET_TENSOR_HASH: return do_set_tensor_hash(st, &req.u.set_tensor_hash, err);
    case FERRY_RPC_CMD_GET_TENSOR: return do_get_tensor(st, &req.u.get_tensor, err);
    case FERRY_RPC_CMD_COPY_TENSOR: return do_copy_tensor(st, &req.u.copy_tensor, err);
    case FERRY_RPC_CMD_GET_DEVICE_MEMORY: return do_device_memory(st, req.u.device, err);
    case FERRY_RPC_CMD_INIT_TENSOR: {
        struct ferry_tensor t;
        size_t nbytes;
        rc = ferry_rpc_tensor_resolve(&req.u.init_tensor, buffers_resolve, &st->buffers, &t, &nbytes, err);
        if (rc) return rc;
        return respond(st, NULL, 0, err); /* CPU tensors need no initialization */
    }
    case FERRY_RPC_CMD_GET_ALLOC_SIZE: {
        if ((rc = check_device(req.u.get_alloc_size.device, err))) return rc;
        struct ferry_tensor t;
        size_t nbytes;
        rc = ferry_rpc_tensor_describe(&req.u.get_alloc_size.tensor, &t, &nbytes, err);
        if (rc) return rc;
        return respond_u64(st, nbytes, err); /* CPU buffers need no padding */
    }
    case FERRY_RPC_CMD_HELLO: return ferry_fail(err, FERRY_ERR_PROTOCOL, "repeated HELLO");
    case FERRY_RPC_CMD_DEVICE_COUNT: {
        uint8_t out[4];
        ferry_rpc_encode_u32_rsp(N_DEVICES, out);
        return respond(st, out, sizeof out, err);
    }
    case FERRY_RPC_CMD_GRAPH_RECOMPUTE: return do_graph_recompute(st, req.u.device, err);
    case FERRY_RPC_CMD_MEMSET_TENSOR: return do_memset_tensor(st, &req.u.memset_tensor, err);
    case FERRY_RPC_CMD_FERRY_STATS: return do_ferry_stats(st, err);
    case FERRY_RPC_CMD_FERRY_LOAD_LOCAL: return do_load_local(st, &req.u.load_local, err);
    default: return ferry_fail(err, FERRY_ERR_PROTOCOL, "unknown command %u", cmd);
    }
}

/* One request; FERRY_OK to go on, anything else closes the connection. */
static int serve_one(struct conn_state *st, struct ferry_error *err) {
    uint8_t hdr[FERRY_RPC_FRAME_HEADER_SIZE];
    uint64_t in0 = ferry_conn_stats(st->c)->bytes_in;
    /* only a connection holding nothing may be closed for idleness: one
     * holding buffers (a model between requests) waits as long as it likes */
    struct ferry_server_config *cfg = &st->s->cfg;
    int idle = atomic_load(&st->sc->n_buffers) == 0 ? cfg->idle_timeout_ms : 0;
    ferry_conn_set_timeouts(st->c, (struct ferry_conn_timeouts){ idle, cfg->frame_timeout_ms });
    int rc = ferry_conn_recv_header(st->c, hdr, sizeof hdr, err);
    if (rc) {
        bool nothing = ferry_conn_stats(st->c)->bytes_in == in0;
        st->hung_up = rc == FERRY_ERR_CLOSED && nothing;
        st->idled_out = rc == FERRY_ERR_TIMEOUT && nothing;
        if (st->idled_out)
            ferry_fail(err, rc, "idle for %d ms holding no buffers (idle timeout)", cfg->idle_timeout_ms);
        return rc;
    }
    atomic_store(&st->sc->busy, true); /* until the answer is out: not to be evicted */
    uint8_t cmd;
    uint64_t size;
    ferry_rpc_decode_frame_header(hdr, &cmd, &size);
    if ((cmd == FERRY_RPC_CMD_FERRY_STATS || cmd == FERRY_RPC_CMD_FERRY_LOAD_LOCAL) &&
        st->s->cfg.no_ferry_ext) /* as ggml would */
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "unknown command %u", cmd);
    rc = ferry_rpc_check_request_size(cmd, size, st->s->cfg.max_payload, err);
    if (rc) return rc;
    st->commands++;
    atomic_fetch_add(&st->s->commands, 1);
    ferry_log_debug("%s: %s (%" PRIu64 " bytes)", ferry_conn_peer(st->c), ferry_rpc_cmd_name(cmd), size);
    switch (cmd) {
    case FERRY_RPC_CMD_SET_TENSOR: return do_set_tensor(st, size, err);
    case FERRY_RPC_CMD_GRAPH_COMPUTE: return do_graph_compute(st, size, err);
    default: {
        uint8_t p[FERRY_RPC_GET_ALLOC_SIZE_SIZE]; /* the largest fixed request */
        if (size > sizeof p) return ferry_fail(err, FERRY_ERR_PROTOCOL, "request too large");
        rc = ferry_conn_recv_payload(st->c, p, (size_t)size, err);
        if (rc) return rc;
        return dispatch_fixed(st, cmd, p, (size_t)size, err);
    }
    }
}

/* The gate: the first frame must be HELLO with exactly 24 bytes of caps. */
static int hello(struct conn_state *st, struct ferry_error *err) {
    struct ferry_server_config *cfg = &st->s->cfg;
    ferry_conn_set_timeouts(st->c, (struct ferry_conn_timeouts){ cfg->hello_timeout_ms, cfg->frame_timeout_ms });
    uint8_t hdr[FERRY_RPC_FRAME_HEADER_SIZE];
    int rc = ferry_conn_recv_header(st->c, hdr, sizeof hdr, err);
    if (rc) {
        st->hung_up = rc == FERRY_ERR_CLOSED && ferry_conn_stats(st->c)->bytes_in == 0;
        return rc;
    }
    uint8_t cmd;
    uint64_t size;
    ferry_rpc_decode_frame_header(hdr, &cmd, &size);
    if (cmd != FERRY_RPC_CMD_HELLO)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "expected HELLO first, got command %u (%s)", cmd,
                          ferry_rpc_cmd_name(cmd));
    if (size != FERRY_RPC_CONN_CAPS_SIZE)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "HELLO of %" PRIu64 " bytes (expected %d): client too old?",
                          size, FERRY_RPC_CONN_CAPS_SIZE);
    uint8_t caps[FERRY_RPC_CONN_CAPS_SIZE];
    rc = ferry_conn_recv_payload(st->c, caps, sizeof caps, err);
    if (rc) return rc;
    st->errors = !cfg->no_ferry_ext && (ferry_rpc_caps_features(caps) & FERRY_RPC_CAPS_FEAT_ERRORS);
    st->commands++;
    atomic_fetch_add(&st->s->commands, 1);
    rc = ferry_conn_peer_caps(st->c, caps, sizeof caps, err);
    if (rc) return rc;
    /* our caps: the transport's bytes if it has an upgrade to offer, else zeros */
    uint8_t local[FERRY_RPC_CONN_CAPS_SIZE] = { 0 };
    size_t local_len = 0;
    rc = ferry_conn_local_caps(st->c, local, sizeof local, &local_len, err);
    if (rc) return rc;
    struct ferry_rpc_request req;
    struct ferry_rpc_hello_rsp rsp;
    rc = ferry_rpc_decode_request(FERRY_RPC_CMD_HELLO, local, sizeof local, &req, err);
    if (rc) return rc;
    ferry_rpc_hello_rsp_init(&rsp, &req.u.hello);
    /* byte 3, which ggml clients ignore: ferry's extensions, and when the
     * client offered RDMA: either that ferry's RDMA framing is on offer, or
     * why RDMA was refused */
    struct ferry_rpc_request client;
    if ((rc = ferry_rpc_decode_request(FERRY_RPC_CMD_HELLO, caps, sizeof caps, &client, err))) return rc;
    struct ferry_rpc_hello_ext ext = { 0 };
    if (!cfg->no_ferry_ext) {
        ext.ferry = true;
        ext.errors = st->errors;
        ext.rdma_ext = rsp.caps.qpn != 0;
        if (!ext.rdma_ext && client.u.hello.qpn != 0) ext.refusal = ferry_conn_rdma_refusal(st->c);
        ext.local = st->s->local != NULL;
    }
    rsp.flags = ferry_rpc_hello_flags(&ext);
    uint8_t out[FERRY_RPC_HELLO_RSP_SIZE];
    ferry_rpc_encode_hello_rsp(&rsp, out);
    rc = respond(st, out, sizeof out, err);
    if (rc) return rc;
    rc = ferry_conn_confirm(st->c, ext.rdma_ext, err);
    if (rc) return rc;
    char line[512];
    ferry_conn_describe(st->c, line, sizeof line);
    ferry_log(strcmp(ferry_conn_transport(st->c), "tcp") ? FERRY_LOG_INFO : FERRY_LOG_DEBUG, "%s: transport %s",
              ferry_conn_peer(st->c), line);
    return FERRY_OK;
}

/* Tells a client that asked for error replies why its connection ends
 * (docs/protocol-extensions.md), then lets the reply reach it: shutting
 * the sending side sends it with a FIN, and reading what the client still
 * sends (briefly, bounded) keeps the close from turning into a reset that
 * would discard the reply on its side. */
static void say_why(struct conn_state *st, uint32_t code, const char *reason) {
    uint8_t out[FERRY_RPC_ERROR_HEADER_SIZE + FERRY_RPC_ERROR_MAX_REASON];
    size_t n = ferry_rpc_encode_error(code, reason, out, sizeof out);
    struct iovec v = { out, n };
    struct ferry_error e;
    int frame = st->s->cfg.frame_timeout_ms > 0 && st->s->cfg.frame_timeout_ms < 2000 ? st->s->cfg.frame_timeout_ms
                                                                                        : 2000;
    ferry_conn_set_timeouts(st->c, (struct ferry_conn_timeouts){ frame, frame });
    if (ferry_conn_send(st->c, &v, 1, NULL, 0, &e) != FERRY_OK) return;
    int fd = ferry_conn_fd(st->c);
    shutdown(fd, SHUT_WR);
    int64_t until = ferry_transport_now_ms() + 200;
    size_t drained = 0;
    char scratch[16384];
    while (drained < (4u << 20)) {
        int64_t left = until - ferry_transport_now_ms();
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) break;
        ssize_t got = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (got <= 0) break;
        drained += (size_t)got;
    }
}

/* The error reply for how the connection ends, if it gets one: not when
 * the client left, nor when the stream broke mid-frame. */
static bool reply_for(const struct conn_state *st, int rc, bool evicted, uint32_t *code) {
    if (evicted) return *code = FERRY_RPC_ERROR_EVICTED, true;
    if (st->idled_out) return *code = FERRY_RPC_ERROR_TIMEOUT, true;
    *code = FERRY_RPC_ERROR_REQUEST;
    return rc == FERRY_ERR_INVALID || rc == FERRY_ERR_PROTOCOL || rc == FERRY_ERR_UNSUPPORTED ||
           rc == FERRY_ERR_NOMEM;
}

void *server_conn_main(void *arg) {
    struct server_conn *sc = arg;
    struct ferry_server *s = sc->server;
    struct conn_state st = { .s = s, .sc = sc, .c = sc->conn };
    buffers_init(&st.buffers);
    char peer[FERRY_CONN_ADDR_MAX];
    snprintf(peer, sizeof peer, "%s", ferry_conn_peer(sc->conn));
    ferry_log_info("accepted %s", peer);
    uint64_t t0 = server_now_ns();

    struct ferry_error err;
    ferry_error_clear(&err);
    int rc = hello(&st, &err);
    while (rc == FERRY_OK && !atomic_load(&s->stopping)) {
        atomic_store(&sc->idle_since_ns, server_now_ns());
        atomic_store(&sc->busy, false);
        rc = serve_one(&st, &err);
        account(&st);
    }
    account(&st);
    /* a client hanging up between requests is the normal end; so is making
     * room for another client (the accept loop said so in the log) */
    bool evicted = atomic_load(&sc->evicted);
    bool clean = st.hung_up && !evicted;
    bool stopped = atomic_load(&s->stopping);
    if (!clean && !stopped && !evicted) atomic_fetch_add(&s->conns_dropped, 1);
    if (st.idled_out) atomic_fetch_add(&s->conns_idle_closed, 1);
    if (evicted) ferry_fail(&err, FERRY_ERR_CLOSED, "evicted: idle while the server was full");
    uint32_t code;
    if (st.errors && !stopped && !clean && reply_for(&st, rc, evicted, &code)) say_why(&st, code, err.msg);

    pthread_mutex_lock(&s->conns_lock);
    sc->closing = true; /* stop will not touch the socket any more */
    pthread_mutex_unlock(&s->conns_lock);
    char counters[384]; /* for the summary */
    ferry_conn_describe_counters(sc->conn, counters, sizeof counters);
    ferry_conn_close(sc->conn);
    sc->conn = NULL;

    forget_graph(&st);
    size_t n_buffers = st.buffers.n;
    uint64_t freed = buffers_destroy(&st.buffers);
    server_mem_release(s, freed);
    atomic_fetch_sub(&s->buffers_open, n_buffers);

    double secs = (double)(server_now_ns() - t0) / 1e9;
    const char *why = clean ? "client closed" : stopped ? "server stopping" : err.msg;
    ferry_log(clean || stopped || evicted ? FERRY_LOG_INFO : FERRY_LOG_WARN,
              "closed %s (%s): %" PRIu64 " commands, %" PRIu64 " bytes in, %" PRIu64
              " bytes out, %" PRIu64 " graphs in %.1f ms, %zu buffers (%" PRIu64 " bytes) freed, %.2f s%s",
              peer, why, st.commands, st.counted_in, st.counted_out, st.graphs,
              (double)st.compute_ns / 1e6, n_buffers, freed, secs, counters);

    atomic_fetch_sub(&s->conns_open, 1);
    server_release(s, sc);
    pthread_mutex_lock(&s->conns_lock);
    sc->finished = true;
    pthread_mutex_unlock(&s->conns_lock);
    return NULL;
}
