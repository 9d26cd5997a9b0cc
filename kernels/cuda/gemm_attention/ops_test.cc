// Checks the GPU GEMM, KV append and paged attention against CpuKernels on
// random inputs of odd sizes, in f32 and bf16 (CPU inputs are rounded to bf16
// first). The argument checks run anywhere (views point at host memory that
// is never dereferenced); the numerical cases skip without a CUDA device.
#include "kernels/cuda/gemm_attention/ops.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_attention/gemm.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/kernels.h"
#include "kernels/status.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::MaxAbsDiff;
using ::deltaserve::testing::RelativeError;
using ::testing::HasSubstr;

constexpr double kF32Tolerance = 1e-4;
constexpr double kBf16Tolerance = 2e-2;

double Tolerance(DType t) {
  return t == DType::kBF16 ? kBf16Tolerance : kF32Tolerance;
}

std::vector<float> Random(size_t n, std::mt19937* rng, float lo = -1.0f,
                          float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& e : x) e = dist(*rng);
  return x;
}

// Rounds every element to the nearest bf16 when dtype is bf16.
void RoundTo(DType dtype, std::vector<float>* x) {
  if (dtype != DType::kBF16) return;
  for (float& e : *x) e = Bf16ToF32(F32ToBf16(e));
}

// A device buffer of f32, bf16 or i32 elements that remembers its element
// type and count.
class DeviceBuffer {
 public:
  // Uploads `host` converted to `dtype` (f32 or bf16).
  absl::Status UploadFloats(const std::vector<float>& host, DType dtype) {
    dtype_ = dtype;
    size_ = host.size();
    if (dtype == DType::kBF16) {
      std::vector<uint16_t> bits(size_);
      for (size_t i = 0; i < size_; ++i) bits[i] = F32ToBf16(host[i]);
      return buf_.Upload(bits);
    }
    return buf_.Upload(host);
  }
  absl::Status UploadI32(const std::vector<int32_t>& host) {
    dtype_ = DType::kI32;
    size_ = host.size();
    return buf_.Upload(host);
  }
  absl::Status DownloadFloats(std::vector<float>* host) const {
    host->resize(size_);
    if (dtype_ == DType::kBF16) {
      std::vector<uint16_t> bits(size_);
      DS_RETURN_IF_ERROR(buf_.Download(&bits));
      for (size_t i = 0; i < size_; ++i) (*host)[i] = Bf16ToF32(bits[i]);
      return absl::OkStatus();
    }
    return buf_.Download(host);
  }

  // A view of the buffer with `shape` (contiguous) in device memory.
  TensorView View(std::initializer_list<int64_t> shape) const {
    return TensorView::Contiguous(buf_.get(), dtype_, shape, Device::kCuda);
  }
  void* get() const { return buf_.get(); }

 private:
  testing::DeviceBuffer buf_;
  DType dtype_ = DType::kF32;
  size_t size_ = 0;
};

// A host f32 view with explicit strides.
TensorView HostView(std::vector<float>* data,
                    std::initializer_list<int64_t> shape,
                    std::initializer_list<int64_t> strides) {
  TensorView t = TensorView::Contiguous(data->data(), DType::kF32, shape);
  int i = 0;
  for (int64_t s : strides) t.strides[i++] = s;
  return t;
}

std::unique_ptr<CpuKernels> MakeCpu() {
  auto created = CpuKernels::Create(CpuKernels::Options());
  DS_CHECK(created.ok());
  return std::move(created).value();
}

// ------------------------------------------------------------------- Gemm

struct GemmCase {
  int64_t m;
  int64_t n;
  int64_t k;
  DType in;
  DType out;
  bool accumulate;
  bool strided;  // x and out rows padded
};

std::ostream& operator<<(std::ostream& os, const GemmCase& c) {
  return os << "M" << c.m << "_N" << c.n << "_K" << c.k << "_"
            << DTypeName(c.in) << "_to_" << DTypeName(c.out)
            << (c.accumulate ? "_acc" : "") << (c.strided ? "_strided" : "");
}

class GemmTest : public ::testing::TestWithParam<GemmCase> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    cpu_ = MakeCpu();
    auto gemm = CublasLtGemm::Create(CublasLtGemm::Options());
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    gemm_ = std::move(gemm).value();
  }

  std::unique_ptr<CpuKernels> cpu_;
  std::unique_ptr<CublasLtGemm> gemm_;
};

