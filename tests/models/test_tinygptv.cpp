// TinyGPT-V (minigpt4/models/tinygptv.h): the two projections, TinyGPT-V's Phi (fused
// query_key_value, q/k LayerNorm, post-attention RMSNorm) built from today's split Phi
// files, what trains, its checkpoints' PEFT-wrapped key layout, the errors for keys that
// do not fit, its configs, and the stage-4 chat template. The model is tiny_vicuna0's
// vision side with a small random Phi (split layout, as microsoft/phi-2 today) whose
// directory borrows tiny_vicuna0's sentencepiece tokenizer.
#include "minigpt4/common/run_settings.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/chat/conversation.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/io/torch_save.h"
#include "minigpt4/models/init.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/tinygptv.h"
#include "minigpt4/models/weights.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "minigpt4/train/checkpoint.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/train/trainer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <fstream>

#include <unistd.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

PhiConfig small_phi() {
  PhiConfig c;
  c.vocab_size = 1000;  // tiny_vicuna0's tokenizer
  c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 4, c.partial_rotary_factor = 0.5;
  c.bos_token_id = 1, c.eos_token_id = 2;
  return c;
}

void write_phi_dir(const fs::path& dir, const StateDict& weights) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << phi_config_json(small_phi()).dump(2) << "\n";
  io::save_safetensors((dir / "model.safetensors").string(), weights, {{"format", "pt"}});
  for (const char* file : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(tiny() / "vicuna" / file, dir / file, fs::copy_options::overwrite_existing);
}

// Two directories with the same random Phi: split q/k/v (microsoft/phi-2 today) and the
// fused query_key_value TinyGPT-V's code reads; built once per process.
struct PhiDirs {
  fs::path root, split, fused;
  StateDict split_weights;
  ~PhiDirs() {
    std::error_code ec;
    if (!root.empty()) fs::remove_all(root, ec);
  }
};

const PhiDirs& phi_dirs() {
  static const PhiDirs dirs = [] {
    PhiDirs d;
    d.root = fs::temp_directory_path() / ("minigpt4_tinygptv_" + std::to_string(::getpid()));
    fs::remove_all(d.root);
    d.split = d.root / "phi_split", d.fused = d.root / "phi_fused";
    PhiForCausalLM phi(small_phi(), torch::kFloat32);
    torch::manual_seed(11);
    torch::NoGradGuard no_grad;
    for (auto& item : phi.named_parameters()) {
      auto& p = item.value();
      if (ends_with(item.key(), "layernorm.weight"))
        p.normal_(1.0, 0.1);
      else
        p.normal_(0.0, p.dim() == 2 ? 1.0 / std::sqrt(static_cast<double>(p.size(1))) : 0.1);
    }
    for (const auto& item : phi.named_parameters()) d.split_weights[item.key()] = item.value().detach().clone();
    write_phi_dir(d.split, d.split_weights);
    write_phi_dir(d.fused, fuse_phi_qkv(d.split_weights, small_phi().num_attention_heads, "test"));
    return d;
  }();
  return dirs;
}

fs::path scratch(const std::string& name) {
  const auto dir = phi_dirs().root / name;
  fs::create_directories(dir);
  return dir;
}

const nlohmann::json& manifest() {
  static const auto m = test::read_json(tiny() / "manifest.json");
  return m;
}

// tiny_vicuna0's vision side + the small Phi as TinyGPT-V: two projections (48 -> 96 -> 64),
// TinyGPT-V's Phi, and its LoRA through the original's keys (lora_r / lora_alpha).
std::vector<std::string> tinygptv_options(std::vector<std::string> extra = {}) {
  std::vector<std::string> all = {"model.llama_model=" + phi_dirs().split.string(),
                                  "model.ckpt=",
                                  "model.llm_variant=tinygptv",
                                  "model.proj_hidden=96",
                                  "model.lora_r=4",
                                  "model.lora_alpha=16"};
  all.insert(all.end(), extra.begin(), extra.end());
  return all;
}

