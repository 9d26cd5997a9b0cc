// The Engine's sessions: the session table, claims, eviction between
// device, host and disk, and the commit of a session request's state.
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "engine/engine_internal.h"
#include "engine/metrics/metrics.h"
#include "engine/session/fla_cache.h"
#include "engine/session/session_state.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

SessionTier TierOf(bool on_device, bool in_host) {
  if (on_device) return SessionTier::kDevice;
  return in_host ? SessionTier::kHost : SessionTier::kDisk;
}

}  // namespace

absl::Status Engine::CheckSessions() const {
  if (options_.state_store == nullptr) {
    return absl::FailedPreconditionError(
        "this server keeps no sessions (it has no state store)");
  }
  return absl::OkStatus();
}

std::string Engine::NewSessionId() {
  // 128 bits from the kernel's cryptographic generator: ids cannot be
  // guessed from others.
  uint64_t bits[2] = {0, 0};
  size_t got = 0;
  while (got < sizeof(bits)) {
    const ssize_t n =
        getrandom(reinterpret_cast<char*>(bits) + got, sizeof(bits) - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      // No kernel generator (Linux before 3.17): fall back to a seeded one.
      absl::BitGen gen;
      bits[0] = absl::Uniform<uint64_t>(gen);
      bits[1] = absl::Uniform<uint64_t>(gen);
      break;
    }
  }
  return absl::StrFormat("%016x%016x", bits[0], bits[1]);
}

SessionInfo Engine::InfoFromMeta(const SessionMeta& meta) const {
  SessionInfo info;
  info.meta = meta;
  info.tier = SessionTier::kDisk;
  info.num_tokens = meta.history_tokens;
  return info;
}

SessionInfo Engine::InfoLocked(const Session& s) const {
  SessionInfo info = InfoFromMeta(s.meta);
  info.tier = s.tier;
  info.busy = s.busy;
  info.meta.last_used = std::max(info.meta.last_used, s.last_used);
  return info;
}

absl::StatusOr<Engine::Session*> Engine::Claim(absl::string_view id,
                                               bool allow_damaged) {
  DS_RETURN_IF_ERROR(ValidateSessionId(id));
  auto busy_error = [&] {
    return absl::AbortedError(
        absl::StrCat("session ", id, " is in use by another call"));
  };
  // An idle session in memory is claimed only while the engine thread is
  // not relying on it staying idle (FreezeIdleSessions).
  auto claimable = [this, id]() ABSL_SHARED_LOCKS_REQUIRED(sessions_mu_) {
    if (idle_frozen_ == 0) return true;
    auto it = sessions_.find(id);
    return it == sessions_.end() || it->second->busy;
  };
  {
    absl::MutexLock lock(&sessions_mu_);
    sessions_mu_.Await(absl::Condition(&claimable));
    auto it = sessions_.find(id);
    if (it != sessions_.end()) {
      if (it->second->busy) return busy_error();
      it->second->busy = true;
      return it->second.get();
    }
  }
  absl::StatusOr<SessionMeta> meta = options_.state_store->GetMeta(id);
  if (!meta.ok() && !(allow_damaged && absl::IsDataLoss(meta.status()))) {
    return meta.status();
  }
  absl::MutexLock lock(&sessions_mu_);
  sessions_mu_.Await(absl::Condition(&claimable));
  auto it = sessions_.find(id);
  if (it != sessions_.end()) {  // another call loaded it meanwhile
    if (it->second->busy) return busy_error();
    it->second->busy = true;
    return it->second.get();
  }
  auto s = std::make_unique<Session>();
  s->id = std::string(id);
  if (meta.ok()) {
    s->meta = *std::move(meta);
    s->last_used = s->meta.last_used;
  }
  s->busy = true;
  Session* claimed = s.get();
  sessions_.emplace(claimed->id, std::move(s));
  return claimed;
}

