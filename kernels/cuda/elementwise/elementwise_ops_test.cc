// Checks every element-wise CUDA op against CpuKernels on random inputs:
// f32 and bf16 activations and weights, odd and realistic sizes, strided
// (vector and scalar paths) and in-place views, and the error cases that
// need the device (out-of-range embedding ids). Needs a CUDA device; skips
// without one.
#include "kernels/cuda/elementwise/elementwise_ops.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
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
using ::testing::HasSubstr;

#define ASSERT_OK(expr)                         \
  do {                                          \
    const ::absl::Status assert_ok_ = (expr);   \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_; \
  } while (0)

constexpr float kEps = 1e-6f;
constexpr float kSentinel = 12288.0f;  // fills row padding; exact in bf16

double Tolerance(DType out) { return out == DType::kBF16 ? 1e-2 : 1e-5; }

void RoundToBf16(std::vector<float>* v) {
  for (float& x : *v) x = Bf16ToF32(F32ToBf16(x));
}

// Uniform in [lo, hi), rounded to bf16 when `dtype` is bf16 (the CPU then
// sees exactly what the GPU sees).
HostTensor Random(std::initializer_list<int64_t> shape, std::mt19937* rng,
                  DType dtype, float lo = -1.0f, float hi = 1.0f) {
  HostTensor t(shape);
  FillUniform(&t, rng, lo, hi);
  if (dtype == DType::kBF16) RoundToBf16(&t.data);
  return t;
}

// A device copy of a host tensor in f32 or bf16 whose first dimension's
// stride is padded by `pad` elements; the padding holds kSentinel, so
// writes outside the view show.
class DeviceTensor {
 public:
  absl::Status Init(const HostTensor& host, DType dtype, int64_t pad = 0) {
    dtype_ = dtype;
    shape_ = host.shape;
    rows_ = shape_.empty() ? 1 : shape_[0];
    inner_ = 1;
    for (size_t d = 1; d < shape_.size(); ++d) inner_ *= shape_[d];
    stride0_ = inner_ + pad;
    std::vector<float> staged(static_cast<size_t>(rows_ * stride0_), kSentinel);
    for (int64_t r = 0; r < rows_; ++r) {
      std::copy_n(host.data.begin() + r * inner_, inner_,
                  staged.begin() + r * stride0_);
    }
    if (dtype == DType::kBF16) {
      std::vector<uint16_t> bits(staged.size());
      for (size_t i = 0; i < staged.size(); ++i) bits[i] = F32ToBf16(staged[i]);
      return buf_.Upload(bits.data(), bits.size() * sizeof(uint16_t));
    }
    return buf_.Upload(staged.data(), staged.size() * sizeof(float));
  }

  TensorView view() const {
    TensorView t;
    t.data = buf_.get();
    t.dtype = dtype_;
    t.device = Device::kCuda;
    t.ndim = static_cast<int>(shape_.size());
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape_[d];
      t.strides[d] = d == 0 ? stride0_ : stride;
      stride *= shape_[d];
    }
    return t;
  }

  // The view's elements in row-major order, and whether the padding still
  // holds the sentinel.
  absl::Status Download(std::vector<float>* values, bool* padding_ok) const {
    std::vector<float> all(static_cast<size_t>(rows_ * stride0_));
    if (dtype_ == DType::kBF16) {
      std::vector<uint16_t> bits(all.size());
      DS_RETURN_IF_ERROR(
          buf_.Download(bits.data(), bits.size() * sizeof(uint16_t)));
      for (size_t i = 0; i < all.size(); ++i) all[i] = Bf16ToF32(bits[i]);
    } else {
      DS_RETURN_IF_ERROR(buf_.Download(all.data(), all.size() * sizeof(float)));
    }
    values->assign(static_cast<size_t>(rows_ * inner_), 0.0f);
    *padding_ok = true;
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t i = 0; i < stride0_; ++i) {
        const float v = all[r * stride0_ + i];
        if (i < inner_) {
          (*values)[r * inner_ + i] = v;
        } else if (v != kSentinel) {
          *padding_ok = false;
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  DeviceBuffer buf_;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  int64_t rows_ = 0;
  int64_t inner_ = 0;
  int64_t stride0_ = 0;
};

// A device copy of an i32 vector.
class DeviceI32 {
 public:
  absl::Status Init(const std::vector<int32_t>& host) {
    n_ = static_cast<int64_t>(host.size());
    return buf_.Upload(host.data(), host.size() * sizeof(int32_t));
  }
  TensorView view() const {
    return TensorView::Contiguous(buf_.get(), DType::kI32, {n_}, Device::kCuda);
  }

 private:
  DeviceBuffer buf_;
  int64_t n_ = 0;
};

// Waits for the device, then compares `got` with `want`.
void ExpectMatches(const DeviceTensor& got, const HostTensor& want,
                   double tolerance) {
  ASSERT_OK(CudaStatus(cudaDeviceSynchronize(), "synchronize"));
  std::vector<float> values;
  bool padding_ok = false;
  ASSERT_OK(got.Download(&values, &padding_ok));
  EXPECT_TRUE(padding_ok) << "a write landed in the row padding";
  EXPECT_LT(RelativeError(values, want.data), tolerance);
}

// How the outputs and inputs of one run are laid out.
enum class Layout {
  kContiguous,
  kPadded,     // rows padded by 8 elements: strided, still 16-byte aligned
  kUnaligned,  // rows padded by 3 elements: the scalar path
  kInPlace,    // out is the (first) input
};

const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kContiguous:
      return "contiguous";
    case Layout::kPadded:
      return "padded";
    case Layout::kUnaligned:
      return "unaligned";
    case Layout::kInPlace:
      return "in_place";
  }
  return "?";
}

