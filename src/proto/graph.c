/* The GRAPH_COMPUTE payload (docs/rpc-protocol.md section 6).
 *
 *   device u32 | n_nodes u32 | node ids u64[n_nodes] | n_tensors u32 | rpc_tensor[n_tensors]
 *
 * Server side, everything is validated before the graph can run: a hostile
 * client controls every byte, so lengths are overflow-checked, ids must
 * resolve, cycles are found with an explicit stack (no recursion a client
 * could make deep), and every extent goes through the server's resolver.
 * Client side, the payload is built the way ggml's client builds it. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "proto/rpc.h"

int ferry_rpc_graph_parse_header(const uint8_t *p, size_t len, struct ferry_rpc_graph_header *h,
                                 struct ferry_error *err) {
    memset(h, 0, sizeof *h);
    if (len < FERRY_RPC_GRAPH_MIN_SIZE)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "GRAPH_COMPUTE: %zu bytes, need at least 8", len);
    h->device = ferry_get_le32(p);
    h->n_nodes = ferry_get_le32(p + 4);
    h->nodes_offset = 8;
    size_t node_bytes, count_at;
    if (__builtin_mul_overflow((size_t)h->n_nodes, (size_t)8, &node_bytes) ||
        __builtin_add_overflow((size_t)8, node_bytes, &count_at) || count_at > len ||
        len - count_at < 4)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "GRAPH_COMPUTE: %u node ids do not fit in %zu bytes",
                          h->n_nodes, len);
    h->n_tensors = ferry_get_le32(p + count_at);
    h->tensors_offset = count_at + 4;
    size_t tensor_bytes;
    if (__builtin_mul_overflow((size_t)h->n_tensors, (size_t)FERRY_RPC_TENSOR_SIZE, &tensor_bytes) ||
        tensor_bytes > len - h->tensors_offset)
        return ferry_fail(err, FERRY_ERR_PROTOCOL,
                          "GRAPH_COMPUTE: %u tensor records do not fit in %zu bytes", h->n_tensors, len);
    return FERRY_OK;
}

/* ---- server side: decode ------------------------------------------------------- */

struct id_slot {
    uint64_t id;
    uint32_t index;
};

/* What decoding needs per record besides the ferry tensor. */
struct record_info {
    uint64_t buffer;
    uint64_t data;
};

struct decoder {
    const uint8_t *records;
    struct ferry_rpc_graph *g;
    struct record_info *info;
    struct id_slot *by_id; /* sorted by id */
};

static const uint8_t *record_at(const struct decoder *d, uint32_t i) {
    return d->records + (size_t)i * FERRY_RPC_TENSOR_SIZE;
}

static bool is_custom_op(uint32_t op) {
    return op >= FERRY_OP_MAP_CUSTOM1 && op <= FERRY_OP_CUSTOM;
}

/* Prefixes the reason already in err with where it happened. */
static int fail_at(struct ferry_error *err, int code, const char *where, uint32_t i) {
    if (!err) return code;
    char reason[sizeof err->msg];
    memcpy(reason, err->msg, sizeof reason);
    return ferry_fail(err, code, "GRAPH_COMPUTE: %s %u: %s", where, i, reason);
}

static int decode_record(struct decoder *d, uint32_t i, ferry_rpc_resolve_fn resolve, void *ctx,
                         struct ferry_error *err) {
    struct ferry_rpc_tensor r;
    ferry_rpc_tensor_decode(record_at(d, i), &r);
    if (r.id == 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: record %u has id 0", i);
    if (r.op >= FERRY_OP_COUNT)
        return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: record %u has unknown op %u", i, r.op);
    if (is_custom_op(r.op))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "GRAPH_COMPUTE: record %u is %s, which carries client function pointers",
                          i, ferry_op_name((int)r.op));
    struct ferry_tensor *t = &d->g->tensors[i];
    size_t nbytes;
    int rc = ferry_rpc_tensor_resolve(&r, resolve, ctx, t, &nbytes, err);
    if (rc) return fail_at(err, rc, "record", i);
    /* every tensor of a graph, not only the ones nodes read: simpler, and
     * honest clients allocate with the server's alignment anyway */
    rc = ferry_rpc_check_alignment(t, err);
    if (rc) return fail_at(err, rc, "record", i);
    d->g->ids[i] = r.id;
    d->g->use_count[i] = r.use_count;
    d->info[i].buffer = r.buffer;
    d->info[i].data = r.data;
    return FERRY_OK;
}

