/* Convolution, im2col, pooling, upscaling and other spatial ops.
 * ferry_conv_kernel() is this family's part of the registry (registry.c). */
#include <stddef.h>

#include "ops.h"

const struct ferry_kernel *ferry_conv_kernel(int op) {
    switch (op) {
    default: return NULL;
    }
}
