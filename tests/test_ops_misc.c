/* Reductions, norms, shape ops, SOFT_MAX and ROPE (reduce.c, norm.c,
 * shape.c, softmax.c, rope.c) against naive references written here from
 * docs/ops.md: double-precision loops, except where the spec fixes an f32 step
 * (ROPE's running theta). Also: permuted and strided inputs, in-place runs,
 * zero-sized tensors, results identical for 1, 2 and 4 threads and for
 * every SIMD level, hostile nodes that check() must refuse, and random nodes
 * (exactly sized buffers, for the sanitizers) that must run cleanly when
 * check() accepts them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ops/rowvec.h"
#include "ops/simd.h"
#include "testutil.h"

static uint64_t rng = 0x5eed0f7e57ull;
static struct ferry_engine *engines[3]; /* 1, 2 and 4 threads */
static const int engine_threads[3] = { 1, 2, 4 };

/* ---- tensors ---- */

static struct ferry_tensor *new_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return test_keep(test_tensor_new(type, ne0, ne1, ne2, ne3));
}

static struct ferry_tensor *rand_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                        int64_t ne3, float lo, float hi) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    test_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

/* ggml_permute(base, a0..a3): ne'[a_k] = ne[k], nb'[a_k] = nb[k]. */

/* A view of base with its own ne and nb, starting offs bytes in. */
static struct ferry_tensor *view(struct ferry_tensor *base, int64_t ne0, int64_t ne1, int64_t ne2,
                                 int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offs) {
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

/* How new_node lays out outputs. Kernels must write through the node's
 * nb, so the tests run again with padded rows and with dims 0 and 1
 * transposed (the latter not for quantized types). */
enum out_layout { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
static enum out_layout out_layout = OUT_CONTIGUOUS;

static void relayout(struct ferry_tensor *t, enum out_layout layout) {
    const size_t es = ferry_type_size(t->type);
    const int64_t *ne = t->ne;
    if (layout == OUT_PADDED) {
        t->nb[1] = es * (size_t)(ne[0] + 3);
    } else {
        t->nb[0] = es * (size_t)ne[1];
        t->nb[1] = es;
    }
    t->nb[2] = layout == OUT_PADDED ? t->nb[1] * (size_t)ne[1] : es * (size_t)(ne[0] * ne[1]);
    t->nb[3] = t->nb[2] * (size_t)ne[2];
    size_t size = ferry_nbytes(t);
    free(t->data);
    t->data = malloc(size ? size : 1);
}

/* An output node of op, its memory full of NaN bytes so that an element
 * left unwritten shows. */
static struct ferry_tensor *new_node(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1,
                                     int64_t ne2, int64_t ne3, struct ferry_tensor *s0,
                                     struct ferry_tensor *s1, struct ferry_tensor *s2) {
    struct ferry_tensor *t = new_tensor(type, ne0, ne1, ne2, ne3);
    if (out_layout != OUT_CONTIGUOUS && !ferry_type_is_quantized(type) && !ferry_is_empty(t))
        relayout(t, out_layout);
    memset(t->data, 0xff, ferry_nbytes(t));
    t->op = op;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = s0;
    t->src[1] = s1;
    t->src[2] = s2;
    return t;
}

static void set_i32(struct ferry_tensor *t, int64_t i, int32_t v) { memcpy((char *)t->data + i * 4, &v, 4); }

static int run(struct ferry_tensor *node, int which) {
    struct ferry_error err = { 0 };
    int rc = ferry_engine_compute(engines[which], &node, 1, &err);
    CHECK(rc == FERRY_OK, "%s: compute failed: %s", ferry_op_name(node->op), err.msg);
    return rc;
}

/* Runs node with 4, 2 and 1 threads (the last result stays) and checks that
 * the output bytes are the same every time. */
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

/* Runs node at every SIMD level the CPU has (with 4 threads, then the
 * others via run_threads at the best level) and checks the bytes agree. */
static void run_levels(struct ferry_tensor *node, const char *what) {
    enum ferry_simd_level best = ferry_simd_level();
    size_t n = ferry_nbytes(node);
    char *ref = malloc(n ? n : 1);
    ferry_simd_set_level(FERRY_SIMD_SCALAR);
    run(node, 2);
    memcpy(ref, node->data, n);
    for (int l = FERRY_SIMD_AVX2; l <= (int)best; l++) {
        ferry_simd_set_level((enum ferry_simd_level)l);
        run(node, 2);
        CHECK(memcmp(ref, node->data, n) == 0, "%s: %s differs from scalar", what,
              ferry_simd_level_name((enum ferry_simd_level)l));
    }
    ferry_simd_set_level(best);
    free(ref);
    run_threads(node, what);
}

static bool accepted(struct ferry_tensor *node, const char *what) {
    struct ferry_error err = { 0 };
    int rc = ferry_engine_check_node(node, &err);
    return CHECK(rc == FERRY_OK, "%s: rejected: %s", what, err.msg);
}

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

/* Output equal, element for element, to an f32 reference (NaNs match NaNs). */
static bool equals_f32(const float *ref, const struct ferry_tensor *out, const char *what) {
    int64_t n = ferry_nelements(out);
    float *o = test_tensor_to_f32(out);
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++)
        if (!(ref[i] == o[i] || (isnan(ref[i]) && isnan(o[i])))) bad = i;
    bool ok = CHECK(bad < 0, "%s: element %lld is %g, expected %g", what, (long long)bad,
                    bad >= 0 ? (double)o[bad] : 0.0, bad >= 0 ? (double)ref[bad] : 0.0);
    free(o);
    return ok;
}

/* Flat logical index of (i0,i1,i2,i3) in a tensor of shape ne. */
static int64_t flat(const int64_t *ne, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3));
}

/* ---- SUM, SUM_ROWS, MEAN, CUMSUM ---- */

static void check_reductions(struct ferry_tensor *a, const char *what) {
    const int64_t *ne = a->ne;
    const int64_t nrows = ne[1] * ne[2] * ne[3];
    float *x = test_tensor_to_f32(a);
    double *sums = calloc((size_t)nrows + 1, sizeof(double));
    double *cum = calloc((size_t)ferry_nelements(a) + 1, sizeof(double));
    double total = 0;
    for (int64_t r = 0; r < nrows; r++) {
        double acc = 0;
        for (int64_t i = 0; i < ne[0]; i++) {
            acc += x[r * ne[0] + i];
            cum[r * ne[0] + i] = acc;
        }
        sums[r] = acc;
        total += acc;
    }
    char name[128];
    /* ggml's SUM reads each row as ne0 packed floats from its start (nb0
     * ignored) when those reads stay inside the tensor: what a ggml client
     * gets, and so what ferry must give */
    size_t extent = ferry_nbytes(a), last = 0;
    for (int d = 1; d < 4; d++) last += (size_t)(ne[d] - 1) * a->nb[d];
    if (a->nb[0] != sizeof(float) && last + (size_t)ne[0] * sizeof(float) <= extent) {
        total = 0;
        for (int64_t i3 = 0; i3 < ne[3]; i3++)
            for (int64_t i2 = 0; i2 < ne[2]; i2++)
                for (int64_t i1 = 0; i1 < ne[1]; i1++) {
                    const char *row = (const char *)a->data + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3];
                    for (int64_t i = 0; i < ne[0]; i++) {
                        float v;
                        memcpy(&v, row + 4 * i, 4);
                        total += v;
                    }
                }
    }

    struct ferry_tensor *sum = new_node(FERRY_OP_SUM, FERRY_TYPE_F32, 1, 1, 1, 1, a, NULL, NULL);
    snprintf(name, sizeof name, "SUM %s", what);
    if (run_threads(sum, name)) CHECK(nmse_vs(&total, sum) < 1e-12, "%s: wrong total", name);

    struct ferry_tensor *rows = new_node(FERRY_OP_SUM_ROWS, FERRY_TYPE_F32, 1, ne[1], ne[2], ne[3], a, NULL, NULL);
    snprintf(name, sizeof name, "SUM_ROWS %s", what);
    if (run_threads(rows, name)) CHECK(nmse_vs(sums, rows) < 1e-12, "%s: wrong sums", name);

    struct ferry_tensor *mean = new_node(FERRY_OP_MEAN, FERRY_TYPE_F32, 1, ne[1], ne[2], ne[3], a, NULL, NULL);
    for (int64_t r = 0; r < nrows; r++) sums[r] /= (double)ne[0];
    snprintf(name, sizeof name, "MEAN %s", what);
    if (run_threads(mean, name)) CHECK(nmse_vs(sums, mean) < 1e-12, "%s: wrong means", name);

    struct ferry_tensor *cs = new_node(FERRY_OP_CUMSUM, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], a, NULL, NULL);
    snprintf(name, sizeof name, "CUMSUM %s", what);
    if (run_threads(cs, name)) CHECK(nmse_vs(cum, cs) < 1e-10, "%s: wrong prefix sums", name);

    free(x);
    free(sums);
    free(cum);
}

static void test_reductions_cases(void) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 37, 5, 3, 2, -1, 1);
    check_reductions(a, "contiguous");
    check_reductions(test_permute(a, 0, 2, 1, 3), "permuted(0,2,1,3)");
    check_reductions(test_permute(a, 1, 0, 2, 3), "transposed (nb0 != 4)");
    check_reductions(view(a, 20, 3, 3, 2, a->nb[1], a->nb[2], a->nb[3], 8), "row-strided view");

    /* CUMSUM is sequential f32: the result must be exactly that */
    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, 300, 2, 1, 1, -1, 1);
    struct ferry_tensor *cs = new_node(FERRY_OP_CUMSUM, FERRY_TYPE_F32, 300, 2, 1, 1, b, NULL, NULL);
    if (run_threads(cs, "CUMSUM f32 order")) {
        float *x = test_tensor_to_f32(b), *ref = malloc(600 * sizeof(float));
        for (int r = 0; r < 2; r++) {
            ref[r * 300] = x[r * 300];
            for (int i = 1; i < 300; i++) ref[r * 300 + i] = ref[r * 300 + i - 1] + x[r * 300 + i];
        }
        equals_f32(ref, cs, "CUMSUM sequential f32");
        free(x);
        free(ref);
    }
    test_free_kept();
}

