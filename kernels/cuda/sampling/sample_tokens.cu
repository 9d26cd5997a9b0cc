#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling/sample_tokens.h"
#include "kernels/sampling_rule.h"

namespace deltaserve {
namespace {

namespace sr = sampling_rule;
using u64 = unsigned long long;  // what atomicAdd and shuffles take

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // radix digits of 8 bits, 4 levels
constexpr int kItems = 4;   // consecutive tokens per thread in the draw
constexpr unsigned kFull = 0xffffffffu;

// An argmax candidate, compared as Argmax does (NaN below every number, the
// lower index on ties) but through integer keys, so that subnormal logits
// order as on the host even though this file is built with flush-to-zero.
struct Best {
  uint32_t key;
  int32_t index;
  int nan;  // 1 for NaN (shuffles take no bool)
};

__device__ __forceinline__ bool Better(const Best& a, const Best& b) {
  if (a.nan != b.nan) return b.nan;
  if (!a.nan && a.key != b.key) return a.key > b.key;
  return a.index < b.index;
}

// The best of a warp's candidates, in every lane.
__device__ __forceinline__ Best WarpBest(Best best) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best o;
    o.key = __shfl_xor_sync(kFull, best.key, offset);
    o.index = __shfl_xor_sync(kFull, best.index, offset);
    o.nan = __shfl_xor_sync(kFull, best.nan, offset);
    if (Better(o, best)) best = o;
  }
  return best;
}

// An order-preserving key of a raw (non-NaN) float: −0 and +0 are equal,
// subnormals keep their order.
__device__ __forceinline__ uint32_t RawKey(float x) {
  uint32_t b = sr::FloatBits(x);
  if ((b & ~sr::kSignBit) == 0) b = 0;
  return sr::Key(sr::BitsFloat(b));
}

__device__ __forceinline__ u64 WarpSum(u64 v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFull, v, offset);
  }
  return v;
}

__device__ __forceinline__ uint32_t WarpMax(uint32_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = max(v, __shfl_xor_sync(kFull, v, offset));
  }
  return v;
}

__device__ __forceinline__ u64 WarpInclusiveScan(u64 v) {
  const int lane = threadIdx.x & 31;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const u64 n = __shfl_up_sync(kFull, v, offset);
    if (lane >= offset) v += n;
  }
  return v;
}

struct Shared {
  uint32_t count[kBins];
  u64 mass[kBins];
  u64 warp_sum[kWarps];
  u64 warp_prefix[kWarps];
  uint32_t warp_max[kWarps];
  Best warp_best[kWarps];
  u64 tile_total;
  u64 need;
  u64 above_weight;
  u64 above_mass;
  u64 result_mass;
  uint32_t prefix;
  int32_t token;
};

// One token as the rule sees it.
struct Element {
  bool candidate;  // in the row and not NaN
  float c;         // canonical value
  uint32_t key;
};

__device__ __forceinline__ Element Load(const float* row, int64_t j,
                                        int64_t vocab) {
  Element e{false, 0.0f, 0};
  if (j < vocab) {
    const float x = row[j];
    if (!sr::IsNan(x)) {
      e.candidate = true;
      e.c = sr::Canonical(x);
      e.key = sr::Key(e.c);
    }
  }
  return e;
}

// Sum over the block, returned to every thread.
__device__ u64 BlockSum(u64 v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) sh.warp_sum[warp] = v;
  __syncthreads();
  const u64 total = WarpSum(sh.warp_sum[lane]);
  __syncthreads();
  return total;
}

// Adds each matching lane's token to bin `bin` of the histogram: one count
// and, with `with_mass`, its weight w (< 2^39). The lanes of a warp that
// share a bin are summed first and one of them adds the sums, so that
// concentrated digits do not serialise on one shared-memory address.
// Called by every lane of the warp.
__device__ __forceinline__ void HistogramAdd(bool match, uint32_t bin, u64 w,
                                             bool with_mass, Shared& sh) {
  const unsigned active = __ballot_sync(kFull, match);
  if (!match) return;
  const unsigned peers = __match_any_sync(active, bin);
  const bool leader = static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1;
  if (with_mass) {
    // 32 weights below 2^39 sum without overflow in two 32-bit halves.
    const unsigned lo =
        __reduce_add_sync(peers, static_cast<unsigned>(w & 0x7ffffu));
    const unsigned hi =
        __reduce_add_sync(peers, static_cast<unsigned>(w >> 19));
    const u64 sum = (static_cast<u64>(hi) << 19) + lo;
    if (leader && sum != 0) atomicAdd(&sh.mass[bin], sum);
  }
  if (leader) atomicAdd(&sh.count[bin], static_cast<uint32_t>(__popc(peers)));
}

// A threshold key and the weight of the tokens at or above it.
struct Selection {
  uint32_t key;
  u64 mass;
};