TEST_P(GemmTest, MatchesCpu) {
  const GemmCase c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.m * 31 + c.n * 7 + c.k));
  const int64_t ldx = c.k + (c.strided ? 3 : 0);
  const int64_t ldo = c.n + (c.strided ? 5 : 0);
  std::vector<float> x = Random(c.m * ldx, &rng);
  std::vector<float> w = Random(c.n * c.k, &rng);
  std::vector<float> out = Random(c.m * ldo, &rng);
  RoundTo(c.in, &x);
  RoundTo(c.in, &w);
  RoundTo(c.out, &out);

  DeviceBuffer dx, dw, dout;
  ASSERT_TRUE(dx.UploadFloats(x, c.in).ok());
  ASSERT_TRUE(dw.UploadFloats(w, c.in).ok());
  ASSERT_TRUE(dout.UploadFloats(out, c.out).ok());
  TensorView vx = dx.View({c.m, c.k});
  vx.strides[0] = ldx;
  TensorView vout = dout.View({c.m, c.n});
  vout.strides[0] = ldo;
  // Two runs: the second one uses the cached plan.
  for (int rep = 0; rep < 2; ++rep) {
    if (rep == 1) {
      ASSERT_TRUE(dout.UploadFloats(out, c.out).ok());
    }
    ASSERT_TRUE(cuda_ops::Gemm(gemm_.get(), vx, dw.View({c.n, c.k}), vout,
                               c.accumulate, Stream())
                    .ok());
  }
  EXPECT_EQ(gemm_->cached_plans(), 1u);
  ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sync").ok());
  std::vector<float> got;
  ASSERT_TRUE(dout.DownloadFloats(&got).ok());

  std::vector<float> want = out;
  ASSERT_TRUE(cpu_->Gemm(HostView(&x, {c.m, c.k}, {ldx, 1}),
                         HostView(&w, {c.n, c.k}, {c.k, 1}),
                         HostView(&want, {c.m, c.n}, {ldo, 1}), c.accumulate,
                         Stream())
                  .ok());
  // Padding columns must be untouched.
  for (int64_t r = 0; r < c.m; ++r) {
    for (int64_t j = c.n; j < ldo; ++j) {
      ASSERT_EQ(got[r * ldo + j], out[r * ldo + j]) << "row " << r;
    }
  }
  EXPECT_LE(RelativeError(got, want), Tolerance(c.out))
      << "max abs diff " << MaxAbsDiff(got, want);
}

std::vector<GemmCase> GemmCases() {
  const int64_t shapes[][3] = {
      {1, 1, 1},       {7, 63, 65},   {63, 65, 7},       {65, 1000, 63},
      {1000, 7, 1000}, {1, 1000, 65}, {1000, 1000, 1000}};
  std::vector<GemmCase> cases;
  const std::pair<DType, DType> types[] = {{DType::kF32, DType::kF32},
                                           {DType::kBF16, DType::kBF16},
                                           {DType::kBF16, DType::kF32}};
  int i = 0;
  for (const auto& s : shapes) {
    for (const auto& t : types) {
      cases.push_back(
          {s[0], s[1], s[2], t.first, t.second, i % 2 == 1, i % 3 == 2});
      ++i;
    }
  }
  // Realistic projection sizes.
  cases.push_back({2048, 2048, 2048, DType::kBF16, DType::kBF16, false, false});
  cases.push_back({2048, 2048, 2048, DType::kF32, DType::kF32, true, false});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmTest, ::testing::ValuesIn(GemmCases()),
                         [](const ::testing::TestParamInfo<GemmCase>& info) {
                           std::ostringstream os;
                           os << info.param;
                           return os.str();
                         });

TEST(GemmRunTest, ZeroKZeroesOut) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  auto gemm = CublasLtGemm::Create(CublasLtGemm::Options());
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  DeviceBuffer dout;
  std::vector<float> ones(12, 1.0f);
  ASSERT_TRUE(dout.UploadFloats(ones, DType::kF32).ok());
  DeviceBuffer dx;
  ASSERT_TRUE(dx.UploadFloats(ones, DType::kF32).ok());
  TensorView x = dx.View({3, 0});
  TensorView w = dx.View({4, 0});
  ASSERT_TRUE(
      cuda_ops::Gemm(gemm->get(), x, w, dout.View({3, 4}), false, Stream())
          .ok());
  std::vector<float> got;
  ASSERT_TRUE(dout.DownloadFloats(&got).ok());
  EXPECT_EQ(got, std::vector<float>(12, 0.0f));
}

// --------------------------------------------------------------- Paged KV

// A varlen batch over paged KV: sequence b has n[b] new tokens after
// prefix[b] old ones; pages are assigned in a shuffled order, unused
// page-table entries hold −1.
struct PagedLayout {
  std::vector<int32_t> cu;
  std::vector<int32_t> start_pos;
  std::vector<int32_t> context_lens;
  std::vector<int32_t> page_table;
  int64_t batch = 0;
  int64_t tokens = 0;
  int64_t max_pages = 0;
  int64_t num_pages = 0;
};

// `min_pages`: the page table is at least this wide.
PagedLayout MakeLayout(const std::vector<int64_t>& n,
                       const std::vector<int64_t>& prefix, int64_t page_size,
                       std::mt19937* rng, int64_t min_pages = 0) {
  PagedLayout l;
  l.batch = static_cast<int64_t>(n.size());
  l.cu.push_back(0);
  int64_t max_ctx = 0;
  for (int64_t b = 0; b < l.batch; ++b) {
    l.cu.push_back(l.cu.back() + static_cast<int32_t>(n[b]));
    l.start_pos.push_back(static_cast<int32_t>(prefix[b]));
    l.context_lens.push_back(static_cast<int32_t>(prefix[b] + n[b]));
    max_ctx = std::max(max_ctx, prefix[b] + n[b]);
  }
  l.tokens = l.cu.back();
  l.max_pages = std::max((max_ctx + page_size - 1) / page_size + 1, min_pages);
  int64_t used = 0;
  for (int64_t b = 0; b < l.batch; ++b) {
    used += (l.context_lens[b] + page_size - 1) / page_size;
  }
  l.num_pages = used + 3;
  std::vector<int32_t> pages(static_cast<size_t>(l.num_pages));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), *rng);
  l.page_table.assign(static_cast<size_t>(l.batch * l.max_pages), -1);
  size_t next = 0;
  for (int64_t b = 0; b < l.batch; ++b) {
    const int64_t np = (l.context_lens[b] + page_size - 1) / page_size;
    for (int64_t p = 0; p < np; ++p) {
      l.page_table[b * l.max_pages + p] = pages[next++];
    }
  }
  return l;
}

