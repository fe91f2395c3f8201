/* Bit-exact quantizers of the 256-element types (docs/types.md 5.8, 6):
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, TQ1_0 and TQ2_0, the CPU backend's
 * from_float for CPY and SET_ROWS.
 *
 * The K-quants fit a scale (and a min) to each sub-block by a small search,
 * quantize those sub-block scales against one f16 super-block scale, and
 * then recompute every code with the scale the decoder will see. All of it
 * is f32 in a fixed order: a sum taken in another order, a fused
 * multiply-add or a different rounding moves a code, and the bytes stop
 * matching ggml's. Where a step keeps codes from an earlier step (a
 * sub-block whose final scale is 0), so does this code. */

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "fp16.h"
#include "quants.h"

/* Sub-blocks whose largest magnitude is below this count as all zero. */
#define GROUP_EPS 1e-15f

/* Round to nearest, ties to even, by adding 1.5*2^23 and reading the low
 * mantissa bits (ggml's nearest_int). Exact for |v| <= 4194303; outside that
 * (and for NaN) it still returns the same bits ggml's does. */
static int32_t round_even(float v) {
    float t = v + 12582912.0f;
    uint32_t u;
    memcpy(&u, &t, sizeof u);
    return (int32_t)(u & 0x007fffff) - 0x00400000;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The first element of largest magnitude, with its sign; *amax gets the
 * magnitude (strict comparison from 0, so NaNs are passed over). */
static float signed_extreme(const float *x, int n, float *amax) {
    float a = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > a) {
            a = fabsf(x[i]);
            max = x[i];
        }
    }
    *amax = a;
    return max;
}

/* ---- scale searches ------------------------------------------------------ */

/* Codes clamp(rne(iscale*(x - min)), 0, nmax) of an affine sub-block. */
static void affine_codes(int n, int nmax, const float *x, float iscale, float min, uint8_t *L) {
    for (int i = 0; i < n; i++) L[i] = (uint8_t)clampi(round_even(iscale * (x[i] - min)), 0, nmax);
}

/* Weighted error of x ~ scale*L + min: squared, or absolute with mad. */
static float affine_error(int n, const float *x, const float *w, const uint8_t *L, float scale, float min,
                          bool mad) {
    float err = 0.0f;
    for (int i = 0; i < n; i++) {
        float diff = scale * (float)L[i] + min - x[i];
        diff = mad ? fabsf(diff) : diff * diff;
        err += w[i] * diff;
    }
    return err;
}

struct affine_search {
    float rmin, rdelta; /* candidate i uses (nmax + rmin + rdelta*i) steps over the range */
    int nstep;
    bool mad; /* absolute instead of squared error */
};

