// Row-wise and element-wise kernels; see elementwise.h for the contracts.
//
// Layouts: norms run one block per row (a block-wide sum of squares through
// warp shuffles, then a second pass that normalises); element-wise ops run a
// grid-stride loop over the flattened [rows, cols / N] index; both use
// N-element (16-byte) vector accesses when every pointer, stride and the row
// length allow it. Rope runs one block per token with the token's cos/sin
// table in shared memory. The causal conv gives one thread a channel of a
// whole sequence, keeping the last W − 1 inputs in registers, so in-place
// operation is safe. All arithmetic is f32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise/elementwise.h"
#include "kernels/tensor.h"

namespace deltaserve {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kMaxGridBlocks = 8192;  // cap of the grid-stride kernels

// ---------------------------------------------------------------------------
// Device helpers.

__device__ __forceinline__ float ToF32(float x) { return x; }
__device__ __forceinline__ float ToF32(bf16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF32(float x);
template <>
__device__ __forceinline__ float FromF32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 FromF32<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements of T, aligned to their size, for one vector access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T e[N];
};

template <int N, typename T>
__device__ __forceinline__ void LoadN(const T* p, float (&v)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = ToF32(pk.e[i]);
}

template <int N, typename T>
__device__ __forceinline__ void StoreN(T* p, const float (&v)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.e[i] = FromF32<T>(v[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

__device__ __forceinline__ float Sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}
__device__ __forceinline__ float Silu(float x) { return x * Sigmoid(x); }
// torch.nn.functional.softplus with beta 1 and threshold 20.
__device__ __forceinline__ float Softplus(float x) {
  return x > 20.0f ? x : log1pf(expf(x));
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// Sum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float BlockSum(float x) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  x = WarpSum(x);
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    float y = lane < warps ? partial[lane] : 0.0f;
    y = WarpSum(y);
    if (lane == 0) total = y;
  }
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------
// Host helpers.

absl::Status Invalid(const char* op, const char* field, int64_t value,
                     const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", field, " = ", value, ", expected ", expected));
}

absl::Status Null(const char* op, const char* field) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", field, " is null"));
}

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16; }

absl::Status CheckFloat(const char* op, const char* field, DType t) {
  if (IsFloat(t)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": ", field, " is ", DTypeName(t), ", expected f32 or bf16"));
}

// Whether a pointer and a row stride allow accesses of `bytes` at every
// row start.
bool Aligned(const void* p, int64_t stride_elems, int elem_size, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0 &&
         (stride_elems * elem_size) % bytes == 0;
}

int GridFor(int64_t work, int threads) {
  return static_cast<int>(
      std::min<int64_t>((work + threads - 1) / threads, kMaxGridBlocks));
}

// Threads of a one-block-per-row kernel for `n` vectors per row.
int RowThreads(int64_t n) {
  const int64_t t = (n + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 32, 512));
}

// Calls f(T{}) for T the device type of `t` (f32 or bf16; checked before).
template <typename F>
void DispatchFloat(DType t, F&& f) {
  if (t == DType::kBF16) {
    f(bf16{});
  } else {
    f(float{});
  }
}

absl::Status LaunchResult(const char* what) {
  return CudaStatus(cudaGetLastError(), what);
}

// ---------------------------------------------------------------------------
// RMSNorm.

// Writes vector i of a normalised row: out = v · inv · (w + w_offset),
// times silu(z) when gated.
template <typename T, typename TW, typename TO, int N, bool kGated>
__device__ __forceinline__ void StoreNormed(const float (&v)[N], float inv,
                                            float w_offset, const TW* w,
                                            const T* z, TO* out, int i) {
  float wv[N];
  LoadN<N>(w + i * N, wv);
  float o[N];
#pragma unroll
  for (int j = 0; j < N; ++j) o[j] = v[j] * inv * (wv[j] + w_offset);
  if constexpr (kGated) {
    float zv[N];
    LoadN<N>(z + i * N, zv);
#pragma unroll
    for (int j = 0; j < N; ++j) o[j] *= Silu(zv[j]);
  }
  StoreN<N>(out + i * N, o);
}

