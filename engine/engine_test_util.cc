#include "engine/engine_test_util.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace testing {
namespace {

constexpr char kDemoDir[] = "engine/model/demo-qwen35";

}  // namespace

const Model& DemoModel() {
  static const Model* model = [] {
    auto m = Model::Load(kDemoDir);
    if (!m.ok()) std::abort();
    return m->release();
  }();
  return *model;
}

std::vector<int32_t> DemoPromptIds(int i) {
  std::ifstream in(std::string(kDemoDir) + "/golden.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str())["prompts"][i]["prompt_ids"]
      .get<std::vector<int32_t>>();
}

RunResult RunRequest(Engine& engine, GenerationRequest req) {
  RunResult r;
  auto stream = engine.Submit(std::move(req));
  if (!stream.ok()) {
    r.end.finished = true;
    r.end.error = stream.status();
    return r;
  }
  GenerationEvent ev;
  while (true) {
    EXPECT_TRUE((*stream)->Next(&ev, absl::Seconds(60))) << "stream stalled";
    if (ev.finished) {
      r.end = ev;
      return r;
    }
    r.ids.insert(r.ids.end(), ev.token_ids.begin(), ev.token_ids.end());
  }
}

GenerationRequest Greedy(const std::vector<int32_t>& prompt, int n,
                         const std::string& session) {
  GenerationRequest req;
  req.prompt = prompt;
  req.max_new_tokens = n;
  req.ignore_eos = true;
  req.session_id = session;
  return req;
}

}  // namespace testing
}  // namespace deltaserve
