/* The model runner (src/model) on generated llama-family models:
 * - logits of the local engine against an independent, naive f64
 *   reference decoder written here (embedding, RMSNorm, RoPE normal and
 *   neox, grouped-query attention, SwiGLU, tied and untied heads, qwen2
 *   biases, qwen3 q/k norms);
 * - the same prompt and seed give the same tokens and logits locally,
 *   split over one in-process server, over two, and with only some layers
 *   offloaded (output head local again);
 * - every weight type the runner supports loads and decodes;
 * - unchanged graphs go out as GRAPH_RECOMPUTE;
 * - a server lost mid-generation is an error with a reason, not a crash,
 *   and after the server is back, reset reconnects and decoding resumes
 *   with the right results;
 * - hostile inputs: tokens out of range, a full context, a model file
 *   with a wrong tensor shape. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/gen.h"
#include "ferry/gguf.h"
#include "ferry/model.h"
#include "ferry/sampler.h"
#include "ferry/server.h"
#include "ferry/vocab.h"
#include "testutil.h"

#define MIB (1024ull * 1024)

static char g_dir[64];

/* ---- servers ------------------------------------------------------------------------ */

static bool server_start_as(struct test_server *ts, int port, bool like_ggml) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.no_ferry_ext = like_ggml; /* answers exactly as ggml's rpc-server would */
    cfg.port = port;
    cfg.n_threads = 1;
    cfg.mem_limit = 512 * MIB;
    return test_server_start(ts, &cfg);
}

static bool server_start(struct test_server *ts, int port) { return server_start_as(ts, port, false); }

/* ---- models ------------------------------------------------------------------------- */

static bool gen(const char *file, const char *arch, enum ferry_type wtype, bool tied, int n_layer,
                char *path, size_t cap) {
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    p.arch = arch;
    p.wtype = wtype;
    p.tied_output = tied;
    p.n_layer = n_layer;
    p.n_vocab = 512;
    p.n_embd = 256; /* K-quants need rows of 256 */
    p.n_head = 8;
    p.n_head_kv = 2;
    p.n_ff = 512;
    p.n_ctx = 1024;
    p.seed = 7;
    snprintf(path, cap, "%s/%s", g_dir, file);
    struct ferry_error err = { 0 };
    return CHECK(ferry_gen_model(&p, path, &err) == FERRY_OK, "gen %s: %s", file, err.msg);
}

static struct ferry_model *load(const char *path, const char *const *rpc, int n_rpc, const float *split,
                                int ngl, struct ferry_error *err) {
    struct ferry_model_params p;
    ferry_model_params_defaults(&p);
    p.path = path;
    p.n_threads = 2;
    p.n_ctx = 512;
    p.n_batch = 16; /* prompts of more tokens cross ubatches */
    p.n_gpu_layers = ngl;
    p.client.connect_timeout_ms = 5000;
    p.client.response_timeout_ms = 20000;
    p.client.frame_timeout_ms = 20000;
    for (int i = 0; i < n_rpc; i++) {
        p.rpc[i] = rpc[i];
        p.tensor_split[i] = split ? split[i] : 0;
    }
    p.n_rpc = n_rpc;
    struct ferry_model *m = NULL;
    return ferry_model_load(&p, &m, err) == FERRY_OK ? m : NULL;
}

/* ---- an independent reference decoder (f64, straight from the file) ------------------- */

struct ref {
    const struct ferry_gguf *g;
    const char *arch;
    int n_embd, n_layer, n_head, n_kv_head, hd, n_ff, n_vocab, n_ctx;
    float eps, base;
    bool neox, bias, qk_norm, tied;
    double *kc, *vc; /* [layer][pos][n_kv_head * hd] */
    int n_past;
};

static const struct ferry_gguf_tensor_info *W(const struct ref *r, const char *fmt, int il) {
    char name[64];
    snprintf(name, sizeof name, fmt, il);
    const struct ferry_gguf_tensor_info *t = ferry_gguf_find_tensor(r->g, name);
    if (!t) {
        fprintf(stderr, "reference: no %s\n", name);
        abort();
    }
    return t;
}

