#include "kernels/cpu/cpu_kernels.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_checks.h"
#include "kernels/memory.h"
#include "kernels/sampling_rule.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace cpu_internal {

absl::StatusOr<int64_t> CheckCuSeqlens(const char* op, const TensorView& cu,
                                       int64_t total) {
  DS_RETURN_IF_ERROR(CheckView(op, "cu_seqlens", cu, DType::kI32, {kAnyDim}));
  if (cu.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": cu_seqlens ", cu.DebugString(), " needs at least one entry"));
  }
  const int64_t b = cu.dim(0) - 1;
  if (I32At(cu, 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cu_seqlens ", cu.DebugString(), " starts at ",
                     I32At(cu, 0), ", expected 0"));
  }
  for (int64_t i = 0; i < b; ++i) {
    if (I32At(cu, i + 1) < I32At(cu, i)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": cu_seqlens ", cu.DebugString(), " decreases at entry ", i + 1,
          " (", I32At(cu, i), " -> ", I32At(cu, i + 1), ")"));
    }
  }
  if (I32At(cu, b) != total) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cu_seqlens ", cu.DebugString(), " ends at ",
                     I32At(cu, b), ", expected the token count ", total));
  }
  return b;
}

absl::Status CheckSlots(const char* op, const TensorView& slots, int64_t b,
                        int64_t pool_size, const char* pool_name) {
  DS_RETURN_IF_ERROR(CheckView(op, "slots", slots, DType::kI32, {b}));
  for (int64_t i = 0; i < b; ++i) {
    const int32_t s = I32At(slots, i);
    if (s < 0 || s >= pool_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": slots[", i, "] = ", s, " is outside [0, ",
                       pool_size, ") of ", pool_name));
    }
  }
  return absl::OkStatus();
}

}  // namespace cpu_internal

namespace {

using cpu_internal::CheckCuSeqlens;
using cpu_internal::CheckSlots;
using cpu_internal::CheckView;
using cpu_internal::F32At;
using cpu_internal::I32At;

constexpr int64_t kAny = kAnyDim;
constexpr int64_t kMaxBlasDim = std::numeric_limits<int>::max();

// Checks that `b` is f32 with the shape of the [R, N] tensor `a`.
absl::Status CheckSameShape(const char* op, const TensorView& a,
                            const char* name_b, const TensorView& b) {
  return CheckView(op, name_b, b, DType::kF32, {a.dim(0), a.dim(1)});
}

// Checks that a 2-D matrix's rows do not overlap and that its sizes fit the
// BLAS integer type; returns its leading dimension.
absl::StatusOr<int> LeadingDim(const char* op, const char* name,
                               const TensorView& t) {
  const int64_t rows = t.dim(0);
  const int64_t cols = t.dim(1);
  int64_t ld = std::max<int64_t>(cols, 1);
  if (rows > 1) {
    if (t.strides[0] < cols) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " ", t.DebugString(), " has row stride ",
                       t.strides[0], ", smaller than its row length"));
    }
    ld = std::max<int64_t>(t.strides[0], 1);
  }
  if (rows > kMaxBlasDim || ld > kMaxBlasDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " ", t.DebugString(), " is too large for BLAS"));
  }
  return static_cast<int>(ld);
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float Silu(float x) { return x * Sigmoid(x); }

// torch.nn.functional.softplus with beta 1 and threshold 20.
inline float Softplus(float x) {
  return x > 20.0f ? x : std::log1p(std::exp(x));
}

// 1 / sqrt(mean(x²) + eps) of one row, accumulated in double.
inline float InvRms(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double mean = n > 0 ? ss / static_cast<double>(n) : 0.0;
  return static_cast<float>(1.0 / std::sqrt(mean + static_cast<double>(eps)));
}

// x /= sqrt(Σx² + 1e-6), the q/k normalisation of the gated delta rule.
inline void L2Normalize(float* x, int64_t n) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss + 1e-6));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// Row-major C[m, n] = alpha · op(A) · op(B) + beta · C on contiguous buffers.
inline void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

// Checks the three [R, N] operands of an element-wise op.
absl::Status CheckElementwise(const char* op, const char* name_a,
                              const TensorView& a, const char* name_b,
                              const TensorView& b, const TensorView& out) {
  DS_RETURN_IF_ERROR(CheckView(op, name_a, a, DType::kF32, {kAny, kAny}));
  DS_RETURN_IF_ERROR(CheckSameShape(op, a, name_b, b));
  return CheckSameShape(op, a, "out", out);
}

// Applies `f(a, b)` element-wise into out; safe when out aliases a or b.
template <typename F>
void Elementwise(const TensorView& a, const TensorView& b,
                 const TensorView& out, F f) {
  const int64_t rows = a.dim(0);
  const int64_t cols = a.dim(1);
  for (int64_t r = 0; r < rows; ++r) {
    const float* pa = F32At(a, r);
    const float* pb = F32At(b, r);
    float* po = F32At(out, r);
    for (int64_t c = 0; c < cols; ++c) po[c] = f(pa[c], pb[c]);
  }
}

