/* libFuzzer target: the GGUF reader must reject or accept any byte string
 * without reading outside it, and everything it accepts must be usable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct ferry_gguf *g = NULL;
    struct ferry_error err;
    if (ferry_gguf_parse(data, size, &g, &err) != FERRY_OK) return 0;
    for (int64_t i = 0; i < ferry_gguf_n_kv(g); i++) {
        struct ferry_gguf_str key = ferry_gguf_key(g, i);
        char name[256];
        size_t n = key.len < sizeof name - 1 ? (size_t)key.len : sizeof name - 1;
        memcpy(name, key.ptr, n);
        name[n] = '\0';
        struct ferry_gguf_str s;
        int64_t v;
        enum ferry_gguf_type et;
        uint64_t count;
        const void *arr;
        (void)ferry_gguf_get_i64(g, name, &v);
        (void)ferry_gguf_get_str(g, name, &s);
        if (ferry_gguf_get_arr(g, name, &et, &count, &arr) && et == FERRY_GGUF_STRING && count > 0)
            (void)ferry_gguf_get_arr_str(g, name, count - 1, &s);
    }
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++) {
        const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(g, i);
        if (ti->size) sink ^= ((const uint8_t *)ti->data)[ti->size - 1];
        (void)ferry_gguf_find_tensor(g, ti->name);
    }
    (void)sink;
    ferry_gguf_close(g);
    return 0;
}
