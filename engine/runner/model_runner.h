// Runs a model's forward pass over a batch of sequences.
//
// A ModelRunner binds one Model, one Kernels implementation and one
// StatePool (none owned; all must outlive it). Each Forward call continues
// every sequence of the batch from the state in its slot and pages and
// leaves the updated state there. Not thread-safe: the engine thread is its
// only caller.
#ifndef DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_
#define DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/layers/layers.h"
#include "engine/model/model.h"
#include "engine/state/state_pool.h"
#include "kernels/kernels.h"

namespace deltaserve {

// One sequence's part of a batch.
struct SequenceInput {
  int slot = -1;  // recurrent state slot
  // KV pages (enough for the new tokens); null for a model without
  // attention layers.
  const SeqPages* pages = nullptr;
  int64_t start_pos = 0;             // tokens already in the state
  absl::Span<const int32_t> tokens;  // new tokens (at least one)
};

class ModelRunner {
 public:
  ModelRunner(const Model* model, Kernels* kernels, StatePool* pool);

  // Feeds the batch's new tokens and writes logits to `logits`: one row of
  // vocab_size floats per sequence (its last new token), or, when
  // `all_logits`, one row per new token in batch order. INVALID_ARGUMENT for
  // an empty batch or sequence, a token id outside the vocabulary, or too few
  // pages; kernel errors are passed through.
  absl::Status Forward(absl::Span<const SequenceInput> batch, bool all_logits,
                       std::vector<float>* logits);

 private:
  const Model* model_;
  Kernels* kernels_;
  StatePool* pool_;
  Scratch scratch_;
  std::vector<float> x_, xn_, mix_;
  std::vector<int32_t> ids_, positions_, cu_seqlens_, slots_, page_table_,
      window_page_table_, start_pos_, context_lens_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_
