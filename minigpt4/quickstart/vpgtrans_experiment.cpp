#include "minigpt4/quickstart/vpgtrans_experiment.h"

#include "minigpt4/chat/conversation.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/datasets/stream.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/quickstart/heldout.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

namespace {

std::string first_prompt(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("vpgtrans-demo: cannot read the prompt file {}", path.string());
  for (std::string line; std::getline(in, line);)
    if (line.find(kImagePlaceholder) != std::string::npos) return line;
  fail("vpgtrans-demo: {} holds no prompt with {}", path.string(), kImagePlaceholder);
}

// Mean caption loss over the first n held-out pictures: the stage-1 objective (after the
// stage-1 prompt), on a caption phrased as stage 1's are (scene_caption; the
// phrasing of picture i is fixed by i, so every model is scored on the same text).
double heldout_loss(const MiniGPT4& model, const Tokenizer& tokenizer, const std::vector<HeldoutItem>& items, size_t n,
                    const std::string& prompt) {
  torch::NoGradGuard no_grad;
  const ImageEvalProcessor processor(static_cast<int>(model.config.vision.image_size));
  double sum = 0;
  size_t count = 0;
  for (size_t begin = 0; begin < n; begin += 32) {
    const size_t end = std::min(n, begin + 32);
    std::vector<torch::Tensor> images;
    std::vector<std::string> texts;
    for (size_t i = begin; i < end; ++i) {
      images.push_back(processor.from_file(items[i].image_path));
      std::mt19937_64 rng(datasets::mix_seed(0xCA9710A5ULL, i));
      texts.push_back(scene_caption(items[i].truth, rng));
    }
    sum += model.forward(torch::stack(images), texts, prompt, tokenizer).loss.item<double>() *
           static_cast<double>(end - begin);
    count += end - begin;
  }
  return count == 0 ? 0.0 : sum / static_cast<double>(count);
}

// Scores one model state the same way for every run: held-out chat answers (attributes
// right, as the quickstart's summary) and the held-out caption loss.
struct Scorer {
  std::vector<HeldoutItem> items;
  int64_t limit = -1;
  std::string caption_prompt;
  std::vector<std::string> options;
  std::shared_ptr<LlamaTokenizer> tokenizer;  // the second LLM's