static int compare_slots(const void *a, const void *b) {
    const struct id_slot *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int build_id_index(struct decoder *d, struct ferry_error *err) {
    uint32_t n = d->g->n_tensors;
    for (uint32_t i = 0; i < n; i++) d->by_id[i] = (struct id_slot){ d->g->ids[i], i };
    qsort(d->by_id, n, sizeof *d->by_id, compare_slots);
    for (uint32_t i = 1; i < n; i++)
        if (d->by_id[i].id == d->by_id[i - 1].id)
            return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: records %u and %u share id %#llx",
                              d->by_id[i - 1].index, d->by_id[i].index,
                              (unsigned long long)d->by_id[i].id);
    return FERRY_OK;
}

/* Index of the record with this id, or -1. */
static int64_t find_id(const struct decoder *d, uint64_t id) {
    size_t lo = 0, hi = d->g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->by_id[mid].id == id) return d->by_id[mid].index;
        if (d->by_id[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* A view must live where its base says: same buffer, and data equal to
 * the base's data plus view_offs. The server computes with `data` (already
 * bounds-checked); this catches clients whose records contradict each other. */
static int check_view(const struct decoder *d, uint32_t i, uint32_t base, struct ferry_error *err) {
    const struct record_info *v = &d->info[i], *b = &d->info[base];
    if (v->buffer != b->buffer)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "GRAPH_COMPUTE: view record %u is in buffer %#llx, its base in %#llx", i,
                          (unsigned long long)v->buffer, (unsigned long long)b->buffer);
    if (v->buffer == 0) return FERRY_OK; /* neither has memory */
    uint64_t offs = d->g->tensors[i].view_offs, want;
    if (__builtin_add_overflow(b->data, offs, &want) || want != v->data)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "GRAPH_COMPUTE: view record %u has data %#llx, base data %#llx + view_offs %llu",
                          i, (unsigned long long)v->data, (unsigned long long)b->data,
                          (unsigned long long)offs);
    return FERRY_OK;
}

static int wire_sources(struct decoder *d, struct ferry_error *err) {
    struct ferry_tensor *ts = d->g->tensors;
    for (uint32_t i = 0; i < d->g->n_tensors; i++) {
        struct ferry_rpc_tensor r;
        ferry_rpc_tensor_decode(record_at(d, i), &r);
        for (int s = 0; s < FERRY_MAX_SRC; s++) {
            if (!r.src[s]) continue;
            int64_t j = find_id(d, r.src[s]);
            if (j < 0)
                return ferry_fail(err, FERRY_ERR_INVALID,
                                  "GRAPH_COMPUTE: record %u src[%d] id %#llx is not in the graph", i,
                                  s, (unsigned long long)r.src[s]);
            ts[i].src[s] = &ts[j];
        }
        if (r.view_src) {
            int64_t j = find_id(d, r.view_src);
            if (j < 0)
                return ferry_fail(err, FERRY_ERR_INVALID,
                                  "GRAPH_COMPUTE: record %u view_src id %#llx is not in the graph", i,
                                  (unsigned long long)r.view_src);
            ts[i].view_src = &ts[j];
            int rc = check_view(d, i, (uint32_t)j, err);
            if (rc) return rc;
        }
    }
    return FERRY_OK;
}

/* Edge k of tensor t: src[0..9], then view_src. */
static const struct ferry_tensor *edge(const struct ferry_tensor *t, int k) {
    return k < FERRY_MAX_SRC ? t->src[k] : t->view_src;
}

enum { WHITE, GRAY, BLACK };

/* Iterative depth-first search with colors: reaching a GRAY tensor again
 * means a cycle. The explicit stack holds each tensor at most once. */
