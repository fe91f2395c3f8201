/* The model generator: every arch, weight type and vocabulary kind gives a
 * GGUF file with llama.cpp's keys, tensor names, types and shapes;
 * generation is deterministic; weights have the intended statistics and a
 * one-token forward pass gives spread-out logits; the Q4_K/Q6_K quantizers
 * round-trip; the vocabularies are well formed; bad parameters are refused;
 * size targets are met; the gen-model command works. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/gen.h"
#include "ferry/gguf.h"
#include "tensor/quantize_k.h"
#include "testutil.h"

/* The command is not part of libferry: build it in here to test it. */
#include "cli/gen_model.c"

static char tmpdir[256];

static int count_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static const char *const ARCH_NAMES[] = { "llama", "mistral", "qwen2", "qwen3" };
static const enum ferry_type WTYPES[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q8_0,
                                          FERRY_TYPE_Q4_0, FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K };
#define N_WTYPES (sizeof WTYPES / sizeof WTYPES[0])

static void path_in_tmp(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static struct ferry_gguf *gen_and_open(const struct ferry_gen_params *p, const char *name) {
    char path[512];
    path_in_tmp(path, sizeof path, name);
    struct ferry_error err = { 0 };
    int rc = ferry_gen_model(p, path, &err);
    if (!CHECK(rc == FERRY_OK, "gen %s: %s", name, err.msg)) return NULL;
    struct ferry_gguf *g = NULL;
    rc = ferry_gguf_open(path, &g, &err);
    CHECK(rc == FERRY_OK, "open %s: %s", name, err.msg);
    return g;
}

/* Dequantizes a whole tensor to f32 (malloc'd). */
static float *tensor_f32(const struct ferry_gguf *g, const char *name, int64_t *ne0, int64_t *ne1) {
    const struct ferry_gguf_tensor_info *t = ferry_gguf_find_tensor(g, name);
    if (!CHECK(t != NULL, "tensor %s missing", name)) return NULL;
    const int64_t n = t->ne[0] * t->ne[1];
    float *out = malloc((size_t)n * sizeof *out);
    ferry_type_traits(t->type)->to_float(t->data, out, n);
    *ne0 = t->ne[0];
    *ne1 = t->ne[1];
    return out;
}

/* ---- keys and tensors --------------------------------------------------- */

static bool key_u32(const struct ferry_gguf *g, const char *key, uint32_t want) {
    int64_t i = ferry_gguf_find_key(g, key);
    uint32_t v = 0;
    return CHECK(i >= 0 && ferry_gguf_kv_type(g, i) == FERRY_GGUF_U32 && ferry_gguf_get_u32(g, key, &v) && v == want,
                 "%s: want u32 %u, got %u", key, want, v);
}

static bool key_f32(const struct ferry_gguf *g, const char *key, float want) {
    float v = 0;
    return CHECK(ferry_gguf_get_f32(g, key, &v) && v == want, "%s: want %g, got %g", key, want, v);
}

static bool key_str(const struct ferry_gguf *g, const char *key, const char *want) {
    struct ferry_gguf_str s = { 0 };
    bool ok = ferry_gguf_get_str(g, key, &s) && s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
    return CHECK(ok, "%s: want \"%s\"", key, want);
}

static int expected_ftype(enum ferry_type t) {
    switch (t) {
    case FERRY_TYPE_F32: return 0;
    case FERRY_TYPE_F16: return 1;
    case FERRY_TYPE_Q4_0: return 2;
    case FERRY_TYPE_Q8_0: return 7;
    case FERRY_TYPE_Q4_K: return 15;
    case FERRY_TYPE_Q6_K: return 18;
    case FERRY_TYPE_BF16: return 32;
    default: return -1;
    }
}

static void check_keys(const struct ferry_gguf *g, const struct ferry_gen_params *p) {
    const bool qwen = strncmp(p->arch, "qwen", 4) == 0;
    /* "mistral" files are llama-architecture files, as real ones are */
    const char *arch = strcmp(p->arch, "mistral") == 0 ? "llama" : p->arch;
    const float rope_base = strcmp(p->arch, "llama") == 0 ? 10000.0f : 1000000.0f;
    const uint32_t hd = (uint32_t)(p->n_embd / p->n_head);
    char key[128];
    key_str(g, "general.architecture", arch);
    struct ferry_gguf_str name = { 0 };
    CHECK(ferry_gguf_get_str(g, "general.name", &name) && name.len > 10 && memcmp(name.ptr, "ferry-gen ", 10) == 0,
          "general.name");
    key_u32(g, "general.file_type", (uint32_t)expected_ftype(p->wtype));
    key_u32(g, "general.quantization_version", 2);
#define KU(suffix, v) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key_u32(g, key, (uint32_t)(v)))
#define KF(suffix, v) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key_f32(g, key, v))
    KU("context_length", p->n_ctx);
    KU("embedding_length", p->n_embd);
    KU("block_count", p->n_layer);
    KU("feed_forward_length", p->n_ff);
    KU("attention.head_count", p->n_head);
    KU("attention.head_count_kv", p->n_head_kv);
    KF("attention.layer_norm_rms_epsilon", qwen ? 1e-6f : 1e-5f);
    KF("rope.freq_base", rope_base);
    KU("rope.dimension_count", hd);
    KU("attention.key_length", hd);
    KU("attention.value_length", hd);
    KU("vocab_size", p->n_vocab);
#undef KU
#undef KF
    key_str(g, "tokenizer.ggml.model", p->vocab);
}

struct want_tensor {
    char name[64];
    enum ferry_type type;
    int n_dims;
    int64_t ne0, ne1;
};

static int expected_tensors(const struct ferry_gen_params *p, struct want_tensor *w) {
    const int64_t E = p->n_embd, F = p->n_ff, V = p->n_vocab, hd = E / p->n_head, kv = hd * p->n_head_kv;
    const enum ferry_type q = p->wtype, f = FERRY_TYPE_F32;
    int n = 0;
#define W(type_, nd, a, b, ...) (snprintf(w[n].name, sizeof w[n].name, __VA_ARGS__), w[n].type = type_, \
                                  w[n].n_dims = nd, w[n].ne0 = a, w[n].ne1 = b, n++)
    W(q, 2, E, V, "token_embd.weight");
    W(f, 1, E, 1, "output_norm.weight");
    if (!p->tied_output) W(q, 2, E, V, "output.weight");
    for (int i = 0; i < p->n_layer; i++) {
        W(f, 1, E, 1, "blk.%d.attn_norm.weight", i);
        W(q, 2, E, E, "blk.%d.attn_q.weight", i);
        W(q, 2, E, kv, "blk.%d.attn_k.weight", i);
        W(q, 2, E, kv, "blk.%d.attn_v.weight", i);
        W(q, 2, E, E, "blk.%d.attn_output.weight", i);
        W(f, 1, E, 1, "blk.%d.ffn_norm.weight", i);
        W(q, 2, E, F, "blk.%d.ffn_gate.weight", i);
        W(q, 2, E, F, "blk.%d.ffn_up.weight", i);
        W(q, 2, F, E, "blk.%d.ffn_down.weight", i);
        if (strcmp(p->arch, "qwen2") == 0) {
            W(f, 1, E, 1, "blk.%d.attn_q.bias", i);
            W(f, 1, kv, 1, "blk.%d.attn_k.bias", i);
            W(f, 1, kv, 1, "blk.%d.attn_v.bias", i);
        }
        if (strcmp(p->arch, "qwen3") == 0) {
            W(f, 1, hd, 1, "blk.%d.attn_q_norm.weight", i);
            W(f, 1, hd, 1, "blk.%d.attn_k_norm.weight", i);
        }
    }
#undef W
    return n;
}

