// ProcessGroupGloo's header includes Gloo's own headers. LibTorch has Gloo compiled in but
// does not ship them; Debian's libgloo-dev provides them. Only pointers to Gloo types cross
// this boundary, so the header version does not change any layout this file relies on.
#define USE_C10D_GLOO 1
#include "minigpt4/distributed/backends.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace minigpt4::distributed {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                    int world_size, std::chrono::milliseconds timeout) {
  // The device Python's init_process_group picks: GLOO_SOCKET_IFNAME's interface if set,
  // else the address this host's name resolves to (loopback as the last resort).
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

}  // namespace minigpt4::distributed