/* Fits x ~ scale*L + min with min <= 0 and codes L in 0..nmax (ggml's
 * make_qkx2_quants): start from the min/max grid, then try nstep+1 other
 * grids, refit scale and min of each by weighted least squares, and keep the
 * fit of least error. Returns the scale; *neg_min = -min. */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                        const struct affine_search *s) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.0f;
    }
    float scale = 1.0f / ((float)nmax / (max - min));
    affine_codes(n, nmax, x, (float)nmax / (max - min), min, L);
    float best = affine_error(n, x, w, L, scale, min, s->mad);
    uint8_t aux[32];
    for (int is = 0; is <= s->nstep; is++) {
        const float iscale = (s->rmin + s->rdelta * (float)is + (float)nmax) / (max - min);
        affine_codes(n, nmax, x, iscale, min, aux);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const float l = (float)aux[i];
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0.0f)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0.0f) { /* the min may only pull down: refit the scale alone */
            this_min = 0.0f;
            this_scale = sum_xl / sum_l2;
        }
        const float err = affine_error(n, x, w, aux, this_scale, this_min, s->mad);
        if (err < best) {
            memcpy(L, aux, (size_t)n);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Symmetric codes clamp(rne(iscale*x), -nmax, nmax-1), with the weighted
 * sums sum(w*x*l) and sum(w*l*l), weights x^2. */
static void symmetric_pass(int n, int nmax, const float *x, float iscale, int8_t *L, float *sumlx, float *suml2) {
    float slx = 0.0f, sl2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
        if (L) L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        slx += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

/* Fits x ~ scale*(L - nmax), L in 0..2*nmax-1 (ggml's make_qx_quants with
 * x^2 weights): the grid that maps the extreme element to -nmax, then 18
 * grids around it; the least-squares scale of the best one wins. */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    const float max = signed_extreme(x, n, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float sumlx, suml2;
    symmetric_pass(n, nmax, x, (float)-nmax / max, L, &sumlx, &suml2);
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        const float iscale = -((float)nmax + 0.1f * (float)is) / max;
        symmetric_pass(n, nmax, x, iscale, NULL, &sumlx, &suml2);
        /* sumlx^2/suml2 is the error reduction; compare without dividing */
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            symmetric_pass(n, nmax, x, iscale, L, &sumlx, &suml2);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's fit (ggml's make_q3_quants with rmse): start from the grid of the
 * extreme element, then up to five rounds of moving single codes to their
 * least-squares value while that improves sumlx^2/suml2. L gets codes
 * l + nmax. */
static float fit_q3(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    const float max = signed_extreme(x, n, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = (float)-nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (!(slx > 0.0f)) continue;
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            const int l = clampi(round_even(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (l == L[i]) continue;
            slx += w * x[i] * (float)l;
            sl2 += w * (float)l * (float)l;
            if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)l;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* ---- Q2_K ---------------------------------------------------------------- */

static void q2k_block(const float *x, block_q2_K *b) {
    static const struct affine_search search = { -0.5f, 0.1f, 15, true };
    uint8_t L[QK_K];
    float scales[16], mins[16], max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; j++) {
        float w[16];
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], &search);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    /* Scales in the low nibbles, mins in the high ones, each against its own
     * super-block scale (max/15). */
    memset(b->scales, 0, sizeof b->scales);
    b->d = fp32_to_fp16(0.0f);
    b->dmin = fp32_to_fp16(0.0f);
    if (max_scale > 0.0f) {
        const float iscale = 15.0f / max_scale;
        for (int j = 0; j < 16; j++) b->scales[j] = (uint8_t)round_even(iscale * scales[j]);
        b->d = fp32_to_fp16(max_scale / 15.0f);
    }
    if (max_min > 0.0f) {
        const float iscale = 15.0f / max_min;
        for (int j = 0; j < 16; j++) b->scales[j] |= (uint8_t)((uint32_t)round_even(iscale * mins[j]) << 4);
        b->dmin = fp32_to_fp16(max_min / 15.0f);
    }
    const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
    for (int j = 0; j < 16; j++) {
        const float dl = d * (float)(b->scales[j] & 15);
        if (dl == 0.0f) continue; /* keeps the codes of the fit */
        const float ml = dmin * (float)(b->scales[j] >> 4);
        for (int i = 16 * j; i < 16 * j + 16; i++) L[i] = (uint8_t)clampi(round_even((x[i] + ml) / dl), 0, 3);
    }
    /* the 2-bit plane layout: byte 32h + l holds elements 128h + 32g + l */
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *q = L + 128 * h + l;
            b->qs[32 * h + l] = (uint8_t)(q[0] | q[32] << 2 | q[64] << 4 | q[96] << 6);
        }
}

void ferry_quant_row_q2_K(const float *x, void *y, int64_t n) {
    block_q2_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) q2k_block(x + i * QK_K, b + i);
}

/* ---- Q3_K ---------------------------------------------------------------- */

/* Stores the signed 6-bit scale sc (-32..31) of sub-block j, biased by 32:
 * low nibble in scales[j] (j < 8) or the high nibble of scales[j - 8], the
 * top two bits in bits 2*(j/4) of scales[8 + j%4]. */
static void q3k_put_scale(uint8_t s[12], int j, int sc) {
    const int v = sc + 32;
    if (j < 8) s[j] = (uint8_t)(v & 15);
    else s[j - 8] |= (uint8_t)((v & 15) << 4);
    s[8 + j % 4] |= (uint8_t)((v >> 4) << (2 * (j / 4)));
}

static int q3k_get_scale(const uint8_t s[12], int j) {
    const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    return (lo | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
}

static void q3k_block(const float *x, block_q3_K *b) {
    int8_t L[QK_K];
    float scales[16], max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) {
            amax = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    memset(b->scales, 0, sizeof b->scales);
    if (max_scale != 0.0f) {
        /* the extreme scale maps to -32, the end of the signed 6-bit range */
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            const int8_t l = (int8_t)round_even(iscale * scales[j]); /* a byte first, as ggml keeps it */
            q3k_put_scale(b->scales, j, clampi(l, -32, 31));
        }
        b->d = fp32_to_fp16(1.0f / iscale);
    } else {
        b->d = fp32_to_fp16(0.0f);
    }
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < 16; j++) {
        const float dl = d * (float)q3k_get_scale(b->scales, j);
        if (dl == 0.0f) continue; /* keeps the codes of the fit */
        for (int i = 16 * j; i < 16 * j + 16; i++) L[i] = (int8_t)(clampi(round_even(x[i] / dl), -4, 3) + 4);
    }
    /* code bit 2 into hmask (byte i%32, bit i/32), the low two bits into the planes */
    memset(b->hmask, 0, sizeof b->hmask);
    for (int i = 0; i < QK_K; i++) {
        if (L[i] > 3) {
            b->hmask[i % 32] |= (uint8_t)(1u << (i / 32));
            L[i] = (int8_t)(L[i] - 4);
        }
    }
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int8_t *q = L + 128 * h + l;
            b->qs[32 * h + l] = (uint8_t)(q[0] | q[32] << 2 | q[64] << 4 | q[96] << 6);
        }
}

