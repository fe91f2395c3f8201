/* Per-thread slices of the node's shared scratch (params->wdata).
 *
 * An op that needs `count` elements of `elem` bytes per thread asks for
 * scratch_size(nth, count, elem) in work_size() and takes its slice with
 * scratch_slice(). The size saturates to SIZE_MAX on overflow (the engine
 * then fails to allocate), and scratch_slice() returns NULL when the buffer
 * it got is smaller than asked, so a kernel can fail cleanly instead of
 * writing past it. */
#ifndef FERRY_OPS_SCRATCH_H
#define FERRY_OPS_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

/* One thread's slice in bytes, rounded up to a cache line; SIZE_MAX on overflow. */
static inline size_t scratch_slice_bytes(size_t count, size_t elem) {
    size_t b;
    if (__builtin_mul_overflow(count, elem, &b) || b > SIZE_MAX - 63) return SIZE_MAX;
    return (b + 63) & ~(size_t)63;
}

static inline size_t scratch_size(int nth, size_t count, size_t elem) {
    size_t slice = scratch_slice_bytes(count, elem), total;
    if (slice == SIZE_MAX || nth < 1 || __builtin_mul_overflow(slice, (size_t)nth, &total))
        return SIZE_MAX;
    return total;
}

static inline void *scratch_slice(const struct ferry_compute_params *p, size_t count, size_t elem) {
    size_t slice = scratch_slice_bytes(count, elem);
    if (slice == SIZE_MAX || !p->wdata || slice > p->wsize / (size_t)p->nth) return NULL;
    return (char *)p->wdata + slice * (size_t)p->ith;
}

#endif
