/* MUL_MAT and MUL_MAT_ID (docs/ops.md B.14, B.15).
 *
 * dst[i0,i1,i2,i3] = dot(A row (i0, i2/r2, i3/r3), B' row (i1, i2, i3)),
 * where B' is B converted to the vec_dot type of A's type (vecdot.h).
 *
 * Threads first prepare B's rows in the vec_dot layout (vecdot.h) in the
 * shared scratch, each a slice of the rows, meet at a barrier, then split
 * the output. The split follows A's rows, so in matrix x vector (decode) the
 * threads stream disjoint halves (thirds, ...) of the weights. Each output
 * element is one vec_dot call, or an element of a GEMM tile (gemm.h) where
 * the type has tiles and a block has enough columns; a tile gives exactly
 * the vec_dot result, so results do not depend on the thread count or on
 * where the tiles fall. */
#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "gemm.h"
#include "simd.h"
#include "vecdot.h"

/* Weight rows kept hot while every B' column passes over them. */
#define ROW_TILE 16

/* The GEMM path's rows per pass over the columns: a block of weights kept
 * in L2 (64 rows of 4096 Q8_0 weights are 272 KiB) while every column tile
 * passes over it. A multiple of every tile's rows. */
#define GEMM_ROW_BLOCK 64

/* P[1] op hint: "src0 is a normalised Hadamard matrix" (docs/ops.md B.14). */
#define HINT_HADAMARD 1

/* ---- shared pieces ---------------------------------------------------------- */

static size_t mul_sat(size_t a, size_t b) {
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

static size_t add_sat(size_t a, size_t b) {
    size_t r;
    return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

static size_t align64(size_t n) { return n > SIZE_MAX - 63 ? SIZE_MAX : (n + 63) & ~(size_t)63; }

static void store_out(char *p, float v) { memcpy(p, &v, sizeof v); }

/* Matrix x vector streams the weights from memory once. The hardware
 * prefetcher stops at 4 KiB page boundaries, so each thread kicks it on the
 * pages of the row PREFETCH_PAGES_AHEAD rows ahead; compact types (under a
 * byte per weight) spend more time per byte in the dot product and also
 * pull whole rows PREFETCH_ROWS_AHEAD ahead into L1. (Measured with 2
 * threads on a 2-core Cascade Lake VM, as a fraction of its read bandwidth:
 * Q4_0 ~0.74 -> ~0.79, Q6_K 0.72 -> 0.80, Q8_0 0.88 -> 0.90, F16 0.92 ->
 * 0.95; whole-row prefetches cost Q8_0 and F16 more than they give.) */
#define PREFETCH_PAGES_AHEAD 4
#define PREFETCH_ROWS_AHEAD 2

static void prefetch_row(const char *p, size_t n) {
    for (size_t off = 0; off < n; off += 64) __builtin_prefetch(p + off, 0, 3);
}

/* One line in each 4 KiB page that [p, p+n) enters. */
static void prefetch_pages(const char *p, size_t n) {
    const uintptr_t first = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, end = (uintptr_t)p + n;
    for (uintptr_t a = first; a < end; a += 4096) __builtin_prefetch((const char *)a, 0, 3);
}

/* Prefetches for weight row r of [.., r1) before it is first used. */
static void prefetch_ahead(const char *a_base, int64_t nb01, int64_t r, int64_t r1, size_t row_bytes,
                           bool compact) {
    if (r + PREFETCH_PAGES_AHEAD < r1) prefetch_pages(a_base + (r + PREFETCH_PAGES_AHEAD) * nb01, row_bytes);
    if (compact && r + PREFETCH_ROWS_AHEAD < r1) prefetch_row(a_base + (r + PREFETCH_ROWS_AHEAD) * nb01, row_bytes);
}

/* Rejects what every matmul-like weight/activation pair must satisfy. */
static int check_operands(const struct ferry_tensor *node, const struct ferry_tensor *a,
                          const struct ferry_tensor *b, struct ferry_error *err) {
    const char *op = ferry_op_name(node->op);
    if (node->type != FERRY_TYPE_F32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: output must be f32", op);
    const int vt = ferry_vec_dot_type(a->type);
    if (vt < 0)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: no dot product for weights of type %s", op,
                          ferry_type_name(a->type));
    if (b->type != FERRY_TYPE_F32 && (int)b->type != vt)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: src1 type %s is neither f32 nor %s", op,
                          ferry_type_name(b->type), ferry_type_name(vt));
    if (a->ne[0] != b->ne[0])
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: src0 ne0=%lld and src1 ne0=%lld differ", op,
                          (long long)a->ne[0], (long long)b->ne[0]);
    int rc = check_rows_contiguous(node, a, "src0", err);
    if (!rc) rc = check_rows_contiguous(node, b, "src1", err);
    return rc;
}

