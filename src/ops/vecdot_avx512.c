/* AVX-512 (F/BW/VL/DQ) versions of the two hottest dot products, Q4_0 and
 * Q8_0 against a prepared Q8_0 row (vecdot.h): two 32-element blocks per
 * 512-bit register, eight blocks per step. Callers check ferry_simd_level()
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

/* Blocks after the last full group of eight: plain integer loops. */
static float q4_0_tail(const uint8_t *x, struct ferry_q8_row y, int64_t i, int64_t nb) {
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

static float q8_0_tail(const uint8_t *x, struct ferry_q8_row y, int64_t i, int64_t nb) {
    float sum = 0.0f;
    for (; i < nb; i++) {
        const uint8_t *blk = x + 34 * i;
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) isum += (int8_t)blk[2 + j] * y.q[32 * i + j];
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
