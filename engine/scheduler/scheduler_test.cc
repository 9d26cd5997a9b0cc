// The scheduler's policies against a simulated runner and memory pool.
#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>

#include "gtest/gtest.h"

namespace deltaserve {
namespace {

// Slots and pages as counters; Apply() plays the model runner: it feeds the
// planned tokens and finishes requests once they generated `max_new` tokens.
class SimPool : public SchedResources {
 public:
  SimPool(int slots, int64_t pages, int page_size)
      : slots_(slots), pages_(pages), page_size_(page_size) {}

  int FreeSlots() const override { return slots_ - used_slots_; }
  int64_t FreePages() const override {
    int64_t used = 0;
    for (const auto& [seq, n] : held_) used += n;
    return pages_ - used;
  }
  int64_t PagesNeeded(const SchedSeq& seq, int64_t n) const override {
    return Pages(seq.computed + n) - PagesHeld(seq);
  }
  int64_t PagesHeld(const SchedSeq& seq) const override {
    auto it = held_.find(&seq);
    return it == held_.end() ? 0 : it->second;
  }

  struct Req {
    SchedSeq seq;
    int max_new = 0;
    int generated = 0;
    int64_t saved_computed = -1;  // computed when last preempted
  };

  Req* Add(Scheduler& sched, int64_t prompt, int max_new) {
    auto r = std::make_unique<Req>();
    r->seq.id = reqs_.size();
    r->seq.prompt_len = prompt;
    r->max_new = max_new;
    by_seq_[&r->seq] = r.get();
    reqs_.push_back(std::move(r));
    EXPECT_TRUE(sched.Enqueue(&reqs_.back()->seq).ok());
    return reqs_.back().get();
  }

  // Applies a plan like the engine: preempt, admit/resume, run, sample.
  void Apply(Scheduler& sched, const StepPlan& plan) {
    for (SchedSeq* s : plan.preempt) {
      --used_slots_;
      held_.erase(s);
      by_seq_[s]->saved_computed = s->computed;
      ++preemptions_;
    }
    for (SchedSeq* s : plan.admit) {
      ++used_slots_;
      EXPECT_EQ(s->computed, 0);
    }
    for (SchedSeq* s : plan.resume) {
      ++used_slots_;
      // Restored, not recomputed: the state is where it was.
      EXPECT_EQ(s->computed, by_seq_[s]->saved_computed);
      ++resumes_;
    }
    EXPECT_LE(used_slots_, slots_);
    for (const StepPlan::Item& item : plan.batch) {
      SchedSeq* s = item.seq;
      held_[s] = Pages(s->computed + item.num_tokens);
      const bool was_prefill = s->in_prefill();
      if (was_prefill) {
        EXPECT_LE(s->computed + item.num_tokens, s->prompt_len);
      } else {
        EXPECT_EQ(item.num_tokens, 1);
      }
      s->computed += item.num_tokens;
      if (s->computed >= s->prompt_len) {
        s->decoding = true;
        Req* r = by_seq_[s];
        if (++r->generated >= r->max_new) {
          sched.Remove(s);
          held_.erase(s);
          --used_slots_;
          ++finished_;
        }
      }
    }
    EXPECT_GE(FreePages(), 0);
  }

  int finished() const { return finished_; }
  int preemptions() const { return preemptions_; }
  int resumes() const { return resumes_; }
  std::vector<std::unique_ptr<Req>>& reqs() { return reqs_; }
  void Release(SchedSeq* s) {
    if (held_.count(s)) {
      held_.erase(s);
      --used_slots_;
    }
  }