/* B' row (i1,i2,i3): either prepared in scratch, or B's own row. */
struct b_rows {
    const struct ferry_tensor *b;
    const char *converted; /* NULL: B's rows are used as they are */
    size_t row_size;
};

static const void *b_row(const struct b_rows *br, int64_t i1, int64_t i2, int64_t i3) {
    const struct ferry_tensor *b = br->b;
    if (!br->converted) return tensor_row(b, i1, i2, i3);
    return br->converted + (size_t)((i3 * b->ne[2] + i2) * b->ne[1] + i1) * br->row_size;
}

/* The converter B's rows need for the kernels vd, or NULL when the kernels
 * read them in place. */
static ferry_prepare_fn b_converter(const struct ferry_vec_dot *vd, const struct ferry_tensor *b) {
    return b->type == FERRY_TYPE_F32 ? vd->from_f32 : vd->from_raw;
}

/* Bytes of scratch to hold every row of b prepared for weights of type at
 * (the layouts do not depend on the SIMD level). */
static size_t converted_size(const struct ferry_tensor *b, enum ferry_type at) {
    struct ferry_vec_dot vd;
    if (!ferry_vec_dot_get(at, FERRY_SIMD_SCALAR, &vd) || !b_converter(&vd, b)) return 0;
    const size_t rows = mul_sat(mul_sat((size_t)b->ne[1], (size_t)b->ne[2]), (size_t)b->ne[3]);
    const size_t bytes = mul_sat(rows, ferry_vec_dot_row_size(at, b->ne[0]));
    return bytes ? bytes : 64; /* never empty, so the scratch pointer is real even for K = 0 */
}

/* Each thread prepares its slice of b's rows into scratch, then all meet. */
static void convert_b_rows(const struct ferry_compute_params *p, const struct ferry_tensor *b,
                           ferry_prepare_fn convert, char *out, size_t row_size) {
    const int64_t nrows = b->ne[1] * b->ne[2] * b->ne[3];
    int64_t r0, r1;
    split_range(nrows, p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(b, r, &i1, &i2, &i3);
        convert(tensor_row(b, i1, i2, i3), out + (size_t)r * row_size, b->ne[0]);
    }
    ferry_barrier(p);
}

/* ---- MUL_MAT ------------------------------------------------------------- */

static bool is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static int mul_mat_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *a = node->src[0], *b = node->src[1];
    rc = check_operands(node, a, b, err);
    if (rc) return rc;
    if (a->ne[2] <= 0 || a->ne[3] <= 0 || b->ne[2] % a->ne[2] != 0 || b->ne[3] % a->ne[3] != 0)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "MUL_MAT: src1 batch [%lld,%lld] is not a multiple of src0 batch [%lld,%lld]",
                          (long long)b->ne[2], (long long)b->ne[3], (long long)a->ne[2],
                          (long long)a->ne[3]);
    rc = check_dst_shape(node, a->ne[1], b->ne[1], b->ne[2], b->ne[3], err);
    if (rc) return rc;
    const int32_t hint = node->op_params[1];
    if (hint != 0 && hint != HINT_HADAMARD)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "MUL_MAT: unknown op hint %d", (int)hint);
    if (hint == HINT_HADAMARD) {
        if (b->type != FERRY_TYPE_F32)
            return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "MUL_MAT: Hadamard hint needs f32 src1");
        if (!is_power_of_two(a->ne[0]) || a->ne[1] != a->ne[0])
            return ferry_fail(err, FERRY_ERR_INVALID,
                              "MUL_MAT: Hadamard hint needs a square src0 with a power-of-two size");
    }
    return FERRY_OK;
}

static size_t mul_mat_work_size(const struct ferry_tensor *node, int nth) {
    const struct ferry_tensor *b = node->src[1];
    if (node->op_params[1] == HINT_HADAMARD)
        return mul_sat((size_t)nth, align64(mul_sat((size_t)b->ne[0], sizeof(float))));
    return converted_size(b, node->src[0]->type);
}

