/* Helpers shared by the convolution family's kernels (im2col.c, conv.c,
 * pool.c, spatial.c): checked output-size arithmetic, parameter checks,
 * f16 rounding and a fixed-order f32 dot product. */
#ifndef FERRY_OPS_CONV_UTIL_H
#define FERRY_OPS_CONV_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "vec.h"

/* ggml's convolution output length (in + 2p - d*(k-1) - 1)/s + 1, with C's
 * truncating division as ggml has it. False on overflow or s <= 0. */
static inline bool conv_out_len(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, int64_t *out) {
    int64_t span, t;
    if (s <= 0 || __builtin_mul_overflow(d, k - 1, &span) || __builtin_mul_overflow(p, 2, &t) ||
        __builtin_add_overflow(in, t, &t) || __builtin_sub_overflow(t, span, &t) ||
        __builtin_sub_overflow(t, 1, &t))
        return false;
    *out = t / s + 1;
    return true;
}

/* A transposed convolution's output length (in - 1)*s + k. */
static inline bool conv_transpose_len(int64_t in, int64_t k, int64_t s, int64_t *out) {
    int64_t t;
    if (__builtin_mul_overflow(in - 1, s, &t) || __builtin_add_overflow(t, k, &t)) return false;
    *out = t;
    return true;
}

/* Fails err unless every one of the n op_params from `first` on is > 0. */
static inline int check_params_positive(const struct ferry_tensor *node, int first, int n, const char *what,
                                        struct ferry_error *err) {
    for (int i = first; i < first + n; i++)
        if (ferry_param_i32(node, i) <= 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s P[%d] = %d must be > 0", ferry_op_name(node->op),
                              what, i, (int)ferry_param_i32(node, i));
    return FERRY_OK;
}

/* Fails err when node's dimension d is not want (an output size the
 * params imply). */
static inline int check_dim(const struct ferry_tensor *node, int d, int64_t want, struct ferry_error *err) {
    if (node->ne[d] == want) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_INVALID, "%s: output ne[%d] = %lld, the params imply %lld",
                      ferry_op_name(node->op), d, (long long)node->ne[d], (long long)want);
}

/* x rounded to f16 and back: what ggml's f16 kernels multiply. */
static inline float round_f16(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

/* Sum of a[i]*b[i] in f32: lane-wise partial sums, then the lanes in order,
 * then the leftovers. One fixed order for a given n, so results never depend
 * on threads. */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
    vf acc = vf_splat(0.0f);
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES) acc += vf_load(a + i) * vf_load(b + i);
    float sum = 0.0f;
    for (int l = 0; l < VEC_LANES; l++) sum += acc[l];
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* Bytes rounded up to a cache line; SIZE_MAX stays SIZE_MAX. */
static inline size_t round_line(size_t b) { return b > SIZE_MAX - 63 ? SIZE_MAX : (b + 63) & ~(size_t)63; }

/* count*elem bytes, saturating at SIZE_MAX. */
static inline size_t bytes_of(int64_t count, size_t elem) {
    size_t b;
    if (count < 0 || __builtin_mul_overflow((size_t)count, elem, &b)) return SIZE_MAX;
    return b;
}

static inline size_t add_sat(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static inline size_t mul_sat(size_t a, size_t b) {
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

#endif
