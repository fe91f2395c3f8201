/* MUL_MAT, MUL_MAT_ID and FLASH_ATTN_EXT against independent double-precision
 * references, at every SIMD level the CPU has and several thread counts.
 *
 * The reference is docs/ops.md's "equivalent exact model": weights dequantized with
 * the type's to_float, activations quantized to the vec_dot type with the
 * portable quantizers and dequantized again, products summed in double.
 * Also: odd shapes, broadcasting, permuted/strided operands, thread-count
 * invariance (bit-identical), SIMD kernels and quantizers against the
 * portable ones, out-of-range expert ids, and check() rejecting bad nodes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ops/gemm.h"
#include "ops/simd.h"
#include "ops/vecdot.h"
#include "tensor/blocks.h"
#include "testutil.h"

static uint64_t seed = 0x5eed1234abcdull;

/* ---- data --------------------------------------------------------------------- */

static void put_half(uint8_t *p, float v) {
    const uint16_t h = ferry_fp32_to_fp16(v);
    memcpy(p, &h, 2);
}

/* Types without a quantizer get random bytes with sane f16 scales. */
static void fill_random_blocks(struct ferry_tensor *t) {
    const struct ferry_type_traits *tr = ferry_type_traits(t->type);
    const size_t bytes = ferry_nbytes(t);
    uint8_t *p = t->data;
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)test_rand_u64(&seed);
    for (size_t off = 0; off + tr->type_size <= bytes; off += tr->type_size) {
        uint8_t *b = p + off;
        const float d = test_rand_uniform(&seed, 0.002f, 0.05f), dm = test_rand_uniform(&seed, 0.0f, 0.02f);
        switch (t->type) {
        case FERRY_TYPE_Q2_K: put_half(b + 80, d); put_half(b + 82, dm); break;
        case FERRY_TYPE_Q3_K: put_half(b + 108, d); break;
        case FERRY_TYPE_Q4_K: case FERRY_TYPE_Q5_K: put_half(b, d); put_half(b + 2, dm); break;
        case FERRY_TYPE_Q6_K: put_half(b + 208, d); break;
        case FERRY_TYPE_IQ4_XS: put_half(b, d); break;
        case FERRY_TYPE_TQ1_0: put_half(b + 52, d); break;
        case FERRY_TYPE_TQ2_0: put_half(b + 64, d); break;
        case FERRY_TYPE_NVFP4: for (int k = 0; k < 4; k++) b[k] = (uint8_t)(0x20 + test_rand_u64(&seed) % 0x20); break;
        default: break;
        }
    }
}

static void fill(struct ferry_tensor *t, float lo, float hi) {
    ferry_from_float_fn quantize = ferry_type_traits(t->type)->from_float;
    /* the vec_dot-only types: their fields (s, bsums) must agree with the quants */
    if (t->type == FERRY_TYPE_Q8_1) quantize = ferry_quantize_row_q8_1_x86;
    if (t->type == FERRY_TYPE_Q8_K) quantize = ferry_quantize_row_q8_K;
    if (!quantize) {
        fill_random_blocks(t);
        return;
    }
    float *row = malloc((size_t)t->ne[0] * sizeof(float));
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                for (int64_t i = 0; i < t->ne[0]; i++) row[i] = test_rand_uniform(&seed, lo, hi);
                quantize(row, (char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3], t->ne[0]);
            }
    free(row);
}

/* A tensor sharing base's memory with other ne/nb (a view). */
static struct ferry_tensor view_of(const struct ferry_tensor *base, const int64_t ne[4], const size_t nb[4],
                                   size_t offset) {
    struct ferry_tensor v = *base;
    memcpy(v.ne, ne, sizeof v.ne);
    memcpy(v.nb, nb, sizeof v.nb);
    v.data = (char *)base->data + offset;
    v.op = FERRY_OP_VIEW;
    return v;
}

static struct ferry_tensor permuted(const struct ferry_tensor *base, int a0, int a1, int a2, int a3) {
    const int ax[4] = { a0, a1, a2, a3 };
    struct ferry_tensor v = *base;
    for (int k = 0; k < 4; k++) {
        v.ne[ax[k]] = base->ne[k];
        v.nb[ax[k]] = base->nb[k];
    }
    v.op = FERRY_OP_PERMUTE;
    return v;
}

/* ---- reference ------------------------------------------------------------------ */

/* Row (i1,i2,i3) of t as f32 (dequantized). */
static void row_f32(const struct ferry_tensor *t, int64_t i1, int64_t i2, int64_t i3, float *out) {
    const char *p = (const char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
    ferry_type_traits(t->type)->to_float(p, out, t->ne[0]);
}

/* x rounded through the vec_dot type of weight type wt, as f32. Also returns
 * the converted bytes in raw (for the Q8_1 s field). */
static void through_vec_dot(enum ferry_type wt, const float *x, int64_t k, float *out, void *raw) {
    const int vt = ferry_vec_dot_type(wt);
    switch (vt) {
    case FERRY_TYPE_F32: memcpy(out, x, (size_t)k * 4); return;
    case FERRY_TYPE_F16: for (int64_t i = 0; i < k; i++) out[i] = ferry_fp16_to_fp32(ferry_fp32_to_fp16(x[i])); return;
    case FERRY_TYPE_BF16: for (int64_t i = 0; i < k; i++) out[i] = ferry_bf16_to_fp32(ferry_fp32_to_bf16(x[i])); return;
    case FERRY_TYPE_Q8_0: ferry_quantize_row_q8_0_x86(x, raw, k); break;
    case FERRY_TYPE_Q8_1: ferry_quantize_row_q8_1_x86(x, raw, k); break;
    case FERRY_TYPE_Q8_K: ferry_quantize_row_q8_K(x, raw, k); break;
    default: CHECK(false, "no vec_dot type for %s", ferry_type_name(wt)); return;
    }
    ferry_type_traits(vt)->to_float(raw, out, k);
}

/* dot(A row, B' row) in double. Q4_1/Q5_1 use the f16 s of Q8_1 for the
 * m_a * sum(B') term, as ggml does (docs/ops.md B.14). */
static double ref_dot(enum ferry_type wt, const void *a_raw, const float *a, const float *b, const void *b_raw,
                      int64_t k) {
    double s = 0;
    if (wt == FERRY_TYPE_Q4_1 || wt == FERRY_TYPE_Q5_1) {
        const size_t bs = ferry_type_size(wt);
        for (int64_t blk = 0; blk < k / 32; blk++) {
            uint16_t m, sb;
            memcpy(&m, (const char *)a_raw + blk * bs + 2, 2);
            memcpy(&sb, (const char *)b_raw + blk * sizeof(block_q8_1) + 2, 2);
            const double ma = ferry_fp16_to_fp32(m);
            for (int j = 0; j < 32; j++) s += ((double)a[blk * 32 + j] - ma) * (double)b[blk * 32 + j];
            s += ma * (double)ferry_fp16_to_fp32(sb);
        }
        return s;
    }
    for (int64_t i = 0; i < k; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* dst = A x B as docs/ops.md defines it, in logical order. */
static float *ref_mul_mat(const struct ferry_tensor *a, const struct ferry_tensor *b) {
    const int64_t k = a->ne[0], m = a->ne[1], n = b->ne[1];
    float *out = malloc((size_t)(m * n * b->ne[2] * b->ne[3]) * sizeof(float));
    float *ar = malloc((size_t)k * 4), *br = malloc((size_t)k * 4), *bq = malloc((size_t)k * 4);
    void *braw = malloc((size_t)k * 2 + 1024);
    int64_t o = 0;
    for (int64_t i3 = 0; i3 < b->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < b->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < n; i1++) {
                row_f32(b, i1, i2, i3, br);
                if ((int)b->type == ferry_vec_dot_type(a->type) && b->type != FERRY_TYPE_F32) {
                    memcpy(bq, br, (size_t)k * 4);
                    memcpy(braw, (const char *)b->data + i1 * b->nb[1] + i2 * b->nb[2] + i3 * b->nb[3],
                           ferry_row_size(b->type, k));
                } else {
                    through_vec_dot(a->type, br, k, bq, braw);
                }
                const int64_t a2 = i2 / (b->ne[2] / a->ne[2]), a3 = i3 / (b->ne[3] / a->ne[3]);
                for (int64_t i0 = 0; i0 < m; i0++) {
                    row_f32(a, i0, a2, a3, ar);
                    const void *araw = (const char *)a->data + i0 * a->nb[1] + a2 * a->nb[2] + a3 * a->nb[3];
                    out[o++] = (float)ref_dot(a->type, araw, ar, bq, braw, k);
                }
            }
    free(ar);
    free(br);
    free(bq);
    free(braw);
    return out;
}

/* ---- running nodes ------------------------------------------------------------------- */

static const enum ferry_simd_level levels[] = { FERRY_SIMD_SCALAR, FERRY_SIMD_AVX2, FERRY_SIMD_AVX512 };
static enum ferry_simd_level best_level;
static struct ferry_engine *engines[4]; /* 1..4 threads */

/* Runs node at every level and thread count: each result must be within
 * tol of ref, and all thread counts of a level bit-identical. */
static void run_everywhere(struct ferry_tensor *node, const float *ref, double tol, const char *what) {
    const int64_t n = ferry_nelements(node);
    for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
        if (levels[l] > best_level) break;
        ferry_simd_set_level(levels[l]);
        float *first = NULL;
        for (int t = 0; t < 4; t++) {
            if (t == 2 && n > 100000) continue; /* keep big cases quick */
            struct ferry_error err = { 0 };
            memset(node->data, 0xff, ferry_nbytes(node));
            struct ferry_tensor *nodes[1] = { node };
            const int rc = ferry_engine_compute(engines[t], nodes, 1, &err);
            if (!CHECK(rc == FERRY_OK, "%s: compute failed: %s", what, err.msg)) continue;
            float *out = test_tensor_to_f32(node);
            if (!first) {
                const double nmse = test_nmse(ref, out, n);
                CHECK(nmse <= tol, "%s (%s): nmse %.3g > %.3g", what, ferry_simd_level_name(levels[l]), nmse, tol);
                first = out;
            } else {
                CHECK(memcmp(first, out, (size_t)n * 4) == 0, "%s (%s): %d threads differ from 1", what,
                      ferry_simd_level_name(levels[l]), t + 1);
                free(out);
            }
        }
        free(first);
    }
    ferry_simd_set_level(best_level);
}

static struct ferry_tensor mul_mat_node(struct ferry_tensor *a, struct ferry_tensor *b, struct ferry_tensor *dst) {
    struct ferry_tensor node = *dst;
    node.op = FERRY_OP_MUL_MAT;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = a;
    node.src[1] = b;
    return node;
}

/* A [k, m, a2, a3] of type wt times B [k, n, b2, b3] of type bt. */
static void check_mul_mat_case(enum ferry_type wt, enum ferry_type bt, int64_t k, int64_t m, int64_t n, int64_t a2,
                               int64_t a3, int64_t b2, int64_t b3) {
    struct ferry_tensor *a = test_tensor_new(wt, k, m, a2, a3);
    struct ferry_tensor *b = test_tensor_new(bt, k, n, b2, b3);
    struct ferry_tensor *d = test_tensor_new(FERRY_TYPE_F32, m, n, b2, b3);
    fill(a, -1.0f, 1.0f);
    fill(b, -1.0f, 1.0f);
    struct ferry_tensor node = mul_mat_node(a, b, d);
    float *ref = ref_mul_mat(a, b);
    char what[128];
    snprintf(what, sizeof what, "mul_mat %s x %s k%lld m%lld n%lld [%lld,%lld]x[%lld,%lld]", ferry_type_name(wt),
             ferry_type_name(bt), (long long)k, (long long)m, (long long)n, (long long)a2, (long long)a3,
             (long long)b2, (long long)b3);
    run_everywhere(&node, ref, 1e-10, what);
    free(ref);
    test_tensor_free(a);
    test_tensor_free(b);
    test_tensor_free(d);
}

static const enum ferry_type weight_types[] = {
    FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q4_0, FERRY_TYPE_Q4_1, FERRY_TYPE_Q5_0,
    FERRY_TYPE_Q5_1, FERRY_TYPE_Q8_0, FERRY_TYPE_IQ4_NL, FERRY_TYPE_MXFP4, FERRY_TYPE_NVFP4, FERRY_TYPE_Q1_0,
    FERRY_TYPE_Q2_0, FERRY_TYPE_Q2_K, FERRY_TYPE_Q3_K, FERRY_TYPE_Q4_K, FERRY_TYPE_Q5_K, FERRY_TYPE_Q6_K,
    FERRY_TYPE_IQ4_XS, FERRY_TYPE_TQ1_0, FERRY_TYPE_TQ2_0,
};

static int64_t lcm_block(enum ferry_type wt) {
    const int64_t a = ferry_blck_size(wt), b = ferry_blck_size(ferry_vec_dot_type(wt));
    return a > b ? a : b; /* all block sizes are powers of two */
}

static void test_mul_mat_types(void) {
    for (size_t i = 0; i < sizeof weight_types / sizeof weight_types[0]; i++) {
        const enum ferry_type wt = weight_types[i];
        const int64_t blk = lcm_block(wt);
        const int64_t k1 = blk >= 32 ? blk : 32; /* one block (float types: 32 elements) */
        check_mul_mat_case(wt, FERRY_TYPE_F32, k1, 1, 1, 1, 1, 1, 1);       /* smallest */
        check_mul_mat_case(wt, FERRY_TYPE_F32, 3 * k1, 17, 5, 1, 1, 1, 1);   /* odd rows/cols */
        check_mul_mat_case(wt, FERRY_TYPE_F32, 2 * k1, 7, 3, 2, 1, 4, 3);    /* broadcast dims 2, 3 */
        check_mul_mat_case(wt, FERRY_TYPE_F32, 8 * k1, 33, 1, 1, 1, 1, 1);   /* matrix x vector */
        /* src1 already in the vec_dot type */
        const int vt = ferry_vec_dot_type(wt);
        if (vt != FERRY_TYPE_F32) check_mul_mat_case(wt, (enum ferry_type)vt, 2 * k1, 9, 4, 1, 1, 1, 1);
    }
    /* float rows whose length is not a multiple of any SIMD width */
    check_mul_mat_case(FERRY_TYPE_F32, FERRY_TYPE_F32, 37, 5, 3, 1, 1, 1, 1);
    check_mul_mat_case(FERRY_TYPE_F16, FERRY_TYPE_F32, 45, 13, 2, 1, 1, 1, 1);
    check_mul_mat_case(FERRY_TYPE_BF16, FERRY_TYPE_F32, 1, 3, 2, 1, 1, 1, 1);
    check_mul_mat_case(FERRY_TYPE_F16, FERRY_TYPE_F16, 71, 4, 6, 1, 1, 1, 1);
    /* more columns than rows: the split goes along columns */
    check_mul_mat_case(FERRY_TYPE_Q4_0, FERRY_TYPE_F32, 64, 3, 40, 1, 1, 1, 1);
    check_mul_mat_case(FERRY_TYPE_Q8_0, FERRY_TYPE_F32, 4096, 64, 1, 1, 1, 1, 1);
}

/* Permuted / strided operands and a strided output. */
static void test_mul_mat_layouts(void) {
    const enum ferry_type wts[] = { FERRY_TYPE_F16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_K };
    for (size_t i = 0; i < 3; i++) {
        const int64_t k = lcm_block(wts[i]) < 64 ? 64 : lcm_block(wts[i]);
        /* KV-cache-like A: base [k, heads=2, cells=10], permute(0,2,1,3) -> [k, 10, 2] */
        struct ferry_tensor *abase = test_tensor_new(wts[i], k, 2, 10, 1);
        /* B: base [k + 8, 4, 3] viewed with k of each padded row, permuted -> [k, 3, 4] */
        struct ferry_tensor *bbase = test_tensor_new(FERRY_TYPE_F32, k + 8, 4, 3, 1);
        fill(abase, -1, 1);
        fill(bbase, -1, 1);
        struct ferry_tensor a = permuted(abase, 0, 2, 1, 3);
        const int64_t bne[4] = { k, 4, 3, 1 };
        const size_t bnb[4] = { 4, bbase->nb[1], bbase->nb[2], bbase->nb[3] };
        struct ferry_tensor bv = view_of(bbase, bne, bnb, 16);
        struct ferry_tensor b = permuted(&bv, 0, 2, 1, 3); /* [k, 3, 4]: batch 4 over A's 2 */
        struct ferry_tensor *dd = test_tensor_new(FERRY_TYPE_F32, 10, 3, 4, 1);
        struct ferry_tensor node = mul_mat_node(&a, &b, dd);
        float *ref = ref_mul_mat(&a, &b);
        char what[64];
        snprintf(what, sizeof what, "mul_mat permuted %s", ferry_type_name(wts[i]));
        run_everywhere(&node, ref, 1e-10, what);
        free(ref);
        test_tensor_free(abase);
        test_tensor_free(bbase);
        test_tensor_free(dd);
    }
    /* output with padded rows: only the node's own elements are written */
    struct ferry_tensor *a = test_tensor_new(FERRY_TYPE_Q4_0, 64, 6, 1, 1);
    struct ferry_tensor *b = test_tensor_new(FERRY_TYPE_F32, 64, 4, 1, 1);
    struct ferry_tensor *big = test_tensor_new(FERRY_TYPE_F32, 8, 4, 1, 1);
    fill(a, -1, 1);
    fill(b, -1, 1);
    const int64_t ne[4] = { 6, 4, 1, 1 };
    const size_t nb[4] = { 4, 32, 128, 128 };
    struct ferry_tensor out = view_of(big, ne, nb, 0);
    struct ferry_tensor node = mul_mat_node(a, b, &out);
    float *ref = ref_mul_mat(a, b);
    run_everywhere(&node, ref, 1e-10, "mul_mat strided output");
    for (int i = 0; i < 4; i++) memset((char *)big->data + i * 32 + 24, 0x11, 8);
    struct ferry_error err = { 0 };
    struct ferry_tensor *nodes[1] = { &node };
    ferry_engine_compute(engines[1], nodes, 1, &err);
    bool untouched = true;
    for (int i = 0; i < 4; i++)
        for (int j = 24; j < 32; j++) untouched &= ((uint8_t *)big->data)[i * 32 + j] == 0x11;
    CHECK(untouched, "mul_mat wrote outside its strided output");
    free(ref);
    test_tensor_free(a);
    test_tensor_free(b);
    test_tensor_free(big);
}

/* Op hint 1: the Walsh-Hadamard transform instead of reading src0. */
static void test_hadamard(void) {
    const int64_t k = 64, n = 3;
    struct ferry_tensor *a = test_tensor_new(FERRY_TYPE_F32, k, k, 1, 1); /* left zero: must be ignored */
    struct ferry_tensor *b = test_tensor_new(FERRY_TYPE_F32, k, n, 1, 1);
    struct ferry_tensor *d = test_tensor_new(FERRY_TYPE_F32, k, n, 1, 1);
    fill(b, -1, 1);
    struct ferry_tensor node = mul_mat_node(a, b, d);
    node.op_params[1] = 1;
    float *ref = malloc((size_t)(k * n) * 4);
    const float *x = b->data;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < k; i++) {
            double s = 0; /* Sylvester H[i][c] = (-1)^popcount(i & c) */
            for (int64_t c = 0; c < k; c++) s += (__builtin_popcountll((uint64_t)(i & c)) & 1 ? -1.0 : 1.0) * x[j * k + c];
            ref[j * k + i] = (float)(s / sqrt((double)k));
        }
    run_everywhere(&node, ref, 1e-12, "mul_mat hadamard hint");
    free(ref);
    struct ferry_error err = { 0 };
    struct ferry_tensor *a2 = test_tensor_new(FERRY_TYPE_F32, 48, 48, 1, 1), *b2 = test_tensor_new(FERRY_TYPE_F32, 48, 1, 1, 1);
    struct ferry_tensor *d2 = test_tensor_new(FERRY_TYPE_F32, 48, 1, 1, 1);
    struct ferry_tensor bad = mul_mat_node(a2, b2, d2);
    bad.op_params[1] = 1;
    CHECK(ferry_engine_check_node(&bad, &err) == FERRY_ERR_INVALID, "hadamard needs a power of two: %s", err.msg);
    test_tensor_free(a);
    test_tensor_free(b);
    test_tensor_free(d);
    test_tensor_free(a2);
    test_tensor_free(b2);
    test_tensor_free(d2);
}

/* ---- MUL_MAT_ID --------------------------------------------------------------------- */

static float *ref_mul_mat_id(const struct ferry_tensor *as, const struct ferry_tensor *b, const int32_t *ids,
                             int64_t n_used, int64_t n_tokens) {
    const int64_t k = as->ne[0], m = as->ne[1];
    float *out = malloc((size_t)(m * n_used * n_tokens) * 4);
    float *ar = malloc((size_t)k * 4), *br = malloc((size_t)k * 4), *bq = malloc((size_t)k * 4);
    void *braw = malloc((size_t)k * 2 + 1024);
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t e = 0; e < n_used; e++) {
            row_f32(b, e % b->ne[1], t, 0, br);
            through_vec_dot(as->type, br, k, bq, braw);
            const int32_t x = ids[t * n_used + e];
            for (int64_t i0 = 0; i0 < m; i0++) {
                row_f32(as, i0, x, 0, ar);
                const void *araw = (const char *)as->data + i0 * as->nb[1] + x * as->nb[2];
                out[(t * n_used + e) * m + i0] = (float)ref_dot(as->type, araw, ar, bq, braw, k);
            }
        }
    free(ar);
    free(br);
    free(bq);
    free(braw);
    return out;
}

