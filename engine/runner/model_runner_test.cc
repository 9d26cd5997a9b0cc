// The CPU model runner against independent reference outputs: the
// qwen35-tiny fixture (float64 reference) and the demo model's golden.json.
#include "engine/runner/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "engine/runner/runner_harness.h"
#include "engine/state/state_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/memory.h"
#include "kernels/sampling_rule.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

constexpr char kTinyDir[] = "tests/testdata/qwen35-tiny";
constexpr char kNextDir[] = "tests/testdata/qwen3next-tiny";
constexpr char kDemoDir[] = "engine/model/demo-qwen35";

// The shared harness on CpuKernels.
class Harness : public RunnerHarness {
 public:
  explicit Harness(const std::string& dir) : Harness(LoadOrDie(dir)) {}
  explicit Harness(std::unique_ptr<Model> model)
      : RunnerHarness(std::move(model), std::move(*CpuKernels::Create({})),
                      {.max_slots = 4, .kv_capacity_tokens = 4096}) {}

  // Greedy continuation of `n` tokens after logits row `last`.
  std::vector<int32_t> Greedy(Seq* s, const float* last, int n) {
    return RunnerHarness::Greedy(s, ArgmaxOf(last, model().spec().vocab_size),
                                 n);
  }
};

class Qwen35TinyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto golden =
        SafetensorsFile::Open(std::string(kTinyDir) + "/golden.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
    prompt_ = I64ToI32(golden_->tensors().at("prompt_ids"));
    prefill_ = F32Of(golden_->tensors().at("prefill_logits"));
  }
  std::unique_ptr<SafetensorsFile> golden_;
  std::vector<int32_t> prompt_;
  std::vector<float> prefill_;
};

TEST_F(Qwen35TinyTest, PrefillLogitsMatchReference) {
  Harness h(kTinyDir);
  Harness::Seq s = h.NewSeq();
  std::vector<float> logits = h.Feed(&s, prompt_, prompt_.size());
  ASSERT_EQ(logits.size(), prefill_.size());
  EXPECT_LT(RelErr(logits.data(), prefill_.data(), prefill_.size()), 1e-4);
}

TEST_F(Qwen35TinyTest, EveryChunkingGivesTheSameLogits) {
  for (size_t chunk : {1, 7, 37, 64, 200}) {
    Harness h(kTinyDir);
    Harness::Seq s = h.NewSeq();
    std::vector<float> logits = h.Feed(&s, prompt_, chunk);
    ASSERT_EQ(logits.size(), prefill_.size());
    EXPECT_LT(RelErr(logits.data(), prefill_.data(), prefill_.size()), 1e-4)
        << "chunk " << chunk;
  }
}

TEST_F(Qwen35TinyTest, GreedyContinuationMatchesReference) {
  Harness h(kTinyDir);
  Harness::Seq s = h.NewSeq();
  const int v = h.model().spec().vocab_size;
  std::vector<float> logits = h.Feed(&s, prompt_, 64);
  std::vector<int32_t> want = I64ToI32(golden_->tensors().at("greedy_ids"));
  std::vector<int32_t> got =
      h.Greedy(&s, logits.data() + (prompt_.size() - 1) * v, want.size());
  EXPECT_EQ(got, want);
}

TEST_F(Qwen35TinyTest, AttentionCacheMatchesReferenceKeysAndValues) {
  Harness h(kTinyDir);
  Harness::Seq s = h.NewSeq();
  h.Feed(&s, prompt_, 50);
  const auto& ref_k = golden_->tensors().at("state.3.keys");  // [Hkv, T, D]
  const auto& ref_v = golden_->tensors().at("state.3.values");
  const std::vector<float> want_k = F32Of(ref_k), want_v = F32Of(ref_v);
  const int64_t hkv = ref_k.shape[0], t = ref_k.shape[1], d = ref_k.shape[2];
  const TensorView kp = h.pool().k_pages(3), vp = h.pool().v_pages(3);
  const int page = h.pool().page_size();
  std::vector<float> got_k(want_k.size()), got_v(want_v.size());
  for (int64_t hh = 0; hh < hkv; ++hh) {
    for (int64_t p = 0; p < t; ++p) {
      const int64_t phys = s.pages.global[p / page];
      const int64_t off = ((phys * page + p % page) * hkv + hh) * d;
      for (int64_t i = 0; i < d; ++i) {
        got_k[(hh * t + p) * d + i] = kp.f32()[off + i];
        got_v[(hh * t + p) * d + i] = vp.f32()[off + i];
      }
    }
  }
  EXPECT_LT(RelErr(got_k.data(), want_k.data(), want_k.size()), 1e-4);
  EXPECT_LT(RelErr(got_v.data(), want_v.data(), want_v.size()), 1e-4);
}

