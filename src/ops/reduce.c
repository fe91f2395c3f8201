/* Reductions along dim 0 (docs/ops.md B.9, B.22): SUM, SUM_ROWS, MEAN and CUMSUM;
 * ARGMAX; ARGSORT and TOP_K.
 *
 * Sums accumulate in double, one row at a time and in index order, as
 * ggml's do; CUMSUM runs in f32. Inputs may have any strides: elements are
 * read through nb with memcpy, so no alignment is assumed. Sorting is
 * deterministic: ARGSORT is a stable merge sort (ties keep index order),
 * TOP_K keeps the k best by (value, then lower index) and returns them best
 * first. */
#include "common.h"
#include "convert.h"
#include "scratch.h"

static inline float get_f32(const char *p) { float v; memcpy(&v, p, sizeof v); return v; }
static inline void put_f32(char *p, float v) { memcpy(p, &v, sizeof v); }
static inline void put_i32(char *p, int32_t v) { memcpy(p, &v, sizeof v); }

static const enum ferry_type f32_only[] = { FERRY_TYPE_F32 };
static const enum ferry_type i32_only[] = { FERRY_TYPE_I32 };

/* src0 F32 and the output of type out_type, both with sane headers. */
static int check_f32_source(const struct ferry_tensor *node, const enum ferry_type *out_type,
                            struct ferry_error *err) {
    int rc = check_src_count(node, 1, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_type_in(node, "src0", a->type, f32_only, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, out_type, 1, err)))
        return rc;
    return FERRY_OK;
}

/* Rows of a tensor are indexed with int32 by the index-producing ops. */
static int check_index_range(const struct ferry_tensor *node, int64_t n, struct ferry_error *err) {
    if (n > INT32_MAX)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: rows of %lld elements exceed int32 indices",
                          ferry_op_name(node->op), (long long)n);
    return FERRY_OK;
}

/* ---- SUM, SUM_ROWS, MEAN, CUMSUM ---- */

static int check_sum(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_source(node, f32_only, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    switch (node->op) {
    case FERRY_OP_SUM: return check_dst_shape(node, 1, 1, 1, 1, err);
    case FERRY_OP_SUM_ROWS:
    case FERRY_OP_MEAN: return check_dst_shape(node, 1, a->ne[1], a->ne[2], a->ne[3], err);
    default: return check_same_shape(node, a, node, err); /* CUMSUM */
    }
}

static double row_sum(const struct ferry_tensor *a, int64_t i1, int64_t i2, int64_t i3) {
    const char *x = tensor_row(a, i1, i2, i3);
    double sum = 0.0;
    for (int64_t i = 0; i < a->ne[0]; i++) sum += (double)get_f32(x + i * (int64_t)a->nb[0]);
    return sum;
}

/* y_i = y_(i-1) + x_i in f32, y_0 = x_0. */
static void cumsum_row(char *y, size_t sy, const char *x, size_t sx, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = get_f32(x + i * (int64_t)sx);
        acc = i == 0 ? v : acc + v;
        put_f32(y + i * (int64_t)sy, acc);
    }
}

/* ggml's SUM reads every row as ne0 packed floats from the row's start,
 * whatever nb0 says (its CPU kernel only asserts nb0 == 4, and release
 * builds drop the assert): a client summing a transposed view gets the
 * sum of those packed windows. ferry gives the same number where those
 * reads stay inside the source's own extent, and the sum by nb0
 * otherwise (docs/ops.md B.9). */
static bool sum_reads_packed(const struct ferry_tensor *a) {
    if (a->nb[0] == sizeof(float) || ferry_is_empty(a)) return false;
    size_t last = 0, extent;
    for (int d = 1; d < FERRY_MAX_DIMS; d++) last += (size_t)(a->ne[d] - 1) * a->nb[d];
    return ferry_nbytes_checked(a, &extent) && last <= extent &&
           (size_t)a->ne[0] <= (extent - last) / sizeof(float);
}

