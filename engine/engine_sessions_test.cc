// Sessions in the engine, on the demo model with an in-memory and a RocksDB
// state store: a session continued call by call computes exactly what one
// uninterrupted request computes, through pauses, evictions, preemption,
// forks, export and import.
#include <filesystem>

#include "engine/engine.h"
#include "engine/engine_test_util.h"
#include "engine/state_store/in_memory_state_store.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"

namespace deltaserve {
namespace {

using testing::DemoModel;
using testing::DemoPromptIds;
using testing::Greedy;
using testing::RunRequest;
using Result = testing::RunResult;

std::unique_ptr<Engine> MakeEngine(StateStore* store,
                                   Engine::Options options = {}) {
  options.state_store = store;
  if (options.kv_capacity_tokens == Engine::Options().kv_capacity_tokens) {
    options.kv_capacity_tokens = 4096;
  }
  auto engine =
      Engine::Create(&DemoModel(), std::move(*CpuKernels::Create({})), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Two turns without sessions: the reference the session tests match.
struct Reference {
  std::vector<int32_t> a, b, out1, out2;
};

const Reference& Ref() {
  static const Reference* ref = [] {
    auto* r = new Reference;
    r->a = DemoPromptIds(0);
    r->b = DemoPromptIds(1);
    InMemoryStateStore unused;
    auto engine = MakeEngine(nullptr);
    r->out1 = RunRequest(*engine, Greedy(r->a, 12)).ids;
    // The second turn sees the first turn's input and output.
    r->out2 =
        RunRequest(*engine, Greedy(Concat({r->a, r->out1, r->b}), 12)).ids;
    return r;
  }();
  return *ref;
}

std::string NewSession(Engine& engine) {
  absl::StatusOr<SessionInfo> info = engine.CreateSession();
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? info->meta.session_id : "";
}

TEST(EngineSessionsTest, TwoTurnsMatchOneUninterruptedRequest) {
  InMemoryStateStore store;
  auto engine = MakeEngine(&store);
  const std::string id = NewSession(*engine);
  ASSERT_EQ(id.size(), 32u);
  Result t1 = RunRequest(*engine, Greedy(Ref().a, 12, id));
  ASSERT_TRUE(t1.end.error.ok()) << t1.end.error;
  EXPECT_EQ(t1.ids, Ref().out1);
  EXPECT_EQ(t1.end.session_tokens,
            static_cast<int64_t>(Ref().a.size() + Ref().out1.size()));
  EXPECT_EQ(t1.end.session_snapshot_seq, 2u);
  absl::StatusOr<SessionInfo> info = engine->GetSession(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tier, SessionTier::kDevice);
  EXPECT_EQ(info->num_tokens, t1.end.session_tokens);
  // The stored snapshot agrees: history, and state of all but the last
  // (sampled, not yet fed) token.
  absl::StatusOr<SessionSnapshot> snap = store.Load(id);
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->tokens, Concat({Ref().a, Ref().out1}));
  EXPECT_EQ(snap->meta.num_tokens, t1.end.session_tokens - 1);

  Result t2 = RunRequest(*engine, Greedy(Ref().b, 12, id));
  ASSERT_TRUE(t2.end.error.ok()) << t2.end.error;
  EXPECT_EQ(t2.ids, Ref().out2);
}

// A graceful drain: admitted requests run to their end and commit their
// sessions; new work is refused with UNAVAILABLE; reading calls still work.
TEST(EngineSessionsTest, DrainFinishesAdmittedRequestsAndRefusesNewOnes) {
  InMemoryStateStore store;
  auto engine = MakeEngine(&store);
  const std::string id = NewSession(*engine);
  constexpr int kTokens = 200;
  auto stream = engine->Submit(Greedy(Ref().a, kTokens, id));
  ASSERT_TRUE(stream.ok()) << stream.status();
  GenerationEvent ev;
  ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
  std::vector<int32_t> ids = ev.token_ids;

  engine->StopAdmitting();
  EXPECT_EQ(engine->Submit(Greedy(Ref().b, 4)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->CreateSession().status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->ForkSession(id).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(engine->GetSession(id).ok());

  while (!ev.finished) {
    ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60))) << "stream stalled";
    ids.insert(ids.end(), ev.token_ids.begin(), ev.token_ids.end());
  }
  ASSERT_TRUE(ev.error.ok()) << ev.error;
  EXPECT_EQ(ev.finish_reason, FinishReason::kLength);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTokens));
  EXPECT_TRUE(engine->WaitUntilIdle(absl::Seconds(60)));
  engine->Shutdown();
  absl::StatusOr<SessionSnapshot> snap = store.Load(id);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->tokens, Concat({Ref().a, ids}));
}

