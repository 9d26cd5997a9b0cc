// Sessions in the cache layout of fla (flash-linear-attention): converts a
// session's durable state (SessionSnapshot) to and from a safetensors byte
// string holding, per layer, the tensors fla's DeltaNet and Gated DeltaNet
// keep in their cache, so that a session can move between deltaserve and fla.
//
// Layout (engine/state_store/README.md, "Export in fla's cache layout", has
// the full table): `token_ids` I64 [T_hist], the session's history; per
// gated-delta-rule layer l `state.<l>.recurrent_state` F32 — [H, K, V]
// (key-first) for `delta_net`, [H, V, K] (value-first) for `gated_deltanet`,
// as fla stores them — and `state.<l>.conv_state.{q,k,v}` F32
// [channels, conv_size], the last conv_size inputs of each channel, oldest
// first; per attention layer `state.<l>.attn_state.{k,v}` F32
// [rows, kv_heads·head_dim], keys after RoPE, one row per position (all
// positions for global attention, the last min(T, window) for a sliding
// window). deltaserve keeps only what its next token reads: conv_size − 1
// inputs per channel and window − 1 positions per sliding-window layer, so
// an export writes the oldest conv column, and the oldest window row once
// T ≥ window, as zeros (fla's kernels never read them either).
//
// The recurrent layout comes from the model type alone, never from shapes
// (K may equal V). Model types for which fla has no cache layout (qwen3_5,
// qwen3_5_text, qwen3_next, linear_attn, power_attn) are refused.
//
// Plain functions of their arguments; thread-safe.
#ifndef DELTASERVE_ENGINE_SESSION_FLA_CACHE_H_
#define DELTASERVE_ENGINE_SESSION_FLA_CACHE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/model_spec.h"
#include "engine/state_store/state_store.h"

namespace deltaserve {

// `__metadata__` keys of an fla cache file. Every value is a string; every
// key is optional on import (a file written by fla itself has none), and
// one that is present must agree with the importing model.
inline constexpr char kFlaMetaFormat[] = "cache_format";           // "fla"
inline constexpr char kFlaMetaVersion[] = "cache_format_version";  // "1"
inline constexpr char kFlaMetaModelType[] = "model_type";
inline constexpr char kFlaMetaFingerprint[] = "model_fingerprint";
// "key_first" or "value_first".
inline constexpr char kFlaMetaRecurrentLayout[] = "recurrent_layout";
// Decimal: how many of token_ids the state covers (the rest wait to be
// fed); absent: all of them.
inline constexpr char kFlaMetaStateTokens[] = "state_tokens";

inline constexpr char kFlaFormatName[] = "fla";
inline constexpr char kFlaFormatVersion[] = "1";

// How a layer's recurrent state is laid out per head.
enum class FlaRecurrentLayout {
  kKeyFirst,    // [H, K, V]: delta_net, and deltaserve's own layout
  kValueFirst,  // [H, V, K]: gated_deltanet
};
// "key_first" / "value_first".
const char* FlaRecurrentLayoutName(FlaRecurrentLayout layout);

// The recurrent layout of `spec`'s model type. FAILED_PRECONDITION naming
// the model type when fla has no cache layout for it (only delta_net and
// gated_deltanet, whose layers are gated-delta-rule, global or
// sliding-window attention layers, have one).
absl::StatusOr<FlaRecurrentLayout> FlaRecurrentLayoutOf(const ModelSpec& spec);

// The session `snapshot` (complete, as StateStore::Load returns it) of a
// model of `spec` as an fla cache file. FAILED_PRECONDITION: a model type
// without an fla layout, or a snapshot of another layout;
// DATA_LOSS: the snapshot lacks pages or floats its layout promises.
absl::StatusOr<std::string> EncodeFlaCache(const SessionSnapshot& snapshot,
                                           const ModelSpec& spec);

// The session an fla cache file describes, as a complete snapshot for
// StateStore::Commit(snapshot, 0) with KV pages of `page_size` tokens.
// `meta` supplies the new session's id, model fingerprint, tenant and times;
// the rest of it is filled in. Errors name the tensor or metadata key:
//   FAILED_PRECONDITION  a model type without an fla layout; metadata naming
//                        another model type or fingerprint than `meta`'s
//   INVALID_ARGUMENT     malformed safetensors; a missing, unknown or
//                        non-finite tensor; a wrong dtype or shape; a token
//                        id outside [0, vocab); metadata that is not this
//                        format, of an unknown version, with a recurrent
//                        layout contradicting the model type's, or with
//                        state_tokens outside [0, T_hist]; a sliding-window
//                        layer with fewer than min(T, window) rows.
absl::StatusOr<SessionSnapshot> DecodeFlaCache(absl::string_view bytes,
                                               const ModelSpec& spec,
                                               int page_size, SessionMeta meta);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_SESSION_FLA_CACHE_H_