struct KvCase {
  DType dtype;
  int64_t hkv;
  int64_t dim;
};

std::ostream& operator<<(std::ostream& os, const KvCase& c) {
  return os << DTypeName(c.dtype) << "_Hkv" << c.hkv << "_D" << c.dim;
}

class KvAppendTest : public ::testing::TestWithParam<KvCase> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    cpu_ = MakeCpu();
  }
  std::unique_ptr<CpuKernels> cpu_;
};

TEST_P(KvAppendTest, MatchesCpu) {
  const KvCase c = GetParam();
  constexpr int64_t kPageSize = 16;
  std::mt19937 rng(static_cast<unsigned>(c.hkv * 100 + c.dim));
  const PagedLayout l =
      MakeLayout({1, 7, 63, 65, 1000}, {0, 5, 17, 100, 3}, kPageSize, &rng);
  const int64_t row = c.hkv * c.dim;
  std::vector<float> k = Random(l.tokens * row, &rng);
  std::vector<float> v = Random(l.tokens * row, &rng);
  std::vector<float> kp = Random(l.num_pages * kPageSize * row, &rng);
  std::vector<float> vp = Random(l.num_pages * kPageSize * row, &rng);
  for (auto* t : {&k, &v, &kp, &vp}) RoundTo(c.dtype, t);

  DeviceBuffer dk, dv, dkp, dvp, dpt, dcu, dstart;
  ASSERT_TRUE(dk.UploadFloats(k, c.dtype).ok());
  ASSERT_TRUE(dv.UploadFloats(v, c.dtype).ok());
  ASSERT_TRUE(dkp.UploadFloats(kp, c.dtype).ok());
  ASSERT_TRUE(dvp.UploadFloats(vp, c.dtype).ok());
  ASSERT_TRUE(dpt.UploadI32(l.page_table).ok());
  ASSERT_TRUE(dcu.UploadI32(l.cu).ok());
  ASSERT_TRUE(dstart.UploadI32(l.start_pos).ok());
  const absl::Status s = cuda_ops::KvAppend(
      dk.View({l.tokens, c.hkv, c.dim}), dv.View({l.tokens, c.hkv, c.dim}),
      dkp.View({l.num_pages, kPageSize, c.hkv, c.dim}),
      dvp.View({l.num_pages, kPageSize, c.hkv, c.dim}),
      dpt.View({l.batch, l.max_pages}), dcu.View({l.batch + 1}),
      dstart.View({l.batch}), Stream());
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sync").ok());
  std::vector<float> got_k, got_v;
  ASSERT_TRUE(dkp.DownloadFloats(&got_k).ok());
  ASSERT_TRUE(dvp.DownloadFloats(&got_v).ok());

  std::vector<int32_t> pt = l.page_table, cu = l.cu, sp = l.start_pos;
  const absl::Status cs =
      cpu_->KvAppend(HostView(&k, {l.tokens, c.hkv, c.dim}, {row, c.dim, 1}),
                     HostView(&v, {l.tokens, c.hkv, c.dim}, {row, c.dim, 1}),
                     HostView(&kp, {l.num_pages, kPageSize, c.hkv, c.dim},
                              {kPageSize * row, row, c.dim, 1}),
                     HostView(&vp, {l.num_pages, kPageSize, c.hkv, c.dim},
                              {kPageSize * row, row, c.dim, 1}),
                     TensorView::I32(pt.data(), {l.batch, l.max_pages}),
                     TensorView::I32(cu.data(), {l.batch + 1}),
                     TensorView::I32(sp.data(), {l.batch}), Stream());
  ASSERT_TRUE(cs.ok()) << cs;
  EXPECT_EQ(got_k, kp);
  EXPECT_EQ(got_v, vp);
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvAppendTest,
                         ::testing::Values(KvCase{DType::kF32, 2, 64},
                                           KvCase{DType::kBF16, 2, 128},
                                           KvCase{DType::kF32, 16, 128},
                                           KvCase{DType::kBF16, 4, 256},
                                           KvCase{DType::kF32, 3, 6}),
                         [](const ::testing::TestParamInfo<KvCase>& info) {
                           std::ostringstream os;
                           os << info.param;
                           return os.str();
                         });

// ---------------------------------------------------------- PagedAttention

struct AttnCase {
  DType dtype;
  int64_t hq;
  int64_t hkv;
  int64_t dim;
  int window;
  std::vector<int64_t> n;       // queries per sequence
  std::vector<int64_t> prefix;  // old tokens per sequence
  std::string name;
  // Split-KV decoding: pass a workspace, widen the page table to this many
  // pages, record the call in a CUDA graph.
  bool workspace = false;
  int64_t table_pages = 0;
  bool graph = false;
};

std::ostream& operator<<(std::ostream& os, const AttnCase& c) {
  return os << c.name << "_" << DTypeName(c.dtype) << "_Hq" << c.hq << "_Hkv"
            << c.hkv << "_D" << c.dim << "_W" << c.window;
}

class PagedAttentionTest : public ::testing::TestWithParam<AttnCase> {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    cpu_ = MakeCpu();
  }
  std::unique_ptr<CpuKernels> cpu_;
};

// The workspace the split-KV cases pass (CudaKernels' size).
constexpr int64_t kWorkspaceBytes = int64_t{64} << 20;

// Runs `call` on a new non-blocking stream recorded into a CUDA graph, then
// replays the graph once and waits.
void RunInGraph(const std::function<absl::Status(Stream)>& call) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
            cudaSuccess);
  const absl::Status s = call(Stream{stream});
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(s.ok()) << s;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_P(PagedAttentionTest, MatchesCpu) {
  const AttnCase& c = GetParam();
  constexpr int64_t kPageSize = 16;
  std::mt19937 rng(static_cast<unsigned>(c.hq * 1000 + c.dim + c.window));
  const PagedLayout l =
      MakeLayout(c.n, c.prefix, kPageSize, &rng, c.table_pages);
  const int64_t qrow = c.hq * c.dim;
  const int64_t kvrow = c.hkv * c.dim;
  std::vector<float> q = Random(l.tokens * qrow, &rng, -2.0f, 2.0f);
  std::vector<float> kp = Random(l.num_pages * kPageSize * kvrow, &rng);
  std::vector<float> vp = Random(l.num_pages * kPageSize * kvrow, &rng);
  for (auto* t : {&q, &kp, &vp}) RoundTo(c.dtype, t);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dim));

  DeviceBuffer dq, dkp, dvp, dpt, dcu, dctx, dout;
  ASSERT_TRUE(dq.UploadFloats(q, c.dtype).ok());
  ASSERT_TRUE(dkp.UploadFloats(kp, c.dtype).ok());
  ASSERT_TRUE(dvp.UploadFloats(vp, c.dtype).ok());
  ASSERT_TRUE(dpt.UploadI32(l.page_table).ok());
  ASSERT_TRUE(dcu.UploadI32(l.cu).ok());
  ASSERT_TRUE(dctx.UploadI32(l.context_lens).ok());
  ASSERT_TRUE(
      dout.UploadFloats(std::vector<float>(l.tokens * qrow, 7.0f), c.dtype)
          .ok());
  testing::DeviceBuffer workspace;
  if (c.workspace) {
    // NaN everywhere: a partial result read before it is written shows.
    ASSERT_TRUE(workspace.Allocate(kWorkspaceBytes).ok());
    ASSERT_EQ(cudaMemset(workspace.get(), 0xff, kWorkspaceBytes), cudaSuccess);
  }
  auto call = [&](Stream stream) {
    return cuda_ops::PagedAttention(
        dq.View({l.tokens, c.hq, c.dim}),
        dkp.View({l.num_pages, kPageSize, c.hkv, c.dim}),
        dvp.View({l.num_pages, kPageSize, c.hkv, c.dim}),
        dpt.View({l.batch, l.max_pages}), dcu.View({l.batch + 1}),
        dctx.View({l.batch}), c.window, scale,
        dout.View({l.tokens, c.hq, c.dim}), workspace.get(),
        c.workspace ? kWorkspaceBytes : 0, stream);
  };
  if (c.graph) {
    RunInGraph(call);
    if (HasFatalFailure()) return;
  } else {
    const absl::Status s = call(Stream());
    ASSERT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sync").ok());
  std::vector<float> got;
  ASSERT_TRUE(dout.DownloadFloats(&got).ok());

  std::vector<float> want(l.tokens * qrow);
  std::vector<int32_t> pt = l.page_table, cu = l.cu, ctx = l.context_lens;
  const absl::Status cs = cpu_->PagedAttention(
      HostView(&q, {l.tokens, c.hq, c.dim}, {qrow, c.dim, 1}),
      HostView(&kp, {l.num_pages, kPageSize, c.hkv, c.dim},
               {kPageSize * kvrow, kvrow, c.dim, 1}),
      HostView(&vp, {l.num_pages, kPageSize, c.hkv, c.dim},
               {kPageSize * kvrow, kvrow, c.dim, 1}),
      TensorView::I32(pt.data(), {l.batch, l.max_pages}),
      TensorView::I32(cu.data(), {l.batch + 1}),
      TensorView::I32(ctx.data(), {l.batch}), c.window, scale,
      HostView(&want, {l.tokens, c.hq, c.dim}, {qrow, c.dim, 1}), Stream());
  ASSERT_TRUE(cs.ok()) << cs;
  EXPECT_LE(RelativeError(got, want), Tolerance(c.dtype))
      << "max abs diff " << MaxAbsDiff(got, want);
}

