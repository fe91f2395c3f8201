/* The model generator: llama-family GGUF files with random weights, named
 * and shaped exactly as llama.cpp's converter writes them.
 *
 * The GGUF writer needs every tensor's bytes at write time, so the file is
 * made in two steps that keep memory small for any model size: the writer
 * lays out the whole file with every tensor pointing at one read-only
 * zero mapping (untouched pages cost no memory), then each tensor is
 * generated a chunk at a time and written over its place with pwrite. The
 * file is built under a temporary name and renamed when complete. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/gen.h"
#include "ferry/gguf.h"
#include "gen_vocab.h"
#include "tensor/quantize_k.h"

#define GGUF_ALIGNMENT 32
#define CHUNK_ELEMS ((int64_t)1 << 20) /* floats generated per write */

/* name: what --arch takes; gguf_arch: what the file's general.architecture
 * says, as in real files of the family (docs/gguf-keys.md): Mistral 7B-style
 * models are llama-architecture files, and llama.cpp knows no "mistral". */
struct arch_info {
    const char *name, *gguf_arch;
    float rms_eps, rope_base;
    bool qkv_bias, qk_norm;
};

static const struct arch_info ARCHS[] = {
    { "llama", "llama", 1e-5f, 10000.0f, false, false },
    { "mistral", "llama", 1e-5f, 1000000.0f, false, false },
    { "qwen2", "qwen2", 1e-6f, 1000000.0f, true, false },
    { "qwen3", "qwen3", 1e-6f, 1000000.0f, false, true },
};

static const struct arch_info *find_arch(const char *name) {
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (name && strcmp(ARCHS[i].name, name) == 0) return &ARCHS[i];
    return NULL;
}

int ferry_gen_file_type(enum ferry_type wtype) {
    switch (wtype) {
    case FERRY_TYPE_F32: return 0;
    case FERRY_TYPE_F16: return 1;
    case FERRY_TYPE_Q4_0: return 2;
    case FERRY_TYPE_Q8_0: return 7;
    case FERRY_TYPE_Q4_K: return 15; /* LLAMA_FTYPE_MOSTLY_Q4_K_M */
    case FERRY_TYPE_Q6_K: return 18;
    case FERRY_TYPE_BF16: return 32;
    default: return -1;
    }
}

void ferry_gen_params_defaults(struct ferry_gen_params *p) {
    *p = (struct ferry_gen_params){
        .arch = "llama", .vocab = "gpt2", .n_vocab = 512, .n_embd = 64, .n_layer = 2, .n_head = 4,
        .n_head_kv = 2, .n_ff = 160, .n_ctx = 512, .wtype = FERRY_TYPE_Q8_0, .tied_output = false, .seed = 1,
    };
}

/* ---- checks ---------------------------------------------------------------- */

static int check_shapes(const struct ferry_gen_params *p, struct ferry_error *err) {
    if (p->n_embd < 1 || p->n_embd > (1 << 16) || p->n_ff < 1 || p->n_ff > (1 << 18))
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_embd %d / n_ff %d out of range", p->n_embd, p->n_ff);
    if (p->n_layer < 1 || p->n_layer > 4096 || p->n_ctx < 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_layer %d / n_ctx %d out of range", p->n_layer, p->n_ctx);
    if (p->n_head < 1 || p->n_head_kv < 1 || p->n_head % p->n_head_kv != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_head %d must be a positive multiple of n_head_kv %d",
                          p->n_head, p->n_head_kv);
    if (p->n_embd % p->n_head != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_embd %d is not divisible by n_head %d", p->n_embd,
                          p->n_head);
    if ((p->n_embd / p->n_head) % 2 != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: head size %d must be even for RoPE", p->n_embd / p->n_head);
    if (p->n_vocab < FERRY_GEN_MIN_VOCAB || p->n_vocab > (1 << 22))
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: n_vocab %d out of range (%d .. %d)", p->n_vocab,
                          FERRY_GEN_MIN_VOCAB, 1 << 22);
    return FERRY_OK;
}

int ferry_gen_params_check(const struct ferry_gen_params *p, struct ferry_error *err) {
    if (!find_arch(p->arch))
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: unknown arch \"%s\" (llama, mistral, qwen2, qwen3)",
                          p->arch ? p->arch : "(null)");
    if (!p->vocab || (strcmp(p->vocab, "gpt2") != 0 && strcmp(p->vocab, "llama") != 0))
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: unknown vocabulary \"%s\" (gpt2, llama)",
                          p->vocab ? p->vocab : "(null)");
    if (ferry_gen_file_type(p->wtype) < 0)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "gen: weight type %s is not one of f32 f16 bf16 q8_0 q4_0 q4_K q6_K",
                          ferry_type_name(p->wtype));
    int rc = check_shapes(p, err);
    if (rc) return rc;
    /* every 2-D weight has n_embd or n_ff elements per row */
    const int64_t blk = ferry_blck_size(p->wtype);
    if (p->n_embd % blk != 0 || p->n_ff % blk != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: %s needs n_embd (%d) and n_ff (%d) to be multiples of %" PRId64,
                          ferry_type_name(p->wtype), p->n_embd, p->n_ff, blk);
    return FERRY_OK;
}

