/* ferry: the model options `ferry run` and `ferry bench model` share, their
 * checks, loading with progress, and the per-node report. */
#ifndef FERRY_CLI_MODEL_OPTS_H
#define FERRY_CLI_MODEL_OPTS_H

#include <stdbool.h>
#include <stdio.h>

#include "cli/opts.h"
#include "ferry/model.h"

struct model_opts {
    struct ferry_model_params mp;
    const char *rpc, *split; /* as given; parsed by model_opts_check */
    char *rpc_list;          /* owned copy the endpoints point into */
    bool no_progress;
};

/* The entries of the option table, for a struct model_opts named o. */
#define MODEL_OPTIONS(o) \
    { .kind = OPT_SECTION, .help = "model options" }, \
    { .names = "-m|--model", .kind = OPT_STRING, .dest = &(o).mp.path, .arg = "FILE", \
      .help = "GGUF model (required)" }, \
    { .names = "--rpc", .kind = OPT_STRING, .dest = &(o).rpc, .arg = "H:P[,H:P...]", \
      .help = "servers to offload layers to (ferry serve or rpc-server)" }, \
    { .names = "-ts|--tensor-split", .kind = OPT_STRING, .dest = &(o).split, .arg = "A/B", \
      .help = "proportions of the offloaded layers per server, one per --rpc\n" \
              "server or fewer (default: by the servers' free memory)" }, \
    { .names = "-ngl|--n-gpu-layers|--gpu-layers", .kind = OPT_INT, .dest = &(o).mp.n_gpu_layers, .arg = "N", \
      .help = "layers to offload to the --rpc servers, from the last; more than\n" \
              "the layers: also the output (default: all when --rpc is given)", \
      .lo = 0, .hi = 100000 }, \
    { .names = "-t|--threads", .kind = OPT_INT, .dest = &(o).mp.n_threads, .arg = "N", \
      .help = "local compute threads (default: the physical cores this process\n" \
              "may use; more than its CPUs: a warning; above 4x or 512: refused)", \
      .lo = 1, .hi = 1 << 20 }, \
    { .names = "-c|--ctx-size", .kind = OPT_INT, .dest = &(o).mp.n_ctx, .arg = "N", \
      .help = "KV cache length, rounded up to a multiple of 256 (default: run:\n" \
              "min(4096, trained); bench model: its longest test; above the\n" \
              "trained context: a warning)", \
      .lo = 1, .hi = 1 << 20 }, \
    { .names = "-b|--batch-size", .kind = OPT_INT, .dest = &(o).mp.n_batch, .arg = "N", \
      .help = "prompt tokens per step (default 512)", .lo = 1, .hi = 1 << 16 }, \
    { .names = "-ub|--ubatch-size", .kind = OPT_INT, .dest = &(o).mp.n_batch, .arg = "N", .help = "same as -b", \
      .lo = 1, .hi = 1 << 16 }, \
    { .names = "--transport", .kind = OPT_FN, .dest = &(o).mp.client.transport, .arg = "T", \
      .help = "auto | tcp | rdma (rdma: required, no fallback)", .fn = opt_read_transport }, \
    { .names = "--rdma-dev", .kind = OPT_STRING, .dest = &(o).mp.client.rdma_dev, .arg = "NAME", \
      .help = "RDMA device (default $FERRY_RDMA_DEV, else the one whose GID is\n" \
              "the TCP source address)" }, \
    { .names = "--rdma-ip", .kind = OPT_STRING, .dest = &(o).mp.client.rdma_ip, .arg = "ADDR", \
      .help = "use the RDMA GID of this IPv4 address (default $FERRY_RDMA_IP)" }, \
    { .names = "--hello-timeout", .kind = OPT_INT, .dest = &(o).mp.client.hello_timeout_ms, .arg = "MS", \
      .help = "give up on a server that does not answer HELLO within MS ms\n" \
              "(default 5000, or $FERRY_HELLO_TIMEOUT_MS)", .lo = 1, .hi = 86400000 }, \
    { .names = "--no-hash-cache", .kind = OPT_FLAG, .dest = &(o).mp.no_hash_cache, \
      .help = "send every weight, never probe the server's cache" }, \
    { .names = "--no-progress", .kind = OPT_FLAG, .dest = &(o).no_progress, .help = "no progress on stderr" }, \
    { .names = "--log-level", .kind = OPT_FN, .arg = "L", .help = "error | warn | info | debug", \
      .fn = opt_read_log_level }

void model_opts_init(struct model_opts *o);
void model_opts_free(struct model_opts *o);
/* After parsing: -m given, --rpc and -ts well formed and consistent, -ngl
 * only with --rpc, threads defaulted or checked. 0 or EXIT_USAGE. */
int model_opts_check(const struct opts_cmd *cmd, struct model_opts *o);
/* Loads with progress on stderr (unless --no-progress); notes a context
 * rounded up or above the trained one. 0 or EXIT_RUNTIME after a message. */
int model_opts_load(const struct opts_cmd *cmd, struct model_opts *o, struct ferry_model **m);

/* Per-node snapshot, to report what generation moved. */
struct node_snap {
    int n;
    struct ferry_model_node_info ni[FERRY_MODEL_MAX_RPC + 2];
};
void node_snap_take(struct ferry_model *m, struct node_snap *s);
/* One line per node: what it holds, its transport, what its weights cost
 * at load and, with before, what each of steps steps moved since. */
void nodes_print(FILE *out, struct ferry_model *m, const struct node_snap *before, long steps);
/* The same as a JSON array. */
void nodes_json(FILE *out, struct ferry_model *m, const struct node_snap *before, long steps);

#endif
