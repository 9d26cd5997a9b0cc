#include "kernels/cuda/gdr/gdr_ops.h"

#include <cstdint>
#include <initializer_list>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/gdr/gdr.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace {

constexpr int64_t kAny = kAnyDim;

absl::Status CheckView(const char* op, const char* name, const TensorView& t,
                       DType dtype, std::initializer_list<int64_t> dims) {
  return CheckTensor(op, name, t, dtype, dims, Device::kCuda);
}

// f32 or bf16: the view's own dtype when it is one of them, else f32 (so
// that CheckTensor's message says what was expected).
DType FloatDType(const TensorView& t) {
  return t.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
}

// Validates the views like CpuKernels' CheckGdr and fills the launch
// arguments.
absl::StatusOr<GdrArgs> MakeArgs(const char* op, const TensorView& q,
                                 const TensorView& k, const TensorView& v,
                                 const TensorView& g, const TensorView& beta,
                                 const TensorView& cu_seqlens,
                                 const TensorView& state,
                                 const TensorView& slots, float scale,
                                 bool l2norm_qk, const TensorView& out,
                                 bool f32_out_allowed) {
  const DType act = FloatDType(q);
  DS_RETURN_IF_ERROR(CheckView(op, "q", q, act, {kAny, kAny, kAny}));
  const int64_t tokens = q.dim(0);
  const int64_t hk = q.dim(1);
  const int64_t dk = q.dim(2);
  DS_RETURN_IF_ERROR(CheckView(op, "k", k, act, {tokens, hk, dk}));
  DS_RETURN_IF_ERROR(CheckView(op, "v", v, act, {tokens, kAny, kAny}));
  const int64_t hv = v.dim(1);
  const int64_t dv = v.dim(2);
  if (hk < 1 || hv < 1 || hv % hk != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the value heads of v ", v.DebugString(),
                     " are not a positive multiple of the key heads of q ",
                     q.DebugString()));
  }
  if (dk < 1 || dv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": empty head dimension in q ", q.DebugString(),
                     " or v ", v.DebugString()));
  }
  if (hv > INT32_MAX || dk > INT32_MAX || dv > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": v ", v.DebugString(),
                                                   " or q ", q.DebugString(),
                                                   " is too large"));
  }
  if (!g.empty()) {
    DS_RETURN_IF_ERROR(CheckView(op, "g", g, FloatDType(g), {tokens, hv}));
  }
  DS_RETURN_IF_ERROR(
      CheckView(op, "beta", beta, FloatDType(beta), {tokens, hv}));
  DS_RETURN_IF_ERROR(
      CheckView(op, "cu_seqlens", cu_seqlens, DType::kI32, {kAny}));
  if (cu_seqlens.dim(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cu_seqlens ", cu_seqlens.DebugString(),
                     " is empty, expected B + 1 >= 1 offsets"));
  }
  const int64_t batch = cu_seqlens.dim(0) - 1;
  DS_RETURN_IF_ERROR(
      CheckView(op, "state", state, DType::kF32, {kAny, hv, dk, dv}));
  if (batch > 0 && state.dim(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": state ", state.DebugString(), " has no slots"));
  }
  if (dk > 1 && state.strides[2] < dv) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": state ", state.DebugString(), " has key stride ",
                     state.strides[2], ", smaller than its row length"));
  }
  DS_RETURN_IF_ERROR(CheckView(op, "slots", slots, DType::kI32, {batch}));
  // The chunked form may widen bf16 inputs to an f32 out.
  const DType out_dtype =
      f32_out_allowed && out.dtype == DType::kF32 ? DType::kF32 : act;
  DS_RETURN_IF_ERROR(CheckView(op, "out", out, out_dtype, {tokens, hv, dv}));

  GdrArgs a;
  a.q = q.data;
  a.k = k.data;
  a.v = v.data;
  a.g = g.empty() ? nullptr : g.data;
  a.beta = beta.data;
  a.state = state.f32();
  a.cu_seqlens = cu_seqlens.i32();
  a.slots = slots.i32();
  a.out = out.data;
  a.act_bf16 = act == DType::kBF16;
  a.out_bf16 = out_dtype == DType::kBF16;
  a.g_bf16 = !g.empty() && g.dtype == DType::kBF16;
  a.beta_bf16 = beta.dtype == DType::kBF16;
  a.tokens = tokens;
  a.batch = batch;
  a.num_slots = state.dim(0);
  a.num_k_heads = static_cast<int>(hk);
  a.num_v_heads = static_cast<int>(hv);
  a.key_dim = static_cast<int>(dk);
  a.value_dim = static_cast<int>(dv);
  a.q_stride[0] = q.strides[0];
  a.q_stride[1] = q.strides[1];
  a.k_stride[0] = k.strides[0];
  a.k_stride[1] = k.strides[1];
  a.v_stride[0] = v.strides[0];
  a.v_stride[1] = v.strides[1];
  a.out_stride[0] = out.strides[0];
  a.out_stride[1] = out.strides[1];
  a.g_stride = g.empty() ? 0 : g.strides[0];
  a.beta_stride = beta.strides[0];
  a.state_stride[0] = state.strides[0];
  a.state_stride[1] = state.strides[1];
  a.state_stride[2] = dk > 1 ? state.strides[2] : dv;
  a.cu_seqlens_stride = cu_seqlens.strides[0];
  a.slots_stride = batch > 1 ? slots.strides[0] : 1;
  a.scale = scale;
  a.l2norm_qk = l2norm_qk;
  return a;
}

}  // namespace

absl::Status CudaGatedDeltaRuleRecurrent(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream) {
  constexpr char kOp[] = "GatedDeltaRuleRecurrent";
  DS_ASSIGN_OR_RETURN(const GdrArgs args,
                      MakeArgs(kOp, q, k, v, g, beta, cu_seqlens, state, slots,
                               scale, l2norm_qk, out,
                               /*f32_out_allowed=*/false));
  if (args.key_dim > kGdrRecurrentMaxKeyDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": q ", q.DebugString(), " has key dimension ", args.key_dim,
        ", the recurrent kernel supports at most ", kGdrRecurrentMaxKeyDim));
  }
  return LaunchGdrRecurrent(args, stream.native);
}

absl::Status CudaGatedDeltaRuleChunked(
    const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
    const TensorView& state, const TensorView& slots, float scale,
    bool l2norm_qk, const TensorView& out, Stream stream) {
  constexpr char kOp[] = "GatedDeltaRuleChunked";
  DS_ASSIGN_OR_RETURN(const GdrArgs args,
                      MakeArgs(kOp, q, k, v, g, beta, cu_seqlens, state, slots,
                               scale, l2norm_qk, out,
                               /*f32_out_allowed=*/true));
  if (args.key_dim != 32 && args.key_dim != 64 && args.key_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": q ", q.DebugString(), " has key dimension ", args.key_dim,
        ", the chunked kernel supports 32, 64 or 128"));
  }
  if (args.value_dim % kGdrChunkedValueTile != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": v ", v.DebugString(), " has value dimension ", args.value_dim,
        ", the chunked kernel needs a multiple of ", kGdrChunkedValueTile));
  }
  return LaunchGdrChunked(args, stream.native);
}

}  // namespace deltaserve
