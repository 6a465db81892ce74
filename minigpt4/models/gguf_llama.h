#pragma once
// A LLaMA-family GGUF file (llama.cpp's layout and tensor names) as the LLM: its metadata
// becomes a LlamaConfig, its tensors are renamed to Hugging Face's and loaded one at a time.
// q8_0 and q4_0 projections go into group-wise Linears of the same format (8 or 4 bits,
// groups of 32) unchanged; every other case (f32/f16/bf16, q4_1, q4_K, or a model built in
// another format) is dequantised one tensor at a time and converted or quantised by the
// layer, so no full-precision copy of the model exists. docs/weights.md.
#include "minigpt4/io/gguf.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/weights.h"

#include <set>
#include <string>

namespace minigpt4 {

bool is_gguf_path(const std::string& path);

// general.architecture must be "llama" (Errors name the key otherwise).
LlamaConfig llama_config_from_gguf(const io::GgufFile& gguf);

// The format the file's decoder projections hold: {8, 32} for q8_0, {4, 32} for q4_0 (kept
// as they are), Dense for the rest. A note for the load report says what happens to them.
WeightFormat gguf_projection_format(const io::GgufFile& gguf);

// Every tensor into `model` under `prefix` (e.g. "llama_model."); q/k rows are put back in
// Hugging Face's rotary order (llama.cpp's converter interleaves them). `filled` collects the
// names set; a tensor the model has no place for is an Error naming it.
LoadResult load_gguf_llama(torch::nn::Module& model, const io::GgufFile& gguf, const LlamaConfig& config,
                           const std::string& prefix, std::set<std::string>& filled);

}  // namespace minigpt4
