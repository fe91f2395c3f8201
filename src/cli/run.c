/* `ferry run`: generate text with a GGUF model whose layers may be spread
 * over ferry serve / rpc-server nodes; `ferry bench model`: prompt and
 * generation speed, llama-bench style. Both share the model options. */
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "ferry/log.h"
#include "ferry/model.h"
#include "ferry/sampler.h"
#include "ferry/vocab.h"

#define MIB (1024.0 * 1024.0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- shared option parsing ---------------------------------------------------------------- */

struct model_opts {
    struct ferry_model_params mp;
    char *rpc_list; /* owned copy the endpoints point into */
    bool quiet_progress;
};

static int parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    if (!s) {
        fprintf(stderr, "ferry %s: %s needs a value\n", cmd, opt);
        return -1;
    }
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "ferry %s: %s: '%s' is not a number in [%ld, %ld]\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    if (!s) {
        fprintf(stderr, "ferry %s: %s needs a value\n", cmd, opt);
        return -1;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "ferry %s: %s: '%s' is not a number in [%g, %g]\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* "host:port,host:port" */
static int parse_rpc(const char *cmd, const char *s, struct model_opts *o) {
    if (!s) {
        fprintf(stderr, "ferry %s: --rpc needs HOST:PORT[,HOST:PORT...]\n", cmd);
        return -1;
    }
    free(o->rpc_list);
    o->rpc_list = strdup(s);
    if (!o->rpc_list) return -1;
    o->mp.n_rpc = 0;
    for (char *save = NULL, *tok = strtok_r(o->rpc_list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->mp.n_rpc == FERRY_MODEL_MAX_RPC) {
            fprintf(stderr, "ferry %s: at most %d servers\n", cmd, FERRY_MODEL_MAX_RPC);
            return -1;
        }
        o->mp.rpc[o->mp.n_rpc++] = tok;
    }
    return 0;
}

