#include "kernels/memory.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

class HostDeviceMemory final : public DeviceMemory {
 public:
  Device device() const override { return Device::kCpu; }

  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    if (bytes <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("allocation of ", bytes, " bytes"));
    }
    const size_t rounded = (static_cast<size_t>(bytes) + 255) / 256 * 256;
    void* p = std::aligned_alloc(256, rounded);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of host memory allocating ", bytes, " bytes"));
    }
    return p;
  }

  void Free(void* p) override { std::free(p); }

  absl::Status Copy2D(void* dst, int64_t dst_pitch, const void* src,
                      int64_t src_pitch, int64_t row_bytes, int64_t rows,
                      Stream) override {
    char* d = static_cast<char*>(dst);
    const char* s = static_cast<const char*>(src);
    if (dst_pitch == row_bytes && src_pitch == row_bytes) {
      std::memmove(d, s, static_cast<size_t>(row_bytes * rows));
      return absl::OkStatus();
    }
    for (int64_t r = 0; r < rows; ++r) {
      std::memmove(d + r * dst_pitch, s + r * src_pitch,
                   static_cast<size_t>(row_bytes));
    }
    return absl::OkStatus();
  }

  absl::Status Zero(void* p, int64_t bytes, Stream) override {
    std::memset(p, 0, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
};

}  // namespace

DeviceMemory* HostMemory() {
  static HostDeviceMemory* const memory = new HostDeviceMemory();
  return memory;
}

absl::StatusOr<Buffer> Buffer::Allocate(DeviceMemory* memory, int64_t bytes) {
  absl::StatusOr<void*> p = memory->Allocate(bytes);
  if (!p.ok()) return p.status();
  Buffer b;
  b.memory_ = memory;
  b.data_ = *p;
  b.bytes_ = bytes;
  return b;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    memory_ = other.memory_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.memory_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::Reset() {
  if (data_ != nullptr) memory_->Free(data_);
  memory_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

TensorView Buffer::View(DType dtype, std::initializer_list<int64_t> shape,
                        int64_t byte_offset) const {
  TensorView v = TensorView::Contiguous(static_cast<char*>(data_) + byte_offset,
                                        dtype, shape, memory_->device());
  DS_CHECK(byte_offset + v.numel() * DTypeSize(dtype) <= bytes_);
  return v;
}

absl::Status EnsureBuffer(DeviceMemory* memory, int64_t bytes, Buffer* buffer) {
  if (buffer->bytes() >= bytes && buffer->memory() == memory) {
    return absl::OkStatus();
  }
  buffer->Reset();
  const int64_t want = std::max<int64_t>(bytes + bytes / 4, 4096);
  absl::StatusOr<Buffer> b = Buffer::Allocate(memory, want);
  if (!b.ok()) return b.status();
  *buffer = std::move(*b);
  return absl::OkStatus();
}

}  // namespace deltaserve