static void check_tensors(const struct ferry_gguf *g, const struct ferry_gen_params *p, const char *what) {
    struct want_tensor want[3 + 8 * 14];
    int n = expected_tensors(p, want);
    CHECK(ferry_gguf_n_tensors(g) == n, "%s: %lld tensors, want %d", what, (long long)ferry_gguf_n_tensors(g), n);
    for (int i = 0; i < n; i++) {
        const struct ferry_gguf_tensor_info *t = ferry_gguf_find_tensor(g, want[i].name);
        if (!CHECK(t != NULL, "%s: tensor %s missing", what, want[i].name)) continue;
        CHECK(t->type == want[i].type && t->n_dims == want[i].n_dims && t->ne[0] == want[i].ne0 &&
                  t->ne[1] == want[i].ne1,
              "%s: %s is %s [%lld, %lld] (%d dims)", what, want[i].name, ferry_type_name(t->type),
              (long long)t->ne[0], (long long)t->ne[1], t->n_dims);
    }
}

/* Every arch x weight type x tied/untied x vocabulary kind. */
static void test_all_variants(void) {
    int made = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t t = 0; t < N_WTYPES; t++)
            for (int tied = 0; tied < 2; tied++)
                for (int v = 0; v < 2; v++) {
                    struct ferry_gen_params p;
                    ferry_gen_params_defaults(&p);
                    p.arch = ARCH_NAMES[a];
                    p.wtype = WTYPES[t];
                    p.tied_output = tied;
                    p.vocab = v ? "llama" : "gpt2";
                    p.n_embd = 256, p.n_ff = 512, p.n_head = 4, p.n_head_kv = 2, p.n_vocab = 320 + 8 * (int)t;
                    char name[64], what[96];
                    snprintf(name, sizeof name, "v_%zu_%zu_%d_%d.gguf", a, t, tied, v);
                    snprintf(what, sizeof what, "%s/%s/%s/%s", p.arch, ferry_type_name(p.wtype), tied ? "tied" : "untied", p.vocab);
                    struct ferry_gguf *g = gen_and_open(&p, name);
                    if (!g) continue;
                    check_keys(g, &p);
                    check_tensors(g, &p, what);
                    CHECK(ferry_gguf_version(g) == 3, "%s: version", what);
                    ferry_gguf_close(g);
                    char path[512];
                    path_in_tmp(path, sizeof path, name);
                    unlink(path);
                    made++;
                }
    CHECK(made == 4 * (int)N_WTYPES * 4, "all %d variants generated", made);
}

/* ---- determinism ---------------------------------------------------------- */

