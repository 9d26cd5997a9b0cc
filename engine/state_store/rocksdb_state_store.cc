#include "engine/state_store/rocksdb_state_store.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/state_store/rocksdb_status.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/statistics.h"
#include "rocksdb/write_batch.h"

namespace deltaserve {

using state_store_internal::Family;
using state_store_internal::FamilyName;
using state_store_internal::kNumFamilies;
using state_store_internal::ReadView;
using state_store_internal::WriteOp;

struct RocksDbStateStore::Db {
  rocksdb::DB* db = nullptr;
  std::shared_ptr<rocksdb::Statistics> statistics;  // null unless kept
  // handles[0] is the default family (unused); handles[1 + f] is Family f.
  std::vector<rocksdb::ColumnFamilyHandle*> handles;

  rocksdb::ColumnFamilyHandle* Handle(Family f) const {
    return handles[1 + static_cast<int>(f)];
  }

  ~Db() {
    if (db == nullptr) return;
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      db->DestroyColumnFamilyHandle(h);
    }
    db->Close();
    delete db;
  }
};

namespace {

// RocksDB's own messages, warnings and worse, to stderr with the server's
// other logs. RocksDB's default logger writes a LOG file into the database
// directory, which fails (and trips RocksDB's checks) exactly when the disk
// is full; this one never touches the disk.
class StderrLogger final : public rocksdb::Logger {
 public:
  StderrLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    std::fputs("rocksdb: ", stderr);
    std::vfprintf(stderr, format, ap);
    std::fputc('\n', stderr);
  }
};

// Options for a family whose values are megabytes (recurrent state) or tens
// of kilobytes (KV pages) of raw floats: big memtables, values in blob files
// (garbage-collected as compaction rewrites the keys that point at them), no
// compression (fp32 state does not compress).
rocksdb::ColumnFamilyOptions LargeValueOptions(
    const RocksDbStateStore::Options& options) {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size =
      static_cast<size_t>(options.large_value_write_buffer_bytes);
  cf.max_write_buffer_number = 3;
  cf.compression = rocksdb::kNoCompression;
  cf.enable_blob_files = true;
  cf.min_blob_size = static_cast<uint64_t>(options.min_blob_bytes);
  cf.blob_file_size = uint64_t{256} << 20;
  cf.blob_compression_type = rocksdb::kNoCompression;
  cf.enable_blob_garbage_collection = true;
  cf.blob_garbage_collection_age_cutoff = 0.5;
  cf.level_compaction_dynamic_level_bytes = true;
  return cf;
}

// Small values (metadata, 16 KiB token chunks): defaults, modest memtables.
rocksdb::ColumnFamilyOptions SmallValueOptions() {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = size_t{16} << 20;
  cf.level_compaction_dynamic_level_bytes = true;
  return cf;
}

}  // namespace

class RocksDbStateStore::View final : public ReadView {
 public:
  explicit View(const Db* db) : db_(db), snapshot_(db->db->GetSnapshot()) {
    read_options_.snapshot = snapshot_;
    read_options_.verify_checksums = true;
  }
  ~View() override { db_->db->ReleaseSnapshot(snapshot_); }

  absl::Status Get(
      Family family, absl::string_view key,
      absl::FunctionRef<absl::Status(absl::string_view)> fn) override {
    rocksdb::PinnableSlice value;
    const rocksdb::Status s =
        db_->db->Get(read_options_, db_->Handle(family),
                     rocksdb::Slice(key.data(), key.size()), &value);
    if (!s.ok()) return FromRocksDb(s);
    return fn(absl::string_view(value.data(), value.size()));
  }

  absl::Status Scan(Family family, absl::string_view begin,
                    absl::string_view end,
                    absl::FunctionRef<absl::StatusOr<bool>(absl::string_view,
                                                           absl::string_view)>
                        fn) override {
    rocksdb::ReadOptions ro = read_options_;
    const rocksdb::Slice upper(end.data(), end.size());
    if (!end.empty()) ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(
        db_->db->NewIterator(ro, db_->Handle(family)));
    for (it->Seek(rocksdb::Slice(begin.data(), begin.size())); it->Valid();
         it->Next()) {
      const rocksdb::Slice k = it->key();
      const rocksdb::Slice v = it->value();
      absl::StatusOr<bool> more = fn(absl::string_view(k.data(), k.size()),
                                     absl::string_view(v.data(), v.size()));
      if (!more.ok()) return more.status();
      if (!*more) return absl::OkStatus();
    }
    return FromRocksDb(it->status());
  }

 private:
  const Db* db_;
  const rocksdb::Snapshot* snapshot_;
  rocksdb::ReadOptions read_options_;
};

absl::StatusOr<std::unique_ptr<RocksDbStateStore>> RocksDbStateStore::Create(
    const Options& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("state store path is empty");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", options.path, ": ", ec.message()));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.bytes_per_sync = 1 << 20;
  // Start writing the log back to disk while a large commit is still being
  // appended, so that its final sync waits for the last megabyte rather than
  // for all of it (a 24 MiB commit: about 12 ms of sync down to 1-2 ms).
  // Every synced commit is still synced in full before Commit returns.
  db_options.wal_bytes_per_sync = 1 << 20;
  // The small "meta" family rarely fills its memtable; bound the WAL so
  // that old log files (which hold large values) are not kept for it.
  db_options.max_total_wal_size = uint64_t{512} << 20;
  db_options.keep_log_file_num = 4;
  db_options.info_log = std::make_shared<StderrLogger>();
  if (options.env != nullptr) db_options.env = options.env;
  if (options.statistics) {
    db_options.statistics = rocksdb::CreateDBStatistics();
    db_options.statistics->set_stats_level(
        rocksdb::StatsLevel::kExceptHistogramOrTimers);
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName, SmallValueOptions());
  for (int f = 0; f < kNumFamilies; ++f) {
    const Family family = static_cast<Family>(f);
    const bool large =
        family == Family::kRecurrent || family == Family::kKvPages;
    families.emplace_back(FamilyName(family), large ? LargeValueOptions(options)
                                                    : SmallValueOptions());
  }
  auto db = std::make_unique<Db>();
  db->statistics = db_options.statistics;
  const rocksdb::Status s = rocksdb::DB::Open(db_options, options.path,
                                              families, &db->handles, &db->db);
  if (!s.ok()) {
    db->db = nullptr;
    const absl::Status status = FromRocksDb(s);
    return absl::Status(status.code(),
                        absl::StrCat("opening state store ", options.path, ": ",
                                     status.message()));
  }
  return std::unique_ptr<RocksDbStateStore>(
      new RocksDbStateStore(options, std::move(db)));
}

RocksDbStateStore::RocksDbStateStore(const Options& options,
                                     std::unique_ptr<Db> db)
    : options_(options), db_(std::move(db)) {}

RocksDbStateStore::~RocksDbStateStore() = default;

std::unique_ptr<ReadView> RocksDbStateStore::NewReadView() {
  return std::make_unique<View>(db_.get());
}

