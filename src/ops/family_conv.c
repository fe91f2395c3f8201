/* Convolution, im2col, pooling, upscaling and other spatial ops.
 * ferry_conv_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "family_conv.h"

const struct ferry_kernel *ferry_conv_kernel(int op) {
    switch (op) {
    case FERRY_OP_IM2COL: return &ferry_kernel_im2col;
    case FERRY_OP_IM2COL_3D: return &ferry_kernel_im2col_3d;
    case FERRY_OP_IM2COL_BACK: return &ferry_kernel_im2col_back;
    case FERRY_OP_COL2IM_1D: return &ferry_kernel_col2im_1d;
    case FERRY_OP_CONV_2D: return &ferry_kernel_conv;
    case FERRY_OP_CONV_3D: return &ferry_kernel_conv;
    case FERRY_OP_CONV_2D_DW: return &ferry_kernel_conv_2d_dw;
    case FERRY_OP_CONV_TRANSPOSE_1D: return &ferry_kernel_conv_transpose;
    case FERRY_OP_CONV_TRANSPOSE_2D: return &ferry_kernel_conv_transpose;
    case FERRY_OP_POOL_1D: return &ferry_kernel_pool;
    case FERRY_OP_POOL_2D: return &ferry_kernel_pool;
    case FERRY_OP_POOL_2D_BACK: return &ferry_kernel_pool_2d_back;
    case FERRY_OP_UPSCALE: return &ferry_kernel_upscale;
    case FERRY_OP_PAD_REFLECT_1D: return &ferry_kernel_pad_reflect_1d;
    case FERRY_OP_ROLL: return &ferry_kernel_roll;
    case FERRY_OP_WIN_PART: return &ferry_kernel_win_part;
    case FERRY_OP_WIN_UNPART: return &ferry_kernel_win_part;
    case FERRY_OP_GET_REL_POS: return &ferry_kernel_get_rel_pos;
    case FERRY_OP_ADD_REL_POS: return &ferry_kernel_add_rel_pos;
    default: return NULL;
    }
}
