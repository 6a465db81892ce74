#include "minigpt4/dist/init.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/dist/environment.h"
#include "minigpt4/dist/group.h"

namespace minigpt4::dist {

int gpu_for_rank(const std::optional<LaunchEnvironment>& env, int gpu_id_option) {
  return env && env->world_size > 1 ? env->local_rank : gpu_id_option;
}

std::shared_ptr<Group> init_distributed(const Config& config, const std::optional<LaunchEnvironment>& env,
                                        c10::Device device) {
  if (!env || env->world_size == 1) {
    if (config.get_bool("run.distributed", false)) log::info("not launched with several ranks: one process, undistributed");
    return nullptr;
  }
  if (!config.get_bool("run.distributed", true))
    fail("launched as rank {} of {} ({}) but run.distributed is False ({}): every rank would train alone on its part "
         "of the data. Set run.distributed: True or start one process.",
         env->rank, env->world_size, env->launcher, config.source_of("run.distributed"));
  LaunchEnvironment where = *env;
  const std::string url = config.get_string("run.dist_url", "env://");
  if (url.rfind("tcp://", 0) == 0) {  // tcp://host:port names the rendezvous instead of MASTER_*
    const auto colon = url.rfind(':');
    if (colon <= 6) fail("run.dist_url '{}' has no port (tcp://host:port)", url);
    where.master_addr = url.substr(6, colon - 6);
    try {
      where.master_port = std::stoi(url.substr(colon + 1));
    } catch (const std::exception&) {
      fail("run.dist_url '{}': the port is not a number", url);
    }
  } else if (url != "env://") {
    fail("run.dist_url must be env:// or tcp://host:port, got '{}' ({})", url, config.source_of("run.dist_url"));
  }
  log::set_rank(env->rank, env->world_size);
  GroupOptions options;
  options.backend = config.get_string("run.dist_backend", "");
  const int64_t timeout_s = config.get_int("run.dist_timeout", 1800);
  if (timeout_s <= 0) fail("run.dist_timeout must be a positive number of seconds, got {}", timeout_s);
  options.timeout = std::chrono::seconds(timeout_s);
  auto group = Group::connect(where, device, options);
  log::info("rank {} of {} ({}; {}:{}; {} backend, timeout {} s)", env->rank, env->world_size, env->launcher,
            where.master_addr, where.master_port, group->backend_name(), timeout_s);
  return group;
}

}  // namespace minigpt4::dist
