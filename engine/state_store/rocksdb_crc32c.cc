// RocksDB's CRC-32C function, replaced by ours (hardware CRC on x86-64).
//
// RocksDB checksums every write-ahead-log record and blob record with
// rocksdb::crc32c::Extend, so every byte a commit writes and a load reads goes
// through it. Debian's librocksdb is built portable (without -msse4.2), and
// its Extend then runs a table-driven loop at about 1 GB/s: some 20 ms of a
// 24 MiB commit, and as much again of each load from blob files. The library
// calls Extend through its PLT, so this definition, linked into the program,
// takes its place. It computes the same function (CRC-32C with RocksDB's
// conventions: `init_crc` is a finished CRC, as for Crc32cExtend), so files
// are interchangeable with those written by an unmodified RocksDB; a RocksDB
// built with SSE4.2 or linked statically simply keeps using its own.
#include <cstddef>
#include <cstdint>

#include "engine/state_store/crc32c.h"

namespace rocksdb {
namespace crc32c {

uint32_t Extend(uint32_t init_crc, const char* data, size_t n) {
  return deltaserve::Crc32cExtend(init_crc, data, n);
}

}  // namespace crc32c
}  // namespace rocksdb
