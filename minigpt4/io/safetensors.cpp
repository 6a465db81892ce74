#include "minigpt4/io/safetensors.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/file_util.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <unordered_set>
#include <vector>

// The format stores little-endian bytes that we hand to tensors unchanged.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace minigpt4::io {

namespace {

using nlohmann::json;

struct Dtype {
  const char* name;
  at::ScalarType type;
};

constexpr Dtype kDtypes[] = {
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
    {"U16", at::kUInt16},
    {"U32", at::kUInt32},
    {"U64", at::kUInt64},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
};

// PyTorch's own limit on dimensions; a header naming more is not a tensor we could make.
constexpr size_t kMaxDims = 64;

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
  const Dtype* dtype = nullptr;
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

// The header length from the 8-byte prefix, checked against the file size and
// limits.max_safetensors_header_bytes (the format's own cap is 100 MB).
uint64_t header_length(const std::string& path, const void* prefix, uint64_t file_size) {
  if (file_size < 8)
    fail("{}: {} bytes is too short to be a safetensors file (no 8-byte header length)", path, file_size);
  const uint64_t n = read_le64(prefix);
  const auto limit = static_cast<uint64_t>(input_limits().max_safetensors_header_bytes);
  if (n > file_size - 8)
    fail(
        "{}: safetensors header length {} exceeds the file size ({} bytes): truncated or not a "
        "safetensors file",
        path, n, file_size);
  if (n > limit)
    fail("{}: safetensors header length {} is larger than the {}-byte limit (limits.max_safetensors_header_bytes)",
         path, n, limit);
  if (n < 2) fail("{}: safetensors header length {} is too small for a JSON object", path, n);
  return n;
}

// Reads the header JSON as a stream of events straight into entries: no JSON tree is built
// (a 100 MB header of a million empty tensors would take gigabytes as one), the number of
// tensors is checked as each one starts (limits.max_tensors_per_file), nesting is what the
// format allows and no deeper, and a key given twice (which a JSON tree would silently keep
// the last of) is an error.
class HeaderReader final : public json::json_sax_t {
 public:
  HeaderReader(const std::string& path, Header& out)
      : path_(path), out_(out), max_tensors_(static_cast<size_t>(input_limits().max_tensors_per_file)) {}

