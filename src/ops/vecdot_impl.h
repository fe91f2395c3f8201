/* The loops that vecdot_avx2.c and vecdot_avx512.c share, written once over
 * the vector width: the 32-element block dot products against a prepared
 * Q8_0 row and FLASH_ATTN_EXT's f16 inner loops. Each of those files
 * defines the width layer below and VECDOT(name) (its own names for the
 * exported kernels), then includes this file, so every loop here is
 * compiled for that file's ISA.
 *
 * The width layer, defined before the include, for vectors of VD_LANES f32
 * lanes (8 or 16):
 *   vd_f32, vd_int              the f32 and integer vector types
 *   vd_zero() vd_loadu(p) vd_storeu(p, v) vd_broadcast(p) vd_add(a, b)
 *   vd_fmadd(a, b, c)           a*b + c, fused
 *   vd_load_f16(p)              VD_LANES f16 values, widened
 *   vd_hsum(v)                  the sum of the lanes, in the ISA's own order
 *   vd_cvt_i32(v)               i32 lanes to f32
 *   vd_lanes128(v)              a 128-bit value in every 128-bit lane
 *   vd_scales, vd_scales_of(sc), vd_scale_step(&s, j): the f32 scales of a
 *       group of eight blocks (sc, an __m256) as step j of the group wants
 *       them; a step covers VD_BLOCKS = VD_LANES / 8 blocks
 * and, defined after it (they use its types), the block format hooks
 * declared below.
 *
 * Each width sums in its own fixed order, so a kernel's result never
 * depends on how rows are split or heads grouped; the two widths need not
 * agree bit for bit. */
#ifndef VECDOT
#error "define VECDOT(name) and the width layer before including vecdot_impl.h"
#endif

#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "tensor/blocks.h"
#include "tensor/fp16.h"
#include "vecdot.h"

#define VD_BLOCKS (VD_LANES / 8)

/* ---- helpers both widths use (AVX2 + F16C code) ----------------------------- */

static inline uint16_t u16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight f16 values found every `stride` bytes, widened. */
static inline __m256 halves8(const uint8_t *p, size_t stride) {
    __m128i v = _mm_cvtsi32_si128(u16_at(p));
    v = _mm_insert_epi16(v, u16_at(p + stride), 1);
    v = _mm_insert_epi16(v, u16_at(p + 2 * stride), 2);
    v = _mm_insert_epi16(v, u16_at(p + 3 * stride), 3);
    v = _mm_insert_epi16(v, u16_at(p + 4 * stride), 4);
    v = _mm_insert_epi16(v, u16_at(p + 5 * stride), 5);
    v = _mm_insert_epi16(v, u16_at(p + 6 * stride), 6);
    v = _mm_insert_epi16(v, u16_at(p + 7 * stride), 7);
    return _mm256_cvtph_ps(v);
}

/* ---- 32-element blocks against a prepared Q8_0 row ------------------------------
 *
 * One loop for every format and product; `f` and `vnni` are constants in
 * each kernel, so the switches fold away. Eight blocks per step: their
 * scales d_x*d_y in one vector, four accumulators, each fed its steps in
 * block order. */

enum vd_format { VD_Q4_0, VD_Q8_0, VD_IQ4_NL, VD_MXFP4 };

static inline size_t vd_block_bytes(enum vd_format f) {
    switch (f) {
    case VD_Q4_0: return sizeof(block_q4_0);
    case VD_Q8_0: return sizeof(block_q8_0);
    case VD_IQ4_NL: return sizeof(block_iq4_nl);
    default: return sizeof(block_mxfp4);
    }
}

/* What a product adds per unit of sum(y), taken back out through the
 * prepared block sums: Q4_0 multiplies its raw nibbles (q, not q-8), MXFP4
 * its table values plus 12 (0..24), and VNNI, whose first operand is
 * unsigned, Q8_0 with the sign bit flipped (q+128). */
static inline float vd_bias(enum vd_format f, bool vnni) {
    switch (f) {
    case VD_Q4_0: return 8.0f;
    case VD_Q8_0: return vnni ? 128.0f : 0.0f;
    case VD_MXFP4: return 12.0f;
    default: return 0.0f;
    }
}

/* The 16 values a nibble selects (IQ4_NL; MXFP4 biased by 12 to be
 * unsigned), in every 128-bit lane for a byte shuffle. */
