// TensorView front ends of the linear / power attention mixers on the GPU,
// with the signatures and checks of the Kernels methods (kernels/kernels.h)
// for CudaKernels to forward to. Tensors are f32 in device memory with unit
// last stride. cu_seqlens and slots are device data and not checked here:
// a sequence whose slot is outside the pool gets zero output and touches
// no state; malformed offsets skip the sequence. Returns OK;
// INVALID_ARGUMENT naming the argument when a dtype, shape, device or size
// does not fit (nothing is enqueued then); INTERNAL when a launch fails.
#ifndef DELTASERVE_KERNELS_CUDA_MIXERS_MIXER_OPS_H_
#define DELTASERVE_KERNELS_CUDA_MIXERS_MIXER_OPS_H_

#include "absl/status/status.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

// `degree` of a linear-attention call (φ = elu + 1).
inline constexpr int kLinearFeatureMap = -1;

// Linear attention (degree kLinearFeatureMap) or power attention (degree
// even, in [2, 16]; anything else is INVALID_ARGUMENT): both Kernels entry
// points of each, which compute the same function.
absl::Status CudaMixer(const char* op, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& g,
                       const TensorView& cu_seqlens, const TensorView& state,
                       const TensorView& normalizer, const TensorView& slots,
                       int degree, float scale, bool normalize,
                       const TensorView& out, Stream stream);

absl::Status CudaPowerAttentionGates(const TensorView& gate_logits,
                                     const TensorView& rate_logits,
                                     float gate_bias, const TensorView& g,
                                     const TensorView& rate, Stream stream);

absl::Status CudaCumulativeRope(const TensorView& q, const TensorView& k,
                                const TensorView& rate,
                                const TensorView& cu_seqlens,
                                const TensorView& angle,
                                const TensorView& slots, int rot_dim,
                                float theta, Stream stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_MIXERS_MIXER_OPS_H_
