// The conversions between absl::Status and grpc::Status in deltaserve: every
// service handler returns ToGrpcStatus(...) of the engine's status, and
// every client turns a call's status into an absl::Status with
// FromGrpcStatus.
#ifndef DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_
#define DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace deltaserve {

// Returns a grpc::Status with the same code (the canonical codes map one to
// one) and message. An absl code outside the canonical set becomes UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Returns an absl::Status with the same code and the message, prefixed with
// `context` and ": " when `context` is not empty.
absl::Status FromGrpcStatus(const grpc::Status& status,
                            absl::string_view context = "");

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_
