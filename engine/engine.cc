#include "engine/engine.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/model/tokenizer.h"
#include "engine/runner/model_runner.h"
#include "engine/state/state_pool.h"
#include "kernels/status.h"

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

struct Engine::Request {
  GenerationRequest req;
  std::shared_ptr<GenerationStream> stream;
  absl::Time arrival;
  int max_new_tokens = 0;
  int slot = -1;
  std::vector<int32_t> pages;
  int64_t pos = 0;          // tokens already in the sequence state
  size_t prompt_done = 0;   // prompt tokens fed
  int32_t next_input = -1;  // sampled token to feed next
  int num_generated = 0;
  std::mt19937_64 rng;
  std::unique_ptr<IncrementalDecoder> decoder;
  std::string text;         // decoded text so far
  size_t text_emitted = 0;  // bytes of `text` already streamed
  double ttft_s = 0.0;
  bool done = false;
};

struct Engine::Internals {
  std::unique_ptr<StatePool> pool;
  std::unique_ptr<ModelRunner> runner;
  std::vector<std::unique_ptr<Request>> running;
  std::vector<float> logits;
  std::vector<SequenceInput> inputs;
  std::vector<Request*> members;
};

Engine::Engine(const Model* model, std::unique_ptr<Kernels> kernels,
               const Options& options)
    : model_(model),
      kernels_(std::move(kernels)),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
      seed_state_(options.seed),
      in_(std::make_unique<Internals>()) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const Model* model, std::unique_ptr<Kernels> kernels,
    const Options& options) {
  if (options.max_batch_size <= 0 || options.max_queued_requests <= 0 ||
      options.prefill_chunk_tokens <= 0 ||
      options.default_max_new_tokens <= 0 ||
      options.max_new_tokens_limit < options.default_max_new_tokens ||
      options.max_prompt_tokens <= 0) {
    return absl::InvalidArgumentError("engine options out of range");
  }
  auto engine =
      std::unique_ptr<Engine>(new Engine(model, std::move(kernels), options));
  StatePool::Options pool_options;
  pool_options.max_slots = options.max_batch_size;
  pool_options.page_size = options.kv_page_size;
  pool_options.kv_capacity_tokens = options.kv_capacity_tokens;
  DS_ASSIGN_OR_RETURN(engine->in_->pool,
                      StatePool::Create(model->spec(), pool_options));
  engine->in_->runner = std::make_unique<ModelRunner>(
      model, engine->kernels_.get(), engine->in_->pool.get());
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::~Engine() { Shutdown(); }

int64_t Engine::context_limit() const {
  int64_t limit = model_->spec().max_position_embeddings;
  if (model_->spec().KvBytesPerToken() > 0) {
    limit = std::min(limit, options_.kv_capacity_tokens);
  }
  return limit;
}

int Engine::num_active() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size()) + num_running_;
}

absl::StatusOr<std::shared_ptr<GenerationStream>> Engine::Submit(
    GenerationRequest request) {
  const ModelSpec& spec = model_->spec();
  if (request.prompt.empty()) {
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
  const int64_t limit = std::min(context_limit(), options_.max_prompt_tokens);
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
  r->stream = std::make_shared<GenerationStream>();
  r->arrival = clock_->Now();
  r->max_new_tokens = request.max_new_tokens;
  if (model_->tokenizer() != nullptr) {
    r->decoder = std::make_unique<IncrementalDecoder>(model_->tokenizer());
  }
  std::shared_ptr<GenerationStream> stream = r->stream;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::UnavailableError("server is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.max_queued_requests) {
      return absl::ResourceExhaustedError(
          absl::StrCat("request queue is full (", options_.max_queued_requests,
                       " waiting)"));
    }
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
  return stream;
}

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  absl::MutexLock join_lock(&join_mu_);
  if (thread_.joinable()) thread_.join();
}

void Engine::Loop() {
  while (true) {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return shutdown_ || !queue_.empty() || num_running_ > 0;
      };
      mu_.Await(absl::Condition(&has_work));
      stop = shutdown_;
    }
    if (stop) break;
    Admit();
    Step();
  }
  // Shutdown: end everything still waiting or running.
  std::deque<std::unique_ptr<Request>> queued;
  {
    absl::MutexLock lock(&mu_);
    queued.swap(queue_);
  }
  for (auto& r : queued) {
    GenerationEvent ev;
    ev.finished = true;
    ev.error = absl::UnavailableError("server is shutting down");
    r->stream->Push(std::move(ev));
  }
  for (auto& r : in_->running) {
    if (!r->done) Finish(r.get(), FinishReason::kCancelled);
  }
  in_->running.clear();
  absl::MutexLock lock(&mu_);
  num_running_ = 0;
}

void Engine::Admit() {
  while (static_cast<int>(in_->running.size()) < options_.max_batch_size) {
    std::unique_ptr<Request> r;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) return;
      r = std::move(queue_.front());
      queue_.pop_front();
      ++num_running_;
    }
    absl::StatusOr<int> slot = in_->pool->AllocateSlot();
    if (!slot.ok()) {  // cannot happen while running < max_batch_size
      Fail(r.get(), slot.status());
      continue;
    }
    r->slot = *slot;
    if (IsCancelled(*r)) {  // gave up while waiting in the queue
      Finish(r.get(), FinishReason::kCancelled);
      continue;
    }
    in_->running.push_back(std::move(r));
  }
}

