#include "services/server/server.h"

#include <arpa/inet.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/metrics/metrics.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/status.h"
#include "services/server/gpu_kernels.h"
#include "services/server/inference_service.h"
#include "services/server/metrics_http_server.h"
#include "services/server/models_service.h"
#include "services/server/sessions_service.h"

namespace deltaserve {
namespace {

// How long calls still open at shutdown get to finish before they are
// cancelled.
constexpr std::chrono::milliseconds kShutdownGrace(2000);

absl::StatusOr<std::unique_ptr<Kernels>> CreateKernels(
    const ServerOptions& options) {
  if (options.device == "cpu") {
    CpuKernels::Options cpu_options;
    cpu_options.num_threads = options.num_threads;
    DS_ASSIGN_OR_RETURN(std::unique_ptr<CpuKernels> kernels,
                        CpuKernels::Create(cpu_options));
    return std::unique_ptr<Kernels>(std::move(kernels));
  }
  if (options.device == "cuda") {
    if (options.gpus != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gpus = ", options.gpus,
          ": a server runs on exactly one GPU (start one server per GPU)"));
    }
    return CreateGpuKernels(options.gpu_device);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "device must be \"cpu\" or \"cuda\", got \"", options.device, "\""));
}

}  // namespace

Server::Server(const ServerOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options) {
  if (options.listen.empty()) {
    return absl::InvalidArgumentError("listen address is empty");
  }
  if (!options.metrics_listen.empty()) {
    DS_RETURN_IF_ERROR(MetricsHttpServer::CheckAddress(options.metrics_listen));
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Kernels> kernels, CreateKernels(options));
  auto server = std::unique_ptr<Server>(new Server(options));
  DS_ASSIGN_OR_RETURN(server->model_, Model::Load(options.model_dir));
  Engine::Options engine_options = options.engine;
  if (!options.metrics_listen.empty()) {
    server->metrics_ = std::make_unique<Metrics>(server->model_->name());
    engine_options.metrics = server->metrics_.get();
  }
  if (!options.state_dir.empty()) {
    RocksDbStateStore::Options store_options;
    store_options.path = options.state_dir;
    store_options.sync_writes = options.sync_state_writes;
    store_options.statistics = server->metrics_ != nullptr;
    std::unique_ptr<RocksDbStateStore> store;
    DS_ASSIGN_OR_RETURN(store, RocksDbStateStore::Create(store_options));
    if (server->metrics_ != nullptr) {
      store->SetObserver(server->metrics_.get());
      server->metrics_->SetRocksDbSource(
          [s = store.get()] { return s->GetStats(); });
    }
    server->state_store_ = std::move(store);
    engine_options.state_store = server->state_store_.get();
  }
  DS_ASSIGN_OR_RETURN(
      server->engine_,
      Engine::Create(server->model_.get(), std::move(kernels), engine_options));
  if (server->metrics_ != nullptr) {
    MetricsHttpServer::Options http;
    http.listen = options.metrics_listen;
    http.body = [m = server->metrics_.get()] { return m->TextFormat(); };
    DS_ASSIGN_OR_RETURN(server->metrics_http_,
                        MetricsHttpServer::Start(std::move(http)));
  }
  absl::BitGen bitgen;
  server->inference_service_ = std::make_unique<InferenceService>(
      server->engine_.get(), absl::Uniform<uint64_t>(bitgen));
  server->models_service_ =
      std::make_unique<ModelsService>(server->engine_.get());
  SessionsService::Options sessions_options;
  sessions_options.max_import_bytes = options.max_import_bytes;
  server->sessions_service_ = std::make_unique<SessionsService>(
      server->engine_.get(), sessions_options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(server->inference_service_.get());
  builder.RegisterService(server->models_service_.get());
  builder.RegisterService(server->sessions_service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  // The server as a whole ("") is SERVING by default; so is each service.
  if (grpc::HealthCheckServiceInterface* health =
          server->grpc_server_->GetHealthCheckService()) {
    health->SetServingStatus(v1::Inference::service_full_name(), true);
    health->SetServingStatus(v1::Models::service_full_name(), true);
    health->SetServingStatus(v1::Sessions::service_full_name(), true);
  }
  return server;
}

Server::~Server() {
  // No more scrapes: they read the engine and the store.
  metrics_http_.reset();
  if (metrics_ != nullptr) metrics_->SetRocksDbSource({});
  Shutdown();
  Wait();
  // The gRPC server goes first: its handlers use the services and engine.
  grpc_server_.reset();
}

std::string Server::address() const {
  const size_t colon = options_.listen.rfind(':');
  if (colon == std::string::npos) return options_.listen;
  return absl::StrCat(options_.listen.substr(0, colon), ":", port_);
}

int Server::metrics_port() const {
  return metrics_http_ != nullptr ? metrics_http_->port() : 0;
}

std::string Server::metrics_address() const {
  return metrics_http_ != nullptr ? metrics_http_->address() : "";
}

void Server::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
  }
  if (grpc_server_ == nullptr) {
    if (engine_ != nullptr) engine_->Shutdown();
    return;
  }
  if (grpc::HealthCheckServiceInterface* health =
          grpc_server_->GetHealthCheckService()) {
    health->Shutdown();
  }
  engine_->Shutdown();
  grpc_server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
}

bool Server::Drain(absl::Duration timeout) {
  if (grpc_server_ != nullptr) {
    if (grpc::HealthCheckServiceInterface* health =
            grpc_server_->GetHealthCheckService()) {
      health->SetServingStatus(false);
    }
  }
  engine_->StopAdmitting();
  const bool idle = engine_->WaitUntilIdle(timeout);
  Shutdown();
  return idle;
}

void Server::Wait() {
  if (grpc_server_ != nullptr) grpc_server_->Wait();
}

}  // namespace deltaserve
