#include "kernels/cuda/gated_delta_rule_step_op.h"

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/gated_delta_rule_step.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace {

constexpr char kOp[] = "GatedDeltaRuleStep";
constexpr int64_t kAny = kAnyDim;

absl::Status CheckView(const char* name, const TensorView& t, DType dtype,
                       std::initializer_list<int64_t> dims) {
  return CheckTensor(kOp, name, t, dtype, dims, Device::kCuda);
}

}  // namespace

absl::Status GatedDeltaRuleStep(const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView& g,
                                const TensorView& beta, const TensorView& state,
                                const TensorView& slots, float scale,
                                bool l2norm_qk, const TensorView& out,
                                Stream stream) {
  DS_RETURN_IF_ERROR(CheckView("q", q, DType::kF32, {kAny, kAny, kAny}));
  const int64_t batch = q.dim(0);
  const int64_t hk = q.dim(1);
  const int64_t dk = q.dim(2);
  DS_RETURN_IF_ERROR(CheckView("k", k, DType::kF32, {batch, hk, dk}));
  DS_RETURN_IF_ERROR(CheckView("v", v, DType::kF32, {batch, kAny, kAny}));
  const int64_t hv = v.dim(1);
  const int64_t dv = v.dim(2);
  if (hk < 1 || hv < 1 || hv % hk != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the value heads of v ", v.DebugString(),
                     " are not a positive multiple of the key heads of q ",
                     q.DebugString()));
  }
  if (dk < 1 || dv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": empty head dimension in q ", q.DebugString(),
                     " or v ", v.DebugString()));
  }
  if (hv > INT32_MAX || dv > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": v ", v.DebugString(), " is too large for the step kernel"));
  }
  if (dk > kGdrStepMaxKeyDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": q ", q.DebugString(), " has key dimension ", dk,
                     ", the step kernel supports at most ", kGdrStepMaxKeyDim));
  }
  if (!g.empty()) {
    DS_RETURN_IF_ERROR(CheckView("g", g, DType::kF32, {batch, hv}));
  }
  DS_RETURN_IF_ERROR(CheckView("beta", beta, DType::kF32, {batch, hv}));
  DS_RETURN_IF_ERROR(
      CheckView("state", state, DType::kF32, {kAny, hv, dk, dv}));
  if (batch > 0 && state.dim(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state ", state.DebugString(), " has no slots"));
  }
  if (dk > 1 && state.strides[2] < dv) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state ", state.DebugString(), " has key stride ",
                     state.strides[2], ", smaller than its row length"));
  }
  DS_RETURN_IF_ERROR(CheckView("slots", slots, DType::kI32, {batch}));
  if (batch > 1 && slots.strides[0] != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": slots ", slots.DebugString(), " has stride ",
                     slots.strides[0], ", expected 1"));
  }
  DS_RETURN_IF_ERROR(CheckView("out", out, DType::kF32, {batch, hv, dv}));

  GdrStepArgs args;
  args.q = q.f32();
  args.k = k.f32();
  args.v = v.f32();
  args.g = g.empty() ? nullptr : g.f32();
  args.beta = beta.f32();
  args.state = state.f32();
  args.slots = slots.i32();
  args.out = out.f32();
  args.batch = batch;
  args.num_slots = state.dim(0);
  args.num_k_heads = static_cast<int>(hk);
  args.num_v_heads = static_cast<int>(hv);
  args.key_dim = static_cast<int>(dk);
  args.value_dim = static_cast<int>(dv);
  args.q_stride[0] = q.strides[0];
  args.q_stride[1] = q.strides[1];
  args.k_stride[0] = k.strides[0];
  args.k_stride[1] = k.strides[1];
  args.v_stride[0] = v.strides[0];
  args.v_stride[1] = v.strides[1];
  args.out_stride[0] = out.strides[0];
  args.out_stride[1] = out.strides[1];
  args.g_stride = g.empty() ? 0 : g.strides[0];
  args.beta_stride = beta.strides[0];
  args.state_stride[0] = state.strides[0];
  args.state_stride[1] = state.strides[1];
  args.state_stride[2] = dk > 1 ? state.strides[2] : dv;
  args.scale = scale;
  args.l2norm_qk = l2norm_qk;
  return LaunchGatedDeltaRuleStep(args, stream.native);
}

}  // namespace deltaserve
