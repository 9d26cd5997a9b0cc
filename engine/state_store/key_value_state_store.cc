#include "engine/state_store/key_value_state_store.h"

#include <algorithm>
#include <functional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/status.h"

namespace deltaserve {

using state_store_internal::DecodeIndexedKey;
using state_store_internal::Family;
using state_store_internal::FramedValue;
using state_store_internal::IndexedKey;
using state_store_internal::kIdBytes;
using state_store_internal::kNumFamilies;
using state_store_internal::kTokensPerChunk;
using state_store_internal::MetaKey;
using state_store_internal::PrefixSuccessor;
using state_store_internal::ReadView;
using state_store_internal::SessionKeyPrefix;
using state_store_internal::UnframeValue;
using state_store_internal::WriteOp;

namespace {

constexpr int kDefaultListLimit = 100;
constexpr int kMaxListLimit = 10000;

int64_t NumChunks(int64_t tokens) {
  return (tokens + kTokensPerChunk - 1) / kTokensPerChunk;
}

// A damaged record (checksum, structure, unknown version) as opposed to a
// storage failure.
bool IsDamage(const absl::Status& s) {
  return absl::IsDataLoss(s) || absl::IsFailedPrecondition(s);
}

absl::Status WithSession(absl::string_view id, const absl::Status& s) {
  return absl::Status(s.code(),
                      absl::StrCat("session ", id, ": ", s.message()));
}

absl::Status NotFound(absl::string_view id) {
  return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
}

WriteOp Put(Family family, std::string key, FramedValue value) {
  WriteOp op;
  op.kind = WriteOp::Kind::kPut;
  op.family = family;
  op.key = std::move(key);
  op.value = std::move(value);
  return op;
}

WriteOp Del(Family family, std::string key) {
  WriteOp op;
  op.kind = WriteOp::Kind::kDelete;
  op.family = family;
  op.key = std::move(key);
  return op;
}

// Removes every record of the session in every family.
void DeleteSessionRecords(absl::string_view session_id,
                          std::vector<WriteOp>* ops) {
  const std::string prefix = SessionKeyPrefix(session_id);
  for (int f = 0; f < kNumFamilies; ++f) {
    WriteOp op;
    op.kind = WriteOp::Kind::kDeleteRange;
    op.family = static_cast<Family>(f);
    op.key = prefix;
    // Only the all-0xff id has no successor; its keys all start with 16
    // 0xff bytes and are at most 24 bytes long.
    op.end_key = PrefixSuccessor(prefix);
    if (op.end_key.empty()) op.end_key = std::string(kIdBytes + 9, '\xff');
    ops->push_back(std::move(op));
  }
}

// Checks `snapshot` as a commit input (its meta already completed by the
// store) and returns the pages to write: those at or after `first_write`.
absl::StatusOr<std::vector<const KvPageRecord*>> PagesToWrite(
    const SessionSnapshot& snapshot, const SessionMeta& meta,
    int64_t first_write) {
  std::vector<const KvPageRecord*> out;
  int64_t previous = -1;
  for (const KvPageRecord& page : snapshot.kv_pages) {
    if (page.page_index <= previous) {
      return absl::InvalidArgumentError(
          "KV pages must be in strictly increasing page_index order");
    }
    previous = page.page_index;
    if (std::string why = state_store_internal::CheckPage(meta, page);
        !why.empty()) {
      return absl::InvalidArgumentError(why);
    }
    if (page.page_index < first_write) continue;
    const int64_t want = first_write + static_cast<int64_t>(out.size());
    if (page.page_index != want) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV page ", want, " is missing from the snapshot"));
    }
    out.push_back(&page);
  }
  const int64_t want = meta.num_kv_pages() - first_write;
  if (want > 0 && static_cast<int64_t>(out.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV page ", first_write + out.size(), " is missing from the snapshot"));
  }
  return out;
}

}  // namespace

// A read view that adds up the keys and values it hands out and reports
// them to the observer when it closes.
class KeyValueStateStore::CountingView final : public ReadView {
 public:
  CountingView(std::unique_ptr<ReadView> view, StateStoreObserver* observer)
      : view_(std::move(view)), observer_(observer) {}
  ~CountingView() override {
    if (bytes_ > 0) observer_->OnRead(bytes_);
  }

  absl::Status Get(
      Family family, absl::string_view key,
      absl::FunctionRef<absl::Status(absl::string_view value)> fn) override {
    return view_->Get(family, key, [&](absl::string_view value) {
      bytes_ += static_cast<int64_t>(key.size() + value.size());
      return fn(value);
    });
  }

  absl::Status Scan(Family family, absl::string_view begin,
                    absl::string_view end,
                    absl::FunctionRef<absl::StatusOr<bool>(
                        absl::string_view key, absl::string_view value)>
                        fn) override {
    return view_->Scan(family, begin, end,
                       [&](absl::string_view key,
                           absl::string_view value) -> absl::StatusOr<bool> {
                         bytes_ +=
                             static_cast<int64_t>(key.size() + value.size());
                         return fn(key, value);
                       });
  }

 private:
  std::unique_ptr<ReadView> view_;
  StateStoreObserver* observer_;
  int64_t bytes_ = 0;
};

std::unique_ptr<ReadView> KeyValueStateStore::OpenView() {
  std::unique_ptr<ReadView> view = NewReadView();
  StateStoreObserver* observer = observer_.load(std::memory_order_acquire);
  if (observer == nullptr) return view;
  return std::make_unique<CountingView>(std::move(view), observer);
}

absl::Status KeyValueStateStore::Apply(const std::vector<WriteOp>& ops) {
  StateStoreObserver* observer = observer_.load(std::memory_order_acquire);
  if (observer == nullptr) return Write(ops);
  int64_t bytes = 0;
  for (const WriteOp& op : ops) {
    bytes += static_cast<int64_t>(op.key.size() + op.end_key.size() +
                                  op.value.size());
  }
  const absl::Time start = absl::Now();
  DS_RETURN_IF_ERROR(Write(ops));
  observer->OnWrite(bytes, absl::Now() - start);
  return absl::OkStatus();
}

absl::Mutex& KeyValueStateStore::SessionMutex(absl::string_view session_id) {
  const std::string_view id(session_id.data(), session_id.size());
  return session_mutexes_[std::hash<std::string_view>()(id) %
                          session_mutexes_.size()];
}

absl::StatusOr<KeyValueStateStore::StoredMeta> KeyValueStateStore::ReadMeta(
    ReadView& view, absl::string_view session_id) {
  StoredMeta out;
  const std::string key = MetaKey(session_id);
  absl::Status s = view.Get(Family::kMeta, key, [&](absl::string_view value) {
    out.exists = true;
    auto payload = UnframeValue(key, value);
    if (!payload.ok()) return payload.status();
    auto meta = state_store_internal::DecodeMeta(*payload);
    if (!meta.ok()) return meta.status();
    if (meta->session_id != session_id) {
      return absl::DataLossError("metadata names another session");
    }
    out.meta = *std::move(meta);
    return absl::OkStatus();
  });
  if (absl::IsNotFound(s) && !out.exists) return out;
  if (!s.ok() && !(out.exists && IsDamage(s))) return s;
  out.status = s.ok() ? s : WithSession(session_id, s);
  return out;
}

absl::StatusOr<CommitStats> KeyValueStateStore::Commit(
    const SessionSnapshot& snapshot, int64_t unchanged_tokens) {
  DS_RETURN_IF_ERROR(ValidateSessionId(snapshot.meta.session_id));
  absl::MutexLock lock(&SessionMutex(snapshot.meta.session_id));
  return CommitLocked(snapshot, unchanged_tokens, /*must_be_new=*/false);
}

absl::StatusOr<CommitStats> KeyValueStateStore::CommitLocked(
    const SessionSnapshot& snapshot, int64_t unchanged_tokens,
    bool must_be_new) {
  SessionMeta meta = snapshot.meta;
  meta.history_tokens = static_cast<int64_t>(snapshot.tokens.size());
  const std::string& id = meta.session_id;
  if (std::string why = state_store_internal::CheckMeta(meta); !why.empty()) {
    return absl::InvalidArgumentError(why);
  }
  if (snapshot.recurrent.size() != meta.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("recurrent state for ", snapshot.recurrent.size(),
                     " layers; the layout has ", meta.layers.size()));
  }
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    if (static_cast<int64_t>(snapshot.recurrent[l].size()) !=
        meta.layers[l].recurrent_floats) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recurrent state of layer ", l, " has ", snapshot.recurrent[l].size(),
          " floats; the layout says ", meta.layers[l].recurrent_floats));
    }
  }
  const int64_t u = unchanged_tokens;
  if (u < 0 || u > meta.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("unchanged_tokens ", u,
                                                   " outside [0, num_tokens ",
                                                   meta.num_tokens, "]"));
  }
  const int64_t first_dirty_page = meta.page_size > 0 ? u / meta.page_size : 0;
  const int64_t first_write_page =
      std::max(first_dirty_page, meta.first_kv_page);
  DS_ASSIGN_OR_RETURN(std::vector<const KvPageRecord*> pages,
                      PagesToWrite(snapshot, meta, first_write_page));

  StoredMeta old;
  {
    std::unique_ptr<ReadView> view = OpenView();
    DS_ASSIGN_OR_RETURN(old, ReadMeta(*view, id));
  }  // the view is gone before Write
  if (must_be_new && old.exists) {
    return absl::AlreadyExistsError(
        absl::StrCat("session ", id, " already exists"));
  }
  if (u > 0) {
    if (!old.exists) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", id,
          " has no committed snapshot to extend (unchanged_tokens > 0)"));
    }
    if (!old.status.ok()) {
      return absl::Status(
          old.status.code(),
          absl::StrCat(old.status.message(),
                       "; commit with unchanged_tokens = 0 to overwrite"));
    }
    const SessionMeta& o = *old.meta;
    if (o.layers != meta.layers || o.page_size != meta.page_size ||
        o.model_fingerprint != meta.model_fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", id,
          ": the snapshot's model, layout or page size differs from the "
          "stored one; commit with unchanged_tokens = 0"));
    }
    if (u > o.num_tokens) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", id, ": unchanged_tokens ", u,
                       " exceeds the stored snapshot's ", o.num_tokens));
    }
    if (meta.first_kv_page < o.first_kv_page &&
        meta.first_kv_page < first_dirty_page) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", id, ": KV pages from ", meta.first_kv_page,
          " are not stored; commit them (lower unchanged_tokens)"));
    }
  }
  meta.snapshot_seq = (old.meta.has_value() ? old.meta->snapshot_seq : 0) + 1;

  std::vector<WriteOp> ops;
  CommitStats stats;
  if (u == 0) {
    if (old.exists) DeleteSessionRecords(id, &ops);
  } else {
    const SessionMeta& o = *old.meta;
    for (int64_t c = NumChunks(meta.history_tokens);
         c < NumChunks(o.history_tokens); ++c) {
      ops.push_back(Del(Family::kTokens, IndexedKey(id, Family::kTokens, c)));
    }
    const int64_t old_end = o.num_kv_pages();
    const int64_t new_end = meta.num_kv_pages();
    for (int64_t p = o.first_kv_page; p < old_end; ++p) {
      if (p >= meta.first_kv_page && p < new_end) continue;
      ops.push_back(Del(Family::kKvPages, IndexedKey(id, Family::kKvPages, p)));
    }
    stats.records_deleted = static_cast<int64_t>(ops.size());
  }
  for (size_t l = 0; l < meta.layers.size(); ++l) {
    if (meta.layers[l].recurrent_floats == 0) continue;
    std::string key = IndexedKey(id, Family::kRecurrent, l);
    FramedValue value = state_store_internal::EncodeRecurrent(
        key, static_cast<uint32_t>(l), snapshot.recurrent[l]);
    ops.push_back(Put(Family::kRecurrent, std::move(key), std::move(value)));
  }
  for (int64_t c = u / kTokensPerChunk; c < NumChunks(meta.history_tokens);
       ++c) {
    const int64_t start = c * kTokensPerChunk;
    std::string key = IndexedKey(id, Family::kTokens, c);
    FramedValue value = state_store_internal::EncodeTokenChunk(
        key, c, snapshot.tokens.data() + start,
        std::min(kTokensPerChunk, meta.history_tokens - start));
    ops.push_back(Put(Family::kTokens, std::move(key), std::move(value)));
    ++stats.token_chunks_written;
  }
  for (const KvPageRecord* page : pages) {
    std::string key = IndexedKey(id, Family::kKvPages, page->page_index);
    FramedValue value = state_store_internal::EncodeKvPage(key, *page);
    ops.push_back(Put(Family::kKvPages, std::move(key), std::move(value)));
    ++stats.pages_written;
  }
  {
    std::string key = MetaKey(id);
    FramedValue value = state_store_internal::EncodeMeta(key, meta);
    ops.push_back(Put(Family::kMeta, std::move(key), std::move(value)));
  }
  for (const WriteOp& op : ops) {
    if (op.kind != WriteOp::Kind::kPut) continue;
    ++stats.records_written;
    stats.bytes_written +=
        static_cast<int64_t>(op.key.size() + op.value.size());
  }
  DS_RETURN_IF_ERROR(Apply(ops));
  stats.snapshot_seq = meta.snapshot_seq;
  return stats;
}

absl::StatusOr<SessionSnapshot> KeyValueStateStore::Load(
    absl::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateSessionId(session_id));
  std::unique_ptr<ReadView> view = OpenView();
  DS_ASSIGN_OR_RETURN(StoredMeta stored, ReadMeta(*view, session_id));
  if (!stored.exists) return NotFound(session_id);
  DS_RETURN_IF_ERROR(stored.status);
  SessionSnapshot s;
  s.meta = *std::move(stored.meta);
  const SessionMeta& m = s.meta;
  const std::string prefix = SessionKeyPrefix(session_id);
  const std::string end = PrefixSuccessor(prefix);

  // A record's key and value: checksum, then the payload's own checks.
  auto unframe = [](absl::string_view key, absl::string_view value,
                    Family family,
                    uint64_t* index) -> absl::StatusOr<absl::string_view> {
    if (!DecodeIndexedKey(family, key, index)) {
      return absl::DataLossError(
          absl::StrCat("malformed key in ", FamilyName(family)));
    }
    return UnframeValue(key, value);
  };

  s.recurrent.resize(m.layers.size());
  absl::Status st = view->Scan(
      Family::kRecurrent, prefix, end,
      [&](absl::string_view key,
          absl::string_view value) -> absl::StatusOr<bool> {
        uint64_t index = 0;
        DS_ASSIGN_OR_RETURN(absl::string_view payload,
                            unframe(key, value, Family::kRecurrent, &index));
        uint32_t layer = 0;
        std::vector<float> state;
        DS_RETURN_IF_ERROR(
            state_store_internal::DecodeRecurrent(payload, &layer, &state));
        if (layer != index || layer >= m.layers.size() ||
            m.layers[layer].recurrent_floats == 0) {
          return absl::DataLossError(
              absl::StrCat("unexpected recurrent state record ", index));
        }
        s.recurrent[layer] = std::move(state);
        return true;
      });
  if (!st.ok()) return WithSession(session_id, st);

  s.tokens.reserve(m.history_tokens);
  uint64_t next_chunk = 0;
  st = view->Scan(
      Family::kTokens, prefix, end,
      [&](absl::string_view key,
          absl::string_view value) -> absl::StatusOr<bool> {
        uint64_t index = 0;
        DS_ASSIGN_OR_RETURN(absl::string_view payload,
                            unframe(key, value, Family::kTokens, &index));
        uint64_t chunk = 0;
        std::vector<int32_t> tokens;
        DS_RETURN_IF_ERROR(
            state_store_internal::DecodeTokenChunk(payload, &chunk, &tokens));
        const int64_t start = static_cast<int64_t>(index) * kTokensPerChunk;
        const int64_t want =
            std::min<int64_t>(kTokensPerChunk, m.history_tokens - start);
        if (chunk != index || index != next_chunk || want <= 0 ||
            static_cast<int64_t>(tokens.size()) != want) {
          return absl::DataLossError(absl::StrCat(
              "token chunk ", index, " is missing, extra or of wrong size"));
        }
        s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
        ++next_chunk;
        return true;
      });
  if (!st.ok()) return WithSession(session_id, st);

  st = view->Scan(
      Family::kKvPages, prefix, end,
      [&](absl::string_view key,
          absl::string_view value) -> absl::StatusOr<bool> {
        uint64_t index = 0;
        DS_ASSIGN_OR_RETURN(absl::string_view payload,
                            unframe(key, value, Family::kKvPages, &index));
        DS_ASSIGN_OR_RETURN(KvPageRecord page,
                            state_store_internal::DecodeKvPage(payload));
        if (page.page_index != static_cast<int64_t>(index)) {
          return absl::DataLossError(absl::StrCat(
              "KV page record ", index, " names page ", page.page_index));
        }
        s.kv_pages.push_back(std::move(page));
        return true;
      });
  if (!st.ok()) return WithSession(session_id, st);

  if (std::string why = state_store_internal::CheckCompleteSnapshot(s);
      !why.empty()) {
    return absl::DataLossError(
        absl::StrCat("session ", session_id, " is inconsistent: ", why));
  }
  return s;
}

absl::StatusOr<SessionMeta> KeyValueStateStore::GetMeta(
    absl::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateSessionId(session_id));
  std::unique_ptr<ReadView> view = OpenView();
  DS_ASSIGN_OR_RETURN(StoredMeta stored, ReadMeta(*view, session_id));
  if (!stored.exists) return NotFound(session_id);
  DS_RETURN_IF_ERROR(stored.status);
  return *std::move(stored.meta);
}

absl::StatusOr<ListResult> KeyValueStateStore::List(
    const ListOptions& options) {
  std::string begin;
  if (!options.page_token.empty()) {
    if (!ValidateSessionId(options.page_token).ok()) {
      return absl::InvalidArgumentError("malformed list page token");
    }
    begin = PrefixSuccessor(SessionKeyPrefix(options.page_token));
    if (begin.empty()) return ListResult();  // the largest possible id
  }
  const int limit = options.limit <= 0 ? kDefaultListLimit
                                       : std::min(options.limit, kMaxListLimit);
  ListResult result;
  int count = 0;
  std::string last;
  bool more = false;
  std::unique_ptr<ReadView> view = OpenView();
  DS_RETURN_IF_ERROR(view->Scan(
      Family::kMeta, begin, "",
      [&](absl::string_view key,
          absl::string_view value) -> absl::StatusOr<bool> {
        const std::string id = state_store_internal::SessionIdOfKey(key);
        std::optional<SessionMeta> meta;
        if (key.size() == kIdBytes) {
          auto payload = UnframeValue(key, value);
          if (payload.ok()) {
            auto decoded = state_store_internal::DecodeMeta(*payload);
            if (decoded.ok() && decoded->session_id == id) {
              meta = *std::move(decoded);
            }
          }
        }
        if (meta.has_value() && !options.tenant.empty() &&
            meta->tenant != options.tenant) {
          return true;
        }
        if (count == limit) {
          more = true;
          return false;
        }
        if (meta.has_value()) {
          result.sessions.push_back(*std::move(meta));
        } else {
          result.damaged_session_ids.push_back(id);
        }
        ++count;
        last = id;
        return true;
      }));
  if (more) result.next_page_token = last;
  return result;
}

