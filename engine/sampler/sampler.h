// Chooses the next token from a row of logits.
//
// Stateless apart from the caller's random generator: the same logits,
// parameters and generator state give the same token. Thread-compatible.
#ifndef DELTASERVE_ENGINE_SAMPLER_SAMPLER_H_
#define DELTASERVE_ENGINE_SAMPLER_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace deltaserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // (0, 1]
};

// INVALID_ARGUMENT naming the field for a negative temperature or top_k, or
// top_p outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

// The sampled token and, on request, log-probabilities.
struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;           // of `token` under softmax(logits)
  std::vector<TokenLogprob> top;  // top_logprobs most likely, best first
};

// Picks a token from `logits`. Greedy (temperature 0) takes the argmax
// (lowest id on ties). Otherwise samples from softmax(logits / temperature)
// restricted to the top_k most likely tokens and then to the smallest set
// whose probability reaches top_p, drawing one uniform number from `rng`.
// `top_logprobs` > 0 also reports that many log-probabilities of the
// unmodified distribution.
SampleResult Sample(absl::Span<const float> logits,
                    const SamplingParams& params, int top_logprobs,
                    std::mt19937_64* rng);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_SAMPLER_SAMPLER_H_
