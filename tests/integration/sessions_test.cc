// Sessions over gRPC against in-process servers on a real RocksDB
// directory: recall of facts across a pause and a server restart, the error
// codes of bad calls (unknown and malformed ids, a damaged stored record,
// tampered and foreign imports), export and import in fla's cache layout,
// and a graceful drain. A full disk: full_disk_test.cc.
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/model/safetensors.h"
#include "engine/model/tokenizer.h"
#include "engine/state_store/rocksdb_state_store.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "proto/deltaserve/v1/sessions.grpc.pb.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/session_test_util.h"
#include "tests/integration/test_util.h"

namespace deltaserve {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";
constexpr char kTinyDir[] = "tests/testdata/qwen35-tiny";
constexpr char kGatedDir[] = "tests/testdata/gated-deltanet-tiny";

// ---------------------------------------------------------------------------

// The demo model was trained on documents of "k_xxx = value" facts followed
// by "assert k_xxx == value" recalls (see its README).
TEST(SessionsTest, RecallOf32FactsSurvivesPauseAndRestart) {
  const std::string state = TempDir("recall");
  std::mt19937 rng(2026);
  std::set<std::string> keys;
  while (keys.size() < 32) {
    std::string k = "k_";
    for (int i = 0; i < 3; ++i) k += static_cast<char>('a' + rng() % 26);
    keys.insert(k);
  }
  std::vector<std::pair<std::string, int>> facts;
  std::string doc = "# facts\n";
  for (const std::string& k : keys) {
    facts.push_back({k, static_cast<int>(rng() % 1000)});
    absl::StrAppend(&doc, k, " = ", facts.back().second, "\n");
  }
  std::shuffle(facts.begin(), facts.end(), rng);
  doc += "# recall\n";

  Running a = Start(kDemoDir, state);
  ASSERT_NE(a.server, nullptr);
  const Tokenizer& tokenizer = *a.server->model().tokenizer();
  const std::vector<int32_t> doc_ids = *tokenizer.Encode(doc);
  std::vector<std::vector<int32_t>> questions;
  for (const auto& [k, v] : facts) {
    questions.push_back(*tokenizer.Encode(absl::StrCat("assert ", k, " == ")));
  }
  // The answer to question q asked of `session` (through a fork, so that
  // the questions do not see each other), or of one uninterrupted prompt.
  auto ask = [&](Running& r, const std::string& session, int q) {
    std::vector<int32_t> prompt = questions[q];
    std::string fork_id;
    if (session.empty()) {
      prompt.insert(prompt.begin(), doc_ids.begin(), doc_ids.end());
    } else {
      v1::Session fork;
      EXPECT_TRUE(Fork(r.sessions.get(), session, &fork).ok());
      fork_id = fork.session_id();
    }
    v1::GenerateRequest request = IdsRequest(prompt, 4);
    request.set_session_id(fork_id);
    request.mutable_sampling()->add_stop("\n");
    Generation g = Generate(r.inference.get(), request);
    EXPECT_TRUE(g.status.ok()) << g.status.error_message();
    if (!fork_id.empty()) {
      EXPECT_TRUE(Delete(r.sessions.get(), fork_id).ok());
    }
    return g.text();
  };

  absl::StatusOr<v1::Session> uninterrupted = Create(a.sessions.get());
  absl::StatusOr<v1::Session> paused = Create(a.sessions.get());
  ASSERT_TRUE(uninterrupted.ok() && paused.ok());
  for (const auto* s : {&*uninterrupted, &*paused}) {
    absl::StatusOr<int64_t> n =
        Append(a.sessions.get(), s->session_id(), doc_ids);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, static_cast<int64_t>(doc_ids.size()));
  }
  std::vector<std::string> reference, from_uninterrupted;
  for (size_t q = 0; q < questions.size(); ++q) {
    reference.push_back(ask(a, "", q));
    from_uninterrupted.push_back(ask(a, uninterrupted->session_id(), q));
  }
  ASSERT_TRUE(Pause(a.sessions.get(), paused->session_id()).ok());
  a.server.reset();  // the server stops; only the directory remains

  Running b = Start(kDemoDir, state);
  ASSERT_NE(b.server, nullptr);
  v1::Session resumed;
  ASSERT_TRUE(Resume(b.sessions.get(), paused->session_id(), &resumed).ok());
  EXPECT_EQ(resumed.num_tokens(), static_cast<int64_t>(doc_ids.size()));
  EXPECT_EQ(resumed.tier(), v1::SESSION_TIER_DEVICE);
  int correct = 0, correct_reference = 0;
  for (size_t q = 0; q < questions.size(); ++q) {
    const std::string answer = ask(b, paused->session_id(), q);
    EXPECT_EQ(answer, from_uninterrupted[q]) << "question " << q;
    EXPECT_EQ(answer, reference[q]) << "question " << q;
    const std::string truth = absl::StrCat(facts[q].second);
    correct += answer == truth;
    correct_reference += reference[q] == truth;
  }
  std::printf("recall: %d/32 after pause and restart, %d/32 uninterrupted\n",
              correct, correct_reference);
  EXPECT_EQ(correct, correct_reference);
  EXPECT_GE(correct, 28);  // the model recalls; the test means something
}

