/* The GELU lookup tables (docs/ops.md B.20): 64 Ki f16 entries each, computed
 * from the f32 formulas once per process. */
#include "act.h"

#include <pthread.h>

static uint16_t gelu_table[1 << 16], gelu_quick_table[1 << 16];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.79788456080286535588f, coef_a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * (1.0f + coef_a * x * x)));
}

static float gelu_quick(float x) { return x * (1.0f / (1.0f + expf(-1.702f * x))); }

static void build_tables(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) {
        float x = fp16_to_fp32((uint16_t)h);
        gelu_table[h] = fp32_to_fp16(gelu_tanh(x));
        gelu_quick_table[h] = fp32_to_fp16(gelu_quick(x));
    }
}

const uint16_t *ferry_gelu_table(void) {
    pthread_once(&tables_once, build_tables);
    return gelu_table;
}

const uint16_t *ferry_gelu_quick_table(void) {
    pthread_once(&tables_once, build_tables);
    return gelu_quick_table;
}
