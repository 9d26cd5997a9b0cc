// Linear attention (fla linear_attn) and power attention (power_attn,
// conformal-sympow) models on the CPU runner: tiny random checkpoints whose
// prefill over the whole prompt equals every chunking and token-by-token
// decoding, with the state sizes the model reports, save/restore and
// varlen batches.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/model/random_checkpoint.h"
#include "engine/runner/model_runner.h"
#include "engine/runner/runner_harness.h"
#include "engine/session/session_state.h"
#include "engine/state/state_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Fixture {
  const char* name;
  const char* config;
};

// Pure and hybrid linear attention (fla's defaults: no normaliser; and with
// it, GQA, an unweighted output norm and a sliding-window layer); power
// attention of degree 2 (conformal: gates and rotary) mixed with sliding-
// window and global attention; degree 4 gated without rotary; plain
// (ungated, unnormalised) sympow with a global attention layer.
const Fixture kFixtures[] = {
    {"linear_attn_pure", R"({
      "model_type": "linear_attn", "vocab_size": 97, "hidden_size": 64,
      "num_hidden_layers": 3, "num_heads": 4, "expand_k": 0.5,
      "expand_v": 1.0, "feature_map": "elu", "intermediate_size": null,
      "tie_word_embeddings": false})"},
    {"linear_attn_hybrid_swa", R"({
      "model_type": "linear_attn", "vocab_size": 97, "hidden_size": 64,
      "num_hidden_layers": 3, "num_heads": 4, "num_kv_heads": 2,
      "expand_k": 0.5, "expand_v": 1.0, "feature_map": "elu",
      "norm_feature_map": true, "elementwise_affine": false,
      "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 2,
               "window_size": 24}})"},
    {"power_attn_conformal_p2_mixed", R"({
      "model_type": "power_attn", "vocab_size": 97, "hidden_size": 64,
      "num_hidden_layers": 4, "num_heads": 4, "num_kv_heads": 2,
      "head_dim": 8, "head_v_dim": 16, "degree": 2, "gate_bias": 2.0,
      "rotary_dim": 8, "rope_theta": 500.0,
      "layer_types": ["power_attention", "sliding_attention",
                      "power_attention", "full_attention"],
      "attn": {"num_heads": 4, "num_kv_heads": 2, "window_size": 16},
      "intermediate_size": 96, "tie_word_embeddings": true})"},
    {"power_attn_gated_p4", R"({
      "model_type": "power_attn", "vocab_size": 97, "hidden_size": 64,
      "num_hidden_layers": 2, "num_heads": 4, "num_kv_heads": 1,
      "head_dim": 4, "head_v_dim": 16, "degree": 4, "gate_bias": 3.0,
      "rotary": false, "intermediate_size": 96})"},
    {"power_attn_plain_p2_global", R"({
      "model_type": "power_attn", "vocab_size": 97, "hidden_size": 64,
      "num_hidden_layers": 2, "num_heads": 2, "head_dim": 8,
      "head_v_dim": 16, "degree": 2, "gating": false, "rotary": false,
      "normalize": false, "attn": {"layers": [1], "num_heads": 4},
      "intermediate_size": 96})"},
};

// The harness on CpuKernels.
class Harness : public RunnerHarness {
 public:
  explicit Harness(std::shared_ptr<const Model> model)
      : RunnerHarness(std::move(model), std::move(*CpuKernels::Create({})),
                      {.max_slots = 4, .kv_capacity_tokens = 4096}) {}
};

class LinearModelsTest : public ::testing::TestWithParam<Fixture> {
 protected:
  void SetUp() override {
    std::string name = GetParam().name;
    const std::string dir = (fs::path(::testing::TempDir()) / name).string();
    fs::remove_all(dir);
    const json config = json::parse(GetParam().config);
    auto tensors = RandomFlaTensors(config, /*seed=*/17);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    ASSERT_TRUE(WriteModelDir(dir, config, *tensors).ok());
    auto model = Model::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    std::mt19937 rng(23);
    std::uniform_int_distribution<int32_t> id(0, model_->spec().vocab_size - 1);
    prompt_.resize(100);
    for (int32_t& t : prompt_) t = id(rng);
  }

