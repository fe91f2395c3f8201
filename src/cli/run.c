/* `ferry run`: generate text with a GGUF model whose layers may be spread
 * over ferry serve / rpc-server nodes. Text goes to stdout as it comes,
 * figures to stderr; with --json, one JSON object on stdout at the end. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/model_opts.h"
#include "ferry/sampler.h"
#include "ferry/vocab.h"

#define MIB (1024.0 * 1024.0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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

/* The generated text, kept for --json. */
struct text {
    char *s;
    size_t n, cap;
};

static void text_add(struct text *t, const char *s, size_t n) {
    if (t->n + n + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap * 2 : 1024) + n;
        char *p = realloc(t->s, cap);
        if (!p) return; /* the JSON text is then short; the run goes on */
        t->s = p, t->cap = cap;
    }
    memcpy(t->s + t->n, s, n);
    t->n += n;
}

static void emit_token(const struct ferry_vocab *v, int32_t id, struct text *keep) {
    char buf[256];
    int n = ferry_token_to_piece(v, id, false, buf, sizeof buf);
    if (n <= 0) return;
    size_t len = (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf);
    if (keep) {
        text_add(keep, buf, len);
    } else {
        fwrite(buf, 1, len, stdout);
        fflush(stdout);
    }
}

struct figures {
    size_t n_prompt;
    long n_gen;
    double t_prompt, t_gen;
};

static void print_json(struct ferry_model *m, const struct model_opts *o, const char *prompt, const struct text *t,
                       const struct figures *f, const struct node_snap *before) {
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    long steps = f->n_gen > 1 ? f->n_gen - 1 : 0;
    printf("{\"model\": ");
    cli_json_str(stdout, o->mp.path, strlen(o->mp.path));
    printf(", \"arch\": \"%s\", \"type\": \"%s\", \"size_bytes\": %" PRIu64 ", \"params\": %" PRIu64
           ", \"n_layer\": %d, \"n_ctx\": %d, \"threads\": %d, \"prompt\": ",
           info.arch, ferry_type_name(info.wtype), info.file_size, info.n_params, info.n_layer, info.n_ctx,
           o->mp.n_threads);
    cli_json_str(stdout, prompt, strlen(prompt));
    printf(", \"text\": ");
    cli_json_str(stdout, t->s ? t->s : "", t->n);
    printf(", \"load_s\": %.3f, \"n_prompt\": %zu, \"prompt_s\": %.4f, \"prompt_tps\": %.3f, \"n_gen\": %ld, "
           "\"gen_s\": %.4f, \"gen_tps\": %.3f, \"nodes\": ",
           ferry_model_load_seconds(m), f->n_prompt, f->t_prompt,
           f->t_prompt > 0 ? (double)f->n_prompt / f->t_prompt : 0.0, f->n_gen, f->t_gen,
           f->t_gen > 0 && steps > 0 ? (double)steps / f->t_gen : 0.0);
    nodes_json(stdout, m, before, steps);
    printf("}\n");
    fflush(stdout);
}

