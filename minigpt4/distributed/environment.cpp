#include "minigpt4/distributed/environment.h"

#include "minigpt4/common/error.h"

#include <cstdlib>

namespace minigpt4::distributed {

namespace {

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value && *value ? value : nullptr;
}

int env_int(const char* name, int fallback, int min_value) {
  const char* text = env(name);
  if (!text) return fallback;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value < min_value || value > 1 << 30)
    fail("environment variable {}='{}' is not an integer >= {}", name, text, min_value);
  return static_cast<int>(value);
}

void check_rank(const LaunchEnvironment& e, const char* rank_var, const char* size_var) {
  if (e.rank >= e.world_size) fail("{}={} is not below {}={}", rank_var, e.rank, size_var, e.world_size);
  if (e.local_rank >= e.local_world_size && e.local_world_size > 0)
    fail("the local rank {} is not below the processes on this machine ({})", e.local_rank, e.local_world_size);
}

}  // namespace

std::optional<LaunchEnvironment> launch_environment_from_env() {
  LaunchEnvironment e;
  if (env("RANK") || env("WORLD_SIZE")) {
    if (!env("RANK") || !env("WORLD_SIZE"))
      fail("RANK and WORLD_SIZE must be set together (found only {})", env("RANK") ? "RANK" : "WORLD_SIZE");
    e.launcher = "torchrun/launch";
    e.rank = env_int("RANK", 0, 0);
    e.world_size = env_int("WORLD_SIZE", 1, 1);
    e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
    e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1);
    e.agent_hosts_store =
        env("TORCHELASTIC_USE_AGENT_STORE") && std::string(env("TORCHELASTIC_USE_AGENT_STORE")) == "True";
    e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0);
    if (e.world_size > 1 && (!env("MASTER_ADDR") || !env("MASTER_PORT")))
      fail("WORLD_SIZE={} but MASTER_ADDR/MASTER_PORT are not set: the ranks cannot meet", e.world_size);
    check_rank(e, "RANK", "WORLD_SIZE");
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    // srun starts every task itself; MASTER_ADDR is the job's first node (docs/distributed.md).
    e.launcher = "slurm";
    e.rank = env_int("SLURM_PROCID", 0, 0);
    e.world_size = env_int("SLURM_NTASKS", 1, 1);
    e.local_rank = env_int("SLURM_LOCALID", 0, 0);
    e.local_world_size = 0;  // unknown: SLURM_NTASKS_PER_NODE may read "2(x3)"
    if (e.world_size > 1 && !env("MASTER_ADDR"))
      fail("SLURM_NTASKS={} but MASTER_ADDR is not set: export the first node's name (see docs/distributed.md)",
           e.world_size);
    check_rank(e, "SLURM_PROCID", "SLURM_NTASKS");
  } else {
    return std::nullopt;
  }
  if (env("MASTER_ADDR")) e.master_addr = env("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", e.master_port, 1);
  if (e.master_port > 65535) fail("MASTER_PORT={} is not a TCP port", e.master_port);
  return e;
}

}  // namespace minigpt4::distributed
