#include "engine/session/session_state.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/state_store/crc32c.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

bool IsAttention(const BlockSpec& b) {
  return b.mixer == MixerKind::kGlobalAttention ||
         b.mixer == MixerKind::kSlidingWindowAttention;
}

bool IsWindowed(const BlockSpec& b) {
  return b.mixer == MixerKind::kSlidingWindowAttention &&
         b.attention.window > 0;
}

// Two CRC-32C streams with different seeds: 64 bits per half.
class Hasher {
 public:
  void Add(const void* data, size_t n) {
    a_ = Crc32cExtend(a_, data, n);
    b_ = Crc32cExtend(b_ ^ 0x9e3779b9u, data, n);
    c_ = Crc32cExtend(c_ + 0x7f4a7c15u, data, n);
    d_ = Crc32cExtend(d_ * 31u + 1u, data, n);
  }
  void Add(const std::string& s) {
    const uint64_t n = s.size();
    Add(&n, sizeof(n));
    Add(s.data(), s.size());
  }
  void Add(int64_t v) { Add(&v, sizeof(v)); }
  std::string Hex() const {
    return absl::StrFormat("%08x%08x%08x%08x", a_, b_, c_, d_);
  }

 private:
  uint32_t a_ = 0, b_ = 1, c_ = 2, d_ = 3;
};

void AddWeight(Hasher& h, const Weight& w) {
  h.Add(static_cast<int64_t>(w.shape.size()));
  for (int64_t d : w.shape) h.Add(d);
  h.Add(w.data.data(), w.data.size() * sizeof(float));
}

}  // namespace

std::string ModelFingerprint(const Model& model) {
  const ModelSpec& spec = model.spec();
  Hasher h;
  h.Add(spec.model_type);
  h.Add(int64_t{spec.vocab_size});
  h.Add(int64_t{spec.hidden_size});
  h.Add(int64_t{spec.norm_zero_centered});
  float eps = spec.rms_norm_eps;
  h.Add(&eps, sizeof(eps));
  for (const BlockSpec& b : spec.blocks) {
    h.Add(static_cast<int64_t>(b.mixer));
    h.Add(int64_t{b.intermediate_size});
    const GatedDeltaRuleSpec& g = b.gdr;
    for (int64_t v :
         {int64_t{g.num_k_heads}, int64_t{g.num_v_heads}, int64_t{g.head_k_dim},
          int64_t{g.head_v_dim}, int64_t{g.conv_kernel}, int64_t{g.use_decay},
          int64_t{g.output_gate}}) {
      h.Add(v);
    }
    const AttentionSpec& a = b.attention;
    for (int64_t v :
         {int64_t{a.num_heads}, int64_t{a.num_kv_heads}, int64_t{a.head_dim},
          int64_t{a.rotary_dim}, int64_t{a.qk_norm}, int64_t{a.output_gate},
          int64_t{a.window}}) {
      h.Add(v);
    }
    float theta = a.rope_theta;
    h.Add(&theta, sizeof(theta));
    if (b.mixer == MixerKind::kLinearAttention ||
        b.mixer == MixerKind::kPowerAttention) {
      const LinearAttentionSpec& s = b.linear;
      for (int64_t v :
           {int64_t{s.num_heads}, int64_t{s.num_kv_heads},
            int64_t{s.head_k_dim}, int64_t{s.head_v_dim}, int64_t{s.degree},
            int64_t{s.normalize}, int64_t{s.norm_affine}, int64_t{s.gating},
            int64_t{s.rotary}, int64_t{s.rotary_dim}}) {
        h.Add(v);
      }
      for (float x : {s.gate_bias, s.rope_theta}) h.Add(&x, sizeof(x));
    }
  }
  const ModelWeights& w = model.weights();
  AddWeight(h, w.embed);
  AddWeight(h, w.final_norm);
  AddWeight(h, w.LmHead());
  for (const BlockWeights& b : w.blocks) {
    for (const Weight* x :
         {&b.input_norm,       &b.post_norm,        &b.gate_proj,
          &b.up_proj,          &b.down_proj,        &b.gdr.in_proj_qkv,
          &b.gdr.in_proj_z,    &b.gdr.in_proj_b,    &b.gdr.in_proj_a,
          &b.gdr.conv,         &b.gdr.a_log,        &b.gdr.dt_bias,
          &b.gdr.norm,         &b.gdr.out_proj,     &b.attention.q_proj,
          &b.attention.k_proj, &b.attention.v_proj, &b.attention.o_proj,
          &b.attention.q_norm, &b.attention.k_norm}) {
      AddWeight(h, *x);
    }
    if (!b.linear.q_proj.empty()) {
      for (const Weight* x :
           {&b.linear.q_proj, &b.linear.k_proj, &b.linear.v_proj,
            &b.linear.g_proj, &b.linear.r_proj, &b.linear.norm,
            &b.linear.o_proj}) {
        AddWeight(h, *x);
      }
    }
  }
  return h.Hex();
}

