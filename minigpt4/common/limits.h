#pragma once
// How much an input from a stranger (a model file, a dataset, a request) may make us read,
// allocate or compute before we refuse it with a named error. One process-wide table, like
// PIL's Image.MAX_IMAGE_PIXELS: every parser reads it, `limits.*` config keys (and the apps'
// flags) set it. The defaults pass every real MiniGPT-4 / Vicuna-13B / LAION file we know of
// with a wide margin; docs/security.md lists each limit and why its default is what it is.
#include <cstdint>
#include <utility>
#include <vector>
#include <string>

namespace minigpt4 {

class Config;

struct InputLimits {
  // Decoded image size; PIL's default Image.MAX_IMAGE_PIXELS (89.5 M pixels, ~268 MB as RGB).
  int64_t max_image_pixels = 89'478'485;
  // Nesting of JSON documents (configs, annotations, safetensors headers, requests) and of
  // pickle values (a torch.save state dict nests 3-6 deep; Python stops at 1000 frames).
  int64_t max_json_depth = 256;
  int64_t max_pickle_depth = 1000;
  // Values and container items one pickle program may build (~170 bytes each, so the default
  // stays under 1 GB; a 13B state dict builds ~10k, RefCOCO's refs pickle ~1 M).
  int64_t max_pickle_items = 5'000'000;
  // safetensors: the format's own header cap (100 MB) and the tensors one file may name.
  int64_t max_safetensors_header_bytes = 100'000'000;
  int64_t max_tensors_per_file = 200'000;
  // A compressed record of a .pth zip, or a compressed shard, may inflate to this much.
  int64_t max_decompressed_bytes = int64_t(64) << 30;
  // One member of a webdataset tar (a LAION image is well under 10 MB).
  int64_t max_tar_member_bytes = int64_t(256) << 20;
  // Files of one webdataset sample (webdataset's have 2 to 5); further members of its key are refused.
  int64_t max_files_per_sample = 1000;
  // Encoded image bytes the data loader holds ahead of its workers, per dataset (besides the
  // record at the front, always taken): with large members the window could hold tens of GB.
  int64_t max_loader_readahead_bytes = int64_t(256) << 20;
  // An encoded image file (a 10-megapixel camera JPEG is ~5 MB; a PNG at the pixel limit
  // rarely passes 100 MB), refused before it is read.
  int64_t max_encoded_image_bytes = int64_t(256) << 20;
  // Text files read whole: annotation JSON, tokenizer files, config.json.
  int64_t max_text_file_bytes = int64_t(1) << 30;
  // A YAML config after its aliases are expanded (LAVIS configs are a few KB).
  int64_t max_config_bytes = int64_t(16) << 20;
  // Names a brace pattern such as shard-{000000..099999}.tar may expand to, and their total length.
  int64_t max_brace_names = 10'000'000;
  int64_t max_brace_bytes = int64_t(256) << 20;
};

const InputLimits& input_limits();
void set_input_limits(const InputLimits& limits);
// Reads the `limits.*` keys a config sets over the defaults and makes them current.
void apply_input_limits(const Config& config);
// Each limits.<name> key with its InputLimits field: the one list apply_input_limits and the
// config schema's defaults read.
const std::vector<std::pair<const char*, int64_t InputLimits::*>>& input_limit_fields();

}  // namespace minigpt4
