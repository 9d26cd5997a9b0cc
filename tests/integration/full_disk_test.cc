// The state directory of a server on a 3 MiB tmpfs: a commit that does not
// fit fails with RESOURCE_EXHAUSTED, the session keeps its previous
// snapshot, the server keeps serving, and once there is room again a
// restarted server continues the session from that snapshot.
//
// Needs permission to mount (root in a container that allows it); skipped
// otherwise (the state store's own test covers a full disk through an
// injected file-system error). A test binary of its own: the mount is made
// in a private mount namespace before any thread starts, so that every
// thread sees it and it vanishes with the process.
#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "gtest/gtest.h"
#include "tests/integration/session_test_util.h"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";

// The state directory on a 3 MiB tmpfs: commits fail with
// RESOURCE_EXHAUSTED once it is full, and the sessions keep their previous
// snapshots. Needs permission to mount (root in a container that allows it).
TEST(SessionsTest, FullDiskIsResourceExhaustedWithThePreviousSnapshotIntact) {
  const std::string mount_point = TempDir("small_disk");
  std::filesystem::create_directories(mount_point);
  if (unshare(CLONE_NEWNS) != 0 ||
      mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      mount("tmpfs", mount_point.c_str(), "tmpfs", 0, "size=3m") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here: " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mount_point};
  std::string id;
  int64_t committed = 0;
  {
    Running a = Start(kDemoDir, mount_point + "/state");
    ASSERT_NE(a.server, nullptr);
    absl::StatusOr<v1::Session> session = Create(a.sessions.get());
    ASSERT_TRUE(session.ok()) << session.status();
    id = session->session_id();
    std::mt19937 rng(5);
    grpc::Status failure;
    for (int turn = 0; turn < 200 && failure.ok(); ++turn) {
      std::vector<int32_t> input(400);
      for (int32_t& t : input) t = 3 + rng() % 4000;
      absl::StatusOr<int64_t> n = Append(a.sessions.get(), id, input);
      if (n.ok()) {
        committed = *n;
      } else {
        failure = grpc::Status(static_cast<grpc::StatusCode>(n.status().code()),
                               std::string(n.status().message()));
      }
    }
    ASSERT_FALSE(failure.ok()) << "the 3 MiB disk never filled";
    EXPECT_EQ(failure.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << failure.error_message();
    v1::Session out;
    ASSERT_TRUE(Get(a.sessions.get(), id, &out).ok());
    EXPECT_EQ(out.num_tokens(), committed);
    std::string bytes;
    ASSERT_TRUE(Export(a.sessions.get(), id, &bytes).ok());
    // The server keeps serving requests that need no disk.
    EXPECT_TRUE(
        Generate(a.inference.get(), IdsRequest({5, 6, 7}, 2)).status.ok());
  }
  // With room again, a restarted server has the session at its last commit
  // and continues it.
  ASSERT_EQ(
      mount(nullptr, mount_point.c_str(), nullptr, MS_REMOUNT, "size=64m"), 0)
      << std::strerror(errno);
  Running b = Start(kDemoDir, mount_point + "/state");
  ASSERT_NE(b.server, nullptr);
  EXPECT_EQ(CountSessions(b.sessions.get()), 1);
  v1::Session out;
  ASSERT_TRUE(Get(b.sessions.get(), id, &out).ok());
  EXPECT_EQ(out.num_tokens(), committed);
  Generation more = SessionGenerate(b.inference.get(), id, {5, 6}, 2);
  EXPECT_TRUE(more.status.ok()) << more.status.error_message();
  ASSERT_TRUE(more.completion.has_value());
  EXPECT_EQ(more.completion->session_tokens(), committed + 4);
}

}  // namespace
}  // namespace deltaserve
