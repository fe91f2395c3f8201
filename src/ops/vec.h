/* Lane-wise f32 kernels written with GCC vector extensions.
 *
 * Every function here computes each element with the same sequence of f32
 * operations whatever the vector width, and a row's leftover elements go
 * through the very same code (padded into one vector). So results do not
 * depend on the width, on where a row is cut between threads, or on the
 * SIMD level: the baseline build uses 4 lanes (SSE2), vec_avx2.c includes
 * this header with VEC_LANES 8 for AVX2 code generation.
 *
 * Loads and stores go through memcpy: tensor data carries no alignment
 * promise beyond the element's. */
#ifndef FERRY_OPS_VEC_H
#define FERRY_OPS_VEC_H

#include <stdint.h>
#include <string.h>

#ifndef VEC_LANES
#define VEC_LANES 4
#endif

typedef float vf __attribute__((vector_size(VEC_LANES * 4)));
typedef int32_t vi __attribute__((vector_size(VEC_LANES * 4)));
typedef uint32_t vu __attribute__((vector_size(VEC_LANES * 4)));

static inline vf vf_splat(float x) {
    vf v;
    for (int i = 0; i < VEC_LANES; i++) v[i] = x;
    return v;
}
static inline vf vf_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* The first n (< VEC_LANES) elements into a zero-padded vector and back. */
static inline vf vf_load_part(const float *p, int64_t n) {
    vf v = vf_splat(0.0f);
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}
static inline void vf_store_part(float *p, vf v, int64_t n) { memcpy(p, &v, (size_t)n * sizeof(float)); }

/* mask ? a : b, lane-wise; mask lanes are all-ones or zero. */
static inline vf vf_select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* exp(x) in f32 to about 2 ulp: x = n*ln2 + r with a two-part ln2 (the high
 * part has few bits so n*hi is exact), exp(r) by its degree-7 Taylor
 * polynomial (|r| <= ln2/2, truncation error < 2e-8 relative), then 2^n
 * applied in two halves so that overflow to inf and underflow to 0 come
 * out of the final multiplies. NaN propagates. */
static inline vf vf_exp(vf x) {
    const vf hi = vf_splat(89.0f), lo = vf_splat(-104.0f);
    x = vf_select(x > hi, hi, x);
    x = vf_select(x < lo, lo, x);
    const vf magic = vf_splat(12582912.0f); /* 1.5*2^23: adding it rounds to an integer */
    vf t = x * vf_splat(1.44269504088896341f) + magic;
    vf n = t - magic;
    vu ni = (vu)t - (vu)magic; /* the same integer, read from the mantissa bits */
    vf r = x - n * vf_splat(0.693359375f);
    r = r - n * vf_splat(-2.12194440e-4f);
    vf p = vf_splat(1.0f / 5040.0f);
    p = p * r + vf_splat(1.0f / 720.0f);
    p = p * r + vf_splat(1.0f / 120.0f);
    p = p * r + vf_splat(1.0f / 24.0f);
    p = p * r + vf_splat(1.0f / 6.0f);
    p = p * r + vf_splat(0.5f);
    p = p * r + vf_splat(1.0f);
    p = p * r + vf_splat(1.0f);
    vu k1 = (vu)((vi)ni >> 1); /* arithmetic shift: n may be negative */
    vu k2 = ni - k1;
    vf s1 = (vf)((k1 + 127) << 23);
    vf s2 = (vf)((k2 + 127) << 23);
    return (p * s1) * s2;
}

static inline vf vf_silu(vf x) { return x / (vf_splat(1.0f) + vf_exp(-x)); }

/* y = silu(x) */
static inline void vec_silu_f32(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES) vf_store(y + i, vf_silu(vf_load(x + i)));
    if (i < n) vf_store_part(y + i, vf_silu(vf_load_part(x + i, n - i)), n - i);
}

/* y = silu(x) * g */
static inline void vec_swiglu_f32(float *y, const float *x, const float *g, int64_t n) {
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES)
        vf_store(y + i, vf_silu(vf_load(x + i)) * vf_load(g + i));
    if (i < n)
        vf_store_part(y + i, vf_silu(vf_load_part(x + i, n - i)) * vf_load_part(g + i, n - i), n - i);
}

/* Element-wise binary ops on contiguous f32 rows; y may alias a or b
 * exactly (in-place), since each block is read before it is written. */
#define VEC_BINARY(name, OP)                                                       \
    static inline void name(float *y, const float *a, const float *b, int64_t n) { \
        int64_t i = 0;                                                             \
        for (; i + VEC_LANES <= n; i += VEC_LANES)                                 \
            vf_store(y + i, vf_load(a + i) OP vf_load(b + i));                     \
        for (; i < n; i++) y[i] = a[i] OP b[i];                                    \
    }
VEC_BINARY(vec_add_f32, +)
VEC_BINARY(vec_sub_f32, -)
VEC_BINARY(vec_mul_f32, *)
VEC_BINARY(vec_div_f32, /)
#undef VEC_BINARY

#endif