static void test_reductions(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_reductions_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

/* ---- ARGMAX, ARGSORT, TOP_K ---- */

static void test_argmax_cases(void) {
    /* small integers make many ties: the last index of the maximum wins */
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F32, 41, 9, 1, 1);
    float *x = a->data;
    for (int i = 0; i < 41 * 9; i++) x[i] = (float)(test_rand_u64(&rng) % 5) - 2.0f;
    for (int i = 0; i < 41; i++) x[8 * 41 + i] = -3.0f; /* a row of equal values */
    struct ferry_tensor *t = test_permute(a, 1, 0, 2, 3); /* [9, 41], strided rows */
    struct ferry_tensor *views[2] = { a, t };
    for (int v = 0; v < 2; v++) {
        struct ferry_tensor *s = views[v];
        struct ferry_tensor *node = new_node(FERRY_OP_ARGMAX, FERRY_TYPE_I32, s->ne[1], 1, 1, 1, s, NULL, NULL);
        if (!run_threads(node, "ARGMAX")) continue;
        float *in = test_tensor_to_f32(s), *out = test_tensor_to_f32(node);
        for (int64_t r = 0; r < s->ne[1]; r++) {
            int64_t best = 0;
            for (int64_t i = 0; i < s->ne[0]; i++)
                if (in[r * s->ne[0] + i] >= in[r * s->ne[0] + best]) best = i;
            CHECK(out[r] == (float)best, "ARGMAX view %d row %lld: %g, expected %lld", v, (long long)r,
                  (double)out[r], (long long)best);
        }
        free(in);
        free(out);
    }
    test_free_kept();
}

static void test_argmax(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_argmax_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

static void check_argsort(struct ferry_tensor *a, int order, const char *what) {
    struct ferry_tensor *node = new_node(FERRY_OP_ARGSORT, FERRY_TYPE_I32, a->ne[0], a->ne[1], a->ne[2],
                                         a->ne[3], a, NULL, NULL);
    node->op_params[0] = order;
    if (!run_threads(node, what)) return;
    const int64_t n = a->ne[0], nrows = ferry_nrows(a);
    float *x = test_tensor_to_f32(a), *idx = test_tensor_to_f32(node);
    char *seen = malloc((size_t)n);
    bool ok = true;
    for (int64_t r = 0; r < nrows && ok; r++) {
        memset(seen, 0, (size_t)n);
        const float *xr = x + r * n, *ir = idx + r * n;
        for (int64_t i = 0; i < n && ok; i++) {
            int64_t k = (int64_t)ir[i];
            ok = CHECK(k >= 0 && k < n && !seen[k], "%s row %lld: not a permutation", what, (long long)r);
            if (!ok) break;
            seen[k] = 1;
            if (i == 0) continue;
            float prev = xr[(int64_t)ir[i - 1]], cur = xr[k];
            bool sorted = order == 0 ? prev <= cur : prev >= cur;
            /* ties keep index order: the sort is stable, hence deterministic */
            bool stable = prev != cur || ir[i - 1] < ir[i];
            ok = CHECK(sorted && stable, "%s row %lld: out of order at %lld", what, (long long)r, (long long)i);
        }
    }
    free(seen);
    free(x);
    free(idx);
}

static int cmp_desc(const void *pa, const void *pb) {
    const double *a = pa, *b = pb; /* (value, index) pairs: value desc, index asc */
    if (a[0] != b[0]) return a[0] < b[0] ? 1 : -1;
    return a[1] < b[1] ? -1 : a[1] > b[1];
}

static void check_top_k(struct ferry_tensor *a, int64_t k, const char *what) {
    struct ferry_tensor *node = new_node(FERRY_OP_TOP_K, FERRY_TYPE_I32, k, a->ne[1], a->ne[2], a->ne[3], a, NULL, NULL);
    if (!run_threads(node, what)) return;
    const int64_t n = a->ne[0], nrows = ferry_nrows(a);
    float *x = test_tensor_to_f32(a), *out = test_tensor_to_f32(node);
    double *pairs = malloc((size_t)n * 2 * sizeof(double));
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t i = 0; i < n; i++) {
            pairs[2 * i] = x[r * n + i];
            pairs[2 * i + 1] = (double)i;
        }
        qsort(pairs, (size_t)n, 2 * sizeof(double), cmp_desc);
        /* values distinct per test data except where noted: the k best, best first */
        bool ok = true;
        for (int64_t i = 0; i < k; i++) ok = ok && out[r * k + i] == (float)pairs[2 * i + 1];
        if (!CHECK(ok, "%s row %lld: not the top %lld best first", what, (long long)r, (long long)k)) break;
    }
    free(pairs);
    free(x);
    free(out);
}

static void test_sorting_cases(void) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 53, 6, 2, 1, -1, 1);
    check_argsort(a, 0, "ARGSORT asc");
    check_argsort(a, 1, "ARGSORT desc");
    check_argsort(test_permute(a, 0, 2, 1, 3), 1, "ARGSORT desc permuted");
    check_argsort(test_permute(a, 1, 0, 2, 3), 0, "ARGSORT asc transposed");
    struct ferry_tensor *ties = new_tensor(FERRY_TYPE_F32, 200, 3, 1, 1);
    for (int i = 0; i < 600; i++) ((float *)ties->data)[i] = (float)(test_rand_u64(&rng) % 7);
    check_argsort(ties, 0, "ARGSORT asc with ties");
    check_argsort(ties, 1, "ARGSORT desc with ties");
    check_top_k(a, 5, "TOP_K 5");
    check_top_k(a, 1, "TOP_K 1");
    check_top_k(a, 53, "TOP_K k = n");
    check_top_k(test_permute(a, 1, 0, 2, 3), 3, "TOP_K transposed");
    check_top_k(ties, 20, "TOP_K with ties (lower index first)");
    struct ferry_tensor *big = rand_tensor(FERRY_TYPE_F32, 5000, 4, 1, 1, -10, 10);
    check_top_k(big, 40, "TOP_K 40 of 5000");
    check_argsort(big, 1, "ARGSORT 5000");
    test_free_kept();
}

static void test_sorting(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_sorting_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

/* ---- NORM, RMS_NORM, L2_NORM ---- */

static void norm_reference(enum ferry_op op, const float *x, double *y, int64_t n, int64_t nrows, double eps) {
    for (int64_t r = 0; r < nrows; r++) {
        const float *xr = x + r * n;
        double *yr = y + r * n;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < n; i++) sum += xr[i];
        for (int64_t i = 0; i < n; i++) sq += (double)xr[i] * xr[i];
        double mean = sum / (double)n, var = 0;
        for (int64_t i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)n;
        for (int64_t i = 0; i < n; i++) {
            switch (op) {
            case FERRY_OP_NORM: yr[i] = (xr[i] - mean) / sqrt(var + eps); break;
            case FERRY_OP_RMS_NORM: yr[i] = xr[i] / sqrt(sq / (double)n + eps); break;
            default: yr[i] = xr[i] / fmax(sqrt(sq), eps); break;
            }
        }
    }
}

static void check_norm(enum ferry_op op, struct ferry_tensor *a, float eps, const char *what) {
    char name[128];
    snprintf(name, sizeof name, "%s %s", ferry_op_name(op), what);
    struct ferry_tensor *node = new_node(op, FERRY_TYPE_F32, a->ne[0], a->ne[1], a->ne[2], a->ne[3], a, NULL, NULL);
    memcpy(node->op_params, &eps, sizeof eps);
    run_levels(node, name);
    float *x = test_tensor_to_f32(a);
    int64_t n = ferry_nelements(a);
    double *ref = malloc((size_t)n * sizeof(double));
    norm_reference(op, x, ref, a->ne[0], ferry_nrows(a), eps);
    double e = nmse_vs(ref, node);
    CHECK(e < 1e-13, "%s: nmse %g", name, e);
    free(x);
    free(ref);
}

static void test_norms_cases(void) {
    enum ferry_op ops[3] = { FERRY_OP_NORM, FERRY_OP_RMS_NORM, FERRY_OP_L2_NORM };
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 301, 5, 3, 1, -2, 3);
    struct ferry_tensor *small = rand_tensor(FERRY_TYPE_F32, 7, 40, 1, 1, -1, 1);
    for (int k = 0; k < 3; k++) {
        check_norm(ops[k], a, 1e-5f, "contiguous");
        check_norm(ops[k], test_permute(a, 0, 2, 1, 3), 1e-5f, "permuted rows");
        check_norm(ops[k], test_permute(small, 1, 0, 2, 3), 1e-6f, "transposed (nb0 != 4)");
        check_norm(ops[k], view(a, 33, 5, 3, 1, a->nb[1], a->nb[2], a->nb[3], 12), 0.5f, "row view, large eps");
    }
    /* L2 of an all-zero row is 0 (1/eps * 0); eps dominates tiny rows */
    struct ferry_tensor *z = new_tensor(FERRY_TYPE_F32, 16, 2, 1, 1);
    ((float *)z->data)[16 + 3] = 1e-3f;
    check_norm(FERRY_OP_L2_NORM, z, 0.5f, "zero row");

    test_free_kept();
}

