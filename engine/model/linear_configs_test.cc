// linear_attn (fla) and power_attn (deltaserve, engine/model/README.md)
// configs: what they parse to, the state sizes the model reports, loading a
// tiny random checkpoint, and every refused setting named.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/model/model_spec.h"
#include "engine/model/random_checkpoint.h"
#include "engine/model/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

// fla's LinearAttentionConfig as saved by save_pretrained (nulls included),
// with the elu feature map and a sliding-window attention layer.
json LinearAttnConfig() {
  return json::parse(R"({
    "model_type": "linear_attn",
    "architectures": ["LinearAttentionForCausalLM"],
    "attn_mode": "fused_chunk",
    "hidden_size": 64,
    "expand_k": 0.5,
    "expand_v": 1.0,
    "hidden_ratio": 4,
    "intermediate_size": null,
    "num_hidden_layers": 3,
    "num_heads": 4,
    "num_kv_heads": 2,
    "feature_map": "elu",
    "tie_feature_map_qk": false,
    "norm_q": false,
    "norm_k": false,
    "norm_feature_map": true,
    "hidden_act": "swish",
    "max_position_embeddings": 2048,
    "elementwise_affine": true,
    "norm_eps": 1e-06,
    "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 2,
             "qkv_bias": false, "window_size": 24, "rope_theta": 10000.0},
    "use_cache": true,
    "pad_token_id": null,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": false,
    "fuse_norm": true,
    "fuse_swiglu": true,
    "fuse_cross_entropy": true,
    "vocab_size": 97
  })");
}

// Conformal-sympow of degree 2 mixed with sliding-window and global
// attention through layer_types.
json PowerAttnConfig() {
  return json::parse(R"({
    "model_type": "power_attn",
    "vocab_size": 97,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 8,
    "head_v_dim": 16,
    "degree": 2,
    "normalize": true,
    "gating": true,
    "gate_bias": 2.0,
    "rotary": true,
    "rotary_dim": 8,
    "rope_theta": 10000.0,
    "layer_types": ["power_attention", "sliding_attention",
                    "power_attention", "full_attention"],
    "attn": {"num_heads": 4, "num_kv_heads": 2, "window_size": 16},
    "intermediate_size": 96,
    "norm_eps": 1e-6,
    "tie_word_embeddings": true,
    "eos_token_id": 2
  })");
}

absl::Status ParseStatus(const json& config) {
  return ParseModelConfig(config.dump(), "config.json").status();
}

TEST(LinearConfigsTest, LinearAttnParses) {
  auto spec = ParseModelConfig(LinearAttnConfig().dump(), "config.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_type, "linear_attn");
  ASSERT_EQ(spec->num_layers(), 3);
  EXPECT_EQ(spec->blocks[0].mixer, MixerKind::kLinearAttention);
  EXPECT_EQ(spec->blocks[1].mixer, MixerKind::kSlidingWindowAttention);
  EXPECT_EQ(spec->blocks[1].attention.window, 24);
  EXPECT_EQ(spec->blocks[1].attention.head_dim, 16);
  const LinearAttentionSpec& s = spec->blocks[2].linear;
  EXPECT_EQ(s.num_heads, 4);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.head_k_dim, 8);   // 64 · 0.5 / 4
  EXPECT_EQ(s.head_v_dim, 16);  // 64 · 1.0 / 4
  EXPECT_EQ(s.degree, 0);
  EXPECT_TRUE(s.normalize);
  EXPECT_EQ(s.feature_dim(), 8);
  EXPECT_EQ(spec->blocks[0].intermediate_size, 0);  // from the checkpoint
  // Per linear layer: state 2·8·16 + normaliser 2·8 floats.
  EXPECT_EQ(spec->RecurrentStateBytes(), 2 * 4 * (2 * 8 * 16 + 2 * 8));
  EXPECT_EQ(spec->KvBytesPerToken(), 4 * 2 * 2 * 16);
  // fla's defaults: no normaliser, output RMSNorm with a weight.
  json c = LinearAttnConfig();
  c.erase("norm_feature_map");
  c.erase("attn");
  auto plain = ParseModelConfig(c.dump(), "config.json");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->blocks[1].linear.normalize);
  EXPECT_TRUE(plain->blocks[1].linear.norm_affine);
  EXPECT_EQ(plain->blocks[1].mixer, MixerKind::kLinearAttention);
}

