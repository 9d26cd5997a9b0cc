// Engine: the facade of deltaserve's inference engine (schedule → run →
// sample → update), for one model.
//
// The Engine owns the model runner, the state pool, the scheduler and one
// engine thread. Each step the Scheduler plans one batch — a decode token
// for every generating request plus prefill chunks, within a token budget —
// and the engine applies it: preempts (state saved to host memory), admits
// and resumes (state restored, never recomputed), runs one forward pass over
// the whole varlen batch, samples and streams. Requests come in through
// Submit from any thread; results go out through each request's
// GenerationStream. Thread-safe.
#ifndef DELTASERVE_ENGINE_ENGINE_H_
#define DELTASERVE_ENGINE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/clock.h"
#include "engine/model/model.h"
#include "engine/sampler/sampler.h"
#include "kernels/kernels.h"

namespace deltaserve {

enum class FinishReason { kStop, kLength, kCancelled };

// One generation request, already decoded from the wire.
struct GenerationRequest {
  std::string request_id;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  uint64_t seed = 0;       // 0: the engine picks one
  int max_new_tokens = 0;  // 0: the engine's default
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int top_logprobs = 0;
  // Polled once per engine step (and before admission); true stops the
  // generation (e.g. the RPC's client went away). May be empty. Must be
  // thread-safe, and may be called by the engine thread after the consumer
  // has stopped reading the stream, so it must not capture anything the
  // consumer destroys.
  std::function<bool()> is_cancelled;
  // The request ends with DEADLINE_EXCEEDED once the engine's clock passes
  // this (checked once per step).
  absl::Time deadline = absl::InfiniteFuture();
};

// Log-probabilities at one generated position.
struct PositionLogprobs {
  TokenLogprob sampled;
  std::vector<TokenLogprob> top;
};

// One message from the engine to a request's consumer: new tokens, or the
// end (finished, with a reason or an error).
struct GenerationEvent {
  std::vector<int32_t> token_ids;
  std::string text;  // whole UTF-8 characters only
  std::vector<PositionLogprobs> logprobs;
  int prompt_tokens = 0;
  int completion_tokens = 0;

  bool finished = false;
  absl::Status error;  // set when the request failed
  FinishReason finish_reason = FinishReason::kStop;
  std::string matched_stop;
  double time_to_first_token_s = 0.0;
  std::string request_id;
};

// The consumer's end of one request: a queue of events. Thread-safe.
class GenerationStream {
 public:
  // Waits up to `timeout` for the next event; false when none came. After
  // an event with finished = true no more events come.
  bool Next(GenerationEvent* event, absl::Duration timeout);
  // Asks the engine to stop this request; it is dropped within one step.
  void Cancel();

  // Engine side.
  void Push(GenerationEvent event);
  bool cancelled() const;

 private:
  mutable absl::Mutex mu_;
  std::deque<GenerationEvent> events_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

class Engine {
 public:
  struct Options {
    int max_running_requests = 64;      // sequences in the batch (state slots)
    int max_queued_requests = 256;      // new requests waiting for admission
    int64_t max_batched_tokens = 8192;  // tokens fed per step, all requests
    int kv_page_size = 16;
    int64_t kv_capacity_tokens = 65536;
    int default_max_new_tokens = 256;
    int max_new_tokens_limit = 4096;
    int64_t max_prompt_tokens = 32768;
    uint64_t seed = 0;             // picks seeds for requests without one
    const Clock* clock = nullptr;  // RealClock when null
  };

  // Takes ownership of `kernels`; `model` must outlive the engine. Starts
  // the engine thread. INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      const Model* model, std::unique_ptr<Kernels> kernels,
      const Options& options);
  ~Engine();  // Shutdown()

  // Validates and queues a request. INVALID_ARGUMENT naming the field for a
  // malformed request (empty prompt, token id out of range, bad sampling
  // parameters, max_new_tokens outside [1, limit], prompt too long);
  // RESOURCE_EXHAUSTED when the queue is full; UNAVAILABLE after Shutdown.
  absl::StatusOr<std::shared_ptr<GenerationStream>> Submit(
      GenerationRequest request);

  // Stops accepting requests, ends active ones with kCancelled and joins the
  // engine thread. Idempotent.
  void Shutdown();

  const Model& model() const { return *model_; }
  const Options& options() const { return options_; }
  // Longest prompt + generation the engine accepts.
  int64_t context_limit() const;
  // Requests waiting or running (for tests and metrics).
  int num_active() const;

  // Counters since the engine started.
  struct Stats {
    int64_t steps = 0;
    int64_t preemptions = 0;
    int64_t resumes = 0;
    int64_t max_step_tokens = 0;
    absl::Duration max_step_time;  // longest step, planning to streaming
  };
  Stats stats() const;

 private:
  struct Request;
  class Resources;
  Engine(const Model* model, std::unique_ptr<Kernels> kernels,
         const Options& options);
  void Loop();
  // Moves submitted requests into the scheduler.
  void Drain();
  // One step: plan, apply, run, sample.
  void Step();
  // Ends cancelled and expired requests.
  void Sweep();
  void Finish(Request* r, FinishReason reason);
  void Fail(Request* r, const absl::Status& status);
  void Release(Request* r);
  void HandleSampled(Request* r, const float* logits);
  bool IsCancelled(const Request& r) const;

  const Model* model_;
  std::unique_ptr<Kernels> kernels_;
  Options options_;
  const Clock* clock_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;  // serialises Shutdown's join
  uint64_t seed_state_ ABSL_GUARDED_BY(mu_);
  // Requests the engine thread owns (in the scheduler's queue or running).
  int num_owned_ ABSL_GUARDED_BY(mu_) = 0;
  // Of those, new requests waiting for admission.
  int num_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);

  // Engine thread only.
  struct Internals;
  std::unique_ptr<Internals> in_;
  std::thread thread_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_ENGINE_H_
