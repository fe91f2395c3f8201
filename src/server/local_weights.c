/* The server's local weights: GGUF tensors indexed by FNV-1a-64. */
#include "server/local_weights.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ferry/gguf.h"
#include "ferry/log.h"
#include "util/fs.h"
#include "proto/rpc.h"

#define INDEX_MAGIC "ferry-local-index 2"
#define IO_CHUNK (8u << 20)

struct lw_file {
    char *path;
    int fd;
    uint64_t dev, ino, size, mtime_ns, ctime_ns; /* at open */
    uint64_t key;                                /* ferry_gguf_content_key */
    bool gone;                                   /* changed since: never read again */
};

struct lw_entry {
    uint64_t hash, offset, size;
    uint32_t file;
};

struct ferry_local_weights {
    pthread_mutex_t lock;
    struct lw_file *files;
    size_t n_files;
    struct lw_entry *v; /* sorted by hash */
    size_t n, cap;
    struct ferry_local_weights_stats stats;
};

static uint64_t ns_of(struct timespec t) { return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec; }

static int add_entry(struct ferry_local_weights *lw, uint64_t hash, uint64_t offset, uint64_t size, uint32_t file) {
    if (lw->n == lw->cap) {
        size_t cap = lw->cap ? lw->cap * 2 : 256;
        struct lw_entry *v = realloc(lw->v, cap * sizeof *v);
        if (v == NULL) return FERRY_ERR_NOMEM;
        lw->v = v, lw->cap = cap;
    }
    lw->v[lw->n++] = (struct lw_entry){ hash, offset, size, file };
    return FERRY_OK;
}

static int add_file(struct ferry_local_weights *lw, const char *path, struct ferry_error *err) {
    char real[PATH_MAX];
    if (realpath(path, real) == NULL) return ferry_fail(err, FERRY_ERR_IO, "model %s: %s", path, strerror(errno));
    for (size_t i = 0; i < lw->n_files; i++)
        if (strcmp(lw->files[i].path, real) == 0) return FERRY_OK; /* named twice */
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = fd < 0 ? errno : EINVAL;
        if (fd >= 0) close(fd);
        return ferry_fail(err, FERRY_ERR_IO, "model %s: %s", real, e == EINVAL ? "not a regular file" : strerror(e));
    }
    struct lw_file *files = realloc(lw->files, (lw->n_files + 1) * sizeof *files);
    char *copy = strdup(real);
    if (files == NULL || copy == NULL) {
        if (files) lw->files = files;
        free(copy);
        close(fd);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    }
    lw->files = files;
    lw->files[lw->n_files++] = (struct lw_file){ copy, fd, (uint64_t)st.st_dev, (uint64_t)st.st_ino,
                                                 (uint64_t)st.st_size, ns_of(st.st_mtim), ns_of(st.st_ctim), 0, false };
    return FERRY_OK;
}

