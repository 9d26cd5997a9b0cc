#include "kernels/cuda/elementwise/elementwise_ops.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise/elementwise.h"
#include "kernels/status.h"
#include "kernels/tensor_check.h"

namespace deltaserve {
namespace {

constexpr int64_t kAny = kAnyDim;

absl::Status CheckView(const char* op, const char* name, const TensorView& t,
                       DType dtype, std::initializer_list<int64_t> dims) {
  return CheckTensor(op, name, t, dtype, dims, Device::kCuda);
}

// Checks that `t` is f32 or bf16 with `dims` and returns its dtype.
absl::StatusOr<DType> CheckFloatView(const char* op, const char* name,
                                     const TensorView& t,
                                     std::initializer_list<int64_t> dims) {
  const DType dtype = t.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  absl::Status status = CheckView(op, name, t, dtype, dims);
  if (!status.ok()) {
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " is ", t.DebugString(), ", expected ",
                       ExpectedSpec(DType::kF32, dims), " or bf16"));
    }
    return status;
  }
  return dtype;
}

// An output that is the same buffer as an input must have its strides, or
// rows computed in parallel would overwrite each other's inputs.
absl::Status CheckAlias(const char* op, const char* out_name,
                        const TensorView& out, const char* in_name,
                        const TensorView& in) {
  if (out.data != in.data || out.numel() == 0) return absl::OkStatus();
  for (int d = 0; d < out.ndim; ++d) {
    if (out.shape[d] > 1 && out.strides[d] != in.strides[d]) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": ", out_name, " ", out.DebugString(), " aliases ", in_name, " ",
          in.DebugString(), " with different strides"));
    }
  }
  return absl::OkStatus();
}

// Row stride of a 2-D view; 0 for a single row, whose stride is never used
// (so an arbitrary one does not defeat vector accesses).
int64_t RowStride(const TensorView& t) {
  return t.dim(0) > 1 ? t.strides[0] : 0;
}

absl::Status RmsNormImpl(const char* op, const TensorView& x,
                         const TensorView* z, const TensorView& weight,
                         float eps, bool zero_centered, const TensorView& out,
                         Stream stream) {
  DS_ASSIGN_OR_RETURN(const DType dtype,
                      CheckFloatView(op, "x", x, {kAny, kAny}));
  const int64_t rows = x.dim(0);
  const int64_t dim = x.dim(1);
  if (z != nullptr) {
    DS_RETURN_IF_ERROR(CheckView(op, "z", *z, dtype, {rows, dim}));
  }
  DS_ASSIGN_OR_RETURN(const DType weight_dtype,
                      CheckFloatView(op, "weight", weight, {dim}));
  // The norm may also narrow f32 rows to bf16 (not in place).
  const DType out_dtype =
      dtype == DType::kF32 && out.dtype == DType::kBF16 ? DType::kBF16 : dtype;
  DS_RETURN_IF_ERROR(CheckView(op, "out", out, out_dtype, {rows, dim}));
  if (out_dtype != dtype && out.data == x.data) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": out ", out.DebugString(), " narrows x ",
                     x.DebugString(), " in place"));
  }
  DS_RETURN_IF_ERROR(CheckAlias(op, "out", out, "x", x));
  if (z != nullptr) DS_RETURN_IF_ERROR(CheckAlias(op, "out", out, "z", *z));
  if (rows > INT32_MAX || dim > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": x ", x.DebugString(), " is too large"));
  }
  RmsNormArgs args;
  args.x = x.data;
  args.z = z != nullptr ? z->data : nullptr;
  args.weight = weight.data;
  args.out = out.data;
  args.dtype = dtype;
  args.out_dtype = out_dtype;
  args.weight_dtype = weight_dtype;
  args.rows = rows;
  args.dim = dim;
  args.x_stride = RowStride(x);
  args.z_stride = z != nullptr ? RowStride(*z) : 0;
  args.out_stride = RowStride(out);
  args.eps = eps;
  args.zero_centered = zero_centered;
  return LaunchRmsNorm(args, stream.native);
}