static void check_mul_mat_id_case(enum ferry_type wt, int64_t k, int64_t m, int64_t n_expert, int64_t n_used,
                                  int64_t n_b1, int64_t n_tokens) {
    struct ferry_tensor *as = test_tensor_new(wt, k, m, n_expert, 1);
    struct ferry_tensor *b = test_tensor_new(FERRY_TYPE_F32, k, n_b1, n_tokens, 1);
    struct ferry_tensor *ids = test_tensor_new(FERRY_TYPE_I32, n_used, n_tokens, 1, 1);
    struct ferry_tensor *d = test_tensor_new(FERRY_TYPE_F32, m, n_used, n_tokens, 1);
    fill(as, -1, 1);
    fill(b, -1, 1);
    int32_t *id = ids->data;
    for (int64_t i = 0; i < n_used * n_tokens; i++) id[i] = (int32_t)(test_rand_u64(&seed) % (uint64_t)n_expert);
    struct ferry_tensor node = *d;
    node.op = FERRY_OP_MUL_MAT_ID;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = as;
    node.src[1] = b;
    node.src[2] = ids;
    float *ref = ref_mul_mat_id(as, b, id, n_used, n_tokens);
    char what[96];
    snprintf(what, sizeof what, "mul_mat_id %s k%lld m%lld e%lld/%lld b1=%lld t%lld", ferry_type_name(wt),
             (long long)k, (long long)m, (long long)n_used, (long long)n_expert, (long long)n_b1, (long long)n_tokens);
    run_everywhere(&node, ref, 1e-10, what);

    /* an out-of-range id is reported, never followed */
    const int32_t bad[] = { (int32_t)n_expert, -1, INT32_MAX, INT32_MIN };
    for (int i = 0; i < 4; i++) {
        id[(n_used * n_tokens) / 2] = bad[i];
        for (int t = 0; t < 4; t++) {
            struct ferry_error err = { 0 };
            struct ferry_tensor *nodes[1] = { &node };
            CHECK(ferry_engine_compute(engines[t], nodes, 1, &err) == FERRY_ERR_INVALID,
                  "%s: id %d accepted (%d threads)", what, (int)bad[i], t + 1);
        }
    }
    free(ref);
    test_tensor_free(as);
    test_tensor_free(b);
    test_tensor_free(ids);
    test_tensor_free(d);
}

