// Raw CUDA launchers of the row-wise and element-wise Kernels operations:
// RMSNorm (plain, zero-centred and SiLU-gated), rotary embedding, the binary
// element-wise ops (Add, SwiGLU, sigmoid gate), embedding gather, the gates
// of a gated-delta-rule layer and the short causal convolution.
//
// This header has no CUDA includes. Pointers are device pointers; `stream` is
// a cudaStream_t passed as void* (nullptr: the legacy default stream). Every
// launcher enqueues its work and returns without waiting for it, except
// where it says otherwise. Strides are in elements and every innermost
// stride is 1. Activations are f32 or bf16, weights f32 or bf16, and every
// kernel accumulates in f32. elementwise_ops.h wraps these for TensorViews.
//
// Every launcher returns OK (an empty problem launches nothing);
// INVALID_ARGUMENT naming the field when a dtype or size is out of range or
// a pointer that the sizes require is null; INTERNAL (via CudaStatus) when a
// launch fails.
#ifndef DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_H_
#define DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace deltaserve {

// Widest depthwise causal convolution the conv kernels support.
inline constexpr int kCausalConvMaxWidth = 16;

// Largest rot_dim of LaunchRope (its cos/sin table lives in shared memory).
inline constexpr int kRopeMaxRotDim = 8192;

// Row-wise RMSNorm of x[rows, dim]:
//   out = x / sqrt(mean(x²) + eps) · w' (· silu(z) when z is set),
// with w' = 1 + weight when zero_centered, else weight. One block per row.
// out may alias x (same stride).
struct RmsNormArgs {
  const void* x = nullptr;        // [rows, dim], dtype
  const void* z = nullptr;        // [rows, dim], dtype; null: no gate
  const void* weight = nullptr;   // [dim] contiguous, weight_dtype
  void* out = nullptr;            // [rows, dim], out_dtype
  DType dtype = DType::kF32;      // x and z: f32 or bf16
  DType out_dtype = DType::kF32;  // f32 or bf16 (may differ from dtype)
  DType weight_dtype = DType::kF32;
  int64_t rows = 0;
  int64_t dim = 0;  // < 2^31
  int64_t x_stride = 0;
  int64_t z_stride = 0;
  int64_t out_stride = 0;
  float eps = 1e-6f;
  bool zero_centered = false;
};
absl::Status LaunchRmsNorm(const RmsNormArgs& args, void* stream);

// In-place rotary embedding of x[tokens, heads, head_dim] on its first
// rot_dim dims, rotate-half pairing: dim i pairs with i + rot_dim/2 at angle
// positions[t] · theta^(−2i/rot_dim), computed in double like CpuKernels.
struct RopeArgs {
  void* x = nullptr;  // [tokens, heads, head_dim], dtype
  DType dtype = DType::kF32;
  const int32_t* positions = nullptr;  // [tokens]
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  int rot_dim = 0;  // even, in (0, head_dim], at most kRopeMaxRotDim
  float theta = 10000.0f;
};
absl::Status LaunchRope(const RopeArgs& args, void* stream);

// The binary element-wise ops over [rows, cols]:
//   kAdd:         out = a + b
//   kSwiGlu:      out = silu(a) · b        (a = gate, b = up)
//   kSigmoidGate: out = a · sigmoid(b)     (a = x, b = gate)
// out may alias a or b (same stride).
enum class BinaryOp { kAdd, kSwiGlu, kSigmoidGate };
struct BinaryArgs {
  BinaryOp op = BinaryOp::kAdd;
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
  DType dtype = DType::kF32;  // of a, b and out: f32 or bf16
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t a_stride = 0;
  int64_t b_stride = 0;
  int64_t out_stride = 0;
};
absl::Status LaunchBinary(const BinaryArgs& args, void* stream);

