// StateStore: durable session state — a session's metadata, token history,
// recurrent-layer state and attention KV pages, committed as snapshots.
//
// A snapshot is committed atomically: after a crash (kill -9 included) a
// session is exactly at its last committed snapshot or, if it was never
// committed, absent. Every stored record is versioned and checksummed; a
// session with a record that fails its checksum, is missing or does not agree
// with the others reads as DATA_LOSS, and other sessions are unaffected.
// Full KV pages are immutable, so a commit that extends a session writes only
// its new pages (see Commit). The record format is in README.md.
//
// Implementations: RocksDbStateStore (on disk) and InMemoryStateStore (for
// tests); both pass state_store_contract_test.cc.
#ifndef DELTASERVE_ENGINE_STATE_STORE_STATE_STORE_H_
#define DELTASERVE_ENGINE_STATE_STORE_STATE_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace deltaserve {

// The state a layer of the model keeps per session. A recurrent layer has
// `recurrent_floats` > 0 (its state then its conv tail, fp32); an attention
// layer has `kv_floats_per_token` > 0 (Hkv × head_dim keys, and as many
// values, per position); a layer may have neither.
struct LayerLayout {
  int64_t recurrent_floats = 0;
  int64_t kv_floats_per_token = 0;

  bool operator==(const LayerLayout&) const = default;
};

// What the store knows about a session without reading its state.
struct SessionMeta {
  // 32 lowercase hex characters (128 bits).
  std::string session_id;
  // Identifies the model the state belongs to; Import refuses another.
  std::string model_fingerprint;
  std::string tenant;
  // Positions whose state (recurrent state, KV) the snapshot holds.
  int64_t num_tokens = 0;
  // First position kept by sliding-window attention layers (informational).
  int64_t window_from = 0;
  absl::Time created = absl::UnixEpoch();
  absl::Time last_used = absl::UnixEpoch();
  // Tokens per KV page; 0 when no layer has KV.
  int32_t page_size = 0;
  // KV pages below this one are not kept by any layer (a sliding window
  // moved past them); pages [first_kv_page, num_kv_pages()) are stored.
  int64_t first_kv_page = 0;
  // One entry per layer of the model.
  std::vector<LayerLayout> layers;

  // Set by the store (ignored on Commit): the commit counter of the session
  // (1 for its first snapshot) and the length of its token history.
  uint64_t snapshot_seq = 0;
  int64_t history_tokens = 0;

  // Logical KV pages of the session: ceil(num_tokens / page_size), 0 when
  // no layer keeps KV.
  int64_t num_kv_pages() const;
  // Bytes of state the snapshot holds: recurrent state, the KV of the stored
  // pages' positions and the token history.
  int64_t state_bytes() const;

  bool operator==(const SessionMeta&) const = default;
};

// Keys and values of one logical KV page: positions
// [page_index·page_size, min((page_index+1)·page_size, num_tokens)).
// `keys[l]` and `values[l]` hold layer l's floats for those positions
// ([positions, kv_floats_per_token], position-major), or are both empty when
// layer l keeps no KV for this page (a layer without KV, or a sliding-window
// layer whose window moved past the page).
struct KvPageRecord {
  int64_t page_index = 0;
  std::vector<std::vector<float>> keys;    // per layer
  std::vector<std::vector<float>> values;  // per layer

  bool operator==(const KvPageRecord&) const = default;
};

// A session's complete state.
struct SessionSnapshot {
  SessionMeta meta;
  // The whole token history (at least meta.num_tokens tokens; it may also
  // hold tokens whose state is not computed yet, e.g. the last sampled one).
  std::vector<int32_t> tokens;
  // Per layer: `layers[l].recurrent_floats` floats (state then conv tail),
  // empty for layers without recurrent state.
  std::vector<std::vector<float>> recurrent;
  // Pages in increasing page_index order.
  std::vector<KvPageRecord> kv_pages;

  bool operator==(const SessionSnapshot&) const = default;
};

// What one commit wrote.
struct CommitStats {
  uint64_t snapshot_seq = 0;
  int64_t records_written = 0;
  int64_t records_deleted = 0;  // point deletions (stale pages, chunks)
  int64_t pages_written = 0;
  int64_t token_chunks_written = 0;
  // Keys and values put, in bytes (what goes to the write-ahead log).
  int64_t bytes_written = 0;
};

struct ListOptions {
  // Empty: from the first session; else the previous page's
  // next_page_token.
  std::string page_token;
  // At most this many sessions (≤ 0: 100; capped at 10000).
  int limit = 100;
  // Only sessions of this tenant (empty: every tenant).
  std::string tenant;
};

struct ListResult {
  // Ordered by session id.
  std::vector<SessionMeta> sessions;
  // Sessions in the same id range whose metadata record fails its checksum
  // (Load gives DATA_LOSS; Delete removes them).
  std::vector<std::string> damaged_session_ids;
  // Empty when the listing is complete.
  std::string next_page_token;
};

