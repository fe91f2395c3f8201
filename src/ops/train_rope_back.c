/* ROPE_BACK (docs/ops.md B.25): the inverse rotation of ROPE, i.e. ROPE with
 * every sin negated. Same sources, types and op_params as ROPE (B.18).
 *
 * It runs ROPE's own kernel (rope.c) instead of a copy of it, using
 *     R(-t) = F · R(t) · F,   F(a, b) = (a, -b),
 * for each rotated pair: the output is F(ROPE(F(x))). A sign flip is exact
 * in f32 and f16, and a - (-b)·s = a + b·s exactly, so the result is bit for
 * bit the rotation by -sin that ggml computes. Three passes over the
 * output rows, separated by barriers:
 *   1. copy x into the output with the second element of each pair negated;
 *   2. ROPE in place on the output;
 *   3. negate the same elements again. */
#include <stdio.h>

#include "common.h"
#include "family_train.h"

enum { MODE_NORMAL = 0, MODE_VISION = 24 };

/* The node as ROPE sees it: same sources and op_params. */
static struct ferry_tensor as_rope(const struct ferry_tensor *node) {
    struct ferry_tensor t = *node;
    t.op = FERRY_OP_ROPE;
    return t;
}

static int check_rope_back(const struct ferry_tensor *node, struct ferry_error *err) {
    const struct ferry_tensor rope = as_rope(node);
    int rc = ferry_kernel_rope.check(&rope, err);
    if (rc && err) {
        /* name the op the client sent */
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        why[sizeof why - 1] = '\0';
        const char *rest = strncmp(why, "ROPE: ", 6) == 0 ? why + 6 : why;
        /* the reason may lose its last characters to the longer prefix */
        const int keep = (int)(sizeof err->msg - sizeof "ROPE_BACK: ");
        snprintf(err->msg, sizeof err->msg, "ROPE_BACK: %.*s", keep, rest);
    }
    return rc;
}

static size_t rope_back_work_size(const struct ferry_tensor *node, int nth) {
    const struct ferry_tensor rope = as_rope(node);
    return ferry_kernel_rope.work_size ? ferry_kernel_rope.work_size(&rope, nth) : 0;
}

/* Negates element i of a row of type t (F32 or F16): flips the sign bit. */
static void negate_at(enum ferry_type t, char *row, int64_t i) {
    if (t == FERRY_TYPE_F16) {
        uint16_t h;
        memcpy(&h, row + 2 * i, 2);
        h ^= 0x8000u;
        memcpy(row + 2 * i, &h, 2);
    } else {
        float f;
        memcpy(&f, row + 4 * i, 4);
        f = -f;
        memcpy(row + 4 * i, &f, 4);
    }
}

/* F: negates the second element of every pair the mode rotates (the
 * windows of docs/ops.md B.18). check_rope has validated mode, n_dims and
 * n_offs against the row length. */
static void flip_pairs(const struct ferry_tensor *node, char *row) {
    const int n_dims = ferry_param_i32(node, 1), mode = ferry_param_i32(node, 2);
    const int64_t o = ferry_param_i32(node, 15);
    if (mode == MODE_NORMAL) {
        for (int64_t j = 1; j < n_dims; j += 2) negate_at(node->type, row, o + j);
    } else if (mode == MODE_VISION) {
        for (int64_t j = n_dims; j < 2 * (int64_t)n_dims; j++) negate_at(node->type, row, j);
    } else {
        for (int64_t j = n_dims / 2; j < n_dims; j++) negate_at(node->type, row, o + j);
    }
}

static void rope_back_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *x = node->src[0];
    const size_t row_bytes = (size_t)node->ne[0] * ferry_type_size(node->type);
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        char *y = tensor_row(node, i1, i2, i3);
        memmove(y, tensor_row(x, i1, i2, i3), row_bytes);
        flip_pairs(node, y);
    }
    ferry_barrier(p);

    /* ROPE of the output onto itself (rope.c allows exactly this aliasing) */
    struct ferry_tensor self = *node, rope = as_rope(node);
    self.op = FERRY_OP_NONE;
    memset(self.src, 0, sizeof self.src);
    rope.src[0] = &self;
    ferry_kernel_rope.compute(p, &rope);
    ferry_barrier(p);

    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        flip_pairs(node, tensor_row(node, i1, i2, i3));
    }
}

const struct ferry_kernel ferry_kernel_rope_back = { check_rope_back, rope_back_work_size, rope_back_compute };