/* "3/1" or "3,1" */
static int parse_split(const char *cmd, const char *s, struct model_opts *o) {
    if (!s) {
        fprintf(stderr, "ferry %s: --tensor-split needs proportions, e.g. 3/1\n", cmd);
        return -1;
    }
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (errno || end == p || !(v >= 0 && v < 1e9) || n == FERRY_MODEL_MAX_RPC ||
            (*end && *end != '/' && *end != ',')) {
            fprintf(stderr, "ferry %s: --tensor-split '%s': expected non-negative numbers separated by / or ,\n",
                    cmd, s);
            return -1;
        }
        o->mp.tensor_split[n++] = (float)v;
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* Consumes a model option at argv[*i]; 1 if it was one, 0 if not, -1 on error. */
static int model_option(const char *cmd, int argc, char **argv, int *i, struct model_opts *o) {
    const char *a = argv[*i], *next = *i + 1 < argc ? argv[*i + 1] : NULL;
    long v;
#define IS(s, l) (!strcmp(a, s) || !strcmp(a, l))
    if (IS("-m", "--model")) {
        if (!next) return fprintf(stderr, "ferry %s: -m needs a file\n", cmd), -1;
        o->mp.path = next;
    } else if (!strcmp(a, "--rpc")) {
        if (parse_rpc(cmd, next, o)) return -1;
    } else if (IS("-ts", "--tensor-split")) {
        if (parse_split(cmd, next, o)) return -1;
    } else if (IS("-ngl", "--n-gpu-layers") || !strcmp(a, "--gpu-layers")) {
        if (parse_int(cmd, a, next, 0, 100000, &v)) return -1;
        o->mp.n_gpu_layers = (int)v;
    } else if (IS("-t", "--threads")) {
        if (parse_int(cmd, a, next, 1, 1024, &v)) return -1;
        o->mp.n_threads = (int)v;
    } else if (IS("-c", "--ctx-size")) {
        if (parse_int(cmd, a, next, 1, 1 << 20, &v)) return -1;
        o->mp.n_ctx = (int)v;
    } else if (IS("-b", "--batch-size") || IS("-ub", "--ubatch-size")) {
        if (parse_int(cmd, a, next, 1, 1 << 16, &v)) return -1;
        o->mp.n_batch = (int)v;
    } else if (!strcmp(a, "--transport")) {
        if (next && !strcmp(next, "auto"))
            o->mp.client.transport = FERRY_TRANSPORT_AUTO;
        else if (next && !strcmp(next, "tcp"))
            o->mp.client.transport = FERRY_TRANSPORT_TCP;
        else if (next && !strcmp(next, "rdma"))
            o->mp.client.transport = FERRY_TRANSPORT_RDMA;
        else
            return fprintf(stderr, "ferry %s: --transport auto|tcp|rdma\n", cmd), -1;
    } else if (!strcmp(a, "--no-hash-cache")) {
        o->mp.no_hash_cache = true;
        return 1;
    } else if (!strcmp(a, "--no-progress")) {
        o->quiet_progress = true;
        return 1;
    } else if (!strcmp(a, "--log-level")) {
        enum ferry_log_level lv;
        if (!next || !ferry_log_parse_level(next, &lv))
            return fprintf(stderr, "ferry %s: --log-level error|warn|info|debug\n", cmd), -1;
        ferry_log_set_level(lv);
    } else {
        return 0;
    }
#undef IS
    (*i)++;
    return 1;
}

/* A progress bar on a terminal, a line per quarter otherwise. */
struct progress {
    char node[64];
    int last;
    bool tty;
};

static void on_progress(void *ud, const char *node, uint64_t done, uint64_t total) {
    struct progress *p = ud;
    if (strcmp(p->node, node)) {
        snprintf(p->node, sizeof p->node, "%s", node);
        p->last = -1;
    }
    int pct = total ? (int)(done * 100 / total) : 100;
    if (p->tty) {
        int bars = pct / 4;
        fprintf(stderr, "\rloading %-22s [%.*s%*s] %3d%% %8.1f / %.1f MiB", node, bars,
                "#########################", 25 - bars, "", pct, (double)done / MIB, (double)total / MIB);
        if (done == total) fputc('\n', stderr);
    } else if (pct / 25 != p->last / 25 || (done == total && p->last != 100)) {
        fprintf(stderr, "loading %s: %3d%% (%.1f / %.1f MiB)\n", node, pct, (double)done / MIB, (double)total / MIB);
    }
    p->last = pct;
}

static int load_model(const char *cmd, struct model_opts *o, struct ferry_model **m) {
    if (!o->mp.path) {
        fprintf(stderr, "ferry %s: -m MODEL.gguf is required\n", cmd);
        return -1;
    }
    static struct progress prog;
    memset(&prog, 0, sizeof prog);
    prog.tty = isatty(STDERR_FILENO);
    if (!o->quiet_progress) {
        o->mp.progress = on_progress;
        o->mp.progress_ud = &prog;
    }
    struct ferry_error err = { 0 };
    if (ferry_model_load(&o->mp, m, &err)) {
        fprintf(stderr, "ferry %s: %s: %s\n", cmd, o->mp.path, err.msg);
        return -1;
    }
    return 0;
}

/* One line per node: what it holds, its transport, what its weights cost
 * at load and, when before is given, what each of steps decode steps moved
 * since that snapshot. */
static void print_nodes(FILE *out, struct ferry_model *m, const struct ferry_model_node_info *before,
                        long steps) {
    int n_nodes = ferry_model_n_nodes(m);
    for (int i = 0; i < n_nodes && i < FERRY_MODEL_MAX_RPC + 2; i++) {
        struct ferry_model_node_info ni;
        ferry_model_node_info(m, i, &ni);
        char what[96] = "";
        size_t n = 0;
        if (ni.embed) n += (size_t)snprintf(what + n, sizeof what - n, "embedding ");
        if (ni.layer_count)
            n += (size_t)snprintf(what + n, sizeof what - n, "layers %d-%d ", ni.layer_first,
                                  ni.layer_first + ni.layer_count - 1);
        if (ni.output) snprintf(what + n, sizeof what - n, "output");
        fprintf(out, "  %-22s %-6s %-26s weights %8.1f MiB", ni.name, ni.transport, what,
                (double)ni.weight_bytes / MIB);
        if (strcmp(ni.transport, "local")) {
            fprintf(out, ", sent %.1f MiB at load (%u from cache)", (double)ni.uploaded_bytes / MIB, ni.cache_hits);
            if (before && steps > 0)
                fprintf(out, ", per token %.2f KiB out, %.2f KiB in, %.1f requests",
                        (double)(ni.bytes_out - before[i].bytes_out) / 1024.0 / (double)steps,
                        (double)(ni.bytes_in - before[i].bytes_in) / 1024.0 / (double)steps,
                        (double)(ni.requests - before[i].requests) / (double)steps);
        }
        fputc('\n', out);
    }
}

/* ---- ferry run ---------------------------------------------------------------------------- */

static void run_usage(FILE *out) {
    fprintf(out,
            "usage: ferry run -m MODEL.gguf [-p PROMPT | -f FILE] [-n N] [options]\n"
            "  -p, --prompt TEXT       prompt (default: \"Once upon a time\")\n"
            "  -f, --file PATH         read the prompt from a file\n"
            "  -n, --n-predict N       tokens to generate (default 64)\n"
            "      --rpc H:P[,H:P...]  servers to offload layers to (ferry serve or rpc-server)\n"
            "  -ts, --tensor-split A/B proportions of the offloaded layers per server\n"
            "                          (default: by the servers' free memory)\n"
            "  -ngl N                  layers to offload, from the last; > layers: also the output\n"
            "                          (default: all when --rpc is given, else 0)\n"
            "  -t, --threads N         local compute threads (default: all cores)\n"
            "  -c, --ctx-size N        KV cache length (default: min(4096, trained))\n"
            "  -b, --batch-size N      prompt tokens per step (default 512)\n"
            "      --temp T            sampling temperature (default 0.8; 0 = greedy)\n"
            "      --top-k K           (default 40; 0 = off)\n"
            "      --top-p P           (default 0.95; 1 = off)\n"
            "  -s, --seed N            sampling seed (default 1)\n"
            "      --ignore-eos        keep generating past end-of-text\n"
            "      --transport T       auto | tcp | rdma (rdma: required, no fallback)\n"
            "      --no-hash-cache     send every weight, never probe the server's cache\n"
            "      --no-progress       no load progress on stderr\n"
            "      --log-level L       error | warn | info | debug\n");
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    for (size_t got; s && (got = fread(s + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *t = cap < (64u << 20) ? realloc(s, cap *= 2) : NULL;
            if (!t) {
                free(s);
                s = NULL;
            } else {
                s = t;
            }
        }
    }
    fclose(f);
    if (s) s[n] = 0;
    return s;
}

static void print_token(const struct ferry_vocab *v, int32_t id) {
    char buf[256];
    int n = ferry_token_to_piece(v, id, false, buf, sizeof buf);
    if (n > 0) fwrite(buf, 1, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf), stdout);
    fflush(stdout);
}

int ferry_cli_run(int argc, char **argv) {
    struct model_opts o;
    memset(&o, 0, sizeof o);
    ferry_model_params_defaults(&o.mp);
    struct ferry_sampler_params sp;
    ferry_sampler_params_defaults(&sp);
    sp.seed = 1;
    const char *prompt = "Once upon a time";
    char *prompt_file = NULL;
    long n_predict = 64;
    bool ignore_eos = false;
    int status = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        int r = model_option("run", argc, argv, &i, &o);
        if (r < 0) goto out;
        if (r > 0) continue;
        long v;
        double d;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!next) {
                fprintf(stderr, "ferry run: -p needs text\n");
                goto out;
            }
            prompt = argv[++i];
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            free(prompt_file);
            if (!next || !(prompt_file = read_file(next))) {
                fprintf(stderr, "ferry run: cannot read prompt file '%s'\n", next ? next : "");
                goto out;
            }
            prompt = prompt_file;
            i++;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (parse_int("run", a, next, 0, 1 << 20, &n_predict)) goto out;
            i++;
        } else if (!strcmp(a, "--temp")) {
            if (parse_float("run", a, next, 0, 100, &d)) goto out;
            sp.temperature = (float)d;
            i++;
        } else if (!strcmp(a, "--top-k")) {
            if (parse_int("run", a, next, 0, 1 << 24, &v)) goto out;
            sp.top_k = (int32_t)v;
            i++;
        } else if (!strcmp(a, "--top-p")) {
            if (parse_float("run", a, next, 0, 1, &d)) goto out;
            sp.top_p = (float)d;
            i++;
        } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            if (parse_int("run", a, next, 0, LONG_MAX, &v)) goto out;
            sp.seed = (uint64_t)v;
            i++;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            run_usage(stdout);
            status = 0;
            goto out;
        } else {
            fprintf(stderr, "ferry run: unknown option '%s'\n", a);
            run_usage(stderr);
            status = 2;
            goto out;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct ferry_model *m = NULL;
    if (load_model("run", &o, &m)) goto out;
    const struct ferry_vocab *vocab = ferry_model_vocab(m);
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    struct ferry_error err = { 0 };
    int32_t *toks = NULL;
    size_t n_toks = 0;
    float *logits = malloc((size_t)info.n_vocab * sizeof(float));
    struct ferry_sampler *smp = ferry_sampler_new(&sp);
    if (!logits || !smp || ferry_tokenize(vocab, prompt, strlen(prompt), true, true, &toks, &n_toks, &err)) {
        fprintf(stderr, "ferry run: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    if (n_toks == 0) {
        fprintf(stderr, "ferry run: the prompt gives no tokens\n");
        goto done;
    }
    if (n_toks + (size_t)n_predict > (size_t)info.n_ctx) {
        fprintf(stderr, "ferry run: %zu prompt + %ld new tokens exceed the context of %d (use -c)\n", n_toks,
                n_predict, info.n_ctx);
        goto done;
    }
    fprintf(stderr, "model: %s, %s, %.1f MiB, %.2f B parameters, %d layers, context %d\n", info.arch,
            ferry_type_name(info.wtype), (double)info.file_size / MIB, (double)info.n_params / 1e9,
            info.n_layer, info.n_ctx);
    fwrite(prompt, 1, strlen(prompt), stdout);
    fflush(stdout);

    double t0 = now_s();
    if (ferry_model_decode(m, toks, (int)n_toks, logits, &err)) {
        fprintf(stderr, "\nferry run: prompt: %s\n", err.msg);
        goto done;
    }
    double t_prompt = now_s() - t0;
    struct ferry_model_node_info before[FERRY_MODEL_MAX_RPC + 2];
    int n_nodes = ferry_model_n_nodes(m);
    for (int i = 0; i < n_nodes && i < FERRY_MODEL_MAX_RPC + 2; i++) ferry_model_node_info(m, i, &before[i]);
    long generated = 0;
    double t1 = now_s();
    int rc = FERRY_OK;
    for (; generated < n_predict; generated++) {
        int32_t id = ferry_sampler_sample(smp, logits, info.n_vocab);
        if (id < 0 || (!ignore_eos && ferry_vocab_is_eog(vocab, id))) break;
        print_token(vocab, id);
        if (generated + 1 == n_predict) {
            generated++;
            break;
        }
        if ((rc = ferry_model_decode(m, &id, 1, logits, &err))) break;
    }
    double t_gen = now_s() - t1;
    fputc('\n', stdout);
    fflush(stdout);
    if (rc) {
        fprintf(stderr, "ferry run: generation stopped after %ld tokens: %s\n", generated, err.msg);
        goto done;
    }
    fprintf(stderr, "\nload:       %.2f s\n", ferry_model_load_seconds(m));
    fprintf(stderr, "prompt:     %zu tokens in %.3f s, %.2f tokens/s\n", n_toks, t_prompt,
            t_prompt > 0 ? (double)n_toks / t_prompt : 0.0);
    fprintf(stderr, "generation: %ld tokens in %.3f s, %.2f tokens/s\n", generated, t_gen,
            t_gen > 0 && generated > 1 ? (double)(generated - 1) / t_gen : 0.0);
    fprintf(stderr, "nodes (per token: the generation steps):\n");
    /* per-token figures over generation only: subtract what the prompt moved */
    print_nodes(stderr, m, before, generated > 1 ? generated - 1 : 0);
    status = 0;
done:
    free(toks);
    free(logits);
    ferry_sampler_free(smp);
    ferry_model_free(m);
out:
    free(prompt_file);
    free(o.rpc_list);
    return status;
}

/* ---- ferry bench model ---------------------------------------------------------------------- */

static void bench_usage(FILE *out) {
    fprintf(out,
            "usage: ferry bench model -m MODEL.gguf [--rpc H:P,...] [-p N] [-n N] [-r N] [--json]\n"
            "  -p, --n-prompt N   prompt-processing test of N tokens (default 512; 0 = skip)\n"
            "  -n, --n-gen N      generation test of N tokens (default 128; 0 = skip)\n"
            "  -r, --repetitions N  runs of each test (default 3)\n"
            "      --json         one JSON object instead of the table\n"
            "  plus the model options of ferry run: --rpc, -ts, -ngl, -t, -c, -b, --no-hash-cache\n");
}

static void stats(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = n ? s / n : 0;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* Tokens/s of each repetition: a prompt of n tokens in ubatches, or n
 * single-token steps, each run from an empty cache. */
static int bench_test(struct ferry_model *m, int n_vocab, bool prompt, int n, int reps, double *tps,
                      struct ferry_error *err) {
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    if (!toks) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        toks[i] = (int32_t)(x % (uint64_t)n_vocab);
    }
    int rc = FERRY_OK;
    for (int r = 0; r < reps + 1 && !rc; r++) { /* the first run warms up */
        rc = ferry_model_reset(m, err);
        double t0 = now_s();
        if (prompt)
            rc = rc ? rc : ferry_model_decode(m, toks, n, NULL, err);
        else
            for (int i = 0; i < n && !rc; i++) rc = ferry_model_decode(m, &toks[i], 1, NULL, err);
        double dt = now_s() - t0;
        if (r > 0) tps[r - 1] = dt > 0 ? n / dt : 0;
    }
    free(toks);
    return rc;
}

int ferry_cli_bench_model(int argc, char **argv) {
    struct model_opts o;
    memset(&o, 0, sizeof o);
    ferry_model_params_defaults(&o.mp);
    long n_prompt = 512, n_gen = 128, reps = 3;
    bool json = false;
    int status = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        int r = model_option("bench model", argc, argv, &i, &o);
        if (r < 0) goto out;
        if (r > 0) continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) {
            if (parse_int("bench model", a, next, 0, 1 << 20, &n_prompt)) goto out;
            i++;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) {
            if (parse_int("bench model", a, next, 0, 1 << 20, &n_gen)) goto out;
            i++;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) {
            if (parse_int("bench model", a, next, 1, 1000, &reps)) goto out;
            i++;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            bench_usage(stdout);
            status = 0;
            goto out;
        } else {
            fprintf(stderr, "ferry bench model: unknown option '%s'\n", a);
            bench_usage(stderr);
            status = 2;
            goto out;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (o.mp.n_ctx == 0) o.mp.n_ctx = (int)(n_prompt > n_gen ? n_prompt : n_gen);
    struct ferry_model *m = NULL;
    if (load_model("bench model", &o, &m)) goto out;
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    char backend[256] = "local";
    size_t bl = 5;
    for (int i = 0; i < ferry_model_n_nodes(m); i++) {
        struct ferry_model_node_info ni;
        ferry_model_node_info(m, i, &ni);
        if (strcmp(ni.transport, "local") && bl < sizeof backend)
            bl += (size_t)snprintf(backend + bl, sizeof backend - bl, "+%s(%s)", ni.transport, ni.name);
    }
    double pp[1000] = { 0 }, tg[1000] = { 0 }, pp_m = 0, pp_sd = 0, tg_m = 0, tg_sd = 0;
    struct ferry_error err = { 0 };
    if (n_prompt > 0 && bench_test(m, info.n_vocab, true, (int)n_prompt, (int)reps, pp, &err)) {
        fprintf(stderr, "ferry bench model: pp%ld: %s\n", n_prompt, err.msg);
        goto done;
    }
    if (n_gen > 0 && bench_test(m, info.n_vocab, false, (int)n_gen, (int)reps, tg, &err)) {
        fprintf(stderr, "ferry bench model: tg%ld: %s\n", n_gen, err.msg);
        goto done;
    }
    stats(pp, n_prompt > 0 ? (int)reps : 0, &pp_m, &pp_sd);
    stats(tg, n_gen > 0 ? (int)reps : 0, &tg_m, &tg_sd);
    double size_mib = (double)info.file_size / MIB, load = ferry_model_load_seconds(m);
    if (json) {
        printf("{\"model\": \"%s %s\", \"size_bytes\": %" PRIu64 ", \"params\": %" PRIu64
               ", \"backend\": \"%s\", \"load_s\": %.3f, \"n_prompt\": %ld, \"pp_tps\": %.3f, \"pp_sd\": %.3f"
               ", \"n_gen\": %ld, \"tg_tps\": %.3f, \"tg_sd\": %.3f, \"threads\": %d}\n",
               info.arch, ferry_type_name(info.wtype), info.file_size, info.n_params, backend, load, n_prompt,
               pp_m, pp_sd, n_gen, tg_m, tg_sd, o.mp.n_threads);
    } else {
        printf("| model | size | params | backend | test | t/s |\n");
        printf("| --- | ---: | ---: | --- | ---: | ---: |\n");
        char model[64];
        snprintf(model, sizeof model, "%s %s", info.arch, ferry_type_name(info.wtype));
        printf("| %s | %.1f MiB | %.1f M | %s | load | %.2f s |\n", model, size_mib, (double)info.n_params / 1e6,
               backend, load);
        if (n_prompt > 0)
            printf("| %s | %.1f MiB | %.1f M | %s | pp%ld | %.2f ± %.2f |\n", model, size_mib,
                   (double)info.n_params / 1e6, backend, n_prompt, pp_m, pp_sd);
        if (n_gen > 0)
            printf("| %s | %.1f MiB | %.1f M | %s | tg%ld | %.2f ± %.2f |\n", model, size_mib,
                   (double)info.n_params / 1e6, backend, n_gen, tg_m, tg_sd);
        print_nodes(stdout, m, NULL, 0);
    }
    status = 0;
done:
    ferry_model_free(m);
out:
    free(o.rpc_list);
    return status;
}
