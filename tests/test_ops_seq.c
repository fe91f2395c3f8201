/* The sequence-model family and the remaining small ops (misc.c, ssm.c,
 * wkv.c, delta.c, dsv4.c; docs/ops.md B.26) against straightforward
 * references written here from the spec: plain loops in double. Every case
 * also runs with 1, 2 and 4 threads, which must agree bit for bit, and
 * hostile nodes (bad shapes, types, op_params, views reaching outside the
 * output) must be refused by check(). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ferry/types.h"
#include "testutil.h"

static uint64_t rng = 0x5e9f00d5ull;
static struct ferry_engine *engines[3]; /* 1, 2 and 4 threads */
static const int engine_threads[3] = { 1, 2, 4 };

/* ---- tensors ---- */

static struct ferry_tensor *tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return test_keep(test_tensor_new(type, ne0, ne1, ne2, ne3));
}

static struct ferry_tensor *rand_tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3,
                                        float lo, float hi) {
    struct ferry_tensor *t = tensor(type, ne0, ne1, ne2, ne3);
    test_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

/* A view of base with its own shape and strides, offs bytes in. */
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

/* ggml_permute(base, a0..a3). */

/* An output node, its memory full of NaN bytes so that a skipped element shows. */
static struct ferry_tensor *node_of(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                    int64_t ne3, struct ferry_tensor *s0, struct ferry_tensor *s1) {
    struct ferry_tensor *t = tensor(type, ne0, ne1, ne2, ne3);
    memset(t->data, 0xff, ferry_nbytes(t));
    t->op = op;
    t->flags = FERRY_FLAG_COMPUTE;
    t->src[0] = s0;
    t->src[1] = s1;
    return t;
}

static void set_i32(struct ferry_tensor *t, int64_t i, int32_t v) { memcpy((char *)t->data + i * 4, &v, 4); }

/* The values of a tensor in logical order, as doubles (malloc'd). */
static double *values(const struct ferry_tensor *t) {
    const int64_t n = ferry_nelements(t);
    double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
    if (t->type == FERRY_TYPE_I32) {
        for (int64_t i3 = 0, k = 0; i3 < t->ne[3]; i3++)
            for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
                for (int64_t i1 = 0; i1 < t->ne[1]; i1++)
                    for (int64_t i0 = 0; i0 < t->ne[0]; i0++, k++) {
                        int32_t v;
                        memcpy(&v, (char *)t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3], 4);
                        d[k] = v;
                    }
        return d;
    }
    float *f = test_tensor_to_f32(t);
    for (int64_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    return d;
}

/* ---- running ---- */

/* Runs node with 4, 2 and 1 threads and checks that the output bytes agree.
 * pre, when given, restores the node's initial memory before each run (for
 * in-place nodes and ops that leave parts of the output untouched). */
static bool run_threads(struct ferry_tensor *node, const void *pre, const char *what) {
    const size_t n = ferry_nbytes(node);
    char *first = malloc(n ? n : 1);
    bool ok = true;
    for (int k = 2; k >= 0 && ok; k--) {
        if (pre) memcpy(node->data, pre, n);
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

/* NMSE of the node's output against ref (logical order) below bound. */
static bool close_to(const double *ref, const struct ferry_tensor *out, double bound, const char *what) {
    const int64_t n = ferry_nelements(out);
    float *r = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) r[i] = (float)ref[i];
    float *o = test_tensor_to_f32(out);
    const double e = test_nmse(r, o, n);
    free(r);
    free(o);
    return CHECK(e <= bound, "%s: NMSE %g above %g", what, e, bound);
}

static bool equal_to(const double *ref, const struct ferry_tensor *out, const char *what) {
    double *o = values(out);
    int64_t bad = -1;
    for (int64_t i = 0; i < ferry_nelements(out) && bad < 0; i++)
        if (o[i] != ref[i]) bad = i;
    bool ok = CHECK(bad < 0, "%s: element %lld is %g, expected %g", what, (long long)bad, bad >= 0 ? o[bad] : 0.0,
                    bad >= 0 ? ref[bad] : 0.0);
    free(o);
    return ok;
}

/* Flat logical index of (i0..i3) in shape ne. */
static int64_t fl(const int64_t *ne, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3));
}

static double softplus(double x) { return x > 20.0 ? x : log(1.0 + exp(x)); }

/* ---- SIN, COS, LOG ---- */

static void test_sin_cos_log(void) {
    static const enum ferry_type pairs[][2] = {
        { FERRY_TYPE_F32, FERRY_TYPE_F32 },   { FERRY_TYPE_F16, FERRY_TYPE_F16 }, { FERRY_TYPE_BF16, FERRY_TYPE_BF16 },
        { FERRY_TYPE_F16, FERRY_TYPE_F32 },   { FERRY_TYPE_BF16, FERRY_TYPE_F32 },
    };
    static const enum ferry_op ops[] = { FERRY_OP_SIN, FERRY_OP_COS, FERRY_OP_LOG };
    for (int o = 0; o < 3; o++)
        for (int p = 0; p < 5; p++) {
            const float lo = ops[o] == FERRY_OP_LOG ? 0.01f : -10.0f;
            struct ferry_tensor *a = rand_tensor(pairs[p][0], 300, 3, 2, 2, lo, 10.0f);
            struct ferry_tensor *y = node_of(ops[o], pairs[p][1], 300, 3, 2, 2, a, NULL);
            char what[64];
            snprintf(what, sizeof what, "%s %s->%s", ferry_op_name(ops[o]), ferry_type_name(pairs[p][0]),
                     ferry_type_name(pairs[p][1]));
            if (!run_threads(y, NULL, what)) continue;
            double *x = values(a);
            for (int64_t i = 0; i < ferry_nelements(a); i++)
                x[i] = ops[o] == FERRY_OP_SIN ? sin(x[i]) : ops[o] == FERRY_OP_COS ? cos(x[i]) : log(x[i]);
            const enum ferry_type d = pairs[p][1];
            close_to(x, y, d == FERRY_TYPE_F32 ? 1e-12 : d == FERRY_TYPE_F16 ? 1e-6 : 1e-4, what);
            free(x);
        }
    /* in place, on a view with padded rows */
    struct ferry_tensor *base = rand_tensor(FERRY_TYPE_F32, 40, 6, 1, 1, -3.0f, 3.0f);
    struct ferry_tensor *a = view(base, 30, 6, 1, 1, base->nb[1], base->nb[1] * 6, base->nb[1] * 6, 0);
    double *x = values(a);
    struct ferry_tensor *y = node_of(FERRY_OP_COS, FERRY_TYPE_F32, 30, 6, 1, 1, a, NULL);
    free(y->data);
    y->data = a->data;
    memcpy(y->nb, a->nb, sizeof y->nb);
    struct ferry_error err = { 0 };
    CHECK(ferry_engine_compute(engines[1], &y, 1, &err) == FERRY_OK, "COS in place: %s", err.msg);
    for (int64_t i = 0; i < 180; i++) x[i] = cos(x[i]);
    close_to(x, y, 1e-12, "COS in place");
    y->data = NULL; /* owned by base */
    y->view_src = base;
    free(x);
    /* hostile */
    struct ferry_tensor *q = rand_tensor(FERRY_TYPE_F32, 8, 2, 1, 1, 1, 2);
    test_rejected(node_of(FERRY_OP_SIN, FERRY_TYPE_F16, 8, 2, 1, 1, q, NULL), "SIN F32->F16");
    test_rejected(node_of(FERRY_OP_LOG, FERRY_TYPE_F32, 8, 3, 1, 1, q, NULL), "LOG shape");
    test_rejected(node_of(FERRY_OP_LOG, FERRY_TYPE_I32, 8, 2, 1, 1, tensor(FERRY_TYPE_I32, 8, 2, 1, 1), NULL), "LOG I32");
    test_free_kept();
}

/* ---- ADD1 ---- */

