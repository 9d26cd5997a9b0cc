// Paged KV append and paged attention.
//
// KvAppend: one block per new token; its threads copy the token's Hkv·D keys
// and values (4 elements at a time when the layout allows) to the page slot
// its position maps to.
//
// PagedAttention runs on one of four kernels: bf16 prefill (more than 16
// query rows per sequence on average, D ∈ {64, 128, 256}, 16-byte aligned
// rows) on tensor cores, FlashPrefillKernel below; bf16 decode (at most 16
// rows per sequence on average, 16-byte aligned K and V rows) on tensor
// cores with split-KV, FlashDecodeKernel below; head dimensions outside
// {64, 128, 256} on GenericAttentionKernel; everything else (f32, unaligned
// bf16) on PagedAttentionKernel (SIMT fp32; split-KV for decode), which
// works like this:
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
#include "kernels/cuda/mma.cuh"

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

// Split-KV decoding. A decode launch may split the keys a row block sees,
// [key_lo, key_hi), into `splits` consecutive ranges of SplitKeys each (a
// multiple of the kernel's key granule, at least kMinSplitKeys, computed on
// the device from the actual context), one block per range. Each block writes
// its rows' partial result to the workspace: the output before normalisation
// (fp32, [splits][T][Hq][D]) and the running max (base 2) and sum ([splits]
// [T][Hq] float2 after the outputs); blocks whose range is empty write
// (−inf, 0). SplitCombineKernel merges them into `out`. Row blocks that may
// see fewer than kSingleSplitKeys keys run as one split.
constexpr int kMinSplitKeys = 256;
constexpr int kSingleSplitKeys = 2048;

__device__ __forceinline__ int64_t SplitKeys(int64_t len, int splits,
                                             int granule) {
  int64_t keys = (len + splits - 1) / splits;
  keys = max(keys, int64_t{kMinSplitKeys});
  return (keys + granule - 1) / granule * granule;
}

// [lo, hi): the keys of split `split` of a row block that sees [key_lo,
// key_hi).
__device__ __forceinline__ void SplitRange(int64_t key_lo, int64_t key_hi,
                                           int split, int splits, int granule,
                                           int64_t* lo, int64_t* hi) {
  if (splits == 1) {
    *lo = key_lo;
    *hi = key_hi;
    return;
  }
  const int64_t keys = SplitKeys(key_hi - key_lo, splits, granule);
  *lo = min(key_hi, key_lo + split * keys);
  *hi = min(key_hi, *lo + keys);
}

