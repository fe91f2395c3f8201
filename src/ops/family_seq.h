/* Kernels of the sequence-model family and of the remaining element-wise
 * and matrix ops (docs/ops.md B.26). family_seq.c maps op numbers to them. */
#ifndef FERRY_OPS_FAMILY_SEQ_H
#define FERRY_OPS_FAMILY_SEQ_H

#include "ops.h"

/* misc.c: element-wise and small matrix ops */
extern const struct ferry_kernel ferry_kernel_sin_cos_log;  /* SIN, COS, LOG */
extern const struct ferry_kernel ferry_kernel_add1;
extern const struct ferry_kernel ferry_kernel_acc_set;      /* ACC, SET */
extern const struct ferry_kernel ferry_kernel_diag;
extern const struct ferry_kernel ferry_kernel_diag_mask_zero;
extern const struct ferry_kernel ferry_kernel_group_norm;
extern const struct ferry_kernel ferry_kernel_timestep_embedding;
extern const struct ferry_kernel ferry_kernel_solve_tri;

/* ssm.c: Mamba */
extern const struct ferry_kernel ferry_kernel_ssm_conv;
extern const struct ferry_kernel ferry_kernel_ssm_scan;

/* wkv.c: RWKV and gated linear attention */
extern const struct ferry_kernel ferry_kernel_rwkv_wkv6;
extern const struct ferry_kernel ferry_kernel_rwkv_wkv7;
extern const struct ferry_kernel ferry_kernel_gla;

/* delta.c: the gated delta rule and DeepSeek's lightning indexer */
extern const struct ferry_kernel ferry_kernel_gated_delta_net;
extern const struct ferry_kernel ferry_kernel_lightning_indexer;

/* dsv4.c: DeepSeek-V4 hyper-connections */
extern const struct ferry_kernel ferry_kernel_dsv4_hc_comb;
extern const struct ferry_kernel ferry_kernel_dsv4_hc_pre;
extern const struct ferry_kernel ferry_kernel_dsv4_hc_post;

#endif
