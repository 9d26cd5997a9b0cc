// Argument checks of the element-wise front ends and launchers. Every case
// is rejected (or found empty) before anything touches the device, so this
// runs without a GPU; the views point at host memory that is never
// dereferenced.
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/elementwise/elementwise.h"
#include "kernels/cuda/elementwise/elementwise_ops.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {
namespace {

using ::testing::HasSubstr;

void ExpectInvalid(const absl::Status& status, const char* text) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(text));
}

class ElementwiseOpsArgsTest : public ::testing::Test {
 protected:
  ElementwiseOpsArgsTest() : scratch_(1 << 14) {}

  TensorView View(DType dtype, std::initializer_list<int64_t> shape) {
    return TensorView::Contiguous(scratch_.data(), dtype, shape, Device::kCuda);
  }
  TensorView F32(std::initializer_list<int64_t> shape) {
    return View(DType::kF32, shape);
  }
  TensorView Bf16(std::initializer_list<int64_t> shape) {
    return View(DType::kBF16, shape);
  }
  TensorView I32(std::initializer_list<int64_t> shape) {
    return View(DType::kI32, shape);
  }

  std::vector<float> scratch_;
};

TEST_F(ElementwiseOpsArgsTest, RmsNorm) {
  ExpectInvalid(
      CudaRmsNorm(F32({4, 8}), F32({7}), 1e-6f, false, F32({4, 8}), Stream()),
      "RmsNorm: weight is f32[7], expected f32[8]");
  ExpectInvalid(
      CudaRmsNorm(F32({4, 8}), F32({8}), 1e-6f, false, F32({4, 9}), Stream()),
      "RmsNorm: out is f32[4, 9], expected f32[4, 8]");
  ExpectInvalid(
      CudaRmsNorm(I32({4, 8}), F32({8}), 1e-6f, false, I32({4, 8}), Stream()),
      "x is i32[4, 8], expected f32[?, ?] or bf16");
  // The activations of one call share a dtype, except that the plain norm
  // may narrow f32 to bf16 (not in place).
  ExpectInvalid(
      CudaRmsNorm(Bf16({4, 8}), Bf16({8}), 1e-6f, true, F32({4, 8}), Stream()),
      "out is f32[4, 8], expected bf16[4, 8]");
  ExpectInvalid(
      CudaRmsNorm(F32({4, 8}), Bf16({8}), 1e-6f, true, Bf16({4, 8}), Stream()),
      "narrows x f32[4, 8] in place");
  ExpectInvalid(CudaRmsNormGated(Bf16({4, 8}), Bf16({4, 8}), Bf16({8}), 1e-6f,
                                 F32({4, 8}), Stream()),
                "out is f32[4, 8], expected bf16[4, 8]");
  TensorView host = F32({4, 8});
  host.device = Device::kCpu;
  ExpectInvalid(
      CudaRmsNorm(host, F32({8}), 1e-6f, false, F32({4, 8}), Stream()),
      "x f32[4, 8] is not in device memory");
  TensorView strided = F32({4, 8});
  strided.strides[0] = 16;
  ExpectInvalid(
      CudaRmsNorm(F32({4, 8}), F32({8}), 1e-6f, false, strided, Stream()),
      "aliases x");
  TensorView last = F32({4, 8});
  last.strides[1] = 2;
  ExpectInvalid(
      CudaRmsNorm(last, F32({8}), 1e-6f, false, F32({4, 8}), Stream()),
      "has last stride 2");
}

TEST_F(ElementwiseOpsArgsTest, RmsNormGated) {
  ExpectInvalid(CudaRmsNormGated(Bf16({4, 8}), Bf16({4, 7}), Bf16({8}), 1e-6f,
                                 Bf16({4, 8}), Stream()),
                "RmsNormGated: z is bf16[4, 7], expected bf16[4, 8]");
  ExpectInvalid(CudaRmsNormGated(Bf16({4, 8}), F32({4, 8}), Bf16({8}), 1e-6f,
                                 Bf16({4, 8}), Stream()),
                "z is f32[4, 8]");
}

