#include "minigpt4/train/trainer.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/data/loader.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/train/autocast.h"
#include "minigpt4/train/checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/metrics.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/train/schedule.h"

#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

namespace minigpt4::train {

namespace fs = std::filesystem;

namespace {

// MiniGPT-4: the lines of prompt_path holding <ImageHere>, each formatted by prompt_template.
std::vector<std::string> load_prompts(const MiniGPT4Config& c) {
  if (c.prompt_path.empty()) return {};
  std::ifstream in(c.prompt_path);
  if (!in) fail("model.prompt_path: cannot read '{}'", c.prompt_path);
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) {
    if (line.find("<ImageHere>") == std::string::npos) continue;
    std::string prompt = c.prompt_template.empty() ? "{}" : c.prompt_template;
    const auto slot = prompt.find("{}");
    if (slot == std::string::npos) fail("model.prompt_template '{}' has no '{{}}' for the prompt", c.prompt_template);
    prompts.push_back(prompt.replace(slot, 2, line));
  }
  if (prompts.empty()) fail("model.prompt_path '{}' holds no line with <ImageHere>", c.prompt_path);
  log::info("{} training prompts from {}", prompts.size(), c.prompt_path);
  return prompts;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

}  // namespace

TrainResult run_training(const Config& config, const TrainOptions& options) {
  const auto start_time = std::chrono::steady_clock::now();
  const auto model_config = MiniGPT4Config::from_config(config);
  const int64_t seed = config.get_int("run.seed", 42) + options.rank;
  torch::manual_seed(static_cast<uint64_t>(seed));

  LoadReport report;
  const auto model = load_minigpt4(model_config, options.device, &report);
  for (const auto& note : report.notes) log::info("{}", note);
  if (!report.initialised.empty()) log::info("initialised fresh: {}", summarize_names(report.initialised));
  const auto tokenizer = LlamaTokenizer::from_pretrained(model_config.llama_model);
  const auto prompts = load_prompts(model_config);

  auto optimizer = make_optimizer(*model, config);
  const auto schedule = LrSchedule::from_config(config);
  // run.amp: autocast on CUDA in run.amp_dtype; fp16 needs loss scaling, bf16 does not.
  const bool amp = config.get_bool("run.amp", false) && options.device.is_cuda();
  const auto amp_dtype = parse_dtype(config.get_string("run.amp_dtype", "fp16"));
  if (amp_dtype != torch::kHalf && amp_dtype != torch::kBFloat16)
    fail("run.amp_dtype must be fp16 or bf16, got {} ({})", config.get_string("run.amp_dtype"), config.source_of("run.amp_dtype"));
  if (config.get_bool("run.amp", false) && !amp) log::info("run.amp: mixed precision is for CUDA; running in the weights' dtypes");
  GradScaler scaler(amp && amp_dtype == torch::kHalf);
  const int64_t accum = std::max<int64_t>(1, config.get_int("run.accum_grad_iters", 1));
  const int64_t log_freq = std::max<int64_t>(1, config.get_int("run.log_freq", 50));
  const int64_t save_freq = config.get_int("run.save_freq", 0);

  const std::string output_dir = config.get_string("run.output_dir", "output");
  fs::create_directories(output_dir);
  std::ostringstream config_text;
  config_text << config.tree().dump(2);

  TrainingProgress progress;
  std::optional<data::LoaderPosition> data_position;
  const std::string resume = config.get_string("run.resume_ckpt_path");
  if (!resume.empty()) {
    progress = load_training_checkpoint(resume, *model, *optimizer, &scaler);
    if (!progress.data_position.is_null()) data_position = data::LoaderPosition::from_json(progress.data_position);
    if (progress.iter >= schedule.iters_per_epoch) progress.epoch += 1, progress.iter = 0;
    log::info("resuming from {} at epoch {}, iteration {} (step {})", resume, progress.epoch, progress.iter,
              progress.global_step);
  }
  data::DataLoader loader(data::loader_options_from_config(config, options.rank, options.world_size), data_position);

  const bool main_process = options.rank == 0;
  const std::string metrics_path = (fs::path(output_dir) / "metrics.jsonl").string();
  std::optional<MetricsLog> metrics;
  if (main_process) metrics.emplace(metrics_path, /*append=*/!resume.empty());
  ProgressBar bar(schedule.max_epoch, schedule.iters_per_epoch, log_freq);
  if (!options.interactive_progress) bar.set_interactive(false);

  TrainResult result;
  result.output_dir = output_dir;
  std::vector<double> window, first_window;
  int64_t samples_since_log = 0;
  auto last_log = std::chrono::steady_clock::now();
  int64_t epochs_run = 0;

  auto save = [&](const std::string& path, int64_t epoch, int64_t iter) {
    if (!main_process) return;
    TrainingProgress p{epoch, iter, progress.global_step, loader.position().to_json(), config_text.str()};
    save_training_checkpoint(path, *model, *optimizer, &scaler, p);
    result.last_checkpoint = path;
    bar.break_line();
    log::info("saved {}", path);
  };

  for (int64_t epoch = progress.epoch; epoch < schedule.max_epoch; ++epoch) {
    if (options.stop_after_epochs >= 0 && epochs_run >= options.stop_after_epochs) break;
    optimizer->zero_grad();
    for (int64_t i = (epoch == progress.epoch ? progress.iter : 0); i < schedule.iters_per_epoch; ++i) {
      const auto batch = loader.next();
      optimizer->set_lr(schedule.lr_at(epoch, i));
      // One prompt for the whole batch, as the original's random.choice; seeded by the
      // global step so a resumed run draws the same prompts.
      std::string prompt;
      if (!prompts.empty() && batch.images.defined()) {
        std::mt19937_64 rng(static_cast<uint64_t>(seed) * 1000003ULL + static_cast<uint64_t>(progress.global_step));
        prompt = prompts[rng() % prompts.size()];
      }
      const auto images = batch.images.defined() ? batch.images.to(options.device) : torch::Tensor();
      const auto out = [&] {
        AutocastGuard autocast(options.device, amp_dtype, amp);
        return model->forward(images, batch.captions, prompt, tokenizer);
      }();
      const double loss = out.loss.item<double>();
      if (!std::isfinite(loss)) {
        if (!scaler.enabled())
          fail("non-finite loss ({}) at epoch {}, iteration {} (step {}), dataset {}, first sample {}; stopping. "
               "Lower run.init_lr or check the data.",
               loss, epoch, i, progress.global_step, batch.dataset, batch.sources.empty() ? "?" : batch.sources[0]);
        ++result.skipped_steps;  // the scaler skips the step and lowers the scale
      }
      scaler.scale(out.loss / static_cast<double>(accum)).backward();
      if ((i + 1) % accum == 0) {
        if (scaler.enabled()) {
          scaler.step(optimizer->torch_optimizer());
          scaler.update();
        } else {
          optimizer->step();
        }
        optimizer->zero_grad();
      }
      ++progress.global_step;
      samples_since_log += static_cast<int64_t>(batch.captions.size());
      window.push_back(loss);

      const auto now = std::chrono::steady_clock::now();
      StepRecord record;
      record.step = progress.global_step, record.epoch = epoch, record.iter = i + 1, record.loss = loss;
      record.lr = optimizer->lr();
      record.elapsed = std::chrono::duration<double>(now - start_time).count();
      const double since = std::chrono::duration<double>(now - last_log).count();
      record.samples_per_sec = since > 0 ? static_cast<double>(samples_since_log) / since : 0;
      if (main_process) bar.update(record);
      if (progress.global_step % log_freq == 0 || i + 1 == schedule.iters_per_epoch) {
        record.loss = mean(window);
        if (first_window.empty()) first_window = window;
        result.last_loss = record.loss;
        if (metrics) metrics->write(record);
        window.clear();
        samples_since_log = 0;
        last_log = now;
      }
      if (save_freq > 0 && progress.global_step % save_freq == 0)
        save(step_checkpoint_path(output_dir, progress.global_step), epoch, i + 1);
    }
    save(epoch_checkpoint_path(output_dir, epoch), epoch, schedule.iters_per_epoch);
    progress.iter = 0;
    ++epochs_run;
  }
  bar.break_line();

  result.global_step = progress.global_step;
  result.first_loss = mean(first_window);
  const auto data_report = data::format_data_report(loader.stats());
  if (!data_report.empty()) log::info("{}", data_report);
  if (main_process && fs::exists(metrics_path)) {
    const auto png = (fs::path(output_dir) / "training_curves.png").string();
    plot_training_curves(read_metrics_log(metrics_path), png);
    log::info("metrics: {}; curves: {}", metrics_path, png);
  }
  return result;
}

}  // namespace minigpt4::train
