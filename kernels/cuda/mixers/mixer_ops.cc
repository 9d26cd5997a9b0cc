#include "kernels/cuda/mixers/mixer_ops.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/mixers/mixers.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace {

constexpr int64_t kAny = kAnyDim;

absl::Status CheckView(const char* op, const char* name, const TensorView& t,
                       std::initializer_list<int64_t> dims,
                       DType dtype = DType::kF32) {
  return CheckTensor(op, name, t, dtype, dims, Device::kCuda);
}

// The sequence count of cu_seqlens (i32 [B + 1], B + 1 ≥ 1).
absl::StatusOr<int64_t> Batch(const char* op, const TensorView& cu) {
  DS_RETURN_IF_ERROR(CheckView(op, "cu_seqlens", cu, {kAny}, DType::kI32));
  if (cu.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": cu_seqlens ", cu.DebugString(), " needs at least one entry"));
  }
  if (cu.strides[0] != 1 && cu.dim(0) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": cu_seqlens ", cu.DebugString(), " must be contiguous"));
  }
  return cu.dim(0) - 1;
}

// slots: contiguous i32 [B].
absl::Status CheckSlots(const char* op, const TensorView& slots,
                        int64_t batch) {
  DS_RETURN_IF_ERROR(CheckView(op, "slots", slots, {batch}, DType::kI32));
  if (batch > 1 && slots.strides[0] != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": slots ", slots.DebugString(), " must be contiguous"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaMixer(const char* op, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& g,
                       const TensorView& cu_seqlens, const TensorView& state,
                       const TensorView& normalizer, const TensorView& slots,
                       int degree, float scale, bool normalize,
                       const TensorView& out, Stream stream) {
  DS_RETURN_IF_ERROR(CheckView(op, "q", q, {kAny, kAny, kAny}));
  const int64_t t = q.dim(0), h = q.dim(1), dk = q.dim(2);
  DS_RETURN_IF_ERROR(CheckView(op, "k", k, {t, kAny, dk}));
  const int64_t hkv = k.dim(1);
  DS_RETURN_IF_ERROR(CheckView(op, "v", v, {t, hkv, kAny}));
  const int64_t dv = v.dim(2);
  if (hkv < 1 || h % hkv != 0 || dk < 1 || dv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the heads of q ", q.DebugString(),
                     " are not a positive multiple of the kv heads of k ",
                     k.DebugString(), ", or a head dimension is empty"));
  }
  if (dk > kMixerMaxKeyDim || h > INT32_MAX || dv > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": q ", q.DebugString(), " has head dimension ", dk,
                     ", the CUDA kernel takes at most ", kMixerMaxKeyDim));
  }
  const bool linear = degree == kLinearFeatureMap;
  if (!linear && (degree < 2 || degree > 16 || degree % 2 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": degree ", degree, " is not an even number in [2, 16]"));
  }
  if (linear) degree = 0;  // the launcher's name for elu + 1
  const int64_t f = linear ? dk : PowerFeatureDim(dk, degree);
  if (f < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": C(", dk, " + ", degree, " − 1, ", degree, ") is too large"));
  }
  if (!g.empty()) DS_RETURN_IF_ERROR(CheckView(op, "g", g, {t, hkv}));
  DS_ASSIGN_OR_RETURN(const int64_t batch, Batch(op, cu_seqlens));
  DS_RETURN_IF_ERROR(CheckView(op, "state", state, {kAny, hkv, f, dv}));
  DS_RETURN_IF_ERROR(
      CheckView(op, "normalizer", normalizer, {state.dim(0), hkv, f}));
  DS_RETURN_IF_ERROR(CheckSlots(op, slots, batch));
  DS_RETURN_IF_ERROR(CheckView(op, "out", out, {t, h, dv}));
  MixerArgs a;
  a.q = q.f32();
  a.k = k.f32();
  a.v = v.f32();
  a.g = g.empty() ? nullptr : g.f32();
  a.state = state.f32();
  a.normalizer = normalizer.f32();
  a.cu_seqlens = cu_seqlens.i32();
  a.slots = slots.i32();
  a.out = out.f32();
  a.tokens = t;
  a.batch = batch;
  a.num_slots = state.dim(0);
  a.features = f;
  a.heads = static_cast<int>(h);
  a.kv_heads = static_cast<int>(hkv);
  a.key_dim = static_cast<int>(dk);
  a.value_dim = static_cast<int>(dv);
  a.degree = degree;
  a.q_stride[0] = q.strides[0];
  a.q_stride[1] = q.strides[1];
  a.k_stride[0] = k.strides[0];
  a.k_stride[1] = k.strides[1];
  a.v_stride[0] = v.strides[0];
  a.v_stride[1] = v.strides[1];
  a.out_stride[0] = out.strides[0];
  a.out_stride[1] = out.strides[1];
  a.g_stride = g.empty() ? 0 : g.strides[0];
  for (int i = 0; i < 3; ++i) a.state_stride[i] = state.strides[i];
  a.normalizer_stride[0] = normalizer.strides[0];
  a.normalizer_stride[1] = normalizer.strides[1];
  // φ̂(q) = φ(scale · q): scale^p for a power map, scale for elu + 1 (as
  // CpuKernels).
  a.factor =
      degree == 0
          ? scale
          : static_cast<float>(std::pow(static_cast<double>(scale), degree));
  a.eps = degree == 0 ? 1e-10f : 1e-6f;
  a.normalize = normalize;
  return LaunchMixer(a, stream.native);
}

