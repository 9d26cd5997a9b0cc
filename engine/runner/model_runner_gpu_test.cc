// The model runner on the GPU (CudaKernels: bf16 weights and activations,
// fp32 state) against the qwen35-tiny fixture's float64 reference within the
// bf16 tolerance of the fixtures' README, and against the CPU runner on the
// demo model; recorded (CUDA graph) decode steps against direct ones; state
// saved off the GPU and restored. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/model/random_checkpoint.h"
#include "engine/model/safetensors.h"
#include "engine/runner/model_runner.h"
#include "engine/runner/runner_harness.h"
#include "engine/state/state_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/sampling_rule.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

constexpr char kTinyDir[] = "tests/testdata/qwen35-tiny";
constexpr char kDemoDir[] = "engine/model/demo-qwen35";

double MaxAbs(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i)
    m = std::max(m, std::fabs(double{a[i]} - b[i]));
  return m;
}

// The gap between the best and the second-best logit of a row.
double Margin(const float* row, int n) {
  const int32_t best = ArgmaxOf(row, n);
  double second = -1e30;
  for (int i = 0; i < n; ++i) {
    if (i != best) second = std::max(second, double{row[i]});
  }
  return row[best] - second;
}

std::shared_ptr<const Model> LoadOrDie(const std::string& dir) {
  return RunnerHarness::LoadOrDie(dir);
}

// The shared harness on CudaKernels (gpu) or CpuKernels.
class Harness : public RunnerHarness {
 public:
  Harness(std::shared_ptr<const Model> model, bool gpu, bool record = true)
      : RunnerHarness(std::move(model), MakeKernels(gpu),
                      {.record_decode = record}) {}

 private:
  static std::unique_ptr<Kernels> MakeKernels(bool gpu) {
    if (!gpu) return std::move(*CpuKernels::Create({}));
    auto k = CudaKernels::Create({});
    EXPECT_TRUE(k.ok()) << k.status();
    if (!k.ok()) std::abort();
    return std::move(*k);
  }
};

class GpuRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
    auto golden =
        SafetensorsFile::Open(std::string(kTinyDir) + "/golden.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
    prompt_ = I64ToI32(golden_->tensors().at("prompt_ids"));
    prefill_.resize(golden_->tensors().at("prefill_logits").numel());
    ASSERT_TRUE(ToF32(golden_->tensors().at("prefill_logits"), prefill_.data(),
                      prefill_.size())
                    .ok());
    greedy_ = I64ToI32(golden_->tensors().at("greedy_ids"));
  }
  std::unique_ptr<SafetensorsFile> golden_;
  std::vector<int32_t> prompt_, greedy_;
  std::vector<float> prefill_;
};

TEST_F(GpuRunnerTest, Qwen35TinyPrefillWithinBf16Tolerance) {
  auto model = LoadOrDie(kTinyDir);
  for (size_t chunk : {size_t{200}, size_t{37}, size_t{1}}) {
    Harness h(model, /*gpu=*/true);
    EXPECT_EQ(h.runner().activation_dtype(), DType::kBF16);
    Harness::Seq s = h.NewSeq();
    std::vector<float> logits = h.Feed(&s, prompt_, chunk);
    ASSERT_EQ(logits.size(), prefill_.size());
    const double err = RelErr(logits.data(), prefill_.data(), prefill_.size());
    std::printf("qwen35-tiny on the GPU, chunks of %zu: relative error %.3g\n",
                chunk, err);
    EXPECT_LT(err, 2e-2) << "chunk " << chunk;
  }
}

