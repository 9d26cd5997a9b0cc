// CudaKernels: the Kernels interface on an NVIDIA GPU (sm_90). Every view it
// is given lives in device memory (Device::kCuda); activations are bf16 or
// f32, recurrent state f32, accumulation f32. Each method enqueues its work
// on the given stream (a cudaStream_t; null: the default stream) and returns
// without waiting, except Embedding, which reads back whether every id was
// in range. Matrix products use cuBLASLt; the other operations are
// deltaserve's own kernels (kernels/cuda/elementwise, gemm_attention, gdr).
//
// Memory: cudaMalloc'd device memory; Copy2D is cudaMemcpy2DAsync (a copy
// into host memory waits for the stream). stream() is a non-blocking stream
// the object owns; Record captures a CUDA graph on a stream other than the
// legacy default one. While a stream is being recorded, Embedding does not
// wait: an out-of-range id then leaves its output untouched, unreported (the
// engine checks ids on the host first).
//
// Differences from CpuKernels, by design: index tensors the kernels read on
// the device (cu_seqlens, slots, page tables, context lengths) are not
// checked on the host — out-of-range entries are skipped or masked, never
// read or written out of bounds; the chunked gated delta rule takes head
// dims K ∈ {32, 64, 128} and V a multiple of 32.
//
// PagedAttention splits long decode contexts over many blocks through a
// fixed workspace (kAttentionWorkspaceBytes, allocated once by Create, so
// recorded graphs that use it stay valid).
//
// Owned by whoever runs the model (one per device). Thread-compatible: the
// cuBLASLt and attention workspaces are shared, so calls on different streams
// must be ordered. Create makes the device current on the calling thread; a
// thread that calls the methods later must have made it current too
// (cudaSetDevice).
#ifndef DELTASERVE_KERNELS_CUDA_CUDA_KERNELS_H_
#define DELTASERVE_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace deltaserve {

class CublasLtGemm;
class CudaMemory;

class CudaKernels final : public Kernels {
 public:
  struct Options {
    // CUDA device ordinal the kernels run on.
    int device = 0;
  };

  // Device memory PagedAttention keeps for split-KV decoding.
  static constexpr int64_t kAttentionWorkspaceBytes = int64_t{64} << 20;

  // Selects the device and creates the cuBLASLt handle and workspace and the
  // attention workspace. FAILED_PRECONDITION when there is no such device;
  // RESOURCE_EXHAUSTED or INTERNAL from cuBLASLt or cudaMalloc.
  static absl::StatusOr<std::unique_ptr<CudaKernels>> Create(
      const Options& options);
  ~CudaKernels() override;

  const char* name() const override { return "cuda"; }
  DeviceMemory* memory() override;
  // cudaSetDevice(options.device).
  absl::Status BindThread() override;
  Stream stream() override { return Stream{stream_}; }
  absl::StatusOr<std::unique_ptr<RecordedWork>> Record(
      Stream stream, absl::FunctionRef<absl::Status()> body) override;
  absl::Status Argmax(const TensorView& logits, const TensorView& out,
                      Stream stream) override;
  // Checks shapes and dtypes only: the parameter values live on the device
  // and out-of-range ones are mapped as sampling_rule::MakeRowParams says.
  // The parameter tensors and out must be contiguous.
  absl::Status SampleTokens(const TensorView& logits,
                            const TensorView& temperature,
                            const TensorView& top_k, const TensorView& top_p,
                            const TensorView& uniform, const TensorView& out,
                            Stream stream) override;
  absl::Status Gemm(const TensorView& x, const TensorView& w,
                    const TensorView& out, bool accumulate,
                    Stream stream) override;
  absl::Status Embedding(const TensorView& ids, const TensorView& table,
                         const TensorView& out, Stream stream) override;
  absl::Status RmsNorm(const TensorView& x, const TensorView& weight, float eps,
                       bool zero_centered, const TensorView& out,
                       Stream stream) override;
  absl::Status RmsNormGated(const TensorView& x, const TensorView& z,
                            const TensorView& weight, float eps,
                            const TensorView& out, Stream stream) override;
  absl::Status Rope(const TensorView& x, const TensorView& positions,
                    int rot_dim, float theta, Stream stream) override;
  absl::Status Add(const TensorView& a, const TensorView& b,
                   const TensorView& out, Stream stream) override;
  absl::Status SwiGlu(const TensorView& gate, const TensorView& up,
                      const TensorView& out, Stream stream) override;
  absl::Status SigmoidGate(const TensorView& x, const TensorView& gate,
                           const TensorView& out, Stream stream) override;
  absl::Status CausalConv1d(const TensorView& x, const TensorView& weight,
                            const TensorView& cu_seqlens,
                            const TensorView& conv_state,
                            const TensorView& slots, bool silu,
                            const TensorView& out, Stream stream) override;
  absl::Status CausalConv1dUpdate(const TensorView& x, const TensorView& weight,
                                  const TensorView& conv_state,
                                  const TensorView& slots, bool silu,
                                  const TensorView& out,
                                  Stream stream) override;
  absl::Status GdnGates(const TensorView& a, const TensorView& b,
                        const TensorView& a_log, const TensorView& dt_bias,
                        const TensorView& g, const TensorView& beta,
                        Stream stream) override;
  absl::Status GatedDeltaRuleChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) override;
  absl::Status GatedDeltaRuleRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) override;
  // Linear and power attention: both entry points run the token-by-token
  // recurrence (kernels/cuda/mixers).
  absl::Status LinearAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) override;
  absl::Status LinearAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) override;
  absl::Status PowerAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) override;
  absl::Status PowerAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) override;
  absl::Status PowerAttentionGates(const TensorView& gate_logits,
                                   const TensorView& rate_logits,
                                   float gate_bias, const TensorView& g,
                                   const TensorView& rate,
                                   Stream stream) override;
  absl::Status CumulativeRope(const TensorView& q, const TensorView& k,
                              const TensorView& rate,
                              const TensorView& cu_seqlens,
                              const TensorView& angle, const TensorView& slots,
                              int rot_dim, float theta, Stream stream) override;
  absl::Status KvAppend(const TensorView& k, const TensorView& v,
                        const TensorView& k_pages, const TensorView& v_pages,
                        const TensorView& page_table,
                        const TensorView& cu_seqlens,
                        const TensorView& start_pos, Stream stream) override;
  absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                              const TensorView& v_pages,
                              const TensorView& page_table,
                              const TensorView& cu_seqlens,
                              const TensorView& context_lens, int window,
                              float scale, const TensorView& out,
                              Stream stream) override;
  // cudaStreamSynchronize; a failed earlier launch surfaces here too.
  absl::Status Synchronize(Stream stream) override;

 private:
  CudaKernels(int device, std::unique_ptr<CublasLtGemm> gemm,
              std::unique_ptr<CudaMemory> memory, void* stream,
              uint64_t* error_word, void* attention_workspace);
  int device_;
  std::unique_ptr<CublasLtGemm> gemm_;
  std::unique_ptr<CudaMemory> memory_;
  void* stream_ = nullptr;               // cudaStream_t
  uint64_t* error_word_ = nullptr;       // Embedding's id check while recording
  void* attention_workspace_ = nullptr;  // kAttentionWorkspaceBytes
};

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_CUDA_KERNELS_H_
