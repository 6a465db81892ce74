#include "minigpt4/distributed/backends.h"

#include "minigpt4/common/error.h"

#ifdef MINIGPT4_WITH_CUDA
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace minigpt4::distributed {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                    int world_size, std::chrono::milliseconds timeout) {
#ifdef MINIGPT4_WITH_CUDA
  auto options = c10d::ProcessGroupNCCL::Options::create();
  // NCCL's watchdog aborts a collective that runs longer than this and ends the process.
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
#else
  fail("run.dist_backend nccl: this build's LibTorch has no CUDA (use gloo on the CPU)");
#endif
}

}  // namespace minigpt4::distributed