TEST_F(ElementwiseOpsArgsTest, Rope) {
  const TensorView x = F32({3, 2, 8});
  ExpectInvalid(CudaRope(x, I32({3}), 7, 1e4f, Stream()), "rot_dim 7");
  ExpectInvalid(CudaRope(x, I32({3}), 0, 1e4f, Stream()), "rot_dim 0");
  ExpectInvalid(CudaRope(x, I32({3}), 10, 1e4f, Stream()), "rot_dim 10");
  ExpectInvalid(CudaRope(x, I32({4}), 8, 1e4f, Stream()),
                "positions is i32[4], expected i32[3]");
  ExpectInvalid(CudaRope(x, F32({3}), 8, 1e4f, Stream()), "positions is f32");
  ExpectInvalid(CudaRope(F32({3, 8}), I32({3}), 8, 1e4f, Stream()),
                "x is f32[3, 8]");
}

TEST_F(ElementwiseOpsArgsTest, BinaryOps) {
  ExpectInvalid(CudaAdd(F32({4, 8}), F32({4, 7}), F32({4, 8}), Stream()),
                "Add: b is f32[4, 7], expected f32[4, 8]");
  ExpectInvalid(CudaSwiGlu(Bf16({4, 8}), F32({4, 8}), Bf16({4, 8}), Stream()),
                "SwiGlu: up is f32[4, 8], expected bf16[4, 8]");
  ExpectInvalid(
      CudaSigmoidGate(F32({4, 8}), F32({4, 8}), F32({5, 8}), Stream()),
      "SigmoidGate: out is f32[5, 8]");
  ExpectInvalid(CudaAdd(F32({4, 8, 1}), F32({4, 8}), F32({4, 8}), Stream()),
                "Add: a is f32[4, 8, 1]");
  // Empty problems enqueue nothing.
  EXPECT_TRUE(CudaAdd(F32({0, 8}), F32({0, 8}), F32({0, 8}), Stream()).ok());
}

TEST_F(ElementwiseOpsArgsTest, Embedding) {
  ExpectInvalid(CudaEmbedding(F32({3}), F32({10, 8}), F32({3, 8}), Stream()),
                "Embedding: ids is f32[3], expected i32[?]");
  ExpectInvalid(CudaEmbedding(I32({3}), F32({10, 8}), F32({3, 7}), Stream()),
                "out is f32[3, 7], expected f32[3, 8]");
  ExpectInvalid(CudaEmbedding(I32({3}), I32({10, 8}), F32({3, 8}), Stream()),
                "table is i32[10, 8]");
  EXPECT_TRUE(
      CudaEmbedding(I32({0}), Bf16({10, 8}), F32({0, 8}), Stream()).ok());
}

TEST_F(ElementwiseOpsArgsTest, GdnGates) {
  const TensorView ab = Bf16({5, 4});
  ExpectInvalid(CudaGdnGates(ab, ab, F32({4}), Bf16({4}), F32({5, 4}),
                             F32({5, 4}), Stream()),
                "dt_bias is bf16[4], expected f32[4]");
  ExpectInvalid(CudaGdnGates(ab, ab, F32({4}), F32({4}), F32({5, 4}),
                             Bf16({5, 4}), Stream()),
                "beta is bf16[5, 4], expected f32[5, 4]");
  ExpectInvalid(CudaGdnGates(ab, Bf16({5, 3}), F32({4}), F32({4}), F32({5, 4}),
                             F32({5, 4}), Stream()),
                "b is bf16[5, 3]");
  ExpectInvalid(CudaGdnGates(ab, ab, F32({3}), F32({4}), F32({5, 4}),
                             F32({5, 4}), Stream()),
                "a_log is f32[3]");
}