// Decode at long contexts through the workspace (many key splits per
// sequence), mostly in the Qwen3.5 shape (Hq = 8, Hkv = 2, D = 256, bf16).
void AddSplitCases(std::vector<AttnCase>* cases) {
  auto add = [cases](DType dtype, int64_t hq, int64_t hkv, int64_t dim,
                     int window, std::vector<int64_t> n,
                     std::vector<int64_t> prefix, const char* name,
                     int64_t table_pages = 0, bool graph = false) {
    cases->push_back({dtype, hq, hkv, dim, window, std::move(n),
                      std::move(prefix), name, true, table_pages, graph});
  };
  constexpr DType kBf16 = DType::kBF16;
  for (int window : {0, 4096}) {
    add(kBf16, 8, 2, 256, window, {1}, {19999}, "split20k");
    add(kBf16, 8, 2, 256, window, {1}, {99999}, "split100k");
    add(kBf16, 8, 2, 256, window, {1, 1, 1, 1, 1},
        {99999, 0, 19999, 1500, 4095}, "splitmix");
    // Several queries per sequence: rows at different positions.
    add(kBf16, 8, 2, 256, window, {3, 1, 2}, {30000, 5000, 0}, "splitmulti");
    // A page table as wide as 1M tokens over short contexts.
    add(kBf16, 8, 2, 256, window, {1, 1, 1}, {0, 99, 1499}, "splitwide", 65536);
    add(DType::kF32, 8, 2, 128, window, {1, 1, 1}, {0, 99, 1499}, "splitwide",
        65536);
  }
  for (int64_t dim : {64, 128}) {
    for (int window : {0, 1000}) {
      add(kBf16, 8, 2, dim, window, {1, 1}, {20000, 7000}, "splitdims");
    }
  }
  // GQA groups of 1 and 16 (two row passes per token).
  add(kBf16, 16, 16, 128, 0, {1, 1}, {20000, 3000}, "splitgroups");
  add(kBf16, 32, 2, 128, 0, {1, 1}, {20000, 3000}, "splitgroups");
  // f32 (and so the SIMT kernel) splits too.
  for (int window : {0, 4096}) {
    add(DType::kF32, 8, 2, 128, window, {1, 2}, {20000, 3000}, "splitf32");
    add(DType::kF32, 8, 2, 256, window, {1, 1}, {20000, 3000}, "splitf32");
  }
  // Recorded in a CUDA graph.
  add(kBf16, 8, 2, 256, 0, {1}, {19999}, "splitgraph", 0, true);
  add(kBf16, 8, 2, 256, 4096, {1, 1, 1, 1, 1}, {99999, 0, 19999, 1500, 4095},
      "splitgraph", 0, true);
  add(DType::kF32, 8, 2, 128, 0, {1, 1}, {20000, 3000}, "splitgraph", 0, true);
}

std::vector<AttnCase> AttnCases() {
  std::vector<AttnCase> cases;
  const std::pair<int64_t, int64_t> heads[] = {{4, 2}, {16, 16}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const auto& h : heads) {
      for (int64_t dim : {64, 128, 256}) {
        for (int window : {0, 48}) {
          // Prefill: several queries per sequence, some after a prefix.
          cases.push_back({dtype,
                           h.first,
                           h.second,
                           dim,
                           window,
                           {1, 7, 63, 65, 1000},
                           {0, 20, 5, 100, 0},
                           "prefill"});
          // Decode: one query per sequence at long-ish contexts.
          cases.push_back({dtype,
                           h.first,
                           h.second,
                           dim,
                           window,
                           {1, 1, 1, 1, 1},
                           {0, 6, 62, 64, 999},
                           "decode"});
        }
      }
    }
  }
  // Head dimensions of the simple kernel (small models such as the fixtures).
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t dim : {32, 96}) {
      for (int window : {0, 48}) {
        cases.push_back({dtype,
                         4,
                         2,
                         dim,
                         window,
                         {1, 7, 63, 65, 200},
                         {0, 20, 5, 100, 0},
                         "prefillgeneric"});
        cases.push_back({dtype,
                         4,
                         2,
                         dim,
                         window,
                         {1, 1, 1, 1, 1},
                         {0, 6, 62, 64, 999},
                         "decodegeneric"});
      }
    }
  }
  // A realistic prefill: 4096 tokens, H = 16, d = 128, bf16.
  cases.push_back({DType::kBF16, 16, 16, 128, 0, {4096}, {0}, "prefill4096"});
  // bf16 prefill runs on tensor cores. The Qwen3.5 attention shape (GQA
  // group 4, D = 256) after long prefixes, global and windowed.
  for (int window : {0, 48, 1000}) {
    cases.push_back({DType::kBF16,
                     8,
                     2,
                     256,
                     window,
                     {1000, 333, 2048},
                     {3000, 0, 517},
                     "qwen35prefix"});
  }
  // Varlen batches mixing one-token, short and long sequences.
  for (int64_t dim : {64, 128, 256}) {
    for (int window : {0, 100}) {
      cases.push_back({DType::kBF16,
                       8,
                       2,
                       dim,
                       window,
                       {1, 17, 130, 64, 600, 3, 257},
                       {0, 40, 1000, 7, 0, 2000, 129},
                       "varlen"});
    }
  }
  // A group that does not divide the row blocks evenly.
  cases.push_back(
      {DType::kBF16, 6, 2, 128, 0, {777, 5}, {100, 50}, "group3prefill"});
  AddSplitCases(&cases);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Batches, PagedAttentionTest,
                         ::testing::ValuesIn(AttnCases()),
                         [](const ::testing::TestParamInfo<AttnCase>& info) {
                           std::ostringstream os;
                           os << info.param;
                           return os.str();
                         });

