// Pause and resume cost of the RocksDB state store: commit latency (WAL
// synced), load latency and bytes written per commit, for the demo model's
// session shape and the 1.3B DeltaNet shape. Prints a table of medians.
// Usage:
//   bazel run //tests/bench:state_store_bench -- [--dir=DIR]
//       [--runs=15] [--history=1000] [--grow=16] [--sync=true]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/state_store/rocksdb_state_store.h"

ABSL_FLAG(std::string, dir, "/tmp/deltaserve_state_store_bench",
          "database directory (removed before and after the run)");
ABSL_FLAG(int, runs, 15, "measured repetitions of each operation");
ABSL_FLAG(int, history, 1000, "tokens in each session");
ABSL_FLAG(int, grow, 16, "tokens added between incremental pauses");
ABSL_FLAG(bool, sync, true, "sync the write-ahead log on every commit");

namespace deltaserve {
namespace {

struct Shape {
  std::string name;
  std::vector<LayerLayout> layers;
  int page_size = 16;
};

// engine/model/demo-qwen35: 8 layers, 6 gated-delta-rule layers (value heads
// 4 × 64 × 64 state; conv tail of 2·(2·64) + 4·64 = 512 channels × 3), 2
// full-attention layers (2 KV heads × 64 dims).
Shape DemoShape() {
  Shape s;
  s.name = "demo-qwen35";
  const LayerLayout gdr{4 * 64 * 64 + 512 * 3, 0};
  const LayerLayout attn{0, 2 * 64};
  s.layers = {gdr, gdr, gdr, attn, gdr, gdr, gdr, attn};
  return s;
}

// The 1.3B DeltaNet shape: 24 layers of 16 heads × 128 × 128 fp32 state
// (24 MiB in all), no attention.
Shape DeltaNet13BShape() {
  Shape s;
  s.name = "DeltaNet 1.3B";
  s.layers.assign(24, LayerLayout{16 * 128 * 128, 0});
  return s;
}

void Fill(std::vector<float>* v, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : *v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f = static_cast<float>(static_cast<int32_t>(x >> 32)) * 1e-9f;
  }
}

// A session of the shape holding `tokens` positions, all pages included.
SessionSnapshot MakeSession(const Shape& shape, const std::string& id,
                            int64_t tokens, uint64_t seed) {
  SessionSnapshot s;
  s.meta.session_id = id;
  s.meta.model_fingerprint = shape.name;
  s.meta.tenant = "bench";
  s.meta.num_tokens = tokens;
  s.meta.layers = shape.layers;
  bool kv = false;
  for (const LayerLayout& l : shape.layers) kv = kv || l.kv_floats_per_token;
  s.meta.page_size = kv ? shape.page_size : 0;
  s.meta.created = s.meta.last_used = absl::Now();
  for (int64_t i = 0; i < tokens; ++i) {
    s.tokens.push_back(static_cast<int32_t>((i * 7919 + seed) % 4096));
  }
  for (size_t l = 0; l < shape.layers.size(); ++l) {
    s.recurrent.emplace_back(shape.layers[l].recurrent_floats);
    Fill(&s.recurrent.back(), seed * 131 + l);
  }
  for (int64_t p = 0; p < s.meta.num_kv_pages(); ++p) {
    KvPageRecord page;
    page.page_index = p;
    const int64_t n =
        std::min<int64_t>(shape.page_size, tokens - p * shape.page_size);
    for (size_t l = 0; l < shape.layers.size(); ++l) {
      page.keys.emplace_back(n * shape.layers[l].kv_floats_per_token);
      page.values.emplace_back(n * shape.layers[l].kv_floats_per_token);
      Fill(&page.keys.back(), seed + 7 * p + l);
      Fill(&page.values.back(), seed + 11 * p + l);
    }
    s.kv_pages.push_back(std::move(page));
  }
  return s;
}

std::string SessionId(int shape, int run) {
  return absl::StrFormat("%08x%024x", 0xbe7c0000 + shape, run);
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

struct Series {
  std::vector<double> ms;
  int64_t bytes = 0;  // per operation (commits), the last one's

  double Percentile(double q) const {
    std::vector<double> v = ms;
    std::sort(v.begin(), v.end());
    const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * v.size()));
    return v[i];
  }
};

template <typename F>
absl::Status Time(Series* series, F&& f) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = f();
  series->ms.push_back(Ms(std::chrono::steady_clock::now() - start));
  return s;
}

