/* UPSCALE, PAD_REFLECT_1D, ROLL, WIN_PART, WIN_UNPART, GET_REL_POS and
 * ADD_REL_POS (docs/ops.md B.24): ops that resample or rearrange images.
 * Each works row by row on the output (rows split between threads) and
 * addresses every tensor through its strides. */
#include <float.h>
#include <math.h>

#include "conv_util.h"
#include "family_conv.h"

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };

/* One F32 source and an F32 output. */
static int check_f32_unary(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "src0", node->src[0]->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)))
        return rc;
    return FERRY_OK;
}

static inline float get_f(const void *p) { float v; memcpy(&v, p, sizeof v); return v; }
static inline void put_f(void *p, float v) { memcpy(p, &v, sizeof v); }

/* ---- UPSCALE ----
 * P[0]: mode in the low byte (0 nearest, 1 bilinear, 2 bicubic), flags
 * 0x100 align corners, 0x200 antialias (bilinear only). Any output size;
 * every number below is ggml's f32 arithmetic, step for step. */

enum { SCALE_NEAREST = 0, SCALE_BILINEAR = 1, SCALE_BICUBIC = 2 };
#define SCALE_ALIGN_CORNERS 0x100
#define SCALE_ANTIALIAS 0x200

struct upscale_geom {
    float sf[4], pixel_offset;
    int mode;
    bool antialias;
};

static void upscale_geom(const struct ferry_tensor *node, struct upscale_geom *g) {
    const struct ferry_tensor *a = node->src[0];
    const int32_t flags = ferry_param_i32(node, 0);
    for (int d = 0; d < 4; d++) g->sf[d] = (float)node->ne[d] / (float)a->ne[d];
    g->pixel_offset = 0.5f;
    g->mode = flags & 0xff;
    g->antialias = (flags & SCALE_ANTIALIAS) != 0 && g->mode == SCALE_BILINEAR;
    if (flags & SCALE_ALIGN_CORNERS) {
        g->pixel_offset = 0.0f;
        for (int d = 0; d < 2; d++)
            if (node->ne[d] > 1 && a->ne[d] > 1) g->sf[d] = (float)(node->ne[d] - 1) / (float)(a->ne[d] - 1);
    }
}

static int check_upscale(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_unary(node, err);
    if (rc) return rc;
    const int mode = ferry_param_i32(node, 0) & 0xff;
    if (mode > SCALE_BICUBIC)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "UPSCALE: mode %d is not nearest, bilinear or bicubic", mode);
    for (int d = 0; d < 4; d++)
        if (node->src[0]->ne[d] == 0 && node->ne[d] != 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "UPSCALE: cannot scale an empty dimension %d", d);
    return FERRY_OK;
}

/* Index i of a dimension scaled by sf, truncated as ggml converts it, and
 * kept inside the source (f32 rounding must never step past its end). */
static inline int64_t nearest_index(int64_t i, float sf, int64_t n) {
    const int64_t j = (int64_t)((float)i / sf);
    return j < 0 ? 0 : j >= n ? n - 1 : j;
}

static inline int64_t clamp_i(int64_t v, int64_t n) { return v < 0 ? 0 : v > n - 1 ? n - 1 : v; }
static inline float clamp01(float v) { return fmaxf(0.0f, fminf(v, 1.0f)); }

static inline float src_px(const struct ferry_tensor *a, int64_t x, int64_t y, int64_t i2, int64_t i3) {
    return get_f(tensor_at(a, x, y, i2, i3));
}

static float upscale_bilinear(const struct ferry_tensor *a, const struct upscale_geom *g, int64_t i0, int64_t i1,
                              int64_t i2, int64_t i3) {
    const float y = ((float)i1 + g->pixel_offset) / g->sf[1] - g->pixel_offset;
    const float x = ((float)i0 + g->pixel_offset) / g->sf[0] - g->pixel_offset;
    const int64_t y0 = clamp_i((int64_t)floorf(y), a->ne[1]), y1 = clamp_i((int64_t)floorf(y) + 1, a->ne[1]);
    const int64_t x0 = clamp_i((int64_t)floorf(x), a->ne[0]), x1 = clamp_i((int64_t)floorf(x) + 1, a->ne[0]);
    const float dy = clamp01(y - (float)y0), dx = clamp01(x - (float)x0);
    const float pa = src_px(a, x0, y0, i2, i3), pb = src_px(a, x1, y0, i2, i3);
    const float pc = src_px(a, x0, y1, i2, i3), pd = src_px(a, x1, y1, i2, i3);
    return pa * (1 - dx) * (1 - dy) + pb * dx * (1 - dy) + pc * (1 - dx) * dy + pd * dx * dy;
}

static inline float tri_filter(float x) { return fmaxf(1.0f - fabsf(x), 0.0f); }

