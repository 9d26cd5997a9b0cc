// Chunked (WY/UT) gated delta rule over a varlen batch: the prefill path.
//
// Within a chunk of n ≤ kC tokens starting from state S (scaled,
// normalised q and k), with cumulative log decay G_i = Σ_{j≤i} g_j and
// γ_i = exp(G_i), the per-token updates δ_i of the recurrence solve the unit
// lower-triangular system
//   (I + A) Δ = R,  A_ij = β_i (k_i·k_j) exp(G_i − G_j) for j < i,
//                   R_i = β_i (v_i − γ_i Sᵀ k_i)
// (the UT transform; R = U − W S in the usual WY notation, with the solve
// applied once to both). Then
//   O = (γ ⊙ Q) S + mask_{j≤i}(Q Kᵀ ⊙ exp(G_i − G_j)) Δ
//   S ← γ_{n−1} S + (exp(G_{n−1} − G) ⊙ K)ᵀ Δ.
// Decay factors are only formed as exp of non-positive differences, so no
// decay, however strong, overflows.
//
// Work split: after a one-block kernel numbers the chunks across the batch
// (sequence b owns chunks [base[b], base[b + 1]), from cu_seqlens on the
// device), three kernels pass their results through a workspace allocated
// and freed on the stream (cudaMallocAsync; about (2 kC K + kC V + K V) fp32
// per chunk and value head: 2.7 GB for 65536 tokens, 16 heads, K = V = 128).
//  1. Prep, one block per (chunk, value head), all chunks in parallel: K Kᵀ,
//     A, and the solve of (I + A) X = [β γ K | β V] by forward substitution,
//     one column per thread, giving W = (I + A)⁻¹ (β γ K) and
//     U = (I + A)⁻¹ (β V); also K' = exp(G_{n−1} − G) ⊙ K and the chunk's
//     cumulative log decay and key normalisers.
//  2. State, one block per (sequence, value head, tile of kVS value columns),
//     walking the sequence's chunks in order, the next chunk's W, K' and U
//     copied into shared memory (cp.async) during the current one: stores
//     the chunk-start state, Δ = U − W S (over U), S ← γ_{n−1} S + K'ᵀ Δ.
//  3. Output, one block per (chunk, value head), all chunks in parallel:
//     O = (γ ⊙ Q) S_start + mask(Q Kᵀ ⊙ decay) Δ.
// Everything is fp32 SIMT with fp32 accumulation; bf16 inputs are widened on
// load.
//
// Where the time goes and what comes next: the per-chunk products (K Kᵀ,
// the solve, Q Kᵀ, Q S, W S, K'ᵀ Δ) are SIMT FMAs from shared memory at low
// occupancy (the prep kernel uses ~254 registers). The next steps are tensor
// cores for these products (3xTF32 to keep fp32 accuracy), overlapping the
// row loads with compute, and a smaller workspace (bf16 chunk states).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/cuda/gdr/gdr_chunk.cuh"
#include "kernels/cuda/gdr/gdr_common.cuh"
#include "kernels/kernels.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

using gdr_internal::ChunkSequence;
using gdr_internal::FromFloat;
using gdr_internal::kC;
using gdr_internal::LoadGates;
using gdr_internal::LoadScalar;
using gdr_internal::LocateChunk;
using gdr_internal::NumChunks;
using gdr_internal::ToFloat;

constexpr char kOp[] = "GatedDeltaRuleChunked";
constexpr int kVT = kGdrChunkedValueTile;
// Value columns of one block of the state kernel.
constexpr int kVS = 16;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kScanThreads = 1024;
static_assert(kVT == 32, "a value tile is one warp wide");
static_assert(kVT % kVS == 0, "state tiles split value tiles");

// Workspace of one call: per (chunk, value head) W [kC, K], the decayed
// keys K' = exp(G_{n−1} − G) ⊙ K [kC, K], U then Δ [kC, V], the chunk-start
// state [K, V] and the rows' cumulative log decay and key normalisers
// [2, kC]; and the chunk bases [B + 1].
struct Workspace {
  float* w = nullptr;
  float* kd = nullptr;
  float* u = nullptr;
  float* h = nullptr;
  float* rows = nullptr;
  int32_t* base = nullptr;
};

// base[b] = Σ_{b' < b} chunks of b', for b in [0, B]; one block.
__global__ void __launch_bounds__(kScanThreads)
    ChunkBaseKernel(const GdrArgs a, int32_t* base) {
  __shared__ int32_t warp_sums[kScanThreads / 32];
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t per = (a.batch + kScanThreads - 1) / kScanThreads;
  const int64_t b0 = tid * per;
  const int64_t b1 = b0 + per < a.batch ? b0 + per : a.batch;
  int32_t sum = 0;
  for (int64_t b = b0; b < b1; ++b) sum += NumChunks(a, b);
  int32_t incl = sum;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int32_t y = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int32_t x = warp_sums[lane];
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int32_t y = __shfl_up_sync(0xffffffffu, x, offset);
      if (lane >= offset) x += y;
    }
    warp_sums[lane] = x;
  }
  __syncthreads();
  int32_t run = incl - sum + (warp > 0 ? warp_sums[warp - 1] : 0);
  for (int64_t b = b0; b < b1; ++b) {
    base[b] = run;
    run += NumChunks(a, b);
  }
  if (tid == kScanThreads - 1) base[a.batch] = run;
}

template <int kK>
struct PrepSmem {
  static constexpr int kLdK = kK + 1;
  static constexpr int kLdC = kC + 1;
  static constexpr int kKey = 0;                // [kC][kLdK]
  static constexpr int kA = kKey + kC * kLdK;   // [kC][kLdC]
  static constexpr int kGcum = kA + kC * kLdC;  // [kC]
  static constexpr int kBeta = kGcum + kC;      // [kC]
  static constexpr int kNorm = kBeta + kC;      // [kC]
  static constexpr int kFloats = kNorm + kC;
  static constexpr size_t kBytes = sizeof(float) * kFloats;
};

// acc[r][c] = Σ_d x[il + 16 r][d] · y[jl + 16 c][d]: the 4 × 4 tile of the
// 64 × 64 product X Yᵀ that thread (jl, il) of a 256-thread block owns (rows
// kLd floats apart in shared memory).
template <int kK, int kLd>
__device__ __forceinline__ void GramTile(const float* x, const float* y, int il,
                                         int jl, float (&acc)[4][4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) acc[r][cc] = 0.0f;
  }
  for (int d = 0; d < kK; ++d) {
    float yj[4];
    float xi[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      yj[e] = y[(jl + 16 * e) * kLd + d];
      xi[e] = x[(il + 16 * e) * kLd + d];
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) acc[r][cc] += xi[r] * yj[cc];
    }
  }
}

// Kernel 1: W and U of chunk blockIdx.x, value head blockIdx.y.
template <typename T, int kK>
__global__ void __launch_bounds__(kThreads)
    GdrPrepKernel(const GdrArgs a, const Workspace ws) {
  using L = PrepSmem<kK>;
  constexpr int kLdK = L::kLdK;
  constexpr int kLdC = L::kLdC;
  extern __shared__ float smem[];
  float* kc = smem + L::kKey;
  float* am = smem + L::kA;
  float* gcum = smem + L::kGcum;
  float* bet = smem + L::kBeta;
  float* knorm = smem + L::kNorm;

  const int tid = threadIdx.x;
  const int64_t c = blockIdx.x;
  const int h = blockIdx.y;
  const int kh = h / (a.num_v_heads / a.num_k_heads);
  int64_t c0 = 0;
  int n = 0;
  int32_t slot = 0;
  if (!LocateChunk(a, ws.base, c, &c0, &n, &slot)) return;
  if (slot < 0 || slot >= a.num_slots) return;
  const int V = a.value_dim;
  const int64_t ch = c * a.num_v_heads + h;

  const T* k = static_cast<const T*>(a.k) + kh * a.k_stride[1];
  gdr_internal::LoadRows<kWarps, T, kK>(a, k, a.k_stride[0], c0, n, 1.0f, kc,
                                        kLdK, knorm);
  if (tid < 32) LoadGates(a, h, c0, n, gcum, bet);
  __syncthreads();
  if (tid < kC) {
    ws.rows[ch * 2 * kC + tid] = gcum[tid];
    ws.rows[ch * 2 * kC + kC + tid] = knorm[tid];
  }

  // A: thread (jl, il) computes the 4 × 4 tile rows il + 16 r, columns
  // jl + 16 c.
  {
    const int jl = tid % 16;
    const int il = tid / 16;
    float acc[4][4];
    GramTile<kK, kLdK>(kc, kc, il, jl, acc);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = il + 16 * r;
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int j = jl + 16 * cc;
        am[i * kLdC + j] =
            j < i ? bet[i] * acc[r][cc] * __expf(gcum[i] - gcum[j]) : 0.0f;
      }
    }
  }
  __syncthreads();

  // (I + A) X = [β γ K | β V], one column per thread.
  const T* v = static_cast<const T*>(a.v) + h * a.v_stride[1];
  float* w_out = ws.w + ch * kC * kK;
  float* kd_out = ws.kd + ch * kC * kK;
  const float g_last = gcum[n - 1];
  for (int idx = tid; idx < kC * kK; idx += kThreads) {
    const int r = idx / kK;
    kd_out[idx] = kc[r * kLdK + idx % kK] * __expf(g_last - gcum[r]);
  }
  float* u_out = ws.u + ch * kC * V;
  for (int col = tid; col < kK + V; col += kThreads) {
    float x[kC];
    if (col < kK) {
#pragma unroll
      for (int r = 0; r < kC; ++r) {
        x[r] = bet[r] * __expf(gcum[r]) * kc[r * kLdK + col];
      }
    } else {
#pragma unroll
      for (int r = 0; r < kC; ++r) {
        x[r] = r < n ? bet[r] * ToFloat(v[(c0 + r) * a.v_stride[0] + col - kK])
                     : 0.0f;
      }
    }
#pragma unroll
    for (int m = 0; m < kC; ++m) {
#pragma unroll
      for (int r = m + 1; r < kC; ++r) x[r] -= am[r * kLdC + m] * x[m];
    }
    if (col < kK) {
#pragma unroll
      for (int r = 0; r < kC; ++r) w_out[r * kK + col] = x[r];
    } else {
#pragma unroll
      for (int r = 0; r < kC; ++r) u_out[r * V + col - kK] = x[r];
    }
  }
}

template <int kK>
struct StateSmem {
  static constexpr int kLdS = kVS + 4;
  static constexpr int kLdK = kK + 4;  // rows stay 16-byte aligned
  static constexpr int kState = 0;     // [kK][kLdS]
  static constexpr int kBuf = kState + kK * kLdS;
  // Per buffer: W, K', U, G.
  static constexpr int kW = 0;                 // [kC][kLdK]
  static constexpr int kKey = kW + kC * kLdK;  // [kC][kLdK]
  static constexpr int kR = kKey + kC * kLdK;  // [kC][kVS]
  static constexpr int kG = kR + kC * kVS;     // [kC]
  static constexpr int kBufFloats = kG + kC;
  static constexpr int kFloats = kBuf + 2 * kBufFloats;
  static constexpr size_t kBytes = sizeof(float) * kFloats;
};

__device__ __forceinline__ void CpAsync16(float* dst, const float* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d),
               "l"(src));
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Kernel 2: the state recurrence of sequence blockIdx.x / Hv, value head
// blockIdx.x % Hv, value columns [kVS blockIdx.y, kVS (blockIdx.y + 1)).
// The next chunk's operands are copied into the other shared-memory buffer
// (cp.async) while the current chunk is computed.
template <typename T, int kK>
__global__ void __launch_bounds__(kThreads, 1)
    GdrStateKernel(const GdrArgs a, const Workspace ws) {
  using L = StateSmem<kK>;
  constexpr int kLdS = L::kLdS;
  constexpr int kLdK = L::kLdK;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* s_sh = smem + L::kState;
  float* buf0 = smem + L::kBuf;
  constexpr int kWCopies = kC * kK / 4 / kThreads;
  constexpr int kUCopies = kC * kVS / 4;
  static_assert(kWCopies * 4 * kThreads == kC * kK, "W copies");
  static_assert(kUCopies <= kThreads, "U copies");

  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x / a.num_v_heads;
  const int h = static_cast<int>(blockIdx.x % a.num_v_heads);
  const int j0 = blockIdx.y * kVS;
  const int V = a.value_dim;

  int64_t start = 0;
  int64_t end = 0;
  if (!gdr_internal::SequenceRange(a, b, &start, &end)) return;
  if (start == end) return;
  const int32_t slot = a.slots[b * a.slots_stride];
  if (slot < 0 || slot >= a.num_slots) return;
  const int64_t cbase = ws.base[b];
  const int64_t nchunks = ws.base[b + 1] - cbase;

  float* state =
      a.state + slot * a.state_stride[0] + h * a.state_stride[1] + j0;
  for (int idx = tid; idx < kK * kVS; idx += kThreads) {
    const int i = idx / kVS;
    const int j = idx % kVS;
    s_sh[i * kLdS + j] = state[i * a.state_stride[2] + j];
  }
  __syncthreads();

  // Copies chunk ci's W, K', U tile and G into buffer ci % 2.
  auto prefetch = [&](int64_t ci) {
    const int64_t ch = (cbase + ci) * a.num_v_heads + h;
    float* buf = buf0 + (ci % 2) * L::kBufFloats;
    const float* w_in = ws.w + ch * kC * kK;
    const float* kd_in = ws.kd + ch * kC * kK;
#pragma unroll
    for (int e = 0; e < kWCopies; ++e) {
      const int idx = tid + e * kThreads;
      const int i = idx / (kK / 4);
      const int d = 4 * (idx % (kK / 4));
      CpAsync16(buf + L::kW + i * kLdK + d, w_in + 4 * idx);
      CpAsync16(buf + L::kKey + i * kLdK + d, kd_in + 4 * idx);
    }
    if (tid < kUCopies) {
      const int i = tid / (kVS / 4);
      const int j = 4 * (tid % (kVS / 4));
      CpAsync16(buf + L::kR + i * kVS + j, ws.u + ch * kC * V + i * V + j0 + j);
    }
    if (tid >= kThreads - kC / 4) {
      const int i = 4 * (tid - (kThreads - kC / 4));
      CpAsync16(buf + L::kG + i, ws.rows + ch * 2 * kC + i);
    }
    CpAsyncCommit();
  };
  if (nchunks > 0) prefetch(0);

  for (int64_t ci = 0; ci < nchunks; ++ci) {
    const int64_t c = cbase + ci;
    const int64_t ch = c * a.num_v_heads + h;
    const int64_t c0 = start + ci * kC;
    const int n = static_cast<int>(end - c0 < kC ? end - c0 : kC);
    float* buf = buf0 + (ci % 2) * L::kBufFloats;
    float* wsm = buf + L::kW;
    float* ksm = buf + L::kKey;
    float* rsm = buf + L::kR;
    if (ci + 1 < nchunks) {
      prefetch(ci + 1);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }

    // The chunk-start state out.
    float* h_out = ws.h + ch * kK * V + j0;
    for (int idx = tid; idx < kK * kVS; idx += kThreads) {
      const int i = idx / kVS;
      const int j = idx % kVS;
      h_out[i * V + j] = s_sh[i * kLdS + j];
    }
    __syncthreads();
    const float g_last = buf[L::kG + n - 1];

    // Δ = U − W S: thread (rg, cg, dq) sums rows 4 rg + r, columns 4 cg + e
    // over key dims 16 s + 4 dq + [0, 4); the quad of dq lanes reduces.
    {
      const int dq = tid % 4;
      const int cg = (tid / 4) % 4;
      const int rg = tid / 16;
      float acc[4][4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[r][e] = 0.0f;
      }
#pragma unroll 2
      for (int s = 0; s < kK / 16; ++s) {
        const int d = 16 * s + 4 * dq;
        float4 wv[4];
        float4 sv[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          wv[r] =
              *reinterpret_cast<const float4*>(wsm + (4 * rg + r) * kLdK + d);
          sv[r] =
              *reinterpret_cast<const float4*>(s_sh + (d + r) * kLdS + 4 * cg);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float wr[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
          for (int dd = 0; dd < 4; ++dd) {
            acc[r][0] += wr[dd] * sv[dd].x;
            acc[r][1] += wr[dd] * sv[dd].y;
            acc[r][2] += wr[dd] * sv[dd].z;
            acc[r][3] += wr[dd] * sv[dd].w;
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], 1);
          acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], 2);
        }
      }
      // Lane dq of the quad writes row 4 rg + dq.
      float4 o;
      o.x = dq == 0   ? acc[0][0]
            : dq == 1 ? acc[1][0]
            : dq == 2 ? acc[2][0]
                      : acc[3][0];
      o.y = dq == 0   ? acc[0][1]
            : dq == 1 ? acc[1][1]
            : dq == 2 ? acc[2][1]
                      : acc[3][1];
      o.z = dq == 0   ? acc[0][2]
            : dq == 1 ? acc[1][2]
            : dq == 2 ? acc[2][2]
                      : acc[3][2];
      o.w = dq == 0   ? acc[0][3]
            : dq == 1 ? acc[1][3]
            : dq == 2 ? acc[2][3]
                      : acc[3][3];
      const int i = 4 * rg + dq;
      float4* rp = reinterpret_cast<float4*>(rsm + i * kVS + 4 * cg);
      float4 u4 = *rp;
      u4.x -= o.x;
      u4.y -= o.y;
      u4.z -= o.z;
      u4.w -= o.w;
      *rp = u4;
      *reinterpret_cast<float4*>(ws.u + ch * kC * V + i * V + j0 + 4 * cg) = u4;
    }
    __syncthreads();

    // S ← γ_{n−1} S + K'ᵀ Δ: thread (kg, jp, mi) owns key
    // rows 4 kg + [0, 4), columns 2 jp + [0, 2), summing chunk rows m ≡ mi (mod
    // kSplit); the kSplit adjacent lanes reduce.
    {
      constexpr int kSplit = 128 / kK;
      const int mi = tid % kSplit;
      const int jp = (tid / kSplit) % (kVS / 2);
      const int kg = tid / (kSplit * kVS / 2);
      float acc[4][2];
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = 0.0f;
#pragma unroll 2
      for (int m = mi; m < kC; m += kSplit) {
        const float4 kv =
            *reinterpret_cast<const float4*>(ksm + m * kLdK + 4 * kg);
        const float2 rv =
            *reinterpret_cast<const float2*>(rsm + m * kVS + 2 * jp);
        acc[0][0] += kv.x * rv.x;
        acc[0][1] += kv.x * rv.y;
        acc[1][0] += kv.y * rv.x;
        acc[1][1] += kv.y * rv.y;
        acc[2][0] += kv.z * rv.x;
        acc[2][1] += kv.z * rv.y;
        acc[3][0] += kv.w * rv.x;
        acc[3][1] += kv.w * rv.y;
      }
#pragma unroll
      for (int off = 1; off < kSplit; off <<= 1) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          acc[r][0] += __shfl_xor_sync(0xffffffffu, acc[r][0], off);
          acc[r][1] += __shfl_xor_sync(0xffffffffu, acc[r][1], off);
        }
      }
      if (mi == 0) {
        const float gam = __expf(g_last);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          float2* sp =
              reinterpret_cast<float2*>(s_sh + (4 * kg + r) * kLdS + 2 * jp);
          float2 s2 = *sp;
          s2.x = gam * s2.x + acc[r][0];
          s2.y = gam * s2.y + acc[r][1];
          *sp = s2;
        }
      }
    }
    __syncthreads();
  }

  for (int idx = tid; idx < kK * kVS; idx += kThreads) {
    const int i = idx / kVS;
    const int j = idx % kVS;
    state[i * a.state_stride[2] + j] = s_sh[i * kLdS + j];
  }
}

template <int kK>
struct OutSmem {
  static constexpr int kLdK = kK + 1;
  static constexpr int kLdC = kC + 1;
  static constexpr int kQ = 0;                   // [kC][kLdK]
  static constexpr int kKey = kQ + kC * kLdK;    // [kC][kLdK]
  static constexpr int kP = kKey + kC * kLdK;    // [kC][kLdC]
  static constexpr int kState = kP + kC * kLdC;  // [kK][kVT]
  static constexpr int kR = kState + kK * kVT;   // [kC][kVT]
  static constexpr int kGcum = kR + kC * kVT;    // [kC]
  static constexpr int kFloats = kGcum + kC;
  static constexpr size_t kBytes = sizeof(float) * kFloats;
};

// Kernel 3: the output of chunk blockIdx.x, value head blockIdx.y.
template <typename T, int kK>
__global__ void __launch_bounds__(kThreads)
    GdrOutputKernel(const GdrArgs a, const Workspace ws) {
  using L = OutSmem<kK>;
  constexpr int kLdK = L::kLdK;
  constexpr int kLdC = L::kLdC;
  extern __shared__ float smem[];
  float* qc = smem + L::kQ;
  float* kc = smem + L::kKey;
  float* pm = smem + L::kP;
  float* st = smem + L::kState;
  float* rt = smem + L::kR;
  float* gcum = smem + L::kGcum;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t c = blockIdx.x;
  const int h = blockIdx.y;
  const int kh = h / (a.num_v_heads / a.num_k_heads);
  int64_t c0 = 0;
  int n = 0;
  int32_t slot = 0;
  if (!LocateChunk(a, ws.base, c, &c0, &n, &slot)) return;
  const int V = a.value_dim;
  T* out = static_cast<T*>(a.out) + h * a.out_stride[1];
  if (slot < 0 || slot >= a.num_slots) {
    for (int i = warp; i < n; i += kWarps) {
      for (int j = lane; j < V; j += 32) {
        out[(c0 + i) * a.out_stride[0] + j] = FromFloat<T>(0.0f);
      }
    }
    return;
  }
  const int64_t ch = c * a.num_v_heads + h;

  const T* q = static_cast<const T*>(a.q) + kh * a.q_stride[1];
  const T* k = static_cast<const T*>(a.k) + kh * a.k_stride[1];
  gdr_internal::LoadRows<kWarps, T, kK>(a, q, a.q_stride[0], c0, n, a.scale, qc,
                                        kLdK, nullptr);
  gdr_internal::LoadRows<kWarps, T, kK>(a, k, a.k_stride[0], c0, n, 1.0f, kc,
                                        kLdK, nullptr);
  if (tid < kC) gcum[tid] = ws.rows[ch * 2 * kC + tid];
  __syncthreads();

  // The decayed causal Q Kᵀ: thread (jl, il) computes the 4 × 4 tile rows
  // il + 16 r, columns jl + 16 c.
  {
    const int jl = tid % 16;
    const int il = tid / 16;
    float acc[4][4];
    GramTile<kK, kLdK>(qc, kc, il, jl, acc);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = il + 16 * r;
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int j = jl + 16 * cc;
        pm[i * kLdC + j] =
            j <= i ? acc[r][cc] * __expf(gcum[i] - gcum[j]) : 0.0f;
      }
    }
  }

  const float* h_in = ws.h + ch * kK * V;
  const float* r_in = ws.u + ch * kC * V;
  for (int j0 = 0; j0 < V; j0 += kVT) {
    for (int i = warp; i < kK; i += kWarps) {
      st[i * kVT + lane] = h_in[i * V + j0 + lane];
    }
    for (int i = warp; i < kC; i += kWarps) {
      rt[i * kVT + lane] = r_in[i * V + j0 + lane];
    }
    __syncthreads();
    // Thread (lane, warp) owns rows warp, warp + 8, ... of column lane.
    float o[kC / kWarps];
#pragma unroll
    for (int r = 0; r < kC / kWarps; ++r) o[r] = 0.0f;
    for (int d = 0; d < kK; ++d) {
      const float sd = st[d * kVT + lane];
#pragma unroll
      for (int r = 0; r < kC / kWarps; ++r) {
        o[r] += qc[(warp + kWarps * r) * kLdK + d] * sd;
      }
    }
#pragma unroll
    for (int r = 0; r < kC / kWarps; ++r) {
      o[r] *= __expf(gcum[warp + kWarps * r]);
    }
    for (int m = 0; m < kC; ++m) {
      const float rm = rt[m * kVT + lane];
#pragma unroll
      for (int r = 0; r < kC / kWarps; ++r) {
        o[r] += pm[(warp + kWarps * r) * kLdC + m] * rm;
      }
    }
#pragma unroll
    for (int r = 0; r < kC / kWarps; ++r) {
      const int i = warp + kWarps * r;
      if (i < n) {
        out[(c0 + i) * a.out_stride[0] + j0 + lane] = FromFloat<T>(o[r]);
      }
    }
    __syncthreads();
  }
}

