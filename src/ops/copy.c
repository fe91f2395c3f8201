/* DUP, CPY and CONT (docs/ops.md B.2): copy src0 into the node element by
 * element in logical (flat) order, converting the type on the way.
 *
 * Four kinds of copy:
 *  - raw:        same type, any type; element bytes (whole blocks for
 *                quantized types) are moved unchanged;
 *  - convert:    between F32, F16, BF16, and F32 <-> I32;
 *  - quantize:   F32/F16/BF16 rows into a contiguous quantized node;
 *  - dequantize: quantized blocks into an F32 node.
 * Both sides are walked through their own ne/nb; the shapes may differ as
 * long as the element counts agree. For CPY the node is the destination (a
 * view of src1, possibly src1 itself: ggml_cast). */
#include <stdlib.h>

#include "common.h"
#include "convert.h"

enum copy_kind { COPY_RAW, COPY_CONVERT, COPY_QUANTIZE, COPY_DEQUANTIZE, COPY_NONE };

static enum copy_kind copy_kind(enum ferry_type st, enum ferry_type dt) {
    const struct ferry_type_traits *s = ferry_type_traits(st), *d = ferry_type_traits(dt);
    if (st == dt) return COPY_RAW;
    if (is_float_type(st) && is_float_type(dt)) return COPY_CONVERT;
    if ((st == FERRY_TYPE_F32 && dt == FERRY_TYPE_I32) || (st == FERRY_TYPE_I32 && dt == FERRY_TYPE_F32))
        return COPY_CONVERT;
    if (is_float_type(st) && d->is_quantized && d->from_float) return COPY_QUANTIZE;
    if (s->is_quantized && s->to_float && dt == FERRY_TYPE_F32) return COPY_DEQUANTIZE;
    return COPY_NONE;
}

static int dup_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, node->op == FERRY_OP_CPY ? 2 : 1, err);
    if (rc) return rc;
    const struct ferry_tensor *src = node->src[0];
    if (node->op == FERRY_OP_CPY) {
        const struct ferry_tensor *dst = node->src[1];
        if (dst != node && (dst->type != node->type || !ferry_same_shape(dst, node)))
            return ferry_fail(err, FERRY_ERR_INVALID, "CPY: the node must be a view of src1");
    }
    if (ferry_nelements(src) != ferry_nelements(node))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %lld elements copied into %lld",
                          ferry_op_name(node->op), (long long)ferry_nelements(src),
                          (long long)ferry_nelements(node));
    switch (copy_kind(src->type, node->type)) {
    case COPY_RAW:
    case COPY_CONVERT:
        return FERRY_OK;
    case COPY_QUANTIZE:
        /* one source row becomes row_size(ne00) bytes of the node */
        if ((rc = check_contiguous(node, node, "quantized output", err)) ||
            (rc = check_rows_contiguous(node, src, "src0", err)))
            return rc;
        if (src->ne[0] % ferry_blck_size(node->type) != 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: src0 rows of %lld are not whole %s blocks",
                              ferry_op_name(node->op), (long long)src->ne[0],
                              ferry_type_name(node->type));
        return FERRY_OK;
    case COPY_DEQUANTIZE:
        /* each block lands on blck consecutive floats of the node */
        if ((rc = check_rows_contiguous(node, src, "src0", err))) return rc;
        if (node->nb[0] != sizeof(float) ||
            (node->ne[0] % ferry_blck_size(src->type) != 0 && !ferry_is_contiguous(node)))
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                              "%s: a dequantized %s block must land on consecutive floats",
                              ferry_op_name(node->op), ferry_type_name(src->type));
        return FERRY_OK;
    default:
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: no conversion from %s to %s",
                          ferry_op_name(node->op), ferry_type_name(src->type),
                          ferry_type_name(node->type));
    }
}

/* Scratch for one f32 row per thread, 64-byte aligned slots. */
static size_t row_slot_bytes(int64_t ne0) {
    size_t b;
    if (__builtin_mul_overflow((size_t)ne0, sizeof(float), &b) || b > SIZE_MAX - 63) return SIZE_MAX;
    return (b + 63) & ~(size_t)63;
}

static size_t dup_work_size(const struct ferry_tensor *node, int nth) {
    const struct ferry_tensor *src = node->src[0];
    if (copy_kind(src->type, node->type) != COPY_QUANTIZE || src->type == FERRY_TYPE_F32) return 0;
    size_t slot = row_slot_bytes(src->ne[0]), total;
    if (slot == SIZE_MAX || __builtin_mul_overflow(slot, (size_t)nth, &total)) return SIZE_MAX;
    return total;
}

/* A position in a tensor walked in flat order, in units of elements, or of
 * blocks along dim 0 for quantized raw copies. */
struct walker {
    char *base;
    int64_t ne[4];
    size_t nb[4];
    int64_t i[4];
};

