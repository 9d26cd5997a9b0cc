#include "engine/model/linear_configs.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

using json = nlohmann::json;

// Typed reads of config fields; null counts as absent (HF writes None as
// null). A present field of the wrong type is an error naming it, never a
// silent default.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  bool Has(const char* key) const {
    return j_.contains(key) && !j_[key].is_null();
  }
  absl::Status Error(const char* key, const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(where_, ": field ", key, " must be ", what));
  }
  absl::StatusOr<int64_t> IntOr(const char* key, int64_t dflt) const {
    if (!Has(key)) return dflt;
    if (!j_[key].is_number_integer()) return Error(key, "an integer");
    return j_[key].get<int64_t>();
  }
  absl::StatusOr<int64_t> PositiveInt(const char* key) const {
    if (!Has(key)) return Error(key, "a positive integer (it is missing)");
    DS_ASSIGN_OR_RETURN(const int64_t v, IntOr(key, 0));
    if (v <= 0 || v > (int64_t{1} << 30)) {
      return Error(key, "a positive integer");
    }
    return v;
  }
  absl::StatusOr<int64_t> PositiveIntOr(const char* key, int64_t dflt) const {
    if (!Has(key)) return dflt;
    return PositiveInt(key);
  }
  absl::StatusOr<double> NumberOr(const char* key, double dflt) const {
    if (!Has(key)) return dflt;
    if (!j_[key].is_number()) return Error(key, "a number");
    return j_[key].get<double>();
  }
  absl::StatusOr<bool> BoolOr(const char* key, bool dflt) const {
    if (!Has(key)) return dflt;
    if (!j_[key].is_boolean()) return Error(key, "true or false");
    return j_[key].get<bool>();
  }
  absl::StatusOr<std::string> StringOr(const char* key,
                                       const std::string& dflt) const {
    if (!Has(key)) return dflt;
    if (!j_[key].is_string()) return Error(key, "a string");
    return j_[key].get<std::string>();
  }
  // A setting the engine supports only one way.
  absl::Status Want(const char* key, bool dflt, bool needed) const {
    DS_ASSIGN_OR_RETURN(const bool v, BoolOr(key, dflt));
    if (v != needed) {
      return Error(key, needed ? "true (the only supported setting)"
                               : "false (the only supported setting)");
    }
    return absl::OkStatus();
  }

 private:
  const json& j_;
  std::string where_;
};

std::vector<int32_t> EosIds(const json& j) {
  std::vector<int32_t> ids;
  if (!j.contains("eos_token_id")) return ids;
  const json& v = j["eos_token_id"];
  if (v.is_number_integer()) {
    ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    }
  }
  return ids;
}

// The model-wide fields fla's configs share (and power_attn follows).
absl::Status ParseCommon(const json& j, const Fields& f,
                         const std::string& model_type, ModelSpec* spec,
                         int64_t* layers) {
  spec->model_type = model_type;
  DS_ASSIGN_OR_RETURN(const int64_t vocab, f.PositiveInt("vocab_size"));
  DS_ASSIGN_OR_RETURN(const int64_t hidden, f.PositiveInt("hidden_size"));
  DS_ASSIGN_OR_RETURN(*layers, f.PositiveInt("num_hidden_layers"));
  DS_ASSIGN_OR_RETURN(const std::string act, f.StringOr("hidden_act", "swish"));
  if (act != "swish" && act != "silu") {
    return f.Error("hidden_act", "\"swish\" (the SwiGLU MLP)");
  }
  DS_ASSIGN_OR_RETURN(const double eps, f.NumberOr("norm_eps", 1e-6));
  if (!(eps > 0.0)) return f.Error("norm_eps", "positive");
  DS_ASSIGN_OR_RETURN(spec->tie_word_embeddings,
                      f.BoolOr("tie_word_embeddings", false));
  DS_ASSIGN_OR_RETURN(spec->max_position_embeddings,
                      f.IntOr("max_position_embeddings", 2048));
  // 0: derived, read from the checkpoint's tensor shapes at load.
  DS_ASSIGN_OR_RETURN(const int64_t inter, f.IntOr("intermediate_size", 0));
  if (inter < 0) return f.Error("intermediate_size", "positive or null");
  spec->vocab_size = static_cast<int>(vocab);
  spec->hidden_size = static_cast<int>(hidden);
  spec->rms_norm_eps = static_cast<float>(eps);
  spec->norm_zero_centered = false;
  spec->eos_token_ids = EosIds(j);
  spec->blocks.assign(*layers, BlockSpec());
  for (BlockSpec& b : spec->blocks)
    b.intermediate_size = static_cast<int>(inter);
  return absl::OkStatus();
}

