/* Tokenizer: small BPE and SentencePiece vocabularies written as GGUF files,
 * exact token ids worked out by hand (merge order, pre-token boundaries
 * under the gpt2 / llama3 / qwen2 rules, score order, byte fallback,
 * special tokens, BOS/EOS), round trips over random text, hostile
 * vocabularies refused, random bytes tokenized without a crash, and the
 * speed of a 143k-token vocabulary. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/gguf.h"
#include "ferry/vocab.h"
#include "text/unicode.h"
#include "testutil.h"

static char tmpdir[256];

/* ---- building vocabularies ---- */

struct vb {
    char **tok;
    int32_t *type;
    float *score;
    size_t n, cap;
    char **merge;
    size_t nm, cap_m;
};

static int32_t vb_find(const struct vb *b, const char *s) {
    for (size_t i = 0; i < b->n; i++)
        if (strcmp(b->tok[i], s) == 0) return (int32_t)i;
    return -1;
}

static int32_t vb_add(struct vb *b, const char *s, int32_t type, float score) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 512;
        b->tok = realloc(b->tok, b->cap * sizeof *b->tok);
        b->type = realloc(b->type, b->cap * sizeof *b->type);
        b->score = realloc(b->score, b->cap * sizeof *b->score);
    }
    b->tok[b->n] = strdup(s);
    b->type[b->n] = type;
    b->score[b->n] = score;
    return (int32_t)b->n++;
}

static void vb_free(struct vb *b) {
    for (size_t i = 0; i < b->n; i++) free(b->tok[i]);
    for (size_t i = 0; i < b->nm; i++) free(b->merge[i]);
    free(b->tok);
    free(b->type);
    free(b->score);
    free(b->merge);
    memset(b, 0, sizeof *b);
}

/* GPT-2's bytes_to_unicode, written here independently of the library. */
static uint32_t b2u[256];

static void init_b2u(void) {
    int n = 0;
    for (int b = 0; b < 256; b++)
        b2u[b] = ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) ? (uint32_t)b
                                                                                  : 256u + (uint32_t)n++;
}

/* Plain bytes to byte-level text (static buffer, valid until the next call). */
static const char *bl(const char *plain) {
    static char buf[8][1024];
    static int which;
    char *o = buf[which++ & 7];
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)plain; *p; p++) {
        uint32_t c = b2u[*p];
        if (c < 0x80) o[k++] = (char)c;
        else {
            o[k++] = (char)(0xC0 | c >> 6);
            o[k++] = (char)(0x80 | (c & 0x3F));
        }
    }
    o[k] = 0;
    return o;
}

/* 256 byte-level tokens: id b is byte b (byte 0, which a C string cannot
 * hold, is written directly as its byte-level form U+0100). */
static void vb_bpe_bytes(struct vb *b) {
    for (int i = 0; i < 256; i++) {
        char s[2] = { (char)i, 0 };
        vb_add(b, i ? bl(s) : "\xC4\x80", 1, 0);
    }
}

/* A merge of two plain-byte strings; the result becomes a token if new. */
static int32_t vb_merge(struct vb *b, const char *l, const char *r) {
    char m[2048], cat[1024];
    snprintf(m, sizeof m, "%s %s", bl(l), bl(r));
    if (b->nm == b->cap_m) {
        b->cap_m = b->cap_m ? 2 * b->cap_m : 64;
        b->merge = realloc(b->merge, b->cap_m * sizeof *b->merge);
    }
    b->merge[b->nm++] = strdup(m);
    snprintf(cat, sizeof cat, "%s%s", l, r);
    int32_t id = vb_find(b, bl(cat));
    return id >= 0 ? id : vb_add(b, bl(cat), 1, 0);
}

static void vb_put(struct ferry_gguf_writer *w, const struct vb *b, const char *model, const char *pre) {
    ferry_gguf_writer_add_str(w, "tokenizer.ggml.model", model);
    if (pre) ferry_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)b->tok, b->n);
    ferry_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", FERRY_GGUF_I32, b->type, b->n);
    if (strcmp(model, "llama") == 0)
        ferry_gguf_writer_add_arr(w, "tokenizer.ggml.scores", FERRY_GGUF_F32, b->score, b->n);
    if (strcmp(model, "gpt2") == 0)
        ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)b->merge, b->nm);
}

/* Writes w to a file, loads the vocabulary from it and closes the file
 * (the vocabulary must not depend on it). Frees w. */
static int load_writer(struct ferry_gguf_writer *w, struct ferry_vocab **v, struct ferry_error *err) {
    char path[512];
    snprintf(path, sizeof path, "%s/v.gguf", tmpdir);
    *v = NULL;
    int rc = ferry_gguf_writer_write(w, path, err);
    ferry_gguf_writer_free(w);
    if (rc) return rc;
    struct ferry_gguf *g;
    rc = ferry_gguf_open(path, &g, err);
    if (rc) return rc;
    rc = ferry_vocab_load(g, v, err);
    ferry_gguf_close(g);
    unlink(path);
    return rc;
}

static struct ferry_vocab *load_vb(const struct vb *b, const char *model, const char *pre) {
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    vb_put(w, b, model, pre);
    struct ferry_vocab *v;
    struct ferry_error err = { 0 };
    if (!CHECK(load_writer(w, &v, &err) == FERRY_OK, "load %s/%s: %s", model, pre ? pre : "-", err.msg))
        return NULL;
    return v;
}

/* ---- checking token lists ---- */

