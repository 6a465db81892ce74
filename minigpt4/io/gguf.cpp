#include "minigpt4/io/gguf.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/file_util.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <limits>
#include <set>

namespace minigpt4::io {

namespace {

// Blocks along ne[0]: inputs per block and bytes per block.
struct Layout {
  int64_t block, bytes;
};

bool layout_of(uint32_t type, Layout& out) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: out = {1, 4}; return true;
    case GgmlType::F16:
    case GgmlType::BF16: out = {1, 2}; return true;
    case GgmlType::Q4_0: out = {32, 18}; return true;    // fp16 d, 16 bytes of nibbles
    case GgmlType::Q4_1: out = {32, 20}; return true;    // fp16 d, fp16 m, 16 bytes of nibbles
    case GgmlType::Q8_0: out = {32, 34}; return true;    // fp16 d, 32 int8
    case GgmlType::Q4_K: out = {256, 144}; return true;  // fp16 d, fp16 dmin, 12 bytes of 6-bit scales, 128 of nibbles
  }
  return false;
}

float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Reads the header front to back; every read is checked against the end of the file.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, std::string path) : data_(data), size_(size), path_(std::move(path)) {}

  size_t position() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string string(const char* what, uint64_t max_length) {
    const auto length = read<uint64_t>(what);
    if (length > max_length) fail("{}: {} is {} bytes long, more than the {} allowed", path_, what, length, max_length);
    need(length, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(length));
    pos_ += static_cast<size_t>(length);
    return s;
  }

  [[noreturn]] void truncated(const char* what) const {
    fail("{}: the file ends inside its header (reading {} at byte {} of {}): truncated or not a GGUF file", path_, what,
         pos_, size_);
  }

 private:
  void need(uint64_t n, const char* what) const {
    if (n > remaining()) truncated(what);
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string path_;
};

enum ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

constexpr uint64_t kMaxKeyLength = 1 << 16;
// Metadata array elements in all, across the file: each becomes a JSON value of ~16 bytes, so a
// byte array as long as the file would take 16 times its size. Real files hold vocabularies
// and merge lists of at most a few hundred thousand.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 24;

nlohmann::json read_value(Cursor& in, uint32_t type, const std::string& key, const std::string& path, int depth,
                          uint64_t& elements) {
  switch (type) {
    case kU8: return in.read<uint8_t>("a u8 value");
    case kI8: return in.read<int8_t>("an i8 value");
    case kU16: return in.read<uint16_t>("a u16 value");
    case kI16: return in.read<int16_t>("an i16 value");
    case kU32: return in.read<uint32_t>("a u32 value");
    case kI32: return in.read<int32_t>("an i32 value");
    case kF32: return in.read<float>("an f32 value");
    case kBool: {
      const auto b = in.read<uint8_t>("a bool value");
      if (b > 1) fail("{}: metadata '{}' is a bool holding {}", path, excerpt(key, 80), b);
      return b == 1;
    }
    case kString: return in.string("a string value", in.remaining());
    case kU64: return in.read<uint64_t>("a u64 value");
    case kI64: return in.read<int64_t>("an i64 value");
    case kF64: return in.read<double>("an f64 value");
    case kArray: {
      if (depth > 2) fail("{}: metadata '{}' nests arrays more than 3 deep", path, excerpt(key, 80));
      const auto element = in.read<uint32_t>("an array's element type");
      const auto count = in.read<uint64_t>("an array's length");
      // Every element takes at least one byte: a longer count cannot fit in the file.
      if (count > in.remaining())
        fail("{}: metadata '{}' claims {} elements, more than the file could hold", path, excerpt(key, 80), count);
      elements += count;
      if (elements > kMaxArrayElements)
        fail("{}: metadata '{}' brings the file's array elements past {}, more than this reader holds", path,
             excerpt(key, 80), kMaxArrayElements);
      auto out = nlohmann::json::array();
      for (uint64_t i = 0; i < count; ++i) out.push_back(read_value(in, element, key, path, depth + 1, elements));
      return out;
    }
    default: fail("{}: metadata '{}' has unknown value type {}", path, excerpt(key, 80), type);
  }
}

}  // namespace

std::string ggml_type_name(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return "f32";
    case GgmlType::F16: return "f16";
    case GgmlType::BF16: return "bf16";
    case GgmlType::Q4_0: return "q4_0";
    case GgmlType::Q4_1: return "q4_1";
    case GgmlType::Q8_0: return "q8_0";
    case GgmlType::Q4_K: return "q4_K";
  }
  return "type " + std::to_string(type);
}

const GgufTensor* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const nlohmann::json& GgufFile::at(const std::string& key) const {
  const auto it = metadata.find(key);
  if (it == metadata.end()) fail("{}: the GGUF metadata has no '{}'", path, key);
  return *it;
}

