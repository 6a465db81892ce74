#pragma once
// Data-parallel gradients, as PyTorch's DistributedDataParallel computes them: every rank
// back-propagates its own batch, and the trainable parameters' gradients are summed over
// the ranks and divided by their number, so the optimizer steps identically everywhere.
//
// The parameters are packed into buckets in reverse order (the order backward produces
// their gradients; the first bucket about 1 MiB, the others about 25 MiB, DDP's caps).
// A hook after each gradient's accumulation notes it ready; as soon as a bucket is full its
// all-reduce starts, while backward goes on computing earlier layers. Buckets start in the
// same order on every rank, as the collectives require.
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4::distributed {

class Group;

class GradientSync {
 public:
  GradientSync(std::shared_ptr<Group> group, std::vector<std::pair<std::string, at::Tensor>> parameters,
               size_t bucket_bytes = 25u << 20, size_t first_bucket_bytes = 1u << 20);
  ~GradientSync();  // removes the hooks
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // Copies rank 0's parameter values to every rank (DDP does this when it wraps a model),
  // so a freshly initialised trainable layer starts the same everywhere.
  void broadcast_parameters();

  // Before each backward: whether its gradients are reduced. false lets them accumulate
  // locally (the first micro-batches of run.accum_grad_iters; DDP's no_sync).
  void begin_backward(bool sync);
  // After a reducing backward: starts the buckets backward did not fill (parameters that
  // got no gradient count as zero), waits for all, and leaves every .grad the mean over ranks.
  void finish_backward();

  size_t bucket_count() const;
  size_t buckets_started_during_backward() const;  // of the last reducing backward (overlap)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minigpt4::distributed
