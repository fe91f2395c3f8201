/* Unit tests of the row dequantizers and quantizers (src/tensor/quants*.c)
 * against docs/types.md: hand-built blocks, round trips, edge cases, and a
 * cross-check on the golden GGUF cases that involve quantized data.
 *
 * Usage: test_quants [golden-dir]
 * The golden directory defaults to FERRY_GOLDEN_DIR (a compile-time string)
 * or tests/golden; the golden checks are skipped, with a note, if absent. */

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/types.h"
#include "tensor/blocks.h"
#include "tensor/quants.h"

/* ---- tiny harness ----------------------------------------------------- */

static int n_passed, n_failed;
static int cur_failed;       /* failures inside the running test */
static const char *cur_name; /* its name */

static void expect_at(int ok, int line, const char *fmt, ...) {
    if (ok) return;
    if (cur_failed++ < 8) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "  FAIL %s (line %d): ", cur_name, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
}
#define EXPECT(cond, ...) expect_at((cond) != 0, __LINE__, __VA_ARGS__)

static void run(const char *name, void (*fn)(void)) {
    cur_name = name;
    cur_failed = 0;
    fn();
    if (cur_failed) {
        n_failed++;
        printf("FAIL %s (%d checks)\n", name, cur_failed);
    } else {
        n_passed++;
        printf("ok   %s\n", name);
    }
}
#define RUN(fn) run(#fn, fn)

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Bit-exact float comparison (so -0 vs +0 and NaN are caught too). */
static int same(float a, float b) { return bits_of(a) == bits_of(b); }

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}
static float rnd_uniform(void) { return (float)(rnd_u32() >> 8) / 8388608.0f - 1.0f; } /* [-1, 1) */
static uint8_t rnd_byte(void) { return (uint8_t)rnd_u32(); }
static void fill_uniform(float *x, int n) { for (int i = 0; i < n; i++) x[i] = rnd_uniform(); }
static void fill_bytes(void *p, size_t n) { for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = rnd_byte(); }

static double nmse(const float *ref, const float *y, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)ref[i] - (double)y[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static uint16_t h(float f) { return ferry_fp32_to_fp16(f); }
static float hf(uint16_t v) { return ferry_fp16_to_fp32(v); }

static const int8_t T_NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const int8_t T_FP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ---- hand-built blocks: legacy types ---------------------------------- */

static void test_tables(void) {
    for (int i = 0; i < 16; i++) {
        EXPECT(ferry_kvalues_iq4nl[i] == T_NL[i], "iq4nl[%d]", i);
        EXPECT(ferry_kvalues_mxfp4[i] == T_FP4[i], "mxfp4[%d]", i);
    }
}

static void test_deq_q4_0(void) {
    block_q4_0 b = {.d = h(0.5f)};
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    ferry_dequant_row_q4_0(&b, y, 32);
    for (int j = 0; j < 16; j++) {
        EXPECT(same(y[j], (float)(j - 8) * 0.5f), "low nibble j=%d: %g", j, y[j]);
        EXPECT(same(y[j + 16], (float)(7 - j) * 0.5f), "high nibble j=%d: %g", j, y[j + 16]);
    }
}

static void test_deq_q4_1(void) {
    block_q4_1 b = {.d = h(0.25f), .m = h(-1.5f)};
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    ferry_dequant_row_q4_1(&b, y, 32);
    for (int j = 0; j < 16; j++) {
        EXPECT(same(y[j], (float)j * 0.25f + -1.5f), "j=%d", j);
        EXPECT(same(y[j + 16], (float)(15 - j) * 0.25f + -1.5f), "j+16=%d", j + 16);
    }
}

static void test_deq_q5(void) {
    /* qh is a LE u32: bit k = bit 4 of element k. */
    const uint32_t qh = 1u << 3 | 1u << 20 | 1u << 31;
    block_q5_0 b0 = {.d = h(0.125f), .qh = {qh & 255, qh >> 8 & 255, qh >> 16 & 255, qh >> 24}};
    b0.qs[4] = 0x7 | 0x9 << 4; /* element 4 -> 7, element 20 -> 9 | 16 */
    b0.qs[15] = 0xf0;          /* element 31 -> 15 | 16 */
    float y[32];
    ferry_dequant_row_q5_0(&b0, y, 32);
    EXPECT(same(y[0], -16.0f * 0.125f), "e0 %g", y[0]);
    EXPECT(same(y[3], 0.0f), "e3 %g", y[3]);
    EXPECT(same(y[4], (float)(7 - 16) * 0.125f), "e4 %g", y[4]);
    EXPECT(same(y[20], (float)(25 - 16) * 0.125f), "e20 %g", y[20]);
    EXPECT(same(y[31], (float)(31 - 16) * 0.125f), "e31 %g", y[31]);
    EXPECT(same(y[19], -16.0f * 0.125f), "e19 %g", y[19]);

    block_q5_1 b1 = {.d = h(0.5f), .m = h(-3.0f), .qh = {qh & 255, qh >> 8 & 255, qh >> 16 & 255, qh >> 24}};
    memcpy(b1.qs, b0.qs, 16);
    ferry_dequant_row_q5_1(&b1, y, 32);
    EXPECT(same(y[0], -3.0f), "e0 %g", y[0]);
    EXPECT(same(y[3], 16.0f * 0.5f + -3.0f), "e3 %g", y[3]);
    EXPECT(same(y[4], 7.0f * 0.5f + -3.0f), "e4 %g", y[4]);
    EXPECT(same(y[20], 25.0f * 0.5f + -3.0f), "e20 %g", y[20]);
    EXPECT(same(y[31], 31.0f * 0.5f + -3.0f), "e31 %g", y[31]);
}

static void test_deq_q8(void) {
    block_q8_0 b = {.d = h(0.125f)};
    for (int j = 0; j < 32; j++) b.qs[j] = (int8_t)(j * 8 - 128);
    float y[32];
    ferry_dequant_row_q8_0(&b, y, 32);
    for (int j = 0; j < 32; j++) EXPECT(same(y[j], (float)(j * 8 - 128) * 0.125f), "q8_0 j=%d", j);

    block_q8_1 c = {.d = h(-0.25f), .s = h(1000.0f)}; /* s must not influence values */
    for (int j = 0; j < 32; j++) c.qs[j] = (int8_t)(127 - j);
    ferry_dequant_row_q8_1(&c, y, 32);
    for (int j = 0; j < 32; j++) EXPECT(same(y[j], (float)(127 - j) * -0.25f), "q8_1 j=%d", j);
}

static void test_deq_iq4_nl(void) {
    block_iq4_nl b = {.d = h(2.0f)};
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    ferry_dequant_row_iq4_nl(&b, y, 32);
    for (int j = 0; j < 16; j++) {
        EXPECT(same(y[j], 2.0f * T_NL[j]), "j=%d", j);
        EXPECT(same(y[j + 16], 2.0f * T_NL[15 - j]), "j+16=%d", j + 16);
    }
}

static void test_deq_mxfp4(void) {
    block_mxfp4 b[4];
    const uint8_t es[4] = {128, 130, 1, 0};
    for (int k = 0; k < 4; k++) {
        b[k].e = es[k];
        for (int j = 0; j < 16; j++) b[k].qs[j] = (uint8_t)(j | (15 - j) << 4);
    }
    float y[128];
    ferry_dequant_row_mxfp4(b, y, 128);
    /* e=128 -> 1 (times the doubled table), e=130 -> 4, e=1 -> 2^-127, e=0 -> 2^-128. */
    const float d[4] = {1.0f, 4.0f, from_bits(0x00400000), from_bits(0x00200000)};
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 16; j++) {
            EXPECT(same(y[32 * k + j], (float)T_FP4[j] * d[k]), "block %d j=%d: %a", k, j, y[32 * k + j]);
            EXPECT(same(y[32 * k + j + 16], (float)T_FP4[15 - j] * d[k]), "block %d j+16", k);
        }
    /* Code 7 (12) with e=0 is 12 * 2^-128 = 1.5 * 2^-125; code 8 is the
     * integer 0, so +0 like code 0. */
    EXPECT(same(y[96 + 7], 0x1.8p-125f), "e=0 code 7: %a", y[96 + 7]);
    EXPECT(same(y[96 + 16 + 7], 0.0f), "code 8 is +0: %a", y[96 + 16 + 7]);
}