/* Bilinear with antialiasing (a triangle filter widened by the downscale
 * factor, weights normalised), as PyTorch's antialias=True. */
static float upscale_antialias(const struct ferry_tensor *a, const struct upscale_geom *g, int64_t i0, int64_t i1,
                               int64_t i2, int64_t i3) {
    const float po = g->pixel_offset;
    const float support1 = fmaxf(1.0f, 1.0f / g->sf[1]), invscale1 = 1.0f / support1;
    const float support0 = fmaxf(1.0f, 1.0f / g->sf[0]), invscale0 = 1.0f / support0;
    const float y = ((float)i1 + po) / g->sf[1];
    const float x = ((float)i0 + po) / g->sf[0];
    int64_t x_min = (int64_t)(x - support0 + po), x_max = (int64_t)(x + support0 + po);
    int64_t y_min = (int64_t)(y - support1 + po), y_max = (int64_t)(y + support1 + po);
    x_min = x_min < 0 ? 0 : x_min;
    y_min = y_min < 0 ? 0 : y_min;
    x_max = x_max > a->ne[0] ? a->ne[0] : x_max;
    y_max = y_max > a->ne[1] ? a->ne[1] : y_max;
    float val = 0.0f, total = 0.0f;
    for (int64_t sy = y_min; sy < y_max; sy++) {
        const float wy = tri_filter(((float)sy - y + po) * invscale1);
        for (int64_t sx = x_min; sx < x_max; sx++) {
            const float w = tri_filter(((float)sx - x + po) * invscale0) * wy;
            if (w <= 0.0f) continue;
            val += src_px(a, sx, sy, i2, i3) * w;
            total += w;
        }
    }
    return total > 0.0f ? val / total : val;
}

/* Keys' cubic convolution with a = -0.75 (PyTorch's choice). */
static inline float cubic_near(float x) { return ((-0.75f + 2) * x - (-0.75f + 3)) * x * x + 1; }
static inline float cubic_far(float x) {
    const float a = -0.75f;
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
}
static inline float cubic(float p0, float p1, float p2, float p3, float t) {
    return p0 * cubic_far(t + 1) + p1 * cubic_near(t) + p2 * cubic_near(1 - t) + p3 * cubic_far(2 - t);
}

static float upscale_bicubic(const struct ferry_tensor *a, const struct upscale_geom *g, int64_t i0, int64_t i1,
                             int64_t i2, int64_t i3) {
    const float y = ((float)i1 + g->pixel_offset) / g->sf[1] - g->pixel_offset;
    const float x = ((float)i0 + g->pixel_offset) / g->sf[0] - g->pixel_offset;
    const int64_t y0 = (int64_t)floorf(y), x0 = (int64_t)floorf(x);
    const float dy = y - (float)y0, dx = x - (float)x0;
    float rows[4];
    for (int r = 0; r < 4; r++) {
        const int64_t sy = clamp_i(y0 + r - 1, a->ne[1]);
        float p[4];
        for (int c = 0; c < 4; c++) p[c] = src_px(a, clamp_i(x0 + c - 1, a->ne[0]), sy, i2, i3);
        rows[r] = cubic(p[0], p[1], p[2], p[3], dx);
    }
    return cubic(rows[0], rows[1], rows[2], rows[3], dy);
}

static void upscale_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    struct upscale_geom g;
    upscale_geom(node, &g);
    const int64_t j2 = nearest_index(i2, g.sf[2], a->ne[2]), j3 = nearest_index(i3, g.sf[3], a->ne[3]);
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
        float v;
        if (g.mode == SCALE_NEAREST)
            v = src_px(a, nearest_index(i0, g.sf[0], a->ne[0]), nearest_index(i1, g.sf[1], a->ne[1]), j2, j3);
        else if (g.mode == SCALE_BILINEAR)
            v = g.antialias ? upscale_antialias(a, &g, i0, i1, j2, j3) : upscale_bilinear(a, &g, i0, i1, j2, j3);
        else
            v = upscale_bicubic(a, &g, i0, i1, j2, j3);
        put_f(y + i0 * (int64_t)node->nb[0], v);
    }
}

static void upscale_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, upscale_row);
}

const struct ferry_kernel ferry_kernel_upscale = { check_upscale, NULL, upscale_compute };

/* ---- PAD_REFLECT_1D: P[0] left, P[1] right, each < ne0 ---- */

