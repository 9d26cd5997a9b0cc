// Decode step of the gated delta rule.
//
// Work split: one block per (sequence, value head, tile of value columns).
// Lane x of warp y owns kVec adjacent columns of the tile and key rows y,
// y + kKeyGroups, y + 2·kKeyGroups, ... of the state, held in registers, so
// each warp reads and writes whole row segments and the state is read once
// and written once. The two reductions over the key dimension (Sᵀk before the
// update, Sᵀq after it) go through shared memory across the warps. The op is
// bound by the state traffic, B·Hv·K·V·4 bytes each way; kVec = 4 (16-byte
// accesses) keeps more of it in flight per thread when the layout allows.
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gated_delta_rule_step.h"

namespace deltaserve {
namespace {

constexpr int kKeyGroups = 8;  // warps per block
constexpr int kThreads = 32 * kKeyGroups;

__device__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// kVec adjacent floats at p (16-byte aligned when kVec is 4).
template <int kVec>
__device__ void LoadVec(const float* p, float (&x)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c) x[c] = p[c];
  }
}

template <int kVec>
__device__ void StoreVec(float* p, const float (&x)[kVec]) {
  if constexpr (kVec == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c) p[c] = x[c];
  }
}

// kRows: key rows per thread, at least ceil(K / kKeyGroups). kVec: value
// columns per thread; when it is above 1, V and the pool's strides are
// multiples of it and the pool is aligned to kVec floats.
template <int kRows, int kVec>
__global__ void __launch_bounds__(kThreads, 2)
    GatedDeltaRuleStepKernel(const GdrStepArgs a) {
  constexpr int kTile = 32 * kVec;
  __shared__ float k_sh[kRows * kKeyGroups];
  __shared__ float q_sh[kRows * kKeyGroups];
  __shared__ float partial_sk[kKeyGroups][kTile];
  __shared__ float partial_out[kKeyGroups][kTile];
  __shared__ float inv_norm[2];

  const int lane = threadIdx.x;
  const int group = threadIdx.y;
  const int tid = group * 32 + lane;
  const int64_t b = blockIdx.x / a.num_v_heads;
  const int h = static_cast<int>(blockIdx.x % a.num_v_heads);
  const int col0 = blockIdx.y * kTile + lane * kVec;
  // With kVec > 1, V is a multiple of kVec: a lane's columns are all in or
  // all out.
  const bool has_cols = col0 < a.value_dim;
  const int dk = a.key_dim;

  float* out = a.out + b * a.out_stride[0] + h * a.out_stride[1] + col0;
  const int32_t slot = a.slots[b];
  if (slot < 0 || slot >= a.num_slots) {
    // Padding row; the test is uniform over the block, so all leave together.
    if (group == 0 && has_cols) {
      for (int c = 0; c < kVec; ++c) out[c] = 0.0f;
    }
    return;
  }

  // Start the state loads first; everything else overlaps with them. Offsets
  // within a head fit in 32 bits (checked on the host).
  float* s_head = a.state + slot * a.state_stride[0] + h * a.state_stride[1];
  const uint32_t row_stride = static_cast<uint32_t>(a.state_stride[2]);
  const uint32_t s_off = group * row_stride + col0;
  const uint32_t s_step = kKeyGroups * row_stride;
  float s[kRows][kVec];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = group + r * kKeyGroups;
    if (has_cols && i < dk) {
      LoadVec<kVec>(s_head + s_off + r * s_step, s[r]);
    } else {
#pragma unroll
      for (int c = 0; c < kVec; ++c) s[r][c] = 0.0f;
    }
  }
  float v_val[kVec];
  const float* v = a.v + b * a.v_stride[0] + h * a.v_stride[1] + col0;
#pragma unroll
  for (int c = 0; c < kVec; ++c) v_val[c] = has_cols ? v[c] : 0.0f;
  const float beta = a.beta[b * a.beta_stride + h];
  const float decay = a.g != nullptr ? expf(a.g[b * a.g_stride + h]) : 1.0f;

  const int kh = h / (a.num_v_heads / a.num_k_heads);
  const float* q = a.q + b * a.q_stride[0] + kh * a.q_stride[1];
  const float* k = a.k + b * a.k_stride[0] + kh * a.k_stride[1];
  for (int i = tid; i < kRows * kKeyGroups; i += kThreads) {
    k_sh[i] = i < dk ? k[i] : 0.0f;
    q_sh[i] = i < dk ? q[i] : 0.0f;
  }
  __syncthreads();
  float inv_k = 1.0f;
  float inv_q = 1.0f;
  if (a.l2norm_qk) {
    if (group < 2) {
      const float* x = group == 0 ? k_sh : q_sh;
      float ss = 0.0f;
      for (int i = lane; i < dk; i += 32) ss += x[i] * x[i];
      ss = WarpSum(ss);
      if (lane == 0) inv_norm[group] = rsqrtf(ss + 1e-6f);
    }
    __syncthreads();
    inv_k = inv_norm[0];
    inv_q = inv_norm[1];
  }

  // S ← decay · S; this warp's share of Sᵀk.
  float sk[kVec] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float ki = k_sh[group + r * kKeyGroups] * inv_k;
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
      s[r][c] *= decay;
      sk[c] += s[r][c] * ki;
    }
  }
#pragma unroll
  for (int c = 0; c < kVec; ++c) partial_sk[group][lane * kVec + c] = sk[c];
  __syncthreads();
  float delta[kVec];