int64_t Pad(Layout l) {
  return l == Layout::kPadded ? 8 : l == Layout::kUnaligned ? 3 : 0;
}

// Every layout for small problems; contiguous and in place for large ones.
std::vector<Layout> Layouts(int64_t numel) {
  if (numel > (1 << 20)) return {Layout::kContiguous, Layout::kInPlace};
  return {Layout::kContiguous, Layout::kPadded, Layout::kUnaligned,
          Layout::kInPlace};
}

constexpr int64_t kSizes[] = {1, 7, 63, 65, 1000};

// [rows, cols] pairs: every pair of kSizes plus a realistic hidden state.
std::vector<std::pair<int64_t, int64_t>> Shapes2D() {
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int64_t r : kSizes) {
    for (int64_t c : kSizes) shapes.emplace_back(r, c);
  }
  shapes.emplace_back(4096, 2048);
  return shapes;
}

struct DTypes {
  DType act;
  DType weight;
};

std::string DTypesName(const ::testing::TestParamInfo<DTypes>& info) {
  return absl::StrCat("act_", DTypeName(info.param.act), "_weight_",
                      DTypeName(info.param.weight));
}

class ElementwiseOpsTest : public ::testing::TestWithParam<DTypes> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    cpu_ = std::move(created).value();
  }

  std::unique_ptr<CpuKernels> cpu_;
  std::mt19937 rng_{20240611};
};

TEST_P(ElementwiseOpsTest, RmsNorm) {
  const DTypes dt = GetParam();
  for (const auto& [rows, dim] : Shapes2D()) {
    for (bool zero_centered : {false, true}) {
      for (Layout layout : Layouts(rows * dim)) {
        SCOPED_TRACE(absl::StrCat(rows, "x", dim, " zero_centered ",
                                  zero_centered, " ", LayoutName(layout)));
        const HostTensor x = Random({rows, dim}, &rng_, dt.act, -2.0f, 2.0f);
        const float w_range = zero_centered ? 0.5f : 1.0f;
        const HostTensor w = Random({dim}, &rng_, dt.weight, -w_range, w_range);
        HostTensor want({rows, dim});
        ASSERT_OK(cpu_->RmsNorm(x.view(), w.view(), kEps, zero_centered,
                                want.view(), Stream()));
        DeviceTensor dx, dw, dout;
        ASSERT_OK(dx.Init(x, dt.act, Pad(layout)));
        ASSERT_OK(dw.Init(w, dt.weight));
        const DeviceTensor* result = &dx;
        if (layout != Layout::kInPlace) {
          ASSERT_OK(
              dout.Init(HostTensor({rows, dim}, NAN), dt.act, Pad(layout) * 2));
          result = &dout;
        }
        ASSERT_OK(CudaRmsNorm(dx.view(), dw.view(), kEps, zero_centered,
                              result->view(), Stream()));
        ExpectMatches(*result, want, Tolerance(dt.act));
      }
    }
  }
}