static bool tok_eq(const struct ferry_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                   const int32_t *want, size_t n_want, const char *what) {
    int32_t *t;
    size_t n;
    struct ferry_error err = { 0 };
    int rc = ferry_tokenize(v, text, len, add_special, parse_special, &t, &n, &err);
    bool ok = rc == FERRY_OK && n == n_want && (n == 0 || memcmp(t, want, n * sizeof *t) == 0);
    if (!CHECK(ok, "%s: tokenize gave %zu tokens (want %zu), rc %d %s", what, rc ? 0 : n, n_want, rc, err.msg)) {
        fprintf(stderr, "  got:");
        for (size_t i = 0; rc == FERRY_OK && i < n; i++) fprintf(stderr, " %d", t[i]);
        fprintf(stderr, "\n  want:");
        for (size_t i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    if (rc == FERRY_OK) free(t);
    return ok;
}

#define TOK(v, s, addsp, parsesp, what, ...)                                                           \
    do {                                                                                               \
        const int32_t want_[] = { __VA_ARGS__ };                                                       \
        tok_eq(v, s, strlen(s), addsp, parsesp, want_, sizeof want_ / sizeof want_[0], what);          \
    } while (0)
#define TOK_NONE(v, s, addsp, parsesp, what) tok_eq(v, s, strlen(s), addsp, parsesp, NULL, 0, what)

/* detokenize(tokenize(text)) == text */
static bool round_trip(const struct ferry_vocab *v, const char *text, size_t len) {
    int32_t *t;
    size_t n, out_len;
    char *out;
    struct ferry_error err = { 0 };
    if (ferry_tokenize(v, text, len, false, false, &t, &n, &err) != FERRY_OK) return false;
    int rc = ferry_detokenize(v, t, n, false, &out, &out_len, &err);
    free(t);
    if (rc) return false;
    bool ok = out_len == len && memcmp(out, text, len) == 0;
    free(out);
    return ok;
}

static bool piece_is(const struct ferry_vocab *v, int32_t id, bool special, const char *want) {
    char buf[64];
    int n = ferry_token_to_piece(v, id, special, buf, sizeof buf);
    return n == (int)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

/* ---- BPE ---- */

static void test_bpe_merge_order(void) {
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    int32_t bc = vb_merge(&b, "b", "c");  /* rank 0 */
    int32_t ab = vb_merge(&b, "a", "b");  /* rank 1 */
    int32_t abc = vb_merge(&b, "ab", "c"); /* rank 2: never reached from "abc" */
    int32_t aa = vb_merge(&b, "a", "a");  /* rank 3 */
    struct ferry_vocab *v = load_vb(&b, "gpt2", "gpt2");
    if (!v) { vb_free(&b); return; }
    CHECK(ferry_vocab_kind(v) == FERRY_VOCAB_BPE && ferry_vocab_n_tokens(v) == (int32_t)b.n, "kind and size");
    TOK(v, "abc", false, false, "rank order: b+c before a+b", 'a', bc);
    TOK(v, "ab", false, false, "single merge", ab);
    TOK(v, "abd", false, false, "partial merge", ab, 'd');
    TOK(v, "aaa", false, false, "ties go leftmost", aa, 'a');
    TOK(v, "aaaa", false, false, "two merges", aa, aa);
    TOK(v, "xyz", false, false, "no merges: bytes", 'x', 'y', 'z');
    TOK_NONE(v, "", true, true, "empty text");
    (void)abc;
    int32_t zero[] = { 0, 'a', 0 };
    tok_eq(v, "\0a\0", 3, false, false, zero, 3, "NUL bytes inside the text");
    CHECK(piece_is(v, bc, false, "bc") && piece_is(v, ' ', false, " ") && piece_is(v, 0xFF, false, "\xFF"), "pieces");
    char nul;
    CHECK(ferry_token_to_piece(v, 0, false, &nul, 1) == 1 && nul == 0, "byte token 0 decodes to NUL");
    CHECK(ferry_token_to_piece(v, -1, false, &nul, 1) == -1 && ferry_token_to_piece(v, v ? (int32_t)b.n : 0, false, &nul, 1) == -1,
          "piece of an id out of range");
    CHECK(ferry_vocab_token_text(v, 1000000) == NULL && strcmp(ferry_vocab_token_text(v, ab), "ab") == 0, "token text");
    ferry_vocab_free(v);
    vb_free(&b);
}

/* "Hello world's 123" and friends under the three pre-tokenizers: merges
 * never cross a pre-token boundary, so the ids show where they are. */
static void test_bpe_pretokenizers(void) {
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    vb_merge(&b, "H", "e"); vb_merge(&b, "He", "l"); vb_merge(&b, "Hel", "l");
    int32_t hello = vb_merge(&b, "Hell", "o");
    vb_merge(&b, " ", "w"); vb_merge(&b, " w", "o"); vb_merge(&b, " wo", "r"); vb_merge(&b, " wor", "l");
    int32_t world = vb_merge(&b, " worl", "d");
    int32_t s_ = vb_merge(&b, "'", "s");
    int32_t S_ = vb_merge(&b, "'", "S");
    vb_merge(&b, " ", "1"); vb_merge(&b, " 1", "2"); /* before "1 2", or " 123" would be " " "123" */
    int32_t sp123 = vb_merge(&b, " 12", "3");
    vb_merge(&b, "1", "2");
    int32_t n123 = vb_merge(&b, "12", "3");
    int32_t nlnl = vb_merge(&b, "\n", "\n");
    int32_t spsp = vb_merge(&b, " ", " ");
    int32_t xyz = vb_add(&b, bl("xyz"), 1, 0); /* a token no merge builds */

    struct ferry_vocab *g = load_vb(&b, "gpt2", "gpt2");
    struct ferry_vocab *l3 = load_vb(&b, "gpt2", "llama-bpe");
    struct ferry_vocab *q2 = load_vb(&b, "gpt2", "qwen2");
    struct ferry_vocab *unk = load_vb(&b, "gpt2", "some-future-name");
    struct ferry_vocab *none = load_vb(&b, "gpt2", NULL);
    if (g && l3 && q2 && unk && none) {
        const char *t = "Hello world's 123";
        TOK(g, t, false, false, "gpt2", hello, world, s_, sp123);
        TOK(l3, t, false, false, "llama3", hello, world, s_, ' ', n123);
        TOK(q2, t, false, false, "qwen2", hello, world, s_, ' ', '1', '2', '3');
        TOK(unk, t, false, false, "unknown pre falls back to gpt2", hello, world, s_, sp123);
        TOK(none, t, false, false, "absent pre is gpt2", hello, world, s_, sp123);
        TOK(g, "x'S", false, false, "gpt2 contractions are lower case only", 'x', '\'', 'S');
        TOK(l3, "x'S", false, false, "llama3 contractions ignore case", 'x', S_);
        TOK(g, "a\n\nb", false, false, "gpt2 newlines", 'a', '\n', '\n', 'b');
        TOK(l3, "a\n\nb", false, false, "llama3 newlines", 'a', nlnl, 'b');
        TOK(g, "a  b", false, false, "gpt2: last space joins the word", 'a', ' ', ' ', 'b');
        TOK(g, "a   ", false, false, "gpt2: trailing spaces together", 'a', spsp, ' ');
        TOK(l3, "1234567", false, false, "llama3 digits in threes", n123, '4', '5', '6', '7');
        TOK(g, "xyz", false, false, "gpt2 merges only", 'x', 'y', 'z');
        TOK(l3, "xyz", false, false, "llama3 takes a whole pre-token that is a token", xyz);
        TOK(q2, "xyz", false, false, "qwen2 merges only", 'x', 'y', 'z');
        TOK(g, "Hello!?", false, false, "punctuation run", hello, '!', '?');
        TOK(l3, "!!\n\nx", false, false, "llama3 punctuation takes newlines", '!', '!', nlnl, 'x');
        /* "é" is a letter: " é" stays one pre-token (two bytes, no merges) */
        TOK(g, "\xC3\xA9!", false, false, "non-ASCII letters", 0xC3, 0xA9, '!');
        CHECK(piece_is(g, world, false, " world") && piece_is(g, nlnl, false, "\n\n"), "byte-level decode");
        CHECK(!ferry_vocab_add_bos(g) && ferry_vocab_bos(g) == -1 && ferry_vocab_eos(g) == -1,
              "gpt2 without ids: no BOS/EOS");
    }
    ferry_vocab_free(g);
    ferry_vocab_free(l3);
    ferry_vocab_free(q2);
    ferry_vocab_free(unk);
    ferry_vocab_free(none);
    vb_free(&b);
}

static void test_bpe_specials(void) {
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    vb_merge(&b, "H", "i");
    int32_t hi = vb_find(&b, "Hi");
    int32_t bos = vb_add(&b, "<|begin|>", 3, 0);
    int32_t eos = vb_add(&b, "<|end|>", 3, 0);
    int32_t im_start = vb_add(&b, "<|im_start|>", 3, 0);
    int32_t im_end = vb_add(&b, "<|im_end|>", 3, 0);
    int32_t tool = vb_add(&b, "<tool>", 4, 0);
    int32_t xy = vb_add(&b, "xy", 4, 0);
    int32_t yzw = vb_add(&b, "yzw", 4, 0);
    int32_t empty_ctl = vb_add(&b, "", 3, 0); /* placeholders like this occur and are harmless */

    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    vb_put(w, &b, "gpt2", "qwen2");
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 999999); /* ignored */
    ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", true);
    struct ferry_vocab *v;
    struct ferry_error err = { 0 };
    if (!CHECK(load_writer(w, &v, &err) == FERRY_OK, "load: %s", err.msg)) { vb_free(&b); return; }
    const char *t = "<|im_start|>Hi<tool><|im_end|>";
    TOK(v, t, false, true, "parse_special", im_start, hi, tool, im_end);
    TOK(v, t, true, true, "with BOS and EOS", bos, im_start, hi, tool, im_end, eos);
    /* without parse_special control tokens are plain text; user-defined ones still match */
    int32_t *toks;
    size_t n;
    if (CHECK(ferry_tokenize(v, t, strlen(t), false, false, &toks, &n, &err) == FERRY_OK, "tokenize")) {
        int n_tool = 0, n_ctl = 0;
        for (size_t i = 0; i < n; i++) {
            n_tool += toks[i] == tool;
            n_ctl += toks[i] == im_start || toks[i] == im_end;
        }
        CHECK(n_tool == 1 && n_ctl == 0 && n > 10, "control text split, user-defined kept (%zu tokens)", n);
        free(toks);
    }
    TOK(v, "xyzw", false, false, "longest special claims first", 'x', yzw);
    TOK(v, "xyxy", false, false, "repeated special", xy, xy);
    TOK(v, "<|im_st", false, true, "a prefix of a special is text", '<', '|', 'i', 'm', '_', 's', 't');
    CHECK(piece_is(v, im_start, false, "") && piece_is(v, im_start, true, "<|im_start|>") &&
              piece_is(v, tool, false, "<tool>") && piece_is(v, empty_ctl, true, ""),
          "control pieces only when special");
    CHECK(ferry_vocab_is_eog(v, eos) && ferry_vocab_is_eog(v, im_end) && !ferry_vocab_is_eog(v, im_start) &&
              !ferry_vocab_is_eog(v, hi) && !ferry_vocab_is_eog(v, -5) && !ferry_vocab_is_eog(v, 1 << 30),
          "end of generation");
    CHECK(ferry_vocab_add_bos(v) && ferry_vocab_bos(v) == bos && ferry_vocab_eos(v) == eos, "bos/eos");
    char *out;
    size_t out_len;
    int32_t seq[] = { bos, im_start, hi, im_end };
    if (CHECK(ferry_detokenize(v, seq, 4, true, &out, &out_len, &err) == FERRY_OK, "detokenize")) {
        CHECK(strcmp(out, "<|begin|><|im_start|>Hi<|im_end|>") == 0 && out_len == strlen(out), "detokenize special: %s", out);
        free(out);
    }
    if (CHECK(ferry_detokenize(v, seq, 4, false, &out, &out_len, &err) == FERRY_OK, "detokenize")) {
        CHECK(strcmp(out, "Hi") == 0, "detokenize plain: %s", out);
        free(out);
    }
    int32_t bad[] = { hi, -1 };
    CHECK(ferry_detokenize(v, bad, 2, false, &out, &out_len, &err) == FERRY_ERR_INVALID, "detokenize bad id");
    ferry_vocab_free(v);

    /* llama3 asks for BOS by default, plain gpt2 does not */
    w = ferry_gguf_writer_new();
    vb_put(w, &b, "gpt2", "llama3");
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (CHECK(load_writer(w, &v, &err) == FERRY_OK, "load: %s", err.msg)) {
        TOK(v, "Hi", true, false, "llama3 default BOS", bos, hi);
        ferry_vocab_free(v);
    }
    w = ferry_gguf_writer_new();
    vb_put(w, &b, "gpt2", "gpt2");
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (CHECK(load_writer(w, &v, &err) == FERRY_OK, "load: %s", err.msg)) {
        TOK(v, "Hi", true, false, "gpt2 default: no BOS", hi);
        ferry_vocab_free(v);
    }
    vb_free(&b);
}

/* A BPE vocabulary without some byte tokens: unknown stands in for each
 * uncovered byte, or the byte is dropped when there is no unknown token. */
static void test_bpe_missing_bytes(void) {
    struct vb b = { 0 };
    int32_t a = vb_add(&b, "a", 1, 0);
    int32_t u = vb_add(&b, "<unk>", 2, 0);
    vb_add(&b, "b", 1, 0);
    b.merge = malloc(sizeof *b.merge);
    b.merge[b.nm++] = strdup("a b");
    int32_t ab = vb_add(&b, "ab", 1, 0);
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    vb_put(w, &b, "gpt2", NULL);
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)u);
    struct ferry_vocab *v;
    struct ferry_error err = { 0 };
    if (CHECK(load_writer(w, &v, &err) == FERRY_OK, "load: %s", err.msg)) {
        TOK(v, "ab\xC3\xA9" "a", false, false, "uncovered bytes become <unk>", ab, u, u, a);
        ferry_vocab_free(v);
    }
    v = load_vb(&b, "gpt2", NULL);
    if (v) {
        TOK(v, "ab\xC3\xA9 a", false, false, "uncovered bytes dropped without <unk>", ab, a);
        ferry_vocab_free(v);
    }
    vb_free(&b);
}

