/* The training family (train_backward.c, train_rope_back.c, train_outprod.c,
 * train_loss.c, train_optim.c; docs/ops.md B.25) against naive references
 * written here in double from the op definitions: several shapes, permuted
 * and strided inputs, F16 and quantized sources where the op takes them,
 * results identical for 1, 2 and 4 threads, bad indices found at run time,
 * hostile nodes that check() must refuse, and random nodes (exactly sized
 * buffers, for the sanitizers) that must run cleanly when check() accepts
 * them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "testutil.h"

static uint64_t rng = 0x7a1e5eedull;
static struct ferry_engine *engines[3]; /* 1, 2 and 4 threads */
static const int engine_threads[3] = { 1, 2, 4 };

/* ---- tensors ---- */

static struct ferry_tensor *new_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return test_keep(test_tensor_new(type, ne0, ne1, ne2, ne3));
}

static struct ferry_tensor *rand_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3,
                                        float lo, float hi) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    test_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

/* ggml_permute(base, a0..a3): ne'[a_k] = ne[k], nb'[a_k] = nb[k]. */

/* A view of base with its own ne and nb1..3, starting offs bytes in. */
static struct ferry_tensor *view(struct ferry_tensor *base, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3,
                                 size_t nb1, size_t nb2, size_t nb3, size_t offs) {
    struct ferry_tensor *v = calloc(1, sizeof *v);
    *v = *base;
    const int64_t ne[4] = { ne0, ne1, ne2, ne3 };
    memcpy(v->ne, ne, sizeof ne);
    v->nb[1] = nb1;
    v->nb[2] = nb2;
    v->nb[3] = nb3;
    v->data = (char *)base->data + offs;
    v->op = FERRY_OP_VIEW;
    v->view_src = base;
    return test_keep(v);
}

/* An output node of op, its memory full of NaN bytes so that an element
 * left unwritten shows. padded: rows 3 elements apart more than needed. */
static struct ferry_tensor *new_node(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                     int64_t ne3, struct ferry_tensor *s0, struct ferry_tensor *s1,
                                     struct ferry_tensor *s2, bool padded) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    if (padded && !ferry_is_empty(t)) {
        const size_t es = ferry_type_size(type);
        t->nb[1] = es * (size_t)(ne0 + 3);
        t->nb[2] = t->nb[1] * (size_t)ne1;
        t->nb[3] = t->nb[2] * (size_t)ne2;
        free(t->data);
        t->data = malloc(ferry_nbytes(t));
    }
    memset(t->data, 0xff, ferry_nbytes(t) ? ferry_nbytes(t) : 1);
    t->op = op;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = s0;
    t->src[1] = s1;
    t->src[2] = s2;
    return t;
}

static void set_i32(struct ferry_tensor *t, int64_t i, int32_t v) { memcpy((char *)t->data + i * 4, &v, 4); }

static int run_on(struct ferry_tensor *node, int which, struct ferry_error *err) {
    return ferry_engine_compute(engines[which], &node, 1, err);
}

static int run(struct ferry_tensor *node, int which) {
    struct ferry_error err = { 0 };
    int rc = run_on(node, which, &err);
    CHECK(rc == FERRY_OK, "%s: compute failed: %s", ferry_op_name(node->op), err.msg);
    return rc;
}

/* Runs node with 4, 2 and 1 threads (the last result stays) and checks that
 * the output bytes are the same every time. Not for in-place nodes. */
static bool run_threads(struct ferry_tensor *node, const char *what) {
    size_t n = ferry_nbytes(node);
    char *first = malloc(n ? n : 1);
    bool ok = true;
    for (int k = 2; k >= 0; k--) {
        if (run(node, k) != FERRY_OK) { ok = false; break; }
        if (k == 2) memcpy(first, node->data, n);
        else ok = CHECK(memcmp(first, node->data, n) == 0, "%s: %d threads differ from 4", what,
                        engine_threads[k]) && ok;
    }
    free(first);
    return ok;
}

/* NMSE of the node's output against a double reference in logical order. */
static double nmse_vs(const double *ref, const struct ferry_tensor *out) {
    int64_t n = ferry_nelements(out);
    float *r = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) r[i] = (float)ref[i];
    float *o = test_tensor_to_f32(out);
    double e = test_nmse(r, o, n);
    free(r);
    free(o);
    return e;
}

static void expect_close(const double *ref, const struct ferry_tensor *out, double bound, const char *what) {
    double e = nmse_vs(ref, out);
    CHECK(e < bound, "%s: NMSE %g >= %g", what, e, bound);
}

static double *dalloc(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

/* ---- SILU_BACK ---- */

static void check_silu_back(enum ferry_type t, struct ferry_tensor *dy, struct ferry_tensor *x, bool padded,
                            const char *what) {
    const int64_t *ne = x->ne, n = ferry_nelements(x);
    struct ferry_tensor *node = new_node(FERRY_OP_SILU_BACK, t, ne[0], ne[1], ne[2], ne[3], dy, x, NULL, padded);
    float *g = test_tensor_to_f32(dy), *xv = test_tensor_to_f32(x);
    double *ref = dalloc(n);
    for (int64_t i = 0; i < n; i++) {
        const double s = 1.0 / (1.0 + exp(-(double)xv[i]));
        ref[i] = g[i] * s * (1.0 + xv[i] * (1.0 - s));
    }
    if (run_threads(node, what)) expect_close(ref, node, t == FERRY_TYPE_F16 ? 1e-6 : 1e-11, what);
    free(g);
    free(xv);
    free(ref);
}

static void test_silu_back(void) {
    static const int64_t shapes[][4] = { { 64, 5, 4, 3 }, { 7, 3, 1, 1 }, { 1, 1, 1, 1 }, { 33, 2, 1, 2 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t *ne = shapes[s];
        for (int f16 = 0; f16 < 2; f16++) {
            enum ferry_type t = f16 ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
            check_silu_back(t, rand_tensor(t, ne[0], ne[1], ne[2], ne[3], -6, 6),
                            rand_tensor(t, ne[0], ne[1], ne[2], ne[3], -6, 6), f16, "SILU_BACK");
        }
        test_free_kept();
    }
    /* a permuted x and gradient */
    struct ferry_tensor *x = test_permute(rand_tensor(FERRY_TYPE_F32, 5, 6, 3, 1, -4, 4), 1, 0, 2, 3);
    struct ferry_tensor *g = test_permute(rand_tensor(FERRY_TYPE_F32, 5, 6, 3, 1, -4, 4), 1, 0, 2, 3);
    check_silu_back(FERRY_TYPE_F32, g, x, true, "SILU_BACK permuted");
    test_free_kept();
}

/* ---- RMS_NORM_BACK ---- */

static void check_rms_norm_back(struct ferry_tensor *dz, struct ferry_tensor *x, float eps, bool padded,
                                const char *what) {
    const int64_t *ne = x->ne, n = ne[0], rows = ferry_nrows(x);
    struct ferry_tensor *node = new_node(FERRY_OP_RMS_NORM_BACK, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], dz, x,
                                         NULL, padded);
    ferry_param_set_f32(node, 0, eps);
    float *g = test_tensor_to_f32(dz), *xv = test_tensor_to_f32(x);
    double *ref = dalloc(ferry_nelements(x));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xv + r * n, *gr = g + r * n;
        double sxx = 0, sxg = 0;
        for (int64_t i = 0; i < n; i++) {
            sxx += (double)xr[i] * xr[i];
            sxg += (double)xr[i] * gr[i];
        }
        /* d/dx of x / sqrt(mean(x²) + eps) applied to dz */
        const double ms = sxx / (double)n + eps, rrms = 1.0 / sqrt(ms);
        for (int64_t i = 0; i < n; i++) ref[r * n + i] = rrms * (gr[i] - xr[i] * sxg / ((double)n * ms));
    }
    if (run_threads(node, what)) expect_close(ref, node, 1e-10, what);
    free(g);
    free(xv);
    free(ref);
}

