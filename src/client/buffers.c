/* ferry client: remote buffers, where tensors live in them, and bringing
 * them back after a reconnect.
 *
 * The client keeps every live buffer in a registry so that reconnect can
 * allocate each again. Placed tensors hold place_base + offset in their
 * data pointer, place_base being the buffer's first server base; the
 * current address (base + offset) is computed only when a tensor goes on
 * the wire, so a new base after a reconnect needs no caller work.
 *
 * Large uploads are remembered as (buffer, offset, size, FNV-1a) memos: the
 * server caches such payloads by hash, so after a reconnect they come back
 * with one 312-byte SET_TENSOR_HASH each instead of the data. A memo is
 * dropped when a later write overlaps it, so a restore never brings back
 * bytes that were overwritten. */
#include <stdlib.h>
#include <string.h>

#include "client/internal.h"

/* ---- the registry --------------------------------------------------------------- */

int client_alloc_remote(struct ferry_client *c, struct ferry_remote_buffer *buf,
                        struct ferry_error *err) {
    struct ferry_rpc_alloc_buffer q = { buf->device, buf->size };
    uint8_t req[FERRY_RPC_ALLOC_BUFFER_SIZE], rsp[16];
    ferry_rpc_encode_alloc_buffer(&q, req);
    struct iovec v = { req, sizeof req };
    buf->handle = 0;
    int rc = client_call(c, FERRY_RPC_CMD_ALLOC_BUFFER, &v, 1, rsp, sizeof rsp, err);
    struct ferry_rpc_alloc_buffer_rsp a;
    if (!rc) rc = ferry_rpc_decode_alloc_buffer_rsp(rsp, sizeof rsp, &a, err);
    if (rc) return rc;
    if (a.remote_ptr == 0)
        return ferry_fail(err, FERRY_ERR_NOMEM, "%s: server could not allocate %llu bytes on device %u",
                          c->endpoint, (unsigned long long)buf->size, buf->device);
    if (a.remote_size < buf->size)
        return ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: buffer of %llu bytes for %llu asked", c->endpoint,
                          (unsigned long long)a.remote_size, (unsigned long long)buf->size);
    uint8_t breq[FERRY_RPC_BUFFER_REQ_SIZE], brsp[8];
    ferry_rpc_encode_buffer(a.remote_ptr, breq);
    v = (struct iovec){ breq, sizeof breq };
    rc = client_call(c, FERRY_RPC_CMD_BUFFER_GET_BASE, &v, 1, brsp, sizeof brsp, err);
    if (!rc) rc = ferry_rpc_decode_u64_rsp(brsp, sizeof brsp, &buf->base, err);
    if (rc) return rc;
    buf->handle = a.remote_ptr;
    return FERRY_OK;
}

void client_unregister(struct ferry_client *c, struct ferry_remote_buffer *buf) {
    client_memo_drop(c, buf, 0, UINT64_MAX);
    if (buf->prev) buf->prev->next = buf->next;
    else c->buffers = buf->next;
    if (buf->next) buf->next->prev = buf->prev;
    buf->prev = buf->next = NULL;
    buf->client = NULL;
    buf->handle = 0;
}

