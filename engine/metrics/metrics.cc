#include "engine/metrics/metrics.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace deltaserve {
namespace {

using Buckets = prometheus::Histogram::BucketBoundaries;

// Bucket bounds. The request latencies take vLLM's, with finer bounds at the
// low end (a decode step on a GPU takes milliseconds).
const Buckets& TtftBuckets() {
  static const Buckets* b = new Buckets{
      0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
      1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
  return *b;
}

const Buckets& ItlBuckets() {
  static const Buckets* b =
      new Buckets{0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
                  0.1,   0.15,   0.2,   0.3,    0.4,  0.5,   0.75, 1.0,
                  2.5,   5.0,    7.5,   10.0,   20.0, 40.0,  80.0};
  return *b;
}

const Buckets& RequestBuckets() {
  static const Buckets* b =
      new Buckets{0.001, 0.005, 0.01,  0.05,  0.1,   0.3,   0.5,    0.8,   1.0,
                  1.5,   2.0,   2.5,   5.0,   10.0,  15.0,  20.0,   30.0,  40.0,
                  50.0,  60.0,  120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  return *b;
}

const Buckets& IterationTokenBuckets() {
  static const Buckets* b = new Buckets{1,   8,    16,   32,   64,   128,  256,
                                        512, 1024, 2048, 4096, 8192, 16384};
  return *b;
}

// Session calls and store writes: 100 µs to a minute.
const Buckets& OperationBuckets() {
  static const Buckets* b = new Buckets{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 30.0,  60.0};
  return *b;
}

double Seconds(absl::Duration d) {
  return std::max(0.0, absl::ToDoubleSeconds(d));
}

}  // namespace

struct Metrics::Impl {
  explicit Impl(const std::string& model_name)
      : labels{{"model_name", model_name}} {
    auto gauge = [this](const char* name, const char* help) {
      return &prometheus::BuildGauge()
                  .Name(name)
                  .Help(help)
                  .Labels(labels)
                  .Register(registry);
    };
    auto counter = [this](const char* name, const char* help) {
      return &prometheus::BuildCounter()
                  .Name(name)
                  .Help(help)
                  .Labels(labels)
                  .Register(registry);
    };
    auto histogram = [this](const char* name, const char* help) {
      return &prometheus::BuildHistogram()
                  .Name(name)
                  .Help(help)
                  .Labels(labels)
                  .Register(registry);
    };

    running = &gauge("deltaserve_num_requests_running",
                     "Requests in the running batch (each holds a state "
                     "slot).")
                   ->Add({});
    waiting = &gauge("deltaserve_num_requests_waiting",
                     "Requests waiting to be scheduled: new ones and "
                     "preempted ones.")
                   ->Add({});
    kv_cache_usage = &gauge("deltaserve_kv_cache_usage_perc",
                            "Fraction of the attention KV cache pages in use "
                            "(running requests and idle sessions on the "
                            "device), 0 to 1.")
                          ->Add({});
    prompt_tokens = &counter("deltaserve_prompt_tokens_total",
                             "Prompt (input) tokens of requests whose input "
                             "was fed into the model.")
                         ->Add({});
    generation_tokens =
        &counter("deltaserve_generation_tokens_total", "Tokens generated.")
             ->Add({});
    auto* success = counter("deltaserve_request_success_total",
                            "Requests that ended, by finished_reason: stop "
                            "(EOS, stop token or string), length, cancelled "
                            "or error.");
    finished[0] = &success->Add({{"finished_reason", "stop"}});
    finished[1] = &success->Add({{"finished_reason", "length"}});
    finished[2] = &success->Add({{"finished_reason", "cancelled"}});
    finished[3] = &success->Add({{"finished_reason", "error"}});
    preemptions = &counter("deltaserve_num_preemptions_total",
                           "Requests preempted: their state moved off the "
                           "device to make room.")
                       ->Add({});
    ttft = &histogram("deltaserve_time_to_first_token_seconds",
                      "Time from a request's arrival to its first token.")
                ->Add({}, TtftBuckets());
    itl = &histogram("deltaserve_inter_token_latency_seconds",
                     "Time between two successive tokens of a request.")
               ->Add({}, ItlBuckets());
    e2e = &histogram("deltaserve_e2e_request_latency_seconds",
                     "Time from a request's arrival to its end.")
               ->Add({}, RequestBuckets());
    queue_time = &histogram("deltaserve_request_queue_time_seconds",
                            "Time from a request's arrival to its first "
                            "scheduled engine step.")
                      ->Add({}, RequestBuckets());
    iteration_tokens = &histogram("deltaserve_iteration_tokens",
                                  "Tokens fed per engine step (prompt chunks "
                                  "and decode tokens).")
                            ->Add({}, IterationTokenBuckets());

    auto* sessions_family =
        gauge("deltaserve_sessions",
              "Sessions by where their state is: device (the engine's state "
              "pool), host (host memory) or disk (only in the state store).");
    auto* bytes_family =
        gauge("deltaserve_session_bytes",
              "Bytes of session state (recurrent state, KV, token history) by "
              "tier, as sessions{tier}.");
    const char* tiers[3] = {"device", "host", "disk"};
    for (int t = 0; t < 3; ++t) {
      sessions[t] = &sessions_family->Add({{"tier", tiers[t]}});
      session_bytes[t] = &bytes_family->Add({{"tier", tiers[t]}});
    }
    session_pause = &histogram("deltaserve_session_pause_seconds",
                               "Duration of PauseSession calls (freeing a "
                               "session's memory).")
                         ->Add({}, OperationBuckets());
    session_resume = &histogram("deltaserve_session_resume_seconds",
                                "Duration of ResumeSession calls (loading a "
                                "session's state into memory).")
                          ->Add({}, OperationBuckets());
    auto* migrate = histogram(
        "deltaserve_session_migrate_seconds",
        "Duration of session exports (direction=\"export\") and imports "
        "(direction=\"import\"), engine side.");
    migrate_export = &migrate->Add({{"direction", "export"}}, RequestBuckets());
    migrate_import = &migrate->Add({{"direction", "import"}}, RequestBuckets());

    write_bytes = &counter("deltaserve_state_store_write_bytes_total",
                           "Bytes of keys and values the state store wrote.")
                       ->Add({});
    read_bytes = &counter("deltaserve_state_store_read_bytes_total",
                          "Bytes of keys and values the state store read.")
                      ->Add({});
    write_seconds = &histogram("deltaserve_state_store_write_seconds",
                               "Duration of the state store's atomic writes "
                               "(commits, deletes, imports).")
                         ->Add({}, OperationBuckets());
  }

  // Registers the deltaserve_rocksdb_* families (once).
  void AddRocksDbFamilies() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (rocksdb_registered) return;
    rocksdb_registered = true;
    auto gauge = [this](const char* name, const char* help) {
      return &prometheus::BuildGauge()
                  .Name(name)
                  .Help(help)
                  .Labels(labels)
                  .Register(registry)
                  .Add({});
    };
    auto counter = [this](const char* name, const char* help,
                          const prometheus::Labels& extra = {}) {
      return &prometheus::BuildCounter()
                  .Name(name)
                  .Help(help)
                  .Labels(labels)
                  .Register(registry)
                  .Add(extra);
    };
    rocksdb.delayed_write_rate = gauge(
        "deltaserve_rocksdb_actual_delayed_write_rate",
        "Bytes per second RocksDB slows writes to; 0 while writes are not "
        "delayed (rocksdb.actual-delayed-write-rate).");
    rocksdb.write_stopped =
        gauge("deltaserve_rocksdb_is_write_stopped",
              "1 while RocksDB stops writes (rocksdb.is-write-stopped).");
    rocksdb.running_compactions =
        gauge("deltaserve_rocksdb_num_running_compactions",
              "Compactions running (rocksdb.num-running-compactions).");
    rocksdb.running_flushes =
        gauge("deltaserve_rocksdb_num_running_flushes",
              "Memtable flushes running (rocksdb.num-running-flushes).");
    rocksdb.compaction_pending =
        gauge("deltaserve_rocksdb_compaction_pending",
              "Column families with a compaction pending "
              "(rocksdb.compaction-pending).");
    rocksdb.pending_compaction_bytes =
        gauge("deltaserve_rocksdb_estimate_pending_compaction_bytes",
              "Bytes compaction must rewrite to bring every level under its "
              "target (rocksdb.estimate-pending-compaction-bytes).");
    rocksdb.live_sst_bytes =
        gauge("deltaserve_rocksdb_live_sst_files_bytes",
              "Bytes of live SST files (rocksdb.live-sst-files-size).");
    rocksdb.blob_bytes = gauge("deltaserve_rocksdb_blob_files_bytes",
                               "Bytes of blob files holding large values "
                               "(rocksdb.total-blob-file-size).");
    rocksdb.stall_seconds =
        counter("deltaserve_rocksdb_stall_seconds_total",
                "Time writes spent stalled by RocksDB (STALL_MICROS).");
    auto& stalls = prometheus::BuildCounter()
                       .Name("deltaserve_rocksdb_write_stalls_total")
                       .Help(
                           "Times a RocksDB write slowdown or stop set in "
                           "(rocksdb.cfstats io_stalls).")
                       .Labels(labels)
                       .Register(registry);
    rocksdb.slowdowns = &stalls.Add({{"kind", "slowdown"}});
    rocksdb.stops = &stalls.Add({{"kind", "stop"}});
    rocksdb.compaction_read =
        counter("deltaserve_rocksdb_compaction_read_bytes_total",
                "Bytes RocksDB compactions read (COMPACT_READ_BYTES).");
    rocksdb.compaction_write =
        counter("deltaserve_rocksdb_compaction_write_bytes_total",
                "Bytes RocksDB compactions wrote (COMPACT_WRITE_BYTES).");
    rocksdb.flush_write =
        counter("deltaserve_rocksdb_flush_write_bytes_total",
                "Bytes RocksDB memtable flushes wrote (FLUSH_WRITE_BYTES).");
  }

  // Reads the sources into the metrics, before a collection.
  void Refresh() {
    absl::MutexLock lock(&mu);
    const SessionUsage u = session_source ? session_source() : SessionUsage();
    const int64_t counts[3] = {u.device, u.host, u.disk};
    const int64_t bytes[3] = {u.device_bytes, u.host_bytes, u.disk_bytes};
    for (int t = 0; t < 3; ++t) {
      sessions[t]->Set(static_cast<double>(counts[t]));
      session_bytes[t]->Set(static_cast<double>(bytes[t]));
    }
    if (!rocksdb_source) return;
    const RocksDbStats s = rocksdb_source();
    rocksdb.delayed_write_rate->Set(
        static_cast<double>(s.actual_delayed_write_rate));
    rocksdb.write_stopped->Set(static_cast<double>(s.is_write_stopped));
    rocksdb.running_compactions->Set(
        static_cast<double>(s.num_running_compactions));
    rocksdb.running_flushes->Set(static_cast<double>(s.num_running_flushes));
    rocksdb.compaction_pending->Set(static_cast<double>(s.compaction_pending));
    rocksdb.pending_compaction_bytes->Set(
        static_cast<double>(s.estimate_pending_compaction_bytes));
    rocksdb.live_sst_bytes->Set(static_cast<double>(s.live_sst_files_bytes));
    rocksdb.blob_bytes->Set(static_cast<double>(s.blob_files_bytes));
    // Counters grow by what RocksDB's grew since the last collection.
    auto grow = [](prometheus::Counter* c, int64_t now, int64_t* last,
                   double scale) {
      if (now > *last) c->Increment(static_cast<double>(now - *last) * scale);
      *last = std::max(*last, now);
    };
    grow(rocksdb.stall_seconds, s.stall_micros, &last_rocksdb.stall_micros,
         1e-6);
    grow(rocksdb.slowdowns, s.write_slowdowns, &last_rocksdb.write_slowdowns,
         1);
    grow(rocksdb.stops, s.write_stops, &last_rocksdb.write_stops, 1);
    grow(rocksdb.compaction_read, s.compaction_read_bytes,
         &last_rocksdb.compaction_read_bytes, 1);
    grow(rocksdb.compaction_write, s.compaction_write_bytes,
         &last_rocksdb.compaction_write_bytes, 1);
    grow(rocksdb.flush_write, s.flush_write_bytes,
         &last_rocksdb.flush_write_bytes, 1);
  }

  const prometheus::Labels labels;
  prometheus::Registry registry;

  prometheus::Gauge* running;
  prometheus::Gauge* waiting;
  prometheus::Gauge* kv_cache_usage;
  prometheus::Counter* prompt_tokens;
  prometheus::Counter* generation_tokens;
  prometheus::Counter* finished[4];  // by RequestOutcome
  prometheus::Counter* preemptions;
  prometheus::Histogram* ttft;
  prometheus::Histogram* itl;
  prometheus::Histogram* e2e;
  prometheus::Histogram* queue_time;
  prometheus::Histogram* iteration_tokens;
  prometheus::Gauge* sessions[3];  // device, host, disk
  prometheus::Gauge* session_bytes[3];
  prometheus::Histogram* session_pause;
  prometheus::Histogram* session_resume;
  prometheus::Histogram* migrate_export;
  prometheus::Histogram* migrate_import;
  prometheus::Counter* write_bytes;
  prometheus::Counter* read_bytes;
  prometheus::Histogram* write_seconds;

  // Serialises collections and source changes.
  absl::Mutex mu;
  std::function<SessionUsage()> session_source ABSL_GUARDED_BY(mu);
  std::function<RocksDbStats()> rocksdb_source ABSL_GUARDED_BY(mu);
  bool rocksdb_registered ABSL_GUARDED_BY(mu) = false;
  struct {
    prometheus::Gauge *delayed_write_rate, *write_stopped, *running_compactions,
        *running_flushes, *compaction_pending, *pending_compaction_bytes,
        *live_sst_bytes, *blob_bytes;
    prometheus::Counter *stall_seconds, *slowdowns, *stops, *compaction_read,
        *compaction_write, *flush_write;
  } rocksdb ABSL_GUARDED_BY(mu) = {};
  RocksDbStats last_rocksdb ABSL_GUARDED_BY(mu);
};

// What an exposer collects: the sources read into the registry, then the
// registry. Holds the Impl, so a collection in flight keeps it alive.
class Metrics::Collector final : public prometheus::Collectable {
 public:
  explicit Collector(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    impl_->Refresh();
    return impl_->registry.Collect();
  }

