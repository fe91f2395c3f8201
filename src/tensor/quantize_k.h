/* Simple quantizers for Q4_K and Q6_K (docs/types.md sections 5.3, 5.5): one
 * pass of min/max scaling per sub-block, no search. They produce valid
 * blocks that the existing dequantizers read back closely, which is what
 * generated models need; they are not ggml's reference quantizers (whose
 * output differs in the last bit here and there), so they are not a type's
 * from_float. n is a multiple of 256. */
#ifndef FERRY_QUANTIZE_K_H
#define FERRY_QUANTIZE_K_H

#include <stdint.h>

void ferry_quant_row_q4_K_simple(const float *x, void *y, int64_t n);
void ferry_quant_row_q6_K_simple(const float *x, void *y, int64_t n);

#endif
