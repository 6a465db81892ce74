#include "minigpt4/io/file_util.h"

#include "minigpt4/common/error.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace minigpt4::io {

namespace {

// Closes a descriptor on every path out of MappedFile::open (the mapping does not need it).
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path, std::strerror(errno));
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail("cannot stat {}: {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{} is not a regular file", path);
  const auto size = static_cast<size_t>(st.st_size);
  if (size == 0)  // mmap rejects length 0; an empty mapping is still a valid (empty) file
    return std::shared_ptr<MappedFile>(new MappedFile(path, nullptr, 0));

  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED && errno == ENOMEM) {
    // Under strict overcommit accounting a writable private mapping of a multi-GB file
    // can be refused; skipping the reservation keeps loading possible (only pages a
    // caller actually writes ever need memory).
    p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  }
  if (p == MAP_FAILED) fail("cannot memory-map {} ({} bytes): {}", path, size, std::strerror(errno));
  return std::shared_ptr<MappedFile>(new MappedFile(path, static_cast<uint8_t*>(p), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

at::Tensor MappedFile::bytes(size_t offset, size_t nbytes) {
  TORCH_INTERNAL_ASSERT(offset <= size_ && nbytes <= size_ - offset);
  // The deleter owns a reference to the mapping: the tensor (and every view of it) keeps
  // the file mapped; nothing is freed through the pointer itself.
  auto keep_alive = shared_from_this();
  uint8_t* p = data_ == nullptr ? nullptr : data_ + offset;
  return torch::from_blob(
      p, {static_cast<int64_t>(nbytes)}, [keep_alive](void*) {}, torch::TensorOptions().dtype(torch::kUInt8));
}

AtomicWriter::AtomicWriter(std::string path)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (file_ == nullptr) fail("cannot create {}: {}", tmp_path_, std::strerror(errno));
}

AtomicWriter::~AtomicWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void AtomicWriter::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, file_) != n)
    fail("cannot write {} (writing {}): {}", path_, tmp_path_, std::strerror(errno));
}

void AtomicWriter::commit() {
  // Flush and fsync before the rename so the new name never points at missing data.
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int saved_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tmp_path_.c_str());
    fail("cannot write {}: {}", path_, std::strerror(flushed ? errno : saved_errno));
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_path_.c_str());
    fail("cannot rename {} to {}: {}", tmp_path_, path_, std::strerror(err));
  }
  sync_parent_folder(path_);
}

void sync_parent_folder(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    fail("saved {}, but cannot open its folder {} to make the rename durable: {}", path, dir, std::strerror(errno));
  const int synced = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (synced != 0 && err != EINVAL && err != ENOTSUP)
    fail("saved {}, but fsync of its folder {} failed: {}", path, dir, std::strerror(err));
}

std::string read_prefix(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path, std::strerror(errno));
  std::string out(n, '\0');
  in.read(out.data(), static_cast<std::streamsize>(n));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

}  // namespace minigpt4::io
