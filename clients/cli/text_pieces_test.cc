#include "clients/cli/text_pieces.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace deltaserve {
namespace cli {
namespace {

// Cuts all of `text` into pieces of at most `max_bytes` (except a character
// longer than that).
std::vector<std::string> Cut(absl::string_view text, size_t max_bytes) {
  std::vector<std::string> pieces;
  while (!text.empty()) {
    const size_t n = TextPieceLength(text, max_bytes);
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, text.size());
    pieces.emplace_back(text.substr(0, n));
    text.remove_prefix(n);
  }
  return pieces;
}

TEST(TextPieceLengthTest, TakesAShortRestWhole) {
  EXPECT_EQ(TextPieceLength("abc def", 7), 7u);
  EXPECT_EQ(TextPieceLength("abc def", 100), 7u);
  EXPECT_EQ(TextPieceLength("", 10), 0u);
}

TEST(TextPieceLengthTest, CutsAfterTheLastNewline) {
  EXPECT_EQ(Cut("one\ntwo\nthree four", 10),
            (std::vector<std::string>{"one\ntwo\n", "three four"}));
  EXPECT_EQ(Cut("one\ntwo\nthree four", 8),
            (std::vector<std::string>{"one\ntwo\n", "three", " four"}));
}

TEST(TextPieceLengthTest, KeepsRunsOfLineBreaksWhole) {
  // The cut after "a\n" would split "\n\n", one token; "b\n\n" then "c".
  EXPECT_EQ(TextPieceLength("a\nb\n\nc", 5), 5u);
  EXPECT_EQ(TextPieceLength("a\n\nbcdef", 3), 3u);
  // Only line breaks and spaces: any newline.
  EXPECT_EQ(TextPieceLength("\n\n\n\n", 2), 2u);
}

TEST(TextPieceLengthTest, CutsBeforeASpaceThatStartsAWord) {
  EXPECT_EQ(Cut("alpha beta gamma", 12),
            (std::vector<std::string>{"alpha beta", " gamma"}));
  EXPECT_EQ(Cut("alpha   beta", 9),
            (std::vector<std::string>{"alpha", "   beta"}));
}

TEST(TextPieceLengthTest, CutsAfterWhitespaceWhenNothingBetter) {
  EXPECT_EQ(TextPieceLength("    word", 3), 3u);
}

TEST(TextPieceLengthTest, CutsAtACharacterBoundary) {
  // "é" is two bytes, "€" three.
  const std::string text = "\xC3\xA9\xC3\xA9\xE2\x82\xAC\xE2\x82\xAC";
  EXPECT_EQ(Cut(text, 3),
            (std::vector<std::string>{"\xC3\xA9", "\xC3\xA9", "\xE2\x82\xAC",
                                      "\xE2\x82\xAC"}));
  EXPECT_EQ(Cut(text, 5),
            (std::vector<std::string>{"\xC3\xA9\xC3\xA9", "\xE2\x82\xAC",
                                      "\xE2\x82\xAC"}));
  // A character longer than the limit goes whole.
  EXPECT_EQ(Cut(text.substr(4), 1),
            (std::vector<std::string>{"\xE2\x82\xAC", "\xE2\x82\xAC"}));
}

TEST(TextPieceLengthTest, ConcatenatedPiecesAreTheText) {
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += "line " + std::to_string(i) + (i % 7 == 0 ? "\n\n" : "\n");
    if (i % 11 == 0) text += "    indented \xE2\x82\xAC words\n";
  }
  for (size_t max_bytes : {1u, 2u, 5u, 17u, 64u, 1000u}) {
    std::string joined;
    for (const std::string& piece : Cut(text, max_bytes)) {
      EXPECT_LE(piece.size(), std::max<size_t>(max_bytes, 3));
      joined += piece;
    }
    EXPECT_EQ(joined, text) << max_bytes;
  }
}

}  // namespace
}  // namespace cli
}  // namespace deltaserve
