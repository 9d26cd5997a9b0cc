// Linear attention, gated symmetric power attention and the data-dependent
// rotary embedding, verified three ways in float64 and then against the
// fp32 CpuKernels.
//
// For random inputs (varlen batches of odd lengths, every sequence with a
// history that its initial state summarises), three float64 forms written
// here — the quadratic attention formula over the whole history, the
// token-by-token recurrence and a chunked form — must agree to 1e-10
// (outputs and final states), and CpuKernels' fp32 recurrent and chunked
// methods must match them to 1e-5.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"
#include "kernels/testing/tensor_utils.h"

namespace deltaserve {
namespace {

using ::deltaserve::testing::HostI32;
using ::deltaserve::testing::HostTensor;
using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;

// ‖a − b‖ / ‖b‖ (0 when both are zero).
double RelErr(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

// ------------------------------------------------------------------------
// The float64 reference.

// The symmetric power basis of degree p over [0, d): the multisets of size
// p in lexicographic order, each with the number of index tuples that sort
// to it, found by enumerating all d^p tuples (independent of the kernel's
// multinomial coefficients). φ_p(x)_α = sqrt(count_α) Π x_{α_m}.
struct PowerBasis {
  std::vector<std::vector<int>> alpha;
  std::vector<double> count;
};

PowerBasis MakeBasis(int d, int p) {
  std::map<std::vector<int>, int> counts;
  std::vector<int> t(p, 0);
  while (true) {
    std::vector<int> sorted = t;
    std::sort(sorted.begin(), sorted.end());
    ++counts[sorted];
    int m = p - 1;
    while (m >= 0 && t[m] == d - 1) {
      t[m] = 0;
      --m;
    }
    if (m < 0) break;
    ++t[m];
  }
  PowerBasis basis;
  for (const auto& [alpha, c] : counts) {
    basis.alpha.push_back(alpha);
    basis.count.push_back(c);
  }
  return basis;
}

// One mixer's function in float64.
struct RefMixer {
  int degree = 0;  // 0: linear attention (elu + 1)
  double scale = 1.0;
  bool normalize = true;
  int dk = 0, dv = 0;
  PowerBasis basis;

  int features() const {
    return degree == 0 ? dk : static_cast<int>(basis.alpha.size());
  }
  double eps() const { return degree == 0 ? 1e-10 : 1e-6; }

  // φ(x), the key-side features.
  std::vector<double> Phi(const double* x) const {
    std::vector<double> f(features());
    if (degree == 0) {
      for (int i = 0; i < dk; ++i) f[i] = x[i] > 0 ? x[i] + 1 : std::exp(x[i]);
      return f;
    }
    for (size_t a = 0; a < basis.alpha.size(); ++a) {
      double prod = std::sqrt(basis.count[a]);
      for (int i : basis.alpha[a]) prod *= x[i];
      f[a] = prod;
    }
    return f;
  }
  // The query-side features: scale · φ(q) (linear) or φ_p(scale · q).
  std::vector<double> PhiQuery(const double* x) const {
    if (degree == 0) {
      std::vector<double> f = Phi(x);
      for (double& e : f) e *= scale;
      return f;
    }
    std::vector<double> scaled(x, x + dk);
    for (double& e : scaled) e *= scale;
    return Phi(scaled.data());
  }
  // The attention weight of query q on key k, computed directly.
  double Weight(const double* q, const double* k) const {
    if (degree == 0) {
      const std::vector<double> fq = Phi(q), fk = Phi(k);
      double dot = 0.0;
      for (int i = 0; i < dk; ++i) dot += fq[i] * fk[i];
      return scale * dot;
    }
    double dot = 0.0;
    for (int i = 0; i < dk; ++i) dot += q[i] * k[i];
    return std::pow(scale * dot, degree);
  }
};

// One kv head of one sequence: its history (tokens before the call) and
// its new tokens, `group` query heads per token.
struct RefHead {
  int hist = 0, len = 0, group = 1;
  std::vector<double> q;  // [hist + len, group, dk]
  std::vector<double> k;  // [hist + len, dk]
  std::vector<double> v;  // [hist + len, dv]
  std::vector<double> g;  // [hist + len] log gates (0 without gating)
};

struct RefResult {
  std::vector<double> out;  // [len, group, dv]
  std::vector<double> s;    // [F, dv]
  std::vector<double> z;    // [F]
  // Quadratic only: per output row, the size its rounding errors scale
  // with, B = Σ_s |w|_s ‖v_s‖ (/ (Σ_s w_s + eps) when normalised), where
  // |w|_s is the weight with every product taken in absolute value
  // (scale Σ_i |q_i k_si|)^p · decay. The feature-space forms compute
  // (q·k)^p as a sum of C(d+p−1, p) signed terms, so where q·k is small
  // next to Σ_i |q_i k_i| they lose digits in proportion to B / ‖o‖ — an
  // inherent property of the recurrent state, not of one implementation.
  std::vector<double> bound;  // [len, group]
};

// The worst output row error ‖a − b‖ / (‖b‖ + bound_weight · B).
double RowError(const std::vector<double>& a, const std::vector<double>& b,
                const std::vector<double>& bound, int dv, double bound_weight) {
  double worst = 0.0;
  for (size_t r = 0; r < bound.size(); ++r) {
    double num = 0.0, den = 0.0;
    for (int c = 0; c < dv; ++c) {
      const double d = a[r * dv + c] - b[r * dv + c];
      num += d * d;
      den += b[r * dv + c] * b[r * dv + c];
    }
    const double scale = std::sqrt(den) + bound_weight * bound[r];
    if (num > 0.0) worst = std::max(worst, std::sqrt(num) / scale);
  }
  return worst;
}

// The quadratic form over the whole history, and the final state as a
// direct sum.
RefResult Quadratic(const RefMixer& m, const RefHead& x) {
  const int n = x.hist + x.len, dk = m.dk, dv = m.dv, f = m.features();
  std::vector<double> gc(n + 1, 0.0);  // gc[u + 1] = Σ_{r ≤ u} g_r
  for (int u = 0; u < n; ++u) gc[u + 1] = gc[u] + x.g[u];
  RefResult r;
  r.out.assign(static_cast<size_t>(x.len) * x.group * dv, 0.0);
  r.bound.assign(static_cast<size_t>(x.len) * x.group, 0.0);
  for (int i = 0; i < x.len; ++i) {
    const int u = x.hist + i;
    for (int h = 0; h < x.group; ++h) {
      const double* q = &x.q[(static_cast<size_t>(u) * x.group + h) * dk];
      double* o = &r.out[(static_cast<size_t>(i) * x.group + h) * dv];
      double& bound = r.bound[static_cast<size_t>(i) * x.group + h];
      double den = 0.0;
      for (int s = 0; s <= u; ++s) {
        const double decay = std::exp(gc[u + 1] - gc[s + 1]);
        const double w = m.Weight(q, &x.k[s * dk]) * decay;
        double wabs = w;
        if (m.degree > 0) {
          double l1 = 0.0;
          for (int c = 0; c < dk; ++c) l1 += std::abs(q[c] * x.k[s * dk + c]);
          wabs = std::pow(m.scale * l1, m.degree) * decay;
        }
        double vnorm = 0.0;
        for (int c = 0; c < dv; ++c) vnorm += x.v[s * dv + c] * x.v[s * dv + c];
        bound += wabs * std::sqrt(vnorm);
        den += w;
        for (int c = 0; c < dv; ++c) o[c] += w * x.v[s * dv + c];
      }
      if (m.normalize) {
        for (int c = 0; c < dv; ++c) o[c] /= den + m.eps();
        bound /= den + m.eps();
      }
    }
  }
  r.s.assign(static_cast<size_t>(f) * dv, 0.0);
  r.z.assign(f, 0.0);
  for (int s = 0; s < n; ++s) {
    const double decay = std::exp(gc[n] - gc[s + 1]);
    const std::vector<double> fk = m.Phi(&x.k[s * dk]);
    for (int a = 0; a < f; ++a) {
      r.z[a] += decay * fk[a];
      for (int c = 0; c < dv; ++c)
        r.s[a * dv + c] += decay * fk[a] * x.v[s * dv + c];
    }
  }
  return r;
}

// The state a head's history leaves (the initial state of the call).
RefResult HistoryState(const RefMixer& m, const RefHead& x) {
  RefHead h = x;
  h.len = 0;
  const int n = x.hist;
  h.q.resize(static_cast<size_t>(n) * x.group * m.dk);
  h.k.resize(static_cast<size_t>(n) * m.dk);
  h.v.resize(static_cast<size_t>(n) * m.dv);
  h.g.resize(n);
  return Quadratic(m, h);
}

// Token by token from the history's state.
RefResult Recurrent(const RefMixer& m, const RefHead& x, RefResult st) {
  const int dk = m.dk, dv = m.dv, f = m.features();
  st.out.assign(static_cast<size_t>(x.len) * x.group * dv, 0.0);
  for (int i = 0; i < x.len; ++i) {
    const int u = x.hist + i;
    const double gamma = std::exp(x.g[u]);
    const std::vector<double> fk = m.Phi(&x.k[u * dk]);
    for (int a = 0; a < f; ++a) {
      st.z[a] = gamma * st.z[a] + fk[a];
      for (int c = 0; c < dv; ++c) {
        st.s[a * dv + c] = gamma * st.s[a * dv + c] + fk[a] * x.v[u * dv + c];
      }
    }
    for (int h = 0; h < x.group; ++h) {
      const std::vector<double> fq =
          m.PhiQuery(&x.q[(static_cast<size_t>(u) * x.group + h) * dk]);
      double* o = &st.out[(static_cast<size_t>(i) * x.group + h) * dv];
      double den = 0.0;
      for (int a = 0; a < f; ++a) {
        den += fq[a] * st.z[a];
        for (int c = 0; c < dv; ++c) o[c] += fq[a] * st.s[a * dv + c];
      }
      if (m.normalize) {
        for (int c = 0; c < dv; ++c) o[c] /= den + m.eps();
      }
    }
  }
  return st;
}

// Chunks of `chunk` tokens: within a chunk the gated quadratic form, plus
// the chunk's initial state seen through the decay since the chunk began;
// across chunks the state.
RefResult Chunked(const RefMixer& m, const RefHead& x, RefResult st,
                  int chunk) {
  const int dk = m.dk, dv = m.dv, f = m.features();
  st.out.assign(static_cast<size_t>(x.len) * x.group * dv, 0.0);
  for (int c0 = 0; c0 < x.len; c0 += chunk) {
    const int n = std::min(chunk, x.len - c0);
    std::vector<double> gc(n);  // Σ of the chunk's gates up to token i
    double acc = 0.0;
    for (int i = 0; i < n; ++i) gc[i] = acc += x.g[x.hist + c0 + i];
    for (int i = 0; i < n; ++i) {
      const int u = x.hist + c0 + i;
      for (int h = 0; h < x.group; ++h) {
        const double* q = &x.q[(static_cast<size_t>(u) * x.group + h) * dk];
        const std::vector<double> fq = m.PhiQuery(q);
        double* o = &st.out[(static_cast<size_t>(c0 + i) * x.group + h) * dv];
        const double gamma = std::exp(gc[i]);
        double den = 0.0;
        for (int a = 0; a < f; ++a) {
          den += gamma * fq[a] * st.z[a];
          for (int c = 0; c < dv; ++c) o[c] += gamma * fq[a] * st.s[a * dv + c];
        }
        for (int j = 0; j <= i; ++j) {
          const int w_u = x.hist + c0 + j;
          const double w =
              m.Weight(q, &x.k[w_u * dk]) * std::exp(gc[i] - gc[j]);
          den += w;
          for (int c = 0; c < dv; ++c) o[c] += w * x.v[w_u * dv + c];
        }
        if (m.normalize) {
          for (int c = 0; c < dv; ++c) o[c] /= den + m.eps();
        }
      }
    }
    const double gamma_last = std::exp(gc[n - 1]);
    for (double& e : st.s) e *= gamma_last;
    for (double& e : st.z) e *= gamma_last;
    for (int j = 0; j < n; ++j) {
      const int u = x.hist + c0 + j;
      const double w = std::exp(gc[n - 1] - gc[j]);
      const std::vector<double> fk = m.Phi(&x.k[u * dk]);
      for (int a = 0; a < f; ++a) {
        st.z[a] += w * fk[a];
        for (int c = 0; c < dv; ++c)
          st.s[a * dv + c] += w * fk[a] * x.v[u * dv + c];
      }
    }
  }
  return st;
}

// ------------------------------------------------------------------------
// A varlen batch, its fp32 kernel inputs and its float64 reference.

struct MixerCase {
  int h = 4, hkv = 2, dk = 8, dv = 16;
  int degree = 0;  // 0: linear attention
  bool gated = false;
  bool normalize = true;
  std::vector<int> lengths;     // new tokens per sequence
  std::vector<int> history;     // tokens before the call per sequence
  float lo = -1.5f, hi = 1.5f;  // range of q, k, v
};

class MixerProblem {
 public:
  MixerProblem(const MixerCase& c, uint32_t seed) : c_(c) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uni(c.lo, c.hi);
    std::uniform_real_distribution<float> gate_logit(-1.0f, 5.0f);
    ref_.degree = c.degree;
    ref_.scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    ref_.normalize = c.normalize;
    ref_.dk = c.dk;
    ref_.dv = c.dv;
    if (c.degree > 0) ref_.basis = MakeBasis(c.dk, c.degree);
    f_ = ref_.features();
    const int b = static_cast<int>(c.lengths.size());
    const int group = c.h / c.hkv;
    heads_.resize(static_cast<size_t>(b) * c.hkv);
    for (int s = 0; s < b; ++s) {
      const int n = c.history[s] + c.lengths[s];
      for (int j = 0; j < c.hkv; ++j) {
        RefHead& x = head(s, j);
        x.hist = c.history[s];
        x.len = c.lengths[s];
        x.group = group;
        // Values pass through float so that fp32 and fp64 see the same.
        auto draw = [&](size_t count, std::vector<double>* out) {
          out->resize(count);
          for (double& e : *out) e = uni(rng);
        };
        draw(static_cast<size_t>(n) * group * c.dk, &x.q);
        draw(static_cast<size_t>(n) * c.dk, &x.k);
        draw(static_cast<size_t>(n) * c.dv, &x.v);
        x.g.assign(n, 0.0);
        if (c.gated) {
          for (double& e : x.g) {
            const double y = gate_logit(rng);
            e = static_cast<float>(-std::log1p(std::exp(-y)));
          }
        }
      }
    }
  }

  const MixerCase& spec() const { return c_; }
  const RefMixer& ref() const { return ref_; }
  int features() const { return f_; }
  int num_seqs() const { return static_cast<int>(c_.lengths.size()); }
  RefHead& head(int s, int j) { return heads_[s * c_.hkv + j]; }

  // Runs `kernel` (a LinearAttention* or PowerAttention* method of
  // CpuKernels, bound by the caller) over the new tokens with the
  // histories' states in scattered slots of a pool whose normaliser view
  // has padded rows, and checks it against the float64 quadratic form.
  template <typename Kernel>
  void CheckKernel(const Kernel& kernel, const char* what, double tol) {
    const MixerCase& c = c_;
    const int b = num_seqs();
    const int group = c.h / c.hkv;
    const int pool = b + 2;
    int total = 0;
    for (int n : c.lengths) total += n;
    HostTensor q({total, c.h, c.dk}), k({total, c.hkv, c.dk});
    HostTensor v({total, c.hkv, c.dv}), g({total, c.hkv});
    HostTensor out({total, c.h, c.dv}, NAN);
    HostTensor state({pool, c.hkv, f_, c.dv}, 7.0f);
    const int zpad = f_ + 3;  // normaliser rows padded: outer strides
    HostTensor zbuf({pool, c.hkv, zpad}, 7.0f);
    TensorView normalizer = zbuf.view();
    normalizer.shape[2] = f_;
    std::vector<int32_t> cu = {0}, slots;
    for (int s = 0; s < b; ++s) {
      cu.push_back(cu.back() + c.lengths[s]);
      slots.push_back(pool - 1 - s);
    }
    HostI32 cu_t = HostI32::FromVector(cu),
            slots_t = HostI32::FromVector(slots);
    std::vector<RefResult> want(static_cast<size_t>(b) * c.hkv);
    for (int s = 0; s < b; ++s) {
      for (int j = 0; j < c.hkv; ++j) {
        const RefHead& x = head(s, j);
        const RefResult init = HistoryState(ref_, x);
        float* sp =
            &state[((static_cast<int64_t>(slots[s]) * c.hkv + j) * f_) * c.dv];
        for (int a = 0; a < f_ * c.dv; ++a)
          sp[a] = static_cast<float>(init.s[a]);
        float* zp = &zbuf[(static_cast<int64_t>(slots[s]) * c.hkv + j) * zpad];
        for (int a = 0; a < f_; ++a) zp[a] = static_cast<float>(init.z[a]);
        want[s * c.hkv + j] = Quadratic(ref_, x);
        for (int i = 0; i < x.len; ++i) {
          const int u = x.hist + i, t = cu[s] + i;
          for (int d = 0; d < c.dk; ++d) {
            k[(static_cast<int64_t>(t) * c.hkv + j) * c.dk + d] =
                static_cast<float>(x.k[u * c.dk + d]);
            for (int hh = 0; hh < group; ++hh) {
              q[(static_cast<int64_t>(t) * c.h + j * group + hh) * c.dk + d] =
                  static_cast<float>(x.q[(u * group + hh) * c.dk + d]);
            }
          }
          for (int d = 0; d < c.dv; ++d) {
            v[(static_cast<int64_t>(t) * c.hkv + j) * c.dv + d] =
                static_cast<float>(x.v[u * c.dv + d]);
          }
          g[static_cast<int64_t>(t) * c.hkv + j] = static_cast<float>(x.g[u]);
        }
      }
    }
    const std::vector<float> state_before = state.data;
    const std::vector<float> z_before = zbuf.data;
    const absl::Status st = kernel(
        q.view(), k.view(), v.view(), c.gated ? g.view() : TensorView(),
        cu_t.view(), state.view(), normalizer, slots_t.view(), out.view());
    ASSERT_TRUE(st.ok()) << st;
    double worst_out = 0.0, worst_state = 0.0, worst_plain = 0.0;
    std::vector<double> all_got, all_want;
    for (int s = 0; s < b; ++s) {
      std::vector<double> got_o, want_o, got_s, want_s, bound;
      for (int j = 0; j < c.hkv; ++j) {
        const RefResult& w = want[s * c.hkv + j];
        for (int i = 0; i < c.lengths[s]; ++i) {
          for (int hh = 0; hh < group; ++hh) {
            for (int d = 0; d < c.dv; ++d) {
              got_o.push_back(
                  out[(static_cast<int64_t>(cu[s] + i) * c.h + j * group + hh) *
                          c.dv +
                      d]);
              want_o.push_back(w.out[(i * group + hh) * c.dv + d]);
            }
            bound.push_back(w.bound[i * group + hh]);
          }
        }
        const float* sp =
            &state[((static_cast<int64_t>(slots[s]) * c.hkv + j) * f_) * c.dv];
        got_s.insert(got_s.end(), sp, sp + f_ * c.dv);
        want_s.insert(want_s.end(), w.s.begin(), w.s.end());
        const float* zp =
            &zbuf[(static_cast<int64_t>(slots[s]) * c.hkv + j) * zpad];
        got_s.insert(got_s.end(), zp, zp + f_);
        want_s.insert(want_s.end(), w.z.begin(), w.z.end());
      }
      // Every output row within tol of the reference, relative to its
      // size plus a tenth of its rounding scale B (see RefResult).
      const double eo = RowError(got_o, want_o, bound, c.dv, 0.1);
      const double es = RelErr(got_s, want_s);
      EXPECT_LT(eo, tol) << what << ": sequence " << s << " (" << c.lengths[s]
                         << " tokens after " << c.history[s] << ")";
      EXPECT_LT(es, tol) << what << ": state of sequence " << s;
      worst_out = std::max(worst_out, eo);
      worst_state = std::max(worst_state, es);
      worst_plain =
          std::max(worst_plain, RowError(got_o, want_o, bound, c.dv, 0.0));
      all_got.insert(all_got.end(), got_o.begin(), got_o.end());
      all_want.insert(all_want.end(), want_o.begin(), want_o.end());
    }
    // Slots no sequence uses, and the normaliser's padding, are untouched.
    for (int slot = 0; slot < pool - b; ++slot) {
      const int64_t n = static_cast<int64_t>(c.hkv) * f_ * c.dv;
      for (int64_t a = slot * n; a < (slot + 1) * n; ++a) {
        ASSERT_EQ(state[a], state_before[a]) << what;
      }
    }
    for (int64_t r = 0; r < static_cast<int64_t>(pool) * c.hkv; ++r) {
      for (int a = f_; a < zpad; ++a) ASSERT_EQ(zbuf[r * zpad + a], 7.0f);
      if (r < static_cast<int64_t>(pool - b) * c.hkv) {
        for (int a = 0; a < f_; ++a) {
          ASSERT_EQ(zbuf[r * zpad + a], z_before[r * zpad + a]);
        }
      }
    }
    std::printf(
        "%-24s p=%d d=%-2d F=%-4d norm=%d: out rel err %.2e over all rows, "
        "worst row %.2e (%.2e with B/10), state %.2e\n",
        what, c.degree, c.dk, f_, c.normalize ? 1 : 0,
        RelErr(all_got, all_want), worst_plain, worst_out, worst_state);
  }

 private:
  MixerCase c_;
  RefMixer ref_;
  int f_ = 0;
  std::vector<RefHead> heads_;
};

// The three float64 forms agree.
void CheckFloat64Forms(MixerProblem& p) {
  double worst = 0.0;
  for (int s = 0; s < p.num_seqs(); ++s) {
    for (int j = 0; j < p.spec().hkv; ++j) {
      const RefHead& x = p.head(s, j);
      const RefResult init = HistoryState(p.ref(), x);
      const RefResult quad = Quadratic(p.ref(), x);
      const RefResult rec = Recurrent(p.ref(), x, init);
      for (int chunk : {kLinearChunkSize, 5}) {
        const RefResult chk = Chunked(p.ref(), x, init, chunk);
        for (const auto& [a, name] :
             {std::pair<const std::vector<double>*, const char*>{
                  &rec.out, "recurrent out"},
              {&chk.out, "chunked out"}}) {
          // 1e-10 of the row, plus 1e-14 of its rounding scale B.
          const double e = RowError(*a, quad.out, quad.bound, p.ref().dv, 1e-4);
          worst = std::max(worst, e);
          EXPECT_LT(e, 1e-10) << name << ", sequence " << s << ", kv head " << j
                              << ", chunk " << chunk;
        }
        for (const auto& [a, b, name] :
             {std::tuple<const std::vector<double>*, const std::vector<double>*,
                         const char*>{&rec.s, &quad.s, "recurrent state"},
              {&chk.s, &quad.s, "chunked state"},
              {&rec.z, &quad.z, "recurrent normaliser"},
              {&chk.z, &quad.z, "chunked normaliser"}}) {
          const double e = RelErr(*a, *b);
          worst = std::max(worst, e);
          EXPECT_LT(e, 1e-10) << name << ", sequence " << s << ", kv head " << j
                              << ", chunk " << chunk;
        }
      }
    }
  }
  std::printf("float64 forms (p=%d d=%d F=%d): worst rel difference %.2e\n",
              p.spec().degree, p.spec().dk, p.features(), worst);
}

class MixersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = CpuKernels::Create(CpuKernels::Options());
    ASSERT_TRUE(created.ok()) << created.status();
    kernels_ = std::move(created).value();
  }

