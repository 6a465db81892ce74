// Data-parallel gradients over a real Gloo process group whose ranks are threads of this
// process sharing one HashStore: the reduced gradients equal the mean of what each rank
// computes alone, with several buckets, accumulation, unused parameters and a broadcast.
#include <catch2/catch.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/distributed/grad_sync.h"
#include "minigpt4/distributed/group.h"

#include <functional>
#include <thread>

using namespace minigpt4;

namespace {

// Runs fn(rank, group) on `world` threads, each a rank of one Gloo group; rethrows the
// first rank's exception.
void run_ranks(int world, const std::function<void(int, distributed::Group&)>& fn,
               std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        auto group = distributed::Group::over_store(store, r, world, torch::kCPU, {"gloo", timeout});
        fn(r, *group);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Three layers; `skip_last` leaves the last one out of the graph (an unused parameter).
struct Net : torch::nn::Module {
  Net() {
    torch::manual_seed(7);
    a = register_module("a", torch::nn::Linear(6, 5));
    b = register_module("b", torch::nn::Linear(5, 4));
    c = register_module("c", torch::nn::Linear(4, 3));
  }
  torch::Tensor loss(const torch::Tensor& x, bool skip_last = false) {
    auto h = torch::tanh(b(torch::tanh(a(x))));
    return skip_last ? h.pow(2).mean() : c(h).pow(2).mean();
  }
  std::vector<std::pair<std::string, torch::Tensor>> named() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& item : named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }
  torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr};
};

torch::Tensor batch_for(int rank, int micro) {
  torch::manual_seed(100 + rank * 10 + micro);
  return torch::randn({3, 6});
}

// What each parameter's gradient should be: the mean over ranks of each rank's own
// accumulated gradient over its micro-batches.
std::vector<torch::Tensor> expected_grads(int world, int micro_batches, int unused_on_rank = -1) {
  std::vector<torch::Tensor> sum;
  for (int r = 0; r < world; ++r) {
    Net net;
    for (int m = 0; m < micro_batches; ++m) net.loss(batch_for(r, m), r == unused_on_rank).backward();
    const auto params = net.parameters();
    for (size_t k = 0; k < params.size(); ++k) {
      auto g = params[k].grad().defined() ? params[k].grad().clone() : torch::zeros_like(params[k]);
      if (sum.size() <= k)
        sum.push_back(g);
      else
        sum[k] += g;
    }
  }
  for (auto& g : sum) g /= world;
  return sum;
}

// Catch2's assertions are not thread-safe: ranks record, the test thread checks.
struct RankResult {
  std::vector<torch::Tensor> grads;
  size_t buckets = 0, started_during_backward = 0;
};

// Each rank's net and batches are made on the test thread: the global RNG is not per thread.
std::vector<RankResult> train_ranks(int world, int micro_batches, size_t bucket_bytes, int unused_on_rank = -1) {
  std::vector<std::unique_ptr<Net>> nets;
  std::vector<std::vector<torch::Tensor>> batches(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    nets.push_back(std::make_unique<Net>());
    for (int m = 0; m < micro_batches; ++m) batches[static_cast<size_t>(r)].push_back(batch_for(r, m));
  }
  std::vector<RankResult> results(static_cast<size_t>(world));
  run_ranks(world, [&](int rank, distributed::Group& group) {
    auto& net = *nets[static_cast<size_t>(rank)];
    distributed::GradientSync sync(std::shared_ptr<distributed::Group>(&group, [](distributed::Group*) {}), net.named(),
                                   bucket_bytes, bucket_bytes);
    for (int m = 0; m < micro_batches; ++m) {
      sync.begin_backward(/*sync=*/m + 1 == micro_batches);  // accumulate, reduce on the last
      net.loss(batches[static_cast<size_t>(rank)][static_cast<size_t>(m)], rank == unused_on_rank).backward();
      sync.finish_backward();
    }
    auto& out = results[static_cast<size_t>(rank)];
    for (const auto& p : net.parameters()) out.grads.push_back(p.grad().clone());
    out.buckets = sync.bucket_count();
    out.started_during_backward = sync.buckets_started_during_backward();
  });
  return results;
}

void check_grads(const std::vector<RankResult>& results, const std::vector<torch::Tensor>& expected) {
  for (size_t r = 0; r < results.size(); ++r)
    for (size_t k = 0; k < expected.size(); ++k) {
      INFO("rank " << r << ", parameter " << k);
      CHECK(torch::allclose(results[r].grads[k], expected[k], 1e-6, 1e-7));
    }
}

}  // namespace

TEST_CASE("gradient sync: several buckets reduce to the mean of the ranks' gradients", "[distributed]") {
  // A one-byte cap: every parameter its own bucket, so buckets start while backward runs.
  const auto results = train_ranks(2, 1, 1);
  check_grads(results, expected_grads(2, 1));
  CHECK(results[0].buckets == 6);
  CHECK(results[0].started_during_backward >= 1);
}

TEST_CASE("gradient sync: accumulation reduces only on the last micro-batch", "[distributed]") {
  const auto results = train_ranks(2, 2, 25u << 20);
  CHECK(results[0].buckets == 1);
  check_grads(results, expected_grads(2, 2));
}

TEST_CASE("gradient sync: a parameter unused on one rank counts as zero there", "[distributed]") {
  check_grads(train_ranks(2, 1, 64, /*unused_on_rank=*/1), expected_grads(2, 1, /*unused_on_rank=*/1));
}

TEST_CASE("gradient sync: broadcast gives every rank rank 0's values", "[distributed]") {
  std::vector<std::unique_ptr<Net>> nets;
  for (int r = 0; r < 3; ++r) {
    nets.push_back(std::make_unique<Net>());
    torch::NoGradGuard no_grad;
    for (auto& p : nets.back()->parameters()) p.fill_(static_cast<float>(r + 1));
  }
  run_ranks(3, [&](int rank, distributed::Group& group) {
    distributed::GradientSync sync(std::shared_ptr<distributed::Group>(&group, [](distributed::Group*) {}),
                                   nets[rank]->named());
    sync.broadcast_parameters();
  });
  for (auto& net : nets)
    for (auto& p : net->parameters()) CHECK(torch::all(p == 1.0f).item<bool>());
}

TEST_CASE("group: store exchange and the loss average", "[distributed]") {
  std::vector<std::vector<std::string>> gathered(2);
  std::vector<double> sums(2);
  run_ranks(2, [&](int rank, distributed::Group& group) {
    gathered[rank] = group.all_gather_strings("position/1", "rank" + std::to_string(rank));
    auto loss = torch::full({1}, rank == 0 ? 1.0 : 3.0, torch::kFloat64);
    group.all_reduce_sum(loss, "loss");
    sums[rank] = loss.item<double>();
    group.barrier("end");
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(gathered[r] == std::vector<std::string>{"rank0", "rank1"});
    CHECK(sums[r] == 4.0);
  }
}

TEST_CASE("group: a rank that stops arriving fails the collective, named", "[distributed]") {
  std::string message;
  try {
    run_ranks(
        2,
        [&](int rank, distributed::Group& group) {
          group.report_step(1);
          group.barrier("start");
          if (rank == 1) return;  // rank 1 stops taking part (as if it hung)
          group.report_step(5);
          auto x = torch::ones({4});
          group.all_reduce_sum(x, "all-reducing the loss");
        },
        std::chrono::milliseconds(1500));
  } catch (const Error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(message.find("rank 0 of 2: all-reducing the loss failed after step 5") != std::string::npos);
  CHECK(message.find("Rank(s) 1 did not reach this collective (this rank's number 2)") != std::string::npos);
}
