#include "engine/layers/layers.h"

#include <cmath>
#include <utility>

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
  kMixed,
  kQ,
  kK,
  kV,
  kCore,
  kCore2,
  kGate,
  kUp,
  kNormed,
  kNumScratch,
};

// Views of activations and of f32 side tensors in the layer's memory.
struct Views {
  const LayerContext& ctx;

  TensorView Act(void* p, std::initializer_list<int64_t> shape) const {
    return TensorView::Contiguous(p, ctx.act, shape, ctx.memory->device());
  }
  TensorView F32(void* p, std::initializer_list<int64_t> shape) const {
    return TensorView::Contiguous(p, DType::kF32, shape, ctx.memory->device());
  }
  // f32 rows [rows, cols] whose starts are `stride` floats apart.
  TensorView Rows(float* p, int64_t rows, int64_t cols, int64_t stride) const {
    TensorView v = F32(p, {rows, cols});
    v.strides[0] = stride;
    return v;
  }
  // Columns [col, col + heads · dim) of the rows of `m` ([rows, cols]) as
  // [rows, heads, dim].
  static TensorView Heads(const TensorView& m, int64_t col, int64_t heads,
                          int64_t dim) {
    TensorView v = m;
    v.data = static_cast<char*>(m.data) + col * DTypeSize(m.dtype);
    v.ndim = 3;
    v.shape[1] = heads;
    v.shape[2] = dim;
    v.strides[1] = dim;
    v.strides[2] = 1;
    return v;
  }
  int64_t act_size() const { return DTypeSize(ctx.act); }
};

// Copies columns [col, col + width) of the rows of src[rows, cols] into a
// contiguous dst[rows, width] (elements of `es` bytes).
absl::Status CopyColumns(const LayerContext& ctx, int64_t es, const void* src,
                         int64_t rows, int64_t cols, int64_t col, int64_t width,
                         void* dst) {
  return ctx.memory->Copy2D(dst, width * es,
                            static_cast<const char*>(src) + col * es, cols * es,
                            width * es, rows, ctx.stream);
}

}  // namespace

absl::StatusOr<void*> Scratch::Get(int id, int64_t bytes) {
  if (static_cast<int>(buffers_.size()) <= id) buffers_.resize(id + 1);
  Buffer& b = buffers_[id];
  if (b.bytes() < bytes) {
    if (!b.empty()) {
      DS_RETURN_IF_ERROR(kernels_->Synchronize(kernels_->stream()));
    }
    DS_RETURN_IF_ERROR(EnsureBuffer(kernels_->memory(), bytes, &b));
    ++generation_;
  }
  return b.data();
}

