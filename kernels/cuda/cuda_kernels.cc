#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise/elementwise_ops.h"
#include "kernels/cuda/gdr/gdr_ops.h"
#include "kernels/cuda/gemm_attention/gemm.h"
#include "kernels/cuda/gemm_attention/ops.h"
#include "kernels/cuda/mixers/mixer_ops.h"
#include "kernels/cuda/sampling/argmax.h"
#include "kernels/cuda/sampling/sample_tokens.h"
#include "kernels/memory.h"
#include "kernels/sampling_rule.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {

// Device memory of the current device.
class CudaMemory final : public DeviceMemory {
 public:
  Device device() const override { return Device::kCuda; }

  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    if (bytes <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("allocation of ", bytes, " bytes"));
    }
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, static_cast<size_t>(bytes));
    if (err != cudaSuccess) {
      cudaGetLastError();  // out of memory is not sticky
      return CudaStatus(err, absl::StrCat("cudaMalloc of ", bytes, " bytes"));
    }
    return p;
  }

  void Free(void* p) override {
    if (p != nullptr) cudaFree(p);
  }

  absl::Status Copy2D(void* dst, int64_t dst_pitch, const void* src,
                      int64_t src_pitch, int64_t row_bytes, int64_t rows,
                      Stream stream) override {
    if (rows <= 0 || row_bytes <= 0) return absl::OkStatus();
    cudaStream_t s = static_cast<cudaStream_t>(stream.native);
    DS_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src,
                          static_cast<size_t>(src_pitch),
                          static_cast<size_t>(row_bytes),
                          static_cast<size_t>(rows), cudaMemcpyDefault, s),
        "cudaMemcpy2DAsync"));
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, dst) == cudaSuccess &&
        attr.type != cudaMemoryTypeDevice &&
        attr.type != cudaMemoryTypeManaged) {
      // The host reads what it asked for once the call returns.
      return CudaStatus(cudaStreamSynchronize(s), "copy to host: synchronize");
    }
    cudaGetLastError();
    return absl::OkStatus();
  }

  absl::Status Zero(void* p, int64_t bytes, Stream stream) override {
    if (bytes <= 0) return absl::OkStatus();
    return CudaStatus(cudaMemsetAsync(p, 0, static_cast<size_t>(bytes),
                                      static_cast<cudaStream_t>(stream.native)),
                      "cudaMemsetAsync");
  }
};

namespace {

// An instantiated CUDA graph.
class CudaGraphWork final : public RecordedWork {
 public:
  explicit CudaGraphWork(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraphWork() override { cudaGraphExecDestroy(exec_); }
  absl::Status Replay(Stream stream) override {
    return CudaStatus(
        cudaGraphLaunch(exec_, static_cast<cudaStream_t>(stream.native)),
        "cudaGraphLaunch");
  }

 private:
  cudaGraphExec_t exec_;
};

}  // namespace

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
  // Stream-ordered allocations (per-call workspaces) keep their memory
  // cached in the device's pool instead of returning it at every
  // synchronisation.
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, options.device) == cudaSuccess) {
    uint64_t keep = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  cudaGetLastError();
  cudaStream_t stream = nullptr;
  DS_RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                 "cudaStreamCreateWithFlags"));
  void* word = nullptr;
  absl::Status st = CudaStatus(cudaMalloc(&word, sizeof(uint64_t)),
                               "cudaMalloc embedding error word");
  if (!st.ok()) {
    cudaStreamDestroy(stream);
    return st;
  }
  void* workspace = nullptr;
  const absl::Status allocated = CudaStatus(
      cudaMalloc(&workspace, static_cast<size_t>(kAttentionWorkspaceBytes)),
      "cudaMalloc attention workspace");
  if (!allocated.ok()) {
    cudaGetLastError();  // out of memory is not sticky
    cudaFree(word);
    cudaStreamDestroy(stream);
    return allocated;
  }
  return std::unique_ptr<CudaKernels>(new CudaKernels(
      options.device, std::move(gemm), std::make_unique<CudaMemory>(), stream,
      static_cast<uint64_t*>(word), workspace));
}

