#include "kernels/cuda/gemm_attention/ops.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/gemm_attention/attention.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve::cuda_ops {
namespace {

constexpr int64_t kAny = kAnyDim;

absl::Status CheckView(const char* op, const char* name, const TensorView& t,
                       DType dtype, std::initializer_list<int64_t> dims) {
  return CheckTensor(op, name, t, dtype, dims, Device::kCuda);
}

// The floating dtype a call runs in: `t`'s when it is bf16, else f32 (so a
// wrong dtype is reported as "expected f32").
DType FloatType(const TensorView& t) {
  return t.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
}

// Checks that a 2-D matrix's rows do not overlap; returns its row stride.
absl::StatusOr<int64_t> LeadingDim(const char* op, const char* name,
                                   const TensorView& t) {
  const int64_t rows = t.dim(0);
  const int64_t cols = t.dim(1);
  if (rows > 1) {
    if (t.strides[0] < cols) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " ", t.DebugString(), " has row stride ",
                       t.strides[0], ", smaller than its row length"));
    }
    return t.strides[0];
  }
  return std::max<int64_t>(cols, 1);
}

// cu_seqlens i32 [B + 1] with unit stride; returns B.
absl::StatusOr<int64_t> CheckCuSeqlens(const char* op, const TensorView& cu) {
  DS_RETURN_IF_ERROR(CheckView(op, "cu_seqlens", cu, DType::kI32, {kAny}));
  if (cu.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": cu_seqlens ", cu.DebugString(), " needs at least one entry"));
  }
  return cu.dim(0) - 1;
}

// The pools [P, page_size, Hkv, D] (both of `dtype`) and the page table
// i32 [B, max_pages]; fills `kv`.
absl::Status CheckPages(const char* op, const TensorView& k_pages,
                        const TensorView& v_pages, const TensorView& page_table,
                        DType dtype, int64_t hkv, int64_t dim, int64_t batch,
                        PagedKv* kv) {
  DS_RETURN_IF_ERROR(
      CheckView(op, "k_pages", k_pages, dtype, {kAny, kAny, hkv, dim}));
  DS_RETURN_IF_ERROR(CheckView(
      op, "v_pages", v_pages, dtype,
      {k_pages.dim(0), k_pages.dim(1), k_pages.dim(2), k_pages.dim(3)}));
  if (k_pages.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": k_pages ", k_pages.DebugString(), " has empty pages"));
  }
  if (k_pages.dim(1) > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": k_pages ", k_pages.DebugString(), " has too large pages"));
  }
  DS_RETURN_IF_ERROR(
      CheckView(op, "page_table", page_table, DType::kI32, {batch, kAny}));
  if (page_table.dim(1) * k_pages.dim(1) > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": page_table ", page_table.DebugString(), " with page size ",
        k_pages.dim(1), " maps more than 2^31 positions"));
  }
  kv->k_pages = k_pages.data;
  kv->v_pages = v_pages.data;
  kv->page_table = page_table.i32();
  kv->num_pages = k_pages.dim(0);
  kv->page_size = static_cast<int>(k_pages.dim(1));
  kv->max_pages = static_cast<int>(page_table.dim(1));
  for (int i = 0; i < 3; ++i) {
    kv->k_stride[i] = k_pages.strides[i];
    kv->v_stride[i] = v_pages.strides[i];
  }
  kv->page_table_stride[0] = page_table.strides[0];
  kv->page_table_stride[1] = page_table.strides[1];
  return absl::OkStatus();
}

}  // namespace

absl::Status Gemm(CublasLtGemm* gemm, const TensorView& x, const TensorView& w,
                  const TensorView& out, bool accumulate, Stream stream) {
  constexpr char kOp[] = "Gemm";
  const DType in = FloatType(x);
  DS_RETURN_IF_ERROR(CheckView(kOp, "x", x, in, {kAny, kAny}));
  const int64_t m = x.dim(0);
  const int64_t kd = x.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "w", w, in, {kAny, kd}));
  const int64_t n = w.dim(0);
  const DType out_type = in == DType::kBF16 && out.dtype == DType::kBF16
                             ? DType::kBF16
                             : DType::kF32;
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, out_type, {m, n}));
  DS_ASSIGN_OR_RETURN(const int64_t ldx, LeadingDim(kOp, "x", x));
  DS_ASSIGN_OR_RETURN(const int64_t ldw, LeadingDim(kOp, "w", w));
  DS_ASSIGN_OR_RETURN(const int64_t ldo, LeadingDim(kOp, "out", out));
  if (gemm == nullptr) {
    return absl::InvalidArgumentError("Gemm: no cuBLASLt object");
  }
  GemmArgs args;
  args.x = x.data;
  args.w = w.data;
  args.out = out.data;
  args.in_dtype = in;
  args.out_dtype = out_type;
  args.m = m;
  args.n = n;
  args.k = kd;
  args.ldx = std::max(ldx, kd);
  args.ldw = std::max(ldw, kd);
  args.ldo = std::max(ldo, n);
  args.accumulate = accumulate;
  return gemm->Run(args, stream.native);
}

