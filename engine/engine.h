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
#include <map>
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
#include "engine/state_store/state_store.h"
#include "kernels/kernels.h"

namespace deltaserve {

class Metrics;
struct SessionUsage;

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
  // Continue this session: the model sees its history, then `prompt` (which
  // may be empty when the session ends with a token not yet fed). The fed
  // and generated tokens are appended to the session and its new state is
  // committed before the final event.
  std::string session_id;
  // Feed `prompt` into the session without generating (needs session_id).
  bool append_only = false;
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
  // Final event of a session request: the session's history length and
  // committed snapshot afterwards.
  int64_t session_tokens = 0;
  uint64_t session_snapshot_seq = 0;
};

// Where a session's state is.
enum class SessionTier { kDevice, kHost, kDisk };

// The byte format of an exported session.
enum class SessionFormat {
  // The state store's versioned, checksummed stream, bound to the model's
  // fingerprint (engine/state_store/README.md, "Export stream").
  kDeltaserve,
  // fla's cache layout in safetensors, for delta_net and gated_deltanet
  // models (engine/session/fla_cache.h; README.md as above).
  kFlaCache,
};

// What the engine reports about a session.
struct SessionInfo {
  // The last committed snapshot's metadata (history_tokens included).
  SessionMeta meta;
  SessionTier tier = SessionTier::kDisk;
  // A call (Generate, Append) is using it; its history may be longer than
  // meta.history_tokens until that call commits.
  bool busy = false;
  // Tokens in the history, the running call's included.
  int64_t num_tokens = 0;
};

struct SessionList {
  std::vector<SessionInfo> sessions;
  std::vector<std::string> damaged_session_ids;
  std::string next_page_token;
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
    // Record decode steps once per batch-size bucket and replay them (CUDA
    // graphs) where the kernels can record.
    bool record_decode_steps = true;

    // Sessions. Without a store the session calls answer
    // FAILED_PRECONDITION. Not owned; must outlive the engine.
    StateStore* state_store = nullptr;
    // Sessions idle this long are paused (their memory freed); zero: never.
    absl::Duration session_idle_pause = absl::ZeroDuration();
    // Host memory for sessions evicted from the device (beyond it the least
    // recently used go to disk only).
    int64_t session_host_cache_bytes = int64_t{1} << 30;
    // Model fingerprint for stored sessions; empty: computed from the model.
    std::string model_fingerprint;

