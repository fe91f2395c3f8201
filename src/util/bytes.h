/* Little-endian fields: the only way wire and file bytes become integers
 * (ggml's RPC protocol, ferry's RDMA records and control messages). */
#ifndef FERRY_UTIL_BYTES_H
#define FERRY_UTIL_BYTES_H

#include <stdint.h>

static inline void ferry_put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void ferry_put_le64(uint8_t *p, uint64_t v) {
    ferry_put_le32(p, (uint32_t)v);
    ferry_put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t ferry_get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ferry_get_le64(const uint8_t *p) {
    return (uint64_t)ferry_get_le32(p) | (uint64_t)ferry_get_le32(p + 4) << 32;
}

#endif
