// Paged KV append and paged attention.
//
// KvAppend: one block per new token; its threads copy the token's Hkv·D keys
// and values (4 elements at a time when the layout allows) to the page slot
// its position maps to.
//
// PagedAttention (first version: SIMT fp32, no tensor cores, no split-KV):
// one CTA of 256 threads per (block of BQ query rows, KV head, sequence). A
// "row" is one (query, query head) pair of the KV head's GQA group, so a
// decode step's group of query heads shares one pass over the keys. The CTA
// walks the visible keys in tiles of kKeyTile: a tile's K and V are gathered
// through the page table into shared memory as fp32, scores S = Q·Kᵀ
// (Q pre-scaled by scale·log2 e) are computed by a 16×16 thread grid (thread
// (ty, tx) owns rows ty·R .. ty·R + R − 1 and keys tx, tx + 16), masked,
// and folded into a running max / sum / output (online softmax in base 2,
// fp32). Thread (ty, tx) owns output columns tx·4 + 64·m of its rows.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_attention/attention.h"

namespace deltaserve {
namespace {

constexpr int kThreads = 256;
constexpr int kKeyTile = 32;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float ToF32(float x) { return x; }
__device__ __forceinline__ float ToF32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T>
__device__ __forceinline__ T FromF32(float x);
template <>
__device__ __forceinline__ float FromF32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Four adjacent elements at p as floats; `vec` says p is aligned to four
// elements.
__device__ __forceinline__ void Load4(const float* p, bool vec, float (&x)[4]) {
  if (vec) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) x[c] = p[c];
  }
}
__device__ __forceinline__ void Load4(const __nv_bfloat16* p, bool vec,
                                      float (&x)[4]) {
  if (vec) {
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&t.x);
    const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&t.y);
    const float2 a = __bfloat1622float2(lo);
    const float2 b = __bfloat1622float2(hi);
    x[0] = a.x;
    x[1] = a.y;
    x[2] = b.x;
    x[3] = b.y;
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) x[c] = __bfloat162float(p[c]);
  }
}

// Copies four adjacent elements (no conversion).
template <typename T>
__device__ __forceinline__ void Copy4(T* dst, const T* src, bool vec) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
    } else {
      *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
    }
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) dst[c] = src[c];
  }
}

// True when p is aligned to 4 elements of `elem` bytes.
bool Aligned4(const void* p, int elem) {
  return reinterpret_cast<uintptr_t>(p) % (4 * static_cast<uintptr_t>(elem)) ==
         0;
}

// ---------------------------------------------------------------- KvAppend

