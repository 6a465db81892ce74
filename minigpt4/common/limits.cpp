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

const std::vector<std::pair<const char*, int64_t InputLimits::*>>& input_limit_fields() {
  static const std::vector<std::pair<const char*, int64_t InputLimits::*>> fields = {
      {"max_image_pixels", &InputLimits::max_image_pixels},
      {"max_json_depth", &InputLimits::max_json_depth},
      {"max_pickle_depth", &InputLimits::max_pickle_depth},
      {"max_pickle_items", &InputLimits::max_pickle_items},
      {"max_safetensors_header_bytes", &InputLimits::max_safetensors_header_bytes},
      {"max_tensors_per_file", &InputLimits::max_tensors_per_file},
      {"max_decompressed_bytes", &InputLimits::max_decompressed_bytes},
      {"max_tar_member_bytes", &InputLimits::max_tar_member_bytes},
      {"max_files_per_sample", &InputLimits::max_files_per_sample},
      {"max_loader_readahead_bytes", &InputLimits::max_loader_readahead_bytes},
      {"max_encoded_image_bytes", &InputLimits::max_encoded_image_bytes},
      {"max_text_file_bytes", &InputLimits::max_text_file_bytes},
      {"max_config_bytes", &InputLimits::max_config_bytes},
      {"max_brace_names", &InputLimits::max_brace_names},
      {"max_brace_bytes", &InputLimits::max_brace_bytes},
  };
  return fields;
}

void apply_input_limits(const Config& config) {
  InputLimits l = input_limits();
  for (const auto& [name, field] : input_limit_fields()) {
    const std::string key = std::string("limits.") + name;
    if (!config.has(key)) continue;
    const int64_t v = config.get_int(key, l.*field);
    if (v <= 0) fail("{}: '{}' must be a positive integer, got {}", config.source_of(key), key, v);
    l.*field = v;
  }
  set_input_limits(l);
}

}  // namespace minigpt4
