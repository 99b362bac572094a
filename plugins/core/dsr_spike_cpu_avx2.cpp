// The CPU spike loop compiled for AVX2 (see CMakeLists.txt: -mavx2 without -mfma); chosen at run time.
#include "dsr_spike.h"
#define DSR_ISA_NAMESPACE isa_avx2
#include "dsr_spike_cpu_kernels.inc"
