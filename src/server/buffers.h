/* ferry server: one connection's buffer table.
 *
 * Handles and base addresses are opaque per-connection values, never server
 * pointers: handles are random non-zero 64-bit numbers, bases live in a
 * fake address space that starts at a random 2^40-aligned value above the
 * user address space (see buffers_init). ggml clients only echo handles
 * and add offsets to bases, so nothing we send reveals our memory layout. The resolver maps (handle, address, length)
 * back to host memory after a bounds check. */
#ifndef FERRY_SERVER_BUFFERS_H
#define FERRY_SERVER_BUFFERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#define FERRY_BUFFER_ALIGNMENT 32 /* what GET_ALIGNMENT answers, as ggml's CPU backend */

struct srv_buffer {
    uint64_t handle;
    uint64_t base; /* fake address of mem[0]; 0 for a zero-size buffer */
    uint64_t size;
    uint8_t *mem;
    bool mapped; /* mmap'd (large) rather than malloc'd (small) */
    void *reg;   /* the transport's registration (RDMA WRITE target), or NULL */
};

struct buffer_table {
    struct srv_buffer *v;
    size_t n, cap;
    uint64_t next_base; /* where the next buffer's fake range may start */
};

void buffers_init(struct buffer_table *t);
/* Frees every buffer; the total size released is returned. */
uint64_t buffers_destroy(struct buffer_table *t);

/* New zeroed buffer; NULL when memory cannot be had. The pointer is valid
 * until the next alloc or free on this table. */
struct srv_buffer *buffers_alloc(struct buffer_table *t, uint64_t size);
struct srv_buffer *buffers_find(struct buffer_table *t, uint64_t handle);
/* Frees a buffer; returns its size, or false when the handle is unknown. */
bool buffers_free(struct buffer_table *t, uint64_t handle, uint64_t *size);

/* The proto resolver (ctx is the struct buffer_table). */
int buffers_resolve(void *ctx, uint64_t buffer, uint64_t data, size_t nbytes, void **host_ptr,
                    struct ferry_error *err);

/* Random 64-bit value from getrandom (falls back to a time-seeded mix). */
uint64_t buffers_random_u64(void);

#endif
