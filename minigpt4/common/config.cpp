#include "minigpt4/common/config.h"

#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/error.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <sstream>

namespace minigpt4 {

namespace {

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::stringstream ss(key);
  std::string part;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  return parts;
}

bool segment_match(const std::vector<std::string>& pattern, const std::vector<std::string>& path, size_t n) {
  if (n > pattern.size() || n > path.size()) return false;
  for (size_t i = 0; i < n; ++i)
    if (pattern[i] != "*" && pattern[i] != path[i]) return false;
  return true;
}

const ConfigKey* leaf_key(const std::vector<std::string>& path) {
  for (const auto& key : config_schema()) {
    const auto pattern = split_key(key.pattern);
    if (pattern.size() == path.size() && segment_match(pattern, path, path.size())) return &key;
  }
  return nullptr;
}

bool is_section(const std::vector<std::string>& path) {
  for (const auto& key : config_schema()) {
    const auto pattern = split_key(key.pattern);
    if (pattern.size() > path.size() && segment_match(pattern, path, path.size())) return true;
  }
  return false;
}

std::string join(const std::vector<std::string>& path) {
  std::string out;
  for (const auto& p : path) out += (out.empty() ? "" : ".") + p;
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t next = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = row[j];
      row[j] = next;
    }
  }
  return row[b.size()];
}

std::string suggestion(const std::vector<std::string>& path) {
  std::string best;
  size_t best_distance = 4;
  for (const auto& key : config_schema()) {
    const auto pattern = split_key(key.pattern);
    if (pattern.size() != path.size() || !segment_match(pattern, path, path.size() - 1)) continue;
    const size_t d = edit_distance(pattern.back(), path.back());
    if (d < best_distance) best_distance = d, best = pattern.back();
  }
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
}

// YAML scalars are untyped text; the schema says what each must be. OmegaConf (which the
// original uses) reads 1e-4 as a float and True/False as booleans, so we do too.
nlohmann::json typed_scalar(const YAML::Node& node, const ConfigKey& key, const std::string& dotted,
                            const std::string& source) {
  const std::string text = node.Scalar();
  auto wrong = [&]() -> nlohmann::json {
    fail("{}: '{}' must be {}, got '{}'", source, dotted, value_type_name(key.type), text);
  };
  switch (key.type) {
    case ValueType::String: return text;
    case ValueType::Int: {
      static const std::regex integer(R"([-+]?\d+)");
      if (!std::regex_match(text, integer)) return wrong();
      return std::stoll(text);
    }
    case ValueType::Float: {
      static const std::regex number(R"([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)");
      if (!std::regex_match(text, number)) return wrong();
      return std::stod(text);
    }
    case ValueType::Bool: {
      std::string lower = text;
      std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
      if (lower == "true" || lower == "yes" || lower == "on") return true;
      if (lower == "false" || lower == "no" || lower == "off") return false;
      return wrong();
    }
    default: return wrong();
  }
}

// Validates `node` (at `path`) against the schema and converts it to typed JSON, recording
// the file each leaf came from.
nlohmann::json convert(const YAML::Node& node, std::vector<std::string>& path, const std::string& source,
                       nlohmann::json& origins) {
  const std::string dotted = join(path);
  if (path.size() == 2 && path[0] == "datasets") {
    const auto& known = known_datasets();
    if (std::find(known.begin(), known.end(), path[1]) == known.end())
      fail("{}: unknown dataset 'datasets.{}' (known: {})", source, path[1], fmt::join(known, ", "));
  }
  const ConfigKey* key = path.empty() ? nullptr : leaf_key(path);
  if (node.IsNull() && (key || is_section(path))) {
    origins[dotted] = source;
    return nullptr;
  }
  if (key) {
    origins[dotted] = source;
    if (key->type == ValueType::StringList) {
      if (node.IsScalar()) return nlohmann::json::array({node.Scalar()});
      if (!node.IsSequence()) fail("{}: '{}' must be a list of strings", source, dotted);
      nlohmann::json list = nlohmann::json::array();
      for (const auto& item : node) {
        if (!item.IsScalar()) fail("{}: '{}' must be a list of strings", source, dotted);
        list.push_back(item.Scalar());
      }
      return list;
    }
    if (key->type == ValueType::StringMap) {
      if (!node.IsMap()) fail("{}: '{}' must be a map of names to strings", source, dotted);
      nlohmann::json map = nlohmann::json::object();
      for (const auto& item : node) map[item.first.Scalar()] = item.second.Scalar();
      return map;
    }
    if (!node.IsScalar()) fail("{}: '{}' must be {}, got a {}", source, dotted, value_type_name(key->type),
                               node.IsMap() ? "map" : "list");
    return typed_scalar(node, *key, dotted, source);
  }
  if (!path.empty() && !is_section(path)) fail("{}: unknown key '{}'{}", source, dotted, suggestion(path));
  if (!node.IsMap()) fail("{}: '{}' must be a map of keys, got '{}'", source, dotted.empty() ? "(top level)" : dotted,
                          node.IsScalar() ? node.Scalar() : "a list");
  nlohmann::json out = nlohmann::json::object();
  for (const auto& item : node) {
    path.push_back(item.first.Scalar());
    out[path.back()] = convert(item.second, path, source, origins);
    path.pop_back();
  }
  return out;
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    auto node = YAML::Load(text);
    return node.IsNull() ? YAML::Node(YAML::NodeType::Map) : node;
  } catch (const YAML::Exception& e) {
    fail("{}: invalid YAML at line {}, column {}: {}", source, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
}

// `over` wins; maps merge recursively.
void merge_into(nlohmann::json& base, const nlohmann::json& over) {
  for (const auto& [k, v] : over.items()) {
    if (v.is_object() && base.contains(k) && base[k].is_object())
      merge_into(base[k], v);
    else
      base[k] = v;
  }
}

// (arch, model_type) -> built-in defaults file, as the original's PRETRAINED_MODEL_CONFIG_DICT.
std::string default_model_file(const std::string& arch, const std::string& model_type, const std::string& source) {
  if (arch != "minigpt4" && arch != "mini_gpt4")
    fail("{}: unknown model.arch '{}' (known: minigpt4, mini_gpt4)", source, arch);
  if (model_type == "pretrain_vicuna" || model_type == "pretrain_vicuna0") return "minigpt4_vicuna0.yaml";
  if (model_type == "pretrain_llama2") return "minigpt4_llama2.yaml";
  if (model_type == "quickstart") return "minigpt4_quickstart.yaml";
  fail("{}: unknown model.model_type '{}' for arch {} (known: pretrain_vicuna0, pretrain_vicuna, pretrain_llama2, "
       "quickstart)",
       source, model_type, arch);
}

}  // namespace