// Which record of a session a test damages (CorruptForTesting).
enum class StoredRecord { kMeta, kRecurrent, kTokens, kKvPage };
enum class Damage {
  kFlipByte,  // one byte of the value changed
  kDelete,    // the record removed
};

// Receives a store's I/O figures, for monitoring (KeyValueStateStore::
// SetObserver). Stores call it from every thread that uses them, so
// implementations must be thread-safe; the calls must be cheap and must not
// call back into the store.
class StateStoreObserver {
 public:
  virtual ~StateStoreObserver() = default;
  // One atomic write (a commit, delete or import) put `bytes` of keys and
  // values into storage and took `took`. Failed writes are not reported.
  virtual void OnWrite(int64_t bytes, absl::Duration took) = 0;
  // Keys and values of `bytes` in all were read (one read view's worth:
  // a load, a metadata read, a listing).
  virtual void OnRead(int64_t bytes) = 0;
};

// Thread-safe; all methods may be called concurrently. Commits, deletes and
// imports of one session are serialised; Load and List read a consistent
// view (a session is seen at one committed snapshot).
class StateStore {
 public:
  virtual ~StateStore() = default;

  // Commits `snapshot` as the session's new state, atomically and (when the
  // store is configured so) durably before returning. snapshot.meta's
  // snapshot_seq and history_tokens are set by the store.
  //
  // `unchanged_tokens` (U) is the caller's promise that the first U tokens
  // of the history, and the KV of positions [0, U), are those of the
  // session's last committed snapshot (e.g. its num_tokens when the session
  // only grew since). The store then writes only token chunks and KV pages
  // at or after position U: pages wholly below U are already durable and
  // immutable, and snapshot.kv_pages may omit them (pages given below U are
  // skipped). The page containing U, if partial before, is rewritten. U = 0
  // replaces everything stored for the session. Records the new snapshot no
  // longer covers (pages past the new length, pages below first_kv_page,
  // token chunks past the history) are deleted in the same batch.
  //
  // INVALID_ARGUMENT: malformed id, snapshot inconsistent with its layout,
  // missing pages, U out of range. FAILED_PRECONDITION: U > 0 but no
  // committed snapshot to extend, or a different layout/page size/model.
  // DATA_LOSS: U > 0 and the stored metadata fails its checksum (commit
  // with U = 0 to overwrite). RESOURCE_EXHAUSTED: disk full. UNAVAILABLE,
  // INTERNAL: storage errors. On any error the previous snapshot is intact.
  virtual absl::StatusOr<CommitStats> Commit(const SessionSnapshot& snapshot,
                                             int64_t unchanged_tokens) = 0;

  // The session's last committed snapshot. NOT_FOUND: unknown id.
  // INVALID_ARGUMENT: malformed id. DATA_LOSS: a record of the session fails
  // its checksum, is missing or disagrees with the metadata.
  virtual absl::StatusOr<SessionSnapshot> Load(
      absl::string_view session_id) = 0;

  // Only the metadata (reads one record). Errors as Load, DATA_LOSS only for
  // the metadata record itself.
  virtual absl::StatusOr<SessionMeta> GetMeta(absl::string_view session_id) = 0;

  // One page of sessions ordered by id. INVALID_ARGUMENT: bad page token.
  virtual absl::StatusOr<ListResult> List(const ListOptions& options) = 0;

  // Removes every record of the session in one batch (also a damaged one).
  // NOT_FOUND: unknown id. INVALID_ARGUMENT: malformed id.
  virtual absl::Status Delete(absl::string_view session_id) = 0;

  // The session as a self-describing, versioned, checksummed byte stream
  // (layout in README.md). Errors as Load.
  virtual absl::StatusOr<std::string> Export(absl::string_view session_id) = 0;

  // Stores the session in `bytes` (made by Export, by any store) under
  // `new_session_id`, keeping its tenant and times; snapshot_seq restarts at
  // 1. Nothing is stored on error. INVALID_ARGUMENT: not an export stream, an
  // unsupported version, malformed new id. DATA_LOSS: truncated, or a
  // checksum fails. FAILED_PRECONDITION: the stream's model fingerprint is
  // not `expected_model_fingerprint`. ALREADY_EXISTS: `new_session_id` is
  // taken. Storage errors as Commit.
  virtual absl::StatusOr<SessionMeta> Import(
      absl::string_view bytes, absl::string_view new_session_id,
      absl::string_view expected_model_fingerprint) = 0;

  // Test hook: damages one stored record of the session (the metadata, its
  // first recurrent layer, first token chunk or first KV page) by writing
  // around the store's checks. NOT_FOUND when there is no such record.
  virtual absl::Status CorruptForTesting(absl::string_view session_id,
                                         StoredRecord record,
                                         Damage damage) = 0;
};

// OK when `id` is a well-formed session id: 32 lowercase hex characters.
absl::Status ValidateSessionId(absl::string_view id);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_STATE_STORE_H_
