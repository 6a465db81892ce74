#include "minigpt4/models/init.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/io/safetensors.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace minigpt4 {

namespace fs = std::filesystem;

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

StateDict parameters_under(const torch::nn::Module& module, const std::string& prefix, bool strip) {
  StateDict out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (name.rfind(prefix, 0) != 0) continue;
    out[strip ? name.substr(prefix.size()) : name] = item.value().detach().to(torch::kCPU).contiguous();
  }
  return out;
}

}  // namespace

namespace {

// std_for(name, tensor) < 0: the tensor is a norm weight or a bias (1 / 0).
template <typename StdFor>
void init_by_name(torch::nn::Module& module, uint64_t seed, StdFor std_for) {
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    auto& p = item.value();
    if (ends_with(name, "bias")) {  // bias, q_bias, v_bias
      p.zero_();
    } else if (p.dim() == 1 && ends_with(name, "weight")) {  // LayerNorm / RMSNorm
      p.fill_(1.0);
    } else {
      const double std = std_for(name, p);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ fnv1a(name));
      auto values = torch::empty(p.sizes(), torch::kFloat32);
      values.normal_(0.0, std, gen).clamp_(-2 * std, 2 * std);
      p.copy_(values);
    }
  }
}

}  // namespace

void init_fresh_weights(torch::nn::Module& module, uint64_t seed, double std) {
  init_by_name(module, seed, [std](const std::string&, const torch::Tensor&) { return std; });
}

void init_fresh_weights_fan_in(torch::nn::Module& module, uint64_t seed) {
  init_by_name(module, seed, [](const std::string& name, const torch::Tensor& p) {
    if (!ends_with(name, "weight")) return 0.5;  // cls_token, pos_embed, query_tokens
    const double fan_in = static_cast<double>(p.numel() / p.size(0));
    return 1.0 / std::sqrt(fan_in);
  });
}

nlohmann::json llama_config_json(const LlamaConfig& c) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"hidden_act", "silu"},
          {"rms_norm_eps", c.rms_norm_eps},
          {"rope_theta", c.rope_theta},
          {"max_position_embeddings", c.max_position_embeddings},
          {"initializer_range", 0.02},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"torch_dtype", "float32"}};
}

nlohmann::json phi_config_json(const PhiConfig& c) {
  return {{"architectures", {"PhiForCausalLM"}},
          {"model_type", "phi"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"partial_rotary_factor", c.partial_rotary_factor},
          {"hidden_act", "gelu_new"},
          {"layer_norm_eps", c.layer_norm_eps},
          {"rope_theta", c.rope_theta},
          {"max_position_embeddings", c.max_position_embeddings},
          {"qk_layernorm", c.qk_layernorm},
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attention_dropout", 0.0},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"torch_dtype", "float32"}};
}

ModelPartFiles save_model_parts(const MiniGPT4& model, const std::string& dir) {
  const auto* llama = model.llama_model->as<LlamaForCausalLM>();
  if (!llama) fail("save_model_parts writes LLaMA configs only; this model's LLM is {}", model.llama_model->family());
  ModelPartFiles files;
  const fs::path root(dir);
  fs::create_directories(root / "llm");
  files.vit_model = (root / "eva_vit.safetensors").string();
  io::save_safetensors(files.vit_model, parameters_under(model, "visual_encoder.", /*strip=*/true), {{"format", "pt"}});

  files.q_former_model = (root / "blip2.safetensors").string();
  StateDict blip2 = parameters_under(model, "Qformer.", false);
  for (auto& [k, v] : parameters_under(model, "ln_vision.", false)) blip2[k] = v;
  if (model.query_tokens.defined()) blip2["query_tokens"] = model.query_tokens.detach().to(torch::kCPU).contiguous();
  io::save_safetensors(files.q_former_model, blip2, {{"format", "pt"}});

  files.llama_model = (root / "llm").string();
  io::save_safetensors((root / "llm" / "model.safetensors").string(),
                       parameters_under(model, "llama_model.", /*strip=*/true), {{"format", "pt"}});
  const fs::path config_path = root / "llm" / "config.json";
  std::ofstream out(config_path);
  out << llama_config_json(llama->config).dump(2) << "\n";
  if (!out.flush()) fail("cannot write {}", config_path.string());
  return files;
}

}  // namespace minigpt4
