// Linear and symmetric power attention on the GPU: the token-by-token
// recurrence (used for both the recurrent and the chunked entry points; it
// computes the same function), the gates and the cumulative rotary
// embedding. fp32 throughout; correct for any size the checks admit, not
// yet tuned: each token reads and writes its block's state tile in memory.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mixers/mixers.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kCols = 32;  // value columns of one block

__device__ __forceinline__ bool SeqRange(const int32_t* cu, int64_t b,
                                         int64_t tokens, int64_t* start,
                                         int64_t* end) {
  const int64_t s = cu[b];
  const int64_t e = cu[b + 1];
  if (s < 0 || e < s || e > tokens) return false;
  *start = s;
  *end = e;
  return true;
}

// φ(x)_f · factor for the features f this thread owns (see MixerKernel).
__device__ __forceinline__ float Feature(const MixerArgs& a, const float* x,
                                         const uint8_t* index,
                                         const float* coef, int64_t f) {
  if (a.degree == 0) {
    const float y = x[f];
    return y > 0.0f ? y + 1.0f : expf(y);
  }
  float prod = coef[f];
  const uint8_t* idx = index + f * a.degree;
  for (int m = 0; m < a.degree; ++m) prod *= x[idx[m]];
  return prod;
}

// Block (sequence blockIdx.x, kv head blockIdx.y, value columns
// [32 blockIdx.z, + 32)). Shared memory: the feature table of a power map
// (multisets as bytes, coefficients), the block's copy of the normaliser
// [F], the token's key and query, its value columns and a reduction area.
__global__ void __launch_bounds__(kThreads)
    MixerKernel(const MixerArgs a, int64_t table_bytes) {
  extern __shared__ float4 smem4[];
  char* base = reinterpret_cast<char*>(smem4);
  const int64_t F = a.features;
  const int K = a.key_dim;
  uint8_t* index = reinterpret_cast<uint8_t*>(base);
  float* coef = reinterpret_cast<float*>(base + table_bytes);
  float* z = coef + (a.degree > 0 ? F : 0);
  float* kv = z + F;
  float* qv = kv + K;
  float* vt = qv + K;
  float* red = vt + kCols;  // [kWarps][kCols + 1]

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t b = blockIdx.x;
  const int j = blockIdx.y;
  const int v0 = blockIdx.z * kCols;
  const int vw = min(kCols, a.value_dim - v0);
  const int group = a.heads / a.kv_heads;
  int64_t start = 0, end = 0;
  if (!SeqRange(a.cu_seqlens, b, a.tokens, &start, &end)) return;
  if (start == end) return;
  const int32_t slot = a.slots[b];
  if (slot < 0 || slot >= a.num_slots) {
    for (int64_t t = start; t < end; ++t) {
      for (int hh = j * group; hh < (j + 1) * group; ++hh) {
        for (int c = tid; c < vw; c += kThreads) {
          a.out[t * a.out_stride[0] + hh * a.out_stride[1] + v0 + c] = 0.0f;
        }
      }
    }
    return;
  }
  // The feature table: multisets i_1 ≤ … ≤ i_p in lexicographic order with
  // sqrt(p! / Π m_i!), built by one thread.
  if (a.degree > 0 && tid == 0) {
    uint8_t alpha[16];
    for (int m = 0; m < a.degree; ++m) alpha[m] = 0;
    double fact = 1.0;
    for (int m = 2; m <= a.degree; ++m) fact *= m;
    for (int64_t f = 0; f < F; ++f) {
      double c = fact;
      int run = 1;
      for (int m = 1; m <= a.degree; ++m) {
        if (m < a.degree && alpha[m] == alpha[m - 1]) {
          ++run;
        } else {
          for (int r = 2; r <= run; ++r) c /= r;
          run = 1;
        }
      }
      coef[f] = static_cast<float>(sqrt(c));
      for (int m = 0; m < a.degree; ++m) index[f * a.degree + m] = alpha[m];
      int m = a.degree - 1;
      while (m >= 0 && alpha[m] == K - 1) --m;
      if (m < 0) break;
      ++alpha[m];
      for (int r = m + 1; r < a.degree; ++r) alpha[r] = alpha[m];
    }
  }
  const float* zin =
      a.normalizer + slot * a.normalizer_stride[0] + j * a.normalizer_stride[1];
  for (int64_t f = tid; f < F; f += kThreads) z[f] = zin[f];
  float* s = a.state + slot * a.state_stride[0] + j * a.state_stride[1] + v0;
  __syncthreads();

  for (int64_t t = start; t < end; ++t) {
    for (int i = tid; i < K; i += kThreads) {
      kv[i] = a.k[t * a.k_stride[0] + j * a.k_stride[1] + i];
    }
    for (int c = tid; c < vw; c += kThreads) {
      vt[c] = a.v[t * a.v_stride[0] + j * a.v_stride[1] + v0 + c];
    }
    const float decay = a.g != nullptr ? expf(a.g[t * a.g_stride + j]) : 1.0f;
    __syncthreads();
    for (int64_t f = tid; f < F; f += kThreads) {
      const float pk = Feature(a, kv, index, coef, f);
      float* row = s + f * a.state_stride[2];
      for (int c = 0; c < vw; ++c) row[c] = decay * row[c] + pk * vt[c];
      z[f] = decay * z[f] + pk;
    }
    for (int hh = j * group; hh < (j + 1) * group; ++hh) {
      __syncthreads();  // qv and red are reused
      for (int i = tid; i < K; i += kThreads) {
        qv[i] = a.q[t * a.q_stride[0] + hh * a.q_stride[1] + i];
      }
      __syncthreads();
      float o[kCols];
      for (int c = 0; c < kCols; ++c) o[c] = 0.0f;
      float den = 0.0f;
      for (int64_t f = tid; f < F; f += kThreads) {
        const float pq = a.factor * Feature(a, qv, index, coef, f);
        const float* row = s + f * a.state_stride[2];
#pragma unroll
        for (int c = 0; c < kCols; ++c) o[c] += c < vw ? pq * row[c] : 0.0f;
        den += pq * z[f];
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        for (int off = 16; off > 0; off >>= 1) {
          o[c] += __shfl_xor_sync(0xffffffffu, o[c], off);
        }
      }
      for (int off = 16; off > 0; off >>= 1) {
        den += __shfl_xor_sync(0xffffffffu, den, off);
      }
      if (lane == 0) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) red[warp * (kCols + 1) + c] = o[c];
        red[warp * (kCols + 1) + kCols] = den;
      }
      __syncthreads();
      if (tid < vw) {
        float sum = 0.0f;
        float d = 0.0f;
        for (int w = 0; w < kWarps; ++w) {
          sum += red[w * (kCols + 1) + tid];
          d += red[w * (kCols + 1) + kCols];
        }
        if (a.normalize) sum /= d + a.eps;
        a.out[t * a.out_stride[0] + hh * a.out_stride[1] + v0 + tid] = sum;
      }
    }
    __syncthreads();  // kv and vt are reused
  }
  if (blockIdx.z == 0) {
    float* zout = a.normalizer + slot * a.normalizer_stride[0] +
                  j * a.normalizer_stride[1];
    for (int64_t f = tid; f < F; f += kThreads) zout[f] = z[f];
  }
}

