// The GPU kernels of this build, for the composition root (server.cc): a
// build with CUDA links gpu_kernels_cuda.cc, one without links
// gpu_kernels_none.cc. Stateless; thread-safe.
#ifndef DELTASERVE_SERVICES_SERVER_GPU_KERNELS_H_
#define DELTASERVE_SERVICES_SERVER_GPU_KERNELS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace deltaserve {

// Kernels on CUDA device `device`. FAILED_PRECONDITION when this build has
// no CUDA support or there is no such device; RESOURCE_EXHAUSTED or
// INTERNAL from the device.
absl::StatusOr<std::unique_ptr<Kernels>> CreateGpuKernels(int device);

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_GPU_KERNELS_H_
