/* ferry: the tensor model shared by every layer.
 *
 * One description, ggml's: a type, ne[4] element counts (dimension 0 fastest),
 * nb[4] byte strides, a data pointer, and for graph nodes the op that produces
 * it with its raw op_params and up to ten sources. Op and flag numbers are
 * ggml's, because they travel on the wire. */
#ifndef FERRY_TENSOR_H
#define FERRY_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_MAX_DIMS 4
#define FERRY_MAX_SRC 10
#define FERRY_MAX_OP_PARAMS 16 /* int32 slots */
#define FERRY_MAX_NAME 64

enum ferry_tensor_flag {
    FERRY_FLAG_INPUT = 1,
    FERRY_FLAG_OUTPUT = 2,
    FERRY_FLAG_PARAM = 4,
    FERRY_FLAG_LOSS = 8,
    FERRY_FLAG_COMPUTE = 16,
};

enum ferry_op {
    FERRY_OP_NONE = 0,
    FERRY_OP_DUP = 1,
    FERRY_OP_ADD = 2,
    FERRY_OP_ADD_ID = 3,
    FERRY_OP_ADD1 = 4,
    FERRY_OP_ACC = 5,
    FERRY_OP_SUB = 6,
    FERRY_OP_MUL = 7,
    FERRY_OP_DIV = 8,
    FERRY_OP_SQR = 9,
    FERRY_OP_SQRT = 10,
    FERRY_OP_LOG = 11,
    FERRY_OP_SIN = 12,
    FERRY_OP_COS = 13,
    FERRY_OP_SUM = 14,
    FERRY_OP_SUM_ROWS = 15,
    FERRY_OP_CUMSUM = 16,
    FERRY_OP_MEAN = 17,
    FERRY_OP_ARGMAX = 18,
    FERRY_OP_COUNT_EQUAL = 19,
    FERRY_OP_REPEAT = 20,
    FERRY_OP_REPEAT_BACK = 21,
    FERRY_OP_CONCAT = 22,
    FERRY_OP_SILU_BACK = 23,
    FERRY_OP_NORM = 24,
    FERRY_OP_RMS_NORM = 25,
    FERRY_OP_RMS_NORM_BACK = 26,
    FERRY_OP_GROUP_NORM = 27,
    FERRY_OP_L2_NORM = 28,
    FERRY_OP_MUL_MAT = 29,
    FERRY_OP_MUL_MAT_ID = 30,
    FERRY_OP_OUT_PROD = 31,
    FERRY_OP_SCALE = 32,
    FERRY_OP_SET = 33,
    FERRY_OP_CPY = 34,
    FERRY_OP_CONT = 35,
    FERRY_OP_RESHAPE = 36,
    FERRY_OP_VIEW = 37,
    FERRY_OP_PERMUTE = 38,
    FERRY_OP_TRANSPOSE = 39,
    FERRY_OP_GET_ROWS = 40,
    FERRY_OP_GET_ROWS_BACK = 41,
    FERRY_OP_SET_ROWS = 42,
    FERRY_OP_DIAG = 43,
    FERRY_OP_DIAG_MASK_INF = 44,
    FERRY_OP_DIAG_MASK_ZERO = 45,
    FERRY_OP_SOFT_MAX = 46,
    FERRY_OP_SOFT_MAX_BACK = 47,
    FERRY_OP_ROPE = 48,
    FERRY_OP_ROPE_BACK = 49,
    FERRY_OP_CLAMP = 50,
    FERRY_OP_CONV_TRANSPOSE_1D = 51,
    FERRY_OP_IM2COL = 52,
    FERRY_OP_IM2COL_BACK = 53,
    FERRY_OP_IM2COL_3D = 54,
    FERRY_OP_COL2IM_1D = 55,
    FERRY_OP_CONV_2D = 56,
    FERRY_OP_CONV_3D = 57,
    FERRY_OP_CONV_2D_DW = 58,
    FERRY_OP_CONV_TRANSPOSE_2D = 59,
    FERRY_OP_POOL_1D = 60,
    FERRY_OP_POOL_2D = 61,
    FERRY_OP_POOL_2D_BACK = 62,
    FERRY_OP_UPSCALE = 63,
    FERRY_OP_PAD = 64,
    FERRY_OP_PAD_REFLECT_1D = 65,
    FERRY_OP_ROLL = 66,
    FERRY_OP_ARANGE = 67,
    FERRY_OP_TIMESTEP_EMBEDDING = 68,
    FERRY_OP_ARGSORT = 69,
    FERRY_OP_TOP_K = 70,
    FERRY_OP_LEAKY_RELU = 71,
    FERRY_OP_TRI = 72,
    FERRY_OP_FILL = 73,
    FERRY_OP_FLASH_ATTN_EXT = 74,
    FERRY_OP_FLASH_ATTN_BACK = 75,
    FERRY_OP_SSM_CONV = 76,
    FERRY_OP_SSM_SCAN = 77,
    FERRY_OP_WIN_PART = 78,
    FERRY_OP_WIN_UNPART = 79,
    FERRY_OP_GET_REL_POS = 80,
    FERRY_OP_ADD_REL_POS = 81,
    FERRY_OP_RWKV_WKV6 = 82,
    FERRY_OP_GATED_LINEAR_ATTN = 83,
    FERRY_OP_RWKV_WKV7 = 84,
    FERRY_OP_SOLVE_TRI = 85,
    FERRY_OP_GATED_DELTA_NET = 86,
    FERRY_OP_LIGHTNING_INDEXER = 87,
    FERRY_OP_DSV4_HC_COMB = 88,
    FERRY_OP_DSV4_HC_PRE = 89,
    FERRY_OP_DSV4_HC_POST = 90,
    FERRY_OP_UNARY = 91,
    FERRY_OP_MAP_CUSTOM1 = 92,
    FERRY_OP_MAP_CUSTOM2 = 93,
    FERRY_OP_MAP_CUSTOM3 = 94,
    FERRY_OP_CUSTOM = 95,
    FERRY_OP_CROSS_ENTROPY_LOSS = 96,
    FERRY_OP_CROSS_ENTROPY_LOSS_BACK = 97,
    FERRY_OP_OPT_STEP_ADAMW = 98,
    FERRY_OP_OPT_STEP_SGD = 99,
    FERRY_OP_GLU = 100,
    FERRY_OP_COUNT = 101,
};

