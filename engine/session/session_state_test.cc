// A sequence's state survives the trip device → SavedSequence → StateStore
// (RocksDB on disk, reopened as after a restart) → device, and generation
// continues with exactly the tokens of an uninterrupted run.
#include "engine/session/session_state.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/runner/model_runner.h"
#include "engine/state_store/in_memory_state_store.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";
constexpr char kTinyDir[] = "tests/testdata/qwen35-tiny";
constexpr char kSessionId[] = "0123456789abcdef0123456789abcdef";
constexpr int kPageSize = 16;

std::unique_ptr<Model> LoadOrDie(const std::string& dir) {
  auto model = Model::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) std::abort();
  return std::move(*model);
}

// One model's kernels, state pool and runner: what a server process holds.
class Worker {
 public:
  explicit Worker(const Model* model) : model_(model) {
    kernels_ = std::move(*CpuKernels::Create({}));
    StatePool::Options po;
    po.max_slots = 2;
    po.page_size = kPageSize;
    po.kv_capacity_tokens = 2048;
    pool_ = std::move(*StatePool::Create(model->spec(), po));
    runner_ =
        std::move(*ModelRunner::Create(model, kernels_.get(), pool_.get()));
    slot_ = *pool_->AllocateSlot();
  }

  // Feeds `tokens`; returns the logits of the last one.
  std::vector<float> Feed(absl::Span<const int32_t> tokens) {
    EXPECT_TRUE(pool_->EnsureCapacity(&pages_, pos_ + tokens.size()).ok());
    SequenceInput in{slot_, &pages_, pos_, tokens};
    std::vector<float> logits;
    EXPECT_TRUE(runner_->Forward({in}, false, &logits).ok());
    pos_ += static_cast<int64_t>(tokens.size());
    pool_->ReleaseOutOfWindow(&pages_, pos_);
    return logits;
  }

  // Greedy tokens: `first`, then n − 1 more.
  std::vector<int32_t> Greedy(int32_t first, int n) {
    std::vector<int32_t> out = {first};
    while (static_cast<int>(out.size()) < n) {
      std::vector<float> logits = Feed({out.back()});
      out.push_back(static_cast<int32_t>(
          std::max_element(logits.begin(), logits.end()) - logits.begin()));
    }
    return out;
  }

  SavedSequence Save(int64_t kv_first = 0) const {
    return *pool_->Save(slot_, pages_, pos_, kv_first);
  }
  StatePool& pool() { return *pool_; }
  int slot() const { return slot_; }
  const SeqPages& pages() const { return pages_; }

  void Restore(const SavedSequence& saved) {
    pool_->FreePages(&pages_);
    ASSERT_TRUE(pool_->RestoreCapacity(&pages_, saved.num_tokens).ok());
    ASSERT_TRUE(pool_->Restore(saved, slot_, pages_).ok());
    pos_ = saved.num_tokens;
  }

 private:
  const Model* model_;
  std::unique_ptr<CpuKernels> kernels_;
  std::unique_ptr<StatePool> pool_;
  std::unique_ptr<ModelRunner> runner_;
  int slot_ = -1;
  SeqPages pages_;
  int64_t pos_ = 0;
};

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

