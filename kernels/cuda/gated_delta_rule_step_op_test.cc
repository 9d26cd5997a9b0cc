// Argument checks of the step's front ends. Every case is rejected before
// anything touches the device, so this runs without a GPU; the views point
// at host memory that is never dereferenced.
#include "kernels/cuda/gated_delta_rule_step_op.h"

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gated_delta_rule_step.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kB = 2;
constexpr int64_t kHk = 2;
constexpr int64_t kHv = 4;
constexpr int64_t kK = 8;
constexpr int64_t kV = 6;
constexpr int64_t kSlots = 3;

// Well-formed views over a scratch buffer; each test breaks one of them.
class GatedDeltaRuleStepOpTest : public ::testing::Test {
 protected:
  GatedDeltaRuleStepOpTest() : scratch_(1 << 12) {
    void* p = scratch_.data();
    q_ = TensorView::Contiguous(p, DType::kF32, {kB, kHk, kK}, Device::kCuda);
    k_ = TensorView::Contiguous(p, DType::kF32, {kB, kHk, kK}, Device::kCuda);
    v_ = TensorView::Contiguous(p, DType::kF32, {kB, kHv, kV}, Device::kCuda);
    g_ = TensorView::Contiguous(p, DType::kF32, {kB, kHv}, Device::kCuda);
    beta_ = TensorView::Contiguous(p, DType::kF32, {kB, kHv}, Device::kCuda);
    state_ = TensorView::Contiguous(p, DType::kF32, {kSlots, kHv, kK, kV},
                                    Device::kCuda);
    slots_ = TensorView::Contiguous(p, DType::kI32, {kB}, Device::kCuda);
    out_ = TensorView::Contiguous(p, DType::kF32, {kB, kHv, kV}, Device::kCuda);
  }

  absl::Status Run() {
    return GatedDeltaRuleStep(q_, k_, v_, g_, beta_, state_, slots_, 1.0f, true,
                              out_, Stream());
  }

  std::vector<float> scratch_;
  TensorView q_, k_, v_, g_, beta_, state_, slots_, out_;
};

void ExpectInvalid(const absl::Status& status, const char* name) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(name));
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsHostMemory) {
  k_.device = Device::kCpu;
  ExpectInvalid(Run(), "k f32[2, 2, 8] is not in device memory");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsShapeMismatches) {
  k_.shape[2] = kK + 1;
  ExpectInvalid(Run(), "k is f32[2, 2, 9], expected f32[2, 2, 8]");
  k_.shape[2] = kK;

  out_.shape[2] = kV + 1;
  ExpectInvalid(Run(), "out is");
  out_.shape[2] = kV;

  state_.shape[2] = kK - 1;
  ExpectInvalid(Run(), "state is");
  state_.shape[2] = kK;

  beta_.shape[1] = kHv + 1;
  ExpectInvalid(Run(), "beta is");
  beta_.shape[1] = kHv;

  g_.shape[0] = kB + 1;
  ExpectInvalid(Run(), "g is");
  g_.shape[0] = kB;

  slots_.shape[0] = kB + 1;
  ExpectInvalid(Run(), "slots is");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsWrongDtypes) {
  slots_.dtype = DType::kF32;
  ExpectInvalid(Run(), "slots is f32[2], expected i32[2]");
  slots_.dtype = DType::kI32;
  v_.dtype = DType::kBF16;
  ExpectInvalid(Run(), "v is bf16");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsHeadsThatDoNotGroup) {
  q_ = TensorView::Contiguous(scratch_.data(), DType::kF32, {kB, 3, kK},
                              Device::kCuda);
  k_ = q_;
  ExpectInvalid(Run(), "not a positive multiple of the key heads");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsKeyDimAboveLimit) {
  const int64_t big = kGdrStepMaxKeyDim + 1;
  std::vector<float> buffer(kSlots * kHv * big * kV);
  q_ = TensorView::Contiguous(buffer.data(), DType::kF32, {kB, kHk, big},
                              Device::kCuda);
  k_ = q_;
  state_ = TensorView::Contiguous(buffer.data(), DType::kF32,
                                  {kSlots, kHv, big, kV}, Device::kCuda);
  ExpectInvalid(Run(), "supports at most 256");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsNonUnitLastStride) {
  v_.strides[2] = 2;
  ExpectInvalid(Run(), "v f32[2, 4, 6] has last stride 2");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsOverlappingStateRows) {
  state_.strides[2] = kV - 1;
  ExpectInvalid(Run(), "state f32[3, 4, 8, 6] has key stride 5");
}

TEST_F(GatedDeltaRuleStepOpTest, RejectsMissingData) {
  beta_.data = nullptr;
  ExpectInvalid(Run(), "beta f32[2, 4] has no data");
}

TEST(LaunchGatedDeltaRuleStepTest, RejectsBadSizes) {
  GdrStepArgs args;
  args.batch = 1;
  args.num_slots = 1;
  args.num_k_heads = 2;
  args.num_v_heads = 3;
  args.key_dim = 8;
  args.value_dim = 8;
  args.state_stride[2] = 8;
  ExpectInvalid(LaunchGatedDeltaRuleStep(args, nullptr), "num_v_heads = 3");
  args.num_v_heads = 4;
  args.key_dim = 0;
  ExpectInvalid(LaunchGatedDeltaRuleStep(args, nullptr), "key_dim = 0");
  args.key_dim = 8;
  args.state_stride[2] = 4;
  ExpectInvalid(LaunchGatedDeltaRuleStep(args, nullptr), "state_stride[2]");
  args.state_stride[2] = 8;
  // Every pointer is still null.
  ExpectInvalid(LaunchGatedDeltaRuleStep(args, nullptr), "q is null");
}

TEST(LaunchGatedDeltaRuleStepTest, EmptyBatchLaunchesNothing) {
  GdrStepArgs args;
  args.num_k_heads = 1;
  args.num_v_heads = 1;
  args.key_dim = 4;
  args.value_dim = 4;
  EXPECT_TRUE(LaunchGatedDeltaRuleStep(args, nullptr).ok());
}

}  // namespace
}  // namespace deltaserve
