#include "minigpt4/quickstart/pipeline.h"

#include "minigpt4/chat/conversation.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/datasets/stream.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/evaluate/runner.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/quickstart/heldout.h"
#include "minigpt4/quickstart/stages.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/train/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("quickstart: cannot read the prompt file {}", path);
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);)
    if (line.find(kImagePlaceholder) != std::string::npos) prompts.push_back(line);
  if (prompts.empty()) fail("quickstart: {} holds no prompt with {}", path, kImagePlaceholder);
  return prompts;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

// The language the LLM warms up on, standing in for what Vicuna brings to MiniGPT-4: the
// world's language (every caption and answer as it is), the habit of answering in chat
// turns, and reading what is in its context. For the last two, fresh scenes (an RNG stream
// of their own, not the training or held-out pictures) are written as text between <Img>
// and </Img>, where the image embeddings will later go, followed by a caption or by a chat
// answer in the template `minigpt4 chat` uses and in the stage-2 training template. The
// text never shows a picture: learning to see stays the job of stages 1 and 2.
size_t write_warmup_corpus(const SynthSummary& world, const std::vector<std::string>& prompts, uint64_t seed,
                           int context_lines, const fs::path& out) {
  std::ifstream corpus(world.corpus_path);
  if (!corpus) fail("quickstart: cannot read {}", world.corpus_path);
  std::string text;
  size_t lines = 0;
  for (std::string line; std::getline(corpus, line); ++lines) text += line + "\n";

  std::mt19937_64 rng(datasets::mix_seed(seed, 0x77A4D5ULL));
  for (int i = 0; i < context_lines; ++i, ++lines) {
    const auto scene = random_scene(rng);
    const std::string described = "<Img>" + canonical_caption(scene) + "</Img>";
    const std::string question =
        replace_all(prompts[rng() % prompts.size()], std::string("<Img>") + kImagePlaceholder + "</Img>", described);
    switch (i % 3) {
      case 0: {
        Conversation conv = conversation_template(kChatTemplate);
        conv.append_message(conv.roles()[0], question);
        conv.start_answer();
        conv.set_answer(scene_answer(scene, rng));
        text += conv.get_prompt() + "\n";
        break;
      }
      case 1: text += "###Human: " + question + " ###Assistant: " + scene_answer(scene, rng) + "###\n"; break;
      default: text += described + " " + scene_caption(scene, rng) + "\n";
    }
  }
  write_file(out, text);
  return lines;
}

std::string yaml_quote(const std::string& s) {
  return "\"" + replace_all(replace_all(s, "\\", "\\\\"), "\"", "\\\"") + "\"";
}

struct BenchmarkOutcome {
  nlohmann::json headline = nlohmann::json::object();  // CIDEr, BLEU-4, VQA accuracy
  double seconds = 0;
};

// `minigpt4 evaluate` on the world's captioning and VQA sets: each gets its eval config
// (quickstart_{caption,vqa}_eval.yaml, the model of `model_yaml`), its outputs under
// evaluate/<set>/, and its metrics in quickstart_eval_metrics.json.
BenchmarkOutcome evaluate_benchmarks(const SynthSummary& world, const std::string& model_yaml, const fs::path& out,
                                     const QuickstartOptions& opt) {
  BenchmarkOutcome outcome;
  if (world.eval_samples == 0) return outcome;
  const auto start = Clock::now();
  const std::vector<std::pair<std::string, std::string>> sets = {
      {"caption",
       "  task: coco_caption\n"
       "  annotations: " +
           yaml_quote(world.eval_captions) +
           "\n"
           "  image_root: " +
           yaml_quote(world.eval_image_root) +
           "\n"
           "  prompt: \"Describe this image in detail.\"\n"
           "  max_new_tokens: 40\n"},
      {"vqa",
       "  task: vqav2\n"
       "  annotations: " +
           yaml_quote(world.eval_vqa_annotations) +
           "\n"
           "  questions: " +
           yaml_quote(world.eval_vqa_questions) +
           "\n"
           "  image_root: " +
           yaml_quote(world.eval_image_root) +
           "\n"
           "  image_file: \"{image_id:05d}.jpg\"\n"
           "  prompt: \"Based on the image, respond to this question with a short answer: {question}\"\n"
           "  max_new_tokens: 10\n"}};
  nlohmann::json metrics;
  for (const auto& [name, evaluation] : sets) {
    const fs::path yaml = out / ("quickstart_" + name + "_eval.yaml");
    const fs::path output_dir = out / "evaluate" / name;
    write_file(yaml, "# `minigpt4 evaluate --cfg-path " + yaml.string() + "`: the quickstart model on the synthetic " +
                         name + " set (written by `minigpt4 quickstart`).\n" + model_yaml + "\nevaluation:\n" +
                         evaluation + "\nrun:\n  device: \"cpu\"\n  batch_size_eval: 8\n  output_dir: " +
                         yaml_quote(output_dir.string()) + "\n");
    fs::remove_all(output_dir);  // predictions of an earlier quickstart's model do not count
    log::info("==== quickstart: evaluate on the {} set ({}) ====", name, yaml.string());
    metrics[name] = evaluate::run_evaluation(Config::load(yaml.string(), opt.options), {}).metrics;
  }
  write_file(out / "quickstart_eval_metrics.json", metrics.dump(2) + "\n");
  outcome.headline = {{"caption_CIDEr", metrics["caption"]["CIDEr"]},
                      {"caption_Bleu_4", metrics["caption"]["Bleu_4"]},
                      {"vqa_accuracy", metrics["vqa"]["overall"]},
                      {"items", world.eval_samples},
                      {"metrics", (out / "quickstart_eval_metrics.json").string()}};
  outcome.seconds = seconds_since(start);
  log::info("benchmarks ({} pictures): captions CIDEr {:.3f}, BLEU-4 {:.3f}; VQA accuracy {:.1f} % ({:.0f} s)",
            world.eval_samples, metrics["caption"]["CIDEr"].get<double>(), metrics["caption"]["Bleu_4"].get<double>(),
            metrics["vqa"]["overall"].get<double>(), outcome.seconds);
  return outcome;
}

}  // namespace

