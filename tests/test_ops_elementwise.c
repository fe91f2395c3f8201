/* Element-wise, copy and row ops (copy.c, rows.c, binary.c, unary.c,
 * glu.c) against naive references written here: double-precision loops
 * over logical coordinates that read every tensor through its own nb[].
 *
 * Covers permuted / strided views, modulo broadcasting, type conversions,
 * empty tensors, in-place nodes, bit-identical results for 1, 2 and 4
 * threads and for the portable and best SIMD levels, and hostile nodes:
 * every one must be refused by check or fail cleanly at run time.
 * FERRY_TEST_SEED=N in the environment runs it on other random data. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ops/simd.h"
#include "testutil.h"

static struct ferry_engine *engines[5];
static enum ferry_simd_level best_level;
static uint64_t rng = 0x5eed;

/* ---------------------------------------------------------------- helpers */

static int run_nth(struct ferry_tensor *node, int nth, struct ferry_error *err) {
    struct ferry_tensor *nodes[1] = { node };
    struct ferry_error local;
    return ferry_engine_compute(engines[nth], nodes, 1, err ? err : &local);
}

static int run(struct ferry_tensor *node) { return run_nth(node, 1, NULL); }

static struct ferry_tensor *tnew(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return test_tensor_new(type, ne0, ne1, ne2, ne3);
}

