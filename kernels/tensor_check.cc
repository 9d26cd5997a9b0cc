#include "kernels/tensor_check.h"

#include "absl/strings/str_cat.h"

namespace deltaserve {

std::string ExpectedSpec(DType dtype, std::initializer_list<int64_t> dims) {
  std::string s = absl::StrCat(DTypeName(dtype), "[");
  const char* sep = "";
  for (int64_t d : dims) {
    if (d == kAnyDim) {
      absl::StrAppend(&s, sep, "?");
    } else {
      absl::StrAppend(&s, sep, d);
    }
    sep = ", ";
  }
  absl::StrAppend(&s, "]");
  return s;
}

absl::Status CheckTensor(const char* op, const char* name, const TensorView& t,
                         DType dtype, std::initializer_list<int64_t> dims,
                         Device device) {
  bool ok = t.dtype == dtype && t.ndim == static_cast<int>(dims.size());
  if (ok) {
    int i = 0;
    for (int64_t d : dims) {
      if (t.shape[i] < 0 || (d != kAnyDim && t.shape[i] != d)) ok = false;
      ++i;
    }
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " is ", t.DebugString(), ", expected ",
                     ExpectedSpec(dtype, dims)));
  }
  if (t.device != device) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " ", t.DebugString(), " is not in ",
                     device == Device::kCpu ? "host" : "device", " memory"));
  }
  if (t.ndim > 0 && t.shape[t.ndim - 1] > 1 && t.strides[t.ndim - 1] != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " ", t.DebugString(), " has last stride ",
                     t.strides[t.ndim - 1], ", expected 1"));
  }
  for (int d = 0; d + 1 < t.ndim; ++d) {
    if (t.strides[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " ", t.DebugString(),
                       " has negative stride ", t.strides[d]));
    }
  }
  if (t.data == nullptr && t.numel() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " ", t.DebugString(), " has no data"));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve
