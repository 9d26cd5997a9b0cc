#include "engine/runner/model_runner.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/layers/linear_layers.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

// Scratch ids of the runner's own buffers (the layers use ids below 20).
enum RunnerScratch {
  kX = 20,
  kXn,
  kLogits,
  kArgmax,
};

// Decode batches are padded to these sizes so that few recordings cover
// every batch: powers of two up to 32, then multiples of 32.
int PaddedBatch(int b) {
  if (b <= 32) {
    int p = 1;
    while (p < b) p *= 2;
    return p;
  }
  return (b + 31) / 32 * 32;
}

int64_t PowerOfTwoAtLeast(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const Model* model, Kernels* kernels, StatePool* pool,
    const Options& options) {
  auto runner = std::unique_ptr<ModelRunner>(
      new ModelRunner(model, kernels, pool, options));
  DeviceMemory* memory = kernels->memory();
  if (memory->device() == Device::kCpu) {
    runner->act_ = DType::kF32;
    runner->weights_ = &model->weights();
  } else {
    runner->act_ = DType::kBF16;
    DS_ASSIGN_OR_RETURN(runner->device_weights_,
                        UploadWeights(model->weights(), memory, DType::kBF16,
                                      kernels->stream(), /*fuse=*/true));
    runner->weights_ = &runner->device_weights_;
  }
  return runner;
}

ModelRunner::ModelRunner(const Model* model, Kernels* kernels, StatePool* pool,
                         const Options& options)
    : model_(model),
      kernels_(kernels),
      pool_(pool),
      options_(options),
      scratch_(kernels) {}

absl::Status ModelRunner::Pack(absl::Span<const SequenceInput> batch, int rows,
                               int64_t global_width, int64_t window_width) {
  const ModelSpec& spec = model_->spec();
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  const int b = static_cast<int>(batch.size());
  int64_t tokens = 0;
  int64_t max_global = 1, max_window = 1;
  decode_ = true;
  bool any_single = false;
  for (const SequenceInput& s : batch) {
    if (s.tokens.empty()) return absl::InvalidArgumentError("empty sequence");
    if (s.tokens.size() != 1) decode_ = false;
    if (s.tokens.size() == 1) any_single = true;
    for (const int32_t id : s.tokens) {
      if (id < 0 || id >= spec.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                         spec.vocab_size, ")"));
      }
    }
    tokens += static_cast<int64_t>(s.tokens.size());
    if (s.pages != nullptr) {
      const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
      const int64_t need = pool_->PagesFor(end);
      if ((pool_->has_global_attention() &&
           static_cast<int64_t>(s.pages->global.size()) < need) ||
          (pool_->window() > 0 &&
           static_cast<int64_t>(s.pages->window.size()) < need)) {
        return absl::InvalidArgumentError("sequence has too few KV pages");
      }
      max_global = std::max<int64_t>(max_global, s.pages->global.size());
      max_window = std::max<int64_t>(max_window, s.pages->window.size());
    }
  }
  mixed_ = !decode_ && any_single;
  const int pad = rows - b;
  const int64_t t = tokens + pad;
  const int64_t gw = std::max(global_width, max_global);
  const int64_t ww = std::max(window_width, max_window);
  Offsets& o = off_;
  o.tokens = t;
  o.seqs = rows;
  o.global_width = gw;
  o.window_width = ww;
  o.ids = 0;
  o.positions = o.ids + t;
  o.cu = o.positions + t;
  o.slots = o.cu + rows + 1;
  o.start_pos = o.slots + rows;
  o.context_lens = o.start_pos + rows;
  o.table = o.context_lens + rows;
  o.window = o.table + rows * gw;
  o.single_slots = o.window + rows * ww;
  o.multi_slots = o.single_slots + rows;
  o.last = o.multi_slots + rows;
  host_idx_.assign(o.last, -1);
  int32_t* h = host_idx_.data();
  last_rows_.resize(rows);
  int64_t row = 0;
  h[o.cu] = 0;
  for (int i = 0; i < rows; ++i) {
    const bool real = i < b;
    const int64_t n = real ? static_cast<int64_t>(batch[i].tokens.size()) : 1;
    const int64_t start = real ? batch[i].start_pos : 0;
    for (int64_t j = 0; j < n; ++j) {
      h[o.ids + row + j] = real ? batch[i].tokens[j] : 0;
      h[o.positions + row + j] = static_cast<int32_t>(start + j);
    }
    row += n;
    h[o.cu + i + 1] = static_cast<int32_t>(row);
    last_rows_[i] = static_cast<int32_t>(row - 1);
    h[o.slots + i] = real ? batch[i].slot : pool_->padding_slot();
    h[o.single_slots + i] = n == 1 ? h[o.slots + i] : -1;
    h[o.multi_slots + i] = n == 1 ? -1 : h[o.slots + i];
    h[o.start_pos + i] = static_cast<int32_t>(start);
    h[o.context_lens + i] = static_cast<int32_t>(start + n);
    if (real && batch[i].pages != nullptr) {
      std::copy(batch[i].pages->global.begin(), batch[i].pages->global.end(),
                h + o.table + i * gw);
      std::copy(batch[i].pages->window.begin(), batch[i].pages->window.end(),
                h + o.window + i * ww);
    } else if (!real) {
      h[o.table + i * gw] = pool_->padding_page();
      h[o.window + i * ww] = pool_->padding_page();
    }
  }
  return absl::OkStatus();
}

