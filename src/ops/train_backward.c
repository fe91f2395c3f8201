/* Backward passes of element-wise and row ops (docs/ops.md B.25):
 * SILU_BACK, RMS_NORM_BACK, REPEAT_BACK, GET_ROWS_BACK and SOFT_MAX_BACK.
 *
 * Every element is addressed through its tensor's own strides, so
 * permuted or padded tensors need no copies; each output row is written by
 * one thread, with sums in a fixed order, so results do not depend on the
 * thread count. */
#include <math.h>

#include "common.h"
#include "family_train.h"

/* Element i of a row whose elements are s bytes apart. Strides are
 * multiples of the element size (check_aligned), so the access is aligned. */
#define AT(row, s, i) (*(float *)((char *)(row) + (size_t)(i) * (s)))

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };

/* All of node's first n sources and the node itself are F32 with the
 * node's shape. */
static int check_f32_same(const struct ferry_tensor *node, int n, struct ferry_error *err) {
    int rc = check_src_count(node, n, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "output", node->type, f32_only, 1, err))) return rc;
    for (int i = 0; i < n; i++) {
        const struct ferry_tensor *s = node->src[i];
        if ((rc = check_type_in(node, i == 0 ? "src0" : i == 1 ? "src1" : "src2", s->type, f32_only, 1, err)) ||
            (rc = check_same_shape(node, s, node, err)))
            return rc;
    }
    return FERRY_OK;
}

/* ---- SILU_BACK: dx = dy * s * (1 + x*(1 - s)), s = sigmoid(x);
 * src0 = dy, src1 = x, all F32 or all F16 ---- */

static int check_silu_back(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *dy = node->src[0], *x = node->src[1];
    if ((rc = check_type_in(node, "src0", dy->type, types, 2, err))) return rc;
    /* ggml reads all three with src0's element type */
    if (x->type != dy->type || node->type != dy->type)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SILU_BACK: types %s, %s -> %s must all be the same",
                          ferry_type_name(dy->type), ferry_type_name(x->type), ferry_type_name(node->type));
    if ((rc = check_same_shape(node, dy, node, err)) || (rc = check_same_shape(node, x, node, err))) return rc;
    return FERRY_OK;
}

static void silu_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *dy = node->src[0], *x = node->src[1];
    const enum ferry_type t = node->type;
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *g = tensor_row(dy, i1, i2, i3), *xr = tensor_row(x, i1, i2, i3);
        char *out = tensor_row(node, i1, i2, i3);
        for (int64_t i = 0; i < node->ne[0]; i++) {
            const float xv = load_f32(t, xr + i * (int64_t)x->nb[0]);
            const float gv = load_f32(t, g + i * (int64_t)dy->nb[0]);
            const float s = 1.0f / (1.0f + expf(-xv));
            store_f32(t, out + i * (int64_t)node->nb[0], gv * s * (1.0f + xv * (1.0f - s)));
        }
    }
}

const struct ferry_kernel ferry_kernel_silu_back = { check_silu_back, NULL, silu_back_compute };

/* ---- RMS_NORM_BACK: src0 = dz (gradient of the output), src1 = x;
 * dx = (dz + x * (-Σx·dz / (Σx² + eps·n))) / sqrt(Σx²/n + eps) ---- */

static int check_rms_norm_back(const struct ferry_tensor *node, struct ferry_error *err) {
    /* eps may be any float: a bad one gives bad numbers, as in ggml, never
     * a bad access */
    return check_f32_same(node, 2, err);
}

static void rms_norm_back_row(float *dx, size_t sdx, const float *dz, size_t sdz, const float *x, size_t sx,
                              int64_t n, float eps) {
    double sum_xx = 0.0, sum_xdz = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float xv = AT(x, sx, i);
        sum_xx += (double)(xv * xv);
        sum_xdz += (double)(xv * AT(dz, sdz, i));
    }
    /* ggml's f32 steps: the mean and the sum each get eps in f32 */
    const float mean_eps = (float)sum_xx / (float)n + eps;
    const float sum_eps = (float)sum_xx + eps * (float)n;
    const float rrms = 1.0f / sqrtf(mean_eps);
    const float scale_x = (float)(-sum_xdz) / sum_eps;
    for (int64_t i = 0; i < n; i++) AT(dx, sdx, i) = (AT(dz, sdz, i) + AT(x, sx, i) * scale_x) * rrms;
}

