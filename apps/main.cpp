// minigpt4: one binary, one subcommand per job (`minigpt4 --help` lists them).
#include "apps/commands.h"
#include "minigpt4/common/error.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"minigpt4-cpp: train, chat with and evaluate MiniGPT-4-style vision-language models"};
  app.require_subcommand(1);
  minigpt4::apps::add_info_command(app);
  minigpt4::apps::add_config_keys_command(app);
  minigpt4::apps::add_train_command(app);
  minigpt4::apps::add_synth_command(app);
  minigpt4::apps::add_quickstart_command(app);
  minigpt4::apps::add_chat_command(app);
  minigpt4::apps::add_explain_check_command(app);
  minigpt4::apps::add_serve_command(app);
  minigpt4::apps::add_score_command(app);
  minigpt4::apps::add_evaluate_command(app);
  minigpt4::apps::add_launch_command(app);
  minigpt4::apps::add_vpgtrans_convert_command(app);
  minigpt4::apps::add_vpgtrans_demo_command(app);
  // `launch [options] -- COMMAND...`: the `--` only marks where the rank's command starts,
  // which the launch subcommand finds by itself.
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args.front() == "launch") {
    const auto dashes = std::find(args.begin(), args.end(), "--");
    if (dashes != args.end()) args.erase(dashes);
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes a vector of arguments last first
  app.name("minigpt4");
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const minigpt4::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error (LibTorch): %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
