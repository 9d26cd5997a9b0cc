#include "engine/engine.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/engine_internal.h"
#include "engine/metrics/metrics.h"
#include "engine/model/tokenizer.h"
#include "engine/runner/model_runner.h"
#include "engine/scheduler/scheduler.h"
#include "engine/session/session_state.h"
#include "engine/state/state_pool.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace deltaserve {

// ---------------------------------------------------------------------------
// GenerationStream

bool GenerationStream::Next(GenerationEvent* event, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]()
                   ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void GenerationStream::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
}

void GenerationStream::Push(GenerationEvent event) {
  absl::MutexLock lock(&mu_);
  events_.push_back(std::move(event));
}

bool GenerationStream::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

// ---------------------------------------------------------------------------
// Engine

int64_t Engine::Resources::FreePages() const {
  return has_kv_ ? pool_->free_pages() + idle_pages
                 : std::numeric_limits<int64_t>::max() / 2;
}

int64_t Engine::Resources::PagesNeeded(const SchedSeq& seq, int64_t n) const {
  if (!has_kv_) return 0;
  return pool_->PagesNeeded(static_cast<const Request&>(seq).pages,
                            seq.computed, n);
}

int64_t Engine::Resources::PagesHeld(const SchedSeq& seq) const {
  return static_cast<const Request&>(seq).pages.held();
}

// ---------------------------------------------------------------------------
// Committer

Engine::Committer::Committer() : thread_([this] { Loop(); }) {}

Engine::Committer::~Committer() { Stop(); }

void Engine::Committer::Enqueue(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

void Engine::Committer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::Committer::Loop() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || !jobs_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (jobs_.empty()) return;  // stopping, and everything ran
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---------------------------------------------------------------------------
// Engine

Engine::Engine(const Model* model, std::unique_ptr<Kernels> kernels,
               const Options& options)
    : model_(model),
      kernels_(std::move(kernels)),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
      metrics_(options.metrics),
      seed_state_(options.seed),
      in_(std::make_unique<Internals>()) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const Model* model, std::unique_ptr<Kernels> kernels,
    const Options& options) {
  if (options.default_max_new_tokens <= 0 ||
      options.max_new_tokens_limit < options.default_max_new_tokens ||
      options.max_prompt_tokens <= 0) {
    return absl::InvalidArgumentError(
        "engine options out of range: need 0 < default_max_new_tokens <= "
        "max_new_tokens_limit and max_prompt_tokens > 0");
  }
  auto engine =
      std::unique_ptr<Engine>(new Engine(model, std::move(kernels), options));
  Scheduler::Options so;
  so.max_running_requests = options.max_running_requests;
  so.max_batched_tokens = options.max_batched_tokens;
  so.max_queued_requests = options.max_queued_requests;
  DS_ASSIGN_OR_RETURN(Scheduler scheduler, Scheduler::Create(so));
  engine->in_->scheduler.emplace(std::move(scheduler));
  StatePool::Options pool_options;
  pool_options.max_slots = options.max_running_requests;
  pool_options.page_size = options.kv_page_size;
  pool_options.kv_capacity_tokens = options.kv_capacity_tokens;
  Kernels* kernels_ptr = engine->kernels_.get();
  pool_options.memory = kernels_ptr->memory();
  pool_options.stream = kernels_ptr->stream();
  // KV pages hold what the attention layers compute: bf16 on a device.
  pool_options.kv_dtype = kernels_ptr->memory()->device() == Device::kCpu
                              ? DType::kF32
                              : DType::kBF16;
  DS_ASSIGN_OR_RETURN(engine->in_->pool,
                      StatePool::Create(model->spec(), pool_options));
  engine->in_->resources = std::make_unique<Resources>(
      engine->in_->pool.get(), model->spec().KvBytesPerToken() > 0);
  ModelRunner::Options runner_options;
  runner_options.record_decode = options.record_decode_steps;
  runner_options.max_recorded_batch = options.max_running_requests;
  DS_ASSIGN_OR_RETURN(
      engine->in_->runner,
      ModelRunner::Create(model, kernels_ptr, engine->in_->pool.get(),
                          runner_options));
  if (options.state_store != nullptr) {
    engine->fingerprint_ = options.model_fingerprint.empty()
                               ? ModelFingerprint(*model)
                               : options.model_fingerprint;
  }
  if (options.metrics != nullptr && options.state_store != nullptr) {
    // The sessions already stored (damaged ones count, with no bytes).
    ListOptions list;
    list.limit = 10000;
    do {
      DS_ASSIGN_OR_RETURN(ListResult page, options.state_store->List(list));
      int64_t bytes = 0;
      for (const SessionMeta& meta : page.sessions) bytes += meta.state_bytes();
      engine->NoteStored(static_cast<int64_t>(page.sessions.size() +
                                              page.damaged_session_ids.size()),
                         bytes);
      list.page_token = std::move(page.next_page_token);
    } while (!list.page_token.empty());
    options.metrics->SetSessionSource(
        [e = engine.get()] { return e->CollectSessionUsage(); });
  }
  engine->committer_ = std::make_unique<Committer>();
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::~Engine() {
  if (metrics_ != nullptr && options_.state_store != nullptr) {
    metrics_->SetSessionSource({});
  }
  Shutdown();
}

int64_t Engine::kv_bytes_per_token() const {
  return model_->spec().KvBytesPerToken() / 4 *
         DTypeSize(in_->pool->kv_dtype());
}

int64_t Engine::context_limit() const {
  int64_t limit = model_->spec().max_position_embeddings;
  if (model_->spec().KvBytesPerToken() > 0) {
    limit = std::min(limit, options_.kv_capacity_tokens);
  }
  return limit;
}

int Engine::num_active() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size()) + num_owned_;
}

