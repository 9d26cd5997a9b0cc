#include "engine/state_store/record_format.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/state_store/crc32c.h"

namespace deltaserve {
namespace state_store_internal {
namespace {

// Bounds on layout numbers, so that size arithmetic cannot overflow.
constexpr int64_t kMaxTokens = int64_t{1} << 40;
constexpr int64_t kMaxRecurrentFloats = int64_t{1} << 36;
constexpr int64_t kMaxKvFloatsPerToken = int64_t{1} << 24;
constexpr int64_t kMaxPageSize = int64_t{1} << 20;

constexpr char kMagic[4] = {'D', 'S', 'S', 'N'};

// Export stream section kinds.
enum SectionKind : uint32_t {
  kSectionMeta = 1,
  kSectionTokenChunk = 2,
  kSectionRecurrent = 3,
  kSectionKvPage = 4,
  kSectionEnd = 0xFFFF,
};
// u32 kind + u64 payload length.
constexpr size_t kSectionHeaderBytes = 12;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void AppendU32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out->append(b, 4);
}

void AppendU64(std::string* out, uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  out->append(b, 8);
}

void AppendBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
}

uint32_t LoadU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

uint64_t LoadU64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

template <typename T>
absl::string_view BytesOf(const std::vector<T>& v) {
  return absl::string_view(reinterpret_cast<const char*>(v.data()),
                           v.size() * sizeof(T));
}

// A bounds-checked cursor over a payload. Reads past the end set an error
// and return zeros; callers check ok() (or Finish()) once at the end.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}

  uint32_t U32() {
    if (!Need(4)) return 0;
    uint32_t v = LoadU32(data_.data());
    data_.remove_prefix(4);
    return v;
  }
  uint64_t U64() {
    if (!Need(8)) return 0;
    uint64_t v = LoadU64(data_.data());
    data_.remove_prefix(8);
    return v;
  }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  std::string String() {
    const uint32_t n = U32();
    if (n > kMaxStringBytes) {
      Fail(absl::StrCat("string of ", n, " bytes"));
      return "";
    }
    if (!Need(n)) return "";
    std::string s(data_.substr(0, n));
    data_.remove_prefix(n);
    return s;
  }
  // `count` elements of T into `out`.
  template <typename T>
  void Array(uint64_t count, std::vector<T>* out) {
    if (count > data_.size() / sizeof(T)) {
      Fail(absl::StrCat("array of ", count, " elements past the end"));
      return;
    }
    out->resize(count);
    if (count > 0) std::memcpy(out->data(), data_.data(), count * sizeof(T));
    data_.remove_prefix(count * sizeof(T));
  }
  void Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    data_ = absl::string_view();
  }
  bool ok() const { return error_.empty(); }
  // DATA_LOSS naming `what` unless every byte was read without error.
  absl::Status Finish(absl::string_view what) {
    if (error_.empty() && !data_.empty()) {
      error_ = absl::StrCat(data_.size(), " trailing bytes");
    }
    if (error_.empty()) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat("malformed ", what, ": ", error_));
  }

 private:
  bool Need(size_t n) {
    if (data_.size() >= n) return true;
    Fail("ends early");
    return false;
  }
  absl::string_view data_;
  std::string error_;
};

// ---- Payload builders (shared by records and export sections) ----

void BuildMeta(ValueBuilder& b, const SessionMeta& m) {
  b.PutString(m.session_id);
  b.PutString(m.model_fingerprint);
  b.PutString(m.tenant);
  b.PutI64(m.num_tokens);
  b.PutI64(m.history_tokens);
  b.PutI64(m.window_from);
  b.PutI64(absl::ToUnixNanos(m.created));
  b.PutI64(absl::ToUnixNanos(m.last_used));
  b.PutU64(m.snapshot_seq);
  b.PutU32(static_cast<uint32_t>(m.page_size));
  b.PutI64(m.first_kv_page);
  b.PutU32(static_cast<uint32_t>(kTokensPerChunk));
  b.PutU32(static_cast<uint32_t>(m.layers.size()));
  for (const LayerLayout& l : m.layers) {
    b.PutI64(l.recurrent_floats);
    b.PutI64(l.kv_floats_per_token);
  }
}

