// Checks CudaGatedDeltaRuleRecurrent and CudaGatedDeltaRuleChunked against
// CpuKernels::GatedDeltaRuleRecurrent on varlen batches (needs a CUDA device;
// skips without one), and their argument checks (need no device).
#include "kernels/cuda/gdr/gdr_ops.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_status.h"
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

struct Case {
  std::vector<int32_t> lens;
  int64_t hk;
  int64_t hv;
  int64_t dk;
  int64_t dv;
  bool gate;
  bool l2norm;
  bool bf16;
  // Log decays are uniform in [g_min, 0].
  float g_min = -0.2f;
  // bf16 inputs with an f32 out (the chunked form only).
  bool out_f32 = false;
  // Value columns per block of the tensor-core state kernel
  // (DELTASERVE_GDR_STATE_COLUMNS; 0: the default).
  int state_columns = 0;
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  int64_t total = 0;
  for (int32_t n : c.lens) total += n;
  os << "B" << c.lens.size() << "_T" << total << "_Hk" << c.hk << "_Hv" << c.hv
     << "_K" << c.dk << "_V" << c.dv << (c.gate ? "_gate" : "_nogate")
     << (c.l2norm ? "_l2" : "_nol2") << (c.bf16 ? "_bf16" : "_f32");
  if (c.gate && c.g_min < -1.0f) os << "_strongdecay";
  if (c.out_f32) os << "_f32out";
  if (c.state_columns > 0) os << "_cols" << c.state_columns;
  return os;
}

void RoundToBf16(HostTensor* t) {
  for (float& x : t->data) x = Bf16ToF32(F32ToBf16(x));
}

std::vector<uint16_t> ToBf16(const HostTensor& t) {
  std::vector<uint16_t> r(t.data.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = F32ToBf16(t.data[i]);
  return r;
}

enum class Form { kRecurrent, kChunked };

class GdrOpsTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    cpu_ = std::move(created).value();
  }

  void Check(Form form);

  std::unique_ptr<CpuKernels> cpu_;
};

