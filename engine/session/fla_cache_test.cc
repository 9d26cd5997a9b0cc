// EncodeFlaCache and DecodeFlaCache alone, on the reference caches of the
// fla fixtures (tests/testdata/*/golden.safetensors, written by fla): the
// reference decodes and encodes back to itself, the recurrent layout follows
// the model type and never the shapes, every bad file is refused with the
// code and the name of the tensor or key, and model types without an fla
// layout are refused by name. The engine-level tests (reference states
// computed by the engine, generation from imported caches, round trips):
// engine/engine_fla_cache_test.cc.
#include "engine/session/fla_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/model/model_spec.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

constexpr char kPure[] = "tests/testdata/deltanet-tiny";
constexpr char kHybrid[] = "tests/testdata/deltanet-hybrid-tiny";
constexpr char kSwa[] = "tests/testdata/deltanet-swa-tiny";
constexpr char kGated[] = "tests/testdata/gated-deltanet-tiny";
constexpr char kFingerprint[] = "00112233445566778899aabbccddeeff";
constexpr int kPageSize = 16;
constexpr int64_t kPromptLen = 200;

ModelSpec SpecOf(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(ss.str(), "config.json");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

SessionMeta NewMeta() {
  SessionMeta meta;
  meta.session_id = "0123456789abcdef0123456789abcdef";
  meta.model_fingerprint = kFingerprint;
  return meta;
}

std::vector<float> FloatsOf(const TensorToWrite& t) {
  std::vector<float> out(t.bytes.size() / 4);
  std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
  return out;
}

void SetFloats(TensorToWrite* t, const std::vector<float>& v) {
  t->bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// An fla cache file to edit: tensors by name, and metadata.
struct File {
  std::map<std::string, TensorToWrite> tensors;
  std::map<std::string, std::string> metadata;

  std::string Bytes() const {
    std::vector<TensorToWrite> list;
    for (const auto& [name, t] : tensors) list.push_back(t);
    absl::StatusOr<std::string> bytes = EncodeSafetensors(list, metadata);
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    return bytes.ok() ? *bytes : "";
  }
  static File Parse(const std::string& bytes) {
    File f;
    absl::StatusOr<SafetensorsContents> c = ParseSafetensors(bytes, "test");
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return f;
    f.metadata = c->metadata;
    for (const auto& [name, e] : c->tensors) {
      TensorToWrite t;
      t.name = name;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.bytes.assign(reinterpret_cast<const char*>(e.data), e.num_bytes);
      f.tensors[name] = std::move(t);
    }
    return f;
  }
};

// The fixture's reference cache, as fla would write it (no metadata), with
// token_ids = the prompt it was computed from.
File Reference(const std::string& dir) {
  std::ifstream in(dir + "/golden.safetensors", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  File golden = File::Parse(ss.str());
  File f;
  for (auto& [name, t] : golden.tensors) {
    if (absl::StartsWith(name, "state.")) f.tensors[name] = t;
  }
  TensorToWrite ids = golden.tensors.at("prompt_ids");
  ids.name = "token_ids";
  f.tensors["token_ids"] = ids;
  return f;
}

absl::StatusOr<SessionSnapshot> Decode(const File& f, const ModelSpec& spec) {
  return DecodeFlaCache(f.Bytes(), spec, kPageSize, NewMeta());
}

TEST(FlaCacheTest, ReferenceCachesDecodeAndEncodeBack) {
  for (const char* dir : {kPure, kHybrid, kSwa, kGated}) {
    SCOPED_TRACE(dir);
    const ModelSpec spec = SpecOf(dir);
    const File ref = Reference(dir);
    absl::StatusOr<SessionSnapshot> snap = Decode(ref, spec);
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(snap->meta.num_tokens, kPromptLen);
    EXPECT_EQ(snap->tokens.size(), static_cast<size_t>(kPromptLen));
    EXPECT_EQ(snap->meta.model_fingerprint, kFingerprint);
    absl::StatusOr<std::string> bytes = EncodeFlaCache(*snap, spec);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    const File out = File::Parse(*bytes);
    EXPECT_EQ(out.tensors.size(), ref.tensors.size());
    EXPECT_EQ(out.tensors.at("token_ids").bytes,
              ref.tensors.at("token_ids").bytes);
    EXPECT_EQ(out.metadata.at(kFlaMetaModelType), spec.model_type);
    EXPECT_EQ(out.metadata.at(kFlaMetaFingerprint), kFingerprint);
    EXPECT_EQ(out.metadata.at(kFlaMetaStateTokens), "200");
    EXPECT_EQ(
        out.metadata.at(kFlaMetaRecurrentLayout),
        spec.model_type == "gated_deltanet" ? "value_first" : "key_first");
    for (const auto& [name, want] : ref.tensors) {
      SCOPED_TRACE(name);
      ASSERT_EQ(out.tensors.count(name), 1u);
      const TensorToWrite& got = out.tensors.at(name);
      ASSERT_EQ(got.shape, want.shape);
      ASSERT_EQ(got.dtype, want.dtype);
      if (name == "token_ids") continue;
      const std::vector<float> g = FloatsOf(got), w = FloatsOf(want);
      const int64_t cols = want.shape.back();
      // What deltaserve does not keep comes back as zeros: the oldest conv
      // input of each channel, the oldest row of a full sliding window.
      // Everything else is the reference, bit for bit.
      for (size_t i = 0; i < g.size(); ++i) {
        const bool dropped =
            (absl::StrContains(name, "conv_state") && i % cols == 0) ||
            (dir == std::string(kSwa) &&
             absl::StrContains(name, "attn_state") &&
             static_cast<int64_t>(i) < cols);
        ASSERT_EQ(g[i], dropped ? 0.f : w[i]) << "element " << i;
      }
    }
  }
}

TEST(FlaCacheTest, GatedDeltaNetStateIsTransposedToKeyFirst) {
  const ModelSpec spec = SpecOf(kGated);
  const GatedDeltaRuleSpec& g = spec.blocks[0].gdr;
  const int64_t h = g.num_v_heads, dk = g.head_k_dim, dv = g.head_v_dim;
  ASSERT_NE(dk, dv);  // K = 32, V = 64: the shapes alone tell them apart
  const File ref = Reference(kGated);
  const std::vector<float> fla =
      FloatsOf(ref.tensors.at("state.0.recurrent_state"));
  ASSERT_EQ(ref.tensors.at("state.0.recurrent_state").shape,
            (std::vector<int64_t>{h, dv, dk}));
  absl::StatusOr<SessionSnapshot> snap = Decode(ref, spec);
  ASSERT_TRUE(snap.ok()) << snap.status();
  const std::vector<float>& ours = snap->recurrent[0];
  for (int64_t hi = 0; hi < h; ++hi) {
    for (int64_t k = 0; k < dk; ++k) {
      for (int64_t v = 0; v < dv; ++v) {
        ASSERT_EQ(ours[(hi * dk + k) * dv + v], fla[(hi * dv + v) * dk + k]);
      }
    }
  }
  // The conv tail holds columns 1..3 of q, then k, then v.
  const std::vector<float> conv_k =
      FloatsOf(ref.tensors.at("state.0.conv_state.k"));
  const float* tail = ours.data() + h * dk * dv;
  const int64_t kd = g.key_dim();
  EXPECT_EQ(tail[(kd + 5) * 3 + 2], conv_k[5 * 4 + 3]);
}

TEST(FlaCacheTest, LayoutComesFromTheModelTypeNotTheShapes) {
  // deltanet-tiny has K = V = 64: a value-first and a key-first state have
  // the same shape. Read as delta_net the state is kept as it is; the same
  // file read for a gated_deltanet model of the same shapes is transposed.
  ModelSpec spec = SpecOf(kPure);
  const GatedDeltaRuleSpec& g = spec.blocks[0].gdr;
  ASSERT_EQ(g.head_k_dim, g.head_v_dim);
  const File ref = Reference(kPure);
  const std::vector<float> fla =
      FloatsOf(ref.tensors.at("state.0.recurrent_state"));
  absl::StatusOr<SessionSnapshot> as_delta = Decode(ref, spec);
  ASSERT_TRUE(as_delta.ok()) << as_delta.status();
  spec.model_type = "gated_deltanet";
  absl::StatusOr<SessionSnapshot> as_gated = Decode(ref, spec);
  ASSERT_TRUE(as_gated.ok()) << as_gated.status();
  const int64_t d = g.head_k_dim;
  const std::vector<float>& a = as_delta->recurrent[0];
  const std::vector<float>& b = as_gated->recurrent[0];
  EXPECT_TRUE(std::equal(fla.begin(), fla.end(), a.begin()));
  EXPECT_FALSE(std::equal(fla.begin(), fla.end(), b.begin()));
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(b[i * d + j], a[j * d + i]);
  }
  // Metadata saying otherwise is refused, whichever way round.
  File labelled = ref;
  labelled.metadata[kFlaMetaRecurrentLayout] = "key_first";
  const absl::Status st = Decode(labelled, spec).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "recurrent_layout")) << st;
}

// A bad file: how it is made from a good one, and what it gets.
struct BadCase {
  const char* what;
  const char* dir;
  std::function<void(File*)> edit;
  absl::StatusCode code;
  const char* names;  // the message names this
};

TEST(FlaCacheTest, BadFilesGetTheRightCodeAndNameTheTensor) {
  using C = absl::StatusCode;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto set_token = [](File* f, int i, int64_t id) {
    std::memcpy(f->tensors.at("token_ids").bytes.data() + 8 * i, &id, 8);
  };
  auto drop_rows = [](File* f, const std::string& name, int64_t n) {
    TensorToWrite& t = f->tensors.at(name);
    const int64_t row = t.shape[1] * 4;
    t.bytes = t.bytes.substr(n * row);
    t.shape[0] -= n;
  };
  const std::vector<BadCase> cases = {
      {"missing tensor", kGated,
       [](File* f) { f->tensors.erase("state.2.conv_state.k"); },
       C::kInvalidArgument, "state.2.conv_state.k"},
      {"missing token_ids", kGated,
       [](File* f) { f->tensors.erase("token_ids"); }, C::kInvalidArgument,
       "token_ids"},
      {"wrong dtype of the state", kGated,
       [](File* f) {
         TensorToWrite& t = f->tensors.at("state.1.recurrent_state");
         t.dtype = DType::kBF16;
         t.bytes.resize(t.bytes.size() / 2);
       },
       C::kInvalidArgument, "state.1.recurrent_state"},
      {"token ids as i32", kGated,
       [](File* f) {
         TensorToWrite& t = f->tensors.at("token_ids");
         t.dtype = DType::kI32;
         t.bytes.resize(t.bytes.size() / 2);
       },
       C::kInvalidArgument, "token_ids"},
      // Gated DeltaNet's state given key-first: [H, K, V] = [2, 32, 64].
      {"key-first state for gated_deltanet", kGated,
       [](File* f) {
         f->tensors.at("state.0.recurrent_state").shape = {2, 32, 64};
       },
       C::kInvalidArgument,
       "state.0.recurrent_state has shape [2, 32, 64], "
       "expected [2, 64, 32]"},
      {"conv of the wrong width", kPure,
       [](File* f) {
         TensorToWrite& t = f->tensors.at("state.3.conv_state.v");
         t.shape = {256, 2};
       },
       C::kInvalidArgument, "state.3.conv_state.v"},
      {"layout contradicting the model type", kGated,
       [](File* f) { f->metadata[kFlaMetaRecurrentLayout] = "key_first"; },
       C::kInvalidArgument, "recurrent_layout"},
      {"layout that is no layout", kPure,
       [](File* f) { f->metadata[kFlaMetaRecurrentLayout] = "sideways"; },
       C::kInvalidArgument, "recurrent_layout"},
      {"another format", kPure,
       [](File* f) { f->metadata[kFlaMetaFormat] = "deltaserve"; },
       C::kInvalidArgument, kFlaMetaFormat},
      {"a newer version", kPure,
       [](File* f) { f->metadata[kFlaMetaVersion] = "2"; }, C::kInvalidArgument,
       kFlaMetaVersion},
      {"another model type", kPure,
       [](File* f) { f->metadata[kFlaMetaModelType] = "gated_deltanet"; },
       C::kFailedPrecondition, "gated_deltanet"},
      {"another model's fingerprint", kPure,
       [](File* f) {
         f->metadata[kFlaMetaFingerprint] = "ffeeddccbbaa99887766554433221100";
       },
       C::kFailedPrecondition, kFlaMetaFingerprint},
      {"token id past the vocabulary", kHybrid,
       [&](File* f) { set_token(f, 7, 512); }, C::kInvalidArgument,
       "token_ids holds token id 512 at index 7"},
      {"negative token id", kHybrid, [&](File* f) { set_token(f, 0, -1); },
       C::kInvalidArgument, "token_ids"},
      {"unknown tensor", kHybrid,
       [](File* f) {
         TensorToWrite t = f->tensors.at("state.0.recurrent_state");
         t.name = "state.0.ssm_state";
         f->tensors[t.name] = t;
       },
       C::kInvalidArgument, "unknown tensor state.0.ssm_state"},
      {"a layer the model does not have", kHybrid,
       [](File* f) {
         TensorToWrite t = f->tensors.at("state.0.recurrent_state");
         t.name = "state.4.recurrent_state";
         f->tensors[t.name] = t;
       },
       C::kInvalidArgument, "state.4.recurrent_state"},
      {"recurrent state for an attention layer", kHybrid,
       [](File* f) {
         TensorToWrite t = f->tensors.at("state.0.recurrent_state");
         t.name = "state.1.recurrent_state";
         f->tensors[t.name] = t;
       },
       C::kInvalidArgument, "state.1.recurrent_state"},
      {"non-finite state", kGated,
       [&](File* f) {
         TensorToWrite& t = f->tensors.at("state.3.recurrent_state");
         std::vector<float> v = FloatsOf(t);
         v[100] = nan;
         SetFloats(&t, v);
       },
       C::kInvalidArgument, "state.3.recurrent_state"},
      {"state_tokens past the history", kGated,
       [](File* f) { f->metadata[kFlaMetaStateTokens] = "201"; },
       C::kInvalidArgument, kFlaMetaStateTokens},
      {"state_tokens not a number", kGated,
       [](File* f) { f->metadata[kFlaMetaStateTokens] = "12x"; },
       C::kInvalidArgument, kFlaMetaStateTokens},
      {"global attention missing a position", kHybrid,
       [&](File* f) { drop_rows(f, "state.3.attn_state.v", 1); },
       C::kInvalidArgument, "state.3.attn_state.v has shape [199, 64]"},
      {"global attention with fewer positions than state_tokens", kHybrid,
       [](File* f) {
         TensorToWrite& t = f->tensors.at("token_ids");
         t.bytes += t.bytes.substr(0, 8);
         t.shape = {201};
       },
       C::kInvalidArgument, "state.1.attn_state.k"},
      {"sliding window of fewer than window rows", kSwa,
       [&](File* f) {
         drop_rows(f, "state.1.attn_state.k", 1);
         drop_rows(f, "state.1.attn_state.v", 1);
       },
       C::kInvalidArgument,
       "state.1.attn_state.k has 47 rows; a sliding-window layer of window "
       "48 after 200 tokens needs between 48 and 200"},
      {"sliding-window keys and values of different lengths", kSwa,
       [&](File* f) { drop_rows(f, "state.3.attn_state.v", 1); },
       C::kInvalidArgument, "state.3.attn_state.v"},
      {"attention rows of the wrong width", kSwa,
       [](File* f) {
         f->tensors.at("state.1.attn_state.k").shape = {96, 32};
       },
       C::kInvalidArgument, "state.1.attn_state.k"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    File f = Reference(c.dir);
    c.edit(&f);
    const absl::Status st = Decode(f, SpecOf(c.dir)).status();
    EXPECT_EQ(st.code(), c.code) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), c.names)) << st;
  }
}

TEST(FlaCacheTest, SlidingWindowTakesTheLastRowsAtTheirPositions) {
  // More rows than the window (up to T) are accepted; the last window − 1
  // positions are what a next query reads, wherever the file starts.
  const ModelSpec spec = SpecOf(kSwa);
  const File ref = Reference(kSwa);
  absl::StatusOr<SessionSnapshot> want = Decode(ref, spec);
  ASSERT_TRUE(want.ok()) << want.status();
  File longer = ref;
  for (const char* name : {"state.1.attn_state.k", "state.1.attn_state.v",
                           "state.3.attn_state.k", "state.3.attn_state.v"}) {
    TensorToWrite& t = longer.tensors.at(name);
    t.bytes = std::string(10 * 64 * 4, '\x7f') + t.bytes;  // 10 rows more
    t.shape[0] += 10;
  }
  absl::StatusOr<SessionSnapshot> got = Decode(longer, spec);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kv_pages, want->kv_pages);
  // Position 199's key is the reference's last row.
  const std::vector<float> k = FloatsOf(ref.tensors.at("state.3.attn_state.k"));
  const KvPageRecord& last = want->kv_pages.back();
  EXPECT_EQ(last.page_index, 199 / kPageSize);
  const std::vector<float>& page_keys = last.keys[3];
  EXPECT_TRUE(std::equal(page_keys.end() - 64, page_keys.end(), k.end() - 64));
  EXPECT_EQ(want->meta.window_from, 200 - 48 + 1);
}