void BuildRecurrent(ValueBuilder& b, uint32_t layer,
                    const std::vector<float>& state) {
  b.PutU32(layer);
  b.PutU64(state.size());
  b.PutBorrowed(BytesOf(state));
}

void BuildTokenChunk(ValueBuilder& b, uint64_t chunk, const int32_t* tokens,
                     size_t count) {
  b.PutU64(chunk);
  b.PutU32(static_cast<uint32_t>(count));
  b.PutBorrowed(absl::string_view(reinterpret_cast<const char*>(tokens),
                                  count * sizeof(int32_t)));
}

void BuildKvPage(ValueBuilder& b, const KvPageRecord& page) {
  b.PutI64(page.page_index);
  b.PutU32(static_cast<uint32_t>(page.keys.size()));
  for (size_t l = 0; l < page.keys.size(); ++l) {
    b.PutU64(page.keys[l].size());
    b.PutU64(l < page.values.size() ? page.values[l].size() : 0);
  }
  for (size_t l = 0; l < page.keys.size(); ++l) {
    b.PutBorrowed(BytesOf(page.keys[l]));
    if (l < page.values.size()) b.PutBorrowed(BytesOf(page.values[l]));
  }
}

}  // namespace

const char* FamilyName(Family family) {
  switch (family) {
    case Family::kMeta:
      return "meta";
    case Family::kRecurrent:
      return "recurrent";
    case Family::kKvPages:
      return "kv_pages";
    case Family::kTokens:
      return "tokens";
  }
  return "?";
}

// ---- Keys ----

std::string SessionKeyPrefix(absl::string_view session_id) {
  std::string out(kIdBytes, '\0');
  for (size_t i = 0; i < kIdBytes && 2 * i + 1 < session_id.size(); ++i) {
    out[i] = static_cast<char>(HexValue(session_id[2 * i]) * 16 +
                               HexValue(session_id[2 * i + 1]));
  }
  return out;
}

std::string SessionIdOfKey(absl::string_view key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (size_t i = 0; i < kIdBytes && i < key.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(key[i]);
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 15]);
  }
  return id;
}

std::string PrefixSuccessor(absl::string_view prefix) {
  std::string out(prefix);
  while (!out.empty()) {
    if (static_cast<uint8_t>(out.back()) != 0xFF) {
      out.back() = static_cast<char>(static_cast<uint8_t>(out.back()) + 1);
      return out;
    }
    out.pop_back();
  }
  return out;
}

std::string MetaKey(absl::string_view session_id) {
  return SessionKeyPrefix(session_id);
}

namespace {
int IndexBytes(Family family) {
  switch (family) {
    case Family::kMeta:
      return 0;
    case Family::kRecurrent:
      return 4;
    case Family::kKvPages:
    case Family::kTokens:
      return 8;
  }
  return 0;
}
}  // namespace

std::string IndexedKey(absl::string_view session_id, Family family,
                       uint64_t index) {
  std::string key = SessionKeyPrefix(session_id);
  AppendBigEndian(&key, index, IndexBytes(family));
  return key;
}

bool DecodeIndexedKey(Family family, absl::string_view key, uint64_t* index) {
  const int n = IndexBytes(family);
  if (n == 0 || key.size() != kIdBytes + n) return false;
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) {
    v = (v << 8) | static_cast<uint8_t>(key[kIdBytes + i]);
  }
  *index = v;
  return true;
}

// ---- Values ----

FramedValue FramedValue::Raw(std::string bytes) {
  FramedValue v;
  v.size_ = bytes.size();
  v.owned_.push_back(std::move(bytes));
  v.parts_.push_back(v.owned_.back());
  return v;
}

