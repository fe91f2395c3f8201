/* The graph executor: checks every node, then runs them in order on the
 * thread pool, one barrier per node, as ggml's CPU backend does. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ferry/engine.h"
#include "ops/common.h"
#include "ops/ops.h"
#include "ops/simd.h"
#include "ops/vecdot.h"
#include "threadpool.h"

struct ferry_engine {
    struct ferry_threadpool *pool;
    void *work;
    size_t work_size;
};

struct graph_job {
    struct ferry_engine *engine;
    struct ferry_tensor *const *nodes;
    const struct ferry_kernel **kernels; /* NULL: nothing to run for this node */
    int n_nodes;
    struct ferry_op_status state;
};

static void pool_barrier(void *pool) { ferry_threadpool_barrier(pool); }

const char *ferry_engine_simd_name(void) { return ferry_simd_level_name(ferry_simd_level()); }

/* The self-check runs once per process; every caller sees its result. */
static pthread_once_t self_check_once = PTHREAD_ONCE_INIT;
static int self_check_rc, self_check_count;
static char self_check_why[200];

static void run_self_check(void) {
    self_check_rc = ferry_vec_dot_self_check(&self_check_count, self_check_why, sizeof self_check_why);
}

int ferry_engine_self_check(int *n_checked, struct ferry_error *err) {
    pthread_once(&self_check_once, run_self_check);
    if (n_checked) *n_checked = self_check_count;
    if (self_check_rc != 0)
        return ferry_fail(err, FERRY_ERR_INVALID,
                          "kernel self-check failed: %s; this build computes wrong numbers (FERRY_SIMD=avx2 or "
                          "scalar selects other kernels; please report the compiler and build type)",
                          self_check_why);
    return FERRY_OK;
}

struct ferry_engine *ferry_engine_create(int n_threads) {
    struct ferry_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->pool = ferry_threadpool_create(n_threads);
    /* kernels address per-thread slots as wdata + ith * size even when the
     * size is 0, so wdata is never NULL */
    e->work_size = 64;
    e->work = aligned_alloc(64, e->work_size);
    if (!e->pool || !e->work) {
        ferry_threadpool_destroy(e->pool);
        free(e->work);
        free(e);
        return NULL;
    }
    return e;
}

void ferry_engine_destroy(struct ferry_engine *e) {
    if (!e) return;
    ferry_threadpool_destroy(e->pool);
    free(e->work);
    free(e);
}

int ferry_engine_n_threads(const struct ferry_engine *e) { return ferry_threadpool_size(e->pool); }

static bool is_view_op(int op) {
    return op == FERRY_OP_NONE || op == FERRY_OP_RESHAPE || op == FERRY_OP_VIEW ||
           op == FERRY_OP_PERMUTE || op == FERRY_OP_TRANSPOSE;
}

/* The checks every tensor of a node gets, whatever the op. */
static int check_tensor_header(const struct ferry_tensor *node, const struct ferry_tensor *t,
                               const char *what, struct ferry_error *err) {
    const int op = (int)node->op;
    if (!ferry_type_valid(t->type))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s has invalid type %d", ferry_op_name(op),
                          what, (int)t->type);
    for (int d = 0; d < FERRY_MAX_DIMS; d++)
        if (t->ne[d] < 0)
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s has negative ne[%d]",
                              ferry_op_name(op), what, d);
    int64_t count = 1;
    for (int d = 0; d < FERRY_MAX_DIMS; d++)
        if (__builtin_mul_overflow(count, t->ne[d], &count))
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s element count overflows", ferry_op_name(op), what);
    /* a block is never split: the extent arithmetic assumes nb0 is one block */
    if (ferry_type_is_quantized(t->type) && t->nb[0] != ferry_type_size(t->type))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s nb0=%zu is not the %s block size",
                          ferry_op_name(op), what, t->nb[0], ferry_type_name(t->type));
    size_t n;
    if (!ferry_nbytes_checked(t, &n))
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s extent overflows", ferry_op_name(op), what);
    /* kernels load elements and block fields directly */
    int rc = check_aligned(node, t, what, err);
    if (rc) return rc;
    if (ferry_type_is_quantized(t->type) && t->ne[0] % ferry_blck_size(t->type) != 0)
        return ferry_fail(err, FERRY_ERR_INVALID, "%s: %s ne0=%lld is not a multiple of the %s block",
                          ferry_op_name(op), what, (long long)t->ne[0], ferry_type_name(t->type));
    return FERRY_OK;
}

int ferry_engine_check_node(const struct ferry_tensor *node, struct ferry_error *err) {
    int op = (int)node->op;
    if (op < 0 || op >= FERRY_OP_COUNT)
        return ferry_fail(err, FERRY_ERR_INVALID, "unknown op %d", op);
    if (op >= FERRY_OP_MAP_CUSTOM1 && op <= FERRY_OP_CUSTOM)
        return ferry_fail(err, FERRY_ERR_UNSUPPORTED,
                          "%s carries the client's function pointers; refused", ferry_op_name(op));
    int rc = check_tensor_header(node, node, "output", err);
    if (rc) return rc;
    if (is_view_op(op)) return FERRY_OK;
    const struct ferry_kernel *k = ferry_kernel_for(op);
    if (!k) return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: op not supported", ferry_op_name(op));
    for (int i = 0; i < FERRY_MAX_SRC; i++) {
        if (!node->src[i]) continue;
        char what[16];
        snprintf(what, sizeof what, "src%d", i);
        rc = check_tensor_header(node, node->src[i], what, err);
        if (rc) return rc;
    }
    return k->check(node, err);
}

