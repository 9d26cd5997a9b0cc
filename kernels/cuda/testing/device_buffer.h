// Test helpers for CUDA kernels: whether a GPU is present, and a device
// allocation freed on destruction. Test-only; thread-compatible.
#ifndef DELTASERVE_KERNELS_CUDA_TESTING_DEVICE_BUFFER_H_
#define DELTASERVE_KERNELS_CUDA_TESTING_DEVICE_BUFFER_H_

#include <cstddef>
#include <vector>

#include "absl/status/status.h"

namespace deltaserve::testing {

// True when a CUDA device can be used (GPU tests skip otherwise). Clears the
// error a failed query leaves behind.
bool HasCudaDevice();

// A cudaMalloc'd buffer, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  // Makes the buffer hold at least `bytes` (at least 16; the contents are
  // lost when it has to grow).
  absl::Status Allocate(size_t bytes);
  // Allocates as needed, then copies `bytes` from host memory.
  absl::Status Upload(const void* host, size_t bytes);
  // Copies the buffer's first `bytes` to host memory.
  absl::Status Download(void* host, size_t bytes) const;

  template <typename T>
  absl::Status Upload(const std::vector<T>& host) {
    return Upload(host.data(), host.size() * sizeof(T));
  }
  // Fills all of `host` (its size says how much).
  template <typename T>
  absl::Status Download(std::vector<T>* host) const {
    return Download(host->data(), host->size() * sizeof(T));
  }

  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace deltaserve::testing

#endif  // DELTASERVE_KERNELS_CUDA_TESTING_DEVICE_BUFFER_H_
