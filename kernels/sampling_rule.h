// The arithmetic of Kernels::SampleTokens (see kernels.h for the rule in
// words), shared by every implementation so that they choose the same token
// for the same inputs, bit for bit.
//
// Everything that decides a token is integer arithmetic or a correctly
// rounded IEEE float operation on normal numbers (subtraction,
// multiplication, division, fused multiply-add): CpuKernels, the engine's
// host sampler and the CUDA kernel (built with --use_fast_math, so its float
// operations flush subnormals and would contract a·b + c) call the same
// inline functions, which use the explicitly rounded __f*_rn intrinsics on
// the device and never let a subnormal reach a float operation. Weights are
// fixed-point integers, so sums do not depend on the order of addition.
//
// This header includes no CUDA header; under nvcc its functions are
// __host__ __device__. The host-only reference (SampleRow, ArgmaxRow) is in
// sampling_rule.cc. Everything here is stateless and thread-safe.
#ifndef DELTASERVE_KERNELS_SAMPLING_RULE_H_
#define DELTASERVE_KERNELS_SAMPLING_RULE_H_

#include <cstdint>

#if !defined(__CUDA_ARCH__)
#include <cmath>
#include <cstring>
#endif

#if defined(__CUDACC__)
#define DS_SAMPLING_FN __host__ __device__ __forceinline__
#else
#define DS_SAMPLING_FN inline
#endif

