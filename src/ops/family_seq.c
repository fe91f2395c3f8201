/* Sequence-model ops (state-space, RWKV, linear attention) and the remaining element-wise and matrix ops.
 * ferry_seq_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "ops.h"

const struct ferry_kernel *ferry_seq_kernel(int op) {
    switch (op) {
    default: return NULL;
    }
}
