/* The tokenizer: a vocabulary loaded from tokenizer.ggml.* keys, byte-level
 * BPE ("gpt2") and SentencePiece ("llama") tokenization as llama.cpp does
 * them, special-token splitting, and token -> bytes decoding.
 *
 * Layout: token texts live in one blob; an open-addressing table maps text
 * to id, another maps a merge's (left id, right id) to its rank and result,
 * so neither loading nor tokenizing touches strings more than once. Both
 * tokenizers merge with a binary heap, O(n log n) in the length of a
 * pre-token, so long inputs without spaces stay cheap. */
#include <stdlib.h>
#include <string.h>

#include "ferry/vocab.h"
#include "unicode.h"

#define MAX_TOKENS (1 << 24)
#define MAX_MERGES (1 << 26)
#define MAX_TOKEN_LEN 65535
/* Longest probe sequence the hash tables allow. A well-mixed table at half
 * load never comes near it; a vocabulary built to collide is refused
 * instead of making every lookup slow. */
#define MAX_PROBE 1024

enum token_type { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3,
                  TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum pre_kind { PRE_GPT2, PRE_LLAMA3, PRE_QWEN2 };

/* Per-token flags. */
enum { F_MATCH_ALWAYS = 1, /* user-defined: split out of any text */
       F_MATCH_PARSE = 2,  /* control/unknown: only with parse_special */
       F_EOG = 4 };

struct merge_slot {
    uint64_t key; /* left id << 32 | right id */
    int32_t rank; /* -1: empty slot */
    int32_t result;
};

struct ferry_vocab {
    enum ferry_vocab_kind kind;
    enum pre_kind pre;
    bool ignore_merges; /* llama3: a pre-token that is a token is taken whole */
    bool add_bos, add_eos, add_space_prefix;
    int32_t n;
    char *blob; /* every token text, each NUL-terminated */
    size_t *off;
    uint32_t *len;
    float *score;
    uint8_t *type;
    uint8_t *flags;
    int32_t bos, eos, eot, eom, unk, pad;
    int32_t *tok_slots; /* text -> id; -1 empty */
    size_t tok_mask;
    struct merge_slot *merges;
    size_t merge_mask;
    int32_t byte_tok[256]; /* the token standing for a lone byte, or -1 */
    uint32_t *special_lens; /* distinct lengths of matchable specials, longest first */
    size_t n_special_lens;
};

/* ---- hashing ---- */

/* A polynomial hash, so that the special-token scan can roll it along the
 * text; mix64 spreads it over the table. */
#define HASH_MUL 0x100000001B3ull

static uint64_t text_hash(const uint8_t *s, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = h * HASH_MUL + s[i] + 1;
    return h;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t table_size(size_t n) {
    size_t s = 16;
    while (s < 2 * n) s *= 2;
    return s;
}

static const uint8_t *tok_text(const struct ferry_vocab *v, int32_t id) {
    return (const uint8_t *)v->blob + v->off[id];
}

static int32_t find_token_h(const struct ferry_vocab *v, uint64_t h, const uint8_t *s, size_t n) {
    size_t i = (size_t)mix64(h) & v->tok_mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & v->tok_mask) {
        int32_t id = v->tok_slots[i];
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(tok_text(v, id), s, n) == 0) return id;
    }
    return -1;
}

static int32_t find_token(const struct ferry_vocab *v, const void *s, size_t n) {
    return find_token_h(v, text_hash(s, n), s, n);
}

/* The token whose text is a followed by b, or -1. */
static int32_t find_token2(const struct ferry_vocab *v, const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    uint64_t h = text_hash(a, la);
    for (size_t k = 0; k < lb; k++) h = h * HASH_MUL + b[k] + 1;
    size_t i = (size_t)mix64(h) & v->tok_mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & v->tok_mask) {
        int32_t id = v->tok_slots[i];
        if (id < 0) return -1;
        const uint8_t *t = tok_text(v, id);
        if (v->len[id] == la + lb && memcmp(t, a, la) == 0 && memcmp(t + la, b, lb) == 0) return id;
    }
    return -1;
}

/* Later duplicates replace earlier ones, as llama.cpp's map assignment does. */
static bool insert_token(struct ferry_vocab *v, int32_t id) {
    const uint8_t *s = tok_text(v, id);
    size_t n = v->len[id];
    size_t i = (size_t)mix64(text_hash(s, n)) & v->tok_mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & v->tok_mask) {
        int32_t o = v->tok_slots[i];
        if (o < 0 || (v->len[o] == n && memcmp(tok_text(v, o), s, n) == 0)) {
            v->tok_slots[i] = id;
            return true;
        }
    }
    return false;
}

static uint64_t merge_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

static const struct merge_slot *find_merge(const struct ferry_vocab *v, int32_t a, int32_t b) {
    if (a < 0 || b < 0 || !v->merges) return NULL;
    uint64_t key = merge_key(a, b);
    size_t i = (size_t)mix64(key) & v->merge_mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & v->merge_mask) {
        const struct merge_slot *m = &v->merges[i];
        if (m->rank < 0) return NULL;
        if (m->key == key) return m;
    }
    return NULL;
}

/* The first occurrence of a pair keeps its (lower) rank. */
static bool insert_merge(struct ferry_vocab *v, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = merge_key(a, b);
    size_t i = (size_t)mix64(key) & v->merge_mask;
    for (int probe = 0; probe < MAX_PROBE; probe++, i = (i + 1) & v->merge_mask) {
        struct merge_slot *m = &v->merges[i];
        if (m->rank >= 0 && m->key == key) return true;
        if (m->rank < 0) {
            *m = (struct merge_slot){ key, rank, result };
            return true;
        }
    }
    return false;
}

