// Injectable time source, so that tests control time.
#ifndef DELTASERVE_ENGINE_CLOCK_H_
#define DELTASERVE_ENGINE_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace deltaserve {

// Thread-safe in every implementation.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// Wall-clock time.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // A process-wide instance (never destroyed).
  static const Clock* Get() {
    static const RealClock* clock = new RealClock();
    return clock;
  }
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_CLOCK_H_