TEST_P(ElementwiseOpsTest, RmsNormNarrowsF32ToBf16) {
  const DTypes dt = GetParam();
  for (const auto& [rows, dim] : Shapes2D()) {
    for (Layout layout : {Layout::kContiguous, Layout::kPadded}) {
      SCOPED_TRACE(absl::StrCat(rows, "x", dim, " ", LayoutName(layout)));
      const HostTensor x = Random({rows, dim}, &rng_, DType::kF32, -2.0f, 2.0f);
      const HostTensor w = Random({dim}, &rng_, dt.weight, -1.0f, 1.0f);
      HostTensor want({rows, dim});
      ASSERT_OK(
          cpu_->RmsNorm(x.view(), w.view(), kEps, true, want.view(), Stream()));
      DeviceTensor dx, dw, dout;
      ASSERT_OK(dx.Init(x, DType::kF32, Pad(layout)));
      ASSERT_OK(dw.Init(w, dt.weight));
      ASSERT_OK(
          dout.Init(HostTensor({rows, dim}, NAN), DType::kBF16, Pad(layout)));
      ASSERT_OK(
          CudaRmsNorm(dx.view(), dw.view(), kEps, true, dout.view(), Stream()));
      ExpectMatches(dout, want, Tolerance(DType::kBF16));
    }
  }
  // The gated norm narrows too.
  {
    const HostTensor gx = Random({65, 128}, &rng_, DType::kF32, -2.0f, 2.0f);
    const HostTensor gz = Random({65, 128}, &rng_, DType::kF32, -4.0f, 4.0f);
    const HostTensor gw = Random({128}, &rng_, dt.weight);
    HostTensor want({65, 128});
    ASSERT_OK(cpu_->RmsNormGated(gx.view(), gz.view(), gw.view(), kEps,
                                 want.view(), Stream()));
    DeviceTensor dx, dz, dw, dout;
    ASSERT_OK(dx.Init(gx, DType::kF32));
    ASSERT_OK(dz.Init(gz, DType::kF32));
    ASSERT_OK(dw.Init(gw, dt.weight));
    ASSERT_OK(dout.Init(HostTensor({65, 128}, NAN), DType::kBF16));
    ASSERT_OK(CudaRmsNormGated(dx.view(), dz.view(), dw.view(), kEps,
                               dout.view(), Stream()));
    ExpectMatches(dout, want, Tolerance(DType::kBF16));
  }
  // Narrowing in place is refused.
  const HostTensor x = Random({4, 64}, &rng_, DType::kF32, -2.0f, 2.0f);
  const HostTensor w = Random({64}, &rng_, DType::kF32);
  DeviceTensor dx, dw;
  ASSERT_OK(dx.Init(x, DType::kF32, 0));
  ASSERT_OK(dw.Init(w, DType::kF32));
  TensorView narrowed = dx.view();
  narrowed.dtype = DType::kBF16;
  EXPECT_EQ(
      CudaRmsNorm(dx.view(), dw.view(), kEps, true, narrowed, Stream()).code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(ElementwiseOpsTest, RmsNormGated) {
  const DTypes dt = GetParam();
  for (const auto& [rows, dim] : Shapes2D()) {
    for (Layout layout : Layouts(rows * dim)) {
      SCOPED_TRACE(absl::StrCat(rows, "x", dim, " ", LayoutName(layout)));
      const HostTensor x = Random({rows, dim}, &rng_, dt.act, -2.0f, 2.0f);
      const HostTensor z = Random({rows, dim}, &rng_, dt.act, -4.0f, 4.0f);
      const HostTensor w = Random({dim}, &rng_, dt.weight);
      HostTensor want({rows, dim});
      ASSERT_OK(cpu_->RmsNormGated(x.view(), z.view(), w.view(), kEps,
                                   want.view(), Stream()));
      DeviceTensor dx, dz, dw, dout;
      ASSERT_OK(dx.Init(x, dt.act, Pad(layout)));
      ASSERT_OK(dz.Init(z, dt.act, Pad(layout)));
      ASSERT_OK(dw.Init(w, dt.weight));
      const DeviceTensor* result = &dx;
      if (layout != Layout::kInPlace) {
        ASSERT_OK(dout.Init(HostTensor({rows, dim}, NAN), dt.act, Pad(layout)));
        result = &dout;
      }
      ASSERT_OK(CudaRmsNormGated(dx.view(), dz.view(), dw.view(), kEps,
                                 result->view(), Stream()));
      ExpectMatches(*result, want, Tolerance(dt.act));
    }
  }
}

TEST_P(ElementwiseOpsTest, Rope) {
  const DTypes dt = GetParam();
  struct Heads {
    int64_t heads;
    int64_t head_dim;
    int rot_dim;
  };
  // Full and partial rotary; the last two are Qwen3-Next-like shapes.
  const Heads kHeads[] = {{1, 2, 2},    {3, 64, 64},   {5, 130, 66},
                          {7, 256, 64}, {2, 128, 128}, {65, 7, 6}};
  std::vector<std::pair<int64_t, Heads>> cases;
  for (int64_t t : kSizes) {
    for (const Heads& h : kHeads) cases.emplace_back(t, h);
  }
  cases.emplace_back(4096, Heads{16, 256, 64});
  cases.emplace_back(4096, Heads{32, 128, 128});
  for (const auto& [tokens, h] : cases) {
    for (float theta : {10000.0f, 1e7f}) {
      for (Layout layout : {Layout::kContiguous, Layout::kUnaligned}) {
        SCOPED_TRACE(absl::StrCat(tokens, "x", h.heads, "x", h.head_dim,
                                  " rot ", h.rot_dim, " theta ", theta, " ",
                                  LayoutName(layout)));
        const HostTensor x =
            Random({tokens, h.heads, h.head_dim}, &rng_, dt.act, -2.0f, 2.0f);
        std::vector<int32_t> pos(static_cast<size_t>(tokens));
        std::uniform_int_distribution<int32_t> dist(0, 200000);
        for (int32_t& p : pos) p = dist(rng_);
        if (tokens > 1) pos[1] = 0;
        HostTensor want = x;
        ASSERT_OK(cpu_->Rope(want.view(), HostI32::FromVector(pos).view(),
                             h.rot_dim, theta, Stream()));
        DeviceTensor dx;
        DeviceI32 dpos;
        ASSERT_OK(dx.Init(x, dt.act, Pad(layout)));
        ASSERT_OK(dpos.Init(pos));
        ASSERT_OK(CudaRope(dx.view(), dpos.view(), h.rot_dim, theta, Stream()));
        ExpectMatches(dx, want, Tolerance(dt.act));
      }
    }
  }
}

enum class Binary { kAdd, kSwiGlu, kSigmoidGate };

class BinaryOpsTest : public ElementwiseOpsTest {
 protected:
  void Check(Binary op) {
    const DType act = GetParam().act;
    for (const auto& [rows, cols] : Shapes2D()) {
      std::vector<Layout> layouts = Layouts(rows * cols);
      for (Layout layout : layouts) {
        // In place on either input.
        for (int alias : layout == Layout::kInPlace ? std::vector<int>{0, 1}
                                                    : std::vector<int>{0}) {
          SCOPED_TRACE(absl::StrCat(rows, "x", cols, " ", LayoutName(layout),
                                    " alias ", alias));
          const HostTensor a = Random({rows, cols}, &rng_, act, -4.0f, 4.0f);
          const HostTensor b = Random({rows, cols}, &rng_, act, -4.0f, 4.0f);
          HostTensor want({rows, cols});
          ASSERT_OK(Cpu(op, a.view(), b.view(), want.view()));
          DeviceTensor da, db, dout;
          ASSERT_OK(da.Init(a, act, Pad(layout)));
          ASSERT_OK(db.Init(b, act, Pad(layout) == 8 ? 16 : Pad(layout)));
          const DeviceTensor* result = alias == 0 ? &da : &db;
          if (layout != Layout::kInPlace) {
            ASSERT_OK(
                dout.Init(HostTensor({rows, cols}, NAN), act, Pad(layout)));
            result = &dout;
          }
          ASSERT_OK(Gpu(op, da.view(), db.view(), result->view()));
          ExpectMatches(*result, want, Tolerance(act));
        }
      }
    }
  }

  absl::Status Cpu(Binary op, const TensorView& a, const TensorView& b,
                   const TensorView& out) {
    switch (op) {
      case Binary::kAdd:
        return cpu_->Add(a, b, out, Stream());
      case Binary::kSwiGlu:
        return cpu_->SwiGlu(a, b, out, Stream());
      case Binary::kSigmoidGate:
        return cpu_->SigmoidGate(a, b, out, Stream());
    }
    return absl::InternalError("unknown op");
  }
  absl::Status Gpu(Binary op, const TensorView& a, const TensorView& b,
                   const TensorView& out) {
    switch (op) {
      case Binary::kAdd:
        return CudaAdd(a, b, out, Stream());
      case Binary::kSwiGlu:
        return CudaSwiGlu(a, b, out, Stream());
      case Binary::kSigmoidGate:
        return CudaSigmoidGate(a, b, out, Stream());
    }
    return absl::InternalError("unknown op");
  }
};

TEST_P(BinaryOpsTest, Add) { Check(Binary::kAdd); }
TEST_P(BinaryOpsTest, SwiGlu) { Check(Binary::kSwiGlu); }
TEST_P(BinaryOpsTest, SigmoidGate) { Check(Binary::kSigmoidGate); }

TEST_P(ElementwiseOpsTest, Embedding) {
  const DTypes dt = GetParam();
  std::vector<std::pair<int64_t, int64_t>> cases;  // (tokens, dim)
  for (int64_t t : kSizes) {
    for (int64_t d : kSizes) cases.emplace_back(t, d);
  }
  cases.emplace_back(4096, 2048);
  for (const auto& [tokens, dim] : cases) {
    for (int64_t vocab : {int64_t{1}, int64_t{1000}}) {
      for (Layout layout :
           {Layout::kContiguous, Layout::kPadded, Layout::kUnaligned}) {
        SCOPED_TRACE(absl::StrCat(tokens, " ids, vocab ", vocab, ", dim ", dim,
                                  " ", LayoutName(layout)));
        const HostTensor table = Random({vocab, dim}, &rng_, dt.weight);
        std::vector<int32_t> ids(static_cast<size_t>(tokens));
        std::uniform_int_distribution<int32_t> dist(
            0, static_cast<int32_t>(vocab - 1));
        for (int32_t& id : ids) id = dist(rng_);
        ids.back() = static_cast<int32_t>(vocab - 1);
        HostTensor want({tokens, dim});
        ASSERT_OK(cpu_->Embedding(HostI32::FromVector(ids).view(), table.view(),
                                  want.view(), Stream()));
        DeviceTensor dtable, dout;
        DeviceI32 dids;
        ASSERT_OK(dtable.Init(table, dt.weight, Pad(layout)));
        ASSERT_OK(
            dout.Init(HostTensor({tokens, dim}, NAN), dt.act, Pad(layout)));
        ASSERT_OK(dids.Init(ids));
        ASSERT_OK(
            CudaEmbedding(dids.view(), dtable.view(), dout.view(), Stream()));
        // A pure copy: exact unless the output rounds f32 to bf16.
        ExpectMatches(dout, want,
                      dt.act == DType::kBF16 && dt.weight == DType::kF32
                          ? Tolerance(DType::kBF16)
                          : 1e-7);
      }
    }
  }
}

TEST_P(ElementwiseOpsTest, EmbeddingRejectsOutOfRangeIds) {
  const DTypes dt = GetParam();
  constexpr int64_t kVocab = 50;
  constexpr int64_t kDim = 16;
  const HostTensor table = Random({kVocab, kDim}, &rng_, dt.weight);
  DeviceTensor dtable;
  ASSERT_OK(dtable.Init(table, dt.weight));
  struct Bad {
    std::vector<int32_t> ids;
    const char* message;
  };
  const Bad kBad[] = {
      {{0, 1, 2, -1, 4, 50}, "Embedding: ids[3] = -1 is outside [0, 50)"},
      {{49, 50}, "ids[1] = 50 is outside [0, 50)"},
      {{7, 3, 2147483647}, "ids[2] = 2147483647"},
      {{-2147483647 - 1}, "ids[0] = -2147483648"},
  };
  for (const Bad& bad : kBad) {
    SCOPED_TRACE(bad.message);
    const int64_t tokens = static_cast<int64_t>(bad.ids.size());
    DeviceTensor dout;
    DeviceI32 dids;
    ASSERT_OK(dout.Init(HostTensor({tokens, kDim}, kSentinel), dt.act));
    ASSERT_OK(dids.Init(bad.ids));
    const absl::Status status =
        CudaEmbedding(dids.view(), dtable.view(), dout.view(), Stream());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(bad.message));
    // Nothing was written.
    ExpectMatches(dout, HostTensor({tokens, kDim}, kSentinel), 1e-7);
  }
  // The stream is still usable afterwards.
  DeviceTensor dout;
  DeviceI32 dids;
  ASSERT_OK(dout.Init(HostTensor({2, kDim}), dt.act));
  ASSERT_OK(dids.Init({3, 4}));
  ASSERT_OK(CudaEmbedding(dids.view(), dtable.view(), dout.view(), Stream()));
}

TEST_P(ElementwiseOpsTest, GdnGates) {
  const DTypes dt = GetParam();
  std::vector<std::pair<int64_t, int64_t>> cases;  // (tokens, heads)
  for (int64_t t : kSizes) {
    for (int64_t h : {1, 7, 32, 65}) cases.emplace_back(t, h);
  }
  cases.emplace_back(4096, 32);
  for (const auto& [tokens, heads] : cases) {
    for (DType gate : {DType::kF32, dt.act}) {
      for (Layout layout : {Layout::kContiguous, Layout::kUnaligned}) {
        SCOPED_TRACE(absl::StrCat(tokens, "x", heads, " gates ",
                                  DTypeName(gate), " ", LayoutName(layout)));
        HostTensor a = Random({tokens, heads}, &rng_, dt.act, -6.0f, 6.0f);
        a[0] = 25.0f;  // above softplus's threshold
        const HostTensor b =
            Random({tokens, heads}, &rng_, dt.act, -6.0f, 6.0f);
        const HostTensor a_log = Random({heads}, &rng_, dt.weight, -2.0f, 2.0f);
        const HostTensor dt_bias = Random({heads}, &rng_, dt.weight);
        HostTensor want_g({tokens, heads});
        HostTensor want_beta({tokens, heads});
        ASSERT_OK(cpu_->GdnGates(a.view(), b.view(), a_log.view(),
                                 dt_bias.view(), want_g.view(),
                                 want_beta.view(), Stream()));
        DeviceTensor da, db, dalog, dbias, dg, dbeta;
        ASSERT_OK(da.Init(a, dt.act, Pad(layout)));
        ASSERT_OK(db.Init(b, dt.act));
        ASSERT_OK(dalog.Init(a_log, dt.weight));
        ASSERT_OK(dbias.Init(dt_bias, dt.weight));
        ASSERT_OK(dg.Init(HostTensor({tokens, heads}, NAN), gate, Pad(layout)));
        ASSERT_OK(dbeta.Init(HostTensor({tokens, heads}, NAN), gate));
        ASSERT_OK(CudaGdnGates(da.view(), db.view(), dalog.view(), dbias.view(),
                               dg.view(), dbeta.view(), Stream()));
        ExpectMatches(dg, want_g, Tolerance(gate));
        ExpectMatches(dbeta, want_beta, Tolerance(gate));
      }
    }
  }
}

// Random cu_seqlens splitting `tokens` into `batch` sequences (some may be
// empty).
std::vector<int32_t> RandomCuSeqlens(int64_t tokens, int64_t batch,
                                     std::mt19937* rng) {
  std::vector<int32_t> cu(static_cast<size_t>(batch + 1));
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(tokens));
  for (int32_t& c : cu) c = dist(*rng);
  cu.front() = 0;
  cu.back() = static_cast<int32_t>(tokens);
  std::sort(cu.begin(), cu.end());
  return cu;
}

