/* The llama family: hyper-parameters, tensor checks and the graph of a
 * range of layers, as llama.cpp builds it for llama, mistral, qwen2 and
 * qwen3 (RMSNorm, RoPE, grouped-query attention over an f16 KV cache,
 * SwiGLU feed-forward, output head). */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- hyper-parameters --------------------------------------------------------------- */

static bool get_i32(const struct ferry_gguf *g, const char *arch, const char *key, int32_t *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    if (!ferry_gguf_get_i64(g, full, &v) || v < 0 || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

static bool get_f32(const struct ferry_gguf *g, const char *arch, const char *key, float *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    double d;
    if (ferry_gguf_get_f32(g, full, out)) return true;
    if (ferry_gguf_get_f64(g, full, &d)) {
        *out = (float)d;
        return true;
    }
    return false;
}

static const char *const layer_suffix[LT_COUNT] = {
    [LT_ATTN_NORM] = "attn_norm.weight", [LT_WQ] = "attn_q.weight",   [LT_WK] = "attn_k.weight",
    [LT_WV] = "attn_v.weight",           [LT_WO] = "attn_output.weight",
    [LT_BQ] = "attn_q.bias",             [LT_BK] = "attn_k.bias",     [LT_BV] = "attn_v.bias",
    [LT_Q_NORM] = "attn_q_norm.weight",  [LT_K_NORM] = "attn_k_norm.weight",
    [LT_FFN_NORM] = "ffn_norm.weight",   [LT_GATE] = "ffn_gate.weight", [LT_UP] = "ffn_up.weight",
    [LT_DOWN] = "ffn_down.weight",
};

const char *llama_layer_tensor_suffix(enum llama_layer_tensor which) { return layer_suffix[which]; }

bool llama_layer_tensor_needed(const struct llama_hparams *hp, enum llama_layer_tensor which) {
    switch (which) {
    case LT_BQ: case LT_BK: case LT_BV: return hp->has_bias;
    case LT_Q_NORM: case LT_K_NORM: return hp->has_qk_norm;
    default: return true;
    }
}

/* Expected ne[0], ne[1] of a layer tensor (ne[1] 1 for vectors). */
static void layer_shape(const struct llama_hparams *hp, enum llama_layer_tensor w, int64_t ne[2]) {
    int64_t e = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim,
            kv = (int64_t)hp->n_head_kv * hp->head_dim, f = hp->n_ff;
    static const int vec = -1;
    int64_t shapes[LT_COUNT][2] = {
        [LT_ATTN_NORM] = { e, vec }, [LT_WQ] = { e, q },  [LT_WK] = { e, kv }, [LT_WV] = { e, kv },
        [LT_WO] = { q, e },          [LT_BQ] = { q, vec }, [LT_BK] = { kv, vec }, [LT_BV] = { kv, vec },
        [LT_Q_NORM] = { hp->head_dim, vec }, [LT_K_NORM] = { hp->head_dim, vec },
        [LT_FFN_NORM] = { e, vec },  [LT_GATE] = { e, f }, [LT_UP] = { e, f },   [LT_DOWN] = { f, e },
    };
    ne[0] = shapes[w][0];
    ne[1] = shapes[w][1] == vec ? 1 : shapes[w][1];
}

static bool is_vector(enum llama_layer_tensor w) {
    return w == LT_ATTN_NORM || w == LT_FFN_NORM || w == LT_BQ || w == LT_BK || w == LT_BV ||
           w == LT_Q_NORM || w == LT_K_NORM;
}

static int check_tensor(const struct ferry_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                        bool f32_only, struct ferry_error *err) {
    const struct ferry_gguf_tensor_info *ti = ferry_gguf_find_tensor(g, name);
    if (!ti) return ferry_fail(err, FERRY_ERR_INVALID, "model has no tensor '%s'", name);
    if (ti->ne[0] != ne0 || ti->ne[1] != ne1 || ti->ne[2] != 1 || ti->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "tensor '%s' is [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                          (long long)ti->ne[0], (long long)ti->ne[1], (long long)ti->ne[2],
                          (long long)ti->ne[3], (long long)ne0, (long long)ne1);
    if (f32_only && ti->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "tensor '%s' is %s; norms and biases must be f32",
                          name, ferry_type_name(ti->type));
    return FERRY_OK;
}

int llama_read_hparams(const struct ferry_gguf *g, struct llama_hparams *hp, struct ferry_error *err) {
    memset(hp, 0, sizeof *hp);
    struct ferry_gguf_str a;
    if (!ferry_gguf_get_str(g, "general.architecture", &a))
        return ferry_fail(err, FERRY_ERR_INVALID, "not a model: general.architecture is missing");
    if (a.len >= sizeof hp->arch_name)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "architecture name too long");
    memcpy(hp->arch_name, a.ptr, a.len);
    hp->arch_name[a.len] = 0;
    const char *arch = hp->arch_name;
    if (!strcmp(arch, "llama") || !strcmp(arch, "mistral")) {
        hp->arch = ARCH_LLAMA;
    } else if (!strcmp(arch, "qwen2")) {
        hp->arch = ARCH_QWEN2;
        hp->has_bias = true;
    } else if (!strcmp(arch, "qwen3")) {
        hp->arch = ARCH_QWEN3;
        hp->has_qk_norm = true;
    } else {
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                          "architecture '%s' is not supported (llama, mistral, qwen2, qwen3 are)", arch);
    }
    hp->rope_mode = hp->arch == ARCH_LLAMA ? 0 : 2;

    if (!get_i32(g, arch, "block_count", &hp->n_layer) ||
        !get_i32(g, arch, "embedding_length", &hp->n_embd) ||
        !get_i32(g, arch, "feed_forward_length", &hp->n_ff) ||
        !get_i32(g, arch, "attention.head_count", &hp->n_head))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "%s: block_count, embedding_length, feed_forward_length and "
                          "attention.head_count are required", arch);
    if (!get_i32(g, arch, "attention.head_count_kv", &hp->n_head_kv)) hp->n_head_kv = hp->n_head;
    if (!get_i32(g, arch, "context_length", &hp->n_ctx_train)) hp->n_ctx_train = 2048;
    if (hp->n_layer < 1 || hp->n_layer > 4096 || hp->n_embd < 1 || hp->n_embd > (1 << 20) ||
        hp->n_ff < 1 || hp->n_ff > (1 << 22) || hp->n_head < 1 || hp->n_head > 4096 ||
        hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv != 0 || hp->n_ctx_train < 1)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "%s: implausible sizes (layers %d, embd %d, ff %d, heads %d/%d, ctx %d)", arch,
                          hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv, hp->n_ctx_train);
    if (!get_i32(g, arch, "attention.key_length", &hp->head_dim)) {
        if (hp->n_embd % hp->n_head)
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: embedding %d not divisible by %d heads", arch,
                              hp->n_embd, hp->n_head);
        hp->head_dim = hp->n_embd / hp->n_head;
    }
    int32_t vlen = hp->head_dim;
    if (get_i32(g, arch, "attention.value_length", &vlen) && vlen != hp->head_dim)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: key length %d != value length %d", arch,
                          hp->head_dim, vlen);
    if (hp->head_dim < 2 || hp->head_dim > 1024 || hp->head_dim % 2)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: head size %d", arch, hp->head_dim);
    if (!get_i32(g, arch, "rope.dimension_count", &hp->n_rot)) hp->n_rot = hp->head_dim;
    if (hp->n_rot < 2 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: rope dimension %d (head size %d)", arch, hp->n_rot,
                          hp->head_dim);
    if (!get_f32(g, arch, "attention.layer_norm_rms_epsilon", &hp->eps)) hp->eps = 1e-5f;
    if (!get_f32(g, arch, "rope.freq_base", &hp->rope_base)) hp->rope_base = 10000.0f;
    hp->rope_scale = 1.0f;
    float factor;
    if (get_f32(g, arch, "rope.scaling.factor", &factor) && factor > 0) hp->rope_scale = 1.0f / factor;
    if (!(hp->eps > 0 && hp->eps < 1) || !(hp->rope_base > 1) || !isfinite(hp->rope_base))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: rms epsilon %g, rope base %g", arch, hp->eps,
                          hp->rope_base);

    const struct ferry_gguf_tensor_info *emb = ferry_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return ferry_fail(err, FERRY_ERR_INVALID, "model has no tensor 'token_embd.weight'");
    if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
        return ferry_fail(err, FERRY_ERR_INVALID, "vocabulary of %lld tokens", (long long)emb->ne[1]);
    hp->n_vocab = (int32_t)emb->ne[1];
    int rc = check_tensor(g, "token_embd.weight", hp->n_embd, hp->n_vocab, false, err);
    if (!rc) rc = check_tensor(g, "output_norm.weight", hp->n_embd, 1, true, err);
    if (rc) return rc;
    hp->tied_output = ferry_gguf_find_tensor(g, "output.weight") == NULL;
    if (!hp->tied_output && (rc = check_tensor(g, "output.weight", hp->n_embd, hp->n_vocab, false, err)))
        return rc;
    if (ferry_gguf_find_tensor(g, "rope_freqs.weight")) {
        if ((rc = check_tensor(g, "rope_freqs.weight", hp->n_rot / 2, 1, true, err))) return rc;
        hp->has_rope_freqs = true;
    }
    for (int il = 0; il < hp->n_layer; il++)
        for (int w = 0; w < LT_COUNT; w++) {
            if (!llama_layer_tensor_needed(hp, w)) continue;
            char name[FERRY_MAX_NAME];
            snprintf(name, sizeof name, "blk.%d.%s", il, layer_suffix[w]);
            int64_t ne[2];
            layer_shape(hp, w, ne);
            if ((rc = check_tensor(g, name, ne[0], ne[1], is_vector(w), err))) return rc;
        }
    return FERRY_OK;
}

