// CudaKernels through the Kernels interface: each method reaches the right
// CUDA operation with its arguments in the right places, checked by running
// one model-shaped case of every method on the GPU and on CpuKernels (f32,
// so the two agree closely). The operations' own tests cover sizes, dtypes
// and layouts. Skips without a GPU.
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/testing/device_buffer.h"
#include "kernels/memory.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

// A host tensor with a device copy; views of either.
class Pair {
 public:
  Pair(std::vector<int64_t> shape, DType dtype = DType::kF32)
      : shape_(std::move(shape)), dtype_(dtype) {
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    host_.assign(n, 0);
    EXPECT_TRUE(device_.Allocate(n * 4).ok());
  }
  Pair(const Pair&) = delete;

  void Random(std::mt19937* rng, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> u(lo, hi);
    for (auto& x : host_) {
      const float f = u(*rng);
      std::memcpy(&x, &f, 4);
    }
    Upload();
  }
  void SetI32(const std::vector<int32_t>& v) {
    std::memcpy(host_.data(), v.data(), v.size() * 4);
    Upload();
  }
  void Upload() { EXPECT_TRUE(device_.Upload(host_).ok()); }
  std::vector<float> Download() const {
    std::vector<float> out(host_.size());
    EXPECT_TRUE(device_.Download(&out).ok());
    return out;
  }
  std::vector<float> HostFloats() const {
    std::vector<float> out(host_.size());
    std::memcpy(out.data(), host_.data(), out.size() * 4);
    return out;
  }
  TensorView cpu() { return View(host_.data(), Device::kCpu); }
  TensorView gpu() { return View(device_.get(), Device::kCuda); }

 private:
  TensorView View(void* data, Device device) {
    TensorView t;
    t.data = data;
    t.dtype = dtype_;
    t.device = device;
    t.ndim = static_cast<int>(shape_.size());
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape_[d];
      t.strides[d] = stride;
      stride *= shape_[d];
    }
    return t;
  }
  std::vector<int64_t> shape_;
  DType dtype_;
  std::vector<uint32_t> host_;
  testing::DeviceBuffer device_;
};

void ExpectClose(const Pair& p, double tol, const char* what) {
  const std::vector<float> got = p.Download(), want = p.HostFloats();
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), tol) << what;
}

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HasCudaDevice()) GTEST_SKIP() << "no GPU";
    auto cuda = CudaKernels::Create({});
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    gpu_ = std::move(*cuda);
    auto cpu = CpuKernels::Create({});
    ASSERT_TRUE(cpu.ok());
    cpu_ = std::move(*cpu);
  }
  std::unique_ptr<Kernels> gpu_, cpu_;
  std::mt19937 rng_{11};
  Stream s_;
};

