/* The executor and its thread pool: node selection (COMPUTE flag, view ops),
 * refusal of custom and unknown ops, invalid tensors, scratch handling, and
 * a barrier that really waits for every thread. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "exec/threadpool.h"
#include "ferry/engine.h"
#include "ops/ops.h"
#include "testutil.h"

struct barrier_job {
    int rounds;
    atomic_int counter;
    atomic_int errors;
    struct ferry_threadpool *pool;
};

/* Every round each thread adds 1; after the barrier all must see nth*round. */
static void barrier_work(void *arg, int ith, int nth) {
    struct barrier_job *j = arg;
    (void)ith;
    for (int r = 1; r <= j->rounds; r++) {
        atomic_fetch_add(&j->counter, 1);
        ferry_threadpool_barrier(j->pool);
        if (atomic_load(&j->counter) != nth * r) atomic_fetch_add(&j->errors, 1);
        ferry_threadpool_barrier(j->pool);
    }
}

static void test_threadpool(void) {
    for (int n = 1; n <= 5; n++) {
        struct ferry_threadpool *pool = ferry_threadpool_create(n);
        if (!CHECK(pool != NULL, "pool of %d", n)) continue;
        for (int rep = 0; rep < 20; rep++) {
            struct barrier_job j = { .rounds = 50, .pool = pool };
            atomic_init(&j.counter, 0);
            atomic_init(&j.errors, 0);
            ferry_threadpool_run(pool, barrier_work, &j);
            if (!CHECK(atomic_load(&j.errors) == 0 && atomic_load(&j.counter) == n * 50,
                       "barrier with %d threads: %d errors, counter %d", n, atomic_load(&j.errors),
                       atomic_load(&j.counter)))
                break;
        }
        ferry_threadpool_destroy(pool);
    }
    CHECK(ferry_threadpool_create(0) == NULL, "pool of 0 refused");
}

static struct ferry_tensor node_of(enum ferry_op op, enum ferry_type type, int64_t n) {
    struct ferry_tensor t;
    ferry_tensor_init(&t, type, 1, &n, NULL);
    t.op = op;
    t.flags = FERRY_FLAG_COMPUTE;
    return t;
}

static void test_check_node(void) {
    struct ferry_error err = { 0 };
    for (int op = FERRY_OP_MAP_CUSTOM1; op <= FERRY_OP_CUSTOM; op++) {
        struct ferry_tensor t = node_of((enum ferry_op)op, FERRY_TYPE_F32, 4);
        t.op_params[0] = 0x41414141; /* a "function pointer" */
        CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_UNSUPPORTED && strstr(err.msg, "function pointers"),
              "custom op %d refused: %s", op, err.msg);
    }
    struct ferry_tensor t = node_of((enum ferry_op)FERRY_OP_COUNT, FERRY_TYPE_F32, 4);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "op out of range: %s", err.msg);
    t = node_of((enum ferry_op)-3, FERRY_TYPE_F32, 4);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "negative op: %s", err.msg);
    /* every op without a kernel (if any is left) is refused as unsupported */
    for (int op = 0; op < FERRY_OP_COUNT; op++) {
        if (ferry_kernel_for(op) || op == FERRY_OP_NONE || (op >= FERRY_OP_RESHAPE && op <= FERRY_OP_TRANSPOSE) ||
            (op >= FERRY_OP_MAP_CUSTOM1 && op <= FERRY_OP_CUSTOM))
            continue;
        t = node_of((enum ferry_op)op, FERRY_TYPE_F32, 4);
        CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_UNSUPPORTED, "op %d without a kernel: %s", op, err.msg);
    }
    t = node_of(FERRY_OP_VIEW, FERRY_TYPE_F32, 4);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_OK, "view ok");
    t = node_of(FERRY_OP_VIEW, (enum ferry_type)4, 4);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "removed type id 4: %s", err.msg);
    t = node_of(FERRY_OP_VIEW, (enum ferry_type)77, 4);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "type id 77: %s", err.msg);
    t = node_of(FERRY_OP_NONE, FERRY_TYPE_F32, 4);
    t.ne[2] = -1;
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "negative ne: %s", err.msg);
    t = node_of(FERRY_OP_NONE, FERRY_TYPE_F32, 4);
    t.ne[1] = 1 << 20;
    t.nb[1] = SIZE_MAX / 4;
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "overflowing extent: %s", err.msg);
    t = node_of(FERRY_OP_NONE, FERRY_TYPE_F32, 1 << 20);
    t.ne[1] = t.ne[2] = t.ne[3] = (int64_t)1 << 20;
    t.nb[1] = t.nb[2] = t.nb[3] = 0; /* zero strides keep the extent small */
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "element count overflow: %s", err.msg);
    t = node_of(FERRY_OP_NONE, FERRY_TYPE_Q8_0, 32);
    t.nb[0] = 2;
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "short quantized nb0: %s", err.msg);
    t = node_of(FERRY_OP_NONE, FERRY_TYPE_Q4_0, 48);
    CHECK(ferry_engine_check_node(&t, &err) == FERRY_ERR_INVALID, "partial q4_0 block: %s", err.msg);
}

