/* CONV_2D, CONV_3D, CONV_2D_DW, CONV_TRANSPOSE_1D and CONV_TRANSPOSE_2D
 * (docs/ops.md B.24).
 *
 * CONV_2D and CONV_3D share one path: the kernel is widened to f32 rows in
 * scratch (threads split it, then meet at a barrier), then each thread
 * takes a range of output positions, gathers their patches into its own
 * scratch (rounded to f16 when the kernel is F16, as ggml's im2col + f16
 * matrix product does) and takes one dot product per output channel. The
 * transposed convolutions gather too: every output element sums its
 * contributions in ggml's scatter order, so no two threads ever add into
 * one element. */
#include "conv_util.h"
#include "family_conv.h"

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };
static const enum ferry_type kernel_types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };

/* Source, kernel and output types every op here shares: an F32 image,
 * an F32 or F16 kernel, an F32 output. */
static int check_conv_types(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    if ((rc = check_type_in(node, "kernel (src0)", node->src[0]->type, kernel_types, 2, err)) ||
        (rc = check_type_in(node, "input (src1)", node->src[1]->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)))
        return rc;
    return FERRY_OK;
}

/* ---- CONV_2D, CONV_3D ---- */

enum { PATCH_BLOCK = 16 }; /* patches gathered per kernel pass */

struct conv_geom {
    bool is_3d;
    int64_t n, ic, oc, knl_n, patches;
    int64_t in[3], k[3], out[3], s[3], p[3], d[3];
};

/* CONV_2D: kernel a [KW, KH, IC, OC], input b [IW, IH, IC, N], params
 * s0 s1 p0 p1 d0 d1. CONV_3D: a [KW, KH, KD, OC*IC], b [IW, IH, ID, N*IC],
 * params s0 s1 s2 p0 p1 p2 d0 d1 d2 IC N OC. Returns false on overflow. */
static bool conv_geom(const struct ferry_tensor *node, struct conv_geom *g) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    g->is_3d = node->op == FERRY_OP_CONV_3D;
    const int dims = g->is_3d ? 3 : 2;
    bool ok = true;
    for (int i = 0; i < 3; i++) {
        const bool used = i < dims;
        g->s[i] = used ? ferry_param_i32(node, i) : 1;
        g->p[i] = used ? ferry_param_i32(node, dims + i) : 0;
        g->d[i] = used ? ferry_param_i32(node, 2 * dims + i) : 1;
        g->in[i] = used ? b->ne[i] : 1;
        g->k[i] = used ? a->ne[i] : 1;
        ok = ok && conv_out_len(g->in[i], g->k[i], g->s[i], g->p[i], g->d[i], &g->out[i]);
    }
    if (g->is_3d) {
        g->ic = ferry_param_i32(node, 9);
        g->n = ferry_param_i32(node, 10);
        g->oc = ferry_param_i32(node, 11);
    } else {
        g->ic = b->ne[2];
        g->n = b->ne[3];
        g->oc = a->ne[3];
    }
    ok = ok && !__builtin_mul_overflow(g->k[0], g->k[1], &g->knl_n) &&
         !__builtin_mul_overflow(g->knl_n, g->k[2], &g->knl_n) &&
         !__builtin_mul_overflow(g->knl_n, g->ic, &g->knl_n) &&
         !__builtin_mul_overflow(g->out[0], g->out[1], &g->patches) &&
         !__builtin_mul_overflow(g->patches, g->out[2], &g->patches) &&
         !__builtin_mul_overflow(g->patches, g->n, &g->patches);
    return ok;
}

static int check_conv(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_conv_types(node, err);
    if (rc) return rc;
    const bool is_3d = node->op == FERRY_OP_CONV_3D;
    const int dims = is_3d ? 3 : 2;
    if ((rc = check_params_positive(node, 0, dims, "stride", err)) ||
        (rc = check_params_positive(node, 2 * dims, dims, "dilation", err)) ||
        (is_3d && (rc = check_params_positive(node, 9, 3, "C, N, OC", err))))
        return rc;
    struct conv_geom g;
    if (!conv_geom(node, &g)) return ferry_fail(err, FERRY_ERR_INVALID, "%s: sizes overflow", ferry_op_name(node->op));
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (is_3d) {
        int64_t ka, kb, out3;
        if (__builtin_mul_overflow(g.oc, g.ic, &ka) || __builtin_mul_overflow(g.n, g.ic, &kb) ||
            __builtin_mul_overflow(g.n, g.oc, &out3) || a->ne[3] != ka || b->ne[3] != kb)
            return ferry_fail(err, FERRY_ERR_INVALID, "CONV_3D: kernel ne[3] must be OC*C and input ne[3] N*C");
        return check_dst_shape(node, g.out[0], g.out[1], g.out[2], out3, err);
    }
    if (a->ne[2] != b->ne[2])
        return ferry_fail(err, FERRY_ERR_INVALID, "CONV_2D: kernel has %lld input channels, input %lld",
                          (long long)a->ne[2], (long long)b->ne[2]);
    return check_dst_shape(node, g.out[0], g.out[1], g.oc, g.n, err);
}

