#include "engine/state_store/crc32c.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace deltaserve {
namespace {

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32cExtendPortable(0, "123456789", 9), 0xE3069283u);
  // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of ones, ascending, descending.
  std::string zeros(32, '\0'), ones(32, '\xff'), up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(down), 0x113FDB5Cu);
}

TEST(Crc32cTest, ExtendComposesAndImplementationsAgree) {
  std::mt19937 rng(7);
  std::string data(4099, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const uint32_t whole = Crc32cExtendPortable(0, data.data(), data.size());
  for (size_t offset : {0, 1, 3, 7}) {
    for (size_t len : {0, 1, 7, 8, 9, 63, 64, 1000, 4092}) {
      const char* p = data.data() + offset;
      EXPECT_EQ(Crc32cExtend(0, p, len), Crc32cExtendPortable(0, p, len))
          << offset << " " << len;
    }
  }
  for (size_t split : {0, 1, 5, 8, 100, 4098, 4099}) {
    const absl::string_view a(data.data(), split);
    const absl::string_view b(data.data() + split, data.size() - split);
    EXPECT_EQ(Crc32cExtend(Crc32c(a), b), whole) << split;
  }
}

}  // namespace
}  // namespace deltaserve