template <typename T, typename TW, typename TO, int N, bool kGated>
__global__ void RmsNormKernel(const RmsNormArgs a) {
  const int64_t row = blockIdx.x;
  const int vecs = static_cast<int>(a.dim / N);
  const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
    float v[N];
    LoadN<N>(x + i * N, v);
#pragma unroll
    for (int j = 0; j < N; ++j) ss += v[j] * v[j];
  }
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(a.dim) + a.eps);
  const TW* w = static_cast<const TW*>(a.weight);
  const T* z = kGated ? static_cast<const T*>(a.z) + row * a.z_stride : nullptr;
  TO* out = static_cast<TO*>(a.out) + row * a.out_stride;
  const float w_offset = a.zero_centered ? 1.0f : 0.0f;
  for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
    float v[N];
    LoadN<N>(x + i * N, v);
    StoreNormed<T, TW, TO, N, kGated>(v, inv, w_offset, w, z, out, i);
  }
}

// Short rows (at most 32 kPer vectors): a warp per row, 8 rows per block,
// the row held in registers between the sum and the scaling.
constexpr int kRowsPerWarpBlock = 8;
template <typename T, typename TW, typename TO, int N, int kPer, bool kGated>
__global__ void RmsNormWarpKernel(const RmsNormArgs a) {
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * kRowsPerWarpBlock + threadIdx.x / 32;
  if (row >= a.rows) return;
  const int lane = threadIdx.x % 32;
  const int vecs = static_cast<int>(a.dim / N);
  const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
  float v[kPer][N];
  float ss = 0.0f;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int i = lane + 32 * p;
    if (i < vecs) {
      LoadN<N>(x + i * N, v[p]);
#pragma unroll
      for (int j = 0; j < N; ++j) ss += v[p][j] * v[p][j];
    }
  }
  ss = WarpSum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(a.dim) + a.eps);
  const TW* w = static_cast<const TW*>(a.weight);
  const T* z = kGated ? static_cast<const T*>(a.z) + row * a.z_stride : nullptr;
  TO* out = static_cast<TO*>(a.out) + row * a.out_stride;
  const float w_offset = a.zero_centered ? 1.0f : 0.0f;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int i = lane + 32 * p;
    if (i >= vecs) break;
    StoreNormed<T, TW, TO, N, kGated>(v[p], inv, w_offset, w, z, out, i);
  }
}

template <typename T, typename TW, typename TO, int N>
void LaunchRmsNormTyped(const RmsNormArgs& a, cudaStream_t stream) {
  const int64_t vecs = a.dim / N;
  if (vecs <= 64) {
    const unsigned blocks = static_cast<unsigned>(
        (a.rows + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock);
    constexpr int kThreads = 32 * kRowsPerWarpBlock;
    if (a.z != nullptr && vecs <= 32) {
      RmsNormWarpKernel<T, TW, TO, N, 1, true>
          <<<blocks, kThreads, 0, stream>>>(a);
    } else if (a.z != nullptr) {
      RmsNormWarpKernel<T, TW, TO, N, 2, true>
          <<<blocks, kThreads, 0, stream>>>(a);
    } else if (vecs <= 32) {
      RmsNormWarpKernel<T, TW, TO, N, 1, false>
          <<<blocks, kThreads, 0, stream>>>(a);
    } else {
      RmsNormWarpKernel<T, TW, TO, N, 2, false>
          <<<blocks, kThreads, 0, stream>>>(a);
    }
    return;
  }
  const int threads = RowThreads(vecs);
  const unsigned grid = static_cast<unsigned>(a.rows);
  if (a.z != nullptr) {
    RmsNormKernel<T, TW, TO, N, true><<<grid, threads, 0, stream>>>(a);
  } else {
    RmsNormKernel<T, TW, TO, N, false><<<grid, threads, 0, stream>>>(a);
  }
}

// ---------------------------------------------------------------------------
// Rope.

template <typename T>
__global__ void RopeKernel(const RopeArgs a) {
  extern __shared__ float table[];  // cos[half], then sin[half]
  const int half = a.rot_dim / 2;
  const int64_t t = blockIdx.x;
  const double pos = static_cast<double>(a.positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double inv_freq = pow(static_cast<double>(a.theta),
                                -2.0 * i / static_cast<double>(a.rot_dim));
    double s;
    double c;
    sincos(pos * inv_freq, &s, &c);
    table[i] = static_cast<float>(c);
    table[half + i] = static_cast<float>(s);
  }
  __syncthreads();
  T* xt = static_cast<T*>(a.x) + t * a.token_stride;
  const int64_t pairs = a.heads * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t h = p / half;
    const int i = static_cast<int>(p - h * half);
    T* x = xt + h * a.head_stride;
    const float x1 = ToF32(x[i]);
    const float x2 = ToF32(x[i + half]);
    const float c = table[i];
    const float s = table[half + i];
    x[i] = FromF32<T>(x1 * c - x2 * s);
    x[i + half] = FromF32<T>(x2 * c + x1 * s);
  }
}