// Every other checkpoint family's fixture on the GPU: prefill logits within
// the bf16 bound of the fixtures' README for any chunking, and the
// reference's greedy ids wherever the CPU's top-2 margin (the CPU matches
// the references to 1e-4 / 3e-3) exceeds twice the GPU's measured error.
class GpuFixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GpuFixtureTest, MatchesTheReferenceWithinBf16Tolerance) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
  const std::string dir = std::string("tests/testdata/") + GetParam();
  auto golden = SafetensorsFile::Open(dir + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> prompt =
      I64ToI32((*golden)->tensors().at("prompt_ids"));
  const std::vector<int32_t> greedy =
      I64ToI32((*golden)->tensors().at("greedy_ids"));
  std::vector<float> ref((*golden)->tensors().at("prefill_logits").numel());
  ASSERT_TRUE(
      ToF32((*golden)->tensors().at("prefill_logits"), ref.data(), ref.size())
          .ok());
  auto model = LoadOrDie(dir);
  const int v = model->spec().vocab_size;
  for (size_t chunk : {size_t{200}, size_t{37}, size_t{1}}) {
    Harness h(model, /*gpu=*/true);
    Harness::Seq s = h.NewSeq();
    const std::vector<float> logits = h.Feed(&s, prompt, chunk);
    ASSERT_EQ(logits.size(), ref.size());
    const double err = RelErr(logits.data(), ref.data(), ref.size());
    std::printf("%s on the GPU, chunks of %zu: relative error %.3g\n",
                GetParam(), chunk, err);
    EXPECT_LT(err, 2e-2) << "chunk " << chunk;
  }
  std::vector<int32_t> forced = prompt;
  forced.insert(forced.end(), greedy.begin(), greedy.end() - 1);
  Harness cpu(model, false), gpu(model, true);
  Harness::Seq cs = cpu.NewSeq(), gs = gpu.NewSeq();
  const std::vector<float> want = cpu.Feed(&cs, forced, forced.size());
  const std::vector<float> got = gpu.Feed(&gs, forced, 64);
  int decided = 0;
  for (size_t i = 0; i < greedy.size(); ++i) {
    const size_t row = prompt.size() - 1 + i;
    const float* w = want.data() + row * v;
    const float* g = got.data() + row * v;
    ASSERT_EQ(ArgmaxOf(w, v), greedy[i]) << "CPU disagrees at step " << i;
    if (Margin(w, v) > 2 * MaxAbs(g, w, v)) {
      EXPECT_EQ(ArgmaxOf(g, v), greedy[i]) << "step " << i;
      ++decided;
    }
  }
  std::printf("%s: %d of %zu greedy steps decided and equal\n", GetParam(),
              decided, greedy.size());
  EXPECT_GE(decided, static_cast<int>(greedy.size()) / 2);
}

INSTANTIATE_TEST_SUITE_P(Families, GpuFixtureTest,
                         ::testing::Values("qwen3next-tiny", "deltanet-tiny",
                                           "deltanet-hybrid-tiny",
                                           "deltanet-swa-tiny",
                                           "gated-deltanet-tiny"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           std::string name = i.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// Linear and power attention models (random checkpoints of our formats)
// on the GPU against the CPU: prefill in one piece and in chunks, then
// decode steps (recorded), within the bf16 bound.
class GpuLinearModelTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GpuLinearModelTest, MatchesTheCpu) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
  const nlohmann::json config = nlohmann::json::parse(GetParam());
  const std::string dir = ::testing::TempDir() + "/gpu_linear_" +
                          config["model_type"].get<std::string>();
  std::filesystem::remove_all(dir);
  auto tensors = RandomFlaTensors(config, /*seed=*/5);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_TRUE(WriteModelDir(dir, config, *tensors).ok());
  std::shared_ptr<const Model> model = LoadOrDie(dir);
  const int v = model->spec().vocab_size;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(0, v - 1);
  std::vector<int32_t> prompt(90);
  for (int32_t& t : prompt) t = id(rng);
  Harness cpu(model, false);
  Harness::Seq cs = cpu.NewSeq();
  const std::vector<float> want = cpu.Feed(&cs, prompt, prompt.size());
  for (size_t chunk : {prompt.size(), size_t{37}}) {
    Harness gpu(model, true);
    Harness::Seq gs = gpu.NewSeq();
    const std::vector<float> got = gpu.Feed(&gs, prompt, chunk);
    ASSERT_EQ(got.size(), want.size());
    const double err = RelErr(got.data(), want.data(), want.size());
    std::printf("%s on the GPU, chunks of %zu: relative error %.3g\n",
                config["model_type"].get<std::string>().c_str(), chunk, err);
    EXPECT_LT(err, 2e-2);
  }
  // Teacher-forced decode steps: the same next tokens on both.
  Harness gpu(model, true);
  Harness::Seq gs = gpu.NewSeq();
  gpu.Feed(&gs, prompt, prompt.size());
  std::vector<int32_t> next = {id(rng)};
  for (int step = 0; step < 12; ++step) {
    const ForwardOutput g = gpu.Step({&gs}, next);
    const ForwardOutput c = cpu.Step({&cs}, next);
    ASSERT_EQ(g.logits.size(), c.logits.size());
    EXPECT_LT(RelErr(g.logits.data(), c.logits.data(), v), 2e-2)
        << "step " << step;
    next = {c.argmax[0]};
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, GpuLinearModelTest,
    ::testing::Values(
        R"({"model_type": "linear_attn", "vocab_size": 97, "hidden_size": 64,
            "num_hidden_layers": 3, "num_heads": 4, "num_kv_heads": 2,
            "expand_k": 0.5, "expand_v": 1.0, "feature_map": "elu",
            "norm_feature_map": true, "elementwise_affine": false,
            "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 2,
                     "window_size": 24}})",
        R"({"model_type": "power_attn", "vocab_size": 97, "hidden_size": 64,
            "num_hidden_layers": 4, "num_heads": 4, "num_kv_heads": 2,
            "head_dim": 8, "head_v_dim": 16, "degree": 2, "gate_bias": 2.0,
            "rotary_dim": 8, "rope_theta": 500.0,
            "layer_types": ["power_attention", "sliding_attention",
                            "power_attention", "full_attention"],
            "attn": {"num_heads": 4, "num_kv_heads": 2, "window_size": 16},
            "intermediate_size": 96, "tie_word_embeddings": true})"));

