#include "minigpt4/distributed/group.h"

#include "minigpt4/common/error.h"
#include "minigpt4/distributed/backends.h"
#include "minigpt4/distributed/environment.h"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/torch.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace minigpt4::distributed {

struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;  // the job's keys live under our own prefix
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0, world_size = 1;
  c10::Device device = c10::kCPU;
  std::string backend_name;
  std::chrono::milliseconds timeout{0};
  int64_t last_step = -1;
  int64_t collectives = 0;  // collectives this rank has started, also kept in the store

  // Counted before each collective starts: after a failure, a rank whose count is lower
  // never arrived at the one that failed.
  void count_collective() {
    ++collectives;
    store->set("collectives/" + std::to_string(rank), std::to_string(collectives));
  }

  // A heartbeat: a counter in the store that a thread advances every second. A rank that
  // is stopped, dead or cut off stops advancing it, even inside a collective, where the
  // collective counts cannot tell which rank is missing.
  std::thread heartbeat;
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_stop;
  bool stopping = false;

  void start_heartbeat() {
    heartbeat = std::thread([this] {
      const std::string key = "heartbeat/" + std::to_string(rank);
      std::unique_lock<std::mutex> lock(heartbeat_mutex);
      for (int64_t beat = 1; !stopping; ++beat) {
        try {
          store->set(key, std::to_string(beat));
        } catch (const std::exception&) {
          return;  // the store is gone; the failure shows up in the next collective
        }
        heartbeat_stop.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
      }
    });
  }
  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      stopping = true;
    }
    heartbeat_stop.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

namespace {

std::string what_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

}  // namespace

std::shared_ptr<Group> Group::connect(const LaunchEnvironment& env, c10::Device device, const GroupOptions& options) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0 && !env.agent_hosts_store;
  // Every rank counts itself in; the host waits until all have.
  store_options.numWorkers = env.world_size;
  store_options.timeout = options.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    fail(
        "rank {} of {}: the rendezvous at {}:{} failed ({}): {}. Check MASTER_ADDR/MASTER_PORT, that rank 0 runs, "
        "and that the port is free on its machine.",
        env.rank, env.world_size, env.master_addr, env.master_port,
        store_options.isServer ? "hosting the store" : "connecting to the store", what_of(e));
  }
  // Keys of a restarted attempt (torchrun --max-restarts) must not meet the old ones.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(fmt::format("minigpt4/attempt_{}/", env.restart_count), store);
  return over_store(prefixed, env.rank, env.world_size, device, options);
}

std::shared_ptr<Group> Group::over_store(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size,
                                         c10::Device device, const GroupOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->store = std::move(store);
  impl->rank = rank, impl->world_size = world_size, impl->device = device, impl->timeout = options.timeout;
  impl->backend_name = options.backend.empty() ? (device.is_cuda() ? "nccl" : "gloo") : options.backend;
  if (impl->backend_name == "nccl" && !device.is_cuda())
    fail("run.dist_backend nccl needs run.device cuda (NCCL reduces CUDA tensors); use gloo on the CPU");
  auto pg_store = c10::make_intrusive<c10d::PrefixStore>("pg/", impl->store);
  try {
    if (impl->backend_name == "gloo")
      impl->backend = make_gloo_backend(pg_store, rank, world_size, options.timeout);
    else if (impl->backend_name == "nccl")
      impl->backend = make_nccl_backend(pg_store, rank, world_size, options.timeout);
    else
      fail("run.dist_backend must be gloo or nccl, got '{}'", impl->backend_name);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("rank {} of {}: cannot connect the {} process group: {}", rank, world_size, impl->backend_name, what_of(e));
  }
  impl->start_heartbeat();
  return std::shared_ptr<Group>(new Group(std::move(impl)));
}

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Group::~Group() = default;

int Group::rank() const { return impl_->rank; }
int Group::world_size() const { return impl_->world_size; }
c10::Device Group::device() const { return impl_->device; }
const std::string& Group::backend_name() const { return impl_->backend_name; }

c10::intrusive_ptr<c10d::Work> Group::all_reduce_sum_async(at::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  try {
    impl_->count_collective();
    return impl_->backend->allreduce(tensors, c10d::AllreduceOptions{});
  } catch (const std::exception& e) {
    fail_collective("all_reduce", what_of(e));
  }
}

