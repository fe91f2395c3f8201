/* The tensor cache: content-addressed files, verified once, LRU-bounded. */
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
#include <time.h>
#include <unistd.h>

#include "ferry/log.h"
#include "util/fs.h"
#include "proto/rpc.h"
#include "server/buffers.h"

#define IO_CHUNK (8u << 20)

/* What a file looked like when its bytes were last known to match its
 * name: written by us from bytes we hashed, or re-hashed on a load. Any
 * write to the file changes its mtime or ctime (the kernel sets ctime; no
 * one can set it back), a replaced file has another inode. */
struct file_id {
    uint64_t dev, ino, size, mtime_ns, ctime_ns;
};

struct cache_entry {
    uint64_t hash;
    uint64_t size;
    uint64_t last_use; /* a logical clock: larger = more recent */
    bool verified;     /* id below holds */
    bool durable;      /* and the file was on disk (synced) after it last changed */
    struct file_id id;
};

/* A store waiting for the writer thread: its own copy of the bytes. */
struct pending_store {
    uint64_t hash, size;
    uint8_t *data;
    struct pending_store *next;
};

/* Bytes a writer queue may hold: beyond it a store is skipped (the client
 * sends that tensor again next time, nothing else is lost). */
#define MAX_PENDING_BYTES (1ull << 30)

struct ferry_cache {
    char *dir;
    /* the writer: stores off the connection threads */
    pthread_t writer;
    bool writer_started, writer_stop;
    pthread_cond_t work, idle;
    struct pending_store *queue, **queue_tail;
    uint64_t pending_bytes;
    bool writing;
    uint64_t skipped, bad_hashes;
    bool verdicts_dirty; /* the verdict file lags the index */
    bool needs_sync;     /* a verdict is not yet durable */
    uint64_t max_bytes;
    pthread_mutex_t lock;
    struct cache_entry *v;
    size_t n, cap;
    uint64_t clock, total;
    uint64_t hits, misses, rehashes;
};

static void file_path(const struct ferry_cache *c, uint64_t hash, char *out, size_t cap) {
    snprintf(out, cap, "%s/%016" PRIx64, c->dir, hash);
}

#define VERDICT_FILE ".ferry-verified"
#define VERDICT_MAGIC "ferry-cache-verdicts 1"