// fla's hybrid `attn` dict: softmax attention (global, or sliding-window
// when window_size > 0) at the layers it lists. `layers_required`: whether
// the dict must list its layers. Returns false when there is no dict.
absl::StatusOr<bool> ParseAttnDict(const json& j, const std::string& source,
                                   int64_t num_layers, int64_t hidden,
                                   bool layers_required,
                                   std::vector<bool>* is_attention,
                                   AttentionSpec* att) {
  is_attention->assign(num_layers, false);
  if (!j.contains("attn") || j["attn"].is_null()) return false;
  const Fields top(j, source);
  if (!j["attn"].is_object()) return top.Error("attn", "an object or null");
  const json& a = j["attn"];
  const Fields f(a, source + ": attn");
  if (f.Has("layers")) {
    if (!layers_required) {
      return f.Error("layers", "absent when layer_types is given");
    }
    if (!a["layers"].is_array()) return f.Error("layers", "a list of indexes");
    for (const json& l : a["layers"]) {
      if (!l.is_number_integer() || l.get<int64_t>() < 0 ||
          l.get<int64_t>() >= num_layers) {
        return f.Error("layers", "indexes in [0, num_hidden_layers)");
      }
      (*is_attention)[l.get<int64_t>()] = true;
    }
  } else if (layers_required) {
    return f.Error("layers", "a list of layer indexes (it is missing)");
  }
  DS_ASSIGN_OR_RETURN(const int64_t heads, f.PositiveInt("num_heads"));
  DS_ASSIGN_OR_RETURN(const int64_t kv, f.PositiveIntOr("num_kv_heads", heads));
  if (heads % kv != 0) return f.Error("num_kv_heads", "a divisor of num_heads");
  if (hidden % heads != 0) {
    return f.Error("num_heads", "a divisor of hidden_size");
  }
  DS_RETURN_IF_ERROR(f.Want("qkv_bias", false, false));
  DS_RETURN_IF_ERROR(f.Want("qk_norm", false, false));
  DS_ASSIGN_OR_RETURN(const int64_t window, f.IntOr("window_size", 0));
  if (window < 0) return f.Error("window_size", "positive or null");
  DS_ASSIGN_OR_RETURN(const double theta, f.NumberOr("rope_theta", 10000.0));
  if (!(theta > 0.0)) return f.Error("rope_theta", "positive");
  att->num_heads = static_cast<int>(heads);
  att->num_kv_heads = static_cast<int>(kv);
  att->head_dim = static_cast<int>(hidden / heads);
  att->rotary_dim = att->head_dim - att->head_dim % 2;
  att->rope_theta = static_cast<float>(theta);
  att->qk_norm = false;
  att->output_gate = false;
  att->window = static_cast<int>(window);
  if (att->rotary_dim <= 0) {
    return f.Error("num_heads", "at most hidden_size / 2 (RoPE needs pairs)");
  }
  return true;
}

void SetAttention(const AttentionSpec& att, bool windowed, BlockSpec* b) {
  b->mixer = windowed ? MixerKind::kSlidingWindowAttention
                      : MixerKind::kGlobalAttention;
  b->attention = att;
  if (!windowed) b->attention.window = 0;
}

}  // namespace

int64_t LinearAttentionSpec::feature_dim() const {
  return degree > 0 ? PowerFeatureDim(head_k_dim, degree) : head_k_dim;
}

