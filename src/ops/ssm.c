/* Mamba's state-space ops (docs/ops.md B.26): SSM_CONV, the depthwise causal
 * convolution over a window of past tokens, and SSM_SCAN, the selective
 * scan that runs each head's state through the tokens of a sequence.
 *
 * Both follow ggml's CPU arithmetic: f32 throughout, sums in index order.
 * Every source is addressed through its own strides. */
#include <math.h>

#include "common.h"
#include "family_seq.h"

static inline float ld(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    float v;
    memcpy(&v, (const char *)t->data + i0 * (int64_t)t->nb[0] + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] +
                   i3 * (int64_t)t->nb[3], sizeof v);
    return v;
}

static int require_f32(const struct ferry_tensor *node, const struct ferry_tensor *t, const char *what,
                       struct ferry_error *err) {
    if (t->type == FERRY_TYPE_F32) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s type %s is not supported", ferry_op_name(node->op), what,
                      ferry_type_name(t->type));
}

static int shape_fail(const struct ferry_tensor *node, const char *what, struct ferry_error *err) {
    return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s", ferry_op_name(node->op), what);
}

/* ---- SSM_CONV ----
 *
 * src0 sx [d_conv-1+n_t, d_inner, n_s], src1 c [d_conv, d_inner], node
 * [d_inner, n_t, n_s]: y[i, t, s] = Σ_j sx[t+j, i, s]·c[j, i], j < d_conv. */

static int check_ssm_conv(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *sx = node->src[0], *c = node->src[1];
    if ((rc = require_f32(node, sx, "src0", err)) || (rc = require_f32(node, c, "src1", err)) ||
        (rc = require_f32(node, node, "output", err)))
        return rc;
    if (c->ne[2] != 1 || c->ne[3] != 1 || sx->ne[3] != 1) return shape_fail(node, "c must be 2-D and sx 3-D", err);
    if (sx->ne[1] != c->ne[1]) return shape_fail(node, "sx and c differ in d_inner", err);
    const int64_t n_t = sx->ne[0] - c->ne[0] + 1;
    if (n_t < 0) return shape_fail(node, "sx is shorter than the kernel", err);
    return check_dst_shape(node, c->ne[1], n_t, sx->ne[2], 1, err);
}

static void ssm_conv_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *sx = node->src[0], *c = node->src[1];
    const int64_t nc = c->ne[0], n_t = node->ne[1], n_s = node->ne[2];
    int64_t r0, r1;
    split_range(node->ne[0], p->ith, p->nth, &r0, &r1); /* channels */
    for (int64_t s = 0; s < n_s; s++)
        for (int64_t t = 0; t < n_t; t++)
            for (int64_t i = r0; i < r1; i++) {
                float sum = 0.0f;
                for (int64_t j = 0; j < nc; j++) sum += ld(sx, t + j, i, s, 0) * ld(c, j, i, 0, 0);
                memcpy((char *)node->data + i * (int64_t)node->nb[0] + t * (int64_t)node->nb[1] +
                           s * (int64_t)node->nb[2], &sum, sizeof sum);
            }
}

const struct ferry_kernel ferry_kernel_ssm_conv = { check_ssm_conv, NULL, ssm_conv_compute };

/* ---- SSM_SCAN ----
 *
 * Sources: s [d_state, head_dim, n_head, ≥ n_seqs] (initial states), x
 * [head_dim, n_head, n_tok, n_seqs], dt [n_head, n_tok, n_seqs], A
 * [d_state or 1, n_head], B and C [d_state, n_group, n_tok, n_seqs], ids I32
 * [n_seqs] (which state of s each sequence starts from). P[0] = K, the
 * number of state slots per sequence kept in the output.
 *
 * The node is one F32 vector: y [head_dim, n_head, n_tok, n_seqs] first, then
 * K·n_seqs states laid out like s. Slot 0 of sequence q is its state after
 * the last token; slot k (0 < k < K) the state after token n_tok−1−k (for
 * rolling back). Per token, head h (group g = h / (n_head/n_group)):
 *   dts = softplus(dt[h]) (x > 20 ? x : logf(1 + expf(x)));
 *   decay = expf(dts·A[h]) (A of one column), or expf(dts·A[k, h]) per state
 *   element k (Mamba-1, which needs K = 1);
 *   state[k] = state[k]·decay + B[k, g]·(x·dts);  y = Σ_k state[k]·C[k, g]. */

/* Float offset of sequence q's slot k state region in the node. */
static int64_t scan_state_base(const struct ferry_tensor *node, int64_t k, int64_t q) {
    const struct ferry_tensor *s = node->src[0], *x = node->src[1];
    const int64_t per = s->ne[0] * s->ne[1] * s->ne[2];
    return ferry_nelements(x) + (k * x->ne[3] + q) * per;
}