// ---------------------------------------------------------------------------
// Binary element-wise ops.

template <BinaryOp kOp>
__device__ __forceinline__ float Apply(float a, float b) {
  if constexpr (kOp == BinaryOp::kAdd) {
    return a + b;
  } else if constexpr (kOp == BinaryOp::kSwiGlu) {
    return Silu(a) * b;
  } else {
    return a * Sigmoid(b);
  }
}

template <typename T, int N, BinaryOp kOp>
__global__ void BinaryKernel(const BinaryArgs a) {
  const int64_t vecs = a.cols / N;
  const int64_t total = a.rows * vecs;
  const T* pa = static_cast<const T*>(a.a);
  const T* pb = static_cast<const T*>(a.b);
  T* po = static_cast<T*>(a.out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / vecs;
    const int64_t c = (i - r * vecs) * N;
    float va[N];
    float vb[N];
    LoadN<N>(pa + r * a.a_stride + c, va);
    LoadN<N>(pb + r * a.b_stride + c, vb);
    float o[N];
#pragma unroll
    for (int j = 0; j < N; ++j) o[j] = Apply<kOp>(va[j], vb[j]);
    StoreN<N>(po + r * a.out_stride + c, o);
  }
}

template <typename T, int N>
void LaunchBinaryTyped(const BinaryArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int grid = GridFor(a.rows * (a.cols / N), kThreads);
  switch (a.op) {
    case BinaryOp::kAdd:
      BinaryKernel<T, N, BinaryOp::kAdd><<<grid, kThreads, 0, stream>>>(a);
      break;
    case BinaryOp::kSwiGlu:
      BinaryKernel<T, N, BinaryOp::kSwiGlu><<<grid, kThreads, 0, stream>>>(a);
      break;
    case BinaryOp::kSigmoidGate:
      BinaryKernel<T, N, BinaryOp::kSigmoidGate>
          <<<grid, kThreads, 0, stream>>>(a);
      break;
  }
}

// ---------------------------------------------------------------------------
// Embedding.

__global__ void EmbeddingCheckKernel(const int32_t* ids, int64_t tokens,
                                     int64_t vocab, unsigned long long* error) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       t < tokens; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t id = ids[t];
    if (id < 0 || id >= vocab) {
      const unsigned long long code =
          (static_cast<unsigned long long>(t) << 32) |
          static_cast<uint32_t>(id);
      atomicMin(error, code);
    }
  }
}

template <typename TT, typename TO, int N>
__global__ void EmbeddingGatherKernel(const EmbeddingArgs a) {
  // Nothing is written when any id is out of range.
  if (*a.error != kEmbeddingNoError) return;
  const int64_t t = blockIdx.x;
  const TT* src = static_cast<const TT*>(a.table) +
                  static_cast<int64_t>(a.ids[t]) * a.table_stride;
  TO* dst = static_cast<TO*>(a.out) + t * a.out_stride;
  const int64_t vecs = a.dim / N;
  for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) {
    float v[N];
    LoadN<N>(src + i * N, v);
    StoreN<N>(dst + i * N, v);
  }
}

template <typename TT, typename TO>
void LaunchEmbeddingTyped(const EmbeddingArgs& a, cudaStream_t stream) {
  constexpr int kN = 16 / std::max(sizeof(TT), sizeof(TO));
  const bool vec =
      a.dim % kN == 0 &&
      Aligned(a.table, a.table_stride, sizeof(TT), kN * sizeof(TT)) &&
      Aligned(a.out, a.out_stride, sizeof(TO), kN * sizeof(TO));
  const unsigned grid = static_cast<unsigned>(a.tokens);
  if (vec) {
    EmbeddingGatherKernel<TT, TO, kN>
        <<<grid, RowThreads(a.dim / kN), 0, stream>>>(a);
  } else {
    EmbeddingGatherKernel<TT, TO, 1><<<grid, RowThreads(a.dim), 0, stream>>>(a);
  }
}

// ---------------------------------------------------------------------------
// GDN gates.

