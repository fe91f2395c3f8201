/* Kernels of the training family (docs/ops.md B.25): backward passes,
 * losses and optimizer steps. Registered only through ferry_train_kernel()
 * in family_train.c. */
#ifndef FERRY_OPS_FAMILY_TRAIN_H
#define FERRY_OPS_FAMILY_TRAIN_H

#include "ops.h"

extern const struct ferry_kernel ferry_kernel_silu_back;      /* train_backward.c */
extern const struct ferry_kernel ferry_kernel_rms_norm_back;  /* train_backward.c */
extern const struct ferry_kernel ferry_kernel_repeat_back;    /* train_backward.c */
extern const struct ferry_kernel ferry_kernel_get_rows_back;  /* train_backward.c */
extern const struct ferry_kernel ferry_kernel_soft_max_back;  /* train_backward.c */
extern const struct ferry_kernel ferry_kernel_rope_back;      /* train_rope_back.c */
extern const struct ferry_kernel ferry_kernel_out_prod;       /* train_outprod.c */
extern const struct ferry_kernel ferry_kernel_cross_entropy;  /* CROSS_ENTROPY_LOSS: train_loss.c */
extern const struct ferry_kernel ferry_kernel_cross_entropy_back; /* train_loss.c */
extern const struct ferry_kernel ferry_kernel_count_equal;    /* train_loss.c */
extern const struct ferry_kernel ferry_kernel_opt_adamw;      /* OPT_STEP_ADAMW: train_optim.c */
extern const struct ferry_kernel ferry_kernel_opt_sgd;        /* OPT_STEP_SGD: train_optim.c */

#endif
