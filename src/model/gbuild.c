/* Graph building: a fixed tensor pool and a scoped bump allocator. */
#include "model/gbuild.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gb_init(struct gbuild *g, int cap_tensors, size_t align, struct ferry_error *err) {
    memset(g, 0, sizeof *g);
    g->pool = calloc((size_t)cap_tensors, sizeof *g->pool);
    g->nodes = calloc((size_t)cap_tensors, sizeof *g->nodes);
    if (!g->pool || !g->nodes) {
        gb_free(g);
        return ferry_fail(err, FERRY_ERR_NOMEM, "graph of %d tensors: out of memory", cap_tensors);
    }
    g->cap_pool = g->cap_nodes = cap_tensors;
    g->align = align < 64 ? 64 : align;
    return FERRY_OK;
}

void gb_free(struct gbuild *g) {
    free(g->pool);
    free(g->nodes);
    g->pool = NULL;
    g->nodes = NULL;
}

void gb_begin(struct gbuild *g, uintptr_t base, void *buffer, size_t limit, bool measure) {
    memset(g->pool, 0, (size_t)g->n_pool * sizeof *g->pool); /* same bytes for the same graph */
    g->n_pool = g->n_nodes = 0;
    g->base = base;
    g->buffer = buffer;
    g->limit = measure ? SIZE_MAX : limit;
    g->measure = measure;
    g->off = g->peak = 0;
    g->failed = 0;
    g->why[0] = 0;
    g->place_next = NULL;
}

static void fail(struct gbuild *g, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(struct gbuild *g, int code, const char *fmt, ...) {
    if (g->failed) return;
    g->failed = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->why, sizeof g->why, fmt, ap);
    va_end(ap);
}

int gb_status(const struct gbuild *g, struct ferry_error *err) {
    return g->failed ? ferry_fail(err, g->failed, "%s", g->why) : FERRY_OK;
}

size_t gb_mark(const struct gbuild *g) { return g->off; }
void gb_release(struct gbuild *g, size_t mark) {
    if (mark <= g->off) g->off = mark;
}

/* A zeroed struct from the pool; a spare one absorbs calls after a failure
 * so builders need not check every step. */
static struct ferry_tensor *take(struct gbuild *g) {
    if (g->n_pool == g->cap_pool) {
        fail(g, FERRY_ERR_NOMEM, "graph needs more than %d tensors", g->cap_pool);
        static _Thread_local struct ferry_tensor spare;
        memset(&spare, 0, sizeof spare);
        return &spare;
    }
    return &g->pool[g->n_pool++];
}

static void name(struct ferry_tensor *t, const char *s) {
    if (s) snprintf(t->name, sizeof t->name, "%s", s);
}

void gb_place_next(struct gbuild *g, struct ferry_tensor *like) { g->place_next = like; }

static void alloc_data(struct gbuild *g, struct ferry_tensor *t) {
    size_t n = 0;
    if (!ferry_nbytes_checked(t, &n)) {
        fail(g, FERRY_ERR_INVALID, "tensor '%s': bad shape", t->name);
        return;
    }
    if (g->place_next) {
        struct ferry_tensor *like = g->place_next;
        g->place_next = NULL;
        if (n > ferry_nbytes(like)) fail(g, FERRY_ERR_INVALID, "'%s' does not fit its slot", t->name);
        t->data = like->data;
        t->buffer = like->buffer;
        return;
    }
    size_t at = (g->off + g->align - 1) / g->align * g->align;
    if (at < g->off || at > g->limit || n > g->limit - at) {
        fail(g, FERRY_ERR_NOMEM, "compute buffer of %zu bytes too small for '%s'", g->limit, t->name);
        return;
    }
    t->data = (void *)(g->base + at);
    t->buffer = g->buffer;
    g->off = at + n;
    if (g->off > g->peak) g->peak = g->off;
}

struct ferry_tensor *gb_new(struct gbuild *g, enum ferry_type type, int64_t ne0, int64_t ne1,
                            int64_t ne2, int64_t ne3, const char *nm) {
    struct ferry_tensor *t = take(g);
    int64_t ne[4] = { ne0, ne1, ne2, ne3 };
    ferry_tensor_init(t, type, 4, ne, NULL);
    name(t, nm);
    alloc_data(g, t);
    return t;
}

