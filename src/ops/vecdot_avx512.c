/* AVX-512 (F/BW/VL/DQ) versions of the two hottest dot products, Q4_0 and
 * Q8_0 against a prepared Q8_0 row (vecdot.h): two 32-element blocks per
 * 512-bit register, eight blocks per step; and of FLASH_ATTN_EXT's f16
 * inner loops. Callers check ferry_simd_level()
 * == FERRY_SIMD_AVX512 first; the _vnni versions additionally need the
 * CPU's AVX512_VNNI (vpdpbusd: unsigned x signed bytes, four at a time,
 * straight into i32), enabled per function.
 *
 * vpdpbusd wants an unsigned operand, so the weights are biased into
 * unsigned range (Q4_0 nibbles are 0..15 already; Q8_0 gets +128 by
 * flipping the sign bit) and bias * sum(y) is taken back out through the
 * prepared block sums. The integer sums are exact either way. */
#include <immintrin.h>
#include <string.h>

#include "tensor/blocks.h"
#include "tensor/fp16.h"
#include "vecdot.h"

#define VNNI __attribute__((target("avx512vnni")))

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline uint16_t u16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

/* The d of eight consecutive Q4_0 blocks (18 bytes apart, so word-aligned
 * within the 144-byte span): one two-source word permute of 128 bytes. */
static inline __m256 q4_0_scales8(const uint8_t *x) {
    const __m512i idx = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
    const __m512i lo = _mm512_loadu_si512(x), hi = _mm512_loadu_si512(x + 64);
    return _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(lo, idx, hi)));
}

/* The d of eight consecutive Q8_0 blocks (34 bytes apart). */
static inline __m256 q8_0_scales8(const uint8_t *x) {
    __m128i v = _mm_cvtsi32_si128(u16_at(x));
    v = _mm_insert_epi16(v, u16_at(x + 34), 1);
    v = _mm_insert_epi16(v, u16_at(x + 68), 2);
    v = _mm_insert_epi16(v, u16_at(x + 102), 3);
    v = _mm_insert_epi16(v, u16_at(x + 136), 4);
    v = _mm_insert_epi16(v, u16_at(x + 170), 5);
    v = _mm_insert_epi16(v, u16_at(x + 204), 6);
    v = _mm_insert_epi16(v, u16_at(x + 238), 7);
    return _mm256_cvtph_ps(v);
}

/* Lanes 0-7 take scale k, lanes 8-15 scale k+1. */
static inline __m512 pair_scale(__m512 sc8, int k) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(k)), sc8);
}

/* Two Q4_0 blocks' nibbles as 64 bytes 0..15 in element order: each block's
 * 16 bytes broadcast to two lanes, the odd lanes shifted down by 4. */
static inline __m512i q4_0_pair(const uint8_t *blk0, const uint8_t *blk1) {
    const __m512i r = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(blk0 + 2))),
                                                  0xff00, _mm_loadu_si128((const __m128i *)(blk1 + 2)));
    const __m512i shift = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0, 0, 4, 4, 4, 4);
    return _mm512_and_si512(_mm512_srlv_epi32(r, shift), _mm512_set1_epi8(0x0f));
}

static inline __m512i q8_0_pair(const uint8_t *blk0, const uint8_t *blk1) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)(blk0 + 2)), b = _mm256_loadu_si256((const __m256i *)(blk1 + 2));
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* i32 lanes of sums of 4 products u*s, u unsigned and s signed bytes
 * (u <= 255 with |s| <= 127 keeps maddubs' i16 pairs exact only for
 * u <= 128; callers without VNNI pass |x| there). */
static inline __m512i dot_madd(__m512i u, __m512i s) {
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
}

VNNI static inline __m512i dot_vnni(__m512i u, __m512i s) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s); }

/* Signed x times signed y without vpsignb: |x| times y negated where x < 0. */
static inline __m512i dot_signed_madd(__m512i x, __m512i y) {
    const __mmask64 neg = _mm512_movepi8_mask(x);
    return dot_madd(_mm512_abs_epi8(x), _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y));
}

/* Blocks after the last full group of eight: plain integer loops, kept out
 * of line so that they are compiled for this file's ISA and never inside a
 * VNNI function. GCC 12 at -O3 vectorizes a signed-byte product loop in a
 * function that may use VNNI into vpdpbusd, which reads one operand as
 * unsigned: Q8_0 weights read as (int8_t) of a uint8_t came out wrong
 * whenever a row had a tail (test_matmul checks every kernel at tail lengths). */
__attribute__((noinline)) static float q4_0_tail(const uint8_t *x, struct ferry_q8_row y, int64_t i, int64_t nb) {
    float sum = 0.0f;
    for (; i < nb; i++) {
        const uint8_t *blk = x + 18 * i;
        const int8_t *yq = y.q + 32 * i;
        int32_t isum = 0;
        for (int j = 0; j < 16; j++)
            isum += ((blk[2 + j] & 15) - 8) * yq[j] + ((blk[2 + j] >> 4) - 8) * yq[j + 16];
        sum += (float)isum * (fp16_to_fp32(u16_at(blk)) * y.d[i]);
    }
    return sum;
}

