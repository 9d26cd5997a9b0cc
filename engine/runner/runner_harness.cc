#include "engine/runner/runner_harness.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "gtest/gtest.h"
#include "kernels/memory.h"

namespace deltaserve {

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
  std::vector<SequenceInput> batch;
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_TRUE(pool_->EnsureCapacity(&seqs[i]->pages, seqs[i]->pos + 1).ok());
    batch.push_back({seqs[i]->slot, &seqs[i]->pages, seqs[i]->pos,
                     absl::MakeConstSpan(&next[i], 1)});
  }
  ForwardRequest request;
  request.argmax = true;
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