static void test_mul_mat_id(void) {
    check_mul_mat_id_case(FERRY_TYPE_F32, 32, 16, 4, 2, 2, 3);
    check_mul_mat_id_case(FERRY_TYPE_Q4_0, 64, 16, 4, 2, 2, 3);
    check_mul_mat_id_case(FERRY_TYPE_MXFP4, 64, 24, 8, 4, 1, 5);
    check_mul_mat_id_case(FERRY_TYPE_Q4_K, 256, 8, 6, 3, 3, 4);
    check_mul_mat_id_case(FERRY_TYPE_Q6_K, 512, 33, 16, 4, 1, 1); /* decode: one token */
    check_mul_mat_id_case(FERRY_TYPE_F16, 40, 7, 3, 3, 1, 2);
    check_mul_mat_id_case(FERRY_TYPE_Q5_1, 96, 5, 2, 2, 2, 7);
    /* prefill: experts with enough slots for GEMM tiles */
    check_mul_mat_id_case(FERRY_TYPE_Q4_0, 288, 13, 3, 2, 1, 16);
    check_mul_mat_id_case(FERRY_TYPE_Q8_0, 288, 9, 2, 2, 2, 12);
}

/* ---- FLASH_ATTN_EXT ---------------------------------------------------------------------- */

struct fa_case {
    const char *name;
    enum ferry_type kt, vt;
    int64_t dk, dv, n_q, n_kv, h, h_kv, b;
    bool mask, sinks, masked_row;
    float scale, max_bias, softcap;
    int64_t hidden_tail; /* last positions hidden from every query and filled with NaN (unused cache cells) */
};

static float alibi_slope(float max_bias, int64_t h, int64_t n_head) {
    if (max_bias <= 0) return 1.0f;
    int64_t l2 = 1;
    while (l2 * 2 <= n_head) l2 *= 2;
    const double m0 = pow(2.0, -max_bias / (double)l2), m1 = pow(2.0, -(max_bias / 2.0) / (double)l2);
    return (float)(h < l2 ? pow(m0, (double)(h + 1)) : pow(m1, (double)(2 * (h - l2) + 1)));
}

/* Two-pass softmax in double over the same rounded operands. */
static float *ref_flash_attn(const struct fa_case *c, const struct ferry_tensor *q, const struct ferry_tensor *k,
                             const struct ferry_tensor *v, const struct ferry_tensor *mask,
                             const struct ferry_tensor *sinks) {
    float *out = calloc((size_t)(c->dv * c->h * c->n_q * c->b), 4);
    float *qr = malloc((size_t)c->dk * 4), *qq = malloc((size_t)c->dk * 4), *kr = malloc((size_t)c->dk * 4);
    float *vr = malloc((size_t)c->dv * 4);
    double *w = malloc((size_t)c->n_kv * sizeof(double)), *acc = malloc((size_t)c->dv * sizeof(double));
    void *raw = malloc((size_t)c->dk * 2 + 1024);
    for (int64_t b = 0; b < c->b; b++)
        for (int64_t iq = 0; iq < c->n_q; iq++)
            for (int64_t h = 0; h < c->h; h++) {
                row_f32(q, iq, h, b, qr);
                through_vec_dot(c->kt, qr, c->dk, qq, raw);
                const int64_t hk = h / (c->h / c->h_kv);
                const float slope = alibi_slope(c->max_bias, h, c->h);
                double mx = -INFINITY;
                for (int64_t j = 0; j < c->n_kv; j++) {
                    double mv = 0;
                    if (mask) {
                        uint16_t mh;
                        memcpy(&mh, (const char *)mask->data + iq * mask->nb[1] + j * 2, 2);
                        mv = (double)slope * ferry_fp16_to_fp32(mh);
                    }
                    if (mv == -INFINITY) {
                        w[j] = -INFINITY;
                        continue;
                    }
                    row_f32(k, j, hk, b, kr);
                    double s = 0;
                    for (int64_t i = 0; i < c->dk; i++) s += (double)kr[i] * qq[i];
                    s *= c->scale;
                    if (c->softcap != 0) s = c->softcap * tanh(s / c->softcap);
                    w[j] = s + mv;
                    if (w[j] > mx) mx = w[j];
                }
                const double sink = sinks ? ((const float *)sinks->data)[h] : -INFINITY;
                if (sink > mx) mx = sink;
                double sum = sinks ? exp(sink - mx) : 0;
                for (int64_t i = 0; i < c->dv; i++) acc[i] = 0;
                for (int64_t j = 0; j < c->n_kv; j++) {
                    if (w[j] == -INFINITY) continue;
                    const double e = exp(w[j] - mx);
                    sum += e;
                    row_f32(v, j, hk, b, vr);
                    for (int64_t i = 0; i < c->dv; i++) acc[i] += e * vr[i];
                }
                float *o = out + ((b * c->n_q + iq) * c->h + h) * c->dv;
                for (int64_t i = 0; i < c->dv; i++) o[i] = sum == 0 || mx == -INFINITY ? 0.0f : (float)(acc[i] / sum);
            }
    free(qr);
    free(qq);
    free(kr);
    free(vr);
    free(w);
    free(acc);
    free(raw);
    return out;
}

static void check_flash_attn_case(const struct fa_case *c) {
    /* q as llama builds it: base [dk, h, n_q, b] permuted to [dk, n_q, h, b] */
    struct ferry_tensor *qbase = test_tensor_new(FERRY_TYPE_F32, c->dk, c->h, c->n_q, c->b);
    struct ferry_tensor *k = test_tensor_new(c->kt, c->dk, c->n_kv, c->h_kv, c->b);
    struct ferry_tensor *v = test_tensor_new(c->vt, c->dv, c->n_kv, c->h_kv, c->b);
    struct ferry_tensor *mask = c->mask ? test_tensor_new(FERRY_TYPE_F16, c->n_kv, c->n_q + 3, 1, 1) : NULL;
    struct ferry_tensor *sinks = c->sinks ? test_tensor_new(FERRY_TYPE_F32, c->h, 1, 1, 1) : NULL;
    struct ferry_tensor *d = test_tensor_new(FERRY_TYPE_F32, c->dv, c->h, c->n_q, c->b);
    fill(qbase, -1, 1);
    fill(k, -1, 1);
    fill(v, -1, 1);
    if (mask) { /* causal over the last n_q positions, plus random biases */
        uint16_t *mh = mask->data;
        for (int64_t i = 0; i < mask->ne[1]; i++)
            for (int64_t j = 0; j < c->n_kv; j++) {
                const bool hidden = j > c->n_kv - c->n_q + i || (c->masked_row && i == 0) ||
                                    j >= c->n_kv - c->hidden_tail;
                mh[i * c->n_kv + j] = ferry_fp32_to_fp16(hidden ? -INFINITY : test_rand_uniform(&seed, -1, 0));
            }
    }
    if (sinks) fill(sinks, -2, 2);
    for (int64_t hk = 0; hk < c->h_kv; hk++) /* garbage where nobody looks: must not leak */
        for (int64_t j = c->n_kv - c->hidden_tail; j < c->n_kv; j++) {
            memset((char *)k->data + j * k->nb[1] + hk * k->nb[2], 0xff, ferry_row_size(c->kt, c->dk));
            memset((char *)v->data + j * v->nb[1] + hk * v->nb[2], 0xff, ferry_row_size(c->vt, c->dv));
        }
    struct ferry_tensor q = permuted(qbase, 0, 2, 1, 3);
    struct ferry_tensor node = *d;
    node.op = FERRY_OP_FLASH_ATTN_EXT;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = &q;
    node.src[1] = k;
    node.src[2] = v;
    node.src[3] = mask;
    node.src[4] = sinks;
    ferry_param_set_f32(&node, 0, c->scale);
    ferry_param_set_f32(&node, 1, c->max_bias);
    ferry_param_set_f32(&node, 2, c->softcap);
    float *ref = ref_flash_attn(c, &q, k, v, mask, sinks);
    char what[96];
    snprintf(what, sizeof what, "flash_attn %s", c->name);
    run_everywhere(&node, ref, 1e-10, what);
    free(ref);
    test_tensor_free(qbase);
    test_tensor_free(k);
    test_tensor_free(v);
    test_tensor_free(mask);
    test_tensor_free(sinks);
    test_tensor_free(d);
}

