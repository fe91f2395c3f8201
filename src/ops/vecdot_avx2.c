/* AVX2 + FMA + F16C versions of the hot dot products and activation
 * converters (compiled with -mavx2 -mfma -mf16c; callers check
 * ferry_simd_level() first).
 *
 * Decode is a stream of weights, so the kernels spend as few instructions
 * per weight block as they can: activations come prepared (vecdot.h: f32
 * scales, contiguous quants, block sums), block scales are converted eight
 * at a time, and independent accumulators keep the FMA latency hidden.
 * Per block the integer sums are exact; Q4_0 and MXFP4 multiply unsigned
 * (biased) values and take bias * sum(y) back out through the prepared
 * block sums.
 * The converters produce exactly the bytes of the portable ones for finite
 * input. The loops this file shares with vecdot_avx512.c (32-element
 * blocks, FLASH_ATTN_EXT) are in vecdot_impl.h, included here at 8 lanes. */
#include <immintrin.h>
#include <string.h>

#include "tensor/blocks.h"
#include "tensor/fp16.h"
#include "gemm.h"
#include "vecdot.h"
#include "vecdot_kscales.h"

/* ---- the width layer of vecdot_impl.h: 8 f32 lanes ---------------------------- */

#define VD_LANES 8
#define VECDOT(name) ferry_##name##_avx2
typedef __m256 vd_f32;
typedef __m256i vd_int;
#define vd_zero _mm256_setzero_ps
#define vd_loadu _mm256_loadu_ps
#define vd_storeu _mm256_storeu_ps
#define vd_broadcast _mm256_broadcast_ss
#define vd_add _mm256_add_ps
#define vd_mul _mm256_mul_ps
#define vd_fmadd _mm256_fmadd_ps
#define vd_hsum hsum8
#define vd_cvt_i32 _mm256_cvtepi32_ps
#define vd_lanes128 _mm256_broadcastsi128_si256

static inline vd_f32 vd_load_f16(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* One block per step: the group's eight scales spilled to a small array
 * and broadcast back per block, which costs only loads. */
typedef struct {
    float v[8] __attribute__((aligned(32)));
} vd_scales;

static inline vd_scales vd_scales_of(__m256 sc) {
    vd_scales s;
    _mm256_store_ps(s.v, sc);
    return s;
}

static inline __m256 vd_scale_step(const vd_scales *s, int j) { return _mm256_broadcast_ss(&s->v[j]); }

/* Step j's scale from eight in memory (gemm_impl.h): vd_scale_step's lanes. */
static inline __m256 vd_step_scale(const float *d8, int j) { return _mm256_broadcast_ss(d8 + j); }

#include "vecdot_impl.h"

/* ---- helpers --------------------------------------------------------------- */

static inline double hsum_pd_of_ps(__m256 v) {
    const __m256d s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    t = _mm_add_sd(t, _mm_unpackhi_pd(t, t));
    return _mm_cvtsd_f64(t);
}

static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline float half_at(const uint8_t *p) { return _cvtsh_ss(u16_at(p)); }

/* 2^(e-128): half the E8M0 value, matching the doubled FP4 table. */
static inline float e8m0_half(uint8_t e) {
    return f32_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* 16 bytes of nibbles -> 32 bytes 0..15: low nibbles (elements 0..15) in the
 * low lane, high nibbles (16..31) in the high lane. A broadcast load and a
 * per-lane shift keep it off the shuffle port. */
static inline __m256i nibbles(const uint8_t *qs) {
    const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
}

/* Sum over byte pairs x*y (x signed, |x| <= 127), as 8 i32 lanes. */
static inline __m256i dot_signed(__m256i x, __m256i y) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Same with x unsigned (0..255; pairs must stay within i16). */
static inline __m256i dot_unsigned(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* ---- float types (y: prepared f32) ------------------------------------------ */

enum float_kind { FLOAT_F32, FLOAT_F16, FLOAT_BF16 };

/* Eight weights from element i on, and element i alone, as f32. */
static inline __m256 float_load8(enum float_kind k, const void *x, int64_t i) {
    switch (k) {
    case FLOAT_F32: return _mm256_loadu_ps((const float *)x + i);
    case FLOAT_F16: return vd_load_f16((const uint16_t *)x + i);
    default: {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
    }
}

static inline float float_at(enum float_kind k, const void *x, int64_t i) {
    switch (k) {
    case FLOAT_F32: return ((const float *)x)[i];
    case FLOAT_F16: return fp16_to_fp32(((const uint16_t *)x)[i]);
    default: return bf16_to_fp32(((const uint16_t *)x)[i]);
    }
}

/* One body for f32, f16 and bf16 weights. f16 x f16-rounded products are
 * exact in f32, so FMA changes nothing but speed there. */
static inline __attribute__((always_inline)) void float_dot(enum float_kind k, int64_t n, float *s, const void *x,
                                                            const void *vy) {
    const float *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(float_load8(k, x, i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(float_load8(k, x, i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(float_load8(k, x, i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(float_load8(k, x, i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(float_load8(k, x, i), _mm256_loadu_ps(y + i), a0);
    double sum = hsum_pd_of_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += (double)(float_at(k, x, i) * y[i]);
    *s = (float)sum;
}

void ferry_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y) { float_dot(FLOAT_F32, n, s, x, y); }
void ferry_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y) { float_dot(FLOAT_F16, n, s, x, y); }
void ferry_vec_dot_bf16_avx2(int64_t n, float *s, const void *x, const void *y) { float_dot(FLOAT_BF16, n, s, x, y); }

void ferry_vec_mad_f32_avx2(int64_t n, float *y, const float *x, float v) {
    const __m256 vv = _mm256_set1_ps(v);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), vv, _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += x[i] * v;
}


/* ---- activation converters ---------------------------------------------------- */

void ferry_widen_f16_avx2(const void *vx, void *vy, int64_t n) {
    const uint16_t *x = vx;
    float *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, vd_load_f16(x + i));
    for (; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

void ferry_prepare_f16_avx2(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    float *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) y[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}

/* Round to nearest even on the bit pattern; NaN is kept and forced quiet
 * (docs/types.md 2.3). The bf16 value comes back widened to f32. */
static inline __m256 round_bf16(__m256 x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                              _mm256_set1_epi32(0x7f800000));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_blendv_epi8(rounded, quiet, is_nan), 16));
}

void ferry_prepare_bf16_avx2(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    float *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, round_bf16(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
}

/* 32 floats -> 32 int8 of RNE(x * id), in element order. */
static inline __m256i quantize_32(const float *x, __m256 id, __m256i *sum32) {
    __m256i q0, q1, q2, q3;
#define mode (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    q0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), id), mode));
    q1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id), mode));
    q2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id), mode));
    q3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id), mode));
