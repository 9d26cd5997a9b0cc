// Warp-level tensor-core and asynchronous-copy primitives for sm_80+
// (mma.sync m16n8k16 bf16 → fp32, ldmatrix, cp.async), shared by the
// attention and gated-delta-rule kernels. Device code only; no state.
//
// Fragment layouts of mma.sync.m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16×16, row-major): a[0] = (g, 2t..2t+1), a[1] = (g + 8, 2t..),
//                         a[2] = (g, 2t + 8..), a[3] = (g + 8, 2t + 8..)
//   B (16×8, k × n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t + 8.., n g)
//   C (16×8):             c[0..1] = (g, 2t..2t+1), c[2..3] = (g + 8, 2t..)
#ifndef DELTASERVE_KERNELS_CUDA_MMA_CUH_
#define DELTASERVE_KERNELS_CUDA_MMA_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace deltaserve {
namespace mma {

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global src to shared dst asynchronously, or writes
// 16 zero bytes (reading nothing) when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src,
                                          bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
// Waits until at most kPending of this thread's committed groups are in
// flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() { CpAsyncWait<0>(); }

// Four 8×8 b16 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr));
}
// The same, each matrix transposed.
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr,
                                                uint32_t (&r)[4]) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, "
      "[%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr));
}

// c += a·b for one m16n8k16 tile (bf16 in, fp32 accumulate).
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4],
                                        uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16x2, lo in the low half.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace mma
}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_CUDA_MMA_CUH_