MiniGPT4Config tinygptv_config(std::vector<std::string> extra = {}) {
  return MiniGPT4Config::from_config(
      Config::from_yaml(test::parity_case_yaml(tiny(), manifest()), "tinygptv_test.yaml", tinygptv_options(extra)));
}

// What TinyGPT-V trains: its adapter, both projections, the weights of Phi's norms.
bool trained_by_tinygptv(const std::string& name) {
  if (lora::is_adapter_parameter(name)) return true;
  if (starts_with(name, "llama_proj.") || starts_with(name, "llama_proj2.")) return true;
  for (const char* norm : {".input_layernorm.weight", ".q_layernorm.weight", ".k_layernorm.weight",
                           ".post_layernorm.weight", ".final_layernorm.weight"})
    if (ends_with(name, norm)) return true;
  return false;
}

// Our name -> the name TinyGPT-V's checkpoints use (PEFT's wrapper around the LLM).
std::string peft_name(const std::string& name) {
  return starts_with(name, "llama_model.") ? "llama_model.base_model.model." + name.substr(12) : name;
}

// Random values for every parameter TinyGPT-V trains, by our names. LoRA weights in fp16
// (as a PEFT adapter on an fp16 model may hold them), the rest fp32.
StateDict random_trained_weights(const MiniGPT4& model, uint64_t seed) {
  torch::manual_seed(seed);
  StateDict out;
  for (const auto& item : model.named_parameters()) {
    if (!trained_by_tinygptv(item.key())) continue;
    auto value = torch::randn(item.value().sizes()) * 0.2;
    if (ends_with(item.key(), "layernorm.weight")) value += 1;
    out[item.key()] = lora::is_adapter_parameter(item.key()) ? value.to(torch::kHalf) : value;
  }
  return out;
}

// What TinyGPT-V's runner saves: {"model": OrderedDict(PEFT-wrapped names + the Q-Former's
// position_ids buffer), "optimizer": ..., "config": ..., "epoch": N}.
void write_tinygptv_checkpoint(const fs::path& path, const StateDict& ours, const StateDict& extra_raw = {}) {
  using io::PyValue;
  PyValue model = PyValue::dict(PyValue::Kind::OrderedDict);
  for (const auto& [name, value] : ours) model.set(peft_name(name), PyValue::of(value));
  model.set("Qformer.bert.embeddings.position_ids", PyValue::of(torch::arange(512, torch::kLong).unsqueeze(0)));
  for (const auto& [name, value] : extra_raw) model.set(name, PyValue::of(value));
  PyValue state = PyValue::dict();
  PyValue slot = PyValue::dict();
  slot.set("exp_avg", PyValue::of(torch::zeros({3})));
  state.set("0", std::move(slot));
  PyValue optimizer = PyValue::dict();
  optimizer.set("state", std::move(state));
  PyValue root = PyValue::dict();
  root.set("model", std::move(model));
  root.set("optimizer", std::move(optimizer));
  root.set("config", PyValue::of(std::string("{run: {task: image_text_pretrain}}")));
  root.set("epoch", PyValue::of(int64_t{4}));
  io::torch_save(path.string(), root);
}

// The image embeddings and the LLM's logits for one image and a few tokens.
std::pair<torch::Tensor, torch::Tensor> outputs(const MiniGPT4& model, int64_t side = 56) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  const auto image = torch::randn({1, 3, side, side});
  const auto embeds = model.encode_img(image);
  const auto ids = torch::tensor({{1, 5, 9, 13}}, torch::kLong);
  const auto inputs = torch::cat({model.llama_model->embed(ids), embeds}, 1);
  return {embeds, model.llama_model->forward(inputs).logits};
}

const PhiAttention& attention_of(const MiniGPT4& model, size_t layer) {
  return *model.llama_model->as<PhiForCausalLM>()->layers->ptr(layer)->as<PhiDecoderLayer>()->self_attn;
}

}  // namespace

TEST_CASE("TinyGPT-V: split Phi-2 files fuse into query_key_value with the same outputs", "[models][tinygptv]") {
  torch::NoGradGuard no_grad;
  const auto c = small_phi();
  const auto& split_weights = phi_dirs().split_weights;
  PhiForCausalLM split(c, torch::kFloat32);
  std::set<std::string> filled;
  load_into(split, split_weights, LoadSpec{}, filled);
  auto fused_config = c;
  fused_config.fused_qkv = true;
  PhiForCausalLM fused(fused_config, torch::kFloat32);
  filled.clear();
  const auto fused_weights = fuse_phi_qkv(split_weights, c.num_attention_heads, "test");
  CHECK(fused_weights.count("model.layers.1.self_attn.query_key_value.bias"));
  CHECK_FALSE(fused_weights.count("model.layers.1.self_attn.k_proj.weight"));
  const auto result = load_into(fused, fused_weights, LoadSpec{}, filled);
  CHECK(result.unexpected.empty());
  CHECK(unfilled_parameters(fused, filled).empty());
  const auto ids = torch::randint(0, c.vocab_size, {2, 9});
  CHECK(torch::allclose(fused.forward(fused.embed(ids)).logits, split.forward(split.embed(ids)).logits, 1e-5, 1e-5));

  auto broken = split_weights;
  broken.erase("model.layers.0.self_attn.v_proj.bias");
  CHECK_THROWS_WITH(fuse_phi_qkv(broken, c.num_attention_heads, "phi-dir"),
                    Contains("phi-dir") && Contains("model.layers.0.self_attn.q_proj.bias"));
}

TEST_CASE("TinyGPT-V: its config keys are checked", "[models][tinygptv]") {
  CHECK_THROWS_WITH(tinygptv_config({"model.llm_variant=tinygpt"}),
                    Contains("model.llm_variant") && Contains("tinygpt'"));
  CHECK_THROWS_WITH(tinygptv_config({"model.proj_hidden=-1"}), Contains("model.proj_hidden"));
  // An explicit model.lora.llm gets TinyGPT-V's targets unless it names its own.
  CHECK(tinygptv_config({"model.lora.llm.r=8"}).lora.at("llm").target_modules == tinygptv::lora_targets());
  CHECK(
      tinygptv_config({"model.lora.llm.r=8", "model.lora.llm.target_modules=[dense]"}).lora.at("llm").target_modules ==
      std::vector<std::string>{"dense"});
  // MiniGPT-v2's keys without the variant keep training both projections.
  CHECK(tinygptv_config({"model.llm_variant="}).lora_trainable ==
        std::vector<std::string>{"llama_proj", "llama_proj2"});
}

