// Config parsers for the models whose recurrent layers are linear or power
// attention (softmax attention layers mixed in): fla's `linear_attn` and
// deltaserve's own `power_attn` (format: engine/model/README.md).
// ParseModelConfig dispatches to them; stateless functions.
#ifndef DELTASERVE_ENGINE_MODEL_LINEAR_CONFIGS_H_
#define DELTASERVE_ENGINE_MODEL_LINEAR_CONFIGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "nlohmann/json.hpp"

namespace deltaserve {

// fla's LinearAttentionConfig (model_type "linear_attn"). `source` names the
// file in errors. INVALID_ARGUMENT naming the field for a missing or
// malformed field or a setting the engine does not implement (a feature map
// other than "elu", norm_q / norm_k, ...).
absl::StatusOr<ModelSpec> ParseLinearAttnConfig(const nlohmann::json& j,
                                                const std::string& source);

// deltaserve's power-attention config (model_type "power_attn").
// INVALID_ARGUMENT naming the field as ParseLinearAttnConfig.
absl::StatusOr<ModelSpec> ParsePowerAttnConfig(const nlohmann::json& j,
                                               const std::string& source);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_LINEAR_CONFIGS_H_
