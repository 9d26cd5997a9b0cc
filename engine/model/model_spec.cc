#include "engine/model/model_spec.h"

#include "absl/strings/str_cat.h"
#include "engine/model/linear_configs.h"
#include "kernels/status.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

using json = nlohmann::json;

// Reads config fields with errors that name the file and the field.
class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& source)
      : j_(j), source_(source) {}

  absl::StatusOr<int64_t> Int(const char* key) const {
    if (!j_.contains(key) || !j_[key].is_number_integer()) {
      return Error(key, "an integer");
    }
    return j_[key].get<int64_t>();
  }
  absl::StatusOr<int64_t> PositiveInt(const char* key) const {
    DS_ASSIGN_OR_RETURN(int64_t v, Int(key));
    if (v <= 0 || v > (int64_t{1} << 40))
      return Error(key, "a positive integer");
    return v;
  }
  int64_t IntOr(const char* key, int64_t dflt) const {
    if (j_.contains(key) && j_[key].is_number_integer()) {
      return j_[key].get<int64_t>();
    }
    return dflt;
  }
  double NumberOr(const char* key, double dflt) const {
    if (j_.contains(key) && j_[key].is_number()) return j_[key].get<double>();
    return dflt;
  }
  bool BoolOr(const char* key, bool dflt) const {
    if (j_.contains(key) && j_[key].is_boolean()) return j_[key].get<bool>();
    return dflt;
  }
  absl::Status Error(const char* key, const char* what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field ", key, " must be ", what));
  }

 private:
  const json& j_;
  const std::string& source_;
};

std::vector<int32_t> IdsOf(const json& j, const char* key) {
  std::vector<int32_t> ids;
  if (!j.contains(key)) return ids;
  const json& v = j[key];
  if (v.is_number_integer()) {
    ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    }
  }
  return ids;
}

