#include "minigpt4/io/zip_index.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

#include <algorithm>
#include <cstring>
#include <string_view>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the zip reader assumes a little-endian host");

namespace minigpt4::io {

namespace {

// Record layouts from PKWARE's APPNOTE.TXT (4.3.7 local header, 4.3.12 central directory
// header, 4.3.14-16 zip64 end records and the end of central directory record).
constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50, kEnd64Sig = 0x06064b50,
                   kLocator64Sig = 0x07064b50;
constexpr uint64_t kLocalSize = 30, kCentralSize = 46, kEndSize = 22, kEnd64Size = 56, kLocator64Size = 20;

template <typename T>
T le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// [offset, offset + n) lies inside [0, size).
bool inside(uint64_t offset, uint64_t n, uint64_t size) { return offset <= size && n <= size - offset; }

}  // namespace

ZipIndex::ZipIndex(const uint8_t* data, uint64_t size, const std::string& source, uint64_t max_entries) {
  auto bad = [&](const std::string& what) { fail("{}: corrupt zip archive: {}", source, what); };

  // The end of central directory record: the last "PK\5\6" whose comment ends inside the file.
  if (size < kEndSize) bad(fmt::format("{} bytes is too short for a zip archive", size));
  uint64_t end = size - kEndSize;
  const uint64_t lowest = size - kEndSize > 0xffff ? size - kEndSize - 0xffff : 0;
  while (true) {
    if (le<uint32_t>(data + end) == kEndSig && le<uint16_t>(data + end + 20) <= size - kEndSize - end) break;
    if (end == lowest) bad("no end of central directory record (truncated, or not a zip file)");
    --end;
  }
  const uint8_t* e = data + end;
  if (le<uint16_t>(e + 4) != 0 || le<uint16_t>(e + 6) != 0) bad("multi-disk (spanned) archives are not supported");
  uint64_t count = le<uint16_t>(e + 10), cd_size = le<uint32_t>(e + 12), cd_offset = le<uint32_t>(e + 16);
  uint64_t cd_limit = end;  // the central directory ends before the end records
  // Zip64: a locator right before the end record points at the zip64 end record.
  if (end >= kLocator64Size && le<uint32_t>(data + end - kLocator64Size) == kLocator64Sig) {
    const uint8_t* loc = data + end - kLocator64Size;
    const uint64_t e64 = le<uint64_t>(loc + 8);
    if (!inside(e64, kEnd64Size, end - kLocator64Size) || le<uint32_t>(data + e64) != kEnd64Sig)
      bad("the zip64 end record the locator points at is missing or out of place");
    const uint8_t* z = data + e64;
    if (le<uint32_t>(z + 16) != 0 || le<uint32_t>(z + 20) != 0) bad("multi-disk (spanned) archives are not supported");
    count = le<uint64_t>(z + 32);
    cd_size = le<uint64_t>(z + 40);
    cd_offset = le<uint64_t>(z + 48);
    cd_limit = e64;
  } else if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    bad("the end record defers to a zip64 end record that is not there");
  }
  if (!inside(cd_offset, cd_size, cd_limit))
    bad(
        fmt::format("the central directory (offset {}, {} bytes) lies outside the file's {} bytes before its end "
                    "records",
                    cd_offset, cd_size, cd_limit));
  if (count > cd_size / kCentralSize)
    bad(fmt::format("the end record claims {} entries, more than a {}-byte central directory holds", count, cd_size));
  if (count > max_entries)
    fail("{}: the zip archive has {} records, more than the {} a checkpoint may have (limits.max_tensors_per_file)",
         source, count, max_entries);
  if (count == 0) bad("the archive holds no records");