TEST_CASE("TinyGPT-V: two projections, TinyGPT-V's Phi, and only what TinyGPT-V trains", "[models][tinygptv]") {
  LoadReport report;
  const auto config = tinygptv_config();
  CHECK(config.proj_hidden == 96);
  CHECK(config.lora.at("llm").target_modules == tinygptv::lora_targets());
  CHECK(config.lora.at("llm").lora_dropout == 0.05);
  CHECK(config.lora_trainable == tinygptv::trainable());
  const auto model = load_minigpt4(config, torch::kCPU, &report);

  // llama_proj 48 -> 96, llama_proj2 96 -> 64, both fresh; Phi fused from the split files.
  REQUIRE(model->llama_proj2);
  CHECK(model->llama_proj->weight.sizes() == torch::IntArrayRef({96, 48}));
  CHECK(model->llama_proj2->weight.sizes() == torch::IntArrayRef({64, 96}));
  const auto& phi = *model->llama_model->as<PhiForCausalLM>();
  CHECK(phi.config.fused_qkv);
  CHECK(phi.config.qk_layernorm);
  CHECK(phi.config.post_layernorm);
  CHECK(attention_of(*model, 0).query_key_value);
  CHECK(std::count_if(report.notes.begin(), report.notes.end(), [](const std::string& n) {
          return n.find("fused into query_key_value") != std::string::npos;
        }) == 1);
  for (const char* fresh : {"llama_proj.weight", "llama_proj.bias", "llama_proj2.weight", "llama_proj2.bias"})
    CHECK(std::count(report.initialised.begin(), report.initialised.end(), fresh) == 1);

  // The projections apply one after the other, no activation between.
  {
    torch::NoGradGuard no_grad;
    const auto images = torch::randn({2, 3, 56, 56});
    const auto queries = model->image_queries(model->encode_vision(images));
    const auto embeds = model->encode_img(images);
    CHECK(embeds.sizes() == torch::IntArrayRef({2, 8, 64}));
    const auto expected = torch::linear(torch::linear(queries, model->llama_proj->weight, model->llama_proj->bias),
                                        model->llama_proj2->weight, model->llama_proj2->bias);
    CHECK(torch::allclose(embeds, expected, 1e-6, 1e-6));
  }

  // Trainable: the adapter on query_key_value and dense of both layers, both projections,
  // the norms' weights (not their biases); nothing else.
  int64_t adapters = 0;
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    CHECK(item.value().requires_grad() == trained_by_tinygptv(item.key()));
    adapters += lora::is_adapter_parameter(item.key());
  }
  CHECK(adapters == 2 * 2 * 2);  // layers x {query_key_value, dense} x {A, B}
  CHECK(model->named_parameters().contains("llama_model.model.layers.1.self_attn.dense.lora_B.default.weight"));

  // Training: every trainable tensor gets a gradient; a step moves only them.
  const auto tokenizer = load_tokenizer(phi_dirs().split);
  std::vector<torch::Tensor> trainable;
  StateDict before;
  for (const auto& item : model->named_parameters()) {
    before[item.key()] = item.value().detach().clone();
    if (item.value().requires_grad()) trainable.push_back(item.value());
  }
  lora::set_adapters_training(*model, true);
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
  torch::manual_seed(3);
  const auto images = torch::randn({2, 3, 56, 56});
  double first = 0, last = 0;
  for (int step = 0; step < 4; ++step) {
    optimizer.zero_grad();
    const auto out = model->forward(images, {"a red circle.", "a blue square on a table."},
                                    "###Human: <Img><ImageHere></Img> Describe it. ###Assistant: ", *tokenizer);
    CHECK(out.logits.size(-1) == 1000);
    REQUIRE(torch::isfinite(out.loss).item<bool>());
    out.loss.backward();
    if (step == 0)
      for (const auto& item : model->named_parameters())
        if (item.value().requires_grad()) {
          INFO(item.key());
          CHECK(item.value().grad().defined());
        }
    optimizer.step();
    (step == 0 ? first : last) = out.loss.item<double>();
  }
  CHECK(last < first);
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    const bool changed = !torch::equal(item.value(), before.at(item.key()));
    if (!trained_by_tinygptv(item.key())) CHECK_FALSE(changed);
    if (starts_with(item.key(), "llama_proj") || ends_with(item.key(), "q_layernorm.weight")) CHECK(changed);
  }
}

