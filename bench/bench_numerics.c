/* bench_numerics: how far one server's MUL_MAT results are from another's,
 * element by element, on the shapes of real models.
 *
 *   bench_numerics --ref HOST:PORT --test HOST:PORT [--m ROWS] [--seed N]
 *
 * Both servers get the same weights (quantized once here, with ferry's
 * quantizers, which write ggml's bytes) and the same activations, through
 * ferry's client; each computes MUL_MAT and the outputs are compared. With
 * ggml's rpc-server as --ref (it runs ggml's CPU backend) and `ferry serve`
 * as --test, this is the measure behind the README's statement of how close
 * ferry's engine is to ggml's (scripts/ggml-numerics.sh runs both). Per
 * case it prints the share of elements that are not bit-identical, the
 * median and largest difference relative to the element (over elements at
 * least 1e-3 of the output's RMS, so that cancellations near zero do not
 * dominate),
 * and the NMSE that ggml's test-backend-ops judges MUL_MAT by (it accepts
 * up to 5e-4). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/client.h"
#include "ferry/tensor.h"
#include "ferry/types.h"

struct side {
    const char *endpoint;
    struct ferry_client *c;
    struct ferry_remote_buffer buf;
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float uniform(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static int connect_side(struct side *s, struct ferry_error *err) {
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    o.response_timeout_ms = 120000;
    return ferry_client_connect(s->endpoint, &o, &s->c, err);
}

/* MUL_MAT of w [K, M] (type) by x [K, N] on one server; out gets M*N floats. */
static int run_case(struct side *s, enum ferry_type type, int64_t K, int64_t M, int64_t N, const void *wbytes,
                    size_t wsize, const float *x, float *out, struct ferry_error *err) {
    struct ferry_tensor w, xt, mm;
    int64_t nw[2] = { K, M }, nx[2] = { K, N }, no[2] = { M, N };
    ferry_tensor_init(&w, type, 2, nw, NULL);
    ferry_tensor_init(&xt, FERRY_TYPE_F32, 2, nx, NULL);
    ferry_tensor_init(&mm, FERRY_TYPE_F32, 2, no, NULL);
    strcpy(w.name, "w"), strcpy(xt.name, "x"), strcpy(mm.name, "mm");
    mm.op = FERRY_OP_MUL_MAT, mm.src[0] = &w, mm.src[1] = &xt;
    mm.flags = FERRY_FLAG_COMPUTE | FERRY_FLAG_OUTPUT;
    const uint64_t xoff = (wsize + 255) / 256 * 256, xsize = (uint64_t)K * N * 4;
    const uint64_t ooff = xoff + (xsize + 255) / 256 * 256, osize = (uint64_t)M * N * 4;
    int rc = ferry_client_alloc_buffer(s->c, 0, ooff + osize + 256, &s->buf, err);
    if (rc) return rc;
    rc = ferry_remote_tensor_place(&w, &s->buf, 0, err);
    if (!rc) rc = ferry_remote_tensor_place(&xt, &s->buf, xoff, err);
    if (!rc) rc = ferry_remote_tensor_place(&mm, &s->buf, ooff, err);
    if (!rc) rc = ferry_client_set_tensor(s->c, &w, 0, wbytes, wsize, err);
    if (!rc) rc = ferry_client_set_tensor(s->c, &xt, 0, x, xsize, err);
    struct ferry_tensor *nodes[1] = { &mm };
    if (!rc) rc = ferry_client_graph_compute(s->c, 0, nodes, 1, err);
    if (!rc) rc = ferry_client_get_tensor(s->c, &mm, 0, out, osize, err);
    struct ferry_error ferr;
    ferry_client_free_buffer(s->c, &s->buf, &ferr);
    return rc;
}

struct diff {
    double differ, median_rel, max_rel, nmse;
};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct diff compare(const float *ref, const float *got, size_t n) {
    double ss = 0, se = 0;
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) {
        ss += (double)ref[i] * ref[i];
        se += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        differ += memcmp(&ref[i], &got[i], sizeof(float)) != 0;
    }
    const double floor = 1e-3 * sqrt(ss / (double)n);
    double *rel = malloc(sizeof(double) * n);
    size_t m = 0;
    for (size_t i = 0; rel && i < n; i++)
        if (fabs(ref[i]) >= floor) rel[m++] = fabs((double)got[i] - ref[i]) / fabs(ref[i]);
    double median = 0, max = 0;
    if (m) {
        qsort(rel, m, sizeof(double), cmp_double);
        median = rel[m / 2], max = rel[m - 1];
    }
    free(rel);
    return (struct diff){ (double)differ / (double)n, median, max, ss > 0 ? se / ss : 0 };
}

