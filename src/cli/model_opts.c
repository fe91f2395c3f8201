/* ferry: the model options of `ferry run` and `ferry bench model`
 * (model_opts.h). */
#include "cli/model_opts.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/bench.h"
#include "cli/cli.h"

#define MIB (1024.0 * 1024.0)

void model_opts_init(struct model_opts *o) {
    memset(o, 0, sizeof *o);
    ferry_model_params_defaults(&o->mp);
}

void model_opts_free(struct model_opts *o) {
    free(o->rpc_list);
    o->rpc_list = NULL;
}

/* "host:port,host:port": every entry a HOST:PORT with a port. */
static int check_rpc(const struct opts_cmd *cmd, struct model_opts *o) {
    free(o->rpc_list);
    o->rpc_list = strdup(o->rpc);
    if (!o->rpc_list) return fprintf(stderr, "ferry %s: out of memory\n", cmd->name), EXIT_RUNTIME;
    o->mp.n_rpc = 0;
    char *p = o->rpc_list;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        char host[64];
        int port;
        if (bench_parse_endpoint(p, host, sizeof host, &port) || port == 0)
            return opts_usage_error(cmd, "--rpc '%s': '%s' is not HOST:PORT", o->rpc, p);
        if (o->mp.n_rpc == FERRY_MODEL_MAX_RPC)
            return opts_usage_error(cmd, "--rpc: at most %d servers", FERRY_MODEL_MAX_RPC);
        o->mp.rpc[o->mp.n_rpc++] = p;
        if (!comma) break;
        p = comma + 1;
    }
    return 0;
}

/* "3/1" or "3,1": non-negative, not all zero, no more than the servers. */
static int check_split(const struct opts_cmd *cmd, struct model_opts *o) {
    const char *s = o->split;
    int n = 0;
    double sum = 0;
    for (const char *p = s; *p;) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (errno || end == p || !(v >= 0 && v < 1e9) || (*end && *end != '/' && *end != ',') ||
            (*end && !end[1]))
            return opts_usage_error(cmd, "-ts '%s': expected non-negative numbers separated by / or ,", s);
        if (n == o->mp.n_rpc)
            return opts_usage_error(cmd, "-ts '%s' has more entries than the %d server%s of --rpc", s, o->mp.n_rpc,
                                    o->mp.n_rpc == 1 ? "" : "s");
        o->mp.tensor_split[n++] = (float)v;
        sum += v;
        p = *end ? end + 1 : end;
    }
    if (!(sum > 0)) return opts_usage_error(cmd, "-ts '%s': the proportions add up to 0", s);
    return 0;
}

