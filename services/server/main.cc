// deltaserve-server: serves one model over gRPC until SIGINT or SIGTERM,
// then drains (see --drain_timeout) and exits 0.
//
//   deltaserve-server [--model=DIR] [--listen=HOST:PORT]
//                     [--device=cpu|cuda [--gpus=1] [--cuda_graphs]]
//                     [--state_dir=DIR] [--session_idle_pause=10m]
//                     [--metrics_listen=HOST:PORT]
//
// Without --model it serves the embedded demo model. Once serving it prints
// one line, "deltaserve-server listening on HOST:PORT (model NAME, device
// DEVICE)", to stdout; with --metrics_listen a second line follows,
// "deltaserve-server metrics on http://HOST:PORT/metrics".
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "services/server/server.h"

ABSL_FLAG(std::string, model, "",
          "Model directory (config.json, *.safetensors, tokenizer.json); "
          "empty serves the embedded demo model.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve gRPC on; port 0 picks a free port.");
ABSL_FLAG(std::string, device, "cpu", "Where the model runs: cpu or cuda.");
ABSL_FLAG(int, gpus, 1,
          "With --device=cuda: GPUs to serve on (one per server for now).");
ABSL_FLAG(int, gpu_device, 0, "With --device=cuda: the CUDA device ordinal.");
ABSL_FLAG(bool, cuda_graphs, true,
          "With --device=cuda: record decode steps once per batch size and "
          "replay them as CUDA graphs.");
ABSL_FLAG(int, max_running_requests,
          deltaserve::Engine::Options().max_running_requests,
          "Requests in the batch at once (each holds a state slot).");
ABSL_FLAG(int, max_queued_requests,
          deltaserve::Engine::Options().max_queued_requests,
          "New requests that may wait for admission; past it "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, kv_cache_tokens,
          deltaserve::Engine::Options().kv_capacity_tokens,
          "Tokens of attention KV cache, over all sequences.");
ABSL_FLAG(int, max_new_tokens_limit,
          deltaserve::Engine::Options().max_new_tokens_limit,
          "Largest max_new_tokens a request may ask for.");
ABSL_FLAG(int64_t, max_batched_tokens,
          deltaserve::Engine::Options().max_batched_tokens,
          "Tokens fed per engine step over all requests (decode tokens plus "
          "prefill chunks); at least max_running_requests.");
ABSL_FLAG(int, threads, 0, "CPU kernel threads; 0 keeps the default.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM or SIGINT: how long running generations may go on "
          "(new requests get UNAVAILABLE) before the rest are cancelled and "
          "the server exits; every session stays committed.");
ABSL_FLAG(std::string, state_dir, "deltaserve-state",
          "RocksDB directory where sessions are kept (created if missing; "
          "relative to the working directory). Empty disables sessions.");
ABSL_FLAG(bool, sync_state_writes, true,
          "Sync the write-ahead log on every session commit; without it a "
          "commit survives a crash of the server but not of the machine.");
ABSL_FLAG(absl::Duration, session_idle_pause, absl::Minutes(10),
          "Pause sessions idle this long (free their memory; their state "
          "stays on disk); 0 never pauses them for idleness.");
ABSL_FLAG(std::string, metrics_listen, "",
          "Address (HOST:PORT; HOST an IP address, localhost, or empty for "
          "every interface) to serve Prometheus metrics on at /metrics; port "
          "0 picks a free port. Empty: no metrics.");
ABSL_FLAG(int64_t, session_host_cache_bytes,
          deltaserve::Engine::Options().session_host_cache_bytes,
          "Host memory for sessions moved off the device before they go to "
          "disk only.");