nlohmann::json run_quickstart(const QuickstartOptions& opt) {
  const auto start = Clock::now();
  const fs::path out = fs::absolute(opt.out_dir).lexically_normal();
  const fs::path configs = fs::absolute(opt.config_dir);
  for (const char* name : {"quickstart_warmup.yaml", "quickstart_stage1.yaml", "quickstart_stage2.yaml"})
    if (!fs::is_regular_file(configs / name))
      fail("quickstart: {} not found (run from the repository root, or pass --config-dir)", (configs / name).string());
  const auto prompts = read_prompts(opt.prompt_path);
  fs::create_directories(out);
  nlohmann::json summary;

  // 1. The world.
  auto t = Clock::now();
  SynthOptions synth;
  synth.out_dir = (out / "world").string();
  synth.seed = opt.seed;
  synth.stage1_samples = opt.stage1_samples;
  synth.align_samples = opt.align_samples;
  synth.heldout_samples = opt.heldout_samples;
  synth.image_size = 64;
  synth.shard_size = 500;
  synth.force = true;
  const auto world = write_synthetic_world(synth);
  const fs::path warmup_txt = out / "world" / "warmup.txt";
  const size_t warmup_lines = write_warmup_corpus(world, prompts, opt.seed, opt.warmup_context_lines, warmup_txt);
  log::info("world: {} stage-1 samples in {} shards, {} stage-2 pairs, {} held out, {} warm-up lines ({:.1f} s)",
            world.stage1_samples, world.stage1_shards, world.align_samples, world.heldout_samples, warmup_lines,
            seconds_since(t));
  summary["seconds"]["world"] = seconds_since(t);

  // 2. A fresh tiny model in the real layout, its tokenizer trained on the world's text.
  t = Clock::now();
  const fs::path init_dir = out / "model" / "init";
  fs::remove_all(out / "model");
  const fs::path warmup_cfg = configs / "quickstart_warmup.yaml", stage1_cfg = configs / "quickstart_stage1.yaml",
                 stage2_cfg = configs / "quickstart_stage2.yaml";
  const StageSettings settings{opt.iterations_scale, opt.options};
  TinyLlm llm_size;
  llm_size.vocab_size = opt.vocab_size;
  llm_size.hidden = opt.llm_hidden, llm_size.layers = opt.llm_layers, llm_size.heads = opt.llm_heads;
  llm_size.intermediate = opt.llm_intermediate;
  summary["model"] = write_fresh_model(warmup_cfg, warmup_txt, llm_size, opt.seed, opt.options, init_dir);
  summary["seconds"]["model"] = seconds_since(t);

  // 3. Language warm-up, then the warmed-up LLM as its own release.
  const fs::path warm_dir = out / "model" / "warm";
  const auto warm = warm_up_llm(warmup_cfg, init_dir, warmup_txt, out / "warmup", warm_dir, settings);
  auto load_release = [&](const fs::path& config, std::vector<std::string> overrides) {
    const auto c = MiniGPT4Config::from_config(Config::load(config.string(), with(overrides, opt.options)));
    return load_minigpt4(c, torch::kCPU);
  };

  // 4. Stage 1 on the shards, with the warm LLM; the trained vision tower as a release.
  const std::vector<std::string> stage1_paths = {"model.vit_model=" + (init_dir / "eva_vit.safetensors").string(),
                                                 "model.q_former_model=" + (init_dir / "blip2.safetensors").string(),
                                                 "model.llama_model=" + (warm_dir / "llm").string()};
  const auto stage1 = run_stage(
      "stage 1", stage1_cfg,
      with(stage1_paths, {"datasets.cc_sbu.build_info.storage=" + world.stage1_spec,
                          "model.prompt_path=" + (fs::path(opt.prompt_path).parent_path() / "image_only.txt").string(),
                          "run.output_dir=" + (out / "stage1").string()}),
      settings);
  const fs::path stage1_dir = out / "model" / "stage1";
  release_model(*load_release(stage1_cfg, with(stage1_paths, {"model.ckpt=" + stage1.result.last_checkpoint})),
                init_dir / "llm", stage1_dir);

  // 5. Stage 2 from the stage-1 checkpoint.
  const auto stage2 =
      run_stage("stage 2", stage2_cfg,
                with(release_paths(stage1_dir),
                     {"model.ckpt=" + stage1.result.last_checkpoint, "model.prompt_path=" + opt.prompt_path,
                      "datasets.cc_sbu_align.build_info.storage=" + world.align_root,
                      "run.output_dir=" + (out / "stage2").string()}),
                settings);

  // 6. The eval config a user chats with, and the held-out answers.
  const fs::path eval_yaml = out / "minigpt4_quickstart_eval.yaml";
  const std::string model_yaml =
      "model:\n"
      "  arch: minigpt4\n"
      "  model_type: quickstart\n"
      "  vit_model: " +
      yaml_quote((stage1_dir / "eva_vit.safetensors").string()) +
      "\n"
      "  q_former_model: " +
      yaml_quote((stage1_dir / "blip2.safetensors").string()) +
      "\n"
      "  llama_model: " +
      yaml_quote((stage1_dir / "llm").string()) +
      "\n"
      "  ckpt: " +
      yaml_quote(stage2.result.last_checkpoint) +
      "\n"
      "  max_txt_len: 160\n"
      "  end_sym: \"###\"\n"
      "  low_resource: False\n"
      "  prompt_template: '###Human: {} ###Assistant: '\n"
      "\n"
      "datasets:\n"
      "  cc_sbu_align:\n"
      "    vis_processor:\n"
      "      train:\n"
      "        name: \"blip2_image_eval\"\n"
      "        image_size: 64\n"
      "    text_processor:\n"
      "      train:\n"
      "        name: \"blip_caption\"\n";
  write_file(eval_yaml,
             "# The quickstart's trained tiny MiniGPT-4 (written by `minigpt4 quickstart`).\n"
             "#   minigpt4 chat --cfg-path " +
                 eval_yaml.string() + " --image IMAGE --prompt \"Describe this image in detail.\"\n" + model_yaml +
                 "\n"
                 "run:\n"
                 "  task: image_text_pretrain\n"
                 "  device: \"cpu\"\n");

  t = Clock::now();
  const auto eval_config = Config::load(eval_yaml.string(), opt.options);
  const auto model = load_minigpt4(MiniGPT4Config::from_config(eval_config), torch::kCPU);
  const auto chat_tokenizer = LlamaTokenizer::from_pretrained(stage1_dir / "llm");
  const auto items = read_heldout(world.heldout_root);
  HeldoutOptions eval_options;
  eval_options.limit = opt.eval_limit;
  eval_options.conversation = kChatTemplate;
  eval_options.answers_path = (out / "heldout_answers.jsonl").string();
  const auto heldout = evaluate_heldout(*model, chat_tokenizer, items, eval_options);
  log::info("held out: {} pictures; attributes right: {:.1f} % with the image, {:.1f} % blind ({:.0f} s)",
            heldout.seeing.items, 100 * heldout.seeing.accuracy(), 100 * heldout.blind.accuracy(), heldout.seconds);

  // 7. The benchmark path on the same model: a captioning and a VQA set of held-out pictures.
  const auto benchmarks = evaluate_benchmarks(world, model_yaml, out, opt);

  summary["accuracy"] = heldout.seeing.accuracy();
  summary["blind_accuracy"] = heldout.blind.accuracy();
  summary["n_heldout"] = heldout.seeing.items;
  summary["per_attribute"] = {{"seeing", heldout.seeing.to_json()}, {"blind", heldout.blind.to_json()}};
  summary["warmup_loss"] = warm.result.last_loss;
  summary["stage1_loss"] = stage1.result.last_loss;
  summary["stage2_loss"] = stage2.result.last_loss;
  summary["steps"] = {{"warmup", warm.result.global_step},
                      {"stage1", stage1.result.global_step},
                      {"stage2", stage2.result.global_step}};
  summary["seconds"]["warmup"] = warm.seconds;
  summary["seconds"]["stage1"] = stage1.seconds;
  summary["seconds"]["stage2"] = stage2.seconds;
  summary["seconds"]["heldout"] = heldout.seconds;
  summary["checkpoints"] = {{"warmup", warm.result.last_checkpoint},
                            {"stage1", stage1.result.last_checkpoint},
                            {"stage2", stage2.result.last_checkpoint}};
  summary["benchmarks"] = benchmarks.headline;
  summary["seconds"]["benchmarks"] = benchmarks.seconds;
  summary["eval_config"] = eval_yaml.string();
  summary["answers"] = eval_options.answers_path;
  summary["wall_seconds"] = seconds_since(start);
  write_file(out / "quickstart_summary.json", summary.dump(2) + "\n");
  return summary;
}

}  // namespace minigpt4::quickstart