  std::shared_ptr<const Model> model_;
  std::vector<int32_t> prompt_;
};

TEST_P(LinearModelsTest, EveryChunkingAndDecodingEqualsWholePrefill) {
  const int v = model_->spec().vocab_size;
  Harness whole(model_);
  Harness::Seq sw = whole.NewSeq();
  const std::vector<float> want = whole.Feed(&sw, prompt_, prompt_.size());
  ASSERT_EQ(want.size(), prompt_.size() * v);
  for (size_t chunk : {size_t{37}, size_t{7}, size_t{1}}) {
    Harness h(model_);
    Harness::Seq s = h.NewSeq();
    const std::vector<float> got = h.Feed(&s, prompt_, chunk);
    ASSERT_EQ(got.size(), want.size());
    const double err = RelErr(got.data(), want.data(), want.size());
    std::printf("%s, chunks of %zu: relative error %.3g\n", GetParam().name,
                chunk, err);
    EXPECT_LT(err, 1e-4) << "chunk " << chunk;
  }
  // Prefill the first 60 tokens, then decode steps (the runner's decode
  // path, one token per sequence): each step's logits equal the whole
  // prefill's row.
  Harness h(model_);
  Harness::Seq s = h.NewSeq();
  const std::vector<int32_t> head(prompt_.begin(), prompt_.begin() + 60);
  h.Feed(&s, head, head.size());
  std::vector<float> steps;
  for (size_t i = 60; i < prompt_.size(); ++i) {
    const ForwardOutput out = h.Step({&s}, {prompt_[i]});
    ASSERT_EQ(out.logits.size(), static_cast<size_t>(v));
    EXPECT_EQ(out.argmax.at(0), ArgmaxOf(out.logits.data(), v));
    steps.insert(steps.end(), out.logits.begin(), out.logits.end());
  }
  const double err = RelErr(steps.data(), want.data() + 60 * v, steps.size());
  std::printf("%s, 40 decode steps after 60: relative error %.3g\n",
              GetParam().name, err);
  EXPECT_LT(err, 1e-4);
}

TEST_P(LinearModelsTest, ReportsTheStateTheStatePoolHolds) {
  const ModelSpec& spec = model_->spec();
  Harness h(model_);
  int64_t recurrent = 0;
  for (int l = 0; l < spec.num_layers(); ++l) {
    const TensorView s = h.pool().gdr_state(l);
    if (s.empty()) continue;
    ASSERT_TRUE(spec.blocks[l].mixer == MixerKind::kLinearAttention ||
                spec.blocks[l].mixer == MixerKind::kPowerAttention);
    const LinearAttentionSpec& ls = spec.blocks[l].linear;
    // Per slot: the state, then the normaliser and the angles.
    recurrent += s.numel() / s.dim(0) * 4;
    recurrent += h.pool().normalizer_state(l).strides[0] * 4;
    EXPECT_EQ(h.pool().normalizer_state(l).dim(2), ls.feature_dim());
    EXPECT_EQ(h.pool().angle_state(l).empty(), !ls.rotary);
  }
  EXPECT_EQ(recurrent, spec.RecurrentStateBytes());
  EXPECT_GT(spec.RecurrentStateBytes(), 0);
  // A saved sequence holds exactly that much recurrent state.
  Harness::Seq s = h.NewSeq();
  h.Feed(&s, prompt_, 30);
  auto saved = h.pool().Save(s.slot, s.pages, s.pos);
  ASSERT_TRUE(saved.ok()) << saved.status();
  int64_t floats = 0;
  for (const auto& r : saved->recurrent) floats += r.size();
  EXPECT_EQ(floats * 4, spec.RecurrentStateBytes());
}