template <typename T>
__global__ void KvAppendKernel(const KvAppendArgs a, bool vec_in,
                               bool vec_out) {
  const int64_t t = blockIdx.x;
  // Sequence of token t: the last b with cu[b] <= t.
  int64_t lo = 0;
  int64_t hi = a.batch;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (a.cu_seqlens[mid] <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t b = lo;
  const int64_t start = a.cu_seqlens[b];
  const int64_t end = a.cu_seqlens[b + 1];
  if (start < 0 || t < start || t >= end || end > a.tokens) return;
  const int64_t pos = a.start_pos[b * a.start_pos_stride] + (t - start);
  if (pos < 0) return;
  const int64_t lp = pos / a.kv.page_size;
  if (lp >= a.kv.max_pages) return;
  const int64_t page = a.kv.page_table[b * a.kv.page_table_stride[0] +
                                       lp * a.kv.page_table_stride[1]];
  if (page < 0 || page >= a.kv.num_pages) return;
  const int64_t off = pos % a.kv.page_size;
  const T* k = static_cast<const T*>(a.k) + t * a.k_stride[0];
  const T* v = static_cast<const T*>(a.v) + t * a.v_stride[0];
  T* kp = static_cast<T*>(a.kv.k_pages) + page * a.kv.k_stride[0] +
          off * a.kv.k_stride[1];
  T* vp = static_cast<T*>(a.kv.v_pages) + page * a.kv.v_stride[0] +
          off * a.kv.v_stride[1];
  const int d = a.head_dim;
  const bool vec = vec_in && vec_out;
  if (d % 4 == 0) {
    const int quads = d / 4;
    for (int e = threadIdx.x; e < a.num_kv_heads * quads; e += blockDim.x) {
      const int h = e / quads;
      const int j = (e % quads) * 4;
      Copy4(kp + h * a.kv.k_stride[2] + j, k + h * a.k_stride[1] + j, vec);
      Copy4(vp + h * a.kv.v_stride[2] + j, v + h * a.v_stride[1] + j, vec);
    }
  } else {
    for (int e = threadIdx.x; e < a.num_kv_heads * d; e += blockDim.x) {
      const int h = e / d;
      const int j = e % d;
      kp[h * a.kv.k_stride[2] + j] = k[h * a.k_stride[1] + j];
      vp[h * a.kv.v_stride[2] + j] = v[h * a.v_stride[1] + j];
    }
  }
}

// ---------------------------------------------------------- PagedAttention

// Bytes of dynamic shared memory of PagedAttentionKernel<D, R, ·>.
constexpr int kIndexBytes = kKeyTile * (8 + 8 + 4) + 0;  // 640
static_assert(kIndexBytes % 16 == 0, "shared index arrays keep alignment");

constexpr size_t AttentionSmemBytes(int d, int rows_per_thread) {
  const int bq = 16 * rows_per_thread;
  return kIndexBytes + sizeof(float) * (static_cast<size_t>(bq) * (d + 4) +
                                        kKeyTile * (d + 4) + kKeyTile * d +
                                        kKeyTile * (bq + 4));
}

template <int D, int R, typename T>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionKernel(const PagedAttentionArgs a, bool vec_kv) {
  constexpr int kBq = 16 * R;
  constexpr int kBk = kKeyTile;
  constexpr int kCols = kBk / 16;  // keys per thread
  constexpr int kDp = D + 4;       // padded row of Q and K tiles
  constexpr int kPp = kBq + 4;     // padded row of the Pᵀ tile
  constexpr int kM = D / 64;       // float4 output groups per thread
  static_assert(D % 64 == 0, "head dim is a multiple of 64");

  extern __shared__ float4 smem4[];
  char* base = reinterpret_cast<char*>(smem4);
  int64_t* k_off = reinterpret_cast<int64_t*>(base);
  int64_t* v_off = k_off + kBk;
  int* key_ok = reinterpret_cast<int*>(v_off + kBk);
  float* qs = reinterpret_cast<float*>(base + kIndexBytes);  // [kBq][kDp]
  float* ks = qs + kBq * kDp;                                // [kBk][kDp]
  float* vs = ks + kBk * kDp;                                // [kBk][D]
  float* pt = vs + kBk * D;                                  // [kBk][kPp]

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;
  const int64_t b = blockIdx.z;
  const int kvh = blockIdx.y;
  const int group = a.num_q_heads / a.num_kv_heads;

  const int64_t start = a.cu_seqlens[b];
  const int64_t end = a.cu_seqlens[b + 1];
  if (start < 0 || end < start || end > a.tokens) return;
  const int64_t n = end - start;
  const int64_t rows = n * group;
  // Later row blocks (more keys under the causal mask) start first.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBq;
  if (row0 >= rows) return;
  const int64_t row_end = min(rows, row0 + kBq);

  const int64_t ctx = a.context_lens[b * a.context_lens_stride];
  const int64_t capacity =
      static_cast<int64_t>(a.kv.max_pages) * a.kv.page_size;
  const bool ctx_ok = ctx >= n && ctx <= capacity;
  const int64_t q0 = ctx - n;  // position of the sequence's first query
  const int64_t first_pos = q0 + row0 / group;
  const int64_t last_pos = q0 + (row_end - 1) / group;
  const int64_t key_lo =
      a.window > 0 ? max(int64_t{0}, first_pos - a.window + 1) : int64_t{0};
  const int64_t key_hi = last_pos + 1;

  const T* q = static_cast<const T*>(a.q);
  const float q_scale = a.scale * kLog2e;
  for (int e = tid; e < kBq * D; e += kThreads) {
    const int r = e / D;
    const int d = e % D;
    const int64_t row = row0 + r;
    float x = 0.0f;
    if (row < row_end) {
      const int64_t i = row / group;
      const int64_t h = static_cast<int64_t>(kvh) * group + row % group;
      x = ToF32(q[(start + i) * a.q_stride[0] + h * a.q_stride[1] + d]) *
          q_scale;
    }
    qs[r * kDp + d] = x;
  }

  int64_t pos[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t row = row0 + ty * R + i;
    pos[i] = row < row_end ? q0 + row / group : int64_t{-1};
  }
  float m[R];
  float l[R];
  float4 acc[R][kM];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int mm = 0; mm < kM; ++mm) acc[i][mm] = make_float4(0, 0, 0, 0);
  }

  const T* k_pages = static_cast<const T*>(a.kv.k_pages);
  const T* v_pages = static_cast<const T*>(a.kv.v_pages);
  for (int64_t kb = ctx_ok ? key_lo : key_hi; kb < key_hi; kb += kBk) {
    if (tid < kBk) {
      const int64_t p = kb + tid;
      int ok = 0;
      int64_t ko = 0;
      int64_t vo = 0;
      if (p < key_hi) {
        const int64_t lp = p / a.kv.page_size;
        const int64_t page = a.kv.page_table[b * a.kv.page_table_stride[0] +
                                             lp * a.kv.page_table_stride[1]];
        if (page >= 0 && page < a.kv.num_pages) {
          const int64_t off = p % a.kv.page_size;
          ok = 1;
          ko = page * a.kv.k_stride[0] + off * a.kv.k_stride[1] +
               kvh * a.kv.k_stride[2];
          vo = page * a.kv.v_stride[0] + off * a.kv.v_stride[1] +
               kvh * a.kv.v_stride[2];
        }
      }
      key_ok[tid] = ok;
      k_off[tid] = ko;
      v_off[tid] = vo;
    }
    __syncthreads();
    for (int e = tid * 4; e < kBk * D; e += kThreads * 4) {
      const int j = e / D;
      const int d = e % D;
      float kx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      float vx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (key_ok[j]) {
        Load4(k_pages + k_off[j] + d, vec_kv, kx);
        Load4(v_pages + v_off[j] + d, vec_kv, vx);
      }
      *reinterpret_cast<float4*>(ks + j * kDp + d) =
          make_float4(kx[0], kx[1], kx[2], kx[3]);
      *reinterpret_cast<float4*>(vs + j * D + d) =
          make_float4(vx[0], vx[1], vx[2], vx[3]);
    }
    __syncthreads();

    // S = Q·Kᵀ for this thread's R rows and kCols keys.
    float s[R][kCols];
#pragma unroll
    for (int i = 0; i < R; ++i) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) s[i][c] = 0.0f;
    }
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
      float4 qv[R];
      float4 kv[kCols];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        qv[i] = *reinterpret_cast<const float4*>(qs + (ty * R + i) * kDp + d);
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        kv[c] = *reinterpret_cast<const float4*>(ks + (tx + 16 * c) * kDp + d);
      }
