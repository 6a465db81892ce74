#pragma once
// The two c10d backends, each built in its own translation unit: their headers need the
// USE_C10D_GLOO / USE_C10D_NCCL switches (and Gloo's or NCCL's own headers) that the rest of
// the project should not see.
#include <c10/util/intrusive_ptr.h>

#include <chrono>

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace minigpt4::distributed {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                    int world_size, std::chrono::milliseconds timeout);
// Fails clearly in a build whose LibTorch has no CUDA.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                    int world_size, std::chrono::milliseconds timeout);

}  // namespace minigpt4::distributed
