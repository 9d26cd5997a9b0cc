#include "engine/state/state_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/status.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<StatePool>> StatePool::Create(
    const ModelSpec& spec, const Options& options) {
  if (options.max_slots <= 0 || options.page_size <= 0 ||
      options.kv_capacity_tokens <= 0) {
    return absl::InvalidArgumentError(
        "state pool sizes (max_slots, page_size, kv_capacity_tokens) must be "
        "positive");
  }
  if (options.kv_dtype != DType::kF32 && options.kv_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV pages must be f32 or bf16, not ", DTypeName(options.kv_dtype)));
  }
  auto pool = std::unique_ptr<StatePool>(new StatePool());
  pool->options_ = options;
  pool->memory_ = options.memory != nullptr ? options.memory : HostMemory();
  DeviceMemory* mem = pool->memory_;
  const Device dev = mem->device();
  pool->num_pages_ =
      (options.kv_capacity_tokens + options.page_size - 1) / options.page_size;
  // One more slot and page than handed out: the padding ones.
  const int64_t slots = options.max_slots + 1;
  const int64_t pages = pool->num_pages_ + 1;
  auto zeroed = [&](int64_t bytes, Buffer* b) -> absl::Status {
    DS_ASSIGN_OR_RETURN(*b, Buffer::Allocate(mem, bytes));
    return mem->Zero(b->data(), bytes, options.stream);
  };
  pool->layers_.resize(spec.blocks.size());
  for (size_t i = 0; i < spec.blocks.size(); ++i) {
    const BlockSpec& b = spec.blocks[i];
    LayerPools& l = pool->layers_[i];
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      l.state_per_slot = int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim;
      l.conv_per_slot = g.conv_dim() * (g.conv_kernel - 1);
      DS_RETURN_IF_ERROR(zeroed(slots * l.state_per_slot * 4, &l.gdr_state));
      DS_RETURN_IF_ERROR(zeroed(slots * l.conv_per_slot * 4, &l.conv_state));
      l.gdr_view = TensorView::Contiguous(
          l.gdr_state.data(), DType::kF32,
          {slots, g.num_v_heads, g.head_k_dim, g.head_v_dim}, dev);
      l.conv_view =
          TensorView::Contiguous(l.conv_state.data(), DType::kF32,
                                 {slots, g.conv_dim(), g.conv_kernel - 1}, dev);
    } else if (b.mixer == MixerKind::kLinearAttention ||
               b.mixer == MixerKind::kPowerAttention) {
      const LinearAttentionSpec& s = b.linear;
      const int64_t hkv = s.num_kv_heads, f = s.feature_dim();
      l.state_per_slot = s.state_floats();
      l.conv_per_slot = s.aux_floats();
      DS_RETURN_IF_ERROR(zeroed(slots * l.state_per_slot * 4, &l.gdr_state));
      DS_RETURN_IF_ERROR(zeroed(slots * l.conv_per_slot * 4, &l.conv_state));
      l.gdr_view = TensorView::Contiguous(l.gdr_state.data(), DType::kF32,
                                          {slots, hkv, f, s.head_v_dim}, dev);
      float* aux = static_cast<float*>(l.conv_state.data());
      l.norm_view =
          TensorView::Contiguous(aux, DType::kF32, {slots, hkv, f}, dev);
      l.norm_view.strides[0] = l.conv_per_slot;
      if (s.rotary) {
        l.angle_view = TensorView::Contiguous(
            aux + hkv * f, DType::kF32, {slots, hkv, s.rotary_dim / 2}, dev);
        l.angle_view.strides[0] = l.conv_per_slot;
      }
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
      l.kv_row = int64_t{a.num_kv_heads} * a.head_dim;
      const int64_t bytes =
          pages * options.page_size * l.kv_row * DTypeSize(options.kv_dtype);
      l.windowed =
          b.mixer == MixerKind::kSlidingWindowAttention && a.window > 0;
      DS_RETURN_IF_ERROR(zeroed(bytes, &l.k_pages));
      DS_RETURN_IF_ERROR(zeroed(bytes, &l.v_pages));
      l.k_view = TensorView::Contiguous(
          l.k_pages.data(), options.kv_dtype,
          {pages, options.page_size, a.num_kv_heads, a.head_dim}, dev);
      l.v_view = TensorView::Contiguous(
          l.v_pages.data(), options.kv_dtype,
          {pages, options.page_size, a.num_kv_heads, a.head_dim}, dev);
    }
  }
  for (int s = options.max_slots - 1; s >= 0; --s)
    pool->free_slots_.push_back(s);
  for (int64_t p = pool->num_pages_ - 1; p >= 0; --p) {
    pool->free_pages_.push_back(static_cast<int32_t>(p));
  }
  return pool;
}

