// CpuKernels: linear attention, gated symmetric power attention and the
// data-dependent rotary embedding of conformal-sympow (see kernels.h for the
// functions). Plain fp32 loops, OpenBLAS for the chunk products; the
// recurrent forms are the oracle the chunked forms are tested against.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_checks.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace {

constexpr int64_t kAny = kAnyDim;
// Added to the normaliser of each kind before dividing.
constexpr float kLinearEps = 1e-10f;
constexpr float kPowerEps = 1e-6f;
constexpr double kTwoPi = 6.283185307179586476925286766559;

using cpu_internal::CheckView;
using cpu_internal::F32At;
using cpu_internal::I32At;

// Row-major C[m, n] = alpha · op(A) · op(B) + beta · C.
inline void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

// The feature map of a call: elu + 1 (linear attention, F = K) or the
// symmetric power embedding of degree p (F = C(K + p − 1, p)).
class FeatureMap {
 public:
  // Linear attention.
  explicit FeatureMap(int64_t dk) : dk_(dk), degree_(0), features_(dk) {}
  // Symmetric power of `degree` (the caller checked PowerFeatureDim > 0).
  FeatureMap(int64_t dk, int degree)
      : dk_(dk), degree_(degree), features_(PowerFeatureDim(dk, degree)) {
    index_.reserve(static_cast<size_t>(features_ * degree));
    coef_.reserve(static_cast<size_t>(features_));
    std::vector<int32_t> alpha(degree, 0);
    // Multisets i_1 ≤ … ≤ i_p in lexicographic order.
    while (true) {
      // sqrt(p! / Π m_i!), the multiplicities m_i counted over runs.
      double c = 1.0;
      for (int m = 1; m <= degree; ++m) c *= m;
      int run = 1;
      for (int m = 1; m <= degree; ++m) {
        if (m < degree && alpha[m] == alpha[m - 1]) {
          ++run;
        } else {
          for (int r = 2; r <= run; ++r) c /= r;
          run = 1;
        }
      }
      coef_.push_back(static_cast<float>(std::sqrt(c)));
      index_.insert(index_.end(), alpha.begin(), alpha.end());
      int m = degree - 1;
      while (m >= 0 && alpha[m] == dk - 1) --m;
      if (m < 0) break;
      ++alpha[m];
      for (int r = m + 1; r < degree; ++r) alpha[r] = alpha[m];
    }
  }

  int64_t features() const { return features_; }
  bool power() const { return degree_ > 0; }
  int degree() const { return degree_; }

  // out[F] = φ(x[K]) · factor.
  void Apply(const float* x, float factor, float* out) const {
    if (degree_ == 0) {
      for (int64_t i = 0; i < dk_; ++i) {
        // elu(x) + 1 is x + 1 for x > 0 and exp(x) otherwise.
        out[i] = factor * (x[i] > 0.0f ? x[i] + 1.0f : std::exp(x[i]));
      }
      return;
    }
    const int32_t* idx = index_.data();
    for (int64_t f = 0; f < features_; ++f, idx += degree_) {
      float prod = coef_[f] * factor;
      for (int m = 0; m < degree_; ++m) prod *= x[idx[m]];
      out[f] = prod;
    }
  }

 private:
  int64_t dk_;
  int degree_;
  int64_t features_;
  std::vector<int32_t> index_;  // [F, p]
  std::vector<float> coef_;     // [F]
};

// Sizes of a linear or power attention call.
struct MixerDims {
  int64_t tokens = 0, batch = 0, h = 0, hkv = 0, dk = 0, dv = 0, f = 0;
  bool has_g = false;
};