/* ---- the tensor plan ----------------------------------------------------- */

struct gen_tensor {
    char name[FERRY_MAX_NAME];
    enum ferry_type type;
    int n_dims;
    int64_t ne[2];
    float mean, std;    /* of the generated values */
    uint64_t offset;    /* in the file, filled in after layout */
};

struct plan {
    struct gen_tensor *t;
    size_t n, cap;
};

static void plan_add(struct plan *pl, enum ferry_type type, int64_t ne0, int64_t ne1, float mean, float std,
                     const char *fmt, int layer) {
    if (pl->n == pl->cap) return; /* sized exactly by make_plan */
    struct gen_tensor *t = &pl->t[pl->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->type = type;
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1 > 0 ? ne1 : 1;
    t->mean = mean;
    t->std = std;
}

/* Standard deviations: input projections scale by 1/sqrt(fan_in)
 * (unit-RMS in, unit-RMS out); output projections by 4/sqrt(fan_in *
 * 2*n_layer), so the residual stream ends near RMS 3 at any depth. The head
 * and the embedding (which is the head when tied) give logits of standard
 * deviation about 2: spread out, but no token dominates. The residual is
 * kept well above the embedding's own size (2/sqrt(n_embd) per element) so
 * that a tied head does not just predict the input token again. */
static int make_plan(const struct ferry_gen_params *p, struct plan *pl) {
    const struct arch_info *a = find_arch(p->arch);
    const int64_t E = p->n_embd, F = p->n_ff, V = p->n_vocab, hd = E / p->n_head, kv = hd * p->n_head_kv;
    const enum ferry_type w = p->wtype, f32 = FERRY_TYPE_F32;
    const float s_in = 1.0f / sqrtf((float)E), depth = 4.0f / sqrtf(2.0f * (float)p->n_layer);
    const float s_head = 2.0f / sqrtf((float)E), s_norm = 0.02f, s_bias = 0.02f;
    pl->cap = 3 + (size_t)p->n_layer * 12;
    pl->n = 0;
    pl->t = calloc(pl->cap, sizeof *pl->t);
    if (!pl->t) return FERRY_ERR_NOMEM;
    plan_add(pl, w, E, V, 0.0f, s_head, "token_embd.weight", 0);
    for (int i = 0; i < p->n_layer; i++) {
        plan_add(pl, f32, E, 0, 1.0f, s_norm, "blk.%d.attn_norm.weight", i);
        plan_add(pl, w, E, E, 0.0f, s_in, "blk.%d.attn_q.weight", i);
        plan_add(pl, w, E, kv, 0.0f, s_in, "blk.%d.attn_k.weight", i);
        plan_add(pl, w, E, kv, 0.0f, s_in, "blk.%d.attn_v.weight", i);
        if (a->qkv_bias) {
            plan_add(pl, f32, E, 0, 0.0f, s_bias, "blk.%d.attn_q.bias", i);
            plan_add(pl, f32, kv, 0, 0.0f, s_bias, "blk.%d.attn_k.bias", i);
            plan_add(pl, f32, kv, 0, 0.0f, s_bias, "blk.%d.attn_v.bias", i);
        }
        if (a->qk_norm) {
            plan_add(pl, f32, hd, 0, 1.0f, s_norm, "blk.%d.attn_q_norm.weight", i);
            plan_add(pl, f32, hd, 0, 1.0f, s_norm, "blk.%d.attn_k_norm.weight", i);
        }
        plan_add(pl, w, E, E, 0.0f, s_in * depth, "blk.%d.attn_output.weight", i);
        plan_add(pl, f32, E, 0, 1.0f, s_norm, "blk.%d.ffn_norm.weight", i);
        plan_add(pl, w, E, F, 0.0f, s_in, "blk.%d.ffn_gate.weight", i);
        plan_add(pl, w, E, F, 0.0f, s_in, "blk.%d.ffn_up.weight", i);
        plan_add(pl, w, F, E, 0.0f, depth / sqrtf((float)F), "blk.%d.ffn_down.weight", i);
    }
    plan_add(pl, f32, E, 0, 1.0f, s_norm, "output_norm.weight", 0);
    if (!p->tied_output) plan_add(pl, w, E, V, 0.0f, s_head, "output.weight", 0);
    return FERRY_OK;
}

static uint64_t tensor_bytes(const struct gen_tensor *t) {
    return (uint64_t)ferry_row_size(t->type, t->ne[0]) * (uint64_t)t->ne[1];
}

static uint64_t aligned(uint64_t n) { return (n + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT; }

uint64_t ferry_gen_data_bytes(const struct ferry_gen_params *p) {
    struct plan pl;
    if (ferry_gen_params_check(p, NULL) != FERRY_OK || make_plan(p, &pl) != FERRY_OK) return 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < pl.n; i++) sum += aligned(tensor_bytes(&pl.t[i]));
    free(pl.t);
    return sum;
}

uint64_t ferry_gen_n_params(const struct ferry_gen_params *p) {
    struct plan pl;
    if (ferry_gen_params_check(p, NULL) != FERRY_OK || make_plan(p, &pl) != FERRY_OK) return 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < pl.n; i++) sum += (uint64_t)(pl.t[i].ne[0] * pl.t[i].ne[1]);
    free(pl.t);
    return sum;
}

