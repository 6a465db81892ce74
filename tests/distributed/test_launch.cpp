// Real multi-process data-parallel training of the tiny fixture model on the CPU (Gloo):
// 2 ranks with batch B equal 1 rank with batch 2B, through `minigpt4 launch` and through
// `torchrun --no-python`; a rank that is killed, or hangs, ends the whole job with a
// message naming it.
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/train/metrics.h"
#include "tests/support/fixtures.h"
#include "tests/support/processes.h"
#include "tests/support/skip.h"

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <thread>

using namespace minigpt4;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

using test::Child;  // tests/support/processes.h, shared with the `minigpt4 evaluate` tests
using test::free_port;
using test::Scratch;

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

// Eight different pictures that share one caption: every sample has the same number of
// target tokens, so the mean of two ranks' mean losses is the mean loss of their union
// (the split changes nothing but the summation order).
fs::path make_dataset(const fs::path& root) {
  fs::create_directories(root / "image");
  nlohmann::json annotations = nlohmann::json::array();
  for (int i = 0; i < 8; ++i) {
    cv::Mat image(64, 64, CV_8UC3, cv::Scalar(30 * i, 255 - 30 * i, (70 * i) % 255));
    cv::circle(image, {10 + 6 * i, 32}, 8 + i, cv::Scalar(255, 255, 255), cv::FILLED);
    cv::imwrite((root / "image" / (std::to_string(i) + ".jpg")).string(), image);
    annotations.push_back({{"image_id", std::to_string(i)}, {"caption", "a round shape on a plain background."}});
  }
  std::ofstream(root / "filter_cap.json") << nlohmann::json{{"annotations", annotations}}.dump();
  std::ofstream(root / "prompts.txt") << "<Img><ImageHere></Img> Describe this image.\n";
  return root;
}

std::vector<std::string> train_args(const fs::path& data, const fs::path& output, int batch, int epochs,
                                    std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"train",
                                   "--cfg-path",
                                   (test::source_dir() / "configs/tiny_vicuna0.yaml").string(),
                                   "--options",
                                   "model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
                                   "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
                                   "model.llama_model=" + (tiny() / "vicuna").string(),
                                   "model.ckpt=",
                                   "model.max_txt_len=32",
                                   "model.prompt_path=" + (data / "prompts.txt").string(),
                                   "datasets.cc_sbu_align.build_info.storage=" + data.string(),
                                   "datasets.cc_sbu_align.vis_processor.train.name=blip2_image_eval",
                                   "datasets.cc_sbu_align.vis_processor.train.image_size=56",
                                   "run.lr_sched=linear_warmup_cosine_lr",
                                   "run.init_lr=1e-3",
                                   "run.min_lr=1e-4",
                                   "run.warmup_lr=1e-4",
                                   "run.warmup_steps=2",
                                   "run.weight_decay=0.05",
                                   "run.max_epoch=" + std::to_string(epochs),
                                   "run.iters_per_epoch=4",
                                   "run.batch_size_train=" + std::to_string(batch),
                                   "run.num_workers=1",
                                   "run.seed=7",
                                   "run.log_freq=1",
                                   "run.device=cpu",
                                   "run.distributed=True",
                                   "run.output_dir=" + output.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::vector<std::string> with_launcher(std::vector<std::string> launcher, const std::vector<std::string>& args) {
  launcher.insert(launcher.end(), args.begin(), args.end());
  return launcher;
}

std::vector<std::string> launch(int nproc) {
  return {MINIGPT4_BINARY,
          "launch",
          "--nproc-per-node",
          std::to_string(nproc),
          "--master-port",
          free_port(),
          "--stop-grace",
          "3",
          "--"};
}

std::vector<double> losses(const fs::path& output) {
  std::vector<double> out;
  for (const auto& r : train::read_metrics_log((output / "metrics.jsonl").string())) out.push_back(r.loss);
  return out;
}

torch::Tensor projector(const fs::path& output, int epoch) {
  return io::load_state_dict((output / ("checkpoint_" + std::to_string(epoch) + ".pth")).string())
      .at("llama_proj.weight");
}

// Runs to the end; returns the output, failing the test on a non-zero exit.
std::string run_ok(const std::vector<std::string>& argv) {
  Child child(argv);
  const auto status = child.wait_for(std::chrono::seconds(300));
  const auto output = child.output();
  INFO(output);
  REQUIRE(status.has_value());
  REQUIRE(*status == 0);
  return output;
}

void check_same_training(const fs::path& one, const fs::path& two) {
  const auto a = losses(one), b = losses(two);
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == a.size());
  for (size_t k = 0; k < a.size(); ++k) {
    INFO("step " << k + 1 << ": 1 rank " << a[k] << ", 2 ranks " << b[k]);
    CHECK(std::abs(a[k] - b[k]) <= 1e-5 * std::max(1.0, std::abs(a[k])));
  }
  const auto p1 = projector(one, 1), p2 = projector(two, 1);
  const double max_diff = (p1 - p2).abs().max().item<double>();
  INFO("max |projector difference| " << max_diff << ", max |weight| " << p1.abs().max().item<double>());
  CHECK(max_diff < 1e-5);
  CHECK((p1 - projector(one, 0)).abs().max().item<double>() > 1e-3);  // it did train
}

}  // namespace

