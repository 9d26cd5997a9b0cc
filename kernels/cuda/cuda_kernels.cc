#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise/elementwise_ops.h"
#include "kernels/cuda/gdr/gdr_ops.h"
#include "kernels/cuda/gemm_attention/gemm.h"
#include "kernels/cuda/gemm_attention/ops.h"
#include "kernels/status.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<CudaKernels>> CudaKernels::Create(
    const Options& options) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky error of a failed query
    return absl::FailedPreconditionError("no CUDA device is available");
  }
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", options.device, " does not exist (", count,
                     " present)"));
  }
  DS_RETURN_IF_ERROR(
      CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CublasLtGemm> gemm,
                      CublasLtGemm::Create({}));
  return std::unique_ptr<CudaKernels>(new CudaKernels(std::move(gemm)));
}

CudaKernels::CudaKernels(std::unique_ptr<CublasLtGemm> gemm)
    : gemm_(std::move(gemm)) {}

CudaKernels::~CudaKernels() = default;

absl::Status CudaKernels::Gemm(const TensorView& x, const TensorView& w,
                               const TensorView& out, bool accumulate,
                               Stream stream) {
  return cuda_ops::Gemm(gemm_.get(), x, w, out, accumulate, stream);
}

absl::Status CudaKernels::Embedding(const TensorView& ids,
                                    const TensorView& table,
                                    const TensorView& out, Stream stream) {
  return CudaEmbedding(ids, table, out, stream);
}

absl::Status CudaKernels::RmsNorm(const TensorView& x, const TensorView& weight,
                                  float eps, bool zero_centered,
                                  const TensorView& out, Stream stream) {
  return CudaRmsNorm(x, weight, eps, zero_centered, out, stream);
}

absl::Status CudaKernels::RmsNormGated(const TensorView& x, const TensorView& z,
                                       const TensorView& weight, float eps,
                                       const TensorView& out, Stream stream) {
  return CudaRmsNormGated(x, z, weight, eps, out, stream);
}

absl::Status CudaKernels::Rope(const TensorView& x, const TensorView& positions,
                               int rot_dim, float theta, Stream stream) {
  return CudaRope(x, positions, rot_dim, theta, stream);
}

absl::Status CudaKernels::Add(const TensorView& a, const TensorView& b,
                              const TensorView& out, Stream stream) {
  return CudaAdd(a, b, out, stream);
}

absl::Status CudaKernels::SwiGlu(const TensorView& gate, const TensorView& up,
                                 const TensorView& out, Stream stream) {
  return CudaSwiGlu(gate, up, out, stream);
}

absl::Status CudaKernels::SigmoidGate(const TensorView& x,
                                      const TensorView& gate,
                                      const TensorView& out, Stream stream) {
  return CudaSigmoidGate(x, gate, out, stream);
}

absl::Status CudaKernels::CausalConv1d(const TensorView& x,
                                       const TensorView& weight,
                                       const TensorView& cu_seqlens,
                                       const TensorView& conv_state,
                                       const TensorView& slots, bool silu,
                                       const TensorView& out, Stream stream) {
  return CudaCausalConv1d(x, weight, cu_seqlens, conv_state, slots, silu, out,
                          stream);
}

absl::Status CudaKernels::CausalConv1dUpdate(
    const TensorView& x, const TensorView& weight, const TensorView& conv_state,
    const TensorView& slots, bool silu, const TensorView& out, Stream stream) {
  return CudaCausalConv1dUpdate(x, weight, conv_state, slots, silu, out,
                                stream);
}

absl::Status CudaKernels::GdnGates(const TensorView& a, const TensorView& b,
                                   const TensorView& a_log,
                                   const TensorView& dt_bias,
                                   const TensorView& g, const TensorView& beta,
                                   Stream stream) {
  return CudaGdnGates(a, b, a_log, dt_bias, g, beta, stream);
}

absl::Status CudaKernels::GatedDeltaRuleChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream) {
  return CudaGatedDeltaRuleChunked(q, k, v, g, beta, cu_seqlens, state, slots,
                                   scale, l2norm_qk, out, stream);
}

absl::Status CudaKernels::GatedDeltaRuleRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream) {
  return CudaGatedDeltaRuleRecurrent(q, k, v, g, beta, cu_seqlens, state, slots,
                                     scale, l2norm_qk, out, stream);
}

absl::Status CudaKernels::KvAppend(const TensorView& k, const TensorView& v,
                                   const TensorView& k_pages,
                                   const TensorView& v_pages,
                                   const TensorView& page_table,
                                   const TensorView& cu_seqlens,
                                   const TensorView& start_pos, Stream stream) {
  return cuda_ops::KvAppend(k, v, k_pages, v_pages, page_table, cu_seqlens,
                            start_pos, stream);
}

absl::Status CudaKernels::PagedAttention(
    const TensorView& q, const TensorView& k_pages, const TensorView& v_pages,
    const TensorView& page_table, const TensorView& cu_seqlens,
    const TensorView& context_lens, int window, float scale,
    const TensorView& out, Stream stream) {
  return cuda_ops::PagedAttention(q, k_pages, v_pages, page_table, cu_seqlens,
                                  context_lens, window, scale, out, stream);
}

absl::Status CudaKernels::Synchronize(Stream stream) {
  return CudaStatus(
      cudaStreamSynchronize(static_cast<cudaStream_t>(stream.native)),
      "cudaStreamSynchronize");
}

}  // namespace deltaserve