absl::Status RocksDbStateStore::Write(const std::vector<WriteOp>& ops) {
  size_t reserve = 64;
  for (const WriteOp& op : ops) {
    reserve += op.key.size() + op.end_key.size() + op.value.size() + 32;
  }
  rocksdb::WriteBatch batch(reserve);
  std::vector<rocksdb::Slice> parts;
  for (const WriteOp& op : ops) {
    rocksdb::ColumnFamilyHandle* cf = db_->Handle(op.family);
    const rocksdb::Slice key(op.key);
    rocksdb::Status s;
    switch (op.kind) {
      case WriteOp::Kind::kPut: {
        parts.clear();
        for (absl::string_view p : op.value.parts()) {
          parts.emplace_back(p.data(), p.size());
        }
        s = batch.Put(
            cf, rocksdb::SliceParts(&key, 1),
            rocksdb::SliceParts(parts.data(), static_cast<int>(parts.size())));
        break;
      }
      case WriteOp::Kind::kDelete:
        s = batch.Delete(cf, key);
        break;
      case WriteOp::Kind::kDeleteRange:
        s = batch.DeleteRange(cf, key, rocksdb::Slice(op.end_key));
        break;
    }
    if (!s.ok()) return FromRocksDb(s);
  }
  if (resume_before_write_.exchange(false)) {
    // After a failed write RocksDB may refuse every write until resumed;
    // this fails (and the write below with it) while the cause persists.
    db_->db->Resume().PermitUncheckedError();
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync_writes;
  const rocksdb::Status s = db_->db->Write(write_options, &batch);
  if (!s.ok()) {
    resume_before_write_ = true;
    return FromRocksDb(s);
  }
  return absl::OkStatus();
}

absl::Status RocksDbStateStore::Flush() {
  rocksdb::FlushOptions flush_options;
  flush_options.wait = true;
  std::vector<rocksdb::ColumnFamilyHandle*> handles(db_->handles.begin() + 1,
                                                    db_->handles.end());
  return FromRocksDb(db_->db->Flush(flush_options, handles));
}

RocksDbStats RocksDbStateStore::GetStats() const {
  RocksDbStats stats;
  rocksdb::DB* db = db_->db;
  using Properties = rocksdb::DB::Properties;
  // Database-wide figures (any column family answers them), then figures
  // summed over the column families.
  auto db_int = [db](const std::string& property, int64_t* out) {
    uint64_t value = 0;
    if (db->GetIntProperty(property, &value)) {
      *out = static_cast<int64_t>(value);
    }
  };
  auto summed = [db](const std::string& property, int64_t* out) {
    uint64_t value = 0;
    if (db->GetAggregatedIntProperty(property, &value)) {
      *out = static_cast<int64_t>(value);
    }
  };
  db_int(Properties::kActualDelayedWriteRate, &stats.actual_delayed_write_rate);
  db_int(Properties::kIsWriteStopped, &stats.is_write_stopped);
  db_int(Properties::kNumRunningCompactions, &stats.num_running_compactions);
  db_int(Properties::kNumRunningFlushes, &stats.num_running_flushes);
  summed(Properties::kCompactionPending, &stats.compaction_pending);
  summed(Properties::kEstimatePendingCompactionBytes,
         &stats.estimate_pending_compaction_bytes);
  summed(Properties::kLiveSstFilesSize, &stats.live_sst_files_bytes);
  summed(Properties::kTotalBlobFileSize, &stats.blob_files_bytes);
  for (rocksdb::ColumnFamilyHandle* cf : db_->handles) {
    std::map<std::string, std::string> cf_stats;
    if (!db->GetMapProperty(cf, Properties::kCFStats, &cf_stats)) continue;
    auto add = [&cf_stats](const char* key, int64_t* out) {
      auto it = cf_stats.find(key);
      if (it != cf_stats.end())
        *out += std::strtoll(it->second.c_str(), nullptr, 10);
    };
    add("io_stalls.total_slowdown", &stats.write_slowdowns);
    add("io_stalls.total_stop", &stats.write_stops);
  }
  if (const rocksdb::Statistics* s = db_->statistics.get()) {
    auto ticker = [s](uint32_t t) {
      return static_cast<int64_t>(s->getTickerCount(t));
    };
    stats.stall_micros = ticker(rocksdb::STALL_MICROS);
    stats.compaction_read_bytes = ticker(rocksdb::COMPACT_READ_BYTES);
    stats.compaction_write_bytes = ticker(rocksdb::COMPACT_WRITE_BYTES);
    stats.flush_write_bytes = ticker(rocksdb::FLUSH_WRITE_BYTES);
  }
  return stats;
}

}  // namespace deltaserve