 private:
  std::shared_ptr<Impl> impl_;
};

Metrics::Metrics(const std::string& model_name)
    : impl_(std::make_shared<Impl>(model_name)),
      collector_(std::make_shared<Collector>(impl_)) {}

Metrics::~Metrics() = default;

std::string Metrics::TextFormat() const {
  return prometheus::TextSerializer().Serialize(collector_->Collect());
}

void Metrics::SetSchedulerState(int running, int waiting,
                                double kv_cache_usage) {
  impl_->running->Set(running);
  impl_->waiting->Set(waiting);
  impl_->kv_cache_usage->Set(kv_cache_usage);
}

void Metrics::ObserveIterationTokens(int64_t tokens) {
  impl_->iteration_tokens->Observe(static_cast<double>(tokens));
}

void Metrics::AddPreemptions(int64_t n) {
  if (n > 0) impl_->preemptions->Increment(static_cast<double>(n));
}

void Metrics::AddPromptTokens(int64_t n) {
  if (n > 0) impl_->prompt_tokens->Increment(static_cast<double>(n));
}

void Metrics::AddGenerationTokens(int64_t n) {
  if (n > 0) impl_->generation_tokens->Increment(static_cast<double>(n));
}

void Metrics::ObserveQueueTime(absl::Duration d) {
  impl_->queue_time->Observe(Seconds(d));
}

void Metrics::ObserveTimeToFirstToken(absl::Duration d) {
  impl_->ttft->Observe(Seconds(d));
}

void Metrics::ObserveInterTokenLatency(absl::Duration d) {
  impl_->itl->Observe(Seconds(d));
}

void Metrics::RequestFinished(RequestOutcome outcome, absl::Duration e2e) {
  impl_->finished[static_cast<int>(outcome)]->Increment();
  impl_->e2e->Observe(Seconds(e2e));
}

void Metrics::ObserveSessionPause(absl::Duration d) {
  impl_->session_pause->Observe(Seconds(d));
}

void Metrics::ObserveSessionResume(absl::Duration d) {
  impl_->session_resume->Observe(Seconds(d));
}

void Metrics::ObserveSessionMigrate(MigrateDirection direction,
                                    absl::Duration d) {
  (direction == MigrateDirection::kExport ? impl_->migrate_export
                                          : impl_->migrate_import)
      ->Observe(Seconds(d));
}

void Metrics::SetSessionSource(std::function<SessionUsage()> source) {
  absl::MutexLock lock(&impl_->mu);
  impl_->session_source = std::move(source);
}

void Metrics::SetRocksDbSource(std::function<RocksDbStats()> source) {
  absl::MutexLock lock(&impl_->mu);
  if (source) impl_->AddRocksDbFamilies();
  impl_->rocksdb_source = std::move(source);
}

void Metrics::OnWrite(int64_t bytes, absl::Duration took) {
  impl_->write_bytes->Increment(
      static_cast<double>(std::max<int64_t>(bytes, 0)));
  impl_->write_seconds->Observe(Seconds(took));
}

void Metrics::OnRead(int64_t bytes) {
  impl_->read_bytes->Increment(
      static_cast<double>(std::max<int64_t>(bytes, 0)));
}

}  // namespace deltaserve
