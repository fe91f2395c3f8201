/* The packed 6-bit scales of a Q4_K/Q5_K super-block, shared by the AVX2
 * dot products (vecdot_avx2.c) and the K-quant GEMM tiles (gemm_k_*.c). */
#ifndef FERRY_VECDOT_KSCALES_H
#define FERRY_VECDOT_KSCALES_H

#include <stdint.h>
#include <string.h>

/* The eight 6-bit scales (sc) and mins (m) of a Q4_K/Q5_K super-block
 * (docs/types.md 5.3), four at a time in 32-bit words: bytes 0-3 hold sc0-3,
 * 4-7 m0-3, 8-11 the low nibbles of sc4-7 and m4-7, and the top two bits
 * of bytes 0-7 complete sc4-7 and m4-7. Straight-line word operations, no
 * loop (the VNNI tiles include it; see gemm_k_avx512.c). */
static inline void k4_scales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8]) {
    uint32_t u[3], out[4];
    memcpy(u, s, 12);
    out[0] = u[0] & 0x3f3f3f3f;
    out[1] = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
    out[2] = u[1] & 0x3f3f3f3f;
    out[3] = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
    memcpy(sc, out, 8);
    memcpy(m, out + 2, 8);
}

#endif