static void test_determinism(void) {
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    char a[512], b[512], c[512];
    path_in_tmp(a, sizeof a, "det_a.gguf");
    path_in_tmp(b, sizeof b, "det_b.gguf");
    path_in_tmp(c, sizeof c, "det_c.gguf");
    struct ferry_error err = { 0 };
    CHECK(ferry_gen_model(&p, a, &err) == FERRY_OK, "gen a: %s", err.msg);
    CHECK(ferry_gen_model(&p, b, &err) == FERRY_OK, "gen b: %s", err.msg);
    p.seed = 2;
    CHECK(ferry_gen_model(&p, c, &err) == FERRY_OK, "gen c: %s", err.msg);
    size_t na = 0, nb = 0, nc = 0;
    uint8_t *fa = test_read_file(a, &na), *fb = test_read_file(b, &nb), *fc = test_read_file(c, &nc);
    CHECK(fa && fb && na == nb && memcmp(fa, fb, na) == 0, "same seed gives identical bytes");
    CHECK(fc && nc == na, "another seed gives the same size");
    struct ferry_gguf *ga = NULL, *gc = NULL;
    ferry_gguf_open(a, &ga, &err);
    ferry_gguf_open(c, &gc, &err);
    if (CHECK(ga && gc, "open det files")) {
        CHECK(ferry_gguf_data_offset(ga) == ferry_gguf_data_offset(gc), "another seed: same metadata layout");
        CHECK(memcmp(fa, fc, ferry_gguf_data_offset(ga)) == 0, "another seed: same metadata bytes");
        for (int64_t i = 0; i < ferry_gguf_n_tensors(ga); i++) {
            const struct ferry_gguf_tensor_info *ta = ferry_gguf_tensor(ga, i), *tc = ferry_gguf_tensor(gc, i);
            CHECK(memcmp(ta->data, tc->data, ta->size) != 0, "another seed changes %s", ta->name);
        }
    }
    ferry_gguf_close(ga);
    ferry_gguf_close(gc);
    free(fa);
    free(fb);
    free(fc);
    unlink(a);
    unlink(b);
    unlink(c);
    CHECK(count_files() == 0, "no temporary file left");
}

/* ---- statistics and a forward pass ---------------------------------------- */

static void stats(const float *x, int64_t n, double *mean, double *std) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) { s += x[i]; s2 += (double)x[i] * x[i]; }
    *mean = s / (double)n;
    *std = sqrt(s2 / (double)n - *mean * *mean);
}

static void check_stats(const struct ferry_gguf *g, const char *name, double want_mean, double want_std,
                        const char *what) {
    int64_t ne0, ne1;
    float *x = tensor_f32(g, name, &ne0, &ne1);
    if (!x) return;
    double mean, std;
    stats(x, ne0 * ne1, &mean, &std);
    /* sampling error (4 sigma) plus a little quantization noise */
    const double n = (double)(ne0 * ne1);
    const double tol_mean = 4 * want_std / sqrt(n) + 0.01 * want_std, tol_std = 4 / sqrt(2 * n) + 0.08;
    CHECK(fabs(mean - want_mean) < tol_mean && fabs(std - want_std) < tol_std * want_std,
          "%s %s: mean %g std %g, want %g / %g", what, name, mean, std, want_mean, want_std);
    free(x);
}

