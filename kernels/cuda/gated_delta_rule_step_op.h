// TensorView front end of the gated-delta-rule decode step on the GPU.
#ifndef DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_OP_H_
#define DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_OP_H_

#include "absl/status/status.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

// One token per sequence of Kernels::GatedDeltaRuleRecurrent (cu_seqlens =
// [0, 1, ..., B]), enqueued on `stream` (a cudaStream_t; null: the legacy
// default stream) without waiting for it:
//   q, k [B, Hk, K]; v [B, Hv, V]; g [B, Hv] log decay (empty view: no decay);
//   beta [B, Hv]; state pool [S, Hv, K, V] read from and written to `slots`
//   (i32 [B]) in place; out [B, Hv, V].
// Value head h uses key head h / (Hv / Hk). Every tensor is in device memory
// (Device::kCuda), f32 except slots, with unit last stride; outer strides may
// be anything. K is at most kGdrStepMaxKeyDim.
//
// Slot values live on the device and are not checked here: a slot outside
// [0, S) (e.g. −1 for a padding row) makes the kernel set that row of out to
// zero and touch no state. Slots must be distinct.
//
// Returns OK; INVALID_ARGUMENT naming the argument when a dtype, rank, shape,
// device or stride does not fit, Hv is not a multiple of Hk, or K exceeds the
// limit (nothing is enqueued then); INTERNAL when the launch fails.
absl::Status GatedDeltaRuleStep(const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView& g,
                                const TensorView& beta, const TensorView& state,
                                const TensorView& slots, float scale,
                                bool l2norm_qk, const TensorView& out,
                                Stream stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_OP_H_