TEST(FlaCacheTest, MalformedSafetensorsIsInvalidArgument) {
  const ModelSpec spec = SpecOf(kGated);
  const std::string good = Reference(kGated).Bytes();
  for (const std::string& bytes :
       {std::string(), std::string("not safetensors"),
        good.substr(0, good.size() - 1), good.substr(0, 100),
        std::string("\x10\0\0\0\0\0\0\0{\"a\":1}         ", 24)}) {
    const absl::Status st =
        DecodeFlaCache(bytes, spec, kPageSize, NewMeta()).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "fla cache")) << st;
  }
}

TEST(FlaCacheTest, ModelTypesWithoutAnFlaLayoutAreRefusedByName) {
  const File ref = Reference(kPure);
  for (const char* type :
       {"qwen3_5", "qwen3_5_text", "qwen3_next", "linear_attn", "power_attn"}) {
    ModelSpec spec = SpecOf(kPure);
    spec.model_type = type;
    const absl::Status dec = Decode(ref, spec).status();
    EXPECT_EQ(dec.code(), absl::StatusCode::kFailedPrecondition) << dec;
    EXPECT_TRUE(absl::StrContains(dec.message(), type)) << dec;
    SessionSnapshot empty;
    const absl::Status enc = EncodeFlaCache(empty, spec).status();
    EXPECT_EQ(enc.code(), absl::StatusCode::kFailedPrecondition) << enc;
    EXPECT_TRUE(absl::StrContains(enc.message(), type)) << enc;
  }
  // The real configs of the Qwen fixtures parse to such model types.
  for (const char* dir :
       {"tests/testdata/qwen35-tiny", "tests/testdata/qwen3next-tiny"}) {
    const absl::Status st = FlaRecurrentLayoutOf(SpecOf(dir)).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  }
}

}  // namespace
}  // namespace deltaserve