TEST_CASE("TinyGPT-V: the fused-at-load model equals one built on fused files", "[models][tinygptv]") {
  const auto from_split = load_minigpt4(tinygptv_config(), torch::kCPU);
  const auto from_fused =
      load_minigpt4(tinygptv_config({"model.llama_model=" + phi_dirs().fused.string()}), torch::kCPU);
  const auto plain =
      load_minigpt4(tinygptv_config({"model.llm_variant=", "model.lora_r=0", "model.proj_hidden=0"}), torch::kCPU);
  CHECK_FALSE(attention_of(*plain, 0).query_key_value);  // without the variant: the directory's layout
  CHECK_FALSE(attention_of(*plain, 0).q_layernorm);
  CHECK_FALSE(plain->llama_proj2);
  torch::NoGradGuard no_grad;
  const auto embeds = torch::randn({1, 6, 64});
  CHECK(torch::allclose(from_split->llama_model->forward(embeds).logits,
                        from_fused->llama_model->forward(embeds).logits, 1e-5, 1e-5));
  // The norms at their defaults still change the function (q/k LayerNorm over each head).
  CHECK_FALSE(torch::allclose(from_split->llama_model->forward(embeds).logits,
                              plain->llama_model->forward(embeds).logits, 1e-3, 1e-3));
  // A LLaMA directory cannot be TinyGPT-V's Phi.
  CHECK_THROWS_WITH(load_minigpt4(tinygptv_config({"model.llama_model=" + (tiny() / "vicuna").string()}), torch::kCPU),
                    Contains("llm_variant") && Contains("not a Phi model"));
}

TEST_CASE("TinyGPT-V: a checkpoint in its released key layout loads as setting the weights directly",
          "[models][tinygptv]") {
  const auto path = scratch("ckpt") / "TinyGPT-V_for_Stage3.pth";
  const auto reference = load_minigpt4(tinygptv_config(), torch::kCPU);
  const auto weights = random_trained_weights(*reference, 21);
  write_tinygptv_checkpoint(path, weights);
  {  // what the file holds: PEFT's names, TinyGPT-V's and nothing of ours
    const auto raw = io::load_state_dict(path.string());
    CHECK(raw.count("llama_model.base_model.model.model.layers.0.self_attn.query_key_value.lora_A.default.weight"));
    CHECK(raw.count("llama_model.base_model.model.model.layers.1.self_attn.k_layernorm.weight"));
    CHECK(raw.count("llama_model.base_model.model.model.final_layernorm.weight"));
    CHECK(raw.count("llama_proj2.bias"));
    CHECK_FALSE(raw.count("llama_model.base_model.model.model.final_layernorm.bias"));
    CHECK_FALSE(raw.count("epoch"));
  }

  // The same weights set by hand on a model loaded without the checkpoint.
  const auto direct = load_minigpt4(tinygptv_config(), torch::kCPU);
  {
    torch::NoGradGuard no_grad;
    auto params = direct->named_parameters();
    for (const auto& [name, value] : weights) params[name].copy_(value);
  }

  LoadReport report;
  const auto loaded = load_minigpt4(tinygptv_config({"model.ckpt=" + path.string()}), torch::kCPU, &report);
  for (const auto& name : report.initialised) {  // only the q/k LayerNorm biases TinyGPT-V never trains
    INFO(name);
    CHECK((ends_with(name, "q_layernorm.bias") || ends_with(name, "k_layernorm.bias")));
  }
  const auto& source = report.sources.back();
  CHECK(source.source == path.string());
  CHECK(source.loaded.size() == weights.size());
  CHECK(source.ignored == std::vector<std::string>{"Qformer.bert.embeddings.position_ids"});
  auto direct_params = direct->named_parameters();
  for (const auto& item : loaded->named_parameters()) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), direct_params[item.key()]));
    CHECK(item.value().requires_grad() == trained_by_tinygptv(item.key()));
  }
  const auto [loaded_embeds, loaded_logits] = outputs(*loaded);
  const auto [direct_embeds, direct_logits] = outputs(*direct);
  const auto [fresh_embeds, fresh_logits] = outputs(*reference);
  CHECK(torch::equal(loaded_embeds, direct_embeds));
  CHECK(torch::equal(loaded_logits, direct_logits));
  CHECK_FALSE(torch::allclose(loaded_logits, fresh_logits, 1e-3, 1e-3));

  SECTION("without model.lora the checkpoint's adapter is created with TinyGPT-V's settings") {
    LoadReport implied_report;
    const auto implied =
        load_minigpt4(tinygptv_config({"model.lora_r=0", "model.ckpt=" + path.string()}), torch::kCPU, &implied_report);
    CHECK(active_adapter(*implied) == kTrainedAdapter);
    const auto layers = lora::lora_layers(*implied->llama_model);
    REQUIRE(layers.size() == 4);
    CHECK(layers[0].layer->adapter(kTrainedAdapter).scale == 16.0 / 4);
    CHECK(layers[0].layer->adapter(kTrainedAdapter).dropout == 0.05);
    CHECK(std::count_if(implied_report.notes.begin(), implied_report.notes.end(),
                        [](const std::string& n) { return n.find("TinyGPT-V's settings") != std::string::npos; }) == 1);
    CHECK(torch::equal(outputs(*implied).second, loaded_logits));
    for (const auto& item : implied->named_parameters()) {
      INFO(item.key());
      CHECK(item.value().requires_grad() == trained_by_tinygptv(item.key()));
    }
  }

  SECTION("a training checkpoint of this program carries both projections and the norms to the next stage") {
    auto config =
        Config::from_yaml(test::parity_case_yaml(tiny(), manifest()) + "run:\n  init_lr: 1e-4\n  weight_decay: 0.05\n",
                          "stage.yaml", tinygptv_options());
    const auto optimizer = train::make_optimizer(*direct, RunSettings::from_config(config));
    const auto ours = scratch("ckpt") / "checkpoint_0.pth";
    train::save_training_checkpoint(ours.string(), *direct, *optimizer, nullptr, {});
    const auto next = load_minigpt4(tinygptv_config({"model.ckpt=" + ours.string()}), torch::kCPU);
    CHECK(torch::equal(outputs(*next).second, direct_logits));
  }
}

TEST_CASE("TinyGPT-V: checkpoint keys that do not fit are errors naming them", "[models][tinygptv]") {
  const auto dir = scratch("bad");
  const auto reference = load_minigpt4(tinygptv_config(), torch::kCPU);
  const auto weights = random_trained_weights(*reference, 22);
  auto load_with = [&](const std::string& name, const StateDict& ours, const StateDict& extra,
                       std::vector<std::string> options = {}) {
    const auto path = dir / (name + ".pth");
    write_tinygptv_checkpoint(path, ours, extra);
    options.push_back("model.ckpt=" + path.string());
    return load_minigpt4(tinygptv_config(options), torch::kCPU);
  };

  SECTION("an unknown key") {
    const std::string bogus = "llama_model.base_model.model.model.layers.0.self_attn.rotary.weight";
    CHECK_THROWS_WITH(load_with("unknown", weights, {{bogus, torch::ones({4})}}),
                      Contains("unknown.pth") && Contains("TinyGPT-V checkpoint") &&
                          Contains("llama_model.model.layers.0.self_attn.rotary.weight"));
  }
  SECTION("a mis-shaped key") {
    auto bad = weights;
    bad["llama_proj2.weight"] = torch::zeros({64, 95});
    CHECK_THROWS_WITH(load_with("shape", bad, {}), Contains("shape.pth") && Contains("llama_proj2.weight") &&
                                                       Contains("[64, 95]") && Contains("[64, 96]"));
  }
  SECTION("a model without TinyGPT-V's switches is told which to set") {
    CHECK_THROWS_WITH(load_with("no_variant", weights, {}, {"model.llm_variant="}), Contains("llm_variant: tinygptv"));
    CHECK_THROWS_WITH(load_with("no_proj2", weights, {}, {"model.proj_hidden=0"}),
                      Contains("llama_proj2") && Contains("proj_hidden: 4096"));
  }
  SECTION("adapters of another rank than the configured one") {
    CHECK_THROWS_WITH(load_with("rank", weights, {}, {"model.lora_r=8"}),
                      Contains("rank.pth") && Contains("rank 4") && Contains("r is 8"));
    auto mixed = weights;
    mixed["llama_model.model.layers.1.self_attn.dense.lora_A.default.weight"] = torch::zeros({2, 64});
    CHECK_THROWS_WITH(load_with("mixed", mixed, {}, {"model.lora_r=0"}), Contains("different ranks"));
  }
  SECTION("adapters on layers the configured adapter does not cover") {
    CHECK_THROWS_WITH(load_with("targets", weights, {}, {"model.lora_target_modules=[dense]"}),
                      Contains("query_key_value.lora_A.default.weight") && Contains("target_modules"));
  }
}

