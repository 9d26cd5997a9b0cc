// The one conversion from CUDA runtime errors to absl::Status.
//
// Every CUDA runtime call in deltaserve reports its result through
// CudaStatus, so the mapping of error codes lives in one place.
#ifndef DELTASERVE_KERNELS_CUDA_CUDA_STATUS_H_
#define DELTASERVE_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <string_view>

#include "absl/status/status.h"

namespace deltaserve {

// Returns OK for cudaSuccess, RESOURCE_EXHAUSTED for
// cudaErrorMemoryAllocation, and INTERNAL for every other error. The message
// names `what` (the operation that failed), the error's name and its
// description, e.g. "cudaMalloc state pool: cudaErrorMemoryAllocation (out of
// memory)". It does not clear the error; callers that continue after a
// non-sticky error call cudaGetLastError themselves.
absl::Status CudaStatus(cudaError_t err, std::string_view what);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_CUDA_STATUS_H_
