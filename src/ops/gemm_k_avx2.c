/* Q4_K and Q6_K GEMM tiles at AVX2 (gemm.h): 2 rows x 4 columns.
 *
 * Every element is bit for bit the AVX2 dot product's (vecdot_avx2.c):
 * the same eight i32 lanes per super-block (their integer sums are exact,
 * so the order they are formed in is free), converted and fused into the
 * same accumulators with the same d = y.d * x.d, and the same final sums.
 * What the tile saves is the unpacking: each row's super-block (nibbles
 * or 6-bit values, sub-block scales, mins) is unpacked once for all the
 * tile's columns instead of once per column. */
#include <immintrin.h>
#include <string.h>

#include "tensor/blocks.h"
#include "gemm.h"
#include "vecdot_kscales.h"

#define K_RM 2
#define K_RN 4

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

static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* i32 lanes: sums of four unsigned u times signed y bytes, times the i16 scale words sc. */
static inline __m256i scaled(__m256i u, const int8_t *y, __m256i sc) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, load32(y)), sc);
}

/* A Q4_K super-block unpacked: sub-block s's 32 nibbles and scale words. */
struct q4_K_unpacked {
    __m256i q[8], sc[8], m16;
    float d, dmin;
};

static inline void q4_K_unpack(const block_q4_K *x, struct q4_K_unpacked *u) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    uint8_t sc[8], m[8];
    k4_scales(x->scales, sc, m);
    for (int c = 0; c < 4; c++) {
        const __m256i raw = load32(x->qs + 32 * c);
        u->q[2 * c] = _mm256_and_si256(raw, low4);
        u->q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
    }
    for (int s = 0; s < 8; s++) u->sc[s] = _mm256_set1_epi16((short)sc[s]);
    const __m128i m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
    u->m16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
    u->d = half_at(&x->d);
    u->dmin = half_at(&x->dmin);
}

void ferry_gemm_q4_K_avx2(int64_t n, const void *const *vx, const void *const *vy, float *out) {
    const int64_t nb = n / QK_K;
    __m256 acc[K_RM][K_RN], acc_m[K_RM][K_RN];
    for (int i = 0; i < K_RM; i++)
        for (int j = 0; j < K_RN; j++) acc[i][j] = acc_m[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int i = 0; i < K_RM; i++) {
            struct q4_K_unpacked u;
            q4_K_unpack((const block_q4_K *)vx[i] + b, &u);
#pragma GCC unroll 4
            for (int j = 0; j < K_RN; j++) {
                const block_q8_K *y = (const block_q8_K *)vy[j] + b;
                __m256i isum = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int s = 0; s < 8; s++) isum = _mm256_add_epi32(isum, scaled(u.q[s], y->qs + 32 * s, u.sc[s]));
                const __m256i mins = _mm256_madd_epi16(load32(y->bsums), u.m16);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * u.d), _mm256_cvtepi32_ps(isum), acc[i][j]);
                acc_m[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * u.dmin), _mm256_cvtepi32_ps(mins), acc_m[i][j]);
            }
        }
    }
    for (int i = 0; i < K_RM; i++)
        for (int j = 0; j < K_RN; j++) out[i * K_RN + j] = hsum8(acc[i][j]) - hsum8(acc_m[i][j]);
}

/* A Q6_K super-block unpacked: 32-byte group g (elements 32g..) as values
 * 0..63, its two 16-element scales (low and high 128-bit lanes), and the
 * sixteen scales as i16 for the -32 correction. */
struct q6_K_unpacked {
    __m256i q[8], sc[8], sc16;
    float d;
};

static inline void q6_K_unpack(const block_q6_K *x, struct q6_K_unpacked *u) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), three = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i ql0 = load32(x->ql + 64 * h), ql1 = load32(x->ql + 64 * h + 32), qh = load32(x->qh + 32 * h);
        const __m256i lo4[4] = { _mm256_and_si256(ql0, low4), _mm256_and_si256(ql1, low4),
                                 _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                 _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4) };
        for (int g = 0; g < 4; g++) {
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), three);
            u->q[4 * h + g] = _mm256_or_si256(lo4[g], _mm256_slli_epi16(hi, 4));
        }
    }
    for (int g = 0; g < 8; g++)
        u->sc[g] = _mm256_setr_m128i(_mm_set1_epi16(x->scales[2 * g]), _mm_set1_epi16(x->scales[2 * g + 1]));
    u->sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
    u->d = half_at(&x->d);
}

void ferry_gemm_q6_K_avx2(int64_t n, const void *const *vx, const void *const *vy, float *out) {
    const int64_t nb = n / QK_K;
    __m256 acc[K_RM][K_RN];
    for (int i = 0; i < K_RM; i++)
        for (int j = 0; j < K_RN; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int i = 0; i < K_RM; i++) {
            struct q6_K_unpacked u;
            q6_K_unpack((const block_q6_K *)vx[i] + b, &u);
#pragma GCC unroll 4
            for (int j = 0; j < K_RN; j++) {
                const block_q8_K *y = (const block_q8_K *)vy[j] + b;
                /* sum (q-32)*y = sum q*y - 32 * sum_j sc_j * bsum_j */
                __m256i isum = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                _mm256_slli_epi32(_mm256_madd_epi16(load32(y->bsums), u.sc16), 5));
#pragma GCC unroll 8
                for (int g = 0; g < 8; g++) isum = _mm256_add_epi32(isum, scaled(u.q[g], y->qs + 32 * g, u.sc[g]));
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * u.d), _mm256_cvtepi32_ps(isum), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < K_RM; i++)
        for (int j = 0; j < K_RN; j++) out[i * K_RN + j] = hsum8(acc[i][j]);
}
