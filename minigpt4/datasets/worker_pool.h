#pragma once
// A fixed set of threads running queued jobs in submission order.
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace minigpt4::datasets {

// Makes LibTorch run single-threaded on the calling thread. Input-pipeline threads call it
// first: with OpenMP, every thread that enters a parallel region gets its own team, and
// those teams spin-wait between regions, so a few pipeline threads next to the training
// thread's team oversubscribe the cores and slow the step several-fold. The training
// thread keeps its intra-op threads.
void use_single_torch_thread();

class WorkerPool {
 public:
  explicit WorkerPool(int threads);  // 0 threads: run() executes the job at once, on the caller
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `job`; after shutdown() it throws Error instead.
  void run(std::function<void()> job);

  // Drops the jobs not yet started (destroying them, so a packaged_task's future reports
  // broken_promise) and waits for the running ones to finish.
  void shutdown();

 private:
  void work();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace minigpt4::datasets