absl::Status BinaryImpl(const char* op, BinaryOp kind, const char* name_a,
                        const TensorView& a, const char* name_b,
                        const TensorView& b, const TensorView& out,
                        Stream stream) {
  DS_ASSIGN_OR_RETURN(const DType dtype,
                      CheckFloatView(op, name_a, a, {kAny, kAny}));
  const int64_t rows = a.dim(0);
  const int64_t cols = a.dim(1);
  DS_RETURN_IF_ERROR(CheckView(op, name_b, b, dtype, {rows, cols}));
  DS_RETURN_IF_ERROR(CheckView(op, "out", out, dtype, {rows, cols}));
  DS_RETURN_IF_ERROR(CheckAlias(op, "out", out, name_a, a));
  DS_RETURN_IF_ERROR(CheckAlias(op, "out", out, name_b, b));
  BinaryArgs args;
  args.op = kind;
  args.a = a.data;
  args.b = b.data;
  args.out = out.data;
  args.dtype = dtype;
  args.rows = rows;
  args.cols = cols;
  args.a_stride = RowStride(a);
  args.b_stride = RowStride(b);
  args.out_stride = RowStride(out);
  return LaunchBinary(args, stream.native);
}

// Checks the operands of a causal conv whose x is [rows, C] and fills the
// fields of `args` they give.
absl::Status CheckConv(const char* op, const TensorView& x,
                       const TensorView& weight, const TensorView& conv_state,
                       const TensorView& out, CausalConv1dArgs* args) {
  DS_ASSIGN_OR_RETURN(const DType dtype,
                      CheckFloatView(op, "x", x, {kAny, kAny}));
  const int64_t rows = x.dim(0);
  const int64_t channels = x.dim(1);
  DS_ASSIGN_OR_RETURN(const DType weight_dtype,
                      CheckFloatView(op, "weight", weight, {channels, kAny}));
  const int64_t width = weight.dim(1);
  if (width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": weight ", weight.DebugString(), " has no taps"));
  }
  if (width > kCausalConvMaxWidth) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": weight ", weight.DebugString(), " has ", width,
        " taps, the CUDA kernel supports at most ", kCausalConvMaxWidth));
  }
  DS_RETURN_IF_ERROR(CheckView(op, "conv_state", conv_state, DType::kF32,
                               {kAny, channels, width - 1}));
  // The conv may also narrow f32 inputs to bf16 (not in place).
  const DType out_dtype =
      dtype == DType::kF32 && out.dtype == DType::kBF16 ? DType::kBF16 : dtype;
  DS_RETURN_IF_ERROR(CheckView(op, "out", out, out_dtype, {rows, channels}));
  if (out_dtype != dtype && out.data == x.data) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": out ", out.DebugString(), " narrows x ",
                     x.DebugString(), " in place"));
  }
  DS_RETURN_IF_ERROR(CheckAlias(op, "out", out, "x", x));
  args->x = x.data;
  args->out = out.data;
  args->weight = weight.data;
  args->conv_state = conv_state.f32();
  args->dtype = dtype;
  args->out_dtype = out_dtype;
  args->weight_dtype = weight_dtype;
  args->tokens = rows;
  args->channels = channels;
  args->num_slots = conv_state.dim(0);
  args->width = static_cast<int>(width);
  args->x_stride = RowStride(x);
  args->out_stride = RowStride(out);
  args->weight_stride = RowStride(weight);
  args->state_stride[0] = conv_state.strides[0];
  args->state_stride[1] = conv_state.strides[1];
  return absl::OkStatus();
}

}  // namespace