void GdrOpsTest::Check(Form form) {
  const Case& c = GetParam();
  if (c.out_f32 && form == Form::kRecurrent) {
    GTEST_SKIP() << "the recurrent form's out has the inputs' type";
  }
  const bool out_bf16 = c.bf16 && !c.out_f32;
  if (c.state_columns > 0) {
    setenv("DELTASERVE_GDR_STATE_COLUMNS",
           std::to_string(c.state_columns).c_str(), 1);
  } else {
    unsetenv("DELTASERVE_GDR_STATE_COLUMNS");
  }
  const int64_t b = static_cast<int64_t>(c.lens.size());
  std::vector<int32_t> cu(static_cast<size_t>(b + 1), 0);
  for (int64_t i = 0; i < b; ++i) cu[i + 1] = cu[i] + c.lens[i];
  const int64_t t = cu[b];
  std::mt19937 rng(99 + t * 7 + c.hv * 131 + c.dk + c.dv * 3 + c.gate +
                   2 * c.l2norm + 4 * c.bf16);
  const int64_t num_slots = 2 * b + 3;

  HostTensor q({t, c.hk, c.dk}), k({t, c.hk, c.dk}), v({t, c.hv, c.dv});
  HostTensor g({t, c.hv}), beta({t, c.hv});
  HostTensor state({num_slots, c.hv, c.dk, c.dv});
  FillUniform(&q, &rng);
  FillUniform(&k, &rng);
  FillUniform(&v, &rng);
  FillUniform(&g, &rng, c.g_min, 0.0f);
  FillUniform(&beta, &rng, 0.0f, 1.0f);
  FillUniform(&state, &rng, -0.5f, 0.5f);
  if (!c.l2norm) {
    // Keeps β‖k‖² below 2 so that the recurrence stays bounded.
    const float s = 1.0f / std::sqrt(static_cast<float>(c.dk));
    for (float& x : k.data) x *= s;
  }
  if (c.bf16) {
    for (HostTensor* x : {&q, &k, &v, &g, &beta}) RoundToBf16(x);
  }
  std::vector<int32_t> perm(static_cast<size_t>(num_slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  HostI32 slots =
      HostI32::FromVector(std::vector<int32_t>(perm.begin(), perm.begin() + b));
  HostI32 cu_seqlens = HostI32::FromVector(cu);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));

  HostTensor want_state = state;
  HostTensor want_out({t, c.hv, c.dv});
  ASSERT_TRUE(cpu_->GatedDeltaRuleRecurrent(
                      q.view(), k.view(), v.view(),
                      c.gate ? g.view() : TensorView(), beta.view(),
                      cu_seqlens.view(), want_state.view(), slots.view(), scale,
                      c.l2norm, want_out.view(), Stream())
                  .ok());

  DeviceBuffer d_q, d_k, d_v, d_g, d_beta, d_state, d_cu, d_slots, d_out;
  if (c.bf16) {
    ASSERT_TRUE(d_q.Upload(ToBf16(q)).ok());
    ASSERT_TRUE(d_k.Upload(ToBf16(k)).ok());
    ASSERT_TRUE(d_v.Upload(ToBf16(v)).ok());
    ASSERT_TRUE(d_g.Upload(ToBf16(g)).ok());
    ASSERT_TRUE(d_beta.Upload(ToBf16(beta)).ok());
  } else {
    ASSERT_TRUE(d_q.Upload(q.data).ok());
    ASSERT_TRUE(d_k.Upload(k.data).ok());
    ASSERT_TRUE(d_v.Upload(v.data).ok());
    ASSERT_TRUE(d_g.Upload(g.data).ok());
    ASSERT_TRUE(d_beta.Upload(beta.data).ok());
  }
  if (out_bf16) {
    // 0xffff is a bf16 NaN: catches rows the kernel forgets to write.
    ASSERT_TRUE(
        d_out.Upload(std::vector<uint16_t>(want_out.data.size(), 0xffff)).ok());
  } else {
    ASSERT_TRUE(
        d_out.Upload(std::vector<float>(want_out.data.size(), NAN)).ok());
  }
  ASSERT_TRUE(d_state.Upload(state.data).ok());
  ASSERT_TRUE(d_cu.Upload(cu).ok());
  ASSERT_TRUE(d_slots.Upload(slots.data).ok());

  const Device dev = Device::kCuda;
  const DType act = c.bf16 ? DType::kBF16 : DType::kF32;
  const TensorView dq =
      TensorView::Contiguous(d_q.get(), act, {t, c.hk, c.dk}, dev);
  const TensorView dk =
      TensorView::Contiguous(d_k.get(), act, {t, c.hk, c.dk}, dev);
  const TensorView dv =
      TensorView::Contiguous(d_v.get(), act, {t, c.hv, c.dv}, dev);
  const TensorView dg =
      c.gate ? TensorView::Contiguous(d_g.get(), act, {t, c.hv}, dev)
             : TensorView();
  const TensorView dbeta =
      TensorView::Contiguous(d_beta.get(), act, {t, c.hv}, dev);
  const TensorView dstate = TensorView::Contiguous(
      d_state.get(), DType::kF32, {num_slots, c.hv, c.dk, c.dv}, dev);
  const TensorView dcu =
      TensorView::Contiguous(d_cu.get(), DType::kI32, {b + 1}, dev);
  const TensorView dslots =
      TensorView::Contiguous(d_slots.get(), DType::kI32, {b}, dev);
  const TensorView dout = TensorView::Contiguous(
      d_out.get(), out_bf16 ? DType::kBF16 : DType::kF32, {t, c.hv, c.dv}, dev);
  const absl::Status status =
      form == Form::kChunked
          ? CudaGatedDeltaRuleChunked(dq, dk, dv, dg, dbeta, dcu, dstate,
                                      dslots, scale, c.l2norm, dout, Stream())
          : CudaGatedDeltaRuleRecurrent(dq, dk, dv, dg, dbeta, dcu, dstate,
                                        dslots, scale, c.l2norm, dout,
                                        Stream());
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "gdr").ok());

  std::vector<float> got_out(want_out.data.size());
  if (out_bf16) {
    std::vector<uint16_t> raw(got_out.size());
    ASSERT_TRUE(d_out.Download(&raw).ok());
    for (size_t i = 0; i < raw.size(); ++i) got_out[i] = Bf16ToF32(raw[i]);
  } else {
    ASSERT_TRUE(d_out.Download(&got_out).ok());
  }
  std::vector<float> got_state(state.data.size());
  ASSERT_TRUE(d_state.Download(&got_state).ok());

  const double tolerance = c.bf16 ? 2e-2 : 1e-4;
  const double out_err = RelativeError(got_out, want_out.data);
  EXPECT_LT(out_err, tolerance);
  // Per sequence, so that a short one is not hidden by a long one.
  const int64_t row = c.hv * c.dv;
  for (int64_t s = 0; s < b; ++s) {
    if (c.lens[s] == 0) continue;
    const std::vector<float> got(got_out.begin() + cu[s] * row,
                                 got_out.begin() + cu[s + 1] * row);
    const std::vector<float> want(want_out.data.begin() + cu[s] * row,
                                  want_out.data.begin() + cu[s + 1] * row);
    EXPECT_LT(RelativeError(got, want), tolerance) << "sequence " << s;
  }
  const int64_t per_slot = c.hv * c.dk * c.dv;
  std::vector<bool> used(static_cast<size_t>(num_slots), false);
  for (int64_t s = 0; s < b; ++s) used[slots[s]] = true;
  double worst_state = 0.0;
  for (int64_t s = 0; s < num_slots; ++s) {
    const auto begin = static_cast<size_t>(s * per_slot);
    const auto end = begin + static_cast<size_t>(per_slot);
    const std::vector<float> got(got_state.begin() + begin,
                                 got_state.begin() + end);
    const std::vector<float> want(want_state.data.begin() + begin,
                                  want_state.data.begin() + end);
    if (used[s]) {
      const double err = RelativeError(got, want);
      worst_state = std::max(worst_state, err);
      EXPECT_LT(err, tolerance) << "slot " << s;
    } else {
      EXPECT_EQ(MaxAbsDiff(got, want), 0.0) << "slot " << s;
    }
  }
  std::printf("  %s: out rel err %.3g, worst state rel err %.3g\n",
              form == Form::kChunked ? "chunked" : "recurrent", out_err,
              worst_state);
}

