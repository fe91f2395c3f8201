/* GGUF reader. Layout: magic "GGUF", u32 version, i64 n_tensors, i64 n_kv,
 * the key/value pairs, the tensor infos, padding to the alignment, data.
 * All integers little-endian. Every read goes through a bounds-checked
 * cursor; every count is compared with the bytes left before allocating. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/gguf.h"
#include "util/hash.h"

#define GGUF_DEFAULT_ALIGNMENT 32

struct kv {
    struct ferry_gguf_str key;
    enum ferry_gguf_type type;
    const uint8_t *val;              /* scalar value or first array element */
    enum ferry_gguf_type arr_type;   /* arrays only */
    uint64_t arr_count;              /* arrays only */
    struct ferry_gguf_str *strs;     /* string arrays only: one entry per element */
    struct ferry_gguf_str str;       /* strings only */
};

struct ferry_gguf {
    const uint8_t *base;
    size_t size;
    bool mapped;
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    int64_t n_kv;
    struct kv *kvs;
    int64_t n_tensors;
    struct ferry_gguf_tensor_info *tensors;
    int64_t *tensor_order; /* indices sorted by name, for lookup */
};

struct cursor {
    const uint8_t *p;
    size_t pos, size;
};

static bool take(struct cursor *c, size_t n, const uint8_t **out) {
    if (n > c->size - c->pos) return false;
    *out = c->p + c->pos;
    c->pos += n;
    return true;
}

static bool rd_u32(struct cursor *c, uint32_t *v) {
    const uint8_t *b;
    if (!take(c, 4, &b)) return false;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return true;
}

static bool rd_u64(struct cursor *c, uint64_t *v) {
    uint32_t lo, hi;
    if (!rd_u32(c, &lo) || !rd_u32(c, &hi)) return false;
    *v = (uint64_t)hi << 32 | lo;
    return true;
}

static bool rd_str(struct cursor *c, struct ferry_gguf_str *s) {
    uint64_t len;
    const uint8_t *b;
    if (!rd_u64(c, &len) || len > c->size - c->pos || !take(c, (size_t)len, &b)) return false;
    s->ptr = (const char *)b;
    s->len = len;
    return true;
}

static size_t scalar_size(enum ferry_gguf_type t) {
    switch (t) {
    case FERRY_GGUF_U8: case FERRY_GGUF_I8: case FERRY_GGUF_BOOL: return 1;
    case FERRY_GGUF_U16: case FERRY_GGUF_I16: return 2;
    case FERRY_GGUF_U32: case FERRY_GGUF_I32: case FERRY_GGUF_F32: return 4;
    case FERRY_GGUF_U64: case FERRY_GGUF_I64: case FERRY_GGUF_F64: return 8;
    default: return 0;
    }
}

