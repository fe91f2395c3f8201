/* A llama-family model spread over the local engine and remote servers.
 *
 * The layers are cut into stages, one per node in the order a token flows:
 * the local engine first (token embedding and the layers -ngl leaves it),
 * then each server with its share of the offloaded layers, then the local
 * engine again for the output head when it was not offloaded. Each stage
 * owns its weights (local: the file's mapping itself; remote: one buffer
 * uploaded at load), its KV cache, a compute buffer sized by a measuring
 * build of the largest ubatch, and a tensor pool whose addresses never
 * change, so an unchanged graph goes out as GRAPH_RECOMPUTE. */
#include "ferry/model.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/engine.h"
#include "ferry/gguf.h"
#include "ferry/log.h"
#include "model/hash_memo.h"
#include "model/llama.h"
#include "util/hash.h"

#define KV_PAD 256 /* the attended KV length grows in steps of this: fewer distinct graphs */

struct stage {
    struct llama_stage_weights sw;
    struct ferry_client *client; /* NULL: the local engine */
    char name[64];
    /* weights: structs for every tensor this stage reads */
    struct ferry_tensor *weights;
    int n_weights;
    const void **weight_src; /* host bytes of each (inside the mapping) */
    struct ferry_remote_buffer wbuf, kvbuf, cbuf;
    void *kv_host, *compute_host;
    uint64_t kv_bytes; /* the KV cache buffer, both sides */
    size_t compute_size;
    struct gbuild g;
    /* local: the engine's plan of the last graph, reused while the batch
     * shape holds (the builder then makes the same nodes in the same place) */
    struct ferry_engine_plan *plan;
    struct llama_batch_shape plan_shape;
    uint8_t *blob_host; /* remote: the inputs, packed before upload */
    size_t blob_cap;
    /* load figures */
    uint64_t weight_bytes, uploaded_bytes, local_bytes, cache_bytes;
    uint32_t cache_hits, local_hits;
    double load_seconds; /* this node's weights */
    struct ferry_client_stats stats0; /* at the end of load */
};

struct ferry_model {
    struct ferry_gguf *gguf;
    uint64_t content_key; /* ferry_gguf_content_key, once a server holds model files */
    struct hash_memo *hash_memo; /* during load: weight hashes known from earlier loads */
    bool have_content_key;
    struct ferry_vocab *vocab;
    struct llama_hparams hp;
    struct ferry_model_params params;
    int n_ctx, n_batch;
    struct ferry_engine *engine;
    struct ferry_client *clients[FERRY_MODEL_MAX_RPC];
    int n_clients;
    struct stage *stages;
    int n_stages;
    int n_past;
    bool broken;
    float *hidden;  /* n_embd * n_batch: activations between stages */
    float *logits;  /* n_vocab: the last stage's output */
    double load_seconds;
    enum ferry_type wtype;
    uint64_t n_params;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ferry_model_params_defaults(struct ferry_model_params *p) {
    memset(p, 0, sizeof *p);
    p->n_gpu_layers = -1;
}

/* ---- layer assignment, as llama.cpp's load_tensors does it ----------------------------- */

/* Device (index into the servers) of each offloaded layer position, by the
 * cumulative proportions of split[]: position x in [0, 1) goes to the first
 * device whose cumulative share exceeds it. */
static int device_for(const float *cum, int n, float x) {
    for (int i = 0; i < n; i++)
        if (x < cum[i]) return i;
    return n - 1;
}

struct plan_entry {
    int client; /* -1 local */
    int first, count;
    bool embed, output;
};

static int plan_stages(struct ferry_model *m, const float *split, struct plan_entry *plan, int *n_plan,
                       struct ferry_error *err) {
    int n_layer = m->hp.n_layer, n_dev = m->n_clients;
    int ngl = m->params.n_gpu_layers;
    if (ngl < 0) ngl = n_dev > 0 ? n_layer + 1 : 0;
    if (n_dev == 0) ngl = 0;
    int gpu_start = ngl >= n_layer ? 0 : n_layer - ngl;
    int act = ngl < n_layer + 1 ? ngl : n_layer + 1; /* +1: the output head */
    float cum[FERRY_MODEL_MAX_RPC], sum = 0;
    for (int i = 0; i < n_dev; i++) sum += split[i];
    if (n_dev > 0 && !(sum > 0)) return ferry_fail(err, FERRY_ERR_INVALID, "tensor split sums to 0");
    float acc = 0;
    for (int i = 0; i < n_dev; i++) cum[i] = (acc += split[i] / sum);

