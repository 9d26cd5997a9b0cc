// Host-side helpers for kernel tests: owning tensors, seeded random fills and
// error metrics.
//
// Everything here is for tests and benchmarks; nothing is thread-safe beyond
// being thread-compatible.
#ifndef DELTASERVE_KERNELS_TESTING_TENSOR_UTILS_H_
#define DELTASERVE_KERNELS_TESTING_TENSOR_UTILS_H_

#include <cstdint>
#include <initializer_list>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace deltaserve::testing {

// A contiguous host tensor that owns its elements. `T` is float (viewed as
// f32) or int32_t (viewed as i32).
template <typename T>
struct HostBuffer {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, int32_t>,
                "HostBuffer holds float or int32_t");

  HostBuffer() = default;
  explicit HostBuffer(std::initializer_list<int64_t> dims, T fill = T{})
      : shape(dims) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    data.assign(static_cast<size_t>(n), fill);
  }

  // A 1-D buffer holding `values`.
  static HostBuffer FromVector(std::vector<T> values) {
    HostBuffer b;
    b.shape = {static_cast<int64_t>(values.size())};
    b.data = std::move(values);
    return b;
  }

  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  T& operator[](int64_t i) { return data[static_cast<size_t>(i)]; }
  const T& operator[](int64_t i) const { return data[static_cast<size_t>(i)]; }

  // A contiguous view of the whole buffer; valid while the buffer lives and
  // is not resized. Views do not carry constness: a view of a const buffer
  // must only be read through.
  TensorView view() const {
    TensorView t;
    t.data = const_cast<T*>(data.data());
    t.dtype = std::is_same_v<T, float> ? DType::kF32 : DType::kI32;
    t.ndim = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape[d];
      t.strides[d] = stride;
      stride *= shape[d];
    }
    return t;
  }

  std::vector<T> data;
  std::vector<int64_t> shape;
};

using HostTensor = HostBuffer<float>;
using HostI32 = HostBuffer<int32_t>;

// A [rows, cols] view of columns [col0, col0 + cols) of a row-major matrix
// whose rows are `row_stride` floats apart.
TensorView ColumnSlice(float* base, int64_t rows, int64_t row_stride,
                       int64_t col0, int64_t cols);

// Fills `t` with values uniform in [lo, hi).
void FillUniform(HostTensor* t, std::mt19937* rng, float lo = -1.0f,
                 float hi = 1.0f);

// ||a − b||₂ / ||b||₂ (0 when both are zero; a's length must equal b's).
double RelativeError(const std::vector<float>& a, const std::vector<float>& b);

// max_i |a_i − b_i|.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace deltaserve::testing

#endif  // DELTASERVE_KERNELS_TESTING_TENSOR_UTILS_H_