  // The float64 forms, then the fp32 kernels against them.
  void Verify(const MixerCase& c, uint32_t seed, double tol = 1e-5) {
    MixerProblem p(c, seed);
    CheckFloat64Forms(p);
    const float scale = static_cast<float>(p.ref().scale);
    Kernels* k = kernels_.get();
    const int degree = c.degree;
    const bool normalize = c.normalize;
    if (degree == 0) {
      p.CheckKernel(
          [&](const TensorView& q, const TensorView& kk, const TensorView& v,
              const TensorView&, const TensorView& cu, const TensorView& s,
              const TensorView& z, const TensorView& slots,
              const TensorView& out) {
            return k->LinearAttentionRecurrent(q, kk, v, cu, s, z, slots, scale,
                                               normalize, out, Stream());
          },
          "LinearAttentionRecurrent", tol);
      p.CheckKernel(
          [&](const TensorView& q, const TensorView& kk, const TensorView& v,
              const TensorView&, const TensorView& cu, const TensorView& s,
              const TensorView& z, const TensorView& slots,
              const TensorView& out) {
            return k->LinearAttentionChunked(q, kk, v, cu, s, z, slots, scale,
                                             normalize, out, Stream());
          },
          "LinearAttentionChunked", tol);
    } else {
      p.CheckKernel(
          [&](const TensorView& q, const TensorView& kk, const TensorView& v,
              const TensorView& g, const TensorView& cu, const TensorView& s,
              const TensorView& z, const TensorView& slots,
              const TensorView& out) {
            return k->PowerAttentionRecurrent(q, kk, v, g, cu, s, z, slots,
                                              degree, scale, normalize, out,
                                              Stream());
          },
          "PowerAttentionRecurrent", tol);
      p.CheckKernel(
          [&](const TensorView& q, const TensorView& kk, const TensorView& v,
              const TensorView& g, const TensorView& cu, const TensorView& s,
              const TensorView& z, const TensorView& slots,
              const TensorView& out) {
            return k->PowerAttentionChunked(q, kk, v, g, cu, s, z, slots,
                                            degree, scale, normalize, out,
                                            Stream());
          },
          "PowerAttentionChunked", tol);
    }
  }

  std::unique_ptr<CpuKernels> kernels_;
};

// Odd lengths around the chunk size, an empty sequence, histories of
// several lengths (none, inside a chunk, a whole chunk).
const std::vector<int> kLengths = {1, 7, 63, 65, 200, 0};
const std::vector<int> kHistory = {0, 5, 30, 1, 64, 3};

TEST(PowerBasisTest, EmbeddingReproducesThePowerOfTheDotProduct) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  for (int d : {1, 3, 8}) {
    for (int p : {2, 4, 6}) {
      RefMixer m;
      m.degree = p;
      m.dk = d;
      m.basis = MakeBasis(d, p);
      EXPECT_EQ(m.features(), PowerFeatureDim(d, p));
      std::vector<double> a(d), b(d);
      for (double& e : a) e = uni(rng);
      for (double& e : b) e = uni(rng);
      const std::vector<double> fa = m.Phi(a.data()), fb = m.Phi(b.data());
      double dot = 0.0, want = 0.0;
      for (size_t i = 0; i < fa.size(); ++i) dot += fa[i] * fb[i];
      for (int i = 0; i < d; ++i) want += a[i] * b[i];
      want = std::pow(want, p);
      EXPECT_NEAR(dot, want, 1e-13 * (1.0 + std::abs(want)));
    }
  }
  EXPECT_EQ(PowerFeatureDim(8, 2), 36);
  EXPECT_EQ(PowerFeatureDim(16, 4), 3876);
  EXPECT_EQ(PowerFeatureDim(64, 2), 2080);
  EXPECT_EQ(PowerFeatureDim(0, 2), -1);
  EXPECT_EQ(PowerFeatureDim(1 << 20, 8), -1);  // overflows
}