#pragma unroll
      for (int i = 0; i < R; ++i) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          s[i][c] += qv[i].x * kv[c].x + qv[i].y * kv[c].y + qv[i].z * kv[c].z +
                     qv[i].w * kv[c].w;
        }
      }
    }

    // Mask, then fold the tile into the running softmax.
#pragma unroll
    for (int i = 0; i < R; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int j = tx + 16 * c;
        const int64_t p = kb + j;
        const bool visible = key_ok[j] && p <= pos[i] &&
                             (a.window <= 0 || p > pos[i] - a.window);
        s[i][c] = visible ? s[i][c] : -INFINITY;
        mx = fmaxf(mx, s[i][c]);
      }
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      }
      const float m_new = fmaxf(m[i], mx);
      float factor = 1.0f;
      float sum = 0.0f;
      if (m_new == -INFINITY) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) s[i][c] = 0.0f;
      } else {
        factor = exp2f(m[i] - m_new);
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          s[i][c] = s[i][c] == -INFINITY ? 0.0f : exp2f(s[i][c] - m_new);
          sum += s[i][c];
        }
      }
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
      }
      l[i] = l[i] * factor + sum;
      m[i] = m_new;
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) {
        acc[i][mm].x *= factor;
        acc[i][mm].y *= factor;
        acc[i][mm].z *= factor;
        acc[i][mm].w *= factor;
      }
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      float* dst = pt + (tx + 16 * c) * kPp + ty * R;
      if constexpr (R == 4) {
        *reinterpret_cast<float4*>(dst) =
            make_float4(s[0][c], s[1][c], s[2][c], s[3][c]);
      } else {
#pragma unroll
        for (int i = 0; i < R; ++i) dst[i] = s[i][c];
      }
    }
    // Only this half-warp reads its rows of Pᵀ.
    __syncwarp();

    // acc += P·V.
