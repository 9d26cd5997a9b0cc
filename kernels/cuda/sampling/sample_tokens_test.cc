// LaunchSampleTokens against the CPU reference: the same token for every
// row, over vocabulary sizes from 1 to Qwen3.5's 248320, mixed parameters
// per row, ties, infinities, NaN, subnormals and out-of-range values; also
// inside a recorded CUDA graph. The argument checks run anywhere; the rest
// skips without a GPU.
#include "kernels/cuda/sampling/sample_tokens.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/sampling_rule.h"
#include "kernels/tensor.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::DeviceBuffer;
using ::deltaserve::testing::HasCudaDevice;

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNan = std::nanf("");

TEST(SampleTokensArgsTest, RejectsBadArgumentsBeforeLaunching) {
  float f = 0.0f;
  int32_t i = 0;
  auto launch = [&](int64_t rows, int64_t vocab, int64_t stride,
                    const float* logits) {
    return LaunchSampleTokens(logits, rows, vocab, stride, &f, &i, &f, &f, &i,
                              nullptr);
  };
  EXPECT_EQ(launch(1, 0, 1, &f).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(launch(1, kMaxSampleVocab + 1, kMaxSampleVocab + 1, &f).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(launch(2, 8, 7, &f).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(launch(int64_t{1} << 31, 8, 8, &f).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(launch(1, 8, 8, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(launch(0, 8, 8, nullptr).ok());  // nothing to launch
}

// One row's inputs.
struct Row {
  std::vector<float> logits;
  float temperature;
  int32_t top_k;
  float top_p;
  float uniform;
  std::string kind;
};

class SampleTokensGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no GPU";
    auto cpu = CpuKernels::Create({});
    ASSERT_TRUE(cpu.ok());
    cpu_ = std::move(*cpu);
  }

  float Uniform() { return static_cast<float>(rng_() >> 40) * 0x1p-24f; }

  // Logits of one of several kinds.
  std::vector<float> Logits(int64_t v, int kind, std::string* name) {
    std::vector<float> x(v);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const float scales[] = {0.5f, 2.0f, 8.0f};
    const float scale = scales[rng_() % 3];
    switch (kind) {
      case 0:
        *name = absl::StrCat("normal*", scale);
        for (float& e : x) e = scale * normal(rng_);
        break;
      case 1:  // few distinct values: many ties at every threshold
        *name = "quantized";
        for (float& e : x) e = std::round(normal(rng_) * 2.0f) * 0.5f;
        break;
      case 2:
        *name = "with -inf";
        for (float& e : x) e = rng_() % 10 == 0 ? -kInf : scale * normal(rng_);
        break;
      case 3:
        *name = "with NaN";
        for (float& e : x) e = rng_() % 20 == 0 ? kNan : scale * normal(rng_);
        break;
      case 4:
        *name = "constant";
        std::fill(x.begin(), x.end(), 0.25f);
        break;
      case 5:
        *name = "huge";
        for (float& e : x) e = 3e4f * normal(rng_);
        break;
      case 6: {
        *name = "tiny";
        const float tiny[] = {1e-39f, -1e-39f, 1e-20f, -1e-20f, 0.0f,
                              -0.0f,  2e-19f,  5e-20f, 1e-45f};
        for (float& e : x) e = tiny[rng_() % 9];
        break;
      }
      case 7:
        *name = "peaks";
        for (float& e : x) e = normal(rng_);
        for (int i = 0; i < 1 + static_cast<int>(v / 100); ++i) {
          x[rng_() % v] = 12.0f + static_cast<float>(rng_() % 4);
        }
        break;
      case 8:
        *name = "+inf";
        for (float& e : x) e = normal(rng_);
        x[rng_() % v] = kInf;
        x[rng_() % v] = std::numeric_limits<float>::max();
        break;
      case 9:
        *name = "all -inf";
        std::fill(x.begin(), x.end(), -kInf);
        break;
      default:
        *name = "all NaN";
        std::fill(x.begin(), x.end(), kNan);
        break;
    }
    return x;
  }

  // Rows of vocabulary v with mixed, valid parameters.
  std::vector<Row> ValidRows(int64_t v, int count) {
    const float temperatures[] = {0.0f,   0.3f,  0.7f,   1.0f, 1.5f,
                                  1e-30f, 1e30f, 3e-39f, 0.05f};
    const float top_ps[] = {1.0f, 0.95f, 0.9f,   0.5f,
                            0.1f, 1e-6f, 1e-40f, 0.999f};
    const int64_t top_ks[] = {0, 1, 2, 5, 50, v - 1, v, v + 5, 1000, 20};
    std::vector<Row> rows;
    for (int r = 0; r < count; ++r) {
      Row row;
      row.logits = Logits(v, r % 11, &row.kind);
      row.temperature = temperatures[rng_() % 9];
      row.top_k =
          static_cast<int32_t>(std::max<int64_t>(top_ks[rng_() % 10], 0));
      row.top_p = top_ps[rng_() % 8];
      switch (rng_() % 5) {
        case 0:
          row.uniform = 0.0f;
          break;
        case 1:
          row.uniform = sampling_rule::BitsFloat(sampling_rule::kBelowOneBits);
          break;
        case 2:  // any float in [0, 1), not just the 24-bit grid
          row.uniform = sampling_rule::BitsFloat(
              static_cast<uint32_t>(rng_() % sampling_rule::kOneBits));
          break;
        default:
          row.uniform = Uniform();
      }
      rows.push_back(std::move(row));
    }
    return rows;
  }

  // Runs the rows on the GPU (rows `pad` floats longer than v) and returns
  // the tokens.
  std::vector<int32_t> Gpu(const std::vector<Row>& rows, int64_t v, int64_t pad,
                           cudaStream_t stream = nullptr) {
    const int64_t n = static_cast<int64_t>(rows.size());
    const int64_t stride = v + pad;
    std::vector<float> logits(n * stride, 7.0f);
    std::vector<float> t, p, u;
    std::vector<int32_t> k;
    for (int64_t r = 0; r < n; ++r) {
      std::copy(rows[r].logits.begin(), rows[r].logits.end(),
                logits.begin() + r * stride);
      t.push_back(rows[r].temperature);
      k.push_back(rows[r].top_k);
      p.push_back(rows[r].top_p);
      u.push_back(rows[r].uniform);
    }
    EXPECT_TRUE(d_logits_.Upload(logits).ok());
    EXPECT_TRUE(d_t_.Upload(t).ok());
    EXPECT_TRUE(d_k_.Upload(k).ok());
    EXPECT_TRUE(d_p_.Upload(p).ok());
    EXPECT_TRUE(d_u_.Upload(u).ok());
    EXPECT_TRUE(d_out_.Upload(std::vector<int32_t>(n, -1)).ok());
    const absl::Status launched =
        LaunchSampleTokens(static_cast<const float*>(d_logits_.get()), n, v,
                           stride, static_cast<const float*>(d_t_.get()),
                           static_cast<const int32_t*>(d_k_.get()),
                           static_cast<const float*>(d_p_.get()),
                           static_cast<const float*>(d_u_.get()),
                           static_cast<int32_t*>(d_out_.get()), stream);
    EXPECT_TRUE(launched.ok()) << launched;
    EXPECT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sample").ok());
    std::vector<int32_t> out(n, -1);
    EXPECT_TRUE(d_out_.Download(&out).ok());
    return out;
  }

  // The CPU's tokens: CpuKernels::SampleTokens when every value is in
  // range, else the reference rule row by row (which maps out-of-range
  // values as the GPU does).
  std::vector<int32_t> Cpu(const std::vector<Row>& rows, int64_t v,
                           bool valid) {
    const int64_t n = static_cast<int64_t>(rows.size());
    std::vector<int32_t> out(n, -1);
    if (!valid) {
      for (int64_t r = 0; r < n; ++r) {
        out[r] = SampleRow(rows[r].logits.data(), v, rows[r].temperature,
                           rows[r].top_k, rows[r].top_p, rows[r].uniform);
      }
      return out;
    }
    std::vector<float> logits(n * v), t, p, u;
    std::vector<int32_t> k;
    for (int64_t r = 0; r < n; ++r) {
      std::copy(rows[r].logits.begin(), rows[r].logits.end(),
                logits.begin() + r * v);
      t.push_back(rows[r].temperature);
      k.push_back(rows[r].top_k);
      p.push_back(rows[r].top_p);
      u.push_back(rows[r].uniform);
    }
    const absl::Status st = cpu_->SampleTokens(
        TensorView::F32(logits.data(), {n, v}), TensorView::F32(t.data(), {n}),
        TensorView::I32(k.data(), {n}), TensorView::F32(p.data(), {n}),
        TensorView::F32(u.data(), {n}), TensorView::I32(out.data(), {n}), {});
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }

  void ExpectSame(const std::vector<Row>& rows, int64_t v,
                  const std::vector<int32_t>& gpu,
                  const std::vector<int32_t>& cpu) {
    ASSERT_EQ(gpu.size(), cpu.size());
    int mismatches = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (gpu[r] != cpu[r] && ++mismatches <= 10) {
        ADD_FAILURE() << "V=" << v << " row " << r << " (" << rows[r].kind
                      << ", T=" << rows[r].temperature
                      << ", top_k=" << rows[r].top_k
                      << ", top_p=" << rows[r].top_p
                      << ", u=" << rows[r].uniform << "): GPU " << gpu[r]
                      << ", CPU " << cpu[r];
      }
    }
    EXPECT_EQ(mismatches, 0) << "of " << rows.size() << " rows";
  }

  std::unique_ptr<CpuKernels> cpu_;
  std::mt19937_64 rng_{777};
  DeviceBuffer d_logits_, d_t_, d_k_, d_p_, d_u_, d_out_;
};

TEST_F(SampleTokensGpuTest, SameTokensAsTheCpuForEveryVocabularySize) {
  for (const int64_t v : {1, 7, 63, 65, 1000, 32000, 248320}) {
    const int rows = v >= 32000 ? 44 : 220;
    for (int trial = 0; trial < 3; ++trial) {
      SCOPED_TRACE(::testing::Message() << "V=" << v << " trial " << trial);
      const std::vector<Row> batch = ValidRows(v, rows);
      const int64_t pad = trial == 1 ? 3 : 0;
      ExpectSame(batch, v, Gpu(batch, v, pad), Cpu(batch, v, true));
    }
  }
}

TEST_F(SampleTokensGpuTest, ManyUniformsOnTheSameRows) {
  // The same rows with a fresh uniform each time: exercises every position
  // of the draw, not just a few.
  for (const int64_t v : {65, 1000, 32000}) {
    std::vector<Row> batch = ValidRows(v, 64);
    for (int trial = 0; trial < 20; ++trial) {
      for (Row& row : batch) row.uniform = Uniform();
      ExpectSame(batch, v, Gpu(batch, v, 0), Cpu(batch, v, true));
    }
  }
}

TEST_F(SampleTokensGpuTest, OutOfRangeValuesAreMappedLikeTheReference) {
  const float temperatures[] = {-1.0f, kNan, kInf, -0.0f, 0.8f};
  const int32_t top_ks[] = {-3, 0, 4};
  const float top_ps[] = {0.0f, -0.5f, 1.5f, kNan, 0.7f};
  const float uniforms[] = {1.0f, -0.25f, kNan, kInf, 7.0f, 0.3f};
  for (const int64_t v : {7, 1000}) {
    std::vector<Row> batch = ValidRows(v, 5 * 3 * 5 * 6);
    int i = 0;
    for (float t : temperatures) {
      for (int32_t k : top_ks) {
        for (float p : top_ps) {
          for (float u : uniforms) {
            batch[i].temperature = t;
            batch[i].top_k = k;
            batch[i].top_p = p;
            batch[i].uniform = u;
            ++i;
          }
        }
      }
    }
    ExpectSame(batch, v, Gpu(batch, v, 0), Cpu(batch, v, false));
  }
}

TEST_F(SampleTokensGpuTest, RecordedInACudaGraph) {
  const int64_t v = 32000;
  std::vector<Row> batch = ValidRows(v, 16);
  // Buffers are sized by a direct run first; the graph then reuses them.
  ExpectSame(batch, v, Gpu(batch, v, 0), Cpu(batch, v, true));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
            cudaSuccess);
  const absl::Status launched =
      LaunchSampleTokens(static_cast<const float*>(d_logits_.get()), 16, v, v,
                         static_cast<const float*>(d_t_.get()),
                         static_cast<const int32_t*>(d_k_.get()),
                         static_cast<const float*>(d_p_.get()),
                         static_cast<const float*>(d_u_.get()),
                         static_cast<int32_t*>(d_out_.get()), stream);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(launched.ok()) << launched;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    std::vector<float> u;
    for (Row& row : batch) {
      row.uniform = Uniform();
      u.push_back(row.uniform);
    }
    ASSERT_TRUE(d_u_.Upload(u).ok());
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<int32_t> out(16, -1);
    ASSERT_TRUE(d_out_.Download(&out).ok());
    ExpectSame(batch, v, out, Cpu(batch, v, true));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Prints the kernel's time for Qwen3.5's vocabulary (no assertion).
TEST_F(SampleTokensGpuTest, TimesQwen35Vocabulary) {
  const int64_t v = 248320;
  struct Config {
    const char* name;
    float t;
    int32_t k;
    float p;
  };
  const Config configs[] = {{"T=1", 1.0f, 0, 1.0f},
                            {"T=0.7 top_k=50", 0.7f, 50, 1.0f},
                            {"T=0.7 top_p=0.9", 0.7f, 0, 0.9f},
                            {"T=0.6 top_k=20 top_p=0.95", 0.6f, 20, 0.95f}};
  for (const int rows : {1, 64, 256}) {
    std::vector<float> logits(rows * v);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (float& x : logits) x = normal(rng_);
    ASSERT_TRUE(d_logits_.Upload(logits).ok());
    for (const Config& c : configs) {
      ASSERT_TRUE(d_t_.Upload(std::vector<float>(rows, c.t)).ok());
      ASSERT_TRUE(d_k_.Upload(std::vector<int32_t>(rows, c.k)).ok());
      ASSERT_TRUE(d_p_.Upload(std::vector<float>(rows, c.p)).ok());
      ASSERT_TRUE(d_u_.Upload(std::vector<float>(rows, 0.37f)).ok());
      ASSERT_TRUE(d_out_.Allocate(rows * 4).ok());
      auto launch = [&] {
        return LaunchSampleTokens(static_cast<const float*>(d_logits_.get()),
                                  rows, v, v,
                                  static_cast<const float*>(d_t_.get()),
                                  static_cast<const int32_t*>(d_k_.get()),
                                  static_cast<const float*>(d_p_.get()),
                                  static_cast<const float*>(d_u_.get()),
                                  static_cast<int32_t*>(d_out_.get()), nullptr);
      };
      ASSERT_TRUE(launch().ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      constexpr int kReps = 20;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < kReps; ++i) ASSERT_TRUE(launch().ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const double ms = std::chrono::duration<double, std::milli>(
                            std::chrono::steady_clock::now() - start)
                            .count() /
                        kReps;
      std::printf("SampleTokens V=%lld rows=%d %-28s %8.3f ms\n",
                  static_cast<long long>(v), rows, c.name, ms);
    }
  }
}

}  // namespace
}  // namespace deltaserve