/* ---- SentencePiece ---- */

#define SP "\xE2\x96\x81" /* ▁ */

/* <unk> <s> </s>, then <0x00>..<0xFF> at ids 3..258. */
static void vb_spm_base(struct vb *b) {
    vb_add(b, "<unk>", 2, 0);
    vb_add(b, "<s>", 3, 0);
    vb_add(b, "</s>", 3, 0);
    for (int i = 0; i < 256; i++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", i);
        vb_add(b, s, 6, 0);
    }
}

static void test_spm(void) {
    struct vb b = { 0 };
    vb_spm_base(&b);
    int32_t sp = vb_add(&b, SP, 1, -2);
    int32_t a = vb_add(&b, "a", 1, -3);
    int32_t bb = vb_add(&b, "b", 1, -3);
    int32_t c = vb_add(&b, "c", 1, -3);
    int32_t spa = vb_add(&b, SP "a", 1, -5);
    int32_t ab = vb_add(&b, "ab", 1, -1);
    int32_t bc = vb_add(&b, "bc", 1, -4);
    int32_t aa = vb_add(&b, "aa", 1, -1);
    struct ferry_vocab *v = load_vb(&b, "llama", NULL);
    if (v) {
        CHECK(ferry_vocab_kind(v) == FERRY_VOCAB_SPM && ferry_vocab_add_bos(v) && ferry_vocab_bos(v) == 1 &&
                  ferry_vocab_eos(v) == 2 && ferry_vocab_is_eog(v, 2),
              "SPM defaults: BOS 1 added, EOS 2");
        TOK(v, "abc", false, false, "ab scores higher than bc and ▁a", sp, ab, c);
        TOK(v, "abc", true, false, "BOS first", 1, sp, ab, c);
        TOK(v, "aaa", false, false, "ties go leftmost", sp, aa, a);
        TOK(v, "a b", false, false, "spaces become ▁", spa, sp, bb);
        TOK(v, "\xC3\xA9", false, false, "byte fallback", sp, 3 + 0xC3, 3 + 0xA9);
        TOK(v, "<s>a", false, true, "parse_special, space prefix after it", 1, spa);
        TOK(v, "a</s>b", false, true, "special in the middle", spa, 2, sp, bb);
        TOK(v, "", true, false, "empty text with BOS", 1);
        TOK_NONE(v, "", false, false, "empty text");
        CHECK(piece_is(v, spa, false, " a") && piece_is(v, 3 + 'A', false, "A") && piece_is(v, 1, false, "") &&
                  piece_is(v, 1, true, "<s>") && piece_is(v, 0, false, "<unk>"),
              "SPM pieces");
        char small[2];
        CHECK(ferry_token_to_piece(v, spa, false, small, 1) == 2 && small[0] == ' ', "piece truncated to cap, full length returned");
        int32_t seq[] = { 1, spa, sp, bb };
        char *out;
        size_t out_len;
        struct ferry_error err = { 0 };
        if (CHECK(ferry_detokenize(v, seq, 4, false, &out, &out_len, &err) == FERRY_OK, "detokenize")) {
            CHECK(strcmp(out, "a b") == 0, "leading space of the first token dropped: '%s'", out);
            free(out);
        }
        ferry_vocab_free(v);
    }
    /* the same pieces with bc now the best pair: a different segmentation */
    b.score[bc] = -0.5f;
    v = load_vb(&b, "llama", NULL);
    if (v) {
        TOK(v, "abc", false, false, "bc first, then ▁a", spa, bc);
        ferry_vocab_free(v);
    }
    /* no space prefix */
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    vb_put(w, &b, "llama", NULL);
    ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", false);
    ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", true);
    struct ferry_error err = { 0 };
    if (CHECK(load_writer(w, &v, &err) == FERRY_OK, "load: %s", err.msg)) {
        TOK(v, "abc", true, false, "no prefix, EOS only", a, bc, 2);
        CHECK(round_trip(v, " x y ", 5), "round trip without prefix");
        ferry_vocab_free(v);
    }
    /* no byte tokens: unknown stands in */
    struct vb nb = { 0 };
    vb_add(&nb, "<unk>", 2, 0);
    vb_add(&nb, "<s>", 3, 0);
    vb_add(&nb, "</s>", 3, 0);
    int32_t nsp = vb_add(&nb, SP, 1, -1);
    v = load_vb(&nb, "llama", NULL);
    if (v) {
        TOK(v, "\xC3\xA9", false, false, "no byte token: <unk> per byte", nsp, 0, 0);
        ferry_vocab_free(v);
    }
    vb_free(&nb);
    vb_free(&b);
}

