/* Ops that move, tile or generate elements without arithmetic on them
 * (docs/ops.md B.11, B.12, B.17, B.23): CONCAT, REPEAT, PAD, FILL, ARANGE, TRI
 * and DIAG_MASK_INF.
 *
 * All of them work row by row on the output (rows split between threads)
 * and honour every stride of every tensor. Elements are moved as raw bytes
 * through memcpy, so no alignment is assumed; CONCAT moves quantized data
 * block by block. */
#include <math.h>

#include "common.h"
#include "convert.h"

static int check_f32_same_shape(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)) ||
        (rc = check_same_shape(node, a, node, err)))
        return rc;
    return FERRY_OK;
}

static inline float get_f32(const char *p) { float v; memcpy(&v, p, sizeof v); return v; }
static inline void put_f32(char *p, float v) { memcpy(p, &v, sizeof v); }

/* Copies n units (elements, or blocks of a quantized type) of `unit` bytes
 * between rows with byte strides sd and ss. */
static void copy_units(char *dst, size_t sd, const char *src, size_t ss, int64_t n, size_t unit) {
    if (sd == unit && ss == unit) {
        memmove(dst, src, (size_t)n * unit);
        return;
    }
    for (int64_t i = 0; i < n; i++) memmove(dst + i * (int64_t)sd, src + i * (int64_t)ss, unit);
}


/* ---- CONCAT ---- */

static int check_concat(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (a->type != node->type || b->type != node->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "CONCAT: types %s, %s -> %s differ",
                          ferry_type_name(a->type), ferry_type_name(b->type), ferry_type_name(node->type));
    const int32_t dim = ferry_param_i32(node, 0);
    if (dim < 0 || dim >= FERRY_MAX_DIMS)
        return ferry_fail(err, FERRY_ERR_INVALID, "CONCAT: dim %d is not 0..3", (int)dim);
    for (int d = 0; d < FERRY_MAX_DIMS; d++) {
        int64_t want = a->ne[d];
        if (d == dim ? __builtin_add_overflow(a->ne[d], b->ne[d], &want) : a->ne[d] != b->ne[d])
            return ferry_fail(err, FERRY_ERR_INVALID, "CONCAT: src0 and src1 differ in dim %d", d);
        if (node->ne[d] != want)
            return ferry_fail(err, FERRY_ERR_INVALID, "CONCAT: output ne[%d] = %lld, expected %lld", d,
                              (long long)node->ne[d], (long long)want);
    }
    return FERRY_OK;
}

static void concat_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int dim = ferry_param_i32(node, 0);
    const size_t unit = ferry_type_size(node->type);
    const int64_t bs = ferry_blck_size(node->type);
    char *y = tensor_row(node, i1, i2, i3);
    if (dim == 0) {
        const int64_t na = a->ne[0] / bs;
        copy_units(y, node->nb[0], tensor_row(a, i1, i2, i3), a->nb[0], na, unit);
        copy_units(y + na * (int64_t)node->nb[0], node->nb[0], tensor_row(b, i1, i2, i3), b->nb[0],
                   b->ne[0] / bs, unit);
        return;
    }
    int64_t c[4] = { 0, i1, i2, i3 };
    const struct ferry_tensor *s = a;
    if (c[dim] >= a->ne[dim]) {
        c[dim] -= a->ne[dim];
        s = b;
    }
    copy_units(y, node->nb[0], tensor_row(s, c[1], c[2], c[3]), s->nb[0], node->ne[0] / bs, unit);
}

static void concat_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, concat_row);
}

const struct ferry_kernel ferry_kernel_concat = { check_concat, NULL, concat_compute };

/* ---- REPEAT ---- */

static int check_repeat(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_I32, FERRY_TYPE_F16,
                                             FERRY_TYPE_BF16, FERRY_TYPE_I16 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, types, 5, err))) return rc;
    if (node->type != a->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "REPEAT: output type %s differs from src0 type %s",
                          ferry_type_name(node->type), ferry_type_name(a->type));
    if (!ferry_can_repeat(a, node))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "REPEAT: [%lld,%lld,%lld,%lld] does not tile [%lld,%lld,%lld,%lld]",
                          (long long)a->ne[0], (long long)a->ne[1], (long long)a->ne[2],
                          (long long)a->ne[3], (long long)node->ne[0], (long long)node->ne[1],
                          (long long)node->ne[2], (long long)node->ne[3]);
    return FERRY_OK;
}

static void repeat_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const size_t es = ferry_type_size(a->type);
    const int64_t n = a->ne[0];
    char *y = tensor_row(node, i1, i2, i3);
    const char *x = tensor_row(a, i1 % a->ne[1], i2 % a->ne[2], i3 % a->ne[3]);
    for (int64_t t = 0; t < node->ne[0]; t += n)
        copy_units(y + t * (int64_t)node->nb[0], node->nb[0], x, a->nb[0], n, es);
}

static void repeat_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, repeat_row);
}

const struct ferry_kernel ferry_kernel_repeat = { check_repeat, NULL, repeat_compute };

/* ---- PAD ---- */

static int check_pad(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)))
        return rc;
    const int32_t circular = ferry_param_i32(node, 8);
    if (circular != 0 && circular != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "PAD: circular flag %d is not 0 or 1", (int)circular);
    for (int d = 0; d < FERRY_MAX_DIMS; d++) {
        const int32_t lp = ferry_param_i32(node, 2 * d), rp = ferry_param_i32(node, 2 * d + 1);
        if (lp < 0 || rp < 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "PAD: negative padding %d/%d in dim %d", (int)lp,
                              (int)rp, d);
        int64_t want;
        if (__builtin_add_overflow(a->ne[d], (int64_t)lp + rp, &want) || node->ne[d] != want)
            return ferry_fail(err, FERRY_ERR_INVALID, "PAD: output ne[%d] = %lld, expected %lld + %d + %d",
                              d, (long long)node->ne[d], (long long)a->ne[d], (int)lp, (int)rp);
    }
    if (circular && ferry_is_empty(a) && !ferry_is_empty(node))
        return ferry_fail(err, FERRY_ERR_INVALID, "PAD: circular padding of an empty tensor");
    return FERRY_OK;
}

