/* The convolution family (im2col.c, conv.c, pool.c, spatial.c) against
 * naive references written here from docs/ops.md B.24, in double: IM2COL,
 * IM2COL_3D, IM2COL_BACK, COL2IM_1D, CONV_2D, CONV_3D, CONV_2D_DW,
 * CONV_TRANSPOSE_1D/2D, POOL_1D/2D, POOL_2D_BACK, UPSCALE (every mode and
 * flag), PAD_REFLECT_1D, ROLL, WIN_PART, WIN_UNPART, GET_REL_POS and
 * ADD_REL_POS. Odd sizes, padding, strides, dilation, F16 variants,
 * permuted inputs and padded outputs; results identical for 1, 2 and 4
 * threads; hostile params that check() must refuse; random nodes (exactly
 * sized buffers, for the sanitizers) that must run cleanly when accepted. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "tensor/fp16.h"
#include "testutil.h"

static uint64_t rng = 0xc0117e57ull;
static struct ferry_engine *engines[3]; /* 1, 2 and 4 threads */
static const int engine_threads[3] = { 1, 2, 4 };

/* ---- tensors ---- */

static struct ferry_tensor *new_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return test_keep(test_tensor_new(type, ne0, ne1, ne2, ne3));
}

static struct ferry_tensor *rand_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    test_tensor_fill_uniform(t, &rng, -1, 1);
    return t;
}

/* ggml_permute(base, a0..a3): ne'[a_k] = ne[k], nb'[a_k] = nb[k]. */

/* A tensor of shape ne stored channel-first (dims 0..2 of memory hold
 * ne2, ne0, ne1), seen through a permuted view with the logical shape:
 * the CWHN layout of ggml's conv tests. */
static struct ferry_tensor *rand_cwhn(int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    struct ferry_tensor *base = rand_tensor(FERRY_TYPE_F32, ne2, ne0, ne1, ne3);
    return test_permute(base, 2, 0, 1, 3);
}

static bool padded_outputs; /* new_node gives rows 3 elements of slack */

/* An output node, its memory full of NaN bytes so an unwritten element shows. */
static struct ferry_tensor *new_node(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                     int64_t ne3, struct ferry_tensor *s0, struct ferry_tensor *s1) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    if (padded_outputs && !ferry_is_empty(t)) {
        const size_t es = ferry_type_size(type);
        t->nb[1] = es * (size_t)(ne0 + 3);
        t->nb[2] = t->nb[1] * (size_t)ne1;
        t->nb[3] = t->nb[2] * (size_t)ne2;
        free(t->data);
        t->data = malloc(ferry_nbytes(t));
    }
    if (!ferry_is_empty(t)) memset(t->data, 0xff, ferry_nbytes(t));
    t->op = op;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = s0;
    t->src[1] = s1;
    return t;
}

static void set_params(struct ferry_tensor *t, const int32_t *p, int n) {
    memcpy(t->op_params, p, (size_t)n * sizeof *p);
}

/* Runs node with 4, 2 and 1 threads; the output bytes must be the same. */
static bool run_threads(struct ferry_tensor *node, const char *what) {
    const size_t n = ferry_nbytes(node);
    char *first = malloc(n ? n : 1);
    bool ok = true;
    for (int k = 2; k >= 0 && ok; k--) {
        struct ferry_error err = { 0 };
        int rc = ferry_engine_compute(engines[k], &node, 1, &err);
        ok = CHECK(rc == FERRY_OK, "%s: compute failed: %s", what, err.msg);
        if (!ok) break;
        if (k == 2) memcpy(first, node->data, n);
        else ok = CHECK(memcmp(first, node->data, n) == 0, "%s: %d threads differ from 4", what, engine_threads[k]);
    }
    free(first);
    return ok;
}

/* Output vs a double reference in logical order: NMSE under tol. */
static void expect_close(const struct ferry_tensor *out, const double *ref, double tol, const char *what) {
    const int64_t n = ferry_nelements(out);
    float *r = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) r[i] = (float)ref[i];
    float *o = test_tensor_to_f32(out);
    const double e = test_nmse(r, o, n);
    CHECK(e < tol, "%s: NMSE %g >= %g", what, e, tol);
    free(r);
    free(o);
}

/* Output equal element for element to the reference rounded to its type. */
static void expect_exact(const struct ferry_tensor *out, const double *ref, const char *what) {
    const int64_t n = ferry_nelements(out);
    float *o = test_tensor_to_f32(out);
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++) {
        float want = (float)ref[i];
        if (out->type == FERRY_TYPE_F16) want = fp16_to_fp32(fp32_to_fp16(want));
        if (out->type == FERRY_TYPE_BF16) want = bf16_to_fp32(fp32_to_bf16(want));
        if (!(o[i] == want || (isnan(o[i]) && isnan(want)))) bad = i;
    }
    CHECK(bad < 0, "%s: element %lld is %g, expected %g", what, (long long)bad, bad >= 0 ? (double)o[bad] : 0.0,
          bad >= 0 ? ref[bad] : 0.0);
    free(o);
}

static int64_t idx4(const int64_t *ne, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3));
}

static double *ref_alloc(const struct ferry_tensor *t) {
    return calloc((size_t)(ferry_nelements(t) + 1), sizeof(double));
}

static int64_t out_len(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

static double as_f16(double v) { return fp16_to_fp32(fp32_to_fp16((float)v)); }

/* ---- IM2COL ---- */

static void check_im2col(enum ferry_type in_t, enum ferry_type out_t, bool is_2d, struct ferry_tensor *b,
                         int64_t kw, int64_t kh, const int32_t p[6], const char *what) {
    const int64_t iw = b->ne[0], ih = is_2d ? b->ne[1] : 1, ic = is_2d ? b->ne[2] : b->ne[1];
    const int64_t n = is_2d ? b->ne[3] : b->ne[2];
    (void)in_t;
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F16, kw, is_2d ? kh : ic, is_2d ? ic : 5, is_2d ? 5 : 1);
    if (!is_2d) kh = 1;
    const int64_t s1 = is_2d ? p[1] : 1, p1 = is_2d ? p[3] : 0, d1 = is_2d ? p[5] : 1;
    const int64_t ow = out_len(iw, kw, p[0], p[2], p[4]), oh = is_2d ? out_len(ih, kh, s1, p1, d1) : 1;
    struct ferry_tensor *node = new_node(FERRY_OP_IM2COL, out_t, ic * kh * kw, ow, is_2d ? oh : n, is_2d ? n : 1, a, b);
    set_params(node, p, 6);
    node->op_params[6] = is_2d;
    if (!run_threads(node, what)) return;
    float *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    for (int64_t in = 0; in < n; in++)
        for (int64_t y = 0; y < oh; y++)
            for (int64_t xo = 0; xo < ow; xo++)
                for (int64_t c = 0; c < ic; c++)
                    for (int64_t ky = 0; ky < kh; ky++)
                        for (int64_t kx = 0; kx < kw; kx++) {
                            const int64_t sx = xo * p[0] + kx * p[4] - p[2], sy = y * s1 + ky * d1 - p1;
                            double v = 0;
                            if (sx >= 0 && sx < iw && sy >= 0 && sy < ih)
                                v = is_2d ? x[idx4(b->ne, sx, sy, c, in)] : x[idx4(b->ne, sx, c, in, 0)];
                            const int64_t e = (c * kh + ky) * kw + kx;
                            ref[is_2d ? idx4(node->ne, e, xo, y, in) : idx4(node->ne, e, xo, in, 0)] = v;
                        }
    expect_exact(node, ref, what);
    free(x);
    free(ref);
}

static void test_im2col(void) {
    static const int32_t params[][6] = {
        { 1, 1, 1, 1, 1, 1 }, { 3, 1, 0, 3, 1, 3 }, { 2, 3, 3, 0, 3, 1 }, { 1, 2, 2, 1, 2, 2 },
    };
    for (int l = 0; l < 2; l++) {
        padded_outputs = l == 1;
        for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
            check_im2col(FERRY_TYPE_F32, FERRY_TYPE_F32, true, rand_tensor(FERRY_TYPE_F32, 13, 11, 3, 2), 3, 2,
                         params[i], "IM2COL 2-D f32");
            check_im2col(FERRY_TYPE_F32, FERRY_TYPE_F16, true, rand_tensor(FERRY_TYPE_F32, 9, 10, 2, 1), 3, 3,
                         params[i], "IM2COL 2-D f32 -> f16");
            check_im2col(FERRY_TYPE_F16, FERRY_TYPE_F16, true, rand_tensor(FERRY_TYPE_F16, 7, 12, 3, 2), 2, 3,
                         params[i], "IM2COL 2-D f16 -> f16");
            check_im2col(FERRY_TYPE_F32, FERRY_TYPE_F32, false, rand_tensor(FERRY_TYPE_F32, 21, 3, 2, 1), 3, 1,
                         params[i], "IM2COL 1-D f32");
            check_im2col(FERRY_TYPE_F32, FERRY_TYPE_F16, false, rand_tensor(FERRY_TYPE_F32, 17, 2, 3, 1), 4, 1,
                         params[i], "IM2COL 1-D f16");
            /* a transposed image: strides honoured */
            check_im2col(FERRY_TYPE_F32, FERRY_TYPE_F32, true,
                         test_permute(rand_tensor(FERRY_TYPE_F32, 10, 12, 2, 1), 1, 0, 2, 3), 3, 3, params[i],
                         "IM2COL 2-D transposed image");
            test_free_kept();
        }
    }
    padded_outputs = false;
}

