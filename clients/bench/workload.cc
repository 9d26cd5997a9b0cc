#include "clients/bench/workload.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace deltaserve::bench {
namespace {

// Random streams derived from the seed, one per purpose.
enum class Stream : uint32_t { kLengths = 1, kTokens = 2, kArrivals = 3 };

std::mt19937_64 MakeEngine(uint64_t seed, Stream stream) {
  // std::seed_seq's mixing is specified by the standard, so the engine state
  // is the same everywhere.
  std::seed_seq seq{static_cast<uint32_t>(seed),
                    static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(stream)};
  return std::mt19937_64(seq);
}

absl::Status ValidateLength(const LengthDistribution& length,
                            absl::string_view field) {
  if (length.mean < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be >= 1, got ", length.mean));
  }
  if (!std::isfinite(length.spread) || length.spread < 0.0 ||
      (length.kind == LengthDistribution::Kind::kUniform &&
       length.spread > 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " spread must be ",
        length.kind == LengthDistribution::Kind::kUniform ? "in [0, 1]"
                                                          : ">= 0",
        ", got ", length.spread));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LengthDistribution::Kind> ParseLengthKind(
    absl::string_view name) {
  if (name == "fixed") return LengthDistribution::Kind::kFixed;
  if (name == "uniform") return LengthDistribution::Kind::kUniform;
  if (name == "normal") return LengthDistribution::Kind::kNormal;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown length distribution \"", name,
                   "\" (expected fixed, uniform or normal)"));
}

absl::string_view LengthKindName(LengthDistribution::Kind kind) {
  switch (kind) {
    case LengthDistribution::Kind::kFixed:
      return "fixed";
    case LengthDistribution::Kind::kUniform:
      return "uniform";
    case LengthDistribution::Kind::kNormal:
      return "normal";
  }
  return "fixed";
}

std::string DescribeLength(const LengthDistribution& length) {
  if (length.kind == LengthDistribution::Kind::kFixed) {
    return absl::StrCat(length.mean);
  }
  return absl::StrFormat("%d (%s ±%g%%)", length.mean,
                         LengthKindName(length.kind), length.spread * 100.0);
}

int64_t UniformInt(int64_t lo, int64_t hi, std::mt19937_64& rng) {
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  if (range == std::numeric_limits<uint64_t>::max()) {
    return static_cast<int64_t>(rng());
  }
  const uint64_t n = range + 1;
  // Rejects the top partial block of 2^64 so that every value is equally
  // likely.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                         std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return lo + static_cast<int64_t>(x % n);
}

double UniformUnit(std::mt19937_64& rng) {
  // The top 53 bits: every double in [0, 1) with a step of 2^-53.
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

double StandardNormal(std::mt19937_64& rng) {
  // Box–Muller, one value per pair of uniforms; 1 - u lies in (0, 1].
  const double u1 = 1.0 - UniformUnit(rng);
  const double u2 = UniformUnit(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

double Exponential(double rate, std::mt19937_64& rng) {
  return -std::log1p(-UniformUnit(rng)) / rate;
}

int SampleLength(const LengthDistribution& length, std::mt19937_64& rng) {
  const double mean = length.mean;
  switch (length.kind) {
    case LengthDistribution::Kind::kFixed:
      return std::max(1, length.mean);
    case LengthDistribution::Kind::kUniform: {
      const int64_t lo =
          std::max<int64_t>(1, std::llround(mean * (1.0 - length.spread)));
      const int64_t hi =
          std::max<int64_t>(lo, std::llround(mean * (1.0 + length.spread)));
      return static_cast<int>(UniformInt(lo, hi, rng));
    }
    case LengthDistribution::Kind::kNormal: {
      double z;
      do {
        z = StandardNormal(rng);
      } while (std::abs(z) > 3.0);
      return static_cast<int>(
          std::max<int64_t>(1, std::llround(mean + z * mean * length.spread)));
    }
  }
  return std::max(1, length.mean);
}

absl::StatusOr<WorkloadKind> ParseWorkloadKind(absl::string_view name) {
  if (name == "random") return WorkloadKind::kRandom;
  if (name == "multiturn") return WorkloadKind::kMultiturn;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown workload \"", name, "\" (expected random or multiturn)"));
}

absl::string_view WorkloadKindName(WorkloadKind kind) {
  return kind == WorkloadKind::kMultiturn ? "multiturn" : "random";
}

int Workload::num_requests() const {
  int n = 0;
  for (const Conversation& c : conversations) n += c.turns.size();
  return n;
}

std::vector<int> Workload::FirstRequestIndices() const {
  std::vector<int> first;
  first.reserve(conversations.size());
  int n = 0;
  for (const Conversation& c : conversations) {
    first.push_back(n);
    n += c.turns.size();
  }
  return first;
}

int64_t Workload::MaxContextTokens(int conversation) const {
  int64_t total = 0;
  for (const Turn& turn : conversations[conversation].turns) {
    total +=
        static_cast<int64_t>(turn.user_tokens.size()) + turn.max_new_tokens;
  }
  return total;
}

absl::Status ValidateWorkloadOptions(const WorkloadOptions& options) {
  if (options.num_requests < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_requests must be >= 1, got ", options.num_requests));
  }
  if (options.turns < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("turns must be >= 1, got ", options.turns));
  }
  if (absl::Status s = ValidateLength(options.input, "input_len"); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateLength(options.output, "output_len"); !s.ok()) {
    return s;
  }
  if (!std::isfinite(options.request_rate) || options.request_rate < 0.0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request_rate must be >= 0 and finite, got ", options.request_rate));
  }
  return absl::OkStatus();
}

absl::StatusOr<Workload> GenerateWorkload(const WorkloadOptions& options,
                                          int vocab_size) {
  if (absl::Status s = ValidateWorkloadOptions(options); !s.ok()) return s;
  if (vocab_size <= kMinPromptTokenId) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size must be > ", kMinPromptTokenId, ", got ", vocab_size));
  }
  const int turns_per_conversation =
      options.kind == WorkloadKind::kMultiturn ? options.turns : 1;
  const int num_conversations =
      (options.num_requests + turns_per_conversation - 1) /
      turns_per_conversation;

  std::mt19937_64 lengths = MakeEngine(options.seed, Stream::kLengths);
  std::mt19937_64 tokens = MakeEngine(options.seed, Stream::kTokens);
  std::mt19937_64 arrivals = MakeEngine(options.seed, Stream::kArrivals);

  Workload workload;
  workload.conversations.resize(num_conversations);
  int remaining = options.num_requests;
  double arrival_s = 0.0;
  for (int c = 0; c < num_conversations; ++c) {
    Conversation& conversation = workload.conversations[c];
    if (options.request_rate > 0.0) {
      // The first conversation starts at once; the gaps between starts are
      // exponential, so starts form a Poisson process.
      if (c > 0) arrival_s += Exponential(options.request_rate, arrivals);
      conversation.arrival_s = arrival_s;
    }
    const int turns = std::min(turns_per_conversation, remaining);
    remaining -= turns;
    conversation.turns.resize(turns);
    for (Turn& turn : conversation.turns) {
      const int input_len = SampleLength(options.input, lengths);
      turn.max_new_tokens = SampleLength(options.output, lengths);
      turn.user_tokens.resize(input_len);
      for (int32_t& id : turn.user_tokens) {
        id = static_cast<int32_t>(
            UniformInt(kMinPromptTokenId, vocab_size - 1, tokens));
      }
    }
  }
  return workload;
}

std::vector<int32_t> NextTurnPrompt(absl::Span<const int32_t> previous_prompt,
                                    absl::Span<const int32_t> generated,
                                    absl::Span<const int32_t> user_tokens) {
  std::vector<int32_t> prompt;
  prompt.reserve(previous_prompt.size() + generated.size() +
                 user_tokens.size());
  prompt.insert(prompt.end(), previous_prompt.begin(), previous_prompt.end());
  prompt.insert(prompt.end(), generated.begin(), generated.end());
  prompt.insert(prompt.end(), user_tokens.begin(), user_tokens.end());
  return prompt;
}

}  // namespace deltaserve::bench
