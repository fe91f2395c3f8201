/* GGUF reader and writer: round trip, every truncation, random corruption
 * and hand-made hostile headers must give an error, never a crash (run
 * under ASan in CI, which turns any over-read into a failure). */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/gguf.h"
#include "testutil.h"

/* Parses an exact-size heap copy so that any read past the end is caught. */
static int parse_copy(const uint8_t *data, size_t n, struct ferry_error *err) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, data, n);
    struct ferry_gguf *g = NULL;
    int rc = ferry_gguf_parse(copy, n, &g, err);
    if (rc == FERRY_OK) {
        /* touch everything the reader hands out */
        for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++) {
            const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(g, i);
            volatile uint8_t sink = 0;
            for (size_t b = 0; b < ti->size; b++) sink ^= ((const uint8_t *)ti->data)[b];
            (void)sink;
        }
        ferry_gguf_close(g);
    }
    free(copy);
    return rc;
}

static char tmpdir[256];

static void test_round_trip(uint8_t **file, size_t *file_size, size_t *data_end) {
    struct ferry_gguf_writer *w = ferry_gguf_writer_new();
    float weights[2 * 3] = { 1, 2, 3, 4, 5, 6 };
    int32_t ints[3] = { -1, 7, 1 << 30 };
    const char *vocab[3] = { "a", "", "hello world" };
    uint8_t q8[2 * 34] = { 0 };
    q8[0] = 0x00; q8[1] = 0x3c; /* d = 1.0 */
    for (int i = 0; i < 32; i++) q8[2 + i] = (uint8_t)(i - 16);
    ferry_gguf_writer_add_str(w, "general.architecture", "llama");
    ferry_gguf_writer_add_u32(w, "llama.block_count", 2);
    ferry_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f);
    ferry_gguf_writer_add_bool(w, "flag", true);
    ferry_gguf_writer_add_arr(w, "ints", FERRY_GGUF_I32, ints, 3);
    ferry_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", vocab, 3);
    ferry_gguf_writer_add_tensor(w, "w", FERRY_TYPE_F32, 2, (int64_t[]){ 3, 2 }, weights);
    ferry_gguf_writer_add_tensor(w, "q", FERRY_TYPE_Q8_0, 2, (int64_t[]){ 32, 2 }, q8);
    char path[512];
    snprintf(path, sizeof path, "%s/rt.gguf", tmpdir);
    struct ferry_error err = { 0 };
    CHECK(ferry_gguf_writer_write(w, path, &err) == FERRY_OK, "write: %s", err.msg);
    ferry_gguf_writer_free(w);

    struct ferry_gguf *g;
    if (!CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open: %s", err.msg)) return;
    struct ferry_gguf_str s;
    uint32_t u;
    float f;
    bool b;
    CHECK(ferry_gguf_get_str(g, "general.architecture", &s) && s.len == 5 && !memcmp(s.ptr, "llama", 5), "str");
    CHECK(ferry_gguf_get_u32(g, "llama.block_count", &u) && u == 2, "u32");
    CHECK(ferry_gguf_get_f32(g, "llama.rope.freq_base", &f) && f == 10000.0f, "f32");
    CHECK(ferry_gguf_get_bool(g, "flag", &b) && b, "bool");
    CHECK(!ferry_gguf_get_u32(g, "general.architecture", &u), "type mismatch refused");
    CHECK(!ferry_gguf_get_u32(g, "absent", &u), "absent key");
    enum ferry_gguf_type et;
    uint64_t n;
    const void *data;
    CHECK(ferry_gguf_get_arr(g, "ints", &et, &n, &data) && et == FERRY_GGUF_I32 && n == 3 &&
              !memcmp(data, ints, sizeof ints), "int array");
    CHECK(ferry_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 2, &s) && s.len == 11 &&
              !memcmp(s.ptr, "hello world", 11), "string array");
    CHECK(ferry_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s) && s.len == 0, "empty string");
    CHECK(!ferry_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 3, &s), "string array bound");
    const struct ferry_gguf_tensor_info *t = ferry_gguf_find_tensor(g, "w");
    CHECK(t && t->type == FERRY_TYPE_F32 && t->ne[0] == 3 && t->ne[1] == 2 && t->ne[2] == 1 &&
              t->size == sizeof weights && !memcmp(t->data, weights, sizeof weights), "tensor w");
    t = ferry_gguf_find_tensor(g, "q");
    CHECK(t && t->type == FERRY_TYPE_Q8_0 && t->size == sizeof q8 && !memcmp(t->data, q8, sizeof q8) &&
              (ferry_gguf_data_offset(g) + t->offset) % 32 == 0, "tensor q aligned");
    CHECK(ferry_gguf_find_tensor(g, "nope") == NULL, "absent tensor");
    *data_end = ferry_gguf_data_offset(g) + t->offset + t->size;
    ferry_gguf_close(g);
    *file = test_read_file(path, file_size);
    unlink(path);
}

