/* The server's local weights (src/server/local_weights.h): every tensor of
 * a local GGUF is found by the FNV-1a of its bytes and copied out exactly;
 * a saved index is reused only while its file is unchanged; a file changed
 * under a running server is never served; directories, duplicates, bad
 * files and bad indexes are handled. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/client.h"
#include "ferry/gen.h"
#include "ferry/gguf.h"
#include "ferry/model.h"
#include "proto/rpc.h"
#include "server/local_weights.h"
#include "testutil.h"

static char dir[256], models[300], index_dir[300];

static void gen(const char *name, uint64_t seed, char *path, size_t cap) {
    struct ferry_gen_params p;
    ferry_gen_params_defaults(&p);
    p.seed = seed;
    p.wtype = FERRY_TYPE_Q8_0;
    p.n_embd = 256, p.n_ff = 768, p.n_head = 4, p.n_head_kv = 2; /* weights over 1 MiB: a mapped server buffer */
    snprintf(path, cap, "%s/%s", models, name);
    struct ferry_error err = { 0 };
    CHECK(ferry_gen_model(&p, path, &err) == FERRY_OK, "gen %s: %s", name, err.msg);
}

static struct ferry_local_weights *open_lw(const char *const *paths, int n, struct ferry_local_weights_stats *st) {
    struct ferry_local_weights *lw = NULL;
    struct ferry_error err = { 0 };
    int rc = ferry_local_weights_open(paths, n, index_dir, 2, &lw, &err);
    CHECK(rc == FERRY_OK, "open: %s", err.msg);
    if (lw && st) ferry_local_weights_get_stats(lw, st);
    return lw;
}

/* Every tensor of path is found by its hash and loads byte for byte. */
static void check_all_served(struct ferry_local_weights *lw, const char *path, const char *what) {
    struct ferry_gguf *g = NULL;
    struct ferry_error err = { 0 };
    if (!CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open %s: %s", path, err.msg)) return;
    int bad = 0;
    for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++) {
        const struct ferry_gguf_tensor_info *t = ferry_gguf_tensor(g, i);
        const uint64_t h = ferry_fnv1a64(t->data, t->size);
        uint8_t *got = malloc(t->size);
        bad += !(ferry_local_weights_lookup(lw, h) == (int64_t)t->size &&
                 ferry_local_weights_load(lw, h, got, t->size) == FERRY_OK && memcmp(got, t->data, t->size) == 0);
        free(got);
    }
    CHECK(bad == 0 && ferry_gguf_n_tensors(g) > 10, "%s: all %lld tensors served exactly (%d not)", what,
          (long long)ferry_gguf_n_tensors(g), bad);
    ferry_gguf_close(g);
}

/* Through a server: a client's SET_TENSOR_HASH of every tensor of the
 * model the server holds is a hit, and the tensor then holds its bytes; a
 * tensor the server does not hold is a miss. */