static struct ferry_tensor *tnew_rand(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                      int64_t ne3, float lo, float hi) {
    struct ferry_tensor *t = tnew(type, ne0, ne1, ne2, ne3);
    test_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

/* A node: its own output memory, op, sources, the COMPUTE flag. */
static struct ferry_tensor *node_new(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1,
                                     int64_t ne2, int64_t ne3, struct ferry_tensor *s0,
                                     struct ferry_tensor *s1, struct ferry_tensor *s2) {
    struct ferry_tensor *n = tnew(type, ne0, ne1, ne2, ne3);
    memset(n->data, 0xff, ferry_nbytes(n) ? ferry_nbytes(n) : 1); /* NaN: unwritten shows */
    n->op = op;
    n->flags = FERRY_FLAG_COMPUTE;
    n->src[0] = s0;
    n->src[1] = s1;
    n->src[2] = s2;
    return n;
}

/* A view sharing t's memory: ggml_permute semantics, ne'[a_k] = ne[k]. */
static struct ferry_tensor *permuted(const struct ferry_tensor *t, int a0, int a1, int a2, int a3) {
    struct ferry_tensor *v = malloc(sizeof *v);
    *v = *t;
    int ax[4] = { a0, a1, a2, a3 };
    for (int k = 0; k < 4; k++) {
        v->ne[ax[k]] = t->ne[k];
        v->nb[ax[k]] = t->nb[k];
    }
    v->op = FERRY_OP_PERMUTE;
    v->flags = 0;
    return v;
}

/* A view with explicit ne, nb and byte offset. */
static struct ferry_tensor *viewed(const struct ferry_tensor *t, int64_t ne0, int64_t ne1, int64_t ne2,
                                   int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offs) {
    struct ferry_tensor *v = malloc(sizeof *v);
    *v = *t;
    v->ne[0] = ne0; v->ne[1] = ne1; v->ne[2] = ne2; v->ne[3] = ne3;
    v->nb[1] = nb1; v->nb[2] = nb2; v->nb[3] = nb3;
    v->data = (char *)t->data + offs;
    v->op = FERRY_OP_VIEW;
    v->flags = 0;
    return v;
}

static void *elem(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
}

/* Element (i0..i3) of a plain-typed tensor as a double, read through nb. */
static double getd(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const void *p = elem(t, i0, i1, i2, i3);
    switch (t->type) {
    case FERRY_TYPE_F32: { float v; memcpy(&v, p, 4); return v; }
    case FERRY_TYPE_F16: { uint16_t v; memcpy(&v, p, 2); return ferry_fp16_to_fp32(v); }
    case FERRY_TYPE_BF16: { uint16_t v; memcpy(&v, p, 2); return ferry_bf16_to_fp32(v); }
    case FERRY_TYPE_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case FERRY_TYPE_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    default: return NAN;
    }
}

static void setd(struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3, double x) {
    void *p = elem(t, i0, i1, i2, i3);
    switch (t->type) {
    case FERRY_TYPE_F32: { float v = (float)x; memcpy(p, &v, 4); break; }
    case FERRY_TYPE_F16: { uint16_t v = ferry_fp32_to_fp16((float)x); memcpy(p, &v, 2); break; }
    case FERRY_TYPE_BF16: { uint16_t v = ferry_fp32_to_bf16((float)x); memcpy(p, &v, 2); break; }
    case FERRY_TYPE_I32: { int32_t v = (int32_t)x; memcpy(p, &v, 4); break; }
    case FERRY_TYPE_I64: { int64_t v = (int64_t)x; memcpy(p, &v, 8); break; }
    default: break;
    }
}

/* The value a float result takes once stored in type t. */
static double round_to(enum ferry_type t, double x) {
    float f = (float)x;
    if (t == FERRY_TYPE_F16) return ferry_fp16_to_fp32(ferry_fp32_to_fp16(f));
    if (t == FERRY_TYPE_BF16) return ferry_bf16_to_fp32(ferry_fp32_to_bf16(f));
    return f;
}

/* Flat index k -> coordinates in t's shape. */
static void coords(const struct ferry_tensor *t, int64_t k, int64_t c[4]) {
    for (int d = 0; d < 4; d++) {
        c[d] = k % t->ne[d];
        k /= t->ne[d];
    }
}

#define FOR_EACH(t, i0, i1, i2, i3)                       \
    for (int64_t i3 = 0; i3 < (t)->ne[3]; i3++)           \
        for (int64_t i2 = 0; i2 < (t)->ne[2]; i2++)       \
            for (int64_t i1 = 0; i1 < (t)->ne[1]; i1++)   \
                for (int64_t i0 = 0; i0 < (t)->ne[0]; i0++)

static bool same_bits(double a, double b) { return a == b || (isnan(a) && isnan(b)); }

/* Runs node with 1, 2 and 4 threads, at the portable and the best SIMD
 * level, from the same initial output contents, and checks that every run
 * writes the same bytes. Leaves the last result in place. */
static bool invariant_runs(struct ferry_tensor *node, const char *what) {
    size_t n = ferry_nbytes(node);
    unsigned char *init = malloc(n + 1), *first = malloc(n + 1);
    memcpy(init, node->data, n);
    bool ok = true, have_first = false;
    enum ferry_simd_level levels[2] = { FERRY_SIMD_SCALAR, best_level };
    for (int l = 0; l < 2; l++) {
        ferry_simd_set_level(levels[l]);
        for (int nth = 1; nth <= 4; nth *= 2) {
            memcpy(node->data, init, n);
            struct ferry_error err = { 0 };
            int rc = run_nth(node, nth, &err);
            ok = CHECK(rc == FERRY_OK, "%s: %d threads: %s", what, nth, err.msg) && ok;
            if (!have_first) {
                memcpy(first, node->data, n);
                have_first = true;
            } else {
                ok = CHECK(memcmp(first, node->data, n) == 0, "%s: %d threads at %s differ", what, nth,
                           ferry_simd_level_name(levels[l])) && ok;
            }
        }
    }
    ferry_simd_set_level(best_level);
    free(init);
    free(first);
    return ok;
}

static void expect_reject(struct ferry_tensor *node, int code, const char *what) {
    struct ferry_error err = { 0 };
    int rc = ferry_engine_check_node(node, &err);
    CHECK(rc == code, "%s: check gave %d (%s), want %d", what, rc, err.msg, code);
    rc = run_nth(node, 2, &err);
    CHECK(rc == code, "%s: compute gave %d, want %d", what, rc, code);
}

static void tfree(struct ferry_tensor *t) { test_tensor_free(t); }

/* --------------------------------------------------------------- copies */

/* Naive logical-order copy reference for plain types. */
static bool copy_matches(const struct ferry_tensor *src, const struct ferry_tensor *dst) {
    int64_t n = ferry_nelements(src);
    for (int64_t k = 0; k < n; k++) {
        int64_t s[4], d[4];
        coords(src, k, s);
        coords(dst, k, d);
        double x = getd(src, s[0], s[1], s[2], s[3]);
        double want = dst->type == FERRY_TYPE_I32 ? (double)(int32_t)x : round_to(dst->type, x);
        double got = getd(dst, d[0], d[1], d[2], d[3]);
        if (!same_bits(want, got)) {
            CHECK(false, "copy %s->%s: element %lld is %g, want %g", ferry_type_name(src->type),
                  ferry_type_name(dst->type), (long long)k, got, want);
            return false;
        }
    }
    return true;
}

static void test_copy_permuted(void) {
    const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    for (int a = 0; a < 3; a++) {
        for (int b = 0; b < 3; b++) {
            struct ferry_tensor *base = tnew_rand(types[a], 7, 5, 4, 3, -3, 3);
            struct ferry_tensor *src = permuted(base, 2, 0, 3, 1); /* view [5,3,7,4] */
            /* CONT into the view's shape, and CPY into a differently shaped tensor */
            struct ferry_tensor *cont = node_new(FERRY_OP_CONT, types[b], 5, 3, 7, 4, src, NULL, NULL);
            CHECK(run(cont) == FERRY_OK, "cont %d->%d runs", a, b);
            CHECK(copy_matches(src, cont), "cont %s -> %s", ferry_type_name(types[a]), ferry_type_name(types[b]));
            /* rows of 4 against source rows of 5: runs cross row ends on both sides */
            struct ferry_tensor *dst = tnew(types[b], 4, 15, 7, 1);
            struct ferry_tensor *cpy = node_new(FERRY_OP_CPY, types[b], 4, 15, 7, 1, src, dst, NULL);
            free(cpy->data);
            cpy->data = dst->data;
            CHECK(invariant_runs(cpy, "cpy permuted"), "cpy %d->%d invariant", a, b);
            CHECK(copy_matches(src, cpy), "cpy %s -> %s reshaped", ferry_type_name(types[a]),
                  ferry_type_name(types[b]));
            cpy->data = NULL;
            tfree(cpy);
            tfree(cont);
            tfree(dst);
            free(src);
            tfree(base);
        }
    }
}

/* Copy into a strided destination view (a KV-cache-like window). */
static void test_copy_into_view(void) {
    struct ferry_tensor *src = tnew_rand(FERRY_TYPE_F32, 16, 6, 1, 1, -2, 2);
    struct ferry_tensor *cache = tnew(FERRY_TYPE_F16, 40, 10, 1, 1);
    memset(cache->data, 0x11, ferry_nbytes(cache));
    /* the view: 16 elements of rows 3..8, starting at column 5 */
    struct ferry_tensor *view = viewed(cache, 16, 6, 1, 1, cache->nb[1], cache->nb[1] * 6,
                                       cache->nb[1] * 6, 3 * cache->nb[1] + 5 * 2);
    struct ferry_tensor node = *view;
    node.op = FERRY_OP_CPY;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = src;
    node.src[1] = view;
    CHECK(invariant_runs(&node, "cpy into view"), "cpy into view invariant");
    CHECK(copy_matches(src, &node), "cpy into view values");
    /* everything outside the window is untouched */
    int outside_ok = 1;
    for (int64_t r = 0; r < 10; r++)
        for (int64_t c = 0; c < 40; c++) {
            bool inside = r >= 3 && r < 9 && c >= 5 && c < 21;
            uint16_t v;
            memcpy(&v, elem(cache, c, r, 0, 0), 2);
            if (!inside && v != 0x1111) outside_ok = 0;
        }
    CHECK(outside_ok, "cpy into view leaves the rest of the cache alone");
    free(view);
    tfree(cache);
    tfree(src);
}

static void test_copy_int(void) {
    /* F32 -> I32 truncates; out of range and NaN give INT32_MIN as on x86 */
    const float vals[] = { -2.7f, 2.7f, -0.5f, 0.0f, 1e9f, -1e9f, 3e9f, -3e9f, NAN, INFINITY, 16777217.0f, -2147483648.0f };
    const int32_t want[] = { -2, 2, 0, 0, 1000000000, -1000000000, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, 16777216, INT32_MIN };
    const int n = (int)(sizeof vals / sizeof vals[0]);
    struct ferry_tensor *f = tnew(FERRY_TYPE_F32, n, 1, 1, 1);
    memcpy(f->data, vals, sizeof vals);
    struct ferry_tensor *i = node_new(FERRY_OP_CPY, FERRY_TYPE_I32, n, 1, 1, 1, f, NULL, NULL);
    i->src[1] = i; /* ggml_cast: the node is its own destination */
    CHECK(run(i) == FERRY_OK, "cast f32 -> i32 runs");
    CHECK(memcmp(i->data, want, sizeof want) == 0, "f32 -> i32 truncates like x86");
    /* I32 -> F32 rounds to nearest */
    const int32_t iv[] = { 16777217, -16777219, 2147483647, INT32_MIN, 5 };
    struct ferry_tensor *is = tnew(FERRY_TYPE_I32, 5, 1, 1, 1);
    memcpy(is->data, iv, sizeof iv);
    struct ferry_tensor *fo = node_new(FERRY_OP_DUP, FERRY_TYPE_F32, 5, 1, 1, 1, is, NULL, NULL);
    CHECK(run(fo) == FERRY_OK, "i32 -> f32 runs");
    bool ok = true;
    for (int k = 0; k < 5; k++) ok = ok && ((float *)fo->data)[k] == (float)iv[k];
    CHECK(ok, "i32 -> f32 rounds like C");
    tfree(fo);
    tfree(is);
    tfree(i);
    tfree(f);
}

/* Same-type copies are raw bytes for every type, walked in logical order. */
static void test_copy_raw_types(void) {
    const enum ferry_type types[] = { FERRY_TYPE_I8, FERRY_TYPE_I16, FERRY_TYPE_I64, FERRY_TYPE_F64,
                                      FERRY_TYPE_I32 };
    for (int t = 0; t < 5; t++) {
        struct ferry_tensor *base = tnew(types[t], 6, 5, 4, 1);
        size_t ts = ferry_type_size(types[t]), n = ferry_nbytes(base);
        for (size_t b = 0; b < n; b++) ((unsigned char *)base->data)[b] = (unsigned char)test_rand_u64(&rng);
        struct ferry_tensor *src = permuted(base, 1, 2, 0, 3); /* [4,6,5] */
        struct ferry_tensor *dst = node_new(FERRY_OP_CONT, types[t], 4, 6, 5, 1, src, NULL, NULL);
        CHECK(invariant_runs(dst, "raw cont"), "raw cont invariant");
        bool ok = true;
        FOR_EACH(dst, i0, i1, i2, i3) ok = ok && memcmp(elem(dst, i0, i1, i2, i3), elem(src, i0, i1, i2, i3), ts) == 0;
        CHECK(ok, "raw permuted copy of %s", ferry_type_name(types[t]));
        tfree(dst);
        free(src);
        tfree(base);
    }
    /* quantized: whole blocks in logical block order */
    struct ferry_tensor *q = tnew_rand(FERRY_TYPE_Q4_0, 64, 3, 5, 1, -1, 1);
    struct ferry_tensor *qv = permuted(q, 0, 2, 1, 3); /* [64,5,3] */
    struct ferry_tensor *qd = node_new(FERRY_OP_CONT, FERRY_TYPE_Q4_0, 64, 5, 3, 1, qv, NULL, NULL);
    CHECK(invariant_runs(qd, "q4_0 cont"), "q4_0 cont invariant");
    bool ok = true;
    for (int64_t i2 = 0; i2 < 3; i2++)
        for (int64_t i1 = 0; i1 < 5; i1++)
            ok = ok && memcmp(elem(qd, 0, i1, i2, 0), elem(qv, 0, i1, i2, 0), 36) == 0;
    CHECK(ok, "q4_0 permuted block copy");
    tfree(qd);
    free(qv);
    tfree(q);
}

static void test_copy_quant(void) {
    /* F16 rows with a row stride into a contiguous q8_0 / q4_1 node:
     * each row is quantized independently */
    const enum ferry_type qt[] = { FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_1, FERRY_TYPE_IQ4_NL };
    for (int t = 0; t < 3; t++) {
        struct ferry_tensor *base = tnew_rand(FERRY_TYPE_F16, 80, 6, 1, 1, -4, 4);
        struct ferry_tensor *src = viewed(base, 64, 3, 2, 1, base->nb[1], base->nb[1] * 3, base->nb[1] * 6,
                                          8 * 2);
        struct ferry_tensor *q = node_new(FERRY_OP_CPY, qt[t], 64, 6, 1, 1, src, NULL, NULL);
        q->src[1] = q;
        CHECK(invariant_runs(q, "quantizing cpy"), "quantizing cpy invariant");
        const struct ferry_type_traits *tr = ferry_type_traits(qt[t]);
        size_t rs = ferry_row_size(qt[t], 64);
        unsigned char *want = malloc(rs);
        float row[64];
        bool ok = true;
        for (int64_t r = 0; r < 6; r++) {
            for (int i = 0; i < 64; i++) row[i] = (float)getd(src, i, r % 3, r / 3, 0);
            tr->from_float(row, want, 64);
            ok = ok && memcmp(want, (char *)q->data + r * rs, rs) == 0;
        }
        CHECK(ok, "f16 -> %s rows quantized in logical order", ferry_type_name(qt[t]));
        free(want);
        tfree(q);
        free(src);
        tfree(base);
    }
    /* q4_0 -> F32 into a destination with strided rows (ne0 a block multiple) */
    struct ferry_tensor *q = tnew_rand(FERRY_TYPE_Q4_0, 128, 3, 1, 1, -1, 1);
    struct ferry_tensor *big = tnew(FERRY_TYPE_F32, 70, 8, 1, 1);
    struct ferry_tensor *dv = viewed(big, 64, 6, 1, 1, big->nb[1], big->nb[1] * 6, big->nb[1] * 6, 4);
    struct ferry_tensor node = *dv;
    node.op = FERRY_OP_CPY;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = q;
    node.src[1] = dv;
    CHECK(invariant_runs(&node, "dequantizing cpy"), "dequantizing cpy invariant");
    float *deq = test_tensor_to_f32(q);
    bool ok = true;
    for (int64_t k = 0; k < 384; k++) ok = ok && deq[k] == (float)getd(&node, k % 64, k / 64, 0, 0);
    CHECK(ok, "q4_0 -> f32 dequantized in logical order into a strided view");
    free(deq);
    free(dv);
    tfree(big);
    tfree(q);
}

static void test_copy_reject(void) {
    struct ferry_tensor *q = tnew_rand(FERRY_TYPE_Q4_0, 64, 2, 1, 1, -1, 1);
    struct ferry_tensor *f = tnew_rand(FERRY_TYPE_F32, 64, 2, 1, 1, -1, 1);
    struct ferry_tensor *h = tnew_rand(FERRY_TYPE_F16, 64, 2, 1, 1, -1, 1);
    struct ferry_tensor *n;
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_F16, 64, 2, 1, 1, q, NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "q4_0 -> f16");
    tfree(n);
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_I32, 64, 2, 1, 1, h, NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "f16 -> i32");
    tfree(n);
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_Q8_K, 256, 1, 1, 1, tnew_rand(FERRY_TYPE_F32, 256, 1, 1, 1, -1, 1), NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "f32 -> q8_K (no quantizer)");
    tfree(n->src[0]);
    tfree(n);
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_Q8_0, 64, 2, 1, 1, q, NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "q4_0 -> q8_0");
    tfree(n);
    n = node_new(FERRY_OP_CONT, FERRY_TYPE_F32, 64, 3, 1, 1, f, NULL, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "element count mismatch");
    tfree(n);
    n = node_new(FERRY_OP_CPY, FERRY_TYPE_F32, 64, 2, 1, 1, f, NULL, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "CPY without destination");
    n->src[1] = h; /* node claims f32 but src1 is f16 */
    expect_reject(n, FERRY_ERR_INVALID, "CPY node not a view of src1");
    tfree(n);
    /* quantized destination must be contiguous */
    struct ferry_tensor *qb = tnew(FERRY_TYPE_Q8_0, 64, 4, 1, 1);
    struct ferry_tensor *qv = viewed(qb, 64, 2, 1, 1, qb->nb[1] * 2, qb->nb[1] * 4, qb->nb[1] * 4, 0);
    struct ferry_tensor node = *qv;
    node.op = FERRY_OP_CPY;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = f;
    node.src[1] = qv;
    expect_reject(&node, FERRY_ERR_UNSUPPORTED, "strided quantized destination");
    free(qv);
    tfree(qb);
    /* a source claiming 2^64 elements through zero strides */
    struct ferry_tensor huge = *f;
    huge.ne[0] = (int64_t)1 << 32;
    huge.ne[1] = (int64_t)1 << 32;
    huge.nb[0] = 0;
    huge.nb[1] = 0;
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_F32, 4, 1, 1, 1, &huge, NULL, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "element count overflow");
    tfree(n);
    /* a quantized block narrower than its type: it would reach past the
     * byte extent the engine validated (ne0*nb0/blck) */
    struct ferry_tensor narrow = *q;
    narrow.ne[0] = 32;
    narrow.nb[0] = 1;
    n = node_new(FERRY_OP_DUP, FERRY_TYPE_F32, 32, 2, 1, 1, &narrow, NULL, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "quantized nb0 below the block size");
    n->type = FERRY_TYPE_Q4_0;
    n->nb[0] = 18;
    n->nb[1] = 18;
    n->nb[2] = n->nb[3] = 36;
    expect_reject(n, FERRY_ERR_INVALID, "raw quantized copy with nb0 below the block size");
    tfree(n);
    tfree(q);
    tfree(f);
    tfree(h);
}