TEST_F(Qwen35TinyTest, StackedProjectionsGiveTheSameLogits) {
  // The weights a device runner uses: input projections and gate/up stacked
  // into single matrices (here in host memory, fp32, on the CPU kernels).
  std::unique_ptr<Model> base = Harness::LoadOrDie(kTinyDir);
  auto fused = UploadWeights(base->weights(), HostMemory(), DType::kF32,
                             Stream(), /*fuse=*/true);
  ASSERT_TRUE(fused.ok()) << fused.status();
  ASSERT_FALSE(fused->blocks[0].gdr.in_proj_all.empty());
  ASSERT_TRUE(fused->blocks[0].gdr.in_proj_qkv.empty());
  ASSERT_FALSE(fused->blocks[0].gate_up.empty());
  Harness stacked(Model::FromParts("tiny-stacked", base->spec(),
                                   *std::move(fused), nullptr));
  Harness::Seq s = stacked.NewSeq();
  std::vector<float> logits = stacked.Feed(&s, prompt_, 37);
  EXPECT_LT(RelErr(logits.data(), prefill_.data(), prefill_.size()), 1e-4);
  const int v = stacked.model().spec().vocab_size;
  const std::vector<int32_t> want =
      I64ToI32(golden_->tensors().at("greedy_ids"));
  EXPECT_EQ(
      stacked.Greedy(&s, logits.data() + (prompt_.size() - 1) * v, want.size()),
      want);
}

