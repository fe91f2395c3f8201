/* 256-element super-block types (docs/types.md sections 5 and 6): K-quant, IQ4_XS
 * and ternary dequantizers, and the Q8_K quantizer the K-quant dot products
 * use for their f32 operand. The other types' quantizers are in
 * quants_k_write.c.
 *
 * All arithmetic is f32 in the order docs/types.md writes it (no FMA). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "ferry/types.h"
#include "fp16.h"
#include "quants.h"

/* Round to nearest, ties to even, as ggml's nearest_int (|v| <= 4194303). */
static int32_t round_even(float v) {
    float t = v + 12582912.0f;
    uint32_t u;
    memcpy(&u, &t, sizeof u);
    return (int32_t)(u & 0x007fffff) - 0x00400000;
}

/* Position of element i (0..255) in the 2-bit planes shared by Q2_K, Q3_K
 * and Q6_K's high bits: byte 32*(i/128) + i%32, bit pair (i%128)/32. */
static int plane_byte(int i) { return 32 * (i / 128) + i % 32; }
static int plane_shift(int i) { return 2 * ((i % 128) / 32); }

/* ---- Q2_K ------------------------------------------------------------- */

void ferry_dequant_row_q2_K(const void *x, float *y, int64_t n) {
    const block_q2_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        const float dmin = fp16_to_fp32(b->dmin);
        for (int s = 0; s < QK_K / 16; s++) {
            /* Low nibble scales the quants, high nibble scales the min. */
            const float dl = d * (float)(b->scales[s] & 15);
            const float ml = dmin * (float)(b->scales[s] >> 4);
            for (int i = 16 * s; i < 16 * s + 16; i++) {
                const int q = (b->qs[plane_byte(i)] >> plane_shift(i)) & 3;
                y[i] = dl * (float)q - ml;
            }
        }
    }
}

/* ---- Q3_K ------------------------------------------------------------- */

/* Signed 6-bit scale j (0..15): 4 low bits from scales[0..7] nibbles, 2 high
 * bits from scales[8..11]. */
static int q3k_scale(const uint8_t s[12], int j) {
    const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

void ferry_dequant_row_q3_K(const void *x, float *y, int64_t n) {
    const block_q3_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        for (int s = 0; s < QK_K / 16; s++) {
            const float dl = d * (float)q3k_scale(b->scales, s);
            for (int i = 16 * s; i < 16 * s + 16; i++) {
                const int q2 = (b->qs[plane_byte(i)] >> plane_shift(i)) & 3;
                /* hmask bit (i/128)*4 + (i%128)/32 of byte i%32. */
                const int hb = (b->hmask[i % 32] >> (4 * (i / 128) + (i % 128) / 32)) & 1;
                y[i] = dl * (float)(q2 - (hb ? 0 : 4));
            }
        }
    }
}

/* ---- Q4_K / Q5_K ------------------------------------------------------ */

/* 6-bit scale and min of sub-block j (0..7), shared by Q4_K and Q5_K. */
static void k4_scale_min(const uint8_t s[12], int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* 4-bit part of element i: sub-blocks 2c and 2c+1 share qs[32c..32c+31],
 * the even one in the low nibbles. */
static int k4_nibble(const uint8_t qs[128], int i) {
    const int j = i / 32;
    const uint8_t byte = qs[32 * (j / 2) + i % 32];
    return j % 2 == 0 ? byte & 15 : byte >> 4;
}

void ferry_dequant_row_q4_K(const void *x, float *y, int64_t n) {
    const block_q4_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        const float dmin = fp16_to_fp32(b->dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            k4_scale_min(b->scales, j, &sc, &m);
            const float dl = d * (float)sc;
            const float ml = dmin * (float)m;
            for (int i = 32 * j; i < 32 * j + 32; i++) y[i] = dl * (float)k4_nibble(b->qs, i) - ml;
        }
    }
}

void ferry_dequant_row_q5_K(const void *x, float *y, int64_t n) {
    const block_q5_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        const float dmin = fp16_to_fp32(b->dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            k4_scale_min(b->scales, j, &sc, &m);
            const float dl = d * (float)sc;
            const float ml = dmin * (float)m;
            for (int i = 32 * j; i < 32 * j + 32; i++) {
                /* Bit 4 of element i is bit j (= i/32) of qh[i%32]. */
                const int q = k4_nibble(b->qs, i) + 16 * ((b->qh[i % 32] >> j) & 1);
                y[i] = dl * (float)q - ml;
            }
        }
    }
}

/* ---- Q6_K ------------------------------------------------------------- */

