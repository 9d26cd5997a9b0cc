// RocksDbStats: figures RocksDB reports about the state store's database
// (write stalls, flushes, compactions, file sizes), as plain numbers, so
// that code which must not include RocksDB (the metrics) can use them.
#ifndef DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATS_H_
#define DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATS_H_

#include <cstdint>

namespace deltaserve {

// Figures over every column family of the database at one moment
// (RocksDbStateStore::GetStats). The RocksDB property or statistic each
// comes from is named beside it.
struct RocksDbStats {
  // Gauges.
  // Bytes per second writes are slowed to; 0 while writes are not delayed
  // ("rocksdb.actual-delayed-write-rate").
  int64_t actual_delayed_write_rate = 0;
  // 1 while writes are stopped ("rocksdb.is-write-stopped").
  int64_t is_write_stopped = 0;
  // "rocksdb.num-running-compactions", "rocksdb.num-running-flushes".
  int64_t num_running_compactions = 0;
  int64_t num_running_flushes = 0;
  // Column families with a compaction pending ("rocksdb.compaction-pending",
  // summed).
  int64_t compaction_pending = 0;
  // Bytes compaction must rewrite to bring every level under its target
  // ("rocksdb.estimate-pending-compaction-bytes", summed).
  int64_t estimate_pending_compaction_bytes = 0;
  // Bytes of the live SST files and of all blob files
  // ("rocksdb.live-sst-files-size", "rocksdb.total-blob-file-size").
  int64_t live_sst_files_bytes = 0;
  int64_t blob_files_bytes = 0;

  // Counters since the database was opened.
  // Time writes spent stalled (statistic STALL_MICROS).
  int64_t stall_micros = 0;
  // Times a write slowdown or stop condition set in (the "io_stalls.
  // total_slowdown" and "io_stalls.total_stop" of "rocksdb.cfstats",
  // summed).
  int64_t write_slowdowns = 0;
  int64_t write_stops = 0;
  // Bytes compactions read and wrote, and flushes wrote (statistics
  // COMPACT_READ_BYTES, COMPACT_WRITE_BYTES, FLUSH_WRITE_BYTES).
  int64_t compaction_read_bytes = 0;
  int64_t compaction_write_bytes = 0;
  int64_t flush_write_bytes = 0;
};

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_STATE_STORE_ROCKSDB_STATS_H_
