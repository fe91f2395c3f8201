/* The generator's vocabulary. Byte-level BPE merges (or SentencePiece
 * pieces) are trained on a few paragraphs of built-in English text, the
 * same way a real tokenizer is trained on a large corpus: split the text
 * into words, start from single symbols, repeatedly merge the most frequent
 * adjacent pair. Training stops when the vocabulary is full or no pair
 * occurs twice; the rest is padded with made-up words (see pad_words). */
#include "gen_vocab.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char CORPUS[] =
    "The river starts high in the hills, where snow melts in the spring and runs down over the "
    "stones. In the morning the water is cold and clear, and the light falls on it in long lines. "
    "By the time it reaches the town it has become wide and slow, and the people who live along "
    "its banks have learned to read its moods. When the rain comes early, the river rises; when "
    "the summer is dry, it shrinks back and leaves the old boats resting on the mud.\n"
    "The town itself is small. There is a market on the square every week, a school near the "
    "bridge, and a station where the train stops twice a day. Most of the houses are built of "
    "grey stone, with red roofs and green doors. In the evening the windows are lit one by one, "
    "and the smell of bread comes from the bakery at the corner of the street. Children play by "
    "the water until their parents call them home for dinner.\n"
    "Not far from the town there is a mill that has been working for more than two hundred "
    "years. The wheel turns with the current, and the stones inside grind the grain into flour. "
    "The miller is an old man who knows every sound the machine makes. He says that a good mill, "
    "like a good story, needs a steady force and a little patience. He keeps a book of the "
    "seasons, with notes on the weather, the harvest and the height of the river in each year.\n"
    "In the winter the days are short and the nights are long. Snow covers the fields, the "
    "roads become quiet, and the river freezes at its edges. People gather in the warm rooms of "
    "the inn to talk about the year that has passed and the one that is coming. They tell the "
    "same stories again and again, and each time the stories change a little, because the people "
    "who tell them have changed. It's a simple life, but they don't want another one.\n"
    "When spring returns, the first birds come back to the trees along the water. The farmers "
    "open the gates, the children run to the bridge to watch the ice break, and the miller "
    "writes a new line in his book. The river carries the cold water of the hills down to the "
    "sea, as it has always done, and the town wakes up again to another year of work and light.\n"
    "The school by the bridge has four rooms and one old piano. Every morning the teacher opens "
    "the windows, writes the date on the board and asks the children what they have seen on their "
    "way. Some talk about the birds, some about the trains, and some about the river, which is "
    "never the same two days in a row. In 1897 the school had only twelve pupils; today it has "
    "more than sixty, and the teacher says that the questions they ask have not changed at all.\n"
    "The train that stops at the station comes from the city in the north and goes on to the "
    "coast in the south. It takes about three hours to reach the sea, and the line follows the "
    "river for most of the way. People who travel on it often say that the best part of the "
    "journey is the moment when the valley opens and the water turns silver in the afternoon "
    "light. The driver has made the same trip for thirty years, and he still looks out of the "
    "window at that moment, as if he were seeing it for the first time.\n"
    "On market day the square is full of voices. Farmers bring apples, cheese, honey and eggs; "
    "a woman from the hills sells wool and warm socks; a young man repairs old clocks at a small "
    "table near the fountain. Prices are written on pieces of card, and nobody is in a hurry. "
    "When the bell of the church rings at noon, the stalls close one after another, and the "
    "square becomes quiet again, except for the pigeons that look for the last crumbs of bread.\n"
    "Some evenings, when the air is still, the whole town seems to listen to the river. Its "
    "sound is low and constant, like a voice that has been speaking for a very long time and "
    "has no need to hurry. The old miller says that if you listen carefully you can hear the "
    "seasons in it: the heavy rush of spring, the thin song of summer, the patient murmur of "
    "autumn and the silence of the frozen days. Nobody is sure whether he is joking.\n";

/* ---- small growable arrays --------------------------------------------- */

struct strs {
    char **v;
    size_t n, cap;
};

static bool strs_push(struct strs *s, char *str) {
    if (!str) return false;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        char **v = realloc(s->v, cap * sizeof *v);
        if (!v) { free(str); return false; }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = str;
    return true;
}

static void strs_free(struct strs *s) {
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

static long strs_find(const struct strs *s, const char *str) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], str) == 0) return (long)i;
    return -1;
}

