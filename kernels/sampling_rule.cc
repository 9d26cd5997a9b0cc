#include "kernels/sampling_rule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace deltaserve {

using sampling_rule::Canonical;
using sampling_rule::IsNan;
using sampling_rule::Key;
using sampling_rule::KeyValue;
using sampling_rule::RowParams;
using sampling_rule::Weight;

int32_t ArgmaxRow(const float* row, int64_t vocab) {
  int64_t best = 0;
  for (int64_t j = 1; j < vocab; ++j) {
    // NaN compares false both ways: it replaces only a NaN best.
    if (row[j] > row[best] || (std::isnan(row[best]) && !std::isnan(row[j]))) {
      best = j;
    }
  }
  return static_cast<int32_t>(best);
}

int32_t SampleRow(const float* row, int64_t vocab, float temperature,
                  int32_t top_k, float top_p, float uniform) {
  const RowParams p =
      sampling_rule::MakeRowParams(temperature, top_k, top_p, uniform);
  if (p.greedy) return ArgmaxRow(row, vocab);
  // Candidates: the non-NaN entries; m: their largest canonical value.
  int64_t candidates = 0;
  uint32_t max_key = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    if (IsNan(row[j])) continue;
    ++candidates;
    max_key = std::max(max_key, Key(Canonical(row[j])));
  }
  const float m = KeyValue(max_key);
  if (candidates == 0 || std::isinf(m)) return ArgmaxRow(row, vocab);
  const float s = p.scale;

  // Survivors are the candidates whose key is at least `floor_key`.
  uint32_t floor_key = 0;
  if (p.top_k > 0 && p.top_k < candidates) {
    std::vector<uint32_t> keys;
    keys.reserve(candidates);
    for (int64_t j = 0; j < vocab; ++j) {
      if (!IsNan(row[j])) keys.push_back(Key(Canonical(row[j])));
    }
    std::nth_element(keys.begin(), keys.begin() + (p.top_k - 1), keys.end(),
                     std::greater<uint32_t>());
    floor_key = keys[p.top_k - 1];
  }
  if (p.use_top_p) {
    // The largest surviving value t whose survivors at or above it weigh at
    // least ceil(top_p · total); it is always the value of a token of
    // positive weight, so only those are sorted.
    std::vector<std::pair<uint32_t, uint64_t>> weighted;
    uint64_t total = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      if (IsNan(row[j])) continue;
      const float c = Canonical(row[j]);
      const uint32_t key = Key(c);
      if (key < floor_key) continue;
      const uint64_t w = Weight(c, m, s);
      if (w == 0) continue;
      weighted.emplace_back(key, w);
      total += w;
    }
    const uint64_t need = sampling_rule::MulCeil(p.top_p, total);
    std::sort(weighted.begin(), weighted.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    uint64_t cumulative = 0;
    for (size_t i = 0; i < weighted.size(); ++i) {
      cumulative += weighted[i].second;
      const bool group_ends = i + 1 == weighted.size() ||
                              weighted[i + 1].first != weighted[i].first;
      if (group_ends && cumulative >= need) {
        floor_key = weighted[i].first;
        break;
      }
    }
  }
  // The draw: survivors walked by token id.
  uint64_t mass = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    if (IsNan(row[j])) continue;
    const float c = Canonical(row[j]);
    if (Key(c) >= floor_key) mass += Weight(c, m, s);
  }
  const uint64_t target = sampling_rule::MulFloor(p.uniform, mass);
  uint64_t cumulative = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    if (IsNan(row[j])) continue;
    const float c = Canonical(row[j]);
    if (Key(c) < floor_key) continue;
    cumulative += Weight(c, m, s);
    if (cumulative > target) return static_cast<int32_t>(j);
  }
  return ArgmaxRow(row, vocab);  // unreachable: target < mass
}

}  // namespace deltaserve