static void rms_norm(const float *x, const float *w, float *y, int64_t n, float eps) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    const float k = 1.0f / sqrtf((float)(s / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * k * w[i];
}

/* y[ne1] = W x for a GGUF weight of shape [ne0, ne1]. */
static void matvec(const float *W, const float *x, float *y, int64_t ne0, int64_t ne1) {
    for (int64_t j = 0; j < ne1; j++) {
        double s = 0;
        for (int64_t i = 0; i < ne0; i++) s += (double)W[j * ne0 + i] * x[i];
        y[j] = (float)s;
    }
}

struct model {
    int64_t E, F, V, n_layer, hd, n_head, n_head_kv;
    float *embd, *out, *out_norm;
    float **w; /* per layer: attn_norm, v, v_bias or NULL, o, ffn_norm, gate, up, down */
};

enum { L_ATTN_NORM, L_V, L_V_BIAS, L_O, L_FFN_NORM, L_GATE, L_UP, L_DOWN, L_COUNT };

static bool load_model(const struct ferry_gguf *g, const struct ferry_gen_params *p, struct model *m) {
    int64_t a, b;
    m->E = p->n_embd, m->F = p->n_ff, m->V = p->n_vocab, m->n_layer = p->n_layer;
    m->n_head = p->n_head, m->n_head_kv = p->n_head_kv, m->hd = m->E / m->n_head;
    m->embd = tensor_f32(g, "token_embd.weight", &a, &b);
    m->out = p->tied_output ? m->embd : tensor_f32(g, "output.weight", &a, &b);
    m->out_norm = tensor_f32(g, "output_norm.weight", &a, &b);
    m->w = calloc((size_t)(m->n_layer * L_COUNT), sizeof *m->w);
    static const char *const names[L_COUNT] = { "attn_norm.weight", "attn_v.weight", "attn_v.bias", "attn_output.weight",
                                                "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight" };
    for (int64_t l = 0; l < m->n_layer; l++)
        for (int k = 0; k < L_COUNT; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s", (int)l, names[k]);
            if (k == L_V_BIAS && !ferry_gguf_find_tensor(g, name)) continue;
            m->w[l * L_COUNT + k] = tensor_f32(g, name, &a, &b);
        }
    return m->embd && m->out && m->out_norm;
}

static void free_model(struct model *m, bool tied) {
    for (int64_t i = 0; i < m->n_layer * L_COUNT; i++) free(m->w[i]);
    free(m->w);
    if (!tied) free(m->out);
    free(m->embd);
    free(m->out_norm);
}

/* Logits after one token at position 0: attention over a single position
 * returns that position's value rows, so q, k and RoPE drop out. */
static void forward_one(const struct model *m, int32_t tok, float eps, float *logits) {
    const int64_t E = m->E, kv = m->hd * m->n_head_kv;
    float *h = malloc((size_t)E * sizeof *h), *x = malloc((size_t)E * sizeof *x), *v = malloc((size_t)kv * sizeof *v);
    float *att = malloc((size_t)E * sizeof *att), *t = malloc((size_t)(E > m->F ? E : m->F) * sizeof *t);
    float *gate = malloc((size_t)m->F * sizeof *gate), *up = malloc((size_t)m->F * sizeof *up);
    memcpy(h, m->embd + (int64_t)tok * E, (size_t)E * sizeof *h);
    for (int64_t l = 0; l < m->n_layer; l++) {
        float *const *w = m->w + l * L_COUNT;
        rms_norm(h, w[L_ATTN_NORM], x, E, eps);
        matvec(w[L_V], x, v, E, kv);
        if (w[L_V_BIAS])
            for (int64_t i = 0; i < kv; i++) v[i] += w[L_V_BIAS][i];
        for (int64_t hh = 0; hh < m->n_head; hh++) /* grouped heads share a kv head */
            memcpy(att + hh * m->hd, v + (hh / (m->n_head / m->n_head_kv)) * m->hd, (size_t)m->hd * sizeof *v);
        matvec(w[L_O], att, t, E, E);
        for (int64_t i = 0; i < E; i++) h[i] += t[i];
        rms_norm(h, w[L_FFN_NORM], x, E, eps);
        matvec(w[L_GATE], x, gate, E, m->F);
        matvec(w[L_UP], x, up, E, m->F);
        for (int64_t i = 0; i < m->F; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        matvec(w[L_DOWN], gate, t, m->F, E);
        for (int64_t i = 0; i < E; i++) h[i] += t[i];
    }
    rms_norm(h, m->out_norm, x, E, eps);
    matvec(m->out, x, logits, E, m->V);
    free(h), free(x), free(v), free(att), free(t), free(gate), free(up);
}

static void check_logits(const struct ferry_gguf *g, const struct ferry_gen_params *p, const char *what) {
    struct model m;
    bool ok = load_model(g, p, &m);
    float *logits = malloc((size_t)p->n_vocab * sizeof *logits);
    const int n_in = 64;
    int distinct = 0, self = 0;
    int32_t *seen = calloc((size_t)p->n_vocab, sizeof *seen);
    double worst_top = 0, mean_top = 0, min_std = 1e9, max_std = 0;
    for (int32_t tok = 0; tok < n_in && ok; tok++) {
        forward_one(&m, tok * 7 % p->n_vocab, 1e-5f, logits);
        double mean, std;
        stats(logits, p->n_vocab, &mean, &std);
        int32_t best = 0;
        for (int32_t i = 1; i < p->n_vocab; i++)
            if (logits[i] > logits[best]) best = i;
        double z = 0;
        for (int32_t i = 0; i < p->n_vocab; i++) z += exp((double)logits[i] - logits[best]);
        worst_top = fmax(worst_top, 1.0 / z);
        mean_top += 1.0 / z / n_in;
        min_std = fmin(min_std, std), max_std = fmax(max_std, std);
        if (!seen[best]++) distinct++;
        self += best == tok * 7 % p->n_vocab;
    }
    CHECK(ok && min_std > 0.5 && max_std < 8, "%s: logits std %g .. %g", what, min_std, max_std);
    /* a 1000-token softmax of std 2 peaks now and then; on average it is flat */
    CHECK(ok && mean_top < 0.2 && worst_top < 0.8, "%s: top probability %g on average, %g at most", what, mean_top,
          worst_top);
    CHECK(ok && distinct >= n_in / 2, "%s: greedy next tokens: %d distinct of %d", what, distinct, n_in);
    CHECK(ok && self <= n_in / 8, "%s: %d tokens predict themselves", what, self);
    free(seen);
    free(logits);
    free_model(&m, p->tied_output);
}

static void test_weights(void) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (int tied = 0; tied < 2; tied++) {
            struct ferry_gen_params p;
            ferry_gen_params_defaults(&p);
            p.arch = tied ? "qwen2" : "llama";
            p.wtype = types[t];
            p.tied_output = tied;
            p.n_embd = 256, p.n_ff = 768, p.n_layer = 4, p.n_head = 8, p.n_head_kv = 2, p.n_vocab = 1000;
            char name[64], what[64];
            snprintf(name, sizeof name, "w_%zu_%d.gguf", t, tied);
            snprintf(what, sizeof what, "%s %s%s", p.arch, ferry_type_name(p.wtype), tied ? " tied" : "");
            struct ferry_gguf *g = gen_and_open(&p, name);
            if (!g) continue;
            const double s_in = 1.0 / sqrt(256.0), depth = 4.0 / sqrt(8.0);
            check_stats(g, "token_embd.weight", 0, 2 * s_in, what);
            check_stats(g, "blk.0.attn_q.weight", 0, s_in, what);
            check_stats(g, "blk.3.ffn_up.weight", 0, s_in, what);
            check_stats(g, "blk.1.attn_output.weight", 0, s_in * depth, what);
            check_stats(g, "blk.2.ffn_down.weight", 0, depth / sqrt(768.0), what);
            check_stats(g, "blk.0.attn_norm.weight", 1, 0.02, what);
            check_stats(g, "output_norm.weight", 1, 0.02, what);
            if (tied) check_stats(g, "blk.0.attn_k.bias", 0, 0.02, what);
            check_logits(g, &p, what);
            ferry_gguf_close(g);
        }
}

/* ---- Q4_K / Q6_K quantizers ---------------------------------------------- */

static double round_trip_nmse(enum ferry_type type, const float *x, int64_t n, float *y, void *q) {
    if (type == FERRY_TYPE_Q4_K) ferry_quant_row_q4_K_simple(x, q, n);
    else ferry_quant_row_q6_K_simple(x, q, n);
    ferry_type_traits(type)->to_float(q, y, n);
    return test_nmse(x, y, n);
}

static void test_quantizers(void) {
    const int64_t n = 256 * 64;
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    void *q = malloc((size_t)n * sizeof(float));
    uint64_t s = 42;
    static const enum ferry_type types[] = { FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K };
    static const double bound_normal[] = { 0.01, 0.0006 }; /* about 4 and 6 bits of signal */
    for (int t = 0; t < 2; t++) {
        const char *tn = ferry_type_name(types[t]);
        /* roughly normal data, as the generator produces */
        for (int64_t i = 0; i < n; i++) {
            float u = 0;
            for (int k = 0; k < 4; k++) u += test_rand_uniform(&s, -1, 1);
            x[i] = 0.02f * u;
        }
        double e = round_trip_nmse(types[t], x, n, y, q);
        CHECK(e < bound_normal[t], "%s normal: nmse %g", tn, e);
        /* uniform data over a wide range with a different scale per block */
        for (int64_t i = 0; i < n; i++) x[i] = test_rand_uniform(&s, -1, 1) * (float)(1 + (i / 256) % 7) * 3.0f;
        e = round_trip_nmse(types[t], x, n, y, q);
        CHECK(e < 2 * bound_normal[t], "%s uniform: nmse %g", tn, e);
        /* one-signed data: Q4_K's min must carry the offset */
        for (int64_t i = 0; i < n; i++) x[i] = test_rand_uniform(&s, 0.5f, 1.5f) * (i % 512 < 256 ? 1.0f : -1.0f);
        e = round_trip_nmse(types[t], x, n, y, q);
        CHECK(e < bound_normal[t], "%s one-signed: nmse %g", tn, e);
        /* zeros stay zeros */
        memset(x, 0, (size_t)n * sizeof *x);
        round_trip_nmse(types[t], x, n, y, q);
        bool zero = true;
        for (int64_t i = 0; i < n; i++) zero &= y[i] == 0.0f;
        CHECK(zero, "%s zeros round-trip to zeros", tn);
        /* the largest magnitude per block is kept closely */
        for (int64_t i = 0; i < 256; i++) x[i] = (float)(i % 17) - 8.0f;
        x[100] = 50.0f;
        round_trip_nmse(types[t], x, 256, y, q);
        CHECK(fabsf(y[100] - 50.0f) < 50.0f * 0.02f, "%s keeps the peak: %g", tn, y[100]);
    }
    free(x);
    free(y);
    free(q);
}

/* ---- vocabularies ------------------------------------------------------------ */

/* The GPT-2 symbol of byte b, UTF-8 encoded. */
static void gpt2_symbol(unsigned b, char out[4]) {
    unsigned cp = b, shift = 256;
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    if (!printable)
        for (unsigned k = 0; k < b; k++)
            shift += !((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174);
    if (!printable) cp = shift;
    memset(out, 0, 4);
    if (cp < 0x80) out[0] = (char)cp;
    else { out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); }
}

struct tokens {
    char **s;
    int64_t n;
};

static struct tokens read_tokens(const struct ferry_gguf *g, const char *key) {
    struct tokens t = { 0 };
    enum ferry_gguf_type et;
    uint64_t n = 0;
    const void *data;
    if (!ferry_gguf_get_arr(g, key, &et, &n, &data) || et != FERRY_GGUF_STRING) return t;
    t.s = calloc(n, sizeof *t.s);
    for (uint64_t j = 0; j < n; j++) {
        struct ferry_gguf_str s;
        ferry_gguf_get_arr_str(g, key, j, &s);
        t.s[j] = calloc(s.len + 1, 1);
        memcpy(t.s[j], s.ptr, s.len);
    }
    t.n = (int64_t)n;
    return t;
}

static void free_tokens(struct tokens *t) {
    for (int64_t i = 0; i < t->n; i++) free(t->s[i]);
    free(t->s);
}

static int64_t find_token(const struct tokens *t, const char *s) {
    for (int64_t i = 0; i < t->n; i++)
        if (strcmp(t->s[i], s) == 0) return i;
    return -1;
}

static int32_t arr_i32(const struct ferry_gguf *g, const char *key, uint64_t i) {
    enum ferry_gguf_type et;
    uint64_t n;
    const void *data;
    int32_t v = -999;
    if (ferry_gguf_get_arr(g, key, &et, &n, &data) && et == FERRY_GGUF_I32 && i < n)
        memcpy(&v, (const uint8_t *)data + 4 * i, 4);
    return v;
}

static bool all_distinct(const struct tokens *t) {
    for (int64_t i = 0; i < t->n; i++)
        for (int64_t j = i + 1; j < t->n; j++)
            if (strcmp(t->s[i], t->s[j]) == 0) return false;
    return true;
}

static void check_gpt2_vocab(const struct ferry_gguf *g, int32_t n_vocab, int *n_merges_out) {
    struct tokens tok = read_tokens(g, "tokenizer.ggml.tokens"), merges = read_tokens(g, "tokenizer.ggml.merges");
    CHECK(tok.n == n_vocab, "gpt2 %d: %lld tokens", n_vocab, (long long)tok.n);
    bool bytes_ok = tok.n >= 256;
    for (unsigned b = 0; b < 256 && bytes_ok; b++) {
        char sym[4];
        gpt2_symbol(b, sym);
        int64_t id = find_token(&tok, sym);
        bytes_ok = id >= 0 && id < 256;
    }
    CHECK(bytes_ok, "gpt2: tokens 0..255 are the 256 byte symbols");
    CHECK(tok.n > 33 && strcmp(tok.s[0], "!") == 0 && find_token(&tok, "\xc4\xa0") == 220,
          "gpt2: GPT-2 order: \"!\" is token 0, the space symbol is token 220");
    bool merges_ok = merges.n > 0;
    for (int64_t i = 0; i < merges.n && merges_ok; i++) {
        char *sp = strchr(merges.s[i], ' ');
        if (!sp || strchr(sp + 1, ' ')) { merges_ok = false; break; }
        *sp = '\0';
        char joined[256];
        snprintf(joined, sizeof joined, "%s%s", merges.s[i], sp + 1);
        merges_ok = find_token(&tok, merges.s[i]) >= 0 && find_token(&tok, sp + 1) >= 0 && find_token(&tok, joined) >= 0;
        if (!merges_ok) fprintf(stderr, "merge %lld: \"%s\" \"%s\"\n", (long long)i, merges.s[i], sp + 1);
    }
    CHECK(merges_ok, "gpt2: every merge's parts and concatenation are tokens (%lld merges)", (long long)merges.n);
    CHECK(all_distinct(&tok), "gpt2: tokens are distinct");
    uint32_t bos = 0, eos = 0;
    bool add_bos = false;
    CHECK(ferry_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &bos) && bos < tok.n &&
              strcmp(tok.s[bos], "<|begin_of_text|>") == 0 && arr_i32(g, "tokenizer.ggml.token_type", bos) == 3,
          "gpt2: bos");
    CHECK(ferry_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &eos) && eos < tok.n &&
              strcmp(tok.s[eos], "<|end_of_text|>") == 0 && arr_i32(g, "tokenizer.ggml.token_type", eos) == 3,
          "gpt2: eos");
    CHECK(ferry_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos) && add_bos, "gpt2: add_bos_token");
    key_str(g, "tokenizer.ggml.pre", "default");
    bool types_ok = true;
    for (int64_t i = 0; i < tok.n; i++) {
        int32_t ty = arr_i32(g, "tokenizer.ggml.token_type", (uint64_t)i);
        bool unused = strncmp(tok.s[i], "<unused_", 8) == 0;
        types_ok &= (uint32_t)i == bos || (uint32_t)i == eos ? ty == 3 : unused ? ty == 5 : ty == 1;
    }
    CHECK(types_ok, "gpt2: token types 1 / 3");
    *n_merges_out = (int)merges.n;
    free_tokens(&tok);
    free_tokens(&merges);
}

