// Chunked gated delta rule on tensor cores: the prefill path for bf16 q, k
// and v. The algebra is that of gdr_chunked.cu (read its header comment):
// per chunk of kC tokens, with A_ij = β_i (k_i·k_j) exp(G_i − G_j) for j < i
// and T = (I + A)⁻¹,
//   W = T diag(β γ) K,  U = T diag(β) V,  K' = exp(G_{n−1} − G) ⊙ K,
//   Δ = U − W S,  O = diag(γ) Q S + mask_{j≤i}(Q Kᵀ ⊙ exp(G_i − G_j)) Δ,
//   S ← γ_{n−1} S + K'ᵀ Δ.
// Every product runs on mma.sync m16n8k16 with bf16 operands and fp32
// accumulation; the triangular inverse T is formed in fp32 on CUDA cores;
// the state S is carried in fp32 registers from chunk to chunk and only
// its bf16 copy enters the products (as in the usual bf16 implementations
// of this recurrence, whose accuracy this matches).
//
// Three kernels after the chunk numbering (gdr_chunk.cuh), four warps each,
// passing bf16 tiles through a workspace allocated on the stream
// (about 2 (2 kC K + kC V + K V) bytes per chunk and value head):
//  1. Prep, one block per (chunk, value head), all chunks in parallel: the
//     normalised keys, A (tensor cores), T by forward substitution (a
//     column per thread pair), then W, U (tensor cores) and K' out.
//  2. State, one block per (sequence, value head, 16 to 64 value columns),
//     walking the sequence's chunks in order: the state lives in mma
//     accumulators; per chunk it is stored (bf16) as the chunk-start state,
//     Δ = U − W S replaces U, and S ← γ S + K'ᵀ Δ. The next chunk's W, K'
//     and U tile are copied into the other shared-memory buffer (cp.async)
//     meanwhile.
//  3. Output, one block per (chunk, value head), all chunks in parallel:
//     the masked, decayed Q Kᵀ stays in registers as the A operand of its
//     product with Δ; O is written f32 or bf16.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/cuda/gdr/gdr_chunk.cuh"
#include "kernels/cuda/gdr/gdr_common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/status.h"

namespace deltaserve {
namespace gdr_internal {
namespace {

using bf16 = __nv_bfloat16;
using mma::CpAsync16;
using mma::CpAsyncCommit;
using mma::CpAsyncWait;
using mma::LdMatrixX4;
using mma::LdMatrixX4Trans;
using mma::MmaBf16;
using mma::PackBf16;
using mma::SmemAddress;

constexpr char kOp[] = "GatedDeltaRuleChunked";
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// Value columns of one pass of the prep and output kernels (a state block
// takes kVs columns, a template argument).
constexpr int kVo = 32;
static_assert(kGdrChunkedValueTile % kVo == 0, "value tiles split evenly");
static_assert(kC == 16 * kWarps, "one 16-row tile of a chunk per warp");

// Shared-memory rows are padded by 8 bf16 (16 bytes) so that the 8 row
// addresses of one ldmatrix phase fall in distinct bank groups.
__host__ __device__ constexpr int Ld(int cols) { return cols + 8; }

struct TcWorkspace {
  bf16* w = nullptr;      // [chunks · Hv][kC][K]
  bf16* kd = nullptr;     // [chunks · Hv][kC][K], K'
  bf16* u = nullptr;      // [chunks · Hv][kC][V], U, then Δ
  bf16* h = nullptr;      // [chunks · Hv][K][V], chunk-start states
  float* rows = nullptr;  // [chunks · Hv][kC], cumulative log decay
  int32_t* base = nullptr;
};

__device__ __forceinline__ int Lane() { return threadIdx.x % 32; }

// The A fragment of rows r0.., columns c0.. of a row-major tile.
__device__ __forceinline__ void LoadA(const bf16* tile, int ld, int r0, int c0,
                                      uint32_t (&a)[4]) {
  const int l = Lane();
  LdMatrixX4(SmemAddress(tile + (r0 + l % 16) * ld + c0 + (l / 16) * 8), a);
}

// The A fragment of rows m0.., columns k0.. of Xᵀ, X row-major [k][m].
__device__ __forceinline__ void LoadATrans(const bf16* tile, int ld, int m0,
                                           int k0, uint32_t (&a)[4]) {
  const int l = Lane();
  const int q = l / 8;
  LdMatrixX4Trans(
      SmemAddress(tile + (k0 + l % 8 + (q >> 1) * 8) * ld + m0 + (q & 1) * 8),
      a);
}

// B fragments of two n-tiles (n0.. n0 + 15) at k0.. k0 + 15 of a matrix
// stored [n][k] (rows are the product's columns): b[0], b[1] for the first
// tile, b[2], b[3] for the second.
__device__ __forceinline__ void LoadBRows(const bf16* tile, int ld, int n0,
                                          int k0, uint32_t (&b)[4]) {
  const int l = Lane();
  LdMatrixX4(SmemAddress(tile + (n0 + (l & 7) + ((l >> 4) << 3)) * ld + k0 +
                         ((l >> 3) & 1) * 8),
             b);
}

// The same for a matrix stored [k][n].
__device__ __forceinline__ void LoadBCols(const bf16* tile, int ld, int k0,
                                          int n0, uint32_t (&b)[4]) {
  const int l = Lane();
  LdMatrixX4Trans(SmemAddress(tile + (k0 + (l & 7) + ((l >> 3) & 1) * 8) * ld +
                              n0 + (l >> 4) * 8),
                  b);
}

// Row and column of accumulator element e of n-tile nt, for a warp's tile
// starting at row r0.
__device__ __forceinline__ int AccRow(int r0, int e) {
  return r0 + Lane() / 4 + 8 * (e >> 1);
}
__device__ __forceinline__ int AccCol(int nt, int e) {
  return 8 * nt + 2 * (Lane() % 4) + (e & 1);
}

__device__ __forceinline__ void StorePair(bf16* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = PackBf16(lo, hi);
}

// Stores a warp's 16 × 8 kNt tile of accumulators at rows r0.. of a
// row-major bf16 matrix with row stride ld.
template <int kNt>
__device__ __forceinline__ void StoreTile(const float (&acc)[kNt][4], int r0,
                                          bf16* dst, int64_t ld) {
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      StorePair(dst + AccRow(r0, 2 * hf) * ld + AccCol(nt, 0), acc[nt][2 * hf],
                acc[nt][2 * hf + 1]);
    }
  }
}

template <int kNt>
__device__ __forceinline__ void Zero(float (&acc)[kNt][4]) {
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
  }
}

