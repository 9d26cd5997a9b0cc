#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

using json = nlohmann::json;

// `source`: what the bytes are ("safetensors file PATH").
absl::Status Malformed(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed ", source, ": ", what));
}

bool ParseDType(const std::string& s, DType* out) {
  if (s == "F32") {
    *out = DType::kF32;
  } else if (s == "BF16") {
    *out = DType::kBF16;
  } else if (s == "F16") {
    *out = DType::kF16;
  } else if (s == "I32") {
    *out = DType::kI32;
  } else if (s == "I64") {
    *out = DType::kI64;
  } else {
    return false;
  }
  return true;
}

}  // namespace

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorEntry::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<SafetensorsContents> ParseSafetensors(
    absl::string_view bytes_view, const std::string& source) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(bytes_view.data());
  const size_t size = bytes_view.size();
  if (size < 8)
    return Malformed(source, "shorter than its 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > size - 8 || header_len > (100u << 20)) {
    return Malformed(source, absl::StrCat("header length ", header_len,
                                          " exceeds the size ", size));
  }
  json header = json::parse(bytes + 8, bytes + 8 + header_len, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Malformed(source, "header is not a JSON object");
  }
  SafetensorsContents out;
  const uint8_t* data_start = bytes + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object()) {
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (m->is_string()) out.metadata[m.key()] = m->get<std::string>();
        }
      }
      continue;
    }
    const json& t = *it;
    if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() ||
        !t.contains("shape") || !t["shape"].is_array() ||
        !t.contains("data_offsets") || !t["data_offsets"].is_array() ||
        t["data_offsets"].size() != 2) {
      return Malformed(source,
                       absl::StrCat("tensor ", it.key(),
                                    " lacks dtype, shape or data_offsets"));
    }
    TensorEntry e;
    e.name = it.key();
    e.file = source;
    if (!ParseDType(t["dtype"].get<std::string>(), &e.dtype)) {
      return Malformed(
          source, absl::StrCat("tensor ", it.key(), " has unsupported dtype ",
                               t["dtype"].get<std::string>()));
    }
    // The element count, refusing sizes that overflow 64 bits.
    uint64_t elements = 1;
    bool overflow = false;
    for (const json& d : t["shape"]) {
      if (!d.is_number_unsigned()) {
        return Malformed(source, absl::StrCat("tensor ", it.key(),
                                              " has a non-integer dimension"));
      }
      const uint64_t dim = d.get<uint64_t>();
      overflow |= dim > (uint64_t{1} << 62) ||
                  __builtin_mul_overflow(elements, dim, &elements);
      e.shape.push_back(
          static_cast<int64_t>(std::min<uint64_t>(dim, uint64_t{1} << 62)));
    }
    uint64_t expect = 0;
    overflow |= __builtin_mul_overflow(
        elements, static_cast<uint64_t>(DTypeSize(e.dtype)), &expect);
    if (overflow) {
      return Malformed(source, absl::StrCat("tensor ", it.key(),
                                            " has a shape whose size "
                                            "overflows"));
    }
    const json& off = t["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return Malformed(
          source, absl::StrCat("tensor ", it.key(), " has bad data_offsets"));
    }
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Malformed(
          source, absl::StrCat("tensor ", it.key(), " data [", begin, ", ", end,
                               ") runs past the end of the data (", data_size,
                               " bytes): truncated?"));
    }
    if (end - begin != expect) {
      return Malformed(
          source, absl::StrCat("tensor ", it.key(), " has ", end - begin,
                               " bytes but shape ", e.ShapeString(), " needs ",
                               expect));
    }
    e.data = data_start + begin;
    e.num_bytes = end - begin;
    ranges.emplace_back(begin, end);
    out.tensors.emplace(e.name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Malformed(source, "tensor data ranges overlap");
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("no such file: ", path));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("cannot stat ", path));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  const std::string source = absl::StrCat("safetensors file ", path);
  if (file->map_size_ < 8) {
    ::close(fd);
    return Malformed(source, "shorter than its 8-byte header length");
  }
  void* map = mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot mmap ", path, ": ", std::strerror(errno)));
  }
  file->map_ = map;
  DS_ASSIGN_OR_RETURN(
      SafetensorsContents contents,
      ParseSafetensors(
          absl::string_view(static_cast<const char*>(map), file->map_size_),
          source));
  for (auto& [name, entry] : contents.tensors) entry.file = path;
  file->tensors_ = std::move(contents.tensors);
  file->metadata_ = std::move(contents.metadata);
  return file;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& dir) {
  namespace fs = std::filesystem;
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    json index = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() ||
        !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed checkpoint index ", index_path.string(),
                       ": expected an object with a weight_map"));
    }
    std::map<std::string, size_t> shard_of_file;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end();
         ++it) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("malformed checkpoint index ", index_path.string(),
                         ": entry ", it.key(), " is not a file name"));
      }
      const std::string shard = it->get<std::string>();
      if (shard.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("malformed checkpoint index ", index_path.string(),
                         ": shard name ", shard, " is not a plain file name"));
      }
      auto found = shard_of_file.find(shard);
      if (found == shard_of_file.end()) {
        DS_ASSIGN_OR_RETURN(
            auto file, SafetensorsFile::Open((fs::path(dir) / shard).string()));
        found = shard_of_file.emplace(shard, ckpt->files_.size()).first;
        ckpt->files_.push_back(std::move(file));
      }
      const auto& tensors = ckpt->files_[found->second]->tensors();
      auto t = tensors.find(it.key());
      if (t == tensors.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint index ", index_path.string(), " places ",
                         it.key(), " in ", shard, ", which lacks it"));
      }
      ckpt->index_[it.key()] = &t->second;
    }
    return ckpt;
  }
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (!fs::exists(single, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "no model.safetensors or model.safetensors.index.json in ", dir));
  }
  DS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single.string()));
  for (const auto& [name, entry] : file->tensors()) {
    ckpt->index_[name] = &entry;
  }
  ckpt->files_.push_back(std::move(file));
  return ckpt;
}

