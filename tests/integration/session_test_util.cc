#include "tests/integration/session_test_util.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

template <typename Request>
grpc::Status CallOne(grpc::Status (v1::Sessions::Stub::*method)(
                         grpc::ClientContext*, const Request&, v1::Session*),
                     v1::Sessions::Stub* stub, const std::string& id,
                     v1::Session* out) {
  grpc::ClientContext context;
  SetDeadline(&context);
  Request request;
  request.set_session_id(id);
  return (stub->*method)(&context, request, out);
}

}  // namespace

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  std::filesystem::remove_all(dir);
  return dir;
}

Running Start(const std::string& model_dir, const std::string& state_dir) {
  ServerOptions options = SmallServerOptions(model_dir);
  options.state_dir = state_dir;
  options.sync_state_writes = true;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  Running r;
  if (!server.ok()) return r;
  r.server = *std::move(server);
  auto channel = Connect(*r.server);
  r.inference = v1::Inference::NewStub(channel);
  r.sessions = v1::Sessions::NewStub(channel);
  return r;
}

absl::StatusOr<v1::Session> Create(v1::Sessions::Stub* stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Session out;
  grpc::Status st = stub->CreateSession(&context, {}, &out);
  if (!st.ok())
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        st.error_message());
  return out;
}

grpc::Status Get(v1::Sessions::Stub* stub, const std::string& id,
                 v1::Session* out) {
  return CallOne(&v1::Sessions::Stub::GetSession, stub, id, out);
}
grpc::Status Pause(v1::Sessions::Stub* stub, const std::string& id) {
  v1::Session out;
  return CallOne(&v1::Sessions::Stub::PauseSession, stub, id, &out);
}
grpc::Status Resume(v1::Sessions::Stub* stub, const std::string& id,
                    v1::Session* out) {
  return CallOne(&v1::Sessions::Stub::ResumeSession, stub, id, out);
}
grpc::Status Fork(v1::Sessions::Stub* stub, const std::string& id,
                  v1::Session* out) {
  return CallOne(&v1::Sessions::Stub::ForkSession, stub, id, out);
}
grpc::Status Delete(v1::Sessions::Stub* stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::DeleteSessionRequest request;
  request.set_session_id(id);
  v1::DeleteSessionResponse out;
  return stub->DeleteSession(&context, request, &out);
}

grpc::Status Export(v1::Sessions::Stub* stub, const std::string& id,
                    std::string* bytes, v1::SessionFormat format) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ExportSessionRequest request;
  request.set_session_id(id);
  request.set_format(format);
  auto reader = stub->ExportSession(&context, request);
  v1::ExportSessionChunk chunk;
  bytes->clear();
  while (reader->Read(&chunk)) *bytes += chunk.data();
  return reader->Finish();
}

grpc::Status Import(v1::Sessions::Stub* stub, const std::string& bytes,
                    v1::Session* out, v1::SessionFormat format) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto writer = stub->ImportSession(&context, out);
  constexpr size_t kChunk = 64 << 10;
  for (size_t at = 0; at < bytes.size(); at += kChunk) {
    v1::ImportSessionChunk chunk;
    if (at == 0) chunk.set_format(format);
    chunk.set_data(bytes.substr(at, kChunk));
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Appends `ids` in one piece; the progress's session token count.
absl::StatusOr<int64_t> Append(v1::Sessions::Stub* stub, const std::string& id,
                               const std::vector<int32_t>& ids) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub->Append(&context);
  v1::AppendRequest request;
  request.set_session_id(id);
  request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  stream->Write(request);
  stream->WritesDone();
  v1::AppendProgress progress;
  int64_t tokens = -1;
  while (stream->Read(&progress)) tokens = progress.session_tokens();
  grpc::Status st = stream->Finish();
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        st.error_message());
  }
  return tokens;
}

int64_t CountSessions(v1::Sessions::Stub* stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListSessionsRequest request;
  request.set_page_size(1000);
  v1::ListSessionsResponse out;
  EXPECT_TRUE(stub->ListSessions(&context, request, &out).ok());
  return out.sessions_size();
}

Generation SessionGenerate(v1::Inference::Stub* stub, const std::string& id,
                           const std::vector<int32_t>& ids, int n) {
  v1::GenerateRequest request = IdsRequest(ids, n);
  request.set_session_id(id);
  if (ids.empty()) request.clear_token_ids();
  return Generate(stub, request);
}

}  // namespace deltaserve
