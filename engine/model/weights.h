// Model weights in the engine's layout, loaded from a checkpoint.
//
// ModelWeights owns fp32 host copies of every tensor a ModelSpec needs (each
// checkpoint tensor is read once from the memory map and converted once).
// Immutable after loading; safe to read from any thread.
#ifndef DELTASERVE_ENGINE_MODEL_WEIGHTS_H_
#define DELTASERVE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "engine/model/safetensors.h"
#include "kernels/tensor.h"

namespace deltaserve {

// One fp32 tensor owned by the model.
struct Weight {
  std::vector<float> data;
  std::vector<int64_t> shape;

  bool empty() const { return data.empty(); }
  // A contiguous view (1-D or 2-D; higher ranks are flattened to 2-D).
  TensorView view() const;
};

struct GatedDeltaRuleWeights {
  Weight in_proj_qkv;  // [conv_dim, D]: q, k, v channels
  Weight in_proj_z;    // [value_dim, D]
  Weight in_proj_b;    // [Hv, D]
  Weight in_proj_a;    // [Hv, D]
  Weight conv;         // [conv_dim, W]
  Weight a_log;        // [Hv]
  Weight dt_bias;      // [Hv]
  Weight norm;         // [head_v_dim]
  Weight out_proj;     // [D, value_dim]
};

struct AttentionWeights {
  Weight q_proj;  // [H·hd·(gate ? 2 : 1), D], per head: query then gate
  Weight k_proj;  // [Hkv·hd, D]
  Weight v_proj;  // [Hkv·hd, D]
  Weight o_proj;  // [D, H·hd]
  Weight q_norm;  // [hd]
  Weight k_norm;  // [hd]
};

struct BlockWeights {
  Weight input_norm;  // [D]
  Weight post_norm;   // [D]
  GatedDeltaRuleWeights gdr;
  AttentionWeights attention;
  Weight gate_proj;  // [I, D]
  Weight up_proj;    // [I, D]
  Weight down_proj;  // [D, I]
};

struct ModelWeights {
  Weight embed;       // [V, D]
  Weight final_norm;  // [D]
  Weight lm_head;     // [V, D]; empty when tied to embed
  std::vector<BlockWeights> blocks;

  const Weight& LmHead() const { return lm_head.empty() ? embed : lm_head; }

  int64_t NumParameters() const;
};

// Loads the weights `spec` needs from `ckpt`. INVALID_ARGUMENT naming the
// tensor when one is missing or has the wrong shape.
absl::StatusOr<ModelWeights> LoadWeights(const ModelSpec& spec,
                                         const Checkpoint& ckpt);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_WEIGHTS_H_