absl::StatusOr<MixerDims> CheckMixer(const char* op, const TensorView& q,
                                     const TensorView& k, const TensorView& v,
                                     const TensorView* g, int degree,
                                     const TensorView& cu_seqlens,
                                     const TensorView& state,
                                     const TensorView& normalizer,
                                     const TensorView& slots,
                                     const TensorView& out) {
  MixerDims d;
  DS_RETURN_IF_ERROR(CheckView(op, "q", q, DType::kF32, {kAny, kAny, kAny}));
  d.tokens = q.dim(0);
  d.h = q.dim(1);
  d.dk = q.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(op, "k", k, DType::kF32, {d.tokens, kAny, d.dk}));
  d.hkv = k.dim(1);
  DS_RETURN_IF_ERROR(
      CheckView(op, "v", v, DType::kF32, {d.tokens, d.hkv, kAny}));
  d.dv = v.dim(2);
  if (d.hkv < 1 || d.h < 1 || d.h % d.hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the heads of q ", q.DebugString(),
        " are not a positive multiple of the kv heads of k ", k.DebugString()));
  }
  if (d.dk < 1 || d.dv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": empty head dimension in q ", q.DebugString(),
                     " or v ", v.DebugString()));
  }
  if (g != nullptr) {
    if (degree < 2 || degree % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": degree is ", degree, ", expected an even number >= 2"));
    }
    d.f = PowerFeatureDim(d.dk, degree);
    if (d.f < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": degree ", degree, " of head dimension ", d.dk,
                       " has too many features"));
    }
    d.has_g = !g->empty();
    if (d.has_g) {
      DS_RETURN_IF_ERROR(
          CheckView(op, "g", *g, DType::kF32, {d.tokens, d.hkv}));
    }
  } else {
    d.f = d.dk;
  }
  DS_ASSIGN_OR_RETURN(d.batch,
                      cpu_internal::CheckCuSeqlens(op, cu_seqlens, d.tokens));
  DS_RETURN_IF_ERROR(
      CheckView(op, "state", state, DType::kF32, {kAny, d.hkv, d.f, d.dv}));
  DS_RETURN_IF_ERROR(CheckView(op, "normalizer", normalizer, DType::kF32,
                               {state.dim(0), d.hkv, d.f}));
  DS_RETURN_IF_ERROR(
      cpu_internal::CheckSlots(op, slots, d.batch, state.dim(0), "state"));
  DS_RETURN_IF_ERROR(
      CheckView(op, "out", out, DType::kF32, {d.tokens, d.h, d.dv}));
  return d;
}

// Copies state[slot, j] ([F, V]) and normalizer[slot, j] ([F]) to or from
// contiguous buffers.
void LoadMixerState(const TensorView& state, const TensorView& normalizer,
                    int32_t slot, int64_t j, int64_t f, int64_t dv, float* s,
                    float* z) {
  for (int64_t i = 0; i < f; ++i) {
    std::memcpy(s + i * dv, F32At(state, slot, j, i),
                static_cast<size_t>(dv) * sizeof(float));
  }
  std::memcpy(z, F32At(normalizer, slot, j),
              static_cast<size_t>(f) * sizeof(float));
}
void StoreMixerState(const float* s, const float* z, int64_t f, int64_t dv,
                     const TensorView& state, const TensorView& normalizer,
                     int32_t slot, int64_t j) {
  for (int64_t i = 0; i < f; ++i) {
    std::memcpy(F32At(state, slot, j, i), s + i * dv,
                static_cast<size_t>(dv) * sizeof(float));
  }
  std::memcpy(F32At(normalizer, slot, j), z,
              static_cast<size_t>(f) * sizeof(float));
}

// The query-side factor folded into φ(q): scale for linear attention (φ is
// not homogeneous), scale^p for power attention (φ_p(s·q) = s^p φ_p(q)).
float QueryFactor(const FeatureMap& fm, float scale) {
  return fm.power() ? static_cast<float>(
                          std::pow(static_cast<double>(scale), fm.degree()))
                    : scale;
}

