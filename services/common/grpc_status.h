// The one conversion from absl::Status to grpc::Status in deltaserve: every
// service handler returns ToGrpcStatus(...) of the engine's status.
#ifndef DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_
#define DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace deltaserve {

// Returns a grpc::Status with the same code (the canonical codes map one to
// one) and message. An absl code outside the canonical set becomes UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_COMMON_GRPC_STATUS_H_
