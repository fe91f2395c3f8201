/* Inline half-precision conversions (docs/types.md 2.2, 2.3), for hot loops.
 * The public ferry_fp16_to_fp32 & co. are these same functions. */
#ifndef FERRY_FP16_H
#define FERRY_FP16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf / NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t s = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return s | 0x7e00;          /* NaN */
    if (a >= 0x477ff000u) return s | 0x7c00;         /* >= 65520 or inf */
    if (a < 0x38800000u) {                           /* f16 subnormal range */
        float v = f32_from_bits(a) * 0x1p24f;        /* exact scaling */
        return s | (uint16_t)nearbyintf(v);           /* default mode: ties to even */
    }
    uint32_t exp = a >> 23, mant = a & 0x7fffff;
    uint32_t h = ((exp - 112) << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return s | (uint16_t)h;
}

static inline float bf16_to_fp32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

static inline uint16_t fp32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

#endif