GgufFile read_gguf(const std::string& path) {
  GgufFile g;
  g.path = path;
  g.file = MappedFile::open(path);
  Cursor in(g.file->data(), g.file->size(), path);
  if (g.file->size() < 4 || std::memcmp(g.file->data(), "GGUF", 4) != 0)
    fail("{}: not a GGUF file (it does not start with 'GGUF')", path);
  in.read<uint32_t>("the magic");
  g.version = in.read<uint32_t>("the version");
  if (g.version != 2 && g.version != 3)
    fail("{}: GGUF version {} (this reader knows versions 2 and 3; a big-endian file also reads as another version)",
         path, g.version);
  const auto tensor_count = in.read<uint64_t>("the tensor count");
  const auto kv_count = in.read<uint64_t>("the metadata count");
  // Each metadata entry and tensor info takes well over 8 bytes.
  if (tensor_count > in.remaining() / 8 || kv_count > in.remaining() / 8)
    fail("{}: the header claims {} tensors and {} metadata entries, more than the file could hold", path, tensor_count,
         kv_count);

  uint64_t array_elements = 0;
  for (uint64_t i = 0; i < kv_count; ++i) {
    const auto key = in.string("a metadata key", kMaxKeyLength);
    const auto type = in.read<uint32_t>("a metadata value type");
    if (g.metadata.contains(key)) fail("{}: metadata '{}' appears twice", path, excerpt(key, 80));
    g.metadata[key] = read_value(in, type, key, path, 0, array_elements);
  }

  uint64_t alignment = 32;
  if (const auto it = g.metadata.find("general.alignment"); it != g.metadata.end()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() == 0 || it->get<uint64_t>() > (1u << 20) ||
        (it->get<uint64_t>() & (it->get<uint64_t>() - 1)) != 0)
      fail("{}: general.alignment must be a power of two up to 1 MiB, got {}", path, excerpt(it->dump(), 40));
    alignment = it->get<uint64_t>();
  }

  std::set<std::string> names;
  std::vector<uint64_t> relative_offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor t;
    t.name = in.string("a tensor name", 1024);
    if (!names.insert(t.name).second) fail("{}: tensor '{}' appears twice", path, excerpt(t.name, 80));
    const auto n_dims = in.read<uint32_t>("a tensor's dimension count");
    if (n_dims < 1 || n_dims > 4)
      fail("{}: tensor '{}' has {} dimensions (1 to 4 expected)", path, excerpt(t.name, 80), n_dims);
    std::vector<int64_t> ne(n_dims);
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto n = in.read<uint64_t>("a tensor dimension");
      if (n == 0 || n > (uint64_t{1} << 40) || elements > std::numeric_limits<uint64_t>::max() / n ||
          elements * n > (uint64_t{1} << 42))
        fail("{}: tensor '{}' has a dimension of {} (too large or zero)", path, excerpt(t.name, 80), n);
      elements *= n;
      ne[d] = static_cast<int64_t>(n);
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    t.type = in.read<uint32_t>("a tensor type");
    relative_offsets.push_back(in.read<uint64_t>("a tensor offset"));
    Layout layout{};
    if (!layout_of(t.type, layout))
      fail(
          "{}: tensor '{}' has ggml type {} ({}), which this reader does not know (it reads f32, f16, bf16, q8_0, "
          "q4_0, q4_1, q4_K)",
          path, excerpt(t.name, 80), t.type, ggml_type_name(t.type));
    if (ne[0] % layout.block != 0)
      fail("{}: tensor '{}' is {} with rows of {}, not a whole number of {}-wide blocks", path, excerpt(t.name, 80),
           ggml_type_name(t.type), ne[0], layout.block);
    t.nbytes = elements / static_cast<uint64_t>(layout.block) * static_cast<uint64_t>(layout.bytes);
    g.tensors.push_back(std::move(t));
  }

  const uint64_t data_start = (in.position() + alignment - 1) / alignment * alignment;
  const uint64_t size = g.file->size();
  for (size_t i = 0; i < g.tensors.size(); ++i) {
    auto& t = g.tensors[i];
    const uint64_t rel = relative_offsets[i];
    if (rel % alignment != 0)
      fail("{}: tensor '{}' starts at offset {}, not a multiple of the alignment {}", path, excerpt(t.name, 80), rel,
           alignment);
    if (data_start > size || rel > size - data_start || t.nbytes > size - data_start - rel)
      fail("{}: tensor '{}' ({} bytes at offset {}) lies beyond the end of the file ({} bytes): truncated?", path,
           excerpt(t.name, 80), t.nbytes, data_start + rel, size);
    t.offset = data_start + rel;
  }
  return g;
}