  entries_.reserve(count);
  uint64_t at = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (!inside(at, kCentralSize, cd_end) || le<uint32_t>(data + at) != kCentralSig)
      bad(fmt::format("central directory entry {} is missing or malformed", i));
    const uint8_t* c = data + at;
    const uint16_t flags = le<uint16_t>(c + 8);
    ZipEntry z;
    z.method = le<uint16_t>(c + 10);
    z.compressed_size = le<uint32_t>(c + 20);
    z.uncompressed_size = le<uint32_t>(c + 24);
    const uint64_t name_len = le<uint16_t>(c + 28), extra_len = le<uint16_t>(c + 30),
                   comment_len = le<uint16_t>(c + 32);
    const uint16_t disk = le<uint16_t>(c + 34);
    z.header_offset = le<uint32_t>(c + 42);
    if (!inside(at + kCentralSize, name_len + extra_len + comment_len, cd_end))
      bad(fmt::format("central directory entry {} runs past the end of the directory", i));
    z.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    const std::string quoted = excerpt(z.name, 100);
    if (z.name.empty() || z.name.find('\0') != std::string::npos)
      bad(fmt::format("central directory entry {} has an empty name or one holding a NUL byte", i));
    // Zip64 extended information (extra field 0x0001): the 64-bit values of the fields set
    // to 0xffffffff, in this order.
    const uint8_t* extra = c + kCentralSize + name_len;
    for (uint64_t x = 0; x + 4 <= extra_len;) {
      const uint16_t id = le<uint16_t>(extra + x), n = le<uint16_t>(extra + x + 2);
      if (x + 4 + n > extra_len) bad(fmt::format("record '{}' has a malformed extra field", quoted));
      if (id == 0x0001) {
        const uint8_t* p = extra + x + 4;
        uint64_t left = n;
        for (uint64_t* field : {&z.uncompressed_size, &z.compressed_size, &z.header_offset}) {
          if (*field != 0xffffffff) continue;
          if (left < 8) bad(fmt::format("record '{}' has a truncated zip64 extra field", quoted));
          *field = le<uint64_t>(p);
          p += 8;
          left -= 8;
        }
      }
      x += 4 + n;
    }
    if (disk != 0 && disk != 0xffff) bad(fmt::format("record '{}' lies on another disk (spanned archive)", quoted));
    if (flags & 0x1) fail("{}: zip record '{}' is encrypted, which a checkpoint never is", source, quoted);
    if (z.method != 0 && z.method != 8)
      fail("{}: zip record '{}' uses compression method {}; only stored (0) and deflated (8) are supported", source,
           quoted, z.method);
    if (z.stored() && z.compressed_size != z.uncompressed_size)
      bad(fmt::format("stored record '{}' claims {} bytes stored but {} bytes of content", quoted, z.compressed_size,
                      z.uncompressed_size));

    // The local header it points at: same name and method, and its data before the directory.
    if (!inside(z.header_offset, kLocalSize, cd_offset) || le<uint32_t>(data + z.header_offset) != kLocalSig)
      bad(
          fmt::format("record '{}' points at offset {}, where there is no local file header before the central "
                      "directory",
                      quoted, z.header_offset));
    const uint8_t* l = data + z.header_offset;
    const uint64_t local_name = le<uint16_t>(l + 26), local_extra = le<uint16_t>(l + 28);
    if (le<uint16_t>(l + 8) != z.method)
      bad(fmt::format("record '{}' has compression method {} in its local header but {} in the central directory",
                      quoted, le<uint16_t>(l + 8), z.method));
    if (local_name != name_len || !inside(z.header_offset + kLocalSize, local_name, cd_offset) ||
        std::memcmp(l + kLocalSize, z.name.data(), name_len) != 0)
      bad(fmt::format("record '{}' has another name in its local header", quoted));
    z.data_offset = z.header_offset + kLocalSize + local_name + local_extra;
    if (!inside(z.data_offset, z.compressed_size, cd_offset))
      bad(fmt::format("record '{}' ({} bytes at offset {}) runs past the start of the central directory (offset {})",
                      quoted, z.compressed_size, z.data_offset, cd_offset));
    if (!by_name_.emplace(z.name, entries_.size()).second)
      fail("{}: zip record '{}' appears twice in the central directory", source, quoted);
    entries_.push_back(std::move(z));
    at += kCentralSize + name_len + extra_len + comment_len;
  }

  // No two records may share bytes: each one's header and data end before the next begins.
  std::vector<const ZipEntry*> by_offset;
  by_offset.reserve(entries_.size());
  for (const auto& z : entries_) by_offset.push_back(&z);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const ZipEntry* a, const ZipEntry* b) { return a->header_offset < b->header_offset; });
  for (size_t i = 0; i + 1 < by_offset.size(); ++i) {
    const ZipEntry& a = *by_offset[i];
    const ZipEntry& b = *by_offset[i + 1];
    const uint64_t a_end = a.data_offset + a.compressed_size;
    if (a_end > b.header_offset)
      fail(
          "{}: zip records '{}' (bytes {}-{}) and '{}' (from byte {}) overlap; a stranger's archive may not reuse "
          "bytes",
          source, excerpt(a.name, 100), a.header_offset, a_end, excerpt(b.name, 100), b.header_offset);
  }
}

const ZipEntry* ZipIndex::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

}  // namespace minigpt4::io