TEST_F(CudaKernelsTest, NameAndMissingDevice) {
  EXPECT_STREQ(gpu_->name(), "cuda");
  EXPECT_EQ(CudaKernels::Create({.device = 999}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaKernelsTest, DenseOperationsMatchTheCpu) {
  const int64_t t = 37, d = 96, n = 80;
  Pair x({t, d}), w({n, d}), y({t, n}), norm_w({d}), z({t, d}), nx({t, d});
  x.Random(&rng_);
  w.Random(&rng_);
  norm_w.Random(&rng_);
  z.Random(&rng_);
  for (Kernels* k : {cpu_.get(), gpu_.get()}) {
    const bool g = k == gpu_.get();
    ASSERT_TRUE(k->Gemm(g ? x.gpu() : x.cpu(), g ? w.gpu() : w.cpu(),
                        g ? y.gpu() : y.cpu(), false, s_)
                    .ok());
    ASSERT_TRUE(k->RmsNorm(g ? x.gpu() : x.cpu(),
                           g ? norm_w.gpu() : norm_w.cpu(), 1e-6f, true,
                           g ? nx.gpu() : nx.cpu(), s_)
                    .ok());
    ASSERT_TRUE(k->RmsNormGated(g ? nx.gpu() : nx.cpu(), g ? z.gpu() : z.cpu(),
                                g ? norm_w.gpu() : norm_w.cpu(), 1e-6f,
                                g ? nx.gpu() : nx.cpu(), s_)
                    .ok());
    ASSERT_TRUE(k->SwiGlu(g ? nx.gpu() : nx.cpu(), g ? z.gpu() : z.cpu(),
                          g ? nx.gpu() : nx.cpu(), s_)
                    .ok());
    ASSERT_TRUE(k->SigmoidGate(g ? nx.gpu() : nx.cpu(), g ? x.gpu() : x.cpu(),
                               g ? nx.gpu() : nx.cpu(), s_)
                    .ok());
    ASSERT_TRUE(k->Add(g ? nx.gpu() : nx.cpu(), g ? x.gpu() : x.cpu(),
                       g ? nx.gpu() : nx.cpu(), s_)
                    .ok());
  }
  ASSERT_TRUE(gpu_->Synchronize(s_).ok());
  ExpectClose(y, 1e-5, "Gemm");
  ExpectClose(nx, 1e-5, "RmsNorm, RmsNormGated, SwiGlu, SigmoidGate, Add");
}

TEST_F(CudaKernelsTest, EmbeddingRopeAndGatesMatchTheCpu) {
  const int64_t t = 9, heads = 4, hd = 32, vocab = 50;
  Pair ids({t}, DType::kI32), pos({t}, DType::kI32), table({vocab, heads * hd}),
      x({t, heads, hd}), a({t, heads}), b({t, heads}), a_log({heads}),
      dt({heads}), g({t, heads}), beta({t, heads});
  ids.SetI32({3, 0, 49, 7, 7, 12, 1, 2, 40});
  pos.SetI32({0, 1, 2, 3, 100, 1000, 5, 6, 7});
  table.Random(&rng_);
  for (Pair* p : {&a, &b, &a_log, &dt}) p->Random(&rng_);
  for (Kernels* k : {cpu_.get(), gpu_.get()}) {
    const bool G = k == gpu_.get();
    auto v = [G](Pair& p) { return G ? p.gpu() : p.cpu(); };
    TensorView flat = v(x);
    flat.ndim = 2;
    flat.shape[1] = heads * hd;
    flat.strides[0] = heads * hd;
    flat.strides[1] = 1;
    ASSERT_TRUE(k->Embedding(v(ids), v(table), flat, s_).ok());
    ASSERT_TRUE(k->Rope(v(x), v(pos), 16, 10000.f, s_).ok());
    ASSERT_TRUE(
        k->GdnGates(v(a), v(b), v(a_log), v(dt), v(g), v(beta), s_).ok());
  }
  ASSERT_TRUE(gpu_->Synchronize(s_).ok());
  ExpectClose(x, 1e-5, "Embedding then Rope");
  ExpectClose(g, 1e-5, "GdnGates g");
  ExpectClose(beta, 1e-5, "GdnGates beta");
}

TEST_F(CudaKernelsTest, RecurrentLayerMatchesTheCpu) {
  // Two sequences (70 and 5 tokens) in slots 2 and 0 of a pool of 3, with a
  // causal conv before the delta rule as a Gated DeltaNet layer has.
  const int64_t hk = 2, hv = 4, kd = 64, vd = 64, tt = 75, c = 48, w = 4;
  Pair cu({3}, DType::kI32), slots({2}, DType::kI32);
  cu.SetI32({0, 70, 75});
  slots.SetI32({2, 0});
  Pair xc({tt, c}), cw({c, w}), conv_state({3, c, w - 1});
  xc.Random(&rng_);
  cw.Random(&rng_);
  conv_state.Random(&rng_);
  Pair q({tt, hk, kd}), k({tt, hk, kd}), v({tt, hv, vd}), g({tt, hv}),
      beta({tt, hv}), state_c({3, hv, kd, vd}), state_r({3, hv, kd, vd}),
      out_c({tt, hv, vd}), out_r({tt, hv, vd});
  q.Random(&rng_);
  k.Random(&rng_);
  v.Random(&rng_);
  g.Random(&rng_, -0.5f, 0.f);
  beta.Random(&rng_, 0.f, 1.f);
  state_c.Random(&rng_, -0.1f, 0.1f);
  {
    const std::vector<float> init = state_c.HostFloats();
    std::vector<int32_t> bits(init.size());
    std::memcpy(bits.data(), init.data(), init.size() * 4);
    state_r.SetI32(bits);
  }
  for (Kernels* kk : {cpu_.get(), gpu_.get()}) {
    const bool G = kk == gpu_.get();
    auto vw = [G](Pair& p) { return G ? p.gpu() : p.cpu(); };
    ASSERT_TRUE(kk->CausalConv1d(vw(xc), vw(cw), vw(cu), vw(conv_state),
                                 vw(slots), true, vw(xc), s_)
                    .ok());
    ASSERT_TRUE(kk->GatedDeltaRuleChunked(vw(q), vw(k), vw(v), vw(g), vw(beta),
                                          vw(cu), vw(state_c), vw(slots),
                                          0.125f, true, vw(out_c), s_)
                    .ok());
    ASSERT_TRUE(kk->GatedDeltaRuleRecurrent(
                      vw(q), vw(k), vw(v), vw(g), vw(beta), vw(cu), vw(state_r),
                      vw(slots), 0.125f, true, vw(out_r), s_)
                    .ok());
  }
  ASSERT_TRUE(gpu_->Synchronize(s_).ok());
  ExpectClose(xc, 1e-5, "CausalConv1d");
  ExpectClose(conv_state, 1e-6, "conv state");
  ExpectClose(out_c, 1e-4, "GatedDeltaRuleChunked out");
  ExpectClose(state_c, 1e-4, "GatedDeltaRuleChunked state");
  ExpectClose(out_r, 1e-4, "GatedDeltaRuleRecurrent out");
  ExpectClose(state_r, 1e-4, "GatedDeltaRuleRecurrent state");
}

TEST_F(CudaKernelsTest, PagedAttentionMatchesTheCpu) {
  // One sequence of 40 tokens (pages 3, 0, 2 of 16 tokens), GQA 4/2, d 64.
  const int64_t tt = 40, hq = 4, hkv = 2, hd = 64, pages = 4, ps = 16;
  Pair q({tt, hq, hd}), k({tt, hkv, hd}), v({tt, hkv, hd}),
      kp({pages, ps, hkv, hd}), vp({pages, ps, hkv, hd}), out({tt, hq, hd});
  Pair table({1, 3}, DType::kI32), cu({2}, DType::kI32),
      start({1}, DType::kI32), lens({1}, DType::kI32);
  table.SetI32({3, 0, 2});
  cu.SetI32({0, 40});
  start.SetI32({0});
  lens.SetI32({40});
  for (Pair* p : {&q, &k, &v}) p->Random(&rng_);
  for (Kernels* kk : {cpu_.get(), gpu_.get()}) {
    const bool G = kk == gpu_.get();
    auto vw = [G](Pair& p) { return G ? p.gpu() : p.cpu(); };
    ASSERT_TRUE(kk->KvAppend(vw(k), vw(v), vw(kp), vw(vp), vw(table), vw(cu),
                             vw(start), s_)
                    .ok());
    ASSERT_TRUE(kk->PagedAttention(vw(q), vw(kp), vw(vp), vw(table), vw(cu),
                                   vw(lens), 0, 0.125f, vw(out), s_)
                    .ok());
  }
  ASSERT_TRUE(gpu_->Synchronize(s_).ok());
  ExpectClose(out, 1e-4, "KvAppend then PagedAttention");
}

TEST_F(CudaKernelsTest, ArgmaxMatchesTheCpuOnOddSizes) {
  for (int64_t vocab : {1, 7, 63, 65, 1000, 151937}) {
    for (int64_t rows : {1, 7, 65}) {
      Pair logits({rows, vocab}), out({rows}, DType::kI32),
          cpu_out({rows}, DType::kI32);
      logits.Random(&rng_, -3.f, 3.f);
      ASSERT_TRUE(gpu_->Argmax(logits.gpu(), out.gpu(), s_).ok());
      ASSERT_TRUE(cpu_->Argmax(logits.cpu(), cpu_out.cpu(), s_).ok());
      ASSERT_TRUE(gpu_->Synchronize(s_).ok());
      std::vector<float> got = out.Download(), want = cpu_out.HostFloats();
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), rows * 4))
          << rows << " x " << vocab;
    }
  }
}