/* ---- IM2COL_3D ---- */

static void check_im2col_3d(enum ferry_type out_t, struct ferry_tensor *b, int64_t ic, const int64_t k[3],
                            const int32_t p[9], const char *what) {
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F16, k[0], k[1], k[2], ic * 2);
    const int64_t n = b->ne[3] / ic;
    int64_t o[3];
    for (int i = 0; i < 3; i++) o[i] = out_len(b->ne[i], k[i], p[i], p[3 + i], p[6 + i]);
    const int64_t row = k[0] * k[1] * k[2] * ic;
    struct ferry_tensor *node = new_node(FERRY_OP_IM2COL_3D, out_t, row, o[0], o[1], o[2] * n, a, b);
    set_params(node, p, 9);
    node->op_params[9] = (int32_t)ic;
    if (!run_threads(node, what)) return;
    float *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    for (int64_t in = 0; in < n; in++)
        for (int64_t oz = 0; oz < o[2]; oz++)
            for (int64_t oy = 0; oy < o[1]; oy++)
                for (int64_t ox = 0; ox < o[0]; ox++)
                    for (int64_t c = 0; c < ic; c++)
                        for (int64_t kz = 0; kz < k[2]; kz++)
                            for (int64_t ky = 0; ky < k[1]; ky++)
                                for (int64_t kx = 0; kx < k[0]; kx++) {
                                    const int64_t sx = ox * p[0] + kx * p[6] - p[3];
                                    const int64_t sy = oy * p[1] + ky * p[7] - p[4];
                                    const int64_t sz = oz * p[2] + kz * p[8] - p[5];
                                    double v = 0;
                                    if (sx >= 0 && sx < b->ne[0] && sy >= 0 && sy < b->ne[1] && sz >= 0 &&
                                        sz < b->ne[2])
                                        v = x[idx4(b->ne, sx, sy, sz, in * ic + c)];
                                    const int64_t e = ((c * k[2] + kz) * k[1] + ky) * k[0] + kx;
                                    ref[idx4(node->ne, e, ox, oy, in * o[2] + oz)] = v;
                                }
    expect_exact(node, ref, what);
    free(x);
    free(ref);
}

static void test_im2col_3d(void) {
    static const int32_t params[][9] = {
        { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, { 3, 1, 2, 0, 3, 1, 3, 1, 2 }, { 2, 2, 1, 1, 0, 2, 1, 2, 1 },
    };
    const int64_t k[3] = { 3, 2, 3 };
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        check_im2col_3d(FERRY_TYPE_F32, rand_tensor(FERRY_TYPE_F32, 11, 9, 7, 6), 3, k, params[i], "IM2COL_3D f32");
        check_im2col_3d(FERRY_TYPE_F16, rand_tensor(FERRY_TYPE_F32, 8, 10, 6, 4), 2, k, params[i], "IM2COL_3D f16");
        /* N = ne3 / IC truncates: 7 planes of IC 3 are two images */
        check_im2col_3d(FERRY_TYPE_F32, rand_tensor(FERRY_TYPE_F32, 6, 7, 5, 7), 3, k, params[i], "IM2COL_3D N = 7/3");
        test_free_kept();
    }
}

/* ---- IM2COL_BACK ---- */

static void test_im2col_back(void) {
    static const int32_t params[][6] = { { 1, 1, 1, 1, 1, 1 }, { 2, 3, 1, 2, 2, 1 }, { 3, 2, 0, 1, 1, 2 } };
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        for (int is_2d = 0; is_2d < 2; is_2d++) {
            const int64_t iw = 11, ih = is_2d ? 9 : 1, ic = 3, n = 2, kw = 3, kh = is_2d ? 2 : 1;
            const int32_t *p = params[i];
            const int64_t s1 = is_2d ? p[1] : 1, p1 = is_2d ? p[3] : 0, d1 = is_2d ? p[5] : 1;
            const int64_t ow = out_len(iw, kw, p[0], p[2], p[4]), oh = is_2d ? out_len(ih, kh, s1, p1, d1) : 1;
            struct ferry_tensor *kernel = new_tensor(FERRY_TYPE_F16, kw, is_2d ? kh : ic, is_2d ? ic : 1, 1);
            struct ferry_tensor *g = is_2d ? rand_tensor(FERRY_TYPE_F32, ic * kh * kw, ow, oh, n)
                                           : rand_tensor(FERRY_TYPE_F32, ic * kw, ow, n, 1);
            struct ferry_tensor *node = is_2d ? new_node(FERRY_OP_IM2COL_BACK, FERRY_TYPE_F32, iw, ih, ic, n, g, kernel)
                                              : new_node(FERRY_OP_IM2COL_BACK, FERRY_TYPE_F32, iw, ic, n, 1, g, kernel);
            set_params(node, p, 6);
            node->op_params[6] = is_2d;
            if (!run_threads(node, "IM2COL_BACK")) continue;
            /* the adjoint of IM2COL: scatter every column entry back */
            float *gv = test_tensor_to_f32(g);
            double *ref = ref_alloc(node);
            for (int64_t in = 0; in < n; in++)
                for (int64_t y = 0; y < oh; y++)
                    for (int64_t x = 0; x < ow; x++)
                        for (int64_t c = 0; c < ic; c++)
                            for (int64_t ky = 0; ky < kh; ky++)
                                for (int64_t kx = 0; kx < kw; kx++) {
                                    const int64_t sx = x * p[0] + kx * p[4] - p[2], sy = y * s1 + ky * d1 - p1;
                                    if (sx < 0 || sx >= iw || sy < 0 || sy >= ih) continue;
                                    const int64_t e = (c * kh + ky) * kw + kx;
                                    const double v = is_2d ? gv[idx4(g->ne, e, x, y, in)] : gv[idx4(g->ne, e, x, in, 0)];
                                    ref[is_2d ? idx4(node->ne, sx, sy, c, in) : idx4(node->ne, sx, c, in, 0)] += v;
                                }
            expect_close(node, ref, 1e-12, is_2d ? "IM2COL_BACK 2-D" : "IM2COL_BACK 1-D");
            free(gv);
            free(ref);
        }
        test_free_kept();
    }
}

/* ---- COL2IM_1D ---- */

static void test_col2im_1d(void) {
    static const int64_t cases[][5] = { /* K, OC, T_in, s, p */
        { 16, 5, 19, 8, 0 }, { 4, 3, 7, 2, 0 }, { 1, 5, 13, 3, 0 }, { 6, 4, 11, 3, 1 }, { 8, 2, 3, 2, 5 },
        { 2, 3, 9, 3, 0 },
    };
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int t = 0; t < 3; t++) {
            const int64_t k = cases[c][0], oc = cases[c][1], tin = cases[c][2], s = cases[c][3], p = cases[c][4];
            const int64_t tout = (tin - 1) * s + k - 2 * p;
            struct ferry_tensor *a = rand_tensor(types[t], k * oc, tin, 1, 1);
            struct ferry_tensor *node = new_node(FERRY_OP_COL2IM_1D, types[t], tout, oc, 1, 1, a, NULL);
            const int32_t params[3] = { (int32_t)s, (int32_t)oc, (int32_t)p };
            set_params(node, params, 3);
            if (!run_threads(node, "COL2IM_1D")) continue;
            float *x = test_tensor_to_f32(a);
            double *ref = ref_alloc(node);
            for (int64_t ti = 0; ti < tin; ti++)
                for (int64_t o = 0; o < oc; o++)
                    for (int64_t kk = 0; kk < k; kk++) {
                        const int64_t to = ti * s + kk - p;
                        if (to >= 0 && to < tout) ref[o * tout + to] += x[ti * k * oc + o * k + kk];
                    }
            expect_close(node, ref, t == 0 ? 1e-12 : 1e-5, "COL2IM_1D");
            free(x);
            free(ref);
            test_free_kept();
        }
}

/* ---- CONV_2D, CONV_3D ---- */

/* Direct convolution in double; input rounded to f16 for an F16 kernel. */
static void check_conv_2d(enum ferry_type kt, struct ferry_tensor *b, int64_t kw, int64_t kh, int64_t oc,
                          const int32_t p[6], const char *what) {
    const int64_t ic = b->ne[2], n = b->ne[3];
    struct ferry_tensor *a = rand_tensor(kt, kw, kh, ic, oc);
    const int64_t ow = out_len(b->ne[0], kw, p[0], p[2], p[4]), oh = out_len(b->ne[1], kh, p[1], p[3], p[5]);
    struct ferry_tensor *node = new_node(FERRY_OP_CONV_2D, FERRY_TYPE_F32, ow, oh, oc, n, a, b);
    set_params(node, p, 6);
    if (!run_threads(node, what)) return;
    float *w = test_tensor_to_f32(a), *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    for (int64_t in = 0; in < n; in++)
        for (int64_t o = 0; o < oc; o++)
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xo = 0; xo < ow; xo++) {
                    double sum = 0;
                    for (int64_t c = 0; c < ic; c++)
                        for (int64_t ky = 0; ky < kh; ky++)
                            for (int64_t kx = 0; kx < kw; kx++) {
                                const int64_t sx = xo * p[0] + kx * p[4] - p[2], sy = y * p[1] + ky * p[5] - p[3];
                                if (sx < 0 || sx >= b->ne[0] || sy < 0 || sy >= b->ne[1]) continue;
                                double v = x[idx4(b->ne, sx, sy, c, in)];
                                if (kt == FERRY_TYPE_F16) v = as_f16(v);
                                sum += v * w[idx4(a->ne, kx, ky, c, o)];
                            }
                    ref[idx4(node->ne, xo, y, o, in)] = sum;
                }
    expect_close(node, ref, 1e-10, what);
    free(w);
    free(x);
    free(ref);
}