// Qwen3.5 (qwen3_5_text) and Qwen3-Next share this layout of config.json.
absl::StatusOr<ModelSpec> ParseQwenHybrid(const json& j,
                                          const std::string& model_type,
                                          const std::string& source) {
  ConfigReader r(j, source);
  ModelSpec spec;
  spec.model_type = model_type;
  DS_ASSIGN_OR_RETURN(int64_t vocab, r.PositiveInt("vocab_size"));
  DS_ASSIGN_OR_RETURN(int64_t hidden, r.PositiveInt("hidden_size"));
  DS_ASSIGN_OR_RETURN(int64_t layers, r.PositiveInt("num_hidden_layers"));
  DS_ASSIGN_OR_RETURN(int64_t inter, r.PositiveInt("intermediate_size"));
  DS_ASSIGN_OR_RETURN(int64_t heads, r.PositiveInt("num_attention_heads"));
  DS_ASSIGN_OR_RETURN(int64_t kv_heads, r.PositiveInt("num_key_value_heads"));
  const int64_t head_dim = r.IntOr("head_dim", hidden / heads);
  if (head_dim <= 0) return r.Error("head_dim", "a positive integer");
  if (heads % kv_heads != 0) {
    return r.Error("num_key_value_heads", "a divisor of num_attention_heads");
  }
  DS_ASSIGN_OR_RETURN(int64_t lk_heads, r.PositiveInt("linear_num_key_heads"));
  DS_ASSIGN_OR_RETURN(int64_t lv_heads,
                      r.PositiveInt("linear_num_value_heads"));
  DS_ASSIGN_OR_RETURN(int64_t lk_dim, r.PositiveInt("linear_key_head_dim"));
  DS_ASSIGN_OR_RETURN(int64_t lv_dim, r.PositiveInt("linear_value_head_dim"));
  if (lv_heads % lk_heads != 0) {
    return r.Error("linear_num_value_heads",
                   "a multiple of linear_num_key_heads");
  }
  const int64_t conv = r.IntOr("linear_conv_kernel_dim", 4);
  if (conv < 1 || conv > 16) {
    return r.Error("linear_conv_kernel_dim", "in [1, 16]");
  }
  spec.vocab_size = static_cast<int>(vocab);
  spec.hidden_size = static_cast<int>(hidden);
  spec.rms_norm_eps = static_cast<float>(r.NumberOr("rms_norm_eps", 1e-6));
  spec.norm_zero_centered = true;
  spec.tie_word_embeddings = r.BoolOr("tie_word_embeddings", false);
  spec.max_position_embeddings = r.IntOr("max_position_embeddings", 32768);
  spec.eos_token_ids = IdsOf(j, "eos_token_id");

  // RoPE: rope_parameters (newer) or rope_theta/partial_rotary_factor (older).
  double theta = r.NumberOr("rope_theta", 10000.0);
  double partial = r.NumberOr("partial_rotary_factor", 1.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (j.contains(key) && j[key].is_object()) {
      const json& rp = j[key];
      if (rp.contains("rope_theta") && rp["rope_theta"].is_number()) {
        theta = rp["rope_theta"].get<double>();
      }
      if (rp.contains("partial_rotary_factor") &&
          rp["partial_rotary_factor"].is_number()) {
        partial = rp["partial_rotary_factor"].get<double>();
      }
      if (rp.contains("rope_type") && rp["rope_type"].is_string()) {
        const std::string type = rp["rope_type"].get<std::string>();
        if (type != "default" && type != "mrope") {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": unsupported rope_type ", type));
        }
      }
    }
  }
  int rotary_dim = static_cast<int>(head_dim * partial);
  rotary_dim -= rotary_dim % 2;
  if (rotary_dim <= 0 || rotary_dim > head_dim) {
    return r.Error("partial_rotary_factor", "in (0, 1]");
  }

  std::vector<std::string> types;
  if (j.contains("layer_types")) {
    if (!j["layer_types"].is_array() ||
        static_cast<int64_t>(j["layer_types"].size()) != layers) {
      return r.Error("layer_types", "a list of num_hidden_layers strings");
    }
    for (const json& t : j["layer_types"]) {
      if (!t.is_string()) return r.Error("layer_types", "a list of strings");
      types.push_back(t.get<std::string>());
    }
  } else {
    const int64_t interval = r.IntOr("full_attention_interval", 4);
    if (interval <= 0) return r.Error("full_attention_interval", "positive");
    for (int64_t i = 0; i < layers; ++i) {
      types.push_back((i + 1) % interval == 0 ? "full_attention"
                                              : "linear_attention");
    }
  }
  for (const std::string& type : types) {
    BlockSpec block;
    block.intermediate_size = static_cast<int>(inter);
    if (type == "linear_attention") {
      block.mixer = MixerKind::kGatedDeltaRule;
      block.gdr.num_k_heads = static_cast<int>(lk_heads);
      block.gdr.num_v_heads = static_cast<int>(lv_heads);
      block.gdr.head_k_dim = static_cast<int>(lk_dim);
      block.gdr.head_v_dim = static_cast<int>(lv_dim);
      block.gdr.conv_kernel = static_cast<int>(conv);
    } else if (type == "full_attention") {
      block.mixer = MixerKind::kGlobalAttention;
      block.attention.num_heads = static_cast<int>(heads);
      block.attention.num_kv_heads = static_cast<int>(kv_heads);
      block.attention.head_dim = static_cast<int>(head_dim);
      block.attention.rotary_dim = rotary_dim;
      block.attention.rope_theta = static_cast<float>(theta);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": unsupported layer type \"", type, "\" in layer_types"));
    }
    spec.blocks.push_back(block);
  }
  return spec;
}

