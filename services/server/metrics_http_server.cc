#include "services/server/metrics_http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

namespace deltaserve {
namespace {

constexpr size_t kMaxRequestBytes = 16 << 10;

struct Address {
  std::string host;  // as given ("0.0.0.0" when empty)
  bool ipv6 = false;
  sockaddr_in v4{};
  sockaddr_in6 v6{};
};

absl::StatusOr<Address> ParseAddress(const std::string& listen) {
  auto bad = [&listen](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", listen, "\" ", why,
        " (want HOST:PORT: an IP address, \"localhost\" or nothing for "
        "every interface, and a port in [0, 65535])"));
  };
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return bad("has no port");
  Address a;
  a.host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  int port = 0;
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return bad("has a bad port");
  }
  if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']') {
    a.ipv6 = true;
    a.v6.sin6_family = AF_INET6;
    a.v6.sin6_port = htons(static_cast<uint16_t>(port));
    const std::string ip = a.host.substr(1, a.host.size() - 2);
    if (inet_pton(AF_INET6, ip.c_str(), &a.v6.sin6_addr) != 1) {
      return bad("has a bad IPv6 address");
    }
    return a;
  }
  a.v4.sin_family = AF_INET;
  a.v4.sin_port = htons(static_cast<uint16_t>(port));
  std::string ip = a.host;
  if (ip.empty()) {
    a.host = ip = "0.0.0.0";
  } else if (ip == "localhost") {
    ip = "127.0.0.1";
  }
  if (inet_pton(AF_INET, ip.c_str(), &a.v4.sin_addr) != 1) {
    return bad("has a bad host (not an IP address)");
  }
  return a;
}

void SetTimeout(int fd, int option, absl::Duration d) {
  const timeval tv = absl::ToTimeval(d);
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string Response(absl::string_view status, absl::string_view type,
                     absl::string_view body, bool with_body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n",
                      with_body ? body : absl::string_view());
}

}  // namespace

absl::Status MetricsHttpServer::CheckAddress(const std::string& listen) {
  return ParseAddress(listen).status();
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    Options options) {
  absl::StatusOr<Address> address = ParseAddress(options.listen);
  if (!address.ok()) return address.status();
  auto unavailable = [&options](absl::string_view what) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                               options.listen, ": ", what, ": ",
                                               std::strerror(errno)));
  };
  const int fd =
      socket(address->ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable("socket");
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const int bound =
      address->ipv6 ? bind(fd, reinterpret_cast<const sockaddr*>(&address->v6),
                           sizeof(address->v6))
                    : bind(fd, reinterpret_cast<const sockaddr*>(&address->v4),
                           sizeof(address->v4));
  if (bound != 0 || listen(fd, 16) != 0) {
    absl::Status st = unavailable(bound != 0 ? "bind" : "listen");
    close(fd);
    return st;
  }
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) {
    absl::Status st = unavailable("getsockname");
    close(fd);
    return st;
  }
  const int port =
      ntohs(address->ipv6 ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                          : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
  int wake[2];
  if (pipe2(wake, O_CLOEXEC) != 0) {
    absl::Status st = unavailable("pipe");
    close(fd);
    return st;
  }
  auto server = std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(
      std::move(options), address->host, fd, port, wake[0], wake[1]));
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(Options options, std::string host,
                                     int listen_fd, int port, int wake_read,
                                     int wake_write)
    : options_(std::move(options)),
      host_(std::move(host)),
      listen_fd_(listen_fd),
      port_(port),
      wake_read_(wake_read),
      wake_write_(wake_write) {}

MetricsHttpServer::~MetricsHttpServer() {
  const char stop = 1;
  while (write(wake_write_, &stop, 1) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_read_);
  close(wake_write_);
}

std::string MetricsHttpServer::address() const {
  return absl::StrCat(host_, ":", port_);
}

void MetricsHttpServer::Loop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_read_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // the client went away, or out of descriptors
    Serve(fd);
    close(fd);
  }
}

void MetricsHttpServer::Serve(int fd) {
  SetTimeout(fd, SO_SNDTIMEO, options_.io_timeout);
  // The request line and headers (a body, none expected, is ignored), read
  // by the deadline unless the server stops first.
  const absl::Time deadline = absl::Now() + options_.io_timeout;
  std::string request;
  char buf[4096];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos) {
    if (request.size() > kMaxRequestBytes) {
      SendAll(fd, Response("431 Request Header Fields Too Large", "text/plain",
                           "request too large\n", true));
      return;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_read_, POLLIN, 0}};
    const int ready =
        poll(fds, 2, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0 || fds[1].revents != 0) return;  // failed, or stopping
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // closed or failed
    request.append(buf, static_cast<size_t>(n));
  }
  // "METHOD TARGET VERSION"
  const absl::string_view line =
      absl::string_view(request).substr(0, request.find_first_of("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 =
      sp1 == absl::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == absl::string_view::npos) {
    SendAll(fd, Response("400 Bad Request", "text/plain",
                         "malformed request line\n", true));
    return;
  }
  const absl::string_view method = line.substr(0, sp1);
  absl::string_view path = line.substr(sp1 + 1, sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  if (path != "/metrics") {
    SendAll(fd,
            Response("404 Not Found", "text/plain",
                     "not found; metrics are at /metrics\n", method != "HEAD"));
    return;
  }
  if (method != "GET" && method != "HEAD") {
    SendAll(fd, Response("405 Method Not Allowed", "text/plain", "use GET\n",
                         true));
    return;
  }
  SendAll(fd, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                       options_.body(), method == "GET"));
}

}  // namespace deltaserve