    /* owner of every layer, and of the output head (index n_layer) */
    int owner[4097];
    for (int il = 0; il <= n_layer; il++) {
        if (il < gpu_start || act == 0 || (il == n_layer && ngl <= n_layer))
            owner[il] = -1;
        else
            owner[il] = device_for(cum, n_dev, (float)(il - gpu_start) / (float)act);
    }
    int n = 0;
    plan[n++] = (struct plan_entry){ -1, 0, 0, true, false };
    for (int il = 0; il < n_layer; il++) {
        struct plan_entry *last = &plan[n - 1];
        if (last->client == owner[il] && last->first + last->count == il) {
            last->count++;
        } else {
            if (n == FERRY_MODEL_MAX_RPC + 2)
                return ferry_fail(err, FERRY_ERR_INVALID, "layer split needs too many stages");
            plan[n++] = (struct plan_entry){ owner[il], il, 1, false, false };
        }
    }
    if (plan[n - 1].client == owner[n_layer]) {
        plan[n - 1].output = true;
    } else {
        plan[n++] = (struct plan_entry){ owner[n_layer], n_layer, 0, false, true };
    }
    /* a server's share may be empty, but each server holds one range at most */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (plan[i].client >= 0 && plan[i].client == plan[j].client)
                return ferry_fail(err, FERRY_ERR_INVALID, "split puts two layer ranges on one server");
    *n_plan = n;
    return FERRY_OK;
}

/* ---- weights --------------------------------------------------------------------------- */

static int add_weight(struct ferry_model *m, struct stage *st, const char *name, struct ferry_tensor **slot,
                      struct ferry_error *err) {
    const struct ferry_gguf_tensor_info *ti = ferry_gguf_find_tensor(m->gguf, name);
    if (!ti) return ferry_fail(err, FERRY_ERR_INVALID, "model has no tensor '%s'", name);
    struct ferry_tensor *t = &st->weights[st->n_weights];
    ferry_tensor_init(t, ti->type, ti->n_dims, ti->ne, (void *)ti->data);
    snprintf(t->name, sizeof t->name, "%s", name);
    st->weight_src[st->n_weights++] = ti->data;
    *slot = t;
    return FERRY_OK;
}

static int collect_weights(struct ferry_model *m, struct stage *st, struct ferry_error *err) {
    struct llama_stage_weights *sw = &st->sw;
    int cap = 4 + sw->layer_count * LT_COUNT;
    st->weights = calloc((size_t)cap, sizeof *st->weights);
    st->weight_src = calloc((size_t)cap, sizeof *st->weight_src);
    sw->layers = calloc((size_t)(sw->layer_count ? sw->layer_count : 1), sizeof *sw->layers);
    if (!st->weights || !st->weight_src || !sw->layers)
        return ferry_fail(err, FERRY_ERR_NOMEM, "weights of stage %s: out of memory", st->name);
    int rc = FERRY_OK;
    if (sw->embed || (sw->output && m->hp.tied_output))
        rc = add_weight(m, st, "token_embd.weight", &sw->tok_embd, err);
    if (!rc && sw->output) {
        rc = add_weight(m, st, "output_norm.weight", &sw->out_norm, err);
        if (!rc) {
            if (m->hp.tied_output)
                sw->w_output = sw->tok_embd;
            else
                rc = add_weight(m, st, "output.weight", &sw->w_output, err);
        }
    }
    if (!rc && sw->layer_count > 0 && m->hp.has_rope_freqs)
        rc = add_weight(m, st, "rope_freqs.weight", &sw->rope_freqs, err);
    for (int i = 0; i < sw->layer_count && !rc; i++)
        for (int w = 0; w < LT_COUNT && !rc; w++) {
            if (!llama_layer_tensor_needed(&m->hp, w)) continue;
            char name[FERRY_MAX_NAME];
            snprintf(name, sizeof name, "blk.%d.%s", sw->layer_first + i, llama_layer_tensor_suffix(w));
            rc = add_weight(m, st, name, &sw->layers[i].w[w], err);
        }
    for (int i = 0; i < st->n_weights; i++) st->weight_bytes += ferry_nbytes(&st->weights[i]);
    return rc;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Sends weight i of a remote stage (through the hash cache unless the
 * caller said not to) and counts what it cost. */
/* A ferry server that holds the model file may fill weight i itself: then
 * the client never reads those bytes. *filled says whether it did. */
static int fill_from_server_copy(struct ferry_model *m, struct stage *st, int i, bool *filled,
                                 struct ferry_error *err) {
    *filled = false;
    if (m->params.no_hash_cache || !ferry_client_server_has_local(st->client)) return FERRY_OK;
    if (!m->have_content_key) m->content_key = ferry_gguf_content_key(m->gguf), m->have_content_key = true;
    const uint64_t at = (uint64_t)((const uint8_t *)st->weight_src[i] - (const uint8_t *)ferry_gguf_base(m->gguf));
    int rc = ferry_client_load_local(st->client, &st->weights[i], m->content_key, at, filled, err);
    if (!rc && *filled) {
        st->local_hits++;
        st->local_bytes += ferry_nbytes(&st->weights[i]);
    }
    return rc;
}

/* Sends weight i (through the hash cache unless the caller said not to;
 * hash: its FNV-1a when already computed) and counts what it cost. */
static int upload_weight(struct ferry_model *m, struct stage *st, int i, const uint64_t *hash,
                         struct ferry_error *err) {
    struct ferry_tensor *t = &st->weights[i];
    const uint64_t n = ferry_nbytes(t);
    bool hit = false;
    int rc = m->params.no_hash_cache ? ferry_client_set_tensor(st->client, t, 0, st->weight_src[i], n, err)
             : hash ? ferry_client_upload_hashed(st->client, t, 0, st->weight_src[i], n, *hash, &hit, err)
                    : ferry_client_upload(st->client, t, 0, st->weight_src[i], n, &hit, err);
    if (rc) return rc;
    if (hit)
        st->cache_hits++, st->cache_bytes += n;
    else
        st->uploaded_bytes += n;
    return FERRY_OK;
}

static int send_weight(struct ferry_model *m, struct stage *st, int i, struct ferry_error *err) {
    bool filled = false;
    int rc = fill_from_server_copy(m, st, i, &filled, err);
    return rc || filled ? rc : upload_weight(m, st, i, NULL, err);
}

/* Hashing the weights to upload, several threads ahead of the sender: the
 * protocol's FNV-1a is serial within a tensor, so tensors are hashed side
 * by side, in upload order, and the sender waits only for the one it is at. */
struct hash_ahead {
    const struct stage *st;
    const int *todo; /* weight indices, in upload order */
    int n_todo;
    uint64_t *hash;  /* by weight index */
    bool *ready;
    atomic_int next;
    pthread_mutex_t lock;
    pthread_cond_t done;
};

static void *hash_ahead_main(void *arg) {
    struct hash_ahead *h = arg;
    for (int j; (j = atomic_fetch_add(&h->next, 1)) < h->n_todo;) {
        const int i = h->todo[j];
        const uint64_t v = ferry_fnv1a64(h->st->weight_src[i], ferry_nbytes(&h->st->weights[i]));
        pthread_mutex_lock(&h->lock);
        h->hash[i] = v;
        h->ready[i] = true;
        pthread_cond_broadcast(&h->done);
        pthread_mutex_unlock(&h->lock);
    }
    return NULL;
}

/* Remote stages: one buffer for all weights, each put in place once: by
 * the server from its own copy of the model file when it has one, else
 * through its hash cache (hashed in parallel), else sent. */
/* Where each weight goes in the stage's buffer. Packed one after the other;
 * or, for a server that holds the model file, at the distance it has in
 * the file, so that each weight sits at the same place within a page as in
 * the file and the server can map the file's pages instead of copying them
 * (when the gaps, other stages' tensors, cost at most a quarter more). */
static uint64_t weight_layout(struct ferry_model *m, struct stage *st, uint64_t align, uint64_t *offs) {
    uint64_t packed = 0;
    for (int i = 0; i < st->n_weights; i++) {
        packed = align_up(packed, align);
        offs[i] = packed;
        packed += ferry_nbytes(&st->weights[i]);
    }
    if (m->params.no_hash_cache || st->n_weights == 0 || !ferry_client_server_has_local(st->client)) return packed;
    /* the server's own alignment rule, not the 64 bytes we prefer when packing */
    uint64_t need = 0;
    struct ferry_error ignored;
    if (ferry_client_alignment(st->client, 0, &need, &ignored) || need == 0 || need > 4096) return packed;
    const uint8_t *file = ferry_gguf_base(m->gguf);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < st->n_weights; i++) {
        const uint64_t at = (uint64_t)((const uint8_t *)st->weight_src[i] - file);
        if (at % need) return packed;
        if (at < lo) lo = at;
        if (at + ferry_nbytes(&st->weights[i]) > hi) hi = at + ferry_nbytes(&st->weights[i]);
    }
    lo &= ~(uint64_t)4095;
    if (hi - lo > packed + packed / 4) return packed;
    for (int i = 0; i < st->n_weights; i++) offs[i] = (uint64_t)((const uint8_t *)st->weight_src[i] - file) - lo;
    return hi - lo;
}

static int upload_weights(struct ferry_model *m, struct stage *st, uint64_t align, struct ferry_error *err) {
    uint64_t *offs = calloc((size_t)st->n_weights + 1, sizeof *offs);
    if (!offs) return ferry_fail(err, FERRY_ERR_NOMEM, "weights of stage %s: out of memory", st->name);
    const uint64_t total = weight_layout(m, st, align, offs);
    int rc = ferry_client_alloc_buffer(st->client, 0, total ? total : 1, &st->wbuf, err);
    if (rc) {
        free(offs);
        return rc;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (m->params.progress) m->params.progress(m->params.progress_ud, st->name, 0, st->weight_bytes);
    uint64_t done = 0;
    int *todo = calloc((size_t)st->n_weights + 1, sizeof *todo), n_todo = 0;
    uint64_t *hash = calloc((size_t)st->n_weights + 1, sizeof *hash);
    bool *ready = calloc((size_t)st->n_weights + 1, sizeof *ready);
    if (!todo || !hash || !ready) rc = ferry_fail(err, FERRY_ERR_NOMEM, "weights of stage %s: out of memory", st->name);
    for (int i = 0; i < st->n_weights && !rc; i++) {
        struct ferry_tensor *t = &st->weights[i];
        rc = ferry_remote_tensor_place(t, &st->wbuf, offs[i], err);
        bool filled = false;
        if (!rc) rc = fill_from_server_copy(m, st, i, &filled, err);
        if (!rc && filled) {
            done += ferry_nbytes(t);
            if (m->params.progress) m->params.progress(m->params.progress_ud, st->name, done, st->weight_bytes);
        } else if (!rc) {
            todo[n_todo++] = i;
        }
    }
    /* the rest: hashes remembered from an earlier load of this file, the
     * others computed by the local threads ahead of the sender */
    const uint8_t *file = ferry_gguf_base(m->gguf);
    int *unknown = calloc((size_t)n_todo + 1, sizeof *unknown), n_unknown = 0;
    if (!unknown && !rc) rc = ferry_fail(err, FERRY_ERR_NOMEM, "weights of stage %s: out of memory", st->name);
    if (!rc && !m->params.no_hash_cache && !m->hash_memo) m->hash_memo = hash_memo_open(m->params.path);
    for (int j = 0; !rc && !m->params.no_hash_cache && j < n_todo; j++) {
        const int i = todo[j];
        const uint64_t at = (uint64_t)((const uint8_t *)st->weight_src[i] - file);
        if (hash_memo_get(m->hash_memo, at, ferry_nbytes(&st->weights[i]), &hash[i])) ready[i] = true;
        else unknown[n_unknown++] = i;
    }
    struct hash_ahead h = { .st = st, .todo = unknown, .n_todo = n_unknown, .hash = hash, .ready = ready };
    atomic_init(&h.next, 0);
    pthread_mutex_init(&h.lock, NULL);
    pthread_cond_init(&h.done, NULL);
    pthread_t workers[16];
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_workers = 0, want = m->params.n_threads > 0 ? m->params.n_threads : cores > 0 ? (int)cores : 1;
    if (want > 16) want = 16;
    for (int w = 0; !rc && w < want && w < h.n_todo; w++)
        if (pthread_create(&workers[n_workers], NULL, hash_ahead_main, &h) == 0) n_workers++;
    for (int j = 0; j < n_todo && !rc; j++) {
        const int i = todo[j];
        const uint64_t *known = NULL;
        if (!m->params.no_hash_cache && (n_workers > 0 || ready[i])) {
            pthread_mutex_lock(&h.lock);
            while (!ready[i]) pthread_cond_wait(&h.done, &h.lock);
            pthread_mutex_unlock(&h.lock);
            known = &hash[i];
            hash_memo_put(m->hash_memo, (uint64_t)((const uint8_t *)st->weight_src[i] - file),
                          ferry_nbytes(&st->weights[i]), hash[i]);
        }
        rc = upload_weight(m, st, i, known, err);
        done += ferry_nbytes(&st->weights[i]);
        if (m->params.progress) m->params.progress(m->params.progress_ud, st->name, done, st->weight_bytes);
    }
    atomic_store(&h.next, h.n_todo); /* after an error: the workers stop at their next tensor */
    for (int w = 0; w < n_workers; w++) pthread_join(workers[w], NULL);
    pthread_mutex_destroy(&h.lock);
    pthread_cond_destroy(&h.done);
    free(todo), free(hash), free(ready), free(offs), free(unknown);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->load_seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return rc;
}

/* ---- KV cache and compute memory --------------------------------------------------------- */

static int setup_kv(struct ferry_model *m, struct stage *st, uint64_t align, struct ferry_error *err) {
    struct llama_stage_weights *sw = &st->sw;
    if (sw->layer_count == 0) return FERRY_OK;
    int64_t ne[2] = { (int64_t)m->hp.n_head_kv * m->hp.head_dim, m->n_ctx };
    struct ferry_tensor proto;
    ferry_tensor_init(&proto, FERRY_TYPE_F16, 2, ne, NULL);
    uint64_t one = align_up(ferry_nbytes(&proto), align), total = one * 2 * (uint64_t)sw->layer_count;
    st->kv_bytes = total;
    int rc = FERRY_OK;
    if (st->client) {
        rc = ferry_client_alloc_buffer(st->client, 0, total, &st->kvbuf, err);
        if (!rc) rc = ferry_client_buffer_clear(st->client, &st->kvbuf, 0, err);
    } else {
        st->kv_host = aligned_alloc(64, align_up(total, 64));
        if (!st->kv_host) return ferry_fail(err, FERRY_ERR_NOMEM, "KV cache of %" PRIu64 " bytes", total);
        memset(st->kv_host, 0, total);
    }
    for (int i = 0; i < sw->layer_count && !rc; i++) {
        struct llama_layer *L = &sw->layers[i];
        L->k_cache = proto;
        L->v_cache = proto;
        snprintf(L->k_cache.name, sizeof L->k_cache.name, "cache_k_l%d", sw->layer_first + i);
        snprintf(L->v_cache.name, sizeof L->v_cache.name, "cache_v_l%d", sw->layer_first + i);
        uint64_t ko = one * 2 * (uint64_t)i, vo = ko + one;
        if (st->client) {
            rc = ferry_remote_tensor_place(&L->k_cache, &st->kvbuf, ko, err);
            if (!rc) rc = ferry_remote_tensor_place(&L->v_cache, &st->kvbuf, vo, err);
        } else {
            L->k_cache.data = (char *)st->kv_host + ko;
            L->v_cache.data = (char *)st->kv_host + vo;
        }
    }
    return rc;
}

/* Measures the largest ubatch's graph, allocates that much compute memory,
 * and checks every node of it against the engine: an unsupported weight
 * type is refused at load, not at the first token. */
static int setup_compute(struct ferry_model *m, struct stage *st, uint64_t align, struct ferry_error *err) {
    int rc = gb_init(&st->g, llama_stage_max_tensors(&st->sw), align, err);
    if (rc) return rc;
    struct llama_batch_shape bs = { m->n_batch, m->n_ctx, 1 };
    struct llama_inputs in;
    struct ferry_tensor *out;
    gb_begin(&st->g, 0, NULL, 0, true);
    if ((rc = llama_build_stage(&st->g, &st->sw, &bs, &in, &out, err))) return rc;
    for (int i = 0; i < st->g.n_nodes; i++) {
        struct ferry_error e;
        if (ferry_engine_check_node(st->g.nodes[i], &e))
            return ferry_fail(err, e.code, "%s: node '%s' cannot run: %s", st->name, st->g.nodes[i]->name,
                              e.msg);
    }
    st->compute_size = align_up(st->g.peak, align);
    st->blob_cap = in.blob_bytes;
    if (st->client) {
        rc = ferry_client_alloc_buffer(st->client, 0, st->compute_size, &st->cbuf, err);
        st->blob_host = malloc(st->blob_cap);
        if (!rc && !st->blob_host) rc = ferry_fail(err, FERRY_ERR_NOMEM, "input buffer: out of memory");
    } else {
        st->compute_host = aligned_alloc(64, align_up(st->compute_size, 64));
        if (!st->compute_host) rc = ferry_fail(err, FERRY_ERR_NOMEM, "compute buffer of %zu bytes", st->compute_size);
    }
    return rc;
}

/* ---- load ------------------------------------------------------------------------------ */

static void stage_free(struct stage *st) {
    if (st->client) {
        struct ferry_remote_buffer *bufs[3] = { &st->wbuf, &st->kvbuf, &st->cbuf };
        for (int i = 0; i < 3; i++)
            if (bufs[i]->client) ferry_client_free_buffer(st->client, bufs[i], NULL);
    }
    ferry_engine_plan_free(st->plan);
    gb_free(&st->g);
    free(st->weights);
    free(st->weight_src);
    free(st->sw.layers);
    free(st->kv_host);
    free(st->compute_host);
    free(st->blob_host);
}

void ferry_model_free(struct ferry_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_stages; i++) stage_free(&m->stages[i]);
    free(m->stages);
    for (int i = 0; i < m->n_clients; i++) ferry_client_close(m->clients[i]);
    ferry_engine_destroy(m->engine);
    ferry_vocab_free(m->vocab);
    ferry_gguf_close(m->gguf);
    free(m->hidden);
    free(m->logits);
    free(m);
}

static int connect_servers(struct ferry_model *m, float *split, struct ferry_error *err) {
    const struct ferry_model_params *p = &m->params;
    /* the caller's non-zero fields over the defaults */
    struct ferry_client_options o;
    ferry_client_options_defaults(&o);
    if (p->client.connect_timeout_ms) o.connect_timeout_ms = p->client.connect_timeout_ms;
    if (p->client.response_timeout_ms) o.response_timeout_ms = p->client.response_timeout_ms;
    if (p->client.frame_timeout_ms) o.frame_timeout_ms = p->client.frame_timeout_ms;
    if (p->client.transport) o.transport = p->client.transport;
    if (p->client.rdma_dev) o.rdma_dev = p->client.rdma_dev;
    if (p->client.rdma_ip) o.rdma_ip = p->client.rdma_ip;
    if (p->client.hello_timeout_ms) o.hello_timeout_ms = p->client.hello_timeout_ms;
    if (p->client.hash_min_size) o.hash_min_size = p->client.hash_min_size;
    const struct ferry_client_options *opts = &o;
    bool given = false;
    for (int i = 0; i < p->n_rpc; i++) given |= p->tensor_split[i] > 0;
    for (int i = 0; i < p->n_rpc; i++) {
        int rc = ferry_client_connect(p->rpc[i], opts, &m->clients[i], err);
        if (rc) return rc;
        m->n_clients++;
        uint64_t free_mem = 0, total = 0;
        if (!given && (rc = ferry_client_device_memory(m->clients[i], 0, &free_mem, &total, err))) return rc;
        split[i] = given ? (p->tensor_split[i] > 0 ? p->tensor_split[i] : 0) : (float)free_mem;
    }
    return FERRY_OK;
}

static void most_common_type(struct ferry_model *m) {
    uint64_t bytes[FERRY_TYPE_COUNT] = { 0 };
    for (int64_t i = 0; i < ferry_gguf_n_tensors(m->gguf); i++) {
        const struct ferry_gguf_tensor_info *ti = ferry_gguf_tensor(m->gguf, i);
        int64_t n = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3];
        m->n_params += (uint64_t)n;
        if (ti->n_dims >= 2 && (int)ti->type < FERRY_TYPE_COUNT) bytes[ti->type] += ti->size;
    }
    m->wtype = FERRY_TYPE_F32;
    for (int t = 0; t < FERRY_TYPE_COUNT; t++)
        if (bytes[t] > bytes[m->wtype]) m->wtype = t;
}