// Token by token. S_t = γ_t S_{t−1} + φ(k_t) v_tᵀ, z_t = γ_t z_{t−1} +
// φ(k_t), o_t = Sᵀφ̂(q_t) [/ (zᵀφ̂(q_t) + eps)] with φ̂(q) = factor · φ(q).
void MixerRecurrent(const MixerDims& d, const FeatureMap& fm,
                    const TensorView& q, const TensorView& k,
                    const TensorView& v, const TensorView& g,
                    const TensorView& cu_seqlens, const TensorView& state,
                    const TensorView& normalizer, const TensorView& slots,
                    float scale, bool normalize, float eps,
                    const TensorView& out) {
  const int64_t f = d.f, dv = d.dv;
  const int64_t group = d.h / d.hkv;
  const float factor = QueryFactor(fm, scale);
  std::vector<float> s(static_cast<size_t>(f * dv));
  std::vector<float> z(static_cast<size_t>(f));
  std::vector<float> phi_k(static_cast<size_t>(f));
  std::vector<float> phi_q(static_cast<size_t>(f));
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    if (start == end) continue;
    const int32_t slot = I32At(slots, b);
    for (int64_t j = 0; j < d.hkv; ++j) {
      LoadMixerState(state, normalizer, slot, j, f, dv, s.data(), z.data());
      for (int64_t t = start; t < end; ++t) {
        fm.Apply(F32At(k, t, j), 1.0f, phi_k.data());
        const float* vt = F32At(v, t, j);
        const float decay = d.has_g ? std::exp(F32At(g, t, 0)[j]) : 1.0f;
        for (int64_t i = 0; i < f; ++i) {
          float* row = s.data() + i * dv;
          const float pk = phi_k[i];
          if (d.has_g) {
            for (int64_t c = 0; c < dv; ++c)
              row[c] = decay * row[c] + pk * vt[c];
            z[i] = decay * z[i] + pk;
          } else {
            for (int64_t c = 0; c < dv; ++c) row[c] += pk * vt[c];
            z[i] += pk;
          }
        }
        for (int64_t h = j * group; h < (j + 1) * group; ++h) {
          fm.Apply(F32At(q, t, h), factor, phi_q.data());
          float* o = F32At(out, t, h);
          std::fill_n(o, dv, 0.0f);
          double den = 0.0;
          for (int64_t i = 0; i < f; ++i) {
            const float pq = phi_q[i];
            const float* row = s.data() + i * dv;
            for (int64_t c = 0; c < dv; ++c) o[c] += pq * row[c];
            den += static_cast<double>(pq) * z[i];
          }
          if (normalize) {
            const float inv = static_cast<float>(1.0 / (den + eps));
            for (int64_t c = 0; c < dv; ++c) o[c] *= inv;
          }
        }
      }
      StoreMixerState(s.data(), z.data(), f, dv, state, normalizer, slot, j);
    }
  }
}