// fla's `delta_net` and `gated_deltanet` configs: the recurrent layers,
// with softmax attention at the layers the `attn` dict names.
absl::StatusOr<ModelSpec> ParseFla(const json& j, const std::string& model_type,
                                   const std::string& source) {
  ConfigReader r(j, source);
  ModelSpec spec;
  spec.model_type = model_type;
  DS_ASSIGN_OR_RETURN(int64_t vocab, r.PositiveInt("vocab_size"));
  DS_ASSIGN_OR_RETURN(int64_t hidden, r.PositiveInt("hidden_size"));
  DS_ASSIGN_OR_RETURN(int64_t layers, r.PositiveInt("num_hidden_layers"));
  DS_ASSIGN_OR_RETURN(int64_t heads, r.PositiveInt("num_heads"));
  const bool gated = model_type == "gated_deltanet";
  // What the layers here compute; other settings are refused by name.
  auto want_bool = [&](const char* key, bool dflt,
                       bool needed) -> absl::Status {
    if (r.BoolOr(key, dflt) != needed) {
      return r.Error(key, needed ? "true (the only supported setting)"
                                 : "false (the only supported setting)");
    }
    return absl::OkStatus();
  };
  DS_RETURN_IF_ERROR(want_bool("use_short_conv", true, true));
  DS_RETURN_IF_ERROR(want_bool("allow_neg_eigval", false, false));
  if (!gated) {
    DS_RETURN_IF_ERROR(want_bool("use_beta", true, true));
    DS_RETURN_IF_ERROR(want_bool("use_output_norm", true, true));
    for (const auto& [key, value] :
         {std::pair<const char*, const char*>{"qk_norm", "l2"},
          {"qk_activation", "silu"}}) {
      if (j.contains(key) && !(j[key].is_string() && j[key] == value)) {
        return r.Error(key, value);
      }
    }
  }
  if (j.contains("hidden_act") &&
      !(j["hidden_act"].is_string() &&
        (j["hidden_act"] == "swish" || j["hidden_act"] == "silu"))) {
    return r.Error("hidden_act", "swish");
  }
  GatedDeltaRuleSpec g;
  if (gated) {
    const int64_t head_dim = r.IntOr("head_dim", 256);
    const int64_t v_heads = r.IntOr("num_v_heads", heads);
    const double expand_v = r.NumberOr("expand_v", 2.0);
    if (head_dim <= 0) return r.Error("head_dim", "a positive integer");
    if (v_heads <= 0 || v_heads % heads != 0) {
      return r.Error("num_v_heads", "a positive multiple of num_heads");
    }
    g.num_k_heads = static_cast<int>(heads);
    g.num_v_heads = static_cast<int>(v_heads);
    g.head_k_dim = static_cast<int>(head_dim);
    g.head_v_dim = static_cast<int>(head_dim * expand_v);
    g.use_decay = true;
    g.output_gate = r.BoolOr("use_gate", true);
  } else {
    const int64_t key_dim =
        static_cast<int64_t>(hidden * r.NumberOr("expand_k", 1.0));
    const int64_t value_dim =
        static_cast<int64_t>(hidden * r.NumberOr("expand_v", 1.0));
    if (key_dim % heads != 0 || value_dim % heads != 0) {
      return r.Error("num_heads", "a divisor of the key and value widths");
    }
    g.num_k_heads = g.num_v_heads = static_cast<int>(heads);
    g.head_k_dim = static_cast<int>(key_dim / heads);
    g.head_v_dim = static_cast<int>(value_dim / heads);
    g.use_decay = false;
    g.output_gate = r.BoolOr("use_gate", false);
  }
  if (g.head_k_dim <= 0 || g.head_v_dim <= 0) {
    return r.Error("head_dim", "positive key and value head sizes");
  }
  g.conv_kernel = static_cast<int>(r.IntOr("conv_size", 4));
  if (g.conv_kernel < 1 || g.conv_kernel > 16) {
    return r.Error("conv_size", "in [1, 16]");
  }
  spec.vocab_size = static_cast<int>(vocab);
  spec.hidden_size = static_cast<int>(hidden);
  spec.rms_norm_eps = static_cast<float>(r.NumberOr("norm_eps", 1e-6));
  spec.norm_zero_centered = false;
  spec.tie_word_embeddings = r.BoolOr("tie_word_embeddings", false);
  spec.max_position_embeddings = r.IntOr("max_position_embeddings", 2048);
  spec.eos_token_ids = IdsOf(j, "eos_token_id");
  // 0: derived, read from the checkpoint's tensor shapes at load.
  const int64_t inter = r.IntOr("intermediate_size", 0);
  if (inter < 0) return r.Error("intermediate_size", "positive or null");

  // The attention layers.
  std::vector<bool> is_attention(layers, false);
  AttentionSpec att;
  int window = 0;
  if (j.contains("attn") && j["attn"].is_object()) {
    const json& a = j["attn"];
    const std::string where = source + ": attn";
    ConfigReader ar(a, where);
    if (!a.contains("layers") || !a["layers"].is_array()) {
      return ar.Error("layers", "a list of layer indexes");
    }
    for (const json& l : a["layers"]) {
      if (!l.is_number_integer() || l.get<int64_t>() < 0 ||
          l.get<int64_t>() >= layers) {
        return ar.Error("layers", "indexes in [0, num_hidden_layers)");
      }
      is_attention[l.get<int64_t>()] = true;
    }
    DS_ASSIGN_OR_RETURN(int64_t a_heads, ar.PositiveInt("num_heads"));
    const int64_t a_kv = ar.IntOr("num_kv_heads", a_heads);
    if (a_kv <= 0 || a_heads % a_kv != 0) {
      return ar.Error("num_kv_heads", "a divisor of num_heads");
    }
    if (hidden % a_heads != 0) {
      return ar.Error("num_heads", "a divisor of hidden_size");
    }
    if (ar.BoolOr("qkv_bias", false)) return ar.Error("qkv_bias", "false");
    att.num_heads = static_cast<int>(a_heads);
    att.num_kv_heads = static_cast<int>(a_kv);
    att.head_dim = static_cast<int>(hidden / a_heads);
    att.rotary_dim = att.head_dim;
    att.rope_theta = static_cast<float>(ar.NumberOr("rope_theta", 10000.0));
    att.qk_norm = false;
    att.output_gate = false;
    const int64_t w = ar.IntOr("window_size", 0);
    if (w < 0) return ar.Error("window_size", "positive or null");
    window = static_cast<int>(w);
    att.window = window;
  }
  for (int64_t l = 0; l < layers; ++l) {
    BlockSpec block;
    block.intermediate_size = static_cast<int>(inter);
    if (is_attention[l]) {
      block.mixer = window > 0 ? MixerKind::kSlidingWindowAttention
                               : MixerKind::kGlobalAttention;
      block.attention = att;
    } else {
      block.mixer = MixerKind::kGatedDeltaRule;
      block.gdr = g;
    }
    spec.blocks.push_back(block);
  }
  return spec;
}

}  // namespace