static void test_conv_2d(void) {
    static const int32_t params[][6] = {
        { 1, 1, 0, 0, 1, 1 }, { 3, 5, 5, 2, 2, 4 }, { 2, 1, 1, 3, 1, 2 }, { 1, 2, -1, 1, 3, 1 },
    };
    for (int l = 0; l < 2; l++) {
        padded_outputs = l == 1;
        for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
            for (int t = 0; t < 2; t++) {
                const enum ferry_type kt = t ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
                check_conv_2d(kt, rand_tensor(FERRY_TYPE_F32, 23, 19, 5, 2), 3, 2, 7, params[i], "CONV_2D");
                check_conv_2d(kt, rand_tensor(FERRY_TYPE_F32, 41, 37, 3, 1), 1, 1, 4, params[i], "CONV_2D 1x1");
                check_conv_2d(kt, rand_cwhn(29, 17, 6, 2), 3, 3, 5, params[i], "CONV_2D CWHN input");
                test_free_kept();
            }
    }
    padded_outputs = false;
}

static void check_conv_3d(enum ferry_type kt, int64_t n, int64_t ic, int64_t oc, const int64_t in[3],
                          const int64_t k[3], const int32_t p[9], const char *what) {
    struct ferry_tensor *a = rand_tensor(kt, k[0], k[1], k[2], ic * oc);
    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, in[0], in[1], in[2], ic * n);
    int64_t o[3];
    for (int i = 0; i < 3; i++) o[i] = out_len(in[i], k[i], p[i], p[3 + i], p[6 + i]);
    struct ferry_tensor *node = new_node(FERRY_OP_CONV_3D, FERRY_TYPE_F32, o[0], o[1], o[2], oc * n, a, b);
    set_params(node, p, 9);
    node->op_params[9] = (int32_t)ic;
    node->op_params[10] = (int32_t)n;
    node->op_params[11] = (int32_t)oc;
    if (!run_threads(node, what)) return;
    float *w = test_tensor_to_f32(a), *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    for (int64_t bi = 0; bi < n; bi++)
        for (int64_t co = 0; co < oc; co++)
            for (int64_t oz = 0; oz < o[2]; oz++)
                for (int64_t oy = 0; oy < o[1]; oy++)
                    for (int64_t ox = 0; ox < o[0]; ox++) {
                        double sum = 0;
                        for (int64_t c = 0; c < ic; c++)
                            for (int64_t kz = 0; kz < k[2]; kz++)
                                for (int64_t ky = 0; ky < k[1]; ky++)
                                    for (int64_t kx = 0; kx < k[0]; kx++) {
                                        const int64_t sx = ox * p[0] + kx * p[6] - p[3];
                                        const int64_t sy = oy * p[1] + ky * p[7] - p[4];
                                        const int64_t sz = oz * p[2] + kz * p[8] - p[5];
                                        if (sx < 0 || sx >= in[0] || sy < 0 || sy >= in[1] || sz < 0 || sz >= in[2])
                                            continue;
                                        double v = x[idx4(b->ne, sx, sy, sz, bi * ic + c)];
                                        if (kt == FERRY_TYPE_F16) v = as_f16(v);
                                        sum += v * w[idx4(a->ne, kx, ky, kz, co * ic + c)];
                                    }
                        ref[idx4(node->ne, ox, oy, oz, bi * oc + co)] = sum;
                    }
    expect_close(node, ref, 1e-10, what);
    free(w);
    free(x);
    free(ref);
}

static void test_conv_3d(void) {
    static const int32_t params[][9] = { { 1, 1, 1, 0, 0, 0, 1, 1, 1 }, { 2, 1, 1, 2, 0, 1, 1, 1, 2 },
                                         { 1, 2, 3, 1, 1, 1, 2, 2, 1 } };
    const int64_t in[3] = { 11, 10, 9 }, k[3] = { 3, 2, 3 };
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        check_conv_3d(FERRY_TYPE_F32, 2, 3, 4, in, k, params[i], "CONV_3D f32");
        check_conv_3d(FERRY_TYPE_F16, 1, 2, 5, in, k, params[i], "CONV_3D f16");
        test_free_kept();
    }
}

/* ---- CONV_2D_DW ---- */

static void check_conv_2d_dw(enum ferry_type kt, struct ferry_tensor *b, int64_t kw, int64_t kh, const int32_t p[6],
                             const char *what) {
    const int64_t c = b->ne[2], n = b->ne[3];
    struct ferry_tensor *a = rand_tensor(kt, kw, kh, 1, c);
    const int64_t ow = out_len(b->ne[0], kw, p[0], p[2], p[4]), oh = out_len(b->ne[1], kh, p[1], p[3], p[5]);
    struct ferry_tensor *node = new_node(FERRY_OP_CONV_2D_DW, FERRY_TYPE_F32, ow, oh, c, n, a, b);
    set_params(node, p, 6);
    if (!run_threads(node, what)) return;
    float *w = test_tensor_to_f32(a), *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    for (int64_t in = 0; in < n; in++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xo = 0; xo < ow; xo++) {
                    double sum = 0;
                    for (int64_t ky = 0; ky < kh; ky++)
                        for (int64_t kx = 0; kx < kw; kx++) {
                            const int64_t sx = xo * p[0] + kx * p[4] - p[2], sy = y * p[1] + ky * p[5] - p[3];
                            if (sx >= 0 && sx < b->ne[0] && sy >= 0 && sy < b->ne[1])
                                sum += (double)x[idx4(b->ne, sx, sy, ch, in)] * w[idx4(a->ne, kx, ky, 0, ch)];
                        }
                    ref[idx4(node->ne, xo, y, ch, in)] = sum;
                }
    expect_close(node, ref, 1e-10, what);
    free(w);
    free(x);
    free(ref);
}

static void test_conv_2d_dw(void) {
    static const int32_t params[][6] = { { 1, 1, 0, 0, 1, 1 }, { 2, 2, 1, 1, 1, 1 }, { 1, 3, 2, 1, 2, 3 } };
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        for (int t = 0; t < 2; t++) {
            const enum ferry_type kt = t ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
            check_conv_2d_dw(kt, rand_tensor(FERRY_TYPE_F32, 17, 34, 9, 2), 3, 3, params[i], "CONV_2D_DW");
            check_conv_2d_dw(kt, rand_cwhn(15, 8, 11, 1), 3, 2, params[i], "CONV_2D_DW CWHN");
            test_free_kept();
        }
}

/* ---- CONV_TRANSPOSE_1D, CONV_TRANSPOSE_2D ---- */

static void check_conv_transpose(enum ferry_type kt, bool is_2d, int64_t w, int64_t h, int64_t cin, int64_t n,
                                 int64_t cout, int64_t kw, int64_t kh, int32_t s, const char *what) {
    if (!is_2d) h = kh = n = 1;
    struct ferry_tensor *a = is_2d ? rand_tensor(kt, kw, kh, cout, cin) : rand_tensor(kt, kw, cout, cin, 1);
    struct ferry_tensor *b = is_2d ? rand_tensor(FERRY_TYPE_F32, w, h, cin, n) : rand_tensor(FERRY_TYPE_F32, w, cin, 1, 1);
    const int64_t ow = (w - 1) * s + kw, oh = (h - 1) * s + kh;
    struct ferry_tensor *node =
        is_2d ? new_node(FERRY_OP_CONV_TRANSPOSE_2D, FERRY_TYPE_F32, ow, oh, cout, n, a, b)
              : new_node(FERRY_OP_CONV_TRANSPOSE_1D, FERRY_TYPE_F32, ow, cout, 1, 1, a, b);
    node->op_params[0] = s;
    node->op_params[2] = is_2d ? 0 : 1; /* 1-D: padding 0, dilation 1 */
    if (!run_threads(node, what)) return;
    float *wv = test_tensor_to_f32(a), *x = test_tensor_to_f32(b);
    double *ref = ref_alloc(node);
    /* scatter: input (ix, iy) adds kernel * value at (ix*s + kx, iy*s + ky) */
    for (int64_t in = 0; in < n; in++)
        for (int64_t co = 0; co < cout; co++)
            for (int64_t ci = 0; ci < cin; ci++)
                for (int64_t iy = 0; iy < h; iy++)
                    for (int64_t ix = 0; ix < w; ix++) {
                        double v = is_2d ? x[idx4(b->ne, ix, iy, ci, in)] : x[idx4(b->ne, ix, ci, 0, 0)];
                        if (kt == FERRY_TYPE_F16) v = as_f16(v);
                        for (int64_t ky = 0; ky < kh; ky++)
                            for (int64_t kx = 0; kx < kw; kx++) {
                                const double k = is_2d ? wv[idx4(a->ne, kx, ky, co, ci)] : wv[idx4(a->ne, kx, co, ci, 0)];
                                const int64_t ox = ix * s + kx, oy = iy * s + ky;
                                ref[is_2d ? idx4(node->ne, ox, oy, co, in) : idx4(node->ne, ox, co, 0, 0)] += k * v;
                            }
                    }
    expect_close(node, ref, 1e-10, what);
    free(wv);
    free(x);
    free(ref);
}

