// Training checkpoints: resume gives the uninterrupted run's parameters, the file holds only
// the trainable weights for io::load_state_dict, damaged and mismatched files are errors.
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/train/checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/train/schedule.h"
#include "tests/train/train_test_util.h"

#include <filesystem>
#include <fstream>
#include <set>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;
using minigpt4::test::ScratchDir;
using minigpt4::test::TinyNet;

namespace {

AdamWSettings settings() {
  AdamWSettings s;
  s.lr = 1e-2;
  s.weight_decay = 0.05;
  return s;
}

LrSchedule schedule() {
  LrSchedule s;
  s.init_lr = 1e-2;
  s.min_lr = 1e-3;
  s.warmup_lr = 1e-3;
  s.warmup_steps = 3;
  s.max_epoch = 2;
  s.iters_per_epoch = 4;
  return s;
}

// One iteration of the runner's loop: lr, forward, scaled backward, step, update.
void train_step(TinyNet& net, Optimizer& opt, GradScaler& scaler, int64_t step) {
  const LrSchedule s = schedule();
  opt.set_lr(s.lr_at(step / s.iters_per_epoch, step % s.iters_per_epoch));
  torch::manual_seed(1000 + step);  // the same batch in every run
  const auto x = torch::randn({5, 4}), y = torch::randn({5, 2});
  opt.zero_grad();
  scaler.scale(net.loss(x, y)).backward();
  scaler.step(opt.torch_optimizer());
  scaler.update();
}

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

GradScalerOptions fast_growth() {
  GradScalerOptions o;
  o.growth_interval = 2;  // so the scale changes within the run
  return o;
}

}  // namespace

TEST_CASE("checkpoint round trip: the resumed run continues exactly", "[train]") {
  ScratchDir dir("ckpt");
  torch::manual_seed(7);
  TinyNet net;
  const auto initial = snapshot(net);
  Optimizer opt(split_parameters(net), settings());
  GradScaler scaler(true, fast_growth());
  for (int64_t step = 0; step < 3; ++step) train_step(net, opt, scaler, step);

  TrainingProgress progress;
  progress.epoch = 0;
  progress.iter = 3;
  progress.global_step = 3;
  progress.data_position = {{"shard", 2}, {"offset", 17}};
  progress.config_text = "run:\n  init_lr: 1e-2\n";
  const std::string path = step_checkpoint_path(dir.str(), 3);
  CHECK(path == dir.file("checkpoint_step_3.pth"));
  save_training_checkpoint(path, net, opt, &scaler, progress);
  const double saved_scale = scaler.get_scale();
  for (int64_t step = 3; step < 6; ++step) train_step(net, opt, scaler, step);
  const auto uninterrupted = snapshot(net);

  // A fresh process: frozen weights from "pretrained" files (the initial values), trainable
  // ones anything at all until the checkpoint is loaded.
  TinyNet fresh;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : fresh.named_parameters())
      p.value().copy_(p.value().requires_grad() ? torch::randn_like(p.value()) : initial.at(p.key()));
  }
  Optimizer opt2(split_parameters(fresh), settings());
  GradScaler scaler2(true, fast_growth());
  const TrainingProgress loaded = load_training_checkpoint(path, fresh, opt2, &scaler2);
  CHECK(loaded.epoch == 0);
  CHECK(loaded.iter == 3);
  CHECK(loaded.global_step == 3);
  CHECK(loaded.data_position == progress.data_position);
  CHECK(loaded.config_text == progress.config_text);
  CHECK(scaler2.get_scale() == saved_scale);
  for (int64_t step = 3; step < 6; ++step) train_step(fresh, opt2, scaler2, step);
  CHECK(scaler2.get_scale() == scaler.get_scale());
  CHECK(scaler2.growth_tracker() == scaler.growth_tracker());

  for (const auto& [name, value] : snapshot(fresh)) {
    INFO(name);
    CHECK(torch::equal(value, uninterrupted.at(name)));
  }
}