// acc[16 × 8 kNt] += A(rows r0.., kK columns, row-major) · B where B is
// [kK][8 kNt] stored [k][n] (kBRows false) or [n][k] (true).
template <int kK, int kNt, bool kBRows>
__device__ __forceinline__ void MmaTile(const bf16* a, int lda, int r0,
                                        const bf16* b, int ldb,
                                        float (&acc)[kNt][4]) {
  static_assert(kNt % 2 == 0, "n-tiles come in pairs");
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t af[4];
    LoadA(a, lda, r0, 16 * kk, af);
#pragma unroll
    for (int np = 0; np < kNt / 2; ++np) {
      uint32_t bf[4];
      if (kBRows) {
        LoadBRows(b, ldb, 16 * np, 16 * kk, bf);
      } else {
        LoadBCols(b, ldb, 16 * kk, 16 * np, bf);
      }
      MmaBf16(acc[2 * np], af, bf[0], bf[1]);
      MmaBf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// A lane's kE consecutive bf16 elements of a row, as one access.
template <int kE>
using LaneVec = typename std::conditional<
    kE == 4, uint2,
    typename std::conditional<kE == 2, uint32_t, uint16_t>::type>::type;

// Scales a row held by a warp (lane l: elements [l kE, (l + 1) kE)) by
// `mul` and, when l2norm, by 1 / ‖row‖, computed in fp32.
template <int kE>
__device__ __forceinline__ void ScaleRow(bool l2norm, float mul,
                                         bf16 (&xv)[kE]) {
  float f[kE];
  float ss = 0.0f;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    f[e] = __bfloat162float(xv[e]);
    ss += f[e] * f[e];
  }
  float m = mul;
  if (l2norm) m *= rsqrtf(WarpSum(ss) + 1e-6f);
#pragma unroll
  for (int e = 0; e < kE; ++e) xv[e] = __float2bfloat16_rn(f[e] * m);
}

// Loads rows [0, kC) of a chunk of bf16 q or k (zero past n) into x
// [kC][ld] as bf16, scaled as ScaleRow does (l2norm_qk). One warp per row,
// read a lane's elements at a time when the rows allow it.
template <int kK>
__device__ __forceinline__ void LoadRowsBf16(const GdrArgs& a, const bf16* p,
                                             int64_t stride, int64_t c0, int n,
                                             float mul, bf16* x, int ld) {
  constexpr int kE = kK / 32;
  static_assert(kE == 1 || kE == 2 || kE == 4, "K is 32, 64 or 128");
  using Vec = LaneVec<kE>;
  const int lane = Lane();
  const int warp = threadIdx.x / 32;
  const bool vec =
      reinterpret_cast<uintptr_t>(p) % sizeof(Vec) == 0 && stride % kE == 0;
  for (int i = warp; i < kC; i += kWarps) {
    bf16 xv[kE];
    if (i < n) {
      const bf16* row = p + (c0 + i) * stride + lane * kE;
      if (vec) {
        *reinterpret_cast<Vec*>(xv) = *reinterpret_cast<const Vec*>(row);
      } else {
#pragma unroll
        for (int e = 0; e < kE; ++e) xv[e] = row[e];
      }
    } else {
#pragma unroll
      for (int e = 0; e < kE; ++e) xv[e] = __float2bfloat16_rn(0.0f);
    }
    ScaleRow<kE>(a.l2norm_qk, mul, xv);
    *reinterpret_cast<Vec*>(x + i * ld + lane * kE) =
        *reinterpret_cast<const Vec*>(xv);
  }
}

// Whether rows of p (row stride in elements) can be copied 16 bytes at a
// time.
__device__ __forceinline__ bool Rows16(const bf16* p, int64_t stride) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && stride % 8 == 0;
}