template <typename Kernel>
absl::Status SetSmem(Kernel kernel, size_t bytes) {
  return CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)),
      "GatedDeltaRuleChunked shared memory opt-in");
}

template <typename T, int kK>
absl::Status Launch(const GdrArgs& a, cudaStream_t stream) {
  const int64_t hv = a.num_v_heads;
  const int64_t v = a.value_dim;
  // Σ ceil(len / kC) ≤ T / kC + B.
  const int64_t max_chunks = (a.tokens + kC - 1) / kC + a.batch;
  if (max_chunks > 2147483647) {
    return gdr_internal::Invalid(kOp, "tokens", a.tokens, "< 2^37");
  }
  if (hv > 65535) {
    return gdr_internal::Invalid(kOp, "num_v_heads", hv, "at most 65535");
  }
  if (v / kVS > 65535) {
    return gdr_internal::Invalid(kOp, "value_dim", v, "at most 65535 * 16");
  }
  const int64_t per_chunk = 2 * kC * kK + kC * v + kK * v + 2 * kC;
  const size_t bytes = sizeof(float) * max_chunks * hv * per_chunk +
                       sizeof(int32_t) * (a.batch + 1);
  void* raw = nullptr;
  DS_RETURN_IF_ERROR(CudaStatus(cudaMallocAsync(&raw, bytes, stream),
                                "GatedDeltaRuleChunked workspace"));
  Workspace ws;
  ws.w = static_cast<float*>(raw);
  ws.kd = ws.w + max_chunks * hv * kC * kK;
  ws.u = ws.kd + max_chunks * hv * kC * kK;
  ws.h = ws.u + max_chunks * hv * kC * v;
  ws.rows = ws.h + max_chunks * hv * kK * v;
  ws.base = reinterpret_cast<int32_t*>(ws.rows + max_chunks * hv * 2 * kC);

  absl::Status status = [&]() -> absl::Status {
    DS_RETURN_IF_ERROR(SetSmem(&GdrPrepKernel<T, kK>, PrepSmem<kK>::kBytes));
    DS_RETURN_IF_ERROR(SetSmem(&GdrStateKernel<T, kK>, StateSmem<kK>::kBytes));
    DS_RETURN_IF_ERROR(SetSmem(&GdrOutputKernel<T, kK>, OutSmem<kK>::kBytes));
    ChunkBaseKernel<<<1, kScanThreads, 0, stream>>>(a, ws.base);
    const dim3 chunk_grid(static_cast<unsigned>(max_chunks),
                          static_cast<unsigned>(hv));
    GdrPrepKernel<T, kK>
        <<<chunk_grid, kThreads, PrepSmem<kK>::kBytes, stream>>>(a, ws);
    const dim3 state_grid(static_cast<unsigned>(a.batch * hv),
                          static_cast<unsigned>(v / kVS));
    GdrStateKernel<T, kK>
        <<<state_grid, kThreads, StateSmem<kK>::kBytes, stream>>>(a, ws);
    GdrOutputKernel<T, kK>
        <<<chunk_grid, kThreads, OutSmem<kK>::kBytes, stream>>>(a, ws);
    return CudaStatus(cudaGetLastError(),
                      "GatedDeltaRuleChunked kernel launch");
  }();
  const absl::Status freed =
      CudaStatus(cudaFreeAsync(raw, stream), "GatedDeltaRuleChunked workspace");
  DS_RETURN_IF_ERROR(status);
  return freed;
}

