// KeyValueStateStore: the StateStore logic (commit planning, loading and
// checking, listing, export/import) over an ordered key-value space with
// four key families and atomic write batches. RocksDbStateStore and
// InMemoryStateStore supply only that space, so both stores share one
// implementation of the record format and its rules.
#ifndef DELTASERVE_ENGINE_STATE_STORE_KEY_VALUE_STATE_STORE_H_
#define DELTASERVE_ENGINE_STATE_STORE_KEY_VALUE_STATE_STORE_H_

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/state_store/record_format.h"
#include "engine/state_store/state_store.h"

namespace deltaserve {
namespace state_store_internal {

// One operation of an atomic write batch.
struct WriteOp {
  enum class Kind { kPut, kDelete, kDeleteRange };
  Kind kind = Kind::kPut;
  Family family = Family::kMeta;
  std::string key;      // kDeleteRange: first key removed
  std::string end_key;  // kDeleteRange: first key kept (exclusive bound)
  FramedValue value;    // kPut
};

// Reads of one consistent view of the key space (writes made after the view
// was taken are not seen). Used by one thread at a time.
class ReadView {
 public:
  virtual ~ReadView() = default;
  // Calls `fn` with the value of `key` and returns its status; NOT_FOUND
  // when there is no such key.
  virtual absl::Status Get(
      Family family, absl::string_view key,
      absl::FunctionRef<absl::Status(absl::string_view value)> fn) = 0;
  // Calls `fn` for each key in [begin, end) in key order (end empty: no
  // bound) until it returns false or an error (which Scan returns).
  virtual absl::Status Scan(Family family, absl::string_view begin,
                            absl::string_view end,
                            absl::FunctionRef<absl::StatusOr<bool>(
                                absl::string_view key, absl::string_view value)>
                                fn) = 0;
};

}  // namespace state_store_internal

// Implements StateStore over NewReadView() and Write(). Thread-safe, given
// thread-safe implementations of those two; per-session operations that
// read then write (Commit, Delete, Import) are serialised per session.
class KeyValueStateStore : public StateStore {
 public:
  absl::StatusOr<CommitStats> Commit(const SessionSnapshot& snapshot,
                                     int64_t unchanged_tokens) override;
  absl::StatusOr<SessionSnapshot> Load(absl::string_view session_id) override;
  absl::StatusOr<SessionMeta> GetMeta(absl::string_view session_id) override;
  absl::StatusOr<ListResult> List(const ListOptions& options) override;
  absl::Status Delete(absl::string_view session_id) override;
  absl::StatusOr<std::string> Export(absl::string_view session_id) override;
  absl::StatusOr<SessionMeta> Import(
      absl::string_view bytes, absl::string_view new_session_id,
      absl::string_view expected_model_fingerprint) override;
  absl::Status CorruptForTesting(absl::string_view session_id,
                                 StoredRecord record, Damage damage) override;

  // Reports every write (its bytes and time) and the bytes every read view
  // read to `observer` (not owned; it must outlive its use); nullptr stops
  // reporting. May be called at any time. CorruptForTesting is not reported.
  void SetObserver(StateStoreObserver* observer) { observer_ = observer; }

 protected:
  KeyValueStateStore() = default;

  // A consistent view for reads. The store never calls Write while it holds
  // a view.
  virtual std::unique_ptr<state_store_internal::ReadView> NewReadView() = 0;
  // Applies `ops` in order, atomically: all or none, also across a crash.
  virtual absl::Status Write(
      const std::vector<state_store_internal::WriteOp>& ops) = 0;

 private:
  // What a session's metadata key holds.
  struct StoredMeta {
    bool exists = false;
    absl::Status status;              // OK, or why `meta` is unreadable
    std::optional<SessionMeta> meta;  // when status is OK
  };

  class CountingView;

  absl::Mutex& SessionMutex(absl::string_view session_id);
  // NewReadView(), counting what it reads for the observer (if any).
  std::unique_ptr<state_store_internal::ReadView> OpenView();
  // Write(ops), timed and counted for the observer (if any).
  absl::Status Apply(const std::vector<state_store_internal::WriteOp>& ops);
  // Reads and checks the metadata record of `session_id`. Errors: storage
  // errors only (a damaged record is reported in StoredMeta::status).
  absl::StatusOr<StoredMeta> ReadMeta(state_store_internal::ReadView& view,
                                      absl::string_view session_id);
  // Commit with the session's mutex held.
  absl::StatusOr<CommitStats> CommitLocked(const SessionSnapshot& snapshot,
                                           int64_t unchanged_tokens,
                                           bool must_be_new);

  std::array<absl::Mutex, 64> session_mutexes_;
  std::atomic<StateStoreObserver*> observer_{nullptr};
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_KEY_VALUE_STATE_STORE_H_
