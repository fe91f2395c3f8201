/* Matrix x matrix tiles for MUL_MAT and MUL_MAT_ID with many activation
 * columns (docs/ops.md, "The GEMM path").
 *
 * A tile computes rows x cols outputs at once from `rows` weight rows and
 * `cols` prepared activation rows (vecdot.h layouts), reading each weight
 * block once for all the columns and each activation block once for all
 * the rows. Every output is bit for bit what the dot product kernel of the
 * same type and SIMD level (ferry_vec_dot_get) gives for that pair, so a
 * caller may mix tiles and single dot products freely: where an element
 * falls (a tile, an edge, another thread's share) never changes it. */
#ifndef FERRY_GEMM_H
#define FERRY_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/types.h"
#include "simd.h"

/* out[i * cols + j] = dot(x[i], y[j]) over n elements, for a rows x cols tile. */
typedef void (*ferry_gemm_fn)(int64_t n, const void *const *x, const void *const *y, float *out);

/* Bounds on every tile (gemm.c): rows and columns each, and elements. */
#define FERRY_GEMM_MAX_SIDE 8
#define FERRY_GEMM_MAX_TILE 32

struct ferry_gemm {
    ferry_gemm_fn tile;
    int rows, cols;
};

/* The tile kernel for weight type t at a SIMD level; false when there is
 * none (the dot products are then the only path). */
bool ferry_gemm_get(enum ferry_type t, enum ferry_simd_level level, struct ferry_gemm *out);

/* ---- AVX2 tiles (vecdot_avx2.c, 2 x 4); call only at FERRY_SIMD_AVX2 or above */
void ferry_gemm_q4_0_avx2(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q8_0_avx2(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_iq4_nl_avx2(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_mxfp4_avx2(int64_t n, const void *const *x, const void *const *y, float *out);
/* (gemm_k_avx2.c, 2 x 4) */
void ferry_gemm_q4_K_avx2(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q6_K_avx2(int64_t n, const void *const *x, const void *const *y, float *out);

/* ---- AVX-512 tiles (vecdot_avx512.c, 4 x 6); the _vnni ones need AVX512_VNNI */
void ferry_gemm_q4_0_avx512(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q8_0_avx512(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q4_0_avx512_vnni(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q8_0_avx512_vnni(int64_t n, const void *const *x, const void *const *y, float *out);
/* (gemm_k_avx512.c: Q4_K 2 x 8, Q6_K 4 x 8), reproducing the AVX2 dot
 * products, the K-quants' only SIMD ones */
void ferry_gemm_q4_K_avx512(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q6_K_avx512(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q4_K_avx512_vnni(int64_t n, const void *const *x, const void *const *y, float *out);
void ferry_gemm_q6_K_avx512_vnni(int64_t n, const void *const *x, const void *const *y, float *out);

#endif
