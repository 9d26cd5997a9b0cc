#include "engine/model/tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kernels/status.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace deltaserve {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------
// UTF-8

enum class Utf8Result { kValid, kInvalid, kTruncated };

// Decodes the sequence starting at s[i]. kValid: *cp and *len (1-4) are set.
// kInvalid: *len is the length of the maximal ill-formed subpart (>= 1).
// kTruncated: s ends after *len bytes that begin a well-formed sequence.
Utf8Result DecodeUtf8(std::string_view s, size_t i, char32_t* cp, size_t* len) {
  const uint8_t b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    *len = 1;
    return Utf8Result::kValid;
  }
  int need;
  uint8_t lo = 0x80, hi = 0xBF;  // Allowed range of the second byte.
  char32_t value;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return Utf8Result::kInvalid;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) {
      *len = k;
      return Utf8Result::kTruncated;
    }
    const uint8_t b = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80;
    const uint8_t h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) {
      *len = k;
      return Utf8Result::kInvalid;
    }
    value = (value << 6) | (b & 0x3F);
  }
  *cp = value;
  *len = need + 1;
  return Utf8Result::kValid;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Appends the well-formed prefix of `bytes` to `out`, replacing ill-formed
// subparts by U+FFFD. When `final` is false an incomplete character at the end
// is left unconsumed; returns the number of bytes consumed.
size_t AppendSanitizedUtf8(std::string_view bytes, bool final,
                           std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp;
    size_t len;
    switch (DecodeUtf8(bytes, i, &cp, &len)) {
      case Utf8Result::kValid:
        out->append(bytes.substr(i, len));
        break;
      case Utf8Result::kInvalid:
        out->append(kReplacementChar);
        break;
      case Utf8Result::kTruncated:
        if (!final) return i;
        out->append(kReplacementChar);
        break;
    }
    i += len;
  }
  return i;
}

// ---------------------------------------------------------------------------
// Unicode character classes

constexpr uint8_t kLetter = 1;
constexpr uint8_t kNumber = 2;

// \s in the regex engines tokenizer.json is written for: the Unicode
// White_Space property.
bool IsWhiteSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

using CodePointRange = std::pair<char32_t, char32_t>;

// Letters and numbers assigned in Unicode 15.1 and 16.0. RE2's tables here
// are Unicode 15.0, while the regex engine of the tokenizers library follows
// Unicode 16.0; these ranges are added to what RE2 reports. (All the numbers
// are decimal digits, Nd.)
constexpr CodePointRange kNewerLetters[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},
    {0x105C0, 0x105F3}, {0x10D4A, 0x10D65}, {0x10D6F, 0x10D85},
    {0x10EC2, 0x10EC4}, {0x11380, 0x11389}, {0x1138B, 0x1138B},
    {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113B7},
    {0x113D1, 0x113D1}, {0x113D3, 0x113D3}, {0x11BC0, 0x11BE0},
    {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C},
    {0x18CFF, 0x18CFF}, {0x1E5D0, 0x1E5ED}, {0x1E5F0, 0x1E5F0},
    {0x2EBF0, 0x2EE5D},
};
constexpr CodePointRange kNewerNumbers[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9},
    {0x16130, 0x16139}, {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9},
    {0x1E5F1, 0x1E5FA},
};

// A set of code points: those RE2 matches with a one-character class
// `pattern`, plus `extra` ranges. A bit table for the BMP and sorted,
// disjoint ranges above it. Immutable after construction; thread-safe.
class CodePointSet {
 public:
  CodePointSet(const char* pattern,
               std::initializer_list<absl::Span<const CodePointRange>> extra)
      : bmp_(0x10000, false) {
    // All scalar values in ascending order; a run matched by `pattern+` is
    // then a contiguous range of code points.
    std::string all;
    all.reserve(4 * 0x110000);
    for (char32_t c = 0; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      AppendUtf8(c, &all);
    }
    RE2::Options options;
    options.set_max_mem(64 << 20);
    const RE2 re(absl::StrCat("(?:", pattern, ")+"), options);
    DS_CHECK(re.ok());
    re2::StringPiece match;
    size_t pos = 0;
    while (pos < all.size() &&
           re.Match(all, pos, all.size(), RE2::UNANCHORED, &match, 1)) {
      const size_t begin = match.data() - all.data();
      const size_t end = begin + match.size();
      DS_CHECK(end > begin);
      char32_t first, last;
      size_t len;
      DS_CHECK(DecodeUtf8(all, begin, &first, &len) == Utf8Result::kValid);
      size_t last_begin = end - 1;
      while ((static_cast<uint8_t>(all[last_begin]) & 0xC0) == 0x80) {
        --last_begin;
      }
      DS_CHECK(DecodeUtf8(all, last_begin, &last, &len) == Utf8Result::kValid);
      Add(first, last);
      pos = end;
    }
    for (absl::Span<const CodePointRange> ranges : extra) {
      for (const auto& [first, last] : ranges) Add(first, last);
    }
    // Sort and merge, so that a binary search finds the one range that can
    // hold a code point.
    std::sort(above_bmp_.begin(), above_bmp_.end());
    std::vector<CodePointRange> merged;
    for (const CodePointRange& range : above_bmp_) {
      if (!merged.empty() && range.first <= merged.back().second + 1) {
        merged.back().second = std::max(merged.back().second, range.second);
      } else {
        merged.push_back(range);
      }
    }
    above_bmp_ = std::move(merged);
  }