int main(int argc, char **argv) {
    struct side ref = { 0 }, test = { 0 };
    int64_t M = 256;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ref") && v) ref.endpoint = v, i++;
        else if (!strcmp(a, "--test") && v) test.endpoint = v, i++;
        else if (!strcmp(a, "--m") && v) M = atoll(v), i++;
        else if (!strcmp(a, "--seed") && v) rng = strtoull(v, NULL, 0) | 1, i++;
        else {
            fprintf(stderr, "usage: bench_numerics --ref HOST:PORT --test HOST:PORT [--m ROWS] [--seed N]\n");
            return 2;
        }
    }
    if (!ref.endpoint || !test.endpoint || M < 1 || M > 65536) {
        fprintf(stderr, "bench_numerics: --ref and --test are required, --m in 1..65536\n");
        return 2;
    }
    struct ferry_error err;
    if (connect_side(&ref, &err) || connect_side(&test, &err)) {
        fprintf(stderr, "bench_numerics: %s\n", err.msg);
        return 1;
    }
    static const enum ferry_type TYPES[] = { FERRY_TYPE_F32, FERRY_TYPE_F16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0,
                                             FERRY_TYPE_Q4_K };
    static const int64_t KS[] = { 256, 2048, 4096, 8192 }, NS[] = { 1, 32 };
    printf("MUL_MAT, %" PRId64 " weight rows: %s (test) against %s (reference)\n\n", M, test.endpoint, ref.endpoint);
    printf("| type | K | N | elements not bit-identical | relative difference, median | max | NMSE |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    int status = 0;
    double worst_rel = 0, worst_nmse = 0;
    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++)
        for (size_t k = 0; k < sizeof KS / sizeof KS[0]; k++)
            for (size_t n = 0; n < sizeof NS / sizeof NS[0]; n++) {
                const enum ferry_type type = TYPES[t];
                const int64_t K = KS[k], N = NS[n];
                const struct ferry_type_traits *tr = ferry_type_traits(type);
                const size_t wsize = (size_t)(K / tr->blck_size) * tr->type_size * (size_t)M;
                float *wf = malloc(sizeof(float) * (size_t)(K * M)), *x = malloc(sizeof(float) * (size_t)(K * N));
                float *a = malloc(sizeof(float) * (size_t)(M * N)), *b = malloc(sizeof(float) * (size_t)(M * N));
                void *wq = malloc(wsize);
                for (int64_t i = 0; i < K * M; i++) wf[i] = uniform();
                for (int64_t i = 0; i < K * N; i++) x[i] = uniform();
                for (int64_t r = 0; r < M; r++)
                    tr->from_float(wf + r * K, (char *)wq + (size_t)r * (wsize / (size_t)M), K);
                if (run_case(&ref, type, K, M, N, wq, wsize, x, a, &err) ||
                    run_case(&test, type, K, M, N, wq, wsize, x, b, &err)) {
                    fprintf(stderr, "bench_numerics: %s K=%" PRId64 " N=%" PRId64 ": %s\n", tr->name, K, N, err.msg);
                    status = 1;
                } else {
                    struct diff d = compare(a, b, (size_t)(M * N));
                    printf("| %s | %" PRId64 " | %" PRId64 " | %.1f %% | %.2g | %.2g | %.2g |\n", tr->name, K, N,
                           100 * d.differ, d.median_rel, d.max_rel, d.nmse);
                    if (d.max_rel > worst_rel) worst_rel = d.max_rel;
                    if (d.nmse > worst_nmse) worst_nmse = d.nmse;
                }
                free(wf), free(x), free(a), free(b), free(wq);
                fflush(stdout);
            }
    printf("\nworst: max relative difference %.2g, NMSE %.2g (test-backend-ops accepts NMSE up to 5e-4)\n",
           worst_rel, worst_nmse);
    ferry_client_close(ref.c);
    ferry_client_close(test.c);
    return status;
}
