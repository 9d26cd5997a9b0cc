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

int64_t SavedSequence::bytes() const {
  int64_t n = 0;
  for (const auto* group : {&recurrent, &keys, &values}) {
    for (const auto& v : *group) n += static_cast<int64_t>(v.size()) * 4;
  }
  return n;
}

namespace {

// Floats of one slot's recurrent state and conv tail in a layer.
int64_t PerSlot(const std::vector<float>& pool, int slots) {
  return static_cast<int64_t>(pool.size()) / slots;
}

}  // namespace

SavedSequence StatePool::Save(int slot, const std::vector<int32_t>& pages,
                              int64_t num_tokens) const {
  SavedSequence saved;
  saved.num_tokens = num_tokens;
  const size_t n = layers_.size();
  saved.recurrent.resize(n);
  saved.keys.resize(n);
  saved.values.resize(n);
  const int page = options_.page_size;
  for (size_t l = 0; l < n; ++l) {
    const LayerPools& lp = layers_[l];
    if (!lp.gdr_state.empty()) {
      const int64_t ps = PerSlot(lp.gdr_state, options_.max_slots);
      const int64_t pc = PerSlot(lp.conv_state, options_.max_slots);
      auto& out = saved.recurrent[l];
      out.assign(lp.gdr_state.begin() + slot * ps,
                 lp.gdr_state.begin() + (slot + 1) * ps);
      out.insert(out.end(), lp.conv_state.begin() + slot * pc,
                 lp.conv_state.begin() + (slot + 1) * pc);
    }
    if (!lp.k_pages.empty()) {
      const int64_t row = lp.k_view.shape[2] * lp.k_view.shape[3];
      auto& k = saved.keys[l];
      auto& v = saved.values[l];
      k.resize(num_tokens * row);
      v.resize(num_tokens * row);
      for (int64_t p = 0; p < num_tokens; p += page) {
        const int64_t count = std::min<int64_t>(page, num_tokens - p);
        const int64_t src = static_cast<int64_t>(pages[p / page]) * page * row;
        std::copy_n(lp.k_pages.begin() + src, count * row, k.begin() + p * row);
        std::copy_n(lp.v_pages.begin() + src, count * row, v.begin() + p * row);
      }
    }
  }
  return saved;
}

absl::Status StatePool::Restore(const SavedSequence& saved, int slot,
                                const std::vector<int32_t>& pages) {
  const size_t n = layers_.size();
  if (saved.recurrent.size() != n || saved.keys.size() != n ||
      saved.values.size() != n) {
    return absl::InvalidArgumentError(
        "saved sequence has a different number of layers");
  }
  if (static_cast<int64_t>(pages.size()) < PagesFor(saved.num_tokens)) {
    return absl::InvalidArgumentError("too few pages to restore a sequence");
  }
  const int page = options_.page_size;
  for (size_t l = 0; l < n; ++l) {
    LayerPools& lp = layers_[l];
    if (!lp.gdr_state.empty()) {
      const int64_t ps = PerSlot(lp.gdr_state, options_.max_slots);
      const int64_t pc = PerSlot(lp.conv_state, options_.max_slots);
      const auto& in = saved.recurrent[l];
      if (static_cast<int64_t>(in.size()) != ps + pc) {
        return absl::InvalidArgumentError(
            absl::StrCat("saved state of layer ", l, " has the wrong size"));
      }
      std::copy_n(in.begin(), ps, lp.gdr_state.begin() + slot * ps);
      std::copy_n(in.begin() + ps, pc, lp.conv_state.begin() + slot * pc);
    }
    if (!lp.k_pages.empty()) {
      const int64_t row = lp.k_view.shape[2] * lp.k_view.shape[3];
      const auto& k = saved.keys[l];
      const auto& v = saved.values[l];
      if (static_cast<int64_t>(k.size()) != saved.num_tokens * row ||
          v.size() != k.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("saved keys of layer ", l, " have the wrong size"));
      }
      for (int64_t p = 0; p < saved.num_tokens; p += page) {
        const int64_t count = std::min<int64_t>(page, saved.num_tokens - p);
        const int64_t dst = static_cast<int64_t>(pages[p / page]) * page * row;
        std::copy_n(k.begin() + p * row, count * row, lp.k_pages.begin() + dst);
        std::copy_n(v.begin() + p * row, count * row, lp.v_pages.begin() + dst);
      }
    }
  }
  return absl::OkStatus();
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