TEST_F(MixersTest, LinearAttentionNormalizedWithGqa) {
  Verify({.h = 4,
          .hkv = 2,
          .dk = 8,
          .dv = 16,
          .normalize = true,
          .lengths = kLengths,
          .history = kHistory},
         101);
}

TEST_F(MixersTest, LinearAttentionUnnormalized) {
  Verify({.h = 2,
          .hkv = 2,
          .dk = 16,
          .dv = 8,
          .normalize = false,
          .lengths = kLengths,
          .history = kHistory},
         102);
}

TEST_F(MixersTest, PowerAttentionDegree2GatedNormalized) {
  Verify({.h = 4,
          .hkv = 2,
          .dk = 8,
          .dv = 16,
          .degree = 2,
          .gated = true,
          .normalize = true,
          .lengths = kLengths,
          .history = kHistory},
         201);
}

TEST_F(MixersTest, PowerAttentionDegree2UngatedUnnormalized) {
  Verify({.h = 2,
          .hkv = 1,
          .dk = 16,
          .dv = 8,
          .degree = 2,
          .gated = false,
          .normalize = false,
          .lengths = kLengths,
          .history = kHistory},
         202);
}

TEST_F(MixersTest, PowerAttentionDegree4GatedNormalized) {
  Verify({.h = 4,
          .hkv = 2,
          .dk = 8,
          .dv = 8,
          .degree = 4,
          .gated = true,
          .normalize = true,
          .lengths = kLengths,
          .history = kHistory},
         401);
}