/* ---- random values ---------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Each tensor has its own stream, from the seed and its name, so a tensor's
 * values do not depend on the others or on the chunking. */
static uint64_t tensor_stream(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
    uint64_t s = seed ^ h;
    return splitmix64(&s);
}

/* Roughly normal values: the sum of four 16-bit uniforms from one 64-bit
 * draw (Irwin-Hall, variance 4/12, tails cut at 3.5 sigma). One draw per
 * value keeps a 1 GB model to a few seconds. */
static void fill_normal(uint64_t *s, float *x, int64_t n, float mean, float std) {
    const float k = std * 1.7320508f / 65536.0f; /* sqrt(3): variance 1/3 -> 1 */
    for (int64_t i = 0; i < n; i++) {
        const uint64_t r = splitmix64(s);
        const int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) + (int32_t)((r >> 32) & 0xffff) +
                            (int32_t)(r >> 48) - 131070;
        x[i] = mean + k * (float)sum;
    }
}

static ferry_from_float_fn quantizer(enum ferry_type type) {
    if (type == FERRY_TYPE_Q4_K) return ferry_quant_row_q4_K_simple;
    if (type == FERRY_TYPE_Q6_K) return ferry_quant_row_q6_K_simple;
    return ferry_type_traits(type)->from_float;
}

/* ---- writing ------------------------------------------------------------------ */

static bool pwrite_all(int fd, const void *p, size_t n, uint64_t off) {
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return true;
}

/* Bytes written so far, for the caller's progress callback. */
struct gen_progress {
    int (*fn)(void *ud, uint64_t done, uint64_t total);
    void *ud;
    uint64_t done, total;
};

/* Generates one tensor a chunk of rows at a time and writes it in place:
 * 0, -1 on a write error (errno), 1 when the progress callback stopped it. */