CudaKernels::CudaKernels(int device, std::unique_ptr<CublasLtGemm> gemm,
                         std::unique_ptr<CudaMemory> memory, void* stream,
                         uint64_t* error_word, void* attention_workspace)
    : device_(device),
      gemm_(std::move(gemm)),
      memory_(std::move(memory)),
      stream_(stream),
      error_word_(error_word),
      attention_workspace_(attention_workspace) {}

CudaKernels::~CudaKernels() {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  cudaFree(attention_workspace_);
  cudaFree(error_word_);
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

DeviceMemory* CudaKernels::memory() { return memory_.get(); }

absl::Status CudaKernels::BindThread() {
  return CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
}

absl::StatusOr<std::unique_ptr<RecordedWork>> CudaKernels::Record(
    Stream stream, absl::FunctionRef<absl::Status()> body) {
  cudaStream_t s = static_cast<cudaStream_t>(stream.native);
  if (s == nullptr) {
    return absl::InvalidArgumentError(
        "Record: the legacy default stream cannot be recorded");
  }
  DS_RETURN_IF_ERROR(
      CudaStatus(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal),
                 "cudaStreamBeginCapture"));
  const absl::Status body_status = body();
  cudaGraph_t graph = nullptr;
  const absl::Status ended =
      CudaStatus(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
  if (!body_status.ok() || !ended.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    return body_status.ok() ? ended : body_status;
  }
  cudaGraphExec_t exec = nullptr;
  const absl::Status made =
      CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cudaGraphDestroy(graph);
  DS_RETURN_IF_ERROR(made);
  return std::unique_ptr<RecordedWork>(new CudaGraphWork(exec));
}

absl::Status CudaKernels::Argmax(const TensorView& logits,
                                 const TensorView& out, Stream stream) {
  constexpr char kOp[] = "Argmax";
  DS_RETURN_IF_ERROR(CheckTensor(kOp, "logits", logits, DType::kF32,
                                 {kAnyDim, kAnyDim}, Device::kCuda));
  DS_RETURN_IF_ERROR(CheckTensor(kOp, "out", out, DType::kI32, {logits.dim(0)},
                                 Device::kCuda));
  if (logits.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": logits ", logits.DebugString(), " has no columns"));
  }
  if (!out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out ", out.DebugString(), " is not contiguous"));
  }
  const int64_t stride = logits.dim(0) > 1 ? logits.strides[0] : logits.dim(1);
  return LaunchArgmax(logits.f32(), logits.dim(0), logits.dim(1), stride,
                      out.i32(), stream.native);
}

absl::Status CudaKernels::SampleTokens(const TensorView& logits,
                                       const TensorView& temperature,
                                       const TensorView& top_k,
                                       const TensorView& top_p,
                                       const TensorView& uniform,
                                       const TensorView& out, Stream stream) {
  constexpr char kOp[] = "SampleTokens";
  DS_RETURN_IF_ERROR(CheckTensor(kOp, "logits", logits, DType::kF32,
                                 {kAnyDim, kAnyDim}, Device::kCuda));
  const int64_t rows = logits.dim(0);
  if (logits.dim(1) < 1 || logits.dim(1) > kMaxSampleVocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": logits ", logits.DebugString(), " has ", logits.dim(1),
        " columns, outside [1, ", kMaxSampleVocab, "]"));
  }
  const struct {
    const char* name;
    const TensorView& t;
    DType dtype;
  } vectors[] = {{"temperature", temperature, DType::kF32},
                 {"top_k", top_k, DType::kI32},
                 {"top_p", top_p, DType::kF32},
                 {"uniform", uniform, DType::kF32},
                 {"out", out, DType::kI32}};
  for (const auto& v : vectors) {
    DS_RETURN_IF_ERROR(
        CheckTensor(kOp, v.name, v.t, v.dtype, {rows}, Device::kCuda));
    if (!v.t.IsContiguous()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", v.name, " ", v.t.DebugString(), " is not contiguous"));
    }
  }
  const int64_t stride = rows > 1 ? logits.strides[0] : logits.dim(1);
  return LaunchSampleTokens(logits.f32(), rows, logits.dim(1), stride,
                            temperature.f32(), top_k.i32(), top_p.f32(),
                            uniform.f32(), out.i32(), stream.native);
}