static bool has_data(const struct ferry_tensor *t) { return t->data || ferry_is_empty(t); }

struct ferry_engine_plan {
    int n_nodes, nth;
    struct ferry_tensor **nodes;
    const struct ferry_kernel **kernels; /* NULL: nothing to run for this node */
    size_t work;                         /* scratch the largest node needs */
};

static void run_graph(void *arg, int ith, int nth) {
    struct graph_job *job = arg;
    struct ferry_compute_params p = {
        .ith = ith, .nth = nth, .wdata = job->engine->work, .wsize = job->engine->work_size,
        .barrier = pool_barrier, .barrier_ctx = job->engine->pool, .status = &job->state,
    };
    for (int i = 0; i < job->n_nodes; i++) {
        if (!job->kernels[i]) continue;
        job->kernels[i]->compute(&p, job->nodes[i]);
        ferry_threadpool_barrier(job->engine->pool);
        if (atomic_load_explicit(&job->state.failed, memory_order_relaxed)) break;
    }
}

void ferry_engine_plan_free(struct ferry_engine_plan *plan) {
    if (!plan) return;
    free(plan->nodes);
    free(plan->kernels);
    free(plan);
}

/* A node that runs: checked, with memory for its output and every source. */
static int plan_node(struct ferry_tensor *node, struct ferry_error *err) {
    int rc = ferry_engine_check_node(node, err);
    if (rc || is_view_op(node->op)) return rc;
    if (!has_data(node)) return ferry_fail(err, FERRY_ERR_INVALID, "%s: output has no memory", ferry_op_name(node->op));
    for (int s = 0; s < FERRY_MAX_SRC; s++)
        if (node->src[s] && !has_data(node->src[s]))
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: src%d has no memory", ferry_op_name(node->op), s);
    return FERRY_OK;
}

int ferry_engine_plan(struct ferry_engine *e, struct ferry_tensor *const *nodes, int n_nodes,
                      struct ferry_engine_plan **out, struct ferry_error *err) {
    *out = NULL;
    if (n_nodes < 0) return ferry_fail(err, FERRY_ERR_INVALID, "negative node count");
    struct ferry_engine_plan *plan = calloc(1, sizeof *plan);
    size_t n = n_nodes ? (size_t)n_nodes : 1;
    if (plan) {
        plan->nodes = malloc(n * sizeof *plan->nodes);
        plan->kernels = calloc(n, sizeof *plan->kernels);
    }
    if (!plan || !plan->nodes || !plan->kernels) {
        ferry_engine_plan_free(plan);
        return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory for %d nodes", n_nodes);
    }
    plan->n_nodes = n_nodes;
    plan->nth = ferry_threadpool_size(e->pool);
    for (int i = 0; i < n_nodes; i++) {
        struct ferry_tensor *node = nodes[i];
        plan->nodes[i] = node;
        if (!node) {
            ferry_engine_plan_free(plan);
            return ferry_fail(err, FERRY_ERR_INVALID, "node %d is missing", i);
        }
        if (!(node->flags & FERRY_FLAG_COMPUTE)) continue;
        int rc = plan_node(node, err);
        if (rc) {
            ferry_engine_plan_free(plan);
            return rc;
        }
        if (is_view_op(node->op) || ferry_is_empty(node)) continue; /* nothing to write */
        plan->kernels[i] = ferry_kernel_for(node->op);
        if (plan->kernels[i]->work_size) {
            size_t w = plan->kernels[i]->work_size(node, plan->nth);
            if (w > plan->work) plan->work = w;
        }
    }
    *out = plan;
    return FERRY_OK;
}

int ferry_engine_run(struct ferry_engine *e, const struct ferry_engine_plan *plan, struct ferry_error *err) {
    if (plan->nth != ferry_threadpool_size(e->pool))
        return ferry_fail(err, FERRY_ERR_INVALID, "plan made for %d threads, engine has %d", plan->nth,
                          ferry_threadpool_size(e->pool));
    if (plan->n_nodes == 0) return FERRY_OK;
    if (plan->work > e->work_size) {
        size_t rounded = plan->work > SIZE_MAX - 63 ? 0 : (plan->work + 63) & ~(size_t)63;
        void *p = rounded ? aligned_alloc(64, rounded) : NULL;
        if (!p) return ferry_fail(err, FERRY_ERR_NOMEM, "out of memory for %zu bytes of scratch", plan->work);
        free(e->work);
        e->work = p;
        e->work_size = rounded;
    }
    struct graph_job job = { .engine = e, .nodes = plan->nodes, .kernels = plan->kernels, .n_nodes = plan->n_nodes };
    atomic_init(&job.state.failed, 0);
    ferry_threadpool_run(e->pool, run_graph, &job);
    if (atomic_load(&job.state.failed)) {
        if (err) *err = job.state.err;
        return job.state.err.code;
    }
    return FERRY_OK;
}

int ferry_engine_compute(struct ferry_engine *e, struct ferry_tensor *const *nodes, int n_nodes,
                         struct ferry_error *err) {
    struct ferry_engine_plan *plan;
    int rc = ferry_engine_plan(e, nodes, n_nodes, &plan, err);
    if (rc) return rc;
    rc = ferry_engine_run(e, plan, err);
    ferry_engine_plan_free(plan);
    return rc;
}
