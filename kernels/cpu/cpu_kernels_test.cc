#include "kernels/cpu/cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "kernels/memory.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::ColumnSlice;
using ::deltaserve::testing::FillUniform;
using ::deltaserve::testing::HostI32;
using ::deltaserve::testing::HostTensor;
using ::deltaserve::testing::MaxAbsDiff;
using ::deltaserve::testing::RelativeError;
using ::testing::HasSubstr;

double SigmoidD(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double SiluD(double x) { return x * SigmoidD(x); }

HostI32 CuSeqlens(const std::vector<int>& lengths) {
  std::vector<int32_t> cu(lengths.size() + 1, 0);
  for (size_t i = 0; i < lengths.size(); ++i) cu[i + 1] = cu[i] + lengths[i];
  return HostI32::FromVector(cu);
}

class CpuKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    kernels_ = std::move(created).value();
  }

  std::unique_ptr<CpuKernels> kernels_;
  std::mt19937 rng_{20240601};
  Stream stream_;
};

TEST_F(CpuKernelsTest, CreateRejectsNegativeThreads) {
  CpuKernels::Options options;
  options.num_threads = -1;
  EXPECT_EQ(CpuKernels::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuKernelsTest, NameAndSynchronize) {
  EXPECT_STREQ(kernels_->name(), "cpu");
  EXPECT_TRUE(kernels_->Synchronize(stream_).ok());
}

// ---------------------------------------------------------------- Gemm

TEST_F(CpuKernelsTest, GemmStridedMatchesNaive) {
  const int m = 7, n = 5, kd = 13;
  HostTensor xbuf({m, 20});
  HostTensor w({n, kd});
  HostTensor obuf({m, 9});
  FillUniform(&xbuf, &rng_);
  FillUniform(&w, &rng_);
  FillUniform(&obuf, &rng_);
  const std::vector<float> before = obuf.data;
  TensorView x = ColumnSlice(xbuf.data.data(), m, 20, 3, kd);
  TensorView out = ColumnSlice(obuf.data.data(), m, 9, 2, n);

  for (bool accumulate : {false, true}) {
    std::vector<float> start = obuf.data;
    ASSERT_TRUE(kernels_->Gemm(x, w.view(), out, accumulate, stream_).ok());
    std::vector<float> got, want;
    for (int r = 0; r < m; ++r) {
      for (int c = 0; c < 9; ++c) {
        if (c < 2 || c >= 2 + n) {
          EXPECT_EQ(obuf[r * 9 + c], before[r * 9 + c]) << "r=" << r;
          continue;
        }
        double acc = accumulate ? start[r * 9 + c] : 0.0;
        for (int i = 0; i < kd; ++i) {
          acc +=
              static_cast<double>(xbuf[r * 20 + 3 + i]) * w[(c - 2) * kd + i];
        }
        got.push_back(obuf[r * 9 + c]);
        want.push_back(static_cast<float>(acc));
      }
    }
    EXPECT_LT(RelativeError(got, want), 1e-6) << "accumulate=" << accumulate;
  }
}

TEST_F(CpuKernelsTest, GemmShapeErrors) {
  HostTensor x({3, 4}), w({5, 6}), out({3, 5});
  absl::Status s =
      kernels_->Gemm(x.view(), w.view(), out.view(), false, stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("w is f32[5, 6]"));

  HostTensor w2({5, 4}), out2({3, 4});
  s = kernels_->Gemm(x.view(), w2.view(), out2.view(), false, stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("out is f32[3, 4]"));

  HostI32 xi({3, 4});
  s = kernels_->Gemm(xi.view(), w2.view(), out.view(), false, stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- Embedding

TEST_F(CpuKernelsTest, EmbeddingGathersRows) {
  HostTensor table({11, 6});
  FillUniform(&table, &rng_);
  HostI32 ids = HostI32::FromVector({3, 0, 10, 7, 3});
  HostTensor out({5, 6});
  ASSERT_TRUE(
      kernels_->Embedding(ids.view(), table.view(), out.view(), stream_).ok());
  for (int t = 0; t < 5; ++t) {
    for (int d = 0; d < 6; ++d) {
      EXPECT_EQ(out[t * 6 + d], table[ids[t] * 6 + d]);
    }
  }
}

TEST_F(CpuKernelsTest, ArgmaxTakesTheLowestIndexOnTiesAndSkipsNan) {
  const float nan = std::nanf("");
  HostTensor logits({4, 4});
  const float rows[16] = {1,   5,   5,   2,   nan, 1,   3,  3,
                          nan, nan, nan, nan, -1,  nan, -1, -2};
  for (int i = 0; i < 16; ++i) logits[i] = rows[i];
  HostI32 out = HostI32::FromVector({-1, -1, -1, -1});
  ASSERT_TRUE(kernels_->Argmax(logits.view(), out.view(), stream_).ok());
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 2);
  EXPECT_EQ(out[2], 0);
  EXPECT_EQ(out[3], 0);
  HostI32 short_out = HostI32::FromVector({0, 0});
  EXPECT_EQ(kernels_->Argmax(logits.view(), short_out.view(), stream_).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuKernelsTest, HostMemoryCopiesWithPitchesAndCannotRecord) {
  DeviceMemory* mem = kernels_->memory();
  EXPECT_EQ(mem->device(), Device::kCpu);
  auto buf = Buffer::Allocate(mem, 256);
  ASSERT_TRUE(buf.ok());
  std::vector<uint8_t> src(64);
  for (int i = 0; i < 64; ++i) src[i] = static_cast<uint8_t>(i);
  ASSERT_TRUE(mem->Zero(buf->data(), 256, stream_).ok());
  ASSERT_TRUE(mem->Copy2D(buf->data(), 8, src.data(), 16, 3, 4, stream_).ok());
  const uint8_t* d = static_cast<const uint8_t*>(buf->data());
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 8; ++c) {
      EXPECT_EQ(d[r * 8 + c], c < 3 ? src[r * 16 + c] : 0) << r << "," << c;
    }
  }
  EXPECT_EQ(Buffer::Allocate(mem, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kernels_->Record(stream_, [] { return absl::OkStatus(); })
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(CpuKernelsTest, EmbeddingRejectsOutOfRangeIds) {
  HostTensor table({11, 6});
  HostTensor out({2, 6}, 7.0f);
  for (int32_t bad : {11, -1}) {
    HostI32 ids = HostI32::FromVector({3, bad});
    absl::Status s =
        kernels_->Embedding(ids.view(), table.view(), out.view(), stream_);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("ids[1] = " + std::to_string(bad)));
  }
  // Nothing was written.
  for (float v : out.data) EXPECT_EQ(v, 7.0f);
  HostTensor wrong({2, 5});
  HostI32 ids = HostI32::FromVector({1, 2});
  EXPECT_EQ(kernels_->Embedding(ids.view(), table.view(), wrong.view(), stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- Norms

std::vector<float> NaiveRmsNorm(const HostTensor& x, const HostTensor& w,
                                double eps, bool zero_centered,
                                const HostTensor* z) {
  const int64_t rows = x.shape[0], dim = x.shape[1];
  std::vector<float> out(x.data.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i)
      ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; ++i) {
      double wi = zero_centered ? 1.0 + w[i] : w[i];
      double v = x[r * dim + i] * inv * wi;
      if (z != nullptr) v *= SiluD((*z)[r * dim + i]);
      out[r * dim + i] = static_cast<float>(v);
    }
  }
  return out;
}

TEST_F(CpuKernelsTest, RmsNormMatchesNaive) {
  HostTensor x({5, 19}), w({19});
  FillUniform(&x, &rng_, -3.0f, 3.0f);
  FillUniform(&w, &rng_);
  for (bool zc : {false, true}) {
    HostTensor out({5, 19});
    ASSERT_TRUE(
        kernels_->RmsNorm(x.view(), w.view(), 1e-6f, zc, out.view(), stream_)
            .ok());
    const std::vector<float> want = NaiveRmsNorm(x, w, 1e-6, zc, nullptr);
    EXPECT_LT(RelativeError(out.data, want), 1e-6) << "zero_centered=" << zc;
    // In place.
    HostTensor y = x;
    ASSERT_TRUE(
        kernels_->RmsNorm(y.view(), w.view(), 1e-6f, zc, y.view(), stream_)
            .ok());
    EXPECT_EQ(y.data, out.data);
  }
}

TEST_F(CpuKernelsTest, RmsNormGatedMatchesNaive) {
  HostTensor x({4, 23}), z({4, 23}), w({23});
  FillUniform(&x, &rng_, -2.0f, 2.0f);
  FillUniform(&z, &rng_, -4.0f, 4.0f);
  FillUniform(&w, &rng_);
  HostTensor out({4, 23});
  ASSERT_TRUE(kernels_
                  ->RmsNormGated(x.view(), z.view(), w.view(), 1e-5f,
                                 out.view(), stream_)
                  .ok());
  EXPECT_LT(RelativeError(out.data, NaiveRmsNorm(x, w, 1e-5, false, &z)), 1e-6);
  ASSERT_TRUE(
      kernels_
          ->RmsNormGated(x.view(), z.view(), w.view(), 1e-5f, x.view(), stream_)
          .ok());
  EXPECT_EQ(x.data, out.data);
}

TEST_F(CpuKernelsTest, NormShapeErrors) {
  HostTensor x({4, 8}), w({7}), out({4, 8}), z({4, 9});
  absl::Status s =
      kernels_->RmsNorm(x.view(), w.view(), 1e-6f, false, out.view(), stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("weight is f32[7]"));
  HostTensor w8({8});
  s = kernels_->RmsNormGated(x.view(), z.view(), w8.view(), 1e-6f, out.view(),
                             stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("z is f32[4, 9]"));
}

// ---------------------------------------------------------------- Rope

TEST_F(CpuKernelsTest, RopeMatchesNaive) {
  const int t_count = 4, heads = 3, head_dim = 10, rot_dim = 6;
  const double theta = 10000.0;
  HostTensor x({t_count, heads, head_dim});
  FillUniform(&x, &rng_);
  const HostTensor orig = x;
  HostI32 pos = HostI32::FromVector({0, 1, 517, 100000});
  ASSERT_TRUE(
      kernels_->Rope(x.view(), pos.view(), rot_dim, theta, stream_).ok());
  std::vector<float> want = orig.data;
  const int half = rot_dim / 2;
  for (int t = 0; t < t_count; ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* p = orig.data.data() + (t * heads + h) * head_dim;
      float* o = want.data() + (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double ang = pos[t] * std::pow(theta, -2.0 * i / rot_dim);
        o[i] = static_cast<float>(p[i] * std::cos(ang) -
                                  p[i + half] * std::sin(ang));
        o[i + half] = static_cast<float>(p[i + half] * std::cos(ang) +
                                         p[i] * std::sin(ang));
      }
    }
  }
  EXPECT_LT(MaxAbsDiff(x.data, want), 1e-6);
  // Dimensions past rot_dim are untouched.
  for (int r = 0; r < t_count * heads; ++r) {
    for (int d = rot_dim; d < head_dim; ++d) {
      EXPECT_EQ(x[r * head_dim + d], orig[r * head_dim + d]);
    }
  }
}

TEST_F(CpuKernelsTest, RopeErrors) {
  HostTensor x({2, 2, 8});
  HostI32 pos = HostI32::FromVector({0, 1});
  EXPECT_EQ(kernels_->Rope(x.view(), pos.view(), 5, 1e4f, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kernels_->Rope(x.view(), pos.view(), 10, 1e4f, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  HostI32 pos3 = HostI32::FromVector({0, 1, 2});
  absl::Status s = kernels_->Rope(x.view(), pos3.view(), 8, 1e4f, stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("positions is i32[3]"));
}

// ---------------------------------------------------------------- Elementwise

TEST_F(CpuKernelsTest, ElementwiseOpsMatchNaiveAndAlias) {
  HostTensor a({3, 17}), b({3, 17});
  FillUniform(&a, &rng_, -6.0f, 6.0f);
  FillUniform(&b, &rng_, -6.0f, 6.0f);
  std::vector<float> add(a.data.size()), swiglu(a.data.size()),
      sgate(a.data.size());
  for (size_t i = 0; i < a.data.size(); ++i) {
    add[i] = static_cast<float>(double(a.data[i]) + b.data[i]);
    swiglu[i] = static_cast<float>(SiluD(a.data[i]) * b.data[i]);
    sgate[i] = static_cast<float>(a.data[i] * SigmoidD(b.data[i]));
  }
  HostTensor out({3, 17});
  ASSERT_TRUE(kernels_->Add(a.view(), b.view(), out.view(), stream_).ok());
  EXPECT_LT(RelativeError(out.data, add), 1e-6);
  ASSERT_TRUE(kernels_->SwiGlu(a.view(), b.view(), out.view(), stream_).ok());
  EXPECT_LT(RelativeError(out.data, swiglu), 1e-6);
  ASSERT_TRUE(
      kernels_->SigmoidGate(a.view(), b.view(), out.view(), stream_).ok());
  EXPECT_LT(RelativeError(out.data, sgate), 1e-6);

  HostTensor a2 = a, b2 = b;
  ASSERT_TRUE(kernels_->Add(a2.view(), b2.view(), b2.view(), stream_).ok());
  EXPECT_LT(RelativeError(b2.data, add), 1e-6);
  ASSERT_TRUE(kernels_->SwiGlu(a2.view(), b.view(), a2.view(), stream_).ok());
  EXPECT_LT(RelativeError(a2.data, swiglu), 1e-6);

  HostTensor wrong({3, 16});
  absl::Status s = kernels_->Add(a.view(), wrong.view(), out.view(), stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("b is f32[3, 16]"));
  EXPECT_EQ(
      kernels_->SigmoidGate(a.view(), b.view(), wrong.view(), stream_).code(),
      absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- GdnGates

TEST_F(CpuKernelsTest, GdnGatesMatchNaive) {
  const int t_count = 6, heads = 5;
  HostTensor a({t_count, heads}), b({t_count, heads}), a_log({heads}),
      dt_bias({heads});
  FillUniform(&a, &rng_, -8.0f, 8.0f);
  FillUniform(&b, &rng_, -8.0f, 8.0f);
  FillUniform(&a_log, &rng_, -2.0f, 2.0f);
  FillUniform(&dt_bias, &rng_, -1.0f, 1.0f);
  // Around softplus's threshold and far on both sides.
  a[0] = 25.0f;
  a[1] = 19.9f;
  a[2] = -40.0f;
  a[3] = 20.5f;
  a[4] = 100.0f;  // exp would overflow without the threshold
  HostTensor g({t_count, heads}), beta({t_count, heads});
  ASSERT_TRUE(kernels_
                  ->GdnGates(a.view(), b.view(), a_log.view(), dt_bias.view(),
                             g.view(), beta.view(), stream_)
                  .ok());
  std::vector<float> want_g(g.data.size()), want_beta(g.data.size());
  for (int t = 0; t < t_count; ++t) {
    for (int h = 0; h < heads; ++h) {
      const double x = double(a[t * heads + h]) + dt_bias[h];
      const double sp = x > 20.0 ? x : std::log1p(std::exp(x));
      want_g[t * heads + h] =
          static_cast<float>(-std::exp(double(a_log[h])) * sp);
      want_beta[t * heads + h] = static_cast<float>(SigmoidD(b[t * heads + h]));
    }
  }
  EXPECT_LT(RelativeError(g.data, want_g), 1e-6);
  EXPECT_LT(RelativeError(beta.data, want_beta), 1e-6);
  for (float v : g.data) EXPECT_LE(v, 0.0f);

  HostTensor bad({heads + 1});
  EXPECT_EQ(kernels_
                ->GdnGates(a.view(), b.view(), bad.view(), dt_bias.view(),
                           g.view(), beta.view(), stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- Conv

// Naive causal conv of one channel history: inputs = state (W − 1) ++ x.
void NaiveConv(const std::vector<double>& history, const float* w, int width,
               int len, bool silu, std::vector<double>* out) {
  out->resize(len);
  for (int t = 0; t < len; ++t) {
    double acc = 0;
    for (int j = 0; j < width; ++j) acc += w[j] * history[t + j];
    (*out)[t] = silu ? SiluD(acc) : acc;
  }
}

struct ConvCase {
  int channels = 5;
  int width = 4;
  int pool = 6;
  std::vector<int> lengths;
  std::vector<int32_t> slots;
};

// Runs CausalConv1d on x (a column slice of a wider buffer) and compares out
// and the state pool to a naive computation.
void CheckConv(CpuKernels* kernels, std::mt19937* rng, const ConvCase& c,
               bool silu, bool in_place) {
  const int t_count = std::accumulate(c.lengths.begin(), c.lengths.end(), 0);
  const int row = c.channels + 7;
  HostTensor xbuf({t_count, row}), w({c.channels, c.width}),
      state({c.pool, c.channels, c.width - 1});
  FillUniform(&xbuf, rng);
  FillUniform(&w, rng);
  FillUniform(&state, rng);
  const HostTensor x0 = xbuf, state0 = state;
  HostI32 cu = CuSeqlens(c.lengths);
  HostI32 slots = HostI32::FromVector(c.slots);
  TensorView x = ColumnSlice(xbuf.data.data(), t_count, row, 4, c.channels);
  HostTensor out({t_count, c.channels});
  TensorView out_view = in_place ? x : out.view();
  absl::Status s =
      kernels->CausalConv1d(x, w.view(), cu.view(), state.view(), slots.view(),
                            silu, out_view, Stream());
  ASSERT_TRUE(s.ok()) << s;

  std::vector<float> got, want;
  std::vector<float> want_state = state0.data;
  const int hist = c.width - 1;
  for (size_t b = 0; b < c.lengths.size(); ++b) {
    const int start = cu[b], len = c.lengths[b], slot = c.slots[b];
    for (int ch = 0; ch < c.channels; ++ch) {
      std::vector<double> history;
      for (int i = 0; i < hist; ++i) {
        history.push_back(state0[(slot * c.channels + ch) * hist + i]);
      }
      for (int t = 0; t < len; ++t) {
        history.push_back(x0[(start + t) * row + 4 + ch]);
      }
      std::vector<double> o;
      NaiveConv(history, &w[ch * c.width], c.width, len, silu, &o);
      for (int t = 0; t < len; ++t) {
        want.push_back(static_cast<float>(o[t]));
        got.push_back(in_place ? xbuf[(start + t) * row + 4 + ch]
                               : out[(start + t) * c.channels + ch]);
      }
      for (int i = 0; i < hist; ++i) {
        want_state[(slot * c.channels + ch) * hist + i] =
            static_cast<float>(history[len + i]);
      }
    }
  }
  EXPECT_LT(RelativeError(got, want), 1e-6);
  EXPECT_EQ(state.data, want_state);
  // Columns outside the slice are untouched.
  for (int t = 0; t < t_count; ++t) {
    for (int col = 0; col < row; ++col) {
      if (col >= 4 && col < 4 + c.channels) continue;
      EXPECT_EQ(xbuf[t * row + col], x0[t * row + col]);
    }
  }
}

TEST_F(CpuKernelsTest, CausalConv1dMatchesNaive) {
  ConvCase c;
  c.lengths = {1, 2, 7, 0, 3};
  c.slots = {4, 0, 2, 1, 3};
  for (bool silu : {false, true}) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "silu=" << silu << " in_place=" << in_place);
      CheckConv(kernels_.get(), &rng_, c, silu, in_place);
    }
  }
  ConvCase wide;
  wide.channels = 33;
  wide.width = 2;
  wide.pool = 2;
  wide.lengths = {40, 9};
  wide.slots = {1, 0};
  CheckConv(kernels_.get(), &rng_, wide, true, false);
  ConvCase single_tap;
  single_tap.width = 1;
  single_tap.pool = 1;
  single_tap.lengths = {3};
  single_tap.slots = {0};
  CheckConv(kernels_.get(), &rng_, single_tap, true, false);
}

TEST_F(CpuKernelsTest, CausalConv1dInPiecesEqualsOneCall) {
  const int channels = 6, width = 4, total = 13;
  HostTensor x({total, channels}), w({channels, width}),
      state({2, channels, width - 1});
  FillUniform(&x, &rng_);
  FillUniform(&w, &rng_);
  FillUniform(&state, &rng_);
  HostTensor state_split = state;
  HostI32 slots = HostI32::FromVector({1});

  HostTensor out_one({total, channels});
  HostI32 cu_one = CuSeqlens({total});
  ASSERT_TRUE(kernels_
                  ->CausalConv1d(x.view(), w.view(), cu_one.view(),
                                 state.view(), slots.view(), true,
                                 out_one.view(), stream_)
                  .ok());

  HostTensor out_split({total, channels});
  int start = 0;
  for (int len : {2, 1, 6, 4}) {
    TensorView xs = x.view();
    xs.data = x.data.data() + start * channels;
    xs.shape[0] = len;
    TensorView os = out_split.view();
    os.data = out_split.data.data() + start * channels;
    os.shape[0] = len;
    HostI32 cu = CuSeqlens({len});
    ASSERT_TRUE(kernels_
                    ->CausalConv1d(xs, w.view(), cu.view(), state_split.view(),
                                   slots.view(), true, os, stream_)
                    .ok());
    start += len;
  }
  EXPECT_EQ(out_split.data, out_one.data);
  EXPECT_EQ(state_split.data, state.data);
}

TEST_F(CpuKernelsTest, CausalConv1dUpdateEqualsLengthOneSequences) {
  const int batch = 3, channels = 7, width = 4;
  HostTensor x({batch, channels}), w({channels, width}),
      state({5, channels, width - 1});
  FillUniform(&x, &rng_);
  FillUniform(&w, &rng_);
  FillUniform(&state, &rng_);
  HostTensor state2 = state;
  HostI32 slots = HostI32::FromVector({3, 0, 4});
  HostTensor out_prefill({batch, channels});
  HostI32 cu = CuSeqlens({1, 1, 1});
  ASSERT_TRUE(kernels_
                  ->CausalConv1d(x.view(), w.view(), cu.view(), state.view(),
                                 slots.view(), true, out_prefill.view(),
                                 stream_)
                  .ok());
  // In place, twice in a row: the second step sees the first's input.
  HostTensor x2 = x;
  ASSERT_TRUE(kernels_
                  ->CausalConv1dUpdate(x2.view(), w.view(), state2.view(),
                                       slots.view(), true, x2.view(), stream_)
                  .ok());
  EXPECT_EQ(x2.data, out_prefill.data);
  EXPECT_EQ(state2.data, state.data);

  HostTensor x3({batch, channels});
  FillUniform(&x3, &rng_);
  HostTensor out_update({batch, channels});
  ASSERT_TRUE(kernels_
                  ->CausalConv1dUpdate(x3.view(), w.view(), state2.view(),
                                       slots.view(), false, out_update.view(),
                                       stream_)
                  .ok());
  ASSERT_TRUE(kernels_
                  ->CausalConv1d(x3.view(), w.view(), cu.view(), state.view(),
                                 slots.view(), false, out_prefill.view(),
                                 stream_)
                  .ok());
  EXPECT_EQ(out_update.data, out_prefill.data);
  EXPECT_EQ(state2.data, state.data);
}

TEST_F(CpuKernelsTest, CausalConv1dErrors) {
  HostTensor x({5, 4}), w({4, 3}), state({2, 4, 2}), out({5, 4});
  HostI32 cu = CuSeqlens({2, 3});
  HostI32 slots = HostI32::FromVector({0, 1});
  ASSERT_TRUE(kernels_
                  ->CausalConv1d(x.view(), w.view(), cu.view(), state.view(),
                                 slots.view(), true, out.view(), stream_)
                  .ok());

  HostTensor bad_state({2, 4, 3});
  absl::Status s =
      kernels_->CausalConv1d(x.view(), w.view(), cu.view(), bad_state.view(),
                             slots.view(), true, out.view(), stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("conv_state is f32[2, 4, 3]"));

  HostI32 bad_slots = HostI32::FromVector({0, 2});
  s = kernels_->CausalConv1d(x.view(), w.view(), cu.view(), state.view(),
                             bad_slots.view(), true, out.view(), stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("slots[1] = 2"));

  HostI32 bad_cu = CuSeqlens({2, 2});
  s = kernels_->CausalConv1d(x.view(), w.view(), bad_cu.view(), state.view(),
                             slots.view(), true, out.view(), stream_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("cu_seqlens"));

  HostTensor bad_w({5, 3});
  EXPECT_EQ(kernels_
                ->CausalConv1dUpdate(out.view(), bad_w.view(), state.view(),
                                     slots.view(), true, out.view(), stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- GDR

struct GdrCase {
  int hk = 2;
  int hv = 4;
  int dk = 24;
  int dv = 20;
  std::vector<int> lengths;
  bool has_g = true;
  float g_lo = -0.5f;
  float g_hi = 0.0f;
  bool l2norm = true;
};

struct GdrData {
  HostTensor q, k, v, g, beta, state;
  HostI32 cu, slots;
  int t_count = 0;
  float scale = 1.0f;

  TensorView g_view() { return g.data.empty() ? TensorView() : g.view(); }
};

GdrData MakeGdr(const GdrCase& c, std::mt19937* rng) {
  GdrData d;
  d.t_count = std::accumulate(c.lengths.begin(), c.lengths.end(), 0);
  const int batch = static_cast<int>(c.lengths.size());
  d.q = HostTensor({d.t_count, c.hk, c.dk});
  d.k = HostTensor({d.t_count, c.hk, c.dk});
  d.v = HostTensor({d.t_count, c.hv, c.dv});
  d.beta = HostTensor({d.t_count, c.hv});
  d.state = HostTensor({batch + 2, c.hv, c.dk, c.dv});
  FillUniform(&d.q, rng);
  FillUniform(&d.k, rng);
  FillUniform(&d.v, rng);
  FillUniform(&d.beta, rng, 0.05f, 1.0f);
  FillUniform(&d.state, rng, -0.5f, 0.5f);
  if (!c.l2norm) {
    // Keep |k| <= 1 so the un-normalised recurrence stays contractive.
    const float s = 1.0f / std::sqrt(static_cast<float>(c.dk));
    for (float& x : d.k.data) x *= s;
  }
  if (c.has_g) {
    d.g = HostTensor({d.t_count, c.hv});
    FillUniform(&d.g, rng, c.g_lo, c.g_hi);
  }
  d.cu = CuSeqlens(c.lengths);
  std::vector<int32_t> slots(batch + 2);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), *rng);
  slots.resize(batch);
  d.slots = HostI32::FromVector(slots);
  d.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  return d;
}

// Independent reference in double on M = Sᵀ ([V, K]):
//   M_t = a_t M_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = M_t q_t.
void ReferenceGdr(const GdrCase& c, const GdrData& d, std::vector<float>* out,
                  std::vector<float>* state) {
  *state = d.state.data;
  out->assign(static_cast<size_t>(d.t_count) * c.hv * c.dv, 0.0f);
  const int kd = c.dk, vd = c.dv;
  for (size_t b = 0; b < c.lengths.size(); ++b) {
    const int slot = d.slots[b];
    for (int h = 0; h < c.hv; ++h) {
      const int kh = h / (c.hv / c.hk);
      float* s = state->data() + ((size_t)slot * c.hv + h) * kd * vd;
      std::vector<double> m(vd * kd);
      for (int i = 0; i < kd; ++i) {
        for (int j = 0; j < vd; ++j) m[j * kd + i] = s[i * vd + j];
      }
      for (int t = d.cu[b]; t < d.cu[b + 1]; ++t) {
        std::vector<double> q(kd), k(kd);
        for (int i = 0; i < kd; ++i) {
          q[i] = d.q[(t * c.hk + kh) * kd + i];
          k[i] = d.k[(t * c.hk + kh) * kd + i];
        }
        if (c.l2norm) {
          double qq = 0, kk = 0;
          for (int i = 0; i < kd; ++i) {
            qq += q[i] * q[i];
            kk += k[i] * k[i];
          }
          for (int i = 0; i < kd; ++i) {
            q[i] /= std::sqrt(qq + 1e-6);
            k[i] /= std::sqrt(kk + 1e-6);
          }
        }
        for (double& x : q) x *= d.scale;
        const double a = c.has_g ? std::exp(double(d.g[t * c.hv + h])) : 1.0;
        const double beta = d.beta[t * c.hv + h];
        for (int j = 0; j < vd; ++j) {
          double mk = 0;
          for (int i = 0; i < kd; ++i) mk += m[j * kd + i] * k[i];
          const double vj = d.v[(t * c.hv + h) * vd + j];
          for (int i = 0; i < kd; ++i) {
            m[j * kd + i] =
                a * (m[j * kd + i] - beta * mk * k[i]) + beta * vj * k[i];
          }
          double o = 0;
          for (int i = 0; i < kd; ++i) o += m[j * kd + i] * q[i];
          (*out)[(t * c.hv + h) * vd + j] = static_cast<float>(o);
        }
      }
      for (int i = 0; i < kd; ++i) {
        for (int j = 0; j < vd; ++j)
          s[i * vd + j] = static_cast<float>(m[j * kd + i]);
      }
    }
  }
}

enum class GdrForm { kRecurrent, kChunked };

absl::Status RunGdr(CpuKernels* kernels, GdrForm form, GdrData* d, bool l2norm,
                    HostTensor* out) {
  *out = HostTensor({d->t_count, d->v.shape[1], d->v.shape[2]});
  if (form == GdrForm::kRecurrent) {
    return kernels->GatedDeltaRuleRecurrent(
        d->q.view(), d->k.view(), d->v.view(), d->g_view(), d->beta.view(),
        d->cu.view(), d->state.view(), d->slots.view(), d->scale, l2norm,
        out->view(), Stream());
  }
  return kernels->GatedDeltaRuleChunked(
      d->q.view(), d->k.view(), d->v.view(), d->g_view(), d->beta.view(),
      d->cu.view(), d->state.view(), d->slots.view(), d->scale, l2norm,
      out->view(), Stream());
}

TEST_F(CpuKernelsTest, GdrRecurrentMatchesReference) {
  for (bool has_g : {true, false}) {
    for (bool l2norm : {true, false}) {
      GdrCase c;
      c.lengths = {1, 9, 0, 14};
      c.has_g = has_g;
      c.l2norm = l2norm;
      GdrData d = MakeGdr(c, &rng_);
      std::vector<float> want_out, want_state;
      ReferenceGdr(c, d, &want_out, &want_state);
      HostTensor out;
      ASSERT_TRUE(
          RunGdr(kernels_.get(), GdrForm::kRecurrent, &d, l2norm, &out).ok());
      EXPECT_LT(RelativeError(out.data, want_out), 1e-5)
          << "has_g=" << has_g << " l2norm=" << l2norm;
      EXPECT_LT(RelativeError(d.state.data, want_state), 1e-5)
          << "has_g=" << has_g << " l2norm=" << l2norm;
    }
  }
}

struct GdrAgreementCase {
  const char* name;
  GdrCase c;
};

TEST_F(CpuKernelsTest, GdrChunkedMatchesRecurrent) {
  std::vector<GdrAgreementCase> cases;
  GdrCase base;
  base.lengths = {1, 63, 64, 65, 200, 0, 130};
  cases.push_back({"gqa_decay", base});
  GdrCase no_g = base;
  no_g.has_g = false;
  cases.push_back({"no_decay", no_g});
  GdrCase no_norm = base;
  no_norm.l2norm = false;
  cases.push_back({"no_l2norm", no_norm});
  GdrCase no_g_no_norm = no_norm;
  no_g_no_norm.has_g = false;
  cases.push_back({"no_decay_no_l2norm", no_g_no_norm});
  GdrCase strong = base;
  strong.g_lo = -5.0f;
  strong.g_hi = -5.0f;
  cases.push_back({"strong_decay", strong});
  GdrCase extreme = base;  // exp(−G) would overflow even in double
  extreme.g_lo = -20.0f;
  extreme.g_hi = -20.0f;
  cases.push_back({"extreme_decay", extreme});
  GdrCase mixed = base;
  mixed.g_lo = -12.0f;
  mixed.g_hi = 0.0f;
  cases.push_back({"mixed_decay", mixed});
  GdrCase mha;
  mha.hk = 3;
  mha.hv = 3;
  mha.dk = 16;
  mha.dv = 16;
  mha.lengths = {128, 77};
  cases.push_back({"mha_square", mha});

  for (const GdrAgreementCase& tc : cases) {
    SCOPED_TRACE(tc.name);
    GdrData d_rec = MakeGdr(tc.c, &rng_);
    GdrData d_chunk = d_rec;
    HostTensor out_rec, out_chunk;
    ASSERT_TRUE(RunGdr(kernels_.get(), GdrForm::kRecurrent, &d_rec, tc.c.l2norm,
                       &out_rec)
                    .ok());
    absl::Status s = RunGdr(kernels_.get(), GdrForm::kChunked, &d_chunk,
                            tc.c.l2norm, &out_chunk);
    ASSERT_TRUE(s.ok()) << s;
    const double out_err = RelativeError(out_chunk.data, out_rec.data);
    const double state_err =
        RelativeError(d_chunk.state.data, d_rec.state.data);
    EXPECT_LT(out_err, 1e-5);
    EXPECT_LT(state_err, 1e-5);
    for (float x : out_chunk.data) ASSERT_TRUE(std::isfinite(x));
  }
}

TEST_F(CpuKernelsTest, GdrSplitSequenceEqualsOneCall) {
  GdrCase c;
  c.lengths = {137};
  for (GdrForm form : {GdrForm::kRecurrent, GdrForm::kChunked}) {
    SCOPED_TRACE(form == GdrForm::kChunked ? "chunked" : "recurrent");
    GdrData whole = MakeGdr(c, &rng_);
    GdrData split = whole;
    HostTensor out_whole;
    ASSERT_TRUE(RunGdr(kernels_.get(), form, &whole, true, &out_whole).ok());

    const int hk = c.hk, hv = c.hv, dk = c.dk, dv = c.dv;
    std::vector<float> out_split;
    int start = 0;
    for (int len : {100, 37}) {
      GdrData part = split;
      part.t_count = len;
      part.q = HostTensor({len, hk, dk});
      part.k = HostTensor({len, hk, dk});
      part.v = HostTensor({len, hv, dv});
      part.g = HostTensor({len, hv});
      part.beta = HostTensor({len, hv});
      std::copy_n(&split.q[start * hk * dk], len * hk * dk,
                  part.q.data.begin());
      std::copy_n(&split.k[start * hk * dk], len * hk * dk,
                  part.k.data.begin());
      std::copy_n(&split.v[start * hv * dv], len * hv * dv,
                  part.v.data.begin());
      std::copy_n(&split.g[start * hv], len * hv, part.g.data.begin());
      std::copy_n(&split.beta[start * hv], len * hv, part.beta.data.begin());
      part.cu = CuSeqlens({len});
      HostTensor out;
      ASSERT_TRUE(RunGdr(kernels_.get(), form, &part, true, &out).ok());
      split.state = part.state;
      out_split.insert(out_split.end(), out.data.begin(), out.data.end());
      start += len;
    }
    EXPECT_LT(RelativeError(out_split, out_whole.data), 1e-5);
    EXPECT_LT(RelativeError(split.state.data, whole.state.data), 1e-5);
  }
}

TEST_F(CpuKernelsTest, GdrShapeErrors) {
  GdrCase c;
  c.lengths = {3, 4};
  for (GdrForm form : {GdrForm::kRecurrent, GdrForm::kChunked}) {
    {
      GdrData d = MakeGdr(c, &rng_);
      d.v = HostTensor({d.t_count, 3, c.dv});  // 3 value heads, 2 key heads
      HostTensor out;
      absl::Status s = RunGdr(kernels_.get(), form, &d, true, &out);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    }
    {
      GdrData d = MakeGdr(c, &rng_);
      d.beta = HostTensor({d.t_count, c.hv + 1});
      HostTensor out;
      absl::Status s = RunGdr(kernels_.get(), form, &d, true, &out);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(s.message()), HasSubstr("beta is f32[7, 5]"));
    }
    {
      GdrData d = MakeGdr(c, &rng_);
      d.state = HostTensor({4, c.hv, c.dv, c.dk});
      HostTensor out;
      absl::Status s = RunGdr(kernels_.get(), form, &d, true, &out);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(s.message()),
                  HasSubstr("state is f32[4, 4, 20, 24]"));
    }
    {
      GdrData d = MakeGdr(c, &rng_);
      d.slots = HostI32::FromVector({0, 4});
      HostTensor out;
      absl::Status s = RunGdr(kernels_.get(), form, &d, true, &out);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(s.message()), HasSubstr("slots[1] = 4"));
    }
    {
      GdrData d = MakeGdr(c, &rng_);
      d.k = HostTensor({d.t_count, c.hk, c.dk + 1});
      HostTensor out;
      EXPECT_EQ(RunGdr(kernels_.get(), form, &d, true, &out).code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
}

// ---------------------------------------------------------------- Attention

struct AttnSeq {
  int context;  // length including the new tokens
  int n;        // new tokens (queries)
};

struct AttnSetup {
  int hq = 6, hkv = 2, dim = 12, page_size = 4, max_pages = 8;
  std::vector<AttnSeq> seqs;
  // Per sequence: full K/V history [context, hkv, dim].
  std::vector<HostTensor> k_hist, v_hist;
  HostTensor k_pages, v_pages;
  HostI32 page_table;
  int num_pages = 0;
};

// Builds random histories and a random page table, then writes each history
// with two KvAppend calls (the old part, then the new tokens).
void BuildPagedKv(CpuKernels* kernels, std::mt19937* rng, AttnSetup* s) {
  const int batch = static_cast<int>(s->seqs.size());
  int needed = 0;
  for (const AttnSeq& q : s->seqs) {
    needed += (q.context + s->page_size - 1) / s->page_size;
  }
  s->num_pages = needed + 3;
  std::vector<int32_t> pages(s->num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), *rng);
  s->page_table = HostI32({batch, s->max_pages}, -1);
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    const int used = (s->seqs[b].context + s->page_size - 1) / s->page_size;
    for (int p = 0; p < used; ++p) {
      s->page_table[b * s->max_pages + p] = pages[next++];
    }
  }
  s->k_pages = HostTensor({s->num_pages, s->page_size, s->hkv, s->dim});
  s->v_pages = HostTensor({s->num_pages, s->page_size, s->hkv, s->dim});
  FillUniform(&s->k_pages, rng, 100.0f, 101.0f);  // garbage in free slots
  FillUniform(&s->v_pages, rng, 100.0f, 101.0f);
  s->k_hist.clear();
  s->v_hist.clear();
  for (const AttnSeq& q : s->seqs) {
    HostTensor k({q.context, s->hkv, s->dim}), v({q.context, s->hkv, s->dim});
    FillUniform(&k, rng);
    FillUniform(&v, rng);
    s->k_hist.push_back(k);
    s->v_hist.push_back(v);
  }
  const int row = s->hkv * s->dim;
  for (bool new_part : {false, true}) {
    std::vector<int> lengths;
    std::vector<int32_t> start;
    std::vector<float> kcat, vcat;
    for (int b = 0; b < batch; ++b) {
      const int old = s->seqs[b].context - s->seqs[b].n;
      const int from = new_part ? old : 0;
      const int to = new_part ? s->seqs[b].context : old;
      lengths.push_back(to - from);
      start.push_back(from);
      kcat.insert(kcat.end(), s->k_hist[b].data.begin() + from * row,
                  s->k_hist[b].data.begin() + to * row);
      vcat.insert(vcat.end(), s->v_hist[b].data.begin() + from * row,
                  s->v_hist[b].data.begin() + to * row);
    }
    const int total = static_cast<int>(kcat.size()) / row;
    HostTensor k({total, s->hkv, s->dim}), v({total, s->hkv, s->dim});
    k.data = kcat;
    v.data = vcat;
    HostI32 cu = CuSeqlens(lengths);
    HostI32 start_pos = HostI32::FromVector(start);
    absl::Status st = kernels->KvAppend(k.view(), v.view(), s->k_pages.view(),
                                        s->v_pages.view(), s->page_table.view(),
                                        cu.view(), start_pos.view(), Stream());
    ASSERT_TRUE(st.ok()) << st;
  }
}

std::vector<float> NaiveAttention(const AttnSetup& s, const HostTensor& q,
                                  int window, double scale) {
  std::vector<float> out(q.data.size());
  const int group = s.hq / s.hkv;
  int row0 = 0;
  for (size_t b = 0; b < s.seqs.size(); ++b) {
    const AttnSeq& sq = s.seqs[b];
    for (int i = 0; i < sq.n; ++i) {
      const int pos = sq.context - sq.n + i;
      for (int h = 0; h < s.hq; ++h) {
        const int kvh = h / group;
        const float* qi = &q[((row0 + i) * s.hq + h) * s.dim];
        std::vector<double> logits;
        std::vector<int> seen;
        for (int p = 0; p <= pos; ++p) {
          if (window > 0 && p <= pos - window) continue;
          const float* kp = &s.k_hist[b][(p * s.hkv + kvh) * s.dim];
          double dot = 0;
          for (int j = 0; j < s.dim; ++j) dot += double(qi[j]) * kp[j];
          logits.push_back(dot * scale);
          seen.push_back(p);
        }
        const double mx = *std::max_element(logits.begin(), logits.end());
        double denom = 0;
        for (double& l : logits) {
          l = std::exp(l - mx);
          denom += l;
        }
        for (int j = 0; j < s.dim; ++j) {
          double acc = 0;
          for (size_t e = 0; e < seen.size(); ++e) {
            acc += logits[e] * s.v_hist[b][(seen[e] * s.hkv + kvh) * s.dim + j];
          }
          out[((row0 + i) * s.hq + h) * s.dim + j] =
              static_cast<float>(acc / denom);
        }
      }
    }
    row0 += sq.n;
  }
  return out;
}

TEST_F(CpuKernelsTest, KvAppendWritesPages) {
  AttnSetup s;
  s.seqs = {{9, 9}, {15, 5}, {23, 1}};
  BuildPagedKv(kernels_.get(), &rng_, &s);
  for (size_t b = 0; b < s.seqs.size(); ++b) {
    for (int p = 0; p < s.seqs[b].context; ++p) {
      const int page = s.page_table[b * s.max_pages + p / s.page_size];
      const int off = p % s.page_size;
      for (int h = 0; h < s.hkv; ++h) {
        for (int j = 0; j < s.dim; ++j) {
          const int idx = ((page * s.page_size + off) * s.hkv + h) * s.dim + j;
          ASSERT_EQ(s.k_pages[idx], s.k_hist[b][(p * s.hkv + h) * s.dim + j]);
          ASSERT_EQ(s.v_pages[idx], s.v_hist[b][(p * s.hkv + h) * s.dim + j]);
        }
      }
    }
  }
}

// Runs PagedAttention over `s` for each window and compares to the naive
// computation.
void CheckPagedAttention(CpuKernels* kernels, std::mt19937* rng, AttnSetup* s,
                         const std::vector<int>& windows) {
  BuildPagedKv(kernels, rng, s);
  int t_count = 0;
  std::vector<int> lengths;
  std::vector<int32_t> context;
  for (const AttnSeq& q : s->seqs) {
    t_count += q.n;
    lengths.push_back(q.n);
    context.push_back(q.context);
  }
  HostTensor q({t_count, s->hq, s->dim});
  FillUniform(&q, rng, -2.0f, 2.0f);
  HostI32 cu = CuSeqlens(lengths);
  HostI32 ctx = HostI32::FromVector(context);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s->dim));
  for (int window : windows) {
    SCOPED_TRACE(::testing::Message() << "window=" << window);
    HostTensor out({t_count, s->hq, s->dim});
    absl::Status st = kernels->PagedAttention(
        q.view(), s->k_pages.view(), s->v_pages.view(), s->page_table.view(),
        cu.view(), ctx.view(), window, scale, out.view(), Stream());
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_LT(RelativeError(out.data, NaiveAttention(*s, q, window, scale)),
              1e-5);
  }
}

TEST_F(CpuKernelsTest, PagedAttentionMatchesNaive) {
  AttnSetup s;
  // Prefill from empty, chunked prefill continuing a context, decodes, an
  // empty sequence.
  s.seqs = {{9, 9}, {15, 5}, {23, 1}, {6, 0}, {32, 1}, {17, 17}};
  CheckPagedAttention(kernels_.get(), &rng_, &s, {0, 1, 5, 16});
}

TEST_F(CpuKernelsTest, PagedAttentionLongContextMatchesNaive) {
  // Contexts spanning several key blocks of the implementation.
  AttnSetup s;
  s.hq = 4;
  s.hkv = 1;
  s.dim = 20;
  s.page_size = 16;
  s.max_pages = 48;
  s.seqs = {{600, 300}, {530, 1}, {300, 300}, {40, 3}};
  CheckPagedAttention(kernels_.get(), &rng_, &s, {0, 100, 256, 1000});
}

TEST_F(CpuKernelsTest, PagedAttentionWindowSkipsUnmappedPages) {
  // With a window, pages wholly before it may be unmapped (-1).
  AttnSetup s;
  s.seqs = {{30, 2}};
  BuildPagedKv(kernels_.get(), &rng_, &s);
  HostTensor q({2, s.hq, s.dim});
  FillUniform(&q, &rng_);
  const float scale = 0.3f;
  const std::vector<float> want = NaiveAttention(s, q, 6, scale);
  // Positions >= 28 − 6 + 1 = 23 are visible: pages 5..7 only.
  for (int p = 0; p < 5; ++p) s.page_table[p] = -1;
  HostI32 cu = CuSeqlens({2});
  HostI32 ctx = HostI32::FromVector({30});
  HostTensor out({2, s.hq, s.dim});
  ASSERT_TRUE(kernels_
                  ->PagedAttention(q.view(), s.k_pages.view(), s.v_pages.view(),
                                   s.page_table.view(), cu.view(), ctx.view(),
                                   6, scale, out.view(), stream_)
                  .ok());
  EXPECT_LT(RelativeError(out.data, want), 1e-5);
  // Without the window the unmapped pages are read: an error.
  absl::Status st = kernels_->PagedAttention(
      q.view(), s.k_pages.view(), s.v_pages.view(), s.page_table.view(),
      cu.view(), ctx.view(), 0, scale, out.view(), stream_);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("page_table[0, 0] = -1"));
}

TEST_F(CpuKernelsTest, PagedKvErrors) {
  AttnSetup s;
  s.seqs = {{9, 3}, {5, 5}};
  BuildPagedKv(kernels_.get(), &rng_, &s);
  HostTensor q({8, s.hq, s.dim}), out({8, s.hq, s.dim});
  HostI32 cu = CuSeqlens({3, 5});
  HostI32 ctx = HostI32::FromVector({9, 5});
  auto attend = [&](const TensorView& qv, const HostI32& table,
                    const HostI32& contexts, int window) {
    return kernels_->PagedAttention(qv, s.k_pages.view(), s.v_pages.view(),
                                    table.view(), cu.view(), contexts.view(),
                                    window, 1.0f, out.view(), stream_);
  };
  ASSERT_TRUE(attend(q.view(), s.page_table, ctx, 0).ok());

  HostI32 bad_table = s.page_table;
  bad_table[1 * s.max_pages + 1] = s.num_pages;
  absl::Status st = attend(q.view(), bad_table, ctx, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("page_table[1, 1] = " + std::to_string(s.num_pages)));

  HostI32 too_long = HostI32::FromVector({9, s.max_pages * s.page_size + 1});
  EXPECT_EQ(attend(q.view(), s.page_table, too_long, 0).code(),
            absl::StatusCode::kInvalidArgument);
  HostI32 too_short = HostI32::FromVector({9, 4});
  EXPECT_EQ(attend(q.view(), s.page_table, too_short, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attend(q.view(), s.page_table, ctx, -1).code(),
            absl::StatusCode::kInvalidArgument);
  HostTensor q5({8, 5, s.dim});  // 5 query heads over 2 KV heads
  EXPECT_EQ(attend(q5.view(), s.page_table, ctx, 0).code(),
            absl::StatusCode::kInvalidArgument);

  // KvAppend: past the page table, into an unmapped page, bad shapes.
  HostTensor k({3, s.hkv, s.dim}), v({3, s.hkv, s.dim});
  HostI32 cu1 = CuSeqlens({3});
  HostI32 one_table({1, s.max_pages}, -1);
  one_table[0] = 0;
  HostI32 start_end = HostI32::FromVector({s.max_pages * s.page_size - 2});
  auto append = [&](const HostTensor& kk, const HostI32& start) {
    return kernels_->KvAppend(kk.view(), v.view(), s.k_pages.view(),
                              s.v_pages.view(), one_table.view(), cu1.view(),
                              start.view(), stream_);
  };
  EXPECT_EQ(append(k, start_end).code(), absl::StatusCode::kInvalidArgument);
  HostI32 start_unmapped = HostI32::FromVector({2});  // crosses into page 1
  st = append(k, start_unmapped);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("page_table[0, 1] = -1"));
  HostI32 start_ok = HostI32::FromVector({0});
  EXPECT_TRUE(append(k, start_ok).ok());
  HostTensor k_bad({3, s.hkv, s.dim + 1});
  st = append(k_bad, start_ok);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve
