#pragma once
// GGUF, llama.cpp's weight file (versions 2 and 3, little-endian):
//   "GGUF", u32 version, u64 tensor count, u64 metadata count,
//   metadata: {string key, u32 value type, value} (integers, floats, bool, string, arrays),
//   tensor infos: {string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset},
//   padding to `general.alignment` (32), then the tensor data (offsets relative to it).
// A string is a u64 length and its bytes. ne[0] is the innermost dimension: a [N, K] weight
// is stored with ne = {K, N}. Quantised types store blocks along ne[0].
//
// These files come from strangers: every count, length, dimension and offset is checked
// against the file before use, and each problem is a minigpt4::Error naming the file (and
// the key or tensor).
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4::io {

class MappedFile;

// The ggml types this project reads (ggml.h's numbering).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q8_0 = 8,
  Q4_K = 12,
  BF16 = 30,
};
// "f32", "q4_0", ...; "type 7" for one this project does not read.
std::string ggml_type_name(uint32_t type);

struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;  // row-major (outermost first): ne reversed, e.g. [N, K]
  uint32_t type = 0;
  uint64_t offset = 0;  // of the data, from the start of the file
  uint64_t nbytes = 0;
};

struct GgufFile {
  std::string path;
  uint32_t version = 0;
  // Metadata values as JSON: integers, floats, bools, strings, arrays of them.
  nlohmann::json metadata = nlohmann::json::object();
  std::vector<GgufTensor> tensors;
  std::shared_ptr<MappedFile> file;

  const GgufTensor* find(const std::string& name) const;
  // A metadata value that must be present (Error naming the key otherwise).
  const nlohmann::json& at(const std::string& key) const;
};

// Reads the header and tensor table and maps the file (tensor data is not read yet).
GgufFile read_gguf(const std::string& path);

// A tensor's data as float32 [shape], dequantised (f32, f16, bf16, q8_0, q4_0, q4_1, q4_K).
at::Tensor gguf_dequantize(const GgufFile& gguf, const GgufTensor& tensor);

// A q8_0 or q4_0 [N, K] tensor in the project's group-wise storage (models/quantize.h, groups
// of 32): values int8 [N, K] or q4_0-packed uint8 [N, K / 2], scales float16 [N, K / 32]. The
// same numbers, rearranged: ggml interleaves each block's scale with its values.
struct GgufGrouped {
  at::Tensor values, scales;
};
GgufGrouped gguf_grouped(const GgufFile& gguf, const GgufTensor& tensor);

}  // namespace minigpt4::io
