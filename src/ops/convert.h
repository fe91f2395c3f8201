/* Row conversions between the plain element types (F32, F16, BF16, I32)
 * and the vectorised f32 kernels shared by the element-wise ops. Each entry
 * point picks the AVX2 version (vec_avx2.c) when ferry_simd_level() allows,
 * with results identical to the portable one except for NaN payloads in the
 * f16 conversions (docs/types.md 2.2: "don't care"). */
#ifndef FERRY_OPS_CONVERT_H
#define FERRY_OPS_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/tensor.h"
#include "ferry/types.h"

/* Can ferry_cvt_* read / write this type? (F32, F16, BF16, I32) */
bool ferry_cvt_plain_type(enum ferry_type t);

/* n contiguous elements of type t <-> f32. I32 converts like C: int to
 * nearest float, and float truncated toward zero (docs/types.md 2.4). */
void ferry_cvt_to_f32(enum ferry_type t, const void *x, float *y, int64_t n);
void ferry_cvt_from_f32(enum ferry_type t, const float *x, void *y, int64_t n);

/* n elements from x (type st, byte stride sx) to y (type dt, stride sy).
 * st == dt is a raw copy of element bytes. */
void ferry_cvt_strided(enum ferry_type st, const void *x, size_t sx, enum ferry_type dt, void *y,
                       size_t sy, int64_t n);

/* f32 -> int32 as x86 does it: truncation, INT32_MIN when out of range or NaN
 * (the C cast is undefined there). */
static inline int32_t ferry_f32_to_i32(float x) {
    if (x >= -2147483648.0f && x < 2147483648.0f) return (int32_t)x;
    return INT32_MIN;
}

/* y = silu(x); y = silu(x) * g. y may be x (in place). */
void ferry_vec_silu_f32(float *y, const float *x, int64_t n);
void ferry_vec_swiglu_f32(float *y, const float *x, const float *g, int64_t n);

/* y = f32(table[f16(x)]) for the GELU tables (act.h). With gelu_clamp,
 * x <= -10 gives 0 and x >= 10 gives x, as F32 GELU does. */
void ferry_vec_f16_table_f32(float *y, const float *x, int64_t n, const uint16_t *table,
                             bool gelu_clamp);

/* AVX2 versions, only to be called when ferry_simd_level() >= AVX2. */
void ferry_cvt_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);
void ferry_cvt_f16_to_f32_avx2(const uint16_t *x, float *y, int64_t n);
void ferry_vec_silu_f32_avx2(float *y, const float *x, int64_t n);
void ferry_vec_swiglu_f32_avx2(float *y, const float *x, const float *g, int64_t n);
void ferry_vec_f16_table_f32_avx2(float *y, const float *x, int64_t n, const uint16_t *table,
                                  bool gelu_clamp);

#endif
