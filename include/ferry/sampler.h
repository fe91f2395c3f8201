/* ferry: choosing the next token from logits: greedy, or temperature with
 * top-k and top-p (nucleus) filtering, from a seeded generator so a run
 * can be repeated exactly. */
#ifndef FERRY_SAMPLER_H
#define FERRY_SAMPLER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_sampler_params {
    float temperature; /* <= 0: greedy (argmax, lowest id on ties) */
    int32_t top_k;     /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
};

/* temperature 0.8, top_k 40, top_p 0.95, seed 0xF3A7. */
void ferry_sampler_params_defaults(struct ferry_sampler_params *p);

struct ferry_sampler;

struct ferry_sampler *ferry_sampler_new(const struct ferry_sampler_params *p); /* NULL: no memory */
void ferry_sampler_free(struct ferry_sampler *s);
/* Picks a token id in [0, n_vocab); logits are not modified. Returns -1
 * when n_vocab <= 0, every logit is NaN, or memory runs out. NaN logits
 * never win. Order as llama.cpp's default chain: top-k, top-p (on the
 * untempered probabilities), temperature, one draw. */
int32_t ferry_sampler_sample(struct ferry_sampler *s, const float *logits, int32_t n_vocab);

#ifdef __cplusplus
}
#endif
#endif
