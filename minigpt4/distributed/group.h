#pragma once
// The ranks of one job, connected through PyTorch's own distributed engine (c10d): a
// TCPStore for the rendezvous and small exchanges, and a ProcessGroupGloo (CPU tensors) or
// ProcessGroupNCCL (CUDA tensors) for the collectives. Everything here is collective: every
// rank calls the same functions in the same order.
//
// A collective that fails (a peer died, or did not arrive within the timeout) throws an
// Error that names the ranks which stopped making progress, as far as the store tells.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Store;
class Work;
}  // namespace c10d

namespace minigpt4::distributed {

struct LaunchEnvironment;

struct GroupOptions {
  std::string backend;  // "gloo" or "nccl"; empty: nccl for CUDA devices, gloo for the CPU
  // A rendezvous or collective waiting longer than this fails (PyTorch's default is 30 min).
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
};

class Group {
 public:
  // Meets the other ranks at env.master_addr:master_port. Rank 0 hosts the store, unless
  // torchrun's agent already does (then every rank is a client).
  static std::shared_ptr<Group> connect(const LaunchEnvironment& env, c10::Device device, const GroupOptions& options);
  // Over a store the caller made (tests run ranks as threads sharing one HashStore).
  static std::shared_ptr<Group> over_store(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size,
                                           c10::Device device, const GroupOptions& options);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int world_size() const;
  c10::Device device() const;               // where collective tensors must live
  const std::string& backend_name() const;  // "gloo" or "nccl"

  // Sum over ranks in place; the async form starts it now and wait() finishes it. `what`
  // names the operation in an error message.
  c10::intrusive_ptr<c10d::Work> all_reduce_sum_async(at::Tensor& tensor);
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
  void all_reduce_sum(at::Tensor& tensor, const std::string& what);
  void broadcast(at::Tensor& tensor, int root, const std::string& what);
  void barrier(const std::string& what);
  // Every rank's `mine`, in rank order, exchanged through the store (small strings such as
  // data-loader positions). `key` must be new for each call (e.g. carry the step).
  std::vector<std::string> all_gather_strings(const std::string& key, const std::string& mine);

  // Records that this rank reached `step`; failure messages compare the ranks' last steps.
  void report_step(int64_t step);

 private:
  struct Impl;
  explicit Group(std::unique_ptr<Impl> impl);
  [[noreturn]] void fail_collective(const std::string& what, const std::string& cause);
  std::unique_ptr<Impl> impl_;
};

}  // namespace minigpt4::distributed