// The partial output row and (max, sum) of (split, token, query head).
__device__ __forceinline__ float* PartialOut(const PagedAttentionArgs& a,
                                             int split, int64_t token,
                                             int64_t head) {
  return static_cast<float*>(a.workspace) +
         ((split * a.tokens + token) * a.num_q_heads + head) * a.head_dim;
}
__device__ __forceinline__ float2* PartialMaxSum(const PagedAttentionArgs& a,
                                                 int splits, int split,
                                                 int64_t token, int64_t head) {
  float2* base =
      reinterpret_cast<float2*>(static_cast<float*>(a.workspace) +
                                splits * a.tokens * a.num_q_heads * a.head_dim);
  return base + (split * a.tokens + token) * a.num_q_heads + head;
}

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
    PagedAttentionKernel(const PagedAttentionArgs a, bool vec_kv,
                         int num_splits) {
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
  // blockIdx.x is (row block, split). Later row blocks (more keys under the
  // causal mask) start first.
  const int row_block = static_cast<int>(blockIdx.x) / num_splits;
  const int split = static_cast<int>(blockIdx.x) - row_block * num_splits;
  const int64_t row0 =
      static_cast<int64_t>(gridDim.x / num_splits - 1 - row_block) * kBq;
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
  int64_t split_lo = key_hi;
  int64_t split_hi = key_hi;
  if (ctx_ok) {
    SplitRange(key_lo, key_hi, split, num_splits, kKeyTile, &split_lo,
               &split_hi);
  }

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
  for (int64_t kb = split_lo; kb < split_hi; kb += kBk) {
    if (tid < kBk) {
      const int64_t p = kb + tid;
      int ok = 0;
      int64_t ko = 0;
      int64_t vo = 0;
      if (p < split_hi) {
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

  if (num_splits > 1) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t row = row0 + ty * R + i;
      if (row >= row_end) continue;
      const int64_t tok = start + row / group;
      const int64_t h = static_cast<int64_t>(kvh) * group + row % group;
      if (tx == 0) *PartialMaxSum(a, num_splits, split, tok, h) = {m[i], l[i]};
      if (l[i] <= 0.0f) continue;
      float* o = PartialOut(a, split, tok, h);
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) {
        *reinterpret_cast<float4*>(o + tx * 4 + 64 * mm) = acc[i][mm];
      }
    }
    return;
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

// ------------------------------------- PagedAttention, tensor cores (prefill)
//
// FlashPrefillKernel<D, M>: bf16 only, for batches with many query rows per
// sequence. One CTA of kFlashThreads (4 warps) per (block of 64·M rows, KV
// head, sequence), rows as above. Each warp owns M 16-row tiles of the
// block; its scores and output live in mma.sync m16n8k16 accumulators (bf16
// operands, fp32 accumulation), with the usual FlashAttention-2 choreography:
//   - Q (bf16) stays in shared memory; K and V tiles of kFlashKeys keys are
//     gathered through the page table with cp.async (16-byte chunks, zero
//     fill for keys whose page is missing) into one K and one V buffer, so
//     that V_t loads during S = Q·K_tᵀ and K_{t+1} loads during O += P·V_t;
//   - the page-table entries of tile t + 2 are read into a register during
//     tile t, and turned into per-key offsets and a validity mask in shared
//     memory (two buffers) during tile t + 1;
//   - scores are scaled by scale·log2 e in fp32, masked (causal, window,
//     missing pages) only on tiles that need it, and folded into a running
//     max / sum per row (base-2 online softmax); P is rounded to bf16 as the
//     A operand of P·V straight from the score accumulators;
//   - the output is normalised, staged through the warp's own Q rows and
//     stored in 16-byte chunks.
// Rows of fully masked queries (and of sequences with an invalid context
// length) get zeros, like the SIMT kernel.

constexpr int kFlashWarps = 4;
constexpr int kFlashThreads = 32 * kFlashWarps;
constexpr int kFlashKeys = 64;  // keys per tile
// Per-key K/V offsets ([2][kFlashKeys] each, int64) and validity bits
// ([2][kFlashKeys / 32] words) of the two index buffers.
constexpr int kFlashIndexBytes = 2 * 2 * kFlashKeys * 8 + 2 * kFlashKeys / 8;
static_assert(kFlashIndexBytes % 16 == 0, "tiles stay 16-byte aligned");

// Rows of the Q, K and V tiles are padded by 8 elements (16 bytes) so that
// the 8 row addresses of one ldmatrix phase fall in distinct bank groups.
__host__ __device__ constexpr int FlashStride(int d) { return d + 8; }

constexpr size_t FlashSmemBytes(int d, int m_tiles) {
  const int bq = 16 * m_tiles * kFlashWarps;
  return kFlashIndexBytes + sizeof(__nv_bfloat16) *
                                static_cast<size_t>(bq + 2 * kFlashKeys) *
                                FlashStride(d);
}

using mma::CpAsync16;
using mma::CpAsyncCommit;
using mma::CpAsyncWaitAll;
using mma::LdMatrixX4;
using mma::LdMatrixX4Trans;
using mma::MmaBf16;
using mma::PackBf16;
using mma::SmemAddress;

template <int D, int M>
__global__ void __launch_bounds__(kFlashThreads, 2)
    FlashPrefillKernel(const PagedAttentionArgs a) {
  using bf16 = __nv_bfloat16;
  constexpr int kBq = 16 * M * kFlashWarps;
  constexpr int kBk = kFlashKeys;
  static_assert(kBk == 64 && kFlashThreads >= kBk,
                "one index thread per key; the key mask is 64 bits");
  constexpr int kStride = FlashStride(D);
  constexpr int kChunks = D / 8;                     // 16-byte chunks per row
  constexpr int kRowStep = kFlashThreads / kChunks;  // rows per copy pass
  constexpr int kSTiles = kBk / 8;                   // n-tiles of S per m-tile
  constexpr int kOTiles = D / 8;                     // n-tiles of O per m-tile
  static_assert(D % 64 == 0 && kFlashThreads % kChunks == 0,
                "head dim is a multiple of 64");

  extern __shared__ float4 smem4[];
  char* base = reinterpret_cast<char*>(smem4);
  int64_t* k_off = reinterpret_cast<int64_t*>(base);  // [2][kBk]
  int64_t* v_off = k_off + 2 * kBk;                   // [2][kBk]
  uint32_t* key_bits = reinterpret_cast<uint32_t*>(v_off + 2 * kBk);
  bf16* qs = reinterpret_cast<bf16*>(base + kFlashIndexBytes);  // [kBq]
  bf16* ks = qs + kBq * kStride;                                // [kBk]
  bf16* vs = ks + kBk * kStride;                                // [kBk]

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
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
  // Row row0 + r is query head (h0 + r) % group of token
  // tok0 + (h0 + r) / group: 32-bit arithmetic past one 64-bit division.
  const int64_t tok0 = row0 / group;
  const int h0 = static_cast<int>(row0 - tok0 * group);
  const int valid_rows = static_cast<int>(row_end - row0);

  // Context lengths are i32, so every position fits an int.
  const int64_t ctx = a.context_lens[b * a.context_lens_stride];
  const int64_t capacity =
      static_cast<int64_t>(a.kv.max_pages) * a.kv.page_size;
  const bool ctx_ok = ctx >= n && ctx <= capacity;
  const int q0 = static_cast<int>(ctx - n);
  const int first_pos = q0 + static_cast<int>(tok0);
  const int last_pos = first_pos + (h0 + valid_rows - 1) / group;
  const int key_lo = a.window > 0 ? max(0, first_pos - a.window + 1) : 0;
  const int key_hi = last_pos + 1;
  const int num_tiles = ctx_ok ? (key_hi - key_lo + kBk - 1) / kBk : 0;

  // Q rows of the block (zeros past row_end).
  const bf16* q = static_cast<const bf16*>(a.q);
  for (int c = tid; c < kBq * kChunks; c += kFlashThreads) {
    const int r = c / kChunks;
    const int col = (c % kChunks) * 8;
    const bool valid = r < valid_rows;
    const bf16* src = q;
    if (valid) {
      const int64_t h = static_cast<int64_t>(kvh) * group + (h0 + r) % group;
      src = q + (start + tok0 + (h0 + r) / group) * a.q_stride[0] +
            h * a.q_stride[1] + col;
    }
    CpAsync16(SmemAddress(qs + r * kStride + col), src, valid);
  }

  // Page-table walk: thread tid < kBk owns key kb + tid of each tile.
  const bf16* k_pages = static_cast<const bf16*>(a.kv.k_pages);
  const bf16* v_pages = static_cast<const bf16*>(a.kv.v_pages);
  const int32_t* table = a.kv.page_table + b * a.kv.page_table_stride[0];
  auto fetch_page = [&](int tile) -> int {
    const int p = key_lo + tile * kBk + tid;
    if (tid >= kBk || tile >= num_tiles || p >= key_hi) return -1;
    return table[static_cast<int64_t>(p / a.kv.page_size) *
                 a.kv.page_table_stride[1]];
  };
  auto write_index = [&](int tile, int page) {
    if (tid >= kBk) return;
    const int p = key_lo + tile * kBk + tid;
    const bool ok = page >= 0 && page < a.kv.num_pages;
    const int64_t off = p % a.kv.page_size;
    const int buf = tile & 1;
    k_off[buf * kBk + tid] = ok ? page * a.kv.k_stride[0] +
                                      off * a.kv.k_stride[1] +
                                      kvh * a.kv.k_stride[2]
                                : 0;
    v_off[buf * kBk + tid] = ok ? page * a.kv.v_stride[0] +
                                      off * a.kv.v_stride[1] +
                                      kvh * a.kv.v_stride[2]
                                : 0;
    const uint32_t bits = __ballot_sync(0xffffffffu, ok);
    if (lane == 0) key_bits[buf * 2 + warp] = bits;
  };
  auto tile_bits = [&](int buf) -> uint64_t {
    return key_bits[buf * 2] | static_cast<uint64_t>(key_bits[buf * 2 + 1])
                                   << 32;
  };
  // Gathers tile `tile` of K or V into `dst` (missing keys as zeros).
  auto load_tile = [&](int tile, const bf16* pages, const int64_t* offsets,
                       bf16* dst) {
    const int buf = tile & 1;
    const uint64_t bits = tile_bits(buf);
    const int col = (tid % kChunks) * 8;
#pragma unroll
    for (int i = 0; i < kBk / kRowStep; ++i) {
      const int r = tid / kChunks + i * kRowStep;
      const bool valid = (bits >> r) & 1;
      CpAsync16(SmemAddress(dst + r * kStride + col),
                pages + offsets[buf * kBk + r] + col, valid);
    }
  };

  int page = fetch_page(0);
  if (num_tiles > 0) write_index(0, page);
  page = fetch_page(1);
  __syncthreads();
  if (num_tiles > 0) load_tile(0, k_pages, k_off, ks);
  CpAsyncCommit();

  // Positions of this thread's rows: m-tile i, half h holds row
  // warp·16·M + 16·i + 8·h + lane / 4 of the block (−1: past row_end).
  const int g = lane >> 2;
  const int tq = lane & 3;
  int pos[M][2];
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 * M + 16 * i + 8 * h + g;
      pos[i][h] = r < valid_rows ? first_pos + (h0 + r) / group : -1;
    }
  }

  float o[M][kOTiles][4];
  float row_max[M][2];
  float row_sum[M][2];  // this thread's share; summed over the quad at the end
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[i][h] = -INFINITY;
      row_sum[i][h] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][j][e] = 0.0f;
    }
  }

  const float scale_log2 = a.scale * kLog2e;
  const uint32_t q_base = SmemAddress(
      qs + (warp * 16 * M + (lane & 15)) * kStride + (lane >> 4) * 8);
  const uint32_t k_base = SmemAddress(
      ks + (((lane >> 4) << 3) + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8);
  const uint32_t v_base =
      SmemAddress(vs + (lane & 15) * kStride + (lane >> 4) * 8);
  constexpr uint32_t kRowBytes = kStride * sizeof(bf16);

  for (int t = 0; t < num_tiles; ++t) {
    // K_t (and Q) have landed; every warp is done with V_{t−1} and with the
    // index buffer of tile t − 1.
    CpAsyncWaitAll();
    __syncthreads();
    load_tile(t, v_pages, v_off, vs);
    CpAsyncCommit();
    if (t + 1 < num_tiles) write_index(t + 1, page);
    page = fetch_page(t + 2);

    // S = Q·K_tᵀ.
    float s[M][kSTiles][4];
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][j][e] = 0.0f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[M][4];
#pragma unroll
      for (int i = 0; i < M; ++i) {
        LdMatrixX4(q_base + i * 16 * kRowBytes + kk * 32, qa[i]);
      }
#pragma unroll
      for (int nn = 0; nn < kBk / 16; ++nn) {
        uint32_t kb[4];
        LdMatrixX4(k_base + nn * 16 * kRowBytes + kk * 32, kb);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          MmaBf16(s[i][2 * nn], qa[i], kb[0], kb[1]);
          MmaBf16(s[i][2 * nn + 1], qa[i], kb[2], kb[3]);
        }
      }
    }

    // Scale, mask where some key of the tile is hidden from some row, and
    // fold into the running softmax.
    const int kb0 = key_lo + t * kBk;
    const uint64_t bits = tile_bits(t & 1);
    const bool need_mask = kb0 + kBk - 1 > first_pos ||
                           (a.window > 0 && kb0 <= last_pos - a.window) ||
                           bits != ~uint64_t{0};
    if (need_mask) {
#pragma unroll
      for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int jj = 8 * j + 2 * tq + (e & 1);
            const int p = kb0 + jj;
            const int qp = pos[i][e >> 1];
            const bool visible = ((bits >> jj) & 1) && p <= qp &&
                                 (a.window <= 0 || p > qp - a.window);
            s[i][j][e] = visible ? s[i][j][e] * scale_log2 : -INFINITY;
          }
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[i][j][e] *= scale_log2;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
          mx = fmaxf(mx, fmaxf(s[i][j][2 * h], s[i][j][2 * h + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[i][h], mx);
        // All hidden so far: subtract 0 so that exp2(−inf) gives 0, not NaN.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float factor = exp2f(row_max[i][h] - m_use);
        row_max[i][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(s[i][j][2 * h + e] - m_use);
            s[i][j][2 * h + e] = p;
            sum += p;
          }
        }
        row_sum[i][h] = row_sum[i][h] * factor + sum;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          o[i][j][2 * h] *= factor;
          o[i][j][2 * h + 1] *= factor;
        }
      }
    }

    // V_t has landed; every warp is done with K_t.
    CpAsyncWaitAll();
    __syncthreads();
    if (t + 1 < num_tiles) load_tile(t + 1, k_pages, k_off, ks);
    CpAsyncCommit();

    // O += P·V_t, P taken from the score accumulators.
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t pa[M][4];
#pragma unroll
      for (int i = 0; i < M; ++i) {
        pa[i][0] = PackBf16(s[i][2 * kk][0], s[i][2 * kk][1]);
        pa[i][1] = PackBf16(s[i][2 * kk][2], s[i][2 * kk][3]);
        pa[i][2] = PackBf16(s[i][2 * kk + 1][0], s[i][2 * kk + 1][1]);
        pa[i][3] = PackBf16(s[i][2 * kk + 1][2], s[i][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t vb[4];
        LdMatrixX4Trans(v_base + kk * 16 * kRowBytes + dn * 32, vb);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          MmaBf16(o[i][2 * dn], pa[i], vb[0], vb[1]);
          MmaBf16(o[i][2 * dn + 1], pa[i], vb[2], vb[3]);
        }
      }
    }
  }

  // Every copy has landed (also when no tile ran) before the warps reuse
  // their Q rows for the output.
  CpAsyncWaitAll();
  __syncthreads();
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = row_sum[i][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      bf16* dst = qs + (warp * 16 * M + 16 * i + 8 * h + g) * kStride + 2 * tq;
#pragma unroll
      for (int j = 0; j < kOTiles; ++j) {
        *reinterpret_cast<uint32_t*>(dst + 8 * j) =
            PackBf16(o[i][j][2 * h] * inv, o[i][j][2 * h + 1] * inv);
      }
    }
  }
  __syncwarp();
  bf16* out = static_cast<bf16*>(a.out);
  for (int c = lane; c < 16 * M * kChunks; c += 32) {
    const int r = warp * 16 * M + c / kChunks;
    const int col = (c % kChunks) * 8;
    if (r >= valid_rows) continue;
    const int64_t h = static_cast<int64_t>(kvh) * group + (h0 + r) % group;
    *reinterpret_cast<uint4*>(
        out + (start + tok0 + (h0 + r) / group) * a.out_stride[0] +
        h * a.out_stride[1] + col) =
        *reinterpret_cast<const uint4*>(qs + r * kStride + col);
  }
}