static void test_rms_norm_back(void) {
    static const int64_t ns[] = { 64, 1, 5, 1025, 130 };
    static const float epss[] = { 1e-6f, 1e-3f, 0.1f };
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int64_t n = ns[k];
        check_rms_norm_back(rand_tensor(FERRY_TYPE_F32, n, 5, 4, 3, -10, 10),
                            rand_tensor(FERRY_TYPE_F32, n, 5, 4, 3, -10, 10), epss[k % 3], k % 2, "RMS_NORM_BACK");
        test_free_kept();
    }
    struct ferry_tensor *x = test_permute(rand_tensor(FERRY_TYPE_F32, 6, 9, 2, 1, -3, 3), 1, 0, 2, 3);
    check_rms_norm_back(rand_tensor(FERRY_TYPE_F32, 9, 6, 2, 1, -3, 3), x, 1e-5f, false, "RMS_NORM_BACK permuted");
    test_free_kept();
}

/* ---- REPEAT_BACK ---- */

static void check_repeat_back(struct ferry_tensor *a, const int64_t *out, bool padded, const char *what) {
    struct ferry_tensor *node = new_node(FERRY_OP_REPEAT_BACK, FERRY_TYPE_F32, out[0], out[1], out[2], out[3], a,
                                         NULL, NULL, padded);
    float *x = test_tensor_to_f32(a);
    double *ref = dalloc(ferry_nelements(node));
    const int64_t *ne = a->ne;
    for (int64_t i3 = 0; i3 < ne[3]; i3++)
        for (int64_t i2 = 0; i2 < ne[2]; i2++)
            for (int64_t i1 = 0; i1 < ne[1]; i1++)
                for (int64_t i0 = 0; i0 < ne[0]; i0++) {
                    const int64_t k = (i0 % out[0]) + out[0] * ((i1 % out[1]) + out[1] * ((i2 % out[2]) + out[2] * (i3 % out[3])));
                    ref[k] += x[i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3))];
                }
    if (run_threads(node, what)) expect_close(ref, node, 1e-12, what);
    free(x);
    free(ref);
}

static void test_repeat_back(void) {
    static const int nr[][4] = { { 1, 1, 1, 1 }, { 2, 1, 1, 1 }, { 1, 2, 1, 1 }, { 1, 1, 2, 1 }, { 1, 1, 1, 2 }, { 3, 2, 2, 2 } };
    for (size_t k = 0; k < sizeof nr / sizeof nr[0]; k++) {
        const int64_t out[4] = { 8, 6, 4, 2 };
        struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 8 * nr[k][0], 6 * nr[k][1], 4 * nr[k][2], 2 * nr[k][3], -1, 1);
        check_repeat_back(a, out, k % 2, "REPEAT_BACK");
        /* a strided view: every other element of a bigger tensor's rows */
        struct ferry_tensor *big = rand_tensor(FERRY_TYPE_F32, 16 * nr[k][0], 6 * nr[k][1], 4 * nr[k][2], 2 * nr[k][3], -1, 1);
        struct ferry_tensor *v = view(big, 8 * nr[k][0], 6 * nr[k][1], 4 * nr[k][2], 2 * nr[k][3], big->nb[1], big->nb[2],
                                      big->nb[3], 4);
        v->nb[0] = 8;
        check_repeat_back(v, out, false, "REPEAT_BACK strided");
        test_free_kept();
    }
    /* an empty source gives zeros */
    const int64_t out[4] = { 3, 2, 1, 1 };
    check_repeat_back(new_tensor(FERRY_TYPE_F32, 3, 0, 1, 1), out, false, "REPEAT_BACK empty");
    test_free_kept();
}

/* ---- GET_ROWS_BACK ---- */

static void check_get_rows_back(enum ferry_type t, int64_t n, int64_t m, int64_t r, const char *what) {
    struct ferry_tensor *g = rand_tensor(t, n, r, 1, 1, -2, 2);
    struct ferry_tensor *idx = new_tensor(FERRY_TYPE_I32, r, 1, 1, 1);
    for (int64_t i = 0; i < r; i++) set_i32(idx, i, (int32_t)(test_rand_u64(&rng) % (uint64_t)m));
    if (r > 2) set_i32(idx, r - 1, 0), set_i32(idx, 0, 0); /* a row named twice */
    struct ferry_tensor *node = new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, n, m, 1, 1, g, idx, NULL, r % 2);
    float *gv = test_tensor_to_f32(g);
    double *ref = dalloc(n * m);
    for (int64_t i = 0; i < r; i++) {
        int32_t row;
        memcpy(&row, (char *)idx->data + 4 * i, 4);
        for (int64_t j = 0; j < n; j++) ref[row * n + j] += gv[i * n + j];
    }
    if (run_threads(node, what)) expect_close(ref, node, 1e-13, what);
    free(gv);
    free(ref);
}

static void test_get_rows_back(void) {
    check_get_rows_back(FERRY_TYPE_F32, 10, 5, 3, "GET_ROWS_BACK");
    check_get_rows_back(FERRY_TYPE_F32, 1, 8, 2, "GET_ROWS_BACK n=1");
    check_get_rows_back(FERRY_TYPE_F32, 1, 7000, 4, "GET_ROWS_BACK many rows");
    check_get_rows_back(FERRY_TYPE_F16, 256, 5, 4, "GET_ROWS_BACK f16");
    check_get_rows_back(FERRY_TYPE_F32, 17, 3, 40, "GET_ROWS_BACK repeats");
    test_free_kept();

    /* an index out of range stops the graph, whatever the thread count */
    for (int bad = 0; bad < 2; bad++)
        for (int k = 0; k < 3; k++) {
            struct ferry_tensor *g = rand_tensor(FERRY_TYPE_F32, 4, 3, 1, 1, -1, 1);
            struct ferry_tensor *idx = new_tensor(FERRY_TYPE_I32, 3, 1, 1, 1);
            set_i32(idx, 1, bad ? 5 : -1);
            struct ferry_tensor *node = new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 4, 5, 1, 1, g, idx, NULL, false);
            struct ferry_error err = { 0 };
            CHECK(run_on(node, k, &err) == FERRY_ERR_INVALID, "GET_ROWS_BACK: bad index %d accepted", bad ? 5 : -1);
            test_free_kept();
        }
}

