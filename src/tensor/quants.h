/* Row dequantizers and quantizers of every supported type (docs/types.md sections 4-7).
 * n is the element count, a multiple of the type's block size. */
#ifndef FERRY_QUANTS_H
#define FERRY_QUANTS_H

#include <stdint.h>

#define FERRY_DEQUANT(t) void ferry_dequant_row_##t(const void *x, float *y, int64_t n);
#define FERRY_QUANT(t) void ferry_quant_row_##t(const float *x, void *y, int64_t n);

FERRY_DEQUANT(q4_0) FERRY_DEQUANT(q4_1) FERRY_DEQUANT(q5_0) FERRY_DEQUANT(q5_1)
FERRY_DEQUANT(q8_0) FERRY_DEQUANT(q8_1)
FERRY_DEQUANT(q2_K) FERRY_DEQUANT(q3_K) FERRY_DEQUANT(q4_K) FERRY_DEQUANT(q5_K)
FERRY_DEQUANT(q6_K) FERRY_DEQUANT(q8_K)
FERRY_DEQUANT(iq4_nl) FERRY_DEQUANT(iq4_xs) FERRY_DEQUANT(mxfp4) FERRY_DEQUANT(nvfp4)
FERRY_DEQUANT(tq1_0) FERRY_DEQUANT(tq2_0) FERRY_DEQUANT(q1_0) FERRY_DEQUANT(q2_0)

/* Bit-exact reference quantizers (the CPU backend's from_float). */
FERRY_QUANT(q4_0) FERRY_QUANT(q4_1) FERRY_QUANT(q5_0) FERRY_QUANT(q5_1)
FERRY_QUANT(q8_0) /* x86 variant: id = 127/amax, ties to even */
FERRY_QUANT(iq4_nl) FERRY_QUANT(mxfp4) FERRY_QUANT(nvfp4)
FERRY_QUANT(q1_0) FERRY_QUANT(q2_0)
/* quants_k_write.c */
FERRY_QUANT(q2_K) FERRY_QUANT(q3_K) FERRY_QUANT(q4_K) FERRY_QUANT(q5_K)
FERRY_QUANT(q6_K) FERRY_QUANT(iq4_xs) FERRY_QUANT(tq1_0) FERRY_QUANT(tq2_0)

#undef FERRY_DEQUANT
#undef FERRY_QUANT

#endif
