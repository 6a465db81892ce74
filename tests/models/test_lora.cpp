// LoRA adapters (minigpt4/models/lora*.h, minigpt4_lora.h): the mechanism on the tiny
// grouped-query LLaMA of tests/data/hf_llama_gqa, adapters written by Python PEFT
// (tests/data/lora, made by its make_fixture.py), EVA's fused qkv against split linears, and
// the MiniGPT-4 wiring (config, freezing, training, adapter folders) on tiny_vicuna0.
#include "minigpt4/common/config.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/lora_peft.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/weights.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>

#include <unistd.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<LlamaForCausalLM> tiny_llm(WeightFormat format = WeightFormat::Dense) {
  const auto dir = test::data_dir() / "hf_llama_gqa";
  const auto config = LlamaConfig::from_json(io::read_json_file((dir / "config.json").string()), "config.json");
  auto model = std::make_shared<LlamaForCausalLM>(config, torch::kFloat32, format);
  std::set<std::string> filled;
  LoadSpec spec;
  spec.source = dir.string();
  load_into(*model, io::load_state_dict(dir.string()), spec, filled);
  return model;
}

StateDict lora_fixture() { return io::load_safetensors((test::data_dir() / "lora/io.safetensors").string()); }

torch::Tensor logits(CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return model.forward(model.embed(ids)).logits;
}

lora::LoraConfig qv_config() {
  lora::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = {"q_proj", "v_proj"};
  return c;
}

