#include "services/server/sessions_service.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/model/tokenizer.h"
#include "kernels/status.h"
#include "services/common/grpc_status.h"
#include "services/server/cancellation_watch.h"

namespace deltaserve {
namespace {

// How often a handler waiting on the engine checks whether its client left.
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

v1::SessionTier ToProto(SessionTier tier) {
  switch (tier) {
    case SessionTier::kDevice:
      return v1::SESSION_TIER_DEVICE;
    case SessionTier::kHost:
      return v1::SESSION_TIER_HOST;
    case SessionTier::kDisk:
      return v1::SESSION_TIER_DISK;
  }
  return v1::SESSION_TIER_UNSPECIFIED;
}

void Fill(const SessionInfo& info, v1::Session* out) {
  out->set_session_id(info.meta.session_id);
  out->set_model_fingerprint(info.meta.model_fingerprint);
  out->set_num_tokens(info.num_tokens);
  out->set_state_bytes(info.meta.state_bytes());
  out->set_tier(ToProto(info.tier));
  out->set_create_time_unix_micros(absl::ToUnixMicros(info.meta.created));
  out->set_last_used_unix_micros(absl::ToUnixMicros(info.meta.last_used));
  out->set_snapshot_seq(info.meta.snapshot_seq);
  out->set_busy(info.busy);
}

grpc::Status Reply(const absl::StatusOr<SessionInfo>& info, v1::Session* out) {
  if (!info.ok()) return ToGrpcStatus(info.status());
  Fill(*info, out);
  return grpc::Status::OK;
}

// The engine's format for a request's; INVALID_ARGUMENT for a value this
// server does not know.
absl::StatusOr<SessionFormat> FormatOf(v1::SessionFormat format) {
  switch (format) {
    case v1::SESSION_FORMAT_UNSPECIFIED:
    case v1::SESSION_FORMAT_DELTASERVE:
      return SessionFormat::kDeltaserve;
    case v1::SESSION_FORMAT_FLA_CACHE:
      return SessionFormat::kFlaCache;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown session format ", static_cast<int>(format)));
  }
}

grpc::Status ClientGone() {
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      "the client cancelled the call");
}

}  // namespace

SessionsService::SessionsService(Engine* engine, const Options& options)
    : engine_(engine), options_(options) {}

grpc::Status SessionsService::CreateSession(grpc::ServerContext*,
                                            const v1::CreateSessionRequest*,
                                            v1::Session* response) {
  return Reply(engine_->CreateSession(), response);
}

grpc::Status SessionsService::GetSession(grpc::ServerContext*,
                                         const v1::GetSessionRequest* request,
                                         v1::Session* response) {
  return Reply(engine_->GetSession(request->session_id()), response);
}

grpc::Status SessionsService::ListSessions(
    grpc::ServerContext*, const v1::ListSessionsRequest* request,
    v1::ListSessionsResponse* response) {
  if (request->page_size() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError("page_size is negative"));
  }
  ListOptions options;
  options.page_token = request->page_token();
  options.limit = request->page_size() == 0 ? 100 : request->page_size();
  absl::StatusOr<SessionList> list = engine_->ListSessions(options);
  if (!list.ok()) return ToGrpcStatus(list.status());
  for (const SessionInfo& info : list->sessions) {
    Fill(info, response->add_sessions());
  }
  for (const std::string& id : list->damaged_session_ids) {
    response->add_damaged_session_ids(id);
  }
  response->set_next_page_token(list->next_page_token);
  return grpc::Status::OK;
}

grpc::Status SessionsService::PauseSession(
    grpc::ServerContext*, const v1::PauseSessionRequest* request,
    v1::Session* response) {
  return Reply(engine_->PauseSession(request->session_id()), response);
}

grpc::Status SessionsService::ResumeSession(
    grpc::ServerContext*, const v1::ResumeSessionRequest* request,
    v1::Session* response) {
  return Reply(engine_->ResumeSession(request->session_id()), response);
}

grpc::Status SessionsService::ForkSession(grpc::ServerContext*,
                                          const v1::ForkSessionRequest* request,
                                          v1::Session* response) {
  return Reply(engine_->ForkSession(request->session_id()), response);
}

grpc::Status SessionsService::DeleteSession(
    grpc::ServerContext*, const v1::DeleteSessionRequest* request,
    v1::DeleteSessionResponse*) {
  return ToGrpcStatus(engine_->DeleteSession(request->session_id()));
}

grpc::Status SessionsService::ExportSession(
    grpc::ServerContext* context, const v1::ExportSessionRequest* request,
    grpc::ServerWriter<v1::ExportSessionChunk>* writer) {
  absl::StatusOr<SessionFormat> format = FormatOf(request->format());
  if (!format.ok()) return ToGrpcStatus(format.status());
  absl::StatusOr<std::string> bytes =
      engine_->ExportSession(request->session_id(), *format);
  if (!bytes.ok()) return ToGrpcStatus(bytes.status());
  const size_t chunk = static_cast<size_t>(options_.export_chunk_bytes);
  size_t offset = 0;
  do {
    if (context->IsCancelled()) return ClientGone();
    v1::ExportSessionChunk out;
    if (offset == 0) out.set_total_bytes(static_cast<int64_t>(bytes->size()));
    const size_t n = std::min(chunk, bytes->size() - offset);
    out.set_data(bytes->substr(offset, n));
    offset += n;
    if (!writer->Write(out)) return ClientGone();
  } while (offset < bytes->size());
  return grpc::Status::OK;
}

