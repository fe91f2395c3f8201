/* libFuzzer target: GRAPH_COMPUTE payloads through the server-side graph
 * decoder, against two fake buffers. Whatever decodes must be safe to run:
 * every tensor with memory lies inside a buffer (ASan checks the reads
 * below against exact-size allocations), nodes point into the tensor array,
 * and the referenced buffers are the ones the records name. Then the engine
 * plans it, as the server does: its checks must refuse or accept, never
 * crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/engine.h"
#include "proto/rpc.h"

#include "fake_buffers.h"

static void touch_extent(const struct ferry_tensor *t) {
    size_t n;
    if (!t->data) return;
    if (!ferry_nbytes_checked(t, &n)) abort(); /* decode must have refused it */
    if (n == 0) return;
    volatile uint8_t sink = ((const uint8_t *)t->data)[0];
    sink ^= ((const uint8_t *)t->data)[n - 1];
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!mem[0]) {
        mem[0] = calloc(1, BUF_SIZE);
        mem[1] = calloc(1, BUF_SIZE);
    }
    struct ferry_rpc_graph *g = NULL;
    struct ferry_error err;
    int rc = ferry_rpc_graph_decode(data, size, 2, fake_resolve, NULL, &g, &err);
    if (rc != FERRY_OK) {
        if (g || !err.msg[0]) abort();
        return 0;
    }
    for (uint32_t i = 0; i < g->n_tensors; i++) {
        const struct ferry_tensor *t = &g->tensors[i];
        touch_extent(t);
        for (int s = 0; s < FERRY_MAX_SRC; s++)
            if (t->src[s] && (t->src[s] < g->tensors || t->src[s] >= g->tensors + g->n_tensors)) abort();
        if (t->view_src && (t->view_src < g->tensors || t->view_src >= g->tensors + g->n_tensors)) abort();
    }
    for (uint32_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i] < g->tensors || g->nodes[i] >= g->tensors + g->n_tensors) abort();
    for (uint32_t i = 0; i < g->n_buffers; i++) {
        if (g->buffers[i] != handles[0] && g->buffers[i] != handles[1]) abort();
        if (i && g->buffers[i - 1] >= g->buffers[i]) abort();
        if (!ferry_rpc_graph_uses_buffer(g, g->buffers[i])) abort();
    }
    static struct ferry_engine *engine;
    if (!engine) engine = ferry_engine_create(1);
    struct ferry_engine_plan *plan = NULL;
    rc = ferry_engine_plan(engine, g->nodes, (int)g->n_nodes, &plan, &err);
    if ((rc == FERRY_OK) != (plan != NULL) || (rc && !err.msg[0])) abort();
    ferry_engine_plan_free(plan);
    ferry_rpc_graph_free(g);
    return 0;
}
