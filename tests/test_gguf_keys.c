/* Every file `ferry gen-model` can write, held to what llama.cpp's loader
 * requires (docs/gguf-keys.md): a known architecture string, each required
 * key present with the stored type llama.cpp checks, sizes that agree with
 * each other and with the tensors, a loadable tokenizer, and exactly the
 * tensors llama.cpp expects for the architecture, with their shapes.
 * The rules here are the page's, written independently of the generator:
 * nothing below asks the generator what it meant to write. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/gen.h"
#include "ferry/gguf.h"
#include "testutil.h"

static char tmpdir[256];

/* Each rule: a CHECK, or, while probing the checker on files that must
 * fail, only counted. */
static bool probing;
static int broken;

__attribute__((format(printf, 4, 5))) static bool rule_at(bool ok, const char *file, int line, const char *fmt, ...) {
    if (probing) {
        broken += !ok;
        return ok;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return test_check(ok, file, line, "%s", msg);
}
#define RULE(cond, ...) rule_at((cond), __FILE__, __LINE__, __VA_ARGS__)

/* The architecture strings llama.cpp knows, among those ferry can write. */
static const char *const KNOWN_ARCHS[] = { "llama", "qwen2", "qwen3" };

static bool str_is(struct ferry_gguf_str s, const char *want) {
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

/* A key of exactly this stored type; fills *v for u32. */
static bool has_key(const struct ferry_gguf *g, const char *what, const char *arch, const char *suffix,
                    enum ferry_gguf_type type, bool required, uint32_t *v) {
    char key[160];
    snprintf(key, sizeof key, "%s%s%s", arch ? arch : "", arch ? "." : "", suffix);
    int64_t i = ferry_gguf_find_key(g, key);
    if (i < 0) {
        RULE(!required, "%s: required key %s missing", what, key);
        return false;
    }
    if (!RULE(ferry_gguf_kv_type(g, i) == type, "%s: %s stored as type %d, llama.cpp reads type %d", what, key,
               (int)ferry_gguf_kv_type(g, i), (int)type))
        return false;
    if (v && type == FERRY_GGUF_U32) ferry_gguf_get_u32(g, key, v);
    return true;
}

static bool tensor_is(const struct ferry_gguf *g, const char *what, const char *name, int64_t ne0, int64_t ne1,
                      int *seen) {
    const struct ferry_gguf_tensor_info *t = ferry_gguf_find_tensor(g, name);
    if (!RULE(t != NULL, "%s: tensor %s missing", what, name)) return false;
    (*seen)++;
    return RULE(t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1,
                 "%s: %s is [%lld, %lld], llama.cpp expects [%lld, %lld]", what, name, (long long)t->ne[0],
                 (long long)t->ne[1], (long long)ne0, (long long)ne1);
}

static void check_tokenizer(const struct ferry_gguf *g, const char *what, uint32_t n_vocab_tensor) {
    struct ferry_gguf_str model = { 0 };
    if (!RULE(ferry_gguf_get_str(g, "tokenizer.ggml.model", &model), "%s: tokenizer.ggml.model missing", what))
        return;
    const bool bpe = str_is(model, "gpt2"), spm = str_is(model, "llama");
    RULE(bpe || spm, "%s: tokenizer.ggml.model is neither gpt2 nor llama", what);
    enum ferry_gguf_type et;
    uint64_t n_tokens = 0;
    const void *data = NULL;
    if (!RULE(ferry_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tokens, &data) && et == FERRY_GGUF_STRING,
               "%s: tokenizer.ggml.tokens (array of string) missing", what))
        return;
    RULE(n_tokens == n_vocab_tensor, "%s: %llu tokens, token_embd has %u rows", what,
          (unsigned long long)n_tokens, n_vocab_tensor);
    uint64_t n = 0;
    if (ferry_gguf_find_key(g, "tokenizer.ggml.scores") >= 0)
        RULE(ferry_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &data) && et == FERRY_GGUF_F32 && n == n_tokens,
              "%s: scores: f32, one per token", what);
    if (ferry_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        bool ok = ferry_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &data) && et == FERRY_GGUF_I32 &&
                  n == n_tokens;
        for (uint64_t j = 0; ok && j < n; j++) {
            int32_t tt;
            memcpy(&tt, (const char *)data + 4 * j, 4);
            ok = tt >= 1 && tt <= 6;
        }
        RULE(ok, "%s: token_type: i32 in 1..6, one per token", what);
    }
    if (bpe) {
        RULE(ferry_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n, &data) && et == FERRY_GGUF_STRING && n > 0,
              "%s: gpt2 vocabulary without merges", what);
        struct ferry_gguf_str pre = { 0 };
        if (ferry_gguf_get_str(g, "tokenizer.ggml.pre", &pre))
            RULE(str_is(pre, "default"), "%s: tokenizer.ggml.pre is not one llama.cpp is known to take", what);
    }
    static const char *const IDS[] = { "bos_token_id", "eos_token_id", "unknown_token_id" };
    for (size_t k = 0; k < 3; k++) {
        uint32_t id = 0;
        if (has_key(g, what, "tokenizer.ggml", IDS[k], FERRY_GGUF_U32, false, &id))
            RULE(id < n_tokens, "%s: %s %u outside the vocabulary", what, IDS[k], id);
    }
}