namespace deltaserve {
namespace {

constexpr char kDemoModel[] = "engine/model/demo-qwen35";

bool IsModelDir(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path(dir) / "config.json",
                                 ec);
}

// Where the embedded demo model may be: in the binary's runfiles (bazel
// run, bazel-bin/...), in the runfiles of a test that runs the binary, under
// the working directory, or in the workspace that `bazel run` came from.
std::vector<std::string> DemoModelCandidates(const char* argv0) {
  const std::string in_runfiles = absl::StrCat("deltaserve/", kDemoModel);
  std::vector<std::string> candidates;
  candidates.push_back(absl::StrCat(argv0, ".runfiles/", in_runfiles));
  std::error_code ec;
  const std::filesystem::path exe =
      std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(absl::StrCat(exe.string(), ".runfiles/", in_runfiles));
  }
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') {
      candidates.push_back(absl::StrCat(dir, "/", in_runfiles));
    }
  }
  candidates.push_back(kDemoModel);
  if (const char* dir = std::getenv("BUILD_WORKSPACE_DIRECTORY");
      dir != nullptr && *dir != '\0') {
    candidates.push_back(absl::StrCat(dir, "/", kDemoModel));
  }
  return candidates;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves a hybrid linear-attention language model over gRPC.\n"
      "Usage: deltaserve-server [--model=DIR] [--listen=HOST:PORT] "
      "[--device=cpu|cuda [--gpus=1]] [--state_dir=DIR]");
  absl::ParseCommandLine(argc, argv);

  ServerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  if (options.model_dir.empty()) {
    const std::vector<std::string> candidates = DemoModelCandidates(argv[0]);
    for (const std::string& dir : candidates) {
      if (IsModelDir(dir)) {
        options.model_dir = dir;
        break;
      }
    }
    if (options.model_dir.empty()) {
      absl::FPrintF(stderr,
                    "deltaserve-server: error: no --model given and the demo "
                    "model is not in any of: %s\n",
                    absl::StrJoin(candidates, ", "));
      return 1;
    }
  }
  options.listen = absl::GetFlag(FLAGS_listen);
  options.device = absl::GetFlag(FLAGS_device);
  options.gpus = absl::GetFlag(FLAGS_gpus);
  options.gpu_device = absl::GetFlag(FLAGS_gpu_device);
  options.engine.record_decode_steps = absl::GetFlag(FLAGS_cuda_graphs);
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.engine.max_running_requests =
      absl::GetFlag(FLAGS_max_running_requests);
  options.engine.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  options.engine.kv_capacity_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  options.engine.max_new_tokens_limit =
      absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.engine.default_max_new_tokens =
      std::min(options.engine.default_max_new_tokens,
               options.engine.max_new_tokens_limit);
  options.engine.max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.sync_state_writes = absl::GetFlag(FLAGS_sync_state_writes);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.engine.session_idle_pause = absl::GetFlag(FLAGS_session_idle_pause);
  options.engine.session_host_cache_bytes =
      absl::GetFlag(FLAGS_session_host_cache_bytes);

  // Every thread started from here on (gRPC's, the engine's) inherits the
  // blocked mask, so the signals are only ever taken by sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
  if (!server.ok()) {
    absl::FPrintF(stderr, "deltaserve-server: error: %s\n",
                  server.status().ToString());
    return 1;
  }
  absl::PrintF("deltaserve-server listening on %s (model %s, device %s)\n",
               (*server)->address(), (*server)->model().name(), options.device);
  if ((*server)->metrics_port() != 0) {
    absl::PrintF("deltaserve-server metrics on http://%s/metrics\n",
                 (*server)->metrics_address());
  }
  std::fflush(stdout);

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  const absl::Duration drain = absl::GetFlag(FLAGS_drain_timeout);
  absl::FPrintF(stderr,
                "deltaserve-server: %s, draining (up to %s), then shutting "
                "down\n",
                signal_number == SIGINT ? "SIGINT" : "SIGTERM",
                absl::FormatDuration(drain));
  if (!(*server)->Drain(drain)) {
    absl::FPrintF(stderr,
                  "deltaserve-server: drain deadline passed; generations "
                  "still running were cancelled (their sessions are "
                  "committed)\n");
  }
  (*server)->Wait();
  server->reset();
  return 0;
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Run(argc, argv); }