static double packed_row_sum(const struct ferry_tensor *a, int64_t i1, int64_t i2, int64_t i3) {
    const char *x = tensor_row(a, i1, i2, i3);
    double sum = 0.0;
    for (int64_t i = 0; i < a->ne[0]; i++) sum += (double)get_f32(x + i * (int64_t)sizeof(float));
    return sum;
}

static void sum_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    if (node->op == FERRY_OP_SUM) {
        /* one output: one thread, rows in order, so the rounding is fixed */
        if (p->ith != 0) return;
        const bool packed = sum_reads_packed(a);
        double total = 0.0;
        for (int64_t i3 = 0; i3 < a->ne[3]; i3++)
            for (int64_t i2 = 0; i2 < a->ne[2]; i2++)
                for (int64_t i1 = 0; i1 < a->ne[1]; i1++)
                    total += packed ? packed_row_sum(a, i1, i2, i3) : row_sum(a, i1, i2, i3);
        put_f32(node->data, (float)total);
        return;
    }
    int64_t r0, r1;
    split_range(ferry_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        char *y = tensor_row(node, i1, i2, i3);
        switch (node->op) {
        case FERRY_OP_SUM_ROWS: put_f32(y, (float)row_sum(a, i1, i2, i3)); break;
        case FERRY_OP_MEAN: /* an empty row gives 0/0 = NaN, as in ggml */
            put_f32(y, (float)row_sum(a, i1, i2, i3) / (float)a->ne[0]);
            break;
        default:
            cumsum_row(y, node->nb[0], tensor_row(a, i1, i2, i3), a->nb[0], a->ne[0]);
            break;
        }
    }
}

const struct ferry_kernel ferry_kernel_sum = { check_sum, NULL, sum_compute };

/* ---- ARGMAX ---- */

static int check_argmax(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_source(node, i32_only, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if (a->ne[2] != 1 || a->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "ARGMAX: src0 must be a matrix");
    if ((rc = check_dst_shape(node, a->ne[1], 1, 1, 1, err)) ||
        (rc = check_index_range(node, a->ne[0], err)))
        return rc;
    if (a->ne[0] == 0 && a->ne[1] > 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "ARGMAX: rows are empty, there is no maximum");
    return FERRY_OK;
}

/* max = MAX(max, x) and the index taken when max == x: ties go to the last. */
static int32_t argmax_row(const char *x, size_t sx, int64_t n) {
    float max = -INFINITY;
    int32_t idx = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = get_f32(x + i * (int64_t)sx);
        max = max > v ? max : v;
        if (max == v) idx = (int32_t)i;
    }
    return idx;
}

static void argmax_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    int64_t r0, r1;
    split_range(a->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t i1 = r0; i1 < r1; i1++)
        put_i32((char *)node->data + i1 * (int64_t)node->nb[0],
                argmax_row(tensor_row(a, i1, 0, 0), a->nb[0], a->ne[0]));
}

const struct ferry_kernel ferry_kernel_argmax = { check_argmax, NULL, argmax_compute };

/* ---- ARGSORT, TOP_K ---- */

static int check_argsort(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_f32_source(node, i32_only, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0];
    if ((rc = check_index_range(node, a->ne[0], err))) return rc;
    if (node->op == FERRY_OP_TOP_K) {
        if (node->ne[0] > a->ne[0])
            return ferry_fail(err, FERRY_ERR_INVALID, "TOP_K: k = %lld exceeds the row length %lld",
                              (long long)node->ne[0], (long long)a->ne[0]);
        return check_dst_shape(node, node->ne[0], a->ne[1], a->ne[2], a->ne[3], err);
    }
    int32_t order = ferry_param_i32(node, 0);
    if (order != 0 && order != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "ARGSORT: order %d is neither 0 (asc) nor 1 (desc)",
                          (int)order);
    return check_same_shape(node, a, node, err);
}

/* Per thread: the row's values, then int32 room for the sort (two index
 * arrays) or the heap (k entries). */