// Radix search, 8 bits at a time from the top, over the candidates whose
// key is at least floor_key: the largest key v of such a candidate for which
// the candidates with key ≥ v have total count (by_mass false) or weight
// (true) at least `need`. With need_from_top_p, need is ceil(top_p · the
// candidates' total weight) instead. Requires need ≤ that total and > 0.
// With level0_ready the counts of the first level (all candidates, by their
// top 8 bits) are already in sh.count (by_mass false only). Called by every
// thread of the block; returns v to every thread, and with by_mass the
// weight at or above it.
__device__ Selection RadixSelect(const float* row, int64_t vocab, float m,
                                 float s, uint32_t floor_key, bool by_mass,
                                 u64 need, bool need_from_top_p, float top_p,
                                 bool level0_ready, Shared& sh) {
  const int lane = threadIdx.x & 31;
  uint32_t prefix = 0, mask = 0;
  u64 above_weight = 0, above_mass = 0, result_mass = 0;
  for (int level = 0; level < 4; ++level) {
    const int shift = 24 - 8 * level;
    if (level > 0 || !level0_ready) {
      for (int i = threadIdx.x; i < kBins; i += kThreads) {
        sh.count[i] = 0;
        sh.mass[i] = 0;
      }
      __syncthreads();
      for (int64_t base = 0; base < vocab; base += kThreads) {
        const Element e = Load(row, base + threadIdx.x, vocab);
        const bool match =
            e.candidate && e.key >= floor_key && (e.key & mask) == prefix;
        const uint32_t bin = (e.key >> shift) & 0xffu;
        const u64 w = match && by_mass ? sr::Weight(e.c, m, s) : 0;
        HistogramAdd(match, bin, w, by_mass, sh);
      }
      __syncthreads();
    }
    if (threadIdx.x < 32) {
      if (level == 0 && need_from_top_p) {
        u64 total = 0;
        for (int b = lane; b < kBins; b += 32) total += sh.mass[b];
        need = sr::MulCeil(top_p, WarpSum(total));
      }
      auto weight = [&](int b) -> u64 {
        return by_mass ? sh.mass[b] : static_cast<u64>(sh.count[b]);
      };
      // Lane l holds bins 255 − 8l down to 248 − 8l (lane 0 the highest).
      u64 mine = 0;
      for (int k = 0; k < 8; ++k) mine += weight(kBins - 1 - 8 * lane - k);
      const u64 inclusive = WarpInclusiveScan(mine);
      const unsigned reach =
          __ballot_sync(kFull, above_weight + inclusive >= need);
      const int at = reach != 0 ? __ffs(reach) - 1 : 31;
      int chosen = 0;
      if (lane == at) {
        u64 run = above_weight + inclusive - mine;
        for (int k = 0; k < 8; ++k) {
          const int b = kBins - 1 - 8 * at - k;
          chosen = b;
          if (run + weight(b) >= need) break;
          run += weight(b);
        }
      }
      chosen = __shfl_sync(kFull, chosen, at);
      u64 weight_above = 0, mass_above = 0;
      for (int b = chosen + 1 + lane; b < kBins; b += 32) {
        weight_above += weight(b);
        mass_above += sh.mass[b];
      }
      weight_above = WarpSum(weight_above);
      mass_above = WarpSum(mass_above);
      if (lane == 0) {
        sh.need = need;
        sh.above_weight = above_weight + weight_above;
        sh.above_mass = above_mass + mass_above;
        sh.result_mass = above_mass + mass_above + sh.mass[chosen];
        sh.prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
      }
    }
    __syncthreads();
    need = sh.need;
    above_weight = sh.above_weight;
    above_mass = sh.above_mass;
    result_mass = sh.result_mass;
    prefix = sh.prefix;
    mask |= 0xffu << shift;
  }
  return {prefix, result_mass};
}

