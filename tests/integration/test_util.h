// Helpers for tests that call an in-process deltaserve server over gRPC.
#ifndef DELTASERVE_TESTS_INTEGRATION_TEST_UTIL_H_
#define DELTASERVE_TESTS_INTEGRATION_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "services/server/server.h"

namespace deltaserve {

// Options of a small CPU server for tests: `model_dir` on 127.0.0.1 port 0,
// one thread, 8 running requests, 128 tokens a step, 8192 KV tokens,
// max_new_tokens default 8 and limit 512, engine seed 7.
ServerOptions SmallServerOptions(const std::string& model_dir);

// The whole file, or "" when it cannot be read.
std::string ReadFile(const std::string& path);

// An insecure channel to the server's loopback port.
std::shared_ptr<grpc::Channel> Connect(const Server& server);

// Sets a deadline `timeout` from now.
void SetDeadline(grpc::ClientContext* context,
                 absl::Duration timeout = absl::Seconds(120));

// Waits until `condition` holds, checking it every few milliseconds; false
// when `timeout` passes first.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// Everything one Generate call returned.
struct Generation {
  grpc::Status status;
  std::vector<v1::Chunk> chunks;
  std::vector<absl::Time> chunk_times;  // arrival of each chunk
  std::optional<v1::Completion> completion;
  // Messages of any kind that came after the Completion.
  int messages_after_completion = 0;

  std::vector<int32_t> ids() const;
  std::string text() const;
};

// Runs one Generate call to completion (deadline `timeout`).
Generation Generate(v1::Inference::Stub* stub,
                    const v1::GenerateRequest& request,
                    absl::Duration timeout = absl::Seconds(120));

v1::GenerateRequest TextRequest(const std::string& text, int max_new_tokens);
v1::GenerateRequest IdsRequest(const std::vector<int32_t>& ids,
                               int max_new_tokens);

}  // namespace deltaserve

#endif  // DELTASERVE_TESTS_INTEGRATION_TEST_UTIL_H_
