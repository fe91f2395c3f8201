/* Linear-attention recurrences with a per-head S×S state (docs/ops.md B.26):
 * RWKV_WKV6, RWKV_WKV7 and GATED_LINEAR_ATTN.
 *
 * Shared layout (ggml's): every per-token input is a contiguous [S, H, T]
 * tensor; the state source is contiguous with S·S·H·n_seqs elements
 * (n_seqs = its ne1), row i of head h at (h·S + i)·S; the T tokens are
 * n_seqs consecutive runs of T/n_seqs. The node is a contiguous F32
 * [S·H, T + S·n_seqs]: the outputs of every token, then the final states
 * in the state source's layout. The first token of a sequence reads its
 * state from the source, the others from the node.
 *
 * Arithmetic is f32 in ggml's order (sums over the state row in index
 * order); each head belongs to one thread, so the thread count does not
 * change anything. */
#include "common.h"
#include "family_seq.h"

/* Which sources of each op are per-token [S, H, T], and where the state is. */
struct wkv_layout {
    int n_tok_srcs;
    int state_src;
    const char *names[7];
};

static const struct wkv_layout *wkv_layout_of(int op) {
    static const struct wkv_layout wkv6 = { 5, 5, { "k", "v", "r", "time_first", "time_decay", "state" } };
    static const struct wkv_layout wkv7 = { 6, 6, { "r", "w", "k", "v", "a", "b", "state" } };
    static const struct wkv_layout gla = { 4, 4, { "k", "v", "q", "g", "state" } };
    return op == FERRY_OP_RWKV_WKV6 ? &wkv6 : op == FERRY_OP_RWKV_WKV7 ? &wkv7 : &gla;
}

static int check_wkv(const struct ferry_tensor *node, struct ferry_error *err) {
    const struct wkv_layout *L = wkv_layout_of(node->op);
    const char *name = ferry_op_name(node->op);
    int rc = check_src_count(node, L->state_src + 1, err);
    if (rc) return rc;
    const struct ferry_tensor *k = node->src[0], *state = node->src[L->state_src];
    const int64_t S = k->ne[0], H = k->ne[1], T = k->ne[2], n_seqs = state->ne[1];
    for (int i = 0; i <= L->state_src; i++) {
        const struct ferry_tensor *t = node->src[i];
        if (t->type != FERRY_TYPE_F32)
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s type %s is not supported", name, L->names[i],
                              ferry_type_name(t->type));
        if ((rc = check_contiguous(node, t, L->names[i], err))) return rc;
        /* WKV6's time_first is one [S, H] for all tokens */
        const bool per_token = i < L->n_tok_srcs && !(node->op == FERRY_OP_RWKV_WKV6 && i == 3);
        if (per_token && (t->ne[0] != S || t->ne[1] != H || t->ne[2] != T || t->ne[3] < 1))
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s is not [%lld, %lld, %lld]", name, L->names[i],
                              (long long)S, (long long)H, (long long)T);
    }
    int64_t ss, sh, want, rows, c;
    if (__builtin_mul_overflow(S, H, &c) || __builtin_mul_overflow(S, S, &ss) || __builtin_mul_overflow(ss, H, &sh) ||
        __builtin_mul_overflow(sh, n_seqs, &want) || ferry_nelements(state) != want)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: state does not hold S*S*H*n_seqs elements", name);
    if (node->op == FERRY_OP_RWKV_WKV6 && ferry_nelements(node->src[3]) < c)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: time_first has fewer than S*H elements", name);
    /* the tokens split into n_seqs equal runs; ggml divides by T/n_seqs */
    if (n_seqs < 1 || T % n_seqs != 0 || (T > 0 && T < n_seqs))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %lld tokens do not split into %lld sequences", name,
                          (long long)T, (long long)n_seqs);
    if (node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: output type %s is not supported", name,
                          ferry_type_name(node->type));
    if (__builtin_mul_overflow(S, n_seqs, &rows) || __builtin_add_overflow(rows, T, &rows))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: output size overflows", name);
    if ((rc = check_dst_shape(node, c, rows, 1, 1, err))) return rc;
    return check_contiguous(node, node, "output", err);
}

/* Where one (token, head) step reads and writes. */
struct wkv_step {
    const float *prev; /* the head's S×S state before the token */
    float *cur;        /* and after */
    float *out;        /* the head's S outputs of the token */
    int64_t x;         /* offset of the (token, head) row in per-token inputs */
    int64_t S, h;
};

static inline const float *src_f32(const struct ferry_tensor *node, int i) {
    return (const float *)node->src[i]->data;
}