TEST_F(CudaKernelsTest, ArgmaxTakesTheLowestIndexOnTiesAndSkipsNan) {
  const float nan = std::nanf("");
  const std::vector<std::vector<float>> rows = {
      {1, 5, 5, 2}, {nan, 1, 3, 3}, {nan, nan, nan, nan}, {-1, nan, -1, -2}};
  const std::vector<int32_t> want = {1, 2, 0, 0};
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  Pair logits({4, 4}), out({4}, DType::kI32), cpu_out({4}, DType::kI32);
  std::vector<int32_t> bits(16);
  std::memcpy(bits.data(), flat.data(), 64);
  logits.SetI32(bits);
  ASSERT_TRUE(gpu_->Argmax(logits.gpu(), out.gpu(), s_).ok());
  ASSERT_TRUE(cpu_->Argmax(logits.cpu(), cpu_out.cpu(), s_).ok());
  std::vector<float> got = out.Download(), cpu_got = cpu_out.HostFloats();
  std::vector<int32_t> g(4), c(4);
  std::memcpy(g.data(), got.data(), 16);
  std::memcpy(c.data(), cpu_got.data(), 16);
  EXPECT_EQ(g, want);
  EXPECT_EQ(c, want);
}

TEST_F(CudaKernelsTest, MemoryCopiesBothWaysWithPitches) {
  DeviceMemory* mem = gpu_->memory();
  EXPECT_EQ(mem->device(), Device::kCuda);
  auto buf = Buffer::Allocate(mem, 4096);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::vector<uint8_t> host(4096), back(4096, 0xee);
  for (size_t i = 0; i < host.size(); ++i)
    host[i] = static_cast<uint8_t>(i * 7);
  ASSERT_TRUE(mem->Zero(buf->data(), 4096, gpu_->stream()).ok());
  // Rows of 10 bytes, 64 apart on the host, packed 16 apart on the device.
  ASSERT_TRUE(
      mem->Copy2D(buf->data(), 16, host.data(), 64, 10, 20, gpu_->stream())
          .ok());
  ASSERT_TRUE(mem->Copy(back.data(), buf->data(), 4096, gpu_->stream()).ok());
  for (int r = 0; r < 20; ++r) {
    for (int c = 0; c < 16; ++c) {
      EXPECT_EQ(back[r * 16 + c], c < 10 ? host[r * 64 + c] : 0)
          << r << "," << c;
    }
  }
  EXPECT_EQ(Buffer::Allocate(mem, int64_t{1} << 50).status().code(),
            absl::StatusCode::kResourceExhausted);
  // The device still works after a failed allocation.
  ASSERT_TRUE(mem->Copy(back.data(), buf->data(), 16, gpu_->stream()).ok());
}