template <int D, int M>
absl::Status LaunchFlashPrefill(const PagedAttentionArgs& a,
                                cudaStream_t stream) {
  constexpr size_t kSmem = FlashSmemBytes(D, M);
  auto kernel = FlashPrefillKernel<D, M>;
  absl::Status status = CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "PagedAttention (tensor cores): cudaFuncSetAttribute");
  if (!status.ok()) return status;
  const int group = a.num_q_heads / a.num_kv_heads;
  constexpr int kBq = 16 * M * kFlashWarps;
  const int64_t row_blocks = (a.tokens * group + kBq - 1) / kBq;
  const dim3 grid(static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(a.num_kv_heads),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kFlashThreads, kSmem, stream>>>(a);
  return CudaStatus(cudaGetLastError(), "PagedAttention (tensor cores) launch");
}

// ------------------------------ PagedAttention, tensor cores (split decode)
//
// FlashDecodeKernel<D>: bf16 decode batches. One CTA of kDecodeThreads
// (4 warps) per (split, KV head, sequence); it walks the sequence's rows
// kDecodeRows (8) at a time, usually once (a decode step's GQA group), over
// its split's keys. The products run transposed so that the 8 rows are the
// N of mma.sync m16n8k16 and 16 keys its M:
//   Sᵀ[16 keys][8 rows] = K[16 keys][D] · Qᵀ,
//   Oᵀ[D][8 rows]      += Vᵀ[D][16 keys] · Pᵀ[16 keys][8 rows],
// with K and V fragments loaded straight from the pages into registers (no
// shared memory, no block barrier in the loop): the order of the D terms of
// Q·Kᵀ and of the output columns is permuted so that every lane reads
// 16-byte pieces. Lane (g = lane / 4, t = lane % 4) holds
//   - of K rows g and g + 8 of a 16-key tile: the 8-element chunks 4c + t,
//     c < D / 32; chunk c feeds k-steps 2c and 2c + 1 (Q is laid out the
//     same way once per pass, as B fragments in shared memory);
//   - of V rows 2t, 2t + 1, 2t + 8, 2t + 9: the chunks 8c + g, c < D / 64;
//     word w of chunk c holds the output columns of m-tile 4c + w;
// Pᵀ comes from the Sᵀ accumulators through movmatrix (an 8×8 transpose).
// Warp w takes the steps w, w + 4, ... of 16·(256 / D) keys each (a step
// reads 16 KB of K and V per warp) with its own online softmax (base 2,
// fp32); the 4 warps merge through shared memory at the end. Rows of fully
// masked queries (and of sequences with an invalid context length) get
// zeros, like the other kernels.

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = 32 * kDecodeWarps;
constexpr int kDecodeRows = 8;

