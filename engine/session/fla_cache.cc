#include "engine/session/fla_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/safetensors.h"
#include "engine/session/session_state.h"
#include "engine/state/state_pool.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

constexpr char kTokenIds[] = "token_ids";
constexpr char kSource[] = "fla cache (safetensors)";

bool IsAttention(const BlockSpec& b) {
  return b.mixer == MixerKind::kGlobalAttention ||
         b.mixer == MixerKind::kSlidingWindowAttention;
}

// The window of sliding-window layers (0: none; FlaRecurrentLayoutOf has
// checked that they share one).
int WindowOf(const ModelSpec& spec) {
  for (const BlockSpec& b : spec.blocks) {
    if (b.mixer == MixerKind::kSlidingWindowAttention && b.attention.window > 0)
      return b.attention.window;
  }
  return 0;
}

bool IsWindowed(const BlockSpec& b) {
  return b.mixer == MixerKind::kSlidingWindowAttention &&
         b.attention.window > 0;
}

std::string Prefix(size_t layer) { return absl::StrCat("state.", layer, "."); }

// The q, k and v groups of a gated-delta-rule layer's conv channels, in the
// engine's channel order: {name, first channel, channels}.
struct ConvGroup {
  const char* name;
  int64_t first;
  int64_t rows;
};
std::vector<ConvGroup> ConvGroups(const GatedDeltaRuleSpec& g) {
  const int64_t kd = g.key_dim(), vd = g.value_dim();
  return {{"q", 0, kd}, {"k", kd, kd}, {"v", 2 * kd, vd}};
}

TensorToWrite F32Tensor(std::string name, std::vector<int64_t> shape,
                        const std::vector<float>& data) {
  TensorToWrite t;
  t.name = std::move(name);
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.bytes.assign(reinterpret_cast<const char*>(data.data()),
                 data.size() * sizeof(float));
  return t;
}

// Reads and checks the tensors of one fla cache file. Every tensor read is
// remembered, so that the others can be reported as unknown.
class TensorReader {
 public:
  explicit TensorReader(const SafetensorsContents& file) : file_(file) {}

  // The tensor `name`: present, of `dtype` and of rank shape.size(); each
  // dimension of `shape` that is ≥ 0 must match (−1: any).
  absl::StatusOr<const TensorEntry*> Get(const std::string& name, DType dtype,
                                         const std::vector<int64_t>& shape) {
    auto it = file_.tensors.find(name);
    if (it == file_.tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("fla cache: missing tensor ", name));
    }
    used_.insert(name);
    const TensorEntry& e = it->second;
    if (e.dtype != dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("fla cache: tensor ", name, " has dtype ",
                       DTypeName(e.dtype), ", expected ", DTypeName(dtype)));
    }
    bool match = e.shape.size() == shape.size();
    for (size_t i = 0; match && i < shape.size(); ++i) {
      match = shape[i] < 0 || shape[i] == e.shape[i];
    }
    if (!match) {
      std::vector<std::string> want;
      for (int64_t d : shape) want.push_back(d < 0 ? "*" : absl::StrCat(d));
      return absl::InvalidArgumentError(absl::StrCat(
          "fla cache: tensor ", name, " has shape ", e.ShapeString(),
          ", expected [", absl::StrJoin(want, ", "), "]"));
    }
    return &e;
  }

  // The f32 elements of `e` (checked by Get), all finite.
  absl::StatusOr<std::vector<float>> Floats(const TensorEntry& e) const {
    std::vector<float> out(static_cast<size_t>(e.numel()));
    std::memcpy(out.data(), e.data, out.size() * sizeof(float));
    for (size_t i = 0; i < out.size(); ++i) {
      if (!std::isfinite(out[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("fla cache: tensor ", e.name,
                         " holds a non-finite value at element ", i));
      }
    }
    return out;
  }

  // INVALID_ARGUMENT naming the first tensor Get was never asked for.
  absl::Status CheckNoOthers(const ModelSpec& spec) const {
    for (const auto& [name, e] : file_.tensors) {
      if (used_.count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "fla cache: unknown tensor ", name, " (a ", spec.model_type,
            " model of ", spec.num_layers(),
            " layers has token_ids and the state.<layer>.* tensors of its "
            "layers only)"));
      }
    }
    return absl::OkStatus();
  }

 private:
  const SafetensorsContents& file_;
  std::set<std::string> used_;
};

