/* AVX2 + F16C builds of the shared kernels (compiled with -mavx2 -mfma
 * -mf16c; only called when ferry_simd_level() >= AVX2). The f32 kernels are
 * vec.h at 8 lanes: same per-element arithmetic as the baseline build, so
 * the same bits. */
#include <immintrin.h>

#define VEC_LANES 8
#include "convert.h"
#include "vec.h"

void ferry_vec_silu_f32_avx2(float *y, const float *x, int64_t n) { vec_silu_f32(y, x, n); }

void ferry_vec_swiglu_f32_avx2(float *y, const float *x, const float *g, int64_t n) {
    vec_swiglu_f32(y, x, g, n);
}

/* The tails go through the same instructions (via a padded buffer), so an
 * element converts identically wherever a row is cut, NaNs included. */
void ferry_cvt_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(y + i), h);
    }
    if (i < n) {
        float in[8] = { 0 };
        uint16_t out[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(float));
        _mm_storeu_si128((__m128i *)out, _mm256_cvtps_ph(_mm256_loadu_ps(in), _MM_FROUND_TO_NEAREST_INT));
        memcpy(y + i, out, (size_t)(n - i) * sizeof(uint16_t));
    }
}

void ferry_cvt_f16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    if (i < n) {
        uint16_t in[8] = { 0 };
        float out[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(uint16_t));
        _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)in)));
        memcpy(y + i, out, (size_t)(n - i) * sizeof(float));
    }
}

/* 8 lookups: f16 conversion in one instruction, the loads one by one. */
static __m256 table_lookup8(__m256 v, const uint16_t *table, bool gelu_clamp) {
    uint16_t h[8], t[8];
    _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    for (int j = 0; j < 8; j++) t[j] = table[h[j]];
    __m256 r = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
    if (gelu_clamp) {
        r = _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(v, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
        r = _mm256_blendv_ps(r, v, _mm256_cmp_ps(v, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
    }
    return r;
}

void ferry_vec_f16_table_f32_avx2(float *y, const float *x, int64_t n, const uint16_t *table,
                                  bool gelu_clamp) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, table_lookup8(_mm256_loadu_ps(x + i), table, gelu_clamp));
    if (i < n) {
        float in[8] = { 0 }, out[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(out, table_lookup8(_mm256_loadu_ps(in), table, gelu_clamp));
        memcpy(y + i, out, (size_t)(n - i) * sizeof(float));
    }
}
