#pragma once
// Every key a run config may hold, its type and what it means. One table, so each key is
// documented exactly once (docs/configs.md is printed from it by `minigpt4 config-keys`).
#include <string>
#include <vector>

namespace minigpt4 {

enum class ValueType { String, Int, Float, Bool, StringList, StringMap };

struct ConfigKey {
  std::string pattern;  // dotted path; `*` matches one name (a dataset, a split)
  ValueType type;
  std::string doc;
};

const std::vector<ConfigKey>& config_schema();
// Dataset names `datasets.<name>` may use.
const std::vector<std::string>& known_datasets();
std::string value_type_name(ValueType type);

}  // namespace minigpt4
