/* GET_ROWS (docs/ops.md B.3) gathers table rows by index; SET_ROWS (B.4)
 * scatters rows into a destination (a KV cache) by index.
 *
 * Indices are data: each one is checked against the table / destination
 * before it is used, and a bad one fails the graph (ferry_op_fail) while
 * its row is skipped. */
#include <stdlib.h>

#include "common.h"
#include "convert.h"

/* ---- GET_ROWS: dst[:, i10, i11, i12] = f32(a[:, b[i10, i11, i12], i11, i12]) ---- */

static int get_rows_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (!ferry_type_traits(a->type)->to_float)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GET_ROWS: cannot read %s rows",
                          ferry_type_name(a->type));
    if (b->type != FERRY_TYPE_I32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GET_ROWS: indices must be i32, not %s",
                          ferry_type_name(b->type));
    enum ferry_type want = a->type == FERRY_TYPE_I32 ? FERRY_TYPE_I32 : FERRY_TYPE_F32;
    if (node->type != want)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "GET_ROWS: output must be %s, not %s",
                          ferry_type_name(want), ferry_type_name(node->type));
    if (b->ne[3] != 1 || a->ne[2] != b->ne[1] || a->ne[3] != b->ne[2])
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "GET_ROWS: index shape [%lld,%lld,%lld,%lld] does not fit the table",
                          (long long)b->ne[0], (long long)b->ne[1], (long long)b->ne[2],
                          (long long)b->ne[3]);
    if ((rc = check_dst_shape(node, a->ne[0], b->ne[0], b->ne[1], b->ne[2], err)) ||
        (rc = check_rows_contiguous(node, a, "table", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static void get_rows_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    ferry_to_float_fn to_float = ferry_type_traits(a->type)->to_float;
    const int64_t ne0 = a->ne[0], n_idx = b->ne[0] * b->ne[1] * b->ne[2];
    int64_t j0, j1;
    split_range(n_idx, p->ith, p->nth, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) {
        const int64_t i10 = j % b->ne[0], i11 = (j / b->ne[0]) % b->ne[1], i12 = j / (b->ne[0] * b->ne[1]);
        int32_t r;
        memcpy(&r, tensor_at(b, i10, i11, i12, 0), sizeof r);
        if (r < 0 || r >= a->ne[1]) {
            ferry_op_fail(p, FERRY_ERR_INVALID, "GET_ROWS: index %d out of range [0, %lld)", (int)r,
                          (long long)a->ne[1]);
            continue;
        }
        const void *row = tensor_row(a, r, i11, i12);
        void *out = tensor_row(node, i10, i11, i12);
        if (a->type == FERRY_TYPE_F32 || a->type == FERRY_TYPE_I32)
            memcpy(out, row, (size_t)ne0 * 4); /* I32 tables copy exactly */
        else if (ferry_cvt_plain_type(a->type))
            ferry_cvt_to_f32(a->type, row, out, ne0);
        else
            to_float(row, out, ne0);
    }
}

const struct ferry_kernel ferry_kernel_get_rows = { get_rows_check, NULL, get_rows_compute };

/* ---- SET_ROWS: dst[:, c[i, i02 % c.ne1, i03 % c.ne2], i02, i03] = b[:, i, i02, i03] ----
 *
 * The node is the destination (a view of src2). Work is split by
 * destination row, not by source row: thread ith owns the destination rows
 * whose flat index is ith modulo nth and scans all indices in order. So a
 * row named twice gets the last write whatever the thread count, and no two
 * threads ever write the same row. Consecutive indices, the KV-cache case,
 * spread evenly. */

static bool set_rows_raw(const struct ferry_tensor *node) {
    return node->src[0]->type == node->type; /* F16 -> F16 (or F32 -> F32) */
}

static int set_rows_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *b = node->src[0], *c = node->src[1], *a = node->src[2];
    if (a != node && (a->type != node->type || !ferry_same_shape(a, node)))
        return ferry_fail(err, FERRY_ERR_INVALID, "SET_ROWS: the node must be a view of src2");
    if (b->type != FERRY_TYPE_F32 && b->type != FERRY_TYPE_F16)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SET_ROWS: source rows must be f32 or f16, not %s",
                          ferry_type_name(b->type));
    if (c->type != FERRY_TYPE_I64 && c->type != FERRY_TYPE_I32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SET_ROWS: indices must be i64 or i32, not %s",
                          ferry_type_name(c->type));
    if (!set_rows_raw(node) && !ferry_type_traits(node->type)->from_float)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "SET_ROWS: cannot write %s rows",
                          ferry_type_name(node->type));
    bool fits = node->ne[0] == b->ne[0] && node->ne[2] == b->ne[2] && node->ne[3] == b->ne[3] &&
                b->ne[1] == c->ne[0] && c->ne[3] == 1;
    /* index broadcasting by modulo needs non-empty index dims */
    if (fits && !ferry_is_empty(b))
        fits = c->ne[1] > 0 && c->ne[2] > 0 && b->ne[2] % c->ne[1] == 0 && b->ne[3] % c->ne[2] == 0;
    if (!fits)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "SET_ROWS: shapes do not fit: dst [%lld,%lld,%lld,%lld], src0 "
                          "[%lld,%lld,%lld,%lld], indices [%lld,%lld,%lld,%lld]",
                          (long long)node->ne[0], (long long)node->ne[1], (long long)node->ne[2],
                          (long long)node->ne[3], (long long)b->ne[0], (long long)b->ne[1],
                          (long long)b->ne[2], (long long)b->ne[3], (long long)c->ne[0],
                          (long long)c->ne[1], (long long)c->ne[2], (long long)c->ne[3]);
    if ((rc = check_rows_contiguous(node, b, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

/* An f32 scratch row per thread when an F16 source must be widened first. */
static size_t set_rows_slot_bytes(const struct ferry_tensor *node) {
    if (node->src[0]->type == FERRY_TYPE_F32 || set_rows_raw(node)) return 0;
    size_t b;
    if (__builtin_mul_overflow((size_t)node->ne[0], sizeof(float), &b) || b > SIZE_MAX - 63)
        return SIZE_MAX;
    return (b + 63) & ~(size_t)63;
}

static size_t set_rows_work_size(const struct ferry_tensor *node, int nth) {
    size_t slot = set_rows_slot_bytes(node), total;
    if (slot == SIZE_MAX || __builtin_mul_overflow(slot, (size_t)nth, &total)) return SIZE_MAX;
    return total;
}

static int64_t read_index(const struct ferry_tensor *c, int64_t i, int64_t j, int64_t k) {
    const void *at = tensor_at(c, i, j, k, 0);
    if (c->type == FERRY_TYPE_I64) {
        int64_t v;
        memcpy(&v, at, sizeof v);
        return v;
    }
    int32_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

static void set_one_row(struct ferry_tensor *node, const void *src_row, void *dst_row, float *buf) {
    const struct ferry_tensor *b = node->src[0];
    const int64_t ne0 = node->ne[0];
    if (set_rows_raw(node)) {
        memmove(dst_row, src_row, (size_t)ne0 * ferry_type_size(node->type));
        return;
    }
    const float *x = src_row;
    if (b->type != FERRY_TYPE_F32) {
        ferry_cvt_to_f32(b->type, src_row, buf, ne0);
        x = buf;
    }
    if (ferry_cvt_plain_type(node->type))
        ferry_cvt_from_f32(node->type, x, dst_row, ne0); /* the vectorised f16 path */
    else
        ferry_type_traits(node->type)->from_float(x, dst_row, ne0);
}

static void set_rows_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *b = node->src[0], *c = node->src[1];
    if (ferry_is_empty(b)) return;
    float *buf = (float *)((char *)p->wdata + (size_t)p->ith * set_rows_slot_bytes(node));
    for (int64_t i03 = 0; i03 < b->ne[3]; i03++) {
        for (int64_t i02 = 0; i02 < b->ne[2]; i02++) {
            const int64_t slice = node->ne[1] * (i02 + node->ne[2] * i03);
            for (int64_t i = 0; i < b->ne[1]; i++) {
                int64_t r = read_index(c, i, i02 % c->ne[1], i03 % c->ne[2]);
                if (r < 0 || r >= node->ne[1]) {
                    ferry_op_fail(p, FERRY_ERR_INVALID, "SET_ROWS: index %lld out of range [0, %lld)",
                                  (long long)r, (long long)node->ne[1]);
                    continue;
                }
                if ((slice + r) % p->nth != p->ith) continue;
                set_one_row(node, tensor_row(b, i, i02, i03), tensor_row(node, r, i02, i03), buf);
            }
        }
    }
}

const struct ferry_kernel ferry_kernel_set_rows = { set_rows_check, set_rows_work_size,
                                                     set_rows_compute };
