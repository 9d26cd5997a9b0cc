#include "services/server/models_service.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/common/grpc_status.h"

namespace deltaserve {
namespace {

v1::LayerKind ToProto(MixerKind kind) {
  switch (kind) {
    case MixerKind::kGatedDeltaRule:
      return v1::LAYER_KIND_GATED_DELTA_RULE;
    case MixerKind::kGlobalAttention:
      return v1::LAYER_KIND_GLOBAL_ATTENTION;
    case MixerKind::kSlidingWindowAttention:
      return v1::LAYER_KIND_SLIDING_WINDOW_ATTENTION;
    case MixerKind::kLinearAttention:
      return v1::LAYER_KIND_LINEAR_ATTENTION;
    case MixerKind::kPowerAttention:
      return v1::LAYER_KIND_POWER_ATTENTION;
  }
  return v1::LAYER_KIND_UNSPECIFIED;
}

}  // namespace

v1::ModelInfo DescribeModel(const Engine& engine, bool is_default) {
  const Model& model = engine.model();
  const ModelSpec& spec = model.spec();
  v1::ModelInfo info;
  info.set_name(model.name());
  info.set_architecture(spec.model_type);
  for (const BlockSpec& block : spec.blocks) {
    info.add_layer_kinds(ToProto(block.mixer));
  }
  info.set_recurrent_state_bytes(spec.RecurrentStateBytes());
  info.set_kv_bytes_per_token(engine.kv_bytes_per_token());
  info.set_context_limit(engine.context_limit());
  info.set_has_tokenizer(model.tokenizer() != nullptr);
  info.set_vocab_size(spec.vocab_size);
  info.set_num_parameters(model.weights().NumParameters());
  info.mutable_eos_token_ids()->Add(spec.eos_token_ids.begin(),
                                    spec.eos_token_ids.end());
  info.set_is_default(is_default);
  return info;
}

ModelsService::ModelsService(const Engine* engine) : engine_(engine) {}

grpc::Status ModelsService::ListModels(grpc::ServerContext* /*context*/,
                                       const v1::ListModelsRequest* /*request*/,
                                       v1::ListModelsResponse* response) {
  *response->add_models() = DescribeModel(*engine_, /*is_default=*/true);
  return grpc::Status::OK;
}

grpc::Status ModelsService::GetModel(grpc::ServerContext* /*context*/,
                                     const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) {
  if (request->name() != engine_->model().name()) {
    return ToGrpcStatus(absl::NotFoundError(
        absl::StrCat("model \"", request->name(), "\" is not loaded")));
  }
  *response = DescribeModel(*engine_, /*is_default=*/true);
  return grpc::Status::OK;
}

}  // namespace deltaserve
