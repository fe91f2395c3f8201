/* The kernel interface between the graph executor and the CPU ops.
 *
 * Every thread of the pool calls an op's compute() for the same node with
 * its own ith (0..nth-1) and takes its share of the rows. An op that needs a
 * preparation step (converting src1 into scratch, say) does it, then calls
 * ferry_barrier(), then computes. Ops never abort: a bad index found while
 * running is reported with ferry_op_fail() and the graph stops after the node. */
#ifndef FERRY_OPS_H
#define FERRY_OPS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "ferry/error.h"
#include "ferry/tensor.h"

/* The first failure of a running graph, shared by every thread. */
struct ferry_op_status {
    atomic_int failed;
    struct ferry_error err; /* written once, by the thread that set failed */
};

/* What the executor hands each kernel call: the thread's share, scratch,
 * the graph's barrier and failure slot. Kernels reach the executor only
 * through these, never by calling up into it. */
struct ferry_compute_params {
    int ith, nth;
    void *wdata;  /* scratch shared by all threads for this node, 64-byte aligned */
    size_t wsize; /* its size: at least what work_size() asked for */
    void (*barrier)(void *ctx); /* waits until every thread has reached it */
    void *barrier_ctx;
    struct ferry_op_status *status;
};

/* Waits until every thread of the pool has reached it. */
static inline void ferry_barrier(const struct ferry_compute_params *p) { p->barrier(p->barrier_ctx); }
/* Records the first failure of the running graph; later ones are ignored. */
void ferry_op_fail(const struct ferry_compute_params *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool ferry_op_failed(const struct ferry_compute_params *p);

struct ferry_kernel {
    /* Validates types, shapes, layouts and params of node: no data access. */
    int (*check)(const struct ferry_tensor *node, struct ferry_error *err);
    /* Scratch bytes the node needs with nth threads; NULL means none. */
    size_t (*work_size)(const struct ferry_tensor *node, int nth);
    void (*compute)(const struct ferry_compute_params *p, struct ferry_tensor *node);
};

/* The kernel of an op, or NULL when the engine has none. */
const struct ferry_kernel *ferry_kernel_for(int op);

/* Families that keep their own op -> kernel switch (family_*.c); NULL for
 * ops they do not have. registry.c asks them after its own table. */
const struct ferry_kernel *ferry_conv_kernel(int op);
const struct ferry_kernel *ferry_train_kernel(int op);
const struct ferry_kernel *ferry_seq_kernel(int op);

/* One kernel per op family file (see registry.c). */
extern const struct ferry_kernel ferry_kernel_dup;        /* DUP, CPY, CONT: copy.c */
extern const struct ferry_kernel ferry_kernel_get_rows;   /* rows.c */
extern const struct ferry_kernel ferry_kernel_set_rows;   /* rows.c */
extern const struct ferry_kernel ferry_kernel_binary;     /* ADD SUB MUL DIV: binary.c */
extern const struct ferry_kernel ferry_kernel_add_id;     /* binary.c */
extern const struct ferry_kernel ferry_kernel_unary;      /* UNARY: unary.c */
extern const struct ferry_kernel ferry_kernel_sqr;        /* SQR, SQRT: unary.c */
extern const struct ferry_kernel ferry_kernel_scale;      /* unary.c */
extern const struct ferry_kernel ferry_kernel_clamp;      /* unary.c */
extern const struct ferry_kernel ferry_kernel_leaky_relu; /* unary.c */
extern const struct ferry_kernel ferry_kernel_glu;        /* glu.c */
extern const struct ferry_kernel ferry_kernel_sum;        /* SUM, SUM_ROWS, MEAN, CUMSUM: reduce.c */
extern const struct ferry_kernel ferry_kernel_argmax;     /* reduce.c */
extern const struct ferry_kernel ferry_kernel_argsort;    /* ARGSORT, TOP_K: reduce.c */
extern const struct ferry_kernel ferry_kernel_norm;       /* NORM, RMS_NORM, L2_NORM: norm.c */
extern const struct ferry_kernel ferry_kernel_concat;     /* shape.c */
extern const struct ferry_kernel ferry_kernel_repeat;     /* shape.c */
extern const struct ferry_kernel ferry_kernel_pad;        /* shape.c */
extern const struct ferry_kernel ferry_kernel_fill;       /* FILL, ARANGE: shape.c */
extern const struct ferry_kernel ferry_kernel_tri;        /* TRI, DIAG_MASK_INF: shape.c */
extern const struct ferry_kernel ferry_kernel_soft_max;   /* softmax.c */
extern const struct ferry_kernel ferry_kernel_rope;       /* rope.c */
extern const struct ferry_kernel ferry_kernel_mul_mat;    /* matmul.c */
extern const struct ferry_kernel ferry_kernel_mul_mat_id; /* matmul.c */
extern const struct ferry_kernel ferry_kernel_flash_attn; /* attention.c */

#endif
