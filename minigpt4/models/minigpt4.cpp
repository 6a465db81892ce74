#include "minigpt4/models/minigpt4.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/tinygptv.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include "minigpt4/common/log.h"

#include <filesystem>
#include <regex>

namespace minigpt4 {

namespace {

torch::Tensor ids_tensor(const std::vector<int64_t>& ids, torch::Device device) {
  return torch::tensor(ids, torch::TensorOptions().dtype(torch::kLong)).to(device).unsqueeze(0);
}

std::vector<std::string> split_on(const std::string& text, const std::string& sep) {
  std::vector<std::string> parts;
  size_t start = 0, pos;
  while ((pos = text.find(sep, start)) != std::string::npos) {
    parts.push_back(text.substr(start, pos - start));
    start = pos + sep.size();
  }
  parts.push_back(text.substr(start));
  return parts;
}

}  // namespace

torch::Dtype compute_dtype(const std::string& precision, torch::Device device) {
  const auto dtype = parse_dtype(precision);
  if (dtype == torch::kFloat16 && device.is_cpu()) return torch::kFloat32;
  return dtype;
}

MiniGPT4::MiniGPT4(const MiniGPT4Config& c, const LLMConfig& llm_config, torch::Device device) : config(c) {
  const auto vit_options = torch::TensorOptions().dtype(compute_dtype(c.vit_precision, device)).device(device);
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const auto llm_options = torch::TensorOptions().dtype(compute_dtype(c.llm_precision, device)).device(device);

  visual_encoder = register_module("visual_encoder", std::make_shared<EvaVit>(c.vision, vit_options));
  ln_vision = register_module("ln_vision", std::make_shared<LayerNorm>(c.vision.width, 1e-5, fp32));
  int64_t projector_in = 4 * c.vision.width;  // LLaMA-2 variant: 4 patches concatenated
  if (c.has_qformer) {
    auto qformer_config = c.qformer;
    qformer_config.encoder_width = c.vision.width;
    Qformer = register_module("Qformer", std::make_shared<QFormer>(qformer_config, fp32));
    query_tokens = register_parameter("query_tokens", torch::empty({1, c.qformer.num_query_tokens, c.qformer.hidden_size}, fp32));
    projector_in = c.qformer.hidden_size;
  }
  // low_resource: the decoder's projections are built int8 and quantised while loading.
  const auto llm_format = c.low_resource ? WeightFormat::Int8 : WeightFormat::Dense;
  auto llm = make_causal_lm(llm_config, llm_options, llm_format);
  if (c.proj_hidden > 0) {  // TinyGPT-V: two projections in a row
    llama_proj = register_module("llama_proj", std::make_shared<Linear>(projector_in, c.proj_hidden, true, fp32));
    llama_proj2 = register_module("llama_proj2", std::make_shared<Linear>(c.proj_hidden, llm->hidden_size(), true, fp32));
  } else {
    llama_proj = register_module("llama_proj", std::make_shared<Linear>(projector_in, llm->hidden_size(), true, fp32));
  }
  llama_model = register_module("llama_model", std::move(llm));
}

torch::Tensor MiniGPT4::encode_vision(const torch::Tensor& images) const {
  const auto vit_out = visual_encoder->forward(images);
  return ln_vision->forward(vit_out.to(torch::kFloat32));
}

torch::Tensor MiniGPT4::image_queries(const torch::Tensor& vision_tokens) const {
  if (Qformer) {
    const auto queries = query_tokens.expand({vision_tokens.size(0), -1, -1});
    return Qformer->forward(queries, vision_tokens);
  }
  // No Q-Former: drop cls, then every 4 consecutive patch tokens become one token.
  const auto patches = vision_tokens.slice(1, 1);
  const int64_t B = patches.size(0), P = patches.size(1), W = patches.size(2);
  if (P % 4 != 0) fail("has_qformer: false needs a patch count divisible by 4, got {}", P);
  return patches.reshape({B, P / 4, 4 * W});
}

torch::Tensor MiniGPT4::project(const torch::Tensor& queries) const {
  auto projected = llama_proj->forward(queries.to(llama_proj->weight.scalar_type()));
  if (llama_proj2) projected = llama_proj2->forward(projected);  // no activation between (TinyGPT-V)
  return projected.to(llama_model->dtype());
}

torch::Tensor MiniGPT4::encode_img(const torch::Tensor& images) const {
  const auto device = llama_proj->weight.device();
  return project(image_queries(encode_vision(images.to(device))));
}

torch::Tensor MiniGPT4::prompt_wrap(const torch::Tensor& img_embeds, const std::string& prompt,
                                    const Tokenizer& tokenizer) const {
  if (prompt.empty()) return img_embeds;
  const auto parts = split_on(prompt, kImagePlaceholder);
  if (parts.size() != 2) fail("training prompt must contain exactly one {}: '{}'", kImagePlaceholder, prompt);
  const int64_t B = img_embeds.size(0);
  const auto device = img_embeds.device();
  const auto before = llama_model->embed(ids_tensor(tokenizer.encode(parts[0], false), device)).expand({B, -1, -1});
  const auto after = llama_model->embed(ids_tensor(tokenizer.encode(parts[1], false), device)).expand({B, -1, -1});
  return torch::cat({before, img_embeds.to(before.scalar_type()), after}, 1);
}

int64_t MiniGPT4::pad_id(const Tokenizer& tokenizer) const {
  // The LLaMA-2 variant exists only in the later code (Sep 2023), which sets pad_token =
  // "$$": convert_tokens_to_ids gives the piece's id, or unk where the vocabulary lacks it.
  if (!config.has_qformer) return tokenizer.piece_to_id("$$");
  return tokenizer.pad_id();
}

TrainingForward MiniGPT4::forward(const torch::Tensor& images, const std::vector<std::string>& texts,
                                  const std::string& prompt, const Tokenizer& tokenizer) const {
  const int64_t B = static_cast<int64_t>(texts.size());
  if (images.defined() && images.size(0) != B) fail("training batch has {} images but {} texts", images.size(0), B);
  if (!images.defined() && !prompt.empty()) fail("a text-only batch cannot take an image prompt ('{}')", prompt);
  const auto device = llama_proj->weight.device();
  // Text-only batches (a language warm-up) have no image part: [bos] + text.
  const auto img_embeds = images.defined()
                              ? prompt_wrap(encode_img(images), prompt, tokenizer)
                              : torch::empty({B, 0, llama_model->hidden_size()},
                                             torch::TensorOptions().dtype(llama_model->dtype()).device(device));
  const int64_t T_img = img_embeds.size(1);

  std::vector<std::string> with_end;
  for (const auto& t : texts) with_end.push_back(t + config.end_sym);
  const int64_t pad = pad_id(tokenizer);
  const auto batch = tokenizer.encode_batch(with_end, /*add_special_tokens=*/false, config.max_txt_len, pad);
  const int64_t T_txt = static_cast<int64_t>(batch.ids.front().size());
  // Filled through plain vectors: element-wise tensor indexing costs an op per element.
  std::vector<int64_t> ids_flat, mask_flat;
  ids_flat.reserve(B * T_txt), mask_flat.reserve(B * T_txt);
  for (int64_t b = 0; b < B; ++b) {
    ids_flat.insert(ids_flat.end(), batch.ids[b].begin(), batch.ids[b].end());
    mask_flat.insert(mask_flat.end(), batch.attention_mask[b].begin(), batch.attention_mask[b].end());
  }
  const auto text_ids = torch::tensor(ids_flat, torch::kLong).view({B, T_txt}).to(device);
  const auto text_mask = torch::tensor(mask_flat, torch::kLong).view({B, T_txt}).to(device);

  // bos and the (wrapped) image are context: never predicted. Neither is any pad-id token
  // (with pad = eos, the end token too: see pad_id).
  const auto ignore = torch::full({B, 1 + T_img}, -100, torch::TensorOptions().dtype(torch::kLong).device(device));
  const auto text_targets = text_ids.masked_fill(text_ids == pad, -100);
  const auto bos = torch::full({B, 1}, tokenizer.bos_id(), torch::TensorOptions().dtype(torch::kLong).device(device));

  TrainingForward out;
  out.targets = torch::cat({ignore, text_targets}, 1);
  out.inputs_embeds = torch::cat({llama_model->embed(bos), img_embeds, llama_model->embed(text_ids)}, 1);
  out.attention_mask = torch::cat({torch::ones({B, 1 + T_img}, text_mask.options()), text_mask}, 1);
  CausalLMOptions options;
  options.attention_mask = out.attention_mask;
  out.logits = llama_model->forward(out.inputs_embeds, options).logits;
  out.loss = causal_lm_loss(out.logits, out.targets);
  return out;
}

TrainingForward MiniGPT4::forward_instructions(const torch::Tensor& images, const std::vector<Instruction>& samples,
                                               const Tokenizer& tokenizer) const {
  const int64_t B = static_cast<int64_t>(samples.size());
  if (B == 0) fail("an instruction batch needs at least one sample");
  if (images.defined() && images.size(0) != B) fail("instruction batch has {} images but {} samples", images.size(0), B);
  const auto device = llama_proj->weight.device();
  const int64_t pad = pad_id(tokenizer);
  const auto img_embeds = images.defined() ? encode_img(images) : torch::Tensor();
  auto embed_ids = [&](const std::vector<int64_t>& ids) { return llama_model->embed(ids_tensor(ids, device)).squeeze(0); };

  // Per row: the condition's embeddings (prompt + image), then the regressed tokens and
  // their targets, as MiniGPTBase.prompt_wrap / tokenize_conversation build them.
  std::vector<torch::Tensor> conds;
  std::vector<std::vector<int64_t>> regress_ids(B), regress_targets(B);
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const Instruction& s = samples[b];
    if (s.questions.empty() || s.questions.size() != s.answers.size())
      fail("instruction sample {} has {} questions and {} answers; each turn needs both", b, s.questions.size(),
           s.answers.size());
    const bool wrapped = s.conversation || config.chat_template;
    auto question = [&](size_t turn) {
      return wrapped ? config.apply_prompt_template(s.questions[turn]) : s.questions[turn];
    };
    const auto segments = split_on(question(0), kImagePlaceholder);
    const size_t slots = images.defined() ? 1 : 0;
    if (segments.size() != slots + 1)
      fail("instruction sample {} has {} {} in its first question, its batch {} image per sample: '{}'", b,
           segments.size() - 1, kImagePlaceholder, slots, s.questions[0]);
    std::vector<torch::Tensor> parts;
    for (size_t k = 0; k < segments.size(); ++k) {
      parts.push_back(embed_ids(tokenizer.encode(segments[k], false)));
      if (k < slots) parts.push_back(img_embeds[b].to(parts.back().scalar_type()));
    }
    auto cond = torch::cat(parts, 0);
    if (images.defined() && cond.size(0) > config.max_context_len) cond = cond.slice(0, 0, config.max_context_len);
    conds.push_back(cond);

    auto& ids = regress_ids[b];
    auto& targets = regress_targets[b];
    for (size_t turn = 0; turn < s.answers.size(); ++turn) {
      if (turn > 0) {  // the later questions: bos + question, context only
        auto q = tokenizer.encode(question(turn), false);
        q.insert(q.begin(), tokenizer.bos_id());
        ids.insert(ids.end(), q.begin(), q.end());
        targets.insert(targets.end(), q.size(), -100);
      }
      const auto a = tokenizer.encode(s.answers[turn] + config.end_sym, false);
      for (int64_t id : a) {
        ids.push_back(id);
        targets.push_back(!s.conversation && id == pad ? -100 : id);
      }
    }
    if (config.max_txt_len > 0 && static_cast<int64_t>(ids.size()) > config.max_txt_len) {
      ids.resize(config.max_txt_len);
      targets.resize(config.max_txt_len);
    }
    longest = std::max<int64_t>(longest, 1 + cond.size(0) + static_cast<int64_t>(ids.size()));
  }

