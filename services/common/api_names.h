// Short lower-case names of API enum values, for logs and command-line
// output ("stop", "length", ...).
#ifndef DELTASERVE_SERVICES_COMMON_API_NAMES_H_
#define DELTASERVE_SERVICES_COMMON_API_NAMES_H_

#include "proto/deltaserve/v1/inference.pb.h"

namespace deltaserve {

// "stop", "length", "cancelled" or "unspecified".
const char* FinishReasonName(v1::FinishReason reason);

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_COMMON_API_NAMES_H_
