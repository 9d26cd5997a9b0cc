#include "clients/bench/stats.h"

#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::bench {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

TEST(PercentileTest, LinearInterpolationOnKnownData) {
  const std::vector<double> one_to_ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_DOUBLE_EQ(Percentile(one_to_ten, 0), 1.0);
  EXPECT_DOUBLE_EQ(Percentile(one_to_ten, 50), 5.5);
  EXPECT_DOUBLE_EQ(Percentile(one_to_ten, 90), 9.1);
  EXPECT_DOUBLE_EQ(Percentile(one_to_ten, 99), 9.91);
  EXPECT_DOUBLE_EQ(Percentile(one_to_ten, 100), 10.0);
  // Rank 0.4·4 = 1.6: 20 + 0.6·(35 − 20).
  EXPECT_DOUBLE_EQ(Percentile({15, 20, 35, 40, 50}, 40), 29.0);
  EXPECT_DOUBLE_EQ(Percentile({15, 20, 35, 40, 50}, 50), 35.0);
}

TEST(PercentileTest, OrderOfInputDoesNotMatter) {
  EXPECT_DOUBLE_EQ(Percentile({10, 1, 7, 3, 9, 2, 8, 4, 6, 5}, 90), 9.1);
}

TEST(PercentileTest, EdgeCases) {
  EXPECT_TRUE(std::isnan(Percentile({}, 50)));
  EXPECT_DOUBLE_EQ(Percentile({42}, 0), 42.0);
  EXPECT_DOUBLE_EQ(Percentile({42}, 99), 42.0);
  // NaN values are left out; p outside [0, 100] is clamped.
  EXPECT_DOUBLE_EQ(Percentile({1, NAN, 3}, 50), 2.0);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3}, 150), 3.0);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3}, -5), 1.0);
}

TEST(SummarizeLatenciesTest, MeanMinMaxAndOrderedPercentiles) {
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);
  values.push_back(NAN);
  const LatencyStats stats = SummarizeLatencies(values);
  EXPECT_EQ(stats.count, 100);
  EXPECT_DOUBLE_EQ(stats.mean, 50.5);
  EXPECT_DOUBLE_EQ(stats.min, 1.0);
  EXPECT_DOUBLE_EQ(stats.max, 100.0);
  EXPECT_DOUBLE_EQ(stats.p50, 50.5);
  EXPECT_DOUBLE_EQ(stats.p90, 90.1);
  EXPECT_DOUBLE_EQ(stats.p99, 99.01);

  const LatencyStats empty = SummarizeLatencies({});
  EXPECT_EQ(empty.count, 0);
  EXPECT_TRUE(std::isnan(empty.mean));
  EXPECT_TRUE(std::isnan(empty.p99));
}

TEST(StreamTimerTest, SplitsAMultiTokenChunkAmongItsTokens) {
  StreamTimer timer(/*start_s=*/10.0);
  timer.OnChunk(10.1, 1);  // first token: TTFT 100 ms
  timer.OnChunk(10.2, 1);  // 100 ms
  timer.OnChunk(10.2, 0);  // no tokens: ignored
  timer.OnChunk(10.5, 3);  // 300 ms over 3 tokens
  RequestRecord record;
  timer.Finish(/*end_s=*/10.6, /*epoch_s=*/9.0, &record);
  EXPECT_EQ(record.output_tokens, 5);
  EXPECT_NEAR(record.start_s, 1.0, 1e-9);
  EXPECT_NEAR(record.ttft_ms, 100.0, 1e-6);
  EXPECT_NEAR(record.e2e_ms, 600.0, 1e-6);
  EXPECT_NEAR(record.tpot_ms, (600.0 - 100.0) / 4, 1e-6);
  EXPECT_THAT(record.itl_ms,
              ElementsAre(DoubleNear(100, 1e-6), DoubleNear(100, 1e-6),
                          DoubleNear(100, 1e-6), DoubleNear(100, 1e-6)));
}

TEST(StreamTimerTest, TokensOfTheFirstChunkHaveNoGap) {
  StreamTimer timer(0.0);
  timer.OnChunk(0.05, 2);
  timer.OnChunk(0.08, 1);
  RequestRecord record;
  timer.Finish(0.1, 0.0, &record);
  EXPECT_EQ(record.output_tokens, 3);
  EXPECT_NEAR(record.ttft_ms, 50.0, 1e-6);
  // One entry per token after the first.
  EXPECT_THAT(record.itl_ms,
              ElementsAre(DoubleNear(0, 1e-9), DoubleNear(30, 1e-6)));
}

TEST(StreamTimerTest, UndefinedLatenciesAreNaN) {
  RequestRecord none;
  StreamTimer(0.0).Finish(1.0, 0.0, &none);
  EXPECT_EQ(none.output_tokens, 0);
  EXPECT_TRUE(std::isnan(none.ttft_ms));
  EXPECT_TRUE(std::isnan(none.tpot_ms));
  EXPECT_NEAR(none.e2e_ms, 1000.0, 1e-6);

  StreamTimer one(0.0);
  one.OnChunk(0.2, 1);
  RequestRecord single;
  one.Finish(0.3, 0.0, &single);
  EXPECT_NEAR(single.ttft_ms, 200.0, 1e-6);
  EXPECT_TRUE(std::isnan(single.tpot_ms));
  EXPECT_TRUE(single.itl_ms.empty());
}

RequestRecord OkRecord(int index, double ttft_ms, double e2e_ms,
                       int output_tokens) {
  RequestRecord r;
  r.index = index;
  r.sent = true;
  r.input_tokens = 10;
  r.expected_output_tokens = 4;
  r.output_tokens = output_tokens;
  r.ttft_ms = ttft_ms;
  r.e2e_ms = e2e_ms;
  r.tpot_ms = (e2e_ms - ttft_ms) / (output_tokens - 1);
  r.itl_ms.assign(output_tokens - 1, r.tpot_ms);
  return r;
}

TEST(SummarizeTest, CountsThroughputAndErrors) {
  std::vector<RequestRecord> records = {
      OkRecord(0, 10, 40, 4), OkRecord(1, 20, 80, 4),
      OkRecord(2, 30, 60, 3),  // one token short
  };
  RequestRecord failed;
  failed.index = 3;
  failed.sent = true;
  failed.code = absl::StatusCode::kResourceExhausted;
  records.push_back(failed);
  RequestRecord not_sent;
  not_sent.index = 4;
  not_sent.code = absl::StatusCode::kAborted;
  records.push_back(not_sent);

  const Summary s = Summarize(records, /*duration_s=*/2.0);
  EXPECT_EQ(s.requests, 5);
  EXPECT_EQ(s.ok, 3);
  EXPECT_EQ(s.failed, 2);
  EXPECT_EQ(s.output_length_mismatches, 1);
  EXPECT_EQ(s.input_tokens, 30);
  EXPECT_EQ(s.output_tokens, 11);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(s.output_token_throughput, 5.5);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 20.5);
  EXPECT_EQ(s.ttft_ms.count, 3);
  EXPECT_DOUBLE_EQ(s.ttft_ms.p50, 20.0);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 20.0);
  EXPECT_EQ(s.itl_ms.count, 3 + 3 + 2);
  EXPECT_DOUBLE_EQ(s.tpot_ms.min, 10.0);
  EXPECT_DOUBLE_EQ(s.tpot_ms.max, 20.0);
  EXPECT_LE(s.e2e_ms.p50, s.e2e_ms.p90);
  EXPECT_LE(s.e2e_ms.p90, s.e2e_ms.p99);
  EXPECT_THAT(s.errors, UnorderedElementsAre(Pair("RESOURCE_EXHAUSTED", 1),
                                             Pair("ABORTED", 1)));
}

TEST(SummarizeTest, NoDurationMeansNoThroughput) {
  const Summary s = Summarize({}, 0.0);
  EXPECT_EQ(s.requests, 0);
  EXPECT_TRUE(std::isnan(s.request_throughput));
  EXPECT_EQ(s.ttft_ms.count, 0);
}

}  // namespace
}  // namespace deltaserve::bench