// Chunked form. For a chunk of n tokens starting from S0, z0, with G_i the
// cumulative log gate within the chunk (0 without gating) and γ_i =
// exp(G_i): the quadratic weights A_ri = w(q_r, k_i) exp(G_r − G_i) for
// i ≤ r (w = φ̂(q)·φ(k), computed as (scale q·k)^p for power attention),
// numerators A V + γ ⊙ (Φ̂_Q S0), denominators A 1 + γ ⊙ (Φ̂_Q z0), and the
// chunk's final state γ_last S0 + (exp(G_last − G) ⊙ Φ_K)ᵀ V (z alike).
// Decay factors are only formed as exp of non-positive differences.
void MixerChunked(const MixerDims& d, const FeatureMap& fm, const TensorView& q,
                  const TensorView& k, const TensorView& v, const TensorView& g,
                  const TensorView& cu_seqlens, const TensorView& state,
                  const TensorView& normalizer, const TensorView& slots,
                  float scale, bool normalize, float eps,
                  const TensorView& out) {
  const int64_t f = d.f, dv = d.dv, dk = d.dk;
  const int64_t group = d.h / d.hkv;
  constexpr int64_t kC = kLinearChunkSize;
  const int64_t rows = group * kC;  // query rows of a chunk: (head, token)
  const float factor = QueryFactor(fm, scale);
  std::vector<float> s(static_cast<size_t>(f * dv));
  std::vector<float> z(static_cast<size_t>(f));
  std::vector<float> qc(static_cast<size_t>(rows * dk));  // raw q rows
  std::vector<float> kc(static_cast<size_t>(kC * dk));    // raw k
  std::vector<float> vc(static_cast<size_t>(kC * dv));
  std::vector<float> phi_q(static_cast<size_t>(rows * f));  // φ̂(q)
  std::vector<float> phi_k(static_cast<size_t>(kC * f));    // φ(k)
  std::vector<float> phi_kd(static_cast<size_t>(kC * f));   // decayed to end
  std::vector<float> a(static_cast<size_t>(rows * kC));     // weights
  std::vector<float> oc(static_cast<size_t>(rows * dv));
  std::vector<float> den(static_cast<size_t>(rows));
  std::vector<double> gcum(static_cast<size_t>(kC));
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    if (start == end) continue;
    const int32_t slot = I32At(slots, b);
    for (int64_t j = 0; j < d.hkv; ++j) {
      LoadMixerState(state, normalizer, slot, j, f, dv, s.data(), z.data());
      for (int64_t c0 = start; c0 < end; c0 += kC) {
        const int64_t n = std::min(kC, end - c0);
        const int64_t nr = group * n;
        // Gather the chunk; row r = gi · n + i is query head j·group + gi
        // at token c0 + i.
        double gsum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = c0 + i;
          std::memcpy(kc.data() + i * dk, F32At(k, t, j),
                      static_cast<size_t>(dk) * sizeof(float));
          std::memcpy(vc.data() + i * dv, F32At(v, t, j),
                      static_cast<size_t>(dv) * sizeof(float));
          fm.Apply(kc.data() + i * dk, 1.0f, phi_k.data() + i * f);
          if (d.has_g) gsum += F32At(g, t, 0)[j];
          gcum[i] = gsum;
          for (int64_t gi = 0; gi < group; ++gi) {
            const int64_t r = gi * n + i;
            std::memcpy(qc.data() + r * dk, F32At(q, t, j * group + gi),
                        static_cast<size_t>(dk) * sizeof(float));
            fm.Apply(qc.data() + r * dk, factor, phi_q.data() + r * f);
          }
        }
        // Intra-chunk weights.
        if (fm.power()) {
          Sgemm(false, true, nr, n, dk, scale, qc.data(), dk, kc.data(), dk,
                0.0f, a.data(), kC);
          const int p = fm.degree();
          for (int64_t r = 0; r < nr; ++r) {
            float* ar = a.data() + r * kC;
            for (int64_t i = 0; i < n; ++i) {
              float w = 1.0f;
              for (int m = 0; m < p; ++m) w *= ar[i];
              ar[i] = w;
            }
          }
        } else {
          Sgemm(false, true, nr, n, f, 1.0f, phi_q.data(), f, phi_k.data(), f,
                0.0f, a.data(), kC);
        }
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r % n;  // the query's token within the chunk
          float* ar = a.data() + r * kC;
          for (int64_t m = 0; m < n; ++m) {
            if (m > i) {
              ar[m] = 0.0f;
            } else if (d.has_g) {
              ar[m] *= static_cast<float>(std::exp(gcum[i] - gcum[m]));
            }
          }
        }
        // Numerators: γ ⊙ (Φ̂_Q S0) + A V; denominators likewise with z0.
        Sgemm(false, false, nr, dv, f, 1.0f, phi_q.data(), f, s.data(), dv,
              0.0f, oc.data(), dv);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r % n;
          const float* pq = phi_q.data() + r * f;
          double dsum = 0.0;
          for (int64_t x = 0; x < f; ++x) {
            dsum += static_cast<double>(pq[x]) * z[x];
          }
          if (d.has_g) {
            const double gamma = std::exp(gcum[i]);
            dsum *= gamma;
            float* orow = oc.data() + r * dv;
            const float gf = static_cast<float>(gamma);
            for (int64_t c = 0; c < dv; ++c) orow[c] *= gf;
          }
          const float* ar = a.data() + r * kC;
          for (int64_t m = 0; m <= i; ++m) dsum += ar[m];
          den[r] = static_cast<float>(dsum);
        }
        Sgemm(false, false, nr, dv, n, 1.0f, a.data(), kC, vc.data(), dv, 1.0f,
              oc.data(), dv);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t gi = r / n, i = r % n;
          float* o = F32At(out, c0 + i, j * group + gi);
          const float* orow = oc.data() + r * dv;
          if (normalize) {
            const float inv = 1.0f / (den[r] + eps);
            for (int64_t c = 0; c < dv; ++c) o[c] = orow[c] * inv;
          } else {
            std::memcpy(o, orow, static_cast<size_t>(dv) * sizeof(float));
          }
        }
        // The state after the chunk.
        const double glast = gcum[n - 1];
        for (int64_t i = 0; i < n; ++i) {
          const float w =
              d.has_g ? static_cast<float>(std::exp(glast - gcum[i])) : 1.0f;
          const float* src = phi_k.data() + i * f;
          float* dst = phi_kd.data() + i * f;
          for (int64_t x = 0; x < f; ++x) dst[x] = w * src[x];
        }
        const float gamma_last =
            d.has_g ? static_cast<float>(std::exp(glast)) : 1.0f;
        Sgemm(true, false, f, dv, n, 1.0f, phi_kd.data(), f, vc.data(), dv,
              gamma_last, s.data(), dv);
        for (int64_t x = 0; x < f; ++x) {
          double acc = static_cast<double>(gamma_last) * z[x];
          for (int64_t i = 0; i < n; ++i) acc += phi_kd[i * f + x];
          z[x] = static_cast<float>(acc);
        }
      }
      StoreMixerState(s.data(), z.data(), f, dv, state, normalizer, slot, j);
    }
  }
}

