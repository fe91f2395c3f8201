/* Small ops of the sequence family (docs/ops.md B.26): SIN, COS, LOG, ADD1,
 * ACC, SET, DIAG, DIAG_MASK_ZERO, GROUP_NORM, TIMESTEP_EMBEDDING, SOLVE_TRI.
 *
 * Each follows the arithmetic of ggml's CPU backend step by step (f32
 * unless a sum is stated to be in double) so that results match within
 * test-backend-ops' tolerances, and honours every stride it can: elements
 * are addressed through nb, loaded and stored through memcpy where a
 * client-given offset may leave them unaligned. */
#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "convert.h"
#include "family_seq.h"
#include "scratch.h"

#define CHUNK 256

static inline float ld_f32(const void *p) { float v; memcpy(&v, p, sizeof v); return v; }
static inline void st_f32(void *p, float v) { memcpy(p, &v, sizeof v); }

/* Byte address of element (i0..i3) of a plain-typed tensor. */
static inline char *elem(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i0 * (int64_t)t->nb[0] + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] +
           i3 * (int64_t)t->nb[3];
}

static int check_types(const struct ferry_tensor *node, enum ferry_type want_src0, enum ferry_type want_dst,
                       struct ferry_error *err) {
    const struct ferry_tensor *a = node->src[0];
    if (a->type == want_src0 && node->type == want_dst) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s -> %s is not supported", ferry_op_name(node->op),
                      ferry_type_name(a->type), ferry_type_name(node->type));
}

/* ---- SIN, COS, LOG ---- */

static int check_sin_cos_log(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    /* ggml's unary dispatcher: same type in and out, or F16/BF16 into F32 */
    const enum ferry_type s = a->type, d = node->type;
    const bool ok = (is_float_type(s) && d == s) ||
                    ((s == FERRY_TYPE_F16 || s == FERRY_TYPE_BF16) && d == FERRY_TYPE_F32);
    if (!ok)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s -> %s is not supported", ferry_op_name(node->op),
                          ferry_type_name(s), ferry_type_name(d));
    if ((rc = check_same_shape(node, a, node, err)) || (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static void sin_cos_log_f32(enum ferry_op op, float *y, int64_t n) {
    switch (op) {
    case FERRY_OP_SIN: for (int64_t i = 0; i < n; i++) y[i] = sinf(y[i]); break;
    case FERRY_OP_COS: for (int64_t i = 0; i < n; i++) y[i] = cosf(y[i]); break;
    default: for (int64_t i = 0; i < n; i++) y[i] = logf(y[i]); break;
    }
}

static void sin_cos_log_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const size_t sa = ferry_type_size(a->type), sd = ferry_type_size(node->type);
    const int64_t ne0 = node->ne[0];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    float buf[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3);
        char *y = tensor_row(node, i1, i2, i3);
        /* chunk by chunk, each read before written: the node may be src0 */
        for (int64_t i0 = 0; i0 < ne0; i0 += CHUNK) {
            const int64_t m = ne0 - i0 < CHUNK ? ne0 - i0 : CHUNK;
            ferry_cvt_to_f32(a->type, x + i0 * (int64_t)sa, buf, m);
            sin_cos_log_f32(node->op, buf, m);
            ferry_cvt_from_f32(node->type, buf, y + i0 * (int64_t)sd, m);
        }
    }
}

const struct ferry_kernel ferry_kernel_sin_cos_log = { check_sin_cos_log, NULL, sin_cos_log_compute };

/* ---- ADD1: y = x + s for a scalar s ---- */

static bool add1_quantized(const struct ferry_tensor *node) { return ferry_type_is_quantized(node->src[0]->type); }