/* out[j] = Σ_i r_i·(u_i·k_i·v_j + prev_ij); cur_ij = prev_ij·w_i + k_i·v_j. */
static void wkv6_step(const struct ferry_tensor *node, const struct wkv_step *st) {
    const float *k = src_f32(node, 0) + st->x, *v = src_f32(node, 1) + st->x, *r = src_f32(node, 2) + st->x,
                *u = src_f32(node, 3) + st->h * st->S, *w = src_f32(node, 4) + st->x;
    const int64_t S = st->S;
    for (int64_t j = 0; j < S; j++) st->out[j] = 0.0f;
    for (int64_t i = 0; i < S; i++) {
        const float *pr = st->prev + i * S;
        float *cu = st->cur + i * S;
        for (int64_t j = 0; j < S; j++) {
            const float kv = v[j] * k[i];
            const float p = pr[j];
            st->out[j] += (kv * u[i] + p) * r[i];
            cu[j] = p * w[i] + kv;
        }
    }
}

/* cur_ij = prev_ij·g_i + k_i·v_j; out[j] = Σ_i cur_ij·(q_i·scale). */
static void gla_step(const struct ferry_tensor *node, const struct wkv_step *st) {
    const float *k = src_f32(node, 0) + st->x, *v = src_f32(node, 1) + st->x, *q = src_f32(node, 2) + st->x,
                *g = src_f32(node, 3) + st->x;
    const float scale = ferry_param_f32(node, 0);
    const int64_t S = st->S;
    for (int64_t j = 0; j < S; j++) st->out[j] = 0.0f;
    for (int64_t i = 0; i < S; i++) {
        const float *pr = st->prev + i * S;
        float *cu = st->cur + i * S;
        const float qs = q[i] * scale;
        for (int64_t j = 0; j < S; j++) {
            const float t = pr[j] * g[i] + v[j] * k[i];
            st->out[j] += t * qs;
            cu[j] = t;
        }
    }
}

/* sa = Σ_j a_j·prev_ij; cur_ij = prev_ij·w_j + v_i·k_j + sa·b_j; out[i] = Σ_j cur_ij·r_j. */
static void wkv7_step(const struct ferry_tensor *node, const struct wkv_step *st) {
    const float *r = src_f32(node, 0) + st->x, *w = src_f32(node, 1) + st->x, *k = src_f32(node, 2) + st->x,
                *v = src_f32(node, 3) + st->x, *a = src_f32(node, 4) + st->x, *b = src_f32(node, 5) + st->x;
    const int64_t S = st->S;
    for (int64_t i = 0; i < S; i++) {
        const float *pr = st->prev + i * S;
        float *cu = st->cur + i * S;
        float sa = 0.0f, res = 0.0f;
        for (int64_t j = 0; j < S; j++) sa += a[j] * pr[j];
        for (int64_t j = 0; j < S; j++) {
            const float c = pr[j] * w[j] + v[i] * k[j] + sa * b[j];
            cu[j] = c;
            res += c * r[j];
        }
        st->out[i] = res;
    }
}

static void wkv_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct wkv_layout *L = wkv_layout_of(node->op);
    const struct ferry_tensor *k = node->src[0], *state = node->src[L->state_src];
    const int64_t S = k->ne[0], H = k->ne[1], T = k->ne[2], n_seqs = state->ne[1];
    if (T == 0) return;
    const int64_t per_seq = T / n_seqs, C = S * H;
    float *out = node->data, *states = out + C * T;
    int64_t h0, h1;
    split_range(H, p->ith, p->nth, &h0, &h1);
    for (int64_t t = 0; t < T; t++) {
        const int64_t q = t / per_seq;
        float *cur = states + q * S * C;
        const float *prev = t % per_seq ? cur : (const float *)state->data + q * S * C;
        for (int64_t h = h0; h < h1; h++) {
            const struct wkv_step st = { prev + h * S * S, cur + h * S * S, out + t * C + h * S, t * C + h * S,
                                         S, h };
            switch (node->op) {
            case FERRY_OP_RWKV_WKV6: wkv6_step(node, &st); break;
            case FERRY_OP_RWKV_WKV7: wkv7_step(node, &st); break;
            default: gla_step(node, &st); break;
            }
        }
    }
}

const struct ferry_kernel ferry_kernel_rwkv_wkv6 = { check_wkv, NULL, wkv_compute };
const struct ferry_kernel ferry_kernel_rwkv_wkv7 = { check_wkv, NULL, wkv_compute };
const struct ferry_kernel ferry_kernel_gla = { check_wkv, NULL, wkv_compute };