void Engine::Unclaim(Session* s) {
  {
    absl::MutexLock lock(&sessions_mu_);
    s->busy = false;
    s->last_used = clock_->Now();
    s->tier = TierOf(s->on_device(), s->host.has_value());
    if (!s->resident()) sessions_.erase(s->id);
  }
  // The engine thread recomputes when idle sessions expire.
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void Engine::RunOnEngine(std::function<void()> fn) {
  absl::Notification done;
  bool run_inline = false;
  {
    absl::MutexLock lock(&mu_);
    if (loop_exited_) {
      run_inline = true;
    } else {
      ops_.push_back([&fn, &done] {
        fn();
        done.Notify();
      });
    }
  }
  if (run_inline) {
    absl::MutexLock lock(&inline_ops_mu_);
    fn();
    return;
  }
  done.WaitForNotification();
}

void Engine::RunOps() {
  std::deque<std::function<void()>> ops;
  {
    absl::MutexLock lock(&mu_);
    ops.swap(ops_);
  }
  for (auto& op : ops) op();
}

void Engine::FreeState(Session* s, bool to_host) {
  StatePool& pool = *in_->pool;
  if (s->on_device()) {
    if (to_host) {
      int64_t host_bytes = 0;
      {
        absl::MutexLock lock(&sessions_mu_);
        for (const auto& [id, other] : sessions_) {
          // A busy session's owner may be changing its host copy.
          if (!other->busy && other->host.has_value()) {
            host_bytes += other->host->bytes();
          }
        }
      }
      // A failed copy leaves the session on disk only (it is committed).
      absl::StatusOr<SavedSequence> saved =
          pool.Save(s->slot, s->pages, s->meta.num_tokens);
      if (saved.ok() &&
          host_bytes + saved->bytes() <= options_.session_host_cache_bytes) {
        s->host = *std::move(saved);
      }
    }
    pool.FreeSlot(s->slot);
    s->slot = -1;
    pool.FreePages(&s->pages);
    ++in_->session_evictions;
  }
  if (!to_host) s->host.reset();
  if (!s->resident()) {
    s->loaded = false;
    s->tokens.clear();
    s->tokens.shrink_to_fit();
  }
}

void Engine::EvictIdle(int slots, int64_t pages) {
  if (options_.state_store == nullptr) return;
  FreezeIdleSessions();
  absl::Cleanup thaw = [this] { ThawIdleSessions(); };
  const StatePool& pool = *in_->pool;
  const absl::Time now = clock_->Now();
  const absl::Duration idle = options_.session_idle_pause;
  std::vector<std::pair<absl::Time, Session*>> idle_device, idle_host;
  std::vector<Session*> expired;
  {
    absl::MutexLock lock(&sessions_mu_);
    for (const auto& [id, s] : sessions_) {
      if (s->busy || !s->resident()) continue;
      if (idle > absl::ZeroDuration() && now - s->last_used >= idle) {
        expired.push_back(s.get());
      } else if (s->on_device()) {
        idle_device.push_back({s->last_used, s.get()});
      } else {
        idle_host.push_back({s->last_used, s.get()});
      }
    }
  }
  // Idle sessions are not busy, and stay so while frozen, so only this
  // thread touches their state; the table lock guards the tier and the map.
  auto settle = [this](Session* s) {
    absl::MutexLock lock(&sessions_mu_);
    s->tier = TierOf(s->on_device(), s->host.has_value());
    if (!s->resident()) sessions_.erase(s->id);
  };
  // Sessions leaving the device or expiring are paused automatically:
  // timed as pauses.
  auto pause = [&](Session* s, bool to_host) {
    const absl::Time pausing = clock_->Now();
    FreeState(s, to_host);
    settle(s);
    if (metrics_ != nullptr) {
      metrics_->ObserveSessionPause(clock_->Now() - pausing);
    }
  };
  for (Session* s : expired) pause(s, /*to_host=*/false);
  std::sort(idle_device.begin(), idle_device.end());
  for (auto& [t, s] : idle_device) {
    if (pool.free_slots() >= slots && pool.free_pages() >= pages) break;
    pause(s, /*to_host=*/true);
  }
  // Trim the host cache, least recently used first (what FreeState just
  // moved there included).
  int64_t host_bytes = 0;
  idle_host.clear();
  {
    absl::MutexLock lock(&sessions_mu_);
    for (const auto& [id, s] : sessions_) {
      // A busy session's owner may be changing its host copy.
      if (s->busy || !s->host.has_value()) continue;
      host_bytes += s->host->bytes();
      idle_host.push_back({s->last_used, s.get()});
    }
  }
  std::sort(idle_host.begin(), idle_host.end());
  for (auto& [t, s] : idle_host) {
    if (host_bytes <= options_.session_host_cache_bytes) break;
    host_bytes -= s->host->bytes();
    FreeState(s, /*to_host=*/false);
    settle(s);
  }
}

absl::Time Engine::NextIdleExpiry() const {
  if (options_.state_store == nullptr ||
      options_.session_idle_pause <= absl::ZeroDuration()) {
    return absl::InfiniteFuture();
  }
  absl::Time next = absl::InfiniteFuture();
  absl::MutexLock lock(&sessions_mu_);
  for (const auto& [id, s] : sessions_) {
    if (s->busy || !s->resident()) continue;
    next = std::min(next, s->last_used + options_.session_idle_pause);
  }
  return next;
}

void Engine::CountIdleSessions() {
  Resources& r = *in_->resources;
  r.idle_slots = 0;
  r.idle_pages = 0;
  absl::MutexLock lock(&sessions_mu_);
  for (const auto& [id, s] : sessions_) {
    if (s->busy || !s->on_device()) continue;
    ++r.idle_slots;
    r.idle_pages += s->pages.held();
  }
}

void Engine::FreezeIdleSessions() {
  absl::MutexLock lock(&sessions_mu_);
  ++idle_frozen_;
}

void Engine::ThawIdleSessions() {
  absl::MutexLock lock(&sessions_mu_);
  --idle_frozen_;
}

absl::Status Engine::PrepareSessionRequest(Session* s,
                                           GenerationRequest* request,
                                           Request* r) {
  if (!s->loaded) {
    DS_ASSIGN_OR_RETURN(SessionSnapshot snap,
                        options_.state_store->Load(s->id));
    // Moves the recurrent state out of `snap`; its meta and tokens stay.
    DS_ASSIGN_OR_RETURN(
        SavedSequence saved,
        FromSnapshot(std::move(snap), model_->spec(), options_.kv_page_size));
    {
      absl::MutexLock lock(&sessions_mu_);
      s->meta = snap.meta;
    }
    s->tokens = std::move(snap.tokens);
    s->host = std::move(saved);
    s->loaded = true;
  }
  const int64_t history = static_cast<int64_t>(s->tokens.size());
  const int64_t total = history + static_cast<int64_t>(request->prompt.size());
  if (total == s->meta.num_tokens) {
    return absl::InvalidArgumentError(
        "input is empty and the session has no token waiting to be fed");
  }
  const int64_t limit = context_limit();
  if (request->append_only ? total > limit : total >= limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", s->id, " would hold ", total,
                     " tokens; this server's context limit is ", limit));
  }
  r->tokens.reserve(total + (request->append_only ? 0 : 1));
  r->tokens = s->tokens;
  r->tokens.insert(r->tokens.end(), request->prompt.begin(),
                   request->prompt.end());
  r->pos = s->meta.num_tokens;
  r->computed = r->pos;
  r->session = s;
  r->session_history = history;
  // An append feeds all but its last token (see Request::history_len).
  r->prompt_len =
      static_cast<int64_t>(r->tokens.size()) - (request->append_only ? 1 : 0);
  return absl::OkStatus();
}

