#include "clients/bench/workload.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int kVocab = 4096;

WorkloadOptions RandomOptions() {
  WorkloadOptions options;
  options.kind = WorkloadKind::kRandom;
  options.num_requests = 20;
  options.input = {LengthDistribution::Kind::kFixed, 32, 0.0};
  options.output = {LengthDistribution::Kind::kFixed, 8, 0.0};
  options.seed = 42;
  return options;
}

void ExpectSameWorkload(const Workload& a, const Workload& b) {
  ASSERT_EQ(a.conversations.size(), b.conversations.size());
  for (size_t c = 0; c < a.conversations.size(); ++c) {
    EXPECT_EQ(a.conversations[c].arrival_s, b.conversations[c].arrival_s);
    ASSERT_EQ(a.conversations[c].turns.size(), b.conversations[c].turns.size());
    for (size_t t = 0; t < a.conversations[c].turns.size(); ++t) {
      EXPECT_EQ(a.conversations[c].turns[t].user_tokens,
                b.conversations[c].turns[t].user_tokens);
      EXPECT_EQ(a.conversations[c].turns[t].max_new_tokens,
                b.conversations[c].turns[t].max_new_tokens);
    }
  }
}

TEST(ParseTest, NamesRoundTrip) {
  for (const char* name : {"fixed", "uniform", "normal"}) {
    absl::StatusOr<LengthDistribution::Kind> kind = ParseLengthKind(name);
    ASSERT_TRUE(kind.ok()) << kind.status();
    EXPECT_EQ(LengthKindName(*kind), name);
  }
  for (const char* name : {"random", "multiturn"}) {
    absl::StatusOr<WorkloadKind> kind = ParseWorkloadKind(name);
    ASSERT_TRUE(kind.ok()) << kind.status();
    EXPECT_EQ(WorkloadKindName(*kind), name);
  }
  EXPECT_EQ(ParseLengthKind("zipf").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseWorkloadKind("chat").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RandomTest, UniformIntStaysInRangeAndHitsBothEnds) {
  std::mt19937_64 rng(1);
  bool saw_lo = false, saw_hi = false;
  for (int i = 0; i < 2000; ++i) {
    const int64_t x = UniformInt(3, 9, rng);
    ASSERT_GE(x, 3);
    ASSERT_LE(x, 9);
    saw_lo |= x == 3;
    saw_hi |= x == 9;
  }
  EXPECT_TRUE(saw_lo);
  EXPECT_TRUE(saw_hi);
  EXPECT_EQ(UniformInt(5, 5, rng), 5);
}

TEST(RandomTest, UniformUnitIsInHalfOpenUnitInterval) {
  std::mt19937_64 rng(2);
  double sum = 0.0;
  constexpr int kN = 100000;
  for (int i = 0; i < kN; ++i) {
    const double u = UniformUnit(rng);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / kN, 0.5, 0.01);
}

TEST(RandomTest, StandardNormalHasUnitMoments) {
  std::mt19937_64 rng(3);
  constexpr int kN = 100000;
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < kN; ++i) {
    const double z = StandardNormal(rng);
    sum += z;
    sum_sq += z * z;
  }
  EXPECT_NEAR(sum / kN, 0.0, 0.02);
  EXPECT_NEAR(sum_sq / kN, 1.0, 0.02);
}

