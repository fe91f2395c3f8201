/* Legacy 32-element quantized types (docs/types.md section 4) and the small
 * 64/128-element ones (Q2_0, Q1_0, NVFP4): row dequantizers and the CPU
 * backend's reference quantizers, bit for bit.
 *
 * All arithmetic is f32 in the order docs/types.md writes it; FMA contraction
 * must stay off or the quantizers stop matching ggml. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "ferry/types.h"
#include "fp16.h"
#include "quants.h"

const int8_t ferry_kvalues_iq4nl[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* E2M1 code points times two; the scales carry the compensating 1/2. */
const int8_t ferry_kvalues_mxfp4[16] = {
    0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
};

/* ---- helpers ---------------------------------------------------------- */

/* C's (int32_t)v, defined for every input: NaN and out-of-range values give
 * INT32_MIN as x86's cvttss2si does. The data come from clients, so a NaN
 * must not be undefined behaviour. ggml's (int8_t)/(uint8_t) casts of floats
 * compile to this conversion followed by taking the low byte. */
static int32_t trunc_i32(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
    return (int32_t)v;
}

/* Round to nearest, ties to even, as ggml's nearest_int: valid for
 * |v| <= 4194303, which every caller guarantees for finite data. */
static int32_t round_even(float v) {
    float t = v + 12582912.0f;
    uint32_t u;
    memcpy(&u, &t, sizeof u);
    return (int32_t)(u & 0x007fffff) - 0x00400000;
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* First element of largest magnitude, with its sign (strict comparison, so
 * ties keep the earlier one). */
static float signed_extreme(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static float abs_max(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]);
    return amax;
}

/* Two 4-bit codes into one byte; element j low, element j+16 high. */
static uint8_t pack_nibbles(int lo, int hi) { return (uint8_t)((unsigned)lo | ((unsigned)hi << 4)); }

static uint32_t load_u32(const uint8_t b[4]) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void store_u32(uint8_t b[4], uint32_t v) {
    for (int k = 0; k < 4; k++) b[k] = (uint8_t)(v >> (8 * k));
}

/* 2^(e-128) as f32 bits: half the E8M0 value, matching the doubled T_fp4. */
static float e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    return f32_from_bits(bits);
}

/* Unsigned E4M3 scale of NVFP4, halved like e8m0_half. */
static float ue4m3_half(uint8_t x) {
    if (x == 0 || x == 0x7f) return 0.0f;
    int exp = (x >> 3) & 15;
    int man = x & 7;
    float raw = exp == 0 ? ldexpf((float)man, -9) : ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return raw * 0.5f;
}

/* ---- Q4_0 ------------------------------------------------------------- */

void ferry_dequant_row_q4_0(const void *x, float *y, int64_t n) {
    const block_q4_0 *b = x;
    for (int64_t i = 0; i < n / QK4_0; i++, b++, y += QK4_0) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = (float)((b->qs[j] & 15) - 8) * d;
            y[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
        }
    }
}

void ferry_quant_row_q4_0(const float *x, void *y, int64_t n) {
    block_q4_0 *b = y;
    for (int64_t i = 0; i < n / QK4_0; i++, b++, x += QK4_0) {
        const float max = signed_extreme(x, QK4_0);
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* x*id is in [-8, 8]: +8.5 then truncation is a floor of x*id+8.5. */
            int q0 = min_int(15, (int8_t)trunc_i32(x[j] * id + 8.5f));
            int q1 = min_int(15, (int8_t)trunc_i32(x[j + 16] * id + 8.5f));
            b->qs[j] = pack_nibbles(q0 & 255, q1 & 255);
        }
    }
}

/* ---- Q4_1 ------------------------------------------------------------- */

void ferry_dequant_row_q4_1(const void *x, float *y, int64_t n) {
    const block_q4_1 *b = x;
    for (int64_t i = 0; i < n / QK4_1; i++, b++, y += QK4_1) {
        const float d = fp16_to_fp32(b->d);
        const float m = fp16_to_fp32(b->m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (float)(b->qs[j] & 15) * d + m;
            y[j + 16] = (float)(b->qs[j] >> 4) * d + m;
        }
    }
}

/* Block minimum and maximum, from +FLT_MAX / -FLT_MAX as the reference does. */
static void min_max(const float *x, int n, float *min, float *max) {
    *min = 3.40282347e+38f;
    *max = -3.40282347e+38f;
    for (int j = 0; j < n; j++) {
        if (x[j] < *min) *min = x[j];
        if (x[j] > *max) *max = x[j];
    }
}

