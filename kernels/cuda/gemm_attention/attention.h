// Paged-KV attention on the GPU: appending new keys and values to the pages
// (KvAppend) and causal softmax attention of a varlen batch of queries over
// them (PagedAttention), with GQA and an optional sliding window.
//
// This header has no CUDA includes; pointers are device pointers and the
// stream is a cudaStream_t passed as void* (nullptr: the legacy default
// stream). ops.h wraps it for TensorViews. Element pointers are void*: every
// floating tensor of one call has `dtype`, f32 or bf16; index tensors are
// i32. Strides are in elements; every innermost stride is 1.
//
// Index values (cu_seqlens, start_pos, context_lens, page-table entries) live
// on the device and are not validated by the launchers; the kernels stay in
// bounds anyway: a sequence whose cu_seqlens entries decrease or leave
// [0, T] is skipped, a token whose position falls outside the page table or
// whose page is outside [0, P) is not written (KvAppend) or not attended to
// (PagedAttention), and a sequence whose context length is smaller than its
// query count or larger than the page table maps gets zero output.
#ifndef DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_ATTENTION_H_
#define DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace deltaserve {

// Head dimensions PagedAttention supports.
inline constexpr int kPagedAttentionHeadDims[] = {64, 128, 256};
// Other head dimensions up to this run on a simple, slower kernel.
inline constexpr int kGenericAttentionMaxDim = 256;
// Most key-range splits one decode launch uses.
inline constexpr int kPagedAttentionMaxSplits = 1024;

// Bytes of workspace one split of a decode launch needs: an fp32 partial
// output row plus its running max and sum per (query, query head).
inline int64_t PagedAttentionSplitBytes(int64_t tokens, int num_q_heads,
                                        int head_dim) {
  return tokens * num_q_heads * (static_cast<int64_t>(head_dim) + 2) * 4;
}

// Paged KV pools [P, page_size, Hkv, D] and the page table [B, max_pages].
struct PagedKv {
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  const int32_t* page_table = nullptr;
  int64_t num_pages = 0;  // P
  int page_size = 0;
  int max_pages = 0;                // page_table's second dimension
  int64_t k_stride[3] = {0, 0, 0};  // page, offset, head
  int64_t v_stride[3] = {0, 0, 0};
  int64_t page_table_stride[2] = {0, 0};
};

// Kernels::KvAppend on device pointers.
struct KvAppendArgs {
  const void* k = nullptr;  // [T, Hkv, D]
  const void* v = nullptr;  // [T, Hkv, D]
  PagedKv kv;
  const int32_t* cu_seqlens = nullptr;  // [B + 1], contiguous
  const int32_t* start_pos = nullptr;   // [B]
  DType dtype = DType::kF32;
  int64_t tokens = 0;  // T
  int64_t batch = 0;   // B
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t k_stride[2] = {0, 0};  // token, head
  int64_t v_stride[2] = {0, 0};
  int64_t start_pos_stride = 1;
};

// Enqueues the append and returns without waiting. Returns OK (T = 0
// launches nothing); INVALID_ARGUMENT naming the field when a size is out of
// range or a required pointer is null; INTERNAL when the launch fails.
absl::Status LaunchKvAppend(const KvAppendArgs& args, void* stream);

// Kernels::PagedAttention on device pointers.
struct PagedAttentionArgs {
  const void* q = nullptr;  // [T, Hq, D]
  PagedKv kv;
  const int32_t* cu_seqlens = nullptr;    // [B + 1], contiguous
  const int32_t* context_lens = nullptr;  // [B]
  void* out = nullptr;                    // [T, Hq, D]
  DType dtype = DType::kF32;
  int64_t tokens = 0;  // T
  int64_t batch = 0;   // B
  int num_q_heads = 0;
  int num_kv_heads = 0;  // divides num_q_heads
  int head_dim = 0;      // kPagedAttentionHeadDims are tiled; others slow
  int window = 0;        // 0: global
  float scale = 1.0f;
  int64_t q_stride[2] = {0, 0};  // token, head
  int64_t out_stride[2] = {0, 0};
  int64_t context_lens_stride = 1;
  // Scratch device memory for split-KV decoding (16-byte aligned; null: one
  // split). Nothing else may use it while the call's kernels run.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Enqueues the attention and returns without waiting. Returns OK (T = 0
// launches nothing); INVALID_ARGUMENT naming the field when a size is out of
// range, the head dimension is unsupported, a required pointer is null or
// the workspace is not 16-byte aligned; INTERNAL when the launch fails. A bf16
// prefill (more than 16 query rows per sequence on average) with D in
// kPagedAttentionHeadDims runs on tensor cores when q, out and the pools are
// 16-byte aligned and their strides are multiples of 8 elements; a bf16 decode
// batch (at most 16 rows per sequence on average) does when the pools are.
// Decode batches with D in kPagedAttentionHeadDims split each sequence's keys
// over several blocks when a workspace is given and a query may see 2048 keys
// or more (the number of splits is chosen on the host from the page table's
// width, the window, the batch and the query count, never from device data, so
// a call can be recorded in a CUDA graph; each block sizes its key range from
// the actual context on the device); a second kernel then combines the partial
// results. The workspace is used for as many splits as fit
// (PagedAttentionSplitBytes each, at most kPagedAttentionMaxSplits).
absl::Status LaunchPagedAttention(const PagedAttentionArgs& args, void* stream);

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_GEMM_ATTENTION_ATTENTION_H_
