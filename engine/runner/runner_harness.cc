#include "engine/runner/runner_harness.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "gtest/gtest.h"
#include "kernels/memory.h"

namespace deltaserve {

double RelErr(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / den);
}

int32_t ArgmaxOf(const float* row, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return best;
}

std::vector<int32_t> I64ToI32(const TensorEntry& e) {
  std::vector<int32_t> out(e.numel());
  for (int64_t i = 0; i < e.numel(); ++i) {
    int64_t v;
    std::memcpy(&v, e.data + 8 * i, 8);
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

std::vector<float> F32Of(const TensorEntry& e) {
  std::vector<float> out(e.numel());
  EXPECT_TRUE(ToF32(e, out.data(), out.size()).ok());
  return out;
}

RunnerHarness::RunnerHarness(std::shared_ptr<const Model> model,
                             std::unique_ptr<Kernels> kernels,
                             const Options& options)
    : model_(std::move(model)), kernels_(std::move(kernels)) {
  StatePool::Options po;
  po.max_slots = options.max_slots;
  po.kv_capacity_tokens = options.kv_capacity_tokens;
  po.memory = kernels_->memory();
  po.stream = kernels_->stream();
  po.kv_dtype =
      kernels_->memory()->device() == Device::kCpu ? DType::kF32 : DType::kBF16;
  auto pool = StatePool::Create(model_->spec(), po);
  EXPECT_TRUE(pool.ok()) << pool.status();
  if (!pool.ok()) std::abort();
  pool_ = std::move(*pool);
  ModelRunner::Options ro;
  ro.record_decode = options.record_decode;
  auto runner =
      ModelRunner::Create(model_.get(), kernels_.get(), pool_.get(), ro);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) std::abort();
  runner_ = std::move(*runner);
}

std::unique_ptr<Model> RunnerHarness::LoadOrDie(const std::string& dir) {
  auto model = Model::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) std::abort();
  return std::move(*model);
}

RunnerHarness::Seq RunnerHarness::NewSeq() {
  Seq s;
  auto slot = pool_->AllocateSlot();
  EXPECT_TRUE(slot.ok()) << slot.status();
  s.slot = slot.ok() ? *slot : -1;
  return s;
}

std::vector<float> RunnerHarness::Feed(Seq* s,
                                       const std::vector<int32_t>& tokens,
                                       size_t chunk) {
  std::vector<float> all, logits;
  for (size_t at = 0; at < tokens.size(); at += chunk) {
    const size_t n = std::min(chunk, tokens.size() - at);
    EXPECT_TRUE(pool_->EnsureCapacity(&s->pages, s->pos + n).ok());
    SequenceInput in{s->slot, &s->pages, s->pos,
                     absl::MakeConstSpan(tokens.data() + at, n)};
    const absl::Status st =
        runner_->Forward({in}, /*all_logits=*/true, &logits);
    EXPECT_TRUE(st.ok()) << st;
    all.insert(all.end(), logits.begin(), logits.end());
    s->pos += n;
    pool_->ReleaseOutOfWindow(&s->pages, s->pos);
    max_held_ = std::max(max_held_, s->pages.held());
  }
  return all;
}

ForwardOutput RunnerHarness::Step(const std::vector<Seq*>& seqs,
                                  const std::vector<int32_t>& next) {
  return Step(seqs, next, {});
}

ForwardOutput RunnerHarness::Step(const std::vector<Seq*>& seqs,
                                  const std::vector<int32_t>& next,
                                  const std::vector<RowSample>& samples) {
  std::vector<SequenceInput> batch;
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_TRUE(pool_->EnsureCapacity(&seqs[i]->pages, seqs[i]->pos + 1).ok());
    batch.push_back({seqs[i]->slot, &seqs[i]->pages, seqs[i]->pos,
                     absl::MakeConstSpan(&next[i], 1)});
  }
  ForwardRequest request;
  request.argmax = true;
  request.samples = &samples;
  ForwardOutput out;
  const absl::Status st = runner_->Forward(batch, request, &out);
  EXPECT_TRUE(st.ok()) << st;
  for (Seq* s : seqs) {
    ++s->pos;
    pool_->ReleaseOutOfWindow(&s->pages, s->pos);
  }
  return out;
}

std::vector<int32_t> RunnerHarness::Greedy(Seq* s, int32_t first, int n) {
  std::vector<int32_t> out = {first};
  while (static_cast<int>(out.size()) < n) {
    const ForwardOutput step = Step({s}, {out.back()});
    if (step.argmax.empty()) break;  // the step failed (reported above)
    out.push_back(step.argmax[0]);
  }
  return out;
}

}  // namespace deltaserve
