#include "engine/layers/layers.h"

#include <cmath>
#include <cstring>

#include "kernels/status.h"

namespace deltaserve {
namespace {

// Scratch ids; layers run one at a time, so they may reuse each other's.
enum ScratchId {
  kQkv = 0,
  kZ,
  kA,
  kB,
  kG,
  kBeta,
  kQ,
  kK,
  kV,
  kCore,
  kGate,
  kUp,
  kNumScratch,
};

TensorView F32(float* p, std::initializer_list<int64_t> shape) {
  return TensorView::F32(p, shape);
}

// Copies columns [col, col + width) of the rows of src[T, cols] into a
// contiguous dst[T, width].
void CopyColumns(const float* src, int64_t rows, int64_t cols, int64_t col,
                 int64_t width, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * width, src + r * cols + col, width * sizeof(float));
  }
}

}  // namespace

float* Scratch::Get(int id, int64_t n) {
  if (static_cast<int>(buffers_.size()) <= id) buffers_.resize(id + 1);
  if (static_cast<int64_t>(buffers_[id].size()) < n) buffers_[id].resize(n);
  return buffers_[id].data();
}

absl::Status GatedDeltaRuleForward(const LayerContext& ctx,
                                   const GatedDeltaRuleSpec& spec,
                                   const GatedDeltaRuleWeights& w,
                                   const TensorView& state,
                                   const TensorView& conv_state,
                                   const TensorView& x, const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const BatchLayout& b = *ctx.batch;
  const int64_t t = b.num_tokens;
  const int64_t c = spec.conv_dim();
  const int64_t kd = spec.key_dim(), vd = spec.value_dim();
  const int64_t hv = spec.num_v_heads, hk = spec.num_k_heads;
  float* qkv = ctx.scratch->Get(kQkv, t * c);
  float* z = ctx.scratch->Get(kZ, t * vd);
  float* a = ctx.scratch->Get(kA, t * hv);
  float* bb = ctx.scratch->Get(kB, t * hv);
  float* g = ctx.scratch->Get(kG, t * hv);
  float* beta = ctx.scratch->Get(kBeta, t * hv);
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.in_proj_qkv.view(), F32(qkv, {t, c}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.in_proj_z.view(), F32(z, {t, vd}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.in_proj_b.view(), F32(bb, {t, hv}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.in_proj_a.view(), F32(a, {t, hv}), false, ctx.stream));
  const TensorView qkv_view = F32(qkv, {t, c});
  if (b.decode) {
    DS_RETURN_IF_ERROR(k.CausalConv1dUpdate(qkv_view, w.conv.view(), conv_state,
                                            b.slots, /*silu=*/true, qkv_view,
                                            ctx.stream));
  } else {
    DS_RETURN_IF_ERROR(k.CausalConv1d(qkv_view, w.conv.view(), b.cu_seqlens,
                                      conv_state, b.slots, /*silu=*/true,
                                      qkv_view, ctx.stream));
  }
  float* q = ctx.scratch->Get(kQ, t * kd);
  float* kk = ctx.scratch->Get(kK, t * kd);
  float* v = ctx.scratch->Get(kV, t * vd);
  CopyColumns(qkv, t, c, 0, kd, q);
  CopyColumns(qkv, t, c, kd, kd, kk);
  CopyColumns(qkv, t, c, 2 * kd, vd, v);
  TensorView g_view;
  if (spec.use_decay) g_view = F32(g, {t, hv});
  DS_RETURN_IF_ERROR(k.GdnGates(
      F32(a, {t, hv}), F32(bb, {t, hv}), w.a_log.view(), w.dt_bias.view(),
      F32(g, {t, hv}), F32(beta, {t, hv}), ctx.stream));
  float* core = ctx.scratch->Get(kCore, t * vd);
  const TensorView qv = F32(q, {t, hk, spec.head_k_dim});
  const TensorView kv = F32(kk, {t, hk, spec.head_k_dim});
  const TensorView vv = F32(v, {t, hv, spec.head_v_dim});
  const TensorView ov = F32(core, {t, hv, spec.head_v_dim});
  const float scale = 1.0f / std::sqrt(static_cast<float>(spec.head_k_dim));
  if (b.decode) {
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleRecurrent(
        qv, kv, vv, g_view, F32(beta, {t, hv}), b.cu_seqlens, state, b.slots,
        scale, /*l2norm_qk=*/true, ov, ctx.stream));
  } else {
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleChunked(
        qv, kv, vv, g_view, F32(beta, {t, hv}), b.cu_seqlens, state, b.slots,
        scale, /*l2norm_qk=*/true, ov, ctx.stream));
  }
  const TensorView rows = F32(core, {t * hv, spec.head_v_dim});
  if (spec.output_gate) {
    DS_RETURN_IF_ERROR(k.RmsNormGated(rows, F32(z, {t * hv, spec.head_v_dim}),
                                      w.norm.view(), ctx.rms_norm_eps, rows,
                                      ctx.stream));
  } else {
    DS_RETURN_IF_ERROR(k.RmsNorm(rows, w.norm.view(), ctx.rms_norm_eps,
                                 /*zero_centered=*/false, rows, ctx.stream));
  }
  return k.Gemm(F32(core, {t, vd}), w.out_proj.view(), out, false, ctx.stream);
}