static void test_conv_transpose(void) {
    for (int l = 0; l < 2; l++) {
        padded_outputs = l == 1;
        for (int t = 0; t < 2; t++) {
            const enum ferry_type kt = t ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
            for (int32_t s = 1; s <= 3; s++) {
                check_conv_transpose(kt, false, 13, 1, 7, 1, 9, 3, 1, s, "CONV_TRANSPOSE_1D");
                check_conv_transpose(kt, false, 2, 1, 1, 1, 1, 37, 1, s, "CONV_TRANSPOSE_1D long kernel");
                check_conv_transpose(kt, true, 10, 7, 9, 1, 3, 3, 3, s, "CONV_TRANSPOSE_2D");
                check_conv_transpose(kt, true, 5, 4, 3, 2, 2, 2, 4, s, "CONV_TRANSPOSE_2D batch of 2");
                test_free_kept();
            }
        }
    }
    padded_outputs = false;
}

/* ---- POOL_1D, POOL_2D, POOL_2D_BACK ---- */

static int64_t pool_len(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

static void check_pool_1d(struct ferry_tensor *a, int op, int32_t k, int32_t s, int32_t p) {
    const int64_t ow = pool_len(a->ne[0], k, s, p);
    struct ferry_tensor *node = new_node(FERRY_OP_POOL_1D, FERRY_TYPE_F32, ow, a->ne[1], a->ne[2], a->ne[3], a, NULL);
    const int32_t params[4] = { op, k, s, p };
    set_params(node, params, 4);
    if (!run_threads(node, "POOL_1D")) return;
    float *x = test_tensor_to_f32(a);
    double *ref = ref_alloc(node);
    for (int64_t r = 0; r < ferry_nrows(a); r++)
        for (int64_t o = 0; o < ow; o++) {
            double acc = op == 0 ? -FLT_MAX : 0;
            int cnt = 0;
            for (int64_t t = 0; t < k; t++) {
                const int64_t j = o * s - p + t;
                if (j < 0 || j >= a->ne[0]) continue;
                const double v = x[r * a->ne[0] + j];
                acc = op == 0 ? fmax(acc, v) : acc + v;
                cnt++;
            }
            ref[r * ow + o] = op == 0 ? acc : cnt ? acc / cnt : 0;
        }
    expect_close(node, ref, 1e-12, "POOL_1D");
    free(x);
    free(ref);
}

static void check_pool_2d(struct ferry_tensor *a, int op, const int32_t kp[6]) {
    const int64_t ow = pool_len(a->ne[0], kp[0], kp[2], kp[4]), oh = pool_len(a->ne[1], kp[1], kp[3], kp[5]);
    struct ferry_tensor *node = new_node(FERRY_OP_POOL_2D, FERRY_TYPE_F32, ow, oh, a->ne[2], a->ne[3], a, NULL);
    memcpy(node->op_params + 1, kp, 6 * sizeof(int32_t));
    node->op_params[0] = op;
    if (!run_threads(node, "POOL_2D")) return;
    float *x = test_tensor_to_f32(a);
    double *ref = ref_alloc(node);
    for (int64_t i3 = 0; i3 < a->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < a->ne[2]; i2++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    double acc = op == 0 ? -FLT_MAX : 0;
                    for (int64_t ky = 0; ky < kp[1]; ky++)
                        for (int64_t kx = 0; kx < kp[0]; kx++) {
                            const int64_t sx = ox * kp[2] - kp[4] + kx, sy = oy * kp[3] - kp[5] + ky;
                            if (sx < 0 || sx >= a->ne[0] || sy < 0 || sy >= a->ne[1]) continue;
                            const double v = x[idx4(a->ne, sx, sy, i2, i3)];
                            acc = op == 0 ? fmax(acc, v) : acc + v;
                        }
                    ref[idx4(node->ne, ox, oy, i2, i3)] = op == 0 ? acc : acc / (kp[0] * kp[1]);
                }
    expect_close(node, ref, 1e-12, "POOL_2D");
    free(x);
    free(ref);
}

static void check_pool_2d_back(enum ferry_type t, int op, const int32_t kp[6]) {
    struct ferry_tensor *af = rand_tensor(t, 11, 9, 3, 2);
    const int64_t ow = pool_len(af->ne[0], kp[0], kp[2], kp[4]), oh = pool_len(af->ne[1], kp[1], kp[3], kp[5]);
    struct ferry_tensor *g = rand_tensor(FERRY_TYPE_F32, ow, oh, 3, 2);
    struct ferry_tensor *node = new_node(FERRY_OP_POOL_2D_BACK, t, 11, 9, 3, 2, g, af);
    memcpy(node->op_params + 1, kp, 6 * sizeof(int32_t));
    node->op_params[0] = op;
    if (!run_threads(node, "POOL_2D_BACK")) return;
    float *x = test_tensor_to_f32(af), *gv = test_tensor_to_f32(g);
    double *ref = ref_alloc(node);
    for (int64_t i3 = 0; i3 < 2; i3++)
        for (int64_t i2 = 0; i2 < 3; i2++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    const double gr = gv[idx4(g->ne, ox, oy, i2, i3)];
                    double best = -FLT_MAX;
                    int64_t at = -1;
                    for (int64_t ky = 0; ky < kp[1]; ky++)
                        for (int64_t kx = 0; kx < kp[0]; kx++) {
                            const int64_t sx = ox * kp[2] - kp[4] + kx, sy = oy * kp[3] - kp[5] + ky;
                            if (sx < 0 || sx >= af->ne[0] || sy < 0 || sy >= af->ne[1]) continue;
                            const int64_t e = idx4(af->ne, sx, sy, i2, i3);
                            if (op == 1) ref[e] += gr / (kp[0] * kp[1]);
                            else if (x[e] > best) best = x[e], at = e;
                        }
                    if (op == 0 && at >= 0) ref[at] += gr;
                }
    expect_close(node, ref, t == FERRY_TYPE_F32 ? 1e-12 : 1e-5, "POOL_2D_BACK");
    free(x);
    free(gv);
    free(ref);
}

static void test_pool(void) {
    for (int op = 0; op < 2; op++) {
        for (int32_t k = 1; k <= 3; k++)
            for (int32_t s = 1; s <= 3; s++)
                for (int32_t p = 0; p <= 2; p++) {
                    check_pool_1d(rand_tensor(FERRY_TYPE_F32, 11, 3, 2, 1), op, k, s, p);
                    check_pool_1d(rand_tensor(FERRY_TYPE_F16, 10, 1, 3, 2), op, k, s, p);
                    test_free_kept();
                }
        static const int32_t kp[][6] = { { 3, 3, 1, 1, 1, 1 }, { 1, 3, 2, 1, 0, 1 }, { 3, 2, 2, 2, 1, 0 },
                                         { 2, 2, 2, 2, 0, 0 } };
        for (size_t i = 0; i < sizeof kp / sizeof kp[0]; i++) {
            check_pool_2d(rand_tensor(FERRY_TYPE_F32, 10, 10, 3, 1), op, kp[i]);
            check_pool_2d(rand_tensor(FERRY_TYPE_F16, 9, 7, 2, 2), op, kp[i]);
            check_pool_2d(test_permute(rand_tensor(FERRY_TYPE_F32, 8, 11, 2, 1), 1, 0, 2, 3), op, kp[i]);
            check_pool_2d_back(FERRY_TYPE_F32, op, kp[i]);
            check_pool_2d_back(FERRY_TYPE_F16, op, kp[i]);
            test_free_kept();
        }
    }
}

/* ---- UPSCALE ---- */

static double ref_px(const float *x, const int64_t *ne, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    i0 = i0 < 0 ? 0 : i0 >= ne[0] ? ne[0] - 1 : i0;
    i1 = i1 < 0 ? 0 : i1 >= ne[1] ? ne[1] - 1 : i1;
    return x[idx4(ne, i0, i1, i2, i3)];
}

static double cubic_w(double t) { /* Keys' kernel, a = -0.75 */
    const double a = -0.75;
    t = fabs(t);
    if (t <= 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
    if (t < 2) return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a;
    return 0;
}

static void check_upscale(struct ferry_tensor *a, const int64_t ne[4], int32_t mode, const char *what) {
    struct ferry_tensor *node = new_node(FERRY_OP_UPSCALE, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], a, NULL);
    node->op_params[0] = mode;
    if (!run_threads(node, what)) return;
    float *x = test_tensor_to_f32(a);
    double *ref = ref_alloc(node);
    const int m = mode & 0xff;
    const bool align = mode & 0x100, aa = mode & 0x200;
    double sf[4], po = align ? 0 : 0.5;
    for (int d = 0; d < 4; d++) sf[d] = (double)ne[d] / a->ne[d];
    for (int d = 0; d < 2 && align; d++)
        if (ne[d] > 1 && a->ne[d] > 1) sf[d] = (double)(ne[d] - 1) / (a->ne[d] - 1);
    for (int64_t i3 = 0; i3 < ne[3]; i3++)
        for (int64_t i2 = 0; i2 < ne[2]; i2++)
            for (int64_t i1 = 0; i1 < ne[1]; i1++)
                for (int64_t i0 = 0; i0 < ne[0]; i0++) {
                    const int64_t j2 = (int64_t)(i2 / sf[2]), j3 = (int64_t)(i3 / sf[3]);
                    double v = 0;
                    if (m == 0) {
                        v = x[idx4(a->ne, (int64_t)(i0 / sf[0]), (int64_t)(i1 / sf[1]), j2, j3)];
                    } else if (aa) {
                        const double cx = (i0 + po) / sf[0], cy = (i1 + po) / sf[1];
                        const double sx = fmax(1, 1 / sf[0]), sy = fmax(1, 1 / sf[1]);
                        double tw = 0;
                        for (int64_t y = 0; y < a->ne[1]; y++)
                            for (int64_t xx = 0; xx < a->ne[0]; xx++) {
                                const double wgt = fmax(0, 1 - fabs((xx - cx + po) / sx)) *
                                                   fmax(0, 1 - fabs((y - cy + po) / sy));
                                if (wgt <= 0) continue;
                                v += wgt * x[idx4(a->ne, xx, y, j2, j3)];
                                tw += wgt;
                            }
                        if (tw > 0) v /= tw;
                    } else {
                        const double fx = (i0 + po) / sf[0] - po, fy = (i1 + po) / sf[1] - po;
                        const int64_t x0 = (int64_t)floor(fx), y0 = (int64_t)floor(fy);
                        if (m == 1) {
                            const int64_t cx0 = x0 < 0 ? 0 : x0 >= a->ne[0] ? a->ne[0] - 1 : x0;
                            const int64_t cy0 = y0 < 0 ? 0 : y0 >= a->ne[1] ? a->ne[1] - 1 : y0;
                            const double dx = fmin(fmax(fx - cx0, 0), 1), dy = fmin(fmax(fy - cy0, 0), 1);
                            v = ref_px(x, a->ne, cx0, cy0, j2, j3) * (1 - dx) * (1 - dy) +
                                ref_px(x, a->ne, x0 + 1, cy0, j2, j3) * dx * (1 - dy) +
                                ref_px(x, a->ne, cx0, y0 + 1, j2, j3) * (1 - dx) * dy +
                                ref_px(x, a->ne, x0 + 1, y0 + 1, j2, j3) * dx * dy;
                        } else {
                            for (int r = -1; r <= 2; r++)
                                for (int c = -1; c <= 2; c++)
                                    v += cubic_w(fx - (x0 + c)) * cubic_w(fy - (y0 + r)) *
                                         ref_px(x, a->ne, x0 + c, y0 + r, j2, j3);
                        }
                    }
                    ref[idx4(ne, i0, i1, i2, i3)] = v;
                }
    expect_close(node, ref, 1e-10, what);
    free(x);
    free(ref);
}

static void test_upscale(void) {
    static const int32_t modes[] = { 0, 1, 2, 1 | 0x200, 1 | 0x100, 2 | 0x100 };
    static const int64_t shapes[][2][4] = {
        { { 6, 5, 3, 2 }, { 12, 10, 3, 2 } }, { { 2, 5, 7, 3 }, { 5, 7, 9, 4 } }, { { 9, 7, 5, 3 }, { 4, 5, 3, 2 } },
        { { 1, 4, 3, 2 }, { 2, 8, 3, 2 } },   { { 4, 1, 3, 2 }, { 1, 1, 3, 2 } },
    };
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int64_t *ne = shapes[s][0];
            check_upscale(rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3]), shapes[s][1], modes[m], "UPSCALE");
            struct ferry_tensor *t = test_permute(rand_tensor(FERRY_TYPE_F32, ne[1], ne[0], ne[2], ne[3]), 1, 0, 2, 3);
            check_upscale(t, shapes[s][1], modes[m], "UPSCALE transposed input");
            test_free_kept();
        }
}

