#include "engine/layers/linear_layers.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "kernels/status.h"

namespace deltaserve {
namespace {

// Scratch ids (layers run one at a time, so these may be the ids other
// layers use too; distinct ids never alias).
enum LinearScratch {
  kLinQ = 0,
  kLinK,
  kLinV,
  kLinGate,
  kLinRate,
  kLinCore,
  kLinNormed,
};

// Shared by both mixers; `angle` is only used by power attention.
absl::Status MixerForward(const LayerContext& ctx,
                          const LinearAttentionSpec& spec,
                          const LinearAttentionWeights& w, bool power,
                          const TensorView& state, const TensorView& normalizer,
                          const TensorView& angle, const TensorView& x,
                          const TensorView& out) {
  Kernels& k = *ctx.kernels;
  Scratch& sc = *ctx.scratch;
  const BatchLayout& b = *ctx.batch;
  const Device dev = ctx.memory->device();
  auto f32 = [dev](void* p, std::initializer_list<int64_t> shape) {
    return TensorView::Contiguous(p, DType::kF32, shape, dev);
  };
  const int64_t t = b.num_tokens;
  const int64_t h = spec.num_heads, hkv = spec.num_kv_heads;
  const int64_t dk = spec.head_k_dim, dv = spec.head_v_dim;
  // Everything between the input and output projections is f32 (the
  // recurrence compounds rounding); only o_proj's input is an activation.
  DS_ASSIGN_OR_RETURN(void* q, sc.Get(kLinQ, t * h * dk * 4));
  DS_ASSIGN_OR_RETURN(void* kk, sc.Get(kLinK, t * hkv * dk * 4));
  DS_ASSIGN_OR_RETURN(void* v, sc.Get(kLinV, t * hkv * dv * 4));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.q_proj.view(), f32(q, {t, h * dk}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.k_proj.view(), f32(kk, {t, hkv * dk}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.v_proj.view(), f32(v, {t, hkv * dv}), false, ctx.stream));
  const TensorView qv = f32(q, {t, h, dk});
  const TensorView kv = f32(kk, {t, hkv, dk});
  const TensorView vv = f32(v, {t, hkv, dv});
  DS_ASSIGN_OR_RETURN(void* core, sc.Get(kLinCore, t * h * dv * 4));
  const TensorView ov = f32(core, {t, h, dv});
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  if (power) {
    TensorView gv, rv;
    if (spec.gating) {
      DS_ASSIGN_OR_RETURN(void* g, sc.Get(kLinGate, t * hkv * 4));
      gv = f32(g, {t, hkv});
      DS_RETURN_IF_ERROR(k.Gemm(x, w.g_proj.view(), gv, false, ctx.stream));
    }
    if (spec.rotary) {
      DS_ASSIGN_OR_RETURN(void* r, sc.Get(kLinRate, t * hkv * 4));
      rv = f32(r, {t, hkv});
      DS_RETURN_IF_ERROR(k.Gemm(x, w.r_proj.view(), rv, false, ctx.stream));
    }
    if (spec.gating || spec.rotary) {
      DS_RETURN_IF_ERROR(
          k.PowerAttentionGates(gv, rv, spec.gate_bias, gv, rv, ctx.stream));
    }
    if (spec.rotary) {
      DS_RETURN_IF_ERROR(k.CumulativeRope(qv, kv, rv, b.cu_seqlens, angle,
                                          b.slots, spec.rotary_dim,
                                          spec.rope_theta, ctx.stream));
    }
    if (b.decode) {
      DS_RETURN_IF_ERROR(k.PowerAttentionRecurrent(
          qv, kv, vv, gv, b.cu_seqlens, state, normalizer, b.slots, spec.degree,
          scale, spec.normalize, ov, ctx.stream));
    } else {
      DS_RETURN_IF_ERROR(k.PowerAttentionChunked(
          qv, kv, vv, gv, b.cu_seqlens, state, normalizer, b.slots, spec.degree,
          scale, spec.normalize, ov, ctx.stream));
    }
  } else if (b.decode) {
    DS_RETURN_IF_ERROR(k.LinearAttentionRecurrent(
        qv, kv, vv, b.cu_seqlens, state, normalizer, b.slots, scale,
        spec.normalize, ov, ctx.stream));
  } else {
    DS_RETURN_IF_ERROR(k.LinearAttentionChunked(
        qv, kv, vv, b.cu_seqlens, state, normalizer, b.slots, scale,
        spec.normalize, ov, ctx.stream));
  }
  // Each head's output RMSNorm narrows to the activations' type for o_proj.
  const int64_t es = DTypeSize(ctx.act);
  DS_ASSIGN_OR_RETURN(void* normed, sc.Get(kLinNormed, t * h * dv * es));
  DS_RETURN_IF_ERROR(k.RmsNorm(
      f32(core, {t * h, dv}), w.norm.view(), ctx.rms_norm_eps,
      /*zero_centered=*/false,
      TensorView::Contiguous(normed, ctx.act, {t * h, dv}, dev), ctx.stream));
  return k.Gemm(TensorView::Contiguous(normed, ctx.act, {t, h * dv}, dev),
                w.o_proj.view(), out, /*accumulate=*/true, ctx.stream);
}

}  // namespace

absl::Status LinearAttentionForward(
    const LayerContext& ctx, const LinearAttentionSpec& spec,
    const LinearAttentionWeights& w, const TensorView& state,
    const TensorView& normalizer, const TensorView& x, const TensorView& out) {
  return MixerForward(ctx, spec, w, /*power=*/false, state, normalizer,
                      TensorView(), x, out);
}

absl::Status PowerAttentionForward(const LayerContext& ctx,
                                   const LinearAttentionSpec& spec,
                                   const LinearAttentionWeights& w,
                                   const TensorView& state,
                                   const TensorView& normalizer,
                                   const TensorView& angle, const TensorView& x,
                                   const TensorView& out) {
  return MixerForward(ctx, spec, w, /*power=*/true, state, normalizer, angle, x,
                      out);
}

}  // namespace deltaserve
