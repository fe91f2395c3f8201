/* ADD, SUB, MUL, DIV (docs/ops.md B.5) with src1 tiled over src0 by modulo
 * (A.4), and ADD_ID (B.6), the per-expert bias add of MoE models.
 *
 * Every element is op(f32(a), f32(b)) in f32, rounded once to the output
 * type. The all-f32 case with contiguous src1 rows runs the vector kernels
 * of vec.h directly on the rows; every other combination converts chunks of
 * a row to f32, applies the same kernels and converts back. A quantized
 * src0 (ADD only) is dequantized, added to and re-quantized row by row. */
#include "common.h"
#include "convert.h"
#include "vec.h"

typedef void (*binary_fn)(float *y, const float *a, const float *b, int64_t n);

static binary_fn binary_kernel(enum ferry_op op) {
    switch (op) {
    case FERRY_OP_SUB: return vec_sub_f32;
    case FERRY_OP_MUL: return vec_mul_f32;
    case FERRY_OP_DIV: return vec_div_f32;
    default: return vec_add_f32;
    }
}

static bool binary_types_ok(enum ferry_type a, enum ferry_type b, enum ferry_type d) {
    if (a == FERRY_TYPE_F32) return b == FERRY_TYPE_F32 && d == FERRY_TYPE_F32;
    if (a == FERRY_TYPE_F16 || a == FERRY_TYPE_BF16)
        return (b == a && d == a) || (b == FERRY_TYPE_F32 && (d == a || d == FERRY_TYPE_F32));
    return false;
}

/* ADD of a quantized src0 and an f32 src1 of the same shape. */
static bool is_quant_add(const struct ferry_tensor *node) {
    return node->op == FERRY_OP_ADD && ferry_type_is_quantized(node->src[0]->type);
}

static int check_quant_add(const struct ferry_tensor *node, struct ferry_error *err) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const struct ferry_type_traits *ta = ferry_type_traits(a->type), *td = ferry_type_traits(node->type);
    bool out_ok = node->type == FERRY_TYPE_F32 || (node->type == a->type && td->from_float);
    if (!ta->to_float || b->type != FERRY_TYPE_F32 || !out_ok)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "ADD: %s + %s -> %s is not supported",
                          ferry_type_name(a->type), ferry_type_name(b->type),
                          ferry_type_name(node->type));
    int rc;
    if ((rc = check_same_shape(node, a, b, err)) ||
        (rc = check_rows_contiguous(node, b, "src1", err)))
        return rc;
    return FERRY_OK;
}