static void test_deq_nvfp4(void) {
    /* 0x38: exp 7, man 0 = 1.0; 0x00 and 0x7f are 0; 0x01: 2^-9; 0x4b: exp 9 man 3 = 1.375*4 */
    block_nvfp4 b = {.d = {0x38, 0x7f, 0x01, 0x4b}};
    for (int j = 0; j < 32; j++) b.qs[j] = (uint8_t)((j % 16) | (15 - j % 16) << 4);
    float y[64];
    ferry_dequant_row_nvfp4(&b, y, 64);
    const float half[4] = {0.5f, 0.0f, 0x1p-10f, 2.75f};
    for (int s = 0; s < 4; s++)
        for (int j = 0; j < 8; j++) {
            const int q = (8 * s + j) % 16;
            EXPECT(same(y[16 * s + j], (float)T_FP4[q] * half[s]), "s=%d j=%d: %g", s, j, y[16 * s + j]);
            EXPECT(same(y[16 * s + j + 8], (float)T_FP4[15 - q] * half[s]), "s=%d j+8=%d", s, j + 8);
        }
    /* 0x00 is zero too; bit 7 is not a sign bit (0xb8 decodes like 0x38). */
    block_nvfp4 c = {.d = {0x00, 0xb8, 0x38, 0x38}};
    memset(c.qs, 0x77, sizeof c.qs); /* all code 7 = 12 */
    ferry_dequant_row_nvfp4(&c, y, 64);
    EXPECT(same(y[0], 0.0f), "ue4m3(0) = 0");
    EXPECT(same(y[16], y[32]) && same(y[32], 6.0f), "0xb8 == 0x38: %g %g", y[16], y[32]);
}

static void test_deq_q1_0(void) {
    block_q1_0 b = {.d = h(0.5f)};
    b.qs[0] = 0x05;  /* elements 0 and 2 set */
    b.qs[15] = 0x80; /* element 127 set */
    float y[128];
    ferry_dequant_row_q1_0(&b, y, 128);
    EXPECT(same(y[0], 0.5f) && same(y[1], -0.5f) && same(y[2], 0.5f), "first bits");
    EXPECT(same(y[120], -0.5f) && same(y[127], 0.5f), "last byte");
}

static void test_deq_q2_0(void) {
    block_q2_0 b = {.d = h(3.0f)};
    b.qs[0] = 0xe4;       /* q = 0,1,2,3 for elements 0..3 */
    b.qs[15] = 0x3 << 6;  /* element 63 = 3 */
    float y[64];
    ferry_dequant_row_q2_0(&b, y, 64);
    EXPECT(same(y[0], -3.0f) && same(y[1], 0.0f) && same(y[2], 3.0f) && same(y[3], 6.0f), "first byte");
    EXPECT(same(y[62], -3.0f) && same(y[63], 6.0f), "last byte");
}

/* ---- hand-built blocks: K-quants -------------------------------------- */

/* The 2-bit-plane position of element i, written from docs/types.md 5.1. */
static int q2_plane(const uint8_t *qs, int i) {
    const int hh = i / 128, r = i % 128, g = r / 32, l = r % 32;
    return (qs[32 * hh + l] >> (2 * g)) & 3;
}

static void test_deq_q2_K(void) {
    block_q2_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    b.dmin = h(0.25f);
    for (int s = 0; s < 16; s++) b.scales[s] = (uint8_t)((s & 15) | (15 - s) << 4);
    b.qs[33] = 0xc0; /* h=1, l=1, g=3: element 128+96+1 = 225 has q = 3 */
    float y[256];
    ferry_dequant_row_q2_K(&b, y, 256);
    EXPECT(same(y[225], 0.5f * 14.0f * 3.0f - 0.25f * 1.0f), "e225 %g", y[225]);
    EXPECT(same(y[224], -(0.25f * 1.0f)), "e224 %g", y[224]);
    EXPECT(same(y[0], -(0.25f * 15.0f)), "e0 %g", y[0]);

    /* Random block against the per-element formula. */
    fill_bytes(&b, sizeof b);
    b.d = h(0.0123f);
    b.dmin = h(0.0456f);
    ferry_dequant_row_q2_K(&b, y, 256);
    for (int i = 0; i < 256; i++) {
        const float dl = hf(b.d) * (float)(b.scales[i / 16] & 15);
        const float ml = hf(b.dmin) * (float)(b.scales[i / 16] >> 4);
        EXPECT(same(y[i], dl * (float)q2_plane(b.qs, i) - ml), "i=%d", i);
    }
}

/* Packs sixteen 6-bit values the way docs/types.md 5.2 reads them. */
static void pack_q3_scales(uint8_t s[12], const int v[16]) {
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        const int lo = v[j] & 15, hi = v[j] >> 4;
        if (j < 8) s[j] |= (uint8_t)lo;
        else s[j - 8] |= (uint8_t)(lo << 4);
        s[8 + j % 4] |= (uint8_t)(hi << (2 * (j / 4)));
    }
}

static void test_deq_q3_K(void) {
    block_q3_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    int v[16];
    for (int j = 0; j < 16; j++) v[j] = (j * 37 + 5) & 63; /* stored 6-bit, scale = v - 32 */
    pack_q3_scales(b.scales, v);
    memset(b.hmask, 0xff, sizeof b.hmask); /* no -4 anywhere */
    memset(b.qs, 0x55, sizeof b.qs);       /* q2 = 1 everywhere */
    /* Element 200: h=1, r=72, g=2, l=8: clear its high bit (hmask[8] bit 6). */
    b.hmask[8] &= (uint8_t)~(1u << 6);
    float y[256];
    ferry_dequant_row_q3_K(&b, y, 256);
    for (int j = 0; j < 16; j++)
        EXPECT(same(y[16 * j + 1], 0.5f * (float)(v[j] - 32)), "scale %d: %g", j, y[16 * j + 1]);
    EXPECT(same(y[200], 0.5f * (float)(v[12] - 32) * (float)(1 - 4)), "e200 %g", y[200]);

    fill_bytes(&b, sizeof b);
    b.d = h(-0.031f);
    ferry_dequant_row_q3_K(&b, y, 256);
    for (int i = 0; i < 256; i++) {
        const int j = i / 16;
        const int lo = j < 8 ? b.scales[j] & 15 : b.scales[j - 8] >> 4;
        const int hi = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        const int sc = (lo | hi << 4) - 32;
        const int hb = (b.hmask[i % 32] >> (4 * (i / 128) + (i % 128) / 32)) & 1;
        const int q = q2_plane(b.qs, i) - (hb ? 0 : 4);
        EXPECT(same(y[i], hf(b.d) * (float)sc * (float)q), "i=%d", i);
    }
}

