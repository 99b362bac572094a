// The CPU spike loop compiled for the baseline instruction set of the target (SSE2 on x86-64).
#include "dsr_spike.h"
#define DSR_ISA_NAMESPACE isa_baseline
#include "dsr_spike_cpu_kernels.inc"
