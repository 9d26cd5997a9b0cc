// Runs a deltaserve-bench workload against a server over gRPC.
#ifndef DELTASERVE_CLIENTS_BENCH_RUNNER_H_
#define DELTASERVE_CLIENTS_BENCH_RUNNER_H_

#include "absl/status/statusor.h"
#include "clients/bench/report.h"

namespace deltaserve::bench {

// Asks the server for the model (GetModel for config.model, or ListModels'
// default model when it is empty) to learn its vocabulary and context limit,
// draws the workload, runs `config.warmup` warm-up requests, then runs the
// workload and returns every request's record.
//
// Requests are streamed Generate calls with token-id prompts, temperature 0
// and ignore_eos, made with gRPC's callback API from one channel: no thread
// per request, and the calling thread blocks (never spins) between events.
// Closed loop (request_rate 0): `concurrency` conversations are in flight,
// and a finished one is replaced at once. Open loop: conversation i starts at
// its arrival time whatever is in flight. A multiturn conversation sends its
// next turn as soon as the previous one finishes.
//
// A failed request is a record with its status code, not an error of the
// run. Errors of the run: INVALID_ARGUMENT for bad options (concurrency < 1
// in a closed-loop run, negative warm-up, a workload that
// ValidateWorkloadOptions rejects) or a workload whose longest conversation
// exceeds the model's context limit; the gRPC status of a failed
// ListModels/GetModel call (e.g. UNAVAILABLE when there is no server,
// NOT_FOUND for an unknown model). Blocks until every request has finished.
absl::StatusOr<BenchResult> RunBench(const BenchConfig& config);

}  // namespace deltaserve::bench

#endif  // DELTASERVE_CLIENTS_BENCH_RUNNER_H_
