/* bench_ops: the hot ops of LLM decode, timed through the engine, against
 * the machine's own memory read bandwidth measured in the same run.
 *
 *   bench_ops [--threads N] [--quick] [--json] [--no-huge] [--filter SUBSTRING]
 *
 * Decode is memory-bound: a matrix x vector product reads every weight byte
 * once, so its speed is best judged as a fraction of what the memory system
 * can deliver. The bench first measures that (N threads summing a buffer far
 * larger than the last-level cache, best of several passes), then runs each
 * op as a graph of nodes whose large inputs rotate through enough copies to
 * overflow the cache ("cold": bytes really come from DRAM), and again with
 * one copy repeated ("hot": as cache-resident as the size allows). Each
 * figure is printed as GB/s of input bytes read and as a ratio to the
 * measured bandwidth. The machine may be shared, so every timing round of
 * a case is paired with a bandwidth pass and each side keeps its best: the
 * ratios compare best with best from the same stretch of time. */
#include <emmintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ferry/engine.h"
#include "ferry/tensor.h"
#include "ferry/types.h"

#define MAX_COPIES 64
#define MAX_SRC 5

static struct {
    int threads;
    bool quick, json, huge;
    const char *filter;
    size_t llc;        /* last-level cache bytes */
    size_t rotate;     /* bytes a cold rotation must span */
    double min_time;   /* seconds of measurement per figure */
    double bandwidth;  /* measured, bytes/s */
} opt = { .threads = 2, .huge = true };

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

/* Large buffers are 2 MiB aligned and asked to use huge pages (as a server
 * would for its weights), for the bandwidth buffer and the tensors alike;
 * --no-huge leaves the kernel's default. */
static void *xalloc(size_t n) {
    const size_t huge = (size_t)2 << 20;
    const bool big = n >= huge;
    const size_t align = big ? huge : 64;
    void *p = aligned_alloc(align, (n + align - 1) & ~(align - 1));
    if (!p) {
        fprintf(stderr, "bench_ops: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    if (big && opt.huge) madvise(p, (n + align - 1) & ~(align - 1), MADV_HUGEPAGE);
    return p;
}

/* ---- memory read bandwidth ----------------------------------------------------- */

struct bw_worker {
    pthread_t thread;
    pthread_barrier_t *barrier;
    const char *p;
    size_t n;
    int passes;
    uint64_t sink;
    double start, end; /* of the current pass, taken by the worker itself */
};

/* Sums 64 bytes per step in four independent SSE2 accumulators: far more
 * load throughput than DRAM offers, so the memory system is the limit. */
static uint64_t read_sum(const char *p, size_t n) {
    __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm_add_epi64(a0, _mm_load_si128((const __m128i *)(p + i)));
        a1 = _mm_add_epi64(a1, _mm_load_si128((const __m128i *)(p + i + 16)));
        a2 = _mm_add_epi64(a2, _mm_load_si128((const __m128i *)(p + i + 32)));
        a3 = _mm_add_epi64(a3, _mm_load_si128((const __m128i *)(p + i + 48)));
    }
    const __m128i s = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
    uint64_t out[2];
    _mm_storeu_si128((__m128i *)out, s);
    return out[0] + out[1];
}

static void *bw_main(void *arg) {
    struct bw_worker *w = arg;
    for (int k = 0; k < w->passes; k++) {
        pthread_barrier_wait(w->barrier);
        w->start = now();
        w->sink += read_sum(w->p, w->n);
        w->end = now();
        pthread_barrier_wait(w->barrier);
    }
    return NULL;
}

/* The buffer the bandwidth passes read: allocated and written once, far
 * larger than the last-level cache, so a pass finds none of it cached (the
 * tail the previous pass left in cache is evicted before it is reached). */
static char *bw_buf;
static size_t bw_size;

static void bandwidth_buffer_init(size_t bytes) {
    bw_buf = xalloc(bytes);
    bw_size = bytes;
    for (size_t i = 0; i < bytes; i++) bw_buf[i] = (char)(i * 131);
}

/* Best of several passes of nth threads, each reading its slice. */
static double measure_bandwidth(int nth, int passes) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)nth + 1);
    struct bw_worker *w = calloc((size_t)nth, sizeof *w);
    const size_t slice = bw_size / (size_t)nth & ~(size_t)63;
    for (int t = 0; t < nth; t++) {
        w[t] = (struct bw_worker){ .barrier = &barrier, .p = bw_buf + (size_t)t * slice, .n = slice, .passes = passes };
        pthread_create(&w[t].thread, NULL, bw_main, &w[t]);
    }
    /* A pass lasts from the first reader's start to the last one's end, as
     * the readers see it: the waiting main thread may be woken late. */
    double best = 0;
    for (int k = 0; k < passes; k++) {
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier);
        double start = w[0].start, end = w[0].end;
        for (int t = 1; t < nth; t++) {
            if (w[t].start < start) start = w[t].start;
            if (w[t].end > end) end = w[t].end;
        }
        const double bw = (double)(slice * (size_t)nth) / (end - start);
        if (bw > best) best = bw;
    }
    uint64_t sink = 0;
    for (int t = 0; t < nth; t++) {
        pthread_join(w[t].thread, NULL);
        sink += w[t].sink;
    }
    if (sink == 42) fputc(' ', stderr); /* keep the sums alive */
    pthread_barrier_destroy(&barrier);
    free(w);
    return best;
}

/* ---- test data ---------------------------------------------------------------- */

/* A tensor with its own memory. */
static struct ferry_tensor *tensor_new(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    struct ferry_tensor *t = calloc(1, sizeof *t);
    const int64_t ne[4] = { ne0, ne1, ne2, ne3 };
    ferry_tensor_init(t, type, 4, ne, NULL);
    t->data = xalloc(ferry_nbytes(t));
    return t;
}

static void tensor_free(struct ferry_tensor *t) {
    if (!t) return;
    free(t->data);
    free(t);
}

static void write_half(uint8_t *p, float v) {
    const uint16_t h = ferry_fp32_to_fp16(v);
    memcpy(p, &h, 2);
}

/* Realistic content without quantizing hundreds of megabytes: a 64-row
 * template, from random values through the type's quantizer when it has
 * one, else random bytes with sane f16 scales; then tiled. */
static void fill_matrix(struct ferry_tensor *t, float lo, float hi) {
    const struct ferry_type_traits *tr = ferry_type_traits(t->type);
    const int64_t k = t->ne[0], rows = ferry_nrows(t);
    const size_t row_size = ferry_row_size(t->type, k);
    const int64_t trows = rows < 64 ? rows : 64;
    float *x = xalloc((size_t)k * sizeof(float));
    uint8_t *base = t->data;
    for (int64_t r = 0; r < trows; r++) {
        uint8_t *row = base + (size_t)r * row_size;
        for (int64_t i = 0; i < k; i++) x[i] = rand_uniform(lo, hi);
        if (tr->from_float) {
            tr->from_float(x, row, k);
            continue;
        }
        for (size_t i = 0; i < row_size; i++) row[i] = (uint8_t)(rand_uniform(0, 256));
        for (int64_t b = 0; b < k / tr->blck_size; b++) {
            uint8_t *blk = row + (size_t)b * tr->type_size;
            switch (t->type) {
            case FERRY_TYPE_Q4_K: case FERRY_TYPE_Q5_K: write_half(blk, 0.01f); write_half(blk + 2, 0.005f); break;
            case FERRY_TYPE_Q6_K: write_half(blk + 208, 0.01f); break;
            case FERRY_TYPE_Q2_K: write_half(blk + 80, 0.01f); write_half(blk + 82, 0.005f); break;
            case FERRY_TYPE_Q3_K: write_half(blk + 108, 0.01f); break;
            default: break;
            }
        }
    }
    for (int64_t r = trows; r < rows; r++)
        memcpy(base + (size_t)r * row_size, base + (size_t)(r % trows) * row_size, row_size);
    free(x);
}

static struct ferry_tensor *clone_tensor(const struct ferry_tensor *t) {
    struct ferry_tensor *c = malloc(sizeof *c);
    *c = *t;
    c->data = xalloc(ferry_nbytes(t));
    memcpy(c->data, t->data, ferry_nbytes(t));
    return c;
}

/* ---- one benchmark case ----------------------------------------------------------- */

/* A node template whose sources listed in `big` are the bytes an op streams;
 * copies of those rotate to defeat the cache. */
struct bench_case {
    char op[24], type[12], shape[40];
    struct ferry_tensor node;
    struct ferry_tensor *src[MAX_SRC]; /* owned originals */
    bool big[MAX_SRC];
    size_t bytes; /* bytes read per op (the big sources) */
};

static void case_free(struct bench_case *c) {
    free(c->node.data);
    for (int i = 0; i < MAX_SRC; i++) tensor_free(c->src[i]);
}

static void set_output(struct bench_case *c, enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1,
                       int64_t ne2, int64_t ne3) {
    const int64_t ne[4] = { ne0, ne1, ne2, ne3 };
    ferry_tensor_init(&c->node, type, 4, ne, NULL);
    c->node.data = xalloc(ferry_nbytes(&c->node));
    memset(c->node.data, 0, ferry_nbytes(&c->node));
    c->node.op = op;
    c->node.flags = FERRY_FLAG_COMPUTE;
}

static void add_src(struct bench_case *c, int slot, struct ferry_tensor *t, bool big) {
    c->src[slot] = t;
    c->node.src[slot] = t;
    c->big[slot] = big;
    if (big) c->bytes += ferry_nbytes(t);
}

struct result {
    bool ok;
    char why[256];
    double cold_s, hot_s; /* seconds per op */
    double bandwidth;     /* best bandwidth pass interleaved with this case's rounds, bytes/s */
    int copies;
};

/* Runs the graph `nodes` repeatedly for about opt.min_time; best seconds per
 * node. Each round is preceded by a memory bandwidth pass, so that the op
 * and the reference get their best moments out of the same stretch of time
 * on a machine that may be shared; the best pass goes to *bw. */
static double time_graph(struct ferry_engine *e, struct ferry_tensor **nodes, int n, struct ferry_error *err,
                         bool *ok, double *bw) {
    double best = INFINITY, spent = 0;
    *ok = ferry_engine_compute(e, nodes, n, err) == FERRY_OK; /* warm-up */
    for (int round = 0; *ok && (round < 3 || spent < opt.min_time); round++) {
        const double b = measure_bandwidth(opt.threads, 1);
        if (b > *bw) *bw = b;
        const double t0 = now();
        *ok = ferry_engine_compute(e, nodes, n, err) == FERRY_OK;
        const double dt = now() - t0;
        spent += dt;
        if (dt / n < best) best = dt / n;
        if (round >= 200) break;
    }
    return best;
}

