// Loading models: formats, layouts and every way a checkpoint can be wrong.
#include "engine/model/model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "engine/model/model_spec.h"
#include "engine/model/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kTinyDir[] = "tests/testdata/qwen35-tiny";

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

// The fixture's tensors, as TensorToWrite values.
std::vector<TensorToWrite> FixtureTensors() {
  auto file =
      SafetensorsFile::Open(std::string(kTinyDir) + "/model.safetensors");
  EXPECT_TRUE(file.ok());
  std::vector<TensorToWrite> out;
  for (const auto& [name, e] : (*file)->tensors()) {
    out.push_back(
        {name, e.dtype, e.shape,
         std::string(reinterpret_cast<const char*>(e.data), e.num_bytes)});
  }
  return out;
}

class ModelLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  // A model directory with the fixture's config (edited by `edit_config`)
  // and `tensors` written as one file.
  void MakeModel(const std::vector<TensorToWrite>& tensors,
                 const std::function<void(nlohmann::json&)>& edit_config = {}) {
    nlohmann::json config =
        nlohmann::json::parse(ReadFile(fs::path(kTinyDir) / "config.json"));
    if (edit_config) edit_config(config);
    WriteFile(dir_ / "config.json", config.dump(2));
    ASSERT_TRUE(
        WriteSafetensors((dir_ / "model.safetensors").string(), tensors).ok());
  }
  fs::path dir_;
};

TEST_F(ModelLoadTest, LoadsFixtureSpec) {
  auto model = Model::Load(kTinyDir);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelSpec& spec = (*model)->spec();
  EXPECT_EQ(spec.model_type, "qwen3_5_text");
  ASSERT_EQ(spec.num_layers(), 4);
  EXPECT_EQ(spec.blocks[0].mixer, MixerKind::kGatedDeltaRule);
  EXPECT_EQ(spec.blocks[3].mixer, MixerKind::kGlobalAttention);
  EXPECT_EQ(spec.blocks[0].gdr.num_v_heads, 4);
  EXPECT_EQ(spec.blocks[0].gdr.num_k_heads, 2);
  EXPECT_EQ(spec.blocks[3].attention.rotary_dim, 8);
  EXPECT_EQ((*model)->tokenizer(), nullptr);
  EXPECT_TRUE((*model)->weights().lm_head.empty());  // tied
  // 3 layers × (state 4·32·32 + conv tail 256·3) floats.
  EXPECT_EQ(spec.RecurrentStateBytes(), 3 * 4 * (4 * 32 * 32 + 256 * 3));
  EXPECT_EQ(spec.KvBytesPerToken(), 4 * 2 * 2 * 32);
}

TEST_F(ModelLoadTest, UnknownModelTypeIsNamed) {
  MakeModel(FixtureTensors(),
            [](nlohmann::json& c) { c["model_type"] = "mamba9"; });
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("mamba9"));
}

