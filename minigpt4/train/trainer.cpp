#include "minigpt4/train/trainer.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/data/loader.h"
#include "minigpt4/dist/grad_sync.h"
#include "minigpt4/dist/group.h"
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
std::optional<data::LoaderPosition> rank_data_position(const nlohmann::json& saved, int rank, int world_size,
                                                       std::string* mismatch) {
  if (saved.is_null()) return std::nullopt;
  const bool per_rank = saved.is_object() && saved.contains("ranks");
  const size_t saved_world = per_rank ? saved.at("ranks").size() : 1;
  if (saved_world != static_cast<size_t>(world_size)) {
    *mismatch = fmt::format("the checkpoint was written by {} rank(s) and this run has {}", saved_world, world_size);
    return std::nullopt;
  }
  return data::LoaderPosition::from_json(per_rank ? saved.at("ranks").at(static_cast<size_t>(rank)) : saved);
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

TrainResult run_training(const Config& config, const TrainOptions& options) {
  const auto start_time = std::chrono::steady_clock::now();
  // The schema's catalog says which datasets train; the others only parse (their names
  // appear in the original configs) and are refused here, with the catalog's reason.
  for (const auto& name : config.keys_under("datasets")) {
    const DatasetName* known = find_dataset_name(name);
    if (known && !known->trainable)
      fail("{}: datasets.{} cannot be trained by `minigpt4 train`: {} (docs/tinygptv.md)", config.path(), name,
           known->why_not);
  }
  const auto model_config = MiniGPT4Config::from_config(config);
  const auto& group = options.group;
  const int rank = group ? group->rank() : 0;
  const int world_size = group ? group->world_size() : 1;
  // Before the weights load: a dataset section missing its paths fails in a second.
  auto loader_options = data::loader_options_from_config(config, rank, world_size);
  // The model is built from the same seed on every rank; the rest (dropout, prompts, data
  // augmentation) draws from seed + rank, as the original's init_seeds.
  const int64_t seed = config.get_int("run.seed", 42) + rank;
  torch::manual_seed(static_cast<uint64_t>(config.get_int("run.seed", 42)));

  LoadReport report;
  const auto model = load_minigpt4(model_config, options.device, &report);
  lora::set_adapters_training(*model, true);  // LoRA dropout on; frozen modules stay in eval mode
  // An LLM that trains (LoRA inside it) runs in training mode, as PEFT leaves it, so its own
  // dropouts apply (Phi-2's resid_pdrop 0.1 in TinyGPT-V; LLaMA has none).
  const auto llm_parameters = model->llama_model->parameters();
  if (std::any_of(llm_parameters.begin(), llm_parameters.end(), [](const auto& p) { return p.requires_grad(); }))
    model->llama_model->train(true);
  torch::manual_seed(static_cast<uint64_t>(seed));
  for (const auto& note : report.notes) log::info("{}", note);
  if (!report.initialised.empty()) log::info("initialised fresh: {}", summarize_names(report.initialised));
  const auto tokenizer_ptr = load_tokenizer(model_config.llama_model);
  const Tokenizer& tokenizer = *tokenizer_ptr;
  const auto prompts = load_prompts(model_config);

  auto optimizer = make_optimizer(*model, config);
  std::unique_ptr<dist::GradientSync> grad_sync;
  if (group) {
    std::vector<std::pair<std::string, torch::Tensor>> trainable;
    for (const auto& item : model->named_parameters())
      if (item.value().requires_grad()) trainable.emplace_back(item.key(), item.value());
    const size_t tensors = trainable.size();
    grad_sync = std::make_unique<dist::GradientSync>(group, std::move(trainable));
    grad_sync->broadcast_parameters();  // a freshly initialised projection starts equal everywhere
    log::info("data parallel over {} ranks ({}): gradients of {} trainable tensors in {} bucket(s)", world_size,
              group->backend_name(), tensors, grad_sync->bucket_count());
  }
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

  if (accum > 1 && save_freq > 0 && save_freq % accum != 0 && group && rank == 0)
    log::warn("run.save_freq ({}) is not a multiple of run.accum_grad_iters ({}): a step checkpoint inside an "
              "accumulation window does not hold the other ranks' gradients, so a run resumed from one differs "
              "slightly from an uninterrupted run",
              save_freq, accum);

  // Checkpoints left half-written by a killed run are never read (their names are not
  // checkpoint names); rank 0, the one writer, frees their space.
  if (rank == 0) remove_checkpoint_temporaries(output_dir);

  TrainingProgress progress;
  std::optional<data::LoaderPosition> data_position;
  // run.resume_ckpt_path: latest resumes from the newest whole checkpoint of run.output_dir
  // (damaged ones reported and passed over), or starts afresh when there is none yet; rank 0
  // chooses, so that every rank loads the same file.
  std::string resume = config.get_string("run.resume_ckpt_path");
  const bool resume_latest = resume == "latest";
  if (resume_latest) {
    resume.clear();
    if (rank == 0) resume = find_resumable_checkpoint(output_dir).value_or("");
    if (group) resume = group->all_gather_strings("resume_latest", resume).at(0);
    if (resume.empty())
      log::info("run.resume_ckpt_path=latest: no checkpoint in {} yet; starting from the beginning", output_dir);
  }
  if (!resume.empty()) {
    try {
      progress = load_training_checkpoint(resume, *model, *optimizer, &scaler);
    } catch (const Error& e) {
      if (resume_latest) throw;
      fail("run.resume_ckpt_path: {} (run.resume_ckpt_path=latest resumes from the newest checkpoint of {} that is "
           "whole)",
           e.what(), output_dir);
    }
    // A run stopped at an epoch's end, between its last step checkpoint and the epoch's own
    // checkpoint or LoRA folders: write what it did not get to (the state is the loaded one).
    if (rank == 0 && progress.iter >= schedule.iters_per_epoch) {
      std::error_code ec;
      const auto epoch_path = epoch_checkpoint_path(output_dir, progress.epoch);
      if (fs::equivalent(fs::path(resume).parent_path(), output_dir, ec) && !fs::exists(epoch_path)) {
        TrainingProgress p = progress;
        p.config_text = config_text.str();
        save_training_checkpoint(epoch_path, *model, *optimizer, &scaler, p);
        log::info("saved {} (the epoch's end, which the stopped run did not get to write)", epoch_path);
      }
      if (!model_config.lora.empty()) {
        const auto folder = (fs::path(output_dir) / fmt::format("lora_{}", progress.epoch)).string();
        for (const auto& written : save_adapter_folders(*model, kTrainedAdapter, folder)) log::info("saved {}", written);
      }
    }
    std::string mismatch;
    data_position = rank_data_position(progress.data_position, rank, world_size, &mismatch);
    if (!mismatch.empty()) {
      // The model, optimizer and schedule continue; the data streams cannot, so they start
      // over with a shuffle of their own (some samples of the interrupted pass come again).
      loader_options.seed += static_cast<uint64_t>(progress.global_step);
      log::warn("resume: {}; the data streams restart with a fresh shuffle (seed {}), so samples of the interrupted "
                "pass may be seen again. Resume with the same number of ranks to continue them exactly.",
                mismatch, loader_options.seed);
    }
    if (progress.iter >= schedule.iters_per_epoch) progress.epoch += 1, progress.iter = 0;
    log::info("resuming from {} at epoch {}, iteration {} (step {})", resume, progress.epoch, progress.iter,
              progress.global_step);
  }
  data::DataLoader loader(std::move(loader_options), data_position);

  const bool main_process = rank == 0;
  const std::string metrics_path = (fs::path(output_dir) / "metrics.jsonl").string();
  std::optional<MetricsLog> metrics;
  if (main_process && !resume.empty()) drop_partial_last_line(metrics_path);
  if (main_process) metrics.emplace(metrics_path, /*append=*/!resume.empty());
  ProgressBar bar(schedule.max_epoch, schedule.iters_per_epoch, log_freq);
  if (!options.interactive_progress) bar.set_interactive(false);

  TrainResult result;
  result.output_dir = output_dir;
  std::vector<double> window, first_window;
  int64_t samples_since_log = 0;
  auto last_log = std::chrono::steady_clock::now();
  int64_t epochs_run = 0;

  // Every rank calls this: rank 0 gathers the data positions, writes, and the others wait
  // at the barrier, so none runs ahead of a checkpoint that may fail.
  auto save = [&](const std::string& path, int64_t epoch, int64_t iter) {
    nlohmann::json data_positions = loader.position().to_json();
    if (group) {
      const auto all = group->all_gather_strings(fmt::format("loader_position/{}", progress.global_step),
                                                 data_positions.dump());
      data_positions = {{"ranks", nlohmann::json::array()}};
      for (const auto& text : all) data_positions["ranks"].push_back(nlohmann::json::parse(text));
    }
    if (main_process) {
      TrainingProgress p{epoch, iter, progress.global_step, data_positions, config_text.str()};
      // Inside an accumulation window the gradients so far are part of the state (one
      // process only: other ranks' are not here). At an epoch's end the next epoch drops them.
      const bool pending = iter % accum != 0 && iter < schedule.iters_per_epoch && !group;
      save_training_checkpoint(path, *model, *optimizer, &scaler, p, /*with_gradients=*/pending);
      result.last_checkpoint = path;
      bar.break_line();
      log::info("saved {}", path);
    }
    if (group) group->barrier("after saving " + path);
  };

  for (int64_t epoch = progress.epoch; epoch < schedule.max_epoch; ++epoch) {
    if (options.stop_after_epochs >= 0 && epochs_run >= options.stop_after_epochs) break;
    const bool resumed_inside_epoch = epoch == progress.epoch && progress.iter > 0;
    if (!resumed_inside_epoch) optimizer->zero_grad();  // else: the checkpoint's accumulated gradients (or none)
    for (int64_t i = (epoch == progress.epoch ? progress.iter : 0); i < schedule.iters_per_epoch; ++i) {
      torch::manual_seed(step_seed(seed, progress.global_step));
      const auto batch = loader.next();
      optimizer->set_lr(schedule.lr_at(epoch, i));
      // One prompt for the whole batch, as the original's random.choice; seeded by the
      // global step so a resumed run draws the same prompts.
      std::string prompt;
      if (!prompts.empty() && batch.images.defined() && batch.instructions.empty()) {
        std::mt19937_64 rng(static_cast<uint64_t>(seed) * 1000003ULL + static_cast<uint64_t>(progress.global_step));
        prompt = prompts[rng() % prompts.size()];
      }
      const auto images = batch.images.defined() ? batch.images.to(options.device) : torch::Tensor();
      const auto out = [&] {
        AutocastGuard autocast(options.device, amp_dtype, amp);
        // MiniGPT-v2's datasets carry their own instructions (and ignore model.prompt_path).
        if (!batch.instructions.empty()) return model->forward_instructions(images, batch.instructions, tokenizer);
        return model->forward(images, batch.captions, prompt, tokenizer);
      }();
      double loss = out.loss.item<double>();
      if (group) {
        // Every rank decides from the same number: the mean over ranks. A rank whose loss
        // is not finite then stops (or skips) together with all the others.
        auto sum = torch::full({1}, loss, torch::TensorOptions().dtype(torch::kFloat64).device(group->device()));
        group->all_reduce_sum(sum, "all-reducing the loss");
        loss = sum.item<double>() / world_size;
      }
      if (!std::isfinite(loss)) {
        if (!scaler.enabled())
          fail("non-finite loss ({}) at epoch {}, iteration {} (step {}), dataset {}, first sample {}; stopping. "
               "Lower run.init_lr or check the data.",
               loss, epoch, i, progress.global_step, batch.dataset, batch.sources.empty() ? "?" : batch.sources[0]);
        ++result.skipped_steps;  // the scaler skips the step and lowers the scale
      }
      if (!out.loss.requires_grad())
        fail("dataset {}: its batch (first sample {}) reaches nothing that trains: a text-only batch (e.g. "
             "unnatural_instruction) only reaches the LLM, so give it a LoRA adapter (model.lora_r / model.lora.llm, as "
             "TinyGPT-V and MiniGPT-v2 do) or unfreeze it",
             batch.dataset, batch.sources.empty() ? "?" : batch.sources[0]);
      const bool optimizer_step = (i + 1) % accum == 0;
      if (grad_sync) grad_sync->begin_backward(/*sync=*/optimizer_step);
      scaler.scale(out.loss / static_cast<double>(accum)).backward();
      if (grad_sync) grad_sync->finish_backward();
      if (optimizer_step) {
        if (scaler.enabled()) {
          scaler.step(optimizer->torch_optimizer());
          scaler.update();
        } else {
          optimizer->step();
        }
        optimizer->zero_grad();
      }
      ++progress.global_step;
      if (group) group->report_step(progress.global_step);
      samples_since_log += static_cast<int64_t>(batch.size()) * world_size;
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
    if (main_process && !model_config.lora.empty()) {  // ConLoRA's layout: lora_<epoch>/{llm,ve,qformer}
      const auto folder = (fs::path(output_dir) / fmt::format("lora_{}", epoch)).string();
      for (const auto& written : save_adapter_folders(*model, kTrainedAdapter, folder)) log::info("saved {}", written);
    }
    progress.iter = 0;
    ++epochs_run;
  }
  bar.break_line();

  result.global_step = progress.global_step;
  result.first_loss = mean(first_window);
  // Every rank skipped its own bad samples: rank 0 reports them all.
  const auto data_report = data::format_data_report(loader.stats());
  if (group) {
    const auto reports = group->all_gather_strings(fmt::format("data_report/{}", progress.global_step), data_report);
    for (size_t r = 0; r < reports.size(); ++r)
      if (!reports[r].empty()) log::info("rank {}: {}", r, reports[r]);
  } else if (!data_report.empty()) {
    log::info("{}", data_report);
  }
  if (main_process && fs::exists(metrics_path)) {
    const auto png = (fs::path(output_dir) / "training_curves.png").string();
    plot_training_curves(read_metrics_log(metrics_path), png);
    log::info("metrics: {}; curves: {}", metrics_path, png);
  }
  return result;
}

}  // namespace minigpt4::train