/* Fast Walsh-Hadamard transform of each B row, scaled by 1/sqrt(K): the
 * product with H_K/sqrt(K) without reading src0 (docs/ops.md B.14, op hint 1). */
static void hadamard_rows(const struct ferry_compute_params *p, struct ferry_tensor *dst) {
    const struct ferry_tensor *b = dst->src[1];
    const int64_t k = b->ne[0];
    float *y = (float *)((char *)p->wdata + (size_t)p->ith * align64((size_t)k * sizeof(float)));
    const float root = sqrtf((float)k);
    int64_t r0, r1;
    split_range(ferry_nrows(b), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(b, r, &i1, &i2, &i3);
        const float *x = tensor_row(b, i1, i2, i3);
        for (int64_t i = 0; i < k; i++) y[i] = x[i] / root;
        for (int64_t len = 1; len < k; len *= 2)
            for (int64_t i = 0; i < k; i += 2 * len)
                for (int64_t j = i; j < i + len; j++) {
                    const float u = y[j], v = y[j + len];
                    y[j] = u + v;
                    y[j + len] = u - v;
                }
        char *out = tensor_row(dst, i1, i2, i3);
        for (int64_t i = 0; i < k; i++) store_out(out + i * (int64_t)dst->nb[0], y[i]);
    }
}

struct mm_job {
    const struct ferry_tensor *a;
    struct ferry_tensor *dst;
    struct b_rows br;
    ferry_vec_dot_fn dot;
    struct ferry_gemm gemm; /* .tile NULL: dot products only */
    int64_t r2, r3;         /* batch broadcast ratios */
};

/* Where output column c of a block reads its B' row and writes its dst row. */
typedef void (*mm_col_fn)(const struct mm_job *j, const void *ctx, int64_t c, const void **y, char **out);

/* The GEMM path over weight rows [r0,r1) (at a_base) x columns [c0,c1):
 * full tiles where they fit, dot products for the edges, which give the
 * same numbers. */
static void mm_tiled(const struct mm_job *j, const char *a_base, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                     mm_col_fn col, const void *ctx) {
    const int rm = j->gemm.rows, rn = j->gemm.cols;
    const int64_t k = j->a->ne[0], nb01 = (int64_t)j->a->nb[1], nb0 = (int64_t)j->dst->nb[0];
    float t[FERRY_GEMM_MAX_TILE];
    for (int64_t rb = r0; rb < r1; rb += GEMM_ROW_BLOCK) {
        const int64_t re = rb + GEMM_ROW_BLOCK < r1 ? rb + GEMM_ROW_BLOCK : r1;
        for (int64_t c = c0; c < c1; c += rn) {
            const int cn = c1 - c < rn ? (int)(c1 - c) : rn;
            const void *y[FERRY_GEMM_MAX_SIDE];
            char *out[FERRY_GEMM_MAX_SIDE];
            for (int q = 0; q < cn; q++) col(j, ctx, c + q, &y[q], &out[q]);
            int64_t r = rb;
            if (cn == rn)
                for (; r + rm <= re; r += rm) {
                    const void *x[FERRY_GEMM_MAX_SIDE];
                    for (int i = 0; i < rm; i++) x[i] = a_base + (r + i) * nb01;
                    j->gemm.tile(k, x, y, t);
                    for (int i = 0; i < rm; i++)
                        for (int q = 0; q < rn; q++) store_out(out[q] + (r + i) * nb0, t[i * rn + q]);
                }
            for (; r < re; r++)
                for (int q = 0; q < cn; q++) {
                    float v;
                    j->dot(k, &v, a_base + r * nb01, y[q]);
                    store_out(out[q] + r * nb0, v);
                }
        }
    }
}

struct mm_batch {
    int64_t i2, i3;
};

static void mm_col(const struct mm_job *j, const void *ctx, int64_t c, const void **y, char **out) {
    const struct mm_batch *b = ctx;
    *y = b_row(&j->br, c, b->i2, b->i3);
    *out = tensor_row(j->dst, c, b->i2, b->i3);
}

/* dst rows [r0,r1) x columns [c0,c1) of batch (i2,i3), in tiles of weight
 * rows so a tile stays in cache while the columns pass over it. */
