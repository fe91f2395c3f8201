/* ferry server: the tensor cache behind SET_TENSOR_HASH.
 *
 * Compatible with ggml's rpc-server: a file per tensor, named by the
 * FNV-1a-64 of its bytes as "%016llx", directly in the cache directory.
 * Unlike ggml's, it never serves a file it has not verified (a mismatch
 * deletes the file and counts as a miss), writes atomically (temp file,
 * rename; one syncfs per batch before a file's verdict outlives the
 * process), and keeps its size under a bound by evicting the least
 * recently used files (an in-memory index built from the directory at
 * startup, ordered by mtime; a hit touches the file's mtime so the order
 * survives restarts). Verified once: a file is known good when written
 * from bytes the server hashed, or after one re-hash; that verdict is kept
 * with the file's identity (device, inode, size, mtime, ctime) in
 * .ferry-verified beside the files, and a hit on an unchanged file is one
 * read into tensor memory, no hash. One mutex guards the index; file I/O
 * runs outside it. */
#ifndef FERRY_SERVER_CACHE_H
#define FERRY_SERVER_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

/* What is stored: the bytes of a SET_TENSOR that follows a missed
 * SET_TENSOR_HASH for the same region on the same connection. The client's
 * probe marks what it wants cached (its weights: ggml's client probes
 * above 10 MiB, ferry's client every weight), and nothing it did not probe,
 * such as activations, is ever written to disk. */

struct ferry_cache;

struct ferry_cache_stats {
    uint64_t hits, misses, files, bytes;
    uint64_t rehashes; /* loads that re-hashed a file not verified since it last changed */
    uint64_t pending_bytes; /* queued for the writer */
    uint64_t skipped;       /* async stores dropped: no writer thread, or closing */
    uint64_t bad_hashes;    /* async stores whose bytes did not hash to their name */
};

/* Creates the directory (and parents) if needed and indexes its files. */
int ferry_cache_open(const char *dir, uint64_t max_bytes, struct ferry_cache **out,
                     struct ferry_error *err);
void ferry_cache_close(struct ferry_cache *c);
const char *ferry_cache_dir(const struct ferry_cache *c);

/* Size of the cached file for hash, or -1 when there is none (a miss). */
int64_t ferry_cache_lookup(struct ferry_cache *c, uint64_t hash);
/* Reads the file for hash (size n, from lookup) into dst and re-hashes it.
 * FERRY_OK on a verified hit; otherwise the file is dropped, the call
 * counts a miss and returns FERRY_ERR_INVALID. dst may hold partial data
 * then (the client follows a miss with SET_TENSOR anyway). */
int ferry_cache_load(struct ferry_cache *c, uint64_t hash, void *dst, uint64_t n);
/* Counts a miss that lookup reported. */
void ferry_cache_note_miss(struct ferry_cache *c);
/* Queues a copy of n bytes for the cache's writer thread, which checks
 * that they hash to hash, then stores them; the connection thread only
 * copies; when the queue holds 1 GiB it waits for room. False when not
 * queued (true when already cached). */
bool ferry_cache_store_async(struct ferry_cache *c, uint64_t hash, const void *data, uint64_t n);
/* Waits until the writer has nothing queued or in hand (tests, benches). */
void ferry_cache_flush(struct ferry_cache *c);
/* Stores n bytes under hash (atomically), then evicts down to the bound.
 * The caller vouches that the bytes hash to it. */
int ferry_cache_store(struct ferry_cache *c, uint64_t hash, const void *data, uint64_t n,
                      struct ferry_error *err);

void ferry_cache_get_stats(struct ferry_cache *c, struct ferry_cache_stats *out);

/* The default directory, as llama.cpp's rpc-server: $LLAMA_CACHE, else
 * $XDG_CACHE_HOME, else ~/.cache/, followed by llama.cpp/rpc/. */
int ferry_cache_default_dir(char *out, size_t cap);

#endif