std::string FramedValue::Flatten() const {
  std::string out;
  out.reserve(size_);
  for (absl::string_view p : parts_) out.append(p.data(), p.size());
  return out;
}

ValueBuilder::ValueBuilder() { PutU32(kFormatVersion); }

ValueBuilder ValueBuilder::ForSection() { return ValueBuilder(NoVersion()); }

void ValueBuilder::Close() {
  if (small_open_) {
    // A deque keeps the address of this string; it is never appended to
    // again.
    value_.parts_.push_back(value_.owned_.back());
    small_open_ = false;
  }
}

std::string& ValueBuilder::Small() {
  if (!small_open_) {
    value_.owned_.emplace_back();
    small_open_ = true;
  }
  return value_.owned_.back();
}

void ValueBuilder::PutU32(uint32_t v) { AppendU32(&Small(), v); }
void ValueBuilder::PutU64(uint64_t v) { AppendU64(&Small(), v); }

void ValueBuilder::PutString(absl::string_view s) {
  PutU32(static_cast<uint32_t>(s.size()));
  Small().append(s.data(), s.size());
}

void ValueBuilder::PutBorrowed(absl::string_view bytes) {
  Close();
  if (!bytes.empty()) value_.parts_.push_back(bytes);
}

FramedValue ValueBuilder::FinishPayload() && {
  Close();
  value_.size_ = 0;
  for (absl::string_view p : value_.parts_) value_.size_ += p.size();
  return std::move(value_);
}

FramedValue ValueBuilder::Finish(absl::string_view key) && {
  Close();
  uint32_t crc = Crc32cExtend(0, key);
  size_t size = 0;
  for (absl::string_view p : value_.parts_) {
    crc = Crc32cExtend(crc, p);
    size += p.size();
  }
  value_.owned_.emplace_back();
  AppendU32(&value_.owned_.back(), crc);
  value_.parts_.push_back(value_.owned_.back());
  value_.size_ = size + 4;
  return std::move(value_);
}

absl::StatusOr<absl::string_view> UnframeValue(absl::string_view key,
                                               absl::string_view value) {
  if (value.size() < 8) {
    return absl::DataLossError(
        absl::StrCat("stored value of ", value.size(), " bytes is too short"));
  }
  const size_t body = value.size() - 4;
  const uint32_t stored = LoadU32(value.data() + body);
  const uint32_t crc = Crc32cExtend(Crc32cExtend(0, key), value.data(), body);
  if (crc != stored) {
    return absl::DataLossError("stored value fails its checksum");
  }
  const uint32_t version = LoadU32(value.data());
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("stored value has format version ", version,
                     "; this build reads version ", kFormatVersion));
  }
  return value.substr(4, body - 4);
}

// ---- Record payloads ----

FramedValue EncodeMeta(absl::string_view key, const SessionMeta& meta) {
  ValueBuilder b;
  BuildMeta(b, meta);
  return std::move(b).Finish(key);
}

FramedValue EncodeRecurrent(absl::string_view key, uint32_t layer,
                            const std::vector<float>& state) {
  ValueBuilder b;
  BuildRecurrent(b, layer, state);
  return std::move(b).Finish(key);
}

FramedValue EncodeTokenChunk(absl::string_view key, uint64_t chunk,
                             const int32_t* tokens, size_t count) {
  ValueBuilder b;
  BuildTokenChunk(b, chunk, tokens, count);
  return std::move(b).Finish(key);
}

FramedValue EncodeKvPage(absl::string_view key, const KvPageRecord& page) {
  ValueBuilder b;
  BuildKvPage(b, page);
  return std::move(b).Finish(key);
}