static char *str_ndup(const char *p, size_t n) {
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static char *str_cat(const char *a, const char *sep, const char *b) {
    size_t na = strlen(a), ns = strlen(sep), nb = strlen(b);
    char *s = malloc(na + ns + nb + 1);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, sep, ns);
    memcpy(s + na + ns, b, nb + 1);
    return s;
}

static size_t utf8_encode(unsigned cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* ---- GPT-2 pre-tokenization (ASCII form of its regex) ------------------ */

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at s, or 0. */
static size_t contraction_len(const char *s) {
    static const char *const forms[] = { "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        if (strncmp(s, forms[i], strlen(forms[i])) == 0) return strlen(forms[i]);
    return 0;
}

/* Length of the word starting at s[i]: a contraction, an optional space and
 * a run of letters, digits or punctuation, or a run of whitespace (whose
 * last space, when a word follows, goes to that word). */
static size_t word_len(const char *s, size_t i, size_t n) {
    size_t c = contraction_len(s + i);
    if (c) return c;
    size_t j = i;
    if (s[j] == ' ' && j + 1 < n && !is_space(s[j + 1])) j++;
    if (is_alpha(s[j])) { while (j < n && is_alpha(s[j])) j++; return j - i; }
    if (is_digit(s[j])) { while (j < n && is_digit(s[j])) j++; return j - i; }
    if (!is_space(s[j])) {
        while (j < n && !is_space(s[j]) && !is_alpha(s[j]) && !is_digit(s[j])) j++;
        return j - i;
    }
    while (j < n && is_space(s[j])) j++;
    if (j < n && j - i > 1) j--; /* leave one space to the next word */
    return j - i;
}

/* ---- training ------------------------------------------------------------ */

struct word {
    int *sym; /* symbol ids */
    int n, count;
};

struct trainer {
    struct strs syms;    /* symbol id -> text */
    struct word *words;  /* distinct words with their counts */
    size_t n_words;
    int *merge_l, *merge_r; /* merges in rank order */
    int *merge_out;         /* the symbol each merge yields */
    size_t n_merges;
    int n_base;          /* symbols before training (bytes or alphabet) */
    int n_live_base;     /* base symbols that may take part in merges */
};

static void trainer_free(struct trainer *t) {
    strs_free(&t->syms);
    for (size_t i = 0; i < t->n_words; i++) free(t->words[i].sym);
    free(t->words);
    free(t->merge_l);
    free(t->merge_r);
    free(t->merge_out);
}

static bool is_live(const struct trainer *t, int id) { return id >= t->n_base || id < t->n_live_base; }

/* Adds one occurrence of word (given as symbol ids) to the distinct words. */
static bool add_word(struct trainer *t, const int *sym, int n, size_t *cap) {
    for (size_t i = 0; i < t->n_words; i++) {
        struct word *w = &t->words[i];
        if (w->n == n && memcmp(w->sym, sym, (size_t)n * sizeof *sym) == 0) {
            w->count++;
            return true;
        }
    }
    if (t->n_words == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        struct word *v = realloc(t->words, c * sizeof *v);
        if (!v) return false;
        t->words = v;
        *cap = c;
    }
    int *copy = malloc((size_t)n * sizeof *copy);
    if (!copy) return false;
    memcpy(copy, sym, (size_t)n * sizeof *copy);
    t->words[t->n_words++] = (struct word){ copy, n, 1 };
    return true;
}

/* Open-addressing counts of adjacent pairs, rebuilt every round: the text
 * is small, so recounting is cheaper to get right than incremental updates. */
struct pair_counts {
    uint64_t *key; /* (left << 32 | right) + 1; 0 = empty */
    int *count;
    size_t cap;
};

static void pairs_add(struct pair_counts *pc, int l, int r, int count) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) + 1;
    size_t h = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (pc->cap - 1);
    while (pc->key[h] != 0 && pc->key[h] != key) h = (h + 1) & (pc->cap - 1);
    pc->key[h] = key;
    pc->count[h] += count;
}

/* The most frequent live pair (ties: smallest ids); false when none occurs twice. */
static bool best_pair(const struct trainer *t, struct pair_counts *pc, int *l, int *r) {
    memset(pc->key, 0, pc->cap * sizeof *pc->key);
    memset(pc->count, 0, pc->cap * sizeof *pc->count);
    for (size_t i = 0; i < t->n_words; i++) {
        const struct word *w = &t->words[i];
        for (int k = 0; k + 1 < w->n; k++)
            if (is_live(t, w->sym[k]) && is_live(t, w->sym[k + 1])) pairs_add(pc, w->sym[k], w->sym[k + 1], w->count);
    }
    int best = 1;
    uint64_t best_key = 0;
    for (size_t h = 0; h < pc->cap; h++) {
        if (!pc->key[h]) continue;
        if (pc->count[h] > best || (pc->count[h] == best && best > 1 && pc->key[h] < best_key)) {
            best = pc->count[h];
            best_key = pc->key[h];
        }
    }
    if (best < 2) return false;
    *l = (int)((best_key - 1) >> 32);
    *r = (int)((best_key - 1) & 0xffffffffu);
    return true;
}

