/* GGUF v3 writer: metadata is serialized into a growing buffer as it is
 * added; tensors are remembered by reference and streamed at write time. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/gguf.h"

#define ALIGNMENT 32

struct buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
};

struct wtensor {
    char name[FERRY_MAX_NAME];
    enum ferry_type type;
    int n_dims;
    int64_t ne[FERRY_MAX_DIMS];
    size_t size, offset;
    const void *data;
};

struct ferry_gguf_writer {
    struct buf kv;
    uint64_t n_kv;
    struct wtensor *tensors;
    size_t n_tensors, cap_tensors;
    size_t data_size;
};

static void put(struct buf *b, const void *p, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = true; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void put_u32(struct buf *b, uint32_t v) {
    uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    put(b, x, 4);
}
static void put_u64(struct buf *b, uint64_t v) { put_u32(b, (uint32_t)v); put_u32(b, (uint32_t)(v >> 32)); }
static void put_str(struct buf *b, const char *s) { size_t n = strlen(s); put_u64(b, n); put(b, s, n); }

static int begin_kv(struct ferry_gguf_writer *w, const char *key, enum ferry_gguf_type t) {
    put_str(&w->kv, key);
    put_u32(&w->kv, (uint32_t)t);
    w->n_kv++;
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

struct ferry_gguf_writer *ferry_gguf_writer_new(void) { return calloc(1, sizeof(struct ferry_gguf_writer)); }

void ferry_gguf_writer_free(struct ferry_gguf_writer *w) {
    if (!w) return;
    free(w->kv.p);
    free(w->tensors);
    free(w);
}

int ferry_gguf_writer_add_u32(struct ferry_gguf_writer *w, const char *key, uint32_t v) {
    begin_kv(w, key, FERRY_GGUF_U32);
    put_u32(&w->kv, v);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_i32(struct ferry_gguf_writer *w, const char *key, int32_t v) {
    begin_kv(w, key, FERRY_GGUF_I32);
    put_u32(&w->kv, (uint32_t)v);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_f32(struct ferry_gguf_writer *w, const char *key, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    begin_kv(w, key, FERRY_GGUF_F32);
    put_u32(&w->kv, u);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_bool(struct ferry_gguf_writer *w, const char *key, bool v) {
    uint8_t b = v;
    begin_kv(w, key, FERRY_GGUF_BOOL);
    put(&w->kv, &b, 1);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_str(struct ferry_gguf_writer *w, const char *key, const char *v) {
    begin_kv(w, key, FERRY_GGUF_STRING);
    put_str(&w->kv, v);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

static size_t elem_size(enum ferry_gguf_type t) {
    switch (t) {
    case FERRY_GGUF_U8: case FERRY_GGUF_I8: case FERRY_GGUF_BOOL: return 1;
    case FERRY_GGUF_U16: case FERRY_GGUF_I16: return 2;
    case FERRY_GGUF_U32: case FERRY_GGUF_I32: case FERRY_GGUF_F32: return 4;
    case FERRY_GGUF_U64: case FERRY_GGUF_I64: case FERRY_GGUF_F64: return 8;
    default: return 0;
    }
}

int ferry_gguf_writer_add_arr(struct ferry_gguf_writer *w, const char *key, enum ferry_gguf_type elem_type,
                              const void *data, uint64_t n) {
    size_t es = elem_size(elem_type);
    if (!es) return FERRY_ERR_INVALID;
    begin_kv(w, key, FERRY_GGUF_ARRAY);
    put_u32(&w->kv, (uint32_t)elem_type);
    put_u64(&w->kv, n);
    put(&w->kv, data, (size_t)n * es); /* host is little-endian x86-64 */
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_arr_str(struct ferry_gguf_writer *w, const char *key, const char *const *strs,
                                  uint64_t n) {
    begin_kv(w, key, FERRY_GGUF_ARRAY);
    put_u32(&w->kv, FERRY_GGUF_STRING);
    put_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) put_str(&w->kv, strs[i]);
    return w->kv.oom ? FERRY_ERR_NOMEM : FERRY_OK;
}

int ferry_gguf_writer_add_tensor(struct ferry_gguf_writer *w, const char *name, enum ferry_type type,
                                 int n_dims, const int64_t *ne, const void *data) {
    if (strlen(name) >= FERRY_MAX_NAME || n_dims < 1 || n_dims > FERRY_MAX_DIMS || !ferry_type_valid(type))
        return FERRY_ERR_INVALID;
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
        struct wtensor *t = realloc(w->tensors, cap * sizeof *t);
        if (!t) return FERRY_ERR_NOMEM;
        w->tensors = t;
        w->cap_tensors = cap;
    }
    struct wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    struct ferry_tensor desc;
    ferry_tensor_init(&desc, type, n_dims, ne, NULL);
    for (int d = 0; d < FERRY_MAX_DIMS; d++) t->ne[d] = desc.ne[d];
    if (!ferry_nbytes_checked(&desc, &t->size) || ne[0] % ferry_blck_size(type) != 0) return FERRY_ERR_INVALID;
    t->offset = w->data_size;
    t->data = data;
    w->data_size += (t->size + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    w->n_tensors++;
    return FERRY_OK;
}

static bool write_all(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }

int ferry_gguf_writer_write(struct ferry_gguf_writer *w, const char *path, struct ferry_error *err) {
    struct buf head = { 0 };
    put(&head, "GGUF", 4);
    put_u32(&head, 3);
    put_u64(&head, w->n_tensors);
    put_u64(&head, w->n_kv);
    put(&head, w->kv.p, w->kv.len);
    for (size_t i = 0; i < w->n_tensors; i++) {
        const struct wtensor *t = &w->tensors[i];
        put_str(&head, t->name);
        put_u32(&head, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&head, (uint64_t)t->ne[d]);
        put_u32(&head, (uint32_t)t->type);
        put_u64(&head, t->offset);
    }
    static const uint8_t zeros[ALIGNMENT];
    put(&head, zeros, (ALIGNMENT - head.len % ALIGNMENT) % ALIGNMENT);
    if (head.oom || w->kv.oom) {
        free(head.p);
        return ferry_fail(err, FERRY_ERR_NOMEM, "gguf: out of memory");
    }
    /* write to a temporary name and rename, so readers never see half a file */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(head.p);
        return ferry_fail(err, FERRY_ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    bool ok = write_all(f, head.p, head.len);
    for (size_t i = 0; i < w->n_tensors && ok; i++) {
        const struct wtensor *t = &w->tensors[i];
        ok = write_all(f, t->data, t->size) &&
             write_all(f, zeros, (ALIGNMENT - t->size % ALIGNMENT) % ALIGNMENT);
    }
    free(head.p);
    if (fclose(f) != 0) ok = false;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return ferry_fail(err, FERRY_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return FERRY_OK;
}
