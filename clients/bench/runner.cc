#include "clients/bench/runner.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/bench/report.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "kernels/status.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"
#include "services/common/api_names.h"
#include "services/common/grpc_status.h"

namespace deltaserve::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Deadline of the model look-up when the run has no --timeout.
constexpr absl::Duration kLookUpDeadline = absl::Seconds(60);
// Mixed into the seed for the warm-up requests, so that they differ from
// the measured ones.
constexpr uint64_t kWarmupSeedMix = 0x9e3779b97f4a7c15ull;

double NowSeconds() {
  return std::chrono::duration<double>(SteadyClock::now().time_since_epoch())
      .count();
}

bool HasTimeout(absl::Duration timeout) {
  return timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration();
}

class Phase;

// One streamed Generate call: records when each chunk arrives and what it
// carries. Owns itself from Start on: gRPC runs its callbacks one at a time
// on its own threads, the last being OnDone, which reports to the Phase and
// deletes the call. Holds a reference to the Phase, so the last call to
// finish may be the one that destroys it.
class GenerateCall final
    : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  GenerateCall(std::shared_ptr<Phase> phase, int conversation, int record_index,
               v1::GenerateRequest request, absl::Duration timeout)
      : phase_(std::move(phase)),
        conversation_(conversation),
        record_index_(record_index),
        request_(std::move(request)) {
    if (HasTimeout(timeout)) {
      context_.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
  }

  // Sends the request; called once. The call deletes itself when done.
  void Start(v1::Inference::Stub* stub) {
    stub->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    timer_.emplace(NowSeconds());
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    const double now = NowSeconds();
    if (response_.has_chunk()) {
      const v1::Chunk& chunk = response_.chunk();
      timer_->OnChunk(now, chunk.token_ids_size());
      generated_.insert(generated_.end(), chunk.token_ids().begin(),
                        chunk.token_ids().end());
    } else if (response_.has_completion()) {
      completion_ = response_.completion();
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override;

  int conversation() const { return conversation_; }
  int record_index() const { return record_index_; }
  const StreamTimer& timer() const { return *timer_; }
  double end_s() const { return end_s_; }
  const grpc::Status& status() const { return status_; }
  const std::optional<v1::Completion>& completion() const {
    return completion_;
  }
  const std::vector<int32_t>& generated() const { return generated_; }

 private:
  const std::shared_ptr<Phase> phase_;
  const int conversation_;
  const int record_index_;
  const v1::GenerateRequest request_;
  grpc::ClientContext context_;
  v1::GenerateResponse response_;
  std::optional<StreamTimer> timer_;
  std::vector<int32_t> generated_;
  std::optional<v1::Completion> completion_;
  double end_s_ = 0.0;
  grpc::Status status_;
};

// Runs one workload (the warm-up or the measured one) to the end. Shared by
// RunBench, which calls Run() once, and the calls in flight, which report
// through OnCallDone from gRPC's threads; Run() returns when every call has
// reported.
class Phase : public std::enable_shared_from_this<Phase> {
 public:
  // open_loop: conversations start at their arrival times; otherwise
  // `concurrency` conversations are kept in flight.
  Phase(v1::Inference::Stub* stub, std::string model, const Workload& workload,
        bool open_loop, int concurrency, absl::Duration timeout,
        std::string request_id_prefix)
      : stub_(stub),
        model_(std::move(model)),
        workload_(workload),
        open_loop_(open_loop),
        concurrency_(concurrency),
        timeout_(timeout),
        request_id_prefix_(std::move(request_id_prefix)),
        first_request_(workload.FirstRequestIndices()),
        states_(workload.conversations.size()) {
    records_.resize(workload.num_requests());
    for (int c = 0; c < static_cast<int>(workload.conversations.size()); ++c) {
      const std::vector<Turn>& turns = workload.conversations[c].turns;
      for (int t = 0; t < static_cast<int>(turns.size()); ++t) {
        RequestRecord& r = records_[first_request_[c] + t];
        r.index = first_request_[c] + t;
        r.conversation = c;
        r.turn = t;
        r.expected_output_tokens = turns[t].max_new_tokens;
      }
    }
  }

  // Sends every request and waits for the last one. `*duration_s` is the
  // time from the start to the end of the last call.
  std::vector<RequestRecord> Run(double* duration_s) {
    const int n = workload_.conversations.size();
    absl::MutexLock lock(&mu_);
    epoch_s_ = NowSeconds();
    last_end_s_ = epoch_s_;
    while (finished_ < n) {
      std::vector<GenerateCall*> to_start;
      while (!ready_.empty()) {
        to_start.push_back(PrepareNextTurn(ready_.front()));
        ready_.pop_front();
      }
      if (open_loop_) {
        const double elapsed = NowSeconds() - epoch_s_;
        while (next_conversation_ < n &&
               workload_.conversations[next_conversation_].arrival_s <=
                   elapsed) {
          ++active_;
          to_start.push_back(PrepareNextTurn(next_conversation_++));
        }
      } else {
        while (next_conversation_ < n && active_ < concurrency_) {
          ++active_;
          to_start.push_back(PrepareNextTurn(next_conversation_++));
        }
      }
      if (!to_start.empty()) {
        // Outside the lock: a call may finish (and call OnCallDone) at once.
        mu_.Unlock();
        for (GenerateCall* call : to_start) call->Start(stub_);
        mu_.Lock();
        continue;
      }
      if (open_loop_ && next_conversation_ < n) {
        const double wait_s =
            workload_.conversations[next_conversation_].arrival_s -
            (NowSeconds() - epoch_s_);
        cv_.WaitWithTimeout(&mu_, absl::Seconds(wait_s));
      } else {
        cv_.Wait(&mu_);
      }
    }
    *duration_s = last_end_s_ - epoch_s_;
    return std::move(records_);
  }

  // Called by a call's OnDone; the call is not used by gRPC afterwards.
  void OnCallDone(GenerateCall* call) {
    absl::MutexLock lock(&mu_);
    RequestRecord& r = records_[call->record_index()];
    call->timer().Finish(call->end_s(), epoch_s_, &r);
    r.code = FromGrpcStatus(call->status()).code();
    r.error_message = call->status().error_message();
    if (call->completion().has_value()) {
      r.finish_reason = FinishReasonName(call->completion()->finish_reason());
      r.server_ttft_ms = call->completion()->time_to_first_token_s() * 1000.0;
    }
    last_end_s_ = std::max(last_end_s_, call->end_s());

    const int c = call->conversation();
    ConversationState& state = states_[c];
    state.generated = call->generated();
    ++state.next_turn;
    const int turns = workload_.conversations[c].turns.size();
    if (r.ok() && state.next_turn < turns) {
      ready_.push_back(c);
    } else {
      for (int t = state.next_turn; t < turns; ++t) {
        RequestRecord& skipped = records_[first_request_[c] + t];
        skipped.code = absl::StatusCode::kAborted;
        skipped.error_message = absl::StrCat("not sent: turn ", r.turn,
                                             " of this conversation failed");
      }
      ++finished_;
      --active_;
    }
    cv_.Signal();
  }

 private:
  struct ConversationState {
    int next_turn = 0;
    // The prompt of the last turn sent and the tokens generated for it.
    std::vector<int32_t> prompt;
    std::vector<int32_t> generated;
  };

  // The call for conversation c's next turn (its request built, not sent).
  GenerateCall* PrepareNextTurn(int c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ConversationState& state = states_[c];
    const Turn& turn = workload_.conversations[c].turns[state.next_turn];
    state.prompt =
        NextTurnPrompt(state.prompt, state.generated, turn.user_tokens);
    state.generated.clear();
    const int index = first_request_[c] + state.next_turn;
    RequestRecord& r = records_[index];
    r.sent = true;
    r.input_tokens = state.prompt.size();

    v1::GenerateRequest request;
    request.set_request_id(absl::StrCat(request_id_prefix_, index));
    request.set_model(model_);
    request.mutable_token_ids()->mutable_ids()->Add(state.prompt.begin(),
                                                    state.prompt.end());
    v1::SamplingParams* sampling = request.mutable_sampling();
    sampling->set_temperature(0.0f);
    sampling->set_max_new_tokens(turn.max_new_tokens);
    sampling->set_ignore_eos(true);
    return new GenerateCall(shared_from_this(), c, index, std::move(request),
                            timeout_);
  }

  v1::Inference::Stub* const stub_;
  const std::string model_;
  const Workload& workload_;
  const bool open_loop_;
  const int concurrency_;
  const absl::Duration timeout_;
  const std::string request_id_prefix_;
  const std::vector<int> first_request_;

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<ConversationState> states_ ABSL_GUARDED_BY(mu_);
  // Conversations whose next turn can be sent.
  std::deque<int> ready_ ABSL_GUARDED_BY(mu_);
  int next_conversation_ ABSL_GUARDED_BY(mu_) = 0;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
  double epoch_s_ ABSL_GUARDED_BY(mu_) = 0.0;
  double last_end_s_ ABSL_GUARDED_BY(mu_) = 0.0;
};

void GenerateCall::OnDone(const grpc::Status& status) {
  end_s_ = NowSeconds();
  status_ = status;
  phase_->OnCallDone(this);
  delete this;
}

absl::StatusOr<v1::ModelInfo> LookUpModel(
    const std::shared_ptr<grpc::Channel>& channel, const BenchConfig& config) {
  std::unique_ptr<v1::Models::Stub> stub = v1::Models::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(
      absl::Now() +
      (HasTimeout(config.timeout) ? config.timeout : kLookUpDeadline)));
  if (!config.model.empty()) {
    v1::GetModelRequest request;
    request.set_name(config.model);
    v1::ModelInfo info;
    const grpc::Status status = stub->GetModel(&context, request, &info);
    if (!status.ok()) return FromGrpcStatus(status, "GetModel");
    return info;
  }
  v1::ListModelsResponse response;
  const grpc::Status status =
      stub->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, "ListModels");
  if (response.models().empty()) {
    return absl::NotFoundError("the server lists no models");
  }
  for (const v1::ModelInfo& info : response.models()) {
    if (info.is_default()) return info;
  }
  return response.models(0);
}

}  // namespace

