/* Which kernel runs which op. */
#include <stddef.h>

#include "ops.h"

static const struct ferry_kernel *const kernels[FERRY_OP_COUNT] = {
    [FERRY_OP_DUP] = &ferry_kernel_dup,
    [FERRY_OP_CPY] = &ferry_kernel_dup,
    [FERRY_OP_CONT] = &ferry_kernel_dup,
    [FERRY_OP_GET_ROWS] = &ferry_kernel_get_rows,
    [FERRY_OP_SET_ROWS] = &ferry_kernel_set_rows,
    [FERRY_OP_ADD] = &ferry_kernel_binary,
    [FERRY_OP_SUB] = &ferry_kernel_binary,
    [FERRY_OP_MUL] = &ferry_kernel_binary,
    [FERRY_OP_DIV] = &ferry_kernel_binary,
    [FERRY_OP_ADD_ID] = &ferry_kernel_add_id,
    [FERRY_OP_UNARY] = &ferry_kernel_unary,
    [FERRY_OP_SQR] = &ferry_kernel_sqr,
    [FERRY_OP_SQRT] = &ferry_kernel_sqr,
    [FERRY_OP_SCALE] = &ferry_kernel_scale,
    [FERRY_OP_CLAMP] = &ferry_kernel_clamp,
    [FERRY_OP_LEAKY_RELU] = &ferry_kernel_leaky_relu,
    [FERRY_OP_GLU] = &ferry_kernel_glu,
    [FERRY_OP_SUM] = &ferry_kernel_sum,
    [FERRY_OP_SUM_ROWS] = &ferry_kernel_sum,
    [FERRY_OP_MEAN] = &ferry_kernel_sum,
    [FERRY_OP_CUMSUM] = &ferry_kernel_sum,
    [FERRY_OP_ARGMAX] = &ferry_kernel_argmax,
    [FERRY_OP_ARGSORT] = &ferry_kernel_argsort,
    [FERRY_OP_TOP_K] = &ferry_kernel_argsort,
    [FERRY_OP_NORM] = &ferry_kernel_norm,
    [FERRY_OP_RMS_NORM] = &ferry_kernel_norm,
    [FERRY_OP_L2_NORM] = &ferry_kernel_norm,
    [FERRY_OP_CONCAT] = &ferry_kernel_concat,
    [FERRY_OP_REPEAT] = &ferry_kernel_repeat,
    [FERRY_OP_PAD] = &ferry_kernel_pad,
    [FERRY_OP_FILL] = &ferry_kernel_fill,
    [FERRY_OP_ARANGE] = &ferry_kernel_fill,
    [FERRY_OP_TRI] = &ferry_kernel_tri,
    [FERRY_OP_DIAG_MASK_INF] = &ferry_kernel_tri,
    [FERRY_OP_SOFT_MAX] = &ferry_kernel_soft_max,
    [FERRY_OP_ROPE] = &ferry_kernel_rope,
    [FERRY_OP_MUL_MAT] = &ferry_kernel_mul_mat,
    [FERRY_OP_MUL_MAT_ID] = &ferry_kernel_mul_mat_id,
    [FERRY_OP_FLASH_ATTN_EXT] = &ferry_kernel_flash_attn,
};

const struct ferry_kernel *ferry_kernel_for(int op) {
    if (op < 0 || op >= FERRY_OP_COUNT) return NULL;
    if (kernels[op]) return kernels[op];
    const struct ferry_kernel *k = ferry_conv_kernel(op);
    if (!k) k = ferry_train_kernel(op);
    if (!k) k = ferry_seq_kernel(op);
    return k;
}
