/* SOFT_MAX (docs/ops.md B.16): per row, w = x*scale + slope*mask, then
 * y = exp(w - max) / sum, with optional per-head sinks that take part in
 * the max and the sum but produce no output. One thread per row; the row is
 * built in place in the output row, so no scratch is needed except to
 * widen an F16 mask row. */
#include <math.h>

#include "common.h"
#include "convert.h"
#include "rowvec.h"
#include "scratch.h"

static int check_mask(const struct ferry_tensor *node, const struct ferry_tensor *a,
                      const struct ferry_tensor *m, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc;
    if ((rc = check_type_in(node, "mask", m->type, types, 2, err)) ||
        (rc = check_rows_contiguous(node, m, "mask", err)))
        return rc;
    if (m->ne[0] != a->ne[0] || m->ne[1] < a->ne[1] || m->ne[2] < 1 || m->ne[3] < 1 ||
        a->ne[2] % m->ne[2] != 0 || a->ne[3] % m->ne[3] != 0)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "SOFT_MAX: mask [%lld,%lld,%lld,%lld] does not fit src0 [%lld,%lld,%lld,%lld]",
                          (long long)m->ne[0], (long long)m->ne[1], (long long)m->ne[2],
                          (long long)m->ne[3], (long long)a->ne[0], (long long)a->ne[1],
                          (long long)a->ne[2], (long long)a->ne[3]);
    return FERRY_OK;
}

static int check_sinks(const struct ferry_tensor *node, const struct ferry_tensor *a,
                       const struct ferry_tensor *s, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc;
    if ((rc = check_type_in(node, "sinks", s->type, f32, 1, err)) ||
        (rc = check_rows_contiguous(node, s, "sinks", err)))
        return rc;
    /* one logit per head, read densely from the first row (which must exist) */
    if (s->ne[0] < a->ne[2] || (a->ne[2] > 0 && ferry_is_empty(s)))
        return ferry_fail(err, FERRY_ERR_INVALID, "SOFT_MAX: %lld sinks for %lld heads",
                          (long long)s->ne[0], (long long)a->ne[2]);
    return FERRY_OK;
}

static int check_soft_max(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)) ||
        (rc = check_same_shape(node, a, node, err)) ||
        (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    if (node->src[1] && (rc = check_mask(node, a, node->src[1], err))) return rc;
    if (node->src[2] && (rc = check_sinks(node, a, node->src[2], err))) return rc;
    if (ferry_param_f32(node, 1) > 0.0f && !node->src[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "SOFT_MAX: ALiBi (max_bias > 0) needs a mask");
    return FERRY_OK;
}

static size_t soft_max_work_size(const struct ferry_tensor *node, int nth) {
    const struct ferry_tensor *m = node->src[1];
    if (!m || m->type != FERRY_TYPE_F16) return 0;
    return scratch_size(nth, (size_t)node->ne[0], sizeof(float));
}

/* ALiBi: head h's slope, from the largest power of two <= n_head. */
struct alibi {
    float max_bias, m0, m1;
    int64_t n_head_log2;
};

static struct alibi alibi_init(float max_bias, int64_t n_head) {
    struct alibi al = { max_bias, 1.0f, 1.0f, 1 };
    while (al.n_head_log2 <= n_head / 2) al.n_head_log2 *= 2;
    if (max_bias > 0.0f) {
        al.m0 = powf(2.0f, -(max_bias) / (float)al.n_head_log2);
        al.m1 = powf(2.0f, -(max_bias / 2.0f) / (float)al.n_head_log2);
    }
    return al;
}

static float alibi_slope(const struct alibi *al, int64_t h) {
    if (!(al->max_bias > 0.0f)) return 1.0f;
    if (h < al->n_head_log2) return powf(al->m0, (float)(h + 1));
    return powf(al->m1, (float)(2 * (h - al->n_head_log2) + 1));
}

static float load_sink(const struct ferry_tensor *s, int64_t h) {
    float v;
    memcpy(&v, (const char *)s->data + h * (int64_t)sizeof(float), sizeof v);
    return v;
}

static void soft_max_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *mask = node->src[1], *sinks = node->src[2];
    const int64_t n = a->ne[0];
    const float scale = ferry_param_f32(node, 0);
    const struct alibi al = alibi_init(ferry_param_f32(node, 1), a->ne[2]);
    float *wide_mask = NULL;
    if (mask && mask->type == FERRY_TYPE_F16 && !(wide_mask = scratch_slice(p, (size_t)n, sizeof(float)))) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "SOFT_MAX: scratch too small");
        return;
    }
    int64_t r0, r1;
    split_range(ferry_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        const float *x = tensor_row(a, i1, i2, i3);
        float *y = tensor_row(node, i1, i2, i3);

        /* w = x*scale + slope*mask, built in y */
        if (mask) {
            const void *m = tensor_row(mask, i1, i2 % mask->ne[2], i3 % mask->ne[3]);
            if (wide_mask) {
                ferry_cvt_to_f32(FERRY_TYPE_F16, m, wide_mask, n);
                m = wide_mask;
            }
            rowvec_scale_add(y, x, m, n, scale, alibi_slope(&al, i2));
        } else {
            rowvec_scale(y, x, n, scale);
        }

        float max = rowvec_max(y, n);
        float sink = 0.0f;
        if (sinks) {
            sink = load_sink(sinks, i2);
            max = max > sink ? max : sink;
        }
        double sum = rowvec_exp_sum(y, y, n, max);
        if (sinks) sum += (double)expf(sink - max);
        rowvec_scale(y, y, n, (float)(1.0 / sum));
    }
}

const struct ferry_kernel ferry_kernel_soft_max = { check_soft_max, soft_max_work_size, soft_max_compute };
