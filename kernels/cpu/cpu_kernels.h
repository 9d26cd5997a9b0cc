// The fp32 reference implementation of Kernels.
#ifndef DELTASERVE_KERNELS_CPU_CPU_KERNELS_H_
#define DELTASERVE_KERNELS_CPU_CPU_KERNELS_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

// CpuKernels runs every operation of Kernels on host memory in fp32: plain
// loops, with OpenBLAS for matrix products. It is the oracle the CUDA
// kernels are tested against and the engine's CPU backend.
//
// Ownership: it holds no memory between calls; tensors are borrowed views
// that the caller keeps alive during a call. Every tensor must be on
// Device::kCpu, f32 unless the method says i32, with unit last stride; outer
// strides may be anything.
//
// Thread safety: thread-compatible, as the interface promises (it keeps no
// mutable state of its own; scratch memory is per call). Create() may change
// OpenBLAS's process-wide thread count.
//
// Unless noted, every method returns OK, or INVALID_ARGUMENT naming the
// argument and its shape when a dtype, rank, shape, stride, device, index or
// offset does not fit. On INVALID_ARGUMENT nothing has been written.
class CpuKernels final : public Kernels {
 public:
  struct Options {
    // OpenBLAS threads (process-wide); 0 leaves OpenBLAS's setting alone.
    int num_threads = 0;
  };

  // Returns INVALID_ARGUMENT when options.num_threads < 0.
  static absl::StatusOr<std::unique_ptr<CpuKernels>> Create(
      const Options& options);

  CpuKernels(const CpuKernels&) = delete;
  CpuKernels& operator=(const CpuKernels&) = delete;
  ~CpuKernels() override = default;

  // "cpu".
  const char* name() const override { return "cpu"; }
  // HostMemory().
  DeviceMemory* memory() override;
  // The null stream.
  Stream stream() override { return Stream{}; }

  // INVALID_ARGUMENT: logits not f32 [R, V] with V ≥ 1, or out not i32 [R].
  absl::Status Argmax(const TensorView& logits, const TensorView& out,
                      Stream stream) override;

  // The reference of the sampling rule (kernels/sampling_rule.cc).
  // INVALID_ARGUMENT: logits not f32 [R, V] with 1 ≤ V ≤ 2^24, a parameter
  // or out not of dtype and shape [R], or (naming the row and the value) a
  // temperature that is not finite and ≥ 0, a negative top_k, a top_p
  // outside (0, 1] or a uniform outside [0, 1).
  absl::Status SampleTokens(const TensorView& logits,
                            const TensorView& temperature,
                            const TensorView& top_k, const TensorView& top_p,
                            const TensorView& uniform, const TensorView& out,
                            Stream stream) override;

  // INVALID_ARGUMENT: shape mismatch, w not f32, or a row stride of x, w or
  // out smaller than its row length.
  absl::Status Gemm(const TensorView& x, const TensorView& w,
                    const TensorView& out, bool accumulate,
                    Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch (table must be f32), or an id
  // outside [0, V) (the message names the position and the id).
  absl::Status Embedding(const TensorView& ids, const TensorView& table,
                         const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status RmsNorm(const TensorView& x, const TensorView& weight, float eps,
                       bool zero_centered, const TensorView& out,
                       Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status RmsNormGated(const TensorView& x, const TensorView& z,
                            const TensorView& weight, float eps,
                            const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, or rot_dim not even and in
  // (0, head_dim].
  absl::Status Rope(const TensorView& x, const TensorView& positions,
                    int rot_dim, float theta, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status Add(const TensorView& a, const TensorView& b,
                   const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status SwiGlu(const TensorView& gate, const TensorView& up,
                      const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status SigmoidGate(const TensorView& x, const TensorView& gate,
                           const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, malformed cu_seqlens, or a
  // slot outside [0, S).
  absl::Status CausalConv1d(const TensorView& x, const TensorView& weight,
                            const TensorView& cu_seqlens,
                            const TensorView& conv_state,
                            const TensorView& slots, bool silu,
                            const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, or a slot outside [0, S).
  absl::Status CausalConv1dUpdate(const TensorView& x, const TensorView& weight,
                                  const TensorView& conv_state,
                                  const TensorView& slots, bool silu,
                                  const TensorView& out,
                                  Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch.
  absl::Status GdnGates(const TensorView& a, const TensorView& b,
                        const TensorView& a_log, const TensorView& dt_bias,
                        const TensorView& g, const TensorView& beta,
                        Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, Hv not a multiple of Hk,
  // malformed cu_seqlens, or a slot outside [0, S).
  absl::Status GatedDeltaRuleChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: as GatedDeltaRuleChunked.
  absl::Status GatedDeltaRuleRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) override;

  // The linear and power attention methods live in cpu_mixers.cc.
  // INVALID_ARGUMENT: shape or dtype mismatch, H not a multiple of Hkv,
  // malformed cu_seqlens, or a slot outside [0, S).
  absl::Status LinearAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: as LinearAttentionChunked.
  absl::Status LinearAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: as LinearAttentionChunked, or a degree that is not
  // even and >= 2 (or has more than 2^31 − 1 features).
  absl::Status PowerAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: as PowerAttentionChunked.
  absl::Status PowerAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, or an input given without
  // its output (or the reverse).
  absl::Status PowerAttentionGates(const TensorView& gate_logits,
                                   const TensorView& rate_logits,
                                   float gate_bias, const TensorView& g,
                                   const TensorView& rate,
                                   Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, H not a multiple of Hkv,
  // rot_dim not even and in (0, head_dim], malformed cu_seqlens, or a slot
  // outside [0, S).
  absl::Status CumulativeRope(const TensorView& q, const TensorView& k,
                              const TensorView& rate,
                              const TensorView& cu_seqlens,
                              const TensorView& angle, const TensorView& slots,
                              int rot_dim, float theta, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, malformed cu_seqlens, a
  // negative start_pos, a position beyond max_pages · page_size, or a
  // page-table entry that the call uses outside [0, P).
  absl::Status KvAppend(const TensorView& k, const TensorView& v,
                        const TensorView& k_pages, const TensorView& v_pages,
                        const TensorView& page_table,
                        const TensorView& cu_seqlens,
                        const TensorView& start_pos, Stream stream) override;

  // INVALID_ARGUMENT: shape or dtype mismatch, Hq not a multiple of Hkv,
  // negative window, malformed cu_seqlens, a context length smaller than the
  // sequence's query count or larger than max_pages · page_size, or a
  // page-table entry that the call reads outside [0, P).
  absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                              const TensorView& v_pages,
                              const TensorView& page_table,
                              const TensorView& cu_seqlens,
                              const TensorView& context_lens, int window,
                              float scale, const TensorView& out,
                              Stream stream) override;

  // Always OK: CPU work is synchronous.
  absl::Status Synchronize(Stream stream) override;

 private:
  CpuKernels() = default;
};

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CPU_CPU_KERNELS_H_