/* ---- PAD_REFLECT_1D, ROLL ---- */

static void test_pad_reflect_roll(void) {
    static const int32_t pads[][2] = { { 0, 0 }, { 3, 2 }, { 10, 9 }, { 0, 10 } };
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++) {
        struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 11, 4, 3, 2);
        const int64_t ne0 = 11 + pads[i][0] + pads[i][1];
        struct ferry_tensor *node = new_node(FERRY_OP_PAD_REFLECT_1D, FERRY_TYPE_F32, ne0, 4, 3, 2, a, NULL);
        set_params(node, pads[i], 2);
        if (run_threads(node, "PAD_REFLECT_1D")) {
            float *x = test_tensor_to_f32(a);
            double *ref = ref_alloc(node);
            for (int64_t r = 0; r < 24; r++)
                for (int64_t j = 0; j < ne0; j++) {
                    int64_t s = j - pads[i][0];
                    s = s < 0 ? -s : s > 10 ? 20 - s : s; /* mirror about 0 and 10 */
                    ref[r * ne0 + j] = x[r * 11 + s];
                }
            expect_exact(node, ref, "PAD_REFLECT_1D");
            free(x);
            free(ref);
        }
        test_free_kept();
    }
    static const int32_t shifts[][4] = { { 3, -2, 1, -1 }, { 0, 0, 0, 0 }, { -9, 3, -3, 2 } };
    for (size_t i = 0; i < sizeof shifts / sizeof shifts[0]; i++)
        for (int perm = 0; perm < 2; perm++) {
            struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 10, 5, 4, 3);
            if (perm) a = test_permute(a, 0, 2, 1, 3);
            struct ferry_tensor *node = new_node(FERRY_OP_ROLL, FERRY_TYPE_F32, a->ne[0], a->ne[1], a->ne[2], a->ne[3], a, NULL);
            set_params(node, shifts[i], 4);
            if (!run_threads(node, "ROLL")) continue;
            float *x = test_tensor_to_f32(a);
            double *ref = ref_alloc(node);
            const int64_t *ne = a->ne;
            for (int64_t i3 = 0; i3 < ne[3]; i3++)
                for (int64_t i2 = 0; i2 < ne[2]; i2++)
                    for (int64_t i1 = 0; i1 < ne[1]; i1++)
                        for (int64_t i0 = 0; i0 < ne[0]; i0++) {
                            const int64_t c[4] = { i0, i1, i2, i3 };
                            int64_t s[4];
                            for (int d = 0; d < 4; d++) s[d] = ((c[d] - shifts[i][d]) % ne[d] + ne[d]) % ne[d];
                            ref[idx4(ne, i0, i1, i2, i3)] = x[idx4(ne, s[0], s[1], s[2], s[3])];
                        }
            expect_exact(node, ref, "ROLL");
            free(x);
            free(ref);
            test_free_kept();
        }
}

/* ---- WIN_PART, WIN_UNPART, GET_REL_POS, ADD_REL_POS ---- */