TEST_CASE("distributed: 2 ranks with batch B train exactly as 1 rank with batch 2B", "[distributed]") {
  Scratch tmp("dist_equal");
  const auto data = make_dataset(tmp.path() / "data");
  run_ok(with_launcher({MINIGPT4_BINARY}, train_args(data, tmp.path() / "one", 4, 2)));

  SECTION("through minigpt4 launch") {
    const auto output = run_ok(with_launcher(launch(2), train_args(data, tmp.path() / "two", 2, 2)));
    CHECK(output.find("data parallel over 2 ranks (gloo)") != std::string::npos);
    CHECK(output.find("[rank 1][info]") == std::string::npos);  // only rank 0 logs
    check_same_training(tmp.path() / "one", tmp.path() / "two");
  }
}

TEST_CASE("distributed: 2 ranks through torchrun --no-python train exactly as 1 rank with batch 2B",
          "[distributed][conditional][needs_torchrun]") {
  const std::string torchrun = std::string(MINIGPT4_VENV_BIN) + "/torchrun";
  if (access(torchrun.c_str(), X_OK) != 0) {
    test::skip_test("no torchrun at " + torchrun);
    return;
  }
  Scratch tmp("dist_torchrun");
  const auto data = make_dataset(tmp.path() / "data");
  run_ok(with_launcher({MINIGPT4_BINARY}, train_args(data, tmp.path() / "one", 4, 2)));
  run_ok(
      with_launcher({torchrun, "--nproc-per-node", "2", "--master-port", free_port(), "--no-python", MINIGPT4_BINARY},
                    train_args(data, tmp.path() / "torchrun", 2, 2)));
  check_same_training(tmp.path() / "one", tmp.path() / "torchrun");
}

