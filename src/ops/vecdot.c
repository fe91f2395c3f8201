/* Portable dot-product kernels, the activation converters, and the
 * per-type kernel table.
 *
 * Numerics follow ops.md B.14: float types multiply exactly-representable
 * products and sum them (here in double, which is at least as accurate as
 * ggml's f32 lanes); quantized types form an exact integer sum per block
 * and scale it by d_a*d_b in f32, the K-quants per 256-element super-block
 * with their 6-bit/8-bit sub-block scales and the Q8_K bsums for the mins. */
#include "vecdot.h"

#include <string.h>

#include "tensor/blocks.h"
#include "tensor/fp16.h"

/* ---- small helpers ------------------------------------------------------ */

static int32_t dot_i8(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

/* 2^(e-128): half the E8M0 value, matching the doubled FP4 table (types.md 4.8). */
static float e8m0_half(uint8_t e) {
    return f32_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* Unsigned E4M3 NVFP4 sub-block scale, halved like e8m0_half (types.md 4.9). */
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

/* ---- float types (y: f32 values, already rounded to the vec_dot type) ---- */

void ferry_vec_dot_f32(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * (double)y[i];
    *s = (float)sum;
}

/* f16 x f16 products are exact in f32 (and bf16 x bf16 likewise). */
static void vec_dot_f16(int64_t n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx;
    const float *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(fp16_to_fp32(x[i]) * y[i]);
    *s = (float)sum;
}

static void vec_dot_bf16(int64_t n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx;
    const float *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(bf16_to_fp32(x[i]) * y[i]);
    *s = (float)sum;
}

void ferry_prepare_f16(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}

void ferry_prepare_bf16(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
}

static void widen_f16(const void *vx, void *vy, int64_t n) {
    const uint16_t *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

static void widen_bf16(const void *vx, void *vy, int64_t n) {
    const uint16_t *x = vx;
    float *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(x[i]);
}

/* ---- prepared Q8_0 / Q8_1 activation rows -------------------------------- */

static int32_t sum_i8(const int8_t *q, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += q[i];
    return s;
}

/* Through ggml's x86 quantizers one block at a time, so the bytes are theirs. */
void ferry_prepare_q8_0(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    int8_t *q = vy;
    float *d = (float *)(void *)(q + n), *sums = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        block_q8_0 blk;
        ferry_quantize_row_q8_0_x86(x + 32 * b, &blk, 32);
        memcpy(q + 32 * b, blk.qs, 32);
        d[b] = fp16_to_fp32(blk.d);
        sums[b] = d[b] * (float)sum_i8(blk.qs, 32); /* exact: 11 x 13 significant bits */
    }
}

void ferry_prepare_q8_1(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    int8_t *q = vy;
    float *d = (float *)(void *)(q + n), *sums = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        block_q8_1 blk;
        ferry_quantize_row_q8_1_x86(x + 32 * b, &blk, 32);
        memcpy(q + 32 * b, blk.qs, 32);
        d[b] = fp16_to_fp32(blk.d);
        sums[b] = fp16_to_fp32(blk.s);
    }
}

/* Rows a client sent already in Q8_0 / Q8_1. */
static void unpack_q8_0_row(const void *vx, void *vy, int64_t n) {
    const block_q8_0 *x = vx;
    int8_t *q = vy;
    float *d = (float *)(void *)(q + n), *sums = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        memcpy(q + 32 * b, x[b].qs, 32);
        d[b] = fp16_to_fp32(x[b].d);
        sums[b] = d[b] * (float)sum_i8(x[b].qs, 32);
    }
}

static void unpack_q8_1_row(const void *vx, void *vy, int64_t n) {
    const block_q8_1 *x = vx;
    int8_t *q = vy;
    float *d = (float *)(void *)(q + n), *sums = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        memcpy(q + 32 * b, x[b].qs, 32);
        d[b] = fp16_to_fp32(x[b].d);
        sums[b] = fp16_to_fp32(x[b].s);
    }
}

static void prepare_q8_K(const void *x, void *y, int64_t n) { ferry_quantize_row_q8_K(x, y, n); }

/* ---- 32-element blocks against prepared Q8_0 / Q8_1 ------------------------ */

static void vec_dot_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q8_0 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++)
        sum += (float)dot_i8(x[i].qs, y.q + 32 * i, 32) * (fp16_to_fp32(x[i].d) * y.d[i]);
    *s = sum;
}