/* ---- round trips over random text ---- */

static size_t rand_text(uint64_t *rng, char *out, size_t cap, int kind) {
    static const char *const pieces[] = { "é", "ü", "ß", "日本", "語", "€", "—", "“", "”", "😀", "ё", "ж",
                                          "١٢", "٣", "½", "²", "\u00A0", "\u3000", "\t", "\n", "\r\n", "  ",
                                          "'s", "'LL", "123", "4567" };
    size_t n = test_rand_u64(rng) % (cap / 8), k = 0;
    while (k < n) {
        uint64_t r = test_rand_u64(rng);
        if (kind == 2) { /* any bytes */
            out[k++] = (char)r;
        } else if (kind == 1 && r % 4 == 0) {
            const char *p = pieces[(r >> 8) % (sizeof pieces / sizeof pieces[0])];
            size_t l = strlen(p);
            if (k + l > cap) break;
            memcpy(out + k, p, l);
            k += l;
        } else {
            static const char ascii[] = " abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,!?'-()\n\t";
            out[k++] = ascii[(r >> 8) % (sizeof ascii - 1)];
        }
    }
    return k;
}

static void test_round_trips(void) {
    /* BPE: byte tokens plus a few hundred merges of common pairs */
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    uint64_t rng = 7;
    static const char letters[] = "etaoinshrdlu ";
    for (int i = 0; i < 300; i++) {
        char l[3] = { letters[test_rand_u64(&rng) % 13], 0, 0 }, r[2] = { letters[test_rand_u64(&rng) % 13], 0 };
        if (i % 3 == 0) l[1] = letters[test_rand_u64(&rng) % 12];
        char cat[4];
        snprintf(cat, sizeof cat, "%s", l);
        if (strlen(l) == 2 && vb_find(&b, bl(l)) < 0) continue; /* left must be a token */
        vb_merge(&b, l, r);
    }
    vb_merge(&b, "\xC3", "\xA9");
    const char *pres[] = { "gpt2", "llama3", "qwen2" };
    char text[4096];
    for (int p = 0; p < 3; p++) {
        struct ferry_vocab *v = load_vb(&b, "gpt2", pres[p]);
        if (!v) continue;
        int bad = 0;
        for (int i = 0; i < 600; i++) {
            size_t n = rand_text(&rng, text, sizeof text, i % 3);
            if (!round_trip(v, text, n)) bad++;
        }
        CHECK(bad == 0, "BPE %s: %d of 600 random texts did not round-trip", pres[p], bad);
        ferry_vocab_free(v);
    }
    vb_free(&b);

    /* SPM: byte tokens, every ASCII letter, random pairs with random scores */
    vb_spm_base(&b);
    vb_add(&b, SP, 1, -1);
    for (int c = 'a'; c <= 'z'; c++) {
        char s[2] = { (char)c, 0 };
        vb_add(&b, s, 1, -2);
    }
    vb_add(&b, "é", 1, -2);
    for (int i = 0; i < 400; i++) {
        char s[8];
        uint64_t r = test_rand_u64(&rng);
        if (r % 3 == 0) snprintf(s, sizeof s, SP "%c", letters[(r >> 8) % 12]);
        else snprintf(s, sizeof s, "%c%c", letters[(r >> 8) % 12], letters[(r >> 16) % 12]);
        if (vb_find(&b, s) < 0) vb_add(&b, s, 1, -test_rand_uniform(&rng, 1, 10));
    }
    struct ferry_vocab *v = load_vb(&b, "llama", NULL);
    if (v) {
        int bad = 0, tried = 0;
        for (int i = 0; i < 1500; i++) {
            size_t n = rand_text(&rng, text, sizeof text, i % 3);
            if (memmem(text, n, SP, 3)) continue; /* a literal ▁ decodes as a space, by design */
            tried++;
            if (!round_trip(v, text, n)) bad++;
        }
        CHECK(bad == 0, "SPM: %d of %d random texts did not round-trip", bad, tried);
        ferry_vocab_free(v);
    }
    vb_free(&b);
}