static struct file_id file_id_of(const struct stat *st) {
    return (struct file_id){ (uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                             (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec,
                             (uint64_t)st->st_ctim.tv_sec * 1000000000ull + (uint64_t)st->st_ctim.tv_nsec };
}

static bool same_file(const struct file_id *a, const struct file_id *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
           a->ctime_ns == b->ctime_ns;
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
    c->v[c->n++] = (struct cache_entry){ .hash = hash, .size = size, .last_use = last_use };
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
        c->verdicts_dirty = c->needs_sync = true;
    }
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

/* The verdicts survive a restart in a small text file beside the tensor
 * files (ggml's rpc-server, sharing the directory, looks only at the files
 * named by hashes): one line per verified file. Lost or stale lines only
 * cost a re-hash. */
static void verdicts_read(struct ferry_cache *c) {
    char path[4096], line[256];
    snprintf(path, sizeof path, "%s/" VERDICT_FILE, c->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    if (fgets(line, sizeof line, f) && strncmp(line, VERDICT_MAGIC, strlen(VERDICT_MAGIC)) == 0) {
        while (fgets(line, sizeof line, f)) {
            uint64_t hash;
            struct file_id id;
            if (sscanf(line, "%" SCNx64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &hash, &id.dev,
                       &id.ino, &id.size, &id.mtime_ns, &id.ctime_ns) != 6)
                continue;
            struct cache_entry *e = find(c, hash);
            if (e && e->size == id.size) e->verified = e->durable = true, e->id = id;
        }
    }
    fclose(f);
}

/* Rewrites the verdict file (temp file and rename) when it lags, listing
 * only files known to be on disk as verified: after a crash, a file whose
 * bytes never reached the disk must not pass for good. Lock held. */
static void verdicts_write(struct ferry_cache *c) {
    if (!c->verdicts_dirty) return;
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/" VERDICT_FILE, c->dir);
    snprintf(tmp, sizeof tmp, "%s/.tmp-verdicts-%016" PRIx64, c->dir, buffers_random_u64());
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return;
    fprintf(f, VERDICT_MAGIC "\n");
    for (size_t i = 0; i < c->n; i++) {
        const struct cache_entry *e = &c->v[i];
        if (e->verified && e->durable)
            fprintf(f, "%016" PRIx64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", e->hash,
                    e->id.dev, e->id.ino, e->id.size, e->id.mtime_ns, e->id.ctime_ns);
    }
    if (fclose(f) == 0 && rename(tmp, path) == 0) c->verdicts_dirty = false;
    else unlink(tmp);
}

/* One sync of the cache's file system, then every verified file counts as
 * durable and the verdict file is rewritten. The writer does this when it
 * runs out of stores (at most once a second) and at close, so files are
 * written without an fsync each. Lock held on entry and exit. */
static void sync_pass(struct ferry_cache *c) {
    c->needs_sync = false;
    pthread_mutex_unlock(&c->lock);
    int fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool synced = fd >= 0 && syncfs(fd) == 0;
    if (fd >= 0) close(fd);
    pthread_mutex_lock(&c->lock);
    if (!synced) return;
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].verified && !c->v[i].durable) c->v[i].durable = true, c->verdicts_dirty = true;
    verdicts_write(c);
}

static void *writer_main(void *arg);

int ferry_cache_open(const char *dir, uint64_t max_bytes, struct ferry_cache **out,
                     struct ferry_error *err) {
    *out = NULL;
    if (ferry_mkdir_p(dir) != 0)
        return ferry_fail(err, FERRY_ERR_IO, "cache dir %s: %s", dir, strerror(errno));
    /* files are written only when a client sends a tensor: prove now that
     * they can be, rather than fail on every connection */
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.tmp-write-test-%016" PRIx64, dir, buffers_random_u64());
    int pfd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (pfd < 0 || write(pfd, "x", 1) != 1) {
        int e = errno;
        if (pfd >= 0) close(pfd), unlink(probe);
        return ferry_fail(err, FERRY_ERR_IO, "cache dir %s is not writable: %s", dir, strerror(e));
    }
    close(pfd);
    unlink(probe);
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
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->idle, NULL);
    c->queue_tail = &c->queue;
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
    verdicts_read(c);
    evict(c, 0);
    c->writer_started = pthread_create(&c->writer, NULL, writer_main, c) == 0;
    if (!c->writer_started) ferry_log_warn("cache: no writer thread; stores will be skipped");
    *out = c;
    return FERRY_OK;
}

/* The writer: takes queued stores in order, checks that the bytes hash to
 * the name the client gave them (a client could lie), and writes them. */
static void *writer_main(void *arg) {
    struct ferry_cache *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->queue == NULL && !c->writer_stop && !c->needs_sync) pthread_cond_wait(&c->work, &c->lock);
        if (c->queue == NULL) {
            if (c->needs_sync) {
                sync_pass(c);
                /* at most one pass a second: hits ask for one each */
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_sec += 1;
                while (c->queue == NULL && !c->writer_stop)
                    if (pthread_cond_timedwait(&c->work, &c->lock, &until) != 0) break;
                continue;
            }
            break; /* stop, and nothing left */
        }
        struct pending_store *p = c->queue;
        c->queue = p->next;
        if (c->queue == NULL) c->queue_tail = &c->queue;
        c->writing = true;
        pthread_mutex_unlock(&c->lock);
        struct ferry_error err;
        if (ferry_fnv1a64(p->data, (size_t)p->size) != p->hash) {
            ferry_log_warn("cache: bytes sent after a probe for %016" PRIx64 " do not hash to it; not stored", p->hash);
            pthread_mutex_lock(&c->lock);
            c->bad_hashes++;
            pthread_mutex_unlock(&c->lock);
        } else if (ferry_cache_store(c, p->hash, p->data, p->size, &err) != FERRY_OK) {
            ferry_log_warn("%s", err.msg);
        }
        pthread_mutex_lock(&c->lock);
        c->pending_bytes -= p->size;
        c->writing = false;
        free(p->data);
        free(p);
        pthread_cond_broadcast(&c->idle); /* room in the queue; maybe empty */
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