absl::Status KvAppend(const TensorView& k, const TensorView& v,
                      const TensorView& k_pages, const TensorView& v_pages,
                      const TensorView& page_table,
                      const TensorView& cu_seqlens, const TensorView& start_pos,
                      Stream stream) {
  constexpr char kOp[] = "KvAppend";
  const DType dtype = FloatType(k);
  DS_RETURN_IF_ERROR(CheckView(kOp, "k", k, dtype, {kAny, kAny, kAny}));
  const int64_t tokens = k.dim(0);
  const int64_t hkv = k.dim(1);
  const int64_t dim = k.dim(2);
  DS_RETURN_IF_ERROR(CheckView(kOp, "v", v, dtype, {tokens, hkv, dim}));
  if (tokens > INT32_MAX || hkv * dim > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": k ", k.DebugString(), " is too large"));
  }
  DS_ASSIGN_OR_RETURN(const int64_t batch, CheckCuSeqlens(kOp, cu_seqlens));
  KvAppendArgs args;
  DS_RETURN_IF_ERROR(CheckPages(kOp, k_pages, v_pages, page_table, dtype, hkv,
                                dim, batch, &args.kv));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "start_pos", start_pos, DType::kI32, {batch}));
  if (tokens > 0 && batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": cu_seqlens ", cu_seqlens.DebugString(),
                     " has no sequence for ", tokens, " tokens"));
  }
  args.k = k.data;
  args.v = v.data;
  args.cu_seqlens = cu_seqlens.i32();
  args.start_pos = start_pos.i32();
  args.dtype = dtype;
  args.tokens = tokens;
  args.batch = batch;
  args.num_kv_heads = static_cast<int>(hkv);
  args.head_dim = static_cast<int>(dim);
  args.k_stride[0] = k.strides[0];
  args.k_stride[1] = k.strides[1];
  args.v_stride[0] = v.strides[0];
  args.v_stride[1] = v.strides[1];
  args.start_pos_stride = start_pos.strides[0];
  return LaunchKvAppend(args, stream.native);
}

absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                            const TensorView& v_pages,
                            const TensorView& page_table,
                            const TensorView& cu_seqlens,
                            const TensorView& context_lens, int window,
                            float scale, const TensorView& out, Stream stream) {
  return PagedAttention(q, k_pages, v_pages, page_table, cu_seqlens,
                        context_lens, window, scale, out, nullptr, 0, stream);
}

absl::Status PagedAttention(const TensorView& q, const TensorView& k_pages,
                            const TensorView& v_pages,
                            const TensorView& page_table,
                            const TensorView& cu_seqlens,
                            const TensorView& context_lens, int window,
                            float scale, const TensorView& out, void* workspace,
                            int64_t workspace_bytes, Stream stream) {
  constexpr char kOp[] = "PagedAttention";
  const DType dtype = FloatType(q);
  DS_RETURN_IF_ERROR(CheckView(kOp, "q", q, dtype, {kAny, kAny, kAny}));
  const int64_t tokens = q.dim(0);
  const int64_t hq = q.dim(1);
  const int64_t dim = q.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "k_pages", k_pages, dtype, {kAny, kAny, kAny, dim}));
  const int64_t hkv = k_pages.dim(2);
  if (hkv < 1 || hq % hkv != 0 || hq > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the heads of q ", q.DebugString(),
                     " are not a multiple of the KV heads of k_pages ",
                     k_pages.DebugString()));
  }
  if (window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": window is ", window, ", expected >= 0"));
  }
  if (dim < 1 || dim > kGenericAttentionMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": q ", q.DebugString(), " has head dimension ", dim,
                     ", supported are 1 to ", kGenericAttentionMaxDim));
  }
  DS_ASSIGN_OR_RETURN(const int64_t batch, CheckCuSeqlens(kOp, cu_seqlens));
  PagedAttentionArgs args;
  DS_RETURN_IF_ERROR(CheckPages(kOp, k_pages, v_pages, page_table, dtype, hkv,
                                dim, batch, &args.kv));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "context_lens", context_lens, DType::kI32, {batch}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "out", out, dtype, {tokens, hq, dim}));
  if (tokens > 0 && batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": cu_seqlens ", cu_seqlens.DebugString(),
                     " has no sequence for ", tokens, " tokens"));
  }
  if (batch > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": cu_seqlens ", cu_seqlens.DebugString(),
                     " has more than 65535 sequences"));
  }
  args.q = q.data;
  args.cu_seqlens = cu_seqlens.i32();
  args.context_lens = context_lens.i32();
  args.out = out.data;
  args.dtype = dtype;
  args.tokens = tokens;
  args.batch = batch;
  args.num_q_heads = static_cast<int>(hq);
  args.num_kv_heads = static_cast<int>(hkv);
  args.head_dim = static_cast<int>(dim);
  args.window = window;
  args.scale = scale;
  args.q_stride[0] = q.strides[0];
  args.q_stride[1] = q.strides[1];
  args.out_stride[0] = out.strides[0];
  args.out_stride[1] = out.strides[1];
  args.context_lens_stride = context_lens.strides[0];
  args.workspace = workspace;
  args.workspace_bytes = workspace == nullptr ? 0 : workspace_bytes;
  return LaunchPagedAttention(args, stream.native);
}

}  // namespace deltaserve::cuda_ops