/* ---- loading ---- */

void ferry_vocab_free(struct ferry_vocab *v) {
    if (!v) return;
    free(v->blob);
    free(v->off);
    free(v->len);
    free(v->score);
    free(v->type);
    free(v->flags);
    free(v->tok_slots);
    free(v->merges);
    free(v->special_lens);
    free(v);
}

static bool str_is(struct ferry_gguf_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int load_texts(struct ferry_vocab *v, const struct ferry_gguf *g, struct ferry_error *err) {
    enum ferry_gguf_type et;
    uint64_t count;
    const void *data;
    if (!ferry_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &count, &data) || et != FERRY_GGUF_STRING)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: tokenizer.ggml.tokens is missing or not a string array");
    if (count == 0 || count > MAX_TOKENS)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %llu tokens (1..%d allowed)",
                          (unsigned long long)count, MAX_TOKENS);
    v->n = (int32_t)count;
    size_t total = 0;
    for (uint64_t i = 0; i < count; i++) {
        struct ferry_gguf_str s;
        if (!ferry_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %llu unreadable", (unsigned long long)i);
        if (s.len > MAX_TOKEN_LEN)
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %llu is %llu bytes long",
                              (unsigned long long)i, (unsigned long long)s.len);
        if (!ferry_utf8_valid((const uint8_t *)s.ptr, (size_t)s.len))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %llu is not valid UTF-8", (unsigned long long)i);
        total += (size_t)s.len + 1; /* bounded: count * (MAX_TOKEN_LEN + 1) < 2^41 */
    }
    v->blob = malloc(total);
    v->off = malloc(count * sizeof *v->off);
    v->len = malloc(count * sizeof *v->len);
    if (!v->blob || !v->off || !v->len) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    size_t at = 0;
    for (uint64_t i = 0; i < count; i++) {
        struct ferry_gguf_str s;
        ferry_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s);
        memcpy(v->blob + at, s.ptr, (size_t)s.len);
        v->blob[at + s.len] = 0;
        v->off[i] = at;
        v->len[i] = (uint32_t)s.len;
        at += (size_t)s.len + 1;
    }
    return FERRY_OK;
}

/* A numeric array of exactly n elements of type t, or absent. */
static int get_parallel_arr(const struct ferry_gguf *g, const char *key, enum ferry_gguf_type t, int32_t n,
                            const void **data, struct ferry_error *err) {
    enum ferry_gguf_type et;
    uint64_t count;
    *data = NULL;
    if (ferry_gguf_find_key(g, key) < 0) return FERRY_OK;
    if (!ferry_gguf_get_arr(g, key, &et, &count, data) || et != t)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s has the wrong type", key);
    if (count != (uint64_t)n)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s has %llu entries for %d tokens", key,
                          (unsigned long long)count, n);
    return FERRY_OK;
}

static int load_types_scores(struct ferry_vocab *v, const struct ferry_gguf *g, struct ferry_error *err) {
    const void *types, *scores;
    int rc = get_parallel_arr(g, "tokenizer.ggml.token_type", FERRY_GGUF_I32, v->n, &types, err);
    if (!rc) rc = get_parallel_arr(g, "tokenizer.ggml.scores", FERRY_GGUF_F32, v->n, &scores, err);
    if (rc) return rc;
    v->type = malloc((size_t)v->n);
    v->score = malloc((size_t)v->n * sizeof *v->score);
    v->flags = calloc((size_t)v->n, 1);
    if (!v->type || !v->score || !v->flags) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    for (int32_t i = 0; i < v->n; i++) {
        int32_t t = TT_NORMAL;
        float s = 0.0f;
        if (types) memcpy(&t, (const char *)types + 4 * (size_t)i, 4);
        if (scores) memcpy(&s, (const char *)scores + 4 * (size_t)i, 4);
        if (t < TT_UNDEFINED || t > TT_BYTE)
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %d has type %d", i, t);
        if (s != s) return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %d has a NaN score", i);
        /* Tokens that can be produced from text must have text; empty
         * control or unused placeholders are harmless and do occur. */
        if (v->len[i] == 0 && (t == TT_NORMAL || t == TT_UNDEFINED || t == TT_USER || t == TT_BYTE))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: token %d is empty", i);
        v->type[i] = (uint8_t)t;
        v->score[i] = s;
    }
    return FERRY_OK;
}

static int build_token_index(struct ferry_vocab *v, struct ferry_error *err) {
    size_t size = table_size((size_t)v->n);
    v->tok_slots = malloc(size * sizeof *v->tok_slots);
    if (!v->tok_slots) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    memset(v->tok_slots, 0xFF, size * sizeof *v->tok_slots);
    v->tok_mask = size - 1;
    for (int32_t i = 0; i < v->n; i++)
        if (!insert_token(v, i))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: too many token hash collisions (at token %d)", i);
    return FERRY_OK;
}

/* An id key: absent keeps *id; 0xFFFFFFFF means none. An id outside the
 * vocabulary is refused, except for padding, which nothing here uses and
 * which some converters write out of range. */
static int get_id(const struct ferry_vocab *v, const struct ferry_gguf *g, const char *key, int32_t *id,
                  struct ferry_error *err) {
    if (ferry_gguf_find_key(g, key) < 0) return FERRY_OK;
    int64_t x;
    if (!ferry_gguf_get_i64(g, key, &x))
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s is not an integer", key);
    if (x == -1 || x == 0xFFFFFFFFll) {
        *id = -1;
        return FERRY_OK;
    }
    if (x < 0 || x >= v->n) {
        if (strcmp(key, "tokenizer.ggml.padding_token_id") == 0) {
            *id = -1;
            return FERRY_OK;
        }
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s = %lld is outside the %d tokens", key,
                          (long long)x, v->n);
    }
    *id = (int32_t)x;
    return FERRY_OK;
}

static int get_flag(const struct ferry_gguf *g, const char *key, bool *out, struct ferry_error *err) {
    if (ferry_gguf_find_key(g, key) < 0) return FERRY_OK;
    if (!ferry_gguf_get_bool(g, key, out))
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s is not a bool", key);
    return FERRY_OK;
}

static int load_specials(struct ferry_vocab *v, const struct ferry_gguf *g, struct ferry_error *err) {
    static const char *const keys[] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                        "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
                                        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id" };
    int32_t *ids[] = { &v->bos, &v->eos, &v->eot, &v->eom, &v->unk, &v->pad };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int rc = get_id(v, g, keys[i], ids[i], err);
        if (rc) return rc;
    }
    int rc = get_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err);
    if (!rc) rc = get_flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err);
    if (!rc) rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err);
    return rc;
}

/* Defaults as llama.cpp sets them before reading the keys. */
static int choose_model(struct ferry_vocab *v, const struct ferry_gguf *g, struct ferry_error *err) {
    struct ferry_gguf_str model, pre;
    if (!ferry_gguf_get_str(g, "tokenizer.ggml.model", &model))
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: tokenizer.ggml.model is missing");
    v->bos = v->eos = v->eot = v->eom = v->unk = v->pad = -1;
    if (str_is(model, "llama")) {
        v->kind = FERRY_VOCAB_SPM;
        v->add_bos = true;
        v->add_space_prefix = true;
        v->bos = v->n > 1 ? 1 : -1;
        v->eos = v->n > 2 ? 2 : -1;
        v->unk = 0;
        return FERRY_OK;
    }
    if (!str_is(model, "gpt2"))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "vocab: tokenizer model \"%.*s\" is not supported",
                          (int)(model.len > 64 ? 64 : model.len), model.ptr);
    v->kind = FERRY_VOCAB_BPE;
    v->pre = PRE_GPT2;
    if (!ferry_gguf_get_str(g, "tokenizer.ggml.pre", &pre)) return FERRY_OK;
    if (str_is(pre, "llama3") || str_is(pre, "llama-v3") || str_is(pre, "llama-bpe") ||
        str_is(pre, "falcon3") || str_is(pre, "pixtral")) {
        v->pre = PRE_LLAMA3;
        v->ignore_merges = true;
        v->add_bos = true;
    } else if (str_is(pre, "qwen2") || str_is(pre, "deepseek-r1-qwen")) {
        v->pre = PRE_QWEN2;
    }
    /* "default", "gpt2" and names not known here get GPT-2's pattern: the
     * closest common rule, and it never loses bytes, only moves pre-token
     * boundaries for models that meant something else. */
    return FERRY_OK;
}

/* Merges "left right": the first space after the first byte splits them
 * (as llama.cpp does); both halves must be tokens. */
static int load_merges(struct ferry_vocab *v, const struct ferry_gguf *g, struct ferry_error *err) {
    const char *key = "tokenizer.ggml.merges";
    enum ferry_gguf_type et;
    uint64_t count;
    const void *data;
    if (!ferry_gguf_get_arr(g, key, &et, &count, &data) || et != FERRY_GGUF_STRING)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %s is missing or not a string array", key);
    if (count > MAX_MERGES)
        return ferry_fail(err, FERRY_ERR_INVALID, "vocab: %llu merges", (unsigned long long)count);
    size_t size = table_size((size_t)count);
    v->merges = malloc(size * sizeof *v->merges);
    if (!v->merges) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    for (size_t i = 0; i < size; i++) v->merges[i].rank = -1;
    v->merge_mask = size - 1;
    for (uint64_t r = 0; r < count; r++) {
        struct ferry_gguf_str s;
        if (!ferry_gguf_get_arr_str(g, key, r, &s))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: merge %llu unreadable", (unsigned long long)r);
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', (size_t)s.len - 1) : NULL;
        if (!sp)
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: merge %llu has no space", (unsigned long long)r);
        size_t la = (size_t)(sp - s.ptr), lb = (size_t)s.len - la - 1;
        int32_t a = find_token(v, s.ptr, la), b = find_token(v, sp + 1, lb);
        if (a < 0 || b < 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: merge %llu \"%.*s\" names an unknown token",
                              (unsigned long long)r, (int)(s.len > 64 ? 64 : s.len), s.ptr);
        /* The result is looked up once here; a pair whose concatenation is
         * not a token still merges, and its bytes fall back when emitted. */
        int32_t result = find_token2(v, (const uint8_t *)s.ptr, la, (const uint8_t *)sp + 1, lb);
        if (!insert_merge(v, a, b, (int32_t)r, result))
            return ferry_fail(err, FERRY_ERR_INVALID, "vocab: too many merge hash collisions");
    }
    return FERRY_OK;
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xXX>" -> the byte, else -1. */
static int byte_token_value(const struct ferry_vocab *v, int32_t id) {
    const uint8_t *s = tok_text(v, id);
    if (v->len[id] != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
}

static int setup_bytes(struct ferry_vocab *v, struct ferry_error *err) {
    for (int b = 0; b < 256; b++) {
        int32_t id;
        if (v->kind == FERRY_VOCAB_BPE) {
            uint8_t u[4];
            size_t n = ferry_utf8_encode(ferry_byte_to_unicode((uint8_t)b), u);
            id = find_token(v, u, n);
        } else {
            static const char hex[] = "0123456789ABCDEF";
            char name[6] = { '<', '0', 'x', hex[b >> 4], hex[b & 15], '>' };
            id = find_token(v, name, 6);
            if (id < 0) {
                uint8_t c = (uint8_t)b;
                id = find_token(v, &c, 1);
            }
        }
        v->byte_tok[b] = id;
    }
    if (v->kind == FERRY_VOCAB_SPM)
        for (int32_t i = 0; i < v->n; i++)
            if (v->type[i] == TT_BYTE && byte_token_value(v, i) < 0)
                return ferry_fail(err, FERRY_ERR_INVALID, "vocab: byte token %d is not of the form <0xXX>", i);
    return FERRY_OK;
}

static int cmp_u32_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Which tokens are split out of text, and which end a generation. */
static int setup_match(struct ferry_vocab *v, struct ferry_error *err) {
    static const char *const eog_texts[] = { "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>",
                                             "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|end_of_text|>",
                                             "<|return|>", "<|call|>" };
    size_t n_lens = 0;
    uint32_t *lens = malloc((size_t)v->n * sizeof *lens);
    if (!lens) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    for (int32_t i = 0; i < v->n; i++) {
        uint8_t t = v->type[i];
        if (v->len[i] > 0 && (t == TT_USER || t == TT_CONTROL || t == TT_UNKNOWN)) {
            v->flags[i] |= t == TT_USER ? F_MATCH_ALWAYS : F_MATCH_PARSE;
            lens[n_lens++] = v->len[i];
        }
        if (t == TT_CONTROL || t == TT_USER)
            for (size_t k = 0; k < sizeof eog_texts / sizeof eog_texts[0]; k++)
                if (strcmp(v->blob + v->off[i], eog_texts[k]) == 0) v->flags[i] |= F_EOG;
    }
    int32_t ends[] = { v->eos, v->eot, v->eom };
    for (size_t k = 0; k < 3; k++)
        if (ends[k] >= 0) v->flags[ends[k]] |= F_EOG;
    qsort(lens, n_lens, sizeof *lens, cmp_u32_desc);
    size_t d = 0;
    for (size_t i = 0; i < n_lens; i++)
        if (d == 0 || lens[d - 1] != lens[i]) lens[d++] = lens[i];
    v->special_lens = lens;
    v->n_special_lens = d;
    return FERRY_OK;
}

int ferry_vocab_load(const struct ferry_gguf *g, struct ferry_vocab **out, struct ferry_error *err) {
    *out = NULL;
    struct ferry_vocab *v = calloc(1, sizeof *v);
    if (!v) return ferry_fail(err, FERRY_ERR_NOMEM, "vocab: out of memory");
    int rc = load_texts(v, g, err);
    if (!rc) rc = load_types_scores(v, g, err);
    if (!rc) rc = build_token_index(v, err);
    if (!rc) rc = choose_model(v, g, err);
    if (!rc) rc = load_specials(v, g, err);
    if (!rc && v->kind == FERRY_VOCAB_BPE) rc = load_merges(v, g, err);
    if (!rc) rc = setup_bytes(v, err);
    if (!rc) rc = setup_match(v, err);
    if (rc) {
        ferry_vocab_free(v);
        return rc;
    }
    if (v->kind == FERRY_VOCAB_BPE) v->add_space_prefix = false; /* an SPM notion only */
    *out = v;
    return FERRY_OK;
}

enum ferry_vocab_kind ferry_vocab_kind(const struct ferry_vocab *v) { return v->kind; }
int32_t ferry_vocab_n_tokens(const struct ferry_vocab *v) { return v->n; }
int32_t ferry_vocab_bos(const struct ferry_vocab *v) { return v->bos; }
int32_t ferry_vocab_eos(const struct ferry_vocab *v) { return v->eos; }
bool ferry_vocab_add_bos(const struct ferry_vocab *v) { return v->add_bos && v->bos >= 0; }

bool ferry_vocab_is_eog(const struct ferry_vocab *v, int32_t id) {
    return id >= 0 && id < v->n && (v->flags[id] & F_EOG);
}

const char *ferry_vocab_token_text(const struct ferry_vocab *v, int32_t id) {
    return id >= 0 && id < v->n ? v->blob + v->off[id] : NULL;
}

/* ---- output ---- */

struct out {
    int32_t *v;
    size_t n, cap;
    bool oom;
};

static void push(struct out *o, int32_t id) {
    if (o->oom) return;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        int32_t *p = cap > SIZE_MAX / sizeof *p ? NULL : realloc(o->v, cap * sizeof *p);
        if (!p) {
            o->oom = true;
            return;
        }
        o->v = p;
        o->cap = cap;
    }
    o->v[o->n++] = id;
}

/* A symbol no token covers: each byte's own token, else unknown, else dropped. */
static void push_bytes(const struct ferry_vocab *v, struct out *o, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = v->byte_tok[s[i]];
        if (id < 0) id = v->unk;
        if (id >= 0) push(o, id);
    }
}

/* ---- the merge heap shared by both tokenizers ---- */

struct sym {
    size_t start, n; /* bytes of the text; n == 0 once merged away */
    int64_t prev, next;
    int32_t id;
};

struct bigram {
    double key;    /* BPE: rank (lower first); SPM: -score (lower first) */
    size_t left, right;
    size_t right_n; /* right symbol's length when queued: detects stale entries */
    int32_t result;
};

struct heap {
    struct bigram *a;
    size_t n, cap;
};

