/* FLASH_ATTN_EXT (docs/ops.md B.19): softmax(scale * K.q + mask) . V for every
 * query row.
 *
 * q [DK, n_q, H, B] f32; k [DK, n_kv, Hk, Bk]; v [DV, n_kv, Hv, Bv];
 * optional f16 mask [>= n_kv, >= n_q, M2, M3] and f32 sinks [H].
 * dst [DV, H, n_q, B]: the result of (iq1, h, b) is the row dst[:, h, iq1, b].
 *
 * q is converted to K's vec_dot type and each score is the same dot product
 * MUL_MAT uses. Where ggml runs an online softmax with an f16 accumulator
 * for f16 V, this computes all scores first, then exact softmax weights,
 * then the weighted sum of V rows in f32: the same math, more accurate, and
 * far within the 5e-4 tolerance (docs/ops.md B.19 measures ~1e-6 for any f32
 * accumulation). Threads split the output rows, heads fastest, and compute
 * the heads of a GQA group together so each K/V row is read once for all
 * of them. Each row is computed by one thread in one fixed order, so
 * results do not depend on the thread count. */
#include <math.h>

#include "common.h"
#include "rowvec.h"
#include "simd.h"
#include "vecdot.h"

#define PREC_DEFAULT 0
#define PREC_F32 10

static size_t align64(size_t n) { return n > SIZE_MAX - 63 ? SIZE_MAX : (n + 63) & ~(size_t)63; }

static size_t mul_sat(size_t a, size_t b) {
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

static size_t add_sat(size_t a, size_t b) {
    size_t r;
    return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

/* Is b a positive divisor of a? */
static bool divides(int64_t b, int64_t a) { return b > 0 && a % b == 0; }

static bool v_type_ok(enum ferry_type t) {
    const struct ferry_type_traits *tr = ferry_type_traits(t);
    return tr && tr->to_float && (t == FERRY_TYPE_F32 || t == FERRY_TYPE_F16 || t == FERRY_TYPE_BF16 ||
                                  tr->is_quantized);
}

static int check_mask(const struct ferry_tensor *node, const struct ferry_tensor *mask,
                      struct ferry_error *err) {
    const struct ferry_tensor *q = node->src[0], *k = node->src[1];
    if (mask->type != FERRY_TYPE_F16)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "FLASH_ATTN_EXT: mask must be f16");
    if (mask->ne[0] < k->ne[1] || mask->ne[1] < q->ne[1] || !divides(mask->ne[2], q->ne[2]) ||
        !divides(mask->ne[3], q->ne[3]))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "FLASH_ATTN_EXT: mask [%lld,%lld,%lld,%lld] does not cover n_kv=%lld, n_q=%lld, "
                          "or does not divide heads/batch",
                          (long long)mask->ne[0], (long long)mask->ne[1], (long long)mask->ne[2],
                          (long long)mask->ne[3], (long long)k->ne[1], (long long)q->ne[1]);
    return check_rows_contiguous(node, mask, "mask", err);
}

static int check_sinks(const struct ferry_tensor *node, const struct ferry_tensor *sinks,
                       struct ferry_error *err) {
    if (sinks->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "FLASH_ATTN_EXT: sinks must be f32");
    if (sinks->ne[0] < node->src[0]->ne[2])
        return ferry_fail(err, FERRY_ERR_INVALID, "FLASH_ATTN_EXT: %lld sinks for %lld heads",
                          (long long)sinks->ne[0], (long long)node->src[0]->ne[2]);
    return check_rows_contiguous(node, sinks, "sinks", err);
}

