#include "engine/sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/sampling_rule.h"

namespace deltaserve {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!(params.temperature >= 0.0f) || std::isinf(params.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.temperature must be finite and >= 0, got ",
                     params.temperature));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k must be >= 0, got ", params.top_k));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in (0, 1], got ", params.top_p));
  }
  return absl::OkStatus();
}

float DrawUniform(std::mt19937_64* rng) {
  return static_cast<float>((*rng)() >> 40) * 0x1p-24f;
}

SampleResult Sample(absl::Span<const float> logits,
                    const SamplingParams& params, int top_logprobs,
                    std::mt19937_64* rng) {
  const int n = static_cast<int>(logits.size());
  SampleResult result;
  // log-softmax normaliser of the raw distribution.
  float max_logit = logits[0];
  for (int i = 1; i < n; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(double{logits[i]} - max_logit);
  const double log_z = max_logit + std::log(sum);

  if (params.temperature == 0.0f) {
    result.token = ArgmaxRow(logits.data(), n);
  } else {
    result.token = SampleRow(logits.data(), n, params.temperature, params.top_k,
                             params.top_p, DrawUniform(rng));
  }
  result.logprob = static_cast<float>(logits[result.token] - log_z);
  if (top_logprobs > 0) {
    const int k = std::min(top_logprobs, n);
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) {
                        return logits[a] > logits[b] ||
                               (logits[a] == logits[b] && a < b);
                      });
    for (int i = 0; i < k; ++i) {
      result.top.push_back(
          {order[i], static_cast<float>(logits[order[i]] - log_z)});
    }
  }
  return result;
}

}  // namespace deltaserve
