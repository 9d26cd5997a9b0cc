// The Metrics class on its own: names, labels and starting values, what each
// report moves, and the sources read at collection time.
#include "engine/metrics/metrics.h"

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/metrics/text_samples.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

using testing::ParseTextSamples;
using testing::SampleValue;

constexpr char kModel[] = "tiny-model";

std::map<std::string, std::string> Labels(
    std::map<std::string, std::string> extra = {}) {
  extra["model_name"] = kModel;
  return extra;
}

double Value(const Metrics& m, const std::string& name,
             std::map<std::string, std::string> extra = {}) {
  const std::string text = m.TextFormat();
  std::optional<double> v = SampleValue(text, name, Labels(std::move(extra)));
  EXPECT_TRUE(v.has_value()) << name << " missing from\n" << text;
  return v.value_or(-1);
}

TEST(MetricsTest, EveryMetricIsThereFromTheStartAtZero) {
  Metrics m(kModel);
  const std::string text = m.TextFormat();
  for (const char* name :
       {"deltaserve_num_requests_running", "deltaserve_num_requests_waiting",
        "deltaserve_kv_cache_usage_perc", "deltaserve_prompt_tokens_total",
        "deltaserve_generation_tokens_total",
        "deltaserve_num_preemptions_total",
        "deltaserve_time_to_first_token_seconds_count",
        "deltaserve_inter_token_latency_seconds_count",
        "deltaserve_e2e_request_latency_seconds_count",
        "deltaserve_request_queue_time_seconds_count",
        "deltaserve_iteration_tokens_count",
        "deltaserve_session_pause_seconds_count",
        "deltaserve_session_resume_seconds_count",
        "deltaserve_state_store_write_bytes_total",
        "deltaserve_state_store_read_bytes_total",
        "deltaserve_state_store_write_seconds_count"}) {
    EXPECT_EQ(SampleValue(text, name, Labels()), 0.0) << name;
  }
  for (const char* reason : {"stop", "length", "cancelled", "error"}) {
    EXPECT_EQ(Value(m, "deltaserve_request_success_total",
                    {{"finished_reason", reason}}),
              0.0);
  }
  for (const char* tier : {"device", "host", "disk"}) {
    EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", tier}}), 0.0);
    EXPECT_EQ(Value(m, "deltaserve_session_bytes", {{"tier", tier}}), 0.0);
  }
  for (const char* direction : {"export", "import"}) {
    EXPECT_EQ(Value(m, "deltaserve_session_migrate_seconds_count",
                    {{"direction", direction}}),
              0.0);
  }
  // Every sample parses and carries the model's name; no RocksDB figures
  // without a RocksDB source.
  for (const auto& s : ParseTextSamples(text)) {
    ASSERT_FALSE(s.name.empty()) << text;
    EXPECT_EQ(s.labels.at("model_name"), kModel) << s.name;
    EXPECT_TRUE(absl::StartsWith(s.name, "deltaserve_")) << s.name;
  }
  EXPECT_FALSE(absl::StrContains(text, "deltaserve_rocksdb_"));
  // Types as Prometheus expects them.
  EXPECT_TRUE(
      absl::StrContains(text, "# TYPE deltaserve_prompt_tokens_total counter"));
  EXPECT_TRUE(absl::StrContains(
      text, "# TYPE deltaserve_time_to_first_token_seconds histogram"));
  EXPECT_TRUE(
      absl::StrContains(text, "# TYPE deltaserve_num_requests_running gauge"));
}

TEST(MetricsTest, ReportsMoveTheirMetrics) {
  Metrics m(kModel);
  m.SetSchedulerState(3, 5, 0.25);
  m.AddPromptTokens(7);
  m.AddPromptTokens(4);
  m.AddGenerationTokens(9);
  m.AddPreemptions(2);
  m.ObserveIterationTokens(12);
  m.ObserveIterationTokens(3);
  m.ObserveTimeToFirstToken(absl::Milliseconds(30));
  m.ObserveInterTokenLatency(absl::Milliseconds(4));
  m.ObserveQueueTime(absl::Milliseconds(2));
  m.RequestFinished(RequestOutcome::kLength, absl::Seconds(2));
  m.RequestFinished(RequestOutcome::kLength, absl::Seconds(1));
  m.RequestFinished(RequestOutcome::kCancelled, absl::Seconds(1));
  m.RequestFinished(RequestOutcome::kError, absl::Seconds(1));
  m.ObserveSessionPause(absl::Milliseconds(1));
  m.ObserveSessionResume(absl::Milliseconds(2));
  m.ObserveSessionResume(absl::Milliseconds(3));
  m.ObserveSessionMigrate(MigrateDirection::kExport, absl::Milliseconds(5));
  m.OnWrite(1000, absl::Microseconds(500));
  m.OnWrite(24, absl::Microseconds(100));
  m.OnRead(333);

  EXPECT_EQ(Value(m, "deltaserve_num_requests_running"), 3);
  EXPECT_EQ(Value(m, "deltaserve_num_requests_waiting"), 5);
  EXPECT_EQ(Value(m, "deltaserve_kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(Value(m, "deltaserve_prompt_tokens_total"), 11);
  EXPECT_EQ(Value(m, "deltaserve_generation_tokens_total"), 9);
  EXPECT_EQ(Value(m, "deltaserve_num_preemptions_total"), 2);
  EXPECT_EQ(Value(m, "deltaserve_iteration_tokens_count"), 2);
  EXPECT_EQ(Value(m, "deltaserve_iteration_tokens_sum"), 15);
  EXPECT_EQ(Value(m, "deltaserve_iteration_tokens_bucket", {{"le", "8"}}), 1);
  EXPECT_EQ(Value(m, "deltaserve_iteration_tokens_bucket", {{"le", "+Inf"}}),
            2);
  EXPECT_DOUBLE_EQ(Value(m, "deltaserve_time_to_first_token_seconds_sum"),
                   0.03);
  EXPECT_EQ(Value(m, "deltaserve_time_to_first_token_seconds_bucket",
                  {{"le", "0.02"}}),
            0);
  EXPECT_EQ(Value(m, "deltaserve_time_to_first_token_seconds_bucket",
                  {{"le", "0.04"}}),
            1);
  EXPECT_EQ(Value(m, "deltaserve_inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(Value(m, "deltaserve_request_queue_time_seconds_count"), 1);
  EXPECT_EQ(Value(m, "deltaserve_request_success_total",
                  {{"finished_reason", "length"}}),
            2);
  EXPECT_EQ(Value(m, "deltaserve_request_success_total",
                  {{"finished_reason", "cancelled"}}),
            1);
  EXPECT_EQ(Value(m, "deltaserve_request_success_total",
                  {{"finished_reason", "error"}}),
            1);
  EXPECT_EQ(Value(m, "deltaserve_request_success_total",
                  {{"finished_reason", "stop"}}),
            0);
  EXPECT_EQ(Value(m, "deltaserve_e2e_request_latency_seconds_count"), 4);
  EXPECT_EQ(Value(m, "deltaserve_e2e_request_latency_seconds_sum"), 5);
  EXPECT_EQ(Value(m, "deltaserve_session_pause_seconds_count"), 1);
  EXPECT_EQ(Value(m, "deltaserve_session_resume_seconds_count"), 2);
  EXPECT_EQ(Value(m, "deltaserve_session_migrate_seconds_count",
                  {{"direction", "export"}}),
            1);
  EXPECT_EQ(Value(m, "deltaserve_session_migrate_seconds_count",
                  {{"direction", "import"}}),
            0);
  EXPECT_EQ(Value(m, "deltaserve_state_store_write_bytes_total"), 1024);
  EXPECT_EQ(Value(m, "deltaserve_state_store_read_bytes_total"), 333);
  EXPECT_EQ(Value(m, "deltaserve_state_store_write_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Value(m, "deltaserve_state_store_write_seconds_sum"),
                   0.0006);
}

TEST(MetricsTest, SessionSourceIsReadAtEachCollection) {
  Metrics m(kModel);
  SessionUsage usage;
  usage.device = 2;
  usage.host = 1;
  usage.disk = 7;
  usage.device_bytes = 2000;
  usage.host_bytes = 1000;
  usage.disk_bytes = 7000;
  int calls = 0;
  m.SetSessionSource([&] {
    ++calls;
    return usage;
  });
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "device"}}), 2);
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "host"}}), 1);
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "disk"}}), 7);
  EXPECT_EQ(Value(m, "deltaserve_session_bytes", {{"tier", "disk"}}), 7000);
  usage.device = 0;
  usage.disk = 9;
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "device"}}), 0);
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "disk"}}), 9);
  EXPECT_GE(calls, 2);
  m.SetSessionSource({});
  const int before = calls;
  EXPECT_EQ(Value(m, "deltaserve_sessions", {{"tier", "disk"}}), 0);
  EXPECT_EQ(calls, before);
}

TEST(MetricsTest, RocksDbFiguresAppearWithTheirSourceAndCountersGrow) {
  Metrics m(kModel);
  RocksDbStats stats;
  stats.actual_delayed_write_rate = 16 << 20;
  stats.is_write_stopped = 1;
  stats.num_running_compactions = 2;
  stats.compaction_pending = 1;
  stats.estimate_pending_compaction_bytes = 12345;
  stats.live_sst_files_bytes = 4096;
  stats.blob_files_bytes = 8192;
  stats.stall_micros = 1500000;
  stats.write_slowdowns = 3;
  stats.compaction_write_bytes = 100;
  stats.flush_write_bytes = 50;
  m.SetRocksDbSource([&] { return stats; });
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_actual_delayed_write_rate"), 16 << 20);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_is_write_stopped"), 1);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_num_running_compactions"), 2);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_num_running_flushes"), 0);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_compaction_pending"), 1);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_estimate_pending_compaction_bytes"),
            12345);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_live_sst_files_bytes"), 4096);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_blob_files_bytes"), 8192);
  EXPECT_DOUBLE_EQ(Value(m, "deltaserve_rocksdb_stall_seconds_total"), 1.5);
  EXPECT_EQ(
      Value(m, "deltaserve_rocksdb_write_stalls_total", {{"kind", "slowdown"}}),
      3);
  EXPECT_EQ(
      Value(m, "deltaserve_rocksdb_write_stalls_total", {{"kind", "stop"}}), 0);
  // Collected again: the counters stay; then they grow with the source's.
  EXPECT_DOUBLE_EQ(Value(m, "deltaserve_rocksdb_stall_seconds_total"), 1.5);
  stats.stall_micros = 2500000;
  stats.compaction_write_bytes = 300;
  stats.is_write_stopped = 0;
  EXPECT_DOUBLE_EQ(Value(m, "deltaserve_rocksdb_stall_seconds_total"), 2.5);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_compaction_write_bytes_total"), 300);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_flush_write_bytes_total"), 50);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_compaction_read_bytes_total"), 0);
  EXPECT_EQ(Value(m, "deltaserve_rocksdb_is_write_stopped"), 0);
}

// Reports from many threads while collections run: every report counted.
TEST(MetricsTest, ConcurrentReportsAndCollections) {
  Metrics m(kModel);
  m.SetSessionSource([] { return SessionUsage{1, 2, 3, 4, 5, 6}; });
  std::atomic<bool> stop{false};
  std::thread collector([&] {
    while (!stop) EXPECT_FALSE(m.TextFormat().empty());
  });
  std::vector<std::thread> reporters;
  for (int t = 0; t < 4; ++t) {
    reporters.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        m.AddGenerationTokens(1);
        m.ObserveInterTokenLatency(absl::Milliseconds(1));
        m.OnWrite(10, absl::Microseconds(1));
      }
    });
  }
  for (auto& t : reporters) t.join();
  stop = true;
  collector.join();
  EXPECT_EQ(Value(m, "deltaserve_generation_tokens_total"), 4000);
  EXPECT_EQ(Value(m, "deltaserve_inter_token_latency_seconds_count"), 4000);
  EXPECT_EQ(Value(m, "deltaserve_state_store_write_bytes_total"), 40000);
}

}  // namespace
}  // namespace deltaserve
