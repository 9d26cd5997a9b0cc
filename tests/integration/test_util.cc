#include "tests/integration/test_util.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace deltaserve {

ServerOptions SmallServerOptions(const std::string& model_dir) {
  ServerOptions options;
  options.model_dir = model_dir;
  options.listen = "127.0.0.1:0";
  options.device = "cpu";
  options.num_threads = 1;
  options.engine.max_running_requests = 8;
  options.engine.max_queued_requests = 64;
  options.engine.max_batched_tokens = 128;
  options.engine.kv_capacity_tokens = 8192;
  options.engine.default_max_new_tokens = 8;
  options.engine.max_new_tokens_limit = 512;
  options.engine.seed = 7;
  return options;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::shared_ptr<grpc::Channel> Connect(const Server& server) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                             grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

std::vector<int32_t> Generation::ids() const {
  std::vector<int32_t> out;
  for (const v1::Chunk& c : chunks) {
    out.insert(out.end(), c.token_ids().begin(), c.token_ids().end());
  }
  return out;
}

std::string Generation::text() const {
  std::string out;
  for (const v1::Chunk& c : chunks) out += c.text();
  return out;
}

Generation Generate(v1::Inference::Stub* stub,
                    const v1::GenerateRequest& request,
                    absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  Generation result;
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (result.completion.has_value()) {
      ++result.messages_after_completion;
    } else if (response.has_completion()) {
      result.completion = response.completion();
    } else if (response.has_chunk()) {
      result.chunks.push_back(response.chunk());
      result.chunk_times.push_back(absl::Now());
    }
  }
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest TextRequest(const std::string& text, int max_new_tokens) {
  v1::GenerateRequest request;
  request.set_text(text);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  return request;
}

v1::GenerateRequest IdsRequest(const std::vector<int32_t>& ids,
                               int max_new_tokens) {
  v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  return request;
}

}  // namespace deltaserve
