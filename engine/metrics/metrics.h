// Metrics: deltaserve's Prometheus metrics for one served model — what the
// engine, its sessions and its state store report, under the names vLLM's
// users already chart, prefixed `deltaserve_` and labelled with model_name.
// The metric list is in README.md ("Metrics").
//
// The engine and the state store report events (tokens, finished requests,
// latencies, store I/O) as they happen; figures that are states rather than
// events (sessions per tier, RocksDB's stall and compaction figures) are
// read from sources when the metrics are collected. prometheus-cpp stays
// behind this header: `TextFormat()` is what /metrics sends.
//
// Owned by the composition root, which must keep it alive as long as the
// engine and the state store that report into it. Thread-safe: every method
// may be called from any thread.
#ifndef DELTASERVE_ENGINE_METRICS_METRICS_H_
#define DELTASERVE_ENGINE_METRICS_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "engine/state_store/rocksdb_stats.h"
#include "engine/state_store/state_store.h"

namespace deltaserve {

// How a request ended: request_success_total's finished_reason label
// ("stop", "length", "cancelled", "error").
enum class RequestOutcome { kStop, kLength, kCancelled, kError };

// What session_migrate_seconds' direction label says: a session's state
// leaving this server as an export stream, or arriving as one.
enum class MigrateDirection { kExport, kImport };

// Sessions per tier and the bytes of their state, at one moment. Every
// session is also on disk; `disk` counts those only there.
struct SessionUsage {
  int64_t device = 0, host = 0, disk = 0;
  int64_t device_bytes = 0, host_bytes = 0, disk_bytes = 0;
};

class Metrics final : public StateStoreObserver {
 public:
  // Every metric starts at zero with label model_name = `model_name`.
  explicit Metrics(const std::string& model_name);
  ~Metrics() override;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Every metric in Prometheus's text exposition format, sources read now.
  std::string TextFormat() const;

  // Scheduler state after an engine step: requests running (in the batch)
  // and waiting (queued or preempted), and the fraction (0..1) of KV cache
  // pages in use.
  void SetSchedulerState(int running, int waiting, double kv_cache_usage);
  // One engine step fed `tokens` tokens (prompt chunks and decode tokens).
  void ObserveIterationTokens(int64_t tokens);
  // Requests preempted (state moved off the device for room).
  void AddPreemptions(int64_t n);
  // A request's whole input is in the model's state: `n` prompt tokens.
  void AddPromptTokens(int64_t n);
  // Tokens generated.
  void AddGenerationTokens(int64_t n);
  // Latencies of one request: arrival to its first scheduled step, arrival
  // to its first token, between two of its tokens.
  void ObserveQueueTime(absl::Duration d);
  void ObserveTimeToFirstToken(absl::Duration d);
  void ObserveInterTokenLatency(absl::Duration d);
  // A request ended (its final event went out) `e2e` after it arrived.
  void RequestFinished(RequestOutcome outcome, absl::Duration e2e);

  // Durations of session pauses and resumes that succeeded: the calls, and
  // those the engine makes itself (sessions evicted from the device or
  // paused when idle; a generation continuing a session from host memory
  // or disk).
  void ObserveSessionPause(absl::Duration d);
  void ObserveSessionResume(absl::Duration d);
  void ObserveSessionMigrate(MigrateDirection direction, absl::Duration d);

  // Where sessions{tier} and session_bytes{tier} come from; read at each
  // collection. Empty: zeros. Setting waits for a collection in flight, so
  // after SetSessionSource({}) returns the old source is not called again.
  void SetSessionSource(std::function<SessionUsage()> source);
  // Where the deltaserve_rocksdb_* figures come from. They are exposed only
  // once a source is set (a server without a RocksDB store has none). The
  // counters among them grow by what the source's counters grew since the
  // previous collection. Waits for a collection in flight, as above.
  void SetRocksDbSource(std::function<RocksDbStats()> source);

  // StateStoreObserver: state_store_write_bytes_total and
  // state_store_write_seconds, state_store_read_bytes_total.
  void OnWrite(int64_t bytes, absl::Duration took) override;
  void OnRead(int64_t bytes) override;

 private:
  struct Impl;
  class Collector;
  std::shared_ptr<Impl> impl_;
  std::shared_ptr<Collector> collector_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_METRICS_METRICS_H_
