// Helpers for tests that use sessions over gRPC (in-process servers).
#ifndef DELTASERVE_TESTS_INTEGRATION_SESSION_TEST_UTIL_H_
#define DELTASERVE_TESTS_INTEGRATION_SESSION_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/sessions.grpc.pb.h"
#include "services/server/server.h"
#include "tests/integration/test_util.h"

namespace deltaserve {

// A fresh (emptied) directory $TEST_TMPDIR/name.
std::string TempDir(const std::string& name);

// An in-process server with its stubs.
struct Running {
  std::unique_ptr<Server> server;
  std::unique_ptr<v1::Inference::Stub> inference;
  std::unique_ptr<v1::Sessions::Stub> sessions;
};

// SmallServerOptions(model_dir) with sessions in `state_dir` (synced
// commits). `server` is null (and the test failed) when it cannot start.
Running Start(const std::string& model_dir, const std::string& state_dir);

// One call each, with a deadline; the call's status.
absl::StatusOr<v1::Session> Create(v1::Sessions::Stub* stub);
grpc::Status Get(v1::Sessions::Stub* stub, const std::string& id,
                 v1::Session* out);
grpc::Status Pause(v1::Sessions::Stub* stub, const std::string& id);
grpc::Status Resume(v1::Sessions::Stub* stub, const std::string& id,
                    v1::Session* out);
grpc::Status Fork(v1::Sessions::Stub* stub, const std::string& id,
                  v1::Session* out);
grpc::Status Delete(v1::Sessions::Stub* stub, const std::string& id);
grpc::Status Export(v1::Sessions::Stub* stub, const std::string& id,
                    std::string* bytes,
                    v1::SessionFormat format = v1::SESSION_FORMAT_UNSPECIFIED);
// Streams `bytes` in 64 KiB pieces, `format` set in the first.
grpc::Status Import(v1::Sessions::Stub* stub, const std::string& bytes,
                    v1::Session* out,
                    v1::SessionFormat format = v1::SESSION_FORMAT_UNSPECIFIED);
// Appends `ids` in one piece; the session's token count afterwards.
absl::StatusOr<int64_t> Append(v1::Sessions::Stub* stub, const std::string& id,
                               const std::vector<int32_t>& ids);
// Sessions listed (one page of up to 1000).
int64_t CountSessions(v1::Sessions::Stub* stub);
// A greedy Generate of `n` tokens continuing session `id` with `ids`.
Generation SessionGenerate(v1::Inference::Stub* stub, const std::string& id,
                           const std::vector<int32_t>& ids, int n);

}  // namespace deltaserve

#endif  // DELTASERVE_TESTS_INTEGRATION_SESSION_TEST_UTIL_H_
