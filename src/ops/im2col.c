/* IM2COL, IM2COL_3D, IM2COL_BACK and COL2IM_1D (docs/ops.md B.24): moving
 * image patches into matrix rows and back.
 *
 * Every kernel walks the output row by row (rows split between threads),
 * so each element is written by one thread, and reads and writes through
 * every tensor's strides. Patches that reach past the image read zeros. */
#include "conv_util.h"
#include "family_conv.h"

/* ---- IM2COL ---- */

/* The shape of an IM2COL (or IM2COL_BACK) problem. 1-D is 2-D with one
 * image row and one kernel row. */
struct im2col_geom {
    int64_t n, ic, ih, iw, kh, kw, oh, ow;
    int64_t s0, s1, p0, p1, d0, d1;
    bool is_2d;
};

/* The image b [IW, IH, IC, N] (1-D: [IW, IC, N]) and kernel a [KW, KH, ...]
 * (1-D: [KW, ...]) give the geometry; the output length follows from the
 * params. */
static bool im2col_geom(const struct ferry_tensor *node, const struct ferry_tensor *image,
                        const struct ferry_tensor *kernel, struct im2col_geom *g) {
    g->is_2d = ferry_param_i32(node, 6) == 1; /* anything else is 1-D, as in ggml */
    g->s0 = ferry_param_i32(node, 0);
    g->s1 = ferry_param_i32(node, 1);
    g->p0 = ferry_param_i32(node, 2);
    g->p1 = ferry_param_i32(node, 3);
    g->d0 = ferry_param_i32(node, 4);
    g->d1 = ferry_param_i32(node, 5);
    g->iw = image->ne[0];
    g->ih = g->is_2d ? image->ne[1] : 1;
    g->ic = g->is_2d ? image->ne[2] : image->ne[1];
    g->n = g->is_2d ? image->ne[3] : image->ne[2];
    g->kw = kernel->ne[0];
    g->kh = g->is_2d ? kernel->ne[1] : 1;
    if (!g->is_2d) { /* the unused vertical params must not matter */
        g->s1 = 1;
        g->p1 = 0;
        g->d1 = 1;
    }
    g->oh = 1;
    return conv_out_len(g->iw, g->kw, g->s0, g->p0, g->d0, &g->ow) &&
           (!g->is_2d || conv_out_len(g->ih, g->kh, g->s1, g->p1, g->d1, &g->oh));
}

/* Checks params and the column matrix's shape [IC*KH*KW, OW, OH, N]
 * (1-D: [IC*KW, OW, N, 1]) for IM2COL's output or IM2COL_BACK's src0. */
