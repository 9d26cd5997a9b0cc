// Raw launchers of the linear / symmetric power attention mixers and their
// helpers on the GPU (the functions of Kernels::LinearAttention*,
// PowerAttention*, PowerAttentionGates and CumulativeRope, kernels.h).
// No CUDA includes; pointers are device pointers, the stream a
// cudaStream_t passed as void*. mixer_ops.h wraps them for TensorViews.
#ifndef DELTASERVE_KERNELS_CUDA_MIXERS_MIXERS_H_
#define DELTASERVE_KERNELS_CUDA_MIXERS_MIXERS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace deltaserve {

// Largest key head dimension and shared-memory budget of the mixer kernel:
// the feature table of a power map (F · (p + 8) bytes) must fit in
// kMixerMaxTableBytes.
inline constexpr int kMixerMaxKeyDim = 256;
inline constexpr int64_t kMixerMaxTableBytes = 160 * 1024;

// One linear (degree 0: φ = elu + 1, F = K) or power (even degree p, F =
// C(K + p − 1, p)) attention call over a varlen batch, all f32. Strides in
// elements; innermost strides are 1.
struct MixerArgs {
  const float* q = nullptr;             // [T, H, K]
  const float* k = nullptr;             // [T, Hkv, K]
  const float* v = nullptr;             // [T, Hkv, V]
  const float* g = nullptr;             // [T, Hkv] log gates, or null
  float* state = nullptr;               // [S, Hkv, F, V]
  float* normalizer = nullptr;          // [S, Hkv, F]
  const int32_t* cu_seqlens = nullptr;  // [B + 1]
  const int32_t* slots = nullptr;       // [B]
  float* out = nullptr;                 // [T, H, V]
  int64_t tokens = 0, batch = 0, num_slots = 0, features = 0;
  int heads = 0, kv_heads = 0, key_dim = 0, value_dim = 0;
  int degree = 0;
  int64_t q_stride[2] = {0, 0}, k_stride[2] = {0, 0}, v_stride[2] = {0, 0},
          out_stride[2] = {0, 0};
  int64_t g_stride = 0;
  int64_t state_stride[3] = {0, 0, 0};    // slot, head, feature
  int64_t normalizer_stride[2] = {0, 0};  // slot, head
  float factor = 1.0f;                    // φ̂(q) = factor · φ(q)
  float eps = 0.0f;
  bool normalize = false;
};

// Runs the recurrence token by token, one block per (sequence, kv head, 32
// value columns); the state stays in its pool. A sequence whose slot is
// outside [0, S) gets zero output rows and touches no state; malformed
// offsets skip the sequence. OK, or INVALID_ARGUMENT for sizes the kernel
// does not take, INTERNAL for a failed launch.
absl::Status LaunchMixer(const MixerArgs& args, void* stream);

// g = logsigmoid(gate_logits + bias) and rate = softplus(rate_logits) over
// [T, Hkv] (either pair may be null).
struct MixerGatesArgs {
  const float* gate_logits = nullptr;
  float* g = nullptr;
  const float* rate_logits = nullptr;
  float* rate = nullptr;
  int64_t tokens = 0;
  int heads = 0;
  int64_t gate_logits_stride = 0, g_stride = 0, rate_logits_stride = 0,
          rate_stride = 0;
  float bias = 0.0f;
};
absl::Status LaunchMixerGates(const MixerGatesArgs& args, void* stream);

// CumulativeRope: one block per (sequence, kv head), a thread per rotary
// pair; angles advance in double and wrap to [−π, π] like CpuKernels.
struct CumulativeRopeArgs {
  float* q = nullptr;                   // [T, H, D]
  float* k = nullptr;                   // [T, Hkv, D]
  const float* rate = nullptr;          // [T, Hkv]
  const int32_t* cu_seqlens = nullptr;  // [B + 1]
  float* angle = nullptr;               // [S, Hkv, rot_dim / 2]
  const int32_t* slots = nullptr;       // [B]
  int64_t tokens = 0, batch = 0, num_slots = 0;
  int heads = 0, kv_heads = 0, rot_dim = 0;
  int64_t q_stride[2] = {0, 0}, k_stride[2] = {0, 0};
  int64_t rate_stride = 0;
  int64_t angle_stride[2] = {0, 0};  // slot, head
  float theta = 10000.0f;
};
absl::Status LaunchCumulativeRope(const CumulativeRopeArgs& args, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_MIXERS_MIXERS_H_
