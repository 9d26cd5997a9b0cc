// Device-resident per-sequence state: recurrent-layer state slots and paged
// attention KV.
//
// A StatePool owns, for every gated-delta-rule layer, a state pool
// [slots, Hv, K, V] and a conv-tail pool [slots, conv_dim, W − 1] (fp32), and
// for every attention layer a K and a V page pool [pages, page_size, Hkv, D].
// A sequence holds one slot (the same index in every recurrent layer) and a
// list of pages (the same page ids in every attention layer). Owned by the
// engine; not thread-safe (the engine thread is its only user).
#ifndef DELTASERVE_ENGINE_STATE_STATE_POOL_H_
#define DELTASERVE_ENGINE_STATE_STATE_POOL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "kernels/tensor.h"

namespace deltaserve {

// A sequence's KV pages. Global-attention layers keep every position:
// `global[i]` is the physical page of logical page i. Sliding-window layers
// keep only the positions a future query can see: `window[i]` is −1 once the
// window has moved past logical page i and the page went back to the pool.
// The same page ids serve every layer of a kind.
struct SeqPages {
  std::vector<int32_t> global;
  std::vector<int32_t> window;

  bool empty() const { return global.empty() && window.empty(); }
  // Physical pages held.
  int64_t held() const;
};

// A sequence's state copied off the device: per recurrent layer its state
// and conv tail, per attention layer the keys and values of the positions it
// keeps (all of them, or for a sliding-window layer those from window_from).
// Plain host memory; movable.
struct SavedSequence {
  int64_t num_tokens = 0;
  int64_t window_from = 0;  // first position kept by sliding-window layers
  // Indexed by layer; empty for layers without state of that kind.
  std::vector<std::vector<float>> recurrent;  // state then conv tail
  std::vector<std::vector<float>> keys;       // [positions, Hkv, D]
  std::vector<std::vector<float>> values;     // [positions, Hkv, D]

  int64_t bytes() const;
};

class StatePool {
 public:
  struct Options {
    int max_slots = 64;
    int page_size = 16;
    // Total KV capacity in tokens (rounded up to whole pages).
    int64_t kv_capacity_tokens = 65536;
  };

  // INVALID_ARGUMENT for non-positive sizes or sliding-window layers with
  // different windows.
  static absl::StatusOr<std::unique_ptr<StatePool>> Create(
      const ModelSpec& spec, const Options& options);

  // A zeroed slot; RESOURCE_EXHAUSTED when every slot is taken.
  absl::StatusOr<int> AllocateSlot();
  void FreeSlot(int slot);
  int free_slots() const { return static_cast<int>(free_slots_.size()); }

  // Grows `pages` so that it covers `tokens` positions. RESOURCE_EXHAUSTED
  // (and `pages` unchanged) when the pool has too few free pages.
  absl::Status EnsureCapacity(SeqPages* pages, int64_t tokens);
  // Gives empty `pages` what a saved sequence of `num_tokens` positions
  // needs to be restored (sliding-window layers: only the window's pages).
  absl::Status RestoreCapacity(SeqPages* pages, int64_t num_tokens);
  // Extra pages a sequence holding `pages` with `have` positions needs for
  // `more` positions; for empty `pages` and have > 0, what restoring it and
  // adding `more` positions needs.
  int64_t PagesNeeded(const SeqPages& pages, int64_t have, int64_t more) const;
  // Returns the sliding-window pages that no query from position `next_pos`
  // on can see.
  void ReleaseOutOfWindow(SeqPages* pages, int64_t next_pos);
  // Returns every page of `pages` to the pool and clears it.
  void FreePages(SeqPages* pages);
  int64_t free_pages() const {
    return static_cast<int64_t>(free_pages_.size());
  }
  int64_t num_pages() const { return num_pages_; }
  int page_size() const { return options_.page_size; }
  int max_slots() const { return options_.max_slots; }

  // Pages needed to hold `tokens` positions.
  int64_t PagesFor(int64_t tokens) const {
    return (tokens + options_.page_size - 1) / options_.page_size;
  }

  bool has_global_attention() const { return has_global_; }
  // The sliding window of the model's sliding-window layers (0: none).
  int window() const { return window_; }
  // First position a query at `next_pos` or later can see in a
  // sliding-window layer.
  int64_t WindowStart(int64_t next_pos) const {
    return window_ > 0 ? std::max<int64_t>(0, next_pos - window_ + 1) : 0;
  }

  // Copies the state of the sequence in `slot` with KV in `pages` covering
  // its first `num_tokens` positions.
  SavedSequence Save(int slot, const SeqPages& pages, int64_t num_tokens) const;
  // Writes `saved` into `slot` and `pages` (as RestoreCapacity made them).
  // INVALID_ARGUMENT when `saved` does not fit this pool's model or `pages`
  // is too short.
  absl::Status Restore(const SavedSequence& saved, int slot,
                       const SeqPages& pages);

  // Views of layer `layer`'s pools (empty for layers of another kind).
  TensorView gdr_state(int layer) const;
  TensorView conv_state(int layer) const;
  TensorView k_pages(int layer) const;
  TensorView v_pages(int layer) const;

 private:
  struct LayerPools {
    std::vector<float> gdr_state, conv_state, k_pages, v_pages;
    TensorView gdr_view, conv_view, k_view, v_view;
    bool windowed = false;  // sliding-window attention layer
  };
  StatePool() = default;

  // Takes `n` free pages (the caller checked there are enough).
  void TakePages(int64_t n, std::vector<int32_t>* out);

  Options options_;
  int64_t num_pages_ = 0;
  bool has_global_ = false;
  int window_ = 0;
  std::vector<LayerPools> layers_;
  std::vector<int> free_slots_;
  std::vector<int32_t> free_pages_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STATE_POOL_H_