TEST_F(MixersTest, PowerAttentionDegree4GatedUnnormalized) {
  Verify({.h = 2,
          .hkv = 2,
          .dk = 8,
          .dv = 8,
          .degree = 4,
          .gated = true,
          .normalize = false,
          .lengths = kLengths,
          .history = kHistory},
         402);
}

TEST_F(MixersTest, PowerAttentionDegree4Dim16) {
  // F = 3876 features; shorter sequences keep the float64 forms quick.
  Verify({.h = 2,
          .hkv = 1,
          .dk = 16,
          .dv = 8,
          .degree = 4,
          .gated = true,
          .normalize = true,
          .lengths = {1, 7, 65, 0},
          .history = {0, 5, 3, 2},
          .lo = -1.0f,
          .hi = 1.0f},
         403);
}

// Splitting a batch's sequences over several calls (prefill in pieces, then
// decode steps) continues the state exactly as one call does.
TEST_F(MixersTest, PiecesContinueTheState) {
  for (int degree : {0, 2}) {
    SCOPED_TRACE(degree);
    const int h = 2, hkv = 1, dk = 8, dv = 8, t = 150;
    const int f = degree == 0 ? dk : PowerFeatureDim(dk, degree);
    std::mt19937 rng(5);
    HostTensor q({t, h, dk}), k({t, hkv, dk}), v({t, hkv, dv}), g({t, hkv});
    testing::FillUniform(&q, &rng);
    testing::FillUniform(&k, &rng);
    testing::FillUniform(&v, &rng);
    testing::FillUniform(&g, &rng, -0.5f, 0.0f);
    auto run = [&](int64_t t0, int64_t n, bool chunked, HostTensor* s,
                   HostTensor* z, HostTensor* out) {
      auto rows = [&](const HostTensor& x, int64_t heads, int64_t dim) {
        TensorView view = x.view();
        view.data = const_cast<float*>(x.data.data()) + t0 * heads * dim;
        view.shape[0] = n;
        return view;
      };
      TensorView gv = g.view();
      gv.data = g.data.data() + t0 * hkv;
      gv.shape[0] = n;
      HostI32 cu = HostI32::FromVector({0, static_cast<int32_t>(n)});
      HostI32 slots = HostI32::FromVector({0});
      const TensorView o = rows(*out, h, dv);
      absl::Status st;
      if (degree == 0) {
        st = chunked ? kernels_->LinearAttentionChunked(
                           rows(q, h, dk), rows(k, hkv, dk), rows(v, hkv, dv),
                           cu.view(), s->view(), z->view(), slots.view(), 0.3f,
                           true, o, Stream())
                     : kernels_->LinearAttentionRecurrent(
                           rows(q, h, dk), rows(k, hkv, dk), rows(v, hkv, dv),
                           cu.view(), s->view(), z->view(), slots.view(), 0.3f,
                           true, o, Stream());
      } else {
        st = chunked ? kernels_->PowerAttentionChunked(
                           rows(q, h, dk), rows(k, hkv, dk), rows(v, hkv, dv),
                           gv, cu.view(), s->view(), z->view(), slots.view(),
                           degree, 0.3f, true, o, Stream())
                     : kernels_->PowerAttentionRecurrent(
                           rows(q, h, dk), rows(k, hkv, dk), rows(v, hkv, dv),
                           gv, cu.view(), s->view(), z->view(), slots.view(),
                           degree, 0.3f, true, o, Stream());
      }
      ASSERT_TRUE(st.ok()) << st;
    };
    HostTensor s1({1, hkv, f, dv}), z1({1, hkv, f}), o1({t, h, dv});
    run(0, t, true, &s1, &z1, &o1);
    HostTensor s2({1, hkv, f, dv}), z2({1, hkv, f}), o2({t, h, dv});
    run(0, 37, true, &s2, &z2, &o2);
    run(37, 70, true, &s2, &z2, &o2);
    for (int64_t i = 107; i < t; ++i) run(i, 1, false, &s2, &z2, &o2);
    EXPECT_LT(testing::RelativeError(o2.data, o1.data), 1e-5);
    EXPECT_LT(testing::RelativeError(s2.data, s1.data), 1e-5);
    EXPECT_LT(testing::RelativeError(z2.data, z1.data), 1e-5);
  }
}

