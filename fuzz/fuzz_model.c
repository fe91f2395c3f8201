/* libFuzzer target: a model file's hyper-parameters, tensor table and
 * vocabulary. Whatever llama_read_hparams and ferry_vocab_load accept must
 * be usable: the vocabulary tokenizes text and decodes every token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/gguf.h"
#include "ferry/vocab.h"
#include "model/llama.h"

static const char TEXT[] = "Hello world's 123 <|end_of_text|> caf\xc3\xa9 \xe2\x96\x81 x\ty\n\n  z";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct ferry_gguf *g = NULL;
    struct ferry_error err;
    if (ferry_gguf_parse(data, size, &g, &err) != FERRY_OK) return 0;
    struct llama_hparams hp;
    (void)llama_read_hparams(g, &hp, &err);
    struct ferry_vocab *v = NULL;
    if (ferry_vocab_load(g, &v, &err) == FERRY_OK) {
        int32_t *toks = NULL;
        size_t n = 0;
        for (int special = 0; special < 2; special++) {
            if (ferry_tokenize(v, TEXT, sizeof TEXT - 1, true, special, &toks, &n, &err) == FERRY_OK) {
                char buf[64];
                for (size_t i = 0; i < n; i++) (void)ferry_token_to_piece(v, toks[i], special, buf, sizeof buf);
            }
            free(toks);
            toks = NULL;
        }
        int32_t nt = ferry_vocab_n_tokens(v);
        char buf[16];
        for (int32_t i = 0; i < nt && i < 4096; i++) (void)ferry_token_to_piece(v, i, true, buf, sizeof buf);
        ferry_vocab_free(v);
    }
    ferry_gguf_close(g);
    return 0;
}