/* Packs eight 6-bit scales and mins the way docs/types.md 5.3 reads them. */
static void pack_k4_scales(uint8_t s[12], const int sc[8], const int m[8]) {
    memset(s, 0, 12);
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
    }
}

static void test_deq_q4_K(void) {
    block_q4_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.25f);
    b.dmin = h(0.125f);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (j * 29 + 3) & 63;
        m[j] = (j * 13 + 40) & 63;
    }
    pack_k4_scales(b.scales, sc, m);
    /* Chunk 1 = sub-blocks 2 (low nibbles) and 3 (high nibbles). */
    b.qs[32 + 5] = 0x9 | 0x4 << 4; /* element 64+5 -> 9, element 96+5 -> 4 */
    float y[256];
    ferry_dequant_row_q4_K(&b, y, 256);
    for (int j = 0; j < 8; j++)
        EXPECT(same(y[32 * j + 1], -(0.125f * (float)m[j])), "min %d: %g", j, y[32 * j + 1]);
    EXPECT(same(y[69], 0.25f * (float)sc[2] * 9.0f - 0.125f * (float)m[2]), "e69 %g", y[69]);
    EXPECT(same(y[101], 0.25f * (float)sc[3] * 4.0f - 0.125f * (float)m[3]), "e101 %g", y[101]);

    fill_bytes(&b, sizeof b);
    b.d = h(0.0071f);
    b.dmin = h(0.0213f);
    ferry_dequant_row_q4_K(&b, y, 256);
    for (int i = 0; i < 256; i++) {
        const int j = i / 32;
        const uint8_t *s = b.scales;
        const int scj = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        const int mj = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        const uint8_t byte = b.qs[32 * (j / 2) + i % 32];
        const int q = j % 2 ? byte >> 4 : byte & 15;
        EXPECT(same(y[i], hf(b.d) * (float)scj * (float)q - hf(b.dmin) * (float)mj), "i=%d", i);
    }
}

static void test_deq_q5_K(void) {
    block_q5_K b;
    memset(&b, 0, sizeof b);
    b.d = h(1.0f);
    b.dmin = h(0.5f);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = j + 1;
        m[j] = 2 * j;
    }
    pack_k4_scales(b.scales, sc, m);
    b.qh[7] = 1u << 5;     /* element 5*32 + 7 = 167 gets +16 */
    b.qs[64 + 7] = 0x30;   /* chunk 2, high nibble: sub-block 5, element 167 -> 3 */
    float y[256];
    ferry_dequant_row_q5_K(&b, y, 256);
    EXPECT(same(y[167], 1.0f * 6.0f * 19.0f - 0.5f * 10.0f), "e167 %g", y[167]);
    EXPECT(same(y[135], -(0.5f * 8.0f)), "e135 %g", y[135]);

    fill_bytes(&b, sizeof b);
    b.d = h(0.0042f);
    b.dmin = h(0.0172f);
    ferry_dequant_row_q5_K(&b, y, 256);
    for (int i = 0; i < 256; i++) {
        const int j = i / 32;
        const uint8_t *s = b.scales;
        const int scj = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        const int mj = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        const uint8_t byte = b.qs[32 * (j / 2) + i % 32];
        const int q = (j % 2 ? byte >> 4 : byte & 15) + 16 * ((b.qh[i % 32] >> j) & 1);
        EXPECT(same(y[i], hf(b.d) * (float)scj * (float)q - hf(b.dmin) * (float)mj), "i=%d", i);
    }
}

static void test_deq_q6_K(void) {
    block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    for (int s = 0; s < 16; s++) b.scales[s] = (int8_t)(s - 8);
    /* Element 128+64+3 = 195: h=1, g=2, l=3 -> ql[64+3] high nibble, qh[32+3] bits 4..5. */
    b.ql[67] = 0xa0;
    b.qh[35] = 0x2 << 4;
    float y[256];
    ferry_dequant_row_q6_K(&b, y, 256);
    EXPECT(same(y[195], 0.5f * (float)(12 - 8) * (float)((0xa | 2 << 4) - 32)), "e195 %g", y[195]);
    EXPECT(same(y[0], 0.5f * -8.0f * -32.0f), "e0 %g", y[0]);

    fill_bytes(&b, sizeof b);
    b.d = h(0.0031f);
    ferry_dequant_row_q6_K(&b, y, 256);
    for (int i = 0; i < 256; i++) {
        const int hh = i / 128, r = i % 128, g = r / 32, l = r % 32;
        const uint8_t lb = b.ql[64 * hh + 32 * (g & 1) + l];
        const int lo = g < 2 ? lb & 15 : lb >> 4;
        const int hi = (b.qh[32 * hh + l] >> (2 * g)) & 3;
        EXPECT(same(y[i], hf(b.d) * (float)b.scales[i / 16] * (float)((lo | hi << 4) - 32)), "i=%d", i);
    }
}

static void test_deq_q8_K(void) {
    block_q8_K b = {.d = -0.5f};
    for (int i = 0; i < 256; i++) b.qs[i] = (int8_t)(i - 128);
    float y[256];
    ferry_dequant_row_q8_K(&b, y, 256);
    for (int i = 0; i < 256; i++) EXPECT(same(y[i], -0.5f * (float)(i - 128)), "i=%d", i);
}

static void test_deq_iq4_xs(void) {
    block_iq4_xs b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    int ls[8];
    for (int s = 0; s < 8; s++) {
        ls[s] = (s * 23 + 7) & 63;
        b.scales_l[s / 2] |= (uint8_t)((ls[s] & 15) << (4 * (s % 2)));
        b.scales_h |= (uint16_t)((ls[s] >> 4) << (2 * s));
    }
    for (int s = 0; s < 8; s++)
        for (int j = 0; j < 16; j++) b.qs[16 * s + j] = (uint8_t)(j | (15 - j) << 4);
    float y[256];
    ferry_dequant_row_iq4_xs(&b, y, 256);
    for (int s = 0; s < 8; s++) {
        const float dl = 0.5f * (float)(ls[s] - 32);
        for (int j = 0; j < 16; j++) {
            EXPECT(same(y[32 * s + j], dl * (float)T_NL[j]), "s=%d j=%d", s, j);
            EXPECT(same(y[32 * s + 16 + j], dl * (float)T_NL[15 - j]), "s=%d j+16=%d", s, j);
        }
    }
}

/* TQ1_0 byte for 5 ternary digits, digit 0 most significant: the value
 * scaled to 256/243 and rounded up (the fixed-point form of docs/types.md 6). */
static uint8_t tq1_byte(const int t[5]) {
    int v = 0;
    for (int n = 0; n < 5; n++) v = v * 3 + t[n];
    return (uint8_t)((v * 256 + 242) / 243);
}

