// Runs the deltaserve server in-process on a loopback port and checks its
// gRPC API end to end: generation against golden outputs, the Models,
// health and reflection services, request validation, cancellation and
// concurrent streams.
#include "services/server/server.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "engine/model/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/test_util.h"

namespace deltaserve {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// Relative to the test's runfiles directory, its working directory.
constexpr char kDemoDir[] = "engine/model/demo-qwen35";

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    golden_ = new nlohmann::json(nlohmann::json::parse(
        ReadFile(absl::StrCat(kDemoDir, "/golden.json")), nullptr,
        /*allow_exceptions=*/false));
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Start(SmallServerOptions(kDemoDir));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete golden_;
    golden_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    ASSERT_FALSE(golden_->is_discarded()) << "golden.json is not JSON";
    channel_ = Connect(*server_);
    inference_ = v1::Inference::NewStub(channel_);
    models_ = v1::Models::NewStub(channel_);
  }

  // Every test leaves the engine idle.
  void TearDown() override {
    EXPECT_TRUE(WaitFor([] { return server_->engine().num_active() == 0; },
                        absl::Seconds(60)));
  }

  static const nlohmann::json& Prompt(int i) {
    return (*golden_)["prompts"][i];
  }
  static std::vector<int32_t> Ids(const nlohmann::json& j) {
    return j.get<std::vector<int32_t>>();
  }

  // A good request must still work (the server keeps serving).
  void ExpectStillServing() {
    const Generation g = Generate(inference_.get(), TextRequest("x = ", 2));
    EXPECT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.ids().size(), 2u);
  }

  static Server* server_;
  static nlohmann::json* golden_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Models::Stub> models_;
};

Server* ServerTest::server_ = nullptr;
nlohmann::json* ServerTest::golden_ = nullptr;

TEST_F(ServerTest, ListensOnThePickedPort) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), absl::StrCat("127.0.0.1:", server_->port()));
}

TEST_F(ServerTest, GreedyTextGenerationMatchesGolden) {
  const nlohmann::json& prompt = Prompt(0);
  ASSERT_EQ(prompt["text"].get<std::string>(), "import os\n\ndef ");
  const std::vector<int32_t> expected = Ids(prompt["greedy32_ids"]);
  ASSERT_EQ(expected.size(), 32u);

  v1::GenerateRequest request = TextRequest(prompt["text"], 32);
  request.mutable_sampling()->set_temperature(0.0f);
  const Generation g = Generate(inference_.get(), request);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();

  EXPECT_EQ(g.ids(), expected);
  const Tokenizer* tokenizer = server_->model().tokenizer();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(g.text(), tokenizer->Decode(expected));
  EXPECT_EQ(g.text(), prompt["greedy32_text"].get<std::string>());

  const int prompt_tokens = static_cast<int>(prompt["prompt_ids"].size());
  int completion_tokens = 0;
  for (const v1::Chunk& chunk : g.chunks) {
    EXPECT_TRUE(IsValidUtf8(chunk.text())) << chunk.text();
    EXPECT_EQ(chunk.prompt_tokens(), prompt_tokens);
    completion_tokens += chunk.token_ids_size();
    EXPECT_EQ(chunk.completion_tokens(), completion_tokens);
    EXPECT_THAT(chunk.logprobs(), IsEmpty());
  }
  ASSERT_TRUE(g.completion.has_value());
  EXPECT_EQ(g.messages_after_completion, 0);
  EXPECT_EQ(g.completion->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(g.completion->prompt_tokens(), prompt_tokens);
  EXPECT_EQ(g.completion->completion_tokens(), 32);
  EXPECT_GT(g.completion->time_to_first_token_s(), 0.0);
  EXPECT_THAT(g.completion->request_id(), StartsWith("req-"));
  EXPECT_EQ(g.completion->matched_stop(), "");
}

TEST_F(ServerTest, TokenIdInputMatchesGolden) {
  for (int i = 0; i < 3; ++i) {
    const nlohmann::json& prompt = Prompt(i);
    const Generation g =
        Generate(inference_.get(), IdsRequest(Ids(prompt["prompt_ids"]), 32));
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.ids(), Ids(prompt["greedy32_ids"])) << prompt["name"];
    EXPECT_EQ(g.text(), prompt["greedy32_text"].get<std::string>());
  }
}

TEST_F(ServerTest, EchoesTheCallersRequestIdAndAssignsUniqueOnes) {
  v1::GenerateRequest request = TextRequest("def ", 1);
  request.set_request_id("my-request-1");
  const Generation mine = Generate(inference_.get(), request);
  ASSERT_TRUE(mine.completion.has_value());
  EXPECT_EQ(mine.completion->request_id(), "my-request-1");

  const Generation a = Generate(inference_.get(), TextRequest("def ", 1));
  const Generation b = Generate(inference_.get(), TextRequest("def ", 1));
  ASSERT_TRUE(a.completion.has_value());
  ASSERT_TRUE(b.completion.has_value());
  EXPECT_NE(a.completion->request_id(), b.completion->request_id());
}

TEST_F(ServerTest, UnsetMaxNewTokensUsesTheServerDefault) {
  v1::GenerateRequest request;
  request.set_text("import ");
  request.mutable_sampling()->set_ignore_eos(true);
  const Generation g = Generate(inference_.get(), request);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  ASSERT_TRUE(g.completion.has_value());
  EXPECT_EQ(g.completion->completion_tokens(),
            server_->options().engine.default_max_new_tokens);
}

TEST_F(ServerTest, ReturnsLogprobs) {
  const nlohmann::json& prompt = Prompt(0);
  v1::GenerateRequest request = TextRequest(prompt["text"], 4);
  request.set_top_logprobs(5);
  const Generation g = Generate(inference_.get(), request);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  std::vector<v1::PositionLogprobs> positions;
  for (const v1::Chunk& chunk : g.chunks) {
    ASSERT_EQ(chunk.logprobs_size(), chunk.token_ids_size());
    for (int i = 0; i < chunk.token_ids_size(); ++i) {
      EXPECT_EQ(chunk.logprobs(i).sampled().id(), chunk.token_ids(i));
      positions.push_back(chunk.logprobs(i));
    }
  }
  ASSERT_EQ(positions.size(), 4u);
  std::vector<int32_t> top_ids;
  for (const v1::TokenLogprob& t : positions[0].top())
    top_ids.push_back(t.id());
  EXPECT_EQ(top_ids, Ids(prompt["last_top5_ids"]));
  for (const v1::PositionLogprobs& p : positions) {
    ASSERT_EQ(p.top_size(), 5);
    // Greedy: the sampled token is the most likely one.
    EXPECT_EQ(p.sampled().id(), p.top(0).id());
    EXPECT_LE(p.sampled().logprob(), 0.0f);
    for (int i = 1; i < p.top_size(); ++i) {
      EXPECT_LE(p.top(i).logprob(), p.top(i - 1).logprob());
    }
  }
}

TEST_F(ServerTest, ListModelsAndGetModelDescribeTheDemoModel) {
  v1::ListModelsResponse list;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    const grpc::Status status =
        models_->ListModels(&context, v1::ListModelsRequest(), &list);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_EQ(list.models_size(), 1);
  const v1::ModelInfo& info = list.models(0);
  EXPECT_EQ(info.name(), "demo-qwen35");
  EXPECT_EQ(info.architecture(), "qwen3_5_text");
  const auto gdr = v1::LAYER_KIND_GATED_DELTA_RULE;
  const auto global = v1::LAYER_KIND_GLOBAL_ATTENTION;
  EXPECT_THAT(info.layer_kinds(),
              ElementsAre(gdr, gdr, gdr, global, gdr, gdr, gdr, global));
  const ModelSpec& spec = server_->model().spec();
  EXPECT_EQ(info.recurrent_state_bytes(), spec.RecurrentStateBytes());
  EXPECT_GT(info.recurrent_state_bytes(), 0);
  EXPECT_EQ(info.kv_bytes_per_token(), spec.KvBytesPerToken());
  EXPECT_GT(info.kv_bytes_per_token(), 0);
  EXPECT_EQ(info.context_limit(), server_->engine().context_limit());
  EXPECT_TRUE(info.has_tokenizer());
  EXPECT_EQ(info.vocab_size(), 4096);
  // The README's "7.9M-parameter" model.
  EXPECT_GT(info.num_parameters(), 7'000'000);
  EXPECT_LT(info.num_parameters(), 9'000'000);
  EXPECT_THAT(info.eos_token_ids(), ElementsAre(0));
  EXPECT_TRUE(info.is_default());

  v1::GetModelRequest get;
  get.set_name("demo-qwen35");
  v1::ModelInfo got;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    const grpc::Status status = models_->GetModel(&context, get, &got);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(got.SerializeAsString(), info.SerializeAsString());

  get.set_name("no-such-model");
  grpc::ClientContext context;
  SetDeadline(&context);
  const grpc::Status status = models_->GetModel(&context, get, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no-such-model"));
}

TEST_F(ServerTest, HealthCheckReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service :
       {"", "deltaserve.v1.Inference", "deltaserve.v1.Models"}) {
    SCOPED_TRACE(service);
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.status(),
              grpc::health::v1::HealthCheckResponse::SERVING);
  }
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_EQ(health->Check(&context, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// One request/response exchange with grpc.reflection.v1alpha over a generic
// call. The messages are built from the descriptors that gRPC's reflection
// library registers, so the test needs no copy of reflection.proto.
class ReflectionClient {
 public:
  explicit ReflectionClient(std::shared_ptr<grpc::Channel> channel)
      : stub_(std::move(channel)),
        pool_(google::protobuf::DescriptorPool::generated_pool()) {}

  const google::protobuf::Descriptor* RequestType() const {
    return pool_->FindMessageTypeByName(
        "grpc.reflection.v1alpha.ServerReflectionRequest");
  }

  // Sends `request` (a ServerReflectionRequest) and returns the response.
  std::unique_ptr<google::protobuf::Message> Call(
      const google::protobuf::Message& request) {
    const google::protobuf::Descriptor* response_type =
        pool_->FindMessageTypeByName(
            "grpc.reflection.v1alpha.ServerReflectionResponse");
    if (response_type == nullptr) {
      ADD_FAILURE() << "no ServerReflectionResponse descriptor";
      return nullptr;
    }
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::CompletionQueue cq;
    auto call = stub_.PrepareCall(
        &context,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    const std::string bytes = request.SerializeAsString();
    grpc::Slice slice(bytes);
    grpc::ByteBuffer out(&slice, 1);
    grpc::ByteBuffer in;
    grpc::Status status;
    call->StartCall(Tag(1));
    bool ok = Await(&cq, 1);
    if (ok) {
      call->Write(out, Tag(2));
      ok = Await(&cq, 2);
    }
    if (ok) {
      call->WritesDone(Tag(3));
      ok = Await(&cq, 3);
    }
    if (ok) {
      call->Read(&in, Tag(4));
      ok = Await(&cq, 4);
    }
    call->Finish(&status, Tag(5));
    EXPECT_TRUE(Await(&cq, 5));
    cq.Shutdown();
    void* tag;
    bool ignored;
    while (cq.Next(&tag, &ignored)) {
    }
    EXPECT_TRUE(ok);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!ok || !status.ok()) return nullptr;

    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(in.Dump(&slices).ok());
    std::string received;
    for (const grpc::Slice& s : slices) {
      received.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    std::unique_ptr<google::protobuf::Message> response(
        factory_.GetPrototype(response_type)->New());
    EXPECT_TRUE(response->ParseFromString(received));
    return response;
  }

  std::unique_ptr<google::protobuf::Message> NewRequest() {
    return std::unique_ptr<google::protobuf::Message>(
        factory_.GetPrototype(RequestType())->New());
  }

 private:
  static void* Tag(intptr_t i) { return reinterpret_cast<void*>(i); }
  static bool Await(grpc::CompletionQueue* cq, intptr_t expected) {
    void* tag = nullptr;
    bool ok = false;
    if (!cq->Next(&tag, &ok)) return false;
    EXPECT_EQ(tag, Tag(expected));
    return ok;
  }

  grpc::GenericStub stub_;
  const google::protobuf::DescriptorPool* pool_;
  google::protobuf::DynamicMessageFactory factory_;
};

TEST_F(ServerTest, ReflectionListsServicesAndDescribesThem) {
  ReflectionClient client(channel_);
  ASSERT_NE(client.RequestType(), nullptr)
      << "gRPC's reflection library is not linked";
  using google::protobuf::FieldDescriptor;
  using google::protobuf::Message;

  std::unique_ptr<Message> request = client.NewRequest();
  const google::protobuf::Reflection* r = request->GetReflection();
  r->SetString(request.get(),
               request->GetDescriptor()->FindFieldByName("list_services"), "");
  std::unique_ptr<Message> response = client.Call(*request);
  ASSERT_NE(response, nullptr);
  const FieldDescriptor* list_field =
      response->GetDescriptor()->FindFieldByName("list_services_response");
  ASSERT_TRUE(response->GetReflection()->HasField(*response, list_field))
      << response->DebugString();
  const Message& list =
      response->GetReflection()->GetMessage(*response, list_field);
  const FieldDescriptor* service_field =
      list.GetDescriptor()->FindFieldByName("service");
  std::set<std::string> names;
  for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field);
       ++i) {
    const Message& service =
        list.GetReflection()->GetRepeatedMessage(list, service_field, i);
    names.insert(service.GetReflection()->GetString(
        service, service.GetDescriptor()->FindFieldByName("name")));
  }
  EXPECT_THAT(names, Contains("deltaserve.v1.Inference"));
  EXPECT_THAT(names, Contains("deltaserve.v1.Models"));
  EXPECT_THAT(names, Contains("grpc.reflection.v1alpha.ServerReflection"));

  // The Inference service's file descriptor is served too.
  request = client.NewRequest();
  r->SetString(
      request.get(),
      request->GetDescriptor()->FindFieldByName("file_containing_symbol"),
      "deltaserve.v1.Inference");
  response = client.Call(*request);
  ASSERT_NE(response, nullptr);
  const FieldDescriptor* fd_field =
      response->GetDescriptor()->FindFieldByName("file_descriptor_response");
  ASSERT_TRUE(response->GetReflection()->HasField(*response, fd_field))
      << response->DebugString();
  const Message& files =
      response->GetReflection()->GetMessage(*response, fd_field);
  const FieldDescriptor* proto_field =
      files.GetDescriptor()->FindFieldByName("file_descriptor_proto");
  std::set<std::string> file_names;
  for (int i = 0; i < files.GetReflection()->FieldSize(files, proto_field);
       ++i) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(
        files.GetReflection()->GetRepeatedString(files, proto_field, i)));
    file_names.insert(file.name());
  }
  EXPECT_THAT(file_names, Contains("proto/deltaserve/v1/inference.proto"));
}

