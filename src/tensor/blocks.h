/* Block layouts of the quantized types (docs/types.md section 3), packed, little-endian.
 * Shared by the dequantizers, the quantizers and the dot-product kernels. */
#ifndef FERRY_BLOCKS_H
#define FERRY_BLOCKS_H

#include <assert.h>
#include <stdint.h>

typedef uint16_t ferry_half; /* IEEE binary16 bit pattern */

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define QK4_NL 32
#define QK_MXFP4 32
#define QK_NVFP4 64
#define QK1_0 128
#define QK2_0 64

typedef struct { ferry_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { ferry_half d, m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
typedef struct { ferry_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { ferry_half d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { ferry_half d; int8_t qs[QK8_0]; } block_q8_0;
typedef struct { ferry_half d, s; int8_t qs[QK8_1]; } block_q8_1;
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; ferry_half d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; ferry_half d; } block_q3_K;
typedef struct { ferry_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { ferry_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ferry_half d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;
typedef struct { ferry_half d; uint8_t qs[QK4_NL / 2]; } block_iq4_nl;
typedef struct { ferry_half d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs;
typedef struct { uint8_t qs[48]; uint8_t qh[4]; ferry_half d; } block_tq1_0;
typedef struct { uint8_t qs[QK_K / 4]; ferry_half d; } block_tq2_0;
typedef struct { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; } block_mxfp4;
typedef struct { uint8_t d[4]; uint8_t qs[QK_NVFP4 / 2]; } block_nvfp4;
typedef struct { ferry_half d; uint8_t qs[QK1_0 / 8]; } block_q1_0;
typedef struct { ferry_half d; uint8_t qs[QK2_0 / 4]; } block_q2_0;

static_assert(sizeof(block_q4_0) == 18, "q4_0");
static_assert(sizeof(block_q4_1) == 20, "q4_1");
static_assert(sizeof(block_q5_0) == 22, "q5_0");
static_assert(sizeof(block_q5_1) == 24, "q5_1");
static_assert(sizeof(block_q8_0) == 34, "q8_0");
static_assert(sizeof(block_q8_1) == 36, "q8_1");
static_assert(sizeof(block_q2_K) == 84, "q2_K");
static_assert(sizeof(block_q3_K) == 110, "q3_K");
static_assert(sizeof(block_q4_K) == 144, "q4_K");
static_assert(sizeof(block_q5_K) == 176, "q5_K");
static_assert(sizeof(block_q6_K) == 210, "q6_K");
static_assert(sizeof(block_q8_K) == 292, "q8_K");
static_assert(sizeof(block_iq4_nl) == 18, "iq4_nl");
static_assert(sizeof(block_iq4_xs) == 136, "iq4_xs");
static_assert(sizeof(block_tq1_0) == 54, "tq1_0");
static_assert(sizeof(block_tq2_0) == 66, "tq2_0");
static_assert(sizeof(block_mxfp4) == 17, "mxfp4");
static_assert(sizeof(block_nvfp4) == 36, "nvfp4");
static_assert(sizeof(block_q1_0) == 18, "q1_0");
static_assert(sizeof(block_q2_0) == 18, "q2_0");

/* Value tables (docs/types.md section 3). */
extern const int8_t ferry_kvalues_iq4nl[16];
extern const int8_t ferry_kvalues_mxfp4[16];

#endif