static void check_add1(enum ferry_type ta, enum ferry_type tb) {
    char what[64];
    snprintf(what, sizeof what, "ADD1 %s + %s", ferry_type_name(ta), ferry_type_name(tb));
    struct ferry_tensor *a = rand_tensor(ta, 64, 3, 2, 2, -4.0f, 4.0f), *b = tensor(tb, 1, 1, 1, 1);
    const float s = 1.75f;
    ferry_type_traits(tb)->from_float(&s, b->data, 1);
    struct ferry_tensor *y = node_of(FERRY_OP_ADD1, ta, 64, 3, 2, 2, a, b);
    if (!run_threads(y, NULL, what)) return;
    double *x = values(a);
    const int64_t n = ferry_nelements(a);
    if (ferry_type_is_quantized(ta)) {
        /* each row dequantized, added to in f32 and quantized again */
        const struct ferry_type_traits *tr = ferry_type_traits(ta);
        float row[64];
        char q[64 * 4];
        for (int64_t r = 0; r < n / 64; r++) {
            for (int i = 0; i < 64; i++) row[i] = (float)x[r * 64 + i] + s;
            tr->from_float(row, q, 64);
            tr->to_float(q, row, 64);
            for (int i = 0; i < 64; i++) x[r * 64 + i] = row[i];
        }
        equal_to(x, y, what);
    } else {
        for (int64_t i = 0; i < n; i++) x[i] += s;
        close_to(x, y, ta == FERRY_TYPE_F32 ? 1e-14 : ta == FERRY_TYPE_F16 ? 1e-6 : 1e-4, what);
    }
    free(x);
}

static void test_add1(void) {
    check_add1(FERRY_TYPE_F32, FERRY_TYPE_F32);
    check_add1(FERRY_TYPE_F16, FERRY_TYPE_F16);
    check_add1(FERRY_TYPE_F16, FERRY_TYPE_F32);
    check_add1(FERRY_TYPE_BF16, FERRY_TYPE_BF16);
    check_add1(FERRY_TYPE_BF16, FERRY_TYPE_F32);
    check_add1(FERRY_TYPE_Q8_0, FERRY_TYPE_F32);
    check_add1(FERRY_TYPE_Q4_0, FERRY_TYPE_F32);
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 8, 2, 1, 1, 0, 1);
    test_rejected(node_of(FERRY_OP_ADD1, FERRY_TYPE_F32, 8, 2, 1, 1, a, tensor(FERRY_TYPE_F32, 2, 1, 1, 1)),
             "ADD1 non-scalar src1");
    test_rejected(node_of(FERRY_OP_ADD1, FERRY_TYPE_F32, 8, 2, 1, 1, a, tensor(FERRY_TYPE_F16, 1, 1, 1, 1)),
             "ADD1 F32 + F16");
    test_rejected(node_of(FERRY_OP_ADD1, FERRY_TYPE_F16, 8, 2, 1, 1, a, tensor(FERRY_TYPE_F32, 1, 1, 1, 1)),
             "ADD1 output type");
    test_rejected(node_of(FERRY_OP_ADD1, FERRY_TYPE_F32, 8, 1, 1, 1, a, tensor(FERRY_TYPE_F32, 1, 1, 1, 1)),
             "ADD1 output shape");
    test_free_kept();
}

/* ---- ACC, SET ---- */

static void set_view_params(struct ferry_tensor *y, int32_t nb1, int32_t nb2, int32_t nb3, int32_t offs,
                            int32_t inplace) {
    const int32_t p[5] = { nb1, nb2, nb3, offs, inplace };
    memcpy(y->op_params, p, sizeof p);
}

/* ACC / SET of b into a view (strides P, byte offset) of a copy of a. */
static void check_acc_set(enum ferry_op op, enum ferry_type type, struct ferry_tensor *b, int32_t nb1, int32_t nb2,
                          int32_t nb3, int32_t offs, bool inplace, const char *what) {
    struct ferry_tensor *a = tensor(type, 10, 6, 3, 2);
    const int64_t n = ferry_nelements(a);
    for (int64_t i = 0; i < n; i++) {
        if (type == FERRY_TYPE_I32) set_i32(a, i, (int32_t)(i * 7 - 300));
        else ((float *)a->data)[i] = test_rand_uniform(&rng, -1, 1);
    }
    double *ref = values(a), *bv = values(b);
    const double *av = values(a);
    struct ferry_tensor *y = node_of(op, type, 10, 6, 3, 2, a, b);
    set_view_params(y, nb1, nb2, nb3, offs, inplace);
    char *init = malloc(ferry_nbytes(a));
    memcpy(init, a->data, ferry_nbytes(a));
    if (inplace) {
        free(y->data);
        y->data = a->data;
        y->view_src = a;
    }
    const int64_t es = 4, st[4] = { es, nb1, nb2, nb3 };
    for (int64_t i3 = 0, k = 0; i3 < b->ne[3]; i3++) /* logical order: the last write wins */
        for (int64_t i2 = 0; i2 < b->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < b->ne[1]; i1++)
                for (int64_t i0 = 0; i0 < b->ne[0]; i0++, k++) {
                    const int64_t e = (offs + i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3]) / es;
                    ref[e] = op == FERRY_OP_ACC ? (double)((float)av[e] + (float)bv[k]) : bv[k];
                }
    /* in place, the source is the output: restore it before each run */
    if (run_threads(y, inplace ? init : NULL, what)) equal_to(ref, y, what);
    if (inplace) y->data = NULL;
    free(ref);
    free(bv);
    free((void *)av);
    free(init);
}

static void test_acc_set(void) {
    const int32_t r1 = 40, r2 = 240, r3 = 720; /* a's own strides */
    for (int o = 0; o < 2; o++) {
        const enum ferry_op op = o ? FERRY_OP_SET : FERRY_OP_ACC;
        for (int ty = 0; ty < (o ? 2 : 1); ty++) {
            const enum ferry_type type = ty ? FERRY_TYPE_I32 : FERRY_TYPE_F32;
            struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, 4, 3, 2, 2, -1, 1);
            if (type == FERRY_TYPE_I32)
                for (int i = 0; i < 48; i++) set_i32(b, i, i * 3 - 20);
            if (type == FERRY_TYPE_I32) b->type = FERRY_TYPE_I32;
            check_acc_set(op, type, b, r1, r2, r3, 2 * r1 + 8, false, "ACC/SET window");
            check_acc_set(op, type, b, r1, r2, r3, 2 * r1 + 8, true, "ACC/SET window in place");
            /* b a strided view; the view strides differ from a's */
            struct ferry_tensor *bb = rand_tensor(FERRY_TYPE_F32, 7, 4, 3, 2, -1, 1);
            if (type == FERRY_TYPE_I32) bb->type = FERRY_TYPE_I32;
            struct ferry_tensor *bv = view(bb, 3, 3, 2, 2, bb->nb[1], bb->nb[2], bb->nb[3], bb->nb[1] + 4);
            check_acc_set(op, type, bv, 20, r2, r3 + 24, 12, false, "ACC/SET strided view");
            /* negative strides that stay inside */
            check_acc_set(op, type, b, -r1, r2, r3, 3 * r1 + 4, false, "ACC/SET negative stride");
            /* rows that overlap: one thread, logical order */
            check_acc_set(op, type, b, 8, r2, r3, 0, false, "ACC/SET overlapping view");
            /* empty src1: a plain copy */
            check_acc_set(op, type, tensor(type, 0, 3, 1, 1), r1, r2, r3, 1 << 30, false, "ACC/SET empty");
            test_free_kept();
        }
    }
    /* hostile views and params */
    static const struct { int32_t nb1, nb2, nb3, offs, inplace; const char *what; } bad[] = {
        { 40, 240, 720, 1440, 0, "offset past the end" },
        { 40, 240, 720, -4, 0, "negative offset" },
        { 40, 240, 720, 1440 - 1056 + 2, 0, "last element half outside" },
        { 40, 240, 2000, 0, 0, "stride past the end" },
        { -40, 240, 720, 0, 0, "negative stride below the start" },
        { INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, 0, "huge strides" },
        { 40, 240, 720, 0, 2, "in-place flag 2" },
    };
    for (int o = 0; o < 2; o++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct ferry_tensor *a = tensor(FERRY_TYPE_F32, 10, 6, 3, 2), *b = tensor(FERRY_TYPE_F32, 4, 3, 2, 2);
            struct ferry_tensor *y = node_of(o ? FERRY_OP_SET : FERRY_OP_ACC, FERRY_TYPE_F32, 10, 6, 3, 2, a, b);
            set_view_params(y, bad[i].nb1, bad[i].nb2, bad[i].nb3, bad[i].offs, bad[i].inplace);
            test_rejected(y, bad[i].what);
        }
    /* the last byte of the view at the last byte of the output */
    for (int32_t offs = 1436; offs <= 1439; offs++) {
        struct ferry_tensor *a1 = tensor(FERRY_TYPE_F32, 10, 6, 3, 2), *b1 = tensor(FERRY_TYPE_F32, 1, 1, 1, 1);
        struct ferry_tensor *y = node_of(FERRY_OP_SET, FERRY_TYPE_F32, 10, 6, 3, 2, a1, b1);
        set_view_params(y, 40, 240, 720, offs, 0);
        struct ferry_error err = { 0 };
        const int rc = ferry_engine_check_node(y, &err);
        CHECK(offs == 1436 ? rc == FERRY_OK : rc == FERRY_ERR_INVALID, "SET at byte %d: rc %d", (int)offs, rc);
    }
    struct ferry_tensor *a = tensor(FERRY_TYPE_I32, 10, 6, 1, 1), *b = tensor(FERRY_TYPE_I32, 2, 2, 1, 1);
    test_rejected(node_of(FERRY_OP_ACC, FERRY_TYPE_I32, 10, 6, 1, 1, a, b), "ACC I32");
    struct ferry_tensor *h = tensor(FERRY_TYPE_F16, 2, 2, 1, 1), *f = tensor(FERRY_TYPE_F32, 10, 6, 1, 1);
    test_rejected(node_of(FERRY_OP_SET, FERRY_TYPE_F32, 10, 6, 1, 1, f, h), "SET F16 src1");
    test_rejected(node_of(FERRY_OP_SET, FERRY_TYPE_F32, 10, 6, 1, 1, test_permute(f, 1, 0, 2, 3), b), "SET permuted src0");
    test_free_kept();
}

/* ---- DIAG, DIAG_MASK_ZERO ---- */

static void test_diag(void) {
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 7, 1, 3, 2, -1, 1);
    struct ferry_tensor *y = node_of(FERRY_OP_DIAG, FERRY_TYPE_F32, 7, 7, 3, 2, a, NULL);
    if (run_threads(y, NULL, "DIAG")) {
        double *x = values(a), *ref = calloc(7 * 7 * 6, sizeof *ref);
        const int64_t ne[4] = { 7, 7, 3, 2 };
        for (int64_t i3 = 0; i3 < 2; i3++)
            for (int64_t i2 = 0; i2 < 3; i2++)
                for (int64_t i = 0; i < 7; i++) ref[fl(ne, i, i, i2, i3)] = x[i + 7 * (i2 + 3 * i3)];
        equal_to(ref, y, "DIAG");
        free(x);
        free(ref);
    }
    test_rejected(node_of(FERRY_OP_DIAG, FERRY_TYPE_F32, 7, 7, 3, 2, rand_tensor(FERRY_TYPE_F32, 7, 2, 3, 2, 0, 1), NULL),
             "DIAG ne1 2");
    test_rejected(node_of(FERRY_OP_DIAG, FERRY_TYPE_F32, 7, 6, 3, 2, a, NULL), "DIAG output shape");

    struct ferry_tensor *b = rand_tensor(FERRY_TYPE_F32, 6, 5, 3, 2, -1, 1);
    for (int32_t n_past = 0; n_past < 8; n_past += 3) {
        struct ferry_tensor *z = node_of(FERRY_OP_DIAG_MASK_ZERO, FERRY_TYPE_F32, 6, 5, 3, 2, b, NULL);
        z->op_params[0] = n_past;
        if (!run_threads(z, NULL, "DIAG_MASK_ZERO")) continue;
        double *ref = values(b);
        const int64_t ne[4] = { 6, 5, 3, 2 };
        for (int64_t i3 = 0; i3 < 2; i3++)
            for (int64_t i2 = 0; i2 < 3; i2++)
                for (int64_t i1 = 0; i1 < 5; i1++)
                    for (int64_t i0 = 0; i0 < 6; i0++)
                        if (i0 > n_past + i1) ref[fl(ne, i0, i1, i2, i3)] = 0.0;
        equal_to(ref, z, "DIAG_MASK_ZERO");
        free(ref);
    }
    struct ferry_tensor *z = node_of(FERRY_OP_DIAG_MASK_ZERO, FERRY_TYPE_F32, 6, 5, 3, 2, b, NULL);
    z->op_params[0] = -1;
    test_rejected(z, "DIAG_MASK_ZERO n_past -1");
    test_free_kept();
}

/* ---- GROUP_NORM ---- */

static void check_group_norm(struct ferry_tensor *a, int32_t groups, float eps, const char *what) {
    const int64_t *ne = a->ne;
    struct ferry_tensor *y = node_of(FERRY_OP_GROUP_NORM, FERRY_TYPE_F32, ne[0], ne[1], ne[2], ne[3], a, NULL);
    y->op_params[0] = groups;
    memcpy(&y->op_params[1], &eps, 4);
    if (!run_threads(y, NULL, what)) return;
    double *x = values(a), *ref = values(a);
    const int64_t per = (ne[2] + groups - 1) / groups;
    for (int64_t i3 = 0; i3 < ne[3]; i3++)
        for (int64_t c0 = 0; c0 < ne[2]; c0 += per) {
            const int64_t c1 = c0 + per < ne[2] ? c0 + per : ne[2];
            double sum = 0, sq = 0, cnt = (double)(ne[0] * ne[1] * (c1 - c0));
            for (int64_t c = c0; c < c1; c++)
                for (int64_t i = 0; i < ne[0] * ne[1]; i++) sum += x[fl(ne, i, 0, c, i3)];
            const double mean = sum / cnt;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t i = 0; i < ne[0] * ne[1]; i++) sq += pow(x[fl(ne, i, 0, c, i3)] - mean, 2);
            const double sc = 1.0 / sqrt(sq / cnt + eps);
            for (int64_t c = c0; c < c1; c++)
                for (int64_t i = 0; i < ne[0] * ne[1]; i++) ref[fl(ne, i, 0, c, i3)] = (x[fl(ne, i, 0, c, i3)] - mean) * sc;
        }
    close_to(ref, y, 1e-10, what);
    free(x);
    free(ref);
}

static void test_group_norm(void) {
    check_group_norm(rand_tensor(FERRY_TYPE_F32, 5, 4, 10, 2, -2, 3), 3, 1e-6f, "GROUP_NORM 3 groups");
    check_group_norm(rand_tensor(FERRY_TYPE_F32, 5, 4, 10, 1, -2, 3), 7, 1e-5f, "GROUP_NORM empty groups");
    check_group_norm(rand_tensor(FERRY_TYPE_F32, 9, 9, 32, 1, -1, 1), 32, 1e-6f, "GROUP_NORM one channel each");
    check_group_norm(test_permute(rand_tensor(FERRY_TYPE_F32, 6, 4, 8, 1, -1, 1), 1, 0, 2, 3), 2, 1e-6f,
                     "GROUP_NORM permuted");
    struct ferry_tensor *a = rand_tensor(FERRY_TYPE_F32, 5, 4, 10, 1, 0, 1);
    for (int32_t g = -3; g <= 0; g += 3) {
        struct ferry_tensor *y = node_of(FERRY_OP_GROUP_NORM, FERRY_TYPE_F32, 5, 4, 10, 1, a, NULL);
        y->op_params[0] = g;
        test_rejected(y, "GROUP_NORM n_groups <= 0");
    }
    test_free_kept();
}

/* ---- TIMESTEP_EMBEDDING ---- */

static void test_timestep_embedding(void) {
    for (int32_t dim = 8; dim <= 9; dim++) {
        struct ferry_tensor *t = rand_tensor(FERRY_TYPE_F32, 3, 1, 1, 1, 0, 1000);
        struct ferry_tensor *y = node_of(FERRY_OP_TIMESTEP_EMBEDDING, FERRY_TYPE_F32, dim, 3, 1, 1, t, NULL);
        y->op_params[0] = dim;
        y->op_params[1] = 10000;
        if (!run_threads(y, NULL, "TIMESTEP_EMBEDDING")) continue;
        double *ts = values(t), *ref = calloc((size_t)dim * 3, sizeof *ref);
        const int half = dim / 2;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < half; j++) {
                const double arg = ts[i] * exp(-log(10000.0) * j / half);
                ref[i * dim + j] = cos(arg);
                ref[i * dim + j + half] = sin(arg);
            }
        close_to(ref, y, 1e-6, "TIMESTEP_EMBEDDING");
        free(ts);
        free(ref);
    }
    struct ferry_tensor *t = rand_tensor(FERRY_TYPE_F32, 3, 1, 1, 1, 0, 1);
    struct ferry_tensor *y = node_of(FERRY_OP_TIMESTEP_EMBEDDING, FERRY_TYPE_F32, 8, 3, 1, 1, t, NULL);
    y->op_params[0] = 10;
    test_rejected(y, "TIMESTEP_EMBEDDING dim vs ne0");
    y = node_of(FERRY_OP_TIMESTEP_EMBEDDING, FERRY_TYPE_F32, 8, 3, 1, 1, t, NULL);
    y->op_params[0] = -8;
    test_rejected(y, "TIMESTEP_EMBEDDING negative dim");
    test_free_kept();
}

/* ---- SOLVE_TRI ---- */

