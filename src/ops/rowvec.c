/* The baseline build of the row kernels and the choice of build per call
 * (see rowvec.h). */
#define VEC_LANES 4
#define ROWVEC(name) rowvec_##name##_base
#include "rowvec.h"
#include "rowvec_impl.h"
#include "simd.h"

/* The build of kernel `name` for the current SIMD level. */
#define ROWVEC_PICK(name)                                                     \
    (ferry_simd_level() == FERRY_SIMD_AVX512 ? rowvec_##name##_avx512        \
     : ferry_simd_level() == FERRY_SIMD_AVX2 ? rowvec_##name##_avx2          \
                                             : rowvec_##name##_base)

void rowvec_scale(float *y, const float *x, int64_t n, float s) { ROWVEC_PICK(scale)(y, x, n, s); }

void rowvec_scale_add(float *y, const float *x, const float *m, int64_t n, float scale, float slope) {
    ROWVEC_PICK(scale_add)(y, x, m, n, scale, slope);
}

float rowvec_max(const float *x, int64_t n) { return ROWVEC_PICK(max)(x, n); }

double rowvec_exp_sum(float *y, const float *x, int64_t n, float max) {
    return ROWVEC_PICK(exp_sum)(y, x, n, max);
}

double rowvec_sub_sumsq(float *y, const float *x, int64_t n, float mean) {
    return ROWVEC_PICK(sub_sumsq)(y, x, n, mean);
}

void rowvec_rope_neox(float *y, const float *x, const float *c, const float *s, int64_t npairs,
                      int64_t off) {
    ROWVEC_PICK(rope_neox)(y, x, c, s, npairs, off);
}

void rowvec_rope_adjacent(float *y, const float *x, const float *cc, const float *ss, int64_t n) {
    ROWVEC_PICK(rope_adjacent)(y, x, cc, ss, n);
}