static void test_flash_attn(void) {
    const struct fa_case cases[] = {
        { "f16 mask", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 64, 4, 32, 4, 4, 1, true, false, false, 0.125f, 0, 0, 0 },
        { "f16 gqa", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 64, 3, 40, 8, 2, 1, true, false, false, 0.125f, 0, 0, 0 },
        { "f16 sinks", FERRY_TYPE_F16, FERRY_TYPE_F16, 32, 32, 2, 16, 4, 4, 1, true, true, false, 0.2f, 0, 0, 0 },
        { "f16 alibi", FERRY_TYPE_F16, FERRY_TYPE_F16, 32, 32, 3, 20, 5, 5, 1, true, false, false, 0.2f, 8.0f, 0, 0 },
        { "f16 softcap", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 64, 2, 24, 2, 1, 1, true, false, false, 0.125f, 0, 20.0f, 0 },
        { "f16 no mask", FERRY_TYPE_F16, FERRY_TYPE_F16, 128, 128, 1, 300, 4, 2, 1, false, false, false, 0.09f, 0, 0, 0 },
        { "dk != dv", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 32, 3, 16, 2, 2, 1, true, false, false, 0.125f, 0, 0, 0 },
        { "odd dv", FERRY_TYPE_F16, FERRY_TYPE_F32, 40, 13, 2, 9, 2, 2, 1, true, false, false, 0.15f, 0, 0, 0 },
        { "q8_0 kv", FERRY_TYPE_Q8_0, FERRY_TYPE_Q8_0, 64, 64, 2, 32, 4, 4, 1, true, false, false, 0.125f, 0, 0, 0 },
        { "q4_0 k, f16 v", FERRY_TYPE_Q4_0, FERRY_TYPE_F16, 64, 64, 2, 32, 4, 2, 1, true, false, false, 0.125f, 0, 0, 0 },
        { "f32 kv batch", FERRY_TYPE_F32, FERRY_TYPE_F32, 32, 32, 2, 12, 2, 1, 2, true, false, false, 0.2f, 0, 0, 0 },
        { "bf16 k, q4_K v", FERRY_TYPE_BF16, FERRY_TYPE_Q4_K, 64, 256, 2, 8, 2, 2, 1, false, false, false, 0.1f, 0, 0, 0 },
        { "f16 mqa, odd dims", FERRY_TYPE_F16, FERRY_TYPE_F16, 40, 20, 3, 37, 16, 1, 1, true, false, false, 0.15f, 0, 0, 0 },
        { "f16 long kv", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 64, 1, 1000, 4, 2, 1, true, true, false, 0.125f, 0, 0, 0 },
        { "nan in hidden cells", FERRY_TYPE_F16, FERRY_TYPE_F16, 64, 64, 2, 40, 8, 2, 1, true, false, false, 0.125f, 0, 0, 7 },
        { "nan in hidden cells q8_0", FERRY_TYPE_Q8_0, FERRY_TYPE_Q8_0, 64, 64, 2, 40, 4, 4, 1, true, true, false, 0.125f, 0, 0, 5 },
        { "masked row", FERRY_TYPE_F16, FERRY_TYPE_F16, 32, 32, 2, 8, 2, 2, 1, true, false, true, 0.2f, 0, 0, 0 },
        { "masked row + sinks", FERRY_TYPE_F16, FERRY_TYPE_F16, 32, 32, 2, 8, 2, 2, 1, true, true, true, 0.2f, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_flash_attn_case(&cases[i]);
}

/* ---- SIMD kernels against the portable ones ----------------------------------------------- */

static void q8_K_ref(const void *x, void *y, int64_t n) { ferry_quantize_row_q8_K(x, y, n); }

static void test_simd_kernels(void) {
    if (best_level < FERRY_SIMD_AVX2) {
        printf("no AVX2: SIMD kernel comparison skipped\n");
        return;
    }
    const int64_t k = 4096 + 256;
    float *x = malloc((size_t)k * 4);
    for (int64_t i = 0; i < k; i++) x[i] = test_rand_uniform(&seed, -3, 3);
    x[5] = 0; x[40] = -0.0f; /* a zero and a block with a tie-prone value */
    for (int i = 64; i < 96; i++) x[i] = 0; /* an all-zero block */
    for (int i = 96; i < 128; i++) x[i] = (float)(i - 112) * 0.5f; /* exact .5 products */
    /* converters: the same bytes as the portable ones */
    struct { const char *name; ferry_prepare_fn simd, ref; size_t size; } conv[] = {
        { "q8_0", ferry_prepare_q8_0_avx2, ferry_prepare_q8_0, (size_t)k + (size_t)k / 32 * 8 },
        { "q8_1", ferry_prepare_q8_1_avx2, ferry_prepare_q8_1, (size_t)k + (size_t)k / 32 * 8 },
        { "q8_K", ferry_quantize_row_q8_K_avx2, q8_K_ref, ferry_row_size(FERRY_TYPE_Q8_K, k) },
        { "f16", ferry_prepare_f16_avx2, ferry_prepare_f16, (size_t)k * 4 },
        { "bf16", ferry_prepare_bf16_avx2, ferry_prepare_bf16, (size_t)k * 4 },
    };
    for (size_t i = 0; i < sizeof conv / sizeof conv[0]; i++) {
        uint8_t *a = calloc(1, conv[i].size), *b = calloc(1, conv[i].size);
        conv[i].simd(x, a, k);
        conv[i].ref(x, b, k);
        CHECK(memcmp(a, b, conv[i].size) == 0, "SIMD %s converter differs from the portable one", conv[i].name);
        free(a);
        free(b);
    }
    /* the prepared Q8_0 row holds exactly ggml's x86 quantization */
    {
        const int64_t nb = k / 32;
        block_q8_0 *blocks = malloc((size_t)nb * sizeof *blocks);
        uint8_t *prep = malloc(ferry_vec_dot_row_size(FERRY_TYPE_Q4_0, k));
        ferry_quantize_row_q8_0_x86(x, blocks, k);
        ferry_prepare_q8_0(x, prep, k);
        const struct ferry_q8_row r = ferry_q8_row(prep, k);
        bool same = true;
        for (int64_t b = 0; b < nb; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += blocks[b].qs[j];
            same &= memcmp(r.q + 32 * b, blocks[b].qs, 32) == 0 && r.d[b] == ferry_fp16_to_fp32(blocks[b].d) &&
                    r.s[b] == r.d[b] * (float)sum;
        }
        CHECK(same, "prepared q8_0 row differs from ggml's blocks");
        free(blocks);
        free(prep);
    }
    /* dot products: each level close to the portable result */
    for (size_t t = 0; t < sizeof weight_types / sizeof weight_types[0]; t++) {
        const enum ferry_type wt = weight_types[t];
        struct ferry_tensor *w = test_tensor_new(wt, k, 8, 1, 1);
        fill(w, -1, 1);
        struct ferry_vec_dot ref;
        ferry_vec_dot_get(wt, FERRY_SIMD_SCALAR, &ref);
        void *y = malloc(ferry_vec_dot_row_size(wt, k));
        if (ref.from_f32) ref.from_f32(x, y, k);
        else memcpy(y, x, (size_t)k * 4);
        /* the scale of the rounding: sum |a_i * y_i| (results may cancel) */
        float *ya = malloc((size_t)k * 4), *wa = malloc((size_t)k * 4);
        void *raw = malloc((size_t)k * 2 + 1024);
        through_vec_dot(wt, x, k, ya, raw);
        free(raw);
        for (size_t l = 1; l < 3 && levels[l] <= best_level; l++) {
            struct ferry_vec_dot vd;
            ferry_vec_dot_get(wt, levels[l], &vd);
            for (int r = 0; r < 8; r++) {
                const char *row = (const char *)w->data + r * w->nb[1];
                ferry_type_traits(wt)->to_float(row, wa, k);
                double mag = 0;
                for (int64_t i = 0; i < k; i++) mag += fabs((double)wa[i] * ya[i]);
                float s_ref, s;
                ref.dot(k, &s_ref, row, y);
                vd.dot(k, &s, row, y);
                CHECK(fabs((double)s - s_ref) <= 1e-6 * mag, "%s dot (%s) %.9g vs portable %.9g (scale %.3g)",
                      ferry_type_name(wt), ferry_simd_level_name(levels[l]), s, s_ref, mag);
            }
        }
        free(ya);
        free(wa);
        free(y);
        test_tensor_free(w);
    }
    /* AVX-512 kernels directly: with and without VNNI, whichever the level picked */
    if (best_level >= FERRY_SIMD_AVX512) {
        const bool vnni = __builtin_cpu_supports("avx512vnni");
        struct { const char *name; enum ferry_type t; ferry_vec_dot_fn f; bool needs_vnni; } k512[] = {
            { "q4_0 avx512", FERRY_TYPE_Q4_0, ferry_vec_dot_q4_0_avx512, false },
            { "q8_0 avx512", FERRY_TYPE_Q8_0, ferry_vec_dot_q8_0_avx512, false },
            { "q4_0 avx512 vnni", FERRY_TYPE_Q4_0, ferry_vec_dot_q4_0_avx512_vnni, true },
            { "q8_0 avx512 vnni", FERRY_TYPE_Q8_0, ferry_vec_dot_q8_0_avx512_vnni, true },
        };
        const int64_t lens[] = { 32, 224, 256, k };
        for (size_t i = 0; i < sizeof k512 / sizeof k512[0]; i++) {
            if (k512[i].needs_vnni && !vnni) continue;
            for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
                const int64_t n = lens[li];
                struct ferry_tensor *w = test_tensor_new(k512[i].t, n, 4, 1, 1);
                fill(w, -1, 1);
                struct ferry_vec_dot ref;
                ferry_vec_dot_get(k512[i].t, FERRY_SIMD_SCALAR, &ref);
                void *y = malloc(ferry_vec_dot_row_size(k512[i].t, n));
                ref.from_f32(x, y, n);
                for (int r = 0; r < 4; r++) {
                    const char *row = (const char *)w->data + r * w->nb[1];
                    float s_ref, s;
                    ref.dot(n, &s_ref, row, y);
                    k512[i].f(n, &s, row, y);
                    CHECK(fabsf(s - s_ref) <= 1e-5f * (1.0f + fabsf(s_ref)) * sqrtf((float)n), "%s n=%lld: %.9g vs %.9g",
                          k512[i].name, (long long)n, s, s_ref);
                }
                free(y);
                test_tensor_free(w);
            }
        }
    }
    free(x);
}

/* ---- GEMM tiles ---------------------------------------------------------------------------------
 *
 * A tile must give every element bit for bit as the dot product kernel of
 * its type and level does (gemm.h): checked on the kernels directly, at
 * lengths with a tail after the last group of eight blocks and across the
 * tiles' K chunks, and through the engine, where edges and thread splits
 * mix tiles with single dot products. */

/* n elements per row: rows weight rows of type wt times cols prepared
 * activation rows, through tile and through dot; true when all agree. */
static bool tile_matches_dot(enum ferry_type wt, int64_t n, ferry_gemm_fn tile, int rows, int cols,
                             ferry_vec_dot_fn dot, ferry_prepare_fn prepare) {
    struct ferry_tensor *w = test_tensor_new(wt, n, rows, 1, 1);
    fill(w, -1, 1);
    const size_t ysize = ferry_vec_dot_row_size(wt, n);
    uint8_t *ys = aligned_alloc(64, ysize * (size_t)cols);
    float *x = malloc((size_t)n * 4), got[64], want[64];
    const void *xp[8], *yp[8];
    for (int j = 0; j < cols; j++) {
        for (int64_t i = 0; i < n; i++) x[i] = test_rand_uniform(&seed, -2, 2);
        prepare(x, ys + (size_t)j * ysize, n);
        yp[j] = ys + (size_t)j * ysize;
    }
    for (int i = 0; i < rows; i++) xp[i] = (const char *)w->data + i * w->nb[1];
    tile(n, xp, yp, got);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dot(n, &want[i * cols + j], xp[i], yp[j]);
    const bool same = memcmp(got, want, (size_t)(rows * cols) * sizeof(float)) == 0;
    free(x);
    free(ys);
    test_tensor_free(w);
    return same;
}

static void test_gemm_tiles(void) {
    if (best_level < FERRY_SIMD_AVX2) {
        printf("no AVX2: GEMM tiles skipped\n");
        return;
    }
    const bool vnni = best_level >= FERRY_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni");
    struct {
        const char *name;
        enum ferry_type t;
        ferry_gemm_fn tile;
        int rows, cols;
        ferry_vec_dot_fn dot;
        enum ferry_simd_level level;
        bool needs_vnni;
    } k[] = {
        { "q4_0 avx2", FERRY_TYPE_Q4_0, ferry_gemm_q4_0_avx2, 2, 4, ferry_vec_dot_q4_0_avx2, FERRY_SIMD_AVX2, false },
        { "q8_0 avx2", FERRY_TYPE_Q8_0, ferry_gemm_q8_0_avx2, 2, 4, ferry_vec_dot_q8_0_avx2, FERRY_SIMD_AVX2, false },
        { "iq4_nl avx2", FERRY_TYPE_IQ4_NL, ferry_gemm_iq4_nl_avx2, 2, 4, ferry_vec_dot_iq4_nl_avx2, FERRY_SIMD_AVX2, false },
        { "mxfp4 avx2", FERRY_TYPE_MXFP4, ferry_gemm_mxfp4_avx2, 2, 4, ferry_vec_dot_mxfp4_avx2, FERRY_SIMD_AVX2, false },
        { "q4_K avx2", FERRY_TYPE_Q4_K, ferry_gemm_q4_K_avx2, 2, 4, ferry_vec_dot_q4_K_avx2, FERRY_SIMD_AVX2, false },
        { "q6_K avx2", FERRY_TYPE_Q6_K, ferry_gemm_q6_K_avx2, 2, 4, ferry_vec_dot_q6_K_avx2, FERRY_SIMD_AVX2, false },
        { "q4_0 avx512", FERRY_TYPE_Q4_0, ferry_gemm_q4_0_avx512, 4, 6, ferry_vec_dot_q4_0_avx512, FERRY_SIMD_AVX512, false },
        { "q8_0 avx512", FERRY_TYPE_Q8_0, ferry_gemm_q8_0_avx512, 4, 6, ferry_vec_dot_q8_0_avx512, FERRY_SIMD_AVX512, false },
        { "q4_0 avx512 vnni", FERRY_TYPE_Q4_0, ferry_gemm_q4_0_avx512_vnni, 4, 6, ferry_vec_dot_q4_0_avx512_vnni,
          FERRY_SIMD_AVX512, true },
        { "q8_0 avx512 vnni", FERRY_TYPE_Q8_0, ferry_gemm_q8_0_avx512_vnni, 4, 6, ferry_vec_dot_q8_0_avx512_vnni,
          FERRY_SIMD_AVX512, true },
        /* the K-quants' tiles at AVX-512 reproduce their AVX2 dot products */
        { "q4_K avx512", FERRY_TYPE_Q4_K, ferry_gemm_q4_K_avx512, 2, 8, ferry_vec_dot_q4_K_avx2, FERRY_SIMD_AVX512, false },
        { "q6_K avx512", FERRY_TYPE_Q6_K, ferry_gemm_q6_K_avx512, 4, 8, ferry_vec_dot_q6_K_avx2, FERRY_SIMD_AVX512, false },
        { "q4_K avx512 vnni", FERRY_TYPE_Q4_K, ferry_gemm_q4_K_avx512_vnni, 2, 8, ferry_vec_dot_q4_K_avx2,
          FERRY_SIMD_AVX512, true },
        { "q6_K avx512 vnni", FERRY_TYPE_Q6_K, ferry_gemm_q6_K_avx512_vnni, 4, 8, ferry_vec_dot_q6_K_avx2,
          FERRY_SIMD_AVX512, true },
    };
    /* one block; a tail only; groups and a tail; K chunks (8 groups each), a part chunk and a tail */
    const int64_t lens[] = { 32, 224, 256, 288, 2048 + 96, 4096 + 256 + 96 };
    /* K-quant rows are whole super-blocks: one, a few, many */
    const int64_t k_lens[] = { 256, 768, 4096 + 256 };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        if (k[i].level > best_level || (k[i].needs_vnni && !vnni)) continue;
        const bool kq = k[i].t == FERRY_TYPE_Q4_K || k[i].t == FERRY_TYPE_Q6_K;
        const int64_t *ls = kq ? k_lens : lens;
        const size_t nl = kq ? sizeof k_lens / sizeof k_lens[0] : sizeof lens / sizeof lens[0];
        for (size_t l = 0; l < nl; l++)
            CHECK(tile_matches_dot(k[i].t, ls[l], k[i].tile, k[i].rows, k[i].cols, k[i].dot,
                                   kq ? q8_K_ref : ferry_prepare_q8_0),
                  "%s tile differs from its dot product at n=%lld", k[i].name, (long long)ls[l]);
    }
    /* every type and level: the tile ferry_gemm_get picks matches the dot product it picks */
    for (size_t t = 0; t < sizeof weight_types / sizeof weight_types[0]; t++)
        for (size_t l = 0; l < 3 && levels[l] <= best_level; l++) {
            struct ferry_gemm g;
            struct ferry_vec_dot vd;
            if (!ferry_gemm_get(weight_types[t], levels[l], &g)) continue;
            ferry_vec_dot_get(weight_types[t], levels[l], &vd);
            CHECK(g.rows <= FERRY_GEMM_MAX_SIDE && g.cols <= FERRY_GEMM_MAX_SIDE && g.rows * g.cols <= FERRY_GEMM_MAX_TILE,
                  "%s tile too big", ferry_type_name(weight_types[t]));
            CHECK(tile_matches_dot(weight_types[t], lcm_block(weight_types[t]) == 256 ? 768 : 288, g.tile, g.rows, g.cols, vd.dot, vd.from_f32),
                  "%s (%s): the picked tile differs from the picked dot product", ferry_type_name(weight_types[t]),
                  ferry_simd_level_name(levels[l]));
        }
}