// Missing pages (negative or out-of-range page-table entries inside the
// context) hide their keys, and a sequence whose context length is shorter
// than its queries gets zeros. CpuKernels rejects both, so the bf16 prefill
// (tensor cores) is compared with the f32 kernel on the same bf16-rounded
// inputs.
TEST(PagedAttentionHolesTest, Bf16PrefillMatchesF32) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kPageSize = 16;
  constexpr int64_t kHq = 8;
  constexpr int64_t kHkv = 2;
  for (int64_t dim : {64, 128, 256}) {
    for (int window : {0, 100}) {
      SCOPED_TRACE(::testing::Message() << "D " << dim << " window " << window);
      std::mt19937 rng(static_cast<unsigned>(dim * 10 + window));
      PagedLayout l =
          MakeLayout({300, 5, 200, 64}, {90, 40, 0, 10}, kPageSize, &rng);
      l.page_table[2] = -1;
      l.page_table[10] = static_cast<int32_t>(l.num_pages + 7);
      // Sequence 2's first page: its first 16 queries see no key at all.
      l.page_table[2 * l.max_pages] = -5;
      l.context_lens[1] = 3;  // fewer than its 5 queries
      const int64_t qrow = kHq * dim;
      const int64_t kvrow = kHkv * dim;
      std::vector<float> q = Random(l.tokens * qrow, &rng, -2.0f, 2.0f);
      std::vector<float> kp = Random(l.num_pages * kPageSize * kvrow, &rng);
      std::vector<float> vp = Random(l.num_pages * kPageSize * kvrow, &rng);
      for (auto* t : {&q, &kp, &vp}) RoundTo(DType::kBF16, t);
      const float scale = 1.0f / std::sqrt(static_cast<float>(dim));

      std::vector<float> results[2];
      const DType dtypes[2] = {DType::kF32, DType::kBF16};
      for (int i = 0; i < 2; ++i) {
        DeviceBuffer dq, dkp, dvp, dpt, dcu, dctx, dout;
        ASSERT_TRUE(dq.UploadFloats(q, dtypes[i]).ok());
        ASSERT_TRUE(dkp.UploadFloats(kp, dtypes[i]).ok());
        ASSERT_TRUE(dvp.UploadFloats(vp, dtypes[i]).ok());
        ASSERT_TRUE(dpt.UploadI32(l.page_table).ok());
        ASSERT_TRUE(dcu.UploadI32(l.cu).ok());
        ASSERT_TRUE(dctx.UploadI32(l.context_lens).ok());
        ASSERT_TRUE(dout.UploadFloats(std::vector<float>(l.tokens * qrow, 7.0f),
                                      dtypes[i])
                        .ok());
        const absl::Status s = cuda_ops::PagedAttention(
            dq.View({l.tokens, kHq, dim}),
            dkp.View({l.num_pages, kPageSize, kHkv, dim}),
            dvp.View({l.num_pages, kPageSize, kHkv, dim}),
            dpt.View({l.batch, l.max_pages}), dcu.View({l.batch + 1}),
            dctx.View({l.batch}), window, scale,
            dout.View({l.tokens, kHq, dim}), Stream());
        ASSERT_TRUE(s.ok()) << s;
        ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sync").ok());
        ASSERT_TRUE(dout.DownloadFloats(&results[i]).ok());
      }
      const std::vector<float>& got = results[1];
      EXPECT_LE(RelativeError(got, results[0]), kBf16Tolerance)
          << "max abs diff " << MaxAbsDiff(got, results[0]);
      // Zeros: all of sequence 1, and sequence 2's first 16 queries.
      for (int64_t t = 0; t < l.tokens; ++t) {
        const bool zero = (t >= l.cu[1] && t < l.cu[2]) ||
                          (t >= l.cu[2] && t < l.cu[2] + kPageSize);
        if (!zero) continue;
        for (int64_t e = 0; e < qrow; ++e) {
          ASSERT_EQ(got[t * qrow + e], 0.0f) << "token " << t << " elem " << e;
        }
      }
    }
  }
}