// Issues the copies of rows [0, kC) of a chunk of p (zeros past n) into x
// [kC][ld], 16 bytes at a time; the caller commits them. Needs Rows16.
template <int kCols>
__device__ __forceinline__ void CopyRowsAsync(const bf16* p, int64_t stride,
                                              int64_t c0, int n, bf16* x,
                                              int ld) {
  constexpr int kPerRow = kCols / 8;
  for (int idx = threadIdx.x; idx < kC * kPerRow; idx += kThreads) {
    const int r = idx / kPerRow;
    const int d = 8 * (idx % kPerRow);
    CpAsync16(SmemAddress(x + r * ld + d),
              p + (c0 + (r < n ? r : 0)) * stride + d, r < n);
  }
}

// Scales the rows of x [kC][ld] in place as LoadRowsBf16 does (zero rows
// stay zero).
template <int kK>
__device__ __forceinline__ void ScaleRows(bool l2norm, float mul, bf16* x,
                                          int ld) {
  if (!l2norm && mul == 1.0f) return;
  constexpr int kE = kK / 32;
  using Vec = LaneVec<kE>;
  const int lane = Lane();
  for (int i = threadIdx.x / 32; i < kC; i += kWarps) {
    bf16 xv[kE];
    *reinterpret_cast<Vec*>(xv) =
        *reinterpret_cast<const Vec*>(x + i * ld + lane * kE);
    ScaleRow<kE>(l2norm, mul, xv);
    *reinterpret_cast<Vec*>(x + i * ld + lane * kE) =
        *reinterpret_cast<const Vec*>(xv);
  }
}

template <int kK>
struct PrepLayout {
  // bf16 tiles.
  static constexpr int kKey = 0;                  // [kC][Ld(kK)] keys
  static constexpr int kTw = kKey + kC * Ld(kK);  // [kC][Ld(kC)] T diag(βγ)
  static constexpr int kTu = kTw + kC * Ld(kC);   // [kC][Ld(kC)] T diag(β)
  static constexpr int kVal = kTu + kC * Ld(kC);  // 2 × [kC][Ld(kVo)] values
  static constexpr int kHalfs = kVal + 2 * kC * Ld(kVo);
  // f32, after the tiles.
  static constexpr int kLdA = kC + 1;
  static constexpr int kA = 0;  // [kC][kLdA]
  static constexpr int kGcum = kA + kC * kLdA;
  static constexpr int kBeta = kGcum + kC;
  static constexpr int kFloats = kBeta + kC;
  static constexpr size_t kBytes = 2 * kHalfs + 4 * kFloats;
  static_assert(kHalfs % 8 == 0, "f32 part stays 16-byte aligned");
};

