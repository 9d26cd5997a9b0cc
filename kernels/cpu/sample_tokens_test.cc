// CpuKernels::SampleTokens, the reference of the sampling rule: its special
// cases, its thresholds and ties, and its distribution against an
// independent double-precision softmax.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "kernels/sampling_rule.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::ColumnSlice;
using ::deltaserve::testing::HostI32;
using ::deltaserve::testing::HostTensor;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Params {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
};

// A uniform number in [0, 1) on the 24-bit grid (as the engine draws them).
float Uniform(std::mt19937_64* rng) {
  return static_cast<float>((*rng)() >> 40) * 0x1p-24f;
}

class SampleTokensTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    kernels_ = std::move(created).value();
  }

  // Samples every row of `logits` ([R, V] view) with per-row parameters
  // and uniforms through the Kernels interface.
  absl::StatusOr<std::vector<int32_t>> Run(const TensorView& logits,
                                           const std::vector<Params>& params,
                                           const std::vector<float>& uniforms) {
    const int64_t rows = logits.dim(0);
    std::vector<float> t, p;
    std::vector<int32_t> k;
    for (int64_t r = 0; r < rows; ++r) {
      t.push_back(params[r].temperature);
      k.push_back(params[r].top_k);
      p.push_back(params[r].top_p);
    }
    HostTensor temperature = HostTensor::FromVector(t);
    HostI32 top_k = HostI32::FromVector(k);
    HostTensor top_p = HostTensor::FromVector(p);
    HostTensor uniform = HostTensor::FromVector(uniforms);
    HostI32 out = HostI32::FromVector(std::vector<int32_t>(rows, -1));
    absl::Status st =
        kernels_->SampleTokens(logits, temperature.view(), top_k.view(),
                               top_p.view(), uniform.view(), out.view(), {});
    if (!st.ok()) return st;
    return out.data;
  }

  // One row, many uniforms: the token chosen for each.
  std::vector<int32_t> Draws(const std::vector<float>& row, const Params& p,
                             const std::vector<float>& uniforms) {
    const int64_t n = static_cast<int64_t>(uniforms.size());
    const int64_t v = static_cast<int64_t>(row.size());
    HostTensor logits({n, v});
    for (int64_t i = 0; i < n; ++i) {
      std::copy(row.begin(), row.end(), logits.data.begin() + i * v);
    }
    auto got = Run(logits.view(), std::vector<Params>(n, p), uniforms);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : std::vector<int32_t>(n, -1);
  }

  std::vector<int32_t> Argmax(const TensorView& logits) {
    HostI32 out = HostI32::FromVector(std::vector<int32_t>(logits.dim(0), -1));
    EXPECT_TRUE(kernels_->Argmax(logits, out.view(), {}).ok());
    return out.data;
  }

  std::unique_ptr<CpuKernels> kernels_;
  std::mt19937_64 rng_{20250711};
};

// The distribution the rule should sample from, computed independently in
// double precision: softmax(logits / T) over the top-k survivors (ties at
// the threshold kept), then the smallest leading group of equal logits whose
// probability reaches top_p, renormalised. `margin` receives how far the
// top-p cut is from flipping (the distance of top_p from the cumulative
// probabilities on either side of the cut).
std::vector<double> Expected(const std::vector<float>& row, const Params& p,
                             double* margin) {
  const int v = static_cast<int>(row.size());
  std::vector<int> order(v);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return row[a] > row[b]; });
  int keep = v;
  if (p.top_k > 0 && p.top_k < v) {
    keep = p.top_k;
    while (keep < v && row[order[keep]] == row[order[p.top_k - 1]]) ++keep;
  }
  const double m = row[order[0]];
  std::vector<double> w(v, 0.0);
  double total = 0.0;
  for (int i = 0; i < keep; ++i) {
    w[order[i]] = std::exp((row[order[i]] - m) / p.temperature);
    total += w[order[i]];
  }
  *margin = 1.0;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      const double before = cum;
      cum += w[order[i]] / total;
      const bool group_ends =
          i + 1 == keep || row[order[i + 1]] != row[order[i]];
      if (group_ends) {
        *margin = std::min(*margin, std::abs(cum - p.top_p));
        if (cum >= p.top_p) {
          *margin = std::min(*margin, std::abs(p.top_p - before));
          cut = i + 1;
          break;
        }
      }
    }
    for (int i = cut; i < keep; ++i) w[order[i]] = 0.0;
  }
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  for (double& x : w) x /= sum;
  return w;
}

