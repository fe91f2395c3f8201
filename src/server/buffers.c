/* Per-connection buffer table: small linear array (clients hold a few dozen
 * buffers at most), fake address space, lazily zeroed memory. */
#include "server/buffers.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>

/* Above this, buffers are mmap'd: the kernel zeroes pages on first touch,
 * so a new client never sees old bytes and we pay no up-front fill. */
#define MMAP_THRESHOLD (256u * 1024u)
/* Space left between two buffers' fake ranges, so an address just past one
 * buffer never lands in the next. */
#define FAKE_GAP (1ull << 20)

uint64_t buffers_random_u64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v) return v;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    v = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&v;
    v ^= v >> 31;
    return v * 0xbf58476d1ce4e5b9ull;
}

void buffers_init(struct buffer_table *t) {
    memset(t, 0, sizeof *t);
    /* a random page-aligned start in [2^47, 2^48): just above x86-64's
     * user address space (4-level paging), so a base can never be mistaken
     * for, or collide with, memory of this process; clients only add
     * offsets to it and never dereference it. About 2^34 starts, so two
     * connections' address ranges practically never coincide (with 127
     * starts they did once in a hundred pairs, and a client's guess of
     * another connection's addresses landed in its own buffer). */
    const uint64_t region = 0x80ull + buffers_random_u64() % 0x7f, page = buffers_random_u64() % (1ull << 27);
    t->next_base = region << 40 | page << 12;
}

static void release(struct srv_buffer *b) {
    if (b->mem == NULL) return;
    if (b->mapped)
        munmap(b->mem, (size_t)b->size);
    else
        free(b->mem);
    b->mem = NULL;
}

uint64_t buffers_destroy(struct buffer_table *t) {
    uint64_t total = 0;
    for (size_t i = 0; i < t->n; i++) {
        total += t->v[i].size;
        release(&t->v[i]);
    }
    free(t->v);
    memset(t, 0, sizeof *t);
    return total;
}

struct srv_buffer *buffers_find(struct buffer_table *t, uint64_t handle) {
    if (handle == 0) return NULL;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].handle == handle) return &t->v[i];
    return NULL;
}

static uint64_t new_handle(struct buffer_table *t) {
    for (;;) {
        uint64_t h = buffers_random_u64();
        if (h != 0 && buffers_find(t, h) == NULL) return h;
    }
}

struct srv_buffer *buffers_alloc(struct buffer_table *t, uint64_t size) {
    if (size > SIZE_MAX / 2) return NULL;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct srv_buffer *v = realloc(t->v, cap * sizeof *v);
        if (v == NULL) return NULL;
        t->v = v;
        t->cap = cap;
    }
    struct srv_buffer b = { .handle = new_handle(t), .size = size };
    if (size > 0) {
        uint64_t base = (t->next_base + FERRY_BUFFER_ALIGNMENT - 1) & ~(uint64_t)(FERRY_BUFFER_ALIGNMENT - 1);
        uint64_t end;
        if (base < t->next_base || __builtin_add_overflow(base, size, &end) ||
            __builtin_add_overflow(end, FAKE_GAP + FERRY_BUFFER_ALIGNMENT, &end))
            return NULL; /* fake address space used up (after exabytes of allocations) */
        if (size >= MMAP_THRESHOLD) {
            void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
            b.mem = p;
            b.mapped = true;
        } else {
            size_t rounded = ((size_t)size + 63) & ~(size_t)63;
            b.mem = aligned_alloc(64, rounded);
            if (b.mem == NULL) return NULL;
            memset(b.mem, 0, rounded);
        }
        b.base = base;
        t->next_base = base + size + FAKE_GAP;
    }
    t->v[t->n] = b;
    return &t->v[t->n++];
}

bool buffers_free(struct buffer_table *t, uint64_t handle, uint64_t *size) {
    struct srv_buffer *b = buffers_find(t, handle);
    if (b == NULL) return false;
    *size = b->size;
    release(b);
    *b = t->v[--t->n];
    return true;
}

int buffers_resolve(void *ctx, uint64_t buffer, uint64_t data, size_t nbytes, void **host_ptr,
                    struct ferry_error *err) {
    struct buffer_table *t = ctx;
    struct srv_buffer *b = buffers_find(t, buffer);
    if (b == NULL)
        return ferry_fail(err, FERRY_ERR_INVALID, "unknown buffer handle %#llx",
                          (unsigned long long)buffer);
    uint64_t end;
    if (data < b->base || __builtin_add_overflow(data, (uint64_t)nbytes, &end) ||
        end > b->base + b->size)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "extent %#llx+%zu outside buffer %#llx [%#llx, +%llu)",
                          (unsigned long long)data, nbytes, (unsigned long long)buffer,
                          (unsigned long long)b->base, (unsigned long long)b->size);
    *host_ptr = b->mem ? b->mem + (data - b->base) : NULL;
    return FERRY_OK;
}
