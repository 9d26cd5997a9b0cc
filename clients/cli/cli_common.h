// What deltaserve-cli's commands share: the flags every command reads
// (--server, --timeout) and the input flags of generate and session append,
// exit statuses, error reporting and the channel to the server.
#ifndef DELTASERVE_CLIENTS_CLI_CLI_COMMON_H_
#define DELTASERVE_CLIENTS_CLI_CLI_COMMON_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(absl::Duration, timeout);
ABSL_DECLARE_FLAG(std::optional<std::string>, prompt);
ABSL_DECLARE_FLAG(std::vector<std::string>, token_ids);

namespace deltaserve {
namespace cli {

// Exit statuses of deltaserve-cli. absl's flag parser also exits with 1 on
// an unknown or malformed flag.
inline constexpr int kExitUsage = 1;     // usage error, or health not SERVING
inline constexpr int kExitRpcError = 2;  // a call (or a local file) failed

// Prints "deltaserve-cli: MESSAGE (see --help)" to stderr; returns
// kExitUsage.
int UsageError(absl::string_view message);

// Prints "error: CODE: message" (e.g. "error: UNAVAILABLE: ...") to stderr;
// returns kExitRpcError.
int RpcError(const grpc::Status& status);

// As RpcError, for a failure on this side (a file that cannot be read or
// written, a stream that ends short).
int LocalError(const absl::Status& status);

// A channel to --server.
std::shared_ptr<grpc::Channel> Connect();

// Sets the deadline of `context` from --timeout (none when it is 0).
void SetDeadline(grpc::ClientContext* context);

// Appends the comma-separated token ids of every item to `ids`. Returns
// false with `error` set when an item is not an int32.
bool ParseIds(const std::vector<std::string>& items, std::vector<int32_t>* ids,
              std::string* error);

}  // namespace cli
}  // namespace deltaserve

#endif  // DELTASERVE_CLIENTS_CLI_CLI_COMMON_H_
