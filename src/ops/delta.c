/* GATED_DELTA_NET (the gated delta rule of Qwen3-Next / Kimi linear attention)
 * and LIGHTNING_INDEXER (DeepSeek's sparse-attention key scorer), docs/ops.md
 * B.26. Dot products keep eight f32 partial sums, as ggml's SIMD lanes do
 * (in another grouping), well within test-backend-ops' tolerance. */
#include <math.h>

#include "common.h"
#include "family_seq.h"
#include "scratch.h"

static inline const float *row_f32(const struct ferry_tensor *t, int64_t i1, int64_t i2, int64_t i3) {
    return (const float *)tensor_row(t, i1, i2, i3);
}

/* Eight f32 partial sums (which the compiler keeps in vector registers),
 * added in double at the end: the summation order is fixed, so results do
 * not depend on the SIMD level or the thread count. */
static float dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = { 0 };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    double sum = 0.0;
    for (int l = 0; l < 8; l++) sum += (double)acc[l];
    return (float)sum;
}

static int fail_shape(const struct ferry_tensor *node, const char *what, struct ferry_error *err) {
    return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s", ferry_op_name(node->op), what);
}

/* ---- GATED_DELTA_NET ----
 *
 * Sources: q, k [S, Hq, T, Bq] and v [S, H, T, B] (rows contiguous; q and k
 * heads repeat by modulo, their sequences by division), g [1 or S, H, T, B]
 * (a scalar gate per head, or one per state row: KDA), beta [1, H, T, B],
 * state [S, S, H, B] (contiguous). P[0] = K, the state snapshots kept.
 *
 * The state of a head is kept as M, M[j][i] at j·S + i (ggml's transposed
 * layout, the same in source and output). Per token:
 *   M[j][i] *= exp(g[i]) (KDA) or exp(g);
 *   delta[j] = (v[j] − M[j]·k)·beta;  M[j][i] += k[i]·delta[j];
 *   out[j] = (M[j]·q) / sqrt(S).
 * The node is a contiguous F32 [S·H, T·B + K·S·B]: outputs, token after
 * token, then K state slots of [S, S, H, B]; slot s holds the state s
 * tokens before the last (slot 0 the final one). With K > 1 and fewer than
 * K tokens the older slots are left as they are. */

static int check_gdn(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 6, err);
    if (rc) return rc;
    static const char *const names[] = { "q", "k", "v", "g", "beta", "state" };
    for (int i = 0; i < 6; i++) {
        const struct ferry_tensor *t = node->src[i];
        if (t->type != FERRY_TYPE_F32)
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GATED_DELTA_NET: %s type %s is not supported", names[i],
                              ferry_type_name(t->type));
        if ((rc = i < 3 ? check_rows_contiguous(node, t, names[i], err) : check_contiguous(node, t, names[i], err)))
            return rc;
    }
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *v = node->src[2], *g = node->src[3],
                              *beta = node->src[4], *state = node->src[5];
    const int64_t S = v->ne[0], H = v->ne[1], T = v->ne[2], B = v->ne[3];
    for (int i = 0; i < 2; i++) {
        const struct ferry_tensor *t = node->src[i];
        if (t->ne[0] != S || t->ne[2] != T || t->ne[1] < 1 || t->ne[3] < 1 || B % t->ne[3] != 0)
            return fail_shape(node, "q or k does not match v [S, H, T, B]", err);
    }
    (void)q;
    (void)k;
    if ((g->ne[0] != 1 && g->ne[0] != S) || g->ne[1] != H || g->ne[2] != T || g->ne[3] != B)
        return fail_shape(node, "g is not [1 or S, H, T, B]", err);
    if (beta->ne[0] != 1 || beta->ne[1] != H || beta->ne[2] != T || beta->ne[3] != B)
        return fail_shape(node, "beta is not [1, H, T, B]", err);
    if (state->ne[0] != S || state->ne[1] != S || state->ne[2] != H || state->ne[3] != B)
        return fail_shape(node, "state is not [S, S, H, B]", err);
    const int32_t K = ferry_param_i32(node, 0);
    if (K < 1) return ferry_fail(err, FERRY_ERR_INVALID, "GATED_DELTA_NET: K %d is not positive", (int)K);
    int64_t ss; /* the per-thread scratch holds S + S*S floats */
    if (__builtin_mul_overflow(S, S, &ss) || ss > INT64_MAX / 4 - S)
        return fail_shape(node, "state size overflows", err);
    int64_t c, tb, sb, rows;
    if (__builtin_mul_overflow(S, H, &c) || __builtin_mul_overflow(T, B, &tb) || __builtin_mul_overflow(S, B, &sb) ||
        __builtin_mul_overflow(sb, (int64_t)K, &sb) || __builtin_add_overflow(tb, sb, &rows))
        return fail_shape(node, "output size overflows", err);
    if (node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GATED_DELTA_NET: output type %s is not supported",
                          ferry_type_name(node->type));
    if ((rc = check_dst_shape(node, c, rows, 1, 1, err))) return rc;
    return check_contiguous(node, node, "output", err);
}