int ferry_model_load(const struct ferry_model_params *p, struct ferry_model **out, struct ferry_error *err) {
    *out = NULL;
    if (!p || !p->path) return ferry_fail(err, FERRY_ERR_INVALID, "no model path");
    if (p->n_rpc < 0 || p->n_rpc > FERRY_MODEL_MAX_RPC)
        return ferry_fail(err, FERRY_ERR_INVALID, "%d servers (at most %d)", p->n_rpc, FERRY_MODEL_MAX_RPC);
    double t0 = now_s();
    struct ferry_model *m = calloc(1, sizeof *m);
    if (!m) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
    m->params = *p;
    int rc = ferry_gguf_open(p->path, &m->gguf, err);
    if (!rc) rc = llama_read_hparams(m->gguf, &m->hp, err);
    if (!rc) rc = ferry_vocab_load(m->gguf, &m->vocab, err);
    if (!rc && ferry_vocab_n_tokens(m->vocab) != m->hp.n_vocab)
        rc = ferry_fail(err, FERRY_ERR_INVALID, "vocabulary has %d tokens, the embedding %d rows",
                        ferry_vocab_n_tokens(m->vocab), m->hp.n_vocab);
    if (rc) goto fail;
    most_common_type(m);

    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096);
    if (n_ctx > (1 << 20)) n_ctx = 1 << 20;
    m->n_ctx = (int)align_up((uint64_t)n_ctx, KV_PAD);
    m->n_batch = p->n_batch > 0 ? p->n_batch : 512;
    if (m->n_batch > m->n_ctx) m->n_batch = m->n_ctx;

    if ((rc = ferry_engine_self_check(NULL, err))) goto fail;
    float split[FERRY_MODEL_MAX_RPC] = { 0 };
    if ((rc = connect_servers(m, split, err))) goto fail;
    struct plan_entry plan[FERRY_MODEL_MAX_RPC + 2];
    int n_plan = 0;
    if ((rc = plan_stages(m, split, plan, &n_plan, err))) goto fail;

    m->stages = calloc((size_t)n_plan, sizeof *m->stages);
    m->hidden = malloc((size_t)m->hp.n_embd * (size_t)m->n_batch * sizeof(float));
    m->logits = malloc((size_t)m->hp.n_vocab * sizeof(float));
    int n_threads = p->n_threads > 0 ? p->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->engine = ferry_engine_create(n_threads > 0 ? n_threads : 1);
    if (!m->stages || !m->hidden || !m->logits || !m->engine) {
        rc = ferry_fail(err, FERRY_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_plan && !rc; i++) {
        struct stage *st = &m->stages[m->n_stages++];
        st->sw = (struct llama_stage_weights){ .hp = &m->hp, .layer_first = plan[i].first,
                                               .layer_count = plan[i].count, .embed = plan[i].embed,
                                               .output = plan[i].output };
        st->client = plan[i].client >= 0 ? m->clients[plan[i].client] : NULL;
        snprintf(st->name, sizeof st->name, "%s", st->client ? ferry_client_endpoint(st->client) : "local");
        uint64_t align = 64;
        if (st->client && !(rc = ferry_client_alignment(st->client, 0, &align, err)) && align < 64) align = 64;
        if (!rc && align > 4096) rc = ferry_fail(err, FERRY_ERR_PROTOCOL, "%s: alignment %" PRIu64, st->name, align);
        if (!rc) rc = collect_weights(m, st, err);
        if (!rc && st->client) rc = upload_weights(m, st, align, err);
        if (!rc) rc = setup_kv(m, st, align, err);
        if (!rc) rc = setup_compute(m, st, align, err);
        if (!rc && st->client) ferry_client_get_stats(st->client, &st->stats0);
    }
    hash_memo_close(m->hash_memo); /* what this load hashed, kept for the next */
    m->hash_memo = NULL;
    if (rc) goto fail;
    m->load_seconds = now_s() - t0;
    *out = m;
    return FERRY_OK;
fail:
    ferry_model_free(m);
    return rc;
}

