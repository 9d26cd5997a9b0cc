// The deltaserve server's composition root: the one place that picks the
// concrete kernels, loads the model, creates the Engine and serves it over
// gRPC (Inference, Models, Sessions, grpc.health.v1 and server reflection),
// with sessions kept in a RocksDB state store.
#ifndef DELTASERVE_SERVICES_SERVER_SERVER_H_
#define DELTASERVE_SERVICES_SERVER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/model/model.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace deltaserve {

class InferenceService;
class Metrics;
class MetricsHttpServer;
class ModelsService;
class SessionsService;
class StateStore;

struct ServerOptions {
  // Directory of the model checkpoint (config.json, *.safetensors and
  // optionally tokenizer.json).
  std::string model_dir;
  // gRPC listening address; port 0 picks a free port (see Server::port()).
  std::string listen = "127.0.0.1:50051";
  // "cpu" or "cuda".
  std::string device = "cpu";
  // For "cuda": how many GPUs (one for now) and the first one's ordinal.
  int gpus = 1;
  int gpu_device = 0;
  Engine::Options engine;
  // Threads of the CPU kernels; 0 keeps the BLAS library's default.
  int num_threads = 0;
  // RocksDB directory of the sessions' state (created if missing); empty:
  // no sessions (the Sessions calls answer FAILED_PRECONDITION).
  std::string state_dir;
  // Sync the write-ahead log on every session commit (survives power loss,
  // not only process crashes).
  bool sync_state_writes = true;
  // Largest session export ImportSession accepts.
  int64_t max_import_bytes = int64_t{4} << 30;
  // Address ("HOST:PORT", HOST an IP address, "localhost" or empty for
  // every interface) to serve Prometheus metrics on at /metrics
  // (MetricsHttpServer); port 0 picks a free port (see
  // Server::metrics_port()). Empty: no metrics.
  std::string metrics_listen;
};

// A running deltaserve server. Owns the model, the engine and the gRPC
// server. Thread-safe: Shutdown may be called from any thread (e.g. a
// signal handler thread) while another waits in Wait().
class Server {
 public:
  // Creates the kernels for `options.device`, loads the model, starts the
  // engine and starts serving on `options.listen` (and metrics on
  // `options.metrics_listen`). Errors:
  //   INVALID_ARGUMENT    unknown device, gpus other than 1, bad engine
  //                       options, a malformed metrics address or a
  //                       malformed model (as Model::Load);
  //   FAILED_PRECONDITION device "cuda" in a build without CUDA support or
  //                       on a machine without that GPU;
  //   NOT_FOUND           the model directory or its files are missing;
  //   UNAVAILABLE         the address or the metrics address cannot be
  //                       listened on (e.g. its port is in use);
  //   others              the state directory cannot be opened (as
  //                       RocksDbStateStore::Create: e.g. INTERNAL when
  //                       another server holds it).
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Shuts down and waits.
  ~Server();

  // The port that the server listens on (the one picked when the requested
  // port was 0).
  int port() const { return port_; }
  // "HOST:PORT" with the requested host and the bound port.
  std::string address() const;
  // The metrics port (the one picked when the requested port was 0) and
  // "HOST:PORT" like address(); 0 and "" without metrics.
  int metrics_port() const;
  std::string metrics_address() const;
  // The server's metrics; null without options.metrics_listen.
  const Metrics* metrics() const { return metrics_.get(); }
  const ServerOptions& options() const { return options_; }
  const Model& model() const { return *model_; }
  Engine& engine() { return *engine_; }

  // Reports NOT_SERVING to health checks, stops the engine (active
  // generations end with FINISH_REASON_CANCELLED, new ones get UNAVAILABLE)
  // and then shuts the gRPC server down, cancelling calls still open after a
  // short grace period. Idempotent.
  void Shutdown();
  // Graceful drain (what SIGTERM does): health checks turn NOT_SERVING,
  // new generations, appends and new sessions get UNAVAILABLE, admitted
  // generations run on to their end for up to `timeout`, then Shutdown()
  // (what still runs ends with FINISH_REASON_CANCELLED, its session
  // committed with what it fed). Sessions are committed after every call,
  // so when it returns every session's state is on disk. True when every
  // admitted generation ended by itself. Idempotent.
  bool Drain(absl::Duration timeout);
  // Blocks until the gRPC server has shut down.
  void Wait();

 private:
  explicit Server(const ServerOptions& options);

  const ServerOptions options_;
  std::unique_ptr<Model> model_;
  // Outlives what reports into it (the store, the engine).
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<StateStore> state_store_;  // outlives the engine
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<InferenceService> inference_service_;
  std::unique_ptr<ModelsService> models_service_;
  std::unique_ptr<SessionsService> sessions_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int port_ = 0;
  // Serves metrics_ over HTTP; goes first on destruction.
  std::unique_ptr<MetricsHttpServer> metrics_http_;

  absl::Mutex mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_SERVER_H_
