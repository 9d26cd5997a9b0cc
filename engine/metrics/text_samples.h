// Test helper: the samples of a Prometheus text exposition, to look values
// up by metric name and labels. Test-only.
#ifndef DELTASERVE_ENGINE_METRICS_TEXT_SAMPLES_H_
#define DELTASERVE_ENGINE_METRICS_TEXT_SAMPLES_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace deltaserve {
namespace testing {

struct TextSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Every sample line of `text` (comments skipped). A line that does not parse
// is returned with an empty name.
std::vector<TextSample> ParseTextSamples(absl::string_view text);

// The value of the sample named `name` whose labels are exactly `labels`;
// nullopt when there is none.
std::optional<double> SampleValue(
    absl::string_view text, absl::string_view name,
    const std::map<std::string, std::string>& labels);

}  // namespace testing
}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_METRICS_TEXT_SAMPLES_H_