TEST(LengthTest, FixedUniformAndNormal) {
  std::mt19937_64 rng(4);
  const LengthDistribution fixed = {LengthDistribution::Kind::kFixed, 100, 0.5};
  const LengthDistribution uniform = {LengthDistribution::Kind::kUniform, 100,
                                      0.2};
  const LengthDistribution normal = {LengthDistribution::Kind::kNormal, 100,
                                     0.1};
  int uniform_min = 1000, uniform_max = 0;
  double normal_sum = 0.0;
  constexpr int kN = 20000;
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(SampleLength(fixed, rng), 100);
    const int u = SampleLength(uniform, rng);
    uniform_min = std::min(uniform_min, u);
    uniform_max = std::max(uniform_max, u);
    const int n = SampleLength(normal, rng);
    ASSERT_GE(n, 70);  // cut at ±3σ = ±30
    ASSERT_LE(n, 130);
    normal_sum += n;
  }
  EXPECT_EQ(uniform_min, 80);
  EXPECT_EQ(uniform_max, 120);
  EXPECT_NEAR(normal_sum / kN, 100.0, 0.5);
  // Lengths never drop below 1, however wide the spread.
  const LengthDistribution wide = {LengthDistribution::Kind::kNormal, 2, 5.0};
  for (int i = 0; i < 1000; ++i) ASSERT_GE(SampleLength(wide, rng), 1);
  EXPECT_EQ(DescribeLength(fixed), "100");
  EXPECT_EQ(DescribeLength(uniform), "100 (uniform ±20%)");
}

TEST(WorkloadTest, RandomWorkloadHasOneTurnPerRequestWithValidTokens) {
  absl::StatusOr<Workload> workload = GenerateWorkload(RandomOptions(), kVocab);
  ASSERT_TRUE(workload.ok()) << workload.status();
  ASSERT_EQ(workload->conversations.size(), 20u);
  EXPECT_EQ(workload->num_requests(), 20);
  for (const Conversation& c : workload->conversations) {
    EXPECT_EQ(c.arrival_s, 0.0);  // closed loop
    ASSERT_EQ(c.turns.size(), 1u);
    EXPECT_EQ(c.turns[0].user_tokens.size(), 32u);
    EXPECT_EQ(c.turns[0].max_new_tokens, 8);
    for (int32_t id : c.turns[0].user_tokens) {
      ASSERT_GE(id, kMinPromptTokenId);
      ASSERT_LT(id, kVocab);
    }
  }
  EXPECT_EQ(workload->MaxContextTokens(0), 40);
}

TEST(WorkloadTest, SameSeedGivesSameWorkload) {
  WorkloadOptions options = RandomOptions();
  options.input = {LengthDistribution::Kind::kUniform, 64, 0.5};
  options.output = {LengthDistribution::Kind::kNormal, 16, 0.25};
  options.request_rate = 3.0;
  absl::StatusOr<Workload> a = GenerateWorkload(options, kVocab);
  absl::StatusOr<Workload> b = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(a.ok() && b.ok());
  ExpectSameWorkload(*a, *b);

  options.seed = 43;
  absl::StatusOr<Workload> other = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->conversations[0].turns[0].user_tokens,
            a->conversations[0].turns[0].user_tokens);
  EXPECT_NE(other->conversations[1].arrival_s, a->conversations[1].arrival_s);
}

TEST(WorkloadTest, RateDoesNotChangePrompts) {
  WorkloadOptions options = RandomOptions();
  absl::StatusOr<Workload> closed = GenerateWorkload(options, kVocab);
  options.request_rate = 10.0;
  absl::StatusOr<Workload> open = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(closed.ok() && open.ok());
  for (size_t c = 0; c < closed->conversations.size(); ++c) {
    EXPECT_EQ(closed->conversations[c].turns[0].user_tokens,
              open->conversations[c].turns[0].user_tokens);
  }
}

TEST(WorkloadTest, PoissonInterArrivalMeanIsOneOverRate) {
  WorkloadOptions options = RandomOptions();
  options.num_requests = 20000;
  options.input.mean = 1;
  options.output.mean = 1;
  options.request_rate = 4.0;
  absl::StatusOr<Workload> workload = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(workload.ok()) << workload.status();
  const std::vector<Conversation>& c = workload->conversations;
  EXPECT_EQ(c[0].arrival_s, 0.0);
  double sum = 0.0, sum_sq = 0.0;
  for (size_t i = 1; i < c.size(); ++i) {
    const double gap = c[i].arrival_s - c[i - 1].arrival_s;
    ASSERT_GE(gap, 0.0);
    sum += gap;
    sum_sq += gap * gap;
  }
  const double n = c.size() - 1;
  const double mean = sum / n;
  const double stddev = std::sqrt(sum_sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.25, 0.25 * 0.03);
  // Exponential gaps: the standard deviation equals the mean.
  EXPECT_NEAR(stddev, 0.25, 0.25 * 0.05);
}

