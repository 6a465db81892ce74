#pragma once
// LAVIS' init_distributed_mode for this runner: from the launcher's environment and the
// run: section (distributed, dist_url, dist_backend, dist_timeout), the process group this
// process joins, or none when it runs alone.
#include <c10/core/Device.h>

#include <memory>
#include <optional>

namespace minigpt4 {
struct DistributedSettings;
}

namespace minigpt4::distributed {

class Group;
struct LaunchEnvironment;

// The CUDA device a launched rank uses: LOCAL_RANK (as LAVIS reads it), else --gpu-id.
int gpu_for_rank(const std::optional<LaunchEnvironment>& env, int gpu_id_option);

// Null for a single process: no launcher variables, or a world of one. Several ranks with
// run.distributed False is an error (each would train alone on part of the data). Logs
// from ranks other than 0 are limited to warnings and errors from here on.
std::shared_ptr<Group> init_distributed(const DistributedSettings& settings,
                                        const std::optional<LaunchEnvironment>& env, c10::Device device);

}  // namespace minigpt4::distributed
