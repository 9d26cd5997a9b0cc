// What only the on-disk store can show: sessions survive closing and
// reopening the directory, a failed write (disk full) leaves the previous
// snapshot intact, and RocksDB errors map to the documented codes.
#include "engine/state_store/rocksdb_state_store.h"

#include <atomic>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/state_store/rocksdb_status.h"
#include "engine/state_store/test_util.h"
#include "gtest/gtest.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/status.h"

// Defined by RocksDB, and by rocksdb_crc32c.cc in place of RocksDB's.
namespace rocksdb {
namespace crc32c {
uint32_t Extend(uint32_t init_crc, const char* data, size_t n);
}  // namespace crc32c
}  // namespace rocksdb

namespace deltaserve {
namespace {

using testing_util::RandomSessionId;
using testing_util::SameSnapshot;
using testing_util::SessionModel;
using testing_util::SmallHybridShape;

std::string TestDir(absl::string_view name) {
  return absl::StrCat(::testing::TempDir(), "/rocksdb_state_store_test_", name);
}

std::unique_ptr<RocksDbStateStore> MustOpen(
    const RocksDbStateStore::Options& options) {
  auto store = RocksDbStateStore::Create(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

void ExpectLoads(StateStore& store, const SessionModel& m, uint64_t seq) {
  auto loaded = store.Load(m.Snapshot().meta.session_id);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameSnapshot(*loaded, m.Expected(seq)));
}

TEST(RocksDbStateStoreTest, EveryCommittedSessionSurvivesReopen) {
  for (bool sync : {true, false}) {
    RocksDbStateStore::Options options;
    options.path = TestDir(absl::StrCat("reopen_", sync));
    options.sync_writes = sync;
    std::mt19937_64 rng(sync);
    std::vector<SessionModel> models;
    {
      auto store = MustOpen(options);
      ASSERT_NE(store, nullptr);
      for (int i = 0; i < 6; ++i) {
        models.emplace_back(RandomSessionId(rng), SmallHybridShape(), i);
        SessionModel& m = models.back();
        m.Grow(20 + 9 * i);
        ASSERT_TRUE(store->Commit(m.Snapshot(), 0).ok());
        const int64_t before = m.num_tokens();
        m.Grow(5);
        ASSERT_TRUE(store->Commit(m.Snapshot(before / 4), before).ok());
      }
      ASSERT_TRUE(store->Delete(models[2].meta().session_id).ok());
      // Half of the state in files, half only in the log.
      ASSERT_TRUE(store->Flush().ok());
      for (int i = 3; i < 6; ++i) {
        models[i].Grow(1);
        ASSERT_TRUE(store->Commit(models[i].Snapshot(), 0).ok());
      }
    }
    auto store = MustOpen(options);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 6; ++i) {
      SCOPED_TRACE(i);
      if (i == 2) {
        EXPECT_EQ(store->Load(models[i].meta().session_id).status().code(),
                  absl::StatusCode::kNotFound);
      } else {
        ExpectLoads(*store, models[i], i < 3 ? 2 : 3);
      }
    }
    auto list = store->List(ListOptions());
    ASSERT_TRUE(list.ok());
    EXPECT_EQ(list->sessions.size(), 5u);
  }
}

// GetStats reports RocksDB's figures: file sizes after a flush, the flush's
// bytes with statistics on (none without), no stall on an idle database.
TEST(RocksDbStateStoreTest, StatsReportFilesFlushesAndStalls) {
  for (bool statistics : {false, true}) {
    SCOPED_TRACE(statistics);
    RocksDbStateStore::Options options;
    options.path = TestDir(absl::StrCat("stats_", statistics));
    options.statistics = statistics;
    auto store = MustOpen(options);
    ASSERT_NE(store, nullptr);
    const RocksDbStats empty = store->GetStats();
    EXPECT_EQ(empty.live_sst_files_bytes + empty.blob_files_bytes, 0);
    std::mt19937_64 rng(7);
    int64_t committed = 0;
    for (int i = 0; i < 4; ++i) {
      SessionModel m(RandomSessionId(rng), SmallHybridShape(), i);
      m.Grow(200);
      auto stats = store->Commit(m.Snapshot(), 0);
      ASSERT_TRUE(stats.ok()) << stats.status();
      committed += stats->bytes_written;
    }
    ASSERT_TRUE(store->Flush().ok());
    const RocksDbStats s = store->GetStats();
    // The files hold at least the committed values (uncompressed floats).
    EXPECT_GT(s.live_sst_files_bytes + s.blob_files_bytes, committed / 2);
    EXPECT_EQ(s.is_write_stopped, 0);
    EXPECT_EQ(s.actual_delayed_write_rate, 0);
    EXPECT_EQ(s.stall_micros, 0);
    EXPECT_EQ(s.write_stops, 0);
    EXPECT_GE(s.num_running_compactions, 0);
    if (statistics) {
      EXPECT_GT(s.flush_write_bytes, committed / 2);
    } else {
      EXPECT_EQ(s.flush_write_bytes, 0);
    }
  }
}

TEST(RocksDbStateStoreTest, DirectoryIsLockedWhileOpen) {
  RocksDbStateStore::Options options;
  options.path = TestDir("locked");
  auto store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(RocksDbStateStore::Create(options).ok());
  options.path = "";
  EXPECT_EQ(RocksDbStateStore::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A file system whose write-ahead-log files fail every write with "no space"
// while `full` is set.
class FullDiskFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit FullDiskFileSystem(std::shared_ptr<rocksdb::FileSystem> base)
      : FileSystemWrapper(std::move(base)) {}
  const char* Name() const override { return "FullDiskFileSystem"; }

  rocksdb::IOStatus NewWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* file,
      rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, file, dbg);
    if (s.ok() && absl::EndsWith(name, ".log")) {
      *file = std::make_unique<File>(std::move(*file), &full);
    }
    return s;
  }