// Qwen3-Next: the same layers, with the gated-delta-rule input projections
// grouped per key head in the checkpoint (float64 reference, HF).
TEST(Qwen3NextTinyTest, MatchesReferenceForEveryChunking) {
  auto golden =
      SafetensorsFile::Open(std::string(kNextDir) + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> prompt =
      I64ToI32((*golden)->tensors().at("prompt_ids"));
  const std::vector<float> want =
      F32Of((*golden)->tensors().at("prefill_logits"));
  const std::vector<int32_t> greedy =
      I64ToI32((*golden)->tensors().at("greedy_ids"));
  for (size_t chunk : {size_t{200}, size_t{37}, size_t{1}}) {
    Harness h(kNextDir);
    EXPECT_EQ(h.model().spec().model_type, "qwen3_next");
    Harness::Seq s = h.NewSeq();
    const std::vector<float> logits = h.Feed(&s, prompt, chunk);
    ASSERT_EQ(logits.size(), want.size());
    EXPECT_LT(RelErr(logits.data(), want.data(), want.size()), 1e-4)
        << "chunk " << chunk;
    const int v = h.model().spec().vocab_size;
    EXPECT_EQ(
        h.Greedy(&s, logits.data() + (prompt.size() - 1) * v, greedy.size()),
        greedy)
        << "chunk " << chunk;
  }
}

// fla's DeltaNet (pure, with global attention, with sliding-window
// attention) and Gated DeltaNet: the fixtures' float32 GPU references are
// matched to 3e-3 (their README) for every chunking, and their greedy ids
// exactly.
class FlaFixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FlaFixtureTest, MatchesReferenceForEveryChunking) {
  const std::string dir = std::string("tests/testdata/") + GetParam();
  auto golden = SafetensorsFile::Open(dir + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> prompt =
      I64ToI32((*golden)->tensors().at("prompt_ids"));
  // Any chunking computes prefill_logits (the sliding-window reference's
  // own chunked_logits are known to be wrong, see the fixtures' README).
  const std::vector<float> want =
      F32Of((*golden)->tensors().at("prefill_logits"));
  const std::vector<int32_t> greedy =
      I64ToI32((*golden)->tensors().at("greedy_ids"));
  for (size_t chunk : {size_t{200}, size_t{37}, size_t{7}, size_t{1}}) {
    Harness h(dir);
    Harness::Seq s = h.NewSeq();
    const std::vector<float> logits = h.Feed(&s, prompt, chunk);
    ASSERT_EQ(logits.size(), want.size());
    const double err = RelErr(logits.data(), want.data(), want.size());
    std::printf("%s, chunks of %zu: relative error %.3g\n", GetParam(), chunk,
                err);
    EXPECT_LT(err, 3e-3) << "chunk " << chunk;
    const int v = h.model().spec().vocab_size;
    EXPECT_EQ(
        h.Greedy(&s, logits.data() + (prompt.size() - 1) * v, greedy.size()),
        greedy)
        << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FlaFixtureTest,
                         ::testing::Values("deltanet-tiny",
                                           "deltanet-hybrid-tiny",
                                           "deltanet-swa-tiny",
                                           "gated-deltanet-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST_F(Qwen35TinyTest, BatchedSequencesMatchSingleSequences) {
  Harness h(kTinyDir);
  const int v = h.model().spec().vocab_size;
  // Two sequences of different lengths fed together in one varlen batch.
  Harness::Seq a = h.NewSeq(), b = h.NewSeq();
  std::vector<int32_t> pa(prompt_.begin(), prompt_.begin() + 130);
  std::vector<int32_t> pb(prompt_.begin() + 10, prompt_.begin() + 83);
  ASSERT_TRUE(h.pool().EnsureCapacity(&a.pages, pa.size()).ok());
  ASSERT_TRUE(h.pool().EnsureCapacity(&b.pages, pb.size()).ok());
  std::vector<SequenceInput> batch(2);
  batch[0] = {a.slot, &a.pages, 0, absl::MakeConstSpan(pa)};
  batch[1] = {b.slot, &b.pages, 0, absl::MakeConstSpan(pb)};
  std::vector<float> logits;
  ASSERT_TRUE(h.runner().Forward(batch, /*all_logits=*/false, &logits).ok());
  ASSERT_EQ(logits.size(), 2u * v);
  // Reference for a: the fixture's logits at position 129.
  EXPECT_LT(RelErr(logits.data(), prefill_.data() + 129 * v, v), 1e-4);
  Harness single(kTinyDir);
  Harness::Seq sb = single.NewSeq();
  std::vector<float> want_b = single.Feed(&sb, pb, pb.size());
  EXPECT_LT(RelErr(logits.data() + v, want_b.data() + (pb.size() - 1) * v, v),
            1e-5);
}

// qwen35-tiny with its attention layer turned into a sliding-window layer.
std::unique_ptr<Model> SlidingWindowTiny(int window) {
  std::unique_ptr<Model> base = Harness::LoadOrDie(kTinyDir);
  ModelSpec spec = base->spec();
  spec.blocks[3].mixer = MixerKind::kSlidingWindowAttention;
  spec.blocks[3].attention.window = window;
  return Model::FromParts("tiny-swa", spec, base->weights(), nullptr);
}

TEST_F(Qwen35TinyTest, SlidingWindowKeepsOnlyTheWindowsPages) {
  constexpr int kWindow = 24;
  // Reference: the whole prompt in one call (nothing released before it).
  Harness whole(SlidingWindowTiny(kWindow));
  Harness::Seq sw = whole.NewSeq();
  const std::vector<float> want = whole.Feed(&sw, prompt_, prompt_.size());
  // The window changes the function: it is not the global model's.
  EXPECT_GT(RelErr(want.data(), prefill_.data(), want.size()), 1e-3);
  // In chunks of 7, pages behind the window go back to the pool each step.
  Harness chunked(SlidingWindowTiny(kWindow));
  Harness::Seq sc = chunked.NewSeq();
  const std::vector<float> got = chunked.Feed(&sc, prompt_, 7);
  EXPECT_LT(RelErr(got.data(), want.data(), want.size()), 1e-5);
  const int page = chunked.pool().page_size();
  EXPECT_LE(chunked.max_held(), (kWindow + 7 + page - 1) / page + 1);
  EXPECT_TRUE(sc.pages.global.empty());  // no global attention layer
  // Decoding on, with the window sliding, matches the one-call run.
  const int v = chunked.model().spec().vocab_size;
  const float* last = want.data() + (prompt_.size() - 1) * v;
  EXPECT_EQ(chunked.Greedy(&sc, last, 24), whole.Greedy(&sw, last, 24));
}

TEST_F(Qwen35TinyTest, SaveAndRestoreContinueExactly) {
  for (int window : {0, 24}) {
    SCOPED_TRACE(window);
    Harness h(window == 0 ? Harness::LoadOrDie(kTinyDir)
                          : SlidingWindowTiny(window));
    std::vector<int32_t> head(prompt_.begin(), prompt_.begin() + 150);
    std::vector<int32_t> tail(prompt_.begin() + 150, prompt_.end());
    Harness::Seq a = h.NewSeq();
    h.Feed(&a, head, 64);
    // Save a, restore it as b in a fresh slot and pages, continue both.
    SavedSequence saved = *h.pool().Save(a.slot, a.pages, a.pos);
    Harness::Seq b = h.NewSeq();
    ASSERT_TRUE(h.pool().RestoreCapacity(&b.pages, a.pos).ok());
    ASSERT_TRUE(h.pool().Restore(saved, b.slot, b.pages).ok());
    b.pos = a.pos;
    const std::vector<float> la = h.Feed(&a, tail, 13);
    const std::vector<float> lb = h.Feed(&b, tail, 13);
    ASSERT_EQ(la.size(), lb.size());
    EXPECT_EQ(la, lb);
  }
}

// Rows sampled by the kernels after the forward pass get the token the
// sampling rule gives for their logits and uniform; the other rows stay
// greedy.
TEST_F(Qwen35TinyTest, SampledRowsFollowTheRuleOnTheirLogits) {
  Harness h(kTinyDir);
  const int v = h.model().spec().vocab_size;
  Harness::Seq a = h.NewSeq(), b = h.NewSeq(), c = h.NewSeq();
  h.Feed(&a, {prompt_.begin(), prompt_.begin() + 40}, 40);
  h.Feed(&b, {prompt_.begin() + 50, prompt_.begin() + 57}, 7);
  h.Feed(&c, {prompt_.begin() + 100, prompt_.begin() + 130}, 30);
  std::mt19937_64 rng(17);
  auto uniform = [&] { return static_cast<float>(rng() >> 40) * 0x1p-24f; };
  std::vector<int32_t> next = {1, 2, 3};
  int differs_from_greedy = 0;
  for (int step = 0; step < 12; ++step) {
    // Out of row order; row 1 is greedy.
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
          << "step " << step << " row " << s.row;
      differs_from_greedy += out.sampled[i] != ArgmaxOf(row, v);
    }
    EXPECT_EQ(out.argmax[1], ArgmaxOf(out.logits.data() + v, v));
    next = {out.sampled[1], out.argmax[1], out.sampled[0]};
  }
  EXPECT_GT(differs_from_greedy, 0);
}

TEST(ModelRunnerTest, RejectsBadSamples) {
  Harness h(kTinyDir);
  Harness::Seq s = h.NewSeq();
  ASSERT_TRUE(h.pool().EnsureCapacity(&s.pages, 1).ok());
  const int32_t token = 5;
  SequenceInput in{s.slot, &s.pages, 0, absl::MakeConstSpan(&token, 1)};
  const std::vector<std::vector<RowSample>> bad = {
      {{1, 1.0f, 0, 1.0f, 0.5f}},                            // no row 1
      {{0, 1.0f, 0, 1.0f, 0.5f}, {0, 1.0f, 0, 1.0f, 0.5f}},  // twice
      {{0, 1.0f, 0, 0.0f, 0.5f}},                            // top_p 0
      {{0, 1.0f, 0, 1.0f, 1.0f}},                            // uniform 1
  };
  for (const auto& samples : bad) {
    ForwardRequest request;
    request.samples = &samples;
    ForwardOutput out;
    EXPECT_EQ(h.runner().Forward({in}, request, &out).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(ModelRunnerTest, RejectsOutOfVocabularyToken) {
  Harness h(kTinyDir);
  Harness::Seq s = h.NewSeq();
  ASSERT_TRUE(h.pool().EnsureCapacity(&s.pages, 1).ok());
  const int32_t bad = h.model().spec().vocab_size;
  SequenceInput in{s.slot, &s.pages, 0, absl::MakeConstSpan(&bad, 1)};
  std::vector<float> logits;
  EXPECT_EQ(h.runner().Forward({in}, false, &logits).code(),
            absl::StatusCode::kInvalidArgument);
}

// The demo model against its golden.json (HF reference, fp32).
TEST(DemoModelTest, ReproducesGoldenLogitsAndGreedyContinuations) {
  std::ifstream in(std::string(kDemoDir) + "/golden.json");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json golden = nlohmann::json::parse(ss.str());
  Harness h(kDemoDir);
  const int v = h.model().spec().vocab_size;
  ASSERT_EQ(golden["prompts"].size(), 3u);
  for (const auto& p : golden["prompts"]) {
    SCOPED_TRACE(p["name"].get<std::string>());
    std::vector<int32_t> prompt = p["prompt_ids"].get<std::vector<int32_t>>();
    // The tokenizer produces the reference's prompt ids.
    auto encoded = h.model().tokenizer()->Encode(p["text"].get<std::string>());
    ASSERT_TRUE(encoded.ok());
    EXPECT_EQ(*encoded, prompt);
    Harness::Seq s = h.NewSeq();
    std::vector<float> logits = h.Feed(&s, prompt, 16);
    const float* last = logits.data() + (prompt.size() - 1) * v;
    std::vector<float> want = p["last_logits"].get<std::vector<float>>();
    ASSERT_EQ(want.size(), static_cast<size_t>(v));
    EXPECT_LT(RelErr(last, want.data(), v), 1e-4);
    std::vector<int32_t> top5(v);
    std::iota(top5.begin(), top5.end(), 0);
    std::partial_sort(top5.begin(), top5.begin() + 5, top5.end(),
                      [&](int a, int b) { return last[a] > last[b]; });
    top5.resize(5);
    EXPECT_EQ(top5, p["last_top5_ids"].get<std::vector<int32_t>>());
    std::vector<int32_t> greedy = h.Greedy(&s, last, 32);
    EXPECT_EQ(greedy, p["greedy32_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(h.model().tokenizer()->Decode(greedy),
              p["greedy32_text"].get<std::string>());
    h.pool().FreeSlot(s.slot);
    h.pool().FreePages(&s.pages);
  }
}

}  // namespace
}  // namespace deltaserve