struct ferry_tensor *gb_wrap(struct gbuild *g, const struct ferry_tensor *src) {
    struct ferry_tensor *t = take(g);
    *t = *src;
    return t;
}

/* ---- views -------------------------------------------------------------------------- */

static struct ferry_tensor *view_of(struct gbuild *g, struct ferry_tensor *a, enum ferry_op op,
                                    size_t offs) {
    struct ferry_tensor *t = take(g);
    t->type = a->type;
    t->op = op;
    t->src[0] = a;
    /* view_src names the ultimate base and view_offs is cumulative, as in ggml */
    t->view_src = a->view_src ? a->view_src : a;
    t->view_offs = (a->view_src ? a->view_offs : 0) + offs;
    t->buffer = a->buffer;
    t->data = (char *)a->data + offs;
    snprintf(t->name, sizeof t->name, "%.50s (view)", a->name);
    return t;
}

struct ferry_tensor *gb_view(struct gbuild *g, struct ferry_tensor *a, int64_t ne0, int64_t ne1,
                             int64_t ne2, size_t nb1, size_t nb2, size_t offset) {
    struct ferry_tensor *t = view_of(g, a, FERRY_OP_VIEW, offset);
    t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2, t->ne[3] = 1;
    t->nb[0] = a->nb[0];
    t->nb[1] = nb1;
    t->nb[2] = nb2;
    t->nb[3] = nb2 * (size_t)ne2;
    uint64_t o = offset;
    memcpy(t->op_params, &o, sizeof o);
    return t;
}

struct ferry_tensor *gb_reshape(struct gbuild *g, struct ferry_tensor *a, int64_t ne0, int64_t ne1,
                                int64_t ne2) {
    if (!ferry_is_contiguous(a) || ne0 * ne1 * ne2 != ferry_nelements(a))
        fail(g, FERRY_ERR_INVALID, "reshape of '%s' is not possible", a->name);
    struct ferry_tensor *t = view_of(g, a, FERRY_OP_RESHAPE, 0);
    t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2, t->ne[3] = 1;
    ferry_tensor_set_contiguous(t);
    return t;
}

struct ferry_tensor *gb_permute(struct gbuild *g, struct ferry_tensor *a, int ax0, int ax1, int ax2,
                                int ax3) {
    struct ferry_tensor *t = view_of(g, a, FERRY_OP_PERMUTE, 0);
    int ax[4] = { ax0, ax1, ax2, ax3 };
    for (int i = 0; i < 4; i++) {
        t->ne[ax[i]] = a->ne[i];
        t->nb[ax[i]] = a->nb[i];
        t->op_params[i] = ax[i];
    }
    return t;
}

/* ---- ops ---------------------------------------------------------------------------- */

static struct ferry_tensor *node(struct gbuild *g, enum ferry_op op, enum ferry_type type,
                                 const int64_t ne[4], struct ferry_tensor *s0,
                                 struct ferry_tensor *s1, struct ferry_tensor *s2) {
    struct ferry_tensor *t = take(g);
    ferry_tensor_init(t, type, 4, ne, NULL);
    t->op = op;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = s0, t->src[1] = s1, t->src[2] = s2;
    snprintf(t->name, sizeof t->name, "%s-%d", ferry_op_name(op), g->n_nodes);
    alloc_data(g, t);
    if (g->n_nodes < g->cap_nodes) g->nodes[g->n_nodes++] = t;
    return t;
}

struct ferry_tensor *gb_get_rows(struct gbuild *g, struct ferry_tensor *table, struct ferry_tensor *ids) {
    int64_t ne[4] = { table->ne[0], ids->ne[0], 1, 1 };
    return node(g, FERRY_OP_GET_ROWS, FERRY_TYPE_F32, ne, table, ids, NULL);
}

struct ferry_tensor *gb_rms_norm(struct gbuild *g, struct ferry_tensor *a, float eps) {
    struct ferry_tensor *t = node(g, FERRY_OP_RMS_NORM, FERRY_TYPE_F32, a->ne, a, NULL, NULL);
    ferry_param_set_f32(t, 0, eps);
    return t;
}