/* ---- the graph ---------------------------------------------------------------------- */

int llama_stage_max_tensors(const struct llama_stage_weights *sw) {
    return 32 + 64 * sw->layer_count;
}

static void build_inputs(struct gbuild *g, const struct llama_stage_weights *sw,
                         const struct llama_batch_shape *bs, struct llama_inputs *in) {
    const struct llama_hparams *hp = sw->hp;
    int T = bs->n_tokens;
    memset(in, 0, sizeof *in);
    if (sw->embed)
        in->tokens = gb_new(g, FERRY_TYPE_I32, T, 1, 1, 1, "inp_tokens");
    else
        in->embd = gb_new(g, FERRY_TYPE_F32, hp->n_embd, T, 1, 1, "inp_embd");
    if (sw->layer_count > 0) {
        in->pos = gb_new(g, FERRY_TYPE_I32, T, 1, 1, 1, "inp_pos");
        in->kv_idx = gb_new(g, FERRY_TYPE_I64, T, 1, 1, 1, "inp_kv_idx");
        in->mask = gb_new(g, FERRY_TYPE_F16, bs->n_kv, T, 1, 1, "inp_mask");
    }
    if (sw->output) in->out_ids = gb_new(g, FERRY_TYPE_I32, bs->n_out, 1, 1, 1, "inp_out_ids");
    /* one I8 tensor over all of them: the whole set is one upload */
    struct ferry_tensor *first = in->tokens ? in->tokens : in->embd;
    in->blob_bytes = gb_mark(g) - (size_t)((uintptr_t)first->data - g->base);
    struct ferry_tensor blob;
    int64_t ne = (int64_t)in->blob_bytes;
    ferry_tensor_init(&blob, FERRY_TYPE_I8, 1, &ne, first->data);
    blob.buffer = first->buffer;
    snprintf(blob.name, sizeof blob.name, "inp_blob");
    in->blob = gb_wrap(g, &blob);
}

