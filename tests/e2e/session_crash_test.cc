// Crash safety of sessions: kill -9 deltaserve-server at random moments
// while many sessions generate, pause and resume, restart it on the same
// state directory, and check that every session is exactly at a committed
// snapshot.
//
// Each cycle, one client thread per session runs turns on its session (a
// Generate with session_id: a seeded random input, then greedy tokens),
// sometimes pausing, resuming or looking at the session between turns and
// sometimes cancelling a turn part-way. After a seeded random number of
// acknowledged turns plus a random delay the test SIGKILLs the server, joins
// the clients (their calls fail, as expected), restarts the server and
// checks every session:
//   - no acknowledged commit is lost: its history length n is at least what
//     the last Completion reported, and at most what its unfinished turn
//     could have reached (a turn can be committed part-way when the engine
//     preempts it or its client cancels it);
//   - its history is a prefix of the uninterrupted run: every token a turn
//     generated is the greedy continuation that a plain (session-less)
//     Generate of the same prefix gives;
//   - its state agrees with its history: a fork of it, continued with a
//     probe input, gives what a plain Generate of history + probe gives.
// The sessions then continue from where they really are. The server runs
// with little memory (4 slots, 1024 KV tokens, a small host cache, short
// idle pause, 32-token steps) so that sessions are preempted, evicted and
// committed part-way through turns. After the last cycle the server must
// shut down cleanly on SIGTERM, restart, and list exactly the test's
// sessions (forks deleted, none damaged).
//
// Greedy decoding is compared token for token, with one allowance: the
// server's prefill and decode paths round differently, so where the
// uninterrupted run's two best tokens are within kTieNats of each other the
// session may take either; the comparison then continues from the session's
// choice. Every compared position's log-probability must also match within
// kLogprobTolerance, which a state that is off by a token would not.
//
// Knobs (environment; with `bazel test` pass them with --test_env):
//   DELTASERVE_CRASH_CYCLES   kill/restart cycles (default 30)
//   DELTASERVE_CRASH_SECONDS  if set, run cycles until this many seconds
//                             have passed instead (soak mode)
//   DELTASERVE_CRASH_SEED     seed of every random choice (default 1); the
//                             log names it, so a failure's inputs and kill
//                             points can be replayed (thread timing varies)
//   DELTASERVE_CRASH_SESSIONS sessions (default 8)
// Soak, e.g. an hour (one line):
//   bazel test //tests/e2e:session_crash_test --test_timeout=3700
//     --test_env=DELTASERVE_CRASH_SECONDS=3600 --test_output=streamed
// The servers' stderr is kept in the test's outputs.zip.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"
#include "proto/deltaserve/v1/sessions.grpc.pb.h"

extern char** environ;

namespace deltaserve {
namespace {

// Where the sessions' histories are kept: a turn starts only if it ends
// within kMaxHistory tokens; a session longer than kReplaceAbove after a
// cycle is deleted and replaced by a new one.
constexpr int kMaxHistory = 480;
constexpr int kReplaceAbove = 400;
// The probe that checks a session's state: kProbeInput random tokens, then
// kProbeTokens greedy ones.
constexpr int kProbeInput = 4;
constexpr int kProbeTokens = 8;
// Log-probabilities asked for with every compared generation.
constexpr int kTopLogprobs = 5;
// Two tokens this close in log-probability are a tie that rounding may
// break either way.
constexpr double kTieNats = 2e-3;
// Largest difference allowed between the log-probability of a token in a
// session and in the uninterrupted run.
constexpr double kLogprobTolerance = 2e-3;
// Deadlines: of any call, and of the server printing its address.
constexpr absl::Duration kRpcTimeout = absl::Seconds(120);
constexpr absl::Duration kStartTimeout = absl::Seconds(120);
// The longest a cycle's load phase may take to reach its kill point.
constexpr absl::Duration kLoadTimeout = absl::Seconds(300);

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  int64_t parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed)) {
    ADD_FAILURE() << name << "=" << value << " is not an integer";
    return fallback;
  }
  return parsed;
}

// The path of a file in this test's runfiles.
std::string Runfile(absl::string_view path) {
  std::vector<std::string> roots;
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') {
      roots.push_back(dir);
    }
  }
  std::error_code ec;
  const std::filesystem::path exe =
      std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) roots.push_back(exe.string() + ".runfiles");
  for (const std::string& root : roots) {
    const std::string candidate = absl::StrCat(root, "/deltaserve/", path);
    if (std::filesystem::exists(candidate, ec)) return candidate;
  }
  return std::string(path);
}

// The first of the environment variables `vars` that is set, else "/tmp".
std::string EnvDir(std::initializer_list<const char*> vars) {
  for (const char* var : vars) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') {
      return dir;
    }
  }
  return "/tmp";
}

// The last `max_bytes` of a file (for failure messages).
std::string FileTail(const std::string& path, size_t max_bytes = 4000) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  const std::string all = contents.str();
  return all.size() <= max_bytes ? all : all.substr(all.size() - max_bytes);
}

