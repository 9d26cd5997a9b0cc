// The mixers on the GPU against CpuKernels (fp32 both): linear and power
// attention (both entry points), their gates and the cumulative rotary
// embedding, on random inputs with odd sizes, GQA, varlen batches with
// empty sequences, initial states and slots scattered over the pools.
// Skips without a GPU; argument checks run anywhere.
#include "kernels/cuda/mixers/mixer_ops.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using testing::DeviceBuffer;
using testing::FillUniform;
using testing::HostI32;
using testing::HostTensor;
using testing::RelativeError;

// A host tensor's copy on the device, viewed with the same shape.
template <typename Host>
struct OnDevice {
  explicit OnDevice(const Host& h) : host(h) {
    EXPECT_TRUE(buf.Upload(h.data).ok());
  }
  TensorView view() const {
    TensorView v = host.view();
    v.data = buf.get();
    v.device = Device::kCuda;
    return v;
  }
  std::vector<float> Download() const {
    std::vector<float> out(host.data.size());
    EXPECT_TRUE(buf.Download(&out).ok());
    return out;
  }
  const Host& host;
  DeviceBuffer buf;
};

std::unique_ptr<CpuKernels> Cpu() { return std::move(*CpuKernels::Create({})); }

struct Case {
  int degree;  // 0: linear attention
  int64_t h, hkv, dk, dv;
  bool gate;
  bool normalize;
};

class MixerOpsTest : public ::testing::TestWithParam<Case> {};

TEST_P(MixerOpsTest, BothFormsMatchCpuKernels) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
  const Case c = GetParam();
  const std::vector<int32_t> lens = {1, 7, 0, 63, 65, 200};
  std::vector<int32_t> cu = {0};
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  const int64_t t = cu.back(), b = static_cast<int64_t>(lens.size());
  const int64_t f = c.degree == 0 ? c.dk : PowerFeatureDim(c.dk, c.degree);
  const int64_t pool = b + 3;
  std::mt19937 rng(7 + c.degree * 13 + c.dk + c.dv + c.gate + 2 * c.normalize);
  HostTensor q({t, c.h, c.dk}), k({t, c.hkv, c.dk}), v({t, c.hkv, c.dv});
  HostTensor g({t, c.hkv}), state({pool, c.hkv, f, c.dv}),
      norm({pool, c.hkv, f});
  FillUniform(&q, &rng);
  FillUniform(&k, &rng);
  FillUniform(&v, &rng);
  FillUniform(&g, &rng, -0.3f, 0.0f);
  FillUniform(&state, &rng, -0.1f, 0.1f);
  // The normaliser of a real history is positive (power features are
  // non-negative sums only along even moments; keep it well away from 0).
  FillUniform(&norm, &rng, 0.5f, 1.0f);
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const HostI32 slots =
      HostI32::FromVector(std::vector<int32_t>(perm.begin(), perm.begin() + b));
  const HostI32 cuv = HostI32::FromVector(cu);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));

  auto cpu = Cpu();
  HostTensor want_state = state, want_norm = norm, want_out({t, c.h, c.dv});
  const TensorView gv = c.gate ? g.view() : TensorView();
  if (c.degree == 0) {
    ASSERT_TRUE(cpu->LinearAttentionRecurrent(
                       q.view(), k.view(), v.view(), cuv.view(),
                       want_state.view(), want_norm.view(), slots.view(), scale,
                       c.normalize, want_out.view(), Stream())
                    .ok());
  } else {
    ASSERT_TRUE(cpu->PowerAttentionRecurrent(
                       q.view(), k.view(), v.view(), gv, cuv.view(),
                       want_state.view(), want_norm.view(), slots.view(),
                       c.degree, scale, c.normalize, want_out.view(), Stream())
                    .ok());
  }
  for (const char* op : {"chunked", "recurrent"}) {
    SCOPED_TRACE(op);
    OnDevice dq(q), dk(k), dvv(v), dg(g), dstate(state), dnorm(norm);
    OnDevice dcu(cuv), dslots(slots);
    HostTensor out_init({t, c.h, c.dv}, NAN);
    OnDevice dout(out_init);
    const TensorView dgv = c.gate ? dg.view() : TensorView();
    const std::string which =
        std::string(c.degree == 0 ? "LinearAttention" : "PowerAttention") +
        (op[0] == 'c' ? "Chunked" : "Recurrent");
    const absl::Status st =
        CudaMixer(which.c_str(), dq.view(), dk.view(), dvv.view(), dgv,
                  dcu.view(), dstate.view(), dnorm.view(), dslots.view(),
                  c.degree == 0 ? kLinearFeatureMap : c.degree, scale,
                  c.normalize, dout.view(), Stream());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "mixer").ok());
    const double out_err = RelativeError(dout.Download(), want_out.data);
    const double state_err = RelativeError(dstate.Download(), want_state.data);
    const double norm_err = RelativeError(dnorm.Download(), want_norm.data);
    std::printf("  degree %d F %lld: out %.3g, state %.3g, normaliser %.3g\n",
                c.degree, static_cast<long long>(f), out_err, state_err,
                norm_err);
    EXPECT_LT(out_err, 1e-4);
    EXPECT_LT(state_err, 1e-5);
    EXPECT_LT(norm_err, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MixerOpsTest,
                         ::testing::Values(Case{0, 4, 2, 16, 40, false, true},
                                           Case{0, 4, 4, 64, 64, false, false},
                                           Case{0, 3, 1, 7, 33, false, true},
                                           Case{2, 4, 2, 16, 40, true, true},
                                           Case{2, 2, 2, 32, 64, false, false},
                                           Case{4, 4, 2, 8, 24, true, false},
                                           Case{4, 2, 1, 16, 32, true, true}));