static int write_tensor(int fd, const struct gen_tensor *t, uint64_t seed, float *f, void *q, int64_t chunk,
                        struct gen_progress *pr) {
    const size_t row_bytes = ferry_row_size(t->type, t->ne[0]);
    const int64_t rows_per_chunk = chunk / t->ne[0] > 0 ? chunk / t->ne[0] : 1;
    const ferry_from_float_fn quant = quantizer(t->type);
    uint64_t s = tensor_stream(seed, t->name);
    for (int64_t r0 = 0; r0 < t->ne[1]; r0 += rows_per_chunk) {
        const int64_t nr = t->ne[1] - r0 < rows_per_chunk ? t->ne[1] - r0 : rows_per_chunk;
        fill_normal(&s, f, nr * t->ne[0], t->mean, t->std);
        quant(f, q, nr * t->ne[0]);
        if (!pwrite_all(fd, q, row_bytes * (size_t)nr, t->offset + (uint64_t)r0 * row_bytes)) return -1;
        pr->done += row_bytes * (uint64_t)nr;
        if (pr->fn && pr->fn(pr->ud, pr->done, pr->total)) return 1;
    }
    return 0;
}

static void format_count(char *buf, size_t cap, uint64_t n) {
    if (n >= 1000000000ull) snprintf(buf, cap, "%.1fB", (double)n / 1e9);
    else if (n >= 1000000ull) snprintf(buf, cap, "%.0fM", (double)n / 1e6);
    else snprintf(buf, cap, "%.0fK", (double)n / 1e3);
}

static int add_metadata(struct ferry_gguf_writer *w, const struct ferry_gen_params *p, struct ferry_error *err) {
    const struct arch_info *a = find_arch(p->arch);
    const uint32_t hd = (uint32_t)(p->n_embd / p->n_head);
    char name[96], key[128], count[32];
    format_count(count, sizeof count, ferry_gen_n_params(p));
    snprintf(name, sizeof name, "ferry-gen %s %s %s", p->arch, count, ferry_type_name(p->wtype));
    int rc = ferry_gguf_writer_add_str(w, "general.architecture", a->gguf_arch);
    if (!rc) rc = ferry_gguf_writer_add_str(w, "general.name", name);
    if (!rc) rc = ferry_gguf_writer_add_u32(w, "general.file_type", (uint32_t)ferry_gen_file_type(p->wtype));
    if (!rc) rc = ferry_gguf_writer_add_u32(w, "general.quantization_version", 2);
#define U32(suffix, v) if (!rc) { snprintf(key, sizeof key, "%s." suffix, a->gguf_arch); rc = ferry_gguf_writer_add_u32(w, key, (uint32_t)(v)); }
#define F32(suffix, v) if (!rc) { snprintf(key, sizeof key, "%s." suffix, a->gguf_arch); rc = ferry_gguf_writer_add_f32(w, key, v); }
    U32("context_length", p->n_ctx)
    U32("embedding_length", p->n_embd)
    U32("block_count", p->n_layer)
    U32("feed_forward_length", p->n_ff)
    U32("attention.head_count", p->n_head)
    U32("attention.head_count_kv", p->n_head_kv)
    F32("attention.layer_norm_rms_epsilon", a->rms_eps)
    F32("rope.freq_base", a->rope_base)
    U32("rope.dimension_count", hd)
    U32("attention.key_length", hd)
    U32("attention.value_length", hd)
    U32("vocab_size", p->n_vocab)
#undef U32
#undef F32
    if (rc) return ferry_fail(err, rc, "gen: out of memory");
    return ferry_gen_vocab_add(w, p->vocab, p->n_vocab, err);
}

/* Lays the file out with the writer (all tensors zero) and records where
 * each tensor's data landed. */
static int layout(struct ferry_gguf_writer *w, struct plan *pl, const char *tmp, struct ferry_error *err) {
    uint64_t max_bytes = 0;
    for (size_t i = 0; i < pl->n; i++)
        if (tensor_bytes(&pl->t[i]) > max_bytes) max_bytes = tensor_bytes(&pl->t[i]);
    void *zeros = mmap(NULL, (size_t)max_bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (zeros == MAP_FAILED) return ferry_fail(err, FERRY_ERR_NOMEM, "gen: cannot map %" PRIu64 " bytes", max_bytes);
    int rc = FERRY_OK;
    for (size_t i = 0; i < pl->n && rc == FERRY_OK; i++) {
        const struct gen_tensor *t = &pl->t[i];
        rc = ferry_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, zeros);
        if (rc) ferry_fail(err, rc, "gen: cannot add tensor %s", t->name);
    }
    if (!rc) rc = ferry_gguf_writer_write(w, tmp, err);
    munmap(zeros, (size_t)max_bytes);
    if (rc) return rc;
    struct ferry_gguf *g = NULL;
    rc = ferry_gguf_open(tmp, &g, err);
    if (rc) return rc;
    for (size_t i = 0; i < pl->n && rc == FERRY_OK; i++) {
        const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(g, (int64_t)i);
        if (!ti || strcmp(ti->name, pl->t[i].name) != 0 || ti->size != tensor_bytes(&pl->t[i]))
            rc = ferry_fail(err, FERRY_ERR_INVALID, "gen: the written layout does not match tensor %s", pl->t[i].name);
        else
            pl->t[i].offset = ferry_gguf_data_offset(g) + ti->offset;
    }
    ferry_gguf_close(g);
    return rc;
}