static int fa_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *v = node->src[2];
    if (node->type != FERRY_TYPE_F32 || q->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "FLASH_ATTN_EXT: q and output must be f32");
    if (ferry_vec_dot_type(k->type) < 0)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "FLASH_ATTN_EXT: K type %s is not supported",
                          ferry_type_name(k->type));
    if (!v_type_ok(v->type))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "FLASH_ATTN_EXT: V type %s is not supported",
                          ferry_type_name(v->type));
    const int32_t prec = node->op_params[3];
    if (prec != PREC_DEFAULT && prec != PREC_F32)
        return ferry_fail(err, FERRY_ERR_INVALID, "FLASH_ATTN_EXT: unknown precision %d", (int)prec);
    if (q->ne[0] != k->ne[0] || k->ne[1] != v->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "FLASH_ATTN_EXT: q/k head sizes (%lld, %lld) or k/v lengths (%lld, %lld) differ",
                          (long long)q->ne[0], (long long)k->ne[0], (long long)k->ne[1], (long long)v->ne[1]);
    if (!divides(k->ne[2], q->ne[2]) || !divides(v->ne[2], q->ne[2]) || !divides(k->ne[3], q->ne[3]) ||
        !divides(v->ne[3], q->ne[3]))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "FLASH_ATTN_EXT: K/V heads or batches do not divide q's (%lld, %lld)",
                          (long long)q->ne[2], (long long)q->ne[3]);
    const struct ferry_tensor *parts[] = { q, k, v };
    const char *names[] = { "q", "k", "v" };
    for (int i = 0; i < 3 && !rc; i++) rc = check_rows_contiguous(node, parts[i], names[i], err);
    if (!rc && node->src[3]) rc = check_mask(node, node->src[3], err);
    if (!rc && node->src[4]) rc = check_sinks(node, node->src[4], err);
    if (rc) return rc;
    return check_dst_shape(node, v->ne[0], q->ne[2], q->ne[1], q->ne[3], err);
}

/* Query heads that share a KV head are computed together (GQA), so each K
 * and V row is read once for all of them: at most this many at a time. */
#define FA_GROUP 8

/* Per-thread scratch, for FA_GROUP heads: q in K's vec_dot layout, the
 * scores of every KV position, the V accumulators; plus one V row in f32. */
struct fa_scratch_layout {
    size_t q_bytes, score_bytes, acc_bytes, vrow_bytes, pos_bytes, per_thread;
};

static struct fa_scratch_layout fa_layout(const struct ferry_tensor *node) {
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *v = node->src[2];
    struct fa_scratch_layout l;
    l.q_bytes = ferry_vec_dot_row_size(k->type, q->ne[0]);
    l.score_bytes = align64(mul_sat((size_t)k->ne[1], sizeof(float)));
    l.acc_bytes = align64(mul_sat((size_t)v->ne[0], sizeof(float)));
    l.vrow_bytes = l.acc_bytes;
    l.pos_bytes = align64(mul_sat((size_t)k->ne[1], sizeof(int32_t)));
    /* q, scores, a widened mask row, accumulator */
    const size_t per_head = add_sat(add_sat(l.q_bytes, mul_sat(l.score_bytes, 2)), l.acc_bytes);
    l.per_thread = add_sat(add_sat(mul_sat(per_head, FA_GROUP), l.vrow_bytes), l.pos_bytes);
    if (l.per_thread == 0) l.per_thread = 64;
    return l;
}

static size_t fa_work_size(const struct ferry_tensor *node, int nth) {
    return mul_sat(fa_layout(node).per_thread, (size_t)nth);
}

/* ALiBi slope of head h, as SOFT_MAX computes it with n_head = H (docs/ops.md B.16). */
static float alibi_slope(float max_bias, int64_t h, int64_t n_head) {
    if (!(max_bias > 0.0f)) return 1.0f;
    int64_t n_head_log2 = 1;
    while (n_head_log2 * 2 <= n_head) n_head_log2 *= 2;
    const float m0 = powf(2.0f, -max_bias / (float)n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / (float)n_head_log2);
    return h < n_head_log2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n_head_log2) + 1));
}

static void vec_mad_f32(int64_t n, float *y, const float *x, float v) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i] * v;
}

static void widen_f16_simd(const void *x, float *y, int64_t n) { ferry_widen_f16_avx2(x, y, n); }

