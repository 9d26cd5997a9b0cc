// The deltaserve.v1.Sessions gRPC service: session calls translated to the
// Engine's session API, export and import streamed in pieces, and Append
// fed piece by piece as append-only engine requests.
#ifndef DELTASERVE_SERVICES_SERVER_SESSIONS_SERVICE_H_
#define DELTASERVE_SERVICES_SERVER_SESSIONS_SERVICE_H_

#include <cstdint>

#include "engine/engine.h"
#include "proto/deltaserve/v1/sessions.grpc.pb.h"

namespace deltaserve {

// Serves the sessions of one Engine, which must outlive the service.
// Thread-safe. Error codes are those of the Engine's session calls (see
// sessions.proto), plus CANCELLED when the client goes away.
class SessionsService final : public v1::Sessions::Service {
 public:
  struct Options {
    // Largest export stream ImportSession accepts.
    int64_t max_import_bytes = int64_t{4} << 30;
    // Bytes per ExportSessionChunk.
    int64_t export_chunk_bytes = int64_t{1} << 20;
  };
  SessionsService(Engine* engine, const Options& options);

  grpc::Status CreateSession(grpc::ServerContext* context,
                             const v1::CreateSessionRequest* request,
                             v1::Session* response) override;
  grpc::Status GetSession(grpc::ServerContext* context,
                          const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context,
                            const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status PauseSession(grpc::ServerContext* context,
                            const v1::PauseSessionRequest* request,
                            v1::Session* response) override;
  grpc::Status ResumeSession(grpc::ServerContext* context,
                             const v1::ResumeSessionRequest* request,
                             v1::Session* response) override;
  grpc::Status ForkSession(grpc::ServerContext* context,
                           const v1::ForkSessionRequest* request,
                           v1::Session* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context,
                             const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status ExportSession(
      grpc::ServerContext* context, const v1::ExportSessionRequest* request,
      grpc::ServerWriter<v1::ExportSessionChunk>* writer) override;
  grpc::Status ImportSession(grpc::ServerContext* context,
                             grpc::ServerReader<v1::ImportSessionChunk>* reader,
                             v1::Session* response) override;
  grpc::Status Append(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::AppendProgress, v1::AppendRequest>* stream)
      override;

 private:
  Engine* const engine_;
  const Options options_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_SESSIONS_SERVICE_H_