/* -------------------------------------------------------------- GET_ROWS */

static void test_get_rows(void) {
    const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q8_0,
                                      FERRY_TYPE_I32 };
    for (int t = 0; t < 5; t++) {
        struct ferry_tensor *a = tnew_rand(types[t] == FERRY_TYPE_I32 ? FERRY_TYPE_F32 : types[t], 32, 9, 3, 2, -5, 5);
        if (types[t] == FERRY_TYPE_I32) { /* an integer table */
            a->type = FERRY_TYPE_I32;
            FOR_EACH(a, i0, i1, i2, i3) { int32_t v = (int32_t)(test_rand_u64(&rng) >> 33) - (1 << 29); memcpy(elem(a, i0, i1, i2, i3), &v, 4); }
        }
        /* indices [5,3,2] stored transposed, so they are read through nb */
        struct ferry_tensor *ib = tnew(FERRY_TYPE_I32, 3, 5, 2, 1);
        struct ferry_tensor *idx = permuted(ib, 1, 0, 2, 3);
        FOR_EACH(idx, i0, i1, i2, i3) setd(idx, i0, i1, i2, i3, (double)(test_rand_u64(&rng) % 9));
        enum ferry_type ot = types[t] == FERRY_TYPE_I32 ? FERRY_TYPE_I32 : FERRY_TYPE_F32;
        struct ferry_tensor *n = node_new(FERRY_OP_GET_ROWS, ot, 32, 5, 3, 2, a, idx, NULL);
        CHECK(invariant_runs(n, "get_rows"), "get_rows %s invariant", ferry_type_name(types[t]));
        float *table = test_tensor_to_f32(a);
        bool ok = true;
        FOR_EACH(n, i0, i1, i2, i3) {
            int64_t r = (int64_t)getd(idx, i1, i2, i3, 0);
            int64_t at = i0 + 32 * (r + 9 * (i2 + 3 * i3));
            if (types[t] == FERRY_TYPE_I32)
                ok = ok && memcmp(elem(n, i0, i1, i2, i3), elem(a, i0, r, i2, i3), 4) == 0;
            else
                ok = ok && (float)getd(n, i0, i1, i2, i3) == table[at];
        }
        CHECK(ok, "get_rows %s values", ferry_type_name(types[t]));
        /* a bad index fails the graph, whatever the thread count */
        int32_t bad[2] = { 9, -1 };
        for (int b = 0; b < 2; b++) {
            setd(idx, 2, 1, 1, 0, bad[b]);
            for (int nth = 1; nth <= 4; nth *= 2) {
                struct ferry_error err = { 0 };
                CHECK(run_nth(n, nth, &err) == FERRY_ERR_INVALID, "get_rows index %d refused (%s)", bad[b], err.msg);
            }
        }
        free(table);
        tfree(n);
        free(idx);
        tfree(ib);
        tfree(a);
    }
    /* hostile shapes and types */
    struct ferry_tensor *a = tnew_rand(FERRY_TYPE_F32, 8, 4, 2, 1, -1, 1);
    struct ferry_tensor *i = tnew(FERRY_TYPE_I32, 3, 2, 1, 1);
    struct ferry_tensor *n = node_new(FERRY_OP_GET_ROWS, FERRY_TYPE_F32, 8, 3, 2, 1, a, i, NULL);
    CHECK(run(n) == FERRY_OK, "get_rows baseline runs");
    n->ne[1] = 4;
    expect_reject(n, FERRY_ERR_INVALID, "get_rows wrong output shape");
    n->ne[1] = 3;
    n->type = FERRY_TYPE_F16;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "get_rows f16 output");
    n->type = FERRY_TYPE_F32;
    i->type = FERRY_TYPE_I64;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "get_rows i64 indices");
    i->type = FERRY_TYPE_I32;
    i->ne[1] = 1;
    i->ne[2] = 2;
    n->ne[2] = 1;
    n->ne[3] = 2;
    expect_reject(n, FERRY_ERR_INVALID, "get_rows index slices do not match the table");
    tfree(n);
    tfree(i);
    tfree(a);
}

/* -------------------------------------------------------------- SET_ROWS */

static void test_set_rows(void) {
    const enum ferry_type dts[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0 };
    const enum ferry_type sts[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    const enum ferry_type its[] = { FERRY_TYPE_I64, FERRY_TYPE_I32 };
    for (int d = 0; d < 5; d++)
        for (int s = 0; s < 2; s++)
            for (int it = 0; it < 2; it++) {
                /* dst [64,12,2,3], src [64,4,2,3], indices [4,1,3]: broadcast over dim 2 */
                struct ferry_tensor *dst = tnew_rand(dts[d], 64, 12, 2, 3, -1, 1);
                struct ferry_tensor *src = tnew_rand(sts[s], 64, 4, 2, 3, -3, 3);
                struct ferry_tensor *idx = tnew(its[it], 4, 1, 3, 1);
                /* duplicates within a slice: the last write must win */
                for (int64_t k = 0; k < 3; k++)
                    for (int64_t i = 0; i < 4; i++) setd(idx, i, 0, k, 0, (double)((i == 3 ? 1 : 3 * i + k) % 12));
                size_t nbytes = ferry_nbytes(dst);
                unsigned char *before = malloc(nbytes);
                memcpy(before, dst->data, nbytes);
                struct ferry_tensor node = *dst;
                node.op = FERRY_OP_SET_ROWS;
                node.flags = FERRY_FLAG_COMPUTE;
                node.src[0] = src;
                node.src[1] = idx;
                node.src[2] = dst;
                CHECK(invariant_runs(&node, "set_rows"), "set_rows invariant");
                /* reference: replay the writes in order on a copy */
                unsigned char *want = malloc(nbytes);
                memcpy(want, before, nbytes);
                const struct ferry_type_traits *tr = ferry_type_traits(dts[d]);
                size_t rs = ferry_row_size(dts[d], 64);
                float row[64];
                for (int64_t i3 = 0; i3 < 3; i3++)
                    for (int64_t i2 = 0; i2 < 2; i2++)
                        for (int64_t i = 0; i < 4; i++) {
                            int64_t r = (int64_t)getd(idx, i, 0, i3, 0);
                            for (int k = 0; k < 64; k++) row[k] = (float)getd(src, k, i, i2, i3);
                            unsigned char *out = want + r * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3];
                            if (sts[s] == dts[d]) memcpy(out, elem(src, 0, i, i2, i3), rs);
                            else tr->from_float(row, out, 64);
                        }
                CHECK(memcmp(want, dst->data, nbytes) == 0, "set_rows %s <- %s (%s indices)",
                      ferry_type_name(dts[d]), ferry_type_name(sts[s]), ferry_type_name(its[it]));
                /* a negative or too large index fails cleanly */
                double bad[2] = { -1, 12 };
                for (int b = 0; b < 2; b++) {
                    setd(idx, 2, 0, 1, 0, bad[b]);
                    for (int nth = 1; nth <= 4; nth *= 2)
                        CHECK(run_nth(&node, nth, NULL) == FERRY_ERR_INVALID, "set_rows index %g refused", bad[b]);
                }
                free(want);
                free(before);
                tfree(idx);
                tfree(src);
                tfree(dst);
            }
    /* hostile */
    struct ferry_tensor *dst = tnew(FERRY_TYPE_F16, 16, 8, 2, 1);
    struct ferry_tensor *src = tnew_rand(FERRY_TYPE_F32, 16, 3, 2, 1, -1, 1);
    struct ferry_tensor *idx = tnew(FERRY_TYPE_I64, 3, 1, 1, 1);
    struct ferry_tensor node = *dst;
    node.op = FERRY_OP_SET_ROWS;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = src;
    node.src[1] = idx;
    node.src[2] = dst;
    CHECK(run(&node) == FERRY_OK, "set_rows baseline runs");
    idx->ne[1] = 0; /* would be a modulo by zero */
    expect_reject(&node, FERRY_ERR_INVALID, "set_rows empty index dim with rows to write");
    idx->ne[1] = 1;
    idx->ne[0] = 2;
    expect_reject(&node, FERRY_ERR_INVALID, "set_rows index count mismatch");
    idx->ne[0] = 3;
    src->type = FERRY_TYPE_BF16;
    expect_reject(&node, FERRY_ERR_UNSUPPORTED, "set_rows bf16 source");
    src->type = FERRY_TYPE_F32;
    node.type = FERRY_TYPE_Q4_K;
    expect_reject(&node, FERRY_ERR_INVALID, "set_rows node not a view of src2");
    idx->type = FERRY_TYPE_F32;
    node.type = FERRY_TYPE_F16;
    expect_reject(&node, FERRY_ERR_UNSUPPORTED, "set_rows f32 indices");
    idx->type = FERRY_TYPE_I64;
    /* nothing to write: empty source rows, the cache is left alone */
    src->ne[1] = 0;
    idx->ne[0] = 0;
    memset(dst->data, 0x22, ferry_nbytes(dst));
    CHECK(run(&node) == FERRY_OK, "set_rows with no rows runs");
    CHECK(((unsigned char *)dst->data)[5] == 0x22, "set_rows with no rows writes nothing");
    tfree(idx);
    tfree(src);
    tfree(dst);
}

