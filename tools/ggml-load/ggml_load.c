/* ggml_load: loads every tensor of a GGUF file into one RPC server the way
 * llama.cpp does it, with ggml's own RPC client: one buffer for all, then
 * ggml_backend_tensor_set per tensor (which probes tensors above 10 MiB by
 * hash first and sends the bytes only on a miss). It prints the load time.
 * Built and run by tools/ggml-load/run.sh against ggml's build from
 * ../shared/ggml; it is ferry's code using ggml's public API, not part of
 * ferry.
 *   ggml_load MODEL.gguf HOST:PORT */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-rpc.h"
#include "ggml.h"
#include "gguf.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: ggml_load MODEL.gguf HOST:PORT\n");
        return 2;
    }
    const double t0 = now_s();
    struct ggml_context *meta = NULL;
    struct gguf_init_params ip = { .no_alloc = true, .ctx = &meta };
    struct gguf_context *g = gguf_init_from_file(argv[1], ip);
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (!g || fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "ggml_load: cannot read %s\n", argv[1]);
        return 1;
    }
    const unsigned char *file = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    ggml_backend_t be = ggml_backend_rpc_init(argv[2], 0);
    if (file == MAP_FAILED || !be) {
        fprintf(stderr, "ggml_load: cannot map the file or reach %s\n", argv[2]);
        return 1;
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(meta, be);
    if (!buf) {
        fprintf(stderr, "ggml_load: the server refused the buffer\n");
        return 1;
    }
    const double t1 = now_s();
    size_t bytes = 0;
    const int64_t n = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n; i++) {
        struct ggml_tensor *t = ggml_get_tensor(meta, gguf_get_tensor_name(g, i));
        const size_t off = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, i);
        ggml_backend_tensor_set(t, file + off, 0, ggml_nbytes(t));
        bytes += ggml_nbytes(t);
    }
    ggml_backend_synchronize(be);
    const double t2 = now_s();
    printf("ggml_load: %lld tensors, %.1f MiB in %.2f s (open %.2f s, tensors %.2f s)\n", (long long)n,
           bytes / 1048576.0, t2 - t0, t1 - t0, t2 - t1);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(be);
    ggml_free(meta);
    gguf_free(g);
    return 0;
}