static void test_solve_tri(void) {
    const int64_t n = 9, k = 4, b2 = 2, b3 = 3;
    struct ferry_tensor *A = tensor(FERRY_TYPE_F32, n, n, b2, b3);
    float *ad = A->data;
    for (int64_t m = 0; m < b2 * b3; m++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t t = 0; t < n; t++)
                ad[(m * n + i) * n + t] = t < i ? test_rand_uniform(&rng, -0.5f, 0.5f)
                                         : t == i ? test_rand_uniform(&rng, 1.0f, 2.0f) : 99.0f;
    struct ferry_tensor *B = rand_tensor(FERRY_TYPE_F32, k, n, b2, b3, -1, 1);
    struct ferry_tensor *X = node_of(FERRY_OP_SOLVE_TRI, FERRY_TYPE_F32, k, n, b2, b3, A, B);
    if (run_threads(X, NULL, "SOLVE_TRI")) {
        double *a = values(A), *b = values(B), *x = calloc((size_t)(k * n * b2 * b3), sizeof *x);
        for (int64_t m = 0; m < b2 * b3; m++)
            for (int64_t c = 0; c < k; c++)
                for (int64_t i = 0; i < n; i++) {
                    double s = b[(m * n + i) * k + c];
                    for (int64_t t = 0; t < i; t++) s -= a[(m * n + i) * n + t] * x[(m * n + t) * k + c];
                    x[(m * n + i) * k + c] = s / a[(m * n + i) * n + i];
                }
        close_to(x, X, 1e-10, "SOLVE_TRI");
        free(a);
        free(b);
        free(x);
    }
    test_rejected(node_of(FERRY_OP_SOLVE_TRI, FERRY_TYPE_F32, k, n, b2, b3, tensor(FERRY_TYPE_F32, n, n + 1, b2, b3), B),
             "SOLVE_TRI not square");
    test_rejected(node_of(FERRY_OP_SOLVE_TRI, FERRY_TYPE_F32, k, n, b2, b3, tensor(FERRY_TYPE_F32, n, n, b2, 1), B),
             "SOLVE_TRI batch");
    test_rejected(node_of(FERRY_OP_SOLVE_TRI, FERRY_TYPE_F32, k, n, b2, b3, tensor(FERRY_TYPE_F16, n, n, b2, b3), B),
             "SOLVE_TRI F16");
    test_free_kept();
}

/* ---- SSM_CONV ---- */

static void test_ssm_conv(void) {
    const int64_t d_conv = 4, d_inner = 6, n_t = 5, n_s = 3;
    struct ferry_tensor *sx = rand_tensor(FERRY_TYPE_F32, d_conv - 1 + n_t, d_inner, n_s, 1, -1, 1);
    struct ferry_tensor *c = rand_tensor(FERRY_TYPE_F32, d_conv, d_inner, 1, 1, -1, 1);
    struct ferry_tensor *y = node_of(FERRY_OP_SSM_CONV, FERRY_TYPE_F32, d_inner, n_t, n_s, 1, sx, c);
    if (run_threads(y, NULL, "SSM_CONV")) {
        double *s = values(sx), *w = values(c), *ref = calloc((size_t)(d_inner * n_t * n_s), sizeof *ref);
        for (int64_t q = 0; q < n_s; q++)
            for (int64_t t = 0; t < n_t; t++)
                for (int64_t i = 0; i < d_inner; i++)
                    for (int64_t j = 0; j < d_conv; j++)
                        ref[(q * n_t + t) * d_inner + i] += s[(q * d_inner + i) * (d_conv - 1 + n_t) + t + j] * w[i * d_conv + j];
        close_to(ref, y, 1e-12, "SSM_CONV");
        free(s);
        free(w);
        free(ref);
    }
    test_rejected(node_of(FERRY_OP_SSM_CONV, FERRY_TYPE_F32, d_inner, n_t + 1, n_s, 1, sx, c), "SSM_CONV n_t");
    test_rejected(node_of(FERRY_OP_SSM_CONV, FERRY_TYPE_F32, d_inner, n_t, n_s, 1, sx, tensor(FERRY_TYPE_F32, 4, 5, 1, 1)),
             "SSM_CONV d_inner");
    test_rejected(node_of(FERRY_OP_SSM_CONV, FERRY_TYPE_F32, d_inner, 0, n_s, 1, tensor(FERRY_TYPE_F32, 2, d_inner, n_s, 1), c),
             "SSM_CONV short sx");
    test_free_kept();
}

/* ---- SSM_SCAN ---- */

struct scan_case { int64_t d_state, head_dim, n_head, n_group, n_tok, n_seqs; int32_t K; bool mamba1; };

static struct ferry_tensor *scan_node(const struct scan_case *c, struct ferry_tensor **src) {
    const int64_t N = c->d_state, D = c->head_dim, H = c->n_head, G = c->n_group, T = c->n_tok, Q = c->n_seqs;
    src[0] = rand_tensor(FERRY_TYPE_F32, N, D, H, Q + 1, -1, 1);
    src[1] = rand_tensor(FERRY_TYPE_F32, D, H, T, Q, -1, 1);
    src[2] = rand_tensor(FERRY_TYPE_F32, H, T, Q, 1, -3, 3);
    src[3] = rand_tensor(FERRY_TYPE_F32, c->mamba1 ? N : 1, H, 1, 1, -1, -0.5f);
    src[4] = rand_tensor(FERRY_TYPE_F32, N, G, T, Q, -1, 1);
    src[5] = rand_tensor(FERRY_TYPE_F32, N, G, T, Q, -1, 1);
    src[6] = tensor(FERRY_TYPE_I32, Q, 1, 1, 1);
    for (int64_t q = 0; q < Q; q++) set_i32(src[6], q, (int32_t)((q * 2 + 1) % (Q + 1)));
    const int64_t n = D * H * T * Q + c->K * N * D * H * Q;
    struct ferry_tensor *y = node_of(FERRY_OP_SSM_SCAN, FERRY_TYPE_F32, n, 1, 1, 1, NULL, NULL);
    for (int i = 0; i < 7; i++) y->src[i] = src[i];
    y->op_params[0] = c->K;
    return y;
}

static void check_ssm_scan(const struct scan_case *c) {
    struct ferry_tensor *src[7];
    struct ferry_tensor *y = scan_node(c, src);
    char *init = malloc(ferry_nbytes(y));
    memcpy(init, y->data, ferry_nbytes(y));
    if (!run_threads(y, init, "SSM_SCAN")) {
        free(init);
        return;
    }
    const int64_t N = c->d_state, D = c->head_dim, H = c->n_head, T = c->n_tok, Q = c->n_seqs, per = N * D * H;
    double *s0 = values(src[0]), *x = values(src[1]), *dt = values(src[2]), *A = values(src[3]), *B = values(src[4]),
           *C = values(src[5]), *ids = values(src[6]);
    double *ref = values(y); /* NaN where nothing is written */
    double *st = malloc((size_t)per * sizeof *st);
    for (int64_t q = 0; q < Q; q++) {
        memcpy(st, s0 + (int64_t)ids[q] * per, (size_t)per * sizeof *st);
        for (int64_t t = 0; t < T; t++) {
            for (int64_t h = 0; h < H; h++) {
                const int64_t g = h / (H / c->n_group);
                const double d = softplus(dt[(q * T + t) * H + h]);
                for (int64_t i = 0; i < D; i++) {
                    const double xd = x[((q * T + t) * H + h) * D + i] * d;
                    double sum = 0;
                    for (int64_t k = 0; k < N; k++) {
                        const double a = c->mamba1 ? A[h * N + k] : A[h];
                        double *s = &st[(h * D + i) * N + k];
                        *s = *s * exp(d * a) + B[((q * T + t) * c->n_group + g) * N + k] * xd;
                        sum += *s * C[((q * T + t) * c->n_group + g) * N + k];
                    }
                    ref[((q * T + t) * H + h) * D + i] = sum;
                }
            }
            const int64_t slot = T - 1 - t;
            if (slot < c->K) memcpy(ref + D * H * T * Q + (slot * Q + q) * per, st, (size_t)per * sizeof *st);
        }
    }
    close_to(ref, y, 1e-10, "SSM_SCAN");
    double *o = values(y);
    if (c->K > T) CHECK(isnan(o[ferry_nelements(y) - 1]), "SSM_SCAN: a slot beyond the tokens was written");
    free(o);
    double *arrays[] = { s0, x, dt, A, B, C, ids, ref, st };
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
    free(init);
}

