/* Dot products of a weight row with an activation row, the inner loop of
 * MUL_MAT, MUL_MAT_ID and FLASH_ATTN_EXT (docs/ops.md B.14).
 *
 * The activation operand is first converted to the weight type's "vec_dot
 * type" (F16 for F16 weights, Q8_0 for Q4_0, Q8_K for the K-quants, ...),
 * with ggml's rounding and quantizers, so the numbers are ggml's. The dot
 * product then works block by block on integers where ggml does.
 *
 * Converted activations are kept in a layout of our own, prepared once per
 * row and read by every weight row, so the kernels load them without
 * further work (the values are exactly the vec_dot type's):
 *   - F32 / F16 / BF16 weights: f32 values (already rounded to f16/bf16);
 *   - the 32-element block families (vec_dot type Q8_0 or Q8_1):
 *       int8 q[n] | f32 d[n/32] | f32 s[n/32]
 *     d is the block scale (ggml's f16, widened) and s = d * sum(q) for Q8_0,
 *     ggml's f16-rounded s for Q8_1;
 *   - Q8_K: ggml's own blocks (they already carry f32 d and bsums).
 * Every row starts 64-byte aligned within a scratch buffer.
 *
 * Every kernel exists in portable C (vecdot.c: one body per activation
 * layout, fed by a per-type step that unpacks a weight block to int8 values
 * and scales); the hot ones also have AVX2 (vecdot_avx2.c) and AVX-512
 * (vecdot_avx512.c) versions chosen at run time, whose shared loops are
 * written once over the vector width (vecdot_impl.h). A given kernel always
 * accumulates in the same order, so a result never depends on how rows were
 * split between threads. */
#ifndef FERRY_VECDOT_H
#define FERRY_VECDOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/types.h"
#include "simd.h"

/* *s = dot(x[0..n), y[0..n)); x is a row of the weight type, y a prepared
 * activation row; n is a multiple of both block sizes. */
typedef void (*ferry_vec_dot_fn)(int64_t n, float *s, const void *x, const void *y);
/* Prepares one activation row of n elements from f32 values, or from a row
 * already in the vec_dot type. */
typedef void (*ferry_prepare_fn)(const void *src, void *y, int64_t n);

struct ferry_vec_dot {
    enum ferry_type vec_dot_type; /* ggml's: what src1 may also be given as */
    ferry_prepare_fn from_f32;    /* NULL: f32 rows are used as they are */
    ferry_prepare_fn from_raw;    /* NULL: vec_dot_type rows are used as they are */
    ferry_vec_dot_fn dot;
};

/* The vec_dot type of weight type t, or -1 when t has no dot product. */
int ferry_vec_dot_type(enum ferry_type t);

/* Kernels for weight type t at a SIMD level (capped by what exists); false
 * when t has no dot product. The prepared layouts do not depend on the level. */
bool ferry_vec_dot_get(enum ferry_type t, enum ferry_simd_level level, struct ferry_vec_dot *out);

/* Whether the AVX-512 kernels use VNNI (the CPU has AVX512_VNNI). */
bool ferry_vec_dot_vnni(void);

/* Bytes of one prepared activation row of n elements for weight type t
 * (a multiple of 64); SIZE_MAX on overflow. */
size_t ferry_vec_dot_row_size(enum ferry_type t, int64_t n);

/* The parts of a prepared 32-element-block activation row. */
struct ferry_q8_row {
    const int8_t *q;
    const float *d, *s;
};

static inline struct ferry_q8_row ferry_q8_row(const void *y, int64_t n) {
    const int8_t *q = (const int8_t *)y;
    const float *d = (const float *)(const void *)(q + n);
    return (struct ferry_q8_row){ q, d, d + n / 32 };
}

/* ---- self-check (selfcheck.c) ------------------------------------------------
 * One known dot product of weight type t through the kernel set vd (which
 * was picked for level): 0, or -1 with what is wrong in why. */