struct ferry_tensor *gb_mul(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *b) {
    return node(g, FERRY_OP_MUL, FERRY_TYPE_F32, a->ne, a, b, NULL);
}

struct ferry_tensor *gb_add(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *b) {
    return node(g, FERRY_OP_ADD, FERRY_TYPE_F32, a->ne, a, b, NULL);
}

struct ferry_tensor *gb_mul_mat(struct gbuild *g, struct ferry_tensor *w, struct ferry_tensor *x) {
    if (w->ne[0] != x->ne[0])
        fail(g, FERRY_ERR_INVALID, "mul_mat: '%s' has rows of %lld, input of %lld", w->name,
             (long long)w->ne[0], (long long)x->ne[0]);
    int64_t ne[4] = { w->ne[1], x->ne[1], x->ne[2], x->ne[3] };
    return node(g, FERRY_OP_MUL_MAT, FERRY_TYPE_F32, ne, w, x, NULL);
}

struct ferry_tensor *gb_rope(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *pos,
                             struct ferry_tensor *freq_factors, int n_dims, int mode,
                             int n_ctx_orig, float freq_base, float freq_scale) {
    struct ferry_tensor *t = node(g, FERRY_OP_ROPE, FERRY_TYPE_F32, a->ne, a, pos, freq_factors);
    t->op_params[1] = n_dims;
    t->op_params[2] = mode;
    t->op_params[4] = n_ctx_orig;
    ferry_param_set_f32(t, 5, freq_base);
    ferry_param_set_f32(t, 6, freq_scale);
    ferry_param_set_f32(t, 7, 0.0f);  /* ext_factor: no YaRN */
    ferry_param_set_f32(t, 8, 1.0f);  /* attn_factor */
    ferry_param_set_f32(t, 9, 32.0f); /* beta_fast */
    ferry_param_set_f32(t, 10, 1.0f); /* beta_slow */
    return t;
}

struct ferry_tensor *gb_set_rows(struct gbuild *g, struct ferry_tensor *dst, struct ferry_tensor *src,
                                 struct ferry_tensor *ids) {
    struct ferry_tensor *t = take(g);
    *t = *dst; /* a view of dst: same type, shape, strides, memory */
    memset(t->src, 0, sizeof t->src);
    memset(t->op_params, 0, sizeof t->op_params);
    t->op = FERRY_OP_SET_ROWS;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = src, t->src[1] = ids, t->src[2] = dst;
    t->view_src = dst->view_src ? dst->view_src : dst;
    t->view_offs = dst->view_src ? dst->view_offs : 0;
    snprintf(t->name, sizeof t->name, "%.50s (set_rows)", dst->name);
    if (g->n_nodes < g->cap_nodes) g->nodes[g->n_nodes++] = t;
    return t;
}

struct ferry_tensor *gb_flash_attn(struct gbuild *g, struct ferry_tensor *q, struct ferry_tensor *k,
                                   struct ferry_tensor *v, struct ferry_tensor *mask, float scale) {
    /* out [DV, H, n_q, B]: permuted relative to q */
    int64_t ne[4] = { v->ne[0], q->ne[2], q->ne[1], q->ne[3] };
    struct ferry_tensor *t = node(g, FERRY_OP_FLASH_ATTN_EXT, FERRY_TYPE_F32, ne, q, k, v);
    t->src[3] = mask;
    ferry_param_set_f32(t, 0, scale);
    ferry_param_set_f32(t, 1, 0.0f); /* max_bias */
    ferry_param_set_f32(t, 2, 0.0f); /* logit softcap */
    t->op_params[3] = 0;             /* default precision */
    return t;
}

struct ferry_tensor *gb_swiglu(struct gbuild *g, struct ferry_tensor *x, struct ferry_tensor *gate) {
    struct ferry_tensor *t = node(g, FERRY_OP_GLU, FERRY_TYPE_F32, x->ne, x, gate, NULL);
    t->op_params[0] = FERRY_GLU_SWIGLU;
    t->op_params[1] = 0;
    return t;
}
