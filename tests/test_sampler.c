/* Sampler: greedy argmax (ties, NaN, infinities), top_k = 1 as greedy,
 * reproducibility from the seed, empirical frequencies against the
 * softmax over 20000 draws, top-k and top-p cutting the tail. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/sampler.h"
#include "testutil.h"

static struct ferry_sampler *make(float temp, int32_t top_k, float top_p, uint64_t seed) {
    struct ferry_sampler_params p = { temp, top_k, top_p, seed };
    return ferry_sampler_new(&p);
}

static int32_t sample_once(float temp, int32_t top_k, float top_p, const float *logits, int32_t n) {
    struct ferry_sampler *s = make(temp, top_k, top_p, 1);
    int32_t id = ferry_sampler_sample(s, logits, n);
    ferry_sampler_free(s);
    return id;
}

static void test_defaults(void) {
    struct ferry_sampler_params p;
    ferry_sampler_params_defaults(&p);
    CHECK(p.temperature == 0.8f && p.top_k == 40 && p.top_p == 0.95f && p.seed == 0xF3A7, "defaults");
}

static void test_greedy(void) {
    const float a[] = { 1, 3, 2 }, ties[] = { 1, 3, 3, 0 };
    const float nan_first[] = { NAN, 2, NAN, 5, NAN }, nan_mid[] = { 1, NAN, 0 };
    const float all_nan[] = { NAN, NAN }, all_neg_inf[] = { -INFINITY, -INFINITY, -INFINITY };
    const float pos_inf[] = { 1, INFINITY, 3, INFINITY };
    CHECK(sample_once(0, 0, 1, a, 3) == 1, "argmax");
    CHECK(sample_once(-1, 0, 1, ties, 4) == 1, "ties: lowest id");
    CHECK(sample_once(0, 0, 1, nan_first, 5) == 3, "NaN skipped");
    CHECK(sample_once(0, 0, 1, nan_mid, 3) == 0, "NaN never wins");
    CHECK(sample_once(0, 0, 1, all_nan, 2) == -1, "all NaN: no token");
    CHECK(sample_once(0, 0, 1, all_neg_inf, 3) == 0, "all -inf: lowest id");
    CHECK(sample_once(1.0f, 0, 1, all_neg_inf, 3) == 0, "all -inf, sampling: lowest id");
    CHECK(sample_once(1.0f, 0, 0.9f, pos_inf, 4) == 1, "+inf wins when sampling");
    CHECK(sample_once(NAN, 0, 1, a, 3) == 1, "NaN temperature is greedy");
    CHECK(sample_once(0, 0, 1, a, 0) == -1 && sample_once(1, 0, 1, a, -3) == -1, "empty vocabulary");
}

static void test_top_k_one_is_greedy(void) {
    uint64_t rng = 3;
    float logits[1000];
    int bad = 0;
    for (int iter = 0; iter < 200; iter++) {
        for (int i = 0; i < 1000; i++) logits[i] = test_rand_uniform(&rng, -4, 4);
        if (iter % 4 == 0) logits[test_rand_u64(&rng) % 1000] = NAN;
        float temp = test_rand_uniform(&rng, 0.1f, 20.0f);
        struct ferry_sampler *s = make(temp, 1, 1.0f, (uint64_t)iter);
        int32_t id = ferry_sampler_sample(s, logits, 1000);
        ferry_sampler_free(s);
        bad += id != sample_once(0, 0, 1, logits, 1000);
    }
    CHECK(bad == 0, "top_k 1 differs from greedy %d times", bad);
}

static void test_reproducible(void) {
    uint64_t rng = 11;
    float logits[500];
    for (int i = 0; i < 500; i++) logits[i] = test_rand_uniform(&rng, -3, 3);
    struct ferry_sampler *a = make(1.0f, 50, 0.9f, 42), *b = make(1.0f, 50, 0.9f, 42), *c = make(1.0f, 50, 0.9f, 43);
    int same = 0, differ = 0;
    for (int i = 0; i < 1000; i++) {
        int32_t x = ferry_sampler_sample(a, logits, 500), y = ferry_sampler_sample(b, logits, 500);
        int32_t z = ferry_sampler_sample(c, logits, 500);
        same += x == y;
        differ += x != z;
    }
    CHECK(same == 1000, "same seed, same sequence (%d of 1000)", same);
    CHECK(differ > 500, "another seed, another sequence (%d of 1000 differ)", differ);
    ferry_sampler_free(a);
    ferry_sampler_free(b);
    ferry_sampler_free(c);
}

/* Draws n times and compares the frequencies with want[] (probabilities). */
static void check_freq(const char *what, float temp, int32_t top_k, float top_p, const float *logits,
                       const double *want, int32_t nv) {
    enum { N = 20000 };
    int count[64] = { 0 };
    struct ferry_sampler *s = make(temp, top_k, top_p, 2024);
    int out = 0;
    for (int i = 0; i < N; i++) {
        int32_t id = ferry_sampler_sample(s, logits, nv);
        if (id < 0 || id >= nv) out++;
        else count[id]++;
    }
    ferry_sampler_free(s);
    double worst = 0;
    for (int32_t i = 0; i < nv; i++) {
        double d = fabs((double)count[i] / N - want[i]);
        if (d > worst) worst = d;
        if (want[i] == 0 && count[i] != 0) worst = 1; /* excluded tokens never drawn */
    }
    /* 0.015 is more than four standard deviations of a frequency over N draws */
    CHECK(out == 0 && worst < 0.015, "%s: largest frequency error %.4f", what, worst);
}