/* Through the engine: every element of A x B exactly the level's dot
 * product of A's row and B's prepared row, at every thread count. */
static void check_gemm_exact(enum ferry_type wt, int64_t k, int64_t m, int64_t n) {
    struct ferry_tensor *a = test_tensor_new(wt, k, m, 1, 1), *b = test_tensor_new(FERRY_TYPE_F32, k, n, 1, 1);
    struct ferry_tensor *d = test_tensor_new(FERRY_TYPE_F32, m, n, 1, 1);
    fill(a, -1, 1);
    fill(b, -1, 1);
    struct ferry_tensor node = mul_mat_node(a, b, d);
    float *want = malloc((size_t)(m * n) * 4);
    void *y = aligned_alloc(64, ferry_vec_dot_row_size(wt, k));
    for (size_t l = 0; l < 3 && levels[l] <= best_level; l++) {
        ferry_simd_set_level(levels[l]);
        struct ferry_vec_dot vd;
        ferry_vec_dot_get(wt, levels[l], &vd);
        for (int64_t c = 0; c < n; c++) {
            vd.from_f32((const char *)b->data + c * b->nb[1], y, k);
            for (int64_t r = 0; r < m; r++) vd.dot(k, &want[c * m + r], (const char *)a->data + r * a->nb[1], y);
        }
        for (int t = 0; t < 4; t++) {
            struct ferry_error err = { 0 };
            struct ferry_tensor *nodes[1] = { &node };
            if (!CHECK(ferry_engine_compute(engines[t], nodes, 1, &err) == FERRY_OK, "gemm: %s", err.msg)) continue;
            CHECK(memcmp(d->data, want, (size_t)(m * n) * 4) == 0,
                  "mul_mat %s k%lld m%lld n%lld (%s, %d threads): not the dot products bit for bit", ferry_type_name(wt),
                  (long long)k, (long long)m, (long long)n, ferry_simd_level_name(levels[l]), t + 1);
        }
    }
    ferry_simd_set_level(best_level);
    free(y);
    free(want);
    test_tensor_free(a);
    test_tensor_free(b);
    test_tensor_free(d);
}