Config Config::load(const std::string& path, const std::vector<std::string>& options) {
  std::ifstream in(path);
  if (!in) fail("cannot read config file '{}'", path);
  std::stringstream text;
  text << in.rdbuf();
  auto config = from_yaml(text.str(), path, options);
  return config;
}

Config Config::from_yaml(const std::string& yaml, const std::string& name, const std::vector<std::string>& options) {
  Config config;
  config.path_ = name;
  nlohmann::json user_origins = nlohmann::json::object();
  std::vector<std::string> path;
  const auto user = convert(parse_yaml(yaml, name), path, name, user_origins);

  // Model defaults first, the user's keys over them.
  if (user.contains("model") && user["model"].is_object() && user["model"].contains("arch")) {
    const std::string arch = user["model"]["arch"].get<std::string>();
    const std::string type = user["model"].value("model_type", std::string("pretrain_vicuna0"));
    const std::string file = default_model_file(arch, type, name);
    for (const auto& [builtin_name, text] : builtin_model_configs()) {
      if (builtin_name != file) continue;
      const std::string source = "configs/models/" + file + " (built in)";
      std::vector<std::string> p;
      config.tree_ = convert(parse_yaml(text, source), p, source, config.origins_);
    }
  }
  merge_into(config.tree_, user);
  merge_into(config.origins_, user_origins);

  for (const auto& option : options) {
    const auto eq = option.find('=');
    if (eq == std::string::npos || eq == 0) fail("--options: '{}' is not of the form key=value", option);
    auto key_path = split_key(option.substr(0, eq));
    // "key=" sets an empty string (e.g. model.ckpt= to start without a checkpoint).
    const std::string text = option.substr(eq + 1);
    YAML::Node value(std::string{});
    try {
      if (!text.empty()) value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      fail("--options {}: the value is not valid YAML: {}", option, e.msg);
    }
    // Build the nested node so the same validation applies.
    YAML::Node wrapped = value;
    for (auto it = key_path.rbegin(); it != key_path.rend(); ++it) {
      YAML::Node parent(YAML::NodeType::Map);
      parent[*it] = wrapped;
      wrapped = parent;
    }
    std::vector<std::string> p;
    merge_into(config.tree_, convert(wrapped, p, "--options", config.origins_));
  }
  return config;
}

const nlohmann::json* Config::find(const std::string& key) const {
  const nlohmann::json* node = &tree_;
  for (const auto& part : split_key(key)) {
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &(*node)[part];
  }
  return node->is_null() ? nullptr : node;
}

bool Config::has(const std::string& key) const { return find(key) != nullptr; }

std::string Config::get_string(const std::string& key, const std::string& fallback) const {
  const auto* v = find(key);
  return v && v->is_string() ? v->get<std::string>() : fallback;
}

int64_t Config::get_int(const std::string& key, int64_t fallback) const {
  const auto* v = find(key);
  return v && v->is_number_integer() ? v->get<int64_t>() : fallback;
}

double Config::get_float(const std::string& key, double fallback) const {
  const auto* v = find(key);
  return v && v->is_number() ? v->get<double>() : fallback;
}

bool Config::get_bool(const std::string& key, bool fallback) const {
  const auto* v = find(key);
  return v && v->is_boolean() ? v->get<bool>() : fallback;
}

std::vector<std::string> Config::get_string_list(const std::string& key) const {
  const auto* v = find(key);
  return v && v->is_array() ? v->get<std::vector<std::string>>() : std::vector<std::string>{};
}

std::vector<std::string> Config::keys_under(const std::string& key) const {
  std::vector<std::string> out;
  const auto* v = find(key);
  if (v && v->is_object())
    for (const auto& item : v->items()) out.push_back(item.key());
  return out;
}

std::string Config::source_of(const std::string& key) const {
  return origins_.contains(key) ? origins_[key].get<std::string>() : "";
}

}  // namespace minigpt4