void Engine::Preempt(Request* r) {
  StatePool& pool = *in_->pool;
  absl::StatusOr<SavedSequence> copied = pool.Save(r->slot, r->pages, r->pos);
  pool.FreeSlot(r->slot);
  r->slot = -1;
  pool.FreePages(&r->pages);
  if (!copied.ok()) {
    r->state_lost = true;
    Fail(r, absl::InternalError(absl::StrCat(
                "copying the state of a preempted request failed: ",
                copied.status().message())));
    return;
  }
  SavedSequence saved = *std::move(copied);
  Session* s = r->session;
  if (s == nullptr) {
    r->saved = std::move(saved);
    return;
  }
  // A session's state goes to the store: a committed snapshot of the
  // session as far as it got.
  const int64_t history_len = r->history_len();
  if (r->pos == s->meta.num_tokens && history_len == s->meta.history_tokens) {
    r->state_on_disk = true;  // already committed
    return;
  }
  SessionMeta meta = s->meta;
  meta.last_used = clock_->Now();
  // KV pages below the last commit's length are stored already.
  SessionSnapshot snap = ToSnapshot(
      saved, model_->spec(), options_.kv_page_size, std::move(meta),
      std::vector<int32_t>(r->tokens.begin(), r->tokens.begin() + history_len),
      s->meta.num_tokens / options_.kv_page_size);
  absl::StatusOr<CommitStats> stats =
      options_.state_store->Commit(snap, s->meta.num_tokens);
  if (!stats.ok()) {
    r->saved = std::move(saved);  // keep it in host memory instead
    return;
  }
  snap.meta.snapshot_seq = stats->snapshot_seq;
  snap.meta.history_tokens = history_len;
  int64_t old_bytes;
  {
    absl::MutexLock lock(&sessions_mu_);
    old_bytes = s->meta.state_bytes();
    s->meta = snap.meta;
  }
  NoteStored(0, snap.meta.state_bytes() - old_bytes);
  s->tokens = std::move(snap.tokens);
  r->state_on_disk = true;
  absl::MutexLock lock(&mu_);
  ++stats_.session_commits;
}