std::vector<LayerLayout> SessionLayout(const ModelSpec& spec) {
  std::vector<LayerLayout> layout(spec.blocks.size());
  for (size_t l = 0; l < spec.blocks.size(); ++l) {
    const BlockSpec& b = spec.blocks[l];
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      layout[l].recurrent_floats =
          int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim +
          int64_t{g.conv_dim()} * (g.conv_kernel - 1);
    } else if (b.mixer == MixerKind::kLinearAttention ||
               b.mixer == MixerKind::kPowerAttention) {
      // The state [Hkv, F, V], then the normaliser and the rotary angles.
      layout[l].recurrent_floats =
          b.linear.state_floats() + b.linear.aux_floats();
    } else if (IsAttention(b)) {
      layout[l].kv_floats_per_token =
          int64_t{b.attention.num_kv_heads} * b.attention.head_dim;
    }
  }
  return layout;
}

namespace {

// ToSnapshot with the recurrent state given apart (copied or moved from
// saved.recurrent by the caller).
SessionSnapshot SnapshotOf(const SavedSequence& saved,
                           std::vector<std::vector<float>> recurrent,
                           const ModelSpec& spec, int page_size,
                           SessionMeta meta, std::vector<int32_t> tokens,
                           int64_t first_page) {
  SessionSnapshot snap;
  meta.num_tokens = saved.num_tokens;
  meta.window_from = saved.window_from;
  meta.layers = SessionLayout(spec);
  bool has_kv = false, has_global = false;
  for (const BlockSpec& b : spec.blocks) {
    if (!IsAttention(b)) continue;
    has_kv = true;
    if (!IsWindowed(b)) has_global = true;
  }
  meta.page_size = has_kv ? page_size : 0;
  meta.first_kv_page =
      has_global || !has_kv ? 0 : saved.window_from / page_size;
  snap.meta = std::move(meta);
  snap.tokens = std::move(tokens);
  const size_t n = spec.blocks.size();
  snap.recurrent = std::move(recurrent);
  snap.recurrent.resize(n);
  for (size_t l = 0; l < n; ++l) {
    if (snap.meta.layers[l].recurrent_floats == 0) snap.recurrent[l].clear();
  }
  if (!has_kv) return snap;
  // A partial copy holds only the pages the snapshot writes.
  DS_CHECK(std::max(snap.meta.first_kv_page, first_page) * page_size >=
           saved.kv_first);
  const int64_t pages = (saved.num_tokens + page_size - 1) / page_size;
  for (int64_t p = std::max(snap.meta.first_kv_page, first_page); p < pages;
       ++p) {
    KvPageRecord page;
    page.page_index = p;
    page.keys.resize(n);
    page.values.resize(n);
    const int64_t begin = p * page_size;
    const int64_t end = std::min<int64_t>(begin + page_size, saved.num_tokens);
    for (size_t l = 0; l < n; ++l) {
      const int64_t row = snap.meta.layers[l].kv_floats_per_token;
      if (row == 0) continue;
      const int64_t from = IsWindowed(spec.blocks[l]) ? saved.window_from : 0;
      if (end <= from) continue;  // the window moved past this page
      // What the copy holds starts at `held` (a partial copy starts at
      // kv_first, which the caller puts at or before first_page).
      const int64_t held = std::max(from, saved.kv_first);
      // A windowed layer keeps positions from `from`; the page's earlier
      // positions are not stored for it, so store whole pages only from the
      // page holding `from` and pad its head with zeros.
      const int64_t lo = std::max(begin, from);
      std::vector<float>& k = page.keys[l];
      std::vector<float>& v = page.values[l];
      k.assign((end - begin) * row, 0.f);
      v.assign((end - begin) * row, 0.f);
      std::memcpy(k.data() + (lo - begin) * row,
                  saved.keys[l].data() + (lo - held) * row,
                  (end - lo) * row * sizeof(float));
      std::memcpy(v.data() + (lo - begin) * row,
                  saved.values[l].data() + (lo - held) * row,
                  (end - lo) * row * sizeof(float));
    }
    snap.kv_pages.push_back(std::move(page));
  }
  return snap;
}

// FromSnapshot; moves the recurrent state out of `movable` (the snapshot
// itself) when it is not null.
absl::StatusOr<SavedSequence> SavedOf(const SessionSnapshot& snapshot,
                                      SessionSnapshot* movable,
                                      const ModelSpec& spec, int page_size) {
  const SessionMeta& meta = snapshot.meta;
  if (meta.layers != SessionLayout(spec)) {
    return absl::FailedPreconditionError(
        "session state was saved for a model with another layout");
  }
  const size_t n = spec.blocks.size();
  bool has_kv = false;
  for (const BlockSpec& b : spec.blocks) has_kv |= IsAttention(b);
  if (has_kv && meta.page_size != page_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("session state has KV pages of ", meta.page_size,
                     " tokens; this server uses ", page_size));
  }
  SavedSequence saved;
  saved.num_tokens = meta.num_tokens;
  saved.window_from = meta.window_from;
  saved.recurrent.resize(n);
  saved.keys.resize(n);
  saved.values.resize(n);
  if (snapshot.recurrent.size() != n) {
    return absl::DataLossError("session state lacks recurrent layers");
  }
  for (size_t l = 0; l < n; ++l) {
    if (static_cast<int64_t>(snapshot.recurrent[l].size()) !=
        meta.layers[l].recurrent_floats) {
      return absl::DataLossError(
          absl::StrCat("session state of layer ", l, " has the wrong size"));
    }
  }
  for (size_t l = 0; l < n; ++l) {
    if (movable != nullptr) {
      saved.recurrent[l] = std::move(movable->recurrent[l]);
    } else {
      saved.recurrent[l] = snapshot.recurrent[l];
    }
    const int64_t row = meta.layers[l].kv_floats_per_token;
    if (row > 0) {
      const int64_t from = IsWindowed(spec.blocks[l]) ? meta.window_from : 0;
      saved.keys[l].assign((meta.num_tokens - from) * row, 0.f);
      saved.values[l].assign((meta.num_tokens - from) * row, 0.f);
    }
  }
  if (!has_kv) return saved;
  std::vector<bool> filled(n, false);
  int64_t expect_page = meta.first_kv_page;
  for (const KvPageRecord& page : snapshot.kv_pages) {
    if (page.page_index != expect_page++ || page.keys.size() != n ||
        page.values.size() != n) {
      return absl::DataLossError("session state has missing KV pages");
    }
    const int64_t begin = page.page_index * page_size;
    const int64_t end = std::min<int64_t>(begin + page_size, meta.num_tokens);
    for (size_t l = 0; l < n; ++l) {
      const int64_t row = meta.layers[l].kv_floats_per_token;
      if (row == 0) continue;
      const int64_t from = IsWindowed(spec.blocks[l]) ? meta.window_from : 0;
      if (end <= from) continue;
      if (static_cast<int64_t>(page.keys[l].size()) != (end - begin) * row ||
          page.values[l].size() != page.keys[l].size()) {
        return absl::DataLossError(absl::StrCat("KV page ", page.page_index,
                                                " of layer ", l,
                                                " has the wrong size"));
      }
      const int64_t lo = std::max(begin, from);
      std::memcpy(saved.keys[l].data() + (lo - from) * row,
                  page.keys[l].data() + (lo - begin) * row,
                  (end - lo) * row * sizeof(float));
      std::memcpy(saved.values[l].data() + (lo - from) * row,
                  page.values[l].data() + (lo - begin) * row,
                  (end - lo) * row * sizeof(float));
    }
  }
  if (expect_page != (meta.num_tokens + page_size - 1) / page_size) {
    return absl::DataLossError("session state has missing KV pages");
  }
  return saved;
}

}  // namespace

