#include "engine/model/weights.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

absl::StatusOr<Weight> Load(const Checkpoint& ckpt, const std::string& name,
                            std::vector<int64_t> shape) {
  DS_ASSIGN_OR_RETURN(const TensorEntry* e, ckpt.Get(name));
  if (e->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " in ", ckpt.dir(), " has shape ", e->ShapeString(),
        ", expected [", absl::StrJoin(shape, ", "), "]"));
  }
  Weight w;
  w.shape = std::move(shape);
  w.data.resize(static_cast<size_t>(e->numel()));
  DS_RETURN_IF_ERROR(ToF32(*e, w.data.data(), w.data.size()));
  return w;
}

// Appends rows [begin, begin + count) of the [rows, cols] matrix `from` to
// `to` (which then has `cols` columns).
void AppendRows(const Weight& from, int64_t begin, int64_t count, Weight* to) {
  const int64_t cols = from.shape.back();
  to->data.insert(to->data.end(), from.data.begin() + begin * cols,
                  from.data.begin() + (begin + count) * cols);
  const int64_t rows = to->shape.empty() ? 0 : to->shape[0];
  to->shape = {rows + count, cols};
}

// Qwen3-Next's gated-delta-rule input projections are grouped per key head:
// in_proj_qkvz holds, for each key head, its q and k rows, then the v and z
// rows of its Hv/Hk value heads; in_proj_ba holds, for each key head, the b
// rows then the a rows of its value heads. Regrouped into the separate
// (Qwen3.5) projections: all q, all k, all v (heads in order), z, b, a.
absl::Status LoadGroupedProjections(const Checkpoint& ckpt,
                                    const std::string& m,
                                    const GatedDeltaRuleSpec& g, int64_t d,
                                    GatedDeltaRuleWeights* gw) {
  const int64_t hk = g.num_k_heads;
  const int64_t ratio = g.num_v_heads / g.num_k_heads;
  const int64_t dk = g.head_k_dim, vr = ratio * g.head_v_dim;
  const int64_t group = 2 * dk + 2 * vr;
  DS_ASSIGN_OR_RETURN(Weight qkvz,
                      Load(ckpt, m + "in_proj_qkvz.weight", {hk * group, d}));
  DS_ASSIGN_OR_RETURN(Weight ba,
                      Load(ckpt, m + "in_proj_ba.weight", {hk * 2 * ratio, d}));
  for (int64_t h = 0; h < hk; ++h)
    AppendRows(qkvz, h * group, dk, &gw->in_proj_qkv);
  for (int64_t h = 0; h < hk; ++h) {
    AppendRows(qkvz, h * group + dk, dk, &gw->in_proj_qkv);
  }
  for (int64_t h = 0; h < hk; ++h) {
    AppendRows(qkvz, h * group + 2 * dk, vr, &gw->in_proj_qkv);
  }
  for (int64_t h = 0; h < hk; ++h) {
    AppendRows(qkvz, h * group + 2 * dk + vr, vr, &gw->in_proj_z);
    AppendRows(ba, h * 2 * ratio, ratio, &gw->in_proj_b);
    AppendRows(ba, h * 2 * ratio + ratio, ratio, &gw->in_proj_a);
  }
  return absl::OkStatus();
}