static int check_im2col_geom(const struct ferry_tensor *node, const struct ferry_tensor *cols,
                             const struct im2col_geom *g, bool ok, struct ferry_error *err) {
    const char *op = ferry_op_name(node->op);
    if (g->s0 <= 0 || g->d0 <= 0 || g->s1 <= 0 || g->d1 <= 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: strides and dilations must be > 0", op);
    if (!ok) return ferry_fail(err, FERRY_ERR_INVALID, "%s: output size overflows", op);
    int64_t row;
    if (__builtin_mul_overflow(g->kh, g->kw, &row) || __builtin_mul_overflow(row, g->ic, &row))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: patch size overflows", op);
    const int64_t want[4] = { row, g->ow, g->is_2d ? g->oh : g->n, g->is_2d ? g->n : 1 };
    for (int d = 0; d < 4; d++)
        if (cols->ne[d] != want[d])
            return ferry_fail(err, FERRY_ERR_INVALID,
                              "%s: columns [%lld,%lld,%lld,%lld] should be [%lld,%lld,%lld,%lld]", op,
                              (long long)cols->ne[0], (long long)cols->ne[1], (long long)cols->ne[2],
                              (long long)cols->ne[3], (long long)want[0], (long long)want[1],
                              (long long)want[2], (long long)want[3]);
    return FERRY_OK;
}

static int check_im2col(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *b = node->src[1];
    /* ggml's F32 output reads an F32 image only; its F16 output either */
    if (node->type == FERRY_TYPE_F32) {
        static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
        rc = check_type_in(node, "src1 (with an F32 output)", b->type, f32, 1, err);
    } else {
        static const enum ferry_type both[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
        static const enum ferry_type f16[] = { FERRY_TYPE_F16 };
        if (!(rc = check_type_in(node, "output", node->type, f16, 1, err)))
            rc = check_type_in(node, "src1", b->type, both, 2, err);
    }
    if (rc) return rc;
    struct im2col_geom g;
    bool ok = im2col_geom(node, b, node->src[0], &g);
    return check_im2col_geom(node, node, &g, ok, err);
}

/* One column row: the patch of output position (ow, oh) of image n. */
static void im2col_row(struct ferry_tensor *node, const struct im2col_geom *g, int64_t ow, int64_t oh,
                       int64_t n, char *y) {
    const struct ferry_tensor *b = node->src[1];
    const size_t sy = node->nb[0];
    int64_t e = 0;
    for (int64_t c = 0; c < g->ic; c++)
        for (int64_t ky = 0; ky < g->kh; ky++) {
            const int64_t iy = oh * g->s1 + ky * g->d1 - g->p1;
            for (int64_t kx = 0; kx < g->kw; kx++, e++) {
                const int64_t ix = ow * g->s0 + kx * g->d0 - g->p0;
                float v = 0.0f;
                if (iy >= 0 && iy < g->ih && ix >= 0 && ix < g->iw)
                    v = load_f32(b->type, g->is_2d ? tensor_at(b, ix, iy, c, n) : tensor_at(b, ix, c, n, 0));
                store_f32(node->type, y + e * (int64_t)sy, v); /* f16 -> f32 -> f16 is exact */
            }
        }
}

static void im2col_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct im2col_geom g;
    im2col_geom(node, node->src[1], node->src[0], &g);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        im2col_row(node, &g, i1, g.is_2d ? i2 : 0, g.is_2d ? i3 : i2, tensor_row(node, i1, i2, i3));
    }
}

const struct ferry_kernel ferry_kernel_im2col = { check_im2col, NULL, im2col_compute };

/* ---- IM2COL_BACK ---- */

/* src0: the gradient of IM2COL's output (F32 columns), src1: the kernel
 * (shape only), node: the image's gradient [IW, IH, IC, N], F32. */
static int check_im2col_back(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    static const enum ferry_type kt[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "src0", node->src[0]->type, f32, 1, err)) ||
        (rc = check_type_in(node, "src1", node->src[1]->type, kt, 2, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)))
        return rc;
    struct im2col_geom g;
    bool ok = im2col_geom(node, node, node->src[1], &g);
    if (!g.is_2d && node->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "IM2COL_BACK: a 1-D image has ne[3] = 1");
    return check_im2col_geom(node, node->src[0], &g, ok, err);
}

/* Image element (ix, iy) of channel c, image n: the sum of every column
 * entry that IM2COL copied from it, kernel rows then columns in order. */
static float im2col_back_elem(const struct ferry_tensor *cols, const struct im2col_geom *g, int64_t ix,
                              int64_t iy, int64_t c, int64_t n) {
    float grad = 0.0f;
    for (int64_t ky = 0; ky < g->kh; ky++) {
        const int64_t ty = iy + g->p1 - ky * g->d1;
        if (ty % g->s1 != 0) continue; /* a row the forward pass stepped over */
        const int64_t oh = ty / g->s1;
        if (oh < 0 || oh >= g->oh) continue;
        for (int64_t kx = 0; kx < g->kw; kx++) {
            const int64_t tx = ix + g->p0 - kx * g->d0;
            if (tx % g->s0 != 0) continue;
            const int64_t ow = tx / g->s0;
            if (ow < 0 || ow >= g->ow) continue;
            const int64_t e = (c * g->kh + ky) * g->kw + kx;
            const void *src = g->is_2d ? tensor_at(cols, e, ow, oh, n) : tensor_at(cols, e, ow, n, 0);
            grad += load_f32(FERRY_TYPE_F32, src);
        }
    }
    return grad;
}