__global__ void MixerGatesKernel(const MixerGatesArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.tokens * a.heads) return;
  const int64_t t = i / a.heads;
  const int h = static_cast<int>(i % a.heads);
  if (a.g != nullptr) {
    const float x = a.gate_logits[t * a.gate_logits_stride + h] + a.bias;
    // logsigmoid(x) = −softplus(−x), stable both ways.
    a.g[t * a.g_stride + h] = fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
  }
  if (a.rate != nullptr) {
    const float x = a.rate_logits[t * a.rate_logits_stride + h];
    a.rate[t * a.rate_stride + h] = fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
  }
}

__global__ void CumulativeRopeKernel(const CumulativeRopeArgs a) {
  const int64_t b = blockIdx.x;
  const int j = blockIdx.y;
  const int half = a.rot_dim / 2;
  const int i = threadIdx.x;
  if (i >= half) return;
  int64_t start = 0, end = 0;
  if (!SeqRange(a.cu_seqlens, b, a.tokens, &start, &end)) return;
  if (start == end) return;
  const int32_t slot = a.slots[b];
  if (slot < 0 || slot >= a.num_slots) return;
  const int group = a.heads / a.kv_heads;
  const double inv_freq = pow(static_cast<double>(a.theta),
                              -2.0 * i / static_cast<double>(a.rot_dim));
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  float* stored = a.angle + slot * a.angle_stride[0] + j * a.angle_stride[1];
  double ang = stored[i];
  auto rotate = [&](float* p, float c, float s) {
    const float x1 = p[i];
    const float x2 = p[i + half];
    p[i] = x1 * c - x2 * s;
    p[i + half] = x2 * c + x1 * s;
  };
  for (int64_t t = start; t < end; ++t) {
    const double r = a.rate[t * a.rate_stride + j];
    ang = remainder(ang + r * inv_freq, kTwoPi);
    const float c = static_cast<float>(cos(ang));
    const float s = static_cast<float>(sin(ang));
    rotate(a.k + t * a.k_stride[0] + j * a.k_stride[1], c, s);
    for (int hh = j * group; hh < (j + 1) * group; ++hh) {
      rotate(a.q + t * a.q_stride[0] + hh * a.q_stride[1], c, s);
    }
  }
  stored[i] = static_cast<float>(ang);
}

