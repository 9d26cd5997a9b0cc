// Times the gated-delta-rule decode step on the GPU for H = 16, K = V = 128
// (fp32 state, gate and l2norm on) and compares it with the fla fused
// recurrent step measured on the same H200 (DESIGN.md, "Anchors").
//
// Usage: gdr_step_bench [reps]   (default 500)
//
// Columns: "hot" times a single launch with the state left in L2 by the
// previous one; "cold" flushes L2 (a 256 MiB memset, outside the timed region)
// before each launch; "stream" is the mean of back-to-back launches. GB/s is
// the state traffic (read + write, 2·B·H·K·V·4 bytes) over the cold median.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gated_delta_rule_step.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

constexpr int kHeads = 16;
constexpr int kDim = 128;
constexpr size_t kFlushBytes = size_t{256} << 20;

struct Anchor {
  int batch;
  double fla_us;
};
constexpr Anchor kAnchors[] = {{1, 50.0}, {32, 54.0}, {256, 191.0}};

// Device allocations of one benchmark configuration, freed on destruction.
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (void* p : owned_) cudaFree(p);
  }

  // A device copy of `host`.
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

double Median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

struct Timing {
  double hot_us = 0.0;
  double cold_us = 0.0;
  double stream_us = 0.0;
};

absl::StatusOr<Timing> TimeBatch(int batch, int reps, void* flush) {
  std::mt19937 rng(batch);
  const size_t bh = static_cast<size_t>(batch) * kHeads;
  Buffers buffers;
  GdrStepArgs a;
  DS_ASSIGN_OR_RETURN(a.q, buffers.Upload(Random(bh * kDim, &rng, -1, 1)));
  DS_ASSIGN_OR_RETURN(a.k, buffers.Upload(Random(bh * kDim, &rng, -1, 1)));
  DS_ASSIGN_OR_RETURN(a.v, buffers.Upload(Random(bh * kDim, &rng, -1, 1)));
  DS_ASSIGN_OR_RETURN(a.g, buffers.Upload(Random(bh, &rng, -0.1f, 0.0f)));
  DS_ASSIGN_OR_RETURN(a.beta, buffers.Upload(Random(bh, &rng, 0, 1)));
  DS_ASSIGN_OR_RETURN(
      a.state, buffers.Upload(Random(bh * kDim * kDim, &rng, -0.1f, 0.1f)));
  std::vector<int32_t> slots(static_cast<size_t>(batch));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  DS_ASSIGN_OR_RETURN(a.slots, buffers.Upload(slots));
  DS_ASSIGN_OR_RETURN(a.out, buffers.Upload(std::vector<float>(bh * kDim)));
  a.batch = batch;
  a.num_slots = batch;
  a.num_k_heads = kHeads;
  a.num_v_heads = kHeads;
  a.key_dim = kDim;
  a.value_dim = kDim;
  a.q_stride[0] = a.k_stride[0] = a.v_stride[0] = a.out_stride[0] =
      kHeads * kDim;
  a.q_stride[1] = a.k_stride[1] = a.v_stride[1] = a.out_stride[1] = kDim;
  a.g_stride = a.beta_stride = kHeads;
  a.state_stride[0] = int64_t{kHeads} * kDim * kDim;
  a.state_stride[1] = kDim * kDim;
  a.state_stride[2] = kDim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  a.l2norm_qk = true;

  cudaEvent_t start, stop;
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&stop), "cudaEventCreate"));
  auto cleanup = [&] {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  };
  auto timed = [&](int launches) -> absl::StatusOr<double> {
    DS_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(start), "cudaEventRecord"));
    for (int i = 0; i < launches; ++i) {
      DS_RETURN_IF_ERROR(LaunchGatedDeltaRuleStep(a, nullptr));
    }
    DS_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(stop), "cudaEventRecord"));
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaEventSynchronize(stop), "cudaEventSynchronize"));
    float ms = 0.0f;
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaEventElapsedTime(&ms, start, stop), "elapsed"));
    return 1000.0 * ms / launches;
  };

  Timing t;
  absl::Status status = [&]() -> absl::Status {
    for (int i = 0; i < 20; ++i) {
      DS_RETURN_IF_ERROR(LaunchGatedDeltaRuleStep(a, nullptr));
    }
    std::vector<double> hot, cold;
    for (int i = 0; i < reps; ++i) {
      DS_ASSIGN_OR_RETURN(double us, timed(1));
      hot.push_back(us);
    }
    for (int i = 0; i < reps; ++i) {
      DS_RETURN_IF_ERROR(
          CudaStatus(cudaMemset(flush, i & 0xff, kFlushBytes), "cudaMemset"));
      DS_ASSIGN_OR_RETURN(double us, timed(1));
      cold.push_back(us);
    }
    DS_ASSIGN_OR_RETURN(t.stream_us, timed(std::max(reps, 100)));
    t.hot_us = Median(hot);
    t.cold_us = Median(cold);
    return absl::OkStatus();
  }();
  cleanup();
  if (!status.ok()) return status;
  return t;
}

int Run(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 500;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "gdr_step_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  }
  void* flush = nullptr;
  if (absl::Status s = CudaStatus(cudaMalloc(&flush, kFlushBytes), "flush");
      !s.ok()) {
    std::fprintf(stderr, "gdr_step_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf(
      "gated delta rule step, H=%d K=V=%d fp32 state, gate + l2norm, "
      "median of %d\n",
      kHeads, kDim, reps);
  std::printf("%6s %10s %10s %10s %12s %10s %9s\n", "B", "hot us", "cold us",
              "stream us", "GB/s(cold)", "fla us", "speedup");
  int rc = 0;
  for (const Anchor& anchor : kAnchors) {
    absl::StatusOr<Timing> t = TimeBatch(anchor.batch, reps, flush);
    if (!t.ok()) {
      std::fprintf(stderr, "B=%d: %s\n", anchor.batch,
                   t.status().ToString().c_str());
      rc = 1;
      continue;
    }
    const double bytes =
        2.0 * anchor.batch * kHeads * kDim * kDim * sizeof(float);
    std::printf("%6d %10.2f %10.2f %10.2f %12.1f %10.1f %8.2fx\n", anchor.batch,
                t->hot_us, t->cold_us, t->stream_us, bytes / (t->cold_us * 1e3),
                anchor.fla_us, anchor.fla_us / t->cold_us);
  }
  cudaFree(flush);
  return rc;
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Run(argc, argv); }