// Pearson's statistic of `counts` (n draws) against `probs`; a count where
// the probability is 0 makes it infinite.
double ChiSquare(const std::vector<int>& counts,
                 const std::vector<double>& probs, int n, int* dof) {
  double chi = 0.0;
  *dof = -1;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0.0) {
      if (counts[i] != 0) return std::numeric_limits<double>::infinity();
      continue;
    }
    ++*dof;
    const double e = probs[i] * n;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

// A bound a correct sampler stays under except with probability well below
// 1e-6 (the chi-square quantile for up to a few dozen degrees of freedom).
double ChiSquareBound(int dof) { return dof + 8.0 * std::sqrt(2.0 * dof) + 16; }

const std::vector<float> kRow = {0.3f,  -1.2f, 2.0f, 1.1f,  0.0f,
                                 -0.5f, 1.9f,  0.7f, -2.0f, 1.5f};

TEST_F(SampleTokensTest, FrequenciesMatchTheRenormalisedSoftmax) {
  const Params cases[] = {
      {0.8f, 0, 1.0f}, {1.0f, 4, 1.0f}, {1.3f, 0, 0.8f},
      {0.5f, 6, 0.9f}, {2.5f, 9, 0.9f}, {1.0f, 10, 0.98f},
  };
  constexpr int kDraws = 60000;
  for (const Params& p : cases) {
    SCOPED_TRACE(::testing::Message() << "T=" << p.temperature
                                      << " k=" << p.top_k << " p=" << p.top_p);
    double margin = 0.0;
    const std::vector<double> want = Expected(kRow, p, &margin);
    ASSERT_GT(margin, 1e-3) << "case too close to a top-p boundary";
    std::vector<float> uniforms(kDraws);
    for (float& u : uniforms) u = Uniform(&rng_);
    std::vector<int> counts(kRow.size(), 0);
    for (int32_t t : Draws(kRow, p, uniforms)) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, static_cast<int>(kRow.size()));
      ++counts[t];
    }
    int dof = 0;
    const double chi = ChiSquare(counts, want, kDraws, &dof);
    EXPECT_LT(chi, ChiSquareBound(dof));
    // The test has power: the same counts reject a distribution that is
    // only a little off (temperature 15% higher).
    Params hotter = p;
    hotter.temperature *= 1.15f;
    double unused = 0.0;
    EXPECT_GT(ChiSquare(counts, Expected(kRow, hotter, &unused), kDraws, &dof),
              ChiSquareBound(dof));
  }
}

TEST_F(SampleTokensTest, StratifiedUniformsHitEveryTokenInProportion) {
  // Evenly spaced uniforms invert the cumulative weights walked by token id:
  // each survivor gets its share within a draw or two.
  constexpr int kDraws = 1 << 16;
  std::vector<float> uniforms(kDraws);
  for (int i = 0; i < kDraws; ++i) {
    uniforms[i] = (static_cast<float>(i) + 0.5f) / kDraws;
  }
  for (const Params& p : {Params{0.7f, 0, 1.0f}, Params{1.2f, 5, 0.85f}}) {
    double margin = 0.0;
    const std::vector<double> want = Expected(kRow, p, &margin);
    ASSERT_GT(margin, 1e-3);
    const std::vector<int32_t> got = Draws(kRow, p, uniforms);
    std::vector<int> counts(kRow.size(), 0);
    for (int32_t t : got) ++counts[t];
    for (size_t i = 0; i < kRow.size(); ++i) {
      EXPECT_NEAR(counts[i], want[i] * kDraws, 2.0) << "token " << i;
    }
    // Increasing uniforms walk the survivors by increasing id.
    EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
  }
}

TEST_F(SampleTokensTest, TemperatureZeroIsArgmaxWithItsTieRule) {
  const float nan = std::nanf("");
  const std::vector<std::vector<float>> rows = {{1, 5, 5, 2},
                                                {nan, 1, 3, 3},
                                                {nan, nan, nan},
                                                {-kInf, -1, -1},
                                                {0.5f, -0.0f, 0.0f, 0.5f},
                                                {1e-40f, 2e-40f, 0.0f}};
  for (const auto& row : rows) {
    HostTensor logits({1, static_cast<int64_t>(row.size())});
    logits.data = row;
    const int32_t want = Argmax(logits.view())[0];
    for (const Params& p : {Params{0.0f, 0, 1.0f}, Params{0.0f, 1, 0.5f},
                            Params{-0.0f, 3, 0.1f}}) {
      for (float u : {0.0f, 0.5f, 0.99f}) {
        auto got = Run(logits.view(), {p}, {u});
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ((*got)[0], want);
      }
    }
  }
}

TEST_F(SampleTokensTest, TopKOneIsArgmax) {
  const int64_t rows = 64, v = 1000;
  HostTensor logits({rows, v});
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float& x : logits.data) x = normal(rng_);
  const std::vector<int32_t> want = Argmax(logits.view());
  std::vector<Params> params;
  std::vector<float> uniforms;
  for (int64_t r = 0; r < rows; ++r) {
    params.push_back({0.1f + 0.05f * r, 1, r % 2 ? 1.0f : 0.3f});
    uniforms.push_back(Uniform(&rng_));
  }
  auto got = Run(logits.view(), params, uniforms);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

TEST_F(SampleTokensTest, NothingOutsideTopKOrTopPIsEverChosen) {
  // A Qwen3.5-sized vocabulary: the chosen token is among the 50 largest and
  // inside the top-p set computed independently.
  const int64_t v = 248320;
  std::vector<float> row(v);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& x : row) x = normal(rng_);
  for (int i = 0; i < 40; ++i) row[rng_() % v] = 9.0f + 0.05f * i;
  std::vector<float> sorted = row;
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const Params p{0.9f, 50, 0.6f};
  double margin = 0.0;
  const std::vector<double> want = Expected(row, p, &margin);
  ASSERT_GT(margin, 1e-4);
  std::vector<float> uniforms(24);
  for (float& u : uniforms) u = Uniform(&rng_);
  uniforms[0] = 0.0f;
  uniforms[1] = sampling_rule::BitsFloat(sampling_rule::kBelowOneBits);
  for (int32_t t : Draws(row, p, uniforms)) {
    ASSERT_GE(t, 0);
    EXPECT_GE(row[t], sorted[49]);
    EXPECT_GT(want[t], 0.0) << "token " << t << " is outside top-p";
  }
}

TEST_F(SampleTokensTest, TiesAtTheThresholdsSurviveTogether) {
  constexpr int kDraws = 3000;
  std::vector<float> uniforms(kDraws);
  for (int i = 0; i < kDraws; ++i) uniforms[i] = (i + 0.5f) / kDraws;
  // Three tokens tie for the largest logit: top_k = 1 keeps all three.
  {
    std::vector<int> counts(5, 0);
    for (int32_t t : Draws({1, 3, 3, 0, 3}, {1.0f, 1, 1.0f}, uniforms)) {
      ++counts[t];
    }
    EXPECT_EQ(counts[0] + counts[3], 0);
    for (int t : {1, 2, 4}) EXPECT_NEAR(counts[t], kDraws / 3.0, 2.0) << t;
  }
  // top_p = 0.3 is reached by either of two tied tokens: both survive.
  {
    std::vector<int> counts(4, 0);
    for (int32_t t : Draws({0, 5, 5, 4.9f}, {1.0f, 0, 0.3f}, uniforms)) {
      ++counts[t];
    }
    EXPECT_EQ(counts[0] + counts[3], 0);
    EXPECT_NEAR(counts[1], kDraws / 2.0, 2.0);
    EXPECT_NEAR(counts[2], kDraws / 2.0, 2.0);
  }
  // A top-k threshold inside a tie group of lower tokens keeps the group.
  {
    std::vector<int> counts(5, 0);
    for (int32_t t : Draws({2, 1, 1, 1, 0}, {1.0f, 2, 1.0f}, uniforms)) {
      ++counts[t];
    }
    EXPECT_EQ(counts[4], 0);
    EXPECT_GT(counts[3], 0);
  }
}

