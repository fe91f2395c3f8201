/* ferry: a generator of llama-family GGUF models with random weights and a
 * small trained vocabulary, for tests, demos and benchmarks. The files are
 * ordinary GGUF v3 models (llama.cpp loads them); their text is nonsense. */
#ifndef FERRY_GEN_H
#define FERRY_GEN_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_gen_params {
    const char *arch;       /* "llama" (default), "mistral" (a llama-architecture
                               file with Mistral 7B's rope base, as real ones are),
                               "qwen2" (q/k/v biases), "qwen3" (q/k norms) */
    const char *vocab;      /* "gpt2" (byte-level BPE, default) or "llama" (SentencePiece) */
    int32_t n_vocab;        /* >= 300 */
    int32_t n_embd;         /* multiple of n_head */
    int32_t n_layer;
    int32_t n_head, n_head_kv; /* n_head multiple of n_head_kv */
    int32_t n_ff;
    int32_t n_ctx;          /* context_length written to the file */
    enum ferry_type wtype;  /* 2-D weights: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K */
    bool tied_output;       /* no output.weight: the head reuses token_embd */
    uint64_t seed;
    /* Called as tensor data is written (bytes done of total, the file adds
     * its metadata); a non-zero return stops: ferry_gen_model then removes
     * the partial file and fails. NULL: none. */
    int (*progress)(void *ud, uint64_t done, uint64_t total);
    void *progress_ud;
};

/* A tiny default: llama, gpt2 vocab 512, n_embd 64, 2 layers, 4/2 heads,
 * n_ff 160, n_ctx 512, Q8_0, untied, seed 1. */
void ferry_gen_params_defaults(struct ferry_gen_params *p);
/* Picks n_vocab/n_embd/n_layer/heads/n_ff so the file is about
 * target_bytes with p->wtype (other fields kept). */
int ferry_gen_params_for_size(struct ferry_gen_params *p, uint64_t target_bytes, struct ferry_error *err);
/* Writes the model to path. Same params, same bytes. Tensors are generated
 * and written one chunk at a time, so memory stays small for any size. */
int ferry_gen_model(const struct ferry_gen_params *p, const char *path, struct ferry_error *err);

/* Checks params the way ferry_gen_model does (shapes, head counts, block
 * sizes of wtype, vocabulary size), with the reason in err. */
int ferry_gen_params_check(const struct ferry_gen_params *p, struct ferry_error *err);
/* Parameter count of the model p describes. */
uint64_t ferry_gen_n_params(const struct ferry_gen_params *p);
/* Tensor data bytes of that model (the file adds its metadata). */
uint64_t ferry_gen_data_bytes(const struct ferry_gen_params *p);
/* llama.cpp's general.file_type for a wtype (e.g. Q4_K -> 15, "Q4_K_M"); -1
 * for a type the generator does not write. */
int ferry_gen_file_type(enum ferry_type wtype);

#ifdef __cplusplus
}
#endif
#endif