/* ---- decode ---------------------------------------------------------------------------- */

static void fill_inputs(struct ferry_model *m, const struct stage *st, const struct llama_inputs *in,
                        const struct llama_batch_shape *bs, const int32_t *tokens, const float *embd,
                        uint8_t *blob) {
    uintptr_t b0 = (uintptr_t)in->blob->data;
#define AT(t) (blob + ((uintptr_t)(t)->data - b0))
    int T = bs->n_tokens;
    if (in->tokens) memcpy(AT(in->tokens), tokens, (size_t)T * sizeof(int32_t));
    if (in->embd) memcpy(AT(in->embd), embd, (size_t)T * (size_t)m->hp.n_embd * sizeof(float));
    if (in->pos) {
        int32_t *pos = (int32_t *)AT(in->pos);
        int64_t *idx = (int64_t *)AT(in->kv_idx);
        uint16_t *mask = (uint16_t *)AT(in->mask);
        for (int i = 0; i < T; i++) {
            int p = m->n_past + i;
            pos[i] = p;
            idx[i] = p;
            uint16_t *row = mask + (size_t)i * (size_t)bs->n_kv;
            for (int j = 0; j < bs->n_kv; j++) row[j] = j <= p ? 0x0000 : 0xFC00; /* 0 or -inf */
        }
    }
    if (in->out_ids) {
        int32_t *ids = (int32_t *)AT(in->out_ids);
        for (int i = 0; i < bs->n_out; i++) ids[i] = T - bs->n_out + i;
    }
#undef AT
    (void)st;
}