TEST_F(GpuRunnerTest, Qwen35TinyGreedyIdsMatchWhereTheMarginAllows) {
  auto model = LoadOrDie(kTinyDir);
  const int v = model->spec().vocab_size;
  // Teacher-forced logits of prompt + greedy ids, on the CPU (matches the
  // reference to 1e-4) and on the GPU.
  std::vector<int32_t> forced = prompt_;
  forced.insert(forced.end(), greedy_.begin(), greedy_.end() - 1);
  Harness cpu(model, false), gpu(model, true);
  Harness::Seq cs = cpu.NewSeq(), gs = gpu.NewSeq();
  const std::vector<float> want = cpu.Feed(&cs, forced, forced.size());
  const std::vector<float> got = gpu.Feed(&gs, forced, 64);
  int decided = 0;
  for (size_t i = 0; i < greedy_.size(); ++i) {
    const size_t row = prompt_.size() - 1 + i;
    const float* w = want.data() + row * v;
    const float* g = got.data() + row * v;
    ASSERT_EQ(ArgmaxOf(w, v), greedy_[i]) << "CPU disagrees at step " << i;
    if (Margin(w, v) > 2 * MaxAbs(g, w, v)) {
      EXPECT_EQ(ArgmaxOf(g, v), greedy_[i]) << "step " << i;
      ++decided;
    }
  }
  EXPECT_GE(decided, static_cast<int>(greedy_.size()) / 2);
  // Free-running greedy decode on the GPU (recorded steps): equal to the
  // reference up to the first step whose margin is within the error.
  Harness run(model, true);
  Harness::Seq s = run.NewSeq();
  std::vector<float> prefill = run.Feed(&s, prompt_, prompt_.size());
  const int32_t first = ArgmaxOf(prefill.data() + (prompt_.size() - 1) * v, v);
  const std::vector<int32_t> ids = run.Greedy(&s, first, greedy_.size());
  for (size_t i = 0; i < greedy_.size(); ++i) {
    const size_t row = prompt_.size() - 1 + i;
    const float* w = want.data() + row * v;
    if (Margin(w, v) <= 2 * MaxAbs(got.data() + row * v, w, v)) break;
    ASSERT_EQ(ids[i], greedy_[i]) << "step " << i;
  }
  EXPECT_GT(run.runner().replayed_steps(), 0);
}

TEST_F(GpuRunnerTest, DemoModelGreedyTextEqualsTheCpu) {
  auto model = LoadOrDie(kDemoDir);
  const int v = model->spec().vocab_size;
  const std::vector<int32_t> prompt = {72,  101, 108, 108, 111, 44, 32, 119,
                                       111, 114, 108, 100, 33,  32, 84, 104,
                                       101, 32,  113, 117, 105, 99, 107};
  std::vector<int32_t> results[2];
  for (bool gpu : {false, true}) {
    Harness h(model, gpu);
    Harness::Seq s = h.NewSeq();
    std::vector<float> logits = h.Feed(&s, prompt, 7);
    const int32_t first = ArgmaxOf(logits.data() + (prompt.size() - 1) * v, v);
    results[gpu] = h.Greedy(&s, first, 64);
  }
  EXPECT_EQ(results[1], results[0]);
}