  // `model` overrides name the weights; ckpt empty: the projector starts fresh (seeded).
  nlohmann::json score(const fs::path& config_path, const std::vector<std::string>& model, const std::string& ckpt,
                       const std::string& phase, int64_t step, uint64_t seed, bool blind = false) const {
    const auto t = Clock::now();
    std::vector<std::string> overrides = model;
    overrides.push_back("model.ckpt=" + ckpt);
    torch::manual_seed(seed);  // a fresh projector's initialisation
    const auto loaded = load_minigpt4(
        MiniGPT4Config::from_config(Config::load(config_path.string(), with(overrides, options))), torch::kCPU);
    HeldoutOptions eval;
    eval.conversation = kChatTemplate;
    eval.limit = limit;
    eval.blind = blind;
    const auto result = evaluate_heldout(*loaded, *tokenizer, items, eval);
    const size_t n = limit >= 0 ? std::min(items.size(), static_cast<size_t>(limit)) : items.size();
    const double loss = heldout_loss(*loaded, *tokenizer, items, n, caption_prompt);
    nlohmann::json point = {{"phase", phase},     {"step", step},
                            {"checkpoint", ckpt}, {"accuracy", result.seeing.accuracy()},
                            {"loss", loss},       {"per_attribute", result.seeing.to_json()}};
    if (blind) point["blind_accuracy"] = result.blind.accuracy();
    point["seconds"] = seconds_since(t);
    log::info("{} step {}: held-out attributes right {:.1f} %, caption loss {:.3f} ({:.0f} s)", phase, step,
              100 * result.seeing.accuracy(), loss, point["seconds"].get<double>());
    return point;
  }
};

// The run's checkpoints by global step: every checkpoint_step_N.pth, and the last one.
std::vector<std::pair<int64_t, std::string>> checkpoints_of(const StageOutcome& run) {
  std::vector<std::pair<int64_t, std::string>> found;
  static const std::regex name(R"(checkpoint_step_(\d+)\.pth)");
  for (const auto& entry : fs::directory_iterator(run.result.output_dir)) {
    std::smatch m;
    const auto file = entry.path().filename().string();
    if (std::regex_match(file, m, name)) found.emplace_back(std::stoll(m[1]), entry.path().string());
  }
  std::sort(found.begin(), found.end());
  if (found.empty() || found.back().first != run.result.global_step)
    found.emplace_back(run.result.global_step, run.result.last_checkpoint);
  return found;
}

int64_t scaled_every(int64_t every, double scale) {
  return std::max<int64_t>(1, std::llround(static_cast<double>(every) * scale));
}

// First curve point (in step order) at or above `target`; nullopt when none.
std::optional<int64_t> first_reaching(const nlohmann::json& curve, const char* key, double target,
                                      bool lower_is_better) {
  for (const auto& p : curve) {
    const double v = p.at(key).get<double>();
    if (lower_is_better ? v <= target : v >= target) return p.at("step").get<int64_t>();
  }
  return std::nullopt;
}

nlohmann::json optional_json(const std::optional<int64_t>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

namespace {

// VPGTrans' experiment on a finished quickstart, one method per step: 1. the second LLM,
// 2. its stage 1 from scratch, 3. the transfer (word converter, then VPGTrans' two stages)
// and its ablation, 4. the comparison.
class VpgtransExperiment {
 public:
  explicit VpgtransExperiment(const VpgtransExperimentOptions& opt);
  nlohmann::json run();

 private:
  // VPGTrans' two stages from an initial projector (empty: a fresh one), scored at every
  // checkpoint; the steps of both stages count together.
  struct TransferRun {
    nlohmann::json curve = nlohmann::json::array();
    StageOutcome warmup, finetune;
    double eval_seconds = 0;
  };
  struct ConvertedProjector {
    train::ProjectorTransfer transfer;
    std::string init_proj;  // the checkpoint holding it
    size_t captions = 0, distinct_source_tokens = 0;
    double seconds = 0;
  };

  nlohmann::json second_llm(const std::optional<nlohmann::json>& reused);
  nlohmann::json from_scratch(const std::optional<nlohmann::json>& reused);
  ConvertedProjector convert_projector();
  TransferRun transfer(const std::string& label, const std::string& init, const std::string& dirs);
  // Writes the run's summary fields into `into` and returns the first step at which it
  // reaches the from-scratch final accuracy.
  std::optional<int64_t> describe(const TransferRun& run, nlohmann::json& into) const;

  const VpgtransExperimentOptions& opt_;
  const Clock::time_point start_ = Clock::now();
  fs::path from_, out_, summary_path_;
  fs::path warmup_cfg_, stage1_cfg_, transfer1_cfg_, transfer2_cfg_;
  nlohmann::json quickstart_;
  std::string stage1_spec_;
  fs::path warmup_txt_, corpus_, source_init_, source_warm_, source_vpg_;
  std::string source_ckpt_, image_prompt_path_;
  StageSettings settings_;
  fs::path target_init_, target_warm_;
  Scorer scorer_;
  std::string target_llm_;
  std::vector<std::string> data_overrides_, transfer_model_;
  int64_t transfer_every_ = 0;
  double target_accuracy_ = 0, target_loss_ = 0;  // the from-scratch run's final accuracy and loss
};

VpgtransExperiment::VpgtransExperiment(const VpgtransExperimentOptions& opt) : opt_(opt) {
  from_ = fs::absolute(opt.from_dir).lexically_normal();
  out_ = opt.out_dir.empty() ? from_ / "vpgtrans" : fs::absolute(opt.out_dir).lexically_normal();
  summary_path_ = opt.summary_path.empty() ? from_ / "vpgtrans_summary.json" : fs::absolute(opt.summary_path);
  const fs::path configs = fs::absolute(opt.config_dir);
  warmup_cfg_ = configs / "quickstart_warmup.yaml", stage1_cfg_ = configs / "quickstart_stage1.yaml";
  transfer1_cfg_ = configs / "quickstart_vpgtrans_stage1_warmup.yaml";
  transfer2_cfg_ = configs / "quickstart_vpgtrans_stage2_finetune.yaml";
  for (const auto& cfg : {warmup_cfg_, stage1_cfg_, transfer1_cfg_, transfer2_cfg_})
    if (!fs::is_regular_file(cfg))
      fail("vpgtrans-demo: {} not found (run from the repository root, or pass --config-dir)", cfg.string());

  // The quickstart this starts from.
  const fs::path quickstart_summary_path = from_ / "quickstart_summary.json";
  if (!fs::is_regular_file(quickstart_summary_path))
    fail("vpgtrans-demo: {} not found: run `minigpt4 quickstart --out {}` first", quickstart_summary_path.string(),
         from_.string());
  quickstart_ = io::read_json_file(quickstart_summary_path.string());
  const auto world_json = io::read_json_file((from_ / "world" / "world.json").string());
  stage1_spec_ = (from_ / "world" / world_json.at("stage1").at("spec").get<std::string>()).string();
  warmup_txt_ = from_ / "world" / "warmup.txt", corpus_ = from_ / "world" / "corpus.txt";
  source_init_ = from_ / "model" / "init", source_warm_ = from_ / "model" / "warm",
  source_vpg_ = from_ / "model" / "stage1";
  source_ckpt_ = quickstart_.at("checkpoints").at("stage1").get<std::string>();
  for (const auto& p : {warmup_txt_, corpus_, source_init_ / "eva_vit.safetensors", source_warm_ / "llm",
                        source_vpg_ / "eva_vit.safetensors", fs::path(source_ckpt_)})
    if (!fs::exists(p))
      fail("vpgtrans-demo: {} is missing: rerun `minigpt4 quickstart --out {}`", p.string(), from_.string());
  image_prompt_path_ = (fs::path(opt.prompt_dir) / "image_only.txt").string();
  settings_ = StageSettings{opt.iterations_scale, opt.options};
  target_init_ = out_ / "model" / "init", target_warm_ = out_ / "model" / "warm";
}

// 1. The second LLM: another width, its own tokenizer of another size on the same world
//    text, warmed up on language exactly as the quickstart's.
nlohmann::json VpgtransExperiment::second_llm(const std::optional<nlohmann::json>& reused) {
  if (reused) {
    log::info("vpgtrans-demo: reusing the second LLM {}", (target_warm_ / "llm").string());
    return (*reused)["target"];
  }
  for (const char* dir : {"model", "warmup", "scratch"}) fs::remove_all(out_ / dir);
  fs::remove(out_ / "scratch_result.json");
  fs::create_directories(out_);
  auto t = Clock::now();
  nlohmann::json target =
      write_fresh_model(warmup_cfg_, warmup_txt_, opt_.target, opt_.seed, opt_.options, target_init_);
  const auto warm = warm_up_llm(warmup_cfg_, target_init_, warmup_txt_, out_ / "warmup", target_warm_, settings_);
  target["warmup_steps"] = warm.result.global_step;
  target["warmup_loss"] = warm.result.last_loss;
  target["llm"] = (target_warm_ / "llm").string();
  target["seconds"] = seconds_since(t);
  return target;
}

// 2. From scratch: the quickstart's stage 1 for the second LLM (the same fresh vision tower
//    the quickstart started from, a fresh projector, the same config and steps).
nlohmann::json VpgtransExperiment::from_scratch(const std::optional<nlohmann::json>& reused) {
  if (reused) {
    log::info("vpgtrans-demo: reusing the from-scratch curve of {}", (out_ / "scratch_result.json").string());
    return (*reused)["scratch"];
  }
  fs::remove_all(out_ / "scratch");
  const std::vector<std::string> scratch_model = {
      "model.vit_model=" + (source_init_ / "eva_vit.safetensors").string(),
      "model.q_former_model=" + (source_init_ / "blip2.safetensors").string(), target_llm_};
  const auto every = scaled_every(opt_.scratch_eval_every, opt_.iterations_scale);
  const auto run =
      run_stage("from scratch: stage 1 for the second LLM", stage1_cfg_,
                with(with(scratch_model, data_overrides_),
                     {"run.output_dir=" + (out_ / "scratch").string(), "run.save_freq=" + std::to_string(every)}),
                settings_);
  auto t = Clock::now();
  nlohmann::json scratch, curve = nlohmann::json::array();
  // Step 0 also gives the second LLM's blind accuracy (it does not depend on the picture).
  auto first = scorer_.score(stage1_cfg_, scratch_model, "", "scratch", 0, opt_.seed, /*blind=*/true);
  scratch["blind_accuracy"] = first["blind_accuracy"];
  curve.push_back(std::move(first));
  for (const auto& [step, ckpt] : checkpoints_of(run))
    curve.push_back(scorer_.score(stage1_cfg_, scratch_model, ckpt, "scratch", step, opt_.seed));
  scratch["curve"] = curve;
  scratch["steps"] = run.result.global_step;
  scratch["eval_every"] = every;
  scratch["final_loss"] = run.result.last_loss;
  scratch["seconds_train"] = run.seconds;
  scratch["seconds_eval"] = seconds_since(t);
  return scratch;
}

// 3a. The word converter merged with the quickstart's stage-1 projector.
VpgtransExperiment::ConvertedProjector VpgtransExperiment::convert_projector() {
  auto t = Clock::now();
  fs::create_directories(out_ / "transfer");
  const auto captions = train::read_captions(corpus_.string());
  ConvertedProjector c;
  c.transfer = train::transfer_projector(
      (source_warm_ / "llm").string(), (target_warm_ / "llm").string(), source_ckpt_, captions, opt_.converter,
      [](int64_t epoch, double loss) { log::info("word converter epoch {}: mean 1 - cos {:.4f}", epoch + 1, loss); });
  c.init_proj = (out_ / "transfer" / "vpgtrans_init_proj.pth").string();
  io::save_torch_checkpoint(c.init_proj, {{"llama_proj.weight", c.transfer.weight.contiguous()},
                                          {"llama_proj.bias", c.transfer.bias.contiguous()}});
  c.seconds = seconds_since(t);
  c.captions = captions.size();
  c.distinct_source_tokens = std::set<int64_t>(c.transfer.pairs.source.begin(), c.transfer.pairs.source.end()).size();
  log::info(
      "word converter: {} of {} captions tokenise to equal lengths ({} token pairs, {} distinct source tokens "
      "spanning {} dimensions), {} SGD steps, 1 - cos {:.4f} ({:.1f} s) -> {}",
      c.transfer.pairs.captions_used, captions.size(), c.transfer.pairs.source.size(), c.distinct_source_tokens,
      c.transfer.converter.source_span, c.transfer.sgd_steps, c.transfer.converter.final_loss, c.seconds, c.init_proj);
  return c;
}

// 3b. VPGTrans' two stages on the quickstart's trained vision tower.
VpgtransExperiment::TransferRun VpgtransExperiment::transfer(const std::string& label, const std::string& init,
                                                             const std::string& dirs) {
  const auto every = std::to_string(transfer_every_);
  TransferRun run;
  auto te = Clock::now();
  run.curve.push_back(scorer_.score(transfer1_cfg_, transfer_model_, init, label + "_init", 0, opt_.seed));
  run.eval_seconds += seconds_since(te);
  run.warmup = run_stage(
      label + ": VPGTrans stage 1, projector warm-up", transfer1_cfg_,
      with(with(transfer_model_, data_overrides_),
           {"model.ckpt=" + init, "run.output_dir=" + (out_ / (dirs + "_warmup")).string(), "run.save_freq=" + every}),
      settings_);
  run.finetune = run_stage(label + ": VPGTrans stage 2, fine-tuning", transfer2_cfg_,
                           with(with(transfer_model_, data_overrides_),
                                {"model.ckpt=" + run.warmup.result.last_checkpoint,
                                 "run.output_dir=" + (out_ / (dirs + "_finetune")).string(), "run.save_freq=" + every}),
                           settings_);
  te = Clock::now();
  for (const auto& [step, ckpt] : checkpoints_of(run.warmup))
    run.curve.push_back(scorer_.score(transfer1_cfg_, transfer_model_, ckpt, label + "_warmup", step, opt_.seed));
  for (const auto& [step, ckpt] : checkpoints_of(run.finetune))
    run.curve.push_back(scorer_.score(transfer2_cfg_, transfer_model_, ckpt, label + "_finetune",
                                      run.warmup.result.global_step + step, opt_.seed));
  run.eval_seconds += seconds_since(te);
  return run;
}

std::optional<int64_t> VpgtransExperiment::describe(const TransferRun& run, nlohmann::json& into) const {
  const auto reach = first_reaching(run.curve, "accuracy", target_accuracy_, false);
  const auto reach_loss = first_reaching(run.curve, "loss", target_loss_, true);
  double best = 0;
  for (const auto& p : run.curve) best = std::max(best, p.at("accuracy").get<double>());
  into["curve"] = run.curve;
  into["steps"] = run.warmup.result.global_step + run.finetune.result.global_step;
  into["warmup_steps"] = run.warmup.result.global_step;
  into["finetune_steps"] = run.finetune.result.global_step;
  into["eval_every"] = transfer_every_;
  into["warmup_loss"] = run.warmup.result.last_loss;
  into["finetune_loss"] = run.finetune.result.last_loss;
  into["steps_to_reach"] = optional_json(reach);
  into["steps_to_reach_loss"] = optional_json(reach_loss);
  into["final_accuracy"] = run.curve.back().at("accuracy");
  into["best_accuracy"] = best;
  into["seconds_train"] = run.warmup.seconds + run.finetune.seconds;
  into["seconds_warmup"] = run.warmup.seconds;
  into["seconds_finetune"] = run.finetune.seconds;
  into["seconds_eval"] = run.eval_seconds;
  return reach;
}

nlohmann::json VpgtransExperiment::run() {
  nlohmann::json summary;
  summary["from"] = from_.string();
  summary["seconds"] = nlohmann::json::object();
  summary["iterations_scale"] = opt_.iterations_scale;

  // What an earlier run must share with this one to be reused (--reuse): the second LLM
  // (llm_key), and the from-scratch curve (scratch_key: also how it was scored).
  const nlohmann::json llm_key = {
      {"from", from_.string()},
      {"quickstart_stage1_checkpoint", source_ckpt_},
      {"target",
       {opt_.target.vocab_size, opt_.target.hidden, opt_.target.layers, opt_.target.heads, opt_.target.intermediate}},
      {"seed", opt_.seed},
      {"iterations_scale", opt_.iterations_scale},
      {"options", opt_.options}};
  const nlohmann::json scratch_key = {{"llm", llm_key},
                                      {"scratch_eval_every", opt_.scratch_eval_every},
                                      {"eval_limit", opt_.eval_limit},
                                      {"loss", "scene_caption/1"}};
  const fs::path llm_file = out_ / "second_llm.json", scratch_file = out_ / "scratch_result.json";
  auto reusable = [&](const fs::path& file, const nlohmann::json& key) -> std::optional<nlohmann::json> {
    if (!opt_.reuse || !fs::is_regular_file(file)) return std::nullopt;
    auto earlier = io::read_json_file(file.string());
    if (earlier.value("key", nlohmann::json()) == key) return earlier;
    log::info("vpgtrans-demo: {} was made with other settings: not reused", file.string());
    return std::nullopt;
  };
  auto reused_llm = fs::is_directory(target_warm_ / "llm") ? reusable(llm_file, llm_key) : std::nullopt;
  auto reused_scratch = reused_llm ? reusable(scratch_file, scratch_key) : std::nullopt;
  for (const char* dir : {"transfer", "transfer_warmup", "transfer_finetune", "random_warmup", "random_finetune"})
    fs::remove_all(out_ / dir);

  const nlohmann::json target = second_llm(reused_llm);
  if (reused_llm)
    summary["reused"]["second_llm"] = llm_file.string();
  else
    write_file(llm_file, nlohmann::json{{"key", llm_key}, {"target", target}}.dump(2) + "\n");
  summary["source"] = {{"llm", (source_warm_ / "llm").string()},
                       {"llm_hidden", quickstart_.at("model").at("llm_hidden")},
                       {"llm_vocab_size", quickstart_.at("model").at("llm_vocab_size")},
                       {"stage1_checkpoint", source_ckpt_},
                       {"stage1_steps", quickstart_.at("steps").at("stage1")},
                       {"quickstart_accuracy", quickstart_.at("accuracy")}};
  summary["target"] = target;

  scorer_.items = read_heldout((from_ / "world" / "heldout").string());
  scorer_.limit = opt_.eval_limit;
  scorer_.caption_prompt = first_prompt(image_prompt_path_);
  scorer_.options = opt_.options;
  scorer_.tokenizer = std::make_shared<LlamaTokenizer>(LlamaTokenizer::from_pretrained(target_warm_ / "llm"));
  target_llm_ = "model.llama_model=" + (target_warm_ / "llm").string();
  data_overrides_ = {"datasets.cc_sbu.build_info.storage=" + stage1_spec_, "model.prompt_path=" + image_prompt_path_};

  const nlohmann::json scratch = from_scratch(reused_scratch);
  if (reused_scratch)
    summary["reused"]["scratch"] = scratch_file.string();
  else
    write_file(scratch_file, nlohmann::json{{"key", scratch_key}, {"scratch", scratch}}.dump(2) + "\n");
  summary["scratch"] = scratch;

  // 3. Transfer: the word converter merged with the quickstart's stage-1 projector, then
  //    VPGTrans' two stages on the quickstart's trained vision tower.
  const ConvertedProjector converted = convert_projector();
  transfer_model_ = {"model.vit_model=" + (source_vpg_ / "eva_vit.safetensors").string(),
                     "model.q_former_model=" + (source_vpg_ / "blip2.safetensors").string(), target_llm_};
  transfer_every_ = scaled_every(opt_.transfer_eval_every, opt_.iterations_scale);
  const auto tr = transfer("transfer", converted.init_proj, "transfer");
  // The ablation: the same recipe on the same tower from a fresh projector, which tells
  // what the word converter adds to reusing the trained tower.
  const auto ablation = transfer("random_projector", "", "random");

  // 4. The comparison: the from-scratch final accuracy, and when the transfer gets there.
  const auto& scratch_curve = scratch.at("curve");
  target_accuracy_ = scratch_curve.back().at("accuracy").get<double>();
  target_loss_ = scratch_curve.back().at("loss").get<double>();
  const int64_t scratch_steps = scratch.at("steps").get<int64_t>();
  nlohmann::json transfer_json, ablation_json;
  const auto reach = describe(tr, transfer_json);
  describe(ablation, ablation_json);
  transfer_json["init_projector"] = converted.init_proj;
  transfer_json["converter"] = {{"captions", converted.captions},
                                {"captions_used", converted.transfer.pairs.captions_used},
                                {"token_pairs", converted.transfer.pairs.source.size()},
                                {"distinct_source_tokens", converted.distinct_source_tokens},
                                {"source_span", converted.transfer.converter.source_span},
                                {"source_dim", summary["source"]["llm_hidden"]},
                                {"span_only", opt_.converter.span_only},
                                {"sgd_steps", converted.transfer.sgd_steps},
                                {"epochs", opt_.converter.epochs},
                                {"batch_size", opt_.converter.batch_size},
                                {"lr", opt_.converter.lr},
                                {"final_one_minus_cos", converted.transfer.converter.final_loss},
                                {"seconds", converted.seconds}};
  const auto& step0 = tr.curve.front();
  const auto& random0 = ablation.curve.front();
  transfer_json["step0"] = {{"transfer", {{"accuracy", step0["accuracy"]}, {"loss", step0["loss"]}}},
                            {"random", {{"accuracy", random0["accuracy"]}, {"loss", random0["loss"]}}}};
  summary["transfer"] = transfer_json;
  summary["transfer_random_projector"] = ablation_json;

  const auto scratch_reach = first_reaching(scratch_curve, "accuracy", target_accuracy_, false);
  nlohmann::json result = {{"scratch_final_accuracy", target_accuracy_},
                           {"scratch_final_loss", target_loss_},
                           {"scratch_steps", scratch_steps},
                           {"scratch_first_step_reaching_final", optional_json(scratch_reach)},
                           {"transfer_steps", transfer_json["steps"]},
                           {"transfer_steps_to_reach", transfer_json["steps_to_reach"]},
                           {"transfer_steps_to_reach_loss", transfer_json["steps_to_reach_loss"]},
                           {"transfer_final_accuracy", transfer_json["final_accuracy"]},
                           {"transfer_best_accuracy", transfer_json["best_accuracy"]},
                           {"random_projector_steps_to_reach", ablation_json["steps_to_reach"]},
                           {"random_projector_final_accuracy", ablation_json["final_accuracy"]},
                           {"converter_sgd_steps", converted.transfer.sgd_steps}};
  auto ratio = [&](const nlohmann::json& steps) {
    return steps.is_null() ? nlohmann::json(nullptr)
                           : nlohmann::json(steps.get<double>() / static_cast<double>(scratch_steps));
  };
  result["ratio"] = ratio(result["transfer_steps_to_reach"]);
  result["ratio_loss"] = ratio(result["transfer_steps_to_reach_loss"]);
  result["within_a_fifth"] = reach && 5 * *reach <= scratch_steps;
  if (reach) {
    // Training time up to that step, from each stage's own rate, plus the converter.
    const double w = static_cast<double>(tr.warmup.result.global_step),
                 f = static_cast<double>(tr.finetune.result.global_step);
    const double r = static_cast<double>(*reach);
    const double seconds = converted.seconds + tr.warmup.seconds * std::min(r, w) / std::max(w, 1.0) +
                           tr.finetune.seconds * std::max(0.0, r - w) / std::max(f, 1.0);
    result["transfer_train_seconds_to_reach"] = seconds;
    result["seconds_ratio"] = seconds / scratch.at("seconds_train").get<double>();
  }
  summary["result"] = result;
  summary["seconds"]["converter"] = converted.seconds;
  summary["seconds"]["transfer_train"] = transfer_json["seconds_train"];
  summary["seconds"]["transfer_eval"] = transfer_json["seconds_eval"];
  summary["seconds"]["random_projector_train"] = ablation_json["seconds_train"];
  summary["seconds"]["random_projector_eval"] = ablation_json["seconds_eval"];
  summary["seconds"]["scratch_train"] = scratch.at("seconds_train");
  summary["seconds"]["scratch_eval"] = scratch.at("seconds_eval");
  summary["seconds"]["second_llm"] = target.value("seconds", 0.0);
  summary["n_heldout"] = step0.at("per_attribute").at("items");
  summary["wall_seconds"] = seconds_since(start_);
  write_file(summary_path_, summary.dump(2) + "\n");
  log::info("vpgtrans-demo: from scratch {:.1f} % after {} steps; transfer {} ({})", 100 * target_accuracy_,
            scratch_steps,
            reach ? fmt::format("reaches it at step {} ({:.3f} of the steps)", *reach,
                                static_cast<double>(*reach) / static_cast<double>(scratch_steps))
                  : fmt::format("does not reach it in {} steps (best {:.1f} %)", transfer_json["steps"].get<int64_t>(),
                                100 * transfer_json["best_accuracy"].get<double>()),
            summary_path_.string());
  return summary;
}

}  // namespace

nlohmann::json run_vpgtrans_experiment(const VpgtransExperimentOptions& opt) { return VpgtransExperiment(opt).run(); }

std::string format_vpgtrans_table(const nlohmann::json& s) {
  std::map<int64_t, std::array<std::string, 3>> rows;
  const std::array<const char*, 3> runs = {"scratch", "transfer", "transfer_random_projector"};
  for (size_t k = 0; k < runs.size(); ++k)
    for (const auto& p : s.at(runs[k]).at("curve"))
      rows[p.at("step").get<int64_t>()][k] =
          fmt::format("{:5.1f} %  {:.3f}", 100 * p.at("accuracy").get<double>(), p.at("loss").get<double>());
  std::string table =
      fmt::format("{:>6}  {:<16}  {:<16}  {:<16}\n", "step", "from scratch", "transfer", "random projector");
  table += fmt::format("{:>6}  {:<16}  {:<16}  {:<16}\n", "", "acc      loss", "acc      loss", "acc      loss");
  for (const auto& [step, row] : rows)
    table += fmt::format("{:>6}  {:<16}  {:<16}  {:<16}\n", step, row[0].empty() ? "-" : row[0],
                         row[1].empty() ? "-" : row[1], row[2].empty() ? "-" : row[2]);
  const auto& r = s.at("result");
  table +=
      fmt::format("from scratch: {:.1f} % after {} steps; transfer: ", 100 * r["scratch_final_accuracy"].get<double>(),
                  r["scratch_steps"].get<int64_t>());
  if (r["transfer_steps_to_reach"].is_null())
    table += fmt::format("not reached in {} steps (best {:.1f} %)", r["transfer_steps"].get<int64_t>(),
                         100 * r["transfer_best_accuracy"].get<double>());
  else
    table += fmt::format("reached at step {} = {:.3f} of the steps ({})", r["transfer_steps_to_reach"].get<int64_t>(),
                         r["ratio"].get<double>(),
                         r["within_a_fifth"].get<bool>() ? "within a fifth" : "NOT within a fifth");
  table += fmt::format(", plus {} word-converter SGD steps\n", r["converter_sgd_steps"].get<int64_t>());
  table += fmt::format("same recipe from a fresh projector: {}\n",
                       r["random_projector_steps_to_reach"].is_null()
                           ? std::string("not reached")
                           : fmt::format("reached at step {}", r["random_projector_steps_to_reach"].get<int64_t>()));
  return table;
}

}  // namespace minigpt4::quickstart