/* Scratch: the kernel as f32 rows, then one patch block per thread. */
static size_t conv_kernel_bytes(const struct conv_geom *g) {
    return round_line(mul_sat(bytes_of(g->oc, sizeof(float)), (size_t)g->knl_n));
}
static size_t conv_slice_bytes(const struct conv_geom *g) {
    return round_line(bytes_of(g->knl_n, PATCH_BLOCK * sizeof(float)));
}

static size_t conv_work_size(const struct ferry_tensor *node, int nth) {
    struct conv_geom g;
    if (!conv_geom(node, &g)) return SIZE_MAX;
    return add_sat(conv_kernel_bytes(&g), mul_sat(conv_slice_bytes(&g), (size_t)nth));
}

static const void *conv_kernel_at(const struct ferry_tensor *a, const struct conv_geom *g, int64_t kx, int64_t ky,
                                  int64_t kz, int64_t c, int64_t o) {
    return g->is_3d ? tensor_at(a, kx, ky, kz, o * g->ic + c) : tensor_at(a, kx, ky, c, o);
}

/* Kernel row o in the patch order: channel, then depth, rows, columns. */
static void conv_widen_kernel(const struct ferry_tensor *a, const struct conv_geom *g, int64_t o, float *row) {
    int64_t e = 0;
    for (int64_t c = 0; c < g->ic; c++)
        for (int64_t kz = 0; kz < g->k[2]; kz++)
            for (int64_t ky = 0; ky < g->k[1]; ky++)
                for (int64_t kx = 0; kx < g->k[0]; kx++)
                    row[e++] = load_f32(a->type, conv_kernel_at(a, g, kx, ky, kz, c, o));
}

/* Output position q (x fastest, then y, z, image) -> coordinates. */
static void conv_position(const struct conv_geom *g, int64_t q, int64_t pos[4]) {
    for (int i = 0; i < 3; i++) {
        pos[i] = q % g->out[i];
        q /= g->out[i];
    }
    pos[3] = q;
}

static void conv_gather_patch(const struct ferry_tensor *b, const struct conv_geom *g, const int64_t pos[4],
                              bool f16, float *patch) {
    int64_t e = 0;
    for (int64_t c = 0; c < g->ic; c++)
        for (int64_t kz = 0; kz < g->k[2]; kz++) {
            const int64_t iz = pos[2] * g->s[2] + kz * g->d[2] - g->p[2];
            for (int64_t ky = 0; ky < g->k[1]; ky++) {
                const int64_t iy = pos[1] * g->s[1] + ky * g->d[1] - g->p[1];
                for (int64_t kx = 0; kx < g->k[0]; kx++) {
                    const int64_t ix = pos[0] * g->s[0] + kx * g->d[0] - g->p[0];
                    float v = 0.0f;
                    if (iz >= 0 && iz < g->in[2] && iy >= 0 && iy < g->in[1] && ix >= 0 && ix < g->in[0]) {
                        const void *src = g->is_3d ? tensor_at(b, ix, iy, iz, pos[3] * g->ic + c)
                                                   : tensor_at(b, ix, iy, c, pos[3]);
                        v = load_f32(FERRY_TYPE_F32, src);
                    }
                    patch[e++] = f16 ? round_f16(v) : v;
                }
            }
        }
}

static float *conv_out_at(struct ferry_tensor *node, const struct conv_geom *g, const int64_t pos[4], int64_t o) {
    return g->is_3d ? tensor_at(node, pos[0], pos[1], pos[2], pos[3] * g->oc + o)
                    : tensor_at(node, pos[0], pos[1], o, pos[3]);
}