/* Per thread: delta (S floats), and with K > 1 a working state (S·S). */
static size_t gdn_scratch_count(const struct ferry_tensor *node) {
    const size_t S = (size_t)node->src[2]->ne[0];
    return ferry_param_i32(node, 0) > 1 ? S + S * S : S;
}

static size_t gdn_work_size(const struct ferry_tensor *node, int nth) {
    return scratch_size(nth, gdn_scratch_count(node), sizeof(float));
}

/* One token of one head: updates M (S×S) and writes its S outputs. */
static void gdn_token(float *M, float *delta, const float *q, const float *k, const float *v, const float *g,
                      bool kda, float beta, float scale, float *out, int64_t S) {
    if (kda) {
        for (int64_t i = 0; i < S; i++) delta[i] = expf(g[i]);
        for (int64_t j = 0; j < S; j++)
            for (int64_t i = 0; i < S; i++) M[j * S + i] *= delta[i];
    } else {
        const float d = expf(g[0]);
        for (int64_t i = 0; i < S * S; i++) M[i] *= d;
    }
    for (int64_t j = 0; j < S; j++) delta[j] = (v[j] - dot_f32(M + j * S, k, S)) * beta;
    for (int64_t j = 0; j < S; j++)
        for (int64_t i = 0; i < S; i++) M[j * S + i] += k[i] * delta[j];
    for (int64_t j = 0; j < S; j++) out[j] = dot_f32(M + j * S, q, S) * scale;
}

static void gdn_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *v = node->src[2], *g = node->src[3],
                              *beta = node->src[4], *state = node->src[5];
    const int64_t S = v->ne[0], H = v->ne[1], T = v->ne[2], B = v->ne[3], K = ferry_param_i32(node, 0);
    float *work = scratch_slice(p, gdn_scratch_count(node), sizeof(float));
    if (!work) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "GATED_DELTA_NET: scratch too small");
        return;
    }
    float *delta = work;
    const float scale = 1.0f / sqrtf((float)S);
    const bool kda = g->ne[0] == S && S != 1;
    float *out = node->data, *states = out + S * H * T * B;
    const int64_t snap = S * S * H * B;
    int64_t r0, r1;
    split_range(H * B, p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t h = r % H, b = r / H;
        const int64_t hq = h % q->ne[1], hk = h % k->ne[1];
        const int64_t bq = b / (B / q->ne[3]), bk = b / (B / k->ne[3]);
        float *M = K > 1 ? work + S : states + (b * H + h) * S * S;
        memcpy(M, row_f32(state, 0, h, b), (size_t)(S * S) * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
            const float bt = *row_f32(beta, h, t, b);
            gdn_token(M, delta, row_f32(q, hq, t, bq), row_f32(k, hk, t, bk), row_f32(v, h, t, b),
                      row_f32(g, h, t, b), kda, bt, scale, out + ((b * T + t) * H + h) * S, S);
            const int64_t slot = T - 1 - t;
            if (K > 1 && slot < K)
                memcpy(states + slot * snap + (b * H + h) * S * S, M, (size_t)(S * S) * sizeof(float));
        }
    }
}

const struct ferry_kernel ferry_kernel_gated_delta_net = { check_gdn, gdn_work_size, gdn_compute };