// A malformed request ends with `code` and a message naming `field`, and the
// server keeps serving.
struct BadRequestCase {
  std::string name;
  std::function<void(v1::GenerateRequest*)> mutate;
  grpc::StatusCode code;
  std::string field;
};

TEST_F(ServerTest, RejectsMalformedRequestsWithSpecificCodes) {
  const grpc::StatusCode kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  const std::vector<BadRequestCase> cases = {
      {"negative temperature",
       [](v1::GenerateRequest* r) {
         r->mutable_sampling()->set_temperature(-0.5f);
       },
       kInvalid, "temperature"},
      {"negative top_k",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(-1); },
       kInvalid, "top_k"},
      {"top_p zero",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(0.0f); },
       kInvalid, "top_p"},
      {"top_p above one",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(1.5f); },
       kInvalid, "top_p"},
      {"max_new_tokens explicitly zero",
       [](v1::GenerateRequest* r) {
         r->mutable_sampling()->set_max_new_tokens(0);
       },
       kInvalid, "max_new_tokens"},
      {"max_new_tokens negative",
       [](v1::GenerateRequest* r) {
         r->mutable_sampling()->set_max_new_tokens(-3);
       },
       kInvalid, "max_new_tokens"},
      {"max_new_tokens above the limit",
       [](v1::GenerateRequest* r) {
         r->mutable_sampling()->set_max_new_tokens(513);
       },
       kInvalid, "max_new_tokens"},
      {"no input", [](v1::GenerateRequest* r) { r->clear_input(); }, kInvalid,
       "input"},
      {"empty text", [](v1::GenerateRequest* r) { r->set_text(""); }, kInvalid,
       "input"},
      {"empty token ids",
       [](v1::GenerateRequest* r) { r->mutable_token_ids(); }, kInvalid,
       "input"},
      {"token id past the vocabulary",
       [](v1::GenerateRequest* r) {
         r->mutable_token_ids()->add_ids(5);
         r->mutable_token_ids()->add_ids(4096);
       },
       kInvalid, "token_ids[1]"},
      {"negative token id",
       [](v1::GenerateRequest* r) { r->mutable_token_ids()->add_ids(-1); },
       kInvalid, "token_ids[0]"},
      {"too many top_logprobs",
       [](v1::GenerateRequest* r) { r->set_top_logprobs(21); }, kInvalid,
       "top_logprobs"},
      {"empty stop string",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->add_stop(""); },
       kInvalid, "stop"},
      {"unknown model",
       [](v1::GenerateRequest* r) { r->set_model("no-such-model"); },
       grpc::StatusCode::NOT_FOUND, "no-such-model"},
  };
  for (const BadRequestCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest request = TextRequest("import os", 4);
    c.mutate(&request);
    const Generation g = Generate(inference_.get(), request);
    EXPECT_EQ(g.status.error_code(), c.code) << g.status.error_message();
    EXPECT_THAT(g.status.error_message(), HasSubstr(c.field));
    EXPECT_THAT(g.chunks, IsEmpty());
    EXPECT_FALSE(g.completion.has_value());
    ExpectStillServing();
  }
}

