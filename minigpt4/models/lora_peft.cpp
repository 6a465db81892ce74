#include "minigpt4/models/lora_peft.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

namespace minigpt4::lora {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Where the weights are: the safetensors file, else the torch.save file older PEFT wrote.
std::string weights_path(const std::string& dir) {
  std::error_code ec;
  for (const char* name : {kPeftWeightsFile, kPeftLegacyWeightsFile}) {
    const auto path = fs::path(dir) / name;
    if (fs::exists(path, ec)) return path.string();
  }
  fail("{}: no {} or {} in this adapter folder", dir, kPeftWeightsFile, kPeftLegacyWeightsFile);
}

struct ModuleWeights {
  torch::Tensor A, B;
};

// base_model.model.<module>.lora_{A,B}.weight -> module -> {A, B}.
std::map<std::string, ModuleWeights> weights_by_module(const StateDict& state, const std::string& source) {
  std::map<std::string, ModuleWeights> modules;
  for (const auto& [key, tensor] : state) {
    std::string name = key.rfind(kPeftKeyPrefix, 0) == 0 ? key.substr(std::string(kPeftKeyPrefix).size()) : key;
    if (name.find("lora_embedding_") != std::string::npos)
      fail("{}: '{}' adapts an embedding; only adapters on linear layers are supported", source, excerpt(key, 120));
    if (name.find("lora_magnitude_vector") != std::string::npos)
      fail("{}: '{}' is a DoRA magnitude; DoRA adapters are not supported", source, excerpt(key, 120));
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    if (!is_a && !is_b)
      fail("{}: '{}' is not a LoRA weight (expected base_model.model.<module>.lora_A.weight or .lora_B.weight)", source,
           excerpt(key, 120));
    const auto module = name.substr(0, name.size() - std::string(".lora_A.weight").size());
    if (tensor.dim() != 2)
      fail("{}: '{}' has {} dimensions, a LoRA factor has 2", source, excerpt(key, 120), tensor.dim());
    (is_a ? modules[module].A : modules[module].B) = tensor;
  }
  for (const auto& [module, w] : modules)
    if (!w.A.defined() || !w.B.defined())
      fail("{}: '{}' has a lora_{} weight but no lora_{}", source, excerpt(module, 120), w.A.defined() ? "A" : "B",
           w.A.defined() ? "B" : "A");
  if (modules.empty()) fail("{}: the adapter holds no LoRA weights", source);
  return modules;
}

std::vector<std::string> strings_of(const json& value, const char* key, const std::string& source) {
  std::vector<std::string> out;
  if (value.is_null()) return out;
  if (value.is_string()) return {value.get<std::string>()};
  if (!value.is_array())
    fail("{}: '{}' must be a string or a list of strings, got {}", source, key, describe_json(value));
  for (const auto& item : value) {
    if (!item.is_string()) fail("{}: '{}' must hold strings, got {}", source, key, describe_json(item));
    out.push_back(item.get<std::string>());
  }
  return out;
}

void write_text_file(const std::string& path, const std::string& text) {
  io::AtomicWriter writer(path);
  writer.write(text.data(), text.size());
  writer.commit();
}

}  // namespace

json peft_config_json(const LoraConfig& c) {
  json j;
  j["peft_type"] = "LORA";
  j["task_type"] = c.task_type.empty() ? json(nullptr) : json(c.task_type);
  j["base_model_name_or_path"] = c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path);
  j["r"] = c.r;
  // An integral alpha as an integer, as PEFT writes the usual int alpha.
  j["lora_alpha"] = c.lora_alpha == std::floor(c.lora_alpha) && std::abs(c.lora_alpha) < 1e15
                        ? json(static_cast<int64_t>(c.lora_alpha))
                        : json(c.lora_alpha);
  j["lora_dropout"] = c.lora_dropout;
  j["target_modules"] = c.target_regex.empty() ? json(c.target_modules) : json(c.target_regex);
  j["layers_to_transform"] = c.layers_to_transform.empty() ? json(nullptr) : json(c.layers_to_transform);
  j["layers_pattern"] = c.layers_pattern.empty()       ? json(nullptr)
                        : c.layers_pattern.size() == 1 ? json(c.layers_pattern[0])
                                                       : json(c.layers_pattern);
  j["rank_pattern"] = json(c.rank_pattern);
  j["alpha_pattern"] = json(c.alpha_pattern);
  j["use_rslora"] = c.use_rslora;
  // Fixed by what this code implements; PEFT reads them.
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["use_dora"] = false;
  j["modules_to_save"] = nullptr;
  j["init_lora_weights"] = true;
  j["inference_mode"] = true;
  return j;
}

