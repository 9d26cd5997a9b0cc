// Scheduler: decides, step by step, which requests run and how many of their
// tokens each engine step feeds — continuous batching with chunked prefill,
// admission control and preemption.
//
// Policy (each Schedule() call plans one step):
//  1. Every running request that is generating gets one decode token. If the
//     KV pages for it are missing, the most recently admitted running
//     requests are preempted (their state saved off the device, slot and
//     pages freed) until it fits; a request may preempt itself.
//  2. Running requests still in their prompt get prefill chunks, oldest
//     first, within the step's token budget and the free pages; one short
//     of pages preempts newer requests rather than wait on them.
//  3. Waiting requests are admitted in order — preempted ones first, then
//     new ones — while a slot, budget and pages remain; admission stops at
//     the first that does not fit, so no request is overtaken forever.
// The scheduler never touches device memory: it plans; the engine applies
// the plan (preempt, resume, run) and reports progress back through the
// SchedSeq fields. Not thread-safe (the engine thread owns it).
#ifndef DELTASERVE_ENGINE_SCHEDULER_SCHEDULER_H_
#define DELTASERVE_ENGINE_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve {

// The scheduler's view of one request. Owned by the engine; the scheduler
// keeps pointers while the request is queued or running.
struct SchedSeq {
  enum class Phase { kWaiting, kRunning, kPreempted, kDone };

  uint64_t id = 0;
  int64_t prompt_len = 0;
  // Tokens already in the sequence's state (prompt tokens fed so far, then
  // generated tokens fed back). Updated by the engine after each step.
  int64_t computed = 0;
  // True once the prompt is in and a sampled token waits to be fed.
  bool decoding = false;
  Phase phase = Phase::kWaiting;

  bool in_prefill() const { return computed < prompt_len; }
};

// What the scheduler asks of the memory it plans over. The engine answers
// from its StatePool; tests answer from counters.
class SchedResources {
 public:
  virtual ~SchedResources() = default;
  virtual int FreeSlots() const = 0;
  virtual int64_t FreePages() const = 0;
  // Pages `seq` must gain to hold `new_tokens` more tokens (for a preempted
  // sequence: to hold everything it had plus the new tokens).
  virtual int64_t PagesNeeded(const SchedSeq& seq,
                              int64_t new_tokens) const = 0;
  // Pages `seq` holds now (freed if it is preempted).
  virtual int64_t PagesHeld(const SchedSeq& seq) const = 0;
};

// One step's plan, in the order the engine applies it.
struct StepPlan {
  struct Item {
    SchedSeq* seq = nullptr;
    int64_t num_tokens = 0;  // tokens fed this step
  };
  std::vector<SchedSeq*> preempt;  // save state, free slot and pages
  std::vector<SchedSeq*> admit;    // new: allocate a slot
  std::vector<SchedSeq*> resume;   // preempted: allocate and restore
  std::vector<Item> batch;         // decodes first, then prefill chunks
  int64_t num_tokens() const;
};

class Scheduler {
 public:
  struct Options {
    int max_running_requests = 64;
    int64_t max_batched_tokens = 8192;
    int max_queued_requests = 256;
  };

  // INVALID_ARGUMENT unless every limit is positive and
  // max_batched_tokens >= max_running_requests (every running request can
  // decode in every step).
  static absl::StatusOr<Scheduler> Create(const Options& options);

  // Queues a new request (phase kWaiting). RESOURCE_EXHAUSTED when
  // max_queued_requests are already waiting.
  absl::Status Enqueue(SchedSeq* seq);
  // Adds a request that already holds a slot and its state (a session whose
  // state stayed on the device) straight to the running set, as the newest
  // (phase kRunning). RESOURCE_EXHAUSTED when max_running_requests run.
  absl::Status EnqueueRunning(SchedSeq* seq);
  // Plans the next step.
  StepPlan Schedule(const SchedResources& resources);
  // Forgets a request (finished, failed or cancelled), queued or running.
  void Remove(SchedSeq* seq);

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  const std::deque<SchedSeq*>& waiting() const { return waiting_; }
  const std::vector<SchedSeq*>& running() const { return running_; }
  const Options& options() const { return options_; }

 private:
  explicit Scheduler(const Options& options) : options_(options) {}

  Options options_;
  std::deque<SchedSeq*> waiting_;   // preempted first, then new, in order
  std::vector<SchedSeq*> running_;  // in admission order
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_SCHEDULER_SCHEDULER_H_