  bool Contains(char32_t c) const {
    if (c < 0x10000) return bmp_[c];
    auto it = std::upper_bound(
        above_bmp_.begin(), above_bmp_.end(), c,
        [](char32_t v, const CodePointRange& r) { return v < r.first; });
    if (it == above_bmp_.begin()) return false;
    --it;
    return c <= it->second;
  }

 private:
  void Add(char32_t first, char32_t last) {
    for (char32_t c = first; c <= last && c < 0x10000; ++c) bmp_[c] = true;
    if (last >= 0x10000) {
      above_bmp_.emplace_back(std::max<char32_t>(first, 0x10000), last);
    }
  }

  std::vector<bool> bmp_;
  std::vector<CodePointRange> above_bmp_;
};

// \p{L} and \p{N}, built on first use.
const CodePointSet& Letters() {
  static const CodePointSet* const set =
      new CodePointSet("\\p{L}", {kNewerLetters});
  return *set;
}
const CodePointSet& Numbers() {
  static const CodePointSet* const set =
      new CodePointSet("\\p{N}", {kNewerNumbers});
  return *set;
}

// Word characters as Unicode regex engines define \w (alphabetic, marks,
// decimal digits, connector punctuation, joiners), used for added tokens
// marked single_word. Letter numbers (Nl) and the circled letters stand in
// for the non-letter part of Alphabetic.
const CodePointSet& WordChars() {
  static const CodePointSet* const set = new CodePointSet(
      "[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}"
      "\\x{24B6}-\\x{24E9}\\x{1F130}-\\x{1F149}\\x{1F150}-\\x{1F169}"
      "\\x{1F170}-\\x{1F189}]",
      {kNewerLetters, kNewerNumbers});
  return *set;
}

uint8_t ClassFlags(char32_t c) {
  static const CodePointSet& letters = Letters();
  static const CodePointSet& numbers = Numbers();
  return (letters.Contains(c) ? kLetter : 0) |
         (numbers.Contains(c) ? kNumber : 0);
}

// ---------------------------------------------------------------------------
// Pre-tokenizer split scanner

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kCl100kRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as code points with their classes; matching works on indices.
class CharSeq {
 public:
  explicit CharSeq(std::string_view text) {
    cps_.reserve(text.size());
    offsets_.reserve(text.size() + 1);
    size_t i = 0;
    while (i < text.size()) {
      char32_t cp;
      size_t len;
      if (DecodeUtf8(text, i, &cp, &len) != Utf8Result::kValid) {
        cp = 0xFFFD;  // Ill-formed bytes: a symbol, as U+FFFD is.
      }
      offsets_.push_back(i);
      cps_.push_back(cp);
      uint8_t flags = ClassFlags(cp);
      if (cp == 0xFFFD) flags = 0;
      flags_.push_back(flags);
      i += len;
    }
    offsets_.push_back(text.size());
  }

  size_t size() const { return cps_.size(); }
  size_t offset(size_t i) const { return offsets_[i]; }
  char32_t at(size_t i) const { return cps_[i]; }
  bool Letter(size_t i) const { return i < size() && (flags_[i] & kLetter); }
  bool Number(size_t i) const { return i < size() && (flags_[i] & kNumber); }
  bool Space(size_t i) const { return i < size() && IsWhiteSpace(cps_[i]); }
  // [^\s\p{L}\p{N}]
  bool Other(size_t i) const {
    return i < size() && flags_[i] == 0 && !IsWhiteSpace(cps_[i]);
  }
  bool Newline(size_t i) const {
    return i < size() && (cps_[i] == '\r' || cps_[i] == '\n');
  }

 private:
  std::vector<char32_t> cps_;
  std::vector<uint8_t> flags_;
  std::vector<size_t> offsets_;
};

class Scanner {
 public:
  Scanner(const CharSeq& s, SplitPattern pattern) : s_(s), pattern_(pattern) {}

  // Length in code points of the regex's match starting at i; 0 if none.
  size_t MatchAt(size_t i) const {
    if (pattern_ == SplitPattern::kGpt2) return MatchGpt2(i);
    return MatchQwen2(i, pattern_ == SplitPattern::kQwen2 ? 1 : 3);
  }

 private:
  // End of the run of characters satisfying `pred` that starts at i.
  template <typename Pred>
  size_t RunEnd(size_t i, Pred pred) const {
    while (pred(i)) ++i;
    return i;
  }
  size_t LetterRunEnd(size_t i) const {
    return RunEnd(i, [this](size_t k) { return s_.Letter(k); });
  }
  size_t NumberRunEnd(size_t i) const {
    return RunEnd(i, [this](size_t k) { return s_.Number(k); });
  }
  size_t OtherRunEnd(size_t i) const {
    return RunEnd(i, [this](size_t k) { return s_.Other(k); });
  }
  size_t SpaceRunEnd(size_t i) const {
    return RunEnd(i, [this](size_t k) { return s_.Space(k); });
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally ignoring case.
  size_t Contraction(size_t i, bool ignore_case) const {
    if (s_.at(i) != '\'' || i + 1 >= s_.size()) return 0;
    auto fold = [ignore_case](char32_t c) -> char32_t {
      if (!ignore_case) return c;
      if (c >= 'A' && c <= 'Z') return c - 'A' + 'a';
      if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S folds to s.
      return c;
    };
    const char32_t a = fold(s_.at(i + 1));
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= s_.size()) return 0;
    const char32_t b = fold(s_.at(i + 2));
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') ||
        (a == 'l' && b == 'l')) {
      return 3;
    }
    return 0;
  }

  // \s+(?!\S) followed by \s+: a whitespace run, less its last character
  // when a non-space follows and the run is longer than one.
  size_t Whitespace(size_t i) const {
    const size_t end = SpaceRunEnd(i);
    if (end == i) return 0;
    if (end == s_.size() || end - i == 1) return end - i;
    return end - 1 - i;
  }

  size_t MatchGpt2(size_t i) const {
    if (size_t n = Contraction(i, /*ignore_case=*/false)) return n;
    const size_t j = s_.at(i) == ' ' ? i + 1 : i;  // The optional space.
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'. Without the space a
    // space cannot start any of the three, so trying j alone suffices.
    if (s_.Letter(j)) return LetterRunEnd(j) - i;
    if (s_.Number(j)) return NumberRunEnd(j) - i;
    if (s_.Other(j)) return OtherRunEnd(j) - i;
    return Whitespace(i);
  }

  size_t MatchQwen2(size_t i, size_t max_digits) const {
    if (size_t n = Contraction(i, /*ignore_case=*/true)) return n;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (s_.Letter(i)) return LetterRunEnd(i) - i;
    if (!s_.Newline(i) && !s_.Number(i) && s_.Letter(i + 1)) {
      return LetterRunEnd(i + 1) - i;
    }
    // \p{N} or \p{N}{1,3}
    if (s_.Number(i)) {
      size_t n = 1;
      while (n < max_digits && s_.Number(i + n)) ++n;
      return n;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const size_t j = s_.at(i) == ' ' ? i + 1 : i;
    if (s_.Other(j)) {
      size_t end = OtherRunEnd(j);
      while (s_.Newline(end)) ++end;
      return end - i;
    }
    // \s*[\r\n]+: the whitespace run up to and including its last \r or \n.
    const size_t space_end = SpaceRunEnd(i);
    for (size_t k = space_end; k > i; --k) {
      if (s_.Newline(k - 1)) return k - i;
    }
    return Whitespace(i);
  }

  const CharSeq& s_;
  SplitPattern pattern_;
};

// ---------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode)

std::array<char32_t, 256> ByteToUnicode() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                           (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// "Ġ" -> ' ' etc. for a byte-level token string; nullopt if some character
// is not in the byte-level alphabet.
std::optional<std::string> ByteLevelToBytes(
    std::string_view token,
    const absl::flat_hash_map<char32_t, uint8_t>& unicode_to_byte) {
  std::string bytes;
  size_t i = 0;
  while (i < token.size()) {
    char32_t cp;
    size_t len;
    if (DecodeUtf8(token, i, &cp, &len) != Utf8Result::kValid) {
      return std::nullopt;
    }
    auto it = unicode_to_byte.find(cp);
    if (it == unicode_to_byte.end()) return std::nullopt;
    bytes.push_back(static_cast<char>(it->second));
    i += len;
  }
  return bytes;
}

// A tokenizer.json added token.
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A piece of the input: added-token text (id >= 0) or ordinary text (-1).
// True when `text` is certainly in NFC already: every code point below
// U+0300 (where no character composes or decomposes).
bool IsNfcQuickYes(std::string_view text) {
  for (unsigned char c : text) {
    if (c >= 0xCC) return false;  // lead byte of U+0300 and above
  }
  return true;
}

// Unicode normalization form C of valid UTF-8 text.
std::string NormalizeNfc(std::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) return std::string(text);
  icu::UnicodeString in = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  icu::UnicodeString out = nfc->normalize(in, status);
  if (U_FAILURE(status)) return std::string(text);
  std::string result;
  out.toUTF8String(result);
  return result;
}

struct Segment {
  std::string_view text;
  int32_t added_id = -1;
};

