/* The element-wise one-input ops: UNARY with its 22 sub-ops (docs/ops.md B.20),
 * SQR and SQRT (B.8), SCALE (B.7) and CLAMP (B.10).
 *
 * All work row by row: rows must have contiguous elements, but may sit
 * anywhere (the node's and the source's own nb[1..3]). F16/BF16 rows are
 * widened to f32 in chunks, computed, and rounded once on the way out;
 * GELU and GELU_QUICK on F16 read their lookup table by bit pattern. The
 * node may be the source itself (in-place variants; CLAMP always is in
 * ggml): each chunk is read before it is written. */
#include "act.h"
#include "common.h"
#include "convert.h"
#include "vec.h"

#define CHUNK 256

/* Shared checks: one source, same shape as the node, rows contiguous. */
static int check_one_source(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_same_shape(node, node, a, err)) ||
        (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    if (node->type != a->type)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: output type %s differs from input %s",
                          ferry_op_name(node->op), ferry_type_name(node->type), ferry_type_name(a->type));
    return FERRY_OK;
}

/* f(x) applied to n f32 values; y may be x. */
typedef void (*row_fn)(const struct ferry_tensor *node, float *y, const float *x, int64_t n);

/* Runs fn over this thread's rows. F32 rows go straight to fn; F16/BF16
 * rows go through an f32 buffer. */
static void map_rows(const struct ferry_compute_params *p, struct ferry_tensor *node, row_fn fn) {
    const struct ferry_tensor *a = node->src[0];
    const enum ferry_type t = a->type;
    const size_t ts = ferry_type_size(t);
    const int64_t ne0 = node->ne[0];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    float buf[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3);
        char *y = tensor_row(node, i1, i2, i3);
        if (t == FERRY_TYPE_F32) {
            fn(node, (float *)y, (const float *)x, ne0);
            continue;
        }
        for (int64_t i0 = 0; i0 < ne0; i0 += CHUNK) {
            const int64_t m = ne0 - i0 < CHUNK ? ne0 - i0 : CHUNK;
            ferry_cvt_to_f32(t, x + i0 * ts, buf, m);
            fn(node, buf, buf, m);
            ferry_cvt_from_f32(t, buf, y + i0 * ts, m);
        }
    }
}

/* y[i] = table[x[i]] on f16 bit patterns, for GELU / GELU_QUICK on F16. */
static void map_rows_f16_table(const struct ferry_compute_params *p, struct ferry_tensor *node,
                               const uint16_t *table) {
    const struct ferry_tensor *a = node->src[0];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const uint16_t *x = tensor_row(a, i1, i2, i3);
        uint16_t *y = tensor_row(node, i1, i2, i3);
        for (int64_t i = 0; i < node->ne[0]; i++) y[i] = table[x[i]];
    }
}

/* ---- UNARY ---- */

static int unary_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_one_source(node, err);
    if (rc) return rc;
    const int32_t op = node->op_params[0];
    const enum ferry_type t = node->type;
    if (op < 0 || op >= FERRY_UNARY_COUNT)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "UNARY: unknown sub-op %d", (int)op);
    bool f16_or_f32_only = op == FERRY_UNARY_GELU || op == FERRY_UNARY_GELU_QUICK ||
                           op == FERRY_UNARY_GELU_ERF || op == FERRY_UNARY_SILU;
    if (!(t == FERRY_TYPE_F32 || t == FERRY_TYPE_F16 || (t == FERRY_TYPE_BF16 && !f16_or_f32_only)))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "UNARY %s: type %s is not supported",
                          ferry_unary_op_name(op), ferry_type_name(t));
    return FERRY_OK;
}

/* Expands to a loop computing y[i] from x = x[i]. */
#define MAP(expr)                                    \
    for (int64_t i = 0; i < n; i++) {                \
        const float v = x[i];                        \
        y[i] = (expr);                               \
    }                                                \
    break

static void unary_row(const struct ferry_tensor *node, float *y, const float *x, int64_t n) {
    switch (node->op_params[0]) {
    case FERRY_UNARY_ABS: MAP(fabsf(v));
    case FERRY_UNARY_SGN: MAP(v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f));
    case FERRY_UNARY_NEG: MAP(-v);
    case FERRY_UNARY_STEP: MAP(v > 0.0f ? 1.0f : 0.0f);
    case FERRY_UNARY_TANH: MAP(tanhf(v));
    case FERRY_UNARY_ELU: MAP(v > 0.0f ? v : expm1f(v));
    case FERRY_UNARY_RELU: MAP(v > 0.0f ? v : 0.0f);
    case FERRY_UNARY_SIGMOID: MAP(1.0f / (1.0f + expf(-v)));
    case FERRY_UNARY_GELU: ferry_vec_f16_table_f32(y, x, n, ferry_gelu_table(), true); break;
    case FERRY_UNARY_GELU_QUICK: ferry_vec_f16_table_f32(y, x, n, ferry_gelu_quick_table(), false); break;
    case FERRY_UNARY_SILU: ferry_vec_silu_f32(y, x, n); break;
    case FERRY_UNARY_HARDSWISH: MAP(v * fminf(1.0f, fmaxf(0.0f, (v + 3.0f) / 6.0f)));
    case FERRY_UNARY_HARDSIGMOID: MAP(fminf(1.0f, fmaxf(0.0f, (v + 3.0f) / 6.0f)));
    case FERRY_UNARY_EXP: MAP(expf(v));
    case FERRY_UNARY_EXPM1: MAP(expf(v) - 1.0f); /* ggml's formula, not expm1f */
    case FERRY_UNARY_SOFTPLUS: MAP(v > 20.0f ? v : logf(1.0f + expf(v)));
    case FERRY_UNARY_GELU_ERF: MAP(act_gelu_erf(v));
    case FERRY_UNARY_XIELU: {
        /* op_params hold the derived constants (docs/ops.md B.20) */
        const float an = ferry_param_f32(node, 1), ap = ferry_param_f32(node, 2);
        const float beta = ferry_param_f32(node, 3), eps = ferry_param_f32(node, 4);
        /* ggml's build contracts these sums into FMAs; the golden data say so */
        MAP(v > 0.0f ? fmaf(ap * v, v, beta * v) : fmaf(expm1f(fminf(v, eps)) - v, an, beta * v));
    }
    case FERRY_UNARY_FLOOR: MAP(floorf(v));
    case FERRY_UNARY_CEIL: MAP(ceilf(v));
    case FERRY_UNARY_ROUND: MAP(roundf(v));
    case FERRY_UNARY_TRUNC: MAP(truncf(v));
    default: break;
    }
}

