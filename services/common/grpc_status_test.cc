#include "services/common/grpc_status.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace deltaserve {
namespace {

TEST(ToGrpcStatusTest, OkIsOk) {
  const grpc::Status status = ToGrpcStatus(absl::OkStatus());
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.error_message(), "");
}

TEST(ToGrpcStatusTest, KeepsMessage) {
  const grpc::Status status =
      ToGrpcStatus(absl::InvalidArgumentError("sampling.top_p must be > 0"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "sampling.top_p must be > 0");
}

TEST(ToGrpcStatusTest, EveryCanonicalCodeMapsToTheSameCode) {
  // The canonical codes are numbered identically in both libraries.
  for (int code = 1; code <= 16; ++code) {
    const absl::Status in(static_cast<absl::StatusCode>(code), "m");
    const grpc::Status out = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.error_code()), code)
        << absl::StatusCodeToString(in.code());
    EXPECT_EQ(out.error_message(), "m");
  }
}

TEST(FromGrpcStatusTest, RoundTripsCodeAndAddsContext) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  const absl::Status s = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::NOT_FOUND, "no model x"), "GetModel");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "GetModel: no model x");
  EXPECT_EQ(ToGrpcStatus(FromGrpcStatus(grpc::Status(
                             grpc::StatusCode::RESOURCE_EXHAUSTED, "full")))
                .error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(ToGrpcStatusTest, NonCanonicalCodeIsUnknown) {
  const absl::Status in(static_cast<absl::StatusCode>(99), "odd");
  const grpc::Status out = ToGrpcStatus(in);
  EXPECT_EQ(out.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(out.error_message(), "odd");
}

}  // namespace
}  // namespace deltaserve
