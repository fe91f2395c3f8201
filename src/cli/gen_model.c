/* ferry gen-model: writes a llama-family GGUF model with random weights
 * (include/ferry/gen.h), for tests, demos and benchmarks. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "ferry/gen.h"

static void gen_usage(FILE *out) {
    fprintf(out,
            "usage: ferry gen-model -o PATH [options]\n"
            "  writes a GGUF v3 model with random weights and a small trained vocabulary\n"
            "\n"
            "  -o, --output PATH   file to write (required)\n"
            "      --size SIZE     aim for a file of about SIZE (e.g. 100M, 1G; K/M/G/T are powers of\n"
            "                      1024); picks n_embd, n_layer, heads, n_ff, n_vocab\n"
            "      --type T        f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q6_k (default q8_0)\n"
            "      --arch A        llama | mistral | qwen2 | qwen3 (default llama)\n"
            "      --vocab V       gpt2 | llama (default gpt2)\n"
            "      --n-vocab N     vocabulary size (>= 300)\n"
            "      --n-embd N      embedding width (multiple of n_head and of the type's block)\n"
            "      --n-layer N     layers\n"
            "      --n-head N      attention heads\n"
            "      --n-head-kv N   key/value heads (divides n_head)\n"
            "      --n-ff N        feed-forward width\n"
            "      --n-ctx N       context length written to the file (default 2048)\n"
            "      --tied          no output.weight: the head reuses token_embd\n"
            "      --seed N        random seed (default 1); same options, same bytes\n"
            "  -h, --help          this help\n"
            "Explicit shape options override what --size picks.\n");
}

static bool parse_type(const char *s, enum ferry_type *t) {
    static const struct { const char *name; enum ferry_type type; } types[] = {
        { "f32", FERRY_TYPE_F32 }, { "f16", FERRY_TYPE_F16 },   { "bf16", FERRY_TYPE_BF16 }, { "q8_0", FERRY_TYPE_Q8_0 },
        { "q4_0", FERRY_TYPE_Q4_0 }, { "q4_k", FERRY_TYPE_Q4_K }, { "q6_k", FERRY_TYPE_Q6_K },
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(s, types[i].name) == 0) { *t = types[i].type; return true; }
    return false;
}

/* "100M", "1.5G", "4096": K/M/G/T are powers of 1024; a trailing "B" or "iB" is allowed. */
static bool parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0)) return false;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 0x1p10; end++; break;
    case 'm': case 'M': mul = 0x1p20; end++; break;
    case 'g': case 'G': mul = 0x1p30; end++; break;
    case 't': case 'T': mul = 0x1p40; end++; break;
    default: break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || v * mul >= 0x1p63) return false;
    *out = (uint64_t)(v * mul);
    return true;
}

static bool parse_i32(const char *s, int32_t *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

/* Shape options given on the command line: applied after --size. */
struct overrides {
    int32_t *field[8];
    int32_t value[8];
    int n;
};

static const char *shape_option(const char *opt, struct ferry_gen_params *p, int32_t **field) {
    static const char *const names[] = { "--n-vocab", "--n-embd", "--n-layer", "--n-head", "--n-head-kv", "--n-ff", "--n-ctx" };
    int32_t *fields[] = { &p->n_vocab, &p->n_embd, &p->n_layer, &p->n_head, &p->n_head_kv, &p->n_ff, &p->n_ctx };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(opt, names[i]) == 0) { *field = fields[i]; return names[i]; }
    return NULL;
}

static void human_bytes(char *buf, size_t cap, double n) {
    if (n >= 0x1p30) snprintf(buf, cap, "%.2f GiB", n / 0x1p30);
    else if (n >= 0x1p20) snprintf(buf, cap, "%.1f MiB", n / 0x1p20);
    else snprintf(buf, cap, "%.1f KiB", n / 0x1p10);
}

static void print_summary(const char *path, const struct ferry_gen_params *p, double seconds) {
    struct stat st;
    double size = stat(path, &st) == 0 ? (double)st.st_size : 0;
    char hsize[32];
    human_bytes(hsize, sizeof hsize, size);
    printf("gen-model: %s: %s, %.2fM params, %s (%.0f bytes), %s, n_embd %d n_layer %d n_head %d/%d n_ff %d "
           "n_vocab %d (%s) n_ctx %d%s, seed %" PRIu64 ", %.1f s\n",
           path, p->arch, (double)ferry_gen_n_params(p) / 1e6, hsize, size, ferry_type_name(p->wtype), p->n_embd,
           p->n_layer, p->n_head, p->n_head_kv, p->n_ff, p->n_vocab, p->vocab, p->n_ctx, p->tied_output ? ", tied" : "",
           p->seed, seconds);
}

static int bad_value(const char *opt, const char *v) {
    fprintf(stderr, "gen-model: bad value for %s: %s\n", opt, v ? v : "(missing)");
    return 2;
}

int ferry_cli_gen_model(int argc, char **argv) {
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    p.n_ctx = 2048;
    const char *out = NULL;
    uint64_t size = 0;
    struct overrides ov = { .n = 0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int32_t *field = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { gen_usage(stdout); return 0; }
        if (strcmp(a, "--tied") == 0) { p.tied_output = true; continue; }
        if (!v) return bad_value(a, v);
        i++;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) out = v;
        else if (strcmp(a, "--size") == 0) { if (!parse_size(v, &size)) return bad_value(a, v); }
        else if (strcmp(a, "--type") == 0) { if (!parse_type(v, &p.wtype)) return bad_value(a, v); }
        else if (strcmp(a, "--arch") == 0) p.arch = v;
        else if (strcmp(a, "--vocab") == 0) p.vocab = v;
        else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            p.seed = strtoull(v, &end, 0);
            if (errno || end == v || *end) return bad_value(a, v);
        } else if (shape_option(a, &p, &field)) {
            if (!parse_i32(v, &ov.value[ov.n])) return bad_value(a, v);
            ov.field[ov.n++] = field;
        } else {
            fprintf(stderr, "gen-model: unknown option %s (ferry gen-model --help)\n", a);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "gen-model: -o PATH is required (ferry gen-model --help)\n");
        return 2;
    }
    struct ferry_error err = { 0 };
    if (size && ferry_gen_params_for_size(&p, size, &err) != FERRY_OK) {
        fprintf(stderr, "gen-model: %s\n", err.msg);
        return 1;
    }
    for (int k = 0; k < ov.n; k++) *ov.field[k] = ov.value[k];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (ferry_gen_model(&p, out, &err) != FERRY_OK) {
        fprintf(stderr, "gen-model: %s\n", err.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_summary(out, &p, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
