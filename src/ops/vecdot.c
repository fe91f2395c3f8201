/* Portable dot-product kernels, the activation converters, and the
 * per-type kernel table.
 *
 * Numerics follow docs/ops.md B.14: float types multiply exactly-representable
 * products and sum them (here in double, which is at least as accurate as
 * ggml's f32 lanes); quantized types form an exact integer sum per block
 * and scale it by d_a*d_b in f32, the K-quants per 256-element super-block
 * with their 6-bit/8-bit sub-block scales and the Q8_K bsums for the mins. */
#include "vecdot.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "tensor/blocks.h"
#include "tensor/fp16.h"

/* ---- the integer loop every quantized kernel feeds ------------------------ */

static int32_t dot_i8(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

static int32_t sum_i8(const int8_t *q, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += q[i];
    return s;
}

/* ---- float types (y: f32 values, already rounded to the vec_dot type) ---- */

void ferry_vec_dot_f32(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * (double)y[i];
    *s = (float)sum;
}

/* f16 x f16 products are exact in f32 (and bf16 x bf16 likewise). */
static inline void half_dot(float (*widen)(uint16_t), int64_t n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx;
    const float *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(widen(x[i]) * y[i]);
    *s = (float)sum;
}

static void vec_dot_f16(int64_t n, float *s, const void *x, const void *y) { half_dot(fp16_to_fp32, n, s, x, y); }
static void vec_dot_bf16(int64_t n, float *s, const void *x, const void *y) { half_dot(bf16_to_fp32, n, s, x, y); }

/* f32 values rounded to a 16-bit float type, kept as f32. */
static inline void round_row(uint16_t (*narrow)(float), float (*widen)(uint16_t), const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = widen(narrow(x[i]));
}

static inline void widen_row(float (*widen)(uint16_t), const void *vx, void *vy, int64_t n) {
    const uint16_t *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = widen(x[i]);
}

void ferry_prepare_f16(const void *x, void *y, int64_t n) { round_row(fp32_to_fp16, fp16_to_fp32, x, y, n); }
void ferry_prepare_bf16(const void *x, void *y, int64_t n) { round_row(fp32_to_bf16, bf16_to_fp32, x, y, n); }
static void widen_f16(const void *x, void *y, int64_t n) { widen_row(fp16_to_fp32, x, y, n); }
static void widen_bf16(const void *x, void *y, int64_t n) { widen_row(bf16_to_fp32, x, y, n); }

/* ---- prepared Q8_0 / Q8_1 activation rows -------------------------------- */

/* Block b of a prepared row: its quants, d, and s (Q8_1's f16 s when given,
 * else d * sum(q), exact: 11 x 13 significant bits). */
static void put_q8_block(void *vy, int64_t n, int64_t b, const int8_t qs[32], ferry_half d, const ferry_half *s) {
    int8_t *q = vy;
    float *dd = (float *)(void *)(q + n), *sums = dd + n / 32;
    memcpy(q + 32 * b, qs, 32);
    dd[b] = fp16_to_fp32(d);
    sums[b] = s ? fp16_to_fp32(*s) : dd[b] * (float)sum_i8(qs, 32);
}

/* Through ggml's x86 quantizers one block at a time, so the bytes are theirs. */
void ferry_prepare_q8_0(const void *vx, void *vy, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        block_q8_0 blk;
        ferry_quantize_row_q8_0_x86((const float *)vx + 32 * b, &blk, 32);
        put_q8_block(vy, n, b, blk.qs, blk.d, NULL);
    }
}

void ferry_prepare_q8_1(const void *vx, void *vy, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        block_q8_1 blk;
        ferry_quantize_row_q8_1_x86((const float *)vx + 32 * b, &blk, 32);
        put_q8_block(vy, n, b, blk.qs, blk.d, &blk.s);
    }
}

