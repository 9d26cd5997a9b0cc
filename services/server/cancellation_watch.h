// CancellationWatch lets the engine thread ask whether an RPC was cancelled
// without touching its ServerContext after the handler returned: the handler
// detaches the context before it returns, and from then on the answer is
// "cancelled". Shared (std::shared_ptr) by the handler and the engine's
// request. Thread-safe.
#ifndef DELTASERVE_SERVICES_SERVER_CANCELLATION_WATCH_H_
#define DELTASERVE_SERVICES_SERVER_CANCELLATION_WATCH_H_

#include <grpcpp/server_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace deltaserve {

class CancellationWatch {
 public:
  explicit CancellationWatch(grpc::ServerContext* context)
      : context_(context) {}

  bool IsCancelled() const {
    absl::MutexLock lock(&mu_);
    return context_ == nullptr || context_->IsCancelled();
  }

  void Detach() {
    absl::MutexLock lock(&mu_);
    context_ = nullptr;
  }

 private:
  mutable absl::Mutex mu_;
  grpc::ServerContext* context_ ABSL_GUARDED_BY(mu_);
};

}  // namespace deltaserve

#endif  // DELTASERVE_SERVICES_SERVER_CANCELLATION_WATCH_H_
