// The contract every StateStore implementation meets, run against each of
// them: round trips, incremental commits, listing, deletion, damage
// detection, export/import.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/state_store/in_memory_state_store.h"
#include "engine/state_store/key_value_state_store.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "engine/state_store/state_store.h"
#include "engine/state_store/test_util.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

using testing_util::RandomSessionId;
using testing_util::SameSnapshot;
using testing_util::SessionModel;
using testing_util::SmallHybridShape;
using testing_util::TestShape;

struct StoreKind {
  std::string name;
  // A new, empty store; `dir` is a fresh directory it may use.
  std::function<std::unique_ptr<StateStore>(const std::string& dir)> make;
};

void PrintTo(const StoreKind& kind, std::ostream* os) { *os << kind.name; }

std::string FreshDir() {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name =
      absl::StrCat(info->test_suite_name(), "_", info->name(), "_", counter++);
  std::replace(name.begin(), name.end(), '/', '_');
  const std::string dir = absl::StrCat(::testing::TempDir(), "/", name);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return dir;
}

class StateStoreContractTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override { store_ = NewStore(); }

  std::unique_ptr<StateStore> NewStore() { return GetParam().make(FreshDir()); }

  std::string NewId() { return RandomSessionId(rng_); }

  // Commits and checks the store's answer.
  CommitStats MustCommit(const SessionSnapshot& s, int64_t unchanged,
                         StateStore* store = nullptr) {
    auto stats = (store ? store : store_.get())->Commit(s, unchanged);
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : CommitStats();
  }

  void ExpectLoads(const SessionModel& model, uint64_t seq,
                   StateStore* store = nullptr) {
    auto loaded =
        (store ? store : store_.get())->Load(model.Snapshot().meta.session_id);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(SameSnapshot(*loaded, model.Expected(seq)));
  }

  std::mt19937_64 rng_{12345};
  std::unique_ptr<StateStore> store_;
};

TEST_P(StateStoreContractTest, CommitLoadRoundTripIsBitExact) {
  SessionModel m(NewId(), SmallHybridShape(), 1);
  m.Grow(37);
  m.set_pending_tokens(1);
  const CommitStats stats = MustCommit(m.Snapshot(), 0);
  EXPECT_EQ(stats.snapshot_seq, 1u);
  EXPECT_EQ(stats.pages_written, 10);  // ceil(37 / 4)
  EXPECT_EQ(stats.token_chunks_written, 1);
  EXPECT_EQ(stats.records_written, 1 + 2 + 1 + 10);  // meta, recurrent ×2
  EXPECT_GT(stats.bytes_written, 37 * 2 * 16 * 4);
  ExpectLoads(m, 1);

  auto meta = store_->GetMeta(m.meta().session_id);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(*meta, m.Expected(1).meta);
  EXPECT_EQ(meta->history_tokens, 38);
  EXPECT_EQ(meta->state_bytes(), 4 * (96 + 40 + 2 * 16 * 37 + 38));

  // An empty session and a session without KV layers.
  SessionModel empty(NewId(), SmallHybridShape(), 2);
  MustCommit(empty.Snapshot(), 0);
  ExpectLoads(empty, 1);
  TestShape recurrent_only;
  recurrent_only.layers = {{128, 0}, {0, 0}, {64, 0}};
  SessionModel r(NewId(), recurrent_only, 3);
  r.Grow(5000);
  EXPECT_EQ(MustCommit(r.Snapshot(), 0).token_chunks_written, 2);
  ExpectLoads(r, 1);
}