  // [bos, condition, regressed tokens, padding]: the original's concat_emb_input_output
  // puts each row's regressed tokens right after its own condition.
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong);
  const auto bos = embed_ids({tokenizer.bos_id()});
  const auto pad_embed = embed_ids({pad});
  std::vector<torch::Tensor> rows;
  std::vector<int64_t> targets_flat(B * longest, -100), mask_flat(B * longest, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t T_cond = conds[b].size(0), T_reg = static_cast<int64_t>(regress_ids[b].size());
    const int64_t used = 1 + T_cond + T_reg;
    std::vector<torch::Tensor> parts = {bos, conds[b].to(bos.scalar_type())};
    if (T_reg > 0) parts.push_back(embed_ids(regress_ids[b]));
    if (used < longest) parts.push_back(pad_embed.expand({longest - used, -1}));
    rows.push_back(torch::cat(parts, 0));
    std::fill(mask_flat.begin() + b * longest, mask_flat.begin() + b * longest + used, 1);
    std::copy(regress_targets[b].begin(), regress_targets[b].end(), targets_flat.begin() + b * longest + 1 + T_cond);
  }
  TrainingForward out;
  out.inputs_embeds = torch::stack(rows);
  out.targets = torch::tensor(targets_flat, long_opts).view({B, longest}).to(device);
  out.attention_mask = torch::tensor(mask_flat, long_opts).view({B, longest}).to(device);
  CausalLMOptions options;
  options.attention_mask = out.attention_mask;
  out.logits = llama_model->forward(out.inputs_embeds, options).logits;
  out.loss = causal_lm_loss(out.logits, out.targets);
  return out;
}