__attribute__((noinline)) static float q8_0_tail(const uint8_t *x, struct ferry_q8_row y, int64_t i, int64_t nb) {
    float sum = 0.0f;
    for (; i < nb; i++) {
        const uint8_t *blk = x + 34 * i;
        const int8_t *xq = (const int8_t *)(blk + 2);
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) isum += xq[j] * y.q[32 * i + j];
        sum += (float)isum * (fp16_to_fp32(u16_at(blk)) * y.d[i]);
    }
    return sum;
}

/* One kernel body per (format, product) pair. BIAS is what the product adds
 * per unit of sum(y): 8 for Q4_0's unsigned nibbles, 128 for Q8_0 with VNNI
 * (sign bit flipped), 0 when the product is already signed. */
#define Q4_0_KERNEL(NAME, ATTR, DOT)                                                                  \
    ATTR void NAME(int64_t n, float *s, const void *vx, const void *vy) {                            \
        const uint8_t *x = vx;                                                                       \
        const struct ferry_q8_row y = ferry_q8_row(vy, n);                                           \
        const int64_t nb = n / 32;                                                                   \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                  \
        __m256 corr = _mm256_setzero_ps();                                                           \
        int64_t i = 0;                                                                               \
        for (; i + 8 <= nb; i += 8) {                                                                \
            const uint8_t *xb = x + 18 * i;                                                          \
            const int8_t *yq = y.q + 32 * i;                                                         \
            const __m256 dx = q4_0_scales8(xb);                                                      \
            const __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(dx, _mm256_loadu_ps(y.d + i)));   \
            corr = _mm256_fmadd_ps(dx, _mm256_loadu_ps(y.s + i), corr);                              \
            a0 = _mm512_fmadd_ps(pair_scale(sc, 0),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q4_0_pair(xb, xb + 18), _mm512_loadu_si512(yq))), a0); \
            a1 = _mm512_fmadd_ps(pair_scale(sc, 2),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q4_0_pair(xb + 36, xb + 54), _mm512_loadu_si512(yq + 64))), a1); \
            a2 = _mm512_fmadd_ps(pair_scale(sc, 4),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q4_0_pair(xb + 72, xb + 90), _mm512_loadu_si512(yq + 128))), a2); \
            a3 = _mm512_fmadd_ps(pair_scale(sc, 6),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q4_0_pair(xb + 108, xb + 126), _mm512_loadu_si512(yq + 192))), a3); \
        }                                                                                            \
        const float body = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
        *s = body - 8.0f * hsum256(corr) + q4_0_tail(x, y, i, nb);                                    \
    }

Q4_0_KERNEL(ferry_vec_dot_q4_0_avx512, , dot_madd)
Q4_0_KERNEL(ferry_vec_dot_q4_0_avx512_vnni, VNNI, dot_vnni)

static inline __m512i flip(__m512i x) { return _mm512_xor_si512(x, _mm512_set1_epi8((char)0x80)); }
VNNI static inline __m512i dot_q8_vnni(__m512i x, __m512i y) { return dot_vnni(flip(x), y); }

#define Q8_0_KERNEL(NAME, ATTR, DOT, BIAS)                                                            \
    ATTR void NAME(int64_t n, float *s, const void *vx, const void *vy) {                            \
        const uint8_t *x = vx;                                                                       \
        const struct ferry_q8_row y = ferry_q8_row(vy, n);                                           \
        const int64_t nb = n / 32;                                                                   \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                  \
        __m256 corr = _mm256_setzero_ps();                                                           \
        int64_t i = 0;                                                                               \
        for (; i + 8 <= nb; i += 8) {                                                                \
            const uint8_t *xb = x + 34 * i;                                                          \
            const int8_t *yq = y.q + 32 * i;                                                         \
            const __m256 dx = q8_0_scales8(xb);                                                      \
            const __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(dx, _mm256_loadu_ps(y.d + i)));   \
            if (BIAS) corr = _mm256_fmadd_ps(dx, _mm256_loadu_ps(y.s + i), corr);                    \
            a0 = _mm512_fmadd_ps(pair_scale(sc, 0),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q8_0_pair(xb, xb + 34), _mm512_loadu_si512(yq))), a0); \
            a1 = _mm512_fmadd_ps(pair_scale(sc, 2),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q8_0_pair(xb + 68, xb + 102), _mm512_loadu_si512(yq + 64))), a1); \
            a2 = _mm512_fmadd_ps(pair_scale(sc, 4),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q8_0_pair(xb + 136, xb + 170), _mm512_loadu_si512(yq + 128))), a2); \
            a3 = _mm512_fmadd_ps(pair_scale(sc, 6),                                                  \
                                 _mm512_cvtepi32_ps(DOT(q8_0_pair(xb + 204, xb + 238), _mm512_loadu_si512(yq + 192))), a3); \
        }                                                                                            \
        const float body = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
        *s = body - (float)(BIAS) * hsum256(corr) + q8_0_tail(x, y, i, nb);                           \
    }

