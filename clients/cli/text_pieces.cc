#include "clients/cli/text_pieces.h"

namespace deltaserve {
namespace cli {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
         c == '\v';
}

bool IsUtf8Continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

}  // namespace

size_t TextPieceLength(absl::string_view text, size_t max_bytes) {
  if (max_bytes < 1) max_bytes = 1;
  if (text.size() <= max_bytes) return text.size();
  // A cut at `cut` takes text[0, cut); text[cut] exists since the text is
  // longer than max_bytes.
  size_t after_newline = 0;
  size_t before_space = 0;
  size_t after_space = 0;
  for (size_t cut = max_bytes; cut >= 1; --cut) {
    const char prev = text[cut - 1];
    const char next = text[cut];
    if (prev == '\n') {
      if (!IsSpace(next)) return cut;
      if (after_newline == 0) after_newline = cut;
    }
    if (before_space == 0 && (next == ' ' || next == '\t') && !IsSpace(prev)) {
      before_space = cut;
    }
    if (after_space == 0 && IsSpace(prev)) after_space = cut;
  }
  if (after_newline != 0) return after_newline;
  if (before_space != 0) return before_space;
  if (after_space != 0) return after_space;
  size_t cut = max_bytes;
  while (cut > 0 && IsUtf8Continuation(text[cut])) --cut;
  if (cut > 0) return cut;
  // The first character is longer than max_bytes: take it whole.
  cut = max_bytes;
  while (cut < text.size() && IsUtf8Continuation(text[cut])) ++cut;
  return cut;
}

}  // namespace cli
}  // namespace deltaserve