static void vec_dot_q4_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_nibbles(x[i].qs, q, 8);
        sum += (float)dot_i8(q, y.q + 32 * i, 32) * (fp16_to_fp32(x[i].d) * y.d[i]);
    }
    *s = sum;
}

static void vec_dot_q5_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_q5(x[i].qs, x[i].qh, q, 16);
        sum += (float)dot_i8(q, y.q + 32 * i, 32) * (fp16_to_fp32(x[i].d) * y.d[i]);
    }
    *s = sum;
}

static void vec_dot_iq4_nl(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_nibbles_table(x[i].qs, q, ferry_kvalues_iq4nl);
        sum += (float)dot_i8(q, y.q + 32 * i, 32) * (fp16_to_fp32(x[i].d) * y.d[i]);
    }
    *s = sum;
}

static void vec_dot_mxfp4(int64_t n, float *s, const void *vx, const void *vy) {
    const block_mxfp4 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_nibbles_table(x[i].qs, q, ferry_kvalues_mxfp4);
        sum += (float)dot_i8(q, y.q + 32 * i, 32) * (e8m0_half(x[i].e) * y.d[i]);
    }
    *s = sum;
}

/* The m_a*s_b term uses the f16-rounded s of Q8_1, as ggml does. */
static void vec_dot_q4_1(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_nibbles(x[i].qs, q, 0);
        const int32_t isum = dot_i8(q, y.q + 32 * i, 32);
        sum += (fp16_to_fp32(x[i].d) * y.d[i]) * (float)isum + fp16_to_fp32(x[i].m) * y.s[i];
    }
    *s = sum;
}

static void vec_dot_q5_1(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        unpack_q5(x[i].qs, x[i].qh, q, 0);
        const int32_t isum = dot_i8(q, y.q + 32 * i, 32);
        sum += (fp16_to_fp32(x[i].d) * y.d[i]) * (float)isum + fp16_to_fp32(x[i].m) * y.s[i];
    }
    *s = sum;
}

/* Blocks larger than Q8_0's (Q2_0: 64, Q1_0: 128, NVFP4: 64) pair with
 * consecutive 32-element activation blocks, each with its own d_b. */
static void vec_dot_q2_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q2_0 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK2_0; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int part = 0; part < 2; part++) {
            int8_t q[32];
            for (int j = 0; j < 32; j++) {
                const int e = 32 * part + j;
                q[j] = (int8_t)(((x[i].qs[e / 4] >> (2 * (e % 4))) & 3) - 1);
            }
            const int64_t b = 2 * i + part;
            sum += (float)dot_i8(q, y.q + 32 * b, 32) * (d * y.d[b]);
        }
    }
    *s = sum;
}

static void vec_dot_q1_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q1_0 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK1_0; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int part = 0; part < 4; part++) {
            int8_t q[32];
            for (int j = 0; j < 32; j++) {
                const int e = 32 * part + j;
                q[j] = (int8_t)(((x[i].qs[e / 8] >> (e % 8)) & 1) ? 1 : -1);
            }
            const int64_t b = 4 * i + part;
            sum += (float)dot_i8(q, y.q + 32 * b, 32) * (d * y.d[b]);
        }
    }
    *s = sum;
}

static void vec_dot_nvfp4(int64_t n, float *s, const void *vx, const void *vy) {
    const block_nvfp4 *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_NVFP4; i++) {
        for (int sb = 0; sb < 4; sb++) {
            /* sub-block sb: elements 16sb+j (low nibble of qs[8sb+j]) and 16sb+j+8 (high) */
            int8_t q[16];
            for (int j = 0; j < 8; j++) {
                q[j] = ferry_kvalues_mxfp4[x[i].qs[8 * sb + j] & 15];
                q[j + 8] = ferry_kvalues_mxfp4[x[i].qs[8 * sb + j] >> 4];
            }
            const int64_t e0 = 64 * i + 16 * sb;
            const int32_t isum = dot_i8(q, y.q + e0, 16);
            sum += (float)isum * (ue4m3_half(x[i].d[sb]) * y.d[e0 / 32]);
        }
    }
    *s = sum;
}

/* ---- 256-element super-blocks against Q8_K -------------------------------- */