TEST(WorkloadTest, MultiturnSplitsRequestsIntoConversations) {
  WorkloadOptions options = RandomOptions();
  options.kind = WorkloadKind::kMultiturn;
  options.num_requests = 7;
  options.turns = 3;
  absl::StatusOr<Workload> workload = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(workload.ok()) << workload.status();
  ASSERT_EQ(workload->conversations.size(), 3u);
  EXPECT_EQ(workload->conversations[0].turns.size(), 3u);
  EXPECT_EQ(workload->conversations[1].turns.size(), 3u);
  EXPECT_EQ(workload->conversations[2].turns.size(), 1u);
  EXPECT_EQ(workload->num_requests(), 7);
  EXPECT_THAT(workload->FirstRequestIndices(), ElementsAre(0, 3, 6));
  // Three user chunks of 32 and three outputs of 8.
  EXPECT_EQ(workload->MaxContextTokens(0), 120);
  EXPECT_EQ(workload->MaxContextTokens(2), 40);
}

TEST(WorkloadTest, MultiturnHistoryGrowsByOutputAndUserChunk) {
  WorkloadOptions options = RandomOptions();
  options.kind = WorkloadKind::kMultiturn;
  options.num_requests = 3;
  options.turns = 3;
  absl::StatusOr<Workload> workload = GenerateWorkload(options, kVocab);
  ASSERT_TRUE(workload.ok()) << workload.status();
  const std::vector<Turn>& turns = workload->conversations[0].turns;
  ASSERT_EQ(turns.size(), 3u);

  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  size_t expected_size = 0;
  for (size_t t = 0; t < turns.size(); ++t) {
    const std::vector<int32_t> previous = prompt;
    prompt = NextTurnPrompt(previous, generated, turns[t].user_tokens);
    expected_size += generated.size() + turns[t].user_tokens.size();
    ASSERT_EQ(prompt.size(), expected_size);
    // The previous prompt, then what was generated, then the new chunk.
    EXPECT_TRUE(std::equal(previous.begin(), previous.end(), prompt.begin()));
    EXPECT_TRUE(std::equal(generated.begin(), generated.end(),
                           prompt.begin() + previous.size()));
    EXPECT_TRUE(std::equal(turns[t].user_tokens.begin(),
                           turns[t].user_tokens.end(),
                           prompt.end() - turns[t].user_tokens.size()));
    // Stand-in for the server's output.
    generated.assign(turns[t].max_new_tokens, static_cast<int32_t>(100 + t));
  }
  EXPECT_EQ(prompt.size(), 3u * 32 + 2u * 8);
  EXPECT_THAT(NextTurnPrompt({1, 2}, {3}, {4, 5}), ElementsAre(1, 2, 3, 4, 5));
}

TEST(WorkloadTest, RejectsBadOptions) {
  auto code = [](const WorkloadOptions& options, int vocab = kVocab) {
    return GenerateWorkload(options, vocab).status().code();
  };
  WorkloadOptions options = RandomOptions();
  EXPECT_EQ(code(options, 3), absl::StatusCode::kInvalidArgument);
  options.num_requests = 0;
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options = RandomOptions();
  options.turns = 0;
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options = RandomOptions();
  options.input.mean = 0;
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options = RandomOptions();
  options.output = {LengthDistribution::Kind::kUniform, 8, 1.5};
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options = RandomOptions();
  options.input = {LengthDistribution::Kind::kNormal, 8, -0.1};
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options = RandomOptions();
  options.request_rate = -1.0;
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  options.request_rate = std::numeric_limits<double>::infinity();
  EXPECT_EQ(code(options), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ValidateWorkloadOptions(options).message()),
              HasSubstr("request_rate"));
}

}  // namespace
}  // namespace deltaserve::bench
