/* Small helpers shared by the CPU kernels: addressing, row splitting,
 * element loads/stores and the checks every op repeats. */
#ifndef FERRY_OPS_COMMON_H
#define FERRY_OPS_COMMON_H

#include <stdint.h>
#include <string.h>

#include "ferry/tensor.h"
#include "ops.h"
#include "tensor/fp16.h"

/* Address of element (i0,i1,i2,i3); for quantized types i0 must be a block start. */
static inline void *tensor_at(const struct ferry_tensor *t, int64_t i0, int64_t i1, int64_t i2,
                              int64_t i3) {
    return (char *)t->data + (i0 / ferry_blck_size(t->type)) * (int64_t)t->nb[0] +
           i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] + i3 * (int64_t)t->nb[3];
}

/* Address of the first element of row (i1,i2,i3). */
static inline void *tensor_row(const struct ferry_tensor *t, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] + i3 * (int64_t)t->nb[3];
}

/* Splits n items into nth nearly equal ranges; thread ith gets [*begin, *end). */
static inline void split_range(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = (n + nth - 1) / nth;
    int64_t b = per * ith;
    int64_t e = b + per;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

/* Flat row index r -> (i1, i2, i3). */
static inline void row_coords(const struct ferry_tensor *t, int64_t r, int64_t *i1, int64_t *i2,
                              int64_t *i3) {
    *i3 = r / (t->ne[1] * t->ne[2]);
    r -= *i3 * t->ne[1] * t->ne[2];
    *i2 = r / t->ne[1];
    *i1 = r - *i2 * t->ne[1];
}

/* Runs fn on this thread's share of the node's rows. */
typedef void (*node_row_fn)(struct ferry_tensor *node, int64_t i1, int64_t i2, int64_t i3);

static inline void for_my_rows(const struct ferry_compute_params *p, struct ferry_tensor *node, node_row_fn fn) {
    int64_t r0, r1;
    split_range(ferry_nrows(node), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(node, r, &i1, &i2, &i3);
        fn(node, i1, i2, i3);
    }
}

/* Scalar load/store for the float-like types F32, F16, BF16. */
static inline float load_f32(enum ferry_type type, const void *p) {
    switch (type) {
    case FERRY_TYPE_F16: { uint16_t h; memcpy(&h, p, 2); return fp16_to_fp32(h); }
    case FERRY_TYPE_BF16: { uint16_t h; memcpy(&h, p, 2); return bf16_to_fp32(h); }
    default: { float f; memcpy(&f, p, 4); return f; }
    }
}

static inline void store_f32(enum ferry_type type, void *p, float v) {
    switch (type) {
    case FERRY_TYPE_F16: { uint16_t h = fp32_to_fp16(v); memcpy(p, &h, 2); break; }
    case FERRY_TYPE_BF16: { uint16_t h = fp32_to_bf16(v); memcpy(p, &h, 2); break; }
    default: memcpy(p, &v, 4); break;
    }
}

static inline bool is_float_type(enum ferry_type t) {
    return t == FERRY_TYPE_F32 || t == FERRY_TYPE_F16 || t == FERRY_TYPE_BF16;
}

/* Common check helpers: each returns FERRY_OK or fails err with a reason
 * that names the node's op. */
int check_src_count(const struct ferry_tensor *node, int n_required, struct ferry_error *err);
int check_type_in(const struct ferry_tensor *node, const char *what, enum ferry_type t,
                  const enum ferry_type *allowed, int n_allowed, struct ferry_error *err);
int check_same_shape(const struct ferry_tensor *node, const struct ferry_tensor *a,
                     const struct ferry_tensor *b, struct ferry_error *err);
int check_rows_contiguous(const struct ferry_tensor *node, const struct ferry_tensor *t,
                          const char *what, struct ferry_error *err);
int check_contiguous(const struct ferry_tensor *node, const struct ferry_tensor *t,
                     const char *what, struct ferry_error *err);
/* Data pointer and strides (of dims with ne > 1) must be multiples of the
 * type's natural alignment: kernels load elements and block fields directly,
 * and a misaligned float access is undefined behaviour (and can fault once
 * the compiler vectorises the loop). A NULL data pointer is not checked.
 * The engine applies it to every tensor of every node. */
int check_aligned(const struct ferry_tensor *node, const struct ferry_tensor *t, const char *what,
                  struct ferry_error *err);
/* The node's own shape must be what the op produces. */
int check_dst_shape(const struct ferry_tensor *node, int64_t ne0, int64_t ne1, int64_t ne2,
                    int64_t ne3, struct ferry_error *err);

#endif