// Convolves `len` rows of x starting at `row0` for one sequence whose conv
// state sits in `slot`. wt is the weight transposed to [W][C]. Reads all of
// its input rows before writing any output row, so out may alias x.
void ConvSequence(const TensorView& x, int64_t row0, int64_t len,
                  const std::vector<float>& wt, int64_t width,
                  const TensorView& conv_state, int32_t slot, bool silu,
                  const TensorView& out, std::vector<float>* buf,
                  std::vector<float>* acc) {
  const int64_t channels = x.dim(1);
  const int64_t hist = width - 1;
  // buf rows: hist rows of state (oldest first), then the len input rows.
  buf->resize(static_cast<size_t>((hist + len) * channels));
  float* b = buf->data();
  for (int64_t c = 0; c < channels; ++c) {
    const float* s = F32At(conv_state, slot, c);
    for (int64_t i = 0; i < hist; ++i) b[i * channels + c] = s[i];
  }
  for (int64_t t = 0; t < len; ++t) {
    std::memcpy(b + (hist + t) * channels, F32At(x, row0 + t),
                static_cast<size_t>(channels) * sizeof(float));
  }
  acc->resize(static_cast<size_t>(channels));
  float* a = acc->data();
  for (int64_t t = 0; t < len; ++t) {
    std::fill(a, a + channels, 0.0f);
    for (int64_t j = 0; j < width; ++j) {
      const float* wj = wt.data() + j * channels;
      const float* in = b + (t + j) * channels;
      for (int64_t c = 0; c < channels; ++c) a[c] += wj[c] * in[c];
    }
    float* o = F32At(out, row0 + t);
    if (silu) {
      for (int64_t c = 0; c < channels; ++c) o[c] = Silu(a[c]);
    } else {
      std::memcpy(o, a, static_cast<size_t>(channels) * sizeof(float));
    }
  }
  // The last hist rows of buf are the new state.
  for (int64_t c = 0; c < channels; ++c) {
    float* s = F32At(conv_state, slot, c);
    for (int64_t i = 0; i < hist; ++i) s[i] = b[(len + i) * channels + c];
  }
}

// Checks the weight and conv_state of a causal conv over x[?, C]; returns W.
absl::StatusOr<int64_t> CheckConvWeights(const char* op, const TensorView& x,
                                         const TensorView& weight,
                                         const TensorView& conv_state) {
  const int64_t channels = x.dim(1);
  DS_RETURN_IF_ERROR(
      CheckView(op, "weight", weight, DType::kF32, {channels, kAny}));
  const int64_t width = weight.dim(1);
  if (width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": weight ", weight.DebugString(), " has no taps"));
  }
  DS_RETURN_IF_ERROR(CheckView(op, "conv_state", conv_state, DType::kF32,
                               {kAny, channels, width - 1}));
  return width;
}

// Weight [C, W] transposed to [W][C].
std::vector<float> TransposeConvWeight(const TensorView& weight) {
  const int64_t channels = weight.dim(0);
  const int64_t width = weight.dim(1);
  std::vector<float> wt(static_cast<size_t>(channels * width));
  for (int64_t c = 0; c < channels; ++c) {
    const float* w = F32At(weight, c);
    for (int64_t j = 0; j < width; ++j) wt[j * channels + c] = w[j];
  }
  return wt;
}

// Sizes of a gated-delta-rule call.
struct GdrDims {
  int64_t tokens = 0;
  int64_t batch = 0;
  int64_t hk = 0;
  int64_t hv = 0;
  int64_t dk = 0;
  int64_t dv = 0;
  bool has_g = false;
};

absl::StatusOr<GdrDims> CheckGdr(const char* op, const TensorView& q,
                                 const TensorView& k, const TensorView& v,
                                 const TensorView& g, const TensorView& beta,
                                 const TensorView& cu_seqlens,
                                 const TensorView& state,
                                 const TensorView& slots,
                                 const TensorView& out) {
  GdrDims d;
  DS_RETURN_IF_ERROR(CheckView(op, "q", q, DType::kF32, {kAny, kAny, kAny}));
  d.tokens = q.dim(0);
  d.hk = q.dim(1);
  d.dk = q.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(op, "k", k, DType::kF32, {d.tokens, d.hk, d.dk}));
  DS_RETURN_IF_ERROR(
      CheckView(op, "v", v, DType::kF32, {d.tokens, kAny, kAny}));
  d.hv = v.dim(1);
  d.dv = v.dim(2);
  if (d.hk < 1 || d.hv % d.hk != 0 || d.hv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the value heads of v ", v.DebugString(),
                     " are not a positive multiple of the key heads of q ",
                     q.DebugString()));
  }
  if (d.dk < 1 || d.dv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": empty head dimension in q ", q.DebugString(),
                     " or v ", v.DebugString()));
  }
  d.has_g = !g.empty();
  if (d.has_g) {
    DS_RETURN_IF_ERROR(CheckView(op, "g", g, DType::kF32, {d.tokens, d.hv}));
  }
  DS_RETURN_IF_ERROR(
      CheckView(op, "beta", beta, DType::kF32, {d.tokens, d.hv}));
  DS_ASSIGN_OR_RETURN(d.batch, CheckCuSeqlens(op, cu_seqlens, d.tokens));
  DS_RETURN_IF_ERROR(
      CheckView(op, "state", state, DType::kF32, {kAny, d.hv, d.dk, d.dv}));
  DS_RETURN_IF_ERROR(CheckSlots(op, slots, d.batch, state.dim(0), "state"));
  DS_RETURN_IF_ERROR(
      CheckView(op, "out", out, DType::kF32, {d.tokens, d.hv, d.dv}));
  return d;
}

// Copies state[slot, h] ([K, V], inner stride 1) to/from a contiguous buffer.
void LoadState(const TensorView& state, int32_t slot, int64_t h, int64_t dk,
               int64_t dv, float* s) {
  for (int64_t i = 0; i < dk; ++i) {
    std::memcpy(s + i * dv, F32At(state, slot, h, i),
                static_cast<size_t>(dv) * sizeof(float));
  }
}
void StoreState(const float* s, int64_t dk, int64_t dv, const TensorView& state,
                int32_t slot, int64_t h) {
  for (int64_t i = 0; i < dk; ++i) {
    std::memcpy(F32At(state, slot, h, i), s + i * dv,
                static_cast<size_t>(dv) * sizeof(float));
  }
}