/* Rows a client sent already in Q8_0 / Q8_1. */
static void unpack_q8_0_row(const void *vx, void *vy, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / 32; b++) put_q8_block(vy, n, b, x[b].qs, x[b].d, NULL);
}

static void unpack_q8_1_row(const void *vx, void *vy, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t b = 0; b < n / 32; b++) put_q8_block(vy, n, b, x[b].qs, x[b].d, &x[b].s);
}

static void prepare_q8_K(const void *x, void *y, int64_t n) { ferry_quantize_row_q8_K(x, y, n); }

/* ---- weight blocks as int8 values and scales ----------------------------- */

/* 2^(e-128): half the E8M0 value, matching the doubled FP4 table (docs/types.md 4.8). */
static float e8m0_half(uint8_t e) {
    return f32_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* Unsigned E4M3 NVFP4 sub-block scale, halved like e8m0_half (docs/types.md 4.9). */
static float ue4m3_half(uint8_t x) {
    if (x == 0 || x == 0x7f) return 0.0f;
    const int exp = (x >> 3) & 15, man = x & 7;
    /* exact in f32: a 4-bit significand times a power of two */
    const float raw = exp == 0 ? (float)man * 0x1p-9f
                               : (float)(8 + man) * f32_from_bits((uint32_t)(exp - 7 - 3 + 127) << 23);
    return raw * 0.5f;
}

/* The two nibbles of the 32-element legacy blocks: element j low, j+16 high. */
static void unpack_nibbles(const uint8_t qs[16], int8_t q[32], int offset) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((qs[j] & 15) - offset);
        q[j + 16] = (int8_t)((qs[j] >> 4) - offset);
    }
}

static void unpack_nibbles_table(const uint8_t qs[16], int8_t q[32], const int8_t table[16]) {
    for (int j = 0; j < 16; j++) {
        q[j] = table[qs[j] & 15];
        q[j + 16] = table[qs[j] >> 4];
    }
}

/* Q5 codes: low nibble plus bit k of qh as bit 4. */
static void unpack_q5(const uint8_t qs[16], const uint8_t qh_bytes[4], int8_t q[32], int offset) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(((qs[j] & 15) | ((qh >> j) & 1) << 4) - offset);
        q[j + 16] = (int8_t)(((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - offset);
    }
}

/* ---- blocks against a prepared Q8_0 / Q8_1 row ------------------------------
 *
 * A weight block of `len` elements is `len / sub` sub-blocks, each unpacked
 * to int8 values in element order with one f32 scale d (and, for the
 * formats with a min, one m); each sub-block's integer dot with the
 * activation quants is scaled by d * d_y and, with a min, m * s_y added (the
 * f16-rounded s of Q8_1, as ggml does). Blocks larger than Q8_0's pair with
 * consecutive 32-element activation blocks, each with its own d_y. */

struct q8_format {
    size_t bytes;  /* of one weight block */
    int len, sub;  /* elements per block, per scale */
    /* Sub-block k's values, in q or in the block itself. */
    const int8_t *(*values)(const void *blk, int k, int8_t *q);
    float (*scale)(const void *blk, int k);
    float (*min)(const void *blk); /* NULL: no min */
};

/* The f16 at byte off of a block: most formats start with their d, and
 * Q4_1 and Q5_1 follow it with m. */
static float f16_at(const void *blk, size_t off) {
    ferry_half h;
    memcpy(&h, (const uint8_t *)blk + off, sizeof h);
    return fp16_to_fp32(h);
}

_Static_assert(offsetof(block_q5_1, m) == offsetof(block_q4_1, m), "Q4_1 and Q5_1 keep m at one offset");

static float scale_f16(const void *blk, int k) {
    (void)k;
    return f16_at(blk, 0);
}

static float min_f16(const void *blk) { return f16_at(blk, offsetof(block_q4_1, m)); }

static float scale_e8m0(const void *blk, int k) {
    (void)k;
    return e8m0_half(((const block_mxfp4 *)blk)->e);
}