static int check_pad_reflect_1d(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_unary(node, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    const int64_t p0 = ferry_param_i32(node, 0), p1 = ferry_param_i32(node, 1);
    if (p0 < 0 || p1 < 0 || p0 >= a->ne[0] || p1 >= a->ne[0])
        return ferry_fail(err, FERRY_ERR_INVALID, "PAD_REFLECT_1D: padding %lld/%lld must be in [0, %lld)",
                          (long long)p0, (long long)p1, (long long)a->ne[0]);
    return check_dst_shape(node, a->ne[0] + p0 + p1, a->ne[1], a->ne[2], a->ne[3], err);
}

/* Output i0 reflects about the row's ends without repeating them:
 * i0 - p0 < 0 reads -(i0 - p0), past the end reads 2*(n-1) - (i0 - p0). */
static void pad_reflect_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t p0 = ferry_param_i32(node, 0), n = a->ne[0];
    const char *x = tensor_row(a, i1, i2, i3);
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
        int64_t j = i0 - p0;
        if (j < 0) j = -j;
        else if (j >= n) j = 2 * (n - 1) - j;
        memcpy(y + i0 * (int64_t)node->nb[0], x + j * (int64_t)a->nb[0], sizeof(float));
    }
}

static void pad_reflect_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, pad_reflect_row);
}

const struct ferry_kernel ferry_kernel_pad_reflect_1d = { check_pad_reflect_1d, NULL, pad_reflect_compute };

/* ---- ROLL: P[0..3] shifts, |shift| < ne in each dimension ---- */

static int check_roll(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_unary(node, err);
    if (rc || (rc = check_same_shape(node, node->src[0], node, err))) return rc;
    for (int d = 0; d < 4; d++) {
        const int64_t s = ferry_param_i32(node, d);
        if ((s < 0 ? -s : s) >= node->ne[d])
            return ferry_fail(err, FERRY_ERR_INVALID, "ROLL: shift %lld in dim %d must be under %lld in size",
                              (long long)s, d, (long long)node->ne[d]);
    }
    return FERRY_OK;
}

/* (i - shift) wrapped into [0, n). */
static inline int64_t roll_src(int64_t i, int64_t shift, int64_t n) {
    int64_t j = i - shift;
    return j < 0 ? j + n : j >= n ? j - n : j;
}

static void roll_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const char *x = tensor_row(a, roll_src(i1, ferry_param_i32(node, 1), a->ne[1]),
                               roll_src(i2, ferry_param_i32(node, 2), a->ne[2]),
                               roll_src(i3, ferry_param_i32(node, 3), a->ne[3]));
    char *y = tensor_row(node, i1, i2, i3);
    const int64_t s0 = ferry_param_i32(node, 0);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++)
        memcpy(y + i0 * (int64_t)node->nb[0], x + roll_src(i0, s0, a->ne[0]) * (int64_t)a->nb[0], sizeof(float));
}

static void roll_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, roll_row);
}

const struct ferry_kernel ferry_kernel_roll = { check_roll, NULL, roll_compute };

/* ---- WIN_PART, WIN_UNPART ----
 * WIN_PART: src0 [C, W, H, 1] -> [C, w, w, npx*npy], P = npx, npy, w;
 * window (px, py) is plane py*npx + px, zero past the image's edge.
 * WIN_UNPART: src0 [C, w, w, np] -> [C, W, H, 1], P[0] = w; the windows
 * are laid npx = ceil(W/w) to a row. */

static int check_win(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_unary(node, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    const bool part = node->op == FERRY_OP_WIN_PART;
    const int64_t w = ferry_param_i32(node, part ? 2 : 0);
    if (w <= 0) return ferry_fail(err, FERRY_ERR_INVALID, "%s: window size %lld must be > 0", ferry_op_name(node->op), (long long)w);
    if (part) {
        if ((rc = check_params_positive(node, 0, 2, "window count", err))) return rc;
        if (a->ne[3] != 1) return ferry_fail(err, FERRY_ERR_INVALID, "WIN_PART: src0 must have ne[3] = 1");
        const int64_t np = (int64_t)ferry_param_i32(node, 0) * ferry_param_i32(node, 1);
        return check_dst_shape(node, a->ne[0], w, w, np, err);
    }
    const int64_t npx = (node->ne[1] + w - 1) / w, npy = (node->ne[2] + w - 1) / w;
    if (a->ne[1] != w || a->ne[2] != w || a->ne[0] != node->ne[0] || node->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "WIN_UNPART: src0 must be [C, w, w, np] and the output [C, W, H, 1]");
    int64_t need;
    if (__builtin_mul_overflow(npx, npy, &need) || a->ne[3] < need)
        return ferry_fail(err, FERRY_ERR_INVALID, "WIN_UNPART: %lld windows cover [%lld, %lld], need %lld",
                          (long long)a->ne[3], (long long)node->ne[1], (long long)node->ne[2], (long long)need);
    return FERRY_OK;
}

static void win_part_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t npx = ferry_param_i32(node, 0), w = ferry_param_i32(node, 2);
    const int64_t sx = (i3 % npx) * w + i1, sy = (i3 / npx) * w + i2;
    const bool inside = sx < a->ne[1] && sy < a->ne[2];
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++)
        put_f(y + i0 * (int64_t)node->nb[0], inside ? get_f(tensor_at(a, i0, sx, sy, 0)) : 0.0f);
}