TEST_P(GdrOpsTest, RecurrentMatchesCpu) { Check(Form::kRecurrent); }

TEST_P(GdrOpsTest, ChunkedMatchesCpu) { Check(Form::kChunked); }

std::vector<Case> Cases() {
  const std::vector<int32_t> lens = {1, 7, 63, 64, 65, 1000};
  std::vector<Case> cases;
  for (bool bf16 : {false, true}) {
    for (bool gate : {true, false}) {
      for (bool l2norm : {true, false}) {
        cases.push_back({lens, 2, 4, 128, 128, gate, l2norm, bf16});
        cases.push_back({lens, 16, 16, 128, 128, gate, l2norm, bf16});
      }
    }
    cases.push_back({lens, 2, 4, 64, 64, true, true, bf16});
    cases.push_back({lens, 2, 4, 32, 32, true, true, bf16});
    cases.push_back({{8192}, 2, 4, 128, 128, true, true, bf16, -0.05f});
  }
  // Head dims that differ, empty sequences, strong decay (cumulative log
  // decays of hundreds within a chunk), long sequences without decay.
  cases.push_back({{5, 0, 130, 0, 1}, 1, 2, 128, 64, true, true, false});
  cases.push_back({{3, 200}, 2, 2, 64, 96, true, false, false});
  cases.push_back({lens, 2, 4, 128, 128, true, true, false, -8.0f});
  cases.push_back({lens, 2, 4, 64, 64, true, false, true, -8.0f});
  cases.push_back({{8192}, 2, 4, 128, 128, false, true, false});
  cases.push_back({{8192}, 16, 16, 128, 128, true, true, true, -0.05f});
  // bf16 inputs, f32 out (what the model feeds the chunked form).
  cases.push_back({lens, 2, 4, 128, 128, true, true, true, -0.2f, true});
  cases.push_back({lens, 4, 8, 64, 32, true, true, true, -8.0f, true});
  cases.push_back(
      {{5, 0, 130, 0, 1}, 1, 2, 32, 64, false, true, true, -0.2f, true});
  // Every width of the tensor-core state kernel, one and many blocks per SM.
  for (int cols : {16, 32, 64}) {
    cases.push_back(
        {lens, 2, 4, 128, 128, true, true, true, -0.2f, true, cols});
    cases.push_back({lens, 4, 8, 64, 64, true, true, true, -8.0f, false, cols});
    cases.push_back({{1000, 2048, 700, 1500},
                     16,
                     32,
                     128,
                     128,
                     true,
                     true,
                     true,
                     -0.05f,
                     true,
                     cols});
  }
  cases.push_back({lens, 2, 4, 32, 96, true, true, true, -0.2f, true, 64});
  // Several long sequences, 65536 tokens in all.
  cases.push_back(
      {{16384, 4001, 20000, 25151}, 2, 4, 128, 128, true, true, false, -0.05f});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GdrOpsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::ostringstream os;
                           os << info.param;
                           return os.str();
                         });