static bool str_eq(struct ferry_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

static int str_cmp(struct ferry_gguf_str a, struct ferry_gguf_str b) {
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int r = memcmp(a.ptr, b.ptr, n);
    if (r) return r;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int parse_kv(struct ferry_gguf *g, struct cursor *c, struct kv *kv, struct ferry_error *err) {
    uint32_t type;
    if (!rd_str(c, &kv->key) || !rd_u32(c, &type))
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated key/value header");
    if (type >= FERRY_GGUF_TYPE_COUNT)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: key '%.*s' has unknown value type %u",
                          (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.ptr, type);
    kv->type = (enum ferry_gguf_type)type;
    if (kv->type == FERRY_GGUF_STRING) {
        kv->val = c->p + c->pos;
        if (!rd_str(c, &kv->str)) return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated string value");
        return FERRY_OK;
    }
    if (kv->type == FERRY_GGUF_ARRAY) {
        uint32_t at;
        uint64_t count;
        if (!rd_u32(c, &at) || !rd_u64(c, &count))
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated array header");
        if (at >= FERRY_GGUF_TYPE_COUNT || at == FERRY_GGUF_ARRAY)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: array of unsupported type %u", at);
        kv->arr_type = (enum ferry_gguf_type)at;
        kv->arr_count = count;
        kv->val = c->p + c->pos;
        if (kv->arr_type == FERRY_GGUF_STRING) {
            /* each element takes at least its 8-byte length */
            if (count > (c->size - c->pos) / 8)
                return ferry_fail(err, FERRY_ERR_INVALID, "gguf: string array count %llu exceeds the file",
                                  (unsigned long long)count);
            kv->strs = malloc((size_t)(count ? count : 1) * sizeof *kv->strs);
            if (!kv->strs) return ferry_fail(err, FERRY_ERR_NOMEM, "gguf: out of memory");
            for (uint64_t j = 0; j < count; j++)
                if (!rd_str(c, &kv->strs[j]))
                    return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated string array");
            return FERRY_OK;
        }
        size_t es = scalar_size(kv->arr_type);
        const uint8_t *b;
        if (count > (c->size - c->pos) / es || !take(c, (size_t)count * es, &b))
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: array of %llu elements exceeds the file",
                              (unsigned long long)count);
        return FERRY_OK;
    }
    const uint8_t *b;
    if (!take(c, scalar_size(kv->type), &b)) return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated value");
    kv->val = b;
    (void)g;
    return FERRY_OK;
}

static int parse_tensor_info(struct cursor *c, struct ferry_gguf_tensor_info *ti, struct ferry_error *err) {
    struct ferry_gguf_str name;
    uint32_t n_dims, type;
    if (!rd_str(c, &name) || !rd_u32(c, &n_dims))
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated tensor info");
    if (name.len >= FERRY_MAX_NAME)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor name of %llu bytes is too long",
                          (unsigned long long)name.len);
    memcpy(ti->name, name.ptr, (size_t)name.len);
    ti->name[name.len] = '\0';
    if (strlen(ti->name) != name.len)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor name contains a NUL byte");
    if (n_dims > FERRY_MAX_DIMS)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' has %u dims (max 4)", ti->name, n_dims);
    ti->n_dims = (int)n_dims;
    for (int d = 0; d < FERRY_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < (int)n_dims && !rd_u64(c, &v))
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated tensor info for '%s'", ti->name);
        if (v > INT64_MAX)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' has a negative dimension", ti->name);
        ti->ne[d] = (int64_t)v;
    }
    if (!rd_u32(c, &type) || !rd_u64(c, &ti->offset))
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated tensor info for '%s'", ti->name);
    if (!ferry_type_valid((int)type))
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' has invalid type %u", ti->name, type);
    ti->type = (enum ferry_type)type;
    int64_t bs = ferry_blck_size(ti->type);
    if (ti->ne[0] % bs != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s': ne0=%lld is not a multiple of the %s block",
                          ti->name, (long long)ti->ne[0], ferry_type_name(ti->type));
    /* bytes = ne0/bs*type_size * ne1 * ne2 * ne3, overflow-checked */
    uint64_t bytes = (uint64_t)(ti->ne[0] / bs);
    if (__builtin_mul_overflow(bytes, (uint64_t)ferry_type_size(ti->type), &bytes))
        goto overflow;
    for (int d = 1; d < FERRY_MAX_DIMS; d++)
        if (__builtin_mul_overflow(bytes, (uint64_t)ti->ne[d], &bytes)) goto overflow;
    if (bytes > SIZE_MAX) goto overflow;
    ti->size = (size_t)bytes;
    return FERRY_OK;
overflow:
    return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' size overflows", ti->name);
}

static int cmp_tensor_names(const void *a, const void *b, void *ctx) {
    const struct ferry_gguf *g = ctx;
    return strcmp(g->tensors[*(const int64_t *)a].name, g->tensors[*(const int64_t *)b].name);
}
static int cmp_keys(const void *a, const void *b) {
    return str_cmp(((const struct kv *)a)->key, ((const struct kv *)b)->key);
}

