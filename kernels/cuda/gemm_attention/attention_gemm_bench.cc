// Times the cuBLASLt GEMM and the paged attention kernels on the GPU and
// prints one table:
//   GEMM bf16 -> bf16 TFLOP/s for 4096×2048×2048 and 65536×2048×2048
//     (anchor: 765 TFLOP/s);
//   attention prefill TFLOP/s for one causal sequence of 4k, 16k and 64k
//     tokens, bf16, page size 16, random inputs: H = 16, d = 128 (anchor:
//     torch SDPA 1.99 ms at 16k, 28.8 ms at 64k) and the Qwen3.5 shape
//     Hq = 8, Hkv = 2, d = 256 (causal FLOPs counted as 4·T²/2·Hq·d);
//   decode (one query per sequence) bandwidth over the KV read at long
//     contexts, split over the GPU through a 64 MiB workspace as CudaKernels
//     runs it, among them the Qwen3.5 shape (Hq = 8, Hkv = 2, d = 256) at
//     4k, 64k and (B = 1) 1M tokens of context (anchor: copy 4.25 TB/s);
//     timed as replays of a CUDA graph holding one call (as the engine runs
//     decode steps), with the time of back-to-back direct calls beside.
//
// Usage: attention_gemm_bench [reps]   (default 20)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_attention/attention.h"
#include "kernels/cuda/gemm_attention/gemm.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace deltaserve {
namespace {

// Device allocations freed on destruction.
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (void* p : owned_) cudaFree(p);
  }

  // `bytes` of device memory filled with byte `fill` (0x3c: bf16 ≈ 0.0115).
  absl::StatusOr<void*> Alloc(size_t bytes, int fill = 0x3c) {
    void* p = nullptr;
    DS_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&p, bytes), "cudaMalloc"));
    owned_.push_back(p);
    DS_RETURN_IF_ERROR(CudaStatus(cudaMemset(p, fill, bytes), "cudaMemset"));
    return p;
  }
  // `count` pseudo-random bf16 values (magnitudes in [0.25, 1), either sign)
  // from a fixed seed.
  absl::StatusOr<void*> RandomBf16(size_t count, uint32_t seed) {
    std::vector<uint16_t> host(count);
    uint32_t x = seed * 2654435761u + 1;
    for (uint16_t& e : host) {
      x = x * 1664525u + 1013904223u;
      // Sign bit, biased exponent 125 or 126, 7 mantissa bits.
      e = static_cast<uint16_t>(((x >> 16) & 0x8000u) |
                                ((125u + ((x >> 14) & 1u)) << 7) |
                                ((x >> 7) & 0x7fu));
    }
    DS_ASSIGN_OR_RETURN(uint16_t * p, Upload(host));
    return static_cast<void*>(p);
  }
  template <typename T>
  absl::StatusOr<T*> Upload(const std::vector<T>& host) {
    DS_ASSIGN_OR_RETURN(void* p, Alloc(host.size() * sizeof(T)));
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(p, host.data(), host.size() * sizeof(T),
                              cudaMemcpyHostToDevice),
                   "cudaMemcpy"));
    return static_cast<T*>(p);
  }

 private:
  std::vector<void*> owned_;
};

// Mean milliseconds of `launch` (work on `stream`) over `reps` back-to-back
// runs after warmup.
absl::StatusOr<double> TimeMs(const std::function<absl::Status()>& launch,
                              int reps, cudaStream_t stream = nullptr) {
  for (int i = 0; i < 3; ++i) DS_RETURN_IF_ERROR(launch());
  cudaEvent_t start, stop;
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
  DS_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&stop), "cudaEventCreate"));
  absl::Status status =
      CudaStatus(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int i = 0; status.ok() && i < reps; ++i) status = launch();
  if (status.ok()) status = CudaStatus(cudaEventRecord(stop, stream), "record");
  if (status.ok()) status = CudaStatus(cudaEventSynchronize(stop), "sync");
  float ms = 0.0f;
  if (status.ok()) {
    status = CudaStatus(cudaEventElapsedTime(&ms, start, stop), "elapsed");
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!status.ok()) return status;
  return static_cast<double>(ms) / reps;
}

