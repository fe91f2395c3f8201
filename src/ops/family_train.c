/* Training ops: backward passes, losses and optimizer steps.
 * ferry_train_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "ops.h"

const struct ferry_kernel *ferry_train_kernel(int op) {
    switch (op) {
    default: return NULL;
    }
}