static void test_norms(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_norms_cases();
    }
    out_layout = OUT_CONTIGUOUS;

    /* in place: the output is the input's memory */
    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, 64, 4, 1, 1, -1, 1);
    struct ferry_tensor *copy = new_tensor(FERRY_TYPE_F32, 64, 4, 1, 1);
    memcpy(copy->data, b->data, 64 * 4 * sizeof(float));
    struct ferry_tensor *out = new_node(FERRY_OP_RMS_NORM, FERRY_TYPE_F32, 64, 4, 1, 1, copy, NULL, NULL);
    struct ferry_tensor *inplace = new_node(FERRY_OP_RMS_NORM, FERRY_TYPE_F32, 64, 4, 1, 1, b, NULL, NULL);
    void *own = inplace->data;
    inplace->data = b->data;
    float eps = 1e-6f;
    memcpy(out->op_params, &eps, 4);
    memcpy(inplace->op_params, &eps, 4);
    run(out, 2);
    run(inplace, 2);
    CHECK(memcmp(out->data, b->data, 64 * 4 * sizeof(float)) == 0, "RMS_NORM in place differs");
    inplace->data = own;
    test_free_kept();
}

/* ---- SOFT_MAX ---- */

struct softmax_case {
    int64_t ne[4];
    int mask;         /* 0 none, 1 f32, 2 f16 */
    int64_t mne[4];   /* mask shape */
    bool sinks;
    float scale, max_bias;
    bool strided_src;
};

static void check_soft_max(const struct softmax_case *c, const char *what) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, c->ne[0], c->ne[1], c->ne[2], c->ne[3], -5, 5);
    struct ferry_tensor *src = a;
    if (c->strided_src) {
        /* a row-strided view: every row padded by 3 floats */
        struct ferry_tensor *base = rand_tensor(FERRY_TYPE_F32, c->ne[0] + 3, c->ne[1], c->ne[2], c->ne[3], -5, 5);
        src = view(base, c->ne[0], c->ne[1], c->ne[2], c->ne[3], base->nb[1], base->nb[2], base->nb[3], 0);
    }
    struct ferry_tensor *m = NULL, *s = NULL;
    if (c->mask) {
        m = rand_tensor(c->mask == 1 ? FERRY_TYPE_F32 : FERRY_TYPE_F16, c->mne[0], c->mne[1], c->mne[2],
                        c->mne[3], -1, 1);
        /* a causal part of -inf */
        for (int64_t r = 0; r < ferry_nrows(m); r++) {
            int64_t i1 = r % m->ne[1];
            for (int64_t i0 = 0; i0 < m->ne[0]; i0++) {
                if (i0 <= m->ne[0] / 2 + i1) continue;
                char *p = (char *)m->data + r * m->nb[1] + i0 * m->nb[0];
                if (c->mask == 1) { float v = -INFINITY; memcpy(p, &v, 4); }
                else { uint16_t h = 0xfc00; memcpy(p, &h, 2); }
            }
        }
    }
    if (c->sinks) s = rand_tensor(FERRY_TYPE_F32, c->ne[2], 1, 1, 1, -2, 2);
    struct ferry_tensor *node = new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, c->ne[0], c->ne[1], c->ne[2],
                                         c->ne[3], src, m, s);
    memcpy(&node->op_params[0], &c->scale, 4);
    memcpy(&node->op_params[1], &c->max_bias, 4);
    run_levels(node, what);

    /* reference in double */
    const int64_t n = c->ne[0];
    float *x = test_tensor_to_f32(src), *mv = m ? test_tensor_to_f32(m) : NULL, *sv = s ? test_tensor_to_f32(s) : NULL;
    double *ref = malloc((size_t)ferry_nelements(node) * sizeof(double)), *w = malloc((size_t)n * sizeof(double));
    int64_t n_head = c->ne[2], n_head_log2 = 1;
    while (n_head_log2 * 2 <= n_head) n_head_log2 *= 2;
    for (int64_t i3 = 0; i3 < c->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < c->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < c->ne[1]; i1++) {
                double slope = 1;
                if (c->max_bias > 0) {
                    double m0 = pow(2, -c->max_bias / n_head_log2), m1 = pow(2, -c->max_bias / 2 / n_head_log2);
                    slope = i2 < n_head_log2 ? pow(m0, i2 + 1) : pow(m1, 2 * (i2 - n_head_log2) + 1);
                }
                const int64_t row = flat(c->ne, 0, i1, i2, i3);
                double max = -INFINITY;
                for (int64_t i = 0; i < n; i++) {
                    w[i] = (double)x[row + i] * c->scale;
                    if (m) w[i] += slope * mv[flat(m->ne, i, i1, i2 % m->ne[2], i3 % m->ne[3])];
                    max = fmax(max, w[i]);
                }
                if (s) max = fmax(max, sv[i2]);
                double sum = s ? exp(sv[i2] - max) : 0;
                for (int64_t i = 0; i < n; i++) sum += exp(w[i] - max);
                for (int64_t i = 0; i < n; i++) ref[row + i] = exp(w[i] - max) / sum;
            }
    double e = nmse_vs(ref, node);
    CHECK(e < 1e-13, "%s: nmse %g", what, e);
    free(x);
    free(mv);
    free(sv);
    free(ref);
    free(w);
}

static void test_soft_max_cases(void) {
    const struct softmax_case cases[] = {
        { { 37, 6, 4, 1 }, 0, { 0 }, false, 1.0f, 0.0f, false },
        { { 128, 5, 3, 1 }, 1, { 128, 5, 1, 1 }, false, 0.125f, 0.0f, false },
        { { 33, 4, 5, 1 }, 2, { 33, 9, 1, 1 }, false, 0.5f, 8.0f, false },  /* ALiBi, mask rows > src rows */
        { { 19, 3, 4, 1 }, 2, { 19, 3, 1, 1 }, true, 1.0f, 0.0f, false },   /* sinks */
        { { 24, 5, 4, 2 }, 1, { 24, 5, 2, 2 }, true, 0.3f, 2.0f, true },    /* broadcast 2,3; strided rows */
        { { 1000, 2, 2, 1 }, 0, { 0 }, false, 2.0f, 0.0f, true },
    };
    char name[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "SOFT_MAX case %zu", i);
        check_soft_max(&cases[i], name);
    }

    test_free_kept();
}

static void test_soft_max(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_soft_max_cases();
    }
    out_layout = OUT_CONTIGUOUS;

    /* a row masked entirely: NaN without sinks (as ggml), zeros with a sink */
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 8, 1, 1, 1, -1, 1);
    struct ferry_tensor *m = new_tensor(FERRY_TYPE_F32, 8, 1, 1, 1);
    for (int i = 0; i < 8; i++) ((float *)m->data)[i] = -INFINITY;
    struct ferry_tensor *sk = new_tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
    struct ferry_tensor *n1 = new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 8, 1, 1, 1, a, m, NULL);
    struct ferry_tensor *n2 = new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 8, 1, 1, 1, a, m, sk);
    ferry_param_set_f32(n1, 0, 1.0f);
    ferry_param_set_f32(n2, 0, 1.0f);
    float nan8[8], zero8[8] = { 0 };
    for (int i = 0; i < 8; i++) nan8[i] = NAN;
    if (run_threads(n1, "SOFT_MAX all masked")) equals_f32(nan8, n1, "SOFT_MAX all masked: NaN");
    if (run_threads(n2, "SOFT_MAX all masked + sink")) equals_f32(zero8, n2, "SOFT_MAX all masked + sink: 0");

    /* in place */
    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, 50, 3, 1, 1, -3, 3);
    struct ferry_tensor *out = new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 50, 3, 1, 1, b, NULL, NULL);
    ferry_param_set_f32(out, 0, 0.7f);
    run(out, 1);
    struct ferry_tensor *inplace = new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 50, 3, 1, 1, b, NULL, NULL);
    ferry_param_set_f32(inplace, 0, 0.7f);
    void *own = inplace->data;
    inplace->data = b->data;
    run(inplace, 1);
    CHECK(memcmp(out->data, b->data, 150 * sizeof(float)) == 0, "SOFT_MAX in place differs");
    inplace->data = own;
    test_free_kept();
}

/* The exp behind SOFT_MAX: within 2 ulp of exp() over the range that
 * matters, exact 0 far below, NaN for NaN, and the same at every level. */
static void test_rowvec_exp(void) {
    enum ferry_simd_level best = ferry_simd_level();
    const int64_t n = 20011;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *y0 = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = -110.0f + 110.0f * (float)i / (float)(n - 1);
    x[7] = -INFINITY;
    x[8] = NAN;
    for (int l = FERRY_SIMD_SCALAR; l <= (int)best; l++) {
        ferry_simd_set_level((enum ferry_simd_level)l);
        rowvec_exp_sum(l == 0 ? y0 : y, x, n, 0.0f);
        if (l > 0) CHECK(memcmp(y0, y, n * sizeof(float)) == 0, "exp: level %d differs from scalar", l);
    }
    ferry_simd_set_level(best);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i == 8) { CHECK(isnan(y0[i]), "exp(NaN) is NaN"); continue; }
        double ref = exp((double)x[i]);
        if (ref < 0x1p-126) { /* subnormal range: absolute error */
            CHECK(fabs(y0[i] - ref) <= 0x1p-149, "exp(%g) = %g", (double)x[i], (double)y0[i]);
            continue;
        }
        double ulp = ldexp(1.0, ilogb(ref) - 23);
        worst = fmax(worst, fabs(y0[i] - ref) / ulp);
    }
    CHECK(worst <= 2.0, "exp error %.2f ulp", worst);
    CHECK(y0[7] == 0.0f, "exp(-inf) = 0");
    free(x);
    free(y);
    free(y0);
}

/* ---- ROPE ---- */

struct rope_case {
    enum ferry_type type;
    int64_t head_dim, n_head, n_tok;
    int n_dims, mode, n_offs;
    float base, freq_scale, ext_factor, attn_factor;
    int sections[4];
    bool freq_factors, strided;
    int pos0;
};

static double ramp(double corr0, double corr1, int64_t j) {
    double y = ((double)j - corr0) / fmax(0.001, corr1 - corr0);
    return 1 - fmin(1, fmax(0, y));
}

/* cos/sin of dimension pair j for a (running) theta. The angle itself is
 * f32 arithmetic, as docs/ops.md B.18 specifies: at positions in the thousands
 * its rounding is far above what the 1e-7 tolerance could hide, so a double
 * angle would not be the same function. cos, sin and the scale are double. */
