#pragma once
// Builders for the data-pipeline tests: a scratch directory, small encoded images, and
// webdataset tars written with libarchive (pax, as `tar` and webdataset's TarWriter make).
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4::test {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed with everything in it at the end.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& relative, const std::string& bytes) const;  // makes parent dirs

 private:
  fs::path path_;
};

std::string read_bytes(const fs::path& path);

// An h x w picture whose pixels depend on `seed`, encoded by OpenCV (".png" or ".jpg").
std::string encoded_image(const std::string& ext, int h, int w, int seed);

// (name in the tar, bytes) entries, in order.
using TarEntries = std::vector<std::pair<std::string, std::string>>;
void write_tar(const fs::path& path, const TarEntries& entries, bool gzip = false);

}  // namespace minigpt4::test