static void test_ssm_scan(void) {
    static const struct scan_case cases[] = {
        { 16, 1, 24, 1, 5, 2, 1, true },  /* Mamba-1 */
        { 8, 4, 6, 2, 7, 3, 1, false },   /* Mamba-2, groups */
        { 8, 4, 6, 3, 6, 2, 4, false },   /* snapshots */
        { 4, 2, 2, 1, 2, 1, 4, false },   /* more slots than tokens */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_ssm_scan(&cases[i]);
        test_free_kept();
    }
    struct ferry_tensor *src[7];
    const struct scan_case base = { 8, 4, 6, 2, 3, 2, 1, false };
    struct ferry_tensor *y = scan_node(&base, src);
    y->op_params[0] = 0;
    test_rejected(y, "SSM_SCAN K 0");
    const struct scan_case m1 = { 8, 1, 6, 2, 3, 2, 2, true };
    test_rejected(scan_node(&m1, src), "SSM_SCAN K 2 with per-state decay");
    y = scan_node(&base, src);
    y->ne[0] += 1;
    test_rejected(y, "SSM_SCAN output size");
    y = scan_node(&base, src);
    y->src[4] = y->src[5] = rand_tensor(FERRY_TYPE_F32, 8, 4, 3, 2, 0, 1);
    test_rejected(y, "SSM_SCAN n_head not a multiple of n_group");
    y = scan_node(&base, src);
    set_i32(src[6], 1, 3); /* s has 3 states */
    struct ferry_error err = { 0 };
    CHECK(ferry_engine_compute(engines[2], &y, 1, &err) == FERRY_ERR_INVALID, "SSM_SCAN: state id out of range ran");
    test_free_kept();
}

/* ---- RWKV_WKV6, RWKV_WKV7, GATED_LINEAR_ATTN ---- */

static void check_wkv(enum ferry_op op, int64_t S, int64_t H, int64_t T, int64_t Q) {
    const int n_tok = op == FERRY_OP_RWKV_WKV7 ? 6 : op == FERRY_OP_RWKV_WKV6 ? 5 : 4;
    struct ferry_tensor *y = node_of(op, FERRY_TYPE_F32, S * H, T + S * Q, 1, 1, NULL, NULL);
    double *in[7];
    for (int i = 0; i < n_tok; i++) {
        const bool tf = op == FERRY_OP_RWKV_WKV6 && i == 3;
        const float lo = (op == FERRY_OP_GATED_LINEAR_ATTN && i == 3) || (op == FERRY_OP_RWKV_WKV6 && i == 4) ||
                                 (op == FERRY_OP_RWKV_WKV7 && i == 1) ? 0.5f : -1.0f;
        y->src[i] = rand_tensor(FERRY_TYPE_F32, S, H, tf ? 1 : T, 1, lo, 1);
        in[i] = values(y->src[i]);
    }
    y->src[n_tok] = rand_tensor(FERRY_TYPE_F32, S * S * H, Q, 1, 1, -1, 1);
    in[n_tok] = values(y->src[n_tok]);
    const float scale = 0.37f;
    memcpy(y->op_params, &scale, 4);
    char what[48];
    snprintf(what, sizeof what, "%s", ferry_op_name(op));
    if (!run_threads(y, NULL, what)) return;
    double *ref = calloc((size_t)(S * H * (T + S * Q)), sizeof *ref), *st = ref + S * H * T;
    const int64_t per = T / Q;
    for (int64_t t = 0; t < T; t++) {
        const int64_t q = t / per;
        if (t % per == 0) memcpy(st + q * S * S * H, in[n_tok] + q * S * S * H, (size_t)(S * S * H) * sizeof *st);
        for (int64_t h = 0; h < H; h++) {
            double *M = st + q * S * S * H + h * S * S, *out = ref + t * S * H + h * S;
            const int64_t x = (t * H + h) * S;
            for (int64_t i = 0; i < S; i++) {
                if (op == FERRY_OP_RWKV_WKV6) {
                    const double *k = in[0] + x, *v = in[1] + x, *r = in[2] + x, *u = in[3] + h * S, *w = in[4] + x;
                    for (int64_t j = 0; j < S; j++) {
                        out[j] += r[i] * (u[i] * k[i] * v[j] + M[i * S + j]);
                        M[i * S + j] = M[i * S + j] * w[i] + k[i] * v[j];
                    }
                } else if (op == FERRY_OP_GATED_LINEAR_ATTN) {
                    const double *k = in[0] + x, *v = in[1] + x, *qq = in[2] + x, *g = in[3] + x;
                    for (int64_t j = 0; j < S; j++) {
                        M[i * S + j] = M[i * S + j] * g[i] + k[i] * v[j];
                        out[j] += M[i * S + j] * qq[i] * scale;
                    }
                } else {
                    const double *r = in[0] + x, *w = in[1] + x, *k = in[2] + x, *v = in[3] + x, *a = in[4] + x,
                                 *b = in[5] + x;
                    double sa = 0;
                    for (int64_t j = 0; j < S; j++) sa += a[j] * M[i * S + j];
                    for (int64_t j = 0; j < S; j++) {
                        M[i * S + j] = M[i * S + j] * w[j] + v[i] * k[j] + sa * b[j];
                        out[i] += M[i * S + j] * r[j];
                    }
                }
            }
        }
    }
    close_to(ref, y, 1e-10, what);
    free(ref);
    for (int i = 0; i <= n_tok; i++) free(in[i]);
}

static void test_wkv(void) {
    static const enum ferry_op ops[] = { FERRY_OP_RWKV_WKV6, FERRY_OP_RWKV_WKV7, FERRY_OP_GATED_LINEAR_ATTN };
    for (int o = 0; o < 3; o++) {
        check_wkv(ops[o], 4, 3, 6, 2);
        check_wkv(ops[o], 8, 2, 3, 1);
        check_wkv(ops[o], 5, 3, 8, 4);
        test_free_kept();
        /* hostile: tokens that do not split into the sequences, a state of
         * the wrong size, a permuted input */
        const int n_tok = ops[o] == FERRY_OP_RWKV_WKV7 ? 6 : ops[o] == FERRY_OP_RWKV_WKV6 ? 5 : 4;
        for (int bad = 0; bad < 3; bad++) {
            const int64_t S = 4, H = 2, T = 6, Q = bad == 0 ? 4 : 2;
            struct ferry_tensor *y = node_of(ops[o], FERRY_TYPE_F32, S * H, T + S * Q, 1, 1, NULL, NULL);
            for (int i = 0; i < n_tok; i++) y->src[i] = tensor(FERRY_TYPE_F32, S, H, T, 1);
            y->src[n_tok] = tensor(FERRY_TYPE_F32, S * S * H + (bad == 1), Q, 1, 1);
            if (bad == 2) y->src[2] = test_permute(tensor(FERRY_TYPE_F32, S, T, H, 1), 0, 2, 1, 3);
            test_rejected(y, "WKV hostile");
        }
        test_free_kept();
    }
}

/* ---- GATED_DELTA_NET ---- */

static void check_gdn(int64_t S, int64_t H, int64_t Hq, int64_t T, int64_t B, bool kda, int32_t K) {
    struct ferry_tensor *q = rand_tensor(FERRY_TYPE_F32, S, Hq, T, 1, -1, 1);
    struct ferry_tensor *k = rand_tensor(FERRY_TYPE_F32, S, Hq, T, 1, -1, 1);
    struct ferry_tensor *v = rand_tensor(FERRY_TYPE_F32, S, H, T, B, -1, 1);
    struct ferry_tensor *g = rand_tensor(FERRY_TYPE_F32, kda ? S : 1, H, T, B, -1, 0);
    struct ferry_tensor *be = rand_tensor(FERRY_TYPE_F32, 1, H, T, B, 0, 1);
    struct ferry_tensor *s0 = rand_tensor(FERRY_TYPE_F32, S, S, H, B, -1, 1);
    struct ferry_tensor *y = node_of(FERRY_OP_GATED_DELTA_NET, FERRY_TYPE_F32, S * H, T * B + K * S * B, 1, 1, q, k);
    y->src[2] = v;
    y->src[3] = g;
    y->src[4] = be;
    y->src[5] = s0;
    y->op_params[0] = K;
    char *init = malloc(ferry_nbytes(y));
    memcpy(init, y->data, ferry_nbytes(y));
    if (!run_threads(y, init, "GATED_DELTA_NET")) {
        free(init);
        return;
    }
    double *Q_ = values(q), *K_ = values(k), *V = values(v), *G = values(g), *Be = values(be), *S0 = values(s0);
    double *ref = values(y), *M = malloc((size_t)(S * S) * sizeof *M), *delta = malloc((size_t)S * sizeof *delta);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            memcpy(M, S0 + (b * H + h) * S * S, (size_t)(S * S) * sizeof *M);
            if (K == 1 && T == 0) memcpy(ref + S * H * T * B + (b * H + h) * S * S, M, (size_t)(S * S) * sizeof *M);
            for (int64_t t = 0; t < T; t++) {
                const double *qq = Q_ + (t * Hq + h % Hq) * S, *kk = K_ + (t * Hq + h % Hq) * S,
                             *vv = V + ((b * T + t) * H + h) * S, *gg = G + ((b * T + t) * H + h) * (kda ? S : 1);
                const double beta = Be[(b * T + t) * H + h];
                for (int64_t j = 0; j < S; j++)
                    for (int64_t i = 0; i < S; i++) M[j * S + i] *= exp(kda ? gg[i] : gg[0]);
                for (int64_t j = 0; j < S; j++) {
                    double d = 0;
                    for (int64_t i = 0; i < S; i++) d += M[j * S + i] * kk[i];
                    delta[j] = (vv[j] - d) * beta;
                }
                for (int64_t j = 0; j < S; j++)
                    for (int64_t i = 0; i < S; i++) M[j * S + i] += kk[i] * delta[j];
                for (int64_t j = 0; j < S; j++) {
                    double o = 0;
                    for (int64_t i = 0; i < S; i++) o += M[j * S + i] * qq[i];
                    ref[((b * T + t) * H + h) * S + j] = o / sqrt((double)S);
                }
                const int64_t slot = T - 1 - t;
                if (slot < K)
                    memcpy(ref + S * H * T * B + slot * S * S * H * B + (b * H + h) * S * S, M,
                           (size_t)(S * S) * sizeof *M);
            }
        }
    close_to(ref, y, 1e-10, "GATED_DELTA_NET");
    double *arrays[] = { Q_, K_, V, G, Be, S0, ref, M, delta };
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
    free(init);
}

