/* Tensor shape and stride arithmetic (ggml's model, docs/ops.md A.1). */
#include <string.h>

#include "ferry/tensor.h"

void ferry_tensor_set_contiguous(struct ferry_tensor *t) {
    size_t ts = ferry_type_size(t->type);
    int64_t bs = ferry_blck_size(t->type);
    t->nb[0] = ts;
    t->nb[1] = bs > 0 ? ts * (size_t)(t->ne[0] / bs) : 0;
    for (int i = 2; i < FERRY_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t)t->ne[i - 1];
}

void ferry_tensor_init(struct ferry_tensor *t, enum ferry_type type, int n_dims,
                       const int64_t *ne, void *data) {
    memset(t, 0, sizeof *t);
    t->type = type;
    for (int i = 0; i < FERRY_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    ferry_tensor_set_contiguous(t);
    t->data = data;
}

int64_t ferry_nelements(const struct ferry_tensor *t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

int64_t ferry_nrows(const struct ferry_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

bool ferry_nbytes_checked(const struct ferry_tensor *t, size_t *out) {
    int64_t bs = ferry_blck_size(t->type);
    size_t ts = ferry_type_size(t->type);
    if (bs <= 0) return false;
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        if (t->ne[i] < 0) return false;
        if (t->ne[i] == 0) { *out = 0; return true; }
    }
    size_t total;
    if (bs == 1) {
        total = ts;
        for (int i = 0; i < FERRY_MAX_DIMS; i++) {
            size_t term;
            if (__builtin_mul_overflow((uint64_t)(t->ne[i] - 1), t->nb[i], &term) ||
                __builtin_add_overflow(total, term, &total))
                return false;
        }
    } else {
        size_t first;
        if (__builtin_mul_overflow((uint64_t)t->ne[0], t->nb[0], &first)) return false;
        total = first / (size_t)bs;
        for (int i = 1; i < FERRY_MAX_DIMS; i++) {
            size_t term;
            if (__builtin_mul_overflow((uint64_t)(t->ne[i] - 1), t->nb[i], &term) ||
                __builtin_add_overflow(total, term, &total))
                return false;
        }
    }
    *out = total;
    return true;
}

size_t ferry_nbytes(const struct ferry_tensor *t) {
    size_t n;
    return ferry_nbytes_checked(t, &n) ? n : SIZE_MAX;
}

bool ferry_is_contiguous(const struct ferry_tensor *t) {
    /* dims of size 1 may carry any stride, as in ggml */
    size_t ts = ferry_type_size(t->type);
    int64_t bs = ferry_blck_size(t->type);
    if (bs <= 0) return false;
    size_t next = ts;
    for (int i = 0; i < FERRY_MAX_DIMS; i++) {
        if (t->ne[i] != 1) {
            if (i == 0 && t->ne[0] == bs) {
                /* a single block: nb0 is irrelevant */
            } else if (t->nb[i] != next) {
                return false;
            }
        }
        next = (i == 0) ? ts * (size_t)(t->ne[0] / bs) : next * (size_t)t->ne[i];
    }
    return true;
}

bool ferry_rows_contiguous(const struct ferry_tensor *t) {
    return t->nb[0] == ferry_type_size(t->type) || t->ne[0] == ferry_blck_size(t->type);
}

bool ferry_same_shape(const struct ferry_tensor *a, const struct ferry_tensor *b) {
    for (int i = 0; i < FERRY_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i]) return false;
    return true;
}

bool ferry_is_empty(const struct ferry_tensor *t) {
    for (int i = 0; i < FERRY_MAX_DIMS; i++)
        if (t->ne[i] == 0) return true;
    return false;
}

bool ferry_can_repeat(const struct ferry_tensor *small, const struct ferry_tensor *big) {
    if (ferry_is_empty(small)) return ferry_is_empty(big);
    for (int i = 0; i < FERRY_MAX_DIMS; i++)
        if (small->ne[i] <= 0 || big->ne[i] % small->ne[i] != 0) return false;
    return true;
}

static const char *const op_names[FERRY_OP_COUNT] = {
    "NONE", "DUP", "ADD", "ADD_ID", "ADD1", "ACC", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG",
    "SIN", "COS", "SUM", "SUM_ROWS", "CUMSUM", "MEAN", "ARGMAX", "COUNT_EQUAL", "REPEAT",
    "REPEAT_BACK", "CONCAT", "SILU_BACK", "NORM", "RMS_NORM", "RMS_NORM_BACK", "GROUP_NORM",
    "L2_NORM", "MUL_MAT", "MUL_MAT_ID", "OUT_PROD", "SCALE", "SET", "CPY", "CONT", "RESHAPE",
    "VIEW", "PERMUTE", "TRANSPOSE", "GET_ROWS", "GET_ROWS_BACK", "SET_ROWS", "DIAG",
    "DIAG_MASK_INF", "DIAG_MASK_ZERO", "SOFT_MAX", "SOFT_MAX_BACK", "ROPE", "ROPE_BACK",
    "CLAMP", "CONV_TRANSPOSE_1D", "IM2COL", "IM2COL_BACK", "IM2COL_3D", "COL2IM_1D", "CONV_2D",
    "CONV_3D", "CONV_2D_DW", "CONV_TRANSPOSE_2D", "POOL_1D", "POOL_2D", "POOL_2D_BACK",
    "UPSCALE", "PAD", "PAD_REFLECT_1D", "ROLL", "ARANGE", "TIMESTEP_EMBEDDING", "ARGSORT",
    "TOP_K", "LEAKY_RELU", "TRI", "FILL", "FLASH_ATTN_EXT", "FLASH_ATTN_BACK", "SSM_CONV",
    "SSM_SCAN", "WIN_PART", "WIN_UNPART", "GET_REL_POS", "ADD_REL_POS", "RWKV_WKV6",
    "GATED_LINEAR_ATTN", "RWKV_WKV7", "SOLVE_TRI", "GATED_DELTA_NET", "LIGHTNING_INDEXER",
    "DSV4_HC_COMB", "DSV4_HC_PRE", "DSV4_HC_POST", "UNARY", "MAP_CUSTOM1", "MAP_CUSTOM2",
    "MAP_CUSTOM3", "CUSTOM", "CROSS_ENTROPY_LOSS", "CROSS_ENTROPY_LOSS_BACK", "OPT_STEP_ADAMW",
    "OPT_STEP_SGD", "GLU",
};

static const char *const unary_names[FERRY_UNARY_COUNT] = {
    "ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU", "GELU_QUICK", "SILU",
    "HARDSWISH", "HARDSIGMOID", "EXP", "EXPM1", "SOFTPLUS", "GELU_ERF", "XIELU", "FLOOR",
    "CEIL", "ROUND", "TRUNC",
};

static const char *const glu_names[FERRY_GLU_COUNT] = {
    "REGLU", "GEGLU", "SWIGLU", "SWIGLU_OAI", "GEGLU_ERF", "GEGLU_QUICK",
};

const char *ferry_op_name(int op) {
    return op >= 0 && op < FERRY_OP_COUNT ? op_names[op] : "?";
}
const char *ferry_unary_op_name(int op) {
    return op >= 0 && op < FERRY_UNARY_COUNT ? unary_names[op] : "?";
}
const char *ferry_glu_op_name(int op) {
    return op >= 0 && op < FERRY_GLU_COUNT ? glu_names[op] : "?";
}
