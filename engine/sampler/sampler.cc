#include "engine/sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

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

SampleResult Sample(absl::Span<const float> logits,
                    const SamplingParams& params, int top_logprobs,
                    std::mt19937_64* rng) {
  const int n = static_cast<int>(logits.size());
  SampleResult result;
  // log-softmax normaliser of the raw distribution.
  float max_logit = logits[0];
  int argmax = 0;
  for (int i = 1; i < n; ++i) {
    if (logits[i] > max_logit) {
      max_logit = logits[i];
      argmax = i;
    }
  }
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(double{logits[i]} - max_logit);
  const double log_z = max_logit + std::log(sum);

  if (params.temperature == 0.0f) {
    result.token = argmax;
  } else {
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    int keep = n;
    if (params.top_k > 0 && params.top_k < n) keep = params.top_k;
    auto by_logit = [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                      by_logit);
    order.resize(keep);
    const double inv_t = 1.0 / params.temperature;
    std::vector<double> probs(keep);
    double total = 0.0;
    for (int i = 0; i < keep; ++i) {
      probs[i] = std::exp((double{logits[order[i]]} - max_logit) * inv_t);
      total += probs[i];
    }
    if (params.top_p < 1.0f) {
      double cum = 0.0;
      int cut = keep;
      for (int i = 0; i < keep; ++i) {
        cum += probs[i] / total;
        if (cum >= params.top_p) {
          cut = i + 1;
          break;
        }
      }
      keep = cut;
      total = 0.0;
      for (int i = 0; i < keep; ++i) total += probs[i];
    }
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    const double u = uniform(*rng) * total;
    double cum = 0.0;
    result.token = order[keep - 1];
    for (int i = 0; i < keep; ++i) {
      cum += probs[i];
      if (u < cum) {
        result.token = order[i];
        break;
      }
    }
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
