/* Runs every golden case (tests/golden, computed by ggml's CPU backend)
 * through the engine: at the best SIMD level with 1 and 3 threads, whose
 * results must be bit-identical, and with the portable kernels. Each result
 * must be within the case's NMSE tolerance of ggml's.
 *
 * usage: test_golden GOLDEN_DIR [NAME_SUBSTRING] */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ferry/gguf.h"
#include "ops/simd.h"
#include "testutil.h"

struct golden_case {
    char name[128];
    struct ferry_gguf *g;
    int op;
    int32_t params[FERRY_MAX_OP_PARAMS];
    enum ferry_type dst_type;
    int64_t dst_ne[4];
    double tol;
    const struct ferry_gguf_tensor_info *stored[FERRY_MAX_SRC]; /* srcN as stored */
    const struct ferry_gguf_tensor_info *dst;
};

static bool get_arr(struct ferry_gguf *g, const char *key, enum ferry_gguf_type want, size_t n, void *out) {
    enum ferry_gguf_type t;
    uint64_t count;
    const void *data;
    if (!ferry_gguf_get_arr(g, key, &t, &count, &data) || t != want || count != n) return false;
    memcpy(out, data, n * (want == FERRY_GGUF_I64 ? 8 : 4));
    return true;
}

static bool load_case(struct golden_case *c, const char *dir, const char *file) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(c->name, sizeof c->name, "%.*s", (int)(strlen(file) - 5), file);
    struct ferry_error err = { 0 };
    if (ferry_gguf_open(path, &c->g, &err) != FERRY_OK) {
        CHECK(false, "%s: %s", file, err.msg);
        return false;
    }
    uint32_t op = 0;
    int64_t dst_type = 0;
    bool ok = ferry_gguf_get_u32(c->g, "ferry.op", &op) &&
              ferry_gguf_get_i64(c->g, "ferry.dst_type", &dst_type) &&
              ferry_gguf_get_f64(c->g, "ferry.tolerance_nmse", &c->tol) &&
              get_arr(c->g, "ferry.op_params", FERRY_GGUF_I32, 16, c->params) &&
              get_arr(c->g, "ferry.dst_ne", FERRY_GGUF_I64, 4, c->dst_ne);
    c->op = (int)op;
    c->dst_type = (enum ferry_type)dst_type;
    c->dst = ferry_gguf_find_tensor(c->g, "dst");
    for (int i = 0; i < FERRY_MAX_SRC; i++) {
        char n[8];
        snprintf(n, sizeof n, "src%d", i);
        c->stored[i] = ferry_gguf_find_tensor(c->g, n);
    }
    if (!CHECK(ok && c->dst, "%s: missing keys or dst", file)) return false;
    return true;
}

/* Working memory for one run: writable copies of the stored sources, the
 * source descriptors (views applied) and the node. */
struct run {
    void *base[FERRY_MAX_SRC];
    struct ferry_tensor src[FERRY_MAX_SRC];
    struct ferry_tensor node;
    void *out;
};

static void build_run(const struct golden_case *c, struct run *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < FERRY_MAX_SRC; i++) {
        const struct ferry_gguf_tensor_info *ti = c->stored[i];
        if (!ti) continue;
        r->base[i] = malloc(ti->size ? ti->size : 1);
        memcpy(r->base[i], ti->data, ti->size);
        struct ferry_tensor *s = &r->src[i];
        ferry_tensor_init(s, ti->type, 4, ti->ne, r->base[i]);
        char key[64];
        int32_t perm[4];
        int64_t view[9];
        snprintf(key, sizeof key, "ferry.src_permute.%d", i);
        if (get_arr(c->g, key, FERRY_GGUF_I32, 4, perm)) {
            struct ferry_tensor b = *s;
            for (int k = 0; k < 4; k++) {
                s->ne[perm[k]] = b.ne[k];
                s->nb[perm[k]] = b.nb[k];
            }
            s->op = FERRY_OP_PERMUTE;
        }
        snprintf(key, sizeof key, "ferry.src_view.%d", i);
        if (get_arr(c->g, key, FERRY_GGUF_I64, 9, view)) {
            for (int k = 0; k < 4; k++) {
                s->ne[k] = view[k];
                s->nb[k] = (size_t)view[4 + k];
            }
            s->data = (char *)r->base[i] + view[8];
            s->op = FERRY_OP_VIEW;
        }
    }
    struct ferry_tensor *n = &r->node;
    if (c->op == FERRY_OP_CPY) {
        *n = r->src[1];
    } else if (c->op == FERRY_OP_SET_ROWS) {
        *n = r->src[2];
    } else {
        ferry_tensor_init(n, c->dst_type, 4, c->dst_ne, NULL);
        size_t bytes = ferry_nbytes(n);
        r->out = malloc(bytes ? bytes : 1);
        memset(r->out, 0xff, bytes); /* NaN everywhere: unwritten elements show */
        n->data = r->out;
    }
    n->op = (enum ferry_op)c->op;
    memcpy(n->op_params, c->params, sizeof n->op_params);
    n->flags = FERRY_FLAG_COMPUTE;
    snprintf(n->name, sizeof n->name, "%s", "dst");
    for (int i = 0; i < FERRY_MAX_SRC; i++) n->src[i] = c->stored[i] ? &r->src[i] : NULL;
}

static void free_run(struct run *r) {
    for (int i = 0; i < FERRY_MAX_SRC; i++) free(r->base[i]);
    free(r->out);
}

static int cmp_f32(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Compares ferry's output with ggml's; returns the NMSE (0 for exact
 * matches, INFINITY for mismatches of exact ops). */
static double compare(const struct golden_case *c, const float *ref, float *out, int64_t n) {
    if (c->op == FERRY_OP_TOP_K) {
        /* rows compare as sets */
        int64_t k = c->dst_ne[0];
        float *a = malloc((size_t)n * sizeof(float));
        memcpy(a, ref, (size_t)n * sizeof(float));
        for (int64_t r = 0; r < n / k; r++) {
            qsort(a + r * k, (size_t)k, sizeof(float), cmp_f32);
            qsort(out + r * k, (size_t)k, sizeof(float), cmp_f32);
        }
        int diff = memcmp(a, out, (size_t)n * sizeof(float));
        free(a);
        return diff ? INFINITY : 0;
    }
    if (c->tol == 0) {
        for (int64_t i = 0; i < n; i++)
            if (!(ref[i] == out[i] || (isnan(ref[i]) && isnan(out[i])))) return INFINITY;
        return 0;
    }
    return test_nmse(ref, out, n);
}

static float *run_case(const struct golden_case *c, struct ferry_engine *e, struct ferry_error *err,
                       int *rc) {
    struct run r;
    build_run(c, &r);
    struct ferry_tensor *nodes[1] = { &r.node };
    *rc = ferry_engine_compute(e, nodes, 1, err);
    float *out = *rc == FERRY_OK ? test_tensor_to_f32(&r.node) : NULL;
    free_run(&r);
    return out;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/golden";
    const char *filter = argc > 2 ? argv[2] : NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/index.txt", dir);
    FILE *f = fopen(path, "r");
    if (!CHECK(f != NULL, "cannot open %s", path)) return test_summary();

    struct ferry_engine *e1 = ferry_engine_create(1), *e3 = ferry_engine_create(3);
    enum ferry_simd_level best = ferry_simd_level();
    int n_cases = 0, n_ok = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        if (filter && !strstr(line, filter)) continue;
        struct golden_case c = { 0 };
        if (!load_case(&c, dir, line)) continue;
        n_cases++;

        struct ferry_tensor ref_t;
        ferry_tensor_init(&ref_t, c.dst->type, 4, c.dst->ne, (void *)c.dst->data);
        float *ref = test_tensor_to_f32(&ref_t);
        int64_t n = ferry_nelements(&ref_t);

        bool case_ok = true;
        double nmse_best = NAN;
        struct { const char *what; struct ferry_engine *e; enum ferry_simd_level level; } runs[] = {
            { "1 thread", e1, best }, { "3 threads", e3, best }, { "portable", e3, FERRY_SIMD_SCALAR },
        };
        float *first = NULL;
        for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
            ferry_simd_set_level(runs[k].level);
            struct ferry_error err = { 0 };
            int rc;
            float *out = run_case(&c, runs[k].e, &err, &rc);
            if (!out) {
                case_ok = CHECK(false, "%s (%s): %s", c.name, runs[k].what, err.msg) && case_ok;
                continue;
            }
            double nmse = compare(&c, ref, out, n);
            if (k == 0) nmse_best = nmse;
            case_ok = CHECK(nmse <= c.tol, "%s (%s): nmse %.3g > tolerance %.3g", c.name,
                            runs[k].what, nmse, c.tol) && case_ok;
            if (k == 0) {
                first = out;
                continue;
            }
            if (runs[k].level == best)
                case_ok = CHECK(memcmp(first, out, (size_t)n * sizeof(float)) == 0,
                                "%s: result differs between 1 and 3 threads", c.name) && case_ok;
            free(out);
        }
        ferry_simd_set_level(best);
        free(first);
        free(ref);
        if (case_ok) n_ok++;
        printf("%-4s %-36s nmse %.3g (tol %.3g)\n", case_ok ? "ok" : "FAIL", c.name, nmse_best, c.tol);
        ferry_gguf_close(c.g);
    }
    fclose(f);
    printf("golden: %d of %d cases pass (simd %s)\n", n_ok, n_cases, ferry_simd_level_name(best));
    ferry_engine_destroy(e1);
    ferry_engine_destroy(e3);
    return test_summary();
}
