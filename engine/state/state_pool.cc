#include "engine/state/state_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<StatePool>> StatePool::Create(
    const ModelSpec& spec, const Options& options) {
  if (options.max_slots <= 0 || options.page_size <= 0 ||
      options.kv_capacity_tokens <= 0) {
    return absl::InvalidArgumentError(
        "state pool sizes (max_slots, page_size, kv_capacity_tokens) must be "
        "positive");
  }
  auto pool = std::unique_ptr<StatePool>(new StatePool());
  pool->options_ = options;
  pool->num_pages_ =
      (options.kv_capacity_tokens + options.page_size - 1) / options.page_size;
  const int64_t slots = options.max_slots;
  pool->layers_.resize(spec.blocks.size());
  for (size_t i = 0; i < spec.blocks.size(); ++i) {
    const BlockSpec& b = spec.blocks[i];
    LayerPools& l = pool->layers_[i];
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      l.gdr_state.assign(slots * g.num_v_heads * g.head_k_dim * g.head_v_dim,
                         0.f);
      l.gdr_view =
          TensorView::F32(l.gdr_state.data(),
                          {slots, g.num_v_heads, g.head_k_dim, g.head_v_dim});
      l.conv_state.assign(slots * g.conv_dim() * (g.conv_kernel - 1), 0.f);
      l.conv_view = TensorView::F32(l.conv_state.data(),
                                    {slots, g.conv_dim(), g.conv_kernel - 1});
    } else if (b.mixer == MixerKind::kGlobalAttention ||
               b.mixer == MixerKind::kSlidingWindowAttention) {
      const AttentionSpec& a = b.attention;
      const int64_t n =
          pool->num_pages_ * options.page_size * a.num_kv_heads * a.head_dim;
      l.k_pages.assign(n, 0.f);
      l.v_pages.assign(n, 0.f);
      l.k_view = TensorView::F32(
          l.k_pages.data(),
          {pool->num_pages_, options.page_size, a.num_kv_heads, a.head_dim});
      l.v_view = TensorView::F32(
          l.v_pages.data(),
          {pool->num_pages_, options.page_size, a.num_kv_heads, a.head_dim});
    }
  }
  for (int s = options.max_slots - 1; s >= 0; --s)
    pool->free_slots_.push_back(s);
  for (int64_t p = pool->num_pages_ - 1; p >= 0; --p) {
    pool->free_pages_.push_back(static_cast<int32_t>(p));
  }
  return pool;
}

absl::StatusOr<int> StatePool::AllocateSlot() {
  if (free_slots_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "all ", options_.max_slots, " sequence state slots are in use"));
  }
  const int slot = free_slots_.back();
  free_slots_.pop_back();
  for (LayerPools& l : layers_) {
    if (!l.gdr_state.empty()) {
      const int64_t per = l.gdr_state.size() / options_.max_slots;
      std::fill_n(l.gdr_state.begin() + slot * per, per, 0.f);
      const int64_t cper = l.conv_state.size() / options_.max_slots;
      std::fill_n(l.conv_state.begin() + slot * cper, cper, 0.f);
    }
  }
  return slot;
}

void StatePool::FreeSlot(int slot) { free_slots_.push_back(slot); }

absl::Status StatePool::EnsureCapacity(std::vector<int32_t>* pages,
                                       int64_t tokens) {
  const int64_t need = (tokens + options_.page_size - 1) / options_.page_size -
                       static_cast<int64_t>(pages->size());
  if (need <= 0) return absl::OkStatus();
  if (need > static_cast<int64_t>(free_pages_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: need ", need, " more pages, ",
                     free_pages_.size(), " free of ", num_pages_));
  }
  for (int64_t i = 0; i < need; ++i) {
    pages->push_back(free_pages_.back());
    free_pages_.pop_back();
  }
  return absl::OkStatus();
}

void StatePool::FreePages(std::vector<int32_t>* pages) {
  for (int32_t p : *pages) free_pages_.push_back(p);
  pages->clear();
}

TensorView StatePool::gdr_state(int layer) const {
  return layers_[layer].gdr_view;
}
TensorView StatePool::conv_state(int layer) const {
  return layers_[layer].conv_view;
}
TensorView StatePool::k_pages(int layer) const { return layers_[layer].k_view; }
TensorView StatePool::v_pages(int layer) const { return layers_[layer].v_view; }

}  // namespace deltaserve