static void test_gemm_path(void) {
    const enum ferry_type types[] = { FERRY_TYPE_Q4_0, FERRY_TYPE_Q8_0, FERRY_TYPE_IQ4_NL, FERRY_TYPE_MXFP4 };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        check_gemm_exact(types[i], 288, 37, 11);        /* row and column edges, a K tail */
        check_gemm_exact(types[i], 8192 + 96, 9, 6);    /* K chunks */
        check_gemm_exact(types[i], 64, 5, 40);          /* split along columns */
        check_gemm_exact(types[i], 256, 130, 130);      /* row blocks */
    }
    const enum ferry_type k_types[] = { FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K };
    for (size_t i = 0; i < sizeof k_types / sizeof k_types[0]; i++) {
        check_gemm_exact(k_types[i], 768, 37, 11);      /* row and column edges */
        check_gemm_exact(k_types[i], 4096, 9, 7);       /* many super-blocks */
        check_gemm_exact(k_types[i], 256, 5, 40);       /* split along columns */
        check_gemm_exact(k_types[i], 256, 130, 130);    /* row blocks */
    }
}

/* ---- check() --------------------------------------------------------------------------------- */

static int check_mm(enum ferry_type at, const int64_t ane[4], enum ferry_type bt, const int64_t bne[4],
                    const int64_t dne[4], struct ferry_error *err) {
    struct ferry_tensor a, b, node;
    ferry_tensor_init(&a, at, 4, ane, NULL);
    ferry_tensor_init(&b, bt, 4, bne, NULL);
    ferry_tensor_init(&node, FERRY_TYPE_F32, 4, dne, NULL);
    node.op = FERRY_OP_MUL_MAT;
    node.src[0] = &a;
    node.src[1] = &b;
    return ferry_engine_check_node(&node, err);
}