absl::Status Run() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const int runs = absl::GetFlag(FLAGS_runs);
  const int history = absl::GetFlag(FLAGS_history);
  const int grow = absl::GetFlag(FLAGS_grow);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  RocksDbStateStore::Options options;
  options.path = dir;
  options.sync_writes = absl::GetFlag(FLAGS_sync);
  auto opened = RocksDbStateStore::Create(options);
  if (!opened.ok()) return opened.status();
  RocksDbStateStore& store = **opened;

  std::printf(
      "RocksDB state store, %s, %d runs per row, %d-token sessions, "
      "incremental pause after +%d tokens\n\n",
      options.sync_writes ? "WAL synced on commit" : "WAL not synced", runs,
      history, grow);
  std::printf(
      "| shape | state MiB | operation | median ms | p90 ms | MiB written "
      "| target |\n");
  std::printf("|---|---:|---|---:|---:|---:|---|\n");
  const std::vector<Shape> shapes = {DemoShape(), DeltaNet13BShape()};
  for (size_t si = 0; si < shapes.size(); ++si) {
    const Shape& shape = shapes[si];
    Series pause, pause_inc, resume, resume_files;
    double state_mib = 0;
    std::vector<SessionSnapshot> sessions;
    // Pause: a session's first commit (every record written).
    for (int r = 0; r < runs + 1; ++r) {
      SessionSnapshot s =
          MakeSession(shape, SessionId(static_cast<int>(si), r), history, r);
      state_mib = s.meta.state_bytes() / 1048576.0;
      Series* into = r == 0 ? &resume_files : &pause;  // run 0: warm-up
      absl::StatusOr<CommitStats> stats;
      absl::Status st = Time(into, [&] {
        stats = store.Commit(s, 0);
        return stats.status();
      });
      if (!st.ok()) return st;
      into->bytes = stats->bytes_written;
      // Resume right after the pause (memtable and OS cache warm).
      Series* load_into = r == 0 ? &resume_files : &resume;
      st = Time(load_into,
                [&] { return store.Load(s.meta.session_id).status(); });
      if (!st.ok()) return st;
      sessions.push_back(std::move(s));
    }
    resume_files = Series();  // drop the warm-up run
    // Incremental pause: the session grew by `grow` tokens since its last
    // pause; only new pages, the last token chunk and the recurrent state
    // are written.
    for (int r = 1; r <= runs; ++r) {
      const SessionSnapshot& old = sessions[r];
      SessionSnapshot s =
          MakeSession(shape, old.meta.session_id, history + grow, 1000 + r);
      // Keep the unchanged prefix identical to what is stored.
      std::copy(old.tokens.begin(), old.tokens.end(), s.tokens.begin());
      const int64_t first_dirty =
          s.meta.page_size ? history / s.meta.page_size : 0;
      s.kv_pages.erase(s.kv_pages.begin(),
                       s.kv_pages.begin() +
                           std::min<int64_t>(first_dirty, s.kv_pages.size()));
      absl::StatusOr<CommitStats> stats;
      absl::Status st = Time(&pause_inc, [&] {
        stats = store.Commit(s, history);
        return stats.status();
      });
      if (!st.ok()) return st;
      pause_inc.bytes = stats->bytes_written;
    }
    // Resume from files: memtables flushed (blob and SST files, OS page
    // cache warm).
    if (absl::Status st = store.Flush(); !st.ok()) return st;
    for (int r = 1; r <= runs; ++r) {
      absl::Status st = Time(&resume_files, [&] {
        return store.Load(sessions[r].meta.session_id).status();
      });
      if (!st.ok()) return st;
    }
    auto row = [&](const char* op, const Series& s, const char* target) {
      std::printf(
          "| %s | %.2f | %s | %.2f | %.2f | %s | %s |\n", shape.name.c_str(),
          state_mib, op, s.Percentile(0.5), s.Percentile(0.9),
          s.bytes ? absl::StrFormat("%.3f", s.bytes / 1048576.0).c_str() : "–",
          target);
    };
    row("pause (first commit)", pause, "≤ 100 ms");
    row(absl::StrFormat("pause (+%d tokens)", grow).c_str(), pause_inc,
        "≤ 100 ms");
    row("resume (load, in memtable)", resume, "≤ 50 ms");
    row("resume (load, from files)", resume_files, "≤ 50 ms");
  }
  opened->reset();
  std::filesystem::remove_all(dir, ec);
  return absl::OkStatus();
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = deltaserve::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