static void softmax(const float *l, int32_t n, double temp, double *p) {
    double max = -INFINITY, sum = 0;
    for (int32_t i = 0; i < n; i++) if (l[i] > max) max = l[i];
    for (int32_t i = 0; i < n; i++) sum += p[i] = exp((l[i] - max) / temp);
    for (int32_t i = 0; i < n; i++) p[i] /= sum;
}

static void test_frequencies(void) {
    const float l[] = { 0.0f, 1.0f, 2.0f, 0.5f, -1.0f };
    double p[5];
    softmax(l, 5, 0.7, p);
    check_freq("softmax, temperature 0.7", 0.7f, 0, 1.0f, l, p, 5);
    softmax(l, 5, 1.5, p);
    check_freq("softmax, temperature 1.5", 1.5f, 0, 1.0f, l, p, 5);

    /* top_k 2 keeps ids 2 and 1 */
    const float kept[] = { 1.0f, 2.0f };
    double pk[2];
    softmax(kept, 2, 0.9, pk);
    double want_k[5] = { 0, pk[0], pk[1], 0, 0 };
    check_freq("top_k 2", 0.9f, 2, 1.0f, l, want_k, 5);

    /* top_p 0.75 over 0.5 / 0.3 / 0.15 / 0.05 keeps the first two */
    const float lp[] = { logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f) };
    double want_p[4] = { 0, 0.5 / 0.8, 0, 0.3 / 0.8 };
    check_freq("top_p 0.75", 1.0f, 0, 0.75f, lp, want_p, 4);
    /* the cut is made before temperature (llama.cpp's order); the kept two
     * are then reweighted at temperature 2 */
    double a = sqrt(0.5), b = sqrt(0.3);
    double want_pt[4] = { 0, a / (a + b), 0, b / (a + b) };
    check_freq("top_p 0.75, temperature 2", 2.0f, 0, 0.75f, lp, want_pt, 4);
    /* top_p tiny keeps only the best */
    double want_one[4] = { 0, 1, 0, 0 };
    check_freq("top_p 0.01", 1.0f, 0, 0.01f, lp, want_one, 4);
    /* top_k and top_p together: k 3 leaves 0.5 / 0.3 / 0.15, then p 0.7 of those (0.526 + 0.316) */
    double want_kp[4] = { 0, 0.5 / 0.8, 0, 0.3 / 0.8 };
    check_freq("top_k 3, top_p 0.7", 1.0f, 3, 0.7f, lp, want_kp, 4);

    /* NaN and -inf are never drawn */
    const float ln[] = { NAN, 0.0f, -INFINITY, 0.0f, NAN };
    double want_n[5] = { 0, 0.5, 0, 0.5, 0 };
    check_freq("NaN and -inf excluded", 1.0f, 0, 1.0f, ln, want_n, 5);
}

static int cmp_desc(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* Partial selection over a large vocabulary keeps exactly the top k. */
static void test_top_k_large(void) {
    enum { NV = 150000, K = 40 };
    float *logits = malloc(NV * sizeof *logits), *sorted = malloc(NV * sizeof *sorted);
    uint64_t rng = 77;
    for (int i = 0; i < NV; i++) logits[i] = test_rand_uniform(&rng, -10, 10);
    memcpy(sorted, logits, NV * sizeof *sorted);
    qsort(sorted, NV, sizeof *sorted, cmp_desc);
    float kth = sorted[K - 1];
    struct ferry_sampler *s = make(5.0f, K, 1.0f, 9);
    int outside = 0, distinct = 0;
    char *seen = calloc(NV, 1);
    for (int i = 0; i < 3000; i++) {
        int32_t id = ferry_sampler_sample(s, logits, NV);
        if (id < 0 || logits[id] < kth) outside++;
        else if (!seen[id]) { seen[id] = 1; distinct++; }
    }
    CHECK(outside == 0 && distinct == K, "top_k 40 of 150000: %d outside, %d distinct", outside, distinct);
    ferry_sampler_free(s);

    /* equal logits: the lowest ids are the top k */
    for (int i = 0; i < NV; i++) logits[i] = 1.0f;
    s = make(1.0f, 3, 1.0f, 9);
    int bad = 0;
    for (int i = 0; i < 500; i++) bad += ferry_sampler_sample(s, logits, NV) > 2;
    CHECK(bad == 0, "top_k among ties keeps the lowest ids");
    ferry_sampler_free(s);
    /* top_p alone over a large vocabulary: draws stay in the head */
    for (int i = 0; i < NV; i++) logits[i] = i < 10 ? 20.0f : 0.0f;
    s = make(1.0f, 0, 0.99f, 9);
    bad = 0;
    for (int i = 0; i < 500; i++) bad += ferry_sampler_sample(s, logits, NV) >= 10;
    CHECK(bad == 0, "top_p 0.99 drops a tail of tiny probabilities");
    ferry_sampler_free(s);
    free(seen);
    free(logits);
    free(sorted);
}

int main(void) {
    test_defaults();
    test_greedy();
    test_top_k_one_is_greedy();
    test_reproducible();
    test_frequencies();
    test_top_k_large();
    return test_summary();
}
