// A loaded model: its ModelSpec, weights and (optional) tokenizer.
//
// Created once by Model::Load and immutable afterwards; shared read-only by
// the engine thread and the RPC handlers (thread-safe).
#ifndef DELTASERVE_ENGINE_MODEL_MODEL_H_
#define DELTASERVE_ENGINE_MODEL_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_spec.h"
#include "engine/model/tokenizer.h"
#include "engine/model/weights.h"

namespace deltaserve {

class Model {
 public:
  // Loads dir/config.json, the safetensors weights (single file or sharded)
  // and dir/tokenizer.json when present (without it the model serves token
  // ids only). NOT_FOUND when dir or its config/weights are missing;
  // INVALID_ARGUMENT naming the file, field or tensor for anything malformed.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir);

  // A model from parts already in memory (e.g. a variant of a loaded model
  // in tests). `tokenizer` may be null.
  static std::unique_ptr<Model> FromParts(std::string name, ModelSpec spec,
                                          ModelWeights weights,
                                          std::unique_ptr<Tokenizer> tokenizer);

  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }
  const ModelSpec& spec() const { return spec_; }
  const ModelWeights& weights() const { return weights_; }
  // nullptr when the model has no tokenizer.json.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }

 private:
  Model() = default;
  std::string name_;
  std::string dir_;
  ModelSpec spec_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_MODEL_H_