// Finds added tokens in text, leftmost and, at one position, longest first.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens)
      : tokens_(std::move(tokens)) {
    std::sort(tokens_.begin(), tokens_.end(),
              [](const AddedToken& a, const AddedToken& b) {
                return a.content.size() > b.content.size();
              });
    for (size_t k = 0; k < tokens_.size(); ++k) {
      if (tokens_[k].content.empty()) continue;
      by_first_byte_[static_cast<uint8_t>(tokens_[k].content[0])].push_back(k);
    }
  }

  // Splits each ordinary segment of `in` on the tokens.
  std::vector<Segment> Split(const std::vector<Segment>& in) const {
    if (tokens_.empty()) return in;
    std::vector<Segment> out;
    for (const Segment& segment : in) {
      if (segment.added_id >= 0) {
        out.push_back(segment);
      } else {
        SplitOne(segment.text, &out);
      }
    }
    return out;
  }

 private:
  static bool IsWordChar(char32_t c) { return WordChars().Contains(c); }
  static char32_t CharBefore(std::string_view text, size_t pos) {
    size_t begin = pos - 1;
    while (begin > 0 && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) {
      --begin;
    }
    char32_t cp = 0xFFFD;
    size_t len;
    DecodeUtf8(text, begin, &cp, &len);
    return cp;
  }
  static char32_t CharAt(std::string_view text, size_t pos, size_t* len) {
    char32_t cp = 0xFFFD;
    if (DecodeUtf8(text, pos, &cp, len) != Utf8Result::kValid) cp = 0xFFFD;
    return cp;
  }

  void SplitOne(std::string_view text, std::vector<Segment>* out) const {
    size_t segment_start = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const std::vector<size_t>& candidates =
          by_first_byte_[static_cast<uint8_t>(text[pos])];
      const AddedToken* match = nullptr;
      for (size_t k : candidates) {
        if (text.substr(pos).substr(0, tokens_[k].content.size()) ==
            tokens_[k].content) {
          match = &tokens_[k];
          break;
        }
      }
      if (match == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t end = pos + match->content.size();
      if (match->single_word) {
        size_t len;
        const bool word_before =
            start > 0 && IsWordChar(CharBefore(text, start));
        const bool word_after =
            end < text.size() && IsWordChar(CharAt(text, end, &len));
        if (word_before || word_after) {
          pos = end;
          continue;
        }
      }
      if (match->lstrip) {
        while (start > segment_start) {
          size_t begin = start - 1;
          while (begin > segment_start &&
                 (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) {
            --begin;
          }
          size_t len;
          if (!IsWhiteSpace(CharAt(text, begin, &len))) break;
          start = begin;
        }
      }
      if (match->rstrip) {
        size_t len;
        while (end < text.size() && IsWhiteSpace(CharAt(text, end, &len))) {
          end += len;
        }
      }
      if (start > segment_start) {
        out->push_back({text.substr(segment_start, start - segment_start), -1});
      }
      out->push_back({text.substr(start, end - start), match->id});
      segment_start = end;
      pos = end;
    }
    if (segment_start < text.size()) {
      out->push_back({text.substr(segment_start), -1});
    }
  }

  std::vector<AddedToken> tokens_;
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

// One step of the pre-tokenizer pipeline.
struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  SplitPattern pattern = SplitPattern::kGpt2;  // kSplit
  bool add_prefix_space = false;               // kByteLevel
  bool use_regex = false;                      // kByteLevel
};

struct MergeInfo {
  int32_t rank;
  int32_t new_id;
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

}  // namespace

// ---------------------------------------------------------------------------
// Free functions

std::optional<SplitPattern> SplitPatternFromRegex(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  if (regex == kCl100kRegex) return SplitPattern::kCl100k;
  return std::nullopt;
}

std::vector<std::string_view> SplitByPattern(std::string_view text,
                                             SplitPattern pattern) {
  std::vector<std::string_view> pieces;
  const CharSeq seq(text);
  const Scanner scanner(seq, pattern);
  auto emit = [&](size_t begin, size_t end) {
    const size_t b = seq.offset(begin);
    pieces.push_back(text.substr(b, seq.offset(end) - b));
  };
  size_t gap_start = 0;  // Start of unmatched text before position i.
  size_t i = 0;
  while (i < seq.size()) {
    const size_t n = scanner.MatchAt(i);
    if (n == 0) {
      ++i;
      continue;
    }
    if (gap_start < i) emit(gap_start, i);
    emit(i, i + n);
    i += n;
    gap_start = i;
  }
  if (gap_start < seq.size()) emit(gap_start, seq.size());
  return pieces;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp;
    size_t len;
    if (DecodeUtf8(bytes, i, &cp, &len) != Utf8Result::kValid) return false;
    i += len;
  }
  return true;
}

std::string ReplaceInvalidUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendSanitizedUtf8(bytes, /*final=*/true, &out);
  return out;
}

// ---------------------------------------------------------------------------
// Tokenizer