static int check_add1(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    bool ok;
    if (a->type == FERRY_TYPE_F32) {
        ok = b->type == FERRY_TYPE_F32;
    } else if (a->type == FERRY_TYPE_F16 || a->type == FERRY_TYPE_BF16) {
        ok = b->type == a->type || b->type == FERRY_TYPE_F32;
    } else {
        /* quantized rows are dequantized, added to and quantized again */
        const struct ferry_type_traits *tr = ferry_type_traits(a->type);
        ok = tr && tr->is_quantized && tr->to_float && tr->from_float && b->type == FERRY_TYPE_F32;
    }
    if (!ok || node->type != a->type)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "ADD1: %s + %s -> %s is not supported",
                          ferry_type_name(a->type), ferry_type_name(b->type), ferry_type_name(node->type));
    if (ferry_nelements(b) != 1 || b->ne[0] != 1 || b->ne[1] != 1 || b->ne[2] != 1 || b->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "ADD1: src1 is not a scalar");
    if ((rc = check_same_shape(node, a, node, err)) || (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static size_t add1_work_size(const struct ferry_tensor *node, int nth) {
    if (!add1_quantized(node)) return 0;
    return scratch_size(nth, (size_t)node->ne[0], sizeof(float));
}

static void add1_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const float s = load_f32(b->type, b->data);
    const int64_t ne0 = node->ne[0];
    const bool quant = add1_quantized(node);
    const struct ferry_type_traits *tr = ferry_type_traits(a->type);
    float *row = NULL;
    if (quant && !(row = scratch_slice(p, (size_t)ne0, sizeof(float)))) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "ADD1: scratch too small");
        return;
    }
    const size_t es = ferry_type_size(a->type);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    float buf[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3);
        char *y = tensor_row(node, i1, i2, i3);
        if (quant) {
            tr->to_float(x, row, ne0);
            for (int64_t i = 0; i < ne0; i++) row[i] += s;
            tr->from_float(row, y, ne0);
            continue;
        }
        for (int64_t i0 = 0; i0 < ne0; i0 += CHUNK) {
            const int64_t m = ne0 - i0 < CHUNK ? ne0 - i0 : CHUNK;
            ferry_cvt_to_f32(a->type, x + i0 * (int64_t)es, buf, m);
            for (int64_t i = 0; i < m; i++) buf[i] += s;
            ferry_cvt_from_f32(node->type, buf, y + i0 * (int64_t)es, m);
        }
    }
}

const struct ferry_kernel ferry_kernel_add1 = { check_add1, add1_work_size, add1_compute };

/* ---- ACC, SET: a copy of src0 with src1 added into / written over a view ----
 *
 * P[0..2] are the view's byte strides nb1..nb3 and P[3] its byte offset;
 * nb0 is the element size. ggml reads them as int32 widened to size_t, so
 * negative values wrap and act as negative strides; ferry takes them as
 * signed and requires every element of the view to lie inside the node. */

struct acc_view {
    int64_t st[4]; /* byte strides */
    int64_t off;
    int64_t es;
};

static struct acc_view acc_view_of(const struct ferry_tensor *node) {
    struct acc_view v = { { (int64_t)ferry_type_size(node->type), ferry_param_i32(node, 0),
                            ferry_param_i32(node, 1), ferry_param_i32(node, 2) },
                          ferry_param_i32(node, 3), (int64_t)ferry_type_size(node->type) };
    return v;
}

/* Do distinct elements of the view occupy disjoint bytes? Sufficient test:
 * ordered by stride, each stride spans everything below it. When they may
 * overlap, one thread writes them all in logical order, so the last write
 * wins whatever the thread count. */
static bool acc_view_disjoint(const struct acc_view *v, const int64_t *ne) {
    int dims[4], n = 0;
    for (int d = 0; d < 4; d++)
        if (ne[d] > 1) dims[n++] = d;
    for (int i = 1; i < n; i++) /* insertion sort by |stride| */
        for (int j = i; j > 0 && llabs(v->st[dims[j]]) < llabs(v->st[dims[j - 1]]); j--) {
            int t = dims[j]; dims[j] = dims[j - 1]; dims[j - 1] = t;
        }
    int64_t span = v->es; /* bytes covered by the dims seen so far */
    for (int i = 0; i < n; i++) {
        const int64_t s = llabs(v->st[dims[i]]);
        if (s < span) return false;
        span += (ne[dims[i]] - 1) * s;
    }
    return true;
}