// A drain whose deadline passes: WaitUntilIdle says so, and Shutdown ends
// the request with what it fed committed.
TEST(EngineSessionsTest, DrainDeadlineCancelsAndCommits) {
  InMemoryStateStore store;
  auto engine = MakeEngine(&store);
  const std::string id = NewSession(*engine);
  auto stream = engine->Submit(Greedy(Ref().a, 3000, id));
  ASSERT_TRUE(stream.ok()) << stream.status();
  GenerationEvent ev;
  ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60)));
  engine->StopAdmitting();
  EXPECT_FALSE(engine->WaitUntilIdle(absl::Milliseconds(1)));
  engine->Shutdown();
  while (!ev.finished) {
    ASSERT_TRUE((*stream)->Next(&ev, absl::Seconds(60))) << "stream stalled";
  }
  EXPECT_EQ(ev.finish_reason, FinishReason::kCancelled);
  absl::StatusOr<SessionSnapshot> snap = store.Load(id);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(static_cast<int64_t>(snap->tokens.size()), ev.session_tokens);
  EXPECT_TRUE(engine->WaitUntilIdle(absl::Milliseconds(1)));
}

TEST(EngineSessionsTest, PauseRestartResumeForkExportImport) {
  const std::string dir =
      std::string(std::getenv("TEST_TMPDIR")) + "/pause_restart";
  std::string id, forked, exported;
  {
    auto store = RocksDbStateStore::Create({.path = dir});
    ASSERT_TRUE(store.ok()) << store.status();
    auto engine = MakeEngine(store->get());
    id = NewSession(*engine);
    ASSERT_EQ(RunRequest(*engine, Greedy(Ref().a, 12, id)).ids, Ref().out1);
    absl::StatusOr<SessionInfo> paused = engine->PauseSession(id);
    ASSERT_TRUE(paused.ok()) << paused.status();
    EXPECT_EQ(paused->tier, SessionTier::kDisk);
    EXPECT_EQ(engine->GetSession(id)->tier, SessionTier::kDisk);
    absl::StatusOr<SessionInfo> fork = engine->ForkSession(id);
    ASSERT_TRUE(fork.ok()) << fork.status();
    forked = fork->meta.session_id;
    EXPECT_NE(forked, id);
    absl::StatusOr<std::string> bytes = engine->ExportSession(id);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    exported = *bytes;
  }
  // A new engine on the same directory: the "restarted server".
  auto store = RocksDbStateStore::Create({.path = dir});
  ASSERT_TRUE(store.ok()) << store.status();
  auto engine = MakeEngine(store->get());
  absl::StatusOr<SessionInfo> resumed = engine->ResumeSession(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->tier, SessionTier::kDevice);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 12, id)).ids, Ref().out2);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 12, forked)).ids, Ref().out2);
  // The export, imported into another store.
  InMemoryStateStore other_store;
  auto other = MakeEngine(&other_store);
  absl::StatusOr<SessionInfo> imported = other->ImportSession(exported);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(
      RunRequest(*other, Greedy(Ref().b, 12, imported->meta.session_id)).ids,
      Ref().out2);
}

TEST(EngineSessionsTest, AppendThenGenerateMatchesOnePrompt) {
  InMemoryStateStore store;
  auto engine = MakeEngine(&store);
  const std::string id = NewSession(*engine);
  GenerationRequest append;
  append.session_id = id;
  append.append_only = true;
  append.prompt = Ref().a;
  Result r = RunRequest(*engine, append);
  ASSERT_TRUE(r.end.error.ok()) << r.end.error;
  EXPECT_TRUE(r.ids.empty());
  EXPECT_EQ(r.end.session_tokens, static_cast<int64_t>(Ref().a.size()));
  // Generating with an empty input continues after the appended text.
  Result g = RunRequest(*engine, Greedy({}, 12, id));
  EXPECT_TRUE(g.end.error.ok()) << g.end.error;
  EXPECT_EQ(g.ids, Ref().out1);
}