template <int D>
struct DecodeShape {
  static constexpr int kSub = 256 / D;         // 16-key tiles per step
  static constexpr int kStepKeys = 16 * kSub;  // keys per warp step
  static constexpr int kKChunks = D / 32;      // K chunks per key and lane
  static constexpr int kVChunks = D / 64;      // V chunks per key and lane
  static constexpr int kKSteps = D / 16;       // k-steps of Sᵀ
  static constexpr int kMTiles = D / 16;       // m-tiles of Oᵀ
  static constexpr int kOutStride = D + 4;     // padded staging row
  static constexpr int kGranule = kDecodeWarps * kStepKeys;
};

constexpr size_t DecodeSmemBytes(int d) {
  // Q fragments [D/16][32] uint2, staged warp outputs [warps][8][D + 4]
  // floats, warp (max, sum) [warps][8] and block (max, sum) [8] float2.
  return static_cast<size_t>(d) / 16 * 32 * 8 +
         sizeof(float) * kDecodeWarps * kDecodeRows * (d + 4) +
         8 * (kDecodeWarps + 1) * kDecodeRows;
}

// Transposes an 8×8 matrix of b16 held as mma fragments (lane l: row l / 4,
// columns 2·(l % 4) and 2·(l % 4) + 1).
__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n"
               : "=r"(y)
               : "r"(x));
  return y;
}

