// load_minigpt4: the files of a MiniGPT-4 config into the model, in the original's order:
// the EVA ViT (model.vit_model), the BLIP-2 Q-Former (model.q_former_model), the LLM
// (model.llama_model), then model.ckpt over everything; what no file held is either new in
// MiniGPT-4 (the projector) and initialised fresh, or an error naming it.
#include "minigpt4/models/minigpt4.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/gguf_llama.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/tinygptv.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>

namespace minigpt4 {

namespace {

// BLIP-2 checkpoints carry the Q-Former's text branch and BLIP-2's own heads; MiniGPT-4
// deletes those modules and loads with strict=False.
bool blip2_unused(const std::string& key) {
  static const std::regex pattern(
      R"(^(Qformer\.cls\..*|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\..*|)"
      R"(Qformer\.bert\.embeddings\.position_ids|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*|)"
      R"((vision_proj|text_proj|itm_head)\..*|temp)$)");
  return std::regex_match(key, pattern);
}

bool rotary_buffer(const std::string& key) { return ends_with(key, "rotary_emb.inv_freq"); }

// Where users who ran the original code have the LAVIS downloads.
std::string resolve_weight_path(const std::string& value, const std::string& key) {
  if (starts_with(value, "http://") || starts_with(value, "https://")) {
    const auto name = value.substr(value.find_last_of('/') + 1);
    std::vector<std::filesystem::path> candidates;
    if (const char* torch_home = std::getenv("TORCH_HOME"))
      candidates.emplace_back(std::filesystem::path(torch_home) / "hub/checkpoints" / name);
    if (const char* home = std::getenv("HOME"))
      candidates.emplace_back(std::filesystem::path(home) / ".cache/torch/hub/checkpoints" / name);
    for (const auto& c : candidates)
      if (std::filesystem::exists(c)) return c.string();
    fail(
        "model.{} is the URL {}; nothing is downloaded at run time. Download it yourself and set model.{} to its "
        "path (looked for a LAVIS cache copy at ~/.cache/torch/hub/checkpoints/{})",
        key, value, key, name);
  }
  if (value == "eva_clip_g")
    fail(
        "model.vit_model is 'eva_clip_g' (the original's name, which LAVIS downloads); set it to the path of "
        "eva_vit_g.pth");
  if (!std::filesystem::exists(value)) fail("model.{}: '{}' does not exist", key, value);
  return value;
}

// Loads state dicts into the model one after the other, remembering which parameters were
// filled and what each file contributed.
struct WeightLoader {
  MiniGPT4& model;
  LoadReport& report;
  std::set<std::string> filled;