static void im2col_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct im2col_geom g;
    im2col_geom(node, node, node->src[1], &g);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const int64_t iy = g.is_2d ? i1 : 0, c = g.is_2d ? i2 : i1, n = g.is_2d ? i3 : i2;
        char *y = tensor_row(node, i1, i2, i3);
        for (int64_t ix = 0; ix < g.iw; ix++)
            store_f32(FERRY_TYPE_F32, y + ix * (int64_t)node->nb[0],
                      im2col_back_elem(node->src[0], &g, ix, iy, c, n));
    }
}

const struct ferry_kernel ferry_kernel_im2col_back = { check_im2col_back, NULL, im2col_back_compute };

/* ---- IM2COL_3D ---- */

struct im2col3_geom {
    int64_t n, ic, in[3], k[3], out[3], s[3], p[3], d[3];
};

/* P[0..2] strides, P[3..5] paddings, P[6..8] dilations (width, height,
 * depth), P[9] IC. Image b [IW, IH, ID, N*IC], kernel a [KW, KH, KD, ...]. */
static bool im2col3_geom(const struct ferry_tensor *node, struct im2col3_geom *g) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    g->ic = ferry_param_i32(node, 9);
    g->n = g->ic > 0 ? b->ne[3] / g->ic : 0;
    bool ok = true;
    for (int i = 0; i < 3; i++) {
        g->s[i] = ferry_param_i32(node, i);
        g->p[i] = ferry_param_i32(node, 3 + i);
        g->d[i] = ferry_param_i32(node, 6 + i);
        g->in[i] = b->ne[i];
        g->k[i] = a->ne[i];
        ok = ok && conv_out_len(g->in[i], g->k[i], g->s[i], g->p[i], g->d[i], &g->out[i]);
    }
    return ok;
}

static int check_im2col_3d(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    static const enum ferry_type out[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "src1", node->src[1]->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, out, 2, err)) ||
        (rc = check_params_positive(node, 0, 3, "stride", err)) ||
        (rc = check_params_positive(node, 6, 3, "dilation", err)) ||
        (rc = check_params_positive(node, 9, 1, "IC", err)))
        return rc;
    struct im2col3_geom g;
    if (!im2col3_geom(node, &g)) return ferry_fail(err, FERRY_ERR_INVALID, "IM2COL_3D: output size overflows");
    int64_t row, planes;
    if (__builtin_mul_overflow(g.k[0], g.k[1], &row) || __builtin_mul_overflow(row, g.k[2], &row) ||
        __builtin_mul_overflow(row, g.ic, &row) || __builtin_mul_overflow(g.out[2], g.n, &planes))
        return ferry_fail(err, FERRY_ERR_INVALID, "IM2COL_3D: output size overflows");
    return check_dst_shape(node, row, g.out[0], g.out[1], planes, err);
}

static void im2col_3d_row(struct ferry_tensor *node, const struct im2col3_geom *g, int64_t ox, int64_t oy,
                          int64_t oz, int64_t n, char *y) {
    const struct ferry_tensor *b = node->src[1];
    const size_t sy = node->nb[0];
    int64_t e = 0;
    for (int64_t c = 0; c < g->ic; c++)
        for (int64_t kz = 0; kz < g->k[2]; kz++) {
            const int64_t iz = oz * g->s[2] + kz * g->d[2] - g->p[2];
            for (int64_t ky = 0; ky < g->k[1]; ky++) {
                const int64_t iy = oy * g->s[1] + ky * g->d[1] - g->p[1];
                for (int64_t kx = 0; kx < g->k[0]; kx++, e++) {
                    const int64_t ix = ox * g->s[0] + kx * g->d[0] - g->p[0];
                    float v = 0.0f;
                    if (iz >= 0 && iz < g->in[2] && iy >= 0 && iy < g->in[1] && ix >= 0 && ix < g->in[0])
                        v = load_f32(FERRY_TYPE_F32, tensor_at(b, ix, iy, iz, n * g->ic + c));
                    store_f32(node->type, y + e * (int64_t)sy, v);
                }
            }
        }
}

