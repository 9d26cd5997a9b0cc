#include "engine/scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace deltaserve {
namespace {

// Largest m <= n whose pages fit in `free_pages` (PagesNeeded grows with m).
int64_t FitTokens(const SchedResources& r, const SchedSeq& seq, int64_t n,
                  int64_t free_pages) {
  if (n <= 0) return 0;
  if (r.PagesNeeded(seq, n) <= free_pages) return n;
  int64_t lo = 0, hi = n;  // lo fits, hi does not
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (r.PagesNeeded(seq, mid) <= free_pages) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace

int64_t StepPlan::num_tokens() const {
  int64_t n = 0;
  for (const Item& item : batch) n += item.num_tokens;
  return n;
}

absl::StatusOr<Scheduler> Scheduler::Create(const Options& options) {
  if (options.max_running_requests <= 0 || options.max_batched_tokens <= 0 ||
      options.max_queued_requests <= 0) {
    return absl::InvalidArgumentError(
        "scheduler limits (max_running_requests, max_batched_tokens, "
        "max_queued_requests) must be positive");
  }
  if (options.max_batched_tokens < options.max_running_requests) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batched_tokens (", options.max_batched_tokens,
                     ") must be at least max_running_requests (",
                     options.max_running_requests,
                     ") so that every request decodes in "
                     "every step"));
  }
  return Scheduler(options);
}

absl::Status Scheduler::Enqueue(SchedSeq* seq) {
  int queued_new = 0;
  for (const SchedSeq* s : waiting_) {
    if (s->phase == SchedSeq::Phase::kWaiting) ++queued_new;
  }
  if (queued_new >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request queue is full (", options_.max_queued_requests, " waiting)"));
  }
  seq->phase = SchedSeq::Phase::kWaiting;
  waiting_.push_back(seq);
  return absl::OkStatus();
}

absl::Status Scheduler::EnqueueRunning(SchedSeq* seq) {
  if (static_cast<int>(running_.size()) >= options_.max_running_requests) {
    return absl::ResourceExhaustedError(
        absl::StrCat(options_.max_running_requests, " requests are running"));
  }
  seq->phase = SchedSeq::Phase::kRunning;
  running_.push_back(seq);
  return absl::OkStatus();
}

void Scheduler::Remove(SchedSeq* seq) {
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq),
                 waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), seq),
                 running_.end());
  seq->phase = SchedSeq::Phase::kDone;
}

StepPlan Scheduler::Schedule(const SchedResources& r) {
  StepPlan plan;
  int64_t budget = options_.max_batched_tokens;
  int64_t free_pages = r.FreePages();
  int free_slots = r.FreeSlots();

  // Preempts the newest running request, giving back what this plan had
  // already given it.
  std::vector<SchedSeq*> preempted;  // newest first
  auto preempt_newest = [&]() -> SchedSeq* {
    SchedSeq* victim = running_.back();
    running_.pop_back();
    for (auto it = plan.batch.begin(); it != plan.batch.end(); ++it) {
      if (it->seq == victim) {
        free_pages += r.PagesNeeded(*victim, it->num_tokens);
        budget += it->num_tokens;
        plan.batch.erase(it);
        break;
      }
    }
    free_pages += r.PagesHeld(*victim);
    ++free_slots;
    victim->phase = SchedSeq::Phase::kPreempted;
    plan.preempt.push_back(victim);
    preempted.push_back(victim);
    return victim;
  };

  // 1. One decode token for every generating request, preempting the newest
  //    running requests when pages run out.
  for (size_t i = 0; i < running_.size();) {
    SchedSeq* s = running_[i];
    if (!s->decoding) {
      ++i;
      continue;
    }
    const int64_t need = r.PagesNeeded(*s, 1);
    bool self_preempted = false;
    while (need > free_pages) {
      if (preempt_newest() == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // s was the newest: nothing after it remains
    free_pages -= need;
    budget -= 1;
    plan.batch.push_back({s, 1});
    ++i;
  }

  // 2. Prefill chunks for running requests still in their prompt, oldest
  //    first. An older prompt that has no pages for its next chunk preempts
  //    newer requests rather than wait on them (two half-prefilled prompts
  //    could otherwise wait on each other forever).
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    SchedSeq* s = running_[i];
    if (!s->in_prefill()) continue;
    const int64_t want = std::min(s->prompt_len - s->computed, budget);
    int64_t n = FitTokens(r, *s, want, free_pages);
    while (n == 0 && running_.size() > i + 1) {
      preempt_newest();
      n = FitTokens(r, *s, std::min(s->prompt_len - s->computed, budget),
                    free_pages);
    }
    if (n == 0) continue;
    free_pages -= r.PagesNeeded(*s, n);
    budget -= n;
    plan.batch.push_back({s, n});
  }
  // Preempted requests wait at the front, oldest first.
  for (SchedSeq* victim : preempted) waiting_.push_front(victim);

  // 3. Admission, in queue order; stops at the first request that does not
  //    fit so that later ones never overtake it.
  while (!waiting_.empty() && budget > 0 && free_slots > 0 &&
         static_cast<int>(running_.size()) < options_.max_running_requests) {
    SchedSeq* s = waiting_.front();
    if (std::find(preempted.begin(), preempted.end(), s) != preempted.end()) {
      break;  // preempted in this very step
    }
    const int64_t want =
        s->decoding ? 1 : std::min(s->prompt_len - s->computed, budget);
    const int64_t n = FitTokens(r, *s, want, free_pages);
    if (n == 0) break;
    waiting_.pop_front();
    const bool resume = s->phase == SchedSeq::Phase::kPreempted;
    (resume ? plan.resume : plan.admit).push_back(s);
    s->phase = SchedSeq::Phase::kRunning;
    running_.push_back(s);
    --free_slots;
    free_pages -= r.PagesNeeded(*s, n);
    budget -= n;
    plan.batch.push_back({s, n});
  }
  return plan;
}

}  // namespace deltaserve