int ferry_client_alloc_buffer(struct ferry_client *c, uint32_t device, uint64_t size,
                              struct ferry_remote_buffer *buf, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    memset(buf, 0, sizeof *buf);
    buf->device = device;
    buf->size = size;
    pthread_mutex_lock(&c->lock);
    int rc = client_alloc_remote(c, buf, err);
    if (!rc) {
        buf->place_base = buf->base;
        buf->client = c;
        buf->next = c->buffers;
        if (c->buffers) c->buffers->prev = buf;
        c->buffers = buf;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_free_buffer(struct ferry_client *c, struct ferry_remote_buffer *buf,
                             struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    if (buf->client != c) return ferry_fail(err, FERRY_ERR_INVALID, "free_buffer: not this client's buffer");
    pthread_mutex_lock(&c->lock);
    int rc = FERRY_OK;
    if (c->conn && buf->handle) {
        uint8_t req[FERRY_RPC_BUFFER_REQ_SIZE];
        ferry_rpc_encode_buffer(buf->handle, req);
        struct iovec v = { req, sizeof req };
        rc = client_call(c, FERRY_RPC_CMD_FREE_BUFFER, &v, 1, NULL, 0, err);
    }
    /* the server refuses GRAPH_RECOMPUTE of a graph that used a freed buffer */
    client_forget_graphs(c);
    client_unregister(c, buf);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ferry_client_buffer_clear(struct ferry_client *c, struct ferry_remote_buffer *buf,
                              uint8_t value, struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    if (buf->client != c) return ferry_fail(err, FERRY_ERR_INVALID, "buffer_clear: not this client's buffer");
    pthread_mutex_lock(&c->lock);
    int rc = client_check_open(c, err);
    if (!rc && !buf->handle) rc = ferry_fail(err, FERRY_ERR_INVALID, "buffer_clear: buffer was lost");
    if (!rc) {
        struct ferry_rpc_buffer_clear q = { buf->handle, value };
        uint8_t req[FERRY_RPC_BUFFER_CLEAR_SIZE];
        ferry_rpc_encode_buffer_clear(&q, req);
        struct iovec v = { req, sizeof req };
        client_memo_drop(c, buf, 0, UINT64_MAX);
        rc = client_call(c, FERRY_RPC_CMD_BUFFER_CLEAR, &v, 1, NULL, 0, err);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- tensor placement --------------------------------------------------------------- */

int client_tensor_offset(const struct ferry_tensor *t, uint64_t extent, uint64_t *offset,
                         struct ferry_error *err) {
    const struct ferry_remote_buffer *buf = t->buffer;
    uint64_t addr = (uint64_t)(uintptr_t)t->data;
    if (addr < buf->place_base || addr - buf->place_base > buf->size ||
        extent > buf->size - (addr - buf->place_base))
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s' is not inside its %llu-byte buffer", t->name,
                          (unsigned long long)buf->size);
    *offset = addr - buf->place_base;
    return FERRY_OK;
}

int ferry_remote_tensor_place(struct ferry_tensor *t, struct ferry_remote_buffer *buf,
                              uint64_t offset, struct ferry_error *err) {
    size_t n = 0;
    if (!ferry_nbytes_checked(t, &n))
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': bad shape or type", t->name);
    if (offset > buf->size || n > buf->size - offset)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s' (%zu bytes) does not fit at %llu in %llu bytes",
                          t->name, n, (unsigned long long)offset, (unsigned long long)buf->size);
    t->buffer = buf;
    t->data = (void *)(uintptr_t)(buf->place_base + offset);
    return FERRY_OK;
}

int ferry_remote_tensor_view(struct ferry_tensor *view, struct ferry_tensor *base,
                             size_t view_offs, struct ferry_error *err) {
    view->view_src = base;
    view->view_offs = view_offs;
    view->buffer = base->buffer;
    view->data = base->data ? (char *)base->data + view_offs : NULL;
    size_t n = 0;
    if (!ferry_nbytes_checked(view, &n))
        return ferry_fail(err, FERRY_ERR_INVALID, "view '%s': bad shape or type", view->name);
    uint64_t at = 0;
    return view->buffer ? client_tensor_offset(view, n, &at, err) : FERRY_OK;
}

/* How t appears on the wire: the current handle and server address. */
int client_locate(void *ctx, const struct ferry_tensor *t, uint64_t *buffer, uint64_t *data,
                  struct ferry_error *err) {
    struct ferry_client *c = ctx;
    struct ferry_remote_buffer *buf = t->buffer;
    *buffer = *data = 0;
    if (!buf) return FERRY_OK;
    if (buf->client != c)
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s' is in a buffer of another connection", t->name);
    if (!buf->handle) return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': its buffer was lost", t->name);
    size_t n = 0;
    uint64_t off = 0;
    if (!ferry_nbytes_checked(t, &n))
        return ferry_fail(err, FERRY_ERR_INVALID, "tensor '%s': bad shape or type", t->name);
    int rc = client_tensor_offset(t, n, &off, err);
    if (rc) return rc;
    *buffer = buf->handle;
    *data = buf->base + off;
    return FERRY_OK;
}

int client_tensor_record(struct ferry_client *c, const struct ferry_tensor *t,
                         struct ferry_rpc_tensor *r, struct ferry_error *err) {
    uint64_t buffer = 0, data = 0;
    int rc = client_locate(c, t, &buffer, &data, err);
    if (rc) return rc;
    return ferry_rpc_tensor_from_ferry(t, (uint64_t)(uintptr_t)t, buffer, data, r, err);
}

/* ---- upload memos and restore ----------------------------------------------------------- */

void client_memo_drop(struct ferry_client *c, const struct ferry_remote_buffer *buf,
                      uint64_t offset, uint64_t size) {
    uint64_t end = size > UINT64_MAX - offset ? UINT64_MAX : offset + size;
    size_t kept = 0;
    for (size_t i = 0; i < c->n_memos; i++) {
        const struct upload_memo *m = &c->memos[i];
        bool overlaps = m->buf == buf && m->offset < end && offset < m->offset + m->size;
        if (!overlaps) c->memos[kept++] = *m;
    }
    c->n_memos = kept;
}

void client_memo_add(struct ferry_client *c, struct ferry_remote_buffer *buf, uint64_t offset,
                     uint64_t size, uint64_t hash) {
    /* restore sends a 1-D i8 record, whose ne0 is 32 bits on the wire */
    if (size > UINT32_MAX) return;
    client_memo_drop(c, buf, offset, size);
    if (c->n_memos == c->cap_memos) {
        size_t cap = c->cap_memos ? 2 * c->cap_memos : 16;
        struct upload_memo *m = realloc(c->memos, cap * sizeof *m);
        if (!m) return; /* only an optimisation is lost */
        c->memos = m;
        c->cap_memos = cap;
    }
    c->memos[c->n_memos++] = (struct upload_memo){ buf, offset, size, hash };
}

int ferry_client_restore(struct ferry_client *c, uint32_t *restored, uint32_t *missing,
                         struct ferry_error *err) {
    ERR_OR_LOCAL(err);
    uint32_t hits = 0, misses = 0;
    pthread_mutex_lock(&c->lock);
    int rc = client_check_open(c, err);
    for (size_t i = 0; i < c->n_memos && !rc; i++) {
        const struct upload_memo *m = &c->memos[i];
        if (!m->buf->handle) {
            misses++;
            continue;
        }
        /* the bytes as one i8 row at their place in the buffer */
        struct ferry_rpc_set_tensor_hash q = { .offset = 0, .hash = m->hash };
        q.tensor.id = 1;
        q.tensor.type = FERRY_TYPE_I8;
        q.tensor.buffer = m->buf->handle;
        q.tensor.data = m->buf->base + m->offset;
        q.tensor.ne[0] = (uint32_t)m->size;
        q.tensor.ne[1] = q.tensor.ne[2] = q.tensor.ne[3] = 1;
        q.tensor.nb[0] = 1;
        q.tensor.nb[1] = q.tensor.nb[2] = q.tensor.nb[3] = (uint32_t)m->size;
        uint8_t req[FERRY_RPC_SET_TENSOR_HASH_SIZE], rsp[1], v = 0;
        ferry_rpc_encode_set_tensor_hash(&q, req);
        struct iovec iov = { req, sizeof req };
        rc = client_call(c, FERRY_RPC_CMD_SET_TENSOR_HASH, &iov, 1, rsp, 1, err);
        if (!rc) rc = ferry_rpc_decode_u8_rsp(rsp, 1, &v, err);
        if (!rc && v == 1) hits++;
        else if (!rc) misses++;
    }
    pthread_mutex_unlock(&c->lock);
    if (restored) *restored = hits;
    if (missing) *missing = misses;
    return rc;
}
