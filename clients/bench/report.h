// deltaserve-bench's configuration, its results, and the two ways it reports
// them: a table for people (stdout) and JSON for programs (--json).
#ifndef DELTASERVE_CLIENTS_BENCH_REPORT_H_
#define DELTASERVE_CLIENTS_BENCH_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "nlohmann/json.hpp"

namespace deltaserve::bench {

// Everything that defines a run.
struct BenchConfig {
  // "HOST:PORT" of the server.
  std::string server = "127.0.0.1:50051";
  // Model name; empty: the server's default model.
  std::string model;
  WorkloadOptions workload;
  // Conversations in flight at once in a closed-loop run
  // (workload.request_rate == 0); ignored in an open-loop run.
  int concurrency = 1;
  // Requests sent (closed loop, at `concurrency`) and completed before the
  // measured run; not counted in any statistic.
  int warmup = 0;
  // Deadline of each request; zero or infinite: none.
  absl::Duration timeout = absl::ZeroDuration();
};

// What a run produced.
struct BenchResult {
  // The model the requests went to, as the server describes it.
  std::string model;
  int vocab_size = 0;
  int64_t context_limit = 0;
  // One record per planned request, in workload order.
  std::vector<RequestRecord> records;
  // Seconds from the first request sent to the last one finished.
  double duration_s = 0.0;
  int warmup_ok = 0;
  int warmup_failed = 0;
};

// One line: server, model, workload, load (closed loop with its concurrency
// or open loop with its rate), lengths, seed, warm-up and timeout.
std::string DescribeConfig(const BenchConfig& config,
                           const BenchResult& result);

// The human-readable report: the configuration line, counts, throughput, a
// table of mean/p50/p90/p99 of TTFT, TPOT, ITL and E2E in ms, and the
// errors by code if any request failed.
std::string FormatReport(const BenchConfig& config, const BenchResult& result,
                         const Summary& summary);

// The same as JSON: "config", "model", "summary" (counts, throughput and the
// latency statistics, NaN as null) and "requests" (every RequestRecord).
nlohmann::json ReportJson(const BenchConfig& config, const BenchResult& result,
                          const Summary& summary);

}  // namespace deltaserve::bench

#endif  // DELTASERVE_CLIENTS_BENCH_REPORT_H_
