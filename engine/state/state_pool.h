// Device-resident per-sequence state: recurrent-layer state slots and paged
// attention KV.
//
// A StatePool owns, for every gated-delta-rule layer, a state pool
// [slots, Hv, K, V] and a conv-tail pool [slots, conv_dim, W − 1] (fp32); for
// every linear or power attention layer a state pool [slots, Hkv, F, V] and
// an auxiliary pool holding per slot the normaliser [Hkv, F] then the rotary
// angles [Hkv, rotary_dim / 2] (fp32, F: LinearAttentionSpec::feature_dim);
// and for every softmax attention layer a K and a V page pool
// [pages, page_size, Hkv, D] (f32, or bf16 for a GPU engine), all in a
// DeviceMemory (host memory for the CPU kernels, GPU memory for the CUDA
// ones).
// A sequence holds one slot (the same index in every recurrent layer) and a
// list of pages (the same page ids in every attention layer). One extra slot
// and one extra page, never handed out, are there for padding a batch to a
// fixed size. Owned by the engine; not thread-safe (the engine thread is its
// only user).
#ifndef DELTASERVE_ENGINE_STATE_STATE_POOL_H_
#define DELTASERVE_ENGINE_STATE_STATE_POOL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "kernels/kernels.h"
#include "kernels/memory.h"
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
// Plain host memory in f32 whatever the pool's dtypes; movable.
struct SavedSequence {
  int64_t num_tokens = 0;
  int64_t window_from = 0;  // first position kept by sliding-window layers
  // First position whose keys and values are held by any attention layer
  // (a layer holds from the later of this and its own first position). A
  // copy with kv_first > 0 feeds an incremental commit; only complete ones
  // (kv_first = 0) can be restored.
  int64_t kv_first = 0;
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
    // Where the pools live (null: host memory) and the stream their copies
    // are ordered on.
    DeviceMemory* memory = nullptr;
    Stream stream;
    // Element type of the KV pages: f32 or bf16. Recurrent state is f32.
    DType kv_dtype = DType::kF32;
  };

  // INVALID_ARGUMENT for non-positive sizes, a KV dtype other than f32 or
  // bf16, or sliding-window layers with different windows;
  // RESOURCE_EXHAUSTED when the memory cannot hold the pools.
  static absl::StatusOr<std::unique_ptr<StatePool>> Create(
      const ModelSpec& spec, const Options& options);

  // A zeroed slot; RESOURCE_EXHAUSTED when every slot is taken, INTERNAL
  // when zeroing it fails on the device.
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
  // A slot and a page no sequence owns, for padding rows of a batch.
  int padding_slot() const { return options_.max_slots; }
  int32_t padding_page() const { return static_cast<int32_t>(num_pages_); }
  DType kv_dtype() const { return options_.kv_dtype; }
  // Bytes of device memory the pools take.
  int64_t bytes() const;

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
  // its first `num_tokens` positions (waiting for the stream), the keys and
  // values only from position `kv_first` on. INTERNAL when a device copy
  // fails.
  absl::StatusOr<SavedSequence> Save(int slot, const SeqPages& pages,
                                     int64_t num_tokens,
                                     int64_t kv_first = 0) const;
  // Writes `saved` into `slot` and `pages` (as RestoreCapacity made them).
  // INVALID_ARGUMENT when `saved` does not fit this pool's model, is not
  // complete (kv_first > 0) or `pages` is too short; INTERNAL when a device
  // copy fails.
  absl::Status Restore(const SavedSequence& saved, int slot,
                       const SeqPages& pages);

  // Views of layer `layer`'s pools (empty for layers of another kind).
  // gdr_state: the matrix state of any recurrent layer ([slots, H, K, V]
  // for the gated delta rule, [slots, Hkv, F, V] for linear and power
  // attention).
  TensorView gdr_state(int layer) const;
  TensorView conv_state(int layer) const;
  // Linear and power attention: the normaliser [slots, Hkv, F] and the
  // rotary angles [slots, Hkv, rotary_dim / 2] (views into one buffer, so
  // their slot stride is the auxiliary floats per slot).
  TensorView normalizer_state(int layer) const;
  TensorView angle_state(int layer) const;
  TensorView k_pages(int layer) const;
  TensorView v_pages(int layer) const;

 private:
  struct LayerPools {
    // Linear and power attention layers keep their normaliser and angles
    // in `conv_state` (conv_per_slot floats per slot).
    Buffer gdr_state, conv_state, k_pages, v_pages;
    TensorView gdr_view, conv_view, k_view, v_view, norm_view, angle_view;
    int64_t state_per_slot = 0, conv_per_slot = 0;  // floats
    int64_t kv_row = 0;                             // Hkv · D elements
    bool windowed = false;  // sliding-window attention layer
  };
  StatePool() = default;

  // Takes `n` free pages (the caller checked there are enough).
  void TakePages(int64_t n, std::vector<int32_t>* out);
  // Copies positions [from, to) of a layer's K or V pages to or from the
  // host rows `host` (f32, kv_row floats per position).
  absl::Status CopyKv(const Buffer& pool, int64_t kv_row,
                      const std::vector<int32_t>& pages, int64_t from,
                      int64_t to, float* host, bool to_host) const;

  Options options_;
  DeviceMemory* memory_ = nullptr;
  int64_t num_pages_ = 0;
  bool has_global_ = false;
  int window_ = 0;
  std::vector<LayerPools> layers_;
  std::vector<int> free_slots_;
  std::vector<int32_t> free_pages_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STATE_POOL_H_
