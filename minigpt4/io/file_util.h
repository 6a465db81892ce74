#pragma once
// File plumbing shared by the weight readers and writers: a memory-mapped input file that
// tensors can point into without copying, and an output file that appears atomically.
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace minigpt4::io {

// A whole file mapped MAP_PRIVATE with PROT_READ|PROT_WRITE: the page cache backs it (no
// copy, lazily paged in), and a caller writing into a tensor that lives here gets private
// copy-on-write pages instead of a segfault; the file itself is never modified.
// Tensors made by tensor()/storage() keep the mapping alive through their deleter, so the
// mapping outlives the loader and is unmapped when the last such tensor is freed.
class MappedFile : public std::enable_shared_from_this<MappedFile> {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // `nbytes` bytes at `offset` as a 1-D uint8 tensor sharing the mapping (bounds checked
  // by the caller; reinterpret with .view(dtype)).
  at::Tensor bytes(size_t offset, size_t nbytes);

 private:
  MappedFile(std::string path, uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// After renaming a file into place: fsync the folder that holds it, so that the rename itself
// survives a power cut (the file's data was synced before the rename). Throws naming the
// folder; file systems that cannot sync a folder (EINVAL, ENOTSUP) are accepted as they are.
void sync_parent_folder(const std::string& path);

// Writes `path` as `path.tmp.<pid>` and renames it into place on commit(), so a crash or an
// error never leaves a half-written weight file under the real name (the data is synced
// before the rename, the folder after it). Without commit() the destructor removes the
// temporary.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path);
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, size_t n);
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string tmp_path_;
  std::FILE* file_ = nullptr;
};

// The first `n` bytes of a file (fewer if it is shorter); errors name the file.
std::string read_prefix(const std::string& path, size_t n);

}  // namespace minigpt4::io
