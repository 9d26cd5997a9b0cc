// Test helper: one model, one Kernels implementation, a state pool and a
// ModelRunner over them, with sequences to feed and decode. Shared by the
// runner's CPU and GPU tests. Test-only; not thread-safe.
#ifndef DELTASERVE_ENGINE_RUNNER_RUNNER_HARNESS_H_
#define DELTASERVE_ENGINE_RUNNER_RUNNER_HARNESS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "engine/runner/model_runner.h"
#include "engine/state/state_pool.h"
#include "kernels/kernels.h"

namespace deltaserve {

// ‖a − b‖ / ‖b‖ over n floats.
double RelErr(const float* a, const float* b, size_t n);
// The index of the largest of n floats (the first on ties).
int32_t ArgmaxOf(const float* row, int n);
// An i64 tensor of a safetensors file as i32.
std::vector<int32_t> I64ToI32(const TensorEntry& e);
// A tensor of a safetensors file as f32 (a test failure when it fails).
std::vector<float> F32Of(const TensorEntry& e);

class RunnerHarness {
 public:
  struct Options {
    int max_slots = 8;
    int64_t kv_capacity_tokens = 8192;
    bool record_decode = true;
  };

  // KV pages are f32 on host memory and bf16 on a device. Failures to set
  // up are test failures (and abort).
  RunnerHarness(std::shared_ptr<const Model> model,
                std::unique_ptr<Kernels> kernels, const Options& options);

  // Loads a model directory; aborts (after a test failure) when it fails.
  static std::unique_ptr<Model> LoadOrDie(const std::string& dir);

  struct Seq {
    int slot = -1;
    SeqPages pages;
    int64_t pos = 0;
  };
  Seq NewSeq();

  // Feeds `tokens` in chunks of `chunk`; returns every token's logits.
  std::vector<float> Feed(Seq* s, const std::vector<int32_t>& tokens,
                          size_t chunk);
  // One decode step of `seqs` with inputs `next`: the greedy tokens (from
  // the device) and every row's logits.
  ForwardOutput Step(const std::vector<Seq*>& seqs,
                     const std::vector<int32_t>& next);
  // The same, also sampling `samples` (rows of `seqs`) on the device.
  ForwardOutput Step(const std::vector<Seq*>& seqs,
                     const std::vector<int32_t>& next,
                     const std::vector<RowSample>& samples);
  // Greedy continuation of `n` tokens starting with `first`.
  std::vector<int32_t> Greedy(Seq* s, int32_t first, int n);

  const Model& model() const { return *model_; }
  StatePool& pool() { return *pool_; }
  ModelRunner& runner() { return *runner_; }
  // Most KV pages a sequence held after a Feed chunk.
  int64_t max_held() const { return max_held_; }

 private:
  std::shared_ptr<const Model> model_;
  std::unique_ptr<Kernels> kernels_;
  std::unique_ptr<StatePool> pool_;
  std::unique_ptr<ModelRunner> runner_;
  int64_t max_held_ = 0;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_RUNNER_RUNNER_HARNESS_H_
