#include "engine/metrics/text_samples.h"

#include <cstdlib>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace deltaserve {
namespace testing {

std::vector<TextSample> ParseTextSamples(absl::string_view text) {
  std::vector<TextSample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    TextSample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    std::string name(line.substr(0, i));
    bool ok = !name.empty();
    if (ok && i < line.size() && line[i] == '{') {
      ++i;
      while (ok && i < line.size() && line[i] != '}') {
        const size_t eq = line.find("=\"", i);
        if (eq == absl::string_view::npos) {
          ok = false;
          break;
        }
        std::string key(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        while (j < line.size() && line[j] != '"') {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value += line[j++];
        }
        if (j >= line.size()) {
          ok = false;
          break;
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) ok = false;
      ++i;  // '}'
    }
    if (ok) {
      std::string rest(absl::StripAsciiWhitespace(line.substr(i)));
      char* end = nullptr;
      sample.value = std::strtod(rest.c_str(), &end);
      ok = end != rest.c_str();
    }
    if (ok) sample.name = std::move(name);
    out.push_back(std::move(sample));
  }
  return out;
}

std::optional<double> SampleValue(
    absl::string_view text, absl::string_view name,
    const std::map<std::string, std::string>& labels) {
  for (const TextSample& s : ParseTextSamples(text)) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

}  // namespace testing
}  // namespace deltaserve
