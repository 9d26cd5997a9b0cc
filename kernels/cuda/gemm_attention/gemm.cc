#include "kernels/cuda/gemm_attention/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/status.h"

namespace deltaserve {
namespace {

// Drops plans beyond this many distinct shapes (a fresh heuristic query then
// rebuilds what is needed).
constexpr size_t kMaxPlans = 4096;

// cuBLASLt status → absl::Status (cuBLAS errors are INTERNAL, except an
// allocation failure).
absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  std::string message = absl::StrCat(what, ": ", cublasLtGetStatusName(s), " (",
                                     cublasLtGetStatusString(s), ")");
  if (s == CUBLAS_STATUS_ALLOC_FAILED) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::InternalError(message);
}

// Largest power of two ≤ 256 dividing both the address and the row pitch.
int64_t Alignment(const void* p, int64_t ld, int elem_size) {
  const uint64_t bits =
      reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld * elem_size);
  int64_t a = 256;
  while (a > 1 && (bits & static_cast<uint64_t>(a - 1)) != 0) a >>= 1;
  return a;
}

cudaDataType_t CudaType(DType t) {
  return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
}

}  // namespace

struct CublasLtGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // w as column-major [K, N]
  cublasLtMatrixLayout_t b = nullptr;  // x as column-major [K, M]
  cublasLtMatrixLayout_t c = nullptr;  // out as column-major [N, M]
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create(
    const Options& options) {
  std::unique_ptr<CublasLtGemm> gemm(new CublasLtGemm());
  cublasLtHandle_t handle = nullptr;
  DS_RETURN_IF_ERROR(CublasStatus(cublasLtCreate(&handle), "cublasLtCreate"));
  gemm->handle_ = handle;
  if (options.workspace_bytes > 0) {
    DS_RETURN_IF_ERROR(
        CudaStatus(cudaMalloc(&gemm->workspace_, options.workspace_bytes),
                   "cudaMalloc cuBLASLt workspace"));
    gemm->workspace_bytes_ = options.workspace_bytes;
  }
  return gemm;
}

CublasLtGemm::~CublasLtGemm() {
  plans_.clear();
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) {
    cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
  }
}

absl::StatusOr<const CublasLtGemm::Plan*> CublasLtGemm::GetPlan(
    const GemmArgs& args) {
  const int in_size = DTypeSize(args.in_dtype);
  const int out_size = DTypeSize(args.out_dtype);
  const int64_t align_x = Alignment(args.x, args.ldx, in_size);
  const int64_t align_w = Alignment(args.w, args.ldw, in_size);
  const int64_t align_o = Alignment(args.out, args.ldo, out_size);
  const PlanKey key = {static_cast<int64_t>(args.in_dtype),
                       static_cast<int64_t>(args.out_dtype),
                       args.m,
                       args.n,
                       args.k,
                       args.ldx,
                       args.ldw,
                       args.ldo,
                       align_x | (align_w << 16),
                       align_o};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();

  auto plan = std::make_unique<Plan>();
  const cudaDataType_t in_type = CudaType(args.in_dtype);
  const cudaDataType_t out_type = CudaType(args.out_dtype);
  // Exact fp32 compute (CUBLAS_COMPUTE_32F never uses TF32).
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
      "cublasLtMatmulDescCreate"));
  const cublasOperation_t trans_a = CUBLAS_OP_T;
  const cublasOperation_t trans_b = CUBLAS_OP_N;
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                     &trans_a, sizeof(trans_a)),
      "cublasLtMatmulDescSetAttribute TRANSA"));
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                     &trans_b, sizeof(trans_b)),
      "cublasLtMatmulDescSetAttribute TRANSB"));
  // Row-major out = x · wᵀ is column-major outᵀ[N, M] = wᵀ-op(A) · B with A
  // = w viewed as column-major [K, N] and B = x viewed as column-major [K, M].
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatrixLayoutCreate(&plan->a, in_type, args.k, args.n, args.ldw),
      "cublasLtMatrixLayoutCreate w"));
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatrixLayoutCreate(&plan->b, in_type, args.k, args.m, args.ldx),
      "cublasLtMatrixLayoutCreate x"));
  DS_RETURN_IF_ERROR(CublasStatus(
      cublasLtMatrixLayoutCreate(&plan->c, out_type, args.n, args.m, args.ldo),
      "cublasLtMatrixLayoutCreate out"));

  cublasLtMatmulPreference_t pref = nullptr;
  DS_RETURN_IF_ERROR(CublasStatus(cublasLtMatmulPreferenceCreate(&pref),
                                  "cublasLtMatmulPreferenceCreate"));
  const uint64_t ws = workspace_bytes_;
  const uint32_t al_a = static_cast<uint32_t>(align_w);
  const uint32_t al_b = static_cast<uint32_t>(align_x);
  const uint32_t al_c = static_cast<uint32_t>(align_o);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_),
                                        plan->desc, plan->a, plan->b, plan->c,
                                        plan->c, pref, 1, &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  DS_RETURN_IF_ERROR(CublasStatus(st, "cublasLtMatmulAlgoGetHeuristic"));
  if (found < 1) {
    return absl::InternalError(absl::StrCat(
        "Gemm: cuBLASLt has no algorithm for ", DTypeName(args.in_dtype),
        " -> ", DTypeName(args.out_dtype), " M=", args.m, " N=", args.n, " K=",
        args.k, " ldx=", args.ldx, " ldw=", args.ldw, " ldo=", args.ldo));
  }
  plan->algo = result.algo;
  if (plans_.size() >= kMaxPlans) plans_.clear();
  const Plan* raw = plan.get();
  plans_.emplace(key, std::move(plan));
  return raw;
}