static void apply_merge(struct trainer *t, int l, int r, int id) {
    for (size_t i = 0; i < t->n_words; i++) {
        struct word *w = &t->words[i];
        int out = 0;
        for (int k = 0; k < w->n; k++) {
            if (k + 1 < w->n && w->sym[k] == l && w->sym[k + 1] == r) {
                w->sym[out++] = id;
                k++;
            } else {
                w->sym[out++] = w->sym[k];
            }
        }
        w->n = out;
    }
}

/* Merges until max_new new symbols exist or no pair repeats. A merge whose
 * text already is a symbol (reached by another split) adds no token. */
static bool train(struct trainer *t, int max_new) {
    size_t positions = 0;
    for (size_t i = 0; i < t->n_words; i++) positions += (size_t)t->words[i].n;
    struct pair_counts pc = { 0 };
    pc.cap = 64;
    while (pc.cap < positions * 2) pc.cap *= 2;
    pc.key = malloc(pc.cap * sizeof *pc.key);
    pc.count = malloc(pc.cap * sizeof *pc.count);
    size_t cap_merges = positions; /* each merge removes at least two symbols */
    t->merge_l = malloc((cap_merges + 1) * sizeof *t->merge_l);
    t->merge_r = malloc((cap_merges + 1) * sizeof *t->merge_r);
    t->merge_out = malloc((cap_merges + 1) * sizeof *t->merge_out);
    bool ok = pc.key && pc.count && t->merge_l && t->merge_r && t->merge_out;
    int n_new = 0, l, r;
    while (ok && n_new < max_new && best_pair(t, &pc, &l, &r)) {
        char *text = str_cat(t->syms.v[l], "", t->syms.v[r]);
        if (!text) { ok = false; break; }
        long id = strs_find(&t->syms, text);
        if (id < 0) {
            id = (long)t->syms.n;
            if (!strs_push(&t->syms, text)) { ok = false; break; }
            n_new++;
        } else {
            free(text);
        }
        t->merge_l[t->n_merges] = l;
        t->merge_r[t->n_merges] = r;
        t->merge_out[t->n_merges] = (int)id;
        t->n_merges++;
        apply_merge(t, l, r, (int)id);
    }
    free(pc.key);
    free(pc.count);
    return ok;
}

/* ---- base symbols --------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest
 * are shifted to U+0100.. in byte order. Its token order lists the
 * printable bytes first; order[k] is the byte of token k. */
static void gpt2_bytes(unsigned order[256], unsigned cp[256]) {
    int k = 0;
    for (unsigned b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (printable) { order[k++] = b; cp[b] = b; }
    }
    unsigned shifted = 256;
    for (unsigned b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (!printable) { order[k++] = b; cp[b] = shifted++; }
    }
}

/* Splits the corpus into words and feeds them to the trainer, each as a
 * sequence of base symbols: sym_of_byte[b] for gpt2; for llama the word's
 * characters, with "▁" for the space (whitespace-only words are left to
 * byte fallback). */
static bool load_words(struct trainer *t, const int *sym_of_byte) {
    const size_t n = sizeof CORPUS - 1;
    size_t cap = 0;
    int buf[256];
    for (size_t i = 0; i < n;) {
        size_t len = word_len(CORPUS, i, n);
        if (len > sizeof buf / sizeof buf[0]) len = sizeof buf / sizeof buf[0];
        int m = 0;
        for (size_t k = 0; k < len; k++) {
            int id = sym_of_byte[(unsigned char)CORPUS[i + k]];
            if (id >= 0) buf[m++] = id;
        }
        if (m > 0 && !add_word(t, buf, m, &cap)) return false;
        i += len;
    }
    return true;
}

static bool setup_gpt2(struct trainer *t) {
    unsigned order[256], cp[256];
    gpt2_bytes(order, cp);
    int sym_of_byte[256];
    for (int k = 0; k < 256; k++) {
        char u[4];
        size_t n = utf8_encode(cp[order[k]], u);
        if (!strs_push(&t->syms, str_ndup(u, n))) return false;
        sym_of_byte[order[k]] = k;
    }
    t->n_base = t->n_live_base = 256;
    return load_words(t, sym_of_byte);
}

