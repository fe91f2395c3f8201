/* Sequence-model ops (state-space, RWKV, linear attention) and the remaining element-wise and matrix ops.
 * ferry_seq_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "family_seq.h"

const struct ferry_kernel *ferry_seq_kernel(int op) {
    switch (op) {
    case FERRY_OP_SIN:
    case FERRY_OP_COS:
    case FERRY_OP_LOG: return &ferry_kernel_sin_cos_log;
    case FERRY_OP_ADD1: return &ferry_kernel_add1;
    case FERRY_OP_ACC:
    case FERRY_OP_SET: return &ferry_kernel_acc_set;
    case FERRY_OP_DIAG: return &ferry_kernel_diag;
    case FERRY_OP_DIAG_MASK_ZERO: return &ferry_kernel_diag_mask_zero;
    case FERRY_OP_GROUP_NORM: return &ferry_kernel_group_norm;
    case FERRY_OP_TIMESTEP_EMBEDDING: return &ferry_kernel_timestep_embedding;
    case FERRY_OP_SOLVE_TRI: return &ferry_kernel_solve_tri;
    case FERRY_OP_SSM_CONV: return &ferry_kernel_ssm_conv;
    case FERRY_OP_SSM_SCAN: return &ferry_kernel_ssm_scan;
    case FERRY_OP_RWKV_WKV6: return &ferry_kernel_rwkv_wkv6;
    case FERRY_OP_RWKV_WKV7: return &ferry_kernel_rwkv_wkv7;
    case FERRY_OP_GATED_LINEAR_ATTN: return &ferry_kernel_gla;
    case FERRY_OP_GATED_DELTA_NET: return &ferry_kernel_gated_delta_net;
    case FERRY_OP_LIGHTNING_INDEXER: return &ferry_kernel_lightning_indexer;
    case FERRY_OP_DSV4_HC_COMB: return &ferry_kernel_dsv4_hc_comb;
    case FERRY_OP_DSV4_HC_PRE: return &ferry_kernel_dsv4_hc_pre;
    case FERRY_OP_DSV4_HC_POST: return &ferry_kernel_dsv4_hc_post;
    default: return NULL;
    }
}