int model_opts_check(const struct opts_cmd *cmd, struct model_opts *o) {
    int rc;
    if (!o->mp.path) return opts_usage_error(cmd, "-m MODEL.gguf is required");
    if (o->rpc && (rc = check_rpc(cmd, o))) return rc;
    if (o->split) {
        if (!o->rpc) return opts_usage_error(cmd, "-ts splits layers between --rpc servers: give --rpc");
        if ((rc = check_split(cmd, o))) return rc;
    }
    if (!o->rpc && opts_find(cmd, "-ngl")->seen && o->mp.n_gpu_layers > 0)
        return opts_usage_error(cmd, "-ngl %d offloads layers to --rpc servers: give --rpc (ferry has no GPU)",
                                o->mp.n_gpu_layers);
    if (opts_find(cmd, "-t")->seen) {
        if ((rc = cli_check_threads(cmd->name, "-t", o->mp.n_threads))) return rc;
    } else {
        o->mp.n_threads = cli_default_threads();
    }
    return 0;
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

/* The loader's message names the file when the file is at fault and the
 * server when a server is: add the model's name only to what names neither
 * (a GGUF format error, a missing tensor). */
static bool names_a_place(const struct model_opts *o, const char *msg) {
    if (strstr(msg, o->mp.path) || !strncmp(msg, "server", 6)) return true;
    for (int i = 0; i < o->mp.n_rpc; i++)
        if (strstr(msg, o->mp.rpc[i])) return true;
    return false;
}

int model_opts_load(const struct opts_cmd *cmd, struct model_opts *o, struct ferry_model **m) {
    static struct progress prog;
    memset(&prog, 0, sizeof prog);
    prog.tty = isatty(STDERR_FILENO);
    if (!o->no_progress) {
        o->mp.progress = on_progress;
        o->mp.progress_ud = &prog;
    }
    struct ferry_error err = { 0 };
    if (ferry_model_load(&o->mp, m, &err)) {
        if (names_a_place(o, err.msg)) fprintf(stderr, "ferry %s: %s\n", cmd->name, err.msg);
        else /* "gguf: bad magic" as "model.gguf: bad magic" */
            fprintf(stderr, "ferry %s: %s: %s\n", cmd->name, o->mp.path,
                    strncmp(err.msg, "gguf: ", 6) ? err.msg : err.msg + 6);
        return EXIT_RUNTIME;
    }
    struct ferry_model_info info;
    ferry_model_get_info(*m, &info);
    if (opts_find(cmd, "-c")->seen) {
        if (info.n_ctx != o->mp.n_ctx)
            fprintf(stderr, "ferry %s: note: -c %d: the KV cache holds %d tokens (a multiple of 256)\n", cmd->name,
                    o->mp.n_ctx, info.n_ctx);
        if (o->mp.n_ctx > info.n_ctx_train)
            fprintf(stderr,
                    "ferry %s: warning: -c %d is above the model's trained context of %d tokens: text past it "
                    "may degrade\n",
                    cmd->name, o->mp.n_ctx, info.n_ctx_train);
    }
    return 0;
}

void node_snap_take(struct ferry_model *m, struct node_snap *s) {
    s->n = ferry_model_n_nodes(m);
    if (s->n > FERRY_MODEL_MAX_RPC + 2) s->n = FERRY_MODEL_MAX_RPC + 2;
    for (int i = 0; i < s->n; i++) ferry_model_node_info(m, i, &s->ni[i]);
}

void nodes_print(FILE *out, struct ferry_model *m, const struct node_snap *before, long steps) {
    struct node_snap now;
    node_snap_take(m, &now);
    for (int i = 0; i < now.n; i++) {
        const struct ferry_model_node_info *ni = &now.ni[i];
        char what[96] = "";
        size_t n = 0;
        if (ni->embed) n += (size_t)snprintf(what + n, sizeof what - n, "embedding ");
        if (ni->layer_count)
            n += (size_t)snprintf(what + n, sizeof what - n, "layers %d-%d ", ni->layer_first,
                                  ni->layer_first + ni->layer_count - 1);
        if (ni->output) snprintf(what + n, sizeof what - n, "output");
        fprintf(out, "  %-22s %-6s %-26s weights %8.1f MiB", ni->name, ni->transport, what,
                (double)ni->weight_bytes / MIB);
        if (strcmp(ni->transport, "local")) {
            fprintf(out, ", load %.2f s: sent %.1f MiB, %.1f MiB from its cache (%u tensors), %.1f MiB from its "
                         "own model file (%u)",
                    ni->load_seconds, (double)ni->uploaded_bytes / MIB, (double)ni->cache_bytes / MIB, ni->cache_hits,
                    (double)ni->local_bytes / MIB, ni->local_hits);
            if (before && steps > 0 && i < before->n)
                fprintf(out, ", per token %.2f KiB out, %.2f KiB in, %.1f requests",
                        (double)(ni->bytes_out - before->ni[i].bytes_out) / 1024.0 / (double)steps,
                        (double)(ni->bytes_in - before->ni[i].bytes_in) / 1024.0 / (double)steps,
                        (double)(ni->requests - before->ni[i].requests) / (double)steps);
        }
        fputc('\n', out);
    }
}

void nodes_json(FILE *out, struct ferry_model *m, const struct node_snap *before, long steps) {
    struct node_snap now;
    node_snap_take(m, &now);
    fputc('[', out);
    for (int i = 0; i < now.n; i++) {
        const struct ferry_model_node_info *ni = &now.ni[i];
        fprintf(out, "%s{\"name\": ", i ? ", " : "");
        cli_json_str(out, ni->name, strlen(ni->name));
        fprintf(out, ", \"transport\": \"%s\", \"embedding\": %s, \"output\": %s, \"layer_first\": %d, "
                     "\"layer_count\": %d, \"weight_bytes\": %" PRIu64,
                ni->transport, ni->embed ? "true" : "false", ni->output ? "true" : "false", ni->layer_first,
                ni->layer_count, ni->weight_bytes);
        if (strcmp(ni->transport, "local")) {
            fprintf(out, ", \"load_seconds\": %.3f, \"uploaded_bytes\": %" PRIu64 ", \"cache_hits\": %u, "
                         "\"cache_bytes\": %" PRIu64 ", \"local_hits\": %u, \"local_bytes\": %" PRIu64
                         ", \"bytes_out\": %" PRIu64 ", \"bytes_in\": %" PRIu64 ", \"requests\": %" PRIu64,
                    ni->load_seconds, ni->uploaded_bytes, ni->cache_hits, ni->cache_bytes, ni->local_hits,
                    ni->local_bytes, ni->bytes_out, ni->bytes_in, ni->requests);
            if (before && steps > 0 && i < before->n)
                fprintf(out, ", \"per_token_bytes_out\": %.1f, \"per_token_bytes_in\": %.1f, "
                             "\"per_token_requests\": %.2f",
                        (double)(ni->bytes_out - before->ni[i].bytes_out) / (double)steps,
                        (double)(ni->bytes_in - before->ni[i].bytes_in) / (double)steps,
                        (double)(ni->requests - before->ni[i].requests) / (double)steps);
        }
        fputc('}', out);
    }
    fputc(']', out);
}
