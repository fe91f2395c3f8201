/* DeepSeek-V4 hyper-connection ops (docs/ops.md B.26): DSV4_HC_COMB builds
 * the per-token hc×hc mixing matrix (hc = 4), DSV4_HC_PRE collapses the hc
 * residual streams into one, DSV4_HC_POST expands a layer's output back into
 * hc streams. f32 arithmetic in ggml's order; every stride honoured. */
#include <math.h>

#include "common.h"
#include "family_seq.h"

#define HC_MAX_ITER 4096 /* Sinkhorn steps of DSV4_HC_COMB */

#define HC 4
#define HC_MIX (2 + HC) * HC /* 24: pre (4), post (4), then the 4×4 comb logits */

static inline float at(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2) {
    float v;
    memcpy(&v, (const char *)t->data + i0 * (int64_t)t->nb[0] + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2],
           sizeof v);
    return v;
}

static inline void put(struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, float v) {
    memcpy((char *)t->data + i0 * (int64_t)t->nb[0] + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2], &v, sizeof v);
}

static int check_all_f32(const struct ferry_tensor *node, int n_src, struct ferry_error *err) {
    int rc = check_src_count(node, n_src, err);
    if (rc) return rc;
    for (int i = 0; i < n_src; i++)
        if (node->src[i]->type != FERRY_TYPE_F32)
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: src%d type %s is not supported",
                              ferry_op_name(node->op), i, ferry_type_name(node->src[i]->type));
    if (node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: output type %s is not supported", ferry_op_name(node->op),
                          ferry_type_name(node->type));
    return FERRY_OK;
}

static bool dims_are(const struct ferry_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
    return t->ne[0] == a && t->ne[1] == b && t->ne[2] == c && t->ne[3] == d;
}

static int fail_shapes(const struct ferry_tensor *node, struct ferry_error *err) {
    return ferry_fail(err, FERRY_ERR_INVALID, "%s: source shapes do not agree", ferry_op_name(node->op));
}

/* ---- DSV4_HC_COMB ----
 *
 * mixes [24, n_tok], scale [≥ 3], base [24]; node [4, 4, n_tok]. Pf[0] = eps,
 * P[1] = n_iter (≥ 1). For each token: the logits l[d + 4s] =
 * mixes[8 + d + 4s]·scale[2] + base[8 + d + 4s]; for each s a softmax over d
 * plus eps; then a Sinkhorn normalisation: columns, then n_iter − 1 times
 * rows and columns, each line divided by (eps + its sum). */

static int check_hc_comb(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_all_f32(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *mixes = node->src[0], *scale = node->src[1], *base = node->src[2];
    const int64_t n_tok = mixes->ne[1];
    if (!dims_are(mixes, HC_MIX, n_tok, 1, 1) || scale->ne[0] < 3 || !dims_are(scale, scale->ne[0], 1, 1, 1) ||
        !dims_are(base, HC_MIX, 1, 1, 1))
        return fail_shapes(node, err);
    if (ferry_param_i32(node, 1) < 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "DSV4_HC_COMB: n_iter %d is not positive",
                          (int)ferry_param_i32(node, 1));
    /* models use about 20 Sinkhorn steps; a client asking for millions would
     * only hold the shared engine for minutes, so a bound is part of the check */
    if (ferry_param_i32(node, 1) > HC_MAX_ITER)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "DSV4_HC_COMB: n_iter %d exceeds %d",
                          (int)ferry_param_i32(node, 1), HC_MAX_ITER);
    return check_dst_shape(node, HC, HC, n_tok, 1, err);
}

/* Divides each column d (cols) or row s of c[d + 4s] by eps + its sum. */
static void hc_normalise(float *c, float eps, bool cols) {
    for (int a = 0; a < HC; a++) {
        float sum = eps;
        for (int b = 0; b < HC; b++) sum += c[cols ? a + HC * b : b + HC * a];
        const float inv = 1.0f / sum;
        for (int b = 0; b < HC; b++) c[cols ? a + HC * b : b + HC * a] *= inv;
    }
}