grpc::Status SessionsService::ImportSession(
    grpc::ServerContext*, grpc::ServerReader<v1::ImportSessionChunk>* reader,
    v1::Session* response) {
  std::string bytes;
  v1::ImportSessionChunk chunk;
  bool first = true;
  SessionFormat format = SessionFormat::kDeltaserve;
  while (reader->Read(&chunk)) {
    // The first chunk names the format; later ones may repeat it.
    if (first || chunk.format() != v1::SESSION_FORMAT_UNSPECIFIED) {
      absl::StatusOr<SessionFormat> f = FormatOf(chunk.format());
      if (!f.ok()) return ToGrpcStatus(f.status());
      if (!first && *f != format) {
        return ToGrpcStatus(absl::InvalidArgumentError(
            absl::StrCat("an ImportSessionChunk names format ",
                         v1::SessionFormat_Name(chunk.format()),
                         ", another than the first chunk's")));
      }
      format = *f;
      first = false;
    }
    if (static_cast<int64_t>(bytes.size() + chunk.data().size()) >
        options_.max_import_bytes) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("the import is larger than this server's limit of ",
                       options_.max_import_bytes, " bytes")));
    }
    bytes += chunk.data();
  }
  return Reply(engine_->ImportSession(bytes, format), response);
}

grpc::Status SessionsService::Append(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::AppendProgress, v1::AppendRequest>* stream) {
  const absl::Time start = absl::Now();
  auto watch = std::make_shared<CancellationWatch>(context);
  absl::Cleanup detach = [&watch] { watch->Detach(); };
  std::string session_id;
  int64_t ingested = 0;
  v1::AppendRequest piece;
  while (stream->Read(&piece)) {
    if (session_id.empty()) {
      if (piece.session_id().empty()) {
        return ToGrpcStatus(absl::InvalidArgumentError(
            "the first AppendRequest must name the session"));
      }
      session_id = piece.session_id();
    } else if (!piece.session_id().empty() &&
               piece.session_id() != session_id) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          "session_id changed in the middle of an Append"));
    }
    GenerationRequest request;
    request.session_id = session_id;
    request.append_only = true;
    switch (piece.input_case()) {
      case v1::AppendRequest::kText: {
        const Tokenizer* tokenizer = engine_->model().tokenizer();
        if (tokenizer == nullptr) {
          return ToGrpcStatus(absl::InvalidArgumentError(
              "text: model has no tokenizer; send token_ids"));
        }
        if (!IsValidUtf8(piece.text())) {
          return ToGrpcStatus(
              absl::InvalidArgumentError("text is not valid UTF-8"));
        }
        absl::StatusOr<std::vector<int32_t>> ids =
            tokenizer->Encode(piece.text());
        if (!ids.ok()) return ToGrpcStatus(ids.status());
        request.prompt = *std::move(ids);
        break;
      }
      case v1::AppendRequest::kTokenIds:
        request.prompt.assign(piece.token_ids().ids().begin(),
                              piece.token_ids().ids().end());
        break;
      case v1::AppendRequest::INPUT_NOT_SET:
        break;
    }
    if (request.prompt.empty()) continue;
    const int64_t n = static_cast<int64_t>(request.prompt.size());
    request.is_cancelled = [watch] { return watch->IsCancelled(); };
    if (context->deadline() != std::chrono::system_clock::time_point::max()) {
      request.deadline = absl::FromChrono(context->deadline());
    }
    absl::StatusOr<std::shared_ptr<GenerationStream>> submitted =
        engine_->Submit(std::move(request));
    if (!submitted.ok()) return ToGrpcStatus(submitted.status());
    GenerationEvent event;
    while (true) {
      if (!(*submitted)->Next(&event, kPollInterval)) {
        if (watch->IsCancelled()) {
          (*submitted)->Cancel();
          return ClientGone();
        }
        continue;
      }
      if (event.finished) break;
    }
    if (!event.error.ok()) return ToGrpcStatus(event.error);
    if (event.finish_reason == FinishReason::kCancelled) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "the append was cancelled (the server is stopping "
                          "or the client left); what was fed is kept");
    }
    ingested += n;
    v1::AppendProgress progress;
    progress.set_tokens_ingested(ingested);
    progress.set_session_tokens(event.session_tokens);
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    progress.set_tokens_per_second(seconds > 0 ? ingested / seconds : 0.0);
    progress.set_snapshot_seq(event.session_snapshot_seq);
    if (!stream->Write(progress)) return ClientGone();
  }
  if (session_id.empty()) {
    return ToGrpcStatus(
        absl::InvalidArgumentError("an Append must name the session"));
  }
  return grpc::Status::OK;
}

}  // namespace deltaserve
