// deltaserve-cli: talks to a deltaserve server.
//
//   deltaserve-cli [--server=HOST:PORT] generate --prompt=TEXT [sampling flags]
//   deltaserve-cli [--server=HOST:PORT] generate --token_ids=1,2,3 ...
//   deltaserve-cli [--server=HOST:PORT] models
//   deltaserve-cli [--server=HOST:PORT] health
//   deltaserve-cli [--server=HOST:PORT] session COMMAND [ID] [flags]
//
// generate streams the text to stdout as it arrives; with --session=ID it
// continues that session and prints the session's new token count and
// snapshot to stderr. The session commands are in session_commands.h. Exit
// status: 0 on success, 1 for a usage error or a server that is not SERVING,
// 2 when the call fails (the gRPC status is printed to stderr as
// "error: CODE: message").
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
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/session_commands.h"
#include "proto/deltaserve/v1/inference.grpc.pb.h"
#include "proto/deltaserve/v1/models.grpc.pb.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "services/common/api_names.h"

ABSL_FLAG(std::string, model, "", "Model name; empty: the server's default.");
ABSL_FLAG(std::string, session, "",
          "generate: continue this session (its id); empty: none.");
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

using cli::kExitUsage;
using cli::ParseIds;
using cli::RpcError;
using cli::SetDeadline;
using cli::UsageError;

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

int Generate(const std::vector<std::string>& stop_values) {
  v1::GenerateRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_session_id(absl::GetFlag(FLAGS_session));
  const std::optional<std::string> prompt = absl::GetFlag(FLAGS_prompt);
  const std::vector<std::string> token_ids = absl::GetFlag(FLAGS_token_ids);
  if (prompt.has_value() && !token_ids.empty()) {
    return UsageError("generate takes --prompt or --token_ids, not both");
  }
  if (!prompt.has_value() && token_ids.empty() &&
      request.session_id().empty()) {
    return UsageError(
        "generate needs --prompt or --token_ids (or --session, to continue "
        "a session)");
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

  std::unique_ptr<v1::Inference::Stub> stub =
      v1::Inference::NewStub(cli::Connect());
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
  if (!request.session_id().empty() && completion.has_value()) {
    absl::FPrintF(stderr,
                  "session_id=%s session_tokens=%d session_snapshot_seq=%d\n",
                  request.session_id(), completion->session_tokens(),
                  completion->session_snapshot_seq());
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
  std::unique_ptr<v1::Models::Stub> stub = v1::Models::NewStub(cli::Connect());
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
      grpc::health::v1::Health::NewStub(cli::Connect());
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

// --help lists the flags defined in this package (absl's default looks for
// a file named after the binary).
bool IsCliFlagFile(absl::string_view file) {
  return absl::StrContains(file, "clients/cli/");
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(absl::StrCat(
      "A client for deltaserve-server.\n"
      "Usage: deltaserve-cli [--server=HOST:PORT] [--timeout=DURATION] "
      "COMMAND [flags]\n"
      "Commands:\n"
      "  generate  --prompt=TEXT | --token_ids=1,2,3  [--max_new_tokens=N\n"
      "            --temperature=T --top_k=K --top_p=P --seed=S --stop=STR\n"
      "            --print_token_ids --session=ID]  streams generated text "
      "to\n"
      "            stdout; with --session, continues that session\n"
      "  models    describes the server's models\n"
      "  health    prints the server's health (SERVING or not)\n",
      cli::kSessionUsage,
      "\n"
      "Exit status: 0 on success, 1 for a usage error (or health not "
      "SERVING),\n"
      "2 when a call fails (\"error: CODE: message\" on stderr)."));
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_helpshort_flags = IsCliFlagFile;
  usage_config.contains_help_flags = IsCliFlagFile;
  absl::SetFlagsUsageConfig(usage_config);
  const std::vector<std::string> stop_values = StopFlagValues(argc, argv);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) {
    return UsageError(
        "expected one command: generate, models, health or session");
  }
  const absl::string_view command = positional[1];
  if (command == "session") {
    return cli::RunSessionCommand(
        std::vector<std::string>(positional.begin() + 2, positional.end()));
  }
  if (positional.size() != 2) {
    return UsageError(absl::StrCat(command, " takes no arguments, got \"",
                                   positional[2], "\""));
  }
  if (command == "generate") return Generate(stop_values);
  if (command == "models") return Models();
  if (command == "health") return Health();
  return UsageError(absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Run(argc, argv); }
