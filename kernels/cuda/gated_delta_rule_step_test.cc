// Checks the GPU decode step against CpuKernels::GatedDeltaRuleRecurrent with
// one token per sequence. Needs a CUDA device; skips without one.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gated_delta_rule_step_op.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/kernels.h"
#include "kernels/status.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::DeviceBuffer;
using ::deltaserve::testing::FillUniform;
using ::deltaserve::testing::HostI32;
using ::deltaserve::testing::HostTensor;
using ::deltaserve::testing::MaxAbsDiff;
using ::deltaserve::testing::RelativeError;

constexpr double kTolerance = 1e-5;

struct Case {
  int64_t batch;
  int64_t hv;
  int64_t hk;
  int64_t dk;
  int64_t dv;
  bool gate;
  bool l2norm;
  // q, k and v are column slices of one fused [B, 2·Hk·K + Hv·V] projection
  // instead of contiguous tensors.
  bool fused_qkv = false;
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.batch << "_Hv" << c.hv << "_Hk" << c.hk << "_K" << c.dk
            << "_V" << c.dv << (c.gate ? "_gate" : "_nogate")
            << (c.l2norm ? "_l2" : "_nol2") << (c.fused_qkv ? "_fused" : "");
}

// A [B, heads, dim] view of columns [col0, col0 + heads·dim) of a row-major
// [B, row] matrix at `base`.
TensorView Slice3(void* base, Device device, int64_t batch, int64_t row,
                  int64_t col0, int64_t heads, int64_t dim) {
  TensorView t =
      TensorView::Contiguous(static_cast<float*>(base) + col0, DType::kF32,
                             {batch, heads, dim}, device);
  t.strides = {row, dim, 1, 0};
  return t;
}

class GatedDeltaRuleStepTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    cpu_ = std::move(created).value();
  }

  std::unique_ptr<CpuKernels> cpu_;
};

