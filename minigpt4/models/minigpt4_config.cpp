// model: section of a run config -> MiniGPT4Config. Defaults come from the built-in
// configs/models/*.yaml (merged by Config); the struct's initialisers only cover keys a
// config without `arch` leaves out.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/tinygptv.h"

namespace minigpt4 {

MiniGPT4Config MiniGPT4Config::from_config(const Config& cfg) {
  MiniGPT4Config c;
  auto m = [](const char* key) { return std::string("model.") + key; };
  c.vision.image_size = cfg.get_int(m("image_size"), c.vision.image_size);
  c.vision.patch_size = cfg.get_int(m("vit_patch_size"), c.vision.patch_size);
  c.vision.width = cfg.get_int(m("vit_width"), c.vision.width);
  c.vision.depth = cfg.get_int(m("vit_depth"), c.vision.depth);
  c.vision.num_heads = cfg.get_int(m("vit_num_heads"), c.vision.num_heads);
  c.vision.mlp_ratio = cfg.get_float(m("vit_mlp_ratio"), c.vision.mlp_ratio);
  if (cfg.get_float(m("drop_path_rate"), 0.0) != 0.0)
    fail("{}: model.drop_path_rate must be 0 (the ViT is frozen; stochastic depth is not implemented)",
         cfg.source_of("model.drop_path_rate"));

  c.has_qformer = cfg.get_bool(m("has_qformer"), c.has_qformer);
  c.qformer.num_query_tokens = cfg.get_int(m("num_query_token"), c.qformer.num_query_tokens);
  c.qformer.hidden_size = cfg.get_int(m("qformer_hidden_size"), c.qformer.hidden_size);
  c.qformer.num_layers = cfg.get_int(m("qformer_num_layers"), c.qformer.num_layers);
  c.qformer.num_heads = cfg.get_int(m("qformer_num_heads"), c.qformer.num_heads);
  c.qformer.intermediate_size = cfg.get_int(m("qformer_intermediate_size"), c.qformer.intermediate_size);
  c.qformer.cross_attention_freq = cfg.get_int(m("cross_attention_freq"), c.qformer.cross_attention_freq);
  c.qformer.encoder_width = c.vision.width;
  c.proj_hidden = cfg.get_int(m("proj_hidden"), c.proj_hidden);
  if (c.proj_hidden < 0)
    fail("{}: model.proj_hidden must be 0 (one projection) or the width between the two projections, got {}",
         cfg.source_of(m("proj_hidden")), c.proj_hidden);
  c.llm_variant = cfg.get_string(m("llm_variant"));
  if (!c.llm_variant.empty() && c.llm_variant != tinygptv::kLlmVariant)
    fail("{}: model.llm_variant is '{}'; known: {} (TinyGPT-V's Phi), or leave it out", cfg.source_of(m("llm_variant")),
         c.llm_variant, tinygptv::kLlmVariant);

  c.vit_model = cfg.get_string(m("vit_model"));
  c.q_former_model = cfg.get_string(m("q_former_model"));
  c.llama_model = cfg.get_string(m("llama_model"));
  c.ckpt = cfg.get_string(m("ckpt"));
  c.vit_precision = cfg.get_string(m("vit_precision"), c.vit_precision);
  c.llm_precision = cfg.get_string(m("llm_precision"), c.llm_precision);
  for (const char* key : {"vit_precision", "llm_precision"}) {
    const auto value = cfg.get_string(m(key));
    if (!value.empty() && value != "fp32" && value != "fp16" && value != "bf16")
      fail("{}: model.{} must be fp32, fp16 or bf16, got '{}'", cfg.source_of(m(key)), key, value);
  }
  c.freeze_vit = cfg.get_bool(m("freeze_vit"), c.freeze_vit);
  c.freeze_qformer = cfg.get_bool(m("freeze_qformer"), c.freeze_qformer);
  c.freeze_ln_vision = cfg.get_bool(m("freeze_ln_vision"), c.freeze_vit);
  c.freeze_llm = cfg.get_bool(m("freeze_llm"), c.freeze_llm);
  c.low_resource = cfg.get_bool(m("low_resource"), c.low_resource);
  c.llm_weight_bits = static_cast<int>(cfg.get_int(m("llm_weight_bits"), c.llm_weight_bits));
  c.llm_weight_group_size = cfg.get_int(m("llm_weight_group_size"), c.llm_weight_group_size);
  if (c.llm_weight_bits != 16 && c.llm_weight_bits != 8 && c.llm_weight_bits != 4)
    fail("{}: model.llm_weight_bits must be 16, 8 or 4, got {}", cfg.source_of(m("llm_weight_bits")),
         c.llm_weight_bits);
  const auto group = c.llm_weight_group_size;
  if (group != 32 && group != 64 && group != 128 && !(group == 0 && c.llm_weight_bits == 8))
    fail(
        "{}: model.llm_weight_group_size must be 32, 64 or 128 (or 0 with 8 bits: one scale per output channel), "
        "got {}",
        cfg.source_of(m("llm_weight_group_size")), group);
  c.llm_head_bits = static_cast<int>(cfg.get_int(m("llm_head_bits"), c.llm_head_bits));
  if (cfg.has(m("llm_head_bits")) && c.llm_head_bits != 16 && c.llm_head_bits != 8)
    fail("{}: model.llm_head_bits must be 16 or 8, got {}", cfg.source_of(m("llm_head_bits")), c.llm_head_bits);
  c.vit_weight_bits = static_cast<int>(cfg.get_int(m("vit_weight_bits"), c.vit_weight_bits));
  if (c.vit_weight_bits != 16 && c.vit_weight_bits != 8)
    fail("{}: model.vit_weight_bits must be 16 or 8, got {}", cfg.source_of(m("vit_weight_bits")), c.vit_weight_bits);
  if (c.vit_weight_bits != 16 && !c.freeze_vit)
    fail(
        "{}: model.vit_weight_bits: {} stores the ViT's linear layers quantised, which cannot be trained; set "
        "model.freeze_vit: True ({}), or keep the ViT in 16 bits",
        cfg.source_of(m("vit_weight_bits")), c.vit_weight_bits, cfg.source_of(m("freeze_vit")));
  if (c.low_resource && c.llm_weight_bits != 16)
    fail(
        "{}: model.low_resource: True (int8, one scale per output channel) and model.llm_weight_bits: {} ({}) both "
        "choose the LLM's weights; set one of them",
        cfg.source_of(m("low_resource")), c.llm_weight_bits, cfg.source_of(m("llm_weight_bits")));
  c.max_txt_len = cfg.get_int(m("max_txt_len"), c.max_txt_len);
  c.end_sym = cfg.get_string(m("end_sym"), c.end_sym);
  c.prompt_template = cfg.get_string(m("prompt_template"));
  if (!c.prompt_template.empty() && c.prompt_template.find("{}") == std::string::npos)
    fail("{}: model.prompt_template '{}' has no '{{}}' for the prompt", cfg.source_of(m("prompt_template")),
         c.prompt_template);
  c.prompt_path = cfg.get_string(m("prompt_path"));
  c.chat_template = cfg.get_bool(m("chat_template"), c.chat_template);
  c.max_context_len = cfg.get_int(m("max_context_len"), c.max_context_len);
  read_lora_settings(cfg, c);
  return c;
}

WeightFormat MiniGPT4Config::llm_weight_format() const {
  if (low_resource) return WeightFormat::Int8;
  if (llm_weight_bits == 16) return WeightFormat::Dense;
  if (llm_weight_bits == 8 && llm_weight_group_size == 0) return WeightFormat::Int8;
  return {llm_weight_bits, llm_weight_group_size};
}

WeightFormat MiniGPT4Config::llm_head_format() const {
  const bool grouped = !low_resource && llm_weight_format().group_size > 0;
  const int bits = llm_head_bits != 0 ? llm_head_bits : grouped ? 8 : 16;
  return bits == 8 ? WeightFormat{8, 32} : WeightFormat::Dense;
}

std::string MiniGPT4Config::apply_prompt_template(const std::string& text) const {
  if (prompt_template.empty()) return text;
  std::string out = prompt_template;
  const auto slot = out.find("{}");
  if (slot == std::string::npos) fail("model.prompt_template '{}' has no '{{}}' for the prompt", prompt_template);
  return out.replace(slot, 2, text);
}

}  // namespace minigpt4