static struct result run_case(struct ferry_engine *e, struct bench_case *c) {
    struct result r = { 0 };
    struct ferry_error err = { 0 };
    if (ferry_engine_check_node(&c->node, &err) != FERRY_OK) {
        snprintf(r.why, sizeof r.why, "%s", err.msg);
        return r;
    }
    /* cold: enough copies of the big sources to span opt.rotate bytes */
    int copies = c->bytes ? (int)((opt.rotate + c->bytes - 1) / c->bytes) : 1;
    if (copies < 2) copies = 2;
    if (copies > MAX_COPIES) copies = MAX_COPIES;
    struct ferry_tensor *nodes[MAX_COPIES * 4];
    struct ferry_tensor *copy_nodes = calloc((size_t)copies, sizeof *copy_nodes);
    struct ferry_tensor *copy_srcs[MAX_COPIES][MAX_SRC] = { { 0 } };
    for (int k = 0; k < copies; k++) {
        copy_nodes[k] = c->node;
        for (int s = 0; s < MAX_SRC; s++)
            if (c->big[s] && k > 0) {
                copy_srcs[k][s] = clone_tensor(c->src[s]);
                copy_nodes[k].src[s] = copy_srcs[k][s];
            }
        nodes[k] = &copy_nodes[k];
    }
    bool ok;
    r.cold_s = time_graph(e, nodes, copies, &err, &ok, &r.bandwidth);
    r.copies = copies;
    for (int k = 0; k < copies; k++)
        for (int s = 0; s < MAX_SRC; s++) tensor_free(copy_srcs[k][s]);
    if (ok) {
        /* hot: the same node repeated */
        int reps = c->bytes ? (int)((64u << 20) / c->bytes) : 64;
        if (reps < 4) reps = 4;
        if (reps > MAX_COPIES * 4) reps = MAX_COPIES * 4;
        for (int k = 0; k < reps; k++) nodes[k] = &c->node;
        r.hot_s = time_graph(e, nodes, reps, &err, &ok, &r.bandwidth);
    }
    free(copy_nodes);
    r.ok = ok;
    if (!ok) snprintf(r.why, sizeof r.why, "%s", err.msg);
    return r;
}

static void print_header(void) {
    if (opt.json) return;
    printf("%-16s %-7s %-22s %7s %10s %9s %6s %9s %6s\n", "op", "type", "shape", "BW GB/s", "cold ms", "GB/s", "ratio",
           "hot GB/s", "ratio");
}

static void report(const struct bench_case *c, const struct result *r) {
    if (!r->ok) {
        if (opt.json)
            printf("{\"op\":\"%s\",\"type\":\"%s\",\"shape\":\"%s\",\"error\":\"%s\"}\n", c->op, c->type, c->shape,
                   r->why);
        else
            printf("%-16s %-7s %-22s   unsupported: %s\n", c->op, c->type, c->shape, r->why);
        return;
    }
    const double cold = (double)c->bytes / r->cold_s, hot = (double)c->bytes / r->hot_s, bw = r->bandwidth;
    if (opt.json)
        printf("{\"op\":\"%s\",\"type\":\"%s\",\"shape\":\"%s\",\"bytes\":%zu,\"bandwidth_gbs\":%.3f,"
               "\"cold_ms\":%.4f,\"cold_gbs\":%.3f,\"cold_ratio\":%.3f,\"hot_ms\":%.4f,\"hot_gbs\":%.3f,"
               "\"hot_ratio\":%.3f,\"copies\":%d}\n",
               c->op, c->type, c->shape, c->bytes, bw / 1e9, r->cold_s * 1e3, cold / 1e9, cold / bw, r->hot_s * 1e3,
               hot / 1e9, hot / bw, r->copies);
    else
        printf("%-16s %-7s %-22s %7.2f %10.4f %9.2f %6.2f %9.2f %6.2f\n", c->op, c->type, c->shape, bw / 1e9,
               r->cold_s * 1e3, cold / 1e9, cold / bw, hot / 1e9, hot / bw);
    fflush(stdout);
}

static bool selected(const struct bench_case *c) {
    if (!opt.filter) return true;
    char name[96];
    snprintf(name, sizeof name, "%s %s %s", c->op, c->type, c->shape);
    return strstr(name, opt.filter) != NULL;
}

static void run_and_report(struct ferry_engine *e, struct bench_case *c) {
    if (selected(c)) {
        struct result r = run_case(e, c);
        report(c, &r);
    }
    case_free(c);
}

/* ---- the cases -------------------------------------------------------------------- */

static void bench_matvec(struct ferry_engine *e, enum ferry_type type, int64_t m, int64_t k) {
    struct bench_case c = { 0 };
    snprintf(c.op, sizeof c.op, "mul_mat (vec)");
    snprintf(c.type, sizeof c.type, "%s", ferry_type_name(type));
    snprintf(c.shape, sizeof c.shape, "%lldx%lld", (long long)m, (long long)k);
    if (!selected(&c)) return;
    set_output(&c, FERRY_OP_MUL_MAT, FERRY_TYPE_F32, m, 1, 1, 1);
    struct ferry_tensor *w = tensor_new(type, k, m, 1, 1), *x = tensor_new(FERRY_TYPE_F32, k, 1, 1, 1);
    fill_matrix(w, -0.1f, 0.1f);
    fill_matrix(x, -1.0f, 1.0f);
    add_src(&c, 0, w, true);
    add_src(&c, 1, x, false);
    run_and_report(e, &c);
}

static void bench_rms_norm(struct ferry_engine *e, int64_t dim, int64_t tokens) {
    struct bench_case c = { 0 };
    snprintf(c.op, sizeof c.op, "rms_norm");
    snprintf(c.type, sizeof c.type, "f32");
    snprintf(c.shape, sizeof c.shape, "[%lld,%lld]", (long long)dim, (long long)tokens);
    if (!selected(&c)) return;
    set_output(&c, FERRY_OP_RMS_NORM, FERRY_TYPE_F32, dim, tokens, 1, 1);
    ferry_param_set_f32(&c.node, 0, 1e-5f);
    struct ferry_tensor *x = tensor_new(FERRY_TYPE_F32, dim, tokens, 1, 1);
    fill_matrix(x, -1.0f, 1.0f);
    add_src(&c, 0, x, true);
    run_and_report(e, &c);
}

static void bench_rope(struct ferry_engine *e, int64_t head_dim, int64_t heads, int64_t tokens) {
    struct bench_case c = { 0 };
    snprintf(c.op, sizeof c.op, "rope (neox)");
    snprintf(c.type, sizeof c.type, "f32");
    snprintf(c.shape, sizeof c.shape, "[%lld,%lld,%lld]", (long long)head_dim, (long long)heads, (long long)tokens);
    if (!selected(&c)) return;
    set_output(&c, FERRY_OP_ROPE, FERRY_TYPE_F32, head_dim, heads, tokens, 1);
    c.node.op_params[1] = (int32_t)head_dim; /* n_dims */
    c.node.op_params[2] = 2;                 /* NEOX */
    c.node.op_params[4] = 4096;              /* n_ctx_orig */
    ferry_param_set_f32(&c.node, 5, 10000.0f);
    ferry_param_set_f32(&c.node, 6, 1.0f);
    ferry_param_set_f32(&c.node, 7, 0.0f);
    ferry_param_set_f32(&c.node, 8, 1.0f);
    ferry_param_set_f32(&c.node, 9, 32.0f);
    ferry_param_set_f32(&c.node, 10, 1.0f);
    struct ferry_tensor *x = tensor_new(FERRY_TYPE_F32, head_dim, heads, tokens, 1);
    struct ferry_tensor *pos = tensor_new(FERRY_TYPE_I32, tokens, 1, 1, 1);
    fill_matrix(x, -1.0f, 1.0f);
    for (int64_t i = 0; i < tokens; i++) ((int32_t *)pos->data)[i] = (int32_t)(1000 + i);
    add_src(&c, 0, x, true);
    add_src(&c, 1, pos, false);
    run_and_report(e, &c);
}

/* One decode step of attention: 32 query heads over 8 KV heads (GQA) of a
 * kv-token f16 cache, head size 128, with an all-visible f16 mask. */