// The split decode path (many splits through the workspace) with missing
// pages inside long contexts and invalid context lengths, compared with the
// f32 kernel run as one split on the same bf16-rounded inputs.
TEST(PagedAttentionHolesTest, SplitDecodeMatchesOneSplit) {
  if (!testing::HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kPageSize = 16;
  constexpr int64_t kHq = 8;
  constexpr int64_t kHkv = 2;
  constexpr int64_t kDim = 256;
  testing::DeviceBuffer workspace;
  ASSERT_TRUE(workspace.Allocate(kWorkspaceBytes).ok());
  for (int window : {0, 4096}) {
    SCOPED_TRACE(::testing::Message() << "window " << window);
    std::mt19937 rng(static_cast<unsigned>(window + 1));
    PagedLayout l =
        MakeLayout({1, 1, 2, 1}, {30000, 2999, 5000, 10}, kPageSize, &rng);
    l.page_table[100] = -1;
    l.page_table[1800] = -3;
    l.page_table[2 * l.max_pages + 200] = static_cast<int32_t>(l.num_pages + 7);
    l.context_lens[1] = 0;  // fewer than its one query
    l.context_lens[3] = static_cast<int32_t>(l.max_pages * kPageSize + 1);
    const int64_t qrow = kHq * kDim;
    const int64_t kvrow = kHkv * kDim;
    std::vector<float> q = Random(l.tokens * qrow, &rng, -2.0f, 2.0f);
    std::vector<float> kp = Random(l.num_pages * kPageSize * kvrow, &rng);
    std::vector<float> vp = Random(l.num_pages * kPageSize * kvrow, &rng);
    for (auto* t : {&q, &kp, &vp}) RoundTo(DType::kBF16, t);
    const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));

    // f32 as one split (the reference), f32 split, bf16 split.
    std::vector<float> results[3];
    const DType dtypes[3] = {DType::kF32, DType::kF32, DType::kBF16};
    for (int i = 0; i < 3; ++i) {
      DeviceBuffer dq, dkp, dvp, dpt, dcu, dctx, dout;
      ASSERT_TRUE(dq.UploadFloats(q, dtypes[i]).ok());
      ASSERT_TRUE(dkp.UploadFloats(kp, dtypes[i]).ok());
      ASSERT_TRUE(dvp.UploadFloats(vp, dtypes[i]).ok());
      ASSERT_TRUE(dpt.UploadI32(l.page_table).ok());
      ASSERT_TRUE(dcu.UploadI32(l.cu).ok());
      ASSERT_TRUE(dctx.UploadI32(l.context_lens).ok());
      ASSERT_TRUE(dout.UploadFloats(std::vector<float>(l.tokens * qrow, 7.0f),
                                    dtypes[i])
                      .ok());
      ASSERT_EQ(cudaMemset(workspace.get(), 0xff, kWorkspaceBytes),
                cudaSuccess);
      const absl::Status s = cuda_ops::PagedAttention(
          dq.View({l.tokens, kHq, kDim}),
          dkp.View({l.num_pages, kPageSize, kHkv, kDim}),
          dvp.View({l.num_pages, kPageSize, kHkv, kDim}),
          dpt.View({l.batch, l.max_pages}), dcu.View({l.batch + 1}),
          dctx.View({l.batch}), window, scale, dout.View({l.tokens, kHq, kDim}),
          i == 0 ? nullptr : workspace.get(), i == 0 ? 0 : kWorkspaceBytes,
          Stream());
      ASSERT_TRUE(s.ok()) << s;
      ASSERT_TRUE(CudaStatus(cudaDeviceSynchronize(), "sync").ok());
      ASSERT_TRUE(dout.DownloadFloats(&results[i]).ok());
    }
    EXPECT_LE(RelativeError(results[1], results[0]), kF32Tolerance)
        << "max abs diff " << MaxAbsDiff(results[1], results[0]);
    EXPECT_LE(RelativeError(results[2], results[0]), kBf16Tolerance)
        << "max abs diff " << MaxAbsDiff(results[2], results[0]);
    // Zeros: sequences 1 and 3 (one token each).
    for (int i = 1; i < 3; ++i) {
      for (int64_t t : {l.cu[1], l.cu[3]}) {
        for (int64_t e = 0; e < qrow; ++e) {
          ASSERT_EQ(results[i][t * qrow + e], 0.0f)
              << "run " << i << " token " << t << " elem " << e;
        }
      }
    }
  }
}

// ---------------------------------------------------------- Argument checks

void ExpectInvalid(const absl::Status& status, const char* text) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(text));
}

// Well-formed device views over a host scratch buffer that is never read.
class ArgumentTest : public ::testing::Test {
 protected:
  ArgumentTest() : scratch_(1 << 16) {}

  TensorView Dev(DType dtype, std::initializer_list<int64_t> shape) {
    return TensorView::Contiguous(scratch_.data(), dtype, shape, Device::kCuda);
  }

  std::vector<float> scratch_;
};

TEST_F(ArgumentTest, GemmRejectsBadViews) {
  const TensorView x = Dev(DType::kBF16, {4, 8});
  const TensorView w = Dev(DType::kBF16, {6, 8});
  const TensorView out = Dev(DType::kF32, {4, 6});
  ExpectInvalid(cuda_ops::Gemm(nullptr, x, Dev(DType::kBF16, {6, 9}), out,
                               false, Stream()),
                "w is bf16[6, 9], expected bf16[?, 8]");
  ExpectInvalid(cuda_ops::Gemm(nullptr, x, Dev(DType::kF32, {6, 8}), out, false,
                               Stream()),
                "w is f32[6, 8], expected bf16");
  ExpectInvalid(
      cuda_ops::Gemm(nullptr, x, w, Dev(DType::kF32, {4, 7}), false, Stream()),
      "out is f32[4, 7], expected f32[4, 6]");
  ExpectInvalid(cuda_ops::Gemm(nullptr, Dev(DType::kI32, {4, 8}), w, out, false,
                               Stream()),
                "x is i32[4, 8], expected f32");
  ExpectInvalid(cuda_ops::Gemm(nullptr, Dev(DType::kF32, {4, 8}),
                               Dev(DType::kF32, {6, 8}),
                               Dev(DType::kBF16, {4, 6}), false, Stream()),
                "out is bf16[4, 6], expected f32[4, 6]");
  TensorView host = x;
  host.device = Device::kCpu;
  ExpectInvalid(cuda_ops::Gemm(nullptr, host, w, out, false, Stream()),
                "is not in device memory");
  TensorView overlap = x;
  overlap.strides[0] = 5;
  ExpectInvalid(cuda_ops::Gemm(nullptr, overlap, w, out, false, Stream()),
                "smaller than its row length");
  ExpectInvalid(cuda_ops::Gemm(nullptr, x, w, out, false, Stream()),
                "no cuBLASLt object");
}