static void im2col_3d_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct im2col3_geom g;
    im2col3_geom(node, &g);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        /* output [row, OW, OH, OD*N]: i3 = n*OD + od */
        im2col_3d_row(node, &g, i1, i2, i3 % g.out[2], i3 / g.out[2], tensor_row(node, i1, i2, i3));
    }
}

const struct ferry_kernel ferry_kernel_im2col_3d = { check_im2col_3d, NULL, im2col_3d_compute };

/* ---- COL2IM_1D ---- */

/* src0 [K*OC, T_in] -> node [T_out, OC], both F32, F16 or BF16 (the same);
 * P[0] stride, P[1] OC, P[2] padding cropped from both ends. */
static int check_col2im_1d(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, types, 3, err))) return rc;
    if (node->type != a->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "COL2IM_1D: output type %s differs from src0 type %s",
                          ferry_type_name(node->type), ferry_type_name(a->type));
    if ((rc = check_params_positive(node, 0, 2, "stride and OC", err))) return rc;
    const int64_t s = ferry_param_i32(node, 0), oc = ferry_param_i32(node, 1), pad = ferry_param_i32(node, 2);
    if (pad < 0) return ferry_fail(err, FERRY_ERR_INVALID, "COL2IM_1D: padding %lld is negative", (long long)pad);
    if (a->ne[2] != 1 || a->ne[3] != 1 || a->ne[0] % oc != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "COL2IM_1D: src0 must be a [K*OC, T_in] matrix, OC = %lld",
                          (long long)oc);
    int64_t t_out;
    if (!conv_transpose_len(a->ne[1], a->ne[0] / oc, s, &t_out) || __builtin_sub_overflow(t_out, 2 * pad, &t_out))
        return ferry_fail(err, FERRY_ERR_INVALID, "COL2IM_1D: output size overflows");
    if (t_out < 0) return ferry_fail(err, FERRY_ERR_INVALID, "COL2IM_1D: padding crops the whole signal");
    return check_dst_shape(node, t_out, oc, 1, 1, err);
}

/* Output sample t of channel c: the sum, in f32 and in column order, of
 * every column entry (c*K + k, t_in) with t_in*s + k = t + pad. */
static float col2im_elem(const struct ferry_tensor *a, int64_t k_len, int64_t s, int64_t pad, int64_t c,
                         int64_t t) {
    const int64_t abs_t = t + pad;
    int64_t lo = abs_t - k_len + 1 <= 0 ? 0 : (abs_t - k_len + 1 + s - 1) / s;
    int64_t hi = abs_t / s;
    if (hi > a->ne[1] - 1) hi = a->ne[1] - 1;
    float sum = 0.0f;
    for (int64_t ti = lo; ti <= hi; ti++) {
        const int64_t k = abs_t - ti * s;
        if (k >= 0 && k < k_len) sum += load_f32(a->type, tensor_at(a, c * k_len + k, ti, 0, 0));
    }
    return sum;
}

static void col2im_1d_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t s = ferry_param_i32(node, 0), oc = ferry_param_i32(node, 1), pad = ferry_param_i32(node, 2);
    const int64_t k_len = a->ne[0] / oc;
    int64_t r0, r1;
    split_range(node->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t c = r0; c < r1; c++) {
        char *y = tensor_row(node, c, 0, 0);
        for (int64_t t = 0; t < node->ne[0]; t++)
            store_f32(node->type, y + t * (int64_t)node->nb[0], col2im_elem(a, k_len, s, pad, c, t));
    }
}

const struct ferry_kernel ferry_kernel_col2im_1d = { check_col2im_1d, NULL, col2im_1d_compute };