static inline vd_int vd_q8_table(enum vd_format f) {
    const __m128i t = _mm_loadu_si128((const __m128i *)(f == VD_IQ4_NL ? ferry_kvalues_iq4nl : ferry_kvalues_mxfp4));
    return vd_lanes128(f == VD_MXFP4 ? _mm_add_epi8(t, _mm_set1_epi8(12)) : t);
}

/* The format hooks of each width:
 *   vd_q8_scales8: the weight scales of the eight blocks at x;
 *   vd_q8_weights: the VD_BLOCKS weight blocks at x in the form vd_q8_mul
 *       takes (unpacked, biased);
 *   vd_q8_mul: per-lane i32 sums of those weights times the activation
 *       bytes at y;
 *   vd_q8_tail: blocks i..nb-1, after the last full group of eight, summed
 *       in f32 from 0. */
static inline __m256 vd_q8_scales8(enum vd_format f, const uint8_t *x);
static inline vd_int vd_q8_weights(enum vd_format f, bool vnni, const uint8_t *x, vd_int table);
static inline vd_int vd_q8_mul(enum vd_format f, bool vnni, vd_int w, const int8_t *y);
static inline float vd_q8_tail(enum vd_format f, bool vnni, const uint8_t *x, struct ferry_q8_row y, int64_t i,
                               int64_t nb, vd_int table);

static inline vd_int vd_q8_products(enum vd_format f, bool vnni, const uint8_t *x, const int8_t *y, vd_int table) {
    return vd_q8_mul(f, vnni, vd_q8_weights(f, vnni, x, table), y);
}

/* A dot product from its four accumulators, its bias correction and its
 * tail (gemm_impl.h finishes its tiles with this too). */
static inline float vd_q8_finish(const vd_f32 acc[4], __m256 corr, float bias, float tail) {
    const float body = vd_hsum(vd_add(vd_add(acc[0], acc[1]), vd_add(acc[2], acc[3])));
    /* sum (q-B)*y = sum q*y - B * sum y, with d_y * sum(y) prepared as s */
    return body - (bias != 0.0f ? bias * hsum8(corr) : 0.0f) + tail;
}

static inline __attribute__((always_inline)) void vd_q8_dot(enum vd_format f, bool vnni, int64_t n, float *s,
                                                            const void *vx, const void *vy) {
    const uint8_t *x = vx;
    const size_t bs = vd_block_bytes(f);
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    const int64_t nb = n / 32;
    const float bias = vd_bias(f, vnni);
    const vd_int table = vd_q8_table(f);
    vd_f32 acc[4] = { vd_zero(), vd_zero(), vd_zero(), vd_zero() };
    __m256 corr = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        const uint8_t *xb = x + i * bs;
        const int8_t *yq = y.q + 32 * i;
        const __m256 dx = vd_q8_scales8(f, xb);
        const vd_scales sc = vd_scales_of(_mm256_mul_ps(dx, _mm256_loadu_ps(y.d + i)));
        if (bias != 0.0f) corr = _mm256_fmadd_ps(dx, _mm256_loadu_ps(y.s + i), corr);
#pragma GCC unroll 8
        for (int j = 0; j < 8 / VD_BLOCKS; j++) {
            const vd_int p = vd_q8_products(f, vnni, xb + (size_t)(VD_BLOCKS * j) * bs, yq + 32 * VD_BLOCKS * j, table);
            acc[j % 4] = vd_fmadd(vd_scale_step(&sc, j), vd_cvt_i32(p), acc[j % 4]);
        }
    }
    *s = vd_q8_finish(acc, corr, bias, vd_q8_tail(f, vnni, x, y, i, nb, table));
}

/* ---- FLASH_ATTN_EXT inner loops for f16 K and V ---------------------------------
 *
 * Several query heads share one KV head (GQA); these read each K/V value
 * once for up to eight of them. Each head's numbers are formed exactly as
 * if it were alone, so the grouping never changes a result. */

/* Up to four heads at once: two accumulators each, even and odd vectors.
 * NG is a constant in each instance (see the switch below). */
static inline __attribute__((always_inline)) void vd_scores_ng(int64_t n, const uint16_t *k, const float *const *q,
                                                               const int NG, float *out) {
    vd_f32 a[4][2];
#pragma GCC unroll 8
    for (int g = 0; g < NG; g++) a[g][0] = a[g][1] = vd_zero();
    int64_t i = 0;
    for (; i + 2 * VD_LANES <= n; i += 2 * VD_LANES) {
        const vd_f32 k0 = vd_load_f16(k + i), k1 = vd_load_f16(k + i + VD_LANES);
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) {
            a[g][0] = vd_fmadd(k0, vd_loadu(q[g] + i), a[g][0]);
            a[g][1] = vd_fmadd(k1, vd_loadu(q[g] + i + VD_LANES), a[g][1]);
        }
    }
