/* ferry: a GGUF v2/v3 reader. The file is memory-mapped (or a caller's
 * buffer is used in place); every length, count and offset is checked
 * before use, so a malformed or truncated file yields an error, never a
 * read outside the data. */
#ifndef FERRY_GGUF_H
#define FERRY_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ferry/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_gguf_type {
    FERRY_GGUF_U8 = 0, FERRY_GGUF_I8 = 1, FERRY_GGUF_U16 = 2, FERRY_GGUF_I16 = 3,
    FERRY_GGUF_U32 = 4, FERRY_GGUF_I32 = 5, FERRY_GGUF_F32 = 6, FERRY_GGUF_BOOL = 7,
    FERRY_GGUF_STRING = 8, FERRY_GGUF_ARRAY = 9, FERRY_GGUF_U64 = 10, FERRY_GGUF_I64 = 11,
    FERRY_GGUF_F64 = 12, FERRY_GGUF_TYPE_COUNT = 13,
};

/* A string inside the file: not NUL-terminated. */
struct ferry_gguf_str {
    const char *ptr;
    uint64_t len;
};

struct ferry_gguf_tensor_info {
    char name[FERRY_MAX_NAME]; /* NUL-terminated copy */
    int n_dims;
    int64_t ne[FERRY_MAX_DIMS]; /* padded with 1 */
    enum ferry_type type;
    uint64_t offset;  /* from the start of the data section */
    size_t size;      /* bytes, contiguous */
    const void *data; /* inside the mapping */
};

struct ferry_gguf;

int ferry_gguf_open(const char *path, struct ferry_gguf **out, struct ferry_error *err);
/* Parses a buffer the caller keeps alive until ferry_gguf_close. */
int ferry_gguf_parse(const void *data, size_t size, struct ferry_gguf **out, struct ferry_error *err);
void ferry_gguf_close(struct ferry_gguf *g);

uint32_t ferry_gguf_version(const struct ferry_gguf *g);
size_t ferry_gguf_alignment(const struct ferry_gguf *g);
size_t ferry_gguf_data_offset(const struct ferry_gguf *g);
const void *ferry_gguf_base(const struct ferry_gguf *g); /* start of the file */
size_t ferry_gguf_file_size(const struct ferry_gguf *g);

int64_t ferry_gguf_n_kv(const struct ferry_gguf *g);
struct ferry_gguf_str ferry_gguf_key(const struct ferry_gguf *g, int64_t i);
int64_t ferry_gguf_find_key(const struct ferry_gguf *g, const char *key); /* -1 if absent */
enum ferry_gguf_type ferry_gguf_kv_type(const struct ferry_gguf *g, int64_t i);

/* Scalar getters: false when the key is absent or of another type. Integer
 * getters accept any integer type whose value fits. */
bool ferry_gguf_get_u32(const struct ferry_gguf *g, const char *key, uint32_t *out);
bool ferry_gguf_get_i64(const struct ferry_gguf *g, const char *key, int64_t *out);
bool ferry_gguf_get_f32(const struct ferry_gguf *g, const char *key, float *out);
bool ferry_gguf_get_f64(const struct ferry_gguf *g, const char *key, double *out);
bool ferry_gguf_get_bool(const struct ferry_gguf *g, const char *key, bool *out);
bool ferry_gguf_get_str(const struct ferry_gguf *g, const char *key, struct ferry_gguf_str *out);

/* Arrays: element type and count; for numeric arrays a pointer to the packed
 * little-endian elements (possibly unaligned: copy out with memcpy). */
bool ferry_gguf_get_arr(const struct ferry_gguf *g, const char *key, enum ferry_gguf_type *elem_type,
                        uint64_t *count, const void **data);
/* Element j of a string array. */
bool ferry_gguf_get_arr_str(const struct ferry_gguf *g, const char *key, uint64_t j,
                            struct ferry_gguf_str *out);

/* A key for the file's content that costs no pass over the weights: the
 * FNV-1a-64 of the header (metadata and tensor table), the file size, and
 * 64 bytes from the start, middle and end of every tensor's data. Two
 * files with one key are the same model file, barring an edit inside a
 * tensor that leaves those samples alone; ferry peers use it to tell
 * whether a server holds the client's model (docs/protocol-extensions.md). */
uint64_t ferry_gguf_content_key(const struct ferry_gguf *g);

int64_t ferry_gguf_n_tensors(const struct ferry_gguf *g);
const struct ferry_gguf_tensor_info *ferry_gguf_tensor(const struct ferry_gguf *g, int64_t i);
const struct ferry_gguf_tensor_info *ferry_gguf_find_tensor(const struct ferry_gguf *g, const char *name);

/* A GGUF v3 writer: collects key/values and tensors in memory, then writes
 * header, infos, aligned data in one pass. Tensor data is referenced, not
 * copied: it must stay valid until ferry_gguf_writer_write returns. */
struct ferry_gguf_writer;

struct ferry_gguf_writer *ferry_gguf_writer_new(void);
void ferry_gguf_writer_free(struct ferry_gguf_writer *w);
int ferry_gguf_writer_add_u32(struct ferry_gguf_writer *w, const char *key, uint32_t v);
int ferry_gguf_writer_add_i32(struct ferry_gguf_writer *w, const char *key, int32_t v);
int ferry_gguf_writer_add_f32(struct ferry_gguf_writer *w, const char *key, float v);
int ferry_gguf_writer_add_bool(struct ferry_gguf_writer *w, const char *key, bool v);
int ferry_gguf_writer_add_str(struct ferry_gguf_writer *w, const char *key, const char *v);
/* A numeric array: n elements of elem_type, packed little-endian at data. */
int ferry_gguf_writer_add_arr(struct ferry_gguf_writer *w, const char *key, enum ferry_gguf_type elem_type,
                              const void *data, uint64_t n);
int ferry_gguf_writer_add_arr_str(struct ferry_gguf_writer *w, const char *key, const char *const *strs,
                                  uint64_t n);
/* ne has n_dims entries; data holds the contiguous bytes of the tensor. */
int ferry_gguf_writer_add_tensor(struct ferry_gguf_writer *w, const char *name, enum ferry_type type,
                                 int n_dims, const int64_t *ne, const void *data);
int ferry_gguf_writer_write(struct ferry_gguf_writer *w, const char *path, struct ferry_error *err);

#ifdef __cplusplus
}
#endif
#endif