static float scale_ue4m3(const void *blk, int k) { return ue4m3_half(((const block_nvfp4 *)blk)->d[k]); }

static const int8_t *values_q8_0(const void *blk, int k, int8_t *q) {
    (void)k, (void)q;
    return ((const block_q8_0 *)blk)->qs;
}

static const int8_t *values_q4_0(const void *blk, int k, int8_t *q) {
    (void)k;
    unpack_nibbles(((const block_q4_0 *)blk)->qs, q, 8);
    return q;
}

static const int8_t *values_q4_1(const void *blk, int k, int8_t *q) {
    (void)k;
    unpack_nibbles(((const block_q4_1 *)blk)->qs, q, 0);
    return q;
}

static const int8_t *values_q5_0(const void *blk, int k, int8_t *q) {
    const block_q5_0 *x = blk;
    (void)k;
    unpack_q5(x->qs, x->qh, q, 16);
    return q;
}

static const int8_t *values_q5_1(const void *blk, int k, int8_t *q) {
    const block_q5_1 *x = blk;
    (void)k;
    unpack_q5(x->qs, x->qh, q, 0);
    return q;
}

static const int8_t *values_iq4_nl(const void *blk, int k, int8_t *q) {
    (void)k;
    unpack_nibbles_table(((const block_iq4_nl *)blk)->qs, q, ferry_kvalues_iq4nl);
    return q;
}

static const int8_t *values_mxfp4(const void *blk, int k, int8_t *q) {
    (void)k;
    unpack_nibbles_table(((const block_mxfp4 *)blk)->qs, q, ferry_kvalues_mxfp4);
    return q;
}

/* 64 elements, 2 bits each (code - 1), four to a byte from the low bits. */
static const int8_t *values_q2_0(const void *blk, int k, int8_t *q) {
    const block_q2_0 *x = blk;
    for (int j = 0; j < 32; j++) {
        const int e = 32 * k + j;
        q[j] = (int8_t)(((x->qs[e / 4] >> (2 * (e % 4))) & 3) - 1);
    }
    return q;
}

/* 128 elements, one bit each: +1 or -1. */
static const int8_t *values_q1_0(const void *blk, int k, int8_t *q) {
    const block_q1_0 *x = blk;
    for (int j = 0; j < 32; j++) {
        const int e = 32 * k + j;
        q[j] = (int8_t)(((x->qs[e / 8] >> (e % 8)) & 1) ? 1 : -1);
    }
    return q;
}

/* Four 16-element sub-blocks: elements 16k+j (low nibble of qs[8k+j]) and
 * 16k+j+8 (high). */
static const int8_t *values_nvfp4(const void *blk, int k, int8_t *q) {
    const block_nvfp4 *x = blk;
    for (int j = 0; j < 8; j++) {
        q[j] = ferry_kvalues_mxfp4[x->qs[8 * k + j] & 15];
        q[j + 8] = ferry_kvalues_mxfp4[x->qs[8 * k + j] >> 4];
    }
    return q;
}

static const struct q8_format fmt_q4_0 = { sizeof(block_q4_0), 32, 32, values_q4_0, scale_f16, NULL };
static const struct q8_format fmt_q4_1 = { sizeof(block_q4_1), 32, 32, values_q4_1, scale_f16, min_f16 };
static const struct q8_format fmt_q5_0 = { sizeof(block_q5_0), 32, 32, values_q5_0, scale_f16, NULL };
static const struct q8_format fmt_q5_1 = { sizeof(block_q5_1), 32, 32, values_q5_1, scale_f16, min_f16 };
static const struct q8_format fmt_q8_0 = { sizeof(block_q8_0), 32, 32, values_q8_0, scale_f16, NULL };
static const struct q8_format fmt_iq4_nl = { sizeof(block_iq4_nl), 32, 32, values_iq4_nl, scale_f16, NULL };
static const struct q8_format fmt_mxfp4 = { sizeof(block_mxfp4), 32, 32, values_mxfp4, scale_e8m0, NULL };
static const struct q8_format fmt_nvfp4 = { sizeof(block_nvfp4), QK_NVFP4, 16, values_nvfp4, scale_ue4m3, NULL };
static const struct q8_format fmt_q1_0 = { sizeof(block_q1_0), QK1_0, 32, values_q1_0, scale_f16, NULL };
static const struct q8_format fmt_q2_0 = { sizeof(block_q2_0), QK2_0, 32, values_q2_0, scale_f16, NULL };

