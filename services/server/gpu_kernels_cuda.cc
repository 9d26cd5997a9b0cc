#include "kernels/cuda/cuda_kernels.h"
#include "kernels/status.h"
#include "services/server/gpu_kernels.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<Kernels>> CreateGpuKernels(int device) {
  CudaKernels::Options options;
  options.device = device;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CudaKernels> kernels,
                      CudaKernels::Create(options));
  return std::unique_ptr<Kernels>(std::move(kernels));
}

}  // namespace deltaserve