/* ---------------------------------------------------------------- binary */

static double binop(enum ferry_op op, double a, double b) {
    switch (op) {
    case FERRY_OP_SUB: return a - b;
    case FERRY_OP_MUL: return a * b;
    case FERRY_OP_DIV: return a / b;
    default: return a + b;
    }
}

/* dst[i] = op(a[i], b[i mod ne1]), each computed in double and rounded to
 * f32 (exactly f32 arithmetic for + - * /), then to the output type. */
static bool binary_matches(const struct ferry_tensor *n) {
    const struct ferry_tensor *a = n->src[0], *b = n->src[1];
    FOR_EACH(n, i0, i1, i2, i3) {
        double x = getd(a, i0, i1, i2, i3);
        double y = getd(b, i0 % b->ne[0], i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]);
        double want = round_to(n->type, (float)binop(n->op, x, y));
        double got = getd(n, i0, i1, i2, i3);
        if (!same_bits(want, got)) {
            CHECK(false, "%s at (%lld,%lld,%lld,%lld): %g, want %g", ferry_op_name(n->op), (long long)i0,
                  (long long)i1, (long long)i2, (long long)i3, got, want);
            return false;
        }
    }
    return true;
}

static void test_binary(void) {
    const enum ferry_op ops[] = { FERRY_OP_ADD, FERRY_OP_SUB, FERRY_OP_MUL, FERRY_OP_DIV };
    struct { enum ferry_type a, b, d; } combos[] = {
        { FERRY_TYPE_F32, FERRY_TYPE_F32, FERRY_TYPE_F32 },   { FERRY_TYPE_F16, FERRY_TYPE_F16, FERRY_TYPE_F16 },
        { FERRY_TYPE_BF16, FERRY_TYPE_BF16, FERRY_TYPE_BF16 }, { FERRY_TYPE_F16, FERRY_TYPE_F32, FERRY_TYPE_F16 },
        { FERRY_TYPE_F16, FERRY_TYPE_F32, FERRY_TYPE_F32 },   { FERRY_TYPE_BF16, FERRY_TYPE_F32, FERRY_TYPE_BF16 },
        { FERRY_TYPE_BF16, FERRY_TYPE_F32, FERRY_TYPE_F32 },
    };
    /* src1 shapes tiled over [300,3,4,2] by modulo, contiguous and transposed */
    const int64_t shapes[][4] = { { 300, 3, 4, 2 }, { 300, 1, 1, 1 }, { 75, 3, 1, 2 }, { 4, 1, 2, 1 }, { 1, 1, 1, 1 } };
    for (int o = 0; o < 4; o++)
        for (size_t c = 0; c < sizeof combos / sizeof combos[0]; c++)
            for (int s = 0; s < 5; s++)
                for (int tr = 0; tr < 2; tr++) {
                    struct ferry_tensor *a = tnew_rand(combos[c].a, 300, 3, 4, 2, -4, 4);
                    struct ferry_tensor *bb, *b;
                    if (tr) { /* src1 stored transposed: nb0 != element size */
                        bb = tnew_rand(combos[c].b, shapes[s][1], shapes[s][0], shapes[s][2], shapes[s][3], 0.5f, 3);
                        b = permuted(bb, 1, 0, 2, 3);
                    } else {
                        bb = NULL;
                        b = tnew_rand(combos[c].b, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], 0.5f, 3);
                    }
                    struct ferry_tensor *n = node_new(ops[o], combos[c].d, 300, 3, 4, 2, a, b, NULL);
                    if (s == 0 && tr == 0 && c == 0) {
                        CHECK(invariant_runs(n, "binary"), "binary invariant");
                    } else {
                        CHECK(run_nth(n, 3 - s % 2, NULL) == FERRY_OK, "binary runs");
                    }
                    CHECK(binary_matches(n), "%s %s,%s->%s src1 #%d%s", ferry_op_name(ops[o]),
                          ferry_type_name(combos[c].a), ferry_type_name(combos[c].b),
                          ferry_type_name(combos[c].d), s, tr ? " transposed" : "");
                    tfree(n);
                    if (bb) { free(b); tfree(bb); } else tfree(b);
                    tfree(a);
                }
    /* permuted src0 rows, in place (the node is src0's memory) */
    struct ferry_tensor *base = tnew_rand(FERRY_TYPE_F32, 16, 6, 5, 1, -1, 1);
    struct ferry_tensor *a = permuted(base, 0, 2, 1, 3);
    struct ferry_tensor *b = tnew_rand(FERRY_TYPE_F32, 16, 1, 6, 1, -1, 1);
    struct ferry_tensor *ref = node_new(FERRY_OP_MUL, FERRY_TYPE_F32, 16, 5, 6, 1, a, b, NULL);
    CHECK(run(ref) == FERRY_OK && binary_matches(ref), "mul on a permuted src0");
    struct ferry_tensor inplace = *a;
    inplace.op = FERRY_OP_MUL;
    inplace.flags = FERRY_FLAG_COMPUTE;
    inplace.src[0] = a;
    inplace.src[1] = b;
    CHECK(run_nth(&inplace, 2, NULL) == FERRY_OK, "in-place mul runs");
    bool ok = true;
    FOR_EACH(ref, i0, i1, i2, i3) ok = ok && getd(ref, i0, i1, i2, i3) == getd(a, i0, i1, i2, i3);
    CHECK(ok, "in-place mul equals the out-of-place result");
    tfree(ref);
    tfree(b);
    free(a);
    tfree(base);

    /* ADD with a quantized src0: dequantize, add, quantize again */
    struct ferry_tensor *q = tnew_rand(FERRY_TYPE_Q8_0, 64, 5, 1, 1, -1, 1);
    struct ferry_tensor *f = tnew_rand(FERRY_TYPE_F32, 64, 5, 1, 1, -1, 1);
    struct ferry_tensor *qn = node_new(FERRY_OP_ADD, FERRY_TYPE_Q8_0, 64, 5, 1, 1, q, f, NULL);
    CHECK(invariant_runs(qn, "quantized add"), "quantized add invariant");
    float *dq = test_tensor_to_f32(q), sum[64];
    unsigned char want[68];
    ok = true;
    for (int r = 0; r < 5; r++) {
        for (int i = 0; i < 64; i++) sum[i] = dq[r * 64 + i] + ((float *)f->data)[r * 64 + i];
        ferry_type_traits(FERRY_TYPE_Q8_0)->from_float(sum, want, 64);
        ok = ok && memcmp(want, (char *)qn->data + r * 68, 68) == 0;
    }
    CHECK(ok, "q8_0 + f32 -> q8_0");
    struct ferry_tensor *fn = node_new(FERRY_OP_ADD, FERRY_TYPE_F32, 64, 5, 1, 1, q, f, NULL);
    CHECK(run(fn) == FERRY_OK, "q8_0 + f32 -> f32 runs");
    ok = true;
    for (int k = 0; k < 320; k++) ok = ok && ((float *)fn->data)[k] == dq[k] + ((float *)f->data)[k];
    CHECK(ok, "q8_0 + f32 -> f32");
    free(dq);
    tfree(fn);
    struct ferry_tensor *fb = tnew_rand(FERRY_TYPE_F32, 64, 1, 1, 1, -1, 1);
    qn->src[1] = fb;
    expect_reject(qn, FERRY_ERR_INVALID, "quantized add does not broadcast");
    qn->op = FERRY_OP_MUL;
    qn->src[1] = f;
    expect_reject(qn, FERRY_ERR_UNSUPPORTED, "quantized mul");
    tfree(fb);
    tfree(qn);
    tfree(f);
    tfree(q);

    /* hostile */
    struct ferry_tensor *x = tnew_rand(FERRY_TYPE_F32, 16, 4, 1, 1, -1, 1);
    struct ferry_tensor *y3 = tnew_rand(FERRY_TYPE_F32, 16, 3, 1, 1, -1, 1);
    struct ferry_tensor *yh = tnew_rand(FERRY_TYPE_F16, 16, 4, 1, 1, -1, 1);
    struct ferry_tensor *n = node_new(FERRY_OP_ADD, FERRY_TYPE_F32, 16, 4, 1, 1, x, y3, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "src1 does not tile src0");
    n->src[1] = yh;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "f32 + f16");
    n->src[1] = x;
    n->ne[1] = 2;
    expect_reject(n, FERRY_ERR_INVALID, "output shape differs");
    n->ne[1] = 4;
    n->type = FERRY_TYPE_F16;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "f32 + f32 -> f16");
    n->type = FERRY_TYPE_F32;
    n->src[1] = NULL;
    expect_reject(n, FERRY_ERR_INVALID, "missing src1");
    tfree(n);
    tfree(yh);
    tfree(y3);
    tfree(x);
}