int64_t StatePool::bytes() const {
  int64_t n = 0;
  for (const LayerPools& l : layers_) {
    n += l.gdr_state.bytes() + l.conv_state.bytes() + l.k_pages.bytes() +
         l.v_pages.bytes();
  }
  return n;
}

absl::StatusOr<int> StatePool::AllocateSlot() {
  if (free_slots_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "all ", options_.max_slots, " sequence state slots are in use"));
  }
  const int slot = free_slots_.back();
  for (LayerPools& l : layers_) {
    if (l.gdr_state.empty()) continue;
    DS_RETURN_IF_ERROR(memory_->Zero(
        static_cast<float*>(l.gdr_state.data()) + slot * l.state_per_slot,
        l.state_per_slot * 4, options_.stream));
    DS_RETURN_IF_ERROR(memory_->Zero(
        static_cast<float*>(l.conv_state.data()) + slot * l.conv_per_slot,
        l.conv_per_slot * 4, options_.stream));
  }
  free_slots_.pop_back();
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

absl::Status StatePool::CopyKv(const Buffer& pool, int64_t kv_row,
                               const std::vector<int32_t>& pages, int64_t from,
                               int64_t to, float* host, bool to_host) const {
  const int page = options_.page_size;
  const int esize = DTypeSize(options_.kv_dtype);
  const bool bf16 = options_.kv_dtype == DType::kBF16;
  std::vector<uint16_t> staging;
  char* base = static_cast<char*>(pool.data());
  for (int64_t pos = from; pos < to;) {
    // A run of positions on physically consecutive pages is one copy.
    const int64_t first_page = pos / page;
    if (pages[first_page] < 0) {
      return absl::InvalidArgumentError("KV copy touches a released page");
    }
    int64_t last_page = first_page;
    while ((last_page + 1) * page < to &&
           pages[last_page + 1] == pages[last_page] + 1) {
      ++last_page;
    }
    const int64_t end = std::min<int64_t>((last_page + 1) * page, to);
    const int64_t count = end - pos;
    char* device =
        base + (static_cast<int64_t>(pages[first_page]) * page + pos % page) *
                   kv_row * esize;
    float* rows = host + (pos - from) * kv_row;
    const int64_t n = count * kv_row;
    if (!bf16) {
      DS_RETURN_IF_ERROR(
          to_host ? memory_->Copy(rows, device, n * 4, options_.stream)
                  : memory_->Copy(device, rows, n * 4, options_.stream));
    } else if (to_host) {
      staging.resize(n);
      DS_RETURN_IF_ERROR(
          memory_->Copy(staging.data(), device, n * 2, options_.stream));
      for (int64_t i = 0; i < n; ++i) rows[i] = Bf16ToF32(staging[i]);
    } else {
      staging.resize(n);
      for (int64_t i = 0; i < n; ++i) staging[i] = F32ToBf16(rows[i]);
      DS_RETURN_IF_ERROR(
          memory_->Copy(device, staging.data(), n * 2, options_.stream));
    }
    pos = end;
  }
  return absl::OkStatus();
}