static void test_gated_delta_net(void) {
    check_gdn(4, 2, 1, 3, 2, false, 1);
    check_gdn(4, 4, 2, 5, 1, true, 1);
    check_gdn(8, 2, 2, 4, 2, false, 3);
    check_gdn(4, 2, 2, 2, 1, true, 5); /* more slots than tokens: the rest untouched */
    test_free_kept();
    struct ferry_tensor *t[6];
    for (int bad = 0; bad < 4; bad++) {
        t[0] = tensor(FERRY_TYPE_F32, 4, 2, 3, 1);
        t[1] = tensor(FERRY_TYPE_F32, 4, 2, 3, 1);
        t[2] = tensor(FERRY_TYPE_F32, 4, 2, 3, 2);
        t[3] = tensor(FERRY_TYPE_F32, bad == 1 ? 3 : 1, 2, 3, 2);
        t[4] = tensor(FERRY_TYPE_F32, bad == 2 ? 2 : 1, 2, 3, 2);
        t[5] = tensor(FERRY_TYPE_F32, 4, 4, 2, bad == 3 ? 1 : 2);
        struct ferry_tensor *y = node_of(FERRY_OP_GATED_DELTA_NET, FERRY_TYPE_F32, 8, 6 + 8, 1, 1, t[0], t[1]);
        for (int i = 2; i < 6; i++) y->src[i] = t[i];
        y->op_params[0] = bad == 0 ? 0 : 1;
        test_rejected(y, "GATED_DELTA_NET hostile");
    }
    test_free_kept();
}

/* ---- LIGHTNING_INDEXER ---- */

static void check_lightning(enum ferry_type tk, int64_t E, int64_t nh, int64_t kv, int64_t nt, int64_t ns, int64_t nm) {
    struct ferry_tensor *q = rand_tensor(FERRY_TYPE_F32, E, nh, nt, ns, -1, 1);
    struct ferry_tensor *k = rand_tensor(tk, E, 1, kv, ns, -1, 1);
    struct ferry_tensor *w = rand_tensor(FERRY_TYPE_F32, nh, nt, 1, ns, -1, 1);
    struct ferry_tensor *m = rand_tensor(FERRY_TYPE_F16, kv, nt, 1, nm, -2, 0);
    ((uint16_t *)m->data)[1] = 0xfc00; /* -inf */
    struct ferry_tensor *y = node_of(FERRY_OP_LIGHTNING_INDEXER, FERRY_TYPE_F32, kv, nt, 1, ns, q, k);
    y->src[2] = w;
    y->src[3] = m;
    if (!run_threads(y, NULL, "LIGHTNING_INDEXER")) return;
    double *Q_ = values(q), *K_ = values(k), *W = values(w), *Mk = values(m), *ref = values(y);
    for (int64_t s = 0; s < ns; s++)
        for (int64_t t = 0; t < nt; t++)
            for (int64_t c = 0; c < kv; c++) {
                double score = 0;
                for (int64_t h = 0; h < nh; h++) {
                    double d = 0;
                    for (int64_t e = 0; e < E; e++) d += Q_[((s * nt + t) * nh + h) * E + e] * K_[(s * kv + c) * E + e];
                    score += (d > 0 ? d : 0) * W[(s * nt + t) * nh + h];
                }
                ref[(s * nt + t) * kv + c] = score + Mk[((s % nm) * nt + t) * kv + c];
            }
    close_to(ref, y, 1e-10, "LIGHTNING_INDEXER");
    double *arrays[] = { Q_, K_, W, Mk, ref };
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
}

static void test_lightning_indexer(void) {
    check_lightning(FERRY_TYPE_F32, 16, 3, 5, 4, 2, 1);
    check_lightning(FERRY_TYPE_F16, 32, 4, 7, 3, 2, 2);
    check_lightning(FERRY_TYPE_Q8_0, 64, 2, 9, 2, 1, 1);
    test_free_kept();
    struct ferry_tensor *q = tensor(FERRY_TYPE_F32, 8, 2, 3, 2), *k = tensor(FERRY_TYPE_F16, 8, 1, 5, 2);
    struct ferry_tensor *w = tensor(FERRY_TYPE_F32, 2, 3, 1, 2), *m = tensor(FERRY_TYPE_F16, 5, 3, 1, 2);
    struct ferry_tensor *y = node_of(FERRY_OP_LIGHTNING_INDEXER, FERRY_TYPE_F32, 5, 3, 1, 2, q, k);
    y->src[2] = w;
    y->src[3] = tensor(FERRY_TYPE_F32, 5, 3, 1, 2);
    test_rejected(y, "LIGHTNING_INDEXER F32 mask");
    y = node_of(FERRY_OP_LIGHTNING_INDEXER, FERRY_TYPE_F32, 5, 3, 1, 2, q, tensor(FERRY_TYPE_F16, 8, 1, 6, 2));
    y->src[2] = w;
    y->src[3] = m;
    test_rejected(y, "LIGHTNING_INDEXER n_kv");
    y = node_of(FERRY_OP_LIGHTNING_INDEXER, FERRY_TYPE_F32, 5, 3, 1, 2, q, k);
    y->src[2] = w;
    y->src[3] = tensor(FERRY_TYPE_F16, 5, 3, 1, 3);
    test_rejected(y, "LIGHTNING_INDEXER mask streams");
    test_free_kept();
}

/* ---- DSV4_HC_COMB, DSV4_HC_PRE, DSV4_HC_POST ---- */