static void test_deq_tq1_0(void) {
    /* Every 5-digit value once across the 48+4 bytes (ranges wrap). */
    block_tq1_0 b = {.d = h(1.5f)};
    int digits[256];
    for (int i = 0; i < 52; i++) {
        int t[5], v = (i * 97 + 11) % 243;
        for (int n = 4; n >= 0; n--, v /= 3) t[n] = v % 3;
        if (i >= 48) t[4] = 0; /* qh bytes carry 4 digits */
        const uint8_t byte = tq1_byte(t);
        if (i < 32) {
            b.qs[i] = byte;
            for (int n = 0; n < 5; n++) digits[32 * n + i] = t[n];
        } else if (i < 48) {
            b.qs[i] = byte;
            for (int n = 0; n < 5; n++) digits[160 + 16 * n + (i - 32)] = t[n];
        } else {
            b.qh[i - 48] = byte;
            for (int n = 0; n < 4; n++) digits[240 + 4 * n + (i - 48)] = t[n];
        }
    }
    float y[256];
    ferry_dequant_row_tq1_0(&b, y, 256);
    for (int i = 0; i < 256; i++) EXPECT(same(y[i], (float)(digits[i] - 1) * 1.5f), "i=%d: %g", i, y[i]);

    /* All 243 values decode to their digits (the five digit positions). */
    for (int v = 0; v < 243; v++) {
        int t[5], w = v;
        for (int n = 4; n >= 0; n--, w /= 3) t[n] = w % 3;
        memset(b.qs, 0, sizeof b.qs);
        b.qs[0] = tq1_byte(t);
        ferry_dequant_row_tq1_0(&b, y, 256);
        for (int n = 0; n < 5; n++) EXPECT(same(y[32 * n], (float)(t[n] - 1) * 1.5f), "v=%d n=%d", v, n);
    }
}

static void test_deq_tq2_0(void) {
    block_tq2_0 b = {.d = h(0.75f)};
    for (int i = 0; i < 64; i++) b.qs[i] = rnd_byte();
    float y[256];
    ferry_dequant_row_tq2_0(&b, y, 256);
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < 4; k++)
            for (int m = 0; m < 32; m++) {
                const int q = (b.qs[32 * c + m] >> (2 * k)) & 3;
                EXPECT(same(y[128 * c + 32 * k + m], (float)(q - 1) * 0.75f), "c=%d k=%d m=%d", c, k, m);
            }
}

/* ---- quantizers: round trips ------------------------------------------ */

typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*dequant_fn)(const void *, float *, int64_t);

struct qtype {
    const char *name;
    quant_fn quant;
    dequant_fn dequant;
    int blck, size;
    double max_nmse;  /* on uniform [-1,1) data */
    int stable;       /* quant(dequant(quant(x))) == quant(x) holds */
};

/* NMSE bounds: measured on the test data (uniform with 1-in-97 outliers
 * at 8x) plus a margin; a wrong scale or layout lands far above them. */
static const struct qtype qtypes[] = {
    {"q4_0", ferry_quant_row_q4_0, ferry_dequant_row_q4_0, 32, 18, 2.5e-2, 1},
    {"q4_1", ferry_quant_row_q4_1, ferry_dequant_row_q4_1, 32, 20, 1.2e-2, 0},
    {"q5_0", ferry_quant_row_q5_0, ferry_dequant_row_q5_0, 32, 22, 7e-3, 1},
    {"q5_1", ferry_quant_row_q5_1, ferry_dequant_row_q5_1, 32, 24, 3e-3, 0},
    {"q8_0", ferry_quant_row_q8_0, ferry_dequant_row_q8_0, 32, 34, 1e-4, 1},
    {"q8_0_x86", ferry_quantize_row_q8_0_x86, ferry_dequant_row_q8_0, 32, 34, 1e-4, 1},
    /* s = f16(d*sum) uses the unrounded d, which a second pass does not see. */
    {"q8_1_x86", ferry_quantize_row_q8_1_x86, ferry_dequant_row_q8_1, 32, 36, 1e-4, 0},
    /* f32 d = 1/iscale may move by an ulp on a second pass. */
    {"q8_K", ferry_quantize_row_q8_K, ferry_dequant_row_q8_K, 256, 292, 5e-4, 0},
    {"iq4_nl", ferry_quant_row_iq4_nl, ferry_dequant_row_iq4_nl, 32, 18, 1.5e-2, 0},
    {"mxfp4", ferry_quant_row_mxfp4, ferry_dequant_row_mxfp4, 32, 17, 3.5e-2, 1},
    {"q1_0", ferry_quant_row_q1_0, ferry_dequant_row_q1_0, 128, 18, 0.6, 1},
    {"q2_0", ferry_quant_row_q2_0, ferry_dequant_row_q2_0, 64, 18, 0.55, 1},
};
#define N_QTYPES (int)(sizeof qtypes / sizeof qtypes[0])

enum { RT_N = 4096 };

static void test_round_trip(void) {
    static float x[RT_N], y[RT_N], y2[RT_N];
    /* Aligned for the block structs (Q8_K has an f32 field). */
    static _Alignas(16) uint8_t q[RT_N * 2], q2[RT_N * 2];
    for (int t = 0; t < N_QTYPES; t++) {
        const struct qtype *qt = &qtypes[t];
        fill_uniform(x, RT_N);
        for (int i = 0; i < RT_N; i += 97) x[i] *= 8.0f; /* some outliers */
        qt->quant(x, q, RT_N);
        qt->dequant(q, y, RT_N);
        const double e = nmse(x, y, RT_N);
        EXPECT(e < qt->max_nmse, "%s: nmse %g >= %g", qt->name, e, qt->max_nmse);
        if (getenv("VERBOSE")) printf("     %s nmse %g\n", qt->name, e);
        /* The dequantized values quantize to the same bytes again. */
        const size_t nbytes = (size_t)(RT_N / qt->blck) * (size_t)qt->size;
        qt->quant(y, q2, RT_N);
        if (qt->stable) EXPECT(memcmp(q, q2, nbytes) == 0, "%s: not stable", qt->name);
        /* ... and in any case dequantize to nearly the same values. */
        qt->dequant(q2, y2, RT_N);
        EXPECT(nmse(y, y2, RT_N) < qt->max_nmse, "%s: requant nmse %g", qt->name, nmse(y, y2, RT_N));
    }
}

static void test_zero_blocks(void) {
    static float x[512], y[512];
    static _Alignas(16) uint8_t q[1024];
    memset(x, 0, sizeof x);
    for (int t = 0; t < N_QTYPES; t++) {
        const struct qtype *qt = &qtypes[t];
        memset(q, 0xa5, sizeof q);
        qt->quant(x, q, 512);
        for (int i = 0; i < 512; i++) y[i] = 1.0f;
        qt->dequant(q, y, 512);
        int bad = 0;
        for (int i = 0; i < 512; i++) bad += y[i] != 0.0f;
        EXPECT(bad == 0, "%s: %d nonzero values", qt->name, bad);
    }
}

/* Inputs that are exactly on the grid come back exactly. */
static void test_exact_inputs(void) {
    float x[256], y[256];
    _Alignas(16) uint8_t q[512];
    /* q8_0: x = k * 2^-5 with |k| <= 127 and one |k| = 127. */
    for (int i = 0; i < 256; i++) x[i] = (float)((int)(rnd_u32() % 255) - 127) * 0x1p-5f;
    for (int i = 0; i < 256; i += 32) x[i] = -127.0f * 0x1p-5f;
    ferry_quant_row_q8_0(x, q, 256);
    ferry_dequant_row_q8_0(q, y, 256);
    for (int i = 0; i < 256; i++) EXPECT(same(x[i], y[i]), "q8_0 i=%d %g %g", i, x[i], y[i]);
    /* q4_0: x = (k - 8) * 0.25 with a -8 in each block (max = -2, d = 0.25). */
    for (int i = 0; i < 256; i++) x[i] = (float)((int)(rnd_u32() % 16) - 8) * 0.25f;
    for (int i = 0; i < 256; i += 32) x[i + 5] = -2.0f;
    ferry_quant_row_q4_0(x, q, 256);
    ferry_dequant_row_q4_0(q, y, 256);
    for (int i = 0; i < 256; i++) EXPECT(same(x[i], y[i]), "q4_0 i=%d %g %g", i, x[i], y[i]);
    /* mxfp4: T_fp4 values with scale 2^-3 (amax 12 * 2^-3 = 1.5 -> e = 125). */
    for (int i = 0; i < 256; i++) x[i] = (float)T_FP4[rnd_u32() % 16] * 0.125f;
    for (int i = 0; i < 256; i += 32) x[i] = 1.5f;
    ferry_quant_row_mxfp4(x, q, 256);
    ferry_dequant_row_mxfp4(q, y, 256);
    for (int i = 0; i < 256; i++) EXPECT(x[i] == y[i], "mxfp4 i=%d %g %g", i, x[i], y[i]);
    EXPECT(((block_mxfp4 *)q)->e == 125, "mxfp4 e %d", ((block_mxfp4 *)q)->e);
}