TEST(LinearConfigsTest, PowerAttnParses) {
  auto spec = ParseModelConfig(PowerAttnConfig().dump(), "config.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_type, "power_attn");
  ASSERT_EQ(spec->num_layers(), 4);
  EXPECT_EQ(spec->blocks[0].mixer, MixerKind::kPowerAttention);
  EXPECT_EQ(spec->blocks[1].mixer, MixerKind::kSlidingWindowAttention);
  EXPECT_EQ(spec->blocks[2].mixer, MixerKind::kPowerAttention);
  EXPECT_EQ(spec->blocks[3].mixer, MixerKind::kGlobalAttention);
  EXPECT_EQ(spec->blocks[3].attention.window, 0);
  const LinearAttentionSpec& s = spec->blocks[0].linear;
  EXPECT_EQ(s.degree, 2);
  EXPECT_EQ(s.feature_dim(), 36);  // C(9, 2)
  EXPECT_TRUE(s.gating);
  EXPECT_FLOAT_EQ(s.gate_bias, 2.0f);
  EXPECT_TRUE(s.rotary);
  EXPECT_EQ(s.rotary_dim, 8);
  // Per power layer: state 2·36·16, normaliser 2·36, angles 2·4 floats.
  EXPECT_EQ(spec->RecurrentStateBytes(),
            2 * 4 * (2 * 36 * 16 + 2 * 36 + 2 * 4));
  EXPECT_EQ(spec->KvBytesPerToken(), 2 * 4 * 2 * 2 * 16);
  // The same mix from fla's attn.layers: every attention layer then has
  // the dict's window.
  json c = PowerAttnConfig();
  c.erase("layer_types");
  c["attn"]["layers"] = {1, 3};
  c["attn"]["window_size"] = nullptr;
  c["degree"] = 4;
  c["head_dim"] = 4;
  c["rotary"] = false;
  auto fla_style = ParseModelConfig(c.dump(), "config.json");
  ASSERT_TRUE(fla_style.ok()) << fla_style.status();
  EXPECT_EQ(fla_style->blocks[1].mixer, MixerKind::kGlobalAttention);
  EXPECT_EQ(fla_style->blocks[2].linear.feature_dim(), 35);  // C(7, 4)
  EXPECT_EQ(fla_style->blocks[2].linear.aux_floats(), 2 * 35);
  // Defaults: degree 2, gated, conformal rotary over the whole head,
  // normalised, no attention layers.
  auto minimal = ParseModelConfig(R"({"model_type": "power_attn",
      "vocab_size": 10, "hidden_size": 32, "num_hidden_layers": 2,
      "num_heads": 4})",
                                  "config.json");
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  const LinearAttentionSpec& m = minimal->blocks[1].linear;
  EXPECT_EQ(m.head_k_dim, 8);
  EXPECT_EQ(m.num_kv_heads, 4);
  EXPECT_EQ(m.degree, 2);
  EXPECT_TRUE(m.gating && m.rotary && m.normalize);
  EXPECT_EQ(m.rotary_dim, 8);
  EXPECT_NEAR(m.gate_bias, 6.906768f, 1e-6);
}

// Every refused setting is INVALID_ARGUMENT naming its field.
TEST(LinearConfigsTest, BadConfigsNameTheField) {
  struct Case {
    std::function<json()> base;
    std::function<void(json&)> edit;
    const char* field;
  };
  const std::vector<Case> cases = {
      {LinearAttnConfig, [](json& c) { c.erase("feature_map"); },
       "feature_map"},  // fla's default, elementwise_product
      {LinearAttnConfig, [](json& c) { c["feature_map"] = "hedgehog"; },
       "feature_map"},
      {LinearAttnConfig, [](json& c) { c["norm_q"] = true; }, "norm_q"},
      {LinearAttnConfig, [](json& c) { c["norm_k"] = true; }, "norm_k"},
      {LinearAttnConfig, [](json& c) { c["num_kv_heads"] = 3; },
       "num_kv_heads"},
      {LinearAttnConfig, [](json& c) { c["expand_k"] = 0.3; }, "expand_k"},
      {LinearAttnConfig, [](json& c) { c["expand_v"] = 0.0; }, "expand_v"},
      {LinearAttnConfig, [](json& c) { c["attn_mode"] = "parallel"; },
       "attn_mode"},
      {LinearAttnConfig, [](json& c) { c["hidden_act"] = "gelu"; },
       "hidden_act"},
      {LinearAttnConfig, [](json& c) { c["norm_feature_map"] = "yes"; },
       "norm_feature_map"},
      {LinearAttnConfig, [](json& c) { c.erase("num_heads"); }, "num_heads"},
      {LinearAttnConfig, [](json& c) { c["attn"]["window_size"] = -1; },
       "window_size"},
      {LinearAttnConfig, [](json& c) { c["attn"]["layers"] = {7}; }, "layers"},
      {LinearAttnConfig, [](json& c) { c["attn"]["qkv_bias"] = true; },
       "qkv_bias"},
      {LinearAttnConfig, [](json& c) { c["attn"].erase("num_heads"); },
       "num_heads"},
      {PowerAttnConfig, [](json& c) { c["degree"] = 3; }, "degree"},
      {PowerAttnConfig, [](json& c) { c["degree"] = 0; }, "degree"},
      {PowerAttnConfig,
       [](json& c) {
         c["degree"] = 16;
         c["head_dim"] = 64;
       },
       "degree"},  // C(79, 16) features
      {PowerAttnConfig, [](json& c) { c["head_dim"] = 0; }, "head_dim"},
      {PowerAttnConfig, [](json& c) { c["rotary_dim"] = 5; }, "rotary_dim"},
      {PowerAttnConfig, [](json& c) { c["rotary_dim"] = 10; }, "rotary_dim"},
      {PowerAttnConfig, [](json& c) { c["gating"] = "yes"; }, "gating"},
      {PowerAttnConfig, [](json& c) { c["normalize"] = 1; }, "normalize"},
      {PowerAttnConfig, [](json& c) { c["gate_bias"] = "big"; }, "gate_bias"},
      {PowerAttnConfig, [](json& c) { c["rope_theta"] = -1.0; }, "rope_theta"},
      {PowerAttnConfig, [](json& c) { c["num_kv_heads"] = 3; }, "num_kv_heads"},
      {PowerAttnConfig, [](json& c) { c["layer_types"] = {"power_attention"}; },
       "layer_types"},
      {PowerAttnConfig,
       [](json& c) { c["layer_types"][2] = "mamba_attention"; }, "layer_types"},
      {PowerAttnConfig, [](json& c) { c["attn"]["window_size"] = nullptr; },
       "window_size"},  // a sliding_attention layer needs a window
      {PowerAttnConfig, [](json& c) { c.erase("attn"); }, "attn"},
      {PowerAttnConfig, [](json& c) { c["attn"]["layers"] = {1}; },
       "layers"},  // both attn.layers and layer_types
      {PowerAttnConfig, [](json& c) { c["vocab_size"] = -5; }, "vocab_size"},
      {PowerAttnConfig, [](json& c) { c["intermediate_size"] = -1; },
       "intermediate_size"},
  };
  for (const Case& c : cases) {
    json config = c.base();
    c.edit(config);
    const absl::Status st = ParseStatus(config);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
        << c.field << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.field)) << st;
  }
}

class LinearCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) /
            ::testing::UnitTest::GetInstance()->current_test_info()->name())
               .string();
    fs::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(LinearCheckpointTest, RandomCheckpointsLoad) {
  for (const json& config : {LinearAttnConfig(), PowerAttnConfig()}) {
    SCOPED_TRACE(config["model_type"].get<std::string>());
    fs::remove_all(dir_);
    auto tensors = RandomFlaTensors(config, 1);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    ASSERT_TRUE(WriteModelDir(dir_, config, *tensors).ok());
    auto model = Model::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    const ModelSpec& spec = (*model)->spec();
    EXPECT_EQ(spec.blocks[0].intermediate_size, 96);
    const LinearAttentionWeights& w = (*model)->weights().blocks[0].linear;
    const LinearAttentionSpec& s = spec.blocks[0].linear;
    EXPECT_EQ(w.q_proj.shape,
              (std::vector<int64_t>{s.num_heads * s.head_k_dim, 64}));
    EXPECT_EQ(w.k_proj.shape,
              (std::vector<int64_t>{s.num_kv_heads * s.head_k_dim, 64}));
    EXPECT_EQ(w.v_proj.shape,
              (std::vector<int64_t>{s.num_kv_heads * s.head_v_dim, 64}));
    EXPECT_EQ(w.norm.shape, (std::vector<int64_t>{s.head_v_dim}));
    EXPECT_EQ(w.g_proj.empty(), !(s.degree > 0 && s.gating));
    EXPECT_EQ(w.r_proj.empty(), !(s.degree > 0 && s.rotary));
  }
}

TEST_F(LinearCheckpointTest, UnaffineOutputNormNeedsNoWeight) {
  json config = LinearAttnConfig();
  config["elementwise_affine"] = false;
  auto tensors = RandomFlaTensors(config, 2);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  for (const TensorToWrite& t : *tensors) {
    EXPECT_EQ(t.name.find("attn.norm."), std::string::npos) << t.name;
  }
  ASSERT_TRUE(WriteModelDir(dir_, config, *tensors).ok());
  auto model = Model::Load(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->weights().blocks[0].linear.norm.data,
            std::vector<float>(16, 1.0f));
}

// A missing tensor or a wrong shape is INVALID_ARGUMENT naming the tensor.
TEST_F(LinearCheckpointTest, MissingOrMisshapenTensorsAreNamed) {
  for (const char* name : {"model.layers.0.attn.r_proj.weight",
                           "model.layers.2.attn.g_proj.weight",
                           "model.layers.0.attn.o_norm.weight",
                           "model.layers.3.attn.k_proj.weight"}) {
    for (bool drop : {true, false}) {
      SCOPED_TRACE(std::string(name) + (drop ? " dropped" : " reshaped"));
      fs::remove_all(dir_);
      auto tensors = RandomFlaTensors(PowerAttnConfig(), 3);
      ASSERT_TRUE(tensors.ok());
      std::vector<TensorToWrite> kept;
      for (TensorToWrite& t : *tensors) {
        if (t.name == name) {
          if (drop) continue;
          t.shape.insert(t.shape.begin(), 1);  // same bytes, rank + 1
        }
        kept.push_back(std::move(t));
      }
      ASSERT_TRUE(WriteModelDir(dir_, PowerAttnConfig(), kept).ok());
      auto model = Model::Load(dir_);
      EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(model.status().message()), HasSubstr(name));
    }
  }
}

}  // namespace
}  // namespace deltaserve