static int check_acc_set(const struct ferry_tensor *node, struct ferry_error *err) {
    const char *name = ferry_op_name(node->op);
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    bool ok;
    if (node->op == FERRY_OP_ACC) {
        ok = a->type == FERRY_TYPE_F32 && b->type == FERRY_TYPE_F32;
    } else {
        /* SET copies 4-byte elements as raw bits, whatever src1's type */
        ok = (a->type == FERRY_TYPE_F32 || a->type == FERRY_TYPE_I32) &&
             (b->type == FERRY_TYPE_F32 || b->type == FERRY_TYPE_I32);
    }
    if (!ok || node->type != a->type)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s, %s -> %s is not supported", name,
                          ferry_type_name(a->type), ferry_type_name(b->type), ferry_type_name(node->type));
    if ((rc = check_same_shape(node, a, node, err)) || (rc = check_contiguous(node, a, "src0", err)) ||
        (rc = check_contiguous(node, node, "output", err)))
        return rc;
    const int32_t inplace = ferry_param_i32(node, 4);
    if (inplace != 0 && inplace != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: in-place flag %d is not 0 or 1", name, (int)inplace);
    if (ferry_is_empty(b)) return FERRY_OK; /* nothing is written through the view */
    /* lowest and highest byte the view touches: bounded by 2^31 * 2^63 terms,
     * so the sums are checked */
    const struct acc_view v = acc_view_of(node);
    int64_t lo = v.off, hi = v.off;
    for (int d = 0; d < 4; d++) {
        int64_t reach;
        if (__builtin_mul_overflow(b->ne[d] - 1, v.st[d], &reach) ||
            __builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi))
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: view strides overflow", name);
    }
    size_t nbytes;
    if (!ferry_nbytes_checked(node, &nbytes))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: output extent overflows", name);
    if (lo < 0 || hi > INT64_MAX - v.es || (uint64_t)(hi + v.es) > (uint64_t)nbytes)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "%s: view (offset %lld, strides %lld/%lld/%lld) reaches bytes %lld..%lld outside the "
                          "output's %zu", name, (long long)v.off, (long long)v.st[1], (long long)v.st[2],
                          (long long)v.st[3], (long long)lo, (long long)(hi + v.es), nbytes);
    return FERRY_OK;
}

/* Element (i0..i3) of src1 into the view: ACC adds src0's element to it. */
static void acc_set_row(const struct ferry_tensor *node, const struct acc_view *v, int64_t i1, int64_t i2,
                        int64_t i3) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t base = v->off + i1 * v->st[1] + i2 * v->st[2] + i3 * v->st[3];
    for (int64_t i0 = 0; i0 < b->ne[0]; i0++) {
        const int64_t o = base + i0 * v->es;
        const char *x = elem(b, i0, i1, i2, i3);
        char *y = (char *)node->data + o;
        if (node->op == FERRY_OP_ACC) st_f32(y, ld_f32((const char *)a->data + o) + ld_f32(x));
        else memcpy(y, x, 4);
    }
}

static void acc_set_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    /* the copy of src0 is made first, by one thread; an in-place node
     * (same memory) needs none. src0 and the node are contiguous. */
    if (node->data != a->data) {
        if (p->ith == 0) memmove(node->data, a->data, ferry_nbytes(node));
        ferry_barrier(p);
    }
    if (ferry_is_empty(b)) return;
    const struct acc_view v = acc_view_of(node);
    const int64_t nr = ferry_nrows(b);
    int64_t r0 = 0, r1 = nr;
    if (acc_view_disjoint(&v, b->ne)) split_range(nr, p->ith, p->nth, &r0, &r1);
    else if (p->ith != 0) return;
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(b, r, &i1, &i2, &i3);
        acc_set_row(node, &v, i1, i2, i3);
    }
}

const struct ferry_kernel ferry_kernel_acc_set = { check_acc_set, NULL, acc_set_compute };

/* ---- DIAG: a vector [n, 1, ne2, ne3] into diagonal matrices [n, n, ne2, ne3] ---- */

static int check_diag(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_types(node, FERRY_TYPE_F32, FERRY_TYPE_F32, err))) return rc;
    if (a->ne[1] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "DIAG: src0 ne1 = %lld, expected 1", (long long)a->ne[1]);
    return check_dst_shape(node, a->ne[0], a->ne[0], a->ne[2], a->ne[3], err);
}

static void diag_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        for (int64_t i0 = 0; i0 < node->ne[0]; i0++)
            st_f32(elem(node, i0, i1, i2, i3), i0 == i1 ? ld_f32(elem(a, i1, 0, i2, i3)) : 0.0f);
    }
}

const struct ferry_kernel ferry_kernel_diag = { check_diag, NULL, diag_compute };

/* ---- DIAG_MASK_ZERO: 0 where column i0 > n_past + row i1 ---- */

