// Raw CUDA launcher of the row-wise argmax used for greedy sampling on the
// device. No CUDA includes; pointers are device pointers and `stream` is a
// cudaStream_t passed as void* (nullptr: the legacy default stream).
#ifndef DELTASERVE_KERNELS_CUDA_SAMPLING_ARGMAX_H_
#define DELTASERVE_KERNELS_CUDA_SAMPLING_ARGMAX_H_

#include <cstdint>

#include "absl/status/status.h"

namespace deltaserve {

// out[r] = index of the largest of logits[r, 0..vocab) (rows `stride`
// floats apart): the lowest index on ties; NaN loses to every number, and a
// row of NaN gives 0. One block per row. Returns OK (rows = 0 launches
// nothing); INVALID_ARGUMENT for vocab < 1 or ≥ 2^31, a stride below vocab
// or null pointers; INTERNAL when the launch fails.
absl::Status LaunchArgmax(const float* logits, int64_t rows, int64_t vocab,
                          int64_t stride, int32_t* out, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_SAMPLING_ARGMAX_H_