static int binary_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    if (is_quant_add(node)) {
        if ((rc = check_quant_add(node, err))) return rc;
    } else if (!binary_types_ok(a->type, b->type, node->type)) {
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s, %s -> %s is not supported",
                          ferry_op_name(node->op), ferry_type_name(a->type),
                          ferry_type_name(b->type), ferry_type_name(node->type));
    }
    if ((rc = check_same_shape(node, node, a, err))) return rc;
    if (!ferry_can_repeat(b, a))
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "%s: src1 [%lld,%lld,%lld,%lld] does not tile src0 [%lld,%lld,%lld,%lld]",
                          ferry_op_name(node->op), (long long)b->ne[0], (long long)b->ne[1],
                          (long long)b->ne[2], (long long)b->ne[3], (long long)a->ne[0],
                          (long long)a->ne[1], (long long)a->ne[2], (long long)a->ne[3]);
    if ((rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static size_t binary_work_size(const struct ferry_tensor *node, int nth) {
    if (!is_quant_add(node)) return 0;
    size_t row, total;
    if (__builtin_mul_overflow((size_t)node->ne[0], sizeof(float), &row) || row > SIZE_MAX - 63)
        return SIZE_MAX;
    row = (row + 63) & ~(size_t)63;
    if (__builtin_mul_overflow(row, (size_t)nth, &total)) return SIZE_MAX;
    return total;
}

#define CHUNK 256

/* One row through f32 chunks, for any type combination and any src1
 * stride; the src1 row (ne10 elements) repeats along the row. */
static void binary_row_chunked(binary_fn fn, const struct ferry_tensor *node, const char *arow,
                               const char *brow, char *drow) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const int64_t ne0 = node->ne[0], ne10 = b->ne[0];
    const size_t asz = ferry_type_size(a->type), dsz = ferry_type_size(node->type);
    float fa[CHUNK], fb[CHUNK];
    int64_t jb = 0; /* position in the src1 row */
    for (int64_t i0 = 0; i0 < ne0; i0 += CHUNK) {
        const int64_t m = ne0 - i0 < CHUNK ? ne0 - i0 : CHUNK;
        ferry_cvt_to_f32(a->type, arow + i0 * asz, fa, m);
        for (int64_t j = 0; j < m;) {
            int64_t run = m - j < ne10 - jb ? m - j : ne10 - jb;
            ferry_cvt_strided(b->type, brow + jb * (int64_t)b->nb[0], b->nb[0], FERRY_TYPE_F32,
                              fb + j, sizeof(float), run);
            j += run;
            jb += run;
            if (jb == ne10) jb = 0;
        }
        fn(fa, fa, fb, m);
        ferry_cvt_from_f32(node->type, fa, drow + i0 * dsz, m);
    }
}

/* All-f32 row with contiguous src1 elements. A short src1 row (a bias of
 * 4, a scalar) is first repeated into a buffer of whole tiles so that the
 * kernel runs over long stretches. */
static void binary_row_f32(binary_fn fn, const struct ferry_tensor *node, const float *arow,
                           const float *brow, float *drow) {
    const int64_t ne0 = node->ne[0], ne10 = node->src[1]->ne[0];
    if (ne10 == ne0) {
        fn(drow, arow, brow, ne0);
    } else if (ne10 >= CHUNK) {
        for (int64_t i0 = 0; i0 < ne0; i0 += ne10) fn(drow + i0, arow + i0, brow, ne10);
    } else {
        float tiles[CHUNK];
        const int64_t len = (CHUNK / ne10) * ne10; /* ne0 is a multiple of ne10 */
        for (int64_t j = 0; j < len; j++) tiles[j] = brow[j % ne10];
        for (int64_t i0 = 0; i0 < ne0; i0 += len) fn(drow + i0, arow + i0, tiles, ne0 - i0 < len ? ne0 - i0 : len);
    }
}

static void quant_add_row(const struct ferry_compute_params *p, const struct ferry_tensor *node,
                          const void *arow, const float *brow, void *drow) {
    const struct ferry_tensor *a = node->src[0];
    const int64_t ne0 = node->ne[0];
    float *buf = (float *)((char *)p->wdata + (size_t)p->ith * binary_work_size(node, 1));
    ferry_type_traits(a->type)->to_float(arow, buf, ne0);
    vec_add_f32(buf, buf, brow, ne0);
    if (node->type == FERRY_TYPE_F32) memcpy(drow, buf, (size_t)ne0 * sizeof(float));
    else ferry_type_traits(node->type)->from_float(buf, drow, ne0);
}

static void binary_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    const binary_fn fn = binary_kernel(node->op);
    const bool all_f32 = a->type == FERRY_TYPE_F32 && node->type == FERRY_TYPE_F32 &&
                         b->type == FERRY_TYPE_F32 && b->nb[0] == sizeof(float);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        const char *arow = tensor_row(a, i1, i2, i3);
        const char *brow = tensor_row(b, i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]);
        char *drow = tensor_row(node, i1, i2, i3);
        if (is_quant_add(node))
            quant_add_row(p, node, arow, (const float *)brow, drow);
        else if (all_f32)
            binary_row_f32(fn, node, (const float *)arow, (const float *)brow, (float *)drow);
        else
            binary_row_chunked(fn, node, arow, brow, drow);
    }
}

const struct ferry_kernel ferry_kernel_binary = { binary_check, binary_work_size, binary_compute };

/* ---- ADD_ID: dst[:, i1, i2, i3] = a[:, i1, i2, i3] + b[:, ids[i1, i2]] ---- */

static int add_id_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1], *ids = node->src[2];
    if (a->type != FERRY_TYPE_F32 || b->type != FERRY_TYPE_F32 || ids->type != FERRY_TYPE_I32 ||
        node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "ADD_ID: needs f32 src0/src1/output and i32 ids");
    if (a->ne[0] != b->ne[0] || a->ne[1] != ids->ne[0] || a->ne[2] != ids->ne[1])
        return ferry_fail(err, FERRY_ERR_INVALID, "ADD_ID: src0, src1 and ids shapes do not fit");
    /* ids and bias rows are read by (i1, i2) and by row alone: an empty
     * dim 2 or 3 would leave them without memory */
    if (!ferry_is_empty(a) && (ferry_is_empty(b) || ferry_is_empty(ids)))
        return ferry_fail(err, FERRY_ERR_INVALID, "ADD_ID: src1 or ids is empty");
    if ((rc = check_same_shape(node, node, a, err)) ||
        (rc = check_rows_contiguous(node, a, "src0", err)) ||
        (rc = check_rows_contiguous(node, b, "src1", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    return FERRY_OK;
}

static void add_id_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *a = node->src[0], *b = node->src[1], *ids = node->src[2];
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        int32_t id;
        memcpy(&id, tensor_at(ids, i1, i2, 0, 0), sizeof id);
        if (id < 0 || id >= b->ne[1]) {
            ferry_op_fail(p, FERRY_ERR_INVALID, "ADD_ID: expert id %d out of range [0, %lld)", (int)id,
                          (long long)b->ne[1]);
            continue;
        }
        vec_add_f32(tensor_row(node, i1, i2, i3), tensor_row(a, i1, i2, i3),
                    (const float *)((const char *)b->data + id * (int64_t)b->nb[1]), node->ne[0]);
    }
}

const struct ferry_kernel ferry_kernel_add_id = { add_id_check, NULL, add_id_compute };