#pragma unroll 4
    for (int j = 0; j < kBk; ++j) {
      float pr[R];
      if constexpr (R == 4) {
        const float4 t =
            *reinterpret_cast<const float4*>(pt + j * kPp + ty * 4);
        pr[0] = t.x;
        pr[1] = t.y;
        pr[2] = t.z;
        pr[3] = t.w;
      } else {
#pragma unroll
        for (int i = 0; i < R; ++i) pr[i] = pt[j * kPp + ty * R + i];
      }
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) {
        const float4 v =
            *reinterpret_cast<const float4*>(vs + j * D + tx * 4 + 64 * mm);
#pragma unroll
        for (int i = 0; i < R; ++i) {
          acc[i][mm].x += pr[i] * v.x;
          acc[i][mm].y += pr[i] * v.y;
          acc[i][mm].z += pr[i] * v.z;
          acc[i][mm].w += pr[i] * v.w;
        }
      }
    }
    __syncthreads();
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t row = row0 + ty * R + i;
    if (row >= row_end) continue;
    const int64_t qi = row / group;
    const int64_t h = static_cast<int64_t>(kvh) * group + row % group;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    T* o = out + (start + qi) * a.out_stride[0] + h * a.out_stride[1];
#pragma unroll
    for (int mm = 0; mm < kM; ++mm) {
      const int d = tx * 4 + 64 * mm;
      o[d] = FromF32<T>(acc[i][mm].x * inv);
      o[d + 1] = FromF32<T>(acc[i][mm].y * inv);
      o[d + 2] = FromF32<T>(acc[i][mm].z * inv);
      o[d + 3] = FromF32<T>(acc[i][mm].w * inv);
    }
  }
}

// Head dimensions the tiled kernel does not cover (any D up to
// kGenericAttentionMaxDim): one warp per (query, head), keys one at a time
// with an online softmax. Simple and slow; it serves small models.
constexpr int kGenericPerLane = kGenericAttentionMaxDim / 32;

template <typename T>
__global__ void __launch_bounds__(32)
    GenericAttentionKernel(PagedAttentionArgs a) {
  const int64_t t = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y);
  const int lane = threadIdx.x;
  // The sequence of query t: the last b with cu_seqlens[b] <= t.
  int64_t lo = 0, hi = a.batch;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (a.cu_seqlens[mid] <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t b = lo;
  const int64_t start = a.cu_seqlens[b];
  const int64_t n = a.cu_seqlens[b + 1] - start;
  T* o = static_cast<T*>(a.out) + t * a.out_stride[0] + h * a.out_stride[1];
  const int d_count = a.head_dim;
  const int64_t ctx = a.context_lens[b * a.context_lens_stride];
  const int64_t qpos = ctx - n + (t - start);
  float acc[kGenericPerLane];
  float qv[kGenericPerLane];
  const T* q =
      static_cast<const T*>(a.q) + t * a.q_stride[0] + h * a.q_stride[1];
#pragma unroll
  for (int e = 0; e < kGenericPerLane; ++e) {
    const int d = lane + 32 * e;
    qv[e] = d < d_count ? ToF32(q[d]) * a.scale : 0.0f;
    acc[e] = 0.0f;
  }
  const int kvh = h / (a.num_q_heads / a.num_kv_heads);
  float m = -INFINITY, l = 0.0f;
  const int64_t first =
      a.window > 0 ? (qpos - a.window + 1 > 0 ? qpos - a.window + 1 : 0) : 0;
  const T* kp = static_cast<const T*>(a.kv.k_pages);
  const T* vp = static_cast<const T*>(a.kv.v_pages);
  for (int64_t p = first; p <= qpos; ++p) {
    const int64_t lp = p / a.kv.page_size;
    if (lp >= a.kv.max_pages) break;
    const int32_t page = a.kv.page_table[b * a.kv.page_table_stride[0] +
                                         lp * a.kv.page_table_stride[1]];
    if (page < 0 || page >= a.kv.num_pages) continue;
    const int64_t off = p % a.kv.page_size;
    const T* kr = kp + page * a.kv.k_stride[0] + off * a.kv.k_stride[1] +
                  kvh * a.kv.k_stride[2];
    const T* vr = vp + page * a.kv.v_stride[0] + off * a.kv.v_stride[1] +
                  kvh * a.kv.v_stride[2];
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kGenericPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < d_count) s += qv[e] * ToF32(kr[d]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, offset);
    }
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new);
    const float w = __expf(s - m_new);
    l = l * corr + w;