absl::Status CudaPowerAttentionGates(const TensorView& gate_logits,
                                     const TensorView& rate_logits,
                                     float gate_bias, const TensorView& g,
                                     const TensorView& rate, Stream stream) {
  constexpr char kOp[] = "PowerAttentionGates";
  int64_t tokens = -1, heads = -1;
  for (const auto& [name_in, in, name_out, o] :
       {std::tuple<const char*, const TensorView*, const char*,
                   const TensorView*>{"gate_logits", &gate_logits, "g", &g},
        {"rate_logits", &rate_logits, "rate", &rate}}) {
    if (in->empty() != o->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name_in, " ", in->DebugString(), " and ", name_out, " ",
          o->DebugString(), " must both be given or both be empty"));
    }
    if (in->empty()) continue;
    DS_RETURN_IF_ERROR(CheckView(kOp, name_in, *in, {kAny, kAny}));
    DS_RETURN_IF_ERROR(CheckView(kOp, name_out, *o, {in->dim(0), in->dim(1)}));
    if (tokens >= 0 && (in->dim(0) != tokens || in->dim(1) != heads)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": rate_logits ", in->DebugString(),
          " differs in shape from gate_logits ", gate_logits.DebugString()));
    }
    tokens = in->dim(0);
    heads = in->dim(1);
  }
  if (tokens < 0) return absl::OkStatus();
  MixerGatesArgs a;
  if (!g.empty()) {
    a.gate_logits = gate_logits.f32();
    a.g = g.f32();
    a.gate_logits_stride = gate_logits.strides[0];
    a.g_stride = g.strides[0];
  }
  if (!rate.empty()) {
    a.rate_logits = rate_logits.f32();
    a.rate = rate.f32();
    a.rate_logits_stride = rate_logits.strides[0];
    a.rate_stride = rate.strides[0];
  }
  a.tokens = tokens;
  a.heads = static_cast<int>(heads);
  a.bias = gate_bias;
  return LaunchMixerGates(a, stream.native);
}

absl::Status CudaCumulativeRope(const TensorView& q, const TensorView& k,
                                const TensorView& rate,
                                const TensorView& cu_seqlens,
                                const TensorView& angle,
                                const TensorView& slots, int rot_dim,
                                float theta, Stream stream) {
  constexpr char kOp[] = "CumulativeRope";
  DS_RETURN_IF_ERROR(CheckView(kOp, "q", q, {kAny, kAny, kAny}));
  const int64_t t = q.dim(0), h = q.dim(1), dim = q.dim(2);
  DS_RETURN_IF_ERROR(CheckView(kOp, "k", k, {t, kAny, dim}));
  const int64_t hkv = k.dim(1);
  if (hkv < 1 || h < 1 || h % hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": the heads of q ", q.DebugString(),
        " are not a positive multiple of the kv heads of k ", k.DebugString()));
  }
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > dim || rot_dim > 2048) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": rot_dim ", rot_dim,
                     " must be even and in (0, min(head_dim, 2048)] for q ",
                     q.DebugString()));
  }
  DS_RETURN_IF_ERROR(CheckView(kOp, "rate", rate, {t, hkv}));
  DS_ASSIGN_OR_RETURN(const int64_t batch, Batch(kOp, cu_seqlens));
  DS_RETURN_IF_ERROR(CheckView(kOp, "angle", angle, {kAny, hkv, rot_dim / 2}));
  DS_RETURN_IF_ERROR(CheckSlots(kOp, slots, batch));
  CumulativeRopeArgs a;
  a.q = q.f32();
  a.k = k.f32();
  a.rate = rate.f32();
  a.cu_seqlens = cu_seqlens.i32();
  a.angle = angle.f32();
  a.slots = slots.i32();
  a.tokens = t;
  a.batch = batch;
  a.num_slots = angle.dim(0);
  a.heads = static_cast<int>(h);
  a.kv_heads = static_cast<int>(hkv);
  a.rot_dim = rot_dim;
  a.q_stride[0] = q.strides[0];
  a.q_stride[1] = q.strides[1];
  a.k_stride[0] = k.strides[0];
  a.k_stride[1] = k.strides[1];
  a.rate_stride = rate.strides[0];
  a.angle_stride[0] = angle.strides[0];
  a.angle_stride[1] = angle.strides[1];
  a.theta = theta;
  return LaunchCumulativeRope(a, stream.native);
}

}  // namespace deltaserve
