#include "minigpt4/models/minigpt4.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/tokenizer/tokenizer.h"

namespace minigpt4 {

namespace {

torch::Tensor ids_tensor(const std::vector<int64_t>& ids, torch::Device device) {
  return torch::tensor(ids, torch::TensorOptions().dtype(torch::kLong)).to(device).unsqueeze(0);
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

  visual_encoder =
      register_module("visual_encoder", std::make_shared<EvaVit>(c.vision, vit_options, c.vit_weight_format()));
  ln_vision = register_module("ln_vision", std::make_shared<LayerNorm>(c.vision.width, 1e-5, fp32));
  int64_t projector_in = 4 * c.vision.width;  // LLaMA-2 variant: 4 patches concatenated
  if (c.has_qformer) {
    auto qformer_config = c.qformer;
    qformer_config.encoder_width = c.vision.width;
    Qformer = register_module("Qformer", std::make_shared<QFormer>(qformer_config, fp32));
    query_tokens =
        register_parameter("query_tokens", torch::empty({1, c.qformer.num_query_tokens, c.qformer.hidden_size}, fp32));
    projector_in = c.qformer.hidden_size;
  }
  // low_resource / llm_weight_bits / llm_head_bits: the decoder's projections and lm_head are
  // built quantised and filled while loading.
  auto llm = make_causal_lm(llm_config, llm_options, c.llm_weight_format(), c.llm_head_format());
  if (c.proj_hidden > 0) {  // TinyGPT-V: two projections in a row
    llama_proj = register_module("llama_proj", std::make_shared<Linear>(projector_in, c.proj_hidden, true, fp32));
    llama_proj2 =
        register_module("llama_proj2", std::make_shared<Linear>(c.proj_hidden, llm->hidden_size(), true, fp32));
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
  const auto parts = split(prompt, kImagePlaceholder);
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
  if (images.defined() && images.size(0) != B)
    fail("instruction batch has {} images but {} samples", images.size(0), B);
  const auto device = llama_proj->weight.device();
  const int64_t pad = pad_id(tokenizer);
  const auto img_embeds = images.defined() ? encode_img(images) : torch::Tensor();
  auto embed_ids = [&](const std::vector<int64_t>& ids) {
    return llama_model->embed(ids_tensor(ids, device)).squeeze(0);
  };

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
    const auto segments = split(question(0), kImagePlaceholder);
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
  const auto segments = split(prompt, kImagePlaceholder);
  if (segments.size() != images.size() + 1)
    fail("the prompt has {} {} placeholders but {} images were given", segments.size() - 1, kImagePlaceholder,
         images.size());
  const auto device = llama_proj->weight.device();
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < segments.size(); ++i) {
    parts.push_back(
        llama_model->embed(ids_tensor(tokenizer.encode(segments[i], /*add_special_tokens=*/i == 0), device)));
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

}  // namespace minigpt4