SessionSnapshot ToSnapshot(const SavedSequence& saved, const ModelSpec& spec,
                           int page_size, SessionMeta meta,
                           std::vector<int32_t> tokens, int64_t first_page) {
  return SnapshotOf(saved, saved.recurrent, spec, page_size, std::move(meta),
                    std::move(tokens), first_page);
}

SessionSnapshot ToSnapshot(SavedSequence&& saved, const ModelSpec& spec,
                           int page_size, SessionMeta meta,
                           std::vector<int32_t> tokens, int64_t first_page) {
  std::vector<std::vector<float>> recurrent = std::move(saved.recurrent);
  saved.recurrent.clear();
  return SnapshotOf(saved, std::move(recurrent), spec, page_size,
                    std::move(meta), std::move(tokens), first_page);
}

absl::StatusOr<SavedSequence> FromSnapshot(const SessionSnapshot& snapshot,
                                           const ModelSpec& spec,
                                           int page_size) {
  return SavedOf(snapshot, nullptr, spec, page_size);
}

absl::StatusOr<SavedSequence> FromSnapshot(SessionSnapshot&& snapshot,
                                           const ModelSpec& spec,
                                           int page_size) {
  return SavedOf(snapshot, &snapshot, spec, page_size);
}

}  // namespace deltaserve