__device__ __forceinline__ uint32_t Word(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

__device__ __forceinline__ uint32_t PackRaw(__nv_bfloat16 lo,
                                            __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) |
         static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16;
}

template <int D>
__global__ void __launch_bounds__(kDecodeThreads, 2)
    FlashDecodeKernel(const PagedAttentionArgs a, int num_splits) {
  using bf16 = __nv_bfloat16;
  using Shape = DecodeShape<D>;
  constexpr int kSub = Shape::kSub;
  constexpr int kKChunks = Shape::kKChunks;
  constexpr int kVChunks = Shape::kVChunks;
  constexpr int kKSteps = Shape::kKSteps;
  constexpr int kMTiles = Shape::kMTiles;
  constexpr int kOs = Shape::kOutStride;
  static_assert(D % 64 == 0 && D <= 256, "head dim is 64, 128 or 256");

  extern __shared__ float4 smem4[];
  uint2* qf = reinterpret_cast<uint2*>(smem4);  // [kKSteps][32]
  float* staged = reinterpret_cast<float*>(qf + kKSteps * 32);
  float2* warp_ml = reinterpret_cast<float2*>(
      staged + kDecodeWarps * kDecodeRows * kOs);           // [warps][8]
  float2* block_ml = warp_ml + kDecodeWarps * kDecodeRows;  // [8]

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int split = blockIdx.x;
  const int kvh = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int group = a.num_q_heads / a.num_kv_heads;

  const int64_t start = a.cu_seqlens[b];
  const int64_t end = a.cu_seqlens[b + 1];
  if (start < 0 || end < start || end > a.tokens) return;
  const int64_t n = end - start;
  const int64_t rows = n * group;
  const int64_t ctx = a.context_lens[b * a.context_lens_stride];
  const int64_t capacity =
      static_cast<int64_t>(a.kv.max_pages) * a.kv.page_size;
  const bool ctx_ok = ctx >= n && ctx <= capacity;

  const bf16* q = static_cast<const bf16*>(a.q);
  const bf16* k_pages = static_cast<const bf16*>(a.kv.k_pages);
  const bf16* v_pages = static_cast<const bf16*>(a.kv.v_pages);
  const int32_t* table = a.kv.page_table + b * a.kv.page_table_stride[0];
  const int64_t k_head = static_cast<int64_t>(kvh) * a.kv.k_stride[2];
  const int64_t v_head = static_cast<int64_t>(kvh) * a.kv.v_stride[2];
  const unsigned page_size = static_cast<unsigned>(a.kv.page_size);
  const float scale_log2 = a.scale * kLog2e;

  for (int64_t row0 = 0; row0 < rows; row0 += kDecodeRows) {
    // Row row0 + r is query head (h0 + r) % group of token
    // tok0 + (h0 + r) / group.
    const int64_t tok0 = row0 / group;
    const int h0 = static_cast<int>(row0 - tok0 * group);
    const int valid_rows =
        static_cast<int>(min(rows - row0, int64_t{kDecodeRows}));
    auto row_token = [&](int r) { return start + tok0 + (h0 + r) / group; };
    auto row_head = [&](int r) {
      return static_cast<int64_t>(kvh) * group + (h0 + r) % group;
    };
    int64_t lo = 0;
    int64_t hi = 0;         // this split's keys
    int pos[2] = {-1, -1};  // positions of rows 2t and 2t + 1 (−1: none)
    if (ctx_ok) {
      const int64_t first_pos = ctx - n + tok0;
      const int64_t last_pos = first_pos + (h0 + valid_rows - 1) / group;
      const int64_t key_lo =
          a.window > 0 ? max(int64_t{0}, first_pos - a.window + 1) : 0;
      SplitRange(key_lo, last_pos + 1, split, num_splits, Shape::kGranule, &lo,
                 &hi);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = 2 * t + i;
        if (r < valid_rows)
          pos[i] = static_cast<int>(first_pos) + (h0 + r) / group;
      }
    }
    if (lo >= hi && num_splits > 1) {
      // An empty range: only the (max, sum) = (−inf, 0) marker.
      if (tid < valid_rows) {
        *PartialMaxSum(a, num_splits, split, row_token(tid), row_head(tid)) = {
            -INFINITY, 0.0f};
      }
      continue;
    }

    // The previous pass is done with shared memory.
    __syncthreads();
    for (int e = tid; e < kKSteps * 32; e += kDecodeThreads) {
      const int s = e >> 5;
      const int r = (e & 31) >> 2;
      const int col = (4 * (s >> 1) + (e & 3)) * 8 + (s & 1) * 4;
      uint2 frag = make_uint2(0u, 0u);
      if (r < valid_rows) {
        const bf16* src = q + row_token(r) * a.q_stride[0] +
                          row_head(r) * a.q_stride[1] + col;
        frag.x = PackRaw(src[0], src[1]);
        frag.y = PackRaw(src[2], src[3]);
      }
      qf[e] = frag;
    }
    __syncthreads();

    float o[kMTiles][4];
#pragma unroll
    for (int j = 0; j < kMTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[j][e] = 0.0f;
    }
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.0f, 0.0f};  // this lane's share of the sums

    // Element offset of key p's row in the pool (stride0, stride1, head), or
    // −1 when p is past the range or its page is missing.
    const int lim = static_cast<int>(hi);
    auto key_row = [&](int p, int64_t stride0, int64_t stride1,
                       int64_t head) -> int64_t {
      if (p >= lim) return -1;
      const unsigned lp = static_cast<unsigned>(p) / page_size;
      const int64_t page = table[lp * a.kv.page_table_stride[1]];
      if (page < 0 || page >= a.kv.num_pages) return -1;
      return page * stride0 +
             static_cast<int64_t>(static_cast<unsigned>(p) - lp * page_size) *
                 stride1 +
             head;
    };

    for (int64_t kb = lo + warp * Shape::kStepKeys; kb < hi;
         kb += kDecodeWarps * Shape::kStepKeys) {
      const int base = static_cast<int>(kb);
      uint4 kr[kSub][2][kKChunks];
      uint4 vr[kSub][4][kVChunks];
      bool key_ok[kSub][2];
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int64_t off =
              key_row(base + 16 * u + g + 8 * i, a.kv.k_stride[0],
                      a.kv.k_stride[1], k_head);
          key_ok[u][i] = off >= 0;
          const uint4* src = reinterpret_cast<const uint4*>(k_pages + off) + t;
#pragma unroll
          for (int c = 0; c < kKChunks; ++c) {
            kr[u][i][c] =
                off >= 0 ? __ldg(src + 4 * c) : make_uint4(0, 0, 0, 0);
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t off =
              key_row(base + 16 * u + 2 * t + (i & 1) + 8 * (i >> 1),
                      a.kv.v_stride[0], a.kv.v_stride[1], v_head);
          const uint4* src = reinterpret_cast<const uint4*>(v_pages + off) + g;
#pragma unroll
          for (int c = 0; c < kVChunks; ++c) {
            vr[u][i][c] =
                off >= 0 ? __ldg(src + 8 * c) : make_uint4(0, 0, 0, 0);
          }
        }
      }

      // Sᵀ = K·Qᵀ: s[u][e] is key 16u + g + 8·(e / 2), row 2t + e % 2.
      float s[kSub][4];
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[u][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          const uint2 qb = qf[ks * 32 + lane];
          const uint4& k0 = kr[u][0][ks >> 1];
          const uint4& k1 = kr[u][1][ks >> 1];
          const uint32_t af[4] = {
              Word(k0, 2 * (ks & 1)), Word(k1, 2 * (ks & 1)),
              Word(k0, 2 * (ks & 1) + 1), Word(k1, 2 * (ks & 1) + 1)};
          MmaBf16(s[u], af, qb.x, qb.y);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int p = base + 16 * u + g + 8 * (e >> 1);
          const int qp = pos[e & 1];
          const bool visible = key_ok[u][e >> 1] && p <= qp &&
                               (a.window <= 0 || p > qp - a.window);
          s[u][e] = visible ? s[u][e] * scale_log2 : -INFINITY;
        }
      }

      // Fold the step into the running softmax of rows 2t and 2t + 1 (the
      // max over the 8 lanes sharing t).
      float factor[2];
      float m_use[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < kSub; ++u) {
          mx = fmaxf(mx, fmaxf(s[u][i], s[u][2 + i]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float m_new = fmaxf(m[i], mx);
        // All hidden so far: subtract 0 so that exp2(−inf) gives 0, not NaN.
        m_use[i] = m_new == -INFINITY ? 0.0f : m_new;
        factor[i] = exp2f(m[i] - m_use[i]);
        m[i] = m_new;
        l[i] *= factor[i];
      }
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[u][e] = exp2f(s[u][e] - m_use[e & 1]);
          l[e & 1] += s[u][e];
        }
      }