Engine::Stats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats = stats_;
  stats.session_evictions = in_->session_evictions.load();
  return stats;
}

absl::StatusOr<std::shared_ptr<GenerationStream>> Engine::Submit(
    GenerationRequest request) {
  const ModelSpec& spec = model_->spec();
  const bool with_session = !request.session_id.empty();
  if (request.append_only && !with_session) {
    return absl::InvalidArgumentError("appending needs a session");
  }
  if (request.prompt.empty() && !with_session) {
    return absl::InvalidArgumentError("input is empty: give text or token_ids");
  }
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    const int32_t id = request.prompt[i];
    if (id < 0 || id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input.token_ids[", i, "] = ", id, " is outside the vocabulary [0, ",
          spec.vocab_size, ")"));
    }
  }
  DS_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling));
  if (request.max_new_tokens == 0) {
    request.max_new_tokens = options_.default_max_new_tokens;
  }
  if (request.max_new_tokens < 1 ||
      request.max_new_tokens > options_.max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_new_tokens must be in [1, ",
        options_.max_new_tokens_limit, "], got ", request.max_new_tokens));
  }
  const int64_t limit =
      request.append_only
          ? context_limit() + 1
          : std::min(context_limit(), options_.max_prompt_tokens);
  if (static_cast<int64_t>(request.prompt.size()) >= limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt has ", request.prompt.size(),
                     " tokens; this server accepts fewer than ", limit));
  }
  if (request.top_logprobs < 0 || request.top_logprobs > 20) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_logprobs must be in [0, 20], got ", request.top_logprobs));
  }
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.stop_token_ids has ", id, ", outside the vocabulary"));
    }
  }
  for (const std::string& s : request.stop) {
    if (s.empty()) {
      return absl::InvalidArgumentError("sampling.stop has an empty string");
    }
    if (!IsValidUtf8(s)) {
      return absl::InvalidArgumentError("sampling.stop is not valid UTF-8");
    }
  }
  if (!request.stop.empty() && model_->tokenizer() == nullptr) {
    return absl::InvalidArgumentError(
        "sampling.stop needs a model with a tokenizer");
  }
  auto r = std::make_unique<Request>();
  r->input_len = static_cast<int>(request.prompt.size());
  if (with_session) {
    // Claim the session and put its history in front of the input.
    DS_RETURN_IF_ERROR(CheckSessions());
    DS_ASSIGN_OR_RETURN(Session * session,
                        Claim(request.session_id, /*allow_damaged=*/false));
    absl::Status st = PrepareSessionRequest(session, &request, r.get());
    if (!st.ok()) {
      Unclaim(session);
      return st;
    }
  } else {
    r->tokens = std::move(request.prompt);
  }
  if (r->session == nullptr) {
    r->prompt_len = static_cast<int64_t>(r->tokens.size());
  }
  r->stream = std::make_shared<GenerationStream>();
  r->arrival = clock_->Now();
  r->max_new_tokens = request.max_new_tokens;
  if (model_->tokenizer() != nullptr) {
    r->decoder = std::make_unique<IncrementalDecoder>(model_->tokenizer());
  }
  std::shared_ptr<GenerationStream> stream = r->stream;
  absl::Status queued = absl::OkStatus();
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) {
      queued = absl::UnavailableError("server is shutting down");
    } else if (draining_) {
      queued = absl::UnavailableError(
          "server is draining: it admits no new requests");
    } else if (static_cast<int>(queue_.size()) + num_waiting_ >=
               options_.max_queued_requests) {
      queued = absl::ResourceExhaustedError(
          absl::StrCat("request queue is full (", options_.max_queued_requests,
                       " waiting)"));
    }
    if (queued.ok()) {
      uint64_t seed = request.seed;
      if (seed == 0) {
        // SplitMix64 step: distinct, reproducible seeds from the engine seed.
        seed_state_ += 0x9e3779b97f4a7c15ull;
        uint64_t z = seed_state_;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        seed = z ^ (z >> 31);
      }
      r->rng.seed(seed);
      r->req = std::move(request);
      queue_.push_back(std::move(r));
    }
  }
  if (!queued.ok()) {
    if (r->session != nullptr) Unclaim(r->session);
    return queued;
  }
  return stream;
}