// Mean milliseconds of one replay of a CUDA graph that holds `launch` on a
// new stream, over `reps` replays after warmup.
absl::StatusOr<double> TimeGraphMs(
    const std::function<absl::Status(cudaStream_t)>& launch, int reps) {
  cudaStream_t stream = nullptr;
  DS_RETURN_IF_ERROR(CudaStatus(
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream"));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  absl::Status status = CudaStatus(
      cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
      "cudaStreamBeginCapture");
  if (status.ok()) {
    const absl::Status launched = launch(stream);
    status = CudaStatus(cudaStreamEndCapture(stream, &graph), "EndCapture");
    if (!launched.ok()) status = launched;
  }
  if (status.ok()) {
    status = CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  }
  double ms = 0.0;
  if (status.ok()) {
    auto replays = TimeMs(
        [&] {
          return CudaStatus(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        },
        reps, stream);
    if (replays.ok()) {
      ms = *replays;
    } else {
      status = replays.status();
    }
  }
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  if (!status.ok()) return status;
  return ms;
}

absl::Status BenchGemm(CublasLtGemm* gemm, int64_t m, int64_t n, int64_t k,
                       int reps) {
  Buffers buffers;
  GemmArgs a;
  DS_ASSIGN_OR_RETURN(a.x, buffers.Alloc(m * k * 2));
  DS_ASSIGN_OR_RETURN(a.w, buffers.Alloc(n * k * 2));
  DS_ASSIGN_OR_RETURN(a.out, buffers.Alloc(m * n * 2));
  a.in_dtype = DType::kBF16;
  a.out_dtype = DType::kBF16;
  a.m = m;
  a.n = n;
  a.k = k;
  a.ldx = k;
  a.ldw = k;
  a.ldo = n;
  DS_ASSIGN_OR_RETURN(const double ms,
                      TimeMs([&] { return gemm->Run(a, nullptr); }, reps));
  const double tflops = 2.0 * m * n * k / (ms * 1e-3) / 1e12;
  std::printf("%-44s %10.3f %12.1f %14s\n",
              ("gemm bf16 " + std::to_string(m) + "x" + std::to_string(n) +
               "x" + std::to_string(k))
                  .c_str(),
              ms, tflops, "765 TFLOP/s");
  return absl::OkStatus();
}

// One attention call over `batch` sequences of `n` queries each, with
// `ctx` tokens of context each, page size 16, bf16. Prefill cases (not
// `decode`) use random inputs and print `anchor` beside their rate; decode
// cases pass `workspace` (kWorkspaceBytes).
constexpr int64_t kWorkspaceBytes = int64_t{64} << 20;

absl::Status BenchAttention(int64_t batch, int64_t n, int64_t ctx, int hq,
                            int hkv, int dim, int reps, bool decode,
                            const char* anchor = "",
                            void* workspace = nullptr) {
  constexpr int kPageSize = 16;
  Buffers buffers;
  const int64_t pages_per_seq = (ctx + kPageSize - 1) / kPageSize;
  const int64_t num_pages = batch * pages_per_seq;
  PagedAttentionArgs a;
  a.dtype = DType::kBF16;
  a.tokens = batch * n;
  a.batch = batch;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = dim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const size_t kv_bytes =
      static_cast<size_t>(num_pages) * kPageSize * hkv * dim * 2;
  if (decode) {
    DS_ASSIGN_OR_RETURN(a.kv.k_pages, buffers.Alloc(kv_bytes));
    DS_ASSIGN_OR_RETURN(a.kv.v_pages, buffers.Alloc(kv_bytes));
  } else {
    DS_ASSIGN_OR_RETURN(a.kv.k_pages, buffers.RandomBf16(kv_bytes / 2, 1));
    DS_ASSIGN_OR_RETURN(a.kv.v_pages, buffers.RandomBf16(kv_bytes / 2, 2));
  }
  std::vector<int32_t> table(static_cast<size_t>(num_pages));
  for (int64_t i = 0; i < num_pages; ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int32_t> cu(static_cast<size_t>(batch + 1));
  std::vector<int32_t> lens(static_cast<size_t>(batch),
                            static_cast<int32_t>(ctx));
  for (int64_t b = 0; b <= batch; ++b) cu[b] = static_cast<int32_t>(b * n);
  DS_ASSIGN_OR_RETURN(a.kv.page_table, buffers.Upload(table));
  DS_ASSIGN_OR_RETURN(a.cu_seqlens, buffers.Upload(cu));
  DS_ASSIGN_OR_RETURN(a.context_lens, buffers.Upload(lens));
  a.kv.num_pages = num_pages;
  a.kv.page_size = kPageSize;
  a.kv.max_pages = static_cast<int>(pages_per_seq);
  a.kv.k_stride[0] = a.kv.v_stride[0] = int64_t{kPageSize} * hkv * dim;
  a.kv.k_stride[1] = a.kv.v_stride[1] = int64_t{hkv} * dim;
  a.kv.k_stride[2] = a.kv.v_stride[2] = dim;
  a.kv.page_table_stride[0] = pages_per_seq;
  a.kv.page_table_stride[1] = 1;
  const size_t q_bytes = static_cast<size_t>(a.tokens) * hq * dim * 2;
  if (decode) {
    DS_ASSIGN_OR_RETURN(a.q, buffers.Alloc(q_bytes));
  } else {
    DS_ASSIGN_OR_RETURN(a.q, buffers.RandomBf16(q_bytes / 2, 3));
  }
  DS_ASSIGN_OR_RETURN(a.out, buffers.Alloc(q_bytes));
  a.q_stride[0] = a.out_stride[0] = int64_t{hq} * dim;
  a.q_stride[1] = a.out_stride[1] = dim;
  if (decode) {
    a.workspace = workspace;
    a.workspace_bytes = workspace == nullptr ? 0 : kWorkspaceBytes;
  }
  DS_ASSIGN_OR_RETURN(
      const double ms,
      TimeMs([&] { return LaunchPagedAttention(a, nullptr); }, reps));
  char label[96];
  if (decode) {
    std::snprintf(label, sizeof(label),
                  "decode B=%lld ctx=%lld Hq=%d Hkv=%d d=%d",
                  static_cast<long long>(batch), static_cast<long long>(ctx),
                  hq, hkv, dim);
    DS_ASSIGN_OR_RETURN(const double graph_ms,
                        TimeGraphMs(
                            [&](cudaStream_t stream) {
                              return LaunchPagedAttention(a, stream);
                            },
                            reps));
    const double bytes = 2.0 * batch * ctx * hkv * dim * 2;
    std::printf("%-44s %10.3f %12.1f %14s %10.3f\n", label, graph_ms,
                bytes / (graph_ms * 1e-3) / 1e9, "GB/s (4250)", ms);
  } else {
    std::snprintf(label, sizeof(label),
                  "prefill T=%lld Hq=%d Hkv=%d d=%d causal",
                  static_cast<long long>(n), hq, hkv, dim);
    // Causal: half of the 4·T²·d·Hq FLOPs of full attention.
    const double flops = 2.0 * batch * n * static_cast<double>(n) * dim * hq;
    std::printf("%-44s %10.3f %12.1f %14s\n", label, ms,
                flops / (ms * 1e-3) / 1e12, anchor);
  }
  return absl::OkStatus();
}

int Run(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "attention_gemm_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    std::printf("device: %s (%d SMs), mean of %d runs\n", prop.name,
                prop.multiProcessorCount, reps);
  }
  auto gemm = CublasLtGemm::Create(CublasLtGemm::Options());
  if (!gemm.ok()) {
    std::fprintf(stderr, "%s\n", gemm.status().ToString().c_str());
    return 1;
  }
  std::printf("%-44s %10s %12s %14s %10s\n", "case", "ms", "TFLOP/s|GB/s",
              "anchor", "direct ms");
  int rc = 0;
  auto report = [&rc](const absl::Status& s) {
    if (!s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
      rc = 1;
    }
  };
  report(BenchGemm(gemm->get(), 4096, 2048, 2048, reps));
  report(BenchGemm(gemm->get(), 65536, 2048, 2048, reps));
  report(BenchAttention(1, 4096, 4096, 16, 16, 128, reps, false));
  report(BenchAttention(1, 16384, 16384, 16, 16, 128, std::min(reps, 5), false,
                        "SDPA 1.99 ms"));
  report(BenchAttention(1, 65536, 65536, 16, 16, 128, std::min(reps, 3), false,
                        "SDPA 28.8 ms"));
  report(BenchAttention(1, 16384, 16384, 8, 2, 256, std::min(reps, 5), false));
  report(BenchAttention(1, 65536, 65536, 8, 2, 256, std::min(reps, 3), false));
  Buffers workspace;
  auto ws = workspace.Alloc(kWorkspaceBytes, 0);
  if (!ws.ok()) {
    std::fprintf(stderr, "%s\n", ws.status().ToString().c_str());
    return 1;
  }
  for (const int64_t ctx : {8192, 32768, 131072}) {
    report(BenchAttention(1, 1, ctx, 16, 16, 128, reps, true, "", *ws));
    report(BenchAttention(1, 1, ctx, 32, 4, 128, reps, true, "", *ws));
  }
  report(BenchAttention(32, 1, 32768, 16, 16, 128, reps, true, "", *ws));
  report(BenchAttention(32, 1, 32768, 32, 4, 128, reps, true, "", *ws));
  // The Qwen3.5 attention shape (2 GB of KV per layer at 1M tokens).
  for (const int64_t ctx : {4096, 65536, 1000000}) {
    report(BenchAttention(1, 1, ctx, 8, 2, 256, reps, true, "", *ws));
  }
  for (const int64_t ctx : {4096, 65536}) {
    report(BenchAttention(32, 1, ctx, 8, 2, 256, reps, true, "", *ws));
  }
  return rc;
}

}  // namespace
}  // namespace deltaserve

int main(int argc, char** argv) { return deltaserve::Run(argc, argv); }