// torch.nn.functional.softplus with beta 1 and threshold 20.
inline float Softplus(float x) {
  return x > 20.0f ? x : std::log1p(std::exp(x));
}

// log(sigmoid(x)) without overflow.
inline float LogSigmoid(float x) {
  return x >= 0.0f ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

}  // namespace

absl::Status CpuKernels::LinearAttentionRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, float scale,
    bool normalize, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const MixerDims d,
                      CheckMixer("LinearAttentionRecurrent", q, k, v, nullptr,
                                 0, cu_seqlens, state, normalizer, slots, out));
  MixerRecurrent(d, FeatureMap(d.dk), q, k, v, TensorView(), cu_seqlens, state,
                 normalizer, slots, scale, normalize, kLinearEps, out);
  return absl::OkStatus();
}

absl::Status CpuKernels::LinearAttentionChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, float scale,
    bool normalize, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const MixerDims d,
                      CheckMixer("LinearAttentionChunked", q, k, v, nullptr, 0,
                                 cu_seqlens, state, normalizer, slots, out));
  MixerChunked(d, FeatureMap(d.dk), q, k, v, TensorView(), cu_seqlens, state,
               normalizer, slots, scale, normalize, kLinearEps, out);
  return absl::OkStatus();
}

absl::Status CpuKernels::PowerAttentionRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, int degree,
    float scale, bool normalize, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const MixerDims d,
                      CheckMixer("PowerAttentionRecurrent", q, k, v, &g, degree,
                                 cu_seqlens, state, normalizer, slots, out));
  MixerRecurrent(d, FeatureMap(d.dk, degree), q, k, v, g, cu_seqlens, state,
                 normalizer, slots, scale, normalize, kPowerEps, out);
  return absl::OkStatus();
}

absl::Status CpuKernels::PowerAttentionChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& cu_seqlens, const TensorView& state,
    const TensorView& normalizer, const TensorView& slots, int degree,
    float scale, bool normalize, const TensorView& out, Stream /*stream*/) {
  DS_ASSIGN_OR_RETURN(const MixerDims d,
                      CheckMixer("PowerAttentionChunked", q, k, v, &g, degree,
                                 cu_seqlens, state, normalizer, slots, out));
  MixerChunked(d, FeatureMap(d.dk, degree), q, k, v, g, cu_seqlens, state,
               normalizer, slots, scale, normalize, kPowerEps, out);
  return absl::OkStatus();
}