// Random A and B, so the adapter changes the outputs (a fresh one has B = 0).
void randomise(torch::nn::Module& root, const std::string& adapter, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (const auto& l : lora::lora_layers(root)) {
    if (!l.layer->has(adapter)) continue;
    const auto& a = l.layer->adapter(adapter);
    a.A.normal_(0, 0.3);
    a.B.normal_(0, 0.3);
  }
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

StateDict snapshot(torch::nn::Module& module) {
  StateDict out;
  for (const auto& item : module.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

fs::path scratch(const std::string& tag) {
  static int counter = 0;
  auto dir = fs::temp_directory_path() /
             ("minigpt4_lora_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

MiniGPT4Config tiny_config(std::vector<std::string> options = {}) {
  std::vector<std::string> all = {"model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
                                  "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
                                  "model.llama_model=" + (tiny() / "vicuna").string(),
                                  "model.ckpt=" + (tiny() / "pretrained_minigpt4.pth").string()};
  all.insert(all.end(), options.begin(), options.end());
  return MiniGPT4Config::from_config(Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), all));
}

const std::vector<std::string> kAllComponents = {"model.lora.llm.r=4", "model.lora.llm.lora_alpha=8",
                                                 "model.lora.vit.r=2", "model.lora.qformer.r=2"};

// The image embeddings and the LLM's logits for one image and a few tokens.
std::pair<torch::Tensor, torch::Tensor> tiny_outputs(MiniGPT4& model) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  const auto image = torch::randn({1, 3, 56, 56});
  const auto embeds = model.encode_img(image);
  const auto ids = torch::tensor({{1, 5, 9, 13}}, torch::kLong);
  const auto inputs = torch::cat({model.llama_model->embed(ids), embeds}, 1);
  return {embeds, model.llama_model->forward(inputs).logits};
}

}  // namespace

TEST_CASE("LoRA: a fresh adapter (B zero) changes nothing; A is kaiming-uniform", "[models][lora]") {
  auto llm = tiny_llm();
  const auto ids = lora_fixture().at("input_ids");
  const auto before = logits(*llm, ids);
  torch::manual_seed(0);
  const auto names = lora::add_adapter(*llm, "fresh", qv_config());
  CHECK(names.size() == 6);  // q_proj and v_proj of 3 layers
  CHECK(names.front() == "model.layers.0.self_attn.q_proj");
  lora::set_active_adapter(*llm, "fresh");
  CHECK(lora::active_adapter(*llm) == "fresh");
  CHECK(torch::equal(logits(*llm, ids), before));

  const double bound = 1.0 / std::sqrt(48.0);  // kaiming_uniform(a=sqrt(5)) over fan_in 48
  for (const auto& l : lora::lora_layers(*llm)) {
    const auto& a = l.layer->adapter("fresh");
    CHECK(a.A.sizes() == torch::IntArrayRef({4, 48}));
    CHECK(a.B.size(1) == 4);
    CHECK(a.B.abs().max().item<double>() == 0);
    CHECK(a.A.abs().max().item<double>() <= bound);
    CHECK(a.A.abs().max().item<double>() > 0.8 * bound);
    CHECK(a.A.scalar_type() == torch::kFloat32);
    CHECK(a.scale == 2.0);  // alpha 8 / r 4
  }
  // PEFT's in-memory names, registered on the layer.
  const auto params = llm->named_parameters();
  CHECK(params.contains("model.layers.1.self_attn.v_proj.lora_A.fresh.weight"));
  CHECK(params.contains("model.layers.1.self_attn.v_proj.lora_B.fresh.weight"));
  CHECK(params["model.layers.1.self_attn.v_proj.lora_B.fresh.weight"].sizes() == torch::IntArrayRef({16, 4}));
}

TEST_CASE("LoRA: targets are chosen by PEFT's name rules", "[models][lora]") {
  auto c = qv_config();
  c.layers_to_transform = {0, 2};
  CHECK(c.matches("model.layers.0.self_attn.q_proj"));
  CHECK(c.matches("model.layers.2.self_attn.v_proj"));
  CHECK_FALSE(c.matches("model.layers.1.self_attn.q_proj"));
  CHECK_FALSE(c.matches("model.layers.0.self_attn.k_proj"));
  CHECK_FALSE(c.matches("model.layers.0.self_attn.xq_proj"));  // whole name segments only
  CHECK(c.matches("model.layers.2.experts.5.q_proj"));         // the FIRST index is the layer
  c.target_modules.push_back("model.layers.1.mlp.up_proj");
  CHECK(c.matches("model.layers.1.mlp.up_proj"));  // a full name ignores the layer list

  // Without layers_pattern the layer list needs a name segment before it (PEFT's rule), so
  // a ViT's "blocks.N..." needs layers_pattern "blocks".
  lora::LoraConfig vit;
  vit.target_modules = {"query", "value"};
  vit.layers_to_transform = {14, 38};
  CHECK_FALSE(vit.matches("blocks.14.attn.query"));
  vit.layers_pattern = {"blocks"};
  CHECK(vit.matches("blocks.14.attn.query"));
  CHECK(vit.matches("blocks.38.attn.value"));
  CHECK_FALSE(vit.matches("blocks.15.attn.query"));
  CHECK_FALSE(vit.matches("blocks.14.attn.key"));

  // ConLoRA's ViT and LLM targets, each one regex string.
  lora::LoraConfig conlora_vit;
  conlora_vit.target_regex = R"(.*blocks\.\b(1[4-9]|2[0-9]|3[0-8])\b\..*(\.query|\.value))";
  CHECK(conlora_vit.matches("visual.blocks.14.attn.query"));
  CHECK(conlora_vit.matches("visual.blocks.38.attn.value"));
  CHECK_FALSE(conlora_vit.matches("visual.blocks.13.attn.query"));
  CHECK_FALSE(conlora_vit.matches("visual.blocks.20.attn.key"));
  lora::LoraConfig conlora_llm;
  conlora_llm.target_regex = R"(.*model\.layers\.\b([0-9]|1[0-9]|2[0-1])\b.*\.(q_proj|v_proj))";
  CHECK(conlora_llm.matches("model.layers.21.self_attn.v_proj"));
  CHECK_FALSE(conlora_llm.matches("model.layers.22.self_attn.v_proj"));

  // Per-module rank and alpha, and rank-stabilised scaling.
  lora::LoraConfig patterned = qv_config();
  patterned.rank_pattern = {{"v_proj", 2}};
  patterned.alpha_pattern = {{"layers.0.self_attn.q_proj", 32.0}};
  CHECK(patterned.rank_for("model.layers.3.self_attn.v_proj") == 2);
  CHECK(patterned.rank_for("model.layers.3.self_attn.q_proj") == 4);
  CHECK(patterned.alpha_for("model.layers.0.self_attn.q_proj") == 32.0);
  CHECK(patterned.alpha_for("model.layers.10.self_attn.q_proj") == 8.0);
  patterned.use_rslora = true;
  CHECK(patterned.scale(4, 8.0) == Approx(4.0));

  auto llm = tiny_llm();
  auto nothing = qv_config();
  nothing.target_modules = {"qkv_proj"};
  CHECK_THROWS_WITH(lora::add_adapter(*llm, "x", nothing, "model.lora.llm"),
                    Contains("model.lora.llm") && Contains("qkv_proj") && Contains("model.layers.0"));
  CHECK_THROWS_WITH(lora::add_adapter(*llm, "a.b", qv_config()), Contains("'a.b'"));
  CHECK_THROWS_WITH(lora::add_adapter(*llm, "original", qv_config()), Contains("original"));
  auto bad = qv_config();
  bad.r = 0;
  CHECK_THROWS_WITH(bad.validate("cfg"), Contains("r must be"));
  bad = qv_config();
  bad.target_regex = "(";
  CHECK_THROWS_WITH(bad.validate("cfg"), Contains("not both"));
  bad.target_modules.clear();
  CHECK_THROWS_WITH(bad.validate("cfg"), Contains("regular expression"));
}

TEST_CASE("LoRA: merged equals unmerged, and unmerging restores the base weights", "[models][lora]") {
  auto llm = tiny_llm();
  const auto ids = lora_fixture().at("input_ids");
  const auto base_weights = snapshot(*llm);
  lora::add_adapter(*llm, "task", qv_config());
  randomise(*llm, "task", 1);
  lora::set_active_adapter(*llm, "task");
  const auto unmerged = logits(*llm, ids);
  CHECK(max_diff(unmerged, logits(*llm, ids)) == 0);

  lora::merge_active_adapter(*llm);
  for (const auto& l : lora::lora_layers(*llm)) CHECK(l.layer->merged());
  const auto q0 = llm->layers->ptr(0)->as<LlamaDecoderLayer>()->self_attn->q_proj->weight;
  CHECK(max_diff(q0, base_weights.at("model.layers.0.self_attn.q_proj.weight")) > 1e-2);
  CHECK(max_diff(logits(*llm, ids), unmerged) < 1e-4);

  // Training the adapter further while merged must not corrupt the base: unmerging takes
  // out what was merged.
  randomise(*llm, "task", 2);
  lora::unmerge_adapters(*llm);
  for (const auto& item : llm->named_parameters())
    if (!lora::is_adapter_parameter(item.key())) CHECK(max_diff(item.value(), base_weights.at(item.key())) < 1e-6);
  const auto reunmerged = logits(*llm, ids);
  lora::set_active_adapter(*llm, "task", /*merge=*/true);
  CHECK(max_diff(logits(*llm, ids), reunmerged) < 1e-4);
}

TEST_CASE("LoRA: an int8 base takes adapters unmerged and refuses a merge", "[models][lora]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const auto w = torch::randn({32, 64}) / 8;
  struct Holder : torch::nn::Module {
    std::shared_ptr<Linear> dense, int8;
  } root;
  root.dense = root.register_module("dense", std::make_shared<Linear>(64, 32, false, torch::kFloat32));
  root.int8 =
      root.register_module("int8", std::make_shared<Linear>(64, 32, false, torch::kFloat32, WeightFormat::Int8));
  root.dense->load_weight(w);
  root.int8->load_weight(w);
  const auto x = torch::randn({2, 5, 64});
  const auto dense_base = root.dense->forward(x), int8_base = root.int8->forward(x);
  lora::LoraConfig c;
  c.target_modules = {"dense", "int8"};
  lora::add_adapter(root, "t", c);
  randomise(root, "t", 4);
  // Same A and B on both layers: their updates must be the same.
  const auto layers = lora::lora_layers(root);
  REQUIRE(layers.size() == 2);
  layers[1].layer->adapter("t").A.copy_(layers[0].layer->adapter("t").A);
  layers[1].layer->adapter("t").B.copy_(layers[0].layer->adapter("t").B);
  lora::set_active_adapter(root, "t");
  const auto dense_delta = root.dense->forward(x) - dense_base;
  const auto int8_delta = root.int8->forward(x) - int8_base;
  CHECK(dense_delta.abs().max().item<double>() > 0.1);
  CHECK(max_diff(dense_delta, int8_delta) < 1e-5);
  CHECK_THROWS_WITH(lora::merge_active_adapter(root), Contains("int8") && Contains("'int8'"));
  CHECK_FALSE(layers[0].layer->merged());  // refused before anything changed
}

TEST_CASE("LoRA: a bf16 base merges the float32 update with one rounding", "[models][lora]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(10);
  torch::nn::Module root;
  auto layer = root.register_module("proj", std::make_shared<Linear>(64, 32, false, torch::kBFloat16));
  layer->weight.copy_(torch::randn({32, 64}) / 8);
  const auto original = layer->weight.clone();
  lora::LoraConfig c;
  c.target_modules = {"proj"};
  lora::add_adapter(root, "t", c);
  randomise(root, "t", 11);
  const auto& a = layer->lora[0]->adapter("t");
  const auto exact = original.to(torch::kFloat32) + torch::mm(a.B, a.A) * a.scale;
  // Unmerged, the float32 update is added to the bf16 product.
  const auto x = torch::randn({3, 64}).to(torch::kBFloat16);
  const auto expected = torch::mm(x.to(torch::kFloat32), exact.t());
  lora::set_active_adapter(root, "t");
  const auto unmerged = layer->forward(x);
  CHECK(unmerged.scalar_type() == torch::kBFloat16);
  CHECK(max_diff(unmerged.to(torch::kFloat32), expected) < 2e-2 * expected.abs().max().item<double>());
  lora::set_active_adapter(root, "t", /*merge=*/true);
  const auto ulp = exact.abs() * std::pow(2.0, -8);  // half a bf16 step, with margin 2x
  CHECK(((layer->weight.to(torch::kFloat32) - exact).abs() <= ulp).all().item<bool>());
  lora::unmerge_adapters(root);
  CHECK(((layer->weight.to(torch::kFloat32) - original.to(torch::kFloat32)).abs() <=
         exact.abs() * std::pow(2.0, -7) + 1e-6)
            .all()
            .item<bool>());
}

TEST_CASE("LoRA: the PEFT layout round-trips", "[models][lora]") {
  auto llm = tiny_llm();
  const auto ids = lora_fixture().at("input_ids");
  auto c = qv_config();
  c.layers_to_transform = {1, 2};
  c.lora_dropout = 0.1;
  c.task_type = "CAUSAL_LM";
  c.base_model_name_or_path = "tests/data/hf_llama_gqa";
  lora::add_adapter(*llm, "task", c);
  randomise(*llm, "task", 5);
  lora::set_active_adapter(*llm, "task");
  const auto expected = logits(*llm, ids);
  const auto dir = scratch("roundtrip");
  lora::save_peft_adapter(*llm, "task", dir.string());

  const auto weights = io::load_safetensors((dir / "adapter_model.safetensors").string());
  CHECK(weights.size() == 8);
  CHECK(weights.count("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"));
  CHECK(weights.count("base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"));
  CHECK(io::load_safetensors_metadata((dir / "adapter_model.safetensors").string()).at("format") == "pt");
  const auto json = io::read_json_file((dir / "adapter_config.json").string());
  CHECK(json["peft_type"] == "LORA");
  CHECK(json["r"] == 4);
  CHECK(json["lora_alpha"] == 8.0);
  CHECK(json["lora_dropout"] == 0.1);
  CHECK(json["target_modules"] == nlohmann::json({"q_proj", "v_proj"}));
  CHECK(json["layers_to_transform"] == nlohmann::json({1, 2}));
  CHECK(json["bias"] == "none");
  CHECK(json["task_type"] == "CAUSAL_LM");
  CHECK(json["base_model_name_or_path"] == "tests/data/hf_llama_gqa");

  auto fresh = tiny_llm();
  const auto loaded = lora::load_peft_adapter(*fresh, "again", dir.string());
  CHECK(loaded.layers_to_transform == std::vector<int64_t>{1, 2});
  CHECK(lora::lora_layers(*fresh).size() == 4);
  lora::set_active_adapter(*fresh, "again");
  CHECK(torch::equal(logits(*fresh, ids), expected));
  CHECK(fresh->layers->ptr(1)->as<LlamaDecoderLayer>()->self_attn->v_proj->lora[0]->adapter("again").dropout == 0.1);

  // What this code cannot apply is refused by name.
  auto refuse = [&](const char* key, const nlohmann::json& value, const char* message) {
    auto broken = json;
    broken[key] = value;
    std::ofstream(dir / "adapter_config.json") << broken.dump();
    auto model = tiny_llm();
    CHECK_THROWS_WITH(lora::load_peft_adapter(*model, "x", dir.string()), Contains(message));
  };
  refuse("peft_type", "IA3", "IA3");
  refuse("use_dora", true, "DoRA");
  refuse("bias", "all", "bias");
  refuse("modules_to_save", nlohmann::json({"lm_head"}), "modules_to_save");
  fs::remove_all(dir);
}

TEST_CASE("LoRA: adapters written by Python PEFT load and match its outputs", "[models][lora]") {
  const auto io = lora_fixture();
  const auto ids = io.at("input_ids");
  auto llm = tiny_llm();
  const auto original = logits(*llm, ids);
  CHECK(max_diff(original, io.at("logits_original")) < 1e-4);

  const auto dir = test::data_dir() / "lora";
  const auto detect = lora::load_peft_adapter(*llm, "detect", (dir / "detect").string());  // safetensors
  const auto ocr = lora::load_peft_adapter(*llm, "ocr", (dir / "ocr").string());           // torch.save .bin
  CHECK(detect.layers_to_transform == std::vector<int64_t>{0, 2});
  CHECK(ocr.use_rslora);
  CHECK(ocr.target_regex == R"(.*layers\.1\..*(o_proj|down_proj))");
  CHECK(lora::adapter_names(*llm) == std::vector<std::string>{"detect", "ocr"});
  std::set<std::string> detect_layers, ocr_layers;
  for (const auto& l : lora::lora_layers(*llm)) {
    if (l.layer->has("detect")) detect_layers.insert(l.name);
    if (l.layer->has("ocr")) ocr_layers.insert(l.name);
  }
  CHECK(detect_layers == std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                               "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj"});
  CHECK(ocr_layers == std::set<std::string>{"model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"});

  for (const char* name : {"detect", "ocr"}) {
    INFO(name);
    lora::set_active_adapter(*llm, name);
    const auto out = logits(*llm, ids);
    CHECK(max_diff(out, io.at(std::string("logits_") + name)) < 1e-4);
    CHECK(max_diff(out, original) > 1.0);
  }
  // Written back in PEFT's layout when asked (make_fixture.py --verify loads them in PEFT).
  if (const char* keep = std::getenv("MINIGPT4_LORA_EXPORT_DIR"))
    for (const char* name : {"detect", "ocr"}) lora::save_peft_adapter(*llm, name, (fs::path(keep) / name).string());
}

