#pragma once
// Run configs in the MiniGPT-4/LAVIS shape: `model:`, `datasets:`, `run:` (and the model
// defaults' `preprocess:`). Loading validates every key against the schema in
// config_schema.cpp: an unknown key or a value of the wrong type is an error naming the key
// and the file it came from. Values are then read by dotted key.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace minigpt4 {

class Config {
 public:
  // Reads `path`, merges it over the model defaults its `model.arch` + `model.model_type`
  // select (configs/models/*.yaml, built into the binary), then applies `options`
  // ("a.b=value", value parsed as YAML).
  static Config load(const std::string& path, const std::vector<std::string>& options = {});
  // The same from YAML text; `name` stands for the file in messages.
  static Config from_yaml(const std::string& yaml, const std::string& name,
                          const std::vector<std::string>& options = {});

  bool has(const std::string& key) const;  // present and not null
  std::string get_string(const std::string& key, const std::string& fallback = "") const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::vector<std::string> get_string_list(const std::string& key) const;
  std::vector<std::string> keys_under(const std::string& key) const;  // child names of a section
  // Which file (or "--options") set a key; "" when it is absent.
  std::string source_of(const std::string& key) const;
  const nlohmann::json& tree() const { return tree_; }
  std::string path() const { return path_; }

 private:
  const nlohmann::json* find(const std::string& key) const;
  nlohmann::json tree_ = nlohmann::json::object();
  nlohmann::json origins_ = nlohmann::json::object();  // dotted key -> file
  std::string path_;
};

// The built-in model default files (configs/models/*.yaml): name -> YAML text.
const std::vector<std::pair<std::string, std::string>>& builtin_model_configs();

}  // namespace minigpt4