absl::Status GatedDeltaRuleForward(const LayerContext& ctx,
                                   const GatedDeltaRuleSpec& spec,
                                   const GatedDeltaRuleWeights& w,
                                   const TensorView& state,
                                   const TensorView& conv_state,
                                   const TensorView& x, const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const Views vw{ctx};
  const int64_t es = vw.act_size();
  const BatchLayout& b = *ctx.batch;
  const int64_t t = b.num_tokens;
  const int64_t c = spec.conv_dim();
  const int64_t kd = spec.key_dim(), vd = spec.value_dim();
  const int64_t hv = spec.num_v_heads, hk = spec.num_k_heads;
  Scratch& sc = *ctx.scratch;
  // Everything between the input and output projections is f32 (the
  // recurrence compounds rounding); only out_proj's input is an activation.
  DS_ASSIGN_OR_RETURN(void* z, sc.Get(kZ, t * vd * 4));
  DS_ASSIGN_OR_RETURN(void* g, sc.Get(kG, t * hv * 4));
  DS_ASSIGN_OR_RETURN(void* beta, sc.Get(kBeta, t * hv * 4));
  // The input projections: qkv [T, c], z [T, vd] (with the output gate), b
  // and a [T, hv]; one matrix product when they are stacked (in_proj_all),
  // and then views into its rows.
  const int64_t zd = spec.output_gate ? vd : 0;
  // Without decay (DeltaNet) there is no a projection; the gates kernel
  // then reads b in its place and its decay output goes unused.
  const int64_t ad = spec.use_decay ? hv : 0;
  const int64_t all = c + zd + hv + ad;
  TensorView qkv_view, a_view, b_view;
  void* qkv = nullptr;
  if (!w.in_proj_all.empty()) {
    DS_ASSIGN_OR_RETURN(qkv, sc.Get(kQkv, t * all * 4));
    DS_RETURN_IF_ERROR(k.Gemm(x, w.in_proj_all.view(), vw.F32(qkv, {t, all}),
                              false, ctx.stream));
    float* base = static_cast<float*>(qkv);
    qkv_view = vw.Rows(base, t, c, all);
    b_view = vw.Rows(base + c + zd, t, hv, all);
    a_view = ad > 0 ? vw.Rows(base + c + zd + hv, t, hv, all) : b_view;
    if (zd > 0) DS_RETURN_IF_ERROR(CopyColumns(ctx, 4, qkv, t, all, c, vd, z));
  } else {
    DS_ASSIGN_OR_RETURN(qkv, sc.Get(kQkv, t * c * 4));
    DS_ASSIGN_OR_RETURN(void* a, sc.Get(kA, t * hv * 4));
    DS_ASSIGN_OR_RETURN(void* bb, sc.Get(kB, t * hv * 4));
    qkv_view = vw.F32(qkv, {t, c});
    b_view = vw.F32(bb, {t, hv});
    a_view = vw.F32(a, {t, hv});
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.in_proj_qkv.view(), qkv_view, false, ctx.stream));
    if (zd > 0) {  // z gates the output norm only
      DS_RETURN_IF_ERROR(
          k.Gemm(x, w.in_proj_z.view(), vw.F32(z, {t, vd}), false, ctx.stream));
    }
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.in_proj_b.view(), b_view, false, ctx.stream));
    if (ad > 0) {
      DS_RETURN_IF_ERROR(
          k.Gemm(x, w.in_proj_a.view(), a_view, false, ctx.stream));
    } else {
      a_view = b_view;
    }
  }
  // The short conv: in place for a decode step; for prefill into its own
  // buffer of activations (bf16 on the GPU, where the chunked delta rule
  // runs its products on tensor cores). q, k and v are then column views of
  // the conv's rows.
  TensorView mixed = qkv_view;
  // With bf16 activations (the GPU) the chunked form runs in bf16 and the
  // recurrent one in fp32, so a batch mixing one-token and longer sequences
  // runs each kind on its own path (their slot lists leave the other kind's
  // rows alone); in f32 both forms agree and one chunked call does.
  const bool split = b.mixed && ctx.act != DType::kF32;
  if (b.decode) {
    DS_RETURN_IF_ERROR(k.CausalConv1dUpdate(qkv_view, w.conv.view(), conv_state,
                                            b.slots, /*silu=*/true, qkv_view,
                                            ctx.stream));
  } else {
    DS_ASSIGN_OR_RETURN(void* conv_out, sc.Get(kMixed, t * c * es));
    mixed = vw.Act(conv_out, {t, c});
    DS_RETURN_IF_ERROR(k.CausalConv1d(
        qkv_view, w.conv.view(), b.cu_seqlens, conv_state,
        split ? b.multi_slots : b.slots, /*silu=*/true, mixed, ctx.stream));
    if (split) {
      // One-token sequences as in a decode step: in place, in f32 (after the
      // call above has read every row).
      DS_RETURN_IF_ERROR(k.CausalConv1d(qkv_view, w.conv.view(), b.cu_seqlens,
                                        conv_state, b.single_slots,
                                        /*silu=*/true, qkv_view, ctx.stream));
    }
  }
  TensorView g_view;
  if (spec.use_decay) g_view = vw.F32(g, {t, hv});
  DS_RETURN_IF_ERROR(k.GdnGates(a_view, b_view, w.a_log.view(),
                                w.dt_bias.view(), vw.F32(g, {t, hv}),
                                vw.F32(beta, {t, hv}), ctx.stream));
  DS_ASSIGN_OR_RETURN(void* core, sc.Get(kCore, t * vd * 4));
  const TensorView qv = Views::Heads(mixed, 0, hk, spec.head_k_dim);
  const TensorView kv = Views::Heads(mixed, kd, hk, spec.head_k_dim);
  const TensorView vv = Views::Heads(mixed, 2 * kd, hv, spec.head_v_dim);
  const TensorView ov = vw.F32(core, {t, hv, spec.head_v_dim});
  const float scale = 1.0f / std::sqrt(static_cast<float>(spec.head_k_dim));
  if (b.decode) {
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleRecurrent(
        qv, kv, vv, g_view, vw.F32(beta, {t, hv}), b.cu_seqlens, state, b.slots,
        scale, /*l2norm_qk=*/true, ov, ctx.stream));
  } else if (!split) {
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleChunked(
        qv, kv, vv, g_view, vw.F32(beta, {t, hv}), b.cu_seqlens, state, b.slots,
        scale, /*l2norm_qk=*/true, ov, ctx.stream));
  } else {
    // One-token sequences take the decode path, the others the chunked one;
    // each leaves the other's rows zero, and the sum is exact.
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleRecurrent(
        Views::Heads(qkv_view, 0, hk, spec.head_k_dim),
        Views::Heads(qkv_view, kd, hk, spec.head_k_dim),
        Views::Heads(qkv_view, 2 * kd, hv, spec.head_v_dim), g_view,
        vw.F32(beta, {t, hv}), b.cu_seqlens, state, b.single_slots, scale,
        /*l2norm_qk=*/true, ov, ctx.stream));
    DS_ASSIGN_OR_RETURN(void* core2, sc.Get(kCore2, t * vd * 4));
    const TensorView ov2 = vw.F32(core2, {t, hv, spec.head_v_dim});
    DS_RETURN_IF_ERROR(k.GatedDeltaRuleChunked(
        qv, kv, vv, g_view, vw.F32(beta, {t, hv}), b.cu_seqlens, state,
        b.multi_slots, scale, /*l2norm_qk=*/true, ov2, ctx.stream));
    DS_RETURN_IF_ERROR(k.Add(vw.F32(core, {t, vd}), vw.F32(core2, {t, vd}),
                             vw.F32(core, {t, vd}), ctx.stream));
  }
  // The output norm narrows to the activations' type for out_proj.
  const TensorView rows = vw.F32(core, {t * hv, spec.head_v_dim});
  DS_ASSIGN_OR_RETURN(void* normed, sc.Get(kNormed, t * vd * es));
  const TensorView normed_rows = vw.Act(normed, {t * hv, spec.head_v_dim});
  if (spec.output_gate) {
    DS_RETURN_IF_ERROR(k.RmsNormGated(
        rows, vw.F32(z, {t * hv, spec.head_v_dim}), w.norm.view(),
        ctx.rms_norm_eps, normed_rows, ctx.stream));
  } else {
    DS_RETURN_IF_ERROR(k.RmsNorm(rows, w.norm.view(), ctx.rms_norm_eps,
                                 /*zero_centered=*/false, normed_rows,
                                 ctx.stream));
  }
  return k.Gemm(vw.Act(normed, {t, vd}), w.out_proj.view(), out,
                /*accumulate=*/true, ctx.stream);
}

