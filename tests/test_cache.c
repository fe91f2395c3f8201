/* The server's tensor cache (src/server/cache.h): a stored file is served
 * without a re-hash while it is unchanged, across a restart too (the
 * verdicts kept beside the files); any change to a file, even one that
 * restores its size and mtime, or a replaced file, is re-hashed before a
 * byte reaches tensor memory, and a corrupt file is dropped as a miss; a
 * damaged verdict file costs only re-hashes. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/rpc.h"
#include "server/cache.h"
#include "testutil.h"

#define SIZE (64 * 1024)

static char dir[256];

static uint64_t rehashes(struct ferry_cache *c) {
    struct ferry_cache_stats s;
    ferry_cache_get_stats(c, &s);
    return s.rehashes;
}

static struct ferry_cache *open_cache(void) {
    struct ferry_cache *c = NULL;
    struct ferry_error err = { 0 };
    CHECK(ferry_cache_open(dir, 1ull << 30, &c, &err) == FERRY_OK, "open cache: %s", err.msg);
    return c;
}

static void hash_path(uint64_t hash, char *out, size_t cap) {
    snprintf(out, cap, "%s/%016llx", dir, (unsigned long long)hash);
}

/* Loads hash into a fresh buffer; true when it was a verified hit with
 * want's bytes. *rehashed: whether the load re-hashed the file. */
static bool load(struct ferry_cache *c, uint64_t hash, const uint8_t *want, bool *rehashed) {
    uint8_t *got = calloc(1, SIZE);
    const uint64_t before = rehashes(c);
    bool ok = ferry_cache_lookup(c, hash) == SIZE && ferry_cache_load(c, hash, got, SIZE) == FERRY_OK &&
              memcmp(got, want, SIZE) == 0;
    *rehashed = rehashes(c) != before;
    free(got);
    return ok;
}

/* Overwrites one byte of the file in place, then sets its times back to
 * what they were: only the ctime (which no one can set) tells. */
static void tamper_keep_times(uint64_t hash) {
    char path[512];
    hash_path(hash, path, sizeof path);
    struct stat st;
    stat(path, &st);
    int fd = open(path, O_WRONLY);
    uint8_t b = 0x5a;
    CHECK(fd >= 0 && pwrite(fd, &b, 1, 100) == 1, "tamper with %s", path);
    if (fd >= 0) close(fd);
    struct timespec ts[2] = { st.st_atim, st.st_mtim };
    utimensat(AT_FDCWD, path, ts, 0);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/ferry-test-cache-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    uint8_t *a = malloc(SIZE), *b = malloc(SIZE);
    uint64_t seed = 7;
    for (int i = 0; i < SIZE; i++) a[i] = (uint8_t)test_rand_u64(&seed), b[i] = (uint8_t)test_rand_u64(&seed);
    const uint64_t ha = ferry_fnv1a64(a, SIZE), hb = ferry_fnv1a64(b, SIZE);
    struct ferry_error err = { 0 };
    bool rehashed = false;

    struct ferry_cache *c = open_cache();
    CHECK(ferry_cache_store(c, ha, a, SIZE, &err) == FERRY_OK, "store a: %s", err.msg);
    CHECK(ferry_cache_store(c, hb, b, SIZE, &err) == FERRY_OK, "store b: %s", err.msg);
    CHECK(load(c, ha, a, &rehashed) && !rehashed, "a file we wrote is served without a re-hash");
    CHECK(load(c, ha, a, &rehashed) && !rehashed, "and again after its hit touched its mtime");

    ferry_cache_close(c);
    c = open_cache();
    CHECK(load(c, ha, a, &rehashed) && !rehashed, "after a restart: served from the kept verdict, no re-hash");

    tamper_keep_times(ha);
    uint8_t *got = malloc(SIZE);
    memset(got, 0xee, SIZE);
    const uint64_t r0 = rehashes(c);
    CHECK(ferry_cache_load(c, ha, got, SIZE) == FERRY_ERR_INVALID && rehashes(c) == r0 + 1,
          "a file changed in place, times set back, is re-hashed and refused");
    bool untouched = true;
    for (int i = 0; i < SIZE; i++) untouched &= got[i] == 0xee;
    CHECK(untouched, "the refused file never reached the destination");
    CHECK(ferry_cache_lookup(c, ha) == -1, "and it is dropped from the cache");
    char path[512];
    hash_path(ha, path, sizeof path);
    CHECK(access(path, F_OK) != 0, "its file is deleted");

    /* b replaced by another file with the same bytes (a new inode): one
     * re-hash, then served as verified again */
    hash_path(hb, path, sizeof path);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "wb");
    CHECK(f && fwrite(b, 1, SIZE, f) == SIZE, "write a replacement");
    if (f) fclose(f);
    CHECK(rename(tmp, path) == 0, "replace b's file");
    CHECK(load(c, hb, b, &rehashed) && rehashed, "a replaced file is re-hashed before use");
    CHECK(load(c, hb, b, &rehashed) && !rehashed, "then served from its new verdict");

    /* a damaged verdict file: only re-hashes */
    ferry_cache_close(c);
    char vpath[512];
    snprintf(vpath, sizeof vpath, "%s/.ferry-verified", dir);
    f = fopen(vpath, "w");
    if (f) {
        fputs("ferry-cache-verdicts 1\nnot a line\n0123 1 2\n", f);
        fclose(f);
    }
    c = open_cache();
    CHECK(load(c, hb, b, &rehashed) && rehashed, "with the verdicts garbled the file is re-hashed, and served");
    ferry_cache_close(c);
    unlink(vpath);
    c = open_cache();
    CHECK(load(c, hb, b, &rehashed) && rehashed, "with no verdict file too");
    ferry_cache_close(c);

    free(a), free(b), free(got);
    test_remove_dir(dir);
    return test_summary();
}
