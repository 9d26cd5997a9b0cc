#include "engine/state_store/state_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace deltaserve {

int64_t SessionMeta::num_kv_pages() const {
  bool any_kv = false;
  for (const LayerLayout& l : layers)
    any_kv = any_kv || l.kv_floats_per_token > 0;
  if (!any_kv || page_size <= 0) return 0;
  return (num_tokens + page_size - 1) / page_size;
}

int64_t SessionMeta::state_bytes() const {
  int64_t recurrent = 0;
  int64_t kv_per_token = 0;
  for (const LayerLayout& l : layers) {
    recurrent += l.recurrent_floats;
    kv_per_token += l.kv_floats_per_token;
  }
  const int64_t kv_positions =
      std::max<int64_t>(0, num_tokens - first_kv_page * page_size);
  return static_cast<int64_t>(sizeof(float)) *
             (recurrent + 2 * kv_per_token * kv_positions) +
         static_cast<int64_t>(sizeof(int32_t)) * history_tokens;
}

absl::Status ValidateSessionId(absl::string_view id) {
  bool ok = id.size() == 32;
  for (char c : id) {
    ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("malformed session id \"", id.substr(0, 64),
                   "\": want 32 lowercase hex characters"));
}

}  // namespace deltaserve
