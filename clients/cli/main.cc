// deltaserve-cli: talks to a deltaserve server.
//
//   deltaserve-cli [--server=HOST:PORT] generate --prompt=TEXT [sampling flags]
//   deltaserve-cli [--server=HOST:PORT] generate --token_ids=1,2,3 ...
//   deltaserve-cli [--server=HOST:PORT] models
//   deltaserve-cli [--server=HOST:PORT] health
//
// generate streams the text to stdout as it arrives. Exit status: 0 on
// success, 1 for a usage error or a server that is not SERVING, 2 when the
// call fails (the gRPC status is printed to stderr as "error: CODE: message").
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "services/common/api_names.h"
#include "services/common/grpc_status.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Deadline of each call (e.g. 30s); 0 means none.");
ABSL_FLAG(std::string, model, "", "Model name; empty: the server's default.");
ABSL_FLAG(std::optional<std::string>, prompt, std::nullopt,
          "generate: the prompt text.");
ABSL_FLAG(std::vector<std::string>, token_ids, {},
          "generate: the prompt as comma-separated token ids.");
ABSL_FLAG(std::optional<int>, max_new_tokens, std::nullopt,
          "generate: tokens to generate; unset: the server's default.");
ABSL_FLAG(float, temperature, 0.0f, "generate: 0 is greedy.");
ABSL_FLAG(int, top_k, 0, "generate: keep the k most likely tokens; 0: all.");
ABSL_FLAG(std::optional<float>, top_p, std::nullopt,
          "generate: nucleus sampling probability in (0, 1]; unset: 1.");
ABSL_FLAG(uint64_t, seed, 0, "generate: random seed; 0: the server picks.");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: stop strings; repeat the flag or separate with commas. "
          "C escapes such as \\n are understood.");
ABSL_FLAG(std::vector<std::string>, stop_token_ids, {},
          "generate: comma-separated token ids that end the generation.");
ABSL_FLAG(bool, ignore_eos, false,
          "generate: keep going past the end-of-sequence token.");
ABSL_FLAG(std::string, request_id, "", "generate: the request's id.");
ABSL_FLAG(bool, print_token_ids, false,
          "generate: also print the generated ids as one comma-separated "
          "line.");
ABSL_FLAG(bool, verbose, false,
          "generate: print the finish reason and counts to stderr.");

namespace deltaserve {
namespace {

constexpr int kExitUsage = 1;
constexpr int kExitRpcError = 2;

int UsageError(absl::string_view message) {
  absl::FPrintF(stderr, "deltaserve-cli: %s (see --help)\n", message);
  return kExitUsage;
}

int RpcError(const grpc::Status& status) {
  const absl::Status s = FromGrpcStatus(status);
  absl::FPrintF(stderr, "error: %s: %s\n", absl::StatusCodeToString(s.code()),
                s.message());
  return kExitRpcError;
}

void SetDeadline(grpc::ClientContext* context) {
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

bool ParseIds(const std::vector<std::string>& items, std::vector<int32_t>* ids,
              std::string* error) {
  for (const std::string& item : items) {
    for (absl::string_view part : absl::StrSplit(item, ',')) {
      part = absl::StripAsciiWhitespace(part);
      if (part.empty()) continue;
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        *error = absl::StrCat("not a token id: \"", part, "\"");
        return false;
      }
      ids->push_back(id);
    }
  }
  return true;
}

// Every value given to --stop: absl keeps only the last occurrence of a
// flag, so the occurrences are read from the command line itself.
std::vector<std::string> StopFlagValues(int argc, char** argv) {
  std::vector<std::string> raw;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) {
      continue;
    }
    if (absl::ConsumePrefix(&arg, "stop=")) {
      raw.emplace_back(arg);
    } else if (arg == "stop" && i + 1 < argc) {
      raw.emplace_back(argv[++i]);
    }
  }
  return raw;
}

bool ParseStops(const std::vector<std::string>& raw,
                std::vector<std::string>* stops, std::string* error) {
  for (const std::string& value : raw) {
    for (absl::string_view part : absl::StrSplit(value, ',')) {
      if (part.empty()) continue;
      std::string unescaped;
      if (!absl::CUnescape(part, &unescaped, error)) return false;
      stops->push_back(std::move(unescaped));
    }
  }
  return true;
}

std::shared_ptr<grpc::Channel> Connect() {
  return grpc::CreateChannel(absl::GetFlag(FLAGS_server),
                             grpc::InsecureChannelCredentials());
}

