/* Which GEMM tile goes with which weight type and SIMD level (gemm.h). The
 * choice mirrors ferry_vec_dot_get's exactly (VNNI where the dot product
 * uses it), since a tile must reproduce that dot product bit for bit. */
#include "gemm.h"

#include "vecdot.h"

static bool tile_avx2(enum ferry_type t, struct ferry_gemm *out) {
    switch (t) {
    case FERRY_TYPE_Q4_0: out->tile = ferry_gemm_q4_0_avx2; break;
    case FERRY_TYPE_Q8_0: out->tile = ferry_gemm_q8_0_avx2; break;
    case FERRY_TYPE_IQ4_NL: out->tile = ferry_gemm_iq4_nl_avx2; break;
    case FERRY_TYPE_MXFP4: out->tile = ferry_gemm_mxfp4_avx2; break;
    case FERRY_TYPE_Q4_K: out->tile = ferry_gemm_q4_K_avx2; break;
    case FERRY_TYPE_Q6_K: out->tile = ferry_gemm_q6_K_avx2; break;
    default: return false;
    }
    out->rows = 2;
    out->cols = 4;
    return true;
}

/* The K-quants' tiles here reproduce their AVX2 dot products, which is
 * what ferry_vec_dot_get gives them at this level too. */
static bool tile_avx512(enum ferry_type t, struct ferry_gemm *out) {
    const bool vnni = ferry_vec_dot_vnni();
    out->rows = 4;
    out->cols = 6;
    switch (t) {
    case FERRY_TYPE_Q4_0: out->tile = vnni ? ferry_gemm_q4_0_avx512_vnni : ferry_gemm_q4_0_avx512; break;
    case FERRY_TYPE_Q8_0: out->tile = vnni ? ferry_gemm_q8_0_avx512_vnni : ferry_gemm_q8_0_avx512; break;
    case FERRY_TYPE_Q4_K:
        out->tile = vnni ? ferry_gemm_q4_K_avx512_vnni : ferry_gemm_q4_K_avx512;
        out->rows = 2;
        out->cols = 8;
        break;
    case FERRY_TYPE_Q6_K:
        out->tile = vnni ? ferry_gemm_q6_K_avx512_vnni : ferry_gemm_q6_K_avx512;
        out->cols = 8;
        break;
    default: out->rows = out->cols = 0; return false;
    }
    return true;
}

bool ferry_gemm_get(enum ferry_type t, enum ferry_simd_level level, struct ferry_gemm *out) {
    out->tile = NULL;
    out->rows = out->cols = 0;
    /* the level's dot product comes from the highest level that has one */
    if (level >= FERRY_SIMD_AVX512 && tile_avx512(t, out)) return true;
    if (level >= FERRY_SIMD_AVX2) return tile_avx2(t, out);
    return false;
}