static int check_acyclic(const struct ferry_rpc_graph *g, struct ferry_error *err) {
    uint32_t n = g->n_tensors;
    uint8_t *color = calloc(n ? n : 1, 1);
    uint32_t *stack = malloc(sizeof *stack * (n ? n : 1));
    uint8_t *next = malloc(n ? n : 1);
    int rc = FERRY_OK;
    if (!color || !stack || !next) {
        rc = ferry_fail(err, FERRY_ERR_NOMEM, "GRAPH_COMPUTE: out of memory for %u records", n);
        goto done;
    }
    for (uint32_t root = 0; root < n && !rc; root++) {
        if (color[root] != WHITE) continue;
        uint32_t sp = 0;
        stack[sp++] = root;
        color[root] = GRAY;
        next[root] = 0;
        while (sp > 0 && !rc) {
            uint32_t top = stack[sp - 1];
            if (next[top] > FERRY_MAX_SRC) {
                color[top] = BLACK;
                sp--;
                continue;
            }
            const struct ferry_tensor *c = edge(&g->tensors[top], next[top]++);
            if (!c) continue;
            uint32_t ci = (uint32_t)(c - g->tensors);
            if (color[ci] == GRAY)
                rc = ferry_fail(err, FERRY_ERR_INVALID,
                                "GRAPH_COMPUTE: cycle through record %u (id %#llx)", ci,
                                (unsigned long long)g->ids[ci]);
            else if (color[ci] == WHITE) {
                color[ci] = GRAY;
                next[ci] = 0;
                stack[sp++] = ci;
            }
        }
    }
done:
    free(color);
    free(stack);
    free(next);
    return rc;
}

static int resolve_nodes(struct decoder *d, const uint8_t *ids, struct ferry_error *err) {
    for (uint32_t i = 0; i < d->g->n_nodes; i++) {
        uint64_t id = ferry_get_le64(ids + 8 * (size_t)i);
        if (id == 0) return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: node %u has id 0", i);
        int64_t j = find_id(d, id);
        if (j < 0)
            return ferry_fail(err, FERRY_ERR_INVALID,
                              "GRAPH_COMPUTE: node %u id %#llx is not in the graph", i,
                              (unsigned long long)id);
        d->g->nodes[i] = &d->g->tensors[j];
    }
    return FERRY_OK;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int collect_buffers(struct decoder *d, struct ferry_error *err) {
    struct ferry_rpc_graph *g = d->g;
    g->buffers = malloc(sizeof *g->buffers * (g->n_tensors ? g->n_tensors : 1));
    if (!g->buffers) return ferry_fail(err, FERRY_ERR_NOMEM, "GRAPH_COMPUTE: out of memory");
    uint32_t n = 0;
    for (uint32_t i = 0; i < g->n_tensors; i++)
        if (d->info[i].buffer) g->buffers[n++] = d->info[i].buffer;
    qsort(g->buffers, n, sizeof *g->buffers, compare_u64);
    uint32_t unique = 0;
    for (uint32_t i = 0; i < n; i++)
        if (unique == 0 || g->buffers[unique - 1] != g->buffers[i]) g->buffers[unique++] = g->buffers[i];
    g->n_buffers = unique;
    return FERRY_OK;
}

static struct ferry_rpc_graph *graph_alloc(uint32_t n_tensors, uint32_t n_nodes) {
    struct ferry_rpc_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    size_t nt = n_tensors ? n_tensors : 1, nn = n_nodes ? n_nodes : 1;
    g->tensors = calloc(nt, sizeof *g->tensors);
    g->ids = calloc(nt, sizeof *g->ids);
    g->use_count = calloc(nt, sizeof *g->use_count);
    g->nodes = calloc(nn, sizeof *g->nodes);
    g->n_tensors = n_tensors;
    g->n_nodes = n_nodes;
    if (!g->tensors || !g->ids || !g->use_count || !g->nodes) {
        ferry_rpc_graph_free(g);
        return NULL;
    }
    return g;
}

int ferry_rpc_graph_decode(const uint8_t *p, size_t len, uint32_t n_devices,
                           ferry_rpc_resolve_fn resolve, void *ctx, struct ferry_rpc_graph **out,
                           struct ferry_error *err) {
    *out = NULL;
    struct ferry_rpc_graph_header h;
    int rc = ferry_rpc_graph_parse_header(p, len, &h, err);
    if (rc) return rc;
    if (h.device >= n_devices)
        return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: device %u, server has %u", h.device,
                          n_devices);
    if (h.n_nodes > INT_MAX) /* the engine counts nodes in an int */
        return ferry_fail(err, FERRY_ERR_INVALID, "GRAPH_COMPUTE: %u nodes", h.n_nodes);

    struct decoder d = { .records = p + h.tensors_offset };
    size_t nt = h.n_tensors ? h.n_tensors : 1;
    d.g = graph_alloc(h.n_tensors, h.n_nodes);
    d.info = calloc(nt, sizeof *d.info);
    d.by_id = calloc(nt, sizeof *d.by_id);
    if (!d.g || !d.info || !d.by_id) {
        rc = ferry_fail(err, FERRY_ERR_NOMEM, "GRAPH_COMPUTE: out of memory for %u records", h.n_tensors);
        goto done;
    }
    d.g->device = h.device;
    for (uint32_t i = 0; i < h.n_tensors && !rc; i++) rc = decode_record(&d, i, resolve, ctx, err);
    if (!rc) rc = build_id_index(&d, err);
    if (!rc) rc = wire_sources(&d, err);
    if (!rc) rc = check_acyclic(d.g, err);
    if (!rc) rc = resolve_nodes(&d, p + h.nodes_offset, err);
    if (!rc) rc = collect_buffers(&d, err);
done:
    free(d.info);
    free(d.by_id);
    if (rc) {
        ferry_rpc_graph_free(d.g);
        return rc;
    }
    *out = d.g;
    return FERRY_OK;
}