/* ---- SOFT_MAX_BACK ---- */

static void check_soft_max_back(struct ferry_tensor *dy, struct ferry_tensor *y, float scale, const char *what) {
    const int64_t *ne = y->ne, n = ne[0], rows = ferry_nrows(y);
    struct ferry_tensor *node = new_node(FERRY_OP_SOFT_MAX_BACK, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], dy, y,
                                         NULL, rows % 2);
    ferry_param_set_f32(node, 0, scale);
    float *g = test_tensor_to_f32(dy), *yv = test_tensor_to_f32(y);
    double *ref = dalloc(ferry_nelements(y));
    for (int64_t r = 0; r < rows; r++) {
        double dot = 0;
        for (int64_t i = 0; i < n; i++) dot += (double)yv[r * n + i] * g[r * n + i];
        for (int64_t i = 0; i < n; i++) ref[r * n + i] = (g[r * n + i] - dot) * yv[r * n + i] * scale;
    }
    if (run_threads(node, what)) expect_close(ref, node, 1e-9, what);
    free(g);
    free(yv);
    free(ref);
}

static void test_soft_max_back(void) {
    static const int64_t shapes[][4] = { { 16, 16, 1, 1 }, { 15, 15, 1, 1 }, { 16, 16, 2, 3 }, { 1024, 4, 1, 1 }, { 1, 3, 1, 1 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t *ne = shapes[s];
        check_soft_max_back(rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -1, 1),
                            rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], 0, 1), s % 2 ? 0.1f : 1.0f,
                            "SOFT_MAX_BACK");
        test_free_kept();
    }
    struct ferry_tensor *y = test_permute(rand_tensor(FERRY_TYPE_F32, 7, 5, 2, 1, 0, 1), 1, 0, 2, 3);
    check_soft_max_back(rand_tensor(FERRY_TYPE_F32, 5, 7, 2, 1, -1, 1), y, 2.0f, "SOFT_MAX_BACK permuted");
    test_free_kept();
}

/* ---- ROPE_BACK ---- */

struct rope_case {
    int64_t ne[4];
    int n_dims, mode, n_offs;
    bool ff;
};

static void rope_set_params(struct ferry_tensor *n, const struct rope_case *c, float freq_scale, float ext,
                            float attn) {
    n->op_params[1] = c->n_dims;
    n->op_params[2] = c->mode;
    n->op_params[4] = 512;
    ferry_param_set_f32(n, 5, 10000.0f);
    ferry_param_set_f32(n, 6, freq_scale);
    ferry_param_set_f32(n, 7, ext);
    ferry_param_set_f32(n, 8, attn);
    ferry_param_set_f32(n, 9, 32.0f);
    ferry_param_set_f32(n, 10, 1.0f);
    if (c->mode & 8) {
        const int sec = c->mode == 24 ? c->n_dims / 2 : c->n_dims / 3;
        n->op_params[11] = sec;
        n->op_params[12] = sec;
        n->op_params[13] = c->mode == 24 ? 0 : sec;
    }
    n->op_params[15] = c->n_offs;
}

/* Direct reference for NORMAL and NEOX without YaRN: pair j at position p
 * turns by -p·base^(-2j/n_dims)/ff[j], scaled by freq_scale, times attn. */
static void rope_back_reference(const struct rope_case *c, const float *x, const int32_t *pos, const float *ff,
                                float freq_scale, float attn, double *out) {
    const int64_t hd = c->ne[0], rows = c->ne[1] * c->ne[2] * c->ne[3];
    for (int64_t r = 0; r < rows; r++) {
        const int64_t tok = (r / c->ne[1]) % c->ne[2];
        const float *xr = x + r * hd;
        double *y = out + r * hd;
        for (int64_t i = 0; i < hd; i++) y[i] = xr[i];
        for (int64_t j = 0; j < c->n_dims / 2; j++) {
            const double th = freq_scale * pos[tok] * pow(10000.0, -2.0 * (double)j / c->n_dims) / (ff ? ff[j] : 1.0);
            const double cs = cos(th) * attn, sn = -sin(th) * attn;
            const int64_t i0 = c->n_offs + (c->mode == 0 ? 2 * j : j);
            const int64_t i1 = c->mode == 0 ? i0 + 1 : i0 + c->n_dims / 2;
            y[i0] = xr[i0] * cs - xr[i1] * sn;
            y[i1] = xr[i0] * sn + xr[i1] * cs;
        }
    }
}

static struct ferry_tensor *rope_positions(const struct rope_case *c) {
    const int64_t n = c->ne[2] * ((c->mode & 8) ? 4 : 1);
    struct ferry_tensor *pos = new_tensor(FERRY_TYPE_I32, n, 1, 1, 1);
    for (int64_t i = 0; i < n; i++) set_i32(pos, i, (int32_t)(test_rand_u64(&rng) % 60));
    return pos;
}

static void test_rope_back_case(const struct rope_case *c, enum ferry_type t) {
    const int64_t *ne = c->ne;
    struct ferry_tensor *x = rand_tensor(t, ne[0], ne[1], ne[2], ne[3], -1, 1);
    struct ferry_tensor *pos = rope_positions(c);
    struct ferry_tensor *ff = NULL;
    const int64_t nff = c->mode == 24 ? ne[0] / 2 : c->n_dims / 2;
    if (c->ff) ff = rand_tensor(FERRY_TYPE_F32, nff, 1, 1, 1, 0.9f, 1.1f);
    char what[96];
    snprintf(what, sizeof what, "ROPE_BACK mode %d n_dims %d offs %d ff %d %s", c->mode, c->n_dims, c->n_offs, c->ff,
             ferry_type_name(t));

    /* the inverse of ROPE: ROPE_BACK(ROPE(x)) = x without magnitude scaling */
    struct ferry_tensor *fw = new_node(FERRY_OP_ROPE, t, ne[0], ne[1], ne[2], ne[3], x, pos, ff, false);
    rope_set_params(fw, c, 1.4245f, c->mode == 2 ? 0.0f : 0.7465f, 1.0f);
    /* YaRN with a non-zero ext_factor scales magnitudes: keep it at 1 */
    if (c->mode != 2) ferry_param_set_f32(fw, 7, 0.0f);
    struct ferry_tensor *bw = new_node(FERRY_OP_ROPE_BACK, t, ne[0], ne[1], ne[2], ne[3], fw, pos, ff, true);
    memcpy(bw->op_params, fw->op_params, sizeof fw->op_params);
    if (run(fw, 1) == FERRY_OK && run_threads(bw, what)) {
        float *xv = test_tensor_to_f32(x);
        double *ref = dalloc(ferry_nelements(x));
        for (int64_t i = 0; i < ferry_nelements(x); i++) ref[i] = xv[i];
        expect_close(ref, bw, t == FERRY_TYPE_F16 ? 3e-6 : 1e-12, what);
        free(xv);
        free(ref);
    }

    /* against the direct reference (NORMAL, NEOX) */
    if (c->mode == 0 || c->mode == 2) {
        struct ferry_tensor *n = new_node(FERRY_OP_ROPE_BACK, t, ne[0], ne[1], ne[2], ne[3], x, pos, ff, false);
        rope_set_params(n, c, 0.5f, 0.0f, 1.25f);
        if (run_threads(n, what)) {
            float *xv = test_tensor_to_f32(x);
            double *ref = dalloc(ferry_nelements(x));
            rope_back_reference(c, xv, pos->data, ff ? ff->data : NULL, 0.5f, 1.25f, ref);
            expect_close(ref, n, t == FERRY_TYPE_F16 ? 3e-6 : 1e-10, what);
            free(xv);
            free(ref);
        }
    }
    test_free_kept();
}

