#include "engine/model/model.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"
#include "kernels/status.h"

namespace deltaserve {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model directory not found: ", dir));
  }
  const fs::path config_path = fs::path(dir) / "config.json";
  std::ifstream in(config_path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("no config.json in model directory ", dir));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto model = std::unique_ptr<Model>(new Model());
  model->dir_ = dir;
  fs::path canonical = fs::weakly_canonical(fs::path(dir), ec);
  model->name_ = (ec ? fs::path(dir) : canonical).filename().string();
  if (model->name_.empty()) model->name_ = "model";
  DS_ASSIGN_OR_RETURN(model->spec_,
                      ParseModelConfig(ss.str(), config_path.string()));
  DS_ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(dir));
  DS_RETURN_IF_ERROR(FillDerivedSizes(*ckpt, &model->spec_));
  DS_ASSIGN_OR_RETURN(model->weights_, LoadWeights(model->spec_, *ckpt));
  const fs::path tok_path = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tok_path, ec)) {
    DS_ASSIGN_OR_RETURN(model->tokenizer_,
                        Tokenizer::FromFile(tok_path.string()));
    if (model->tokenizer_->vocab_size() > model->spec_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          tok_path.string(), " has ", model->tokenizer_->vocab_size(),
          " tokens but the model's vocab_size is ", model->spec_.vocab_size));
    }
  }
  return model;
}

std::unique_ptr<Model> Model::FromParts(std::string name, ModelSpec spec,
                                        ModelWeights weights,
                                        std::unique_ptr<Tokenizer> tokenizer) {
  auto model = std::unique_ptr<Model>(new Model());
  model->name_ = std::move(name);
  model->spec_ = std::move(spec);
  model->weights_ = std::move(weights);
  model->tokenizer_ = std::move(tokenizer);
  return model;
}

}  // namespace deltaserve