/* Row i of a weight, dequantized. */
static void row(const struct ferry_gguf_tensor_info *t, int64_t i, float *out) {
    size_t rs = ferry_row_size(t->type, t->ne[0]);
    ferry_type_traits(t->type)->to_float((const char *)t->data + (size_t)i * rs, out, t->ne[0]);
}

static void matvec(const struct ferry_gguf_tensor_info *t, const double *x, double *y) {
    float *w = malloc((size_t)t->ne[0] * sizeof *w);
    for (int64_t r = 0; r < t->ne[1]; r++) {
        row(t, r, w);
        double s = 0;
        for (int64_t c = 0; c < t->ne[0]; c++) s += (double)w[c] * x[c];
        y[r] = s;
    }
    free(w);
}

static void add_vec(const struct ferry_gguf_tensor_info *t, double *y) {
    float *b = malloc((size_t)t->ne[0] * sizeof *b);
    row(t, 0, b);
    for (int64_t i = 0; i < t->ne[0]; i++) y[i] += b[i];
    free(b);
}

static void rmsnorm(const double *x, int n, const struct ferry_gguf_tensor_info *w, float eps, double *y) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    float *g = malloc((size_t)n * sizeof *g);
    row(w, 0, g);
    for (int i = 0; i < n; i++) y[i] = x[i] * s * g[i];
    free(g);
}

static void rope(double *x, int n_heads, int hd, int pos, float base, bool neox) {
    for (int h = 0; h < n_heads; h++) {
        double *v = x + (size_t)h * hd;
        for (int i = 0; i < hd / 2; i++) {
            double theta = pos * pow(base, -2.0 * i / hd);
            int a = neox ? i : 2 * i, b = neox ? i + hd / 2 : 2 * i + 1;
            double x0 = v[a], x1 = v[b];
            v[a] = x0 * cos(theta) - x1 * sin(theta);
            v[b] = x0 * sin(theta) + x1 * cos(theta);
        }
    }
}

static void ref_init(struct ref *r, const struct ferry_gguf *g, int n_ctx) {
    memset(r, 0, sizeof *r);
    r->g = g;
    struct ferry_gguf_str a;
    ferry_gguf_get_str(g, "general.architecture", &a);
    static char arch[16];
    snprintf(arch, sizeof arch, "%.*s", (int)a.len, a.ptr);
    r->arch = arch;
    char k[96];
    uint32_t u;
#define U(key, dst) (snprintf(k, sizeof k, "%s." key, arch), ferry_gguf_get_u32(g, k, &u), (dst) = (int)u)
    U("embedding_length", r->n_embd);
    U("block_count", r->n_layer);
    U("attention.head_count", r->n_head);
    U("attention.head_count_kv", r->n_kv_head);
    U("feed_forward_length", r->n_ff);
    U("attention.key_length", r->hd);
#undef U
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
    ferry_gguf_get_f32(g, k, &r->eps);
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    ferry_gguf_get_f32(g, k, &r->base);
    r->n_vocab = (int)ferry_gguf_find_tensor(g, "token_embd.weight")->ne[1];
    r->neox = !strcmp(arch, "qwen2") || !strcmp(arch, "qwen3");
    r->bias = !strcmp(arch, "qwen2");
    r->qk_norm = !strcmp(arch, "qwen3");
    r->tied = ferry_gguf_find_tensor(g, "output.weight") == NULL;
    r->n_ctx = n_ctx;
    size_t kv = (size_t)r->n_layer * (size_t)n_ctx * (size_t)(r->n_kv_head * r->hd);
    r->kc = calloc(kv, sizeof(double));
    r->vc = calloc(kv, sizeof(double));
}

static void ref_free(struct ref *r) {
    free(r->kc);
    free(r->vc);
}

