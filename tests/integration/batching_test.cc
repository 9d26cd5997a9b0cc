// Continuous batching over gRPC on the CPU with the demo model: many
// concurrent streams reproduce their solo outputs, a long prompt is
// prefilled in chunks without stalling streams that are decoding, deadlines
// and the queue bound are enforced.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "services/server/server.h"
#include "tests/integration/test_util.h"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";

ServerOptions Options() {
  ServerOptions options;
  options.model_dir = kDemoDir;
  options.listen = "127.0.0.1:0";
  options.num_threads = 1;
  options.engine.max_new_tokens_limit = 8192;
  options.engine.seed = 11;
  return options;
}

std::unique_ptr<Server> Start(const ServerOptions& options) {
  auto server = Server::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

std::vector<std::vector<int32_t>> GoldenPrompts() {
  nlohmann::json golden =
      nlohmann::json::parse(ReadFile(std::string(kDemoDir) + "/golden.json"));
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : golden["prompts"]) {
    prompts.push_back(p["prompt_ids"].get<std::vector<int32_t>>());
  }
  return prompts;
}

v1::GenerateRequest Greedy(const std::vector<int32_t>& ids, int n) {
  v1::GenerateRequest request = IdsRequest(ids, n);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

TEST(BatchingTest, SixtyFourConcurrentStreamsMatchTheirSoloRuns) {
  ServerOptions options = Options();
  options.engine.max_running_requests = 64;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Inference::NewStub(Connect(*server));
  const auto golden = GoldenPrompts();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 64; ++i) {
    std::vector<int32_t> p = golden[i % 3];
    p.push_back(3 + i);  // every prompt distinct
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> solo(64);
  for (int i = 0; i < 64; ++i) {
    Generation g = Generate(stub.get(), Greedy(prompts[i], 12));
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    solo[i] = g.ids();
    ASSERT_EQ(solo[i].size(), 12u);
  }
  std::vector<Generation> together(64);
  std::vector<std::thread> threads;
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back(
        [&, i] { together[i] = Generate(stub.get(), Greedy(prompts[i], 12)); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].ids(), solo[i]) << "stream " << i;
  }
  // They did share steps.
  EXPECT_GT(server->engine().stats().max_step_tokens, 64);
}

TEST(BatchingTest, LongPromptIsChunkedWhileOtherStreamsKeepDecoding) {
  ServerOptions options = Options();
  options.engine.max_running_requests = 16;
  options.engine.max_batched_tokens = 2048;
  options.engine.kv_capacity_tokens = 32768;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto channel = Connect(*server);
  auto stub = v1::Inference::NewStub(channel);
  const auto golden = GoldenPrompts();

  // Eight streams decoding until cancelled.
  struct Decoder {
    grpc::ClientContext context;
    absl::Mutex mu;
    std::vector<absl::Time> arrivals;  // one per chunk
  };
  std::vector<std::unique_ptr<Decoder>> decoders;
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    decoders.push_back(std::make_unique<Decoder>());
    Decoder* d = decoders.back().get();
    threads.emplace_back([&, d, i] {
      auto reader = stub->Generate(&d->context, Greedy(golden[i % 3], 8000));
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
        absl::MutexLock lock(&d->mu);
        d->arrivals.push_back(absl::Now());
      }
      reader->Finish();
    });
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& d : decoders) {
          absl::MutexLock lock(&d->mu);
          if (d->arrivals.empty()) return false;
        }
        return true;
      },
      absl::Seconds(60)));

  std::mt19937 rng(5);
  std::vector<int32_t> long_prompt(20000);
  for (int32_t& id : long_prompt) id = 3 + rng() % 4000;
  const int64_t steps_before = server->engine().stats().steps;
  const absl::Time start = absl::Now();
  Generation big =
      Generate(stub.get(), Greedy(long_prompt, 1), absl::Seconds(600));
  const absl::Time end = absl::Now();
  const Engine::Stats stats = server->engine().stats();
  for (auto& d : decoders) d->context.TryCancel();
  for (auto& t : threads) t.join();

  ASSERT_TRUE(big.status.ok()) << big.status.error_message();
  ASSERT_TRUE(big.completion.has_value());
  EXPECT_EQ(big.completion->prompt_tokens(), 20000);
  // Prefilled in chunks: at least ceil(20000 / 2048) steps.
  const int64_t steps = stats.steps - steps_before;
  EXPECT_GE(steps, 10);
  const absl::Duration step_time = stats.max_step_time;
  for (size_t i = 0; i < decoders.size(); ++i) {
    absl::MutexLock lock(&decoders[i]->mu);
    const auto& a = decoders[i]->arrivals;
    int during = 0;
    absl::Duration worst;
    for (size_t j = 1; j < a.size(); ++j) {
      if (a[j] < start || a[j - 1] > end) continue;
      ++during;
      worst = std::max(worst, a[j] - a[j - 1]);
    }
    // A token every step: about as many tokens as steps while the long
    // prompt was in, and no gap much longer than the longest step.
    EXPECT_GE(during, steps - 3) << "decoder " << i;
    EXPECT_LE(worst, 2 * step_time + absl::Milliseconds(50))
        << "decoder " << i << ": longest gap " << worst << ", longest step "
        << step_time;
  }
  EXPECT_TRUE(WaitFor([&] { return server->engine().num_active() == 0; },
                      absl::Seconds(60)));
}

TEST(BatchingTest, DeadlineEndsTheGenerationAndFreesItsState) {
  auto server = Start(Options());
  ASSERT_NE(server, nullptr);
  auto stub = v1::Inference::NewStub(Connect(*server));
  Generation g = Generate(stub.get(), Greedy(GoldenPrompts()[0], 8000),
                          absl::Milliseconds(300));
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([&] { return server->engine().num_active() == 0; },
                      absl::Seconds(30)));
  // Still serving.
  Generation ok = Generate(stub.get(), Greedy(GoldenPrompts()[1], 3));
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.ids().size(), 3u);
}

TEST(BatchingTest, FullQueueIsResourceExhausted) {
  ServerOptions options = Options();
  options.engine.max_running_requests = 1;
  options.engine.max_queued_requests = 1;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Inference::NewStub(Connect(*server));
  const auto golden = GoldenPrompts();
  // One running, one waiting: the third is turned away.
  grpc::ClientContext running_context;
  auto running = stub->Generate(&running_context, Greedy(golden[0], 8000));
  v1::GenerateResponse response;
  ASSERT_TRUE(running->Read(&response));
  std::thread waiting([&] {
    Generation g = Generate(stub.get(), Greedy(golden[1], 2));
    EXPECT_TRUE(g.status.ok()) << g.status.error_message();
  });
  ASSERT_TRUE(WaitFor([&] { return server->engine().num_active() == 2; },
                      absl::Seconds(30)));
  Generation rejected = Generate(stub.get(), Greedy(golden[2], 2));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  running_context.TryCancel();
  while (running->Read(&response)) {
  }
  running->Finish();
  waiting.join();
}

}  // namespace
}  // namespace deltaserve
