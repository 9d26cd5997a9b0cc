#include "engine/sampler/sampler.h"

#include <cmath>
#include <map>

#include "gtest/gtest.h"

namespace deltaserve {
namespace {

TEST(SamplerTest, GreedyTakesArgmaxLowestIdOnTies) {
  std::mt19937_64 rng(1);
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(Sample(logits, {}, 0, &rng).token, 1);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  std::mt19937_64 rng(7);
  std::vector<float> logits = {0.1f, 0.3f, 0.2f, 0.25f};
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(Sample(logits, {1.0f, 1, 1.0f}, 0, &rng).token, 1);
    EXPECT_EQ(Sample(logits, {1.0f, 0, 1e-6f}, 0, &rng).token, 1);
  }
}

TEST(SamplerTest, SamplesFollowTheSoftmaxDistribution) {
  std::mt19937_64 rng(42);
  std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  const int n = 20000;
  std::map<int, int> counts;
  for (int i = 0; i < n; ++i)
    ++counts[Sample(logits, {1.0f, 0, 1.0f}, 0, &rng).token];
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  for (int t = 0; t < 3; ++t) {
    EXPECT_NEAR(counts[t] / double{n}, std::exp(double(t)) / z, 0.015) << t;
  }
  // top_k = 2 removes token 0 entirely.
  counts.clear();
  for (int i = 0; i < 2000; ++i)
    ++counts[Sample(logits, {1.0f, 2, 1.0f}, 0, &rng).token];
  EXPECT_EQ(counts[0], 0);
  // top_p = 0.7 keeps {2} (p = 0.665) plus {1} (cumulative 0.91).
  counts.clear();
  for (int i = 0; i < 2000; ++i)
    ++counts[Sample(logits, {1.0f, 0, 0.7f}, 0, &rng).token];
  EXPECT_EQ(counts[0], 0);
  EXPECT_GT(counts[1], 0);
}

TEST(SamplerTest, SameSeedSameTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.7f);
  std::mt19937_64 a(123), b(123), c(124);
  std::vector<int> sa, sb, sc;
  for (int i = 0; i < 30; ++i) {
    sa.push_back(Sample(logits, {0.9f, 0, 1.0f}, 0, &a).token);
    sb.push_back(Sample(logits, {0.9f, 0, 1.0f}, 0, &b).token);
    sc.push_back(Sample(logits, {0.9f, 0, 1.0f}, 0, &c).token);
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(SamplerTest, LogprobsAreLogSoftmax) {
  std::mt19937_64 rng(1);
  std::vector<float> logits = {1.0f, 3.0f, 2.0f};
  SampleResult r = Sample(logits, {}, 2, &rng);
  const double lz = std::log(std::exp(1.0) + std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(r.logprob, 3.0 - lz, 1e-5);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].id, 1);
  EXPECT_EQ(r.top[1].id, 2);
  EXPECT_NEAR(r.top[1].logprob, 2.0 - lz, 1e-5);
}

TEST(SamplerTest, ValidatesParameters) {
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 5, 0.9f}).ok());
  EXPECT_EQ(ValidateSamplingParams({-0.1f, 0, 1.0f}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, -1, 1.0f}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, 0, 0.0f}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, 0, 1.5f}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({NAN, 0, 1.0f}).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve
