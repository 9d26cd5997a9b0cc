// Converts between a sequence's device state as the StatePool saves it
// (SavedSequence) and the durable form the StateStore keeps
// (SessionSnapshot), and identifies the model a stored state belongs to.
//
// Plain functions of their arguments; thread-safe.
#ifndef DELTASERVE_ENGINE_SESSION_SESSION_STATE_H_
#define DELTASERVE_ENGINE_SESSION_SESSION_STATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"
#include "engine/state/state_pool.h"
#include "engine/state_store/state_store.h"

namespace deltaserve {

// 32 hex characters identifying the model's function: its ModelSpec and the
// bytes of every weight. Two models with the same fingerprint compute the
// same thing, so state saved under one continues correctly under the other.
std::string ModelFingerprint(const Model& model);

// The per-layer layout of a session's state under `spec`.
std::vector<LayerLayout> SessionLayout(const ModelSpec& spec);

// The durable form of `saved` (KV cut into pages of `page_size` tokens).
// `meta` supplies the id, fingerprint, tenant and times; its layout fields
// are filled in. `tokens` is the session's token history (at least
// saved.num_tokens tokens). KV pages below `first_page` are left out: a
// snapshot for StateStore::Commit with unchanged_tokens U needs only the
// pages from U / page_size on.
SessionSnapshot ToSnapshot(const SavedSequence& saved, const ModelSpec& spec,
                           int page_size, SessionMeta meta,
                           std::vector<int32_t> tokens, int64_t first_page = 0);
// As above, but moves the recurrent state out of `saved` instead of copying
// it (`saved` is left without it).
SessionSnapshot ToSnapshot(SavedSequence&& saved, const ModelSpec& spec,
                           int page_size, SessionMeta meta,
                           std::vector<int32_t> tokens, int64_t first_page = 0);

// The state of `snapshot` for a StatePool of `spec` with `page_size`.
// FAILED_PRECONDITION when the snapshot was made for another layout or page
// size; DATA_LOSS when it lacks pages or floats its layout promises.
absl::StatusOr<SavedSequence> FromSnapshot(const SessionSnapshot& snapshot,
                                           const ModelSpec& spec,
                                           int page_size);
// As above, but moves the recurrent state out of `snapshot` instead of
// copying it; snapshot.meta and snapshot.tokens are left as they were.
absl::StatusOr<SavedSequence> FromSnapshot(SessionSnapshot&& snapshot,
                                           const ModelSpec& spec,
                                           int page_size);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_SESSION_SESSION_STATE_H_
