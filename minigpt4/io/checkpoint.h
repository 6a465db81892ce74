#pragma once
// The one entry point every user-given weight path goes through: it recognises the
// format by content, not by file name.
#include "minigpt4/common/state_dict.h"

#include <nlohmann/json.hpp>

#include <string>

namespace minigpt4::io {

// The state dict stored at `path`:
// - a safetensors file: its tensors;
// - a torch.save zip (.pth / .bin): its tensors; a LAVIS / MiniGPT-4 checkpoint
//   {'model': state_dict, 'optimizer': ..., ...} (or {'state_dict': ...}) is unwrapped to
//   the inner state dict, everything else in it ignored;
// - a directory: a Hugging Face model directory, weights taken from the first that exists
//   of model.safetensors.index.json (shards), model.safetensors,
//   pytorch_model.bin.index.json (shards), pytorch_model.bin;
// - a `*.index.json` file: the sharded checkpoint it indexes.
// Every error is a minigpt4::Error naming the file or directory at fault.
StateDict load_state_dict(const std::string& path);

// Parses a JSON file; errors name the file (unreadable, or where the JSON is broken).
// Accepts the Infinity / -Infinity / NaN literals that Python's json module writes.
nlohmann::json read_json_file(const std::string& path);

}  // namespace minigpt4::io
