#include "minigpt4/common/limits.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"

#include <mutex>

namespace minigpt4 {

namespace {
std::mutex& limits_mutex() {
  static std::mutex m;
  return m;
}
InputLimits& current() {
  static InputLimits limits;
  return limits;
}
}  // namespace

const InputLimits& input_limits() { return current(); }

void set_input_limits(const InputLimits& limits) {
  std::lock_guard<std::mutex> lock(limits_mutex());
  current() = limits;
}

void apply_input_limits(const Config& config) {
  InputLimits l = input_limits();
  auto read = [&](const char* name, int64_t& field) {
    const std::string key = std::string("limits.") + name;
    if (!config.has(key)) return;
    const int64_t v = config.get_int(key, field);
    if (v <= 0) fail("{}: '{}' must be a positive integer, got {}", config.source_of(key), key, v);
    field = v;
  };
  read("max_image_pixels", l.max_image_pixels);
  read("max_json_depth", l.max_json_depth);
  read("max_pickle_depth", l.max_pickle_depth);
  read("max_pickle_items", l.max_pickle_items);
  read("max_safetensors_header_bytes", l.max_safetensors_header_bytes);
  read("max_tensors_per_file", l.max_tensors_per_file);
  read("max_decompressed_bytes", l.max_decompressed_bytes);
  read("max_tar_member_bytes", l.max_tar_member_bytes);
  read("max_files_per_sample", l.max_files_per_sample);
  read("max_loader_readahead_bytes", l.max_loader_readahead_bytes);
  read("max_encoded_image_bytes", l.max_encoded_image_bytes);
  read("max_text_file_bytes", l.max_text_file_bytes);
  read("max_config_bytes", l.max_config_bytes);
  read("max_brace_names", l.max_brace_names);
  read("max_brace_bytes", l.max_brace_bytes);
  set_input_limits(l);
}

}  // namespace minigpt4