TEST(EngineSessionsTest, EvictionUnderMemoryPressureAndIdlePauseKeepResults) {
  InMemoryStateStore store;
  Engine::Options options;
  options.max_running_requests = 2;
  options.max_batched_tokens = 256;
  options.session_host_cache_bytes = 0;  // evicted sessions go to disk
  auto engine = MakeEngine(&store, options);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(NewSession(*engine));
    ASSERT_EQ(RunRequest(*engine, Greedy(Ref().a, 12, ids.back())).ids,
              Ref().out1);
  }
  // Two slots, four sessions: the least recently used went to disk.
  EXPECT_EQ(engine->GetSession(ids[0])->tier, SessionTier::kDisk);
  EXPECT_EQ(engine->GetSession(ids[3])->tier, SessionTier::kDevice);
  EXPECT_GE(engine->stats().session_evictions, 2);
  for (const std::string& id : ids) {
    EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 12, id)).ids, Ref().out2);
  }

  // Idle sessions are paused after the idle timeout.
  Engine::Options idle_options;
  idle_options.session_idle_pause = absl::Milliseconds(20);
  auto idle_engine = MakeEngine(&store, idle_options);
  const std::string id = NewSession(*idle_engine);
  ASSERT_EQ(RunRequest(*idle_engine, Greedy(Ref().a, 12, id)).ids, Ref().out1);
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (idle_engine->GetSession(id)->tier != SessionTier::kDisk &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(idle_engine->GetSession(id)->tier, SessionTier::kDisk);
  EXPECT_EQ(RunRequest(*idle_engine, Greedy(Ref().b, 12, id)).ids, Ref().out2);
}

TEST(EngineSessionsTest, PreemptedSessionsAreCommittedAndResumeExactly) {
  InMemoryStateStore store;
  Engine::Options options;
  options.max_running_requests = 6;
  options.kv_page_size = 16;
  options.kv_capacity_tokens = 160;
  auto engine = MakeEngine(&store, options);
  // References: 40 tokens after a, then 12 after a, those and b.
  auto plain = MakeEngine(nullptr);
  const std::vector<int32_t> out1 = RunRequest(*plain, Greedy(Ref().a, 40)).ids;
  const std::vector<int32_t> out2 =
      RunRequest(*plain, Greedy(Concat({Ref().a, out1, Ref().b}), 12)).ids;
  std::vector<std::string> ids;
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 6; ++i) ids.push_back(NewSession(*engine));
  for (const std::string& id : ids) {
    auto s = engine->Submit(Greedy(Ref().a, 40, id));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(*s);
  }
  for (auto& s : streams) {
    std::vector<int32_t> ids_out;
    GenerationEvent ev;
    while (s->Next(&ev, absl::Seconds(60)) && !ev.finished) {
      ids_out.insert(ids_out.end(), ev.token_ids.begin(), ev.token_ids.end());
    }
    ASSERT_TRUE(ev.finished && ev.error.ok()) << ev.error;
    EXPECT_EQ(ids_out, out1);
  }
  const Engine::Stats stats = engine->stats();
  EXPECT_GT(stats.preemptions, 0);
  // Creation, the end of each request and at least one preemption commit.
  EXPECT_GT(stats.session_commits, 12);
  for (const std::string& id : ids) {
    EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 12, id)).ids, out2);
  }
}

