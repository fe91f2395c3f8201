/* Losses and metrics of training graphs (docs/ops.md B.25):
 * CROSS_ENTROPY_LOSS, CROSS_ENTROPY_LOSS_BACK and COUNT_EQUAL.
 *
 * The two reductions to one value never depend on the thread count:
 * CROSS_ENTROPY_LOSS sums fixed blocks of rows in double, one block per
 * thread at a time, and thread 0 adds the block sums in block order;
 * COUNT_EQUAL's partial counts are integers, exact in any order. */
#include <math.h>

#include "common.h"
#include "family_train.h"
#include "rowvec.h"
#include "scratch.h"

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };

static bool is_scalar(const struct ferry_tensor *t) {
    return t->ne[0] == 1 && t->ne[1] == 1 && t->ne[2] == 1 && t->ne[3] == 1;
}

/* src[first] and src[first+1] are F32 of one shape with contiguous rows. */
static int check_logits_labels(const struct ferry_tensor *node, int first, struct ferry_error *err) {
    const struct ferry_tensor *a = node->src[first], *b = node->src[first + 1];
    int rc;
    if ((rc = check_type_in(node, "logits", a->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "labels", b->type, f32_only, 1, err)) ||
        (rc = check_same_shape(node, a, b, err)) || (rc = check_rows_contiguous(node, a, "logits", err)) ||
        (rc = check_rows_contiguous(node, b, "labels", err)))
        return rc;
    return FERRY_OK;
}

/* ---- CROSS_ENTROPY_LOSS: src0 = logits, src1 = labels (probabilities);
 * loss = -(1/rows) Σ_rows Σ_i labels_i · log_softmax(logits)_i ---- */

enum { CE_BLOCK_ROWS = 32 };

static int64_t ce_blocks(const struct ferry_tensor *node) {
    const int64_t nr = ferry_nrows(node->src[0]);
    return nr / CE_BLOCK_ROWS + (nr % CE_BLOCK_ROWS != 0);
}

static int check_cross_entropy(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc || (rc = check_logits_labels(node, 0, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)))
        return rc;
    if (!is_scalar(node))
        return ferry_fail(err, FERRY_ERR_INVALID, "CROSS_ENTROPY_LOSS: the output must be one value");
    return FERRY_OK;
}

static size_t cross_entropy_work_size(const struct ferry_tensor *node, int nth) {
    (void)nth;
    return scratch_size(1, (size_t)ce_blocks(node), sizeof(double));
}

/* One row's Σ labels_i · (x_i - max - log Σ exp(x_j - max)), with ggml's
 * steps: libm expf summed in double, the log in f32, each term in f32,
 * the terms summed in double and rounded to f32. */
static float ce_row(const float *x, const float *y, int64_t n) {
    const float max = rowvec_max(x, n);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)expf(x[i] - max);
    const float neg_lse = -logf((float)sum);
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) acc += (double)(((x[i] - max) + neg_lse) * y[i]);
    return (float)acc;
}

static void cross_entropy_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t nr = ferry_nrows(a), nblocks = ce_blocks(node);
    double *partial = p->wdata;
    if (p->wsize / sizeof(double) < (size_t)nblocks) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "CROSS_ENTROPY_LOSS: scratch too small");
        return;
    }
    int64_t b0, b1;
    split_range(nblocks, p->ith, p->nth, &b0, &b1);
    for (int64_t k = b0; k < b1; k++) {
        const int64_t end = (k + 1) * CE_BLOCK_ROWS < nr ? (k + 1) * CE_BLOCK_ROWS : nr;
        double acc = 0.0;
        for (int64_t r = k * CE_BLOCK_ROWS; r < end; r++) {
            int64_t i1, i2, i3;
            row_coords(a, r, &i1, &i2, &i3);
            acc += (double)ce_row(tensor_row(a, i1, i2, i3), tensor_row(b, i1, i2, i3), a->ne[0]);
        }
        partial[k] = acc;
    }
    ferry_barrier(p);
    if (p->ith != 0) return;
    double total = 0.0;
    for (int64_t k = 0; k < nblocks; k++) total += partial[k];
    /* ggml's f32 scaling; no rows gives NaN (0 · -inf), as in ggml */
    const float loss = (float)total * (-1.0f / (float)nr);
    memcpy(node->data, &loss, sizeof loss);
}