static void check_llama_vocab(const struct ferry_gguf *g, int32_t n_vocab) {
    struct tokens tok = read_tokens(g, "tokenizer.ggml.tokens");
    CHECK(tok.n == n_vocab, "llama %d: %lld tokens", n_vocab, (long long)tok.n);
    CHECK(tok.n > 259 && strcmp(tok.s[0], "<unk>") == 0 && strcmp(tok.s[1], "<s>") == 0 && strcmp(tok.s[2], "</s>") == 0,
          "llama: <unk> <s> </s>");
    bool bytes_ok = tok.n > 259;
    for (int b = 0; b < 256 && bytes_ok; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        bytes_ok = strcmp(tok.s[3 + b], name) == 0 && arr_i32(g, "tokenizer.ggml.token_type", (uint64_t)(3 + b)) == 6;
    }
    CHECK(bytes_ok, "llama: byte tokens <0x00>..<0xFF> of type 6");
    enum ferry_gguf_type et;
    uint64_t n_scores = 0;
    const void *scores;
    CHECK(ferry_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n_scores, &scores) && et == FERRY_GGUF_F32 &&
              n_scores == (uint64_t)n_vocab,
          "llama: %llu scores", (unsigned long long)n_scores);
    CHECK(all_distinct(&tok), "llama: tokens are distinct");
    CHECK(arr_i32(g, "tokenizer.ggml.token_type", 0) == 2 && arr_i32(g, "tokenizer.ggml.token_type", 1) == 3, "llama: types");
    uint32_t v = 9;
    CHECK(ferry_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v) && v == 1, "llama: bos 1");
    CHECK(ferry_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v) && v == 2, "llama: eos 2");
    CHECK(ferry_gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &v) && v == 0, "llama: unk 0");
    if (n_vocab >= 512)
        CHECK(find_token(&tok, "\xe2\x96\x81") >= 0 && find_token(&tok, "\xe2\x96\x81the") >= 0,
              "llama: \"\xe2\x96\x81\" and \"\xe2\x96\x81the\" pieces");
    /* Every longer piece was merged from two pieces made before it, which
     * score higher (earlier merges win); single characters score lowest. */
    bool scores_ok = n_scores == (uint64_t)tok.n, merged_ok = true;
    float min_merged = 0, max_char = -1e30f;
    for (int64_t i = 259; i < tok.n && scores_ok; i++) {
        if (arr_i32(g, "tokenizer.ggml.token_type", (uint64_t)i) != 1) continue;
        float si;
        memcpy(&si, (const uint8_t *)scores + 4 * i, 4);
        if (si <= -1e6f) continue; /* a made-up filler word: never merged into */
        const char *s = tok.s[i];
        size_t len = strlen(s);
        bool one_char = len == 1 || strcmp(s, "\xe2\x96\x81") == 0;
        if (one_char) { max_char = fmaxf(max_char, si); continue; }
        min_merged = fminf(min_merged, si);
        bool found = false;
        for (size_t cut = 1; cut < len && !found; cut++) {
            char left[256];
            snprintf(left, sizeof left, "%.*s", (int)cut, s);
            int64_t a = find_token(&tok, left), b = find_token(&tok, s + cut);
            float sa, sb;
            if (a < 259 || b < 259) continue;
            memcpy(&sa, (const uint8_t *)scores + 4 * a, 4);
            memcpy(&sb, (const uint8_t *)scores + 4 * b, 4);
            bool a_ok = sa > si || strlen(tok.s[a]) == 1 || strcmp(tok.s[a], "\xe2\x96\x81") == 0;
            bool b_ok = sb > si || strlen(tok.s[b]) == 1 || strcmp(tok.s[b], "\xe2\x96\x81") == 0;
            found = a_ok && b_ok;
        }
        merged_ok &= found && si < 0;
    }
    CHECK(scores_ok && merged_ok, "llama: every merged piece comes from two earlier pieces");
    CHECK(max_char < min_merged || min_merged == 0, "llama: characters score below merges (%g, %g)", max_char, min_merged);
    free_tokens(&tok);
}

