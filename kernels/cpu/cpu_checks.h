// Argument checks and strided element access shared by CpuKernels' source
// files (cpu_kernels.cc, cpu_mixers.cc). Internal to kernels/cpu.
#ifndef DELTASERVE_KERNELS_CPU_CPU_CHECKS_H_
#define DELTASERVE_KERNELS_CPU_CPU_CHECKS_H_

#include <cstdint>
#include <initializer_list>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace cpu_internal {

// CheckTensor for a tensor in host memory.
inline absl::Status CheckView(const char* op, const char* name,
                              const TensorView& t, DType dtype,
                              std::initializer_list<int64_t> dims) {
  return CheckTensor(op, name, t, dtype, dims, Device::kCpu);
}

// Element pointers through outer strides (the last stride is 1).
inline float* F32At(const TensorView& t, int64_t i) {
  return t.f32() + i * t.strides[0];
}
inline float* F32At(const TensorView& t, int64_t i, int64_t j) {
  return t.f32() + i * t.strides[0] + j * t.strides[1];
}
inline float* F32At(const TensorView& t, int64_t i, int64_t j, int64_t l) {
  return t.f32() + i * t.strides[0] + j * t.strides[1] + l * t.strides[2];
}
inline int32_t I32At(const TensorView& t, int64_t i) {
  return t.i32()[i * t.strides[0]];
}
inline int32_t I32At(const TensorView& t, int64_t i, int64_t j) {
  return t.i32()[i * t.strides[0] + j * t.strides[1]];
}

// Validates cu_seqlens (i32 [B + 1], 0 = cu[0] <= ... <= cu[B] = total) and
// returns B; INVALID_ARGUMENT otherwise.
absl::StatusOr<int64_t> CheckCuSeqlens(const char* op, const TensorView& cu,
                                       int64_t total);

// Validates slots (i32 [B], every entry in [0, pool_size)); INVALID_ARGUMENT
// naming the entry otherwise.
absl::Status CheckSlots(const char* op, const TensorView& slots, int64_t b,
                        int64_t pool_size, const char* pool_name);

}  // namespace cpu_internal
}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CPU_CPU_CHECKS_H_
