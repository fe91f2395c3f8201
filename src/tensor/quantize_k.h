/* Simple quantizers for Q4_K and Q6_K (docs/types.md sections 5.3, 5.5): one
 * pass of min/max scaling per sub-block, no search. They produce valid
 * blocks that the dequantizers read back closely, which is what generated
 * models need. They are not ggml's bytes: the types' from_float are the
 * bit-exact quantizers of quants_k_write.c, whose scale search costs about
 * ten times as much per element (Q4_K: some 120 ns against 12), too slow
 * for gigabyte-sized generated models. n is a multiple of 256. */
#ifndef FERRY_QUANTIZE_K_H
#define FERRY_QUANTIZE_K_H

#include <stdint.h>

void ferry_quant_row_q4_K_simple(const float *x, void *y, int64_t n);
void ferry_quant_row_q6_K_simple(const float *x, void *y, int64_t n);

#endif