bool ferry_cache_store_async(struct ferry_cache *c, uint64_t hash, const void *data, uint64_t n) {
    if (n == 0 || n > c->max_bytes || n > MAX_PENDING_BYTES) return false;
    pthread_mutex_lock(&c->lock);
    bool known = find(c, hash) != NULL;
    /* a full queue holds the client back to the disk's pace rather than
     * leave the model half cached */
    while (!known && c->writer_started && !c->writer_stop && c->pending_bytes + n > MAX_PENDING_BYTES)
        pthread_cond_wait(&c->idle, &c->lock);
    bool room = c->writer_started && !c->writer_stop;
    if (!room && !known) c->skipped++;
    pthread_mutex_unlock(&c->lock);
    if (known || !room) return known;
    struct pending_store *p = malloc(sizeof *p);
    uint8_t *copy = malloc((size_t)n);
    if (p == NULL || copy == NULL) {
        free(p), free(copy);
        return false;
    }
    memcpy(copy, data, (size_t)n); /* the tensor may change before the writer gets to it */
    *p = (struct pending_store){ hash, n, copy, NULL };
    pthread_mutex_lock(&c->lock);
    *c->queue_tail = p;
    c->queue_tail = &p->next;
    c->pending_bytes += n;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->lock);
    return true;
}

void ferry_cache_flush(struct ferry_cache *c) {
    pthread_mutex_lock(&c->lock);
    while (c->queue != NULL || c->writing) pthread_cond_wait(&c->idle, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

void ferry_cache_close(struct ferry_cache *c) {
    if (c == NULL) return;
    if (c->writer_started) {
        /* queued stores are finished: they are tensors a client sent us */
        pthread_mutex_lock(&c->lock);
        c->writer_stop = true;
        pthread_cond_signal(&c->work);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->writer, NULL);
    }
    pthread_cond_destroy(&c->work);
    pthread_cond_destroy(&c->idle);
    pthread_mutex_lock(&c->lock);
    sync_pass(c);
    pthread_mutex_unlock(&c->lock);
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

/* A file not verified since it last changed is mapped and re-hashed before
 * a byte of it reaches tensor memory, so a corrupt file never overwrites
 * what the client had there; one verified and unchanged since is read
 * straight into place. Either way the hit touches the file's mtime (LRU
 * order survives a restart) and the new identity is recorded. */
int ferry_cache_load(struct ferry_cache *c, uint64_t hash, void *dst, uint64_t n) {
    char path[4096];
    file_path(c, hash, path, sizeof path);
    bool ok = false, known = false; /* known: verified, and unchanged since */
    struct file_id id = { 0 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size == n && n > 0 && n <= SIZE_MAX) {
        id = file_id_of(&st);
        pthread_mutex_lock(&c->lock);
        struct cache_entry *e = find(c, hash);
        known = e && e->verified && same_file(&e->id, &id);
        pthread_mutex_unlock(&c->lock);
        if (known) {
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
            ok = ferry_pread_all(fd, dst, n, 0); /* one copy, page cache to tensor memory */
        } else {
            pthread_mutex_lock(&c->lock);
            c->rehashes++;
            pthread_mutex_unlock(&c->lock);
            void *map = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
            if (map != MAP_FAILED) {
                ok = ferry_fnv1a64(map, (size_t)n) == hash;
                if (ok) memcpy(dst, map, (size_t)n);
                munmap(map, (size_t)n);
            }
        }
        if (ok && futimens(fd, NULL) == 0 && fstat(fd, &st) == 0) id = file_id_of(&st);
    }
    if (fd >= 0) close(fd);
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find(c, hash);
    if (ok) {
        if (e) {
            e->last_use = ++c->clock;
            e->verified = true;
            e->durable = false; /* its times changed: the old record no longer fits it */
            e->id = id;
            c->needs_sync = true;
            pthread_cond_signal(&c->work);
        }
        c->hits++;
    } else {
        ferry_log_warn("cache: %s %s; dropped", path, fd < 0 ? "unreadable" : "does not match its hash");
        forget(c, hash, true);
        c->misses++;
        c->verdicts_dirty = true;
        verdicts_write(c);
    }
    pthread_mutex_unlock(&c->lock);
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
    /* no fsync: the writer syncs the file system once per batch before any
     * verdict on these files is kept across a restart (sync_pass) */
    if (write_all(fd, data, n) != 0) {
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
            /* the caller hashed these bytes as they arrived: the file is
             * verified as written (its identity read after the rename,
             * which may touch ctime) */
            struct cache_entry *e = &c->v[c->n - 1];
            struct stat st;
            if (stat(path, &st) == 0) e->verified = true, e->id = file_id_of(&st);
            c->needs_sync = true;
            pthread_cond_signal(&c->work);
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
    out->rehashes = c->rehashes;
    out->pending_bytes = c->pending_bytes;
    out->skipped = c->skipped;
    out->bad_hashes = c->bad_hashes;
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