absl::Status AttentionForward(const LayerContext& ctx,
                              const AttentionSpec& spec,
                              const AttentionWeights& w,
                              const TensorView& k_pages,
                              const TensorView& v_pages, const TensorView& x,
                              const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const Views vw{ctx};
  const int64_t es = vw.act_size();
  const BatchLayout& b = *ctx.batch;
  const int64_t t = b.num_tokens;
  const int64_t h = spec.num_heads, hkv = spec.num_kv_heads, hd = spec.head_dim;
  const int64_t qd = h * hd, kvd = hkv * hd;
  Scratch& sc = *ctx.scratch;
  DS_ASSIGN_OR_RETURN(void* q, sc.Get(kQ, t * qd * es));
  DS_ASSIGN_OR_RETURN(void* gate, sc.Get(kGate, t * qd * es));
  DS_ASSIGN_OR_RETURN(void* kk, sc.Get(kK, t * kvd * es));
  DS_ASSIGN_OR_RETURN(void* v, sc.Get(kV, t * kvd * es));
  if (spec.output_gate) {
    // q_proj yields, per head, the query followed by its output gate.
    DS_ASSIGN_OR_RETURN(void* qg, sc.Get(kQkv, t * 2 * qd * es));
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.q_proj.view(), vw.Act(qg, {t, 2 * qd}), false, ctx.stream));
    DS_RETURN_IF_ERROR(CopyColumns(ctx, es, qg, t * h, 2 * hd, 0, hd, q));
    DS_RETURN_IF_ERROR(CopyColumns(ctx, es, qg, t * h, 2 * hd, hd, hd, gate));
  } else {
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.q_proj.view(), vw.Act(q, {t, qd}), false, ctx.stream));
  }
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.k_proj.view(), vw.Act(kk, {t, kvd}), false, ctx.stream));
  DS_RETURN_IF_ERROR(
      k.Gemm(x, w.v_proj.view(), vw.Act(v, {t, kvd}), false, ctx.stream));
  if (spec.qk_norm) {
    DS_RETURN_IF_ERROR(k.RmsNorm(vw.Act(q, {t * h, hd}), w.q_norm.view(),
                                 ctx.rms_norm_eps, ctx.norm_zero_centered,
                                 vw.Act(q, {t * h, hd}), ctx.stream));
    DS_RETURN_IF_ERROR(k.RmsNorm(vw.Act(kk, {t * hkv, hd}), w.k_norm.view(),
                                 ctx.rms_norm_eps, ctx.norm_zero_centered,
                                 vw.Act(kk, {t * hkv, hd}), ctx.stream));
  }
  const TensorView qv = vw.Act(q, {t, h, hd});
  const TensorView kv = vw.Act(kk, {t, hkv, hd});
  if (spec.rotary_dim > 0) {
    DS_RETURN_IF_ERROR(
        k.Rope(qv, b.positions, spec.rotary_dim, spec.rope_theta, ctx.stream));
    DS_RETURN_IF_ERROR(
        k.Rope(kv, b.positions, spec.rotary_dim, spec.rope_theta, ctx.stream));
  }
  const TensorView& pages =
      spec.window > 0 ? b.window_page_table : b.page_table;
  DS_RETURN_IF_ERROR(k.KvAppend(kv, vw.Act(v, {t, hkv, hd}), k_pages, v_pages,
                                pages, b.cu_seqlens, b.start_pos, ctx.stream));
  DS_ASSIGN_OR_RETURN(void* o, sc.Get(kCore, t * qd * es));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  DS_RETURN_IF_ERROR(k.PagedAttention(qv, k_pages, v_pages, pages, b.cu_seqlens,
                                      b.context_lens, spec.window, scale,
                                      vw.Act(o, {t, h, hd}), ctx.stream));
  if (spec.output_gate) {
    DS_RETURN_IF_ERROR(k.SigmoidGate(vw.Act(o, {t, qd}), vw.Act(gate, {t, qd}),
                                     vw.Act(o, {t, qd}), ctx.stream));
  }
  return k.Gemm(vw.Act(o, {t, qd}), w.o_proj.view(), out, /*accumulate=*/true,
                ctx.stream);
}