// `batch` distinct slots of a pool of `pool`.
std::vector<int32_t> RandomSlots(int64_t batch, int64_t pool,
                                 std::mt19937* rng) {
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), *rng);
  perm.resize(static_cast<size_t>(batch));
  return perm;
}

struct ConvCase {
  int64_t tokens;
  int64_t batch;
  int64_t channels;
  int64_t width;
};

// Runs CausalConv1d (update: the decode form) on one case and compares out
// and the whole state pool with CpuKernels.
// out is in dt.act unless `narrow` (bf16 out for an f32 x).
void CheckConv(CpuKernels* cpu, const DTypes& dt, const ConvCase& c,
               bool update, bool silu, Layout layout, std::mt19937* rng,
               bool narrow = false) {
  const DType out_dtype = narrow ? DType::kBF16 : dt.act;
  const int64_t pool = c.batch + 3;
  const HostTensor x = Random({c.tokens, c.channels}, rng, dt.act, -2.0f, 2.0f);
  const HostTensor weight = Random({c.channels, c.width}, rng, dt.weight);
  const HostTensor state =
      Random({pool, c.channels, c.width - 1}, rng, DType::kF32);
  const std::vector<int32_t> cu =
      update ? std::vector<int32_t>() : RandomCuSeqlens(c.tokens, c.batch, rng);
  const std::vector<int32_t> slots = RandomSlots(c.batch, pool, rng);

  HostTensor want_state = state;
  HostTensor want({c.tokens, c.channels});
  if (update) {
    ASSERT_OK(cpu->CausalConv1dUpdate(
        x.view(), weight.view(), want_state.view(),
        HostI32::FromVector(slots).view(), silu, want.view(), Stream()));
  } else {
    ASSERT_OK(cpu->CausalConv1d(
        x.view(), weight.view(), HostI32::FromVector(cu).view(),
        want_state.view(), HostI32::FromVector(slots).view(), silu, want.view(),
        Stream()));
  }

  DeviceTensor dx, dw, dstate, dout;
  DeviceI32 dcu, dslots;
  ASSERT_OK(dx.Init(x, dt.act, Pad(layout)));
  ASSERT_OK(dw.Init(weight, dt.weight, Pad(layout)));
  ASSERT_OK(dstate.Init(state, DType::kF32, Pad(layout)));
  ASSERT_OK(dslots.Init(slots));
  const DeviceTensor* result = &dx;
  if (layout != Layout::kInPlace) {
    ASSERT_OK(dout.Init(HostTensor({c.tokens, c.channels}, NAN), out_dtype,
                        Pad(layout)));
    result = &dout;
  }
  if (update) {
    ASSERT_OK(CudaCausalConv1dUpdate(dx.view(), dw.view(), dstate.view(),
                                     dslots.view(), silu, result->view(),
                                     Stream()));
  } else {
    ASSERT_OK(dcu.Init(cu));
    ASSERT_OK(CudaCausalConv1d(dx.view(), dw.view(), dcu.view(), dstate.view(),
                               dslots.view(), silu, result->view(), Stream()));
  }
  ExpectMatches(*result, want, Tolerance(out_dtype));
  // The state holds inputs (exact in either dtype): slots not in the batch
  // stay as they were.
  ASSERT_OK(CudaStatus(cudaDeviceSynchronize(), "synchronize"));
  std::vector<float> got_state;
  bool padding_ok = false;
  ASSERT_OK(dstate.Download(&got_state, &padding_ok));
  EXPECT_TRUE(padding_ok);
  EXPECT_EQ(MaxAbsDiff(got_state, want_state.data), 0.0);
}

