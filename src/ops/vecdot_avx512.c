/* AVX-512 (F/BW/VL/DQ) versions of the two hottest dot products, Q4_0 and
 * Q8_0 against a prepared Q8_0 row (vecdot.h): two 32-element blocks per
 * 512-bit register, eight blocks per step; and of FLASH_ATTN_EXT's f16
 * inner loops. The loops are vecdot_impl.h's, included here at 16 lanes.
 * Callers check ferry_simd_level() == FERRY_SIMD_AVX512 first; the _vnni
 * versions additionally need the CPU's AVX512_VNNI (vpdpbusd: unsigned x
 * signed bytes, four at a time, straight into i32), enabled per function.
 *
 * vpdpbusd wants an unsigned operand, so the weights are biased into
 * unsigned range (Q4_0 nibbles are 0..15 already; Q8_0 gets +128 by
 * flipping the sign bit) and bias * sum(y) is taken back out through the
 * prepared block sums. The integer sums are exact either way. */
#include <immintrin.h>

#include "gemm.h"
#include "vecdot.h"

#define VNNI __attribute__((target("avx512vnni")))

/* ---- the width layer of vecdot_impl.h: 16 f32 lanes --------------------------- */

#define VD_LANES 16
#define VECDOT(name) ferry_##name##_avx512
typedef __m512 vd_f32;
typedef __m512i vd_int;
#define vd_zero _mm512_setzero_ps
#define vd_loadu _mm512_loadu_ps
#define vd_storeu _mm512_storeu_ps
#define vd_broadcast(p) _mm512_set1_ps(*(p))
#define vd_add _mm512_add_ps
#define vd_mul _mm512_mul_ps
#define vd_fmadd _mm512_fmadd_ps
#define vd_hsum _mm512_reduce_add_ps
#define vd_cvt_i32 _mm512_cvtepi32_ps
#define vd_lanes128 _mm512_broadcast_i32x4

static inline vd_f32 vd_load_f16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* Two blocks per step: the group's eight scales in the low half of one
 * register, lanes 0-7 of step j taking scale 2j and lanes 8-15 scale 2j+1. */
typedef __m512 vd_scales;

static inline vd_scales vd_scales_of(__m256 sc) { return _mm512_castps256_ps512(sc); }

static inline __m512 vd_scale_step(const vd_scales *s, int j) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(2 * j)), *s);
}

/* Step j's scales from eight in memory (gemm_impl.h): vd_scale_step's lanes. */
static inline __m512 vd_step_scale(const float *d8, int j) {
    const vd_scales s = vd_scales_of(_mm256_loadu_ps(d8));
    return vd_scale_step(&s, j);
}

#include "vecdot_impl.h"

/* ---- Q4_0 and Q8_0 (the only formats at this width) ----------------------------- */

/* The d of eight consecutive Q4_0 blocks (18 bytes apart, so word-aligned
 * within the 144-byte span): one two-source word permute of 128 bytes. */
static inline __m256 q4_0_scales8(const uint8_t *x) {
    const __m512i idx = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
    const __m512i lo = _mm512_loadu_si512(x), hi = _mm512_loadu_si512(x + 64);
    return _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(lo, idx, hi)));
}

static inline __m256 vd_q8_scales8(enum vd_format f, const uint8_t *x) {
    return f == VD_Q4_0 ? q4_0_scales8(x) : halves8(x, sizeof(block_q8_0));
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

/* Not always_inline: it can only be inlined once the loop that calls it has
 * been inlined into a VNNI kernel. */
VNNI static inline __m512i dot_vnni(__m512i u, __m512i s) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s); }

/* Signed x times signed y without vpsignb: |x| times y negated where x < 0. */
static inline __m512i dot_signed_madd(__m512i x, __m512i y) {
    const __mmask64 neg = _mm512_movepi8_mask(x);
    return dot_madd(_mm512_abs_epi8(x), _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y));
}

static inline __m512i flip(__m512i x) { return _mm512_xor_si512(x, _mm512_set1_epi8((char)0x80)); }

/* Two blocks' weights: Q4_0's unsigned nibbles; Q8_0's signed bytes, or
 * with VNNI the bytes with the sign bit flipped (vd_bias takes either bias
 * out). */
static inline vd_int vd_q8_weights(enum vd_format f, bool vnni, const uint8_t *x, vd_int table) {
    (void)table;
    if (f == VD_Q4_0) return q4_0_pair(x, x + sizeof(block_q4_0));
    const __m512i q = q8_0_pair(x, x + sizeof(block_q8_0));
    return vnni ? flip(q) : q;
}

static inline vd_int vd_q8_mul(enum vd_format f, bool vnni, vd_int w, const int8_t *y) {
    const __m512i yy = _mm512_loadu_si512(y);
    if (vnni) return dot_vnni(w, yy);
    return f == VD_Q4_0 ? dot_madd(w, yy) : dot_signed_madd(w, yy);
}

/* The blocks after the last full group of eight go to the portable kernel
 * (vecdot.c, never inlined here): GCC 12 at -O3 vectorizes a signed-byte
 * product loop in a function that may use VNNI into vpdpbusd, which reads
 * one operand as unsigned, so no scalar loop may end up in a VNNI kernel
 * (test_matmul checks every kernel at tail lengths). */
static inline float vd_q8_tail(enum vd_format f, bool vnni, const uint8_t *x, struct ferry_q8_row y, int64_t i,
                               int64_t nb, vd_int table) {
    (void)vnni;
    (void)table;
    return i < nb ? ferry_vec_dot_q8_blocks(f == VD_Q4_0 ? FERRY_TYPE_Q4_0 : FERRY_TYPE_Q8_0, x, y, i, nb) : 0.0f;
}

void ferry_vec_dot_q4_0_avx512(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_Q4_0, false, n, s, x, y); }
void ferry_vec_dot_q8_0_avx512(int64_t n, float *s, const void *x, const void *y) { vd_q8_dot(VD_Q8_0, false, n, s, x, y); }
/* flatten: dot_vnni can only be inlined once the loop is inside a VNNI
 * function (the tail, noinline in another file, stays a call). */
VNNI __attribute__((flatten)) void ferry_vec_dot_q4_0_avx512_vnni(int64_t n, float *s, const void *x, const void *y) {
    vd_q8_dot(VD_Q4_0, true, n, s, x, y);
}
VNNI __attribute__((flatten)) void ferry_vec_dot_q8_0_avx512_vnni(int64_t n, float *s, const void *x, const void *y) {
    vd_q8_dot(VD_Q8_0, true, n, s, x, y);
}

/* ---- GEMM tiles (gemm_impl.h): 4 rows x 6 columns, 24 registers accumulating ---- */

#define GM_RM 4
#define GM_RN 6
#include "gemm_impl.h"

void ferry_gemm_q4_0_avx512(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_Q4_0, false, n, x, y, out);
}
void ferry_gemm_q8_0_avx512(int64_t n, const void *const *x, const void *const *y, float *out) {
    gm_q8_tile(VD_Q8_0, false, n, x, y, out);
}
VNNI __attribute__((flatten)) void ferry_gemm_q4_0_avx512_vnni(int64_t n, const void *const *x, const void *const *y,
                                                               float *out) {
    gm_q8_tile(VD_Q4_0, true, n, x, y, out);
}
VNNI __attribute__((flatten)) void ferry_gemm_q8_0_avx512_vnni(int64_t n, const void *const *x, const void *const *y,
                                                               float *out) {
    gm_q8_tile(VD_Q8_0, true, n, x, y, out);
}
