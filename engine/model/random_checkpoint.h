// Test helper: tiny checkpoints with seeded random weights, written from a
// config alone, for the fla-layout model types (linear_attn, power_attn,
// and their softmax attention layers). Test-only; stateless functions.
#ifndef DELTASERVE_ENGINE_MODEL_RANDOM_CHECKPOINT_H_
#define DELTASERVE_ENGINE_MODEL_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace deltaserve {

// Every tensor the model described by `config` needs, f32, filled from a
// generator seeded with `seed`: projections uniform in ±1/sqrt(fan-in),
// norm weights near 1, embeddings uniform in ±1. The MLP is
// `intermediate_size` wide when the config leaves it null. INVALID_ARGUMENT
// from ParseModelConfig for a bad config.
absl::StatusOr<std::vector<TensorToWrite>> RandomFlaTensors(
    const nlohmann::json& config, uint32_t seed, int intermediate_size = 96);

// Creates `dir` with config.json and model.safetensors holding `tensors`.
// INTERNAL when a file cannot be written.
absl::Status WriteModelDir(const std::string& dir, const nlohmann::json& config,
                           const std::vector<TensorToWrite>& tensors);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_RANDOM_CHECKPOINT_H_