static void test_server_answers_from_disk(const char *path) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    const char *paths[1] = { path };
    cfg.model_paths = paths, cfg.n_model_paths = 1, cfg.model_index_dir = index_dir;
    struct test_server ts;
    if (!test_server_start(&ts, &cfg)) return;
    struct ferry_client *c = NULL;
    struct ferry_error err = { 0 };
    struct ferry_gguf *g = NULL;
    struct ferry_remote_buffer buf; /* registered with the client until it closes */
    if (CHECK(ferry_client_connect(ts.endpoint, NULL, &c, &err) == FERRY_OK, "connect: %s", err.msg) &&
        CHECK(ferry_gguf_open(path, &g, &err) == FERRY_OK, "open: %s", err.msg)) {
        uint64_t total = 0;
        for (int64_t i = 0; i < ferry_gguf_n_tensors(g); i++) total += ferry_gguf_tensor(g, i)->size + 64;
        CHECK(ferry_client_alloc_buffer(c, 0, total + 4096, &buf, &err) == FERRY_OK, "alloc: %s", err.msg);
        int hits = 0, exact = 0, n = (int)ferry_gguf_n_tensors(g);
        uint64_t off = 0;
        for (int64_t i = 0; i < n; i++) {
            const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(g, i);
            struct ferry_tensor t;
            ferry_tensor_init(&t, ti->type, ti->n_dims, ti->ne, NULL);
            if (ferry_remote_tensor_place(&t, &buf, off, &err) != FERRY_OK) break;
            off += (ti->size + 63) / 64 * 64;
            bool hit = false;
            if (ferry_client_set_tensor_hash(c, &t, 0, ti->data, ti->size, &hit, &err) != FERRY_OK) break;
            hits += hit;
            uint8_t *back = malloc(ti->size);
            exact += ferry_client_get_tensor(c, &t, 0, back, ti->size, &err) == FERRY_OK &&
                     memcmp(back, ti->data, ti->size) == 0;
            free(back);
        }
        CHECK(hits == n && exact == n, "server: %d of %d tensors hit, %d exact, with no payload sent", hits, n, exact);
        struct ferry_tensor t;
        int64_t ne[1] = { 4096 };
        ferry_tensor_init(&t, FERRY_TYPE_I8, 1, ne, NULL);
        ferry_remote_tensor_place(&t, &buf, 0, &err);
        uint8_t other[4096] = { 1, 2, 3 };
        bool hit = true;
        CHECK(ferry_client_set_tensor_hash(c, &t, 0, other, sizeof other, &hit, &err) == FERRY_OK && !hit,
              "server: a tensor it does not hold is a miss");
        struct ferry_server_stats st;
        ferry_server_get_stats(ts.s, &st);
        CHECK(st.local_hits == (uint64_t)n, "server counts %llu local hits", (unsigned long long)st.local_hits);
    }
    ferry_gguf_close(g);
    ferry_client_close(c);
    test_server_stop(&ts);
}

/* ferry run's path between ferry peers: a server holding the model file
 * fills every weight itself (FERRY_LOAD_LOCAL), the client sends none of
 * them, and the logits equal a local run's, bit for bit. A server holding
 * another model fills nothing and the client uploads as before. */
static void model_logits(const char *path, const char *endpoint, float *logits, struct ferry_model_node_info *node) {
    struct ferry_model_params p;
    ferry_model_params_defaults(&p);
    p.path = path;
    p.n_threads = 1;
    p.n_ctx = 64;
    if (endpoint) p.rpc[0] = endpoint, p.n_rpc = 1;
    struct ferry_model *m = NULL;
    struct ferry_error err = { 0 };
    if (!CHECK(ferry_model_load(&p, &m, &err) == FERRY_OK, "load %s: %s", endpoint ? endpoint : "local", err.msg))
        return;
    const int32_t tokens[4] = { 1, 7, 42, 3 };
    CHECK(ferry_model_decode(m, tokens, 4, logits, &err) == FERRY_OK, "decode: %s", err.msg);
    if (node) ferry_model_node_info(m, ferry_model_n_nodes(m) - 1, node);
    ferry_model_free(m);
}