const struct ferry_kernel ferry_kernel_cross_entropy = { check_cross_entropy, cross_entropy_work_size,
                                                          cross_entropy_compute };

/* ---- CROSS_ENTROPY_LOSS_BACK: src0 = d(loss) (one F32 value),
 * src1 = logits, src2 = labels; dx = (softmax(logits) - labels) · d / rows ---- */

static int check_cross_entropy_back(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *d = node->src[0];
    if ((rc = check_type_in(node, "src0", d->type, f32_only, 1, err))) return rc;
    if (!is_scalar(d))
        return ferry_fail(err, FERRY_ERR_INVALID, "CROSS_ENTROPY_LOSS_BACK: src0 must be one value");
    if ((rc = check_logits_labels(node, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32_only, 1, err)) ||
        (rc = check_same_shape(node, node->src[1], node, err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static void cross_entropy_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[1], *b = node->src[2];
    const int64_t nr = ferry_nrows(a), n = a->ne[0];
    float d;
    memcpy(&d, node->src[0]->data, sizeof d);
    const float d_by_nr = d / (float)nr;
    int64_t r0, r1;
    split_range(nr, p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        const float *x = tensor_row(a, i1, i2, i3), *y = tensor_row(b, i1, i2, i3);
        float *dx = tensor_row(node, i1, i2, i3);
        /* softmax with SOFT_MAX's exp and sum (B.16), then the difference */
        const double sum = rowvec_exp_sum(dx, x, n, rowvec_max(x, n));
        rowvec_scale(dx, dx, n, (float)(1.0 / sum));
        for (int64_t i = 0; i < n; i++) dx[i] = (dx[i] - y[i]) * d_by_nr;
    }
}

const struct ferry_kernel ferry_kernel_cross_entropy_back = { check_cross_entropy_back, NULL,
                                                               cross_entropy_back_compute };

/* ---- COUNT_EQUAL: how many elements of two I32 tensors are equal, as
 * one I64 ---- */

static int check_count_equal(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type i32[] = { FERRY_TYPE_I32 }, i64[] = { FERRY_TYPE_I64 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if ((rc = check_type_in(node, "src0", a->type, i32, 1, err)) ||
        (rc = check_type_in(node, "src1", b->type, i32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, i64, 1, err)) || (rc = check_same_shape(node, a, b, err)))
        return rc;
    if (!is_scalar(node)) return ferry_fail(err, FERRY_ERR_INVALID, "COUNT_EQUAL: the output must be one value");
    return FERRY_OK;
}

static size_t count_equal_work_size(const struct ferry_tensor *node, int nth) {
    (void)node;
    return scratch_size(nth, 1, sizeof(int64_t));
}

static void count_equal_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    int64_t *mine = scratch_slice(p, 1, sizeof(int64_t));
    if (!mine) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "COUNT_EQUAL: scratch too small");
        return;
    }
    int64_t r0, r1, count = 0;
    split_range(ferry_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3), *y = tensor_row(b, i1, i2, i3);
        for (int64_t i = 0; i < a->ne[0]; i++) {
            int32_t u, v;
            memcpy(&u, x + i * (int64_t)a->nb[0], sizeof u);
            memcpy(&v, y + i * (int64_t)b->nb[0], sizeof v);
            count += u == v;
        }
    }
    *mine = count;
    ferry_barrier(p);
    if (p->ith != 0) return;
    int64_t total = 0;
    for (int t = 0; t < p->nth; t++) {
        const int64_t *slot = (const int64_t *)((const char *)p->wdata + (size_t)t * scratch_slice_bytes(1, sizeof(int64_t)));
        total += *slot;
    }
    memcpy(node->data, &total, sizeof total);
}

const struct ferry_kernel ferry_kernel_count_equal = { check_count_equal, count_equal_work_size, count_equal_compute };