// Kernel 1: W, U, K' and the cumulative log decay of chunk blockIdx.x,
// value head blockIdx.y.
template <int kK>
__global__ void __launch_bounds__(kThreads)
    TcPrepKernel(const GdrArgs a, const TcWorkspace ws) {
  using L = PrepLayout<kK>;
  extern __shared__ float4 smem4[];
  bf16* halfs = reinterpret_cast<bf16*>(smem4);
  float* floats = reinterpret_cast<float*>(halfs + L::kHalfs);
  bf16* kb = halfs + L::kKey;
  bf16* tw = halfs + L::kTw;
  bf16* tu = halfs + L::kTu;
  bf16* vb = halfs + L::kVal;
  float* am = floats + L::kA;
  float* gcum = floats + L::kGcum;
  float* bet = floats + L::kBeta;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int r0 = 16 * warp;
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

  const bf16* k = static_cast<const bf16*>(a.k) + kh * a.k_stride[1];
  const bf16* v = static_cast<const bf16*>(a.v) + h * a.v_stride[1];
  // The keys and the first value tile are copied in one go (16 bytes at a
  // time when the rows allow it) while the gates are read.
  const bool k_vec = Rows16(k, a.k_stride[0]);
  const bool v_vec = Rows16(v, a.v_stride[0]);
  if (k_vec) CopyRowsAsync<kK>(k, a.k_stride[0], c0, n, kb, Ld(kK));
  CpAsyncCommit();
  // Copies value columns [j0, j0 + kVo) into buffer `buf`, as one commit
  // group (synchronously, with an empty group, when rows are unaligned).
  auto load_values = [&](int j0, int buf) {
    bf16* dst = vb + buf * kC * Ld(kVo);
    if (v_vec) {
      CopyRowsAsync<kVo>(v + j0, a.v_stride[0], c0, n, dst, Ld(kVo));
    } else {
      for (int idx = tid; idx < kC * kVo; idx += kThreads) {
        const int r = idx / kVo;
        const int cc = idx % kVo;
        dst[r * Ld(kVo) + cc] = r < n ? v[(c0 + r) * a.v_stride[0] + j0 + cc]
                                      : __float2bfloat16_rn(0.0f);
      }
    }
    CpAsyncCommit();
  };
  load_values(0, 0);
  if (warp == 0) LoadGates(a, h, c0, n, gcum, bet);
  if (k_vec) {
    CpAsyncWait<1>();
    __syncthreads();
    ScaleRows<kK>(a.l2norm_qk, 1.0f, kb, Ld(kK));
  } else {
    LoadRowsBf16<kK>(a, k, a.k_stride[0], c0, n, 1.0f, kb, Ld(kK));
  }
  __syncthreads();
  if (tid < kC) ws.rows[ch * kC + tid] = gcum[tid];

  // A, strictly lower: warp w computes rows 16w.. of K Kᵀ.
  {
    float acc[kC / 8][4];
    Zero(acc);
    MmaTile<kK, kC / 8, true>(kb, Ld(kK), r0, kb, Ld(kK), acc);
#pragma unroll
    for (int nt = 0; nt < kC / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = AccRow(r0, e);
        const int j = AccCol(nt, e);
        am[i * L::kLdA + j] =
            j < i ? bet[i] * acc[nt][e] * __expf(gcum[i] - gcum[j]) : 0.0f;
      }
    }
  }
  __syncthreads();

  // T = (I + A)⁻¹ by forward substitution, column j on the thread pair
  // 2j, 2j + 1, which holds its even and odd rows: once x_m is final its
  // owner passes it to the other (a shuffle) and both subtract it from
  // their later rows, so the dependent chain is kC steps long, not
  // kC² / 2. (A is strictly lower, so updating rows i ≤ m changes
  // nothing.) The columns are then scaled by βγ and β.
  static_assert(kThreads == 2 * kC, "a thread pair per column of T");
  {
    const int j = tid / 2;
    const int par = tid % 2;
    const int pair = Lane() & ~1;
    float x[kC / 2];  // x[r] is row 2r + par of column j
#pragma unroll
    for (int r = 0; r < kC / 2; ++r) x[r] = 2 * r + par == j ? 1.0f : 0.0f;
#pragma unroll
    for (int m = 0; m < kC; ++m) {
      const float xm = __shfl_sync(0xffffffffu, x[m / 2], pair | (m % 2));
      const float* col = am + par * L::kLdA + m;
#pragma unroll
      for (int r = m / 2; r < kC / 2; ++r) {
        x[r] -= col[2 * r * L::kLdA] * xm;
      }
    }
    const float bj = bet[j];
    const float bgj = bj * __expf(gcum[j]);
#pragma unroll
    for (int r = 0; r < kC / 2; ++r) {
      const int i = 2 * r + par;
      tw[i * Ld(kC) + j] = __float2bfloat16_rn(x[r] * bgj);
      tu[i * Ld(kC) + j] = __float2bfloat16_rn(x[r] * bj);
    }
  }
  __syncthreads();

  // W = T diag(βγ) K.
  {
    float acc[kK / 8][4];
    Zero(acc);
    MmaTile<kC, kK / 8, false>(tw, Ld(kC), r0, kb, Ld(kK), acc);
    StoreTile(acc, r0, ws.w + ch * kC * kK, kK);
  }
  // K' = exp(G_{n−1} − G) ⊙ K (rows past n are zero keys).
  {
    const float g_last = gcum[n - 1];
    bf16* kd_out = ws.kd + ch * kC * kK;
    for (int idx = tid; idx < kC * kK / 2; idx += kThreads) {
      const int r = idx / (kK / 2);
      const int d = 2 * (idx % (kK / 2));
      const float f = __expf(g_last - gcum[r]);
      StorePair(kd_out + r * kK + d, __bfloat162float(kb[r * Ld(kK) + d]) * f,
                __bfloat162float(kb[r * Ld(kK) + d + 1]) * f);
    }
  }
  // U = T diag(β) V, kVo columns at a time, the next tile in flight.
  bf16* u_out = ws.u + ch * kC * V;
  for (int j0 = 0, buf = 0; j0 < V; j0 += kVo, buf ^= 1) {
    if (j0 + kVo < V) {
      load_values(j0 + kVo, buf ^ 1);
    } else {
      CpAsyncCommit();
    }
    CpAsyncWait<1>();
    __syncthreads();
    float acc[kVo / 8][4];
    Zero(acc);
    MmaTile<kC, kVo / 8, false>(tu, Ld(kC), r0, vb + buf * kC * Ld(kVo),
                                Ld(kVo), acc);
    StoreTile(acc, r0, u_out + j0, V);
    __syncthreads();
  }
}

// Chunks in flight in the state kernel: the loads of chunk ci + kStages − 1
// are issued while chunk ci is computed (LaunchState picks kStages).
template <int kK, int kVs, int kStages>
struct StateLayout {
  // One of kStages buffers: W, K', a kVs-column tile of U and the 16-byte
  // group of cumulative log decays holding the chunk's last one.
  static constexpr int kW = 0;                   // [kC][Ld(kK)]
  static constexpr int kKd = kW + kC * Ld(kK);   // [kC][Ld(kK)]
  static constexpr int kU = kKd + kC * Ld(kK);   // [kC][Ld(kVs)]
  static constexpr int kGl = kU + kC * Ld(kVs);  // 4 f32
  static constexpr int kBuf = kGl + 8;           // bf16 per buffer
  static constexpr int kS = kStages * kBuf;      // [kK][Ld(kVs)] bf16 S
  static constexpr int kD = kS + kK * Ld(kVs);   // [kC][Ld(kVs)] Δ
  static constexpr int kHalfs = kD + kC * Ld(kVs);
  static constexpr size_t kBytes = 2 * kHalfs;
  static_assert(kBuf % 8 == 0, "buffers stay 16-byte aligned");
};