void ferry_quant_row_q3_K(const float *x, void *y, int64_t n) {
    block_q3_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) q3k_block(x + i * QK_K, b + i);
}

/* ---- Q4_K / Q5_K ------------------------------------------------------- */

/* The scale/min part shared by Q4_K (nmax 15) and Q5_K (nmax 31): fits each
 * 32-element sub-block, quantizes the eight scales and eight mins to 6 bits
 * against d = max/63 and dmin = max/63, and leaves the final codes in L. */
static void k45_block(const float *x, int nmax, const struct affine_search *search, ferry_half *dh,
                      ferry_half *dminh, uint8_t s[12], uint8_t L[QK_K]) {
    float scales[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; j++) {
        const float *xj = x + 32 * j;
        /* weights |x| + rms of the sub-block: large values matter more, small ones still count */
        float sum_x2 = 0.0f, w[32];
        for (int l = 0; l < 32; l++) sum_x2 += xj[l] * xj[l];
        const float av_x = sqrtf(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xj[l]);
        scales[j] = fit_affine(32, nmax, xj, w, L + 32 * j, &mins[j], search);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    int ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        /* through a byte, as ggml's uint8_t does, then capped */
        ls[j] = clampi((uint8_t)round_even(inv_scale * scales[j]), 0, 63);
        lm[j] = clampi((uint8_t)round_even(inv_min * mins[j]), 0, 63);
    }
    /* j < 4 in the low 6 bits of s[j] / s[j+4]; j >= 4 as a low nibble in
     * s[j+4] and two high bits in the spare top bits of s[j-4] / s[j]. */
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(ls[j] | (ls[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(lm[j] | (lm[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((ls[j + 4] & 15) | (lm[j + 4] & 15) << 4);
    }
    *dh = fp32_to_fp16(max_scale / 63.0f);
    *dminh = fp32_to_fp16(max_min / 63.0f);
    const float d = fp16_to_fp32(*dh), dmin = fp16_to_fp32(*dminh);
    for (int j = 0; j < 8; j++) {
        const float dl = d * (float)ls[j];
        if (dl == 0.0f) continue; /* keeps the codes of the fit */
        const float ml = dmin * (float)lm[j];
        for (int i = 32 * j; i < 32 * j + 32; i++) L[i] = (uint8_t)clampi(round_even((x[i] + ml) / dl), 0, nmax);
    }
}

static void q4k_block(const float *x, block_q4_K *b) {
    static const struct affine_search search = { -1.0f, 0.1f, 20, false };
    uint8_t L[QK_K];
    k45_block(x, 15, &search, &b->d, &b->dmin, b->scales, L);
    /* sub-blocks 2c and 2c+1 share qs[32c..32c+31], the even one low */
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) b->qs[32 * c + l] = (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
}

void ferry_quant_row_q4_K(const float *x, void *y, int64_t n) {
    block_q4_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) q4k_block(x + i * QK_K, b + i);
}

static void q5k_block(const float *x, block_q5_K *b) {
    static const struct affine_search search = { -0.5f, 0.1f, 15, false };
    uint8_t L[QK_K];
    k45_block(x, 31, &search, &b->d, &b->dmin, b->scales, L);
    /* low nibbles as Q4_K; bit 4 of element i is bit i/32 of qh[i%32] */
    memset(b->qh, 0, sizeof b->qh);
    for (int i = 0; i < QK_K; i++)
        if (L[i] > 15) b->qh[i % 32] |= (uint8_t)(1u << (i / 32));
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            b->qs[32 * c + l] = (uint8_t)((L[64 * c + l] & 15) | (L[64 * c + 32 + l] & 15) << 4);
}

void ferry_quant_row_q5_K(const float *x, void *y, int64_t n) {
    block_q5_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) q5k_block(x + i * QK_K, b + i);
}

/* ---- Q6_K ---------------------------------------------------------------- */

static void q6k_block(const float *x, block_q6_K *b) {
    int8_t L[QK_K];
    float scales[16], max_scale = 0.0f, max_abs = 0.0f;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > max_abs) {
            max_abs = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    if (max_abs < GROUP_EPS) {
        memset(b, 0, sizeof *b);
        return;
    }
    /* the extreme sub-block scale maps to -128; the others fit in -128..127 */
    const float iscale = -128.0f / max_scale;
    b->d = fp32_to_fp16(1.0f / iscale);
    for (int j = 0; j < 16; j++) {
        const int l = round_even(iscale * scales[j]);
        b->scales[j] = (int8_t)(l < 127 ? l : 127);
    }
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < 16; j++) {
        const float dl = d * (float)b->scales[j];
        if (dl == 0.0f) continue; /* keeps the codes of the fit */
        for (int i = 16 * j; i < 16 * j + 16; i++) L[i] = (int8_t)(clampi(round_even(x[i] / dl), -32, 31) + 32);
    }
    /* low nibbles: groups 0,1 of each half low in ql[64h..], groups 2,3 high;
     * the top two bits in the plane layout of qh */
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int8_t *q = L + 128 * h + l;
            b->ql[64 * h + l] = (uint8_t)((q[0] & 15) | (q[64] & 15) << 4);
            b->ql[64 * h + 32 + l] = (uint8_t)((q[32] & 15) | (q[96] & 15) << 4);
            b->qh[32 * h + l] = (uint8_t)(q[0] >> 4 | (q[32] >> 4) << 2 | (q[64] >> 4) << 4 | (q[96] >> 4) << 6);
        }
}

void ferry_quant_row_q6_K(const float *x, void *y, int64_t n) {
    block_q6_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) q6k_block(x + i * QK_K, b + i);
}