bool Engine::Place(Request* r) {
  StatePool& pool = *in_->pool;
  const bool has_kv = model_->spec().KvBytesPerToken() > 0;
  if (pool.free_slots() == 0) EvictIdle(1, 0);
  absl::StatusOr<int> slot = pool.AllocateSlot();
  if (!slot.ok()) {  // the plan counted free slots: a broken invariant
    Fail(r, absl::InternalError(slot.status().message()));
    return false;
  }
  r->slot = *slot;
  if (r->state_on_disk) {
    absl::StatusOr<SessionSnapshot> snap =
        options_.state_store->Load(r->session->id);
    absl::StatusOr<SavedSequence> saved =
        snap.ok() ? FromSnapshot(*std::move(snap), model_->spec(),
                                 options_.kv_page_size)
                  : absl::StatusOr<SavedSequence>(snap.status());
    if (!saved.ok()) {
      r->state_lost = true;
      Fail(r, saved.status());
      return false;
    }
    r->saved = *std::move(saved);
    r->state_on_disk = false;
  }
  if (r->saved.has_value() && r->saved->num_tokens > 0) {
    absl::Status st = absl::OkStatus();
    if (has_kv) {
      const int64_t need = pool.PagesNeeded(SeqPages(), r->pos, 0);
      if (pool.free_pages() < need) EvictIdle(0, need);
      st = pool.RestoreCapacity(&r->pages, r->pos);
    }
    if (st.ok()) st = pool.Restore(*r->saved, r->slot, r->pages);
    if (!st.ok()) {
      pool.FreeSlot(r->slot);
      r->slot = -1;
      pool.FreePages(&r->pages);
      Fail(r, absl::InternalError(st.message()));
      return false;
    }
  }
  r->saved.reset();
  return true;
}