static void test_windows(void) {
    const int64_t c = 5, W = 11, H = 8, w = 4, npx = 3, npy = 2;
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, c, W, H, 1);
    struct ferry_tensor *part = new_node(FERRY_OP_WIN_PART, FERRY_TYPE_F32, c, w, w, npx * npy, a, NULL);
    const int32_t pp[3] = { (int32_t)npx, (int32_t)npy, (int32_t)w };
    set_params(part, pp, 3);
    if (run_threads(part, "WIN_PART")) {
        float *x = test_tensor_to_f32(a);
        double *ref = ref_alloc(part);
        for (int64_t py = 0; py < npy; py++)
            for (int64_t px = 0; px < npx; px++)
                for (int64_t y = 0; y < w; y++)
                    for (int64_t xx = 0; xx < w; xx++)
                        for (int64_t ch = 0; ch < c; ch++) {
                            const int64_t sx = px * w + xx, sy = py * w + y;
                            ref[idx4(part->ne, ch, xx, y, py * npx + px)] =
                                sx < W && sy < H ? x[idx4(a->ne, ch, sx, sy, 0)] : 0;
                        }
        expect_exact(part, ref, "WIN_PART");
        free(ref);
        /* WIN_UNPART of the windows gives the image back */
        struct ferry_tensor *un = new_node(FERRY_OP_WIN_UNPART, FERRY_TYPE_F32, c, W, H, 1, part, NULL);
        un->op_params[0] = (int32_t)w;
        double *back = ref_alloc(un);
        for (int64_t i = 0; i < c * W * H; i++) back[i] = x[i];
        if (run_threads(un, "WIN_UNPART")) expect_exact(un, back, "WIN_UNPART");
        free(back);
        free(x);
    }
    test_free_kept();

    /* GET_REL_POS: row (i1, i2) is src row kh - 1 - i1 + i2 */
    for (int t = 0; t < 2; t++) {
        const enum ferry_type ty = t ? FERRY_TYPE_BF16 : FERRY_TYPE_F16;
        const int64_t C = 6, k = 5;
        struct ferry_tensor *rp = rand_tensor(ty, C, 2 * k - 1, 1, 1);
        struct ferry_tensor *node = new_node(FERRY_OP_GET_REL_POS, ty, C, k, k, 1, rp, NULL);
        if (run_threads(node, "GET_REL_POS")) {
            float *x = test_tensor_to_f32(rp);
            double *ref = ref_alloc(node);
            for (int64_t i2 = 0; i2 < k; i2++)
                for (int64_t i1 = 0; i1 < k; i1++)
                    for (int64_t i0 = 0; i0 < C; i0++) ref[idx4(node->ne, i0, i1, i2, 0)] = x[(k - 1 - i1 + i2) * C + i0];
            expect_exact(node, ref, "GET_REL_POS");
            free(x);
            free(ref);
        }
        test_free_kept();
    }

    /* ADD_REL_POS: out[r, h*W + w] = a + ph[h, r] + pw[w, r] */
    const int64_t Wd = 4, Hd = 3, B = 2;
    for (int inplace = 0; inplace < 2; inplace++) {
        struct ferry_tensor *x = rand_tensor(FERRY_TYPE_F32, Wd * Wd, Wd * Hd, B, 1);
        struct ferry_tensor *pw = rand_tensor(FERRY_TYPE_F32, Wd, Wd, Hd, B);
        struct ferry_tensor *ph = rand_tensor(FERRY_TYPE_F32, Wd, Wd, Hd, B);
        float *xv = test_tensor_to_f32(x), *pwv = test_tensor_to_f32(pw), *phv = test_tensor_to_f32(ph);
        struct ferry_tensor *node = new_node(FERRY_OP_ADD_REL_POS, FERRY_TYPE_F32, Wd * Wd, Wd * Hd, B, 1, x, pw);
        node->src[2] = ph;
        node->op_params[0] = inplace;
        if (inplace) { /* the node is src0's memory */
            free(node->data);
            node->data = NULL;
            node->view_src = x;
            node->data = x->data;
        }
        struct ferry_error err = { 0 };
        if (CHECK(ferry_engine_compute(engines[2], &node, 1, &err) == FERRY_OK, "ADD_REL_POS: %s", err.msg)) {
            double *ref = ref_alloc(node);
            for (int64_t b = 0; b < B; b++)
                for (int64_t r = 0; r < Wd * Hd; r++)
                    for (int64_t col = 0; col < Wd * Wd; col++) {
                        const int64_t h = col / Wd, ww = col % Wd;
                        ref[idx4(node->ne, col, r, b, 0)] = (double)xv[idx4(x->ne, col, r, b, 0)] +
                                                           phv[h + Wd * (r + Wd * Hd * b)] + pwv[ww + Wd * (r + Wd * Hd * b)];
                    }
            expect_close(node, ref, 1e-12, inplace ? "ADD_REL_POS in place" : "ADD_REL_POS");
            free(ref);
        }
        if (inplace) node->view_src = NULL, node->data = malloc(1); /* freed as its own tensor */
        free(xv);
        free(pwv);
        free(phv);
        test_free_kept();
    }
}

/* ---- hostile nodes ---- */

static struct ferry_tensor *im2col_node(int32_t s0, int32_t d0, int32_t p0, int64_t ow) {
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F16, 3, 3, 2, 1), *b = new_tensor(FERRY_TYPE_F32, 10, 10, 2, 1);
    struct ferry_tensor *n = new_node(FERRY_OP_IM2COL, FERRY_TYPE_F32, 18, ow, 8, 1, a, b);
    const int32_t p[7] = { s0, 1, p0, 0, d0, 1, 1 };
    set_params(n, p, 7);
    return n;
}