static void test_vocabs(void) {
    static const int32_t sizes[] = { 300, 301, 512, 2000, 32000 };
    int merges_at_32000 = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (int v = 0; v < 2; v++) {
            struct ferry_gen_params p;
            ferry_gen_params_defaults(&p);
            p.vocab = v ? "llama" : "gpt2";
            p.n_vocab = sizes[i];
            p.n_layer = 1;
            p.wtype = FERRY_TYPE_F16;
            struct ferry_gguf *g = gen_and_open(&p, "vocab.gguf");
            if (!g) continue;
            if (v) check_llama_vocab(g, p.n_vocab);
            else if (sizes[i] <= 2000) check_gpt2_vocab(g, p.n_vocab, &merges_at_32000);
            else {
                check_gpt2_vocab(g, p.n_vocab, &merges_at_32000);
                CHECK(merges_at_32000 > 250, "gpt2: training ran until no pair repeats: %d merges", merges_at_32000);
            }
            ferry_gguf_close(g);
        }
}

/* ---- invalid parameters ------------------------------------------------------- */

static void expect_refused(struct ferry_gen_params p, const char *why, const char *msg_part) {
    char path[512];
    path_in_tmp(path, sizeof path, "bad.gguf");
    struct ferry_error err = { 0 };
    int rc = ferry_gen_model(&p, path, &err);
    CHECK(rc != FERRY_OK && strstr(err.msg, msg_part) != NULL, "%s refused: rc %d, \"%s\"", why, rc, err.msg);
    CHECK(access(path, F_OK) != 0 && count_files() == 0, "%s: no file written", why);
}