#pragma unroll
  for (int c = 0; c < kVec; ++c) {
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < kKeyGroups; ++y)
      total += partial_sk[y][lane * kVec + c];
    delta[c] = (v_val[c] - total) * beta;
  }

  // S ← S + k δᵀ, written back at once; this warp's share of Sᵀ(scale · q).
  float o[kVec] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = group + r * kKeyGroups;
    const float ki = k_sh[i] * inv_k;
    const float qi = (q_sh[i] * inv_q) * a.scale;
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
      s[r][c] += ki * delta[c];
      o[c] += s[r][c] * qi;
    }
    if (has_cols && i < dk) StoreVec<kVec>(s_head + s_off + r * s_step, s[r]);
  }
#pragma unroll
  for (int c = 0; c < kVec; ++c) partial_out[group][lane * kVec + c] = o[c];
  __syncthreads();
  if (group == 0 && has_cols) {
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
      float total = 0.0f;
#pragma unroll
      for (int y = 0; y < kKeyGroups; ++y) {
        total += partial_out[y][lane * kVec + c];
      }
      out[c] = total;
    }
  }
}

absl::Status Invalid(const char* field, int64_t value, const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat(
      "GatedDeltaRuleStep: ", field, " = ", value, ", expected ", expected));
}

absl::Status CheckArgs(const GdrStepArgs& a) {
  if (a.batch < 0) return Invalid("batch", a.batch, ">= 0");
  if (a.num_k_heads < 1) return Invalid("num_k_heads", a.num_k_heads, ">= 1");
  if (a.num_v_heads < 1 || a.num_v_heads % a.num_k_heads != 0) {
    return Invalid("num_v_heads", a.num_v_heads,
                   "a positive multiple of num_k_heads");
  }
  if (a.key_dim < 1 || a.key_dim > kGdrStepMaxKeyDim) {
    return Invalid("key_dim", a.key_dim, "in [1, 256]");
  }
  if (a.value_dim < 1 || a.value_dim > (1 << 20)) {
    return Invalid("value_dim", a.value_dim, "in [1, 2^20]");
  }
  if (a.batch * a.num_v_heads > INT32_MAX) {
    return Invalid("batch", a.batch, "batch * num_v_heads < 2^31");
  }
  if (a.batch == 0) return absl::OkStatus();
  if (a.num_slots < 1) return Invalid("num_slots", a.num_slots, ">= 1");
  const int64_t row_stride = a.state_stride[2];
  if (row_stride < a.value_dim ||
      row_stride * (a.key_dim - 1) + a.value_dim > UINT32_MAX) {
    return Invalid("state_stride[2]", row_stride,
                   "at least value_dim and (key_dim - 1) * state_stride[2] + "
                   "value_dim < 2^32");
  }
  const struct {
    const void* ptr;
    const char* name;
  } required[] = {{a.q, "q"},       {a.k, "k"},         {a.v, "v"},
                  {a.beta, "beta"}, {a.state, "state"}, {a.slots, "slots"},
                  {a.out, "out"}};
  for (const auto& [ptr, name] : required) {
    if (ptr == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("GatedDeltaRuleStep: ", name, " is null"));
    }
  }
  return absl::OkStatus();
}

template <int kRows, int kVec>
void Launch(const GdrStepArgs& a, cudaStream_t stream) {
  constexpr int kTile = 32 * kVec;
  const dim3 grid(static_cast<unsigned>(a.batch * a.num_v_heads),
                  static_cast<unsigned>((a.value_dim + kTile - 1) / kTile));
  const dim3 block(32, kKeyGroups);
  GatedDeltaRuleStepKernel<kRows, kVec><<<grid, block, 0, stream>>>(a);
}

// Whether the pool allows 16-byte state accesses and there is enough work
// for the wider tiles: below about one block per SM, narrow tiles spread the
// few heads over more SMs.
bool UseVec4(const GdrStepArgs& a) {
  const bool aligned = a.value_dim % 4 == 0 && a.state_stride[0] % 4 == 0 &&
                       a.state_stride[1] % 4 == 0 &&
                       a.state_stride[2] % 4 == 0 &&
                       reinterpret_cast<uintptr_t>(a.state) % 16 == 0;
  const int64_t blocks = a.batch * a.num_v_heads * ((a.value_dim + 127) / 128);
  return aligned && a.key_dim <= 16 * kKeyGroups && blocks >= 128;
}

}  // namespace

absl::Status LaunchGatedDeltaRuleStep(const GdrStepArgs& args, void* stream) {
  absl::Status status = CheckArgs(args);
  if (!status.ok() || args.batch == 0) return status;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int dk = args.key_dim;
  if (UseVec4(args)) {
    if (dk <= 4 * kKeyGroups) {
      Launch<4, 4>(args, s);
    } else if (dk <= 8 * kKeyGroups) {
      Launch<8, 4>(args, s);
    } else {
      Launch<16, 4>(args, s);
    }
  } else if (dk <= 4 * kKeyGroups) {
    Launch<4, 1>(args, s);
  } else if (dk <= 8 * kKeyGroups) {
    Launch<8, 1>(args, s);
  } else if (dk <= 16 * kKeyGroups) {
    Launch<16, 1>(args, s);
  } else {
    Launch<32, 1>(args, s);
  }
  return CudaStatus(cudaGetLastError(), "GatedDeltaRuleStep kernel launch");
}

}  // namespace deltaserve
