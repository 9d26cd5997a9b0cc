// Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json`.
//
// Supported files are the GPT-2 / Qwen / Llama 3 family: model type BPE with
// a `vocab` and `merges` (either "a b" strings or ["a", "b"] pairs), no
// no normalizer or an NFC one (as real Qwen checkpoints have), a pre-tokenizer
// that is a ByteLevel step, optionally preceded by a Split with one of the
// known regexes (see SplitPattern), and a ByteLevel decoder. Added tokens
// (special or not, with their lstrip/rstrip/single_word flags) are matched in
// the text before pre-tokenization, longest first. The post-processor is
// ignored: Encode never adds BOS/EOS or other template tokens.
#ifndef DELTASERVE_ENGINE_MODEL_TOKENIZER_H_
#define DELTASERVE_ENGINE_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace deltaserve {

// The pre-tokenizer split regexes the tokenizer implements. Each is realised
// by a hand-written scanner over code points with the regex's leftmost-first
// alternation semantics (RE2 cannot express the `(?!\S)` lookahead).
enum class SplitPattern {
  // GPT-2, also what ByteLevel(use_regex=true) applies:
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Qwen2 / Qwen3 (numbers split into single digits):
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
  //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,
  // cl100k / Llama 3: as kQwen2 but numbers in groups of up to three digits
  // (\p{N}{1,3}).
  kCl100k,
};

// Returns the pattern whose regex source (as written in tokenizer.json) is
// `regex`, or nullopt when it is not one of the supported ones.
std::optional<SplitPattern> SplitPatternFromRegex(std::string_view regex);

// Splits `text` into the pieces that the regex `pattern` produces with
// "Isolated" behaviour: every match is a piece, and so is every run of text
// between matches. The pieces are views into `text` and cover it exactly.
// Unicode classes follow Unicode: \p{L} letters, \p{N} numbers, \s the
// White_Space property. `text` should be valid UTF-8; an invalid byte is
// treated as a (non-letter, non-number, non-space) character.
std::vector<std::string_view> SplitByPattern(std::string_view text,
                                             SplitPattern pattern);

// True when `bytes` is well-formed UTF-8 (no overlong forms, surrogates or
// code points above U+10FFFF).
bool IsValidUtf8(std::string_view bytes);

// Returns `bytes` with each maximal ill-formed subsequence replaced by U+FFFD
// (the same replacement as Python's errors="replace").
std::string ReplaceInvalidUtf8(std::string_view bytes);

// A loaded tokenizer. Created by FromFile/FromJson and owned by the caller;
// immutable after creation apart from an internal, mutex-protected cache of
// per-word BPE results, so every method is thread-safe.
class Tokenizer {
 public:
  // Loads `path`. NOT_FOUND when the file cannot be read; INVALID_ARGUMENT
  // (naming the file and the problem) when it is not valid JSON, a field is
  // missing or has the wrong type, or it uses a model, normalizer,
  // pre-tokenizer or decoder this class does not support.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::string& path);
  // As FromFile, from the file's contents. INVALID_ARGUMENT as above.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view json);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Token ids of `text`; no special tokens are added, but added tokens that
  // occur in the text (e.g. "<|im_start|>") map to their ids.
  // INVALID_ARGUMENT "text is not valid UTF-8".
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;

  // The bytes the ids stand for, special tokens included, concatenated. The
  // result may be incomplete or invalid UTF-8 (a token can end inside a
  // character). Ids that name no token are skipped.
  std::string Decode(absl::Span<const int32_t> ids) const;

  // The raw bytes of one token; empty when `id` names no token.
  std::string TokenBytes(int32_t id) const;

  // One more than the largest id of the vocabulary and the added tokens.
  int vocab_size() const;

  // The id of a token string as written in tokenizer.json (added token
  // contents like "<|im_end|>", or byte-level vocabulary entries like "Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The inverse of TokenToId; nullopt when `id` names no token.
  std::optional<std::string> IdToToken(int32_t id) const;

  // Ids of the added tokens marked "special", ascending.
  const std::vector<int32_t>& special_token_ids() const;
  bool IsSpecialToken(int32_t id) const;

 private:
  struct Impl;

  explicit Tokenizer(std::unique_ptr<Impl> impl);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Parse(
      std::string_view json, std::string_view source);

  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text without ever emitting part of a
// UTF-8 character: bytes of an incomplete character are held back until the
// tokens that complete it arrive. Everything it returns is valid UTF-8 (bytes
// that can never become valid are replaced by U+FFFD). One per stream; not
// thread-safe. Does not own `tokenizer`, which must outlive it.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer* tokenizer);

  // Adds one token; returns the text completed by it (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is still held back, an incomplete character becoming
  // U+FFFD, and resets the decoder.
  std::string Flush();

  // Number of bytes currently held back.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_TOKENIZER_H_