const char* MixerKindName(MixerKind kind) {
  switch (kind) {
    case MixerKind::kGatedDeltaRule:
      return "gated_delta_rule";
    case MixerKind::kGlobalAttention:
      return "global_attention";
    case MixerKind::kSlidingWindowAttention:
      return "sliding_window_attention";
    case MixerKind::kLinearAttention:
      return "linear_attention";
    case MixerKind::kPowerAttention:
      return "power_attention";
  }
  return "?";
}

int64_t ModelSpec::RecurrentStateBytes() const {
  int64_t bytes = 0;
  for (const BlockSpec& b : blocks) {
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      bytes +=
          int64_t{4} * b.gdr.num_v_heads * b.gdr.head_k_dim * b.gdr.head_v_dim;
      bytes += int64_t{4} * b.gdr.conv_dim() * (b.gdr.conv_kernel - 1);
    } else if (b.mixer == MixerKind::kLinearAttention ||
               b.mixer == MixerKind::kPowerAttention) {
      bytes += int64_t{4} * (b.linear.state_floats() + b.linear.aux_floats());
    }
  }
  return bytes;
}

int64_t ModelSpec::KvBytesPerToken() const {
  int64_t bytes = 0;
  for (const BlockSpec& b : blocks) {
    if (b.mixer == MixerKind::kGlobalAttention ||
        b.mixer == MixerKind::kSlidingWindowAttention) {
      bytes += int64_t{4} * 2 * b.attention.num_kv_heads * b.attention.head_dim;
    }
  }
  return bytes;
}

absl::StatusOr<ModelSpec> ParseModelConfig(std::string_view json_text,
                                           const std::string& source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a JSON object"));
  }
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field model_type is missing"));
  }
  const std::string model_type = j["model_type"].get<std::string>();
  if (model_type == "qwen3_5") {
    // The vision-language wrapper: the language model's config is nested.
    if (!j.contains("text_config") || !j["text_config"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": model_type qwen3_5 needs a text_config object"));
    }
    json text = j["text_config"];
    if (!text.contains("tie_word_embeddings") &&
        j.contains("tie_word_embeddings")) {
      text["tie_word_embeddings"] = j["tie_word_embeddings"];
    }
    if (!text.contains("eos_token_id") && j.contains("eos_token_id")) {
      text["eos_token_id"] = j["eos_token_id"];
    }
    DS_ASSIGN_OR_RETURN(ModelSpec spec,
                        ParseQwenHybrid(text, model_type, source));
    return spec;
  }
  if (model_type == "qwen3_5_text") {
    return ParseQwenHybrid(j, model_type, source);
  }
  if (model_type == "qwen3_next") {
    // Dense MLPs only: a layer has experts when num_experts > 0, it is not
    // in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
    const int64_t experts =
        j.contains("num_experts") && j["num_experts"].is_number_integer()
            ? j["num_experts"].get<int64_t>()
            : 0;
    if (experts > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": qwen3_next with mixture-of-experts MLPs (num_experts ",
          experts, ") is not supported; only dense MLPs (num_experts 0)"));
    }
    return ParseQwenHybrid(j, model_type, source);
  }
  if (model_type == "delta_net" || model_type == "gated_deltanet") {
    return ParseFla(j, model_type, source);
  }
  if (model_type == "linear_attn") return ParseLinearAttnConfig(j, source);
  if (model_type == "power_attn") return ParsePowerAttnConfig(j, source);
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": unknown model_type \"", model_type,
      "\" (supported: qwen3_5, qwen3_5_text, qwen3_next, delta_net, "
      "gated_deltanet, linear_attn, power_attn)"));
}

}  // namespace deltaserve