/* ---- quantizers: edge cases ------------------------------------------- */

static void test_q4_0_sign(void) {
    float x[32] = {0}, y[32];
    block_q4_0 b;
    /* Largest magnitude negative: d = -1/-8 > 0, and -1 maps to code 0. */
    x[3] = -1.0f;
    x[7] = 0.5f;
    ferry_quant_row_q4_0(x, &b, 32);
    EXPECT(b.d == h(0.125f), "d %#x", b.d);
    EXPECT((b.qs[3] & 15) == 0, "code of max %d", b.qs[3] & 15);
    ferry_dequant_row_q4_0(&b, y, 32);
    EXPECT(same(y[3], -1.0f) && same(y[7], 0.5f), "%g %g", y[3], y[7]);
    /* Positive extreme: negative d. */
    x[3] = 1.0f;
    ferry_quant_row_q4_0(x, &b, 32);
    EXPECT(b.d == h(-0.125f), "d %#x", b.d);
    /* Equal magnitudes: the first wins, the opposite one clamps to 15. */
    x[3] = -1.0f;
    x[20] = 1.0f;
    ferry_quant_row_q4_0(x, &b, 32);
    ferry_dequant_row_q4_0(&b, y, 32);
    EXPECT(b.d == h(0.125f), "tie d %#x", b.d);
    EXPECT((b.qs[4] >> 4) == 15 && same(y[20], 0.875f), "clamped %d %g", b.qs[4] >> 4, y[20]);
}

static void test_q5_0_fields(void) {
    float x[32], y[32];
    block_q5_0 b;
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16); /* max = -16 -> d = 1, q = x + 16 = j */
    ferry_quant_row_q5_0(x, &b, 32);
    EXPECT(b.d == h(1.0f), "d %#x", b.d);
    EXPECT(b.qh[0] == 0 && b.qh[1] == 0 && b.qh[2] == 0xff && b.qh[3] == 0xff, "qh %02x%02x%02x%02x", b.qh[3],
           b.qh[2], b.qh[1], b.qh[0]);
    for (int j = 0; j < 16; j++) EXPECT(b.qs[j] == (uint8_t)(j | j << 4), "qs[%d] %#x", j, b.qs[j]);
    ferry_dequant_row_q5_0(&b, y, 32);
    for (int j = 0; j < 32; j++) EXPECT(same(y[j], x[j]), "j=%d", j);
}

static void test_q4_1_q5_1_fields(void) {
    float x[32], y[32];
    for (int j = 0; j < 32; j++) x[j] = 1.0f + (float)(j % 16) * 0.5f; /* min 1, max 8.5: d = 0.5 */
    block_q4_1 b;
    ferry_quant_row_q4_1(x, &b, 32);
    EXPECT(b.d == h(0.5f) && b.m == h(1.0f), "d %#x m %#x", b.d, b.m);
    ferry_dequant_row_q4_1(&b, y, 32);
    for (int j = 0; j < 32; j++) EXPECT(same(y[j], x[j]), "q4_1 j=%d", j);

    for (int j = 0; j < 32; j++) x[j] = -2.0f + (float)j * 0.25f; /* d = 7.75/31 = 0.25 */
    block_q5_1 c;
    ferry_quant_row_q5_1(x, &c, 32);
    EXPECT(c.d == h(0.25f) && c.m == h(-2.0f), "d %#x m %#x", c.d, c.m);
    ferry_dequant_row_q5_1(&c, y, 32);
    for (int j = 0; j < 32; j++) EXPECT(same(y[j], x[j]), "q5_1 j=%d", j);
}

static void test_q8_0_ties(void) {
    /* amax = 127 gives id = 1 exactly, so x*id are exact halves: ties to even. */
    float x[32] = {127.0f, 2.5f, 3.5f, -2.5f, 0.5f, -0.5f, 1.5f, -126.5f, 125.5f};
    block_q8_0 b;
    ferry_quant_row_q8_0(x, &b, 32);
    const int8_t want[9] = {127, 2, 4, -2, 0, 0, 2, -126, 126};
    for (int j = 0; j < 9; j++) EXPECT(b.qs[j] == want[j], "x=%g -> %d, want %d", x[j], b.qs[j], want[j]);
    EXPECT(b.d == h(1.0f), "d %#x", b.d);

    /* The multiplier is 127/amax, not 1/d: compare with a direct computation
     * (rintf rounds half to even in the default mode). */
    float r[256];
    block_q8_0 q[8];
    fill_uniform(r, 256);
    ferry_quantize_row_q8_0_x86(r, q, 256);
    for (int k = 0; k < 8; k++) {
        const block_q8_0 *bk = &q[k];
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(r[32 * k + j]));
        const float id = 127.0f / amax;
        EXPECT(bk->d == h(amax / 127.0f), "block %d d", k);
        for (int j = 0; j < 32; j++)
            EXPECT(bk->qs[j] == (int8_t)rintf(r[32 * k + j] * id), "block %d j %d", k, j);
    }
}

static void test_q8_1_sum(void) {
    float x[64];
    for (int j = 0; j < 64; j++) x[j] = (float)((j * 7) % 255 - 127) / 3.0f;
    x[5] = 127.0f / 3.0f;
    block_q8_1 b[2];
    ferry_quantize_row_q8_1_x86(x, b, 64);
    for (int k = 0; k < 2; k++) {
        float amax = 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * k + j]));
        for (int j = 0; j < 32; j++) sum += b[k].qs[j];
        const float d = amax / 127.0f;
        EXPECT(b[k].d == h(d), "block %d d", k);
        EXPECT(b[k].s == h(d * (float)sum), "block %d s %#x want %#x", k, b[k].s, h(d * (float)sum));
    }
    /* Same quants as Q8_0. */
    block_q8_0 c[2];
    ferry_quant_row_q8_0(x, c, 64);
    for (int k = 0; k < 2; k++) EXPECT(memcmp(b[k].qs, c[k].qs, 32) == 0 && b[k].d == c[k].d, "vs q8_0 %d", k);
}