// Checks the paged KV pools and page table shared by KvAppend and
// PagedAttention; pools are [P, page_size, Hkv, D].
absl::Status CheckPages(const char* op, const TensorView& k_pages,
                        const TensorView& v_pages, const TensorView& page_table,
                        int64_t hkv, int64_t dim, int64_t batch) {
  DS_RETURN_IF_ERROR(
      CheckView(op, "k_pages", k_pages, DType::kF32, {kAny, kAny, hkv, dim}));
  DS_RETURN_IF_ERROR(CheckView(
      op, "v_pages", v_pages, DType::kF32,
      {k_pages.dim(0), k_pages.dim(1), k_pages.dim(2), k_pages.dim(3)}));
  if (k_pages.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": k_pages ", k_pages.DebugString(), " has empty pages"));
  }
  return CheckView(op, "page_table", page_table, DType::kI32, {batch, kAny});
}

// Checks the page-table entries of sequence b that cover positions
// [first, last] (inclusive; last < max_pages · page_size).
absl::Status CheckPageEntries(const char* op, const TensorView& page_table,
                              int64_t b, int64_t first, int64_t last,
                              int64_t page_size, int64_t num_pages) {
  for (int64_t lp = first / page_size; lp <= last / page_size; ++lp) {
    const int32_t page = I32At(page_table, b, lp);
    if (page < 0 || page >= num_pages) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": page_table[", b, ", ", lp, "] = ", page, " is outside [0, ",
          num_pages, ") (page_table ", page_table.DebugString(), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuKernels>> CpuKernels::Create(
    const Options& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CpuKernels: num_threads is ", options.num_threads, ", expected >= 0"));
  }
  if (options.num_threads > 0) openblas_set_num_threads(options.num_threads);
  return std::unique_ptr<CpuKernels>(new CpuKernels());
}

absl::Status CpuKernels::Gemm(const TensorView& x, const TensorView& w,
                              const TensorView& out, bool accumulate,
                              Stream /*stream*/) {
  constexpr char kOp[] = "Gemm";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny}));
  const int64_t m = x.dim(0);
  const int64_t kd = x.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "w", w, DType::kF32, {kAny, kd}));
  const int64_t n = w.dim(0);
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kF32, {m, n}));
  DS_ASSIGN_OR_RETURN(const int ldx, LeadingDim(kOp, "x", x));
  DS_ASSIGN_OR_RETURN(const int ldw, LeadingDim(kOp, "w", w));
  DS_ASSIGN_OR_RETURN(const int ldo, LeadingDim(kOp, "out", out));
  if (n > kMaxBlasDim || kd > kMaxBlasDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": w ", w.DebugString(), " is too large for BLAS"));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  if (kd == 0) {
    if (!accumulate) {
      for (int64_t r = 0; r < m; ++r) std::fill_n(F32At(out, r), n, 0.0f);
    }
    return absl::OkStatus();
  }
  Sgemm(false, true, m, n, kd, 1.0f, x.f32(), ldx, w.f32(), ldw,
        accumulate ? 1.0f : 0.0f, out.f32(), ldo);
  return absl::OkStatus();
}