TEST_P(GatedDeltaRuleStepTest, MatchesCpuRecurrent) {
  const Case c = GetParam();
  std::mt19937 rng(1234 + c.batch * 7 + c.hv * 131 + c.dk + c.dv * 3);
  const int64_t b = c.batch;
  const int64_t num_slots = 2 * b + 3;
  const int64_t row = 2 * c.hk * c.dk + c.hv * c.dv;

  // Inputs. Without l2norm the keys are scaled down so that one step of
  // (I − β k kᵀ) stays well conditioned.
  HostTensor qkv({b, row});
  FillUniform(&qkv, &rng);
  if (!c.l2norm) {
    for (int64_t t = 0; t < b; ++t) {
      for (int64_t i = 0; i < 2 * c.hk * c.dk; ++i) qkv[t * row + i] *= 0.2f;
    }
  }
  HostTensor g({b, c.hv});
  FillUniform(&g, &rng, -1.0f, 0.0f);
  HostTensor beta({b, c.hv});
  FillUniform(&beta, &rng, 0.0f, 1.0f);
  HostTensor state({num_slots, c.hv, c.dk, c.dv});
  FillUniform(&state, &rng);
  std::vector<int32_t> perm(static_cast<size_t>(num_slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  HostI32 slots =
      HostI32::FromVector(std::vector<int32_t>(perm.begin(), perm.begin() + b));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));

  // Contiguous copies of q, k, v for the unfused layout.
  HostTensor q({b, c.hk, c.dk});
  HostTensor k({b, c.hk, c.dk});
  HostTensor v({b, c.hv, c.dv});
  for (int64_t t = 0; t < b; ++t) {
    const float* r = &qkv[t * row];
    std::copy(r, r + c.hk * c.dk, &q[t * c.hk * c.dk]);
    std::copy(r + c.hk * c.dk, r + 2 * c.hk * c.dk, &k[t * c.hk * c.dk]);
    std::copy(r + 2 * c.hk * c.dk, r + row, &v[t * c.hv * c.dv]);
  }

  // Reference.
  std::vector<int32_t> cu(static_cast<size_t>(b + 1));
  std::iota(cu.begin(), cu.end(), 0);
  HostI32 cu_seqlens = HostI32::FromVector(cu);
  HostTensor want_state = state;
  HostTensor want_out({b, c.hv, c.dv});
  ASSERT_TRUE(cpu_->GatedDeltaRuleRecurrent(
                      q.view(), k.view(), v.view(),
                      c.gate ? g.view() : TensorView(), beta.view(),
                      cu_seqlens.view(), want_state.view(), slots.view(), scale,
                      c.l2norm, want_out.view(), Stream())
                  .ok());

  // Device run.
  DeviceBuffer d_qkv, d_q, d_k, d_v, d_g, d_beta, d_state, d_slots, d_out;
  ASSERT_TRUE(d_qkv.Upload(qkv.data).ok());
  ASSERT_TRUE(d_q.Upload(q.data).ok());
  ASSERT_TRUE(d_k.Upload(k.data).ok());
  ASSERT_TRUE(d_v.Upload(v.data).ok());
  ASSERT_TRUE(d_g.Upload(g.data).ok());
  ASSERT_TRUE(d_beta.Upload(beta.data).ok());
  ASSERT_TRUE(d_state.Upload(state.data).ok());
  ASSERT_TRUE(d_slots.Upload(slots.data).ok());
  // NaN-filled out catches columns the kernel forgets to write.
  ASSERT_TRUE(d_out.Upload(std::vector<float>(want_out.data.size(), NAN)).ok());

  const Device dev = Device::kCuda;
  TensorView dq, dk, dv;
  if (c.fused_qkv) {
    dq = Slice3(d_qkv.get(), dev, b, row, 0, c.hk, c.dk);
    dk = Slice3(d_qkv.get(), dev, b, row, c.hk * c.dk, c.hk, c.dk);
    dv = Slice3(d_qkv.get(), dev, b, row, 2 * c.hk * c.dk, c.hv, c.dv);
  } else {
    dq = TensorView::Contiguous(d_q.get(), DType::kF32, {b, c.hk, c.dk}, dev);
    dk = TensorView::Contiguous(d_k.get(), DType::kF32, {b, c.hk, c.dk}, dev);
    dv = TensorView::Contiguous(d_v.get(), DType::kF32, {b, c.hv, c.dv}, dev);
  }
  const TensorView dg =
      c.gate ? TensorView::Contiguous(d_g.get(), DType::kF32, {b, c.hv}, dev)
             : TensorView();
  const TensorView dbeta =
      TensorView::Contiguous(d_beta.get(), DType::kF32, {b, c.hv}, dev);
  const TensorView dstate = TensorView::Contiguous(
      d_state.get(), DType::kF32, {num_slots, c.hv, c.dk, c.dv}, dev);
  const TensorView dslots =
      TensorView::Contiguous(d_slots.get(), DType::kI32, {b}, dev);
  const TensorView dout =
      TensorView::Contiguous(d_out.get(), DType::kF32, {b, c.hv, c.dv}, dev);
  const absl::Status status = GatedDeltaRuleStep(
      dq, dk, dv, dg, dbeta, dstate, dslots, scale, c.l2norm, dout, Stream());
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "step").ok());

  std::vector<float> got_out(want_out.data.size());
  std::vector<float> got_state(state.data.size());
  ASSERT_TRUE(d_out.Download(&got_out).ok());
  ASSERT_TRUE(d_state.Download(&got_state).ok());

  EXPECT_LT(RelativeError(got_out, want_out.data), kTolerance);
  // Updated slots match the reference; the others are untouched.
  const int64_t per_slot = c.hv * c.dk * c.dv;
  std::vector<bool> used(static_cast<size_t>(num_slots), false);
  for (int64_t t = 0; t < b; ++t) used[slots[t]] = true;
  for (int64_t s = 0; s < num_slots; ++s) {
    const auto begin = static_cast<size_t>(s * per_slot);
    const auto end = begin + static_cast<size_t>(per_slot);
    const std::vector<float> got(got_state.begin() + begin,
                                 got_state.begin() + end);
    const std::vector<float> want(want_state.data.begin() + begin,
                                  want_state.data.begin() + end);
    if (used[s]) {
      EXPECT_LT(RelativeError(got, want), kTolerance) << "slot " << s;
    } else {
      EXPECT_EQ(MaxAbsDiff(got, want), 0.0) << "slot " << s;
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (int64_t batch : {1, 5, 32}) {
    for (bool gate : {true, false}) {
      cases.push_back({batch, 4, 2, 128, 128, gate, true});
      cases.push_back({batch, 16, 16, 128, 128, gate, true});
      cases.push_back({batch, 4, 2, 64, 33, gate, true});
    }
  }
  // Enough heads for the 16-byte path, odd and large sizes, no l2norm,
  // strided inputs.
  cases.push_back({64, 16, 4, 128, 128, true, true});
  cases.push_back({64, 8, 8, 64, 64, true, true, /*fused_qkv=*/true});
  cases.push_back({3, 6, 2, 256, 256, true, true});
  cases.push_back({2, 2, 1, 17, 70, false, false});
  cases.push_back({4, 3, 3, 1, 1, true, false});
  cases.push_back({7, 4, 2, 96, 200, true, true, /*fused_qkv=*/true});
  cases.push_back({40, 4, 2, 100, 200, true, true});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedDeltaRuleStepTest,
                         ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::ostringstream os;
                           os << info.param;
                           return os.str();
                         });