TEST_CASE("LoRA: switching adapters without reloading; original is the base model", "[models][lora]") {
  const auto io = lora_fixture();
  const auto ids = io.at("input_ids");
  auto llm = tiny_llm();
  const auto base = logits(*llm, ids);
  const auto dir = test::data_dir() / "lora";
  lora::load_peft_adapter(*llm, "detect", (dir / "detect").string());
  lora::load_peft_adapter(*llm, "ocr", (dir / "ocr").string());
  CHECK(lora::active_adapter(*llm) == "original");
  CHECK(torch::equal(logits(*llm, ids), base));

  for (const bool merge : {false, true}) {
    INFO("merge " << merge);
    for (const char* name : {"detect", "ocr", "detect", "original", "ocr"}) {
      lora::set_active_adapter(*llm, name, merge);
      CHECK(lora::active_adapter(*llm) == name);
      const auto& expected = std::string(name) == "original" ? base : io.at(std::string("logits_") + name);
      CHECK(max_diff(logits(*llm, ids), expected) < 1e-4);
    }
  }
  lora::set_active_adapter(*llm, "original");
  CHECK(max_diff(logits(*llm, ids), base) < 1e-5);  // every merge was taken out again
  CHECK_THROWS_WITH(lora::set_active_adapter(*llm, "grounding"),
                    Contains("grounding") && Contains("original, detect, ocr"));
  lora::delete_adapter(*llm, "ocr");
  CHECK(lora::adapter_names(*llm) == std::vector<std::string>{"detect"});
  CHECK_FALSE(llm->named_parameters().contains("model.layers.1.mlp.down_proj.lora_A.ocr.weight"));
}