absl::StatusOr<SessionMeta> DecodeMeta(absl::string_view payload) {
  Reader r(payload);
  SessionMeta m;
  m.session_id = r.String();
  m.model_fingerprint = r.String();
  m.tenant = r.String();
  m.num_tokens = r.I64();
  m.history_tokens = r.I64();
  m.window_from = r.I64();
  m.created = absl::FromUnixNanos(r.I64());
  m.last_used = absl::FromUnixNanos(r.I64());
  m.snapshot_seq = r.U64();
  m.page_size = static_cast<int32_t>(r.U32());
  m.first_kv_page = r.I64();
  const uint32_t chunk = r.U32();
  if (r.ok() && chunk != kTokensPerChunk) {
    r.Fail(absl::StrCat("token chunks of ", chunk, " tokens"));
  }
  const uint32_t layers = r.U32();
  if (layers > kMaxLayers) r.Fail(absl::StrCat(layers, " layers"));
  for (uint32_t l = 0; r.ok() && l < layers; ++l) {
    LayerLayout layout;
    layout.recurrent_floats = r.I64();
    layout.kv_floats_per_token = r.I64();
    m.layers.push_back(layout);
  }
  if (absl::Status s = r.Finish("session metadata"); !s.ok()) return s;
  if (std::string why = CheckMeta(m); !why.empty()) {
    return absl::DataLossError(absl::StrCat("session metadata: ", why));
  }
  return m;
}

absl::Status DecodeRecurrent(absl::string_view payload, uint32_t* layer,
                             std::vector<float>* state) {
  Reader r(payload);
  *layer = r.U32();
  const uint64_t n = r.U64();
  r.Array(n, state);
  return r.Finish("recurrent state record");
}

absl::Status DecodeTokenChunk(absl::string_view payload, uint64_t* chunk,
                              std::vector<int32_t>* tokens) {
  Reader r(payload);
  *chunk = r.U64();
  const uint32_t n = r.U32();
  r.Array(n, tokens);
  return r.Finish("token chunk record");
}

absl::StatusOr<KvPageRecord> DecodeKvPage(absl::string_view payload) {
  Reader r(payload);
  KvPageRecord page;
  page.page_index = r.I64();
  const uint32_t layers = r.U32();
  if (layers > kMaxLayers) r.Fail(absl::StrCat(layers, " layers"));
  std::vector<std::pair<uint64_t, uint64_t>> counts;
  for (uint32_t l = 0; r.ok() && l < layers; ++l) {
    const uint64_t k = r.U64();
    const uint64_t v = r.U64();
    counts.emplace_back(k, v);
  }
  page.keys.resize(counts.size());
  page.values.resize(counts.size());
  for (size_t l = 0; r.ok() && l < counts.size(); ++l) {
    r.Array(counts[l].first, &page.keys[l]);
    r.Array(counts[l].second, &page.values[l]);
  }
  if (absl::Status s = r.Finish("KV page record"); !s.ok()) return s;
  return page;
}

// ---- Consistency ----

std::string CheckMeta(const SessionMeta& m) {
  if (absl::Status s = ValidateSessionId(m.session_id); !s.ok()) {
    return std::string(s.message());
  }
  if (m.model_fingerprint.size() > kMaxStringBytes ||
      m.tenant.size() > kMaxStringBytes) {
    return absl::StrCat("model fingerprint or tenant longer than ",
                        kMaxStringBytes, " bytes");
  }
  if (m.num_tokens < 0 || m.num_tokens > kMaxTokens) {
    return absl::StrCat("num_tokens ", m.num_tokens, " out of range");
  }
  if (m.history_tokens < m.num_tokens || m.history_tokens > kMaxTokens) {
    return absl::StrCat("token history of ", m.history_tokens,
                        " tokens is shorter than num_tokens ", m.num_tokens);
  }
  if (m.window_from < 0 || m.window_from > m.num_tokens) {
    return absl::StrCat("window_from ", m.window_from, " outside [0, ",
                        m.num_tokens, "]");
  }
  if (m.page_size < 0 || m.page_size > kMaxPageSize) {
    return absl::StrCat("page_size ", m.page_size, " out of range");
  }
  if (m.layers.size() > kMaxLayers) {
    return absl::StrCat(m.layers.size(), " layers");
  }
  bool any_kv = false;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const LayerLayout& layout = m.layers[l];
    if (layout.recurrent_floats < 0 ||
        layout.recurrent_floats > kMaxRecurrentFloats ||
        layout.kv_floats_per_token < 0 ||
        layout.kv_floats_per_token > kMaxKvFloatsPerToken) {
      return absl::StrCat("layer ", l, " has an out-of-range layout");
    }
    any_kv = any_kv || layout.kv_floats_per_token > 0;
  }
  if (any_kv && m.page_size == 0) {
    return "layers keep KV but page_size is 0";
  }
  if (m.first_kv_page < 0 || m.first_kv_page > m.num_kv_pages()) {
    return absl::StrCat("first_kv_page ", m.first_kv_page, " outside [0, ",
                        m.num_kv_pages(), "]");
  }
  return "";
}