#pragma GCC unroll 8
    for (int g = 0; g < NG; g++) {
        float sum = vd_hsum(vd_add(a[g][0], a[g][1]));
        for (int64_t t = i; t < n; t++) sum += fp16_to_fp32(k[t]) * q[g][t];
        out[g] = sum;
    }
}

void VECDOT(attn_scores_f16)(int64_t n, const uint16_t *k, const float *const *q, int ng, float *out) {
    for (int g = 0; g < ng; g += 4) {
        switch (ng - g < 4 ? ng - g : 4) {
        case 1: vd_scores_ng(n, k, q + g, 1, out + g); break;
        case 2: vd_scores_ng(n, k, q + g, 2, out + g); break;
        case 3: vd_scores_ng(n, k, q + g, 3, out + g); break;
        default: vd_scores_ng(n, k, q + g, 4, out + g); break;
        }
    }
}

/* acc[g][0..dv) += w[g][c] * V[c] over the listed positions c. Positions
 * go in blocks whose V rows stay in L1 (the next block's are prefetched)
 * while one vector of columns at a time passes over them with the
 * accumulators in registers; each accumulator still sees its terms in
 * position order. */
#define VD_POS_BLOCK 32

static inline __attribute__((always_inline)) void vd_accumulate_block(int64_t dv, const int32_t *pos, int64_t nt,
                                                                      const char *v, size_t nbv, const float *wb,
                                                                      const int NG, float *const *acc) {
    int64_t e = 0;
    for (; e + VD_LANES <= dv; e += VD_LANES) {
        vd_f32 a[8];
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) a[g] = vd_loadu(acc[g] + e);
        for (int64_t t = 0; t < nt; t++) {
            const vd_f32 x = vd_load_f16(v + (size_t)pos[t] * nbv + 2 * e);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) a[g] = vd_fmadd(vd_broadcast(&wb[8 * t + g]), x, a[g]);
        }
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) vd_storeu(acc[g] + e, a[g]);
    }
    for (; e < dv; e++)
        for (int64_t t = 0; t < nt; t++) {
            const float x = fp16_to_fp32(u16_at((const uint8_t *)v + (size_t)pos[t] * nbv + 2 * e));
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) acc[g][e] = fmaf(wb[8 * t + g], x, acc[g][e]);
        }
}

void VECDOT(attn_accumulate_f16)(int64_t dv, const int32_t *pos, int64_t npos, const char *v, size_t nbv,
                                 const float *const *w, int ng, float *const *acc) {
    float wb[8 * VD_POS_BLOCK] __attribute__((aligned(4 * VD_LANES)));
    const size_t row_bytes = (size_t)dv * 2;
    for (int64_t t0 = 0; t0 < npos; t0 += VD_POS_BLOCK) {
        const int64_t nt = npos - t0 < VD_POS_BLOCK ? npos - t0 : VD_POS_BLOCK;
        const int32_t *p = pos + t0;
        for (int64_t t = 0; t < nt; t++)
            for (int g = 0; g < ng; g++) wb[8 * t + g] = w[g][p[t]];
        const int64_t next_end = npos - t0 - nt < VD_POS_BLOCK ? npos - t0 - nt : VD_POS_BLOCK;
        for (int64_t t = 0; t < next_end; t++)
            for (size_t off = 0; off < row_bytes; off += 64)
                _mm_prefetch(v + (size_t)p[nt + t] * nbv + off, _MM_HINT_T0);
        switch (ng) {
        case 1: vd_accumulate_block(dv, p, nt, v, nbv, wb, 1, acc); break;
        case 2: vd_accumulate_block(dv, p, nt, v, nbv, wb, 2, acc); break;
        case 3: vd_accumulate_block(dv, p, nt, v, nbv, wb, 3, acc); break;
        case 4: vd_accumulate_block(dv, p, nt, v, nbv, wb, 4, acc); break;
        case 5: vd_accumulate_block(dv, p, nt, v, nbv, wb, 5, acc); break;
        case 6: vd_accumulate_block(dv, p, nt, v, nbv, wb, 6, acc); break;
        case 7: vd_accumulate_block(dv, p, nt, v, nbv, wb, 7, acc); break;
        default: vd_accumulate_block(dv, p, nt, v, nbv, wb, 8, acc); break;
        }
    }
}

#undef VD_POS_BLOCK
