#include "engine/state_store/in_memory_state_store.h"

#include <utility>

namespace deltaserve {

using state_store_internal::Family;
using state_store_internal::ReadView;
using state_store_internal::WriteOp;

// Holds the store's mutex shared from construction to destruction, so the
// key space cannot change under it.
class InMemoryStateStore::View final : public ReadView {
 public:
  explicit View(InMemoryStateStore* store) ABSL_NO_THREAD_SAFETY_ANALYSIS
      : store_(store) {
    store_->mu_.ReaderLock();
  }
  ~View() override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    store_->mu_.ReaderUnlock();
  }

  absl::Status Get(Family family, absl::string_view key,
                   absl::FunctionRef<absl::Status(absl::string_view)> fn)
      override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const Map& map = store_->families_[static_cast<int>(family)];
    auto it = map.find(key);
    if (it == map.end()) return absl::NotFoundError("no such key");
    return fn(it->second);
  }

  absl::Status Scan(Family family, absl::string_view begin,
                    absl::string_view end,
                    absl::FunctionRef<absl::StatusOr<bool>(absl::string_view,
                                                           absl::string_view)>
                        fn) override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const Map& map = store_->families_[static_cast<int>(family)];
    for (auto it = map.lower_bound(begin);
         it != map.end() && (end.empty() || it->first < end); ++it) {
      absl::StatusOr<bool> more = fn(it->first, it->second);
      if (!more.ok()) return more.status();
      if (!*more) break;
    }
    return absl::OkStatus();
  }

 private:
  InMemoryStateStore* store_;
};

std::unique_ptr<ReadView> InMemoryStateStore::NewReadView() {
  return std::make_unique<View>(this);
}

absl::Status InMemoryStateStore::Write(const std::vector<WriteOp>& ops) {
  absl::MutexLock lock(&mu_);
  for (const WriteOp& op : ops) {
    Map& map = families_[static_cast<int>(op.family)];
    switch (op.kind) {
      case WriteOp::Kind::kPut:
        map[op.key] = op.value.Flatten();
        break;
      case WriteOp::Kind::kDelete:
        map.erase(op.key);
        break;
      case WriteOp::Kind::kDeleteRange:
        map.erase(map.lower_bound(op.key), map.lower_bound(op.end_key));
        break;
    }
  }
  return absl::OkStatus();
}

}  // namespace deltaserve