/* Everything a query row needs that is the same for every row. */
struct fa_job {
    const struct ferry_tensor *q, *k, *v, *mask, *sinks;
    struct ferry_tensor *dst;
    struct ferry_vec_dot vd;
    ferry_to_float_fn v_to_float; /* V row -> f32 */
    ferry_to_float_fn widen_mask; /* f16 -> f32 */
    bool simd;
    bool f16_kv; /* f16 K and V with AVX2 or better: the grouped kernels */
    void (*scores_f16)(int64_t n, const uint16_t *k, const float *const *q, int ng, float *out);
    void (*accumulate_f16)(int64_t dv, const int32_t *pos, int64_t npos, const char *v, size_t nbv,
                           const float *const *w, int ng, float *const *acc);
    float scale, max_bias, softcap;
    struct fa_scratch_layout l;
};

/* One query head of a group: its converted q, scores, accumulator. */
struct fa_head {
    int64_t h;
    const void *q;
    const uint16_t *mask_row; /* NULL: no mask */
    const float *mask;        /* mask_row widened to f32 (shared by heads reading the same row) */
    float slope;
    float *score, *acc;
    float sum;
};

/* Is position c hidden from every head of the group? */
static bool all_hidden(const struct fa_head *hs, int g, int64_t c) {
    for (int i = 0; i < g; i++)
        if (!hs[i].mask || hs[i].slope * hs[i].mask[c] != -INFINITY) return false;
    return true;
}

/* Scores of every KV position for each head (-inf where the mask hides it),
 * reading each K row once for the whole group: first the raw dot products
 * (0 where every head is masked), then per head, in vector passes,
 * s = raw*scale (+ softcap) + slope*mask, which is -inf exactly where the
 * mask term is, as ggml's skip of those positions has it. */
static void fa_scores(const struct fa_job *j, struct fa_head *hs, int g, const char *k_base) {
    const int64_t n_kv = j->k->ne[1], dk = j->q->ne[0], nbk = (int64_t)j->k->nb[1];
    const float *qs[FA_GROUP];
    for (int i = 0; i < g; i++) qs[i] = hs[i].q;
    for (int64_t c = 0; c < n_kv; c++) {
        const char *krow = k_base + c * nbk;
        if (all_hidden(hs, g, c)) {
            for (int i = 0; i < g; i++) hs[i].score[c] = 0.0f;
            continue;
        }
        float dots[FA_GROUP];
        if (j->f16_kv) j->scores_f16(dk, (const uint16_t *)(const void *)krow, qs, g, dots);
        else
            for (int i = 0; i < g; i++) j->vd.dot(dk, &dots[i], krow, hs[i].q);
        for (int i = 0; i < g; i++) hs[i].score[c] = dots[i];
    }
    for (int i = 0; i < g; i++) {
        float *sc = hs[i].score;
        if (j->softcap != 0.0f) {
            for (int64_t c = 0; c < n_kv; c++) sc[c] = j->softcap * tanhf(sc[c] * j->scale);
            if (hs[i].mask) rowvec_scale_add(sc, sc, hs[i].mask, n_kv, 1.0f, hs[i].slope);
        } else if (hs[i].mask) {
            rowvec_scale_add(sc, sc, hs[i].mask, n_kv, j->scale, hs[i].slope);
        } else {
            rowvec_scale(sc, sc, n_kv, j->scale);
        }
        /* a hidden position stays hidden even if K holds inf/NaN there
         * (unused cache cells): ggml never reads it */
        if (hs[i].mask)
            for (int64_t c = 0; c < n_kv; c++)
                if (hs[i].slope * hs[i].mask[c] == -INFINITY) sc[c] = -INFINITY;
    }
}

/* Scores -> softmax weights in place (exp(s - max)); returns the sum of the
 * weights, with the sink's share when there is one. */