static int parse(struct ferry_gguf *g, struct ferry_error *err) {
    struct cursor c = { g->base, 0, g->size };
    const uint8_t *magic;
    uint64_t n_tensors, n_kv;
    if (g->size == 0) return ferry_fail(err, FERRY_ERR_INVALID, "gguf: empty file (0 bytes)");
    if (!take(&c, 4, &magic) || memcmp(magic, "GGUF", 4) != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: bad magic (not a GGUF file)");
    if (!rd_u32(&c, &g->version) || !rd_u64(&c, &n_tensors) || !rd_u64(&c, &n_kv))
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated header");
    if (g->version != 2 && g->version != 3)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: unsupported version %u", g->version);
    /* a key/value pair takes at least 12 bytes, a tensor info at least 24 */
    if (n_kv > (g->size - c.pos) / 12)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: %llu key/value pairs cannot fit in the file",
                          (unsigned long long)n_kv);
    if (n_tensors > (g->size - c.pos) / 24)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: %llu tensors cannot fit in the file",
                          (unsigned long long)n_tensors);
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->kvs = calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kvs);
    g->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors);
    g->tensor_order = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensor_order);
    if (!g->kvs || !g->tensors || !g->tensor_order) return ferry_fail(err, FERRY_ERR_NOMEM, "gguf: out of memory");

    for (int64_t i = 0; i < g->n_kv; i++) {
        int rc = parse_kv(g, &c, &g->kvs[i], err);
        if (rc) return rc;
    }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = ferry_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if (g->kvs[ai].type != FERRY_GGUF_U32)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: general.alignment is not a u32");
        memcpy(&a, g->kvs[ai].val, 4);
        if (a == 0 || (a & (a - 1)) != 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: alignment %u is not a power of two", a);
        g->alignment = a;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        int rc = parse_tensor_info(&c, &g->tensors[i], err);
        if (rc) return rc;
    }
    size_t data = c.pos;
    size_t pad = (g->alignment - data % g->alignment) % g->alignment;
    if (g->n_tensors > 0 && pad > g->size - data)
        return ferry_fail(err, FERRY_ERR_INVALID, "gguf: truncated before the data section");
    g->data_offset = data + pad;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        struct ferry_gguf_tensor_info *ti = &g->tensors[i];
        if (ti->offset % g->alignment != 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' offset %llu is not aligned",
                              ti->name, (unsigned long long)ti->offset);
        uint64_t avail = g->size > g->data_offset ? g->size - g->data_offset : 0;
        if (ti->offset > avail || ti->size > avail - ti->offset)
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: tensor '%s' data lies outside the file (truncated?)",
                              ti->name);
        ti->data = g->base + g->data_offset + ti->offset;
        g->tensor_order[i] = i;
    }
    /* duplicate names make lookups ambiguous: refuse them */
    qsort_r(g->tensor_order, (size_t)g->n_tensors, sizeof *g->tensor_order, cmp_tensor_names, g);
    for (int64_t i = 1; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[g->tensor_order[i]].name, g->tensors[g->tensor_order[i - 1]].name))
            return ferry_fail(err, FERRY_ERR_INVALID, "gguf: duplicate tensor name '%s'",
                              g->tensors[g->tensor_order[i]].name);
    struct kv *sorted = malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof *sorted);
    if (!sorted) return ferry_fail(err, FERRY_ERR_NOMEM, "gguf: out of memory");
    memcpy(sorted, g->kvs, (size_t)g->n_kv * sizeof *sorted);
    qsort(sorted, (size_t)g->n_kv, sizeof *sorted, cmp_keys);
    int rc = FERRY_OK;
    for (int64_t i = 1; i < g->n_kv && !rc; i++)
        if (!str_cmp(sorted[i].key, sorted[i - 1].key))
            rc = ferry_fail(err, FERRY_ERR_INVALID, "gguf: duplicate key '%.*s'",
                            (int)(sorted[i].key.len > 64 ? 64 : sorted[i].key.len), sorted[i].key.ptr);
    free(sorted);
    return rc;
}