 private:
  int64_t Pages(int64_t tokens) const {
    return (tokens + page_size_ - 1) / page_size_;
  }
  int slots_;
  int64_t pages_;
  int page_size_;
  int used_slots_ = 0;
  int finished_ = 0, preemptions_ = 0, resumes_ = 0;
  std::map<const SchedSeq*, int64_t> held_;
  std::map<const SchedSeq*, Req*> by_seq_;
  std::vector<std::unique_ptr<Req>> reqs_;
};

Scheduler Make(int running, int64_t budget, int queue = 1000) {
  auto s = Scheduler::Create({running, budget, queue});
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(SchedulerTest, RejectsBadOptions) {
  EXPECT_EQ(Scheduler::Create({0, 10, 10}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Scheduler::Create({8, 4, 10}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Scheduler::Create({8, 64, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SchedulerTest, BudgetAndRunningCapAreRespected) {
  Scheduler sched = Make(/*running=*/6, /*budget=*/100);
  SimPool pool(/*slots=*/8, /*pages=*/100000, /*page_size=*/16);
  std::mt19937 rng(3);
  for (int i = 0; i < 40; ++i) {
    pool.Add(sched, 1 + rng() % 300, 1 + rng() % 20);
  }
  int steps = 0;
  while (pool.finished() < 40) {
    StepPlan plan = sched.Schedule(pool);
    ASSERT_LE(plan.num_tokens(), 100);
    ASSERT_GT(plan.num_tokens(), 0) << "stalled at step " << steps;
    pool.Apply(sched, plan);
    ASSERT_LE(sched.num_running(), 6);
    ASSERT_LT(++steps, 10000);
  }
}

TEST(SchedulerTest, LongPromptIsChunkedWhileOthersDecodeEveryStep) {
  Scheduler sched = Make(8, 512);
  SimPool pool(8, 100000, 16);
  std::vector<SimPool::Req*> decoders;
  for (int i = 0; i < 3; ++i) decoders.push_back(pool.Add(sched, 10, 1000));
  // Get the three into their decode phase.
  for (int i = 0; i < 2; ++i) pool.Apply(sched, sched.Schedule(pool));
  for (auto* d : decoders) ASSERT_TRUE(d->seq.decoding);
  SimPool::Req* big = pool.Add(sched, 20000, 1);
  int steps = 0;
  while (big->seq.in_prefill()) {
    StepPlan plan = sched.Schedule(pool);
    int decodes = 0;
    for (const auto& item : plan.batch) {
      if (item.seq == &big->seq) {
        EXPECT_LE(item.num_tokens, 512 - 3);  // the chunk leaves room
      } else {
        EXPECT_EQ(item.num_tokens, 1);
        ++decodes;
      }
    }
    EXPECT_EQ(decodes, 3) << "a decoder missed step " << steps;
    pool.Apply(sched, plan);
    ++steps;
  }
  // 20000 tokens at 509 a step.
  EXPECT_EQ(steps, (20000 + 508) / 509);
}

TEST(SchedulerTest, AdmissionIsFirstComeFirstServed) {
  Scheduler sched = Make(4, 64);
  SimPool pool(4, 1000, 16);
  // The first request's prompt takes the whole budget for a while; the short
  // ones behind it must not be admitted ahead of it.
  SimPool::Req* first = pool.Add(sched, 200, 2);
  SimPool::Req* second = pool.Add(sched, 5, 2);
  StepPlan plan = sched.Schedule(pool);
  ASSERT_EQ(plan.admit.size(), 1u);
  EXPECT_EQ(plan.admit[0], &first->seq);
  pool.Apply(sched, plan);
  EXPECT_EQ(second->seq.phase, SchedSeq::Phase::kWaiting);
}

TEST(SchedulerTest, PreemptsNewestWhenPagesRunOutAndResumesWithoutRecompute) {
  Scheduler sched = Make(8, 256);
  // 24 pages of 4 tokens: not enough for 4 requests of 20 + 40 tokens.
  SimPool pool(8, 24, 4);
  for (int i = 0; i < 4; ++i) pool.Add(sched, 20, 40);
  int steps = 0;
  while (pool.finished() < 4) {
    const std::vector<SchedSeq*> before = sched.running();
    StepPlan plan = sched.Schedule(pool);
    // Victims are the most recently admitted: a suffix of the running order.
    for (SchedSeq* p : plan.preempt) {
      const size_t pos =
          std::find(before.begin(), before.end(), p) - before.begin();
      EXPECT_GE(pos, before.size() - plan.preempt.size());
    }
    pool.Apply(sched, plan);
    ASSERT_LT(++steps, 5000) << "no progress";
  }
  EXPECT_GT(pool.preemptions(), 0);
  EXPECT_EQ(pool.resumes(), pool.preemptions());
  for (auto& r : pool.reqs()) EXPECT_EQ(r->generated, 40);
}

TEST(SchedulerTest, RequestLargerThanItsShareWaitsInsteadOfStarving) {
  Scheduler sched = Make(8, 1000);
  SimPool pool(8, 40, 4);  // 160 tokens of KV in all
  SimPool::Req* a = pool.Add(sched, 100, 20);
  SimPool::Req* b = pool.Add(sched, 100, 20);  // cannot fit beside a
  int steps = 0;
  while (pool.finished() < 2) {
    pool.Apply(sched, sched.Schedule(pool));
    ASSERT_LT(++steps, 5000);
  }
  EXPECT_EQ(a->generated, 20);
  EXPECT_EQ(b->generated, 20);
}

TEST(SchedulerTest, TwoLongPromptsThatDoNotFitTogetherBothFinish) {
  // 30 pages of 4 tokens = 120 tokens: two 100-token prompts admitted
  // together run out of pages half-way; the older one must not wait on the
  // newer forever.
  Scheduler sched = Make(8, 40);
  SimPool pool(8, 30, 4);
  SimPool::Req* a = pool.Add(sched, 100, 5);
  SimPool::Req* b = pool.Add(sched, 100, 5);
  int steps = 0;
  while (pool.finished() < 2) {
    StepPlan plan = sched.Schedule(pool);
    ASSERT_GT(plan.num_tokens(), 0) << "stalled at step " << steps;
    pool.Apply(sched, plan);
    ASSERT_LT(++steps, 1000);
  }
  EXPECT_GT(pool.preemptions(), 0);
  EXPECT_EQ(a->generated, 5);
  EXPECT_EQ(b->generated, 5);
}

TEST(SchedulerTest, RemovedRequestsFreeTheirPlace) {
  Scheduler sched = Make(2, 64);
  SimPool pool(2, 1000, 16);
  SimPool::Req* a = pool.Add(sched, 8, 1000);
  SimPool::Req* b = pool.Add(sched, 8, 1000);
  SimPool::Req* c = pool.Add(sched, 8, 5);
  pool.Apply(sched, sched.Schedule(pool));
  EXPECT_EQ(sched.num_running(), 2);
  EXPECT_EQ(c->seq.phase, SchedSeq::Phase::kWaiting);
  // Cancel a running request: c is admitted in the next step.
  sched.Remove(&a->seq);
  pool.Release(&a->seq);
  StepPlan plan = sched.Schedule(pool);
  ASSERT_EQ(plan.admit.size(), 1u);
  EXPECT_EQ(plan.admit[0], &c->seq);
  for (const auto& item : plan.batch) EXPECT_NE(item.seq, &a->seq);
  pool.Apply(sched, plan);
  // Cancel a waiting request: it is simply gone.
  SimPool::Req* d = pool.Add(sched, 8, 5);
  sched.Remove(&d->seq);
  EXPECT_EQ(sched.num_waiting(), 0);
  (void)b;
}

TEST(SchedulerTest, QueueIsBounded) {
  Scheduler sched = Make(1, 16, /*queue=*/3);
  SimPool pool(1, 1000, 16);
  for (int i = 0; i < 3; ++i) pool.Add(sched, 4, 100);
  SchedSeq extra;
  EXPECT_EQ(sched.Enqueue(&extra).code(), absl::StatusCode::kResourceExhausted);
  pool.Apply(sched, sched.Schedule(pool));  // admits one
  EXPECT_EQ(sched.num_running(), 1);
  EXPECT_TRUE(sched.Enqueue(&extra).ok());
  sched.Remove(&extra);
}

}  // namespace
}  // namespace deltaserve
