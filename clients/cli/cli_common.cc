#include "clients/cli/cli_common.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "services/common/grpc_status.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Deadline of each call (e.g. 30s); 0 means none.");
ABSL_FLAG(std::optional<std::string>, prompt, std::nullopt,
          "generate, session append: the prompt text.");
ABSL_FLAG(std::vector<std::string>, token_ids, {},
          "generate, session append: the input as comma-separated token "
          "ids.");

namespace deltaserve {
namespace cli {

int UsageError(absl::string_view message) {
  absl::FPrintF(stderr, "deltaserve-cli: %s (see --help)\n", message);
  return kExitUsage;
}

int RpcError(const grpc::Status& status) {
  return LocalError(FromGrpcStatus(status));
}

int LocalError(const absl::Status& status) {
  absl::FPrintF(stderr, "error: %s: %s\n",
                absl::StatusCodeToString(status.code()), status.message());
  return kExitRpcError;
}

std::shared_ptr<grpc::Channel> Connect() {
  return grpc::CreateChannel(absl::GetFlag(FLAGS_server),
                             grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* context) {
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

bool ParseIds(const std::vector<std::string>& items, std::vector<int32_t>* ids,
              std::string* error) {
  for (const std::string& item : items) {
    for (absl::string_view part : absl::StrSplit(item, ',')) {
      part = absl::StripAsciiWhitespace(part);
      if (part.empty()) continue;
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        *error = absl::StrCat("not a token id: \"", part, "\"");
        return false;
      }
      ids->push_back(id);
    }
  }
  return true;
}

}  // namespace cli
}  // namespace deltaserve