TEST_F(MixersTest, ArgumentErrorsNameTheArgument) {
  const int t = 3, h = 2, hkv = 1, dk = 4, dv = 4;
  HostTensor q({t, h, dk}), k({t, hkv, dk}), v({t, hkv, dv}), g({t, hkv});
  HostTensor out({t, h, dv});
  HostTensor s({2, hkv, dk, dv}), z({2, hkv, dk});
  HostTensor sp({2, hkv, PowerFeatureDim(dk, 2), dv}),
      zp({2, hkv, PowerFeatureDim(dk, 2)});
  HostI32 cu = HostI32::FromVector({0, 3}), slots = HostI32::FromVector({0});
  HostI32 bad_slots = HostI32::FromVector({2});
  auto expect = [](const absl::Status& st, const char* name) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(name));
  };
  expect(kernels_->LinearAttentionChunked(
             q.view(), k.view(), v.view(), cu.view(), s.view(), zp.view(),
             slots.view(), 1.0f, true, out.view(), Stream()),
         "normalizer");
  expect(kernels_->LinearAttentionRecurrent(
             q.view(), k.view(), v.view(), cu.view(), s.view(), z.view(),
             bad_slots.view(), 1.0f, true, out.view(), Stream()),
         "slots[0]");
  expect(kernels_->PowerAttentionChunked(
             q.view(), k.view(), v.view(), g.view(), cu.view(), sp.view(),
             zp.view(), slots.view(), 3, 1.0f, true, out.view(), Stream()),
         "degree");
  expect(kernels_->PowerAttentionRecurrent(
             q.view(), k.view(), v.view(), g.view(), cu.view(), s.view(),
             z.view(), slots.view(), 2, 1.0f, true, out.view(), Stream()),
         "state");
  HostTensor g_bad({t, 2});
  expect(kernels_->PowerAttentionRecurrent(
             q.view(), k.view(), v.view(), g_bad.view(), cu.view(), sp.view(),
             zp.view(), slots.view(), 2, 1.0f, true, out.view(), Stream()),
         "g is");
  HostTensor k3({t, 3, dk});
  expect(kernels_->PowerAttentionChunked(
             q.view(), k3.view(), v.view(), TensorView(), cu.view(), sp.view(),
             zp.view(), slots.view(), 2, 1.0f, true, out.view(), Stream()),
         "v is");
  HostI32 bad_cu = HostI32::FromVector({0, 2});
  expect(kernels_->LinearAttentionChunked(
             q.view(), k.view(), v.view(), bad_cu.view(), s.view(), z.view(),
             slots.view(), 1.0f, true, out.view(), Stream()),
         "cu_seqlens");
}