#pragma unroll
      for (int j = 0; j < kMTiles; ++j) {
        o[j][0] *= factor[0];
        o[j][1] *= factor[1];
        o[j][2] *= factor[0];
        o[j][3] *= factor[1];
      }

      // Oᵀ += Vᵀ·Pᵀ.
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
        const uint32_t b0 = Transpose8x8(PackBf16(s[u][0], s[u][1]));
        const uint32_t b1 = Transpose8x8(PackBf16(s[u][2], s[u][3]));
#pragma unroll
        for (int j = 0; j < kMTiles; ++j) {
          const int c = j >> 2;
          const int w = j & 3;
          const uint32_t x0 = Word(vr[u][0][c], w);
          const uint32_t x1 = Word(vr[u][1][c], w);
          const uint32_t x2 = Word(vr[u][2][c], w);
          const uint32_t x3 = Word(vr[u][3][c], w);
          const uint32_t af[4] = {
              __byte_perm(x0, x1, 0x5410), __byte_perm(x0, x1, 0x7632),
              __byte_perm(x2, x3, 0x5410), __byte_perm(x2, x3, 0x7632)};
          MmaBf16(o[j], af, b0, b1);
        }
      }
    }

    // Merge the warps: block max and sum per row, then each warp's output
    // rescaled to the block max, staged and summed.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 4);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 8);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 16);
      if (g == 0) warp_ml[warp * kDecodeRows + 2 * t + i] = {m[i], l[i]};
    }
    __syncthreads();
    if (tid < kDecodeRows) {
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        mx = fmaxf(mx, warp_ml[w * kDecodeRows + tid].x);
      }
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float2 ml = warp_ml[w * kDecodeRows + tid];
        if (ml.x != -INFINITY) sum += ml.y * exp2f(ml.x - mx);
      }
      block_ml[tid] = {mx, sum};
    }
    __syncthreads();
    float f[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      f[i] = m[i] == -INFINITY ? 0.0f : exp2f(m[i] - block_ml[2 * t + i].x);
    }
    float* mine = staged + warp * kDecodeRows * kOs;
