/* The tensor cache: content-addressed files, verified on load, LRU-bounded. */
#include "server/cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/log.h"
#include "proto/rpc.h"
#include "server/buffers.h"

#define IO_CHUNK (8u << 20)

struct cache_entry {
    uint64_t hash;
    uint64_t size;
    uint64_t last_use; /* a logical clock: larger = more recent */
};

struct ferry_cache {
    char *dir;
    uint64_t max_bytes;
    pthread_mutex_t lock;
    struct cache_entry *v;
    size_t n, cap;
    uint64_t clock, total;
    uint64_t hits, misses;
};

static void file_path(const struct ferry_cache *c, uint64_t hash, char *out, size_t cap) {
    snprintf(out, cap, "%s/%016" PRIx64, c->dir, hash);
}

static struct cache_entry *find(struct ferry_cache *c, uint64_t hash) {
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].hash == hash) return &c->v[i];
    return NULL;
}

static int add(struct ferry_cache *c, uint64_t hash, uint64_t size, uint64_t last_use) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct cache_entry *v = realloc(c->v, cap * sizeof *v);
        if (v == NULL) return FERRY_ERR_NOMEM;
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = (struct cache_entry){ hash, size, last_use };
    c->total += size;
    return FERRY_OK;
}

static void drop(struct ferry_cache *c, struct cache_entry *e, bool unlink_file) {
    if (unlink_file) {
        char path[4096];
        file_path(c, e->hash, path, sizeof path);
        unlink(path);
    }
    c->total -= e->size;
    *e = c->v[--c->n];
}

/* Least recently used first, until the total fits; `keep` is never evicted. */
static void evict(struct ferry_cache *c, uint64_t keep) {
    while (c->total > c->max_bytes && c->n > 0) {
        struct cache_entry *lru = NULL;
        for (size_t i = 0; i < c->n; i++)
            if (c->v[i].hash != keep && (lru == NULL || c->v[i].last_use < lru->last_use)) lru = &c->v[i];
        if (lru == NULL) break;
        ferry_log_info("cache: evicting %016" PRIx64 " (%" PRIu64 " bytes)", lru->hash, lru->size);
        drop(c, lru, true);
    }
}

static int mkdir_p(const char *dir) {
    char tmp[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof tmp) return -1;
    memcpy(tmp, dir, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

static bool parse_hash_name(const char *name, uint64_t *hash) {
    if (strlen(name) != 16) return false;
    uint64_t h = 0;
    for (int i = 0; i < 16; i++) {
        char ch = name[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return false;
        h = h << 4 | (uint64_t)d;
    }
    *hash = h;
    return true;
}

static int cmp_mtime(const void *a, const void *b) {
    const struct cache_entry *x = a, *y = b;
    return x->last_use < y->last_use ? -1 : x->last_use > y->last_use;
}

int ferry_cache_open(const char *dir, uint64_t max_bytes, struct ferry_cache **out,
                     struct ferry_error *err) {
    *out = NULL;
    if (mkdir_p(dir) != 0)
        return ferry_fail(err, FERRY_ERR_IO, "cache dir %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (d == NULL) return ferry_fail(err, FERRY_ERR_IO, "cache dir %s: %s", dir, strerror(errno));
    struct ferry_cache *c = calloc(1, sizeof *c);
    if (c == NULL || (c->dir = strdup(dir)) == NULL) {
        closedir(d);
        free(c);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    }
    c->max_bytes = max_bytes;
    pthread_mutex_init(&c->lock, NULL);
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d)) != NULL) {
        uint64_t hash;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (!strncmp(de->d_name, ".tmp-", 5)) { /* left by a crash mid-write */
            unlink(path);
            continue;
        }
        if (!parse_hash_name(de->d_name, &hash)) continue;
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        uint64_t mtime = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
        if (add(c, hash, (uint64_t)st.st_size, mtime) != FERRY_OK) break;
    }
    closedir(d);
    /* rank by mtime, then give the logical clock the same order */
    if (c->n > 1) qsort(c->v, c->n, sizeof *c->v, cmp_mtime);
    for (size_t i = 0; i < c->n; i++) c->v[i].last_use = ++c->clock;
    evict(c, 0);
    *out = c;
    return FERRY_OK;
}

void ferry_cache_close(struct ferry_cache *c) {
    if (c == NULL) return;
    pthread_mutex_destroy(&c->lock);
    free(c->v);
    free(c->dir);
    free(c);
}

const char *ferry_cache_dir(const struct ferry_cache *c) { return c->dir; }

int64_t ferry_cache_lookup(struct ferry_cache *c, uint64_t hash) {
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find(c, hash);
    int64_t size = e && e->size <= INT64_MAX ? (int64_t)e->size : -1;
    pthread_mutex_unlock(&c->lock);
    return size;
}

void ferry_cache_note_miss(struct ferry_cache *c) {
    pthread_mutex_lock(&c->lock);
    c->misses++;
    pthread_mutex_unlock(&c->lock);
}

static void forget(struct ferry_cache *c, uint64_t hash, bool unlink_file) {
    struct cache_entry *e = find(c, hash);
    if (e) drop(c, e, unlink_file);
}

int ferry_cache_load(struct ferry_cache *c, uint64_t hash, void *dst, uint64_t n) {
    char path[4096];
    file_path(c, hash, path, sizeof path);
    bool ok = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        /* verify the mapped file before a byte of it reaches tensor memory,
         * so a corrupt file never overwrites what the client had there */
        struct stat st;
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_size == n && n > 0 && n <= SIZE_MAX) {
            void *map = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE, fd, 0);
            if (map != MAP_FAILED) {
                ok = ferry_fnv1a64(map, (size_t)n) == hash;
                if (ok) memcpy(dst, map, (size_t)n);
                munmap(map, (size_t)n);
            }
        }
        close(fd);
    }
    pthread_mutex_lock(&c->lock);
    if (ok) {
        struct cache_entry *e = find(c, hash);
        if (e) e->last_use = ++c->clock;
        c->hits++;
    } else {
        ferry_log_warn("cache: %s %s; dropped", path, fd < 0 ? "unreadable" : "does not match its hash");
        forget(c, hash, true);
        c->misses++;
    }
    pthread_mutex_unlock(&c->lock);
    if (ok) utimensat(AT_FDCWD, path, NULL, 0); /* mtime = now: LRU order survives a restart */
    return ok ? FERRY_OK : FERRY_ERR_INVALID;
}