// One deltaserve-server child process. Start blocks (with a deadline) on
// the "listening on" line of its stdout, which stays a pipe until the
// process is reaped. The destructor SIGKILLs a process still running. Not
// thread-safe.
class ServerProcess {
 public:
  // Starts `binary` with `args`, its stderr appended to `stderr_path`.
  // DEADLINE_EXCEEDED when it prints no address within kStartTimeout;
  // INTERNAL when it cannot be started or exits first.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& args,
      const std::string& stderr_path) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", strerror(errno)));
    }
    std::vector<std::string> argv_strings = {binary};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr,
                               argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (rc != 0) {
      close(fds[0]);
      return absl::InternalError(
          absl::StrCat("posix_spawn ", binary, ": ", strerror(rc)));
    }
    auto server = std::unique_ptr<ServerProcess>(
        new ServerProcess(pid, fds[0], stderr_path));
    absl::StatusOr<std::string> line = server->ReadLine(kStartTimeout);
    if (!line.ok()) {
      server->Kill();
      return absl::Status(
          line.status().code(),
          absl::StrCat(line.status().message(), "; server stderr:\n",
                       FileTail(stderr_path)));
    }
    constexpr absl::string_view kPrefix =
        "deltaserve-server listening on 127.0.0.1:";
    int port = 0;
    const size_t space = line->find(' ', kPrefix.size());
    if (!absl::StartsWith(*line, kPrefix) || space == std::string::npos ||
        !absl::SimpleAtoi(line->substr(kPrefix.size(), space - kPrefix.size()),
                          &port) ||
        port <= 0) {
      server->Kill();
      return absl::InternalError(
          absl::StrCat("unexpected first line from the server: ", *line));
    }
    server->address_ = absl::StrCat("127.0.0.1:", port);
    return server;
  }

  ~ServerProcess() { Kill(); }

  const std::string& address() const { return address_; }

  // SIGKILL, then reap. Idempotent.
  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
    CloseStdout();
  }

  // SIGTERM, then waits up to `timeout` for the process to exit. OK when it
  // exits with status 0; INTERNAL for another status or a signal;
  // DEADLINE_EXCEEDED (and SIGKILL) when it does not exit in time.
  absl::Status Terminate(absl::Duration timeout) {
    if (pid_ <= 0) return absl::InternalError("the server is not running");
    kill(pid_, SIGTERM);
    // Its stdout reaches end-of-file when it exits.
    absl::Status eof = WaitForEof(timeout);
    if (!eof.ok()) {
      Kill();
      return eof;
    }
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    CloseStdout();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(
        "the server ended with ",
        WIFEXITED(status) ? absl::StrCat("exit status ", WEXITSTATUS(status))
                          : absl::StrCat("signal ", WTERMSIG(status)),
        " after SIGTERM; stderr:\n", FileTail(stderr_path_)));
  }

 private:
  ServerProcess(pid_t pid, int stdout_fd, std::string stderr_path)
      : pid_(pid),
        stdout_fd_(stdout_fd),
        stderr_path_(std::move(stderr_path)) {}

  void CloseStdout() {
    if (stdout_fd_ >= 0) close(stdout_fd_);
    stdout_fd_ = -1;
  }

  // Waits until the pipe is readable; DEADLINE_EXCEEDED at the deadline.
  absl::Status WaitReadable(absl::Time deadline) {
    while (true) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError("timed out reading server stdout");
      }
      pollfd p = {stdout_fd_, POLLIN, 0};
      const int rc = poll(&p, 1,
                          static_cast<int>(absl::ToInt64Milliseconds(
                              left + absl::Milliseconds(1))));
      if (rc > 0) return absl::OkStatus();
      if (rc < 0 && errno != EINTR) {
        return absl::InternalError(absl::StrCat("poll: ", strerror(errno)));
      }
    }
  }

  absl::StatusOr<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    std::string line;
    while (true) {
      absl::Status readable = WaitReadable(deadline);
      if (!readable.ok()) {
        return absl::DeadlineExceededError(absl::StrCat(
            "the server printed no address within ",
            absl::FormatDuration(timeout), " (so far: \"", line, "\")"));
      }
      char c;
      const ssize_t n = read(stdout_fd_, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::InternalError(
            absl::StrCat("the server exited before printing its address (",
                         "stdout so far: \"", line, "\")"));
      }
      if (c == '\n') return line;
      line.push_back(c);
    }
  }

  absl::Status WaitForEof(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    char buffer[256];
    while (true) {
      absl::Status readable = WaitReadable(deadline);
      if (!readable.ok()) {
        return absl::DeadlineExceededError(
            absl::StrCat("the server did not exit within ",
                         absl::FormatDuration(timeout), " of SIGTERM"));
      }
      const ssize_t n = read(stdout_fd_, buffer, sizeof(buffer));
      if (n == 0) return absl::OkStatus();
      if (n < 0 && errno != EINTR) {
        return absl::InternalError(absl::StrCat("read: ", strerror(errno)));
      }
    }
  }

  pid_t pid_;
  int stdout_fd_;
  std::string stderr_path_;
  std::string address_;
};

std::vector<int32_t> Concat(const std::vector<int32_t>& a,
                            const std::vector<int32_t>& b) {
  std::vector<int32_t> out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

std::vector<int32_t> Prefix(const std::vector<int32_t>& v, size_t n) {
  return std::vector<int32_t>(v.begin(), v.begin() + std::min(n, v.size()));
}

std::string Ids(const std::vector<int32_t>& ids) {
  return absl::StrCat("[", absl::StrJoin(ids, ","), "]");
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + kRpcTimeout));
}

absl::Status FromGrpc(const grpc::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

// A greedy request for `max_new_tokens` tokens after `ids`, with
// log-probabilities.
v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& ids,
                                  int max_new_tokens,
                                  const std::string& session_id = "") {
  v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  request.mutable_sampling()->set_temperature(0);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  request.set_top_logprobs(kTopLogprobs);
  request.set_session_id(session_id);
  return request;
}