#pragma unroll
    for (int j = 0; j < kMTiles; ++j) {
      const int col = (8 * (j >> 2) + g) * 8 + 2 * (j & 3);
      *reinterpret_cast<float2*>(mine + 2 * t * kOs + col) =
          make_float2(o[j][0] * f[0], o[j][2] * f[0]);
      *reinterpret_cast<float2*>(mine + (2 * t + 1) * kOs + col) =
          make_float2(o[j][1] * f[1], o[j][3] * f[1]);
    }
    __syncthreads();
    for (int e = tid; e < valid_rows * (D / 4); e += kDecodeThreads) {
      const int r = e / (D / 4);
      const int col = (e % (D / 4)) * 4;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float4 x = *reinterpret_cast<const float4*>(
            staged + (w * kDecodeRows + r) * kOs + col);
        sum.x += x.x;
        sum.y += x.y;
        sum.z += x.z;
        sum.w += x.w;
      }
      const float2 ml = block_ml[r];
      if (num_splits == 1) {
        const float inv = ml.y > 0.0f ? 1.0f / ml.y : 0.0f;
        bf16* dst = static_cast<bf16*>(a.out) + row_token(r) * a.out_stride[0] +
                    row_head(r) * a.out_stride[1] + col;
        dst[0] = __float2bfloat16_rn(sum.x * inv);
        dst[1] = __float2bfloat16_rn(sum.y * inv);
        dst[2] = __float2bfloat16_rn(sum.z * inv);
        dst[3] = __float2bfloat16_rn(sum.w * inv);
      } else if (ml.y > 0.0f) {
        *reinterpret_cast<float4*>(
            PartialOut(a, split, row_token(r), row_head(r)) + col) = sum;
      }
    }
    if (num_splits > 1 && tid < valid_rows) {
      *PartialMaxSum(a, num_splits, split, row_token(tid), row_head(tid)) =
          block_ml[tid];
    }
  }
}

// SplitCombineKernel<D, T>: one block per (query head, sequence) merges the
// partial results of every token of the sequence: the max over the splits'
// maxima, each split weighted by 2^(max_s − max), divided by the weighted
// sum of the splits' sums (zero when nothing was visible). Thread (group,
// column) adds the float4 column of splits group, group + kGroups, ...
constexpr int kCombineThreads = 256;

__device__ __forceinline__ float BlockReduce(float x, bool is_max,
                                             float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float y = __shfl_xor_sync(0xffffffffu, x, o);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  __syncthreads();  // scratch is free
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) {
    x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
  }
  return x;
}

template <int D, typename T>
__global__ void __launch_bounds__(kCombineThreads)
    SplitCombineKernel(const PagedAttentionArgs a, int num_splits) {
  constexpr int kCols = D / 4;
  constexpr int kGroups = kCombineThreads / kCols;
  __shared__ float weight[kPagedAttentionMaxSplits];
  __shared__ float4 part[kGroups][kCols];
  __shared__ float scratch[kCombineThreads / 32];

  const int tid = threadIdx.x;
  const int64_t h = blockIdx.x;
  const int64_t b = blockIdx.y;
  const int64_t start = a.cu_seqlens[b];
  const int64_t end = a.cu_seqlens[b + 1];
  if (start < 0 || end < start || end > a.tokens) return;
  const int col = tid % kCols;
  const int grp = tid / kCols;
  for (int64_t tok = start; tok < end; ++tok) {
    float mx = -INFINITY;
    for (int s = tid; s < num_splits; s += kCombineThreads) {
      const float2 ml = *PartialMaxSum(a, num_splits, s, tok, h);
      if (ml.y > 0.0f) mx = fmaxf(mx, ml.x);
    }
    mx = BlockReduce(mx, true, scratch);
    float sum = 0.0f;
    for (int s = tid; s < num_splits; s += kCombineThreads) {
      const float2 ml = *PartialMaxSum(a, num_splits, s, tok, h);
      const float w = ml.y > 0.0f ? exp2f(ml.x - mx) : 0.0f;
      weight[s] = w;
      sum += w * ml.y;
    }
    sum = BlockReduce(sum, false, scratch);  // also publishes `weight`
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int s = grp; s < num_splits; s += kGroups) {
      const float w = weight[s];
      if (w == 0.0f) continue;
      const float4 x =
          *reinterpret_cast<const float4*>(PartialOut(a, s, tok, h) + col * 4);
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
    }
    part[grp][col] = acc;
    __syncthreads();
    if (tid < kCols) {
      float4 total = part[0][tid];
      for (int i = 1; i < kGroups; ++i) {
        total.x += part[i][tid].x;
        total.y += part[i][tid].y;
        total.z += part[i][tid].z;
        total.w += part[i][tid].w;
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      T* dst = static_cast<T*>(a.out) + tok * a.out_stride[0] +
               h * a.out_stride[1] + tid * 4;
      dst[0] = FromF32<T>(total.x * inv);
      dst[1] = FromF32<T>(total.y * inv);
      dst[2] = FromF32<T>(total.z * inv);
      dst[3] = FromF32<T>(total.w * inv);
    }
    __syncthreads();  // `part` and `weight` are reused
  }
}

// Blocks of `kernel` (`threads`, `smem` bytes) one multiprocessor holds; 0
// when the query fails.
int BlocksPerSm(const void* kernel, int threads, size_t smem) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads,
                                                    smem) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return blocks;
}