/* One token; logits (n_vocab) written when not NULL. */
static void ref_step(struct ref *r, int32_t tok, float *logits) {
    int E = r->n_embd, H = r->n_head, KH = r->n_kv_head, hd = r->hd, F = r->n_ff, p = r->n_past;
    size_t kvw = (size_t)KH * hd;
    double *x = calloc((size_t)E, sizeof *x), *h = calloc((size_t)E, sizeof *h),
           *q = calloc((size_t)H * hd, sizeof *q), *k = calloc(kvw, sizeof *k), *v = calloc(kvw, sizeof *v),
           *att = calloc((size_t)H * hd, sizeof *att), *o = calloc((size_t)E, sizeof *o),
           *gt = calloc((size_t)F, sizeof *gt), *up = calloc((size_t)F, sizeof *up),
           *sc = calloc((size_t)p + 1, sizeof *sc);
    float *e = malloc((size_t)E * sizeof *e);
    row(W(r, "token_embd.weight", 0), tok, e);
    for (int i = 0; i < E; i++) x[i] = e[i];
    for (int il = 0; il < r->n_layer; il++) {
        rmsnorm(x, E, W(r, "blk.%d.attn_norm.weight", il), r->eps, h);
        matvec(W(r, "blk.%d.attn_q.weight", il), h, q);
        matvec(W(r, "blk.%d.attn_k.weight", il), h, k);
        matvec(W(r, "blk.%d.attn_v.weight", il), h, v);
        if (r->bias) {
            add_vec(W(r, "blk.%d.attn_q.bias", il), q);
            add_vec(W(r, "blk.%d.attn_k.bias", il), k);
            add_vec(W(r, "blk.%d.attn_v.bias", il), v);
        }
        if (r->qk_norm) {
            for (int hh = 0; hh < H; hh++)
                rmsnorm(q + (size_t)hh * hd, hd, W(r, "blk.%d.attn_q_norm.weight", il), r->eps, q + (size_t)hh * hd);
            for (int hh = 0; hh < KH; hh++)
                rmsnorm(k + (size_t)hh * hd, hd, W(r, "blk.%d.attn_k_norm.weight", il), r->eps, k + (size_t)hh * hd);
        }
        rope(q, H, hd, p, r->base, r->neox);
        rope(k, KH, hd, p, r->base, r->neox);
        double *kc = r->kc + ((size_t)il * r->n_ctx) * kvw, *vc = r->vc + ((size_t)il * r->n_ctx) * kvw;
        memcpy(kc + (size_t)p * kvw, k, kvw * sizeof *k);
        memcpy(vc + (size_t)p * kvw, v, kvw * sizeof *v);
        for (int hh = 0; hh < H; hh++) {
            int kh = hh / (H / KH);
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= p; j++) {
                double s = 0;
                for (int d = 0; d < hd; d++) s += q[(size_t)hh * hd + d] * kc[(size_t)j * kvw + (size_t)kh * hd + d];
                sc[j] = s / sqrt((double)hd);
                if (sc[j] > mx) mx = sc[j];
            }
            for (int j = 0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < hd; d++) {
                double a = 0;
                for (int j = 0; j <= p; j++) a += sc[j] * vc[(size_t)j * kvw + (size_t)kh * hd + d];
                att[(size_t)hh * hd + d] = a / sum;
            }
        }
        matvec(W(r, "blk.%d.attn_output.weight", il), att, o);
        for (int i = 0; i < E; i++) x[i] += o[i];
        rmsnorm(x, E, W(r, "blk.%d.ffn_norm.weight", il), r->eps, h);
        matvec(W(r, "blk.%d.ffn_gate.weight", il), h, gt);
        matvec(W(r, "blk.%d.ffn_up.weight", il), h, up);
        for (int i = 0; i < F; i++) gt[i] = gt[i] / (1 + exp(-gt[i])) * up[i];
        matvec(W(r, "blk.%d.ffn_down.weight", il), gt, o);
        for (int i = 0; i < E; i++) x[i] += o[i];
    }
    if (logits) {
        rmsnorm(x, E, W(r, "output_norm.weight", 0), r->eps, h);
        double *l = malloc((size_t)r->n_vocab * sizeof *l);
        matvec(r->tied ? W(r, "token_embd.weight", 0) : W(r, "output.weight", 0), h, l);
        for (int i = 0; i < r->n_vocab; i++) logits[i] = (float)l[i];
        free(l);
    }
    r->n_past++;
    free(x), free(h), free(q), free(k), free(v), free(att), free(o), free(gt), free(up), free(sc), free(e);
}