/* 6-bit scale and min of sub-block j of Q4_K/Q5_K (types.md 5.3). */
static void k4_scale_min(const uint8_t s[12], int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Sum of sc_j * (sub-block j of q . y) over nsub sub-blocks of len elements. */
static int32_t scaled_sub_dots(const int8_t *q, const int8_t *y, const int *sc, int nsub, int len) {
    int32_t isum = 0;
    for (int j = 0; j < nsub; j++) isum += sc[j] * dot_i8(q + len * j, y + len * j, len);
    return isum;
}

static void vec_dot_q2_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        for (int i = 0; i < QK_K; i++) {
            const int h = i / 128, g = (i % 128) / 32, l = i % 32;
            q[i] = (int8_t)((x[b].qs[32 * h + l] >> (2 * g)) & 3);
        }
        int sc[16];
        int32_t summ = 0;
        for (int j = 0; j < 16; j++) {
            sc[j] = x[b].scales[j] & 15;
            summ += (x[b].scales[j] >> 4) * y[b].bsums[j];
        }
        const int32_t isum = scaled_sub_dots(q, y[b].qs, sc, 16, 16);
        const float dall = y[b].d * fp16_to_fp32(x[b].d);
        const float dmin = y[b].d * fp16_to_fp32(x[b].dmin);
        sum += dall * (float)isum - dmin * (float)summ;
    }
    *s = sum;
}

static void vec_dot_q3_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        for (int i = 0; i < QK_K; i++) {
            const int h = i / 128, g = (i % 128) / 32, l = i % 32;
            const int q2 = (x[b].qs[32 * h + l] >> (2 * g)) & 3;
            const int hb = (x[b].hmask[l] >> (4 * h + g)) & 1;
            q[i] = (int8_t)(q2 - (hb ? 0 : 4));
        }
        int sc[16];
        const uint8_t *ss = x[b].scales;
        for (int j = 0; j < 16; j++) {
            const int lo = j < 8 ? ss[j] & 15 : ss[j - 8] >> 4;
            const int hi = (ss[8 + j % 4] >> (2 * (j / 4))) & 3;
            sc[j] = (lo | hi << 4) - 32;
        }
        const int32_t isum = scaled_sub_dots(q, y[b].qs, sc, 16, 16);
        sum += (y[b].d * fp16_to_fp32(x[b].d)) * (float)isum;
    }
    *s = sum;
}

/* Q4_K and Q5_K share everything but the 5th bit. */
static float k4_k5_superblock(const uint8_t scales[12], const uint8_t qs[128], const uint8_t *qh,
                              ferry_half d, ferry_half dmin, const block_q8_K *y) {
    int8_t q[QK_K];
    for (int i = 0; i < QK_K; i++) {
        const int j = i / 32;
        const uint8_t byte = qs[32 * (j / 2) + i % 32];
        int v = j % 2 == 0 ? byte & 15 : byte >> 4;
        if (qh) v += 16 * ((qh[i % 32] >> j) & 1);
        q[i] = (int8_t)v;
    }
    int sc[8];
    int32_t summ = 0;
    for (int j = 0; j < 8; j++) {
        int m;
        k4_scale_min(scales, j, &sc[j], &m);
        summ += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    const int32_t isum = scaled_sub_dots(q, y->qs, sc, 8, 32);
    const float dall = y->d * fp16_to_fp32(d);
    const float dm = y->d * fp16_to_fp32(dmin);
    return dall * (float)isum - dm * (float)summ;
}

static void vec_dot_q4_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++)
        sum += k4_k5_superblock(x[b].scales, x[b].qs, NULL, x[b].d, x[b].dmin, &y[b]);
    *s = sum;
}

static void vec_dot_q5_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++)
        sum += k4_k5_superblock(x[b].scales, x[b].qs, x[b].qh, x[b].d, x[b].dmin, &y[b]);
    *s = sum;
}

static void vec_dot_q6_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        for (int i = 0; i < QK_K; i++) {
            const int h = i / 128, g = (i % 128) / 32, l = i % 32;
            const uint8_t lb = x[b].ql[64 * h + 32 * (g & 1) + l];
            const int lo = g < 2 ? lb & 15 : lb >> 4;
            const int hi = (x[b].qh[32 * h + l] >> (2 * g)) & 3;
            q[i] = (int8_t)((lo | hi << 4) - 32);
        }
        int sc[16];
        for (int j = 0; j < 16; j++) sc[j] = x[b].scales[j];
        const int32_t isum = scaled_sub_dots(q, y[b].qs, sc, 16, 16);
        sum += (y[b].d * fp16_to_fp32(x[b].d)) * (float)isum;
    }
    *s = sum;
}