void Engine::EndSession(Request* r, GenerationEvent end) {
  StatePool& pool = *in_->pool;
  Session* s = r->session;
  r->done = true;
  in_->scheduler->Remove(r);
  {
    absl::MutexLock lock(&mu_);
    --num_owned_;
  }
  auto give_back = [&] {
    if (r->slot >= 0) {
      s->slot = r->slot;
      s->pages = std::move(r->pages);
      r->slot = -1;
      r->pages = SeqPages();
    } else if (r->saved.has_value()) {
      s->host = std::move(r->saved);
      r->saved.reset();
    }
  };
  const int64_t history_len = r->history_len();
  const bool changed =
      r->pos != s->meta.num_tokens || history_len != s->meta.history_tokens;
  // The new state copied off the device, for the commit.
  // Only KV pages from the last commit's last page on are written (full
  // pages are immutable), so only those are copied off the device.
  absl::StatusOr<SavedSequence> device_copy;
  if (changed && !r->state_lost && r->slot >= 0) {
    device_copy = pool.Save(
        r->slot, r->pages, r->pos,
        s->meta.num_tokens / options_.kv_page_size * options_.kv_page_size);
    if (!device_copy.ok()) {
      r->state_lost = true;
      end.finished = true;
      if (end.error.ok()) {
        end.error = absl::InternalError(absl::StrCat(
            "copying the session's new state failed (it stays at its "
            "previous snapshot): ",
            device_copy.status().message()));
      }
    }
  }
  const bool have_state = r->slot >= 0 || r->saved.has_value();
  if (r->state_lost || (changed && !have_state)) {
    // The state is unusable: the session stays at its last commit.
    if (r->slot >= 0) pool.FreeSlot(r->slot);
    r->slot = -1;
    pool.FreePages(&r->pages);
    r->saved.reset();
    s->host.reset();
    s->loaded = false;
    s->tokens.clear();
    Unclaim(s);
    RecordEnd(r->arrival, end);
    r->stream->Push(std::move(end));
    return;
  }
  if (!changed) {
    give_back();
    s->loaded = s->resident();
    if (!s->loaded) s->tokens.clear();
    end.session_tokens = s->meta.history_tokens;
    end.session_snapshot_seq = s->meta.snapshot_seq;
    Unclaim(s);
    RecordEnd(r->arrival, end);
    r->stream->Push(std::move(end));
    return;
  }
  SessionMeta meta = s->meta;
  meta.last_used = clock_->Now();
  std::vector<int32_t> history(r->tokens.begin(),
                               r->tokens.begin() + history_len);
  // The commit writes only what changed since the last one: KV pages below
  // its length are left out of the snapshot, and the saved copy of the
  // device state is moved into it rather than copied again.
  const int64_t unchanged = s->meta.num_tokens;
  const int64_t first_page = unchanged / options_.kv_page_size;
  SessionSnapshot snap;
  if (r->slot >= 0) {
    snap = ToSnapshot(*std::move(device_copy), model_->spec(),
                      options_.kv_page_size, std::move(meta),
                      std::move(history), first_page);
  } else {
    snap = ToSnapshot(*r->saved, model_->spec(), options_.kv_page_size,
                      std::move(meta), std::move(history), first_page);
  }
  give_back();  // the state stays in memory while it is committed
  committer_->Enqueue([this, s, snap = std::move(snap), unchanged,
                       end = std::move(end), stream = r->stream,
                       arrival = r->arrival]() mutable {
    absl::StatusOr<CommitStats> stats =
        options_.state_store->Commit(snap, unchanged);
    if (stats.ok()) {
      snap.meta.snapshot_seq = stats->snapshot_seq;
      snap.meta.history_tokens = static_cast<int64_t>(snap.tokens.size());
      int64_t old_bytes;
      {
        absl::MutexLock lock(&sessions_mu_);
        old_bytes = s->meta.state_bytes();
        s->meta = snap.meta;
      }
      NoteStored(0, snap.meta.state_bytes() - old_bytes);
      s->tokens = std::move(snap.tokens);
      s->loaded = true;
      end.session_tokens = s->meta.history_tokens;
      end.session_snapshot_seq = s->meta.snapshot_seq;
      {
        absl::MutexLock lock(&mu_);
        ++stats_.session_commits;
      }
    } else {
      // Roll the session back to its last commit: drop the new state.
      RunOnEngine([this, s] { FreeState(s, /*to_host=*/false); });
      end.finished = true;
      end.error = absl::Status(
          stats.status().code(),
          absl::StrCat("the session's new state was not stored (it stays at "
                       "its previous snapshot): ",
                       stats.status().message()));
    }
    Unclaim(s);
    RecordEnd(arrival, end);
    stream->Push(std::move(end));
  });
}

// ---------------------------------------------------------------------------
// Session calls

absl::StatusOr<SessionInfo> Engine::CommitNewSession(SessionSnapshot snap) {
  DS_ASSIGN_OR_RETURN(CommitStats stats, options_.state_store->Commit(snap, 0));
  snap.meta.snapshot_seq = stats.snapshot_seq;
  snap.meta.history_tokens = static_cast<int64_t>(snap.tokens.size());
  NoteStored(1, snap.meta.state_bytes());
  {
    absl::MutexLock lock(&mu_);
    ++stats_.session_commits;
  }
  return InfoFromMeta(snap.meta);
}

absl::StatusOr<SessionInfo> Engine::CreateSession() {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_RETURN_IF_ERROR(CheckAdmitting());
  const ModelSpec& spec = model_->spec();
  const std::vector<LayerLayout> layout = SessionLayout(spec);
  SavedSequence empty;
  empty.recurrent.resize(layout.size());
  empty.keys.resize(layout.size());
  empty.values.resize(layout.size());
  for (size_t l = 0; l < layout.size(); ++l) {
    empty.recurrent[l].assign(layout[l].recurrent_floats, 0.f);
  }
  SessionMeta meta;
  meta.session_id = NewSessionId();
  meta.model_fingerprint = fingerprint_;
  meta.created = meta.last_used = clock_->Now();
  SessionSnapshot snap =
      ToSnapshot(empty, spec, options_.kv_page_size, std::move(meta), {});
  return CommitNewSession(std::move(snap));
}

absl::StatusOr<SessionInfo> Engine::GetSession(absl::string_view id) {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_RETURN_IF_ERROR(ValidateSessionId(id));
  {
    absl::MutexLock lock(&sessions_mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end() && !it->second->meta.session_id.empty()) {
      return InfoLocked(*it->second);
    }
  }
  DS_ASSIGN_OR_RETURN(SessionMeta meta, options_.state_store->GetMeta(id));
  return InfoFromMeta(meta);
}