at::Tensor gguf_dequantize(const GgufFile& g, const GgufTensor& t) {
  const auto bytes = g.file->bytes(static_cast<size_t>(t.offset), static_cast<size_t>(t.nbytes));
  switch (static_cast<GgmlType>(t.type)) {
    case GgmlType::F32: return bytes.view(at::kFloat).view(t.shape).clone();
    case GgmlType::F16: return bytes.view(at::kHalf).view(t.shape).to(at::kFloat);
    case GgmlType::BF16: return bytes.view(at::kBFloat16).view(t.shape).to(at::kFloat);
    default: break;
  }
  Layout layout{};
  layout_of(t.type, layout);
  int64_t elements = 1;
  for (const auto d : t.shape) elements *= d;
  auto out = at::empty(t.shape, at::TensorOptions().dtype(at::kFloat));
  float* y = out.data_ptr<float>();
  const uint8_t* p = g.file->data() + t.offset;
  const int64_t blocks = elements / layout.block;
  for (int64_t b = 0; b < blocks; ++b, p += layout.bytes, y += layout.block) {
    switch (static_cast<GgmlType>(t.type)) {
      case GgmlType::Q8_0: {
        const float d = half_at(p);
        const auto* q = reinterpret_cast<const int8_t*>(p + 2);
        for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j]) * d;
        break;
      }
      case GgmlType::Q4_0: {
        const float d = half_at(p);
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>((p[2 + j] & 15) - 8) * d;
          y[j + 16] = static_cast<float>((p[2 + j] >> 4) - 8) * d;
        }
        break;
      }
      case GgmlType::Q4_1: {
        const float d = half_at(p), m = half_at(p + 2);
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>(p[4 + j] & 15) * d + m;
          y[j + 16] = static_cast<float>(p[4 + j] >> 4) * d + m;
        }
        break;
      }
      case GgmlType::Q4_K: {
        // 8 runs of 32 with a 6-bit scale and a 6-bit minimum each (packed in 12 bytes: the
        // first four runs' in the low 6 bits of bytes 0-3 / 4-7, the others' low 4 bits in
        // bytes 8-11 and their top 2 bits in the spare top bits of bytes 0-7); nibbles in
        // chunks of 64 inputs, the low nibbles of 32 bytes first, then the high ones.
        const float d = half_at(p), dmin = half_at(p + 2);
        const uint8_t* s = p + 4;
        const uint8_t* q = p + 16;
        const auto scale_min = [s](int j, int& sc, int& mn) {
          if (j < 4) {
            sc = s[j] & 63;
            mn = s[j + 4] & 63;
          } else {
            sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
          }
        };
        for (int chunk = 0; chunk < 4; ++chunk) {
          int sc1, m1, sc2, m2;
          scale_min(2 * chunk, sc1, m1);
          scale_min(2 * chunk + 1, sc2, m2);
          float* out64 = y + 64 * chunk;
          const uint8_t* q32 = q + 32 * chunk;
          for (int l = 0; l < 32; ++l) {
            out64[l] = d * static_cast<float>(sc1) * static_cast<float>(q32[l] & 15) - dmin * static_cast<float>(m1);
            out64[32 + l] =
                d * static_cast<float>(sc2) * static_cast<float>(q32[l] >> 4) - dmin * static_cast<float>(m2);
          }
        }
        break;
      }
      default: fail("{}: tensor '{}': no dequantiser for {}", g.path, excerpt(t.name, 80), ggml_type_name(t.type));
    }
  }
  return out;
}

GgufGrouped gguf_grouped(const GgufFile& g, const GgufTensor& t) {
  const auto type = static_cast<GgmlType>(t.type);
  if ((type != GgmlType::Q8_0 && type != GgmlType::Q4_0) || t.shape.size() != 2)
    fail("{}: tensor '{}' is {} [{}]; only 2-D q8_0 and q4_0 map onto group-wise storage", g.path, excerpt(t.name, 80),
         ggml_type_name(t.type), fmt::join(t.shape, ", "));
  const int64_t N = t.shape[0], K = t.shape[1], runs = K / 32;
  const bool eight = type == GgmlType::Q8_0;
  const int64_t block_bytes = eight ? 34 : 18, value_bytes = eight ? 32 : 16;
  GgufGrouped out;
  out.values = at::empty({N, eight ? K : K / 2}, at::TensorOptions().dtype(eight ? at::kChar : at::kByte));
  out.scales = at::empty({N, runs}, at::TensorOptions().dtype(at::kHalf));
  auto* values = static_cast<uint8_t*>(out.values.data_ptr());
  auto* scales = static_cast<uint8_t*>(out.scales.data_ptr());
  const uint8_t* p = g.file->data() + t.offset;
  for (int64_t b = 0; b < N * runs; ++b, p += block_bytes) {
    std::memcpy(scales + 2 * b, p, 2);
    std::memcpy(values + value_bytes * b, p + 2, static_cast<size_t>(value_bytes));
  }
  return out;
}

}  // namespace minigpt4::io
