#include "simd.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>


static atomic_int level = -1;

static enum ferry_simd_level cpu_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports lacks it */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c))
        return FERRY_SIMD_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return FERRY_SIMD_AVX512;
    return FERRY_SIMD_AVX2;
#else
    return FERRY_SIMD_SCALAR;
#endif
}

static enum ferry_simd_level capped(enum ferry_simd_level want) {
    enum ferry_simd_level have = cpu_level();
    return want < have ? want : have;
}

enum ferry_simd_level ferry_simd_level(void) {
    int l = atomic_load_explicit(&level, memory_order_relaxed);
    if (l >= 0) return (enum ferry_simd_level)l;
    enum ferry_simd_level want = FERRY_SIMD_AVX512;
    const char *env = getenv("FERRY_SIMD");
    if (env) {
        if (!strcmp(env, "scalar")) want = FERRY_SIMD_SCALAR;
        else if (!strcmp(env, "avx2")) want = FERRY_SIMD_AVX2;
    }
    l = (int)capped(want);
    atomic_store_explicit(&level, l, memory_order_relaxed);
    return (enum ferry_simd_level)l;
}

void ferry_simd_set_level(enum ferry_simd_level want) {
    atomic_store_explicit(&level, (int)capped(want), memory_order_relaxed);
}

const char *ferry_simd_level_name(enum ferry_simd_level l) {
    switch (l) {
    case FERRY_SIMD_AVX512: return "avx512";
    case FERRY_SIMD_AVX2: return "avx2";
    default: return "scalar";
    }
}