absl::StatusOr<SessionList> Engine::ListSessions(const ListOptions& options) {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_ASSIGN_OR_RETURN(ListResult listed, options_.state_store->List(options));
  SessionList out;
  out.damaged_session_ids = std::move(listed.damaged_session_ids);
  out.next_page_token = std::move(listed.next_page_token);
  absl::MutexLock lock(&sessions_mu_);
  for (SessionMeta& meta : listed.sessions) {
    auto it = sessions_.find(meta.session_id);
    if (it != sessions_.end()) {
      SessionInfo info = InfoLocked(*it->second);
      info.meta = std::move(meta);  // the store's view is as new
      out.sessions.push_back(std::move(info));
    } else {
      out.sessions.push_back(InfoFromMeta(meta));
    }
  }
  return out;
}

absl::StatusOr<SessionInfo> Engine::PauseSession(absl::string_view id) {
  DS_RETURN_IF_ERROR(CheckSessions());
  const absl::Time start = clock_->Now();
  DS_ASSIGN_OR_RETURN(Session * s, Claim(id, /*allow_damaged=*/false));
  // An idle session's memory always equals its last commit: pausing only
  // frees it.
  if (s->resident()) RunOnEngine([this, s] { FreeState(s, false); });
  SessionInfo info = InfoFromMeta(s->meta);
  Unclaim(s);
  if (metrics_ != nullptr) metrics_->ObserveSessionPause(clock_->Now() - start);
  return info;
}

absl::StatusOr<SessionInfo> Engine::ResumeSession(absl::string_view id) {
  DS_RETURN_IF_ERROR(CheckSessions());
  const absl::Time start = clock_->Now();
  DS_ASSIGN_OR_RETURN(Session * s, Claim(id, /*allow_damaged=*/false));
  absl::Status st = absl::OkStatus();
  if (!s->loaded) {
    absl::StatusOr<SessionSnapshot> snap = options_.state_store->Load(s->id);
    absl::StatusOr<SavedSequence> saved =
        snap.ok() ? FromSnapshot(std::move(*snap), model_->spec(),
                                 options_.kv_page_size)
                  : absl::StatusOr<SavedSequence>(snap.status());
    if (saved.ok()) {  // snap's meta and tokens are still there
      {
        absl::MutexLock lock(&sessions_mu_);
        s->meta = snap->meta;
      }
      s->tokens = std::move(snap->tokens);
      s->host = *std::move(saved);
      s->loaded = true;
    } else {
      st = saved.status();
    }
  }
  if (st.ok() && !s->on_device()) {
    RunOnEngine([this, s] {
      StatePool& pool = *in_->pool;
      const bool has_kv = model_->spec().KvBytesPerToken() > 0;
      const int64_t pages =
          has_kv ? pool.PagesNeeded(SeqPages(), s->meta.num_tokens, 0) : 0;
      EvictIdle(1, pages);
      if (pool.free_slots() == 0 || pool.free_pages() < pages) return;
      absl::StatusOr<int> slot = pool.AllocateSlot();
      if (!slot.ok()) return;
      SeqPages seq_pages;
      absl::Status placed =
          has_kv ? pool.RestoreCapacity(&seq_pages, s->meta.num_tokens)
                 : absl::OkStatus();
      if (placed.ok() && s->meta.num_tokens > 0) {
        placed = pool.Restore(*s->host, *slot, seq_pages);
      }
      if (!placed.ok()) {  // stays in host memory
        pool.FreeSlot(*slot);
        pool.FreePages(&seq_pages);
        return;
      }
      s->slot = *slot;
      s->pages = std::move(seq_pages);
      s->host.reset();
    });
  }
  SessionInfo info = InfoFromMeta(s->meta);
  info.tier = TierOf(s->on_device(), s->host.has_value());
  Unclaim(s);
  if (!st.ok()) return st;
  info.meta.last_used = clock_->Now();
  if (metrics_ != nullptr) {
    metrics_->ObserveSessionResume(info.meta.last_used - start);
  }
  return info;
}

