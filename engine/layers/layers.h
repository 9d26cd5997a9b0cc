// Forward passes of one block's parts (token mixers and MLP) over a varlen
// batch, expressed as Kernels calls.
//
// Stateless functions; the caller (ModelRunner) owns the weights, the state
// pool and the scratch buffers, and calls them from one thread.
#ifndef DELTASERVE_ENGINE_LAYERS_LAYERS_H_
#define DELTASERVE_ENGINE_LAYERS_LAYERS_H_

#include <vector>

#include "absl/status/status.h"
#include "engine/model/model_spec.h"
#include "engine/model/weights.h"
#include "kernels/kernels.h"

namespace deltaserve {

// Scratch memory reused across layers and steps; grows as needed.
class Scratch {
 public:
  // A buffer of at least n floats for use `id` (distinct ids never alias).
  float* Get(int id, int64_t n);

 private:
  std::vector<std::vector<float>> buffers_;
};

// The batch layout every layer sees (host arrays for the CPU kernels).
struct BatchLayout {
  int64_t num_tokens = 0;   // T
  int num_seqs = 0;         // B
  bool decode = false;      // every sequence has exactly one new token
  TensorView positions;     // i32 [T]
  TensorView cu_seqlens;    // i32 [B + 1]
  TensorView slots;         // i32 [B]
  TensorView page_table;         // i32 [B, pages]: global attention
  TensorView window_page_table;  // i32 [B, pages]: sliding-window attention
  TensorView start_pos;     // i32 [B]
  TensorView context_lens;  // i32 [B]
};

// Everything a layer call needs besides its input and output.
struct LayerContext {
  Kernels* kernels = nullptr;
  Stream stream;
  Scratch* scratch = nullptr;
  const BatchLayout* batch = nullptr;
  float rms_norm_eps = 1e-6f;
  bool norm_zero_centered = true;
};

// out[T, D] = gated-delta-rule mixer(x[T, D]); reads and updates the
// sequences' recurrent state and conv tails in `state` / `conv_state`.
absl::Status GatedDeltaRuleForward(const LayerContext& ctx,
                                   const GatedDeltaRuleSpec& spec,
                                   const GatedDeltaRuleWeights& w,
                                   const TensorView& state,
                                   const TensorView& conv_state,
                                   const TensorView& x, const TensorView& out);

// out[T, D] = softmax attention mixer(x[T, D]); appends the new keys and
// values to the paged KV pools.
absl::Status AttentionForward(const LayerContext& ctx,
                              const AttentionSpec& spec,
                              const AttentionWeights& w,
                              const TensorView& k_pages,
                              const TensorView& v_pages, const TensorView& x,
                              const TensorView& out);

// out[T, D] = down(silu(gate(x)) · up(x)).
absl::Status SwiGluMlpForward(const LayerContext& ctx, int intermediate_size,
                              const BlockWeights& w, const TensorView& x,
                              const TensorView& out);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_LAYERS_LAYERS_H_
