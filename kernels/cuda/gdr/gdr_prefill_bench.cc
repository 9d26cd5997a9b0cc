// Times the chunked gated-delta-rule prefill (LaunchGdrChunked) on the GPU
// and prints it beside the anchors of DESIGN.md: fla's Triton chunk kernel
// (B = 1, H = 16, K = V = 128) and FlashInfer's GDN prefill (4 × 8192 tokens,
// 32 value heads; we use 16 key heads).
//
// Usage: gdr_prefill_bench [reps [f32]]   (default 20, bf16)
//
// bf16 (or f32) q, k, v and out; f32 g, beta and state; gate and l2norm on.
// Each row is the median over `reps` launches of one call, timed with CUDA
// events.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

constexpr int kDim = 128;

struct Config {
  int batch;
  int64_t seq_len;
  int hk;
  int hv;
  const char* anchor_name;
  double anchor_ms;
};
constexpr Config kConfigs[] = {
    {1, 4096, 16, 16, "fla", 0.45},
    {1, 16384, 16, 16, "fla", 0.65},
    {1, 65536, 16, 16, "fla", 2.52},
    {4, 8192, 16, 32, "FlashInfer", 0.425},
};

// Device allocations of one configuration, freed on destruction.
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (void* p : owned_) cudaFree(p);
  }

  template <typename T>
  absl::StatusOr<T*> Upload(const std::vector<T>& host) {
    void* p = nullptr;
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaMalloc(&p, host.size() * sizeof(T)), "cudaMalloc"));
    owned_.push_back(p);
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(p, host.data(), host.size() * sizeof(T),
                              cudaMemcpyHostToDevice),
                   "cudaMemcpy"));
    return static_cast<T*>(p);
  }

 private:
  std::vector<void*> owned_;
};

std::vector<float> Random(size_t n, std::mt19937* rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& e : x) e = dist(*rng);
  return x;
}

std::vector<__nv_bfloat16> RandomBf16(size_t n, std::mt19937* rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> x(n);
  for (auto& e : x) e = __float2bfloat16(dist(*rng));
  return x;
}

// Uploads n activations, bf16 or f32, uniform in [-1, 1] (all zero when
// `zero`).
absl::StatusOr<void*> UploadActivations(Buffers* buf, size_t n, bool bf16,
                                        bool zero, std::mt19937* rng) {
  if (bf16) {
    DS_ASSIGN_OR_RETURN(
        __nv_bfloat16 * p,
        buf->Upload(zero ? std::vector<__nv_bfloat16>(n) : RandomBf16(n, rng)));
    return static_cast<void*>(p);
  }
  DS_ASSIGN_OR_RETURN(
      float* p,
      buf->Upload(zero ? std::vector<float>(n) : Random(n, rng, -1.0f, 1.0f)));
  return static_cast<void*>(p);
}

