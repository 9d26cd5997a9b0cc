#include "engine/model/random_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/model_spec.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

class Writer {
 public:
  explicit Writer(uint32_t seed) : rng_(seed) {}

  void Uniform(const std::string& name, std::vector<int64_t> shape,
               float center, float radius) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::uniform_real_distribution<float> uni(center - radius, center + radius);
    std::vector<float> data(static_cast<size_t>(n));
    for (float& x : data) x = uni(rng_);
    TensorToWrite t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = std::move(shape);
    t.bytes.assign(reinterpret_cast<const char*>(data.data()), n * 4);
    tensors_.push_back(std::move(t));
  }
  // A [rows, cols] projection, uniform in ±1/sqrt(cols).
  void Proj(const std::string& name, int64_t rows, int64_t cols) {
    Uniform(name, {rows, cols}, 0.0f,
            1.0f / std::sqrt(static_cast<float>(cols)));
  }
  void Norm(const std::string& name, int64_t dim) {
    Uniform(name, {dim}, 1.0f, 0.2f);
  }
  std::vector<TensorToWrite> Take() { return std::move(tensors_); }

 private:
  std::mt19937 rng_;
  std::vector<TensorToWrite> tensors_;
};

}  // namespace

absl::StatusOr<std::vector<TensorToWrite>> RandomFlaTensors(
    const nlohmann::json& config, uint32_t seed, int intermediate_size) {
  DS_ASSIGN_OR_RETURN(const ModelSpec spec,
                      ParseModelConfig(config.dump(), "config.json"));
  Writer w(seed);
  const int64_t d = spec.hidden_size, v = spec.vocab_size;
  w.Uniform("model.embeddings.weight", {v, d}, 0.0f, 1.0f);
  w.Norm("model.norm.weight", d);
  if (!spec.tie_word_embeddings) w.Proj("lm_head.weight", v, d);
  for (int i = 0; i < spec.num_layers(); ++i) {
    const BlockSpec& b = spec.blocks[i];
    const std::string l = absl::StrCat("model.layers.", i, ".");
    const std::string m = l + "attn.";
    const int64_t inter =
        b.intermediate_size > 0 ? b.intermediate_size : intermediate_size;
    w.Norm(l + "attn_norm.weight", d);
    w.Norm(l + "mlp_norm.weight", d);
    w.Proj(l + "mlp.gate_proj.weight", inter, d);
    w.Proj(l + "mlp.up_proj.weight", inter, d);
    w.Proj(l + "mlp.down_proj.weight", d, inter);
    if (b.mixer == MixerKind::kLinearAttention ||
        b.mixer == MixerKind::kPowerAttention) {
      const LinearAttentionSpec& s = b.linear;
      const int64_t h = s.num_heads, hkv = s.num_kv_heads;
      w.Proj(m + "q_proj.weight", h * s.head_k_dim, d);
      w.Proj(m + "k_proj.weight", hkv * s.head_k_dim, d);
      w.Proj(m + "v_proj.weight", hkv * s.head_v_dim, d);
      w.Proj(m + "o_proj.weight", d, h * s.head_v_dim);
      if (s.norm_affine) {
        w.Norm(m + (s.degree > 0 ? "o_norm.weight" : "norm.weight"),
               s.head_v_dim);
      }
      if (s.degree > 0 && s.gating) w.Proj(m + "g_proj.weight", hkv, d);
      if (s.degree > 0 && s.rotary) w.Proj(m + "r_proj.weight", hkv, d);
    } else if (b.mixer == MixerKind::kGlobalAttention ||
               b.mixer == MixerKind::kSlidingWindowAttention) {
      const AttentionSpec& a = b.attention;
      const int64_t qd = int64_t{a.num_heads} * a.head_dim;
      const int64_t kvd = int64_t{a.num_kv_heads} * a.head_dim;
      w.Proj(m + "q_proj.weight", qd, d);
      w.Proj(m + "k_proj.weight", kvd, d);
      w.Proj(m + "v_proj.weight", kvd, d);
      w.Proj(m + "o_proj.weight", d, qd);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("RandomFlaTensors: layer ", i, " is a ",
                       MixerKindName(b.mixer), " layer"));
    }
  }
  return w.Take();
}

absl::Status WriteModelDir(const std::string& dir, const nlohmann::json& config,
                           const std::vector<TensorToWrite>& tensors) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  std::ofstream out(fs::path(dir) / "config.json",
                    std::ios::binary | std::ios::trunc);
  out << config.dump(2);
  out.close();
  if (!out) {
    return absl::InternalError(
        absl::StrCat("cannot write ", dir, "/config.json"));
  }
  return WriteSafetensors((fs::path(dir) / "model.safetensors").string(),
                          tensors);
}

}  // namespace deltaserve
