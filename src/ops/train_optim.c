/* Optimizer steps (docs/ops.md B.25): OPT_STEP_ADAMW and OPT_STEP_SGD update
 * the weights src0 in place (the node is a view of src0), and ADAMW its
 * moment tensors too. The hyper-parameters come from a small F32 tensor,
 * so they are data: read through its strides, never checked.
 *
 * Every element is updated on its own in f32, with ggml's order of
 * operations; rows are split between threads. */
#include <math.h>

#include "common.h"
#include "family_train.h"

#define AT(row, s, i) (*(float *)((char *)(row) + (size_t)(i) * (s)))

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };

/* src0..src[n-1] are F32 with the node's shape and type. */
static int check_state(const struct ferry_tensor *node, int n, struct ferry_error *err) {
    static const char *const names[] = { "weights", "gradients", "first moments", "second moments" };
    int rc = check_type_in(node, "output", node->type, f32_only, 1, err);
    for (int i = 0; i < n && !rc; i++) {
        const struct ferry_tensor *s = node->src[i];
        if (!(rc = check_type_in(node, names[i], s->type, f32_only, 1, err))) rc = check_same_shape(node, s, node, err);
    }
    return rc;
}

static int check_hparams(const struct ferry_tensor *node, const struct ferry_tensor *h, int64_t count,
                         struct ferry_error *err) {
    int rc = check_type_in(node, "parameters", h->type, f32_only, 1, err);
    if (rc) return rc;
    if (ferry_nelements(h) != count)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %lld parameters, %lld expected", ferry_op_name(node->op),
                          (long long)ferry_nelements(h), (long long)count);
    return FERRY_OK;
}

/* Element k (flat logical order) of an F32 tensor, through its strides. */
static float flat_f32(const struct ferry_tensor *t, int64_t k) {
    const int64_t i0 = k % t->ne[0], r = k / t->ne[0];
    int64_t i1, i2, i3;
    row_coords(t, r, &i1, &i2, &i3);
    float v;
    memcpy(&v, tensor_at(t, i0, i1, i2, i3), sizeof v);
    return v;
}

/* ---- OPT_STEP_ADAMW: src0 = w, src1 = g, src2 = m, src3 = v,
 * src4 = [alpha, beta1, beta2, eps, wd, beta1h, beta2h] ---- */

struct adamw {
    float alpha, beta1, beta2, eps, beta1h, beta2h, keep;
};

static int check_adamw(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 5, err);
    if (rc || (rc = check_state(node, 4, err)) || (rc = check_hparams(node, node->src[4], 7, err))) return rc;
    return FERRY_OK;
}

static void adamw_row(const struct adamw *h, float *w, size_t sw, const float *g, size_t sg, float *m, size_t sm,
                      float *v, size_t sv, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float gi = AT(g, sg, i);
        const float mi = AT(m, sm, i) * h->beta1 + gi * (1.0f - h->beta1);
        const float vi = AT(v, sv, i) * h->beta2 + gi * gi * (1.0f - h->beta2);
        AT(m, sm, i) = mi;
        AT(v, sv, i) = vi;
        const float mh = mi * h->beta1h;
        const float vh = sqrtf(vi * h->beta2h) + h->eps;
        /* decoupled weight decay (AdamW): the decay is not part of the moments */
        AT(w, sw, i) = AT(w, sw, i) * h->keep - h->alpha * mh / vh;
    }
}

static void adamw_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct ferry_tensor *w = node->src[0], *g = node->src[1], *m = node->src[2], *v = node->src[3];
    const struct ferry_tensor *hp = node->src[4];
    const float wd = flat_f32(hp, 4);
    const struct adamw h = {
        .alpha = flat_f32(hp, 0), .beta1 = flat_f32(hp, 1), .beta2 = flat_f32(hp, 2), .eps = flat_f32(hp, 3),
        .beta1h = flat_f32(hp, 5), .beta2h = flat_f32(hp, 6), .keep = 1.0f - flat_f32(hp, 0) * wd,
    };
    int64_t r0, r1;
    split_range(ferry_nrows(w), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(w, r, &i1, &i2, &i3);
        adamw_row(&h, tensor_row(w, i1, i2, i3), w->nb[0], tensor_row(g, i1, i2, i3), g->nb[0],
                  tensor_row(m, i1, i2, i3), m->nb[0], tensor_row(v, i1, i2, i3), v->nb[0], w->ne[0]);
    }
}

const struct ferry_kernel ferry_kernel_opt_adamw = { check_adamw, NULL, adamw_compute };

/* ---- OPT_STEP_SGD: src0 = w, src1 = g, src2 = [alpha, wd];
 * w = w·(1 - alpha·wd) - alpha·g ---- */

static int check_sgd(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc || (rc = check_state(node, 2, err)) || (rc = check_hparams(node, node->src[2], 2, err))) return rc;
    return FERRY_OK;
}

static void sgd_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct ferry_tensor *w = node->src[0];
    const struct ferry_tensor *g = node->src[1], *hp = node->src[2];
    const float alpha = flat_f32(hp, 0), keep = 1.0f - alpha * flat_f32(hp, 1);
    int64_t r0, r1;
    split_range(ferry_nrows(w), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(w, r, &i1, &i2, &i3);
        float *wr = tensor_row(w, i1, i2, i3);
        const float *gr = tensor_row(g, i1, i2, i3);
        for (int64_t i = 0; i < w->ne[0]; i++) AT(wr, w->nb[0], i) = AT(wr, w->nb[0], i) * keep - alpha * AT(gr, g->nb[0], i);
    }
}

const struct ferry_kernel ferry_kernel_opt_sgd = { check_sgd, NULL, sgd_compute };
