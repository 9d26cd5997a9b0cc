// TensorView front ends of the GPU GEMM, KV append and paged attention: one
// function per Kernels method (same arguments, minus `this`), validating
// their arguments like CpuKernels and enqueueing the work on `stream` (a
// cudaStream_t; null: the legacy default stream) without waiting for it.
//
// Every tensor lives in device memory (Device::kCuda) with unit last stride;
// outer strides may be anything unless noted. Index tensors (cu_seqlens,
// start_pos, context_lens, page_table) are i32 on the device; their values
// are not read on the host, so the value checks CpuKernels makes (monotone
// cu_seqlens, page entries in range, context lengths) are not made here: the
// kernels stay in bounds and skip what does not fit (see attention.h). On
// INVALID_ARGUMENT nothing has been enqueued.
#ifndef DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_OPS_H_
#define DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_OPS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/gemm_attention/gemm.h"
#include "kernels/kernels.h"
#include "kernels/tensor.h"

namespace deltaserve::cuda_ops {

// Kernels::Gemm through `gemm`: out[M, N] = x[M, K] · w[N, K]ᵀ (+ out when
// accumulate), fp32 accumulation. dtypes (x, w, out): (f32, f32, f32) in
// exact fp32, (bf16, bf16, bf16) or (bf16, bf16, f32). x, w and out may have
// any row stride not smaller than their row length.
//
// Returns OK; INVALID_ARGUMENT naming the argument for a shape, dtype,
// device or stride mismatch; INTERNAL when cuBLASLt fails.
absl::Status Gemm(CublasLtGemm* gemm, const TensorView& x, const TensorView& w,
                  const TensorView& out, bool accumulate, Stream stream);

// Kernels::KvAppend. k, v [T, Hkv, D] and the pools [P, page_size, Hkv, D]
// share one dtype, f32 or bf16; page_table i32 [B, max_pages], cu_seqlens
// i32 [B + 1] (contiguous), start_pos i32 [B].
//
// Returns OK; INVALID_ARGUMENT naming the argument for a shape, dtype,
// device or stride mismatch; INTERNAL when the launch fails.
absl::Status KvAppend(const TensorView& k, const TensorView& v,
                      const TensorView& k_pages, const TensorView& v_pages,
                      const TensorView& page_table,
                      const TensorView& cu_seqlens, const TensorView& start_pos,
                      Stream stream);

// Kernels::PagedAttention. q, the pools and out share one dtype, f32 or
// bf16 (softmax and accumulation in fp32); D is at most 256 (64, 128 and
// 256 run tiled, others on a simple kernel);
// cu_seqlens i32 [B + 1] (contiguous), context_lens i32 [B].
//
// Returns OK; INVALID_ARGUMENT naming the argument for a shape, dtype,
// device or stride mismatch, Hq not a multiple of Hkv, a negative window or
// an unsupported head dimension; INTERNAL when the launch fails.
absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                            const TensorView& v_pages,
                            const TensorView& page_table,
                            const TensorView& cu_seqlens,
                            const TensorView& context_lens, int window,
                            float scale, const TensorView& out, Stream stream);

// The same with `workspace_bytes` of 16-byte aligned device memory at
// `workspace` that decode batches use to split each sequence's keys over
// several blocks (see attention.h); nothing else may use it until the call's
// work on `stream` is done. The split count depends only on the shapes, so a
// call recorded in a CUDA graph stays valid while the workspace lives. A null
// workspace runs one split per sequence, like the overload above.
//
// Returns as above; INVALID_ARGUMENT also when the workspace is misaligned.
absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                            const TensorView& v_pages,
                            const TensorView& page_table,
                            const TensorView& cu_seqlens,
                            const TensorView& context_lens, int window,
                            float scale, const TensorView& out, void* workspace,
                            int64_t workspace_bytes, Stream stream);

}  // namespace deltaserve::cuda_ops

#endif  // DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_OPS_H_