static void test_invalid(void) {
    struct ferry_gen_params d, p;
    ferry_gen_params_defaults(&d);
    p = d, p.n_embd = 66;
    expect_refused(p, "n_embd not divisible by n_head", "divisible");
    p = d, p.n_head = 4, p.n_head_kv = 3;
    expect_refused(p, "n_head not a multiple of n_head_kv", "n_head_kv");
    p = d, p.n_vocab = 299;
    expect_refused(p, "n_vocab too small", "n_vocab");
    p = d, p.wtype = FERRY_TYPE_Q4_K; /* n_embd 64 */
    expect_refused(p, "q4_K with n_embd 64", "multiples of 256");
    p = d, p.n_ff = 100; /* q8_0 */
    expect_refused(p, "q8_0 with n_ff 100", "multiples of 32");
    p = d, p.wtype = FERRY_TYPE_Q4_1;
    expect_refused(p, "an unsupported type", "not one of");
    p = d, p.arch = "gpt2";
    expect_refused(p, "an unknown arch", "arch");
    p = d, p.vocab = "wordpiece";
    expect_refused(p, "an unknown vocabulary", "vocabulary");
    p = d, p.n_layer = 0;
    expect_refused(p, "zero layers", "n_layer");
    struct ferry_error err = { 0 };
    CHECK(ferry_gen_model(&d, "/nonexistent-dir/x.gguf", &err) == FERRY_ERR_IO, "unwritable path: %s", err.msg);
}

/* ---- size targets ------------------------------------------------------------- */

static double estimated_file(const struct ferry_gen_params *p) {
    return (double)ferry_gen_data_bytes(p) + 28.0 * p->n_vocab + 16384;
}