absl::Status CudaKernels::Gemm(const TensorView& x, const TensorView& w,
                               const TensorView& out, bool accumulate,
                               Stream stream) {
  return cuda_ops::Gemm(gemm_.get(), x, w, out, accumulate, stream);
}

absl::Status CudaKernels::Embedding(const TensorView& ids,
                                    const TensorView& table,
                                    const TensorView& out, Stream stream) {
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream.native),
                            &capturing) == cudaSuccess &&
      capturing == cudaStreamCaptureStatusActive) {
    return CudaEmbeddingNoWait(ids, table, out, error_word_, stream);
  }
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

// Linear and power attention: not yet implemented on the GPU (CpuKernels
// has the reference implementations; kernels/cpu/cpu_mixers.cc).
// The mixers' chunked entry points run the same recurrence as the
// recurrent ones on the GPU (mixer_ops.h).
absl::Status CudaKernels::LinearAttentionChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, float scale,
    bool normalize, const TensorView& out, Stream stream) {
  return CudaMixer("LinearAttentionChunked", q, k, v, TensorView(), cu_seqlens,
                   state, normalizer, slots, kLinearFeatureMap, scale,
                   normalize, out, stream);
}

absl::Status CudaKernels::LinearAttentionRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, float scale,
    bool normalize, const TensorView& out, Stream stream) {
  return CudaMixer("LinearAttentionRecurrent", q, k, v, TensorView(),
                   cu_seqlens, state, normalizer, slots, kLinearFeatureMap,
                   scale, normalize, out, stream);
}

absl::Status CudaKernels::PowerAttentionChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, int degree,
    float scale, bool normalize, const TensorView& out, Stream stream) {
  return CudaMixer("PowerAttentionChunked", q, k, v, g, cu_seqlens, state,
                   normalizer, slots, degree, scale, normalize, out, stream);
}

absl::Status CudaKernels::PowerAttentionRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, int degree,
    float scale, bool normalize, const TensorView& out, Stream stream) {
  return CudaMixer("PowerAttentionRecurrent", q, k, v, g, cu_seqlens, state,
                   normalizer, slots, degree, scale, normalize, out, stream);
}

absl::Status CudaKernels::PowerAttentionGates(const TensorView& gate_logits,
                                              const TensorView& rate_logits,
                                              float gate_bias,
                                              const TensorView& g,
                                              const TensorView& rate,
                                              Stream stream) {
  return CudaPowerAttentionGates(gate_logits, rate_logits, gate_bias, g, rate,
                                 stream);
}

absl::Status CudaKernels::CumulativeRope(
    const TensorView& q, const TensorView& k, const TensorView& rate,
    const TensorView& cu_seqlens, const TensorView& angle,
    const TensorView& slots, int rot_dim, float theta, Stream stream) {
  return CudaCumulativeRope(q, k, rate, cu_seqlens, angle, slots, rot_dim,
                            theta, stream);
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
  return cuda_ops::PagedAttention(
      q, k_pages, v_pages, page_table, cu_seqlens, context_lens, window, scale,
      out, attention_workspace_, kAttentionWorkspaceBytes, stream);
}

absl::Status CudaKernels::Synchronize(Stream stream) {
  return CudaStatus(
      cudaStreamSynchronize(static_cast<cudaStream_t>(stream.native)),
      "cudaStreamSynchronize");
}

}  // namespace deltaserve