/* Weight blocks [i0, i1) summed in f32 from 0, in element order. Inlined
 * into each kernel with its format constant, so the unpack step is too. */
static inline __attribute__((always_inline)) float q8_blocks(const struct q8_format *f, const void *vx,
                                                             struct ferry_q8_row y, int64_t i0, int64_t i1) {
    const uint8_t *x = vx;
    const int per = f->len / f->sub; /* sub-blocks per block */
    float sum = 0.0f;
    for (int64_t i = i0; i < i1; i++) {
        const void *blk = x + (size_t)i * f->bytes;
        /* With several sub-blocks their scales are read before any values
         * are unpacked (whose int8 stores could alias them), so that one
         * scale for the whole block is converted once. With one, reading
         * it after the dot measured faster. */
        float ds[4];
        if (per > 1)
            for (int k = 0; k < per; k++) ds[k] = f->scale(blk, k);
        for (int k = 0; k < per; k++) {
            int8_t buf[32];
            const int8_t *q = f->values(blk, k, buf);
            const int64_t e = i * f->len + (int64_t)k * f->sub, b = e / 32;
            const int32_t isum = dot_i8(q, y.q + e, f->sub);
            const float d = per > 1 ? ds[k] : f->scale(blk, k);
            if (f->min)
                sum += (d * y.d[b]) * (float)isum + f->min(blk) * y.s[b];
            else
                sum += (float)isum * (d * y.d[b]);
        }
    }
    return sum;
}

#define Q8_KERNEL(name)                                                               \
    static void vec_dot_##name(int64_t n, float *s, const void *x, const void *y) {  \
        *s = q8_blocks(&fmt_##name, x, ferry_q8_row(y, n), 0, n / fmt_##name.len);   \
    }
Q8_KERNEL(q4_0)
Q8_KERNEL(q4_1)
Q8_KERNEL(q5_0)
Q8_KERNEL(q5_1)
Q8_KERNEL(q8_0)
Q8_KERNEL(iq4_nl)
Q8_KERNEL(mxfp4)
Q8_KERNEL(nvfp4)
Q8_KERNEL(q1_0)
Q8_KERNEL(q2_0)
#undef Q8_KERNEL

/* Never inlined into its SIMD callers, which may be VNNI functions (see
 * vecdot_avx512.c). */
__attribute__((noinline)) float ferry_vec_dot_q8_blocks(enum ferry_type t, const void *x, struct ferry_q8_row y,
                                                        int64_t i0, int64_t i1) {
    switch (t) {
    case FERRY_TYPE_Q4_0: return q8_blocks(&fmt_q4_0, x, y, i0, i1);
    case FERRY_TYPE_Q8_0: return q8_blocks(&fmt_q8_0, x, y, i0, i1);
    default: return NAN;
    }
}

/* ---- 256-element super-blocks against Q8_K --------------------------------
 *
 * A super-block unpacks to 256 int8 values, nsub integer sub-block scales
 * sc (and mins mn), and its f16 d (and dmin) widened. The integer sum
 * sum_j sc_j * (sub-block j of q . y) is exact, then scaled by d * d_y in
 * f32; the mins come in through the Q8_K bsums (16-element sums of y):
 * - dmin * d_y * sum_j mn_j * bsum_j. */

struct k_format {
    size_t bytes;  /* of one super-block */
    int nsub;      /* sub-blocks of QK_K / nsub elements */
    bool has_min;
    void (*unpack)(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin);
};

