// Whole-model speed on the GPU (or the CPU): random bf16 models of real
// shapes run through ModelRunner exactly as the engine runs them. Prints a
// table of prefill tokens/s (B = 1, one forward pass over T tokens) and
// decode ms/step (B sequences after a short prefill each; recorded CUDA
// graphs on and off). Usage:
//   model_bench [--shape=deltanet-1.3b|qwen3.5-0.8b|demo] [--device=cuda]
//       [--prefill=4096,65536] [--decode=1,32,128] [--steps=64]
//
// Shapes:
//   deltanet-1.3b  hidden 2048, 24 gated-delta-rule layers of 16 heads of
//                  128 (no output gate, as fla's DeltaNet; the decay and
//                  beta projections add 2·16·2048 weights per layer),
//                  SwiGLU 5632, vocab 32000, untied LM head.
//   qwen3.5-0.8b   hidden 1024, 24 layers (3 Gated DeltaNet of 16/16 heads
//                  of 128, then 1 gated attention of 8 heads, 2 KV heads of
//                  256 with rotary 64, repeated), SwiGLU 3584, vocab
//                  248320, tied embeddings.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/model/model.h"
#include "engine/runner/model_runner.h"
#include "engine/state/state_pool.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"

ABSL_FLAG(std::string, shape, "qwen3.5-0.8b",
          "deltanet-1.3b, qwen3.5-0.8b or demo (the demo model's shape)");
ABSL_FLAG(std::string, device, "cuda", "cuda or cpu");
ABSL_FLAG(std::string, prefill, "4096,65536", "prompt lengths (B = 1)");
ABSL_FLAG(std::string, decode, "1,32,128", "decode batch sizes");
ABSL_FLAG(int, decode_context, 512, "tokens prefilled per sequence first");
ABSL_FLAG(int, steps, 64, "decode steps timed (after 8 untimed)");
ABSL_FLAG(int, repeats, 3, "prefill runs (the median is reported)");

namespace deltaserve {
namespace {

ModelSpec Shape(const std::string& name) {
  ModelSpec s;
  s.model_type = name;
  s.rms_norm_eps = 1e-6f;
  s.max_position_embeddings = int64_t{1} << 21;
  GatedDeltaRuleSpec gdr;
  gdr.num_k_heads = gdr.num_v_heads = 16;
  gdr.head_k_dim = gdr.head_v_dim = 128;
  if (name == "deltanet-1.3b") {
    s.vocab_size = 32000;
    s.hidden_size = 2048;
    s.tie_word_embeddings = false;
    s.norm_zero_centered = false;
    gdr.output_gate = false;
    for (int l = 0; l < 24; ++l) {
      BlockSpec b;
      b.mixer = MixerKind::kGatedDeltaRule;
      b.gdr = gdr;
      b.intermediate_size = 5632;
      s.blocks.push_back(b);
    }
    return s;
  }
  int layers = 24, hidden = 1024, inter = 3584, vocab = 248320;
  AttentionSpec att;
  att.num_heads = 8;
  att.num_kv_heads = 2;
  att.head_dim = 256;
  att.rotary_dim = 64;
  att.rope_theta = 1e7f;
  if (name == "demo") {
    layers = 8;
    hidden = 256;
    inter = 768;
    vocab = 4096;
    gdr.num_k_heads = 2;
    gdr.num_v_heads = 4;
    gdr.head_k_dim = gdr.head_v_dim = 64;
    att.num_heads = 4;
    att.head_dim = 64;
    att.rotary_dim = 16;
  }
  s.vocab_size = vocab;
  s.hidden_size = hidden;
  for (int l = 0; l < layers; ++l) {
    BlockSpec b;
    b.intermediate_size = inter;
    if (l % 4 == 3) {
      b.mixer = MixerKind::kGlobalAttention;
      b.attention = att;
    } else {
      b.mixer = MixerKind::kGatedDeltaRule;
      b.gdr = gdr;
    }
    s.blocks.push_back(b);
  }
  return s;
}

// Fast deterministic fill (splitmix64 → uniform [-scale, scale]).
Weight Random(std::vector<int64_t> shape, float scale, float offset,
              uint64_t* seed) {
  Weight w;
  w.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  w.data.resize(n);
  uint64_t x = *seed;
  for (int64_t i = 0; i < n; ++i) {
    x += 0x9e3779b97f4a7c15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    w.data[i] = offset + scale * (2.0f * u - 1.0f);
  }
  *seed = x;
  return w;
}

ModelWeights RandomWeights(const ModelSpec& s) {
  uint64_t seed = 1234;
  const int64_t d = s.hidden_size;
  const float ws = 0.02f * 1.7f;  // uniform with std ≈ 0.02
  const float norm_one = s.norm_zero_centered ? 0.0f : 1.0f;
  ModelWeights w;
  w.embed = Random({s.vocab_size, d}, ws, 0, &seed);
  w.final_norm = Random({d}, 0.01f, norm_one, &seed);
  if (!s.tie_word_embeddings) {
    w.lm_head = Random({s.vocab_size, d}, ws, 0, &seed);
  }
  for (const BlockSpec& b : s.blocks) {
    BlockWeights bw;
    bw.input_norm = Random({d}, 0.01f, norm_one, &seed);
    bw.post_norm = Random({d}, 0.01f, norm_one, &seed);
    bw.gate_proj = Random({b.intermediate_size, d}, ws, 0, &seed);
    bw.up_proj = Random({b.intermediate_size, d}, ws, 0, &seed);
    bw.down_proj = Random({d, b.intermediate_size}, ws, 0, &seed);
    if (b.mixer == MixerKind::kGatedDeltaRule) {
      const GatedDeltaRuleSpec& g = b.gdr;
      bw.gdr.in_proj_qkv = Random({g.conv_dim(), d}, ws, 0, &seed);
      if (g.output_gate) {
        bw.gdr.in_proj_z = Random({g.value_dim(), d}, ws, 0, &seed);
      }
      bw.gdr.in_proj_b = Random({g.num_v_heads, d}, ws, 0, &seed);
      bw.gdr.in_proj_a = Random({g.num_v_heads, d}, ws, 0, &seed);
      bw.gdr.conv = Random({g.conv_dim(), g.conv_kernel}, 0.3f, 0, &seed);
      bw.gdr.a_log = Random({g.num_v_heads}, 1.0f, 1.5f, &seed);
      bw.gdr.dt_bias = Random({g.num_v_heads}, 0.5f, 1.0f, &seed);
      bw.gdr.norm = Random({g.head_v_dim}, 0.01f, 1.0f, &seed);
      bw.gdr.out_proj = Random({d, g.value_dim()}, ws, 0, &seed);
    } else {
      const AttentionSpec& a = b.attention;
      const int64_t qd = int64_t{a.num_heads} * a.head_dim;
      const int64_t kvd = int64_t{a.num_kv_heads} * a.head_dim;
      bw.attention.q_proj =
          Random({qd * (a.output_gate ? 2 : 1), d}, ws, 0, &seed);
      bw.attention.k_proj = Random({kvd, d}, ws, 0, &seed);
      bw.attention.v_proj = Random({kvd, d}, ws, 0, &seed);
      bw.attention.o_proj = Random({d, qd}, ws, 0, &seed);
      bw.attention.q_norm = Random({a.head_dim}, 0.01f, 0, &seed);
      bw.attention.k_norm = Random({a.head_dim}, 0.01f, 0, &seed);
    }
    w.blocks.push_back(std::move(bw));
  }
  return w;
}

std::vector<int> Ints(const std::string& csv) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    int v;
    if (absl::SimpleAtoi(p, &v)) out.push_back(v);
  }
  return out;
}

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