/* i - lp wrapped into [0, n). */
static inline int64_t wrap(int64_t i, int64_t lp, int64_t n) {
    int64_t j = (i - lp) % n;
    return j < 0 ? j + n : j;
}

static void pad_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const bool circular = ferry_param_i32(node, 8) != 0;
    const int64_t i[4] = { 0, i1, i2, i3 };
    int64_t j[4] = { 0 };
    bool inside = true;
    for (int d = 1; d < FERRY_MAX_DIMS; d++) {
        const int64_t lp = ferry_param_i32(node, 2 * d);
        j[d] = circular ? wrap(i[d], lp, a->ne[d]) : i[d] - lp;
        inside = inside && j[d] >= 0 && j[d] < a->ne[d];
    }
    const int64_t lp0 = ferry_param_i32(node, 0);
    const char *x = inside ? tensor_row(a, j[1], j[2], j[3]) : NULL;
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
        const int64_t j0 = circular ? wrap(i0, lp0, a->ne[0]) : i0 - lp0;
        const float v = x && j0 >= 0 && j0 < a->ne[0] ? get_f32(x + j0 * (int64_t)a->nb[0]) : 0.0f;
        put_f32(y + i0 * (int64_t)node->nb[0], v);
    }
}

static void pad_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, pad_row);
}

const struct ferry_kernel ferry_kernel_pad = { check_pad, NULL, pad_compute };

/* ---- FILL, ARANGE ---- */

static int check_fill(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc;
    if (node->op == FERRY_OP_ARANGE) {
        static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
        if ((rc = check_type_in(node, "output", node->type, f32, 1, err))) return rc;
        /* the length was fixed by the client from (stop - start)/step; the
         * node's ne0 bounds what is written */
        return check_dst_shape(node, node->ne[0], 1, 1, 1, err);
    }
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    if ((rc = check_src_count(node, 1, err))) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, types, 2, err)) ||
        (rc = check_same_shape(node, a, node, err)))
        return rc;
    if (node->type != a->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "FILL: output type %s differs from src0 type %s",
                          ferry_type_name(node->type), ferry_type_name(a->type));
    return FERRY_OK;
}

static void fill_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const size_t es = ferry_type_size(node->type);
    char v[4];
    store_f32(node->type, v, ferry_param_f32(node, 0)); /* F16: round to nearest even */
    char *y = tensor_row(node, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) memcpy(y + i0 * (int64_t)node->nb[0], v, es);
}

/* y[i] = start + step*i, in f32; threads split the single row. */
static void arange_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const float start = ferry_param_f32(node, 0), step = ferry_param_f32(node, 2);
    int64_t b, e;
    split_range(node->ne[0], p->ith, p->nth, &b, &e);
    for (int64_t i = b; i < e; i++)
        put_f32((char *)node->data + i * (int64_t)node->nb[0], start + step * (float)i);
}

static void fill_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    if (node->op == FERRY_OP_ARANGE) arange_compute(p, node);
    else for_my_rows(p, node, fill_row);
}

const struct ferry_kernel ferry_kernel_fill = { check_fill, NULL, fill_compute };

/* ---- TRI, DIAG_MASK_INF ---- */

static int check_tri(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_same_shape(node, err);
    if (rc) return rc;
    const int32_t param = ferry_param_i32(node, 0);
    if (node->op == FERRY_OP_DIAG_MASK_INF) {
        if (param < 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "DIAG_MASK_INF: n_past %d is negative", (int)param);
        return FERRY_OK;
    }
    if (param < 0 || param > 3)
        return ferry_fail(err, FERRY_ERR_INVALID, "TRI: type %d is not 0..3", (int)param);
    if (node->ne[0] != node->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "TRI: [%lld,%lld] is not square", (long long)node->ne[0],
                          (long long)node->ne[1]);
    return FERRY_OK;
}

/* Does TRI of the given type keep column i0 of row i1? */
static inline bool tri_keeps(int type, int64_t i0, int64_t i1) {
    switch (type) {
    case 0: return i0 >= i1; /* upper with diagonal */
    case 1: return i0 > i1;  /* upper */
    case 2: return i0 <= i1; /* lower with diagonal */
    default: return i0 < i1; /* lower */
    }
}

/* TRI zeroes, DIAG_MASK_INF sets -inf where column i0 > n_past + row i1. */
static void tri_row(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const int32_t param = ferry_param_i32(node, 0);
    const bool mask_inf = node->op == FERRY_OP_DIAG_MASK_INF;
    char *y = tensor_row(node, i1, i2, i3);
    const char *x = tensor_row(a, i1, i2, i3);
    for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
        float v = get_f32(x + i0 * (int64_t)a->nb[0]);
        if (mask_inf) v = i0 > (int64_t)param + i1 ? -INFINITY : v;
        else v = tri_keeps(param, i0, i1) ? v : 0.0f;
        put_f32(y + i0 * (int64_t)node->nb[0], v);
    }
}

static void tri_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    for_my_rows(p, node, tri_row);
}

const struct ferry_kernel ferry_kernel_tri = { check_tri, NULL, tri_compute };