TEST_F(SampleTokensTest, NanAndInfinitiesAndDegenerateRows) {
  const float nan = std::nanf("");
  std::vector<float> uniforms(500);
  for (float& u : uniforms) u = Uniform(&rng_);
  uniforms[0] = 0.0f;
  uniforms[1] = sampling_rule::BitsFloat(sampling_rule::kBelowOneBits);
  for (int32_t t :
       Draws({-kInf, 0.0f, -kInf, 1.0f, nan}, {5.0f, 0, 1.0f}, uniforms)) {
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  // +inf counts as the largest finite float: nothing else has weight.
  for (int32_t t : Draws({1.0f, kInf, 3.0f}, {100.0f, 0, 1.0f}, uniforms)) {
    EXPECT_EQ(t, 1);
  }
  // Rows with no finite candidate give the argmax.
  EXPECT_EQ(Draws({nan, nan, nan}, {1.0f, 0, 0.5f}, {0.7f})[0], 0);
  EXPECT_EQ(Draws({-kInf, -kInf}, {1.0f, 1, 1.0f}, {0.7f})[0], 0);
  EXPECT_EQ(Draws({nan, -kInf, -kInf}, {1.0f, 0, 1.0f}, {0.7f})[0], 1);
  // One token.
  EXPECT_EQ(Draws({-3.0f}, {1.0f, 5, 0.1f}, {0.9f})[0], 0);
}

TEST_F(SampleTokensTest, ExtremeTemperatures) {
  std::vector<float> uniforms(4000);
  for (int i = 0; i < 4000; ++i) uniforms[i] = (i + 0.5f) / 4000;
  // Tiny: only the tied maxima, each equally.
  std::vector<int> counts(4, 0);
  for (int32_t t :
       Draws({1.0f, 2.0f, 2.0f, 1.9999f}, {1e-30f, 0, 1.0f}, uniforms)) {
    ++counts[t];
  }
  EXPECT_EQ(counts[0] + counts[3], 0);
  EXPECT_NEAR(counts[1], 2000, 2);
  // Huge (clamped to 2^64): uniform over the survivors.
  counts.assign(4, 0);
  for (int32_t t :
       Draws({1.0f, -50.0f, 2.0f, 0.0f}, {1e30f, 0, 1.0f}, uniforms)) {
    ++counts[t];
  }
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(counts[t], 1000, 2) << t;
}

TEST_F(SampleTokensTest, StridedRowsMatchContiguousOnes) {
  const int64_t rows = 6, v = 37, stride = 50;
  HostTensor wide({rows, stride});
  std::normal_distribution<float> normal(0.0f, 1.5f);
  for (float& x : wide.data) x = normal(rng_);
  HostTensor packed({rows, v});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < v; ++j)
      packed[r * v + j] = wide[r * stride + 3 + j];
  }
  std::vector<Params> params = {{1.0f, 0, 1.0f},  {0.5f, 3, 1.0f},
                                {2.0f, 0, 0.5f},  {0.0f, 0, 1.0f},
                                {1.0f, 10, 0.9f}, {0.3f, 40, 0.2f}};
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> uniforms(rows);
    for (float& u : uniforms) u = Uniform(&rng_);
    auto a = Run(ColumnSlice(wide.data.data(), rows, stride, 3, v), params,
                 uniforms);
    auto b = Run(packed.view(), params, uniforms);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);
  }
}

TEST_F(SampleTokensTest, RuleFunctionsAreExact) {
  using sampling_rule::MulCeil;
  using sampling_rule::MulFloor;
  using sampling_rule::Weight;
  const uint64_t big = (uint64_t{1} << 62) + 12345;
  EXPECT_EQ(MulFloor(0.0f, big), 0u);
  EXPECT_EQ(MulFloor(0.5f, 7), 3u);
  EXPECT_EQ(MulFloor(0.75f, big), big / 4 * 3 + (big % 4) * 3 / 4);
  EXPECT_EQ(MulCeil(1.0f, big), big);
  EXPECT_EQ(MulCeil(0.5f, 7), 4u);
  EXPECT_EQ(MulCeil(1e-30f, 5), 1u);
  EXPECT_EQ(Weight(3.0f, 3.0f, 1.0f), sampling_rule::kMaxWeight);
  EXPECT_EQ(Weight(-kInf, 3.0f, 1.0f), 0u);
  EXPECT_EQ(Weight(2.0f, 3.0f, 1.0f), sampling_rule::kMaxWeight / 2);
  EXPECT_EQ(Weight(-34.0f, 3.0f, 1.0f), 2u);  // y = −37: 2^(38 − 37)
  EXPECT_EQ(Weight(-34.0f, 3.0f, 1.0f + 0x1p-20f), 1u);
  EXPECT_EQ(Weight(-35.0f, 3.0f, 1.0f), 1u);  // y = −38
  EXPECT_EQ(Weight(-35.5f, 3.0f, 1.0f), 0u);
  EXPECT_EQ(Weight(-40.0f, 3.0f, 1.0f), 0u);
  // Within about 4e-7 of 2^y elsewhere, and monotone in the logit.
  uint64_t last = 0;
  for (int i = -3800; i <= 0; ++i) {
    const float c = i / 100.0f;
    const uint64_t w = Weight(c, 0.0f, 1.0f);
    EXPECT_GE(w, last) << c;
    last = w;
    const double want = std::ldexp(std::exp2(static_cast<double>(c)), 38);
    EXPECT_NEAR(static_cast<double>(w), want, want * 4e-7 + 1.0) << c;
  }
}