static void check_file(const struct ferry_gguf *g, const char *what) {
    struct ferry_gguf_str a = { 0 };
    if (!RULE(ferry_gguf_get_str(g, "general.architecture", &a), "%s: general.architecture missing", what)) return;
    char arch[32] = "";
    bool known = false;
    for (size_t i = 0; i < sizeof KNOWN_ARCHS / sizeof KNOWN_ARCHS[0]; i++)
        if (str_is(a, KNOWN_ARCHS[i])) known = true, snprintf(arch, sizeof arch, "%s", KNOWN_ARCHS[i]);
    if (!RULE(known, "%s: general.architecture '%.*s' is unknown to llama.cpp", what, (int)a.len, a.ptr)) return;

    uint32_t ctx = 0, E = 0, L = 0, F = 0, H = 0, K = 0, rot = 0, dk = 0, dv = 0, nv = 0;
    has_key(g, what, arch, "context_length", FERRY_GGUF_U32, true, &ctx);
    has_key(g, what, arch, "embedding_length", FERRY_GGUF_U32, true, &E);
    has_key(g, what, arch, "block_count", FERRY_GGUF_U32, true, &L);
    has_key(g, what, arch, "feed_forward_length", FERRY_GGUF_U32, true, &F);
    has_key(g, what, arch, "attention.head_count", FERRY_GGUF_U32, true, &H);
    has_key(g, what, arch, "attention.layer_norm_rms_epsilon", FERRY_GGUF_F32, true, NULL);
    if (!has_key(g, what, arch, "attention.head_count_kv", FERRY_GGUF_U32, false, &K)) K = H;
    has_key(g, what, arch, "rope.freq_base", FERRY_GGUF_F32, false, NULL);
    if (!RULE(ctx > 0 && E > 0 && L > 0 && F > 0 && H > 0 && K > 0 && H % K == 0,
               "%s: sizes ctx %u embd %u layers %u ff %u heads %u/%u", what, ctx, E, L, F, H, K))
        return;
    if (!has_key(g, what, arch, "attention.key_length", FERRY_GGUF_U32, false, &dk)) dk = E / H;
    if (!has_key(g, what, arch, "attention.value_length", FERRY_GGUF_U32, false, &dv)) dv = E / H;
    if (!has_key(g, what, arch, "rope.dimension_count", FERRY_GGUF_U32, false, &rot)) rot = dk;
    RULE(dk == dv && rot == dk, "%s: rope dims %u, key length %u, value length %u", what, rot, dk, dv);

    bool quantized = false;
    for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++)
        quantized |= ferry_type_traits(ferry_gguf_tensor(g, i)->type)->blck_size > 1;
    uint32_t qv = 0;
    if (quantized)
        RULE(has_key(g, what, NULL, "general.quantization_version", FERRY_GGUF_U32, true, &qv) && qv == 2,
              "%s: quantized tensors need general.quantization_version 2", what);
    uint32_t align = 32;
    has_key(g, what, NULL, "general.alignment", FERRY_GGUF_U32, false, &align);
    RULE(align % 8 == 0 && align > 0, "%s: alignment %u", what, align);

    const struct ferry_gguf_tensor_info *embd = ferry_gguf_find_tensor(g, "token_embd.weight");
    if (!RULE(embd != NULL, "%s: token_embd.weight missing", what)) return;
    const uint32_t V = (uint32_t)embd->ne[1];
    if (has_key(g, what, arch, "vocab_size", FERRY_GGUF_U32, false, &nv))
        RULE(nv == V, "%s: vocab_size %u, token_embd has %u rows", what, nv, V);
    check_tokenizer(g, what, V);

    int seen = 0;
    char name[96];
    tensor_is(g, what, "token_embd.weight", E, V, &seen);
    tensor_is(g, what, "output_norm.weight", E, 1, &seen);
    if (ferry_gguf_find_tensor(g, "output.weight")) tensor_is(g, what, "output.weight", E, V, &seen);
    const bool bias = strcmp(arch, "qwen2") == 0, qk_norm = strcmp(arch, "qwen3") == 0;
    for (uint32_t b = 0; b < L; b++) {
#define T(suffix, ne0, ne1) (snprintf(name, sizeof name, "blk.%u.%s", b, suffix), tensor_is(g, what, name, ne0, ne1, &seen))
        T("attn_norm.weight", E, 1);
        T("attn_q.weight", E, dk * H);
        T("attn_k.weight", E, dk * K);
        T("attn_v.weight", E, dv * K);
        T("attn_output.weight", dv * H, E);
        T("ffn_norm.weight", E, 1);
        T("ffn_gate.weight", E, F);
        T("ffn_up.weight", E, F);
        T("ffn_down.weight", F, E);
        if (bias) {
            T("attn_q.bias", dk * H, 1);
            T("attn_k.bias", dk * K, 1);
            T("attn_v.bias", dv * K, 1);
        }
        if (qk_norm) {
            T("attn_q_norm.weight", dk, 1);
            T("attn_k_norm.weight", dk, 1);
        }
#undef T
    }
    RULE(seen == ferry_gguf_n_tensors(g), "%s: %lld tensors, llama.cpp expects %d (it refuses extra ones)", what,
          (long long)ferry_gguf_n_tensors(g), seen);
}

