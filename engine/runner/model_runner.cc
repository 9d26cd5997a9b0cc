#include "engine/runner/model_runner.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/status.h"

namespace deltaserve {

ModelRunner::ModelRunner(const Model* model, Kernels* kernels, StatePool* pool)
    : model_(model), kernels_(kernels), pool_(pool) {}

absl::Status ModelRunner::Forward(absl::Span<const SequenceInput> batch,
                                  bool all_logits, std::vector<float>* logits) {
  const ModelSpec& spec = model_->spec();
  const ModelWeights& w = model_->weights();
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  const int b = static_cast<int>(batch.size());
  ids_.clear();
  positions_.clear();
  cu_seqlens_.assign(1, 0);
  slots_.clear();
  start_pos_.clear();
  context_lens_.clear();
  size_t max_global = 1, max_window = 1;
  bool decode = true;
  for (const SequenceInput& s : batch) {
    if (s.tokens.empty()) return absl::InvalidArgumentError("empty sequence");
    if (s.tokens.size() != 1) decode = false;
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int32_t id = s.tokens[i];
      if (id < 0 || id >= spec.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                         spec.vocab_size, ")"));
      }
      ids_.push_back(id);
      positions_.push_back(static_cast<int32_t>(s.start_pos + i));
    }
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (s.pages != nullptr) {
      const int64_t need = pool_->PagesFor(end);
      if ((pool_->has_global_attention() &&
           static_cast<int64_t>(s.pages->global.size()) < need) ||
          (pool_->window() > 0 &&
           static_cast<int64_t>(s.pages->window.size()) < need)) {
        return absl::InvalidArgumentError("sequence has too few KV pages");
      }
      max_global = std::max(max_global, s.pages->global.size());
      max_window = std::max(max_window, s.pages->window.size());
    }
    cu_seqlens_.push_back(static_cast<int32_t>(ids_.size()));
    slots_.push_back(s.slot);
    start_pos_.push_back(static_cast<int32_t>(s.start_pos));
    context_lens_.push_back(static_cast<int32_t>(end));
  }
  // Unused entries are −1 (kernels read only the pages a query can see).
  page_table_.assign(b * max_global, -1);
  window_page_table_.assign(b * max_window, -1);
  for (int i = 0; i < b; ++i) {
    if (batch[i].pages != nullptr) {
      std::copy(batch[i].pages->global.begin(), batch[i].pages->global.end(),
                page_table_.begin() + i * max_global);
      std::copy(batch[i].pages->window.begin(), batch[i].pages->window.end(),
                window_page_table_.begin() + i * max_window);
    }
  }
  const int64_t t = static_cast<int64_t>(ids_.size());
  const int64_t d = spec.hidden_size;
  BatchLayout layout;
  layout.num_tokens = t;
  layout.num_seqs = b;
  layout.decode = decode;
  layout.positions = TensorView::I32(positions_.data(), {t});
  layout.cu_seqlens = TensorView::I32(cu_seqlens_.data(), {b + 1});
  layout.slots = TensorView::I32(slots_.data(), {b});
  layout.page_table = TensorView::I32(page_table_.data(),
                                      {b, static_cast<int64_t>(max_global)});
  layout.window_page_table = TensorView::I32(
      window_page_table_.data(), {b, static_cast<int64_t>(max_window)});
  layout.start_pos = TensorView::I32(start_pos_.data(), {b});
  layout.context_lens = TensorView::I32(context_lens_.data(), {b});
  LayerContext ctx;
  ctx.kernels = kernels_;
  ctx.scratch = &scratch_;
  ctx.batch = &layout;
  ctx.rms_norm_eps = spec.rms_norm_eps;
  ctx.norm_zero_centered = spec.norm_zero_centered;

  x_.resize(t * d);
  xn_.resize(t * d);
  mix_.resize(t * d);
  const TensorView x = TensorView::F32(x_.data(), {t, d});
  const TensorView xn = TensorView::F32(xn_.data(), {t, d});
  const TensorView mix = TensorView::F32(mix_.data(), {t, d});
  Kernels& k = *kernels_;
  DS_RETURN_IF_ERROR(k.Embedding(TensorView::I32(ids_.data(), {t}),
                                 w.embed.view(), x, ctx.stream));
  for (int l = 0; l < spec.num_layers(); ++l) {
    const BlockSpec& bs = spec.blocks[l];
    const BlockWeights& bw = w.blocks[l];
    DS_RETURN_IF_ERROR(k.RmsNorm(x, bw.input_norm.view(), spec.rms_norm_eps,
                                 spec.norm_zero_centered, xn, ctx.stream));
    switch (bs.mixer) {
      case MixerKind::kGatedDeltaRule:
        DS_RETURN_IF_ERROR(
            GatedDeltaRuleForward(ctx, bs.gdr, bw.gdr, pool_->gdr_state(l),
                                  pool_->conv_state(l), xn, mix));
        break;
      case MixerKind::kGlobalAttention:
      case MixerKind::kSlidingWindowAttention:
        DS_RETURN_IF_ERROR(AttentionForward(ctx, bs.attention, bw.attention,
                                            pool_->k_pages(l),
                                            pool_->v_pages(l), xn, mix));
        break;
      default:
        return absl::UnimplementedError(
            absl::StrCat("layer ", l, ": token mixer ", MixerKindName(bs.mixer),
                         " is not supported by this runner"));
    }
    DS_RETURN_IF_ERROR(k.Add(x, mix, x, ctx.stream));
    DS_RETURN_IF_ERROR(k.RmsNorm(x, bw.post_norm.view(), spec.rms_norm_eps,
                                 spec.norm_zero_centered, xn, ctx.stream));
    DS_RETURN_IF_ERROR(
        SwiGluMlpForward(ctx, bs.intermediate_size, bw, xn, mix));
    DS_RETURN_IF_ERROR(k.Add(x, mix, x, ctx.stream));
  }
  // Rows whose logits are wanted.
  int64_t rows = t;
  if (!all_logits) {
    rows = b;
    for (int i = 0; i < b; ++i) {
      if (cu_seqlens_[i + 1] - 1 != i) {
        std::memcpy(x_.data() + i * d, x_.data() + (cu_seqlens_[i + 1] - 1) * d,
                    d * sizeof(float));
      }
    }
  }
  const TensorView xr = TensorView::F32(x_.data(), {rows, d});
  const TensorView xnr = TensorView::F32(xn_.data(), {rows, d});
  DS_RETURN_IF_ERROR(k.RmsNorm(xr, w.final_norm.view(), spec.rms_norm_eps,
                               spec.norm_zero_centered, xnr, ctx.stream));
  logits->resize(rows * spec.vocab_size);
  DS_RETURN_IF_ERROR(
      k.Gemm(xnr, w.LmHead().view(),
             TensorView::F32(logits->data(), {rows, spec.vocab_size}), false,
             ctx.stream));
  return k.Synchronize(ctx.stream);
}

}  // namespace deltaserve