// A call that ends before it feeds anything (cancelled at once, or
// preempted before its first chunk) leaves the session whole: its history
// still ends with the token the last turn sampled. (Found by
// //tests/e2e:session_crash_test: such a call used to commit the history
// without that token.)
TEST(EngineSessionsTest, CallEndingBeforeFeedingKeepsTheWaitingToken) {
  InMemoryStateStore store;
  int64_t tokens = 0;
  std::string id;
  {
    auto engine = MakeEngine(&store);
    id = NewSession(*engine);
    Result t1 = RunRequest(*engine, Greedy(Ref().a, 12, id));
    ASSERT_TRUE(t1.end.error.ok()) << t1.end.error;
    tokens = t1.end.session_tokens;  // out1's last token waits to be fed
    GenerationRequest cancelled = Greedy(Ref().b, 12, id);
    cancelled.is_cancelled = [] { return true; };
    Result c = RunRequest(*engine, std::move(cancelled));
    ASSERT_TRUE(c.end.error.ok()) << c.end.error;
    EXPECT_TRUE(c.ids.empty());
    EXPECT_EQ(c.end.finish_reason, FinishReason::kCancelled);
    EXPECT_EQ(c.end.session_tokens, tokens);
    EXPECT_EQ(engine->GetSession(id)->num_tokens, tokens);
  }
  // What is stored, seen by a new engine, continues as one request would.
  auto engine = MakeEngine(&store);
  EXPECT_EQ(engine->GetSession(id)->num_tokens, tokens);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 12, id)).ids, Ref().out2);
}

TEST(EngineSessionsTest, BadCallsGetTheRightCodes) {
  InMemoryStateStore store;
  auto engine = MakeEngine(&store);
  const std::string unknown(32, 'a');
  EXPECT_EQ(engine->GetSession(unknown).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->GetSession("nope").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().a, 4, unknown)).end.error.code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->PauseSession(unknown).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->DeleteSession(unknown).code(), absl::StatusCode::kNotFound);

  const std::string id = NewSession(*engine);
  // Empty input on a session with nothing to continue from.
  EXPECT_EQ(RunRequest(*engine, Greedy({}, 4, id)).end.error.code(),
            absl::StatusCode::kInvalidArgument);
  // A session in use by a generation refuses other changes.
  auto busy = engine->Submit(Greedy(Ref().a, 200, id));
  ASSERT_TRUE(busy.ok());
  EXPECT_EQ(engine->PauseSession(id).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 4, id)).end.error.code(),
            absl::StatusCode::kAborted);
  GenerationEvent ev;
  ASSERT_TRUE((*busy)->Next(&ev, absl::Seconds(60)));  // a token came
  ASSERT_FALSE(ev.finished);
  (*busy)->Cancel();
  while ((*busy)->Next(&ev, absl::Seconds(60)) && !ev.finished) {
  }
  // Cancelled after generating: the session keeps what was fed.
  EXPECT_TRUE(ev.error.ok());
  EXPECT_GT(ev.session_tokens, static_cast<int64_t>(Ref().a.size()));

  // A damaged stored record: DATA_LOSS for that session only.
  const std::string other = NewSession(*engine);
  ASSERT_TRUE(engine->PauseSession(id).ok());
  ASSERT_TRUE(
      store.CorruptForTesting(id, StoredRecord::kRecurrent, Damage::kFlipByte)
          .ok());
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().b, 4, id)).end.error.code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(engine->ResumeSession(id).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(RunRequest(*engine, Greedy(Ref().a, 12, other)).ids, Ref().out1);
  EXPECT_TRUE(engine->DeleteSession(id).ok());
  EXPECT_EQ(engine->GetSession(id).status().code(),
            absl::StatusCode::kNotFound);

  // Another model's export.
  absl::StatusOr<std::string> bytes = engine->ExportSession(other);
  ASSERT_TRUE(bytes.ok());
  Engine::Options foreign;
  foreign.model_fingerprint = std::string(32, '0');
  InMemoryStateStore foreign_store;
  auto foreign_engine = MakeEngine(&foreign_store, foreign);
  EXPECT_EQ(foreign_engine->ImportSession(*bytes).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(foreign_engine->ImportSession(bytes->substr(0, bytes->size() / 2))
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  absl::StatusOr<SessionList> none = foreign_engine->ListSessions({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->sessions.empty());

  // Without a store, sessions are refused.
  auto plain = MakeEngine(nullptr);
  EXPECT_EQ(plain->CreateSession().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(RunRequest(*plain, Greedy(Ref().a, 4, id)).end.error.code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace deltaserve