static void test_add_id(void) {
    struct ferry_tensor *a = tnew_rand(FERRY_TYPE_F32, 40, 4, 6, 2, -1, 1);
    struct ferry_tensor *b = tnew_rand(FERRY_TYPE_F32, 40, 7, 1, 1, -1, 1);
    struct ferry_tensor *ids = tnew(FERRY_TYPE_I32, 4, 6, 1, 1);
    FOR_EACH(ids, i0, i1, i2, i3) setd(ids, i0, i1, i2, i3, (double)(test_rand_u64(&rng) % 7));
    struct ferry_tensor *n = node_new(FERRY_OP_ADD_ID, FERRY_TYPE_F32, 40, 4, 6, 2, a, b, ids);
    CHECK(invariant_runs(n, "add_id"), "add_id invariant");
    bool ok = true;
    FOR_EACH(n, i0, i1, i2, i3) {
        int64_t e = (int64_t)getd(ids, i1, i2, 0, 0);
        ok = ok && getd(n, i0, i1, i2, i3) == (double)(float)(getd(a, i0, i1, i2, i3) + getd(b, i0, e, 0, 0));
    }
    CHECK(ok, "add_id values");
    setd(ids, 3, 5, 0, 0, 7);
    CHECK(run_nth(n, 4, NULL) == FERRY_ERR_INVALID, "add_id expert id past the end refused");
    setd(ids, 3, 5, 0, 0, -3);
    CHECK(run_nth(n, 1, NULL) == FERRY_ERR_INVALID, "add_id negative expert id refused");
    ids->ne[0] = 3;
    expect_reject(n, FERRY_ERR_INVALID, "add_id ids shape");
    ids->ne[0] = 4;
    ids->ne[2] = 0; /* right ne0/ne1, but no memory behind them */
    expect_reject(n, FERRY_ERR_INVALID, "add_id empty ids");
    ids->ne[2] = 1;
    b->ne[3] = 0;
    expect_reject(n, FERRY_ERR_INVALID, "add_id empty bias table");
    b->ne[3] = 1;
    tfree(n);
    tfree(ids);
    tfree(b);
    tfree(a);
}

/* ----------------------------------------------------------------- unary */

static double gelu_ref(double x) { return 0.5 * x * (1 + tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x))); }
static double softplus_ref(double x) { return x > 20 ? x : log1p(exp(x)); }

static const float xielu_p[4] = { 0.5f + 1.1711006f, 1.1711006f, 0.5f, -1e-6f }; /* an, ap, beta, eps */

static double unary_ref(int op, double x) {
    switch (op) {
    case FERRY_UNARY_ABS: return fabs(x);
    case FERRY_UNARY_SGN: return x > 0 ? 1 : (x < 0 ? -1 : 0);
    case FERRY_UNARY_NEG: return -x;
    case FERRY_UNARY_STEP: return x > 0 ? 1 : 0;
    case FERRY_UNARY_TANH: return tanh(x);
    case FERRY_UNARY_ELU: return x > 0 ? x : expm1(x);
    case FERRY_UNARY_RELU: return x > 0 ? x : 0;
    case FERRY_UNARY_SIGMOID: return 1 / (1 + exp(-x));
    case FERRY_UNARY_GELU: return x <= -10 ? 0 : x >= 10 ? x : gelu_ref(x);
    case FERRY_UNARY_GELU_QUICK: return x / (1 + exp(-1.702 * x));
    case FERRY_UNARY_SILU: return x / (1 + exp(-x));
    case FERRY_UNARY_HARDSWISH: return x * fmin(1, fmax(0, (x + 3) / 6));
    case FERRY_UNARY_HARDSIGMOID: return fmin(1, fmax(0, (x + 3) / 6));
    case FERRY_UNARY_EXP: return exp(x);
    case FERRY_UNARY_EXPM1: return exp(x) - 1;
    case FERRY_UNARY_SOFTPLUS: return softplus_ref(x);
    case FERRY_UNARY_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case FERRY_UNARY_XIELU:
        return x > 0 ? xielu_p[1] * x * x + xielu_p[2] * x
                     : (expm1(fmin(x, xielu_p[3])) - x) * xielu_p[0] + xielu_p[2] * x;
    case FERRY_UNARY_FLOOR: return floor(x);
    case FERRY_UNARY_CEIL: return ceil(x);
    case FERRY_UNARY_ROUND: return round(x);
    case FERRY_UNARY_TRUNC: return trunc(x);
    default: return NAN;
    }
}

/* How far a result may be from the double reference: a few f32 ulps,
 * except where the kernel itself works at f16 precision (the GELU
 * tables), plus one rounding to the output type. */
static double unary_tol(int op, enum ferry_type t, double x, double ref) {
    double tol = 4e-7 * fabs(ref) + 1e-30;
    if (op == FERRY_UNARY_EXPM1 || op == FERRY_UNARY_XIELU || op == FERRY_UNARY_ELU) tol += 2e-7;
    /* ggml's formulas round 1 + expf(x) and 1 + erff(x) in f32 first */
    if (op == FERRY_UNARY_SOFTPLUS) tol += 0x1p-23;
    if (op == FERRY_UNARY_GELU_ERF) tol += 0x1p-23 * fabs(x);
    if (op == FERRY_UNARY_GELU || op == FERRY_UNARY_GELU_QUICK) tol += 0x1p-10 * (fabs(x) * 1.2 + fabs(ref)) + 1e-6;
    if (t == FERRY_TYPE_F16) tol += 0x1p-10 * fabs(ref) + 0x1p-24;
    if (t == FERRY_TYPE_BF16) tol += 0x1p-7 * fabs(ref);
    return tol;
}

static void test_unary(void) {
    const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    for (int op = 0; op < FERRY_UNARY_COUNT; op++)
        for (int t = 0; t < 3; t++) {
            bool f32_f16_only = op == FERRY_UNARY_GELU || op == FERRY_UNARY_GELU_QUICK ||
                                op == FERRY_UNARY_GELU_ERF || op == FERRY_UNARY_SILU;
            /* a row-strided view: rows of 37 inside rows of 45 */
            struct ferry_tensor *base = tnew_rand(types[t], 45, 6, 2, 1, -12, 12);
            if (op == FERRY_UNARY_ROUND) FOR_EACH(base, i0, i1, i2, i3) setd(base, i0, i1, i2, i3, (double)(i0 % 9) - 4.5);
            if (op == FERRY_UNARY_SOFTPLUS) FOR_EACH(base, i0, i1, i2, i3) setd(base, i0, i1, i2, i3, getd(base, i0, i1, i2, i3) * 2.1);
            struct ferry_tensor *x = viewed(base, 37, 6, 2, 1, base->nb[1], base->nb[2], base->nb[3], 3 * base->nb[0]);
            struct ferry_tensor *n = node_new(FERRY_OP_UNARY, types[t], 37, 6, 2, 1, x, NULL, NULL);
            n->op_params[0] = op;
            if (op == FERRY_UNARY_XIELU)
                for (int k = 0; k < 4; k++) ferry_param_set_f32(n, 1 + k, xielu_p[k]);
            if (f32_f16_only && types[t] == FERRY_TYPE_BF16) {
                expect_reject(n, FERRY_ERR_UNSUPPORTED, "unary bf16 gelu/silu");
            } else {
                CHECK(invariant_runs(n, ferry_unary_op_name(op)), "unary %s %s invariant",
                      ferry_unary_op_name(op), ferry_type_name(types[t]));
                int bad = 0;
                FOR_EACH(n, i0, i1, i2, i3) {
                    double v = getd(x, i0, i1, i2, i3), ref = round_to(types[t], unary_ref(op, v));
                    double got = getd(n, i0, i1, i2, i3);
                    if (!(got == ref || fabs(got - ref) <= unary_tol(op, types[t], v, ref)) && bad++ < 3)
                        CHECK(false, "unary %s %s f(%.9g) = %.9g, want %.9g", ferry_unary_op_name(op),
                              ferry_type_name(types[t]), v, got, ref);
                }
                CHECK(bad == 0, "unary %s %s values", ferry_unary_op_name(op), ferry_type_name(types[t]));
            }
            tfree(n);
            free(x);
            tfree(base);
        }
    /* GELU on f32 is exact outside [-10, 10] and f16-precise inside */
    float gx[] = { -11.0f, -10.0f, 10.0f, 13.5f, 0.0f, 1.0f };
    struct ferry_tensor *g = tnew(FERRY_TYPE_F32, 6, 1, 1, 1);
    memcpy(g->data, gx, sizeof gx);
    struct ferry_tensor *gn = node_new(FERRY_OP_UNARY, FERRY_TYPE_F32, 6, 1, 1, 1, g, NULL, NULL);
    gn->op_params[0] = FERRY_UNARY_GELU;
    CHECK(run(gn) == FERRY_OK, "gelu runs");
    const float *gy = gn->data;
    CHECK(gy[0] == 0.0f && gy[1] == 0.0f && gy[2] == 10.0f && gy[3] == 13.5f && gy[4] == 0.0f,
          "gelu clamps outside [-10, 10]");
    CHECK(gy[5] == ferry_fp16_to_fp32(ferry_fp32_to_fp16((float)gelu_ref(1.0))), "gelu(1) has f16 precision");
    gn->op_params[0] = FERRY_UNARY_COUNT;
    expect_reject(gn, FERRY_ERR_UNSUPPORTED, "unknown unary sub-op");
    gn->op_params[0] = -1;
    expect_reject(gn, FERRY_ERR_UNSUPPORTED, "negative unary sub-op");
    gn->op_params[0] = FERRY_UNARY_NEG;
    gn->type = FERRY_TYPE_F16;
    expect_reject(gn, FERRY_ERR_UNSUPPORTED, "unary with a different output type");
    tfree(gn);
    tfree(g);
    /* special values through SILU (the vectorised exp) */
    float sx[] = { NAN, INFINITY, -1000.0f, 1000.0f, 0.0f, -0.0f, 88.0f, -88.0f, 1e-20f };
    struct ferry_tensor *s = tnew(FERRY_TYPE_F32, 9, 1, 1, 1);
    memcpy(s->data, sx, sizeof sx);
    struct ferry_tensor *sn = node_new(FERRY_OP_UNARY, FERRY_TYPE_F32, 9, 1, 1, 1, s, NULL, NULL);
    sn->op_params[0] = FERRY_UNARY_SILU;
    CHECK(invariant_runs(sn, "silu special"), "silu special values invariant");
    const float *sy = sn->data;
    CHECK(isnan(sy[0]) && sy[1] == INFINITY && sy[2] == 0.0f && sy[3] == 1000.0f && sy[4] == 0.0f &&
          sy[5] == 0.0f && sy[6] == 88.0f && fabsf(sy[7]) < 1e-35f && sy[8] == 0.5e-20f,
          "silu special values: %g %g %g %g %g %g %g %g %g", sy[0], sy[1], sy[2], sy[3], sy[4], sy[5],
          sy[6], sy[7], sy[8]);
    tfree(sn);
    tfree(s);
}

