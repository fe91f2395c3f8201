/* Two fake server buffers for the protocol fuzz targets: the same handles
 * and bases as tests/test_proto.c, whose --write-corpus mode writes the
 * seeds. Each target allocates mem[] itself. */
#ifndef FERRY_FUZZ_FAKE_BUFFERS_H
#define FERRY_FUZZ_FAKE_BUFFERS_H

#include <stdint.h>

#include "ferry/error.h"

#define BUF_SIZE 1024u
static const uint64_t handles[2] = { 0x1000, 0x2000 };
static const uint64_t bases[2] = { 0x10000, 0x20000 };
static uint8_t *mem[2];

static int fake_resolve(void *ctx, uint64_t buffer, uint64_t data, size_t nbytes, void **host,
                        struct ferry_error *err) {
    (void)ctx;
    for (int i = 0; i < 2; i++) {
        if (handles[i] != buffer) continue;
        if (data < bases[i] || data - bases[i] > BUF_SIZE || nbytes > BUF_SIZE - (data - bases[i]))
            return ferry_fail(err, FERRY_ERR_INVALID, "extent outside buffer");
        *host = mem[i] + (data - bases[i]);
        return FERRY_OK;
    }
    return ferry_fail(err, FERRY_ERR_INVALID, "unknown buffer");
}

#endif
