#include "kernels/cuda/testing/device_buffer.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "kernels/cuda/cuda_status.h"
#include "kernels/status.h"

namespace deltaserve::testing {

bool HasCudaDevice() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return false;
  }
  return true;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::Status DeviceBuffer::Allocate(size_t bytes) {
  bytes = std::max<size_t>(bytes, 16);
  if (ptr_ != nullptr && capacity_ >= bytes) return absl::OkStatus();
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  capacity_ = 0;
  DS_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr_, bytes), "cudaMalloc"));
  capacity_ = bytes;
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Upload(const void* host, size_t bytes) {
  DS_RETURN_IF_ERROR(Allocate(bytes));
  return CudaStatus(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice),
                    "cudaMemcpy to device");
}

absl::Status DeviceBuffer::Download(void* host, size_t bytes) const {
  return CudaStatus(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost),
                    "cudaMemcpy to host");
}

}  // namespace deltaserve::testing