TEST_P(StateStoreContractTest, IncrementalCommitWritesOnlyNewPages) {
  SessionModel m(NewId(), SmallHybridShape(), 4);
  m.Grow(100);  // pages 0..24, all full
  const CommitStats first = MustCommit(m.Snapshot(), 0);
  EXPECT_EQ(first.pages_written, 25);

  m.Grow(10);  // pages 25..27, 27 partial
  const CommitStats second = MustCommit(m.Snapshot(/*from_page=*/25), 100);
  EXPECT_EQ(second.snapshot_seq, 2u);
  EXPECT_EQ(second.pages_written, 3);
  EXPECT_EQ(second.token_chunks_written, 1);
  EXPECT_EQ(second.records_deleted, 0);
  EXPECT_LT(second.bytes_written, first.bytes_written / 3);
  ExpectLoads(m, 2);

  // The partial page 27 is rewritten; pages below the unchanged prefix
  // given anyway are skipped.
  m.Grow(3);
  const CommitStats third = MustCommit(m.Snapshot(), 110);
  EXPECT_EQ(third.pages_written, 2);  // 27 (grown) and 28
  ExpectLoads(m, 3);

  // Nothing new: only the recurrent state and metadata (and the page that
  // holds position 113, which may have changed) are written.
  const CommitStats same = MustCommit(m.Snapshot(), 113);
  EXPECT_EQ(same.pages_written, 1);
  ExpectLoads(m, 4);
}

TEST_P(StateStoreContractTest, LongHistoryAppendsWriteOneTokenChunk) {
  TestShape shape;
  shape.layers = {{16, 0}};
  SessionModel m(NewId(), shape, 5);
  m.Grow(20000);  // 5 chunks of 4096
  EXPECT_EQ(MustCommit(m.Snapshot(), 0).token_chunks_written, 5);
  m.Grow(7);
  const CommitStats stats = MustCommit(m.Snapshot(), 20000);
  EXPECT_EQ(stats.token_chunks_written, 1);
  EXPECT_LT(stats.bytes_written, 2 * 4096 * 4);
  ExpectLoads(m, 2);
}

TEST_P(StateStoreContractTest, ShrinkingDeletesStaleRecords) {
  SessionModel m(NewId(), SmallHybridShape(), 6);
  m.Grow(9000);  // 2250 pages, 3 token chunks
  MustCommit(m.Snapshot(), 0);
  m.Truncate(40);
  const CommitStats stats = MustCommit(m.Snapshot(), 40);
  EXPECT_EQ(stats.pages_written, 0);
  EXPECT_EQ(stats.records_deleted, 2250 - 10 + 2);
  ExpectLoads(m, 2);  // Load fails on stale records: none are left

  // A reset to another history replaces everything.
  SessionModel other(m.meta().session_id, SmallHybridShape(), 7);
  other.Grow(13);
  MustCommit(other.Snapshot(), 0);
  ExpectLoads(other, 3);
}

TEST_P(StateStoreContractTest, PagesBelowTheWindowAreDropped) {
  SessionModel m(NewId(), SmallHybridShape(), 8);
  m.Grow(40);
  MustCommit(m.Snapshot(), 0);
  m.Grow(8);
  m.set_first_kv_page(6);
  const CommitStats stats = MustCommit(m.Snapshot(10), 40);
  EXPECT_EQ(stats.records_deleted, 6);
  EXPECT_EQ(stats.pages_written, 2);
  ExpectLoads(m, 2);
}