template <typename T, typename TW, typename TG>
__global__ void GdnGatesKernel(const GdnGatesArgs p) {
  const int64_t total = p.tokens * p.heads;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const TW* a_log = static_cast<const TW*>(p.a_log);
  const TW* dt_bias = static_cast<const TW*>(p.dt_bias);
  TG* g = static_cast<TG*>(p.g);
  TG* beta = static_cast<TG*>(p.beta);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.heads;
    const int64_t h = i - t * p.heads;
    const float neg_a = -expf(ToF32(a_log[h]));
    const float av = ToF32(a[t * p.a_stride + h]);
    const float bv = ToF32(b[t * p.b_stride + h]);
    g[t * p.g_stride + h] =
        FromF32<TG>(neg_a * Softplus(av + ToF32(dt_bias[h])));
    beta[t * p.beta_stride + h] = FromF32<TG>(Sigmoid(bv));
  }
}

// ---------------------------------------------------------------------------
// Causal conv.

// kMaxW taps, the weight left-padded with zeros to kMaxW: the padded taps
// see zeros, so the same register code serves every width <= kMaxW with
// compile-time register indices only.
template <typename T, typename TO, typename TW, int kMaxW>
__global__ void CausalConv1dKernel(const CausalConv1dArgs a,
                                   int64_t channel_tiles) {
  constexpr int kHist = kMaxW - 1;
  constexpr int kBatch = 8;  // inputs loaded ahead per thread
  const int64_t b = blockIdx.x / channel_tiles;
  const int64_t c = (blockIdx.x - b * channel_tiles) * blockDim.x + threadIdx.x;
  if (c >= a.channels) return;
  int64_t start;
  int64_t end;
  if (a.cu_seqlens != nullptr) {
    start =
        min(max(static_cast<int64_t>(a.cu_seqlens[b]), int64_t{0}), a.tokens);
    end = min(max(static_cast<int64_t>(a.cu_seqlens[b + 1]), start), a.tokens);
  } else {
    start = b;
    end = b + 1;
  }
  const T* x = static_cast<const T*>(a.x) + c;
  TO* out = static_cast<TO*>(a.out) + c;
  const int32_t slot = a.slots[b];
  if (slot < 0 || slot >= a.num_slots) {
    for (int64_t t = start; t < end; ++t) {
      out[t * a.out_stride] = FromF32<TO>(0.0f);
    }
    return;
  }
  const int off = kMaxW - a.width;
  const TW* wrow = static_cast<const TW*>(a.weight) + c * a.weight_stride;
  float w[kMaxW];
#pragma unroll
  for (int j = 0; j < kMaxW; ++j) w[j] = j >= off ? ToF32(wrow[j - off]) : 0.0f;
  float* state =
      a.conv_state + slot * a.state_stride[0] + c * a.state_stride[1];
  float win[kHist];  // the kHist latest inputs, oldest first
#pragma unroll
  for (int j = 0; j < kHist; ++j) win[j] = j >= off ? state[j - off] : 0.0f;

  for (int64_t t0 = start; t0 < end; t0 += kBatch) {
    float xs[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      xs[k] = t0 + k < end ? ToF32(x[(t0 + k) * a.x_stride]) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      if (t0 + k < end) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < kHist; ++j) acc += w[j] * win[j];
        acc += w[kHist] * xs[k];
#pragma unroll
        for (int j = 0; j + 1 < kHist; ++j) win[j] = win[j + 1];
        win[kHist - 1] = xs[k];
        out[(t0 + k) * a.out_stride] = FromF32<TO>(a.silu ? Silu(acc) : acc);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kHist; ++j) {
    if (j >= off) state[j - off] = win[j];
  }
}

// Tokens of one segment of the split conv.
constexpr int kConvSegment = 64;

// The sequence holding token t of a prefill batch (cu_seqlens clamped like
// CausalConv1dKernel does), by binary search; −1 when no sequence does.
__device__ __forceinline__ int64_t ConvSequence(const CausalConv1dArgs& a,
                                                int64_t t, int64_t* start,
                                                int64_t* end) {
  int64_t lo = 0;
  int64_t hi = a.batch - 1;
  // The last b with clamped cu[b] <= t.
  auto cu = [&](int64_t b) {
    return min(max(static_cast<int64_t>(a.cu_seqlens[b]), int64_t{0}),
               a.tokens);
  };
  if (a.batch < 1 || cu(0) > t) return -1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu(mid) <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  *start = cu(lo);
  *end = min(max(static_cast<int64_t>(a.cu_seqlens[lo + 1]), *start), a.tokens);
  return t < *end ? lo : -1;
}

// Input m ≥ 1 positions before token t of a sequence starting at `start`:
// from x inside the sequence, else from the slot's history (oldest first).
template <typename T>
__device__ __forceinline__ float ConvInput(const CausalConv1dArgs& a,
                                           const T* x, const float* state,
                                           int64_t start, int64_t t, int m) {
  const int64_t pos = t - m;
  if (pos >= start) return ToF32(x[pos * a.x_stride]);
  const int64_t back = start - pos;  // 1 = the last input before start
  return back <= a.width - 1 ? state[a.width - 1 - back] : 0.0f;
}

