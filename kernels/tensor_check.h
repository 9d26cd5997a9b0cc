// Argument checks shared by every Kernels implementation, so that each
// backend rejects the same bad views with the same messages.
#ifndef DELTASERVE_KERNELS_TENSOR_CHECK_H_
#define DELTASERVE_KERNELS_TENSOR_CHECK_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace deltaserve {

// A dimension that may have any size.
inline constexpr int64_t kAnyDim = -1;

// "f32[?, 4]" from a dtype and expected dims (kAnyDim prints as "?").
std::string ExpectedSpec(DType dtype, std::initializer_list<int64_t> dims);

// OK when `t` has `dtype`, a shape matching `dims`, lives on `device`, has
// unit last stride and non-negative outer strides, and has data unless it is
// empty. Otherwise INVALID_ARGUMENT "OP: NAME is f32[..], expected ...".
absl::Status CheckTensor(const char* op, const char* name, const TensorView& t,
                         DType dtype, std::initializer_list<int64_t> dims,
                         Device device);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_TENSOR_CHECK_H_
