/* Times the element-wise, copy and row ops that run on every decoded token
 * (ADD, MUL, SCALE, SILU, SWIGLU, GELU, CPY into an F16 cache, SET_ROWS,
 * GET_ROWS) through the engine, at each SIMD level and thread count.
 *
 * usage: bench_elementwise [THREADS] [FILTER] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry/engine.h"
#include "ops/simd.h"

static struct ferry_tensor *tensor(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2) {
    struct ferry_tensor *t = calloc(1, sizeof *t);
    int64_t ne[4] = { ne0, ne1, ne2, 1 };
    ferry_tensor_init(t, type, 3, ne, NULL);
    size_t n = ferry_nbytes(t);
    t->data = aligned_alloc(64, (n + 63) & ~(size_t)63);
    /* small values of the right type: quantize / convert from a float ramp */
    const struct ferry_type_traits *tr = ferry_type_traits(type);
    float *row = malloc((size_t)ne0 * sizeof(float));
    for (int64_t r = 0; r < ne1 * ne2; r++) {
        for (int64_t i = 0; i < ne0; i++) row[i] = (float)((i * 7 + r * 13) % 23) / 11.0f - 1.0f;
        if (type == FERRY_TYPE_I32 || type == FERRY_TYPE_I64)
            memset((char *)t->data + r * t->nb[1], 0, t->nb[1]);
        else
            tr->from_float(row, (char *)t->data + r * t->nb[1], ne0);
    }
    free(row);
    return t;
}

