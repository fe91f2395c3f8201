/* POOL_1D, POOL_2D and POOL_2D_BACK (docs/ops.md B.24).
 *
 * P[0] is the pool: 0 max, 1 average (ggml's COUNT is not computed by its
 * CPU backend either). Windows that reach past the input skip the missing
 * taps; max starts from -FLT_MAX. POOL_1D averages over the taps inside,
 * POOL_2D over the whole window (k0*k1), as ggml does. */
#include <float.h>
#include <math.h>

#include "conv_util.h"
#include "family_conv.h"

enum { POOL_MAX = 0, POOL_AVG = 1 };

/* ggml sizes pooling outputs in f32: (in + 2p - k)/s + 1, truncated. False
 * when that is not a representable count. */
static bool pool_out_len(int64_t in, int64_t k, int64_t s, int64_t p, int64_t *out) {
    const float v = ((float)in + 2.0f * (float)p - (float)k) / (float)s + 1.0f;
    if (!(v > -1.0f && v < 9.0e18f)) return false; /* NaN too */
    *out = (int64_t)v;
    return true;
}

/* max in ggml's comparison order: a NaN tap replaces the running value. */
static inline float pool_max(float v, float res) { return v < res ? res : v; }

/* Source types F32 or F16, output F32, the pool kind, and positive kernel
 * sizes and strides (n of each, kernels from P[1], strides from P[1+n]). */
static int check_pool_common(const struct ferry_tensor *node, int n, struct ferry_error *err) {
    static const enum ferry_type in[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "src0", node->src[0]->type, in, 2, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)) ||
        (rc = check_params_positive(node, 1, 2 * n, "kernel size and stride", err)))
        return rc;
    const int32_t op = ferry_param_i32(node, 0);
    if (op != POOL_MAX && op != POOL_AVG)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: pool type %d is not max (0) or avg (1)",
                          ferry_op_name(node->op), (int)op);
    return FERRY_OK;
}

/* ---- POOL_1D: P = op, k0, s0, p0 ---- */

static int check_pool_1d(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_pool_common(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    int64_t ow;
    if (!pool_out_len(a->ne[0], ferry_param_i32(node, 1), ferry_param_i32(node, 2), ferry_param_i32(node, 3), &ow))
        return ferry_fail(err, FERRY_ERR_INVALID, "POOL_1D: output size out of range");
    return check_dst_shape(node, ow, a->ne[1], a->ne[2], a->ne[3], err);
}

static void pool_1d_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const int32_t op = ferry_param_i32(node, 0);
    const int64_t k = ferry_param_i32(node, 1), s = ferry_param_i32(node, 2), pad = ferry_param_i32(node, 3);
    const char *x = tensor_row(a, i1, i2, i3);
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t o = 0; o < node->ne[0]; o++) {
        float res = op == POOL_MAX ? -FLT_MAX : 0.0f;
        int count = 0;
        for (int64_t t = 0; t < k; t++) {
            const int64_t j = o * s - pad + t;
            if (j < 0 || j >= a->ne[0]) continue;
            const float v = load_f32(a->type, x + j * (int64_t)a->nb[0]);
            res = op == POOL_MAX ? pool_max(v, res) : res + v;
            count++;
        }
        if (op == POOL_AVG) res = count > 0 ? res / (float)count : 0.0f;
        memcpy(y + o * (int64_t)node->nb[0], &res, sizeof res);
    }
}

/* ---- POOL_2D: P = op, k0, k1, s0, s1, p0, p1 ---- */

static int check_pool_2d(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_pool_common(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    int64_t ow, oh;
    if (!pool_out_len(a->ne[0], ferry_param_i32(node, 1), ferry_param_i32(node, 3), ferry_param_i32(node, 5), &ow) ||
        !pool_out_len(a->ne[1], ferry_param_i32(node, 2), ferry_param_i32(node, 4), ferry_param_i32(node, 6), &oh))
        return ferry_fail(err, FERRY_ERR_INVALID, "POOL_2D: output size out of range");
    return check_dst_shape(node, ow, oh, a->ne[2], a->ne[3], err);
}

static float pool_2d_elem(const struct ferry_tensor *a, int32_t op, const int64_t k[2], int64_t ix, int64_t iy,
                          int64_t i2, int64_t i3) {
    float res = op == POOL_MAX ? -FLT_MAX : 0.0f;
    for (int64_t ky = 0; ky < k[1]; ky++) {
        if (iy + ky < 0 || iy + ky >= a->ne[1]) continue;
        for (int64_t kx = 0; kx < k[0]; kx++) {
            if (ix + kx < 0 || ix + kx >= a->ne[0]) continue;
            const float v = load_f32(a->type, tensor_at(a, ix + kx, iy + ky, i2, i3));
            res = op == POOL_MAX ? pool_max(v, res) : res + v;
        }
    }
    /* ggml divides by the window's size as an int, converted to f32 */
    return op == POOL_AVG ? res / (float)(int32_t)(k[0] * k[1]) : res;
}

static void pool_2d_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const int32_t op = ferry_param_i32(node, 0);
    const int64_t k[2] = { ferry_param_i32(node, 1), ferry_param_i32(node, 2) };
    const int64_t s0 = ferry_param_i32(node, 3), s1 = ferry_param_i32(node, 4);
    const int64_t p0 = ferry_param_i32(node, 5), p1 = ferry_param_i32(node, 6);
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t o = 0; o < node->ne[0]; o++) {
        const float v = pool_2d_elem(node->src[0], op, k, o * s0 - p0, i1 * s1 - p1, i2, i3);
        memcpy(y + o * (int64_t)node->nb[0], &v, sizeof v);
    }
}

