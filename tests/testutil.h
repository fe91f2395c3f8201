/* A tiny test harness: CHECK records a pass or a failure with its place and
 * reason; test_summary prints "N passed, N failed" and gives the exit code. */
#ifndef FERRY_TESTUTIL_H
#define FERRY_TESTUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>

#include "ferry/server.h"
#include "ferry/tensor.h"

extern int test_passed, test_failed;

bool test_check(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...) test_check((cond), __FILE__, __LINE__, __VA_ARGS__)
int test_summary(void);

/* Deterministic pseudo-random numbers for test data. */
uint64_t test_rand_u64(uint64_t *state);
float test_rand_uniform(uint64_t *state, float lo, float hi);

/* A contiguous tensor with its own zeroed memory (free with test_tensor_free). */
struct ferry_tensor *test_tensor_new(enum ferry_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                                     int64_t ne3);
void test_tensor_free(struct ferry_tensor *t);
/* Reads any readable tensor (honouring its strides) into f32 in logical
 * order; returns a malloc'd array of ferry_nelements(t) floats. */
float *test_tensor_to_f32(const struct ferry_tensor *t);
/* Fills a float-like or quantized tensor with uniform values in [lo, hi). */
void test_tensor_fill_uniform(struct ferry_tensor *t, uint64_t *state, float lo, float hi);

/* Tensors a test makes and frees together. test_keep takes ownership and
 * returns t; a view (view_src set) is freed alone, its base owns the data.
 * At most 512 between two test_free_kept calls. */
struct ferry_tensor *test_keep(struct ferry_tensor *t);
void test_free_kept(void);
/* A kept PERMUTE view of base: axis k of base becomes axis ak. */
struct ferry_tensor *test_permute(struct ferry_tensor *base, int a0, int a1, int a2, int a3);
/* CHECKs that the engine refuses node (FERRY_ERR_INVALID or _UNSUPPORTED). */
bool test_rejected(struct ferry_tensor *node, const char *what);

/* Removes a flat directory (a test's mkdtemp scratch) and the files in it. */
void test_remove_dir(const char *dir);
/* A whole file in a malloc'd buffer (*size bytes), or NULL. */
uint8_t *test_read_file(const char *path, size_t *size);

/* An in-process `ferry serve` on a thread of the test. */
struct test_server {
    struct ferry_server *s;
    pthread_t thread;
    int port;
    char endpoint[48]; /* "host:port" */
};
/* Creates the server from cfg (CHECKed) and starts serving it. */
bool test_server_start(struct test_server *ts, const struct ferry_server_config *cfg);
/* Stops it, waits for its thread and destroys it. */
void test_server_stop(struct test_server *ts);

/* NMSE of b against reference a, as ggml's test-backend-ops computes it;
 * infinities must match in place and are left out of the sums. Returns
 * INFINITY on a mismatch that NMSE cannot express (NaN, infinities). */
double test_nmse(const float *a, const float *b, int64_t n);

#endif