TEST(MixerGatesTest, MatchCpuKernels) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
  std::mt19937 rng(3);
  HostTensor gl({1000, 7}), rl({1000, 7}), g({1000, 7}), r({1000, 7});
  FillUniform(&gl, &rng, -30.0f, 30.0f);
  FillUniform(&rl, &rng, -30.0f, 30.0f);
  ASSERT_TRUE(Cpu()
                  ->PowerAttentionGates(gl.view(), rl.view(), 6.9f, g.view(),
                                        r.view(), Stream())
                  .ok());
  OnDevice dgl(gl), drl(rl), dg(gl), dr(rl);
  ASSERT_TRUE(CudaPowerAttentionGates(dgl.view(), drl.view(), 6.9f, dg.view(),
                                      dr.view(), Stream())
                  .ok());
  EXPECT_LT(RelativeError(dg.Download(), g.data), 1e-5);
  EXPECT_LT(RelativeError(dr.Download(), r.data), 1e-5);
}

TEST(CumulativeRopeTest, MatchesCpuKernels) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
  std::mt19937 rng(5);
  const std::vector<int32_t> cu = {0, 1, 1, 64, 300};
  const int64_t t = 300, h = 4, hkv = 2, d = 16, rot = 10, pool = 7;
  HostTensor q({t, h, d}), k({t, hkv, d}), rate({t, hkv}),
      angle({pool, hkv, rot / 2});
  FillUniform(&q, &rng);
  FillUniform(&k, &rng);
  FillUniform(&rate, &rng, 0.0f, 3.0f);
  FillUniform(&angle, &rng, -3.0f, 3.0f);
  const HostI32 cuv = HostI32::FromVector(cu);
  const HostI32 slots = HostI32::FromVector({5, 0, 2, 6});
  HostTensor wq = q, wk = k, wangle = angle;
  ASSERT_TRUE(Cpu()
                  ->CumulativeRope(wq.view(), wk.view(), rate.view(),
                                   cuv.view(), wangle.view(), slots.view(), rot,
                                   500.0f, Stream())
                  .ok());
  OnDevice dq(q), dk(k), dr(rate), da(angle);
  OnDevice dcu(cuv), ds(slots);
  ASSERT_TRUE(CudaCumulativeRope(dq.view(), dk.view(), dr.view(), dcu.view(),
                                 da.view(), ds.view(), rot, 500.0f, Stream())
                  .ok());
  EXPECT_LT(RelativeError(dq.Download(), wq.data), 1e-5);
  EXPECT_LT(RelativeError(dk.Download(), wk.data), 1e-5);
  EXPECT_LT(RelativeError(da.Download(), wangle.data), 1e-5);
}

// Argument checks need no device (nothing is launched when they fail).
TEST(MixerOpsArgsTest, BadShapesAreInvalidArgument) {
  static float fake;
  auto view = [](DType dt, std::initializer_list<int64_t> dims) {
    return TensorView::Contiguous(&fake, dt, dims, Device::kCuda);
  };
  const TensorView q = view(DType::kF32, {5, 4, 8});
  const TensorView k = view(DType::kF32, {5, 2, 8});
  const TensorView v = view(DType::kF32, {5, 2, 16});
  const TensorView cu = view(DType::kI32, {3});
  const TensorView slots = view(DType::kI32, {2});
  const TensorView out = view(DType::kF32, {5, 4, 16});
  const int64_t f2 = PowerFeatureDim(8, 2);
  const TensorView state = view(DType::kF32, {3, 2, f2, 16});
  const TensorView norm = view(DType::kF32, {3, 2, f2});
  auto code = [&](const TensorView& qq, const TensorView& st, int degree) {
    return CudaMixer("PowerAttentionRecurrent", qq, k, v, TensorView(), cu, st,
                     norm, slots, degree, 1.0f, true, out, Stream())
        .code();
  };
  EXPECT_EQ(code(view(DType::kF32, {5, 3, 8}), state, 2),
            absl::StatusCode::kInvalidArgument);                     // heads
  EXPECT_EQ(code(q, state, 3), absl::StatusCode::kInvalidArgument);  // odd
  EXPECT_EQ(code(q, state, 0), absl::StatusCode::kInvalidArgument);  // zero
  EXPECT_EQ(code(q, view(DType::kF32, {3, 2, f2 + 1, 16}), 2),
            absl::StatusCode::kInvalidArgument);  // features
  EXPECT_EQ(code(view(DType::kF32, {5, 4, 300}), state, 2),
            absl::StatusCode::kInvalidArgument);  // key dim
  EXPECT_EQ(CudaPowerAttentionGates(q, TensorView(), 0.0f, TensorView(),
                                    TensorView(), Stream())
                .code(),
            absl::StatusCode::kInvalidArgument);  // g missing
}

}  // namespace
}  // namespace deltaserve
