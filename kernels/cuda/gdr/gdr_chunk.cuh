// Device helpers of the chunked gated-delta-rule kernels (gdr_chunked.cu,
// the fp32 form, and gdr_chunked_tc.cu, the tensor-core form): how chunks of
// kGdrChunkSize tokens are numbered across a varlen batch, and chunk loads.
// Internal to this package.
#ifndef DELTASERVE_KERNELS_CUDA_GDR_GDR_CHUNK_CUH_
#define DELTASERVE_KERNELS_CUDA_GDR_GDR_CHUNK_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/cuda/gdr/gdr_common.cuh"
#include "kernels/kernels.h"

namespace deltaserve {
namespace gdr_internal {

constexpr int kC = kGdrChunkSize;
static_assert(kC == 64, "the thread mappings assume 64-token chunks");

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// Chunks of sequence b: 0 when its offsets are malformed.
__device__ __forceinline__ int32_t NumChunks(const GdrArgs& a, int64_t b) {
  int64_t start = 0;
  int64_t end = 0;
  if (!gdr_internal::SequenceRange(a, b, &start, &end)) return 0;
  return static_cast<int32_t>((end - start + kC - 1) / kC);
}

// Enqueues base[b] = Σ_{b' < b} chunks of sequence b', for b in [0, B]
// (one block; defined in gdr_chunked.cu). Unchecked launch.
void LaunchChunkBase(const GdrArgs& a, int32_t* base, cudaStream_t stream);

// The sequence owning chunk c, or −1 past the last chunk.
__device__ __forceinline__ int64_t ChunkSequence(const GdrArgs& a,
                                                 const int32_t* base,
                                                 int64_t c) {
  if (c >= base[a.batch]) return -1;
  int64_t lo = 0;
  int64_t hi = a.batch - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (base[mid] <= c) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Loads rows [0, kC) of a chunk of q or k (zero past n) into x [kC][ld]
// (f32 or bf16), multiplied by `mul` and, when l2norm_qk, by 1 / ‖row‖
// (stored in norm when not null). One warp per row of a kWarps-warp block.
template <int kWarps, typename T, int kK, typename X>
__device__ __forceinline__ void LoadRows(const GdrArgs& a, const T* p,
                                         int64_t stride, int64_t c0, int n,
                                         float mul, X* x, int ld, float* norm) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int i = warp; i < kC; i += kWarps) {
    float xv[kK / 32];
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < kK / 32; ++e) {
      xv[e] = i < n ? ToFloat(p[(c0 + i) * stride + lane + 32 * e]) : 0.0f;
      ss += xv[e] * xv[e];
    }
    float m = 1.0f;
    if (a.l2norm_qk) m = rsqrtf(WarpSum(ss) + 1e-6f);
    if (norm != nullptr && lane == 0) norm[i] = m;
    m *= mul;
#pragma unroll
    for (int e = 0; e < kK / 32; ++e)
      x[i * ld + lane + 32 * e] = FromFloat<X>(xv[e] * m);
  }
}

// Cumulative log decay and beta of a chunk into gcum and bet (zero past n);
// warp 0.
__device__ __forceinline__ void LoadGates(const GdrArgs& a, int h, int64_t c0,
                                          int n, float* gcum, float* bet) {
  const int lane = threadIdx.x % 32;
  // Lane l owns tokens 2l and 2l + 1; an inclusive warp scan of the pair
  // sums gives the cumulative log decay.
  float g0 = 0.0f, g1 = 0.0f, b0 = 0.0f, b1 = 0.0f;
  const int i0 = 2 * lane;
  if (i0 < n) {
    const int64_t t = c0 + i0;
    b0 = LoadScalar(a.beta, t * a.beta_stride + h, a.beta_bf16);
    if (a.g != nullptr) g0 = LoadScalar(a.g, t * a.g_stride + h, a.g_bf16);
  }
  if (i0 + 1 < n) {
    const int64_t t = c0 + i0 + 1;
    b1 = LoadScalar(a.beta, t * a.beta_stride + h, a.beta_bf16);
    if (a.g != nullptr) g1 = LoadScalar(a.g, t * a.g_stride + h, a.g_bf16);
  }
  float incl = g0 + g1;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += y;
  }
  gcum[i0] = incl - g1;
  gcum[i0 + 1] = incl;
  if (bet != nullptr) {
    bet[i0] = b0;
    bet[i0 + 1] = b1;
  }
}

// Where chunk c of the grid lies: its sequence, first token, length and
// slot. False when the block has nothing to do.
__device__ __forceinline__ bool LocateChunk(const GdrArgs& a,
                                            const int32_t* base, int64_t c,
                                            int64_t* c0, int* n,
                                            int32_t* slot) {
  const int64_t b = ChunkSequence(a, base, c);
  if (b < 0) return false;
  int64_t start = 0;
  int64_t end = 0;
  if (!gdr_internal::SequenceRange(a, b, &start, &end)) return false;
  *c0 = start + (c - base[b]) * kC;
  *n = static_cast<int>(end - *c0 < kC ? end - *c0 : kC);
  *slot = a.slots[b * a.slots_stride];
  return true;
}

// The tensor-core form (gdr_chunked_tc.cu): bf16 q, k, v (act_bf16), any
// K in {32, 64, 128}, V a multiple of 32; out f32 or bf16 (out_f32). Same
// contract and return codes as LaunchGdrChunked, which calls it.
absl::Status LaunchGdrChunkedTensorCores(const GdrArgs& a, cudaStream_t stream);

}  // namespace gdr_internal
}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GDR_GDR_CHUNK_CUH_
