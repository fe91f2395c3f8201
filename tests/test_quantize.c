/* The quantizers that write the 256-element types and NVFP4 (src/tensor/
 * quants_k_write.c, quants.c; docs/types.md 4.9, 5.8, 6): Q2_K, Q3_K, Q4_K,
 * Q5_K, Q6_K, IQ4_XS, TQ1_0, TQ2_0 and NVFP4.
 *
 *  - known answers: hashes of the bytes ggml's CPU backend writes (its
 *    from_float for CPY and SET_ROWS) for deterministic inputs, among them
 *    zero groups, outliers, subnormals and scales past the f16 range;
 *  - round-trip error bounds, exact round trips where the type allows;
 *  - idempotence where the algorithm guarantees it (ternary, NVFP4);
 *  - edge cases: all zeros, one huge value, NaN and infinities (which must
 *    not leak into other blocks);
 *  - CPY (from F32, F16, BF16, permuted) and SET_ROWS through the engine,
 *    with 1 and 3 threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ferry/types.h"
#include "tensor/quantize_k.h"
#include "testutil.h"

static const enum ferry_type TYPES[] = {
    FERRY_TYPE_Q2_K, FERRY_TYPE_Q3_K, FERRY_TYPE_Q4_K, FERRY_TYPE_Q5_K, FERRY_TYPE_Q6_K,
    FERRY_TYPE_IQ4_XS, FERRY_TYPE_TQ1_0, FERRY_TYPE_TQ2_0, FERRY_TYPE_NVFP4,
};
#define N_TYPES (int)(sizeof TYPES / sizeof TYPES[0])

static const struct ferry_type_traits *traits(enum ferry_type t) { return ferry_type_traits(t); }

/* ---- known answers -------------------------------------------------------- */

/* Deterministic inputs for the known answers: one row of eight 256-element
 * blocks per family, each block at its own power-of-two scale. */
static uint64_t kat_state;

static uint32_t kat_u32(void) {
    kat_state ^= kat_state >> 12;
    kat_state ^= kat_state << 25;
    kat_state ^= kat_state >> 27;
    return (uint32_t)((kat_state * 0x2545f4914f6cdd1dull) >> 32);
}

/* uniform in [-1, 1) */
static float kat_unit(void) { return (float)(kat_u32() >> 8) / 8388608.0f - 1.0f; }

enum { KAT_NORMAL, KAT_ONE_SIGNED, KAT_SPARSE, KAT_OUTLIER, KAT_TINY, KAT_HUGE, KAT_GRID, KAT_FAMILIES };

static void kat_fill(float *x, int n, int family) {
    kat_state = 0x9e3779b97f4a7c15ull ^ (uint64_t)(family + 1);
    for (int i = 0; i < n; i++) {
        const float scale = ldexpf(1.0f, (i / 256 * 5) % 23 - 11);
        float v = 0.0f;
        switch (family) {
        case KAT_NORMAL: /* a sum of four uniforms: roughly normal */
            for (int k = 0; k < 4; k++) v += kat_unit();
            v *= scale;
            break;
        case KAT_ONE_SIGNED: /* runs of 64 of one sign: the min must carry the offset */
            v = (kat_unit() + 1.5f) * scale * ((i / 64) % 2 ? 1.0f : -1.0f);
            break;
        case KAT_SPARSE: /* every third 16-element group zero, a quarter of the rest too */
            v = kat_unit() * scale;
            if ((i / 16) % 3 == 1 || kat_u32() % 4 == 0) v = 0.0f;
            break;
        case KAT_OUTLIER: /* one value a thousand times the others every 97 */
            v = kat_unit() * scale;
            if (i % 97 == 5) v = 1000.0f * scale;
            break;
        case KAT_TINY: /* subnormal floats, and values whose f16 scales underflow */
            v = kat_unit() * ((i / 128) % 2 ? 1e-40f : 1e-20f);
            break;
        case KAT_HUGE: /* scales near the f16 limit, and past it (infinite d) */
            v = kat_unit() * ((i / 256) % 2 ? 6e4f : 1e30f);
            break;
        default: /* KAT_GRID: small integers times the scale */
            v = (float)((int)(kat_u32() % 7) - 3) * scale;
            break;
        }
        x[i] = v;
    }
}