absl::Status Engine::CheckAdmitting() const {
  absl::MutexLock lock(&mu_);
  if (draining_ || shutdown_) {
    return absl::UnavailableError(
        "server is draining: it admits no new requests");
  }
  return absl::OkStatus();
}

void Engine::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool Engine::WaitUntilIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && num_owned_ == 0;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  absl::MutexLock join_lock(&join_mu_);
  if (thread_.joinable()) thread_.join();
  if (committer_ != nullptr) committer_->Stop();  // null: Create failed
}

void Engine::Loop() {
  // A failure shows again, with its message, in every forward pass.
  kernels_->BindThread().IgnoreError();
  while (true) {
    bool stop;
    const absl::Time expiry = NextIdleExpiry();
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return shutdown_ || !queue_.empty() || num_owned_ > 0 ||
               !ops_.empty() || wake_;
      };
      if (expiry == absl::InfiniteFuture()) {
        mu_.Await(absl::Condition(&has_work));
      } else {
        // Real time, as the idle timeout is: sleep until the next expiry.
        mu_.AwaitWithTimeout(
            absl::Condition(&has_work),
            std::max(expiry - clock_->Now(), absl::Milliseconds(1)));
      }
      stop = shutdown_;
      wake_ = false;
    }
    RunOps();
    if (stop) break;
    EvictIdle(0, 0);  // idle timeouts, host cache budget
    Drain();
    Step();
  }
  // Shutdown: end everything still waiting or running.
  std::deque<std::unique_ptr<Request>> queued;
  {
    absl::MutexLock lock(&mu_);
    queued.swap(queue_);
  }
  for (auto& r : queued) {
    if (r->session != nullptr) Unclaim(r->session);  // state untouched
    GenerationEvent ev;
    ev.finished = true;
    ev.error = absl::UnavailableError("server is shutting down");
    RecordEnd(r->arrival, ev);
    r->stream->Push(std::move(ev));
  }
  for (auto& r : in_->owned) {
    if (!r->done) Finish(r.get(), FinishReason::kCancelled);
  }
  // Later session calls run their engine work inline (RunOnEngine).
  std::deque<std::function<void()>> ops;
  {
    absl::MutexLock lock(&mu_);
    loop_exited_ = true;
    ops.swap(ops_);
  }
  absl::MutexLock lock(&inline_ops_mu_);
  for (auto& op : ops) op();
  in_->owned.clear();
}