namespace {

// EVA's attention as ConLoRA rewrites it: qkv split into query (with q_bias), key (no
// bias) and value (with v_bias), the outputs concatenated back before the heads split.
struct SplitEvaAttention : torch::nn::Module {
  SplitEvaAttention(const EvaAttention& fused, int64_t width) : num_heads(fused.num_heads) {
    auto attn = register_module("attn", std::make_shared<torch::nn::Module>());
    query = attn->register_module("query", std::make_shared<Linear>(width, width, true, torch::kFloat32));
    key = attn->register_module("key", std::make_shared<Linear>(width, width, false, torch::kFloat32));
    value = attn->register_module("value", std::make_shared<Linear>(width, width, true, torch::kFloat32));
    torch::NoGradGuard no_grad;
    query->weight.copy_(fused.qkv->weight.narrow(0, 0, width));
    key->weight.copy_(fused.qkv->weight.narrow(0, width, width));
    value->weight.copy_(fused.qkv->weight.narrow(0, 2 * width, width));
    query->bias.copy_(fused.q_bias);
    value->bias.copy_(fused.v_bias);
    proj = fused.proj;
  }
  torch::Tensor forward(const torch::Tensor& x) const {
    const int64_t B = x.size(0), N = x.size(1), C = x.size(2), D = C / num_heads;
    auto heads = [&](const torch::Tensor& t) { return t.view({B, N, num_heads, D}).transpose(1, 2); };
    const auto out = attention(heads(query->forward(x)), heads(key->forward(x)), heads(value->forward(x)), {},
                               1.0 / std::sqrt(static_cast<double>(D)));
    return proj->forward(out.transpose(1, 2).reshape({B, N, C}));
  }
  int64_t num_heads;
  std::shared_ptr<Linear> query, key, value, proj;
};

}  // namespace

TEST_CASE("LoRA on the query/value parts of EVA's fused qkv equals LoRA on split linears", "[models][lora]") {
  torch::NoGradGuard no_grad;
  EvaVitConfig config;
  config.width = 32;
  config.num_heads = 4;
  torch::nn::Module fused_root;
  auto fused = fused_root.register_module("attn", std::make_shared<EvaAttention>(config, torch::kFloat32));
  torch::manual_seed(6);
  for (auto& p : fused->parameters()) p.normal_(0, 0.2);
  SplitEvaAttention split(*fused, config.width);
  const auto x = torch::randn({2, 7, config.width});
  CHECK(max_diff(fused->forward(x), split.forward(x)) < 1e-5);

  lora::LoraConfig c;
  c.r = 3;
  c.lora_alpha = 6;
  c.target_modules = {"query", "value"};
  const auto fused_names = lora::add_adapter(fused_root, "t", c);
  const auto split_names = lora::add_adapter(split, "t", c);
  CHECK(fused_names == std::vector<std::string>{"attn.query", "attn.value"});
  CHECK(split_names == fused_names);
  // The weights carry the split model's names (PEFT keys of ConLoRA's ViT adapters).
  CHECK(fused_root.named_parameters().contains("attn.query.lora_A.t.weight"));
  CHECK(fused_root.named_parameters().contains("attn.value.lora_B.t.weight"));
  CHECK_FALSE(fused_root.named_parameters().contains("attn.key.lora_A.t.weight"));
  randomise(fused_root, "t", 7);
  const auto fused_weights = lora::adapter_weights(fused_root, "t");
  for (const auto& [name, weight] : lora::adapter_weights(split, "t")) {
    auto target = weight;
    target.copy_(fused_weights.at(name));
  }
  lora::set_active_adapter(fused_root, "t");
  lora::set_active_adapter(split, "t");
  const auto expected = split.forward(x);
  CHECK(max_diff(fused->forward(x), expected) < 1e-5);
  lora::set_active_adapter(split, "original");
  CHECK(max_diff(fused->forward(x), split.forward(x)) > 1e-3);  // the adapter matters
  lora::merge_active_adapter(fused_root);
  CHECK(max_diff(fused->forward(x), expected) < 1e-5);
  lora::unmerge_adapters(fused_root);
  CHECK(max_diff(fused->forward(x), expected) < 1e-5);
}

TEST_CASE("LoRA in MiniGPT-4: ConLoRA's placement from the config; only adapters train", "[models][lora]") {
  auto config =
      tiny_config({"model.lora.llm.r=8", "model.lora.llm.lora_alpha=32", "model.lora.llm.lora_dropout=0.05",
                   "model.lora.llm.layers=0", "model.lora.vit.r=16", "model.lora.vit.lora_alpha=16",
                   "model.lora.vit.layers=1-2", "model.lora.qformer.r=16", "model.lora.qformer.lora_alpha=16"});
  CHECK(config.lora.at("llm").target_modules == std::vector<std::string>{"q_proj", "v_proj"});
  CHECK(config.lora.at("vit").layers_to_transform == std::vector<int64_t>{1, 2});
  CHECK(config.lora.at("vit").layers_pattern == std::vector<std::string>{"blocks"});
  const auto model = load_minigpt4(config, torch::kCPU);
  CHECK(active_adapter(*model) == kTrainedAdapter);
  std::map<std::string, int> layers_per_component;
  for (const auto& component : lora_components())
    layers_per_component[component] = static_cast<int>(lora::lora_layers(*lora_component(*model, component)).size());
  CHECK(layers_per_component["llm"] == 2);      // q_proj, v_proj of layer 0
  CHECK(layers_per_component["vit"] == 4);      // query, value of blocks 1 and 2
  CHECK(layers_per_component["qformer"] == 6);  // self-attention in 2 layers, cross-attention in 1
  int64_t trainable = 0;
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    CHECK(item.value().requires_grad() == lora::is_adapter_parameter(item.key()));
    trainable += item.value().requires_grad();
  }
  CHECK(trainable == 2 * (2 + 4 + 6));
  CHECK(model->named_parameters().contains("visual_encoder.blocks.1.attn.query.lora_A.default.weight"));
  CHECK(model->named_parameters().contains(
      "Qformer.bert.encoder.layer.0.crossattention.self.value.lora_B.default.weight"));

  // Named extras train along (TinyGPT-V's projector and norms); MiniGPT-v2's keys keep the projector.
  const auto extras = load_minigpt4(
      tiny_config({"model.lora.llm.r=4", "model.lora_trainable=[llama_proj, input_layernorm]"}), torch::kCPU);
  for (const auto& item : extras->named_parameters()) {
    const auto& name = item.key();
    const bool expected = lora::is_adapter_parameter(name) || name.rfind("llama_proj.", 0) == 0 ||
                          name.find(".input_layernorm.") != std::string::npos;
    INFO(name);
    CHECK(item.value().requires_grad() == expected);
  }
  const auto v2 = load_minigpt4(tiny_config({"model.lora_r=4", "model.lora_alpha=16"}), torch::kCPU);
  CHECK(v2->llama_proj->weight.requires_grad());
  CHECK(lora::lora_layers(*v2->llama_model).size() == 4);
  CHECK(lora::lora_layers(*v2->llama_model)[0].layer->adapter(kTrainedAdapter).scale == 4.0);

  CHECK_THROWS_WITH(tiny_config({"model.lora.projector.r=4"}), Contains("model.lora.projector"));
  CHECK_THROWS_WITH(tiny_config({"model.lora.llm.layers=[3-1]"}), Contains("3-1"));
  CHECK_THROWS_WITH(load_minigpt4(tiny_config({"model.lora.llm.target_modules=[query_key_value]"}), torch::kCPU),
                    Contains("model.lora.llm") && Contains("query_key_value"));
  CHECK_THROWS_WITH(
      load_minigpt4(tiny_config({"model.lora.llm.r=4", "model.lora_trainable=[nonexistent]"}), torch::kCPU),
      Contains("nonexistent"));
}