static bool before(const struct bigram *x, const struct bigram *y) {
    return x->key < y->key || (x->key == y->key && x->left < y->left);
}

static void heap_push(struct heap *h, struct bigram b) {
    if (h->n == h->cap) return; /* cannot happen: capacity covers every push */
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(&b, &h->a[p])) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = b;
}

static struct bigram heap_pop(struct heap *h) {
    struct bigram top = h->a[0], last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && before(&h->a[c + 1], &h->a[c])) c++;
        if (!before(&h->a[c], &last)) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

/* Scratch for one run of merges over ns symbols: every merge queues at
 * most two new pairs, so 3 * ns entries always suffice. */
static bool heap_init(struct heap *h, size_t ns) {
    h->n = 0;
    h->cap = ns > SIZE_MAX / (3 * sizeof *h->a) ? 0 : 3 * ns;
    h->a = h->cap ? malloc(h->cap * sizeof *h->a) : NULL;
    return h->a != NULL;
}

/* ---- BPE ---- */

struct bpe_ctx {
    const struct ferry_vocab *v;
    const uint8_t *text; /* the fragment */
    struct sym *syms;
    struct heap heap;
    uint8_t *mapped; /* 2 bytes per text byte: a word in byte-level form */
    struct out *out;
};

static void bpe_add_pair(struct bpe_ctx *c, int64_t l, int64_t r) {
    if (l < 0 || r < 0) return;
    const struct merge_slot *m = find_merge(c->v, c->syms[l].id, c->syms[r].id);
    if (!m) return;
    heap_push(&c->heap, (struct bigram){ (double)m->rank, (size_t)l, (size_t)r, c->syms[r].n, m->result });
}

/* One pre-token: bytes w[0..n), merged lowest rank first, leftmost on ties. */
static void bpe_word(struct bpe_ctx *c, size_t w, size_t n) {
    const struct ferry_vocab *v = c->v;
    if (n == 0) return;
    if (v->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += ferry_utf8_encode(ferry_byte_to_unicode(c->text[w + i]), c->mapped + m);
        int32_t id = find_token(v, c->mapped, m);
        if (id >= 0) {
            push(c->out, id);
            return;
        }
    }
    struct sym *s = c->syms;
    for (size_t i = 0; i < n; i++)
        s[i] = (struct sym){ w + i, 1, (int64_t)i - 1, i + 1 < n ? (int64_t)i + 1 : -1, v->byte_tok[c->text[w + i]] };
    c->heap.n = 0;
    for (size_t i = 1; i < n; i++) bpe_add_pair(c, (int64_t)i - 1, (int64_t)i);
    while (c->heap.n) {
        struct bigram b = heap_pop(&c->heap);
        struct sym *l = &s[b.left], *r = &s[b.right];
        if (l->n == 0 || r->n == 0 || r->n != b.right_n) continue;
        l->n += r->n;
        l->id = b.result;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = (int64_t)b.left;
        bpe_add_pair(c, l->prev, (int64_t)b.left);
        bpe_add_pair(c, (int64_t)b.left, l->next);
    }
    for (int64_t i = 0; i >= 0; i = s[i].next) {
        if (s[i].id >= 0) push(c->out, s[i].id);
        else push_bytes(v, c->out, c->text + s[i].start, s[i].n);
    }
}

#define OUT_OF_RANGE 0xFFFFFFFEu

/* The fragment as characters: class, code point, byte offset. */
struct chars {
    size_t n;
    uint8_t *cls;
    uint32_t *cp;
    size_t *off; /* n + 1 entries */
};

static int cls_at(const struct chars *ch, size_t i) { return i < ch->n ? ch->cls[i] : -1; }
static uint32_t cp_at(const struct chars *ch, size_t i) { return i < ch->n ? ch->cp[i] : OUT_OF_RANGE; }
static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Pre-token ends are collected in ends[]; empty pieces are dropped. */
struct splitter {
    size_t *ends, n_ends, prev;
};

static void add_end(struct splitter *sp, size_t end) {
    if (end > sp->prev) sp->ends[sp->n_ends++] = end;
    sp->prev = end;
}

