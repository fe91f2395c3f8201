/* ferry: the tokenizer. A vocabulary read from a GGUF file's tokenizer.ggml.*
 * keys, with the two models llama-family files use: "gpt2" (byte-level BPE
 * with merges, as Llama 3, Qwen 2/3 and GPT-2 ship it) and "llama"
 * (SentencePiece: scored pieces, "▁" for spaces, <0xXX> byte fallback). */
#ifndef FERRY_VOCAB_H
#define FERRY_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_vocab_kind { FERRY_VOCAB_BPE = 1, FERRY_VOCAB_SPM = 2 };

struct ferry_vocab;

/* Reads tokenizer.ggml.{model,pre,tokens,scores,token_type,merges,
 * bos_token_id,eos_token_id,eot_token_id,unknown_token_id,padding_token_id,
 * add_bos_token,add_eos_token}. Copies what it needs: g may be closed
 * afterwards. Unknown or malformed vocabularies are refused with a reason. */
int ferry_vocab_load(const struct ferry_gguf *g, struct ferry_vocab **out, struct ferry_error *err);
void ferry_vocab_free(struct ferry_vocab *v);

enum ferry_vocab_kind ferry_vocab_kind(const struct ferry_vocab *v);
int32_t ferry_vocab_n_tokens(const struct ferry_vocab *v);
int32_t ferry_vocab_bos(const struct ferry_vocab *v); /* -1 when none */
int32_t ferry_vocab_eos(const struct ferry_vocab *v); /* -1 when none */
bool ferry_vocab_add_bos(const struct ferry_vocab *v);
/* End of generation: eos, eot, or another end-of-generation control token. */
bool ferry_vocab_is_eog(const struct ferry_vocab *v, int32_t id);

/* Text to tokens. add_special: prepend BOS (and append EOS) when the
 * vocabulary asks for it; parse_special: control tokens written in the
 * text (e.g. "<|im_start|>") become their ids instead of being split.
 * User-defined tokens are always taken whole, as llama.cpp does; the
 * longest special token claims its occurrences first. Any bytes are
 * accepted (invalid UTF-8 and NULs included: len is the length).
 * *tokens is malloc'd (caller frees), *n_tokens set. */
int ferry_tokenize(const struct ferry_vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t **tokens, size_t *n_tokens, struct ferry_error *err);

/* The bytes one token stands for (byte-level and "▁" decoded, <0xXX> as
 * its byte; control tokens give "" unless special). Writes at most cap
 * bytes (no NUL) and returns the full length, or -1 for an id out of range. */
int ferry_token_to_piece(const struct ferry_vocab *v, int32_t id, bool special, char *buf, size_t cap);

/* Tokens back to text: the pieces concatenated, and for a vocabulary that
 * adds a space prefix (SentencePiece) the space in front of the first
 * token after any BOS dropped, so detokenize(tokenize(text)) == text.
 * special as for ferry_token_to_piece. *text is malloc'd and
 * NUL-terminated; *len excludes the NUL. An id out of range is refused. */
int ferry_detokenize(const struct ferry_vocab *v, const int32_t *tokens, size_t n, bool special, char **text,
                     size_t *len, struct ferry_error *err);

/* Token text as stored in the vocabulary (for diagnostics); NULL if out of range. */
const char *ferry_vocab_token_text(const struct ferry_vocab *v, int32_t id);

#ifdef __cplusplus
}
#endif
#endif