#undef mode
    if (sum32) *sum32 = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    /* packs interleave 128-bit lanes; the permute restores element order */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float abs_max_32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 16)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 24)));
    return hmax_ps(m);
}

/* The x86 Q8_0/Q8_1 quantizer (docs/types.md 4.5, 4.6) into the prepared layout:
 * d = amax/127 stored as f16, quants RNE(x * 127/amax). */
static inline void prepare_q8(const float *x, void *vy, int64_t n, bool q8_1) {
    int8_t *q = vy;
    float *d = (float *)(void *)(q + n), *sums = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        const float amax = abs_max_32(x);
        const float dd = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        __m256i sum;
        _mm256_storeu_si256((__m256i *)(q + 32 * b), quantize_32(x, _mm256_set1_ps(id), &sum));
        d[b] = fp16_to_fp32(fp32_to_fp16(dd));
        sums[b] = q8_1 ? fp16_to_fp32(fp32_to_fp16(dd * (float)hsum_epi32(sum))) : d[b] * (float)hsum_epi32(sum);
    }
}

void ferry_prepare_q8_0_avx2(const void *x, void *y, int64_t n) { prepare_q8(x, y, n, false); }
void ferry_prepare_q8_1_avx2(const void *x, void *y, int64_t n) { prepare_q8(x, y, n, true); }

/* Q8_K (docs/types.md 5.6): the scale comes from the first element of largest
 * magnitude, with its sign. Blocks with NaN take the portable path, whose
 * comparisons define what happens to them. */