static float fa_weights(const struct fa_job *j, struct fa_head *hd) {
    const int64_t n_kv = j->k->ne[1];
    float m = rowvec_max(hd->score, n_kv);
    const float sink = j->sinks ? ((const float *)j->sinks->data)[hd->h] : -INFINITY;
    if (sink > m) m = sink;
    if (m == -INFINITY) { /* nothing visible and no sink: the output is 0 */
        memset(hd->score, 0, (size_t)n_kv * sizeof(float));
        return 0.0f;
    }
    double sum = rowvec_exp_sum(hd->score, hd->score, n_kv, m);
    if (j->sinks) sum += (double)expf(sink - m);
    return (float)sum;
}

/* acc_i += w_i[c] * V row c, for each head; V rows converted once. */
static void fa_accumulate(const struct fa_job *j, struct fa_head *hs, int g, const char *v_base, float *vrow,
                          int32_t *pos) {
    const int64_t n_kv = j->k->ne[1], dv = j->v->ne[0], nbv = (int64_t)j->v->nb[1];
    int64_t npos = 0; /* positions some head gives weight: hidden ones cost nothing */
    for (int64_t c = 0; c < n_kv; c++) {
        bool any = false;
        for (int i = 0; i < g; i++) any |= hs[i].score[c] != 0.0f;
        if (any) pos[npos++] = (int32_t)c;
    }
    if (j->f16_kv) {
        const float *w[FA_GROUP];
        float *acc[FA_GROUP];
        for (int i = 0; i < g; i++) {
            w[i] = hs[i].score;
            acc[i] = hs[i].acc;
        }
        j->accumulate_f16(dv, pos, npos, v_base, (size_t)nbv, w, g, acc);
        return;
    }
    for (int64_t t = 0; t < npos; t++) {
        const int64_t c = pos[t];
        const char *vdata = v_base + c * nbv;
        const float *x = (const float *)(const void *)vdata;
        if (j->v->type != FERRY_TYPE_F32) {
            j->v_to_float(vdata, vrow, dv);
            x = vrow;
        }
        for (int i = 0; i < g; i++) {
            const float w = hs[i].score[c];
            if (w == 0.0f) continue;
            if (j->simd) ferry_vec_mad_f32_avx2(dv, hs[i].acc, x, w);
            else vec_mad_f32(dv, hs[i].acc, x, w);
        }
    }
}

/* Heads h0..h0+g-1 (all reading the same KV head) of query iq1, batch b. */
static void fa_group(const struct fa_job *j, int64_t h0, int g, int64_t iq1, int64_t b, char *scratch) {
    const struct ferry_tensor *q = j->q, *k = j->k, *v = j->v, *mask = j->mask;
    const struct fa_scratch_layout *l = &j->l;
    const int64_t n_head = q->ne[2], dv = v->ne[0];
    struct fa_head hs[FA_GROUP];
    char *p = scratch;
    float *vrow = (float *)(void *)p;
    p += l->vrow_bytes;
    int32_t *pos = (int32_t *)(void *)p;
    p += l->pos_bytes;
    for (int i = 0; i < g; i++) {
        struct fa_head *hd = &hs[i];
        hd->h = h0 + i;
        hd->q = tensor_row(q, iq1, hd->h, b); /* f32, as F32 K reads it */
        if (j->vd.from_f32) {
            j->vd.from_f32(hd->q, p, q->ne[0]);
            hd->q = p;
        }
        p += l->q_bytes;
        hd->score = (float *)(void *)p;
        p += l->score_bytes;
        hd->acc = (float *)(void *)p;
        p += l->acc_bytes;
        memset(hd->acc, 0, (size_t)dv * sizeof(float));
        hd->mask_row = mask ? tensor_row(mask, iq1, hd->h % mask->ne[2], b % mask->ne[3]) : NULL;
        hd->mask = NULL;
        for (int o = 0; o < i && hd->mask_row; o++)
            if (hs[o].mask_row == hd->mask_row) hd->mask = hs[o].mask;
        if (hd->mask_row && !hd->mask) {
            j->widen_mask(hd->mask_row, (float *)(void *)p, k->ne[1]);
            hd->mask = (const float *)(void *)p;
        }
        p += l->score_bytes;
        hd->slope = alibi_slope(j->max_bias, hd->h, n_head);
    }
    fa_scores(j, hs, g, tensor_row(k, 0, h0 / (n_head / k->ne[2]), b / (q->ne[3] / k->ne[3])));
    for (int i = 0; i < g; i++) hs[i].sum = fa_weights(j, &hs[i]);
    fa_accumulate(j, hs, g, tensor_row(v, 0, h0 / (n_head / v->ne[2]), b / (q->ne[3] / v->ne[3])), vrow, pos);
    for (int i = 0; i < g; i++) {
        const float inv = hs[i].sum == 0.0f ? 0.0f : 1.0f / hs[i].sum;
        char *out = tensor_row(j->dst, hs[i].h, iq1, b);
        for (int64_t e = 0; e < dv; e++) {
            const float o = hs[i].sum == 0.0f ? 0.0f : hs[i].acc[e] * inv;
            memcpy(out + e * (int64_t)j->dst->nb[0], &o, sizeof o);
        }
    }
}