/* ---- hostile vocabularies ---- */

enum mutation { M_NONE, M_NO_TOKENS, M_TOKENS_INTS, M_SCORES_SHORT, M_SCORES_I32, M_TYPE_7, M_TYPE_NEG,
                M_MERGE_UNKNOWN, M_MERGE_NO_SPACE, M_NO_MERGES, M_BAD_UTF8, M_EMPTY_NORMAL, M_BOS_RANGE,
                M_BOS_STRING, M_NAN_SCORE, M_BAD_BYTE_TOKEN, M_NO_MODEL, M_MODEL_BERT, M_ADD_BOS_INT, M_COUNT };

static int load_mutant(enum mutation m, bool spm, struct ferry_error *err) {
    struct vb b = { 0 };
    if (spm) vb_spm_base(&b);
    else vb_bpe_bytes(&b);
    vb_add(&b, spm ? "ab" : "ab", 1, -1);
    if (!spm) {
        b.merge = malloc(8 * sizeof *b.merge);
        b.merge[b.nm++] = strdup("a b");
    }
    if (m == M_TYPE_7) b.type[5] = 7;
    if (m == M_TYPE_NEG) b.type[5] = -1;
    if (m == M_MERGE_UNKNOWN) b.merge[b.nm++] = strdup("a zz");
    if (m == M_MERGE_NO_SPACE) b.merge[b.nm++] = strdup("ab");
    if (m == M_BAD_UTF8) { free(b.tok[b.n - 1]); b.tok[b.n - 1] = strdup("a\xFF"); }
    if (m == M_EMPTY_NORMAL) { free(b.tok[b.n - 1]); b.tok[b.n - 1] = strdup(""); }
    if (m == M_NAN_SCORE) b.score[4] = NAN;
    if (m == M_BAD_BYTE_TOKEN) { free(b.tok[10]); b.tok[10] = strdup("<0xZZ>"); }
    const char *model = spm ? "llama" : "gpt2";
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    if (m != M_NO_MODEL) ferry_gguf_writer_add_str(w, "tokenizer.ggml.model", m == M_MODEL_BERT ? "bert" : model);
    if (m == M_TOKENS_INTS) ferry_gguf_writer_add_arr(w, "tokenizer.ggml.tokens", FERRY_GGUF_I32, b.type, b.n);
    else if (m != M_NO_TOKENS)
        ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)b.tok, b.n);
    ferry_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", FERRY_GGUF_I32, b.type, b.n);
    if (m == M_SCORES_SHORT) ferry_gguf_writer_add_arr(w, "tokenizer.ggml.scores", FERRY_GGUF_F32, b.score, b.n - 1);
    else if (m == M_SCORES_I32) ferry_gguf_writer_add_arr(w, "tokenizer.ggml.scores", FERRY_GGUF_I32, b.type, b.n);
    else ferry_gguf_writer_add_arr(w, "tokenizer.ggml.scores", FERRY_GGUF_F32, b.score, b.n);
    if (!spm && m != M_NO_MERGES)
        ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)b.merge, b.nm);
    if (m == M_BOS_RANGE) ferry_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)b.n);
    if (m == M_BOS_STRING) ferry_gguf_writer_add_str(w, "tokenizer.ggml.bos_token_id", "1");
    if (m == M_ADD_BOS_INT) ferry_gguf_writer_add_u32(w, "tokenizer.ggml.add_bos_token", 1);
    struct ferry_vocab *v;
    int rc = load_writer(w, &v, err);
    ferry_vocab_free(v);
    vb_free(&b);
    return rc;
}