static void unpack_q2_K(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_q2_K *x = blk;
    for (int i = 0; i < QK_K; i++) {
        const int h = i / 128, g = (i % 128) / 32, l = i % 32;
        q[i] = (int8_t)((x->qs[32 * h + l] >> (2 * g)) & 3);
    }
    for (int j = 0; j < 16; j++) {
        sc[j] = x->scales[j] & 15;
        mn[j] = x->scales[j] >> 4;
    }
    *d = fp16_to_fp32(x->d);
    *dmin = fp16_to_fp32(x->dmin);
}

static void unpack_q3_K(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_q3_K *x = blk;
    (void)mn, (void)dmin;
    for (int i = 0; i < QK_K; i++) {
        const int h = i / 128, g = (i % 128) / 32, l = i % 32;
        const int q2 = (x->qs[32 * h + l] >> (2 * g)) & 3;
        const int hb = (x->hmask[l] >> (4 * h + g)) & 1;
        q[i] = (int8_t)(q2 - (hb ? 0 : 4));
    }
    const uint8_t *ss = x->scales;
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? ss[j] & 15 : ss[j - 8] >> 4;
        const int hi = (ss[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
    *d = fp16_to_fp32(x->d);
}

/* Q4_K and Q5_K share everything but the 5th bit (qh, NULL for Q4_K). The
 * 6-bit scale and min of sub-block j are packed as docs/types.md 5.3 says. */
static void unpack_k4_k5(const uint8_t s[12], const uint8_t qs[128], const uint8_t *qh, int8_t q[QK_K], int *sc,
                         int *mn) {
    for (int i = 0; i < QK_K; i++) {
        const int j = i / 32;
        const uint8_t byte = qs[32 * (j / 2) + i % 32];
        int v = j % 2 == 0 ? byte & 15 : byte >> 4;
        if (qh) v += 16 * ((qh[i % 32] >> j) & 1);
        q[i] = (int8_t)v;
    }
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
}

static void unpack_q4_K(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_q4_K *x = blk;
    unpack_k4_k5(x->scales, x->qs, NULL, q, sc, mn);
    *d = fp16_to_fp32(x->d);
    *dmin = fp16_to_fp32(x->dmin);
}

static void unpack_q5_K(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_q5_K *x = blk;
    unpack_k4_k5(x->scales, x->qs, x->qh, q, sc, mn);
    *d = fp16_to_fp32(x->d);
    *dmin = fp16_to_fp32(x->dmin);
}

static void unpack_q6_K(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_q6_K *x = blk;
    (void)mn, (void)dmin;
    for (int i = 0; i < QK_K; i++) {
        const int h = i / 128, g = (i % 128) / 32, l = i % 32;
        const uint8_t lb = x->ql[64 * h + 32 * (g & 1) + l];
        const int lo = g < 2 ? lb & 15 : lb >> 4;
        const int hi = (x->qh[32 * h + l] >> (2 * g)) & 3;
        q[i] = (int8_t)((lo | hi << 4) - 32);
    }
    for (int j = 0; j < 16; j++) sc[j] = x->scales[j];
    *d = fp16_to_fp32(x->d);
}

static void unpack_iq4_xs(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_iq4_xs *x = blk;
    (void)mn, (void)dmin;
    for (int j = 0; j < 8; j++) {
        unpack_nibbles_table(x->qs + 16 * j, q + 32 * j, ferry_kvalues_iq4nl);
        const int ls = ((x->scales_l[j / 2] >> (4 * (j % 2))) & 15) | (((x->scales_h >> (2 * j)) & 3) << 4);
        sc[j] = ls - 32;
    }
    *d = fp16_to_fp32(x->d);
}

static void unpack_tq2_0(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_tq2_0 *x = blk;
    (void)mn, (void)dmin;
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < 4; k++)
            for (int m = 0; m < 32; m++) q[128 * c + 32 * k + m] = (int8_t)(((x->qs[32 * c + m] >> (2 * k)) & 3) - 1);
    sc[0] = 1;
    *d = fp16_to_fp32(x->d);
}

/* Base-3 digit n of a TQ1_0 byte (docs/types.md 6). */
static int tq1_digit(uint8_t byte, int n) {
    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };
    const uint8_t shifted = (uint8_t)(byte * pow3[n]);
    return (int)(((uint16_t)shifted * 3) >> 8);
}

