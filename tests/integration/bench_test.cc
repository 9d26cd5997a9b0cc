// Runs deltaserve-bench's runner against an in-process deltaserve server on
// a loopback port: closed-loop, open-loop and multiturn workloads on the
// demo model, and the errors of a run that cannot start or whose requests
// fail.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/bench/report.h"
#include "clients/bench/runner.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/server/server.h"
#include "tests/integration/test_util.h"

namespace deltaserve {
namespace {

using ::deltaserve::bench::BenchConfig;
using ::deltaserve::bench::BenchResult;
using ::deltaserve::bench::LatencyStats;
using ::deltaserve::bench::LengthDistribution;
using ::deltaserve::bench::RequestRecord;
using ::deltaserve::bench::RunBench;
using ::deltaserve::bench::Summarize;
using ::deltaserve::bench::Summary;
using ::deltaserve::bench::WorkloadKind;
using ::testing::HasSubstr;

// Relative to the test's runfiles directory, its working directory.
constexpr char kDemoDir[] = "engine/model/demo-qwen35";
constexpr int kDemoVocab = 4096;

ServerOptions TestOptions() {
  ServerOptions options = SmallServerOptions(kDemoDir);
  options.engine.max_new_tokens_limit = 64;
  return options;
}

LengthDistribution Fixed(int n) {
  return {LengthDistribution::Kind::kFixed, n, 0.0};
}

void ExpectOrdered(const LatencyStats& stats, const char* name) {
  SCOPED_TRACE(name);
  ASSERT_GT(stats.count, 0);
  EXPECT_LE(stats.min, stats.p50);
  EXPECT_LE(stats.p50, stats.p90);
  EXPECT_LE(stats.p90, stats.p99);
  EXPECT_LE(stats.p99, stats.max);
  EXPECT_GE(stats.min, 0.0);
}

class BenchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Start(TestOptions());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override { ASSERT_NE(server_, nullptr); }

  static BenchConfig Config() {
    BenchConfig config;
    config.server = absl::StrCat("127.0.0.1:", server_->port());
    config.timeout = absl::Seconds(120);
    config.workload.seed = 1;
    return config;
  }

  static Server* server_;
};

Server* BenchTest::server_ = nullptr;

TEST_F(BenchTest, ClosedLoopRandomWorkload) {
  BenchConfig config = Config();
  config.concurrency = 3;
  config.warmup = 1;
  config.workload.num_requests = 6;
  config.workload.input = Fixed(32);
  config.workload.output = Fixed(8);
  absl::StatusOr<BenchResult> result = RunBench(config);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->model, "demo-qwen35");
  EXPECT_EQ(result->vocab_size, kDemoVocab);
  EXPECT_EQ(result->warmup_ok, 1);
  EXPECT_EQ(result->warmup_failed, 0);

  ASSERT_EQ(result->records.size(), 6u);
  for (const RequestRecord& r : result->records) {
    SCOPED_TRACE(r.index);
    EXPECT_TRUE(r.ok()) << r.error_message;
    EXPECT_EQ(r.input_tokens, 32);
    EXPECT_EQ(r.expected_output_tokens, 8);
    EXPECT_EQ(r.output_tokens, 8);
    EXPECT_EQ(r.finish_reason, "length");
    EXPECT_EQ(r.itl_ms.size(), 7u);
    EXPECT_GE(r.start_s, 0.0);
    EXPECT_GT(r.ttft_ms, 0.0);
    EXPECT_LE(r.ttft_ms, r.e2e_ms);
    EXPECT_NEAR(r.tpot_ms, (r.e2e_ms - r.ttft_ms) / 7, 1e-9);
    EXPECT_FALSE(std::isnan(r.server_ttft_ms));
  }

  const Summary summary = Summarize(result->records, result->duration_s);
  EXPECT_EQ(summary.ok, 6);
  EXPECT_EQ(summary.failed, 0);
  EXPECT_EQ(summary.output_length_mismatches, 0);
  EXPECT_EQ(summary.output_tokens, 48);
  EXPECT_EQ(summary.itl_ms.count, 42);
  EXPECT_GT(summary.request_throughput, 0.0);
  EXPECT_GT(summary.output_token_throughput, 0.0);
  ExpectOrdered(summary.ttft_ms, "ttft");
  ExpectOrdered(summary.tpot_ms, "tpot");
  ExpectOrdered(summary.itl_ms, "itl");
  ExpectOrdered(summary.e2e_ms, "e2e");

  const std::string table = FormatReport(config, *result, summary);
  EXPECT_THAT(table, HasSubstr("6 ok, 0 failed"));
  EXPECT_THAT(table, HasSubstr("load=closed loop, concurrency 3"));