#pragma unroll
    for (int e = 0; e < kGenericPerLane; ++e) {
      const int d = lane + 32 * e;
      acc[e] = acc[e] * corr + (d < d_count ? w * ToF32(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int e = 0; e < kGenericPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < d_count) o[d] = FromF32<T>(acc[e] * inv);
  }
}

template <typename T>
absl::Status LaunchGenericAttention(const PagedAttentionArgs& a,
                                    cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.tokens),
                  static_cast<unsigned>(a.num_q_heads));
  GenericAttentionKernel<T><<<grid, 32, 0, stream>>>(a);
  return CudaStatus(cudaGetLastError(), "PagedAttention (generic) launch");
}

template <int D, int R, typename T>
absl::Status LaunchAttention(const PagedAttentionArgs& a, bool vec_kv,
                             cudaStream_t stream) {
  constexpr size_t kSmem = AttentionSmemBytes(D, R);
  auto kernel = PagedAttentionKernel<D, R, T>;
  absl::Status status = CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "PagedAttention: cudaFuncSetAttribute");
  if (!status.ok()) return status;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int64_t row_blocks = (a.tokens * group + 16 * R - 1) / (16 * R);
  const dim3 grid(static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(a.num_kv_heads),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kThreads, kSmem, stream>>>(a, vec_kv);
  return CudaStatus(cudaGetLastError(), "PagedAttention launch");
}

template <int D, typename T>
absl::Status DispatchRows(const PagedAttentionArgs& a, bool vec_kv,
                          cudaStream_t stream) {
  // Short query runs (decode: at most 16 rows per sequence on average) use
  // 16-row blocks; prefill uses 64-row blocks.
  const int group = a.num_q_heads / a.num_kv_heads;
  if (a.tokens * group <= 16 * a.batch) {
    return LaunchAttention<D, 1, T>(a, vec_kv, stream);
  }
  return LaunchAttention<D, 4, T>(a, vec_kv, stream);
}

template <typename T>
absl::Status DispatchDim(const PagedAttentionArgs& a, bool vec_kv,
                         cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return DispatchRows<64, T>(a, vec_kv, stream);
    case 128:
      return DispatchRows<128, T>(a, vec_kv, stream);
    case 256:
      return DispatchRows<256, T>(a, vec_kv, stream);
    default:
      return LaunchGenericAttention<T>(a, stream);
  }
}

absl::Status CheckPagedKv(const char* op, const PagedKv& kv, int64_t batch) {
  if (kv.page_size < 1 || kv.max_pages < 0 || kv.num_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": page_size = ", kv.page_size, ", max_pages = ", kv.max_pages,
        ", num_pages = ", kv.num_pages, " out of range"));
  }
  if (batch > 0 && (kv.k_pages == nullptr || kv.v_pages == nullptr ||
                    (kv.max_pages > 0 && kv.page_table == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": k_pages, v_pages or page_table is null"));
  }
  return absl::OkStatus();
}

// Strides that keep 4-element groups aligned.
bool Strides4(const int64_t* strides, int count) {
  for (int i = 0; i < count; ++i) {
    if (strides[i] % 4 != 0) return false;
  }
  return true;
}

}  // namespace