void ferry_quant_row_q4_1(const float *x, void *y, int64_t n) {
    block_q4_1 *b = y;
    for (int64_t i = 0; i < n / QK4_1; i++, b++, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = fp32_to_fp16(d);
        b->m = fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = min_int(15, (int8_t)trunc_i32((x[j] - min) * id + 0.5f));
            int q1 = min_int(15, (int8_t)trunc_i32((x[j + 16] - min) * id + 0.5f));
            b->qs[j] = pack_nibbles(q0 & 255, q1 & 255);
        }
    }
}

/* ---- Q5_0 / Q5_1 ------------------------------------------------------ */

/* 5-bit code of element j (0..31): low nibble from qs, bit 4 from qh bit j. */
static int q5_code(const uint8_t qs[16], uint32_t qh, int j) {
    int lo = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

void ferry_dequant_row_q5_0(const void *x, float *y, int64_t n) {
    const block_q5_0 *b = x;
    for (int64_t i = 0; i < n / QK5_0; i++, b++, y += QK5_0) {
        const float d = fp16_to_fp32(b->d);
        const uint32_t qh = load_u32(b->qh);
        for (int j = 0; j < QK5_0; j++) y[j] = (float)(q5_code(b->qs, qh, j) - 16) * d;
    }
}

void ferry_dequant_row_q5_1(const void *x, float *y, int64_t n) {
    const block_q5_1 *b = x;
    for (int64_t i = 0; i < n / QK5_1; i++, b++, y += QK5_1) {
        const float d = fp16_to_fp32(b->d);
        const float m = fp16_to_fp32(b->m);
        const uint32_t qh = load_u32(b->qh);
        for (int j = 0; j < QK5_1; j++) y[j] = (float)q5_code(b->qs, qh, j) * d + m;
    }
}

/* Packs 32 five-bit codes (given as bytes, as the reference keeps them). */
static void pack_q5(const uint8_t q[32], uint8_t qs[16], uint8_t qh_bytes[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = pack_nibbles(q[j] & 15, q[j + 16] & 15);
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    store_u32(qh_bytes, qh);
}

void ferry_quant_row_q5_0(const float *x, void *y, int64_t n) {
    block_q5_0 *b = y;
    for (int64_t i = 0; i < n / QK5_0; i++, b++, x += QK5_0) {
        const float max = signed_extreme(x, QK5_0);
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = fp32_to_fp16(d);
        uint8_t q[QK5_0];
        for (int j = 0; j < QK5_0; j++)
            q[j] = (uint8_t)min_int(31, (int8_t)trunc_i32(x[j] * id + 16.5f));
        pack_q5(q, b->qs, b->qh);
    }
}

void ferry_quant_row_q5_1(const float *x, void *y, int64_t n) {
    block_q5_1 *b = y;
    for (int64_t i = 0; i < n / QK5_1; i++, b++, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = fp32_to_fp16(d);
        b->m = fp32_to_fp16(min);
        uint8_t q[QK5_1];
        for (int j = 0; j < QK5_1; j++) q[j] = (uint8_t)trunc_i32((x[j] - min) * id + 0.5f); /* no clamp */
        pack_q5(q, b->qs, b->qh);
    }
}

/* ---- Q8_0 / Q8_1 ------------------------------------------------------ */

void ferry_dequant_row_q8_0(const void *x, float *y, int64_t n) {
    const block_q8_0 *b = x;
    for (int64_t i = 0; i < n / QK8_0; i++, b++, y += QK8_0) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK8_0; j++) y[j] = (float)b->qs[j] * d;
    }
}

void ferry_dequant_row_q8_1(const void *x, float *y, int64_t n) {
    const block_q8_1 *b = x;
    for (int64_t i = 0; i < n / QK8_1; i++, b++, y += QK8_1) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK8_1; j++) y[j] = (float)b->qs[j] * d;
    }
}

/* One block the x86 way: d = amax/127, but the quants use 127/amax and round
 * half to even. Returns the unrounded d and the sum of the quants. */
static float quant_block_q8_x86(const float *x, int8_t qs[32], int *sum) {
    const float amax = abs_max(x, 32);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *sum = 0;
    for (int j = 0; j < 32; j++) {
        const int32_t q = round_even(x[j] * id); /* |x*id| <= 127 for finite data */
        qs[j] = (int8_t)q;
        *sum += q;
    }
    return d;
}

void ferry_quant_row_q8_0(const float *x, void *y, int64_t n) {
    block_q8_0 *b = y;
    for (int64_t i = 0; i < n / QK8_0; i++, b++, x += QK8_0) {
        int sum;
        b->d = fp32_to_fp16(quant_block_q8_x86(x, b->qs, &sum));
    }
}

void ferry_quantize_row_q8_0_x86(const float *x, void *y, int64_t n) { ferry_quant_row_q8_0(x, y, n); }