static void test_dsv4(void) {
    const int64_t nt = 5, E = 7, hc = 4;
    struct ferry_tensor *mixes = rand_tensor(FERRY_TYPE_F32, 24, nt, 1, 1, -2, 2);
    struct ferry_tensor *scale = rand_tensor(FERRY_TYPE_F32, 3, 1, 1, 1, 0.5f, 1.5f);
    struct ferry_tensor *base = rand_tensor(FERRY_TYPE_F32, 24, 1, 1, 1, -1, 1);
    const float eps = 1e-6f;
    for (int32_t n_iter = 1; n_iter <= 4; n_iter += 3) {
        struct ferry_tensor *y = node_of(FERRY_OP_DSV4_HC_COMB, FERRY_TYPE_F32, hc, hc, nt, 1, mixes, scale);
        y->src[2] = base;
        memcpy(&y->op_params[0], &eps, 4);
        y->op_params[1] = n_iter;
        if (!run_threads(y, NULL, "DSV4_HC_COMB")) continue;
        double *mx = values(mixes), *sc = values(scale), *bs = values(base), *ref = values(y);
        for (int64_t t = 0; t < nt; t++) {
            double c[16];
            for (int s = 0; s < 4; s++) {
                double mxv = -INFINITY, sum = 0;
                for (int d = 0; d < 4; d++) {
                    c[d + 4 * s] = mx[t * 24 + 8 + d + 4 * s] * sc[2] + bs[8 + d + 4 * s];
                    mxv = fmax(mxv, c[d + 4 * s]);
                }
                for (int d = 0; d < 4; d++) sum += (c[d + 4 * s] = exp(c[d + 4 * s] - mxv));
                for (int d = 0; d < 4; d++) c[d + 4 * s] = c[d + 4 * s] / sum + eps;
            }
            for (int it = 0; it < 2 * n_iter - 1; it++) {
                const bool cols = it % 2 == 0;
                for (int a = 0; a < 4; a++) {
                    double sum = eps;
                    for (int b = 0; b < 4; b++) sum += c[cols ? a + 4 * b : b + 4 * a];
                    for (int b = 0; b < 4; b++) c[cols ? a + 4 * b : b + 4 * a] /= sum;
                }
            }
            for (int i = 0; i < 16; i++) ref[t * 16 + i] = c[i];
        }
        close_to(ref, y, 1e-10, "DSV4_HC_COMB");
        free(mx);
        free(sc);
        free(bs);
        free(ref);
    }
    struct ferry_tensor *y = node_of(FERRY_OP_DSV4_HC_COMB, FERRY_TYPE_F32, hc, hc, nt, 1, mixes, scale);
    y->src[2] = base;
    y->op_params[1] = 0;
    test_rejected(y, "DSV4_HC_COMB n_iter 0");
    y = node_of(FERRY_OP_DSV4_HC_COMB, FERRY_TYPE_F32, hc, hc, nt, 1, mixes, scale);
    y->src[2] = base;
    y->op_params[1] = INT32_MAX; /* would hold the engine for hours */
    test_rejected(y, "DSV4_HC_COMB n_iter INT32_MAX");
    y = node_of(FERRY_OP_DSV4_HC_COMB, FERRY_TYPE_F32, hc, hc, nt, 1, rand_tensor(FERRY_TYPE_F32, 23, nt, 1, 1, 0, 1),
                scale);
    y->src[2] = base;
    y->op_params[1] = 1;
    test_rejected(y, "DSV4_HC_COMB mixes 23");

    /* PRE on a permuted x */
    struct ferry_tensor *xb = rand_tensor(FERRY_TYPE_F32, E, nt, hc, 1, -1, 1);
    struct ferry_tensor *x = test_permute(xb, 0, 2, 1, 3), *w = rand_tensor(FERRY_TYPE_F32, hc, nt, 1, 1, -1, 1);
    y = node_of(FERRY_OP_DSV4_HC_PRE, FERRY_TYPE_F32, E, nt, 1, 1, x, w);
    if (run_threads(y, NULL, "DSV4_HC_PRE")) {
        double *xv = values(x), *wv = values(w), *ref = calloc((size_t)(E * nt), sizeof *ref);
        for (int64_t t = 0; t < nt; t++)
            for (int64_t i = 0; i < E; i++)
                for (int64_t h = 0; h < hc; h++) ref[t * E + i] += xv[(t * hc + h) * E + i] * wv[t * hc + h];
        close_to(ref, y, 1e-12, "DSV4_HC_PRE");
        free(xv);
        free(wv);
        free(ref);
    }
    test_rejected(node_of(FERRY_OP_DSV4_HC_PRE, FERRY_TYPE_F32, E, nt, 1, 1, x, tensor(FERRY_TYPE_F32, hc + 1, nt, 1, 1)),
             "DSV4_HC_PRE weights");

    struct ferry_tensor *xp = rand_tensor(FERRY_TYPE_F32, E, nt, 1, 1, -1, 1);
    struct ferry_tensor *res = rand_tensor(FERRY_TYPE_F32, E, hc, nt, 1, -1, 1);
    struct ferry_tensor *post = rand_tensor(FERRY_TYPE_F32, hc, nt, 1, 1, -1, 1);
    struct ferry_tensor *comb = rand_tensor(FERRY_TYPE_F32, hc, hc, nt, 1, -1, 1);
    y = node_of(FERRY_OP_DSV4_HC_POST, FERRY_TYPE_F32, E, hc, nt, 1, xp, res);
    y->src[2] = post;
    y->src[3] = comb;
    if (run_threads(y, NULL, "DSV4_HC_POST")) {
        double *xv = values(xp), *rv = values(res), *pv = values(post), *cv = values(comb), *ref = values(y);
        for (int64_t t = 0; t < nt; t++)
            for (int64_t d = 0; d < hc; d++)
                for (int64_t i = 0; i < E; i++) {
                    double s = xv[t * E + i] * pv[t * hc + d];
                    for (int64_t j = 0; j < hc; j++) s += rv[(t * hc + j) * E + i] * cv[(t * hc + j) * hc + d];
                    ref[(t * hc + d) * E + i] = s;
                }
        close_to(ref, y, 1e-12, "DSV4_HC_POST");
        double *arrays[] = { xv, rv, pv, cv, ref };
        for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
    }
    y = node_of(FERRY_OP_DSV4_HC_POST, FERRY_TYPE_F32, E, hc, nt, 1, xp, res);
    y->src[2] = post;
    y->src[3] = tensor(FERRY_TYPE_F32, hc, hc - 1, nt, 1);
    test_rejected(y, "DSV4_HC_POST comb");
    test_free_kept();
}

/* ---- random nodes: exactly sized buffers, near-valid shapes and params ----
 * Whatever check() accepts must run without touching memory outside the
 * tensors (the sanitizer builds tell); runtime data errors are allowed. */

static int64_t below(int64_t n) { return (int64_t)(test_rand_u64(&rng) % (uint64_t)n); }

/* v, or now and then something else: the way a hostile client would lie */
static int64_t pd(int64_t v) { return below(10) ? v : below(6); }
static int32_t pp(int32_t v) {
    static const int32_t odd[] = { -1, 0, 1, 3, 7, 64, INT32_MAX, INT32_MIN, -4096 };
    return below(6) ? v : odd[below(sizeof odd / sizeof odd[0])];
}

static struct ferry_tensor *fz(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    struct ferry_tensor *t = calloc(1, sizeof *t);
    const int64_t ne[4] = { pd(ne0), pd(ne1), pd(ne2), pd(ne3) };
    ferry_tensor_init(t, type, 4, ne, NULL);
    const size_t n = ferry_nbytes(t);
    t->data = malloc(n ? n : 1);
    if (ferry_type_is_quantized(type) || ne[0] % ferry_blck_size(type) != 0) {
        memset(t->data, 0, n); /* zero blocks: finite scales */
    } else if (type == FERRY_TYPE_I32) {
        for (size_t i = 0; i < n / 4; i++) set_i32(t, (int64_t)i, (int32_t)below(7) - 2);
    } else {
        test_tensor_fill_uniform(t, &rng, -1.0f, 1.0f);
    }
    if (below(8) == 0 && !ferry_type_is_quantized(type)) { /* transposed */
        int64_t e = t->ne[0]; t->ne[0] = t->ne[1]; t->ne[1] = e;
        size_t b = t->nb[0]; t->nb[0] = t->nb[1]; t->nb[1] = b;
    }
    return test_keep(t);
}

static enum ferry_type pick(const enum ferry_type *types, int n) { return types[below(n)]; }

