#include "clients/bench/report.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "nlohmann/json.hpp"

namespace deltaserve::bench {
namespace {

bool HasTimeout(absl::Duration timeout) {
  return timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration();
}

std::string DescribeLoad(const BenchConfig& config) {
  if (config.workload.request_rate > 0.0) {
    return absl::StrFormat("open loop, Poisson %g req/s",
                           config.workload.request_rate);
  }
  return absl::StrCat("closed loop, concurrency ", config.concurrency);
}

// A cell of the latency table: "-" for an undefined value.
std::string Cell(double value) {
  return std::isnan(value) ? "-" : absl::StrFormat("%.2f", value);
}

std::string Rate(double value, absl::string_view unit) {
  return std::isnan(value) ? absl::StrCat("- ", unit)
                           : absl::StrFormat("%.2f %s", value, unit);
}

nlohmann::json Number(double value) {
  if (std::isnan(value) || std::isinf(value)) return nullptr;
  return value;
}

nlohmann::json LengthJson(const LengthDistribution& length) {
  return {{"distribution", std::string(LengthKindName(length.kind))},
          {"mean", length.mean},
          {"spread", length.spread}};
}

nlohmann::json StatsJson(const LatencyStats& stats) {
  return {{"count", stats.count},     {"mean", Number(stats.mean)},
          {"min", Number(stats.min)}, {"p50", Number(stats.p50)},
          {"p90", Number(stats.p90)}, {"p99", Number(stats.p99)},
          {"max", Number(stats.max)}};
}

nlohmann::json RecordJson(const RequestRecord& r) {
  nlohmann::json itl = nlohmann::json::array();
  for (double v : r.itl_ms) itl.push_back(Number(v));
  return {
      {"index", r.index},
      {"conversation", r.conversation},
      {"turn", r.turn},
      {"sent", r.sent},
      {"ok", r.ok()},
      {"code", absl::StatusCodeToString(r.code)},
      {"error", r.error_message},
      {"start_s", Number(r.start_s)},
      {"input_tokens", r.input_tokens},
      {"expected_output_tokens", r.expected_output_tokens},
      {"output_tokens", r.output_tokens},
      {"ttft_ms", Number(r.ttft_ms)},
      {"tpot_ms", Number(r.tpot_ms)},
      {"e2e_ms", Number(r.e2e_ms)},
      {"server_ttft_ms", Number(r.server_ttft_ms)},
      {"finish_reason", r.finish_reason},
      {"itl_ms", std::move(itl)},
  };
}

}  // namespace

std::string DescribeConfig(const BenchConfig& config,
                           const BenchResult& result) {
  const WorkloadOptions& w = config.workload;
  std::string workload(WorkloadKindName(w.kind));
  if (w.kind == WorkloadKind::kMultiturn) {
    absl::StrAppend(&workload, " (", w.turns, " turns per conversation)");
  }
  return absl::StrCat(
      "server=", config.server,
      " model=", result.model.empty() ? config.model : result.model,
      " workload=", workload, " requests=", w.num_requests,
      " load=", DescribeLoad(config), " input_len=", DescribeLength(w.input),
      " output_len=", DescribeLength(w.output), " seed=", w.seed,
      " warmup=", config.warmup, " timeout=",
      HasTimeout(config.timeout) ? absl::FormatDuration(config.timeout)
                                 : "none");
}

std::string FormatReport(const BenchConfig& config, const BenchResult& result,
                         const Summary& summary) {
  std::string out =
      absl::StrCat("deltaserve-bench: ", DescribeConfig(config, result), "\n");
  absl::StrAppendFormat(&out, "requests:   %d ok, %d failed in %.3f s\n",
                        summary.ok, summary.failed, summary.duration_s);
  if (summary.output_length_mismatches > 0) {
    absl::StrAppendFormat(
        &out,
        "warning:    %d successful requests had another output length "
        "than asked\n",
        summary.output_length_mismatches);
  }
  absl::StrAppend(
      &out, "throughput: ", Rate(summary.request_throughput, "req/s"), ", ",
      Rate(summary.output_token_throughput, "output tok/s"), ", ",
      Rate(summary.total_token_throughput, "total tok/s"), "\n");
  absl::StrAppendFormat(&out, "tokens:     %d in, %d out\n\n",
                        summary.input_tokens, summary.output_tokens);
  absl::StrAppendFormat(&out, "| %-11s | %9s | %9s | %9s | %9s |\n",
                        "metric (ms)", "mean", "p50", "p90", "p99");
  absl::StrAppend(&out,
                  "|-------------|----------:|----------:|----------:|"
                  "----------:|\n");
  const struct {
    const char* name;
    const LatencyStats* stats;
  } rows[] = {{"TTFT", &summary.ttft_ms},
              {"TPOT", &summary.tpot_ms},
              {"ITL", &summary.itl_ms},
              {"E2E", &summary.e2e_ms}};
  for (const auto& row : rows) {
    absl::StrAppendFormat(&out, "| %-11s | %9s | %9s | %9s | %9s |\n", row.name,
                          Cell(row.stats->mean), Cell(row.stats->p50),
                          Cell(row.stats->p90), Cell(row.stats->p99));
  }
  if (!summary.errors.empty()) {
    absl::StrAppend(&out, "\nerrors:\n");
    for (const auto& [code, count] : summary.errors) {
      absl::StrAppendFormat(&out, "  %-20s %d\n", code, count);
    }
    // The first message of each code, to say what went wrong.
    for (const auto& [code, count] : summary.errors) {
      for (const RequestRecord& r : result.records) {
        if (!r.ok() && absl::StatusCodeToString(r.code) == code) {
          absl::StrAppendFormat(&out, "  first %s: %s\n", code,
                                r.error_message);
          break;
        }
      }
    }
  }
  return out;
}

nlohmann::json ReportJson(const BenchConfig& config, const BenchResult& result,
                          const Summary& summary) {
  const WorkloadOptions& w = config.workload;
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [code, count] : summary.errors) errors[code] = count;
  nlohmann::json requests = nlohmann::json::array();
  for (const RequestRecord& r : result.records)
    requests.push_back(RecordJson(r));
  return {
      {"config",
       {
           {"server", config.server},
           {"model", config.model},
           {"workload", std::string(WorkloadKindName(w.kind))},
           {"num_requests", w.num_requests},
           {"turns", w.kind == WorkloadKind::kMultiturn ? w.turns : 1},
           {"input_len", LengthJson(w.input)},
           {"output_len", LengthJson(w.output)},
           {"request_rate", w.request_rate},
           {"concurrency", w.request_rate > 0.0 ? 0 : config.concurrency},
           {"seed", w.seed},
           {"warmup", config.warmup},
           {"timeout_s", HasTimeout(config.timeout)
                             ? Number(absl::ToDoubleSeconds(config.timeout))
                             : nlohmann::json(nullptr)},
           {"description", DescribeConfig(config, result)},
       }},
      {"model",
       {
           {"name", result.model},
           {"vocab_size", result.vocab_size},
           {"context_limit", result.context_limit},
       }},
      {"summary",
       {
           {"requests", summary.requests},
           {"ok", summary.ok},
           {"failed", summary.failed},
           {"output_length_mismatches", summary.output_length_mismatches},
           {"warmup_ok", result.warmup_ok},
           {"warmup_failed", result.warmup_failed},
           {"input_tokens", summary.input_tokens},
           {"output_tokens", summary.output_tokens},
           {"duration_s", Number(summary.duration_s)},
           {"request_throughput", Number(summary.request_throughput)},
           {"output_token_throughput", Number(summary.output_token_throughput)},
           {"total_token_throughput", Number(summary.total_token_throughput)},
           {"percentile_method", "linear interpolation between closest ranks"},
           {"ttft_ms", StatsJson(summary.ttft_ms)},
           {"tpot_ms", StatsJson(summary.tpot_ms)},
           {"itl_ms", StatsJson(summary.itl_ms)},
           {"e2e_ms", StatsJson(summary.e2e_ms)},
           {"errors", std::move(errors)},
       }},
      {"requests", std::move(requests)},
  };
}

}  // namespace deltaserve::bench