// Padding rows (slot −1) get zero output and leave every slot alone.
TEST(GatedDeltaRuleStepPaddingTest, NegativeSlotIsSkipped) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kB = 2, kH = 2, kK = 32, kV = 32, kSlots = 2;
  std::mt19937 rng(7);
  HostTensor q({kB, kH, kK}), v({kB, kH, kV}), beta({kB, kH});
  HostTensor state({kSlots, kH, kK, kV});
  FillUniform(&q, &rng);
  FillUniform(&v, &rng);
  FillUniform(&beta, &rng, 0.0f, 1.0f);
  FillUniform(&state, &rng);
  const std::vector<int32_t> slots = {-1, -1};
  DeviceBuffer d_q, d_v, d_beta, d_state, d_slots, d_out;
  ASSERT_TRUE(d_q.Upload(q.data).ok());
  ASSERT_TRUE(d_v.Upload(v.data).ok());
  ASSERT_TRUE(d_beta.Upload(beta.data).ok());
  ASSERT_TRUE(d_state.Upload(state.data).ok());
  ASSERT_TRUE(d_slots.Upload(slots).ok());
  ASSERT_TRUE(d_out.Upload(std::vector<float>(kB * kH * kV, NAN)).ok());
  const Device dev = Device::kCuda;
  const TensorView dq =
      TensorView::Contiguous(d_q.get(), DType::kF32, {kB, kH, kK}, dev);
  const absl::Status status = GatedDeltaRuleStep(
      dq, dq, TensorView::Contiguous(d_v.get(), DType::kF32, {kB, kH, kV}, dev),
      TensorView(),
      TensorView::Contiguous(d_beta.get(), DType::kF32, {kB, kH}, dev),
      TensorView::Contiguous(d_state.get(), DType::kF32, {kSlots, kH, kK, kV},
                             dev),
      TensorView::Contiguous(d_slots.get(), DType::kI32, {kB}, dev), 1.0f, true,
      TensorView::Contiguous(d_out.get(), DType::kF32, {kB, kH, kV}, dev),
      Stream());
  ASSERT_TRUE(status.ok()) << status;
  std::vector<float> got_out(kB * kH * kV);
  std::vector<float> got_state(state.data.size());
  ASSERT_TRUE(d_out.Download(&got_out).ok());
  ASSERT_TRUE(d_state.Download(&got_state).ok());
  for (float x : got_out) ASSERT_EQ(x, 0.0f);
  EXPECT_EQ(MaxAbsDiff(got_state, state.data), 0.0);
}

}  // namespace
}  // namespace deltaserve