static int check_diag_mask_zero(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    if ((rc = check_types(node, FERRY_TYPE_F32, FERRY_TYPE_F32, err)) ||
        (rc = check_same_shape(node, node->src[0], node, err)))
        return rc;
    if (ferry_param_i32(node, 0) < 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "DIAG_MASK_ZERO: n_past %d is negative",
                          (int)ferry_param_i32(node, 0));
    return FERRY_OK;
}

static void diag_mask_zero_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t n_past = ferry_param_i32(node, 0);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        for (int64_t i0 = 0; i0 < node->ne[0]; i0++) {
            const float x = ld_f32(elem(a, i0, i1, i2, i3));
            st_f32(elem(node, i0, i1, i2, i3), i0 > n_past + i1 ? 0.0f : x);
        }
    }
}

const struct ferry_kernel ferry_kernel_diag_mask_zero = { check_diag_mask_zero, NULL, diag_mask_zero_compute };

/* ---- GROUP_NORM: channels (dim 2) in groups, each group of each i3 normalised ----
 *
 * P[0] = n_groups, Pf[1] = eps. A group holds ceil(C / n_groups) channels
 * (the last ones may hold fewer or none). mean and variance are double sums
 * of per-row double sums, divided in double and rounded to f32; the values
 * are centred in f32 and scaled by 1/sqrtf(var + eps). */

static int check_group_norm(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    if ((rc = check_types(node, FERRY_TYPE_F32, FERRY_TYPE_F32, err)) ||
        (rc = check_same_shape(node, node->src[0], node, err)))
        return rc;
    if (ferry_param_i32(node, 0) < 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "GROUP_NORM: n_groups %d is not positive",
                          (int)ferry_param_i32(node, 0));
    return FERRY_OK;
}

/* Channels [*c0, *c1) of group g. */
static void group_channels(const struct ferry_tensor *node, int64_t g, int64_t *c0, int64_t *c1) {
    const int64_t nc = node->src[0]->ne[2], ng = ferry_param_i32(node, 0);
    const int64_t per = (nc + ng - 1) / ng;
    *c0 = g * per < nc ? g * per : nc;
    *c1 = *c0 + per < nc ? *c0 + per : nc;
}

static void group_norm_one(struct ferry_tensor *node, int64_t c0, int64_t c1, int64_t i3) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t ne0 = a->ne[0], ne1 = a->ne[1];
    const double count = (double)(ne0 * ne1 * (c1 - c0));
    double sum = 0.0;
    for (int64_t i2 = c0; i2 < c1; i2++)
        for (int64_t i1 = 0; i1 < ne1; i1++) {
            double row = 0.0;
            for (int64_t i0 = 0; i0 < ne0; i0++) row += (double)ld_f32(elem(a, i0, i1, i2, i3));
            sum += row;
        }
    const float mean = (float)(sum / count);
    double sum2 = 0.0;
    for (int64_t i2 = c0; i2 < c1; i2++)
        for (int64_t i1 = 0; i1 < ne1; i1++) {
            double row = 0.0;
            for (int64_t i0 = 0; i0 < ne0; i0++) {
                const float v = ld_f32(elem(a, i0, i1, i2, i3)) - mean;
                st_f32(elem(node, i0, i1, i2, i3), v);
                row += (double)(v * v);
            }
            sum2 += row;
        }
    const float var = (float)(sum2 / count);
    const float scale = 1.0f / sqrtf(var + ferry_param_f32(node, 1));
    for (int64_t i2 = c0; i2 < c1; i2++)
        for (int64_t i1 = 0; i1 < ne1; i1++)
            for (int64_t i0 = 0; i0 < ne0; i0++) {
                char *y = elem(node, i0, i1, i2, i3);
                st_f32(y, ld_f32(y) * scale);
            }
}

static void group_norm_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const int64_t nc = node->ne[2], ng = ferry_param_i32(node, 0), per = (nc + ng - 1) / ng;
    /* only the groups that hold channels: a huge n_groups costs nothing */
    const int64_t used = (nc + per - 1) / per, ne3 = node->ne[3];
    int64_t j0, j1;
    split_range(used * ne3, p->ith, p->nth, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) {
        int64_t c0, c1;
        group_channels(node, j % used, &c0, &c1);
        if (c0 < c1) group_norm_one(node, c0, c1, j / used);
    }
}

const struct ferry_kernel ferry_kernel_group_norm = { check_group_norm, NULL, group_norm_compute };