static void test_sizes(void) {
    static const double targets[] = { 1.5e6, 3e6, 10e6, 100e6, 300e6, 1e9, 4e9, 20e9, 60e9 };
    for (size_t t = 0; t < N_WTYPES; t++)
        for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
            struct ferry_gen_params p;
            ferry_gen_params_defaults(&p);
            p.wtype = WTYPES[t];
            p.tied_output = i % 2;
            struct ferry_error err = { 0 };
            int rc = ferry_gen_params_for_size(&p, (uint64_t)targets[i], &err);
            if (!CHECK(rc == FERRY_OK, "for_size %g %s: %s", targets[i], ferry_type_name(p.wtype), err.msg)) continue;
            double est = estimated_file(&p);
            /* the smallest targets cannot be met by a full-width f32 layer */
            double tol = targets[i] < 5e6 && ferry_type_size(p.wtype) >= 2 ? 0.35 : 0.10;
            CHECK(fabs(est / targets[i] - 1) < tol && ferry_gen_params_check(&p, &err) == FERRY_OK,
                  "for_size %g %s: %.4g bytes (n_embd %d, %d layers, n_ff %d, vocab %d)", targets[i],
                  ferry_type_name(p.wtype), est, p.n_embd, p.n_layer, p.n_ff, p.n_vocab);
        }
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    struct ferry_error err = { 0 };
    CHECK(ferry_gen_params_for_size(&p, 500000, &err) == FERRY_ERR_INVALID, "500 kB refused");
    CHECK(ferry_gen_params_for_size(&p, (65ull << 30), &err) == FERRY_ERR_INVALID, "65 GiB refused");
    /* the shapes the documentation promises */
    p.wtype = FERRY_TYPE_Q8_0;
    ferry_gen_params_for_size(&p, 100ull << 20, &err);
    CHECK(p.n_embd == 768 && p.n_head == 12 && p.n_head_kv == 4 && p.n_ff == 2048, "100M: 768-wide (%d)", p.n_embd);
    ferry_gen_params_for_size(&p, 1ull << 30, &err);
    CHECK(p.n_embd == 2048 && p.n_head == 32 && p.n_head_kv == 8 && p.n_ff == 5632, "1G: 2048-wide (%d)", p.n_embd);
    /* a real file for a small target */
    ferry_gen_params_defaults(&p);
    p.wtype = FERRY_TYPE_Q4_K;
    ferry_gen_params_for_size(&p, 4000000, &err);
    char path[512];
    path_in_tmp(path, sizeof path, "size.gguf");
    struct stat st;
    CHECK(ferry_gen_model(&p, path, &err) == FERRY_OK && stat(path, &st) == 0 && fabs((double)st.st_size / 4e6 - 1) < 0.1,
          "4 MB q4_K target: %lld bytes", (long long)st.st_size);
    unlink(path);
}

/* ---- the command -------------------------------------------------------------- */

static int run_cli(const char *const *args, int n) {
    char *argv[32];
    for (int i = 0; i < n; i++) argv[i] = (char *)args[i];
    argv[n] = NULL;
    return ferry_cli_gen_model(n - 1, argv + 1); /* the words after the command's name */
}

static void test_cli(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "cli.gguf");
    const char *ok[] = { "gen-model", "-o", path, "--type", "q6_k", "--arch", "qwen3", "--vocab", "llama", "--n-vocab",
                         "700", "--n-embd", "256", "--n-layer", "3", "--n-head", "8", "--n-head-kv", "4", "--n-ff", "512",
                         "--n-ctx", "1024", "--tied", "--seed", "7" };
    CHECK(run_cli(ok, sizeof ok / sizeof ok[0]) == 0, "gen-model with every option");
    struct ferry_gguf *g = NULL;
    struct ferry_error err = { 0 };
    if (CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open cli output: %s", err.msg)) {
        struct ferry_gen_params p;
        ferry_gen_params_defaults(&p);
        p.arch = "qwen3", p.vocab = "llama", p.n_vocab = 700, p.n_embd = 256, p.n_layer = 3, p.n_head = 8;
        p.n_head_kv = 4, p.n_ff = 512, p.n_ctx = 1024, p.tied_output = true, p.wtype = FERRY_TYPE_Q6_K;
        check_keys(g, &p);
        check_tensors(g, &p, "cli");
        ferry_gguf_close(g);
    }
    unlink(path);
    const char *sized[] = { "gen-model", "--size", "2M", "--type", "q4_0", "-o", path };
    struct stat st;
    CHECK(run_cli(sized, 7) == 0 && stat(path, &st) == 0 && fabs((double)st.st_size / (2 << 20) - 1) < 0.1,
          "gen-model --size 2M");
    unlink(path);
    const char *no_out[] = { "gen-model", "--size", "2M" };
    CHECK(run_cli(no_out, 3) == 2, "missing -o refused");
    const char *bad_type[] = { "gen-model", "-o", path, "--type", "q5_k" };
    CHECK(run_cli(bad_type, 5) == 2, "unknown type refused");
    const char *bad_size[] = { "gen-model", "-o", path, "--size", "12X" };
    CHECK(run_cli(bad_size, 5) == 2, "bad size refused");
    const char *bad_shape[] = { "gen-model", "-o", path, "--type", "q4_k" };
    CHECK(run_cli(bad_shape, 5) == 1, "n_embd 64 with q4_k refused");
    const char *again[] = { "gen-model", "-o", path, "--size", "2M", "--no-progress" };
    CHECK(run_cli(again, 6) == 0, "gen-model writes a new file");
    struct stat st1, st2;
    CHECK(stat(path, &st1) == 0, "the file is there");
    const char *twice[] = { "gen-model", "-o", path, "--size", "3M", "--no-progress" };
    CHECK(run_cli(twice, 6) == 1 && stat(path, &st2) == 0 && st2.st_size == st1.st_size,
          "an existing file is refused and left as it was");
    const char *forced[] = { "gen-model", "-o", path, "--size", "3M", "--no-progress", "--force" };
    CHECK(run_cli(forced, 7) == 0 && stat(path, &st2) == 0 && st2.st_size > st1.st_size,
          "--force overwrites it (%lld -> %lld bytes)", (long long)st1.st_size, (long long)st2.st_size);
    unlink(path);
    const char *help[] = { "gen-model", "-h" };
    CHECK(run_cli(help, 2) == 0, "help");
    CHECK(access(path, F_OK) != 0, "no file from refused commands");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-test-gen-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_quantizers();
    test_invalid();
    test_determinism();
    test_all_variants();
    test_vocabs();
    test_weights();
    test_sizes();
    test_cli();
    test_remove_dir(tmpdir);
    return test_summary();
}
