#include "minigpt4/common/config.h"

#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
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

// A decimal number as OmegaConf reads one: [+-] digits [. digits] [e [+-] digits], or .digits.
// A scanner rather than std::regex, whose matcher recurses once per character.
bool is_decimal_number(const std::string& t) {
  size_t i = 0;
  const auto digits = [&] {
    const size_t start = i;
    while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
    return i - start;
  };
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
  size_t mantissa = digits();
  if (i < t.size() && t[i] == '.') {
    ++i;
    mantissa += digits();
  }
  if (mantissa == 0) return false;
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == t.size();
}

// YAML scalars are untyped text; the schema says what each must be. OmegaConf (which the
// original uses) reads 1e-4 as a float and True/False as booleans, so we do too.
nlohmann::json typed_scalar(const YAML::Node& node, const ConfigKey& key, const std::string& dotted,
                            const std::string& source) {
  const std::string& text = node.Scalar();
  auto wrong = [&]() -> nlohmann::json {
    fail("{}: '{}' must be {}, got '{}'", source, dotted, value_type_name(key.type), excerpt(text));
  };
  switch (key.type) {
    case ValueType::String: return text;
    case ValueType::Int: {
      int64_t v = 0;
      if (parse_int64(text, v)) return v;
      bool digits = !text.empty();
      for (size_t i = (text[0] == '-' || text[0] == '+') ? 1 : 0; i < text.size(); ++i)
        digits = digits && std::isdigit(static_cast<unsigned char>(text[i]));
      if (digits) fail("{}: '{}' = '{}' does not fit a 64-bit integer", source, dotted, excerpt(text));
      return wrong();
    }
    case ValueType::Float: {
      if (!is_decimal_number(text)) return wrong();
      const double v = std::strtod(text.c_str(), nullptr);  // underflow gives 0 or a denormal, as Python
      if (!std::isfinite(v)) fail("{}: '{}' = '{}' is out of the range of a double", source, dotted, excerpt(text));
      return v;
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

// YAML aliases (*name) share one node; converting to JSON copies it at each use, so a small
// file of aliases to aliases can expand exponentially ("billion laughs"). Every converted
// scalar and node is counted against input_limits().max_config_bytes.
struct ExpansionBudget {
  int64_t used = 0;
  void spend(size_t bytes, const std::string& source) {
    used += static_cast<int64_t>(bytes) + 16;
    if (used > input_limits().max_config_bytes)
      fail(
          "{}: the config expands to more than {} bytes (limits.max_config_bytes); YAML aliases that repeat "
          "large values?",
          source, input_limits().max_config_bytes);
  }
};

// Validates `node` (at `path`) against the schema and converts it to typed JSON, recording
// the file each leaf came from.
nlohmann::json convert(const YAML::Node& node, std::vector<std::string>& path, const std::string& source,
                       nlohmann::json& origins, ExpansionBudget& budget) {
  budget.spend(node.IsScalar() ? node.Scalar().size() : 0, source);
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
        budget.spend(item.Scalar().size(), source);
        list.push_back(item.Scalar());
      }
      return list;
    }
    if (key->type == ValueType::StringMap) {
      if (!node.IsMap()) fail("{}: '{}' must be a map of names to strings", source, dotted);
      nlohmann::json map = nlohmann::json::object();
      for (const auto& item : node) {
        if (!item.first.IsScalar() || !item.second.IsScalar())
          fail("{}: '{}' must be a map of names to strings", source, dotted);
        budget.spend(item.first.Scalar().size() + item.second.Scalar().size(), source);
        map[item.first.Scalar()] = item.second.Scalar();
      }
      return map;
    }
    if (!node.IsScalar())
      fail("{}: '{}' must be {}, got a {}", source, dotted, value_type_name(key->type), node.IsMap() ? "map" : "list");
    return typed_scalar(node, *key, dotted, source);
  }
  if (!path.empty() && !is_section(path))
    fail("{}: unknown key '{}'{}", source, excerpt(dotted, 200), suggestion(path));
  if (!node.IsMap())
    fail("{}: '{}' must be a map of keys, got '{}'", source, dotted.empty() ? "(top level)" : excerpt(dotted, 200),
         node.IsScalar() ? excerpt(node.Scalar()) : "a list");
  nlohmann::json out = nlohmann::json::object();
  for (const auto& item : node) {
    if (!item.first.IsScalar())
      fail("{}: a key under '{}' is not a name (a list or map used as a key)", source,
           dotted.empty() ? "(top level)" : excerpt(dotted, 200));
    path.push_back(item.first.Scalar());
    out[path.back()] = convert(item.second, path, source, origins, budget);
    path.pop_back();
  }
  return out;
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    auto node = YAML::Load(text);
    return node.IsNull() ? YAML::Node(YAML::NodeType::Map) : node;
  } catch (const YAML::Exception& e) {
    fail("{}: invalid YAML at line {}, column {}: {}", source, e.mark.line + 1, e.mark.column + 1, excerpt(e.msg, 200));
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
  fail(
      "{}: unknown model.model_type '{}' for arch {} (known: pretrain_vicuna0, pretrain_vicuna, pretrain_llama2, "
      "quickstart)",
      source, model_type, arch);
}

}  // namespace