void ModelRunner::Layout(void* device_idx, BatchLayout* layout) const {
  const Device dev = kernels_->memory()->device();
  int32_t* base = static_cast<int32_t*>(device_idx);
  auto view = [&](int64_t offset, std::initializer_list<int64_t> shape) {
    return TensorView::Contiguous(base + offset, DType::kI32, shape, dev);
  };
  const Offsets& o = off_;
  layout->num_tokens = o.tokens;
  layout->num_seqs = static_cast<int>(o.seqs);
  layout->decode = decode_;
  layout->mixed = mixed_;
  layout->ids = view(o.ids, {o.tokens});
  layout->positions = view(o.positions, {o.tokens});
  layout->cu_seqlens = view(o.cu, {o.seqs + 1});
  layout->slots = view(o.slots, {o.seqs});
  layout->single_slots = view(o.single_slots, {o.seqs});
  layout->multi_slots = view(o.multi_slots, {o.seqs});
  layout->start_pos = view(o.start_pos, {o.seqs});
  layout->context_lens = view(o.context_lens, {o.seqs});
  layout->page_table = view(o.table, {o.seqs, o.global_width});
  layout->window_page_table = view(o.window, {o.seqs, o.window_width});
}

absl::Status ModelRunner::Run(const BatchLayout& layout, bool all_logits,
                              bool argmax) {
  const ModelSpec& spec = model_->spec();
  const ModelWeights& w = *weights_;
  DeviceMemory* memory = kernels_->memory();
  const Device dev = memory->device();
  const Stream stream = kernels_->stream();
  const int64_t t = layout.num_tokens;
  const int64_t b = layout.num_seqs;
  const int64_t d = spec.hidden_size;
  const int64_t es = DTypeSize(act_);
  // The residual stream and the mixers' and MLP's outputs stay f32; the
  // normed rows that feed the matrix products are activations (bf16 on the
  // GPU).
  const int64_t rs = 4;
  LayerContext ctx;
  ctx.kernels = kernels_;
  ctx.stream = stream;
  ctx.scratch = &scratch_;
  ctx.batch = &layout;
  ctx.rms_norm_eps = spec.rms_norm_eps;
  ctx.norm_zero_centered = spec.norm_zero_centered;
  ctx.act = act_;
  ctx.memory = memory;
  DS_ASSIGN_OR_RETURN(void* x_p, scratch_.Get(kX, t * d * rs));
  DS_ASSIGN_OR_RETURN(void* xn_p, scratch_.Get(kXn, t * d * es));
  auto act = [&](void* p, int64_t rows) {
    return TensorView::Contiguous(p, act_, {rows, d}, dev);
  };
  auto residual = [&](void* p, int64_t rows) {
    return TensorView::Contiguous(p, DType::kF32, {rows, d}, dev);
  };
  const TensorView x = residual(x_p, t);
  const TensorView xn = act(xn_p, t);
  Kernels& k = *kernels_;
  DS_RETURN_IF_ERROR(k.Embedding(layout.ids, w.embed.view(), x, stream));
  for (int l = 0; l < spec.num_layers(); ++l) {
    const BlockSpec& bs = spec.blocks[l];
    const BlockWeights& bw = w.blocks[l];
    DS_RETURN_IF_ERROR(k.RmsNorm(x, bw.input_norm.view(), spec.rms_norm_eps,
                                 spec.norm_zero_centered, xn, stream));
    switch (bs.mixer) {
      case MixerKind::kGatedDeltaRule:
        DS_RETURN_IF_ERROR(GatedDeltaRuleForward(ctx, bs.gdr, bw.gdr,
                                                 pool_->gdr_state(l),
                                                 pool_->conv_state(l), xn, x));
        break;
      case MixerKind::kGlobalAttention:
      case MixerKind::kSlidingWindowAttention:
        DS_RETURN_IF_ERROR(AttentionForward(ctx, bs.attention, bw.attention,
                                            pool_->k_pages(l),
                                            pool_->v_pages(l), xn, x));
        break;
      case MixerKind::kLinearAttention:
        DS_RETURN_IF_ERROR(LinearAttentionForward(
            ctx, bs.linear, bw.linear, pool_->gdr_state(l),
            pool_->normalizer_state(l), xn, x));
        break;
      case MixerKind::kPowerAttention:
        DS_RETURN_IF_ERROR(PowerAttentionForward(
            ctx, bs.linear, bw.linear, pool_->gdr_state(l),
            pool_->normalizer_state(l), pool_->angle_state(l), xn, x));
        break;
      default:
        return absl::UnimplementedError(
            absl::StrCat("layer ", l, ": token mixer ", MixerKindName(bs.mixer),
                         " is not supported by this runner"));
    }
    DS_RETURN_IF_ERROR(k.RmsNorm(x, bw.post_norm.view(), spec.rms_norm_eps,
                                 spec.norm_zero_centered, xn, stream));
    DS_RETURN_IF_ERROR(SwiGluMlpForward(ctx, bs.intermediate_size, bw, xn, x));
  }
  // Rows whose logits are wanted: each sequence's last token, moved to the
  // front (a no-op for decode steps).
  int64_t rows = t;
  if (!all_logits) {
    rows = b;
    for (int64_t i = 0; i < b; ++i) {
      if (last_rows_[i] != i) {
        DS_RETURN_IF_ERROR(memory->Copy(
            static_cast<char*>(x_p) + i * d * rs,
            static_cast<char*>(x_p) + last_rows_[i] * d * rs, d * rs, stream));
      }
    }
  }
  DS_RETURN_IF_ERROR(k.RmsNorm(residual(x_p, rows), w.final_norm.view(),
                               spec.rms_norm_eps, spec.norm_zero_centered,
                               act(xn_p, rows), stream));
  const int64_t v = spec.vocab_size;
  DS_ASSIGN_OR_RETURN(void* logits_p, scratch_.Get(kLogits, rows * v * 4));
  const TensorView logits =
      TensorView::Contiguous(logits_p, DType::kF32, {rows, v}, dev);
  DS_RETURN_IF_ERROR(
      k.Gemm(act(xn_p, rows), w.LmHead().view(), logits, false, stream));
  if (argmax) {
    DS_ASSIGN_OR_RETURN(void* am, scratch_.Get(kArgmax, rows * 4));
    DS_RETURN_IF_ERROR(k.Argmax(
        logits, TensorView::Contiguous(am, DType::kI32, {rows}, dev), stream));
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Collect(int64_t rows, const ForwardRequest& request,
                                  ForwardOutput* out) {
  DeviceMemory* memory = kernels_->memory();
  const Stream stream = kernels_->stream();
  const int64_t v = model_->spec().vocab_size;
  DS_ASSIGN_OR_RETURN(void* logits_p, scratch_.Get(kLogits, rows * v * 4));
  const float* logits = static_cast<const float*>(logits_p);
  if (request.logits_rows == nullptr) {
    out->logits.resize(rows * v);
    DS_RETURN_IF_ERROR(
        memory->Copy(out->logits.data(), logits, rows * v * 4, stream));
  } else {
    const std::vector<int>& want = *request.logits_rows;
    out->logits.resize(want.size() * v);
    for (size_t i = 0; i < want.size(); ++i) {
      if (want[i] < 0 || want[i] >= rows) {
        return absl::InvalidArgumentError(
            absl::StrCat("logits row ", want[i], " is not in [0, ", rows, ")"));
      }
      DS_RETURN_IF_ERROR(memory->Copy(out->logits.data() + i * v,
                                      logits + want[i] * v, v * 4, stream));
    }
  }
  if (request.argmax) {
    DS_ASSIGN_OR_RETURN(void* am, scratch_.Get(kArgmax, rows * 4));
    out->argmax.resize(rows);
    DS_RETURN_IF_ERROR(memory->Copy(out->argmax.data(), am, rows * 4, stream));
  }
  return kernels_->Synchronize(stream);
}

absl::Status ModelRunner::SampleRows(int64_t rows,
                                     const ForwardRequest& request,
                                     ForwardOutput* out) {
  out->sampled.clear();
  if (request.samples == nullptr || request.samples->empty()) {
    return absl::OkStatus();
  }
  const std::vector<RowSample>& samples = *request.samples;
  int lo = samples[0].row, hi = samples[0].row;
  for (const RowSample& s : samples) {
    if (s.row < 0 || s.row >= rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample row ", s.row, " is not in [0, ", rows, ")"));
    }
    lo = std::min(lo, s.row);
    hi = std::max(hi, s.row);
  }
  // Rows lo..hi in one call; rows in between that are not sampled are
  // greedy (temperature 0) and ignored.
  const int64_t n = hi - lo + 1;
  host_sample_.assign(5 * n, 0);
  uint32_t* h = host_sample_.data();
  auto put_f32 = [](uint32_t* dst, float v) { std::memcpy(dst, &v, 4); };
  for (int64_t i = 0; i < n; ++i) put_f32(h + 2 * n + i, 1.0f);  // top_p
  std::vector<bool> seen(n, false);
  for (const RowSample& s : samples) {
    const int64_t i = s.row - lo;
    if (seen[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample row ", s.row, " is given twice"));
    }
    seen[i] = true;
    put_f32(h + i, s.temperature);
    h[n + i] = static_cast<uint32_t>(s.top_k);
    put_f32(h + 2 * n + i, s.top_p);
    put_f32(h + 3 * n + i, s.uniform);
  }
  DeviceMemory* memory = kernels_->memory();
  const Device dev = memory->device();
  const Stream stream = kernels_->stream();
  DS_RETURN_IF_ERROR(EnsureBuffer(memory, 5 * n * 4, &sample_buf_));
  DS_RETURN_IF_ERROR(memory->Copy(sample_buf_.data(), h, 4 * n * 4, stream));
  const int64_t v = model_->spec().vocab_size;
  DS_ASSIGN_OR_RETURN(void* logits_p, scratch_.Get(kLogits, rows * v * 4));
  uint32_t* d = static_cast<uint32_t*>(sample_buf_.data());
  auto vec = [&](int64_t k, DType dtype) {
    return TensorView::Contiguous(d + k * n, dtype, {n}, dev);
  };
  DS_RETURN_IF_ERROR(kernels_->SampleTokens(
      TensorView::Contiguous(static_cast<float*>(logits_p) + lo * v,
                             DType::kF32, {n, v}, dev),
      vec(0, DType::kF32), vec(1, DType::kI32), vec(2, DType::kF32),
      vec(3, DType::kF32), vec(4, DType::kI32), stream));
  DS_RETURN_IF_ERROR(memory->Copy(h + 4 * n, d + 4 * n, n * 4, stream));
  out->sampled.resize(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    out->sampled[i] = static_cast<int32_t>(h[4 * n + samples[i].row - lo]);
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Forward(absl::Span<const SequenceInput> batch,
                                  const ForwardRequest& request,
                                  ForwardOutput* out) {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  const int b = static_cast<int>(batch.size());
  bool decode = true;
  int64_t max_global = 1, max_window = 1;
  for (const SequenceInput& s : batch) {
    if (s.tokens.size() != 1) decode = false;
    if (s.pages != nullptr) {
      max_global = std::max<int64_t>(max_global, s.pages->global.size());
      max_window = std::max<int64_t>(max_window, s.pages->window.size());
    }
  }
  const bool record = options_.record_decode && decode && !request.all_logits &&
                      b <= options_.max_recorded_batch &&
                      kernels_->memory()->device() != Device::kCpu;
  DeviceMemory* memory = kernels_->memory();
  const Stream stream = kernels_->stream();
  if (!record) {
    DS_RETURN_IF_ERROR(Pack(batch, b, 0, 0));
    DS_RETURN_IF_ERROR(EnsureBuffer(memory, idx_bytes(), &idx_));
    DS_RETURN_IF_ERROR(
        memory->Copy(idx_.data(), host_idx_.data(), idx_bytes(), stream));
    BatchLayout layout;
    Layout(idx_.data(), &layout);
    DS_RETURN_IF_ERROR(Run(layout, request.all_logits, request.argmax));
    const int64_t rows = request.all_logits ? layout.num_tokens : b;
    DS_RETURN_IF_ERROR(SampleRows(rows, request, out));
    return Collect(rows, request, out);
  }
  const int rows = PaddedBatch(b);
  const int64_t gw = PowerOfTwoAtLeast(max_global);
  const int64_t ww = PowerOfTwoAtLeast(max_window);
  DS_RETURN_IF_ERROR(Pack(batch, rows, gw, ww));
  Recording& rec = recordings_map_[RecordingKey(rows, gw, ww)];
  DS_RETURN_IF_ERROR(EnsureBuffer(memory, idx_bytes(), &rec.idx));
  DS_RETURN_IF_ERROR(
      memory->Copy(rec.idx.data(), host_idx_.data(), idx_bytes(), stream));
  ForwardRequest all = request;
  all.argmax = true;
  if (rec.work != nullptr && rec.generation == scratch_.generation()) {
    DS_RETURN_IF_ERROR(rec.work->Replay(stream));
    ++replayed_steps_;
    DS_RETURN_IF_ERROR(SampleRows(b, request, out));
    DS_RETURN_IF_ERROR(Collect(b, all, out));
  } else {
    // First step of this shape (or its buffers moved): run it directly,
    // which also sizes every buffer, then record it for the next ones.
    rec.work.reset();
    BatchLayout layout;
    Layout(rec.idx.data(), &layout);
    DS_RETURN_IF_ERROR(Run(layout, false, true));
    DS_RETURN_IF_ERROR(SampleRows(b, request, out));
    DS_RETURN_IF_ERROR(Collect(b, all, out));
    const int64_t generation = scratch_.generation();
    absl::StatusOr<std::unique_ptr<RecordedWork>> work =
        kernels_->Record(stream, [&]() { return Run(layout, false, true); });
    if (!work.ok()) {
      // Recording is an optimisation: without it steps run directly.
      recording_status_ = work.status();
      std::fprintf(stderr,
                   "deltaserve: recording a decode step failed (%s); decode "
                   "steps run without CUDA graphs from now on\n",
                   work.status().ToString().c_str());
      options_.record_decode = false;
      recordings_map_.clear();
    } else if (generation == scratch_.generation()) {
      rec.work = *std::move(work);
      rec.generation = generation;
      ++recordings_;
    }
  }
  if (!request.argmax) out->argmax.clear();
  out->argmax.resize(request.argmax ? b : 0);
  return absl::OkStatus();
}

absl::Status ModelRunner::Forward(absl::Span<const SequenceInput> batch,
                                  bool all_logits, std::vector<float>* logits) {
  ForwardRequest request;
  request.all_logits = all_logits;
  ForwardOutput out;
  DS_RETURN_IF_ERROR(Forward(batch, request, &out));
  *logits = std::move(out.logits);
  return absl::OkStatus();
}

}  // namespace deltaserve
