/* `ferry bench model`: prompt and generation speed of a model, local or
 * split over servers, llama-bench style: -p and -n take comma lists, -r
 * repetitions, -o md | csv | json. Results on stdout, progress on stderr. */
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/model_opts.h"

#define MIB (1024.0 * 1024.0)
#define MAX_TESTS 16
#define MAX_REPS 1000

struct test {
    bool prompt; /* pp (one batch of n tokens) or tg (n single-token steps) */
    int n;
    double tps[MAX_REPS];
    double mean, sd;
};

struct list {
    int v[MAX_TESTS];
    int n;
};

/* "512" or "128,512": each in [0, 1<<20]; 0 drops that test. */
static int read_list(const char *cmd, const char *name, const char *s, void *dest) {
    struct list *l = dest;
    l->n = 0;
    for (const char *p = s;;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > (1 << 20) || (*end && *end != ',') || (*end && !end[1])) {
            fprintf(stderr, "ferry %s: %s '%s': expected token counts separated by commas, e.g. 128,512\n", cmd,
                    name, s);
            return -1;
        }
        if (l->n == MAX_TESTS) {
            fprintf(stderr, "ferry %s: %s: at most %d values\n", cmd, name, MAX_TESTS);
            return -1;
        }
        l->v[l->n++] = (int)v;
        if (!*end) return 0;
        p = end + 1;
    }
}

static int read_format(const char *cmd, const char *name, const char *s, void *dest) {
    if (strcmp(s, "md") && strcmp(s, "csv") && strcmp(s, "json")) {
        fprintf(stderr, "ferry %s: %s takes md, csv or json, not '%s'\n", cmd, name, s);
        return -1;
    }
    *(const char **)dest = s;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void stats(struct test *t, int n) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += t->tps[i];
    t->mean = n ? s / n : 0;
    for (int i = 0; i < n; i++) q += (t->tps[i] - t->mean) * (t->tps[i] - t->mean);
    t->sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* Tokens/s of each repetition, each from an empty cache; the first run
 * warms up. Progress on stderr unless quiet. */
static int run_test(struct ferry_model *m, int n_vocab, struct test *t, int reps, bool quiet, struct ferry_error *err) {
    int32_t *toks = malloc((size_t)t->n * sizeof *toks);
    if (!toks) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < t->n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        toks[i] = (int32_t)(x % (uint64_t)n_vocab);
    }
    int rc = FERRY_OK;
    for (int r = 0; r < reps + 1 && !rc; r++) {
        if (!quiet)
            fprintf(stderr, "bench model: %s%d %s %d/%d\n", t->prompt ? "pp" : "tg", t->n, r ? "run" : "warm-up", r,
                    reps);
        rc = ferry_model_reset(m, err);
        double t0 = now_s();
        if (t->prompt)
            rc = rc ? rc : ferry_model_decode(m, toks, t->n, NULL, err);
        else
            for (int i = 0; i < t->n && !rc; i++) rc = ferry_model_decode(m, &toks[i], 1, NULL, err);
        double dt = now_s() - t0;
        if (r > 0) t->tps[r - 1] = dt > 0 ? t->n / dt : 0;
    }
    free(toks);
    if (!rc) stats(t, reps);
    return rc;
}

struct report {
    struct ferry_model_info info;
    char model[64], backend[256];
    int threads, reps;
    double load_s;
};

static void out_md(const struct report *r, const struct test *t, int n, struct ferry_model *m) {
    printf("| model | size | params | backend | threads | test | t/s |\n");
    printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++)
        printf("| %s | %.1f MiB | %.1f M | %s | %d | %s%d | %.2f ± %.2f |\n", r->model,
               (double)r->info.file_size / MIB, (double)r->info.n_params / 1e6, r->backend, r->threads,
               t[i].prompt ? "pp" : "tg", t[i].n, t[i].mean, t[i].sd);
    printf("\nload: %.2f s; nodes:\n", r->load_s);
    nodes_print(stdout, m, NULL, 0);
}

static void out_csv(const struct report *r, const struct test *t, int n) {
    printf("model,size_bytes,params,backend,threads,n_prompt,n_gen,test,avg_ts,stddev_ts,load_s\n");
    for (int i = 0; i < n; i++)
        printf("\"%s\",%" PRIu64 ",%" PRIu64 ",\"%s\",%d,%d,%d,%s%d,%.3f,%.3f,%.3f\n", r->model, r->info.file_size,
               r->info.n_params, r->backend, r->threads, t[i].prompt ? t[i].n : 0, t[i].prompt ? 0 : t[i].n,
               t[i].prompt ? "pp" : "tg", t[i].n, t[i].mean, t[i].sd, r->load_s);
}

/* One object; pp_tps/tg_tps (the first pp and tg test) as before the
 * lists, every test under "tests", every node under "nodes". */