// ------------------------------------------------------------------------
// Gates and the data-dependent rotary embedding.

TEST_F(MixersTest, PowerAttentionGatesMatchFloat64) {
  const int t = 5, hk = 3;
  HostTensor gl({t, hk}), rl({t, hk}), g({t, hk}), rate({t, hk});
  std::mt19937 rng(3);
  testing::FillUniform(&gl, &rng, -10.0f, 10.0f);
  testing::FillUniform(&rl, &rng, -10.0f, 10.0f);
  gl[0] = -200.0f;
  gl[1] = 200.0f;
  rl[0] = -200.0f;
  rl[1] = 200.0f;
  const float bias = 6.906768f;
  ASSERT_TRUE(kernels_
                  ->PowerAttentionGates(gl.view(), rl.view(), bias, g.view(),
                                        rate.view(), Stream())
                  .ok());
  for (int i = 0; i < t * hk; ++i) {
    const double y = double{gl[i]} + bias;
    const double want_g =
        y > 0 ? -std::log1p(std::exp(-y)) : y - std::log1p(std::exp(y));
    const double x = rl[i];
    const double want_r = x > 20 ? x : std::log1p(std::exp(x));
    EXPECT_NEAR(g[i], want_g, 1e-6 * (1 + std::abs(want_g))) << i;
    EXPECT_NEAR(rate[i], want_r, 1e-6 * (1 + std::abs(want_r))) << i;
  }
  // In place, and with only one pair.
  HostTensor gl2 = gl;
  ASSERT_TRUE(kernels_
                  ->PowerAttentionGates(gl2.view(), TensorView(), bias,
                                        gl2.view(), TensorView(), Stream())
                  .ok());
  EXPECT_EQ(gl2.data, g.data);
  EXPECT_EQ(kernels_
                ->PowerAttentionGates(gl.view(), TensorView(), bias,
                                      TensorView(), TensorView(), Stream())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Rotates q [T, H, D] and k [T, Hkv, D] of one sequence in float64 by the
// angles θ0_i + Σ_{r≤t} rate_r ω_i (no wrapping).
void RopeReference(int t, int h, int hkv, int d, int rot,
                   const std::vector<double>& theta0, const HostTensor& rate,
                   double base, std::vector<double>* q,
                   std::vector<double>* k) {
  const int half = rot / 2, group = h / hkv;
  for (int j = 0; j < hkv; ++j) {
    std::vector<double> acc(half, 0.0);
    for (int u = 0; u < t; ++u) {
      for (int i = 0; i < half; ++i) {
        acc[i] += double{rate[u * hkv + j]} * std::pow(base, -2.0 * i / rot);
      }
      auto rotate = [&](double* p) {
        for (int i = 0; i < half; ++i) {
          const double a = theta0[j * half + i] + acc[i];
          const double x1 = p[i], x2 = p[i + half];
          p[i] = x1 * std::cos(a) - x2 * std::sin(a);
          p[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      };
      rotate(&(*k)[(u * hkv + j) * d]);
      for (int hh = j * group; hh < (j + 1) * group; ++hh) {
        rotate(&(*q)[(u * h + hh) * d]);
      }
    }
  }
}

TEST_F(MixersTest, CumulativeRopeMatchesFloat64AndContinuesAcrossCalls) {
  const int t = 90, h = 4, hkv = 2, d = 10, rot = 8, half = rot / 2;
  const float base = 500.0f;
  std::mt19937 rng(11);
  HostTensor q({t, h, d}), k({t, hkv, d}), rate({t, hkv});
  testing::FillUniform(&q, &rng);
  testing::FillUniform(&k, &rng);
  testing::FillUniform(&rate, &rng, 0.0f, 3.0f);
  // Angle pool of 3 slots, the sequence in slot 1, rows padded.
  HostTensor abuf({3, hkv, half + 2});
  testing::FillUniform(&abuf, &rng, -3.0f, 3.0f);
  TensorView angle = abuf.view();
  angle.shape[2] = half;
  // Slot 1's row of kv head j starts at (1 · hkv + j) · (half + 2).
  std::vector<double> theta0(hkv * half);
  for (int j = 0; j < hkv; ++j) {
    for (int i = 0; i < half; ++i) {
      theta0[j * half + i] = abuf[(1 * hkv + j) * (half + 2) + i];
    }
  }
  const HostTensor abuf0 = abuf;
  std::vector<double> want_q(q.data.begin(), q.data.end());
  std::vector<double> want_k(k.data.begin(), k.data.end());
  RopeReference(t, h, hkv, d, rot, theta0, rate, base, &want_q, &want_k);

  // In two calls: 41 tokens, then the rest.
  HostTensor q2 = q, k2 = k;
  HostI32 slots = HostI32::FromVector({1});
  for (const std::pair<int, int>& piece :
       {std::pair<int, int>{0, 41}, {41, t - 41}}) {
    const int t0 = piece.first, n = piece.second;
    TensorView qv = q2.view(), kv = k2.view(), rv = rate.view();
    qv.data = q2.data.data() + t0 * h * d;
    qv.shape[0] = n;
    kv.data = k2.data.data() + t0 * hkv * d;
    kv.shape[0] = n;
    rv.data = rate.data.data() + t0 * hkv;
    rv.shape[0] = n;
    HostI32 cu = HostI32::FromVector({0, n});
    ASSERT_TRUE(kernels_
                    ->CumulativeRope(qv, kv, rv, cu.view(), angle, slots.view(),
                                     rot, base, Stream())
                    .ok());
  }
  std::vector<double> got_q(q2.data.begin(), q2.data.end());
  std::vector<double> got_k(k2.data.begin(), k2.data.end());
  const double eq = RelErr(got_q, want_q), ek = RelErr(got_k, want_k);
  std::printf("CumulativeRope: rel err q %.2e, k %.2e\n", eq, ek);
  EXPECT_LT(eq, 1e-5);
  EXPECT_LT(ek, 1e-5);
  // Dims past rot_dim are untouched; the angles are stored wrapped; other
  // slots and the padding are untouched.
  for (int u = 0; u < t; ++u) {
    for (int hh = 0; hh < h; ++hh) {
      for (int i = rot; i < d; ++i) {
        ASSERT_EQ(q2[(u * h + hh) * d + i], q[(u * h + hh) * d + i]);
      }
    }
  }
  for (int r = 0; r < 3 * hkv; ++r) {
    for (int i = 0; i < half + 2; ++i) {
      const float a = abuf[r * (half + 2) + i];
      if (r / hkv == 1 && i < half) {
        const int j = r % hkv;
        double total = theta0[j * half + i];
        for (int u = 0; u < t; ++u) {
          total += double{rate[u * hkv + j]} *
                   std::pow(double{base}, -2.0 * i / rot);
        }
        EXPECT_LE(std::abs(a), kPi + 1e-6);
        EXPECT_NEAR(std::remainder(a - total, 2 * kPi), 0.0, 1e-5);
      } else {
        ASSERT_EQ(a, abuf0[r * (half + 2) + i]);
      }
    }
  }
}

// Conformal-sympow: the rotary embedding then the gated power attention,
// in two calls, equals the float64 quadratic form of the rotated q and k.
TEST_F(MixersTest, ConformalSympowEqualsQuadraticFormOfRotatedQueriesAndKeys) {
  const int t = 120, h = 2, hkv = 1, d = 8, dv = 8, rot = 8, p = 2;
  const int f = PowerFeatureDim(d, p);
  const float base = 10000.0f, scale = 0.4f;
  std::mt19937 rng(13);
  HostTensor q({t, h, d}), k({t, hkv, d}), v({t, hkv, dv}), g({t, hkv});
  HostTensor rate({t, hkv});
  testing::FillUniform(&q, &rng);
  testing::FillUniform(&k, &rng);
  testing::FillUniform(&v, &rng);
  testing::FillUniform(&g, &rng, -0.3f, 0.0f);
  testing::FillUniform(&rate, &rng, 0.0f, 2.0f);
  std::vector<double> rq(q.data.begin(), q.data.end());
  std::vector<double> rk(k.data.begin(), k.data.end());
  RopeReference(t, h, hkv, d, rot, std::vector<double>(hkv * rot / 2, 0.0),
                rate, base, &rq, &rk);
  RefMixer m;
  m.degree = p;
  m.scale = scale;
  m.normalize = true;
  m.dk = d;
  m.dv = dv;
  m.basis = MakeBasis(d, p);
  RefHead x;
  x.hist = 0;
  x.len = t;
  x.group = h;
  x.q = rq;
  x.k = rk;
  x.v.assign(v.data.begin(), v.data.end());
  x.g.assign(g.data.begin(), g.data.end());
  const RefResult want = Quadratic(m, x);

  HostTensor s({1, hkv, f, dv}), z({1, hkv, f}), angle({1, hkv, rot / 2});
  HostTensor out({t, h, dv});
  HostI32 slots = HostI32::FromVector({0});
  for (const std::pair<int, int>& piece :
       {std::pair<int, int>{0, 70}, {70, t - 70}}) {
    const int t0 = piece.first, n = piece.second;
    auto rows = [&](HostTensor& x, int64_t width) {
      TensorView view = x.view();
      view.data = x.data.data() + t0 * width;
      view.shape[0] = n;
      return view;
    };
    HostI32 cu = HostI32::FromVector({0, n});
    const TensorView qv = rows(q, h * d), kv = rows(k, hkv * d);
    ASSERT_TRUE(kernels_
                    ->CumulativeRope(qv, kv, rows(rate, hkv), cu.view(),
                                     angle.view(), slots.view(), rot, base,
                                     Stream())
                    .ok());
    ASSERT_TRUE(kernels_
                    ->PowerAttentionChunked(qv, kv, rows(v, hkv * dv),
                                            rows(g, hkv), cu.view(), s.view(),
                                            z.view(), slots.view(), p, scale,
                                            true, rows(out, h * dv), Stream())
                    .ok());
  }
  std::vector<double> got(out.data.begin(), out.data.end());
  const double e = RelErr(got, want.out);
  std::printf("conformal-sympow vs float64 quadratic form: rel err %.2e\n", e);
  EXPECT_LT(e, 1e-5);
}

}  // namespace
}  // namespace deltaserve
