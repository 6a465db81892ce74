#pragma once
// Who this process is in a distributed job, as its launcher says in the environment:
// torchrun and `minigpt4 launch` set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT; SLURM's srun sets SLURM_PROCID, SLURM_NTASKS and
// SLURM_LOCALID (LAVIS' init_distributed_mode reads the same two sources, in that order).
#include <optional>
#include <string>

namespace minigpt4::distributed {

struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;                     // the process's index on its machine: its GPU
  int local_world_size = 1;               // processes on this machine (0: unknown)
  std::string master_addr = "127.0.0.1";  // where the rendezvous store listens
  int master_port = 29500;
  // torchrun's agent already hosts the store at MASTER_ADDR:MASTER_PORT, so every rank,
  // rank 0 included, connects as a client (TORCHELASTIC_USE_AGENT_STORE=True).
  bool agent_hosts_store = false;
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: keys of a restarted job do not collide
  std::string launcher;   // "torchrun/launch" or "slurm", for the log
};

// The environment's launch variables, or nullopt when none are set (a plain single
// process). Partial or invalid values (RANK without WORLD_SIZE, RANK >= WORLD_SIZE, a port
// that is not a number) are errors naming the variable.
std::optional<LaunchEnvironment> launch_environment_from_env();

}  // namespace minigpt4::distributed