static void test_compute_selection(void) {
    struct ferry_engine *e = ferry_engine_create(2);
    struct ferry_error err = { 0 };
    /* custom op without the COMPUTE flag is skipped, as ggml does */
    struct ferry_tensor custom = node_of(FERRY_OP_CUSTOM, FERRY_TYPE_F32, 4);
    custom.flags = 0;
    struct ferry_tensor *nodes[2] = { &custom, NULL };
    CHECK(ferry_engine_compute(e, nodes, 1, &err) == FERRY_OK, "node without COMPUTE skipped: %s", err.msg);
    /* with the flag the whole graph is refused before anything runs */
    custom.flags = FERRY_FLAG_COMPUTE;
    float buf[4] = { 0 };
    custom.data = buf;
    CHECK(ferry_engine_compute(e, nodes, 1, &err) == FERRY_ERR_UNSUPPORTED, "custom refused: %s", err.msg);
    CHECK(ferry_engine_compute(e, nodes, 2, &err) == FERRY_ERR_UNSUPPORTED, "custom refused first");
    struct ferry_tensor view = node_of(FERRY_OP_VIEW, FERRY_TYPE_F32, 4);
    nodes[0] = &view;
    CHECK(ferry_engine_compute(e, nodes, 1, &err) == FERRY_OK, "view ops are never executed");
    nodes[1] = NULL;
    CHECK(ferry_engine_compute(e, nodes, 2, &err) == FERRY_ERR_INVALID, "NULL node: %s", err.msg);
    CHECK(ferry_engine_compute(e, nodes, -1, &err) == FERRY_ERR_INVALID, "negative count");
    CHECK(ferry_engine_compute(e, nodes, 0, &err) == FERRY_OK, "empty graph");
    CHECK(ferry_engine_n_threads(e) == 2, "thread count");
    ferry_engine_destroy(e);
    CHECK(ferry_engine_create(0) == NULL, "engine with 0 threads refused");
}