static void fa_compute(const struct ferry_compute_params *p, struct ferry_tensor *dst) {
    struct fa_job j = {
        .q = dst->src[0], .k = dst->src[1], .v = dst->src[2], .mask = dst->src[3], .sinks = dst->src[4],
        .dst = dst,
        .scale = ferry_param_f32(dst, 0), .max_bias = ferry_param_f32(dst, 1),
        .softcap = ferry_param_f32(dst, 2),
    };
    const enum ferry_simd_level level = ferry_simd_level();
    ferry_vec_dot_get(j.k->type, level, &j.vd);
    j.simd = level >= FERRY_SIMD_AVX2;
    j.f16_kv = j.simd && j.k->type == FERRY_TYPE_F16 && j.v->type == FERRY_TYPE_F16;
    j.scores_f16 = level >= FERRY_SIMD_AVX512 ? ferry_attn_scores_f16_avx512 : ferry_attn_scores_f16_avx2;
    j.accumulate_f16 = level >= FERRY_SIMD_AVX512 ? ferry_attn_accumulate_f16_avx512 : ferry_attn_accumulate_f16_avx2;
    j.v_to_float = ferry_type_traits(j.v->type)->to_float;
    if (j.simd && j.v->type == FERRY_TYPE_F16) j.v_to_float = widen_f16_simd;
    j.widen_mask = j.simd ? widen_f16_simd : ferry_type_traits(FERRY_TYPE_F16)->to_float;
    if (j.softcap != 0.0f) j.scale /= j.softcap;
    j.l = fa_layout(dst);

    char *scratch = (char *)p->wdata + (size_t)p->ith * j.l.per_thread;
    const int64_t n_head = j.q->ne[2], n_q = j.q->ne[1];
    const int64_t k_group = n_head / j.k->ne[2], v_group = n_head / j.v->ne[2];
    int64_t r0, r1;
    split_range(n_head * n_q * j.q->ne[3], p->ith, p->nth, &r0, &r1);
    /* Rows go heads fastest; a group is a run of this thread's rows with the
     * same query, batch and K/V heads. Grouping changes no arithmetic. */
    for (int64_t r = r0; r < r1;) {
        const int64_t h = r % n_head, iq1 = (r / n_head) % n_q, b = r / (n_head * n_q);
        int g = 1;
        while (g < FA_GROUP && r + g < r1 && h + g < n_head && (h + g) / k_group == h / k_group &&
               (h + g) / v_group == h / v_group)
            g++;
        fa_group(&j, h, g, iq1, b, scratch);
        r += g;
    }
}

const struct ferry_kernel ferry_kernel_flash_attn = { fa_check, fa_work_size, fa_compute };
