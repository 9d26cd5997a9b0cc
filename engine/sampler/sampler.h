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

// The uniform number in [0, 1) that sampling a token draws from `rng`: the
// top 24 bits of one output times 2^-24 (exact in a float, the same on every
// platform). The engine draws it on the host for tokens sampled on the
// device too, so a seed gives the same tokens either way.
float DrawUniform(std::mt19937_64* rng);

// Picks a token from `logits` (at most kMaxSampleVocab of them, no NaN
// expected). Greedy (temperature 0) takes the argmax (lowest id on ties)
// and draws nothing. Otherwise draws one number with DrawUniform and
// returns the token Kernels::SampleTokens chooses for it (SampleRow in
// kernels/sampling_rule.h): softmax(logits / temperature) restricted to the
// tokens at or above the top_k-th largest logit, then to the most likely
// ones whose probability reaches top_p (ties at either threshold are kept
// together). `top_logprobs` > 0 also reports that many log-probabilities of
// the unmodified distribution.
SampleResult Sample(absl::Span<const float> logits,
                    const SamplingParams& params, int top_logprobs,
                    std::mt19937_64* rng);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_SAMPLER_SAMPLER_H_
