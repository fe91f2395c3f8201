/* OUT_PROD (docs/ops.md B.25): a sum of outer products,
 *     dst[i0, i1, i2, i3] = Σ_k a[i0, k, i2', i3'] · b[i1, k, i2, i3],
 * with a = src0 (F32, F16 or a quantized type), b = src1 (F32, any strides)
 * and dst F32 [a.ne0, b.ne0, b.ne2, b.ne3]. An F32 a broadcasts over dims 2
 * and 3 by division (i2' = i2 / (b.ne2 / a.ne2)); other types need equal
 * dims, as in ggml's CPU backend.
 *
 * Output rows are split between threads. Within one (i2, i3) slice a thread
 * takes each row k of a once (widened to f32 in its scratch when a is not
 * F32) and adds it, scaled, to every output row it owns; each element is
 * summed in f32 in ascending k, whatever the thread count. */
#include "common.h"
#include "convert.h"
#include "family_train.h"
#include "scratch.h"

/* ggml's CPU backend has an OUT_PROD for F32, F16 and these block types. */
static bool quant_supported(enum ferry_type t) {
    if (!ferry_type_is_quantized(t) || t == FERRY_TYPE_Q8_1 || t == FERRY_TYPE_Q8_K) return false;
    return ferry_type_traits(t)->to_float != NULL;
}

static int check_batch(const struct ferry_tensor *a, const struct ferry_tensor *b, struct ferry_error *err) {
    for (int d = 2; d < 4; d++) {
        bool ok = a->type == FERRY_TYPE_F32
                      ? (b->ne[d] == 0 || (a->ne[d] > 0 && b->ne[d] % a->ne[d] == 0))
                      : a->ne[d] == b->ne[d];
        if (!ok)
            return ferry_fail(err, FERRY_ERR_INVALID, "OUT_PROD: src0 ne%d=%lld does not fit src1 ne%d=%lld%s", d,
                              (long long)a->ne[d], d, (long long)b->ne[d],
                              a->type == FERRY_TYPE_F32 ? "" : " (only F32 src0 broadcasts)");
    }
    return FERRY_OK;
}

static int check_out_prod(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (a->type != FERRY_TYPE_F32 && a->type != FERRY_TYPE_F16 && !quant_supported(a->type))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "OUT_PROD: src0 type %s is not supported",
                          ferry_type_name(a->type));
    if ((rc = check_type_in(node, "src1", b->type, f32, 1, err)) ||
        (rc = check_type_in(node, "output", node->type, f32, 1, err)))
        return rc;
    if (a->ne[1] != b->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "OUT_PROD: src0 has %lld rows, src1 %lld",
                          (long long)a->ne[1], (long long)b->ne[1]);
    if ((rc = check_batch(a, b, err)) ||
        (rc = check_dst_shape(node, a->ne[0], b->ne[0], b->ne[2], b->ne[3], err)) ||
        (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static size_t out_prod_work_size(const struct ferry_tensor *node, int nth) {
    if (node->src[0]->type == FERRY_TYPE_F32) return 0;
    return scratch_size(nth, (size_t)node->ne[0], sizeof(float));
}

/* Row k of a's slice (i02, i03) as f32: in place for F32, else widened into buf. */
static const float *a_row(const struct ferry_tensor *a, int64_t k, int64_t i02, int64_t i03, float *buf) {
    const void *row = tensor_row(a, k, i02, i03);
    if (a->type == FERRY_TYPE_F32) return row;
    if (a->type == FERRY_TYPE_F16) ferry_cvt_to_f32(a->type, row, buf, a->ne[0]);
    else ferry_type_traits(a->type)->to_float(row, buf, a->ne[0]);
    return buf;
}

static float b_at(const struct ferry_tensor *b, int64_t i1, int64_t k, int64_t i2, int64_t i3) {
    float v;
    memcpy(&v, (const char *)b->data + i1 * (int64_t)b->nb[0] + k * (int64_t)b->nb[1] +
                   i2 * (int64_t)b->nb[2] + i3 * (int64_t)b->nb[3], sizeof v);
    return v;
}

/* Output rows [i1a, i1b) of slice (i2, i3). */
static void out_prod_slice(struct ferry_tensor *node, int64_t i1a, int64_t i1b, int64_t i2, int64_t i3, float *buf) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t n = node->ne[0];
    const int64_t i02 = i2 / (node->ne[2] / a->ne[2]), i03 = i3 / (node->ne[3] / a->ne[3]);
    for (int64_t i1 = i1a; i1 < i1b; i1++) memset(tensor_row(node, i1, i2, i3), 0, (size_t)n * sizeof(float));
    for (int64_t k = 0; k < a->ne[1]; k++) {
        const float *x = a_row(a, k, i02, i03, buf);
        for (int64_t i1 = i1a; i1 < i1b; i1++) {
            const float v = b_at(b, i1, k, i2, i3);
            float *y = tensor_row(node, i1, i2, i3);
            for (int64_t i = 0; i < n; i++) y[i] += x[i] * v;
        }
    }
}

static void out_prod_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    if (ferry_is_empty(node)) return;
    float *buf = NULL;
    if (node->src[0]->type != FERRY_TYPE_F32 &&
        !(buf = scratch_slice(p, (size_t)node->ne[0], sizeof(float)))) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "OUT_PROD: scratch too small");
        return;
    }
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    /* walk the range one (i2, i3) slice at a time */
    for (int64_t r = r0; r < r1;) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        int64_t i1b = node->ne[1];
        if (r1 - r < i1b - i1) i1b = i1 + (r1 - r);
        out_prod_slice(node, i1, i1b, i2, i3, buf);
        r += i1b - i1;
    }
}

const struct ferry_kernel ferry_kernel_out_prod = { check_out_prod, out_prod_work_size, out_prod_compute };
