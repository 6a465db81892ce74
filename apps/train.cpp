// `minigpt4 train --cfg-path FILE [--options k=v ...] [--gpu-id N]`: MiniGPT-4's train.py.
// Under torchrun or `minigpt4 launch` each process is one rank of a data-parallel job.
#include "apps/commands.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/distributed/environment.h"
#include "minigpt4/distributed/group.h"
#include "minigpt4/distributed/init.h"
#include "minigpt4/train/trainer.h"

namespace minigpt4::apps {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string cfg_path;
    std::vector<std::string> options;
    int gpu_id = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("train", "Train (stage 1 / stage 2) as the config's run: section says");
  cmd->add_option("--cfg-path", args->cfg_path, "run config (YAML)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "overrides, key=value (e.g. run.init_lr=1e-5 model.ckpt=path)");
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index (run.device: cuda); launched ranks use LOCAL_RANK")
      ->capture_default_str();
  cmd->callback([args] {
    const auto config = Config::load(args->cfg_path, args->options);
    apply_input_limits(config);  // limits.*: what input files may make us allocate
    const auto launch = distributed::launch_environment_from_env();
    const RunSettings run = RunSettings::from_config(config);
    train::TrainOptions options;
    options.device = select_device(run.device, distributed::gpu_for_rank(launch, args->gpu_id));
    options.group = distributed::init_distributed(run.distributed, launch, options.device);
    log::info("device: {}", describe_device(options.device));
    const auto result = train::run_training(config, options);
    log::info("done: {} steps, loss {:.4f} -> {:.4f}; last checkpoint {}", result.global_step, result.first_loss,
              result.last_loss, result.last_checkpoint);
  });
}

}  // namespace minigpt4::apps