namespace {

// Checks the views of an embedding gather and fills `args` (all but error).
absl::Status EmbeddingArgsFor(const TensorView& ids, const TensorView& table,
                              const TensorView& out, EmbeddingArgs* args) {
  constexpr char kOp[] = "Embedding";
  DS_RETURN_IF_ERROR(CheckView(kOp, "ids", ids, DType::kI32, {kAny}));
  DS_ASSIGN_OR_RETURN(const DType table_dtype,
                      CheckFloatView(kOp, "table", table, {kAny, kAny}));
  const int64_t tokens = ids.dim(0);
  const int64_t dim = table.dim(1);
  DS_ASSIGN_OR_RETURN(const DType out_dtype,
                      CheckFloatView(kOp, "out", out, {tokens, dim}));
  if (tokens > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ids ", ids.DebugString(), " is too long"));
  }
  args->ids = ids.i32();
  args->table = table.data;
  args->out = out.data;
  args->table_dtype = table_dtype;
  args->out_dtype = out_dtype;
  args->tokens = tokens;
  args->vocab = table.dim(0);
  args->dim = dim;
  args->table_stride = RowStride(table);
  args->out_stride = RowStride(out);
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaEmbedding(const TensorView& ids, const TensorView& table,
                           const TensorView& out, Stream stream) {
  constexpr char kOp[] = "Embedding";
  EmbeddingArgs args;
  DS_RETURN_IF_ERROR(EmbeddingArgsFor(ids, table, out, &args));
  if (args.tokens == 0) return absl::OkStatus();
  cudaStream_t s = static_cast<cudaStream_t>(stream.native);
  void* error = nullptr;
  DS_RETURN_IF_ERROR(CudaStatus(cudaMallocAsync(&error, sizeof(uint64_t), s),
                                "Embedding: cudaMallocAsync error word"));
  args.error = static_cast<uint64_t*>(error);
  absl::Status status = LaunchEmbedding(args, stream.native);
  uint64_t code = kEmbeddingNoError;
  if (status.ok()) {
    status = CudaStatus(
        cudaMemcpyAsync(&code, error, sizeof(code), cudaMemcpyDeviceToHost, s),
        "Embedding: reading the error word");
  }
  const absl::Status freed =
      CudaStatus(cudaFreeAsync(error, s), "Embedding: cudaFreeAsync");
  if (status.ok()) status = freed;
  if (status.ok()) {
    status = CudaStatus(cudaStreamSynchronize(s), "Embedding: synchronize");
  }
  DS_RETURN_IF_ERROR(status);
  if (code != kEmbeddingNoError) {
    const int64_t position = static_cast<int64_t>(code >> 32);
    const int32_t id = static_cast<int32_t>(static_cast<uint32_t>(code));
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ids[", position, "] = ", id, " is outside [0, ",
                     args.vocab, ") of table ", table.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status CudaEmbeddingNoWait(const TensorView& ids, const TensorView& table,
                                 const TensorView& out, uint64_t* error_word,
                                 Stream stream) {
  EmbeddingArgs args;
  DS_RETURN_IF_ERROR(EmbeddingArgsFor(ids, table, out, &args));
  if (args.tokens == 0) return absl::OkStatus();
  args.error = error_word;
  return LaunchEmbedding(args, stream.native);
}

absl::Status CudaRmsNorm(const TensorView& x, const TensorView& weight,
                         float eps, bool zero_centered, const TensorView& out,
                         Stream stream) {
  return RmsNormImpl("RmsNorm", x, nullptr, weight, eps, zero_centered, out,
                     stream);
}

absl::Status CudaRmsNormGated(const TensorView& x, const TensorView& z,
                              const TensorView& weight, float eps,
                              const TensorView& out, Stream stream) {
  return RmsNormImpl("RmsNormGated", x, &z, weight, eps,
                     /*zero_centered=*/false, out, stream);
}

absl::Status CudaRope(const TensorView& x, const TensorView& positions,
                      int rot_dim, float theta, Stream stream) {
  constexpr char kOp[] = "Rope";
  DS_ASSIGN_OR_RETURN(const DType dtype,
                      CheckFloatView(kOp, "x", x, {kAny, kAny, kAny}));
  const int64_t tokens = x.dim(0);
  const int64_t heads = x.dim(1);
  const int64_t head_dim = x.dim(2);
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "positions", positions, DType::kI32, {tokens}));
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": rot_dim ", rot_dim, " must be even and in (0, head_dim] for x ",
        x.DebugString()));
  }
  if (rot_dim > kRopeMaxRotDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": rot_dim ", rot_dim,
                     " is above the CUDA kernel's limit ", kRopeMaxRotDim));
  }
  if (tokens > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x ", x.DebugString(), " has too many tokens"));
  }
  RopeArgs args;
  args.x = x.data;
  args.dtype = dtype;
  args.positions = positions.i32();
  args.tokens = tokens;
  args.heads = heads;
  args.head_dim = head_dim;
  args.token_stride = x.strides[0];
  args.head_stride = x.strides[1];
  args.rot_dim = rot_dim;
  args.theta = theta;
  return LaunchRope(args, stream.native);
}

absl::Status CudaAdd(const TensorView& a, const TensorView& b,
                     const TensorView& out, Stream stream) {
  return BinaryImpl("Add", BinaryOp::kAdd, "a", a, "b", b, out, stream);
}