absl::Status Invalid(const char* op, const char* what, int64_t value,
                     const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", what, " = ", value, ", expected ", expected));
}

}  // namespace

absl::Status LaunchMixer(const MixerArgs& a, void* stream) {
  constexpr char kOp[] = "Mixer";
  if (a.batch == 0 || a.tokens == 0) return absl::OkStatus();
  if (a.key_dim < 1 || a.key_dim > kMixerMaxKeyDim) {
    return Invalid(kOp, "key_dim", a.key_dim, "in [1, 256]");
  }
  if (a.degree < 0 || a.degree > 16) {
    return Invalid(kOp, "degree", a.degree, "in [0, 16]");
  }
  const int64_t table =
      a.degree > 0 ? (a.features * a.degree + 15) / 16 * 16 : 0;
  const int64_t bytes =
      table + 4 * ((a.degree > 0 ? 2 : 1) * a.features + 2 * a.key_dim + kCols +
                   kWarps * (kCols + 1));
  if (bytes > kMixerMaxTableBytes + 64 * 1024) {
    return Invalid(kOp, "features", a.features,
                   "few enough for the feature table to fit in shared memory");
  }
  if (a.batch > 65535 * 1024LL || a.kv_heads > 65535) {
    return Invalid(kOp, "batch", a.batch, "a grid that fits");
  }
  DS_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(MixerKernel,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)),
      "Mixer shared memory opt-in"));
  const dim3 grid(static_cast<unsigned>(a.batch),
                  static_cast<unsigned>(a.kv_heads),
                  static_cast<unsigned>((a.value_dim + kCols - 1) / kCols));
  MixerKernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(
      a, table);
  return CudaStatus(cudaGetLastError(), "Mixer kernel launch");
}

absl::Status LaunchMixerGates(const MixerGatesArgs& a, void* stream) {
  const int64_t n = a.tokens * a.heads;
  if (n == 0 || (a.g == nullptr && a.rate == nullptr)) {
    return absl::OkStatus();
  }
  const int64_t blocks = (n + 255) / 256;
  if (blocks > 2147483647)
    return Invalid("MixerGates", "tokens", a.tokens, "fewer");
  MixerGatesKernel<<<static_cast<unsigned>(blocks), 256, 0,
                     static_cast<cudaStream_t>(stream)>>>(a);
  return CudaStatus(cudaGetLastError(), "MixerGates kernel launch");
}

absl::Status LaunchCumulativeRope(const CumulativeRopeArgs& a, void* stream) {
  constexpr char kOp[] = "CumulativeRope";
  if (a.batch == 0 || a.tokens == 0) return absl::OkStatus();
  if (a.rot_dim < 2 || a.rot_dim > 2048 || a.rot_dim % 2 != 0) {
    return Invalid(kOp, "rot_dim", a.rot_dim, "even, in [2, 2048]");
  }
  if (a.batch > 2147483647 || a.kv_heads > 65535) {
    return Invalid(kOp, "kv_heads", a.kv_heads, "at most 65535");
  }
  const dim3 grid(static_cast<unsigned>(a.batch),
                  static_cast<unsigned>(a.kv_heads));
  CumulativeRopeKernel<<<grid, a.rot_dim / 2, 0,
                         static_cast<cudaStream_t>(stream)>>>(a);
  return CudaStatus(cudaGetLastError(), "CumulativeRope kernel launch");
}

}  // namespace deltaserve
