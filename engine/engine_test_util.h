// Helpers shared by the engine's tests: the demo model and its golden
// prompts, a clock moved by hand, run one request to its end, build a
// greedy request. Test-only; not
// thread-safe beyond what Engine is.
#ifndef DELTASERVE_ENGINE_ENGINE_TEST_UTIL_H_
#define DELTASERVE_ENGINE_ENGINE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/clock.h"
#include "engine/engine.h"
#include "engine/model/model.h"

namespace deltaserve {
namespace testing {

// The demo model (engine/model/demo-qwen35, a data dependency of the test),
// loaded once; aborts when it cannot be loaded.
const Model& DemoModel();

// Prompt i of the demo model's golden.json, as token ids.
std::vector<int32_t> DemoPromptIds(int i);

// A clock that moves only when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch() + absl::Hours(1000);
};

// The tokens a request generated and its final event (error included).
struct RunResult {
  std::vector<int32_t> ids;
  GenerationEvent end;
};

// Submits `req` and reads its stream to the end (a stream silent for 60 s
// fails the test). A refused submission comes back as a finished event
// with its error.
RunResult RunRequest(Engine& engine, GenerationRequest req);

// A greedy request for `n` tokens after `prompt` (EOS ignored), continuing
// `session` when it is not empty.
GenerationRequest Greedy(const std::vector<int32_t>& prompt, int n,
                         const std::string& session = "");

}  // namespace testing
}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_ENGINE_TEST_UTIL_H_
