/* Type traits: sizes, names, and the row converters of each type. */
#include <string.h>

#include "ferry/types.h"
#include "fp16.h"
#include "quants.h"

float ferry_fp16_to_fp32(uint16_t h) { return fp16_to_fp32(h); }
uint16_t ferry_fp32_to_fp16(float f) { return fp32_to_fp16(f); }
float ferry_bf16_to_fp32(uint16_t h) { return bf16_to_fp32(h); }
uint16_t ferry_fp32_to_bf16(float f) { return fp32_to_bf16(f); }

static void f32_to_float(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
static void f32_from_float(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

static void f16_to_float(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(h[i]);
}
static void f16_from_float(const float *x, void *y, int64_t n) {
    uint16_t *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = fp32_to_fp16(x[i]);
}
static void bf16_to_float(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(h[i]);
}
static void bf16_from_float(const float *x, void *y, int64_t n) {
    uint16_t *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = fp32_to_bf16(x[i]);
}
/* I32 reads as f32 so GET_ROWS-style readers have one path; the ops that
 * need exact integers copy bytes instead. */
static void i32_to_float(const void *x, float *y, int64_t n) {
    const int32_t *v = x;
    for (int64_t i = 0; i < n; i++) y[i] = (float)v[i];
}

#define Q(name_, blck, size, deq, qnt) { name_, blck, size, true, deq, qnt }
#define S(name_, size, deq, qnt) { name_, 1, size, false, deq, qnt }

static const struct ferry_type_traits traits[FERRY_TYPE_COUNT] = {
    [FERRY_TYPE_F32] = S("f32", 4, f32_to_float, f32_from_float),
    [FERRY_TYPE_F16] = S("f16", 2, f16_to_float, f16_from_float),
    [FERRY_TYPE_Q4_0] = Q("q4_0", 32, 18, ferry_dequant_row_q4_0, ferry_quant_row_q4_0),
    [FERRY_TYPE_Q4_1] = Q("q4_1", 32, 20, ferry_dequant_row_q4_1, ferry_quant_row_q4_1),
    [FERRY_TYPE_Q5_0] = Q("q5_0", 32, 22, ferry_dequant_row_q5_0, ferry_quant_row_q5_0),
    [FERRY_TYPE_Q5_1] = Q("q5_1", 32, 24, ferry_dequant_row_q5_1, ferry_quant_row_q5_1),
    [FERRY_TYPE_Q8_0] = Q("q8_0", 32, 34, ferry_dequant_row_q8_0, ferry_quant_row_q8_0),
    [FERRY_TYPE_Q8_1] = Q("q8_1", 32, 36, ferry_dequant_row_q8_1, NULL),
    [FERRY_TYPE_Q2_K] = Q("q2_K", 256, 84, ferry_dequant_row_q2_K, ferry_quant_row_q2_K),
    [FERRY_TYPE_Q3_K] = Q("q3_K", 256, 110, ferry_dequant_row_q3_K, ferry_quant_row_q3_K),
    [FERRY_TYPE_Q4_K] = Q("q4_K", 256, 144, ferry_dequant_row_q4_K, ferry_quant_row_q4_K),
    [FERRY_TYPE_Q5_K] = Q("q5_K", 256, 176, ferry_dequant_row_q5_K, ferry_quant_row_q5_K),
    [FERRY_TYPE_Q6_K] = Q("q6_K", 256, 210, ferry_dequant_row_q6_K, ferry_quant_row_q6_K),
    [FERRY_TYPE_Q8_K] = Q("q8_K", 256, 292, ferry_dequant_row_q8_K, NULL),
    /* Grid-based IQ types: storable (byte copies), not computable without
     * ggml's codebooks. */
    [FERRY_TYPE_IQ2_XXS] = Q("iq2_xxs", 256, 66, NULL, NULL),
    [FERRY_TYPE_IQ2_XS] = Q("iq2_xs", 256, 74, NULL, NULL),
    [FERRY_TYPE_IQ3_XXS] = Q("iq3_xxs", 256, 98, NULL, NULL),
    [FERRY_TYPE_IQ1_S] = Q("iq1_s", 256, 50, NULL, NULL),
    [FERRY_TYPE_IQ4_NL] = Q("iq4_nl", 32, 18, ferry_dequant_row_iq4_nl, ferry_quant_row_iq4_nl),
    [FERRY_TYPE_IQ3_S] = Q("iq3_s", 256, 110, NULL, NULL),
    [FERRY_TYPE_IQ2_S] = Q("iq2_s", 256, 82, NULL, NULL),
    [FERRY_TYPE_IQ4_XS] = Q("iq4_xs", 256, 136, ferry_dequant_row_iq4_xs, ferry_quant_row_iq4_xs),
    [FERRY_TYPE_I8] = S("i8", 1, NULL, NULL),
    [FERRY_TYPE_I16] = S("i16", 2, NULL, NULL),
    [FERRY_TYPE_I32] = S("i32", 4, i32_to_float, NULL),
    [FERRY_TYPE_I64] = S("i64", 8, NULL, NULL),
    [FERRY_TYPE_F64] = S("f64", 8, NULL, NULL),
    [FERRY_TYPE_IQ1_M] = Q("iq1_m", 256, 56, NULL, NULL),
    [FERRY_TYPE_BF16] = S("bf16", 2, bf16_to_float, bf16_from_float),
    [FERRY_TYPE_TQ1_0] = Q("tq1_0", 256, 54, ferry_dequant_row_tq1_0, ferry_quant_row_tq1_0),
    [FERRY_TYPE_TQ2_0] = Q("tq2_0", 256, 66, ferry_dequant_row_tq2_0, ferry_quant_row_tq2_0),
    [FERRY_TYPE_MXFP4] = Q("mxfp4", 32, 17, ferry_dequant_row_mxfp4, ferry_quant_row_mxfp4),
    [FERRY_TYPE_NVFP4] = Q("nvfp4", 64, 36, ferry_dequant_row_nvfp4, ferry_quant_row_nvfp4),
    [FERRY_TYPE_Q1_0] = Q("q1_0", 128, 18, ferry_dequant_row_q1_0, ferry_quant_row_q1_0),
    [FERRY_TYPE_Q2_0] = Q("q2_0", 64, 18, ferry_dequant_row_q2_0, ferry_quant_row_q2_0),
};

const struct ferry_type_traits *ferry_type_traits(int type) {
    if (type < 0 || type >= FERRY_TYPE_COUNT || traits[type].blck_size == 0) return NULL;
    return &traits[type];
}

bool ferry_type_valid(int type) { return ferry_type_traits(type) != NULL; }

const char *ferry_type_name(int type) {
    const struct ferry_type_traits *t = ferry_type_traits(type);
    return t ? t->name : "?";
}

int64_t ferry_blck_size(int type) {
    const struct ferry_type_traits *t = ferry_type_traits(type);
    return t ? t->blck_size : 0;
}

size_t ferry_type_size(int type) {
    const struct ferry_type_traits *t = ferry_type_traits(type);
    return t ? t->type_size : 0;
}

bool ferry_type_is_quantized(int type) {
    const struct ferry_type_traits *t = ferry_type_traits(type);
    return t && t->is_quantized;
}

size_t ferry_row_size(int type, int64_t n) {
    const struct ferry_type_traits *t = ferry_type_traits(type);
    if (!t || n < 0) return 0;
    return t->type_size * (size_t)(n / t->blck_size);
}