static struct ferry_tensor *norm(struct gbuild *g, struct ferry_tensor *x, struct ferry_tensor *w,
                                 float eps) {
    return gb_mul(g, gb_rms_norm(g, x, eps), w);
}

static struct ferry_tensor *attention(struct gbuild *g, const struct llama_stage_weights *sw,
                                      struct llama_layer *L, struct ferry_tensor *cur,
                                      const struct llama_batch_shape *bs, const struct llama_inputs *in) {
    const struct llama_hparams *hp = sw->hp;
    int64_t T = bs->n_tokens, hd = hp->head_dim, n_kv_embd = (int64_t)hp->n_head_kv * hd;
    struct ferry_tensor *q = gb_mul_mat(g, L->w[LT_WQ], cur);
    struct ferry_tensor *k = gb_mul_mat(g, L->w[LT_WK], cur);
    struct ferry_tensor *v = gb_mul_mat(g, L->w[LT_WV], cur);
    if (hp->has_bias) {
        q = gb_add(g, q, L->w[LT_BQ]);
        k = gb_add(g, k, L->w[LT_BK]);
        v = gb_add(g, v, L->w[LT_BV]);
    }
    q = gb_reshape(g, q, hd, hp->n_head, T);
    k = gb_reshape(g, k, hd, hp->n_head_kv, T);
    if (hp->has_qk_norm) {
        q = norm(g, q, L->w[LT_Q_NORM], hp->eps);
        k = norm(g, k, L->w[LT_K_NORM], hp->eps);
    }
    q = gb_rope(g, q, in->pos, sw->rope_freqs, hp->n_rot, hp->rope_mode, hp->n_ctx_train,
                hp->rope_base, hp->rope_scale);
    k = gb_rope(g, k, in->pos, sw->rope_freqs, hp->n_rot, hp->rope_mode, hp->n_ctx_train,
                hp->rope_base, hp->rope_scale);

    /* this ubatch's keys and values go into their cache cells first */
    gb_set_rows(g, &L->k_cache, gb_reshape(g, k, n_kv_embd, T, 1), in->kv_idx);
    gb_set_rows(g, &L->v_cache, v, in->kv_idx);

    struct ferry_tensor *kc = &L->k_cache, *vc = &L->v_cache;
    size_t es = ferry_type_size(kc->type);
    struct ferry_tensor *kv = gb_view(g, kc, hd, bs->n_kv, hp->n_head_kv, kc->nb[1], (size_t)hd * es, 0);
    struct ferry_tensor *vv = gb_view(g, vc, hd, bs->n_kv, hp->n_head_kv, vc->nb[1], (size_t)hd * es, 0);
    struct ferry_tensor *qp = gb_permute(g, q, 0, 2, 1, 3);
    struct ferry_tensor *o = gb_flash_attn(g, qp, kv, vv, in->mask, 1.0f / sqrtf((float)hd));
    o = gb_reshape(g, o, hd * hp->n_head, T, 1);
    return gb_mul_mat(g, L->w[LT_WO], o);
}

