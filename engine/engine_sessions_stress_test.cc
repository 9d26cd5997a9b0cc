// Sessions continued, paused and resumed concurrently by many callers on an
// engine short of slots and KV pages, with a state store as slow as a disk:
// every call succeeds and every turn extends its session exactly.
//
// Regression test for a race that //tests/e2e:session_crash_test found: the
// engine planned a step counting an idle session's device memory as free,
// another thread claimed that session (a Generate, pause or resume) before
// the step evicted it, and the step then failed a request with INTERNAL
// ("KV cache full: cannot restore", "all N sequence state slots are in
// use"). The race needs callers that leave sessions idle on the device for a
// moment between calls, hence the random think time below; without the fix
// this test failed in most runs within a few seconds.
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/state_store/in_memory_state_store.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";

// An in-memory store whose commits and loads take as long as a synced disk
// write or read, which widens the engine's windows between planning a step
// and applying it. Thread-safe.
class SlowStateStore : public StateStore {
 public:
  absl::StatusOr<CommitStats> Commit(const SessionSnapshot& snapshot,
                                     int64_t unchanged_tokens) override {
    absl::SleepFor(kLatency);
    return store_.Commit(snapshot, unchanged_tokens);
  }
  absl::StatusOr<SessionSnapshot> Load(absl::string_view id) override {
    absl::SleepFor(kLatency);
    return store_.Load(id);
  }
  absl::StatusOr<SessionMeta> GetMeta(absl::string_view id) override {
    return store_.GetMeta(id);
  }
  absl::StatusOr<ListResult> List(const ListOptions& options) override {
    return store_.List(options);
  }
  absl::Status Delete(absl::string_view id) override {
    return store_.Delete(id);
  }
  absl::StatusOr<std::string> Export(absl::string_view id) override {
    return store_.Export(id);
  }
  absl::StatusOr<SessionMeta> Import(absl::string_view bytes,
                                     absl::string_view new_session_id,
                                     absl::string_view fingerprint) override {
    return store_.Import(bytes, new_session_id, fingerprint);
  }
  absl::Status CorruptForTesting(absl::string_view id, StoredRecord record,
                                 Damage damage) override {
    return store_.CorruptForTesting(id, record, damage);
  }

 private:
  static constexpr absl::Duration kLatency = absl::Milliseconds(10);
  InMemoryStateStore store_;
};

TEST(EngineSessionsStressTest, ConcurrentTurnsPausesAndResumesAllSucceed) {
  constexpr int kSessions = 12;
  constexpr int kTurnsPerSession = 30;
  constexpr int kMaxHistory = 480;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(kDemoDir);
  ASSERT_TRUE(model.ok()) << model.status();
  SlowStateStore store;
  Engine::Options options;
  options.state_store = &store;
  options.max_running_requests = 4;
  options.max_batched_tokens = 32;
  options.kv_capacity_tokens = 1024;
  options.session_host_cache_bytes = 2000000;
  absl::StatusOr<std::unique_ptr<Kernels>> kernels = CpuKernels::Create({});
  ASSERT_TRUE(kernels.ok()) << kernels.status();
  absl::StatusOr<std::unique_ptr<Engine>> created =
      Engine::Create(model->get(), *std::move(kernels), options);
  ASSERT_TRUE(created.ok()) << created.status();
  Engine& engine = **created;

  absl::Mutex mu;
  std::vector<std::string> errors;
  auto fail = [&](std::string error) {
    absl::MutexLock lock(&mu);
    errors.push_back(std::move(error));
  };
  std::vector<std::thread> callers;
  for (int i = 0; i < kSessions; ++i) {
    callers.emplace_back([&, i] {
      std::mt19937 rng(i + 1);
      auto uniform = [&rng](int lo, int hi) {
        return std::uniform_int_distribution<int>(lo, hi)(rng);
      };
      absl::StatusOr<SessionInfo> session = engine.CreateSession();
      if (!session.ok()) return fail(session.status().ToString());
      std::string id = session->meta.session_id;
      int64_t tokens = 0;
      for (int turn = 0; turn < kTurnsPerSession; ++turn) {
        // Think time: the session sits idle on the device meanwhile.
        absl::SleepFor(absl::Microseconds(uniform(0, 3000)));
        if (uniform(0, 3) == 0) {
          absl::StatusOr<SessionInfo> paused = engine.PauseSession(id);
          if (!paused.ok()) return fail(paused.status().ToString());
        }
        if (uniform(0, 3) == 0) {
          absl::StatusOr<SessionInfo> resumed = engine.ResumeSession(id);
          if (!resumed.ok()) return fail(resumed.status().ToString());
        }
        GenerationRequest request;
        request.prompt.resize(uniform(1, 16));
        for (int32_t& t : request.prompt) t = uniform(1, 4000);
        request.max_new_tokens = uniform(1, 32);
        request.ignore_eos = true;
        request.session_id = id;
        const int64_t want = tokens +
                             static_cast<int64_t>(request.prompt.size()) +
                             request.max_new_tokens;
        if (want > kMaxHistory) {  // start over with a new session
          absl::Status deleted = engine.DeleteSession(id);
          if (!deleted.ok()) return fail(deleted.ToString());
          session = engine.CreateSession();
          if (!session.ok()) return fail(session.status().ToString());
          id = session->meta.session_id;
          tokens = 0;
          continue;
        }
        absl::StatusOr<std::shared_ptr<GenerationStream>> stream =
            engine.Submit(std::move(request));
        if (!stream.ok()) return fail(stream.status().ToString());
        GenerationEvent event;
        while (true) {
          if (!(*stream)->Next(&event, absl::Seconds(60))) {
            return fail(absl::StrCat("session ", i, ": stream stalled"));
          }
          if (event.finished) break;
        }
        if (!event.error.ok()) {
          return fail(absl::StrCat("session ", i, ", turn ", turn, ": ",
                                   event.error.ToString()));
        }
        if (event.session_tokens != want) {
          return fail(absl::StrCat("session ", i, ", turn ", turn, ": ",
                                   event.session_tokens, " tokens, want ",
                                   want));
        }
        tokens = want;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(errors.empty()) << absl::StrJoin(errors, "\n");
}

}  // namespace
}  // namespace deltaserve