static void out_json(const struct report *r, const struct test *t, int n, struct ferry_model *m) {
    const struct test *pp = NULL, *tg = NULL;
    for (int i = n - 1; i >= 0; i--) *(t[i].prompt ? &pp : &tg) = &t[i];
    printf("{\"model\": \"%s\", \"size_bytes\": %" PRIu64 ", \"params\": %" PRIu64
           ", \"backend\": \"%s\", \"threads\": %d, \"repetitions\": %d, \"load_s\": %.3f",
           r->model, r->info.file_size, r->info.n_params, r->backend, r->threads, r->reps, r->load_s);
    printf(", \"n_prompt\": %d, \"pp_tps\": %.3f, \"pp_sd\": %.3f", pp ? pp->n : 0, pp ? pp->mean : 0,
           pp ? pp->sd : 0);
    printf(", \"n_gen\": %d, \"tg_tps\": %.3f, \"tg_sd\": %.3f, \"tests\": [", tg ? tg->n : 0, tg ? tg->mean : 0,
           tg ? tg->sd : 0);
    for (int i = 0; i < n; i++) {
        printf("%s{\"test\": \"%s%d\", \"n_prompt\": %d, \"n_gen\": %d, \"avg_ts\": %.3f, \"stddev_ts\": %.3f, "
               "\"samples_ts\": [",
               i ? ", " : "", t[i].prompt ? "pp" : "tg", t[i].n, t[i].prompt ? t[i].n : 0, t[i].prompt ? 0 : t[i].n,
               t[i].mean, t[i].sd);
        for (int k = 0; k < r->reps; k++) printf("%s%.3f", k ? ", " : "", t[i].tps[k]);
        printf("]}");
    }
    printf("], \"nodes\": ");
    nodes_json(stdout, m, NULL, 0);
    printf("}\n");
}

int ferry_cli_bench_model(int argc, char **argv) {
    struct model_opts o;
    model_opts_init(&o);
    struct list pp = { { 512 }, 1 }, tg = { { 128 }, 1 };
    int reps = 3;
    bool json = false;
    const char *format = "md";
    struct opt opts[] = {
        { .names = NULL, .kind = OPT_SECTION, .help = "tests" },
        { .names = "-p|--n-prompt", .kind = OPT_FN, .dest = &pp, .arg = "N[,N...]", .help = "prompt-processing tests of N tokens (default 512; 0 = none)",
          .fn = read_list },
        { .names = "-n|--n-gen", .kind = OPT_FN, .dest = &tg, .arg = "N[,N...]", .help = "generation tests of N tokens (default 128; 0 = none)",
          .fn = read_list },
        { .names = "-r|--repetitions", .kind = OPT_INT, .dest = &reps, .arg = "N", .help = "runs of each test, after one warm-up (default 3)", .lo = 1, .hi = MAX_REPS },
        { .names = "-o|--output", .kind = OPT_FN, .dest = &format, .arg = "md|csv|json", .help = "result format on stdout (default md)", .fn = read_format },
        { .names = "--json", .kind = OPT_FLAG, .dest = &json, .arg = NULL, .help = "same as -o json" },
        MODEL_OPTIONS(o),
        { 0 },
    };
    const struct opts_cmd cmd = {
        "bench model", "bench model -m MODEL.gguf [--rpc H:P,...] [-p N,...] [-n N,...] [-r N] [-o md|csv|json]",
        "Prompt and generation speed of a model, local or split over servers (llama-bench style);\n"
        "results on stdout, progress on stderr (--no-progress: none).",
        opts, NULL,
    };
    int status = opts_parse(&cmd, argc, argv);
    if (status >= 0) goto out;
    if ((status = model_opts_check(&cmd, &o))) goto out;
    status = EXIT_RUNTIME;
    if (json) format = "json";
    static struct test tests[2 * MAX_TESTS];
    int n_tests = 0, longest = 1;
    for (int i = 0; i < pp.n; i++)
        if (pp.v[i] > 0) tests[n_tests++] = (struct test){ .prompt = true, .n = pp.v[i] };
    for (int i = 0; i < tg.n; i++)
        if (tg.v[i] > 0) tests[n_tests++] = (struct test){ .prompt = false, .n = tg.v[i] };
    for (int i = 0; i < n_tests; i++)
        if (tests[i].n > longest) longest = tests[i].n;
    signal(SIGPIPE, SIG_IGN);
    if (o.mp.n_ctx == 0) o.mp.n_ctx = longest;
    struct ferry_model *m = NULL;
    if (model_opts_load(&cmd, &o, &m)) goto out;
    struct report r = { .threads = o.mp.n_threads, .reps = reps, .load_s = ferry_model_load_seconds(m) };
    ferry_model_get_info(m, &r.info);
    snprintf(r.model, sizeof r.model, "%s %s", r.info.arch, ferry_type_name(r.info.wtype));
    snprintf(r.backend, sizeof r.backend, "local");
    size_t bl = strlen(r.backend);
    for (int i = 0; i < ferry_model_n_nodes(m); i++) {
        struct ferry_model_node_info ni;
        ferry_model_node_info(m, i, &ni);
        if (strcmp(ni.transport, "local") && bl < sizeof r.backend)
            bl += (size_t)snprintf(r.backend + bl, sizeof r.backend - bl, "+%s(%s)", ni.transport, ni.name);
    }
    if (longest > r.info.n_ctx) {
        fprintf(stderr, "ferry bench model: a test of %d tokens does not fit the context of %d (use -c)\n", longest,
                r.info.n_ctx);
        goto done;
    }
    struct ferry_error err = { 0 };
    for (int i = 0; i < n_tests; i++) {
        if (run_test(m, r.info.n_vocab, &tests[i], reps, o.no_progress, &err)) {
            fprintf(stderr, "ferry bench model: %s%d: %s\n", tests[i].prompt ? "pp" : "tg", tests[i].n, err.msg);
            goto done;
        }
    }
    if (!strcmp(format, "json")) out_json(&r, tests, n_tests, m);
    else if (!strcmp(format, "csv")) out_csv(&r, tests, n_tests);
    else out_md(&r, tests, n_tests, m);
    fflush(stdout);
    status = 0;
done:
    ferry_model_free(m);
out:
    model_opts_free(&o);
    return status;
}