static void test_model_from_server_copy(const char *path, const char *other) {
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    const char *paths[1] = { path };
    cfg.model_paths = paths, cfg.n_model_paths = 1, cfg.model_index_dir = index_dir;
    struct test_server ts;
    if (!test_server_start(&ts, &cfg)) return;
    float *local = calloc(1 << 16, sizeof(float)), *remote = calloc(1 << 16, sizeof(float));
    struct ferry_model_node_info node;
    memset(&node, 0, sizeof node);
    model_logits(path, NULL, local, NULL);
    model_logits(path, ts.endpoint, remote, &node);
    CHECK(node.local_hits > 10 && node.uploaded_bytes == 0 && node.local_bytes == node.weight_bytes,
          "every weight filled by the server: %u weights, %llu of %llu bytes, %llu sent",
          node.local_hits, (unsigned long long)node.local_bytes, (unsigned long long)node.weight_bytes,
          (unsigned long long)node.uploaded_bytes);
    CHECK(memcmp(local, remote, (1 << 16) * sizeof(float)) == 0, "logits from the server's copy equal the local run's");
    struct ferry_server_stats sst;
    ferry_server_get_stats(ts.s, &sst);
    CHECK(sst.local_bytes_mapped > sst.local_bytes / 2,
          "the client laid the weights out as in the file, so the server mapped most of them (%llu of %llu bytes)",
          (unsigned long long)sst.local_bytes_mapped, (unsigned long long)sst.local_bytes);
    model_logits(other, ts.endpoint, remote, &node);
    CHECK(node.local_hits == 0 && node.uploaded_bytes == node.weight_bytes,
          "another model: nothing from the server's files, every weight uploaded (%u, %llu of %llu)",
          node.local_hits, (unsigned long long)node.uploaded_bytes, (unsigned long long)node.weight_bytes);
    free(local), free(remote);
    test_server_stop(&ts);
}

/* The README's promise for the cache: a second load through a server
 * started with a cache sends only hashes (every weight, whatever its size:
 * ferry's client probes them all), after a restart of the server too. */