int ferry_vec_dot_check(enum ferry_type t, enum ferry_simd_level level, const struct ferry_vec_dot *vd,
                        char *why, size_t why_size);
/* Every type's kernels at every level up to the process's: 0 and the number
 * of kernel sets checked, or -1 with the first failure in why. */
int ferry_vec_dot_self_check(int *n_checked, char *why, size_t why_size);

/* ---- portable pieces (vecdot.c), also used by tests and SIMD tails -------- */
void ferry_vec_dot_f32(int64_t n, float *s, const void *x, const void *y);
void ferry_prepare_q8_0(const void *x, void *y, int64_t n);     /* f32 -> prepared Q8_0 */
void ferry_prepare_q8_1(const void *x, void *y, int64_t n);     /* f32 -> prepared Q8_1 */
void ferry_prepare_f16(const void *x, void *y, int64_t n);      /* f32 -> f16-rounded f32 */
void ferry_prepare_bf16(const void *x, void *y, int64_t n);     /* f32 -> bf16-rounded f32 */
/* The portable kernel over weight blocks [i0, i1) of a Q4_0 or Q8_0 row x
 * against the prepared row y, summed in f32 from 0: the AVX-512 kernels'
 * blocks after their last group of eight. */
float ferry_vec_dot_q8_blocks(enum ferry_type t, const void *x, struct ferry_q8_row y, int64_t i0, int64_t i1);

/* ---- AVX2 kernels (vecdot_avx2.c); call only at FERRY_SIMD_AVX2 or above */
void ferry_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_bf16_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q4_0_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_iq4_nl_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_mxfp4_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q4_K_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q6_K_avx2(int64_t n, float *s, const void *x, const void *y);
void ferry_prepare_q8_0_avx2(const void *x, void *y, int64_t n);
void ferry_prepare_q8_1_avx2(const void *x, void *y, int64_t n);
void ferry_prepare_f16_avx2(const void *x, void *y, int64_t n);
void ferry_widen_f16_avx2(const void *x, void *y, int64_t n); /* f16 -> f32 */
void ferry_prepare_bf16_avx2(const void *x, void *y, int64_t n);
void ferry_quantize_row_q8_K_avx2(const void *x, void *y, int64_t n);
/* y[i] += x[i] * v (FLASH_ATTN_EXT's V accumulation for other V types). */
void ferry_vec_mad_f32_avx2(int64_t n, float *y, const float *x, float v);

/* FLASH_ATTN_EXT with f16 K and V, for ng <= 8 heads sharing a KV head:
 * out[g] = dot(k, q[g]) (q prepared f32), and acc[g] += w[g][c] * V row c
 * for each listed c (V rows nbv bytes apart). A head's result does not
 * depend on ng. */
void ferry_attn_scores_f16_avx2(int64_t n, const uint16_t *k, const float *const *q, int ng, float *out);
void ferry_attn_accumulate_f16_avx2(int64_t dv, const int32_t *pos, int64_t npos, const char *v, size_t nbv,
                                    const float *const *w, int ng, float *const *acc);

/* ---- AVX-512 kernels (vecdot_avx512.c); call only at FERRY_SIMD_AVX512.
 * The _vnni versions also need the CPU's AVX512_VNNI. */
void ferry_vec_dot_q4_0_avx512(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q8_0_avx512(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q4_0_avx512_vnni(int64_t n, float *s, const void *x, const void *y);
void ferry_vec_dot_q8_0_avx512_vnni(int64_t n, float *s, const void *x, const void *y);
void ferry_attn_scores_f16_avx512(int64_t n, const uint16_t *k, const float *const *q, int ng, float *out);
void ferry_attn_accumulate_f16_avx512(int64_t dv, const int32_t *pos, int64_t npos, const char *v, size_t nbv,
                                      const float *const *w, int ng, float *const *acc);

#endif