absl::Status SwiGluMlpForward(const LayerContext& ctx, int intermediate_size,
                              const BlockWeights& w, const TensorView& x,
                              const TensorView& out) {
  Kernels& k = *ctx.kernels;
  const Views vw{ctx};
  const int64_t t = ctx.batch->num_tokens;
  const int64_t i = intermediate_size;
  const int64_t es = vw.act_size();
  TensorView gv, uv;
  if (!w.gate_up.empty()) {
    // One product for gate and up (stacked); views into its rows.
    DS_ASSIGN_OR_RETURN(void* gu, ctx.scratch->Get(kGate, t * 2 * i * es));
    DS_RETURN_IF_ERROR(
        k.Gemm(x, w.gate_up.view(), vw.Act(gu, {t, 2 * i}), false, ctx.stream));
    gv = vw.Act(gu, {t, i});
    gv.strides[0] = 2 * i;
    uv = vw.Act(static_cast<char*>(gu) + i * es, {t, i});
    uv.strides[0] = 2 * i;
  } else {
    DS_ASSIGN_OR_RETURN(void* gate, ctx.scratch->Get(kGate, t * i * es));
    DS_ASSIGN_OR_RETURN(void* up, ctx.scratch->Get(kUp, t * i * es));
    gv = vw.Act(gate, {t, i});
    uv = vw.Act(up, {t, i});
    DS_RETURN_IF_ERROR(k.Gemm(x, w.gate_proj.view(), gv, false, ctx.stream));
    DS_RETURN_IF_ERROR(k.Gemm(x, w.up_proj.view(), uv, false, ctx.stream));
  }
  DS_RETURN_IF_ERROR(k.SwiGlu(gv, uv, gv, ctx.stream));
  return k.Gemm(gv, w.down_proj.view(), out, /*accumulate=*/true, ctx.stream);
}

}  // namespace deltaserve
