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

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "kernels/tensor.h"

namespace deltaserve {

// A sequence's state copied off the device: per recurrent layer its state
// and conv tail, per attention layer the keys and values of its positions.
// Plain host memory; movable.
struct SavedSequence {
  int64_t num_tokens = 0;
  // Indexed by layer; empty for layers without state of that kind.
  std::vector<std::vector<float>> recurrent;  // state then conv tail
  std::vector<std::vector<float>> keys;       // [num_tokens, Hkv, D]
  std::vector<std::vector<float>> values;     // [num_tokens, Hkv, D]

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

  // INVALID_ARGUMENT for non-positive sizes.
  static absl::StatusOr<std::unique_ptr<StatePool>> Create(
      const ModelSpec& spec, const Options& options);

  // A zeroed slot; RESOURCE_EXHAUSTED when every slot is taken.
  absl::StatusOr<int> AllocateSlot();
  void FreeSlot(int slot);
  int free_slots() const { return static_cast<int>(free_slots_.size()); }

  // Grows `pages` so that it covers `tokens` positions. RESOURCE_EXHAUSTED
  // (and `pages` unchanged) when the pool has too few free pages.
  absl::Status EnsureCapacity(std::vector<int32_t>* pages, int64_t tokens);
  // Returns every page of `pages` to the pool and clears it.
  void FreePages(std::vector<int32_t>* pages);
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

  // Copies the state of the sequence in `slot` with KV in `pages` covering
  // its first `num_tokens` positions.
  SavedSequence Save(int slot, const std::vector<int32_t>& pages,
                     int64_t num_tokens) const;
  // Writes `saved` into `slot` and `pages` (which must cover
  // saved.num_tokens positions). INVALID_ARGUMENT when `saved` does not fit
  // this pool's model or `pages` is too short.
  absl::Status Restore(const SavedSequence& saved, int slot,
                       const std::vector<int32_t>& pages);

  // Views of layer `layer`'s pools (empty for layers of another kind).
  TensorView gdr_state(int layer) const;
  TensorView conv_state(int layer) const;
  TensorView k_pages(int layer) const;
  TensorView v_pages(int layer) const;

 private:
  struct LayerPools {
    std::vector<float> gdr_state, conv_state, k_pages, v_pages;
    TensorView gdr_view, conv_view, k_view, v_view;
  };
  StatePool() = default;

  Options options_;
  int64_t num_pages_ = 0;
  std::vector<LayerPools> layers_;
  std::vector<int> free_slots_;
  std::vector<int32_t> free_pages_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STATE_POOL_H_
