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
      if (b.mixer == MixerKind::kGlobalAttention || a.window <= 0) {
        pool->has_global_ = true;
      } else if (pool->window_ == 0 || pool->window_ == a.window) {
        pool->window_ = a.window;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "sliding-window layers with different windows (", pool->window_,
            " and ", a.window, ") are not supported"));
      }
      const int64_t n =
          pool->num_pages_ * options.page_size * a.num_kv_heads * a.head_dim;
      l.windowed =
          b.mixer == MixerKind::kSlidingWindowAttention && a.window > 0;
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

int64_t SeqPages::held() const {
  int64_t n = static_cast<int64_t>(global.size());
  for (int32_t p : window) n += p >= 0;
  return n;
}

void StatePool::TakePages(int64_t n, std::vector<int32_t>* out) {
  for (int64_t i = 0; i < n; ++i) {
    out->push_back(free_pages_.back());
    free_pages_.pop_back();
  }
}

int64_t StatePool::PagesNeeded(const SeqPages& pages, int64_t have,
                               int64_t more) const {
  const int64_t logical = PagesFor(have + more);
  int64_t need = 0;
  if (pages.empty() && have > 0) {  // restore, then grow
    if (has_global_) need += logical;
    if (window_ > 0) need += logical - WindowStart(have) / options_.page_size;
    return need;
  }
  if (has_global_) {
    need += std::max<int64_t>(
        0, logical - static_cast<int64_t>(pages.global.size()));
  }
  if (window_ > 0) {
    need += std::max<int64_t>(
        0, logical - static_cast<int64_t>(pages.window.size()));
  }
  return need;
}

absl::Status StatePool::EnsureCapacity(SeqPages* pages, int64_t tokens) {
  const int64_t logical = PagesFor(tokens);
  const int64_t more_global =
      has_global_ ? std::max<int64_t>(
                        0, logical - static_cast<int64_t>(pages->global.size()))
                  : 0;
  const int64_t more_window =
      window_ > 0 ? std::max<int64_t>(
                        0, logical - static_cast<int64_t>(pages->window.size()))
                  : 0;
  if (more_global + more_window > static_cast<int64_t>(free_pages_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: need ", more_global + more_window, " more pages, ",
        free_pages_.size(), " free of ", num_pages_));
  }
  TakePages(more_global, &pages->global);
  TakePages(more_window, &pages->window);
  return absl::OkStatus();
}

absl::Status StatePool::RestoreCapacity(SeqPages* pages, int64_t num_tokens) {
  if (!pages->empty()) {
    return absl::InvalidArgumentError("restoring into a sequence with pages");
  }
  if (PagesNeeded(*pages, num_tokens, 0) >
      static_cast<int64_t>(free_pages_.size())) {
    return absl::ResourceExhaustedError("KV cache full: cannot restore");
  }
  const int64_t logical = PagesFor(num_tokens);
  if (has_global_) TakePages(logical, &pages->global);
  if (window_ > 0) {
    const int64_t first = WindowStart(num_tokens) / options_.page_size;
    pages->window.assign(first, -1);
    TakePages(logical - first, &pages->window);
  }
  return absl::OkStatus();
}

void StatePool::ReleaseOutOfWindow(SeqPages* pages, int64_t next_pos) {
  if (window_ <= 0) return;
  const int64_t start = WindowStart(next_pos);
  for (int64_t i = 0; i < static_cast<int64_t>(pages->window.size()); ++i) {
    if ((i + 1) * options_.page_size > start) break;
    if (pages->window[i] >= 0) {
      free_pages_.push_back(pages->window[i]);
      pages->window[i] = -1;
    }
  }
}

void StatePool::FreePages(SeqPages* pages) {
  for (const auto* group : {&pages->global, &pages->window}) {
    for (int32_t p : *group) {
      if (p >= 0) free_pages_.push_back(p);
    }
  }
  pages->global.clear();
  pages->window.clear();
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

SavedSequence StatePool::Save(int slot, const SeqPages& seq_pages,
                              int64_t num_tokens) const {
  SavedSequence saved;
  saved.num_tokens = num_tokens;
  saved.window_from = WindowStart(num_tokens);
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
      const bool windowed = lp.windowed;
      const std::vector<int32_t>& pages =
          windowed ? seq_pages.window : seq_pages.global;
      const int64_t from = windowed ? saved.window_from : 0;
      auto& k = saved.keys[l];
      auto& v = saved.values[l];
      k.resize((num_tokens - from) * row);
      v.resize((num_tokens - from) * row);
      for (int64_t pos = from; pos < num_tokens;) {
        const int64_t in_page = pos % page;
        const int64_t count =
            std::min<int64_t>(page - in_page, num_tokens - pos);
        const int64_t src =
            (static_cast<int64_t>(pages[pos / page]) * page + in_page) * row;
        const int64_t dst = (pos - from) * row;
        std::copy_n(lp.k_pages.begin() + src, count * row, k.begin() + dst);
        std::copy_n(lp.v_pages.begin() + src, count * row, v.begin() + dst);
        pos += count;
      }
    }
  }
  return saved;
}

absl::Status StatePool::Restore(const SavedSequence& saved, int slot,
                                const SeqPages& seq_pages) {
  const size_t n = layers_.size();
  if (saved.recurrent.size() != n || saved.keys.size() != n ||
      saved.values.size() != n) {
    return absl::InvalidArgumentError(
        "saved sequence has a different number of layers");
  }
  const int64_t logical = PagesFor(saved.num_tokens);
  if ((has_global_ &&
       static_cast<int64_t>(seq_pages.global.size()) < logical) ||
      (window_ > 0 &&
       static_cast<int64_t>(seq_pages.window.size()) < logical) ||
      saved.window_from != WindowStart(saved.num_tokens)) {
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
      const bool windowed = lp.windowed;
      const std::vector<int32_t>& pages =
          windowed ? seq_pages.window : seq_pages.global;
      const int64_t from = windowed ? saved.window_from : 0;
      const auto& k = saved.keys[l];
      const auto& v = saved.values[l];
      if (static_cast<int64_t>(k.size()) != (saved.num_tokens - from) * row ||
          v.size() != k.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("saved keys of layer ", l, " have the wrong size"));
      }
      for (int64_t pos = from; pos < saved.num_tokens;) {
        const int64_t in_page = pos % page;
        const int64_t count =
            std::min<int64_t>(page - in_page, saved.num_tokens - pos);
        if (pages[pos / page] < 0) {
          return absl::InvalidArgumentError("restore into a released page");
        }
        const int64_t dst =
            (static_cast<int64_t>(pages[pos / page]) * page + in_page) * row;
        const int64_t src = (pos - from) * row;
        std::copy_n(k.begin() + src, count * row, lp.k_pages.begin() + dst);
        std::copy_n(v.begin() + src, count * row, lp.v_pages.begin() + dst);
        pos += count;
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