static void test_q8_K(void) {
    float x[512];
    block_q8_K b[2];
    fill_uniform(x, 512);
    x[100] = 1.5f;   /* block 0: positive extreme -> d negative */
    x[300] = -2.0f;  /* block 1: negative extreme */
    x[301] = 2.0f;   /* same magnitude later: the first (negative) wins */
    ferry_quantize_row_q8_K(x, b, 512);
    EXPECT(b[0].qs[100] == -127, "max -> -127: %d", b[0].qs[100]);
    EXPECT(same(b[0].d, 1.0f / (-127.0f / 1.5f)), "d0 %g", b[0].d);
    EXPECT(b[1].qs[300 - 256] == -127 && b[1].qs[301 - 256] == 127, "block 1 %d %d", b[1].qs[44], b[1].qs[45]);
    EXPECT(same(b[1].d, 1.0f / (-127.0f / -2.0f)) && b[1].d > 0, "d1 %g", b[1].d);
    for (int k = 0; k < 2; k++) {
        const float iscale = -127.0f / (k ? -2.0f : 1.5f);
        for (int i = 0; i < 256; i++) {
            const long want = lrintf(iscale * x[256 * k + i]);
            EXPECT(b[k].qs[i] == (want > 127 ? 127 : want), "block %d i %d", k, i);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += b[k].qs[16 * g + i];
            EXPECT(b[k].bsums[g] == sum, "bsums[%d][%d] %d != %d", k, g, b[k].bsums[g], sum);
        }
    }
    /* Zero block: everything zero, bsums included. */
    memset(x, 0, 256 * sizeof(float));
    memset(b, 0x5a, sizeof b);
    ferry_quantize_row_q8_K(x, b, 512);
    int nz = b[0].d != 0.0f;
    for (int i = 0; i < 256; i++) nz += b[0].qs[i] != 0;
    for (int g = 0; g < 16; g++) nz += b[0].bsums[g] != 0;
    EXPECT(nz == 0, "zero block has %d nonzero fields", nz);
}

static void test_iq4_nl_ties(void) {
    /* max = -127 gives d = 1 and id = 1, so id*x = x. */
    float x[32] = {-127.0f, 7.0f, 6.999f, -115.5f, 113.0f, -10.0f, 0.0f, 101.0f, -4.5f};
    block_iq4_nl b;
    ferry_quant_row_iq4_nl(x, &b, 32);
    int idx[9];
    for (int j = 0; j < 9; j++) idx[j] = b.qs[j] & 15;
    EXPECT(idx[0] == 0, "-127 -> %d", idx[0]);
    EXPECT(idx[1] == 9, "7 is the midpoint of 1 and 13: upper index, got %d", idx[1]);
    EXPECT(idx[2] == 8, "6.999 -> %d", idx[2]);
    EXPECT(idx[3] == 1, "-115.5 midpoint -> %d", idx[3]);
    EXPECT(idx[4] == 15, "113 -> %d", idx[4]);
    EXPECT(idx[5] == 7, "-10 -> %d", idx[5]);
    EXPECT(idx[6] == 8, "0 -> %d (nearest is 1)", idx[6]);
    EXPECT(idx[7] == 15, "101 midpoint of 89 and 113: upper index, got %d", idx[7]);
    EXPECT(idx[8] == 8, "-4.5 midpoint of -10 and 1: upper index, got %d", idx[8]);
    /* The refitted scale, with weights x^2, in element order. */
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float q = (float)T_NL[b.qs[j % 16] >> (j < 16 ? 0 : 4) & 15];
        const float w = x[j] * x[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    EXPECT(b.d == h(sumqx / sumq2), "d %#x want %#x", b.d, h(sumqx / sumq2));
    /* Tiny block (amax < 1e-15) stores d = 0. */
    float t[32] = {1e-16f, -5e-16f};
    ferry_quant_row_iq4_nl(t, &b, 32);
    EXPECT(b.d == 0, "tiny d %#x", b.d);
}

static void test_mxfp4_scales(void) {
    float x[32] = {0}, y[32];
    block_mxfp4 b;
    /* amax = 2^-125: e = -125 - 2 + 127 = 0, d = 2^-128, 2^-125 = 8 d -> code 6. */
    x[0] = 0x1p-125f;
    x[1] = -0x1p-127f; /* -2 d -> code 10 */
    ferry_quant_row_mxfp4(x, &b, 32);
    EXPECT(b.e == 0, "e %d", b.e);
    EXPECT((b.qs[0] & 15) == 6 && (b.qs[1] & 15) == 10, "codes %d %d", b.qs[0] & 15, b.qs[1] & 15);
    ferry_dequant_row_mxfp4(&b, y, 32);
    EXPECT(same(y[0], x[0]) && same(y[1], x[1]), "%a %a", y[0], y[1]);
    /* amax = 2^-124: e = 1, d = 2^-127 (the other subnormal scale). */
    x[0] = 0x1p-124f;
    x[1] = 0x1.8p-126f; /* 3 d -> code 3 */
    ferry_quant_row_mxfp4(x, &b, 32);
    EXPECT(b.e == 1, "e %d", b.e);
    ferry_dequant_row_mxfp4(&b, y, 32);
    EXPECT(same(y[0], x[0]) && same(y[1], x[1]), "%a %a", y[0], y[1]);
    /* Halfway between codes keeps the lower code; zero picks +0 (code 0). */
    x[0] = 1.0f;  /* amax 1: e = 125, d = 2^-3 */
    x[1] = 0.3125f; /* between 2d = 0.25 (code 2) and 3d = 0.375 (code 3) */
    x[2] = -0.0f;
    x[3] = -0.0625f; /* between +0 (code 0) and -1 d (code 9) */
    ferry_quant_row_mxfp4(x, &b, 32);
    EXPECT(b.e == 125, "e %d", b.e);
    EXPECT((b.qs[1] & 15) == 2 && (b.qs[2] & 15) == 0 && (b.qs[3] & 15) == 0, "codes %d %d %d", b.qs[1] & 15,
           b.qs[2] & 15, b.qs[3] & 15);
    /* Very small amax: the exponent expression wraps as a u8 (x86 behaviour). */
    memset(x, 0, sizeof x);
    x[0] = 0x1p-130f;
    ferry_quant_row_mxfp4(x, &b, 32);
    EXPECT(b.e == (uint8_t)(-130 - 2 + 127), "wrapped e %d", b.e);
}

static void test_q1_q2_quant(void) {
    float x[128], y[128];
    block_q1_0 b;
    fill_uniform(x, 128);
    x[9] = -0.0f; /* x >= 0 holds for -0: bit set */
    float sum = 0.0f;
    for (int j = 0; j < 128; j++) sum += fabsf(x[j]);
    ferry_quant_row_q1_0(x, &b, 128);
    EXPECT(b.d == h(sum / 128.0f), "q1_0 d");
    for (int j = 0; j < 128; j++) EXPECT(((b.qs[j / 8] >> (j % 8)) & 1) == (x[j] >= 0.0f), "q1_0 bit %d", j);
    ferry_dequant_row_q1_0(&b, y, 128);
    EXPECT(same(y[9], hf(b.d)), "q1_0 -0 -> +d");

    /* Q2_0: d = amax = 2, q = roundf(x/2) + 1, ties away from zero. */
    float z[64] = {0.5f, -0.5f, 0.49f, 2.0f, -2.0f, -1.0f, 1.0f};
    block_q2_0 c;
    ferry_quant_row_q2_0(z, &c, 64);
    EXPECT(c.d == h(2.0f), "q2_0 d %#x", c.d);
    const int want_q[7] = {1, 1, 1, 2, 0, 0, 2};
    for (int j = 0; j < 7; j++) {
        const int q = (c.qs[j / 4] >> (2 * (j % 4))) & 3;
        EXPECT(q == want_q[j], "q2_0 x=%g -> q %d, want %d", z[j], q, want_q[j]);
    }
    ferry_dequant_row_q2_0(&c, y, 64);
    EXPECT(same(y[5], -2.0f) && same(y[6], 2.0f) && same(y[0], 0.0f), "q2_0 values %g %g %g", y[5], y[6], y[0]);
}

static void test_multi_block_rows(void) {
    /* Each block is quantized on its own: a row equals its blocks done one by one. */
    float x[256];
    fill_uniform(x, 256);
    for (int t = 0; t < N_QTYPES; t++) {
        const struct qtype *qt = &qtypes[t];
        _Alignas(16) uint8_t whole[2 * 292], parts[2 * 292];
        const int nb = 256 / qt->blck;
        qt->quant(x, whole, 256);
        for (int k = 0; k < nb; k++) qt->quant(x + k * qt->blck, parts + k * qt->size, qt->blck);
        EXPECT(memcmp(whole, parts, (size_t)(nb * qt->size)) == 0, "%s", qt->name);
    }
}

/* ---- golden cross-check ----------------------------------------------- */

struct gtensor {
    char name[16];
    int type;
    int64_t ne[4];
    const uint8_t *data;
};

struct gfile {
    uint8_t *buf;
    size_t size;
    int n;
    struct gtensor t[8];
    int has_view; /* a ferry.src_permute / ferry.src_view key is present */
};

/* Bounds-checked cursor over the file. */
struct cursor {
    const uint8_t *p, *end;
    int bad;
};

static const uint8_t *take(struct cursor *c, uint64_t n) {
    if (c->bad || n > (uint64_t)(c->end - c->p)) {
        c->bad = 1;
        return NULL;
    }
    const uint8_t *r = c->p;
    c->p += n;
    return r;
}

static uint64_t take_u(struct cursor *c, int bytes) {
    const uint8_t *p = take(c, (uint64_t)bytes);
    uint64_t v = 0;
    for (int i = 0; p && i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void skip_value(struct cursor *c, uint32_t type) {
    static const int sizes[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) {
        take(c, take_u(c, 8));
    } else if (type == 9) {
        const uint32_t et = (uint32_t)take_u(c, 4);
        const uint64_t count = take_u(c, 8);
        for (uint64_t i = 0; i < count && !c->bad; i++) skip_value(c, et);
    } else if (type < 13 && sizes[type]) {
        take(c, (uint64_t)sizes[type]);
    } else {
        c->bad = 1;
    }
}

static int gguf_load(const char *path, struct gfile *g) {
    memset(g, 0, sizeof *g);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    g->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc(g->size);
    const size_t got = g->buf ? fread(g->buf, 1, g->size, f) : 0;
    fclose(f);
    if (got != g->size) return -1;

    struct cursor c = {g->buf, g->buf + g->size, 0};
    const uint8_t *magic = take(&c, 4);
    if (!magic || memcmp(magic, "GGUF", 4) != 0 || take_u(&c, 4) != 3) return -1;
    const uint64_t n_tensors = take_u(&c, 8), n_kv = take_u(&c, 8);
    if (n_tensors > 8) return -1;
    for (uint64_t i = 0; i < n_kv && !c.bad; i++) {
        const uint64_t klen = take_u(&c, 8);
        const uint8_t *key = take(&c, klen);
        if (key && klen >= 10 && memcmp(key, "ferry.src_", 10) == 0) g->has_view = 1;
        skip_value(&c, (uint32_t)take_u(&c, 4));
    }
    uint64_t offsets[8];
    for (uint64_t i = 0; i < n_tensors && !c.bad; i++) {
        struct gtensor *t = &g->t[i];
        const uint64_t nlen = take_u(&c, 8);
        const uint8_t *name = take(&c, nlen);
        if (name && nlen < sizeof t->name) memcpy(t->name, name, nlen);
        const uint32_t n_dims = (uint32_t)take_u(&c, 4);
        if (n_dims > 4) return -1;
        for (int d = 0; d < 4; d++) t->ne[d] = d < (int)n_dims ? (int64_t)take_u(&c, 8) : 1;
        t->type = (int)take_u(&c, 4);
        offsets[i] = take_u(&c, 8);
    }
    if (c.bad) return -1;
    const size_t data_start = ((size_t)(c.p - g->buf) + 31) & ~(size_t)31;
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct gtensor *t = &g->t[i];
        const size_t nbytes = ferry_row_size(t->type, t->ne[0]) * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        if (data_start + offsets[i] + nbytes > g->size) return -1;
        t->data = g->buf + data_start + offsets[i];
    }
    g->n = (int)n_tensors;
    return 0;
}

static const struct gtensor *gget(const struct gfile *g, const char *name) {
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, name) == 0) return &g->t[i];
    return NULL;
}