/* ---- TIMESTEP_EMBEDDING: [dim, n] of cos/sin of t·freq_j ----
 *
 * P[0] = dim, P[1] = max_period. With half = dim/2, for timestep t (src0's
 * first n elements) and j < half: freq = expf(-logf(max_period)·j/half) in
 * f32, y[j] = cosf(t·freq), y[j+half] = sinf(t·freq); an odd dim ends in 0. */

static int check_timestep_embedding(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    if ((rc = check_types(node, FERRY_TYPE_F32, FERRY_TYPE_F32, err))) return rc;
    const int32_t dim = ferry_param_i32(node, 0);
    if (dim < 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "TIMESTEP_EMBEDDING: dim %d is negative", (int)dim);
    const struct ferry_tensor *a = node->src[0];
    if (ferry_is_empty(a) && a->ne[0] > 0) /* the timesteps are its first ne0 elements */
        return ferry_fail(err, FERRY_ERR_INVALID, "TIMESTEP_EMBEDDING: src0 holds no timesteps");
    return check_dst_shape(node, dim, a->ne[0], 1, 1, err);
}

static void timestep_embedding_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t dim = ferry_param_i32(node, 0), half = dim / 2;
    const float lmax = logf((float)ferry_param_i32(node, 1));
    int64_t r0, r1;
    split_range(a->ne[0], p->ith, p->nth, &r0, &r1);
    for (int64_t i = r0; i < r1; i++) {
        const float t = ld_f32(elem(a, i, 0, 0, 0));
        for (int64_t j = 0; j < half; j++) {
            const float freq = expf(-lmax * (float)j / (float)half);
            const float arg = t * freq;
            st_f32(elem(node, j, i, 0, 0), cosf(arg));
            st_f32(elem(node, j + half, i, 0, 0), sinf(arg));
        }
        if (dim % 2 != 0) st_f32(elem(node, 2 * half, i, 0, 0), 0.0f);
    }
}

const struct ferry_kernel ferry_kernel_timestep_embedding = { check_timestep_embedding, NULL,
                                                              timestep_embedding_compute };

/* ---- SOLVE_TRI: X with A·X = B, A lower triangular, by forward substitution ----
 *
 * A [n, n, B2, B3] (row i holds A[i][t] at element (t, i)), B and X
 * [k, n, B2, B3]. For each column c: X[i][c] = (B[i][c] − Σ_{t<i} A[i][t]·X[t][c])
 * / A[i][i], the sum in f32 in order of t. A zero diagonal gives inf/NaN as
 * IEEE division does. */

static int check_solve_tri(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (a->type != FERRY_TYPE_F32 || b->type != FERRY_TYPE_F32 || node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SOLVE_TRI: %s, %s -> %s is not supported",
                          ferry_type_name(a->type), ferry_type_name(b->type), ferry_type_name(node->type));
    if (a->ne[0] != a->ne[1] || a->ne[1] != b->ne[1] || a->ne[2] != b->ne[2] || a->ne[3] != b->ne[3])
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "SOLVE_TRI: A [%lld,%lld,%lld,%lld] is not square or does not match B [%lld,%lld,%lld,%lld]",
                          (long long)a->ne[0], (long long)a->ne[1], (long long)a->ne[2], (long long)a->ne[3],
                          (long long)b->ne[0], (long long)b->ne[1], (long long)b->ne[2], (long long)b->ne[3]);
    return check_same_shape(node, b, node, err);
}

static void solve_tri_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t k = b->ne[0], n = b->ne[1], nb2 = b->ne[2];
    int64_t j0, j1;
    split_range(k * nb2 * b->ne[3], p->ith, p->nth, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) { /* one column of one batch */
        const int64_t c = j % k, i2 = (j / k) % nb2, i3 = j / (k * nb2);
        for (int64_t i = 0; i < n; i++) {
            float sum = 0.0f;
            for (int64_t t = 0; t < i; t++)
                sum += ld_f32(elem(a, t, i, i2, i3)) * ld_f32(elem(node, c, t, i2, i3));
            const float x = (ld_f32(elem(b, c, i, i2, i3)) - sum) / ld_f32(elem(a, i, i, i2, i3));
            st_f32(elem(node, c, i, i2, i3), x);
        }
    }
}

const struct ferry_kernel ferry_kernel_solve_tri = { check_solve_tri, NULL, solve_tri_compute };