/* Runs one stage: inputs up, graph, result back into the model's host
 * buffers. *result points at the hidden state or the logits. */
static int run_stage(struct ferry_model *m, struct stage *st, const struct llama_batch_shape *bs,
                     const int32_t *tokens, const float *embd, const float **result, struct ferry_error *err) {
    struct llama_inputs in;
    struct ferry_tensor *out;
    if (st->client)
        gb_begin(&st->g, (uintptr_t)st->cbuf.place_base, &st->cbuf, st->compute_size, false);
    else
        gb_begin(&st->g, (uintptr_t)st->compute_host, NULL, st->compute_size, false);
    int rc = llama_build_stage(&st->g, &st->sw, bs, &in, &out, err);
    if (rc) return rc;
    size_t out_bytes = ferry_nbytes(out);
    if (!st->client) {
        fill_inputs(m, st, &in, bs, tokens, embd, in.blob->data);
        if (!st->plan || memcmp(&st->plan_shape, bs, sizeof *bs) != 0) {
            ferry_engine_plan_free(st->plan);
            st->plan = NULL;
            if ((rc = ferry_engine_plan(m->engine, st->g.nodes, st->g.n_nodes, &st->plan, err))) return rc;
            st->plan_shape = *bs;
        }
        rc = ferry_engine_run(m->engine, st->plan, err);
        *result = out->data;
        return rc;
    }
    if (in.blob_bytes > st->blob_cap) return ferry_fail(err, FERRY_ERR_INVALID, "inputs exceed their buffer");
    fill_inputs(m, st, &in, bs, tokens, embd, st->blob_host);
    float *dst = st->sw.output ? m->logits : m->hidden;
    if ((rc = ferry_client_set_tensor(st->client, in.blob, 0, st->blob_host, in.blob_bytes, err)) ||
        (rc = ferry_client_graph_compute(st->client, 0, st->g.nodes, (uint32_t)st->g.n_nodes, err)) ||
        (rc = ferry_client_get_tensor(st->client, out, 0, dst, out_bytes, err))) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err ? err->msg : "failed");
        return ferry_fail(err, rc, "server %s: %s", st->name, why);
    }
    *result = dst;
    return FERRY_OK;
}