static struct ferry_tensor *node(enum ferry_op op, enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                 struct ferry_tensor *a, struct ferry_tensor *b) {
    struct ferry_tensor *n = tensor(type, ne0, ne1, ne2);
    n->op = op;
    n->flags = FERRY_FLAG_COMPUTE;
    n->src[0] = a;
    n->src[1] = b;
    return n;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void bench(struct ferry_engine *e, const char *name, struct ferry_tensor *n, int64_t elems) {
    struct ferry_tensor *nodes[1] = { n };
    struct ferry_error err = { 0 };
    if (ferry_engine_compute(e, nodes, 1, &err) != FERRY_OK) {
        printf("%-28s failed: %s\n", name, err.msg);
        return;
    }
    int iters = 1;
    double t0, dt;
    for (;;) { /* grow until one batch takes 50 ms */
        t0 = now();
        for (int i = 0; i < iters; i++) ferry_engine_compute(e, nodes, 1, &err);
        dt = now() - t0;
        if (dt > 0.05 || iters > (1 << 20)) break;
        iters *= 2;
    }
    printf("%-28s %9.1f us  %7.3f ns/elem\n", name, 1e6 * dt / iters, 1e9 * dt / iters / (double)elems);
}

int main(int argc, char **argv) {
    int nth = argc > 1 ? atoi(argv[1]) : 1;
    const char *filter = argc > 2 ? argv[2] : "";
    struct ferry_engine *e = ferry_engine_create(nth);
    const int64_t D = 4096, F = 14336, T = 32;

    struct ferry_tensor *x = tensor(FERRY_TYPE_F32, D, T, 1), *y = tensor(FERRY_TYPE_F32, D, T, 1);
    struct ferry_tensor *w = tensor(FERRY_TYPE_F32, D, 1, 1);
    struct ferry_tensor *h = tensor(FERRY_TYPE_F32, F, T, 1), *g = tensor(FERRY_TYPE_F32, F, T, 1);
    struct ferry_tensor *hg = tensor(FERRY_TYPE_F32, 2 * F, T, 1);
    struct ferry_tensor *cache = tensor(FERRY_TYPE_F16, 1024, 4096, 1);
    struct ferry_tensor *kv = tensor(FERRY_TYPE_F32, 1024, T, 1);
    struct ferry_tensor *pos = tensor(FERRY_TYPE_I64, T, 1, 1);
    for (int64_t i = 0; i < T; i++) ((int64_t *)pos->data)[i] = 100 + i;
    struct ferry_tensor *tok = tensor(FERRY_TYPE_I32, T, 1, 1);
    for (int64_t i = 0; i < T; i++) ((int32_t *)tok->data)[i] = (int32_t)(i * 997 % 32000);
    struct ferry_tensor *emb_q = tensor(FERRY_TYPE_Q4_0, D, 32000, 1);
    struct ferry_tensor *emb_h = tensor(FERRY_TYPE_F16, D, 32000, 1);
    struct ferry_tensor *perm = tensor(FERRY_TYPE_F32, 128, 32, T); /* [hd, heads, tokens] */

    struct { const char *name; struct ferry_tensor *n; int64_t elems; } cases[16];
    int nc = 0;
#define CASE(nm, nd, el) cases[nc].name = nm, cases[nc].n = nd, cases[nc].elems = el, nc++
    CASE("add f32", node(FERRY_OP_ADD, FERRY_TYPE_F32, D, T, 1, x, y), D * T);
    CASE("mul f32 row-broadcast", node(FERRY_OP_MUL, FERRY_TYPE_F32, D, T, 1, x, w), D * T);
    struct ferry_tensor *sc = node(FERRY_OP_SCALE, FERRY_TYPE_F32, D, T, 1, x, NULL);
    union { float f; int32_t i; } s = { 0.125f };
    sc->op_params[0] = s.i;
    CASE("scale f32", sc, D * T);
    struct ferry_tensor *silu = node(FERRY_OP_UNARY, FERRY_TYPE_F32, F, T, 1, h, NULL);
    silu->op_params[0] = FERRY_UNARY_SILU;
    CASE("unary silu f32", silu, F * T);
    struct ferry_tensor *gelu = node(FERRY_OP_UNARY, FERRY_TYPE_F32, F, T, 1, h, NULL);
    gelu->op_params[0] = FERRY_UNARY_GELU;
    CASE("unary gelu f32", gelu, F * T);
    struct ferry_tensor *sw = node(FERRY_OP_GLU, FERRY_TYPE_F32, F, T, 1, h, g);
    sw->op_params[0] = FERRY_GLU_SWIGLU;
    CASE("glu swiglu split f32", sw, F * T);
    struct ferry_tensor *sw1 = node(FERRY_OP_GLU, FERRY_TYPE_F32, F, T, 1, hg, NULL);
    sw1->op_params[0] = FERRY_GLU_SWIGLU;
    CASE("glu swiglu single f32", sw1, F * T);
    struct ferry_tensor *ge = node(FERRY_OP_GLU, FERRY_TYPE_F32, F, T, 1, h, g);
    ge->op_params[0] = FERRY_GLU_GEGLU;
    CASE("glu geglu split f32", ge, F * T);
    CASE("cpy f32->f16", node(FERRY_OP_CPY, FERRY_TYPE_F16, D, T, 1, x, NULL), D * T);
    cases[nc - 1].n->src[1] = cases[nc - 1].n;
    struct ferry_tensor *sr = calloc(1, sizeof *sr);
    *sr = *cache;
    sr->op = FERRY_OP_SET_ROWS;
    sr->flags = FERRY_FLAG_COMPUTE;
    sr->src[0] = kv;
    sr->src[1] = pos;
    sr->src[2] = cache;
    CASE("set_rows f32->f16 cache", sr, 1024 * T);
    CASE("get_rows q4_0", node(FERRY_OP_GET_ROWS, FERRY_TYPE_F32, D, T, 1, emb_q, tok), D * T);
    CASE("get_rows f16", node(FERRY_OP_GET_ROWS, FERRY_TYPE_F32, D, T, 1, emb_h, tok), D * T);
    struct ferry_tensor pv = *perm; /* permute(0,2,1,3): [hd, tokens, heads] */
    pv.ne[1] = T; pv.nb[1] = perm->nb[2];
    pv.ne[2] = 32; pv.nb[2] = perm->nb[1];
    CASE("cont f32 permuted", node(FERRY_OP_CONT, FERRY_TYPE_F32, 128, T, 32, &pv, NULL), 128 * 32 * T);

    enum ferry_simd_level best = ferry_simd_level();
    for (int l = 0; l <= (int)best; l++) {
        ferry_simd_set_level((enum ferry_simd_level)l);
        printf("-- %s, %d thread(s)\n", ferry_simd_level_name((enum ferry_simd_level)l), nth);
        for (int c = 0; c < nc; c++)
            if (strstr(cases[c].name, filter)) bench(e, cases[c].name, cases[c].n, cases[c].elems);
    }
    ferry_engine_destroy(e);
    return 0; /* the tensors live until exit */
}