/* 's|'t|'re|'ve|'m|'ll|'d, case-folded when fold: length 2 or 3, else 0. */
static size_t contraction(const struct chars *ch, size_t pos, bool fold) {
    if (ch->cp[pos] != '\'' || pos + 1 >= ch->n) return 0;
    uint32_t c1 = ch->cp[pos + 1];
    if (fold) c1 = ascii_lower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (pos + 2 >= ch->n) return 0;
    uint32_t c2 = ch->cp[pos + 2];
    if (fold) c2 = ascii_lower(c2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * written out as llama.cpp's unicode_regex_split_custom_gpt2 does. */
static void split_gpt2(const struct chars *ch, struct splitter *sp) {
    size_t pos = 0;
    while (pos < ch->n) {
        size_t k = contraction(ch, pos, false);
        if (k) {
            pos += k;
            add_end(sp, pos);
            continue;
        }
        uint32_t c = ch->cp[pos];
        int f2 = c == ' ' ? cls_at(ch, pos + 1) : ch->cls[pos];
        if (f2 == FERRY_UC_LETTER || f2 == FERRY_UC_NUMBER || f2 == FERRY_UC_OTHER) {
            pos += c == ' ';
            while (cls_at(ch, pos) == f2) pos++;
            add_end(sp, pos);
            continue;
        }
        size_t nws = 0;
        while (cls_at(ch, pos + nws) == FERRY_UC_SPACE) nws++;
        if (nws > 1 && pos + nws < ch->n) { /* \s+(?!\S): leave the last one to the next word */
            pos += nws - 1;
            add_end(sp, pos);
            continue;
        }
        pos += nws ? nws : 1;
        add_end(sp, pos);
    }
}

/* Llama 3 / Qwen 2: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|
 * \p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * as llama.cpp's unicode_regex_split_custom_llama3 does. */
static void split_llama3(const struct chars *ch, struct splitter *sp, size_t max_digits) {
    size_t pos = 0;
    while (pos < ch->n) {
        size_t k = contraction(ch, pos, true);
        if (k) {
            pos += k;
            add_end(sp, pos);
            continue;
        }
        uint32_t c = ch->cp[pos];
        int f = ch->cls[pos];
        if (c != '\r' && c != '\n' && f != FERRY_UC_NUMBER &&
            (f == FERRY_UC_LETTER || cls_at(ch, pos + 1) == FERRY_UC_LETTER)) {
            pos++; /* the letter itself, or the one optional prefix character */
            while (cls_at(ch, pos) == FERRY_UC_LETTER) pos++;
            add_end(sp, pos);
            continue;
        }
        if (f == FERRY_UC_NUMBER) {
            size_t ini = pos;
            while (cls_at(ch, pos) == FERRY_UC_NUMBER)
                if (++pos - ini >= max_digits) {
                    add_end(sp, pos);
                    ini = pos;
                }
            add_end(sp, pos);
            continue;
        }
        int f2 = c == ' ' ? cls_at(ch, pos + 1) : f;
        if (f2 == FERRY_UC_OTHER) {
            pos += c == ' ';
            while (cls_at(ch, pos) == FERRY_UC_OTHER) pos++;
            while (cp_at(ch, pos) == '\r' || cp_at(ch, pos) == '\n') pos++;
            add_end(sp, pos);
            continue;
        }
        size_t nws = 0, last_nl = 0;
        while (cls_at(ch, pos + nws) == FERRY_UC_SPACE) {
            uint32_t c2 = ch->cp[pos + nws];
            if (c2 == '\r' || c2 == '\n') last_nl = pos + nws + 1;
            nws++;
        }
        if (last_nl) { /* \s*[\r\n]+ */
            pos = last_nl;
        } else if (nws > 1 && pos + nws < ch->n) { /* \s+(?!\S) */
            pos += nws - 1;
        } else {
            pos += nws ? nws : 1;
        }
        add_end(sp, pos);
    }
}

static bool bpe_fragment(const struct ferry_vocab *v, const uint8_t *t, size_t n, struct out *o) {
    struct chars ch = { 0 };
    struct splitter sp = { 0 };
    struct bpe_ctx c = { .v = v, .text = t, .out = o };
    bool ok = false;
    if (n > SIZE_MAX / 64) return false;
    ch.cls = malloc(n);
    ch.cp = malloc(n * sizeof *ch.cp);
    ch.off = malloc((n + 1) * sizeof *ch.off);
    sp.ends = malloc(n * sizeof *sp.ends);
    c.syms = malloc(n * sizeof *c.syms);
    c.mapped = malloc(2 * n);
    if (!ch.cls || !ch.cp || !ch.off || !sp.ends || !c.syms || !c.mapped || !heap_init(&c.heap, n)) goto done;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = ferry_utf8_decode(t + i, n - i, &cp);
        ch.cp[ch.n] = cp;
        ch.cls[ch.n] = (uint8_t)ferry_unicode_class(cp);
        ch.off[ch.n++] = i;
        i += len;
    }
    ch.off[ch.n] = n;
    if (v->pre == PRE_GPT2) split_gpt2(&ch, &sp);
    else split_llama3(&ch, &sp, v->pre == PRE_QWEN2 ? 1 : 3);
    size_t start = 0;
    for (size_t i = 0; i < sp.n_ends; i++) {
        size_t a = ch.off[start], b = ch.off[sp.ends[i]];
        bpe_word(&c, a, b - a);
        start = sp.ends[i];
    }
    ok = true;
done:
    free(ch.cls);
    free(ch.cp);
    free(ch.off);
    free(sp.ends);
    free(c.syms);
    free(c.mapped);
    free(c.heap.a);
    return ok;
}

/* ---- SentencePiece ---- */

struct spm_ctx {
    const struct ferry_vocab *v;
    const uint8_t *buf;
    struct sym *syms;
    struct heap heap;
};

static void spm_add_pair(struct spm_ctx *c, int64_t l, int64_t r) {
    if (l < 0 || r < 0) return;
    const struct sym *a = &c->syms[l], *b = &c->syms[r];
    int32_t id = find_token(c->v, c->buf + a->start, a->n + b->n);
    if (id < 0) return;
    heap_push(&c->heap, (struct bigram){ -(double)c->v->score[id], (size_t)l, (size_t)r, b->n, id });
}

/* llm_tokenizer_spm: spaces become "▁", characters merge pairwise, the
 * highest-scoring resulting token first (leftmost on ties), and what no
 * token covers falls back to <0xXX> byte tokens. */
static bool spm_fragment(const struct ferry_vocab *v, const uint8_t *t, size_t n, bool prefix, struct out *o) {
    if (n > SIZE_MAX / 8) return false;
    size_t size = prefix ? 3 : 0;
    for (size_t i = 0; i < n; i++) size += t[i] == ' ' ? 3 : 1;
    struct spm_ctx c = { .v = v };
    uint8_t *buf = malloc(size ? size : 1);
    c.syms = malloc((size ? size : 1) * sizeof *c.syms);
    bool ok = false;
    if (!buf || !c.syms || !heap_init(&c.heap, size ? size : 1)) goto done;
    size_t m = 0;
    if (prefix) { memcpy(buf, "\xE2\x96\x81", 3); m = 3; }
    for (size_t i = 0; i < n; i++) {
        if (t[i] == ' ') { memcpy(buf + m, "\xE2\x96\x81", 3); m += 3; }
        else buf[m++] = t[i];
    }
    c.buf = buf;
    size_t ns = 0;
    for (size_t i = 0; i < size; ns++) {
        /* llama.cpp sizes a character by its first byte alone; strict
         * decoding differs only on invalid UTF-8, where it keeps a stray
         * lead byte from swallowing the "▁" of a following space. */
        uint32_t cp;
        size_t len = ferry_utf8_decode(buf + i, size - i, &cp);
        c.syms[ns] = (struct sym){ i, len, (int64_t)ns - 1, -1, find_token(v, buf + i, len) };
        if (ns) c.syms[ns - 1].next = (int64_t)ns;
        i += len;
    }
    for (size_t i = 1; i < ns; i++) spm_add_pair(&c, (int64_t)i - 1, (int64_t)i);
    while (c.heap.n) {
        struct bigram b = heap_pop(&c.heap);
        struct sym *l = &c.syms[b.left], *r = &c.syms[b.right];
        if (l->n == 0 || r->n == 0 || r->n != b.right_n) continue;
        l->n += r->n;
        l->id = b.result;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) c.syms[r->next].prev = (int64_t)b.left;
        spm_add_pair(&c, l->prev, (int64_t)b.left);
        spm_add_pair(&c, (int64_t)b.left, l->next);
    }
    for (int64_t i = ns ? 0 : -1; i >= 0; i = c.syms[i].next) {
        if (c.syms[i].id >= 0) push(o, c.syms[i].id);
        else push_bytes(v, o, buf + c.syms[i].start, c.syms[i].n);
    }
    ok = true;
done:
    free(buf);
    free(c.syms);
    free(c.heap.a);
    return ok;
}