// The split form's outputs: thread (channel tile blockIdx.x, segment
// blockIdx.y) computes tokens [kConvSegment · y, + kConvSegment) of its N
// consecutive channels (read and written N at a time), crossing sequence
// boundaries as they come. Reads the histories in the conv state but does
// not update them (ConvStateKernel does, after).
template <typename T, typename TO, typename TW, int kMaxW, int N>
__global__ void SegmentedConv1dKernel(const CausalConv1dArgs a) {
  constexpr int kHist = kMaxW - 1;
  constexpr int kUnroll = 4;  // tokens whose inputs are read together
  const int64_t c0 =
      N * (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
  if (c0 >= a.channels) return;
  const int64_t t_lo = static_cast<int64_t>(blockIdx.y) * kConvSegment;
  const int64_t t_hi = min(t_lo + kConvSegment, a.tokens);
  const T* x = static_cast<const T*>(a.x) + c0;
  TO* out = static_cast<TO*>(a.out) + c0;
  const int off = kMaxW - a.width;
  float w[N][kMaxW];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    const TW* wrow =
        static_cast<const TW*>(a.weight) + (c0 + n) * a.weight_stride;
#pragma unroll
    for (int j = 0; j < kMaxW; ++j) {
      w[n][j] = j >= off ? ToF32(wrow[j - off]) : 0.0f;
    }
  }
  // The kHist inputs before the next token, oldest first, per channel.
  float win[N][kHist > 0 ? kHist : 1];
  // Output of one token from its input xt, shifting the windows.
  auto step = [&](int64_t t, const float(&xt)[N]) {
    float o[N];
#pragma unroll
    for (int n = 0; n < N; ++n) {
      float acc = w[n][kHist] * xt[n];
#pragma unroll
      for (int j = 0; j < kHist; ++j) acc += w[n][j] * win[n][j];
#pragma unroll
      for (int j = 0; j + 1 < kHist; ++j) win[n][j] = win[n][j + 1];
      if (kHist > 0) win[n][kHist - 1] = xt[n];
      o[n] = a.silu ? Silu(acc) : acc;
    }
    StoreN<N>(out + t * a.out_stride, o);
  };

  int64_t t = t_lo;
  while (t < t_hi) {
    int64_t start = 0;
    int64_t end = 0;
    const int64_t b = ConvSequence(a, t, &start, &end);
    if (b < 0) {  // tokens outside every sequence are left as they are
      ++t;
      continue;
    }
    const int64_t stop = min(end, t_hi);
    const int32_t slot = a.slots[b];
    if (slot < 0 || slot >= a.num_slots) {
      const float zero[N] = {};
      for (; t < stop; ++t) StoreN<N>(out + t * a.out_stride, zero);
      continue;
    }
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float* state = a.conv_state + slot * a.state_stride[0] +
                           (c0 + n) * a.state_stride[1];
#pragma unroll
      for (int j = 0; j < kHist; ++j) {
        win[n][j] =
            j >= off ? ConvInput(a, x + n, state, start, t, kHist - j) : 0.0f;
      }
    }
    for (; t + kUnroll <= stop; t += kUnroll) {
      float xt[kUnroll][N];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        LoadN<N>(x + (t + u) * a.x_stride, xt[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) step(t + u, xt[u]);
    }
    for (; t < stop; ++t) {
      float xt[N];
      LoadN<N>(x + t * a.x_stride, xt);
      step(t, xt);
    }
  }
}

// The split form's history update: thread (sequence blockIdx.y, channel)
// stores the last width − 1 inputs of its sequence.
template <typename T>
__global__ void ConvStateKernel(const CausalConv1dArgs a) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (c >= a.channels || a.width < 2) return;
  const int32_t slot = a.slots[b];
  if (slot < 0 || slot >= a.num_slots) return;
  const int64_t start =
      min(max(static_cast<int64_t>(a.cu_seqlens[b]), int64_t{0}), a.tokens);
  const int64_t end =
      min(max(static_cast<int64_t>(a.cu_seqlens[b + 1]), start), a.tokens);
  const T* x = static_cast<const T*>(a.x) + c;
  float* state =
      a.conv_state + slot * a.state_stride[0] + c * a.state_stride[1];
  float hist[kCausalConvMaxWidth - 1];
  const int h = a.width - 1;
  for (int j = 0; j < h; ++j)
    hist[j] = ConvInput(a, x, state, start, end, h - j);
  for (int j = 0; j < h; ++j) state[j] = hist[j];
}