static void win_unpart_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    (void)i3;
    const struct ferry_tensor *a = node->src[0];
    const int64_t w = ferry_param_i32(node, 0), npx = (node->ne[1] + w - 1) / w;
    const char *x = tensor_row(a, i1 % w, i2 % w, (i2 / w) * npx + i1 / w);
    char *y = tensor_row(node, i1, i2, 0);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++)
        memcpy(y + i0 * (int64_t)node->nb[0], x + i0 * (int64_t)a->nb[0], sizeof(float));
}

static void win_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, node->op == FERRY_OP_WIN_PART ? win_part_row : win_unpart_row);
}

const struct ferry_kernel ferry_kernel_win_part = { check_win, NULL, win_compute };

/* ---- GET_REL_POS ----
 * src0 [C, L] of F16 or BF16 -> [C, kh, qh, 1]: row (i1, i2) is src0 row
 * (kh - 1 - i1) + i2, its 16-bit values copied as they are (ggml copies
 * the bits, so the output type is F16 or BF16 too). */

static int check_get_rel_pos(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type half[] = { FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, half, 2, err)) ||
        (rc = check_type_in(node, "output", node->type, half, 2, err)))
        return rc;
    if (node->ne[0] != a->ne[0] || node->ne[3] != 1 || a->ne[2] != 1 || a->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "GET_REL_POS: src0 [C, L] -> [C, kh, qh, 1] expected");
    if (!ferry_is_empty(node) && node->ne[1] + node->ne[2] - 1 > a->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "GET_REL_POS: %lld positions need %lld src0 rows, it has %lld",
                          (long long)node->ne[1], (long long)(node->ne[1] + node->ne[2] - 1), (long long)a->ne[1]);
    return FERRY_OK;
}

static void get_rel_pos_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    (void)i3;
    const struct ferry_tensor *a = node->src[0];
    const char *x = tensor_row(a, node->ne[1] - 1 - i1 + i2, 0, 0);
    char *y = tensor_row(node, i1, i2, 0);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++)
        memcpy(y + i0 * (int64_t)node->nb[0], x + i0 * (int64_t)a->nb[0], 2);
}

static void get_rel_pos_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, get_rel_pos_row);
}

const struct ferry_kernel ferry_kernel_get_rel_pos = { check_get_rel_pos, NULL, get_rel_pos_compute };

/* ---- ADD_REL_POS ----
 * src0 [W*W, W*H, B, n3], src1 = pw and src2 = ph [W, W, H, B], all F32
 * -> src0's shape. Row r = i1 + W*H*i2 of the first n3 slice, column
 * h*W + w, gets ph[h, r] and pw[w, r] added in ggml's order (ph first when
 * h <= w); slices past the first are copied. P[0] (in place) needs nothing
 * different: every element is read before it is written. */

static int check_add_rel_pos(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *pw = node->src[1], *ph = node->src[2];
    if ((rc = check_type_in(node, "src0", a->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "src1", pw->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "src2", ph->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)) ||
        (rc = check_same_shape(node, pw, ph, err)) || (rc = check_same_shape(node, a, node, err)))
        return rc;
    int64_t sq, rows;
    if (__builtin_mul_overflow(pw->ne[0], pw->ne[0], &sq) || __builtin_mul_overflow(pw->ne[1], pw->ne[2], &rows) ||
        a->ne[0] != sq || a->ne[1] != rows || a->ne[2] != pw->ne[3])
        return ferry_fail(err, FERRY_ERR_INVALID, "ADD_REL_POS: src0 must be [W*W, W*H, B] for pw/ph [W, W, H, B]");
    return FERRY_OK;
}

static void add_rel_pos_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0], *pw = node->src[1], *ph = node->src[2];
    const int64_t w = pw->ne[0];
    /* row i1 of a is (i11, i12) of pw and ph; i2 is their i13 */
    const int64_t j1 = i1 % pw->ne[1], j2 = i1 / pw->ne[1];
    const char *x = tensor_row(a, i1, i2, i3);
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
        float v = get_f(x + i0 * (int64_t)a->nb[0]);
        if (i3 == 0) {
            const int64_t h = i0 / w, c = i0 % w;
            const float eh = get_f(tensor_at(ph, h, j1, j2, i2)), ew = get_f(tensor_at(pw, c, j1, j2, i2));
            v = h <= c ? (v + eh) + ew : (v + ew) + eh;
        }
        put_f(y + i0 * (int64_t)node->nb[0], v);
    }
}

static void add_rel_pos_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, add_rel_pos_row);
}

const struct ferry_kernel ferry_kernel_add_rel_pos = { check_add_rel_pos, NULL, add_rel_pos_compute };
