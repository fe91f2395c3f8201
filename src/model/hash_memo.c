/* The client's memory of its model files' tensor hashes (model/hash_memo.h). */
#include "model/hash_memo.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fs.h"
#include "util/hash.h"

#define MEMO_MAGIC "ferry-hashes 2"

struct memo_entry {
    uint64_t offset, size, hash;
};

struct hash_memo {
    char path[PATH_MAX + 64]; /* the memo file; "" when it cannot be kept */
    uint64_t dev, ino, size, mtime_ns, ctime_ns;
    struct memo_entry *v;
    size_t n, cap;
    bool dirty;
};

static void add(struct hash_memo *m, uint64_t offset, uint64_t size, uint64_t hash) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        struct memo_entry *v = realloc(m->v, cap * sizeof *v);
        if (v == NULL) return; /* a memo is only a saving */
        m->v = v, m->cap = cap;
    }
    m->v[m->n++] = (struct memo_entry){ offset, size, hash };
}

struct hash_memo *hash_memo_open(const char *path) {
    struct hash_memo *m = calloc(1, sizeof *m);
    if (m == NULL) return NULL;
    char real[PATH_MAX];
    struct stat st;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[PATH_MAX];
    int n = xdg && *xdg ? snprintf(dir, sizeof dir, "%s/ferry/hashes", xdg)
            : home && *home ? snprintf(dir, sizeof dir, "%s/.cache/ferry/hashes", home)
                            : -1;
    if (n <= 0 || (size_t)n >= sizeof dir || realpath(path, real) == NULL || stat(real, &st) != 0) return m;
    m->dev = (uint64_t)st.st_dev, m->ino = (uint64_t)st.st_ino, m->size = (uint64_t)st.st_size;
    m->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    /* ctime too: an edit that sets the mtime back cannot set it back */
    m->ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;
    snprintf(m->path, sizeof m->path, "%s/%016" PRIx64 ".txt", dir, ferry_fnv1a64(real, strlen(real)));
    FILE *f = fopen(m->path, "r");
    if (f == NULL) return m;
    char line[256];
    uint64_t dev, ino, size, mtime, ctime;
    bool ok = fgets(line, sizeof line, f) && strcmp(line, MEMO_MAGIC "\n") == 0 && fgets(line, sizeof line, f) &&
              sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &dev, &ino, &size, &mtime,
                     &ctime) == 5 &&
              dev == m->dev && ino == m->ino && size == m->size && mtime == m->mtime_ns && ctime == m->ctime_ns;
    while (ok && fgets(line, sizeof line, f)) {
        uint64_t off, len, hash, end;
        if (sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNx64, &off, &len, &hash) == 3 &&
            !__builtin_add_overflow(off, len, &end) && end <= m->size)
            add(m, off, len, hash);
    }
    fclose(f);
    return m;
}

bool hash_memo_get(const struct hash_memo *m, uint64_t offset, uint64_t size, uint64_t *hash) {
    for (size_t i = 0; m && i < m->n; i++)
        if (m->v[i].offset == offset && m->v[i].size == size) {
            *hash = m->v[i].hash;
            return true;
        }
    return false;
}

void hash_memo_put(struct hash_memo *m, uint64_t offset, uint64_t size, uint64_t hash) {
    uint64_t known;
    if (m == NULL || hash_memo_get(m, offset, size, &known)) return;
    add(m, offset, size, hash);
    m->dirty = true;
}

void hash_memo_close(struct hash_memo *m) {
    if (m == NULL) return;
    if (m->dirty && m->path[0]) {
        char dir[sizeof m->path], tmp[sizeof m->path + 32];
        snprintf(dir, sizeof dir, "%s", m->path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        snprintf(tmp, sizeof tmp, "%s.tmp-%d", m->path, (int)getpid());
        FILE *f = ferry_mkdir_p(dir) == 0 ? fopen(tmp, "w") : NULL;
        if (f) {
            fprintf(f, MEMO_MAGIC "\n%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", m->dev, m->ino,
                    m->size, m->mtime_ns, m->ctime_ns);
            for (size_t i = 0; i < m->n; i++)
                fprintf(f, "%" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", m->v[i].offset, m->v[i].size, m->v[i].hash);
            if (fclose(f) != 0 || rename(tmp, m->path) != 0) unlink(tmp);
        }
    }
    free(m->v);
    free(m);
}
