/* Training ops: backward passes, losses and optimizer steps.
 * ferry_train_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "family_train.h"
#include "ops.h"

const struct ferry_kernel *ferry_train_kernel(int op) {
    switch (op) {
    case FERRY_OP_SILU_BACK: return &ferry_kernel_silu_back;
    case FERRY_OP_RMS_NORM_BACK: return &ferry_kernel_rms_norm_back;
    case FERRY_OP_REPEAT_BACK: return &ferry_kernel_repeat_back;
    case FERRY_OP_GET_ROWS_BACK: return &ferry_kernel_get_rows_back;
    case FERRY_OP_SOFT_MAX_BACK: return &ferry_kernel_soft_max_back;
    case FERRY_OP_ROPE_BACK: return &ferry_kernel_rope_back;
    case FERRY_OP_OUT_PROD: return &ferry_kernel_out_prod;
    case FERRY_OP_CROSS_ENTROPY_LOSS: return &ferry_kernel_cross_entropy;
    case FERRY_OP_CROSS_ENTROPY_LOSS_BACK: return &ferry_kernel_cross_entropy_back;
    case FERRY_OP_COUNT_EQUAL: return &ferry_kernel_count_equal;
    case FERRY_OP_OPT_STEP_ADAMW: return &ferry_kernel_opt_adamw;
    case FERRY_OP_OPT_STEP_SGD: return &ferry_kernel_opt_sgd;
    default: return NULL;
    }
}