static void test_rope_back(void) {
    static const struct rope_case cases[] = {
        { { 128, 4, 3, 1 }, 128, 0, 0, false }, { { 128, 4, 3, 1 }, 128, 0, 0, true },
        { { 64, 3, 2, 2 }, 64, 2, 0, false },   { { 80, 5, 2, 1 }, 20, 2, 0, true },
        { { 80, 5, 4, 1 }, 32, 0, 0, false },   { { 128, 3, 2, 1 }, 32, 0, 32, true },
        { { 128, 3, 2, 1 }, 32, 2, 32, false }, { { 128, 4, 2, 1 }, 128, 8, 0, true },
        { { 128, 4, 2, 1 }, 24, 8, 32, false }, { { 128, 4, 2, 1 }, 128, 40, 0, false },
        { { 80, 4, 2, 1 }, 40, 24, 0, true },   { { 16, 2, 300, 1 }, 16, 2, 0, false },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        test_rope_back_case(&cases[k], FERRY_TYPE_F32);
        test_rope_back_case(&cases[k], FERRY_TYPE_F16);
    }
    /* in place, on a strided view of a fused tensor: once */
    struct rope_case c = { { 32, 4, 3, 1 }, 32, 2, 0, false };
    struct ferry_tensor *base = rand_tensor(FERRY_TYPE_F32, 96, 4, 3, 1, -1, 1);
    struct ferry_tensor *x = view(base, 32, 4, 3, 1, base->nb[1], base->nb[2], base->nb[3], 32 * 4);
    float *before = test_tensor_to_f32(x);
    struct ferry_tensor *pos = rope_positions(&c);
    struct ferry_tensor *n = calloc(1, sizeof *n);
    *n = *x;
    n->view_src = base;
    n->op = FERRY_OP_ROPE_BACK;
    n->flags = FERRY_FLAG_COMPUTE;
    n->src[0] = x;
    n->src[1] = pos;
    test_keep(n);
    rope_set_params(n, &c, 1.0f, 0.0f, 1.0f);
    if (run(n, 2) == FERRY_OK) {
        double *ref = dalloc(ferry_nelements(x));
        rope_back_reference(&c, before, pos->data, NULL, 1.0f, 1.0f, ref);
        expect_close(ref, n, 1e-10, "ROPE_BACK in place");
        free(ref);
    }
    free(before);
    test_free_kept();
}

/* ---- OUT_PROD ---- */

static void check_out_prod(struct ferry_tensor *a, struct ferry_tensor *b, double bound, const char *what) {
    const int64_t m = a->ne[0], k = a->ne[1], n = b->ne[0];
    struct ferry_tensor *node = new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, m, n, b->ne[2], b->ne[3], a, b, NULL,
                                         (n + k) % 2);
    float *av = test_tensor_to_f32(a), *bv = test_tensor_to_f32(b);
    double *ref = dalloc(ferry_nelements(node));
    for (int64_t i3 = 0; i3 < b->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < b->ne[2]; i2++) {
            const int64_t a2 = i2 / (b->ne[2] / a->ne[2]), a3 = i3 / (b->ne[3] / a->ne[3]);
            for (int64_t i1 = 0; i1 < n; i1++)
                for (int64_t i0 = 0; i0 < m; i0++) {
                    double acc = 0;
                    for (int64_t kk = 0; kk < k; kk++)
                        acc += (double)av[i0 + m * (kk + k * (a2 + a->ne[2] * a3))] *
                               bv[i1 + n * (kk + k * (i2 + b->ne[2] * i3))];
                    ref[i0 + m * (i1 + n * (i2 + b->ne[2] * i3))] = acc;
                }
        }
    if (run_threads(node, what)) expect_close(ref, node, bound, what);
    free(av);
    free(bv);
    free(ref);
}

static void test_out_prod(void) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0,
                                             FERRY_TYPE_IQ4_NL };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (int n = 1; n <= 16; n += 15)
            for (int k = 1; k <= 16; k += 15)
                for (int bs = 1; bs <= 3; bs += 2) {
                    const enum ferry_type ta = types[t];
                    const int nr = ta == FERRY_TYPE_F32 ? 2 : 1;
                    struct ferry_tensor *a = rand_tensor(ta, 64, k, bs, 1, -1, 1);
                    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, n, k, bs * nr, nr, -1, 1);
                    char what[64];
                    snprintf(what, sizeof what, "OUT_PROD %s n=%d k=%d bs=%d", ferry_type_name(ta), n, k, bs);
                    check_out_prod(a, b, 1e-11, what);
                    test_free_kept();
                }
    /* a transposed src1, and the wide broadcast of an F32 src0 */
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 33, 7, 1, 1, -1, 1);
    struct ferry_tensor *bt = test_permute(rand_tensor(FERRY_TYPE_F32, 7, 5, 8, 1, -1, 1), 1, 0, 2, 3);
    check_out_prod(a, bt, 1e-11, "OUT_PROD transposed src1");
    check_out_prod(rand_tensor(FERRY_TYPE_F32, 256, 16, 2, 1, -1, 1), rand_tensor(FERRY_TYPE_F32, 16, 16, 32, 1, -1, 1),
                   1e-11, "OUT_PROD broadcast 16");
    /* no rows to sum over: zeros */
    check_out_prod(new_tensor(FERRY_TYPE_F32, 8, 0, 1, 1), new_tensor(FERRY_TYPE_F32, 3, 0, 1, 1), 1e-30, "OUT_PROD k=0");
    test_free_kept();
}

/* ---- CROSS_ENTROPY_LOSS, CROSS_ENTROPY_LOSS_BACK ---- */

/* labels: each row a probability distribution */
static struct ferry_tensor *rand_labels(const int64_t *ne) {
    struct ferry_tensor *t = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], 0, 1);
    float *p = t->data;
    for (int64_t r = 0; r < ferry_nrows(t); r++) {
        double s = 0;
        for (int64_t i = 0; i < ne[0]; i++) s += p[r * ne[0] + i];
        for (int64_t i = 0; i < ne[0]; i++) p[r * ne[0] + i] = (float)(p[r * ne[0] + i] / s);
    }
    return t;
}