TEST_P(ElementwiseOpsTest, CausalConv1d) {
  const DTypes dt = GetParam();
  std::vector<ConvCase> cases;
  for (int64_t t : kSizes) {
    for (int64_t ch : kSizes) {
      for (int64_t b : {int64_t{1}, int64_t{3}, int64_t{6}}) {
        cases.push_back({t, b, ch, 4});
      }
    }
  }
  for (int64_t w : {1, 2, 3, 5, 16}) cases.push_back({65, 4, 63, w});
  cases.push_back({4096, 4, 8192, 4});  // Qwen3-Next-like qkv conv prefill
  cases.push_back({700, 5, 264, 3});    // several channels per thread
  int i = 0;
  for (const ConvCase& c : cases) {
    for (Layout layout : Layouts(c.tokens * c.channels)) {
      const bool silu = (i++ % 2) == 0;
      SCOPED_TRACE(absl::StrCat("T ", c.tokens, " B ", c.batch, " C ",
                                c.channels, " W ", c.width, " silu ", silu, " ",
                                LayoutName(layout)));
      CheckConv(cpu_.get(), dt, c, /*update=*/false, silu, layout, &rng_);
    }
  }
}

// f32 inputs narrowed to a bf16 out (what the model's prefill feeds the
// chunked delta rule); long multi-sequence batches cross many segments.
TEST_P(ElementwiseOpsTest, CausalConv1dNarrowsToBf16) {
  const DTypes dt = GetParam();
  if (dt.act != DType::kF32) GTEST_SKIP() << "narrows f32 only";
  const ConvCase cases[] = {{1, 1, 7, 4},
                            {65, 6, 63, 4},
                            {1000, 3, 65, 4},
                            {3000, 5, 130, 3},
                            {257, 40, 33, 4},
                            {4096, 1, 1000, 16},
                            // 4 and 8 channels per thread, 16-byte reads
                            {2000, 3, 1024, 4},
                            {300, 7, 96, 2}};
  for (const ConvCase& c : cases) {
    for (Layout layout : Layouts(c.tokens * c.channels)) {
      if (layout == Layout::kInPlace) continue;
      SCOPED_TRACE(absl::StrCat("T ", c.tokens, " B ", c.batch, " C ",
                                c.channels, " W ", c.width, " ",
                                LayoutName(layout)));
      CheckConv(cpu_.get(), dt, c, /*update=*/false, /*silu=*/true, layout,
                &rng_, /*narrow=*/true);
    }
  }
}

TEST_P(ElementwiseOpsTest, CausalConv1dUpdate) {
  const DTypes dt = GetParam();
  std::vector<ConvCase> cases;
  for (int64_t b : kSizes) {
    for (int64_t ch : kSizes) cases.push_back({b, b, ch, 4});
  }
  for (int64_t w : {1, 2, 5, 16}) cases.push_back({7, 7, 65, w});
  cases.push_back({256, 256, 8192, 4});
  int i = 0;
  for (const ConvCase& c : cases) {
    for (Layout layout : Layouts(c.tokens * c.channels)) {
      const bool silu = (i++ % 2) == 0;
      SCOPED_TRACE(absl::StrCat("B ", c.batch, " C ", c.channels, " W ",
                                c.width, " silu ", silu, " ",
                                LayoutName(layout)));
      CheckConv(cpu_.get(), dt, c, /*update=*/true, silu, layout, &rng_);
    }
  }
}

// A sequence whose slot is outside the pool (padding) gets zero output and
// touches no state; the others are unaffected.
TEST_P(ElementwiseOpsTest, CausalConv1dSkipsPaddingSlots) {
  const DTypes dt = GetParam();
  constexpr int64_t kT = 10, kC = 33, kW = 4, kPool = 2;
  const HostTensor x = Random({kT, kC}, &rng_, dt.act);
  const HostTensor weight = Random({kC, kW}, &rng_, dt.weight);
  const HostTensor state = Random({kPool, kC, kW - 1}, &rng_, DType::kF32);
  // Sequence 0 (rows 0..3) is padding; sequence 1 (rows 4..9) uses slot 1.
  const std::vector<int32_t> cu = {0, 4, 10};
  const std::vector<int32_t> slots = {-1, 1};
  HostTensor want_state = state;
  HostTensor want1({6, kC});
  HostTensor x1({6, kC});
  std::copy(x.data.begin() + 4 * kC, x.data.end(), x1.data.begin());
  ASSERT_OK(cpu_->CausalConv1d(
      x1.view(), weight.view(), HostI32::FromVector({0, 6}).view(),
      want_state.view(), HostI32::FromVector({1}).view(), true, want1.view(),
      Stream()));
  HostTensor want({kT, kC}, 0.0f);
  std::copy(want1.data.begin(), want1.data.end(), want.data.begin() + 4 * kC);

  DeviceTensor dx, dw, dstate, dout;
  DeviceI32 dcu, dslots;
  ASSERT_OK(dx.Init(x, dt.act));
  ASSERT_OK(dw.Init(weight, dt.weight));
  ASSERT_OK(dstate.Init(state, DType::kF32));
  ASSERT_OK(dout.Init(HostTensor({kT, kC}, NAN), dt.act));
  ASSERT_OK(dcu.Init(cu));
  ASSERT_OK(dslots.Init(slots));
  ASSERT_OK(CudaCausalConv1d(dx.view(), dw.view(), dcu.view(), dstate.view(),
                             dslots.view(), true, dout.view(), Stream()));
  ExpectMatches(dout, want, Tolerance(dt.act));
  std::vector<float> got_state;
  bool padding_ok = false;
  ASSERT_OK(dstate.Download(&got_state, &padding_ok));
  EXPECT_EQ(MaxAbsDiff(got_state, want_state.data), 0.0);
}

const DTypes kDTypes[] = {{DType::kF32, DType::kF32},
                          {DType::kBF16, DType::kBF16},
                          {DType::kBF16, DType::kF32},
                          {DType::kF32, DType::kBF16}};

INSTANTIATE_TEST_SUITE_P(DTypes, ElementwiseOpsTest,
                         ::testing::ValuesIn(kDTypes), DTypesName);
INSTANTIATE_TEST_SUITE_P(DTypes, BinaryOpsTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16}),
                         DTypesName);

}  // namespace
}  // namespace deltaserve