  // The JSON file's text parses and has the summary and every request.
  const nlohmann::json json = nlohmann::json::parse(
      ReportJson(config, *result, summary).dump(2), nullptr,
      /*allow_exceptions=*/false);
  ASSERT_FALSE(json.is_discarded());
  EXPECT_EQ(json["model"]["name"], "demo-qwen35");
  EXPECT_EQ(json["config"]["concurrency"], 3);
  EXPECT_EQ(json["summary"]["ok"], 6);
  EXPECT_EQ(json["summary"]["failed"], 0);
  EXPECT_TRUE(json["summary"]["request_throughput"].is_number());
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    EXPECT_TRUE(json["summary"][metric]["p99"].is_number()) << metric;
  }
  ASSERT_EQ(json["requests"].size(), 6u);
  EXPECT_EQ(json["requests"][0]["output_tokens"], 8);
  EXPECT_EQ(json["requests"][0]["itl_ms"].size(), 7u);
  EXPECT_EQ(server_->engine().num_active(), 0);
}

TEST_F(BenchTest, MultiturnResendsTheWholeHistory) {
  BenchConfig config = Config();
  config.concurrency = 2;
  config.workload.kind = WorkloadKind::kMultiturn;
  config.workload.turns = 2;
  config.workload.num_requests = 4;
  config.workload.input = Fixed(16);
  config.workload.output = Fixed(4);
  absl::StatusOr<BenchResult> result = RunBench(config);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 4u);
  for (int c = 0; c < 2; ++c) {
    const RequestRecord& first = result->records[2 * c];
    const RequestRecord& second = result->records[2 * c + 1];
    EXPECT_TRUE(first.ok()) << first.error_message;
    EXPECT_TRUE(second.ok()) << second.error_message;
    EXPECT_EQ(first.conversation, c);
    EXPECT_EQ(first.turn, 0);
    EXPECT_EQ(second.turn, 1);
    EXPECT_EQ(first.input_tokens, 16);
    // Previous prompt + its 4 generated tokens + a new chunk of 16.
    EXPECT_EQ(second.input_tokens, 16 + 4 + 16);
    EXPECT_EQ(first.output_tokens, 4);
    EXPECT_EQ(second.output_tokens, 4);
    // The second turn is sent only after the first has finished.
    EXPECT_GE(second.start_s * 1000.0 + 1e-6,
              first.start_s * 1000.0 + first.e2e_ms);
  }
  const Summary summary = Summarize(result->records, result->duration_s);
  EXPECT_EQ(summary.ok, 4);
  ExpectOrdered(summary.e2e_ms, "e2e");
}

TEST_F(BenchTest, OpenLoopSendsAtPoissonArrivals) {
  BenchConfig config = Config();
  config.workload.request_rate = 50.0;
  config.workload.num_requests = 5;
  config.workload.input = {LengthDistribution::Kind::kUniform, 24, 0.5};
  config.workload.output = Fixed(4);
  absl::StatusOr<BenchResult> result = RunBench(config);
  ASSERT_TRUE(result.ok()) << result.status();
  absl::StatusOr<bench::Workload> workload =
      bench::GenerateWorkload(config.workload, kDemoVocab);
  ASSERT_TRUE(workload.ok());
  ASSERT_EQ(result->records.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    const RequestRecord& r = result->records[i];
    EXPECT_TRUE(r.ok()) << r.error_message;
    EXPECT_EQ(r.output_tokens, 4);
    EXPECT_EQ(r.input_tokens,
              workload->conversations[i].turns[0].user_tokens.size());
    // Never sent before its arrival time.
    EXPECT_GE(r.start_s, workload->conversations[i].arrival_s);
  }
}

TEST_F(BenchTest, FailedRequestsAreRecordedNotFatal) {
  BenchConfig config = Config();
  config.concurrency = 2;
  config.workload.kind = WorkloadKind::kMultiturn;
  config.workload.turns = 2;
  config.workload.num_requests = 4;
  config.workload.input = Fixed(8);
  // Above the server's max_new_tokens_limit of 64.
  config.workload.output = Fixed(65);
  absl::StatusOr<BenchResult> result = RunBench(config);
  ASSERT_TRUE(result.ok()) << result.status();
  const Summary summary = Summarize(result->records, result->duration_s);
  EXPECT_EQ(summary.ok, 0);
  EXPECT_EQ(summary.failed, 4);
  // The first turn of each conversation is refused; the second is not sent.
  EXPECT_EQ(summary.errors.at("INVALID_ARGUMENT"), 2);
  EXPECT_EQ(summary.errors.at("ABORTED"), 2);
  EXPECT_TRUE(result->records[0].sent);
  EXPECT_FALSE(result->records[1].sent);
  EXPECT_THAT(result->records[0].error_message, HasSubstr("max_new_tokens"));
}

TEST_F(BenchTest, RunErrors) {
  BenchConfig config = Config();
  config.model = "no-such-model";
  EXPECT_EQ(RunBench(config).status().code(), absl::StatusCode::kNotFound);

  config = Config();
  config.workload.input = Fixed(10000);  // beyond the KV capacity of 8192
  EXPECT_EQ(RunBench(config).status().code(),
            absl::StatusCode::kInvalidArgument);

  config = Config();
  config.concurrency = 0;
  EXPECT_EQ(RunBench(config).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve
