#pragma once
// Each subcommand lives in its own file and adds itself to the CLI here; main.cpp only
// parses and turns errors into a message and a non-zero exit code.
#include <CLI/CLI.hpp>

namespace minigpt4::apps {

void add_info_command(CLI::App& app);
// info_kernels.cpp: `info --kernels [--measure]`.
void print_kernels(bool measure);
// info_memory.cpp: `info --memory`.
void print_memory_layout();
void add_config_keys_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_synth_command(CLI::App& app);
void add_quickstart_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_explain_check_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_score_command(CLI::App& app);
void add_evaluate_command(CLI::App& app);
void add_launch_command(CLI::App& app);
void add_vpgtrans_convert_command(CLI::App& app);
void add_vpgtrans_demo_command(CLI::App& app);

}  // namespace minigpt4::apps