static void unpack_tq1_0(const void *blk, int8_t q[QK_K], int *sc, int *mn, float *d, float *dmin) {
    const block_tq1_0 *x = blk;
    (void)mn, (void)dmin;
    for (int dg = 0; dg < 5; dg++)
        for (int m = 0; m < 32; m++) q[32 * dg + m] = (int8_t)(tq1_digit(x->qs[m], dg) - 1);
    for (int dg = 0; dg < 5; dg++)
        for (int m = 0; m < 16; m++) q[160 + 16 * dg + m] = (int8_t)(tq1_digit(x->qs[32 + m], dg) - 1);
    for (int dg = 0; dg < 4; dg++)
        for (int m = 0; m < 4; m++) q[240 + 4 * dg + m] = (int8_t)(tq1_digit(x->qh[m], dg) - 1);
    sc[0] = 1;
    *d = fp16_to_fp32(x->d);
}

static const struct k_format fmt_q2_K = { sizeof(block_q2_K), 16, true, unpack_q2_K };
static const struct k_format fmt_q3_K = { sizeof(block_q3_K), 16, false, unpack_q3_K };
static const struct k_format fmt_q4_K = { sizeof(block_q4_K), 8, true, unpack_q4_K };
static const struct k_format fmt_q5_K = { sizeof(block_q5_K), 8, true, unpack_q5_K };
static const struct k_format fmt_q6_K = { sizeof(block_q6_K), 16, false, unpack_q6_K };
static const struct k_format fmt_iq4_xs = { sizeof(block_iq4_xs), 8, false, unpack_iq4_xs };
static const struct k_format fmt_tq1_0 = { sizeof(block_tq1_0), 1, false, unpack_tq1_0 };
static const struct k_format fmt_tq2_0 = { sizeof(block_tq2_0), 1, false, unpack_tq2_0 };

/* Inlined into each kernel with its format constant, like q8_blocks. */
static inline __attribute__((always_inline)) void k_dot(const struct k_format *f, int64_t n, float *s,
                                                        const void *vx, const void *vy) {
    const uint8_t *x = vx;
    const block_q8_K *y = vy;
    const int len = QK_K / f->nsub, per = 16 / f->nsub; /* elements, bsums per sub-block */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        int sc[16], mn[16];
        float d, dmin;
        f->unpack(x + (size_t)b * f->bytes, q, sc, mn, &d, &dmin);
        int32_t isum = 0;
        for (int j = 0; j < f->nsub; j++) isum += sc[j] * dot_i8(q + len * j, y[b].qs + len * j, len);
        const float dall = y[b].d * d;
        if (!f->has_min) {
            sum += dall * (float)isum;
            continue;
        }
        int32_t summ = 0;
        for (int j = 0; j < f->nsub; j++) {
            int32_t bsum = 0;
            for (int k = 0; k < per; k++) bsum += y[b].bsums[per * j + k];
            summ += mn[j] * bsum;
        }
        sum += dall * (float)isum - (y[b].d * dmin) * (float)summ;
    }
    *s = sum;
}

#define K_KERNEL(name) \
    static void vec_dot_##name(int64_t n, float *s, const void *x, const void *y) { k_dot(&fmt_##name, n, s, x, y); }
K_KERNEL(q2_K)
K_KERNEL(q3_K)
K_KERNEL(q4_K)
K_KERNEL(q5_K)
K_KERNEL(q6_K)
K_KERNEL(iq4_xs)
K_KERNEL(tq1_0)
K_KERNEL(tq2_0)
#undef K_KERNEL