static void test_hostile(void) {
    struct ferry_tensor *n;
    /* IM2COL: zero and negative strides and dilations, a wrong length,
     * params whose output length overflows, an f16 image into f32 */
    test_rejected(im2col_node(0, 1, 0, 8), "IM2COL stride 0");
    test_rejected(im2col_node(-1, 1, 0, 8), "IM2COL stride -1");
    test_rejected(im2col_node(1, 0, 0, 8), "IM2COL dilation 0");
    test_rejected(im2col_node(1, 1, 0, 9), "IM2COL wrong OW");
    test_rejected(im2col_node(1, INT_MAX, 0, 8), "IM2COL huge dilation");
    test_rejected(im2col_node(1, 1, INT_MAX, 8), "IM2COL huge padding");
    n = im2col_node(1, 1, 0, 8);
    n->src[1] = new_tensor(FERRY_TYPE_F16, 10, 10, 2, 1);
    test_rejected(n, "IM2COL f16 image -> f32");
    n = im2col_node(1, 1, 0, 8);
    n->type = FERRY_TYPE_BF16;
    test_rejected(n, "IM2COL bf16 output");
    n = im2col_node(1, 1, 0, 8);
    n->ne[0] = 17;
    test_rejected(n, "IM2COL wrong row length");

    /* a kernel with 2^40 columns at stride 0 (tiny extent): its product
     * with the dilation overflows */
    struct ferry_tensor *wide = new_tensor(FERRY_TYPE_F16, 1, 1, 1, 1);
    wide->ne[0] = (int64_t)1 << 40;
    wide->nb[0] = wide->nb[1] = wide->nb[2] = wide->nb[3] = 0;
    n = im2col_node(1, 1 << 30, 0, 8);
    n->src[0] = wide;
    test_rejected(n, "IM2COL 2^40 kernel, dilation 2^30");

    /* CONV_2D: shapes, types, params */
    struct ferry_tensor *k = new_tensor(FERRY_TYPE_F32, 3, 3, 4, 5), *img = new_tensor(FERRY_TYPE_F32, 12, 12, 4, 1);
    n = new_node(FERRY_OP_CONV_2D, FERRY_TYPE_F32, 10, 10, 5, 1, k, img);
    const int32_t ok2[6] = { 1, 1, 0, 0, 1, 1 };
    set_params(n, ok2, 6);
    struct ferry_error err = { 0 };
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "CONV_2D baseline accepted: %s", err.msg);
    n->op_params[1] = 0;
    test_rejected(n, "CONV_2D stride 0");
    n->op_params[1] = 1, n->op_params[5] = -2;
    test_rejected(n, "CONV_2D dilation -2");
    n->op_params[5] = 1;
    n->ne[2] = 4;
    test_rejected(n, "CONV_2D wrong OC");
    n->ne[2] = 5;
    n->src[1] = new_tensor(FERRY_TYPE_F32, 12, 12, 3, 1);
    test_rejected(n, "CONV_2D channel mismatch");
    n->src[1] = new_tensor(FERRY_TYPE_F16, 12, 12, 4, 1);
    test_rejected(n, "CONV_2D f16 input");
    n->src[1] = img;
    n->src[0] = new_tensor(FERRY_TYPE_Q8_0, 32, 3, 4, 5);
    test_rejected(n, "CONV_2D q8_0 kernel");

    /* CONV_3D: C*OC, N*C and zero counts */
    struct ferry_tensor *k3 = new_tensor(FERRY_TYPE_F32, 2, 2, 2, 6), *i3 = new_tensor(FERRY_TYPE_F32, 5, 5, 5, 4);
    n = new_node(FERRY_OP_CONV_3D, FERRY_TYPE_F32, 4, 4, 4, 6, k3, i3);
    const int32_t ok3[12] = { 1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 3 };
    set_params(n, ok3, 12);
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "CONV_3D baseline accepted: %s", err.msg);
    n->op_params[9] = 3;
    test_rejected(n, "CONV_3D C does not divide");
    n->op_params[9] = 0;
    test_rejected(n, "CONV_3D C = 0");
    n->op_params[9] = 2, n->op_params[8] = 0;
    test_rejected(n, "CONV_3D dilation 0");

    /* CONV_2D_DW, CONV_TRANSPOSE */
    n = new_node(FERRY_OP_CONV_2D_DW, FERRY_TYPE_F32, 10, 10, 4, 1, new_tensor(FERRY_TYPE_F32, 3, 3, 1, 3), img);
    set_params(n, ok2, 6);
    test_rejected(n, "CONV_2D_DW kernel channels");
    n = new_node(FERRY_OP_CONV_TRANSPOSE_1D, FERRY_TYPE_F32, 12, 3, 1, 1, new_tensor(FERRY_TYPE_F32, 3, 3, 2, 1),
                 new_tensor(FERRY_TYPE_F32, 10, 2, 1, 1));
    n->op_params[0] = 1, n->op_params[2] = 1;
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "CONV_TRANSPOSE_1D baseline accepted: %s", err.msg);
    n->op_params[1] = 1;
    test_rejected(n, "CONV_TRANSPOSE_1D padding 1");
    n->op_params[1] = 0, n->op_params[0] = 0;
    test_rejected(n, "CONV_TRANSPOSE_1D stride 0");
    n->op_params[0] = INT_MAX;
    test_rejected(n, "CONV_TRANSPOSE_1D huge stride");
    n = new_node(FERRY_OP_CONV_TRANSPOSE_2D, FERRY_TYPE_F32, 12, 12, 3, 1, new_tensor(FERRY_TYPE_F16, 3, 3, 3, 2),
                 new_tensor(FERRY_TYPE_F32, 10, 10, 3, 1));
    n->op_params[0] = 1;
    test_rejected(n, "CONV_TRANSPOSE_2D channel mismatch");

    /* IM2COL_3D, IM2COL_BACK, COL2IM_1D */
    n = new_node(FERRY_OP_IM2COL_3D, FERRY_TYPE_F32, 24, 4, 4, 4, new_tensor(FERRY_TYPE_F16, 2, 2, 2, 3),
                 new_tensor(FERRY_TYPE_F32, 5, 5, 5, 3));
    const int32_t p3[10] = { 1, 1, 1, 0, 0, 0, 1, 1, 1, 3 };
    set_params(n, p3, 10);
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "IM2COL_3D baseline accepted: %s", err.msg);
    n->op_params[9] = 0;
    test_rejected(n, "IM2COL_3D IC = 0");
    n->op_params[9] = -3;
    test_rejected(n, "IM2COL_3D IC < 0");
    n->op_params[9] = 3, n->op_params[2] = 0;
    test_rejected(n, "IM2COL_3D stride 0");
    n = new_node(FERRY_OP_IM2COL_BACK, FERRY_TYPE_F32, 10, 10, 2, 1, new_tensor(FERRY_TYPE_F32, 18, 9, 8, 1),
                 new_tensor(FERRY_TYPE_F16, 3, 3, 2, 1));
    const int32_t pb[7] = { 1, 1, 0, 0, 1, 1, 1 };
    set_params(n, pb, 7);
    test_rejected(n, "IM2COL_BACK gradient of the wrong length");
    n = new_node(FERRY_OP_COL2IM_1D, FERRY_TYPE_F32, 10, 3, 1, 1, new_tensor(FERRY_TYPE_F32, 12, 4, 1, 1), NULL);
    const int32_t pc[3] = { 2, 3, 0 };
    set_params(n, pc, 3);
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "COL2IM_1D baseline accepted: %s", err.msg);
    n->op_params[1] = 5;
    test_rejected(n, "COL2IM_1D OC does not divide");
    n->op_params[1] = 0;
    test_rejected(n, "COL2IM_1D OC = 0");
    n->op_params[1] = 3, n->op_params[2] = -1;
    test_rejected(n, "COL2IM_1D negative padding");
    n->op_params[2] = 5;
    test_rejected(n, "COL2IM_1D padding eats the signal");
    n->op_params[2] = 0, n->type = FERRY_TYPE_F16;
    test_rejected(n, "COL2IM_1D type change");

    /* pooling */
    struct ferry_tensor *pin = new_tensor(FERRY_TYPE_F32, 10, 10, 3, 1);
    n = new_node(FERRY_OP_POOL_2D, FERRY_TYPE_F32, 10, 10, 3, 1, pin, NULL);
    const int32_t pk[7] = { 0, 3, 3, 1, 1, 1, 1 };
    set_params(n, pk, 7);
    CHECK(ferry_engine_check_node(n, &err) == FERRY_OK, "POOL_2D baseline accepted: %s", err.msg);
    n->op_params[0] = 2;
    test_rejected(n, "POOL_2D COUNT");
    n->op_params[0] = 1, n->op_params[3] = 0;
    test_rejected(n, "POOL_2D stride 0");
    n->op_params[3] = 1, n->op_params[1] = 0;
    test_rejected(n, "POOL_2D kernel 0");
    n->op_params[1] = 3, n->op_params[5] = INT_MAX;
    test_rejected(n, "POOL_2D huge padding");
    n = new_node(FERRY_OP_POOL_1D, FERRY_TYPE_F32, 4, 10, 3, 1, pin, NULL);
    const int32_t p1[4] = { 1, 3, 3, 0 };
    set_params(n, p1, 4);
    test_rejected(n, "POOL_1D wrong length");
    n = new_node(FERRY_OP_POOL_2D_BACK, FERRY_TYPE_F32, 10, 10, 3, 1, new_tensor(FERRY_TYPE_F32, 9, 10, 3, 1), pin);
    set_params(n, pk, 7);
    test_rejected(n, "POOL_2D_BACK gradient shape");

    /* spatial ops */
    n = new_node(FERRY_OP_UPSCALE, FERRY_TYPE_F32, 20, 20, 3, 1, pin, NULL);
    n->op_params[0] = 3;
    test_rejected(n, "UPSCALE mode 3");
    n = new_node(FERRY_OP_UPSCALE, FERRY_TYPE_F32, 20, 20, 3, 1, new_tensor(FERRY_TYPE_F32, 0, 10, 3, 1), NULL);
    test_rejected(n, "UPSCALE of an empty row");
    n = new_node(FERRY_OP_UPSCALE, FERRY_TYPE_F16, 20, 20, 3, 1, new_tensor(FERRY_TYPE_F16, 10, 10, 3, 1), NULL);
    test_rejected(n, "UPSCALE f16");
    n = new_node(FERRY_OP_PAD_REFLECT_1D, FERRY_TYPE_F32, 30, 10, 3, 1, pin, NULL);
    n->op_params[0] = 10, n->op_params[1] = 10;
    test_rejected(n, "PAD_REFLECT_1D padding = ne0");
    n->op_params[0] = -1, n->op_params[1] = 21;
    test_rejected(n, "PAD_REFLECT_1D negative padding");
    n = new_node(FERRY_OP_ROLL, FERRY_TYPE_F32, 10, 10, 3, 1, pin, NULL);
    n->op_params[2] = 3;
    test_rejected(n, "ROLL shift = ne");
    n->op_params[2] = INT_MIN;
    test_rejected(n, "ROLL shift INT_MIN");
    n = new_node(FERRY_OP_WIN_PART, FERRY_TYPE_F32, 10, 4, 4, 6, pin, NULL);
    const int32_t wp[3] = { 3, 3, 4 };
    set_params(n, wp, 3);
    test_rejected(n, "WIN_PART window count");
    n->op_params[0] = 0;
    test_rejected(n, "WIN_PART npx 0");
    n = new_node(FERRY_OP_WIN_UNPART, FERRY_TYPE_F32, 10, 9, 9, 1, new_tensor(FERRY_TYPE_F32, 10, 4, 4, 8), NULL);
    n->op_params[0] = 4;
    test_rejected(n, "WIN_UNPART too few windows");
    n->op_params[0] = 0;
    test_rejected(n, "WIN_UNPART window 0");
    n = new_node(FERRY_OP_GET_REL_POS, FERRY_TYPE_F16, 6, 5, 5, 1, new_tensor(FERRY_TYPE_F16, 6, 8, 1, 1), NULL);
    test_rejected(n, "GET_REL_POS too few rows");
    n = new_node(FERRY_OP_GET_REL_POS, FERRY_TYPE_F32, 6, 5, 5, 1, new_tensor(FERRY_TYPE_F16, 6, 9, 1, 1), NULL);
    test_rejected(n, "GET_REL_POS f32 output");
    n = new_node(FERRY_OP_ADD_REL_POS, FERRY_TYPE_F32, 16, 12, 2, 1, new_tensor(FERRY_TYPE_F32, 16, 12, 2, 1),
                 new_tensor(FERRY_TYPE_F32, 4, 4, 3, 2));
    n->src[2] = new_tensor(FERRY_TYPE_F32, 4, 4, 3, 3);
    test_rejected(n, "ADD_REL_POS pw and ph differ");
    test_free_kept();
}

/* ---- random nodes: whatever check() accepts must run in bounds ---- */

static int64_t rnd(int64_t lo, int64_t hi) { return lo + (int64_t)(test_rand_u64(&rng) % (uint64_t)(hi - lo + 1)); }

/* A tensor exactly as large as its strides need, so the sanitizers see a
 * stray access. */
static struct ferry_tensor *exact_tensor(enum ferry_type t, int64_t a, int64_t b, int64_t c, int64_t d) {
    struct ferry_tensor *x = new_tensor(t, a, b, c, d);
    const size_t n = ferry_nbytes(x);
    free(x->data);
    x->data = malloc(n ? n : 1);
    if (n) memset(x->data, 0x3c, n);
    return x;
}

static int random_ran; /* accepted random nodes, which ran */

/* Sources of random small shapes and mostly sensible params, the output
 * shaped by the formulas of docs/ops.md; then now and then one param or
 * one output size made hostile. */
