#include "minigpt4/distributed/grad_sync.h"

#include "minigpt4/common/error.h"
#include "minigpt4/distributed/group.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/torch.h>

#include <mutex>

namespace minigpt4::distributed {

struct GradientSync::Impl {
  struct Bucket {
    std::vector<size_t> params;  // indices into `parameters`, in the order packed
    int64_t numel = 0;
    at::Tensor buffer;  // flat; gradients are copied in, reduced, copied back
    size_t ready = 0;   // parameters whose gradient arrived in this backward
    c10::intrusive_ptr<c10d::Work> work;
  };

  std::shared_ptr<Group> group;
  std::vector<std::pair<std::string, at::Tensor>> parameters;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;  // parameter index -> bucket index
  std::vector<bool> param_ready;

  std::mutex mutex;   // hooks may run on the autograd engine's device threads
  bool sync = false;  // this backward reduces
  size_t next_to_start = 0;
  size_t started_during_backward = 0;

  void on_gradient(size_t index);
  void start_ready_buckets(bool all);
  void start(Bucket& bucket);
};

namespace {

// Called by autograd right after a parameter's .grad has been accumulated.
struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  explicit ReadyHook(std::function<void()> on_ready) : on_ready(std::move(on_ready)) {}
  void operator()(const torch::autograd::Variable&) override { on_ready(); }
  std::function<void()> on_ready;
};

}  // namespace

GradientSync::GradientSync(std::shared_ptr<Group> group, std::vector<std::pair<std::string, at::Tensor>> parameters,
                           size_t bucket_bytes, size_t first_bucket_bytes)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.group = std::move(group);
  s.parameters = std::move(parameters);
  s.bucket_of.resize(s.parameters.size());
  s.param_ready.assign(s.parameters.size(), false);
  // Reverse order; a bucket also ends where dtype changes (one flat buffer per bucket).
  for (size_t k = s.parameters.size(); k-- > 0;) {
    const auto& p = s.parameters[k].second;
    if (!p.requires_grad()) fail("data-parallel gradients: '{}' does not require a gradient", s.parameters[k].first);
    if (p.device() != s.group->device())
      fail("data-parallel gradients: '{}' lives on {} but the process group reduces on {}", s.parameters[k].first,
           p.device().str(), s.group->device().str());
    const size_t cap = s.buckets.size() <= 1 ? first_bucket_bytes : bucket_bytes;
    const bool start_new = s.buckets.empty() ||
                           s.parameters[s.buckets.back().params.front()].second.scalar_type() != p.scalar_type() ||
                           static_cast<size_t>(s.buckets.back().numel) * p.element_size() >= cap;
    if (start_new) s.buckets.emplace_back();
    auto& bucket = s.buckets.back();
    bucket.params.push_back(k);
    bucket.numel += p.numel();
    s.bucket_of[k] = s.buckets.size() - 1;
  }
  for (auto& bucket : s.buckets) {
    const auto& first = s.parameters[bucket.params.front()].second;
    bucket.buffer = torch::zeros({bucket.numel}, first.options().requires_grad(false));
  }
  for (size_t k = 0; k < s.parameters.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(
        s.parameters[k].second, std::make_unique<ReadyHook>([impl = impl_.get(), k] { impl->on_gradient(k); }));
}

GradientSync::~GradientSync() {
  for (auto& [name, p] : impl_->parameters) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientSync::broadcast_parameters() {
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : impl_->parameters) {
    auto value = p.detach();
    impl_->group->broadcast(value, 0, "broadcasting '" + name + "' from rank 0");
  }
}

void GradientSync::begin_backward(bool sync) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->sync = sync;
  impl_->next_to_start = 0;
  impl_->started_during_backward = 0;
  std::fill(impl_->param_ready.begin(), impl_->param_ready.end(), false);
  for (auto& bucket : impl_->buckets) bucket.ready = 0, bucket.work.reset();
}

void GradientSync::Impl::on_gradient(size_t index) {
  std::lock_guard<std::mutex> lock(mutex);
  if (!sync || param_ready[index]) return;
  param_ready[index] = true;
  auto& bucket = buckets[bucket_of[index]];
  if (++bucket.ready == bucket.params.size()) {
    const size_t before = next_to_start;
    start_ready_buckets(/*all=*/false);
    started_during_backward += next_to_start - before;
  }
}

// Starts buckets in index order, stopping at the first one not yet full (unless `all`).
void GradientSync::Impl::start_ready_buckets(bool all) {
  while (next_to_start < buckets.size()) {
    auto& bucket = buckets[next_to_start];
    if (!all && bucket.ready < bucket.params.size()) break;
    start(bucket);
    ++next_to_start;
  }
}

void GradientSync::Impl::start(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (size_t k : bucket.params) {
    const auto& p = parameters[k].second;
    auto slice = bucket.buffer.narrow(0, offset, p.numel());
    if (p.grad().defined())
      slice.copy_(p.grad().reshape({-1}));
    else
      slice.zero_();  // no gradient on this rank this time: it contributes zero
    offset += p.numel();
  }
  bucket.work = group->all_reduce_sum_async(bucket.buffer);
}

void GradientSync::finish_backward() {
  auto& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.sync) return;
    s.start_ready_buckets(/*all=*/true);
    s.sync = false;
  }
  torch::NoGradGuard no_grad;
  const double inv_world = 1.0 / static_cast<double>(s.group->world_size());
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    auto& bucket = s.buckets[b];
    s.group->wait(bucket.work, fmt::format("all-reducing gradient bucket {} of {}", b + 1, s.buckets.size()));
    bucket.work.reset();
    bucket.buffer.mul_(inv_world);
    int64_t offset = 0;
    for (size_t k : bucket.params) {
      auto& p = s.parameters[k].second;
      auto mean = bucket.buffer.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();
      offset += p.numel();
    }
  }
}

size_t GradientSync::bucket_count() const { return impl_->buckets.size(); }
size_t GradientSync::buckets_started_during_backward() const { return impl_->started_during_backward; }

}  // namespace minigpt4::distributed