/* ---- the table -------------------------------------------------------------- */

/* How activation rows are prepared (the layouts of vecdot.h). */
enum layout { LAYOUT_NONE, LAYOUT_F32, LAYOUT_Q8, LAYOUT_Q8_K };

struct kernel_entry {
    int vec_dot_type;
    enum layout layout;
    ferry_vec_dot_fn dot; /* NULL: no dot product */
};

static const struct kernel_entry portable[FERRY_TYPE_COUNT] = {
    [FERRY_TYPE_F32] = { FERRY_TYPE_F32, LAYOUT_F32, ferry_vec_dot_f32 },
    [FERRY_TYPE_F16] = { FERRY_TYPE_F16, LAYOUT_F32, vec_dot_f16 },
    [FERRY_TYPE_BF16] = { FERRY_TYPE_BF16, LAYOUT_F32, vec_dot_bf16 },
    [FERRY_TYPE_Q4_0] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_q4_0 },
    [FERRY_TYPE_Q4_1] = { FERRY_TYPE_Q8_1, LAYOUT_Q8, vec_dot_q4_1 },
    [FERRY_TYPE_Q5_0] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_q5_0 },
    [FERRY_TYPE_Q5_1] = { FERRY_TYPE_Q8_1, LAYOUT_Q8, vec_dot_q5_1 },
    [FERRY_TYPE_Q8_0] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_q8_0 },
    [FERRY_TYPE_IQ4_NL] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_iq4_nl },
    [FERRY_TYPE_MXFP4] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_mxfp4 },
    [FERRY_TYPE_NVFP4] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_nvfp4 },
    [FERRY_TYPE_Q1_0] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_q1_0 },
    [FERRY_TYPE_Q2_0] = { FERRY_TYPE_Q8_0, LAYOUT_Q8, vec_dot_q2_0 },
    [FERRY_TYPE_Q2_K] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_q2_K },
    [FERRY_TYPE_Q3_K] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_q3_K },
    [FERRY_TYPE_Q4_K] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_q4_K },
    [FERRY_TYPE_Q5_K] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_q5_K },
    [FERRY_TYPE_Q6_K] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_q6_K },
    [FERRY_TYPE_IQ4_XS] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_iq4_xs },
    [FERRY_TYPE_TQ1_0] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_tq1_0 },
    [FERRY_TYPE_TQ2_0] = { FERRY_TYPE_Q8_K, LAYOUT_Q8_K, vec_dot_tq2_0 },
};

static const struct kernel_entry *entry(enum ferry_type t) {
    if ((int)t < 0 || (int)t >= FERRY_TYPE_COUNT || !portable[t].dot) return NULL;
    return &portable[t];
}

int ferry_vec_dot_type(enum ferry_type t) {
    const struct kernel_entry *e = entry(t);
    return e ? e->vec_dot_type : -1;
}

size_t ferry_vec_dot_row_size(enum ferry_type t, int64_t n) {
    const struct kernel_entry *e = entry(t);
    if (!e || n < 0) return SIZE_MAX;
    size_t bytes;
    switch (e->layout) {
    case LAYOUT_F32: bytes = (uint64_t)n > SIZE_MAX / 4 ? SIZE_MAX : (size_t)n * 4; break;
    case LAYOUT_Q8: bytes = (uint64_t)n > SIZE_MAX / 2 ? SIZE_MAX : (size_t)n + (size_t)(n / 32) * 8; break;
    default: bytes = ferry_row_size(FERRY_TYPE_Q8_K, n); break;
    }
    return bytes > SIZE_MAX - 63 ? SIZE_MAX : (bytes + 63) & ~(size_t)63;
}

/* AVX-512 VNNI is a separate CPUID bit from the F/BW/VL/DQ the level means. */
bool ferry_vec_dot_vnni(void) {
#if defined(__x86_64__) || defined(__i386__)
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    return has == 1;
#else
    return false;
#endif
}