absl::Status AttentionForward(const LayerContext& ctx,
                              const AttentionSpec& spec,
                              const AttentionWeights& w,
                              const TensorView& k_pages,
                              const TensorView& v_pages, const TensorView& x,
                              const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const BatchLayout& b = *ctx.batch;
  const int64_t t = b.num_tokens;
  const int64_t h = spec.num_heads, hkv = spec.num_kv_heads, hd = spec.head_dim;
  const int64_t qd = h * hd, kvd = hkv * hd;
  float* q = ctx.scratch->Get(kQ, t * qd);
  float* gate = ctx.scratch->Get(kGate, t * qd);
  float* kk = ctx.scratch->Get(kK, t * kvd);
  float* v = ctx.scratch->Get(kV, t * kvd);
  if (spec.output_gate) {
    // q_proj yields, per head, the query followed by its output gate.
    float* qg = ctx.scratch->Get(kQkv, t * 2 * qd);
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.q_proj.view(), F32(qg, {t, 2 * qd}), false, ctx.stream));
    for (int64_t r = 0; r < t * h; ++r) {
      std::memcpy(q + r * hd, qg + r * 2 * hd, hd * sizeof(float));
      std::memcpy(gate + r * hd, qg + r * 2 * hd + hd, hd * sizeof(float));
    }
  } else {
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.q_proj.view(), F32(q, {t, qd}), false, ctx.stream));
  }
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.k_proj.view(), F32(kk, {t, kvd}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.v_proj.view(), F32(v, {t, kvd}), false, ctx.stream));
  if (spec.qk_norm) {
    DS_RETURN_IF_ERROR(k.RmsNorm(F32(q, {t * h, hd}), w.q_norm.view(),
                                 ctx.rms_norm_eps, ctx.norm_zero_centered,
                                 F32(q, {t * h, hd}), ctx.stream));
    DS_RETURN_IF_ERROR(k.RmsNorm(F32(kk, {t * hkv, hd}), w.k_norm.view(),
                                 ctx.rms_norm_eps, ctx.norm_zero_centered,
                                 F32(kk, {t * hkv, hd}), ctx.stream));
  }
  const TensorView qv = F32(q, {t, h, hd});
  const TensorView kv = F32(kk, {t, hkv, hd});
  if (spec.rotary_dim > 0) {
    DS_RETURN_IF_ERROR(
        k.Rope(qv, b.positions, spec.rotary_dim, spec.rope_theta, ctx.stream));
    DS_RETURN_IF_ERROR(
        k.Rope(kv, b.positions, spec.rotary_dim, spec.rope_theta, ctx.stream));
  }
  const TensorView& pages =
      spec.window > 0 ? b.window_page_table : b.page_table;
  DS_RETURN_IF_ERROR(k.KvAppend(kv, F32(v, {t, hkv, hd}), k_pages, v_pages,
                                pages, b.cu_seqlens, b.start_pos, ctx.stream));
  float* o = ctx.scratch->Get(kCore, t * qd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  DS_RETURN_IF_ERROR(k.PagedAttention(qv, k_pages, v_pages, pages, b.cu_seqlens,
                                      b.context_lens, spec.window, scale,
                                      F32(o, {t, h, hd}), ctx.stream));
  if (spec.output_gate) {
    DS_RETURN_IF_ERROR(k.SigmoidGate(F32(o, {t, qd}), F32(gate, {t, qd}),
                                     F32(o, {t, qd}), ctx.stream));
  }
  return k.Gemm(F32(o, {t, qd}), w.o_proj.view(), out, false, ctx.stream);
}

absl::Status SwiGluMlpForward(const LayerContext& ctx, int intermediate_size,
                              const BlockWeights& w, const TensorView& x,
                              const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const int64_t t = ctx.batch->num_tokens;
  const int64_t i = intermediate_size;
  float* gate = ctx.scratch->Get(kGate, t * i);
  float* up = ctx.scratch->Get(kUp, t * i);
  const TensorView gv = F32(gate, {t, i});
  DS_RETURN_IF_ERROR(k.Gemm(x, w.gate_proj.view(), gv, false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.up_proj.view(), F32(up, {t, i}), false, ctx.stream));
  DS_RETURN_IF_ERROR(k.SwiGlu(gv, F32(up, {t, i}), gv, ctx.stream));
  return k.Gemm(gv, w.down_proj.view(), out, false, ctx.stream);
}

}  // namespace deltaserve
