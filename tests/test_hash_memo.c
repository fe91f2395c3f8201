/* The client's memory of tensor hashes (src/model/hash_memo.h): kept across
 * opens while the model file is unchanged, forgotten when it changes, and a
 * damaged memo file costs only its entries. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/hash_memo.h"
#include "testutil.h"

int main(void) {
    char dir[] = "/tmp/ferry-test-memo-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char cache[300], model[300];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    snprintf(model, sizeof model, "%s/model.gguf", dir);
    setenv("XDG_CACHE_HOME", cache, 1);
    FILE *f = fopen(model, "w");
    for (int i = 0; f && i < 4096; i++) fputc(i & 0xff, f);
    if (f) fclose(f);

    struct hash_memo *m = hash_memo_open(model);
    uint64_t h = 0;
    CHECK(m && !hash_memo_get(m, 0, 100, &h), "a new model has no memo");
    hash_memo_put(m, 0, 100, 0x1111);
    hash_memo_put(m, 100, 200, 0x2222);
    hash_memo_close(m);

    m = hash_memo_open(model);
    CHECK(hash_memo_get(m, 0, 100, &h) && h == 0x1111 && hash_memo_get(m, 100, 200, &h) && h == 0x2222,
          "the hashes come back on the next open");
    CHECK(!hash_memo_get(m, 0, 101, &h), "only for the same extent");
    hash_memo_close(m);

    /* the model changes, its mtime set back as before: the ctime tells */
    struct stat st0;
    stat(model, &st0);
    f = fopen(model, "r+");
    if (f) fputc('x', f), fclose(f);
    struct timespec ts[2] = { st0.st_atim, st0.st_mtim };
    CHECK(utimensat(0, model, ts, 0) == 0, "edit the model, mtime restored");
    m = hash_memo_open(model);
    CHECK(!hash_memo_get(m, 0, 100, &h), "a changed model's memo is stale");
    hash_memo_put(m, 0, 100, 0x3333);
    hash_memo_close(m);

    /* a damaged memo: bad lines and extents past the file are skipped */
    char cmd[800];
    snprintf(cmd, sizeof cmd, "for f in %s/ferry/hashes/*.txt; do printf 'junk\\n4000 999 abc\\n' >> \"$f\"; done", cache);
    CHECK(system(cmd) == 0, "damage the memo");
    m = hash_memo_open(model);
    CHECK(hash_memo_get(m, 0, 100, &h) && h == 0x3333 && !hash_memo_get(m, 4000, 999, &h),
          "a damaged memo keeps its good entries and drops the rest");
    hash_memo_close(m);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "clean up");
    return test_summary();
}
