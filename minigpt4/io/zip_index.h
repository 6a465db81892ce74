#pragma once
// The table of contents of a zip archive (a torch.save checkpoint), read from memory and
// checked before a single record is read or inflated: the end records (zip64 too), every
// central directory entry and the local header it points to. A stranger's archive is
// refused, naming the record, when records overlap each other or the central directory,
// when a record lies outside the file, uses encryption or a method other than stored /
// deflated, or is named twice; so sizes can be trusted (and checked against what the caller
// needs) before anything is allocated for them.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace minigpt4::io {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0: stored, 8: deflated
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t header_offset = 0;  // its local file header
  uint64_t data_offset = 0;    // the first byte of its (compressed) data
  bool stored() const { return method == 0; }
};

class ZipIndex {
 public:
  // `source` names the archive in errors (minigpt4::Error). At most `max_entries` records.
  ZipIndex(const uint8_t* data, uint64_t size, const std::string& source, uint64_t max_entries);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  // The entry named exactly `name`, or nullptr.
  const ZipEntry* find(const std::string& name) const;

 private:
  std::vector<ZipEntry> entries_;  // in central directory order
  std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace minigpt4::io
