/* The start-up self-check of the dot-product kernels: one known dot product
 * per weight type and SIMD level, against a reference computed in double
 * from the dequantized operands, so that a build whose kernels compute wrong
 * numbers (a miscompiled SIMD path, an optimiser that changed what a loop
 * means) refuses to run instead of serving them.
 *
 * Where a type has a GEMM tile at the level (gemm.h), the tile must give
 * that same dot product bit for bit in every element.
 *
 * A row length is chosen per type so that every kernel runs both its
 * unrolled body and its tail (11 blocks of 32: an eight-block body and a
 * three-block tail). The whole check costs well under a millisecond. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/types.h"
#include "gemm.h"
#include "vecdot.h"

/* xorshift64*: a fixed sequence, so a failure is the same on every run. */
static uint64_t next_u64(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

static float next_unit(uint64_t *s) { return (float)((double)(next_u64(s) >> 11) / 4503599627370496.0 - 1.0); }

static int64_t check_length(enum ferry_type t) {
    int64_t b = ferry_blck_size(t), vb = ferry_blck_size(ferry_vec_dot_type(t));
    if (vb > b) b = vb;
    return b <= 32 ? 11 * 32 : 3 * b;
}

static bool all_finite(const float *v, int64_t n, float bound) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(v[i]) <= bound)) return false;
    return true;
}

/* A weight row of type t: the quantized pattern where ferry can quantize to
 * t, else random blocks (every bit pattern, scales included), redrawn until
 * the row dequantizes to finite, bounded values. */
static bool make_weights(enum ferry_type t, int64_t n, uint64_t *seed, void *row, size_t bytes, float *wf) {
    const struct ferry_type_traits *tt = ferry_type_traits(t);
    if (!tt || !tt->to_float) return false;
    if (tt->from_float) {
        for (int64_t i = 0; i < n; i++) wf[i] = next_unit(seed);
        tt->from_float(wf, row, n);
        tt->to_float(row, wf, n);
        return true;
    }
    for (int attempt = 0; attempt < 256; attempt++) {
        uint8_t *p = row;
        for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)(next_u64(seed) >> 56);
        tt->to_float(row, wf, n);
        if (all_finite(wf, n, 1e6f)) return true;
    }
    return false;
}

/* The values a prepared activation row stands for (layouts in vecdot.h). */
static void prepared_values(enum ferry_type vdt, const void *y, int64_t n, float *out) {
    if (vdt == FERRY_TYPE_Q8_0 || vdt == FERRY_TYPE_Q8_1) {
        const struct ferry_q8_row r = ferry_q8_row(y, n);
        for (int64_t i = 0; i < n; i++) out[i] = (float)r.q[i] * r.d[i / 32];
    } else if (vdt == FERRY_TYPE_Q8_K) {
        ferry_type_traits(FERRY_TYPE_Q8_K)->to_float(y, out, n);
    } else {
        memcpy(out, y, (size_t)n * sizeof(float));
    }
}