static void test_cross_entropy(void) {
    static const int64_t shapes[][4] = { { 10, 5, 4, 3 }, { 30000, 1, 1, 1 }, { 3, 100, 1, 1 }, { 1, 1, 1, 1 }, { 7, 65, 1, 1 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t *ne = shapes[s], n = ne[0], rows = ne[1] * ne[2] * ne[3];
        struct ferry_tensor *x = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -100, 100);
        struct ferry_tensor *y = rand_labels(ne);
        const float *xv = x->data, *yv = y->data;
        double loss = 0;
        double *grad = dalloc(n * rows);
        const float d = 0.75f;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = xv + r * n, *yr = yv + r * n;
            double max = -INFINITY, sum = 0;
            for (int64_t i = 0; i < n; i++) max = xr[i] > max ? xr[i] : max;
            for (int64_t i = 0; i < n; i++) sum += exp(xr[i] - max);
            for (int64_t i = 0; i < n; i++) {
                loss -= yr[i] * (xr[i] - max - log(sum)) / (double)rows;
                grad[r * n + i] = (exp(xr[i] - max) / sum - yr[i]) * d / (double)rows;
            }
        }
        struct ferry_tensor *node = new_node(FERRY_OP_CROSS_ENTROPY_LOSS, FERRY_TYPE_F32, 1, 1, 1, 1, x, y, NULL, false);
        if (run_threads(node, "CROSS_ENTROPY_LOSS")) {
            const float got = *(float *)node->data;
            CHECK(fabs(got - loss) <= 1e-5 * fabs(loss) + 1e-6, "CROSS_ENTROPY_LOSS [%lld,%lld]: %.8g, expected %.8g",
                  (long long)ne[0], (long long)rows, (double)got, loss);
        }
        struct ferry_tensor *dl = new_tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
        *(float *)dl->data = d;
        struct ferry_tensor *back = new_node(FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_TYPE_F32, ne[0], ne[1], ne[2],
                                             ne[3], dl, x, y, false);
        if (run_threads(back, "CROSS_ENTROPY_LOSS_BACK")) expect_close(grad, back, 1e-9, "CROSS_ENTROPY_LOSS_BACK");
        free(grad);
        test_free_kept();
    }
}

/* ---- COUNT_EQUAL ---- */

static void test_count_equal(void) {
    static const int64_t shapes[][4] = { { 500, 1, 1, 1 }, { 7, 5, 3, 2 }, { 1, 1, 1, 1 }, { 0, 4, 1, 1 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t *ne = shapes[s];
        struct ferry_tensor *a = new_tensor(FERRY_TYPE_I32, ne[0], ne[1], ne[2], ne[3]);
        struct ferry_tensor *b = new_tensor(FERRY_TYPE_I32, ne[0], ne[1], ne[2], ne[3]);
        int64_t want = 0;
        for (int64_t i = 0; i < ferry_nelements(a); i++) {
            const int32_t u = (int32_t)(test_rand_u64(&rng) % 4), v = (int32_t)(test_rand_u64(&rng) % 4);
            set_i32(a, i, u);
            set_i32(b, i, v);
            want += u == v;
        }
        struct ferry_tensor *node = new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I64, 1, 1, 1, 1, a, b, NULL, false);
        if (run_threads(node, "COUNT_EQUAL")) {
            int64_t got;
            memcpy(&got, node->data, 8);
            CHECK(got == want, "COUNT_EQUAL: %lld, expected %lld", (long long)got, (long long)want);
        }
        test_free_kept();
    }
    /* a permuted pair counts the same elements */
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_I32, 6, 5, 1, 1), *b = new_tensor(FERRY_TYPE_I32, 5, 6, 1, 1);
    int64_t want = 0;
    for (int64_t i = 0; i < 6; i++)
        for (int64_t j = 0; j < 5; j++) {
            const int32_t u = (int32_t)(test_rand_u64(&rng) % 3), v = (int32_t)(test_rand_u64(&rng) % 3);
            set_i32(a, i + 6 * j, u);
            set_i32(b, j + 5 * i, v);
            want += u == v;
        }
    struct ferry_tensor *node = new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I64, 1, 1, 1, 1, a, test_permute(b, 1, 0, 2, 3),
                                         NULL, false);
    if (run_threads(node, "COUNT_EQUAL permuted")) {
        int64_t got;
        memcpy(&got, node->data, 8);
        CHECK(got == want, "COUNT_EQUAL permuted: %lld, expected %lld", (long long)got, (long long)want);
    }
    test_free_kept();
}

/* ---- OPT_STEP_ADAMW, OPT_STEP_SGD ---- */

/* The node is a view of src0 (the weights), as ggml builds it. */
static struct ferry_tensor *opt_node(enum ferry_op op, struct ferry_tensor *w) {
    struct ferry_tensor *n = calloc(1, sizeof *n);
    *n = *w;
    n->view_src = w;
    n->op = op;
    n->flags = FERRY_FLAG_COMPUTE;
    n->src[0] = w;
    return test_keep(n);
}

/* Runs an in-place node on each engine from the same starting state
 * (the n_state tensors) and checks the states end the same. */
static bool run_in_place_threads(struct ferry_tensor *node, struct ferry_tensor **state, int n_state, const char *what) {
    char *start[4], *first[4];
    size_t size[4];
    for (int s = 0; s < n_state; s++) {
        size[s] = ferry_nbytes(state[s]);
        start[s] = malloc(size[s]);
        first[s] = malloc(size[s]);
        memcpy(start[s], state[s]->data, size[s]);
    }
    bool ok = true;
    for (int k = 2; k >= 0 && ok; k--) {
        for (int s = 0; s < n_state; s++) memcpy(state[s]->data, start[s], size[s]);
        if (run(node, k) != FERRY_OK) ok = false;
        for (int s = 0; s < n_state && ok; s++) {
            if (k == 2) memcpy(first[s], state[s]->data, size[s]);
            else ok = CHECK(memcmp(first[s], state[s]->data, size[s]) == 0, "%s: %d threads differ from 4", what,
                            engine_threads[k]);
        }
    }
    for (int s = 0; s < n_state; s++) {
        free(start[s]);
        free(first[s]);
    }
    return ok;
}