static void rms_norm_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *dz = node->src[0], *x = node->src[1];
    const float eps = ferry_param_f32(node, 0);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        rms_norm_back_row(tensor_row(node, i1, i2, i3), node->nb[0], tensor_row(dz, i1, i2, i3), dz->nb[0],
                          tensor_row(x, i1, i2, i3), x->nb[0], node->ne[0], eps);
    }
}

const struct ferry_kernel ferry_kernel_rms_norm_back = { check_rms_norm_back, NULL, rms_norm_back_compute };

/* ---- REPEAT_BACK: dst = the sum of the tiles that REPEAT made of it;
 * src0's shape is a whole multiple of dst's in every dimension ---- */

static int check_repeat_back(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)))
        return rc;
    if (!ferry_can_repeat(node, a))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "REPEAT_BACK: src0 [%lld,%lld,%lld,%lld] is not a tiling of the output [%lld,%lld,%lld,%lld]",
                          (long long)a->ne[0], (long long)a->ne[1], (long long)a->ne[2], (long long)a->ne[3],
                          (long long)node->ne[0], (long long)node->ne[1], (long long)node->ne[2],
                          (long long)node->ne[3]);
    return FERRY_OK;
}

/* Adds tile (t0..t3) of src0 onto dst row (k1,k2,k3). */
static void add_tile_row(float *y, const struct ferry_tensor *node, const struct ferry_tensor *a, int64_t t0,
                         int64_t t1, int64_t t2, int64_t t3, int64_t k1, int64_t k2, int64_t k3) {
    const int64_t n = node->ne[0];
    const float *x = tensor_row(a, t1 * node->ne[1] + k1, t2 * node->ne[2] + k2, t3 * node->ne[3] + k3);
    x = (const float *)((const char *)x + t0 * n * (int64_t)a->nb[0]);
    for (int64_t i = 0; i < n; i++) AT(y, node->nb[0], i) += AT(x, a->nb[0], i);
}

static void repeat_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    if (ferry_is_empty(node)) return;
    /* tiles per dimension (ferry_can_repeat: whole multiples) */
    int64_t nt[4];
    for (int d = 0; d < 4; d++) nt[d] = a->ne[d] / node->ne[d];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t k1, k2, k3;
        row_coords(node, r, &k1, &k2, &k3);
        float *y = tensor_row(node, k1, k2, k3);
        for (int64_t i = 0; i < node->ne[0]; i++) AT(y, node->nb[0], i) = 0.0f;
        /* tiles in ggml's order (dim 3 outermost, dim 0 innermost), so each
         * element is summed in the same order */
        for (int64_t t3 = 0; t3 < nt[3]; t3++)
            for (int64_t t2 = 0; t2 < nt[2]; t2++)
                for (int64_t t1 = 0; t1 < nt[1]; t1++)
                    for (int64_t t0 = 0; t0 < nt[0]; t0++) add_tile_row(y, node, a, t0, t1, t2, t3, k1, k2, k3);
    }
}

const struct ferry_kernel ferry_kernel_repeat_back = { check_repeat_back, NULL, repeat_back_compute };

/* ---- GET_ROWS_BACK: dst = zeros; dst[:, idx[i]] += src0[:, i] for each
 * index i in order. src0 (F32 or F16) and dst (F32) are matrices; src1
 * holds the I32 indices, read in flat order ---- */