template <typename T>
absl::Status LaunchTyped(const GdrArgs& a, cudaStream_t stream) {
  switch (a.key_dim) {
    case 32:
      return Launch<T, 32>(a, stream);
    case 64:
      return Launch<T, 64>(a, stream);
    default:
      return Launch<T, 128>(a, stream);
  }
}

}  // namespace

namespace gdr_internal {

void LaunchChunkBase(const GdrArgs& a, int32_t* base, cudaStream_t stream) {
  ChunkBaseKernel<<<1, kScanThreads, 0, stream>>>(a, base);
}

}  // namespace gdr_internal

absl::Status LaunchGdrChunked(const GdrArgs& args, void* stream) {
  DS_RETURN_IF_ERROR(gdr_internal::CheckCommonArgs(kOp, args));
  if (args.key_dim != 32 && args.key_dim != 64 && args.key_dim != 128) {
    return gdr_internal::Invalid(kOp, "key_dim", args.key_dim, "32, 64 or 128");
  }
  if (args.value_dim % kVT != 0) {
    return gdr_internal::Invalid(kOp, "value_dim", args.value_dim,
                                 "a multiple of 32");
  }
  if (args.value_dim / kVT > 65535) {
    return gdr_internal::Invalid(kOp, "value_dim", args.value_dim,
                                 "at most 65535 * 32");
  }
  if (args.batch == 0 || args.tokens == 0) return absl::OkStatus();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args.act_bf16) {
    return gdr_internal::LaunchGdrChunkedTensorCores(args, s);
  }
  if (args.out_bf16) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": f32 inputs need an f32 out"));
  }
  return LaunchTyped<float>(args, s);
}

}  // namespace deltaserve