absl::Status CpuKernels::Embedding(const TensorView& ids,
                                   const TensorView& table,
                                   const TensorView& out, Stream /*stream*/) {
  constexpr char kOp[] = "Embedding";
  DS_RETURN_IF_ERROR(CheckView(kOp, "ids", ids, DType::kI32, {kAny}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "table", table, DType::kF32, {kAny, kAny}));
  const int64_t tokens = ids.dim(0);
  const int64_t vocab = table.dim(0);
  const int64_t dim = table.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kF32, {tokens, dim}));
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t id = I32At(ids, t);
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": ids[", t, "] = ", id, " is outside [0, ", vocab,
                       ") of table ", table.DebugString()));
    }
  }
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(F32At(out, t), F32At(table, I32At(ids, t)),
                static_cast<size_t>(dim) * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::RmsNorm(const TensorView& x, const TensorView& weight,
                                 float eps, bool zero_centered,
                                 const TensorView& out, Stream /*stream*/) {
  constexpr char kOp[] = "RmsNorm";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny}));
  const int64_t rows = x.dim(0);
  const int64_t dim = x.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "weight", weight, DType::kF32, {dim}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kF32, {rows, dim}));
  std::vector<float> w(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) {
    const float wi = weight.f32()[i * weight.strides[0]];
    w[i] = zero_centered ? 1.0f + wi : wi;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* px = F32At(x, r);
    float* po = F32At(out, r);
    const float inv = InvRms(px, dim, eps);
    for (int64_t i = 0; i < dim; ++i) po[i] = px[i] * inv * w[i];
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::RmsNormGated(const TensorView& x, const TensorView& z,
                                      const TensorView& weight, float eps,
                                      const TensorView& out,
                                      Stream /*stream*/) {
  constexpr char kOp[] = "RmsNormGated";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny}));
  const int64_t rows = x.dim(0);
  const int64_t dim = x.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "z", z, DType::kF32, {rows, dim}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "weight", weight, DType::kF32, {dim}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kF32, {rows, dim}));
  for (int64_t r = 0; r < rows; ++r) {
    const float* px = F32At(x, r);
    const float* pz = F32At(z, r);
    float* po = F32At(out, r);
    const float inv = InvRms(px, dim, eps);
    for (int64_t i = 0; i < dim; ++i) {
      po[i] = px[i] * inv * weight.f32()[i * weight.strides[0]] * Silu(pz[i]);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::Rope(const TensorView& x, const TensorView& positions,
                              int rot_dim, float theta, Stream /*stream*/) {
  constexpr char kOp[] = "Rope";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny, kAny}));
  const int64_t tokens = x.dim(0);
  const int64_t heads = x.dim(1);
  const int64_t head_dim = x.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "positions", positions, DType::kI32, {tokens}));
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": rot_dim ", rot_dim, " must be even and in (0, head_dim] for x ",
        x.DebugString()));
  }
  const int half = rot_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta),
                           -2.0 * i / static_cast<double>(rot_dim));
  }
  std::vector<float> cosv(half);
  std::vector<float> sinv(half);
  for (int64_t t = 0; t < tokens; ++t) {
    const double pos = I32At(positions, t);
    for (int i = 0; i < half; ++i) {
      const double ang = pos * inv_freq[i];
      cosv[i] = static_cast<float>(std::cos(ang));
      sinv[i] = static_cast<float>(std::sin(ang));
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* p = F32At(x, t, h);
      for (int i = 0; i < half; ++i) {
        const float x1 = p[i];
        const float x2 = p[i + half];
        p[i] = x1 * cosv[i] - x2 * sinv[i];
        p[i + half] = x2 * cosv[i] + x1 * sinv[i];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::Add(const TensorView& a, const TensorView& b,
                             const TensorView& out, Stream /*stream*/) {
  DS_RETURN_IF_ERROR(CheckElementwise("Add", "a", a, "b", b, out));
  Elementwise(a, b, out, [](float x, float y) { return x + y; });
  return absl::OkStatus();
}

absl::Status CpuKernels::SwiGlu(const TensorView& gate, const TensorView& up,
                                const TensorView& out, Stream /*stream*/) {
  DS_RETURN_IF_ERROR(CheckElementwise("SwiGlu", "gate", gate, "up", up, out));
  Elementwise(gate, up, out, [](float g, float u) { return Silu(g) * u; });
  return absl::OkStatus();
}

absl::Status CpuKernels::SigmoidGate(const TensorView& x,
                                     const TensorView& gate,
                                     const TensorView& out, Stream /*stream*/) {
  DS_RETURN_IF_ERROR(
      CheckElementwise("SigmoidGate", "x", x, "gate", gate, out));
  Elementwise(x, gate, out, [](float v, float g) { return v * Sigmoid(g); });
  return absl::OkStatus();
}

absl::Status CpuKernels::CausalConv1d(
    const TensorView& x, const TensorView& weight, const TensorView& cu_seqlens,
    const TensorView& conv_state, const TensorView& slots, bool silu,
    const TensorView& out, Stream /*stream*/) {
  constexpr char kOp[] = "CausalConv1d";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny}));
  const int64_t tokens = x.dim(0);
  const int64_t channels = x.dim(1);
  DS_ASSIGN_OR_RETURN(const int64_t width,
                      CheckConvWeights(kOp, x, weight, conv_state));
  DS_ASSIGN_OR_RETURN(const int64_t batch,
                      CheckCuSeqlens(kOp, cu_seqlens, tokens));
  DS_RETURN_IF_ERROR(
      CheckSlots(kOp, slots, batch, conv_state.dim(0), "conv_state"));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "out", out, DType::kF32, {tokens, channels}));
  const std::vector<float> wt = TransposeConvWeight(weight);
  std::vector<float> buf;
  std::vector<float> acc;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t len = I32At(cu_seqlens, b + 1) - start;
    if (len == 0) continue;
    ConvSequence(x, start, len, wt, width, conv_state, I32At(slots, b), silu,
                 out, &buf, &acc);
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::CausalConv1dUpdate(const TensorView& x,
                                            const TensorView& weight,
                                            const TensorView& conv_state,
                                            const TensorView& slots, bool silu,
                                            const TensorView& out,
                                            Stream /*stream*/) {
  constexpr char kOp[] = "CausalConv1dUpdate";
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, DType::kF32, {kAny, kAny}));
  const int64_t batch = x.dim(0);
  const int64_t channels = x.dim(1);
  DS_ASSIGN_OR_RETURN(const int64_t width,
                      CheckConvWeights(kOp, x, weight, conv_state));
  DS_RETURN_IF_ERROR(
      CheckSlots(kOp, slots, batch, conv_state.dim(0), "conv_state"));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "out", out, DType::kF32, {batch, channels}));
  const std::vector<float> wt = TransposeConvWeight(weight);
  std::vector<float> buf;
  std::vector<float> acc;
  for (int64_t b = 0; b < batch; ++b) {
    ConvSequence(x, b, 1, wt, width, conv_state, I32At(slots, b), silu, out,
                 &buf, &acc);
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::GdnGates(const TensorView& a, const TensorView& b,
                                  const TensorView& a_log,
                                  const TensorView& dt_bias,
                                  const TensorView& g, const TensorView& beta,
                                  Stream /*stream*/) {
  constexpr char kOp[] = "GdnGates";
  DS_RETURN_IF_ERROR(CheckView(kOp, "a", a, DType::kF32, {kAny, kAny}));
  const int64_t tokens = a.dim(0);
  const int64_t heads = a.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "b", b, DType::kF32, {tokens, heads}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "a_log", a_log, DType::kF32, {heads}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "dt_bias", dt_bias, DType::kF32, {heads}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "g", g, DType::kF32, {tokens, heads}));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "beta", beta, DType::kF32, {tokens, heads}));
  std::vector<float> neg_a(static_cast<size_t>(heads));
  std::vector<float> bias(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) {
    neg_a[h] = -std::exp(a_log.f32()[h * a_log.strides[0]]);
    bias[h] = dt_bias.f32()[h * dt_bias.strides[0]];
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const float* pa = F32At(a, t);
    const float* pb = F32At(b, t);
    float* pg = F32At(g, t);
    float* pbeta = F32At(beta, t);
    for (int64_t h = 0; h < heads; ++h) {
      const float gv = neg_a[h] * Softplus(pa[h] + bias[h]);
      const float bv = Sigmoid(pb[h]);
      pg[h] = gv;
      pbeta[h] = bv;
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::GatedDeltaRuleRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const GdrDims d,
                      CheckGdr("GatedDeltaRuleRecurrent", q, k, v, g, beta,
                               cu_seqlens, state, slots, out));
  const int64_t dk = d.dk;
  const int64_t dv = d.dv;
  const int64_t group = d.hv / d.hk;
  std::vector<float> s(static_cast<size_t>(dk * dv));
  std::vector<float> qt(static_cast<size_t>(dk));
  std::vector<float> kt(static_cast<size_t>(dk));
  std::vector<float> delta(static_cast<size_t>(dv));
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    if (start == end) continue;
    const int32_t slot = I32At(slots, b);
    for (int64_t h = 0; h < d.hv; ++h) {
      const int64_t kh = h / group;
      LoadState(state, slot, h, dk, dv, s.data());
      for (int64_t t = start; t < end; ++t) {
        std::memcpy(qt.data(), F32At(q, t, kh),
                    static_cast<size_t>(dk) * sizeof(float));
        std::memcpy(kt.data(), F32At(k, t, kh),
                    static_cast<size_t>(dk) * sizeof(float));
        if (l2norm_qk) {
          L2Normalize(qt.data(), dk);
          L2Normalize(kt.data(), dk);
        }
        for (int64_t i = 0; i < dk; ++i) qt[i] *= scale;
        if (d.has_g) {
          const float decay = std::exp(F32At(g, t)[h]);
          for (float& e : s) e *= decay;
        }
        // delta = beta · (v − Sᵀk)
        const float* vt = F32At(v, t, h);
        std::copy(vt, vt + dv, delta.begin());
        for (int64_t i = 0; i < dk; ++i) {
          const float ki = kt[i];
          const float* row = s.data() + i * dv;
          for (int64_t j = 0; j < dv; ++j) delta[j] -= row[j] * ki;
        }
        const float bt = F32At(beta, t)[h];
        for (int64_t j = 0; j < dv; ++j) delta[j] *= bt;
        // S += k deltaᵀ; o = Sᵀq
        float* o = F32At(out, t, h);
        std::fill_n(o, dv, 0.0f);
        for (int64_t i = 0; i < dk; ++i) {
          const float ki = kt[i];
          const float qi = qt[i];
          float* row = s.data() + i * dv;
          for (int64_t j = 0; j < dv; ++j) {
            row[j] += ki * delta[j];
            o[j] += row[j] * qi;
          }
        }
      }
      StoreState(s.data(), dk, dv, state, slot, h);
    }
  }
  return absl::OkStatus();
}