int ferry_cli_run(int argc, char **argv) {
    struct model_opts o;
    model_opts_init(&o);
    struct ferry_sampler_params sp;
    ferry_sampler_params_defaults(&sp);
    sp.seed = 1;
    const char *prompt = "Once upon a time", *prompt_path = NULL;
    int n_predict = 64;
    bool ignore_eos = false, json = false;
    struct opt opts[] = {
        { .names = NULL, .kind = OPT_SECTION, .help = "generation" },
        { .names = "-p|--prompt", .kind = OPT_STRING, .dest = &prompt, .arg = "TEXT", .help = "prompt (default: \"Once upon a time\")", .allow_empty = true },
        { .names = "-f|--file", .kind = OPT_STRING, .dest = &prompt_path, .arg = "PATH", .help = "read the prompt from a file" },
        { .names = "-n|--n-predict", .kind = OPT_INT, .dest = &n_predict, .arg = "N", .help = "tokens to generate (default 64)", .lo = 0, .hi = 1 << 20 },
        { .names = "--temp", .kind = OPT_FLOAT, .dest = &sp.temperature, .arg = "T", .help = "sampling temperature (default 0.8; 0 = greedy)", .lo = 0, .hi = 100 },
        { .names = "--top-k", .kind = OPT_INT, .dest = &sp.top_k, .arg = "K", .help = "(default 40; 0 = off)", .lo = 0, .hi = 1 << 24 },
        { .names = "--top-p", .kind = OPT_FLOAT, .dest = &sp.top_p, .arg = "P", .help = "(default 0.95; 1 = off)", .lo = 0, .hi = 1 },
        { .names = "-s|--seed", .kind = OPT_U64, .dest = &sp.seed, .arg = "N", .help = "sampling seed (default 1)", .lo = 0, .hi = 0 },
        { .names = "--ignore-eos", .kind = OPT_FLAG, .dest = &ignore_eos, .arg = NULL, .help = "keep generating past end-of-text" },
        { .names = "--json", .kind = OPT_FLAG, .dest = &json, .arg = NULL,
          .help = "no streaming: one JSON object on stdout at the end (text,\n"
          "timings, per-node figures)" },
        MODEL_OPTIONS(o),
        { 0 },
    };
    const struct opts_cmd cmd = {
        "run", "run -m MODEL.gguf [-p PROMPT | -f FILE] [-n N] [options]",
        "Generates text; with --rpc, layers run on ferry serve / rpc-server nodes.", opts, NULL,
    };
    char *prompt_file = NULL;
    int status = opts_parse(&cmd, argc, argv);
    if (status >= 0) goto out;
    if ((status = model_opts_check(&cmd, &o))) goto out;
    status = EXIT_RUNTIME;
    if (prompt_path) {
        if (!(prompt_file = read_file(prompt_path))) {
            fprintf(stderr, "ferry run: cannot read prompt file %s\n", prompt_path);
            goto out;
        }
        prompt = prompt_file;
    }
    signal(SIGPIPE, SIG_IGN);
    struct ferry_model *m = NULL;
    if (model_opts_load(&cmd, &o, &m)) goto out;
    const struct ferry_vocab *vocab = ferry_model_vocab(m);
    struct ferry_model_info info;
    ferry_model_get_info(m, &info);
    struct ferry_error err = { 0 };
    int32_t *toks = NULL;
    size_t n_toks = 0;
    struct text text = { 0 };
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
        fprintf(stderr, "ferry run: %zu prompt + %d new tokens exceed the context of %d (use -c)\n", n_toks,
                n_predict, info.n_ctx);
        goto done;
    }
    fprintf(stderr, "model: %s, %s, %.1f MiB, %.2f B parameters, %d layers, context %d, %d threads\n", info.arch,
            ferry_type_name(info.wtype), (double)info.file_size / MIB, (double)info.n_params / 1e9, info.n_layer,
            info.n_ctx, o.mp.n_threads);
    if (!json) {
        fwrite(prompt, 1, strlen(prompt), stdout);
        fflush(stdout);
    }

    struct figures fig = { .n_prompt = n_toks };
    double t0 = now_s();
    if (ferry_model_decode(m, toks, (int)n_toks, logits, &err)) {
        fprintf(stderr, "\nferry run: prompt: %s\n", err.msg);
        goto done;
    }
    fig.t_prompt = now_s() - t0;
    struct node_snap before;
    node_snap_take(m, &before);
    long generated = 0;
    double t1 = now_s();
    int rc = FERRY_OK;
    for (; generated < n_predict; generated++) {
        int32_t id = ferry_sampler_sample(smp, logits, info.n_vocab);
        if (id < 0 || (!ignore_eos && ferry_vocab_is_eog(vocab, id))) break;
        emit_token(vocab, id, json ? &text : NULL);
        if (generated + 1 == n_predict) {
            generated++;
            break;
        }
        if ((rc = ferry_model_decode(m, &id, 1, logits, &err))) break;
    }
    fig.t_gen = now_s() - t1;
    fig.n_gen = generated;
    if (!json) {
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (rc) {
        fprintf(stderr, "ferry run: generation stopped after %ld tokens: %s\n", generated, err.msg);
        goto done;
    }
    if (json) {
        print_json(m, &o, prompt, &text, &fig, &before);
    } else {
        fprintf(stderr, "\nload:       %.2f s\n", ferry_model_load_seconds(m));
        fprintf(stderr, "prompt:     %zu tokens in %.3f s, %.2f tokens/s\n", n_toks, fig.t_prompt,
                fig.t_prompt > 0 ? (double)n_toks / fig.t_prompt : 0.0);
        fprintf(stderr, "generation: %ld tokens in %.3f s, %.2f tokens/s\n", generated, fig.t_gen,
                fig.t_gen > 0 && generated > 1 ? (double)(generated - 1) / fig.t_gen : 0.0);
        fprintf(stderr, "nodes (per token: the generation steps):\n");
        /* per-token figures over generation only: subtract what the prompt moved */
        nodes_print(stderr, m, &before, generated > 1 ? generated - 1 : 0);
    }
    status = 0;
done:
    free(text.s);
    free(toks);
    free(logits);
    ferry_sampler_free(smp);
    ferry_model_free(m);
out:
    free(prompt_file);
    model_opts_free(&o);
    return status;
}