const TensorEntry* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorEntry*> Checkpoint::Get(
    const std::string& name) const {
  const TensorEntry* e = Find(name);
  if (e == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing tensor ", name, " in ", dir_));
  }
  return e;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, entry] : index_) names.push_back(name);
  return names;
}

absl::StatusOr<std::string> EncodeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> sorted;
  for (const TensorToWrite& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto* a, const auto* b) { return a->name < b->name; });
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const TensorToWrite* t = sorted[i];
    if (t->name.empty() || t->name == "__metadata__" ||
        (i > 0 && sorted[i - 1]->name == t->name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name \"", t->name, "\" is empty, reserved or repeated"));
    }
    int64_t n = 1;
    for (int64_t d : t->shape) n *= d;
    if (static_cast<uint64_t>(n) * DTypeSize(t->dtype) != t->bytes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t->name, " has ", t->bytes.size(),
                       " bytes, which does not fit its shape"));
    }
    static const char* kNames[] = {"F32", "BF16", "F16", "I32", "I64"};
    header[t->name] = {{"dtype", kNames[static_cast<int>(t->dtype)]},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t len = text.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += text;
  for (const TensorToWrite* t : sorted) out += t->bytes;
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors) {
  DS_ASSIGN_OR_RETURN(const std::string bytes, EncodeSafetensors(tensors));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), bytes.size());
  out.close();
  if (!out) {
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

absl::Status ToF32(const TensorEntry& entry, float* out, size_t out_numel) {
  const size_t n = static_cast<size_t>(entry.numel());
  if (n != out_numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", entry.name, " has ", n, " elements, expected ", out_numel));
  }
  switch (entry.dtype) {
    case DType::kF32:
      std::memcpy(out, entry.data, n * 4);
      return absl::OkStatus();
    case DType::kBF16:
    case DType::kF16: {
      const bool bf16 = entry.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, entry.data + 2 * i, 2);
        out[i] = bf16 ? Bf16ToF32(v) : F16ToF32(v);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", entry.name, " has integer dtype ",
                       DTypeName(entry.dtype), "; expected a float tensor"));
  }
}

}  // namespace deltaserve
