/* bench_gemm: MUL_MAT throughput in GFLOPS, shape by shape, in the form
 * ggml's `test-backend-ops perf -o MUL_MAT` prints, so the two can be set
 * side by side.
 *
 *   bench_gemm [--threads N] [--time SECONDS] [--filter SUBSTRING]
 *
 * Shapes: the weight matrices of a 1B (2048x2048, 5632x2048) and a 7B
 * (4096x4096, 11008x4096) model as M x K, times n = 1 (decode), 128 and 512
 * (prefill) activation columns, for Q4_0, Q8_0, Q4_K, Q6_K and F16 weights. One
 * weight matrix is reused, so this is the cache-warm case test-backend-ops
 * also measures. Each figure is the best of several timed rounds (the
 * machine may be shared): flops = 2*M*N*K over seconds. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry/engine.h"
#include "ferry/tensor.h"
#include "ferry/types.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static float rand_uniform(float lo, float hi) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * 0x1p-24);
}

static struct ferry_tensor *tensor_new(enum ferry_type type, int64_t ne0, int64_t ne1) {
    struct ferry_tensor *t = calloc(1, sizeof *t);
    const int64_t ne[4] = { ne0, ne1, 1, 1 };
    ferry_tensor_init(t, type, 4, ne, NULL);
    t->data = aligned_alloc(64, (ferry_nbytes(t) + 63) & ~(size_t)63);
    if (!t->data) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    return t;
}

static void tensor_free(struct ferry_tensor *t) {
    free(t->data);
    free(t);
}

/* Random values through the type's quantizer (Q4_K's too): 64 distinct
 * rows, tiled, to keep set-up quick. */
static void fill(struct ferry_tensor *t) {
    const struct ferry_type_traits *tr = ferry_type_traits(t->type);
    const int64_t k = t->ne[0], rows = t->ne[1], trows = rows < 64 ? rows : 64;
    const size_t row_size = ferry_row_size(t->type, k);
    float *x = malloc((size_t)k * sizeof(float));
    for (int64_t r = 0; r < trows; r++) {
        for (int64_t i = 0; i < k; i++) x[i] = rand_uniform(-1.0f, 1.0f);
        if (t->type == FERRY_TYPE_F32) memcpy((char *)t->data + (size_t)r * row_size, x, row_size);
        else tr->from_float(x, (char *)t->data + (size_t)r * row_size, k);
    }
    for (int64_t r = trows; r < rows; r++)
        memcpy((char *)t->data + (size_t)r * row_size, (char *)t->data + (size_t)(r % trows) * row_size, row_size);
    free(x);
}

/* Best seconds per product over rounds lasting min_time in all. */
static double time_case(struct ferry_engine *e, struct ferry_tensor *node, double min_time, bool *ok) {
    struct ferry_error err = { 0 };
    struct ferry_engine_plan *plan = NULL;
    struct ferry_tensor *nodes[1] = { node };
    *ok = ferry_engine_plan(e, nodes, 1, &plan, &err) == FERRY_OK;
    if (!*ok) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        return 0;
    }
    double best = 1e30, spent = 0;
    for (int round = 0; (spent < min_time || round < 3) && round < 1000; round++) {
        const double t0 = now();
        *ok = ferry_engine_run(e, plan, &err) == FERRY_OK;
        const double dt = now() - t0;
        if (!*ok) break;
        spent += dt;
        if (dt < best) best = dt;
    }
    ferry_engine_plan_free(plan);
    return best;
}

int main(int argc, char **argv) {
    int threads = 2;
    double min_time = 0.5;
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--time") && i + 1 < argc) min_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else {
            fprintf(stderr, "usage: bench_gemm [--threads N] [--time SECONDS] [--filter SUBSTRING]\n");
            return 2;
        }
    }
    struct ferry_engine *e = ferry_engine_create(threads < 1 ? 1 : threads);
    if (!e) return 1;
    printf("bench_gemm: %d threads, %s kernels\n", ferry_engine_n_threads(e), ferry_engine_simd_name());
    printf("%-6s %6s %6s %5s %10s %9s\n", "type", "M", "K", "N", "us", "GFLOPS");
    const enum ferry_type types[] = { FERRY_TYPE_Q4_0, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K, FERRY_TYPE_F16 };
    const int64_t shapes[][2] = { { 2048, 2048 }, { 5632, 2048 }, { 4096, 4096 }, { 11008, 4096 } }; /* M, K */
    const int64_t ns[] = { 1, 128, 512 };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t m = shapes[si][0], k = shapes[si][1];
            char name[64];
            snprintf(name, sizeof name, "%s %lld %lld", ferry_type_name(types[ti]), (long long)m, (long long)k);
            if (filter && !strstr(name, filter)) continue;
            struct ferry_tensor *a = tensor_new(types[ti], k, m);
            fill(a);
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                const int64_t n = ns[ni];
                struct ferry_tensor *b = tensor_new(FERRY_TYPE_F32, k, n), *d = tensor_new(FERRY_TYPE_F32, m, n);
                fill(b);
                d->op = FERRY_OP_MUL_MAT;
                d->flags = FERRY_FLAG_COMPUTE;
                d->src[0] = a;
                d->src[1] = b;
                bool ok;
                const double s = time_case(e, d, min_time, &ok);
                if (ok)
                    printf("%-6s %6lld %6lld %5lld %10.1f %9.1f\n", ferry_type_name(types[ti]), (long long)m,
                           (long long)k, (long long)n, s * 1e6, 2.0 * (double)m * (double)n * (double)k / s / 1e9);
                fflush(stdout);
                tensor_free(b);
                tensor_free(d);
            }
            tensor_free(a);
        }
    ferry_engine_destroy(e);
    return 0;
}
