#include "minigpt4/distributed/init.h"

#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/distributed/environment.h"
#include "minigpt4/distributed/group.h"

namespace minigpt4::distributed {

int gpu_for_rank(const std::optional<LaunchEnvironment>& env, int gpu_id_option) {
  return env && env->world_size > 1 ? env->local_rank : gpu_id_option;
}

std::shared_ptr<Group> init_distributed(const DistributedSettings& settings,
                                        const std::optional<LaunchEnvironment>& env, c10::Device device) {
  if (!env || env->world_size == 1) {
    if (settings.distributed.value_or(false)) log::info("not launched with several ranks: one process, undistributed");
    return nullptr;
  }
  if (!settings.distributed.value_or(true))
    fail(
        "launched as rank {} of {} ({}) but run.distributed is False: every rank would train alone on its part "
        "of the data. Set run.distributed: True or start one process.",
        env->rank, env->world_size, env->launcher);
  LaunchEnvironment where = *env;
  const std::string& url = settings.dist_url;
  if (url.rfind("tcp://", 0) == 0) {    // tcp://host:port names the rendezvous instead of MASTER_*
    const auto colon = url.rfind(':');  // RunSettings checked the form
    where.master_addr = url.substr(6, colon - 6);
    where.master_port = std::stoi(url.substr(colon + 1));
  }
  log::set_rank(env->rank, env->world_size);
  GroupOptions options;
  options.backend = settings.dist_backend;
  const int64_t timeout_s = settings.dist_timeout_s;
  options.timeout = std::chrono::seconds(timeout_s);
  auto group = Group::connect(where, device, options);
  log::info("rank {} of {} ({}; {}:{}; {} backend, timeout {} s)", env->rank, env->world_size, env->launcher,
            where.master_addr, where.master_port, group->backend_name(), timeout_s);
  return group;
}

}  // namespace minigpt4::distributed