absl::StatusOr<BenchResult> RunBench(const BenchConfig& config) {
  DS_RETURN_IF_ERROR(ValidateWorkloadOptions(config.workload));
  const bool open_loop = config.workload.request_rate > 0.0;
  if (!open_loop && config.concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("concurrency must be >= 1, got ", config.concurrency));
  }
  if (config.warmup < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("warmup must be >= 0, got ", config.warmup));
  }
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(config.server, grpc::InsecureChannelCredentials());
  DS_ASSIGN_OR_RETURN(const v1::ModelInfo model, LookUpModel(channel, config));
  DS_ASSIGN_OR_RETURN(const Workload workload,
                      GenerateWorkload(config.workload, model.vocab_size()));
  if (model.context_limit() > 0) {
    for (int c = 0; c < static_cast<int>(workload.conversations.size()); ++c) {
      if (workload.MaxContextTokens(c) > model.context_limit()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "conversation ", c, " reaches ", workload.MaxContextTokens(c),
            " tokens of context, more than the model's limit of ",
            model.context_limit()));
      }
    }
  }

  BenchResult result;
  result.model = model.name();
  result.vocab_size = model.vocab_size();
  result.context_limit = model.context_limit();
  const std::unique_ptr<v1::Inference::Stub> stub =
      v1::Inference::NewStub(channel);
  const int concurrency = std::max(1, config.concurrency);

  if (config.warmup > 0) {
    WorkloadOptions options = config.workload;
    options.kind = WorkloadKind::kRandom;
    options.num_requests = config.warmup;
    options.request_rate = 0.0;
    options.seed ^= kWarmupSeedMix;
    DS_ASSIGN_OR_RETURN(const Workload warmup,
                        GenerateWorkload(options, model.vocab_size()));
    const auto phase = std::make_shared<Phase>(stub.get(), model.name(), warmup,
                                               /*open_loop=*/false, concurrency,
                                               config.timeout, "bench-warmup-");
    double unused_duration_s = 0.0;
    for (const RequestRecord& r : phase->Run(&unused_duration_s)) {
      ++(r.ok() ? result.warmup_ok : result.warmup_failed);
    }
  }

  const auto phase =
      std::make_shared<Phase>(stub.get(), model.name(), workload, open_loop,
                              concurrency, config.timeout, "bench-");
  result.records = phase->Run(&result.duration_s);
  return result;
}

}  // namespace deltaserve::bench
