/* FNV-1a 64: the hash of ggml's SET_TENSOR_HASH and cache file names
 * (docs/rpc-protocol.md), and of ferry's model content keys. */
#ifndef FERRY_UTIL_HASH_H
#define FERRY_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FERRY_FNV1A64_INIT 0xcbf29ce484222325ull
#define FERRY_FNV1A64_PRIME 0x100000001b3ull
/* Incremental: h = ferry_fnv1a64_update(FERRY_FNV1A64_INIT, chunk...) as data streams in. */
uint64_t ferry_fnv1a64_update(uint64_t h, const void *data, size_t n);
uint64_t ferry_fnv1a64(const void *data, size_t n);

#endif
