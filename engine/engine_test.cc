// The engine end to end on the demo model, without gRPC.
#include "engine/engine.h"

#include <fstream>
#include <sstream>

#include "engine/engine_test_util.h"
#include "engine/runner/runner_harness.h"
#include "engine/sampler/sampler.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";

const nlohmann::json& Golden() {
  static const nlohmann::json* golden = [] {
    std::ifstream in(std::string(kDemoDir) + "/golden.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return new nlohmann::json(nlohmann::json::parse(ss.str()));
  }();
  return *golden;
}

std::unique_ptr<Engine> MakeEngine(Engine::Options options = {}) {
  if (options.kv_capacity_tokens == Engine::Options().kv_capacity_tokens) {
    options.kv_capacity_tokens = 8192;
  }
  auto engine = Engine::Create(&testing::DemoModel(),
                               std::move(*CpuKernels::Create({})), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

// Everything one stream produced.
struct Result {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<std::string> deltas;
  std::vector<PositionLogprobs> logprobs;
  GenerationEvent end;
};

Result Drain(GenerationStream& stream) {
  Result r;
  GenerationEvent ev;
  while (true) {
    EXPECT_TRUE(stream.Next(&ev, absl::Seconds(60))) << "stream stalled";
    if (ev.finished) {
      r.end = ev;
      return r;
    }
    r.ids.insert(r.ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    r.text += ev.text;
    r.deltas.push_back(ev.text);
    r.logprobs.insert(r.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
  }
}

GenerationRequest Greedy(const std::vector<int32_t>& prompt, int n) {
  GenerationRequest req;
  req.prompt = prompt;
  req.max_new_tokens = n;
  req.ignore_eos = true;
  return req;
}

std::vector<int32_t> PromptIds(int i) {
  return Golden()["prompts"][i]["prompt_ids"].get<std::vector<int32_t>>();
}

TEST(EngineTest, GreedyGenerationMatchesGolden) {
  auto engine = MakeEngine();
  for (int i = 0; i < 3; ++i) {
    const auto& p = Golden()["prompts"][i];
    auto stream = engine->Submit(Greedy(PromptIds(i), 32));
    ASSERT_TRUE(stream.ok()) << stream.status();
    Result r = Drain(**stream);
    ASSERT_TRUE(r.end.error.ok()) << r.end.error;
    EXPECT_EQ(r.ids, p["greedy32_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(r.text, p["greedy32_text"].get<std::string>());
    for (const std::string& d : r.deltas) EXPECT_TRUE(IsValidUtf8(d));
    EXPECT_EQ(r.end.finish_reason, FinishReason::kLength);
    EXPECT_EQ(r.end.completion_tokens, 32);
    EXPECT_EQ(r.end.prompt_tokens, static_cast<int>(PromptIds(i).size()));
  }
  EXPECT_EQ(engine->num_active(), 0);
}

TEST(EngineTest, ConcurrentRequestsMatchSingleRuns) {
  Engine::Options options;
  options.max_running_requests = 8;
  options.max_batched_tokens = 24;  // forces prompts to share steps
  auto engine = MakeEngine(options);
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 8; ++i) {
    auto s = engine->Submit(Greedy(PromptIds(i % 3), 20 + i));
    ASSERT_TRUE(s.ok());
    streams.push_back(*s);
  }
  for (int i = 0; i < 8; ++i) {
    Result r = Drain(*streams[i]);
    auto want =
        Golden()["prompts"][i % 3]["greedy32_ids"].get<std::vector<int32_t>>();
    want.resize(20 + i);
    EXPECT_EQ(r.ids, want) << "stream " << i;
  }
}

TEST(EngineTest, SeededSamplingIsReproducible) {
  auto engine = MakeEngine();
  auto run = [&](uint64_t seed) {
    GenerationRequest req = Greedy(PromptIds(0), 24);
    req.sampling.temperature = 0.9f;
    req.sampling.top_k = 50;
    req.sampling.top_p = 0.95f;
    req.seed = seed;
    return Drain(**engine->Submit(req)).ids;
  };
  const auto a = run(11), b = run(11), c = run(12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// A request that samples without log-probabilities gets its tokens from the
// kernels (the uniforms drawn from its seeded generator); one that reports
// log-probabilities samples its copied logits on the host with Sample. For
// one seed both give the tokens Sample gives on the model's logits with a
// generator seeded the same way, on every run.
TEST(EngineTest, SampledTokensEqualTheHostSamplerForTheSeed) {
  const SamplingParams params[] = {{0.8f, 0, 0.9f}, {1.2f, 40, 1.0f}};
  for (const SamplingParams& p : params) {
    for (int prompt : {0, 1}) {
      SCOPED_TRACE(::testing::Message()
                   << "T=" << p.temperature << " prompt " << prompt);
      constexpr int kTokens = 24;
      constexpr uint64_t kSeed = 1234;
      // The host sampler on the runner's logits, token by token.
      RunnerHarness h(RunnerHarness::LoadOrDie(kDemoDir),
                      std::move(*CpuKernels::Create({})), {});
      const int v = h.model().spec().vocab_size;
      const std::vector<int32_t> ids = PromptIds(prompt);
      RunnerHarness::Seq s = h.NewSeq();
      std::vector<float> logits = h.Feed(&s, ids, ids.size());
      std::mt19937_64 rng(kSeed);
      std::vector<int32_t> want;
      const float* row = logits.data() + (ids.size() - 1) * v;
      for (int i = 0; i < kTokens; ++i) {
        want.push_back(Sample(absl::MakeConstSpan(row, v), p, 0, &rng).token);
        if (i + 1 == kTokens) break;
        logits = h.Step({&s}, {want.back()}).logits;
        row = logits.data();
      }

      auto engine = MakeEngine();
      auto run = [&](int top_logprobs) {
        GenerationRequest req = Greedy(ids, kTokens);
        req.sampling = p;
        req.seed = kSeed;
        req.top_logprobs = top_logprobs;
        return Drain(**engine->Submit(req)).ids;
      };
      const std::vector<int32_t> on_device = run(0);
      EXPECT_EQ(on_device, want);
      EXPECT_EQ(run(0), want);
      EXPECT_EQ(run(2), want);  // host path
      // Sampling did sample: the tokens are not all the greedy ones.
      if (prompt == 1) {
        auto greedy =
            Golden()["prompts"][1]["greedy32_ids"].get<std::vector<int32_t>>();
        greedy.resize(kTokens);
        EXPECT_NE(on_device, greedy);
      }
    }
  }
}

TEST(EngineTest, StopStringEndsGenerationAndIsNotStreamed) {
  auto engine = MakeEngine();
  const std::string full = Golden()["prompts"][0]["greedy32_text"];
  // "joinpath(path):\n    \"\"\"Given ..." — stop at the docstring quotes.
  GenerationRequest req = Greedy(PromptIds(0), 32);
  req.stop = {"\"\"\"", "never-appears"};
  Result r = Drain(**engine->Submit(req));
  EXPECT_EQ(r.end.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.end.matched_stop, "\"\"\"");
  EXPECT_EQ(r.text, full.substr(0, full.find("\"\"\"")));
  EXPECT_LT(r.ids.size(), 32u);
}

TEST(EngineTest, StopTokenIdAndEos) {
  auto engine = MakeEngine();
  const auto golden =
      Golden()["prompts"][0]["greedy32_ids"].get<std::vector<int32_t>>();
  GenerationRequest req = Greedy(PromptIds(0), 32);
  req.stop_token_ids = {golden[4]};
  Result r = Drain(**engine->Submit(req));
  EXPECT_EQ(r.end.finish_reason, FinishReason::kStop);
  ASSERT_FALSE(r.ids.empty());
  EXPECT_EQ(r.ids.back(), golden[4]);
  EXPECT_LE(r.ids.size(), 5u);
}

TEST(EngineTest, TopLogprobsMatchGoldenTop5) {
  auto engine = MakeEngine();
  GenerationRequest req = Greedy(PromptIds(1), 2);
  req.top_logprobs = 5;
  Result r = Drain(**engine->Submit(req));
  ASSERT_EQ(r.logprobs.size(), 2u);
  std::vector<int32_t> top;
  for (const auto& t : r.logprobs[0].top) top.push_back(t.id);
  EXPECT_EQ(
      top, Golden()["prompts"][1]["last_top5_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(r.logprobs[0].sampled.id, top[0]);
  EXPECT_LT(r.logprobs[0].top[1].logprob, r.logprobs[0].top[0].logprob);
}

TEST(EngineTest, InvalidRequestsNameTheField) {
  Engine::Options options;
  options.max_new_tokens_limit = 100;
  options.default_max_new_tokens = 10;
  options.max_prompt_tokens = 64;
  auto engine = MakeEngine(options);
  struct Case {
    const char* field;
    std::function<void(GenerationRequest&)> edit;
  };
  const std::vector<Case> cases = {
      {"input", [](auto& r) { r.prompt.clear(); }},
      {"token_ids[1]", [](auto& r) { r.prompt[1] = 4096; }},
      {"token_ids[0]", [](auto& r) { r.prompt[0] = -3; }},
      {"temperature", [](auto& r) { r.sampling.temperature = -1; }},
      {"top_p", [](auto& r) { r.sampling.top_p = 0; }},
      {"top_p", [](auto& r) { r.sampling.top_p = 1.5f; }},
      {"top_k", [](auto& r) { r.sampling.top_k = -2; }},
      {"max_new_tokens", [](auto& r) { r.max_new_tokens = 101; }},
      {"max_new_tokens", [](auto& r) { r.max_new_tokens = -1; }},
      {"prompt", [](auto& r) { r.prompt.assign(64, 5); }},
      {"top_logprobs", [](auto& r) { r.top_logprobs = 21; }},
      {"stop", [](auto& r) { r.stop = {""}; }},
      {"stop", [](auto& r) { r.stop = {"\xff"}; }},
  };
  for (const Case& c : cases) {
    GenerationRequest req = Greedy({1, 2, 3}, 4);
    c.edit(req);
    auto s = engine->Submit(req);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.status().message().find(c.field), std::string::npos)
        << s.status().message();
  }
  // Still serving.
  auto ok = engine->Submit(Greedy({1, 2, 3}, 3));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(Drain(**ok).ids.size(), 3u);
}

TEST(EngineTest, CancelFreesTheRequestWithinAStep) {
  auto engine = MakeEngine();
  auto s = engine->Submit(Greedy(PromptIds(0), 4000));
  ASSERT_TRUE(s.ok());
  GenerationEvent ev;
  ASSERT_TRUE((*s)->Next(&ev, absl::Seconds(30)));
  ASSERT_FALSE(ev.finished);
  (*s)->Cancel();
  Result r = Drain(**s);
  EXPECT_EQ(r.end.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(r.end.completion_tokens, 4000);
  EXPECT_EQ(engine->num_active(), 0);
  // The freed slot serves the next request.
  EXPECT_EQ(Drain(**engine->Submit(Greedy(PromptIds(2), 5))).ids.size(), 5u);
}

TEST(EngineTest, CancellationCallbackIsPolled) {
  auto engine = MakeEngine();
  auto flag = std::make_shared<std::atomic<bool>>(false);
  GenerationRequest req = Greedy(PromptIds(0), 4000);
  req.is_cancelled = [flag] { return flag->load(); };
  auto s = engine->Submit(req);
  GenerationEvent ev;
  ASSERT_TRUE((*s)->Next(&ev, absl::Seconds(30)));
  flag->store(true);
  EXPECT_EQ(Drain(**s).end.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(engine->num_active(), 0);
}

TEST(EngineTest, FullQueueIsResourceExhausted) {
  Engine::Options options;
  options.max_running_requests = 1;
  options.max_queued_requests = 1;
  auto engine = MakeEngine(options);
  auto running = engine->Submit(Greedy(PromptIds(0), 4000));
  GenerationEvent ev;
  ASSERT_TRUE((*running)->Next(&ev, absl::Seconds(30)));  // admitted
  auto queued = engine->Submit(Greedy(PromptIds(0), 2));
  ASSERT_TRUE(queued.ok());
  auto rejected = engine->Submit(Greedy(PromptIds(0), 2));
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kResourceExhausted);
  (*running)->Cancel();
  EXPECT_EQ(Drain(**queued).ids.size(), 2u);
}

TEST(EngineTest, PreemptedRequestsResumeWithIdenticalTokens) {
  // 10 pages of 16 tokens: far too few for 8 requests of ~60 tokens, so the
  // scheduler preempts (state saved to host memory) and resumes them.
  Engine::Options options;
  options.max_running_requests = 8;
  options.kv_page_size = 16;
  options.kv_capacity_tokens = 160;
  auto engine = MakeEngine(options);
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 8; ++i) {
    auto s = engine->Submit(Greedy(PromptIds(i % 3), 32));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(*s);
  }
  for (int i = 0; i < 8; ++i) {
    Result r = Drain(*streams[i]);
    ASSERT_TRUE(r.end.error.ok()) << r.end.error;
    EXPECT_EQ(
        r.ids,
        Golden()["prompts"][i % 3]["greedy32_ids"].get<std::vector<int32_t>>())
        << "stream " << i;
  }
  const Engine::Stats stats = engine->stats();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.resumes, stats.preemptions);
  EXPECT_EQ(engine->num_active(), 0);
}

TEST(EngineTest, DeadlineEndsTheRequestAndFreesIt) {
  testing::FakeClock clock;
  Engine::Options options;
  options.clock = &clock;
  auto engine = MakeEngine(options);
  GenerationRequest req = Greedy(PromptIds(0), 4000);
  req.deadline = clock.Now() + absl::Seconds(5);
  auto s = engine->Submit(req);
  ASSERT_TRUE(s.ok());
  GenerationEvent ev;
  ASSERT_TRUE((*s)->Next(&ev, absl::Seconds(30)));
  ASSERT_FALSE(ev.finished);
  clock.Advance(absl::Seconds(6));
  Result r = Drain(**s);
  EXPECT_EQ(r.end.error.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(engine->num_active(), 0);
  // A request without a deadline is unaffected by the clock.
  EXPECT_EQ(Drain(**engine->Submit(Greedy(PromptIds(1), 4))).ids.size(), 4u);
}

TEST(EngineTest, ShutdownEndsRequestsAndRefusesNewOnes) {
  auto engine = MakeEngine();
  auto s = engine->Submit(Greedy(PromptIds(0), 4000));
  GenerationEvent ev;
  ASSERT_TRUE((*s)->Next(&ev, absl::Seconds(30)));
  engine->Shutdown();
  Result r = Drain(**s);
  EXPECT_EQ(r.end.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(engine->Submit(Greedy({1}, 1)).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace deltaserve
