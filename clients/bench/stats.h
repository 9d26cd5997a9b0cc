// What deltaserve-bench measures per request and how it summarises a run:
// latency records, percentiles and throughput.
//
// Percentiles use linear interpolation between the closest ranks (numpy's
// default "linear" method): for n sorted values x[0..n-1] and p in [0, 100],
// rank r = p/100·(n−1) and the percentile is x[⌊r⌋] + (r − ⌊r⌋)·(x[⌊r⌋+1] −
// x[⌊r⌋]). p0 is the minimum, p100 the maximum, and p50 of an even count is
// the mean of the two middle values.
#ifndef DELTASERVE_CLIENTS_BENCH_STATS_H_
#define DELTASERVE_CLIENTS_BENCH_STATS_H_

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace deltaserve::bench {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One request as the client saw it. Times are client-measured; a latency
// that cannot be defined (a failed request, TPOT of a one-token output) is
// NaN.
struct RequestRecord {
  // Position in the workload (conversations in order, turns in order).
  int index = 0;
  int conversation = 0;
  int turn = 0;
  // Whether the request was sent (a multiturn conversation stops after a
  // failed turn; its later turns are recorded as failed and not sent).
  bool sent = false;
  // Seconds from the start of the run to sending the request.
  double start_s = kNaN;
  // Prompt tokens sent.
  int input_tokens = 0;
  // max_new_tokens asked for (with ignore_eos, the exact output length).
  int expected_output_tokens = 0;
  // Tokens received.
  int output_tokens = 0;
  // Send to the first chunk that carries a token.
  double ttft_ms = kNaN;
  // (e2e − ttft) / (output_tokens − 1).
  double tpot_ms = kNaN;
  // Send to the end of the stream (the call's status received).
  double e2e_ms = kNaN;
  // One entry per token after the first: the gap between a chunk and the
  // previous one, divided evenly among the chunk's tokens (tokens that came
  // in the first chunk together with the first token count 0).
  std::vector<double> itl_ms;
  // The server's own time to first token (Completion.time_to_first_token_s).
  double server_ttft_ms = kNaN;
  // "length", "stop", "cancelled" or "" when no Completion arrived.
  std::string finish_reason;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string error_message;

  bool ok() const { return sent && code == absl::StatusCode::kOk; }
};

// Turns the arrival times of one stream's chunks into a RequestRecord's
// latencies. Times are seconds on any one clock. Not thread-safe; one per
// request.
class StreamTimer {
 public:
  explicit StreamTimer(double start_s) : start_s_(start_s) {}

  // A chunk with `num_tokens` tokens arrived at `t_s`. Chunks without tokens
  // are ignored.
  void OnChunk(double t_s, int num_tokens);

  // The stream ended at `end_s`: sets the record's start_s (relative to
  // `epoch_s`), output_tokens, ttft_ms, itl_ms, tpot_ms and e2e_ms.
  void Finish(double end_s, double epoch_s, RequestRecord* record) const;

  int tokens() const { return tokens_; }

 private:
  double start_s_;
  double first_token_s_ = kNaN;
  double last_chunk_s_ = kNaN;
  int tokens_ = 0;
  std::vector<double> itl_ms_;
};

// The p-th percentile (p in [0, 100]) of `values` by linear interpolation
// between closest ranks (see the file comment); NaN when `values` is empty.
// NaN values are ignored.
double Percentile(std::vector<double> values, double p);

// Count, mean, min, max and p50/p90/p99 of a set of latencies (ms); every
// field but count is NaN for an empty set.
struct LatencyStats {
  int64_t count = 0;
  double mean = kNaN;
  double min = kNaN;
  double p50 = kNaN;
  double p90 = kNaN;
  double p99 = kNaN;
  double max = kNaN;
};
// NaN values are left out.
LatencyStats SummarizeLatencies(absl::Span<const double> values);

// A run's totals. Latencies, token counts and throughput count successful
// requests only.
struct Summary {
  int requests = 0;  // planned (sent or not)
  int ok = 0;
  int failed = 0;
  // Successful requests whose output length differed from the one asked.
  int output_length_mismatches = 0;
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  // Seconds from the first request sent to the last one finished.
  double duration_s = 0.0;
  double request_throughput = kNaN;       // ok requests per second
  double output_token_throughput = kNaN;  // output tokens per second
  double total_token_throughput = kNaN;   // input + output tokens per second
  LatencyStats ttft_ms;
  LatencyStats tpot_ms;
  LatencyStats itl_ms;
  LatencyStats e2e_ms;
  // Failed requests by status code name ("UNAVAILABLE": 2).
  std::map<std::string, int> errors;
};

Summary Summarize(absl::Span<const RequestRecord> records, double duration_s);

}  // namespace deltaserve::bench

#endif  // DELTASERVE_CLIENTS_BENCH_STATS_H_
