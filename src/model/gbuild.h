/* Building graphs of ferry tensors for one node: the tensor structs come
 * from a pool that never moves (the RPC client names tensors by address,
 * so an unchanged graph encodes to the same bytes and can be recomputed),
 * and their memory from a bump allocator over the node's compute buffer.
 *
 * The allocator knows only offsets: base is the host address of a local
 * buffer, or a remote buffer's place_base (then buffer is the remote
 * buffer, as ferry_remote_tensor_place would set it). A measuring build
 * (base 0, buffer NULL, measure true) finds the peak size to reserve.
 *
 * Memory is reused by scope: gb_mark() before a layer, gb_release() after
 * it, with the layer's result allocated in a slot that outlives it. Nodes
 * run in order, so nothing released is read again. */
#ifndef FERRY_MODEL_GBUILD_H
#define FERRY_MODEL_GBUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/tensor.h"

struct gbuild {
    struct ferry_tensor *pool; /* fixed at init: addresses are ids on the wire */
    int n_pool, cap_pool;
    struct ferry_tensor **nodes; /* compute nodes in execution order */
    int n_nodes, cap_nodes;
    uintptr_t base;
    void *buffer;
    size_t align;
    size_t off, peak, limit; /* limit: bytes available (SIZE_MAX when measuring) */
    bool measure;
    struct ferry_tensor *place_next; /* the next op writes into this memory */
    int failed;          /* first error code, 0 if none */
    char why[160];
};

int gb_init(struct gbuild *g, int cap_tensors, size_t align, struct ferry_error *err);
void gb_free(struct gbuild *g);
/* Starts a new graph: empties the pool and the allocator. */
void gb_begin(struct gbuild *g, uintptr_t base, void *buffer, size_t limit, bool measure);
/* FERRY_OK, or the first failure of the build with its reason. */
int gb_status(const struct gbuild *g, struct ferry_error *err);

size_t gb_mark(const struct gbuild *g);
void gb_release(struct gbuild *g, size_t mark);

/* The next op's result takes like's memory instead of new memory (a slot
 * that outlives the current scope); like must be at least as large. */
void gb_place_next(struct gbuild *g, struct ferry_tensor *like);

/* A tensor with memory from the allocator (a leaf: op NONE). */
struct ferry_tensor *gb_new(struct gbuild *g, enum ferry_type type, int64_t ne0, int64_t ne1,
                            int64_t ne2, int64_t ne3, const char *name);
/* A tensor struct for memory that lives elsewhere (weights, caches). */
struct ferry_tensor *gb_wrap(struct gbuild *g, const struct ferry_tensor *src);

/* Views: same memory, no node. */
struct ferry_tensor *gb_view(struct gbuild *g, struct ferry_tensor *a, int64_t ne0, int64_t ne1,
                             int64_t ne2, size_t nb1, size_t nb2, size_t offset);
struct ferry_tensor *gb_reshape(struct gbuild *g, struct ferry_tensor *a, int64_t ne0, int64_t ne1,
                                int64_t ne2);
struct ferry_tensor *gb_permute(struct gbuild *g, struct ferry_tensor *a, int ax0, int ax1, int ax2,
                                int ax3);

/* Ops: each allocates its result and appends a compute node. */
struct ferry_tensor *gb_get_rows(struct gbuild *g, struct ferry_tensor *table, struct ferry_tensor *ids);
struct ferry_tensor *gb_rms_norm(struct gbuild *g, struct ferry_tensor *a, float eps);
struct ferry_tensor *gb_mul(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *b);
struct ferry_tensor *gb_add(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *b);
struct ferry_tensor *gb_mul_mat(struct gbuild *g, struct ferry_tensor *w, struct ferry_tensor *x);
struct ferry_tensor *gb_rope(struct gbuild *g, struct ferry_tensor *a, struct ferry_tensor *pos,
                             struct ferry_tensor *freq_factors, int n_dims, int mode,
                             int n_ctx_orig, float freq_base, float freq_scale);
/* Writes rows of src into dst at ids; the node is a view of dst. */
struct ferry_tensor *gb_set_rows(struct gbuild *g, struct ferry_tensor *dst, struct ferry_tensor *src,
                                 struct ferry_tensor *ids);
struct ferry_tensor *gb_flash_attn(struct gbuild *g, struct ferry_tensor *q, struct ferry_tensor *k,
                                   struct ferry_tensor *v, struct ferry_tensor *mask, float scale);
struct ferry_tensor *gb_swiglu(struct gbuild *g, struct ferry_tensor *x, struct ferry_tensor *gate);

#endif