absl::Status LaunchKvAppend(const KvAppendArgs& a, void* stream) {
  constexpr char kOp[] = "KvAppend";
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": dtype = ", DTypeName(a.dtype), ", expected f32 or bf16"));
  }
  if (a.tokens < 0 || a.batch < 0 || a.num_kv_heads < 0 || a.head_dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": negative size tokens = ", a.tokens, ", batch = ", a.batch,
        ", num_kv_heads = ", a.num_kv_heads, ", head_dim = ", a.head_dim));
  }
  if (a.tokens > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": tokens = ", a.tokens, " is too large"));
  }
  if (a.tokens == 0 || a.num_kv_heads == 0 || a.head_dim == 0) {
    return absl::OkStatus();
  }
  if (a.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": batch = ", a.batch, " with tokens = ", a.tokens));
  }
  absl::Status s = CheckPagedKv(kOp, a.kv, a.batch);
  if (!s.ok()) return s;
  if (a.k == nullptr || a.v == nullptr || a.cu_seqlens == nullptr ||
      a.start_pos == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": k, v, cu_seqlens or start_pos is null"));
  }
  const int elem = DTypeSize(a.dtype);
  const bool vec_in = Aligned4(a.k, elem) && Aligned4(a.v, elem) &&
                      Strides4(a.k_stride, 2) && Strides4(a.v_stride, 2);
  const bool vec_out = Aligned4(a.kv.k_pages, elem) &&
                       Aligned4(a.kv.v_pages, elem) &&
                       Strides4(a.kv.k_stride, 3) && Strides4(a.kv.v_stride, 3);
  const int work = a.num_kv_heads * a.head_dim / 4;
  const int threads = std::min(256, std::max(32, (work + 31) / 32 * 32));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(a.tokens));
  if (a.dtype == DType::kF32) {
    KvAppendKernel<float><<<grid, threads, 0, st>>>(a, vec_in, vec_out);
  } else {
    KvAppendKernel<__nv_bfloat16><<<grid, threads, 0, st>>>(a, vec_in, vec_out);
  }
  return CudaStatus(cudaGetLastError(), "KvAppend launch");
}

absl::Status LaunchPagedAttention(const PagedAttentionArgs& a, void* stream) {
  constexpr char kOp[] = "PagedAttention";
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": dtype = ", DTypeName(a.dtype), ", expected f32 or bf16"));
  }
  if (a.tokens < 0 || a.batch < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": negative size tokens = ", a.tokens, ", batch = ", a.batch));
  }
  if (a.num_kv_heads < 1 || a.num_q_heads < 1 ||
      a.num_q_heads % a.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": num_q_heads = ", a.num_q_heads,
        " is not a positive multiple of num_kv_heads = ", a.num_kv_heads));
  }
  if (a.window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": window = ", a.window, ", expected >= 0"));
  }
  if (a.head_dim < 1 || a.head_dim > kGenericAttentionMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": head_dim = ", a.head_dim, " is not in [1, ",
                     kGenericAttentionMaxDim, "]"));
  }
  if (a.tokens == 0) return absl::OkStatus();
  if (a.batch < 1 || a.batch > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": batch = ", a.batch, " must be in [1, 65535] for ",
                     a.tokens, " tokens"));
  }
  const int group = a.num_q_heads / a.num_kv_heads;
  if (a.tokens * group > (int64_t{1} << 34) || a.num_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": tokens = ", a.tokens,
                                                   " × ", a.num_q_heads,
                                                   " heads is too large"));
  }
  absl::Status s = CheckPagedKv(kOp, a.kv, a.batch);
  if (!s.ok()) return s;
  if (a.q == nullptr || a.out == nullptr || a.cu_seqlens == nullptr ||
      a.context_lens == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": q, out, cu_seqlens or context_lens is null"));
  }
  const int elem = DTypeSize(a.dtype);
  const bool vec_kv = Aligned4(a.kv.k_pages, elem) &&
                      Aligned4(a.kv.v_pages, elem) &&
                      Strides4(a.kv.k_stride, 3) && Strides4(a.kv.v_stride, 3);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::kF32) return DispatchDim<float>(a, vec_kv, st);
  return DispatchDim<__nv_bfloat16>(a, vec_kv, st);
}

}  // namespace deltaserve
