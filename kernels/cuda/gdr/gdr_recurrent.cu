// Token-by-token gated delta rule over a varlen batch.
//
// Work split: one block per (sequence, value head, tile of kColsPerBlock
// value columns). The state columns are independent of each other: column j
// needs only δ_j = β (v_j − S[:, j]·k) and o_j = S[:, j]·q. So kSplit
// adjacent lanes share one column, each holding kRows of its key rows
// (i = sub, sub + kSplit, ...) in registers, and the two dot products per
// token are reduced with two shuffles: no shared memory and no block-wide
// barrier on the per-token path. The lanes of one column together also cover
// all of q and k, which gives the L2 norms the same way. The state is read
// once and written once per sequence.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/cuda/gdr/gdr_common.cuh"
#include "kernels/status.h"

namespace deltaserve {
namespace {

using gdr_internal::FromFloat;
using gdr_internal::LoadScalar;
using gdr_internal::ToFloat;

constexpr char kOp[] = "GatedDeltaRuleRecurrent";
constexpr int kSplit = 4;  // lanes per value column
constexpr int kColsPerBlock = 32;
constexpr int kThreads = kSplit * kColsPerBlock;

__device__ __forceinline__ float SplitSum(float x) {
#pragma unroll
  for (int offset = 1; offset < kSplit; offset <<= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// kRows: key rows per lane, at least ceil(K / kSplit).
template <typename T, int kRows>
__global__ void __launch_bounds__(kThreads)
    GdrRecurrentKernel(const GdrArgs a) {
  const int sub = threadIdx.x % kSplit;
  const int col = blockIdx.y * kColsPerBlock + threadIdx.x / kSplit;
  const bool has_col = col < a.value_dim;
  const int64_t b = blockIdx.x / a.num_v_heads;
  const int h = static_cast<int>(blockIdx.x % a.num_v_heads);
  const int kh = h / (a.num_v_heads / a.num_k_heads);
  const int dk = a.key_dim;

  int64_t start = 0;
  int64_t end = 0;
  if (!gdr_internal::SequenceRange(a, b, &start, &end)) return;
  const T* q = static_cast<const T*>(a.q) + kh * a.q_stride[1];
  const T* k = static_cast<const T*>(a.k) + kh * a.k_stride[1];
  const T* v = static_cast<const T*>(a.v) + h * a.v_stride[1] + col;
  T* out = static_cast<T*>(a.out) + h * a.out_stride[1] + col;
  const int32_t slot = a.slots[b * a.slots_stride];
  if (slot < 0 || slot >= a.num_slots) {
    if (sub == 0 && has_col) {
      for (int64_t t = start; t < end; ++t) {
        out[t * a.out_stride[0]] = FromFloat<T>(0.0f);
      }
    }
    return;
  }

  float* s_col =
      a.state + slot * a.state_stride[0] + h * a.state_stride[1] + col;
  const int64_t row_stride = a.state_stride[2];
  float s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = sub + r * kSplit;
    s[r] = (has_col && i < dk) ? s_col[i * row_stride] : 0.0f;
  }

  for (int64_t t = start; t < end; ++t) {
    const T* qt = q + t * a.q_stride[0];
    const T* kt = k + t * a.k_stride[0];
    float qv[kRows];
    float kv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = sub + r * kSplit;
      qv[r] = i < dk ? ToFloat(qt[i]) : 0.0f;
      kv[r] = i < dk ? ToFloat(kt[i]) : 0.0f;
    }
    const float vt = has_col ? ToFloat(v[t * a.v_stride[0]]) : 0.0f;
    const float bt = LoadScalar(a.beta, t * a.beta_stride + h, a.beta_bf16);
    const float decay =
        a.g != nullptr ? __expf(LoadScalar(a.g, t * a.g_stride + h, a.g_bf16))
                       : 1.0f;
    float inv_k = 1.0f;
    float inv_q = 1.0f;
    if (a.l2norm_qk) {
      float ssk = 0.0f;
      float ssq = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        ssk += kv[r] * kv[r];
        ssq += qv[r] * qv[r];
      }
      inv_k = rsqrtf(SplitSum(ssk) + 1e-6f);
      inv_q = rsqrtf(SplitSum(ssq) + 1e-6f);
    }
    const float q_mul = inv_q * a.scale;
    float sk = 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      kv[r] *= inv_k;
      s[r] *= decay;
      sk += s[r] * kv[r];
    }
    const float delta = (vt - SplitSum(sk)) * bt;
    float o = 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      s[r] += kv[r] * delta;
      o += s[r] * qv[r];
    }
    o = SplitSum(o) * q_mul;
    if (sub == 0 && has_col) out[t * a.out_stride[0]] = FromFloat<T>(o);
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = sub + r * kSplit;
    if (has_col && i < dk) s_col[i * row_stride] = s[r];
  }
}

template <typename T, int kRows>
void Launch(const GdrArgs& a, cudaStream_t stream) {
  const dim3 grid(
      static_cast<unsigned>(a.batch * a.num_v_heads),
      static_cast<unsigned>((a.value_dim + kColsPerBlock - 1) / kColsPerBlock));
  GdrRecurrentKernel<T, kRows><<<grid, kThreads, 0, stream>>>(a);
}

template <typename T>
void LaunchTyped(const GdrArgs& a, cudaStream_t stream) {
  const int dk = a.key_dim;
  if (dk <= 8 * kSplit) {
    Launch<T, 8>(a, stream);
  } else if (dk <= 16 * kSplit) {
    Launch<T, 16>(a, stream);
  } else if (dk <= 32 * kSplit) {
    Launch<T, 32>(a, stream);
  } else {
    Launch<T, 64>(a, stream);
  }
}

}  // namespace

absl::Status LaunchGdrRecurrent(const GdrArgs& args, void* stream) {
  DS_RETURN_IF_ERROR(gdr_internal::CheckCommonArgs(kOp, args));
  if (args.key_dim > kGdrRecurrentMaxKeyDim) {
    return gdr_internal::Invalid(kOp, "key_dim", args.key_dim, "<= 256");
  }
  if (args.out_bf16 != args.act_bf16) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out must have the type of q, k and v"));
  }
  if (args.batch == 0 || args.tokens == 0) return absl::OkStatus();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args.act_bf16) {
    LaunchTyped<__nv_bfloat16>(args, s);
  } else {
    LaunchTyped<float>(args, s);
  }
  return CudaStatus(cudaGetLastError(),
                    "GatedDeltaRuleRecurrent kernel launch");
}

}  // namespace deltaserve