template <typename T, typename TO, typename TW>
void LaunchCausalConv1dTyped(const CausalConv1dArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const int64_t tiles = (a.channels + kThreads - 1) / kThreads;
  const int64_t segments = (a.tokens + kConvSegment - 1) / kConvSegment;
  if (a.cu_seqlens != nullptr && a.x != a.out && segments <= 65535 &&
      a.batch <= 65535 && tiles <= INT32_MAX) {
    // N channels per thread when every row start allows 16-byte reads (for
    // widths up to 4; wider filters keep one channel per thread).
    constexpr int kN = 16 / sizeof(T);
    const bool vec = a.width <= 4 && a.channels % kN == 0 &&
                     Aligned(a.x, a.x_stride, sizeof(T), 16) &&
                     Aligned(a.out, a.out_stride, sizeof(TO), kN * sizeof(TO));
    const int per_thread = vec ? kN : 1;
    const int64_t vtiles = (a.channels / per_thread + kThreads - 1) / kThreads;
    const dim3 grid(static_cast<unsigned>(vtiles),
                    static_cast<unsigned>(segments));
    if (vec) {
      SegmentedConv1dKernel<T, TO, TW, 4, kN><<<grid, kThreads, 0, stream>>>(a);
    } else if (a.width <= 4) {
      SegmentedConv1dKernel<T, TO, TW, 4, 1><<<grid, kThreads, 0, stream>>>(a);
    } else {
      SegmentedConv1dKernel<T, TO, TW, kCausalConvMaxWidth, 1>
          <<<grid, kThreads, 0, stream>>>(a);
    }
    const dim3 state_grid(static_cast<unsigned>(tiles),
                          static_cast<unsigned>(a.batch));
    ConvStateKernel<T><<<state_grid, kThreads, 0, stream>>>(a);
    return;
  }
  const unsigned grid = static_cast<unsigned>(a.batch * tiles);
  if (a.width <= 4) {
    CausalConv1dKernel<T, TO, TW, 4><<<grid, kThreads, 0, stream>>>(a, tiles);
  } else {
    CausalConv1dKernel<T, TO, TW, kCausalConvMaxWidth>
        <<<grid, kThreads, 0, stream>>>(a, tiles);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points.

absl::Status LaunchRmsNorm(const RmsNormArgs& a, void* stream) {
  constexpr char kOp[] = "RmsNorm";
  if (!IsFloat(a.dtype)) return CheckFloat(kOp, "dtype", a.dtype);
  if (!IsFloat(a.out_dtype)) return CheckFloat(kOp, "out_dtype", a.out_dtype);
  if (!IsFloat(a.weight_dtype)) {
    return CheckFloat(kOp, "weight_dtype", a.weight_dtype);
  }
  if (a.rows < 0 || a.rows > INT32_MAX) {
    return Invalid(kOp, "rows", a.rows, "in [0, 2^31)");
  }
  if (a.dim < 0 || a.dim > INT32_MAX) {
    return Invalid(kOp, "dim", a.dim, "in [0, 2^31)");
  }
  if (a.rows == 0 || a.dim == 0) return absl::OkStatus();
  if (a.x == nullptr) return Null(kOp, "x");
  if (a.weight == nullptr) return Null(kOp, "weight");
  if (a.out == nullptr) return Null(kOp, "out");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int esize = DTypeSize(a.dtype);
  const int osize = DTypeSize(a.out_dtype);
  const int wsize = DTypeSize(a.weight_dtype);
  const int n = 16 / esize;  // elements per 16-byte activation access
  const bool vec = a.dim % n == 0 && Aligned(a.x, a.x_stride, esize, 16) &&
                   Aligned(a.out, a.out_stride, osize, n * osize) &&
                   (a.z == nullptr || Aligned(a.z, a.z_stride, esize, 16)) &&
                   Aligned(a.weight, 0, wsize, n * wsize);
  DispatchFloat(a.dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int kN = 16 / sizeof(T);
    DispatchFloat(a.weight_dtype, [&](auto tw) {
      using TW = decltype(tw);
      DispatchFloat(a.out_dtype, [&](auto to) {
        using TO = decltype(to);
        if (vec) {
          LaunchRmsNormTyped<T, TW, TO, kN>(a, s);
        } else {
          LaunchRmsNormTyped<T, TW, TO, 1>(a, s);
        }
      });
    });
  });
  return LaunchResult("RmsNorm kernel launch");
}

absl::Status LaunchRope(const RopeArgs& a, void* stream) {
  constexpr char kOp[] = "Rope";
  if (!IsFloat(a.dtype)) return CheckFloat(kOp, "dtype", a.dtype);
  if (a.tokens < 0 || a.tokens > INT32_MAX) {
    return Invalid(kOp, "tokens", a.tokens, "in [0, 2^31)");
  }
  if (a.heads < 0) return Invalid(kOp, "heads", a.heads, ">= 0");
  if (a.rot_dim <= 0 || a.rot_dim % 2 != 0 || a.rot_dim > a.head_dim ||
      a.rot_dim > kRopeMaxRotDim) {
    return Invalid(kOp, "rot_dim", a.rot_dim,
                   "even, in (0, head_dim] and at most 8192");
  }
  if (a.tokens == 0 || a.heads == 0) return absl::OkStatus();
  if (a.x == nullptr) return Null(kOp, "x");
  if (a.positions == nullptr) return Null(kOp, "positions");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int half = a.rot_dim / 2;
  const int threads = RowThreads(a.heads * half);
  const size_t shared = 2 * static_cast<size_t>(half) * sizeof(float);
  const unsigned grid = static_cast<unsigned>(a.tokens);
  DispatchFloat(a.dtype, [&](auto t) {
    using T = decltype(t);
    RopeKernel<T><<<grid, threads, shared, s>>>(a);
  });
  return LaunchResult("Rope kernel launch");
}

absl::Status LaunchBinary(const BinaryArgs& a, void* stream) {
  constexpr char kOp[] = "Binary";
  if (!IsFloat(a.dtype)) return CheckFloat(kOp, "dtype", a.dtype);
  if (a.rows < 0) return Invalid(kOp, "rows", a.rows, ">= 0");
  if (a.cols < 0) return Invalid(kOp, "cols", a.cols, ">= 0");
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  if (a.a == nullptr) return Null(kOp, "a");
  if (a.b == nullptr) return Null(kOp, "b");
  if (a.out == nullptr) return Null(kOp, "out");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int esize = DTypeSize(a.dtype);
  const int n = 16 / esize;
  const bool vec = a.cols % n == 0 && Aligned(a.a, a.a_stride, esize, 16) &&
                   Aligned(a.b, a.b_stride, esize, 16) &&
                   Aligned(a.out, a.out_stride, esize, 16);
  DispatchFloat(a.dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int kN = 16 / sizeof(T);
    if (vec) {
      LaunchBinaryTyped<T, kN>(a, s);
    } else {
      LaunchBinaryTyped<T, 1>(a, s);
    }
  });
  return LaunchResult("Binary element-wise kernel launch");
}

