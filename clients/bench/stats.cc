#include "clients/bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace deltaserve::bench {
namespace {

constexpr double kMsPerS = 1000.0;

// `sorted` is non-empty and ascending.
double PercentileOfSorted(absl::Span<const double> sorted, double p) {
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 *
                      static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] +
         (rank - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace

void StreamTimer::OnChunk(double t_s, int num_tokens) {
  if (num_tokens <= 0) return;
  if (tokens_ == 0) {
    first_token_s_ = t_s;
    // Tokens delivered together with the first one arrived with no gap.
    itl_ms_.insert(itl_ms_.end(), num_tokens - 1, 0.0);
  } else {
    const double per_token_ms = (t_s - last_chunk_s_) * kMsPerS / num_tokens;
    itl_ms_.insert(itl_ms_.end(), num_tokens, per_token_ms);
  }
  last_chunk_s_ = t_s;
  tokens_ += num_tokens;
}

void StreamTimer::Finish(double end_s, double epoch_s,
                         RequestRecord* record) const {
  record->start_s = start_s_ - epoch_s;
  record->output_tokens = tokens_;
  record->e2e_ms = (end_s - start_s_) * kMsPerS;
  record->itl_ms = itl_ms_;
  if (tokens_ > 0) {
    record->ttft_ms = (first_token_s_ - start_s_) * kMsPerS;
  }
  if (tokens_ > 1) {
    record->tpot_ms = (record->e2e_ms - record->ttft_ms) / (tokens_ - 1);
  }
}

double Percentile(std::vector<double> values, double p) {
  values.erase(std::remove_if(values.begin(), values.end(),
                              [](double v) { return std::isnan(v); }),
               values.end());
  if (values.empty() || std::isnan(p)) return kNaN;
  std::sort(values.begin(), values.end());
  return PercentileOfSorted(values, p);
}

LatencyStats SummarizeLatencies(absl::Span<const double> values) {
  std::vector<double> sorted;
  sorted.reserve(values.size());
  for (double v : values) {
    if (!std::isnan(v)) sorted.push_back(v);
  }
  LatencyStats stats;
  stats.count = sorted.size();
  if (sorted.empty()) return stats;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0.0;
  for (double v : sorted) sum += v;
  stats.mean = sum / static_cast<double>(sorted.size());
  stats.min = sorted.front();
  stats.max = sorted.back();
  stats.p50 = PercentileOfSorted(sorted, 50.0);
  stats.p90 = PercentileOfSorted(sorted, 90.0);
  stats.p99 = PercentileOfSorted(sorted, 99.0);
  return stats;
}

Summary Summarize(absl::Span<const RequestRecord> records, double duration_s) {
  Summary summary;
  summary.requests = records.size();
  summary.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& r : records) {
    if (!r.ok()) {
      ++summary.failed;
      ++summary.errors[absl::StatusCodeToString(r.code)];
      continue;
    }
    ++summary.ok;
    if (r.output_tokens != r.expected_output_tokens) {
      ++summary.output_length_mismatches;
    }
    summary.input_tokens += r.input_tokens;
    summary.output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_ms);
    tpot.push_back(r.tpot_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
  }
  if (duration_s > 0.0) {
    summary.request_throughput = summary.ok / duration_s;
    summary.output_token_throughput = summary.output_tokens / duration_s;
    summary.total_token_throughput =
        (summary.input_tokens + summary.output_tokens) / duration_s;
  }
  summary.ttft_ms = SummarizeLatencies(ttft);
  summary.tpot_ms = SummarizeLatencies(tpot);
  summary.itl_ms = SummarizeLatencies(itl);
  summary.e2e_ms = SummarizeLatencies(e2e);
  return summary;
}

}  // namespace deltaserve::bench
