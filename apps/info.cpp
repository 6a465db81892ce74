// `minigpt4 info --cfg-path FILE [--options k=v ...]`: build the model a config describes,
// load every weight it names, and print what each module holds. `--kernels [--measure]`:
// the CPU's decode kernels (info_kernels.cpp). `--memory`: the bytes of each LLM weight format
// at real shapes (info_memory.cpp).
#include "apps/commands.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/error.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace minigpt4::apps {

namespace {

struct InfoArgs {
  std::string cfg_path;
  std::vector<std::string> options;
  std::string device = "cpu";
  int gpu_id = 0;
  bool kernels = false, measure = false, memory = false;
};

std::string with_commas(int64_t n) {
  auto s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

void run_info(const InfoArgs& args) {
  if (args.kernels || args.measure || args.memory) {
    if (args.kernels || args.measure) print_kernels(args.measure);
    if (args.memory) print_memory_layout();
    if (args.cfg_path.empty()) return;
    fmt::print("\n");
  } else if (args.cfg_path.empty()) {
    fail("minigpt4 info: --cfg-path is required (or --kernels / --memory alone)");
  }
  const auto config = Config::load(args.cfg_path, args.options);
  apply_input_limits(config);  // limits.*: what input files may make us allocate
  const auto model_config = MiniGPT4Config::from_config(config);
  LoadReport report;
  const auto device = select_device(args.device, args.gpu_id);
  const auto model = load_minigpt4(model_config, device, &report);

  fmt::print("config: {}\ndevice: {}\n", args.cfg_path, describe_device(device));
  for (const auto& source : report.sources) {
    fmt::print("loaded {}: {} tensors", source.source, source.loaded.size());
    if (!source.ignored.empty()) fmt::print(", {} ignored (not used by MiniGPT-4)", source.ignored.size());
    if (!source.unexpected.empty())
      fmt::print(", {} unexpected: {}", source.unexpected.size(), summarize_names(source.unexpected));
    fmt::print("\n");
  }
  if (!report.initialised.empty())
    fmt::print("initialised fresh (no checkpoint provides them): {}\n", summarize_names(report.initialised));
  for (const auto& note : report.notes) fmt::print("note: {}\n", note);

  fmt::print("\n{:<16} {:>16} {:>9} {:>10}\n", "module", "parameters", "dtype", "trainable");
  int64_t total = 0, trainable = 0;
  for (const auto& child : model->named_children()) {
    int64_t count = 0, grad = 0;
    std::vector<std::string> dtypes;  // every dtype present: "int8/fp32" for a low_resource LLM
    for (const auto& p : child.value()->parameters()) {
      count += p.numel();
      if (p.requires_grad()) grad += p.numel();
      const auto name = dtype_name(p.scalar_type());
      if (std::find(dtypes.begin(), dtypes.end(), name) == dtypes.end()) dtypes.push_back(name);
    }
    std::sort(dtypes.begin(), dtypes.end());
    const auto dtype = fmt::format("{}", fmt::join(dtypes, "/"));
    fmt::print("{:<16} {:>16} {:>9} {:>10}\n", child.key(), with_commas(count), dtype,
               grad == count ? "yes"
               : grad == 0   ? "no"
                             : "partly");
    total += count, trainable += grad;
  }
  for (const auto& item : model->named_parameters(/*recurse=*/false)) {
    const auto& p = item.value();
    fmt::print("{:<16} {:>16} {:>9} {:>10}\n", item.key(), with_commas(p.numel()), dtype_name(p.scalar_type()),
               p.requires_grad() ? "yes" : "no");
    total += p.numel(), trainable += p.requires_grad() ? p.numel() : 0;
  }
  fmt::print("{:<16} {:>16}\n{:<16} {:>16}\n", "total", with_commas(total), "trainable", with_commas(trainable));

  // What the weights occupy on the device, and what this process holds in host memory
  // after loading (on the CPU that includes the weights).
  const auto bytes = tensor_bytes(*model);
  std::vector<std::string> parts;
  for (const auto& [dtype, n] : bytes.by_dtype) parts.push_back(fmt::format("{} {}", dtype, format_bytes(n)));
  fmt::print("\nmemory: parameters + buffers {} on {} ({})\n", format_bytes(bytes.total), device.str(),
             fmt::join(parts, ", "));
  const auto llm = tensor_bytes(*model->llama_model);
  fmt::print("memory: of which llama_model {}\n", format_bytes(llm.total));
  if (const auto rss = resident_set_bytes(); rss >= 0)
    fmt::print("memory: process resident set {} (peak {})\n", format_bytes(rss),
               format_bytes(peak_resident_set_bytes()));
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto args = std::make_shared<InfoArgs>();
  auto* cmd = app.add_subcommand("info", "Build the model a config describes, load its weights, print each module");
  cmd->add_option("--cfg-path", args->cfg_path, "run config (YAML)")->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "overrides, key=value (e.g. model.ckpt=path)");
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index")->capture_default_str();
  cmd->add_flag("--kernels", args->kernels,
                "print the CPU decode kernels chosen for each weight dtype and why (MINIGPT4_CPU_KERNELS forces them)");
  cmd->add_flag(
      "--measure", args->measure,
      "with --kernels: time every kernel family this CPU runs on the 1.1B LLaMA projection shapes, per dtype");
  cmd->add_flag("--memory", args->memory,
                "print the bytes a MiniGPT-4 holds at the 1.1B, 7B and 13B LLaMA shapes in each LLM weight format");
  cmd->callback([args] { run_info(*args); });
}

}  // namespace minigpt4::apps
