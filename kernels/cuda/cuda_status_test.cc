#include "kernels/cuda/cuda_status.h"

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

using ::testing::HasSubstr;

TEST(CudaStatusTest, SuccessIsOk) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "cudaMemcpy").ok());
}

TEST(CudaStatusTest, OutOfMemoryIsResourceExhausted) {
  const absl::Status status =
      CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc state pool");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("cudaMalloc state pool"));
  EXPECT_THAT(status.message(), HasSubstr("cudaErrorMemoryAllocation"));
}

TEST(CudaStatusTest, OtherErrorsAreInternalAndNamed) {
  const absl::Status status = CudaStatus(cudaErrorInvalidValue, "launch");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("launch"));
  EXPECT_THAT(status.message(), HasSubstr("cudaErrorInvalidValue"));
  EXPECT_THAT(status.message(),
              HasSubstr(cudaGetErrorString(cudaErrorInvalidValue)));

  EXPECT_EQ(CudaStatus(cudaErrorLaunchFailure, "step").code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "init").code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace deltaserve
