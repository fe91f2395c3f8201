/* Row conversions and the dispatch of the shared f32 kernels (convert.h). */
#include "convert.h"

#include <string.h>

#include "act.h"
#include "common.h"
#include "simd.h"
#include "tensor/fp16.h"
#include "vec.h"

bool ferry_cvt_plain_type(enum ferry_type t) {
    return t == FERRY_TYPE_F32 || t == FERRY_TYPE_F16 || t == FERRY_TYPE_BF16 || t == FERRY_TYPE_I32;
}

static bool use_avx2(void) { return ferry_simd_level() >= FERRY_SIMD_AVX2; }

/* Element accessors through memcpy (plain loads once compiled), so these
 * loops assume nothing about alignment themselves. */
static inline uint16_t get_u16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void put_u16(char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline float get_f32(const char *p) { float v; memcpy(&v, p, 4); return v; }
static inline void put_f32(char *p, float v) { memcpy(p, &v, 4); }
static inline int32_t get_i32(const char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline void put_i32(char *p, int32_t v) { memcpy(p, &v, 4); }

void ferry_cvt_to_f32(enum ferry_type t, const void *x, float *y, int64_t n) {
    const char *s = x;
    switch (t) {
    case FERRY_TYPE_F16:
        if (use_avx2() && ((uintptr_t)x & 1) == 0) {
            ferry_cvt_f16_to_f32_avx2(x, y, n);
            return;
        }
        for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(get_u16(s + 2 * i));
        return;
    case FERRY_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(get_u16(s + 2 * i));
        return;
    case FERRY_TYPE_I32:
        for (int64_t i = 0; i < n; i++) y[i] = (float)get_i32(s + 4 * i);
        return;
    default:
        if ((const void *)y != x) memmove(y, x, (size_t)n * sizeof(float));
        return;
    }
}

void ferry_cvt_from_f32(enum ferry_type t, const float *x, void *y, int64_t n) {
    char *d = y;
    switch (t) {
    case FERRY_TYPE_F16:
        if (use_avx2() && ((uintptr_t)y & 1) == 0) {
            ferry_cvt_f32_to_f16_avx2(x, y, n);
            return;
        }
        for (int64_t i = 0; i < n; i++) put_u16(d + 2 * i, fp32_to_fp16(x[i]));
        return;
    case FERRY_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) put_u16(d + 2 * i, fp32_to_bf16(x[i]));
        return;
    case FERRY_TYPE_I32:
        for (int64_t i = 0; i < n; i++) put_i32(d + 4 * i, ferry_f32_to_i32(x[i]));
        return;
    default:
        if ((const void *)x != y) memmove(y, x, (size_t)n * sizeof(float));
        return;
    }
}

static inline float load_plain(enum ferry_type t, const char *p) {
    switch (t) {
    case FERRY_TYPE_F16: return fp16_to_fp32(get_u16(p));
    case FERRY_TYPE_BF16: return bf16_to_fp32(get_u16(p));
    case FERRY_TYPE_I32: return (float)get_i32(p);
    default: return get_f32(p);
    }
}

static inline void store_plain(enum ferry_type t, char *p, float v) {
    switch (t) {
    case FERRY_TYPE_F16: put_u16(p, fp32_to_fp16(v)); break;
    case FERRY_TYPE_BF16: put_u16(p, fp32_to_bf16(v)); break;
    case FERRY_TYPE_I32: put_i32(p, ferry_f32_to_i32(v)); break;
    default: put_f32(p, v); break;
    }
}

/* Converts in chunks through an f32 buffer so that the contiguous cases
 * reach the vectorised converters. */
#define CVT_CHUNK 256

void ferry_cvt_strided(enum ferry_type st, const void *x, size_t sx, enum ferry_type dt, void *y,
                       size_t sy, int64_t n) {
    const char *s = x;
    char *d = y;
    size_t ssz = ferry_type_size(st), dsz = ferry_type_size(dt);
    if (st == dt) {
        if (sx == ssz && sy == dsz) {
            memmove(d, s, (size_t)n * ssz);
        } else {
            for (int64_t i = 0; i < n; i++) memmove(d + i * sy, s + i * sx, ssz);
        }
        return;
    }
    if (sx == ssz && sy == dsz) {
        float buf[CVT_CHUNK];
        for (int64_t i = 0; i < n; i += CVT_CHUNK) {
            int64_t m = n - i < CVT_CHUNK ? n - i : CVT_CHUNK;
            if (st == FERRY_TYPE_F32) {
                ferry_cvt_from_f32(dt, (const float *)(s + i * 4), d + i * dsz, m);
            } else if (dt == FERRY_TYPE_F32) {
                ferry_cvt_to_f32(st, s + i * ssz, (float *)(d + i * 4), m);
            } else {
                ferry_cvt_to_f32(st, s + i * ssz, buf, m);
                ferry_cvt_from_f32(dt, buf, d + i * dsz, m);
            }
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) store_plain(dt, d + i * sy, load_plain(st, s + i * sx));
}

void ferry_vec_silu_f32(float *y, const float *x, int64_t n) {
    if (use_avx2()) ferry_vec_silu_f32_avx2(y, x, n);
    else vec_silu_f32(y, x, n);
}

void ferry_vec_swiglu_f32(float *y, const float *x, const float *g, int64_t n) {
    if (use_avx2()) ferry_vec_swiglu_f32_avx2(y, x, g, n);
    else vec_swiglu_f32(y, x, g, n);
}

void ferry_vec_f16_table_f32(float *y, const float *x, int64_t n, const uint16_t *table,
                             bool gelu_clamp) {
    if (use_avx2()) {
        ferry_vec_f16_table_f32_avx2(y, x, n, table, gelu_clamp);
    } else if (gelu_clamp) {
        for (int64_t i = 0; i < n; i++) y[i] = act_gelu_f32(table, x[i]);
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = act_gelu_quick_f32(table, x[i]);
    }
}