struct Tokenizer::Impl {
  absl::flat_hash_map<std::string, int32_t> vocab;
  absl::flat_hash_map<uint64_t, MergeInfo> merges;
  std::array<int32_t, 256> byte_to_id;  // -1 when the byte is not a token.
  std::array<char32_t, 256> byte_to_unicode;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool nfc = false;  // normalizer: Unicode NFC

  std::vector<PreTokenizerStep> pre_tokenizer;
  AddedTokenMatcher raw_added;         // normalized == false, matched first.
  AddedTokenMatcher normalized_added;  // normalized == true.
  absl::flat_hash_map<std::string, int32_t> added_by_content;

  int vocab_size = 0;
  std::vector<std::string> id_to_token;  // Indexed by id.
  std::vector<std::string> id_to_bytes;  // Indexed by id.
  std::vector<bool> id_present;          // Indexed by id.
  std::vector<int32_t> special_ids;
  std::vector<bool> id_special;  // Indexed by id.

  mutable absl::Mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache
      ABSL_GUARDED_BY(cache_mu);

  std::vector<std::string> PreTokenize(std::string_view segment) const;
  void BpeWord(std::string_view word, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
};

std::vector<std::string> Tokenizer::Impl::PreTokenize(
    std::string_view segment) const {
  std::vector<std::string> pieces = {std::string(segment)};
  for (const PreTokenizerStep& step : pre_tokenizer) {
    std::vector<std::string> next;
    next.reserve(pieces.size());
    for (std::string& piece : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel &&
          step.add_prefix_space && (piece.empty() || piece[0] != ' ')) {
        piece.insert(piece.begin(), ' ');
      }
      const bool split =
          step.kind == PreTokenizerStep::Kind::kSplit || step.use_regex;
      if (!split) {
        next.push_back(std::move(piece));
        continue;
      }
      const SplitPattern pattern = step.kind == PreTokenizerStep::Kind::kSplit
                                       ? step.pattern
                                       : SplitPattern::kGpt2;
      for (std::string_view part : SplitByPattern(piece, pattern)) {
        next.emplace_back(part);
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

void Tokenizer::Impl::BpeWord(std::string_view word,
                              std::vector<int32_t>* out) const {
  if (ignore_merges) {
    std::string mapped;
    for (char c : word) {
      AppendUtf8(byte_to_unicode[static_cast<uint8_t>(c)], &mapped);
    }
    auto it = vocab.find(mapped);
    if (it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }

  // Symbols in a doubly linked list over the word's bytes; a merged-away
  // symbol has id -1.
  struct Symbol {
    int32_t id;
    int prev;
    int next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (char c : word) {
    const int32_t id = byte_to_id[static_cast<uint8_t>(c)];
    if (id < 0) {
      if (!unk_id.has_value()) continue;  // Unknown bytes are dropped.
      if (fuse_unk && !symbols.empty() && symbols.back().id == *unk_id) {
        continue;
      }
      symbols.push_back({*unk_id, 0, 0});
    } else {
      symbols.push_back({id, 0, 0});
    }
  }
  const int n = static_cast<int>(symbols.size());
  for (int k = 0; k < n; ++k) {
    symbols[k].prev = k - 1;
    symbols[k].next = k + 1 < n ? k + 1 : -1;
  }

  // Candidate merges ordered by rank, then position (leftmost first).
  struct Candidate {
    int32_t rank;
    int left;
    int right;
    int32_t left_id;
    int32_t right_id;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>,
                      std::greater<Candidate>>
      queue;
  auto push = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0) return;
    auto it = merges.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges.end()) return;
    queue.push({it->second.rank, left, right, symbols[left].id,
                symbols[right].id, it->second.new_id});
  };
  for (int k = 0; k + 1 < n; ++k) push(k);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.left];
    if (left.id != top.left_id || left.next != top.right ||
        symbols[top.right].id != top.right_id) {
      continue;  // Stale: one side has changed since it was queued.
    }
    Symbol& right = symbols[top.right];
    left.id = top.new_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.id = -1;
    right.next = -1;
    push(left.prev);
    push(top.left);
  }
  for (int k = n > 0 ? 0 : -1; k >= 0; k = symbols[k].next) {
    out->push_back(symbols[k].id);
  }
}

void Tokenizer::Impl::EncodeWord(std::string_view word,
                                 std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (word.size() > kMaxCachedWordBytes) {
    BpeWord(word, out);
    return;
  }
  const std::string key(word);
  {
    absl::ReaderMutexLock lock(&cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  BpeWord(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  absl::MutexLock lock(&cache_mu);
  if (cache.size() < kMaxCacheEntries) cache.emplace(key, std::move(ids));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(
    const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("cannot open tokenizer file ", path));
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) {
    return absl::NotFoundError(
        absl::StrCat("cannot read tokenizer file ", path));
  }
  return Parse(contents.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    std::string_view json) {
  return Parse(json, "tokenizer JSON");
}

namespace {

// Reads an optional boolean member; absent or null leaves *value unchanged.
absl::Status OptionalBool(const Json& object, const char* key,
                          const std::string& where, bool* value) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".", key, " is not a boolean"));
  }
  *value = it->get<bool>();
  return absl::OkStatus();
}

// The "type" member of an object, "" when absent.
std::string TypeOf(const Json& object) {
  auto it = object.find("type");
  if (it == object.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

absl::Status ParsePreTokenizer(const Json& node, const std::string& where,
                               std::vector<PreTokenizerStep>* steps) {
  if (!node.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
  }
  const std::string type = TypeOf(node);
  if (type == "Sequence") {
    auto it = node.find("pretokenizers");
    if (it == node.end() || !it->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".pretokenizers is missing or not an array"));
    }
    for (size_t k = 0; k < it->size(); ++k) {
      DS_RETURN_IF_ERROR(ParsePreTokenizer(
          (*it)[k], absl::StrCat(where, ".pretokenizers[", k, "]"), steps));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = true;  // The library's defaults.
    step.use_regex = true;
    DS_RETURN_IF_ERROR(
        OptionalBool(node, "add_prefix_space", where, &step.add_prefix_space));
    DS_RETURN_IF_ERROR(OptionalBool(node, "use_regex", where, &step.use_regex));
    steps->push_back(step);
    return absl::OkStatus();
  }
  if (type == "Split") {
    auto pattern = node.find("pattern");
    if (pattern == node.end() || !pattern->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".pattern is missing or not an object"));
    }
    auto regex = pattern->find("Regex");
    if (regex == pattern->end() || !regex->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".pattern: only {\"Regex\": ...} patterns are supported"));
    }
    const std::string source = regex->get<std::string>();
    std::optional<SplitPattern> known = SplitPatternFromRegex(source);
    if (!known.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".pattern: unsupported Split regex ", source,
          " (supported: the GPT-2, Qwen2 and cl100k/Llama 3 patterns)"));
    }
    auto behavior = node.find("behavior");
    if (behavior == node.end() || !behavior->is_string() ||
        behavior->get<std::string>() != "Isolated") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".behavior: only \"Isolated\" is supported"));
    }
    bool invert = false;
    DS_RETURN_IF_ERROR(OptionalBool(node, "invert", where, &invert));
    if (invert) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".invert: true is not supported"));
    }
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.pattern = *known;
    steps->push_back(step);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported pre-tokenizer type \"", type,
                   "\" (supported: ByteLevel, Split, Sequence)"));
}

