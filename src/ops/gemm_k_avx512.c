/* Q4_K and Q6_K GEMM tiles at AVX-512 (gemm.h), with and without VNNI.
 *
 * The dot products these reproduce are the AVX2 ones (vecdot_avx2.c: the
 * K-quants have no AVX-512 dot product), so every float operation here is
 * theirs: per super-block one i32 vector of eight lanes, converted and
 * fused into one 8-lane accumulator (Q4_K: two, for the scales and the
 * mins) with d = y.d * x.d, and their final sums. Only the integer work,
 * which is exact, is arranged differently: a 512-bit register holds two
 * 32-byte pieces of a super-block, whose products are scaled by their
 * sub-block scales in the i16 -> i32 step (VNNI's vpdpwssd fuses that step
 * with the add) and folded back to the dot product's eight lanes once per
 * super-block. Each row's super-block is unpacked once for all the
 * tile's columns.
 *
 * No scalar loop may sit in a VNNI function (GCC 12 -O3 can vectorize a
 * signed-byte product loop into vpdpbusd, which reads one operand as
 * unsigned): these loops are over vectors only, k4_scales is straight-line,
 * and K-quant rows have no tail. */
#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

#include "tensor/blocks.h"
#include "gemm.h"
#include "vecdot_kscales.h"

#define VNNI __attribute__((target("avx512vnni")))

static inline float half_at(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* vecdot_impl.h's hsum8: the dot products' final sum, in their order. */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Not always_inline: it can only be inlined once the tile has been inlined
 * into a VNNI function. */
VNNI static inline __m512i dot_i16_vnni(__m512i acc, __m512i p, __m512i sc) { return _mm512_dpwssd_epi32(acc, p, sc); }

/* acc + the i16 pair sums of p times the i16 scales sc, as i32 lanes. */
static inline __m512i dot_i16(bool vnni, __m512i acc, __m512i p, __m512i sc) {
    return vnni ? dot_i16_vnni(acc, p, sc) : _mm512_add_epi32(acc, _mm512_madd_epi16(p, sc));
}

/* Words 0-15 a, words 16-31 b. */
static inline __m512i halves16(short a, short b) {
    return _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1);
}

/* ---- Q4_K: 2 rows x 8 columns, one register per element ---------------------------- */

#define K4_RM 2
#define K4_RN 8

/* Register c holds the 32 bytes qs[32c..] twice: the low nibbles (sub-block
 * 2c) in the low half, the high ones (2c+1) in the high half, which is how
 * y's bytes 64c.. lie; the scale words follow the same halves. A tile
 * element's register has the dot product's acc in lanes 0-7 and its acc_m
 * in lanes 8-15, and both take one fused multiply-add per super-block. */
static inline __attribute__((always_inline)) void q4_K_tile(bool vnni, int64_t n, const void *const *vx,
                                                            const void *const *vy, float *out) {
    const int64_t nb = n / QK_K;
    const __m512i low4 = _mm512_set1_epi8(0x0f), shift = halves16(0, 4);
    __m512 acc[K4_RM][K4_RN];
#pragma GCC unroll 8
    for (int i = 0; i < K4_RM; i++)
#pragma GCC unroll 8
        for (int j = 0; j < K4_RN; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const block_q8_K *y[K4_RN];
#pragma GCC unroll 8
        for (int j = 0; j < K4_RN; j++) y[j] = (const block_q8_K *)vy[j] + b;
#pragma GCC unroll 8
        for (int i = 0; i < K4_RM; i++) {
            const block_q4_K *x = (const block_q4_K *)vx[i] + b;
            uint8_t sc[8], m[8];
            k4_scales(x->scales, sc, m);
            const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
            const __m128i m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
            const __m256i m16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
            __m512i w[4], s[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qs + 32 * c)));
                w[c] = _mm512_and_si512(_mm512_srlv_epi16(raw, shift), low4);
                s[c] = _mm512_permutexvar_epi16(halves16((short)(2 * c), (short)(2 * c + 1)), sc16);
            }
            const __m512 dx = _mm512_insertf32x8(_mm512_set1_ps(half_at(&x->d)), _mm256_set1_ps(half_at(&x->dmin)), 1);
#pragma GCC unroll 8
            for (int j = 0; j < K4_RN; j++) {
                __m512i z = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++)
                    z = dot_i16(vnni, z, _mm512_maddubs_epi16(w[c], _mm512_loadu_si512(y[j]->qs + 64 * c)), s[c]);
                const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[j]->bsums), m16);
                /* lanes 0-7: the two halves' sum (the dot product's isum); 8-15: mins */
                const __m512i lo_m = _mm512_inserti64x4(z, mins, 1);
                const __m512i v = _mm512_mask_add_epi32(lo_m, 0x00ff, lo_m, _mm512_shuffle_i64x2(z, z, 0xee));
                acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(y[j]->d), dx), _mm512_cvtepi32_ps(v), acc[i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < K4_RM; i++)
#pragma GCC unroll 8
        for (int j = 0; j < K4_RN; j++)
            out[i * K4_RN + j] = hsum8(_mm512_castps512_ps256(acc[i][j])) - hsum8(_mm512_extractf32x8_ps(acc[i][j], 1));
}