static void rope_ref_cs(const struct rope_case *c, const float *ff, float theta, int64_t j, double corr0,
                        double corr1, double *cs, double *sn) {
    float te = theta / (ff ? ff[j] : 1.0f), ti = c->freq_scale * te, t = ti;
    double mscale = c->attn_factor;
    if (c->ext_factor != 0) {
        float mix = (float)ramp(corr0, corr1, j) * c->ext_factor;
        t = ti * (1 - mix) + te * mix;
        mscale *= 1 + 0.1 * log(1.0 / c->freq_scale);
    }
    *cs = cos((double)t) * mscale;
    *sn = sin((double)t) * mscale;
}

static void check_rope(const struct rope_case *c, const char *what) {
    const int64_t hd = c->head_dim, nh = c->n_head, nt = c->n_tok;
    const bool multi = (c->mode & 8) != 0;
    struct ferry_tensor *x;
    if (c->strided) { /* the first nh heads of a fused [hd, 3*nh, nt] tensor */
        struct ferry_tensor *base = rand_tensor(c->type, hd, 3 * nh, nt, 1, -1, 1);
        x = view(base, hd, nh, nt, 1, base->nb[1], base->nb[2], base->nb[3], 0);
    } else {
        x = rand_tensor(c->type, hd, nh, nt, 1, -1, 1);
    }
    struct ferry_tensor *pos = new_tensor(FERRY_TYPE_I32, multi ? 4 * nt : nt, 1, 1, 1);
    for (int64_t i = 0; i < pos->ne[0]; i++) set_i32(pos, i, c->pos0 + (int32_t)(i * 7 % 23) - 5);
    struct ferry_tensor *ff = c->freq_factors ? rand_tensor(FERRY_TYPE_F32, hd / 2, 1, 1, 1, 1, 4) : NULL;
    struct ferry_tensor *node = new_node(FERRY_OP_ROPE, c->type, hd, nh, nt, 1, x, pos, ff);
    int32_t *P = node->op_params;
    P[1] = c->n_dims;
    P[2] = c->mode;
    P[4] = 4096;
    ferry_param_set_f32(node, 5, c->base);
    ferry_param_set_f32(node, 6, c->freq_scale);
    ferry_param_set_f32(node, 7, c->ext_factor);
    ferry_param_set_f32(node, 8, c->attn_factor);
    ferry_param_set_f32(node, 9, 32.0f);
    ferry_param_set_f32(node, 10, 1.0f);
    memcpy(&P[11], c->sections, sizeof c->sections);
    P[15] = c->n_offs;
    run_levels(node, what);

    /* reference: the running theta in f32 (the spec's), everything else in double */
    const int nd = c->n_dims, o = c->n_offs;
    const bool vision = c->mode == 24;
    const int64_t npairs = vision ? hd / 2 : nd / 2;
    const float theta_scale = powf(c->base, -2.0f / (float)nd);
    double corr[2];
    for (int k = 0; k < 2; k++) {
        double beta = k == 0 ? 32.0 : 1.0;
        double d = nd * log(4096 / (beta * 2 * M_PI)) / (2 * log(c->base));
        corr[k] = k == 0 ? fmax(0, floor(d)) : fmin(nd - 1, ceil(d));
    }
    float *xv = test_tensor_to_f32(x), *ffv = ff ? test_tensor_to_f32(ff) : NULL;
    double *ref = malloc((size_t)(hd * nh * nt) * sizeof(double));
    double *cs = malloc((size_t)hd * sizeof(double)), *sn = malloc((size_t)hd * sizeof(double));
    const int *s = c->sections;
    const int S = s[0] + s[1] + s[2] + s[3];
    for (int64_t t = 0; t < nt; t++) {
        float th[4];
        int32_t p[4];
        for (int k = 0; k < 4; k++) {
            memcpy(&p[k], (char *)pos->data + 4 * (multi ? t + k * nt : t), 4);
            th[k] = (float)p[k];
        }
        for (int64_t j = 0; j < npairs; j++) {
            int which = 0; /* t, h, w, e */
            if (multi) {
                int sec = (int)(j % S);
                if (vision) { /* each section restarts its theta */
                    if (sec == 0) th[0] = (float)p[0];
                    else if (sec == s[0]) th[1] = (float)p[1];
                    else if (sec == s[0] + s[1]) th[2] = (float)p[2];
                    else if (sec == s[0] + s[1] + s[2]) th[3] = (float)p[3];
                }
                if (c->mode == 40)
                    which = sec % 3 == 1 && sec < 3 * s[1] ? 1 : sec % 3 == 2 && sec < 3 * s[2] ? 2
                          : sec % 3 == 0 && sec < 3 * s[0] ? 0 : 3;
                else
                    which = sec < s[0] ? 0 : sec < s[0] + s[1] ? 1 : sec < s[0] + s[1] + s[2] ? 2 : 3;
            }
            rope_ref_cs(c, ffv, th[which], j, corr[0], corr[1], &cs[j], &sn[j]);
            for (int k = 0; k < 4; k++) th[k] *= theta_scale;
        }
        for (int64_t h = 0; h < nh; h++) {
            const float *xr = xv + (t * nh + h) * hd;
            double *yr = ref + (t * nh + h) * hd;
            for (int64_t i = 0; i < hd; i++) yr[i] = xr[i];
            for (int64_t j = 0; j < npairs; j++) {
                int64_t ia, ib; /* the pair's two dims */
                if (c->mode == 0) { ia = o + 2 * j; ib = ia + 1; }
                else if (vision) { ia = j; ib = j + nd; }
                else { ia = o + j; ib = ia + nd / 2; }
                yr[ia] = xr[ia] * cs[j] - xr[ib] * sn[j];
                yr[ib] = xr[ia] * sn[j] + xr[ib] * cs[j];
            }
        }
    }
    if (c->type == FERRY_TYPE_F16) {
        /* each element within one f16 ulp of the exact value */
        float *out = test_tensor_to_f32(node);
        int64_t bad = -1;
        for (int64_t i = 0; i < hd * nh * nt && bad < 0; i++)
            if (!(fabs(out[i] - ref[i]) <= fabs(ref[i]) * 0x1p-10 + 0x1p-24)) bad = i;
        CHECK(bad < 0, "%s: element %lld is %g, expected %g", what, (long long)bad,
              bad < 0 ? 0.0 : (double)out[bad], bad < 0 ? 0.0 : ref[bad]);
        free(out);
    } else {
        double e = nmse_vs(ref, node);
        CHECK(e < 1e-11, "%s: nmse %g", what, e);
    }
    free(xv);
    free(ffv);
    free(ref);
    free(cs);
    free(sn);
}

static void test_rope_cases(void) {
    const struct rope_case cases[] = {
        { FERRY_TYPE_F32, 64, 4, 5, 64, 0, 0, 10000, 1, 0, 1, { 0 }, false, false, 3 },
        { FERRY_TYPE_F32, 128, 3, 4, 128, 2, 0, 500000, 1, 0, 1, { 0 }, false, true, 1000 },
        { FERRY_TYPE_F32, 64, 2, 3, 32, 2, 16, 10000, 1, 0, 1, { 0 }, false, false, 7 },  /* n_offs */
        { FERRY_TYPE_F32, 96, 2, 3, 48, 0, 8, 10000, 0.5f, 0, 0.9f, { 0 }, false, true, 40 },
        { FERRY_TYPE_F32, 64, 3, 4, 64, 0, 0, 10000, 0.25f, 1, 1, { 0 }, false, false, 5000 }, /* YaRN */
        { FERRY_TYPE_F32, 64, 3, 4, 64, 2, 0, 10000, 0.125f, 0.5f, 0.9f, { 0 }, true, false, 9000 },
        { FERRY_TYPE_F16, 64, 3, 4, 64, 0, 0, 10000, 1, 0, 1, { 0 }, false, false, 100 },
        { FERRY_TYPE_F16, 80, 2, 3, 40, 2, 20, 10000, 1, 0, 1, { 0 }, false, true, 100 },
        { FERRY_TYPE_F32, 64, 3, 5, 32, 8, 0, 10000, 1, 0, 1, { 8, 4, 4, 0 }, false, false, 2 },   /* MROPE */
        { FERRY_TYPE_F32, 64, 3, 5, 64, 40, 0, 10000, 1, 0, 1, { 12, 10, 10, 0 }, false, false, 2 }, /* IMROPE */
        { FERRY_TYPE_F32, 64, 3, 5, 32, 24, 0, 10000, 1, 0, 1, { 8, 8, 0, 0 }, false, false, 2 },   /* VISION */
        { FERRY_TYPE_F32, 64, 2, 3, 32, 24, 0, 10000, 0.5f, 1, 1, { 6, 5, 3, 2 }, true, true, 2 },
    };
    char name[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "ROPE case %zu (mode %d)", i, cases[i].mode);
        check_rope(&cases[i], name);
        test_free_kept();
    }

    test_free_kept();
}

static void test_rope(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_rope_cases();
    }
    out_layout = OUT_CONTIGUOUS;

    /* in place (rope_inplace) equals out of place */
    struct ferry_tensor *x = rand_tensor(FERRY_TYPE_F32, 64, 4, 3, 1, -1, 1);
    struct ferry_tensor *pos = new_tensor(FERRY_TYPE_I32, 3, 1, 1, 1);
    for (int i = 0; i < 3; i++) set_i32(pos, i, 10 + i);
    struct ferry_tensor *out = new_node(FERRY_OP_ROPE, FERRY_TYPE_F32, 64, 4, 3, 1, x, pos, NULL);
    out->op_params[1] = 48;
    out->op_params[2] = 2;
    ferry_param_set_f32(out, 5, 10000);
    ferry_param_set_f32(out, 6, 1);
    ferry_param_set_f32(out, 8, 1);
    run(out, 2);
    struct ferry_tensor *inplace = test_keep(calloc(1, sizeof *inplace));
    *inplace = *out;
    inplace->data = x->data;
    inplace->view_src = x;
    run(inplace, 2);
    CHECK(memcmp(out->data, x->data, 64 * 12 * sizeof(float)) == 0, "ROPE in place differs");
    test_free_kept();
}

