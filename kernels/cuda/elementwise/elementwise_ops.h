// TensorView front ends of the CUDA row-wise and element-wise kernels: one
// function per Kernels method (same arguments, same semantics; see
// kernels/kernels.h), for the CudaKernels class to call.
//
// Every tensor lives in device memory (Device::kCuda) and has unit last
// stride; outer strides may be anything (as in CpuKernels), and an output
// that the interface lets alias an input must then have the same strides.
// Dtypes: activations are f32 or bf16, and the activations of one call
// (inputs and outputs) share one dtype, the dtype of its first activation
// argument; weights (norm weights, embedding table, conv weight, a_log,
// dt_bias) are f32 or bf16 independently; conv_state is f32; ids,
// positions, cu_seqlens and slots are i32. All arithmetic is f32.
//
// Each function enqueues its work on `stream` (a cudaStream_t in
// stream.native; null: the legacy default stream) and returns without
// waiting for it, except CudaEmbedding (see there). They return OK;
// INVALID_ARGUMENT naming the argument when a dtype, rank, shape, device or
// stride does not fit (nothing is enqueued then); INTERNAL when a CUDA call
// or launch fails.
//
// Thread safety: the functions keep no state; calls on different streams
// may run concurrently.
#ifndef DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_OPS_H_
#define DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_OPS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/elementwise/elementwise.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

// Kernels::Embedding. ids i32 [T]; table [V, D] f32 or bf16; out [T, D]
// f32 or bf16 (either dtype with either table dtype).
//
// The ids are checked on the device before anything is written, and the
// function waits for the stream (cudaStreamSynchronize) to read the result:
// INVALID_ARGUMENT naming the first bad position and its id when an id is
// outside [0, V), and then out is untouched. It allocates one word with
// cudaMallocAsync per call. Not capturable in a CUDA graph.
absl::Status CudaEmbedding(const TensorView& ids, const TensorView& table,
                           const TensorView& out, Stream stream);

// CudaEmbedding without waiting, so that it can be recorded in a CUDA graph:
// `error_word` (one device word the caller owns) receives the id check's
// result (kEmbeddingNoError when every id is in range), and when an id is
// out of range nothing is written to out. The caller checks ids beforehand
// or reads the word itself.
absl::Status CudaEmbeddingNoWait(const TensorView& ids, const TensorView& table,
                                 const TensorView& out, uint64_t* error_word,
                                 Stream stream);

// Kernels::RmsNorm. x, out [R, D]; weight [D]. out may alias x. Unlike
// the other operations, the norms' out may be bf16 when x (and z) are f32:
// the norm then also narrows (not in place).
absl::Status CudaRmsNorm(const TensorView& x, const TensorView& weight,
                         float eps, bool zero_centered, const TensorView& out,
                         Stream stream);

// Kernels::RmsNormGated. x, z, out [R, D]; weight [D]. out may alias x.
absl::Status CudaRmsNormGated(const TensorView& x, const TensorView& z,
                              const TensorView& weight, float eps,
                              const TensorView& out, Stream stream);

// Kernels::Rope, in place on x [T, H, head_dim]; positions i32 [T].
// INVALID_ARGUMENT also when rot_dim is not even and in (0, head_dim], or
// above kRopeMaxRotDim.
absl::Status CudaRope(const TensorView& x, const TensorView& positions,
                      int rot_dim, float theta, Stream stream);

// Kernels::Add, SwiGlu and SigmoidGate over [R, N]; out may alias either
// input.
absl::Status CudaAdd(const TensorView& a, const TensorView& b,
                     const TensorView& out, Stream stream);
absl::Status CudaSwiGlu(const TensorView& gate, const TensorView& up,
                        const TensorView& out, Stream stream);
absl::Status CudaSigmoidGate(const TensorView& x, const TensorView& gate,
                             const TensorView& out, Stream stream);

// Kernels::CausalConv1d: x, out [T, C] (out may alias x); weight [C, W]
// with W in [1, kCausalConvMaxWidth]; conv_state f32 [S, C, W − 1];
// cu_seqlens i32 [B + 1]; slots i32 [B].
//
// cu_seqlens and slots live on the device and are not checked here (unlike
// CpuKernels): a sequence whose slot is outside [0, S) (e.g. −1 for a
// padding row) gets zero output rows and touches no state; offsets outside
// [0, T] are clamped to it for memory safety, so malformed cu_seqlens give
// unspecified (but in-bounds) results. Slots must be distinct.
absl::Status CudaCausalConv1d(const TensorView& x, const TensorView& weight,
                              const TensorView& cu_seqlens,
                              const TensorView& conv_state,
                              const TensorView& slots, bool silu,
                              const TensorView& out, Stream stream);

// Kernels::CausalConv1dUpdate: x, out [B, C] (out may alias x), one token
// per sequence; otherwise as CudaCausalConv1d.
absl::Status CudaCausalConv1dUpdate(const TensorView& x,
                                    const TensorView& weight,
                                    const TensorView& conv_state,
                                    const TensorView& slots, bool silu,
                                    const TensorView& out, Stream stream);

// Kernels::GdnGates: a, b [T, H] activations; a_log, dt_bias [H] weights;
// g, beta [T, H] f32 or bf16 (both the same dtype, which may differ from
// the activations': the gated delta rule wants f32 gates).
absl::Status CudaGdnGates(const TensorView& a, const TensorView& b,
                          const TensorView& a_log, const TensorView& dt_bias,
                          const TensorView& g, const TensorView& beta,
                          Stream stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_ELEMENTWISE_ELEMENTWISE_OPS_H_