// Qwen3.5 / Qwen3-Next names: text weights under `model.` or, in the
// vision-language checkpoints, `model.language_model.`.
absl::StatusOr<ModelWeights> LoadQwenHybrid(const ModelSpec& spec,
                                            const Checkpoint& ckpt) {
  const std::string p =
      ckpt.Find("model.language_model.embed_tokens.weight") != nullptr
          ? "model.language_model."
          : "model.";
  const int64_t d = spec.hidden_size;
  const int64_t v = spec.vocab_size;
  ModelWeights w;
  DS_ASSIGN_OR_RETURN(w.embed, Load(ckpt, p + "embed_tokens.weight", {v, d}));
  DS_ASSIGN_OR_RETURN(w.final_norm, Load(ckpt, p + "norm.weight", {d}));
  if (ckpt.Find("lm_head.weight") != nullptr) {
    DS_ASSIGN_OR_RETURN(w.lm_head, Load(ckpt, "lm_head.weight", {v, d}));
  } else {  // Tied: LmHead() returns the embedding.
  }
  for (int i = 0; i < spec.num_layers(); ++i) {
    const BlockSpec& bs = spec.blocks[i];
    const std::string l = absl::StrCat(p, "layers.", i, ".");
    BlockWeights b;
    const int64_t inter = bs.intermediate_size;
    DS_ASSIGN_OR_RETURN(b.input_norm,
                        Load(ckpt, l + "input_layernorm.weight", {d}));
    DS_ASSIGN_OR_RETURN(b.post_norm,
                        Load(ckpt, l + "post_attention_layernorm.weight", {d}));
    DS_ASSIGN_OR_RETURN(b.gate_proj,
                        Load(ckpt, l + "mlp.gate_proj.weight", {inter, d}));
    DS_ASSIGN_OR_RETURN(b.up_proj,
                        Load(ckpt, l + "mlp.up_proj.weight", {inter, d}));
    DS_ASSIGN_OR_RETURN(b.down_proj,
                        Load(ckpt, l + "mlp.down_proj.weight", {d, inter}));
    if (bs.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = bs.gdr;
      const std::string m = l + "linear_attn.";
      GatedDeltaRuleWeights& gw = b.gdr;
      if (spec.model_type == "qwen3_next") {
        DS_RETURN_IF_ERROR(LoadGroupedProjections(ckpt, m, g, d, &gw));
      } else {
        DS_ASSIGN_OR_RETURN(gw.in_proj_qkv, Load(ckpt, m + "in_proj_qkv.weight",
                                                 {g.conv_dim(), d}));
        DS_ASSIGN_OR_RETURN(gw.in_proj_z, Load(ckpt, m + "in_proj_z.weight",
                                               {g.value_dim(), d}));
        DS_ASSIGN_OR_RETURN(gw.in_proj_b, Load(ckpt, m + "in_proj_b.weight",
                                               {g.num_v_heads, d}));
        DS_ASSIGN_OR_RETURN(gw.in_proj_a, Load(ckpt, m + "in_proj_a.weight",
                                               {g.num_v_heads, d}));
      }
      DS_ASSIGN_OR_RETURN(gw.conv, Load(ckpt, m + "conv1d.weight",
                                        {g.conv_dim(), 1, g.conv_kernel}));
      gw.conv.shape = {g.conv_dim(), g.conv_kernel};
      DS_ASSIGN_OR_RETURN(gw.a_log, Load(ckpt, m + "A_log", {g.num_v_heads}));
      DS_ASSIGN_OR_RETURN(gw.dt_bias,
                          Load(ckpt, m + "dt_bias", {g.num_v_heads}));
      DS_ASSIGN_OR_RETURN(gw.norm,
                          Load(ckpt, m + "norm.weight", {g.head_v_dim}));
      DS_ASSIGN_OR_RETURN(
          gw.out_proj, Load(ckpt, m + "out_proj.weight", {d, g.value_dim()}));
    } else {
      const AttentionSpec& a = bs.attention;
      const std::string m = l + "self_attn.";
      AttentionWeights& aw = b.attention;
      const int64_t q_rows =
          int64_t{a.num_heads} * a.head_dim * (a.output_gate ? 2 : 1);
      const int64_t kv_rows = int64_t{a.num_kv_heads} * a.head_dim;
      DS_ASSIGN_OR_RETURN(aw.q_proj,
                          Load(ckpt, m + "q_proj.weight", {q_rows, d}));
      DS_ASSIGN_OR_RETURN(aw.k_proj,
                          Load(ckpt, m + "k_proj.weight", {kv_rows, d}));
      DS_ASSIGN_OR_RETURN(aw.v_proj,
                          Load(ckpt, m + "v_proj.weight", {kv_rows, d}));
      DS_ASSIGN_OR_RETURN(aw.o_proj,
                          Load(ckpt, m + "o_proj.weight",
                               {d, int64_t{a.num_heads} * a.head_dim}));
      if (a.qk_norm) {
        DS_ASSIGN_OR_RETURN(aw.q_norm,
                            Load(ckpt, m + "q_norm.weight", {a.head_dim}));
        DS_ASSIGN_OR_RETURN(aw.k_norm,
                            Load(ckpt, m + "k_norm.weight", {a.head_dim}));
      }
    }
    w.blocks.push_back(std::move(b));
  }
  return w;
}

