/* The generator's vocabulary: byte-level BPE ("gpt2") or SentencePiece
 * ("llama") trained on a small built-in English text (gen_vocab.c). */
#ifndef FERRY_GEN_VOCAB_H
#define FERRY_GEN_VOCAB_H

#include <stdint.h>

#include "ferry/error.h"
#include "ferry/gguf.h"

#define FERRY_GEN_MIN_VOCAB 300

/* Adds the tokenizer.ggml.* keys of a vocabulary of kind "gpt2" or "llama"
 * with exactly n_vocab tokens (>= FERRY_GEN_MIN_VOCAB). Deterministic. */
int ferry_gen_vocab_add(struct ferry_gguf_writer *w, const char *kind, int32_t n_vocab, struct ferry_error *err);

/* Metadata bytes the vocabulary adds per token, roughly (for size targets). */
#define FERRY_GEN_VOCAB_BYTES_PER_TOKEN 28

#endif