torch::Tensor MiniGPT4::context_embedding(const std::string& prompt, const std::vector<torch::Tensor>& images,
                                          const Tokenizer& tokenizer) const {
  const auto segments = split_on(prompt, kImagePlaceholder);
  if (segments.size() != images.size() + 1)
    fail("the prompt has {} {} placeholders but {} images were given", segments.size() - 1, kImagePlaceholder, images.size());
  const auto device = llama_proj->weight.device();
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < segments.size(); ++i) {
    parts.push_back(llama_model->embed(ids_tensor(tokenizer.encode(segments[i], /*add_special_tokens=*/i == 0), device)));
    if (i < images.size()) parts.push_back(images[i].to(parts.back().scalar_type()));
  }
  return torch::cat(parts, 1);
}

void MiniGPT4::apply_freezing() {
  for (auto& p : parameters()) p.set_requires_grad(false);
  eval();  // no module here has active dropout (drop_path_rate 0; the Q-Former runs in eval mode in the original)
  for (auto& p : llama_proj->parameters()) p.set_requires_grad(true);
  if (llama_proj2)
    for (auto& p : llama_proj2->parameters()) p.set_requires_grad(true);
  if (!config.freeze_vit)
    for (auto& p : visual_encoder->parameters()) p.set_requires_grad(true);
  if (!config.freeze_ln_vision)
    for (auto& p : ln_vision->parameters()) p.set_requires_grad(true);
  if (Qformer && !config.freeze_qformer) {
    for (auto& p : Qformer->parameters()) p.set_requires_grad(true);
    query_tokens.set_requires_grad(true);
  }
  if (!config.freeze_llm)
    for (auto& p : llama_model->parameters()) p.set_requires_grad(true);
  apply_lora_freezing(*this);
}