Q8_0_KERNEL(ferry_vec_dot_q8_0_avx512, , dot_signed_madd, 0)
Q8_0_KERNEL(ferry_vec_dot_q8_0_avx512_vnni, VNNI, dot_q8_vnni, 128)

/* ---- FLASH_ATTN_EXT inner loops for f16 K and V (see vecdot_avx2.c) ------------ */

static inline __m512 load_f16x16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* Up to four heads: two accumulators each over 32-element steps. */
static inline __attribute__((always_inline)) void scores_ng(int64_t n, const uint16_t *k, const float *const *q,
                                                            const int NG, float *out) {
    __m512 a[4][2];
#pragma GCC unroll 8
    for (int g = 0; g < NG; g++) a[g][0] = a[g][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 k0 = load_f16x16(k + i), k1 = load_f16x16(k + i + 16);
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) {
            a[g][0] = _mm512_fmadd_ps(k0, _mm512_loadu_ps(q[g] + i), a[g][0]);
            a[g][1] = _mm512_fmadd_ps(k1, _mm512_loadu_ps(q[g] + i + 16), a[g][1]);
        }
    }
#pragma GCC unroll 8
    for (int g = 0; g < NG; g++) {
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(a[g][0], a[g][1]));
        for (int64_t t = i; t < n; t++) sum += fp16_to_fp32(k[t]) * q[g][t];
        out[g] = sum;
    }
}

void ferry_attn_scores_f16_avx512(int64_t n, const uint16_t *k, const float *const *q, int ng, float *out) {
    for (int g = 0; g < ng; g += 4) {
        switch (ng - g < 4 ? ng - g : 4) {
        case 1: scores_ng(n, k, q + g, 1, out + g); break;
        case 2: scores_ng(n, k, q + g, 2, out + g); break;
        case 3: scores_ng(n, k, q + g, 3, out + g); break;
        default: scores_ng(n, k, q + g, 4, out + g); break;
        }
    }
}

#define ATTN_POS_BLOCK 32

/* Sixteen columns at a time, up to eight heads' accumulators in registers. */
static inline __attribute__((always_inline)) void accumulate_block(int64_t dv, const int32_t *pos, int64_t nt,
                                                                   const char *v, size_t nbv, const float *wb,
                                                                   const int NG, float *const *acc) {
    int64_t e = 0;
    for (; e + 16 <= dv; e += 16) {
        __m512 a[8];
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) a[g] = _mm512_loadu_ps(acc[g] + e);
        for (int64_t t = 0; t < nt; t++) {
            const __m512 x = load_f16x16(v + (size_t)pos[t] * nbv + 2 * e);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) a[g] = _mm512_fmadd_ps(_mm512_set1_ps(wb[8 * t + g]), x, a[g]);
        }
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) _mm512_storeu_ps(acc[g] + e, a[g]);
    }
    for (; e < dv; e++)
        for (int64_t t = 0; t < nt; t++) {
            const float x = fp16_to_fp32(u16_at((const uint8_t *)v + (size_t)pos[t] * nbv + 2 * e));
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) acc[g][e] = fmaf(wb[8 * t + g], x, acc[g][e]);
        }
}

void ferry_attn_accumulate_f16_avx512(int64_t dv, const int32_t *pos, int64_t npos, const char *v, size_t nbv,
                                      const float *const *w, int ng, float *const *acc) {
    float wb[8 * ATTN_POS_BLOCK] __attribute__((aligned(64)));
    const size_t row_bytes = (size_t)dv * 2;
    for (int64_t t0 = 0; t0 < npos; t0 += ATTN_POS_BLOCK) {
        const int64_t nt = npos - t0 < ATTN_POS_BLOCK ? npos - t0 : ATTN_POS_BLOCK;
        const int32_t *p = pos + t0;
        for (int64_t t = 0; t < nt; t++)
            for (int g = 0; g < ng; g++) wb[8 * t + g] = w[g][p[t]];
        const int64_t next_end = npos - t0 - nt < ATTN_POS_BLOCK ? npos - t0 - nt : ATTN_POS_BLOCK;
        for (int64_t t = 0; t < next_end; t++)
            for (size_t off = 0; off < row_bytes; off += 64) _mm_prefetch(v + (size_t)p[nt + t] * nbv + off, _MM_HINT_T0);
        switch (ng) {
        case 1: accumulate_block(dv, p, nt, v, nbv, wb, 1, acc); break;
        case 2: accumulate_block(dv, p, nt, v, nbv, wb, 2, acc); break;
        case 3: accumulate_block(dv, p, nt, v, nbv, wb, 3, acc); break;
        case 4: accumulate_block(dv, p, nt, v, nbv, wb, 4, acc); break;
        case 5: accumulate_block(dv, p, nt, v, nbv, wb, 5, acc); break;
        case 6: accumulate_block(dv, p, nt, v, nbv, wb, 6, acc); break;
        case 7: accumulate_block(dv, p, nt, v, nbv, wb, 7, acc); break;
        default: accumulate_block(dv, p, nt, v, nbv, wb, 8, acc); break;
        }
    }
}
