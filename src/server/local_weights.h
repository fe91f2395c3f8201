/* ferry server: weights it already holds (`ferry serve --model PATH`).
 *
 * At start the server indexes every tensor of its local GGUF files by the
 * protocol's FNV-1a-64 of the tensor's bytes (the hash a client puts in
 * SET_TENSOR_HASH), hashing tensors in parallel. A SET_TENSOR_HASH that
 * matches is then answered from the local file: no payload crosses the
 * network, for ggml's client as for ferry's. Each file's index is saved in
 * index_dir, keyed by the file's path, size and mtime (and inode), so a
 * restart re-hashes only files that changed. A file that changes while
 * served (its identity differs from the one indexed) is never read for a
 * hit: its tensors are dropped and the client gets a miss. */
#ifndef FERRY_SERVER_LOCAL_WEIGHTS_H
#define FERRY_SERVER_LOCAL_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/error.h"

struct ferry_local_weights;

struct ferry_local_weights_stats {
    uint64_t files, tensors, bytes;     /* indexed */
    uint64_t files_hashed, bytes_hashed; /* at open: indexes that were not reusable */
    uint64_t hits, bytes_served;
    uint64_t bytes_mapped; /* of them, mapped from the file instead of copied */
};

/* paths: GGUF files or directories (their *.gguf files, not recursive).
 * index_dir: where indexes are kept (created if needed); NULL keeps none.
 * n_threads hash in parallel; progress is logged. */
int ferry_local_weights_open(const char *const *paths, int n_paths, const char *index_dir, int n_threads,
                             struct ferry_local_weights **out, struct ferry_error *err);
void ferry_local_weights_close(struct ferry_local_weights *lw);
/* Size of a local tensor whose bytes hash to hash, or -1. */
int64_t ferry_local_weights_lookup(struct ferry_local_weights *lw, uint64_t hash);
/* Copies that tensor (n bytes, from lookup) into dst. FERRY_ERR_INVALID,
 * logged, when its file changed since it was indexed or cannot be read:
 * its tensors are then forgotten, and dst may hold part of the file's
 * bytes (a miss, after which the client sends the tensor itself). */
int ferry_local_weights_load(struct ferry_local_weights *lw, uint64_t hash, void *dst, uint64_t n);
/* Between ferry peers (docs/protocol-extensions.md, FERRY_LOAD_LOCAL): the
 * model file whose ferry_gguf_content_key is key, by the position of a
 * tensor in it. load_at: copies exactly the
 * indexed tensor that starts at byte offset of that file and is n bytes
 * long, checked as load is; FERRY_ERR_INVALID otherwise. */
int ferry_local_weights_load_at(struct ferry_local_weights *lw, uint64_t key, uint64_t offset, void *dst,
                                uint64_t n);
/* load_at into memory the caller owns as a private anonymous mapping
 * (no RDMA registration): when dst and offset sit at the same place within
 * a page, the tensor's whole pages are mapped from the file (MAP_PRIVATE |
 * MAP_FIXED: nothing copied now, page-cache pages shared until written),
 * only its partial end pages read. Otherwise as load_at. A model file
 * written in place while mapped shows through, as with any mmap'd model:
 * replace served files, do not edit them. */
int ferry_local_weights_map_at(struct ferry_local_weights *lw, uint64_t key, uint64_t offset, void *dst,
                               uint64_t n);
void ferry_local_weights_get_stats(struct ferry_local_weights *lw, struct ferry_local_weights_stats *out);

#endif
