/* The llama family inside ferry: hyper-parameters and weights read from a
 * GGUF file, and the graph of a range of layers on one node. */
#ifndef FERRY_MODEL_LLAMA_H
#define FERRY_MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/gguf.h"
#include "ferry/tensor.h"
#include "model/gbuild.h"

enum llama_arch { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3 };

struct llama_hparams {
    char arch_name[16];
    enum llama_arch arch;
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train;
    int32_t head_dim, n_rot;
    float eps, rope_base, rope_scale;
    int rope_mode; /* 0 normal (llama), 2 neox (qwen) */
    bool has_bias, has_qk_norm, tied_output, has_rope_freqs;
};

/* Reads and checks the hyper-parameters, and that every tensor the
 * architecture needs is present with the right shape and a usable type. */
int llama_read_hparams(const struct ferry_gguf *g, struct llama_hparams *hp, struct ferry_error *err);

/* Tensors of one layer (NULL where the architecture has none). */
enum llama_layer_tensor {
    LT_ATTN_NORM, LT_WQ, LT_WK, LT_WV, LT_WO, LT_BQ, LT_BK, LT_BV, LT_Q_NORM, LT_K_NORM,
    LT_FFN_NORM, LT_GATE, LT_UP, LT_DOWN, LT_COUNT
};
/* "blk.%d.<suffix>" of each; *required says whether the file must have it. */
const char *llama_layer_tensor_suffix(enum llama_layer_tensor which);
bool llama_layer_tensor_needed(const struct llama_hparams *hp, enum llama_layer_tensor which);

struct llama_layer {
    struct ferry_tensor *w[LT_COUNT];
    struct ferry_tensor k_cache, v_cache; /* F16 [n_embd_kv, n_ctx] */
};

/* What one node's graph covers, and the weights it holds. */
struct llama_stage_weights {
    const struct llama_hparams *hp;
    int layer_first, layer_count;
    bool embed, output;
    struct ferry_tensor *tok_embd;              /* embed (and output when tied) */
    struct ferry_tensor *out_norm, *w_output;   /* output head */
    struct ferry_tensor *rope_freqs;            /* optional */
    struct llama_layer *layers;                 /* layer_count of them */
};

/* The ubatch a graph is built for. */
struct llama_batch_shape {
    int n_tokens; /* T */
    int n_kv;     /* KV cells attended, a multiple of 256 */
    int n_out;    /* rows of logits (the last n_out tokens) */
};

/* Inputs of a stage graph, packed at the start of its compute memory so
 * one upload sets them all. */
struct llama_inputs {
    struct ferry_tensor *blob;   /* I8 view over every input below */
    struct ferry_tensor *tokens; /* I32 [T] (embed) */
    struct ferry_tensor *embd;   /* F32 [n_embd, T] (no embed) */
    struct ferry_tensor *pos;    /* I32 [T] (layers) */
    struct ferry_tensor *kv_idx; /* I64 [T] (layers) */
    struct ferry_tensor *mask;   /* F16 [n_kv, T] (layers) */
    struct ferry_tensor *out_ids;/* I32 [n_out] (output) */
    size_t blob_bytes;
};

/* Builds the stage's graph into g; *out is the hidden state [n_embd, T] or
 * the logits [n_vocab, n_out]. */
int llama_build_stage(struct gbuild *g, const struct llama_stage_weights *sw,
                      const struct llama_batch_shape *bs, struct llama_inputs *in,
                      struct ferry_tensor **out, struct ferry_error *err);

/* Tensors one stage graph needs, at most (for sizing the pool). */
int llama_stage_max_tensors(const struct llama_stage_weights *sw);

#endif