TEST_CASE("TinyGPT-V: every config builds a tiny model with its settings", "[models][tinygptv]") {
  const auto& m = manifest()["config"];
  const auto& v = m["vision"];
  const auto& q = m["qformer"];
  // The fixture's sizes and files over the real configs' (the 224/448 px of the real model
  // become the fixture's 56/112: the stage-4 ViT interpolates the 4x4 grid to 8x8).
  auto sized = [&](int64_t image_size) {
    return std::vector<std::string>{
        "model.image_size=" + std::to_string(image_size),
        "model.vit_patch_size=" + std::to_string(v["patch_size"].get<int64_t>()),
        "model.vit_width=" + std::to_string(v["width"].get<int64_t>()),
        "model.vit_depth=" + std::to_string(v["depth"].get<int64_t>()),
        "model.vit_num_heads=" + std::to_string(v["heads"].get<int64_t>()),
        "model.vit_mlp_ratio=" + std::to_string(v["mlp_ratio"].get<double>()),
        "model.vit_precision=fp32",
        "model.num_query_token=" + std::to_string(q["num_query_token"].get<int64_t>()),
        "model.qformer_hidden_size=" + std::to_string(q["hidden_size"].get<int64_t>()),
        "model.qformer_num_layers=" + std::to_string(q["num_hidden_layers"].get<int64_t>()),
        "model.qformer_num_heads=" + std::to_string(q["num_attention_heads"].get<int64_t>()),
        "model.qformer_intermediate_size=" + std::to_string(q["intermediate_size"].get<int64_t>()),
        "model.cross_attention_freq=" + std::to_string(q["cross_attention_freq"].get<int64_t>()),
        "model.llm_precision=fp32",
        "model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
        "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
        "model.llama_model=" + phi_dirs().split.string(),
        "model.ckpt="};
  };
  struct Case {
    std::string file;
    int64_t image_size;
    int64_t max_txt_len;
    std::string end_sym, conv_template;
  };
  for (const auto& c : std::vector<Case>{{"train_configs/tinygptv_stage1.yaml", 224, 32, "\n", ""},
                                         {"train_configs/tinygptv_stage2.yaml", 224, 32, "\n", ""},
                                         {"train_configs/tinygptv_stage3.yaml", 224, 160, "###", ""},
                                         {"train_configs/tinygptv_stage4.yaml", 448, 1024, "###", ""},
                                         {"eval_configs/tinygptv_stage1_2_3_eval.yaml", 224, 160, "\n", "vicuna0"},
                                         {"eval_configs/tinygptv_stage4_eval.yaml", 448, 500, "\n", "minigptv2"}}) {
    INFO(c.file);
    const auto path = (test::source_dir() / c.file).string();
    const auto as_written = Config::load(path);
    const auto real = MiniGPT4Config::from_config(as_written);
    CHECK(real.vision.image_size == c.image_size);
    CHECK(real.max_txt_len == c.max_txt_len);
    CHECK(real.end_sym == c.end_sym);
    CHECK(real.proj_hidden == tinygptv::kProjHidden);
    CHECK(real.llm_variant == tinygptv::kLlmVariant);
    CHECK(real.qformer.hidden_size == 768);
    REQUIRE(real.lora.count("llm"));
    CHECK(real.lora.at("llm").r == 64);
    CHECK(real.lora.at("llm").lora_alpha == 16);
    CHECK(real.lora.at("llm").lora_dropout == 0.05);
    CHECK(real.lora.at("llm").target_modules == tinygptv::lora_targets());
    CHECK(real.lora_trainable == tinygptv::trainable());
    CHECK(as_written.get_string("model.conv_template") == c.conv_template);
    if (!c.conv_template.empty()) CHECK_NOTHROW(conversation_template(c.conv_template));

    const int64_t side = c.image_size == 448 ? 112 : 56;
    LoadReport report;
    const auto model =
        load_minigpt4(MiniGPT4Config::from_config(Config::load(path, sized(side))), torch::kCPU, &report);
    CHECK(model->llama_proj->weight.sizes() == torch::IntArrayRef({tinygptv::kProjHidden, 48}));
    CHECK(model->llama_proj2->weight.sizes() == torch::IntArrayRef({64, tinygptv::kProjHidden}));
    CHECK(lora::lora_layers(*model->llama_model).size() == 4);
    const auto [embeds, logits] = outputs(*model, side);
    CHECK(embeds.sizes() == torch::IntArrayRef({1, 8, 64}));
    CHECK(torch::isfinite(logits).all().item<bool>());
    if (side == 112) {
      const auto file_pos = io::load_state_dict((tiny() / "eva_vit_g.pth").string()).at("pos_embed");
      CHECK(torch::allclose(model->visual_encoder->pos_embed, interpolate_pos_embed(file_pos, 8)));
    }
  }
  // Stage 4's multi-task datasets train once their files are named (build_info, as the
  // original configs); with the config's placeholders it says so before any weight loads.
  CHECK_THROWS_WITH(
      train::run_training(Config::load((test::source_dir() / "train_configs/tinygptv_stage4.yaml").string()),
                          train::TrainOptions{}),
      Contains("datasets.") && Contains(".build_info") && Contains("do not exist"));
}

