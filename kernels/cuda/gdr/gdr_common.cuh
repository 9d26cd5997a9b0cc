// Device helpers and host argument checks shared by gdr_recurrent.cu and
// gdr_chunked.cu. Internal to this package.
#ifndef DELTASERVE_KERNELS_CUDA_GDR_GDR_COMMON_CUH_
#define DELTASERVE_KERNELS_CUDA_GDR_GDR_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/gdr/gdr.h"

namespace deltaserve {
namespace gdr_internal {

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Element `i` of an f32 or bf16 array.
__device__ __forceinline__ float LoadScalar(const void* p, int64_t i,
                                            bool bf16) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
              : static_cast<const float*>(p)[i];
}

// Token range of sequence b, or false when its offsets are malformed.
__device__ __forceinline__ bool SequenceRange(const GdrArgs& a, int64_t b,
                                              int64_t* start, int64_t* end) {
  const int64_t s = a.cu_seqlens[b * a.cu_seqlens_stride];
  const int64_t e = a.cu_seqlens[(b + 1) * a.cu_seqlens_stride];
  if (s < 0 || e < s || e > a.tokens) return false;
  *start = s;
  *end = e;
  return true;
}

inline absl::Status Invalid(const char* op, const char* field, int64_t value,
                            const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", field, " = ", value, ", expected ", expected));
}

// Checks the sizes and pointers shared by both launchers.
inline absl::Status CheckCommonArgs(const char* op, const GdrArgs& a) {
  if (a.batch < 0) return Invalid(op, "batch", a.batch, ">= 0");
  if (a.tokens < 0) return Invalid(op, "tokens", a.tokens, ">= 0");
  if (a.num_k_heads < 1) {
    return Invalid(op, "num_k_heads", a.num_k_heads, ">= 1");
  }
  if (a.num_v_heads < 1 || a.num_v_heads % a.num_k_heads != 0) {
    return Invalid(op, "num_v_heads", a.num_v_heads,
                   "a positive multiple of num_k_heads");
  }
  if (a.key_dim < 1) return Invalid(op, "key_dim", a.key_dim, ">= 1");
  if (a.value_dim < 1 || a.value_dim > (1 << 20)) {
    return Invalid(op, "value_dim", a.value_dim, "in [1, 2^20]");
  }
  if (a.batch * a.num_v_heads > INT32_MAX) {
    return Invalid(op, "batch", a.batch, "batch * num_v_heads < 2^31");
  }
  // No tokens: nothing is read or written.
  if (a.batch == 0 || a.tokens == 0) return absl::OkStatus();
  if (a.num_slots < 1) return Invalid(op, "num_slots", a.num_slots, ">= 1");
  const struct {
    const void* ptr;
    const char* name;
  } required[] = {{a.q, "q"},         {a.k, "k"},
                  {a.v, "v"},         {a.beta, "beta"},
                  {a.state, "state"}, {a.cu_seqlens, "cu_seqlens"},
                  {a.slots, "slots"}, {a.out, "out"}};
  for (const auto& [ptr, name] : required) {
    if (ptr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " is null"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gdr_internal
}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GDR_GDR_COMMON_CUH_