static void test_adamw(const int64_t *ne, bool permuted_grad) {
    struct ferry_tensor *w = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -1, 1);
    struct ferry_tensor *g;
    if (permuted_grad) g = test_permute(rand_tensor(FERRY_TYPE_F32, ne[1], ne[0], ne[2], ne[3], -1, 1), 1, 0, 2, 3);
    else g = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -1, 1);
    struct ferry_tensor *m = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -0.1f, 0.1f);
    struct ferry_tensor *v = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], 0, 0.1f);
    /* the 7 parameters in a padded column: read through the strides */
    struct ferry_tensor *hb = new_tensor(FERRY_TYPE_F32, 2, 7, 1, 1);
    struct ferry_tensor *h = view(hb, 1, 7, 1, 1, 8, 56, 56, 0);
    const float hp[7] = { 0.001f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f / (1 - 0.9f * 0.9f), 1.0f / (1 - 0.999f * 0.999f) };
    for (int i = 0; i < 7; i++) ((float *)hb->data)[2 * i] = hp[i];
    const int64_t n = ferry_nelements(w);
    float *w0 = test_tensor_to_f32(w), *g0 = test_tensor_to_f32(g), *m0 = test_tensor_to_f32(m), *v0 = test_tensor_to_f32(v);
    double *rw = dalloc(n), *rm = dalloc(n), *rv = dalloc(n);
    for (int64_t i = 0; i < n; i++) {
        rm[i] = m0[i] * (double)hp[1] + g0[i] * (1.0 - hp[1]);
        rv[i] = v0[i] * (double)hp[2] + (double)g0[i] * g0[i] * (1.0 - hp[2]);
        const double mh = rm[i] * hp[5], vh = sqrt(rv[i] * hp[6]) + hp[3];
        rw[i] = w0[i] * (1.0 - (double)hp[0] * hp[4]) - hp[0] * mh / vh;
    }
    struct ferry_tensor *node = opt_node(FERRY_OP_OPT_STEP_ADAMW, w);
    node->src[1] = g;
    node->src[2] = m;
    node->src[3] = v;
    node->src[4] = h;
    struct ferry_tensor *state[3] = { w, m, v };
    if (run_in_place_threads(node, state, 3, "OPT_STEP_ADAMW")) {
        expect_close(rw, w, 1e-12, "OPT_STEP_ADAMW weights");
        expect_close(rm, m, 1e-12, "OPT_STEP_ADAMW m");
        expect_close(rv, v, 1e-12, "OPT_STEP_ADAMW v");
    }
    free(w0), free(g0), free(m0), free(v0), free(rw), free(rm), free(rv);
    test_free_kept();
}

static void test_sgd(const int64_t *ne) {
    struct ferry_tensor *w = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -1, 1);
    struct ferry_tensor *g = rand_tensor(FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], -1, 1);
    struct ferry_tensor *h = new_tensor(FERRY_TYPE_F32, 2, 1, 1, 1);
    ((float *)h->data)[0] = 0.05f;
    ((float *)h->data)[1] = 0.3f;
    const int64_t n = ferry_nelements(w);
    float *w0 = test_tensor_to_f32(w), *g0 = test_tensor_to_f32(g);
    double *ref = dalloc(n);
    for (int64_t i = 0; i < n; i++) ref[i] = w0[i] * (1.0 - 0.05 * 0.3) - 0.05 * g0[i];
    struct ferry_tensor *node = opt_node(FERRY_OP_OPT_STEP_SGD, w);
    node->src[1] = g;
    node->src[2] = h;
    struct ferry_tensor *state[1] = { w };
    if (run_in_place_threads(node, state, 1, "OPT_STEP_SGD")) expect_close(ref, w, 1e-12, "OPT_STEP_SGD");
    free(w0), free(g0), free(ref);
    test_free_kept();
}

