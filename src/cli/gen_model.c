/* ferry gen-model: writes a llama-family GGUF model with random weights
 * (include/ferry/gen.h), for tests, demos and benchmarks. It will not
 * overwrite a file unless told to, shows progress on stderr, and on
 * SIGINT/SIGTERM stops and leaves no partial file behind. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/opts.h"
#include "ferry/gen.h"

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

static int read_type(const char *cmd, const char *name, const char *v, void *dest) {
    if (parse_type(v, dest)) return 0;
    fprintf(stderr, "ferry %s: %s: unknown type '%s' (f32 f16 bf16 q8_0 q4_0 q4_k q6_k)\n", cmd, name, v);
    return -1;
}

static int read_size(const char *cmd, const char *name, const char *v, void *dest) {
    if (parse_size(v, dest)) return 0;
    fprintf(stderr, "ferry %s: %s: '%s' is not a size (e.g. 100M, 1.5G)\n", cmd, name, v);
    return -1;
}

/* ---- stop on a signal, progress on stderr ------------------------------------ */

static volatile sig_atomic_t g_stop; /* the signal that asked us to stop */

static void on_stop(int sig) { g_stop = sig; }

struct progress {
    const char *path;
    bool tty, quiet;
    double t0, last;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A line redrawn ten times a second on a terminal, else one every 5 s. */
static int on_progress(void *ud, uint64_t done, uint64_t total) {
    struct progress *p = ud;
    if (g_stop) return 1;
    if (p->quiet) return 0;
    double t = now_s();
    bool end = done == total;
    if (!end && t - p->last < (p->tty ? 0.1 : 5.0)) return 0;
    p->last = t;
    int pct = total ? (int)(done * 100 / total) : 100;
    fprintf(stderr, "%sferry gen-model: %s: %3d%% (%.1f / %.1f MiB, %.0f s)%s", p->tty ? "\r" : "", p->path, pct,
            (double)done / 0x1p20, (double)total / 0x1p20, t - p->t0, p->tty && !end ? "" : "\n");
    return 0;
}

int ferry_cli_gen_model(int argc, char **argv) {
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    p.n_ctx = 2048;
    const char *out = NULL;
    uint64_t size = 0;
    bool force = false, quiet = false;
    int32_t shape[7] = { 0 };
    struct opt opts[] = {
        { .names = "-o|--output", .kind = OPT_STRING, .dest = &out, .arg = "PATH", .help = "file to write (required)" },
        { .names = "--force", .kind = OPT_FLAG, .dest = &force, .help = "overwrite PATH when it exists" },
        { .names = "--size", .kind = OPT_FN, .dest = &size, .arg = "SIZE", .fn = read_size,
          .help = "aim for a file of about SIZE (e.g. 100M, 1G; K/M/G/T are powers of\n"
                  "1024); picks n_embd, n_layer, heads, n_ff, n_vocab" },
        { .names = "--type", .kind = OPT_FN, .dest = &p.wtype, .arg = "T", .fn = read_type,
          .help = "f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q6_k (default q8_0)" },
        { .names = "--arch", .kind = OPT_STRING, .dest = &p.arch, .arg = "A",
          .help = "llama | mistral | qwen2 | qwen3 (default llama)" },
        { .names = "--vocab", .kind = OPT_STRING, .dest = &p.vocab, .arg = "V", .help = "gpt2 | llama (default gpt2)" },
        { .names = "--n-vocab", .kind = OPT_INT, .dest = &shape[0], .arg = "N", .help = "vocabulary size (>= 300)",
          .lo = 0, .hi = INT32_MAX },
        { .names = "--n-embd", .kind = OPT_INT, .dest = &shape[1], .arg = "N",
          .help = "embedding width (multiple of n_head and of the type's block)", .lo = 0, .hi = INT32_MAX },
        { .names = "--n-layer", .kind = OPT_INT, .dest = &shape[2], .arg = "N", .help = "layers", .lo = 0,
          .hi = INT32_MAX },
        { .names = "--n-head", .kind = OPT_INT, .dest = &shape[3], .arg = "N", .help = "attention heads", .lo = 0,
          .hi = INT32_MAX },
        { .names = "--n-head-kv", .kind = OPT_INT, .dest = &shape[4], .arg = "N",
          .help = "key/value heads (divides n_head)", .lo = 0, .hi = INT32_MAX },
        { .names = "--n-ff", .kind = OPT_INT, .dest = &shape[5], .arg = "N", .help = "feed-forward width", .lo = 0,
          .hi = INT32_MAX },
        { .names = "--n-ctx", .kind = OPT_INT, .dest = &shape[6], .arg = "N",
          .help = "context length written to the file (default 2048)", .lo = 0, .hi = INT32_MAX },
        { .names = "--tied", .kind = OPT_FLAG, .dest = &p.tied_output, .help = "no output.weight: the head reuses token_embd" },
        { .names = "--seed", .kind = OPT_U64, .dest = &p.seed, .arg = "N",
          .help = "random seed (default 1); same options, same bytes" },
        { .names = "--no-progress", .kind = OPT_FLAG, .dest = &quiet, .help = "no progress on stderr" },
        { 0 },
    };
    static const char *const shape_names[7] = { "--n-vocab", "--n-embd", "--n-layer", "--n-head",
                                                "--n-head-kv", "--n-ff", "--n-ctx" };
    int32_t *fields[7] = { &p.n_vocab, &p.n_embd, &p.n_layer, &p.n_head, &p.n_head_kv, &p.n_ff, &p.n_ctx };
    const struct opts_cmd cmd = {
        "gen-model", "gen-model -o PATH [options]",
        "Writes a GGUF v3 model with random weights and a small trained vocabulary.", opts,
        "Explicit shape options override what --size picks. Progress goes to stderr; on Ctrl-C\n"
        "or SIGTERM the partial file is removed.",
    };
    int status = opts_parse(&cmd, argc, argv);
    if (status >= 0) return status;
    if (!out) return opts_usage_error(&cmd, "-o PATH is required");
    struct ferry_error err = { 0 };
    if (size && ferry_gen_params_for_size(&p, size, &err) != FERRY_OK) {
        fprintf(stderr, "ferry gen-model: %s\n", err.msg);
        return EXIT_RUNTIME;
    }
    /* what the command line says wins over what --size picked */
    for (int k = 0; k < 7; k++)
        if (opts_find(&cmd, shape_names[k])->seen) *fields[k] = shape[k];
    struct stat st;
    if (!force && stat(out, &st) == 0) {
        fprintf(stderr, "ferry gen-model: %s exists (--force overwrites it)\n", out);
        return EXIT_RUNTIME;
    }
    if (ferry_gen_params_check(&p, &err) != FERRY_OK) {
        fprintf(stderr, "ferry gen-model: %s\n", err.msg);
        return EXIT_RUNTIME;
    }
    struct progress prog = { .path = out, .tty = isatty(STDERR_FILENO), .quiet = quiet, .t0 = now_s() };
    prog.last = prog.t0;
    p.progress = on_progress;
    p.progress_ud = &prog;
    if (!quiet) {
        char hsize[32];
        human_bytes(hsize, sizeof hsize, (double)ferry_gen_data_bytes(&p));
        fprintf(stderr, "ferry gen-model: writing %s (%s %s, %s of weights)\n", out, p.arch, ferry_type_name(p.wtype),
                hsize);
    }
    /* the generator checks for a stop between chunks and removes its partial file */
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sa.sa_flags = SA_RESTART | SA_RESETHAND; /* a second signal kills as usual */
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (old_int.sa_handler == SIG_IGN) sigaction(SIGINT, &old_int, NULL); /* e.g. `cmd &` in a script */
    int rc = ferry_gen_model(&p, out, &err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (g_stop && rc != FERRY_OK) {
        fprintf(stderr, "\nferry gen-model: interrupted (signal %d): %s not written\n", (int)g_stop, out);
        return 128 + (int)g_stop;
    }
    if (rc != FERRY_OK) {
        fprintf(stderr, "ferry gen-model: %s\n", err.msg);
        return EXIT_RUNTIME;
    }
    print_summary(out, &p, now_s() - prog.t0);
    return 0;
}