static int check_get_rows_back(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    static const enum ferry_type i32[] = { FERRY_TYPE_I32 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *g = node->src[0], *idx = node->src[1];
    if ((rc = check_type_in(node, "src0", g->type, types, 2, err)) ||
        (rc = check_type_in(node, "indices", idx->type, i32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)))
        return rc;
    if (g->ne[2] != 1 || g->ne[3] != 1 || node->ne[2] != 1 || node->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "GET_ROWS_BACK: src0 and the output must be matrices");
    if (g->ne[0] != node->ne[0])
        return ferry_fail(err, FERRY_ERR_INVALID, "GET_ROWS_BACK: rows of %lld into rows of %lld",
                          (long long)g->ne[0], (long long)node->ne[0]);
    /* index i takes row i of src0, so src0 needs a row per index */
    if (ferry_nelements(idx) > g->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "GET_ROWS_BACK: %lld indices for %lld rows of src0",
                          (long long)ferry_nelements(idx), (long long)g->ne[1]);
    return FERRY_OK;
}

static int32_t load_index(const struct ferry_tensor *idx, int64_t k) {
    const int64_t i0 = k % idx->ne[0], rest = k / idx->ne[0];
    int64_t i1, i2, i3;
    row_coords(idx, rest, &i1, &i2, &i3);
    int32_t v;
    memcpy(&v, tensor_at(idx, i0, i1, i2, i3), sizeof v);
    return v;
}

/* Work is split by destination row: thread ith zeroes the rows it owns and
 * scans every index in order, adding the rows that land in its range. So a
 * row named twice gets its additions in index order whatever the thread
 * count, and no two threads write the same row. */
static void get_rows_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *g = node->src[0], *idx = node->src[1];
    const int64_t n = node->ne[0], n_idx = ferry_nelements(idx);
    int64_t r0, r1;
    split_range(node->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        float *y = tensor_row(node, r, 0, 0);
        for (int64_t i = 0; i < n; i++) AT(y, node->nb[0], i) = 0.0f;
    }
    if (r0 >= r1 && p->ith != 0) return; /* thread 0 always scans, to report bad indices */
    for (int64_t k = 0; k < n_idx; k++) {
        const int32_t r = load_index(idx, k);
        if (r < 0 || r >= node->ne[1]) {
            if (p->ith == 0)
                ferry_op_fail(p, FERRY_ERR_INVALID, "GET_ROWS_BACK: index %d out of range [0, %lld)", (int)r,
                              (long long)node->ne[1]);
            continue;
        }
        if (r < r0 || r >= r1) continue;
        float *y = tensor_row(node, r, 0, 0);
        const char *x = tensor_row(g, k, 0, 0);
        for (int64_t i = 0; i < n; i++) AT(y, node->nb[0], i) += load_f32(g->type, x + i * (int64_t)g->nb[0]);
    }
}

const struct ferry_kernel ferry_kernel_get_rows_back = { check_get_rows_back, NULL, get_rows_back_compute };

/* ---- SOFT_MAX_BACK: src0 = dy, src1 = y (the forward output);
 * dx = ((dy - y·dy) * y) * scale per row. Pf[0] = scale, Pf[1] = max_bias,
 * which must be 0 (ggml's CPU backend has no ALiBi backward) ---- */

static int check_soft_max_back(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_same(node, 2, err);
    if (rc) return rc;
    const float max_bias = ferry_param_f32(node, 1);
    if (max_bias != 0.0f)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SOFT_MAX_BACK: max_bias %g is not supported (only 0)",
                          (double)max_bias);
    return FERRY_OK;
}

static void soft_max_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *dy = node->src[0], *y = node->src[1];
    const float scale = ferry_param_f32(node, 0);
    const int64_t n = node->ne[0];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const float *g = tensor_row(dy, i1, i2, i3), *yr = tensor_row(y, i1, i2, i3);
        float *dx = tensor_row(node, i1, i2, i3);
        double dot = 0.0;
        for (int64_t i = 0; i < n; i++) dot += (double)AT(yr, y->nb[0], i) * (double)AT(g, dy->nb[0], i);
        const float neg_dot = -(float)dot;
        for (int64_t i = 0; i < n; i++)
            AT(dx, node->nb[0], i) = ((AT(g, dy->nb[0], i) + neg_dot) * AT(yr, y->nb[0], i)) * scale;
    }
}

const struct ferry_kernel ferry_kernel_soft_max_back = { check_soft_max_back, NULL, soft_max_back_compute };