TEST_F(ServerTest, RejectsTextThatIsNotUtf8) {
  v1::GenerateRequest request = TextRequest("import \xff\xfe os", 4);
  const Generation g = Generate(inference_.get(), request);
  EXPECT_FALSE(g.status.ok());
  const google::protobuf::FieldDescriptor* text_field =
      v1::GenerateRequest::descriptor()->FindFieldByName("text");
  if (text_field->type() == google::protobuf::FieldDescriptor::TYPE_BYTES) {
    EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(g.status.error_message(), HasSubstr("UTF-8"));
  }
  // With `string text`, protobuf's parser refuses the message before the
  // handler sees it; the call fails all the same.
  ExpectStillServing();
}

TEST_F(ServerTest, ClientCancellationFreesTheRequest) {
  v1::GenerateRequest request = TextRequest("import os\n\ndef ", 512);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = inference_->Generate(&context, request);
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_TRUE(response.has_chunk());
  EXPECT_EQ(server_->engine().num_active(), 1);

  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([] { return server_->engine().num_active() == 0; },
                      absl::Seconds(60)))
      << "the cancelled request is still in the engine";
  ExpectStillServing();
}

TEST_F(ServerTest, ConcurrentStreamsEachMatchTheirSingleStreamResult) {
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 3; ++i) {
    requests.push_back(TextRequest(Prompt(i)["text"], 24));
  }
  for (const nlohmann::json& s : (*golden_)["strings"]) {
    if (requests.size() == 8) break;
    requests.push_back(TextRequest(s["text"], 24));
  }
  ASSERT_EQ(requests.size(), 8u);

  std::vector<std::vector<int32_t>> alone;
  for (const v1::GenerateRequest& request : requests) {
    const Generation g = Generate(inference_.get(), request);
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    alone.push_back(g.ids());
  }

  std::vector<Generation> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([this, &requests, &together, i] {
      together[i] = Generate(inference_.get(), requests[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    ASSERT_TRUE(together[i].completion.has_value());
    EXPECT_EQ(together[i].ids(), alone[i]);
  }
}

TEST_F(ServerTest, SameSeedSameTokens) {
  v1::GenerateRequest request = TextRequest("import os\n\ndef ", 24);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(1234);
  const Generation a = Generate(inference_.get(), request);
  const Generation b = Generate(inference_.get(), request);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(a.ids().size(), 24u);
  EXPECT_EQ(a.ids(), b.ids());
  EXPECT_EQ(a.text(), b.text());
}

TEST_F(ServerTest, StopStringEndsTheGenerationAndIsNotStreamed) {
  const nlohmann::json& prompt = Prompt(0);
  const std::string golden_text = prompt["greedy32_text"];
  const std::vector<int32_t> golden_ids = Ids(prompt["greedy32_ids"]);
  // The first stop lies inside one token; the second spans two.
  for (const std::string stop : {"\"\"\"", "path to"}) {
    SCOPED_TRACE(stop);
    const size_t at = golden_text.find(stop);
    ASSERT_NE(at, std::string::npos);
    v1::GenerateRequest request = TextRequest(prompt["text"], 32);
    request.mutable_sampling()->add_stop(stop);
    request.mutable_sampling()->add_stop("never appears");
    const Generation g = Generate(inference_.get(), request);
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.text(), golden_text.substr(0, at));
    ASSERT_TRUE(g.completion.has_value());
    EXPECT_EQ(g.completion->finish_reason(), v1::FINISH_REASON_STOP);
    EXPECT_EQ(g.completion->matched_stop(), stop);
    const std::vector<int32_t> ids = g.ids();
    ASSERT_LT(ids.size(), golden_ids.size());
    EXPECT_TRUE(std::equal(ids.begin(), ids.end(), golden_ids.begin()));
    EXPECT_EQ(g.completion->completion_tokens(), static_cast<int>(ids.size()));
    // The token that completed the stop string is the last one generated.
    const Tokenizer* tokenizer = server_->model().tokenizer();
    EXPECT_THAT(tokenizer->Decode(ids), HasSubstr(stop));
    EXPECT_THAT(
        tokenizer->Decode(absl::MakeConstSpan(ids).first(ids.size() - 1)),
        Not(HasSubstr(stop)));
  }
}

TEST_F(ServerTest, StopTokenIdEndsTheGenerationIncludingIt) {
  const nlohmann::json& prompt = Prompt(0);
  const std::vector<int32_t> golden_ids = Ids(prompt["greedy32_ids"]);
  v1::GenerateRequest request = TextRequest(prompt["text"], 32);
  request.mutable_sampling()->add_stop_token_ids(golden_ids[3]);
  const Generation g = Generate(inference_.get(), request);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids(),
            std::vector<int32_t>(golden_ids.begin(), golden_ids.begin() + 4));
  ASSERT_TRUE(g.completion.has_value());
  EXPECT_EQ(g.completion->finish_reason(), v1::FINISH_REASON_STOP);
}