absl::Status KeyValueStateStore::Delete(absl::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateSessionId(session_id));
  absl::MutexLock lock(&SessionMutex(session_id));
  {
    std::unique_ptr<ReadView> view = OpenView();
    DS_ASSIGN_OR_RETURN(StoredMeta stored, ReadMeta(*view, session_id));
    if (!stored.exists) return NotFound(session_id);
  }
  std::vector<WriteOp> ops;
  DeleteSessionRecords(session_id, &ops);
  return Apply(ops);
}

absl::StatusOr<std::string> KeyValueStateStore::Export(
    absl::string_view session_id) {
  DS_ASSIGN_OR_RETURN(SessionSnapshot snapshot, Load(session_id));
  return state_store_internal::EncodeExport(snapshot);
}

absl::StatusOr<SessionMeta> KeyValueStateStore::Import(
    absl::string_view bytes, absl::string_view new_session_id,
    absl::string_view expected_model_fingerprint) {
  DS_RETURN_IF_ERROR(ValidateSessionId(new_session_id));
  DS_ASSIGN_OR_RETURN(SessionSnapshot snapshot,
                      state_store_internal::DecodeExport(bytes));
  if (snapshot.meta.model_fingerprint != expected_model_fingerprint) {
    return absl::FailedPreconditionError(
        absl::StrCat("the session was exported from model \"",
                     snapshot.meta.model_fingerprint, "\", not \"",
                     expected_model_fingerprint, "\""));
  }
  snapshot.meta.session_id = std::string(new_session_id);
  absl::MutexLock lock(&SessionMutex(new_session_id));
  DS_ASSIGN_OR_RETURN(CommitStats stats,
                      CommitLocked(snapshot, 0, /*must_be_new=*/true));
  SessionMeta meta = std::move(snapshot.meta);
  meta.snapshot_seq = stats.snapshot_seq;
  meta.history_tokens = static_cast<int64_t>(snapshot.tokens.size());
  return meta;
}

