// MetricsHttpServer: serves Prometheus's text format at /metrics over plain
// HTTP/1.1 (one connection at a time, each closed after its response),
// for the server's --metrics_listen.
//
// It stands in for prometheus-cpp's civetweb-based prometheus::Exposer:
// Debian's civetweb starts its threads with a fixed 100 KiB stack, and glibc
// refuses such a thread in a process whose static TLS is larger (a server
// linked with cuBLASLt and OpenBLAS has about 170 KiB), so the Exposer
// cannot start in a CUDA build.
//
// Owns its listening socket and one thread; the destructor stops both.
// Thread-safe.
#ifndef DELTASERVE_SERVICES_SERVER_METRICS_HTTP_SERVER_H_
#define DELTASERVE_SERVICES_SERVER_METRICS_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace deltaserve {

class MetricsHttpServer {
 public:
  struct Options {
    // "HOST:PORT": HOST an IPv4 address, an IPv6 address in brackets,
    // "localhost" (127.0.0.1) or empty (every IPv4 interface); port 0 picks
    // a free port.
    std::string listen;
    // The body of GET /metrics, called for every scrape (from the server's
    // thread). Must be thread-safe and outlive the server.
    std::function<std::string()> body;
    // A client that sends its request or reads the response slower than
    // this is dropped.
    absl::Duration io_timeout = absl::Seconds(10);
  };

  // Binds and starts serving. INVALID_ARGUMENT: malformed address (the
  // message names it and the expected form). UNAVAILABLE: the address
  // cannot be bound (e.g. "Address already in use").
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      Options options);
  // OK when Start would accept `listen`'s form; INVALID_ARGUMENT as Start.
  static absl::Status CheckAddress(const std::string& listen);

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  // Stops accepting, finishes the response in progress, joins the thread.
  ~MetricsHttpServer();

  // The bound port (the one picked when the requested port was 0).
  int port() const { return port_; }
  // "HOST:PORT" with the requested host ("0.0.0.0" for an empty one) and
  // the bound port.
  std::string address() const;

 private:
  MetricsHttpServer(Options options, std::string host, int listen_fd, int port,
                    int wake_read, int wake_write);
  void Loop();
  void Serve(int fd);

  const Options options_;
  const std::string host_;
  const int listen_fd_;
  const int port_;
  // Written once to stop the loop.
  const int wake_read_;
  const int wake_write_;
  std::thread thread_;
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_METRICS_HTTP_SERVER_H_