static int64_t nrows(const struct gtensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

#ifndef FERRY_GOLDEN_DIR
#define FERRY_GOLDEN_DIR "tests/golden"
#endif
static const char *golden_dir = FERRY_GOLDEN_DIR;
static int golden_missing;

static int open_case(const char *name, struct gfile *g) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.gguf", golden_dir, name);
    if (gguf_load(path, g) != 0) {
        free(g->buf);
        g->buf = NULL;
        if (golden_missing++ == 0) printf("     (golden files not readable under %s)\n", golden_dir);
        return 0;
    }
    EXPECT(!g->has_view, "%s: unexpected view keys", name);
    return 1;
}

/* src0 rows (f32 or f16) quantized with the type's from_float == dst bytes. */
static void golden_quantize(const char *name) {
    struct gfile g;
    if (!open_case(name, &g)) return;
    const struct gtensor *src = gget(&g, "src0"), *dst = gget(&g, "dst");
    const struct ferry_type_traits *tt = dst ? ferry_type_traits(dst->type) : NULL;
    const int ok = src && tt && tt->from_float;
    EXPECT(ok, "%s: tensors", name);
    if (ok) {
        const int64_t n0 = src->ne[0], nr = nrows(src);
        float *row = malloc((size_t)n0 * sizeof(float));
        uint8_t *out = malloc(ferry_row_size(dst->type, n0));
        const size_t rs = ferry_row_size(dst->type, n0);
        for (int64_t r = 0; r < nr; r++) {
            ferry_type_traits(src->type)->to_float(src->data + (size_t)r * ferry_row_size(src->type, n0), row, n0);
            tt->from_float(row, out, n0);
            EXPECT(memcmp(out, dst->data + (size_t)r * rs, rs) == 0, "%s: row %lld differs", name, (long long)r);
        }
        free(row);
        free(out);
    }
    free(g.buf);
}

/* SET_ROWS: quantized src0 rows land bit-exactly at their indices in dst. */
static void golden_set_rows(const char *name) {
    struct gfile g;
    if (!open_case(name, &g)) return;
    const struct gtensor *src = gget(&g, "src0"), *idx = gget(&g, "src1"), *dst = gget(&g, "dst");
    const int ok = src && idx && dst;
    EXPECT(ok, "%s: tensors", name);
    if (ok) {
        const int64_t n0 = src->ne[0];
        const size_t rs = ferry_row_size(dst->type, n0);
        uint8_t *out = malloc(rs);
        for (int64_t r = 0; r < nrows(src); r++) {
            int64_t i;
            if (idx->type == FERRY_TYPE_I64) memcpy(&i, idx->data + 8 * r, 8);
            else {
                int32_t i32;
                memcpy(&i32, idx->data + 4 * r, 4);
                i = i32;
            }
            ferry_type_traits(dst->type)->from_float((const float *)(const void *)(src->data + r * 4 * n0), out, n0);
            EXPECT(i >= 0 && i < nrows(dst) && memcmp(out, dst->data + i * (int64_t)rs, rs) == 0, "%s: row %lld",
                   name, (long long)r);
        }
        free(out);
    }
    free(g.buf);
}