absl::StatusOr<SessionInfo> Engine::ForkSession(absl::string_view id) {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_RETURN_IF_ERROR(CheckAdmitting());
  DS_RETURN_IF_ERROR(ValidateSessionId(id));
  DS_ASSIGN_OR_RETURN(SessionSnapshot snap, options_.state_store->Load(id));
  snap.meta.session_id = NewSessionId();
  snap.meta.created = snap.meta.last_used = clock_->Now();
  return CommitNewSession(std::move(snap));
}

absl::Status Engine::DeleteSession(absl::string_view id) {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_ASSIGN_OR_RETURN(Session * s, Claim(id, /*allow_damaged=*/true));
  if (s->resident()) RunOnEngine([this, s] { FreeState(s, false); });
  absl::Status st = options_.state_store->Delete(s->id);
  if (st.ok()) NoteStored(-1, -s->meta.state_bytes());
  Unclaim(s);
  return st;
}

absl::StatusOr<std::string> Engine::ExportSession(absl::string_view id,
                                                  SessionFormat format) {
  DS_RETURN_IF_ERROR(CheckSessions());
  DS_RETURN_IF_ERROR(CheckAdmitting());
  const absl::Time start = clock_->Now();
  absl::StatusOr<std::string> out = ExportSessionBytes(id, format);
  if (out.ok() && metrics_ != nullptr) {
    metrics_->ObserveSessionMigrate(MigrateDirection::kExport,
                                    clock_->Now() - start);
  }
  return out;
}

absl::StatusOr<std::string> Engine::ExportSessionBytes(absl::string_view id,
                                                       SessionFormat format) {
  if (format == SessionFormat::kDeltaserve) {
    return options_.state_store->Export(id);
  }
  DS_RETURN_IF_ERROR(FlaRecurrentLayoutOf(model_->spec()).status());
  DS_RETURN_IF_ERROR(ValidateSessionId(id));
  DS_ASSIGN_OR_RETURN(const SessionSnapshot snap,
                      options_.state_store->Load(id));
  return EncodeFlaCache(snap, model_->spec());
}

absl::StatusOr<SessionInfo> Engine::ImportSession(absl::string_view bytes,
                                                  SessionFormat format) {
  DS_RETURN_IF_ERROR(CheckSessions());
  const absl::Time start = clock_->Now();
  absl::StatusOr<SessionInfo> info = ImportSessionBytes(bytes, format);
  if (info.ok() && metrics_ != nullptr) {
    metrics_->ObserveSessionMigrate(MigrateDirection::kImport,
                                    clock_->Now() - start);
  }
  return info;
}

absl::StatusOr<SessionInfo> Engine::ImportSessionBytes(absl::string_view bytes,
                                                       SessionFormat format) {
  if (format == SessionFormat::kDeltaserve) {
    DS_ASSIGN_OR_RETURN(
        SessionMeta meta,
        options_.state_store->Import(bytes, NewSessionId(), fingerprint_));
    NoteStored(1, meta.state_bytes());
    return InfoFromMeta(meta);
  }
  SessionMeta meta;
  meta.session_id = NewSessionId();
  meta.model_fingerprint = fingerprint_;
  meta.created = meta.last_used = clock_->Now();
  DS_ASSIGN_OR_RETURN(SessionSnapshot snap,
                      DecodeFlaCache(bytes, model_->spec(),
                                     options_.kv_page_size, std::move(meta)));
  return CommitNewSession(std::move(snap));
}

// ---------------------------------------------------------------------------
// Metrics of sessions

void Engine::NoteStored(int64_t sessions, int64_t bytes) {
  if (metrics_ == nullptr) return;
  in_->stored_sessions += sessions;
  in_->stored_bytes += bytes;
}

SessionUsage Engine::CollectSessionUsage() const {
  SessionUsage u;
  {
    absl::MutexLock lock(&sessions_mu_);
    for (const auto& [id, s] : sessions_) {
      if (s->meta.session_id.empty()) continue;  // damaged, being deleted
      if (s->tier == SessionTier::kDevice) {
        ++u.device;
        u.device_bytes += s->meta.state_bytes();
      } else if (s->tier == SessionTier::kHost) {
        ++u.host;
        u.host_bytes += s->meta.state_bytes();
      }
    }
  }
  // Every session is stored; those only on disk are the rest.
  u.disk = std::max<int64_t>(0, in_->stored_sessions - u.device - u.host);
  u.disk_bytes =
      std::max<int64_t>(0, in_->stored_bytes - u.device_bytes - u.host_bytes);
  return u;
}

}  // namespace deltaserve
