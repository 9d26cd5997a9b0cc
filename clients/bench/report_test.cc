#include "clients/bench/report.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace deltaserve::bench {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

BenchConfig TestConfig() {
  BenchConfig config;
  config.server = "127.0.0.1:1234";
  config.concurrency = 4;
  config.warmup = 1;
  config.timeout = absl::Seconds(30);
  config.workload.kind = WorkloadKind::kMultiturn;
  config.workload.turns = 2;
  config.workload.num_requests = 2;
  config.workload.input = {LengthDistribution::Kind::kUniform, 32, 0.5};
  config.workload.output = {LengthDistribution::Kind::kFixed, 3, 0.0};
  config.workload.seed = 9;
  return config;
}

BenchResult TestResult(bool with_failure) {
  BenchResult result;
  result.model = "demo";
  result.vocab_size = 4096;
  result.context_limit = 1 << 20;
  result.duration_s = 0.5;
  result.warmup_ok = 1;
  RequestRecord ok;
  ok.sent = true;
  ok.input_tokens = 32;
  ok.expected_output_tokens = 3;
  ok.output_tokens = 3;
  ok.start_s = 0.0;
  ok.ttft_ms = 10.0;
  ok.e2e_ms = 30.0;
  ok.tpot_ms = 10.0;
  ok.itl_ms = {9.0, 11.0};
  ok.server_ttft_ms = 8.0;
  ok.finish_reason = "length";
  result.records.push_back(ok);
  RequestRecord second = ok;
  second.index = 1;
  second.turn = 1;
  if (with_failure) {
    second.code = absl::StatusCode::kUnavailable;
    second.error_message = "server going away";
    second.output_tokens = 0;
    second.ttft_ms = kNaN;
    second.tpot_ms = kNaN;
    second.itl_ms.clear();
    second.finish_reason.clear();
  }
  result.records.push_back(second);
  return result;
}

TEST(ReportTest, TableHasConfigurationThroughputAndPercentiles) {
  const BenchConfig config = TestConfig();
  const BenchResult result = TestResult(/*with_failure=*/false);
  const std::string report =
      FormatReport(config, result, Summarize(result.records, 0.5));
  EXPECT_THAT(report, HasSubstr("server=127.0.0.1:1234 model=demo"));
  EXPECT_THAT(report, HasSubstr("workload=multiturn (2 turns per "
                                "conversation)"));
  EXPECT_THAT(report, HasSubstr("load=closed loop, concurrency 4"));
  EXPECT_THAT(report, HasSubstr("input_len=32 (uniform ±50%)"));
  EXPECT_THAT(report, HasSubstr("timeout=30s"));
  EXPECT_THAT(report, HasSubstr("2 ok, 0 failed in 0.500 s"));
  EXPECT_THAT(report, HasSubstr("4.00 req/s"));
  EXPECT_THAT(report, HasSubstr("12.00 output tok/s"));
  EXPECT_THAT(report, HasSubstr("140.00 total tok/s"));
  for (const char* column : {"mean", "p50", "p90", "p99"}) {
    EXPECT_THAT(report, HasSubstr(column));
  }
  for (const char* row : {"| TTFT", "| TPOT", "| ITL", "| E2E"}) {
    EXPECT_THAT(report, HasSubstr(row));
  }
  EXPECT_THAT(report, Not(HasSubstr("errors")));
}

TEST(ReportTest, TableListsErrorsAndOpenLoopRate) {
  BenchConfig config = TestConfig();
  config.workload.request_rate = 2.5;
  const BenchResult result = TestResult(/*with_failure=*/true);
  const std::string report =
      FormatReport(config, result, Summarize(result.records, 0.5));
  EXPECT_THAT(report, HasSubstr("load=open loop, Poisson 2.5 req/s"));
  EXPECT_THAT(report, HasSubstr("1 ok, 1 failed"));
  EXPECT_THAT(report, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(report, HasSubstr("server going away"));
}

TEST(ReportTest, JsonHasConfigSummaryAndEveryRequest) {
  const BenchConfig config = TestConfig();
  const BenchResult result = TestResult(/*with_failure=*/true);
  const nlohmann::json report =
      ReportJson(config, result, Summarize(result.records, 0.5));
  // Round trip through text, as a reader of the file sees it.
  const nlohmann::json j = nlohmann::json::parse(report.dump(), nullptr,
                                                 /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded());

  const nlohmann::json& c = j["config"];
  EXPECT_EQ(c["server"], "127.0.0.1:1234");
  EXPECT_EQ(c["workload"], "multiturn");
  EXPECT_EQ(c["turns"], 2);
  EXPECT_EQ(c["concurrency"], 4);
  EXPECT_EQ(c["request_rate"], 0.0);
  EXPECT_EQ(c["seed"], 9);
  EXPECT_EQ(c["warmup"], 1);
  EXPECT_EQ(c["timeout_s"], 30.0);
  EXPECT_EQ(c["input_len"]["distribution"], "uniform");
  EXPECT_EQ(c["input_len"]["mean"], 32);
  EXPECT_EQ(c["output_len"]["distribution"], "fixed");
  EXPECT_TRUE(c["description"].is_string());
  EXPECT_EQ(j["model"]["name"], "demo");
  EXPECT_EQ(j["model"]["vocab_size"], 4096);

  const nlohmann::json& s = j["summary"];
  EXPECT_EQ(s["requests"], 2);
  EXPECT_EQ(s["ok"], 1);
  EXPECT_EQ(s["failed"], 1);
  EXPECT_EQ(s["warmup_ok"], 1);
  EXPECT_EQ(s["errors"]["UNAVAILABLE"], 1);
  EXPECT_EQ(s["duration_s"], 0.5);
  EXPECT_EQ(s["request_throughput"], 2.0);
  EXPECT_EQ(s["output_token_throughput"], 6.0);
  EXPECT_EQ(s["total_token_throughput"], 70.0);
  EXPECT_TRUE(s["percentile_method"].is_string());
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    for (const char* field :
         {"count", "mean", "min", "p50", "p90", "p99", "max"}) {
      EXPECT_TRUE(s[metric].contains(field)) << metric << "." << field;
    }
  }
  EXPECT_EQ(s["ttft_ms"]["p50"], 10.0);
  EXPECT_EQ(s["itl_ms"]["count"], 2);

  ASSERT_EQ(j["requests"].size(), 2u);
  const nlohmann::json& first = j["requests"][0];
  for (const char* field :
       {"index", "conversation", "turn", "sent", "ok", "code", "error",
        "start_s", "input_tokens", "expected_output_tokens", "output_tokens",
        "ttft_ms", "tpot_ms", "e2e_ms", "server_ttft_ms", "finish_reason",
        "itl_ms"}) {
    EXPECT_TRUE(first.contains(field)) << field;
  }
  EXPECT_EQ(first["ok"], true);
  EXPECT_EQ(first["code"], "OK");
  EXPECT_EQ(first["itl_ms"], nlohmann::json::array({9.0, 11.0}));
  const nlohmann::json& second = j["requests"][1];
  EXPECT_EQ(second["ok"], false);
  EXPECT_EQ(second["code"], "UNAVAILABLE");
  EXPECT_EQ(second["error"], "server going away");
  // Undefined latencies are null, not NaN (which JSON cannot hold).
  EXPECT_TRUE(second["ttft_ms"].is_null());
  EXPECT_TRUE(second["tpot_ms"].is_null());
}

}  // namespace
}  // namespace deltaserve::bench
