#include "kernels/testing/tensor_utils.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace deltaserve::testing {

TensorView ColumnSlice(float* base, int64_t rows, int64_t row_stride,
                       int64_t col0, int64_t cols) {
  TensorView t;
  t.data = base + col0;
  t.dtype = DType::kF32;
  t.ndim = 2;
  t.shape[0] = rows;
  t.shape[1] = cols;
  t.strides[0] = row_stride;
  t.strides[1] = 1;
  return t;
}

void FillUniform(HostTensor* t, std::mt19937* rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  for (float& x : t->data) x = dist(*rng);
}

double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0;
  double norm = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    norm += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
  if (norm == 0.0) {
    return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  }
  return std::sqrt(diff / norm);
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

}  // namespace deltaserve::testing
