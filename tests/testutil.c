#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/engine.h"
#include "ferry/types.h"

int test_passed, test_failed;

bool test_check(bool ok, const char *file, int line, const char *fmt, ...) {
    if (ok) {
        test_passed++;
        return true;
    }
    test_failed++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return false;
}

int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

uint64_t test_rand_u64(uint64_t *s) {
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float test_rand_uniform(uint64_t *s, float lo, float hi) {
    double u = (double)(test_rand_u64(s) >> 11) * 0x1p-53;
    return (float)(lo + (hi - lo) * u);
}

struct ferry_tensor *test_tensor_new(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                     int64_t ne3) {
    struct ferry_tensor *t = calloc(1, sizeof *t);
    int64_t ne[4] = { ne0, ne1, ne2, ne3 };
    ferry_tensor_init(t, type, 4, ne, NULL);
    size_t n = ferry_nbytes(t);
    t->data = calloc(1, n ? n : 1);
    return t;
}

void test_tensor_free(struct ferry_tensor *t) {
    if (!t) return;
    free(t->data);
    free(t);
}

float *test_tensor_to_f32(const struct ferry_tensor *t) {
    int64_t n = ferry_nelements(t);
    float *out = malloc((size_t)(n ? n : 1) * sizeof(float));
    const struct ferry_type_traits *tr = ferry_type_traits(t->type);
    int64_t bs = tr->blck_size;
    float *row = malloc((size_t)(t->ne[0] ? t->ne[0] : 1) * sizeof(float));
    int64_t k = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                const char *base = (const char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                if (tr->is_quantized) {
                    for (int64_t b = 0; b < t->ne[0] / bs; b++)
                        tr->to_float(base + b * t->nb[0], row + b * bs, bs);
                } else {
                    for (int64_t i0 = 0; i0 < t->ne[0]; i0++) {
                        const char *p = base + i0 * t->nb[0];
                        switch (t->type) {
                        case FERRY_TYPE_I32: { int32_t v; memcpy(&v, p, 4); row[i0] = (float)v; break; }
                        case FERRY_TYPE_I64: { int64_t v; memcpy(&v, p, 8); row[i0] = (float)v; break; }
                        case FERRY_TYPE_I16: { int16_t v; memcpy(&v, p, 2); row[i0] = v; break; }
                        case FERRY_TYPE_I8: row[i0] = (float)*(const int8_t *)p; break;
                        case FERRY_TYPE_F64: { double v; memcpy(&v, p, 8); row[i0] = (float)v; break; }
                        default: tr->to_float(p, row + i0, 1); break;
                        }
                    }
                }
                memcpy(out + k, row, (size_t)t->ne[0] * sizeof(float));
                k += t->ne[0];
            }
    free(row);
    return out;
}

void test_tensor_fill_uniform(struct ferry_tensor *t, uint64_t *state, float lo, float hi) {
    const struct ferry_type_traits *tr = ferry_type_traits(t->type);
    float *row = malloc((size_t)(t->ne[0] ? t->ne[0] : 1) * sizeof(float));
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) row[i0] = test_rand_uniform(state, lo, hi);
                char *base = (char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                if (tr->is_quantized || t->nb[0] == tr->type_size) {
                    tr->from_float(row, base, t->ne[0]);
                } else {
                    for (int64_t i0 = 0; i0 < t->ne[0]; i0++) tr->from_float(row + i0, base + i0 * t->nb[0], 1);
                }
            }
    free(row);
}

double test_nmse(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) {
            if (isnan(a[i]) && isnan(b[i])) continue;
            return INFINITY;
        }
        if (isinf(a[i]) || isinf(b[i])) {
            if (a[i] != b[i]) return INFINITY;
            continue;
        }
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)a[i] * (double)a[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

void test_remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char path[1024];
        while ((de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
}

static void *test_server_thread(void *arg) {
    struct ferry_error err;
    ferry_server_run(arg, &err);
    return NULL;
}

bool test_server_start(struct test_server *ts, const struct ferry_server_config *cfg) {
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    struct ferry_error err = { 0 };
    if (!CHECK(ferry_server_create(cfg, &ts->s, &err) == FERRY_OK, "server on %s port %d: %s", host, cfg->port,
               err.msg))
        return false;
    ts->port = ferry_server_port(ts->s);
    snprintf(ts->endpoint, sizeof ts->endpoint, "%s:%d", host, ts->port);
    pthread_create(&ts->thread, NULL, test_server_thread, ts->s);
    return true;
}

void test_server_stop(struct test_server *ts) {
    ferry_server_stop(ts->s);
    pthread_join(ts->thread, NULL);
    ferry_server_destroy(ts->s);
    ts->s = NULL;
}

uint8_t *test_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    uint8_t *p = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)n + 1) : NULL;
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *size = p ? (size_t)n : 0;
    return p;
}

static struct ferry_tensor *kept[512];
static int n_kept;

struct ferry_tensor *test_keep(struct ferry_tensor *t) {
    if (CHECK(n_kept < (int)(sizeof kept / sizeof kept[0]), "too many tensors in one test")) kept[n_kept++] = t;
    return t;
}

void test_free_kept(void) {
    for (int i = 0; i < n_kept; i++) {
        if (kept[i]->view_src) free(kept[i]); /* a view: the base owns the data */
        else test_tensor_free(kept[i]);
    }
    n_kept = 0;
}

struct ferry_tensor *test_permute(struct ferry_tensor *base, int a0, int a1, int a2, int a3) {
    struct ferry_tensor *v = calloc(1, sizeof *v);
    *v = *base;
    const int ax[4] = { a0, a1, a2, a3 };
    for (int k = 0; k < 4; k++) {
        v->ne[ax[k]] = base->ne[k];
        v->nb[ax[k]] = base->nb[k];
    }
    v->op = FERRY_OP_PERMUTE;
    v->view_src = base;
    return test_keep(v);
}

bool test_rejected(struct ferry_tensor *node, const char *what) {
    struct ferry_error err = { 0 };
    int rc = ferry_engine_check_node(node, &err);
    return CHECK(rc == FERRY_ERR_INVALID || rc == FERRY_ERR_UNSUPPORTED, "%s: not rejected (rc %d)", what, rc);
}
