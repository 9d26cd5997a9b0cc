// The one conversion of RocksDB statuses into absl::Status.
#ifndef DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATUS_H_
#define DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATUS_H_

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace deltaserve {

// NotFound → NOT_FOUND; Corruption → DATA_LOSS; NoSpace (or an IOError
// saying "No space") → RESOURCE_EXHAUSTED; Busy, TryAgain → UNAVAILABLE;
// anything else not OK → INTERNAL. The message keeps RocksDB's text.
absl::Status FromRocksDb(const rocksdb::Status& status);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATUS_H_