// The number of key splits of a decode launch whose grid has `ctas` blocks
// per split, `blocks_per_sm` of which fit a multiprocessor: one when no
// workspace is given or a row block sees fewer than kSingleSplitKeys keys
// (bounded by the page table's width or the window); else enough to fill
// the GPU once, at most one per kMinSplitKeys keys, as many as fit the
// workspace. Reads nothing from the device.
int DecodeSplits(const PagedAttentionArgs& a, int blocks_per_sm, int64_t ctas,
                 int64_t max_splits) {
  if (a.workspace == nullptr || a.workspace_bytes <= 0 || blocks_per_sm < 1) {
    return 1;
  }
  int64_t keys = static_cast<int64_t>(a.kv.max_pages) * a.kv.page_size;
  if (a.window > 0) keys = std::min<int64_t>(keys, int64_t{a.window} + 16);
  if (keys < kSingleSplitKeys) return 1;
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  int64_t splits = std::min<int64_t>(keys / kMinSplitKeys, max_splits);
  splits = std::min<int64_t>(
      splits, int64_t{sms} * blocks_per_sm / std::max<int64_t>(ctas, 1));
  splits = std::min<int64_t>(
      splits, a.workspace_bytes / PagedAttentionSplitBytes(
                                      a.tokens, a.num_q_heads, a.head_dim));
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

template <int D, typename T>
absl::Status LaunchSplitCombine(const PagedAttentionArgs& a, int num_splits,
                                cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.num_q_heads),
                  static_cast<unsigned>(a.batch));
  SplitCombineKernel<D, T><<<grid, kCombineThreads, 0, stream>>>(a, num_splits);
  return CudaStatus(cudaGetLastError(),
                    "PagedAttention (split combine) launch");
}

template <int D>
absl::Status LaunchFlashDecode(const PagedAttentionArgs& a,
                               cudaStream_t stream) {
  constexpr size_t kSmem = DecodeSmemBytes(D);
  static_assert(kSmem <= 48 * 1024, "no opt-in shared memory needed");
  auto kernel = FlashDecodeKernel<D>;
  static const int blocks_per_sm =
      BlocksPerSm(reinterpret_cast<const void*>(kernel), kDecodeThreads, kSmem);
  const int splits = DecodeSplits(a, blocks_per_sm, a.batch * a.num_kv_heads,
                                  kPagedAttentionMaxSplits);
  const dim3 grid(static_cast<unsigned>(splits),
                  static_cast<unsigned>(a.num_kv_heads),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kDecodeThreads, kSmem, stream>>>(a, splits);
  const absl::Status status =
      CudaStatus(cudaGetLastError(), "PagedAttention (decode) launch");
  if (!status.ok() || splits == 1) return status;
  return LaunchSplitCombine<D, __nv_bfloat16>(a, splits, stream);
}

absl::Status DispatchFlashDecode(const PagedAttentionArgs& a,
                                 cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return LaunchFlashDecode<64>(a, stream);
    case 128:
      return LaunchFlashDecode<128>(a, stream);
    default:
      return LaunchFlashDecode<256>(a, stream);
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

// Launches PagedAttentionKernel<D, R, T>; decode launches (R = 1) split the
// keys when the workspace allows.
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
  int splits = 1;
  if (R == 1) {
    // After cudaFuncSetAttribute: the dynamic shared memory may exceed 48 KB.
    static const int blocks_per_sm =
        BlocksPerSm(reinterpret_cast<const void*>(kernel), kThreads, kSmem);
    splits = DecodeSplits(
        a, blocks_per_sm, a.batch * a.num_kv_heads,
        std::min<int64_t>(kPagedAttentionMaxSplits, INT32_MAX / row_blocks));
  }
  const dim3 grid(static_cast<unsigned>(row_blocks * splits),
                  static_cast<unsigned>(a.num_kv_heads),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kThreads, kSmem, stream>>>(a, vec_kv, splits);
  const absl::Status launched =
      CudaStatus(cudaGetLastError(), "PagedAttention launch");
  if (!launched.ok() || splits == 1) return launched;
  return LaunchSplitCombine<D, T>(a, splits, stream);
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

// The tensor-core kernel for bf16 prefill (same rule as DispatchRows: more
// than 16 rows per sequence on average).
absl::Status DispatchFlashPrefill(const PagedAttentionArgs& a,
                                  cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return LaunchFlashPrefill<64, 2>(a, stream);
    case 128:
      return LaunchFlashPrefill<128, 2>(a, stream);
    default:
      return LaunchFlashPrefill<256, 1>(a, stream);
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

// True when bf16 pointer p is 16-byte aligned, and when strides keep 8-element
// (16-byte) groups of bf16 aligned.
bool Aligned8(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}
bool Strides8(const int64_t* strides, int count) {
  for (int i = 0; i < count; ++i) {
    if (strides[i] % 8 != 0) return false;
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
  if (a.workspace != nullptr && !Aligned8(a.workspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the workspace is not 16-byte aligned"));
  }
  const int elem = DTypeSize(a.dtype);
  const bool vec_kv = Aligned4(a.kv.k_pages, elem) &&
                      Aligned4(a.kv.v_pages, elem) &&
                      Strides4(a.kv.k_stride, 3) && Strides4(a.kv.v_stride, 3);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::kF32) return DispatchDim<float>(a, vec_kv, st);
  // The tensor-core kernel moves rows in 16-byte (8-element) chunks.
  const bool vec16 = Aligned8(a.q) && Aligned8(a.out) &&
                     Aligned8(a.kv.k_pages) && Aligned8(a.kv.v_pages) &&
                     Strides8(a.q_stride, 2) && Strides8(a.out_stride, 2) &&
                     Strides8(a.kv.k_stride, 3) && Strides8(a.kv.v_stride, 3);
  const bool tiled = a.head_dim == 64 || a.head_dim == 128 || a.head_dim == 256;
  const bool decode = a.tokens * group <= 16 * a.batch;
  if (tiled && !decode && vec16) return DispatchFlashPrefill(a, st);
  // The decode kernel reads K and V rows in 16-byte pieces.
  const bool kv16 = Aligned8(a.kv.k_pages) && Aligned8(a.kv.v_pages) &&
                    Strides8(a.kv.k_stride, 3) && Strides8(a.kv.v_stride, 3);
  if (tiled && decode && kv16) return DispatchFlashDecode(a, st);
  return DispatchDim<__nv_bfloat16>(a, vec_kv, st);
}

}  // namespace deltaserve