/* ---- helpers -------------------------------------------------------------------------- */

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static int32_t *tokenize(const struct ferry_vocab *v, const char *text, size_t *n) {
    int32_t *t = NULL;
    struct ferry_error err = { 0 };
    CHECK(ferry_tokenize(v, text, strlen(text), true, false, &t, n, &err) == FERRY_OK, "tokenize: %s", err.msg);
    return t;
}

/* A generation run: the prompt's logits, then n sampled tokens and the
 * logits after each. */
struct run {
    int n_vocab, n;
    float *logits; /* (n + 1) * n_vocab */
    int32_t toks[64];
    int rc;
    char why[256];
};

static void run_free(struct run *r) { free(r->logits); }

static void generate(struct ferry_model *m, const char *prompt, int n, uint64_t seed, struct run *out) {
    memset(out, 0, sizeof *out);
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    out->n_vocab = info.n_vocab;
    out->logits = calloc((size_t)(n + 1) * (size_t)info.n_vocab, sizeof(float));
    size_t np = 0;
    int32_t *pt = tokenize(ferry_model_vocab(m), prompt, &np);
    struct ferry_sampler_params sp;
    ferry_sampler_params_defaults(&sp);
    sp.seed = seed;
    struct ferry_sampler *s = ferry_sampler_new(&sp);
    struct ferry_error err = { 0 };
    out->rc = pt && np ? ferry_model_decode(m, pt, (int)np, out->logits, &err) : FERRY_ERR_INVALID;
    for (int i = 0; i < n && !out->rc; i++) {
        int32_t id = ferry_sampler_sample(s, out->logits + (size_t)i * info.n_vocab, info.n_vocab);
        out->toks[out->n++] = id;
        out->rc = ferry_model_decode(m, &id, 1, out->logits + (size_t)(i + 1) * info.n_vocab, &err);
    }
    snprintf(out->why, sizeof out->why, "%s", err.msg);
    ferry_sampler_free(s);
    free(pt);
}

static void same_run(const struct run *a, const struct run *b, const char *what) {
    CHECK(a->rc == 0 && b->rc == 0, "%s: runs failed: %s / %s", what, a->why, b->why);
    CHECK(a->n == b->n && memcmp(a->toks, b->toks, (size_t)a->n * sizeof a->toks[0]) == 0,
          "%s: different tokens", what);
    double worst = 0;
    for (int i = 0; i <= a->n && i <= b->n; i++) {
        double e = test_nmse(a->logits + (size_t)i * a->n_vocab, b->logits + (size_t)i * a->n_vocab, a->n_vocab);
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-6, "%s: logits NMSE %g", what, worst);
}

/* ---- tests ------------------------------------------------------------------------------ */

static const char *PROMPT = "The quick brown fox jumps over the lazy dog, and then it rests in the shade of a tree.";