static int check_ssm_scan(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 7, err);
    if (rc) return rc;
    const struct ferry_tensor *s = node->src[0], *x = node->src[1], *dt = node->src[2], *A = node->src[3],
                              *B = node->src[4], *C = node->src[5], *ids = node->src[6];
    static const char *const names[] = { "s", "x", "dt", "A", "B", "C" };
    for (int i = 0; i < 6; i++)
        if ((rc = require_f32(node, node->src[i], names[i], err))) return rc;
    if ((rc = require_f32(node, node, "output", err))) return rc;
    if (ids->type != FERRY_TYPE_I32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SSM_SCAN: ids type %s is not supported",
                          ferry_type_name(ids->type));
    const int64_t d_state = s->ne[0], head_dim = x->ne[0], n_head = x->ne[1], n_tok = x->ne[2],
                  n_seqs = x->ne[3], n_group = B->ne[1];
    const int32_t K = ferry_param_i32(node, 0);
    if (K < 1) return ferry_fail(err, FERRY_ERR_INVALID, "SSM_SCAN: K %d is not positive", (int)K);
    if (dt->ne[0] != n_head || dt->ne[1] != n_tok || dt->ne[2] != n_seqs || dt->ne[3] != 1)
        return shape_fail(node, "dt is not [n_head, n_tok, n_seqs]", err);
    if (s->ne[1] != head_dim || s->ne[2] != n_head || s->ne[3] < 1)
        return shape_fail(node, "s is not [d_state, head_dim, n_head, n]", err);
    if (!ferry_same_shape(B, C) || B->ne[0] != d_state || B->ne[2] != n_tok || B->ne[3] != n_seqs)
        return shape_fail(node, "B and C are not [d_state, n_group, n_tok, n_seqs]", err);
    if (n_group < 1 || n_head % n_group != 0) return shape_fail(node, "n_head is not a multiple of n_group", err);
    if (ids->ne[0] != n_seqs || ids->ne[1] != 1 || ids->ne[2] != 1 || ids->ne[3] != 1)
        return shape_fail(node, "ids is not [n_seqs]", err);
    if (A->ne[1] != n_head || A->ne[2] != 1 || A->ne[3] != 1 || (A->ne[0] != 1 && A->ne[0] != d_state))
        return shape_fail(node, "A is not [d_state or 1, n_head]", err);
    if (A->ne[0] != 1 && K != 1)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SSM_SCAN: K = %d needs a scalar decay per head", (int)K);
    if ((rc = check_contiguous(node, s, "s", err)) || (rc = check_contiguous(node, node, "output", err)))
        return rc;
    /* the node: y, then K state slots per sequence */
    int64_t states, total;
    if (__builtin_mul_overflow(d_state * head_dim * n_head, (int64_t)K * n_seqs, &states) ||
        __builtin_add_overflow(ferry_nelements(x), states, &total))
        return shape_fail(node, "output size overflows", err);
    return check_dst_shape(node, total, 1, 1, 1, err);
}


/* One token of head h: reads the state at `from`, writes it and y. */
static void scan_head(struct ferry_tensor *node, const float *from, float *to, int64_t h, int64_t t, int64_t q) {
    const struct ferry_tensor *x = node->src[1], *dt = node->src[2], *A = node->src[3], *B = node->src[4],
                              *C = node->src[5];
    const int64_t d_state = B->ne[0], head_dim = x->ne[0], n_head = x->ne[1];
    const int64_t g = h / (n_head / B->ne[1]);
    const float d = ld(dt, h, t, q, 0);
    const float dts = d > 20.0f ? d : logf(1.0f + expf(d));
    float *y = (float *)node->data + ((q * x->ne[2] + t) * n_head + h) * head_dim;
    const bool scalar_decay = A->ne[0] == 1; /* Mamba-2: one decay per head */
    const float dA = scalar_decay ? expf(dts * ld(A, 0, h, 0, 0)) : 0.0f;
    for (int64_t i = 0; i < head_dim; i++) {
        const int64_t row = (h * head_dim + i) * d_state;
        const float x_dt = ld(x, i, h, t, q) * dts;
        float sum = 0.0f;
        for (int64_t k = 0; k < d_state; k++) {
            const float decay = scalar_decay ? dA : expf(dts * ld(A, k, h, 0, 0));
            const float st = from[row + k] * decay + ld(B, k, g, t, q) * x_dt;
            sum += st * ld(C, k, g, t, q);
            to[row + k] = st;
        }
        y[i] = sum;
    }
}

static void ssm_scan_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *s = node->src[0], *x = node->src[1], *ids = node->src[6];
    const int64_t n_head = x->ne[1], n_tok = x->ne[2], n_seqs = x->ne[3], K = ferry_param_i32(node, 0);
    const int64_t per_head = s->ne[0] * s->ne[1];
    float *out = node->data;
    int64_t h0, h1;
    split_range(n_head, p->ith, p->nth, &h0, &h1);
    for (int64_t q = 0; q < n_seqs; q++) {
        int32_t id;
        memcpy(&id, (const char *)ids->data + q * (int64_t)ids->nb[0], sizeof id);
        if (id < 0 || id >= s->ne[3]) {
            ferry_op_fail(p, FERRY_ERR_INVALID, "SSM_SCAN: state id %d outside [0, %lld)", (int)id,
                          (long long)s->ne[3]);
            return;
        }
        const float *from = (const float *)((const char *)s->data + id * (int64_t)s->nb[3]);
        float *state = out + scan_state_base(node, 0, q);
        for (int64_t t = 0; t < n_tok; t++) {
            for (int64_t h = h0; h < h1; h++) scan_head(node, from, state, h, t, q);
            /* slot k keeps the state after token n_tok-1-k */
            const int64_t slot = n_tok - 1 - t;
            if (slot > 0 && slot < K)
                for (int64_t h = h0; h < h1; h++)
                    memcpy(out + scan_state_base(node, slot, q) + h * per_head, state + h * per_head,
                           (size_t)per_head * sizeof(float));
            from = state; /* later tokens continue from the output */
        }
    }
}

const struct ferry_kernel ferry_kernel_ssm_scan = { check_ssm_scan, NULL, ssm_scan_compute };