    // Where the engine reports its metrics (engine/metrics); null: nowhere.
    // Not owned; must outlive the engine. With a state store, Create counts
    // the stored sessions (one listing) for the sessions{tier="disk"} gauge.
    Metrics* metrics = nullptr;
  };

  // Takes ownership of `kernels`; `model` must outlive the engine. Starts
  // the engine thread. INVALID_ARGUMENT for bad options; with metrics and a
  // state store, the store's errors from listing the sessions.
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

  // Stops accepting requests, ends active ones with kCancelled (committing
  // the sessions they used), joins the engine thread and waits for every
  // commit. Idempotent.
  void Shutdown();

  // A graceful drain is StopAdmitting, WaitUntilIdle, then Shutdown. From
  // StopAdmitting on, Submit (so Generate and Append) and the calls that
  // create sessions (CreateSession, ForkSession, ImportSession) return
  // UNAVAILABLE ("draining"); admitted requests run on to their end, each
  // committing its session as always. Idempotent; thread-safe.
  void StopAdmitting();
  // Blocks until no admitted request is queued or running, or `timeout`
  // has passed (real time); true when the engine is idle.
  bool WaitUntilIdle(absl::Duration timeout);

  // Sessions (need Options::state_store; else FAILED_PRECONDITION). Every
  // call naming a session returns INVALID_ARGUMENT for a malformed id,
  // NOT_FOUND for an unknown one and DATA_LOSS when its stored state fails
  // its checksum; calls that change a session return ABORTED while another
  // call uses it. Thread-safe.
  //
  // A new empty session, committed. Storage errors as StateStore::Commit.
  absl::StatusOr<SessionInfo> CreateSession();
  absl::StatusOr<SessionInfo> GetSession(absl::string_view session_id);
  // INVALID_ARGUMENT: bad page token.
  absl::StatusOr<SessionList> ListSessions(const ListOptions& options);
  // Frees the session's device and host memory (its state is on disk).
  absl::StatusOr<SessionInfo> PauseSession(absl::string_view session_id);
  // Loads the session into device memory (host when no slot is free).
  absl::StatusOr<SessionInfo> ResumeSession(absl::string_view session_id);
  // A new session with a copy of the session's last committed state.
  absl::StatusOr<SessionInfo> ForkSession(absl::string_view session_id);
  // Removes the session (also one whose stored state is damaged).
  absl::Status DeleteSession(absl::string_view session_id);
  // The session's last committed state as an export in `format`: the
  // StateStore's export stream, or an fla cache file (EncodeFlaCache).
  // kFlaCache: FAILED_PRECONDITION naming the model type when it has no fla
  // cache layout (checked before the id).
  absl::StatusOr<std::string> ExportSession(
      absl::string_view session_id,
      SessionFormat format = SessionFormat::kDeltaserve);
  // Stores an export in `format` as a new session, committed; nothing is
  // stored on error. kDeltaserve: errors as StateStore::Import
  // (FAILED_PRECONDITION for another model's stream). kFlaCache: errors as
  // DecodeFlaCache (INVALID_ARGUMENT naming the tensor or metadata key;
  // FAILED_PRECONDITION for a model type without an fla cache layout or a
  // file of another model), then storage errors as StateStore::Commit.
  absl::StatusOr<SessionInfo> ImportSession(
      absl::string_view bytes,
      SessionFormat format = SessionFormat::kDeltaserve);
  // The fingerprint stored sessions are bound to.
  const std::string& model_fingerprint() const { return fingerprint_; }

  const Model& model() const { return *model_; }
  const Options& options() const { return options_; }
  // Longest prompt + generation the engine accepts.
  int64_t context_limit() const;
  // Bytes of KV cache one token of context takes in the serving device's
  // memory over all attention layers (fp32 pages on the CPU, bf16 on CUDA;
  // stored session records keep fp32: ModelSpec::KvBytesPerToken()).
  int64_t kv_bytes_per_token() const;
  // Requests waiting or running (for tests and metrics).
  int num_active() const;

  // Counters since the engine started.
  struct Stats {
    int64_t steps = 0;
    int64_t preemptions = 0;
    int64_t resumes = 0;
    int64_t max_step_tokens = 0;
    absl::Duration max_step_time;  // longest step, planning to streaming
    // Session snapshots committed, and sessions moved off the device (idle
    // timeout, memory pressure or a pause).
    int64_t session_commits = 0;
    int64_t session_evictions = 0;
  };
  Stats stats() const;

 private:
  struct Request;
  struct Session;
  class Resources;
  class Committer;
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
  // Picks r's next token: from `logits` (one row, with Sample) when given,
  // else `device_token`, the token the device chose (greedy, or sampled with
  // a uniform number already drawn from r->rng).
  void HandleSampled(Request* r, const float* logits, int32_t device_token);
  bool IsCancelled(const Request& r) const;
  // Sends a request's final event; for a session request first hands its
  // state back to the session and commits it.
  void End(Request* r, GenerationEvent end);
  void EndSession(Request* r, GenerationEvent end);
  // Preempts a running request: saves its state (a session's to the store)
  // and frees its slot and pages.
  void Preempt(Request* r);
  // Gives a request about to run its state back: restores what it saved,
  // loads a session's from the store. False when the request failed.
  bool Place(Request* r);

  // Session table.
  absl::Status CheckSessions() const;
  // UNAVAILABLE once StopAdmitting has been called.
  absl::Status CheckAdmitting() const;
  std::string NewSessionId();
  // Marks the session busy for the caller (loading its metadata when it is
  // not in memory); an idle session in memory is claimed only while idle
  // sessions are not frozen (FreezeIdleSessions). ABORTED when busy;
  // NOT_FOUND, DATA_LOSS (unless `allow_damaged`) from the store. Not on the
  // engine thread.
  absl::StatusOr<Session*> Claim(absl::string_view id, bool allow_damaged);
  // Ends a claim; forgets the session when it holds no memory.
  void Unclaim(Session* s);
  SessionInfo InfoLocked(const Session& s) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(sessions_mu_);
  SessionInfo InfoFromMeta(const SessionMeta& meta) const;
  // ExportSession and ImportSession without their checks and timing.
  absl::StatusOr<std::string> ExportSessionBytes(absl::string_view session_id,
                                                 SessionFormat format);
  absl::StatusOr<SessionInfo> ImportSessionBytes(absl::string_view bytes,
                                                 SessionFormat format);
  // Commits `snap` as a new session (nothing of it stored before) and
  // returns its info; the state store's errors.
  absl::StatusOr<SessionInfo> CommitNewSession(SessionSnapshot snap);
  // Runs `fn` on the engine thread (inline once it has stopped) and waits.
  void RunOnEngine(std::function<void()> fn);
  // Engine thread: runs queued functions.
  void RunOps();
  // Engine thread: evicts idle sessions past the idle timeout, and the
  // least recently used idle ones until `slots` slots and `pages` pages are
  // free (as far as idle sessions allow).
  void EvictIdle(int slots, int64_t pages);
  // Engine thread: frees a session's device (and, unless `to_host`, host)
  // memory; with `to_host` its device state is copied to host memory first
  // when the host cache has room.
  void FreeState(Session* s, bool to_host);
  // Engine thread: sets the scheduler's view of idle sessions' memory.
  void CountIdleSessions();
  // Engine thread: while frozen (calls nest), idle sessions stay idle: a
  // Claim of one waits for the thaw. EvictIdle and a step from counting
  // idle memory to taking what its plan counted on run frozen, so that
  // nothing they picked becomes busy (or is freed under its new owner).
  void FreezeIdleSessions();
  void ThawIdleSessions();
  // Submit: puts a claimed session's history (loaded from the store when
  // not in memory) in front of the request's input. INVALID_ARGUMENT,
  // DATA_LOSS.
  absl::Status PrepareSessionRequest(Session* s, GenerationRequest* request,
                                     Request* r);
  // Engine thread: the next time an idle session expires (InfiniteFuture
  // when none).
  absl::Time NextIdleExpiry() const;

  // Metrics (each does nothing without Options::metrics).
  // The request's first time in a step's batch: its queue time.
  void MarkScheduled(Request* r);
  // The request's whole input is in the state: its prompt tokens.
  void CountPrompt(Request* r);
  // Before a request's final event goes out.
  void RecordEnd(absl::Time arrival, const GenerationEvent& end);
  // Sessions in the store and their state bytes changed by these amounts.
  void NoteStored(int64_t sessions, int64_t bytes);
  // Sessions per tier now (thread-safe; the metrics' session source).
  SessionUsage CollectSessionUsage() const;

  const Model* model_;
  std::unique_ptr<Kernels> kernels_;
  Options options_;
  const Clock* clock_;
  Metrics* const metrics_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;  // serialises Shutdown's join
  uint64_t seed_state_ ABSL_GUARDED_BY(mu_);
  // Requests the engine thread owns (in the scheduler's queue or running).
  int num_owned_ ABSL_GUARDED_BY(mu_) = 0;
  // Of those, new requests waiting for admission.
  int num_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);

  // Functions for the engine thread (RunOnEngine).
  std::deque<std::function<void()>> ops_ ABSL_GUARDED_BY(mu_);
  bool loop_exited_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;  // a session became idle
  absl::Mutex inline_ops_mu_;  // serialises RunOnEngine after the loop

  // Sessions in memory or used by a call (others live only in the store).
  std::string fingerprint_;
  mutable absl::Mutex sessions_mu_;
  std::map<std::string, std::unique_ptr<Session>, std::less<>> sessions_
      ABSL_GUARDED_BY(sessions_mu_);
  int idle_frozen_ ABSL_GUARDED_BY(sessions_mu_) = 0;  // FreezeIdleSessions

  // Engine thread only.
  struct Internals;
  std::unique_ptr<Internals> in_;
  std::unique_ptr<Committer> committer_;
  std::thread thread_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_ENGINE_H_
