#include "minigpt4/models/minigpt4_lora.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/models/lora_peft.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/tinygptv.h"

#include <filesystem>
#include <regex>
#include <set>

namespace minigpt4 {

namespace fs = std::filesystem;

namespace {

// Per component: the layer list's name (for `layers`), the default targets (PEFT's for
// LLaMA; ConLoRA's for the ViT and Q-Former), and the folder name ConLoRA saves it under.
struct ComponentDefaults {
  const char* layers_pattern;
  std::vector<std::string> targets;
  const char* folder;
};

const ComponentDefaults& defaults_for(const std::string& component) {
  static const std::map<std::string, ComponentDefaults> table = {
      {"llm", {"layers", {"q_proj", "v_proj"}, "llm"}},
      {"vit", {"blocks", {"query", "value"}, "ve"}},
      {"qformer", {"layer", {"query", "value"}, "qformer"}},
  };
  return table.at(component);
}

// "14-38", "3" -> indices; a list may mix both.
std::vector<int64_t> parse_layers(const std::vector<std::string>& items, const std::string& key,
                                  const std::string& source) {
  static const std::regex range(R"(\s*(\d+)\s*(?:-\s*(\d+)\s*)?)");
  std::vector<int64_t> layers;
  for (const auto& item : items) {
    std::smatch m;
    if (!std::regex_match(item, m, range))
      fail("{}: {} holds '{}'; expected layer indices or ranges such as 0-21", source, key, item);
    const int64_t first = std::stoll(m[1]), last = m[2].matched ? std::stoll(m[2]) : first;
    if (last < first) fail("{}: {} holds the empty range '{}'", source, key, item);
    for (int64_t i = first; i <= last; ++i) layers.push_back(i);
  }
  return layers;
}

lora::LoraConfig component_config(const Config& cfg, const std::string& component) {
  const std::string key = "model.lora." + component;
  const auto source = cfg.source_of(key + ".r").empty() ? cfg.path() : cfg.source_of(key + ".r");
  const auto& defaults = defaults_for(component);
  lora::LoraConfig c;
  c.r = cfg.get_int(key + ".r", c.r);
  c.lora_alpha = cfg.get_float(key + ".lora_alpha", c.lora_alpha);
  c.lora_dropout = cfg.get_float(key + ".lora_dropout", c.lora_dropout);
  c.target_modules = cfg.get_string_list(key + ".target_modules");
  c.target_regex = cfg.get_string(key + ".target_regex");
  if (c.target_modules.empty() && c.target_regex.empty()) c.target_modules = defaults.targets;
  c.layers_to_transform = parse_layers(cfg.get_string_list(key + ".layers"), key + ".layers", source);
  const auto pattern = cfg.get_string(key + ".layers_pattern");
  if (!pattern.empty())
    c.layers_pattern = {pattern};
  else if (!c.layers_to_transform.empty())
    c.layers_pattern = {defaults.layers_pattern};
  c.use_rslora = cfg.get_bool(key + ".use_rslora", false);
  c.validate(fmt::format("{}: {}", source, key));
  if (component == "llm") c.task_type = "CAUSAL_LM";
  return c;
}

// The component whose linear layers hold every module a lone PEFT folder names.
std::string component_for_folder(MiniGPT4& model, const std::string& dir) {
  const auto modules = lora::peft_adapter_modules(dir);
  for (const auto& component : lora_components()) {
    auto* root = lora_component(model, component);
    if (!root) continue;
    std::set<std::string> names;
    for (const auto& t : lora::linear_targets(*root)) names.insert(t.name);
    if (std::all_of(modules.begin(), modules.end(), [&](const auto& m) { return names.count(m) > 0; }))
      return component;
  }
  fail(
      "{}: the adapter's weights name '{}', which is a linear layer of none of the LLM, the ViT or the Q-Former "
      "(names are relative to the component, e.g. model.layers.0.self_attn.q_proj)",
      dir, modules.front());
}

// Whether `entry` is a run of whole dotted segments of `name` ("llama_proj" of
// "llama_proj.weight", "input_layernorm" of "...layers.0.input_layernorm.weight").
bool names_segments(const std::string& name, const std::string& entry) {
  return ("." + name + ".").find("." + entry + ".") != std::string::npos;
}

}  // namespace

const std::vector<std::string>& lora_components() {
  static const std::vector<std::string> names = {"llm", "vit", "qformer"};
  return names;
}

torch::nn::Module* lora_component(MiniGPT4& model, const std::string& component) {
  if (component == "llm") return model.llama_model.get();
  if (component == "vit") return model.visual_encoder.get();
  if (component == "qformer") return model.Qformer.get();
  fail("unknown LoRA component '{}' (known: llm, vit, qformer)", component);
}

void read_lora_settings(const Config& cfg, MiniGPT4Config& c) {
  for (const auto& component : cfg.keys_under("model.lora")) {
    const auto& known = lora_components();
    if (std::find(known.begin(), known.end(), component) == known.end())
      fail("{}: model.lora.{}: unknown component (known: llm, vit, qformer)", cfg.path(), component);
    c.lora[component] = component_config(cfg, component);
  }
  // TinyGPT-V's Phi: its adapters sit on query_key_value and dense unless told otherwise.
  const bool tinygptv = c.llm_variant == tinygptv::kLlmVariant;
  if (tinygptv && c.lora.count("llm") && !cfg.has("model.lora.llm.target_modules") &&
      !cfg.has("model.lora.llm.target_regex"))
    c.lora["llm"].target_modules = tinygptv::lora_targets();
  // MiniGPT-v2's keys (which TinyGPT-V's configs use too): one LLM adapter, the projector
  // trained with it (TinyGPT-V: both projections and Phi's norms).
  const bool v2_adapter = cfg.get_int("model.lora_r", 0) > 0 && !c.lora.count("llm");
  if (v2_adapter) {
    lora::LoraConfig llm;
    llm.r = cfg.get_int("model.lora_r", 0);
    llm.lora_alpha = cfg.get_float("model.lora_alpha", 16.0);
    llm.lora_dropout = cfg.get_float("model.lora_dropout", 0.05);
    llm.target_modules = cfg.get_string_list("model.lora_target_modules");
    if (llm.target_modules.empty())
      llm.target_modules = tinygptv ? tinygptv::lora_targets() : defaults_for("llm").targets;
    llm.task_type = "CAUSAL_LM";
    llm.validate(fmt::format("{}: model.lora_r", cfg.source_of("model.lora_r")));
    c.lora["llm"] = llm;
  }
  std::vector<std::string> v2_trainable = {"llama_proj"};
  if (c.proj_hidden > 0) v2_trainable.push_back("llama_proj2");
  if (tinygptv) {
    v2_trainable.clear();
    for (const auto& entry : tinygptv::trainable())
      if (entry != "llama_proj2" || c.proj_hidden > 0) v2_trainable.push_back(entry);
  }
  for (const auto& name : cfg.keys_under("model.lora_path"))
    c.lora_path[name] = cfg.get_string("model.lora_path." + name);
  c.lora_active = cfg.get_string("model.lora_active");
  c.lora_trainable = cfg.has("model.lora_trainable") ? cfg.get_string_list("model.lora_trainable")
                     : v2_adapter                    ? v2_trainable
                                                     : std::vector<std::string>{};
}

void attach_configured_adapters(MiniGPT4& model) {
  const auto& c = model.config;
  for (const auto& [component, settings] : c.lora) {
    auto* root = lora_component(model, component);
    if (!root) fail("model.lora.{}: this model has no Q-Former (has_qformer: False)", component);
    auto config = settings;
    config.base_model_name_or_path = component == "llm"   ? c.llama_model
                                     : component == "vit" ? c.vit_model
                                                          : c.q_former_model;
    const auto names = lora::add_adapter(*root, kTrainedAdapter, config, "model.lora." + component);
    log::info("LoRA '{}' on the {}: {} layers (r {}, alpha {})", kTrainedAdapter, component, names.size(), config.r,
              config.lora_alpha);
  }
}

void load_adapter_folder(MiniGPT4& model, const std::string& name, const std::string& dir) {
  if (!fs::is_directory(dir)) fail("model.lora_path.{}: '{}' is not a folder", name, dir);
  if (lora::is_peft_adapter_dir(dir)) {
    const auto component = component_for_folder(model, dir);
    lora::load_peft_adapter(*lora_component(model, component), name, dir);
    log::info("LoRA '{}' on the {} from {}", name, component, dir);
    return;
  }
  bool found = false;
  for (const auto& [folder, component] : std::vector<std::pair<std::string, std::string>>{
           {"llm", "llm"}, {"ve", "vit"}, {"vit", "vit"}, {"qformer", "qformer"}}) {
    const auto sub = (fs::path(dir) / folder).string();
    if (!lora::is_peft_adapter_dir(sub)) continue;
    auto* root = lora_component(model, component);
    if (!root) fail("{}: a Q-Former adapter, but this model has no Q-Former", sub);
    lora::load_peft_adapter(*root, name, sub);
    log::info("LoRA '{}' on the {} from {}", name, component, sub);
    found = true;
  }
  if (!found)
    fail(
        "model.lora_path.{}: '{}' holds neither {} nor the per-component adapter folders llm/, ve/ (or vit/), "
        "qformer/",
        name, dir, lora::kPeftConfigFile);
}

void load_configured_adapters(MiniGPT4& model) {
  const auto& c = model.config;
  for (const auto& [name, dir] : c.lora_path) load_adapter_folder(model, name, dir);
  std::string active = c.lora_active;
  if (active.empty()) {
    if (!c.lora.empty())
      active = kTrainedAdapter;
    else
      active = c.lora_path.size() == 1 ? c.lora_path.begin()->first : lora::kOriginal;
  }
  set_active_adapter(model, active);
}

void set_active_adapter(MiniGPT4& model, const std::string& name, bool merge) {
  lora::set_active_adapter(model, name, merge);
}

std::string active_adapter(MiniGPT4& model) { return lora::active_adapter(model); }

std::vector<std::string> adapter_names(MiniGPT4& model) { return lora::adapter_names(model); }

void apply_lora_freezing(MiniGPT4& model) {
  const auto& c = model.config;
  const bool training_adapter = !c.lora.empty() && lora::has_adapter(model, kTrainedAdapter);
  lora::set_trainable_adapter(model, training_adapter ? kTrainedAdapter : "");
  if (!training_adapter) return;
  for (auto& p : model.llama_proj->parameters()) p.set_requires_grad(false);
  if (model.llama_proj2)
    for (auto& p : model.llama_proj2->parameters()) p.set_requires_grad(false);
  for (const auto& entry : c.lora_trainable) {
    bool matched = false;
    for (auto& item : model.named_parameters()) {
      if (lora::is_adapter_parameter(item.key()) || !names_segments(item.key(), entry)) continue;
      item.value().set_requires_grad(true);
      matched = true;
    }
    if (!matched) fail("model.lora_trainable: '{}' names no parameter of the model", entry);
  }
}

std::vector<std::string> save_adapter_folders(MiniGPT4& model, const std::string& adapter, const std::string& dir) {
  std::vector<std::string> written;
  for (const auto& component : lora_components()) {
    auto* root = lora_component(model, component);
    if (!root || !lora::has_adapter(*root, adapter)) continue;
    const auto folder = (fs::path(dir) / defaults_for(component).folder).string();
    lora::save_peft_adapter(*root, adapter, folder);
    written.push_back(folder);
  }
  return written;
}

}  // namespace minigpt4
