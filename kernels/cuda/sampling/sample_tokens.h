// Raw CUDA launcher of stochastic sampling (temperature, top-k, top-p) on
// the device: Kernels::SampleTokens's rule (kernels/kernels.h), with the
// arithmetic of kernels/sampling_rule.h, so it chooses the tokens CpuKernels
// chooses. No CUDA includes; pointers are device pointers and `stream` is a
// cudaStream_t passed as void* (nullptr: the legacy default stream).
//
// One block of 1024 threads per row; the row is read from global memory a
// few times: one pass for the maximum (and the first radix level of top-k),
// three more radix passes for the top-k threshold and four for the top-p
// threshold when they apply (8-bit digits of the order-preserving float
// key; top-p's histograms hold weights), a weight sum when neither applies,
// and the draw, which stops at the tile holding the target. No host
// synchronisation and no allocation, so a launch may be recorded in a CUDA
// graph. On an H200 at V = 248320: 0.24 ms for one row with temperature
// only, 0.46 ms with top_k = 50, 0.81 ms with top_p = 0.9; 0.65 / 1.4 /
// 2.3 ms for 256 rows. Stateless; thread-safe.
#ifndef DELTASERVE_KERNELS_CUDA_SAMPLING_SAMPLE_TOKENS_H_
#define DELTASERVE_KERNELS_CUDA_SAMPLING_SAMPLE_TOKENS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace deltaserve {

// out[r] = the token sampled from logits[r, 0..vocab) (rows `stride` floats
// apart) with temperature[r], top_k[r], top_p[r] and uniform[r] (each
// array `rows` long). The values are not checked (they live on the
// device): out-of-range ones are mapped as sampling_rule::MakeRowParams
// says. Returns OK (rows = 0 launches nothing); INVALID_ARGUMENT for vocab
// outside [1, 2^24], a stride below vocab, rows ≥ 2^31 or null pointers;
// INTERNAL when the launch fails.
absl::Status LaunchSampleTokens(const float* logits, int64_t rows,
                                int64_t vocab, int64_t stride,
                                const float* temperature, const int32_t* top_k,
                                const float* top_p, const float* uniform,
                                int32_t* out, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_SAMPLING_SAMPLE_TOKENS_H_