/* ---- CONCAT, REPEAT, PAD, FILL, ARANGE, TRI, DIAG_MASK_INF ---- */

static void check_concat(struct ferry_tensor *a, struct ferry_tensor *b, int dim, const char *what) {
    int64_t ne[4];
    memcpy(ne, a->ne, sizeof ne);
    ne[dim] += b->ne[dim];
    struct ferry_tensor *node = new_node(FERRY_OP_CONCAT, a->type, ne[0], ne[1], ne[2], ne[3], a, b, NULL);
    node->op_params[0] = dim;
    if (!run_threads(node, what)) return;
    float *av = test_tensor_to_f32(a), *bv = test_tensor_to_f32(b);
    float *ref = malloc((size_t)ferry_nelements(node) * sizeof(float) + 1);
    for (int64_t i3 = 0; i3 < ne[3]; i3++)
        for (int64_t i2 = 0; i2 < ne[2]; i2++)
            for (int64_t i1 = 0; i1 < ne[1]; i1++)
                for (int64_t i0 = 0; i0 < ne[0]; i0++) {
                    int64_t i[4] = { i0, i1, i2, i3 };
                    float v;
                    if (i[dim] < a->ne[dim]) {
                        v = av[flat(a->ne, i0, i1, i2, i3)];
                    } else {
                        i[dim] -= a->ne[dim];
                        v = bv[flat(b->ne, i[0], i[1], i[2], i[3])];
                    }
                    ref[flat(ne, i0, i1, i2, i3)] = v;
                }
    equals_f32(ref, node, what);
    free(av);
    free(bv);
    free(ref);
}

static void test_concat_cases(void) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 4, 5, 3, 2, -1, 1);
    check_concat(a, rand_tensor(FERRY_TYPE_F32, 6, 5, 3, 2, -1, 1), 0, "CONCAT dim 0");
    check_concat(a, test_permute(rand_tensor(FERRY_TYPE_F32, 4, 3, 2, 2, -1, 1), 0, 2, 1, 3), 1, "CONCAT dim 1 permuted");
    check_concat(test_permute(rand_tensor(FERRY_TYPE_F32, 5, 4, 3, 2, -1, 1), 1, 0, 2, 3),
                 rand_tensor(FERRY_TYPE_F32, 4, 5, 1, 2, -1, 1), 2, "CONCAT dim 2 transposed");
    check_concat(a, rand_tensor(FERRY_TYPE_F32, 4, 5, 3, 1, -1, 1), 3, "CONCAT dim 3");
    check_concat(rand_tensor(FERRY_TYPE_F16, 8, 2, 3, 1, -1, 1), rand_tensor(FERRY_TYPE_F16, 8, 5, 3, 1, -1, 1), 1,
                 "CONCAT f16 dim 1");
    check_concat(rand_tensor(FERRY_TYPE_Q8_0, 64, 2, 1, 1, -1, 1), rand_tensor(FERRY_TYPE_Q8_0, 32, 2, 1, 1, -1, 1), 0,
                 "CONCAT q8_0 dim 0 (blocks)");
    check_concat(rand_tensor(FERRY_TYPE_Q4_0, 64, 2, 1, 1, -1, 1), rand_tensor(FERRY_TYPE_Q4_0, 64, 3, 1, 1, -1, 1), 1,
                 "CONCAT q4_0 dim 1");
    /* an empty side: the result is the other one */
    check_concat(a, new_tensor(FERRY_TYPE_F32, 4, 0, 3, 2), 1, "CONCAT with empty src1");
    check_concat(new_tensor(FERRY_TYPE_F32, 0, 5, 3, 2), a, 0, "CONCAT with empty src0");
    test_free_kept();
}

static void test_concat(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_concat_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

static void check_repeat(struct ferry_tensor *a, int64_t n0, int64_t n1, int64_t n2, int64_t n3, const char *what) {
    struct ferry_tensor *node = new_node(FERRY_OP_REPEAT, a->type, n0, n1, n2, n3, a, NULL, NULL);
    if (!run_threads(node, what)) return;
    float *av = test_tensor_to_f32(a), *ref = malloc((size_t)ferry_nelements(node) * sizeof(float));
    const int64_t ne[4] = { n0, n1, n2, n3 };
    for (int64_t i3 = 0; i3 < n3; i3++)
        for (int64_t i2 = 0; i2 < n2; i2++)
            for (int64_t i1 = 0; i1 < n1; i1++)
                for (int64_t i0 = 0; i0 < n0; i0++)
                    ref[flat(ne, i0, i1, i2, i3)] =
                        av[flat(a->ne, i0 % a->ne[0], i1 % a->ne[1], i2 % a->ne[2], i3 % a->ne[3])];
    equals_f32(ref, node, what);
    free(av);
    free(ref);
}

static void test_repeat_cases(void) {
    check_repeat(rand_tensor(FERRY_TYPE_F32, 3, 2, 1, 1, -1, 1), 6, 4, 3, 2, "REPEAT f32");
    check_repeat(rand_tensor(FERRY_TYPE_F16, 4, 1, 2, 1, -1, 1), 8, 3, 2, 2, "REPEAT f16");
    check_repeat(test_permute(rand_tensor(FERRY_TYPE_F32, 3, 5, 2, 1, -1, 1), 1, 0, 2, 3), 10, 9, 4, 1,
                 "REPEAT transposed");
    struct ferry_tensor *i = new_tensor(FERRY_TYPE_I32, 5, 2, 1, 1);
    for (int k = 0; k < 10; k++) set_i32(i, k, k * 1000 - 3);
    check_repeat(i, 5, 4, 3, 1, "REPEAT i32");
    check_repeat(rand_tensor(FERRY_TYPE_F32, 7, 3, 2, 1, -1, 1), 7, 3, 2, 1, "REPEAT identity");
    test_free_kept();
}

static void test_repeat(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_repeat_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

static void check_pad(struct ferry_tensor *a, const int32_t lp_rp[8], int circular, const char *what) {
    int64_t ne[4];
    for (int d = 0; d < 4; d++) ne[d] = a->ne[d] + lp_rp[2 * d] + lp_rp[2 * d + 1];
    struct ferry_tensor *node = new_node(FERRY_OP_PAD, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], a, NULL, NULL);
    memcpy(node->op_params, lp_rp, 8 * sizeof(int32_t));
    node->op_params[8] = circular;
    if (!run_threads(node, what)) return;
    float *av = test_tensor_to_f32(a), *ref = malloc((size_t)ferry_nelements(node) * sizeof(float) + 1);
    for (int64_t i3 = 0; i3 < ne[3]; i3++)
        for (int64_t i2 = 0; i2 < ne[2]; i2++)
            for (int64_t i1 = 0; i1 < ne[1]; i1++)
                for (int64_t i0 = 0; i0 < ne[0]; i0++) {
                    int64_t i[4] = { i0, i1, i2, i3 }, j[4];
                    bool in = true;
                    for (int d = 0; d < 4; d++) {
                        j[d] = i[d] - lp_rp[2 * d];
                        if (circular) j[d] = ((j[d] % a->ne[d]) + a->ne[d]) % a->ne[d];
                        in = in && j[d] >= 0 && j[d] < a->ne[d];
                    }
                    ref[flat(ne, i0, i1, i2, i3)] = in ? av[flat(a->ne, j[0], j[1], j[2], j[3])] : 0.0f;
                }
    equals_f32(ref, node, what);
    free(av);
    free(ref);
}

static void test_pad_cases(void) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 5, 4, 3, 1, -1, 1);
    check_pad(a, (const int32_t[8]){ 0, 2, 0, 1, 0, 0, 0, 1 }, 0, "PAD right");
    check_pad(a, (const int32_t[8]){ 1, 2, 2, 0, 0, 1, 1, 1 }, 0, "PAD left and right");
    check_pad(test_permute(a, 1, 0, 2, 3), (const int32_t[8]){ 3, 1, 1, 2, 1, 0, 0, 0 }, 0, "PAD transposed");
    check_pad(a, (const int32_t[8]){ 2, 1, 1, 1, 0, 0, 0, 0 }, 1, "PAD circular");
    check_pad(test_permute(a, 0, 2, 1, 3), (const int32_t[8]){ 7, 9, 5, 0, 1, 4, 0, 2 }, 1, "PAD circular, pads > size");
    check_pad(new_tensor(FERRY_TYPE_F32, 0, 3, 1, 1), (const int32_t[8]){ 2, 2, 0, 0, 0, 0, 0, 0 }, 0,
              "PAD of an empty tensor: zeros");
    test_free_kept();
}

static void test_pad(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_pad_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

static void test_generators_cases(void) {
    /* FILL: src0's contents are ignored */
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 7, 3, 2, 1, -1, 1);
    struct ferry_tensor *fill = new_node(FERRY_OP_FILL, FERRY_TYPE_F32, 7, 3, 2, 1, a, NULL, NULL);
    ferry_param_set_f32(fill, 0, 2.5f);
    float ref[64];
    for (int i = 0; i < 64; i++) ref[i] = 2.5f;
    if (run_threads(fill, "FILL f32")) equals_f32(ref, fill, "FILL f32");
    struct ferry_tensor *h = rand_tensor(FERRY_TYPE_F16, 9, 2, 1, 1, -1, 1);
    struct ferry_tensor *fill16 = new_node(FERRY_OP_FILL, FERRY_TYPE_F16, 9, 2, 1, 1, h, NULL, NULL);
    ferry_param_set_f32(fill16, 0, 1.0f + 0x1p-11f); /* a tie: rounds to even, 1.0 */
    for (int i = 0; i < 64; i++) ref[i] = 1.0f;
    if (run_threads(fill16, "FILL f16")) equals_f32(ref, fill16, "FILL f16 rounds to nearest even");

    /* ARANGE: start + step*i (step*i exact here, so one rounding) */
    struct ferry_tensor *ar = new_node(FERRY_OP_ARANGE, FERRY_TYPE_F32, 13, 1, 1, 1, NULL, NULL, NULL);
    ferry_param_set_f32(ar, 0, 0.5f);
    ferry_param_set_f32(ar, 1, 10.0f);
    ferry_param_set_f32(ar, 2, 0.75f);
    for (int i = 0; i < 13; i++) ref[i] = (float)(0.5 + 0.75 * i);
    if (run_threads(ar, "ARANGE")) equals_f32(ref, ar, "ARANGE");

    /* TRI and DIAG_MASK_INF, on a transposed input too */
    struct ferry_tensor *sq = rand_tensor(FERRY_TYPE_F32, 6, 6, 2, 2, -1, 1);
    struct ferry_tensor *srcs[2] = { sq, test_permute(sq, 1, 0, 2, 3) };
    for (int v = 0; v < 2; v++) {
        float *x = test_tensor_to_f32(srcs[v]), *r = malloc(144 * sizeof(float));
        for (int type = 0; type < 4; type++) {
            struct ferry_tensor *t = new_node(FERRY_OP_TRI, FERRY_TYPE_F32, 6, 6, 2, 2, srcs[v], NULL, NULL);
            t->op_params[0] = type;
            for (int k = 0; k < 144; k++) {
                int i0 = k % 6, i1 = k / 6 % 6;
                bool keep_it = type == 0 ? i0 >= i1 : type == 1 ? i0 > i1 : type == 2 ? i0 <= i1 : i0 < i1;
                r[k] = keep_it ? x[k] : 0.0f;
            }
            if (run_threads(t, "TRI")) equals_f32(r, t, "TRI");
        }
        for (int n_past = 0; n_past < 3; n_past += 2) {
            struct ferry_tensor *t = new_node(FERRY_OP_DIAG_MASK_INF, FERRY_TYPE_F32, 6, 6, 2, 2, srcs[v], NULL, NULL);
            t->op_params[0] = n_past;
            for (int k = 0; k < 144; k++) r[k] = k % 6 > n_past + k / 6 % 6 ? -INFINITY : x[k];
            if (run_threads(t, "DIAG_MASK_INF")) equals_f32(r, t, "DIAG_MASK_INF");
        }
        free(x);
        free(r);
    }
    test_free_kept();
}

static void test_generators(void) {
    const enum out_layout layouts[] = { OUT_CONTIGUOUS, OUT_PADDED, OUT_TRANSPOSED };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        out_layout = layouts[i];
        test_generators_cases();
    }
    out_layout = OUT_CONTIGUOUS;
}

/* ---- zero-sized tensors ---- */

static void test_empty(void) {
    struct ferry_error err = { 0 };
    /* zero-length rows: sums are 0, means 0/0 = NaN (as ggml) */
    struct ferry_tensor *e = new_tensor(FERRY_TYPE_F32, 0, 3, 2, 1);
    struct ferry_tensor *rows = new_node(FERRY_OP_SUM_ROWS, FERRY_TYPE_F32, 1, 3, 2, 1, e, NULL, NULL);
    struct ferry_tensor *mean = new_node(FERRY_OP_MEAN, FERRY_TYPE_F32, 1, 3, 2, 1, e, NULL, NULL);
    struct ferry_tensor *sum = new_node(FERRY_OP_SUM, FERRY_TYPE_F32, 1, 1, 1, 1, e, NULL, NULL);
    float zeros[6] = { 0 }, nans[6];
    for (int i = 0; i < 6; i++) nans[i] = NAN;
    if (run_threads(rows, "SUM_ROWS of empty rows")) equals_f32(zeros, rows, "SUM_ROWS of empty rows = 0");
    if (run_threads(mean, "MEAN of empty rows")) equals_f32(nans, mean, "MEAN of empty rows = NaN");
    if (run_threads(sum, "SUM of nothing")) equals_f32(zeros, sum, "SUM of nothing = 0");

    /* empty outputs: accepted, nothing written, nothing read */
    struct ferry_tensor *nodes[] = {
        new_node(FERRY_OP_CUMSUM, FERRY_TYPE_F32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_RMS_NORM, FERRY_TYPE_F32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_NORM, FERRY_TYPE_F32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_ARGSORT, FERRY_TYPE_I32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_TOP_K, FERRY_TYPE_I32, 0, 3, 2, 1, e, NULL, NULL),
        new_node(FERRY_OP_TRI, FERRY_TYPE_F32, 0, 0, 2, 1, new_tensor(FERRY_TYPE_F32, 0, 0, 2, 1), NULL, NULL),
    };
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        int rc = ferry_engine_compute(engines[2], &nodes[i], 1, &err);
        CHECK(rc == FERRY_OK, "empty %s: %s", ferry_op_name(nodes[i]->op), err.msg);
    }
    /* ROPE with no tokens, and TOP_K k = 0 of real rows */
    struct ferry_tensor *x = new_tensor(FERRY_TYPE_F32, 64, 4, 0, 1), *pos = new_tensor(FERRY_TYPE_I32, 0, 1, 1, 1);
    struct ferry_tensor *rope = new_node(FERRY_OP_ROPE, FERRY_TYPE_F32, 64, 4, 0, 1, x, pos, NULL);
    rope->op_params[1] = 64;
    struct ferry_tensor *topk0 = new_node(FERRY_OP_TOP_K, FERRY_TYPE_I32, 0, 3, 1, 1,
                                          rand_tensor(FERRY_TYPE_F32, 5, 3, 1, 1, -1, 1), NULL, NULL);
    CHECK(ferry_engine_compute(engines[2], &rope, 1, &err) == FERRY_OK, "ROPE of 0 tokens: %s", err.msg);
    CHECK(ferry_engine_compute(engines[2], &topk0, 1, &err) == FERRY_OK, "TOP_K k=0: %s", err.msg);

    /* no answer exists: ARGMAX of empty rows, REPEAT or circular PAD of nothing */
    test_rejected(new_node(FERRY_OP_ARGMAX, FERRY_TYPE_I32, 3, 1, 1, 1, new_tensor(FERRY_TYPE_F32, 0, 3, 1, 1), NULL, NULL),
             "ARGMAX of empty rows");
    test_rejected(new_node(FERRY_OP_REPEAT, FERRY_TYPE_F32, 4, 3, 1, 1, new_tensor(FERRY_TYPE_F32, 0, 3, 1, 1), NULL, NULL),
             "REPEAT of an empty tensor");
    struct ferry_tensor *pad = new_node(FERRY_OP_PAD, FERRY_TYPE_F32, 2, 3, 1, 1, new_tensor(FERRY_TYPE_F32, 0, 3, 1, 1),
                                        NULL, NULL);
    pad->op_params[0] = 2;
    pad->op_params[8] = 1;
    test_rejected(pad, "circular PAD of an empty tensor");
    test_free_kept();
}

/* ---- hostile nodes ---- */

static struct ferry_tensor *rope_node(int64_t hd, int n_dims, int mode) {
    struct ferry_tensor *x = new_tensor(FERRY_TYPE_F32, hd, 2, 3, 1);
    struct ferry_tensor *pos = new_tensor(FERRY_TYPE_I32, (mode & 8) ? 12 : 3, 1, 1, 1);
    struct ferry_tensor *n = new_node(FERRY_OP_ROPE, FERRY_TYPE_F32, hd, 2, 3, 1, x, pos, NULL);
    n->op_params[1] = n_dims;
    n->op_params[2] = mode;
    ferry_param_set_f32(n, 5, 10000);
    ferry_param_set_f32(n, 6, 1);
    ferry_param_set_f32(n, 8, 1);
    if (mode & 8) n->op_params[11] = 4;
    return n;
}

static void test_hostile_rope(void) {
    struct ferry_tensor *n;
    accepted(rope_node(64, 64, 0), "ROPE baseline");
    accepted(rope_node(64, 32, 24), "ROPE vision baseline");
    test_rejected(rope_node(64, 31, 0), "ROPE odd n_dims");
    test_rejected(rope_node(64, 66, 2), "ROPE n_dims > head_dim");
    test_rejected(rope_node(64, -2, 2), "ROPE negative n_dims");
    const int bad_modes[] = { 1, 3, 4, 16, 32, 9, 100, -8 };
    for (size_t i = 0; i < sizeof bad_modes / sizeof bad_modes[0]; i++) test_rejected(rope_node(64, 64, bad_modes[i]), "ROPE invalid mode");
    test_rejected(rope_node(64, 64, 24), "ROPE vision with n_dims != head_dim/2");
    n = rope_node(64, 32, 2);
    n->op_params[15] = 40;
    test_rejected(n, "ROPE n_offs + n_dims > head_dim");
    n = rope_node(64, 32, 2);
    n->op_params[15] = 3;
    test_rejected(n, "ROPE odd n_offs");
    n = rope_node(64, 32, 2);
    n->op_params[15] = -2;
    test_rejected(n, "ROPE negative n_offs");
    n = rope_node(64, 32, 24);
    n->op_params[15] = 2;
    test_rejected(n, "ROPE vision with n_offs");
    n = rope_node(64, 32, 2);
    n->src[1]->ne[0] = 2; /* 3 tokens */
    test_rejected(n, "ROPE positions too short");
    n = rope_node(64, 32, 8);
    n->src[1]->ne[0] = 11; /* M-RoPE needs 4 per token */
    test_rejected(n, "ROPE M-RoPE positions too short");
    n = rope_node(64, 32, 2);
    n->src[1]->type = FERRY_TYPE_F32;
    test_rejected(n, "ROPE positions not I32");
    n = rope_node(64, 32, 2);
    n->src[1]->nb[0] = 8; /* read densely: a strided positions tensor is refused */
    test_rejected(n, "ROPE strided positions");
    n = rope_node(64, 32, 8);
    n->op_params[11] = 0; /* all sections zero: no sector to pick, (i0/2) % 0 */
    test_rejected(n, "ROPE M-RoPE with no sections");
    n = rope_node(64, 32, 40);
    n->op_params[12] = -5;
    test_rejected(n, "ROPE negative section");
    n = rope_node(64, 32, 8);
    n->op_params[11] = 60;
    n->op_params[12] = 10;
    test_rejected(n, "ROPE sections larger than head_dim");
    n = rope_node(64, 64, 0);
    n->src[2] = new_tensor(FERRY_TYPE_F32, 31, 1, 1, 1);
    test_rejected(n, "ROPE freq factors too short");
    n = rope_node(64, 64, 0);
    n->type = FERRY_TYPE_F16;
    test_rejected(n, "ROPE output type differs");
    n = rope_node(64, 64, 0);
    n->src[0]->data = (char *)n->src[0]->data + 2; /* not float-aligned */
    test_rejected(n, "ROPE misaligned src0");
    n->src[0]->data = (char *)n->src[0]->data - 2;
    n = rope_node(64, 64, 0);
    n->src[0]->nb[0] = 8;
    n->src[0]->nb[1] = 64 * 8;
    test_rejected(n, "ROPE src0 with strided elements");
    n = rope_node(64, 64, 0);
    n->src[1] = NULL;
    test_rejected(n, "ROPE without positions");
    test_free_kept();
}