static int decode_ubatch(struct ferry_model *m, const int32_t *tokens, int n, float *logits,
                         struct ferry_error *err) {
    int seen = m->n_past + n;
    struct llama_batch_shape bs = { n, (int)align_up((uint64_t)seen, KV_PAD), 1 };
    if (bs.n_kv > m->n_ctx) bs.n_kv = m->n_ctx;
    const float *cur = NULL;
    for (int s = 0; s < m->n_stages; s++) {
        struct stage *st = &m->stages[s];
        int rc = run_stage(m, st, &bs, tokens, cur, &cur, err);
        if (rc) return rc;
        if (st->sw.output && logits) memcpy(logits, cur, (size_t)m->hp.n_vocab * sizeof(float));
    }
    m->n_past = seen;
    return FERRY_OK;
}

int ferry_model_decode(struct ferry_model *m, const int32_t *tokens, int n, float *logits,
                       struct ferry_error *err) {
    if (m->broken)
        return ferry_fail(err, FERRY_ERR_CLOSED, "model unusable after an earlier failure: reset it");
    if (n <= 0) return ferry_fail(err, FERRY_ERR_INVALID, "no tokens");
    if (n > m->n_ctx - m->n_past)
        return ferry_fail(err, FERRY_ERR_INVALID, "context full: %d tokens held, %d more, room for %d",
                          m->n_past, n, m->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            return ferry_fail(err, FERRY_ERR_INVALID, "token %d out of range [0, %d)", tokens[i], m->hp.n_vocab);
    for (int done = 0; done < n;) {
        int chunk = n - done < m->n_batch ? n - done : m->n_batch;
        int rc = decode_ubatch(m, tokens + done, chunk, done + chunk == n ? logits : NULL, err);
        if (rc) {
            m->broken = true;
            return rc;
        }
        done += chunk;
    }
    return FERRY_OK;
}

int ferry_model_n_past(const struct ferry_model *m) { return m->n_past; }

/* Reconnects servers that were lost, re-uploads their weights (the hash
 * cache makes that cheap when the server kept them) and clears every cache. */
int ferry_model_reset(struct ferry_model *m, struct ferry_error *err) {
    for (int s = 0; s < m->n_stages; s++) {
        struct stage *st = &m->stages[s];
        int rc = FERRY_OK;
        if (st->client && ferry_client_is_broken(st->client)) {
            /* buffers come back at the same place_base: the placed weights stay valid */
            rc = ferry_client_reconnect(st->client, err);
            st->uploaded_bytes = st->local_bytes = st->cache_bytes = 0;
            st->cache_hits = st->local_hits = 0;
            for (int i = 0; i < st->n_weights && !rc; i++) rc = send_weight(m, st, i, err);
        }
        if (!rc && st->client && st->sw.layer_count) rc = ferry_client_buffer_clear(st->client, &st->kvbuf, 0, err);
        /* cells beyond n_past are masked; clearing keeps stale values out of sight anyway */
        if (!rc && st->kv_host) memset(st->kv_host, 0, st->kv_bytes);
        if (rc) return rc;
    }
    m->n_past = 0;
    m->broken = false;
    return FERRY_OK;
}

/* ---- information ------------------------------------------------------------------------ */

const struct ferry_vocab *ferry_model_vocab(const struct ferry_model *m) { return m->vocab; }
double ferry_model_load_seconds(const struct ferry_model *m) { return m->load_seconds; }
int ferry_model_n_nodes(const struct ferry_model *m) { return m->n_stages; }

void ferry_model_get_info(const struct ferry_model *m, struct ferry_model_info *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->arch, sizeof o->arch, "%s", m->hp.arch_name);
    struct ferry_gguf_str name;
    if (ferry_gguf_get_str(m->gguf, "general.name", &name))
        snprintf(o->name, sizeof o->name, "%.*s", (int)(name.len < 63 ? name.len : 63), name.ptr);
    o->wtype = m->wtype;
    o->n_vocab = m->hp.n_vocab;
    o->n_embd = m->hp.n_embd;
    o->n_layer = m->hp.n_layer;
    o->n_head = m->hp.n_head;
    o->n_head_kv = m->hp.n_head_kv;
    o->n_ff = m->hp.n_ff;
    o->n_ctx_train = m->hp.n_ctx_train;
    o->n_ctx = m->n_ctx;
    o->n_params = m->n_params;
    o->file_size = ferry_gguf_file_size(m->gguf);
}

