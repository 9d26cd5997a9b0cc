// Keys and framing; the export stream is covered by the contract tests.
#include "engine/state_store/record_format.h"

#include <cstring>
#include <random>

#include "engine/state_store/test_util.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace state_store_internal {
namespace {

constexpr char kId[] = "00ff10a0000000000000000000000abc";

TEST(RecordFormatTest, SessionIds) {
  EXPECT_TRUE(ValidateSessionId(kId).ok());
  EXPECT_EQ(SessionIdOfKey(SessionKeyPrefix(kId)), kId);
  EXPECT_EQ(SessionKeyPrefix(kId).size(), kIdBytes);
  for (const char* bad : {"", "00ff", "00FF10a0000000000000000000000abc",
                          "00ff10a0000000000000000000000abg",
                          "00ff10a0000000000000000000000abc0"}) {
    EXPECT_EQ(ValidateSessionId(bad).code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(RecordFormatTest, KeysSortBySessionThenIndex) {
  std::mt19937_64 rng(1);
  const std::string a = testing_util::RandomSessionId(rng);
  std::string b = a;
  b[31] = b[31] == 'f' ? 'e' : 'f';
  const auto [lo, hi] = a < b ? std::pair(a, b) : std::pair(b, a);
  EXPECT_LT(IndexedKey(lo, Family::kKvPages, ~uint64_t{0}),
            IndexedKey(hi, Family::kKvPages, 0));
  EXPECT_LT(IndexedKey(lo, Family::kKvPages, 255),
            IndexedKey(lo, Family::kKvPages, 256));
  EXPECT_LT(IndexedKey(lo, Family::kTokens, 1),
            IndexedKey(lo, Family::kTokens, uint64_t{1} << 40));
  EXPECT_EQ(IndexedKey(lo, Family::kRecurrent, 3).size(), kIdBytes + 4);
  EXPECT_EQ(IndexedKey(lo, Family::kKvPages, 3).size(), kIdBytes + 8);
  uint64_t index = 0;
  ASSERT_TRUE(DecodeIndexedKey(
      Family::kKvPages, IndexedKey(lo, Family::kKvPages, 123456789), &index));
  EXPECT_EQ(index, 123456789u);
  EXPECT_FALSE(DecodeIndexedKey(Family::kKvPages,
                                IndexedKey(lo, Family::kRecurrent, 1), &index));
  // Every key of a session lies in [prefix, PrefixSuccessor(prefix)).
  const std::string prefix = SessionKeyPrefix(lo);
  EXPECT_LT(IndexedKey(lo, Family::kKvPages, ~uint64_t{0}),
            PrefixSuccessor(prefix));
  EXPECT_EQ(PrefixSuccessor(std::string(16, '\xff')), "");
  EXPECT_EQ(PrefixSuccessor(std::string("a\xff", 2)), "b");
}

TEST(RecordFormatTest, FramingChecksumsKeyAndPayload) {
  const std::vector<float> state = {1.5f, -0.f, 3e-40f};
  const std::string key = IndexedKey(kId, Family::kRecurrent, 2);
  const std::string value = EncodeRecurrent(key, 2, state).Flatten();
  ASSERT_EQ(value.size(), 4 + 4 + 8 + 12 + 4u);
  auto payload = UnframeValue(key, value);
  ASSERT_TRUE(payload.ok()) << payload.status();
  uint32_t layer = 0;
  std::vector<float> decoded;
  ASSERT_TRUE(DecodeRecurrent(*payload, &layer, &decoded).ok());
  EXPECT_EQ(layer, 2u);
  EXPECT_EQ(std::memcmp(decoded.data(), state.data(), 12), 0);
  // The same value under another key, a changed byte, a short value.
  EXPECT_EQ(UnframeValue(IndexedKey(kId, Family::kRecurrent, 3), value)
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] ^= 0x01;
    EXPECT_EQ(UnframeValue(key, bad).status().code(),
              absl::StatusCode::kDataLoss)
        << i;
  }
  EXPECT_EQ(UnframeValue(key, value.substr(0, 7)).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace state_store_internal
}  // namespace deltaserve
