/* Run-time choice of SIMD kernels. Default builds target baseline x86-64;
 * AVX2 and AVX-512 kernels live in files compiled for those ISAs and are
 * only called when the CPU has them. FERRY_SIMD=scalar|avx2|avx512 in the
 * environment caps the level (tests use it to compare paths). */
#ifndef FERRY_SIMD_H
#define FERRY_SIMD_H

enum ferry_simd_level {
    FERRY_SIMD_SCALAR = 0,
    FERRY_SIMD_AVX2 = 1,   /* AVX2 + FMA + F16C */
    FERRY_SIMD_AVX512 = 2, /* AVX-512 F, BW, VL, DQ on top of AVX2 */
};

enum ferry_simd_level ferry_simd_level(void);
/* Overrides the level (capped at what the CPU has); for tests and benches. */
void ferry_simd_set_level(enum ferry_simd_level level);
const char *ferry_simd_level_name(enum ferry_simd_level level);

#endif