__global__ void __launch_bounds__(kThreads)
    SampleTokensKernel(const float* __restrict__ logits, int64_t vocab,
                       int64_t stride, const float* __restrict__ temperature,
                       const int32_t* __restrict__ top_k,
                       const float* __restrict__ top_p,
                       const float* __restrict__ uniform,
                       int32_t* __restrict__ out) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * stride;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const sr::RowParams p =
      sr::MakeRowParams(temperature[r], top_k[r], top_p[r], uniform[r]);

  // Pass 1: the argmax (for temperature 0 and degenerate rows), the largest
  // canonical key, the number of candidates and, for top-k, the first level
  // of its radix search (counts need no weights, hence no maximum).
  const bool top_k_level0 = !p.greedy && p.top_k > 0;
  if (top_k_level0) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) sh.count[i] = 0;
    __syncthreads();
  }
  Best best{0, 0x7fffffff, 1};
  uint32_t max_key = 0;
  uint32_t candidates = 0;
  for (int64_t base = 0; base < vocab; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const float x = j < vocab ? row[j] : sr::BitsFloat(0x7fc00000u);  // NaN
    const bool nan = sr::IsNan(x);
    const Best c{nan ? 0u : RawKey(x), static_cast<int32_t>(j), nan ? 1 : 0};
    if (j < vocab && Better(c, best)) best = c;
    const uint32_t key = nan ? 0u : sr::Key(sr::Canonical(x));
    if (!nan) {
      ++candidates;
      max_key = max(max_key, key);
    }
    if (top_k_level0) HistogramAdd(!nan, key >> 24, 0, false, sh);
  }
  best = WarpBest(best);
  max_key = WarpMax(max_key);
  candidates = static_cast<uint32_t>(WarpSum(candidates));
  if (lane == 0) {
    sh.warp_best[warp] = best;
    sh.warp_max[warp] = max_key;
    sh.warp_sum[warp] = candidates;
  }
  __syncthreads();
  best = WarpBest(sh.warp_best[lane]);
  max_key = WarpMax(sh.warp_max[lane]);
  candidates = static_cast<uint32_t>(WarpSum(sh.warp_sum[lane]));
  __syncthreads();
  const int32_t argmax = best.nan ? 0 : best.index;
  // No candidate, or all −inf (whose key is 0x007fffff): the argmax.
  if (p.greedy || candidates == 0 || max_key <= 0x007fffffu) {
    if (threadIdx.x == 0) out[r] = argmax;
    return;
  }
  const float m = sr::KeyValue(max_key);
  const float s = p.scale;

  uint32_t floor_key = 0;
  u64 mass = 0;
  bool have_mass = false;
  if (p.top_k > 0 && static_cast<uint32_t>(p.top_k) < candidates) {
    floor_key = RadixSelect(row, vocab, m, s, 0, /*by_mass=*/false,
                            static_cast<u64>(p.top_k), false, 1.0f,
                            /*level0_ready=*/true, sh)
                    .key;
  }
  if (p.use_top_p) {
    const Selection sel =
        RadixSelect(row, vocab, m, s, floor_key, /*by_mass=*/true, 0, true,
                    p.top_p, /*level0_ready=*/false, sh);
    floor_key = sel.key;
    mass = sel.mass;
    have_mass = true;
  }
  if (!have_mass) {
    u64 local = 0;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      const Element e = Load(row, j, vocab);
      if (e.candidate && e.key >= floor_key) local += sr::Weight(e.c, m, s);
    }
    mass = BlockSum(local, sh);
  }
  const u64 target = sr::MulFloor(p.uniform, mass);

  // The draw: survivors walked by token id, kItems consecutive tokens per
  // thread, a block scan per tile; stops at the tile that holds the target.
  if (threadIdx.x == 0) sh.token = -1;
  u64 running = 0;
  for (int64_t base = 0; base < vocab;
       base += static_cast<int64_t>(kThreads) * kItems) {
    const int64_t j0 = base + static_cast<int64_t>(threadIdx.x) * kItems;
    u64 w[kItems];
    u64 local = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const Element e = Load(row, j0 + i, vocab);
      w[i] = e.candidate && e.key >= floor_key ? sr::Weight(e.c, m, s) : 0;
      local += w[i];
    }
    const u64 inclusive = WarpInclusiveScan(local);
    if (lane == 31) sh.warp_sum[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      const u64 t = sh.warp_sum[lane];
      const u64 ti = WarpInclusiveScan(t);
      sh.warp_prefix[lane] = ti - t;
      if (lane == 31) sh.tile_total = ti;
    }
    __syncthreads();
    const u64 before = running + sh.warp_prefix[warp] + inclusive - local;
    if (local != 0 && before <= target && target < before + local) {
      u64 acc = before;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        acc += w[i];
        if (acc > target) {
          sh.token = static_cast<int32_t>(j0 + i);
          break;
        }
      }
    }
    running += sh.tile_total;
    __syncthreads();
    if (running > target) break;
  }
  if (threadIdx.x == 0) out[r] = sh.token >= 0 ? sh.token : argmax;
}

}  // namespace

absl::Status LaunchSampleTokens(const float* logits, int64_t rows,
                                int64_t vocab, int64_t stride,
                                const float* temperature, const int32_t* top_k,
                                const float* top_p, const float* uniform,
                                int32_t* out, void* stream) {
  if (vocab < 1 || vocab > kMaxSampleVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTokens: vocab = ", vocab, " is outside [1, ",
                     kMaxSampleVocab, "]"));
  }
  if (stride < vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SampleTokens: row stride ", stride, " is smaller than vocab ", vocab));
  }
  if (rows <= 0) return absl::OkStatus();
  if (rows >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTokens: rows = ", rows, " is 2^31 or more"));
  }
  if (logits == nullptr || temperature == nullptr || top_k == nullptr ||
      top_p == nullptr || uniform == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("SampleTokens: null pointer argument");
  }
  SampleTokensKernel<<<static_cast<unsigned>(rows), kThreads, 0,
                       static_cast<cudaStream_t>(stream)>>>(
      logits, vocab, stride, temperature, top_k, top_p, uniform, out);
  return CudaStatus(cudaGetLastError(), "SampleTokens launch");
}

}  // namespace deltaserve