void Engine::Drain() {
  std::deque<std::unique_ptr<Request>> incoming;
  {
    absl::MutexLock lock(&mu_);
    incoming.swap(queue_);
    num_owned_ += static_cast<int>(incoming.size());
  }
  for (auto& r : incoming) {
    r->id = in_->next_id++;
    in_->owned.push_back(std::move(r));
    Request* req = in_->owned.back().get();
    Session* session = req->session;
    absl::Status st;
    const bool nothing_to_feed = req->req.append_only && !req->in_prefill();
    if (session != nullptr && session->on_device()) {
      // The state stays where it is: the request runs at once.
      req->slot = session->slot;
      req->pages = std::move(session->pages);
      session->slot = -1;
      session->pages = SeqPages();
      if (!nothing_to_feed) {
        st = in_->scheduler->EnqueueRunning(req);
        if (!st.ok()) {  // more sessions than slots: a broken invariant
          req->state_lost = true;
          st = absl::InternalError(st.message());
        }
      }
    } else {
      if (session != nullptr && session->host.has_value()) {
        req->saved = std::move(session->host);
        session->host.reset();
      }
      if (!nothing_to_feed) st = in_->scheduler->Enqueue(req);
    }
    if (nothing_to_feed) {  // only the last token to append: no compute
      Finish(req, FinishReason::kStop);
      continue;
    }
    if (!st.ok()) Fail(req, st);
  }
}

bool Engine::IsCancelled(const Request& r) const {
  return r.stream->cancelled() || (r.req.is_cancelled && r.req.is_cancelled());
}

void Engine::Sweep() {
  const absl::Time now = clock_->Now();
  for (auto& rp : in_->owned) {
    Request* r = rp.get();
    if (r->done) continue;
    if (IsCancelled(*r)) {
      Finish(r, FinishReason::kCancelled);
    } else if (now >= r->req.deadline) {
      Fail(r, absl::DeadlineExceededError(absl::StrCat("deadline passed after ",
                                                       r->num_generated,
                                                       " generated tokens")));
    }
  }
}

void Engine::Release(Request* r) {
  r->done = true;
  in_->scheduler->Remove(r);
  if (r->slot >= 0) in_->pool->FreeSlot(r->slot);
  r->slot = -1;
  in_->pool->FreePages(&r->pages);
  r->saved.reset();
  absl::MutexLock lock(&mu_);
  --num_owned_;
}

void Engine::Fail(Request* r, const absl::Status& status) {
  GenerationEvent ev;
  ev.finished = true;
  ev.error = status;
  ev.request_id = r->req.request_id;
  End(r, std::move(ev));
}

void Engine::Finish(Request* r, FinishReason reason) {
  // An append that ends by itself has fed its whole input.
  if (r->req.append_only && reason == FinishReason::kStop) CountPrompt(r);
  GenerationEvent ev;
  ev.finished = true;
  ev.finish_reason = reason;
  ev.prompt_tokens = r->input_len;
  ev.completion_tokens = r->num_generated;
  ev.time_to_first_token_s = r->ttft_s;
  ev.request_id = r->req.request_id;
  End(r, std::move(ev));
}

void Engine::End(Request* r, GenerationEvent end) {
  if (r->session != nullptr) {
    EndSession(r, std::move(end));
    return;
  }
  Release(r);  // before the last event, so consumers see the freed state
  RecordEnd(r->arrival, end);
  r->stream->Push(std::move(end));
}

