// Error-handling helpers shared by every layer of deltaserve.
//
// Errors are values (absl::Status / absl::StatusOr). DS_RETURN_IF_ERROR and
// DS_ASSIGN_OR_RETURN propagate them; DS_CHECK aborts on a broken invariant of
// the program itself and is never used on client, file or device data.
#ifndef DELTASERVE_KERNELS_STATUS_H_
#define DELTASERVE_KERNELS_STATUS_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DS_STATUS_CONCAT_INNER_(a, b) a##b
#define DS_STATUS_CONCAT_(a, b) DS_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define DS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ds_status_ = (expr);      \
    if (!ds_status_.ok()) return ds_status_; \
  } while (0)

// `lhs = value of rexpr` (an absl::StatusOr<T>), or returns its error.
#define DS_ASSIGN_OR_RETURN(lhs, rexpr)                                     \
  DS_ASSIGN_OR_RETURN_IMPL_(DS_STATUS_CONCAT_(ds_statusor_, __LINE__), lhs, \
                            rexpr)

#define DS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)    \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

// Aborts the process when an internal invariant is broken.
#define DS_CHECK(cond)                                                      \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                  \
      std::abort();                                                         \
    }                                                                       \
  } while (0)

#endif  // DELTASERVE_KERNELS_STATUS_H_