// ---------------------------------------------------------------------------------------
// Loading: the real layout is four sources, each named by a config key.

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// BLIP-2 checkpoints carry the Q-Former's text branch and BLIP-2's own heads; MiniGPT-4
// deletes those modules and loads with strict=False.
bool blip2_unused(const std::string& key) {
  static const std::regex pattern(
      R"(^(Qformer\.cls\..*|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\..*|)"
      R"(Qformer\.bert\.embeddings\.position_ids|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*|)"
      R"((vision_proj|text_proj|itm_head)\..*|temp)$)");
  return std::regex_match(key, pattern);
}

bool rotary_buffer(const std::string& key) {
  static const std::string suffix = "rotary_emb.inv_freq";
  return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Where users who ran the original code have the LAVIS downloads.
std::string resolve_weight_path(const std::string& value, const std::string& key) {
  if (value.rfind("http://", 0) == 0 || value.rfind("https://", 0) == 0) {
    const auto name = value.substr(value.find_last_of('/') + 1);
    std::vector<std::filesystem::path> candidates;
    if (const char* torch_home = std::getenv("TORCH_HOME")) candidates.emplace_back(std::filesystem::path(torch_home) / "hub/checkpoints" / name);
    if (const char* home = std::getenv("HOME")) candidates.emplace_back(std::filesystem::path(home) / ".cache/torch/hub/checkpoints" / name);
    for (const auto& c : candidates)
      if (std::filesystem::exists(c)) return c.string();
    fail("model.{} is the URL {}; nothing is downloaded at run time. Download it yourself and set model.{} to its "
         "path (looked for a LAVIS cache copy at ~/.cache/torch/hub/checkpoints/{})",
         key, value, key, name);
  }
  if (value == "eva_clip_g")
    fail("model.vit_model is 'eva_clip_g' (the original's name, which LAVIS downloads); set it to the path of "
         "eva_vit_g.pth");
  if (!std::filesystem::exists(value)) fail("model.{}: '{}' does not exist", key, value);
  return value;
}

// model.llm_variant: tinygptv. TinyGPT-V's modeling_phi.py always has the fused
// query_key_value, the q/k LayerNorm and the post-attention RMSNorm; today's Phi-2 files
// have split q/k/v (fused here, an exact rearrangement) and none of the norms (they start
// at their defaults, as in TinyGPT-V's stage 1).
void use_tinygptv_phi(LLMConfig& llm, StateDict& weights, const std::string& dir, LoadReport& report) {
  auto* phi = std::get_if<PhiConfig>(&llm);
  if (!phi)
    fail("model.llm_variant: {} builds TinyGPT-V's Phi, but {} is not a Phi model (its config.json's model_type is not "
         "phi)",
         tinygptv::kLlmVariant, dir);
  if (phi->num_key_value_heads != phi->num_attention_heads)
    fail("model.llm_variant: {}: {} has grouped key/value heads ({} for {} query heads), which a fused "
         "query_key_value cannot hold",
         tinygptv::kLlmVariant, dir, phi->num_key_value_heads, phi->num_attention_heads);
  static const std::regex split_query(R"(.*\bself_attn\.q_proj\.weight$)");
  const bool split = std::any_of(weights.begin(), weights.end(),
                                 [](const auto& item) { return std::regex_match(item.first, split_query); });
  if (split) {
    weights = fuse_phi_qkv(weights, phi->num_attention_heads, dir);
    report.notes.push_back("llm_variant tinygptv: the split q_proj/k_proj/v_proj of " + dir +
                           " were fused into query_key_value (TinyGPT-V's layout)");
  }
  phi->fused_qkv = phi->qk_layernorm = phi->post_layernorm = phi->norms_fp32 = true;
  report.notes.push_back("llm_variant tinygptv: Phi as TinyGPT-V's modeling_phi.py builds it (fused query_key_value, "
                         "q/k LayerNorm, post-attention RMSNorm, norm weights in float32)");
}

bool names_some_parameter(const torch::nn::Module& module, const std::string& entry) {
  for (const auto& item : module.named_parameters())
    if (("." + item.key() + ".").find("." + entry + ".") != std::string::npos) return true;
  return false;
}

// A TinyGPT-V checkpoint (tinygptv.h) holds the LLM's LoRA under PEFT's adapter name
// "default". Without model.lora.llm the adapter is created as TinyGPT-V creates it (its
// class defaults: every stage has it), so the checkpoint has somewhere to go.
void prepare_for_tinygptv_checkpoint(MiniGPT4& model, const StateDict& state, const std::string& path,
                                     LoadReport& report) {
  const int64_t rank = tinygptv::lora_rank(state, kTrainedAdapter, path);
  if (rank == 0) return;
  auto& c = model.config;
  if (c.lora.count("llm")) {
    if (c.lora.at("llm").r != rank)
      fail("{}: its LoRA adapters have rank {} but model.lora.llm.r is {} (TinyGPT-V uses 64)", path, rank,
           c.lora.at("llm").r);
    return;
  }
  auto settings = tinygptv::lora_config(rank);
  settings.validate("TinyGPT-V's LoRA");
  c.lora["llm"] = settings;
  if (c.lora_trainable.empty())
    for (const auto& entry : tinygptv::trainable())
      if (names_some_parameter(model, entry)) c.lora_trainable.push_back(entry);
  report.notes.push_back(fmt::format(
      "{} holds TinyGPT-V's LoRA (rank {}) and model.lora.llm is not set: the adapter '{}' is created with TinyGPT-V's "
      "settings (alpha 16, dropout 0.05, on query_key_value and dense)",
      path, rank, kTrainedAdapter));
}

// Why keys of a TinyGPT-V checkpoint found no parameter: the switches a TinyGPT-V model needs.
std::string tinygptv_hints(const std::vector<std::string>& unexpected, const MiniGPT4& model) {
  auto any = [&](auto pred) { return std::any_of(unexpected.begin(), unexpected.end(), pred); };
  std::vector<std::string> hints;
  if (any([](const std::string& k) {
        return k.find("_layernorm.") != std::string::npos && k.find("input_layernorm.") == std::string::npos &&
               k.find("final_layernorm.") == std::string::npos;
      }) ||
      any([](const std::string& k) { return k.find(".query_key_value.") != std::string::npos; })) {
    if (model.config.llm_variant != tinygptv::kLlmVariant)
      hints.push_back(fmt::format("set model.llm_variant: {} (TinyGPT-V's Phi: fused query_key_value, q/k LayerNorm, "
                                  "post-attention RMSNorm)",
                                  tinygptv::kLlmVariant));
  }
  if (!model.llama_proj2 && any([](const std::string& k) { return starts_with(k, "llama_proj2."); }))
    hints.push_back(fmt::format("set model.proj_hidden: {} (TinyGPT-V's second projection, llama_proj2)",
                                tinygptv::kProjHidden));
  if (any([](const std::string& k) { return lora::is_adapter_parameter(k); }))
    hints.push_back("LoRA weights need the adapter 'default' on the layers they name: model.lora.llm with "
                    "target_modules [query_key_value, dense] as TinyGPT-V, or no model.lora.llm (then it is created "
                    "from the checkpoint)");
  std::string out;
  for (const auto& h : hints) out += "; " + h;
  return out;
}

}  // namespace

