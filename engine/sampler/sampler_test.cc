#include "engine/sampler/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/sampling_rule.h"

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

TEST(SamplerTest, DrawUniformIsTheTop24BitsOfOneOutput) {
  std::mt19937_64 rng(42);  // first output 13930160852258120406
  EXPECT_EQ(DrawUniform(&rng), 12669407 * 0x1p-24f);
  for (int i = 0; i < 10000; ++i) {
    const float u = DrawUniform(&rng);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_EQ(u * 0x1p24f, std::floor(u * 0x1p24f));
  }
}

// The host sampler and Kernels::SampleTokens share one rule: for the same
// generator state Sample picks the token SampleRow picks for the uniform
// DrawUniform draws, and draws exactly one number per sampled token (none
// for greedy ones).
TEST(SamplerTest, SampleIsTheKernelRuleOnTheDrawnUniform) {
  std::mt19937_64 logits_rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const SamplingParams params[] = {
      {0.7f, 0, 1.0f}, {1.0f, 40, 1.0f}, {1.3f, 0, 0.9f}, {0.9f, 50, 0.95f},
      {0.0f, 0, 1.0f}, {0.5f, 1, 0.5f},  {2.0f, 3, 0.2f}};
  for (const int vocab : {1, 7, 1000, 32000}) {
    std::vector<float> logits(vocab);
    for (float& x : logits) x = normal(logits_rng);
    for (const SamplingParams& p : params) {
      std::mt19937_64 a(99), b(99);
      for (int i = 0; i < 40; ++i) {
        const int32_t got = Sample(logits, p, 0, &a).token;
        const int32_t want =
            p.temperature == 0.0f
                ? ArgmaxRow(logits.data(), vocab)
                : SampleRow(logits.data(), vocab, p.temperature, p.top_k,
                            p.top_p, DrawUniform(&b));
        ASSERT_EQ(got, want) << "vocab " << vocab << " draw " << i;
      }
      EXPECT_EQ(a(), b()) << "the generators drifted apart";
    }
  }
}

TEST(SamplerTest, TiesAtTheTopKThresholdAreKept) {
  std::mt19937_64 rng(3);
  const std::vector<float> logits = {1.0f, 4.0f, 0.0f, 4.0f};
  std::map<int, int> counts;
  for (int i = 0; i < 4000; ++i) {
    ++counts[Sample(logits, {1.0f, 1, 1.0f}, 0, &rng).token];
  }
  EXPECT_EQ(counts[0] + counts[2], 0);
  EXPECT_NEAR(counts[1], 2000, 200);
  EXPECT_NEAR(counts[3], 2000, 200);
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
