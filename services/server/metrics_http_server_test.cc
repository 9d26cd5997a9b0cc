// MetricsHttpServer over real sockets: /metrics answers with the body,
// other paths and methods are refused, a port in use and malformed
// addresses are errors that say so, a silent client does not hold the
// server up, and the destructor stops promptly.
#include "services/server/metrics_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

// Connects to 127.0.0.1:port; -1 on failure.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` and reads the whole response (the server closes).
std::string Exchange(int port, const std::string& request) {
  const int fd = Connect(port);
  EXPECT_GE(fd, 0);
  if (fd < 0) return "";
  EXPECT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, n);
  close(fd);
  return out;
}

std::unique_ptr<MetricsHttpServer> MustStart(const std::string& listen,
                                             std::function<std::string()> body,
                                             absl::Duration timeout) {
  MetricsHttpServer::Options options;
  options.listen = listen;
  options.body = std::move(body);
  options.io_timeout = timeout;
  auto server = MetricsHttpServer::Start(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(MetricsHttpServerTest, ServesTheBodyAtMetrics) {
  std::atomic<int> scrapes{0};
  auto server = MustStart(
      "127.0.0.1:0",
      [&] { return absl::StrCat("# TYPE x counter\nx ", ++scrapes, "\n"); },
      absl::Seconds(10));
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  EXPECT_EQ(server->address(), absl::StrCat("127.0.0.1:", server->port()));

  const std::string ok = Exchange(
      server->port(),
      "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(ok, "HTTP/1.1 200 OK\r\n")) << ok;
  EXPECT_TRUE(absl::StrContains(
      ok, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  EXPECT_TRUE(absl::StrContains(ok, "Content-Length: 21\r\n")) << ok;
  EXPECT_TRUE(absl::EndsWith(ok, "\r\n\r\n# TYPE x counter\nx 1\n")) << ok;
  // Every scrape reads the body again; a query string is ignored.
  EXPECT_TRUE(absl::EndsWith(
      Exchange(server->port(), "GET /metrics?x=1 HTTP/1.0\r\n\r\n"), "x 2\n"));
  const std::string head =
      Exchange(server->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(head, "HTTP/1.1 200 OK\r\n")) << head;
  EXPECT_TRUE(absl::EndsWith(head, "\r\n\r\n")) << head;

  EXPECT_TRUE(absl::StartsWith(
      Exchange(server->port(), "GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 "));
  EXPECT_TRUE(absl::StartsWith(
      Exchange(server->port(), "POST /metrics HTTP/1.1\r\n\r\n"),
      "HTTP/1.1 405 "));
  EXPECT_TRUE(absl::StartsWith(Exchange(server->port(), "nonsense\r\n\r\n"),
                               "HTTP/1.1 400 "));
  // Headers past 16 KiB (all of them read, so the server closes cleanly).
  const std::string big = "GET /metrics HTTP/1.1\r\nX: ";
  EXPECT_TRUE(absl::StartsWith(
      Exchange(server->port(), big + std::string(20000 - big.size(), 'a')),
      "HTTP/1.1 431 "));
}

TEST(MetricsHttpServerTest, PortInUseAndBadAddressesAreClearErrors) {
  auto first = MustStart(
      "127.0.0.1:0", [] { return ""; }, absl::Seconds(1));
  ASSERT_NE(first, nullptr);
  MetricsHttpServer::Options options;
  options.listen = absl::StrCat("127.0.0.1:", first->port());
  options.body = [] { return ""; };
  auto second = MetricsHttpServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(
      absl::StrContains(second.status().message(), "Address already in use"))
      << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), options.listen))
      << second.status();

  for (const char* bad :
       {"", "9090", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
        "127.0.0.1:-1", "127.0.0.1:80x", "example.com:9090", "[::1:9090",
        "[nonsense]:9090", "1.2.3:9090"}) {
    options.listen = bad;
    auto s = MetricsHttpServer::Start(options);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(s.status().message(), "want HOST:PORT"))
        << s.status();
    EXPECT_EQ(MetricsHttpServer::CheckAddress(bad).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(MetricsHttpServer::CheckAddress("localhost:0").ok());
  EXPECT_TRUE(MetricsHttpServer::CheckAddress(":9090").ok());
  EXPECT_TRUE(MetricsHttpServer::CheckAddress("[::1]:9090").ok());
  auto local = MustStart(
      "localhost:0", [] { return "y 1\n"; }, absl::Seconds(1));
  ASSERT_NE(local, nullptr);
  EXPECT_TRUE(absl::EndsWith(
      Exchange(local->port(), "GET /metrics HTTP/1.1\r\n\r\n"), "y 1\n"));
  EXPECT_EQ(local->address(), absl::StrCat("localhost:", local->port()));
  auto any = MustStart(
      ":0", [] { return ""; }, absl::Seconds(1));
  ASSERT_NE(any, nullptr);
  EXPECT_EQ(any->address(), absl::StrCat("0.0.0.0:", any->port()));
}

TEST(MetricsHttpServerTest, SilentClientIsDroppedAndStopIsPrompt) {
  auto server = MustStart(
      "127.0.0.1:0", [] { return "z 1\n"; }, absl::Milliseconds(300));
  ASSERT_NE(server, nullptr);
  // A client that never sends: dropped after the timeout, then the next
  // scrape is served.
  const int silent = Connect(server->port());
  ASSERT_GE(silent, 0);
  const absl::Time start = absl::Now();
  EXPECT_TRUE(absl::EndsWith(
      Exchange(server->port(), "GET /metrics HTTP/1.1\r\n\r\n"), "z 1\n"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  close(silent);

  // Stopping while a client is connected and silent does not wait for it.
  auto slow = MustStart(
      "127.0.0.1:0", [] { return ""; }, absl::Seconds(60));
  ASSERT_NE(slow, nullptr);
  const int idle = Connect(slow->port());
  ASSERT_GE(idle, 0);
  absl::SleepFor(absl::Milliseconds(50));  // let it be accepted
  const absl::Time stop = absl::Now();
  slow.reset();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  close(idle);
}

}  // namespace
}  // namespace deltaserve