int64_t Count(const Weight& w) { return w.numel(); }

// Every weight of a block, for walking them all.
std::vector<Weight*> BlockWeightList(BlockWeights& b) {
  return {&b.input_norm,       &b.post_norm,        &b.gate_proj,
          &b.up_proj,          &b.down_proj,        &b.gdr.in_proj_qkv,
          &b.gdr.in_proj_z,    &b.gdr.in_proj_b,    &b.gdr.in_proj_a,
          &b.gdr.conv,         &b.gdr.a_log,        &b.gdr.dt_bias,
          &b.gdr.norm,         &b.gdr.out_proj,     &b.attention.q_proj,
          &b.attention.k_proj, &b.attention.v_proj, &b.attention.o_proj,
          &b.attention.q_norm, &b.attention.k_norm, &b.linear.q_proj,
          &b.linear.k_proj,    &b.linear.v_proj,    &b.linear.g_proj,
          &b.linear.r_proj,    &b.linear.norm,      &b.linear.o_proj};
}

// Copies one weight into `memory` as `dtype`.
absl::Status Upload(const Weight& host, DeviceMemory* memory, DType dtype,
                    Stream stream, Weight* out) {
  out->shape = host.shape;
  out->data.clear();
  out->device.reset();
  if (host.data.empty()) return absl::OkStatus();
  const int64_t n = static_cast<int64_t>(host.data.size());
  DS_ASSIGN_OR_RETURN(Buffer b, Buffer::Allocate(memory, n * DTypeSize(dtype)));
  if (dtype == DType::kBF16) {
    // Converted in pieces to bound the host staging memory.
    constexpr int64_t kPiece = int64_t{1} << 22;
    std::vector<uint16_t> staging(std::min(n, kPiece));
    for (int64_t i = 0; i < n; i += kPiece) {
      const int64_t m = std::min(kPiece, n - i);
      for (int64_t j = 0; j < m; ++j) staging[j] = F32ToBf16(host.data[i + j]);
      DS_RETURN_IF_ERROR(memory->Copy(static_cast<uint16_t*>(b.data()) + i,
                                      staging.data(), m * 2, stream));
    }
  } else {
    DS_RETURN_IF_ERROR(memory->Copy(b.data(), host.data.data(), n * 4, stream));
  }
  out->device = std::make_shared<Buffer>(std::move(b));
  out->device_dtype = dtype;
  return absl::OkStatus();
}

}  // namespace

