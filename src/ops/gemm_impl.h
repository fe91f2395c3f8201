/* Register-blocked tiles for MUL_MAT with many columns (gemm.h), written
 * once over the vector width like vecdot_impl.h and included at the end of
 * vecdot_avx2.c and vecdot_avx512.c, after their width layer and format
 * hooks: a tile uses exactly the hooks the dot product uses.
 *
 * A tile is GM_RM weight rows x GM_RN activation columns. Per step the
 * weights of each row are unpacked once (vd_q8_weights) and multiplied
 * into every column's bytes (vd_q8_mul), so a weight block is loaded and
 * unpacked once for GM_RN columns and an activation block once for GM_RM
 * rows, with all GM_RM x GM_RN accumulators in registers.
 *
 * Every element comes out bit for bit as the dot product kernel of the
 * same file makes it (vd_q8_dot): the same i32 products, the same scale
 * d_x*d_y per lane, the same four accumulators each fed its steps in block
 * order, the same correction chain, tail and final sum (vd_q8_finish).
 * The dot product rotates its steps over four accumulators, which would
 * need four registers per element here; instead the tile makes four passes
 * over each chunk of K, pass p doing only the steps that feed accumulator
 * p, with the other three parked in memory. Chunks of GM_KC groups keep a
 * tile's rows and columns in L1 across the passes. */
#ifndef VECDOT
#error "include gemm_impl.h after vecdot_impl.h"
#endif

/* Groups of eight blocks per K chunk: 4 rows and 6 columns of Q8_0 are
 * 8 * 8 * (4 * 34 + 6 * 40) bytes, 24 KiB, within a 32 KiB L1. */
#define GM_KC 8
#define GM_STEPS (8 / VD_BLOCKS)

static inline __attribute__((always_inline)) void gm_q8_tile(enum vd_format f, bool vnni, int64_t n,
                                                             const void *const *vx, const void *const *vy,
                                                             float *out) {
    const size_t bs = vd_block_bytes(f);
    const int64_t nb = n / 32, ng = nb / 8;
    const float bias = vd_bias(f, vnni);
    const vd_int table = vd_q8_table(f);
    const uint8_t *x[GM_RM];
    struct ferry_q8_row y[GM_RN];
#pragma GCC unroll 8
    for (int i = 0; i < GM_RM; i++) x[i] = vx[i];
#pragma GCC unroll 8
    for (int j = 0; j < GM_RN; j++) y[j] = ferry_q8_row(vy[j], n);
    vd_f32 acc[GM_RN][GM_RM][4];
    __m256 corr[GM_RN][GM_RM];
#pragma GCC unroll 8
    for (int j = 0; j < GM_RN; j++)
#pragma GCC unroll 8
        for (int i = 0; i < GM_RM; i++) {
            acc[j][i][0] = acc[j][i][1] = acc[j][i][2] = acc[j][i][3] = vd_zero();
            corr[j][i] = _mm256_setzero_ps();
        }
    float dx[GM_RM][GM_KC * 8] __attribute__((aligned(64)));
    for (int64_t g0 = 0; g0 < ng; g0 += GM_KC) {
        const int64_t gn = ng - g0 < GM_KC ? ng - g0 : GM_KC;
        /* the rows' block scales for this chunk, and the correction chains */
        for (int64_t g = 0; g < gn; g++)
#pragma GCC unroll 8
            for (int i = 0; i < GM_RM; i++) {
                const __m256 d = vd_q8_scales8(f, x[i] + (size_t)(8 * (g0 + g)) * bs);
                _mm256_store_ps(dx[i] + 8 * g, d);
                if (bias != 0.0f)
#pragma GCC unroll 8
                    for (int j = 0; j < GM_RN; j++)
                        corr[j][i] = _mm256_fmadd_ps(d, _mm256_loadu_ps(y[j].s + 8 * (g0 + g)), corr[j][i]);
            }
        for (int p = 0; p < 4; p++) {
            vd_f32 a[GM_RN][GM_RM];
#pragma GCC unroll 8
            for (int j = 0; j < GM_RN; j++)
#pragma GCC unroll 8
                for (int i = 0; i < GM_RM; i++) a[j][i] = acc[j][i][p];
            for (int64_t g = 0; g < gn; g++) {
#pragma GCC unroll 2
                for (int s = p; s < GM_STEPS; s += 4) {
                    const int64_t blk = 8 * (g0 + g) + VD_BLOCKS * s;
                    vd_int w[GM_RM];
                    vd_f32 sx[GM_RM];
#pragma GCC unroll 8
                    for (int i = 0; i < GM_RM; i++) {
                        w[i] = vd_q8_weights(f, vnni, x[i] + (size_t)blk * bs, table);
                        sx[i] = vd_step_scale(dx[i] + 8 * g, s);
                    }
#pragma GCC unroll 8
                    for (int j = 0; j < GM_RN; j++) {
                        const vd_f32 sy = vd_step_scale(y[j].d + 8 * (g0 + g), s);
                        const int8_t *yq = y[j].q + 32 * blk;
#pragma GCC unroll 8
                        for (int i = 0; i < GM_RM; i++)
                            a[j][i] = vd_fmadd(vd_mul(sx[i], sy), vd_cvt_i32(vd_q8_mul(f, vnni, w[i], yq)), a[j][i]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int j = 0; j < GM_RN; j++)
#pragma GCC unroll 8
                for (int i = 0; i < GM_RM; i++) acc[j][i][p] = a[j][i];
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < GM_RM; i++)
#pragma GCC unroll 8
        for (int j = 0; j < GM_RN; j++)
            out[i * GM_RN + j] = vd_q8_finish(acc[j][i], corr[j][i], bias, vd_q8_tail(f, vnni, x[i], y[j], 8 * ng, nb, table));
}

#undef GM_STEPS
#undef GM_KC
