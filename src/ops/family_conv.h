/* The kernels of the convolution family (docs/ops.md B.24), reached only
 * through ferry_conv_kernel() in family_conv.c. */
#ifndef FERRY_OPS_FAMILY_CONV_H
#define FERRY_OPS_FAMILY_CONV_H

#include "ops.h"

extern const struct ferry_kernel ferry_kernel_im2col;         /* IM2COL: im2col.c */
extern const struct ferry_kernel ferry_kernel_im2col_3d;      /* im2col.c */
extern const struct ferry_kernel ferry_kernel_im2col_back;    /* im2col.c */
extern const struct ferry_kernel ferry_kernel_col2im_1d;      /* im2col.c */
extern const struct ferry_kernel ferry_kernel_conv;           /* CONV_2D, CONV_3D: conv.c */
extern const struct ferry_kernel ferry_kernel_conv_2d_dw;     /* conv.c */
extern const struct ferry_kernel ferry_kernel_conv_transpose; /* CONV_TRANSPOSE_1D, _2D: conv.c */
extern const struct ferry_kernel ferry_kernel_pool;           /* POOL_1D, POOL_2D: pool.c */
extern const struct ferry_kernel ferry_kernel_pool_2d_back;   /* pool.c */
extern const struct ferry_kernel ferry_kernel_upscale;        /* spatial.c */
extern const struct ferry_kernel ferry_kernel_pad_reflect_1d; /* spatial.c */
extern const struct ferry_kernel ferry_kernel_roll;           /* spatial.c */
extern const struct ferry_kernel ferry_kernel_win_part;       /* WIN_PART, WIN_UNPART: spatial.c */
extern const struct ferry_kernel ferry_kernel_get_rel_pos;    /* spatial.c */
extern const struct ferry_kernel ferry_kernel_add_rel_pos;    /* spatial.c */

#endif