static void test_against_reference(const char *arch, bool tied) {
    char path[128], file[64];
    snprintf(file, sizeof file, "ref-%s-%d.gguf", arch, tied);
    if (!gen(file, arch, FERRY_TYPE_F32, tied, 2, path, sizeof path)) return;
    struct ferry_error err = { 0 };
    struct ferry_model *m = load(path, NULL, 0, NULL, -1, &err);
    if (!CHECK(m != NULL, "load %s: %s", file, err.msg)) return;
    struct ferry_gguf *g = NULL;
    ferry_gguf_open(path, &g, &err);
    struct ref r;
    ref_init(&r, g, 64);
    size_t n = 0;
    int32_t *t = tokenize(ferry_model_vocab(m), "Hello world, this is a test of the decoder.", &n);
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    float *got = malloc((size_t)info.n_vocab * sizeof(float)), *want = malloc((size_t)info.n_vocab * sizeof(float));
    CHECK(ferry_model_decode(m, t, (int)n, got, &err) == FERRY_OK, "%s: decode: %s", arch, err.msg);
    for (size_t i = 0; i < n; i++) ref_step(&r, t[i], i + 1 == n ? want : NULL);
    double e = test_nmse(want, got, info.n_vocab);
    CHECK(e < 1e-4, "%s tied=%d: prompt logits NMSE %g against the reference", arch, tied, e);
    CHECK(argmax(want, info.n_vocab) == argmax(got, info.n_vocab), "%s: argmax differs", arch);
    /* then token by token, through the KV cache */
    int32_t next = argmax(got, info.n_vocab);
    for (int s = 0; s < 6; s++) {
        CHECK(ferry_model_decode(m, &next, 1, got, &err) == FERRY_OK, "%s: step: %s", arch, err.msg);
        ref_step(&r, next, want);
        e = test_nmse(want, got, info.n_vocab);
        CHECK(e < 1e-4, "%s tied=%d: step %d logits NMSE %g", arch, tied, s, e);
        next = argmax(want, info.n_vocab);
    }
    free(got), free(want), free(t);
    ref_free(&r);
    ferry_gguf_close(g);
    ferry_model_free(m);
}

static void test_types(void) {
    enum ferry_type types[] = { FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0,
                                FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char path[128], file[64];
        snprintf(file, sizeof file, "t-%s.gguf", ferry_type_name(types[i]));
        if (!gen(file, "llama", types[i], false, 2, path, sizeof path)) continue;
        struct ferry_error err = { 0 };
        struct ferry_model *m = load(path, NULL, 0, NULL, -1, &err);
        if (!CHECK(m != NULL, "load %s: %s", file, err.msg)) continue;
        struct ferry_gguf *g = NULL;
        ferry_gguf_open(path, &g, &err);
        struct ref r;
        ref_init(&r, g, 64);
        size_t n = 0;
        int32_t *t = tokenize(ferry_model_vocab(m), "Weights of every type", &n);
        float *got = malloc(512 * sizeof(float)), *want = malloc(512 * sizeof(float));
        CHECK(ferry_model_decode(m, t, (int)n, got, &err) == FERRY_OK, "%s: %s", file, err.msg);
        for (size_t j = 0; j < n; j++) ref_step(&r, t[j], j + 1 == n ? want : NULL);
        /* quantized activations (Q8_0/Q8_K) make these looser than f32 */
        double e = test_nmse(want, got, 512);
        CHECK(e < 5e-3, "%s: logits NMSE %g against the reference", file, e);
        free(got), free(want), free(t);
        ref_free(&r);
        ferry_gguf_close(g);
        ferry_model_free(m);
    }
}

