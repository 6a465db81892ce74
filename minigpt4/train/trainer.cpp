#include "minigpt4/train/trainer.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/distributed/grad_sync.h"
#include "minigpt4/distributed/group.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "minigpt4/train/autocast.h"
#include "minigpt4/train/checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/metrics.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/train/schedule.h"

#include <torch/torch.h>

#include <algorithm>
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
    if (line.find(kImagePlaceholder) == std::string::npos) continue;
    prompts.push_back(c.apply_prompt_template(line));
  }
  if (prompts.empty()) fail("model.prompt_path '{}' holds no line with {}", c.prompt_path, kImagePlaceholder);
  log::info("{} training prompts from {}", prompts.size(), c.prompt_path);
  return prompts;
}

// A checkpoint holds one data position per rank that wrote it ({"ranks": [...]}, or a
// single position from one process). Another world size cannot continue those streams.
std::optional<datasets::LoaderPosition> rank_data_position(const nlohmann::json& saved, int rank, int world_size,
                                                           std::string* mismatch) {
  if (saved.is_null()) return std::nullopt;
  const bool per_rank = saved.is_object() && saved.contains("ranks");
  const size_t saved_world = per_rank ? saved.at("ranks").size() : 1;
  if (saved_world != static_cast<size_t>(world_size)) {
    *mismatch = fmt::format("the checkpoint was written by {} rank(s) and this run has {}", saved_world, world_size);
    return std::nullopt;
  }
  return datasets::LoaderPosition::from_json(per_rank ? saved.at("ranks").at(static_cast<size_t>(rank)) : saved);
}

// The seed of the global generator (dropout: LoRA's, Phi-2's) for one training step: a
// function of the run's seed (with the rank) and the step alone, so that a run resumed at
// step N draws the masks the uninterrupted run drew there (splitmix64's finaliser).
uint64_t step_seed(int64_t seed, int64_t global_step) {
  uint64_t x = static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(global_step) + 1;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// A run killed while appending to metrics.jsonl can leave its last line cut short; the
// resumed run appends after a whole line.
void drop_partial_last_line(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.empty() || text.back() == '\n') return;
  const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  fs::resize_file(path, keep, ec);
  if (ec) fail("cannot drop the cut-short last line of {}: {}", path, ec.message());
  log::warn("{}: dropped a last line cut short by the run that was stopped", path);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

}  // namespace

namespace {

// One training run, read in the order torchtitan's trainer reads: setup (the model, the
// data, the optimizer, a resumed checkpoint), then per iteration one step, its log line
// and the checkpoints due, then the run's report.
class Trainer {
 public:
  Trainer(const Config& config, const TrainOptions& options);
  TrainResult run();

 private:
  void load_model();
  void setup_data_parallel();
  void resume();
  // Forward, backward and (every accum_grad_iters iterations) the optimizer step; returns
  // the batch's loss (the mean over ranks).
  double step(const datasets::Batch& batch, int64_t epoch, int64_t iter);
  void log_step(double loss, size_t batch_size, int64_t epoch, int64_t iter);
  void save(const std::string& path, int64_t epoch, int64_t iter);
  void save_adapters(int64_t epoch);
  void report_data_and_curves();

  using Clock = std::chrono::steady_clock;
  const Clock::time_point start_time_ = Clock::now();
  const TrainOptions& options_;
  const MiniGPT4Config model_config_;
  const RunSettings run_;
  const TrainerSettings& settings_ = run_.trainer;
  const std::shared_ptr<distributed::Group> group_;
  const int rank_, world_size_;
  const bool main_process_;
  // The model is built from the same seed on every rank; the rest (dropout, prompts, data
  // augmentation) draws from seed + rank, as the original's init_seeds.
  const int64_t seed_;
  const std::string output_dir_;
  const std::string metrics_path_;
  datasets::LoaderOptions loader_options_;

  std::shared_ptr<MiniGPT4> model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::vector<std::string> prompts_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<distributed::GradientSync> grad_sync_;
  LrSchedule schedule_;
  bool amp_ = false;
  torch::Dtype amp_dtype_ = torch::kHalf;
  std::optional<GradScaler> scaler_;
  std::string config_text_;