absl::StatusOr<ModelSpec> ParseLinearAttnConfig(const json& j,
                                                const std::string& source) {
  const Fields f(j, source);
  ModelSpec spec;
  int64_t layers = 0;
  DS_RETURN_IF_ERROR(ParseCommon(j, f, "linear_attn", &spec, &layers));
  const int64_t hidden = spec.hidden_size;
  DS_ASSIGN_OR_RETURN(const int64_t heads, f.PositiveInt("num_heads"));
  DS_ASSIGN_OR_RETURN(const int64_t kv, f.PositiveIntOr("num_kv_heads", heads));
  if (heads % kv != 0) return f.Error("num_kv_heads", "a divisor of num_heads");
  DS_ASSIGN_OR_RETURN(const double expand_k, f.NumberOr("expand_k", 1.0));
  DS_ASSIGN_OR_RETURN(const double expand_v, f.NumberOr("expand_v", 1.0));
  if (!(expand_k > 0.0 && expand_k <= 64.0)) {
    return f.Error("expand_k", "in (0, 64]");
  }
  if (!(expand_v > 0.0 && expand_v <= 64.0)) {
    return f.Error("expand_v", "in (0, 64]");
  }
  const int64_t key_dim = static_cast<int64_t>(hidden * expand_k);
  const int64_t value_dim = static_cast<int64_t>(hidden * expand_v);
  if (key_dim <= 0 || key_dim % heads != 0) {
    return f.Error("expand_k",
                   "such that hidden_size · expand_k is a positive multiple "
                   "of num_heads");
  }
  if (value_dim <= 0 || value_dim % heads != 0) {
    return f.Error("expand_v",
                   "such that hidden_size · expand_v is a positive multiple "
                   "of num_heads");
  }
  // What the engine computes; other settings are refused by name.
  DS_ASSIGN_OR_RETURN(const std::string feature_map,
                      f.StringOr("feature_map", "elementwise_product"));
  if (feature_map != "elu") {
    return f.Error("feature_map",
                   absl::StrCat("\"elu\" (elu + 1, the only supported feature "
                                "map), not \"",
                                feature_map, "\""));
  }
  DS_ASSIGN_OR_RETURN(const std::string mode,
                      f.StringOr("attn_mode", "fused_chunk"));
  if (mode != "chunk" && mode != "fused_chunk" && mode != "fused_recurrent") {
    return f.Error("attn_mode",
                   "\"chunk\", \"fused_chunk\" or \"fused_recurrent\"");
  }
  DS_RETURN_IF_ERROR(f.Want("norm_q", false, false));
  DS_RETURN_IF_ERROR(f.Want("norm_k", false, false));
  LinearAttentionSpec lin;
  lin.num_heads = static_cast<int>(heads);
  lin.num_kv_heads = static_cast<int>(kv);
  lin.head_k_dim = static_cast<int>(key_dim / heads);
  lin.head_v_dim = static_cast<int>(value_dim / heads);
  lin.degree = 0;
  // fla divides by the normaliser only with norm_feature_map (default off);
  // its output RMSNorm is always there (weight optional).
  DS_ASSIGN_OR_RETURN(lin.normalize, f.BoolOr("norm_feature_map", false));
  DS_ASSIGN_OR_RETURN(lin.norm_affine, f.BoolOr("elementwise_affine", true));

  std::vector<bool> is_attention;
  AttentionSpec att;
  DS_RETURN_IF_ERROR(ParseAttnDict(j, source, layers, hidden,
                                   /*layers_required=*/true, &is_attention,
                                   &att)
                         .status());
  for (int64_t l = 0; l < layers; ++l) {
    BlockSpec& b = spec.blocks[l];
    if (is_attention[l]) {
      SetAttention(att, att.window > 0, &b);
    } else {
      b.mixer = MixerKind::kLinearAttention;
      b.linear = lin;
    }
  }
  return spec;
}