  void load_state(const std::string& path, const StateDict& state, LoadSpec spec) {
    spec.source = path;
    auto result = load_into(model, state, spec, filled);
    warn_unused(path, result);
    report.sources.push_back(std::move(result));
  }
  void load_file(const std::string& key, const std::string& value, const LoadSpec& spec) {
    if (value.empty()) return;
    const auto path = resolve_weight_path(value, key);
    load_state(path, io::load_state_dict(path), spec);
  }
  static void warn_unused(const std::string& path, const LoadResult& result) {
    if (!result.unexpected.empty())
      log::warn("{}: {} keys the model does not use: {}", path, result.unexpected.size(),
                summarize_names(result.unexpected));
  }
};

// EVA-CLIP's files hold 40 blocks (MiniGPT-4 uses 39) and a position embedding for 224
// pixels, interpolated to the configured image size.
LoadSpec vit_spec(const MiniGPT4Config& config) {
  LoadSpec vit;
  vit.add_prefix = "visual_encoder.";
  const int64_t depth = config.vision.depth, grid = config.vision.grid();
  vit.is_ignorable = [depth](const std::string& key) {
    static const std::regex block(R"(^visual_encoder\.blocks\.(\d+)\..*)");
    std::smatch m;
    return std::regex_match(key, m, block) && std::stoll(m[1]) >= depth;  // EVA-CLIP's 40th block
  };
  vit.reshape = [grid](const std::string& name, const torch::Tensor& value, const torch::Tensor& target) {
    if (name != "visual_encoder.pos_embed" || value.dim() != 3 || value.size(2) != target.size(2))
      return torch::Tensor();
    return interpolate_pos_embed(value, grid);
  };
  return vit;
}

void load_qformer(WeightLoader& loader, const MiniGPT4Config& config) {
  LoadSpec qformer;
  qformer.is_ignorable = blip2_unused;
  if (config.has_qformer) {
    loader.load_file("q_former_model", config.q_former_model, qformer);
    return;
  }
  if (config.q_former_model.empty() || contains(config.q_former_model, "://")) return;
  // The LLaMA-2 variant's code reads no BLIP-2 checkpoint (its ln_vision keeps LayerNorm's
  // defaults unless model.ckpt holds one), so one named here is skipped. A file without a
  // Q-Former, holding ln_vision alone, is read: that is how save_model_parts releases a
  // tower trained with this variant (the quickstart's).
  const auto path = resolve_weight_path(config.q_former_model, "q_former_model");
  const StateDict state = io::load_state_dict(path);
  const bool blip2 = std::any_of(state.begin(), state.end(), [](const auto& item) {
    return starts_with(item.first, "Qformer.") || item.first == "query_tokens";
  });
  if (blip2) {
    loader.report.notes.push_back("q_former_model " + path +
                                  " is a BLIP-2 checkpoint and is not read: the LLaMA-2 variant (has_qformer: False) "
                                  "takes ln_vision from no BLIP-2 file, as the original");
  } else {
    qformer.is_ignorable = [](const std::string& key) { return !starts_with(key, "ln_vision."); };
    loader.load_state(path, state, qformer);
  }
}

// model.ckpt: loaded once the adapters it may hold weights for exist. A TinyGPT-V checkpoint
// (PEFT-wrapped LLM names) maps onto our names, may imply the adapter, and every key of it
// must find its parameter.
void load_checkpoint(WeightLoader& loader, const MiniGPT4Config& config, const LoadSpec& vit) {
  MiniGPT4& model = loader.model;
  std::string ckpt_path;
  StateDict ckpt_state;
  if (!config.ckpt.empty()) {
    ckpt_path = resolve_weight_path(config.ckpt, "ckpt");
    ckpt_state = io::load_state_dict(ckpt_path);
  }
  const bool tinygptv_ckpt = tinygptv::is_peft_wrapped(ckpt_state);
  if (tinygptv_ckpt) {
    ckpt_state = tinygptv::unwrap_peft_names(ckpt_state, ckpt_path);
    tinygptv::prepare_for_checkpoint(model, ckpt_state, ckpt_path, loader.report);
    loader.report.notes.push_back(ckpt_path +
                                  " is a TinyGPT-V checkpoint: its llama_model.base_model.model.* keys (PEFT's "
                                  "wrapper) are read as llama_model.*");
  }
  attach_configured_adapters(model);  // before the checkpoint, which may hold their trained weights
  if (ckpt_path.empty()) return;
  LoadSpec ckpt;
  ckpt.source = ckpt_path;
  ckpt.is_ignorable = [](const std::string& key) { return rotary_buffer(key) || blip2_unused(key); };
  ckpt.reshape = vit.reshape;
  if (tinygptv_ckpt) {  // every key must fit: unknown ones first (they explain most shape errors too)
    const auto params = model.named_parameters(), buffers = model.named_buffers();
    std::vector<std::string> unknown;
    for (const auto& item : ckpt_state)
      if (!params.contains(item.first) && !buffers.contains(item.first) && !ckpt.is_ignorable(item.first))
        unknown.push_back(item.first);
    if (!unknown.empty())
      fail(
          "{}: {} keys of this TinyGPT-V checkpoint have no place in the model (names shown without PEFT's "
          "base_model.model.): {}{}",
          ckpt_path, unknown.size(), summarize_names(unknown), tinygptv::missing_switches(unknown, model));
  }
  LoadResult result;
  try {
    result = load_into(model, ckpt_state, ckpt, loader.filled);
  } catch (const Error& e) {
    if (!tinygptv_ckpt) throw;
    throw Error(std::string(e.what()) + " (a TinyGPT-V checkpoint: names shown without PEFT's base_model.model.)");
  }
  WeightLoader::warn_unused(ckpt_path, result);
  loader.report.sources.push_back(std::move(result));
}

// The projector is new in MiniGPT-4 (stage 1 starts it from scratch); without a Q-Former
// nothing provides ln_vision either, and the original leaves it at LayerNorm's default.
// Everything else must have come from a file.
void initialise_the_rest(WeightLoader& loader, const MiniGPT4Config& config) {
  MiniGPT4& model = loader.model;
  auto missing = unfilled_parameters(model, loader.filled);
  auto fresh = [&](const std::string& prefix, auto reset) {
    if (std::none_of(missing.begin(), missing.end(), [&](const auto& n) { return starts_with(n, prefix); })) return;
    reset();
    for (const auto& n : missing)
      if (starts_with(n, prefix)) loader.report.initialised.push_back(n);
    missing.erase(std::remove_if(missing.begin(), missing.end(), [&](const auto& n) { return starts_with(n, prefix); }),
                  missing.end());
  };
  fresh("llama_proj.", [&] { model.llama_proj->reset_parameters(); });
  if (model.llama_proj2) fresh("llama_proj2.", [&] { model.llama_proj2->reset_parameters(); });
  // Norms a relative adds to its LLM (TinyGPT-V's) keep the defaults they were built with;
  // adapters created by model.lora start as LoRA does (B zero) unless model.ckpt held them.
  const std::string llm_prefix = "llama_model.";
  for (auto it = missing.begin(); it != missing.end();) {
    if (lora::is_adapter_parameter(*it) ||
        (starts_with(*it, llm_prefix) && model.llama_model->starts_at_default(it->substr(llm_prefix.size())))) {
      loader.report.initialised.push_back(*it);
      it = missing.erase(it);
    } else {
      ++it;
    }
  }
  if (!config.has_qformer) fresh("ln_vision.", [&] { model.ln_vision->reset_parameters(); });
  if (!missing.empty()) {
    fail(
        "{} model weights were not found in any configured file (vit_model='{}', q_former_model='{}', "
        "llama_model='{}', ckpt='{}'): {}",
        missing.size(), config.vit_model, config.q_former_model, config.llama_model, config.ckpt,
        summarize_names(missing));
  }
}

void note_dtypes(const MiniGPT4Config& config, const MiniGPT4& model, torch::Device device, LoadReport& report) {
  if (device.is_cpu() && parse_dtype(config.vit_precision) == torch::kFloat16)
    report.notes.push_back("vit_precision fp16: weights are upcast to fp32 on the CPU (no fast fp16 GEMM there)");
  if (device.is_cpu() && parse_dtype(config.llm_precision) == torch::kFloat16)
    report.notes.push_back("llm_precision fp16: weights are upcast to fp32 on the CPU");
  const auto llm_modules = model.llama_model->named_modules("", /*include_self=*/false);
  const auto* head = llm_modules.find("lm_head");
  const bool head_quantized = head && (*head)->as<Linear>() && (*head)->as<Linear>()->is_quantized();
  if (const auto format = config.llm_weight_format(); format.quantized() || head_quantized) {
    const auto dtype = dtype_name(model.llama_model->dtype());
    report.notes.push_back(fmt::format(
        "{}: the LLM decoder layers' linear weights are {} and lm_head is {}, quantised while loading; embeddings "
        "and norms stay {}, activations are {}",
        config.low_resource  ? "low_resource"
        : format.quantized() ? "llm_weight_bits"
                             : "llm_head_bits",
        format.describe(), head_quantized ? config.llm_head_format().describe() : dtype, dtype, dtype));
  }
  if (config.vit_weight_format().quantized())
    report.notes.push_back(fmt::format("vit_weight_bits: the ViT's linear layers are {}, quantised while loading",
                                       config.vit_weight_format().describe()));
}

}  // namespace

std::shared_ptr<MiniGPT4> load_minigpt4(const MiniGPT4Config& config, torch::Device device, LoadReport* report_out) {
  LoadReport report;
  if (config.llama_model.empty())
    fail("model.llama_model is not set: it must name a Hugging Face LLM directory or a LLaMA GGUF file");
  const auto llama_dir = resolve_weight_path(config.llama_model, "llama_model");
  // Read before the model is built: the LLM's weight names settle its layout (Phi's fused or
  // split q/k/v). Safetensors and GGUF files are memory-mapped, so this costs no copy.
  StateDict llm_weights;
  LLMConfig llm_config;
  std::optional<io::GgufFile> gguf;
  if (is_gguf_path(llama_dir)) {
    gguf = io::read_gguf(llama_dir);
    llm_config = llama_config_from_gguf(*gguf);
    if (!config.llm_variant.empty()) fail("{}: a GGUF file holds a LLaMA; model.llm_variant must be unset", llama_dir);
    const auto file_format = gguf_projection_format(*gguf);
    if (file_format.quantized() && config.llm_weight_format() != file_format)
      report.notes.push_back(fmt::format(
          "{} holds its projections as {}; this model is built {}, so they are converted while loading (set "
          "model.llm_weight_bits: {} and model.llm_weight_group_size: 32 to keep them as they are)",
          llama_dir, file_format.describe(), config.llm_weight_format().describe(), file_format.bits));
  } else {
    const auto llama_json = std::filesystem::path(llama_dir) / "config.json";
    llm_weights = io::load_state_dict(llama_dir);
    llm_config = llm_config_from_hf(io::read_json_file(llama_json.string()), llama_json.string(), llm_weights);
  }
  if (config.llm_variant == tinygptv::kLlmVariant)
    tinygptv::use_tinygptv_phi(llm_config, llm_weights, llama_dir, report);
  if (config.llm_weight_format().quantized() && !config.freeze_llm)
    fail(
        "model.low_resource / model.llm_weight_bits store the LLM's linear layers quantised ({}), which cannot be "
        "trained; set model.freeze_llm: True, or keep the LLM in 16 bits",
        config.llm_weight_format().describe());
  if (config.llm_head_format().quantized() && !config.freeze_llm)
    fail(
        "model.llm_head_bits: 8 stores lm_head quantised, which cannot be trained; set model.freeze_llm: True, or "
        "model.llm_head_bits: 16");

  auto model = std::make_shared<MiniGPT4>(config, llm_config, device);
  note_dtypes(config, *model, device, report);

  WeightLoader loader{*model, report, {}};
  const LoadSpec vit = vit_spec(config);
  loader.load_file("vit_model", config.vit_model, vit);
  load_qformer(loader, config);
  if (gguf) {
    report.sources.push_back(
        load_gguf_llama(*model, *gguf, std::get<LlamaConfig>(llm_config), "llama_model.", loader.filled));
    gguf.reset();
  } else {
    LoadSpec llm;
    llm.add_prefix = "llama_model.";
    llm.is_ignorable = rotary_buffer;
    loader.load_state(llama_dir, llm_weights, llm);
    llm_weights.clear();
  }
  load_checkpoint(loader, config, vit);
  if (config.llm_weight_format().quantized() || config.vit_weight_format().quantized())
    release_free_heap();  // the quantiser's float32 blocks (memory.h)
  initialise_the_rest(loader, config);

  load_configured_adapters(*model);
  if (device.is_cpu()) {
    const int64_t moved = move_to_huge_pages(*model);
    if (moved > 0) log::debug("{} of weights moved into 2 MiB pages", format_bytes(moved));
  }
  model->apply_freezing();
  if (report_out) *report_out = std::move(report);
  return model;
}

}  // namespace minigpt4