/* Dequantized src0 rows (all of them, or those picked by src1) == dst bits. */
static void golden_dequantize(const char *name, int by_index) {
    struct gfile g;
    if (!open_case(name, &g)) return;
    const struct gtensor *src = gget(&g, "src0"), *idx = gget(&g, "src1"), *dst = gget(&g, "dst");
    const int ok = src && dst && (!by_index || idx);
    EXPECT(ok, "%s: tensors", name);
    if (ok) {
        const int64_t n0 = src->ne[0];
        const size_t rs = ferry_row_size(src->type, n0);
        float *row = malloc((size_t)n0 * sizeof(float));
        for (int64_t r = 0; r < nrows(dst); r++) {
            int64_t i = r;
            if (by_index) {
                int32_t i32;
                memcpy(&i32, idx->data + 4 * r, 4);
                i = i32;
            }
            ferry_type_traits(src->type)->to_float(src->data + i * (int64_t)rs, row, n0);
            EXPECT(memcmp(row, dst->data + r * n0 * 4, (size_t)n0 * 4) == 0, "%s: row %lld", name, (long long)r);
        }
        free(row);
    }
    free(g.buf);
}

/* Block dot products in double, the way ggml's vec_dot defines them: src1
 * is first quantized to the vec_dot type; Q4_1/Q5_1 use Q8_1's s field. */
static double dot_q8(int type, const void *x, const void *yq, int64_t n, float *xf, float *yf) {
    double sum = 0;
    ferry_type_traits(type)->to_float(x, xf, n);
    if (type == FERRY_TYPE_Q4_1 || type == FERRY_TYPE_Q5_1) {
        const block_q8_1 *yb = yq;
        ferry_dequant_row_q8_1(yq, yf, n);
        for (int64_t b = 0; b < n / 32; b++) {
            /* x = q*d + m: sum(x*y) = d*d1*sum(q*q1) + m*s1 */
            uint16_t hm;
            memcpy(&hm, (const uint8_t *)x + b * (type == FERRY_TYPE_Q4_1 ? 20 : 24) + 2, 2);
            const double m = hf(hm), d1 = hf(yb[b].d);
            for (int j = 0; j < 32; j++) sum += ((double)xf[32 * b + j] - m) * (double)yb[b].qs[j] * d1;
            sum += m * hf(yb[b].s);
        }
        return sum;
    }
    if (ferry_blck_size(type) == 256) ferry_dequant_row_q8_K(yq, yf, n);
    else ferry_dequant_row_q8_0(yq, yf, n);
    for (int64_t i = 0; i < n; i++) sum += (double)xf[i] * yf[i];
    return sum;
}

static void golden_mul_mat(const char *name) {
    struct gfile g;
    if (!open_case(name, &g)) return;
    const struct gtensor *a = gget(&g, "src0"), *b = gget(&g, "src1"), *dst = gget(&g, "dst");
    const int ok = a && b && dst && b->type == FERRY_TYPE_F32;
    EXPECT(ok, "%s: tensors", name);
    if (ok) {
        const int64_t k = a->ne[0], m = a->ne[1], nb = nrows(b);
        const int t = a->type;
        float *xf = malloc((size_t)k * 4), *yf = malloc((size_t)k * 4);
        uint8_t *yq = malloc((size_t)k * 2);
        double num = 0, den = 0;
        for (int64_t j = 0; j < nb; j++) {
            const float *col = (const float *)(const void *)(b->data + j * k * 4);
            if (ferry_blck_size(t) == 256) ferry_quantize_row_q8_K(col, yq, k);
            else if (t == FERRY_TYPE_Q4_1 || t == FERRY_TYPE_Q5_1) ferry_quantize_row_q8_1_x86(col, yq, k);
            else ferry_quantize_row_q8_0_x86(col, yq, k);
            for (int64_t i = 0; i < m; i++) {
                const double want = dot_q8(t, a->data + i * (int64_t)ferry_row_size(t, k), yq, k, xf, yf);
                float got;
                memcpy(&got, dst->data + 4 * (j * m + i), 4);
                num += (want - got) * (want - got);
                den += (double)got * got;
            }
        }
        /* ggml accumulates in f32: ~1e-14. A wrong layout or a quant off by
         * one in src1 shows up orders of magnitude above 1e-11. */
        const double e = num / den;
        EXPECT(e < 1e-11, "%s: nmse %g", name, e);
        if (getenv("VERBOSE")) printf("     %s nmse %g\n", name, e);
        free(xf);
        free(yf);
        free(yq);
    }
    free(g.buf);
}

static void test_golden(void) {
    static const char *quant_cases[] = {"cpy_f32_q4_0", "cpy_f32_q4_1", "cpy_f32_q5_0", "cpy_f32_q5_1",
                                        "cpy_f32_q8_0", "cpy_f32_iq4_nl", "cpy_f32_mxfp4", "cpy_f16_q8_0"};
    for (size_t i = 0; i < sizeof quant_cases / sizeof *quant_cases; i++) golden_quantize(quant_cases[i]);
    golden_set_rows("set_rows_q8_0_i64");
    golden_set_rows("set_rows_q4_0_i32");
    golden_dequantize("cpy_q4_0_f32", 0);
    golden_dequantize("cpy_q8_0_f32", 0);
    golden_dequantize("cpy_q6_K_f32", 0);
    static const char *rows_cases[] = {"get_rows_q4_0", "get_rows_q8_0", "get_rows_q4_K", "get_rows_q6_K",
                                       "get_rows_iq4_nl"};
    for (size_t i = 0; i < sizeof rows_cases / sizeof *rows_cases; i++) golden_dequantize(rows_cases[i], 1);
    static const char *mm_cases[] = {"mul_mat_q4_0_f32", "mul_mat_q4_1_f32",   "mul_mat_q5_0_f32",
                                     "mul_mat_q5_1_f32", "mul_mat_q8_0_f32",   "mul_mat_iq4_nl_f32",
                                     "mul_mat_mxfp4_f32", "mul_mat_q2_K_f32",  "mul_mat_q3_K_f32",
                                     "mul_mat_q4_K_f32", "mul_mat_q5_K_f32",   "mul_mat_q6_K_f32",
                                     "mul_mat_iq4_xs_f32", "mul_mat_q4_K_f32_vec"};
    for (size_t i = 0; i < sizeof mm_cases / sizeof *mm_cases; i++) golden_mul_mat(mm_cases[i]);
}

int main(int argc, char **argv) {
    if (argc > 1) golden_dir = argv[1];
    RUN(test_tables);
    RUN(test_deq_q4_0);
    RUN(test_deq_q4_1);
    RUN(test_deq_q5);
    RUN(test_deq_q8);
    RUN(test_deq_iq4_nl);
    RUN(test_deq_mxfp4);
    RUN(test_deq_nvfp4);
    RUN(test_deq_q1_0);
    RUN(test_deq_q2_0);
    RUN(test_deq_q2_K);
    RUN(test_deq_q3_K);
    RUN(test_deq_q4_K);
    RUN(test_deq_q5_K);
    RUN(test_deq_q6_K);
    RUN(test_deq_q8_K);
    RUN(test_deq_iq4_xs);
    RUN(test_deq_tq1_0);
    RUN(test_deq_tq2_0);
    RUN(test_round_trip);
    RUN(test_zero_blocks);
    RUN(test_exact_inputs);
    RUN(test_q4_0_sign);
    RUN(test_q5_0_fields);
    RUN(test_q4_1_q5_1_fields);
    RUN(test_q8_0_ties);
    RUN(test_q8_1_sum);
    RUN(test_q8_K);
    RUN(test_iq4_nl_ties);
    RUN(test_mxfp4_scales);
    RUN(test_q1_q2_quant);
    RUN(test_multi_block_rows);
    RUN(test_golden);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed != 0;
}