// What one Generate call streamed.
struct Generated {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::vector<v1::PositionLogprobs> logprobs;  // one per id
  std::optional<v1::Completion> completion;
};

// Runs one Generate call in `context` (whose deadline the caller sets);
// `on_chunk`, when set, sees each chunk as it arrives.
void RunGenerate(v1::Inference::Stub* stub, const v1::GenerateRequest& request,
                 grpc::ClientContext* context, Generated* out,
                 const std::function<void(const v1::Chunk&)>& on_chunk = {}) {
  auto reader = stub->Generate(context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      const v1::Chunk& chunk = response.chunk();
      out->ids.insert(out->ids.end(), chunk.token_ids().begin(),
                      chunk.token_ids().end());
      out->logprobs.insert(out->logprobs.end(), chunk.logprobs().begin(),
                           chunk.logprobs().end());
      if (on_chunk) on_chunk(chunk);
    } else if (response.has_completion()) {
      out->completion = response.completion();
    }
  }
  out->status = reader->Finish();
}

// A turn: `input` fed into the session, then `max_new_tokens` generated.
struct Turn {
  int64_t start = 0;  // history length before the turn
  std::vector<int32_t> input;
  int max_new_tokens = 0;
  std::vector<int32_t> got;  // tokens streamed back
  std::vector<v1::PositionLogprobs> logprobs;
};

// What the test knows about one session. A client thread owns it during a
// cycle's load phase, the main thread otherwise.
struct SessionTrack {
  int index = 0;
  std::string id;
  // The history as far as the server acknowledged it: verified at the
  // start of the cycle, plus the turns finished since (in `finished`).
  std::vector<int32_t> history;
  // The history ends with a generated token not yet fed.
  bool pending = false;
  uint64_t snapshot_seq = 0;       // of the last acknowledged commit
  std::vector<Turn> finished;      // this cycle, not yet checked
  std::optional<Turn> unfinished;  // sent, no Completion seen
  bool cancelled = false;          // `unfinished` was cancelled by the test
  // An error or wrong answer seen before the kill.
  absl::Status error;
};

struct Totals {
  int64_t kills = 0;
  int64_t turns = 0;
  int64_t pauses = 0;
  int64_t resumes = 0;
  int64_t cancels = 0;
  // Sessions found after a restart with an unfinished turn committed: in
  // part, and in full but unacknowledged.
  int64_t partial_turns = 0;
  int64_t unacknowledged_turns = 0;
  int64_t replaced = 0;
  int64_t ties = 0;
  double max_logprob_diff = 0;
};

