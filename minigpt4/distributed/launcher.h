#pragma once
// `minigpt4 launch`: torchrun's job for users without Python. On each machine it starts
// nproc_per_node processes of this binary with the variables torchrun sets (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) and
// watches them: when one fails, the others are stopped (SIGTERM, then SIGKILL after a
// grace period) and the launcher exits with the failed rank's status, naming it. A rank
// that hangs makes the others' collectives time out (run.dist_timeout), which ends the job
// the same way. Ctrl-C and SIGTERM given to the launcher are passed on to the ranks.
#include <chrono>
#include <string>
#include <vector>

namespace minigpt4::distributed {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";  // the machine of node 0, reachable from every node
  int master_port = 29500;
  std::chrono::milliseconds stop_grace = std::chrono::seconds(10);  // SIGTERM -> SIGKILL
  std::string program;                 // the binary each rank runs (this one: /proc/self/exe)
  std::vector<std::string> arguments;  // its arguments, e.g. {"train", "--cfg-path", "..."}
};

// Runs the ranks of this node to the end; returns the exit status for the launcher: 0 when
// every rank succeeded, else the first failure's exit code (128 + signal when killed).
int launch_ranks(const LaunchOptions& options);

}  // namespace minigpt4::distributed