// Checks the file's metadata against the model. See DecodeFlaCache.
absl::Status CheckMetadata(const std::map<std::string, std::string>& md,
                           const ModelSpec& spec, FlaRecurrentLayout layout,
                           const std::string& fingerprint) {
  auto find = [&md](const char* key) -> const std::string* {
    auto it = md.find(key);
    return it == md.end() ? nullptr : &it->second;
  };
  if (const std::string* v = find(kFlaMetaFormat);
      v != nullptr && *v != kFlaFormatName) {
    return absl::InvalidArgumentError(
        absl::StrCat("fla cache: metadata ", kFlaMetaFormat, " is \"", *v,
                     "\", not \"", kFlaFormatName, "\""));
  }
  if (const std::string* v = find(kFlaMetaVersion);
      v != nullptr && *v != kFlaFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fla cache: metadata ", kFlaMetaVersion, " \"", *v,
        "\" is not a version this server reads (", kFlaFormatVersion, ")"));
  }
  if (const std::string* v = find(kFlaMetaModelType);
      v != nullptr && *v != spec.model_type) {
    return absl::FailedPreconditionError(
        absl::StrCat("fla cache: metadata ", kFlaMetaModelType, " is \"", *v,
                     "\"; this server's model is a ", spec.model_type));
  }
  if (const std::string* v = find(kFlaMetaFingerprint);
      v != nullptr && *v != fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "fla cache: metadata ", kFlaMetaFingerprint, " ", *v,
        " is another model's; this server's model is ", fingerprint));
  }
  if (const std::string* v = find(kFlaMetaRecurrentLayout); v != nullptr) {
    const char* ours = FlaRecurrentLayoutName(layout);
    if (*v != "key_first" && *v != "value_first") {
      return absl::InvalidArgumentError(
          absl::StrCat("fla cache: metadata ", kFlaMetaRecurrentLayout, " \"",
                       *v, "\" is neither key_first nor value_first"));
    }
    if (*v != ours) {
      return absl::InvalidArgumentError(
          absl::StrCat("fla cache: metadata ", kFlaMetaRecurrentLayout, " ", *v,
                       " contradicts model_type ", spec.model_type,
                       ", whose recurrent_state is ", ours,
                       layout == FlaRecurrentLayout::kKeyFirst ? " [H, K, V]"
                                                               : " [H, V, K]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* FlaRecurrentLayoutName(FlaRecurrentLayout layout) {
  return layout == FlaRecurrentLayout::kKeyFirst ? "key_first" : "value_first";
}

absl::StatusOr<FlaRecurrentLayout> FlaRecurrentLayoutOf(const ModelSpec& spec) {
  FlaRecurrentLayout layout;
  if (spec.model_type == "delta_net") {
    layout = FlaRecurrentLayout::kKeyFirst;
  } else if (spec.model_type == "gated_deltanet") {
    layout = FlaRecurrentLayout::kValueFirst;
  } else {
    return absl::FailedPreconditionError(absl::StrCat(
        "model_type ", spec.model_type,
        " has no fla cache layout (fla's cache format covers delta_net and "
        "gated_deltanet); export and import its sessions in the deltaserve "
        "format"));
  }
  int window = 0;
  for (int l = 0; l < spec.num_layers(); ++l) {
    const BlockSpec& b = spec.blocks[l];
    if (b.mixer != MixerKind::kGatedDeltaRule && !IsAttention(b)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", l, " of this ", spec.model_type, " model is a ",
          MixerKindName(b.mixer), " layer, which has no fla cache layout"));
    }
    if (IsWindowed(b)) {
      if (window != 0 && window != b.attention.window) {
        return absl::FailedPreconditionError(
            "sliding-window layers with different windows have no fla "
            "cache layout");
      }
      window = b.attention.window;
    }
  }
  return layout;
}

absl::StatusOr<std::string> EncodeFlaCache(const SessionSnapshot& snapshot,
                                           const ModelSpec& spec) {
  DS_ASSIGN_OR_RETURN(const FlaRecurrentLayout layout,
                      FlaRecurrentLayoutOf(spec));
  const bool has_kv = spec.KvBytesPerToken() > 0;
  const int page_size = snapshot.meta.page_size;
  if (has_kv && page_size <= 0) {
    return absl::DataLossError("session state has KV but no page size");
  }
  DS_ASSIGN_OR_RETURN(const SavedSequence saved,
                      FromSnapshot(snapshot, spec, has_kv ? page_size : 1));
  const int64_t t = saved.num_tokens;
  std::vector<TensorToWrite> tensors;
  {
    std::vector<int64_t> ids(snapshot.tokens.begin(), snapshot.tokens.end());
    TensorToWrite tok;
    tok.name = kTokenIds;
    tok.dtype = DType::kI64;
    tok.shape = {static_cast<int64_t>(ids.size())};
    tok.bytes.assign(reinterpret_cast<const char*>(ids.data()),
                     ids.size() * sizeof(int64_t));
    tensors.push_back(std::move(tok));
  }
  for (size_t l = 0; l < spec.blocks.size(); ++l) {
    const BlockSpec& b = spec.blocks[l];
    const std::string prefix = Prefix(l);
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      const int64_t h = g.num_v_heads, dk = g.head_k_dim, dv = g.head_v_dim;
      const int64_t w = g.conv_kernel;
      const float* state = saved.recurrent[l].data();
      std::vector<float> rec(state, state + h * dk * dv);
      if (layout == FlaRecurrentLayout::kValueFirst) {
        // Ours is [H, K, V]; Gated DeltaNet's [H, V, K].
        for (int64_t hi = 0; hi < h; ++hi) {
          const float* in = state + hi * dk * dv;
          float* out = rec.data() + hi * dk * dv;
          for (int64_t k = 0; k < dk; ++k) {
            for (int64_t v = 0; v < dv; ++v) out[v * dk + k] = in[k * dv + v];
          }
        }
      }
      tensors.push_back(F32Tensor(prefix + "recurrent_state",
                                  layout == FlaRecurrentLayout::kKeyFirst
                                      ? std::vector<int64_t>{h, dk, dv}
                                      : std::vector<int64_t>{h, dv, dk},
                                  rec));
      // Our conv tail [C, W − 1] holds the last W − 1 inputs, oldest first;
      // fla's [C, W] one more, which no conv reads: written as zeros.
      const float* tail = state + h * dk * dv;
      for (const ConvGroup& group : ConvGroups(g)) {
        std::vector<float> conv(group.rows * w, 0.f);
        for (int64_t r = 0; r < group.rows; ++r) {
          std::memcpy(conv.data() + r * w + 1,
                      tail + (group.first + r) * (w - 1),
                      (w - 1) * sizeof(float));
        }
        tensors.push_back(
            F32Tensor(absl::StrCat(prefix, "conv_state.", group.name),
                      {group.rows, w}, conv));
      }
    } else if (IsAttention(b)) {
      const int64_t row =
          int64_t{b.attention.num_kv_heads} * b.attention.head_dim;
      const bool windowed = IsWindowed(b);
      // Rows: every position, or a window's worth; row i is position
      // t − rows + i. We hold positions from `from` on (a sliding window's
      // oldest position is not kept: zeros).
      const int64_t rows =
          windowed ? std::min<int64_t>(t, b.attention.window) : t;
      const int64_t from = windowed ? saved.window_from : 0;
      std::vector<float> keys(rows * row, 0.f), values(rows * row, 0.f);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t pos = t - rows + i;
        if (pos < from) continue;
        std::memcpy(keys.data() + i * row,
                    saved.keys[l].data() + (pos - from) * row,
                    row * sizeof(float));
        std::memcpy(values.data() + i * row,
                    saved.values[l].data() + (pos - from) * row,
                    row * sizeof(float));
      }
      tensors.push_back(F32Tensor(prefix + "attn_state.k", {rows, row}, keys));
      tensors.push_back(
          F32Tensor(prefix + "attn_state.v", {rows, row}, values));
    }
  }
  const std::map<std::string, std::string> metadata = {
      {kFlaMetaFormat, kFlaFormatName},
      {kFlaMetaVersion, kFlaFormatVersion},
      {kFlaMetaModelType, spec.model_type},
      {kFlaMetaFingerprint, snapshot.meta.model_fingerprint},
      {kFlaMetaRecurrentLayout, FlaRecurrentLayoutName(layout)},
      {kFlaMetaStateTokens, absl::StrCat(t)},
  };
  return EncodeSafetensors(tensors, metadata);
}