TEST_F(GpuRunnerTest, RecordedDecodeStepsEqualDirectOnes) {
  auto model = LoadOrDie(kTinyDir);
  const int v = model->spec().vocab_size;
  std::vector<float> logits[2];
  std::vector<int32_t> tokens[2];
  for (bool record : {false, true}) {
    Harness h(model, true, record);
    // Three sequences (a batch padded to four when recorded).
    Harness::Seq a = h.NewSeq(), b = h.NewSeq(), c = h.NewSeq();
    h.Feed(&a, {prompt_.begin(), prompt_.begin() + 50}, 50);
    h.Feed(&b, {prompt_.begin() + 60, prompt_.begin() + 65}, 5);
    h.Feed(&c, {prompt_.begin() + 100, prompt_.begin() + 190}, 64);
    std::vector<int32_t> next = {1, 2, 3};
    for (int step = 0; step < 20; ++step) {
      ForwardOutput out = h.Step({&a, &b, &c}, next);
      ASSERT_EQ(out.argmax.size(), 3u);
      ASSERT_EQ(out.logits.size(), 3u * v);
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(out.argmax[i], ArgmaxOf(out.logits.data() + i * v, v));
      }
      logits[record].insert(logits[record].end(), out.logits.begin(),
                            out.logits.end());
      tokens[record].insert(tokens[record].end(), out.argmax.begin(),
                            out.argmax.end());
      next = out.argmax;
    }
    if (record) {
      EXPECT_GE(h.runner().recordings(), 1);
      EXPECT_GE(h.runner().replayed_steps(), 18);
    } else {
      EXPECT_EQ(h.runner().replayed_steps(), 0);
    }
  }
  EXPECT_LT(RelErr(logits[1].data(), logits[0].data(), logits[0].size()), 1e-2);
  EXPECT_EQ(tokens[1], tokens[0]);
}

// Rows sampled on the GPU after the forward pass (also after replayed,
// recorded steps) get the token the CPU's rule gives for the same logits
// and uniform; the other rows stay greedy.
TEST_F(GpuRunnerTest, DeviceSampledRowsFollowTheRuleOnTheirLogits) {
  auto model = LoadOrDie(kTinyDir);
  const int v = model->spec().vocab_size;
  for (bool record : {false, true}) {
    Harness h(model, true, record);
    Harness::Seq a = h.NewSeq(), b = h.NewSeq(), c = h.NewSeq();
    h.Feed(&a, {prompt_.begin(), prompt_.begin() + 40}, 40);
    h.Feed(&b, {prompt_.begin() + 50, prompt_.begin() + 57}, 7);
    h.Feed(&c, {prompt_.begin() + 100, prompt_.begin() + 130}, 30);
    std::mt19937_64 rng(17);
    auto uniform = [&] { return static_cast<float>(rng() >> 40) * 0x1p-24f; };
    std::vector<int32_t> next = {1, 2, 3};
    int differs_from_greedy = 0;
    for (int step = 0; step < 16; ++step) {
      const std::vector<RowSample> samples = {{2, 0.8f, 20, 0.9f, uniform()},
                                              {0, 1.5f, 0, 1.0f, uniform()}};
      ForwardOutput out = h.Step({&a, &b, &c}, next, samples);
      ASSERT_EQ(out.sampled.size(), 2u);
      ASSERT_EQ(out.logits.size(), 3u * v);
      for (size_t i = 0; i < samples.size(); ++i) {
        const RowSample& s = samples[i];
        const float* row = out.logits.data() + s.row * v;
        EXPECT_EQ(out.sampled[i],
                  SampleRow(row, v, s.temperature, s.top_k, s.top_p, s.uniform))
            << "record " << record << " step " << step << " row " << s.row;
        differs_from_greedy += out.sampled[i] != ArgmaxOf(row, v);
      }
      EXPECT_EQ(out.argmax[1], ArgmaxOf(out.logits.data() + v, v));
      next = {out.sampled[1], out.argmax[1], out.sampled[0]};
    }
    EXPECT_GT(differs_from_greedy, 0);
    if (record) EXPECT_GE(h.runner().replayed_steps(), 14);
  }
}