  bool null() override { return scalar("null"); }
  bool boolean(bool v) override { return scalar(v ? "true" : "false"); }
  bool number_integer(number_integer_t v) override { return scalar(std::to_string(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    if (where_ == Where::Shape) {
      if (entry().shape.size() >= kMaxDims)
        fail("{}: tensor '{}': shape has more than {} dimensions", path_, excerpt(entry().name), kMaxDims);
      if (v > static_cast<uint64_t>(INT64_MAX))
        fail("{}: tensor '{}': shape dimension {} overflows", path_, excerpt(entry().name), v);
      entry().shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (where_ == Where::Offsets) {
      if (offsets_seen_ >= 2) fail("{}: tensor '{}': data_offsets must be [begin, end]", path_, excerpt(entry().name));
      (offsets_seen_++ == 0 ? entry().begin : entry().end) = v;
      return true;
    }
    return scalar(std::to_string(v));
  }
  bool number_float(number_float_t, const string_t& text) override { return scalar(excerpt(text)); }
  bool binary(binary_t&) override { return scalar("binary data"); }
  bool string(string_t& v) override {
    if (where_ == Where::Metadata) {
      out_.metadata[key_] = std::move(v);
      return true;
    }
    if (where_ == Where::Entry && field_ == Field::Dtype) {
      entry().dtype = dtype_named(v);
      if (entry().dtype == nullptr)
        fail("{}: tensor '{}': unknown dtype \"{}\"", path_, excerpt(entry().name), excerpt(v));
      return true;
    }
    return scalar("\"" + excerpt(v) + "\"");
  }

  bool start_object(std::size_t) override {
    switch (where_) {
      case Where::Start: where_ = Where::Root; return true;
      case Where::Root:
        if (key_ == "__metadata__") {
          if (metadata_seen_) fail("{}: the header has two \"__metadata__\" objects", path_);
          metadata_seen_ = true;
          where_ = Where::Metadata;
        } else {
          where_ = Where::Entry;
          fields_ = 0;
        }
        return true;
      case Where::Entry: return skip_nested("an object");
      case Where::Skip: ++skip_depth_; return check_skip_depth();
      default: return nested("an object");
    }
  }
  bool end_object() override {
    switch (where_) {
      case Where::Root: where_ = Where::Done; return true;
      case Where::Metadata: where_ = Where::Root; return true;
      case Where::Entry: {
        for (const auto& [bit, name] : {std::pair{kDtype, "dtype"}, {kShape, "shape"}, {kOffsets, "data_offsets"}})
          if (!(fields_ & bit)) fail("{}: tensor '{}': header entry has no \"{}\"", path_, excerpt(entry().name), name);
        where_ = Where::Root;
        return true;
      }
      case Where::Skip: return end_skip();
      default: return true;
    }
  }
  bool start_array(std::size_t) override {
    if (where_ == Where::Entry && field_ == Field::Shape) {
      where_ = Where::Shape;
      return true;
    }
    if (where_ == Where::Entry && field_ == Field::Offsets) {
      where_ = Where::Offsets;
      offsets_seen_ = 0;
      return true;
    }
    if (where_ == Where::Entry) return skip_nested("an array");
    if (where_ == Where::Skip) {
      ++skip_depth_;
      return check_skip_depth();
    }
    return nested("an array");
  }
  bool end_array() override {
    if (where_ == Where::Offsets && offsets_seen_ != 2)
      fail("{}: tensor '{}': data_offsets must be [begin, end]", path_, excerpt(entry().name));
    if (where_ == Where::Shape || where_ == Where::Offsets) {
      where_ = Where::Entry;
      return true;
    }
    if (where_ == Where::Skip) return end_skip();
    return true;
  }
  bool key(string_t& k) override {
    if (where_ == Where::Root) {
      if (!names_.insert(k).second)
        fail("{}: the header names '{}' twice (a JSON reader would keep only the last)", path_, excerpt(k));
      if (k != "__metadata__") {
        if (out_.tensors.size() >= max_tensors_)
          fail("{}: the header names more than {} tensors (limits.max_tensors_per_file)", path_, max_tensors_);
        out_.tensors.emplace_back();
        out_.tensors.back().name = k;
      }
      key_ = std::move(k);
      return true;
    }
    if (where_ == Where::Metadata) {
      if (out_.metadata.count(k)) fail("{}: __metadata__ names '{}' twice", path_, excerpt(k));
      key_ = std::move(k);
      return true;
    }
    if (where_ == Where::Entry) {
      const unsigned bit = k == "dtype" ? kDtype : k == "shape" ? kShape : k == "data_offsets" ? kOffsets : 0;
      field_ = bit == kDtype     ? Field::Dtype
               : bit == kShape   ? Field::Shape
               : bit == kOffsets ? Field::Offsets
                                 : Field::Other;
      if (bit && (fields_ & bit))
        fail("{}: tensor '{}': header entry gives \"{}\" twice", path_, excerpt(entry().name), excerpt(k));
      fields_ |= bit;
      return true;
    }
    return true;  // inside a skipped value
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) override {
    fail("{}: safetensors header is not valid JSON (at byte {} of the header): {}", path_, position,
         excerpt(e.what(), 200));
  }

 private:
  enum class Where { Start, Root, Metadata, Entry, Shape, Offsets, Skip, Done };
  enum class Field { Dtype, Shape, Offsets, Other };
  static constexpr unsigned kDtype = 1, kShape = 2, kOffsets = 4;

  Entry& entry() { return out_.tensors.back(); }

  // A scalar (described by `text`) where the format wants something else, or a value of a
  // field we do not read.
  bool scalar(const std::string& text) {
    switch (where_) {
      case Where::Start: fail("{}: safetensors header is not a JSON object (it is {})", path_, text);
      case Where::Root:
        if (key_ == "__metadata__") fail("{}: __metadata__ is not a JSON object", path_);
        fail("{}: tensor '{}': header entry is not a JSON object", path_, excerpt(entry().name));
      case Where::Metadata: fail("{}: __metadata__ value of '{}' is not a string: {}", path_, excerpt(key_), text);
      case Where::Entry:
        if (field_ == Field::Dtype) fail("{}: tensor '{}': unknown dtype {}", path_, excerpt(entry().name), text);
        if (field_ == Field::Shape) fail("{}: tensor '{}': shape is not an array", path_, excerpt(entry().name));
        if (field_ == Field::Offsets)
          fail("{}: tensor '{}': data_offsets must be [begin, end], found {}", path_, excerpt(entry().name), text);
        return true;  // an extra field: ignored, as the reference implementation does
      case Where::Shape:
        fail("{}: tensor '{}': shape dimensions must be non-negative integers, found {}", path_, excerpt(entry().name),
             text);
      case Where::Offsets:
        fail("{}: tensor '{}': data_offsets must be non-negative integers, found {}", path_, excerpt(entry().name),
             text);
      default: return true;
    }
  }
  // An object or array where the format has none.
  bool nested(const char* what) {
    switch (where_) {
      case Where::Start: fail("{}: safetensors header is not a JSON object (it is {})", path_, what);
      case Where::Root:
        if (key_ == "__metadata__") fail("{}: __metadata__ is not a JSON object", path_);
        fail("{}: tensor '{}': header entry is not a JSON object", path_, excerpt(entry().name));
      case Where::Metadata: fail("{}: __metadata__ value of '{}' is not a string: {}", path_, excerpt(key_), what);
      case Where::Entry:
        if (field_ == Field::Dtype) fail("{}: tensor '{}': unknown dtype {}", path_, excerpt(entry().name), what);
        if (field_ == Field::Shape) fail("{}: tensor '{}': shape is not an array", path_, excerpt(entry().name));
        fail("{}: tensor '{}': data_offsets must be [begin, end], found {}", path_, excerpt(entry().name), what);
      case Where::Shape:
        fail("{}: tensor '{}': shape dimensions must be non-negative integers, found {}", path_, excerpt(entry().name),
             what);
      case Where::Offsets:
        fail("{}: tensor '{}': data_offsets must be non-negative integers, found {}", path_, excerpt(entry().name),
             what);
      default: fail("{}: safetensors header has {} where none belongs", path_, what);
    }
  }
  // The value of a field we do not read (ignored, as the reference implementation does),
  // nested at most limits.max_json_depth deep.
  bool skip_nested(const char* what) {
    if (field_ != Field::Other) return nested(what);
    where_ = Where::Skip;
    skip_depth_ = 1;
    return true;
  }
  bool end_skip() {
    if (--skip_depth_ == 0) where_ = Where::Entry;
    return true;
  }
  bool check_skip_depth() {
    if (skip_depth_ > static_cast<uint64_t>(input_limits().max_json_depth))
      fail("{}: tensor '{}': an extra field nests deeper than {} levels (limits.max_json_depth)", path_,
           excerpt(entry().name), input_limits().max_json_depth);
    return true;
  }

  const std::string& path_;
  Header& out_;
  const size_t max_tensors_;
  Where where_ = Where::Start;
  Field field_ = Field::Other;
  unsigned fields_ = 0;
  std::string key_;
  std::unordered_set<std::string> names_;
  bool metadata_seen_ = false;
  int offsets_seen_ = 0;
  uint64_t skip_depth_ = 0;
};

// Checks one entry's shape, dtype and offsets against each other and the data section.
void check_entry(const std::string& path, const Entry& e, uint64_t data_size) {
  const std::string name = excerpt(e.name);
  uint64_t numel = 1;
  for (const int64_t dim : e.shape)
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel))
      fail("{}: tensor '{}': shape [{}] overflows", path, name, fmt::join(e.shape, ", "));
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, c10::elementSize(e.dtype->type), &nbytes))
    fail("{}: tensor '{}': shape [{}] overflows", path, name, fmt::join(e.shape, ", "));
  if (e.begin > e.end || e.end > data_size)
    fail(
        "{}: tensor '{}': data_offsets [{}, {}] lie outside the {}-byte data section (file "
        "truncated or header corrupt)",
        path, name, e.begin, e.end, data_size);
  if (e.end - e.begin != nbytes)
    fail("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} [{}] needs {}", path, name, e.begin, e.end,
         e.end - e.begin, e.dtype->name, fmt::join(e.shape, ", "), nbytes);
}

// Parses and validates the header; `data_size` is the size of what follows it. No two
// tensors may share bytes (each would see the other's writes, and the reference
// implementation refuses it too).
Header parse_header(const std::string& path, std::string_view text, uint64_t data_size) {
  Header h;
  HeaderReader reader(path, h);
  json::sax_parse(text.begin(), text.end(), &reader);
  for (const Entry& e : h.tensors) check_entry(path, e, data_size);
  std::vector<const Entry*> by_offset;
  for (const Entry& e : h.tensors)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 0; i + 1 < by_offset.size(); ++i)
    if (by_offset[i]->end > by_offset[i + 1]->begin)
      fail("{}: tensors '{}' (bytes {}-{}) and '{}' (bytes {}-{}) overlap in the data section", path,
           excerpt(by_offset[i]->name), by_offset[i]->begin, by_offset[i]->end, excerpt(by_offset[i + 1]->name),
           by_offset[i + 1]->begin, by_offset[i + 1]->end);
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
    if (address % c10::elementSize(e.dtype->type) != 0) bytes = bytes.clone();
    out[e.name] = bytes.view(e.dtype->type).view(e.shape);
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
    header[*it.name] = {
        {"dtype", it.dtype->name}, {"shape", it.tensor->sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
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