static void test_hostile_vocabs(void) {
    static const char *const names[M_COUNT] = {
        "valid", "no tokens", "tokens not strings", "scores short", "scores i32", "type 7", "type -1",
        "merge names unknown token", "merge without space", "no merges", "non-UTF-8 token", "empty token",
        "bos out of range", "bos a string", "NaN score", "bad byte token", "no model", "model bert",
        "add_bos_token an int" };
    for (int spm = 0; spm < 2; spm++)
        for (int m = 0; m < M_COUNT; m++) {
            bool bpe_only = m == M_MERGE_UNKNOWN || m == M_MERGE_NO_SPACE || m == M_NO_MERGES;
            bool spm_only = m == M_BAD_BYTE_TOKEN;
            if ((spm && bpe_only) || (!spm && spm_only)) continue;
            struct ferry_error err = { 0 };
            int rc = load_mutant((enum mutation)m, spm, &err);
            int want = m == M_NONE ? FERRY_OK : m == M_MODEL_BERT ? FERRY_ERR_UNSUPPORTED : FERRY_ERR_INVALID;
            CHECK(rc == want && (rc == FERRY_OK || err.msg[0]), "%s %s: rc %d (%s)", spm ? "SPM" : "BPE", names[m],
                  rc, err.msg);
        }
}

/* Every corruption of a valid file that still parses must load or be
 * refused cleanly, and what loads must tokenize anything. */