static void test_second_load_sends_only_hashes(const char *path) {
    char cache[400];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    struct ferry_server_config cfg;
    ferry_server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.n_threads = 1;
    cfg.cache_dir = cache;
    float *logits = calloc(1 << 16, sizeof(float));
    struct ferry_model_node_info node;
    for (int round = 0; round < 3; round++) {
        struct test_server ts;
        if (!test_server_start(&ts, &cfg)) break;
        memset(&node, 0, sizeof node);
        model_logits(path, ts.endpoint, logits, &node);
        ferry_server_cache_flush(ts.s);
        if (round == 0)
            CHECK(node.uploaded_bytes == node.weight_bytes && node.cache_hits == 0,
                  "first load: every weight sent (%llu of %llu bytes)", (unsigned long long)node.uploaded_bytes,
                  (unsigned long long)node.weight_bytes);
        else
            CHECK(node.uploaded_bytes == 0 && node.cache_bytes == node.weight_bytes && node.cache_hits > 10,
                  "load %d (a restarted server): only hashes sent (%llu bytes sent, %u weights from the cache)",
                  round + 1, (unsigned long long)node.uploaded_bytes,
                  node.cache_hits);
        test_server_stop(&ts); /* each round a fresh server on the same cache */
    }
    free(logits);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/ferry-test-lw-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    snprintf(models, sizeof models, "%s/models", dir);
    snprintf(index_dir, sizeof index_dir, "%s/index", dir);
    char xdg[300];
    snprintf(xdg, sizeof xdg, "%s/xdg", dir);
    setenv("XDG_CACHE_HOME", xdg, 1); /* the client's hash memo, not the user's */
    mkdir(models, 0755);
    char a[512], b[512];
    gen("a.gguf", 1, a, sizeof a);
    gen("b.gguf", 2, b, sizeof b);
    char junk[512];
    snprintf(junk, sizeof junk, "%s/notes.txt", models);
    FILE *f = fopen(junk, "w");
    if (f) fputs("not a model\n", f), fclose(f);

    struct ferry_local_weights_stats st;
    const char *one[1] = { a };
    struct ferry_local_weights *lw = open_lw(one, 1, &st);
    CHECK(st.files == 1 && st.files_hashed == 1 && st.tensors > 10, "first open hashes the file (%llu tensors)",
          (unsigned long long)st.tensors);
    check_all_served(lw, a, "a.gguf");
    CHECK(ferry_local_weights_lookup(lw, 12345) == -1, "an unknown hash is a miss");
    ferry_local_weights_get_stats(lw, &st);
    CHECK(st.hits == st.tensors, "every load counted as a hit");
    ferry_local_weights_close(lw);

    lw = open_lw(one, 1, &st);
    CHECK(st.files_hashed == 0 && st.bytes_hashed == 0, "a second open reuses the saved index, no hashing");
    check_all_served(lw, a, "a.gguf from its saved index");
    ferry_local_weights_close(lw);

    /* a directory: its .gguf files (the .txt ignored), a file named twice
     * counted once */
    const char *dirs[2] = { models, a };
    lw = open_lw(dirs, 2, &st);
    CHECK(st.files == 2 && st.files_hashed == 1, "directory: 2 models, only the new one hashed (%llu, %llu)",
          (unsigned long long)st.files, (unsigned long long)st.files_hashed);
    check_all_served(lw, b, "b.gguf from the directory");

    /* a model written to while served: refused, then forgotten */
    struct ferry_gguf *g = NULL;
    struct ferry_error err = { 0 };
    ferry_gguf_open(b, &g, &err);
    const struct ferry_gguf_tensor_info *t = g ? ferry_gguf_tensor(g, 0) : NULL;
    uint64_t h = t ? ferry_fnv1a64(t->data, t->size) : 0;
    size_t tsize = t ? t->size : 0;
    ferry_gguf_close(g);
    int fd = open(b, O_WRONLY);
    char x = 'x';
    CHECK(fd >= 0 && pwrite(fd, &x, 1, 40) == 1, "write into b.gguf");
    if (fd >= 0) close(fd);
    uint8_t *buf = malloc(tsize + 1);
    CHECK(ferry_local_weights_load(lw, h, buf, tsize) == FERRY_ERR_INVALID, "a changed file is not served");
    CHECK(ferry_local_weights_lookup(lw, h) == -1, "and its tensors are forgotten");
    check_all_served(lw, a, "a.gguf, untouched, still served");
    ferry_local_weights_close(lw);
    free(buf);

    /* the changed file's index no longer matches: it is hashed again */
    const char *bb[1] = { b };
    lw = open_lw(bb, 1, &st);
    CHECK(st.files_hashed == 1, "a changed file is hashed again at the next open");
    ferry_local_weights_close(lw);

    /* a damaged index: an entry past the end of the file is not trusted */
    lw = NULL;
    {
        struct ferry_local_weights *tmp = open_lw(one, 1, &st); /* make sure a's index exists */
        ferry_local_weights_close(tmp);
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "for f in %s/local-*.idx; do echo 'ffffffffffffffff 999999999999 5' >> \"$f\"; done",
                 index_dir);
        CHECK(system(cmd) == 0, "append a bad entry to the indexes");
        lw = open_lw(one, 1, &st);
        CHECK(st.files_hashed == 1 && ferry_local_weights_lookup(lw, 0xffffffffffffffffull) == -1,
              "an index with an entry outside its file is discarded and the file re-hashed");
        check_all_served(lw, a, "a.gguf after a bad index");
        ferry_local_weights_close(lw);
    }

    test_server_answers_from_disk(a);
    char c[512];
    gen("c.gguf", 3, c, sizeof c);
    test_model_from_server_copy(a, c);
    test_second_load_sends_only_hashes(c);

    /* bad paths: a clear error, nothing opened */
    const char *missing[1] = { "/nonexistent/model.gguf" };
    const char *notgguf[1] = { junk };
    struct ferry_local_weights *bad = NULL;
    CHECK(ferry_local_weights_open(missing, 1, index_dir, 1, &bad, &err) != FERRY_OK && bad == NULL &&
              strstr(err.msg, "/nonexistent/model.gguf"),
          "a missing model is an error naming it (%s)", err.msg);
    CHECK(ferry_local_weights_open(notgguf, 1, index_dir, 1, &bad, &err) != FERRY_OK && bad == NULL,
          "a file that is not a GGUF is an error (%s)", err.msg);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "clean up");
    return test_summary();
}