TEST_CASE("LoRA in MiniGPT-4: a short training run changes only the adapter", "[models][lora]") {
  const auto model = load_minigpt4(tiny_config(kAllComponents), torch::kCPU);
  lora::set_adapters_training(*model, true);
  const auto tokenizer = LlamaTokenizer::from_pretrained(tiny() / "vicuna");
  const auto before = snapshot(*model);
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
  torch::manual_seed(8);
  const auto images = torch::randn({2, 3, 56, 56});
  double first = 0, last = 0;
  for (int step = 0; step < 4; ++step) {
    optimizer.zero_grad();
    const auto out = model->forward(images, {"a red circle.", "a blue square."}, "<Img><ImageHere></Img> ", tokenizer);
    out.loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = out.loss.item<double>();
  }
  CHECK(last < first);
  int changed_adapters = 0;
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    const bool changed = !torch::equal(item.value(), before.at(item.key()));
    if (lora::is_adapter_parameter(item.key()))
      changed_adapters += changed;
    else
      CHECK_FALSE(changed);
  }
  // Every B moved off zero (every A too: B's gradient reaches A from the second step on).
  CHECK(changed_adapters == static_cast<int>(trainable.size()));
}

TEST_CASE("LoRA in MiniGPT-4: adapter folders per component load by name and switch", "[models][lora]") {
  const auto dir = scratch("folders");
  const auto trained = load_minigpt4(tiny_config(kAllComponents), torch::kCPU);
  for (const auto& component : lora_components()) randomise(*lora_component(*trained, component), kTrainedAdapter, 9);
  const auto trained_outputs = tiny_outputs(*trained);
  const auto written = save_adapter_folders(*trained, kTrainedAdapter, (dir / "lora_0").string());
  CHECK(written.size() == 3);
  for (const char* folder : {"llm", "ve", "qformer"})
    CHECK(lora::is_peft_adapter_dir((dir / "lora_0" / folder).string()));
  CHECK(io::read_json_file((dir / "lora_0/llm/adapter_config.json").string())["task_type"] == "CAUSAL_LM");
  CHECK(io::read_json_file((dir / "lora_0/ve/adapter_config.json").string())["target_modules"] ==
        nlohmann::json({"query", "value"}));
  CHECK(io::load_safetensors((dir / "lora_0/ve/adapter_model.safetensors").string())
            .count("base_model.model.blocks.0.attn.query.lora_A.weight"));

  // A task folder, and the LLM's PEFT folder on its own (found to be the LLM's by its names).
  const auto plain = load_minigpt4(tiny_config(), torch::kCPU);
  const auto plain_outputs = tiny_outputs(*plain);
  const auto model = load_minigpt4(tiny_config({"model.lora_path={detection: " + (dir / "lora_0").string() +
                                                ", llm_only: " + (dir / "lora_0/llm").string() + "}"}),
                                   torch::kCPU);
  CHECK(adapter_names(*model) == std::vector<std::string>{"detection", "llm_only"});
  CHECK(active_adapter(*model) == "original");        // two loaded, none named active
  for (const auto& item : model->named_parameters())  // loaded adapters are for use, not training
    if (lora::is_adapter_parameter(item.key())) CHECK_FALSE(item.value().requires_grad());
  auto outputs = tiny_outputs(*model);
  CHECK(torch::equal(outputs.first, plain_outputs.first));
  CHECK(torch::equal(outputs.second, plain_outputs.second));

  set_active_adapter(*model, "detection");
  outputs = tiny_outputs(*model);
  CHECK(max_diff(outputs.first, trained_outputs.first) < 1e-5);
  CHECK(max_diff(outputs.second, trained_outputs.second) < 1e-4);
  set_active_adapter(*model, "llm_only", /*merge=*/true);
  outputs = tiny_outputs(*model);
  CHECK(torch::equal(outputs.first, plain_outputs.first));  // no vision adapter
  CHECK(max_diff(outputs.second, plain_outputs.second) > 1e-3);
  set_active_adapter(*model, "original");
  outputs = tiny_outputs(*model);
  CHECK(max_diff(outputs.second, plain_outputs.second) < 1e-5);

  const auto chosen =
      load_minigpt4(tiny_config({"model.lora_path={detection: " + (dir / "lora_0").string() + "}"}), torch::kCPU);
  CHECK(active_adapter(*chosen) == "detection");  // the only one loaded
  CHECK_THROWS_WITH(load_minigpt4(tiny_config({"model.lora_path={x: " + dir.string() + "}"}), torch::kCPU),
                    Contains("model.lora_path.x") && Contains("llm/"));
  CHECK_THROWS_WITH(
      load_minigpt4(tiny_config({"model.lora_path={x: " + (dir / "lora_0").string() + "}", "model.lora_active=y"}),
                    torch::kCPU),
      Contains("'y'") && Contains("original, x"));
  fs::remove_all(dir);
}

TEST_CASE("LoRA target patterns run in linear time, whatever a config or adapter file gives", "[lora][untrusted]") {
  // A backtracking matcher (std::regex, Python's re) takes exponential time here; RE2 does not.
  lora::LoraConfig config;
  config.r = 4;
  config.target_regex = "(.*.*.*.*)*X";
  CHECK_NOTHROW(config.validate("hostile"));
  const std::string name = "model.layers." + std::string(5000, 'a') + ".q_proj";
  CHECK_FALSE(config.matches(name));
  config.target_regex = R"(.*\.(q_proj|v_proj))";
  CHECK(config.matches("model.layers.0.self_attn.q_proj"));
  // Python syntax RE2 lacks is refused with a named error rather than mis-matched.
  config.target_regex = R"((a)\1)";
  CHECK_THROWS_WITH(config.validate("adapter.json"), Catch::Contains("adapter.json") && Catch::Contains("RE2"));
}