// Kernel 2: the state recurrence of sequence blockIdx.x / Hv, value head
// blockIdx.x % Hv, value columns [kVs blockIdx.y, kVs (blockIdx.y + 1)).
template <int kK, int kVs, int kStages>
__global__ void __launch_bounds__(kThreads)
    TcStateKernel(const GdrArgs a, const TcWorkspace ws) {
  using L = StateLayout<kK, kVs, kStages>;
  // The state's 16-row tiles, kMine per warp (warp w owns tiles w, w + 4,
  // ...; with K = 32 warps 2 and 3 own none).
  constexpr int kMTiles = kK / 16;
  constexpr int kMine = (kMTiles + kWarps - 1) / kWarps;
  extern __shared__ float4 smem4[];
  bf16* halfs = reinterpret_cast<bf16*>(smem4);
  bf16* sb = halfs + L::kS;
  bf16* db = halfs + L::kD;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int64_t b = blockIdx.x / a.num_v_heads;
  const int h = static_cast<int>(blockIdx.x % a.num_v_heads);
  const int j0 = blockIdx.y * kVs;
  const int V = a.value_dim;

  int64_t start = 0;
  int64_t end = 0;
  if (!SequenceRange(a, b, &start, &end)) return;
  if (start == end) return;
  const int32_t slot = a.slots[b * a.slots_stride];
  if (slot < 0 || slot >= a.num_slots) return;
  const int64_t cbase = ws.base[b];
  const int64_t nchunks = ws.base[b + 1] - cbase;

  float* state =
      a.state + slot * a.state_stride[0] + h * a.state_stride[1] + j0;
  float s[kMine][kVs / 8][4];
#pragma unroll
  for (int r = 0; r < kMine; ++r) {
    const int mt = warp + kWarps * r;
#pragma unroll
    for (int nt = 0; nt < kVs / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[r][nt][e] =
            mt < kMTiles
                ? state[AccRow(16 * mt, e) * a.state_stride[2] + AccCol(nt, e)]
                : 0.0f;
      }
    }
  }

  // Length of chunk ci.
  auto chunk_len = [&](int64_t ci) {
    const int64_t c0 = start + ci * kC;
    return static_cast<int>(end - c0 < kC ? end - c0 : kC);
  };
  // Copies chunk ci's W, K', U tile and last cumulative log decay into
  // buffer ci % kStages, as one commit group (an empty one past the end,
  // so that every iteration commits exactly one).
  auto prefetch = [&](int64_t ci) {
    if (ci < nchunks) {
      const int64_t ch = (cbase + ci) * a.num_v_heads + h;
      bf16* buf = halfs + (ci % kStages) * L::kBuf;
      const bf16* w_in = ws.w + ch * kC * kK;
      const bf16* kd_in = ws.kd + ch * kC * kK;
      constexpr int kPerRow = kK / 8;
      for (int idx = tid; idx < kC * kPerRow; idx += kThreads) {
        const int r = idx / kPerRow;
        const int d = 8 * (idx % kPerRow);
        CpAsync16(SmemAddress(buf + L::kW + r * Ld(kK) + d), w_in + 8 * idx);
        CpAsync16(SmemAddress(buf + L::kKd + r * Ld(kK) + d), kd_in + 8 * idx);
      }
      static_assert(kC * kVs / 8 % kThreads == 0, "U copies split evenly");
#pragma unroll
      for (int idx = tid; idx < kC * kVs / 8; idx += kThreads) {
        const int r = idx / (kVs / 8);
        const int cc = 8 * (idx % (kVs / 8));
        CpAsync16(SmemAddress(buf + L::kU + r * Ld(kVs) + cc),
                  ws.u + ch * kC * V + r * V + j0 + cc);
      }
      if (tid == 0) {
        CpAsync16(SmemAddress(buf + L::kGl),
                  ws.rows + ch * kC + ((chunk_len(ci) - 1) & ~3));
      }
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int ci = 0; ci < kStages - 1; ++ci) prefetch(ci);

  for (int64_t ci = 0; ci < nchunks; ++ci) {
    const int64_t ch = (cbase + ci) * a.num_v_heads + h;
    const bf16* buf = halfs + (ci % kStages) * L::kBuf;
    prefetch(ci + kStages - 1);
    CpAsyncWait<kStages - 1>();

    // The chunk-start state, to shared memory and out.
    bf16* h_out = ws.h + ch * kK * V + j0;
#pragma unroll
    for (int r = 0; r < kMine; ++r) {
      const int mt = warp + kWarps * r;
      if (mt < kMTiles) {
        StoreTile(s[r], 16 * mt, sb, Ld(kVs));
        StoreTile(s[r], 16 * mt, h_out, V);
      }
    }
    __syncthreads();

    // Δ = U − W S; warp w owns chunk rows 16w...
    {
      const int r0 = 16 * warp;
      float d[kVs / 8][4];
      Zero(d);
      MmaTile<kK, kVs / 8, false>(buf + L::kW, Ld(kK), r0, sb, Ld(kVs), d);
      bf16* u_out = ws.u + ch * kC * V + j0;
#pragma unroll
      for (int nt = 0; nt < kVs / 8; ++nt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = AccRow(r0, 2 * hf);
          const int j = AccCol(nt, 0);
          const __nv_bfloat162 u2 = *reinterpret_cast<const __nv_bfloat162*>(
              buf + L::kU + i * Ld(kVs) + j);
          const uint32_t packed =
              PackBf16(__low2float(u2) - d[nt][2 * hf],
                       __high2float(u2) - d[nt][2 * hf + 1]);
          *reinterpret_cast<uint32_t*>(db + i * Ld(kVs) + j) = packed;
          *reinterpret_cast<uint32_t*>(u_out + i * V + j) = packed;
        }
      }
    }
    __syncthreads();

    // S ← γ_{n−1} S + K'ᵀ Δ.
    const float gam = __expf(
        reinterpret_cast<const float*>(buf + L::kGl)[(chunk_len(ci) - 1) & 3]);
#pragma unroll
    for (int r = 0; r < kMine; ++r) {
      const int mt = warp + kWarps * r;
      if (mt < kMTiles) {
#pragma unroll
        for (int nt = 0; nt < kVs / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[r][nt][e] *= gam;
        }
#pragma unroll
        for (int kk = 0; kk < kC / 16; ++kk) {
          uint32_t af[4];
          LoadATrans(buf + L::kKd, Ld(kK), 16 * mt, 16 * kk, af);
#pragma unroll
          for (int np = 0; np < kVs / 16; ++np) {
            uint32_t bf[4];
            LoadBCols(db, Ld(kVs), 16 * kk, 16 * np, bf);
            MmaBf16(s[r][2 * np], af, bf[0], bf[1]);
            MmaBf16(s[r][2 * np + 1], af, bf[2], bf[3]);
          }
        }
      }
    }
    // The buffers and Δ are reused by the next chunks.
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < kMine; ++r) {
    const int mt = warp + kWarps * r;
    if (mt < kMTiles) {
#pragma unroll
      for (int nt = 0; nt < kVs / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          state[AccRow(16 * mt, e) * a.state_stride[2] + AccCol(nt, e)] =
              s[r][nt][e];
        }
      }
    }
  }
}