// The crash test: owns the server process, the sessions' tracks and the
// client threads of each cycle. The main thread drives it; the client and
// verifier threads share only the stubs (thread-safe), their own track, and
// the counters under the mutexes.
class SessionCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = static_cast<uint64_t>(EnvInt("DELTASERVE_CRASH_SEED", 1));
    num_sessions_ = static_cast<int>(EnvInt("DELTASERVE_CRASH_SESSIONS", 8));
    cycles_ = EnvInt("DELTASERVE_CRASH_CYCLES", 30);
    seconds_ = EnvInt("DELTASERVE_CRASH_SECONDS", 0);
    binary_ = Runfile("services/server/deltaserve-server");
    state_dir_ = EnvDir({"TEST_TMPDIR"}) + "/session_crash_state";
    // Kept after the test (bazel zips undeclared outputs into outputs.zip).
    stderr_path_ = EnvDir({"TEST_UNDECLARED_OUTPUTS_DIR", "TEST_TMPDIR"}) +
                   "/session_crash_server.err";
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
    std::filesystem::remove(stderr_path_, ec);
    std::printf(
        "session_crash_test: seed %llu, %d sessions, %s; server %s, "
        "its stderr in %s\n",
        static_cast<unsigned long long>(seed_), num_sessions_,
        seconds_ > 0 ? absl::StrCat(seconds_, " s").c_str()
                     : absl::StrCat(cycles_, " cycles").c_str(),
        binary_.c_str(), stderr_path_.c_str());
  }

  // A generator for one purpose: the seed, the cycle and a stream number.
  std::mt19937_64 Rng(int64_t cycle, int64_t stream) const {
    std::seed_seq seq{
        static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32),
        static_cast<uint32_t>(cycle), static_cast<uint32_t>(stream)};
    return std::mt19937_64(seq);
  }

  std::vector<int32_t> RandomIds(std::mt19937_64& rng, int n) const {
    std::uniform_int_distribution<int32_t> id(1, vocab_size_ - 1);
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = id(rng);
    return out;
  }

  absl::Status StartServer() {
    ++incarnation_;
    {
      std::ofstream err(stderr_path_, std::ios::app);
      err << "--- session_crash_test: server start " << incarnation_ << "\n";
    }
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(
            binary_,
            {"--listen=127.0.0.1:0", absl::StrCat("--state_dir=", state_dir_),
             "--threads=1", "--max_running_requests=4",
             "--max_batched_tokens=32", "--kv_cache_tokens=1024",
             "--session_host_cache_bytes=2000000",
             "--session_idle_pause=200ms"},
            stderr_path_);
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    auto channel = grpc::CreateChannel(server_->address(),
                                       grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel);
    sessions_ = v1::Sessions::NewStub(channel);
    models_ = v1::Models::NewStub(channel);
    return absl::OkStatus();
  }

  absl::Status ReadModel() {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::ListModelsResponse response;
    absl::Status st = FromGrpc(
        models_->ListModels(&context, v1::ListModelsRequest(), &response),
        "ListModels");
    if (!st.ok()) return st;
    if (response.models().empty()) {
      return absl::InternalError("the server lists no model");
    }
    vocab_size_ = response.models(0).vocab_size();
    const int64_t context_limit = response.models(0).context_limit();
    if (vocab_size_ < 2 ||
        context_limit <= kMaxHistory + kProbeInput + kProbeTokens) {
      return absl::InternalError(absl::StrCat(
          "model with vocab_size ", vocab_size_, " and context_limit ",
          context_limit, " is too small for this test"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::Session> CreateSession() {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::Session session;
    absl::Status st =
        FromGrpc(sessions_->CreateSession(&context, v1::CreateSessionRequest(),
                                          &session),
                 "CreateSession");
    if (!st.ok()) return st;
    return session;
  }

  absl::StatusOr<v1::Session> GetSession(const std::string& id) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::GetSessionRequest request;
    request.set_session_id(id);
    v1::Session session;
    absl::Status st =
        FromGrpc(sessions_->GetSession(&context, request, &session),
                 absl::StrCat("GetSession ", id));
    if (!st.ok()) return st;
    return session;
  }

  absl::Status DeleteSession(const std::string& id) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::DeleteSessionRequest request;
    request.set_session_id(id);
    v1::DeleteSessionResponse response;
    return FromGrpc(sessions_->DeleteSession(&context, request, &response),
                    absl::StrCat("DeleteSession ", id));
  }

  // A plain (session-less) greedy generation of `n` tokens after `prompt`.
  absl::StatusOr<Generated> Plain(const std::vector<int32_t>& prompt, int n) {
    grpc::ClientContext context;
    SetDeadline(&context);
    Generated g;
    RunGenerate(inference_.get(), GreedyRequest(prompt, n), &context, &g);
    absl::Status st = FromGrpc(g.status, "plain Generate");
    if (!st.ok()) return st;
    if (static_cast<int>(g.ids.size()) != n ||
        static_cast<int>(g.logprobs.size()) != n || !g.completion) {
      return absl::InternalError(absl::StrCat(
          "plain Generate of ", n, " tokens after ", prompt.size(), " gave ",
          g.ids.size(), " tokens, ", g.logprobs.size(), " log-probabilities",
          g.completion ? "" : " and no Completion"));
    }
    return g;
  }

  // Checks that `actual` (with its log-probabilities) is the greedy
  // continuation of `prefix` that an uninterrupted plain run gives, up to
  // ties (see the file comment). `what` names it in errors.
  absl::Status CheckContinuation(
      const std::vector<int32_t>& prefix, const std::vector<int32_t>& actual,
      const std::vector<v1::PositionLogprobs>& actual_logprobs,
      absl::string_view what) {
    size_t pos = 0;
    while (pos < actual.size()) {
      const std::vector<int32_t> prompt = Concat(prefix, Prefix(actual, pos));
      absl::StatusOr<Generated> ref =
          Plain(prompt, static_cast<int>(actual.size() - pos));
      if (!ref.ok()) return ref.status();
      size_t j = 0;
      for (; pos + j < actual.size(); ++j) {
        const v1::PositionLogprobs& r = ref->logprobs[j];
        const int32_t got = actual[pos + j];
        // The reference's log-probability of the session's token.
        std::optional<double> ref_lp;
        if (r.sampled().id() == got) ref_lp = r.sampled().logprob();
        for (const v1::TokenLogprob& t : r.top()) {
          if (t.id() == got && !ref_lp) ref_lp = t.logprob();
        }
        if (ref_lp && pos + j < actual_logprobs.size()) {
          const double diff =
              std::abs(*ref_lp - actual_logprobs[pos + j].sampled().logprob());
          AccountLogprobDiff(diff);
          if (diff > kLogprobTolerance) {
            return absl::DataLossError(absl::StrFormat(
                "%s: token %d (id %d) has log-probability %.6f, the "
                "uninterrupted run gives it %.6f (prefix of %d tokens)",
                what, pos + j, got,
                actual_logprobs[pos + j].sampled().logprob(), *ref_lp,
                prompt.size()));
          }
        }
        if (ref->ids[j] == got) continue;
        const double gap = ref_lp ? r.sampled().logprob() - *ref_lp : 1e9;
        if (gap > kTieNats) {
          return absl::DataLossError(absl::StrFormat(
              "%s: token %d is %d, the uninterrupted run gives %d "
              "(log-probabilities %.6f vs %s; prefix of %d tokens); "
              "session %s, run %s",
              what, pos + j, got, ref->ids[j], r.sampled().logprob(),
              ref_lp ? absl::StrFormat("%.6f", *ref_lp) : "not in top 5",
              prompt.size(), Ids(actual),
              Ids(Concat(Prefix(actual, pos), ref->ids))));
        }
        {
          absl::MutexLock lock(&totals_mu_);
          ++totals_.ties;
        }
        std::printf("  %s: tie at token %zu (%d vs %d, %.2g nats apart)\n",
                    std::string(what).c_str(), pos + j, got, ref->ids[j], gap);
        break;
      }
      pos += j + 1;
    }
    return absl::OkStatus();
  }

  void AccountLogprobDiff(double diff) {
    absl::MutexLock lock(&totals_mu_);
    totals_.max_logprob_diff = std::max(totals_.max_logprob_diff, diff);
  }

  // Client thread of one session for one cycle: runs turns until the server
  // is killed, something fails or the session is full.
  void ClientLoop(int cycle, SessionTrack* s) {
    std::mt19937_64 rng = Rng(cycle, 1000 + s->index);
    std::uniform_real_distribution<double> coin(0.0, 1.0);
    // A failed call is expected once the server is being killed (the flag
    // is set before the signal is sent); a wrong answer never is.
    auto call_failed = [&](const grpc::Status& status, absl::string_view call) {
      if (!killed_.load()) {
        s->error = FromGrpc(status, absl::StrCat(call, " ", s->id));
      }
    };
    auto check_session = [&](const grpc::Status& status, const v1::Session& got,
                             absl::string_view call) -> bool {
      if (!status.ok()) {
        call_failed(status, call);
        return false;
      }
      if (got.num_tokens() != static_cast<int64_t>(s->history.size()) ||
          got.snapshot_seq() != s->snapshot_seq || got.busy()) {
        s->error = absl::InternalError(absl::StrCat(
            call, " ", s->id, " says num_tokens ", got.num_tokens(),
            ", snapshot_seq ", got.snapshot_seq(), ", busy ", got.busy(),
            "; expected ", s->history.size(), ", ", s->snapshot_seq,
            ", false"));
        return false;
      }
      return true;
    };
    while (!killed_.load()) {
      // Between turns: sometimes pause, resume or look at the session.
      const double between = coin(rng);
      if (between < 0.25) {
        grpc::ClientContext context;
        SetDeadline(&context);
        v1::Session got;
        grpc::Status status;
        if (between < 0.12) {
          v1::PauseSessionRequest request;
          request.set_session_id(s->id);
          status = sessions_->PauseSession(&context, request, &got);
          if (status.ok() && got.tier() != v1::SESSION_TIER_DISK) {
            s->error = absl::InternalError(absl::StrCat(
                "PauseSession ", s->id, " left it in tier ", got.tier()));
            break;
          }
          absl::MutexLock lock(&totals_mu_);
          if (status.ok()) ++totals_.pauses;
        } else if (between < 0.2) {
          v1::ResumeSessionRequest request;
          request.set_session_id(s->id);
          status = sessions_->ResumeSession(&context, request, &got);
          if (status.ok() && got.tier() != v1::SESSION_TIER_DEVICE &&
              got.tier() != v1::SESSION_TIER_HOST) {
            s->error = absl::InternalError(absl::StrCat(
                "ResumeSession ", s->id, " left it in tier ", got.tier()));
            break;
          }
          absl::MutexLock lock(&totals_mu_);
          if (status.ok()) ++totals_.resumes;
        } else {
          v1::GetSessionRequest request;
          request.set_session_id(s->id);
          status = sessions_->GetSession(&context, request, &got);
        }
        if (!check_session(status, got, "a session call")) break;
      }
      // The turn: an input (empty when a generated token waits to be fed,
      // now and then; long now and then), then greedy tokens.
      Turn turn;
      turn.start = static_cast<int64_t>(s->history.size());
      const double kind = coin(rng);
      int input_len;
      if (s->pending && kind < 0.1) {
        input_len = 0;
      } else if (kind < 0.85) {
        input_len = std::uniform_int_distribution<int>(1, 16)(rng);
      } else {
        input_len = std::uniform_int_distribution<int>(32, 96)(rng);
      }
      turn.input = RandomIds(rng, input_len);
      turn.max_new_tokens = std::uniform_int_distribution<int>(1, 32)(rng);
      if (turn.start + input_len + turn.max_new_tokens > kMaxHistory) break;
      // Sometimes cancel the turn after some of its tokens came.
      int cancel_after = -1;
      if (coin(rng) < 0.08) {
        cancel_after =
            std::uniform_int_distribution<int>(0, turn.max_new_tokens - 1)(rng);
      }
      s->unfinished = std::move(turn);
      Turn& t = *s->unfinished;
      grpc::ClientContext context;
      SetDeadline(&context);
      if (cancel_after == 0) context.TryCancel();
      Generated g;
      RunGenerate(
          inference_.get(), GreedyRequest(t.input, t.max_new_tokens, s->id),
          &context, &g, [&](const v1::Chunk& chunk) {
            t.got.insert(t.got.end(), chunk.token_ids().begin(),
                         chunk.token_ids().end());
            t.logprobs.insert(t.logprobs.end(), chunk.logprobs().begin(),
                              chunk.logprobs().end());
            if (cancel_after > 0 &&
                static_cast<int>(t.got.size()) >= cancel_after) {
              context.TryCancel();
            }
          });
      if (!g.status.ok()) {
        if (cancel_after >= 0 &&
            g.status.error_code() == grpc::StatusCode::CANCELLED) {
          s->cancelled = true;
          absl::MutexLock lock(&totals_mu_);
          ++totals_.cancels;
        } else {
          call_failed(g.status, "Generate on");
        }
        break;  // the session's length is known again after the restart
      }
      const int64_t want =
          t.start + static_cast<int64_t>(t.input.size()) + t.max_new_tokens;
      if (!g.completion || static_cast<int>(t.got.size()) != t.max_new_tokens ||
          static_cast<int>(t.logprobs.size()) != t.max_new_tokens ||
          g.completion->completion_tokens() != t.max_new_tokens ||
          g.completion->finish_reason() != v1::FINISH_REASON_LENGTH ||
          g.completion->session_tokens() != want ||
          g.completion->session_snapshot_seq() <= s->snapshot_seq) {
        s->error = absl::InternalError(absl::StrCat(
            "Generate on ", s->id, " (", t.input.size(), " input tokens, ",
            t.max_new_tokens, " to generate, ", t.start, " before) streamed ",
            t.got.size(), " tokens and ",
            g.completion ? g.completion->ShortDebugString() : "no Completion",
            "; expected session_tokens ", want, " and a snapshot_seq above ",
            s->snapshot_seq));
        break;
      }
      s->history.insert(s->history.end(), t.input.begin(), t.input.end());
      s->history.insert(s->history.end(), t.got.begin(), t.got.end());
      s->pending = true;
      s->snapshot_seq = g.completion->session_snapshot_seq();
      s->finished.push_back(*std::move(s->unfinished));
      s->unfinished.reset();
      absl::MutexLock lock(&progress_mu_);
      ++acknowledged_turns_;
    }
    absl::MutexLock lock(&progress_mu_);
    --running_clients_;
  }

  // After a restart: checks one session (see the file comment) and moves
  // it to where it really is.
  absl::Status Verify(int cycle, SessionTrack* s,
                      const std::vector<int32_t>& probe) {
    const std::string name =
        absl::StrCat("cycle ", cycle, ", session ", s->index, " (", s->id, ")");
    absl::StatusOr<v1::Session> info = GetSession(s->id);
    if (!info.ok()) {
      return absl::Status(info.status().code(),
                          absl::StrCat(name, ": ", info.status().message()));
    }
    const int64_t n = info->num_tokens();
    const int64_t acknowledged = static_cast<int64_t>(s->history.size());
    const int64_t reachable =
        acknowledged +
        (s->unfinished ? static_cast<int64_t>(s->unfinished->input.size()) +
                             s->unfinished->max_new_tokens
                       : 0);
    const std::string where = absl::StrCat(
        name, ": after the restart num_tokens is ", n, " (snapshot_seq ",
        info->snapshot_seq(), "); acknowledged ", acknowledged,
        " (snapshot_seq ", s->snapshot_seq, ")",
        s->unfinished
            ? absl::StrCat(", a turn of ", s->unfinished->input.size(), " + ",
                           s->unfinished->max_new_tokens,
                           " tokens unfinished (", s->unfinished->got.size(),
                           " received", s->cancelled ? ", cancelled" : "", ")")
            : ", no turn unfinished");
    if (n < acknowledged) {
      return absl::DataLossError(
          absl::StrCat(where, ": an acknowledged commit was lost"));
    }
    if (n > reachable) {
      return absl::InternalError(
          absl::StrCat(where, ": more tokens than were ever sent"));
    }
    if (info->snapshot_seq() < s->snapshot_seq ||
        (n > acknowledged && info->snapshot_seq() == s->snapshot_seq) ||
        (!s->unfinished && info->snapshot_seq() != s->snapshot_seq)) {
      return absl::InternalError(
          absl::StrCat(where, ": snapshot_seq does not fit"));
    }
    if (info->busy()) {
      return absl::InternalError(absl::StrCat(where, ": busy after restart"));
    }
    // The finished turns generated the uninterrupted run's tokens.
    for (size_t i = 0; i < s->finished.size(); ++i) {
      const Turn& t = s->finished[i];
      const size_t fed = t.start + t.input.size();
      absl::Status st = CheckContinuation(
          Prefix(s->history, fed), t.got, t.logprobs,
          absl::StrCat(name, ", turn ", i + 1, " of ", s->finished.size()));
      if (!st.ok()) return st;
    }
    // The history it should have: what the test knows, extended with the
    // uninterrupted run where the server committed more than was received.
    std::vector<int32_t> known = s->history;
    if (s->unfinished) {
      const Turn& t = *s->unfinished;
      known.insert(known.end(), t.input.begin(), t.input.end());
      absl::Status st = CheckContinuation(
          known, t.got, t.logprobs, absl::StrCat(name, ", unfinished turn"));
      if (!st.ok()) return st;
      known.insert(known.end(), t.got.begin(), t.got.end());
      if (n > static_cast<int64_t>(known.size())) {
        absl::StatusOr<Generated> more =
            Plain(known, static_cast<int>(n - known.size()));
        if (!more.ok()) return more.status();
        known.insert(known.end(), more->ids.begin(), more->ids.end());
      }
      const int64_t partial_end = t.start + t.input.size() + t.max_new_tokens;
      absl::MutexLock lock(&totals_mu_);
      if (n == partial_end) {
        ++totals_.unacknowledged_turns;
      } else if (n > acknowledged) {
        ++totals_.partial_turns;
      }
    }
    const std::vector<int32_t> history = Prefix(known, n);
    // Its state agrees with that history: a fork continues it exactly.
    absl::StatusOr<v1::Session> fork;
    {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::ForkSessionRequest request;
      request.set_session_id(s->id);
      v1::Session session;
      absl::Status st =
          FromGrpc(sessions_->ForkSession(&context, request, &session),
                   absl::StrCat(name, ": ForkSession"));
      if (!st.ok()) return st;
      fork = session;
    }
    if (fork->num_tokens() != n) {
      return absl::InternalError(absl::StrCat(where, ": its fork has ",
                                              fork->num_tokens(), " tokens"));
    }
    Generated probed;
    {
      grpc::ClientContext context;
      SetDeadline(&context);
      RunGenerate(inference_.get(),
                  GreedyRequest(probe, kProbeTokens, fork->session_id()),
                  &context, &probed);
    }
    absl::Status st =
        FromGrpc(probed.status, absl::StrCat(name, ": Generate on its fork"));
    if (st.ok() && static_cast<int>(probed.ids.size()) != kProbeTokens) {
      st = absl::InternalError(absl::StrCat(
          name, ": Generate on its fork gave ", probed.ids.size(), " tokens"));
    }
    if (st.ok()) {
      st = CheckContinuation(
          Concat(history, probe), probed.ids, probed.logprobs,
          absl::StrCat(where, "; its fork continued with a probe"));
    }
    absl::Status deleted = DeleteSession(fork->session_id());
    if (!st.ok()) return st;
    if (!deleted.ok()) return deleted;
    // Continue from where it is. Whether the history ends with a token not
    // yet fed: past the unfinished turn's input it does; otherwise a newer
    // commit means that the turn fed everything up to n (a commit never
    // drops the waiting token, but may feed it without adding any).
    if (s->unfinished) {
      const int64_t fed = s->unfinished->start + s->unfinished->input.size();
      if (n > fed) {
        s->pending = true;
      } else if (info->snapshot_seq() != s->snapshot_seq) {
        s->pending = false;
      }
    }
    s->history = history;
    s->snapshot_seq = info->snapshot_seq();
    s->finished.clear();
    s->unfinished.reset();
    s->cancelled = false;
    if (n > kReplaceAbove) {
      st = DeleteSession(s->id);
      if (!st.ok()) return st;
      absl::StatusOr<v1::Session> fresh = CreateSession();
      if (!fresh.ok()) return fresh.status();
      s->id = fresh->session_id();
      s->history.clear();
      s->pending = false;
      s->snapshot_seq = fresh->snapshot_seq();
      absl::MutexLock lock(&totals_mu_);
      ++totals_.replaced;
    }
    return absl::OkStatus();
  }

  // The server lists exactly the tracked sessions, at their lengths, and no
  // damaged ones.
  absl::Status CheckListing(absl::string_view when) {
    std::set<std::string> listed;
    std::string page_token;
    do {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::ListSessionsRequest request;
      request.set_page_token(page_token);
      v1::ListSessionsResponse response;
      absl::Status st =
          FromGrpc(sessions_->ListSessions(&context, request, &response),
                   absl::StrCat(when, ": ListSessions"));
      if (!st.ok()) return st;
      if (!response.damaged_session_ids().empty()) {
        return absl::DataLossError(
            absl::StrCat(when, ": damaged sessions listed: ",
                         absl::StrJoin(response.damaged_session_ids(), ", ")));
      }
      for (const v1::Session& session : response.sessions()) {
        listed.insert(session.session_id());
        for (const SessionTrack& s : tracks_) {
          if (s.id == session.session_id() &&
              session.num_tokens() != static_cast<int64_t>(s.history.size())) {
            return absl::InternalError(
                absl::StrCat(when, ": ListSessions says session ", s.index,
                             " (", s.id, ") has ", session.num_tokens(),
                             " tokens, not ", s.history.size()));
          }
        }
      }
      page_token = response.next_page_token();
    } while (!page_token.empty());
    std::set<std::string> expected;
    for (const SessionTrack& s : tracks_) expected.insert(s.id);
    if (listed != expected) {
      return absl::InternalError(absl::StrCat(
          when, ": ListSessions lists {", absl::StrJoin(listed, ", "),
          "}, expected {", absl::StrJoin(expected, ", "), "}"));
    }
    return absl::OkStatus();
  }

  // One cycle: load, kill -9, restart, verify. The status says what failed.
  absl::Status Cycle(int cycle) {
    const absl::Time cycle_start = absl::Now();
    std::mt19937_64 rng = Rng(cycle, 0);
    // Kill after this many acknowledged turns (over all sessions) and a
    // random delay, or when every client stopped.
    const int target_turns =
        std::uniform_int_distribution<int>(0, 2 * num_sessions_)(rng);
    const absl::Duration extra_delay =
        absl::Microseconds(std::uniform_int_distribution<int>(0, 300000)(rng));
    const std::vector<int32_t> probe = RandomIds(rng, kProbeInput);
    killed_ = false;
    {
      absl::MutexLock lock(&progress_mu_);
      acknowledged_turns_ = 0;
      running_clients_ = num_sessions_;
    }
    std::vector<std::thread> clients;
    for (SessionTrack& s : tracks_) {
      clients.emplace_back([this, cycle, &s] { ClientLoop(cycle, &s); });
    }
    bool reached;
    {
      absl::MutexLock lock(&progress_mu_);
      auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(progress_mu_) {
        return acknowledged_turns_ >= target_turns || running_clients_ == 0;
      };
      reached =
          progress_mu_.AwaitWithTimeout(absl::Condition(&ready), kLoadTimeout);
    }
    if (reached) absl::SleepFor(extra_delay);  // the random moment
    int turns;
    {
      absl::MutexLock lock(&progress_mu_);
      turns = acknowledged_turns_;
    }
    const absl::Duration load_time = absl::Now() - cycle_start;
    killed_ = true;
    server_->Kill();
    for (std::thread& t : clients) t.join();
    {
      absl::MutexLock lock(&totals_mu_);
      ++totals_.kills;
      totals_.turns += turns;
    }
    if (!reached) {
      return absl::DeadlineExceededError(absl::StrCat(
          "cycle ", cycle, ": only ", turns, " of ", target_turns,
          " turns acknowledged within ", absl::FormatDuration(kLoadTimeout)));
    }
    for (const SessionTrack& s : tracks_) {
      if (!s.error.ok()) {
        return absl::Status(
            s.error.code(),
            absl::StrCat("cycle ", cycle, ", session ", s.index,
                         ", before the kill: ", s.error.message()));
      }
    }
    absl::Status st = StartServer();
    if (!st.ok()) {
      return absl::Status(
          st.code(), absl::StrCat("cycle ", cycle,
                                  ": restart after kill -9: ", st.message()));
    }
    std::vector<absl::Status> verified(tracks_.size());
    std::vector<std::thread> verifiers;
    for (size_t i = 0; i < tracks_.size(); ++i) {
      verifiers.emplace_back([this, cycle, i, &probe, &verified] {
        verified[i] = Verify(cycle, &tracks_[i], probe);
      });
    }
    for (std::thread& t : verifiers) t.join();
    for (const absl::Status& v : verified) {
      if (!v.ok()) return v;
    }
    st = CheckListing(absl::StrCat("cycle ", cycle));
    if (!st.ok()) return st;
    std::vector<size_t> lengths;
    for (const SessionTrack& s : tracks_) lengths.push_back(s.history.size());
    std::printf(
        "cycle %d: killed after %s (%d turns acknowledged); sessions now at "
        "%s tokens; cycle took %s\n",
        cycle, absl::FormatDuration(load_time).c_str(), turns,
        absl::StrJoin(lengths, " ").c_str(),
        absl::FormatDuration(absl::Now() - cycle_start).c_str());
    std::fflush(stdout);
    return absl::OkStatus();
  }

  uint64_t seed_ = 1;
  int num_sessions_ = 8;
  int64_t cycles_ = 30;
  int64_t seconds_ = 0;
  std::string binary_;
  std::string state_dir_;
  std::string stderr_path_;
  int incarnation_ = 0;
  int32_t vocab_size_ = 0;

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Sessions::Stub> sessions_;
  std::unique_ptr<v1::Models::Stub> models_;

  std::vector<SessionTrack> tracks_;
  std::atomic<bool> killed_{false};
  absl::Mutex progress_mu_;
  int acknowledged_turns_ ABSL_GUARDED_BY(progress_mu_) = 0;
  int running_clients_ ABSL_GUARDED_BY(progress_mu_) = 0;
  absl::Mutex totals_mu_;
  Totals totals_ ABSL_GUARDED_BY(totals_mu_);
};

TEST_F(SessionCrashTest, KillNineAtRandomMomentsLosesNoCommittedState) {
  const absl::Time start = absl::Now();
  ASSERT_TRUE(std::filesystem::exists(binary_)) << binary_;
  absl::Status st = StartServer();
  ASSERT_TRUE(st.ok()) << st;
  st = ReadModel();
  ASSERT_TRUE(st.ok()) << st;
  for (int i = 0; i < num_sessions_; ++i) {
    absl::StatusOr<v1::Session> session = CreateSession();
    ASSERT_TRUE(session.ok()) << session.status();
    SessionTrack s;
    s.index = i;
    s.id = session->session_id();
    s.snapshot_seq = session->snapshot_seq();
    tracks_.push_back(std::move(s));
  }
  st = CheckListing("at the start");
  ASSERT_TRUE(st.ok()) << st;

  int cycle = 0;
  while (seconds_ > 0 ? absl::Now() - start < absl::Seconds(seconds_)
                      : cycle < cycles_) {
    ++cycle;
    st = Cycle(cycle);
    ASSERT_TRUE(st.ok()) << st << "\n(seed " << seed_ << "; server stderr in "
                         << stderr_path_ << ", last "
                         << "lines:\n"
                         << FileTail(stderr_path_, 2000) << ")";
  }

  // After all that, a clean shutdown, a clean restart and the same sessions,
  // each still agreeing with its history.
  st = server_->Terminate(absl::Seconds(60));
  ASSERT_TRUE(st.ok()) << st;
  st = StartServer();
  ASSERT_TRUE(st.ok()) << st;
  std::mt19937_64 rng = Rng(cycle + 1, 0);
  const std::vector<int32_t> probe = RandomIds(rng, kProbeInput);
  for (SessionTrack& s : tracks_) {
    st = Verify(cycle + 1, &s, probe);
    EXPECT_TRUE(st.ok()) << "after a clean restart: " << st;
  }
  st = CheckListing("after a clean restart");
  EXPECT_TRUE(st.ok()) << st;
  st = server_->Terminate(absl::Seconds(60));
  EXPECT_TRUE(st.ok()) << st;

  absl::MutexLock lock(&totals_mu_);
  const Totals& t = totals_;
  std::printf(
      "session_crash_test: %d cycles, %lld kill -9s in %s (seed %llu): %lld "
      "turns acknowledged, %lld pauses, %lld resumes, %lld cancelled turns; "
      "after restarts %lld unfinished turns were found committed in part and "
      "%lld in full; %lld sessions replaced when long; %lld greedy ties; "
      "largest log-probability difference from the uninterrupted run %.3g\n",
      cycle, static_cast<long long>(t.kills),
      absl::FormatDuration(absl::Now() - start).c_str(),
      static_cast<unsigned long long>(seed_), static_cast<long long>(t.turns),
      static_cast<long long>(t.pauses), static_cast<long long>(t.resumes),
      static_cast<long long>(t.cancels),
      static_cast<long long>(t.partial_turns),
      static_cast<long long>(t.unacknowledged_turns),
      static_cast<long long>(t.replaced), static_cast<long long>(t.ties),
      t.max_logprob_diff);
  EXPECT_GE(t.kills, seconds_ > 0 ? 1 : cycles_);
}

}  // namespace
}  // namespace deltaserve
