// The requests a deltaserve-bench run sends: prompt token ids, output
// lengths and (for an open-loop run) arrival times, all drawn from one seed.
//
// A workload is a list of conversations. The "random" workload has one turn
// per conversation (one independent request each). The "multiturn" workload
// has `turns` turns per conversation; turn k re-sends the whole history (the
// previous turn's prompt, the tokens generated for it, and a new chunk of
// random "user" tokens), so prompts grow turn by turn. Only the user chunks,
// the output lengths and the arrival times are drawn here; the generated
// tokens come from the server at run time (see NextTurnPrompt).
#ifndef DELTASERVE_CLIENTS_BENCH_WORKLOAD_H_
#define DELTASERVE_CLIENTS_BENCH_WORKLOAD_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace deltaserve::bench {

// The smallest token id a generated prompt uses; ids below it are left to
// the model's special tokens.
inline constexpr int32_t kMinPromptTokenId = 3;

// How token counts (prompt chunk or output length) vary between requests.
struct LengthDistribution {
  enum class Kind {
    kFixed,    // always `mean`
    kUniform,  // integers uniform in [mean·(1−spread), mean·(1+spread)]
    kNormal,   // mean `mean`, standard deviation mean·spread, cut at ±3σ
  };
  Kind kind = Kind::kFixed;
  int mean = 1;
  // Relative spread; ignored by kFixed. In [0, 1] for kUniform, >= 0 for
  // kNormal.
  double spread = 0.0;
};

// "fixed", "uniform" or "normal"; INVALID_ARGUMENT for anything else.
absl::StatusOr<LengthDistribution::Kind> ParseLengthKind(
    absl::string_view name);
absl::string_view LengthKindName(LengthDistribution::Kind kind);
// "256" for a fixed length, "256 (uniform ±25%)" otherwise.
std::string DescribeLength(const LengthDistribution& length);

// Draws lengths (always >= 1) from a distribution. Deterministic for a given
// engine state on every platform: it uses its own transformations of the
// engine's bits rather than the standard library's distributions, whose
// results are implementation-defined.
int SampleLength(const LengthDistribution& length, std::mt19937_64& rng);

// Uniform integer in [lo, hi] (lo <= hi), uniform real in [0, 1), standard
// normal and exponential with the given rate, each from the engine's bits
// with a fixed, portable algorithm.
int64_t UniformInt(int64_t lo, int64_t hi, std::mt19937_64& rng);
double UniformUnit(std::mt19937_64& rng);
double StandardNormal(std::mt19937_64& rng);
double Exponential(double rate, std::mt19937_64& rng);

enum class WorkloadKind { kRandom, kMultiturn };
// "random" or "multiturn"; INVALID_ARGUMENT for anything else.
absl::StatusOr<WorkloadKind> ParseWorkloadKind(absl::string_view name);
absl::string_view WorkloadKindName(WorkloadKind kind);

struct WorkloadOptions {
  WorkloadKind kind = WorkloadKind::kRandom;
  // Requests in all: for kMultiturn, ceil(num_requests / turns)
  // conversations, the last one cut short when the division is not exact.
  int num_requests = 16;
  // Turns per conversation (kMultiturn only).
  int turns = 3;
  // Length of each turn's new user chunk (the whole prompt for kRandom).
  LengthDistribution input = {LengthDistribution::Kind::kFixed, 256, 0.0};
  // Tokens generated per request (sent as max_new_tokens, with ignore_eos).
  LengthDistribution output = {LengthDistribution::Kind::kFixed, 64, 0.0};
  // Conversations started per second, with Poisson arrivals (open loop);
  // 0 leaves arrival times at 0 (closed loop: the runner keeps a fixed
  // number of conversations in flight instead).
  double request_rate = 0.0;
  uint64_t seed = 0;
};

// One request of a conversation, before the history is prepended.
struct Turn {
  // The new user tokens, each in [kMinPromptTokenId, vocab_size).
  std::vector<int32_t> user_tokens;
  // Exact number of tokens to generate.
  int max_new_tokens = 1;
};

struct Conversation {
  // Seconds after the start of the run at which the first turn is sent
  // (open loop); 0 in a closed-loop workload.
  double arrival_s = 0.0;
  std::vector<Turn> turns;
};

struct Workload {
  std::vector<Conversation> conversations;

  // Requests over all conversations.
  int num_requests() const;
  // Index of a conversation's first request when requests are numbered
  // conversation by conversation; one entry per conversation.
  std::vector<int> FirstRequestIndices() const;
  // The longest context (prompt plus generated tokens) any request of a
  // conversation reaches: its last turn's full history plus its output.
  int64_t MaxContextTokens(int conversation) const;
};

// INVALID_ARGUMENT (naming the field) unless num_requests >= 1, turns >= 1,
// lengths have mean >= 1 and a valid spread, and request_rate >= 0 and
// finite.
absl::Status ValidateWorkloadOptions(const WorkloadOptions& options);

// Draws a workload for a model whose token ids are [0, vocab_size). The same
// options (seed included) and vocab_size always give the same workload.
// Prompt contents, lengths and arrival times come from separate random
// streams derived from the seed, so changing the rate does not change the
// prompts. INVALID_ARGUMENT for bad options or vocab_size <= 3.
absl::StatusOr<Workload> GenerateWorkload(const WorkloadOptions& options,
                                          int vocab_size);

// The prompt of a conversation's next turn: the previous turn's prompt, then
// the tokens generated for it, then the new user chunk.
std::vector<int32_t> NextTurnPrompt(absl::Span<const int32_t> previous_prompt,
                                    absl::Span<const int32_t> generated,
                                    absl::Span<const int32_t> user_tokens);

}  // namespace deltaserve::bench

#endif  // DELTASERVE_CLIENTS_BENCH_WORKLOAD_H_