void ferry_dequant_row_q6_K(const void *x, float *y, int64_t n) {
    const block_q6_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        for (int s = 0; s < QK_K / 16; s++) {
            const float dl = d * (float)b->scales[s];
            for (int i = 16 * s; i < 16 * s + 16; i++) {
                /* Low 4 bits: groups 0,1 of each half in the low nibbles of
                 * ql[64h .. 64h+63], groups 2,3 in the high nibbles. */
                const int h = i / 128, g = (i % 128) / 32;
                const uint8_t lb = b->ql[64 * h + 32 * (g & 1) + i % 32];
                const int lo = g < 2 ? lb & 15 : lb >> 4;
                const int hi = (b->qh[plane_byte(i)] >> plane_shift(i)) & 3;
                y[i] = dl * (float)((lo | hi << 4) - 32);
            }
        }
    }
}

/* ---- Q8_K ------------------------------------------------------------- */

void ferry_dequant_row_q8_K(const void *x, float *y, int64_t n) {
    const block_q8_K *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K)
        for (int i = 0; i < QK_K; i++) y[i] = b->d * (float)b->qs[i];
}

void ferry_quantize_row_q8_K(const float *x, void *y, int64_t n) {
    block_q8_K *b = y;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, x += QK_K) {
        /* First element of largest magnitude, signed. */
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < QK_K; i++) {
            if (fabsf(x[i]) > amax) {
                amax = fabsf(x[i]);
                max = x[i];
            }
        }
        if (amax == 0.0f) {
            b->d = 0.0f;
            memset(b->qs, 0, sizeof b->qs);
            memset(b->bsums, 0, sizeof b->bsums);
            continue;
        }
        /* The scale carries the sign of max, so max itself becomes -127. */
        const float iscale = -127.0f / max;
        for (int i = 0; i < QK_K; i++) {
            const int32_t q = round_even(iscale * x[i]);
            b->qs[i] = (int8_t)(q < 127 ? q : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += b->qs[16 * g + k];
            b->bsums[g] = (int16_t)sum;
        }
        b->d = 1.0f / iscale;
    }
}

/* ---- IQ4_XS ----------------------------------------------------------- */

void ferry_dequant_row_iq4_xs(const void *x, float *y, int64_t n) {
    const block_iq4_xs *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        for (int s = 0; s < QK_K / 32; s++) {
            /* 6-bit scale: low nibble from scales_l, 2 high bits from scales_h. */
            const int ls = ((b->scales_l[s / 2] >> (4 * (s % 2))) & 15) | (((b->scales_h >> (2 * s)) & 3) << 4);
            const float dl = d * (float)(ls - 32);
            const uint8_t *qs = b->qs + 16 * s;
            float *ys = y + 32 * s;
            for (int j = 0; j < 16; j++) {
                ys[j] = dl * (float)ferry_kvalues_iq4nl[qs[j] & 15];
                ys[j + 16] = dl * (float)ferry_kvalues_iq4nl[qs[j] >> 4];
            }
        }
    }
}

/* ---- ternary ---------------------------------------------------------- */

/* Base-3 digit n of a TQ1_0 byte, stored in "fixed-point" form: multiplying
 * by 3^n (mod 256) moves digit n to the top, and *3 >> 8 reads it out. */
static int tq1_digit(uint8_t byte, int n) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t shifted = (uint8_t)(byte * pow3[n]);
    return (int)(((uint16_t)shifted * 3) >> 8);
}

void ferry_dequant_row_tq1_0(const void *x, float *y, int64_t n) {
    const block_tq1_0 *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        /* qs[0..31]: elements 32n+m; qs[32..47]: 160+16n+m; qh: 240+4n+m. */
        for (int dg = 0; dg < 5; dg++)
            for (int m = 0; m < 32; m++) y[32 * dg + m] = (float)(tq1_digit(b->qs[m], dg) - 1) * d;
        for (int dg = 0; dg < 5; dg++)
            for (int m = 0; m < 16; m++) y[160 + 16 * dg + m] = (float)(tq1_digit(b->qs[32 + m], dg) - 1) * d;
        for (int dg = 0; dg < 4; dg++)
            for (int m = 0; m < 4; m++) y[240 + 4 * dg + m] = (float)(tq1_digit(b->qh[m], dg) - 1) * d;
    }
}

void ferry_dequant_row_tq2_0(const void *x, float *y, int64_t n) {
    const block_tq2_0 *b = x;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, y += QK_K) {
        const float d = fp16_to_fp32(b->d);
        /* Chunk c (bytes 32c..32c+31), bit pair k, byte m: element 128c+32k+m. */
        for (int c = 0; c < 2; c++)
            for (int k = 0; k < 4; k++)
                for (int m = 0; m < 32; m++) {
                    const int q = (b->qs[32 * c + m] >> (2 * k)) & 3;
                    y[128 * c + 32 * k + m] = (float)(q - 1) * d;
                }
    }
}
