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
  // Shown by `minigpt4 config-keys`; "" when the key has none (absent means off or unused).
  std::string default_value = "";
};

const std::vector<ConfigKey>& config_schema();
// Dataset names `datasets.<name>` may use, and whether `minigpt4 train` can read each: the
// one list the config check, the trainer and the loaders share. A name the schema knows
// but that cannot be trained (`trainable` false, `why_not` says why) parses and is refused
// by `minigpt4 train` with that reason.
struct DatasetName {
  std::string name;
  bool trainable = true;
  std::string why_not;
};
const std::vector<DatasetName>& dataset_catalog();
const std::vector<std::string>& known_datasets();               // the catalog's names
const DatasetName* find_dataset_name(const std::string& name);  // nullptr: unknown
std::string value_type_name(ValueType type);

}  // namespace minigpt4