int64_t PagePositions(const SessionMeta& meta, int64_t page) {
  if (meta.page_size <= 0) return 0;
  return std::clamp<int64_t>(meta.num_tokens - page * meta.page_size, 0,
                             meta.page_size);
}

std::string CheckPage(const SessionMeta& meta, const KvPageRecord& page) {
  if (page.page_index < meta.first_kv_page ||
      page.page_index >= meta.num_kv_pages()) {
    return absl::StrCat("KV page ", page.page_index, " outside [",
                        meta.first_kv_page, ", ", meta.num_kv_pages(), ")");
  }
  if (page.keys.size() != meta.layers.size() ||
      page.values.size() != meta.layers.size()) {
    return absl::StrCat("KV page ", page.page_index, " has ", page.keys.size(),
                        "/", page.values.size(),
                        " key/value layers; the model has ",
                        meta.layers.size());
  }
  const int64_t positions = PagePositions(meta, page.page_index);
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    const int64_t k = static_cast<int64_t>(page.keys[l].size());
    const int64_t v = static_cast<int64_t>(page.values[l].size());
    const int64_t want = positions * meta.layers[l].kv_floats_per_token;
    if (k != v || (k != 0 && k != want)) {
      return absl::StrCat("KV page ", page.page_index, " layer ", l, " has ", k,
                          " key and ", v, " value floats; want ", want,
                          " (or none)");
    }
  }
  return "";
}

std::string CheckCompleteSnapshot(const SessionSnapshot& s) {
  const SessionMeta& m = s.meta;
  if (std::string why = CheckMeta(m); !why.empty()) return why;
  if (static_cast<int64_t>(s.tokens.size()) != m.history_tokens) {
    return absl::StrCat("token history has ", s.tokens.size(),
                        " tokens; the metadata says ", m.history_tokens);
  }
  if (s.recurrent.size() != m.layers.size()) {
    return absl::StrCat("recurrent state for ", s.recurrent.size(),
                        " layers; the model has ", m.layers.size());
  }
  for (size_t l = 0; l < m.layers.size(); ++l) {
    if (static_cast<int64_t>(s.recurrent[l].size()) !=
        m.layers[l].recurrent_floats) {
      return absl::StrCat("recurrent state of layer ", l, " has ",
                          s.recurrent[l].size(), " floats; want ",
                          m.layers[l].recurrent_floats);
    }
  }
  const int64_t pages = m.num_kv_pages() - m.first_kv_page;
  if (static_cast<int64_t>(s.kv_pages.size()) != pages) {
    return absl::StrCat(s.kv_pages.size(), " KV pages; want ", pages);
  }
  for (int64_t i = 0; i < pages; ++i) {
    const KvPageRecord& page = s.kv_pages[i];
    if (page.page_index != m.first_kv_page + i) {
      return absl::StrCat("KV page ", m.first_kv_page + i, " is missing");
    }
    if (std::string why = CheckPage(m, page); !why.empty()) return why;
  }
  return "";
}