/* ---- special tokens in text ---- */

struct match {
    size_t pos, len;
    int32_t id;
};

static bool matchable(const struct ferry_vocab *v, int32_t id, bool parse_special) {
    return (v->flags[id] & F_MATCH_ALWAYS) || (parse_special && (v->flags[id] & F_MATCH_PARSE));
}

struct special {
    uint32_t len;
    int32_t id;
};

static int cmp_special(const void *a, const void *b) {
    const struct special *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_match(const void *a, const void *b) {
    size_t x = ((const struct match *)a)->pos, y = ((const struct match *)b)->pos;
    return x < y ? -1 : x > y;
}

/* The special tokens present in t: a rolling hash per distinct special
 * length, so the cost is the text length times the number of lengths. */
static struct special *specials_present(const struct ferry_vocab *v, const uint8_t *t, size_t n,
                                        bool parse_special, size_t *count) {
    *count = 0;
    uint8_t *seen = calloc(((size_t)v->n + 7) / 8, 1);
    struct special *found = malloc(sizeof *found);
    size_t cap = 1;
    if (!seen || !found) goto fail;
    for (size_t li = 0; li < v->n_special_lens; li++) {
        size_t L = v->special_lens[li];
        if (L > n) continue;
        uint64_t pw = 1;
        for (size_t k = 1; k < L; k++) pw *= HASH_MUL;
        uint64_t h = text_hash(t, L);
        for (size_t i = 0;; i++) {
            int32_t id = find_token_h(v, h, t + i, L);
            if (id >= 0 && matchable(v, id, parse_special) && !(seen[id >> 3] & (1u << (id & 7)))) {
                seen[id >> 3] |= (uint8_t)(1u << (id & 7));
                if (*count == cap) {
                    struct special *p = realloc(found, 2 * cap * sizeof *p);
                    if (!p) goto fail;
                    found = p;
                    cap *= 2;
                }
                found[(*count)++] = (struct special){ (uint32_t)L, id };
            }
            if (i + L >= n) break;
            h = (h - (t[i] + 1ull) * pw) * HASH_MUL + t[i + L] + 1;
        }
    }
    free(seen);
    return found;
fail:
    free(seen);
    free(found);
    *count = 0;
    return NULL;
}

/* llama.cpp's tokenizer_st_partition: longest special first (lowest id
 * among equals), each taking its leftmost non-overlapping occurrences in
 * the text not yet claimed. Returns the claimed spans sorted by position. */
static struct match *find_specials(const struct ferry_vocab *v, const uint8_t *t, size_t n, bool parse_special,
                                   size_t *n_matches) {
    *n_matches = 0;
    size_t n_sp;
    struct special *sp = specials_present(v, t, n, parse_special, &n_sp);
    if (!sp) return NULL;
    qsort(sp, n_sp, sizeof *sp, cmp_special);
    uint8_t *taken = calloc(n ? n : 1, 1);
    struct match *m = malloc((n ? n : 1) * sizeof *m); /* each match claims at least one byte */
    if (!taken || !m) {
        free(sp);
        free(taken);
        free(m);
        return NULL;
    }
    for (size_t k = 0; k < n_sp; k++) {
        const uint8_t *s = tok_text(v, sp[k].id);
        size_t L = sp[k].len, p = 0;
        while (p + L <= n) {
            const uint8_t *q = memmem(t + p, n - p, s, L);
            if (!q) break;
            size_t at = (size_t)(q - t);
            if (memchr(taken + at, 1, L)) {
                p = at + 1;
                continue;
            }
            memset(taken + at, 1, L);
            m[(*n_matches)++] = (struct match){ at, L, sp[k].id };
            p = at + L;
        }
    }
    free(sp);
    free(taken);
    qsort(m, *n_matches, sizeof *m, cmp_match);
    return m;
}

int ferry_tokenize(const struct ferry_vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t **tokens, size_t *n_tokens, struct ferry_error *err) {
    *tokens = NULL;
    *n_tokens = 0;
    if (!text && len) return ferry_fail(err, FERRY_ERR_INVALID, "tokenize: no text");
    const uint8_t *t = (const uint8_t *)text;
    struct out o = { 0 };
    size_t n_m = 0;
    struct match *m = len && v->n_special_lens ? find_specials(v, t, len, parse_special, &n_m) : malloc(1);
    if (!m) return ferry_fail(err, FERRY_ERR_NOMEM, "tokenize: out of memory");
    if (add_special && v->add_bos && v->bos >= 0) push(&o, v->bos);
    bool ok = true, prev_special = true; /* SPM: a space prefix starts the text and follows specials */
    size_t at = 0;
    for (size_t k = 0; k <= n_m && ok; k++) {
        size_t end = k < n_m ? m[k].pos : len;
        if (end > at) {
            if (v->kind == FERRY_VOCAB_BPE) ok = bpe_fragment(v, t + at, end - at, &o);
            else ok = spm_fragment(v, t + at, end - at, v->add_space_prefix && prev_special, &o);
            prev_special = false;
        }
        if (k < n_m) {
            push(&o, m[k].id);
            prev_special = true;
            at = m[k].pos + m[k].len;
        }
    }
    free(m);
    if (add_special && v->add_eos && v->eos >= 0) push(&o, v->eos);
    if (!ok || o.oom) {
        free(o.v);
        return ferry_fail(err, FERRY_ERR_NOMEM, "tokenize: out of memory");
    }
    *tokens = o.v ? o.v : malloc(sizeof(int32_t));
    if (!*tokens) return ferry_fail(err, FERRY_ERR_NOMEM, "tokenize: out of memory");
    *n_tokens = o.n;
    return FERRY_OK;
}

/* ---- decoding ---- */

struct piece {
    char *buf;
    size_t cap, n;
};

static void put(struct piece *p, const void *s, size_t n) {
    if (p->n < p->cap) memcpy(p->buf + p->n, s, n < p->cap - p->n ? n : p->cap - p->n);
    p->n += n;
}

/* Byte-level text back to bytes; a character outside GPT-2's mapping is
 * copied through as UTF-8 (llama.cpp writes a placeholder instead). */
static void decode_bytelevel(struct piece *p, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = ferry_utf8_decode(s + i, n - i, &cp);
        int b = cp == FERRY_UTF8_INVALID ? -1 : ferry_unicode_to_byte(cp);
        if (b >= 0) {
            uint8_t c = (uint8_t)b;
            put(p, &c, 1);
        } else {
            put(p, s + i, len);
        }
        i += len;
    }
}

