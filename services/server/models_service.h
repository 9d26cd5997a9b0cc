// The deltaserve.v1.Models gRPC service: describes the loaded model.
#ifndef DELTASERVE_SERVICES_SERVER_MODELS_SERVICE_H_
#define DELTASERVE_SERVICES_SERVER_MODELS_SERVICE_H_

#include "engine/engine.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"

namespace deltaserve {

// What ListModels and GetModel report about the model `engine` serves.
v1::ModelInfo DescribeModel(const Engine& engine, bool is_default);

// Serves ListModels and GetModel for one Engine (the server's default
// model). Does not own the engine, which must outlive the service.
// Thread-safe.
class ModelsService final : public v1::Models::Service {
 public:
  explicit ModelsService(const Engine* engine);

  // Never fails.
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

  // NOT_FOUND when `name` is not the loaded model's name.
  grpc::Status GetModel(grpc::ServerContext* context,
                        const v1::GetModelRequest* request,
                        v1::ModelInfo* response) override;

 private:
  const Engine* const engine_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_MODELS_SERVICE_H_
