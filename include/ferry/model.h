/* ferry: llama-family models from GGUF files (architectures llama, mistral,
 * qwen2, qwen3), run on the local engine and on remote ggml RPC servers.
 *
 * Layers are split as llama.cpp splits them: -ngl N puts the last N
 * repeating layers (N > n_layer: also the output head) on the servers
 * given by rpc[], divided in the proportions of tensor_split (default: the
 * servers' free memory); the rest, and the token embedding, stay local.
 * Weights go to each server once, through its hash cache when it has one.
 * Each ubatch then flows from node to node: one upload of the node's
 * inputs, one graph (or GRAPH_RECOMPUTE when it is unchanged), one download
 * of the activations it hands on. */
#ifndef FERRY_MODEL_H
#define FERRY_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/client.h"
#include "ferry/error.h"
#include "ferry/types.h"
#include "ferry/vocab.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_MODEL_MAX_RPC 16

/* Called as weights go to a node: done/total bytes of that node's upload. */
typedef void (*ferry_model_progress_fn)(void *ud, const char *node, uint64_t done, uint64_t total);

struct ferry_model_params {
    const char *path;
    const char *rpc[FERRY_MODEL_MAX_RPC]; /* "host:port" endpoints */
    int n_rpc;
    float tensor_split[FERRY_MODEL_MAX_RPC]; /* proportions; all 0 = by free memory */
    int n_gpu_layers;   /* -1: everything on the servers when there are any, else 0 */
    int n_threads;      /* local engine threads; 0 = number of cores */
    int n_ctx;          /* KV cache length; 0 = min(4096, the model's context length) */
    int n_batch;        /* tokens per ubatch; 0 = 512 */
    bool no_hash_cache; /* never probe SET_TENSOR_HASH or the server's model files */
    ferry_model_progress_fn progress;
    void *progress_ud;
    struct ferry_client_options client; /* zero fields: the defaults */
};
void ferry_model_params_defaults(struct ferry_model_params *p);

struct ferry_model_info {
    char arch[16];
    char name[64];
    enum ferry_type wtype; /* type of most 2-D weights */
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train, n_ctx;
    uint64_t n_params, file_size;
};

/* A place where layers run: the local engine or one server. */
struct ferry_model_node_info {
    char name[64];      /* "local" or the endpoint */
    char transport[16]; /* "local", "tcp", ... */
    int layer_first, layer_count; /* layers [first, first+count) */
    bool embed, output;           /* token embedding / output head here */
    uint64_t weight_bytes;        /* weights this node holds */
    uint64_t uploaded_bytes;      /* of them sent at load (cache hits are not) */
    uint32_t cache_hits;          /* uploads the server's hash cache answered */
    uint32_t local_hits;          /* weights the server filled from its own model file */
    uint64_t local_bytes;         /* their bytes: neither read nor sent by the client */
    uint64_t cache_bytes;         /* bytes of the cache hits */
    double load_seconds;          /* putting this node's weights in place */
    uint64_t bytes_out, bytes_in; /* RPC bytes since load, headers included */
    uint64_t requests;            /* RPC requests since load */
    uint64_t graphs_sent, graphs_recomputed;
};

struct ferry_model;

int ferry_model_load(const struct ferry_model_params *p, struct ferry_model **out,
                     struct ferry_error *err);
void ferry_model_free(struct ferry_model *m);

const struct ferry_vocab *ferry_model_vocab(const struct ferry_model *m);
void ferry_model_get_info(const struct ferry_model *m, struct ferry_model_info *out);
double ferry_model_load_seconds(const struct ferry_model *m);
int ferry_model_n_nodes(const struct ferry_model *m);
void ferry_model_node_info(const struct ferry_model *m, int i, struct ferry_model_node_info *out);

/* Evaluates tokens[0..n) at the next n positions of the KV cache and, when
 * logits is not NULL, writes the last token's n_vocab logits there. A node
 * failing (a server lost, a refused graph) returns its error; the model is
 * then unusable until ferry_model_reset() succeeds (which reconnects and
 * re-uploads what a server lost). */
int ferry_model_decode(struct ferry_model *m, const int32_t *tokens, int n, float *logits,
                       struct ferry_error *err);
/* Tokens held by the KV cache. */
int ferry_model_n_past(const struct ferry_model *m);
/* Empties the KV cache; after a failure, also reconnects broken servers. */
int ferry_model_reset(struct ferry_model *m, struct ferry_error *err);

#ifdef __cplusplus
}
#endif
#endif
