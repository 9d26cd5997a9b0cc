// TensorView front ends of the gated delta rule on the GPU, with the
// signatures of Kernels::GatedDeltaRuleChunked / GatedDeltaRuleRecurrent
// (kernels/kernels.h), for CudaKernels to forward to.
#ifndef DELTASERVE_KERNELS_CUDA_GDR_GDR_OPS_H_
#define DELTASERVE_KERNELS_CUDA_GDR_GDR_OPS_H_

#include "absl/status/status.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

// Both functions compute Kernels::GatedDeltaRuleRecurrent's function over a
// varlen batch and enqueue it on `stream` (a cudaStream_t; null: the legacy
// default stream) without waiting for it:
//   q, k [T, Hk, K]; v [T, Hv, V]; g [T, Hv] log decay (empty view: no
//   decay); beta [T, Hv]; cu_seqlens i32 [B + 1]; state pool [S, Hv, K, V]
//   f32 read from and written to `slots` (i32 [B]) in place; out [T, Hv, V].
// Value head h uses key head h / (Hv / Hk). Every tensor is in device memory
// (Device::kCuda) with unit last stride; outer strides may be anything.
// q, k, v and out share one dtype, f32 or bf16 (the chunked form also takes
// an f32 out for bf16 inputs); g and beta are each f32 or bf16; state is
// f32. The state is carried in fp32 throughout; arithmetic is fp32, except
// that the chunked form of bf16 inputs runs its chunk products on tensor
// cores (bf16 operands, fp32 accumulation), to about bf16 accuracy.
//
// cu_seqlens and slots live on the device and their values are not checked
// here (that would need a device-to-host copy): a sequence whose slot is
// outside [0, S) (e.g. −1 for a padding row) gets zero output and touches no
// state; a sequence whose offsets are not 0 <= cu[b] <= cu[b + 1] <= T is
// skipped, its rows of out left as they were. Slots must be distinct; out
// may not alias an input.
//
// Returns OK; INVALID_ARGUMENT naming the argument when a dtype, rank,
// shape, device or stride does not fit, Hv is not a multiple of Hk, or a
// head dimension is outside what the form supports (nothing is enqueued
// then); INTERNAL when the launch fails.

// Token by token (the decode path). K is at most kGdrRecurrentMaxKeyDim
// (256); V is unbounded.
absl::Status CudaGatedDeltaRuleRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream);

// Chunked (WY/UT) form with chunks of kGdrChunkSize tokens from each
// sequence's start (the prefill path). K must be 32, 64 or 128 and V a positive
// multiple of kGdrChunkedValueTile (32); other sizes are INVALID_ARGUMENT.
absl::Status CudaGatedDeltaRuleChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GDR_GDR_OPS_H_