void ferry_quantize_row_q8_1_x86(const float *x, void *y, int64_t n) {
    block_q8_1 *b = y;
    for (int64_t i = 0; i < n / QK8_1; i++, b++, x += QK8_1) {
        int sum;
        const float d = quant_block_q8_x86(x, b->qs, &sum);
        b->d = fp32_to_fp16(d);
        b->s = fp32_to_fp16(d * (float)sum);
    }
}

/* ---- IQ4_NL ----------------------------------------------------------- */

void ferry_dequant_row_iq4_nl(const void *x, float *y, int64_t n) {
    const block_iq4_nl *b = x;
    for (int64_t i = 0; i < n / QK4_NL; i++, b++, y += QK4_NL) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK4_NL / 2; j++) {
            y[j] = d * (float)ferry_kvalues_iq4nl[b->qs[j] & 15];
            y[j + 16] = d * (float)ferry_kvalues_iq4nl[b->qs[j] >> 4];
        }
    }
}

/* Index of the T_nl value nearest to v; an exact midpoint goes to the upper one. */
static int iq4nl_best_index(float v) {
    const int8_t *t = ferry_kvalues_iq4nl;
    if (v <= (float)t[0]) return 0;
    if (v >= (float)t[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v < (float)t[mid]) hi = mid;
        else lo = mid;
    }
    return v - (float)t[hi - 1] < (float)t[hi] - v ? hi - 1 : hi;
}

void ferry_quant_row_iq4_nl(const float *x, void *y, int64_t n) {
    block_iq4_nl *b = y;
    /* ggml packs whatever indices its buffer holds for an all-zero block
     * (stale ones); keep ours across the row too, starting from zero. Such
     * blocks have d = 0 and dequantize to zeros either way. */
    uint8_t l[QK4_NL] = {0};
    for (int64_t i = 0; i < n / QK4_NL; i++, b++, x += QK4_NL) {
        const float max = signed_extreme(x, QK4_NL);
        float d = 0.0f;
        if (fabsf(max) >= 1e-15f) {
            const float id = 1.0f / (max / (float)ferry_kvalues_iq4nl[0]);
            /* Weighted least-squares refit of the scale, weights x^2. */
            float sumqx = 0.0f, sumq2 = 0.0f;
            for (int j = 0; j < QK4_NL; j++) {
                l[j] = (uint8_t)iq4nl_best_index(id * x[j]);
                const float q = (float)ferry_kvalues_iq4nl[l[j]];
                const float w = x[j] * x[j];
                sumqx += w * q * x[j];
                sumq2 += w * q * q;
            }
            d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
        }
        b->d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_NL / 2; j++) b->qs[j] = pack_nibbles(l[j], l[j + 16]);
    }
}

/* ---- MXFP4 ------------------------------------------------------------ */

void ferry_dequant_row_mxfp4(const void *x, float *y, int64_t n) {
    const block_mxfp4 *b = x;
    for (int64_t i = 0; i < n / QK_MXFP4; i++, b++, y += QK_MXFP4) {
        const float d = e8m0_half(b->e);
        for (int j = 0; j < QK_MXFP4 / 2; j++) {
            y[j] = (float)ferry_kvalues_mxfp4[b->qs[j] & 15] * d;
            y[j + 16] = (float)ferry_kvalues_mxfp4[b->qs[j] >> 4] * d;
        }
    }
}

/* Code whose value T_fp4[i]*d is nearest to v; ties keep the lowest code,
 * so +0 (code 0) wins over -0 (code 8). */
static int fp4_best_index(float v, float d) {
    int best = 0;
    float best_err = fabsf((float)ferry_kvalues_mxfp4[0] * d - v);
    for (int i = 1; i < 16; i++) {
        float err = fabsf((float)ferry_kvalues_mxfp4[i] * d - v);
        if (err < best_err) {
            best = i;
            best_err = err;
        }
    }
    return best;
}

void ferry_quant_row_mxfp4(const float *x, void *y, int64_t n) {
    block_mxfp4 *b = y;
    for (int64_t i = 0; i < n / QK_MXFP4; i++, b++, x += QK_MXFP4) {
        const float amax = abs_max(x, QK_MXFP4);
        /* f32 expression converted to u8 (wraps like the x86 conversion). */
        const uint8_t e = amax > 0.0f ? (uint8_t)trunc_i32(floorf(log2f(amax)) - 2.0f + 127.0f) : 0;
        const float d = e8m0_half(e);
        b->e = e;
        for (int j = 0; j < QK_MXFP4 / 2; j++)
            b->qs[j] = pack_nibbles(fp4_best_index(x[j], d), fp4_best_index(x[j + 16], d));
    }
}

/* ---- NVFP4 ------------------------------------------------------------ */

