// Reads tensors from .safetensors checkpoints, memory-mapped.
//
// A SafetensorsFile maps one file read-only and indexes its header; the
// tensor data pointers stay valid while the object lives. A Checkpoint is
// the set of files of one model directory (model.safetensors, or the shards
// named by model.safetensors.index.json). Both are immutable after creation
// and safe to read from any thread.
#ifndef DELTASERVE_ENGINE_MODEL_SAFETENSORS_H_
#define DELTASERVE_ENGINE_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace deltaserve {

// One tensor of a checkpoint: where its bytes are and what they mean.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapped file
  size_t num_bytes = 0;
  std::string file;  // the file it lives in (for error messages)

  int64_t numel() const;
  std::string ShapeString() const;  // "[3, 4]"
};

// The tensors and `__metadata__` strings of one safetensors byte string.
struct SafetensorsContents {
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses safetensors bytes held in memory (e.g. received over the network):
// the entries point into `bytes`, which must outlive them; elements may be
// unaligned (read them with memcpy, as ToF32 does). `source` names the bytes
// in errors ("malformed SOURCE: ..."). INVALID_ARGUMENT when the header is
// malformed as SafetensorsFile::Open describes, or a shape's size overflows.
absl::StatusOr<SafetensorsContents> ParseSafetensors(absl::string_view bytes,
                                                     const std::string& source);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  // Maps and validates `path`. INVALID_ARGUMENT naming the file when the
  // header is malformed (bad length, bad JSON, unknown dtype, offsets that
  // overlap, disagree with the shape or run past the end: a truncated file);
  // NOT_FOUND when the file does not exist.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory.
class Checkpoint {
 public:
  // Opens dir/model.safetensors.index.json (and every shard it names) if
  // present, else dir/model.safetensors. NOT_FOUND when neither exists;
  // INVALID_ARGUMENT for a malformed index or shard, or a tensor the index
  // places in a shard that lacks it.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& dir);

  // The tensor, or nullptr.
  const TensorEntry* Find(const std::string& name) const;
  // The tensor, or INVALID_ARGUMENT "missing tensor NAME in DIR".
  absl::StatusOr<const TensorEntry*> Get(const std::string& name) const;
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorEntry*> index_;
};

// A tensor to write: raw little-endian bytes of `dtype` elements.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;
};

// The bytes of a .safetensors file holding `tensors` (header sorted by name,
// data in that order, the header padded to 8 bytes) and `metadata` as its
// `__metadata__` object (left out when empty). Deterministic: equal inputs
// give equal bytes. INVALID_ARGUMENT when a tensor's byte count disagrees
// with its shape, or a name is empty, repeated or `__metadata__`.
absl::StatusOr<std::string> EncodeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Writes EncodeSafetensors(tensors) to `path`. INVALID_ARGUMENT as
// EncodeSafetensors; INTERNAL when the file cannot be written.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors);

// Copies a tensor's elements to f32, converting bf16/f16.
// INVALID_ARGUMENT for integer dtypes or when `out` has the wrong size.
absl::Status ToF32(const TensorEntry& entry, float* out, size_t out_numel);

}  // namespace deltaserve

#endif  // DELTASERVE_ENGINE_MODEL_SAFETENSORS_H_