/* FNV-1a over the quantized bytes. */
static uint64_t kat_hash(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

#define KAT_N 2048

/* Hashes of ggml's output for kat_fill's families, in enum order, computed
 * with ggml's reference quantizers (the CPU backend's from_float). */
static const struct {
    enum ferry_type type;
    uint64_t hash[KAT_FAMILIES];
} KAT[] = {
    { FERRY_TYPE_Q2_K, { 0xb97381706808bb9cull, 0x1ddef511d88b3e02ull, 0xf469c9042ae89cabull, 0xd792f5776a0a5603ull, 0xfecbeef26a1520f4ull, 0xc13477c7e2fb37f8ull, 0xcec0f1ea667a5904ull } },
    { FERRY_TYPE_Q3_K, { 0x518631c192636fc2ull, 0x550d842190608415ull, 0x894f168884973765ull, 0xaadaca3d3641c1edull, 0x064bd2022b6d37e5ull, 0x40b4f4138252dccdull, 0xfeb96bdf9d315b39ull } },
    { FERRY_TYPE_Q4_K, { 0x893c1e61d8c6a102ull, 0x89f703e1e5a09ca3ull, 0x6f9e1942622f89b7ull, 0x26920ada28af0fa5ull, 0xed20e47db6ca49a2ull, 0x4bc41a0489c6fd39ull, 0x5d168b05eb2bb3dfull } },
    { FERRY_TYPE_Q5_K, { 0x1a3eae50ef93a4b7ull, 0xc61f8703a3877c4bull, 0x174509491f527466ull, 0x8ded6922e5968b0dull, 0x4efee622fecd0967ull, 0xb33b342848aef9c9ull, 0x044789295e1efaa0ull } },
    { FERRY_TYPE_Q6_K, { 0x796fc91d826ce86cull, 0x6c8c0b5a1ba9e587ull, 0x79f10aa7e07de1ffull, 0x171aa60488d0d6e7ull, 0x26dfcaf1ebf42665ull, 0x1182b2d22135ae21ull, 0xde8832ec00650dd4ull } },
    { FERRY_TYPE_IQ4_XS, { 0x5476dac88c797d7full, 0xef6b95c75f1cfe9dull, 0x44692b0b87d65403ull, 0xdfef8b5756d582b1ull, 0x7c9267de8244cbe5ull, 0x0453d6ca6357ce2dull, 0x9e5a8d3c8cef3e1eull } },
    { FERRY_TYPE_TQ1_0, { 0x820e3e544821fd8aull, 0xfbdaa551af440e6full, 0xfad2db4e8e33f9c2ull, 0xe447b9e2cc19b99eull, 0x77e19b63801e49ebull, 0x5b3e04ced6d5d001ull, 0xbf31226fdee9d8caull } },
    { FERRY_TYPE_TQ2_0, { 0x493e5693b9b7ad1bull, 0xd3f4cb6c1361308full, 0x9e74af878225586full, 0x2ea17499f0c4736cull, 0x9fea99549cee6af3ull, 0x35e292f5fde61d0bull, 0xed10b4a808fd9bbcull } },
    { FERRY_TYPE_NVFP4, { 0xd57463e0e7a23d8full, 0xce7fbd9a0a4060c0ull, 0x53aaef585c965371ull, 0x740b918b12efb82cull, 0x36fe4d3f1c233d25ull, 0x67ce3fec396f972full, 0x07d9f81cd8eb0471ull } },
};

static void test_known_answers(void) {
    float *x = malloc(KAT_N * sizeof *x);
    void *q = malloc(ferry_row_size(FERRY_TYPE_F32, KAT_N));
    for (size_t k = 0; k < sizeof KAT / sizeof KAT[0]; k++) {
        const enum ferry_type t = KAT[k].type;
        const size_t rs = ferry_row_size(t, KAT_N);
        for (int f = 0; f < KAT_FAMILIES; f++) {
            kat_fill(x, KAT_N, f);
            memset(q, 0xa5, rs);
            traits(t)->from_float(x, q, KAT_N);
            const uint64_t h = kat_hash(q, rs);
            CHECK(h == KAT[k].hash[f], "%s family %d: ggml's bytes (hash %016llx, want %016llx)",
                  ferry_type_name(t), f, (unsigned long long)h, (unsigned long long)KAT[k].hash[f]);
        }
    }
    free(q);
    free(x);
}

/* ---- round trips ------------------------------------------------------------ */

static double round_trip(enum ferry_type t, const float *x, float *y, void *q, int64_t n) {
    traits(t)->from_float(x, q, n);
    traits(t)->to_float(q, y, n);
    return test_nmse(x, y, n);
}

static void test_round_trip(void) {
    const int64_t n = 256 * 64;
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    void *q = malloc((size_t)n * sizeof(float));
    uint64_t s = 7;
    /* NMSE bounds on roughly normal data, some 1.5x above what the
     * quantizers reach: about 2, 3, 4, 5, 6, 4 bits of signal and FP4 */
    static const struct {
        enum ferry_type type;
        double bound;
    } B[] = {
        { FERRY_TYPE_Q2_K, 0.12 }, { FERRY_TYPE_Q3_K, 0.035 }, { FERRY_TYPE_Q4_K, 0.008 },
        { FERRY_TYPE_Q5_K, 0.002 }, { FERRY_TYPE_Q6_K, 0.0005 }, { FERRY_TYPE_IQ4_XS, 0.009 },
        { FERRY_TYPE_NVFP4, 0.015 },
    };
    for (size_t b = 0; b < sizeof B / sizeof B[0]; b++) {
        const char *tn = ferry_type_name(B[b].type);
        for (int64_t i = 0; i < n; i++) {
            float u = 0.0f;
            for (int k = 0; k < 4; k++) u += test_rand_uniform(&s, -1, 1);
            x[i] = u * (float)(1 + (i / 256) % 5) * 0.01f;
        }
        double e = round_trip(B[b].type, x, y, q, n);
        CHECK(e < B[b].bound, "%s normal: nmse %g over %g", tn, e, B[b].bound);
        /* one-signed blocks: K-quant mins and NVFP4 codes carry them as well */
        for (int64_t i = 0; i < n; i++)
            x[i] = test_rand_uniform(&s, 0.5f, 1.5f) * (i % 512 < 256 ? 1.0f : -1.0f);
        e = round_trip(B[b].type, x, y, q, n);
        CHECK(e < B[b].bound, "%s one-signed: nmse %g over %g", tn, e, B[b].bound);
    }
    /* ternary data round-trips exactly through TQ1_0 and TQ2_0 */
    for (int t = 0; t < 2; t++) {
        const enum ferry_type tt = t ? FERRY_TYPE_TQ2_0 : FERRY_TYPE_TQ1_0;
        for (int64_t i = 0; i < n; i++) x[i] = (float)((int)(test_rand_u64(&s) % 3) - 1) * 0.375f;
        x[0] = 0.375f; /* every block has its extreme in place: block 0 at least, the others by chance */
        for (int64_t ib = 0; ib < n / 256; ib++) x[ib * 256 + 7] = -0.375f;
        round_trip(tt, x, y, q, n);
        CHECK(memcmp(x, y, (size_t)n * sizeof *x) == 0, "%s ternary data exact", ferry_type_name(tt));
    }
    /* the bit-exact K-quants search their scales: no worse than the simple
     * one-pass quantizers the model generator uses */
    for (int64_t i = 0; i < n; i++) x[i] = test_rand_uniform(&s, -1, 1) * (float)(1 + (i / 32) % 7);
    for (int t = 0; t < 2; t++) {
        const enum ferry_type kt = t ? FERRY_TYPE_Q6_K : FERRY_TYPE_Q4_K;
        const double e = round_trip(kt, x, y, q, n);
        if (t) ferry_quant_row_q6_K_simple(x, q, n);
        else ferry_quant_row_q4_K_simple(x, q, n);
        traits(kt)->to_float(q, y, n);
        const double es = test_nmse(x, y, n);
        CHECK(e <= es, "%s: search nmse %g vs one-pass %g", ferry_type_name(kt), e, es);
    }
    free(q);
    free(y);
    free(x);
}

/* Re-quantizing dequantized data gives the same bytes: holds by
 * construction for the ternary types (values are exact multiples of d), and
 * for NVFP4 while amax/6 is a normal E4M3 value below 256 (amax in
 * [0.09375, 1536)): the scale rounds by less than half a step of 1/8, so the
 * extreme value codes as 6 and amax/6 gives the same scale again. Subnormal
 * and saturated scales round coarsely and may move, and the K-quants and
 * IQ4_XS re-run their search and may move too. */
static void test_idempotent(void) {
    static const enum ferry_type T[] = { FERRY_TYPE_TQ1_0, FERRY_TYPE_TQ2_0, FERRY_TYPE_NVFP4 };
    const int64_t n = 256 * 16;
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    uint8_t *q1 = malloc((size_t)n * 4), *q2 = malloc((size_t)n * 4);
    uint64_t s = 11;
    for (int t = 0; t < 3; t++)
        for (int rep = 0; rep < 20; rep++) {
            /* 2^-3 .. 2^7 times 1..3: NVFP4's normal range above; the
             * ternary types are exact at any scale */
            const int e = T[t] == FERRY_TYPE_NVFP4 ? rep % 11 - 3 : rep - 12;
            const float scale = ldexpf(1.0f, e);
            for (int64_t i = 0; i < n; i++) x[i] = test_rand_uniform(&s, -1, 1) * scale * (float)(1 + (i / 64) % 3);
            const size_t rs = ferry_row_size(T[t], n);
            traits(T[t])->from_float(x, q1, n);
            traits(T[t])->to_float(q1, y, n);
            traits(T[t])->from_float(y, q2, n);
            CHECK(memcmp(q1, q2, rs) == 0, "%s idempotent at scale 2^%d", ferry_type_name(T[t]), e);
        }
    free(q2);
    free(q1);
    free(y);
    free(x);
}

/* ---- edge cases ------------------------------------------------------------- */

static bool all_zero_values(const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (y[i] != 0.0f) return false;
    return true;
}

static void test_edges(void) {
    const int64_t n = 512;
    float x[512], y[512], x2[256];
    uint8_t q[4096], q2[4096];
    for (int t = 0; t < N_TYPES; t++) {
        const enum ferry_type tt = TYPES[t];
        const char *tn = ferry_type_name(tt);
        const size_t bs = ferry_row_size(tt, 256); /* bytes of 256 elements */
        /* zeros (and negative zeros) give zero values, and the same bytes every time */
        for (int64_t i = 0; i < n; i++) x[i] = i % 3 ? 0.0f : -0.0f;
        traits(tt)->from_float(x, q, n);
        traits(tt)->to_float(q, y, n);
        CHECK(all_zero_values(y, n), "%s zeros stay zero", tn);
        traits(tt)->from_float(x, q2, n);
        CHECK(memcmp(q, q2, bs * 2) == 0, "%s zeros deterministic", tn);
        /* one huge value among small ones: it is kept within the type's
         * resolution (its own sub-block scale) and nothing becomes NaN */
        for (int64_t i = 0; i < n; i++) x[i] = 0.001f * (float)((i * 7) % 11 - 5);
        x[100] = 1000.0f;
        traits(tt)->from_float(x, q, n);
        traits(tt)->to_float(q, y, n);
        bool finite = true;
        for (int64_t i = 0; i < n; i++) finite &= isfinite(y[i]) != 0;
        CHECK(finite, "%s one huge value: finite results", tn);
        const bool ternary = tt == FERRY_TYPE_TQ1_0 || tt == FERRY_TYPE_TQ2_0;
        CHECK(fabsf(y[100] - 1000.0f) < (ternary ? 1.0f : 100.0f), "%s huge value kept: %g", tn, y[100]);
        /* subnormal inputs: no trap, no NaN, tiny results */
        for (int64_t i = 0; i < n; i++) x[i] = 1e-41f * (float)((i * 5) % 9 - 4);
        traits(tt)->from_float(x, q, n);
        traits(tt)->to_float(q, y, n);
        bool tiny = true;
        for (int64_t i = 0; i < n; i++) tiny &= fabsf(y[i]) < 1e-30f;
        CHECK(tiny, "%s subnormal inputs give tiny values", tn);
        /* NaN and infinities: ggml defines no result for such a block (and
         * ferry writes what ggml's arithmetic gives), but they must stay in
         * their block: the next block's bytes are those of its data alone */
        const float poison[3] = { NAN, INFINITY, -INFINITY };
        for (int p = 0; p < 3; p++) {
            for (int64_t i = 0; i < n; i++) x[i] = 0.01f * (float)((i * 13) % 17 - 8);
            x[37] = poison[p];
            memcpy(x2, x + 256, sizeof x2);
            traits(tt)->from_float(x, q, n);
            traits(tt)->from_float(x2, q2, 256);
            CHECK(memcmp(q + bs, q2, bs) == 0, "%s %g stays in its block", tn, poison[p]);
        }
    }
}

/* ---- CPY and SET_ROWS through the engine ------------------------------------ */

static struct ferry_engine *engines[4];

static int compute(struct ferry_tensor *node, int nth) {
    struct ferry_tensor *nodes[1] = { node };
    struct ferry_error err;
    int rc = ferry_engine_compute(engines[nth], nodes, 1, &err);
    if (rc) fprintf(stderr, "  engine: %s\n", err.msg);
    return rc;
}

/* src [ne0, 3, 2] of type st, possibly viewed with dims 1 and 2 swapped
 * (rows stay contiguous), CPY'd into a contiguous quantized node; each
 * destination row must be from_float of the source row in logical order. */
static void check_cpy(enum ferry_type dt, enum ferry_type st, bool permute) {
    const int64_t ne0 = 512;
    uint64_t s = 3;
    struct ferry_tensor *base = test_tensor_new(st, ne0, 3, 2, 1);
    test_tensor_fill_uniform(base, &s, -2, 2);
    struct ferry_tensor view = *base, *src = base;
    if (permute) { /* [ne0, 2, 3]: dims 1 and 2 swapped */
        view.ne[1] = base->ne[2], view.nb[1] = base->nb[2];
        view.ne[2] = base->ne[1], view.nb[2] = base->nb[1];
        view.op = FERRY_OP_PERMUTE;
        src = &view;
    }
    struct ferry_tensor *dst = test_tensor_new(dt, ne0, src->ne[1], src->ne[2], 1);
    struct ferry_tensor node = *dst;
    node.op = FERRY_OP_CPY;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = src;
    node.src[1] = dst;
    const size_t rs = ferry_row_size(dt, ne0), nbytes = rs * 6;
    uint8_t *want = malloc(nbytes), *one = malloc(nbytes);
    float *src_f32 = test_tensor_to_f32(src); /* logical order */
    for (int r = 0; r < 6; r++) traits(dt)->from_float(src_f32 + r * ne0, want + r * rs, ne0);
    bool ok = true;
    for (int nth = 1; nth <= 3; nth += 2) {
        memset(dst->data, 0x5a, nbytes);
        ok &= compute(&node, nth) == FERRY_OK;
        ok &= memcmp(dst->data, want, nbytes) == 0;
        if (nth == 1) memcpy(one, dst->data, nbytes);
        else ok &= memcmp(dst->data, one, nbytes) == 0;
    }
    CHECK(ok, "CPY %s -> %s%s: the quantizer's bytes, 1 and 3 threads", ferry_type_name(st), ferry_type_name(dt),
          permute ? " (permuted)" : "");
    free(src_f32);
    free(one);
    free(want);
    test_tensor_free(dst);
    test_tensor_free(base);
}

static void put_index(struct ferry_tensor *idx, int64_t i, int64_t j, int64_t v) {
    char *p = (char *)idx->data + i * idx->nb[0] + j * idx->nb[1];
    if (idx->type == FERRY_TYPE_I64) memcpy(p, &v, 8);
    else {
        int32_t v32 = (int32_t)v;
        memcpy(p, &v32, 4);
    }
}

/* SET_ROWS of src [ne0, 4, 2] (F32 or F16) into rows of dst [ne0, 10, 2]
 * picked by indices [4, 2], one of them written twice (the last wins). */
static void check_set_rows(enum ferry_type dt, enum ferry_type st, enum ferry_type it) {
    const int64_t ne0 = 256;
    uint64_t s = 5;
    struct ferry_tensor *dst = test_tensor_new(dt, ne0, 10, 2, 1);
    test_tensor_fill_uniform(dst, &s, -1, 1);
    struct ferry_tensor *src = test_tensor_new(st, ne0, 4, 2, 1);
    test_tensor_fill_uniform(src, &s, -3, 3);
    struct ferry_tensor *idx = test_tensor_new(it, 4, 2, 1, 1);
    static const int64_t rows[2][4] = { { 9, 0, 4, 0 }, { 1, 2, 3, 8 } };
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 4; i++) put_index(idx, i, j, rows[j][i]);
    const size_t rs = ferry_row_size(dt, ne0), nbytes = ferry_nbytes(dst);
    uint8_t *before = malloc(nbytes), *want = malloc(nbytes);
    memcpy(before, dst->data, nbytes);
    memcpy(want, before, nbytes);
    float *src_f32 = test_tensor_to_f32(src);
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 4; i++)
            traits(dt)->from_float(src_f32 + (j * 4 + i) * ne0, want + (size_t)j * dst->nb[2] + rows[j][i] * rs, ne0);
    struct ferry_tensor node = *dst;
    node.op = FERRY_OP_SET_ROWS;
    node.flags = FERRY_FLAG_COMPUTE;
    node.src[0] = src;
    node.src[1] = idx;
    node.src[2] = dst;
    bool ok = true;
    for (int nth = 1; nth <= 3; nth += 2) {
        memcpy(dst->data, before, nbytes);
        ok &= compute(&node, nth) == FERRY_OK;
        ok &= memcmp(dst->data, want, nbytes) == 0;
    }
    CHECK(ok, "SET_ROWS %s -> %s (%s indices): the quantizer's bytes, untouched rows kept, 1 and 3 threads",
          ferry_type_name(st), ferry_type_name(dt), ferry_type_name(it));
    free(src_f32);
    free(want);
    free(before);
    test_tensor_free(idx);
    test_tensor_free(src);
    test_tensor_free(dst);
}

static void test_engine_writes(void) {
    for (int t = 0; t < N_TYPES; t++) {
        check_cpy(TYPES[t], FERRY_TYPE_F32, false);
        check_cpy(TYPES[t], FERRY_TYPE_F32, true);
        check_cpy(TYPES[t], FERRY_TYPE_F16, false);
        check_cpy(TYPES[t], FERRY_TYPE_BF16, true);
        check_set_rows(TYPES[t], FERRY_TYPE_F32, FERRY_TYPE_I64);
        check_set_rows(TYPES[t], FERRY_TYPE_F16, FERRY_TYPE_I32);
    }
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    engines[1] = ferry_engine_create(1);
    engines[3] = ferry_engine_create(3);
    for (int t = 0; t < N_TYPES; t++)
        CHECK(traits(TYPES[t])->from_float != NULL, "%s has a quantizer", ferry_type_name(TYPES[t]));
    test_known_answers();
    test_round_trip();
    test_idempotent();
    test_edges();
    test_engine_writes();
    ferry_engine_destroy(engines[3]);
    ferry_engine_destroy(engines[1]);
    return test_summary();
}