void ferry_rpc_graph_free(struct ferry_rpc_graph *g) {
    if (!g) return;
    free(g->tensors);
    free(g->ids);
    free(g->use_count);
    free(g->nodes);
    free(g->buffers);
    free(g);
}

bool ferry_rpc_graph_uses_buffer(const struct ferry_rpc_graph *g, uint64_t buffer) {
    if (!g || !g->buffers) return false;
    return bsearch(&buffer, g->buffers, g->n_buffers, sizeof *g->buffers, compare_u64) != NULL;
}

/* ---- client side: encode ----------------------------------------------------------- */

/* An open-addressing set of tensor pointers (dedup by pointer, as ggml). */
struct ptr_set {
    const void **slots;
    size_t cap; /* power of two */
    size_t n;
};

static size_t ptr_hash(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static bool ptr_set_grow(struct ptr_set *s) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    const void **slots = calloc(cap, sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i]) continue;
        size_t h = ptr_hash(s->slots[i], cap);
        while (slots[h]) h = (h + 1) & (cap - 1);
        slots[h] = s->slots[i];
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return true;
}

/* 1: inserted, 0: already there, -1: out of memory. */
static int ptr_set_insert(struct ptr_set *s, const void *p) {
    if ((s->n + 1) * 2 > s->cap && !ptr_set_grow(s)) return -1;
    size_t h = ptr_hash(p, s->cap);
    while (s->slots[h]) {
        if (s->slots[h] == p) return 0;
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = p;
    s->n++;
    return 1;
}

struct walk_frame {
    const struct ferry_tensor *t;
    int next; /* next edge to follow: src[0..9], then view_src */
};

struct walker {
    struct ptr_set seen;
    struct walk_frame *stack;
    size_t sp, stack_cap;
    const struct ferry_tensor **order; /* post-order: dependencies first */
    size_t n_order, order_cap;
};

/* Doubles an array's capacity; NULL (the old array intact) when out of memory. */
static void *grow_array(void *p, size_t *cap, size_t elem) {
    size_t n = *cap ? *cap * 2 : 64;
    void *q = realloc(p, n * elem);
    if (q) *cap = n;
    return q;
}

/* Pushes t if not seen yet. false: out of memory. */
static bool walk_enter(struct walker *w, const struct ferry_tensor *t) {
    int ins = ptr_set_insert(&w->seen, t);
    if (ins < 0) return false;
    if (ins == 0) return true;
    if (w->sp == w->stack_cap) {
        struct walk_frame *s = grow_array(w->stack, &w->stack_cap, sizeof *s);
        if (!s) return false;
        w->stack = s;
    }
    w->stack[w->sp++] = (struct walk_frame){ t, 0 };
    return true;
}

/* ggml's add_tensor without recursion: srcs, then view_src, then the tensor. */
static bool walk_from(struct walker *w, const struct ferry_tensor *root) {
    if (!walk_enter(w, root)) return false;
    while (w->sp > 0) {
        struct walk_frame *f = &w->stack[w->sp - 1];
        if (f->next <= FERRY_MAX_SRC) {
            const struct ferry_tensor *c = edge(f->t, f->next++);
            if (c && !walk_enter(w, c)) return false;
            continue;
        }
        if (w->n_order == w->order_cap) {
            const struct ferry_tensor **o = grow_array(w->order, &w->order_cap, sizeof *o);
            if (!o) return false;
            w->order = o;
        }
        w->order[w->n_order++] = f->t;
        w->sp--;
    }
    return true;
}

static uint64_t tensor_id(const struct ferry_rpc_graph_client *cb, const struct ferry_tensor *t) {
    if (!t) return 0;
    return cb && cb->id ? cb->id(cb->ctx, t) : (uint64_t)(uintptr_t)t;
}

static int encode_record(const struct ferry_rpc_graph_client *cb, const struct ferry_tensor *t,
                         uint8_t *out, struct ferry_error *err) {
    uint64_t buffer = 0, data = 0;
    if (cb && cb->locate) {
        int rc = cb->locate(cb->ctx, t, &buffer, &data, err);
        if (rc) return rc;
    }
    struct ferry_rpc_tensor r;
    int rc = ferry_rpc_tensor_from_ferry(t, tensor_id(cb, t), buffer, data, &r, err);
    if (rc) return rc;
    for (int s = 0; s < FERRY_MAX_SRC; s++) r.src[s] = tensor_id(cb, t->src[s]);
    r.view_src = tensor_id(cb, t->view_src);
    r.use_count = cb && cb->use_count ? cb->use_count(cb->ctx, t) : 0;
    ferry_rpc_tensor_encode(&r, out);
    return FERRY_OK;
}

int ferry_rpc_graph_encode(uint32_t device, struct ferry_tensor *const *nodes, uint32_t n_nodes,
                           const struct ferry_rpc_graph_client *cb, uint8_t **out,
                           size_t *out_len, struct ferry_error *err) {
    *out = NULL;
    *out_len = 0;
    struct walker w = { 0 };
    uint8_t *buf = NULL;
    int rc = FERRY_OK;
    for (uint32_t i = 0; i < n_nodes && !rc; i++) {
        if (!nodes[i]) rc = ferry_fail(err, FERRY_ERR_INVALID, "graph encode: node %u is NULL", i);
        else if (!walk_from(&w, nodes[i])) rc = ferry_fail(err, FERRY_ERR_NOMEM, "graph encode: out of memory");
    }
    size_t len = 0, node_bytes = 0, tensor_bytes = 0;
    if (!rc && (w.n_order > UINT32_MAX ||
                __builtin_mul_overflow((size_t)n_nodes, (size_t)8, &node_bytes) ||
                __builtin_mul_overflow(w.n_order, (size_t)FERRY_RPC_TENSOR_SIZE, &tensor_bytes) ||
                __builtin_add_overflow(node_bytes, tensor_bytes, &len) ||
                __builtin_add_overflow(len, (size_t)12, &len)))
        rc = ferry_fail(err, FERRY_ERR_INVALID, "graph encode: graph too large");
    if (!rc && !(buf = malloc(len))) rc = ferry_fail(err, FERRY_ERR_NOMEM, "graph encode: out of memory");
    if (!rc) {
        ferry_put_le32(buf, device);
        ferry_put_le32(buf + 4, n_nodes);
        for (uint32_t i = 0; i < n_nodes; i++) ferry_put_le64(buf + 8 + 8 * (size_t)i, tensor_id(cb, nodes[i]));
        uint8_t *rec = buf + 8 + node_bytes;
        ferry_put_le32(rec, (uint32_t)w.n_order);
        rec += 4;
        for (size_t i = 0; i < w.n_order && !rc; i++, rec += FERRY_RPC_TENSOR_SIZE)
            rc = encode_record(cb, w.order[i], rec, err);
    }
    free(w.seen.slots);
    free(w.stack);
    free(w.order);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = len;
    return FERRY_OK;
}