static void test_corrupt_files(void) {
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    vb_merge(&b, "a", "b");
    vb_merge(&b, "ab", "c");
    vb_add(&b, "<|x|>", 3, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/c.gguf", tmpdir);
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    vb_put(w, &b, "gpt2", "llama3");
    ferry_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 256);
    struct ferry_error err = { 0 };
    ferry_gguf_writer_write(w, path, &err);
    ferry_gguf_writer_free(w);
    vb_free(&b);
    FILE *f = fopen(path, "rb");
    if (!CHECK(f != NULL, "open written file")) return;
    fseek(f, 0, SEEK_END);
    size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *orig = malloc(size), *copy = malloc(size);
    size_t got = fread(orig, 1, size, f);
    fclose(f);
    unlink(path);
    uint64_t rng = 99;
    int parsed = 0, loaded = 0;
    for (int iter = 0; iter < 1500 && got == size; iter++) {
        memcpy(copy, orig, size);
        for (int k = 0; k < 1 + (int)(test_rand_u64(&rng) % 3); k++)
            copy[test_rand_u64(&rng) % size] = (uint8_t)test_rand_u64(&rng);
        struct ferry_gguf *g;
        if (ferry_gguf_parse(copy, size, &g, &err) != FERRY_OK) continue;
        parsed++;
        struct ferry_vocab *v;
        if (ferry_vocab_load(g, &v, &err) == FERRY_OK) {
            loaded++;
            char text[256];
            size_t n = rand_text(&rng, text, sizeof text, 2);
            int32_t *t;
            size_t nt;
            if (ferry_tokenize(v, text, n, true, true, &t, &nt, &err) == FERRY_OK) free(t);
            ferry_vocab_free(v);
        }
        ferry_gguf_close(g);
    }
    free(orig);
    free(copy);
    CHECK(parsed > 0, "corruption: %d parsed, %d loaded, none crashed", parsed, loaded);
}

/* Random bytes through both models with specials in the vocabulary: ids in
 * range, no crash, and byte-exact round trips where the model allows. */
static void test_random_bytes(void) {
    struct vb b = { 0 };
    vb_bpe_bytes(&b);
    vb_merge(&b, "a", "b");
    vb_add(&b, "<|s|>", 3, 0);
    vb_add(&b, "<u>", 4, 0);
    struct ferry_vocab *bpe = load_vb(&b, "gpt2", "llama3");
    vb_free(&b);
    vb_spm_base(&b);
    vb_add(&b, SP, 1, -1);
    vb_add(&b, "a", 1, -1);
    vb_add(&b, "<x>", 4, 0);
    struct ferry_vocab *spm = load_vb(&b, "llama", NULL);
    vb_free(&b);
    if (!bpe || !spm) { ferry_vocab_free(bpe); ferry_vocab_free(spm); return; }
    uint64_t rng = 1234;
    int bad_range = 0, bad_rt = 0;
    char text[2048];
    for (int i = 0; i < 1500; i++) {
        size_t n = test_rand_u64(&rng) % sizeof text;
        for (size_t k = 0; k < n; k++) text[k] = (char)test_rand_u64(&rng);
        if (i % 5 == 0 && n > 30) memcpy(text + n / 2, "<|s|><x><u>", 11);
        const struct ferry_vocab *v = i & 1 ? spm : bpe;
        int32_t *t;
        size_t nt;
        struct ferry_error err = { 0 };
        if (ferry_tokenize(v, text, n, i % 3 == 0, i % 4 == 0, &t, &nt, &err) != FERRY_OK) {
            bad_range++;
            continue;
        }
        for (size_t k = 0; k < nt; k++) bad_range += t[k] < 0 || t[k] >= ferry_vocab_n_tokens(v);
        free(t);
        if (v == bpe && !round_trip(v, text, n)) bad_rt++;
    }
    CHECK(bad_range == 0, "random bytes: %d failures or ids out of range", bad_range);
    CHECK(bad_rt == 0, "random bytes: %d BPE round trips failed", bad_rt);
    ferry_vocab_free(bpe);
    ferry_vocab_free(spm);
}

/* ---- Unicode classes ---- */

