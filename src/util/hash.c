/* FNV-1a 64, byte by byte as the protocol defines it (util/hash.h). */
#include "util/hash.h"

uint64_t ferry_fnv1a64_update(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FERRY_FNV1A64_PRIME;
    }
    return h;
}

uint64_t ferry_fnv1a64(const void *data, size_t n) { return ferry_fnv1a64_update(FERRY_FNV1A64_INIT, data, n); }