/* Patches [q0, q1): gather, then every output channel against them. */
static void conv_block(struct ferry_tensor *node, const struct conv_geom *g, const float *kern, float *patches,
                       int64_t q0, int64_t q1) {
    const bool f16 = node->src[0]->type == FERRY_TYPE_F16;
    int64_t pos[PATCH_BLOCK][4];
    for (int64_t q = q0; q < q1; q++) {
        conv_position(g, q, pos[q - q0]);
        conv_gather_patch(node->src[1], g, pos[q - q0], f16, patches + (q - q0) * g->knl_n);
    }
    for (int64_t o = 0; o < g->oc; o++) {
        const float *krow = kern + o * g->knl_n;
        for (int64_t q = q0; q < q1; q++) {
            const float v = dot_f32(krow, patches + (q - q0) * g->knl_n, g->knl_n);
            memcpy(conv_out_at(node, g, pos[q - q0], o), &v, sizeof v);
        }
    }
}

static void conv_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct conv_geom g;
    conv_geom(node, &g);
    const size_t kbytes = conv_kernel_bytes(&g), slice = conv_slice_bytes(&g);
    if (!p->wdata || p->wsize < add_sat(kbytes, mul_sat(slice, (size_t)p->nth))) {
        if (p->ith == 0) ferry_op_fail(p, FERRY_ERR_INVALID, "%s: scratch too small", ferry_op_name(node->op));
        return; /* every thread sees the same sizes, so none waits at the barrier */
    }
    float *kern = p->wdata;
    float *patches = (float *)((char *)p->wdata + kbytes + slice * (size_t)p->ith);
    int64_t o0, o1;
    split_range(g.oc, p->ith, p->nth, &o0, &o1);
    for (int64_t o = o0; o < o1; o++) conv_widen_kernel(node->src[0], &g, o, kern + o * g.knl_n);
    ferry_barrier(p);
    int64_t q0, q1;
    split_range(g.patches, p->ith, p->nth, &q0, &q1);
    for (int64_t q = q0; q < q1; q += PATCH_BLOCK)
        conv_block(node, &g, kern, patches, q, q + PATCH_BLOCK < q1 ? q + PATCH_BLOCK : q1);
}

const struct ferry_kernel ferry_kernel_conv = { check_conv, conv_work_size, conv_compute };

/* ---- CONV_2D_DW ---- */

/* Kernel a [KW, KH, 1, C], input b [IW, IH, C, N] -> [OW, OH, C, N];
 * params s0 s1 p0 p1 d0 d1. */
static int check_conv_2d_dw(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_conv_types(node, err);
    if (rc) return rc;
    if ((rc = check_params_positive(node, 0, 2, "stride", err)) ||
        (rc = check_params_positive(node, 4, 2, "dilation", err)))
        return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (a->ne[2] != 1 || a->ne[3] != b->ne[2])
        return ferry_fail(err, FERRY_ERR_INVALID, "CONV_2D_DW: kernel must be [KW, KH, 1, %lld]", (long long)b->ne[2]);
    int64_t ow, oh;
    if (!conv_out_len(b->ne[0], a->ne[0], ferry_param_i32(node, 0), ferry_param_i32(node, 2),
                      ferry_param_i32(node, 4), &ow) ||
        !conv_out_len(b->ne[1], a->ne[1], ferry_param_i32(node, 1), ferry_param_i32(node, 3),
                      ferry_param_i32(node, 5), &oh))
        return ferry_fail(err, FERRY_ERR_INVALID, "CONV_2D_DW: output size overflows");
    return check_dst_shape(node, ow, oh, b->ne[2], b->ne[3], err);
}

/* One output row (oy, channel c, image n): f32 sums over kernel rows, then
 * columns, skipping taps outside the image, as ggml's loops do. */
static void conv_2d_dw_row(struct ferry_tensor *node, int64_t oy, int64_t c, int64_t n) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t sx = ferry_param_i32(node, 0), sy = ferry_param_i32(node, 1);
    const int64_t px = ferry_param_i32(node, 2), py = ferry_param_i32(node, 3);
    const int64_t dx = ferry_param_i32(node, 4), dy = ferry_param_i32(node, 5);
    char *y = tensor_row(node, oy, c, n);
    for (int64_t ox = 0; ox < node->ne[0]; ox++) {
        float sum = 0.0f;
        for (int64_t ky = 0; ky < a->ne[1]; ky++) {
            const int64_t iy = oy * sy + ky * dy - py;
            if (iy < 0 || iy >= b->ne[1]) continue;
            for (int64_t kx = 0; kx < a->ne[0]; kx++) {
                const int64_t ix = ox * sx + kx * dx - px;
                if (ix < 0 || ix >= b->ne[0]) continue;
                sum += load_f32(a->type, tensor_at(a, kx, ky, 0, c)) * load_f32(b->type, tensor_at(b, ix, iy, c, n));
            }
        }
        memcpy(y + ox * (int64_t)node->nb[0], &sum, sizeof sum);
    }
}