  TrainingProgress progress_;
  std::string resumed_from_;  // "" for a fresh start
  std::optional<datasets::LoaderPosition> data_position_;
  std::optional<datasets::DataLoader> loader_;
  std::optional<MetricsLog> metrics_;
  std::optional<ProgressBar> bar_;

  TrainResult result_;
  std::vector<double> window_, first_window_;
  int64_t samples_since_log_ = 0;
  Clock::time_point last_log_ = Clock::now();
};

Trainer::Trainer(const Config& config, const TrainOptions& options)
    : options_(options),
      model_config_(MiniGPT4Config::from_config(config)),
      run_(RunSettings::from_config(config)),
      group_(options.group),
      rank_(group_ ? group_->rank() : 0),
      world_size_(group_ ? group_->world_size() : 1),
      main_process_(rank_ == 0),
      seed_(run_.trainer.seed + rank_),
      output_dir_(run_.trainer.output_dir),
      metrics_path_((fs::path(run_.trainer.output_dir) / "metrics.jsonl").string()) {
  // The schema's catalog says which datasets train; the others only parse (their names
  // appear in the original configs) and are refused here, with the catalog's reason.
  for (const auto& name : config.keys_under("datasets")) {
    const DatasetName* known = find_dataset_name(name);
    if (known && !known->trainable)
      fail("{}: datasets.{} cannot be trained by `minigpt4 train`: {} (docs/tinygptv.md)", config.path(), name,
           known->why_not);
  }
  // Before the weights load: a dataset section missing its paths fails in a second.
  loader_options_ = datasets::loader_options_from_config(config, settings_, rank_, world_size_);
  load_model();
  optimizer_ = make_optimizer(*model_, run_);
  setup_data_parallel();
  schedule_ = LrSchedule::from_run(run_);
  // run.amp: autocast on CUDA in run.amp_dtype; fp16 needs loss scaling, bf16 does not.
  amp_ = settings_.amp && options.device.is_cuda();
  amp_dtype_ = parse_dtype(settings_.amp_dtype);  // fp16 or bf16 (RunSettings checked)
  if (settings_.amp && !amp_) log::info("run.amp: mixed precision is for CUDA; running in the weights' dtypes");
  scaler_.emplace(amp_ && amp_dtype_ == torch::kHalf);

  fs::create_directories(output_dir_);
  config_text_ = config.tree().dump(2);
  if (settings_.accum_grad_iters > 1 && settings_.save_freq > 0 &&
      settings_.save_freq % settings_.accum_grad_iters != 0 && group_ && main_process_)
    log::warn(
        "run.save_freq ({}) is not a multiple of run.accum_grad_iters ({}): a step checkpoint inside an "
        "accumulation window does not hold the other ranks' gradients, so a run resumed from one differs "
        "slightly from an uninterrupted run",
        settings_.save_freq, settings_.accum_grad_iters);
  // Checkpoints left half-written by a killed run are never read (their names are not
  // checkpoint names); rank 0, the one writer, frees their space.
  if (main_process_) remove_checkpoint_temporaries(output_dir_);
  resume();
  loader_.emplace(std::move(loader_options_), data_position_);

  if (main_process_ && !resumed_from_.empty()) drop_partial_last_line(metrics_path_);
  if (main_process_) metrics_.emplace(metrics_path_, /*append=*/!resumed_from_.empty());
  bar_.emplace(schedule_.max_epoch, schedule_.iters_per_epoch, settings_.log_freq);
  if (!options.interactive_progress) bar_->set_interactive(false);
  result_.output_dir = output_dir_;
}

void Trainer::load_model() {
  torch::manual_seed(static_cast<uint64_t>(settings_.seed));
  LoadReport report;
  model_ = load_minigpt4(model_config_, options_.device, &report);
  lora::set_adapters_training(*model_, true);  // LoRA dropout on; frozen modules stay in eval mode
  // An LLM that trains (LoRA inside it) runs in training mode, as PEFT leaves it, so its own
  // dropouts apply (Phi-2's resid_pdrop 0.1 in TinyGPT-V; LLaMA has none).
  const auto llm_parameters = model_->llama_model->parameters();
  if (std::any_of(llm_parameters.begin(), llm_parameters.end(), [](const auto& p) { return p.requires_grad(); }))
    model_->llama_model->train(true);
  torch::manual_seed(static_cast<uint64_t>(seed_));
  for (const auto& note : report.notes) log::info("{}", note);
  if (!report.initialised.empty()) log::info("initialised fresh: {}", summarize_names(report.initialised));
  tokenizer_ = load_tokenizer(model_config_.llama_model);
  prompts_ = load_prompts(model_config_);
}

void Trainer::setup_data_parallel() {
  if (!group_) return;
  std::vector<std::pair<std::string, torch::Tensor>> trainable;
  for (const auto& item : model_->named_parameters())
    if (item.value().requires_grad()) trainable.emplace_back(item.key(), item.value());
  const size_t tensors = trainable.size();
  grad_sync_ = std::make_unique<distributed::GradientSync>(group_, std::move(trainable));
  grad_sync_->broadcast_parameters();  // a freshly initialised projection starts equal everywhere
  log::info("data parallel over {} ranks ({}): gradients of {} trainable tensors in {} bucket(s)", world_size_,
            group_->backend_name(), tensors, grad_sync_->bucket_count());
}

// run.resume_ckpt_path: latest resumes from the newest whole checkpoint of run.output_dir
// (damaged ones reported and passed over), or starts afresh when there is none yet; rank 0
// chooses, so that every rank loads the same file.
void Trainer::resume() {
  std::string resume = settings_.resume_ckpt_path;
  const bool resume_latest = resume == "latest";
  if (resume_latest) {
    resume.clear();
    if (main_process_) resume = find_resumable_checkpoint(output_dir_).value_or("");
    if (group_) resume = group_->all_gather_strings("resume_latest", resume).at(0);
    if (resume.empty())
      log::info("run.resume_ckpt_path=latest: no checkpoint in {} yet; starting from the beginning", output_dir_);
  }
  if (resume.empty()) return;
  try {
    progress_ = load_training_checkpoint(resume, *model_, *optimizer_, &*scaler_);
  } catch (const Error& e) {
    if (resume_latest) throw;
    fail(
        "run.resume_ckpt_path: {} (run.resume_ckpt_path=latest resumes from the newest checkpoint of {} that is "
        "whole)",
        e.what(), output_dir_);
  }
  resumed_from_ = resume;
  // A run stopped at an epoch's end, between its last step checkpoint and the epoch's own
  // checkpoint or LoRA folders: write what it did not get to (the state is the loaded one).
  if (main_process_ && progress_.iter >= schedule_.iters_per_epoch) {
    std::error_code ec;
    const auto epoch_path = epoch_checkpoint_path(output_dir_, progress_.epoch);
    if (fs::equivalent(fs::path(resume).parent_path(), output_dir_, ec) && !fs::exists(epoch_path)) {
      TrainingProgress p = progress_;
      p.config_text = config_text_;
      save_training_checkpoint(epoch_path, *model_, *optimizer_, &*scaler_, p);
      log::info("saved {} (the epoch's end, which the stopped run did not get to write)", epoch_path);
    }
    save_adapters(progress_.epoch);
  }
  std::string mismatch;
  data_position_ = rank_data_position(progress_.data_position, rank_, world_size_, &mismatch);
  if (!mismatch.empty()) {
    // The model, optimizer and schedule continue; the data streams cannot, so they start
    // over with a shuffle of their own (some samples of the interrupted pass come again).
    loader_options_.seed += static_cast<uint64_t>(progress_.global_step);
    log::warn(
        "resume: {}; the data streams restart with a fresh shuffle (seed {}), so samples of the interrupted "
        "pass may be seen again. Resume with the same number of ranks to continue them exactly.",
        mismatch, loader_options_.seed);
  }
  if (progress_.iter >= schedule_.iters_per_epoch) progress_.epoch += 1, progress_.iter = 0;
  log::info("resuming from {} at epoch {}, iteration {} (step {})", resume, progress_.epoch, progress_.iter,
            progress_.global_step);
}

double Trainer::step(const datasets::Batch& batch, int64_t epoch, int64_t iter) {
  optimizer_->set_lr(schedule_.lr_at(epoch, iter));
  // One prompt for the whole batch, as the original's random.choice; seeded by the global
  // step so a resumed run draws the same prompts.
  std::string prompt;
  if (!prompts_.empty() && batch.images.defined() && batch.instructions.empty()) {
    std::mt19937_64 rng(static_cast<uint64_t>(seed_) * 1000003ULL + static_cast<uint64_t>(progress_.global_step));
    prompt = prompts_[rng() % prompts_.size()];
  }
  const auto images = batch.images.defined() ? batch.images.to(options_.device) : torch::Tensor();
  const auto out = [&] {
    AutocastGuard autocast(options_.device, amp_dtype_, amp_);
    // MiniGPT-v2's datasets carry their own instructions (and ignore model.prompt_path).
    if (!batch.instructions.empty()) return model_->forward_instructions(images, batch.instructions, *tokenizer_);
    return model_->forward(images, batch.captions, prompt, *tokenizer_);
  }();
  double loss = out.loss.item<double>();
  if (group_) {
    // Every rank decides from the same number: the mean over ranks. A rank whose loss
    // is not finite then stops (or skips) together with all the others.
    auto sum = torch::full({1}, loss, torch::TensorOptions().dtype(torch::kFloat64).device(group_->device()));
    group_->all_reduce_sum(sum, "all-reducing the loss");
    loss = sum.item<double>() / world_size_;
  }
  if (!std::isfinite(loss)) {
    if (!scaler_->enabled())
      fail(
          "non-finite loss ({}) at epoch {}, iteration {} (step {}), dataset {}, first sample {}; stopping. "
          "Lower run.init_lr or check the data.",
          loss, epoch, iter, progress_.global_step, batch.dataset, batch.sources.empty() ? "?" : batch.sources[0]);
    ++result_.skipped_steps;  // the scaler skips the step and lowers the scale
  }
  if (!out.loss.requires_grad())
    fail(
        "dataset {}: its batch (first sample {}) reaches nothing that trains: a text-only batch (e.g. "
        "unnatural_instruction) only reaches the LLM, so give it a LoRA adapter (model.lora_r / model.lora.llm, as "
        "TinyGPT-V and MiniGPT-v2 do) or unfreeze it",
        batch.dataset, batch.sources.empty() ? "?" : batch.sources[0]);
  const int64_t accum = settings_.accum_grad_iters;
  const bool optimizer_step = (iter + 1) % accum == 0;
  if (grad_sync_) grad_sync_->begin_backward(/*sync=*/optimizer_step);
  scaler_->scale(out.loss / static_cast<double>(accum)).backward();
  if (grad_sync_) grad_sync_->finish_backward();
  if (optimizer_step) {
    if (scaler_->enabled()) {
      scaler_->step(optimizer_->torch_optimizer());
      scaler_->update();
    } else {
      optimizer_->step();
    }
    optimizer_->zero_grad();
  }
  ++progress_.global_step;
  if (group_) group_->report_step(progress_.global_step);
  return loss;
}

// The progress bar every iteration; every log_freq steps (and at an epoch's end) the mean
// loss of the window into metrics.jsonl.
void Trainer::log_step(double loss, size_t batch_size, int64_t epoch, int64_t iter) {
  samples_since_log_ += static_cast<int64_t>(batch_size) * world_size_;
  window_.push_back(loss);
  const auto now = Clock::now();
  StepRecord record;
  record.step = progress_.global_step, record.epoch = epoch, record.iter = iter + 1, record.loss = loss;
  record.lr = optimizer_->lr();
  record.elapsed = std::chrono::duration<double>(now - start_time_).count();
  const double since = std::chrono::duration<double>(now - last_log_).count();
  record.samples_per_sec = since > 0 ? static_cast<double>(samples_since_log_) / since : 0;
  if (main_process_) bar_->update(record);
  if (progress_.global_step % settings_.log_freq == 0 || iter + 1 == schedule_.iters_per_epoch) {
    record.loss = mean(window_);
    if (first_window_.empty()) first_window_ = window_;
    result_.last_loss = record.loss;
    if (metrics_) metrics_->write(record);
    window_.clear();
    samples_since_log_ = 0;
    last_log_ = now;
  }
}

// Every rank calls this: rank 0 gathers the data positions, writes, and the others wait at
// the barrier, so none runs ahead of a checkpoint that may fail.
void Trainer::save(const std::string& path, int64_t epoch, int64_t iter) {
  nlohmann::json data_positions = loader_->position().to_json();
  if (group_) {
    const auto all =
        group_->all_gather_strings(fmt::format("loader_position/{}", progress_.global_step), data_positions.dump());
    data_positions = {{"ranks", nlohmann::json::array()}};
    for (const auto& text : all) data_positions["ranks"].push_back(nlohmann::json::parse(text));
  }
  if (main_process_) {
    TrainingProgress p{epoch, iter, progress_.global_step, data_positions, config_text_};
    // Inside an accumulation window the gradients so far are part of the state (one
    // process only: other ranks' are not here). At an epoch's end the next epoch drops them.
    const bool pending = iter % settings_.accum_grad_iters != 0 && iter < schedule_.iters_per_epoch && !group_;
    save_training_checkpoint(path, *model_, *optimizer_, &*scaler_, p, /*with_gradients=*/pending);
    result_.last_checkpoint = path;
    bar_->break_line();
    log::info("saved {}", path);
  }
  if (group_) group_->barrier("after saving " + path);
}

// ConLoRA's layout: lora_<epoch>/{llm,ve,qformer} (main process only).
void Trainer::save_adapters(int64_t epoch) {
  if (!main_process_ || model_config_.lora.empty()) return;
  const auto folder = (fs::path(output_dir_) / fmt::format("lora_{}", epoch)).string();
  for (const auto& written : save_adapter_folders(*model_, kTrainedAdapter, folder)) log::info("saved {}", written);
}

// Every rank skipped its own bad samples: rank 0 reports them all. Then the curves.
void Trainer::report_data_and_curves() {
  const auto data_report = datasets::format_data_report(loader_->stats());
  if (group_) {
    const auto reports = group_->all_gather_strings(fmt::format("data_report/{}", progress_.global_step), data_report);
    for (size_t r = 0; r < reports.size(); ++r)
      if (!reports[r].empty()) log::info("rank {}: {}", r, reports[r]);
  } else if (!data_report.empty()) {
    log::info("{}", data_report);
  }
  if (main_process_ && fs::exists(metrics_path_)) {
    const auto png = (fs::path(output_dir_) / "training_curves.png").string();
    plot_training_curves(read_metrics_log(metrics_path_), png);
    log::info("metrics: {}; curves: {}", metrics_path_, png);
  }
}

TrainResult Trainer::run() {
  int64_t epochs_run = 0;
  for (int64_t epoch = progress_.epoch; epoch < schedule_.max_epoch; ++epoch) {
    if (options_.stop_after_epochs >= 0 && epochs_run >= options_.stop_after_epochs) break;
    const bool resumed_inside_epoch = epoch == progress_.epoch && progress_.iter > 0;
    if (!resumed_inside_epoch) optimizer_->zero_grad();  // else: the checkpoint's accumulated gradients (or none)
    for (int64_t i = (epoch == progress_.epoch ? progress_.iter : 0); i < schedule_.iters_per_epoch; ++i) {
      torch::manual_seed(step_seed(seed_, progress_.global_step));
      const auto batch = loader_->next();
      const double loss = step(batch, epoch, i);
      log_step(loss, batch.size(), epoch, i);
      if (settings_.save_freq > 0 && progress_.global_step % settings_.save_freq == 0)
        save(step_checkpoint_path(output_dir_, progress_.global_step), epoch, i + 1);
    }
    save(epoch_checkpoint_path(output_dir_, epoch), epoch, schedule_.iters_per_epoch);
    save_adapters(epoch);
    progress_.iter = 0;
    ++epochs_run;
  }
  bar_->break_line();
  result_.global_step = progress_.global_step;
  result_.first_loss = mean(first_window_);
  report_data_and_curves();
  return result_;
}

}  // namespace

TrainResult run_training(const Config& config, const TrainOptions& options) { return Trainer(config, options).run(); }

}  // namespace minigpt4::train