absl::Status LaunchEmbedding(const EmbeddingArgs& a, void* stream) {
  constexpr char kOp[] = "Embedding";
  if (!IsFloat(a.table_dtype)) {
    return CheckFloat(kOp, "table_dtype", a.table_dtype);
  }
  if (!IsFloat(a.out_dtype)) return CheckFloat(kOp, "out_dtype", a.out_dtype);
  if (a.tokens < 0 || a.tokens > INT32_MAX) {
    return Invalid(kOp, "tokens", a.tokens, "in [0, 2^31)");
  }
  if (a.vocab < 0) return Invalid(kOp, "vocab", a.vocab, ">= 0");
  if (a.dim < 0) return Invalid(kOp, "dim", a.dim, ">= 0");
  if (a.error == nullptr) return Null(kOp, "error");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const absl::Status cleared =
      CudaStatus(cudaMemsetAsync(a.error, 0xff, sizeof(uint64_t), s),
                 "Embedding: clearing the error word");
  if (!cleared.ok() || a.tokens == 0) return cleared;
  if (a.ids == nullptr) return Null(kOp, "ids");
  constexpr int kThreads = 256;
  EmbeddingCheckKernel<<<GridFor(a.tokens, kThreads), kThreads, 0, s>>>(
      a.ids, a.tokens, a.vocab, reinterpret_cast<unsigned long long*>(a.error));
  const absl::Status checked = LaunchResult("Embedding id check kernel launch");
  if (!checked.ok() || a.dim == 0) return checked;
  if (a.table == nullptr) return Null(kOp, "table");
  if (a.out == nullptr) return Null(kOp, "out");
  DispatchFloat(a.table_dtype, [&](auto tt) {
    using TT = decltype(tt);
    DispatchFloat(a.out_dtype, [&](auto to) {
      using TO = decltype(to);
      LaunchEmbeddingTyped<TT, TO>(a, s);
    });
  });
  return LaunchResult("Embedding gather kernel launch");
}