TEST_CASE("checkpoint file: only trainable weights for io::load_state_dict, Python layout", "[train]") {
  ScratchDir dir("layout");
  torch::manual_seed(3);
  TinyNet net;
  Optimizer opt(split_parameters(net), settings());
  GradScaler scaler(false);
  train_step(net, opt, scaler, 0);
  TrainingProgress progress;
  progress.epoch = 1;
  progress.iter = 4;
  progress.global_step = 8;
  const std::string path = epoch_checkpoint_path(dir.str(), 1);
  save_training_checkpoint(path, net, opt, &scaler, progress);
  CHECK(std::filesystem::path(path).filename() == "checkpoint_1.pth");

  // What stage 2 loads through model.ckpt: the trainable weights, nothing else.
  const StateDict weights = io::load_state_dict(path);
  std::set<std::string> names;
  for (const auto& [name, t] : weights) names.insert(name);
  CHECK(names == std::set<std::string>{"bn.bias", "bn.weight", "kiln_table", "ln_final.bias", "ln_final.weight",
                                       "proj.bias", "proj.weight", "scale", "table"});
  CHECK(torch::equal(weights.at("proj.weight"), net.proj->weight));

  // The whole file: optimizer state by name (bn never had a gradient, so no state), no
  // scaler without AMP, the metadata, nothing left in the directory but the file.
  const StateDict all = io::load_torch_checkpoint(path);
  CHECK(all.count("optimizer/state/proj.weight/exp_avg"));
  CHECK(all.count("optimizer/state/kiln_table/exp_avg_sq"));
  CHECK(all.count("optimizer/state/table/step"));
  CHECK_FALSE(all.count("optimizer/state/bn.weight/exp_avg"));
  CHECK(all.count("optimizer/param_groups/0/weight_decay"));
  CHECK(all.at("optimizer/param_groups/1/weight_decay").item<double>() == 0.0);
  CHECK(all.count("meta/json"));
  CHECK_FALSE(all.count("scaler/scale"));
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.str())) files += e.is_regular_file();
  CHECK(files == 1);  // the temporary was renamed away

  const TrainingProgress p = read_training_progress(path);
  CHECK(p.epoch == 1);
  CHECK(p.iter == 4);
  CHECK(p.global_step == 8);
  CHECK(p.data_position.is_null());
}

TEST_CASE("checkpoint errors: truncated, not ours, mismatched parameters", "[train]") {
  ScratchDir dir("errors");
  torch::manual_seed(5);
  TinyNet net;
  Optimizer opt(split_parameters(net), settings());
  GradScaler scaler(true);
  train_step(net, opt, scaler, 0);
  const std::string good = dir.file("checkpoint_0.pth");
  save_training_checkpoint(good, net, opt, &scaler, {});

  // Truncated: an error naming the file.
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string cut = dir.file("checkpoint_step_9.pth");
  std::ofstream(cut, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  CHECK_THROWS_WITH(load_training_checkpoint(cut, net, opt, &scaler), Contains(cut));
  CHECK_THROWS_WITH(read_training_progress(dir.file("nope.pth")), Contains("nope.pth"));

  // A weights-only file (like pretrained_minigpt4.pth) is not a training checkpoint.
  const std::string weights_only = dir.file("weights.pth");
  io::save_torch_checkpoint(weights_only, {{"proj.weight", net.proj->weight.detach()}});
  CHECK_THROWS_WITH(load_training_checkpoint(weights_only, net, opt, &scaler),
                    Contains(weights_only) && Contains("model.ckpt"));

  // The model trains something else now: missing and unexpected names are listed.
  TinyNet other;
  other.table.set_requires_grad(false);
  other.frozen->weight.set_requires_grad(true);
  Optimizer opt_other(split_parameters(other), settings());
  CHECK_THROWS_WITH(load_training_checkpoint(good, other, opt_other, nullptr),
                    Contains(good) && Contains("missing: [frozen.weight]") && Contains("not trainable here: [table]"));
}

TEST_CASE("latest checkpoint discovery", "[train]") {
  ScratchDir dir("latest");
  CHECK_FALSE(find_latest_checkpoint(dir.str()).has_value());
  CHECK_FALSE(find_latest_checkpoint(dir.file("missing")).has_value());
  torch::manual_seed(1);
  TinyNet net;
  Optimizer opt(split_parameters(net), settings());
  auto save = [&](const std::string& path, int64_t global_step) {
    TrainingProgress p;
    p.global_step = global_step;
    save_training_checkpoint(path, net, opt, nullptr, p);
  };
  save(epoch_checkpoint_path(dir.str(), 0), 4);
  save(step_checkpoint_path(dir.str(), 6), 6);
  save(epoch_checkpoint_path(dir.str(), 1), 8);
  save(dir.file("checkpoint_best.pth"), 100);  // not a numbered checkpoint
  CHECK(find_latest_checkpoint(dir.str()) == epoch_checkpoint_path(dir.str(), 1));

  // A damaged newer file is skipped.
  std::ofstream(step_checkpoint_path(dir.str(), 12), std::ios::binary) << "PK\x03\x04 not really";
  CHECK(find_latest_checkpoint(dir.str()) == epoch_checkpoint_path(dir.str(), 1));
}