absl::StatusOr<ModelSpec> ParsePowerAttnConfig(const json& j,
                                               const std::string& source) {
  const Fields f(j, source);
  ModelSpec spec;
  int64_t layers = 0;
  DS_RETURN_IF_ERROR(ParseCommon(j, f, "power_attn", &spec, &layers));
  const int64_t hidden = spec.hidden_size;
  DS_ASSIGN_OR_RETURN(const int64_t heads, f.PositiveInt("num_heads"));
  DS_ASSIGN_OR_RETURN(const int64_t kv, f.PositiveIntOr("num_kv_heads", heads));
  if (heads % kv != 0) return f.Error("num_kv_heads", "a divisor of num_heads");
  if (!f.Has("head_dim") && hidden % heads != 0) {
    return f.Error("head_dim",
                   "given when num_heads does not divide "
                   "hidden_size");
  }
  DS_ASSIGN_OR_RETURN(const int64_t head_dim,
                      f.PositiveIntOr("head_dim", hidden / heads));
  DS_ASSIGN_OR_RETURN(const int64_t head_v_dim,
                      f.PositiveIntOr("head_v_dim", head_dim));
  DS_ASSIGN_OR_RETURN(const int64_t degree, f.IntOr("degree", 2));
  if (degree < 2 || degree % 2 != 0 || degree > 16) {
    return f.Error("degree", "an even number in [2, 16]");
  }
  LinearAttentionSpec pw;
  pw.num_heads = static_cast<int>(heads);
  pw.num_kv_heads = static_cast<int>(kv);
  pw.head_k_dim = static_cast<int>(head_dim);
  pw.head_v_dim = static_cast<int>(head_v_dim);
  pw.degree = static_cast<int>(degree);
  // At most 2^31 − 1 state floats per kv head.
  const int64_t features = pw.feature_dim();
  if (features < 1 || features * head_v_dim > int64_t{0x7fffffff}) {
    return f.Error("degree",
                   absl::StrCat("small enough for head_dim ", head_dim,
                                " (C(head_dim + degree − 1, degree) · "
                                "head_v_dim state floats per head)"));
  }
  DS_ASSIGN_OR_RETURN(pw.normalize, f.BoolOr("normalize", true));
  DS_ASSIGN_OR_RETURN(pw.gating, f.BoolOr("gating", true));
  // logit(0.999): gates start near 1 (Manifest AI's power-attention init).
  DS_ASSIGN_OR_RETURN(const double gate_bias,
                      f.NumberOr("gate_bias", 6.906768));
  pw.gate_bias = static_cast<float>(gate_bias);
  DS_ASSIGN_OR_RETURN(pw.rotary, f.BoolOr("rotary", true));
  DS_ASSIGN_OR_RETURN(const int64_t rotary_dim,
                      f.IntOr("rotary_dim", head_dim - head_dim % 2));
  if (pw.rotary &&
      (rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim)) {
    return f.Error("rotary_dim", "even and in (0, head_dim]");
  }
  pw.rotary_dim = pw.rotary ? static_cast<int>(rotary_dim) : 0;
  DS_ASSIGN_OR_RETURN(const double theta, f.NumberOr("rope_theta", 10000.0));
  if (!(theta > 0.0)) return f.Error("rope_theta", "positive");
  pw.rope_theta = static_cast<float>(theta);

  // The softmax attention layers: attn.layers (fla style), or layer_types.
  const bool has_types = f.Has("layer_types");
  std::vector<bool> is_attention;
  AttentionSpec att;
  DS_ASSIGN_OR_RETURN(
      const bool has_attn,
      ParseAttnDict(j, source, layers, hidden,
                    /*layers_required=*/!has_types, &is_attention, &att));
  std::vector<std::string> types(layers);
  if (has_types) {
    const json& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != layers) {
      return f.Error("layer_types", "a list of num_hidden_layers strings");
    }
    for (int64_t l = 0; l < layers; ++l) {
      if (!lt[l].is_string()) return f.Error("layer_types", "strings");
      types[l] = lt[l].get<std::string>();
    }
  } else {
    for (int64_t l = 0; l < layers; ++l) {
      types[l] = !is_attention[l] ? "power_attention"
                 : att.window > 0 ? "sliding_attention"
                                  : "full_attention";
    }
  }
  for (int64_t l = 0; l < layers; ++l) {
    BlockSpec& b = spec.blocks[l];
    const std::string& type = types[l];
    if (type == "power_attention") {
      b.mixer = MixerKind::kPowerAttention;
      b.linear = pw;
    } else if (type == "full_attention" || type == "sliding_attention") {
      const bool windowed = type == "sliding_attention";
      if (!has_attn) {
        return f.Error("attn", absl::StrCat("an object describing the "
                                            "softmax attention of layer ",
                                            l, " (", type, ")"));
      }
      if (windowed && att.window <= 0) {
        return Fields(j["attn"], source + ": attn")
            .Error("window_size", "positive for sliding_attention layers");
      }
      SetAttention(att, windowed, &b);
    } else {
      return f.Error("layer_types",
                     absl::StrCat("entries among \"power_attention\", "
                                  "\"full_attention\" and "
                                  "\"sliding_attention\", not \"",
                                  type, "\""));
    }
  }
  return spec;
}

}  // namespace deltaserve