// ---- Export stream ----

namespace {

// A section: [u32 kind][u64 length][payload][u32 crc32c(kind ‖ length ‖
// payload)].
void AppendSection(std::string* out, uint32_t kind, const FramedValue& body) {
  const size_t start = out->size();
  AppendU32(out, kind);
  AppendU64(out, body.size());
  for (absl::string_view p : body.parts()) out->append(p.data(), p.size());
  const uint32_t crc =
      Crc32c(absl::string_view(out->data() + start, out->size() - start));
  AppendU32(out, crc);
}

size_t SectionSize(const FramedValue& body) {
  return kSectionHeaderBytes + body.size() + 4;
}

}  // namespace

std::string EncodeExport(const SessionSnapshot& s) {
  std::vector<std::pair<uint32_t, FramedValue>> sections;
  {
    ValueBuilder b = ValueBuilder::ForSection();
    BuildMeta(b, s.meta);
    sections.emplace_back(kSectionMeta, std::move(b).FinishPayload());
  }
  for (size_t start = 0, chunk = 0; start < s.tokens.size();
       start += kTokensPerChunk, ++chunk) {
    ValueBuilder b = ValueBuilder::ForSection();
    BuildTokenChunk(b, chunk, s.tokens.data() + start,
                    std::min<size_t>(kTokensPerChunk, s.tokens.size() - start));
    sections.emplace_back(kSectionTokenChunk, std::move(b).FinishPayload());
  }
  for (size_t l = 0; l < s.recurrent.size(); ++l) {
    if (s.recurrent[l].empty()) continue;
    ValueBuilder b = ValueBuilder::ForSection();
    BuildRecurrent(b, static_cast<uint32_t>(l), s.recurrent[l]);
    sections.emplace_back(kSectionRecurrent, std::move(b).FinishPayload());
  }
  for (const KvPageRecord& page : s.kv_pages) {
    ValueBuilder b = ValueBuilder::ForSection();
    BuildKvPage(b, page);
    sections.emplace_back(kSectionKvPage, std::move(b).FinishPayload());
  }
  size_t total = 8 + kSectionHeaderBytes + 12 + 4;
  for (const auto& [kind, body] : sections) total += SectionSize(body);
  std::string out;
  out.reserve(total);
  out.append(kMagic, 4);
  AppendU32(&out, kFormatVersion);
  for (const auto& [kind, body] : sections) AppendSection(&out, kind, body);
  // End: the stream's length so far and its checksum.
  std::string end;
  AppendU64(&end, out.size());
  AppendU32(&end, Crc32c(out));
  const size_t start = out.size();
  AppendU32(&out, kSectionEnd);
  AppendU64(&out, end.size());
  out += end;
  AppendU32(&out, Crc32c(absl::string_view(out).substr(start)));
  return out;
}