TEST_F(ModelLoadTest, Qwen3NextLoadsDenseAndRefusesExperts) {
  constexpr char kNextDir[] = "tests/testdata/qwen3next-tiny";
  auto model = Model::Load(kNextDir);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelSpec& spec = (*model)->spec();
  EXPECT_EQ(spec.model_type, "qwen3_next");
  EXPECT_FALSE((*model)->weights().lm_head.empty());  // untied
  // The grouped projections are regrouped into the separate ones.
  const GatedDeltaRuleWeights& g = (*model)->weights().blocks[0].gdr;
  EXPECT_EQ(g.in_proj_qkv.shape, (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(g.in_proj_z.shape, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(g.in_proj_b.shape, (std::vector<int64_t>{4, 128}));
  EXPECT_EQ(g.in_proj_a.shape, (std::vector<int64_t>{4, 128}));

  // Mixture-of-experts MLPs are refused with the field named.
  nlohmann::json config =
      nlohmann::json::parse(ReadFile(fs::path(kNextDir) / "config.json"));
  config["num_experts"] = 8;
  auto spec_or = ParseModelConfig(config.dump(), "config.json");
  EXPECT_EQ(spec_or.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec_or.status().message()),
              HasSubstr("num_experts"));
  // A missing grouped projection is named.
  auto file =
      SafetensorsFile::Open(std::string(kNextDir) + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<TensorToWrite> tensors;
  const std::string gone = "model.layers.1.linear_attn.in_proj_ba.weight";
  for (const auto& [name, e] : (*file)->tensors()) {
    if (name == gone) continue;
    tensors.push_back(
        {name, e.dtype, e.shape,
         std::string(reinterpret_cast<const char*>(e.data), e.num_bytes)});
  }
  WriteFile(dir_ / "config.json", ReadFile(fs::path(kNextDir) / "config.json"));
  ASSERT_TRUE(
      WriteSafetensors((dir_ / "model.safetensors").string(), tensors).ok());
  auto broken = Model::Load(dir_.string());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr(gone));
}

// The tensors of a fixture directory, renamed by `rename` (empty: dropped).
std::vector<TensorToWrite> TensorsOf(
    const std::string& dir,
    const std::function<std::string(const std::string&)>& rename) {
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok());
  std::vector<TensorToWrite> out;
  for (const auto& [name, e] : (*file)->tensors()) {
    const std::string to = rename(name);
    if (to.empty()) continue;
    out.push_back(
        {to, e.dtype, e.shape,
         std::string(reinterpret_cast<const char*>(e.data), e.num_bytes)});
  }
  return out;
}

TEST_F(ModelLoadTest, FlaFamiliesLoadWithDerivedSizes) {
  auto hybrid = Model::Load("tests/testdata/deltanet-hybrid-tiny");
  ASSERT_TRUE(hybrid.ok()) << hybrid.status();
  const ModelSpec& h = (*hybrid)->spec();
  EXPECT_EQ(h.model_type, "delta_net");
  ASSERT_EQ(h.num_layers(), 4);
  EXPECT_EQ(h.blocks[0].mixer, MixerKind::kGatedDeltaRule);
  EXPECT_FALSE(h.blocks[0].gdr.use_decay);
  EXPECT_EQ(h.blocks[1].mixer, MixerKind::kGlobalAttention);
  EXPECT_EQ(h.blocks[3].attention.num_kv_heads, 2);
  EXPECT_EQ(h.blocks[3].attention.rotary_dim, 32);  // full rotary
  EXPECT_FALSE(h.norm_zero_centered);
  // intermediate_size is null in the config: read from the tensors.
  EXPECT_EQ(h.blocks[0].intermediate_size, 512);

  auto swa = Model::Load("tests/testdata/deltanet-swa-tiny");
  ASSERT_TRUE(swa.ok()) << swa.status();
  EXPECT_EQ(swa->get()->spec().blocks[1].mixer,
            MixerKind::kSlidingWindowAttention);
  EXPECT_EQ(swa->get()->spec().blocks[1].attention.window, 48);

  auto gated = Model::Load("tests/testdata/gated-deltanet-tiny");
  ASSERT_TRUE(gated.ok()) << gated.status();
  const GatedDeltaRuleSpec& g = gated->get()->spec().blocks[0].gdr;
  EXPECT_TRUE(g.use_decay);
  EXPECT_TRUE(g.output_gate);
  EXPECT_EQ(g.head_k_dim, 32);
  EXPECT_EQ(g.head_v_dim, 64);  // expand_v 2
}

TEST_F(ModelLoadTest, OldFlaCheckpointsNameTheOutputNormNorm) {
  const std::string dir = "tests/testdata/deltanet-tiny";
  const std::string config = ReadFile(fs::path(dir) / "config.json");
  WriteFile(dir_ / "config.json", config);
  ASSERT_TRUE(WriteSafetensors((dir_ / "model.safetensors").string(),
                               TensorsOf(dir,
                                         [](const std::string& n) {
                                           const std::string from =
                                               ".attn.o_norm.";
                                           const size_t at = n.find(from);
                                           if (at == std::string::npos)
                                             return n;
                                           return n.substr(0, at) +
                                                  ".attn.norm." +
                                                  n.substr(at + from.size());
                                         }))
                  .ok());
  auto renamed = Model::Load(dir_.string());
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  auto original = Model::Load(dir);
  ASSERT_TRUE(original.ok());
  EXPECT_EQ((*renamed)->weights().blocks[2].gdr.norm.data,
            (*original)->weights().blocks[2].gdr.norm.data);
}

TEST_F(ModelLoadTest, UnsupportedFlaSettingsAreNamed) {
  const std::string config =
      ReadFile(fs::path("tests/testdata/deltanet-tiny") / "config.json");
  for (const auto& [key, value] :
       {std::pair<const char*, nlohmann::json>{"use_beta", false},
        {"use_short_conv", false},
        {"allow_neg_eigval", true},
        {"qk_norm", "sum"},
        {"hidden_act", "gelu"}}) {
    nlohmann::json c = nlohmann::json::parse(config);
    c[key] = value;
    auto spec = ParseModelConfig(c.dump(), "config.json");
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr(key));
  }
  // A checkpoint without the MLP tensor the derived size comes from.
  WriteFile(dir_ / "config.json", config);
  ASSERT_TRUE(WriteSafetensors(
                  (dir_ / "model.safetensors").string(),
                  TensorsOf("tests/testdata/deltanet-tiny",
                            [](const std::string& n) {
                              return n == "model.layers.0.mlp.gate_proj.weight"
                                         ? std::string()
                                         : n;
                            }))
                  .ok());
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.layers.0.mlp.gate_proj.weight"));
}