static void hc_comb_token(struct ferry_tensor *node, int64_t t) {
    const struct ferry_tensor *mixes = node->src[0], *scale = node->src[1], *base = node->src[2];
    const float eps = ferry_param_f32(node, 0), sc = at(scale, 2, 0, 0);
    const int32_t n_iter = ferry_param_i32(node, 1);
    float c[HC * HC];
    for (int s = 0; s < HC; s++) {
        float *col = c + HC * s, max = -INFINITY, sum = 0.0f;
        for (int d = 0; d < HC; d++) {
            col[d] = at(mixes, 2 * HC + d + HC * s, t, 0) * sc + at(base, 2 * HC + d + HC * s, 0, 0);
            max = col[d] > max ? col[d] : max;
        }
        for (int d = 0; d < HC; d++) {
            col[d] = expf(col[d] - max);
            sum += col[d];
        }
        const float inv = 1.0f / sum;
        for (int d = 0; d < HC; d++) col[d] = col[d] * inv + eps;
    }
    hc_normalise(c, eps, true);
    for (int32_t i = 1; i < n_iter; i++) {
        hc_normalise(c, eps, false);
        hc_normalise(c, eps, true);
    }
    for (int s = 0; s < HC; s++)
        for (int d = 0; d < HC; d++) put(node, d, s, t, c[d + HC * s]);
}

static void hc_comb_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    int64_t t0, t1;
    split_range(node->ne[2], p->ith, p->nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) hc_comb_token(node, t);
}

const struct ferry_kernel ferry_kernel_dsv4_hc_comb = { check_hc_comb, NULL, hc_comb_compute };

/* ---- DSV4_HC_PRE: y[i, t] = Σ_h x[i, h, t]·w[h, t]; x [E, hc, n_tok], w [hc, n_tok] ---- */

static int check_hc_pre(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_all_f32(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *x = node->src[0], *w = node->src[1];
    const int64_t E = x->ne[0], hc = x->ne[1], n_tok = x->ne[2];
    if (hc < 1 || x->ne[3] != 1 || !dims_are(w, hc, n_tok, 1, 1)) return fail_shapes(node, err);
    return check_dst_shape(node, E, n_tok, 1, 1, err);
}

static void hc_pre_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *x = node->src[0], *w = node->src[1];
    const int64_t E = x->ne[0], hc = x->ne[1];
    int64_t r0, r1;
    split_range(E * x->ne[2], p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i = r % E, t = r / E;
        float sum = 0.0f;
        for (int64_t h = 0; h < hc; h++) sum += at(x, i, h, t) * at(w, h, t, 0);
        put(node, i, t, 0, sum);
    }
}

const struct ferry_kernel ferry_kernel_dsv4_hc_pre = { check_hc_pre, NULL, hc_pre_compute };

/* ---- DSV4_HC_POST ----
 *
 * x [E, n_tok], residual [E, hc, n_tok], post [hc, n_tok], comb [hc, hc, n_tok];
 * node [E, hc, n_tok]: y[i, d, t] = x[i, t]·post[d, t] + Σ_s residual[i, s, t]·comb[d, s, t]. */

static int check_hc_post(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_all_f32(node, 4, err);
    if (rc) return rc;
    const struct ferry_tensor *x = node->src[0], *res = node->src[1], *post = node->src[2], *comb = node->src[3];
    const int64_t E = x->ne[0], n_tok = x->ne[1], hc = res->ne[1];
    if (hc < 1 || !dims_are(x, E, n_tok, 1, 1) || !dims_are(res, E, hc, n_tok, 1) ||
        !dims_are(post, hc, n_tok, 1, 1) || !dims_are(comb, hc, hc, n_tok, 1))
        return fail_shapes(node, err);
    return check_dst_shape(node, E, hc, n_tok, 1, err);
}

static void hc_post_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *x = node->src[0], *res = node->src[1], *post = node->src[2], *comb = node->src[3];
    const int64_t E = x->ne[0], hc = res->ne[1];
    int64_t r0, r1;
    split_range(E * hc * x->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i = r % E, d = (r / E) % hc, t = r / (E * hc);
        float sum = at(x, i, t, 0) * at(post, d, t, 0);
        for (int64_t s = 0; s < hc; s++) sum += at(res, i, s, t) * at(comb, d, s, t);
        put(node, i, d, t, sum);
    }
}

const struct ferry_kernel ferry_kernel_dsv4_hc_post = { check_hc_post, NULL, hc_post_compute };