static void conv_2d_dw_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        conv_2d_dw_row(node, i1, i2, i3);
    }
}

const struct ferry_kernel ferry_kernel_conv_2d_dw = { check_conv_2d_dw, NULL, conv_2d_dw_compute };

/* ---- CONV_TRANSPOSE_1D, CONV_TRANSPOSE_2D ---- */

/* 1-D: kernel a [K, Cout, Cin], input b [L, Cin] -> [(L-1)*s + K, Cout];
 * params s, p (0), d (1). 2-D: a [KW, KH, Cout, Cin], b [W, H, Cin, N]
 * -> [(W-1)*s + KW, (H-1)*s + KH, Cout, N]; param s. */
struct convt_geom {
    bool is_2d;
    int64_t w, h, cin, cout, kw, kh, n, s, ow, oh;
};

static bool convt_geom(const struct ferry_tensor *node, struct convt_geom *g) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    g->is_2d = node->op == FERRY_OP_CONV_TRANSPOSE_2D;
    g->s = ferry_param_i32(node, 0);
    g->w = b->ne[0];
    g->kw = a->ne[0];
    if (g->is_2d) {
        g->h = b->ne[1], g->cin = b->ne[2], g->n = b->ne[3];
        g->kh = a->ne[1], g->cout = a->ne[2];
    } else {
        g->h = 1, g->cin = b->ne[1], g->n = 1;
        g->kh = 1, g->cout = a->ne[1];
    }
    g->oh = 1;
    return conv_transpose_len(g->w, g->kw, g->s, &g->ow) && (!g->is_2d || conv_transpose_len(g->h, g->kh, g->s, &g->oh));
}

static int check_conv_transpose(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_conv_types(node, err);
    if (rc) return rc;
    if ((rc = check_params_positive(node, 0, 1, "stride", err))) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    struct convt_geom g;
    const bool ok = convt_geom(node, &g);
    if (!g.is_2d) {
        if (ferry_param_i32(node, 1) != 0 || ferry_param_i32(node, 2) != 1)
            return ferry_fail(err, FERRY_ERR_INVALID, "CONV_TRANSPOSE_1D: padding must be 0 and dilation 1");
        if (a->ne[3] != 1 || b->ne[2] != 1 || b->ne[3] != 1 || a->ne[2] != b->ne[1])
            return ferry_fail(err, FERRY_ERR_INVALID, "CONV_TRANSPOSE_1D: kernel [K, Cout, Cin] and input [L, Cin] expected");
    } else if (a->ne[3] != b->ne[2]) {
        return ferry_fail(err, FERRY_ERR_INVALID, "CONV_TRANSPOSE_2D: kernel has %lld input channels, input %lld",
                          (long long)a->ne[3], (long long)b->ne[2]);
    }
    if (!ok) return ferry_fail(err, FERRY_ERR_INVALID, "%s: output size overflows", ferry_op_name(node->op));
    return g.is_2d ? check_dst_shape(node, g.ow, g.oh, g.cout, g.n, err)
                   : check_dst_shape(node, g.ow, g.cout, 1, 1, err);
}

/* Scratch: the kernel as [Cout][KH][KW][Cin] f32, then the input as
 * [N][H][W][Cin], so each contribution is one contiguous dot product. */
static size_t convt_kernel_floats_bytes(const struct convt_geom *g) {
    return round_line(mul_sat(mul_sat(bytes_of(g->cout, sizeof(float)), (size_t)g->kh),
                              mul_sat((size_t)g->kw, (size_t)g->cin)));
}
static size_t convt_input_bytes(const struct convt_geom *g) {
    return round_line(mul_sat(mul_sat(bytes_of(g->n, sizeof(float)), (size_t)g->h),
                              mul_sat((size_t)g->w, (size_t)g->cin)));
}

static size_t convt_work_size(const struct ferry_tensor *node, int nth) {
    (void)nth;
    struct convt_geom g;
    if (!convt_geom(node, &g)) return SIZE_MAX;
    return add_sat(convt_kernel_floats_bytes(&g), convt_input_bytes(&g));
}

