// The decode step of the gated delta rule on the GPU: one token per sequence,
// state read from and written back to a pool in place.
//
// This header has no CUDA includes; pointers are device pointers and the
// stream is a cudaStream_t passed as void* (nullptr: the legacy default
// stream). gated_delta_rule_step_op.h wraps it for TensorViews.
#ifndef DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_H_
#define DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_H_

#include <cstdint>

#include "absl/status/status.h"

namespace deltaserve {

// Largest key head dimension the step kernel supports (the value head
// dimension is unbounded).
inline constexpr int kGdrStepMaxKeyDim = 256;

// Device pointers, sizes and strides of one decode step. All tensors are f32
// except `slots`; strides are in elements and every innermost stride is 1.
//
// For sequence b and value head h (key head h / (Hv / Hk)), with S the
// [K, V] state at state[slots[b], h]:
//   S ← exp(g[b, h]) · S                 (no decay when g is null)
//   δ = beta[b, h] · (v[b, h] − Sᵀ k)
//   S ← S + k δᵀ
//   out[b, h] = Sᵀ (scale · q)
// where q and k are first divided by sqrt(Σx² + 1e-6) when l2norm_qk.
struct GdrStepArgs {
  const float* q = nullptr;        // [B, Hk, K]
  const float* k = nullptr;        // [B, Hk, K]
  const float* v = nullptr;        // [B, Hv, V]
  const float* g = nullptr;        // [B, Hv] log decay, or null
  const float* beta = nullptr;     // [B, Hv]
  float* state = nullptr;          // [num_slots, Hv, K, V]
  const int32_t* slots = nullptr;  // [B]
  float* out = nullptr;            // [B, Hv, V]

  int64_t batch = 0;      // B
  int64_t num_slots = 0;  // S, the pool's first dimension
  int num_k_heads = 0;    // Hk
  int num_v_heads = 0;    // Hv, a multiple of Hk
  int key_dim = 0;        // K, in [1, kGdrStepMaxKeyDim]
  int value_dim = 0;      // V

  // Strides of the batch (first) and head (second) dimensions.
  int64_t q_stride[2] = {0, 0};
  int64_t k_stride[2] = {0, 0};
  int64_t v_stride[2] = {0, 0};
  int64_t out_stride[2] = {0, 0};
  // Strides of the batch dimension of g and beta.
  int64_t g_stride = 0;
  int64_t beta_stride = 0;
  // Strides of the slot, head and key dimensions of the pool.
  int64_t state_stride[3] = {0, 0, 0};

  float scale = 1.0f;
  bool l2norm_qk = false;
};

// Enqueues the step on `stream` and returns without waiting for it.
//
// A sequence whose slot is outside [0, num_slots) (e.g. −1 for a padding row)
// is skipped: its out row is set to zero and no state is touched. Slots must
// be distinct; out may not alias any input.
//
// Returns OK (B = 0 launches nothing); INVALID_ARGUMENT naming the field when
// a size is out of range, Hv is not a multiple of Hk or a pointer that the
// sizes require is null; INTERNAL (via CudaStatus) when the launch fails.
absl::Status LaunchGatedDeltaRuleStep(const GdrStepArgs& args, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GATED_DELTA_RULE_STEP_H_
