// RocksDbStateStore: the durable StateStore, on a RocksDB directory (the
// server's --state_dir). One column family per record kind ("meta",
// "recurrent", "kv_pages", "tokens"); each snapshot is one WriteBatch,
// synced to the write-ahead log before Commit returns unless
// Options::sync_writes is false. Large values (recurrent state, KV pages)
// go to blob files. Key schema and value format: README.md.
//
// Owns the open database; closing it (the destructor) loses nothing that was
// committed. Thread-safe.
#ifndef DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATE_STORE_H_
#define DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATE_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/state_store/key_value_state_store.h"
#include "engine/state_store/rocksdb_stats.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace deltaserve {

class RocksDbStateStore final : public KeyValueStateStore {
 public:
  struct Options {
    // The database directory; created (with its parents) if missing.
    std::string path;
    // Sync the write-ahead log on every commit and delete. Without it a
    // commit survives a process crash (kill -9) but not a power loss or
    // kernel crash.
    bool sync_writes = true;
    // Memtable size of the "recurrent" and "kv_pages" column families.
    int64_t large_value_write_buffer_bytes = int64_t{128} << 20;
    // Values of at least this many bytes in "recurrent" and "kv_pages" are
    // written to blob files instead of SST files (flushes and compactions
    // then move only keys and blob references).
    int64_t min_blob_bytes = 4096;
    // Keep RocksDB's statistics (tickers only, no histograms or timers), so
    // that GetStats reports stall time and compaction bytes; off, those
    // counters stay 0.
    bool statistics = false;
    // Test hook: the RocksDB Env to use (e.g. one whose file system injects
    // errors); nullptr: the default. Not owned; must outlive the store.
    rocksdb::Env* env = nullptr;
  };

  // Opens (or creates) the database at options.path. INVALID_ARGUMENT: empty
  // path. Otherwise RocksDB's error, converted (e.g. INTERNAL when the
  // directory is locked by another process or holds other column families,
  // DATA_LOSS when it is corrupt).
  static absl::StatusOr<std::unique_ptr<RocksDbStateStore>> Create(
      const Options& options);

  ~RocksDbStateStore() override;

  // Flushes every memtable to files (benchmarks and tests use it to read
  // from files rather than memory). Errors: RocksDB's, converted.
  absl::Status Flush();

  // RocksDB's figures about the database now (see RocksDbStats). A figure
  // RocksDB does not report stays 0. Thread-safe.
  RocksDbStats GetStats() const;

 protected:
  std::unique_ptr<state_store_internal::ReadView> NewReadView() override;
  absl::Status Write(
      const std::vector<state_store_internal::WriteOp>& ops) override;

 private:
  struct Db;
  class View;
  RocksDbStateStore(const Options& options, std::unique_ptr<Db> db);

  const Options options_;
  std::unique_ptr<Db> db_;
  // A write failed: the database may be in its stopped-on-error state, so
  // the next write first asks RocksDB to resume.
  std::atomic<bool> resume_before_write_{false};
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATE_STORE_H_