namespace deltaserve {

// Largest vocabulary (row length) SampleTokens accepts: with weights of at
// most about 2^38, a row's total weight stays below 2^63.
inline constexpr int64_t kMaxSampleVocab = int64_t{1} << 24;

namespace sampling_rule {

// A token's weight is floor(2^kWeightBits · 2^y), y = (logit − max) ·
// log2(e) / temperature: the most likely token weighs exactly 2^38, a token
// with y < −38 weighs 0.
inline constexpr int kWeightBits = 38;
inline constexpr uint64_t kMaxWeight = uint64_t{1} << kWeightBits;

// Bits of 2^-64 and 2^64: logits smaller than 2^-64 in magnitude count as 0,
// and temperatures are clamped to [2^-64, 2^64].
inline constexpr uint32_t kTinyBits = 0x1f800000u;
inline constexpr uint32_t kHugeBits = 0x5f800000u;
inline constexpr uint32_t kOneBits = 0x3f800000u;
inline constexpr uint32_t kBelowOneBits = 0x3f7fffffu;  // largest float < 1
inline constexpr uint32_t kFltMaxBits = 0x7f7fffffu;
inline constexpr uint32_t kInfBits = 0x7f800000u;
inline constexpr uint32_t kSignBit = 0x80000000u;

DS_SAMPLING_FN uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
#endif
}

DS_SAMPLING_FN float BitsFloat(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
#endif
}

// Correctly rounded float operations that no compiler contracts or
// approximates.
DS_SAMPLING_FN float RnSub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
DS_SAMPLING_FN float RnMul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DS_SAMPLING_FN float RnDiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
DS_SAMPLING_FN float RnFma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
DS_SAMPLING_FN float Floor(float x) {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  return std::floor(x);
#endif
}

DS_SAMPLING_FN bool IsNan(float x) {
  return (FloatBits(x) & ~kSignBit) > kInfBits;
}

// The value a (non-NaN) logit takes part with: +inf counts as the largest
// finite float, magnitudes below 2^-64 (subnormals included) as +0, and −0
// as +0.
DS_SAMPLING_FN float Canonical(float x) {
  const uint32_t b = FloatBits(x);
  const uint32_t a = b & ~kSignBit;
  if (a < kTinyBits) return 0.0f;
  if (b == kInfBits) return BitsFloat(kFltMaxBits);
  return x;
}

// An unsigned key that orders canonical values as floats (−inf lowest).
DS_SAMPLING_FN uint32_t Key(float c) {
  const uint32_t b = FloatBits(c);
  return (b & kSignBit) ? ~b : (b | kSignBit);
}
DS_SAMPLING_FN float KeyValue(uint32_t key) {
  return BitsFloat((key & kSignBit) ? (key & ~kSignBit) : ~key);
}

// The per-row parameters as the rule uses them. Values that CpuKernels
// rejects are mapped as CudaKernels (which cannot check them) treats them:
// a negative or NaN temperature is greedy, a negative top_k is 0, a top_p
// outside (0, 1) (or NaN) is no top-p, a uniform below 0 (or NaN) is 0 and
// one of 1 or more is the largest float below 1.
struct RowParams {
  bool greedy = true;  // temperature ±0 (or invalid)
  float scale = 0.0f;  // log2(e) / clamp(temperature, 2^-64, 2^64)
  int32_t top_k = 0;   // 0: no top-k
  bool use_top_p = false;
  float top_p = 1.0f;
  float uniform = 0.0f;
};

DS_SAMPLING_FN RowParams MakeRowParams(float temperature, int32_t top_k,
                                       float top_p, float uniform) {
  RowParams p;
  uint32_t t = FloatBits(temperature);
  p.greedy = (t & kSignBit) != 0 || t == 0 || t > kInfBits;
  if (t < kTinyBits) t = kTinyBits;
  if (t > kHugeBits) t = kHugeBits;
  p.scale = RnDiv(1.44269504088896340736f, BitsFloat(t));
  p.top_k = top_k > 0 ? top_k : 0;
  const uint32_t tp = FloatBits(top_p);
  p.use_top_p = tp > 0 && tp < kOneBits;  // (0, 1) as bits, sign clear
  p.top_p = p.use_top_p ? top_p : 1.0f;
  uint32_t u = FloatBits(uniform);
  if ((u & kSignBit) != 0 || u > kInfBits) u = 0;
  if (u >= kOneBits && u <= kInfBits) u = kBelowOneBits;
  p.uniform = BitsFloat(u);
  return p;
}

// The weight of a token with canonical value c in a row whose largest
// canonical value is m (finite, c ≤ m), at scale s from MakeRowParams:
// floor(2^38 · 2^y) with y = (c − m) · s, 2^y a fixed polynomial in float
// arithmetic; exactly 2^38 when c = m, 0 when y < −38 or c = −inf, and y
// of magnitude below 2^-64 counts as 0.
DS_SAMPLING_FN uint64_t Weight(float c, float m, float s) {
  if (c == m) return kMaxWeight;
  // c and m are 0 or at least 2^-64 in magnitude, so c − m is normal.
  const float y = RnMul(RnSub(c, m), s);
  if (!(y >= -38.0f)) return 0;
  if (y > -0x1p-64f) return kMaxWeight;
  const float n = Floor(y);     // in [−38, −1]
  const float f = RnSub(y, n);  // in [0, 1], normal or 0
  // 2^f ≈ 1 + f·(a1 + f·(a2 + …)), relative error about 1e-9 (before
  // rounding), evaluated by fused multiply-adds.
  float r = 2.1464602468768135e-05f;
  r = RnFma(r, f, 0.00014360612840391695f);
  r = RnFma(r, f, 0.0013421972980722785f);
  r = RnFma(r, f, 0.009614032693207264f);
  r = RnFma(r, f, 0.05550512671470642f);
  r = RnFma(r, f, 0.2402263879776001f);
  r = RnFma(r, f, 0.6931471824645996f);
  const float p = RnFma(r, f, 1.0f);  // in [1, 2 + ε]
  // floor(p · 2^(38 + n)) from p's bits.
  const uint32_t bits = FloatBits(p);
  const uint64_t mantissa = (bits & 0x7fffffu) | 0x800000u;
  const int shift = static_cast<int>((bits >> 23) & 0xffu) - 150 + kWeightBits +
                    static_cast<int>(n);
  if (shift >= 0) return mantissa << shift;
  return -shift >= 64 ? 0 : mantissa >> -shift;
}

// A float in [0, 1] as m · 2^-e with an integer m < 2^24 (e ≥ 23; 0 for 0).
struct Fraction {
  uint64_t m;
  int e;
};
DS_SAMPLING_FN Fraction FractionOf(float x) {
  const uint32_t b = FloatBits(x) & ~kSignBit;
  const uint32_t exponent = b >> 23;
  if (exponent == 0) return {b & 0x7fffffu, 149};
  return {(b & 0x7fffffu) | 0x800000u, 150 - static_cast<int>(exponent)};
}

// floor(u · total) exactly, for u in [0, 1) and total < 2^63.
DS_SAMPLING_FN uint64_t MulFloor(float u, uint64_t total) {
  const Fraction f = FractionOf(u);
  const unsigned __int128 product = static_cast<unsigned __int128>(f.m) * total;
  if (f.e >= 128) return 0;
  return static_cast<uint64_t>(product >> f.e);
}

// ceil(p · total) exactly, for p in (0, 1] and total < 2^63.
DS_SAMPLING_FN uint64_t MulCeil(float p, uint64_t total) {
  const Fraction f = FractionOf(p);
  const unsigned __int128 product = static_cast<unsigned __int128>(f.m) * total;
  if (f.e >= 128) return product != 0 ? 1 : 0;
  const unsigned __int128 round =
      (static_cast<unsigned __int128>(1) << f.e) - 1;
  return static_cast<uint64_t>((product + round) >> f.e);
}

}  // namespace sampling_rule

#if !defined(__CUDA_ARCH__)
// Host reference of one row (the oracle; see Kernels::SampleTokens).

// The index of the largest of row[0, vocab): the lowest on ties; NaN loses
// to every number, and a row of NaN gives 0. vocab ≥ 1.
int32_t ArgmaxRow(const float* row, int64_t vocab);

// The token Kernels::SampleTokens chooses for one row of `vocab` logits
// (1 ≤ vocab ≤ kMaxSampleVocab). Parameters outside their ranges are mapped
// as MakeRowParams says (CpuKernels rejects them before calling this).
int32_t SampleRow(const float* row, int64_t vocab, float temperature,
                  int32_t top_k, float top_p, float uniform);
#endif

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_SAMPLING_RULE_H_