Config Config::load(const std::string& path, const std::vector<std::string>& options) {
  std::string text;
  try {
    text = read_text_file(path, "config file");
  } catch (const Error& e) {
    fail("cannot read config file '{}': {}", path, e.what());
  }
  if (static_cast<int64_t>(text.size()) > input_limits().max_config_bytes)
    fail("config file '{}' is {} bytes, more than limits.max_config_bytes ({})", path, text.size(),
         input_limits().max_config_bytes);
  return from_yaml(text, path, options);
}

Config Config::from_yaml(const std::string& yaml, const std::string& name, const std::vector<std::string>& options) {
  Config config;
  config.path_ = name;
  nlohmann::json user_origins = nlohmann::json::object();
  std::vector<std::string> path;
  ExpansionBudget budget;
  const auto user = convert(parse_yaml(yaml, name), path, name, user_origins, budget);

  // Model defaults first, the user's keys over them.
  if (user.contains("model") && user["model"].is_object() && user["model"].contains("arch") &&
      user["model"]["arch"].is_string()) {
    const std::string arch = user["model"]["arch"].get<std::string>();
    const auto& model_type = user["model"].contains("model_type") ? user["model"]["model_type"] : nlohmann::json();
    const std::string type = model_type.is_string() ? model_type.get<std::string>() : "pretrain_vicuna0";
    const std::string file = default_model_file(arch, type, name);
    for (const auto& [builtin_name, text] : builtin_model_configs()) {
      if (builtin_name != file) continue;
      const std::string source = "configs/models/" + file + " (built in)";
      std::vector<std::string> p;
      ExpansionBudget defaults_budget;
      config.tree_ = convert(parse_yaml(text, source), p, source, config.origins_, defaults_budget);
    }
  }
  merge_into(config.tree_, user);
  merge_into(config.origins_, user_origins);

  for (const auto& option : options) {
    const auto eq = option.find('=');
    if (eq == std::string::npos || eq == 0) fail("--options: '{}' is not of the form key=value", excerpt(option, 200));
    auto key_path = split_key(option.substr(0, eq));
    // "key=" sets an empty string (e.g. model.ckpt= to start without a checkpoint).
    const std::string text = option.substr(eq + 1);
    YAML::Node value(std::string{});
    try {
      if (!text.empty()) value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      fail("--options {}: the value is not valid YAML: {}", excerpt(option, 200), excerpt(e.msg, 200));
    }
    // Build the nested node so the same validation applies.
    YAML::Node wrapped = value;
    for (auto it = key_path.rbegin(); it != key_path.rend(); ++it) {
      YAML::Node parent(YAML::NodeType::Map);
      parent[*it] = wrapped;
      wrapped = parent;
    }
    std::vector<std::string> p;
    merge_into(config.tree_, convert(wrapped, p, "--options", config.origins_, budget));
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