SessionMeta Meta(const Model& model) {
  SessionMeta meta;
  meta.session_id = kSessionId;
  meta.model_fingerprint = ModelFingerprint(model);
  meta.tenant = "t";
  meta.created = meta.last_used = absl::FromUnixSeconds(1'800'000'000);
  return meta;
}

TEST(SessionStateTest, PauseRestartResumeContinuesExactly) {
  std::ifstream in(std::string(kDemoDir) + "/golden.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(ss.str());
  const std::unique_ptr<Model> model = LoadOrDie(kDemoDir);
  const std::string dir = ::testing::TempDir() + "/session_state_test_rocksdb";
  std::filesystem::remove_all(dir);
  for (const auto& p : golden["prompts"]) {
    SCOPED_TRACE(p["name"].get<std::string>());
    const auto prompt = p["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = p["greedy32_ids"].get<std::vector<int32_t>>();
    // Prefill, sample the first token, then pause: commit durably.
    {
      Worker w(model.get());
      const int32_t first = Argmax(w.Feed(prompt));
      ASSERT_EQ(first, want[0]);
      std::vector<int32_t> history = prompt;
      history.push_back(first);  // sampled, not yet fed
      RocksDbStateStore::Options so;
      so.path = dir;
      auto store = RocksDbStateStore::Create(so);
      ASSERT_TRUE(store.ok()) << store.status();
      ASSERT_TRUE((*store)
                      ->Commit(ToSnapshot(w.Save(), model->spec(), kPageSize,
                                          Meta(*model), history),
                               0)
                      .ok());
    }  // the worker and the store go away, as in a restart
    // A fresh worker and store on the same directory.
    RocksDbStateStore::Options so;
    so.path = dir;
    auto store = RocksDbStateStore::Create(so);
    ASSERT_TRUE(store.ok()) << store.status();
    auto snap = (*store)->Load(kSessionId);
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(snap->meta.model_fingerprint, ModelFingerprint(*model));
    EXPECT_EQ(snap->meta.num_tokens, static_cast<int64_t>(prompt.size()));
    ASSERT_EQ(snap->tokens.size(), prompt.size() + 1);
    auto saved = FromSnapshot(*snap, model->spec(), kPageSize);
    ASSERT_TRUE(saved.ok()) << saved.status();
    Worker w(model.get());
    w.Restore(*saved);
    EXPECT_EQ(w.Greedy(snap->tokens.back(), 32), want);
  }
}

// The SavedSequence → snapshot → SavedSequence trip is exact, for global and
// sliding-window attention, at lengths on and off page boundaries.
TEST(SessionStateTest, SnapshotRoundTripIsExact) {
  const std::unique_ptr<Model> base = LoadOrDie(kTinyDir);
  ModelSpec swa_spec = base->spec();
  swa_spec.blocks[3].mixer = MixerKind::kSlidingWindowAttention;
  swa_spec.blocks[3].attention.window = 24;
  const std::unique_ptr<Model> swa =
      Model::FromParts("swa", swa_spec, base->weights(), nullptr);
  InMemoryStateStore store;
  for (const Model* model : {base.get(), swa.get()}) {
    for (int len : {5, 16, 37, 64, 150}) {
      SCOPED_TRACE(testing::Message() << model->name() << " " << len);
      Worker w(model);
      std::vector<int32_t> tokens(len);
      for (int i = 0; i < len; ++i) tokens[i] = (i * 37 + 11) % 500;
      w.Feed(tokens);
      const SavedSequence saved = w.Save();
      ASSERT_TRUE(store
                      .Commit(ToSnapshot(saved, model->spec(), kPageSize,
                                         Meta(*model), tokens),
                              0)
                      .ok());
      auto snap = store.Load(kSessionId);
      ASSERT_TRUE(snap.ok()) << snap.status();
      auto back = FromSnapshot(*snap, model->spec(), kPageSize);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->num_tokens, saved.num_tokens);
      EXPECT_EQ(back->window_from, saved.window_from);
      EXPECT_EQ(back->recurrent, saved.recurrent);
      EXPECT_EQ(back->keys, saved.keys);
      EXPECT_EQ(back->values, saved.values);
    }
  }
}

// What the engine commits at the end of a request: the saved state moved
// into the snapshot, and only the KV pages from the last commit's length on
// (StateStore::Commit with unchanged_tokens). Loading it back, moving out of
// the snapshot, gives the state a full copy would.
TEST(SessionStateTest, MovedAndPartialSnapshotsAgreeWithCopies) {
  const std::unique_ptr<Model> base = LoadOrDie(kTinyDir);
  ModelSpec swa_spec = base->spec();
  swa_spec.blocks[3].mixer = MixerKind::kSlidingWindowAttention;
  swa_spec.blocks[3].attention.window = 24;
  const std::unique_ptr<Model> swa =
      Model::FromParts("swa", swa_spec, base->weights(), nullptr);
  for (const Model* model : {base.get(), swa.get()}) {
    for (int first_len : {5, 32, 40}) {
      SCOPED_TRACE(testing::Message() << model->name() << " " << first_len);
      InMemoryStateStore store;
      Worker w(model);
      std::vector<int32_t> tokens(150);
      for (int i = 0; i < 150; ++i) tokens[i] = (i * 37 + 11) % 500;
      w.Feed(absl::MakeConstSpan(tokens).first(first_len));
      ASSERT_TRUE(
          store
              .Commit(
                  ToSnapshot(w.Save(), model->spec(), kPageSize, Meta(*model),
                             std::vector<int32_t>(tokens.begin(),
                                                  tokens.begin() + first_len)),
                  0)
              .ok());
      w.Feed(absl::MakeConstSpan(tokens).subspan(first_len));
      const SavedSequence saved = w.Save();
      const SessionSnapshot copied =
          ToSnapshot(saved, model->spec(), kPageSize, Meta(*model), tokens);
      EXPECT_EQ(ToSnapshot(SavedSequence(saved), model->spec(), kPageSize,
                           Meta(*model), tokens),
                copied);
      const int64_t first_page = first_len / kPageSize;
      const SessionSnapshot partial =
          ToSnapshot(SavedSequence(saved), model->spec(), kPageSize,
                     Meta(*model), tokens, first_page);
      EXPECT_EQ(partial.meta, copied.meta);
      EXPECT_EQ(partial.recurrent, copied.recurrent);
      ASSERT_FALSE(partial.kv_pages.empty());
      EXPECT_EQ(partial.kv_pages.front().page_index,
                std::max(first_page, copied.meta.first_kv_page));
      EXPECT_EQ(partial.kv_pages.back(), copied.kv_pages.back());
      // A copy of only the pages the commit writes gives the same snapshot.
      const SavedSequence part = w.Save(first_page * kPageSize);
      EXPECT_EQ(part.kv_first, first_page * kPageSize);
      EXPECT_LE(part.bytes(), saved.bytes());
      EXPECT_EQ(ToSnapshot(part, model->spec(), kPageSize, Meta(*model), tokens,
                           first_page),
                partial);
      // It cannot be restored.
      if (first_page > 0) {
        EXPECT_EQ(w.pool().Restore(part, w.slot(), w.pages()).code(),
                  absl::StatusCode::kInvalidArgument);
      }
      ASSERT_TRUE(store.Commit(partial, first_len).ok());

      auto snap = store.Load(kSessionId);
      ASSERT_TRUE(snap.ok()) << snap.status();
      SessionSnapshot loaded = *snap;
      auto back = FromSnapshot(std::move(loaded), model->spec(), kPageSize);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(loaded.meta, snap->meta);
      EXPECT_EQ(loaded.tokens, tokens);
      EXPECT_EQ(back->num_tokens, saved.num_tokens);
      EXPECT_EQ(back->window_from, saved.window_from);
      EXPECT_EQ(back->recurrent, saved.recurrent);
      EXPECT_EQ(back->keys, saved.keys);
      EXPECT_EQ(back->values, saved.values);
    }
  }
}

TEST(SessionStateTest, FingerprintAndLayoutGuardAgainstAnotherModel) {
  const std::unique_ptr<Model> a = LoadOrDie(kTinyDir);
  const std::unique_ptr<Model> b = LoadOrDie(kTinyDir);
  EXPECT_EQ(ModelFingerprint(*a), ModelFingerprint(*b));
  EXPECT_EQ(ModelFingerprint(*a).size(), 32u);
  ModelWeights changed = a->weights();
  changed.blocks[1].gdr.a_log.data[0] += 1e-3f;
  const auto c = Model::FromParts("c", a->spec(), changed, nullptr);
  EXPECT_NE(ModelFingerprint(*a), ModelFingerprint(*c));
  const std::unique_ptr<Model> demo = LoadOrDie(kDemoDir);
  EXPECT_NE(ModelFingerprint(*a), ModelFingerprint(*demo));

  Worker w(a.get());
  w.Feed(std::vector<int32_t>{1, 2, 3});
  const SessionSnapshot snap =
      ToSnapshot(w.Save(), a->spec(), kPageSize, Meta(*a), {1, 2, 3});
  EXPECT_EQ(FromSnapshot(snap, demo->spec(), kPageSize).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FromSnapshot(snap, a->spec(), 32).status().code(),
            absl::StatusCode::kFailedPrecondition);
  SessionSnapshot broken = snap;
  broken.kv_pages.clear();
  EXPECT_EQ(FromSnapshot(broken, a->spec(), kPageSize).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace deltaserve