static void mm_block(const struct mm_job *j, int64_t i2, int64_t i3, int64_t r0, int64_t r1,
                     int64_t c0, int64_t c1) {
    const struct ferry_tensor *a = j->a;
    const char *a_base = (const char *)a->data + (i2 / j->r2) * (int64_t)a->nb[2] +
                         (i3 / j->r3) * (int64_t)a->nb[3];
    const int64_t k = a->ne[0], nb01 = (int64_t)a->nb[1], nb0 = (int64_t)j->dst->nb[0];
    const size_t row_bytes = ferry_row_size(a->type, k);
    const bool compact = row_bytes < (size_t)k;
    if (j->gemm.tile && c1 - c0 >= j->gemm.cols) {
        const struct mm_batch b = { i2, i3 };
        mm_tiled(j, a_base, r0, r1, c0, c1, mm_col, &b);
        return;
    }
    for (int64_t rt = r0; rt < r1; rt += ROW_TILE) {
        const int64_t re = rt + ROW_TILE < r1 ? rt + ROW_TILE : r1;
        for (int64_t c = c0; c < c1; c++) {
            const void *y = b_row(&j->br, c, i2, i3);
            char *out = tensor_row(j->dst, c, i2, i3);
            for (int64_t r = rt; r < re; r++) {
                if (c == c0) prefetch_ahead(a_base, nb01, r, r1, row_bytes, compact); /* first pass streams A */
                float v;
                j->dot(k, &v, a_base + r * nb01, y);
                store_out(out + r * nb0, v);
            }
        }
    }
}

/* Splits the flat range [u0,u1) of units over (batch, index) pairs, where a
 * batch holds per_batch units of `grain` rows or columns (the last one
 * maybe fewer, up to `size`), and runs each piece. */
static void mm_units(const struct mm_job *j, int64_t u0, int64_t u1, int64_t per_batch, int64_t grain, int64_t size,
                     bool by_rows) {
    const struct ferry_tensor *dst = j->dst;
    while (u0 < u1) {
        const int64_t batch = u0 / per_batch, first = u0 % per_batch;
        const int64_t last = u1 - batch * per_batch < per_batch ? u1 - batch * per_batch : per_batch;
        const int64_t i2 = batch % dst->ne[2], i3 = batch / dst->ne[2];
        const int64_t e0 = first * grain, e1 = last * grain < size ? last * grain : size;
        if (by_rows) mm_block(j, i2, i3, e0, e1, 0, dst->ne[1]);
        else mm_block(j, i2, i3, 0, dst->ne[0], e0, e1);
        u0 = batch * per_batch + last;
    }
}

static void mul_mat_compute(const struct ferry_compute_params *p, struct ferry_tensor *dst) {
    if (dst->op_params[1] == HINT_HADAMARD) {
        hadamard_rows(p, dst);
        return;
    }
    const struct ferry_tensor *a = dst->src[0], *b = dst->src[1];
    struct ferry_vec_dot vd;
    ferry_vec_dot_get(a->type, ferry_simd_level(), &vd); /* check() proved it exists */
    struct mm_job j = { .a = a, .dst = dst, .dot = vd.dot, .r2 = b->ne[2] / a->ne[2],
                        .r3 = b->ne[3] / a->ne[3] };
    ferry_gemm_get(a->type, ferry_simd_level(), &j.gemm);
    j.br.b = b;
    const ferry_prepare_fn convert = b_converter(&vd, b);
    if (convert) {
        j.br.row_size = ferry_vec_dot_row_size(a->type, b->ne[0]);
        j.br.converted = p->wdata;
        convert_b_rows(p, b, convert, p->wdata, j.br.row_size);
    }
    /* Split along whichever of rows (A) and columns (B) is longer; ties go
     * to rows, which covers matrix x vector. */
    const int64_t m = dst->ne[0], n = dst->ne[1], batches = dst->ne[2] * dst->ne[3];
    const bool by_rows = m >= n;
    const int64_t size = by_rows ? m : n;
    /* with tiles, whole tiles go to each thread */
    const int64_t grain = !j.gemm.tile || n < j.gemm.cols ? 1 : by_rows ? j.gemm.rows : j.gemm.cols;
    const int64_t per_batch = (size + grain - 1) / grain;
    int64_t u0, u1;
    split_range(per_batch * batches, p->ith, p->nth, &u0, &u1);
    mm_units(&j, u0, u1, per_batch, grain, size, by_rows);
}

const struct ferry_kernel ferry_kernel_mul_mat = { mul_mat_check, mul_mat_work_size, mul_mat_compute };

/* ---- MUL_MAT_ID ------------------------------------------------------------
 *
 * as [K, M, n_expert], b [K, n_b1, n_tokens], ids i32 [n_used, n_tokens]:
 * dst[:, e, t] = as[:, :, ids[e,t]] . b'[:, e % n_b1, t].
 *
 * Scratch: converted b rows, then the (expert, slot) pairs sorted by expert
 * so that each expert's weights are read once for all the slots using it.
 * Thread 0 builds that list and validates the ids (they are data, and an
 * out-of-range one is reported, never followed). */

struct id_pair {
    int32_t expert;
    int32_t slot; /* e + t * n_used */
};

static int mul_mat_id_check(const struct ferry_tensor *node, struct ferry_error *err) {
    int rc = check_src_count(node, 3, err);
    if (rc) return rc;
    const struct ferry_tensor *as = node->src[0], *b = node->src[1], *ids = node->src[2];
    rc = check_operands(node, as, b, err);
    if (rc) return rc;
    if (ids->type != FERRY_TYPE_I32)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "MUL_MAT_ID: ids must be i32");
    if (as->ne[3] != 1 || b->ne[3] != 1 || ids->ne[2] != 1 || ids->ne[3] != 1)
        return ferry_fail(err, FERRY_ERR_INVALID, "MUL_MAT_ID: src0, src1 and ids must be at most 3-D/2-D");
    if (ids->ne[1] != b->ne[2])
        return ferry_fail(err, FERRY_ERR_INVALID, "MUL_MAT_ID: ids ne1=%lld != src1 ne2=%lld",
                          (long long)ids->ne[1], (long long)b->ne[2]);
    if (b->ne[1] <= 0 || ids->ne[0] % b->ne[1] != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "MUL_MAT_ID: ids ne0=%lld is not a multiple of src1 ne1=%lld",
                          (long long)ids->ne[0], (long long)b->ne[1]);
    /* pairs are indexed with int32 */
    if (ids->ne[0] > INT32_MAX / (ids->ne[1] > 0 ? ids->ne[1] : 1))
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "MUL_MAT_ID: too many ids");
    return check_dst_shape(node, as->ne[1], ids->ne[0], ids->ne[1], 1, err);
}

static size_t pairs_size(const struct ferry_tensor *node) {
    const struct ferry_tensor *ids = node->src[2];
    /* + one word for the count of valid pairs */
    return align64(mul_sat(add_sat(mul_sat((size_t)ids->ne[0], (size_t)ids->ne[1]), 1),
                           sizeof(struct id_pair)));
}

static size_t mul_mat_id_work_size(const struct ferry_tensor *node, int nth) {
    (void)nth;
    return add_sat(converted_size(node->src[1], node->src[0]->type), pairs_size(node));
}

static int cmp_pairs(const void *pa, const void *pb) {
    const struct id_pair *x = pa, *y = pb;
    if (x->expert != y->expert) return x->expert < y->expert ? -1 : 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

/* Thread 0: the valid (expert, slot) pairs, sorted; returns their count. */
static int64_t collect_pairs(const struct ferry_compute_params *p, const struct ferry_tensor *dst,
                             struct id_pair *pairs) {
    const struct ferry_tensor *as = dst->src[0], *ids = dst->src[2];
    const int64_t n_used = ids->ne[0], n_tokens = ids->ne[1];
    int64_t n = 0;
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t e = 0; e < n_used; e++) {
            int32_t x;
            memcpy(&x, (const char *)ids->data + t * (int64_t)ids->nb[1] + e * (int64_t)ids->nb[0], 4);
            if (x < 0 || x >= as->ne[2]) {
                ferry_op_fail(p, FERRY_ERR_INVALID, "MUL_MAT_ID: expert id %d at [%lld,%lld] is outside [0,%lld)",
                              (int)x, (long long)e, (long long)t, (long long)as->ne[2]);
                continue;
            }
            pairs[n].expert = x;
            pairs[n].slot = (int32_t)(e + t * n_used);
            n++;
        }
    qsort(pairs, (size_t)n, sizeof *pairs, cmp_pairs);
    return n;
}

struct id_cols {
    const struct id_pair *pairs;
    int64_t n_used;
};

/* Column g of an expert group: slot pairs[g]'s B' row and dst row. */
static void id_col(const struct mm_job *j, const void *ctx, int64_t g, const void **y, char **out) {
    const struct id_cols *ic = ctx;
    const int64_t e = ic->pairs[g].slot % ic->n_used, t = ic->pairs[g].slot / ic->n_used;
    *y = b_row(&j->br, e % j->br.b->ne[1], t, 0);
    *out = tensor_row(j->dst, e, t, 0);
}

