/* Contiguous f32 row kernels of RMS_NORM / NORM, SOFT_MAX and ROPE.
 *
 * Each entry point runs the widest build the CPU allows (ferry_simd_level):
 * baseline x86-64 (rowvec.c), AVX2 (rowvec_avx2.c) or AVX-512
 * (rowvec_avx512.c). All three are the same source (rowvec_impl.h), and give
 * bit-identical results, so a row's result depends neither on the SIMD level
 * nor on the thread count. Data needs no alignment beyond the element's. y
 * may be x (in place) everywhere; other overlaps give unspecified values
 * (but every access stays within the n elements of each argument). */
#ifndef FERRY_OPS_ROWVEC_H
#define FERRY_OPS_ROWVEC_H

#include <stdint.h>

/* y = x*s */
void rowvec_scale(float *y, const float *x, int64_t n, float s);
/* y = x*scale + slope*m */
void rowvec_scale_add(float *y, const float *x, const float *m, int64_t n, float scale, float slope);
/* Running MAX(max, x[i]) from -inf (the order only matters for NaN and
 * signed zeros). */
float rowvec_max(const float *x, int64_t n);
/* y = exp(x - max); returns the sum of y in double (blocks of 16 summed in
 * f32 as ggml's AVX-512 build does, then the leftovers one by one). */
double rowvec_exp_sum(float *y, const float *x, int64_t n, float max);
/* y = x - mean; returns the sum of y*y grouped like rowvec_exp_sum. */
double rowvec_sub_sumsq(float *y, const float *x, int64_t n, float mean);
/* ROPE rotation of npairs pairs (x[j], x[j+off]) by (c[j], s[j]):
 * (a*c - b*s, a*s + b*c). off >= npairs. */
void rowvec_rope_neox(float *y, const float *x, const float *c, const float *s, int64_t npairs,
                      int64_t off);
/* ROPE rotation of adjacent pairs (x[2j], x[2j+1]) for n (even) elements,
 * with cc = (c0,c0,c1,c1,...) and ss = (-s0,s0,-s1,s1,...). */
void rowvec_rope_adjacent(float *y, const float *x, const float *cc, const float *ss, int64_t n);

/* The per-level builds behind the entry points. */
#define ROWVEC_DECLARE(sfx)                                                                      \
    void rowvec_scale_##sfx(float *y, const float *x, int64_t n, float s);                      \
    void rowvec_scale_add_##sfx(float *y, const float *x, const float *m, int64_t n, float scale, \
                                float slope);                                                   \
    float rowvec_max_##sfx(const float *x, int64_t n);                                          \
    double rowvec_exp_sum_##sfx(float *y, const float *x, int64_t n, float max);                \
    double rowvec_sub_sumsq_##sfx(float *y, const float *x, int64_t n, float mean);             \
    void rowvec_rope_neox_##sfx(float *y, const float *x, const float *c, const float *s,       \
                                int64_t npairs, int64_t off);                                   \
    void rowvec_rope_adjacent_##sfx(float *y, const float *x, const float *cc, const float *ss, \
                                    int64_t n);
ROWVEC_DECLARE(base)
ROWVEC_DECLARE(avx2)
ROWVEC_DECLARE(avx512)
#undef ROWVEC_DECLARE

#endif