static struct ferry_tensor *soft_max_node(struct ferry_tensor *mask, struct ferry_tensor *sinks) {
    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F32, 16, 4, 6, 2);
    return new_node(FERRY_OP_SOFT_MAX, FERRY_TYPE_F32, 16, 4, 6, 2, a, mask, sinks);
}

static void test_hostile_other(void) {
    accepted(soft_max_node(new_tensor(FERRY_TYPE_F16, 16, 8, 3, 1), new_tensor(FERRY_TYPE_F32, 6, 1, 1, 1)),
             "SOFT_MAX baseline");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_F16, 15, 4, 1, 1), NULL), "SOFT_MAX mask ne0 != ne0");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_F32, 16, 3, 1, 1), NULL), "SOFT_MAX mask with fewer rows");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_F32, 16, 4, 4, 1), NULL), "SOFT_MAX mask ne2 not dividing");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_F32, 16, 4, 0, 1), NULL), "SOFT_MAX mask ne2 = 0");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_F32, 16, 4, 1, 3), NULL), "SOFT_MAX mask ne3 not dividing");
    test_rejected(soft_max_node(new_tensor(FERRY_TYPE_I32, 16, 4, 1, 1), NULL), "SOFT_MAX mask type I32");
    test_rejected(soft_max_node(NULL, new_tensor(FERRY_TYPE_F32, 5, 1, 1, 1)), "SOFT_MAX too few sinks");
    test_rejected(soft_max_node(NULL, new_tensor(FERRY_TYPE_F16, 6, 1, 1, 1)), "SOFT_MAX f16 sinks");
    struct ferry_tensor *n = soft_max_node(NULL, NULL);
    ferry_param_set_f32(n, 1, 8.0f);
    test_rejected(n, "SOFT_MAX ALiBi without a mask");
    n = soft_max_node(NULL, NULL);
    n->src[0]->type = FERRY_TYPE_F16;
    test_rejected(n, "SOFT_MAX f16 src0");

    struct ferry_tensor *a = new_tensor(FERRY_TYPE_F32, 4, 3, 2, 1), *b = new_tensor(FERRY_TYPE_F32, 4, 3, 2, 1);
    const int bad_dims[] = { -1, 4, 1000 };
    for (int i = 0; i < 3; i++) {
        n = new_node(FERRY_OP_CONCAT, FERRY_TYPE_F32, 8, 3, 2, 1, a, b, NULL);
        n->op_params[0] = bad_dims[i];
        test_rejected(n, "CONCAT dim out of range");
    }
    test_rejected(new_node(FERRY_OP_CONCAT, FERRY_TYPE_F32, 8, 3, 2, 1, a, new_tensor(FERRY_TYPE_F32, 4, 2, 2, 1), NULL),
             "CONCAT shapes differ outside dim");
    test_rejected(new_node(FERRY_OP_CONCAT, FERRY_TYPE_F32, 9, 3, 2, 1, a, b, NULL), "CONCAT output shape");
    test_rejected(new_node(FERRY_OP_CONCAT, FERRY_TYPE_F32, 8, 3, 2, 1, a, new_tensor(FERRY_TYPE_F16, 4, 3, 2, 1), NULL),
             "CONCAT type mismatch");

    n = new_node(FERRY_OP_PAD, FERRY_TYPE_F32, 4, 3, 2, 1, a, NULL, NULL);
    n->op_params[0] = -1;
    n->op_params[1] = 1;
    test_rejected(n, "PAD negative pad");
    n = new_node(FERRY_OP_PAD, FERRY_TYPE_F32, 6, 3, 2, 1, a, NULL, NULL);
    n->op_params[1] = 1;
    test_rejected(n, "PAD output shape");
    n = new_node(FERRY_OP_PAD, FERRY_TYPE_F32, 4, 3, 2, 1, a, NULL, NULL);
    n->op_params[8] = 2;
    test_rejected(n, "PAD circular flag 2");

    test_rejected(new_node(FERRY_OP_TOP_K, FERRY_TYPE_I32, 5, 3, 2, 1, a, NULL, NULL), "TOP_K k > ne0");
    test_rejected(new_node(FERRY_OP_TOP_K, FERRY_TYPE_I32, 2, 2, 2, 1, a, NULL, NULL), "TOP_K output shape");
    n = new_node(FERRY_OP_ARGSORT, FERRY_TYPE_I32, 4, 3, 2, 1, a, NULL, NULL);
    n->op_params[0] = 2;
    test_rejected(n, "ARGSORT order 2");
    test_rejected(new_node(FERRY_OP_ARGSORT, FERRY_TYPE_F32, 4, 3, 2, 1, a, NULL, NULL), "ARGSORT f32 output");
    test_rejected(new_node(FERRY_OP_ARGMAX, FERRY_TYPE_I32, 3, 1, 1, 1, a, NULL, NULL), "ARGMAX of a 3-D tensor");

    test_rejected(new_node(FERRY_OP_REPEAT, FERRY_TYPE_F32, 6, 3, 2, 1, a, NULL, NULL), "REPEAT 6 % 4");
    test_rejected(new_node(FERRY_OP_REPEAT, FERRY_TYPE_F32, 4, 3, 3, 1, a, NULL, NULL), "REPEAT 3 % 2");
    test_rejected(new_node(FERRY_OP_REPEAT, FERRY_TYPE_F16, 4, 3, 2, 1, a, NULL, NULL), "REPEAT type change");
    test_rejected(new_node(FERRY_OP_REPEAT, FERRY_TYPE_Q8_0, 64, 1, 1, 1, new_tensor(FERRY_TYPE_Q8_0, 32, 1, 1, 1), NULL, NULL),
             "REPEAT of a quantized type");

    n = new_node(FERRY_OP_RMS_NORM, FERRY_TYPE_F32, 4, 3, 2, 1, a, NULL, NULL);
    ferry_param_set_f32(n, 0, -1e-5f);
    test_rejected(n, "RMS_NORM negative eps");
    ferry_param_set_f32(n, 0, NAN);
    test_rejected(n, "RMS_NORM NaN eps");
    test_rejected(new_node(FERRY_OP_NORM, FERRY_TYPE_F32, 4, 3, 1, 1, a, NULL, NULL), "NORM output shape");
    test_rejected(new_node(FERRY_OP_L2_NORM, FERRY_TYPE_F16, 4, 3, 2, 1, a, NULL, NULL), "L2_NORM f16 output");

    n = new_node(FERRY_OP_TRI, FERRY_TYPE_F32, 4, 3, 2, 1, a, NULL, NULL);
    test_rejected(n, "TRI not square");
    struct ferry_tensor *sq = new_tensor(FERRY_TYPE_F32, 3, 3, 1, 1);
    n = new_node(FERRY_OP_TRI, FERRY_TYPE_F32, 3, 3, 1, 1, sq, NULL, NULL);
    n->op_params[0] = 4;
    test_rejected(n, "TRI type 4");
    n = new_node(FERRY_OP_DIAG_MASK_INF, FERRY_TYPE_F32, 3, 3, 1, 1, sq, NULL, NULL);
    n->op_params[0] = -1;
    test_rejected(n, "DIAG_MASK_INF negative n_past");

    test_rejected(new_node(FERRY_OP_SUM_ROWS, FERRY_TYPE_F32, 1, 3, 1, 1, a, NULL, NULL), "SUM_ROWS output shape");
    test_rejected(new_node(FERRY_OP_SUM, FERRY_TYPE_F32, 2, 1, 1, 1, a, NULL, NULL), "SUM output shape");
    test_rejected(new_node(FERRY_OP_CUMSUM, FERRY_TYPE_F32, 4, 3, 2, 1, new_tensor(FERRY_TYPE_F16, 4, 3, 2, 1), NULL, NULL),
             "CUMSUM f16 src0");
    test_rejected(new_node(FERRY_OP_ARANGE, FERRY_TYPE_F32, 4, 2, 1, 1, NULL, NULL, NULL), "ARANGE 2-D");
    test_rejected(new_node(FERRY_OP_FILL, FERRY_TYPE_F32, 4, 3, 2, 1, new_tensor(FERRY_TYPE_F16, 4, 3, 2, 1), NULL, NULL),
             "FILL type change");

    /* a header whose element count overflows int64 (zero strides keep the
     * byte extent tiny): refused rather than looped over */
    struct ferry_tensor *huge = new_tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
    huge->ne[1] = huge->ne[2] = (int64_t)1 << 40;
    huge->nb[1] = huge->nb[2] = huge->nb[3] = 0;
    n = new_node(FERRY_OP_SUM, FERRY_TYPE_F32, 1, 1, 1, 1, huge, NULL, NULL);
    test_rejected(n, "SUM of 2^80 elements");
    test_free_kept();
}