int ferry_gguf_parse(const void *data, size_t size, struct ferry_gguf **out, struct ferry_error *err) {
    *out = NULL;
    struct ferry_gguf *g = calloc(1, sizeof *g);
    if (!g) return ferry_fail(err, FERRY_ERR_NOMEM, "gguf: out of memory");
    g->base = data;
    g->size = size;
    int rc = parse(g, err);
    if (rc) {
        ferry_gguf_close(g);
        return rc;
    }
    *out = g;
    return FERRY_OK;
}

int ferry_gguf_open(const char *path, struct ferry_gguf **out, struct ferry_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ferry_fail(err, FERRY_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ferry_fail(err, FERRY_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ferry_fail(err, FERRY_ERR_IO, "%s: mmap: %s", path, strerror(e));
        }
    }
    close(fd);
    int rc = ferry_gguf_parse(map ? map : "", size, out, err);
    if (rc) {
        if (map) munmap(map, size);
        return rc;
    }
    (*out)->mapped = map != NULL;
    return FERRY_OK;
}

void ferry_gguf_close(struct ferry_gguf *g) {
    if (!g) return;
    if (g->kvs)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].strs);
    free(g->kvs);
    free(g->tensors);
    free(g->tensor_order);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g);
}

uint32_t ferry_gguf_version(const struct ferry_gguf *g) { return g->version; }
size_t ferry_gguf_alignment(const struct ferry_gguf *g) { return g->alignment; }
size_t ferry_gguf_data_offset(const struct ferry_gguf *g) { return g->data_offset; }
const void *ferry_gguf_base(const struct ferry_gguf *g) { return g->base; }
size_t ferry_gguf_file_size(const struct ferry_gguf *g) { return g->size; }
int64_t ferry_gguf_n_kv(const struct ferry_gguf *g) { return g->n_kv; }
struct ferry_gguf_str ferry_gguf_key(const struct ferry_gguf *g, int64_t i) { return g->kvs[i].key; }
enum ferry_gguf_type ferry_gguf_kv_type(const struct ferry_gguf *g, int64_t i) { return g->kvs[i].type; }

int64_t ferry_gguf_find_key(const struct ferry_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kvs[i].key, key)) return i;
    return -1;
}

static const struct kv *find(const struct ferry_gguf *g, const char *key) {
    int64_t i = ferry_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kvs[i];
}

/* Reads an integer value of any width as int64; false for non-integers and
 * u64 values above INT64_MAX. */
static bool int_value(const struct kv *kv, int64_t *out) {
    const uint8_t *v = kv->val;
    switch (kv->type) {
    case FERRY_GGUF_U8: *out = v[0]; return true;
    case FERRY_GGUF_I8: *out = (int8_t)v[0]; return true;
    case FERRY_GGUF_U16: { uint16_t x; memcpy(&x, v, 2); *out = x; return true; }
    case FERRY_GGUF_I16: { int16_t x; memcpy(&x, v, 2); *out = x; return true; }
    case FERRY_GGUF_U32: { uint32_t x; memcpy(&x, v, 4); *out = x; return true; }
    case FERRY_GGUF_I32: { int32_t x; memcpy(&x, v, 4); *out = x; return true; }
    case FERRY_GGUF_U64: { uint64_t x; memcpy(&x, v, 8); if (x > INT64_MAX) return false; *out = (int64_t)x; return true; }
    case FERRY_GGUF_I64: { int64_t x; memcpy(&x, v, 8); *out = x; return true; }
    default: return false;
    }
}

bool ferry_gguf_get_i64(const struct ferry_gguf *g, const char *key, int64_t *out) {
    const struct kv *kv = find(g, key);
    return kv && int_value(kv, out);
}