static int check_pool(const struct ferry_tensor *node, struct ferry_error *err) {
    return node->op == FERRY_OP_POOL_1D ? check_pool_1d(node, err) : check_pool_2d(node, err);
}

static void pool_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        if (node->op == FERRY_OP_POOL_1D) pool_1d_row(node, i1, i2, i3);
        else pool_2d_row(node, i1, i2, i3);
    }
}

const struct ferry_kernel ferry_kernel_pool = { check_pool, NULL, pool_compute };

/* ---- POOL_2D_BACK ----
 * src0: the gradient of POOL_2D's output (F32), src1: POOL_2D's input
 * (F32 or F16, the node's type), node: its gradient, src1's shape. Each
 * (i2, i3) plane is one thread's: windows overlap, so a plane's sums are
 * made in ggml's order, window after window. */

static int check_pool_2d_back(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    static const enum ferry_type out[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *g = node->src[0], *af = node->src[1];
    if ((rc = check_type_in(node, "src0", g->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, out, 2, err)) ||
        (rc = check_params_positive(node, 1, 4, "kernel size and stride", err)) ||
        (rc = check_same_shape(node, af, node, err)))
        return rc;
    if (af->type != node->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "POOL_2D_BACK: src1 type %s differs from the output's %s",
                          ferry_type_name(af->type), ferry_type_name(node->type));
    const int32_t op = ferry_param_i32(node, 0);
    if (op != POOL_MAX && op != POOL_AVG)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "POOL_2D_BACK: pool type %d is not max (0) or avg (1)", (int)op);
    int64_t ow, oh;
    if (!pool_out_len(node->ne[0], ferry_param_i32(node, 1), ferry_param_i32(node, 3), ferry_param_i32(node, 5), &ow) ||
        !pool_out_len(node->ne[1], ferry_param_i32(node, 2), ferry_param_i32(node, 4), ferry_param_i32(node, 6), &oh))
        return ferry_fail(err, FERRY_ERR_INVALID, "POOL_2D_BACK: output size out of range");
    if (g->ne[0] != ow || g->ne[1] != oh || g->ne[2] != node->ne[2] || g->ne[3] != node->ne[3])
        return ferry_fail(err, FERRY_ERR_INVALID, "POOL_2D_BACK: gradient shape does not match the pooling");
    return FERRY_OK;
}

/* out[j] += v, in the node's type (F16 rounds after every addition). */
static void add_to(struct ferry_tensor *node, void *q, float v) {
    store_f32(node->type, q, load_f32(node->type, q) + v);
}

/* Window (ox, oy) of plane (i2, i3): its gradient goes to the first
 * strict maximum of the forward input (max) or to every tap inside (avg). */
static void pool_back_window(struct ferry_tensor *node, int64_t ox, int64_t oy, int64_t i2, int64_t i3) {
    const struct ferry_tensor *gr = node->src[0], *af = node->src[1];
    const int32_t op = ferry_param_i32(node, 0);
    const int64_t k0 = ferry_param_i32(node, 1), k1 = ferry_param_i32(node, 2);
    const int64_t ix = ox * ferry_param_i32(node, 3) - ferry_param_i32(node, 5);
    const int64_t iy = oy * ferry_param_i32(node, 4) - ferry_param_i32(node, 6);
    const float grad = load_f32(FERRY_TYPE_F32, tensor_at(gr, ox, oy, i2, i3));
    float maxval = -FLT_MAX;
    int64_t bx = -1, by = -1;
    const float share = grad / (float)(int32_t)(k0 * k1);
    for (int64_t ky = 0; ky < k1; ky++) {
        if (iy + ky < 0 || iy + ky >= node->ne[1]) continue;
        for (int64_t kx = 0; kx < k0; kx++) {
            if (ix + kx < 0 || ix + kx >= node->ne[0]) continue;
            if (op == POOL_AVG) {
                add_to(node, tensor_at(node, ix + kx, iy + ky, i2, i3), share);
                continue;
            }
            const float v = load_f32(af->type, tensor_at(af, ix + kx, iy + ky, i2, i3));
            if (v <= maxval) continue;
            maxval = v;
            bx = ix + kx;
            by = iy + ky;
        }
    }
    if (op == POOL_MAX && bx >= 0) add_to(node, tensor_at(node, bx, by, i2, i3), grad);
}

static void pool_2d_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *gr = node->src[0];
    int64_t r0, r1;
    split_range(node->ne[2] * node->ne[3], p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i2 = r % node->ne[2], i3 = r / node->ne[2];
        for (int64_t y = 0; y < node->ne[1]; y++)
            for (int64_t x = 0; x < node->ne[0]; x++) store_f32(node->type, tensor_at(node, x, y, i2, i3), 0.0f);
        for (int64_t oy = 0; oy < gr->ne[1]; oy++)
            for (int64_t ox = 0; ox < gr->ne[0]; ox++) pool_back_window(node, ox, oy, i2, i3);
    }
}

const struct ferry_kernel ferry_kernel_pool_2d_back = { check_pool_2d_back, NULL, pool_2d_back_compute };
