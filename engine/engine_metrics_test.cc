// The engine's metrics, read back from Prometheus's text format after real
// requests and session calls on the demo model (CPU kernels): tokens,
// finished requests by reason, steps, preemptions, latencies on the injected
// clock, scheduler gauges, sessions per tier and the state store's I/O.
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/engine_test_util.h"
#include "engine/metrics/metrics.h"
#include "engine/metrics/text_samples.h"
#include "engine/state_store/in_memory_state_store.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"

namespace deltaserve {
namespace {

using testing::DemoModel;
using testing::DemoPromptIds;
using testing::Greedy;
using testing::RunRequest;
using testing::RunResult;

constexpr char kModelName[] = "demo-qwen35";

std::unique_ptr<Engine> MakeEngine(Metrics* metrics,
                                   Engine::Options options = {}) {
  options.metrics = metrics;
  if (options.kv_capacity_tokens == Engine::Options().kv_capacity_tokens) {
    options.kv_capacity_tokens = 4096;
  }
  auto engine =
      Engine::Create(&DemoModel(), std::move(*CpuKernels::Create({})), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// The value of one series (model_name is added to `labels`); -1 when the
// series is missing (which fails the test).
double Value(const Metrics& m, const std::string& name,
             std::map<std::string, std::string> labels = {}) {
  labels["model_name"] = kModelName;
  const std::string text = m.TextFormat();
  std::optional<double> v = testing::SampleValue(text, name, labels);
  EXPECT_TRUE(v.has_value()) << name << " is missing from\n" << text;
  return v.value_or(-1);
}

double Finished(const Metrics& m, const char* reason) {
  return Value(m, "deltaserve_request_success_total",
               {{"finished_reason", reason}});
}

double Sessions(const Metrics& m, const char* tier) {
  return Value(m, "deltaserve_sessions", {{"tier", tier}});
}

double SessionBytes(const Metrics& m, const char* tier) {
  return Value(m, "deltaserve_session_bytes", {{"tier", tier}});
}

// Gauges are set at the end of the engine step that ends a request, just
// after its final event, and idle pauses happen on the engine thread: wait
// (up to 30 s) until `name` reads `want`.
bool GaugeBecomes(const Metrics& m, const std::string& name, double want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    if (Value(m, name) == want) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

TEST(EngineMetricsTest, TokensStepsAndFinishedRequests) {
  Metrics metrics(kModelName);
  auto engine = MakeEngine(&metrics);
  ASSERT_NE(engine, nullptr);
  // Three requests one after the other, each to its length.
  int64_t prompt_tokens = 0, generated = 0, fed = 0;
  const int lengths[3] = {5, 7, 9};
  for (int i = 0; i < 3; ++i) {
    const std::vector<int32_t> prompt = DemoPromptIds(i);
    RunResult r = RunRequest(*engine, Greedy(prompt, lengths[i]));
    ASSERT_TRUE(r.end.error.ok()) << r.end.error;
    ASSERT_EQ(r.ids.size(), static_cast<size_t>(lengths[i]));
    // The step that ended it is over.
    ASSERT_TRUE(GaugeBecomes(metrics, "deltaserve_num_requests_running", 0));
    prompt_tokens += static_cast<int64_t>(prompt.size());
    generated += lengths[i];
    // The prompt, then every generated token but the last, is fed.
    fed += static_cast<int64_t>(prompt.size()) + lengths[i] - 1;
  }
  EXPECT_EQ(Value(metrics, "deltaserve_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(Value(metrics, "deltaserve_generation_tokens_total"), generated);
  EXPECT_EQ(Finished(metrics, "length"), 3);
  EXPECT_EQ(Finished(metrics, "stop"), 0);
  // One step per token: the prompt's step samples the first.
  EXPECT_EQ(Value(metrics, "deltaserve_iteration_tokens_count"), generated);
  EXPECT_EQ(Value(metrics, "deltaserve_iteration_tokens_sum"), fed);
  EXPECT_EQ(Value(metrics, "deltaserve_iteration_tokens_count"),
            engine->stats().steps);
  EXPECT_EQ(Value(metrics, "deltaserve_time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(Value(metrics, "deltaserve_inter_token_latency_seconds_count"),
            generated - 3);
  EXPECT_EQ(Value(metrics, "deltaserve_request_queue_time_seconds_count"), 3);
  EXPECT_EQ(Value(metrics, "deltaserve_e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(Value(metrics, "deltaserve_num_preemptions_total"), 0);

  // A stop token: the request stops at its first token.
  {
    RunResult probe = RunRequest(*engine, Greedy(DemoPromptIds(0), 1));
    ASSERT_EQ(probe.ids.size(), 1u);
    GenerationRequest req = Greedy(DemoPromptIds(0), 50);
    req.stop_token_ids = {probe.ids[0]};
    RunResult r = RunRequest(*engine, req);
    ASSERT_EQ(r.end.finish_reason, FinishReason::kStop);
    EXPECT_EQ(Finished(metrics, "stop"), 1);
    EXPECT_EQ(Finished(metrics, "length"), 4);
  }
  // A request past its deadline ends with an error before it is scheduled:
  // no prompt tokens, no queue time.
  const double prompt_before = Value(metrics, "deltaserve_prompt_tokens_total");
  {
    GenerationRequest req = Greedy(DemoPromptIds(1), 5);
    req.deadline = absl::InfinitePast();
    RunResult r = RunRequest(*engine, req);
    EXPECT_EQ(r.end.error.code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_EQ(Finished(metrics, "error"), 1);
    EXPECT_EQ(Value(metrics, "deltaserve_prompt_tokens_total"), prompt_before);
    EXPECT_EQ(Value(metrics, "deltaserve_request_queue_time_seconds_count"), 5);
  }
  // A refused request (bad input) never reaches the engine: not counted.
  EXPECT_FALSE(engine->Submit(Greedy({}, 5)).ok());
  EXPECT_EQ(Value(metrics, "deltaserve_e2e_request_latency_seconds_count"), 6);

  // While a long request runs: one running, KV pages in use; cancelled, it
  // counts as such and the gauges return to zero.
  auto stream = engine->Submit(Greedy(DemoPromptIds(2), 4000));
  ASSERT_TRUE(stream.ok());
  GenerationEvent ev;
  ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
  EXPECT_TRUE(GaugeBecomes(metrics, "deltaserve_num_requests_running", 1));
  EXPECT_GT(Value(metrics, "deltaserve_kv_cache_usage_perc"), 0);
  EXPECT_LE(Value(metrics, "deltaserve_kv_cache_usage_perc"), 1);
  EXPECT_EQ(Value(metrics, "deltaserve_num_requests_waiting"), 0);
  (*stream)->Cancel();
  int64_t streamed = static_cast<int64_t>(ev.token_ids.size());
  while (!ev.finished) {
    ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
    streamed += static_cast<int64_t>(ev.token_ids.size());
  }
  EXPECT_EQ(ev.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(Finished(metrics, "cancelled"), 1);
  EXPECT_TRUE(GaugeBecomes(metrics, "deltaserve_num_requests_running", 0));
  EXPECT_TRUE(GaugeBecomes(metrics, "deltaserve_kv_cache_usage_perc", 0));
  // Every generated token was counted: the runs', the probe's, the stop
  // request's and the cancelled one's.
  EXPECT_EQ(Value(metrics, "deltaserve_generation_tokens_total"),
            generated + 1 + 1 + streamed);
}

// Latencies are measured on the engine's clock: with the clock stopped they
// are exactly zero, and a jump of the clock between two tokens is one
// inter-token latency and the whole end-to-end latency.
TEST(EngineMetricsTest, LatenciesAreMeasuredOnTheInjectedClock) {
  testing::FakeClock clock;
  Metrics metrics(kModelName);
  Engine::Options options;
  options.clock = &clock;
  auto engine = MakeEngine(&metrics, options);
  ASSERT_NE(engine, nullptr);
  auto stream = engine->Submit(Greedy(DemoPromptIds(0), 4000));
  ASSERT_TRUE(stream.ok());
  GenerationEvent ev;
  ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
  clock.Advance(absl::Seconds(2));
  // A token sampled after the jump, then the end.
  const double itl_count_before =
      Value(metrics, "deltaserve_inter_token_latency_seconds_count");
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
    ASSERT_FALSE(ev.finished);
    if (Value(metrics, "deltaserve_inter_token_latency_seconds_count") >
        itl_count_before + 1) {
      break;
    }
  }
  (*stream)->Cancel();
  while (!ev.finished) ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
  EXPECT_EQ(Value(metrics, "deltaserve_time_to_first_token_seconds_sum"), 0);
  EXPECT_EQ(Value(metrics, "deltaserve_request_queue_time_seconds_sum"), 0);
  EXPECT_EQ(Value(metrics, "deltaserve_inter_token_latency_seconds_sum"), 2);
  EXPECT_EQ(Value(metrics, "deltaserve_inter_token_latency_seconds_bucket",
                  {{"le", "2.5"}}) -
                Value(metrics, "deltaserve_inter_token_latency_seconds_bucket",
                      {{"le", "1"}}),
            1);
  EXPECT_EQ(Value(metrics, "deltaserve_e2e_request_latency_seconds_sum"), 2);
  EXPECT_EQ(Value(metrics, "deltaserve_e2e_request_latency_seconds_count"), 1);
}

TEST(EngineMetricsTest, PreemptionsAreCounted) {
  // 10 pages of 16 tokens: far too few for 8 requests of ~60 tokens.
  Metrics metrics(kModelName);
  Engine::Options options;
  options.max_running_requests = 8;
  options.kv_page_size = 16;
  options.kv_capacity_tokens = 160;
  auto engine = MakeEngine(&metrics, options);
  ASSERT_NE(engine, nullptr);
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 8; ++i) {
    auto s = engine->Submit(Greedy(DemoPromptIds(i % 3), 32));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(*s);
  }
  for (auto& s : streams) {
    GenerationEvent ev;
    do {
      ASSERT_TRUE(s->Next(&ev, absl::Seconds(60)));
    } while (!ev.finished);
    ASSERT_TRUE(ev.error.ok()) << ev.error;
  }
  const int64_t preemptions = engine->stats().preemptions;
  EXPECT_GT(preemptions, 0);
  EXPECT_EQ(Value(metrics, "deltaserve_num_preemptions_total"), preemptions);
  EXPECT_EQ(Finished(metrics, "length"), 8);
  EXPECT_EQ(Value(metrics, "deltaserve_generation_tokens_total"), 8 * 32);
  // Preempted requests were scheduled once as far as queue time goes.
  EXPECT_EQ(Value(metrics, "deltaserve_request_queue_time_seconds_count"), 8);
}

std::string TestDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/engine_metrics_test_", name);
  std::filesystem::remove_all(dir);
  return dir;
}

int64_t StateBytes(Engine& engine, const std::string& id) {
  absl::StatusOr<SessionInfo> info = engine.GetSession(id);
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? info->meta.state_bytes() : -1;
}

TEST(EngineMetricsTest, SessionsByTierAndStateStoreIo) {
  RocksDbStateStore::Options store_options;
  store_options.path = TestDir("sessions");
  store_options.statistics = true;
  auto store = RocksDbStateStore::Create(store_options);
  ASSERT_TRUE(store.ok()) << store.status();
  Metrics metrics(kModelName);
  (*store)->SetObserver(&metrics);
  metrics.SetRocksDbSource([s = store->get()] { return s->GetStats(); });
  Engine::Options options;
  options.state_store = store->get();
  auto engine = MakeEngine(&metrics, options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(Sessions(metrics, "disk"), 0);

  // A new session is stored, not in memory.
  absl::StatusOr<SessionInfo> created = engine->CreateSession();
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string id = created->meta.session_id;
  EXPECT_EQ(Sessions(metrics, "disk"), 1);
  EXPECT_EQ(Sessions(metrics, "device"), 0);
  EXPECT_EQ(SessionBytes(metrics, "disk"), created->meta.state_bytes());
  const double written =
      Value(metrics, "deltaserve_state_store_write_bytes_total");
  const double writes =
      Value(metrics, "deltaserve_state_store_write_seconds_count");
  EXPECT_GT(written, 0);
  EXPECT_EQ(writes, 1);

  // A generation on it: its state stays on the device; the commit wrote
  // at least the new KV and history.
  RunResult r = RunRequest(*engine, Greedy(DemoPromptIds(0), 8, id));
  ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  const int64_t bytes = StateBytes(*engine, id);
  EXPECT_EQ(Sessions(metrics, "device"), 1);
  EXPECT_EQ(Sessions(metrics, "disk"), 0);
  EXPECT_EQ(SessionBytes(metrics, "device"), bytes);
  EXPECT_EQ(SessionBytes(metrics, "disk"), 0);
  EXPECT_GT(Value(metrics, "deltaserve_state_store_write_bytes_total"),
            written + (bytes - created->meta.state_bytes()) / 2);
  EXPECT_EQ(Value(metrics, "deltaserve_state_store_write_seconds_count"),
            writes + 1);
  EXPECT_EQ(Value(metrics, "deltaserve_prompt_tokens_total"),
            DemoPromptIds(0).size());
  EXPECT_EQ(Finished(metrics, "length"), 1);

  // Paused: on disk only. Resumed: back on the device, its state read.
  ASSERT_TRUE(engine->PauseSession(id).ok());
  EXPECT_EQ(Sessions(metrics, "device"), 0);
  EXPECT_EQ(Sessions(metrics, "disk"), 1);
  EXPECT_EQ(SessionBytes(metrics, "disk"), bytes);
  EXPECT_EQ(Value(metrics, "deltaserve_session_pause_seconds_count"), 1);
  const double read = Value(metrics, "deltaserve_state_store_read_bytes_total");
  absl::StatusOr<SessionInfo> resumed = engine->ResumeSession(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_EQ(resumed->tier, SessionTier::kDevice);
  EXPECT_EQ(Sessions(metrics, "device"), 1);
  EXPECT_EQ(Sessions(metrics, "disk"), 0);
  EXPECT_EQ(Value(metrics, "deltaserve_session_resume_seconds_count"), 1);
  EXPECT_GE(Value(metrics, "deltaserve_state_store_read_bytes_total"),
            read + bytes);

  // Export and import: a second stored session, only on disk.
  absl::StatusOr<std::string> exported = engine->ExportSession(id);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(Value(metrics, "deltaserve_session_migrate_seconds_count",
                  {{"direction", "export"}}),
            1);
  absl::StatusOr<SessionInfo> imported = engine->ImportSession(*exported);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(Value(metrics, "deltaserve_session_migrate_seconds_count",
                  {{"direction", "import"}}),
            1);
  EXPECT_EQ(Sessions(metrics, "disk"), 1);
  EXPECT_EQ(SessionBytes(metrics, "disk"), imported->meta.state_bytes());
  // A failed import is not timed.
  EXPECT_FALSE(engine->ImportSession("not an export").ok());
  EXPECT_EQ(Value(metrics, "deltaserve_session_migrate_seconds_count",
                  {{"direction", "import"}}),
            1);
  // A fork is stored too; deleting sessions takes them off the count.
  absl::StatusOr<SessionInfo> fork = engine->ForkSession(id);
  ASSERT_TRUE(fork.ok()) << fork.status();
  EXPECT_EQ(Sessions(metrics, "disk"), 2);
  ASSERT_TRUE(engine->DeleteSession(imported->meta.session_id).ok());
  EXPECT_EQ(Sessions(metrics, "disk"), 1);
  EXPECT_EQ(SessionBytes(metrics, "disk"), fork->meta.state_bytes());
  EXPECT_EQ(Sessions(metrics, "device"), 1);

  // RocksDB's figures are there, and the files hold what was written.
  ASSERT_TRUE((*store)->Flush().ok());
  EXPECT_GT(Value(metrics, "deltaserve_rocksdb_live_sst_files_bytes") +
                Value(metrics, "deltaserve_rocksdb_blob_files_bytes"),
            0);
  EXPECT_GT(Value(metrics, "deltaserve_rocksdb_flush_write_bytes_total"), 0);
  EXPECT_EQ(Value(metrics, "deltaserve_rocksdb_is_write_stopped"), 0);

  // A new engine on the same store counts what is stored: both sessions,
  // on disk, with their bytes.
  const int64_t total = StateBytes(*engine, id) + fork->meta.state_bytes();
  engine.reset();
  Metrics after(kModelName);
  auto again = MakeEngine(&after, options);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(Sessions(after, "disk"), 2);
  EXPECT_EQ(Sessions(after, "device"), 0);
  EXPECT_EQ(SessionBytes(after, "disk"), total);
  // The old metrics no longer read the destroyed engine.
  EXPECT_EQ(Sessions(metrics, "device"), 0);
  metrics.SetRocksDbSource({});
}

// Pauses and resumes the engine makes on its own are timed too: sessions
// evicted from the device under memory pressure, sessions paused after the
// idle timeout, and a generation that continues a session from disk.
TEST(EngineMetricsTest, AutomaticPausesAndImplicitResumesAreTimed) {
  InMemoryStateStore store;
  Metrics metrics(kModelName);
  Engine::Options options;
  options.state_store = &store;
  options.max_running_requests = 2;  // two slots
  options.session_host_cache_bytes = 0;
  auto engine = MakeEngine(&metrics, options);
  ASSERT_NE(engine, nullptr);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<SessionInfo> created = engine->CreateSession();
    ASSERT_TRUE(created.ok()) << created.status();
    ids.push_back(created->meta.session_id);
    RunResult r = RunRequest(*engine, Greedy(DemoPromptIds(0), 4, ids.back()));
    ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  }
  // Three sessions, two slots: the first was evicted to make room.
  ASSERT_EQ(engine->GetSession(ids[0])->tier, SessionTier::kDisk);
  EXPECT_EQ(Value(metrics, "deltaserve_session_pause_seconds_count"), 1);
  EXPECT_EQ(Value(metrics, "deltaserve_session_resume_seconds_count"), 0);
  // Continuing it from disk resumes it (and evicts the least recent other).
  RunResult r = RunRequest(*engine, Greedy({7}, 4, ids[0]));
  ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  EXPECT_EQ(Value(metrics, "deltaserve_session_resume_seconds_count"), 1);
  EXPECT_EQ(Value(metrics, "deltaserve_session_pause_seconds_count"), 2);
  // A session already on the device is not resumed again.
  r = RunRequest(*engine, Greedy({7}, 4, ids[0]));
  ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  EXPECT_EQ(Value(metrics, "deltaserve_session_resume_seconds_count"), 1);

  // Idle sessions are paused after the timeout.
  engine.reset();
  Metrics idle_metrics(kModelName);
  Engine::Options idle_options;
  idle_options.state_store = &store;
  idle_options.session_idle_pause = absl::Milliseconds(20);
  auto idle_engine = MakeEngine(&idle_metrics, idle_options);
  ASSERT_NE(idle_engine, nullptr);
  r = RunRequest(*idle_engine, Greedy({7}, 4, ids[1]));
  ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  EXPECT_EQ(Value(idle_metrics, "deltaserve_session_resume_seconds_count"), 1);
  EXPECT_TRUE(
      GaugeBecomes(idle_metrics, "deltaserve_session_pause_seconds_count", 1));
  EXPECT_EQ(idle_engine->GetSession(ids[1])->tier, SessionTier::kDisk);
}

}  // namespace
}  // namespace deltaserve