void ferry_model_node_info(const struct ferry_model *m, int i, struct ferry_model_node_info *o) {
    memset(o, 0, sizeof *o);
    if (i < 0 || i >= m->n_stages) return;
    const struct stage *st = &m->stages[i];
    snprintf(o->name, sizeof o->name, "%s", st->name);
    snprintf(o->transport, sizeof o->transport, "%s",
             st->client ? ferry_client_transport(st->client, NULL, 0) : "local");
    o->layer_first = st->sw.layer_first;
    o->layer_count = st->sw.layer_count;
    o->embed = st->sw.embed;
    o->output = st->sw.output;
    o->weight_bytes = st->weight_bytes;
    o->uploaded_bytes = st->uploaded_bytes;
    o->cache_hits = st->cache_hits;
    o->local_hits = st->local_hits;
    o->local_bytes = st->local_bytes;
    o->cache_bytes = st->cache_bytes;
    o->load_seconds = st->load_seconds;
    if (st->client) {
        struct ferry_client_stats now;
        ferry_client_get_stats(st->client, &now);
        o->bytes_out = now.bytes_out - st->stats0.bytes_out;
        o->bytes_in = now.bytes_in - st->stats0.bytes_in;
        for (int c = 0; c < FERRY_CLIENT_CMD_SLOTS; c++) o->requests += now.requests[c] - st->stats0.requests[c];
        o->graphs_sent = now.graphs_sent - st->stats0.graphs_sent;
        o->graphs_recomputed = now.graphs_recomputed - st->stats0.graphs_recomputed;
    }
}