absl::Status CpuKernels::PowerAttentionGates(const TensorView& gate_logits,
                                             const TensorView& rate_logits,
                                             float gate_bias,
                                             const TensorView& g,
                                             const TensorView& rate,
                                             Stream /*stream*/) {
  constexpr char kOp[] = "PowerAttentionGates";
  for (const auto& [name_in, in, name_out, o] :
       {std::tuple<const char*, const TensorView*, const char*,
                   const TensorView*>{"gate_logits", &gate_logits, "g", &g},
        {"rate_logits", &rate_logits, "rate", &rate}}) {
    if (in->empty() != o->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name_in, " ", in->DebugString(), " and ", name_out, " ",
          o->DebugString(), " must both be given or both be empty"));
    }
    if (in->empty()) continue;
    DS_RETURN_IF_ERROR(CheckView(kOp, name_in, *in, DType::kF32, {kAny, kAny}));
    DS_RETURN_IF_ERROR(
        CheckView(kOp, name_out, *o, DType::kF32, {in->dim(0), in->dim(1)}));
  }
  if (!g.empty()) {
    for (int64_t t = 0; t < g.dim(0); ++t) {
      const float* x = gate_logits.f32() + t * gate_logits.strides[0];
      float* y = g.f32() + t * g.strides[0];
      for (int64_t j = 0; j < g.dim(1); ++j)
        y[j] = LogSigmoid(x[j] + gate_bias);
    }
  }
  if (!rate.empty()) {
    for (int64_t t = 0; t < rate.dim(0); ++t) {
      const float* x = rate_logits.f32() + t * rate_logits.strides[0];
      float* y = rate.f32() + t * rate.strides[0];
      for (int64_t j = 0; j < rate.dim(1); ++j) y[j] = Softplus(x[j]);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKernels::CumulativeRope(
    const TensorView& q, const TensorView& k, const TensorView& rate,
    const TensorView& cu_seqlens, const TensorView& angle,
    const TensorView& slots, int rot_dim, float theta, Stream /*stream*/) {
  constexpr char kOp[] = "CumulativeRope";
  DS_RETURN_IF_ERROR(CheckView(kOp, "q", q, DType::kF32, {kAny, kAny, kAny}));
  const int64_t tokens = q.dim(0);
  const int64_t h = q.dim(1);
  const int64_t dim = q.dim(2);
  DS_RETURN_IF_ERROR(CheckView(kOp, "k", k, DType::kF32, {tokens, kAny, dim}));
  const int64_t hkv = k.dim(1);
  if (hkv < 1 || h < 1 || h % hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": the heads of q ", q.DebugString(),
        " are not a positive multiple of the kv heads of k ", k.DebugString()));
  }
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": rot_dim ", rot_dim, " must be even and in (0, head_dim] for q ",
        q.DebugString()));
  }
  DS_RETURN_IF_ERROR(CheckView(kOp, "rate", rate, DType::kF32, {tokens, hkv}));
  DS_ASSIGN_OR_RETURN(const int64_t batch,
                      cpu_internal::CheckCuSeqlens(kOp, cu_seqlens, tokens));
  const int half = rot_dim / 2;
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "angle", angle, DType::kF32, {kAny, hkv, half}));
  DS_RETURN_IF_ERROR(
      cpu_internal::CheckSlots(kOp, slots, batch, angle.dim(0), "angle"));
  const int64_t group = h / hkv;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta),
                           -2.0 * i / static_cast<double>(rot_dim));
  }
  std::vector<double> ang(half);
  std::vector<float> cosv(half), sinv(half);
  auto rotate = [&](float* p) {
    for (int i = 0; i < half; ++i) {
      const float x1 = p[i];
      const float x2 = p[i + half];
      p[i] = x1 * cosv[i] - x2 * sinv[i];
      p[i + half] = x2 * cosv[i] + x1 * sinv[i];
    }
  };
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = I32At(cu_seqlens, b);
    const int64_t end = I32At(cu_seqlens, b + 1);
    if (start == end) continue;
    const int32_t slot = I32At(slots, b);
    for (int64_t j = 0; j < hkv; ++j) {
      float* stored = F32At(angle, slot, j);
      for (int i = 0; i < half; ++i) ang[i] = stored[i];
      for (int64_t t = start; t < end; ++t) {
        const double r = F32At(rate, t, 0)[j];
        for (int i = 0; i < half; ++i) {
          ang[i] = std::remainder(ang[i] + r * inv_freq[i], kTwoPi);
          cosv[i] = static_cast<float>(std::cos(ang[i]));
          sinv[i] = static_cast<float>(std::sin(ang[i]));
        }
        rotate(F32At(k, t, j));
        for (int64_t hh = j * group; hh < (j + 1) * group; ++hh) {
          rotate(F32At(q, t, hh));
        }
      }
      for (int i = 0; i < half; ++i) stored[i] = static_cast<float>(ang[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace deltaserve