TEST_CASE("TinyGPT-V: stage 4 chats with MiniGPT-v2's [INST] template", "[models][tinygptv]") {
  auto conv = conversation_template("minigptv2");
  conv.upload_image();
  conv.ask("What is in the picture?");
  conv.start_answer();
  CHECK(conv.get_prompt() == "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST]");
  conv.set_answer("A cat.");
  conv.ask("And its colour?");
  conv.start_answer();
  CHECK(conv.get_prompt() ==
        "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST]A cat.<s>[INST] And its colour? [/INST]");
  CHECK(conversation_template("CONV_VISION_minigptv2").roles() == conv.roles());
  // Stages 1-3 chat with MiniGPT-4's '###' template.
  auto v0 = conversation_template("vicuna0");
  v0.upload_image();
  v0.ask("Describe it.");
  v0.start_answer();
  CHECK(v0.get_prompt() ==
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to "
        "you. Please answer my questions.###Human: <Img><ImageHere></Img> Describe it.###Assistant: ");
}

TEST_CASE("TinyGPT-V: answers are explained over the ViT's patches like MiniGPT-4's", "[models][tinygptv][explain]") {
  const auto config =
      Config::from_yaml(test::parity_case_yaml(tiny(), manifest()), "tinygptv_test.yaml", tinygptv_options());
  const auto model = ChatModel::load(config, torch::kCPU);
  at::Tensor vision_tokens;
  const auto image =
      model->encode_image_file((tiny() / "image_processor/arc_colors_rgba_357x200.png").string(), &vision_tokens);
  ChatSession session(model);
  session.upload_image(image, vision_tokens);
  session.ask("What is in this image?");
  AnswerOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 8;
  const auto reply = session.answer(greedy);
  const auto e = session.explain(/*per_word=*/true);
  const int64_t grid = model->model->config.vision.grid();
  REQUIRE(e.answer_map.sizes() == at::IntArrayRef({grid, grid}));
  CHECK(e.answer_map.sum().item<double>() == Approx(1.0).margin(1e-5));
  CHECK(e.answer_map.max().item<float>() > e.answer_map.min().item<float>());
  CHECK(e.words.size() == answer_words(reply.tokens, *model->tokenizer, model->stop_token_ids).size());
}
