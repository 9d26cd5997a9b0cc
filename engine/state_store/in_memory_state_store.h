// InMemoryStateStore: a StateStore in process memory, with the same record
// format, checksums and semantics as RocksDbStateStore (it shares
// KeyValueStateStore), for tests. Nothing survives the process.
// Thread-safe.
#ifndef DELTASERVE_ENGINE_STATE_STORE_IN_MEMORY_STATE_STORE_H_
#define DELTASERVE_ENGINE_STATE_STORE_IN_MEMORY_STATE_STORE_H_

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/state_store/key_value_state_store.h"

namespace deltaserve {

class InMemoryStateStore final : public KeyValueStateStore {
 public:
  InMemoryStateStore() = default;

 protected:
  std::unique_ptr<state_store_internal::ReadView> NewReadView() override;
  absl::Status Write(
      const std::vector<state_store_internal::WriteOp>& ops) override;

 private:
  class View;
  using Map = std::map<std::string, std::string, std::less<>>;

  // Views hold it shared for their lifetime; Write holds it exclusively.
  absl::Mutex mu_;
  std::array<Map, state_store_internal::kNumFamilies> families_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_IN_MEMORY_STATE_STORE_H_