TEST_CASE("distributed: two machines (two launchers, --nnodes 2) train as one rank with batch 2B", "[distributed]") {
  Scratch tmp("dist_nodes");
  const auto data = make_dataset(tmp.path() / "data");
  run_ok(with_launcher({MINIGPT4_BINARY}, train_args(data, tmp.path() / "one", 4, 2)));
  // Both "machines" are this one: node 1 meets node 0 at 127.0.0.1, as it would at node 0's address.
  const auto port = free_port();
  auto node = [&](int node_rank) {
    return with_launcher({MINIGPT4_BINARY, "launch", "--nnodes", "2", "--node-rank", std::to_string(node_rank),
                          "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port, "--"},
                         train_args(data, tmp.path() / "nodes", 2, 2));
  };
  Child node0(node(0)), node1(node(1));
  const auto status0 = node0.wait_for(std::chrono::seconds(300)), status1 = node1.wait_for(std::chrono::seconds(60));
  INFO(node0.output() << "\n---- node 1 ----\n" << node1.output());
  REQUIRE(status0 == std::optional<int>(0));
  REQUIRE(status1 == std::optional<int>(0));
  check_same_training(tmp.path() / "one", tmp.path() / "nodes");
}

TEST_CASE("distributed: resume continues a 2-rank run exactly", "[distributed]") {
  Scratch tmp("dist_resume");
  const auto data = make_dataset(tmp.path() / "data");
  run_ok(with_launcher(launch(2), train_args(data, tmp.path() / "straight", 2, 2)));
  // From the end of epoch 0 of the same run: the same epoch 1, bit for bit.
  const auto epoch0 = (tmp.path() / "straight/checkpoint_0.pth").string();
  run_ok(with_launcher(launch(2), train_args(data, tmp.path() / "resumed", 2, 2, {"run.resume_ckpt_path=" + epoch0})));
  CHECK(torch::equal(projector(tmp.path() / "straight", 1), projector(tmp.path() / "resumed", 1)));
  // One rank cannot continue two ranks' data streams: it says so and goes on.
  const auto output = run_ok(with_launcher(
      {MINIGPT4_BINARY}, train_args(data, tmp.path() / "one_rank", 4, 2, {"run.resume_ckpt_path=" + epoch0})));
  CHECK(output.find("the checkpoint was written by 2 rank(s) and this run has 1") != std::string::npos);
}

TEST_CASE("distributed: bad samples skipped on any rank are reported", "[distributed]") {
  Scratch tmp("dist_bad");
  const auto data = make_dataset(tmp.path() / "data");
  std::ofstream(data / "image/7.jpg", std::ios::trunc) << "not a jpeg";
  const auto output = run_ok(with_launcher(launch(2), train_args(data, tmp.path() / "out", 2, 2)));
  INFO(output);
  // Rank 0 prints each rank's report; the corrupt picture is met on both ranks over the passes.
  CHECK(std::regex_search(output, std::regex(R"(rank 0: [^\n]*skipped)")));
  CHECK(std::regex_search(output, std::regex(R"(rank 1: [^\n]*skipped)")));
  CHECK(output.find("7.jpg") != std::string::npos);
}

TEST_CASE("distributed: a killed rank ends the job, named", "[distributed]") {
  Scratch tmp("dist_kill");
  const auto data = make_dataset(tmp.path() / "data");
  Child job(with_launcher(launch(2), train_args(data, tmp.path() / "out", 2, 1000)));
  const auto pid = job.wait_for_output(R"(rank 1 of 2 is pid (\d+))", std::chrono::seconds(60));
  REQUIRE(!pid.empty());
  REQUIRE(!job.wait_for_output(R"(saved .*checkpoint_1\.pth)", std::chrono::seconds(120)).empty());  // training
  kill(std::stoi(pid), SIGKILL);
  const auto status = job.wait_for(std::chrono::seconds(60));
  const auto output = job.output();
  INFO(output);
  REQUIRE(status.has_value());
  CHECK(*status != 0);
  CHECK(output.find("launch: rank 1 (pid " + pid + ") was killed by signal 9") != std::string::npos);
}

TEST_CASE("distributed: a hung rank ends the job within the timeout, named", "[distributed]") {
  Scratch tmp("dist_hang");
  const auto data = make_dataset(tmp.path() / "data");
  Child job(with_launcher(launch(2), train_args(data, tmp.path() / "out", 2, 1000, {"run.dist_timeout=5"})));
  const auto pid = job.wait_for_output(R"(rank 1 of 2 is pid (\d+))", std::chrono::seconds(60));
  REQUIRE(!pid.empty());
  REQUIRE(!job.wait_for_output(R"(saved .*checkpoint_1\.pth)", std::chrono::seconds(120)).empty());
  kill(std::stoi(pid), SIGSTOP);  // alive but silent: its peers wait in a collective
  const auto start = Clock::now();
  const auto status = job.wait_for(std::chrono::seconds(90));
  const auto output = job.output();
  INFO(output);
  REQUIRE(status.has_value());
  CHECK(*status != 0);
  CHECK(std::chrono::duration<double>(Clock::now() - start).count() < 60);
  CHECK(std::regex_search(output, std::regex(R"(Rank\(s\) 1 stopped responding \(no heartbeat for 2.5 s\))")));
}
