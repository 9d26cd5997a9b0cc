// The deltaserve.v1.Inference gRPC service: decodes a GenerateRequest into a
// GenerationRequest for the Engine and streams its events back as Chunk
// messages and one final Completion.
#ifndef DELTASERVE_SERVICES_SERVER_INFERENCE_SERVICE_H_
#define DELTASERVE_SERVICES_SERVER_INFERENCE_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"

namespace deltaserve {

// Serves Generate for one Engine (the server's default model). Does not own
// the engine, which must outlive the service. Thread-safe: gRPC calls
// Generate concurrently from its handler threads, one per stream.
class InferenceService final : public v1::Inference::Service {
 public:
  // `salt` varies the random-looking part of the request ids it assigns.
  InferenceService(Engine* engine, uint64_t salt);

  // Streams the generation. Returns, besides OK:
  //   INVALID_ARGUMENT  a malformed request (the message names the field);
  //   NOT_FOUND         `model` names no loaded model;
  //   RESOURCE_EXHAUSTED, UNAVAILABLE  as Engine::Submit, or an engine error;
  //   CANCELLED         the client cancelled or went away.
  grpc::Status Generate(
      grpc::ServerContext* context, const v1::GenerateRequest* request,
      grpc::ServerWriter<v1::GenerateResponse>* writer) override;

  // How often a handler waiting for tokens checks whether its client left.
  static constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

 private:
  // Validates what the engine does not (model name, input kind, explicit
  // zero max_new_tokens) and decodes the request. INVALID_ARGUMENT or
  // NOT_FOUND as Generate.
  absl::StatusOr<GenerationRequest> Decode(
      const v1::GenerateRequest& request) const;
  // A fresh "req-<counter>-<hex>" id.
  std::string NewRequestId();

  Engine* const engine_;
  const uint64_t salt_;
  std::atomic<uint64_t> next_request_ = 1;
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_INFERENCE_SERVICE_H_