absl::Status CublasLtGemm::Run(const GemmArgs& args, void* stream) {
  const bool in_f32 = args.in_dtype == DType::kF32;
  const bool in_bf16 = args.in_dtype == DType::kBF16;
  const bool out_ok = args.out_dtype == DType::kF32 ||
                      (in_bf16 && args.out_dtype == DType::kBF16);
  if (!(in_f32 || in_bf16) || !out_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Gemm: unsupported dtypes in_dtype = ", DTypeName(args.in_dtype),
        ", out_dtype = ", DTypeName(args.out_dtype),
        " (expected f32 -> f32, bf16 -> bf16 or bf16 -> f32)"));
  }
  if (args.m < 0 || args.n < 0 || args.k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: negative size m = ", args.m, ", n = ", args.n,
                     ", k = ", args.k));
  }
  if (args.m == 0 || args.n == 0) return absl::OkStatus();
  if (args.ldo < args.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Gemm: ldo = ", args.ldo, " is smaller than n = ", args.n));
  }
  if (args.out == nullptr) {
    return absl::InvalidArgumentError("Gemm: out is null");
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args.k == 0) {
    if (args.accumulate) return absl::OkStatus();
    const size_t elem = static_cast<size_t>(DTypeSize(args.out_dtype));
    return CudaStatus(
        cudaMemset2DAsync(args.out, static_cast<size_t>(args.ldo) * elem, 0,
                          static_cast<size_t>(args.n) * elem,
                          static_cast<size_t>(args.m), s),
        "Gemm: cudaMemset2DAsync");
  }
  if (args.ldx < args.k || args.ldw < args.k) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: ldx = ", args.ldx, " or ldw = ", args.ldw,
                     " is smaller than k = ", args.k));
  }
  if (args.x == nullptr || args.w == nullptr) {
    return absl::InvalidArgumentError("Gemm: x or w is null");
  }
  DS_ASSIGN_OR_RETURN(const Plan* plan, GetPlan(args));
  const float alpha = 1.0f;
  const float beta = args.accumulate ? 1.0f : 0.0f;
  return CublasStatus(
      cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), plan->desc, &alpha,
                     args.w, plan->a, args.x, plan->b, &beta, args.out, plan->c,
                     args.out, plan->c, &plan->algo, workspace_,
                     workspace_bytes_, s),
      "cublasLtMatmul");
}

}  // namespace deltaserve