// Through the durable session form (the layout a session record stores).
TEST_P(LinearModelsTest, SaveAndRestoreContinueExactly) {
  const ModelSpec& spec = model_->spec();
  int64_t layout_floats = 0;
  for (const LayerLayout& l : SessionLayout(spec)) {
    layout_floats += l.recurrent_floats;
  }
  EXPECT_EQ(layout_floats * 4, spec.RecurrentStateBytes());
  Harness h(model_);
  const std::vector<int32_t> head(prompt_.begin(), prompt_.begin() + 53);
  const std::vector<int32_t> tail(prompt_.begin() + 53, prompt_.end());
  Harness::Seq a = h.NewSeq();
  h.Feed(&a, head, 20);
  auto saved = h.pool().Save(a.slot, a.pages, a.pos);
  ASSERT_TRUE(saved.ok()) << saved.status();
  const int page = h.pool().page_size();
  SessionSnapshot snap = ToSnapshot(*saved, spec, page, SessionMeta(), head);
  auto restored = FromSnapshot(snap, spec, page);
  ASSERT_TRUE(restored.ok()) << restored.status();
  Harness::Seq b = h.NewSeq();
  ASSERT_TRUE(h.pool().RestoreCapacity(&b.pages, a.pos).ok());
  ASSERT_TRUE(h.pool().Restore(*restored, b.slot, b.pages).ok());
  b.pos = a.pos;
  EXPECT_EQ(h.Feed(&a, tail, 9), h.Feed(&b, tail, 9));
}

// The fingerprint covers the mixers' weights and settings.
TEST_P(LinearModelsTest, FingerprintCoversTheMixer) {
  const std::string base = ModelFingerprint(*model_);
  int l = 0;
  while (model_->spec().blocks[l].mixer != MixerKind::kLinearAttention &&
         model_->spec().blocks[l].mixer != MixerKind::kPowerAttention) {
    ++l;
  }
  ModelWeights w = model_->weights();
  w.blocks[l].linear.k_proj.data[3] += 0.5f;
  EXPECT_NE(
      ModelFingerprint(*Model::FromParts("w", model_->spec(), w, nullptr)),
      base);
  ModelSpec spec = model_->spec();
  spec.blocks[l].linear.normalize = !spec.blocks[l].linear.normalize;
  EXPECT_NE(ModelFingerprint(
                *Model::FromParts("s", spec, model_->weights(), nullptr)),
            base);
  EXPECT_EQ(ModelFingerprint(*Model::FromParts("same", model_->spec(),
                                               model_->weights(), nullptr)),
            base);
}

TEST_P(LinearModelsTest, VarlenBatchEqualsSingleSequences) {
  const int v = model_->spec().vocab_size;
  Harness h(model_);
  Harness::Seq a = h.NewSeq(), b = h.NewSeq();
  const std::vector<int32_t> pa(prompt_.begin(), prompt_.begin() + 71);
  const std::vector<int32_t> pb(prompt_.begin() + 20, prompt_.begin() + 33);
  ASSERT_TRUE(h.pool().EnsureCapacity(&a.pages, pa.size()).ok());
  ASSERT_TRUE(h.pool().EnsureCapacity(&b.pages, pb.size()).ok());
  std::vector<SequenceInput> batch = {
      {a.slot, &a.pages, 0, absl::MakeConstSpan(pa)},
      {b.slot, &b.pages, 0, absl::MakeConstSpan(pb)}};
  std::vector<float> logits;
  ASSERT_TRUE(h.runner().Forward(batch, /*all_logits=*/false, &logits).ok());
  ASSERT_EQ(logits.size(), 2u * v);
  for (int i = 0; i < 2; ++i) {
    const std::vector<int32_t>& p = i == 0 ? pa : pb;
    Harness single(model_);
    Harness::Seq s = single.NewSeq();
    const std::vector<float> want = single.Feed(&s, p, p.size());
    EXPECT_LT(
        RelErr(logits.data() + i * v, want.data() + (p.size() - 1) * v, v),
        1e-5)
        << "sequence " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LinearModelsTest,
                         ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace deltaserve
