#include "services/server/gpu_kernels.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<Kernels>> CreateGpuKernels(int /*device*/) {
  return absl::FailedPreconditionError(
      "device \"cuda\": this build has no CUDA support");
}

}  // namespace deltaserve
