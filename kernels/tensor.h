// Non-owning tensor views: a pointer, an element type, a shape and strides.
//
// A TensorView never owns memory; whoever created the buffer keeps it alive
// while kernels run. Views are plain values and thread-compatible.
#ifndef DELTASERVE_KERNELS_TENSOR_H_
#define DELTASERVE_KERNELS_TENSOR_H_

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace deltaserve {

// Element types that kernels and checkpoints use.
enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kI64 };

// Bytes per element.
int DTypeSize(DType dtype);
// "f32", "bf16", ...
const char* DTypeName(DType dtype);

// Where a view's memory lives.
enum class Device : uint8_t { kCpu, kCuda };

// A strided view of up to 4 dimensions. Strides are in elements.
struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};

  // A contiguous (row-major) view.
  static TensorView Contiguous(void* data, DType dtype,
                               std::initializer_list<int64_t> shape,
                               Device device = Device::kCpu);
  static TensorView F32(float* data, std::initializer_list<int64_t> shape) {
    return Contiguous(data, DType::kF32, shape);
  }
  static TensorView I32(int32_t* data, std::initializer_list<int64_t> shape) {
    return Contiguous(data, DType::kI32, shape);
  }

  bool empty() const { return data == nullptr; }
  int64_t dim(int i) const { return shape[i]; }
  int64_t numel() const;
  bool IsContiguous() const;
  // Rows are contiguous (last stride 1); outer strides may be anything.
  bool RowContiguous() const { return ndim == 0 || strides[ndim - 1] == 1; }

  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }

  // "f32[3, 4]" for error messages.
  std::string DebugString() const;
};

// bf16 / f16 <-> f32 conversions (round to nearest even on the way down).
float Bf16ToF32(uint16_t v);
uint16_t F32ToBf16(float v);
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float v);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_TENSOR_H_