int64_t Weight::numel() const {
  if (!data.empty()) return static_cast<int64_t>(data.size());
  if (device == nullptr) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TensorView Weight::view() const {
  const int64_t n = numel();
  if (device != nullptr) {
    if (shape.size() == 1) {
      return device->View(device_dtype, {shape[0]});
    }
    const int64_t cols = shape.back();
    return device->View(device_dtype, {n / cols, cols});
  }
  float* p = const_cast<float*>(data.data());
  if (shape.size() == 1) return TensorView::F32(p, {shape[0]});
  int64_t cols = shape.back();
  return TensorView::F32(p, {n / cols, cols});
}

// The rows of `parts` (matrices of one width, some maybe empty) stacked.
Weight Stacked(std::initializer_list<const Weight*> parts) {
  Weight out;
  int64_t rows = 0, cols = 0;
  for (const Weight* w : parts) {
    if (w->data.empty()) continue;
    cols = w->shape.back();
    rows += w->numel() / cols;
    out.data.insert(out.data.end(), w->data.begin(), w->data.end());
  }
  out.shape = {rows, cols};
  return out;
}

absl::StatusOr<ModelWeights> UploadWeights(const ModelWeights& host,
                                           DeviceMemory* memory,
                                           DType matrix_dtype, Stream stream,
                                           bool fuse) {
  if (matrix_dtype != DType::kF32 && matrix_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights cannot be uploaded as ", DTypeName(matrix_dtype)));
  }
  ModelWeights out;
  DS_RETURN_IF_ERROR(
      Upload(host.embed, memory, matrix_dtype, stream, &out.embed));
  DS_RETURN_IF_ERROR(
      Upload(host.final_norm, memory, DType::kF32, stream, &out.final_norm));
  DS_RETURN_IF_ERROR(
      Upload(host.lm_head, memory, matrix_dtype, stream, &out.lm_head));
  out.blocks.resize(host.blocks.size());
  for (size_t i = 0; i < host.blocks.size(); ++i) {
    BlockWeights& hb = const_cast<BlockWeights&>(host.blocks[i]);
    const std::vector<Weight*> from = BlockWeightList(hb);
    const std::vector<Weight*> to = BlockWeightList(out.blocks[i]);
    BlockWeights& ob = out.blocks[i];
    const bool fuse_gdr = fuse && !hb.gdr.in_proj_qkv.empty();
    const bool fuse_mlp = fuse && !hb.gate_proj.empty();
    for (size_t j = 0; j < from.size(); ++j) {
      const Weight* w = from[j];
      if ((fuse_gdr && (w == &hb.gdr.in_proj_qkv || w == &hb.gdr.in_proj_z ||
                        w == &hb.gdr.in_proj_b || w == &hb.gdr.in_proj_a)) ||
          (fuse_mlp && (w == &hb.gate_proj || w == &hb.up_proj))) {
        continue;  // uploaded stacked below
      }
      // Matrices feed GEMMs; vectors and the conv taps stay f32.
      const bool matrix = w->shape.size() == 2 && w != &hb.gdr.conv;
      DS_RETURN_IF_ERROR(Upload(*w, memory, matrix ? matrix_dtype : DType::kF32,
                                stream, to[j]));
    }
    if (fuse_gdr) {
      DS_RETURN_IF_ERROR(Upload(Stacked({&hb.gdr.in_proj_qkv, &hb.gdr.in_proj_z,
                                         &hb.gdr.in_proj_b, &hb.gdr.in_proj_a}),
                                memory, matrix_dtype, stream,
                                &ob.gdr.in_proj_all));
    }
    if (fuse_mlp) {
      DS_RETURN_IF_ERROR(Upload(Stacked({&hb.gate_proj, &hb.up_proj}), memory,
                                matrix_dtype, stream, &ob.gate_up));
    }
  }
  return out;
}

int64_t ModelWeights::NumParameters() const {
  int64_t n = Count(embed) + Count(final_norm) + Count(lm_head);
  for (const BlockWeights& b : blocks) {
    for (const Weight* w :
         {&b.input_norm,       &b.post_norm,        &b.gate_proj,
          &b.up_proj,          &b.down_proj,        &b.gdr.in_proj_qkv,
          &b.gdr.in_proj_z,    &b.gdr.in_proj_b,    &b.gdr.in_proj_a,
          &b.gdr.conv,         &b.gdr.a_log,        &b.gdr.dt_bias,
          &b.gdr.norm,         &b.gdr.out_proj,     &b.attention.q_proj,
          &b.attention.k_proj, &b.attention.v_proj, &b.attention.o_proj,
          &b.attention.q_norm, &b.attention.k_norm, &b.linear.q_proj,
          &b.linear.k_proj,    &b.linear.v_proj,    &b.linear.g_proj,
          &b.linear.r_proj,    &b.linear.norm,      &b.linear.o_proj}) {
      n += Count(*w);
    }
  }
  return n;
}

namespace {

// The projections and output norm of a linear or power attention layer,
// under `m` ("model.layers.{i}.attn."). fla's linear_attn calls its output
// norm `norm`; power_attn (engine/model/README.md) calls it `o_norm`.
absl::Status LoadLinearAttention(const Checkpoint& ckpt, const std::string& m,
                                 const LinearAttentionSpec& s, int64_t d,
                                 LinearAttentionWeights* w) {
  const int64_t h = s.num_heads, hkv = s.num_kv_heads;
  const int64_t dk = s.head_k_dim, dv = s.head_v_dim;
  DS_ASSIGN_OR_RETURN(w->q_proj, Load(ckpt, m + "q_proj.weight", {h * dk, d}));
  DS_ASSIGN_OR_RETURN(w->k_proj,
                      Load(ckpt, m + "k_proj.weight", {hkv * dk, d}));
  DS_ASSIGN_OR_RETURN(w->v_proj,
                      Load(ckpt, m + "v_proj.weight", {hkv * dv, d}));
  DS_ASSIGN_OR_RETURN(w->o_proj, Load(ckpt, m + "o_proj.weight", {d, h * dv}));
  if (s.degree > 0 && s.gating) {
    DS_ASSIGN_OR_RETURN(w->g_proj, Load(ckpt, m + "g_proj.weight", {hkv, d}));
  }
  if (s.degree > 0 && s.rotary) {
    DS_ASSIGN_OR_RETURN(w->r_proj, Load(ckpt, m + "r_proj.weight", {hkv, d}));
  }
  if (s.norm_affine) {
    const std::string norm = s.degree > 0 ? "o_norm.weight" : "norm.weight";
    DS_ASSIGN_OR_RETURN(w->norm, Load(ckpt, m + norm, {dv}));
  } else {
    w->norm.shape = {dv};
    w->norm.data.assign(dv, 1.0f);
  }
  return absl::OkStatus();
}

// fla names (delta_net, gated_deltanet, linear_attn, and deltaserve's
// power_attn): `model.embeddings`, per layer
// `attn_norm`, `attn.*`, `mlp_norm`, `mlp.*`. The recurrent layers' separate
// q/k/v projections and short convolutions are stacked into the engine's
// q, k, v channels (a depthwise convolution is per channel, so stacking is
// exact).
absl::StatusOr<ModelWeights> LoadFla(const ModelSpec& spec,
                                     const Checkpoint& ckpt) {
  const int64_t d = spec.hidden_size;
  const int64_t v = spec.vocab_size;
  ModelWeights w;
  DS_ASSIGN_OR_RETURN(w.embed, Load(ckpt, "model.embeddings.weight", {v, d}));
  DS_ASSIGN_OR_RETURN(w.final_norm, Load(ckpt, "model.norm.weight", {d}));
  if (!spec.tie_word_embeddings || ckpt.Find("lm_head.weight") != nullptr) {
    DS_ASSIGN_OR_RETURN(w.lm_head, Load(ckpt, "lm_head.weight", {v, d}));
  }
  for (int i = 0; i < spec.num_layers(); ++i) {
    const BlockSpec& bs = spec.blocks[i];
    const std::string l = absl::StrCat("model.layers.", i, ".");
    const std::string m = l + "attn.";
    BlockWeights b;
    const int64_t inter = bs.intermediate_size;
    DS_ASSIGN_OR_RETURN(b.input_norm, Load(ckpt, l + "attn_norm.weight", {d}));
    DS_ASSIGN_OR_RETURN(b.post_norm, Load(ckpt, l + "mlp_norm.weight", {d}));
    DS_ASSIGN_OR_RETURN(b.gate_proj,
                        Load(ckpt, l + "mlp.gate_proj.weight", {inter, d}));
    DS_ASSIGN_OR_RETURN(b.up_proj,
                        Load(ckpt, l + "mlp.up_proj.weight", {inter, d}));
    DS_ASSIGN_OR_RETURN(b.down_proj,
                        Load(ckpt, l + "mlp.down_proj.weight", {d, inter}));
    if (bs.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = bs.gdr;
      GatedDeltaRuleWeights& gw = b.gdr;
      const int64_t kd = g.key_dim(), vd = g.value_dim(), hv = g.num_v_heads;
      const int64_t kw = g.conv_kernel;
      for (const auto& [name, rows] :
           {std::pair<const char*, int64_t>{"q", kd}, {"k", kd}, {"v", vd}}) {
        DS_ASSIGN_OR_RETURN(
            Weight proj,
            Load(ckpt, absl::StrCat(m, name, "_proj.weight"), {rows, d}));
        AppendRows(proj, 0, rows, &gw.in_proj_qkv);
        DS_ASSIGN_OR_RETURN(
            Weight conv,
            Load(ckpt, absl::StrCat(m, name, "_conv1d.weight"), {rows, 1, kw}));
        conv.shape = {rows, kw};
        AppendRows(conv, 0, rows, &gw.conv);
      }
      DS_ASSIGN_OR_RETURN(gw.in_proj_b,
                          Load(ckpt, m + "b_proj.weight", {hv, d}));
      if (g.use_decay) {
        DS_ASSIGN_OR_RETURN(gw.in_proj_a,
                            Load(ckpt, m + "a_proj.weight", {hv, d}));
        DS_ASSIGN_OR_RETURN(gw.a_log, Load(ckpt, m + "A_log", {hv}));
        DS_ASSIGN_OR_RETURN(gw.dt_bias, Load(ckpt, m + "dt_bias", {hv}));
      } else {
        // DeltaNet has no decay; the gates kernel still reads these (its
        // decay output goes unused).
        gw.a_log.shape = gw.dt_bias.shape = {hv};
        gw.a_log.data.assign(hv, 0.0f);
        gw.dt_bias.data.assign(hv, 0.0f);
      }
      if (g.output_gate) {
        DS_ASSIGN_OR_RETURN(gw.in_proj_z,
                            Load(ckpt, m + "g_proj.weight", {vd, d}));
      }
      // Older checkpoints call the output norm `norm`.
      const std::string norm = ckpt.Find(m + "o_norm.weight") == nullptr &&
                                       ckpt.Find(m + "norm.weight") != nullptr
                                   ? m + "norm.weight"
                                   : m + "o_norm.weight";
      DS_ASSIGN_OR_RETURN(gw.norm, Load(ckpt, norm, {g.head_v_dim}));
      DS_ASSIGN_OR_RETURN(gw.out_proj,
                          Load(ckpt, m + "o_proj.weight", {d, vd}));
    } else if (bs.mixer == MixerKind::kLinearAttention ||
               bs.mixer == MixerKind::kPowerAttention) {
      DS_RETURN_IF_ERROR(LoadLinearAttention(ckpt, m, bs.linear, d, &b.linear));
    } else {
      const AttentionSpec& a = bs.attention;
      AttentionWeights& aw = b.attention;
      const int64_t qd = int64_t{a.num_heads} * a.head_dim;
      const int64_t kvd = int64_t{a.num_kv_heads} * a.head_dim;
      DS_ASSIGN_OR_RETURN(aw.q_proj, Load(ckpt, m + "q_proj.weight", {qd, d}));
      DS_ASSIGN_OR_RETURN(aw.k_proj, Load(ckpt, m + "k_proj.weight", {kvd, d}));
      DS_ASSIGN_OR_RETURN(aw.v_proj, Load(ckpt, m + "v_proj.weight", {kvd, d}));
      DS_ASSIGN_OR_RETURN(aw.o_proj, Load(ckpt, m + "o_proj.weight", {d, qd}));
    }
    w.blocks.push_back(std::move(b));
  }
  return w;
}

}  // namespace

absl::Status FillDerivedSizes(const Checkpoint& ckpt, ModelSpec* spec) {
  for (int i = 0; i < spec->num_layers(); ++i) {
    BlockSpec& b = spec->blocks[i];
    if (b.intermediate_size > 0) continue;
    const std::string name =
        absl::StrCat("model.layers.", i, ".mlp.gate_proj.weight");
    DS_ASSIGN_OR_RETURN(const TensorEntry* e, ckpt.Get(name));
    if (e->shape.size() != 2 || e->shape[0] <= 0 ||
        e->shape[1] != spec->hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, " in ", ckpt.dir(), " has shape ", e->ShapeString(),
          ", expected [intermediate_size, ", spec->hidden_size, "]"));
    }
    b.intermediate_size = static_cast<int>(e->shape[0]);
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelSpec& spec,
                                         const Checkpoint& ckpt) {
  if (spec.model_type == "qwen3_5" || spec.model_type == "qwen3_5_text" ||
      spec.model_type == "qwen3_next") {
    return LoadQwenHybrid(spec, ckpt);
  }
  if (spec.model_type == "delta_net" || spec.model_type == "gated_deltanet" ||
      spec.model_type == "linear_attn" || spec.model_type == "power_attn") {
    return LoadFla(spec, ckpt);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("no weight layout for model_type ", spec.model_type));
}

}  // namespace deltaserve
