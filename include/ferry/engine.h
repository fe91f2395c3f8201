/* ferry: the CPU engine. Runs graphs of ferry tensors the way ggml's CPU
 * backend does, on a pool of threads sized by the caller. */
#ifndef FERRY_ENGINE_H
#define FERRY_ENGINE_H

#include "ferry/error.h"
#include "ferry/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_engine;

/* n_threads >= 1; returns NULL when threads or memory cannot be had. */
struct ferry_engine *ferry_engine_create(int n_threads);
void ferry_engine_destroy(struct ferry_engine *e);
int ferry_engine_n_threads(const struct ferry_engine *e);

/* Can the engine run this node? Checks op, types, shapes, layouts and
 * op_params, never data. View ops and NONE are always accepted; custom ops
 * (which carry a client's function pointers) never are. FERRY_OK or
 * FERRY_ERR_UNSUPPORTED / FERRY_ERR_INVALID with the reason in err. */
int ferry_engine_check_node(const struct ferry_tensor *node, struct ferry_error *err);

/* A graph checked once and ready to run again and again (a server's
 * GRAPH_RECOMPUTE, a model's decode step): every node that has the COMPUTE
 * flag passes ferry_engine_check_node and has memory for its output and its
 * sources; kernels and scratch are resolved. The plan points at the nodes:
 * it holds while their types, shapes, strides and memory stay as they were
 * (data may change between runs), and only for the engine it was made for. */
struct ferry_engine_plan;
int ferry_engine_plan(struct ferry_engine *e, struct ferry_tensor *const *nodes, int n_nodes,
                      struct ferry_engine_plan **out, struct ferry_error *err);
/* Runs a plan without checking it again; data errors found while running
 * (an index out of range) stop the graph with FERRY_ERR_INVALID. */
int ferry_engine_run(struct ferry_engine *e, const struct ferry_engine_plan *plan, struct ferry_error *err);
void ferry_engine_plan_free(struct ferry_engine_plan *plan);

/* Plans, runs and frees: runs the nodes in order. Nodes without FERRY_FLAG_COMPUTE and view ops
 * are skipped, as in ggml. Every node is checked before anything runs; an
 * index read at run time that is out of range stops the graph with
 * FERRY_ERR_INVALID. Tensor memory must already be valid: extents are the
 * caller's (the server's) to prove. */
int ferry_engine_compute(struct ferry_engine *e, struct ferry_tensor *const *nodes, int n_nodes,
                         struct ferry_error *err);

/* Which SIMD kernels this process picked at startup ("avx512", "avx2", "scalar"). */
const char *ferry_engine_simd_name(void);

/* Checks the dot-product kernels this process may use, one known product
 * per weight type and SIMD level, against a reference computed in double.
 * Runs once per process (well under a millisecond) and remembers the result;
 * the server and the model runner refuse to start when it fails, since the
 * build would compute wrong numbers. FERRY_OK, or FERRY_ERR_INVALID with
 * the kernel, level and numbers in err. n_checked (may be NULL) receives
 * how many kernel sets were checked. */
int ferry_engine_self_check(int *n_checked, struct ferry_error *err);

#ifdef __cplusplus
}
#endif
#endif