static bool ends_with_gguf(const char *name) {
    size_t n = strlen(name);
    return n > 5 && strcmp(name + n - 5, ".gguf") == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A file, or a directory's *.gguf files in name order. */
static int add_path(struct ferry_local_weights *lw, const char *path, struct ferry_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) return ferry_fail(err, FERRY_ERR_IO, "model %s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return add_file(lw, path, err);
    DIR *d = opendir(path);
    if (d == NULL) return ferry_fail(err, FERRY_ERR_IO, "model directory %s: %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = FERRY_OK;
    for (struct dirent *de; rc == FERRY_OK && (de = readdir(d));) {
        if (!ends_with_gguf(de->d_name)) continue;
        char **grown = realloc(names, (n + 1) * sizeof *names);
        if (grown == NULL) {
            rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
            break;
        }
        names = grown;
        size_t len = strlen(path) + strlen(de->d_name) + 2;
        if ((names[n] = malloc(len)) == NULL) {
            rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(names[n++], len, "%s/%s", path, de->d_name);
    }
    closedir(d);
    if (n > 1) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (rc == FERRY_OK) rc = add_file(lw, names[i], err);
        free(names[i]);
    }
    free(names);
    if (rc == FERRY_OK && n == 0) ferry_log_warn("model directory %s holds no .gguf file", path);
    return rc;
}

/* ---- the saved index ------------------------------------------------------------ */

static void index_path(const char *dir, const struct lw_file *f, char *out, size_t cap) {
    snprintf(out, cap, "%s/local-%016" PRIx64 ".idx", dir, ferry_fnv1a64(f->path, strlen(f->path)));
}

/* The entries saved for f, if the index is f's as it is now (path, size,
 * mtime, inode) and every entry lies inside the file. */
static bool index_read(struct ferry_local_weights *lw, const char *dir, uint32_t fi) {
    struct lw_file *f = &lw->files[fi];
    char path[PATH_MAX + 64], line[PATH_MAX + 64];
    index_path(dir, f, path, sizeof path);
    FILE *in = fopen(path, "r");
    if (in == NULL) return false;
    const size_t first = lw->n;
    bool ok = fgets(line, sizeof line, in) && strcmp(line, INDEX_MAGIC "\n") == 0;
    uint64_t dev, ino, size, mtime;
    ok = ok && fgets(line, sizeof line, in) &&
         sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNx64, &dev, &ino, &size, &mtime,
                &f->key) == 5 &&
         dev == f->dev && ino == f->ino && size == f->size && mtime == f->mtime_ns;
    ok = ok && fgets(line, sizeof line, in) && strlen(line) == strlen(f->path) + 1 &&
         strncmp(line, f->path, strlen(f->path)) == 0;
    while (ok && fgets(line, sizeof line, in)) {
        uint64_t hash, offset, n, end;
        ok = sscanf(line, "%" SCNx64 " %" SCNu64 " %" SCNu64, &hash, &offset, &n) == 3 &&
             !__builtin_add_overflow(offset, n, &end) && end <= f->size &&
             add_entry(lw, hash, offset, n, fi) == FERRY_OK;
    }
    ok = ok && !ferror(in);
    fclose(in);
    if (!ok) lw->n = first;
    return ok;
}

static void index_write(const struct ferry_local_weights *lw, const char *dir, uint32_t fi, size_t first,
                        size_t end) {
    const struct lw_file *f = &lw->files[fi];
    char path[PATH_MAX + 64], tmp[PATH_MAX + 96];
    index_path(dir, f, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    FILE *out = fopen(tmp, "w");
    if (out == NULL) {
        ferry_log_warn("model index %s: %s (the file will be hashed again next start)", tmp, strerror(errno));
        return;
    }
    fprintf(out, INDEX_MAGIC "\n%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %016" PRIx64 "\n%s\n", f->dev,
            f->ino, f->size, f->mtime_ns, f->key, f->path);
    for (size_t i = first; i < end; i++)
        fprintf(out, "%016" PRIx64 " %" PRIu64 " %" PRIu64 "\n", lw->v[i].hash, lw->v[i].offset, lw->v[i].size);
    if (fclose(out) != 0 || rename(tmp, path) != 0) {
        ferry_log_warn("model index %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

/* ---- hashing in parallel ------------------------------------------------------------ */

struct hash_job {
    const uint8_t *data;
    size_t entry; /* index into lw->v, whose hash the job fills */
};

struct hash_work {
    struct ferry_local_weights *lw;
    struct hash_job *jobs;
    size_t n_jobs;
    atomic_size_t next;
    _Atomic uint64_t bytes_done;
};

static void *hash_worker(void *arg) {
    struct hash_work *w = arg;
    for (size_t j; (j = atomic_fetch_add(&w->next, 1)) < w->n_jobs;) {
        struct lw_entry *e = &w->lw->v[w->jobs[j].entry];
        /* in slices, so that the progress line moves */
        uint64_t h = FERRY_FNV1A64_INIT;
        for (uint64_t off = 0; off < e->size; off += IO_CHUNK) {
            const uint64_t n = e->size - off < IO_CHUNK ? e->size - off : IO_CHUNK;
            h = ferry_fnv1a64_update(h, w->jobs[j].data + off, (size_t)n);
            atomic_fetch_add(&w->bytes_done, n);
        }
        e->hash = h;
    }
    return NULL;
}

static int cmp_job_size(const void *a, const void *b, void *arg) {
    const struct lw_entry *v = arg;
    uint64_t x = v[((const struct hash_job *)a)->entry].size, y = v[((const struct hash_job *)b)->entry].size;
    return (x < y) - (x > y); /* largest first: the last job to start is a small one */
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int hash_jobs(struct ferry_local_weights *lw, struct hash_job *jobs, size_t n_jobs, uint64_t total,
                     int n_threads) {
    if (n_jobs == 0) return FERRY_OK;
    qsort_r(jobs, n_jobs, sizeof *jobs, cmp_job_size, lw->v);
    struct hash_work w = { .lw = lw, .jobs = jobs, .n_jobs = n_jobs };
    atomic_init(&w.next, 0);
    atomic_init(&w.bytes_done, 0);
    if (n_threads < 1) n_threads = 1;
    if ((size_t)n_threads > n_jobs) n_threads = (int)n_jobs;
    pthread_t *t = calloc((size_t)n_threads, sizeof *t);
    int started = 0;
    for (int i = 0; t && i < n_threads; i++)
        if (pthread_create(&t[i], NULL, hash_worker, &w) == 0) started++;
    if (started == 0) hash_worker(&w);
    const double t0 = now_s();
    double last = t0;
    while (started > 0 && atomic_load(&w.bytes_done) < total) {
        struct timespec nap = { 0, 100 * 1000 * 1000 };
        nanosleep(&nap, NULL);
        if (now_s() - last >= 2.0) {
            last = now_s();
            const uint64_t done = atomic_load(&w.bytes_done);
            ferry_log_info("model: hashing tensors, %.1f of %.1f GiB (%.0f%%), %.0f MB/s", done / 1073741824.0,
                           total / 1073741824.0, 100.0 * (double)done / (double)total, done / 1e6 / (last - t0));
        }
    }
    for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
    free(t);
    const double dt = now_s() - t0;
    ferry_log_info("model: hashed %.2f GiB in %.1f s (%.0f MB/s, %d threads)", total / 1073741824.0, dt,
                   dt > 0 ? total / 1e6 / dt : 0.0, started ? started : 1);
    return FERRY_OK;
}

/* ---- open, lookup, load -------------------------------------------------------------- */

static int cmp_entry(const void *a, const void *b) {
    const struct lw_entry *x = a, *y = b;
    return (x->hash > y->hash) - (x->hash < y->hash);
}

int ferry_local_weights_open(const char *const *paths, int n_paths, const char *index_dir, int n_threads,
                             struct ferry_local_weights **out, struct ferry_error *err) {
    *out = NULL;
    struct ferry_local_weights *lw = calloc(1, sizeof *lw);
    if (lw == NULL) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&lw->lock, NULL);
    int rc = FERRY_OK;
    for (int i = 0; i < n_paths && rc == FERRY_OK; i++) rc = add_path(lw, paths[i], err);
    if (rc == FERRY_OK && index_dir && ferry_mkdir_p(index_dir) != 0) {
        ferry_log_warn("model index directory %s: %s (indexes will not be kept)", index_dir, strerror(errno));
        index_dir = NULL;
    }
    /* files whose saved index is current need no hashing; the others are
     * parsed (a GGUF they must be) and their tensors queued */
    struct ferry_gguf **parsed = rc == FERRY_OK ? calloc(lw->n_files + 1, sizeof *parsed) : NULL;
    size_t *first = rc == FERRY_OK ? calloc(lw->n_files + 1, sizeof *first) : NULL;
    struct hash_job *jobs = NULL;
    size_t n_jobs = 0;
    uint64_t total = 0;
    if (rc == FERRY_OK && (parsed == NULL || first == NULL)) rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    for (uint32_t fi = 0; rc == FERRY_OK && fi < lw->n_files; fi++) {
        first[fi] = lw->n;
        if (index_dir && index_read(lw, index_dir, fi)) continue;
        rc = ferry_gguf_open(lw->files[fi].path, &parsed[fi], err);
        if (rc) break;
        const struct ferry_gguf *g = parsed[fi];
        lw->files[fi].key = ferry_gguf_content_key(g);
        if (ferry_gguf_file_size(g) != lw->files[fi].size) {
            rc = ferry_fail(err, FERRY_ERR_IO, "model %s changed while it was opened", lw->files[fi].path);
            break;
        }
        const int64_t nt = ferry_gguf_n_tensors(g);
        struct hash_job *grown = realloc(jobs, (n_jobs + (size_t)nt + 1) * sizeof *jobs);
        if (grown == NULL) {
            rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
            break;
        }
        jobs = grown;
        for (int64_t t = 0; t < nt && rc == FERRY_OK; t++) {
            const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(g, t);
            if (ti->size == 0) continue;
            const uint64_t offset = (uint64_t)((const uint8_t *)ti->data - (const uint8_t *)ferry_gguf_base(g));
            jobs[n_jobs++] = (struct hash_job){ ti->data, lw->n };
            total += ti->size;
            if (add_entry(lw, 0, offset, ti->size, fi) != FERRY_OK) rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
        }
        lw->stats.files_hashed++;
    }
    if (rc == FERRY_OK) {
        first[lw->n_files] = lw->n;
        lw->stats.bytes_hashed = total;
        rc = hash_jobs(lw, jobs, n_jobs, total, n_threads);
    }
    for (uint32_t fi = 0; rc == FERRY_OK && fi < lw->n_files; fi++)
        if (parsed[fi] && index_dir) index_write(lw, index_dir, fi, first[fi], first[fi + 1]);
    for (uint32_t fi = 0; parsed && fi < lw->n_files; fi++) ferry_gguf_close(parsed[fi]);
    free(parsed);
    free(first);
    free(jobs);
    if (rc) {
        ferry_local_weights_close(lw);
        return rc;
    }
    if (lw->n > 1) qsort(lw->v, lw->n, sizeof *lw->v, cmp_entry);
    lw->stats.files = lw->n_files;
    lw->stats.tensors = lw->n;
    for (size_t i = 0; i < lw->n; i++) lw->stats.bytes += lw->v[i].size;
    ferry_log_info("model: %zu file%s, %zu tensors, %.2f GiB served locally (%" PRIu64 " file%s hashed, the rest "
                   "from saved indexes)",
                   lw->n_files, lw->n_files == 1 ? "" : "s", lw->n, lw->stats.bytes / 1073741824.0,
                   lw->stats.files_hashed, lw->stats.files_hashed == 1 ? "" : "s");
    *out = lw;
    return FERRY_OK;
}

void ferry_local_weights_close(struct ferry_local_weights *lw) {
    if (lw == NULL) return;
    for (size_t i = 0; i < lw->n_files; i++) {
        if (lw->files[i].fd >= 0) close(lw->files[i].fd);
        free(lw->files[i].path);
    }
    free(lw->files);
    free(lw->v);
    pthread_mutex_destroy(&lw->lock);
    free(lw);
}

/* A live entry for hash (its file unchanged as far as we know), or NULL. */
static const struct lw_entry *find(const struct ferry_local_weights *lw, uint64_t hash) {
    size_t lo = 0, hi = lw->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lw->v[mid].hash < hash) lo = mid + 1;
        else hi = mid;
    }
    for (size_t i = lo; i < lw->n && lw->v[i].hash == hash; i++)
        if (!lw->files[lw->v[i].file].gone) return &lw->v[i];
    return NULL;
}

int64_t ferry_local_weights_lookup(struct ferry_local_weights *lw, uint64_t hash) {
    pthread_mutex_lock(&lw->lock);
    const struct lw_entry *e = find(lw, hash);
    int64_t size = e && e->size <= INT64_MAX ? (int64_t)e->size : -1;
    pthread_mutex_unlock(&lw->lock);
    return size;
}

static bool unchanged(const struct lw_file *f) {
    struct stat st;
    return fstat(f->fd, &st) == 0 && (uint64_t)st.st_dev == f->dev && (uint64_t)st.st_ino == f->ino &&
           (uint64_t)st.st_size == f->size && ns_of(st.st_mtim) == f->mtime_ns && ns_of(st.st_ctim) == f->ctime_ns;
}

/* After a read or a mapping: counts the hit, or retires the file (a file
 * that changed, or cannot be read, is never served again). */
static int settle(struct ferry_local_weights *lw, struct lw_file *f, bool ok, uint64_t served, uint64_t mapped) {
    pthread_mutex_lock(&lw->lock);
    if (ok) {
        lw->stats.hits++;
        lw->stats.bytes_served += served;
        lw->stats.bytes_mapped += mapped;
    } else if (!f->gone) {
        f->gone = true;
        ferry_log_warn("model %s changed or became unreadable since it was indexed: its tensors are no longer "
                       "served locally (restart the server to index it again)",
                       f->path);
    }
    pthread_mutex_unlock(&lw->lock);
    return ok ? FERRY_OK : FERRY_ERR_INVALID;
}

/* Puts entry (of file f) at dst, checking f before and after: a write to
 * the file in between shows as a new mtime/ctime, and what was read is not
 * used. With may_map, when dst sits at the same place within a page as the
 * entry in the file, the whole pages between are mapped from the file
 * (private: a later write copies the page) and only the partial pages at
 * the ends are read. */
static int put_entry(struct ferry_local_weights *lw, struct lw_file *f, struct lw_entry entry, uint8_t *dst,
                     bool may_map) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), at = (uintptr_t)dst;
    uintptr_t a = at, end = at; /* [a, end): mapped */
    if (may_map && (at - (uintptr_t)entry.offset) % page == 0) {
        a = (at + page - 1) & ~(page - 1);
        end = (at + entry.size) & ~(page - 1);
        if (end <= a) a = end = at;
    }
    bool ok = unchanged(f);
    if (ok && end > a)
        ok = mmap((void *)a, end - a, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, f->fd,
                  (off_t)(entry.offset + (a - at))) != MAP_FAILED;
    const uint64_t head = a - at, tail_at = end > a ? end - at : head;
    ok = ok && ferry_pread_all(f->fd, dst, head, entry.offset) &&
         ferry_pread_all(f->fd, dst + tail_at, entry.size - tail_at, entry.offset + tail_at);
    ok = ok && unchanged(f);
    return settle(lw, f, ok, entry.size, end - a);
}

int ferry_local_weights_load(struct ferry_local_weights *lw, uint64_t hash, void *dst, uint64_t n) {
    pthread_mutex_lock(&lw->lock);
    const struct lw_entry *e = find(lw, hash);
    struct lw_entry entry = e ? *e : (struct lw_entry){ 0 };
    struct lw_file *f = e ? &lw->files[e->file] : NULL;
    pthread_mutex_unlock(&lw->lock);
    if (f == NULL || entry.size != n) return FERRY_ERR_INVALID;
    return put_entry(lw, f, entry, dst, false);
}

/* The indexed tensor of the file with content key key that starts at
 * offset and is n bytes long. */
static struct lw_file *entry_at(struct ferry_local_weights *lw, uint64_t key, uint64_t offset, uint64_t n,
                                struct lw_entry *out) {
    struct lw_file *f = NULL;
    pthread_mutex_lock(&lw->lock);
    for (uint32_t fi = 0; fi < lw->n_files && !f; fi++) {
        if (lw->files[fi].key != key || lw->files[fi].gone) continue;
        for (size_t i = 0; i < lw->n && !f; i++)
            if (lw->v[i].file == fi && lw->v[i].offset == offset && lw->v[i].size == n) *out = lw->v[i], f = &lw->files[fi];
    }
    pthread_mutex_unlock(&lw->lock);
    return f;
}

int ferry_local_weights_load_at(struct ferry_local_weights *lw, uint64_t key, uint64_t offset, void *dst,
                                uint64_t n) {
    struct lw_entry entry;
    struct lw_file *f = entry_at(lw, key, offset, n, &entry);
    return f ? put_entry(lw, f, entry, dst, false) : FERRY_ERR_INVALID;
}

int ferry_local_weights_map_at(struct ferry_local_weights *lw, uint64_t key, uint64_t offset, void *dst, uint64_t n) {
    struct lw_entry entry;
    struct lw_file *f = entry_at(lw, key, offset, n, &entry);
    return f ? put_entry(lw, f, entry, dst, true) : FERRY_ERR_INVALID;
}

void ferry_local_weights_get_stats(struct ferry_local_weights *lw, struct ferry_local_weights_stats *out) {
    pthread_mutex_lock(&lw->lock);
    *out = lw->stats;
    pthread_mutex_unlock(&lw->lock);
}