/* ---- IQ4_XS -------------------------------------------------------------- */

/* Index of the T_nl value nearest to v; an exact midpoint goes up. */
static int nl_index(float v) {
    const int8_t *t = ferry_kvalues_iq4nl;
    if (v <= (float)t[0]) return 0;
    if (v >= (float)t[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (v < (float)t[mid]) hi = mid;
        else lo = mid;
    }
    return v - (float)t[hi - 1] < (float)t[hi] - v ? hi - 1 : hi;
}

/* sum(w*q*x) and sum(w*q*q) over a sub-block coded at inverse scale id,
 * weights x^2; the codes go to L when it is given. */
static void nl_pass(const float *x, float id, uint8_t *L, float *sumqx, float *sumq2) {
    float sqx = 0.0f, sq2 = 0.0f;
    for (int j = 0; j < 32; j++) {
        const int l = nl_index(id * x[j]);
        if (L) L[j] = (uint8_t)l;
        const float q = (float)ferry_kvalues_iq4nl[l], w = x[j] * x[j];
        sqx += w * q * x[j];
        sq2 += w * q * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

/* Best scale of one 32-element sub-block: the least-squares scale of the
 * grid through the extreme element, or of one of 15 grids around it. */
static float iq4xs_sub_scale(const float *x) {
    float amax;
    const float max = signed_extreme(x, 32, &amax);
    if (amax < GROUP_EPS) return 0.0f;
    const float t0 = (float)ferry_kvalues_iq4nl[0];
    float sumqx, sumq2;
    nl_pass(x, 1.0f / (-max / t0), NULL, &sumqx, &sumq2);
    float d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int itry = -7; itry <= 7; itry++) {
        nl_pass(x, (float)(itry + ferry_kvalues_iq4nl[0]) / max, NULL, &sumqx, &sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

static void iq4xs_block(const float *x, block_iq4_xs *b) {
    float scales[8], max_scale = 0.0f, amax_scale = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        scales[ib] = iq4xs_sub_scale(x + 32 * ib);
        if (fabsf(scales[ib]) > amax_scale) {
            amax_scale = fabsf(scales[ib]);
            max_scale = scales[ib];
        }
    }
    /* d = -max/32 maps the extreme scale to -32 (so an all-zero block stores
     * -0); each sub-block scale becomes a 6-bit multiple of d, and the codes
     * are redone with it (unrounded d, as ggml). */
    const float d = -max_scale / 32.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b->d = fp32_to_fp16(d);
    b->scales_h = 0;
    memset(b->scales_l, 0, sizeof b->scales_l);
    uint8_t L[32];
    for (int ib = 0; ib < 8; ib++) {
        const int l = clampi(round_even(id * scales[ib]), -32, 31);
        const float dl = d * (float)l;
        const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
        const float *xb = x + 32 * ib;
        for (int j = 0; j < 32; j++) L[j] = (uint8_t)nl_index(idl * xb[j]);
        for (int j = 0; j < 16; j++) b->qs[16 * ib + j] = (uint8_t)(L[j] | L[j + 16] << 4);
        const int v = l + 32;
        b->scales_l[ib / 2] |= (uint8_t)((v & 15) << (4 * (ib % 2)));
        b->scales_h |= (uint16_t)((v >> 4) << (2 * ib));
    }
}

void ferry_quant_row_iq4_xs(const float *x, void *y, int64_t n) {
    block_iq4_xs *b = y;
    for (int64_t i = 0; i < n / QK_K; i++) iq4xs_block(x + i * QK_K, b + i);
}

/* ---- ternary ------------------------------------------------------------- */

/* d = the largest magnitude (NaN handling as ggml's MAX macro), stored as
 * f16; returns 1/d, or 0 for an all-zero block. */
static float ternary_scale(const float *x, ferry_half *dh) {
    float amax = 0.0f;
    for (int i = 0; i < QK_K; i++) amax = amax > fabsf(x[i]) ? amax : fabsf(x[i]);
    *dh = fp32_to_fp16(amax);
    return amax != 0.0f ? 1.0f / amax : 0.0f;
}

/* Digit 0..2 of x*id rounded half away from zero (C's lroundf), as ggml. */
static int trit(float v, float id) { return (int)(lroundf(v * id) + 1); }

/* Packs ndig digits of x[0], x[stride], ... (the first most significant) in
 * TQ1_0's fixed-point form: v*3^(5-ndig) stored as ceil(v*256/243). The
 * byte arithmetic wraps as ggml's uint8_t does. */
static uint8_t tq1_byte(const float *x, int stride, int ndig, float id) {
    uint8_t q = 0;
    for (int n = 0; n < ndig; n++) q = (uint8_t)(q * 3 + trit(x[n * stride], id));
    for (int n = ndig; n < 5; n++) q = (uint8_t)(q * 3);
    return (uint8_t)(((uint16_t)q * 256 + 242) / 243);
}

void ferry_quant_row_tq1_0(const float *x, void *y, int64_t n) {
    block_tq1_0 *b = y;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, x += QK_K) {
        const float id = ternary_scale(x, &b->d);
        for (int m = 0; m < 32; m++) b->qs[m] = tq1_byte(x + m, 32, 5, id);
        for (int m = 0; m < 16; m++) b->qs[32 + m] = tq1_byte(x + 160 + m, 16, 5, id);
        for (int m = 0; m < 4; m++) b->qh[m] = tq1_byte(x + 240 + m, 4, 4, id);
    }
}

void ferry_quant_row_tq2_0(const float *x, void *y, int64_t n) {
    block_tq2_0 *b = y;
    for (int64_t ib = 0; ib < n / QK_K; ib++, b++, x += QK_K) {
        const float id = ternary_scale(x, &b->d);
        /* bits 2k of byte 32c + m: element 128c + 32k + m */
        for (int c = 0; c < 2; c++)
            for (int m = 0; m < 32; m++) {
                uint8_t q = 0;
                for (int k = 0; k < 4; k++) q = (uint8_t)(q + ((trit(x[128 * c + 32 * k + m], id) & 3) << (2 * k)));
                b->qs[32 * c + m] = q;
            }
    }
}