TEST_F(GpuRunnerTest, StateSavedOffTheGpuRestoresExactly) {
  auto model = LoadOrDie(kTinyDir);
  const int v = model->spec().vocab_size;
  Harness h(model, true);
  Harness::Seq a = h.NewSeq();
  h.Feed(&a, {prompt_.begin(), prompt_.begin() + 150}, 64);
  auto saved = h.pool().Save(a.slot, a.pages, a.pos);
  ASSERT_TRUE(saved.ok()) << saved.status();
  Harness::Seq b = h.NewSeq();
  ASSERT_TRUE(h.pool().RestoreCapacity(&b.pages, saved->num_tokens).ok());
  ASSERT_TRUE(h.pool().Restore(*saved, b.slot, b.pages).ok());
  b.pos = a.pos;
  // The copy round-trips: saving b gives the same record.
  auto again = h.pool().Save(b.slot, b.pages, b.pos);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->recurrent, saved->recurrent);
  EXPECT_EQ(again->keys, saved->keys);
  EXPECT_EQ(again->values, saved->values);
  // Both continue alike, batched together.
  std::vector<int32_t> next = {5, 5};
  for (int step = 0; step < 8; ++step) {
    ForwardOutput out = h.Step({&a, &b}, next);
    EXPECT_LT(RelErr(out.logits.data() + v, out.logits.data(), v), 1e-6);
    next = {out.argmax[0], out.argmax[0]};
  }
}

// A sequence's result does not depend on what it is batched with: a decode
// token batched with another sequence's prefill gives what it gives beside a
// different prefill, and the prefill gives what it gives alone.
TEST_F(GpuRunnerTest, MixedPrefillAndDecodeBatchMatchesSeparateRuns) {
  auto model = LoadOrDie(kTinyDir);
  const int v = model->spec().vocab_size;
  const int32_t next = prompt_[40];
  // Feeds the 40-token prompt to a fresh sequence, then its next token in
  // one batch with `other` as a fresh sequence's prefill; returns both rows
  // of logits.
  auto mixed = [&](Harness* h, const std::vector<int32_t>& other) {
    Harness::Seq a = h->NewSeq(), b = h->NewSeq();
    h->Feed(&a, {prompt_.begin(), prompt_.begin() + 40}, 40);
    EXPECT_TRUE(h->pool().EnsureCapacity(&a.pages, 41).ok());
    EXPECT_TRUE(h->pool().EnsureCapacity(&b.pages, other.size()).ok());
    std::vector<SequenceInput> batch = {
        {a.slot, &a.pages, 40, absl::MakeConstSpan(&next, 1)},
        {b.slot, &b.pages, 0, absl::MakeConstSpan(other)}};
    std::vector<float> logits;
    EXPECT_TRUE(h->runner().Forward(batch, false, &logits).ok());
    EXPECT_EQ(logits.size(), 2u * v);
    return logits;
  };
  const std::vector<int32_t> pb(prompt_.begin() + 40, prompt_.begin() + 113);
  std::vector<int32_t> pc(prompt_.begin() + 80, prompt_.begin() + 153);
  Harness h1(model, true), h2(model, true);
  const std::vector<float> with_b = mixed(&h1, pb);
  const std::vector<float> with_c = mixed(&h2, pc);
  ASSERT_EQ(with_b.size(), 2u * v);
  ASSERT_EQ(with_c.size(), 2u * v);
  EXPECT_LT(RelErr(with_b.data(), with_c.data(), v), 1e-5);
  // Both rows stay close to the reference (a single row; the bf16 bound of
  // the fixtures' README is for whole tensors).
  EXPECT_LT(RelErr(with_b.data(), prefill_.data() + 40 * v, v), 3e-2);
  Harness single(model, true);
  Harness::Seq sb = single.NewSeq();
  std::vector<float> want = single.Feed(&sb, pb, pb.size());
  EXPECT_LT(RelErr(with_b.data() + v, want.data() + (pb.size() - 1) * v, v),
            1e-2);
}

}  // namespace
}  // namespace deltaserve
