#include "common.h"

#include <stdarg.h>
#include <stdio.h>

void ferry_op_fail(const struct ferry_compute_params *p, int code, const char *fmt, ...) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&p->status->failed, &expected, 1)) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->status->err.msg, sizeof p->status->err.msg, fmt, ap);
    va_end(ap);
    p->status->err.code = code;
}

bool ferry_op_failed(const struct ferry_compute_params *p) {
    return atomic_load_explicit(&p->status->failed, memory_order_relaxed) != 0;
}

int check_src_count(const struct ferry_tensor *node, int n_required, struct ferry_error *err) {
    for (int i = 0; i < n_required; i++)
        if (!node->src[i])
            return ferry_fail(err, FERRY_ERR_INVALID, "%s: source %d is missing",
                              ferry_op_name(node->op), i);
    return FERRY_OK;
}

int check_type_in(const struct ferry_tensor *node, const char *what, enum ferry_type t,
                  const enum ferry_type *allowed, int n_allowed, struct ferry_error *err) {
    for (int i = 0; i < n_allowed; i++)
        if (allowed[i] == t) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s type %s is not supported",
                      ferry_op_name(node->op), what, ferry_type_name(t));
}

int check_same_shape(const struct ferry_tensor *node, const struct ferry_tensor *a,
                     const struct ferry_tensor *b, struct ferry_error *err) {
    if (ferry_same_shape(a, b)) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_INVALID,
                      "%s: shapes differ: [%lld,%lld,%lld,%lld] vs [%lld,%lld,%lld,%lld]",
                      ferry_op_name(node->op), (long long)a->ne[0], (long long)a->ne[1],
                      (long long)a->ne[2], (long long)a->ne[3], (long long)b->ne[0],
                      (long long)b->ne[1], (long long)b->ne[2], (long long)b->ne[3]);
}

int check_rows_contiguous(const struct ferry_tensor *node, const struct ferry_tensor *t,
                          const char *what, struct ferry_error *err) {
    if (ferry_rows_contiguous(t)) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s rows must be contiguous (nb0=%zu)",
                      ferry_op_name(node->op), what, t->nb[0]);
}

int check_contiguous(const struct ferry_tensor *node, const struct ferry_tensor *t,
                     const char *what, struct ferry_error *err) {
    if (ferry_is_contiguous(t)) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s must be contiguous",
                      ferry_op_name(node->op), what);
}

int check_dst_shape(const struct ferry_tensor *node, int64_t ne0, int64_t ne1, int64_t ne2,
                    int64_t ne3, struct ferry_error *err) {
    if (node->ne[0] == ne0 && node->ne[1] == ne1 && node->ne[2] == ne2 && node->ne[3] == ne3)
        return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_INVALID,
                      "%s: output shape [%lld,%lld,%lld,%lld] should be [%lld,%lld,%lld,%lld]",
                      ferry_op_name(node->op), (long long)node->ne[0], (long long)node->ne[1],
                      (long long)node->ne[2], (long long)node->ne[3], (long long)ne0,
                      (long long)ne1, (long long)ne2, (long long)ne3);
}

/* Largest power of two dividing the element/block size, capped at the
 * widest field a kernel loads: 8 for I64/F64, 4 inside quantized blocks. */
static size_t natural_alignment(enum ferry_type type) {
    size_t size = ferry_type_size(type), cap = ferry_type_is_quantized(type) ? 4 : 8, a = 1;
    while (a < cap && size % (a * 2) == 0) a *= 2;
    return a;
}

int check_aligned(const struct ferry_tensor *node, const struct ferry_tensor *t, const char *what,
                  struct ferry_error *err) {
    const size_t a = natural_alignment(t->type);
    bool ok = (uintptr_t)t->data % a == 0;
    for (int d = 0; d < FERRY_MAX_DIMS; d++)
        if (t->ne[d] > 1 && t->nb[d] % a != 0) ok = false;
    if (ok) return FERRY_OK;
    return ferry_fail(err, FERRY_ERR_UNSUPPORTED, "%s: %s data or strides are not %zu-byte aligned",
                      ferry_op_name(node->op), what, a);
}