TEST_F(ArgumentTest, KvAppendRejectsBadViews) {
  const TensorView k = Dev(DType::kF32, {5, 2, 8});
  const TensorView pages = Dev(DType::kF32, {4, 16, 2, 8});
  const TensorView pt = Dev(DType::kI32, {2, 3});
  const TensorView cu = Dev(DType::kI32, {3});
  const TensorView sp = Dev(DType::kI32, {2});
  auto run = [&](const TensorView& kk, const TensorView& vv,
                 const TensorView& kp, const TensorView& vp,
                 const TensorView& table, const TensorView& c,
                 const TensorView& s) {
    return cuda_ops::KvAppend(kk, vv, kp, vp, table, c, s, Stream());
  };
  ExpectInvalid(run(k, Dev(DType::kF32, {5, 2, 9}), pages, pages, pt, cu, sp),
                "v is f32[5, 2, 9], expected f32[5, 2, 8]");
  ExpectInvalid(run(k, k, Dev(DType::kBF16, {4, 16, 2, 8}), pages, pt, cu, sp),
                "k_pages is bf16");
  ExpectInvalid(run(k, k, pages, Dev(DType::kF32, {4, 8, 2, 8}), pt, cu, sp),
                "v_pages is f32[4, 8, 2, 8]");
  ExpectInvalid(run(k, k, pages, pages, Dev(DType::kI32, {3, 3}), cu, sp),
                "page_table is i32[3, 3], expected i32[2, ?]");
  ExpectInvalid(run(k, k, pages, pages, pt, Dev(DType::kF32, {3}), sp),
                "cu_seqlens is f32[3]");
  ExpectInvalid(run(k, k, pages, pages, pt, cu, Dev(DType::kI32, {3})),
                "start_pos is i32[3], expected i32[2]");
  ExpectInvalid(run(k, k, Dev(DType::kF32, {4, 0, 2, 8}),
                    Dev(DType::kF32, {4, 0, 2, 8}), pt, cu, sp),
                "has empty pages");
}

TEST_F(ArgumentTest, PagedAttentionRejectsBadViews) {
  const TensorView q = Dev(DType::kBF16, {5, 4, 64});
  const TensorView pages = Dev(DType::kBF16, {4, 16, 2, 64});
  const TensorView pt = Dev(DType::kI32, {2, 3});
  const TensorView cu = Dev(DType::kI32, {3});
  const TensorView ctx = Dev(DType::kI32, {2});
  const TensorView out = Dev(DType::kBF16, {5, 4, 64});
  auto run = [&](const TensorView& qq, const TensorView& kp,
                 const TensorView& vp, const TensorView& table,
                 const TensorView& c, const TensorView& cl, int window,
                 const TensorView& o) {
    return cuda_ops::PagedAttention(qq, kp, vp, table, c, cl, window, 0.1f, o,
                                    Stream());
  };
  ExpectInvalid(run(q, Dev(DType::kBF16, {4, 16, 3, 64}),
                    Dev(DType::kBF16, {4, 16, 3, 64}), pt, cu, ctx, 0, out),
                "are not a multiple of the KV heads");
  ExpectInvalid(run(q, pages, pages, pt, cu, ctx, -1, out),
                "window is -1, expected >= 0");
  ExpectInvalid(
      run(Dev(DType::kBF16, {5, 4, 320}), Dev(DType::kBF16, {4, 16, 2, 320}),
          Dev(DType::kBF16, {4, 16, 2, 320}), pt, cu, ctx, 0,
          Dev(DType::kBF16, {5, 4, 320})),
      "head dimension 320");
  ExpectInvalid(
      run(q, Dev(DType::kF32, {4, 16, 2, 64}), pages, pt, cu, ctx, 0, out),
      "k_pages is f32");
  ExpectInvalid(run(q, pages, pages, pt, cu, Dev(DType::kI32, {3}), 0, out),
                "context_lens is i32[3], expected i32[2]");
  ExpectInvalid(
      run(q, pages, pages, pt, cu, ctx, 0, Dev(DType::kF32, {5, 4, 64})),
      "out is f32[5, 4, 64], expected bf16[5, 4, 64]");
  ExpectInvalid(run(q, pages, pages, pt, Dev(DType::kI32, {0}), ctx, 0, out),
                "needs at least one entry");
  TensorView strided = q;
  strided.strides[2] = 2;
  ExpectInvalid(run(strided, pages, pages, pt, cu, ctx, 0, out),
                "has last stride 2");
  char* misaligned = reinterpret_cast<char*>(scratch_.data()) + 4;
  ExpectInvalid(cuda_ops::PagedAttention(q, pages, pages, pt, cu, ctx, 0, 0.1f,
                                         out, misaligned, 1024, Stream()),
                "workspace is not 16-byte aligned");
}

}  // namespace
}  // namespace deltaserve