enum ferry_unary_op {
    FERRY_UNARY_ABS = 0,
    FERRY_UNARY_SGN = 1,
    FERRY_UNARY_NEG = 2,
    FERRY_UNARY_STEP = 3,
    FERRY_UNARY_TANH = 4,
    FERRY_UNARY_ELU = 5,
    FERRY_UNARY_RELU = 6,
    FERRY_UNARY_SIGMOID = 7,
    FERRY_UNARY_GELU = 8,
    FERRY_UNARY_GELU_QUICK = 9,
    FERRY_UNARY_SILU = 10,
    FERRY_UNARY_HARDSWISH = 11,
    FERRY_UNARY_HARDSIGMOID = 12,
    FERRY_UNARY_EXP = 13,
    FERRY_UNARY_EXPM1 = 14,
    FERRY_UNARY_SOFTPLUS = 15,
    FERRY_UNARY_GELU_ERF = 16,
    FERRY_UNARY_XIELU = 17,
    FERRY_UNARY_FLOOR = 18,
    FERRY_UNARY_CEIL = 19,
    FERRY_UNARY_ROUND = 20,
    FERRY_UNARY_TRUNC = 21,
    FERRY_UNARY_COUNT = 22,
};

enum ferry_glu_op {
    FERRY_GLU_REGLU = 0,
    FERRY_GLU_GEGLU = 1,
    FERRY_GLU_SWIGLU = 2,
    FERRY_GLU_SWIGLU_OAI = 3,
    FERRY_GLU_GEGLU_ERF = 4,
    FERRY_GLU_GEGLU_QUICK = 5,
    FERRY_GLU_COUNT = 6,
};

struct ferry_tensor {
    enum ferry_type type;
    int64_t ne[FERRY_MAX_DIMS]; /* elements per dimension */
    size_t nb[FERRY_MAX_DIMS];  /* byte strides; nb[0] is bytes per block */
    enum ferry_op op;
    int32_t op_params[FERRY_MAX_OP_PARAMS];
    int32_t flags;
    struct ferry_tensor *src[FERRY_MAX_SRC];
    struct ferry_tensor *view_src; /* base tensor when this is a view */
    size_t view_offs;
    void *data;
    void *buffer; /* owner of data (opaque; a remote buffer for client tensors), may be NULL */
    char name[FERRY_MAX_NAME];
};

/* Sets type, ne and contiguous nb; everything else zero. Unused dims are 1. */
void ferry_tensor_init(struct ferry_tensor *t, enum ferry_type type, int n_dims,
                       const int64_t *ne, void *data);
/* Recomputes contiguous strides from type and ne. */
void ferry_tensor_set_contiguous(struct ferry_tensor *t);

int64_t ferry_nelements(const struct ferry_tensor *t);
int64_t ferry_nrows(const struct ferry_tensor *t);
/* ggml_nbytes: the byte extent from data to the last byte. Returns false on
 * overflow, on a negative dimension or on an invalid type. */
bool ferry_nbytes_checked(const struct ferry_tensor *t, size_t *out);
/* Same, for trusted tensors; SIZE_MAX on overflow. */
size_t ferry_nbytes(const struct ferry_tensor *t);

bool ferry_is_contiguous(const struct ferry_tensor *t);
bool ferry_rows_contiguous(const struct ferry_tensor *t); /* nb0 == type_size */
bool ferry_same_shape(const struct ferry_tensor *a, const struct ferry_tensor *b);
bool ferry_can_repeat(const struct ferry_tensor *small, const struct ferry_tensor *big);
bool ferry_is_empty(const struct ferry_tensor *t);

/* op_params accessors; floats are stored by bit pattern. */
static inline int32_t ferry_param_i32(const struct ferry_tensor *t, int i) { return t->op_params[i]; }
static inline float ferry_param_f32(const struct ferry_tensor *t, int i) {
    union { int32_t i; float f; } u = { t->op_params[i] };
    return u.f;
}
static inline void ferry_param_set_f32(struct ferry_tensor *t, int i, float f) {
    union { float f; int32_t i; } u = { f };
    t->op_params[i] = u.i;
}

const char *ferry_op_name(int op);
const char *ferry_unary_op_name(int op);
const char *ferry_glu_op_name(int op);

#ifdef __cplusplus
}
#endif
#endif