int Generate(const std::vector<std::string>& stop_values) {
  v1::GenerateRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_model(absl::GetFlag(FLAGS_model));
  const std::optional<std::string> prompt = absl::GetFlag(FLAGS_prompt);
  const std::vector<std::string> token_ids = absl::GetFlag(FLAGS_token_ids);
  if (prompt.has_value() == !token_ids.empty()) {
    return UsageError("generate needs exactly one of --prompt and --token_ids");
  }
  std::string error;
  if (prompt.has_value()) {
    request.set_text(*prompt);
  } else {
    std::vector<int32_t> ids;
    if (!ParseIds(token_ids, &ids, &error)) return UsageError(error);
    request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  }
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(absl::GetFlag(FLAGS_temperature));
  sampling->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (const std::optional<float> top_p = absl::GetFlag(FLAGS_top_p)) {
    sampling->set_top_p(*top_p);
  }
  sampling->set_seed(absl::GetFlag(FLAGS_seed));
  if (const std::optional<int> n = absl::GetFlag(FLAGS_max_new_tokens)) {
    sampling->set_max_new_tokens(*n);
  }
  std::vector<std::string> stops;
  if (!ParseStops(stop_values, &stops, &error)) {
    return UsageError(absl::StrCat("--stop: ", error));
  }
  for (std::string& stop : stops) sampling->add_stop(std::move(stop));
  std::vector<int32_t> stop_ids;
  if (!ParseIds(absl::GetFlag(FLAGS_stop_token_ids), &stop_ids, &error)) {
    return UsageError(absl::StrCat("--stop_token_ids: ", error));
  }
  sampling->mutable_stop_token_ids()->Add(stop_ids.begin(), stop_ids.end());
  sampling->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));

  std::unique_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(Connect());
  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, request);
  v1::GenerateResponse response;
  std::vector<int32_t> generated;
  bool wrote_text = false;
  char last_char = '\n';
  std::optional<v1::Completion> completion;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      const v1::Chunk& chunk = response.chunk();
      generated.insert(generated.end(), chunk.token_ids().begin(),
                       chunk.token_ids().end());
      if (!chunk.text().empty()) {
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
        std::fflush(stdout);
        wrote_text = true;
        last_char = chunk.text().back();
      }
    } else if (response.has_completion()) {
      completion = response.completion();
    }
  }
  const grpc::Status status = reader->Finish();
  if (wrote_text && last_char != '\n') std::fputc('\n', stdout);
  if (!status.ok()) {
    std::fflush(stdout);
    return RpcError(status);
  }
  if (absl::GetFlag(FLAGS_print_token_ids)) {
    absl::PrintF("%s\n", absl::StrJoin(generated, ","));
  }
  std::fflush(stdout);
  if (absl::GetFlag(FLAGS_verbose) && completion.has_value()) {
    absl::FPrintF(
        stderr,
        "finish_reason=%s prompt_tokens=%d completion_tokens=%d "
        "time_to_first_token=%.3fs request_id=%s%s\n",
        FinishReasonName(completion->finish_reason()),
        completion->prompt_tokens(), completion->completion_tokens(),
        completion->time_to_first_token_s(), completion->request_id(),
        completion->matched_stop().empty()
            ? ""
            : absl::StrCat(" matched_stop=\"",
                           absl::CEscape(completion->matched_stop()), "\""));
  }
  return 0;
}

// "gated_delta_rule" for LAYER_KIND_GATED_DELTA_RULE.
std::string LayerKindName(int kind) {
  absl::string_view name = v1::LayerKind_Name(kind);
  absl::ConsumePrefix(&name, "LAYER_KIND_");
  return absl::AsciiStrToLower(name);
}

// Runs of equal kinds collapse: "gated_delta_rule x3, global_attention".
std::string DescribeLayers(const v1::ModelInfo& info) {
  std::vector<std::string> parts;
  const auto& kinds = info.layer_kinds();
  for (int i = 0; i < kinds.size();) {
    int j = i;
    while (j < kinds.size() && kinds[j] == kinds[i]) ++j;
    parts.push_back(j - i == 1
                        ? LayerKindName(kinds[i])
                        : absl::StrCat(LayerKindName(kinds[i]), " x", j - i));
    i = j;
  }
  return absl::StrJoin(parts, ", ");
}

int Models() {
  std::unique_ptr<v1::Models::Stub> stub = v1::Models::NewStub(Connect());
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse response;
  const grpc::Status status =
      stub->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return RpcError(status);
  for (const v1::ModelInfo& info : response.models()) {
    absl::PrintF("%s%s\n", info.name(), info.is_default() ? " (default)" : "");
    absl::PrintF("  architecture:          %s\n", info.architecture());
    absl::PrintF("  layers:                %d (%s)\n", info.layer_kinds_size(),
                 DescribeLayers(info));
    absl::PrintF("  parameters:            %d\n", info.num_parameters());
    absl::PrintF("  vocab_size:            %d\n", info.vocab_size());
    absl::PrintF("  context_limit:         %d tokens\n", info.context_limit());
    absl::PrintF("  recurrent_state_bytes: %d per sequence\n",
                 info.recurrent_state_bytes());
    absl::PrintF("  kv_bytes_per_token:    %d\n", info.kv_bytes_per_token());
    absl::PrintF("  tokenizer:             %s\n",
                 info.has_tokenizer() ? "yes" : "no (token ids only)");
    absl::PrintF("  eos_token_ids:         %s\n",
                 absl::StrJoin(info.eos_token_ids(), ","));
  }
  return 0;
}

int Health() {
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(Connect());
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status =
      stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response);
  if (!status.ok()) return RpcError(status);
  absl::PrintF("%s\n",
               grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                   response.status()));
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : kExitUsage;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A client for deltaserve-server.\n"
      "Usage: deltaserve-cli [--server=HOST:PORT] COMMAND [flags]\n"
      "Commands:\n"
      "  generate  --prompt=TEXT | --token_ids=1,2,3  [--max_new_tokens=N\n"
      "            --temperature=T --top_k=K --top_p=P --seed=S --stop=STR\n"
      "            --print_token_ids]  streams generated text to stdout\n"
      "  models    describes the server's models\n"
      "  health    prints the server's health (SERVING or not)");
  const std::vector<std::string> stop_values = StopFlagValues(argc, argv);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 2) {
    return UsageError("expected one command: generate, models or health");
  }
  const absl::string_view command = positional[1];
  if (command == "generate") return Generate(stop_values);
  if (command == "models") return Models();
  if (command == "health") return Health();
  return UsageError(absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Run(argc, argv); }