/* The activation converters of each vec_dot type: from f32 and from rows
 * already in that type, portable and (where one exists) AVX2. A NULL
 * from_f32 reads f32 rows in place (F32 weights). */
static const struct converters {
    ferry_prepare_fn from_f32, from_f32_avx2, from_raw, from_raw_avx2;
} converters[FERRY_TYPE_COUNT] = {
    [FERRY_TYPE_F16] = { ferry_prepare_f16, ferry_prepare_f16_avx2, widen_f16, ferry_widen_f16_avx2 },
    [FERRY_TYPE_BF16] = { ferry_prepare_bf16, ferry_prepare_bf16_avx2, widen_bf16, widen_bf16 },
    [FERRY_TYPE_Q8_0] = { ferry_prepare_q8_0, ferry_prepare_q8_0_avx2, unpack_q8_0_row, unpack_q8_0_row },
    [FERRY_TYPE_Q8_1] = { ferry_prepare_q8_1, ferry_prepare_q8_1_avx2, unpack_q8_1_row, unpack_q8_1_row },
    [FERRY_TYPE_Q8_K] = { prepare_q8_K, ferry_quantize_row_q8_K_avx2, NULL, NULL },
};

static void set_converters(struct ferry_vec_dot *out, enum ferry_simd_level level) {
    const struct converters *c = &converters[out->vec_dot_type];
    const bool avx2 = level >= FERRY_SIMD_AVX2;
    out->from_f32 = avx2 ? c->from_f32_avx2 : c->from_f32;
    out->from_raw = avx2 ? c->from_raw_avx2 : c->from_raw;
}

static ferry_vec_dot_fn avx2_dot(enum ferry_type t) {
    switch (t) {
    case FERRY_TYPE_F32: return ferry_vec_dot_f32_avx2;
    case FERRY_TYPE_F16: return ferry_vec_dot_f16_avx2;
    case FERRY_TYPE_BF16: return ferry_vec_dot_bf16_avx2;
    case FERRY_TYPE_Q4_0: return ferry_vec_dot_q4_0_avx2;
    case FERRY_TYPE_Q8_0: return ferry_vec_dot_q8_0_avx2;
    case FERRY_TYPE_IQ4_NL: return ferry_vec_dot_iq4_nl_avx2;
    case FERRY_TYPE_MXFP4: return ferry_vec_dot_mxfp4_avx2;
    case FERRY_TYPE_Q4_K: return ferry_vec_dot_q4_K_avx2;
    case FERRY_TYPE_Q6_K: return ferry_vec_dot_q6_K_avx2;
    default: return NULL;
    }
}

static ferry_vec_dot_fn avx512_dot(enum ferry_type t) {
    const bool vnni = ferry_vec_dot_vnni();
    switch (t) {
    case FERRY_TYPE_Q4_0: return vnni ? ferry_vec_dot_q4_0_avx512_vnni : ferry_vec_dot_q4_0_avx512;
    case FERRY_TYPE_Q8_0: return vnni ? ferry_vec_dot_q8_0_avx512_vnni : ferry_vec_dot_q8_0_avx512;
    default: return NULL;
    }
}

bool ferry_vec_dot_get(enum ferry_type t, enum ferry_simd_level level, struct ferry_vec_dot *out) {
    const struct kernel_entry *e = entry(t);
    if (!e) return false;
    out->vec_dot_type = (enum ferry_type)e->vec_dot_type;
    out->dot = e->dot;
    set_converters(out, level);
    if (level >= FERRY_SIMD_AVX2) {
        ferry_vec_dot_fn f = avx2_dot(t);
        if (f) out->dot = f;
    }
    if (level >= FERRY_SIMD_AVX512) {
        ferry_vec_dot_fn f = avx512_dot(t);
        if (f) out->dot = f;
    }
    return true;
}