/* ---- Q6_K: 4 rows x 8 columns, one register per two elements ---------------------- */

#define K6_RM 4
#define K6_RN 8

/* Register k (0-3) holds 64 consecutive elements 64k.. (two of the dot
 * product's 32-byte groups: half k/2, groups 2(k%2) and 2(k%2)+1), so it
 * meets y's bytes 64k.. and its 128-bit lane t takes scale 4k+t. A tile
 * register holds columns 2p and 2p+1, eight lanes each. */
static inline __attribute__((always_inline)) void q6_K_tile(bool vnni, int64_t n, const void *const *vx,
                                                            const void *const *vy, float *out) {
    const int64_t nb = n / QK_K;
    const __m512i low4 = _mm512_set1_epi8(0x0f), high2 = _mm512_set1_epi8(0x30);
    /* the qh bits of groups 0|1 moved up to bits 4-5, and of groups 2|3 down */
    const __m512i up = halves16(4, 2), down = halves16(0, 2);
    const __m512i lane_of_word = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_setr_m128i(_mm_set1_epi16(0), _mm_set1_epi16(1))),
                                                    _mm256_setr_m128i(_mm_set1_epi16(2), _mm_set1_epi16(3)), 1);
    __m512 acc[K6_RM][K6_RN / 2];
#pragma GCC unroll 8
    for (int i = 0; i < K6_RM; i++)
#pragma GCC unroll 8
        for (int p = 0; p < K6_RN / 2; p++) acc[i][p] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const block_q8_K *y[K6_RN];
#pragma GCC unroll 8
        for (int j = 0; j < K6_RN; j++) y[j] = (const block_q8_K *)vy[j] + b;
#pragma GCC unroll 8
        for (int i = 0; i < K6_RM; i++) {
            const block_q6_K *x = (const block_q6_K *)vx[i] + b;
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
            const __m512i sc2 = _mm512_broadcast_i64x4(sc16);
            __m512i w[4], s[4];
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m512i ql = _mm512_loadu_si512(x->ql + 64 * h);
                const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32 * h)));
                w[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, low4), _mm512_and_si512(_mm512_sllv_epi16(qh, up), high2));
                w[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                               _mm512_and_si512(_mm512_srlv_epi16(qh, down), high2));
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                s[k] = _mm512_permutexvar_epi16(_mm512_add_epi16(lane_of_word, _mm512_set1_epi16((short)(4 * k))),
                                                _mm512_castsi256_si512(sc16));
            const __m512 dx = _mm512_set1_ps(half_at(&x->d));
#pragma GCC unroll 4
            for (int p = 0; p < K6_RN / 2; p++) {
                const block_q8_K *y0 = y[2 * p], *y1 = y[2 * p + 1];
                __m512i z0 = _mm512_setzero_si512(), z1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    z0 = dot_i16(vnni, z0, _mm512_maddubs_epi16(w[k], _mm512_loadu_si512(y0->qs + 64 * k)), s[k]);
                    z1 = dot_i16(vnni, z1, _mm512_maddubs_epi16(w[k], _mm512_loadu_si512(y1->qs + 64 * k)), s[k]);
                }
                /* each column's two halves summed: [isum0 | isum1] */
                const __m512i sums = _mm512_add_epi32(_mm512_shuffle_i64x2(z0, z1, 0x44), _mm512_shuffle_i64x2(z0, z1, 0xee));
                /* the -32 of every weight: 32 * sum_j sc_j * bsum_j */
                const __m512i bs = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y0->bsums)),
                                                      _mm256_loadu_si256((const __m256i *)y1->bsums), 1);
                const __m512i v = _mm512_sub_epi32(sums, _mm512_slli_epi32(_mm512_madd_epi16(bs, sc2), 5));
                const __m512 yd = _mm512_insertf32x8(_mm512_set1_ps(y0->d), _mm256_set1_ps(y1->d), 1);
                acc[i][p] = _mm512_fmadd_ps(_mm512_mul_ps(yd, dx), _mm512_cvtepi32_ps(v), acc[i][p]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < K6_RM; i++)
#pragma GCC unroll 8
        for (int p = 0; p < K6_RN / 2; p++) {
            out[i * K6_RN + 2 * p] = hsum8(_mm512_castps512_ps256(acc[i][p]));
            out[i * K6_RN + 2 * p + 1] = hsum8(_mm512_extractf32x8_ps(acc[i][p], 1));
        }
}

void ferry_gemm_q4_K_avx512(int64_t n, const void *const *x, const void *const *y, float *out) {
    q4_K_tile(false, n, x, y, out);
}
void ferry_gemm_q6_K_avx512(int64_t n, const void *const *x, const void *const *y, float *out) {
    q6_K_tile(false, n, x, y, out);
}
/* flatten: dot_i16_vnni can only be inlined once the tile is inside a VNNI function */
VNNI __attribute__((flatten)) void ferry_gemm_q4_K_avx512_vnni(int64_t n, const void *const *x, const void *const *y,
                                                               float *out) {
    q4_K_tile(true, n, x, y, out);
}
VNNI __attribute__((flatten)) void ferry_gemm_q6_K_avx512_vnni(int64_t n, const void *const *x, const void *const *y,
                                                               float *out) {
    q6_K_tile(true, n, x, y, out);
}