int ferry_vec_dot_check(enum ferry_type t, enum ferry_simd_level level, const struct ferry_vec_dot *vd,
                        char *why, size_t why_size) {
    const struct ferry_vec_dot *k = vd;
    struct ferry_vec_dot portable;
    if (!ferry_vec_dot_get(t, FERRY_SIMD_SCALAR, &portable)) {
        snprintf(why, why_size, "%s has no dot product", ferry_type_name(t));
        return -1;
    }
    const int64_t n = check_length(t);
    const size_t wbytes = ferry_row_size(t, n), ybytes = ferry_vec_dot_row_size(t, n);
    float *x = malloc((size_t)n * sizeof(float) * 3);
    void *w = aligned_alloc(64, (wbytes + 63) & ~(size_t)63);
    void *y = aligned_alloc(64, ybytes);
    int rc = -1;
    if (!x || !w || !y) {
        snprintf(why, why_size, "out of memory");
        goto out;
    }
    float *wf = x + n, *yf = x + 2 * n;
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)t;
    if (!make_weights(t, n, &seed, w, wbytes, wf)) {
        snprintf(why, why_size, "%s: no test row could be made", ferry_type_name(t));
        goto out;
    }
    for (int64_t i = 0; i < n; i++) x[i] = next_unit(&seed);
    memset(y, 0, ybytes);
    if (k->from_f32) k->from_f32(x, y, n);
    else memcpy(y, x, (size_t)n * sizeof(float));

    /* the activations as the kernel set prepared them: close to x */
    prepared_values(k->vec_dot_type, y, n, yf);
    for (int64_t i = 0; i < n; i++) {
        if (!(fabsf(yf[i] - x[i]) <= 0.02f)) {
            snprintf(why, why_size, "%s activations prepared at %s: element %lld is %.6g, expected %.6g",
                     ferry_type_name(t), ferry_simd_level_name(level), (long long)i, (double)yf[i], (double)x[i]);
            goto out;
        }
    }
    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)wf[i] * yf[i];
        mag += fabs((double)wf[i] * yf[i]);
    }
    float s = NAN, s_portable = NAN;
    k->dot(n, &s, w, y);
    portable.dot(n, &s_portable, w, y);
    /* loose against the exact sum (ggml's blocks round partial sums, e.g.
     * Q8_1's f16 block sums); tight against the portable kernel */
    if (!(fabs((double)s - ref) <= 4e-3 * mag + 1e-30)) {
        snprintf(why, why_size, "%s dot product at %s: %.9g, expected %.9g (n=%lld)", ferry_type_name(t),
                 ferry_simd_level_name(level), (double)s, ref, (long long)n);
        goto out;
    }
    if (!(fabs((double)s - s_portable) <= 1e-5 * mag + 1e-30)) {
        snprintf(why, why_size, "%s dot product at %s: %.9g, the portable kernel gives %.9g (n=%lld)",
                 ferry_type_name(t), ferry_simd_level_name(level), (double)s, (double)s_portable, (long long)n);
        goto out;
    }
    /* the level's GEMM tile, if any: every element exactly the level's own
     * dot product (which vd may stand in for) */
    struct ferry_gemm g;
    struct ferry_vec_dot own;
    if (ferry_gemm_get(t, level, &g) && ferry_vec_dot_get(t, level, &own)) {
        own.dot(n, &s, w, y);
        const void *xs[FERRY_GEMM_MAX_SIDE], *ys[FERRY_GEMM_MAX_SIDE];
        float tile[FERRY_GEMM_MAX_TILE];
        for (int i = 0; i < FERRY_GEMM_MAX_SIDE; i++) {
            xs[i] = w;
            ys[i] = y;
        }
        g.tile(n, xs, ys, tile);
        for (int i = 0; i < g.rows * g.cols; i++)
            if (memcmp(&tile[i], &s, sizeof s) != 0) {
                snprintf(why, why_size, "%s GEMM tile at %s: element %d is %.9g, the dot product gives %.9g (n=%lld)",
                         ferry_type_name(t), ferry_simd_level_name(level), i, (double)tile[i], (double)s, (long long)n);
                goto out;
            }
    }
    rc = 0;
out:
    free(x);
    free(w);
    free(y);
    return rc;
}

int ferry_vec_dot_self_check(int *n_checked, char *why, size_t why_size) {
    const enum ferry_simd_level top = ferry_simd_level();
    int n = 0;
    for (int t = 0; t < FERRY_TYPE_COUNT; t++) {
        if (ferry_vec_dot_type((enum ferry_type)t) < 0) continue;
        for (int l = FERRY_SIMD_SCALAR; l <= (int)top; l++) {
            struct ferry_vec_dot vd;
            ferry_vec_dot_get((enum ferry_type)t, (enum ferry_simd_level)l, &vd);
            if (ferry_vec_dot_check((enum ferry_type)t, (enum ferry_simd_level)l, &vd, why, why_size) != 0)
                return -1;
            n++;
        }
    }
    if (n_checked) *n_checked = n;
    return 0;
}
