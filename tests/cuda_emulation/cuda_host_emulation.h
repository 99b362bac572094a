// Host emulation of the small CUDA subset plugins/core/dsr_spike_cuda.cu uses, for tests/test_cuda_emulation.py.
//
// The .cu file is compiled as C++ with -DDSR_CUDA_HOST_EMULATION and this header force-included. A launch runs the
// grid as nested loops (block by block, thread by thread: the kernel has no shared memory and no barriers, so the
// order does not matter). The float intrinsics become plain IEEE operations (the file is compiled with
// -ffp-contract=off), which is what the _rn intrinsics are on the GPU. What the GPU would refuse is recorded as
// an error: a 16-byte vector access that is not 16-byte aligned, a streamed load or store outside the buffers the
// test declared (dsr_emu_set_regions), or a block size over 1024. Counters say which load path ran.
#pragma once

#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)

// The emulator's own types live in dsr_emu (so a program that links this object beside real CUDA headers, as the
// TensorRT check does, sees no second definition of ::dim3 or ::uint4).
namespace dsr_emu {
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
}  // namespace dsr_emu
using dsr_emu::uint2;
using dsr_emu::uint4;
typedef int cudaError_t;
typedef void* cudaStream_t;
enum : int {
  cudaSuccess = 0,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalAddress = 700,
  cudaErrorMisalignedAddress = 716
};

namespace dsr_emu {
inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;
inline thread_local int last_error = cudaSuccess;
inline long vector_accesses = 0;  // 16-byte loads and stores
inline long scalar_accesses = 0;
// The emulated devices: cudaGetDevice returns current_device; its SM count is device_sms[d], or 132 (an H100/H200)
// when 0. The launcher caches the count per device, so a test picks a fresh device number for another count.
inline int current_device = 0;
inline int device_sms[64] = {};
inline unsigned last_grid = 0;  // the last launch's shape
inline int last_block = 0;

// Byte ranges streamed loads and stores may touch (none declared: no check).
inline int num_regions = 0;
inline uintptr_t region_lo[8], region_hi[8];

template <typename T>
inline void check_access(const T* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % alignof(T) != 0) last_error = cudaErrorMisalignedAddress;
  bool inside = num_regions == 0;
  for (int i = 0; i < num_regions && !inside; ++i) inside = a >= region_lo[i] && a + sizeof(T) <= region_hi[i];
  if (!inside) last_error = cudaErrorIllegalAddress;
  if (sizeof(T) == 16) ++vector_accesses; else ++scalar_accesses;
}

template <typename F>
struct Launch {
  F* kernel;
  unsigned grid;
  int block;
  template <typename... A>
  void operator()(A... args) const {
    if (block <= 0 || block > 1024) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    gridDim.x = grid;
    blockDim.x = static_cast<unsigned>(block);
    last_grid = grid;
    last_block = block;
    for (unsigned b = 0; b < grid; ++b) {
      for (int t = 0; t < block; ++t) {
        blockIdx.x = b;
        threadIdx.x = static_cast<unsigned>(t);
        kernel(args...);
      }
    }
  }
};
template <typename F>
Launch<F> make_launch(unsigned grid, int block, F* kernel) {
  return Launch<F>{kernel, grid, block};
}
}  // namespace dsr_emu

using dsr_emu::blockDim;
using dsr_emu::blockIdx;
using dsr_emu::threadIdx;

#define DSR_LAUNCH(grid, block, stream, ...) ::dsr_emu::make_launch((grid), (block), &__VA_ARGS__)

enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = dsr_emu::current_device;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  const int sms = (dev >= 0 && dev < 64 && dsr_emu::device_sms[dev] > 0) ? dsr_emu::device_sms[dev] : 132;
  *value = attr == cudaDevAttrMultiProcessorCount ? sms : 0;
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const int e = dsr_emu::last_error;
  dsr_emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T __ldcs(const T* p) {
  dsr_emu::check_access(p);
  return *p;
}
template <typename T>
inline void __stcs(T* p, T v) {
  dsr_emu::check_access(p);
  *p = v;
}

// Read by the test through ctypes. Weak: a program that links two emulated kernels (each unit including this
// header, e.g. the TensorRT plugins over dsr_spike_cuda.cu and dsr_sj_cuda.cu) keeps one copy of each.
#define DSR_EMU_ENTRY extern "C" __attribute__((visibility("default"), weak))
DSR_EMU_ENTRY long dsr_emu_vector_accesses() { return dsr_emu::vector_accesses; }
DSR_EMU_ENTRY void dsr_emu_set_device(int dev, int sms) {
  dsr_emu::current_device = dev;
  if (dev >= 0 && dev < 64) dsr_emu::device_sms[dev] = sms;
}
DSR_EMU_ENTRY long dsr_emu_last_grid() { return dsr_emu::last_grid; }
DSR_EMU_ENTRY int dsr_emu_last_block() { return dsr_emu::last_block; }
DSR_EMU_ENTRY long dsr_emu_scalar_accesses() { return dsr_emu::scalar_accesses; }
DSR_EMU_ENTRY void dsr_emu_set_regions(const uintptr_t* lo, const uintptr_t* bytes, int n) {
  dsr_emu::num_regions = n < 0 ? 0 : (n > 8 ? 8 : n);
  for (int i = 0; i < dsr_emu::num_regions; ++i) {
    dsr_emu::region_lo[i] = lo[i];
    dsr_emu::region_hi[i] = lo[i] + bytes[i];
  }
}