static void vec_dot_iq4_xs(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_xs *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        int sc[8];
        for (int j = 0; j < 8; j++) {
            unpack_nibbles_table(x[b].qs + 16 * j, q + 32 * j, ferry_kvalues_iq4nl);
            const int ls = ((x[b].scales_l[j / 2] >> (4 * (j % 2))) & 15) |
                           (((x[b].scales_h >> (2 * j)) & 3) << 4);
            sc[j] = ls - 32;
        }
        const int32_t isum = scaled_sub_dots(q, y[b].qs, sc, 8, 32);
        sum += (y[b].d * fp16_to_fp32(x[b].d)) * (float)isum;
    }
    *s = sum;
}

static void vec_dot_tq2_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq2_0 *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        for (int c = 0; c < 2; c++)
            for (int k = 0; k < 4; k++)
                for (int m = 0; m < 32; m++)
                    q[128 * c + 32 * k + m] = (int8_t)(((x[b].qs[32 * c + m] >> (2 * k)) & 3) - 1);
        sum += (y[b].d * fp16_to_fp32(x[b].d)) * (float)dot_i8(q, y[b].qs, QK_K);
    }
    *s = sum;
}

/* Base-3 digit n of a TQ1_0 byte (types.md 6). */
static int tq1_digit(uint8_t byte, int n) {
    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };
    const uint8_t shifted = (uint8_t)(byte * pow3[n]);
    return (int)(((uint16_t)shifted * 3) >> 8);
}

static void vec_dot_tq1_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq1_0 *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        for (int dg = 0; dg < 5; dg++)
            for (int m = 0; m < 32; m++) q[32 * dg + m] = (int8_t)(tq1_digit(x[b].qs[m], dg) - 1);
        for (int dg = 0; dg < 5; dg++)
            for (int m = 0; m < 16; m++) q[160 + 16 * dg + m] = (int8_t)(tq1_digit(x[b].qs[32 + m], dg) - 1);
        for (int dg = 0; dg < 4; dg++)
            for (int m = 0; m < 4; m++) q[240 + 4 * dg + m] = (int8_t)(tq1_digit(x[b].qh[m], dg) - 1);
        sum += (y[b].d * fp16_to_fp32(x[b].d)) * (float)dot_i8(q, y[b].qs, QK_K);
    }
    *s = sum;
}

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
static bool cpu_has_vnni(void) {
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

static void set_converters(struct ferry_vec_dot *out, enum ferry_type t, enum ferry_simd_level level) {
    const bool avx2 = level >= FERRY_SIMD_AVX2;
    out->from_f32 = NULL;
    out->from_raw = NULL;
    switch (out->vec_dot_type) {
    case FERRY_TYPE_F16:
        out->from_f32 = avx2 ? ferry_prepare_f16_avx2 : ferry_prepare_f16;
        out->from_raw = avx2 ? ferry_widen_f16_avx2 : widen_f16;
        break;
    case FERRY_TYPE_BF16:
        out->from_f32 = avx2 ? ferry_prepare_bf16_avx2 : ferry_prepare_bf16;
        out->from_raw = widen_bf16;
        break;
    case FERRY_TYPE_Q8_0:
        out->from_f32 = avx2 ? ferry_prepare_q8_0_avx2 : ferry_prepare_q8_0;
        out->from_raw = unpack_q8_0_row;
        break;
    case FERRY_TYPE_Q8_1:
        out->from_f32 = avx2 ? ferry_prepare_q8_1_avx2 : ferry_prepare_q8_1;
        out->from_raw = unpack_q8_1_row;
        break;
    case FERRY_TYPE_Q8_K:
        out->from_f32 = avx2 ? ferry_quantize_row_q8_K_avx2 : prepare_q8_K;
        break;
    default: /* F32 weights read f32 rows in place */
        break;
    }
    (void)t;
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
    const bool vnni = cpu_has_vnni();
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
    set_converters(out, t, level);
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