static void bench_flash_attn(struct ferry_engine *e, int64_t kv) {
    const int64_t d = 128, heads = 32, kv_heads = 8;
    struct bench_case c = { 0 };
    snprintf(c.op, sizeof c.op, "flash_attn_ext");
    snprintf(c.type, sizeof c.type, "f16");
    snprintf(c.shape, sizeof c.shape, "d%lld h%lld/%lld kv%lld", (long long)d, (long long)heads, (long long)kv_heads,
             (long long)kv);
    if (!selected(&c)) return;
    set_output(&c, FERRY_OP_FLASH_ATTN_EXT, FERRY_TYPE_F32, d, heads, 1, 1);
    ferry_param_set_f32(&c.node, 0, 1.0f / sqrtf((float)d));
    struct ferry_tensor *q = tensor_new(FERRY_TYPE_F32, d, 1, heads, 1);
    struct ferry_tensor *k = tensor_new(FERRY_TYPE_F16, d, kv, kv_heads, 1);
    struct ferry_tensor *v = tensor_new(FERRY_TYPE_F16, d, kv, kv_heads, 1);
    struct ferry_tensor *mask = tensor_new(FERRY_TYPE_F16, kv, 1, 1, 1);
    fill_matrix(q, -1.0f, 1.0f);
    fill_matrix(k, -1.0f, 1.0f);
    fill_matrix(v, -1.0f, 1.0f);
    memset(mask->data, 0, ferry_nbytes(mask));
    add_src(&c, 0, q, false);
    add_src(&c, 1, k, true);
    add_src(&c, 2, v, true);
    add_src(&c, 3, mask, false);
    run_and_report(e, &c);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_ops [--threads N] [--quick] [--json] [--no-huge] [--filter SUBSTRING]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) opt.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) opt.quick = true;
        else if (!strcmp(argv[i], "--json")) opt.json = true;
        else if (!strcmp(argv[i], "--no-huge")) opt.huge = false;
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) opt.filter = argv[++i];
        else usage();
    }
    if (opt.threads < 1) usage();
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    opt.llc = l3 > 0 ? (size_t)l3 : (size_t)32 << 20;
    opt.rotate = 4 * opt.llc > ((size_t)256 << 20) ? 4 * opt.llc : (size_t)256 << 20;
    if (opt.quick) opt.rotate /= 2;
    opt.min_time = opt.quick ? 0.1 : 0.4;

    const size_t bw_bytes = opt.quick ? (size_t)256 << 20 : (size_t)512 << 20;
    bandwidth_buffer_init(bw_bytes);
    opt.bandwidth = measure_bandwidth(opt.threads, opt.quick ? 4 : 8);

    struct ferry_engine *e = ferry_engine_create(opt.threads);
    if (!e) {
        fprintf(stderr, "bench_ops: cannot start %d threads\n", opt.threads);
        return 1;
    }
    if (opt.json)
        printf("{\"threads\":%d,\"simd\":\"%s\",\"llc_bytes\":%zu,\"bandwidth_gbs\":%.3f}\n", opt.threads,
               ferry_engine_simd_name(), opt.llc, opt.bandwidth / 1e9);
    else
        printf("threads %d, simd %s, LLC %.1f MiB, cold rotation >= %.0f MiB\n"
               "memory read bandwidth: %.2f GB/s (%d threads, best of passes over %.0f MiB)\n\n",
               opt.threads, ferry_engine_simd_name(), (double)opt.llc / (1 << 20), (double)opt.rotate / (1 << 20),
               opt.bandwidth / 1e9, opt.threads, (double)bw_bytes / (1 << 20));
    print_header();

    const enum ferry_type types[] = { FERRY_TYPE_F16, FERRY_TYPE_BF16, FERRY_TYPE_Q8_0, FERRY_TYPE_Q4_0,
                                      FERRY_TYPE_Q4_K, FERRY_TYPE_Q6_K, FERRY_TYPE_MXFP4 };
    const int64_t rows[] = { 4096, 14336 };
    for (size_t s = 0; s < sizeof rows / sizeof rows[0]; s++)
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) bench_matvec(e, types[t], rows[s], 4096);
    bench_rms_norm(e, 4096, 1);
    bench_rms_norm(e, 4096, 512);
    bench_rope(e, 128, 32, 1);
    bench_rope(e, 128, 32, 512);
    bench_flash_attn(e, 4096);

    ferry_engine_destroy(e);
    free(bw_buf);
    return 0;
}
