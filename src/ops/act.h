/* Scalar activation functions shared by UNARY (docs/ops.md B.20) and GLU (B.21),
 * including GELU's f16 lookup tables. Each is written as ggml evaluates it,
 * in f32 and in the same operation order, so the results match bit for bit
 * where libm does. */
#ifndef FERRY_OPS_ACT_H
#define FERRY_OPS_ACT_H

#include <math.h>
#include <stdint.h>

#include "tensor/fp16.h"

/* T[h] = f16(gelu_tanh(f32(h))) and f16(x*sigmoid(1.702x)) for every f16
 * bit pattern h; built once on first use, thread-safely. */
const uint16_t *ferry_gelu_table(void);
const uint16_t *ferry_gelu_quick_table(void);

/* F32 GELU goes through the table (f16 precision, as ggml), exact outside
 * [-10, 10]. */
static inline float act_gelu_f32(const uint16_t *table, float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return fp16_to_fp32(table[fp32_to_fp16(x)]);
}

static inline float act_gelu_quick_f32(const uint16_t *table, float x) {
    return fp16_to_fp32(table[fp32_to_fp16(x)]);
}

static inline float act_gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

static inline float act_silu(float x) { return x / (1.0f + expf(-x)); }

#endif
