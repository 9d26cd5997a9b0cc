// Raw launchers of the gated delta rule over a varlen batch on the GPU: the
// token-by-token recurrent form and the chunked (WY/UT) prefill form.
//
// This header has no CUDA includes; pointers are device pointers and the
// stream is a cudaStream_t passed as void* (nullptr: the legacy default
// stream). gdr_ops.h wraps both for TensorViews.
#ifndef DELTASERVE_KERNELS_CUDA_GDR_GDR_H_
#define DELTASERVE_KERNELS_CUDA_GDR_GDR_H_

#include <cstdint>

#include "absl/status/status.h"

namespace deltaserve {

// Largest key head dimension of the recurrent kernel (V is unbounded).
inline constexpr int kGdrRecurrentMaxKeyDim = 256;
// Value columns one block of the chunked kernel owns; V must be a multiple.
inline constexpr int kGdrChunkedValueTile = 32;

// Device pointers, sizes and strides of one gated-delta-rule call over a
// varlen batch of T tokens in B sequences. Strides are in elements; every
// innermost stride is 1.
//
// For sequence b (tokens [cu_seqlens[b], cu_seqlens[b + 1])) and value head h
// (key head h / (Hv / Hk)), with S the [K, V] state at state[slots[b], h],
// token by token:
//   S ← exp(g_t) · S                    (no decay when g is null)
//   δ = beta_t · (v_t − Sᵀ k_t)
//   S ← S + k_t δᵀ
//   out_t = Sᵀ (scale · q_t)
// where q and k are first divided by sqrt(Σx² + 1e-6) when l2norm_qk.
struct GdrArgs {
  // q, k and v are f32 (`act_bf16` false) or bf16 (true); g, beta and out
  // are each f32 or bf16 by their own flag (out must match q, k and v,
  // except that the chunked form takes an f32 out for bf16 inputs). state
  // is always f32.
  const void* q = nullptr;              // [T, Hk, K]
  const void* k = nullptr;              // [T, Hk, K]
  const void* v = nullptr;              // [T, Hv, V]
  const void* g = nullptr;              // [T, Hv] log decay, or null
  const void* beta = nullptr;           // [T, Hv]
  float* state = nullptr;               // [num_slots, Hv, K, V]
  const int32_t* cu_seqlens = nullptr;  // [B + 1]
  const int32_t* slots = nullptr;       // [B]
  void* out = nullptr;                  // [T, Hv, V]
  bool act_bf16 = false;
  bool out_bf16 = false;
  bool g_bf16 = false;
  bool beta_bf16 = false;

  int64_t tokens = 0;     // T
  int64_t batch = 0;      // B
  int64_t num_slots = 0;  // S, the pool's first dimension
  int num_k_heads = 0;    // Hk
  int num_v_heads = 0;    // Hv, a multiple of Hk
  int key_dim = 0;        // K
  int value_dim = 0;      // V

  // Strides of the token (first) and head (second) dimensions.
  int64_t q_stride[2] = {0, 0};
  int64_t k_stride[2] = {0, 0};
  int64_t v_stride[2] = {0, 0};
  int64_t out_stride[2] = {0, 0};
  // Strides of the token dimension of g and beta (their head stride is 1).
  int64_t g_stride = 0;
  int64_t beta_stride = 0;
  // Strides of the slot, head and key dimensions of the pool.
  int64_t state_stride[3] = {0, 0, 0};
  // Strides of cu_seqlens and slots.
  int64_t cu_seqlens_stride = 1;
  int64_t slots_stride = 1;

  float scale = 1.0f;
  bool l2norm_qk = false;
};

// Device-side data is not validated on the host. In both launchers a
// sequence whose slot is outside [0, num_slots) (e.g. −1 for padding) gets
// zero output rows and touches no state; a sequence whose offsets are not
// 0 <= cu[b] <= cu[b + 1] <= T is skipped (its rows of out are not written).
// Slots must be distinct; out may not alias any input.

// Token-by-token form; K in [1, kGdrRecurrentMaxKeyDim], any V. Enqueues on
// `stream` and returns without waiting. Returns OK (B = 0 launches nothing);
// INVALID_ARGUMENT naming the field when a size is out of range, Hv is not a
// multiple of Hk or a required pointer is null; INTERNAL (via CudaStatus)
// when the launch fails.
absl::Status LaunchGdrRecurrent(const GdrArgs& args, void* stream);

// Chunked form, chunks of kGdrChunkSize (kernels.h) tokens from each
// sequence's start. K must be 32, 64 or 128 and V a positive multiple of
// kGdrChunkedValueTile. f32 inputs run in fp32 on CUDA cores; bf16 inputs
// run the chunk products on tensor cores (bf16 operands, fp32
// accumulation, the state carried in fp32). Same return codes as
// LaunchGdrRecurrent.
absl::Status LaunchGdrChunked(const GdrArgs& args, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GDR_GDR_H_
