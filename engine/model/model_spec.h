// ModelSpec: deltaserve's one internal description of a model, whatever its
// checkpoint format — embedding, blocks {token mixer, MLP, norms}, final norm,
// LM head. Plain data; ParseModelConfig builds it from an HF config.json.
#ifndef DELTASERVE_ENGINE_MODEL_MODEL_SPEC_H_
#define DELTASERVE_ENGINE_MODEL_MODEL_SPEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve {

enum class MixerKind {
  kGatedDeltaRule,
  kGlobalAttention,
  kSlidingWindowAttention,
  kLinearAttention,
  kPowerAttention,
};

const char* MixerKindName(MixerKind kind);

// A gated-delta-rule token mixer (Qwen3.5 / Qwen3-Next "linear_attention").
struct GatedDeltaRuleSpec {
  int num_k_heads = 0;
  int num_v_heads = 0;
  int head_k_dim = 0;
  int head_v_dim = 0;
  int conv_kernel = 4;
  // Data-dependent decay a_t (false: plain DeltaNet, a_t = 1).
  bool use_decay = true;
  // Output RMSNorm gated by SiLU(z).
  bool output_gate = true;

  int key_dim() const { return num_k_heads * head_k_dim; }
  int value_dim() const { return num_v_heads * head_v_dim; }
  // Channels of the short conv: q, k and v.
  int conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// A softmax attention token mixer.
struct AttentionSpec {
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  // Leading dims of each head that get RoPE (rotate-half pairing).
  int rotary_dim = 0;
  float rope_theta = 10000.0f;
  bool qk_norm = true;
  // Output multiplied by sigmoid(gate), the gate coming from q_proj.
  bool output_gate = true;
  // 0: global; else the number of most recent positions each query sees.
  int window = 0;
};

// A linear-attention token mixer: kLinearAttention (Katharopoulos, feature
// map elu + 1) or kPowerAttention (symmetric power of even `degree`, with
// an optional data-dependent gate and rotary embedding: conformal-sympow).
// The recurrent state is per kv head; see engine/model/README.md.
struct LinearAttentionSpec {
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // key/value heads (query head h reads h·Hkv/H)
  int head_k_dim = 0;
  int head_v_dim = 0;
  int degree = 0;  // kPowerAttention: the even power p; 0 otherwise
  // Outputs divided by the normaliser (the sum of the attention weights).
  bool normalize = true;
  // Each head's output goes through RMSNorm; with a weight when norm_affine
  // (else the weight is all ones).
  bool norm_affine = true;
  // kPowerAttention: log gate g = logsigmoid(g_proj(x) + gate_bias).
  bool gating = false;
  float gate_bias = 0.0f;
  // kPowerAttention: data-dependent rotary embedding of the first
  // rotary_dim dims of q and k, angle rate softplus(r_proj(x)) · θ^(−2i/r).
  bool rotary = false;
  int rotary_dim = 0;
  float rope_theta = 10000.0f;

  // Features per key: head_k_dim, or C(head_k_dim + p − 1, p).
  int64_t feature_dim() const;
  // fp32 recurrent state per sequence: the state [Hkv, F, V], then the
  // normaliser [Hkv, F] and the rotary angles [Hkv, rotary_dim / 2].
  int64_t state_floats() const {
    return int64_t{num_kv_heads} * feature_dim() * head_v_dim;
  }
  int64_t aux_floats() const {
    return int64_t{num_kv_heads} * feature_dim() +
           (rotary ? int64_t{num_kv_heads} * (rotary_dim / 2) : 0);
  }
};

struct BlockSpec {
  MixerKind mixer = MixerKind::kGatedDeltaRule;
  GatedDeltaRuleSpec gdr;      // when mixer == kGatedDeltaRule
  AttentionSpec attention;     // when mixer is an attention kind
  LinearAttentionSpec linear;  // when mixer is linear or power attention
  int intermediate_size = 0;   // SwiGLU MLP
};

struct ModelSpec {
  std::string model_type;  // config.json's model_type
  int vocab_size = 0;
  int hidden_size = 0;
  float rms_norm_eps = 1e-6f;
  // Norm weights are stored zero-centred (scale is 1 + w).
  bool norm_zero_centered = true;
  bool tie_word_embeddings = true;
  int64_t max_position_embeddings = 0;
  std::vector<int32_t> eos_token_ids;
  std::vector<BlockSpec> blocks;

  int num_layers() const { return static_cast<int>(blocks.size()); }
  // Bytes of fp32 recurrent state (states and conv tails) per sequence.
  int64_t RecurrentStateBytes() const;
  // Bytes of fp32 KV cache per token over all attention layers.
  int64_t KvBytesPerToken() const;
};

// Builds a ModelSpec from config.json text. `source` names the file in
// errors. INVALID_ARGUMENT for malformed JSON, an unknown model_type, or a
// missing/invalid field (the message names it).
absl::StatusOr<ModelSpec> ParseModelConfig(std::string_view json_text,
                                           const std::string& source);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_MODEL_SPEC_H_
