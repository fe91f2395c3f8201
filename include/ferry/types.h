/* ferry: tensor element types, their storage traits and conversions.
 *
 * Type numbers are ggml's (they travel on the wire), so they are fixed.
 * Layouts, dequantizers and quantizers follow ggml's CPU backend bit for bit. */
#ifndef FERRY_TYPES_H
#define FERRY_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_type {
    FERRY_TYPE_F32 = 0,
    FERRY_TYPE_F16 = 1,
    FERRY_TYPE_Q4_0 = 2,
    FERRY_TYPE_Q4_1 = 3,
    /* 4, 5: removed */
    FERRY_TYPE_Q5_0 = 6,
    FERRY_TYPE_Q5_1 = 7,
    FERRY_TYPE_Q8_0 = 8,
    FERRY_TYPE_Q8_1 = 9,
    FERRY_TYPE_Q2_K = 10,
    FERRY_TYPE_Q3_K = 11,
    FERRY_TYPE_Q4_K = 12,
    FERRY_TYPE_Q5_K = 13,
    FERRY_TYPE_Q6_K = 14,
    FERRY_TYPE_Q8_K = 15,
    FERRY_TYPE_IQ2_XXS = 16,
    FERRY_TYPE_IQ2_XS = 17,
    FERRY_TYPE_IQ3_XXS = 18,
    FERRY_TYPE_IQ1_S = 19,
    FERRY_TYPE_IQ4_NL = 20,
    FERRY_TYPE_IQ3_S = 21,
    FERRY_TYPE_IQ2_S = 22,
    FERRY_TYPE_IQ4_XS = 23,
    FERRY_TYPE_I8 = 24,
    FERRY_TYPE_I16 = 25,
    FERRY_TYPE_I32 = 26,
    FERRY_TYPE_I64 = 27,
    FERRY_TYPE_F64 = 28,
    FERRY_TYPE_IQ1_M = 29,
    FERRY_TYPE_BF16 = 30,
    /* 31..33: removed */
    FERRY_TYPE_TQ1_0 = 34,
    FERRY_TYPE_TQ2_0 = 35,
    /* 36..38: removed */
    FERRY_TYPE_MXFP4 = 39,
    FERRY_TYPE_NVFP4 = 40,
    FERRY_TYPE_Q1_0 = 41,
    FERRY_TYPE_Q2_0 = 42,
    FERRY_TYPE_COUNT = 43,
};

/* Dequantize/convert n elements (a multiple of the block size) to f32. */
typedef void (*ferry_to_float_fn)(const void *src, float *dst, int64_t n);
/* Quantize/convert n elements (a multiple of the block size) from f32. */
typedef void (*ferry_from_float_fn)(const float *src, void *dst, int64_t n);

struct ferry_type_traits {
    const char *name;          /* ggml_type_name, e.g. "q4_K"; NULL for removed ids */
    int64_t blck_size;         /* elements per block; 0 for removed ids */
    size_t type_size;          /* bytes per block */
    bool is_quantized;
    ferry_to_float_fn to_float;     /* NULL if the engine cannot read this type */
    ferry_from_float_fn from_float; /* NULL if the engine cannot write this type */
};

/* Traits of a type id; NULL when the id is out of range or removed. */
const struct ferry_type_traits *ferry_type_traits(int type);

bool ferry_type_valid(int type); /* in range and not a removed id */
const char *ferry_type_name(int type); /* "?" for invalid ids */
int64_t ferry_blck_size(int type);
size_t ferry_type_size(int type);
bool ferry_type_is_quantized(int type);
/* Bytes of n elements of a row; n must be a multiple of the block size. */
size_t ferry_row_size(int type, int64_t n);

/* Scalar conversions (docs/types.md section 2). */
float ferry_fp16_to_fp32(uint16_t h);
uint16_t ferry_fp32_to_fp16(float f);   /* round to nearest even, NaN -> 0x7e00|sign */
float ferry_bf16_to_fp32(uint16_t h);
uint16_t ferry_fp32_to_bf16(float f);   /* round to nearest even, NaN forced quiet */

/* Row quantizers that are not a type's from_float but are needed by the
 * dot products (ggml's x86 CPU variants). */
void ferry_quantize_row_q8_0_x86(const float *x, void *y, int64_t n);
void ferry_quantize_row_q8_1_x86(const float *x, void *y, int64_t n);
void ferry_quantize_row_q8_K(const float *x, void *y, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
