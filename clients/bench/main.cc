// deltaserve-bench: a load generator for a deltaserve server.
//
//   deltaserve-bench --server=HOST:PORT [--concurrency=N | --request_rate=R]
//       [--num_requests=N] [--input_len=N] [--output_len=N]
//       [--workload=random|multiturn] [--turns=K] [--seed=S] [--json=FILE]
//
// Sends token-id prompts of random ids (greedy, ignore_eos, so every output
// has exactly the asked length), measures TTFT, TPOT, inter-token latency
// and end-to-end latency on the client, and prints a table of their mean
// and p50/p90/p99 with the run's throughput. Exit status: 0 when every
// request succeeded, 1 for a usage error, 2 when the run could not start
// (e.g. no server) or some request failed.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/bench/report.h"
#include "clients/bench/runner.h"
#include "clients/bench/stats.h"
#include "clients/bench/workload.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(std::string, model, "", "Model name; empty: the server's default.");
ABSL_FLAG(int, concurrency, 1,
          "Closed loop: conversations (requests, for --workload=random) kept "
          "in flight. Ignored when --request_rate > 0.");
ABSL_FLAG(double, request_rate, 0.0,
          "Open loop: conversations started per second, Poisson arrivals; "
          "0 uses --concurrency.");
ABSL_FLAG(int, num_requests, 16, "Requests measured (all turns counted).");
ABSL_FLAG(int, input_len, 256,
          "Prompt tokens (for multiturn: new user tokens per turn).");
ABSL_FLAG(std::string, input_len_dist, "fixed",
          "fixed, uniform (in [len·(1−spread), len·(1+spread)]) or normal "
          "(σ = len·spread, cut at ±3σ).");
ABSL_FLAG(double, input_len_spread, 0.25,
          "Relative spread of --input_len_dist uniform/normal.");
ABSL_FLAG(int, output_len, 64, "Tokens generated per request (exact).");
ABSL_FLAG(std::string, output_len_dist, "fixed",
          "fixed, uniform or normal, as --input_len_dist.");
ABSL_FLAG(double, output_len_spread, 0.25,
          "Relative spread of --output_len_dist uniform/normal.");
ABSL_FLAG(std::string, workload, "random",
          "random: independent requests; multiturn: conversations of --turns "
          "turns, each re-sending the whole history.");
ABSL_FLAG(int, turns, 3, "Turns per conversation (--workload=multiturn).");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the prompts, lengths and arrival times.");
ABSL_FLAG(int, warmup, 0,
          "Requests sent and finished before the measured run; not counted.");
ABSL_FLAG(std::string, json, "",
          "Write the summary and every request's record to this file.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Deadline of each request (e.g. 60s); 0 means none.");

namespace deltaserve::bench {
namespace {

constexpr int kExitUsage = 1;
constexpr int kExitFailed = 2;

int UsageError(absl::string_view message) {
  absl::FPrintF(stderr, "deltaserve-bench: %s (see --help)\n", message);
  return kExitUsage;
}

absl::StatusOr<LengthDistribution> LengthFromFlags(int mean,
                                                   const std::string& dist,
                                                   double spread) {
  absl::StatusOr<LengthDistribution::Kind> kind = ParseLengthKind(dist);
  if (!kind.ok()) return kind.status();
  return LengthDistribution{*kind, mean, spread};
}

absl::StatusOr<BenchConfig> ConfigFromFlags() {
  BenchConfig config;
  config.server = absl::GetFlag(FLAGS_server);
  config.model = absl::GetFlag(FLAGS_model);
  config.concurrency = absl::GetFlag(FLAGS_concurrency);
  config.warmup = absl::GetFlag(FLAGS_warmup);
  config.timeout = absl::GetFlag(FLAGS_timeout);
  WorkloadOptions& w = config.workload;
  absl::StatusOr<WorkloadKind> kind =
      ParseWorkloadKind(absl::GetFlag(FLAGS_workload));
  if (!kind.ok()) return kind.status();
  w.kind = *kind;
  w.num_requests = absl::GetFlag(FLAGS_num_requests);
  w.turns = absl::GetFlag(FLAGS_turns);
  w.request_rate = absl::GetFlag(FLAGS_request_rate);
  w.seed = absl::GetFlag(FLAGS_seed);
  absl::StatusOr<LengthDistribution> input = LengthFromFlags(
      absl::GetFlag(FLAGS_input_len), absl::GetFlag(FLAGS_input_len_dist),
      absl::GetFlag(FLAGS_input_len_spread));
  if (!input.ok()) return input.status();
  w.input = *input;
  absl::StatusOr<LengthDistribution> output = LengthFromFlags(
      absl::GetFlag(FLAGS_output_len), absl::GetFlag(FLAGS_output_len_dist),
      absl::GetFlag(FLAGS_output_len_spread));
  if (!output.ok()) return output.status();
  w.output = *output;
  if (absl::Status s = ValidateWorkloadOptions(w); !s.ok()) return s;
  if (w.request_rate == 0.0 && config.concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency must be >= 1");
  }
  if (config.warmup < 0) {
    return absl::InvalidArgumentError("--warmup must be >= 0");
  }
  return config;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A load generator for deltaserve-server.\n"
      "Usage: deltaserve-bench [--server=HOST:PORT] [--concurrency=N | "
      "--request_rate=R]\n"
      "  [--num_requests=N] [--input_len=N] [--output_len=N] "
      "[--workload=random|multiturn]\n"
      "  [--turns=K] [--seed=S] [--warmup=N] [--json=FILE] [--timeout=D]");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 1) {
    return UsageError(
        absl::StrCat("unexpected argument \"", positional[1], "\""));
  }
  absl::StatusOr<BenchConfig> config = ConfigFromFlags();
  if (!config.ok()) return UsageError(config.status().message());

  absl::StatusOr<BenchResult> result = RunBench(*config);
  if (!result.ok()) {
    absl::FPrintF(stderr, "error: %s: %s\n",
                  absl::StatusCodeToString(result.status().code()),
                  result.status().message());
    return kExitFailed;
  }
  const Summary summary = Summarize(result->records, result->duration_s);
  absl::PrintF("%s", FormatReport(*config, *result, summary));
  std::fflush(stdout);

  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty()) {
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << ReportJson(*config, *result, summary)
               .dump(2, ' ', /*ensure_ascii=*/false,
                     nlohmann::json::error_handler_t::replace)
        << "\n";
    out.close();
    if (!out) {
      absl::FPrintF(stderr, "error: cannot write %s\n", json_path);
      return kExitFailed;
    }
  }
  return summary.failed == 0 ? 0 : kExitFailed;
}

}  // namespace
}  // namespace deltaserve::bench

int main(int argc, char** argv) { return deltaserve::bench::Run(argc, argv); }
