// Runs a model's forward pass over a batch of sequences.
//
// A ModelRunner binds one Model, one Kernels implementation and one
// StatePool (none owned; all must outlive it). Where the kernels' memory is
// not host memory (the GPU), it keeps its own copy of the weights there
// (bf16 matrices) and feeds the matrix products bf16 activations (the
// residual stream stays fp32); on the CPU it uses the model's fp32 weights
// in place and runs everything in fp32. Each Forward call continues every
// sequence of the batch from the state in its slot and pages and leaves the
// updated state there. Only the token ids, page tables and sampling
// parameters go to the device, and only the requested logits and the greedy
// and sampled tokens come back. Decode steps (one
// token per sequence) are recorded once per batch-size bucket and replayed
// (CUDA graphs) where the kernels can record. Not thread-safe: the engine
// thread is its only caller.
#ifndef DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_
#define DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/layers/layers.h"
#include "engine/model/model.h"
#include "engine/state/state_pool.h"
#include "kernels/kernels.h"
#include "kernels/memory.h"

namespace deltaserve {

// One sequence's part of a batch.
struct SequenceInput {
  int slot = -1;  // recurrent state slot
  // KV pages (enough for the new tokens); null for a model without
  // attention layers.
  const SeqPages* pages = nullptr;
  int64_t start_pos = 0;             // tokens already in the state
  absl::Span<const int32_t> tokens;  // new tokens (at least one)
};

// A row whose token is sampled where the logits are
// (Kernels::SampleTokens), with its parameters and the uniform number the
// caller drew for it.
struct RowSample {
  int row = 0;               // logits row (see ForwardRequest)
  float temperature = 0.0f;  // finite, >= 0; 0: greedy
  int32_t top_k = 0;         // >= 0; 0: no limit
  float top_p = 1.0f;        // (0, 1]
  float uniform = 0.0f;      // [0, 1)
};

// What a forward pass returns to the host. Rows are the batch's sequences
// (their last new token), or every new token with `all_logits`.
struct ForwardRequest {
  bool all_logits = false;
  // Rows whose logits are copied to the host, in this order (null: all).
  const std::vector<int>* logits_rows = nullptr;
  // Also the argmax (greedy token) of every row, computed on the device.
  bool argmax = false;
  // Rows sampled on the device after the forward pass (outside any recorded
  // step), each row at most once; null or empty: none. Only the parameters
  // go to the device and only the tokens come back.
  const std::vector<RowSample>* samples = nullptr;
};

struct ForwardOutput {
  std::vector<float> logits;     // vocab_size floats per requested row
  std::vector<int32_t> argmax;   // one per row when requested
  std::vector<int32_t> sampled;  // one per request.samples entry, in order
};

class ModelRunner {
 public:
  struct Options {
    // Record decode steps and replay them where the kernels can record.
    bool record_decode = true;
    // Largest decode batch that is recorded (bigger ones run directly).
    int max_recorded_batch = 256;
  };

  // Uploads the weights when the kernels' memory is not host memory.
  // RESOURCE_EXHAUSTED when it is full; INTERNAL when a copy fails.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const Model* model, Kernels* kernels, StatePool* pool,
      const Options& options);
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const Model* model,
                                                             Kernels* kernels,
                                                             StatePool* pool) {
    return Create(model, kernels, pool, Options());
  }

  // Feeds the batch's new tokens. INVALID_ARGUMENT for an empty batch or
  // sequence, a token id outside the vocabulary, too few pages, or a sample
  // whose row is outside the logits rows or repeated (or, from the CPU
  // kernels, whose parameters are out of range); RESOURCE_EXHAUSTED when
  // scratch memory cannot grow; kernel errors are passed through.
  absl::Status Forward(absl::Span<const SequenceInput> batch,
                       const ForwardRequest& request, ForwardOutput* out);
  // The same, returning every row's logits.
  absl::Status Forward(absl::Span<const SequenceInput> batch, bool all_logits,
                       std::vector<float>* logits);

  // Activations' element type (f32 on the CPU, bf16 on the GPU).
  DType activation_dtype() const { return act_; }
  // Decode steps replayed from a recording, and recordings made.
  int64_t replayed_steps() const { return replayed_steps_; }
  int64_t recordings() const { return recordings_; }
  // Why decode steps stopped being recorded (OK while they still may be):
  // when the kernels fail to record a step, steps run directly from then on;
  // the error is kept here and reported once on stderr. (The CPU never
  // records.)
  const absl::Status& recording_status() const { return recording_status_; }

 private:
  // A recorded decode step for one padded batch size and page-table widths.
  struct Recording {
    std::unique_ptr<RecordedWork> work;
    Buffer idx;  // its index tensors, refreshed before each replay
    int64_t generation = -1;
  };
  using RecordingKey = std::tuple<int, int64_t, int64_t>;

  ModelRunner(const Model* model, Kernels* kernels, StatePool* pool,
              const Options& options);

  // Packs the batch's index tensors into host_idx_ (padded to `rows`
  // sequences and page-table widths when rows > batch size) and lays out
  // `layout` over `device_idx` (which must hold idx_bytes()).
  absl::Status Pack(absl::Span<const SequenceInput> batch, int rows,
                    int64_t global_width, int64_t window_width);
  void Layout(void* device_idx, BatchLayout* layout) const;
  int64_t idx_bytes() const {
    return static_cast<int64_t>(host_idx_.size()) * 4;
  }
  // Everything from the embedding to the logits (and argmax) on the
  // device, over the packed batch.
  absl::Status Run(const BatchLayout& layout, bool all_logits, bool argmax);
  // Copies the requested results to the host.
  absl::Status Collect(int64_t rows, const ForwardRequest& request,
                       ForwardOutput* out);
  // Samples request.samples from the first `rows` logits rows on the device
  // and copies their tokens to out->sampled.
  absl::Status SampleRows(int64_t rows, const ForwardRequest& request,
                          ForwardOutput* out);

  const Model* model_;
  Kernels* kernels_;
  StatePool* pool_;
  Options options_;
  DType act_ = DType::kF32;
  ModelWeights device_weights_;  // empty when the model's are used
  const ModelWeights* weights_ = nullptr;
  Scratch scratch_;
  Buffer idx_;  // index tensors of a direct (not replayed) step
  // SampleTokens' parameters and tokens (device), and their host staging.
  Buffer sample_buf_;
  std::vector<uint32_t> host_sample_;
  std::map<RecordingKey, Recording> recordings_map_;
  int64_t replayed_steps_ = 0;
  absl::Status recording_status_;
  int64_t recordings_ = 0;

  // Host staging of the packed index tensors and their layout.
  std::vector<int32_t> host_idx_;
  struct Offsets {
    int64_t ids, positions, cu, slots, start_pos, context_lens, table, window,
        single_slots, multi_slots, last;
    int64_t tokens, seqs, global_width, window_width;
  } off_{};
  bool decode_ = false;
  bool mixed_ = false;
  std::vector<int32_t> last_rows_;  // host: each sequence's last token row
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_RUNNER_MODEL_RUNNER_H_