static void walker_init(struct walker *w, const struct ferry_tensor *t, int64_t unit, int64_t k) {
    w->base = t->data;
    for (int d = 0; d < 4; d++) {
        w->ne[d] = d == 0 ? t->ne[0] / unit : t->ne[d];
        w->nb[d] = t->nb[d];
    }
    for (int d = 0; d < 3; d++) {
        w->i[d] = k % w->ne[d];
        k /= w->ne[d];
    }
    w->i[3] = k;
}

static char *walker_ptr(const struct walker *w) {
    return w->base + w->i[0] * (int64_t)w->nb[0] + w->i[1] * (int64_t)w->nb[1] +
           w->i[2] * (int64_t)w->nb[2] + w->i[3] * (int64_t)w->nb[3];
}

/* Units left in the current row. */
static int64_t walker_row_left(const struct walker *w) { return w->ne[0] - w->i[0]; }

static void walker_advance(struct walker *w, int64_t m) {
    w->i[0] += m;
    if (w->i[0] < w->ne[0]) return;
    w->i[0] = 0;
    for (int d = 1; d < 4; d++) {
        if (++w->i[d] < w->ne[d] || d == 3) return;
        w->i[d] = 0;
    }
}

static int64_t min3(int64_t a, int64_t b, int64_t c) {
    int64_t m = a < b ? a : b;
    return m < c ? m : c;
}

/* Raw and converting copies: this thread's share of the flat units, moved
 * in runs that stay inside one row of each side. */
static void copy_elements(const struct ferry_compute_params *p, struct ferry_tensor *node,
                          const struct ferry_tensor *src) {
    int64_t unit = ferry_blck_size(src->type); /* raw copies move whole blocks */
    int64_t n = ferry_nelements(node) / unit, k0, k1;
    split_range(n, p->ith, p->nth, &k0, &k1);
    if (k0 >= k1) return;
    if (src->type == node->type && ferry_is_contiguous(src) && ferry_is_contiguous(node)) {
        size_t ts = ferry_type_size(src->type);
        memmove((char *)node->data + k0 * ts, (const char *)src->data + k0 * ts, (size_t)(k1 - k0) * ts);
        return;
    }
    struct walker s, d;
    walker_init(&s, src, unit, k0);
    walker_init(&d, node, unit, k0);
    for (int64_t k = k0; k < k1;) {
        int64_t m = min3(k1 - k, walker_row_left(&s), walker_row_left(&d));
        ferry_cvt_strided(src->type, walker_ptr(&s), s.nb[0], node->type, walker_ptr(&d), d.nb[0], m);
        walker_advance(&s, m);
        walker_advance(&d, m);
        k += m;
    }
}

/* F32/F16/BF16 source rows quantized into consecutive rows of the node. */
static void copy_quantize(const struct ferry_compute_params *p, struct ferry_tensor *node,
                          const struct ferry_tensor *src) {
    ferry_from_float_fn quantize = ferry_type_traits(node->type)->from_float;
    int64_t ne00 = src->ne[0], r0, r1;
    size_t row_bytes = ferry_row_size(node->type, ne00);
    float *buf = (float *)((char *)p->wdata + (size_t)p->ith * row_slot_bytes(ne00));
    split_range(ferry_nrows(src), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(src, r, &i1, &i2, &i3);
        const void *row = tensor_row(src, i1, i2, i3);
        char *out = (char *)node->data + r * (int64_t)row_bytes;
        if (src->type == FERRY_TYPE_F32) {
            quantize(row, out, ne00);
        } else {
            ferry_cvt_to_f32(src->type, row, buf, ne00);
            quantize(buf, out, ne00);
        }
    }
}

/* Quantized source rows dequantized into the node, whose floats for one
 * block are consecutive (checked). */
static void copy_dequantize(const struct ferry_compute_params *p, struct ferry_tensor *node,
                            const struct ferry_tensor *src) {
    ferry_to_float_fn dequantize = ferry_type_traits(src->type)->to_float;
    int64_t ne00 = src->ne[0], blck = ferry_blck_size(src->type), r0, r1;
    size_t bsize = ferry_type_size(src->type);
    bool flat = ferry_is_contiguous(node);
    split_range(ferry_nrows(src), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(src, r, &i1, &i2, &i3);
        const char *row = tensor_row(src, i1, i2, i3);
        if (flat) {
            dequantize(row, (float *)node->data + r * ne00, ne00);
            continue;
        }
        struct walker d;
        walker_init(&d, node, 1, r * ne00);
        for (int64_t done = 0; done < ne00;) {
            int64_t m = ne00 - done < walker_row_left(&d) ? ne00 - done : walker_row_left(&d);
            dequantize(row + (done / blck) * (int64_t)bsize, (float *)walker_ptr(&d), m);
            walker_advance(&d, m);
            done += m;
        }
    }
}

static void dup_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *src = node->src[0];
    switch (copy_kind(src->type, node->type)) {
    case COPY_RAW:
    case COPY_CONVERT: copy_elements(p, node, src); break;
    case COPY_QUANTIZE: copy_quantize(p, node, src); break;
    case COPY_DEQUANTIZE: copy_dequantize(p, node, src); break;
    default: break;
    }
}

const struct ferry_kernel ferry_kernel_dup = { dup_check, dup_work_size, dup_compute };