LoraConfig lora_config_from_peft_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: an adapter config must be a JSON object", source);
  auto text = [&](const char* key, const std::string& fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_string()) fail("{}: '{}' must be a string, got {}", source, key, describe_json(j[key]));
    return j[key].get<std::string>();
  };
  const auto type = text("peft_type", "LORA");
  if (type != "LORA") fail("{}: peft_type is {}; only LORA adapters are supported", source, excerpt(type));
  auto flag = [&](const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); };
  if (flag("use_dora")) fail("{}: use_dora is true; DoRA adapters are not supported", source);
  if (flag("fan_in_fan_out"))
    fail("{}: fan_in_fan_out is true (weights stored transposed, for GPT-2's Conv1D); not supported", source);
  if (j.contains("bias") && j["bias"].is_string() && j["bias"] != "none")
    fail("{}: bias is '{}'; adapters that also train biases are not supported (bias must be 'none')", source,
         excerpt(j["bias"].get<std::string>()));
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
    fail("{}: modules_to_save ({}) replaces whole modules, which this loader does not apply", source,
         describe_json(j["modules_to_save"]));

  LoraConfig c;
  auto number = [&](const char* key, double fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number()) fail("{}: '{}' must be a number, got {}", source, key, describe_json(j[key]));
    return j[key].get<double>();
  };
  if (!j.contains("r") || !j["r"].is_number_integer())
    fail("{}: 'r' must be an integer rank, got {}", source, j.contains("r") ? describe_json(j["r"]) : "nothing");
  c.r = j["r"].get<int64_t>();
  c.lora_alpha = number("lora_alpha", 8.0);  // PEFT's default
  c.lora_dropout = number("lora_dropout", 0.0);
  c.use_rslora = flag("use_rslora");
  if (j.contains("target_modules") && j["target_modules"].is_string())
    c.target_regex = j["target_modules"].get<std::string>();
  else if (j.contains("target_modules"))
    c.target_modules = strings_of(j["target_modules"], "target_modules", source);
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& layers = j["layers_to_transform"];
    if (layers.is_number_integer()) {
      c.layers_to_transform = {layers.get<int64_t>()};
    } else if (layers.is_array()) {
      for (const auto& l : layers) {
        if (!l.is_number_integer())
          fail("{}: layers_to_transform must hold integers, got {}", source, describe_json(l));
        c.layers_to_transform.push_back(l.get<int64_t>());
      }
    } else {
      fail("{}: layers_to_transform must be an integer or a list, got {}", source, describe_json(layers));
    }
  }
  if (j.contains("layers_pattern")) c.layers_pattern = strings_of(j["layers_pattern"], "layers_pattern", source);
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_object()) fail("{}: '{}' must be an object, got {}", source, key, describe_json(j[key]));
    for (const auto& [pattern, value] : j[key].items()) {
      if (!value.is_number())
        fail("{}: {}['{}'] must be a number, got {}", source, key, excerpt(pattern), describe_json(value));
      if (std::string(key) == "rank_pattern" && !value.is_number_integer())
        fail("{}: rank_pattern['{}'] must be an integer rank, got {}", source, excerpt(pattern), describe_json(value));
      if (std::string(key) == "rank_pattern")
        c.rank_pattern[pattern] = value.get<int64_t>();
      else
        c.alpha_pattern[pattern] = value.get<double>();
    }
  }
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
  if (j.contains("task_type") && j["task_type"].is_string()) c.task_type = j["task_type"].get<std::string>();
  if (c.r <= 0) fail("{}: r must be positive, got {}", source, c.r);
  if (!(c.lora_dropout >= 0.0 && c.lora_dropout < 1.0))
    fail("{}: lora_dropout must be in [0, 1), got {}", source, c.lora_dropout);
  return c;
}

bool is_peft_adapter_dir(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / kPeftConfigFile, ec);
}

LoraConfig read_peft_config(const std::string& dir) {
  const auto path = (fs::path(dir) / kPeftConfigFile).string();
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{}: not a PEFT adapter folder (no {})", dir, kPeftConfigFile);
  return lora_config_from_peft_json(io::read_json_file(path), path);
}

std::vector<std::string> peft_adapter_modules(const std::string& dir) {
  const auto path = weights_path(dir);
  std::vector<std::string> names;
  for (const auto& item : weights_by_module(io::load_state_dict(path), path)) names.push_back(item.first);
  return names;
}

void save_peft_adapter(torch::nn::Module& root, const std::string& adapter, const std::string& dir) {
  const auto config = adapter_config(root, adapter);
  if (!config) fail("save LoRA adapter: no adapter named '{}' here", adapter);
  StateDict tensors;
  for (const auto& [name, weight] : adapter_weights(root, adapter, kPeftKeyPrefix))
    tensors[name] = weight.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  fs::create_directories(dir);
  io::save_safetensors((fs::path(dir) / kPeftWeightsFile).string(), tensors, {{"format", "pt"}});
  write_text_file((fs::path(dir) / kPeftConfigFile).string(), peft_config_json(*config).dump(2) + "\n");
}

LoraConfig load_peft_adapter(torch::nn::Module& root, const std::string& adapter, const std::string& dir) {
  const auto config = read_peft_config(dir);
  const auto path = weights_path(dir);
  const auto modules = weights_by_module(io::load_state_dict(path), path);
  std::map<std::string, PlacedAdapter> placement;
  for (const auto& [module, w] : modules) {
    const int64_t rank = w.A.size(0);
    if (w.B.size(1) != rank)
      fail("{}: '{}' has lora_A of rank {} but lora_B [{}]", path, module, rank, fmt::join(w.B.sizes(), ", "));
    placement[module] = {rank, config.scale(rank, config.alpha_for(module))};
  }
  add_adapter_at(root, adapter, placement, config, path);
  for (const auto& l : lora_layers(root)) {
    const auto it = modules.find(l.name);
    if (it == modules.end() || !l.layer->has(adapter)) continue;
    const auto& a = l.layer->adapter(adapter);
    for (const auto& [target, value, which] :
         {std::tuple{a.A, it->second.A, "lora_A"}, std::tuple{a.B, it->second.B, "lora_B"}}) {
      if (value.sizes() != target.sizes())
        fail("{}: {}.{}.weight has shape [{}] but the layer needs [{}]", path, l.name, which,
             fmt::join(value.sizes(), ", "), fmt::join(target.sizes(), ", "));
      torch::NoGradGuard no_grad;
      auto t = target;  // the registered parameter; copy_ converts dtype and device
      t.copy_(value);
    }
  }
  return config;
}

}  // namespace minigpt4::lora