static void test_truncations(const uint8_t *file, size_t size, size_t data_end) {
    int bad = 0;
    for (size_t n = 0; n < size; n++) {
        struct ferry_error err = { 0 };
        int rc = parse_copy(file, n, &err);
        if (n < data_end && rc == FERRY_OK) bad++;
    }
    CHECK(bad == 0, "%d truncated prefixes were accepted", bad);
}

static void test_corruption(const uint8_t *file, size_t size) {
    uint64_t rng = 42;
    uint8_t *copy = malloc(size);
    int accepted = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(copy, file, size);
        int flips = 1 + (int)(test_rand_u64(&rng) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = test_rand_u64(&rng) % size;
            uint64_t r = test_rand_u64(&rng);
            copy[at] = (r & 1) ? (uint8_t)(r >> 8) : (uint8_t)(copy[at] ^ (1u << ((r >> 8) % 8)));
        }
        struct ferry_error err = { 0 };
        if (parse_copy(copy, size, &err) == FERRY_OK) accepted++;
    }
    free(copy);
    CHECK(true, "corruption: %d of 3000 mutants parsed, none crashed", accepted);
}

/* Builds a header by hand: magic, version, counts, then raw bytes. */
static size_t hdr(uint8_t *p, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    memcpy(p, "GGUF", 4);
    memcpy(p + 4, &version, 4);
    memcpy(p + 8, &n_tensors, 8);
    memcpy(p + 16, &n_kv, 8);
    return 24;
}
static size_t put_str(uint8_t *p, const char *s) {
    uint64_t n = strlen(s);
    memcpy(p, &n, 8);
    memcpy(p + 8, s, n);
    return 8 + n;
}
static size_t put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); return 4; }
static size_t put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); return 8; }

static void expect_reject(const uint8_t *p, size_t n, const char *what, const char *needle) {
    struct ferry_error err = { 0 };
    int rc = parse_copy(p, n, &err);
    CHECK(rc != FERRY_OK && strstr(err.msg, needle) != NULL, "%s: rc=%d msg='%s' (want '%s')", what, rc,
          err.msg, needle);
}

static size_t tensor_info(uint8_t *p, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                          uint64_t offset) {
    size_t k = put_str(p, name);
    k += put32(p + k, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) k += put64(p + k, ne[d]);
    k += put32(p + k, type);
    k += put64(p + k, offset);
    return k;
}

