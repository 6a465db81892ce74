#include "minigpt4/io/checkpoint.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/io/torch_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <vector>

namespace minigpt4::io {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

enum class Format { Safetensors, Torch, Unknown };

// File names lie (a .bin may be safetensors, a .pth may be anything): look at the bytes.
Format sniff(const std::string& path) {
  const std::string head = read_prefix(path, 512);
  if (head.size() >= 4 && head.compare(0, 4, "PK\x03\x04", 4) == 0) return Format::Torch;
  // Legacy torch.save output (a bare pickle, or a tar before torch 0.4): the torch loader
  // explains how to convert it.
  if (!head.empty() && static_cast<uint8_t>(head[0]) == 0x80) return Format::Torch;
  if (head.size() >= 262 && head.compare(257, 5, "ustar") == 0) return Format::Torch;
  // safetensors: an 8-byte header length, then the JSON object.
  if (head.size() >= 9 && head[8] == '{') return Format::Safetensors;
  return Format::Unknown;
}

// LAVIS and MiniGPT-4 save {'model': state_dict, 'optimizer': ..., 'epoch': ...}; other
// trainers use 'state_dict'. Keep only the wrapped state dict, without its prefix.
StateDict unwrap(StateDict all) {
  for (const std::string prefix : {"model/", "state_dict/"}) {
    StateDict inner;
    for (auto& [name, t] : all)
      if (name.rfind(prefix, 0) == 0) inner.emplace(name.substr(prefix.size()), t);
    if (!inner.empty()) return inner;
  }
  return all;
}

StateDict load_file(const std::string& path) {
  switch (sniff(path)) {
    case Format::Safetensors: return load_safetensors(path);
    case Format::Torch: return unwrap(load_torch_checkpoint(path));
    case Format::Unknown: break;
  }
  fail("{} is neither a safetensors file nor a PyTorch (torch.save) checkpoint", path);
}

// File names a stranger's file gives us (an index's shard names) must fit what the system
// accepts, or opening them fails with a bare "File name too long".
void check_name_length(const std::string& name, const std::string& what) {
  constexpr size_t kMaxComponent = 255, kMaxPath = 4095;  // NAME_MAX, PATH_MAX - 1 on Linux
  if (name.size() > kMaxPath)
    fail("{}: file name '{}' is {} bytes, longer than a path may be ({})", what, excerpt(name), name.size(), kMaxPath);
  size_t start = 0;
  while (start <= name.size()) {
    const size_t slash = std::min(name.find('/', start), name.size());
    if (slash - start > kMaxComponent)
      fail("{}: file name '{}' has a {}-byte part, longer than a file name may be ({})", what, excerpt(name),
           slash - start, kMaxComponent);
    start = slash + 1;
  }
}

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// A Hugging Face index: {"weight_map": {tensor name: shard file name}}. Every shard name is
// checked (relative, no '..', a sane length) before any shard is opened.
StateDict load_sharded(const fs::path& dir, const std::string& index_name) {
  const std::string index_path = (dir / index_name).string();
  const json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("{} has no \"weight_map\" object", index_path);

  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      fail("{}: weight_map entry '{}' is {}, not a file name", index_path, excerpt(name), describe_json(shard));
    names_by_shard[shard.get<std::string>()].push_back(name);
  }
  if (names_by_shard.empty()) fail("{}: weight_map is empty", index_path);
  std::map<std::string, fs::path> shard_paths;
  for (const auto& [shard, names] : names_by_shard) {
    const std::string what = fmt::format("{}: weight_map entry '{}'", index_path, excerpt(names.front()));
    check_name_length(shard, what);
    shard_paths[shard] = confined_path(dir, shard, what);
  }

  StateDict out;
  for (const auto& [shard, names] : names_by_shard) {
    const std::string shard_path = shard_paths.at(shard).string();
    std::error_code ec;
    if (!fs::is_regular_file(shard_path, ec))
      fail("shard {} named in {} is missing (expected at {})", shard, index_path, shard_path);
    StateDict part = load_file(shard_path);
    for (const auto& name : names)
      if (part.count(name) == 0)
        fail("tensor '{}' is not in shard {}, although {} says it is", excerpt(name), shard_path, index_path);
    for (auto& [name, t] : part)
      if (!out.emplace(name, t).second)
        fail("tensor '{}' appears in more than one shard of {} (again in {})", excerpt(name), index_path, shard);
  }
  return out;
}

StateDict load_hf_dir(const fs::path& dir) {
  if (path_exists(dir / "model.safetensors.index.json")) return load_sharded(dir, "model.safetensors.index.json");
  if (path_exists(dir / "model.safetensors")) return load_file((dir / "model.safetensors").string());
  if (path_exists(dir / "pytorch_model.bin.index.json")) return load_sharded(dir, "pytorch_model.bin.index.json");
  if (path_exists(dir / "pytorch_model.bin")) return load_file((dir / "pytorch_model.bin").string());
  fail(
      "{} has no model weights: looked for model.safetensors.index.json, model.safetensors, "
      "pytorch_model.bin.index.json and pytorch_model.bin",
      dir.string());
}

// Python's json module writes Infinity, -Infinity and NaN, which are not JSON and which
// nlohmann rejects (the fixture manifests contain them). Outside strings they become
// marker strings for the parse, and doubles again afterwards.
const std::string kNonFiniteMarker = "\x01minigpt4-nonfinite:";

std::string quote_non_finite(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char* word : {"-Infinity", "Infinity", "NaN"}) {
      if (text.compare(i, std::strlen(word), word) != 0) continue;
      out += "\"\\u0001minigpt4-nonfinite:" + std::string(word) + "\"";
      i += std::strlen(word) - 1;
      replaced = true;
      break;
    }
    if (!replaced) out += c;
  }
  return out;
}

void restore_non_finite(json& j) {
  if (j.is_structured()) {
    for (auto& child : j) restore_non_finite(child);
  } else if (j.is_string() && j.get_ref<const std::string&>().rfind(kNonFiniteMarker, 0) == 0) {
    const std::string word = j.get<std::string>().substr(kNonFiniteMarker.size());
    const double inf = std::numeric_limits<double>::infinity();
    j = word == "NaN" ? std::numeric_limits<double>::quiet_NaN() : word == "Infinity" ? inf : -inf;
  }
}

}  // namespace

StateDict load_state_dict(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) fail("weight path {} does not exist", path);
  if (fs::is_directory(status)) return load_hf_dir(path);
  // The index of a sharded checkpoint stands for the whole checkpoint.
  const fs::path p(path);
  const std::string name = p.filename().string();
  if (name.size() > 11 && name.compare(name.size() - 11, 11, ".index.json") == 0)
    return load_sharded(p.parent_path().empty() ? fs::path(".") : p.parent_path(), name);
  return load_file(path);
}

json read_json_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail("cannot read JSON file {}: it is a directory", path);
  // Size-capped (limits.max_text_file_bytes) and nesting-capped (limits.max_json_depth):
  // a config.json or index is a stranger's file like any other.
  json j = parse_json(quote_non_finite(read_text_file(path, "JSON file")), path);
  restore_non_finite(j);
  return j;
}

}  // namespace minigpt4::io