static void random_node(void) {
    static const enum ferry_op ops[] = {
        FERRY_OP_SIN, FERRY_OP_COS, FERRY_OP_LOG, FERRY_OP_ADD1, FERRY_OP_ACC, FERRY_OP_SET, FERRY_OP_DIAG,
        FERRY_OP_DIAG_MASK_ZERO, FERRY_OP_GROUP_NORM, FERRY_OP_TIMESTEP_EMBEDDING, FERRY_OP_SOLVE_TRI,
        FERRY_OP_SSM_CONV, FERRY_OP_SSM_SCAN, FERRY_OP_RWKV_WKV6, FERRY_OP_RWKV_WKV7, FERRY_OP_GATED_LINEAR_ATTN,
        FERRY_OP_GATED_DELTA_NET, FERRY_OP_LIGHTNING_INDEXER, FERRY_OP_DSV4_HC_COMB, FERRY_OP_DSV4_HC_PRE,
        FERRY_OP_DSV4_HC_POST,
    };
    static const enum ferry_type floats[] = { FERRY_TYPE_F32, FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    const enum ferry_op op = ops[below(sizeof ops / sizeof ops[0])];
    const int64_t a = 1 + below(5), b = 1 + below(4), c = 1 + below(3), d = 1 + below(2);
    struct ferry_tensor *src[8] = { 0 };
    int64_t out[4] = { a, b, c, d };
    enum ferry_type ot = FERRY_TYPE_F32;
    int32_t P[16] = { 0 };
    switch (op) {
    case FERRY_OP_SIN: case FERRY_OP_COS: case FERRY_OP_LOG:
        src[0] = fz(pick(floats, 4), a, b, c, d);
        ot = below(2) ? src[0]->type : FERRY_TYPE_F32;
        break;
    case FERRY_OP_ADD1: {
        const bool q = below(3) == 0;
        src[0] = fz(q ? FERRY_TYPE_Q8_0 : pick(floats, 4), q ? 32 * a : a, b, c, d);
        src[1] = fz(below(3) ? FERRY_TYPE_F32 : pick(floats, 4), 1, 1, 1, 1);
        ot = src[0]->type;
        break;
    }
    case FERRY_OP_ACC: case FERRY_OP_SET: {
        ot = op == FERRY_OP_SET && below(2) ? FERRY_TYPE_I32 : FERRY_TYPE_F32;
        src[0] = fz(ot, 2 * a, 2 * b, c, d);
        src[1] = fz(ot, a, b, c, d);
        out[0] = 2 * a; out[1] = 2 * b;
        const int32_t nb1 = (int32_t)(8 * a), nb2 = nb1 * (int32_t)(2 * b), nb3 = nb2 * (int32_t)c;
        P[0] = pp(nb1); P[1] = pp(nb2); P[2] = pp(nb3);
        P[3] = pp((int32_t)(4 * below(2 * a * b + 2))); P[4] = pp((int32_t)below(2));
        break;
    }
    case FERRY_OP_DIAG:
        src[0] = fz(FERRY_TYPE_F32, a, 1, c, d);
        out[1] = a;
        break;
    case FERRY_OP_DIAG_MASK_ZERO: case FERRY_OP_GROUP_NORM:
        src[0] = fz(FERRY_TYPE_F32, a, b, c * 3, d);
        out[2] = c * 3;
        P[0] = pp((int32_t)below(5));
        break;
    case FERRY_OP_TIMESTEP_EMBEDDING:
        src[0] = fz(FERRY_TYPE_F32, a, 1, 1, 1);
        out[0] = 2 * b + below(2); out[1] = a; out[2] = out[3] = 1;
        P[0] = pp((int32_t)out[0]); P[1] = pp(10000);
        break;
    case FERRY_OP_SOLVE_TRI:
        src[0] = fz(FERRY_TYPE_F32, b, b, c, d);
        src[1] = fz(FERRY_TYPE_F32, a, b, c, d);
        break;
    case FERRY_OP_SSM_CONV:
        src[0] = fz(FERRY_TYPE_F32, c + a - 1, b, d, 1);
        src[1] = fz(FERRY_TYPE_F32, c, b, 1, 1);
        out[0] = b; out[1] = a; out[2] = d; out[3] = 1;
        break;
    case FERRY_OP_SSM_SCAN: {
        const int64_t N = a, D = b, H = 2 * c, G = c, T = 1 + below(3), Q = d;
        const int32_t K = (int32_t)(1 + below(3));
        src[0] = fz(FERRY_TYPE_F32, N, D, H, Q + 1);
        src[1] = fz(FERRY_TYPE_F32, D, H, T, Q);
        src[2] = fz(FERRY_TYPE_F32, H, T, Q, 1);
        src[3] = fz(FERRY_TYPE_F32, below(2) ? 1 : N, H, 1, 1);
        src[4] = fz(FERRY_TYPE_F32, N, G, T, Q);
        src[5] = fz(FERRY_TYPE_F32, N, G, T, Q);
        src[6] = fz(FERRY_TYPE_I32, Q, 1, 1, 1);
        out[0] = D * H * T * Q + K * N * D * H * Q; out[1] = out[2] = out[3] = 1;
        P[0] = pp(K);
        break;
    }
    case FERRY_OP_RWKV_WKV6: case FERRY_OP_RWKV_WKV7: case FERRY_OP_GATED_LINEAR_ATTN: {
        const int n = op == FERRY_OP_RWKV_WKV7 ? 6 : op == FERRY_OP_RWKV_WKV6 ? 5 : 4;
        const int64_t S = a, H = b, Q = d, T = Q * c;
        for (int i = 0; i < n; i++) src[i] = fz(FERRY_TYPE_F32, S, H, T, 1);
        src[n] = fz(FERRY_TYPE_F32, S * S * H, Q, 1, 1);
        out[0] = S * H; out[1] = T + S * Q; out[2] = out[3] = 1;
        break;
    }
    case FERRY_OP_GATED_DELTA_NET: {
        const int64_t S = a, H = 2 * b, T = c, B = d;
        const int32_t K = (int32_t)(1 + below(3));
        src[0] = fz(FERRY_TYPE_F32, S, b, T, 1);
        src[1] = fz(FERRY_TYPE_F32, S, b, T, 1);
        src[2] = fz(FERRY_TYPE_F32, S, H, T, B);
        src[3] = fz(FERRY_TYPE_F32, below(2) ? 1 : S, H, T, B);
        src[4] = fz(FERRY_TYPE_F32, 1, H, T, B);
        src[5] = fz(FERRY_TYPE_F32, S, S, H, B);
        out[0] = S * H; out[1] = T * B + K * S * B; out[2] = out[3] = 1;
        P[0] = pp(K);
        break;
    }
    case FERRY_OP_LIGHTNING_INDEXER: {
        const bool q8 = below(3) == 0;
        const int64_t E = q8 ? 32 * a : a;
        src[0] = fz(FERRY_TYPE_F32, E, b, c, d);
        src[1] = fz(q8 ? FERRY_TYPE_Q8_0 : pick(floats, 4), E, 1, a + 1, d);
        src[2] = fz(FERRY_TYPE_F32, b, c, 1, d);
        src[3] = fz(FERRY_TYPE_F16, a + 1, c, 1, d);
        out[0] = a + 1; out[1] = c; out[2] = 1; out[3] = d;
        break;
    }
    case FERRY_OP_DSV4_HC_COMB:
        src[0] = fz(FERRY_TYPE_F32, 24, a, 1, 1);
        src[1] = fz(FERRY_TYPE_F32, 3, 1, 1, 1);
        src[2] = fz(FERRY_TYPE_F32, 24, 1, 1, 1);
        out[0] = out[1] = 4; out[2] = a; out[3] = 1;
        P[1] = (int32_t)below(4) - 1; /* the cost grows with n_iter: keep it small */
        break;
    case FERRY_OP_DSV4_HC_PRE:
        src[0] = fz(FERRY_TYPE_F32, a, b, c, 1);
        src[1] = fz(FERRY_TYPE_F32, b, c, 1, 1);
        out[1] = c; out[2] = out[3] = 1;
        break;
    default: /* DSV4_HC_POST */
        src[0] = fz(FERRY_TYPE_F32, a, c, 1, 1);
        src[1] = fz(FERRY_TYPE_F32, a, b, c, 1);
        src[2] = fz(FERRY_TYPE_F32, b, c, 1, 1);
        src[3] = fz(FERRY_TYPE_F32, b, b, c, 1);
        out[2] = c; out[3] = 1;
        break;
    }
    struct ferry_tensor *y = fz(below(12) ? ot : FERRY_TYPE_F16, out[0], out[1], out[2], out[3]);
    y->op = op;
    y->flags = FERRY_FLAG_COMPUTE;
    memcpy(y->src, src, sizeof src);
    memcpy(y->op_params, P, sizeof P);
    if ((op == FERRY_OP_ACC || op == FERRY_OP_SET) && below(4) == 0 && ferry_same_shape(y, src[0])) {
        free(y->data); /* in place: the node is src0's memory */
        y->data = src[0]->data;
        memcpy(y->nb, src[0]->nb, sizeof y->nb);
        y->view_src = src[0];
    }
    struct ferry_error err = { 0 };
    if (ferry_engine_check_node(y, &err) != FERRY_OK) return;
    const int rc = ferry_engine_compute(engines[below(3)], &y, 1, &err);
    CHECK(rc == FERRY_OK || rc == FERRY_ERR_INVALID, "%s: random node failed to run: %s", ferry_op_name(op), err.msg);
}

static void test_random_nodes(void) {
    for (int i = 0; i < 6000; i++) {
        random_node();
        test_free_kept();
    }
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 3; i++) engines[i] = ferry_engine_create(engine_threads[i]);
    if (!CHECK(engines[0] && engines[1] && engines[2], "engines")) return test_summary();
    test_sin_cos_log();
    test_add1();
    test_acc_set();
    test_diag();
    test_group_norm();
    test_timestep_embedding();
    test_solve_tri();
    test_ssm_conv();
    test_ssm_scan();
    test_wkv();
    test_gated_delta_net();
    test_lightning_indexer();
    test_dsv4();
    test_random_nodes();
    for (int i = 0; i < 3; i++) ferry_engine_destroy(engines[i]);
    return test_summary();
}