static void test_optimizers(void) {
    static const int64_t shapes[][4] = { { 10, 5, 4, 3 }, { 1, 1, 1, 1 }, { 1000, 3, 1, 1 }, { 0, 3, 1, 1 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        test_adamw(shapes[s], false);
        test_sgd(shapes[s]);
    }
    test_adamw(shapes[0], true);
}

/* ---- hostile nodes ---- */

static void test_hostile(void) {
    struct ferry_tensor *f32a = rand_tensor(FERRY_TYPE_F32, 8, 4, 2, 1, -1, 1);
    struct ferry_tensor *f32b = rand_tensor(FERRY_TYPE_F32, 8, 4, 2, 1, -1, 1);
    struct ferry_tensor *f16a = rand_tensor(FERRY_TYPE_F16, 8, 4, 2, 1, -1, 1);
    struct ferry_tensor *other = rand_tensor(FERRY_TYPE_F32, 8, 3, 2, 1, -1, 1);
    struct ferry_tensor *n;

    test_rejected(new_node(FERRY_OP_SILU_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, f16a, NULL, false), "SILU_BACK mixed types");
    n = new_node(FERRY_OP_SILU_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, other, NULL, false);
    test_rejected(n, "SILU_BACK shape");
    test_rejected(new_node(FERRY_OP_SILU_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, NULL, NULL, false), "SILU_BACK no src1");
    test_rejected(new_node(FERRY_OP_RMS_NORM_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f16a, f32a, NULL, false), "RMS_NORM_BACK f16");
    test_rejected(new_node(FERRY_OP_RMS_NORM_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, other, NULL, false), "RMS_NORM_BACK shape");
    test_rejected(new_node(FERRY_OP_REPEAT_BACK, FERRY_TYPE_F32, 3, 4, 2, 1, f32a, NULL, NULL, false), "REPEAT_BACK not a tiling");
    test_rejected(new_node(FERRY_OP_REPEAT_BACK, FERRY_TYPE_F32, 16, 4, 2, 1, f32a, NULL, NULL, false), "REPEAT_BACK bigger");
    test_rejected(new_node(FERRY_OP_REPEAT_BACK, FERRY_TYPE_F16, 8, 4, 2, 1, f16a, NULL, NULL, false), "REPEAT_BACK f16");
    test_rejected(new_node(FERRY_OP_REPEAT_BACK, FERRY_TYPE_F32, 0, 4, 2, 1, f32a, NULL, NULL, false), "REPEAT_BACK empty output");

    struct ferry_tensor *idx = new_tensor(FERRY_TYPE_I32, 4, 1, 1, 1), *g2 = rand_tensor(FERRY_TYPE_F32, 8, 4, 1, 1, -1, 1);
    struct ferry_tensor *i32g = new_tensor(FERRY_TYPE_I32, 8, 4, 1, 1), *fidx = new_tensor(FERRY_TYPE_F32, 4, 1, 1, 1);
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 8, 4, 1, 1, i32g, idx, NULL, false), "GET_ROWS_BACK i32 grad");
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 8, 4, 1, 1, g2, fidx, NULL, false), "GET_ROWS_BACK f32 indices");
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 8, 4, 1, 1, f32a, idx, NULL, false), "GET_ROWS_BACK 3-D grad");
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, g2, idx, NULL, false), "GET_ROWS_BACK 3-D output");
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 9, 4, 1, 1, g2, idx, NULL, false), "GET_ROWS_BACK row length");
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F16, 8, 4, 1, 1, g2, idx, NULL, false), "GET_ROWS_BACK f16 output");
    struct ferry_tensor *idx5 = new_tensor(FERRY_TYPE_I32, 5, 1, 1, 1);
    test_rejected(new_node(FERRY_OP_GET_ROWS_BACK, FERRY_TYPE_F32, 8, 4, 1, 1, g2, idx5, NULL, false),
             "GET_ROWS_BACK more indices than grad rows");

    n = new_node(FERRY_OP_SOFT_MAX_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, f32b, NULL, false);
    ferry_param_set_f32(n, 1, 1.0f);
    test_rejected(n, "SOFT_MAX_BACK max_bias");
    ferry_param_set_f32(n, 1, NAN);
    test_rejected(n, "SOFT_MAX_BACK NaN max_bias");
    test_rejected(new_node(FERRY_OP_SOFT_MAX_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, other, NULL, false), "SOFT_MAX_BACK shape");
    test_rejected(new_node(FERRY_OP_SOFT_MAX_BACK, FERRY_TYPE_F16, 8, 4, 2, 1, f16a, f16a, NULL, false), "SOFT_MAX_BACK f16");

    /* ROPE_BACK: ROPE's rules */
    struct ferry_tensor *pos = new_tensor(FERRY_TYPE_I32, 2, 1, 1, 1);
    static const int bad[][3] = { { 8, 1, 0 }, { 7, 0, 0 }, { 10, 0, 0 }, { 4, 0, -2 }, { 4, 0, 6 }, { 8, 8, 0 }, { 2, 24, 0 } };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        n = new_node(FERRY_OP_ROPE_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, pos, NULL, false);
        n->op_params[1] = bad[k][0];
        n->op_params[2] = bad[k][1];
        n->op_params[15] = bad[k][2];
        ferry_param_set_f32(n, 5, 10000.0f);
        test_rejected(n, "ROPE_BACK params");
    }
    struct ferry_tensor *pos1 = new_tensor(FERRY_TYPE_I32, 1, 1, 1, 1);
    n = new_node(FERRY_OP_ROPE_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, f32a, pos1, NULL, false);
    n->op_params[1] = 8;
    test_rejected(n, "ROPE_BACK too few positions");
    n = new_node(FERRY_OP_ROPE_BACK, FERRY_TYPE_F16, 8, 4, 2, 1, f32a, pos, NULL, false);
    n->op_params[1] = 8;
    {
        struct ferry_error err = { 0 };
        int rc = ferry_engine_check_node(n, &err);
        CHECK(rc != FERRY_OK && strncmp(err.msg, "ROPE_BACK: ", 11) == 0, "ROPE_BACK type: %s", err.msg);
    }

    /* OUT_PROD */
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 8, 4, 2, 1, -1, 1), *b = rand_tensor(FERRY_TYPE_F32, 3, 4, 4, 1, -1, 1);
    struct ferry_tensor *ah = rand_tensor(FERRY_TYPE_F16, 8, 4, 2, 1, -1, 1), *abf = new_tensor(FERRY_TYPE_BF16, 8, 4, 4, 1);
    struct ferry_tensor *aq8k = new_tensor(FERRY_TYPE_Q8_K, 256, 4, 4, 1), *aq81 = new_tensor(FERRY_TYPE_Q8_1, 32, 4, 4, 1);
    struct ferry_tensor *bh = rand_tensor(FERRY_TYPE_F16, 3, 4, 4, 1, -1, 1), *b5 = rand_tensor(FERRY_TYPE_F32, 3, 5, 4, 1, -1, 1);
    struct ferry_tensor *b3 = rand_tensor(FERRY_TYPE_F32, 3, 4, 3, 1, -1, 1), *a0 = new_tensor(FERRY_TYPE_F32, 8, 4, 0, 1);
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, ah, b, NULL, false), "OUT_PROD f16 broadcast");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, abf, b, NULL, false), "OUT_PROD bf16");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 256, 3, 4, 1, aq8k, b, NULL, false), "OUT_PROD q8_K");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 32, 3, 4, 1, aq81, b, NULL, false), "OUT_PROD q8_1");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, a, bh, NULL, false), "OUT_PROD f16 src1");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, a, b5, NULL, false), "OUT_PROD k mismatch");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 3, 1, a, b3, NULL, false), "OUT_PROD no broadcast");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, a0, b, NULL, false), "OUT_PROD empty src0 batch");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 2, 1, a, b, NULL, false), "OUT_PROD output shape");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F16, 8, 3, 4, 1, a, b, NULL, false), "OUT_PROD f16 output");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 4, 3, 4, 1, test_permute(a, 1, 0, 2, 3), b, NULL, false),
             "OUT_PROD transposed src0");
    test_rejected(new_node(FERRY_OP_OUT_PROD, FERRY_TYPE_F32, 8, 3, 4, 1, a, NULL, NULL, false), "OUT_PROD no src1");

    /* losses */
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS, FERRY_TYPE_F32, 2, 1, 1, 1, f32a, f32b, NULL, false), "CE output size");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS, FERRY_TYPE_F32, 1, 1, 1, 1, f32a, other, NULL, false), "CE shapes");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS, FERRY_TYPE_F32, 1, 1, 1, 1, f16a, f16a, NULL, false), "CE f16");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS, FERRY_TYPE_F32, 1, 1, 1, 1, test_permute(f32a, 1, 0, 2, 3),
                      test_permute(f32b, 1, 0, 2, 3), NULL, false), "CE strided rows");
    struct ferry_tensor *d2 = new_tensor(FERRY_TYPE_F32, 2, 1, 1, 1), *d1 = new_tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, d2, f32a, f32b, false), "CE back d size");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_TYPE_F32, 8, 3, 2, 1, d1, f32a, f32b, false), "CE back shape");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, d1, f32a, other, false), "CE back labels");
    test_rejected(new_node(FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_TYPE_F32, 8, 4, 2, 1, d1, f32a, NULL, false), "CE back no labels");
    struct ferry_tensor *ia = new_tensor(FERRY_TYPE_I32, 8, 4, 1, 1), *ib = new_tensor(FERRY_TYPE_I32, 8, 3, 1, 1);
    test_rejected(new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I32, 1, 1, 1, 1, ia, ia, NULL, false), "COUNT_EQUAL i32 output");
    test_rejected(new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I64, 2, 1, 1, 1, ia, ia, NULL, false), "COUNT_EQUAL output size");
    test_rejected(new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I64, 1, 1, 1, 1, ia, ib, NULL, false), "COUNT_EQUAL shapes");
    test_rejected(new_node(FERRY_OP_COUNT_EQUAL, FERRY_TYPE_I64, 1, 1, 1, 1, f32a, f32a, NULL, false), "COUNT_EQUAL f32");

    /* optimizers */
    struct ferry_tensor *h7 = new_tensor(FERRY_TYPE_F32, 7, 1, 1, 1), *h6 = new_tensor(FERRY_TYPE_F32, 6, 1, 1, 1);
    struct ferry_tensor *h7h = new_tensor(FERRY_TYPE_F16, 7, 1, 1, 1), *h2 = new_tensor(FERRY_TYPE_F32, 2, 1, 1, 1);
    struct ferry_tensor *hsrc[][5] = {
        { f32a, f32b, f32b, f32b, h6 }, { f32a, f32b, f32b, f32b, h7h }, { f32a, f32b, other, f32b, h7 },
        { f32a, f16a, f32b, f32b, h7 }, { f32a, f32b, f32b, f32b, NULL }, { f16a, f16a, f16a, f16a, h7 },
    };
    for (size_t k = 0; k < sizeof hsrc / sizeof hsrc[0]; k++) {
        n = opt_node(FERRY_OP_OPT_STEP_ADAMW, f32a);
        if (hsrc[k][0] != f32a) n->type = hsrc[k][0]->type, n->src[0] = hsrc[k][0];
        for (int s = 1; s < 5; s++) n->src[s] = hsrc[k][s];
        test_rejected(n, "OPT_STEP_ADAMW");
    }
    n = opt_node(FERRY_OP_OPT_STEP_SGD, f32a);
    n->src[1] = f32b;
    n->src[2] = h7;
    test_rejected(n, "OPT_STEP_SGD 7 parameters");
    n->src[2] = h2;
    n->src[1] = other;
    test_rejected(n, "OPT_STEP_SGD grad shape");
    n->src[1] = f32b;
    n->ne[0] = 4;
    test_rejected(n, "OPT_STEP_SGD output shape");
    test_free_kept();
}

