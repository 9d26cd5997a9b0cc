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
#include "kernels/memory.h"

namespace deltaserve {

// Scratch memory in the kernels' memory, reused across layers and steps;
// grows as needed. Owned by one ModelRunner; not thread-safe.
class Scratch {
 public:
  explicit Scratch(Kernels* kernels) : kernels_(kernels) {}

  // A buffer of at least `bytes` for use `id` (distinct ids never alias).
  // Growing one first waits for the kernels' stream (queued work may still
  // use the old one) and changes generation(). RESOURCE_EXHAUSTED when the
  // memory is full.
  absl::StatusOr<void*> Get(int id, int64_t bytes);
  // Changes whenever a buffer moves (recorded work must be recorded anew).
  int64_t generation() const { return generation_; }

 private:
  Kernels* kernels_;
  std::vector<Buffer> buffers_;
  int64_t generation_ = 0;
};

// The batch layout every layer sees (index tensors in the kernels' memory).
struct BatchLayout {
  int64_t num_tokens = 0;  // T
  int num_seqs = 0;        // B
  bool decode = false;     // every sequence has exactly one new token
  // Some sequences have one new token and others more: layers that compute
  // the two kinds differently (the delta rule: recurrent in fp32 for one
  // token, chunked for more) run each kind on its own slots, so that a
  // sequence's result does not depend on what it is batched with.
  bool mixed = false;
  TensorView ids;                // i32 [T]
  TensorView positions;          // i32 [T]
  TensorView cu_seqlens;         // i32 [B + 1]
  TensorView slots;              // i32 [B]
  TensorView single_slots;       // i32 [B]: slots, −1 where n_b > 1
  TensorView multi_slots;        // i32 [B]: slots, −1 where n_b = 1
  TensorView page_table;         // i32 [B, pages]: global attention
  TensorView window_page_table;  // i32 [B, pages]: sliding-window attention
  TensorView start_pos;          // i32 [B]
  TensorView context_lens;       // i32 [B]
};

// Everything a layer call needs besides its input and output.
struct LayerContext {
  Kernels* kernels = nullptr;
  Stream stream;
  Scratch* scratch = nullptr;
  const BatchLayout* batch = nullptr;
  // Activations' element type (f32 on the CPU, bf16 on the GPU) and where
  // they live.
  DType act = DType::kF32;
  DeviceMemory* memory = nullptr;
  float rms_norm_eps = 1e-6f;
  bool norm_zero_centered = true;
};

// Every function below returns what the kernels return, and
// RESOURCE_EXHAUSTED when scratch memory cannot grow.

// Each mixer and the MLP add their output into `out` (the residual stream,
// f32), in the accumulating epilogue of their last matrix product.

// out[T, D] += gated-delta-rule mixer(x[T, D]); reads and updates the
// sequences' recurrent state and conv tails in `state` / `conv_state`.
absl::Status GatedDeltaRuleForward(const LayerContext& ctx,
                                   const GatedDeltaRuleSpec& spec,
                                   const GatedDeltaRuleWeights& w,
                                   const TensorView& state,
                                   const TensorView& conv_state,
                                   const TensorView& x, const TensorView& out);

// out[T, D] += softmax attention mixer(x[T, D]); appends the new keys and
// values to the paged KV pools.
absl::Status AttentionForward(const LayerContext& ctx,
                              const AttentionSpec& spec,
                              const AttentionWeights& w,
                              const TensorView& k_pages,
                              const TensorView& v_pages, const TensorView& x,
                              const TensorView& out);

// out[T, D] += down(silu(gate(x)) · up(x)).
absl::Status SwiGluMlpForward(const LayerContext& ctx, int intermediate_size,
                              const BlockWeights& w, const TensorView& x,
                              const TensorView& out);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_LAYERS_LAYERS_H_