void ferry_quantize_row_q8_K_avx2(const void *vx, void *vy, int64_t n) {
    const float *x = vx;
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
        const float amax = hmax_ps(m);
        int at = -1;
        if (amax == amax)
            for (int k = 0; k < QK_K && at < 0; k++)
                if (fabsf(x[k]) == amax) at = k;
        if (at < 0 || amax == 0.0f) {
            ferry_quantize_row_q8_K(x, &y[b], QK_K);
            continue;
        }
        const float iscale = -127.0f / x[at];
        const __m256 is = _mm256_set1_ps(iscale);
        for (int k = 0; k < QK_K; k += 32) {
            /* the packs saturate at 127, which is the quantizer's clamp */
            _mm256_storeu_si256((__m256i *)(y[b].qs + k), quantize_32(x + k, is, NULL));
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += y[b].qs[16 * g + k];
            y[b].bsums[g] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- 32-element blocks against prepared Q8_0 (the loop: vecdot_impl.h) ------------ */

/* e8m0_half of eight exponent bytes found every 17 bytes, in one vector:
 * (e-1) << 23, or 0x00200000 << e for the two subnormal codes. */
static inline __m256 e8m0_half8(const uint8_t *p) {
    __m128i b = _mm_cvtsi32_si128(p[0]);
    b = _mm_insert_epi8(b, p[17], 1);
    b = _mm_insert_epi8(b, p[34], 2);
    b = _mm_insert_epi8(b, p[51], 3);
    b = _mm_insert_epi8(b, p[68], 4);
    b = _mm_insert_epi8(b, p[85], 5);
    b = _mm_insert_epi8(b, p[102], 6);
    b = _mm_insert_epi8(b, p[119], 7);
    const __m256i e = _mm256_cvtepu8_epi32(b);
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, is_sub));
}

static inline __m256 vd_q8_scales8(enum vd_format f, const uint8_t *x) {
    return f == VD_MXFP4 ? e8m0_half8(x) : halves8(x, vd_block_bytes(f));
}

/* One block's weights as 32 bytes: Q4_0 and MXFP4 in their unsigned
 * (biased) forms, the others signed. */
static inline vd_int vd_q8_weights(enum vd_format f, bool vnni, const uint8_t *x, vd_int table) {
    (void)vnni;
    switch (f) {
    case VD_Q4_0: return nibbles(x + 2);
    case VD_Q8_0: return load32(x + 2);
    case VD_IQ4_NL: return _mm256_shuffle_epi8(table, nibbles(x + 2));
    default: return _mm256_shuffle_epi8(table, nibbles(x + 1));
    }
}

/* Their products with 32 activation bytes, as 8 i32 lanes. */
static inline vd_int vd_q8_mul(enum vd_format f, bool vnni, vd_int w, const int8_t *y) {
    (void)vnni;
    const __m256i yy = load32(y);
    return f == VD_Q4_0 || f == VD_MXFP4 ? dot_unsigned(w, yy) : dot_signed(w, yy);
}

/* The same products one block at a time, each block's bias taken out at once. */
static inline float vd_q8_tail(enum vd_format f, bool vnni, const uint8_t *x, struct ferry_q8_row y, int64_t i,
                               int64_t nb, vd_int table) {
    const size_t bs = vd_block_bytes(f);
    const float bias = vd_bias(f, vnni);
    float tail = 0.0f;
    for (; i < nb; i++) {
        const uint8_t *xb = x + i * bs;
        const float dx = f == VD_MXFP4 ? e8m0_half(xb[0]) : half_at(xb);
        const int isum = hsum_epi32(vd_q8_products(f, vnni, xb, y.q + 32 * i, table));
        tail += (float)isum * (dx * y.d[i]);
        if (bias != 0.0f) tail -= bias * (dx * y.s[i]);
    }
    return tail;
}

void ferry_vec_dot_q4_0_avx2(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_Q4_0, false, n, s, x, y); }
void ferry_vec_dot_q8_0_avx2(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_Q8_0, false, n, s, x, y); }
void ferry_vec_dot_iq4_nl_avx2(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_IQ4_NL, false, n, s, x, y); }
void ferry_vec_dot_mxfp4_avx2(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_MXFP4, false, n, s, x, y); }

/* ---- K-quants against Q8_K ---------------------------------------------------- */

/* Word k of w (eight i16 in the low 128 bits, duplicated in both lanes by
 * the caller) in every i16 lane of the low half, word k+1 in the high half. */
static inline __m256i word_pair(__m256i w, int k) {
    const __m256i idx = _mm256_setr_epi8(2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                         2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                         2 * k + 2, 2 * k + 3, 2 * k + 2, 2 * k + 3, 2 * k + 2, 2 * k + 3, 2 * k + 2,
                                         2 * k + 3, 2 * k + 2, 2 * k + 3, 2 * k + 2, 2 * k + 3, 2 * k + 2, 2 * k + 3,
                                         2 * k + 2, 2 * k + 3);
    return _mm256_shuffle_epi8(w, idx);
}

/* Word k of w (as above) in every i16 lane. */
static inline __m256i word_all(__m256i w, int k) {
    const __m256i idx = _mm256_setr_epi8(2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                         2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                         2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                         2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1);
    return _mm256_shuffle_epi8(w, idx);
}

/* Chunk c of a Q4_K super-block: qs[32c..] holds sub-block 2c in the low
 * nibbles and 2c+1 in the high ones; each sub-block dot is scaled by its
 * 6-bit scale inside the i16 -> i32 madd. */
static inline __m256i q4_K_chunk(const uint8_t *qs, const int8_t *y, __m256i sc16, int c) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i raw = load32(qs);
    const __m256i qlo = _mm256_and_si256(raw, low4), qhi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
    const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(qlo, load32(y)), word_all(sc16, 2 * c));
    const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(qhi, load32(y + 32)), word_all(sc16, 2 * c + 1));
    return _mm256_add_epi32(plo, phi);
}

void ferry_vec_dot_q4_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t sc[8], m[8];
        k4_scales(x[b].scales, sc, m);
        const __m128i sc8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc));
        const __m256i sc16 = _mm256_set_m128i(sc8, sc8);
        /* mins: m_j * (bsums[2j] + bsums[2j+1]) in one madd */
        const __m128i m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
        const __m256i m16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
        const __m256i mins = _mm256_madd_epi16(load32(y[b].bsums), m16);
        const __m256i i01 = _mm256_add_epi32(q4_K_chunk(x[b].qs, y[b].qs, sc16, 0),
                                             q4_K_chunk(x[b].qs + 32, y[b].qs + 64, sc16, 1));
        const __m256i i23 = _mm256_add_epi32(q4_K_chunk(x[b].qs + 64, y[b].qs + 128, sc16, 2),
                                             q4_K_chunk(x[b].qs + 96, y[b].qs + 192, sc16, 3));
        const float dall = y[b].d * half_at((const uint8_t *)&x[b].d);
        const float dmin = y[b].d * half_at((const uint8_t *)&x[b].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(_mm256_add_epi32(i01, i23)), acc);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), acc_m);
    }
    *s = hsum8(acc) - hsum8(acc_m);
}

/* Group g (32 elements) of half h of a Q6_K super-block, times its two
 * 16-element scales. q = low 4 bits | high 2 bits << 4, in 0..63; the -32
 * is folded in through the bsums by the caller. */
static inline __m256i q6_K_group(__m256i lo4, __m256i qh, int g, const int8_t *y, __m256i scv) {
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), _mm256_set1_epi8(3));
    const __m256i q = _mm256_or_si256(lo4, _mm256_slli_epi16(hi, 4));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, load32(y)), scv);
}

void ferry_vec_dot_q6_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        /* the sixteen signed scales as i16, each 128-bit lane holding 8 */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[b].scales));
        /* sum (q-32)*y = sum q*y - 32 * sum_j sc_j * bsum_j */
        const __m256i offset = _mm256_madd_epi16(load32(y[b].bsums), sc16);
        __m256i isum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = load32(x[b].ql + 64 * h), ql1 = load32(x[b].ql + 64 * h + 32);
            const __m256i qh = load32(x[b].qh + 32 * h);
            const int8_t *yy = y[b].qs + 128 * h;
            /* this half's eight scales, in both lanes */
            const __m256i sch = h == 0 ? _mm256_permute4x64_epi64(sc16, 0x44) : _mm256_permute4x64_epi64(sc16, 0xee);
            const __m256i g0 = q6_K_group(_mm256_and_si256(ql0, low4), qh, 0, yy, word_pair(sch, 0));
            const __m256i g1 = q6_K_group(_mm256_and_si256(ql1, low4), qh, 1, yy + 32, word_pair(sch, 2));
            const __m256i g2 = q6_K_group(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), qh, 2, yy + 64, word_pair(sch, 4));
            const __m256i g3 = q6_K_group(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), qh, 3, yy + 96, word_pair(sch, 6));
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_add_epi32(g0, g1), _mm256_add_epi32(g2, g3)));
        }
        const float d = y[b].d * half_at((const uint8_t *)&x[b].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    *s = hsum8(acc);
}

/* ---- GEMM tiles (gemm_impl.h): 2 rows x 4 columns in 16 registers -------------- */

#define GM_RM 2
#define GM_RN 4
#include "gemm_impl.h"

void ferry_gemm_q4_0_avx2(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_Q4_0, false, n, x, y, out);
}
void ferry_gemm_q8_0_avx2(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_Q8_0, false, n, x, y, out);
}
void ferry_gemm_iq4_nl_avx2(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_IQ4_NL, false, n, x, y, out);
}
void ferry_gemm_mxfp4_avx2(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_MXFP4, false, n, x, y, out);
}