TEST(SessionsTest, BadCallsGetClearCodesAndOthersKeepWorking) {
  const std::string state = TempDir("bad_calls");
  Running a = Start(kDemoDir, state);
  ASSERT_NE(a.server, nullptr);
  v1::Sessions::Stub* s = a.sessions.get();
  const std::string unknown(32, '7');
  v1::Session out;
  EXPECT_EQ(Get(s, unknown, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Pause(s, unknown).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Resume(s, unknown, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Fork(s, unknown, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Delete(s, unknown).error_code(), grpc::StatusCode::NOT_FOUND);
  std::string bytes;
  EXPECT_EQ(Export(s, unknown, &bytes).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Append(s, unknown, {5, 6}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(SessionGenerate(a.inference.get(), unknown, {5, 6}, 2)
                .status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  for (const std::string& bad : std::vector<std::string>{
           "", "xyz", std::string(32, 'G'), std::string(33, 'a')}) {
    EXPECT_EQ(Get(s, bad, &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << bad;
  }

  absl::StatusOr<v1::Session> damaged = Create(s);
  absl::StatusOr<v1::Session> healthy = Create(s);
  ASSERT_TRUE(damaged.ok() && healthy.ok());
  for (const auto* x : {&*damaged, &*healthy}) {
    ASSERT_TRUE(
        SessionGenerate(a.inference.get(), x->session_id(), {5, 6, 7}, 4)
            .status.ok());
  }
  ASSERT_TRUE(Export(s, healthy->session_id(), &bytes).ok());
  const int64_t before = CountSessions(s);

  // A tampered or truncated import stores nothing.
  std::string tampered = bytes;
  tampered[tampered.size() / 2] ^= 0x40;
  grpc::StatusCode code = Import(s, tampered, &out).error_code();
  EXPECT_TRUE(code == grpc::StatusCode::DATA_LOSS ||
              code == grpc::StatusCode::INVALID_ARGUMENT)
      << code;
  EXPECT_EQ(Import(s, bytes.substr(0, bytes.size() - 9), &out).error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(Import(s, "not an export", &out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(CountSessions(s), before);

  // A session of another model is refused by its fingerprint.
  {
    Running tiny = Start(kTinyDir, TempDir("bad_calls_tiny"));
    ASSERT_NE(tiny.server, nullptr);
    EXPECT_EQ(Import(tiny.sessions.get(), bytes, &out).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(CountSessions(tiny.sessions.get()), 0);
  }

  // A stored record damaged on disk: DATA_LOSS for that session only.
  a.server.reset();
  {
    auto store = RocksDbStateStore::Create({.path = state});
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)
                    ->CorruptForTesting(damaged->session_id(),
                                        StoredRecord::kKvPage,
                                        Damage::kFlipByte)
                    .ok());
  }
  Running b = Start(kDemoDir, state);
  ASSERT_NE(b.server, nullptr);
  s = b.sessions.get();
  EXPECT_EQ(SessionGenerate(b.inference.get(), damaged->session_id(), {8}, 2)
                .status.error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(Resume(s, damaged->session_id(), &out).error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(Export(s, damaged->session_id(), &bytes).error_code(),
            grpc::StatusCode::DATA_LOSS);
  Generation ok =
      SessionGenerate(b.inference.get(), healthy->session_id(), {8}, 2);
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_TRUE(Delete(s, damaged->session_id()).ok());
  EXPECT_EQ(Get(s, damaged->session_id(), &out).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // A session used by a generation refuses changes meanwhile.
  v1::GenerateRequest long_request = IdsRequest({9, 10, 11}, 400);
  long_request.set_session_id(healthy->session_id());
  long_request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = b.inference->Generate(&context, long_request);
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_EQ(Pause(s, healthy->session_id()).error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(SessionGenerate(b.inference.get(), healthy->session_id(), {3}, 2)
                .status.error_code(),
            grpc::StatusCode::ABORTED);
  context.TryCancel();
  reader->Finish();
  // The cancelled generation kept what it fed, and the session is usable.
  EXPECT_TRUE(WaitFor(
      [&] { return Get(s, healthy->session_id(), &out).ok() && !out.busy(); },
      absl::Seconds(30)));
  EXPECT_TRUE(SessionGenerate(b.inference.get(), healthy->session_id(), {3}, 2)
                  .status.ok());
}

std::vector<int32_t> I64s(const TensorEntry& e) {
  std::vector<int32_t> out(e.numel());
  for (int64_t i = 0; i < e.numel(); ++i) {
    int64_t v;
    std::memcpy(&v, e.data + 8 * i, 8);
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

// Gated DeltaNet sessions moved in and out in fla's cache layout
// (SESSION_FORMAT_FLA_CACHE): fla's own reference cache imported continues
// with the reference's greedy tokens, an export imported continues as its
// session, bad files and formats get their codes and store nothing, and a
// model type without an fla layout is refused.
// What SIGTERM does: while a session's long generation streams, the drain
// turns health NOT_SERVING and refuses new work with UNAVAILABLE; the
// stream still ends normally with every token, and after a restart the
// session holds exactly what the client received.
TEST(SessionsTest, DrainFinishesStreamsRefusesNewWorkAndLosesNoSession) {
  const std::string state = TempDir("drain");
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12};
  constexpr int kTokens = 400;
  std::string id;
  {
    Running a = Start(kDemoDir, state);
    ASSERT_NE(a.server, nullptr);
    absl::StatusOr<v1::Session> s = Create(a.sessions.get());
    ASSERT_TRUE(s.ok()) << s.status();
    id = s->session_id();

    grpc::ClientContext context;
    SetDeadline(&context);
    v1::GenerateRequest request = IdsRequest(prompt, kTokens);
    request.set_session_id(id);
    request.mutable_sampling()->set_ignore_eos(true);
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
        a.inference->Generate(&context, request);
    std::vector<int32_t> ids;
    v1::GenerateResponse response;
    auto take = [&](const v1::GenerateResponse& r) {
      if (r.has_chunk()) {
        ids.insert(ids.end(), r.chunk().token_ids().begin(),
                   r.chunk().token_ids().end());
      }
    };
    ASSERT_TRUE(reader->Read(&response));  // admitted and running
    take(response);

    bool drained_idle = false;
    std::thread drain(
        [&] { drained_idle = a.server->Drain(absl::Seconds(60)); });
    auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
        a.server->address(), grpc::InsecureChannelCredentials()));
    EXPECT_TRUE(WaitFor(
        [&] {
          grpc::ClientContext c;
          SetDeadline(&c, absl::Seconds(5));
          grpc::health::v1::HealthCheckRequest req;
          grpc::health::v1::HealthCheckResponse resp;
          const grpc::Status st = health->Check(&c, req, &resp);
          return !st.ok() || resp.status() !=
                                 grpc::health::v1::HealthCheckResponse::SERVING;
        },
        absl::Seconds(30)));
    EXPECT_EQ(
        Generate(a.inference.get(), IdsRequest(prompt, 4)).status.error_code(),
        grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(Create(a.sessions.get()).status().code(),
              absl::StatusCode::kUnavailable);

    bool completed = false;
    while (reader->Read(&response)) {
      take(response);
      if (response.has_completion()) {
        completed = true;
        EXPECT_EQ(response.completion().finish_reason(),
                  v1::FINISH_REASON_LENGTH);
      }
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(completed);
    EXPECT_EQ(ids.size(), static_cast<size_t>(kTokens));
    drain.join();
    EXPECT_TRUE(drained_idle);
    a.server->Wait();
  }
  Running b = Start(kDemoDir, state);
  ASSERT_NE(b.server, nullptr);
  v1::Session after;
  ASSERT_TRUE(Get(b.sessions.get(), id, &after).ok());
  EXPECT_EQ(after.num_tokens(), static_cast<int64_t>(prompt.size()) + kTokens);
}

TEST(SessionsTest, FlaCacheExportAndImport) {
  Running a = Start(kGatedDir, TempDir("fla_cache"));
  ASSERT_NE(a.server, nullptr);
  v1::Sessions::Stub* s = a.sessions.get();
  auto golden =
      SafetensorsFile::Open(std::string(kGatedDir) + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> prompt =
      I64s((*golden)->tensors().at("prompt_ids"));
  const std::vector<int32_t> greedy =
      I64s((*golden)->tensors().at("greedy_ids"));

  // fla's cache after the prompt (token_ids: the prompt) continues with the
  // reference's greedy tokens after the first.
  std::vector<TensorToWrite> reference;
  for (const auto& [name, e] : (*golden)->tensors()) {
    if (name.rfind("state.", 0) != 0 && name != "prompt_ids") continue;
    reference.push_back(
        {name == "prompt_ids" ? "token_ids" : name, e.dtype, e.shape,
         std::string(reinterpret_cast<const char*>(e.data), e.num_bytes)});
  }
  absl::StatusOr<std::string> reference_file = EncodeSafetensors(reference);
  ASSERT_TRUE(reference_file.ok()) << reference_file.status();
  v1::Session imported;
  ASSERT_TRUE(
      Import(s, *reference_file, &imported, v1::SESSION_FORMAT_FLA_CACHE).ok());
  EXPECT_EQ(imported.num_tokens(), 200);
  Generation g = SessionGenerate(a.inference.get(), imported.session_id(),
                                 {greedy[0]}, 23);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids(), std::vector<int32_t>(greedy.begin() + 1, greedy.end()));

  // A session of this server, out and back in (the export is streamed in
  // pieces and imported in two chunks, only the first naming the format).
  absl::StatusOr<v1::Session> original = Create(s);
  ASSERT_TRUE(original.ok());
  std::vector<int32_t> head(prompt.begin(), prompt.begin() + 77);
  ASSERT_TRUE(
      SessionGenerate(a.inference.get(), original->session_id(), head, 5)
          .status.ok());
  std::string exported;
  ASSERT_TRUE(
      Export(s, original->session_id(), &exported, v1::SESSION_FORMAT_FLA_CACHE)
          .ok());
  ASSERT_GT(exported.size(), size_t{64} << 10);
  absl::StatusOr<SafetensorsContents> contents =
      ParseSafetensors(exported, "export");
  ASSERT_TRUE(contents.ok()) << contents.status();
  EXPECT_EQ(contents->metadata.at("recurrent_layout"), "value_first");
  EXPECT_EQ(contents->metadata.at("model_type"), "gated_deltanet");
  EXPECT_EQ(contents->metadata.at("state_tokens"), "81");
  EXPECT_EQ(contents->tensors.at("token_ids").shape, std::vector<int64_t>{82});
  EXPECT_EQ(contents->tensors.at("state.0.recurrent_state").shape,
            (std::vector<int64_t>{2, 64, 32}));
  v1::Session copy;
  ASSERT_TRUE(Import(s, exported, &copy, v1::SESSION_FORMAT_FLA_CACHE).ok());
  EXPECT_EQ(copy.num_tokens(), 82);
  std::string again;
  ASSERT_TRUE(
      Export(s, copy.session_id(), &again, v1::SESSION_FORMAT_FLA_CACHE).ok());
  EXPECT_TRUE(again == exported);
  Generation from_original =
      SessionGenerate(a.inference.get(), original->session_id(), {}, 8);
  Generation from_copy =
      SessionGenerate(a.inference.get(), copy.session_id(), {}, 8);
  ASSERT_TRUE(from_original.status.ok() && from_copy.status.ok());
  EXPECT_EQ(from_copy.ids(), from_original.ids());

  // Bad files and formats: their codes, and nothing stored.
  const int64_t before = CountSessions(s);
  v1::Session out;
  std::vector<TensorToWrite> missing;
  for (const TensorToWrite& t : reference) {
    if (t.name != "state.2.recurrent_state") missing.push_back(t);
  }
  grpc::Status st = Import(s, *EncodeSafetensors(missing), &out,
                           v1::SESSION_FORMAT_FLA_CACHE);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("state.2.recurrent_state"),
            std::string::npos)
      << st.error_message();
  // Without the format the file is read as a deltaserve stream.
  EXPECT_EQ(Import(s, exported, &out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      Import(s, exported, &out, static_cast<v1::SessionFormat>(7)).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  std::string unused;
  EXPECT_EQ(Export(s, original->session_id(), &unused,
                   static_cast<v1::SessionFormat>(7))
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    // A later chunk naming another format.
    grpc::ClientContext context;
    SetDeadline(&context);
    auto writer = s->ImportSession(&context, &out);
    v1::ImportSessionChunk chunk;
    chunk.set_format(v1::SESSION_FORMAT_FLA_CACHE);
    chunk.set_data(exported.substr(0, 100));
    ASSERT_TRUE(writer->Write(chunk));
    chunk.set_format(v1::SESSION_FORMAT_DELTASERVE);
    chunk.set_data(exported.substr(100));
    writer->Write(chunk);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(CountSessions(s), before);

  // qwen3_5_text has no fla cache layout.
  Running qwen = Start(kTinyDir, TempDir("fla_cache_qwen"));
  ASSERT_NE(qwen.server, nullptr);
  absl::StatusOr<v1::Session> q = Create(qwen.sessions.get());
  ASSERT_TRUE(q.ok());
  std::string bytes;
  st = Export(qwen.sessions.get(), q->session_id(), &bytes,
              v1::SESSION_FORMAT_FLA_CACHE);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("qwen3_5_text"), std::string::npos)
      << st.error_message();
  st = Import(qwen.sessions.get(), *reference_file, &out,
              v1::SESSION_FORMAT_FLA_CACHE);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(CountSessions(qwen.sessions.get()), 1);
}

}  // namespace
}  // namespace deltaserve
