// Model weights in the engine's layout, loaded from a checkpoint.
//
// ModelWeights owns fp32 host copies of every tensor a ModelSpec needs (each
// checkpoint tensor is read once from the memory map and converted once).
// Immutable after loading; safe to read from any thread.
#ifndef DELTASERVE_ENGINE_MODEL_WEIGHTS_H_
#define DELTASERVE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "engine/model/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/memory.h"
#include "kernels/tensor.h"

namespace deltaserve {

// One tensor owned by the model: fp32 in host memory, or (after
// UploadWeights) a copy in a kernel implementation's memory.
struct Weight {
  std::vector<float> data;  // host fp32; empty for a device copy
  std::vector<int64_t> shape;
  std::shared_ptr<Buffer> device;  // the device copy, when there is one
  DType device_dtype = DType::kF32;

  bool empty() const { return data.empty() && device == nullptr; }
  int64_t numel() const;
  // A contiguous view (1-D or 2-D; higher ranks are flattened to 2-D) of
  // the device copy when there is one, else of the host data.
  TensorView view() const;
};

struct GatedDeltaRuleWeights {
  Weight in_proj_qkv;  // [conv_dim, D]: q, k, v channels
  Weight in_proj_z;    // [value_dim, D]
  Weight in_proj_b;    // [Hv, D]
  Weight in_proj_a;    // [Hv, D]
  // Device copies only (UploadWeights with `fuse`): qkv, z (when present),
  // b and a stacked as one [conv_dim (+ value_dim) + 2·Hv, D] matrix, and
  // then the four above are left empty.
  Weight in_proj_all;
  Weight conv;      // [conv_dim, W]
  Weight a_log;     // [Hv]
  Weight dt_bias;   // [Hv]
  Weight norm;      // [head_v_dim]
  Weight out_proj;  // [D, value_dim]
};

struct AttentionWeights {
  Weight q_proj;  // [H·hd·(gate ? 2 : 1), D], per head: query then gate
  Weight k_proj;  // [Hkv·hd, D]
  Weight v_proj;  // [Hkv·hd, D]
  Weight o_proj;  // [D, H·hd]
  Weight q_norm;  // [hd]
  Weight k_norm;  // [hd]
};

// Linear and power attention (LinearAttentionSpec): H query heads, Hkv
// key/value heads, head dims dk and dv.
struct LinearAttentionWeights {
  Weight q_proj;  // [H·dk, D]
  Weight k_proj;  // [Hkv·dk, D]
  Weight v_proj;  // [Hkv·dv, D]
  Weight g_proj;  // [Hkv, D] gate logits (power attention with gating)
  Weight r_proj;  // [Hkv, D] rotary rate logits (power attention, rotary)
  Weight norm;    // [dv] output RMSNorm (all ones when not affine)
  Weight o_proj;  // [D, H·dv]
};

struct BlockWeights {
  Weight input_norm;  // [D]
  Weight post_norm;   // [D]
  GatedDeltaRuleWeights gdr;
  AttentionWeights attention;
  LinearAttentionWeights linear;
  Weight gate_proj;  // [I, D]
  Weight up_proj;    // [I, D]
  Weight down_proj;  // [D, I]
  // Device copies only (UploadWeights with `fuse`): gate then up as one
  // [2·I, D] matrix, and then gate_proj and up_proj are left empty.
  Weight gate_up;
};

struct ModelWeights {
  Weight embed;       // [V, D]
  Weight final_norm;  // [D]
  Weight lm_head;     // [V, D]; empty when tied to embed
  std::vector<BlockWeights> blocks;

  const Weight& LmHead() const { return lm_head.empty() ? embed : lm_head; }

  int64_t NumParameters() const;
};

// Copies every weight of `host` into `memory` (waiting for the copies):
// matrices (projections, embedding, LM head) as `matrix_dtype` (f32 or
// bf16), vectors and the conv weights as f32. With `fuse`, the matrices that
// read the same input are stacked (in_proj_all, gate_up) so that one matrix
// product computes them all. RESOURCE_EXHAUSTED when the memory is full;
// INTERNAL when a copy fails.
absl::StatusOr<ModelWeights> UploadWeights(const ModelWeights& host,
                                           DeviceMemory* memory,
                                           DType matrix_dtype, Stream stream,
                                           bool fuse = false);

// Fills the sizes a config leaves to be derived (fla's MLP
// intermediate_size, 0 in the spec) from the tensor shapes of `ckpt`.
// INVALID_ARGUMENT naming the tensor when it is missing or malformed.
absl::Status FillDerivedSizes(const Checkpoint& ckpt, ModelSpec* spec);

// Loads the weights `spec` needs from `ckpt`. INVALID_ARGUMENT naming the
// tensor when one is missing or has the wrong shape.
absl::StatusOr<ModelWeights> LoadWeights(const ModelSpec& spec,
                                         const Checkpoint& ckpt);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_WEIGHTS_H_