// A model directory without tokenizer.json serves token ids only.
TEST(ServerWithoutTokenizerTest, TakesTokenIdsAndRefusesText) {
  namespace fs = std::filesystem;
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir =
      fs::path(tmp != nullptr ? tmp : "/tmp") / "ids-only-model";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"}) {
    fs::create_symlink(fs::absolute(fs::path(kDemoDir) / file), dir / file);
  }
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(SmallServerOptions(dir.string()));
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Inference::NewStub(Connect(**server));

  const Generation text = Generate(stub.get(), TextRequest("import os", 4));
  EXPECT_EQ(text.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(text.status.error_message(),
              AllOf(HasSubstr("model has no tokenizer; send token_ids"),
                    HasSubstr("input.text")));

  const Generation ids =
      Generate(stub.get(), IdsRequest({838, 768, 305, 516, 223}, 8));
  ASSERT_TRUE(ids.status.ok()) << ids.status.error_message();
  EXPECT_EQ(ids.ids().size(), 8u);
  EXPECT_EQ(ids.text(), "");

  auto models = v1::Models::NewStub(Connect(**server));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse list;
  ASSERT_TRUE(
      models->ListModels(&context, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).name(), "ids-only-model");
  EXPECT_FALSE(list.models(0).has_tokenizer());
}

TEST(ServerStartTest, RejectsUnknownDevicesAndMissingModels) {
  ServerOptions options = SmallServerOptions(kDemoDir);
  options.device = "tpu";
  EXPECT_EQ(Server::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.device = "cuda";
  options.gpus = 2;
  EXPECT_EQ(Server::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // This machine has no GPU (CI), or the build has no CUDA.
  options.gpus = 1;
  const absl::Status cuda = Server::Start(options).status();
  EXPECT_EQ(cuda.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(cuda.message(), HasSubstr("CUDA"));

  options = SmallServerOptions("/nonexistent/model");
  EXPECT_EQ(Server::Start(options).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ServerShutdownTest, EndsActiveGenerationsAndStopsServing) {
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(SmallServerOptions(kDemoDir));
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = Connect(**server);
  auto stub = v1::Inference::NewStub(channel);

  v1::GenerateRequest request = TextRequest("import os\n\ndef ", 512);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));

  std::thread shutdown([&server] { (*server)->Shutdown(); });
  std::optional<v1::Completion> completion;
  while (reader->Read(&response)) {
    if (response.has_completion()) completion = response.completion();
  }
  const grpc::Status status = reader->Finish();
  shutdown.join();
  (*server)->Wait();
  // The generation was ended by the server, before its 512 tokens.
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(completion.has_value());
  EXPECT_EQ(completion->finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_LT(completion->completion_tokens(), 512);
  EXPECT_EQ((*server)->engine().num_active(), 0);

  const Generation after = Generate(stub.get(), TextRequest("x", 2));
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace deltaserve