absl::StatusOr<double> TimeConfig(const Config& c, int reps, bool bf16) {
  std::mt19937 rng(42);
  const int64_t t = c.batch * c.seq_len;
  Buffers buf;
  DS_ASSIGN_OR_RETURN(
      void* q, UploadActivations(&buf, t * c.hk * kDim, bf16, false, &rng));
  DS_ASSIGN_OR_RETURN(
      void* k, UploadActivations(&buf, t * c.hk * kDim, bf16, false, &rng));
  DS_ASSIGN_OR_RETURN(
      void* v, UploadActivations(&buf, t * c.hv * kDim, bf16, false, &rng));
  DS_ASSIGN_OR_RETURN(
      void* out, UploadActivations(&buf, t * c.hv * kDim, bf16, true, &rng));
  DS_ASSIGN_OR_RETURN(float* g, buf.Upload(Random(t * c.hv, &rng, -0.1f, 0)));
  DS_ASSIGN_OR_RETURN(float* beta, buf.Upload(Random(t * c.hv, &rng, 0, 1)));
  DS_ASSIGN_OR_RETURN(
      float* state,
      buf.Upload(std::vector<float>(int64_t{c.batch} * c.hv * kDim * kDim)));
  std::vector<int32_t> cu(c.batch + 1);
  std::vector<int32_t> slots(c.batch);
  for (int b = 0; b < c.batch; ++b) {
    cu[b + 1] = static_cast<int32_t>((b + 1) * c.seq_len);
    slots[b] = b;
  }
  DS_ASSIGN_OR_RETURN(int32_t * d_cu, buf.Upload(cu));
  DS_ASSIGN_OR_RETURN(int32_t * d_slots, buf.Upload(slots));

  GdrArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.g = g;
  a.beta = beta;
  a.state = state;
  a.cu_seqlens = d_cu;
  a.slots = d_slots;
  a.out = out;
  a.act_bf16 = bf16;
  a.out_bf16 = bf16;
  a.tokens = t;
  a.batch = c.batch;
  a.num_slots = c.batch;
  a.num_k_heads = c.hk;
  a.num_v_heads = c.hv;
  a.key_dim = kDim;
  a.value_dim = kDim;
  a.q_stride[0] = a.k_stride[0] = int64_t{c.hk} * kDim;
  a.q_stride[1] = a.k_stride[1] = kDim;
  a.v_stride[0] = a.out_stride[0] = int64_t{c.hv} * kDim;
  a.v_stride[1] = a.out_stride[1] = kDim;
  a.g_stride = a.beta_stride = c.hv;
  a.state_stride[0] = int64_t{c.hv} * kDim * kDim;
  a.state_stride[1] = int64_t{kDim} * kDim;
  a.state_stride[2] = kDim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  a.l2norm_qk = true;

  cudaEvent_t start, stop;
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&stop), "cudaEventCreate"));
  DS_RETURN_IF_ERROR(LaunchGdrChunked(a, nullptr));  // warm-up
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    DS_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(start), "cudaEventRecord"));
    DS_RETURN_IF_ERROR(LaunchGdrChunked(a, nullptr));
    DS_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(stop), "cudaEventRecord"));
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaEventSynchronize(stop), "cudaEventSynchronize"));
    float elapsed = 0.0f;
    DS_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&elapsed, start, stop),
                                  "cudaEventElapsedTime"));
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  const bool bf16 = !(argc > 2 && std::string(argv[2]) == "f32");
  // Stream-ordered allocations (each call's workspace) stay in the device's
  // pool between calls, as CudaKernels keeps them, instead of being mapped
  // afresh after every synchronisation.
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess) {
    uint64_t keep = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  std::printf(
      "chunked gated delta rule prefill, K = V = %d, %s q/k/v/out, "
      "f32 g/beta/state, median of %d\n",
      kDim, bf16 ? "bf16" : "f32", reps);
  std::printf("%-14s %4s %4s %10s %10s %-11s %10s %8s\n", "shape", "Hk", "Hv",
              "tokens", "ours ms", "anchor", "anchor ms", "ratio");
  for (const Config& c : kConfigs) {
    const absl::StatusOr<double> ms = TimeConfig(c, reps, bf16);
    if (!ms.ok()) {
      std::fprintf(stderr, "B=%d T=%lld: %s\n", c.batch,
                   static_cast<long long>(c.seq_len),
                   ms.status().ToString().c_str());
      return 1;
    }
    char shape[32];
    std::snprintf(shape, sizeof(shape), "%dx%lld", c.batch,
                  static_cast<long long>(c.seq_len));
    std::printf("%-14s %4d %4d %10lld %10.3f %-11s %10.3f %8.2f\n", shape, c.hk,
                c.hv, static_cast<long long>(c.batch * c.seq_len), *ms,
                c.anchor_name, c.anchor_ms, *ms / c.anchor_ms);
  }
  return 0;
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Main(argc, argv); }
