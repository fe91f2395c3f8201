/* The start-up self-check of the dot-product kernels (src/ops/selfcheck.c):
 * it passes for every kernel set at every SIMD level this CPU has, and it
 * refuses kernels that compute wrong numbers, among them the one a
 * miscompiled Release build produced (Q8_0 weights read as unsigned). */
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "ops/simd.h"
#include "ops/vecdot.h"
#include "tensor/fp16.h"
#include "testutil.h"

static int count_dot_types(void) {
    int n = 0;
    for (int t = 0; t < FERRY_TYPE_COUNT; t++) n += ferry_vec_dot_type((enum ferry_type)t) >= 0;
    return n;
}

static void test_every_level_passes(void) {
    const enum ferry_simd_level best = ferry_simd_level();
    const int types = count_dot_types();
    CHECK(types >= 20, "%d weight types with a dot product", types);
    for (int l = FERRY_SIMD_SCALAR; l <= (int)best; l++) {
        ferry_simd_set_level((enum ferry_simd_level)l);
        char why[256] = "";
        int n = 0;
        int rc = ferry_vec_dot_self_check(&n, why, sizeof why);
        CHECK(rc == 0, "self-check at %s: %s", ferry_simd_level_name((enum ferry_simd_level)l), why);
        CHECK(n == types * (l + 1), "at %s: %d kernel sets checked, expected %d",
              ferry_simd_level_name((enum ferry_simd_level)l), n, types * (l + 1));
    }
    ferry_simd_set_level(best);
    struct ferry_error err = { 0 };
    int n = 0;
    CHECK(ferry_engine_self_check(&n, &err) == FERRY_OK, "engine self-check: %s", err.msg);
    CHECK(n == types * ((int)best + 1), "engine self-check counted %d", n);
    printf("best SIMD level: %s, %d kernel sets\n", ferry_simd_level_name(best), n);
}

/* What the miscompiled kernel computed: the weights' bytes as unsigned. */
static void dot_q8_0_unsigned(int64_t n, float *s, const void *vx, const void *vy) {
    const uint8_t *x = vx;
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    float sum = 0;
    for (int64_t b = 0; b < n / 32; b++) {
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) isum += (int32_t)x[34 * b + 2 + j] * y.q[32 * b + j];
        uint16_t h;
        memcpy(&h, x + 34 * b, 2);
        sum += (float)isum * fp16_to_fp32(h) * y.d[b];
    }
    *s = sum;
}

/* A kernel that drops the blocks after its last group of eight. */
static void dot_q8_0_no_tail(int64_t n, float *s, const void *vx, const void *vy) {
    struct ferry_vec_dot portable;
    ferry_vec_dot_get(FERRY_TYPE_Q8_0, FERRY_SIMD_SCALAR, &portable);
    const int64_t body = n / 256 * 256;
    if (body == 0) {
        *s = 0;
        return;
    }
    /* the prepared row's d and s sit after q[n]: rebuild one of length body */
    const struct ferry_q8_row y = ferry_q8_row(vy, n);
    uint8_t *tmp = aligned_alloc(64, ferry_vec_dot_row_size(FERRY_TYPE_Q8_0, body));
    memcpy(tmp, y.q, (size_t)body);
    memcpy(tmp + body, y.d, (size_t)(body / 32) * 4);
    memcpy(tmp + body + body / 32 * 4, y.s, (size_t)(body / 32) * 4);
    portable.dot(body, s, vx, tmp);
    free(tmp);
}

/* A kernel that is right but for a last-bit rounding step too many. */
static void dot_q8_0_off_by_tiny(int64_t n, float *s, const void *vx, const void *vy) {
    struct ferry_vec_dot portable;
    ferry_vec_dot_get(FERRY_TYPE_Q8_0, FERRY_SIMD_SCALAR, &portable);
    portable.dot(n, s, vx, vy);
    *s *= 1.0f + 1e-7f;
}

/* A converter that loses the sign of one activation. */
static void prepare_q8_0_bad(const void *x, void *y, int64_t n) {
    ferry_prepare_q8_0(x, y, n);
    int8_t *q = y;
    for (int64_t i = 0; i < n; i++)
        if (q[i] < -20) {
            q[i] = (int8_t)-q[i];
            break;
        }
}

static void test_broken_kernels_are_refused(void) {
    struct ferry_vec_dot good;
    ferry_vec_dot_get(FERRY_TYPE_Q8_0, FERRY_SIMD_SCALAR, &good);
    char why[256];
    CHECK(ferry_vec_dot_check(FERRY_TYPE_Q8_0, FERRY_SIMD_SCALAR, &good, why, sizeof why) == 0, "good: %s", why);

    struct ferry_vec_dot bad = good;
    bad.dot = dot_q8_0_unsigned;
    why[0] = 0;
    CHECK(ferry_vec_dot_check(FERRY_TYPE_Q8_0, FERRY_SIMD_AVX512, &bad, why, sizeof why) != 0,
          "unsigned weights accepted");
    CHECK(strstr(why, "q8_0 dot product at avx512") != NULL, "reason names the kernel: %s", why);

    bad.dot = dot_q8_0_no_tail;
    why[0] = 0;
    CHECK(ferry_vec_dot_check(FERRY_TYPE_Q8_0, FERRY_SIMD_AVX2, &bad, why, sizeof why) != 0, "lost tail accepted");
    CHECK(strstr(why, "q8_0 dot product at avx2") != NULL, "reason: %s", why);

    bad.dot = good.dot;
    bad.from_f32 = prepare_q8_0_bad;
    why[0] = 0;
    CHECK(ferry_vec_dot_check(FERRY_TYPE_Q8_0, FERRY_SIMD_AVX2, &bad, why, sizeof why) != 0, "bad converter accepted");
    CHECK(strstr(why, "activations prepared at avx2") != NULL, "reason: %s", why);

    /* within rounding of the portable kernel: not a wrong number */
    bad = good;
    bad.dot = dot_q8_0_off_by_tiny;
    why[0] = 0;
    CHECK(ferry_vec_dot_check(FERRY_TYPE_Q8_0, FERRY_SIMD_AVX2, &bad, why, sizeof why) == 0,
          "a last-bit difference refused: %s", why);
}

int main(void) {
    test_every_level_passes();
    test_broken_kernels_are_refused();
    return test_summary();
}