// A merges entry: "left right" or ["left", "right"].
absl::Status ParseMerge(const Json& entry, const std::string& where,
                        std::string* left, std::string* right) {
  if (entry.is_string()) {
    const std::string line = entry.get<std::string>();
    const size_t space = line.find(' ');
    if (space == std::string::npos ||
        line.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " is not two tokens separated by a space"));
    }
    *left = line.substr(0, space);
    *right = line.substr(space + 1);
    return absl::OkStatus();
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
      entry[1].is_string()) {
    *left = entry[0].get<std::string>();
    *right = entry[1].get<std::string>();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, " is neither \"a b\" nor [\"a\", \"b\"]"));
}

absl::StatusOr<int32_t> ParseId(const Json& value, const std::string& where) {
  if (!value.is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " is not an integer id"));
  }
  const int64_t id = value.get<int64_t>();
  if (id < 0 || id > kMaxTokenId) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " = ", id, " is out of range"));
  }
  return static_cast<int32_t>(id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Parse(
    std::string_view json, std::string_view source_view) {
  const std::string source(source_view);
  auto invalid = [&source](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parts...));
  };
  auto wrap = [&source](const absl::Status& status) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", status.message()));
  };

  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const Json::exception& e) {
    return invalid("malformed JSON: ", e.what());
  }
  if (!root.is_object()) return invalid("top level is not a JSON object");

  auto impl = std::make_unique<Impl>();
  impl->byte_to_unicode = ByteToUnicode();
  absl::flat_hash_map<char32_t, uint8_t> unicode_to_byte;
  for (int b = 0; b < 256; ++b) {
    unicode_to_byte[impl->byte_to_unicode[b]] = static_cast<uint8_t>(b);
  }

  // Everything below only reads members whose type it has checked, so the
  // json library does not throw; the handler is a safety net.
  try {
    // --- model
    auto model_it = root.find("model");
    if (model_it == root.end() || !model_it->is_object()) {
      return invalid("\"model\" is missing or not an object");
    }
    const Json& model = *model_it;
    const std::string model_type = TypeOf(model);
    if (model_type.empty() ? !model.contains("merges") : model_type != "BPE") {
      return invalid("unsupported model type \"", model_type,
                     "\" (only BPE is supported)");
    }
    if (auto it = model.find("dropout");
        it != model.end() && !it->is_null() &&
        !(it->is_number() && it->get<double>() == 0.0)) {
      return invalid("model.dropout is not supported");
    }
    for (const char* key :
         {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = model.find(key);
      if (it != model.end() && !it->is_null() &&
          !(it->is_string() && it->get<std::string>().empty())) {
        return invalid("model.", key, " is not supported");
      }
    }
    bool byte_fallback = false;
    if (absl::Status s =
            OptionalBool(model, "byte_fallback", "model", &byte_fallback);
        !s.ok()) {
      return wrap(s);
    }
    if (byte_fallback) return invalid("model.byte_fallback is not supported");
    if (absl::Status s =
            OptionalBool(model, "fuse_unk", "model", &impl->fuse_unk);
        !s.ok()) {
      return wrap(s);
    }
    if (absl::Status s =
            OptionalBool(model, "ignore_merges", "model", &impl->ignore_merges);
        !s.ok()) {
      return wrap(s);
    }

    auto vocab_it = model.find("vocab");
    if (vocab_it == model.end() || !vocab_it->is_object()) {
      return invalid("model.vocab is missing or not an object");
    }
    int64_t max_id = -1;
    impl->vocab.reserve(vocab_it->size());
    for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
      absl::StatusOr<int32_t> id =
          ParseId(it.value(), absl::StrCat("model.vocab[\"", it.key(), "\"]"));
      if (!id.ok()) return wrap(id.status());
      impl->vocab[it.key()] = *id;
      max_id = std::max<int64_t>(max_id, *id);
    }

    auto merges_it = model.find("merges");
    if (merges_it == model.end() || !merges_it->is_array()) {
      return invalid("model.merges is missing or not an array");
    }
    impl->merges.reserve(merges_it->size());
    for (size_t k = 0; k < merges_it->size(); ++k) {
      const std::string where = absl::StrCat("model.merges[", k, "]");
      std::string left, right;
      if (absl::Status s = ParseMerge((*merges_it)[k], where, &left, &right);
          !s.ok()) {
        return wrap(s);
      }
      auto l = impl->vocab.find(left);
      auto r = impl->vocab.find(right);
      auto m = impl->vocab.find(left + right);
      if (l == impl->vocab.end() || r == impl->vocab.end() ||
          m == impl->vocab.end()) {
        return invalid(where, " (\"", left, "\", \"", right,
                       "\") uses a token that is not in the vocabulary");
      }
      impl->merges[PairKey(l->second, r->second)] = {static_cast<int32_t>(k),
                                                     m->second};
    }

    if (auto it = model.find("unk_token");
        it != model.end() && !it->is_null()) {
      if (!it->is_string()) return invalid("model.unk_token is not a string");
      auto unk = impl->vocab.find(it->get<std::string>());
      if (unk == impl->vocab.end()) {
        return invalid("model.unk_token \"", it->get<std::string>(),
                       "\" is not in the vocabulary");
      }
      impl->unk_id = unk->second;
    }

    // --- added tokens
    std::vector<AddedToken> raw_added, normalized_added;
    std::vector<AddedToken> all_added;
    if (auto it = root.find("added_tokens");
        it != root.end() && !it->is_null()) {
      if (!it->is_array()) return invalid("added_tokens is not an array");
      for (size_t k = 0; k < it->size(); ++k) {
        const Json& entry = (*it)[k];
        const std::string where = absl::StrCat("added_tokens[", k, "]");
        if (!entry.is_object()) return invalid(where, " is not an object");
        AddedToken token;
        auto content = entry.find("content");
        if (content == entry.end() || !content->is_string()) {
          return invalid(where, ".content is missing or not a string");
        }
        token.content = content->get<std::string>();
        auto id_it = entry.find("id");
        if (id_it == entry.end()) return invalid(where, ".id is missing");
        absl::StatusOr<int32_t> id = ParseId(*id_it, where + ".id");
        if (!id.ok()) return wrap(id.status());
        token.id = *id;
        const std::pair<const char*, bool*> flags[] = {
            {"special", &token.special},
            {"lstrip", &token.lstrip},
            {"rstrip", &token.rstrip},
            {"single_word", &token.single_word}};
        for (const auto& [key, value] : flags) {
          if (absl::Status s = OptionalBool(entry, key, where, value);
              !s.ok()) {
            return wrap(s);
          }
        }
        token.normalized = !token.special;
        if (absl::Status s =
                OptionalBool(entry, "normalized", where, &token.normalized);
            !s.ok()) {
          return wrap(s);
        }
        max_id = std::max<int64_t>(max_id, token.id);
        (token.normalized ? normalized_added : raw_added).push_back(token);
        all_added.push_back(std::move(token));
      }
    }
    impl->raw_added = AddedTokenMatcher(std::move(raw_added));
    impl->normalized_added = AddedTokenMatcher(std::move(normalized_added));

    // --- normalizer, pre-tokenizer, decoder
    if (auto it = root.find("normalizer"); it != root.end() && !it->is_null()) {
      if (TypeOf(*it) != "NFC") {
        return invalid("unsupported normalizer type \"", TypeOf(*it),
                       "\" (supported: none, NFC)");
      }
      impl->nfc = true;
    }
    auto pre_it = root.find("pre_tokenizer");
    if (pre_it == root.end() || pre_it->is_null()) {
      return invalid("pre_tokenizer is missing (a ByteLevel one is required)");
    }
    if (absl::Status s =
            ParsePreTokenizer(*pre_it, "pre_tokenizer", &impl->pre_tokenizer);
        !s.ok()) {
      return wrap(s);
    }
    const auto& steps = impl->pre_tokenizer;
    const size_t byte_level_steps = std::count_if(
        steps.begin(), steps.end(), [](const PreTokenizerStep& step) {
          return step.kind == PreTokenizerStep::Kind::kByteLevel;
        });
    if (byte_level_steps != 1 ||
        steps.back().kind != PreTokenizerStep::Kind::kByteLevel) {
      return invalid(
          "pre_tokenizer must end with its only ByteLevel step (byte-level "
          "BPE)");
    }
    auto decoder_it = root.find("decoder");
    if (decoder_it == root.end() || !decoder_it->is_object() ||
        TypeOf(*decoder_it) != "ByteLevel") {
      return invalid("decoder is missing or not ByteLevel");
    }

    // --- id tables
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      AppendUtf8(impl->byte_to_unicode[b], &ch);
      auto it = impl->vocab.find(ch);
      impl->byte_to_id[b] = it == impl->vocab.end() ? -1 : it->second;
    }
    impl->vocab_size = static_cast<int>(max_id + 1);
    impl->id_to_token.resize(impl->vocab_size);
    impl->id_to_bytes.resize(impl->vocab_size);
    impl->id_present.assign(impl->vocab_size, false);
    impl->id_special.assign(impl->vocab_size, false);
    auto set_token = [&](int32_t id, const std::string& token) {
      impl->id_to_token[id] = token;
      // As the ByteLevel decoder: the token's bytes when every character is
      // in the byte-level alphabet, else its text as is.
      std::optional<std::string> bytes =
          ByteLevelToBytes(token, unicode_to_byte);
      impl->id_to_bytes[id] = bytes.has_value() ? *std::move(bytes) : token;
      impl->id_present[id] = true;
    };
    for (const auto& [token, id] : impl->vocab) set_token(id, token);
    for (const AddedToken& token : all_added) {
      set_token(token.id, token.content);
      impl->added_by_content[token.content] = token.id;
      if (token.special && !impl->id_special[token.id]) {
        impl->id_special[token.id] = true;
        impl->special_ids.push_back(token.id);
      }
    }
    std::sort(impl->special_ids.begin(), impl->special_ids.end());
  } catch (const Json::exception& e) {
    return invalid("unexpected JSON content: ", e.what());
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(
    std::string_view text) const {
  if (!IsValidUtf8(text)) {
    return absl::InvalidArgumentError("text is not valid UTF-8");
  }
  std::vector<Segment> segments = {{text, -1}};
  segments = impl_->raw_added.Split(segments);
  // The normalizer applies to the text outside non-normalized added tokens.
  std::deque<std::string> normalized;
  if (impl_->nfc) {
    for (Segment& segment : segments) {
      if (segment.added_id >= 0 || IsNfcQuickYes(segment.text)) continue;
      normalized.push_back(NormalizeNfc(segment.text));
      segment.text = normalized.back();
    }
  }
  segments = impl_->normalized_added.Split(segments);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  for (const Segment& segment : segments) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
      continue;
    }
    for (const std::string& word : impl_->PreTokenize(segment.text)) {
      impl_->EncodeWord(word, &ids);
    }
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < impl_->vocab_size) out += impl_->id_to_bytes[id];
  }
  return out;
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size) return "";
  return impl_->id_to_bytes[id];
}

int Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const std::string key(token);
  if (auto it = impl_->added_by_content.find(key);
      it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (auto it = impl_->vocab.find(key); it != impl_->vocab.end()) {
    return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size || !impl_->id_present[id]) {
    return std::nullopt;
  }
  return impl_->id_to_token[id];
}

const std::vector<int32_t>& Tokenizer::special_token_ids() const {
  return impl_->special_ids;
}

bool Tokenizer::IsSpecialToken(int32_t id) const {
  return id >= 0 && id < impl_->vocab_size && impl_->id_special[id];
}

// ---------------------------------------------------------------------------
// IncrementalDecoder

IncrementalDecoder::IncrementalDecoder(const Tokenizer* tokenizer)
    : tokenizer_(tokenizer) {}

std::string IncrementalDecoder::Push(int32_t id) {
  pending_ += tokenizer_->TokenBytes(id);
  std::string out;
  const size_t consumed = AppendSanitizedUtf8(pending_, /*final=*/false, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out;
  AppendSanitizedUtf8(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace deltaserve