int llama_build_stage(struct gbuild *g, const struct llama_stage_weights *sw,
                      const struct llama_batch_shape *bs, struct llama_inputs *in,
                      struct ferry_tensor **out, struct ferry_error *err) {
    const struct llama_hparams *hp = sw->hp;
    int T = bs->n_tokens;
    build_inputs(g, sw, bs, in);
    struct ferry_tensor *x = sw->embed ? gb_get_rows(g, sw->tok_embd, in->tokens) : in->embd;
    struct ferry_tensor *slot[2] = { NULL, NULL };
    if (sw->layer_count > 0) {
        slot[0] = gb_new(g, FERRY_TYPE_F32, hp->n_embd, T, 1, 1, "residual_a");
        slot[1] = gb_new(g, FERRY_TYPE_F32, hp->n_embd, T, 1, 1, "residual_b");
    }
    for (int i = 0; i < sw->layer_count; i++) {
        struct llama_layer *L = &sw->layers[i];
        size_t scope = gb_mark(g);
        struct ferry_tensor *cur = norm(g, x, L->w[LT_ATTN_NORM], hp->eps);
        cur = attention(g, sw, L, cur, bs, in);
        struct ferry_tensor *ffn_in = gb_add(g, cur, x);
        cur = norm(g, ffn_in, L->w[LT_FFN_NORM], hp->eps);
        struct ferry_tensor *gate = gb_mul_mat(g, L->w[LT_GATE], cur);
        struct ferry_tensor *up = gb_mul_mat(g, L->w[LT_UP], cur);
        cur = gb_mul_mat(g, L->w[LT_DOWN], gb_swiglu(g, gate, up));
        gb_place_next(g, slot[i % 2]);
        x = gb_add(g, cur, ffn_in);
        snprintf(x->name, sizeof x->name, "l_out-%d", sw->layer_first + i);
        gb_release(g, scope);
    }
    if (sw->output) {
        if (bs->n_out != T) x = gb_get_rows(g, x, in->out_ids);
        x = norm(g, x, sw->out_norm, hp->eps);
        x = gb_mul_mat(g, sw->w_output, x);
        snprintf(x->name, sizeof x->name, "result_output");
    }
    *out = x;
    return gb_status(g, err);
}
