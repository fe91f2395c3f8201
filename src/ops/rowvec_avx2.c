/* rowvec_impl.h at 8 lanes, compiled for AVX2 (see rowvec.h). */
#define VEC_LANES 8
#define ROWVEC(name) rowvec_##name##_avx2
#include "rowvec.h"
#include "rowvec_impl.h"
