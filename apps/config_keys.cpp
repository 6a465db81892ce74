// `minigpt4 config-keys`: every key a run config may hold, from the schema (the source of
// docs/configs.md, so each key is documented in exactly one place).
#include "apps/commands.h"
#include "minigpt4/common/config_schema.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace minigpt4::apps {

void add_config_keys_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("config-keys", "List every config key with its type, default and meaning (Markdown)");
  cmd->callback([] {
    fmt::print("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for (const auto& key : config_schema())
      fmt::print("| `{}` | {} | {} | {} |\n", key.pattern, value_type_name(key.type), key.default_value, key.doc);
    fmt::print("\nDataset names (`datasets.<name>`): {}\n", fmt::join(known_datasets(), ", "));
  });
}

}  // namespace minigpt4::apps