absl::Status LaunchGdnGates(const GdnGatesArgs& a, void* stream) {
  constexpr char kOp[] = "GdnGates";
  if (!IsFloat(a.dtype)) return CheckFloat(kOp, "dtype", a.dtype);
  if (!IsFloat(a.weight_dtype)) {
    return CheckFloat(kOp, "weight_dtype", a.weight_dtype);
  }
  if (!IsFloat(a.gate_dtype)) {
    return CheckFloat(kOp, "gate_dtype", a.gate_dtype);
  }
  if (a.tokens < 0) return Invalid(kOp, "tokens", a.tokens, ">= 0");
  if (a.heads < 0) return Invalid(kOp, "heads", a.heads, ">= 0");
  if (a.tokens == 0 || a.heads == 0) return absl::OkStatus();
  const struct {
    const void* ptr;
    const char* name;
  } required[] = {{a.a, "a"},         {a.b, "b"},
                  {a.a_log, "a_log"}, {a.dt_bias, "dt_bias"},
                  {a.g, "g"},         {a.beta, "beta"}};
  for (const auto& [ptr, name] : required) {
    if (ptr == nullptr) return Null(kOp, name);
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  constexpr int kThreads = 256;
  const int grid = GridFor(a.tokens * a.heads, kThreads);
  DispatchFloat(a.dtype, [&](auto t) {
    using T = decltype(t);
    DispatchFloat(a.weight_dtype, [&](auto tw) {
      using TW = decltype(tw);
      DispatchFloat(a.gate_dtype, [&](auto tg) {
        using TG = decltype(tg);
        GdnGatesKernel<T, TW, TG><<<grid, kThreads, 0, s>>>(a);
      });
    });
  });
  return LaunchResult("GdnGates kernel launch");
}

absl::Status LaunchCausalConv1d(const CausalConv1dArgs& a, void* stream) {
  constexpr char kOp[] = "CausalConv1d";
  if (!IsFloat(a.dtype)) return CheckFloat(kOp, "dtype", a.dtype);
  if (!IsFloat(a.out_dtype)) return CheckFloat(kOp, "out_dtype", a.out_dtype);
  if (a.out_dtype != a.dtype && a.x == a.out) {
    return absl::InvalidArgumentError("CausalConv1d: out narrows x in place");
  }
  if (!IsFloat(a.weight_dtype)) {
    return CheckFloat(kOp, "weight_dtype", a.weight_dtype);
  }
  if (a.width < 1 || a.width > kCausalConvMaxWidth) {
    return Invalid(kOp, "width", a.width, "in [1, 16]");
  }
  if (a.tokens < 0) return Invalid(kOp, "tokens", a.tokens, ">= 0");
  if (a.batch < 0) return Invalid(kOp, "batch", a.batch, ">= 0");
  if (a.channels < 0) return Invalid(kOp, "channels", a.channels, ">= 0");
  if (a.cu_seqlens == nullptr && a.tokens != a.batch) {
    return Invalid(kOp, "tokens", a.tokens, "batch in the decode form");
  }
  const int64_t tiles = (a.channels + 127) / 128;
  if (a.batch * tiles > INT32_MAX) {
    return Invalid(kOp, "batch", a.batch, "batch * channels / 128 < 2^31");
  }
  if (a.batch == 0 || a.channels == 0) return absl::OkStatus();
  if (a.slots == nullptr) return Null(kOp, "slots");
  if (a.weight == nullptr) return Null(kOp, "weight");
  if (a.tokens > 0) {
    if (a.x == nullptr) return Null(kOp, "x");
    if (a.out == nullptr) return Null(kOp, "out");
  }
  if (a.num_slots > 0 && a.width > 1 && a.conv_state == nullptr) {
    return Null(kOp, "conv_state");
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DispatchFloat(a.dtype, [&](auto t) {
    using T = decltype(t);
    DispatchFloat(a.out_dtype, [&](auto to) {
      using TO = decltype(to);
      DispatchFloat(a.weight_dtype, [&](auto tw) {
        using TW = decltype(tw);
        LaunchCausalConv1dTyped<T, TO, TW>(a, s);
      });
    });
  });
  return LaunchResult("CausalConv1d kernel launch");
}

}  // namespace deltaserve