TEST_F(ElementwiseOpsArgsTest, CausalConv1d) {
  const TensorView x = Bf16({6, 8});
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 4}), I32({3}), F32({5, 8, 2}),
                                 I32({2}), true, x, Stream()),
                "conv_state is f32[5, 8, 2], expected f32[?, 8, 3]");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 4}), I32({3}), Bf16({5, 8, 3}),
                                 I32({2}), true, x, Stream()),
                "conv_state is bf16");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 17}), I32({3}), F32({5, 8, 16}),
                                 I32({2}), true, x, Stream()),
                "supports at most 16");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 0}), I32({3}), F32({5, 8, 0}),
                                 I32({2}), true, x, Stream()),
                "has no taps");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 4}), I32({3}), F32({5, 8, 3}),
                                 I32({3}), true, x, Stream()),
                "slots is i32[3], expected i32[2]");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 4}), I32({0}), F32({5, 8, 3}),
                                 I32({0}), true, x, Stream()),
                "needs at least one entry");
  ExpectInvalid(CudaCausalConv1d(x, F32({7, 4}), I32({3}), F32({5, 8, 3}),
                                 I32({2}), true, x, Stream()),
                "weight is f32[7, 4]");
  ExpectInvalid(CudaCausalConv1d(x, F32({8, 4}), I32({3}), F32({5, 8, 3}),
                                 I32({2}), true, F32({6, 8}), Stream()),
                "out is f32[6, 8], expected bf16[6, 8]");
}

TEST_F(ElementwiseOpsArgsTest, CausalConv1dUpdate) {
  const TensorView x = F32({3, 8});
  ExpectInvalid(CudaCausalConv1dUpdate(x, F32({8, 4}), F32({5, 8, 3}), I32({2}),
                                       false, x, Stream()),
                "CausalConv1dUpdate: slots is i32[2], expected i32[3]");
  ExpectInvalid(CudaCausalConv1dUpdate(x, Bf16({8, 4}), F32({5, 8, 4}),
                                       I32({3}), false, x, Stream()),
                "conv_state is f32[5, 8, 4], expected f32[?, 8, 3]");
}

TEST(ElementwiseLaunchTest, RejectsBadArgs) {
  RmsNormArgs norm;
  norm.dtype = DType::kI32;
  ExpectInvalid(LaunchRmsNorm(norm, nullptr), "dtype is i32");
  norm.dtype = DType::kBF16;
  norm.rows = 2;
  norm.dim = 4;
  ExpectInvalid(LaunchRmsNorm(norm, nullptr), "x is null");

  CausalConv1dArgs conv;
  conv.width = kCausalConvMaxWidth + 1;
  ExpectInvalid(LaunchCausalConv1d(conv, nullptr), "width = 17");
  conv.width = 4;
  conv.batch = 2;
  conv.tokens = 3;
  ExpectInvalid(LaunchCausalConv1d(conv, nullptr), "decode form");

  RopeArgs rope;
  rope.tokens = 1;
  rope.heads = 1;
  rope.head_dim = 4;
  rope.rot_dim = 3;
  ExpectInvalid(LaunchRope(rope, nullptr), "rot_dim = 3");

  EmbeddingArgs emb;
  ExpectInvalid(LaunchEmbedding(emb, nullptr), "error is null");

  BinaryArgs bin;
  bin.rows = 1;
  bin.cols = 1;
  ExpectInvalid(LaunchBinary(bin, nullptr), "a is null");
  bin.rows = 0;
  EXPECT_TRUE(LaunchBinary(bin, nullptr).ok());

  GdnGatesArgs gates;
  gates.tokens = 1;
  gates.heads = 1;
  gates.gate_dtype = DType::kF16;
  ExpectInvalid(LaunchGdnGates(gates, nullptr), "gate_dtype is f16");
}

}  // namespace
}  // namespace deltaserve