static void test_split(void) {
    char path[128];
    if (!gen("split.gguf", "qwen3", FERRY_TYPE_Q8_0, false, 4, path, sizeof path)) return;
    struct test_server s1, s2;
    if (!server_start(&s1, 0) || !server_start_as(&s2, 0, true)) return;
    const char *both[2] = { s1.endpoint, s2.endpoint };
    struct ferry_error err = { 0 };
    struct run local, one, two, part, uneven;

    struct ferry_model *m = load(path, NULL, 0, NULL, -1, &err);
    CHECK(m != NULL, "local: %s", err.msg);
    if (m) generate(m, PROMPT, 24, 42, &local);
    CHECK(m && ferry_model_n_nodes(m) == 1, "local: one node");
    ferry_model_free(m);

    m = load(path, both, 1, NULL, -1, &err);
    CHECK(m != NULL, "one server: %s", err.msg);
    if (m) {
        generate(m, PROMPT, 24, 42, &one);
        same_run(&local, &one, "local vs one server");
        struct ferry_model_node_info ni;
        CHECK(ferry_model_n_nodes(m) == 2, "one server: local embedding + server");
        ferry_model_node_info(m, 1, &ni);
        CHECK(ni.layer_first == 0 && ni.layer_count == 4 && ni.output && !ni.embed, "server holds all layers and the head");
        CHECK(ni.graphs_recomputed >= 20, "unchanged graphs recomputed: %llu of %llu",
              (unsigned long long)ni.graphs_recomputed, (unsigned long long)(ni.graphs_sent + ni.graphs_recomputed));
        CHECK(ni.weight_bytes > 0 && ni.uploaded_bytes == ni.weight_bytes, "weights sent once");
        ferry_model_free(m);
    }

    m = load(path, both, 2, NULL, -1, &err);
    CHECK(m != NULL, "two servers: %s", err.msg);
    if (m) {
        generate(m, PROMPT, 24, 42, &two);
        same_run(&local, &two, "local vs two servers");
        struct ferry_model_node_info a, b;
        ferry_model_node_info(m, 1, &a);
        ferry_model_node_info(m, 2, &b);
        /* as llama.cpp: 5 units (4 layers + head) at 1:1 -> units 0-2 and 3-4 */
        CHECK(ferry_model_n_nodes(m) == 3 && a.layer_count == 3 && b.layer_count == 1 && b.output,
              "even split: layers 0-2, then 3 and the head (%d, %d)", a.layer_count, b.layer_count);
        ferry_model_free(m);
    }

    float split[2] = { 3, 1 };
    m = load(path, both, 2, split, 2, &err); /* layers 2-3 offloaded, head stays local */
    CHECK(m != NULL, "partial offload: %s", err.msg);
    if (m) {
        generate(m, PROMPT, 24, 42, &part);
        same_run(&local, &part, "local vs partial offload");
        struct ferry_model_node_info first, last;
        ferry_model_node_info(m, 0, &first);
        ferry_model_node_info(m, ferry_model_n_nodes(m) - 1, &last);
        CHECK(first.layer_count == 2 && first.embed, "local keeps layers 0-1 (%d)", first.layer_count);
        CHECK(!strcmp(last.name, "local") && last.output, "head back on the local engine");
        ferry_model_free(m);
    }

    m = load(path, both, 2, split, -1, &err); /* 3:1 of 5 offloaded units */
    CHECK(m != NULL, "uneven split: %s", err.msg);
    if (m) {
        generate(m, PROMPT, 24, 42, &uneven);
        same_run(&local, &uneven, "local vs 3/1 split");
        struct ferry_model_node_info a;
        ferry_model_node_info(m, 1, &a);
        CHECK(a.layer_count == 4 || a.layer_count == 3, "3/1 split gives the first server 3-4 layers (%d)",
              a.layer_count);
        ferry_model_free(m);
    }
    run_free(&local), run_free(&one), run_free(&two), run_free(&part), run_free(&uneven);
    test_server_stop(&s1);
    test_server_stop(&s2);
}

static void test_server_lost(void) {
    char path[128];
    if (!gen("lost.gguf", "llama", FERRY_TYPE_Q8_0, false, 4, path, sizeof path)) return;
    struct test_server s;
    if (!server_start(&s, 0)) return;
    int port = s.port;
    const char *ep[1] = { s.endpoint };
    struct ferry_error err = { 0 };
    struct ferry_model *m = load(path, ep, 1, NULL, -1, &err);
    if (!CHECK(m != NULL, "load: %s", err.msg)) {
        test_server_stop(&s);
        return;
    }
    struct ferry_model *local = load(path, NULL, 0, NULL, -1, &err);
    struct run want;
    generate(local, PROMPT, 4, 9, &want);

    size_t n = 0;
    int32_t *t = tokenize(ferry_model_vocab(m), PROMPT, &n);
    float *logits = malloc(512 * sizeof(float));
    CHECK(ferry_model_decode(m, t, (int)n, logits, &err) == FERRY_OK, "before: %s", err.msg);
    test_server_stop(&s); /* the server goes away mid-generation */
    int32_t id = 5;
    memset(&err, 0, sizeof err);
    int rc = ferry_model_decode(m, &id, 1, logits, &err);
    CHECK(rc != FERRY_OK && strstr(err.msg, ep[0]) != NULL, "lost server: error naming it (%d: %s)", rc, err.msg);
    rc = ferry_model_decode(m, &id, 1, logits, &err);
    CHECK(rc == FERRY_ERR_CLOSED, "later decodes fail fast (%d: %s)", rc, err.msg);
    rc = ferry_model_reset(m, &err);
    CHECK(rc != FERRY_OK, "reset while the server is down fails (%s)", err.msg);

    /* the server comes back on the same port: reset reconnects, re-uploads */
    struct test_server again;
    if (server_start(&again, port)) {
        rc = ferry_model_reset(m, &err);
        CHECK(rc == FERRY_OK, "reset after the server is back: %s", err.msg);
        struct run got;
        generate(m, PROMPT, 4, 9, &got);
        same_run(&want, &got, "after reconnect");
        run_free(&got);
        test_server_stop(&again);
    }
    run_free(&want);
    free(t);
    free(logits);
    ferry_model_free(m);
    ferry_model_free(local);
}

static void test_refusals(void) {
    char path[128];
    if (!gen("small.gguf", "llama", FERRY_TYPE_Q8_0, true, 2, path, sizeof path)) return;
    struct ferry_error err = { 0 };
    struct ferry_model *m = load(path, NULL, 0, NULL, -1, &err);
    if (!CHECK(m != NULL, "load: %s", err.msg)) return;
    int32_t bad[2] = { 3, 512 };
    CHECK(ferry_model_decode(m, bad, 2, NULL, &err) == FERRY_ERR_INVALID, "token out of range refused");
    int32_t neg = -1;
    CHECK(ferry_model_decode(m, &neg, 1, NULL, &err) == FERRY_ERR_INVALID, "negative token refused");
    CHECK(ferry_model_n_past(m) == 0, "refused tokens leave the cache alone");
    int32_t *many = calloc(600, sizeof *many);
    CHECK(ferry_model_decode(m, many, 600, NULL, &err) == FERRY_ERR_INVALID && strstr(err.msg, "context"),
          "more tokens than the context refused: %s", err.msg);
    free(many);
    ferry_model_free(m);

    /* nobody listening */
    const char *ep[1] = { "127.0.0.1:1" };
    m = load(path, ep, 1, NULL, -1, &err);
    CHECK(m == NULL && err.code == FERRY_ERR_REFUSED, "unreachable server: %s", err.msg);
    ferry_model_free(m);

    /* a file that is not a model */
    char junk[128];
    snprintf(junk, sizeof junk, "%s/junk.gguf", g_dir);
    FILE *f = fopen(junk, "wb");
    fputs("GGUF but not really", f);
    fclose(f);
    m = load(junk, NULL, 0, NULL, -1, &err);
    CHECK(m == NULL && err.msg[0], "junk file refused: %s", err.msg);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ferry-model-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    char xdg[] = "/tmp/ferry-model-xdg-XXXXXX"; /* the client's hash memo, not the user's */
    if (mkdtemp(xdg)) setenv("XDG_CACHE_HOME", xdg, 1);
    test_against_reference("llama", false);
    test_against_reference("llama", true);
    test_against_reference("qwen2", false);
    test_against_reference("qwen3", true);
    test_types();
    test_split();
    test_server_lost();
    test_refusals();
    test_remove_dir(g_dir);
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf '%s'", xdg);
    if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", xdg);
    return test_summary();
}