std::shared_ptr<MiniGPT4> load_minigpt4(const MiniGPT4Config& config, torch::Device device, LoadReport* report_out) {
  LoadReport report;
  if (config.llama_model.empty()) fail("model.llama_model is not set: it must name a Hugging Face LLM directory");
  const auto llama_dir = resolve_weight_path(config.llama_model, "llama_model");
  const auto llama_json = std::filesystem::path(llama_dir) / "config.json";
  // Read before the model is built: the LLM's weight names settle its layout (Phi's fused or
  // split q/k/v). Safetensors are memory-mapped, so this costs no copy.
  StateDict llm_weights = io::load_state_dict(llama_dir);
  auto llm_config = llm_config_from_hf(io::read_json_file(llama_json.string()), llama_json.string(), llm_weights);
  if (config.llm_variant == tinygptv::kLlmVariant) use_tinygptv_phi(llm_config, llm_weights, llama_dir, report);
  if (config.low_resource && !config.freeze_llm)
    fail("model.low_resource: True stores the LLM's linear layers in int8, which cannot be trained; set "
         "model.freeze_llm: True or model.low_resource: False");

  auto model = std::make_shared<MiniGPT4>(config, llm_config, device);
  if (device.is_cpu() && parse_dtype(config.vit_precision) == torch::kFloat16)
    report.notes.push_back("vit_precision fp16: weights are upcast to fp32 on the CPU (no fast fp16 GEMM there)");
  if (device.is_cpu() && parse_dtype(config.llm_precision) == torch::kFloat16)
    report.notes.push_back("llm_precision fp16: weights are upcast to fp32 on the CPU");
  if (config.low_resource) {
    const auto dtype = dtype_name(model->llama_model->dtype());
    report.notes.push_back("low_resource: the LLM decoder layers' linear weights are int8 with one scale per "
                           "output channel, quantised while loading; embeddings, norms and lm_head stay " + dtype +
                           ", activations are " + dtype);
  }

  std::set<std::string> filled;
  auto load_state = [&](const std::string& path, const StateDict& state, LoadSpec spec) {
    spec.source = path;
    auto result = load_into(*model, state, spec, filled);
    if (!result.unexpected.empty())
      log::warn("{}: {} keys the model does not use: {}", path, result.unexpected.size(), summarize_names(result.unexpected));
    report.sources.push_back(std::move(result));
  };
  auto load = [&](const std::string& key, const std::string& value, const LoadSpec& spec) {
    if (value.empty()) return;
    const auto path = resolve_weight_path(value, key);
    load_state(path, io::load_state_dict(path), spec);
  };

  LoadSpec vit;
  vit.add_prefix = "visual_encoder.";
  const int64_t depth = config.vision.depth, grid = config.vision.grid();
  vit.is_ignorable = [depth](const std::string& key) {
    static const std::regex block(R"(^visual_encoder\.blocks\.(\d+)\..*)");
    std::smatch m;
    return std::regex_match(key, m, block) && std::stoll(m[1]) >= depth;  // EVA-CLIP's 40th block
  };
  vit.reshape = [grid](const std::string& name, const torch::Tensor& value, const torch::Tensor& target) {
    if (name != "visual_encoder.pos_embed" || value.dim() != 3 || value.size(2) != target.size(2)) return torch::Tensor();
    return interpolate_pos_embed(value, grid);
  };
  load("vit_model", config.vit_model, vit);

  LoadSpec qformer;
  qformer.is_ignorable = blip2_unused;
  if (config.has_qformer) {
    load("q_former_model", config.q_former_model, qformer);
  } else if (!config.q_former_model.empty() && config.q_former_model.find("://") == std::string::npos) {
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
      report.notes.push_back("q_former_model " + path +
                             " is a BLIP-2 checkpoint and is not read: the LLaMA-2 variant (has_qformer: False) "
                             "takes ln_vision from no BLIP-2 file, as the original");
    } else {
      qformer.is_ignorable = [](const std::string& key) { return !starts_with(key, "ln_vision."); };
      load_state(path, state, qformer);
    }
  }

  LoadSpec llm;
  llm.add_prefix = "llama_model.";
  llm.is_ignorable = rotary_buffer;
  load_state(llama_dir, llm_weights, llm);
  llm_weights.clear();

  // model.ckpt: read now, loaded once the adapters it may hold weights for exist. A
  // TinyGPT-V checkpoint (PEFT-wrapped LLM names) maps onto our names, may imply the
  // adapter, and every key of it must find its parameter.
  std::string ckpt_path;
  StateDict ckpt_state;
  if (!config.ckpt.empty()) {
    ckpt_path = resolve_weight_path(config.ckpt, "ckpt");
    ckpt_state = io::load_state_dict(ckpt_path);
  }
  const bool tinygptv_ckpt = tinygptv::is_peft_wrapped(ckpt_state);
  if (tinygptv_ckpt) {
    ckpt_state = tinygptv::unwrap_peft_names(ckpt_state, ckpt_path);
    prepare_for_tinygptv_checkpoint(*model, ckpt_state, ckpt_path, report);
    report.notes.push_back(ckpt_path + " is a TinyGPT-V checkpoint: its llama_model.base_model.model.* keys (PEFT's "
                           "wrapper) are read as llama_model.*");
  }
  attach_configured_adapters(*model);  // before the checkpoint, which may hold their trained weights
  LoadSpec ckpt;
  ckpt.source = ckpt_path;
  ckpt.is_ignorable = [](const std::string& key) { return rotary_buffer(key) || blip2_unused(key); };
  ckpt.reshape = vit.reshape;
  if (tinygptv_ckpt) {  // every key must fit: unknown ones first (they explain most shape errors too)
    const auto params = model->named_parameters(), buffers = model->named_buffers();
    std::vector<std::string> unknown;
    for (const auto& item : ckpt_state)
      if (!params.contains(item.first) && !buffers.contains(item.first) && !ckpt.is_ignorable(item.first))
        unknown.push_back(item.first);
    if (!unknown.empty())
      fail("{}: {} keys of this TinyGPT-V checkpoint have no place in the model (names shown without PEFT's "
           "base_model.model.): {}{}",
           ckpt_path, unknown.size(), summarize_names(unknown), tinygptv_hints(unknown, *model));
  }
  if (!ckpt_path.empty()) {
    LoadResult result;
    try {
      result = load_into(*model, ckpt_state, ckpt, filled);
    } catch (const Error& e) {
      if (!tinygptv_ckpt) throw;
      throw Error(std::string(e.what()) + " (a TinyGPT-V checkpoint: names shown without PEFT's base_model.model.)");
    }
    if (!result.unexpected.empty())
      log::warn("{}: {} keys the model does not use: {}", ckpt_path, result.unexpected.size(),
                summarize_names(result.unexpected));
    report.sources.push_back(std::move(result));
  }
  ckpt_state.clear();
  if (config.low_resource) release_free_heap();  // the quantiser's float32 blocks (memory.h)

  // The projector is new in MiniGPT-4 (stage 1 starts it from scratch); without a Q-Former
  // nothing provides ln_vision either, and the original leaves it at LayerNorm's default.
  // Everything else must have come from a file.
  auto missing = unfilled_parameters(*model, filled);
  auto fresh = [&](const std::string& prefix, auto reset) {
    if (std::none_of(missing.begin(), missing.end(), [&](const auto& n) { return starts_with(n, prefix); })) return;
    reset();
    for (const auto& n : missing)
      if (starts_with(n, prefix)) report.initialised.push_back(n);
    missing.erase(std::remove_if(missing.begin(), missing.end(), [&](const auto& n) { return starts_with(n, prefix); }),
                  missing.end());
  };
  fresh("llama_proj.", [&] { model->llama_proj->reset_parameters(); });
  if (model->llama_proj2) fresh("llama_proj2.", [&] { model->llama_proj2->reset_parameters(); });
  // Norms a relative adds to its LLM (TinyGPT-V's) keep the defaults they were built with;
  // adapters created by model.lora start as LoRA does (B zero) unless model.ckpt held them.
  const std::string llm_prefix = "llama_model.";
  for (auto it = missing.begin(); it != missing.end();) {
    if (lora::is_adapter_parameter(*it) ||
        (starts_with(*it, llm_prefix) && model->llama_model->starts_at_default(it->substr(llm_prefix.size())))) {
      report.initialised.push_back(*it);
      it = missing.erase(it);
    } else {
      ++it;
    }
  }
  if (!config.has_qformer) fresh("ln_vision.", [&] { model->ln_vision->reset_parameters(); });
  if (!missing.empty()) {
    fail("{} model weights were not found in any configured file (vit_model='{}', q_former_model='{}', "
         "llama_model='{}', ckpt='{}'): {}",
         missing.size(), config.vit_model, config.q_former_model, config.llama_model, config.ckpt,
         summarize_names(missing));
  }
  load_configured_adapters(*model);
  model->apply_freezing();
  if (report_out) *report_out = std::move(report);
  return model;
}

}  // namespace minigpt4
