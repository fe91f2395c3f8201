/* Next-token sampling. Filters run in llama.cpp's default order: top-k,
 * then top-p measured on the untempered distribution, then temperature
 * over what is left, then one draw from xoshiro256** seeded through
 * splitmix64. NaN logits are never candidates; -inf ones have probability
 * zero; a +inf logit wins outright (lowest id among several). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/sampler.h"

struct cand {
    float logit;
    int32_t id;
};

struct ferry_sampler {
    struct ferry_sampler_params p;
    uint64_t s[4];
    struct cand *c;
    double *w;
    size_t cap;
};

void ferry_sampler_params_defaults(struct ferry_sampler_params *p) {
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->seed = 0xF3A7;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(struct ferry_sampler *s) {
    uint64_t *q = s->s;
    uint64_t r = rotl(q[1] * 5, 7) * 9, t = q[1] << 17;
    q[2] ^= q[0];
    q[3] ^= q[1];
    q[1] ^= q[2];
    q[0] ^= q[3];
    q[2] ^= t;
    q[3] = rotl(q[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_unit(struct ferry_sampler *s) { return (double)(next_u64(s) >> 11) * 0x1p-53; }

struct ferry_sampler *ferry_sampler_new(const struct ferry_sampler_params *p) {
    struct ferry_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix64(&x); /* never all zero */
    return s;
}

void ferry_sampler_free(struct ferry_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->w);
    free(s);
}

/* Argmax over non-NaN logits, the lowest id on ties; -1 if all are NaN. */
static int32_t argmax(const float *logits, int32_t n) {
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++) {
        if (isnan(logits[i])) continue;
        if (best < 0 || logits[i] > logits[best]) best = i;
    }
    return best;
}

/* Total order: higher logit first, then lower id, so every step is
 * deterministic whatever the input order. */
static bool better(const struct cand *a, const struct cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *x, const void *y) {
    const struct cand *a = x, *b = y;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Keeps the k best of c[0..n) in c[0..k) with a min-heap of size k:
 * O(n log k), no full sort of the vocabulary. */
static void select_top_k(struct cand *c, size_t n, size_t k) {
    /* heap over c[0..k): the root is the worst kept candidate */
    for (size_t i = 0; i < n; i++) {
        struct cand x = c[i];
        size_t j;
        if (i < k) { /* sift up */
            j = i;
            while (j > 0 && better(&c[(j - 1) / 2], &x)) {
                c[j] = c[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            c[j] = x;
            continue;
        }
        if (!better(&x, &c[0])) continue;
        j = 0; /* replace the root, sift down */
        for (;;) {
            size_t l = 2 * j + 1, m = j;
            const struct cand *worst = &x;
            if (l < k && better(worst, &c[l])) { m = l; worst = &c[l]; }
            if (l + 1 < k && better(worst, &c[l + 1])) m = l + 1;
            if (m == j) break;
            c[j] = c[m];
            j = m;
        }
        c[j] = x;
    }
}

static bool reserve(struct ferry_sampler *s, size_t n) {
    if (n <= s->cap) return true;
    struct cand *c = realloc(s->c, n * sizeof *c);
    if (!c) return false;
    s->c = c;
    double *w = realloc(s->w, n * sizeof *w);
    if (!w) return false;
    s->w = w;
    s->cap = n;
    return true;
}

/* Smallest prefix of the sorted candidates whose probability reaches
 * top_p (at least one). */
static size_t apply_top_p(const struct cand *c, size_t n, double top_p, double *w) {
    double max = c[0].logit, sum = 0;
    for (size_t i = 0; i < n; i++) sum += w[i] = exp((double)c[i].logit - max);
    double acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += w[i];
        if (acc >= top_p * sum) return i + 1;
    }
    return n;
}

int32_t ferry_sampler_sample(struct ferry_sampler *s, const float *logits, int32_t n_vocab) {
    if (n_vocab <= 0 || !logits) return -1;
    const struct ferry_sampler_params *p = &s->p;
    int32_t best = argmax(logits, n_vocab);
    if (!(p->temperature > 0) || best < 0 || p->top_k == 1) return best;
    float max = logits[best];
    if (isinf(max)) return best; /* +inf wins; all -inf: nothing to weigh */
    if (!reserve(s, (size_t)n_vocab)) return -1;
    size_t n = 0;
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > -INFINITY) s->c[n++] = (struct cand){ logits[i], i };
    bool sorted = false;
    if (p->top_k > 0 && (size_t)p->top_k < n) {
        select_top_k(s->c, n, (size_t)p->top_k);
        n = (size_t)p->top_k;
        qsort(s->c, n, sizeof *s->c, cmp_cand); /* k is small: a fixed order for the draw */
        sorted = true;
    }
    if (p->top_p < 1.0f) {
        if (!sorted) qsort(s->c, n, sizeof *s->c, cmp_cand);
        n = apply_top_p(s->c, n, p->top_p > 0 ? (double)p->top_p : 0.0, s->w);
    }
    double total = 0, t = p->temperature;
    for (size_t i = 0; i < n; i++) total += s->w[i] = exp(((double)s->c[i].logit - max) / t);
    double r = next_unit(s) * total;
    for (size_t i = 0; i < n; i++) {
        r -= s->w[i];
        if (r < 0) return s->c[i].id;
    }
    for (size_t i = n; i-- > 0;) /* rounding left r >= 0: the last candidate with weight */
        if (s->w[i] > 0) return s->c[i].id;
    return s->c[0].id;
}