  std::atomic<bool> full{false};

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> base,
         const std::atomic<bool>* full)
        : FSWritableFileOwnerWrapper(std::move(base)), full_(full) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      if (*full_) return NoSpace();
      return target()->Append(data, options, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& info,
                             rocksdb::IODebugContext* dbg) override {
      if (*full_) return NoSpace();
      return target()->Append(data, options, info, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      if (*full_) return NoSpace();
      return target()->Sync(options, dbg);
    }

   private:
    static rocksdb::IOStatus NoSpace() {
      return rocksdb::IOStatus::NoSpace("injected: No space left on device");
    }
    const std::atomic<bool>* full_;
  };
};

TEST(RocksDbStateStoreTest, FullDiskLeavesThePreviousSnapshotIntact) {
  auto fs =
      std::make_shared<FullDiskFileSystem>(rocksdb::FileSystem::Default());
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  RocksDbStateStore::Options options;
  options.path = TestDir("full_disk");
  options.env = env.get();
  std::mt19937_64 rng(3);
  SessionModel m(RandomSessionId(rng), SmallHybridShape(), 3);
  m.Grow(30);
  {
    auto store = MustOpen(options);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Commit(m.Snapshot(), 0).ok());
    const SessionModel committed = m;
    m.Grow(10);
    fs->full = true;
    auto failed = store->Commit(m.Snapshot(7), 30);
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted)
        << failed.status();
    EXPECT_EQ(store->Delete(m.meta().session_id).code(),
              absl::StatusCode::kResourceExhausted);
    ExpectLoads(*store, committed, 1);
    // Space is back: RocksDB recovers in the background and commits work
    // again.
    fs->full = false;
    absl::StatusOr<CommitStats> retried;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    do {
      retried = store->Commit(m.Snapshot(7), 30);
      if (!retried.ok()) absl::SleepFor(absl::Milliseconds(10));
    } while (!retried.ok() && absl::Now() < deadline);
    ASSERT_TRUE(retried.ok()) << retried.status();
    EXPECT_EQ(retried->snapshot_seq, 2u);
    ExpectLoads(*store, m, 2);
  }
  auto store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  ExpectLoads(*store, m, 2);
}

TEST(RocksDbStateStoreTest, StatusConversion) {
  EXPECT_TRUE(FromRocksDb(rocksdb::Status::OK()).ok());
  EXPECT_EQ(FromRocksDb(rocksdb::Status::NotFound()).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FromRocksDb(rocksdb::Status::Corruption("bad block")).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(FromRocksDb(rocksdb::Status::NoSpace()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(
      FromRocksDb(rocksdb::Status::IOError("write", "No space left on device"))
          .code(),
      absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FromRocksDb(rocksdb::Status::Busy()).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromRocksDb(rocksdb::Status::TryAgain()).code(),
            absl::StatusCode::kUnavailable);
  const absl::Status io = FromRocksDb(rocksdb::Status::IOError("disk gone"));
  EXPECT_EQ(io.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(io.message(), "disk gone"));
  EXPECT_EQ(FromRocksDb(rocksdb::Status::InvalidArgument("x")).code(),
            absl::StatusCode::kInternal);
}

// RocksDB's checksum function (ours in its place) is CRC-32C with RocksDB's
// conventions: RocksDB's own test vectors, and extending a finished CRC.
TEST(RocksDbStateStoreTest, RocksDbCrc32cIsTheStandardOne) {
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(rocksdb::crc32c::Extend(0, zeros.data(), zeros.size()),
            0x8a9136aau);
  EXPECT_EQ(rocksdb::crc32c::Extend(0, ones.data(), ones.size()), 0x62a8ab43u);
  EXPECT_EQ(rocksdb::crc32c::Extend(0, "123456789", 9), 0xe3069283u);
  const uint32_t hello = rocksdb::crc32c::Extend(0, "hello ", 6);
  EXPECT_EQ(rocksdb::crc32c::Extend(hello, "world", 5),
            rocksdb::crc32c::Extend(0, "hello world", 11));
}

}  // namespace
}  // namespace deltaserve