static void unary_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const int32_t op = node->op_params[0];
    if (node->type == FERRY_TYPE_F16 && op == FERRY_UNARY_GELU)
        map_rows_f16_table(p, node, ferry_gelu_table());
    else if (node->type == FERRY_TYPE_F16 && op == FERRY_UNARY_GELU_QUICK)
        map_rows_f16_table(p, node, ferry_gelu_quick_table());
    else
        map_rows(p, node, unary_row);
}

const struct ferry_kernel ferry_kernel_unary = { unary_check, NULL, unary_compute };

/* ---- SQR, SQRT ---- */

static int sqr_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_one_source(node, err);
    if (rc) return rc;
    if (!is_float_type(node->type))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: type %s is not supported",
                          ferry_op_name(node->op), ferry_type_name(node->type));
    return FERRY_OK;
}

static void sqr_row(const struct ferry_tensor *node, float *y, const float *x, int64_t n) {
    if (node->op == FERRY_OP_SQRT) {
        for (int64_t i = 0; i < n; i++) y[i] = sqrtf(x[i]);
    } else {
        vec_mul_f32(y, x, x, n);
    }
}

static void sqr_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    map_rows(p, node, sqr_row);
}

const struct ferry_kernel ferry_kernel_sqr = { sqr_check, NULL, sqr_compute };

/* ---- SCALE: y = x*s, or x*s + b ---- */

static int scale_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_one_source(node, err);
    if (rc) return rc;
    if (node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SCALE: type %s is not supported",
                          ferry_type_name(node->type));
    return FERRY_OK;
}

/* y = x*s + b is one fused multiply-add per element, as in ggml's build
 * (its vector body uses FMA and its compiler contracts the scalar tail; the
 * golden data are bit-exact this way). */
static void scale_row(const struct ferry_tensor *node, float *y, const float *x, int64_t n) {
    const float s = ferry_param_f32(node, 0), b = ferry_param_f32(node, 1);
    if (b == 0.0f) {
        const vf vs = vf_splat(s);
        int64_t i = 0;
        for (; i + VEC_LANES <= n; i += VEC_LANES) vf_store(y + i, vf_load(x + i) * vs);
        for (; i < n; i++) y[i] = x[i] * s;
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(x[i], s, b);
}

static void scale_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    map_rows(p, node, scale_row);
}

const struct ferry_kernel ferry_kernel_scale = { scale_check, NULL, scale_compute };

/* ---- CLAMP: y = MAX(MIN(x, max), min) with C-macro semantics (NaN -> max) ---- */

static int clamp_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_one_source(node, err);
    if (rc) return rc;
    if (node->type != FERRY_TYPE_F32 && node->type != FERRY_TYPE_F16)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "CLAMP: type %s is not supported",
                          ferry_type_name(node->type));
    return FERRY_OK;
}

static void clamp_row(const struct ferry_tensor *node, float *y, const float *x, int64_t n) {
    const float lo = ferry_param_f32(node, 0), hi = ferry_param_f32(node, 1);
    for (int64_t i = 0; i < n; i++) {
        const float t = x[i] < hi ? x[i] : hi;
        y[i] = t > lo ? t : lo;
    }
}

static void clamp_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    map_rows(p, node, clamp_row);
}

const struct ferry_kernel ferry_kernel_clamp = { clamp_check, NULL, clamp_compute };

/* ---- LEAKY_RELU: y = max(x, 0) + slope * min(x, 0), ggml's own op (not a UNARY sub-op) ---- */

static void leaky_relu_row(const struct ferry_tensor *node, float *y, const float *x, int64_t n) {
    const float slope = ferry_param_f32(node, 0);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] > 0.0f ? x[i] : 0.0f) + slope * (x[i] < 0.0f ? x[i] : 0.0f);
}

static int leaky_relu_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_one_source(node, err);
    if (rc) return rc;
    if (node->type != FERRY_TYPE_F32 && node->type != FERRY_TYPE_F16)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "LEAKY_RELU: type %s is not supported",
                          ferry_type_name(node->type));
    return FERRY_OK;
}

static void leaky_relu_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    map_rows(p, node, leaky_relu_row);
}

const struct ferry_kernel ferry_kernel_leaky_relu = { leaky_relu_check, NULL, leaky_relu_compute };