static void decode_spm(struct piece *p, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        if (n - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            put(p, " ", 1);
            i += 3;
        } else {
            put(p, s + i, 1);
            i++;
        }
    }
}

static size_t piece_of(const struct ferry_vocab *v, int32_t id, bool special, char *buf, size_t cap) {
    struct piece p = { buf, cap, 0 };
    const uint8_t *s = tok_text(v, id);
    size_t n = v->len[id];
    switch (v->type[id]) {
    case TT_CONTROL:
        if (special) put(&p, s, n);
        break;
    case TT_UNKNOWN:
    case TT_USER:
        put(&p, s, n);
        break;
    case TT_UNUSED:
        break;
    case TT_BYTE:
        if (v->kind == FERRY_VOCAB_SPM) {
            uint8_t c = (uint8_t)byte_token_value(v, id);
            put(&p, &c, 1);
        } else {
            decode_bytelevel(&p, s, n); /* a BPE byte token is byte-level text like any other */
        }
        break;
    default:
        if (v->kind == FERRY_VOCAB_BPE) decode_bytelevel(&p, s, n);
        else decode_spm(&p, s, n);
    }
    return p.n;
}

int ferry_token_to_piece(const struct ferry_vocab *v, int32_t id, bool special, char *buf, size_t cap) {
    if (id < 0 || id >= v->n) return -1;
    return (int)piece_of(v, id, special, buf, cap); /* <= 3 * MAX_TOKEN_LEN */
}

int ferry_detokenize(const struct ferry_vocab *v, const int32_t *tokens, size_t n, bool special, char **text,
                     size_t *len, struct ferry_error *err) {
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= v->n)
            return ferry_fail(err, FERRY_ERR_INVALID, "detokenize: token %d out of range", tokens[i]);
        size_t k = piece_of(v, tokens[i], special, NULL, 0);
        if (k > SIZE_MAX - 1 - total) return ferry_fail(err, FERRY_ERR_NOMEM, "detokenize: text too long");
        total += k;
    }
    char *s = malloc(total + 1);
    if (!s) return ferry_fail(err, FERRY_ERR_NOMEM, "detokenize: out of memory");
    size_t at = 0;
    bool strip = v->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        size_t k = piece_of(v, tokens[i], special, s + at, total - at);
        if (strip && tokens[i] != v->bos) {
            /* undo the space the tokenizer put in front of the text */
            if (k > 0 && s[at] == ' ') {
                memmove(s + at, s + at + 1, k - 1);
                k--;
            }
            strip = false;
        }
        at += k;
    }
    s[at] = 0;
    *text = s;
    *len = at;
    return FERRY_OK;
}