/* SQR, SQRT, SCALE and CLAMP, including in place. */
static void test_simple_unary(void) {
    const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16 };
    for (int t = 0; t < 3; t++)
        for (int sq = 0; sq < 2; sq++) {
            struct ferry_tensor *x = tnew_rand(types[t], 130, 3, 2, 1, sq ? 0 : -5, 5);
            struct ferry_tensor *n = node_new(sq ? FERRY_OP_SQRT : FERRY_OP_SQR, types[t], 130, 3, 2, 1, x, NULL, NULL);
            CHECK(invariant_runs(n, "sqr/sqrt"), "sqr/sqrt invariant");
            bool ok = true;
            FOR_EACH(n, i0, i1, i2, i3) {
                double v = getd(x, i0, i1, i2, i3);
                ok = ok && getd(n, i0, i1, i2, i3) == round_to(types[t], sq ? sqrt(v) : v * v);
            }
            CHECK(ok, "%s %s values", sq ? "sqrt" : "sqr", ferry_type_name(types[t]));
            tfree(n);
            tfree(x);
        }
    /* SCALE: x*s and fused x*s + b, on rows long enough for several 64-steps */
    const float sb[][2] = { { 0.7f, 0.0f }, { -1.3f, 0.25f } };
    for (int k = 0; k < 2; k++) {
        struct ferry_tensor *x = tnew_rand(FERRY_TYPE_F32, 200, 5, 1, 1, -3, 3);
        struct ferry_tensor *n = node_new(FERRY_OP_SCALE, FERRY_TYPE_F32, 200, 5, 1, 1, x, NULL, NULL);
        ferry_param_set_f32(n, 0, sb[k][0]);
        ferry_param_set_f32(n, 1, sb[k][1]);
        CHECK(invariant_runs(n, "scale"), "scale invariant");
        bool ok = true;
        FOR_EACH(n, i0, i1, i2, i3) {
            double v = getd(x, i0, i1, i2, i3);
            /* one rounding of the exact x*s + b (f32 x*s is exact in double) */
            ok = ok && getd(n, i0, i1, i2, i3) == (double)(float)(v * sb[k][0] + sb[k][1]);
        }
        CHECK(ok, "scale s=%g b=%g", sb[k][0], sb[k][1]);
        tfree(n);
        tfree(x);
    }
    /* CLAMP in place (as ggml builds it), f32 and f16, with NaN -> max */
    for (int t = 0; t < 2; t++) {
        struct ferry_tensor *x = tnew_rand(types[t], 50, 4, 1, 1, -2, 2);
        setd(x, 7, 2, 0, 0, NAN);
        struct ferry_tensor *orig = tnew(types[t], 50, 4, 1, 1);
        memcpy(orig->data, x->data, ferry_nbytes(x));
        struct ferry_tensor node = *x;
        node.op = FERRY_OP_CLAMP;
        node.flags = FERRY_FLAG_COMPUTE;
        node.src[0] = x;
        ferry_param_set_f32(&node, 0, -0.5f);
        ferry_param_set_f32(&node, 1, 0.75f);
        CHECK(run_nth(&node, 3, NULL) == FERRY_OK, "clamp in place runs");
        bool ok = true;
        FOR_EACH(x, i0, i1, i2, i3) {
            double v = getd(orig, i0, i1, i2, i3);
            double want = isnan(v) ? 0.75 : v < -0.5 ? -0.5 : v > 0.75 ? 0.75 : v;
            ok = ok && getd(x, i0, i1, i2, i3) == round_to(types[t], want);
        }
        CHECK(ok, "clamp %s in place, NaN -> max", ferry_type_name(types[t]));
        node.type = FERRY_TYPE_BF16;
        x->type = FERRY_TYPE_BF16;
        expect_reject(&node, FERRY_ERR_UNSUPPORTED, "clamp bf16");
        x->type = types[t];
        tfree(orig);
        tfree(x);
    }
    struct ferry_tensor *h = tnew(FERRY_TYPE_F16, 8, 2, 1, 1);
    struct ferry_tensor *n = node_new(FERRY_OP_SCALE, FERRY_TYPE_F16, 8, 2, 1, 1, h, NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "scale f16");
    n->op = FERRY_OP_SQR;
    n->ne[0] = 4;
    expect_reject(n, FERRY_ERR_INVALID, "sqr shape mismatch");
    n->ne[0] = 8;
    h->nb[0] = 4; /* elements not contiguous */
    h->nb[1] = 32;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "sqr strided elements");
    tfree(n);
    tfree(h);
}

/* ------------------------------------------------------------------- GLU */

static double glu_ref(int op, double x, double g, float alpha, float limit) {
    switch (op) {
    case FERRY_GLU_REGLU: return x > 0 ? x * g : 0;
    case FERRY_GLU_GEGLU: return unary_ref(FERRY_UNARY_GELU, x) * g;
    case FERRY_GLU_SWIGLU: return x / (1 + exp(-x)) * g;
    case FERRY_GLU_SWIGLU_OAI: {
        double xc = fmin(x, limit), gc = fmax(-limit, fmin(g, limit));
        return xc / (1 + exp(-alpha * xc)) * (gc + 1);
    }
    case FERRY_GLU_GEGLU_ERF: return unary_ref(FERRY_UNARY_GELU_ERF, x) * g;
    case FERRY_GLU_GEGLU_QUICK: return unary_ref(FERRY_UNARY_GELU_QUICK, x) * g;
    default: return NAN;
    }
}

/* LEAKY_RELU, ggml's own op: max(x, 0) + slope * min(x, 0), F32 and F16. */
static void test_leaky_relu(void) {
    for (int t = 0; t < 2; t++) {
        enum ferry_type type = t ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
        struct ferry_tensor *a = tnew_rand(type, 37, 3, 2, 1, -5, 5);
        struct ferry_tensor *n = node_new(FERRY_OP_LEAKY_RELU, type, 37, 3, 2, 1, a, NULL, NULL);
        ferry_param_set_f32(n, 0, 0.1f);
        if (CHECK(invariant_runs(n, "leaky_relu"), "leaky_relu %s runs", ferry_type_name(type))) {
            int bad = 0;
            FOR_EACH(n, i0, i1, i2, i3) {
                double x = getd(a, i0, i1, i2, i3), ref = x > 0 ? x : 0.1 * x, got = getd(n, i0, i1, i2, i3);
                if (!(fabs(got - ref) <= (t ? 1e-3 * fabs(ref) + 1e-4 : 1e-6 * fabs(ref)))) bad++;
            }
            CHECK(bad == 0, "leaky_relu %s: %d values wrong", ferry_type_name(type), bad);
        }
        tfree(n);
        tfree(a);
    }
    struct ferry_tensor *a = tnew_rand(FERRY_TYPE_F32, 8, 2, 1, 1, -1, 1);
    struct ferry_tensor *n = node_new(FERRY_OP_LEAKY_RELU, FERRY_TYPE_F32, 8, 3, 1, 1, a, NULL, NULL);
    expect_reject(n, FERRY_ERR_INVALID, "leaky_relu output shape");
    tfree(n);
    n = node_new(FERRY_OP_LEAKY_RELU, FERRY_TYPE_F16, 8, 2, 1, 1, a, NULL, NULL);
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "leaky_relu f32 -> f16");
    tfree(n);
    tfree(a);
}