static void test_hostile(void) {
    uint8_t b[4096];
    size_t k;
    memset(b, 0, sizeof b);

    k = hdr(b, 3, 0, 0);
    memcpy(b, "GGUX", 4);
    expect_reject(b, k, "bad magic", "magic");
    k = hdr(b, 1, 0, 0);
    expect_reject(b, k, "version 1", "version");
    k = hdr(b, 3, 0, UINT64_MAX);
    expect_reject(b, k + 64, "huge n_kv", "key/value");
    k = hdr(b, 3, UINT64_MAX / 2, 0);
    expect_reject(b, k + 64, "huge n_tensors", "tensors");

    k = hdr(b, 3, 0, 1);
    k += put64(b + k, UINT64_MAX); /* key length */
    expect_reject(b, k + 16, "huge key length", "truncated");

    k = hdr(b, 3, 0, 1);
    k += put_str(b + k, "k");
    k += put32(b + k, 99);
    expect_reject(b, k + 8, "unknown value type", "unknown value type");

    k = hdr(b, 3, 0, 1);
    k += put_str(b + k, "k");
    k += put32(b + k, FERRY_GGUF_ARRAY);
    k += put32(b + k, FERRY_GGUF_U64);
    k += put64(b + k, UINT64_MAX / 4);
    expect_reject(b, k + 8, "huge array", "exceeds");

    k = hdr(b, 3, 0, 1);
    k += put_str(b + k, "k");
    k += put32(b + k, FERRY_GGUF_ARRAY);
    k += put32(b + k, FERRY_GGUF_STRING);
    k += put64(b + k, UINT64_MAX);
    expect_reject(b, k + 8, "huge string array", "exceeds");

    k = hdr(b, 3, 0, 1);
    k += put_str(b + k, "k");
    k += put32(b + k, FERRY_GGUF_ARRAY);
    k += put32(b + k, FERRY_GGUF_ARRAY);
    k += put64(b + k, 1);
    expect_reject(b, k + 8, "nested array", "unsupported type");

    k = hdr(b, 3, 0, 2);
    k += put_str(b + k, "dup");
    k += put32(b + k, FERRY_GGUF_U8);
    b[k++] = 1;
    k += put_str(b + k, "dup");
    k += put32(b + k, FERRY_GGUF_U8);
    b[k++] = 2;
    expect_reject(b, k, "duplicate key", "duplicate key");

    k = hdr(b, 3, 0, 1);
    k += put_str(b + k, "general.alignment");
    k += put32(b + k, FERRY_GGUF_U32);
    k += put32(b + k, 24);
    expect_reject(b, k, "alignment 24", "power of two");

    uint64_t ne[5] = { 32, 1, 1, 1, 1 };
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 5, ne, 0, 0);
    expect_reject(b, k + 256, "5 dims", "dims");

    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 4, 0);
    expect_reject(b, k + 256, "removed type 4", "invalid type");

    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 1000, 0);
    expect_reject(b, k + 256, "type 1000", "invalid type");

    uint64_t ne_q[1] = { 33 };
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne_q, FERRY_TYPE_Q4_0, 0);
    expect_reject(b, k + 256, "partial block", "multiple");

    uint64_t ne_neg[1] = { (uint64_t)-5 };
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne_neg, 0, 0);
    expect_reject(b, k + 256, "negative dim", "negative");

    uint64_t ne_big[4] = { 1ull << 40, 1ull << 40, 1ull << 40, 1 };
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 3, ne_big, 0, 0);
    expect_reject(b, k + 256, "size overflow", "overflows");

    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, 8);
    expect_reject(b, k + 512, "misaligned offset", "aligned");

    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, 1ull << 62);
    expect_reject(b, k + 512, "offset past the end", "outside");

    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, UINT64_MAX - 31);
    expect_reject(b, k + 512, "offset wrap", "outside");

    k = hdr(b, 3, 2, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, 128);
    expect_reject(b, k + 1024, "duplicate tensor", "duplicate tensor");

    char longname[100];
    memset(longname, 'x', sizeof longname - 1);
    longname[99] = 0;
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, longname, 1, ne, 0, 0);
    expect_reject(b, k + 256, "long name", "too long");

    /* a well-formed minimal file is accepted */
    k = hdr(b, 3, 1, 0);
    k += tensor_info(b + k, "t", 1, ne, 0, 0);
    k = (k + 31) / 32 * 32;
    struct ferry_error err = { 0 };
    CHECK(parse_copy(b, k + 128, &err) == FERRY_OK, "minimal file: %s", err.msg);
}

static void test_golden_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!CHECK(d != NULL, "open %s", dir)) return;
    int n = 0, ok = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".gguf")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct ferry_gguf *g;
        struct ferry_error err = { 0 };
        n++;
        if (CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "%s: %s", e->d_name, err.msg)) {
            ok += ferry_gguf_find_tensor(g, "dst") != NULL;
            ferry_gguf_close(g);
        }
    }
    closedir(d);
    CHECK(n >= 194 && ok == n, "golden files: %d of %d parse with a dst tensor", ok, n);
}

int main(int argc, char **argv) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-test-gguf-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    uint8_t *file = NULL;
    size_t size = 0, data_end = 0;
    test_round_trip(&file, &size, &data_end);
    if (file) {
        test_truncations(file, size, data_end);
        test_corruption(file, size);
        free(file);
    }
    test_hostile();
    struct ferry_error err = { 0 };
    struct ferry_gguf *g;
    CHECK(ferry_gguf_open("/nonexistent/x.gguf", &g, &err) == FERRY_ERR_IO, "missing file: %s", err.msg);
    if (argc > 1) test_golden_files(argv[1]);
    rmdir(tmpdir);
    return test_summary();
}