/* The alphabet is every character of the text's words, most frequent first,
 * so that a small budget keeps the useful ones (the rest byte-fall back). */
static bool setup_llama(struct trainer *t, int budget) {
    long freq[256] = { 0 };
    for (const char *p = CORPUS; *p; p++)
        if (*p != '\n' && *p != '\t' && *p != '\r') freq[(unsigned char)*p]++;
    int sym_of_byte[256];
    for (int k = 0; k < 256; k++) sym_of_byte[k] = -1;
    for (;;) {
        int best = -1;
        for (int b = 0; b < 256; b++)
            if (freq[b] > 0 && sym_of_byte[b] < 0 && (best < 0 || freq[b] > freq[best])) best = b;
        if (best < 0) break;
        sym_of_byte[best] = (int)t->syms.n;
        const char c[1] = { (char)best };
        char *s = best == ' ' ? str_ndup("\xe2\x96\x81", 3) : str_ndup(c, 1);
        if (!strs_push(&t->syms, s)) return false;
    }
    t->n_base = (int)t->syms.n;
    t->n_live_base = t->n_base < budget ? t->n_base : budget;
    return load_words(t, sym_of_byte);
}

/* ---- writing ---------------------------------------------------------------- */

enum { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_UNUSED = 5, TOKEN_BYTE = 6 };

struct out {
    struct strs tokens;
    int32_t *types;
    float *scores;
    int32_t n_vocab;
};

static bool out_add(struct out *o, char *text, int type, float score) {
    int32_t i = (int32_t)o->tokens.n;
    if (i >= o->n_vocab || !strs_push(&o->tokens, text)) return false;
    o->types[i] = type;
    o->scores[i] = score;
    return true;
}

/* Fills the vocabulary up with made-up words ("Ġkalo", "▁mesu"): printable,
 * so text sampled from a random model reads as words rather than as empty
 * placeholders. Nothing merges into them; decoding is all they are for.
 * A word that happens to equal a trained token is skipped. */
static bool pad_words(struct out *o, const char *space, size_t first_trained) {
    static const char C[] = "bdfgklmnprstvz", V[] = "aeiou";
    const unsigned nc = sizeof C - 1, nv = sizeof V - 1, syl = nc * nv;
    for (unsigned k = 0; (int32_t)o->tokens.n < o->n_vocab; k++) {
        char word[64];
        size_t n = (size_t)snprintf(word, sizeof word, "%s", space);
        unsigned x = k, len = k < syl * syl ? 2 : k < syl * syl + syl * syl * syl ? 3 : 4;
        for (unsigned i = 0; i < len; i++, x /= syl) {
            word[n++] = C[(x % syl) / nv];
            word[n++] = V[(x % syl) % nv];
        }
        word[n] = 0;
        bool taken = false;
        for (size_t i = first_trained; i < o->tokens.n && !taken; i++) taken = !strcmp(o->tokens.v[i], word);
        if (!taken && !out_add(o, str_ndup(word, n), TOKEN_NORMAL, -1e6f - (float)k)) return false;
    }
    return true;
}

static int write_common(struct ferry_gguf_writer *w, const char *model, const struct out *o, uint32_t bos,
                        uint32_t eos) {
    int rc = ferry_gguf_writer_add_str(w, "tokenizer.ggml.model", model);
    if (!rc) rc = ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)o->tokens.v,
                                                o->tokens.n);
    if (!rc) rc = ferry_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", FERRY_GGUF_I32, o->types,
                                            o->tokens.n);
    if (!rc) rc = ferry_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", bos);
    if (!rc) rc = ferry_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", eos);
    if (!rc) rc = ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    if (!rc) rc = ferry_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    return rc;
}

/* gpt2: 256 byte symbols, merged tokens, <|begin_of_text|>, <|end_of_text|>,
 * then made-up words; merges as "left right" in rank order. */