static void test_glu(void) {
    const float alpha = 1.702f, limit = 7.0f;
    for (int op = 0; op < FERRY_GLU_COUNT; op++)
        for (int t = 0; t < 2; t++)
            for (int form = 0; form < 3; form++) { /* single, single swapped, split */
                enum ferry_type type = t ? FERRY_TYPE_F16 : FERRY_TYPE_F32;
                const int64_t n0 = 70;
                struct ferry_tensor *a = tnew_rand(type, form == 2 ? n0 : 2 * n0, 3, 2, 1, -9, 9);
                struct ferry_tensor *b = form == 2 ? tnew_rand(type, n0, 3, 2, 1, -9, 9) : NULL;
                struct ferry_tensor *n = node_new(FERRY_OP_GLU, type, n0, 3, 2, 1, a, b, NULL);
                n->op_params[0] = op;
                n->op_params[1] = form == 1;
                ferry_param_set_f32(n, 2, alpha);
                ferry_param_set_f32(n, 3, limit);
                if (op == FERRY_GLU_SWIGLU_OAI && t) {
                    expect_reject(n, FERRY_ERR_UNSUPPORTED, "swiglu_oai f16");
                } else {
                    CHECK(invariant_runs(n, ferry_glu_op_name(op)), "glu %s invariant", ferry_glu_op_name(op));
                    int bad = 0;
                    FOR_EACH(n, i0, i1, i2, i3) {
                        double x, g;
                        if (form == 2) {
                            x = getd(a, i0, i1, i2, i3);
                            g = getd(b, i0, i1, i2, i3);
                        } else {
                            x = getd(a, i0 + (form == 1 ? n0 : 0), i1, i2, i3);
                            g = getd(a, i0 + (form == 1 ? 0 : n0), i1, i2, i3);
                        }
                        double ref = glu_ref(op, x, g, alpha, limit), got = getd(n, i0, i1, i2, i3);
                        int uop = op == FERRY_GLU_GEGLU         ? FERRY_UNARY_GELU
                                  : op == FERRY_GLU_GEGLU_QUICK ? FERRY_UNARY_GELU_QUICK
                                  : op == FERRY_GLU_GEGLU_ERF   ? FERRY_UNARY_GELU_ERF
                                                                : FERRY_UNARY_NEG;
                        double tol = unary_tol(uop, type, x, ref) * (1 + fabs(g)) + 1e-6 * fabs(ref);
                        if (!(fabs(got - ref) <= tol) && bad++ < 3)
                            CHECK(false, "glu %s %s form %d: f(%g, %g) = %.9g, want %.9g", ferry_glu_op_name(op),
                                  ferry_type_name(type), form, x, g, got, ref);
                    }
                    CHECK(bad == 0, "glu %s %s form %d values", ferry_glu_op_name(op), ferry_type_name(type), form);
                }
                tfree(n);
                if (b) tfree(b);
                tfree(a);
            }
    /* hostile */
    struct ferry_tensor *a = tnew_rand(FERRY_TYPE_F32, 9, 2, 1, 1, -1, 1);
    struct ferry_tensor *n = node_new(FERRY_OP_GLU, FERRY_TYPE_F32, 4, 2, 1, 1, a, NULL, NULL);
    /* an odd row: halves of 4 at 0 and 4, the last element in neither (ggml) */
    n->op_params[0] = FERRY_GLU_REGLU;
    if (CHECK(run(n) == FERRY_OK, "glu odd row runs")) {
        int bad = 0;
        FOR_EACH(n, i0, i1, i2, i3) {
            double x = getd(a, i0, i1, i2, i3), g = getd(a, i0 + 4, i1, i2, i3);
            if (getd(n, i0, i1, i2, i3) != (x > 0 ? (double)((float)x * (float)g) : 0.0)) bad++;
        }
        CHECK(bad == 0, "glu odd row values: %d wrong", bad);
    }
    n->op_params[0] = FERRY_GLU_SWIGLU;
    a->ne[0] = 8;
    n->ne[1] = 3;
    expect_reject(n, FERRY_ERR_INVALID, "glu output shape");
    n->ne[1] = 2;
    CHECK(run(n) == FERRY_OK, "glu fixed node runs");
    struct ferry_tensor *b = tnew(FERRY_TYPE_F32, 8, 3, 1, 1);
    n->src[1] = b;
    expect_reject(n, FERRY_ERR_INVALID, "glu split with different shapes");
    b->ne[1] = 2;
    b->type = FERRY_TYPE_F16;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "glu split with different types");
    n->src[1] = NULL;
    n->op_params[0] = 6;
    expect_reject(n, FERRY_ERR_UNSUPPORTED, "glu unknown sub-op");
    tfree(b);
    tfree(n);
    tfree(a);
}

/* --------------------------------------------------------- empty tensors */

static void test_empty(void) {
    /* zero-sized outputs are skipped; zero-sized sources with outputs are fine */
    struct ferry_tensor *x = tnew(FERRY_TYPE_F32, 16, 0, 3, 1);
    struct ferry_tensor *y = tnew(FERRY_TYPE_F32, 16, 0, 1, 1);
    enum ferry_op ops[] = { FERRY_OP_ADD, FERRY_OP_MUL, FERRY_OP_DUP, FERRY_OP_CONT, FERRY_OP_SQR, FERRY_OP_UNARY };
    for (int k = 0; k < 6; k++) {
        struct ferry_tensor *n = node_new(ops[k], FERRY_TYPE_F32, 16, 0, 3, 1, x, ops[k] <= FERRY_OP_MUL ? y : NULL, NULL);
        n->op_params[0] = FERRY_UNARY_SILU;
        struct ferry_error err = { 0 };
        CHECK(run_nth(n, 4, &err) == FERRY_OK, "empty %s: %s", ferry_op_name(ops[k]), err.msg);
        tfree(n);
    }
    /* GET_ROWS with no indices */
    struct ferry_tensor *table = tnew_rand(FERRY_TYPE_F16, 8, 5, 1, 1, -1, 1);
    struct ferry_tensor *idx = tnew(FERRY_TYPE_I32, 0, 1, 1, 1);
    struct ferry_tensor *g = node_new(FERRY_OP_GET_ROWS, FERRY_TYPE_F32, 8, 0, 1, 1, table, idx, NULL);
    CHECK(run_nth(g, 2, NULL) == FERRY_OK, "get_rows with no indices");
    /* a zero-row table makes any index out of range */
    struct ferry_tensor *t0 = tnew(FERRY_TYPE_F32, 8, 0, 1, 1);
    struct ferry_tensor *i1 = tnew(FERRY_TYPE_I32, 1, 1, 1, 1);
    struct ferry_tensor *g0 = node_new(FERRY_OP_GET_ROWS, FERRY_TYPE_F32, 8, 1, 1, 1, t0, i1, NULL);
    CHECK(run_nth(g0, 2, NULL) == FERRY_ERR_INVALID, "get_rows from an empty table refused");
    tfree(g0);
    tfree(i1);
    tfree(t0);
    tfree(g);
    tfree(idx);
    tfree(table);
    tfree(y);
    tfree(x);
}


/* ------------------------------------------------ random hostile nodes */

/* Random graphs of one node for every op here: shapes mostly consistent,
 * strides contiguous, permuted or arbitrary, and now and then one field
 * broken. Each tensor gets exactly its byte extent (ferry_nbytes) of
 * memory, so under AddressSanitizer any access outside what the engine
 * validated is caught. Whatever check decides, nothing may crash. */

static int64_t rnd(int64_t n) { return n > 0 ? (int64_t)(test_rand_u64(&rng) % (uint64_t)n) : 0; }

struct fz {
    struct ferry_tensor t[4]; /* 0..2 sources, 3 the node */
    bool used[4];
    int shares; /* the node's memory is this source's (CPY, SET_ROWS), or -1 */
};

static void fz_shape(struct ferry_tensor *t, enum ferry_type type, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    int64_t ne[4] = { n0, n1, n2, n3 };
    ferry_tensor_init(t, type, 4, ne, NULL);
}

static int64_t fz_dim(void) {
    int64_t r = rnd(10);
    return r == 0 ? 0 : r < 7 ? 1 + rnd(4) : 5 + rnd(30);
}

/* Contiguous, permuted, padded or arbitrary strides. */
static void fz_strides(struct ferry_tensor *t) {
    size_t ts = ferry_type_size(t->type);
    int64_t bs = ferry_blck_size(t->type);
    switch (rnd(5)) {
    case 0: { /* permuted storage of dims 1..3 */
        int a = 1 + (int)rnd(3), b = 1 + (int)rnd(3);
        size_t tmp = t->nb[a];
        t->nb[a] = t->nb[b];
        t->nb[b] = tmp;
        break;
    }
    case 1: /* padded rows */
        for (int d = 1; d < 4; d++) t->nb[d] += ts * (size_t)rnd(3) * (size_t)d;
        break;
    case 2: /* arbitrary */
        if (bs == 1 && rnd(3) == 0) t->nb[0] = ts * (size_t)rnd(3);
        for (int d = 1; d < 4; d++) t->nb[d] = ts * (size_t)rnd(64);
        break;
    default: break;
    }
    if (rnd(40) == 0) t->nb[rnd(4)] += 1; /* misaligned */
}

static enum ferry_type fz_type(void) {
    static const enum ferry_type types[] = {
        FERRY_TYPE_F32, FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_I32,
        FERRY_TYPE_I64, FERRY_TYPE_I8, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0, FERRY_TYPE_Q4_K, FERRY_TYPE_IQ2_XXS,
    };
    return types[rnd(sizeof types / sizeof types[0])];
}