void ferry_dequant_row_nvfp4(const void *x, float *y, int64_t n) {
    const block_nvfp4 *b = x;
    for (int64_t i = 0; i < n / QK_NVFP4; i++, b++, y += QK_NVFP4) {
        /* Four 16-element sub-blocks, each with its own scale and 8 bytes:
         * element 16s+j low nibble of qs[8s+j], 16s+j+8 the high nibble. */
        for (int s = 0; s < 4; s++) {
            const float d = ue4m3_half(b->d[s]);
            const uint8_t *qs = b->qs + 8 * s;
            float *ys = y + 16 * s;
            for (int j = 0; j < 8; j++) {
                ys[j] = (float)ferry_kvalues_mxfp4[qs[j] & 15] * d;
                ys[j + 8] = (float)ferry_kvalues_mxfp4[qs[j] >> 4] * d;
            }
        }
    }
}

/* Unsigned E4M3 code for a positive scale (ggml's fp32_to_ue4m3): 0 for
 * anything not positive (NaN included), saturating at 448 (code 0x7e, the
 * largest finite one). Normal values keep the top three mantissa bits and
 * round on the fourth, half up; values below 2^-6 become subnormal codes
 * M*2^-9 rounded half up, 0 when they round below 1. */
static uint8_t ue4m3_from_f32(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const uint32_t bits = f32_bits(x);
    int exp = (int)((bits >> 23) & 0xff) - 127 + 7;
    if (exp <= 0) {
        int man = (int)(x * 512.0f + 0.5f);
        if (man > 7) man = 7;
        return man < 1 ? 0 : (uint8_t)man;
    }
    if (exp >= 15) return 0x7e;
    int man = (int)((bits >> 20) & 7) + (int)((bits >> 19) & 1);
    if (man > 7) { /* the carry moves into the exponent */
        man = 0;
        if (++exp >= 15) return 0x7e;
    }
    return (uint8_t)(exp << 3 | man);
}

void ferry_quant_row_nvfp4(const float *x, void *y, int64_t n) {
    block_nvfp4 *b = y;
    for (int64_t i = 0; i < n / QK_NVFP4; i++, b++, x += QK_NVFP4) {
        for (int s = 0; s < 4; s++) {
            const float *xs = x + 16 * s;
            /* amax/6 maps the largest magnitude onto T_fp4's largest value 6 */
            const uint8_t e = ue4m3_from_f32(abs_max(xs, 16) / 6.0f);
            const float d = ue4m3_half(e);
            b->d[s] = e;
            for (int j = 0; j < 8; j++)
                b->qs[8 * s + j] = pack_nibbles(fp4_best_index(xs[j], d), fp4_best_index(xs[j + 8], d));
        }
    }
}

/* ---- Q1_0 ------------------------------------------------------------- */

void ferry_dequant_row_q1_0(const void *x, float *y, int64_t n) {
    const block_q1_0 *b = x;
    for (int64_t i = 0; i < n / QK1_0; i++, b++, y += QK1_0) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK1_0; j++) y[j] = (b->qs[j / 8] >> (j % 8)) & 1 ? d : -d;
    }
}

void ferry_quant_row_q1_0(const float *x, void *y, int64_t n) {
    block_q1_0 *b = y;
    for (int64_t i = 0; i < n / QK1_0; i++, b++, x += QK1_0) {
        float sum = 0.0f;
        for (int j = 0; j < QK1_0; j++) sum += fabsf(x[j]);
        b->d = fp32_to_fp16(sum / (float)QK1_0);
        memset(b->qs, 0, sizeof b->qs);
        for (int j = 0; j < QK1_0; j++)
            if (x[j] >= 0.0f) b->qs[j / 8] |= (uint8_t)(1u << (j % 8));
    }
}

/* ---- Q2_0 ------------------------------------------------------------- */

void ferry_dequant_row_q2_0(const void *x, float *y, int64_t n) {
    const block_q2_0 *b = x;
    for (int64_t i = 0; i < n / QK2_0; i++, b++, y += QK2_0) {
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK2_0; j++) {
            int q = (b->qs[j / 4] >> (2 * (j % 4))) & 3;
            y[j] = (float)(q - 1) * d;
        }
    }
}

void ferry_quant_row_q2_0(const float *x, void *y, int64_t n) {
    block_q2_0 *b = y;
    for (int64_t i = 0; i < n / QK2_0; i++, b++, x += QK2_0) {
        const float d = abs_max(x, QK2_0);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        b->d = fp32_to_fp16(d);
        memset(b->qs, 0, sizeof b->qs);
        for (int j = 0; j < QK2_0; j++) {
            int q = trunc_i32(roundf(x[j] * id)) + 1;
            q = q < 0 ? 0 : q > 3 ? 3 : q;
            b->qs[j / 4] |= (uint8_t)(q << (2 * (j % 4)));
        }
    }
}