void Engine::MarkScheduled(Request* r) {
  if (metrics_ == nullptr || r->scheduled) return;
  r->scheduled = true;
  metrics_->ObserveQueueTime(clock_->Now() - r->arrival);
}

void Engine::CountPrompt(Request* r) {
  if (metrics_ == nullptr || r->prompt_counted) return;
  r->prompt_counted = true;
  metrics_->AddPromptTokens(r->input_len);
}

void Engine::RecordEnd(absl::Time arrival, const GenerationEvent& end) {
  if (metrics_ == nullptr) return;
  RequestOutcome outcome = RequestOutcome::kError;
  if (end.error.ok()) {
    switch (end.finish_reason) {
      case FinishReason::kStop:
        outcome = RequestOutcome::kStop;
        break;
      case FinishReason::kLength:
        outcome = RequestOutcome::kLength;
        break;
      case FinishReason::kCancelled:
        outcome = RequestOutcome::kCancelled;
        break;
    }
  }
  metrics_->RequestFinished(outcome, clock_->Now() - arrival);
}

namespace {

// Length of the longest suffix of `text` that is a proper prefix of some
// stop string (text that may yet become a stop string).
size_t StopPrefixHoldback(const std::string& text,
                          const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

void Engine::HandleSampled(Request* r, const float* logits,
                           int32_t device_token) {
  const ModelSpec& spec = model_->spec();
  SampleResult s;
  if (logits != nullptr) {
    s = Sample(absl::MakeConstSpan(logits, spec.vocab_size), r->req.sampling,
               r->req.top_logprobs, &r->rng);
  } else {
    s.token = device_token;
  }
  const absl::Time now = clock_->Now();
  if (r->num_generated == 0) {
    r->ttft_s = absl::ToDoubleSeconds(now - r->arrival);
  }
  if (metrics_ != nullptr) {
    if (r->num_generated == 0) {
      metrics_->ObserveTimeToFirstToken(now - r->arrival);
      CountPrompt(r);
    } else {
      metrics_->ObserveInterTokenLatency(now - r->last_token);
    }
    metrics_->AddGenerationTokens(1);
  }
  r->last_token = now;
  ++r->num_generated;
  r->next_input = s.token;
  r->tokens.push_back(s.token);

  GenerationEvent ev;
  ev.token_ids.push_back(s.token);
  if (r->req.top_logprobs > 0) {
    ev.logprobs.push_back({{s.token, s.logprob}, s.top});
  }
  bool finish = false;
  FinishReason reason = FinishReason::kLength;
  const bool is_eos =
      !r->req.ignore_eos &&
      std::find(spec.eos_token_ids.begin(), spec.eos_token_ids.end(),
                s.token) != spec.eos_token_ids.end();
  const bool is_stop_id =
      std::find(r->req.stop_token_ids.begin(), r->req.stop_token_ids.end(),
                s.token) != r->req.stop_token_ids.end();
  if (is_eos || is_stop_id) {
    finish = true;
    reason = FinishReason::kStop;
  }
  if (r->decoder != nullptr) {
    if (!model_->tokenizer()->IsSpecialToken(s.token)) {
      r->text += r->decoder->Push(s.token);
    }
    size_t emit_end = r->text.size();
    // Stop strings: search the text not yet streamed (plus what may overlap).
    size_t search_from = r->text_emitted;
    size_t best = std::string::npos;
    std::string matched;
    for (const std::string& stop : r->req.stop) {
      const size_t from =
          search_from >= stop.size() ? search_from - stop.size() + 1 : 0;
      const size_t at = r->text.find(stop, from);
      if (at != std::string::npos && at < best) {
        best = at;
        matched = stop;
      }
    }
    if (best != std::string::npos) {
      finish = true;
      reason = FinishReason::kStop;
      emit_end = std::max(best, r->text_emitted);
      ev.matched_stop = matched;
    } else if (!finish && r->num_generated < r->max_new_tokens) {
      emit_end = r->text.size() - StopPrefixHoldback(r->text, r->req.stop);
    }
    if (finish || r->num_generated >= r->max_new_tokens) {
      if (best == std::string::npos) {
        r->text += r->decoder->Flush();
        emit_end = r->text.size();
      }
    }
    if (emit_end > r->text_emitted) {
      ev.text = r->text.substr(r->text_emitted, emit_end - r->text_emitted);
      r->text_emitted = emit_end;
    }
  }
  if (!finish && (r->num_generated >= r->max_new_tokens ||
                  r->pos + 1 >= context_limit())) {
    finish = true;
    reason = FinishReason::kLength;
  }
  ev.prompt_tokens = r->input_len;
  ev.completion_tokens = r->num_generated;
  const std::string matched = ev.matched_stop;
  r->stream->Push(std::move(ev));
  if (finish) {
    GenerationEvent end;
    end.finished = true;
    end.finish_reason = reason;
    end.matched_stop = matched;
    end.prompt_tokens = r->input_len;
    end.completion_tokens = r->num_generated;
    end.time_to_first_token_s = r->ttft_s;
    end.request_id = r->req.request_id;
    End(r, std::move(end));
  }
}

void Engine::Step() {
  const absl::Time start = clock_->Now();
  Sweep();
  StatePool& pool = *in_->pool;
  // Idle sessions stay idle until the plan took the memory it counted on.
  FreezeIdleSessions();
  CountIdleSessions();
  const StepPlan plan = in_->scheduler->Schedule(*in_->resources);
  for (SchedSeq* s : plan.preempt) Preempt(static_cast<Request*>(s));
  for (const auto* group : {&plan.admit, &plan.resume}) {
    for (SchedSeq* s : *group) {
      Request* r = static_cast<Request*>(s);
      if (r->done) continue;
      // A session with history first placed from host memory or disk is
      // resumed by its request (not after a preemption): timed as a resume.
      const bool resumes = group == &plan.admit && r->session != nullptr &&
                           r->session_history > 0 &&
                           (r->state_on_disk || r->saved.has_value());
      const absl::Time placing = clock_->Now();
      if (Place(r) && resumes && metrics_ != nullptr) {
        metrics_->ObserveSessionResume(clock_->Now() - placing);
      }
    }
  }
  in_->inputs.clear();
  in_->members.clear();
  const bool has_kv = model_->spec().KvBytesPerToken() > 0;
  for (const StepPlan::Item& item : plan.batch) {
    Request* r = static_cast<Request*>(item.seq);
    if (r->done) continue;
    MarkScheduled(r);
    SequenceInput in;
    in.slot = r->slot;
    in.start_pos = r->pos;
    if (r->in_prefill()) {
      in.tokens =
          absl::MakeConstSpan(r->tokens.data() + r->pos, item.num_tokens);
    } else {
      in.tokens = absl::MakeConstSpan(&r->next_input, 1);
    }
    if (has_kv) {
      const int64_t need = pool.PagesNeeded(r->pages, r->pos, item.num_tokens);
      if (pool.free_pages() < need) EvictIdle(0, need);
      absl::Status st =
          pool.EnsureCapacity(&r->pages, r->pos + item.num_tokens);
      if (!st.ok()) {  // the plan counted free pages: a broken invariant
        r->state_lost = true;
        Fail(r, absl::InternalError(st.message()));
        continue;
      }
      in.pages = &r->pages;
    }
    in_->inputs.push_back(in);
    in_->members.push_back(r);
  }
  ThawIdleSessions();
  int64_t step_tokens = 0;
  if (!in_->inputs.empty()) {
    // Greedy and sampled tokens come from the device (sampled ones with a
    // uniform number drawn here from the request's generator, as Sample
    // would draw it); only requests that report log-probabilities need their
    // logits on the host.
    in_->logits_rows.clear();
    in_->samples.clear();
    std::vector<int> logits_index(in_->members.size(), -1);
    std::vector<int> sample_index(in_->members.size(), -1);
    for (size_t i = 0; i < in_->members.size(); ++i) {
      Request* r = in_->members[i];
      const int64_t n = static_cast<int64_t>(in_->inputs[i].tokens.size());
      const bool samples =
          !r->req.append_only && (r->decoding || r->pos + n == r->prompt_len);
      if (!samples) continue;
      const SamplingParams& sp = r->req.sampling;
      if (r->req.top_logprobs > 0) {
        logits_index[i] = static_cast<int>(in_->logits_rows.size());
        in_->logits_rows.push_back(static_cast<int>(i));
      } else if (sp.temperature > 0.0f) {
        sample_index[i] = static_cast<int>(in_->samples.size());
        in_->samples.push_back({static_cast<int>(i), sp.temperature, sp.top_k,
                                sp.top_p, DrawUniform(&r->rng)});
      }
    }
    ForwardRequest fr;
    fr.logits_rows = &in_->logits_rows;
    fr.argmax = true;
    fr.samples = &in_->samples;
    absl::Status st = in_->runner->Forward(in_->inputs, fr, &in_->out);
    if (!st.ok()) {
      for (Request* r : in_->members) {
        r->state_lost = true;
        Fail(r, absl::InternalError(
                    absl::StrCat("forward pass failed: ", st.message())));
      }
    } else {
      const int v = model_->spec().vocab_size;
      for (size_t i = 0; i < in_->members.size(); ++i) {
        Request* r = in_->members[i];
        const int64_t n = static_cast<int64_t>(in_->inputs[i].tokens.size());
        step_tokens += n;
        r->pos += n;
        r->computed = r->pos;
        pool.ReleaseOutOfWindow(&r->pages, r->pos);
        if (r->req.append_only) {
          if (r->pos == r->prompt_len) Finish(r, FinishReason::kStop);
        } else if (r->decoding || r->pos == r->prompt_len) {
          r->decoding = true;
          HandleSampled(r,
                        logits_index[i] >= 0
                            ? in_->out.logits.data() +
                                  static_cast<int64_t>(logits_index[i]) * v
                            : nullptr,
                        sample_index[i] >= 0 ? in_->out.sampled[sample_index[i]]
                                             : in_->out.argmax[i]);
        }
      }
    }
  }
  auto& owned = in_->owned;
  owned.erase(std::remove_if(owned.begin(), owned.end(),
                             [](const auto& r) { return r->done; }),
              owned.end());
  const absl::Duration took = clock_->Now() - start;
  {
    absl::MutexLock lock(&mu_);
    num_waiting_ = 0;
    for (const SchedSeq* s : in_->scheduler->waiting()) {
      if (s->phase == SchedSeq::Phase::kWaiting) ++num_waiting_;
    }
    if (!in_->inputs.empty()) ++stats_.steps;
    stats_.preemptions += static_cast<int64_t>(plan.preempt.size());
    stats_.resumes += static_cast<int64_t>(plan.resume.size());
    stats_.max_step_tokens = std::max(stats_.max_step_tokens, step_tokens);
    stats_.max_step_time = std::max(stats_.max_step_time, took);
  }
  if (metrics_ != nullptr) {
    // The scheduler gauges last: once they show a step's end, the rest of
    // its figures are in.
    if (!in_->inputs.empty()) metrics_->ObserveIterationTokens(step_tokens);
    metrics_->AddPreemptions(static_cast<int64_t>(plan.preempt.size()));
    const int64_t pages = pool.num_pages();
    metrics_->SetSchedulerState(
        in_->scheduler->num_running(), in_->scheduler->num_waiting(),
        pages > 0 ? static_cast<double>(pages - pool.free_pages()) / pages
                  : 0.0);
  }
}

}  // namespace deltaserve
