#include "services/server/inference_service.h"

#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/model/tokenizer.h"
#include "kernels/status.h"
#include "services/common/grpc_status.h"
#include "services/server/cancellation_watch.h"

namespace deltaserve {
namespace {

// Longest request_id a client may send.
constexpr size_t kMaxRequestIdBytes = 128;

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillChunk(const GenerationEvent& event, v1::Chunk* chunk) {
  chunk->mutable_token_ids()->Add(event.token_ids.begin(),
                                  event.token_ids.end());
  chunk->set_text(event.text);
  chunk->set_prompt_tokens(event.prompt_tokens);
  chunk->set_completion_tokens(event.completion_tokens);
  for (const PositionLogprobs& position : event.logprobs) {
    v1::PositionLogprobs* out = chunk->add_logprobs();
    out->mutable_sampled()->set_id(position.sampled.id);
    out->mutable_sampled()->set_logprob(position.sampled.logprob);
    for (const TokenLogprob& top : position.top) {
      v1::TokenLogprob* t = out->add_top();
      t->set_id(top.id);
      t->set_logprob(top.logprob);
    }
  }
}

void FillCompletion(const GenerationEvent& event, v1::Completion* completion) {
  completion->set_finish_reason(ToProto(event.finish_reason));
  completion->set_prompt_tokens(event.prompt_tokens);
  completion->set_completion_tokens(event.completion_tokens);
  completion->set_time_to_first_token_s(event.time_to_first_token_s);
  completion->set_request_id(event.request_id);
  completion->set_matched_stop(event.matched_stop);
  completion->set_session_tokens(event.session_tokens);
  completion->set_session_snapshot_seq(event.session_snapshot_seq);
}

// SplitMix64's output function: spreads a counter over 64 bits.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

grpc::Status ClientGone() {
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      "the client cancelled the request");
}

}  // namespace

InferenceService::InferenceService(Engine* engine, uint64_t salt)
    : engine_(engine), salt_(salt) {}

std::string InferenceService::NewRequestId() {
  const uint64_t n = next_request_.fetch_add(1, std::memory_order_relaxed);
  return absl::StrFormat("req-%d-%08x", n,
                         static_cast<uint32_t>(Mix(salt_ + n) >> 32));
}

absl::StatusOr<GenerationRequest> InferenceService::Decode(
    const v1::GenerateRequest& request) const {
  const Model& model = engine_->model();
  if (!request.model().empty() && request.model() != model.name()) {
    return absl::NotFoundError(absl::StrCat(
        "model \"", request.model(), "\" is not loaded (this server has \"",
        model.name(), "\")"));
  }
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request_id is longer than ", kMaxRequestIdBytes, " bytes"));
  }
  GenerationRequest out;
  out.request_id = request.request_id();
  out.session_id = request.session_id();
  switch (request.input_case()) {
    case v1::GenerateRequest::kText: {
      const Tokenizer* tokenizer = model.tokenizer();
      if (tokenizer == nullptr) {
        return absl::InvalidArgumentError(
            "input.text: model has no tokenizer; send token_ids");
      }
      if (!IsValidUtf8(request.text())) {
        return absl::InvalidArgumentError("input.text is not valid UTF-8");
      }
      DS_ASSIGN_OR_RETURN(out.prompt, tokenizer->Encode(request.text()));
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      out.prompt.assign(request.token_ids().ids().begin(),
                        request.token_ids().ids().end());
      break;
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;  // The engine rejects it unless a session has a token to feed.
  }
  const v1::SamplingParams& sampling = request.sampling();
  out.sampling.temperature = sampling.temperature();
  out.sampling.top_k = sampling.top_k();
  out.sampling.top_p = sampling.has_top_p() ? sampling.top_p() : 1.0f;
  out.seed = sampling.seed();
  if (sampling.has_max_new_tokens()) {
    // The engine reads 0 as "its default"; on the wire that is "unset".
    if (sampling.max_new_tokens() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.max_new_tokens must be in [1, ",
          engine_->options().max_new_tokens_limit, "] when set, got 0"));
    }
    out.max_new_tokens = sampling.max_new_tokens();
  }
  out.stop.assign(sampling.stop().begin(), sampling.stop().end());
  out.stop_token_ids.assign(sampling.stop_token_ids().begin(),
                            sampling.stop_token_ids().end());
  out.ignore_eos = sampling.ignore_eos();
  out.top_logprobs = request.top_logprobs();
  return out;
}

grpc::Status InferenceService::Generate(
    grpc::ServerContext* context, const v1::GenerateRequest* request,
    grpc::ServerWriter<v1::GenerateResponse>* writer) {
  absl::StatusOr<GenerationRequest> decoded = Decode(*request);
  if (!decoded.ok()) return ToGrpcStatus(decoded.status());
  if (decoded->request_id.empty()) decoded->request_id = NewRequestId();

  auto watch = std::make_shared<CancellationWatch>(context);
  absl::Cleanup detach = [&watch] { watch->Detach(); };
  decoded->is_cancelled = [watch] { return watch->IsCancelled(); };
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    decoded->deadline = absl::FromChrono(context->deadline());
  }

  absl::StatusOr<std::shared_ptr<GenerationStream>> submitted =
      engine_->Submit(*std::move(decoded));
  if (!submitted.ok()) return ToGrpcStatus(submitted.status());
  GenerationStream& stream = **submitted;

  GenerationEvent event;
  while (true) {
    if (!stream.Next(&event, kPollInterval)) {
      if (watch->IsCancelled()) {
        stream.Cancel();
        return ClientGone();
      }
      continue;
    }
    if (!event.token_ids.empty() || !event.text.empty()) {
      v1::GenerateResponse response;
      FillChunk(event, response.mutable_chunk());
      if (!writer->Write(response)) {
        stream.Cancel();
        return ClientGone();
      }
    }
    if (!event.finished) continue;
    if (!event.error.ok()) return ToGrpcStatus(event.error);
    v1::GenerateResponse response;
    FillCompletion(event, response.mutable_completion());
    if (!writer->Write(response)) return ClientGone();
    return grpc::Status::OK;
  }
}

}  // namespace deltaserve