TEST_P(StateStoreContractTest, RejectsBadCommits) {
  SessionModel m(NewId(), SmallHybridShape(), 9);
  m.Grow(20);
  // Extending a session that was never committed.
  EXPECT_EQ(store_->Commit(m.Snapshot(), 8).status().code(),
            absl::StatusCode::kFailedPrecondition);
  MustCommit(m.Snapshot(), 0);
  m.Grow(8);
  // A page after the unchanged prefix is missing.
  EXPECT_EQ(store_->Commit(m.Snapshot(6), 20).status().code(),
            absl::StatusCode::kInvalidArgument);
  SessionSnapshot s = m.Snapshot();
  s.kv_pages.erase(s.kv_pages.begin() + 3);
  EXPECT_EQ(store_->Commit(s, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Recurrent state of the wrong size; a page of the wrong size.
  s = m.Snapshot();
  s.recurrent[0].pop_back();
  EXPECT_EQ(store_->Commit(s, 20).status().code(),
            absl::StatusCode::kInvalidArgument);
  s = m.Snapshot();
  s.kv_pages[1].keys[1].push_back(1.f);
  EXPECT_EQ(store_->Commit(s, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // unchanged_tokens beyond the snapshot or the stored one.
  EXPECT_EQ(store_->Commit(m.Snapshot(), 29).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Commit(m.Snapshot(), 24).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Another layout with unchanged_tokens > 0.
  s = m.Snapshot();
  s.meta.model_fingerprint = "another-model";
  EXPECT_EQ(store_->Commit(s, 20).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Malformed id.
  s = m.Snapshot();
  s.meta.session_id = "not-an-id";
  EXPECT_EQ(store_->Commit(s, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // None of that touched the stored snapshot.
  m.Truncate(20);
  auto loaded = store_->Load(m.meta().session_id);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->meta.num_tokens, 20);
  EXPECT_EQ(loaded->meta.snapshot_seq, 1u);
}

TEST_P(StateStoreContractTest, UnknownAndMalformedIds) {
  const std::string id = NewId();
  EXPECT_EQ(store_->Load(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetMeta(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Export(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Load("xyz").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Delete("").code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StateStoreContractTest, ListPagesInIdOrder) {
  std::set<std::string> ids;
  for (int i = 0; i < 25; ++i) {
    SessionModel m(NewId(), SmallHybridShape(), 100 + i);
    m.meta().tenant = i % 3 == 0 ? "t0" : "t1";
    m.Grow(i);
    MustCommit(m.Snapshot(), 0);
    ids.insert(m.meta().session_id);
  }
  std::vector<std::string> listed;
  ListOptions options;
  options.limit = 10;
  int pages = 0;
  do {
    auto page = store_->List(options);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_TRUE(page->damaged_session_ids.empty());
    EXPECT_LE(page->sessions.size(), 10u);
    for (const SessionMeta& m : page->sessions) {
      listed.push_back(m.session_id);
      EXPECT_EQ(m.snapshot_seq, 1u);
    }
    options.page_token = page->next_page_token;
    ++pages;
  } while (!options.page_token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, std::vector<std::string>(ids.begin(), ids.end()));

  ListOptions t0;
  t0.tenant = "t0";
  t0.limit = 9;
  auto page = store_->List(t0);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->sessions.size(), 9u);  // sessions 0, 3, ..., 24
  EXPECT_TRUE(page->next_page_token.empty());
  for (const SessionMeta& m : page->sessions) EXPECT_EQ(m.tenant, "t0");

  options.page_token = "bad token";
  EXPECT_EQ(store_->List(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(StateStoreContractTest, DeleteRemovesEverything) {
  SessionModel a(NewId(), SmallHybridShape(), 10);
  SessionModel b(NewId(), SmallHybridShape(), 11);
  a.Grow(50);
  b.Grow(30);
  MustCommit(a.Snapshot(), 0);
  MustCommit(b.Snapshot(), 0);
  ASSERT_TRUE(store_->Delete(a.meta().session_id).ok());
  EXPECT_EQ(store_->Load(a.meta().session_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete(a.meta().session_id).code(),
            absl::StatusCode::kNotFound);
  auto list = store_->List(ListOptions());
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->sessions.size(), 1u);
  EXPECT_EQ(list->sessions[0].session_id, b.meta().session_id);
  ExpectLoads(b, 1);
  // The id can be used again; no record of the old session shows through
  // (Load would fail on a stray page or chunk).
  SessionModel again(a.meta().session_id, SmallHybridShape(), 12);
  again.Grow(3);
  EXPECT_EQ(MustCommit(again.Snapshot(), 0).snapshot_seq, 1u);
  ExpectLoads(again, 1);
}

TEST_P(StateStoreContractTest, DamagedRecordIsDataLossForThatSessionOnly) {
  for (StoredRecord record : {StoredRecord::kMeta, StoredRecord::kRecurrent,
                              StoredRecord::kTokens, StoredRecord::kKvPage}) {
    for (Damage damage : {Damage::kFlipByte, Damage::kDelete}) {
      SCOPED_TRACE(absl::StrCat(static_cast<int>(record), "/",
                                static_cast<int>(damage)));
      SessionModel a(NewId(), SmallHybridShape(), 20);
      SessionModel b(NewId(), SmallHybridShape(), 21);
      a.Grow(30);
      b.Grow(30);
      MustCommit(a.Snapshot(), 0);
      MustCommit(b.Snapshot(), 0);
      const std::string id = a.meta().session_id;
      ASSERT_TRUE(store_->CorruptForTesting(id, record, damage).ok());
      const absl::StatusCode want =
          record == StoredRecord::kMeta && damage == Damage::kDelete
              ? absl::StatusCode::kNotFound  // the session is gone
              : absl::StatusCode::kDataLoss;
      EXPECT_EQ(store_->Load(id).status().code(), want);
      EXPECT_EQ(store_->Export(id).status().code(), want);
      ExpectLoads(b, 1);
      if (record == StoredRecord::kMeta && damage == Damage::kFlipByte) {
        EXPECT_EQ(store_->GetMeta(id).status().code(),
                  absl::StatusCode::kDataLoss);
        auto list = store_->List(ListOptions());
        ASSERT_TRUE(list.ok());
        EXPECT_EQ(list->damaged_session_ids, std::vector<std::string>{id});
        // Extending it is refused; replacing it works.
        a.Grow(2);
        EXPECT_EQ(store_->Commit(a.Snapshot(), 30).status().code(),
                  absl::StatusCode::kDataLoss);
        MustCommit(a.Snapshot(), 0);
        ExpectLoads(a, 1);
      }
      if (want == absl::StatusCode::kDataLoss) {
        EXPECT_TRUE(store_->Delete(id).ok());
      }
      EXPECT_EQ(store_->Load(id).status().code(), absl::StatusCode::kNotFound);
      ASSERT_TRUE(store_->Delete(b.meta().session_id).ok());
    }
  }
}

TEST_P(StateStoreContractTest, ExportImportRoundTrip) {
  SessionModel m(NewId(), SmallHybridShape(), 30);
  m.Grow(61);
  MustCommit(m.Snapshot(), 0);
  m.Grow(5);
  m.set_pending_tokens(1);
  MustCommit(m.Snapshot(15), 61);
  auto bytes = store_->Export(m.meta().session_id);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->substr(0, 4), "DSSN");

  auto check = [&](StateStore& into) {
    const std::string id = NewId();
    auto meta = into.Import(*bytes, id, m.meta().model_fingerprint);
    ASSERT_TRUE(meta.ok()) << meta.status();
    SessionSnapshot want = m.Expected(1);
    want.meta.session_id = id;
    EXPECT_EQ(*meta, want.meta);
    auto loaded = into.Load(id);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(SameSnapshot(*loaded, want));
    // The same bytes again: same session content under the new id.
    auto again = into.Export(id);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->size(), bytes->size());
    EXPECT_EQ(
        into.Import(*bytes, id, m.meta().model_fingerprint).status().code(),
        absl::StatusCode::kAlreadyExists);
  };
  check(*store_);
  std::unique_ptr<StateStore> other = NewStore();
  check(*other);
  InMemoryStateStore memory;
  check(memory);
}

TEST_P(StateStoreContractTest, ImportRefusesAnotherModel) {
  SessionModel m(NewId(), SmallHybridShape(), 31);
  m.Grow(10);
  MustCommit(m.Snapshot(), 0);
  auto bytes = store_->Export(m.meta().session_id);
  ASSERT_TRUE(bytes.ok());
  const std::string id = NewId();
  EXPECT_EQ(store_->Import(*bytes, id, "other-model").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetMeta(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(
      store_->Import(*bytes, "bad", m.meta().model_fingerprint).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(StateStoreContractTest, TruncatedOrTamperedImportsAreRejected) {
  SessionModel m(NewId(), SmallHybridShape(), 32);
  m.Grow(23);
  MustCommit(m.Snapshot(), 0);
  auto exported = store_->Export(m.meta().session_id);
  ASSERT_TRUE(exported.ok());
  const std::string& bytes = *exported;
  const std::string fingerprint = m.meta().model_fingerprint;
  const std::string id = NewId();
  auto rejected = [&](absl::string_view input, const std::string& what) {
    const absl::StatusCode code =
        store_->Import(input, id, fingerprint).status().code();
    EXPECT_TRUE(code == absl::StatusCode::kDataLoss ||
                code == absl::StatusCode::kInvalidArgument)
        << what << ": " << absl::StatusCodeToString(code);
  };
  std::set<size_t> lengths;
  for (size_t n = 0; n < 80; ++n) lengths.insert(n);
  for (size_t n = 0; n < bytes.size(); n += 1 + bytes.size() / 150) {
    lengths.insert(n);
  }
  for (size_t k = 1; k <= 40; ++k) lengths.insert(bytes.size() - k);
  for (size_t n : lengths) {
    rejected(absl::string_view(bytes).substr(0, n),
             absl::StrCat("prefix of ", n, " bytes"));
  }
  rejected(bytes + "x", "a byte appended");
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= static_cast<char>(1 + (i * 37) % 255);
    rejected(bad, absl::StrCat("byte ", i, " changed"));
  }
  EXPECT_EQ(store_->GetMeta(id).status().code(), absl::StatusCode::kNotFound);
  auto list = store_->List(ListOptions());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->sessions.size(), 1u);
  // The intact stream still imports.
  EXPECT_TRUE(store_->Import(bytes, id, fingerprint).ok());
}

TEST_P(StateStoreContractTest, DeltaNet13BStateRoundTrips) {
  // 24 layers × 16 heads × 128 × 128 fp32 = 24 MiB of recurrent state.
  TestShape shape;
  shape.layers.assign(24, LayerLayout{16 * 128 * 128, 0});
  SessionModel m(NewId(), shape, 40);
  m.Grow(1000);
  const CommitStats stats = MustCommit(m.Snapshot(), 0);
  EXPECT_GT(stats.bytes_written, 24 << 20);
  EXPECT_LT(stats.bytes_written, (24 << 20) + 16384);
  ExpectLoads(m, 1);
  m.Grow(1);
  MustCommit(m.Snapshot(), 1000);
  ExpectLoads(m, 2);
  auto bytes = store_->Export(m.meta().session_id);
  ASSERT_TRUE(bytes.ok());
  const std::string id = NewId();
  ASSERT_TRUE(store_->Import(*bytes, id, m.meta().model_fingerprint).ok());
  auto loaded = store_->Load(id);
  ASSERT_TRUE(loaded.ok());
  SessionSnapshot want = m.Expected(2);
  want.meta.session_id = id;
  want.meta.snapshot_seq = 1;
  EXPECT_TRUE(SameSnapshot(*loaded, want));
}

TEST_P(StateStoreContractTest, ReadersSeeWholeSnapshotsUnderConcurrentCommits) {
  constexpr int kWriters = 3;
  constexpr int kCommits = 15;
  std::vector<std::string> ids;
  for (int w = 0; w < kWriters; ++w) ids.push_back(NewId());
  std::atomic<bool> done{false};
  std::atomic<int> bad_loads{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      SessionModel m(ids[w], SmallHybridShape(), 50 + w);
      for (int c = 0; c < kCommits; ++c) {
        const int64_t before = m.num_tokens();
        m.Grow(7 + c);
        auto stats = store_->Commit(m.Snapshot(before / 4), before);
        if (!stats.ok()) ADD_FAILURE() << stats.status();
      }
    });
  }
  threads.emplace_back([&] {
    while (!done) {
      for (const std::string& id : ids) {
        auto s = store_->Load(id);
        if (!s.ok() && !absl::IsNotFound(s.status())) {
          ++bad_loads;
          ADD_FAILURE() << s.status();
        }
      }
    }
  });
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  done = true;
  threads.back().join();
  EXPECT_EQ(bad_loads, 0);
  for (const std::string& id : ids) {
    auto meta = store_->GetMeta(id);
    ASSERT_TRUE(meta.ok());
    EXPECT_EQ(meta->snapshot_seq, static_cast<uint64_t>(kCommits));
  }
}

// Records what a store reports to its observer.
class RecordingObserver final : public StateStoreObserver {
 public:
  void OnWrite(int64_t bytes, absl::Duration took) override {
    absl::MutexLock lock(&mu_);
    writes_.push_back(bytes);
    EXPECT_GE(took, absl::ZeroDuration());
  }
  void OnRead(int64_t bytes) override {
    absl::MutexLock lock(&mu_);
    reads_.push_back(bytes);
  }
  std::vector<int64_t> TakeWrites() {
    absl::MutexLock lock(&mu_);
    return std::exchange(writes_, {});
  }
  std::vector<int64_t> TakeReads() {
    absl::MutexLock lock(&mu_);
    return std::exchange(reads_, {});
  }

 private:
  absl::Mutex mu_;
  std::vector<int64_t> writes_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> reads_ ABSL_GUARDED_BY(mu_);
};

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Every write reaches the observer with the bytes the commit reports; reads
// report what they read; nothing is reported after the observer is removed.
TEST_P(StateStoreContractTest, ObserverSeesWritesAndReads) {
  RecordingObserver observer;
  auto* store = static_cast<KeyValueStateStore*>(store_.get());
  store->SetObserver(&observer);
  SessionModel m(NewId(), SmallHybridShape(), 21);
  m.Grow(37);
  const CommitStats first = MustCommit(m.Snapshot(), 0);
  // A new session's commit only puts records.
  EXPECT_EQ(observer.TakeWrites(), std::vector<int64_t>{first.bytes_written});
  // It read the (absent) metadata first: nothing.
  EXPECT_EQ(Sum(observer.TakeReads()), 0);

  m.Grow(10);
  const CommitStats second = MustCommit(m.Snapshot(), 37);
  EXPECT_EQ(observer.TakeWrites(), std::vector<int64_t>{second.bytes_written});
  // The previous metadata was read to extend it.
  EXPECT_GT(Sum(observer.TakeReads()), 0);

  ExpectLoads(m, 2);
  // A load reads at least the state it returns.
  EXPECT_GT(Sum(observer.TakeReads()), 4 * (2 * 16 * 47));
  auto exported = store_->Export(m.meta().session_id);
  ASSERT_TRUE(exported.ok());
  EXPECT_GT(Sum(observer.TakeReads()), 4 * (2 * 16 * 47));
  EXPECT_TRUE(observer.TakeWrites().empty());

  ASSERT_TRUE(store_->Delete(m.meta().session_id).ok());
  const std::vector<int64_t> deletes = observer.TakeWrites();
  ASSERT_EQ(deletes.size(), 1u);
  EXPECT_GT(deletes[0], 0);
  // A failed write (an unknown session's delete writes nothing) is not
  // reported.
  EXPECT_EQ(store_->Delete(m.meta().session_id).code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(observer.TakeWrites().empty());

  store->SetObserver(nullptr);
  observer.TakeReads();
  MustCommit(m.Snapshot(), 0);
  ExpectLoads(m, 1);
  EXPECT_TRUE(observer.TakeWrites().empty());
  EXPECT_TRUE(observer.TakeReads().empty());
}

INSTANTIATE_TEST_SUITE_P(
    Stores, StateStoreContractTest,
    ::testing::Values(
        StoreKind{"InMemory",
                  [](const std::string&) -> std::unique_ptr<StateStore> {
                    return std::make_unique<InMemoryStateStore>();
                  }},
        StoreKind{"RocksDb",
                  [](const std::string& dir) -> std::unique_ptr<StateStore> {
                    RocksDbStateStore::Options options;
                    options.path = dir;
                    auto store = RocksDbStateStore::Create(options);
                    EXPECT_TRUE(store.ok()) << store.status();
                    if (!store.ok()) return nullptr;
                    return *std::move(store);
                  }}),
    [](const ::testing::TestParamInfo<StoreKind>& info) {
      return info.param.name;
    });

}  // namespace
}  // namespace deltaserve