/* Rows [r0,r1) of expert group pairs[g0..g1) (all the same expert). */
static void mm_id_block(const struct mm_job *j, const struct id_pair *pairs, int64_t g0, int64_t g1,
                        int64_t r0, int64_t r1, int64_t n_used) {
    const struct ferry_tensor *as = j->a;
    const char *a_base = (const char *)as->data + (int64_t)pairs[g0].expert * (int64_t)as->nb[2];
    const int64_t k = as->ne[0], nb01 = (int64_t)as->nb[1], nb0 = (int64_t)j->dst->nb[0];
    const int64_t n_b1 = j->br.b->ne[1];
    const size_t row_bytes = ferry_row_size(as->type, k);
    const bool compact = row_bytes < (size_t)k;
    if (j->gemm.tile && g1 - g0 >= j->gemm.cols) {
        const struct id_cols ic = { pairs, n_used };
        mm_tiled(j, a_base, r0, r1, g0, g1, id_col, &ic);
        return;
    }
    for (int64_t rt = r0; rt < r1; rt += ROW_TILE) {
        const int64_t re = rt + ROW_TILE < r1 ? rt + ROW_TILE : r1;
        for (int64_t g = g0; g < g1; g++) {
            const int64_t e = pairs[g].slot % n_used, t = pairs[g].slot / n_used;
            const void *y = b_row(&j->br, e % n_b1, t, 0);
            char *out = tensor_row(j->dst, e, t, 0);
            for (int64_t r = rt; r < re; r++) {
                if (g == g0) prefetch_ahead(a_base, nb01, r, r1, row_bytes, compact);
                float v;
                j->dot(k, &v, a_base + r * nb01, y);
                store_out(out + r * nb0, v);
            }
        }
    }
}

static void mul_mat_id_compute(const struct ferry_compute_params *p, struct ferry_tensor *dst) {
    const struct ferry_tensor *as = dst->src[0], *b = dst->src[1], *ids = dst->src[2];
    struct ferry_vec_dot vd;
    ferry_vec_dot_get(as->type, ferry_simd_level(), &vd);
    struct mm_job j = { .a = as, .dst = dst, .dot = vd.dot, .r2 = 1, .r3 = 1 };
    ferry_gemm_get(as->type, ferry_simd_level(), &j.gemm);
    j.br.b = b;
    struct id_pair *pairs = (struct id_pair *)((char *)p->wdata + converted_size(b, as->type));
    int64_t *n_pairs = (int64_t *)(pairs + ids->ne[0] * ids->ne[1]);
    if (p->ith == 0) *n_pairs = collect_pairs(p, dst, pairs);
    const ferry_prepare_fn convert = b_converter(&vd, b);
    if (convert) {
        j.br.row_size = ferry_vec_dot_row_size(as->type, b->ne[0]);
        j.br.converted = p->wdata;
        convert_b_rows(p, b, convert, p->wdata, j.br.row_size); /* ends with a barrier */
    } else {
        ferry_barrier(p);
    }
    /* Work units: the rows of every expert group, in group order, split in
     * equal contiguous ranges, so in decode each thread streams different
     * experts' (or rows') weights. */
    const int64_t n = *n_pairs, m = as->ne[1], n_used = ids->ne[0];
    int64_t n_groups = 0;
    for (int64_t g = 0; g < n; g++)
        if (g == 0 || pairs[g].expert != pairs[g - 1].expert) n_groups++;
    int64_t u0, u1;
    split_range(n_groups * m, p->ith, p->nth, &u0, &u1);
    int64_t group = 0;
    for (int64_t g0 = 0; g0 < n && u0 < u1; group++) {
        int64_t g1 = g0 + 1;
        while (g1 < n && pairs[g1].expert == pairs[g0].expert) g1++;
        const int64_t first = group * m, last = first + m; /* this group's units */
        if (u0 < last) {
            const int64_t r0 = u0 - first, r1 = (u1 < last ? u1 : last) - first;
            mm_id_block(&j, pairs, g0, g1, r0, r1, n_used);
            u0 = first + r1;
        }
        g0 = g1;
    }
}

const struct ferry_kernel ferry_kernel_mul_mat_id = { mul_mat_id_check, mul_mat_id_work_size,
                                                      mul_mat_id_compute };