static void random_node(void) {
    static const enum ferry_op ops[] = {
        FERRY_OP_IM2COL, FERRY_OP_IM2COL_3D, FERRY_OP_IM2COL_BACK, FERRY_OP_COL2IM_1D, FERRY_OP_CONV_2D,
        FERRY_OP_CONV_3D, FERRY_OP_CONV_2D_DW, FERRY_OP_CONV_TRANSPOSE_1D, FERRY_OP_CONV_TRANSPOSE_2D,
        FERRY_OP_POOL_1D, FERRY_OP_POOL_2D, FERRY_OP_POOL_2D_BACK, FERRY_OP_UPSCALE, FERRY_OP_PAD_REFLECT_1D,
        FERRY_OP_ROLL, FERRY_OP_WIN_PART, FERRY_OP_WIN_UNPART, FERRY_OP_GET_REL_POS, FERRY_OP_ADD_REL_POS,
    };
    const enum ferry_op op = ops[rnd(0, sizeof ops / sizeof ops[0] - 1)];
    const enum ferry_type kt = rnd(0, 1) ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
    int32_t p[12];
    for (int i = 0; i < 12; i++) p[i] = (int32_t)rnd(1, 3);
    const int64_t w = rnd(1, 9), h = rnd(1, 9), d = rnd(1, 5), c = rnd(1, 4), n = rnd(1, 3);
    const int64_t kw = rnd(1, 4), kh = rnd(1, 4), kd = rnd(1, 3), oc = rnd(1, 4);
    struct ferry_tensor *a = NULL, *b = NULL, *s2 = NULL;
    int64_t o[4] = { 1, 1, 1, 1 };
    switch (op) {
    case FERRY_OP_IM2COL:
    case FERRY_OP_CONV_2D:
    case FERRY_OP_CONV_2D_DW:
    case FERRY_OP_IM2COL_BACK:
        p[2] = (int32_t)rnd(-1, 3), p[3] = (int32_t)rnd(-1, 3), p[6] = 1;
        a = exact_tensor(kt, kw, kh, op == FERRY_OP_CONV_2D_DW ? 1 : c, op == FERRY_OP_CONV_2D_DW ? c : oc);
        b = exact_tensor(FERRY_TYPE_F32, w, h, c, n);
        o[0] = out_len(w, kw, p[0], p[2], p[4]), o[1] = out_len(h, kh, p[1], p[3], p[5]);
        if (o[0] < 0 || o[1] < 0) return;
        if (op == FERRY_OP_IM2COL) o[3] = n, o[2] = o[1], o[1] = o[0], o[0] = c * kh * kw;
        else o[2] = op == FERRY_OP_CONV_2D ? oc : c, o[3] = n;
        if (op == FERRY_OP_IM2COL_BACK) {
            struct ferry_tensor *g = exact_tensor(FERRY_TYPE_F32, c * kh * kw, o[0], o[1], n);
            b = a, a = g, o[0] = w, o[1] = h, o[2] = c, o[3] = n;
        }
        break;
    case FERRY_OP_IM2COL_3D:
    case FERRY_OP_CONV_3D:
        for (int i = 3; i < 6; i++) p[i] = (int32_t)rnd(0, 2);
        p[9] = (int32_t)c, p[10] = (int32_t)n, p[11] = (int32_t)oc;
        a = exact_tensor(kt, kw, kh, kd, c * oc);
        b = exact_tensor(FERRY_TYPE_F32, w, h, d, c * n);
        o[0] = out_len(w, kw, p[0], p[3], p[6]), o[1] = out_len(h, kh, p[1], p[4], p[7]);
        o[2] = out_len(d, kd, p[2], p[5], p[8]);
        if (o[0] < 0 || o[1] < 0 || o[2] < 0) return;
        if (op == FERRY_OP_CONV_3D) o[3] = oc * n;
        else o[3] = o[2] * n, o[2] = o[1], o[1] = o[0], o[0] = kw * kh * kd * c;
        break;
    case FERRY_OP_COL2IM_1D:
        p[1] = (int32_t)oc, p[2] = (int32_t)rnd(0, 2);
        a = exact_tensor(kt, kw * oc, w, 1, 1);
        o[0] = (w - 1) * p[0] + kw - 2 * p[2], o[1] = oc;
        if (o[0] < 0) return;
        break;
    case FERRY_OP_CONV_TRANSPOSE_1D:
        p[1] = 0, p[2] = 1;
        a = exact_tensor(kt, kw, oc, c, 1), b = exact_tensor(FERRY_TYPE_F32, w, c, 1, 1);
        o[0] = (w - 1) * p[0] + kw, o[1] = oc;
        break;
    case FERRY_OP_CONV_TRANSPOSE_2D:
        a = exact_tensor(kt, kw, kh, oc, c), b = exact_tensor(FERRY_TYPE_F32, w, h, c, n);
        o[0] = (w - 1) * p[0] + kw, o[1] = (h - 1) * p[0] + kh, o[2] = oc, o[3] = n;
        break;
    case FERRY_OP_POOL_1D:
    case FERRY_OP_POOL_2D:
    case FERRY_OP_POOL_2D_BACK: {
        const bool one = op == FERRY_OP_POOL_1D;
        p[0] = (int32_t)rnd(0, 1);
        if (one) p[3] = (int32_t)rnd(0, 2);
        else p[5] = (int32_t)rnd(0, 2), p[6] = (int32_t)rnd(0, 2);
        a = exact_tensor(kt, w, h, c, n);
        o[0] = one ? pool_len(w, p[1], p[2], p[3]) : pool_len(w, p[1], p[3], p[5]);
        o[1] = one ? h : pool_len(h, p[2], p[4], p[6]), o[2] = c, o[3] = n;
        if (o[0] < 0 || o[1] < 0) return;
        if (op == FERRY_OP_POOL_2D_BACK) {
            b = a, a = exact_tensor(FERRY_TYPE_F32, o[0], o[1], c, n);
            o[0] = w, o[1] = h;
        }
        break;
    }
    case FERRY_OP_UPSCALE:
        p[0] = (int32_t)rnd(0, 2) | (int32_t)(rnd(0, 3) << 8);
        a = exact_tensor(FERRY_TYPE_F32, w, h, c, n);
        o[0] = rnd(1, 12), o[1] = rnd(1, 12), o[2] = rnd(1, 5), o[3] = rnd(1, 3);
        break;
    case FERRY_OP_PAD_REFLECT_1D:
        p[0] = (int32_t)rnd(0, w - 1), p[1] = (int32_t)rnd(0, w - 1);
        a = exact_tensor(FERRY_TYPE_F32, w, h, c, n);
        o[0] = w + p[0] + p[1], o[1] = h, o[2] = c, o[3] = n;
        break;
    case FERRY_OP_ROLL:
        a = exact_tensor(FERRY_TYPE_F32, w, h, c, n);
        o[0] = w, o[1] = h, o[2] = c, o[3] = n;
        for (int i = 0; i < 4; i++) p[i] = (int32_t)rnd(1 - o[i], o[i] - 1);
        break;
    case FERRY_OP_WIN_PART:
        p[2] = (int32_t)rnd(1, 4), p[0] = (int32_t)((w + p[2] - 1) / p[2]), p[1] = (int32_t)((h + p[2] - 1) / p[2]);
        a = exact_tensor(FERRY_TYPE_F32, c, w, h, 1);
        o[0] = c, o[1] = o[2] = p[2], o[3] = (int64_t)p[0] * p[1];
        break;
    case FERRY_OP_WIN_UNPART:
        p[0] = (int32_t)rnd(1, 4);
        a = exact_tensor(FERRY_TYPE_F32, c, p[0], p[0], ((w + p[0] - 1) / p[0]) * ((h + p[0] - 1) / p[0]));
        o[0] = c, o[1] = w, o[2] = h;
        break;
    case FERRY_OP_GET_REL_POS:
        a = exact_tensor(FERRY_TYPE_F16, c, 2 * h - 1, 1, 1);
        o[0] = c, o[1] = o[2] = h;
        break;
    default: /* ADD_REL_POS */
        a = exact_tensor(FERRY_TYPE_F32, kw * kw, kw * kh, n, 1);
        b = exact_tensor(FERRY_TYPE_F32, kw, kw, kh, n), s2 = exact_tensor(FERRY_TYPE_F32, kw, kw, kh, n);
        o[0] = kw * kw, o[1] = kw * kh, o[2] = n;
        break;
    }
    const enum ferry_type ot = op == FERRY_OP_GET_REL_POS ? FERRY_TYPE_F16
                               : op == FERRY_OP_COL2IM_1D || op == FERRY_OP_POOL_2D_BACK ? kt
                                                                                         : FERRY_TYPE_F32;
    if (rnd(0, 3) == 0 && a && !ferry_is_empty(a)) a = test_permute(a, 1, 0, 2, 3); /* strided source */
    if (rnd(0, 4) == 0) p[rnd(0, 11)] = (int32_t[]){ 0, -1, INT_MAX, INT_MIN, 7 }[rnd(0, 4)];
    if (rnd(0, 9) == 0) o[rnd(0, 3)] += rnd(0, 1) ? 1 : -1;
    for (int i = 0; i < 4; i++)
        if (o[i] < 0) return;
    struct ferry_tensor *node = exact_tensor(ot, o[0], o[1], o[2], o[3]);
    node->op = op;
    node->flags = FERRY_FLAG_COMPUTE;
    node->src[0] = a, node->src[1] = b, node->src[2] = s2;
    memcpy(node->op_params, p, sizeof p);
    struct ferry_error err = { 0 };
    if (ferry_engine_check_node(node, &err) != FERRY_OK) return;
    random_ran++;
    CHECK(ferry_engine_compute(engines[rnd(0, 2)], &node, 1, &err) == FERRY_OK, "random %s: %s", ferry_op_name(op),
          err.msg);
}

static void test_random_nodes(void) {
    for (int i = 0; i < 20000; i++) {
        random_node();
        test_free_kept();
    }
    printf("random nodes: %d of 20000 accepted and run\n", random_ran);
    CHECK(random_ran > 5000, "only %d random nodes were accepted", random_ran);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 3; i++) engines[i] = ferry_engine_create(engine_threads[i]);
    if (!CHECK(engines[0] && engines[1] && engines[2], "engines")) return test_summary();
    test_im2col();
    test_im2col_3d();
    test_im2col_back();
    test_col2im_1d();
    test_conv_2d();
    test_conv_3d();
    test_conv_2d_dw();
    test_conv_transpose();
    test_pool();
    test_upscale();
    test_pad_reflect_roll();
    test_windows();
    test_hostile();
    test_random_nodes();
    for (int i = 0; i < 3; i++) ferry_engine_destroy(engines[i]);
    return test_summary();
}