/* Every --arch, both vocabulary kinds, tied and untied output, a few
 * weight types (the key set does not depend on the type). */
static void test_every_arch(void) {
    static const char *const ARCHS[] = { "llama", "mistral", "qwen2", "qwen3" };
    static const enum ferry_type TYPES[] = { FERRY_TYPE_F16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0, FERRY_TYPE_Q4_K };
    int checked = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t t = 0; t < 4; t++)
            for (int v = 0; v < 2; v++) {
                struct ferry_gen_params p;
                ferry_gen_params_defaults(&p);
                p.arch = ARCHS[a];
                p.wtype = TYPES[t];
                p.vocab = v ? "llama" : "gpt2";
                p.tied_output = (t & 1) != 0;
                p.n_embd = 256, p.n_ff = 512, p.n_head = 4, p.n_head_kv = 2;
                char path[512], what[96];
                snprintf(path, sizeof path, "%s/m.gguf", tmpdir);
                snprintf(what, sizeof what, "--arch %s %s %s", p.arch, ferry_type_name(p.wtype), p.vocab);
                struct ferry_error err = { 0 };
                struct ferry_gguf *g = NULL;
                if (!CHECK(ferry_gen_model(&p, path, &err) == FERRY_OK, "%s: %s", what, err.msg)) continue;
                if (CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "%s: open: %s", what, err.msg)) {
                    check_file(g, what);
                    checked++;
                }
                ferry_gguf_close(g);
                unlink(path);
            }
    CHECK(checked == 32, "%d files checked", checked);
}

/* The checker itself must fail on what llama.cpp refuses: a file that
 * says "mistral", and one that lacks the rms epsilon. */
static void test_checker_catches(void) {
    const char *path_fmt = "%s/bad.gguf";
    char path[512];
    snprintf(path, sizeof path, path_fmt, tmpdir);
    for (int variant = 0; variant < 2; variant++) {
        struct ferry_gguf_writer *w = ferry_gguf_writer_new();
        const char *arch = variant == 0 ? "mistral" : "llama";
        char key[96];
        ferry_gguf_writer_add_str(w, "general.architecture", arch);
#define U(suffix, v) (snprintf(key, sizeof key, "%s.%s", arch, suffix), ferry_gguf_writer_add_u32(w, key, v))
        U("context_length", 256);
        U("embedding_length", 64);
        U("block_count", 1);
        U("feed_forward_length", 128);
        U("attention.head_count", 4);
#undef U
        if (variant == 0) ferry_gguf_writer_add_f32(w, "mistral.attention.layer_norm_rms_epsilon", 1e-5f);
        struct ferry_error err = { 0 };
        struct ferry_gguf *g = NULL;
        CHECK(ferry_gguf_writer_write(w, path, &err) == FERRY_OK, "write: %s", err.msg);
        ferry_gguf_writer_free(w);
        if (!CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open: %s", err.msg)) continue;
        probing = true;
        broken = 0;
        check_file(g, "probe");
        probing = false;
        CHECK(broken > 0, "the checker refuses a file with %s", variant == 0 ? "architecture 'mistral'"
                                                                              : "no layer_norm_rms_epsilon");
        ferry_gguf_close(g);
        unlink(path);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-gguf-keys-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    test_checker_catches();
    test_every_arch();
    test_remove_dir(tmpdir);
    return test_summary();
}