/* ---- random nodes: whatever check() accepts must run in bounds ---- */

static int64_t rand_below(int64_t n) { return (int64_t)(test_rand_u64(&rng) % (uint64_t)n); }

/* A tensor of shape ne (each dim perturbed now and then), of type t or now
 * and then another one, exactly as large as its strides need (so the
 * sanitizer sees any stray access), sometimes transposed, filled with
 * values that include inf and NaN. */
static struct ferry_tensor *random_source(enum ferry_type t, const int64_t *ne) {
    static const enum ferry_type others[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_I32, FERRY_TYPE_BF16 };
    int64_t n[4] = { ne[0], ne[1], ne[2], ne[3] };
    if (rand_below(12) == 0) n[rand_below(4)] = rand_below(5);
    if (rand_below(12) == 0) t = others[rand_below(4)];
    const bool transpose = rand_below(4) == 0;
    struct ferry_tensor *x = transpose ? new_tensor(t, n[1], n[0], n[2], n[3]) : new_tensor(t, n[0], n[1], n[2], n[3]);
    size_t bytes = ferry_nbytes(x);
    for (size_t i = 0; i + 4 <= bytes; i += 4) {
        uint32_t v = (uint32_t)test_rand_u64(&rng);
        if (t == FERRY_TYPE_F32 && rand_below(4) != 0) {
            float f = test_rand_uniform(&rng, -3, 3);
            memcpy(&v, &f, 4);
        } else if (t == FERRY_TYPE_I32) {
            v = (uint32_t)(rand_below(40) - 20);
        }
        memcpy((char *)x->data + i, &v, 4);
    }
    return transpose ? test_permute(x, 1, 0, 2, 3) : x;
}

static void random_node(void) {
    static const enum ferry_op ops[] = {
        FERRY_OP_SUM, FERRY_OP_SUM_ROWS, FERRY_OP_MEAN, FERRY_OP_CUMSUM, FERRY_OP_ARGMAX, FERRY_OP_ARGSORT,
        FERRY_OP_TOP_K, FERRY_OP_NORM, FERRY_OP_RMS_NORM, FERRY_OP_L2_NORM, FERRY_OP_CONCAT, FERRY_OP_REPEAT,
        FERRY_OP_PAD, FERRY_OP_FILL, FERRY_OP_ARANGE, FERRY_OP_TRI, FERRY_OP_DIAG_MASK_INF, FERRY_OP_SOFT_MAX,
        FERRY_OP_ROPE,
    };
    const enum ferry_op op = ops[rand_below(sizeof ops / sizeof ops[0])];
    int64_t ne[4] = { rand_below(9), 1 + rand_below(4), 1 + rand_below(3), 1 + rand_below(2) };
    if (rand_below(2)) ne[0] *= 2; /* even head sizes for ROPE */
    if (op == FERRY_OP_ARGMAX && rand_below(4)) ne[2] = ne[3] = 1;
    if ((op == FERRY_OP_TRI || op == FERRY_OP_DIAG_MASK_INF) && rand_below(4)) ne[1] = ne[0];
    enum ferry_type t = op == FERRY_OP_ROPE && rand_below(2) ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
    if ((op == FERRY_OP_CONCAT || op == FERRY_OP_REPEAT || op == FERRY_OP_FILL) && rand_below(3) == 0)
        t = FERRY_TYPE_F16;
    struct ferry_tensor *a = op == FERRY_OP_ARANGE ? NULL : random_source(t, ne);
    struct ferry_tensor *b = NULL, *c = NULL;
    int64_t out[4] = { ne[0], ne[1], ne[2], ne[3] };
    enum ferry_type out_type = t;
    int32_t P[16] = { 0 };
    switch (op) {
    case FERRY_OP_SUM: out[0] = out[1] = out[2] = out[3] = 1; break;
    case FERRY_OP_SUM_ROWS: case FERRY_OP_MEAN: out[0] = 1; break;
    case FERRY_OP_ARGMAX: out[0] = ne[1]; out[1] = out[2] = out[3] = 1; out_type = FERRY_TYPE_I32; break;
    case FERRY_OP_ARGSORT: P[0] = (int32_t)rand_below(3); out_type = FERRY_TYPE_I32; break;
    case FERRY_OP_TOP_K: out[0] = rand_below(ne[0] + 2); out_type = FERRY_TYPE_I32; break;
    case FERRY_OP_NORM: case FERRY_OP_RMS_NORM: case FERRY_OP_L2_NORM: {
        float eps = rand_below(5) == 0 ? -1.0f : 1e-5f;
        memcpy(&P[0], &eps, 4);
        break;
    }
    case FERRY_OP_CONCAT: {
        P[0] = (int32_t)rand_below(6) - 1;
        int64_t nb2[4] = { ne[0], ne[1], ne[2], ne[3] };
        if (P[0] >= 0 && P[0] < 4) {
            nb2[P[0]] = rand_below(4);
            out[P[0]] += nb2[P[0]];
        }
        b = random_source(t, nb2);
        break;
    }
    case FERRY_OP_REPEAT:
        for (int d = 0; d < 4; d++) out[d] = ne[d] * (1 + rand_below(3)) + (rand_below(8) == 0);
        break;
    case FERRY_OP_PAD:
        for (int k = 0; k < 8; k++) P[k] = (int32_t)rand_below(4) - (rand_below(10) == 0);
        P[8] = (int32_t)rand_below(3) == 2 ? (int32_t)rand_below(3) : 0;
        for (int d = 0; d < 4; d++) out[d] = ne[d] + P[2 * d] + P[2 * d + 1];
        break;
    case FERRY_OP_ARANGE:
        out[0] = rand_below(10);
        out[1] = rand_below(6) == 0 ? 2 : 1;
        out[2] = out[3] = 1;
        ferry_param_set_f32(NULL == a ? &(struct ferry_tensor){ 0 } : a, 0, 0.0f);
        break;
    case FERRY_OP_TRI: case FERRY_OP_DIAG_MASK_INF:
        P[0] = (int32_t)rand_below(6) - 1;
        break;
    case FERRY_OP_SOFT_MAX: {
        if (rand_below(2)) {
            int64_t mne[4] = { ne[0], ne[1] + rand_below(3), 1 + rand_below(2), 1 };
            b = random_source(rand_below(2) ? FERRY_TYPE_F16 : FERRY_TYPE_F32, mne);
        }
        if (rand_below(3) == 0) c = random_source(FERRY_TYPE_F32, (int64_t[4]){ ne[2] + rand_below(2), 1, 1, 1 });
        float scale = 0.5f, bias = rand_below(3) == 0 ? 8.0f : 0.0f;
        memcpy(&P[0], &scale, 4);
        memcpy(&P[1], &bias, 4);
        break;
    }
    case FERRY_OP_ROPE: {
        static const int modes[] = { 0, 2, 8, 24, 40, 1, 3 };
        P[2] = modes[rand_below(7)];
        P[1] = P[2] == 24 && rand_below(2) ? (int32_t)(ne[0] / 2) : (int32_t)rand_below(ne[0] + 3);
        if (rand_below(4)) P[1] &= ~1;
        P[15] = rand_below(4) == 0 ? (int32_t)rand_below(5) : 0;
        if (P[1] + P[15] > ne[0]) P[15] = 0;
        for (int k = 11; k < 15; k++) P[k] = (int32_t)rand_below(3) - (rand_below(10) == 0);
        const float fp[6] = { 10000.0f, 0.5f, rand_below(2) ? 1.0f : 0.0f, 1.0f, 32.0f, 1.0f };
        memcpy(&P[5], fp, sizeof fp);
        P[4] = 4096;
        int64_t npos[4] = { ((P[2] & 8) ? 4 : 1) * ne[2], 1, 1, 1 };
        b = random_source(FERRY_TYPE_I32, npos);
        if (rand_below(3) == 0) c = random_source(FERRY_TYPE_F32, (int64_t[4]){ ne[0] / 2, 1, 1, 1 });
        break;
    }
    default: break; /* CUMSUM, FILL: the source's shape and type */
    }
    if (rand_below(16) == 0) out[rand_below(4)] += 1; /* a wrong output shape now and then */
    for (int d = 0; d < 4; d++) out[d] = out[d] < 0 ? 0 : out[d]; /* negative pads */
    out_layout = (enum out_layout)rand_below(3);
    struct ferry_tensor *node = new_node(op, out_type, out[0], out[1], out[2], out[3], a, b, c);
    out_layout = OUT_CONTIGUOUS;
    memcpy(node->op_params, P, sizeof P);
    if (op == FERRY_OP_ARANGE) {
        ferry_param_set_f32(node, 0, -1.0f);
        ferry_param_set_f32(node, 2, 0.25f);
    }
    struct ferry_error err = { 0 };
    if (ferry_engine_check_node(node, &err) != FERRY_OK) return;
    int rc = ferry_engine_compute(engines[rand_below(3)], &node, 1, &err);
    CHECK(rc == FERRY_OK, "random %s accepted but failed: %s", ferry_op_name(op), err.msg);
}

static void test_random_nodes(void) {
    for (int i = 0; i < 10000; i++) {
        random_node();
        test_free_kept();
    }
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 3; i++) engines[i] = ferry_engine_create(engine_threads[i]);
    if (!CHECK(engines[0] && engines[1] && engines[2], "engines")) return test_summary();
    test_reductions();
    test_argmax();
    test_sorting();
    test_norms();
    test_rowvec_exp();
    test_soft_max();
    test_rope();
    test_concat();
    test_repeat();
    test_pad();
    test_generators();
    test_empty();
    test_hostile_rope();
    test_hostile_other();
    test_random_nodes();
    for (int i = 0; i < 3; i++) ferry_engine_destroy(engines[i]);
    return test_summary();
}
