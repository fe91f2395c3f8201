/* NORM, RMS_NORM and L2_NORM (docs/ops.md B.13): every row of src0 is normalised
 * on its own, by one thread, with ggml's order of operations: squares in
 * f32 summed in double, the scale computed once per row, then y = x*scale.
 * NORM's variance is summed in blocks of 16 like ggml's AVX-512 build;
 * its strided-input path sums in f32 as ggml's does. */
#include <math.h>

#include "common.h"
#include "convert.h"
#include "rowvec.h"
#include "scratch.h"

/* Element i of a row with byte stride s. Strides are multiples of 4
 * (check_aligned), so these are plain aligned accesses. */
#define AT(row, s, i) (*(float *)((char *)(row) + (size_t)(i) * (s)))

static int check_norm(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)) ||
        (rc = check_same_shape(node, a, node, err)))
        return rc;
    float eps = ferry_param_f32(node, 0);
    if (!(eps >= 0.0f)) /* NaN too */
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: eps %g must be >= 0",
                          ferry_op_name(node->op), (double)eps);
    return FERRY_OK;
}

static bool row_is_dense(const struct ferry_tensor *t) { return t->nb[0] == sizeof(float) || t->ne[0] <= 1; }

/* NORM with a dense input and a strided output stages (x - mean) in a
 * per-thread row. */
static bool norm_needs_scratch(const struct ferry_tensor *node) {
    return node->op == FERRY_OP_NORM && row_is_dense(node->src[0]) && !row_is_dense(node);
}

static size_t norm_work_size(const struct ferry_tensor *node, int nth) {
    if (!norm_needs_scratch(node)) return 0;
    return scratch_size(nth, (size_t)node->ne[0], sizeof(float));
}

static double sum_squares(const float *x, size_t sx, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float v = AT(x, sx, i);
        sum += (double)(v * v);
    }
    return sum;
}

/* y = x*scale for one row. */
static void scale_row(float *y, size_t sy, const float *x, size_t sx, int64_t n, float scale) {
    if (sx == sizeof(float) && sy == sizeof(float)) {
        rowvec_scale(y, x, n, scale);
        return;
    }
    for (int64_t i = 0; i < n; i++) AT(y, sy, i) = AT(x, sx, i) * scale;
}

static void rms_norm_row(float *y, size_t sy, const float *x, size_t sx, int64_t n, float eps) {
    const float mean = (float)(sum_squares(x, sx, n) / (double)n);
    scale_row(y, sy, x, sx, n, 1.0f / sqrtf(mean + eps));
}

static void l2_norm_row(float *y, size_t sy, const float *x, size_t sx, int64_t n, float eps) {
    const float norm = sqrtf((float)sum_squares(x, sx, n));
    scale_row(y, sy, x, sx, n, 1.0f / fmaxf(norm, eps));
}

/* Layer norm of a dense row: mean from a double sum, variance of the
 * centred values (written to d) from rowvec's blocked sum. */
static void norm_row_dense(float *y, size_t sy, float *d, const float *x, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i];
    const float mean = (float)sum / (float)n;
    const float var = (float)(rowvec_sub_sumsq(d, x, n, mean) / (double)n);
    scale_row(y, sy, d, sizeof(float), n, 1.0f / sqrtf(var + eps));
}

/* Layer norm of a strided row, all sums in f32. */
static void norm_row_strided(float *y, size_t sy, const float *x, size_t sx, int64_t n, float eps) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += AT(x, sx, i);
    const float mean = sum / (float)n;
    float sq = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = AT(x, sx, i) - mean;
        sq += v * v;
    }
    const float scale = 1.0f / sqrtf(sq / (float)n + eps);
    for (int64_t i = 0; i < n; i++) AT(y, sy, i) = (AT(x, sx, i) - mean) * scale;
}

static void norm_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t n = a->ne[0];
    const float eps = ferry_param_f32(node, 0);
    const size_t sx = a->nb[0], sy = node->nb[0];
    float *stage = NULL;
    if (norm_needs_scratch(node) && !(stage = scratch_slice(p, (size_t)n, sizeof(float)))) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "NORM: scratch too small");
        return;
    }
    int64_t r0, r1;
    split_range(ferry_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        const float *x = tensor_row(a, i1, i2, i3);
        float *y = tensor_row(node, i1, i2, i3);
        switch (node->op) {
        case FERRY_OP_RMS_NORM: rms_norm_row(y, sy, x, sx, n, eps); break;
        case FERRY_OP_L2_NORM: l2_norm_row(y, sy, x, sx, n, eps); break;
        default:
            if (!row_is_dense(a)) norm_row_strided(y, sy, x, sx, n, eps);
            else norm_row_dense(y, sy, stage ? stage : y, x, n, eps);
            break;
        }
    }
}

const struct ferry_kernel ferry_kernel_norm = { check_norm, norm_work_size, norm_compute };
