// Row-major GEMM on the GPU through cuBLASLt: out[M, N] = x[M, K] · w[N, K]ᵀ
// (+ out when accumulating), fp32 accumulation.
//
// This header has no CUDA includes; pointers are device pointers and the
// stream is a cudaStream_t passed as void* (nullptr: the legacy default
// stream). ops.h wraps it for TensorViews.
#ifndef DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_GEMM_H_
#define DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_GEMM_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace deltaserve {

// Device pointers, sizes and leading dimensions (row strides, in elements) of
// one GEMM. Supported (x, w, out) dtypes: (f32, f32, f32) computed in exact
// fp32 (no TF32), (bf16, bf16, bf16) and (bf16, bf16, f32) with fp32
// accumulation.
struct GemmArgs {
  const void* x = nullptr;        // [M, K], rows ldx apart
  const void* w = nullptr;        // [N, K], rows ldw apart
  void* out = nullptr;            // [M, N], rows ldo apart
  DType in_dtype = DType::kF32;   // of x and w
  DType out_dtype = DType::kF32;  // of out
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  int64_t ldx = 0;  // >= K
  int64_t ldw = 0;  // >= K
  int64_t ldo = 0;  // >= N
  bool accumulate = false;
};

// CublasLtGemm owns a cuBLASLt handle, a device workspace and a cache of
// matmul plans (descriptors plus the heuristic's algorithm) keyed by dtypes,
// sizes, leading dimensions and pointer alignments, so a shape seen before
// costs no heuristic query.
//
// Ownership: create one per device with Create(); it frees its handle and
// workspace on destruction (make sure no GEMM it enqueued is still running
// then). Tensors are borrowed for the duration of the enqueued work.
//
// Thread safety: thread-compatible. The workspace is shared by every call, so
// GEMMs enqueued on different streams must not overlap in time: use one
// stream, or order the streams.
class CublasLtGemm {
 public:
  struct Options {
    // cuBLASLt workspace (32 MiB is what NVIDIA recommends for Hopper).
    size_t workspace_bytes = size_t{32} << 20;
  };

  // Creates the handle and allocates the workspace on the current device.
  // Returns RESOURCE_EXHAUSTED when the workspace does not fit, INTERNAL when
  // cuBLASLt cannot be initialised (e.g. no device).
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      const Options& options);

  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;
  ~CublasLtGemm();

  // Enqueues the GEMM on `stream` and returns without waiting for it. M = 0
  // or N = 0 does nothing; K = 0 zeroes out unless accumulating.
  //
  // Returns OK; INVALID_ARGUMENT naming the field when a dtype combination is
  // unsupported, a size is negative, a leading dimension is smaller than its
  // row or a pointer the sizes require is null; INTERNAL when cuBLASLt finds
  // no algorithm or the launch fails.
  absl::Status Run(const GemmArgs& args, void* stream);

  // Number of cached plans (for tests).
  size_t cached_plans() const { return plans_.size(); }

 private:
  struct Plan;
  using PlanKey = std::array<int64_t, 10>;

  CublasLtGemm() = default;

  absl::StatusOr<const Plan*> GetPlan(const GemmArgs& args);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_GEMM_H_