// kVt: value columns per pass of the output kernel.
template <int kK, int kVt>
struct OutLayout {
  static constexpr int kQ = 0;                   // [kC][Ld(kK)]
  static constexpr int kKey = kQ + kC * Ld(kK);  // [kC][Ld(kK)]
  // Two buffers, each a chunk-start state tile and its Δ tile.
  static constexpr int kH = kKey + kC * Ld(kK);  // [kK][Ld(kVt)]
  static constexpr int kD = kH + kK * Ld(kVt);   // [kC][Ld(kVt)]
  static constexpr int kBuf = kK * Ld(kVt) + kC * Ld(kVt);
  static constexpr int kHalfs = kH + 2 * kBuf;
  static constexpr size_t kBytes = 2 * kHalfs + 4 * kC;  // + gcum
  static_assert(kHalfs % 8 == 0, "f32 part stays 16-byte aligned");
};

__device__ __forceinline__ void StoreOut(float* p, float x) { *p = x; }
__device__ __forceinline__ void StoreOut(bf16* p, float x) {
  *p = __float2bfloat16_rn(x);
}

// Kernel 3: the output of chunk blockIdx.x, value head blockIdx.y, into O
// (f32 or bf16), kVt value columns at a time. The first tile's chunk-start
// state and Δ are in flight while Q Kᵀ is formed, and each next tile while
// the current one is.
template <int kK, int kVt, typename O>
__global__ void __launch_bounds__(kThreads)
    TcOutputKernel(const GdrArgs a, const TcWorkspace ws) {
  using L = OutLayout<kK, kVt>;
  constexpr int kNt = kVt / 8;
  extern __shared__ float4 smem4[];
  bf16* halfs = reinterpret_cast<bf16*>(smem4);
  bf16* qb = halfs + L::kQ;
  bf16* kb = halfs + L::kKey;
  float* gcum = reinterpret_cast<float*>(halfs + L::kHalfs);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int r0 = 16 * warp;
  const int64_t c = blockIdx.x;
  const int h = blockIdx.y;
  const int kh = h / (a.num_v_heads / a.num_k_heads);
  int64_t c0 = 0;
  int n = 0;
  int32_t slot = 0;
  if (!LocateChunk(a, ws.base, c, &c0, &n, &slot)) return;
  const int V = a.value_dim;
  O* out = static_cast<O*>(a.out) + h * a.out_stride[1];
  if (slot < 0 || slot >= a.num_slots) {
    for (int i = warp; i < n; i += kWarps) {
      for (int j = Lane(); j < V; j += 32) {
        StoreOut(out + (c0 + i) * a.out_stride[0] + j, 0.0f);
      }
    }
    return;
  }
  const int64_t ch = c * a.num_v_heads + h;
  const bf16* h_in = ws.h + ch * kK * V;
  const bf16* d_in = ws.u + ch * kC * V;
  const bf16* q = static_cast<const bf16*>(a.q) + kh * a.q_stride[1];
  const bf16* k = static_cast<const bf16*>(a.k) + kh * a.k_stride[1];
  const bool qk_vec = Rows16(q, a.q_stride[0]) && Rows16(k, a.k_stride[0]);
  if (qk_vec) {
    CopyRowsAsync<kK>(q, a.q_stride[0], c0, n, qb, Ld(kK));
    CopyRowsAsync<kK>(k, a.k_stride[0], c0, n, kb, Ld(kK));
  }
  CpAsyncCommit();
  // Copies columns [j0, j0 + kVt) of the chunk-start state and of Δ into
  // buffer `buf`, as one commit group.
  auto load_tile = [&](int j0, int buf) {
    constexpr int kPerRow = kVt / 8;
    bf16* hb = halfs + L::kH + buf * L::kBuf;
    bf16* db = halfs + L::kD + buf * L::kBuf;
    for (int idx = tid; idx < kK * kPerRow; idx += kThreads) {
      const int r = idx / kPerRow;
      const int cc = 8 * (idx % kPerRow);
      CpAsync16(SmemAddress(hb + r * Ld(kVt) + cc), h_in + r * V + j0 + cc);
    }
    for (int idx = tid; idx < kC * kPerRow; idx += kThreads) {
      const int r = idx / kPerRow;
      const int cc = 8 * (idx % kPerRow);
      CpAsync16(SmemAddress(db + r * Ld(kVt) + cc), d_in + r * V + j0 + cc);
    }
    CpAsyncCommit();
  };
  load_tile(0, 0);

  if (tid < kC) gcum[tid] = ws.rows[ch * kC + tid];
  if (qk_vec) {
    CpAsyncWait<1>();
    __syncthreads();
    ScaleRows<kK>(a.l2norm_qk, a.scale, qb, Ld(kK));
    ScaleRows<kK>(a.l2norm_qk, 1.0f, kb, Ld(kK));
  } else {
    LoadRowsBf16<kK>(a, q, a.q_stride[0], c0, n, a.scale, qb, Ld(kK));
    LoadRowsBf16<kK>(a, k, a.k_stride[0], c0, n, 1.0f, kb, Ld(kK));
  }
  __syncthreads();

  // P = mask_{j≤i}(Q Kᵀ ⊙ exp(G_i − G_j)), kept as A fragments.
  uint32_t pa[kC / 16][4];
  {
    float p[kC / 8][4];
    Zero(p);
    MmaTile<kK, kC / 8, true>(qb, Ld(kK), r0, kb, Ld(kK), p);
#pragma unroll
    for (int nt = 0; nt < kC / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = AccRow(r0, e);
        const int j = AccCol(nt, e);
        p[nt][e] = j <= i ? p[nt][e] * __expf(gcum[i] - gcum[j]) : 0.0f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk) {
      pa[kk][0] = PackBf16(p[2 * kk][0], p[2 * kk][1]);
      pa[kk][1] = PackBf16(p[2 * kk][2], p[2 * kk][3]);
      pa[kk][2] = PackBf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
      pa[kk][3] = PackBf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
  }
  const float gam0 = __expf(gcum[AccRow(r0, 0)]);
  const float gam1 = __expf(gcum[AccRow(r0, 2)]);

  for (int j0 = 0, buf = 0; j0 < V; j0 += kVt, buf ^= 1) {
    if (j0 + kVt < V) {
      load_tile(j0 + kVt, buf ^ 1);
    } else {
      CpAsyncCommit();
    }
    CpAsyncWait<1>();
    __syncthreads();
    const bf16* hb = halfs + L::kH + buf * L::kBuf;
    const bf16* db = halfs + L::kD + buf * L::kBuf;

    float o[kNt][4];
    Zero(o);
    MmaTile<kK, kNt, false>(qb, Ld(kK), r0, hb, Ld(kVt), o);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      o[nt][0] *= gam0;
      o[nt][1] *= gam0;
      o[nt][2] *= gam1;
      o[nt][3] *= gam1;
    }
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kNt / 2; ++np) {
        uint32_t bf[4];
        LoadBCols(db, Ld(kVt), 16 * kk, 16 * np, bf);
        MmaBf16(o[2 * np], pa[kk], bf[0], bf[1]);
        MmaBf16(o[2 * np + 1], pa[kk], bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = AccRow(r0, e);
        if (i < n) {
          StoreOut(out + (c0 + i) * a.out_stride[0] + j0 + AccCol(nt, e),
                   o[nt][e]);
        }
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

template <int kK, int kVt, typename O>
absl::Status LaunchOutputTyped(const GdrArgs& a, const TcWorkspace& ws,
                               dim3 grid, cudaStream_t stream) {
  constexpr size_t kBytes = OutLayout<kK, kVt>::kBytes;
  DS_RETURN_IF_ERROR(SetSmem(&TcOutputKernel<kK, kVt, O>, kBytes));
  TcOutputKernel<kK, kVt, O><<<grid, kThreads, kBytes, stream>>>(a, ws);
  return absl::OkStatus();
}

// The output kernel, 32 value columns per pass (wider tiles cost occupancy
// more than they save in Q Kᵀ reuse: 1.76 ms instead of 1.17 ms per
// 1 × 65536 × 16 heads with 128 columns).
template <int kK>
absl::Status LaunchOutput(const GdrArgs& a, const TcWorkspace& ws, dim3 grid,
                          cudaStream_t stream) {
  return a.out_bf16 ? LaunchOutputTyped<kK, 32, bf16>(a, ws, grid, stream)
                    : LaunchOutputTyped<kK, 32, float>(a, ws, grid, stream);
}

// Value columns per state block: 16, 32 or 64. A block's time per chunk
// grows with its columns (each of its warps walks them all), while fewer
// columns mean more blocks re-reading the same W and K'. So: the widest
// that still gives every SM a block, 16 when even that cannot; overridden
// by DELTASERVE_GDR_STATE_COLUMNS when set to one of the three (tuning).
// On the H200, for 65536 tokens of 16 value heads of 128: 1.43 / 2.12 /
// 3.70 ms with 16 / 32 / 64 columns; for 4 × 8192 tokens of 32 value
// heads: 2.08 ms with 16 and 0.89 ms with 64.
int StateColumns(int64_t sequences_heads, int64_t value_dim, int sms) {
  if (const char* env = std::getenv("DELTASERVE_GDR_STATE_COLUMNS")) {
    const int want = std::atoi(env);
    if ((want == 16 || want == 32 || want == 64) && value_dim % want == 0) {
      return want;
    }
  }
  for (int cols : {64, 32}) {
    if (value_dim % cols == 0 && sequences_heads * (value_dim / cols) >= sms) {
      return cols;
    }
  }
  return 16;
}

// The state kernel with kVs columns per block; chunks in flight (kStages):
// four when its blocks fit on the SMs one each, else two.
template <int kK, int kVs>
absl::Status LaunchState(const GdrArgs& a, const TcWorkspace& ws, int sms,
                         cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.batch * a.num_v_heads),
                  static_cast<unsigned>(a.value_dim / kVs));
  if (static_cast<int64_t>(grid.x) * grid.y <= int64_t{sms}) {
    constexpr size_t kBytes = StateLayout<kK, kVs, 4>::kBytes;
    DS_RETURN_IF_ERROR(SetSmem(&TcStateKernel<kK, kVs, 4>, kBytes));
    TcStateKernel<kK, kVs, 4><<<grid, kThreads, kBytes, stream>>>(a, ws);
  } else {
    constexpr size_t kBytes = StateLayout<kK, kVs, 2>::kBytes;
    DS_RETURN_IF_ERROR(SetSmem(&TcStateKernel<kK, kVs, 2>, kBytes));
    TcStateKernel<kK, kVs, 2><<<grid, kThreads, kBytes, stream>>>(a, ws);
  }
  return absl::OkStatus();
}

template <int kK>
absl::Status Launch(const GdrArgs& a, cudaStream_t stream) {
  const int64_t hv = a.num_v_heads;
  const int64_t v = a.value_dim;
  // Σ ceil(len / kC) ≤ T / kC + B.
  const int64_t max_chunks = (a.tokens + kC - 1) / kC + a.batch;
  if (max_chunks > 2147483647) {
    return Invalid(kOp, "tokens", a.tokens, "< 2^37");
  }
  if (hv > 65535) {
    return Invalid(kOp, "num_v_heads", hv, "at most 65535");
  }
  if (v / 16 > 65535) {
    return Invalid(kOp, "value_dim", v, "at most 65535 * 16");
  }
  const int64_t units = max_chunks * hv;
  const size_t bytes = sizeof(bf16) * units * (2 * kC * kK + kC * v + kK * v) +
                       sizeof(float) * units * kC +
                       sizeof(int32_t) * (a.batch + 1);
  void* raw = nullptr;
  DS_RETURN_IF_ERROR(CudaStatus(cudaMallocAsync(&raw, bytes, stream),
                                "GatedDeltaRuleChunked workspace"));
  TcWorkspace ws;
  ws.w = static_cast<bf16*>(raw);
  ws.kd = ws.w + units * kC * kK;
  ws.u = ws.kd + units * kC * kK;
  ws.h = ws.u + units * kC * v;
  ws.rows = reinterpret_cast<float*>(ws.h + units * kK * v);
  ws.base = reinterpret_cast<int32_t*>(ws.rows + units * kC);

  absl::Status status = [&]() -> absl::Status {
    DS_RETURN_IF_ERROR(SetSmem(&TcPrepKernel<kK>, PrepLayout<kK>::kBytes));
    int device = 0;
    int sms = 0;
    DS_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), kOp));
    DS_RETURN_IF_ERROR(CudaStatus(
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        kOp));
    LaunchChunkBase(a, ws.base, stream);
    const dim3 chunk_grid(static_cast<unsigned>(max_chunks),
                          static_cast<unsigned>(hv));
    TcPrepKernel<kK>
        <<<chunk_grid, kThreads, PrepLayout<kK>::kBytes, stream>>>(a, ws);
    switch (StateColumns(a.batch * hv, v, sms)) {
      case 64:
        DS_RETURN_IF_ERROR((LaunchState<kK, 64>(a, ws, sms, stream)));
        break;
      case 32:
        DS_RETURN_IF_ERROR((LaunchState<kK, 32>(a, ws, sms, stream)));
        break;
      default:
        DS_RETURN_IF_ERROR((LaunchState<kK, 16>(a, ws, sms, stream)));
        break;
    }
    DS_RETURN_IF_ERROR(LaunchOutput<kK>(a, ws, chunk_grid, stream));
    return CudaStatus(cudaGetLastError(),
                      "GatedDeltaRuleChunked kernel launch");
  }();
  const absl::Status freed =
      CudaStatus(cudaFreeAsync(raw, stream), "GatedDeltaRuleChunked workspace");
  DS_RETURN_IF_ERROR(status);
  return freed;
}

}  // namespace

absl::Status LaunchGdrChunkedTensorCores(const GdrArgs& a,
                                         cudaStream_t stream) {
  switch (a.key_dim) {
    case 32:
      return Launch<32>(a, stream);
    case 64:
      return Launch<64>(a, stream);
    default:
      return Launch<128>(a, stream);
  }
}

}  // namespace gdr_internal
}  // namespace deltaserve
