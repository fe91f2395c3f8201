/* rowvec_impl.h at 16 lanes, compiled for AVX-512 (see rowvec.h). */
#define VEC_LANES 16
#define ROWVEC(name) rowvec_##name##_avx512
#include "rowvec.h"
#include "rowvec_impl.h"
