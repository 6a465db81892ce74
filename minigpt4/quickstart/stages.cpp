#include "minigpt4/quickstart/stages.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/models/init.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/tokenizer/train_tokenizer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void write_file(const fs::path& path, const std::string& text) {
  io::AtomicWriter out(path.string());
  out.write(text.data(), text.size());
  out.commit();
}

std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

std::vector<std::string> scaled_iteration_overrides(const fs::path& config_path,
                                                    const std::vector<std::string>& overrides,
                                                    const StageSettings& settings) {
  if (settings.iterations_scale == 1.0) return {};
  // iters_per_epoch scaled (tests), read from the file first.
  const auto base = RunSettings::from_config(Config::load(config_path.string(), overrides)).schedule;
  const auto iters = base.iters_per_epoch.value_or(0);
  const auto scaled = std::max<int64_t>(2, std::llround(static_cast<double>(iters) * settings.iterations_scale));
  const auto warm = base.warmup_steps;
  return {"run.iters_per_epoch=" + std::to_string(scaled),
          "run.warmup_steps=" + std::to_string(std::min<int64_t>(warm, scaled))};
}

StageOutcome run_stage(const std::string& name, const fs::path& config_path, std::vector<std::string> overrides,
                       const StageSettings& settings) {
  overrides = with(overrides, scaled_iteration_overrides(config_path, overrides, settings));
  const auto config = Config::load(config_path.string(), with(overrides, settings.options));
  log::info("==== quickstart: {} ({}) ====", name, config_path.string());
  const auto start = Clock::now();
  train::TrainOptions train_options;
  train_options.device = torch::kCPU;
  StageOutcome out;
  out.result = train::run_training(config, train_options);
  out.seconds = seconds_since(start);
  if (out.result.last_checkpoint.empty()) fail("quickstart: {} wrote no checkpoint", name);
  log::info("{}: {} steps in {:.0f} s, loss {:.3f} -> {:.3f}", name, out.result.global_step, out.seconds,
            out.result.first_loss, out.result.last_loss);
  return out;
}

std::vector<std::string> release_paths(const fs::path& release) {
  return {"model.vit_model=" + (release / "eva_vit.safetensors").string(),
          "model.q_former_model=" + (release / "blip2.safetensors").string(),
          "model.llama_model=" + (release / "llm").string()};
}

void copy_tokenizer(const fs::path& from, const fs::path& to) {
  for (const char* name : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing);
}

void release_model(const MiniGPT4& model, const fs::path& tokenizer_dir, const fs::path& dir) {
  const auto files = save_model_parts(model, dir.string());
  copy_tokenizer(tokenizer_dir, files.llama_model);
}

nlohmann::json write_fresh_model(const fs::path& model_config_path, const fs::path& corpus, const TinyLlm& size,
                                 uint64_t seed, const std::vector<std::string>& options, const fs::path& init_dir) {
  fs::create_directories(init_dir / "llm");
  TokenizerTrainOptions tok;
  tok.corpus_path = corpus.string();
  tok.out_dir = (init_dir / "llm").string();
  tok.vocab_size = size.vocab_size;
  train_llama_tokenizer(tok);
  const auto tokenizer = LlamaTokenizer::from_pretrained(init_dir / "llm");

  LlamaConfig llm;
  llm.vocab_size = tokenizer.vocab_size();
  llm.hidden_size = size.hidden;
  llm.intermediate_size = size.intermediate;
  llm.num_hidden_layers = size.layers;
  llm.num_attention_heads = size.heads;
  llm.num_key_value_heads = size.heads;
  llm.rms_norm_eps = 1e-6;
  llm.max_position_embeddings = 512;
  const auto model_config = MiniGPT4Config::from_config(Config::load(model_config_path.string(), options));
  MiniGPT4 fresh(model_config, llm, torch::kCPU);
  init_fresh_weights(fresh, seed);
  // No pretrained vision tower exists at this size: it starts at PyTorch's scale (see init.h).
  init_fresh_weights_fan_in(*fresh.visual_encoder, seed + 1);
  if (fresh.Qformer) {
    init_fresh_weights_fan_in(*fresh.Qformer, seed + 2);
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 3);
    fresh.query_tokens.normal_(0.0, 0.5, gen);
  }
  save_model_parts(fresh, init_dir.string());
  int64_t params = 0;
  for (const auto& p : fresh.parameters()) params += p.numel();
  log::info("fresh model: {:.2f} M parameters, LLM vocabulary {} ({})", static_cast<double>(params) / 1e6,
            llm.vocab_size, init_dir.string());
  return {{"parameters", params},
          {"llm_vocab_size", llm.vocab_size},
          {"llm_hidden", llm.hidden_size},
          {"llm_layers", llm.num_hidden_layers}};
}

StageOutcome warm_up_llm(const fs::path& warmup_config, const fs::path& init_dir, const fs::path& corpus,
                         const fs::path& run_dir, const fs::path& warm_dir, const StageSettings& settings) {
  const auto overrides = with(release_paths(init_dir), {"datasets.text_corpus.build_info.storage=" + corpus.string(),
                                                        "run.output_dir=" + run_dir.string()});
  auto warm = run_stage("language warm-up", warmup_config, overrides, settings);
  const auto c = MiniGPT4Config::from_config(Config::load(
      warmup_config.string(),
      with(with(release_paths(init_dir), {"model.ckpt=" + warm.result.last_checkpoint}), settings.options)));
  release_model(*load_minigpt4(c, torch::kCPU), init_dir / "llm", warm_dir);
  return warm;
}

}  // namespace minigpt4::quickstart