absl::StatusOr<SessionSnapshot> DecodeFlaCache(absl::string_view bytes,
                                               const ModelSpec& spec,
                                               int page_size,
                                               SessionMeta meta) {
  DS_ASSIGN_OR_RETURN(const FlaRecurrentLayout layout,
                      FlaRecurrentLayoutOf(spec));
  if (spec.KvBytesPerToken() > 0 && page_size <= 0) {
    return absl::InvalidArgumentError("page_size must be positive");
  }
  DS_ASSIGN_OR_RETURN(const SafetensorsContents file,
                      ParseSafetensors(bytes, kSource));
  DS_RETURN_IF_ERROR(
      CheckMetadata(file.metadata, spec, layout, meta.model_fingerprint));
  TensorReader reader(file);

  // The history, and how much of it the state covers.
  DS_ASSIGN_OR_RETURN(const TensorEntry* ids,
                      reader.Get(kTokenIds, DType::kI64, {-1}));
  const int64_t n_hist = ids->shape[0];
  std::vector<int32_t> tokens(n_hist);
  for (int64_t i = 0; i < n_hist; ++i) {
    int64_t id;
    std::memcpy(&id, ids->data + i * sizeof(int64_t), sizeof(id));
    if (id < 0 || id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fla cache: tensor ", kTokenIds, " holds token id ", id, " at index ",
          i, ", outside [0, ", spec.vocab_size, ")"));
    }
    tokens[i] = static_cast<int32_t>(id);
  }
  int64_t t = n_hist;
  if (auto it = file.metadata.find(kFlaMetaStateTokens);
      it != file.metadata.end()) {
    if (!absl::SimpleAtoi(it->second, &t) || t < 0 || t > n_hist) {
      return absl::InvalidArgumentError(
          absl::StrCat("fla cache: metadata ", kFlaMetaStateTokens, " \"",
                       it->second, "\" is not a token count in [0, ", n_hist,
                       "] (the length of ", kTokenIds, ")"));
    }
  }

  const size_t n = spec.blocks.size();
  const int window = WindowOf(spec);
  SavedSequence saved;
  saved.num_tokens = t;
  saved.window_from = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
  saved.recurrent.resize(n);
  saved.keys.resize(n);
  saved.values.resize(n);
  for (size_t l = 0; l < n; ++l) {
    const BlockSpec& b = spec.blocks[l];
    const std::string prefix = Prefix(l);
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      const int64_t h = g.num_v_heads, dk = g.head_k_dim, dv = g.head_v_dim;
      const int64_t w = g.conv_kernel;
      const bool key_first = layout == FlaRecurrentLayout::kKeyFirst;
      DS_ASSIGN_OR_RETURN(
          const TensorEntry* rec_entry,
          reader.Get(prefix + "recurrent_state", DType::kF32,
                     key_first ? std::vector<int64_t>{h, dk, dv}
                               : std::vector<int64_t>{h, dv, dk}));
      DS_ASSIGN_OR_RETURN(std::vector<float> rec, reader.Floats(*rec_entry));
      std::vector<float>& out = saved.recurrent[l];
      out.assign(h * dk * dv + int64_t{g.conv_dim()} * (w - 1), 0.f);
      if (key_first) {
        std::copy(rec.begin(), rec.end(), out.begin());
      } else {
        for (int64_t hi = 0; hi < h; ++hi) {
          const float* in = rec.data() + hi * dk * dv;  // [V, K]
          float* o = out.data() + hi * dk * dv;         // [K, V]
          for (int64_t v = 0; v < dv; ++v) {
            for (int64_t k = 0; k < dk; ++k) o[k * dv + v] = in[v * dk + k];
          }
        }
      }
      float* tail = out.data() + h * dk * dv;
      for (const ConvGroup& group : ConvGroups(g)) {
        DS_ASSIGN_OR_RETURN(
            const TensorEntry* e,
            reader.Get(absl::StrCat(prefix, "conv_state.", group.name),
                       DType::kF32, {group.rows, w}));
        DS_ASSIGN_OR_RETURN(std::vector<float> conv, reader.Floats(*e));
        // Column 0, the oldest input, is not read by a width-w conv.
        for (int64_t r = 0; r < group.rows; ++r) {
          std::memcpy(tail + (group.first + r) * (w - 1),
                      conv.data() + r * w + 1, (w - 1) * sizeof(float));
        }
      }
    } else if (IsAttention(b)) {
      const int64_t row =
          int64_t{b.attention.num_kv_heads} * b.attention.head_dim;
      const bool windowed = IsWindowed(b);
      const int64_t from = windowed ? saved.window_from : 0;
      std::vector<float>* dest[2] = {&saved.keys[l], &saved.values[l]};
      int64_t rows_k = -1;
      for (int kv = 0; kv < 2; ++kv) {
        const std::string name =
            prefix + (kv == 0 ? "attn_state.k" : "attn_state.v");
        DS_ASSIGN_OR_RETURN(
            const TensorEntry* e,
            reader.Get(name, DType::kF32, {windowed ? -1 : t, row}));
        const int64_t rows = e->shape[0];
        if (windowed) {
          const int64_t need = std::min<int64_t>(t, b.attention.window);
          if (rows < need || rows > t) {
            return absl::InvalidArgumentError(absl::StrCat(
                "fla cache: tensor ", name, " has ", rows,
                " rows; a sliding-window layer of window ", b.attention.window,
                " after ", t, " tokens needs ",
                need == t ? absl::StrCat(t)
                          : absl::StrCat("between ", need, " and ", t),
                " (the last positions, oldest first)"));
          }
        }
        if (kv == 1 && rows != rows_k) {
          return absl::InvalidArgumentError(
              absl::StrCat("fla cache: tensor ", name, " has ", rows,
                           " rows but ", prefix, "attn_state.k has ", rows_k));
        }
        rows_k = rows;
        DS_ASSIGN_OR_RETURN(std::vector<float> data, reader.Floats(*e));
        // Row i is position t − rows + i; we keep positions [from, t).
        dest[kv]->assign((t - from) * row, 0.f);
        const int64_t skip = from - (t - rows);
        std::memcpy(dest[kv]->data(), data.data() + skip * row,
                    (t - from) * row * sizeof(float));
      }
    }
  }
  DS_RETURN_IF_ERROR(reader.CheckNoOthers(spec));
  return ToSnapshot(std::move(saved), spec, page_size, std::move(meta),
                    std::move(tokens));
}

}  // namespace deltaserve
