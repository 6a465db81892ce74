// minigpt4: one binary, one subcommand per job (`minigpt4 --help` lists them).
#include "apps/commands.h"
#include "minigpt4/common/error.h"

#include <c10/util/Exception.h>

#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{"minigpt4-cpp: train, chat with and evaluate MiniGPT-4-style vision-language models"};
  app.require_subcommand(1);
  minigpt4::apps::add_info_command(app);
  minigpt4::apps::add_config_keys_command(app);
  minigpt4::apps::add_train_command(app);
  minigpt4::apps::add_synth_command(app);
  minigpt4::apps::add_quickstart_command(app);
  minigpt4::apps::add_chat_command(app);
  minigpt4::apps::add_serve_command(app);
  minigpt4::apps::add_score_command(app);
  try {
    app.parse(argc, argv);
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