// Argument checks: no device needed (nothing is launched on these paths).
class GdrOpsArgsTest : public ::testing::Test {
 protected:
  static constexpr int64_t kT = 10, kB = 2, kHk = 2, kHv = 4, kK = 128,
                           kV = 128, kS = 3;

  static TensorView View(DType dtype, std::initializer_list<int64_t> dims,
                         Device device = Device::kCuda) {
    // A fake device address: the checks never dereference it.
    static float fake;
    return TensorView::Contiguous(&fake, dtype, dims, device);
  }

  void SetUp() override {
    q = View(DType::kF32, {kT, kHk, kK});
    k = View(DType::kF32, {kT, kHk, kK});
    v = View(DType::kF32, {kT, kHv, kV});
    g = View(DType::kF32, {kT, kHv});
    beta = View(DType::kF32, {kT, kHv});
    cu = View(DType::kI32, {kB + 1});
    state = View(DType::kF32, {kS, kHv, kK, kV});
    slots = View(DType::kI32, {kB});
    out = View(DType::kF32, {kT, kHv, kV});
  }

  absl::Status Chunked() const {
    return CudaGatedDeltaRuleChunked(q, k, v, g, beta, cu, state, slots, 1.0f,
                                     true, out, Stream());
  }
  absl::Status Recurrent() const {
    return CudaGatedDeltaRuleRecurrent(q, k, v, g, beta, cu, state, slots, 1.0f,
                                       true, out, Stream());
  }
  void ExpectBothInvalid(const std::string& what) const {
    const absl::Status c = Chunked();
    const absl::Status r = Recurrent();
    EXPECT_EQ(c.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << c;
    EXPECT_EQ(r.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << r;
  }

  TensorView q, k, v, g, beta, cu, state, slots, out;
};

TEST_F(GdrOpsArgsTest, KeyShapeMismatch) {
  k = View(DType::kF32, {kT, kHk, kK / 2});
  ExpectBothInvalid("k");
}

TEST_F(GdrOpsArgsTest, ValueHeadsNotMultipleOfKeyHeads) {
  v = View(DType::kF32, {kT, 3, kV});
  ExpectBothInvalid("v heads");
}

TEST_F(GdrOpsArgsTest, HostTensor) {
  q = View(DType::kF32, {kT, kHk, kK}, Device::kCpu);
  ExpectBothInvalid("q on host");
}

TEST_F(GdrOpsArgsTest, BadDtypes) {
  q = View(DType::kI32, {kT, kHk, kK});
  ExpectBothInvalid("q i32");
  SetUp();
  k = View(DType::kBF16, {kT, kHk, kK});
  ExpectBothInvalid("k bf16, q f32");
  SetUp();
  out = View(DType::kBF16, {kT, kHv, kV});
  ExpectBothInvalid("out bf16, q f32");
  SetUp();
  state = View(DType::kBF16, {kS, kHv, kK, kV});
  ExpectBothInvalid("state bf16");
}

TEST_F(GdrOpsArgsTest, BadGateShapes) {
  g = View(DType::kF32, {kT, kHv + 1});
  ExpectBothInvalid("g");
  SetUp();
  beta = View(DType::kF32, {kT + 1, kHv});
  ExpectBothInvalid("beta");
}

TEST_F(GdrOpsArgsTest, BadStateSlotsOut) {
  state = View(DType::kF32, {kS, kHv, kK, kV + 1});
  ExpectBothInvalid("state");
  SetUp();
  slots = View(DType::kI32, {kB + 1});
  ExpectBothInvalid("slots");
  SetUp();
  out = View(DType::kF32, {kT, kHv, kV - 1});
  ExpectBothInvalid("out");
  SetUp();
  cu = View(DType::kI32, {0});
  ExpectBothInvalid("cu_seqlens");
}

TEST_F(GdrOpsArgsTest, ChunkedHeadDims) {
  for (int64_t dk : {16, 96, 256}) {
    q = View(DType::kF32, {kT, kHk, dk});
    k = View(DType::kF32, {kT, kHk, dk});
    state = View(DType::kF32, {kS, kHv, dk, kV});
    EXPECT_EQ(Chunked().code(), absl::StatusCode::kInvalidArgument) << dk;
  }
  SetUp();
  v = View(DType::kF32, {kT, kHv, 48});
  state = View(DType::kF32, {kS, kHv, kK, 48});
  out = View(DType::kF32, {kT, kHv, 48});
  EXPECT_EQ(Chunked().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GdrOpsArgsTest, RecurrentKeyDimLimit) {
  q = View(DType::kF32, {kT, kHk, 300});
  k = View(DType::kF32, {kT, kHk, 300});
  state = View(DType::kF32, {kS, kHv, 300, kV});
  EXPECT_EQ(Recurrent().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GdrOpsArgsTest, OnlyTheChunkedFormWidensBf16InputsToAnF32Out) {
  const int64_t zero = 0;  // no tokens: the checks run, nothing launches
  q = View(DType::kBF16, {zero, kHk, kK});
  k = View(DType::kBF16, {zero, kHk, kK});
  v = View(DType::kBF16, {zero, kHv, kV});
  g = View(DType::kF32, {zero, kHv});
  beta = View(DType::kF32, {zero, kHv});
  out = View(DType::kF32, {zero, kHv, kV});
  EXPECT_TRUE(Chunked().ok()) << Chunked();
  EXPECT_EQ(Recurrent().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GdrOpsArgsTest, NoTokensIsOk) {
  // No tokens: nothing is launched, so no device is needed.
  q = View(DType::kF32, {0, kHk, kK});
  k = View(DType::kF32, {0, kHk, kK});
  v = View(DType::kF32, {0, kHv, kV});
  g = View(DType::kF32, {0, kHv});
  beta = View(DType::kF32, {0, kHv});
  out = View(DType::kF32, {0, kHv, kV});
  EXPECT_TRUE(Chunked().ok());
  EXPECT_TRUE(Recurrent().ok());
}

}  // namespace
}  // namespace deltaserve