TEST_F(SampleTokensTest, BadArgumentsAreInvalidAndNameTheArgument) {
  HostTensor logits({2, 5}, 1.0f);
  HostTensor t = HostTensor::FromVector({1.0f, 1.0f});
  HostI32 k = HostI32::FromVector({0, 0});
  HostTensor p = HostTensor::FromVector({1.0f, 1.0f});
  HostTensor u = HostTensor::FromVector({0.5f, 0.5f});
  HostI32 out = HostI32::FromVector({-7, -7});
  auto call = [&](const TensorView& l, const TensorView& tv,
                  const TensorView& kv, const TensorView& pv,
                  const TensorView& uv, const TensorView& ov) {
    return kernels_->SampleTokens(l, tv, kv, pv, uv, ov, {});
  };
  auto expect_invalid = [&](const absl::Status& st, const std::string& name) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(name));
    EXPECT_EQ(out.data, std::vector<int32_t>({-7, -7})) << "out was written";
  };
  ASSERT_TRUE(
      call(logits.view(), t.view(), k.view(), p.view(), u.view(), out.view())
          .ok());
  out.data = {-7, -7};
  HostI32 int_logits({2, 5});
  expect_invalid(call(int_logits.view(), t.view(), k.view(), p.view(), u.view(),
                      out.view()),
                 "logits");
  HostTensor flat({10});
  expect_invalid(
      call(flat.view(), t.view(), k.view(), p.view(), u.view(), out.view()),
      "logits");
  HostTensor empty({2, 0});
  expect_invalid(
      call(empty.view(), t.view(), k.view(), p.view(), u.view(), out.view()),
      "logits");
  TensorView too_wide = logits.view();  // never read: rejected first
  too_wide.shape[1] = kMaxSampleVocab + 1;
  too_wide.strides[0] = kMaxSampleVocab + 1;
  expect_invalid(
      call(too_wide, t.view(), k.view(), p.view(), u.view(), out.view()),
      "logits");
  HostTensor three = HostTensor::FromVector({1.0f, 1.0f, 1.0f});
  expect_invalid(call(logits.view(), three.view(), k.view(), p.view(), u.view(),
                      out.view()),
                 "temperature");
  expect_invalid(
      call(logits.view(), t.view(), p.view(), p.view(), u.view(), out.view()),
      "top_k");
  expect_invalid(
      call(logits.view(), t.view(), k.view(), k.view(), u.view(), out.view()),
      "top_p");
  expect_invalid(call(logits.view(), t.view(), k.view(), p.view(), three.view(),
                      out.view()),
                 "uniform");
  expect_invalid(
      call(logits.view(), t.view(), k.view(), p.view(), u.view(), u.view()),
      "out");
  // Values, named with their row.
  const float nan = std::nanf("");
  for (float bad : {-1.0f, nan, kInf}) {
    HostTensor bt = HostTensor::FromVector({1.0f, bad});
    expect_invalid(call(logits.view(), bt.view(), k.view(), p.view(), u.view(),
                        out.view()),
                   "temperature[1]");
  }
  HostI32 bk = HostI32::FromVector({-1, 0});
  expect_invalid(
      call(logits.view(), t.view(), bk.view(), p.view(), u.view(), out.view()),
      "top_k[0]");
  for (float bad : {0.0f, -0.5f, 1.5f, nan}) {
    HostTensor bp = HostTensor::FromVector({bad, 1.0f});
    expect_invalid(call(logits.view(), t.view(), k.view(), bp.view(), u.view(),
                        out.view()),
                   "top_p[0]");
  }
  for (float bad : {1.0f, -0.1f, nan}) {
    HostTensor bu = HostTensor::FromVector({0.5f, bad});
    expect_invalid(call(logits.view(), t.view(), k.view(), p.view(), bu.view(),
                        out.view()),
                   "uniform[1]");
  }
}

TEST_F(SampleTokensTest, NoRowsIsOk) {
  HostTensor logits({0, 5});
  HostTensor none({0});
  HostI32 none_i({0});
  EXPECT_TRUE(kernels_
                  ->SampleTokens(logits.view(), none.view(), none_i.view(),
                                 none.view(), none.view(), none_i.view(), {})
                  .ok());
}

}  // namespace
}  // namespace deltaserve
