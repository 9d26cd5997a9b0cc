#include "engine/state_store/test_util.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace deltaserve {
namespace testing_util {
namespace {

uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
bool SameBytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace

TestShape SmallHybridShape() {
  TestShape s;
  s.page_size = 4;
  s.layers = {
      {/*recurrent_floats=*/96, /*kv_floats_per_token=*/0},
      {0, 6},
      {40, 0},
      {0, 0},
      {0, 10},
  };
  return s;
}

std::string RandomSessionId(std::mt19937_64& rng) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (int i = 0; i < 32; ++i) id.push_back(kHex[rng() % 16]);
  return id;
}

void FillRandom(std::vector<float>* out, uint64_t seed) {
  uint64_t state = seed;
  size_t i = 0;
  for (; i + 1 < out->size(); i += 2) {
    const uint64_t r = SplitMix(&state);
    std::memcpy(out->data() + i, &r, 8);
  }
  if (i < out->size()) {
    const uint32_t r = static_cast<uint32_t>(SplitMix(&state));
    std::memcpy(out->data() + i, &r, 4);
  }
}

SessionModel::SessionModel(std::string session_id, TestShape shape,
                           uint64_t seed)
    : shape_(std::move(shape)), rng_(seed) {
  meta_.session_id = std::move(session_id);
  meta_.model_fingerprint = "test-model:sha256:0123abcd";
  meta_.tenant = "tenant-a";
  meta_.created = absl::FromUnixNanos(1'700'000'000'123'456'789);
  meta_.last_used = meta_.created + absl::Seconds(5);
  meta_.page_size = shape_.page_size;
  meta_.layers = shape_.layers;
  recurrent_.resize(shape_.layers.size());
  keys_.resize(shape_.layers.size());
  values_.resize(shape_.layers.size());
  Grow(0);
}

void SessionModel::Grow(int64_t positions) {
  std::vector<int32_t> pending(tokens_.end() - pending_, tokens_.end());
  tokens_.resize(meta_.num_tokens);
  for (int64_t i = 0; i < positions; ++i) {
    tokens_.push_back(static_cast<int32_t>(rng_() % 150000));
  }
  tokens_.insert(tokens_.end(), pending.begin(), pending.end());
  for (size_t l = 0; l < shape_.layers.size(); ++l) {
    const int64_t w = shape_.layers[l].kv_floats_per_token;
    if (w > 0) {
      std::vector<float> k(positions * w), v(positions * w);
      FillRandom(&k, rng_());
      FillRandom(&v, rng_());
      keys_[l].insert(keys_[l].end(), k.begin(), k.end());
      values_[l].insert(values_[l].end(), v.begin(), v.end());
    }
    recurrent_[l].assign(shape_.layers[l].recurrent_floats, 0.f);
    FillRandom(&recurrent_[l], rng_());
  }
  meta_.num_tokens += positions;
  meta_.last_used += absl::Milliseconds(positions);
}

void SessionModel::Truncate(int64_t num_tokens) {
  tokens_.resize(num_tokens);
  pending_ = 0;
  for (size_t l = 0; l < shape_.layers.size(); ++l) {
    const int64_t w = shape_.layers[l].kv_floats_per_token;
    keys_[l].resize(num_tokens * w);
    values_[l].resize(num_tokens * w);
  }
  meta_.num_tokens = num_tokens;
  meta_.first_kv_page = std::min(meta_.first_kv_page, meta_.num_kv_pages());
  Grow(0);
}

void SessionModel::set_pending_tokens(int64_t n) {
  tokens_.resize(meta_.num_tokens);
  for (int64_t i = 0; i < n; ++i) {
    tokens_.push_back(static_cast<int32_t>(rng_() % 150000));
  }
  pending_ = n;
}

SessionSnapshot SessionModel::Snapshot(int64_t from_page) const {
  SessionSnapshot s;
  s.meta = meta_;
  s.tokens = tokens_;
  s.recurrent = recurrent_;
  const int64_t ps = meta_.page_size;
  for (int64_t p = std::max(from_page, meta_.first_kv_page);
       p < meta_.num_kv_pages(); ++p) {
    KvPageRecord page;
    page.page_index = p;
    page.keys.resize(shape_.layers.size());
    page.values.resize(shape_.layers.size());
    const int64_t end = std::min(meta_.num_tokens, (p + 1) * ps);
    for (size_t l = 0; l < shape_.layers.size(); ++l) {
      const int64_t w = shape_.layers[l].kv_floats_per_token;
      if (w == 0) continue;
      page.keys[l].assign(keys_[l].begin() + p * ps * w,
                          keys_[l].begin() + end * w);
      page.values[l].assign(values_[l].begin() + p * ps * w,
                            values_[l].begin() + end * w);
    }
    s.kv_pages.push_back(std::move(page));
  }
  return s;
}

SessionSnapshot SessionModel::Expected(uint64_t seq) const {
  SessionSnapshot s = Snapshot();
  s.meta.snapshot_seq = seq;
  s.meta.history_tokens = static_cast<int64_t>(tokens_.size());
  return s;
}

::testing::AssertionResult SameSnapshot(const SessionSnapshot& a,
                                        const SessionSnapshot& b) {
  if (!(a.meta == b.meta)) {
    return ::testing::AssertionFailure()
           << "metadata differs: id " << a.meta.session_id << " vs "
           << b.meta.session_id << ", num_tokens " << a.meta.num_tokens
           << " vs " << b.meta.num_tokens << ", seq " << a.meta.snapshot_seq
           << " vs " << b.meta.snapshot_seq << ", history "
           << a.meta.history_tokens << " vs " << b.meta.history_tokens;
  }
  if (!SameBytes(a.tokens, b.tokens)) {
    return ::testing::AssertionFailure() << "token histories differ";
  }
  if (a.recurrent.size() != b.recurrent.size()) {
    return ::testing::AssertionFailure() << "recurrent layer counts differ";
  }
  for (size_t l = 0; l < a.recurrent.size(); ++l) {
    if (!SameBytes(a.recurrent[l], b.recurrent[l])) {
      return ::testing::AssertionFailure()
             << "recurrent state of layer " << l << " differs";
    }
  }
  if (a.kv_pages.size() != b.kv_pages.size()) {
    return ::testing::AssertionFailure()
           << a.kv_pages.size() << " vs " << b.kv_pages.size() << " KV pages";
  }
  for (size_t i = 0; i < a.kv_pages.size(); ++i) {
    const KvPageRecord& x = a.kv_pages[i];
    const KvPageRecord& y = b.kv_pages[i];
    bool same = x.page_index == y.page_index &&
                x.keys.size() == y.keys.size() &&
                x.values.size() == y.values.size();
    for (size_t l = 0; same && l < x.keys.size(); ++l) {
      same = SameBytes(x.keys[l], y.keys[l]) &&
             SameBytes(x.values[l], y.values[l]);
    }
    if (!same) {
      return ::testing::AssertionFailure()
             << "KV page " << x.page_index << " differs";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace testing_util
}  // namespace deltaserve