// Chunked form. Within a chunk of n tokens starting from state S0, with
// cumulative log decay G_i = Σ_{j≤i} g_j and γ_i = exp(G_i), the recurrence
// unrolls to S_i = γ_i S0 + Σ_{j≤i} exp(G_i − G_j) k_j δ_jᵀ where the
// per-token updates δ_i solve the unit lower-triangular system
//   δ_i + Σ_{j<i} A_ij δ_j = β_i v_i − β_i γ_i S0ᵀ k_i,
//   A_ij = β_i (k_i·k_j) exp(G_i − G_j).
// With T = (I + A)⁻¹, U = T (β ⊙ V) and W = T (β ⊙ γ ⊙ K), Δ = U − W S0;
// then O = (γ ⊙ Q) S0 + mask_{j≤i}(Q Kᵀ ⊙ exp(G_i − G_j)) Δ and the chunk's
// final state is γ_last S0 + (K ⊙ exp(G_last − G))ᵀ Δ. Decay factors are only
// formed as exp of non-positive differences (j ≤ i), so strong decay cannot
// overflow.
absl::Status CpuKernels::GatedDeltaRuleChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const GdrDims d,
                      CheckGdr("GatedDeltaRuleChunked", q, k, v, g, beta,
                               cu_seqlens, state, slots, out));
  const int64_t dk = d.dk;
  const int64_t dv = d.dv;
  const int64_t group = d.hv / d.hk;
  constexpr int64_t kC = kGdrChunkSize;
  std::vector<float> s(static_cast<size_t>(dk * dv));
  std::vector<float> qc(static_cast<size_t>(kC * dk));  // scaled q
  std::vector<float> qg(static_cast<size_t>(kC * dk));  // γ ⊙ q
  std::vector<float> kc(static_cast<size_t>(kC * dk));  // k
  std::vector<float> wk(static_cast<size_t>(kC * dk));  // β γ k
  std::vector<float> wm(static_cast<size_t>(kC * dk));  // W
  std::vector<float> kd(static_cast<size_t>(kC * dk));  // exp(G_last − G) k
  std::vector<float> bv(static_cast<size_t>(kC * dv));  // β v
  std::vector<float> u(static_cast<size_t>(kC * dv));   // U, then Δ
  std::vector<float> oc(static_cast<size_t>(kC * dv));  // chunk output
  std::vector<float> kk(static_cast<size_t>(kC * kC));  // K Kᵀ, then A
  std::vector<float> qk(static_cast<size_t>(kC * kC));  // masked decayed Q Kᵀ
  std::vector<float> tm(static_cast<size_t>(kC * kC));  // (I + A)⁻¹
  std::vector<double> gcum(static_cast<size_t>(kC));
  std::vector<float> bc(static_cast<size_t>(kC));
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    if (start == end) continue;
    const int32_t slot = I32At(slots, b);
    for (int64_t h = 0; h < d.hv; ++h) {
      const int64_t kh = h / group;
      LoadState(state, slot, h, dk, dv, s.data());
      for (int64_t c0 = start; c0 < end; c0 += kC) {
        const int64_t n = std::min(kC, end - c0);
        // Gather the chunk.
        double gsum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = c0 + i;
          float* qi = qc.data() + i * dk;
          float* ki = kc.data() + i * dk;
          std::memcpy(qi, F32At(q, t, kh),
                      static_cast<size_t>(dk) * sizeof(float));
          std::memcpy(ki, F32At(k, t, kh),
                      static_cast<size_t>(dk) * sizeof(float));
          if (l2norm_qk) {
            L2Normalize(qi, dk);
            L2Normalize(ki, dk);
          }
          for (int64_t j = 0; j < dk; ++j) qi[j] *= scale;
          if (d.has_g) gsum += F32At(g, t)[h];
          gcum[i] = gsum;
          bc[i] = F32At(beta, t)[h];
          const float* vi = F32At(v, t, h);
          for (int64_t j = 0; j < dv; ++j) bv[i * dv + j] = bc[i] * vi[j];
        }
        const double glast = gcum[n - 1];
        for (int64_t i = 0; i < n; ++i) {
          const float gamma = static_cast<float>(std::exp(gcum[i]));
          const float to_end = static_cast<float>(std::exp(glast - gcum[i]));
          const float* ki = kc.data() + i * dk;
          const float* qi = qc.data() + i * dk;
          for (int64_t j = 0; j < dk; ++j) {
            qg[i * dk + j] = gamma * qi[j];
            wk[i * dk + j] = bc[i] * gamma * ki[j];
            kd[i * dk + j] = to_end * ki[j];
          }
        }
        // K Kᵀ and Q Kᵀ.
        Sgemm(false, true, n, n, dk, 1.0f, kc.data(), dk, kc.data(), dk, 0.0f,
              kk.data(), kC);
        Sgemm(false, true, n, n, dk, 1.0f, qc.data(), dk, kc.data(), dk, 0.0f,
              qk.data(), kC);
        // A (strictly lower, in kk) and the decayed causal mask of Q Kᵀ.
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            if (j <= i) {
              const float decay =
                  static_cast<float>(std::exp(gcum[i] - gcum[j]));
              qk[i * kC + j] *= decay;
              kk[i * kC + j] = j < i ? bc[i] * kk[i * kC + j] * decay : 0.0f;
            } else {
              qk[i * kC + j] = 0.0f;
              kk[i * kC + j] = 0.0f;
            }
          }
        }
        // T = (I + A)⁻¹ by forward substitution: row i of T is
        // e_i − Σ_{m<i} A_im T_m.
        for (int64_t i = 0; i < n; ++i) {
          float* ti = tm.data() + i * kC;
          std::fill_n(ti, n, 0.0f);
          for (int64_t m = 0; m < i; ++m) {
            const float aim = kk[i * kC + m];
            if (aim == 0.0f) continue;
            const float* tmr = tm.data() + m * kC;
            for (int64_t j = 0; j <= m; ++j) ti[j] -= aim * tmr[j];
          }
          ti[i] = 1.0f;
        }
        // U = T (β ⊙ V), W = T (β ⊙ γ ⊙ K), Δ = U − W S.
        Sgemm(false, false, n, dv, n, 1.0f, tm.data(), kC, bv.data(), dv, 0.0f,
              u.data(), dv);
        Sgemm(false, false, n, dk, n, 1.0f, tm.data(), kC, wk.data(), dk, 0.0f,
              wm.data(), dk);
        Sgemm(false, false, n, dv, dk, -1.0f, wm.data(), dk, s.data(), dv, 1.0f,
              u.data(), dv);
        // O = (γ ⊙ Q) S + mask(Q Kᵀ ⊙ decay) Δ.
        Sgemm(false, false, n, dv, dk, 1.0f, qg.data(), dk, s.data(), dv, 0.0f,
              oc.data(), dv);
        Sgemm(false, false, n, dv, n, 1.0f, qk.data(), kC, u.data(), dv, 1.0f,
              oc.data(), dv);
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(F32At(out, c0 + i, h), oc.data() + i * dv,
                      static_cast<size_t>(dv) * sizeof(float));
        }
        // S = γ_last S + (exp(G_last − G) ⊙ K)ᵀ Δ.
        Sgemm(true, false, dk, dv, n, 1.0f, kd.data(), dk, u.data(), dv,
              static_cast<float>(std::exp(glast)), s.data(), dv);
      }
      StoreState(s.data(), dk, dv, state, slot, h);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::KvAppend(const TensorView& k, const TensorView& v,
                                  const TensorView& k_pages,
                                  const TensorView& v_pages,
                                  const TensorView& page_table,
                                  const TensorView& cu_seqlens,
                                  const TensorView& start_pos,
                                  Stream /*stream*/) {
  constexpr char kOp[] = "KvAppend";
  DS_RETURN_IF_ERROR(CheckView(kOp, "k", k, DType::kF32, {kAny, kAny, kAny}));
  const int64_t tokens = k.dim(0);
  const int64_t hkv = k.dim(1);
  const int64_t dim = k.dim(2);
  DS_RETURN_IF_ERROR(CheckView(kOp, "v", v, DType::kF32, {tokens, hkv, dim}));
  DS_ASSIGN_OR_RETURN(const int64_t batch,
                      CheckCuSeqlens(kOp, cu_seqlens, tokens));
  DS_RETURN_IF_ERROR(
      CheckPages(kOp, k_pages, v_pages, page_table, hkv, dim, batch));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "start_pos", start_pos, DType::kI32, {batch}));
  const int64_t num_pages = k_pages.dim(0);
  const int64_t page_size = k_pages.dim(1);
  const int64_t capacity = page_table.dim(1) * page_size;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = I32At(cu_seqlens, b + 1) - I32At(cu_seqlens, b);
    const int64_t pos0 = I32At(start_pos, b);
    if (pos0 < 0 || pos0 + n > capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": sequence ", b, " writes positions [", pos0, ", ", pos0 + n,
          ") outside the ", capacity, " that page_table ",
          page_table.DebugString(), " maps with page size ", page_size));
    }
    if (n == 0) continue;
    DS_RETURN_IF_ERROR(CheckPageEntries(kOp, page_table, b, pos0, pos0 + n - 1,
                                        page_size, num_pages));
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    const int64_t pos0 = I32At(start_pos, b);
    for (int64_t t = start; t < end; ++t) {
      const int64_t pos = pos0 + (t - start);
      const int32_t page = I32At(page_table, b, pos / page_size);
      const int64_t off = pos % page_size;
      for (int64_t h = 0; h < hkv; ++h) {
        std::memcpy(F32At(k_pages, page, off, h), F32At(k, t, h),
                    static_cast<size_t>(dim) * sizeof(float));
        std::memcpy(F32At(v_pages, page, off, h), F32At(v, t, h),
                    static_cast<size_t>(dim) * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::PagedAttention(
    const TensorView& q, const TensorView& k_pages, const TensorView& v_pages,
    const TensorView& page_table, const TensorView& cu_seqlens,
    const TensorView& context_lens, int window, float scale,
    const TensorView& out, Stream /*stream*/) {
  constexpr char kOp[] = "PagedAttention";
  DS_RETURN_IF_ERROR(CheckView(kOp, "q", q, DType::kF32, {kAny, kAny, kAny}));
  const int64_t tokens = q.dim(0);
  const int64_t hq = q.dim(1);
  const int64_t dim = q.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "k_pages", k_pages, DType::kF32, {kAny, kAny, kAny, dim}));
  const int64_t hkv = k_pages.dim(2);
  if (hkv < 1 || hq % hkv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the heads of q ", q.DebugString(),
                     " are not a multiple of the KV heads of k_pages ",
                     k_pages.DebugString()));
  }
  if (window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": window is ", window, ", expected >= 0"));
  }
  DS_ASSIGN_OR_RETURN(const int64_t batch,
                      CheckCuSeqlens(kOp, cu_seqlens, tokens));
  DS_RETURN_IF_ERROR(
      CheckPages(kOp, k_pages, v_pages, page_table, hkv, dim, batch));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "context_lens", context_lens, DType::kI32, {batch}));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "out", out, DType::kF32, {tokens, hq, dim}));
  const int64_t num_pages = k_pages.dim(0);
  const int64_t page_size = k_pages.dim(1);
  const int64_t capacity = page_table.dim(1) * page_size;
  // First position any query of sequence b can see.
  auto first_visible = [window](int64_t ctx, int64_t n) -> int64_t {
    const int64_t first_query = ctx - n;
    return window > 0 ? std::max<int64_t>(0, first_query - window + 1) : 0;
  };
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = I32At(cu_seqlens, b + 1) - I32At(cu_seqlens, b);
    const int64_t ctx = I32At(context_lens, b);
    if (ctx < n || ctx > capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": context_lens[", b, "] = ", ctx, " must be in [", n, ", ",
          capacity, "] for ", n, " queries and page_table ",
          page_table.DebugString(), " with page size ", page_size));
    }
    if (n == 0) continue;
    DS_RETURN_IF_ERROR(CheckPageEntries(kOp, page_table, b,
                                        first_visible(ctx, n), ctx - 1,
                                        page_size, num_pages));
  }
  // Flash-style: per sequence and KV head, the queries of its query heads
  // are scored against blocks of gathered keys with sgemm, keeping a running
  // max, softmax denominator and output per query row. A key block only
  // touches the query rows that can see some of it.
  constexpr int64_t kKeyBlock = 256;
  constexpr int64_t kQueryBlock = 256;
  const int64_t group = hq / hkv;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> qbuf;
  std::vector<float> row_max;
  std::vector<float> row_sum;
  std::vector<float> acc;
  std::vector<float> scores(static_cast<size_t>(kQueryBlock * kKeyBlock));
  std::vector<float> kblk(static_cast<size_t>(kKeyBlock * dim));
  std::vector<float> vblk(static_cast<size_t>(kKeyBlock * dim));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t n = I32At(cu_seqlens, b + 1) - start;
    if (n == 0) continue;
    const int64_t ctx = I32At(context_lens, b);
    const int64_t q0 = ctx - n;  // position of the first query
    const int64_t lo = first_visible(ctx, n);
    const size_t rows_all = static_cast<size_t>(group * n);
    qbuf.resize(rows_all * dim);
    acc.resize(rows_all * dim);
    for (int64_t kvh = 0; kvh < hkv; ++kvh) {
      // Row (g, i) holds query i of head kvh · group + g, pre-scaled.
      for (int64_t g = 0; g < group; ++g) {
        for (int64_t i = 0; i < n; ++i) {
          const float* qi = F32At(q, start + i, kvh * group + g);
          float* dst = qbuf.data() + (g * n + i) * dim;
          for (int64_t j = 0; j < dim; ++j) dst[j] = qi[j] * scale;
        }
      }
      row_max.assign(rows_all, neg_inf);
      row_sum.assign(rows_all, 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t kb0 = lo; kb0 < ctx; kb0 += kKeyBlock) {
        const int64_t kb1 = std::min(ctx, kb0 + kKeyBlock);
        const int64_t nk = kb1 - kb0;
        // Query rows [r0, r1) see at least one key of the block.
        const int64_t r0 = std::max<int64_t>(0, kb0 - q0);
        const int64_t r1 =
            window > 0 ? std::min<int64_t>(n, kb1 + window - 1 - q0) : n;
        if (r0 >= r1) continue;
        for (int64_t p = kb0; p < kb1; ++p) {
          const int32_t page = I32At(page_table, b, p / page_size);
          const int64_t off = p % page_size;
          std::memcpy(kblk.data() + (p - kb0) * dim,
                      F32At(k_pages, page, off, kvh),
                      static_cast<size_t>(dim) * sizeof(float));
          std::memcpy(vblk.data() + (p - kb0) * dim,
                      F32At(v_pages, page, off, kvh),
                      static_cast<size_t>(dim) * sizeof(float));
        }
        for (int64_t g = 0; g < group; ++g) {
          for (int64_t rb = r0; rb < r1; rb += kQueryBlock) {
            const int64_t rows = std::min(kQueryBlock, r1 - rb);
            const int64_t base = g * n + rb;
            Sgemm(false, true, rows, nk, dim, 1.0f, qbuf.data() + base * dim,
                  dim, kblk.data(), dim, 0.0f, scores.data(), nk);
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t pos = q0 + rb + r;
              // Visible keys of this block: [p_lo, p_hi).
              const int64_t p_lo =
                  window > 0 ? std::max<int64_t>(kb0, pos - window + 1) : kb0;
              const int64_t p_hi = std::min<int64_t>(kb1, pos + 1);
              float* sr = scores.data() + r * nk;
              if (p_lo >= p_hi) {
                std::fill_n(sr, nk, 0.0f);
                continue;
              }
              float mx = neg_inf;
              for (int64_t p = p_lo; p < p_hi; ++p) {
                mx = std::max(mx, sr[p - kb0]);
              }
              const int64_t idx = base + r;
              const float m_new = std::max(row_max[idx], mx);
              const float factor = std::exp(row_max[idx] - m_new);
              float sum = 0.0f;
              for (int64_t p = kb0; p < kb1; ++p) {
                float e = 0.0f;
                if (p >= p_lo && p < p_hi) e = std::exp(sr[p - kb0] - m_new);
                sr[p - kb0] = e;
                sum += e;
              }
              row_sum[idx] = row_sum[idx] * factor + sum;
              row_max[idx] = m_new;
              if (factor != 1.0f) {
                float* ar = acc.data() + idx * dim;
                for (int64_t j = 0; j < dim; ++j) ar[j] *= factor;
              }
            }
            Sgemm(false, false, rows, dim, nk, 1.0f, scores.data(), nk,
                  vblk.data(), dim, 1.0f, acc.data() + base * dim, dim);
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t idx = g * n + i;
          const float inv = 1.0f / row_sum[idx];
          const float* ar = acc.data() + idx * dim;
          float* o = F32At(out, start + i, kvh * group + g);
          for (int64_t j = 0; j < dim; ++j) o[j] = ar[j] * inv;
        }
      }
    }
  }
  return absl::OkStatus();
}