/* ---- LIGHTNING_INDEXER ----
 *
 * q F32 [E, n_head, n_tok, n_stream], k [E, 1, n_kv, n_stream] of any type
 * ferry can read as f32, weights F32 [n_head, n_tok, 1, n_stream], mask F16
 * [n_kv, n_tok, 1, M3] (streams repeat by modulo). Node F32
 * [n_kv, n_tok, 1, n_stream]:
 *   y[c, t, s] = Σ_h max(q[:, h, t, s]·k[:, 0, c, s], 0)·w[h, t, s] + mask[c, t, s mod M3]. */

static int check_lightning_indexer(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 4, err);
    if (rc) return rc;
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *w = node->src[2], *m = node->src[3];
    const struct ferry_type_traits *tk = ferry_type_traits(k->type);
    if (q->type != FERRY_TYPE_F32 || w->type != FERRY_TYPE_F32 || m->type != FERRY_TYPE_F16 ||
        node->type != FERRY_TYPE_F32 || !tk || !(k->type == FERRY_TYPE_F32 || tk->to_float) ||
        k->type == FERRY_TYPE_I32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "LIGHTNING_INDEXER: q %s, k %s, weights %s, mask %s -> %s",
                          ferry_type_name(q->type), ferry_type_name(k->type), ferry_type_name(w->type),
                          ferry_type_name(m->type), ferry_type_name(node->type));
    if (q->ne[0] != k->ne[0] || k->ne[1] != 1 || m->ne[0] != k->ne[2] || q->ne[1] != w->ne[0] ||
        m->ne[1] != q->ne[2] || q->ne[2] != w->ne[1] || w->ne[2] != 1 || m->ne[2] != 1 || q->ne[3] != k->ne[3] ||
        k->ne[3] != w->ne[3] || m->ne[3] < 1 || w->ne[3] % m->ne[3] != 0)
        return fail_shape(node, "shapes of q, k, weights and mask do not agree", err);
    if ((rc = check_rows_contiguous(node, q, "q", err)) || (rc = check_rows_contiguous(node, k, "k", err)) ||
        (rc = check_rows_contiguous(node, w, "weights", err)) || (rc = check_rows_contiguous(node, m, "mask", err)))
        return rc;
    return check_dst_shape(node, k->ne[2], q->ne[2], 1, q->ne[3], err);
}

static size_t lightning_work_size(const struct ferry_tensor *node, int nth) {
    return scratch_size(nth, (size_t)node->src[0]->ne[0], sizeof(float));
}

static void lightning_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *q = node->src[0], *k = node->src[1], *w = node->src[2], *m = node->src[3];
    const int64_t E = q->ne[0], n_head = q->ne[1], n_tok = q->ne[2], n_stream = q->ne[3];
    float *krow = scratch_slice(p, (size_t)E, sizeof(float));
    if (!krow) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "LIGHTNING_INDEXER: scratch too small");
        return;
    }
    const struct ferry_type_traits *tk = ferry_type_traits(k->type);
    int64_t c0, c1;
    split_range(k->ne[2], p->ith, p->nth, &c0, &c1);
    for (int64_t s = 0; s < n_stream; s++)
        for (int64_t c = c0; c < c1; c++) {
            const void *kr = tensor_row(k, 0, c, s);
            if (k->type == FERRY_TYPE_F32) memcpy(krow, kr, (size_t)E * sizeof(float));
            else tk->to_float(kr, krow, E);
            for (int64_t t = 0; t < n_tok; t++) {
                const float *wr = row_f32(w, t, 0, s);
                float score = 0.0f;
                for (int64_t h = 0; h < n_head; h++) {
                    const float qk = dot_f32(row_f32(q, h, t, s), krow, E);
                    score += (qk > 0.0f ? qk : 0.0f) * wr[h];
                }
                const uint16_t *mr = tensor_row(m, t, 0, s % m->ne[3]);
                const float y = score + fp16_to_fp32(mr[c]);
                memcpy((char *)tensor_row(node, t, 0, s) + c * (int64_t)node->nb[0], &y, sizeof y);
            }
        }
}

const struct ferry_kernel ferry_kernel_lightning_indexer = { check_lightning_indexer, lightning_work_size,
                                                             lightning_compute };
