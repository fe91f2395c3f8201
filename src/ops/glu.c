/* GLU (docs/ops.md B.21): gated linear units, y = act(x) * g.
 *
 * Single-tensor form: each src0 row holds x and g as halves (swapped puts
 * x second). Split form: x is src0 and g is src1, same shape. F16 rows are
 * widened in chunks and rounded once; GEGLU / GEGLU_QUICK on F16 read the
 * GELU table by bit pattern, without the f32 path's +-10 clamp, as ggml. */
#include "act.h"
#include "common.h"
#include "convert.h"
#include "vec.h"

#define CHUNK 256

static int glu_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int32_t op = node->op_params[0];
    if (op < 0 || op >= FERRY_GLU_COUNT)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GLU: unknown sub-op %d", (int)op);
    bool type_ok = a->type == FERRY_TYPE_F32 || (a->type == FERRY_TYPE_F16 && op != FERRY_GLU_SWIGLU_OAI);
    if (!type_ok || node->type != a->type || (b && b->type != a->type))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GLU %s: types %s%s%s -> %s are not supported",
                          ferry_glu_op_name(op), ferry_type_name(a->type), b ? ", " : "",
                          b ? ferry_type_name(b->type) : "", ferry_type_name(node->type));
    if (b) {
        if ((rc = check_same_shape(node, a, b, err)) || (rc = check_same_shape(node, node, a, err)) ||
            (rc = check_rows_contiguous(node, b, "src1", err)))
            return rc;
    } else {
        /* an odd row's last element is in neither half, as in ggml */
        if ((rc = check_dst_shape(node, a->ne[0] / 2, a->ne[1], a->ne[2], a->ne[3], err))) return rc;
    }
    if ((rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

/* y = act(x) * g over n f32 values. */
static void glu_row_f32(const struct ferry_tensor *node, float *y, const float *x, const float *g,
                        int64_t n) {
    switch (node->op_params[0]) {
    case FERRY_GLU_REGLU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] * g[i] : 0.0f;
        break;
    case FERRY_GLU_GEGLU:
        /* gelu(x) lands in y first; y == g would need the old g */
        if (y == g) {
            const uint16_t *table = ferry_gelu_table();
            for (int64_t i = 0; i < n; i++) y[i] = act_gelu_f32(table, x[i]) * g[i];
        } else {
            ferry_vec_f16_table_f32(y, x, n, ferry_gelu_table(), true);
            vec_mul_f32(y, y, g, n);
        }
        break;
    case FERRY_GLU_SWIGLU:
        ferry_vec_swiglu_f32(y, x, g, n);
        break;
    case FERRY_GLU_SWIGLU_OAI: {
        const float alpha = ferry_param_f32(node, 2), limit = ferry_param_f32(node, 3);
        for (int64_t i = 0; i < n; i++) {
            /* std::min(x, limit) and std::clamp(g, -limit, limit), as ggml */
            const float xc = limit < x[i] ? limit : x[i];
            const float gc = g[i] < -limit ? -limit : (limit < g[i] ? limit : g[i]);
            y[i] = xc / (1.0f + expf(alpha * (-xc))) * (gc + 1.0f);
        }
        break;
    }
    case FERRY_GLU_GEGLU_ERF:
        for (int64_t i = 0; i < n; i++) y[i] = act_gelu_erf(x[i]) * g[i];
        break;
    case FERRY_GLU_GEGLU_QUICK:
        if (y == g) {
            const uint16_t *table = ferry_gelu_quick_table();
            for (int64_t i = 0; i < n; i++) y[i] = act_gelu_quick_f32(table, x[i]) * g[i];
        } else {
            ferry_vec_f16_table_f32(y, x, n, ferry_gelu_quick_table(), false);
            vec_mul_f32(y, y, g, n);
        }
        break;
    default: break;
    }
}

/* The F16 form, in chunks through f32. */
static void glu_row_f16(const struct ferry_tensor *node, uint16_t *y, const uint16_t *x,
                        const uint16_t *g, int64_t n) {
    const int32_t op = node->op_params[0];
    const uint16_t *table = op == FERRY_GLU_GEGLU ? ferry_gelu_table()
                            : op == FERRY_GLU_GEGLU_QUICK ? ferry_gelu_quick_table()
                                                          : NULL;
    float fx[CHUNK], fg[CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        const int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;
        ferry_cvt_to_f32(FERRY_TYPE_F16, g + i0, fg, m);
        if (table) {
            for (int64_t i = 0; i < m; i++) fx[i] = fp16_to_fp32(table[x[i0 + i]]);
            vec_mul_f32(fx, fx, fg, m);
        } else {
            ferry_cvt_to_f32(FERRY_TYPE_F16, x + i0, fx, m);
            glu_row_f32(node, fx, fx, fg, m);
        }
        ferry_cvt_from_f32(FERRY_TYPE_F16, fx, y + i0, m);
    }
}

static void glu_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const size_t ts = ferry_type_size(a->type);
    const int64_t n = node->ne[0];
    const bool swapped = node->op_params[1] != 0;
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3), *g;
        if (b) {
            g = tensor_row(b, i1, i2, i3);
        } else {
            g = x + (swapped ? 0 : n * (int64_t)ts);
            x = x + (swapped ? n * (int64_t)ts : 0);
        }
        void *y = tensor_row(node, i1, i2, i3);
        if (a->type == FERRY_TYPE_F16)
            glu_row_f16(node, y, (const uint16_t *)x, (const uint16_t *)g, n);
        else
            glu_row_f32(node, y, (const float *)x, (const float *)g, n);
    }
}

const struct ferry_kernel ferry_kernel_glu = { glu_check, NULL, glu_compute };
