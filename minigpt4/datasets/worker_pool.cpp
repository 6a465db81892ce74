#include "minigpt4/datasets/worker_pool.h"

#include "minigpt4/common/error.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

namespace minigpt4::datasets {

void use_single_torch_thread() {
  // The lazy per-thread init would otherwise reset the thread's OpenMP team size later.
  at::internal::lazy_init_num_threads();
#if AT_PARALLEL_OPENMP
  // The calling thread's own setting (an OpenMP per-thread ICV). Looked up in the OpenMP
  // runtime LibTorch already loaded, rather than linked, so any LibTorch build works.
  using SetThreads = void (*)(int);
  static const auto set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set_threads) set_threads(1);
#endif
}

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() { shutdown(); }

void WorkerPool::run(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) fail("WorkerPool: job submitted after shutdown");
    if (!threads_.empty()) {
      jobs_.push_back(std::move(job));
      wake_.notify_one();
      return;
    }
  }
  job();
}

void WorkerPool::shutdown() {
  std::deque<std::function<void()>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    dropped.swap(jobs_);
  }
  wake_.notify_all();
  dropped.clear();  // outside the lock: destroying a job may wake whoever waits on it
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void WorkerPool::work() {
  use_single_torch_thread();
  while (true) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace minigpt4::datasets