absl::StatusOr<SavedSequence> StatePool::Save(int slot,
                                              const SeqPages& seq_pages,
                                              int64_t num_tokens,
                                              int64_t kv_first) const {
  SavedSequence saved;
  saved.num_tokens = num_tokens;
  saved.window_from = WindowStart(num_tokens);
  saved.kv_first = std::clamp<int64_t>(kv_first, 0, num_tokens);
  const size_t n = layers_.size();
  saved.recurrent.resize(n);
  saved.keys.resize(n);
  saved.values.resize(n);
  for (size_t l = 0; l < n; ++l) {
    const LayerPools& lp = layers_[l];
    if (!lp.gdr_state.empty()) {
      auto& out = saved.recurrent[l];
      out.resize(lp.state_per_slot + lp.conv_per_slot);
      DS_RETURN_IF_ERROR(
          memory_->Copy(out.data(),
                        static_cast<const float*>(lp.gdr_state.data()) +
                            slot * lp.state_per_slot,
                        lp.state_per_slot * 4, options_.stream));
      DS_RETURN_IF_ERROR(
          memory_->Copy(out.data() + lp.state_per_slot,
                        static_cast<const float*>(lp.conv_state.data()) +
                            slot * lp.conv_per_slot,
                        lp.conv_per_slot * 4, options_.stream));
    }
    if (!lp.k_pages.empty()) {
      const std::vector<int32_t>& pages =
          lp.windowed ? seq_pages.window : seq_pages.global;
      const int64_t from =
          std::max(lp.windowed ? saved.window_from : 0, saved.kv_first);
      auto& k = saved.keys[l];
      auto& v = saved.values[l];
      k.resize((num_tokens - from) * lp.kv_row);
      v.resize((num_tokens - from) * lp.kv_row);
      DS_RETURN_IF_ERROR(CopyKv(lp.k_pages, lp.kv_row, pages, from, num_tokens,
                                k.data(), /*to_host=*/true));
      DS_RETURN_IF_ERROR(CopyKv(lp.v_pages, lp.kv_row, pages, from, num_tokens,
                                v.data(), /*to_host=*/true));
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
  if (saved.kv_first != 0) {
    return absl::InvalidArgumentError(
        "saved sequence holds only part of its keys and values");
  }
  const int64_t logical = PagesFor(saved.num_tokens);
  if ((has_global_ &&
       static_cast<int64_t>(seq_pages.global.size()) < logical) ||
      (window_ > 0 &&
       static_cast<int64_t>(seq_pages.window.size()) < logical) ||
      saved.window_from != WindowStart(saved.num_tokens)) {
    return absl::InvalidArgumentError("too few pages to restore a sequence");
  }
  // Check every size before writing anything.
  for (size_t l = 0; l < n; ++l) {
    const LayerPools& lp = layers_[l];
    const int64_t rec =
        lp.gdr_state.empty() ? 0 : lp.state_per_slot + lp.conv_per_slot;
    if (static_cast<int64_t>(saved.recurrent[l].size()) != rec) {
      return absl::InvalidArgumentError(
          absl::StrCat("saved state of layer ", l, " has the wrong size"));
    }
    const int64_t from = lp.windowed ? saved.window_from : 0;
    const int64_t kv =
        lp.k_pages.empty() ? 0 : (saved.num_tokens - from) * lp.kv_row;
    if (static_cast<int64_t>(saved.keys[l].size()) != kv ||
        saved.values[l].size() != saved.keys[l].size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("saved keys of layer ", l, " have the wrong size"));
    }
  }
  for (size_t l = 0; l < n; ++l) {
    LayerPools& lp = layers_[l];
    if (!lp.gdr_state.empty()) {
      const auto& in = saved.recurrent[l];
      DS_RETURN_IF_ERROR(memory_->Copy(
          static_cast<float*>(lp.gdr_state.data()) + slot * lp.state_per_slot,
          in.data(), lp.state_per_slot * 4, options_.stream));
      DS_RETURN_IF_ERROR(memory_->Copy(
          static_cast<float*>(lp.conv_state.data()) + slot * lp.conv_per_slot,
          in.data() + lp.state_per_slot, lp.conv_per_slot * 4,
          options_.stream));
    }
    if (!lp.k_pages.empty()) {
      const std::vector<int32_t>& pages =
          lp.windowed ? seq_pages.window : seq_pages.global;
      const int64_t from = lp.windowed ? saved.window_from : 0;
      DS_RETURN_IF_ERROR(CopyKv(lp.k_pages, lp.kv_row, pages, from,
                                saved.num_tokens,
                                const_cast<float*>(saved.keys[l].data()),
                                /*to_host=*/false));
      DS_RETURN_IF_ERROR(CopyKv(lp.v_pages, lp.kv_row, pages, from,
                                saved.num_tokens,
                                const_cast<float*>(saved.values[l].data()),
                                /*to_host=*/false));
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
TensorView StatePool::normalizer_state(int layer) const {
  return layers_[layer].norm_view;
}
TensorView StatePool::angle_state(int layer) const {
  return layers_[layer].angle_view;
}
TensorView StatePool::k_pages(int layer) const { return layers_[layer].k_view; }
TensorView StatePool::v_pages(int layer) const { return layers_[layer].v_view; }

}  // namespace deltaserve