static int write_all(int fd, const uint8_t *p, uint64_t n) {
    while (n > 0) {
        size_t want = n > IO_CHUNK ? IO_CHUNK : (size_t)n;
        ssize_t w = write(fd, p, want);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (uint64_t)w;
    }
    return 0;
}

int ferry_cache_store(struct ferry_cache *c, uint64_t hash, const void *data, uint64_t n,
                      struct ferry_error *err) {
    if (n > c->max_bytes) return FERRY_OK; /* would only evict everything and itself */
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find(c, hash);
    if (e) e->last_use = ++c->clock;
    pthread_mutex_unlock(&c->lock);
    if (e) return FERRY_OK; /* already there (load verifies it before use) */

    char path[4096], tmp[4096];
    file_path(c, hash, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%016" PRIx64 "-%016" PRIx64, c->dir, hash, buffers_random_u64());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ferry_fail(err, FERRY_ERR_IO, "cache: %s: %s", tmp, strerror(errno));
    if (write_all(fd, data, n) != 0 || fsync(fd) != 0) {
        int e2 = errno;
        close(fd);
        unlink(tmp);
        return ferry_fail(err, FERRY_ERR_IO, "cache: writing %s: %s", tmp, strerror(e2));
    }
    close(fd);
    pthread_mutex_lock(&c->lock);
    int rc = FERRY_OK;
    if (rename(tmp, path) != 0) {
        rc = ferry_fail(err, FERRY_ERR_IO, "cache: rename to %s: %s", path, strerror(errno));
        unlink(tmp);
    } else {
        forget(c, hash, false); /* another connection may have stored it meanwhile */
        if (add(c, hash, n, ++c->clock) != FERRY_OK) {
            unlink(path);
            rc = ferry_fail(err, FERRY_ERR_NOMEM, "cache: out of memory");
        } else {
            evict(c, hash);
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == FERRY_OK) ferry_log_info("cache: saved %" PRIu64 " bytes to %s", n, path);
    return rc;
}

void ferry_cache_get_stats(struct ferry_cache *c, struct ferry_cache_stats *out) {
    pthread_mutex_lock(&c->lock);
    out->hits = c->hits;
    out->misses = c->misses;
    out->files = c->n;
    out->bytes = c->total;
    pthread_mutex_unlock(&c->lock);
}

int ferry_cache_default_dir(char *out, size_t cap) {
    const char *base = getenv("LLAMA_CACHE");
    int n;
    if (base && *base) {
        n = snprintf(out, cap, "%s/rpc", base);
    } else if ((base = getenv("XDG_CACHE_HOME")) && *base) {
        n = snprintf(out, cap, "%s/llama.cpp/rpc", base);
    } else {
        const char *home = getenv("HOME");
        if (home == NULL || !*home) return -1;
        n = snprintf(out, cap, "%s/.cache/llama.cpp/rpc", home);
    }
    return n > 0 && (size_t)n < cap ? 0 : -1;
}