static void test_unicode(void) {
    struct { uint32_t cp; enum ferry_uclass c; } cases[] = {
        { 'a', FERRY_UC_LETTER }, { '7', FERRY_UC_NUMBER }, { ' ', FERRY_UC_SPACE }, { '\n', FERRY_UC_SPACE },
        { '_', FERRY_UC_OTHER }, { 0x1F, FERRY_UC_OTHER }, { 0xE9, FERRY_UC_LETTER }, { 0xD7, FERRY_UC_OTHER },
        { 0xA0, FERRY_UC_SPACE }, { 0xB2, FERRY_UC_NUMBER }, { 0x3B1, FERRY_UC_LETTER }, { 0x301, FERRY_UC_OTHER },
        { 0x663, FERRY_UC_NUMBER }, { 0x2014, FERRY_UC_OTHER }, { 0x20AC, FERRY_UC_OTHER }, { 0x3000, FERRY_UC_SPACE },
        { 0x3001, FERRY_UC_OTHER }, { 0x65E5, FERRY_UC_LETTER }, { 0xFF11, FERRY_UC_NUMBER }, { 0x1F600, FERRY_UC_OTHER },
        { 0x2163, FERRY_UC_NUMBER }, { FERRY_UTF8_INVALID, FERRY_UC_OTHER },
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (ferry_unicode_class(cases[i].cp) != cases[i].c) {
            bad++;
            fprintf(stderr, "  class of U+%04X\n", cases[i].cp);
        }
    CHECK(bad == 0, "unicode classes: %d wrong", bad);
    /* the class table is searched by bisection: check it is ordered by
     * comparing every code point with a linear reading of the answers */
    int changes = 0;
    for (uint32_t cp = 1; cp < 0x110000; cp++) changes += ferry_unicode_class(cp) != ferry_unicode_class(cp - 1);
    CHECK(changes > 100 && changes < 1000, "class boundaries: %d", changes);
    int map_bad = 0;
    for (int byte = 0; byte < 256; byte++)
        map_bad += ferry_byte_to_unicode((uint8_t)byte) != b2u[byte] || ferry_unicode_to_byte(b2u[byte]) != byte;
    CHECK(map_bad == 0 && ferry_unicode_to_byte(0x144) == -1 && ferry_unicode_to_byte(0xAD) == -1,
          "bytes_to_unicode: %d wrong", map_bad);
    uint32_t cp;
    CHECK(ferry_utf8_decode((const uint8_t *)"\xC0\x80", 2, &cp) == 1 && cp == FERRY_UTF8_INVALID, "overlong refused");
    CHECK(ferry_utf8_decode((const uint8_t *)"\xED\xA0\x80", 3, &cp) == 1 && cp == FERRY_UTF8_INVALID, "surrogate refused");
    CHECK(ferry_utf8_decode((const uint8_t *)"\xE2\x82", 2, &cp) == 1 && cp == FERRY_UTF8_INVALID, "truncated refused");
    CHECK(ferry_utf8_decode((const uint8_t *)"\xF0\x9F\x98\x80", 4, &cp) == 4 && cp == 0x1F600, "4-byte decode");
}

/* ---- speed ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 256 bytes + 2704 two-letter + 140000 three-letter tokens, each with its
 * merge: about the size of Llama 3's vocabulary. */
static void test_speed(void) {
    static const char L[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const int nl = 52, n3 = 140000;
    size_t n = 256 + (size_t)nl * nl + n3, nm = (size_t)nl * nl + n3;
    char **tok = malloc(n * sizeof *tok), **merges = malloc(nm * sizeof *merges);
    int32_t *types = malloc(n * sizeof *types);
    for (int i = 0; i < 256; i++) {
        char s[2] = { (char)i, 0 };
        tok[i] = strdup(i ? bl(s) : "\xC4\x80");
    }
    size_t k = 256, m = 0;
    for (int i = 0; i < nl; i++)
        for (int j = 0; j < nl; j++) {
            char t[3] = { L[i], L[j], 0 }, mm[4] = { L[i], ' ', L[j], 0 };
            tok[k++] = strdup(t);
            merges[m++] = strdup(mm);
        }
    for (int q = 0; q < n3; q++) {
        int i = q / (nl * nl), j = q / nl % nl, l = q % nl;
        char t[4] = { L[i], L[j], L[l], 0 }, mm[5] = { L[i], L[j], ' ', L[l], 0 };
        tok[k++] = strdup(t);
        merges[m++] = strdup(mm);
    }
    for (size_t i = 0; i < n; i++) types[i] = 1;
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    ferry_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    ferry_gguf_writer_add_str(w, "tokenizer.ggml.pre", "llama-bpe");
    ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, n);
    ferry_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", FERRY_GGUF_I32, types, n);
    ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, nm);
    char path[512];
    snprintf(path, sizeof path, "%s/big.gguf", tmpdir);
    struct ferry_error err = { 0 };
    CHECK(ferry_gguf_writer_write(w, path, &err) == FERRY_OK, "write big: %s", err.msg);
    ferry_gguf_writer_free(w);
    for (size_t i = 0; i < n; i++) free(tok[i]);
    for (size_t i = 0; i < nm; i++) free(merges[i]);
    free(tok);
    free(merges);
    free(types);

    struct ferry_gguf *g;
    if (!CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open big: %s", err.msg)) return;
    double t0 = now();
    struct ferry_vocab *v;
    int rc = ferry_vocab_load(g, &v, &err);
    double t_load = now() - t0;
    ferry_gguf_close(g);
    unlink(path);
    if (!CHECK(rc == FERRY_OK, "load big: %s", err.msg)) return;
    /* generous bounds: sanitizer builds are several times slower */
    CHECK(t_load < 2.0, "%zu-token vocabulary loaded in %.3f s", n, t_load);

    size_t len = 100000;
    char *text = malloc(len);
    uint64_t rng = 5;
    for (size_t i = 0; i < len; i++) text[i] = test_rand_u64(&rng) % 7 == 0 ? ' ' : L[test_rand_u64(&rng) % nl];
    int32_t *t;
    size_t nt;
    t0 = now();
    rc = ferry_tokenize(v, text, len, false, false, &t, &nt, &err);
    double t_words = now() - t0;
    if (rc == FERRY_OK) free(t);
    for (size_t i = 0; i < len; i++) text[i] = L[test_rand_u64(&rng) % nl]; /* one 100 KB pre-token */
    t0 = now();
    rc |= ferry_tokenize(v, text, len, false, false, &t, &nt, &err);
    double t_long = now() - t0;
    CHECK(rc == FERRY_OK && nt >= len / 3 && nt <= len, "100 KB without spaces: %zu tokens", nt);
    if (rc == FERRY_OK) free(t);
    CHECK(t_words < 1.0 && t_long < 1.0, "100 KB tokenized in %.3f s (words), %.3f s (one word)", t_words, t_long);
    printf("vocab speed: %zu tokens load %.1f ms; 100 KB: %.1f ms words, %.1f ms one word\n", n, t_load * 1e3,
           t_words * 1e3, t_long * 1e3);
    free(text);
    ferry_vocab_free(v);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-vocab-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    init_b2u();
    test_unicode();
    test_bpe_merge_order();
    test_bpe_pretokenizers();
    test_bpe_specials();
    test_bpe_missing_bytes();
    test_spm();
    test_round_trips();
    test_hostile_vocabs();
    test_corrupt_files();
    test_random_bytes();
    test_speed();
    test_remove_dir(tmpdir);
    return test_summary();
}
