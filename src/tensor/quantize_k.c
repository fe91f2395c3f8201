/* Simple Q4_K and Q6_K quantizers (see quantize_k.h). */
#include "quantize_k.h"

#include <math.h>
#include <string.h>

#include "blocks.h"
#include "fp16.h"

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static int round_int(float v) { return (int)lrintf(v); }

/* A positive scale stored as f16; returns the value the decoder will see. */
static float store_half(ferry_half *dst, float v) {
    *dst = fp32_to_fp16(v);
    return fp16_to_fp32(*dst);
}

/* ---- Q4_K: y = d*sc_j*q - dmin*m_j, q in 0..15, 8 sub-blocks of 32 ------ */

/* Packs the eight 6-bit scales and mins the way the decoder unpacks them:
 * j < 4 in the low 6 bits of s[j] / s[j+4]; j >= 4 split into a low nibble
 * in s[j+4] and the top 2 bits in the spare bits of s[j-4] / s[j]. */
static void q4k_pack_scales(uint8_t s[12], const int sc[8], const int m[8]) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

static void q4k_block(const float *x, block_q4_K *b) {
    float scale[8], negmin[8], max_scale = 0.0f, max_negmin = 0.0f;
    for (int j = 0; j < 8; j++) {
        float lo = 0.0f, hi = x[32 * j]; /* the min is clamped to <= 0, as ggml does */
        for (int i = 32 * j; i < 32 * j + 32; i++) {
            lo = fminf(lo, x[i]);
            hi = fmaxf(hi, x[i]);
        }
        scale[j] = (hi - lo) / 15.0f;
        negmin[j] = -lo;
        max_scale = fmaxf(max_scale, scale[j]);
        max_negmin = fmaxf(max_negmin, negmin[j]);
    }
    const float d = store_half(&b->d, max_scale / 63.0f);
    const float dmin = store_half(&b->dmin, max_negmin / 63.0f);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0.0f ? clampi(round_int(scale[j] / d), 0, 63) : 0;
        m[j] = dmin > 0.0f ? clampi(round_int(negmin[j] / dmin), 0, 63) : 0;
    }
    q4k_pack_scales(b->scales, sc, m);
    memset(b->qs, 0, sizeof b->qs);
    for (int j = 0; j < 8; j++) {
        const float dl = d * (float)sc[j], ml = dmin * (float)m[j];
        for (int l = 0; l < 32; l++) {
            const int q = dl > 0.0f ? clampi(round_int((x[32 * j + l] + ml) / dl), 0, 15) : 0;
            /* sub-blocks 2c and 2c+1 share qs[32c..32c+31], even one low */
            b->qs[32 * (j / 2) + l] |= (uint8_t)(j % 2 == 0 ? q : q << 4);
        }
    }
}

void ferry_quant_row_q4_K_simple(const float *x, void *y, int64_t n) {
    block_q4_K *b = y;
    for (int64_t ib = 0; ib < n / QK_K; ib++) q4k_block(x + ib * QK_K, b + ib);
}

/* ---- Q6_K: y = d*scales[s]*(q-32), q in 0..63, 16 sub-blocks of 16 ------ */

static void q6k_block(const float *x, block_q6_K *b) {
    /* Each sub-block maps its value of largest magnitude to -32, the end of
     * the asymmetric range -32..31 that is exactly representable. */
    float scale[16], max_abs_scale = 0.0f;
    for (int s = 0; s < 16; s++) {
        float max = 0.0f;
        for (int i = 16 * s; i < 16 * s + 16; i++)
            if (fabsf(x[i]) > fabsf(max)) max = x[i];
        scale[s] = max / -32.0f;
        max_abs_scale = fmaxf(max_abs_scale, fabsf(scale[s]));
    }
    const float d = store_half(&b->d, max_abs_scale / 127.0f);
    memset(b->ql, 0, sizeof b->ql);
    memset(b->qh, 0, sizeof b->qh);
    for (int s = 0; s < 16; s++) {
        const int sc = d > 0.0f ? clampi(round_int(scale[s] / d), -128, 127) : 0;
        b->scales[s] = (int8_t)sc;
        const float dl = d * (float)sc;
        for (int i = 16 * s; i < 16 * s + 16; i++) {
            const int q = (dl != 0.0f ? clampi(round_int(x[i] / dl), -32, 31) : 0) + 32;
            const int h = i / 128, g = (i % 128) / 32, l = i % 32;
            /* low 4 bits: groups 0,1 low nibbles, 2,3 high nibbles of ql[64h..] */
            b->ql[64 * h + 32 * (g & 1) + l] |= (uint8_t)(g < 2 ? q & 15 : (q & 15) << 4);
            b->qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * g));
        }
    }
}

void ferry_quant_row_q6_K_simple(const float *x, void *y, int64_t n) {
    block_q6_K *b = y;
    for (int64_t ib = 0; ib < n / QK_K; ib++) q6k_block(x + ib * QK_K, b + ib);
}