static void test_nbytes(void) {
    struct ferry_tensor t;
    int64_t ne[4] = { 64, 3, 2, 1 };
    ferry_tensor_init(&t, FERRY_TYPE_Q4_0, 4, ne, NULL);
    CHECK(t.nb[0] == 18 && t.nb[1] == 36 && t.nb[2] == 108 && ferry_nbytes(&t) == 216, "q4_0 strides");
    CHECK(ferry_is_contiguous(&t), "contiguous");
    int64_t z[4] = { 5, 0, 3, 1 };
    ferry_tensor_init(&t, FERRY_TYPE_F32, 4, z, NULL);
    CHECK(ferry_nbytes(&t) == 0 && ferry_is_empty(&t), "empty tensor has no bytes");
    ferry_tensor_init(&t, FERRY_TYPE_F16, 4, ne, NULL);
    size_t tmp = t.nb[1];
    t.nb[1] = t.nb[2];
    t.nb[2] = tmp;
    CHECK(!ferry_is_contiguous(&t) && ferry_rows_contiguous(&t), "permuted: rows contiguous only");
    CHECK(ferry_row_size(FERRY_TYPE_Q6_K, 512) == 420 && ferry_row_size(FERRY_TYPE_BF16, 3) == 6, "row sizes");
    CHECK(!ferry_type_valid(4) && !ferry_type_valid(31) && !ferry_type_valid(43) && ferry_type_valid(42), "type ids");
}

/* Plan once, run many times: data may change between runs, the plan holds;
 * a plan only runs on an engine of its thread count; planning refuses what
 * computing refused. */
static void test_plan_run(void) {
    struct ferry_engine *e = ferry_engine_create(2), *e3 = ferry_engine_create(3);
    struct ferry_error err = { 0 };
    struct ferry_tensor *a = test_tensor_new(FERRY_TYPE_F32, 8, 3, 1, 1);
    struct ferry_tensor *b = test_tensor_new(FERRY_TYPE_F32, 8, 3, 1, 1);
    struct ferry_tensor *c = test_tensor_new(FERRY_TYPE_F32, 8, 3, 1, 1);
    float *fa = a->data, *fb = b->data, *fc = c->data;
    for (int i = 0; i < 24; i++) fa[i] = (float)i, fb[i] = 100.0f;
    c->op = FERRY_OP_ADD;
    c->src[0] = a;
    c->src[1] = b;
    c->flags = FERRY_FLAG_COMPUTE;
    struct ferry_tensor *nodes[1] = { c };
    struct ferry_engine_plan *plan = NULL;
    if (CHECK(ferry_engine_plan(e, nodes, 1, &plan, &err) == FERRY_OK && plan, "plan: %s", err.msg)) {
        CHECK(ferry_engine_run(e, plan, &err) == FERRY_OK, "run: %s", err.msg);
        CHECK(fc[0] == 100.0f && fc[23] == 123.0f, "first run: %g %g", fc[0], fc[23]);
        for (int i = 0; i < 24; i++) fb[i] = -1.0f;
        CHECK(ferry_engine_run(e, plan, &err) == FERRY_OK, "second run: %s", err.msg);
        CHECK(fc[0] == -1.0f && fc[23] == 22.0f, "second run sees the new data: %g %g", fc[0], fc[23]);
        CHECK(ferry_engine_run(e3, plan, &err) == FERRY_ERR_INVALID && strstr(err.msg, "threads"),
              "a plan for 2 threads on an engine of 3: %s", err.msg);
        ferry_engine_plan_free(plan);
    }
    /* what compute refuses, plan refuses, and hands out no plan */
    b->ne[0] = 7;
    plan = (struct ferry_engine_plan *)&err; /* must be cleared */
    CHECK(ferry_engine_plan(e, nodes, 1, &plan, &err) == FERRY_ERR_INVALID && plan == NULL,
          "mismatched shapes refused: %s", err.msg);
    b->ne[0] = 8;
    void *keep = c->data;
    c->data = NULL;
    CHECK(ferry_engine_plan(e, nodes, 1, &plan, &err) == FERRY_ERR_INVALID && plan == NULL &&
              strstr(err.msg, "no memory"),
          "a node without memory refused: %s", err.msg);
    c->data = keep;
    ferry_engine_plan_free(NULL);
    test_tensor_free(a);
    test_tensor_free(b);
    test_tensor_free(c);
    ferry_engine_destroy(e);
    ferry_engine_destroy(e3);
}

int main(void) {
    test_threadpool();
    test_check_node();
    test_compute_selection();
    test_plan_run();
    test_nbytes();
    return test_summary();
}
