// Test helpers for state stores: sessions with random state that can be
// grown, shrunk and cut into snapshots, and a bit-exact comparison.
#ifndef DELTASERVE_ENGINE_STATE_STORE_TEST_UTIL_H_
#define DELTASERVE_ENGINE_STATE_STORE_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/state_store/state_store.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace testing_util {

// A model's per-session state layout.
struct TestShape {
  std::vector<LayerLayout> layers;
  int32_t page_size = 0;
};

// Recurrent, attention and plain layers, small pages.
TestShape SmallHybridShape();

// A random well-formed session id.
std::string RandomSessionId(std::mt19937_64& rng);

// Fills `out` with random bit patterns (NaNs, infinities and denormals
// included), cheaply.
void FillRandom(std::vector<float>* out, uint64_t seed);

// A session's whole history: the KV of every position and the token history,
// so that snapshots of any length and any page range can be cut from it.
class SessionModel {
 public:
  SessionModel(std::string session_id, TestShape shape, uint64_t seed);

  // Appends `positions` tokens (with their KV) and gives every recurrent
  // layer a new random state.
  void Grow(int64_t positions);
  // Keeps the first `num_tokens` positions; new recurrent state.
  void Truncate(int64_t num_tokens);
  // Tokens in the history past num_tokens (e.g. a sampled, unfed token).
  void set_pending_tokens(int64_t n);
  void set_first_kv_page(int64_t page) { meta_.first_kv_page = page; }
  SessionMeta& meta() { return meta_; }
  int64_t num_tokens() const { return meta_.num_tokens; }

  // The commit input: metadata, history, recurrent state and the pages from
  // max(from_page, first_kv_page) on.
  SessionSnapshot Snapshot(int64_t from_page = 0) const;
  // What Load should return after the `seq`th commit of this state.
  SessionSnapshot Expected(uint64_t seq) const;

 private:
  TestShape shape_;
  SessionMeta meta_;
  std::mt19937_64 rng_;
  std::vector<int32_t> tokens_;  // positions then pending tokens
  int64_t pending_ = 0;
  std::vector<std::vector<float>> recurrent_;
  std::vector<std::vector<float>> keys_, values_;  // per layer, all positions
};

// Equal metadata and bit-identical data.
::testing::AssertionResult SameSnapshot(const SessionSnapshot& a,
                                        const SessionSnapshot& b);

}  // namespace testing_util
}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_TEST_UTIL_H_
