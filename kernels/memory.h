// Memory where a Kernels implementation's tensors live, and the copies
// between it and host memory.
//
// DeviceMemory is an interface: HostMemory() is plain host memory (what
// CpuKernels uses); CudaKernels has a CUDA implementation. Buffer is the
// owning handle the engine keeps its device tensors in. Implementations are
// thread-safe; a Buffer is thread-compatible.
#ifndef DELTASERVE_KERNELS_MEMORY_H_
#define DELTASERVE_KERNELS_MEMORY_H_

#include <cstdint>
#include <initializer_list>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve {

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;

  // Where the memory this object allocates lives.
  virtual Device device() const = 0;

  // Allocates `bytes` (> 0) aligned to 256 bytes, contents undefined.
  // RESOURCE_EXHAUSTED when the memory is full; INVALID_ARGUMENT for a
  // non-positive size.
  virtual absl::StatusOr<void*> Allocate(int64_t bytes) = 0;
  // Frees what Allocate returned (null is a no-op). Waits for nothing: the
  // caller makes sure no queued work still uses it.
  virtual void Free(void* p) = 0;

  // Copies `rows` rows of `row_bytes` bytes from src (rows `src_pitch`
  // bytes apart) to dst (`dst_pitch` apart). Either side may be this
  // memory or ordinary host memory. Ordered on `stream` with the kernels;
  // when the call returns, host memory it reads may be reused and host
  // memory it writes holds the result. INTERNAL when the copy fails.
  virtual absl::Status Copy2D(void* dst, int64_t dst_pitch, const void* src,
                              int64_t src_pitch, int64_t row_bytes,
                              int64_t rows, Stream stream) = 0;

  // Sets `bytes` of this memory at `p` to zero, ordered on `stream`.
  virtual absl::Status Zero(void* p, int64_t bytes, Stream stream) = 0;

  // A contiguous copy (Copy2D of one row).
  absl::Status Copy(void* dst, const void* src, int64_t bytes, Stream stream) {
    return Copy2D(dst, bytes, src, bytes, bytes, 1, stream);
  }
};

// Process-wide host memory (never null; lives forever).
DeviceMemory* HostMemory();

// An owned allocation of a DeviceMemory. Movable, not copyable; frees on
// destruction (see DeviceMemory::Free for what must have finished by then).
class Buffer {
 public:
  Buffer() = default;
  // RESOURCE_EXHAUSTED / INVALID_ARGUMENT from DeviceMemory::Allocate.
  static absl::StatusOr<Buffer> Allocate(DeviceMemory* memory, int64_t bytes);

  Buffer(Buffer&& other) noexcept { *this = static_cast<Buffer&&>(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  DeviceMemory* memory() const { return memory_; }
  bool empty() const { return data_ == nullptr; }
  void Reset();

  // A contiguous view of the start of the buffer. The caller makes sure
  // the view fits (DS_CHECK: a broken invariant).
  TensorView View(DType dtype, std::initializer_list<int64_t> shape,
                  int64_t byte_offset = 0) const;

 private:
  DeviceMemory* memory_ = nullptr;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// Grows `buffer` (discarding its contents) to at least `bytes`, with some
// headroom so that slowly growing requests do not reallocate every time.
absl::Status EnsureBuffer(DeviceMemory* memory, int64_t bytes, Buffer* buffer);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_MEMORY_H_