/* Errors name the file the user asked for (path), not the temporary one. */
static int fill_tensors(const struct plan *pl, const struct ferry_gen_params *p, const char *tmp, const char *path,
                        struct ferry_error *err) {
    int64_t chunk = CHUNK_ELEMS;
    struct gen_progress pr = { p->progress, p->progress_ud, 0, 0 };
    for (size_t i = 0; i < pl->n; i++) {
        if (pl->t[i].ne[0] > chunk) chunk = pl->t[i].ne[0];
        pr.total += tensor_bytes(&pl->t[i]);
    }
    float *f = malloc((size_t)chunk * sizeof *f);
    void *q = malloc((size_t)chunk * sizeof(float)); /* no type is wider than f32 */
    int fd = open(tmp, O_WRONLY | O_CLOEXEC);
    int rc = FERRY_OK;
    if (!f || !q) rc = ferry_fail(err, FERRY_ERR_NOMEM, "gen: out of memory");
    else if (fd < 0) rc = ferry_fail(err, FERRY_ERR_IO, "%s: %s", path, strerror(errno));
    for (size_t i = 0; i < pl->n && rc == FERRY_OK; i++) {
        int w = write_tensor(fd, &pl->t[i], p->seed, f, q, chunk, &pr);
        if (w < 0) rc = ferry_fail(err, FERRY_ERR_IO, "%s: writing %s failed: %s", path, pl->t[i].name, strerror(errno));
        else if (w > 0) rc = ferry_fail(err, FERRY_ERR_IO, "%s: stopped, nothing written", path);
    }
    if (fd >= 0 && close(fd) != 0 && rc == FERRY_OK) rc = ferry_fail(err, FERRY_ERR_IO, "%s: %s", path, strerror(errno));
    free(f);
    free(q);
    return rc;
}

/* The GGUF writer's messages name the file it wrote (our temporary one, or
 * its own temporary beside it): name the target instead. */
static void name_target(struct ferry_error *err, const char *tmp, const char *path) {
    if (!err) return;
    char *at = strstr(err->msg, tmp);
    if (!at) return;
    const char *rest = at + strcspn(at, ":");
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%.*s%s%s", (int)(at - err->msg), err->msg, path, rest);
    snprintf(err->msg, sizeof err->msg, "%s", msg);
}