bool Engine::IsCancelled(const Request& r) const {
  return r.stream->cancelled() || (r.req.is_cancelled && r.req.is_cancelled());
}

void Engine::Release(Request* r) {
  r->done = true;
  if (r->slot >= 0) in_->pool->FreeSlot(r->slot);
  r->slot = -1;
  in_->pool->FreePages(&r->pages);
  absl::MutexLock lock(&mu_);
  --num_running_;
}

void Engine::Fail(Request* r, const absl::Status& status) {
  GenerationEvent ev;
  ev.finished = true;
  ev.error = status;
  ev.request_id = r->req.request_id;
  Release(r);  // before the last event, so consumers see the freed state
  r->stream->Push(std::move(ev));
}

void Engine::Finish(Request* r, FinishReason reason) {
  GenerationEvent ev;
  ev.finished = true;
  ev.finish_reason = reason;
  ev.prompt_tokens = static_cast<int>(r->req.prompt.size());
  ev.completion_tokens = r->num_generated;
  ev.time_to_first_token_s = r->ttft_s;
  ev.request_id = r->req.request_id;
  Release(r);  // before the last event, so consumers see the freed state
  r->stream->Push(std::move(ev));
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

void Engine::HandleSampled(Request* r, const float* logits) {
  const ModelSpec& spec = model_->spec();
  const SampleResult s = Sample(absl::MakeConstSpan(logits, spec.vocab_size),
                                r->req.sampling, r->req.top_logprobs, &r->rng);
  if (r->num_generated == 0) {
    r->ttft_s = absl::ToDoubleSeconds(clock_->Now() - r->arrival);
  }
  ++r->num_generated;
  r->next_input = s.token;

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
  ev.prompt_tokens = static_cast<int>(r->req.prompt.size());
  ev.completion_tokens = r->num_generated;
  const std::string matched = ev.matched_stop;
  r->stream->Push(std::move(ev));
  if (finish) {
    GenerationEvent end;
    end.finished = true;
    end.finish_reason = reason;
    end.matched_stop = matched;
    end.prompt_tokens = static_cast<int>(r->req.prompt.size());
    end.completion_tokens = r->num_generated;
    end.time_to_first_token_s = r->ttft_s;
    end.request_id = r->req.request_id;
    Release(r);
    r->stream->Push(std::move(end));
  }
}

bool Engine::Step() {
  auto& running = in_->running;
  for (auto& r : running) {
    if (!r->done && IsCancelled(*r)) Finish(r.get(), FinishReason::kCancelled);
  }
  // Decode: every request whose prompt is in and that has a token to feed.
  auto run_batch = [this](bool prefill) {
    in_->inputs.clear();
    in_->members.clear();
    int budget = options_.prefill_chunk_tokens;
    for (auto& rp : in_->running) {
      Request* r = rp.get();
      if (r->done) continue;
      const bool in_prefill = r->prompt_done < r->req.prompt.size();
      if (prefill != in_prefill) continue;
      SequenceInput in;
      in.slot = r->slot;
      in.start_pos = r->pos;
      if (prefill) {
        if (budget <= 0) break;
        const size_t n =
            std::min<size_t>(budget, r->req.prompt.size() - r->prompt_done);
        budget -= static_cast<int>(n);
        in.tokens =
            absl::MakeConstSpan(r->req.prompt.data() + r->prompt_done, n);
      } else {
        in.tokens = absl::MakeConstSpan(&r->next_input, 1);
      }
      if (model_->spec().KvBytesPerToken() > 0) {
        absl::Status st = in_->pool->EnsureCapacity(
            &r->pages, r->pos + static_cast<int64_t>(in.tokens.size()));
        if (!st.ok()) {
          Fail(r, st);
          continue;
        }
        in.pages = &r->pages;
      }
      in_->inputs.push_back(in);
      in_->members.push_back(r);
    }
    if (in_->inputs.empty()) return;
    absl::Status st = in_->runner->Forward(in_->inputs, false, &in_->logits);
    if (!st.ok()) {
      for (Request* r : in_->members) {
        Fail(r, absl::InternalError(
                    absl::StrCat("forward pass failed: ", st.message())));
      }
      return;
    }
    const int v = model_->spec().vocab_size;
    for (size_t i = 0; i < in_->members.size(); ++i) {
      Request* r = in_->members[i];
      const int64_t n = static_cast<int64_t>(in_->inputs[i].tokens.size());
      r->pos += n;
      if (prefill) {
        r->prompt_done += n;
        if (r->prompt_done < r->req.prompt.size()) continue;
      }
      HandleSampled(r, in_->logits.data() + i * v);
    }
  };
  run_batch(/*prefill=*/false);
  run_batch(/*prefill=*/true);
  running.erase(std::remove_if(running.begin(), running.end(),
                               [](const auto& r) { return r->done; }),
                running.end());
  return !running.empty();
}

}  // namespace deltaserve