/* A random node of op with plausible sources. */
static void fz_build(struct fz *f, enum ferry_op op) {
    memset(f, 0, sizeof *f);
    f->shares = -1;
    struct ferry_tensor *a = &f->t[0], *b = &f->t[1], *c = &f->t[2], *n = &f->t[3];
    enum ferry_type ta = rnd(3) ? (rnd(2) ? FERRY_TYPE_F32 : FERRY_TYPE_F16) : fz_type();
    int64_t blk = ferry_blck_size(ta);
    int64_t d0 = blk > 1 ? blk * (1 + rnd(2)) : fz_dim(), d1 = fz_dim(), d2 = fz_dim(), d3 = fz_dim();
    f->used[0] = f->used[3] = true;
    switch (op) {
    case FERRY_OP_DUP: case FERRY_OP_CONT: case FERRY_OP_CPY: {
        fz_shape(a, ta, d0, d1, d2, d3);
        enum ferry_type tn = rnd(2) ? ta : fz_type();
        int64_t e = ferry_nelements(a), bn = ferry_blck_size(tn);
        if (rnd(2) && e % bn == 0) fz_shape(n, tn, e, 1, 1, 1);
        else fz_shape(n, tn, bn > 1 ? bn : d0, d1, d2, d3);
        if (op == FERRY_OP_CPY) {
            f->used[1] = true;
            f->t[1] = *n;
            f->shares = 1;
        }
        break;
    }
    case FERRY_OP_GET_ROWS: {
        int64_t m = fz_dim();
        fz_shape(a, ta, d0, d1, d2, d3);
        fz_shape(b, FERRY_TYPE_I32, m, d2, d3, 1);
        fz_shape(n, ta == FERRY_TYPE_I32 ? FERRY_TYPE_I32 : FERRY_TYPE_F32, d0, m, d2, d3);
        f->used[1] = true;
        break;
    }
    case FERRY_OP_SET_ROWS: {
        int64_t m = fz_dim();
        enum ferry_type td = rnd(2) ? FERRY_TYPE_F16 : fz_type();
        int64_t bd = ferry_blck_size(td);
        d0 = bd > 1 ? bd : d0;
        fz_shape(a, rnd(2) ? FERRY_TYPE_F32 : FERRY_TYPE_F16, d0, m, d2, d3);
        fz_shape(b, rnd(2) ? FERRY_TYPE_I64 : FERRY_TYPE_I32, m, rnd(2) ? 1 : d2, rnd(2) ? 1 : d3, 1);
        fz_shape(c, td, d0, d1, d2, d3);
        *n = *c;
        f->used[1] = f->used[2] = true;
        f->shares = 2;
        break;
    }
    case FERRY_OP_ADD: case FERRY_OP_SUB: case FERRY_OP_MUL: case FERRY_OP_DIV:
        fz_shape(a, ta, d0, d1, d2, d3);
        fz_shape(b, rnd(2) ? FERRY_TYPE_F32 : ta, rnd(2) ? d0 : 1, rnd(2) ? d1 : 1, rnd(2) ? d2 : 1, d3);
        fz_shape(n, rnd(4) ? ta : FERRY_TYPE_F32, d0, d1, d2, d3);
        f->used[1] = true;
        break;
    case FERRY_OP_ADD_ID: {
        int64_t ex = fz_dim();
        fz_shape(a, FERRY_TYPE_F32, d0, d1, d2, d3);
        fz_shape(b, FERRY_TYPE_F32, d0, ex, 1, 1);
        fz_shape(c, FERRY_TYPE_I32, d1, d2, 1, 1);
        fz_shape(n, FERRY_TYPE_F32, d0, d1, d2, d3);
        f->used[1] = f->used[2] = true;
        break;
    }
    case FERRY_OP_GLU:
        fz_shape(a, ta, rnd(2) ? 2 * d0 : d0, d1, d2, d3);
        if (rnd(2)) {
            fz_shape(b, ta, d0, d1, d2, d3);
            f->used[1] = true;
        }
        fz_shape(n, ta, f->used[1] ? d0 : a->ne[0] / 2, d1, d2, d3);
        n->op_params[0] = (int32_t)rnd(7);
        n->op_params[1] = (int32_t)rnd(2);
        ferry_param_set_f32(n, 2, 1.702f);
        ferry_param_set_f32(n, 3, 7.0f);
        break;
    default: /* UNARY, SQR, SQRT, SCALE, CLAMP */
        fz_shape(a, ta, d0, d1, d2, d3);
        fz_shape(n, rnd(5) ? ta : fz_type(), d0, d1, d2, d3);
        n->op_params[0] = (int32_t)rnd(FERRY_UNARY_COUNT + 2) - 1;
        break;
    }
    for (int i = 0; i < 4; i++)
        if (f->used[i] && i != f->shares) fz_strides(&f->t[i]);
    if (f->shares >= 0) { /* the node is a view of its destination source */
        int64_t keep_ne[4];
        memcpy(keep_ne, n->ne, sizeof keep_ne);
        *n = f->t[f->shares];
        memcpy(n->ne, keep_ne, sizeof keep_ne);
    }
    if (rnd(5) == 0) { /* break one field */
        int i = (int)rnd(4);
        while (!f->used[i]) i = (int)rnd(4);
        struct ferry_tensor *t = &f->t[i];
        switch (rnd(3)) {
        case 0: t->ne[rnd(4)] = fz_dim(); break;
        case 1: t->type = fz_type(); break;
        default: t->nb[rnd(4)] = (size_t)rnd(200); break;
        }
    }
    n->op = op;
    n->flags = FERRY_FLAG_COMPUTE;
    for (int i = 0; i < 3; i++) n->src[i] = f->used[i] ? &f->t[i] : NULL;
}

/* Exactly the validated extent of each tensor, filled with random bytes;
 * small index values so that some are in range. */
static bool fz_alloc(struct fz *f) {
    for (int i = 0; i < 4; i++) {
        if (!f->used[i]) continue;
        struct ferry_tensor *t = &f->t[i];
        size_t bytes;
        if (!ferry_type_valid(t->type) || !ferry_nbytes_checked(t, &bytes)) return false;
        if (bytes > (1u << 22)) return false;
        if (i == 3 && f->shares >= 0 && memcmp(t->nb, f->t[f->shares].nb, sizeof t->nb) == 0 &&
            t->type == f->t[f->shares].type && bytes <= ferry_nbytes(&f->t[f->shares])) {
            t->data = f->t[f->shares].data; /* the node views its destination */
            continue;
        }
        t->data = malloc(bytes ? bytes : 1);
        unsigned char *p = t->data;
        for (size_t k = 0; k < bytes; k++) p[k] = (unsigned char)test_rand_u64(&rng);
        if (t->type == FERRY_TYPE_I32 || t->type == FERRY_TYPE_I64) {
            size_t ts = ferry_type_size(t->type);
            for (size_t k = 0; k + ts <= bytes; k += ts) {
                int64_t v = rnd(14) - 2;
                memcpy(p + k, &v, ts); /* little-endian: the low bytes */
            }
        }
    }
    return true;
}

static void fz_free(struct fz *f) {
    for (int i = 0; i < 4; i++)
        if (f->used[i] && !(i == 3 && f->shares >= 0 && f->t[3].data == f->t[f->shares].data)) free(f->t[i].data);
}

static void test_random_nodes(void) {
    static const enum ferry_op ops[] = {
        FERRY_OP_DUP, FERRY_OP_CONT, FERRY_OP_CPY, FERRY_OP_GET_ROWS, FERRY_OP_SET_ROWS, FERRY_OP_ADD,
        FERRY_OP_SUB, FERRY_OP_MUL, FERRY_OP_DIV, FERRY_OP_ADD_ID, FERRY_OP_GLU, FERRY_OP_UNARY,
        FERRY_OP_SQR, FERRY_OP_SQRT, FERRY_OP_SCALE, FERRY_OP_CLAMP,
    };
    const int nops = (int)(sizeof ops / sizeof ops[0]);
    int ran[16] = { 0 }, bad_rc = 0;
    for (int it = 0; it < 6000; it++) {
        struct fz f;
        int k = it % nops;
        fz_build(&f, ops[k]);
        if (!fz_alloc(&f)) {
            fz_free(&f);
            continue;
        }
        struct ferry_error err = { 0 };
        int rc = run_nth(&f.t[3], 1 + (int)rnd(4), &err);
        if (rc == FERRY_OK) ran[k]++;
        else if (rc != FERRY_ERR_INVALID && rc != FERRY_ERR_UNSUPPORTED && bad_rc++ < 3)
            CHECK(false, "random %s: unexpected code %d (%s)", ferry_op_name(ops[k]), rc, err.msg);
        fz_free(&f);
    }
    CHECK(bad_rc == 0, "random nodes: only clean refusals");
    /* the generator must reach the kernels, not only the checks */
    for (int k = 0; k < nops; k++) CHECK(ran[k] >= 20, "random %s: only %d of its nodes ran", ferry_op_name(ops[k]), ran[k]);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    for (int n = 1; n <= 4; n++) engines[n] = ferry_engine_create(n);
    best_level = ferry_simd_level();
    const char *seed = getenv("FERRY_TEST_SEED"); /* other data, same checks */
    if (seed) rng = strtoull(seed, NULL, 0);
    test_copy_permuted();
    test_copy_into_view();
    test_copy_int();
    test_copy_raw_types();
    test_copy_quant();
    test_copy_reject();
    test_get_rows();
    test_set_rows();
    test_binary();
    test_add_id();
    test_unary();
    test_simple_unary();
    test_glu();
    test_leaky_relu();
    test_empty();
    test_random_nodes();
    for (int n = 1; n <= 4; n++) ferry_engine_destroy(engines[n]);
    return test_summary();
}
