#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling/argmax.h"

namespace deltaserve {
namespace {

constexpr int kThreads = 1024;

// A candidate: NaN ranks below every number; among equal values the lower
// index wins.
struct Best {
  float value;
  int32_t index;
  int nan;  // 1 for NaN (shuffles take no bool)
};

__device__ __forceinline__ bool Better(const Best& a, const Best& b) {
  if (a.nan != b.nan) return b.nan;
  if (!a.nan && a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

// The best of a warp's candidates, in lane 0.
__device__ __forceinline__ Best WarpBest(Best best) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best o;
    o.value = __shfl_down_sync(0xffffffffu, best.value, offset);
    o.index = __shfl_down_sync(0xffffffffu, best.index, offset);
    o.nan = __shfl_down_sync(0xffffffffu, best.nan, offset);
    if (Better(o, best)) best = o;
  }
  return best;
}

__global__ void __launch_bounds__(kThreads)
    ArgmaxKernel(const float* __restrict__ logits, int64_t vocab,
                 int64_t stride, int32_t* __restrict__ out) {
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * stride;
  Best best{0.0f, 0x7fffffff, 1};
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
    const float x = row[j];
    const Best c{x, static_cast<int32_t>(j), isnan(x) ? 1 : 0};
    if (Better(c, best)) best = c;
  }
  // Warp reduction, then across warps through shared memory.
  best = WarpBest(best);
  __shared__ Best warp_best[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = WarpBest(warp_best[lane]);
    if (lane == 0) out[blockIdx.x] = best.nan ? 0 : best.index;
  }
}

}  // namespace

absl::Status LaunchArgmax(const float* logits, int64_t rows, int64_t vocab,
                          int64_t stride, int32_t* out, void* stream) {
  if (vocab < 1 || vocab >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argmax: vocab = ", vocab, " is outside [1, 2^31)"));
  }
  if (stride < vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argmax: row stride ", stride, " is smaller than vocab ", vocab));
  }
  if (rows <= 0) return absl::OkStatus();
  if (rows >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argmax: rows = ", rows, " is 2^31 or more"));
  }
  if (logits == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("Argmax: null logits or out");
  }
  ArgmaxKernel<<<static_cast<unsigned>(rows), kThreads, 0,
                 static_cast<cudaStream_t>(stream)>>>(logits, vocab, stride,
                                                      out);
  return CudaStatus(cudaGetLastError(), "Argmax launch");
}

}  // namespace deltaserve
