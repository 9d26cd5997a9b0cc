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
// Work split (a first, correct version): one block of 256 threads per
// (sequence, value head, tile of kVT = 32 value columns) walks the sequence's
// chunks in order. The state columns are independent, so tiles need no
// communication; each recomputes the chunk's K Kᵀ and Q Kᵀ. The [K, kVT] state
// tile and every chunk operand live in shared memory in fp32 and the products
// are plain FMAs (fp32 accumulation throughout; bf16 inputs are widened on
// load). The triangular solve is blocked by 16 rows: one warp solves a diagonal
// block column-per-lane from registers while the whole block applies the
// trailing updates.
//
// Where the time goes and what comes next: everything here is on the
// sequential chunk-to-chunk path and bound by shared-memory loads. The fast
// form moves the state-independent work (A, its inverse, W = T(β γ K),
// U = T(β V), the masked Q Kᵀ) into a chunk-parallel kernel, keeps the state
// in MMA accumulator fragments, and runs the products on tensor cores.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/cuda/gdr/gdr_common.cuh"
#include "kernels/kernels.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

using gdr_internal::FromFloat;
using gdr_internal::LoadScalar;
using gdr_internal::ToFloat;

constexpr char kOp[] = "GatedDeltaRuleChunked";
constexpr int kC = kGdrChunkSize;
constexpr int kVT = kGdrChunkedValueTile;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSolveBlock = 16;
static_assert(kC == 64, "the thread mappings below assume 64-token chunks");
static_assert(kVT == 32, "a value tile is one warp wide");