static size_t sort_scratch_bytes(const struct ferry_tensor *node) {
    const size_t n = (size_t)node->src[0]->ne[0];
    const size_t idx = node->op == FERRY_OP_TOP_K ? (size_t)node->ne[0] : 2 * n;
    size_t total;
    if (n > SIZE_MAX / 16 || __builtin_add_overflow(n, idx, &total)) return SIZE_MAX / 2;
    return total * 4;
}

static size_t argsort_work_size(const struct ferry_tensor *node, int nth) {
    return scratch_size(nth, sort_scratch_bytes(node), 1);
}

/* Stable merge sort of idx[0..n) by v[idx], ascending or descending; tmp
 * has room for n. Returns the array holding the result (idx or tmp). */
static int32_t *merge_sort(int32_t *idx, int32_t *tmp, int64_t n, const float *v, bool desc) {
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) {
                float a = v[idx[i]], b = v[idx[j]];
                /* take from the right run only when strictly before: stable */
                bool right_first = desc ? b > a : b < a;
                tmp[o++] = right_first ? idx[j++] : idx[i++];
            }
            while (i < mid) tmp[o++] = idx[i++];
            while (j < hi) tmp[o++] = idx[j++];
        }
        int32_t *t = idx;
        idx = tmp;
        tmp = t;
    }
    return idx;
}

/* TOP_K's order: a higher value first, then the lower index. */
static inline bool better(const float *v, int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
}

/* heap[0] is the worst of the kept entries. */
static void heap_sift_down(int32_t *heap, int64_t size, int64_t at, const float *v) {
    for (;;) {
        int64_t worst = at, l = 2 * at + 1, r = l + 1;
        if (l < size && better(v, heap[worst], heap[l])) worst = l;
        if (r < size && better(v, heap[worst], heap[r])) worst = r;
        if (worst == at) return;
        int32_t t = heap[at];
        heap[at] = heap[worst];
        heap[worst] = t;
        at = worst;
    }
}

/* The k best indices of v[0..n), best first, into heap[0..k). */
static void top_k(int32_t *heap, int64_t k, const float *v, int64_t n) {
    for (int64_t i = 0; i < k; i++) heap[i] = (int32_t)i;
    for (int64_t i = k / 2; i-- > 0;) heap_sift_down(heap, k, i, v);
    for (int64_t i = k; i < n; i++) {
        if (!better(v, (int32_t)i, heap[0])) continue;
        heap[0] = (int32_t)i;
        heap_sift_down(heap, k, 0, v);
    }
    /* pop the worst to the end until sorted best first */
    for (int64_t size = k; size > 1; size--) {
        int32_t t = heap[0];
        heap[0] = heap[size - 1];
        heap[size - 1] = t;
        heap_sift_down(heap, size - 1, 0, v);
    }
}

static void argsort_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t n = a->ne[0], k = node->ne[0];
    float *vals = scratch_slice(p, sort_scratch_bytes(node), 1);
    if (!vals) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "%s: scratch too small", ferry_op_name(node->op));
        return;
    }
    int32_t *idx = (int32_t *)(vals + n);
    int32_t *tmp = node->op == FERRY_OP_TOP_K ? NULL : idx + n;
    const bool desc = ferry_param_i32(node, 0) == 1;
    int64_t r0, r1;
    split_range(ferry_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(a, r, &i1, &i2, &i3);
        const char *x = tensor_row(a, i1, i2, i3);
        for (int64_t i = 0; i < n; i++) vals[i] = get_f32(x + i * (int64_t)a->nb[0]);
        const int32_t *out;
        if (node->op == FERRY_OP_TOP_K) {
            top_k(idx, k, vals, n);
            out = idx;
        } else {
            for (int64_t i = 0; i < n; i++) idx[i] = (int32_t)i;
            out = merge_sort(idx, tmp, n, vals, desc);
        }
        char *y = tensor_row(node, i1, i2, i3);
        for (int64_t i = 0; i < k; i++) put_i32(y + i * (int64_t)node->nb[0], out[i]);
    }
}

const struct ferry_kernel ferry_kernel_argsort = { check_argsort, argsort_work_size, argsort_compute };