/* ---- random nodes: accepted ones must run cleanly ---- */

static int64_t rand_below(int64_t n) { return n > 0 ? (int64_t)(test_rand_u64(&rng) % (uint64_t)n) : 0; }

static struct ferry_tensor *random_source(enum ferry_type t, const int64_t *ne) {
    struct ferry_tensor *s = new_tensor(t, ne[0], ne[1], ne[2], ne[3]);
    if (t == FERRY_TYPE_F32 || t == FERRY_TYPE_F16) test_tensor_fill_uniform(s, &rng, -3, 3);
    if (rand_below(4) == 0 && ne[0] > 1 && ne[1] > 1 && !ferry_type_is_quantized(t)) return test_permute(s, 1, 0, 2, 3);
    return s;
}

static void random_node(void) {
    static const enum ferry_op ops[] = { FERRY_OP_SILU_BACK, FERRY_OP_RMS_NORM_BACK, FERRY_OP_REPEAT_BACK,
                                         FERRY_OP_GET_ROWS_BACK, FERRY_OP_SOFT_MAX_BACK, FERRY_OP_ROPE_BACK,
                                         FERRY_OP_OUT_PROD, FERRY_OP_CROSS_ENTROPY_LOSS,
                                         FERRY_OP_CROSS_ENTROPY_LOSS_BACK, FERRY_OP_COUNT_EQUAL };
    const enum ferry_op op = ops[rand_below(sizeof ops / sizeof ops[0])];
    int64_t ne[4] = { rand_below(9), 1 + rand_below(4), 1 + rand_below(3), 1 + rand_below(2) };
    if (rand_below(8) == 0) ne[1] = 0;
    const enum ferry_type t = rand_below(3) == 0 ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
    struct ferry_tensor *a = random_source(op == FERRY_OP_COUNT_EQUAL ? FERRY_TYPE_I32 : t, ne), *b = NULL, *c = NULL;
    int64_t out[4] = { ne[0], ne[1], ne[2], ne[3] };
    enum ferry_type ot = t;
    int32_t P[16] = { 0 };
    switch (op) {
    case FERRY_OP_REPEAT_BACK:
        for (int d = 0; d < 4; d++) out[d] = ne[d] ? ne[d] / (1 + rand_below(2)) : 0;
        break;
    case FERRY_OP_GET_ROWS_BACK: {
        int64_t ine[4] = { rand_below(ne[1] + 2), 1, 1, 1 };
        b = new_tensor(FERRY_TYPE_I32, ine[0], 1, 1, 1);
        for (int64_t i = 0; i < ine[0]; i++) set_i32(b, i, (int32_t)rand_below(6) - 1);
        out[1] = rand_below(5);
        out[2] = out[3] = 1;
        ot = FERRY_TYPE_F32;
        break;
    }
    case FERRY_OP_ROPE_BACK: {
        static const int modes[] = { 0, 2, 8, 24, 40, 1 };
        P[2] = modes[rand_below(6)];
        P[1] = P[2] == 24 ? (int32_t)(ne[0] / 2) : (int32_t)(rand_below(ne[0] + 2) & ~1);
        P[15] = rand_below(4) == 0 ? (int32_t)(rand_below(4) & ~1) : 0;
        for (int k = 11; k < 15; k++) P[k] = (int32_t)rand_below(3);
        const float fp[6] = { 10000.0f, 0.5f, 1.0f, 1.0f, 32.0f, 1.0f };
        memcpy(&P[5], fp, sizeof fp);
        P[4] = 512;
        b = new_tensor(FERRY_TYPE_I32, ((P[2] & 8) ? 4 : 1) * ne[2] + rand_below(2), 1, 1, 1);
        if (rand_below(3) == 0) c = random_source(FERRY_TYPE_F32, (int64_t[4]){ ne[0] / 2, 1, 1, 1 });
        break;
    }
    case FERRY_OP_OUT_PROD: {
        int64_t bne[4] = { rand_below(5), ne[1], ne[2] * (1 + rand_below(2)), ne[3] };
        b = random_source(FERRY_TYPE_F32, bne);
        out[1] = bne[0];
        out[2] = bne[2];
        ot = FERRY_TYPE_F32;
        break;
    }
    case FERRY_OP_CROSS_ENTROPY_LOSS:
        b = random_source(t, ne);
        out[0] = out[1] = out[2] = out[3] = 1;
        break;
    case FERRY_OP_CROSS_ENTROPY_LOSS_BACK:
        c = random_source(t, ne);
        b = a;
        a = new_tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
        break;
    case FERRY_OP_COUNT_EQUAL:
        b = random_source(FERRY_TYPE_I32, ne);
        out[0] = out[1] = out[2] = out[3] = 1;
        ot = FERRY_TYPE_I64;
        break;
    default: /* SILU_BACK, RMS_NORM_BACK, SOFT_MAX_BACK */
        b = random_source(rand_below(6) == 0 ? FERRY_TYPE_F16 : t, ne);
        break;
    }
    if (rand_below(16) == 0) out[rand_below(4)] += 1;
    struct ferry_tensor *node = new_node(op, ot, out[0], out[1], out[2], out[3], a, b, c, rand_below(2));
    memcpy(node->op_params, P, sizeof P);
    struct ferry_error err = { 0 };
    if (ferry_engine_check_node(node, &err) != FERRY_OK) return;
    int rc = ferry_engine_compute(engines[rand_below(3)], &node, 1, &err);
    CHECK(rc == FERRY_OK || (op == FERRY_OP_GET_ROWS_BACK && rc == FERRY_ERR_INVALID),
          "random %s accepted but failed: %s", ferry_op_name(op), err.msg);
}

static void test_random_nodes(void) {
    for (int i = 0; i < 5000; i++) {
        random_node();
        test_free_kept();
    }
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 3; i++) engines[i] = ferry_engine_create(engine_threads[i]);
    if (!CHECK(engines[0] && engines[1] && engines[2], "engines")) return test_summary();
    test_silu_back();
    test_rms_norm_back();
    test_repeat_back();
    test_get_rows_back();
    test_soft_max_back();
    test_rope_back();
    test_out_prod();
    test_cross_entropy();
    test_count_equal();
    test_optimizers();
    test_hostile();
    test_random_nodes();
    for (int i = 0; i < 3; i++) ferry_engine_destroy(engines[i]);
    return test_summary();
}
