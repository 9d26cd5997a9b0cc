// The stored record format shared by every StateStore implementation: keys,
// value framing (version + payload + CRC-32C), the payload of each record
// kind, snapshot consistency rules and the export stream. README.md
// documents the bytes; this is the one place that reads and writes them.
// Stateless functions; thread-safe.
#ifndef DELTASERVE_ENGINE_STATE_STORE_RECORD_FORMAT_H_
#define DELTASERVE_ENGINE_STATE_STORE_RECORD_FORMAT_H_

#include <bit>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/state_store/state_store.h"

namespace deltaserve {
namespace state_store_internal {

static_assert(std::endian::native == std::endian::little,
              "the record format stores raw little-endian numbers");

// Version of every value's framing and payload, and of the export stream.
inline constexpr uint32_t kFormatVersion = 1;
// Token ids per token-history chunk record.
inline constexpr int64_t kTokensPerChunk = 4096;
// Bytes of a session id in keys (128 bits).
inline constexpr size_t kIdBytes = 16;
// Limits on metadata strings and layer counts, so that hostile input cannot
// make a reader allocate much.
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr uint32_t kMaxLayers = 4096;

// Column families (RocksDB) / key spaces (in memory).
enum class Family : int {
  kMeta = 0,
  kRecurrent = 1,
  kKvPages = 2,
  kTokens = 3
};
inline constexpr int kNumFamilies = 4;
const char* FamilyName(Family family);

// ---- Keys ------------------------------------------------------------------

// The 16 bytes of a valid session id (ValidateSessionId must have passed).
std::string SessionKeyPrefix(absl::string_view session_id);
// The 32-hex-character id of a key starting with a session prefix.
std::string SessionIdOfKey(absl::string_view key);
// The first key after every key that starts with `prefix` (empty: none).
std::string PrefixSuccessor(absl::string_view prefix);

std::string MetaKey(absl::string_view session_id);
std::string IndexedKey(absl::string_view session_id, Family family,
                       uint64_t index);
// The index of a key made by IndexedKey for `family`; false when the key
// does not have that family's length.
bool DecodeIndexedKey(Family family, absl::string_view key, uint64_t* index);

// ---- Values ----------------------------------------------------------------

// A value assembled from pieces, so that large float arrays are checksummed
// and handed to the storage engine without being copied. Owned pieces live
// in a deque (stable addresses); borrowed ones must outlive the value.
class FramedValue {
 public:
  FramedValue() = default;
  FramedValue(FramedValue&&) = default;
  FramedValue& operator=(FramedValue&&) = default;
  // A value of the given bytes, as they are (tests write damaged values).
  static FramedValue Raw(std::string bytes);

  const std::vector<absl::string_view>& parts() const { return parts_; }
  size_t size() const { return size_; }
  std::string Flatten() const;

 private:
  friend class ValueBuilder;
  std::deque<std::string> owned_;
  std::vector<absl::string_view> parts_;
  size_t size_ = 0;
};

// Builds a stored value, [u32 version][payload][u32 crc32c(key ‖ version ‖
// payload)] (Finish), or a bare payload for an export section
// (ForSection + FinishPayload).
class ValueBuilder {
 public:
  ValueBuilder();
  static ValueBuilder ForSection();
  void PutU32(uint32_t v);
  void PutU64(uint64_t v);
  void PutI64(int64_t v) { PutU64(static_cast<uint64_t>(v)); }
  void PutString(absl::string_view s);  // u32 length + bytes
  // Borrowed: `bytes` must outlive the FramedValue.
  void PutBorrowed(absl::string_view bytes);
  FramedValue Finish(absl::string_view key) &&;
  FramedValue FinishPayload() &&;

 private:
  struct NoVersion {};
  explicit ValueBuilder(NoVersion) {}
  void Close();
  std::string& Small();
  FramedValue value_;
  bool small_open_ = false;
};

// Checks a stored value's checksum (computed with its key) and version and
// returns its payload. DATA_LOSS: too short or checksum mismatch.
// FAILED_PRECONDITION: a version this build cannot read.
absl::StatusOr<absl::string_view> UnframeValue(absl::string_view key,
                                               absl::string_view value);

// ---- Record payloads
// ---------------------------------------------------------

FramedValue EncodeMeta(absl::string_view key, const SessionMeta& meta);
FramedValue EncodeRecurrent(absl::string_view key, uint32_t layer,
                            const std::vector<float>& state);
FramedValue EncodeTokenChunk(absl::string_view key, uint64_t chunk,
                             const int32_t* tokens, size_t count);
FramedValue EncodeKvPage(absl::string_view key, const KvPageRecord& page);

// Payload decoders. DATA_LOSS when the payload is malformed.
absl::StatusOr<SessionMeta> DecodeMeta(absl::string_view payload);
absl::Status DecodeRecurrent(absl::string_view payload, uint32_t* layer,
                             std::vector<float>* state);
absl::Status DecodeTokenChunk(absl::string_view payload, uint64_t* chunk,
                              std::vector<int32_t>* tokens);
absl::StatusOr<KvPageRecord> DecodeKvPage(absl::string_view payload);

// ---- Consistency
// -------------------------------------------------------------

// Checks the metadata alone (id, strings, sizes). Empty when fine, else why.
std::string CheckMeta(const SessionMeta& meta);
// Positions held by page `page` of a session with this metadata.
int64_t PagePositions(const SessionMeta& meta, int64_t page);
// Checks one page against the layout. Empty when fine, else why.
std::string CheckPage(const SessionMeta& meta, const KvPageRecord& page);
// Checks a complete snapshot (as Load returns it): tokens, recurrent state
// and exactly the pages [first_kv_page, num_kv_pages()). Empty when fine.
std::string CheckCompleteSnapshot(const SessionSnapshot& snapshot);

// ---- Export stream
// -----------------------------------------------------------

std::string EncodeExport(const SessionSnapshot& snapshot);
// INVALID_ARGUMENT: not a stream, unsupported version, bad structure.
// DATA_LOSS: truncated or a checksum fails.
absl::StatusOr<SessionSnapshot> DecodeExport(absl::string_view bytes);

}  // namespace state_store_internal
}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_RECORD_FORMAT_H_