static const void *convt_kernel_at(const struct ferry_tensor *a, const struct convt_geom *g, int64_t kx, int64_t ky,
                                   int64_t co, int64_t ci) {
    return g->is_2d ? tensor_at(a, kx, ky, co, ci) : tensor_at(a, kx, co, ci, 0);
}

static const void *convt_input_at(const struct ferry_tensor *b, const struct convt_geom *g, int64_t x, int64_t y,
                                  int64_t ci, int64_t n) {
    return g->is_2d ? tensor_at(b, x, y, ci, n) : tensor_at(b, x, ci, 0, 0);
}

/* Threads split the kernel's (co, ky, kx) rows and the input's (n, y, x)
 * rows; the input is rounded to f16 with an F16 kernel, as ggml does. */
static void convt_prepare(const struct ferry_compute_params *p, const struct ferry_tensor *node,
                          const struct convt_geom *g, float *kern, float *inp) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const bool f16 = a->type == FERRY_TYPE_F16;
    int64_t r0, r1;
    split_range(g->cout * g->kh * g->kw, p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t kx = r % g->kw, ky = r / g->kw % g->kh, co = r / (g->kw * g->kh);
        for (int64_t ci = 0; ci < g->cin; ci++)
            kern[r * g->cin + ci] = load_f32(a->type, convt_kernel_at(a, g, kx, ky, co, ci));
    }
    split_range(g->n * g->h * g->w, p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t x = r % g->w, y = r / g->w % g->h, n = r / (g->w * g->h);
        for (int64_t ci = 0; ci < g->cin; ci++) {
            const float v = load_f32(FERRY_TYPE_F32, convt_input_at(b, g, x, y, ci, n));
            inp[r * g->cin + ci] = f16 ? round_f16(v) : v;
        }
    }
}

/* First input index i with i*s <= o < i*s + k, clamped to 0. */
static inline int64_t convt_first(int64_t o, int64_t k, int64_t s) {
    const int64_t t = o - k + 1;
    return t <= 0 ? 0 : (t + s - 1) / s;
}

/* Output element (ox, oy) of channel co, image n: the contributions of
 * input rows, then columns, in increasing order, summed in f32. */
static float convt_elem(const struct convt_geom *g, const float *kern, const float *inp, int64_t ox, int64_t oy,
                        int64_t co, int64_t n) {
    int64_t y1 = oy / g->s, x1 = ox / g->s;
    if (y1 > g->h - 1) y1 = g->h - 1;
    if (x1 > g->w - 1) x1 = g->w - 1;
    float sum = 0.0f;
    for (int64_t iy = convt_first(oy, g->kh, g->s); iy <= y1; iy++) {
        const int64_t ky = oy - iy * g->s;
        for (int64_t ix = convt_first(ox, g->kw, g->s); ix <= x1; ix++) {
            const int64_t kx = ox - ix * g->s;
            const float *kv = kern + ((co * g->kh + ky) * g->kw + kx) * g->cin;
            const float *iv = inp + ((n * g->h + iy) * g->w + ix) * g->cin;
            sum += dot_f32(iv, kv, g->cin);
        }
    }
    return sum;
}

static void convt_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    struct convt_geom g;
    convt_geom(node, &g);
    const size_t kbytes = convt_kernel_floats_bytes(&g);
    if (!p->wdata || p->wsize < add_sat(kbytes, convt_input_bytes(&g))) {
        if (p->ith == 0) ferry_op_fail(p, FERRY_ERR_INVALID, "%s: scratch too small", ferry_op_name(node->op));
        return;
    }
    float *kern = p->wdata, *inp = (float *)((char *)p->wdata + kbytes);
    convt_prepare(p, node, &g, kern, inp);
    ferry_barrier(p);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const int64_t oy = g.is_2d ? i1 : 0, co = g.is_2d ? i2 : i1, n = g.is_2d ? i3 : 0;
        char *y = tensor_row(node, i1, i2, i3);
        for (int64_t ox = 0; ox < node->ne[0]; ox++) {
            const float v = convt_elem(&g, kern, inp, ox, oy, co, n);
            memcpy(y + ox * (int64_t)node->nb[0], &v, sizeof v);
        }
    }
}

const struct ferry_kernel ferry_kernel_conv_transpose = { check_conv_transpose, convt_work_size, convt_compute };
