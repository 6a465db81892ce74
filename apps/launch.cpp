// `minigpt4 launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A
// --master-port P] -- train --cfg-path ...`: starts and watches the ranks of a distributed
// job on this machine, as `torchrun --no-python minigpt4 ...` would.
#include "apps/commands.h"
#include "minigpt4/distributed/launcher.h"

#include <cstdlib>

namespace minigpt4::apps {

void add_launch_command(CLI::App& app) {
  auto options = std::make_shared<distributed::LaunchOptions>();
  auto* cmd = app.add_subcommand("launch", "Start the ranks of a distributed job on this machine (like torchrun)");
  cmd->add_option("--nproc-per-node", options->nproc_per_node, "ranks on this machine (one per GPU)")
      ->capture_default_str();
  cmd->add_option("--nnodes", options->nnodes, "machines in the job")->capture_default_str();
  cmd->add_option("--node-rank", options->node_rank, "this machine's index, 0..nnodes-1")->capture_default_str();
  cmd->add_option("--master-addr", options->master_addr, "address of node 0 (hosts the rendezvous)")
      ->capture_default_str();
  cmd->add_option("--master-port", options->master_port, "free TCP port on node 0")->capture_default_str();
  auto grace_s = std::make_shared<int>(10);
  cmd->add_option("--stop-grace", *grace_s, "seconds between SIGTERM and SIGKILL when stopping the ranks")
      ->capture_default_str();
  // Everything after the launcher's options is the command each rank runs: CLI11 stops
  // parsing at its first word (main() drops the `--` users may put before it).
  cmd->prefix_command();
  cmd->callback([options, cmd, grace_s] {
    options->arguments = cmd->remaining();
    options->program = "/proc/self/exe";
    options->stop_grace = std::chrono::seconds(*grace_s);
    const int code = distributed::launch_ranks(*options);
    if (code != 0) std::exit(code);
  });
}

}  // namespace minigpt4::apps