// out[t, :] = table[ids[t], :]. The ids are validated on the device first:
// `error` (a device word, overwritten) receives kEmbeddingNoError when every
// id is in [0, vocab), else (t << 32) | uint32(id) of the first bad position
// t, and then nothing is written to out. The caller reads `error` after the
// stream has run the op.
inline constexpr uint64_t kEmbeddingNoError = ~uint64_t{0};
struct EmbeddingArgs {
  const int32_t* ids = nullptr;  // [tokens]
  const void* table = nullptr;   // [vocab, dim], table_dtype
  void* out = nullptr;           // [tokens, dim], out_dtype
  uint64_t* error = nullptr;     // one device word
  DType table_dtype = DType::kF32;
  DType out_dtype = DType::kF32;
  int64_t tokens = 0;  // < 2^31
  int64_t vocab = 0;
  int64_t dim = 0;
  int64_t table_stride = 0;
  int64_t out_stride = 0;
};
absl::Status LaunchEmbedding(const EmbeddingArgs& args, void* stream);

// Gates of a gated-delta-rule layer from a, b [tokens, heads]:
//   g = −exp(a_log) · softplus(a + dt_bias),  beta = sigmoid(b).
struct GdnGatesArgs {
  const void* a = nullptr;        // [tokens, heads], dtype
  const void* b = nullptr;        // [tokens, heads], dtype
  const void* a_log = nullptr;    // [heads] contiguous, weight_dtype
  const void* dt_bias = nullptr;  // [heads] contiguous, weight_dtype
  void* g = nullptr;              // [tokens, heads], gate_dtype
  void* beta = nullptr;           // [tokens, heads], gate_dtype
  DType dtype = DType::kF32;
  DType weight_dtype = DType::kF32;
  DType gate_dtype = DType::kF32;
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t a_stride = 0;
  int64_t b_stride = 0;
  int64_t g_stride = 0;
  int64_t beta_stride = 0;
};
absl::Status LaunchGdnGates(const GdnGatesArgs& args, void* stream);

// Depthwise causal conv of width W (no bias, then SiLU when `silu`) over a
// varlen batch x[tokens, channels], with each sequence's last W − 1 inputs
// (oldest first) in conv_state[slots[b], c, :], read before its first token
// and updated in place. cu_seqlens null is the decode form: sequence b is
// the one token at row b (tokens = batch).
//
// cu_seqlens and slots are device data and are not validated: each
// sequence's range is clamped to [0, tokens) for memory safety, and a
// sequence whose slot is outside [0, num_slots) (e.g. −1 for padding) gets
// zero output rows and touches no state. Slots must be distinct. out may
// alias x (same stride): one thread owns a channel of a whole sequence and
// reads each input before it writes that output.
//
// Prefill batches whose out does not alias x are split into segments of
// tokens (any channel of any segment in parallel, then the states in a
// second kernel); decode batches and in-place calls walk each sequence on
// one thread per channel.
struct CausalConv1dArgs {
  const void* x = nullptr;              // [tokens, channels], dtype
  void* out = nullptr;                  // [tokens, channels], out_dtype
  const void* weight = nullptr;         // [channels, width], weight_dtype
  float* conv_state = nullptr;          // [num_slots, channels, width − 1]
  const int32_t* cu_seqlens = nullptr;  // [batch + 1], or null (decode)
  const int32_t* slots = nullptr;       // [batch]
  DType dtype = DType::kF32;
  DType out_dtype = DType::kF32;  // dtype, or bf16 for an f32 x (not in place)
  DType weight_dtype = DType::kF32;
  int64_t tokens = 0;
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t num_slots = 0;
  int width = 0;  // in [1, kCausalConvMaxWidth]
  int64_t x_stride = 0;
  int64_t out_stride = 0;
  int64_t weight_stride = 0;
  int64_t state_stride[2] = {0, 0};  // of the slot and channel dimensions
  bool silu = false;
};
absl::Status LaunchCausalConv1d(const CausalConv1dArgs& args, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_H_