bool ferry_gguf_get_u32(const struct ferry_gguf *g, const char *key, uint32_t *out) {
    int64_t v;
    if (!ferry_gguf_get_i64(g, key, &v) || v < 0 || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

bool ferry_gguf_get_f32(const struct ferry_gguf *g, const char *key, float *out) {
    const struct kv *kv = find(g, key);
    if (!kv) return false;
    if (kv->type == FERRY_GGUF_F32) { memcpy(out, kv->val, 4); return true; }
    if (kv->type == FERRY_GGUF_F64) { double d; memcpy(&d, kv->val, 8); *out = (float)d; return true; }
    return false;
}

bool ferry_gguf_get_f64(const struct ferry_gguf *g, const char *key, double *out) {
    const struct kv *kv = find(g, key);
    if (!kv) return false;
    if (kv->type == FERRY_GGUF_F64) { memcpy(out, kv->val, 8); return true; }
    if (kv->type == FERRY_GGUF_F32) { float f; memcpy(&f, kv->val, 4); *out = f; return true; }
    return false;
}

bool ferry_gguf_get_bool(const struct ferry_gguf *g, const char *key, bool *out) {
    const struct kv *kv = find(g, key);
    if (!kv || kv->type != FERRY_GGUF_BOOL) return false;
    *out = kv->val[0] != 0;
    return true;
}

bool ferry_gguf_get_str(const struct ferry_gguf *g, const char *key, struct ferry_gguf_str *out) {
    const struct kv *kv = find(g, key);
    if (!kv || kv->type != FERRY_GGUF_STRING) return false;
    *out = kv->str;
    return true;
}

bool ferry_gguf_get_arr(const struct ferry_gguf *g, const char *key, enum ferry_gguf_type *elem_type,
                        uint64_t *count, const void **data) {
    const struct kv *kv = find(g, key);
    if (!kv || kv->type != FERRY_GGUF_ARRAY) return false;
    *elem_type = kv->arr_type;
    *count = kv->arr_count;
    *data = kv->val;
    return true;
}

bool ferry_gguf_get_arr_str(const struct ferry_gguf *g, const char *key, uint64_t j,
                            struct ferry_gguf_str *out) {
    const struct kv *kv = find(g, key);
    if (!kv || kv->type != FERRY_GGUF_ARRAY || kv->arr_type != FERRY_GGUF_STRING || j >= kv->arr_count)
        return false;
    *out = kv->strs[j];
    return true;
}

int64_t ferry_gguf_n_tensors(const struct ferry_gguf *g) { return g->n_tensors; }

const struct ferry_gguf_tensor_info *ferry_gguf_tensor(const struct ferry_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct ferry_gguf_tensor_info *ferry_gguf_find_tensor(const struct ferry_gguf *g, const char *name) {
    int64_t lo = 0, hi = g->n_tensors - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const struct ferry_gguf_tensor_info *ti = &g->tensors[g->tensor_order[mid]];
        int r = strcmp(ti->name, name);
        if (r == 0) return ti;
        if (r < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

uint64_t ferry_gguf_content_key(const struct ferry_gguf *g) {
    const uint8_t *base = ferry_gguf_base(g);
    const size_t head = ferry_gguf_data_offset(g), size = ferry_gguf_file_size(g);
    uint64_t h = ferry_fnv1a64(base, head <= size ? head : size);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)size >> (8 * i));
    h = ferry_fnv1a64_update(h, le, sizeof le);
    for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++) {
        const struct ferry_gguf_tensor_info *t = ferry_gguf_tensor(g, i);
        const uint8_t *d = t->data;
        const size_t n = t->size < 64 ? t->size : 64;
        h = ferry_fnv1a64_update(h, d, n);
        h = ferry_fnv1a64_update(h, d + (t->size - n) / 2, n);
        h = ferry_fnv1a64_update(h, d + (t->size - n), n);
    }
    return h;
}
