/* The bodies of the row kernels declared in rowvec.h, written once with
 * vec.h's lane-wise vectors. rowvec.c includes this file at the baseline
 * width (4 lanes), rowvec_avx2.c at 8 and rowvec_avx512.c at 16; ROWVEC(name)
 * gives each build its own function names.
 *
 * Why the results are the same bits at every width: every element goes
 * through the same f32 operations (no FMA: the project builds with
 * -ffp-contract=off), and the two sums group their terms in a fixed way
 * that does not depend on the width: blocks of 16 terms reduced in f32 in
 * the order of ggml's AVX-512 horizontal add, each block total added to a
 * double, then the leftover terms added to the double one by one. That is
 * exactly what ggml's AVX-512 build does in SOFT_MAX and NORM. */
#ifndef ROWVEC
#error "define ROWVEC(name) before including rowvec_impl.h"
#endif

#include <math.h>

#include "vec.h"

#define RV_BLOCK 16
#define RV_VECS (RV_BLOCK / VEC_LANES)

/* The 16 terms of one block, summed as _mm512_reduce_add_ps does:
 * halves added lane-wise (16 -> 8 -> 4), then (t0+t2) + (t1+t3). */
static inline float rv_block_sum(const vf v[RV_VECS]) {
    float e[RV_BLOCK];
    memcpy(e, v, sizeof e);
    float t[8], u[4];
    for (int k = 0; k < 8; k++) t[k] = e[k] + e[k + 8];
    for (int k = 0; k < 4; k++) u[k] = t[k] + t[k + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

void ROWVEC(scale)(float *y, const float *x, int64_t n, float s) {
    const vf vs = vf_splat(s);
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES) vf_store(y + i, vf_load(x + i) * vs);
    for (; i < n; i++) y[i] = x[i] * s;
}

void ROWVEC(scale_add)(float *y, const float *x, const float *m, int64_t n, float scale, float slope) {
    const vf vscale = vf_splat(scale), vslope = vf_splat(slope);
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES)
        vf_store(y + i, vf_load(x + i) * vscale + vslope * vf_load(m + i));
    for (; i < n; i++) y[i] = x[i] * scale + slope * m[i];
}

/* MAX(a, b) = a > b ? a : b lane by lane, from -inf. */
float ROWVEC(max)(const float *x, int64_t n) {
    vf acc = vf_splat(-INFINITY);
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES) {
        vf v = vf_load(x + i);
        acc = vf_select(acc > v, acc, v);
    }
    float m = -INFINITY;
    for (int k = 0; k < VEC_LANES; k++) m = m > acc[k] ? m : acc[k];
    for (; i < n; i++) m = m > x[i] ? m : x[i];
    return m;
}

double ROWVEC(exp_sum)(float *y, const float *x, int64_t n, float max) {
    const vf vmax = vf_splat(max);
    double sum = 0.0;
    int64_t i = 0;
    for (; i + RV_BLOCK <= n; i += RV_BLOCK) {
        vf e[RV_VECS];
        for (int k = 0; k < RV_VECS; k++) {
            e[k] = vf_exp(vf_load(x + i + k * VEC_LANES) - vmax);
            vf_store(y + i + k * VEC_LANES, e[k]);
        }
        sum += (double)rv_block_sum(e);
    }
    for (; i < n; i += VEC_LANES) {
        int64_t len = n - i < VEC_LANES ? n - i : VEC_LANES;
        vf e = vf_exp(vf_load_part(x + i, len) - vmax);
        vf_store_part(y + i, e, len);
        for (int64_t k = 0; k < len; k++) sum += (double)e[k];
    }
    return sum;
}

double ROWVEC(sub_sumsq)(float *y, const float *x, int64_t n, float mean) {
    const vf vmean = vf_splat(mean);
    double sum = 0.0;
    int64_t i = 0;
    for (; i + RV_BLOCK <= n; i += RV_BLOCK) {
        vf sq[RV_VECS];
        for (int k = 0; k < RV_VECS; k++) {
            vf d = vf_load(x + i + k * VEC_LANES) - vmean;
            vf_store(y + i + k * VEC_LANES, d);
            sq[k] = d * d;
        }
        sum += (double)rv_block_sum(sq);
    }
    for (; i < n; i++) {
        float d = x[i] - mean;
        y[i] = d;
        sum += (double)(d * d);
    }
    return sum;
}

void ROWVEC(rope_neox)(float *y, const float *x, const float *c, const float *s, int64_t npairs,
                       int64_t off) {
    int64_t j = 0;
    for (; j + VEC_LANES <= npairs; j += VEC_LANES) {
        vf a = vf_load(x + j), b = vf_load(x + j + off);
        vf vc = vf_load(c + j), vs = vf_load(s + j);
        vf_store(y + j, a * vc - b * vs);
        vf_store(y + j + off, a * vs + b * vc);
    }
    for (; j < npairs; j++) {
        float a = x[j], b = x[j + off];
        y[j] = a * c[j] - b * s[j];
        y[j + off] = a * s[j] + b * c[j];
    }
}

/* Swaps neighbouring lanes: (x0,x1,x2,x3,...) -> (x1,x0,x3,x2,...).
 * __builtin_shufflevector needs constant indices, one list per width. */
#if VEC_LANES == 4
#define VF_SWAP_PAIRS(v) __builtin_shufflevector(v, v, 1, 0, 3, 2)
#elif VEC_LANES == 8
#define VF_SWAP_PAIRS(v) __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6)
#elif VEC_LANES == 16
#define VF_SWAP_PAIRS(v) __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#else
#error "unsupported VEC_LANES"
#endif

/* y[i] = x[i]*cc[i] + x[i^1]*ss[i]: with cc = (c,c) and ss = (-s,s) per
 * pair this is (a*c - b*s, b*c + a*s), the same bits as the textbook form
 * (a + -p is a - p, and + commutes). */
void ROWVEC(rope_adjacent)(float *y, const float *x, const float *cc, const float *ss, int64_t n) {
    int64_t i = 0;
    for (; i + VEC_LANES <= n; i += VEC_LANES) {
        vf v = vf_load(x + i);
        vf w = VF_SWAP_PAIRS(v);
        vf_store(y + i, v * vf_load(cc + i) + w * vf_load(ss + i));
    }
    for (; i + 1 < n; i += 2) {
        float a = x[i], b = x[i + 1];
        y[i] = a * cc[i] + b * ss[i];
        y[i + 1] = b * cc[i + 1] + a * ss[i + 1];
    }
}

#undef RV_BLOCK
#undef RV_VECS
