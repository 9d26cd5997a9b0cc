// Forward passes of the linear-attention token mixers over a varlen batch:
// linear attention (fla's linear_attn, feature map elu + 1) and gated
// symmetric power attention with its data-dependent rotary embedding
// (conformal-sympow), expressed as Kernels calls.
//
// Stateless functions, like those of layers.h: the caller (ModelRunner)
// owns the weights, the state pool and the scratch buffers, and calls them
// from one thread.
#ifndef DELTASERVE_ENGINE_LAYERS_LINEAR_LAYERS_H_
#define DELTASERVE_ENGINE_LAYERS_LINEAR_LAYERS_H_

#include "absl/status/status.h"
#include "engine/layers/layers.h"
#include "engine/model/model_spec.h"
#include "engine/model/weights.h"
#include "kernels/kernels.h"

namespace deltaserve {

// out[T, D] += linear attention mixer(x[T, D]): q, k, v projections, the
// mixer (chunked for prefill, recurrent for decode steps), each head's
// output RMSNorm, o_proj. Reads and updates the sequences' state
// [S, Hkv, K, V] and normaliser [S, Hkv, K] in place. Returns what the
// kernels return, and RESOURCE_EXHAUSTED when scratch memory cannot grow.
absl::Status LinearAttentionForward(const LayerContext& ctx,
                                    const LinearAttentionSpec& spec,
                                    const LinearAttentionWeights& w,
                                    const TensorView& state,
                                    const TensorView& normalizer,
                                    const TensorView& x, const TensorView& out);

// out[T, D] += power attention mixer(x[T, D]): as LinearAttentionForward,
// with the log gates logsigmoid(g_proj(x) + gate_bias) when spec.gating and
// the data-dependent rotary embedding of q and k (angle rates
// softplus(r_proj(x))) when spec.rotary, whose angles [S, Hkv,
// rotary_dim / 2] it reads and updates in `angle` (empty without rotary).
// Errors as LinearAttentionForward.
absl::Status PowerAttentionForward(const LayerContext& ctx,
                                   const LinearAttentionSpec& spec,
                                   const LinearAttentionWeights& w,
                                   const TensorView& state,
                                   const TensorView& normalizer,
                                   const TensorView& angle, const TensorView& x,
                                   const TensorView& out);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_LAYERS_LINEAR_LAYERS_H_