absl::Status CudaSwiGlu(const TensorView& gate, const TensorView& up,
                        const TensorView& out, Stream stream) {
  return BinaryImpl("SwiGlu", BinaryOp::kSwiGlu, "gate", gate, "up", up, out,
                    stream);
}

absl::Status CudaSigmoidGate(const TensorView& x, const TensorView& gate,
                             const TensorView& out, Stream stream) {
  return BinaryImpl("SigmoidGate", BinaryOp::kSigmoidGate, "x", x, "gate", gate,
                    out, stream);
}

absl::Status CudaCausalConv1d(const TensorView& x, const TensorView& weight,
                              const TensorView& cu_seqlens,
                              const TensorView& conv_state,
                              const TensorView& slots, bool silu,
                              const TensorView& out, Stream stream) {
  constexpr char kOp[] = "CausalConv1d";
  CausalConv1dArgs args;
  DS_RETURN_IF_ERROR(CheckConv(kOp, x, weight, conv_state, out, &args));
  DS_RETURN_IF_ERROR(
      CheckView(kOp, "cu_seqlens", cu_seqlens, DType::kI32, {kAny}));
  if (cu_seqlens.dim(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": cu_seqlens ", cu_seqlens.DebugString(),
                     " needs at least one entry"));
  }
  const int64_t batch = cu_seqlens.dim(0) - 1;
  DS_RETURN_IF_ERROR(CheckView(kOp, "slots", slots, DType::kI32, {batch}));
  args.cu_seqlens = cu_seqlens.i32();
  args.slots = slots.i32();
  args.batch = batch;
  args.silu = silu;
  return LaunchCausalConv1d(args, stream.native);
}

absl::Status CudaCausalConv1dUpdate(const TensorView& x,
                                    const TensorView& weight,
                                    const TensorView& conv_state,
                                    const TensorView& slots, bool silu,
                                    const TensorView& out, Stream stream) {
  constexpr char kOp[] = "CausalConv1dUpdate";
  CausalConv1dArgs args;
  DS_RETURN_IF_ERROR(CheckConv(kOp, x, weight, conv_state, out, &args));
  DS_RETURN_IF_ERROR(CheckView(kOp, "slots", slots, DType::kI32, {x.dim(0)}));
  args.cu_seqlens = nullptr;
  args.slots = slots.i32();
  args.batch = x.dim(0);
  args.silu = silu;
  return LaunchCausalConv1d(args, stream.native);
}

absl::Status CudaGdnGates(const TensorView& a, const TensorView& b,
                          const TensorView& a_log, const TensorView& dt_bias,
                          const TensorView& g, const TensorView& beta,
                          Stream stream) {
  constexpr char kOp[] = "GdnGates";
  DS_ASSIGN_OR_RETURN(const DType dtype,
                      CheckFloatView(kOp, "a", a, {kAny, kAny}));
  const int64_t tokens = a.dim(0);
  const int64_t heads = a.dim(1);
  DS_RETURN_IF_ERROR(CheckView(kOp, "b", b, dtype, {tokens, heads}));
  DS_ASSIGN_OR_RETURN(const DType weight_dtype,
                      CheckFloatView(kOp, "a_log", a_log, {heads}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "dt_bias", dt_bias, weight_dtype, {heads}));
  DS_ASSIGN_OR_RETURN(const DType gate_dtype,
                      CheckFloatView(kOp, "g", g, {tokens, heads}));
  DS_RETURN_IF_ERROR(CheckView(kOp, "beta", beta, gate_dtype, {tokens, heads}));
  GdnGatesArgs args;
  args.a = a.data;
  args.b = b.data;
  args.a_log = a_log.data;
  args.dt_bias = dt_bias.data;
  args.g = g.data;
  args.beta = beta.data;
  args.dtype = dtype;
  args.weight_dtype = weight_dtype;
  args.gate_dtype = gate_dtype;
  args.tokens = tokens;
  args.heads = heads;
  args.a_stride = RowStride(a);
  args.b_stride = RowStride(b);
  args.g_stride = RowStride(g);
  args.beta_stride = RowStride(beta);
  return LaunchGdnGates(args, stream.native);
}

}  // namespace deltaserve