TEST_F(CudaKernelsTest, RecordedWorkReplaysWithNewInputs) {
  // Recorded: ids → embedding → RmsNorm → argmax. Replayed with new ids
  // copied into the same buffer, it must follow them.
  const int64_t t = 5, vocab = 97, d = 64;
  Pair table({vocab, d}), w({d}), x({t, d}), ids({t}, DType::kI32),
      am({t}, DType::kI32), logits({t, vocab});
  table.Random(&rng_);
  w.Random(&rng_, 0.5f, 1.5f);
  ids.SetI32({1, 2, 3, 4, 5});
  Stream st = gpu_->stream();
  auto body = [&]() -> absl::Status {
    DS_RETURN_IF_ERROR(gpu_->Embedding(ids.gpu(), table.gpu(), x.gpu(), st));
    DS_RETURN_IF_ERROR(
        gpu_->RmsNorm(x.gpu(), w.gpu(), 1e-6f, false, x.gpu(), st));
    DS_RETURN_IF_ERROR(
        gpu_->Gemm(x.gpu(), table.gpu(), logits.gpu(), false, st));
    return gpu_->Argmax(logits.gpu(), am.gpu(), st);
  };
  auto work = gpu_->Record(st, body);
  ASSERT_TRUE(work.ok()) << work.status();
  for (int round = 0; round < 3; ++round) {
    std::vector<int32_t> v(t);
    std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
    for (auto& id : v) id = pick(rng_);
    ids.SetI32(v);
    ASSERT_TRUE((*work)->Replay(st).ok());
    ASSERT_TRUE(gpu_->Synchronize(st).ok());
    std::vector<float> recorded = am.Download();
    ASSERT_TRUE(body().ok());  // the same work, run directly
    ASSERT_TRUE(gpu_->Synchronize(st).ok());
    std::vector<float> direct = am.Download();
    EXPECT_EQ(0, std::memcmp(recorded.data(), direct.data(), t * 4));
  }
  // The CPU cannot record.
  EXPECT_EQ(cpu_->Record(Stream{}, body).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace deltaserve