absl::Status KeyValueStateStore::CorruptForTesting(absl::string_view session_id,
                                                   StoredRecord record,
                                                   Damage damage) {
  DS_RETURN_IF_ERROR(ValidateSessionId(session_id));
  absl::MutexLock lock(&SessionMutex(session_id));
  Family family = Family::kMeta;
  switch (record) {
    case StoredRecord::kMeta:
      family = Family::kMeta;
      break;
    case StoredRecord::kRecurrent:
      family = Family::kRecurrent;
      break;
    case StoredRecord::kTokens:
      family = Family::kTokens;
      break;
    case StoredRecord::kKvPage:
      family = Family::kKvPages;
      break;
  }
  const std::string prefix = SessionKeyPrefix(session_id);
  std::string key, value;
  bool found = false;
  {
    std::unique_ptr<ReadView> view = NewReadView();
    DS_RETURN_IF_ERROR(view->Scan(
        family, prefix, PrefixSuccessor(prefix),
        [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
          key = std::string(k);
          value = std::string(v);
          found = true;
          return false;
        }));
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat("session ", session_id, " has no ",
                                            FamilyName(family), " record"));
  }
  std::vector<WriteOp> ops;
  if (damage == Damage::kDelete) {
    ops.push_back(Del(family, key));
  } else {
    value[value.size() / 2] ^= 0x10;
    ops.push_back(Put(family, key, FramedValue::Raw(std::move(value))));
  }
  return Write(ops);
}

}  // namespace deltaserve