static void test_check_rejects(void) {
    struct ferry_error err = { 0 };
    const int64_t a[4] = { 64, 8, 2, 1 }, b[4] = { 64, 3, 4, 1 }, d[4] = { 8, 3, 4, 1 };
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_F32, b, d, &err) == FERRY_OK, "valid mul_mat: %s", err.msg);
    const int64_t bk[4] = { 32, 3, 4, 1 };
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_F32, bk, d, &err) == FERRY_ERR_INVALID, "K mismatch: %s", err.msg);
    const int64_t b3[4] = { 64, 3, 3, 1 }, d3[4] = { 8, 3, 3, 1 };
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_F32, b3, d3, &err) == FERRY_ERR_INVALID, "broadcast 3 %% 2: %s",
          err.msg);
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_F16, b, d, &err) == FERRY_ERR_UNSUPPORTED, "f16 src1 for q4_0: %s",
          err.msg);
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_Q8_0, b, d, &err) == FERRY_OK, "q8_0 src1 for q4_0: %s", err.msg);
    CHECK(check_mm(FERRY_TYPE_Q4_K, (int64_t[4]){ 256, 8, 2, 1 }, FERRY_TYPE_Q8_0, (int64_t[4]){ 256, 3, 4, 1 }, d,
                   &err) == FERRY_ERR_UNSUPPORTED, "q8_0 src1 for q4_K: %s", err.msg);
    CHECK(check_mm(FERRY_TYPE_IQ2_XXS, (int64_t[4]){ 256, 8, 2, 1 }, FERRY_TYPE_F32, (int64_t[4]){ 256, 3, 4, 1 }, d,
                   &err) == FERRY_ERR_UNSUPPORTED, "iq2_xxs weights: %s", err.msg);
    CHECK(check_mm(FERRY_TYPE_I32, a, FERRY_TYPE_F32, b, d, &err) == FERRY_ERR_UNSUPPORTED, "i32 weights: %s", err.msg);
    const int64_t dbad[4] = { 8, 4, 4, 1 };
    CHECK(check_mm(FERRY_TYPE_Q4_0, a, FERRY_TYPE_F32, b, dbad, &err) == FERRY_ERR_INVALID, "wrong dst shape: %s",
          err.msg);

    /* transposed src1 */
    struct ferry_tensor ta, tb, node;
    ferry_tensor_init(&ta, FERRY_TYPE_F32, 4, (int64_t[4]){ 16, 8, 1, 1 }, NULL);
    ferry_tensor_init(&tb, FERRY_TYPE_F32, 4, (int64_t[4]){ 5, 16, 1, 1 }, NULL);
    struct ferry_tensor tt = permuted(&tb, 1, 0, 2, 3); /* [16, 5], nb0 = 20 */
    ferry_tensor_init(&node, FERRY_TYPE_F32, 4, (int64_t[4]){ 8, 5, 1, 1 }, NULL);
    node.op = FERRY_OP_MUL_MAT;
    node.src[0] = &ta;
    node.src[1] = &tt;
    CHECK(ferry_engine_check_node(&node, &err) == FERRY_ERR_UNSUPPORTED, "transposed src1: %s", err.msg);
    node.src[0] = &tt;
    node.src[1] = &ta;
    CHECK(ferry_engine_check_node(&node, &err) != FERRY_OK, "transposed src0: %s", err.msg);
    node.src[0] = &ta;
    node.src[1] = &ta;
    node.type = FERRY_TYPE_F16;
    CHECK(ferry_engine_check_node(&node, &err) != FERRY_OK, "f16 output: %s", err.msg);
    node.type = FERRY_TYPE_F32;
    node.src[1] = NULL;
    CHECK(ferry_engine_check_node(&node, &err) == FERRY_ERR_INVALID, "missing src1: %s", err.msg);
    /* misaligned data */
    float buf[40];
    ta.data = (char *)buf + 2;
    node.src[1] = &ta;
    node.ne[1] = 8;
    CHECK(ferry_engine_check_node(&node, &err) == FERRY_ERR_UNSUPPORTED, "misaligned f32 data: %s", err.msg);

    /* MUL_MAT_ID shapes */
    struct ferry_tensor as, bb, ids, mid;
    ferry_tensor_init(&as, FERRY_TYPE_Q4_0, 4, (int64_t[4]){ 64, 16, 4, 1 }, NULL);
    ferry_tensor_init(&bb, FERRY_TYPE_F32, 4, (int64_t[4]){ 64, 2, 3, 1 }, NULL);
    ferry_tensor_init(&ids, FERRY_TYPE_I32, 4, (int64_t[4]){ 2, 3, 1, 1 }, NULL);
    ferry_tensor_init(&mid, FERRY_TYPE_F32, 4, (int64_t[4]){ 16, 2, 3, 1 }, NULL);
    mid.op = FERRY_OP_MUL_MAT_ID;
    mid.src[0] = &as;
    mid.src[1] = &bb;
    mid.src[2] = &ids;
    CHECK(ferry_engine_check_node(&mid, &err) == FERRY_OK, "valid mul_mat_id: %s", err.msg);
    ids.type = FERRY_TYPE_I64;
    ferry_tensor_set_contiguous(&ids);
    CHECK(ferry_engine_check_node(&mid, &err) == FERRY_ERR_UNSUPPORTED, "i64 ids: %s", err.msg);
    ferry_tensor_init(&ids, FERRY_TYPE_I32, 4, (int64_t[4]){ 3, 3, 1, 1 }, NULL);
    ferry_tensor_init(&mid, FERRY_TYPE_F32, 4, (int64_t[4]){ 16, 3, 3, 1 }, NULL);
    mid.op = FERRY_OP_MUL_MAT_ID;
    mid.src[0] = &as;
    mid.src[1] = &bb;
    mid.src[2] = &ids;
    CHECK(ferry_engine_check_node(&mid, &err) == FERRY_ERR_INVALID, "n_used %% n_b1 != 0: %s", err.msg);
    ferry_tensor_init(&ids, FERRY_TYPE_I32, 4, (int64_t[4]){ 2, 4, 1, 1 }, NULL);
    CHECK(ferry_engine_check_node(&mid, &err) == FERRY_ERR_INVALID, "ids/token mismatch: %s", err.msg);

    /* FLASH_ATTN_EXT */
    struct ferry_tensor q, k, v, m, fa;
    ferry_tensor_init(&q, FERRY_TYPE_F32, 4, (int64_t[4]){ 64, 2, 4, 1 }, NULL);
    ferry_tensor_init(&k, FERRY_TYPE_F16, 4, (int64_t[4]){ 64, 16, 2, 1 }, NULL);
    ferry_tensor_init(&v, FERRY_TYPE_F16, 4, (int64_t[4]){ 64, 16, 2, 1 }, NULL);
    ferry_tensor_init(&m, FERRY_TYPE_F16, 4, (int64_t[4]){ 16, 2, 1, 1 }, NULL);
    ferry_tensor_init(&fa, FERRY_TYPE_F32, 4, (int64_t[4]){ 64, 4, 2, 1 }, NULL);
    fa.op = FERRY_OP_FLASH_ATTN_EXT;
    fa.src[0] = &q;
    fa.src[1] = &k;
    fa.src[2] = &v;
    fa.src[3] = &m;
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_OK, "valid flash_attn: %s", err.msg);
    fa.op_params[3] = 7;
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_INVALID, "bad precision: %s", err.msg);
    fa.op_params[3] = 10;
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_OK, "f32 precision: %s", err.msg);
    m.type = FERRY_TYPE_F32;
    ferry_tensor_set_contiguous(&m);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_UNSUPPORTED, "f32 mask: %s", err.msg);
    ferry_tensor_init(&m, FERRY_TYPE_F16, 4, (int64_t[4]){ 15, 2, 1, 1 }, NULL);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_INVALID, "short mask: %s", err.msg);
    fa.src[3] = NULL;
    ferry_tensor_init(&k, FERRY_TYPE_F16, 4, (int64_t[4]){ 64, 16, 3, 1 }, NULL);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_INVALID, "4 heads over 3 kv heads: %s", err.msg);
    ferry_tensor_init(&k, FERRY_TYPE_F16, 4, (int64_t[4]){ 32, 16, 2, 1 }, NULL);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_INVALID, "dk mismatch: %s", err.msg);
    ferry_tensor_init(&k, FERRY_TYPE_IQ2_XS, 4, (int64_t[4]){ 256, 16, 2, 1 }, NULL);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_UNSUPPORTED, "iq2_xs K: %s", err.msg);
    ferry_tensor_init(&k, FERRY_TYPE_F16, 4, (int64_t[4]){ 64, 16, 2, 1 }, NULL);
    ferry_tensor_init(&v, FERRY_TYPE_I32, 4, (int64_t[4]){ 64, 16, 2, 1 }, NULL);
    CHECK(ferry_engine_check_node(&fa, &err) == FERRY_ERR_UNSUPPORTED, "i32 V: %s", err.msg);
    ferry_tensor_init(&v, FERRY_TYPE_F16, 4, (int64_t[4]){ 64, 16, 2, 1 }, NULL);
    struct ferry_tensor vt = permuted(&v, 1, 0, 2, 3);
    fa.src[2] = &vt;
    CHECK(ferry_engine_check_node(&fa, &err) != FERRY_OK, "transposed V: %s", err.msg);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    best_level = ferry_simd_level();
    printf("best SIMD level: %s\n", ferry_simd_level_name(best_level));
    for (int t = 0; t < 4; t++) engines[t] = ferry_engine_create(t + 1);
    test_mul_mat_types();
    test_mul_mat_layouts();
    test_hadamard();
    test_mul_mat_id();
    test_gemm_tiles();
    test_gemm_path();
    test_flash_attn();
    test_simd_kernels();
    test_check_rejects();
    for (int t = 0; t < 4; t++) ferry_engine_destroy(engines[t]);
    return test_summary();
}