int ferry_gen_model(const struct ferry_gen_params *p, const char *path, struct ferry_error *err) {
    int rc = ferry_gen_params_check(p, err);
    if (rc) return rc;
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.gen-part.%ld", path, (long)getpid()) >= sizeof tmp)
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: path too long");
    struct plan pl = { 0 };
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    if (!w || make_plan(p, &pl) != FERRY_OK) rc = ferry_fail(err, FERRY_ERR_NOMEM, "gen: out of memory");
    if (!rc) rc = add_metadata(w, p, err);
    if (!rc && (rc = layout(w, &pl, tmp, err))) name_target(err, tmp, path);
    ferry_gguf_writer_free(w); /* the metadata is in the file now */
    if (!rc) rc = fill_tensors(&pl, p, tmp, path, err);
    if (!rc && rename(tmp, path) != 0) rc = ferry_fail(err, FERRY_ERR_IO, "%s: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    free(pl.t);
    return rc;
}

/* ---- shapes for a target size ------------------------------------------------- */

struct rung {
    int32_t n_embd, n_head, n_head_kv, n_ff, n_vocab, n_layer; /* n_layer: the usual depth */
};

/* Familiar shapes from 64-wide toys to 70B-class; the layer count and then
 * the vocabulary size are tuned to hit the target. */
static const struct rung RUNGS[] = {
    { 64, 4, 2, 192, 1024, 2 },         { 128, 4, 2, 384, 2048, 2 },       { 256, 4, 2, 768, 4096, 4 },
    { 512, 8, 4, 1536, 16000, 8 },      { 768, 12, 4, 2048, 32000, 12 },   { 1024, 16, 4, 2816, 32000, 16 },
    { 2048, 32, 8, 5632, 32000, 22 },   { 3072, 24, 8, 8192, 32000, 28 },  { 4096, 32, 8, 14336, 32000, 32 },
    { 5120, 40, 8, 13824, 32000, 40 },  { 8192, 64, 8, 28672, 32000, 80 },
};
#define N_RUNGS ((int)(sizeof RUNGS / sizeof RUNGS[0]))

/* File size estimate: tensor data, the vocabulary and the header. */
static double file_bytes(const struct ferry_gen_params *p) {
    return (double)ferry_gen_data_bytes(p) + (double)p->n_vocab * FERRY_GEN_VOCAB_BYTES_PER_TOKEN + 16384.0 +
           96.0 * (3.0 + 12.0 * p->n_layer);
}

static bool rung_fits_type(const struct rung *r, enum ferry_type t) {
    const int64_t blk = ferry_blck_size(t);
    return blk > 0 && r->n_embd % blk == 0 && r->n_ff % blk == 0;
}

/* Shapes of rung r with n_layer layers (other fields from p). */
static struct ferry_gen_params rung_params(const struct ferry_gen_params *p, const struct rung *r, int32_t n_layer) {
    struct ferry_gen_params q = *p;
    q.n_embd = r->n_embd, q.n_head = r->n_head, q.n_head_kv = r->n_head_kv, q.n_ff = r->n_ff;
    q.n_vocab = r->n_vocab, q.n_layer = n_layer;
    return q;
}

/* Layers (fractional) that bring rung r to the target. */
static double layers_for(const struct ferry_gen_params *p, const struct rung *r, double target) {
    struct ferry_gen_params q = rung_params(p, r, 1);
    const double one = file_bytes(&q);
    q.n_layer = 2;
    const double per_layer = file_bytes(&q) - one;
    return (target - (one - per_layer)) / per_layer;
}

int ferry_gen_params_for_size(struct ferry_gen_params *p, uint64_t target_bytes, struct ferry_error *err) {
    if (target_bytes < 1000000ull || target_bytes > (64ull << 30))
        return ferry_fail(err, FERRY_ERR_INVALID, "gen: target size %" PRIu64 " bytes is outside 1 MB .. 64 GiB",
                          target_bytes);
    struct ferry_gen_params probe = rung_params(p, &RUNGS[N_RUNGS - 1], 1);
    int rc = ferry_gen_params_check(&probe, err); /* arch, vocabulary, type */
    if (rc) return rc;
    /* the shape whose depth comes closest to its usual depth */
    const double target = (double)target_bytes;
    int best = -1;
    double best_score = 0, best_layers = 0;
    for (int i = 0; i < N_RUNGS; i++) {
        if (!rung_fits_type(&RUNGS[i], p->wtype)) continue;
        const double layers = layers_for(p, &RUNGS[i], target);
        const double score = fabs(log(fmax(layers, 0.25) / RUNGS[i].n_layer));
        if (best < 0 || score < best_score) best = i, best_score = score, best_layers = layers;
    }
    if (best < 0) return ferry_fail(err, FERRY_ERR_INVALID, "gen: no shape fits type %s", ferry_type_name(p->wtype));
    const struct rung *r = &RUNGS[best];
    const double layers = floor(best_layers + 0.5);
    struct ferry_gen_params q = rung_params(p, r, layers < 1 ? 1 : layers > 4096 ? 4096 : (int32_t)layers);
    /* absorb the remainder (under half a layer) with the vocabulary size */
    const double base = file_bytes(&q);
    q.n_vocab++;
    const double per_token = file_bytes(&q) - base;
    double vocab = r->n_vocab + floor((target - base) / per_token + 0.5);
    vocab = fmin(fmax(vocab, FERRY_GEN_MIN_VOCAB), 2.0 * r->n_vocab);
    q.n_vocab = (int32_t)vocab;
    rc = ferry_gen_params_check(&q, err);
    if (rc == FERRY_OK) *p = q;
    return rc;
}