DeviceMemory* CpuKernels::memory() { return HostMemory(); }

absl::Status CpuKernels::Argmax(const TensorView& logits, const TensorView& out,
                                Stream /*stream*/) {
  constexpr char kOp[] = "Argmax";
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "logits", logits, DType::kF32, {kAny, kAny}));
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  if (vocab < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": logits ", logits.DebugString(), " has no columns"));
  }
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kI32, {rows}));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = F32At(logits, r);
    int64_t best = 0;
    for (int64_t j = 1; j < vocab; ++j) {
      // NaN compares false both ways: it replaces only a NaN best.
      if (row[j] > row[best] ||
          (std::isnan(row[best]) && !std::isnan(row[j]))) {
        best = j;
      }
    }
    out.i32()[r * out.strides[0]] = static_cast<int32_t>(best);
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::SampleTokens(
    const TensorView& logits, const TensorView& temperature,
    const TensorView& top_k, const TensorView& top_p, const TensorView& uniform,
    const TensorView& out, Stream /*stream*/) {
  constexpr char kOp[] = "SampleTokens";
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "logits", logits, DType::kF32, {kAny, kAny}));
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  if (vocab < 1 || vocab > kMaxSampleVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": logits ", logits.DebugString(), " has ", vocab,
                     " columns, outside [1, ", kMaxSampleVocab, "]"));
  }
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "temperature", temperature, DType::kF32, {rows}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "top_k", top_k, DType::kI32, {rows}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "top_p", top_p, DType::kF32, {rows}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "uniform", uniform, DType::kF32, {rows}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, DType::kI32, {rows}));
  for (int64_t r = 0; r < rows; ++r) {
    const float t = *F32At(temperature, r);
    if (!(t >= 0.0f) || std::isinf(t)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": temperature[", r, "] = ", t, " is not finite and >= 0"));
    }
    if (I32At(top_k, r) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": top_k[", r, "] = ", I32At(top_k, r), " is negative"));
    }
    const float p = *F32At(top_p, r);
    if (!(p > 0.0f && p <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": top_p[", r, "] = ", p, " is outside (0, 1]"));
    }
    const float u = *F32At(uniform, r);
    if (!(u >= 0.0f && u < 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": uniform[", r, "] = ", u, " is outside [0, 1)"));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    out.i32()[r * out.strides[0]] =
        SampleRow(F32At(logits, r), vocab, *F32At(temperature, r),
                  I32At(top_k, r), *F32At(top_p, r), *F32At(uniform, r));
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::Synchronize(Stream /*stream*/) {
  return absl::OkStatus();
}

}  // namespace deltaserve