TEST_F(ModelLoadTest, MissingConfigFieldIsNamed) {
  MakeModel(FixtureTensors(),
            [](nlohmann::json& c) { c.erase("hidden_size"); });
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("hidden_size"));
}

TEST_F(ModelLoadTest, MissingTensorIsNamed) {
  auto tensors = FixtureTensors();
  const std::string gone = "model.layers.2.linear_attn.A_log";
  std::erase_if(tensors, [&](const auto& t) { return t.name == gone; });
  MakeModel(tensors);
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr(gone));
}

TEST_F(ModelLoadTest, ShapeMismatchIsNamed) {
  auto tensors = FixtureTensors();
  for (auto& t : tensors) {
    if (t.name == "model.layers.1.mlp.up_proj.weight") {
      t.shape = {128, 256};  // transposed
    }
  }
  MakeModel(tensors);
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.layers.1.mlp.up_proj.weight"));
}

TEST_F(ModelLoadTest, MalformedHeaderNamesTheFile) {
  MakeModel(FixtureTensors());
  std::string bytes = ReadFile(dir_ / "model.safetensors");
  bytes[8] = '#';  // the header's opening brace
  WriteFile(dir_ / "model.safetensors", bytes);
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.safetensors"));
  // A header length larger than the file.
  uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  WriteFile(dir_ / "model.safetensors", bytes);
  EXPECT_EQ(Model::Load(dir_.string()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelLoadTest, TruncatedWeightFileNamesTheFile) {
  MakeModel(FixtureTensors());
  std::string bytes = ReadFile(dir_ / "model.safetensors");
  WriteFile(dir_ / "model.safetensors", bytes.substr(0, bytes.size() - 1000));
  auto model = Model::Load(dir_.string());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.safetensors"));
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("truncated"));
}

// Safetensors as bytes in memory (what a session import receives): the
// writer's output parses back to the same tensors and metadata, and hostile
// headers are refused without allocating what they claim.
TEST(SafetensorsBytesTest, EncodeParsesBackAndRefusesBadInput) {
  const std::vector<TensorToWrite> tensors = {
      {"b", DType::kF32, {2, 1}, std::string("\0\0\x80\x3f\0\0\0\x40", 8)},
      {"a", DType::kI64, {1}, std::string("\x07\0\0\0\0\0\0\0", 8)},
      {"empty", DType::kF32, {0, 3}, ""}};
  absl::StatusOr<std::string> bytes =
      EncodeSafetensors(tensors, {{"k", "v"}, {"format", "x"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*EncodeSafetensors(tensors, {{"k", "v"}, {"format", "x"}}),
            *bytes);  // deterministic
  absl::StatusOr<SafetensorsContents> c = ParseSafetensors(*bytes, "bytes");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->metadata,
            (std::map<std::string, std::string>{{"k", "v"}, {"format", "x"}}));
  ASSERT_EQ(c->tensors.size(), 3u);
  EXPECT_EQ(c->tensors.at("b").shape, (std::vector<int64_t>{2, 1}));
  float x[2];
  std::memcpy(x, c->tensors.at("b").data, 8);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], 2.0f);
  EXPECT_EQ(c->tensors.at("empty").numel(), 0);

  // The writer refuses names it cannot write and sizes that do not fit.
  for (const std::vector<TensorToWrite>& bad :
       std::vector<std::vector<TensorToWrite>>{
           {{"a", DType::kF32, {1}, "1234"}, {"a", DType::kF32, {1}, "1234"}},
           {{"__metadata__", DType::kF32, {1}, "1234"}},
           {{"", DType::kF32, {1}, "1234"}},
           {{"a", DType::kF32, {2}, "1234"}}}) {
    EXPECT_EQ(EncodeSafetensors(bad).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // A shape whose size overflows 64 bits, and one larger than the data.
  auto header_only = [](const std::string& header) {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header;
  };
  for (const std::string& shape :
       {std::string("[4294967296, 4294967296, 16]"),
        std::string("[9223372036854775807, 4]"), std::string("[3]")}) {
    const std::string bad =
        header_only("{\"t\":{\"dtype\":\"F32\",\"shape\":" + shape +
                    ",\"data_offsets\":[0,4]}}") +
        "abcd";
    const absl::Status st = ParseSafetensors(bad, "bytes").status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << shape;
    EXPECT_THAT(std::string(st.message()), HasSubstr("malformed bytes"));
    EXPECT_THAT(std::string(st.message()), HasSubstr("tensor t"));
  }
  EXPECT_EQ(ParseSafetensors("short", "bytes").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelLoadTest, MissingDirectoryIsNotFound) {
  EXPECT_EQ(Model::Load((dir_ / "nope").string()).status().code(),
            absl::StatusCode::kNotFound);
}

// Reference weights of the fixture, for comparisons.
const ModelWeights& Reference() {
  static const Model* model = Model::Load(kTinyDir)->release();
  return model->weights();
}

TEST_F(ModelLoadTest, ShardedCheckpointWithIndex) {
  auto tensors = FixtureTensors();
  nlohmann::json config =
      nlohmann::json::parse(ReadFile(fs::path(kTinyDir) / "config.json"));
  WriteFile(dir_ / "config.json", config.dump());
  std::vector<TensorToWrite> a, b;
  nlohmann::json index = {{"metadata", nlohmann::json::object()},
                          {"weight_map", nlohmann::json::object()}};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const bool first = i % 2 == 0;
    (first ? a : b).push_back(tensors[i]);
    index["weight_map"][tensors[i].name] =
        first ? "model-00001-of-00002.safetensors"
              : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(
      WriteSafetensors((dir_ / "model-00001-of-00002.safetensors").string(), a)
          .ok());
  ASSERT_TRUE(
      WriteSafetensors((dir_ / "model-00002-of-00002.safetensors").string(), b)
          .ok());
  WriteFile(dir_ / "model.safetensors.index.json", index.dump());
  auto model = Model::Load(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->weights().blocks[3].attention.q_proj.data,
            Reference().blocks[3].attention.q_proj.data);
  // An index that names a tensor its shard lacks.
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  index["weight_map"]["model.embed_tokens.weight"] =
      "model-00002-of-00002.safetensors";
  WriteFile(dir_ / "model.safetensors.index.json", index.dump());
  auto bad = Model::Load(dir_.string());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelLoadTest, VisionLanguageLayoutSkipsVisualAndMtp) {
  auto tensors = FixtureTensors();
  for (auto& t : tensors) {
    t.name = "model.language_model." + t.name.substr(std::strlen("model."));
  }
  tensors.push_back({"model.visual.patch_embed.weight",
                     DType::kF32,
                     {2, 2},
                     std::string(16, '\0')});
  tensors.push_back({"mtp.fc.weight", DType::kF32, {2}, std::string(8, '\0')});
  MakeModel(tensors, [](nlohmann::json& c) {
    nlohmann::json text = c;
    c = {{"model_type", "qwen3_5"},
         {"text_config", text},
         {"tie_word_embeddings", true}};
  });
  auto model = Model::Load(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec().model_type, "qwen3_5");
  EXPECT_EQ((*model)->weights().embed.data, Reference().embed.data);
  EXPECT_TRUE((*model)->weights().lm_head.empty());
}

TEST_F(ModelLoadTest, Float32AndFloat16Checkpoints) {
  for (DType dtype : {DType::kF32, DType::kF16}) {
    auto tensors = FixtureTensors();
    for (auto& t : tensors) {
      const int64_t n = static_cast<int64_t>(t.bytes.size() / 2);
      std::string out(n * DTypeSize(dtype), '\0');
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.bytes.data() + 2 * i, 2);
        const float f = Bf16ToF32(v);
        if (dtype == DType::kF32) {
          std::memcpy(out.data() + 4 * i, &f, 4);
        } else {
          const uint16_t h = F32ToF16(f);
          std::memcpy(out.data() + 2 * i, &h, 2);
        }
      }
      t.dtype = dtype;
      t.bytes = out;
    }
    MakeModel(tensors);
    auto model = Model::Load(dir_.string());
    ASSERT_TRUE(model.ok()) << model.status();
    const auto& got = (*model)->weights().blocks[0].gdr.in_proj_qkv.data;
    const auto& want = Reference().blocks[0].gdr.in_proj_qkv.data;
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      if (dtype == DType::kF32) {
        ASSERT_EQ(got[i], want[i]);
      } else {
        ASSERT_NEAR(got[i], want[i], 1e-3 * std::abs(want[i]) + 1e-7);
      }
    }
  }
}

}  // namespace
}  // namespace deltaserve