#define CHECK_OK(expr)                                                 \
  do {                                                                 \
    const absl::Status _st = (expr);                                   \
    if (!_st.ok()) {                                                   \
      std::fprintf(stderr, "%s: %s\n", #expr, _st.ToString().c_str()); \
      std::exit(1);                                                    \
    }                                                                  \
  } while (0)

std::unique_ptr<Kernels> MakeKernels(const std::string& device) {
  if (device == "cpu") return std::move(*CpuKernels::Create({}));
  auto k = CudaKernels::Create({});
  CHECK_OK(k.status());
  return std::move(*k);
}

int Main() {
  const std::string shape = absl::GetFlag(FLAGS_shape);
  const std::string device = absl::GetFlag(FLAGS_device);
  const ModelSpec spec = Shape(shape);
  double t0 = Now();
  std::unique_ptr<Model> model =
      Model::FromParts(shape, spec, RandomWeights(spec), nullptr);
  const int64_t params = model->weights().NumParameters();
  std::printf("model %s: %.3f B parameters (made in %.1f s), device %s\n",
              shape.c_str(), params / 1e9, Now() - t0, device.c_str());
  const std::vector<int> prefill = Ints(absl::GetFlag(FLAGS_prefill));
  const std::vector<int> decode = Ints(absl::GetFlag(FLAGS_decode));
  const int ctx = absl::GetFlag(FLAGS_decode_context);
  const int steps = absl::GetFlag(FLAGS_steps);
  int max_b = 1;
  for (int b : decode) max_b = std::max(max_b, b);
  int64_t kv_tokens = int64_t{max_b} * (ctx + steps + 16 + 64);
  for (int t : prefill) kv_tokens = std::max<int64_t>(kv_tokens, t + 64);

  std::unique_ptr<Kernels> kernels = MakeKernels(device);
  StatePool::Options po;
  po.max_slots = max_b;
  po.kv_capacity_tokens = kv_tokens;
  po.memory = kernels->memory();
  po.stream = kernels->stream();
  po.kv_dtype = device == "cpu" ? DType::kF32 : DType::kBF16;
  auto pool = StatePool::Create(spec, po);
  CHECK_OK(pool.status());
  t0 = Now();
  auto runner_or = ModelRunner::Create(model.get(), kernels.get(), pool->get());
  CHECK_OK(runner_or.status());
  std::unique_ptr<ModelRunner> runner = std::move(*runner_or);
  ModelRunner::Options no_graphs;
  no_graphs.record_decode = false;
  auto direct_or =
      ModelRunner::Create(model.get(), kernels.get(), pool->get(), no_graphs);
  CHECK_OK(direct_or.status());
  std::unique_ptr<ModelRunner> direct = std::move(*direct_or);
  std::printf("weights on the device in %.1f s; state pool %.2f GiB\n",
              Now() - t0, (*pool)->bytes() / double(1 << 30));
  StatePool& sp = **pool;

  std::printf("\n| shape | what | value | unit |\n|---|---|---:|---|\n");
  std::vector<int32_t> tokens;
  for (int t : prefill) {
    tokens.resize(t);
    for (int i = 0; i < t; ++i) tokens[i] = (i * 7919 + 13) % spec.vocab_size;
    std::vector<double> times;
    for (int r = 0; r < absl::GetFlag(FLAGS_repeats) + 1; ++r) {
      auto slot = sp.AllocateSlot();
      CHECK_OK(slot.status());
      SeqPages pages;
      CHECK_OK(sp.EnsureCapacity(&pages, t));
      SequenceInput in{*slot, &pages, 0, absl::MakeConstSpan(tokens)};
      ForwardRequest req;
      req.argmax = true;
      ForwardOutput out;
      CHECK_OK(kernels->Synchronize(kernels->stream()));
      const double s = Now();
      CHECK_OK(runner->Forward({in}, req, &out));
      const double e = Now() - s;
      if (r > 0) times.push_back(e);  // the first run sizes the buffers
      sp.FreePages(&pages);
      sp.FreeSlot(*slot);
    }
    std::sort(times.begin(), times.end());
    const double med = times[times.size() / 2];
    std::printf("| %s | prefill B=1 T=%d | %.0f | tok/s (%.1f ms) |\n",
                shape.c_str(), t, t / med, med * 1e3);
    std::fflush(stdout);
  }
  for (int b : decode) {
    for (ModelRunner* r : {runner.get(), direct.get()}) {
      std::vector<int> slots;
      std::vector<SeqPages> pages(b);
      std::vector<int64_t> pos(b, 0);
      std::vector<int32_t> prompt(ctx);
      for (int i = 0; i < ctx; ++i) prompt[i] = (i * 31 + 7) % spec.vocab_size;
      std::vector<SequenceInput> batch;
      for (int i = 0; i < b; ++i) {
        auto slot = sp.AllocateSlot();
        CHECK_OK(slot.status());
        slots.push_back(*slot);
        CHECK_OK(sp.EnsureCapacity(&pages[i], ctx + steps + 16));
      }
      // Prefill every sequence (in batches of up to 16 sequences).
      for (int i0 = 0; i0 < b; i0 += 16) {
        batch.clear();
        for (int i = i0; i < std::min(b, i0 + 16); ++i) {
          batch.push_back(
              {slots[i], &pages[i], 0, absl::MakeConstSpan(prompt)});
        }
        std::vector<float> unused;
        CHECK_OK(r->Forward(batch, false, &unused));
      }
      for (int i = 0; i < b; ++i) pos[i] = ctx;
      std::vector<int32_t> next(b, 1);
      const std::vector<int> no_rows;  // greedy only: no logits to the host
      ForwardRequest req;
      req.argmax = true;
      req.logits_rows = &no_rows;
      ForwardOutput out;
      double start = 0;
      for (int step = 0; step < steps + 8; ++step) {
        if (step == 8) {
          CHECK_OK(kernels->Synchronize(kernels->stream()));
          start = Now();
        }
        batch.clear();
        for (int i = 0; i < b; ++i) {
          batch.push_back(
              {slots[i], &pages[i], pos[i], absl::MakeConstSpan(&next[i], 1)});
        }
        CHECK_OK(r->Forward(batch, req, &out));
        for (int i = 0; i < b; ++i) {
          next[i] = out.argmax[i];
          ++pos[i];
        }
      }
      const double per = (Now() - start) / steps;
      std::printf(
          "| %s | decode B=%d ctx %d, %s | %.3f | ms/step (%.0f tok/s) |\n",
          shape.c_str(), b, ctx,
          device == "cpu"     ? "cpu"
          : r == runner.get() ? "CUDA graphs"
                              : "direct",
          per * 1e3, b / per);
      std::fflush(stdout);
      for (int i = 0; i < b; ++i) {
        sp.FreePages(&pages[i]);
        sp.FreeSlot(slots[i]);
      }
      if (device == "cpu") break;
    }
  }
  return 0;
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return deltaserve::Main();
}
