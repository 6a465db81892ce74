#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON
//   {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the raw little-endian tensor bytes (offsets relative to the end of the header).
// dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL (and U16 U32 U64 F8_E4M3 F8_E5M2).
#include "minigpt4/common/state_dict.h"

#include <map>
#include <string>

namespace minigpt4::io {

// Every tensor of the file, memory-mapped: no copy is made; each tensor keeps the mapping
// alive, and writing into one is copy-on-write (the file never changes). The header is
// validated completely; every problem is a minigpt4::Error naming the file (and tensor).
StateDict load_safetensors(const std::string& path);

// The "__metadata__" string map of the header (empty when absent); reads only the header.
std::map<std::string, std::string> load_safetensors_metadata(const std::string& path);

// Writes the standard layout: header keys sorted, JSON padded with spaces to a multiple of
// 8 bytes, data packed without gaps (widest dtypes first, so every tensor is aligned to its
// element size). Tensors may live on any device and be non-contiguous. The file is written
// as `path.tmp.<pid>` and renamed into place.
void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace minigpt4::io