absl::StatusOr<SessionSnapshot> DecodeExport(absl::string_view bytes) {
  const absl::string_view magic(kMagic, 4);
  if (bytes.size() < 8) {
    if (magic.substr(0, bytes.size()) == bytes) {
      return absl::DataLossError("session export stream is truncated");
    }
    return absl::InvalidArgumentError("not a session export stream");
  }
  if (bytes.substr(0, 4) != magic) {
    return absl::InvalidArgumentError(
        "not a session export stream (bad magic)");
  }
  const uint32_t version = LoadU32(bytes.data() + 4);
  if (version != kFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session export stream version ", version,
        " is not supported (this build reads ", kFormatVersion, ")"));
  }
  SessionSnapshot s;
  bool have_meta = false;
  bool ended = false;
  uint64_t next_chunk = 0;
  size_t pos = 8;
  int last_kind = 0;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < kSectionHeaderBytes + 4) {
      return absl::DataLossError("session export stream is truncated");
    }
    const uint32_t kind = LoadU32(bytes.data() + pos);
    const uint64_t length = LoadU64(bytes.data() + pos + 4);
    if (length > bytes.size() - pos - kSectionHeaderBytes - 4) {
      return absl::DataLossError(
          "session export stream is truncated (or a section length is "
          "damaged)");
    }
    const absl::string_view section =
        bytes.substr(pos, kSectionHeaderBytes + length);
    const uint32_t stored = LoadU32(section.data() + section.size());
    if (Crc32c(section) != stored) {
      return absl::DataLossError(absl::StrCat("session export section at byte ",
                                              pos, " fails its checksum"));
    }
    const absl::string_view payload = section.substr(kSectionHeaderBytes);
    if (kind == kSectionEnd) {
      Reader r(payload);
      const uint64_t before = r.U64();
      const uint32_t crc = r.U32();
      if (absl::Status st = r.Finish("export end section"); !st.ok()) {
        return st;
      }
      if (before != pos || crc != Crc32c(bytes.substr(0, pos))) {
        return absl::DataLossError(
            "session export stream fails its whole-stream checksum");
      }
      pos += section.size() + 4;
      ended = true;
      break;
    }
    if (!have_meta && kind != kSectionMeta) {
      return absl::InvalidArgumentError(
          "session export stream does not start with its metadata");
    }
    if (kind < static_cast<uint32_t>(last_kind) ||
        (kind == kSectionMeta && have_meta)) {
      return absl::InvalidArgumentError(
          "session export sections are out of order");
    }
    last_kind = static_cast<int>(kind);
    switch (kind) {
      case kSectionMeta: {
        auto meta = DecodeMeta(payload);
        if (!meta.ok()) return meta.status();
        s.meta = *std::move(meta);
        s.recurrent.resize(s.meta.layers.size());
        // Bounded by the input, whatever the metadata claims.
        s.tokens.reserve(std::min<int64_t>(
            s.meta.history_tokens, static_cast<int64_t>(bytes.size() / 4)));
        have_meta = true;
        break;
      }
      case kSectionTokenChunk: {
        uint64_t chunk = 0;
        std::vector<int32_t> tokens;
        if (absl::Status st = DecodeTokenChunk(payload, &chunk, &tokens);
            !st.ok()) {
          return st;
        }
        const int64_t start = static_cast<int64_t>(chunk) * kTokensPerChunk;
        const int64_t want =
            std::min<int64_t>(kTokensPerChunk, s.meta.history_tokens - start);
        if (chunk != next_chunk || want <= 0 ||
            static_cast<int64_t>(tokens.size()) != want) {
          return absl::InvalidArgumentError(absl::StrCat(
              "session export token chunk ", chunk, " is out of place"));
        }
        s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
        ++next_chunk;
        break;
      }
      case kSectionRecurrent: {
        uint32_t layer = 0;
        std::vector<float> state;
        if (absl::Status st = DecodeRecurrent(payload, &layer, &state);
            !st.ok()) {
          return st;
        }
        if (layer >= s.recurrent.size() || !s.recurrent[layer].empty()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "session export recurrent layer ", layer, " is out of place"));
        }
        s.recurrent[layer] = std::move(state);
        break;
      }
      case kSectionKvPage: {
        auto page = DecodeKvPage(payload);
        if (!page.ok()) return page.status();
        s.kv_pages.push_back(*std::move(page));
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("unknown session export section kind ", kind));
    }
    pos += section.size() + 4;
  }
  if (!ended) {
    return absl::DataLossError(
        "session export stream is truncated (no end section)");
  }
  if (pos != bytes.size()) {
    return absl::InvalidArgumentError(
        "session export stream has bytes after its end");
  }
  if (std::string why = CheckCompleteSnapshot(s); !why.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("inconsistent session export: ", why));
  }
  return s;
}

}  // namespace state_store_internal
}  // namespace deltaserve
