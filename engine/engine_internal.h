// Private to the Engine (engine.cc and engine_sessions.cc): the records of
// requests and sessions, the scheduler's view of memory and the commit
// thread.
#ifndef DELTASERVE_ENGINE_ENGINE_INTERNAL_H_
#define DELTASERVE_ENGINE_ENGINE_INTERNAL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "engine/model/tokenizer.h"
#include "engine/runner/model_runner.h"
#include "engine/scheduler/scheduler.h"
#include "engine/state/state_pool.h"

namespace deltaserve {

// A session the engine holds in memory or that a call is using.
//
// `busy` marks it as owned by one call (a request from Submit until its
// commit is done, or a session call); while busy only the owner reads or
// writes the state fields. While idle only the engine thread does (it may
// evict). `meta`, `tier` and `busy` change under Engine::sessions_mu_.
struct Engine::Session {
  std::string id;
  SessionMeta meta;  // of the last committed snapshot
  SessionTier tier = SessionTier::kDisk;
  bool busy = false;
  absl::Time last_used;

  // State fields. `loaded`: `tokens` holds the committed history (true
  // whenever the state is on the device or in host memory).
  bool loaded = false;
  std::vector<int32_t> tokens;
  int slot = -1;  // on the device: slot and pages
  SeqPages pages;
  std::optional<SavedSequence> host;  // in host memory

  bool on_device() const { return slot >= 0; }
  bool resident() const { return slot >= 0 || host.has_value(); }
};

struct Engine::Request : SchedSeq {
  GenerationRequest req;
  std::shared_ptr<GenerationStream> stream;
  absl::Time arrival;
  int max_new_tokens = 0;
  // The whole sequence: a session's history, then the input, then the
  // generated tokens as they are sampled.
  std::vector<int32_t> tokens;
  int input_len = 0;
  int slot = -1;
  SeqPages pages;
  int64_t pos = 0;          // tokens already in the sequence state
  int32_t next_input = -1;  // sampled token to feed next
  int num_generated = 0;
  std::mt19937_64 rng;
  std::unique_ptr<IncrementalDecoder> decoder;
  std::string text;         // decoded text so far
  size_t text_emitted = 0;  // bytes of `text` already streamed
  double ttft_s = 0.0;
  absl::Time last_token;        // when the latest token was sampled
  bool scheduled = false;       // queue time recorded
  bool prompt_counted = false;  // prompt tokens counted
  bool done = false;
  std::optional<SavedSequence> saved;  // state off the device
  // Session requests.
  Session* session = nullptr;
  // The session's history when the request began (it may end with a
  // sampled token not yet fed, at position pos).
  int64_t session_history = 0;
  bool state_on_disk = false;  // preempted: the store holds the state
  bool state_lost = false;     // the state is unusable (internal error)

  // Tokens of the history the state covers: everything fed, plus the
  // sampled token waiting to be fed.
  // An append that fed everything leaves its last token unfed, so that a
  // later generation has logits to start from. Before the request feeds
  // anything, its session's history (with a token waiting to be fed) stays
  // whole.
  int64_t history_len() const {
    if (decoding) return pos + 1;
    if (req.append_only && pos == prompt_len) return pos + 1;
    return std::max(pos, session_history);
  }
};

// The scheduler's view of the state pool. Idle sessions on the device count
// as free memory: the engine evicts them when it needs their room.
class Engine::Resources : public SchedResources {
 public:
  Resources(const StatePool* pool, bool has_kv)
      : pool_(pool), has_kv_(has_kv) {}
  int FreeSlots() const override { return pool_->free_slots() + idle_slots; }
  int64_t FreePages() const override;
  int64_t PagesNeeded(const SchedSeq& seq, int64_t n) const override;
  int64_t PagesHeld(const SchedSeq& seq) const override;

  // Set before each Schedule: what idle sessions on the device hold.
  int idle_slots = 0;
  int64_t idle_pages = 0;

 private:
  const StatePool* pool_;
  bool has_kv_;
};

// Runs session commits in order on one thread, off the engine thread.
class Engine::Committer {
 public:
  Committer();
  ~Committer();  // Stop()
  void Enqueue(std::function<void()> job);
  // Runs every queued job, then stops the thread. Idempotent.
  void Stop();

 private:
  void Loop();
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

struct Engine::Internals {
  std::unique_ptr<StatePool> pool;
  std::unique_ptr<ModelRunner> runner;
  std::optional<Scheduler> scheduler;
  std::unique_ptr<Resources> resources;
  std::vector<std::unique_ptr<Request>> owned;  // waiting or running
  uint64_t next_id = 0;
  ForwardOutput out;
  std::vector<int> logits_rows;    // batch rows whose logits the host needs
  std::vector<RowSample> samples;  // batch rows sampled on the device
  std::vector<SequenceInput> inputs;
  std::vector<Request*> members;
  std::atomic<int64_t> session_evictions{0};
  // With metrics: sessions in the store and their state bytes
  // (SessionMeta::state_bytes), counted at Create and kept up to date.
  std::atomic<int64_t> stored_sessions{0};
  std::atomic<int64_t> stored_bytes{0};
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_ENGINE_INTERNAL_H_
