#include "minigpt4/io/safetensors.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/file_util.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <vector>

// The format stores little-endian bytes that we hand to tensors unchanged.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace minigpt4::io {

namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, which also stops
// a corrupt length field from making us allocate or scan gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct Dtype {
  const char* name;
  at::ScalarType type;
};

constexpr Dtype kDtypes[] = {
    {"F64", at::kDouble},   {"F32", at::kFloat},         {"F16", at::kHalf},
    {"BF16", at::kBFloat16}, {"I64", at::kLong},          {"I32", at::kInt},
    {"I16", at::kShort},    {"I8", at::kChar},           {"U8", at::kByte},
    {"BOOL", at::kBool},    {"U16", at::kUInt16},        {"U32", at::kUInt32},
    {"U64", at::kUInt64},   {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
};

const Dtype* dtype_named(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const Dtype* dtype_of(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the start of the data section
};

struct Header {
  std::vector<Entry> tensors;
  std::map<std::string, std::string> metadata;
};

uint64_t read_le64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);  // little-endian host (static_assert above)
  return v;
}

// The header length from the 8-byte prefix, checked against the file size.
uint64_t header_length(const std::string& path, const void* prefix, uint64_t file_size) {
  if (file_size < 8)
    fail("{}: {} bytes is too short to be a safetensors file (no 8-byte header length)", path,
         file_size);
  const uint64_t n = read_le64(prefix);
  if (n > file_size - 8)
    fail("{}: safetensors header length {} exceeds the file size ({} bytes): truncated or not a "
         "safetensors file",
         path, n, file_size);
  if (n > kMaxHeaderBytes)
    fail("{}: safetensors header length {} is larger than the {}-byte limit", path, n,
         kMaxHeaderBytes);
  if (n < 2) fail("{}: safetensors header length {} is too small for a JSON object", path, n);
  return n;
}

uint64_t unsigned_field(const std::string& path, const std::string& name, const json& v,
                        const char* what) {
  if (!v.is_number_unsigned())
    fail("{}: tensor '{}': {} must be non-negative integers, found {}", path, name, what, v.dump());
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& path, const std::string& name, const json& info,
                  uint64_t data_size) {
  if (!info.is_object()) fail("{}: tensor '{}': header entry is not a JSON object", path, name);
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!info.contains(key)) fail("{}: tensor '{}': header entry has no \"{}\"", path, name, key);
  Entry e;
  e.name = name;

  const json& dtype = info["dtype"];
  const Dtype* d = dtype.is_string() ? dtype_named(dtype.get<std::string>()) : nullptr;
  if (d == nullptr) fail("{}: tensor '{}': unknown dtype {}", path, name, dtype.dump());
  e.dtype = d->type;

  const json& shape = info["shape"];
  if (!shape.is_array()) fail("{}: tensor '{}': shape is not an array", path, name);
  uint64_t numel = 1;
  for (const json& dim : shape) {
    const uint64_t n = unsigned_field(path, name, dim, "shape dimensions");
    if (n > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel))
      fail("{}: tensor '{}': shape {} overflows", path, name, shape.dump());
    e.shape.push_back(static_cast<int64_t>(n));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, c10::elementSize(e.dtype), &nbytes))
    fail("{}: tensor '{}': shape {} overflows", path, name, shape.dump());

  const json& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail("{}: tensor '{}': data_offsets must be [begin, end], found {}", path, name, offsets.dump());
  e.begin = unsigned_field(path, name, offsets[0], "data_offsets");
  e.end = unsigned_field(path, name, offsets[1], "data_offsets");
  if (e.begin > e.end || e.end > data_size)
    fail("{}: tensor '{}': data_offsets [{}, {}] lie outside the {}-byte data section (file "
         "truncated or header corrupt)",
         path, name, e.begin, e.end, data_size);
  if (e.end - e.begin != nbytes)
    fail("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} {} needs {}", path, name,
         e.begin, e.end, e.end - e.begin, d->name, shape.dump(), nbytes);
  return e;
}

// Parses and validates the JSON header; `data_size` is the size of what follows it.
Header parse_header(const std::string& path, std::string_view text, uint64_t data_size) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", path, e.what());
  }
  if (!root.is_object()) fail("{}: safetensors header is not a JSON object", path);

  Header h;
  for (const auto& [name, info] : root.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail("{}: __metadata__ is not a JSON object", path);
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string())
          fail("{}: __metadata__ value of '{}' is not a string: {}", path, key, value.dump());
        h.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(path, name, info, data_size));
  }
  return h;
}

}  // namespace

StateDict load_safetensors(const std::string& path) {
  auto file = MappedFile::open(path);
  const uint64_t n = header_length(path, file->data(), file->size());
  const char* text = reinterpret_cast<const char*>(file->data()) + 8;
  const uint64_t data_start = 8 + n;
  const Header header = parse_header(path, {text, n}, file->size() - data_start);

  StateDict out;
  for (const Entry& e : header.tensors) {
    at::Tensor bytes = file->bytes(data_start + e.begin, e.end - e.begin);
    // Writers pad so every tensor is aligned to its element size; for one that did not,
    // copy into freshly allocated (aligned) memory rather than hand out a misaligned pointer.
    const auto address = reinterpret_cast<uintptr_t>(file->data()) + data_start + e.begin;
    if (address % c10::elementSize(e.dtype) != 0) bytes = bytes.clone();
    out[e.name] = bytes.view(e.dtype).view(e.shape);
  }
  return out;
}

std::map<std::string, std::string> load_safetensors_metadata(const std::string& path) {
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(path, ec);
  if (ec) fail("cannot read {}: {}", path, ec.message());
  const std::string prefix = read_prefix(path, 8);
  const uint64_t n = header_length(path, prefix.data(), file_size);  // checks size >= 8 first
  const std::string head = read_prefix(path, 8 + n);
  if (head.size() != 8 + n) fail("{}: file shrank while reading its safetensors header", path);
  return parse_header(path, std::string_view(head).substr(8), file_size - 8 - n).metadata;
}

void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    const at::Tensor* tensor;
    const Dtype* dtype;
  };
  std::vector<Item> items;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      fail("cannot save {}: '{}' is not a valid safetensors tensor name", path, name);
    if (!t.defined()) fail("cannot save {}: tensor '{}' is undefined", path, name);
    const Dtype* d = dtype_of(t.scalar_type());
    if (d == nullptr)
      fail("cannot save {}: tensor '{}' has dtype {}, which safetensors cannot store", path, name,
           c10::toString(t.scalar_type()));
    items.push_back({&name, &t, d});
  }
  // Widest elements first (names stay sorted within a width): with the header padded to
  // 8 bytes every tensor then starts at a multiple of its element size, so readers can map
  // it without copying.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return c10::elementSize(a.dtype->type) > c10::elementSize(b.dtype->type);
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Item& it : items) {
    const uint64_t nbytes = it.tensor->nbytes();
    header[*it.name] = {{"dtype", it.dtype->name},
                        {"shape", it.tensor->sizes().vec()},
                        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicWriter out(path);
  const uint64_t n = text.size();
  out.write(&n, sizeof n);
  out.write(text.data(), text.size());
  for (const Item& it : items) {
    // One tensor at a time on the CPU, so saving a GPU model never needs a second full copy.
    const at::Tensor t = it.tensor->cpu().contiguous();
    out.write(t.data_ptr(), t.nbytes());
  }
  out.commit();
}

}  // namespace minigpt4::io