// Shared-memory layout (floats) for key dimension kK.
template <int kK>
struct Smem {
  static constexpr int kLdK = kK + 1;  // odd: column walks avoid conflicts
  static constexpr int kLdC = kC + 1;
  static constexpr int kState = 0;               // [kK][kVT]
  static constexpr int kQ = kState + kK * kVT;   // [kC][kLdK]
  static constexpr int kKey = kQ + kC * kLdK;    // [kC][kLdK]
  static constexpr int kU = kKey + kC * kLdK;    // [kC][kVT]
  static constexpr int kA = kU + kC * kVT;       // [kC][kLdC]
  static constexpr int kQK = kA + kC * kLdC;     // [kC][kLdC]
  static constexpr int kGcum = kQK + kC * kLdC;  // [kC]
  static constexpr int kGamma = kGcum + kC;      // [kC]
  static constexpr int kToEnd = kGamma + kC;     // [kC]
  static constexpr int kBeta = kToEnd + kC;      // [kC]
  static constexpr int kFloats = kBeta + kC;
  static constexpr size_t kBytes = sizeof(float) * kFloats;
};

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename T, int kK>
__global__ void __launch_bounds__(kThreads, 1)
    GdrChunkedKernel(const GdrArgs a) {
  using L = Smem<kK>;
  constexpr int kLdK = L::kLdK;
  constexpr int kLdC = L::kLdC;
  extern __shared__ float smem[];
  float* s_sh = smem + L::kState;
  float* qc = smem + L::kQ;
  float* kc = smem + L::kKey;
  float* u = smem + L::kU;
  float* am = smem + L::kA;
  float* qk = smem + L::kQK;
  float* gcum = smem + L::kGcum;
  float* gam = smem + L::kGamma;
  float* to_end = smem + L::kToEnd;
  float* bet = smem + L::kBeta;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t b = blockIdx.x / a.num_v_heads;
  const int h = static_cast<int>(blockIdx.x % a.num_v_heads);
  const int kh = h / (a.num_v_heads / a.num_k_heads);
  const int j0 = blockIdx.y * kVT;

  int64_t start = 0;
  int64_t end = 0;
  if (!gdr_internal::SequenceRange(a, b, &start, &end)) return;
  if (start == end) return;
  const T* q = static_cast<const T*>(a.q) + kh * a.q_stride[1];
  const T* k = static_cast<const T*>(a.k) + kh * a.k_stride[1];
  const T* v = static_cast<const T*>(a.v) + h * a.v_stride[1] + j0;
  T* out = static_cast<T*>(a.out) + h * a.out_stride[1] + j0;
  const int32_t slot = a.slots[b * a.slots_stride];
  if (slot < 0 || slot >= a.num_slots) {
    for (int64_t t = start + warp; t < end; t += kWarps) {
      out[t * a.out_stride[0] + lane] = FromFloat<T>(0.0f);
    }
    return;
  }

  // This tile of the state: s_sh[i][j] = state[slot, h, i, j0 + j].
  float* state =
      a.state + slot * a.state_stride[0] + h * a.state_stride[1] + j0;
  for (int i = warp; i < kK; i += kWarps) {
    s_sh[i * kVT + lane] = state[i * a.state_stride[2] + lane];
  }

  for (int64_t c0 = start; c0 < end; c0 += kC) {
    const int n = static_cast<int>(end - c0 < kC ? end - c0 : kC);

    // Load the chunk: q (normalised, scaled) and k (normalised) by rows, one
    // warp per row; v; cumulative log decay and beta. Rows past n are zero,
    // which makes their A rows, R rows and so Δ rows zero.
    for (int i = warp; i < kC; i += kWarps) {
      float qv[kK / 32];
      float kv[kK / 32];
      float ssq = 0.0f;
      float ssk = 0.0f;
      const int64_t t = c0 + i;
#pragma unroll
      for (int e = 0; e < kK / 32; ++e) {
        const int d = lane + 32 * e;
        qv[e] = i < n ? ToFloat(q[t * a.q_stride[0] + d]) : 0.0f;
        kv[e] = i < n ? ToFloat(k[t * a.k_stride[0] + d]) : 0.0f;
        ssq += qv[e] * qv[e];
        ssk += kv[e] * kv[e];
      }
      float q_mul = a.scale;
      float k_mul = 1.0f;
      if (a.l2norm_qk) {
        q_mul *= rsqrtf(WarpSum(ssq) + 1e-6f);
        k_mul = rsqrtf(WarpSum(ssk) + 1e-6f);
      }
#pragma unroll
      for (int e = 0; e < kK / 32; ++e) {
        const int d = lane + 32 * e;
        qc[i * kLdK + d] = qv[e] * q_mul;
        kc[i * kLdK + d] = kv[e] * k_mul;
      }
      u[i * kVT + lane] = i < n ? ToFloat(v[t * a.v_stride[0] + lane]) : 0.0f;
    }
    if (warp == 0) {
      // Lane l owns tokens 2l and 2l + 1; an inclusive warp scan of the
      // pair sums gives the cumulative log decay.
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
      bet[i0] = b0;
      bet[i0 + 1] = b1;
    }
    __syncthreads();

    // Phase A. (a) A and the decayed causal Q Kᵀ: thread (jl, il) computes
    // the 4 × 4 tile rows il + 16 r, columns jl + 16 c of both, so each
    // shared load feeds several FMAs.
    {
      const int jl = tid % 16;
      const int il = tid / 16;
      float acc_k[4][4];
      float acc_q[4][4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc_k[r][c] = acc_q[r][c] = 0.0f;
      }
      for (int d = 0; d < kK; ++d) {
        float kj[4];
        float ki[4];
        float qi[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          kj[e] = kc[(jl + 16 * e) * kLdK + d];
          ki[e] = kc[(il + 16 * e) * kLdK + d];
          qi[e] = qc[(il + 16 * e) * kLdK + d];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            acc_k[r][c] += ki[r] * kj[c];
            acc_q[r][c] += qi[r] * kj[c];
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = il + 16 * r;
        const float gi = gcum[i];
        const float bi = bet[i];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int j = jl + 16 * c;
          float a_ij = 0.0f;
          float qk_ij = 0.0f;
          if (j <= i) {
            const float decay = __expf(gi - gcum[j]);
            qk_ij = acc_q[r][c] * decay;
            if (j < i) a_ij = bi * acc_k[r][c] * decay;
          }
          am[i * kLdC + j] = a_ij;
          qk[i * kLdC + j] = qk_ij;
        }
      }
    }
    // (b) R = β (v − γ K S) in place of v, and the inter-chunk part of the
    // output γ Q S, kept in registers: thread (lane, warp) owns rows
    // warp, warp + 8, ... of column lane.
    float o_acc[kC / kWarps];
    {
      float acc_r[kC / kWarps];
#pragma unroll
      for (int r = 0; r < kC / kWarps; ++r) acc_r[r] = o_acc[r] = 0.0f;
      for (int d = 0; d < kK; ++d) {
        const float sd = s_sh[d * kVT + lane];
#pragma unroll
        for (int r = 0; r < kC / kWarps; ++r) {
          const int i = warp + kWarps * r;
          acc_r[r] += kc[i * kLdK + d] * sd;
          o_acc[r] += qc[i * kLdK + d] * sd;
        }
      }
#pragma unroll
      for (int r = 0; r < kC / kWarps; ++r) {
        const int i = warp + kWarps * r;
        const float gi = __expf(gcum[i]);
        u[i * kVT + lane] = bet[i] * (u[i * kVT + lane] - gi * acc_r[r]);
        o_acc[r] *= gi;
      }
    }
    if (tid < kC) {
      const float glast = gcum[n - 1];
      gam[tid] = __expf(gcum[tid]);
      to_end[tid] = __expf(glast - gcum[tid]);
    }
    __syncthreads();

    // Phase S: (I + A) Δ = R, in place in u, by blocks of 16 rows.
#pragma unroll
    for (int blk = 0; blk < kC / kSolveBlock; ++blk) {
      const int r0 = blk * kSolveBlock;
      if (warp == 0) {
        float x[kSolveBlock];
#pragma unroll
        for (int r = 0; r < kSolveBlock; ++r) x[r] = u[(r0 + r) * kVT + lane];
#pragma unroll
        for (int m = 0; m < kSolveBlock; ++m) {
#pragma unroll
          for (int r = m + 1; r < kSolveBlock; ++r) {
            x[r] -= am[(r0 + r) * kLdC + r0 + m] * x[m];
          }
        }
#pragma unroll
        for (int r = 0; r < kSolveBlock; ++r) u[(r0 + r) * kVT + lane] = x[r];
      }
      __syncthreads();
      if (blk + 1 < kC / kSolveBlock) {
        for (int i = r0 + kSolveBlock + warp; i < kC; i += kWarps) {
          float acc = u[i * kVT + lane];
#pragma unroll
          for (int m = 0; m < kSolveBlock; ++m) {
            acc -= am[i * kLdC + r0 + m] * u[(r0 + m) * kVT + lane];
          }
          u[i * kVT + lane] = acc;
        }
        __syncthreads();
      }
    }

    // Phase O: the chunk's output.
#pragma unroll
    for (int r = 0; r < kC / kWarps; ++r) {
      const int i = warp + kWarps * r;
      float o = o_acc[r];
      for (int m = 0; m <= i; ++m) o += qk[i * kLdC + m] * u[m * kVT + lane];
      if (i < n) out[(c0 + i) * a.out_stride[0] + lane] = FromFloat<T>(o);
    }
    // State update: S ← γ_last S + (exp(G_last − G) ⊙ K)ᵀ Δ; thread (lane,
    // warp) owns rows warp, warp + 8, ... of column lane.
    {
      constexpr int kRows = kK / kWarps;
      const float g_last = gam[n - 1];
      float acc[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        acc[r] = g_last * s_sh[(warp + kWarps * r) * kVT + lane];
      }
      for (int m = 0; m < n; ++m) {
        const float dm = to_end[m] * u[m * kVT + lane];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          acc[r] += kc[m * kLdK + warp + kWarps * r] * dm;
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        s_sh[(warp + kWarps * r) * kVT + lane] = acc[r];
      }
    }
    __syncthreads();
  }

  for (int i = warp; i < kK; i += kWarps) {
    state[i * a.state_stride[2] + lane] = s_sh[i * kVT + lane];
  }
}

template <typename T, int kK>
absl::Status Launch(const GdrArgs& a, cudaStream_t stream) {
  auto* kernel = &GdrChunkedKernel<T, kK>;
  constexpr size_t kBytes = Smem<kK>::kBytes;
  DS_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kBytes)),
      "GatedDeltaRuleChunked shared memory opt-in"));
  const dim3 grid(static_cast<unsigned>(a.batch * a.num_v_heads),
                  static_cast<unsigned>(a.value_dim / kVT));
  kernel<<<grid, kThreads, kBytes, stream>>>(a);
  return CudaStatus(cudaGetLastError(), "GatedDeltaRuleChunked kernel launch");
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
  return args.act_bf16 ? LaunchTyped<__nv_bfloat16>(args, s)
                       : LaunchTyped<float>(args, s);
}

}  // namespace deltaserve