static int write_gpt2(struct ferry_gguf_writer *w, struct trainer *t, struct out *o) {
    if (!setup_gpt2(t) || !train(t, o->n_vocab - 256 - 2)) return FERRY_ERR_NOMEM;
    for (size_t i = 0; i < t->syms.n; i++)
        if (!out_add(o, str_ndup(t->syms.v[i], strlen(t->syms.v[i])), TOKEN_NORMAL, 0.0f)) return FERRY_ERR_NOMEM;
    uint32_t bos = (uint32_t)o->tokens.n, eos = bos + 1;
    if (!out_add(o, str_ndup("<|begin_of_text|>", 17), TOKEN_CONTROL, 0.0f) ||
        !out_add(o, str_ndup("<|end_of_text|>", 15), TOKEN_CONTROL, 0.0f) || !pad_words(o, "\xc4\xa0", 256))
        return FERRY_ERR_NOMEM;
    struct strs merges = { 0 };
    int rc = FERRY_OK;
    for (size_t i = 0; i < t->n_merges && rc == FERRY_OK; i++)
        if (!strs_push(&merges, str_cat(t->syms.v[t->merge_l[i]], " ", t->syms.v[t->merge_r[i]]))) rc = FERRY_ERR_NOMEM;
    if (!rc) rc = write_common(w, "gpt2", o, bos, eos);
    if (!rc) rc = ferry_gguf_writer_add_str(w, "tokenizer.ggml.pre", "default");
    if (!rc) rc = ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges.v, merges.n);
    strs_free(&merges);
    return rc;
}

/* llama: <unk> <s> </s>, <0x00>..<0xFF>, the alphabet, merged pieces, then
 * made-up words. A merged piece scores -(rank of the merge that made it,
 * from 1), so earlier merges win; alphabet pieces score below every merge. */
static int write_llama(struct ferry_gguf_writer *w, struct trainer *t, struct out *o) {
    const int budget = o->n_vocab - 3 - 256;
    if (!setup_llama(t, budget) || !train(t, budget - t->n_live_base)) return FERRY_ERR_NOMEM;
    bool ok = out_add(o, str_ndup("<unk>", 5), TOKEN_UNKNOWN, 0.0f) && out_add(o, str_ndup("<s>", 3), TOKEN_CONTROL, 0.0f) &&
              out_add(o, str_ndup("</s>", 4), TOKEN_CONTROL, 0.0f);
    for (int b = 0; b < 256 && ok; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        ok = out_add(o, str_ndup(name, 6), TOKEN_BYTE, 0.0f);
    }
    for (int i = 0; i < t->n_live_base && ok; i++)
        ok = out_add(o, str_ndup(t->syms.v[i], strlen(t->syms.v[i])), TOKEN_NORMAL, -(float)(t->n_merges + 1 + (size_t)i));
    /* merged symbols were created in merge order, each by its first merge */
    size_t rank = 0;
    for (size_t id = (size_t)t->n_base; id < t->syms.n && ok; id++) {
        while (rank < t->n_merges && t->merge_out[rank] != (int)id) rank++;
        ok = out_add(o, str_ndup(t->syms.v[id], strlen(t->syms.v[id])), TOKEN_NORMAL, -(float)(rank + 1));
    }
    if (!ok || !pad_words(o, "\xe2\x96\x81", 3 + 256)) return FERRY_ERR_NOMEM;
    int rc = write_common(w, "llama", o, 1, 2);
    if (!rc) rc = ferry_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    if (!rc) rc = ferry_gguf_writer_add_arr(w, "tokenizer.ggml.scores", FERRY_GGUF_F32, o->scores, o->tokens.n);
    return rc;
}

int ferry_gen_vocab_add(struct ferry_gguf_writer *w, const char *kind, int32_t n_vocab, struct ferry_error *err) {
    bool gpt2 = strcmp(kind, "gpt2") == 0;
    if (!gpt2 && strcmp(kind, "llama") != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: unknown vocabulary \"%s\" (gpt2 or llama)", kind);
    if (n_vocab < FERRY_GEN_MIN_VOCAB)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_vocab %d is below %d", n_vocab, FERRY_GEN_MIN_VOCAB);
    struct trainer t = { 0 };
    struct out o = { .n_vocab = n_vocab };
    o.types = calloc((size_t)n_vocab, sizeof *o.types);
    o.scores = calloc((size_t)n_vocab, sizeof *o.scores);
    int rc = !o.types || !o.scores ? FERRY_ERR_NOMEM : gpt2 ? write_gpt2(w, &t, &o) : write_llama(w, &t, &o);
    if (rc == FERRY_OK && (int32_t)o.tokens.n != n_vocab) rc = FERRY_ERR_INVALID; /* cannot happen */
    trainer_free(&t);
    strs_free(&o.tokens);
    free(o.types);
    free(o.scores);
    if (rc != FERRY_OK) return ferry_fail(err, rc, "gen: building the %s vocabulary failed", kind);
    return FERRY_OK;
}