void Group::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    fail_collective(what, what_of(e));
  }
}

void Group::all_reduce_sum(at::Tensor& tensor, const std::string& what) { wait(all_reduce_sum_async(tensor), what); }

void Group::broadcast(at::Tensor& tensor, int root, const std::string& what) {
  std::vector<at::Tensor> tensors{tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  c10::intrusive_ptr<c10d::Work> work;
  try {
    impl_->count_collective();
    work = impl_->backend->broadcast(tensors, options);
  } catch (const std::exception& e) {
    fail_collective(what, what_of(e));
  }
  wait(work, what);
}

void Group::barrier(const std::string& what) {
  // An all-reduce of one number works the same on Gloo and NCCL (NCCL's own barrier must
  // guess the device).
  auto token = torch::zeros({1}, torch::TensorOptions().device(impl_->device));
  all_reduce_sum(token, "barrier (" + what + ")");
}

std::vector<std::string> Group::all_gather_strings(const std::string& key, const std::string& mine) {
  const std::string base = "gather/" + key + "/";
  std::vector<std::string> all(static_cast<size_t>(impl_->world_size));
  try {
    impl_->store->set(base + std::to_string(impl_->rank), mine);
    for (int r = 0; r < impl_->world_size; ++r) {
      const auto bytes = impl_->store->get(base + std::to_string(r));  // waits up to the timeout
      all[static_cast<size_t>(r)].assign(bytes.begin(), bytes.end());
    }
  } catch (const std::exception& e) {
    fail_collective("exchanging '" + key + "' through the store", what_of(e));
  }
  return all;
}

void Group::report_step(int64_t step) {
  impl_->last_step = step;
  try {
    impl_->store->set("step/" + std::to_string(impl_->rank), std::to_string(step));
  } catch (const std::exception& e) {
    fail_collective("reporting progress to the store", what_of(e));
  }
}

void Group::fail_collective(const std::string& what, const std::string& cause) {
  // Which ranks stopped? The store (on rank 0 or torchrun's agent) holds each rank's
  // collective count, last finished step and heartbeat; it is unreachable when its host died.
  std::string diagnosis;
  try {
    impl_->store->setTimeout(std::chrono::milliseconds(2000));
    auto read = [&](const std::string& prefix, int r) -> int64_t {
      const std::string key = prefix + std::to_string(r);
      if (!impl_->store->check({key})) return -1;
      const auto bytes = impl_->store->get(key);
      return std::stoll(std::string(bytes.begin(), bytes.end()));
    };
    std::vector<int64_t> beats_before;
    for (int r = 0; r < impl_->world_size; ++r) beats_before.push_back(read("heartbeat/", r));
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    std::vector<std::string> silent, absent, steps;
    for (int r = 0; r < impl_->world_size; ++r) {
      steps.push_back(fmt::format("rank {}: {}", r, read("step/", r)));
      if (r != impl_->rank && read("heartbeat/", r) == beats_before[static_cast<size_t>(r)])
        silent.push_back(std::to_string(r));
      if (read("collectives/", r) < impl_->collectives) absent.push_back(std::to_string(r));
    }
    diagnosis = fmt::format(" Last step finished by each rank: {}.", fmt::join(steps, ", "));
    if (!silent.empty())
      diagnosis += fmt::format(" Rank(s) {} stopped responding (no heartbeat for 2.5 s): stopped, dead or cut off.",
                               fmt::join(silent, ", "));
    if (!absent.empty())
      diagnosis += fmt::format(" Rank(s) {} did not reach this collective (this rank's number {}): they died or hang.",
                               fmt::join(absent, ", "), impl_->collectives);
    if (silent.empty() && absent.empty())
      diagnosis += " Every rank is alive and reached it: the connection between them failed.";
  } catch (const std::exception&) {
    diagnosis = " The rendezvous store is unreachable too: its host (rank 0, or torchrun's agent) has died.";
  }
  fail("rank {} of {}: {} failed after step {}: {}.{}", impl_->rank, impl_->world_size, what, impl_->last_step, cause,
       diagnosis);
}

}  // namespace minigpt4::distributed
