#pragma once
// MiniGPT-4 (Zhu et al. 2023): a frozen EVA ViT-g + BLIP-2 Q-Former turn an image into 32
// query embeddings; ONE trainable linear layer (`llama_proj`) maps them into the frozen
// LLaMA/Vicuna's embedding space, where they sit between the prompt's text embeddings.
// The LLaMA-2 variant (`has_qformer: false`) skips the Q-Former and projects every 4
// consecutive ViT patch tokens, concatenated. The LLM may be of another family (Phi for
// TinyGPT-V, llm_family.h): config.json's model_type decides. TinyGPT-V (tinygptv.h) maps
// the queries with two linear layers in a row (`proj_hidden`: llama_proj, then llama_proj2).
#include "minigpt4/common/instruction.h"
#include "minigpt4/models/eva_vit.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/qformer.h"
#include "minigpt4/models/weights.h"

namespace minigpt4 {

class Config;
class Tokenizer;

struct MiniGPT4Config {
  EvaVitConfig vision;
  QFormerConfig qformer;
  bool has_qformer = true;
  // > 0: two projections, llama_proj (queries -> proj_hidden) then llama_proj2 (proj_hidden
  // -> LLM width), no activation between (TinyGPT-V: 4096). 0: llama_proj alone.
  int64_t proj_hidden = 0;
  // "" : the LLM as its directory describes it; "tinygptv": Phi as TinyGPT-V's
  // modeling_phi.py builds it (fused query_key_value, q/k LayerNorm, post-attention RMSNorm),
  // split q/k/v files fused while loading.
  std::string llm_variant;
  // Weight locations: EVA ViT-g file, BLIP-2 checkpoint (Q-Former, query tokens,
  // ln_vision), Hugging Face LLM directory (LLaMA or Phi), and a MiniGPT-4 checkpoint loaded
  // last over everything (the released `pretrained_minigpt4.pth` holds only llama_proj).
  std::string vit_model, q_former_model, llama_model, ckpt;
  std::string vit_precision = "fp16";
  std::string llm_precision = "fp16";
  bool freeze_vit = true, freeze_qformer = true, freeze_llm = true;
  // ln_vision trains with the ViT unless set apart (VPGTrans trains it with a frozen ViT).
  bool freeze_ln_vision = true;
  bool low_resource = false;  // int8 LLM projections, one scale per output channel (quantize.h)
  // The LLM decoder layers' projections in 16 bits (llm_precision), or quantised while
  // loading to 8 or 4 bits with one scale per llm_weight_group_size inputs (32, 64, 128; 0
  // with 8 bits: per output channel, as low_resource). Inference only. docs/weights.md.
  int llm_weight_bits = 16;
  int64_t llm_weight_group_size = 32;
  WeightFormat llm_weight_format() const;
  // lm_head in 16 bits or 8 bits in groups of 32 (llama.cpp's q8_0). Unset (0): 8 where the
  // decoder is group-wise quantised (llm_weight_bits 8 or 4), which spares a 4-bit token a
  // fifth of its reads; 16 otherwise, as the original's 8-bit load keeps it. A tied lm_head
  // is the embedding table and stays 16-bit.
  int llm_head_bits = 0;
  WeightFormat llm_head_format() const;
  // The ViT's linear layers in vit_precision (16), or int8 with one scale per output channel
  // (8), quantised while loading: half the vision tower's bytes for a frozen ViT.
  int vit_weight_bits = 16;
  WeightFormat vit_weight_format() const { return vit_weight_bits == 8 ? WeightFormat::Int8 : WeightFormat::Dense; }
  int64_t max_txt_len = 32;
  std::string end_sym = "\n";
  std::string prompt_template, prompt_path;
  // MiniGPT-v2's instruction training (forward_instructions): wrap single-turn instructions
  // in prompt_template too (multi-turn ones always are), and cut the prompt with its image
  // embeddings to max_context_len positions.
  bool chat_template = false;
  int64_t max_context_len = 3800;
  // LoRA (minigpt4_lora.h): per component (llm, vit, qformer) the settings of the adapter
  // this run creates; adapter folders to load by name; the adapter active after loading
  // ("": the default rule); what trains along with a created adapter.
  std::map<std::string, lora::LoraConfig> lora;
  std::map<std::string, std::string> lora_path;
  std::string lora_active;
  std::vector<std::string> lora_trainable;

  // From the `model:` section of a run config (defaults merged, validated).
  static MiniGPT4Config from_config(const Config& config);

  // prompt_template with its "{}" replaced by text (text itself when no template is set),
  // as the original's prompt_template.format(text).
  std::string apply_prompt_template(const std::string& text) const;
};

// What each weight source contributed; `info` prints it.
struct LoadReport {
  std::vector<LoadResult> sources;
  std::vector<std::string> initialised;  // parameters created fresh (the projector before stage 1)
  std::vector<std::string> notes;        // dtype decisions and the like
};

// What the training forward fed the LLM and got back (the parity tests compare all of it).
struct TrainingForward {
  torch::Tensor inputs_embeds, attention_mask, targets, logits, loss;
};

struct MiniGPT4 : torch::nn::Module {
  MiniGPT4(const MiniGPT4Config& config, const LLMConfig& llm_config, torch::Device device);

  // [B,3,S,S] normalised images -> [B, NQ, LLM hidden] image embeddings (the LLM's dtype).
  torch::Tensor encode_img(const torch::Tensor& images) const;
  // ViT -> ln_vision: [B, 1+P, W], computed in float32 as LAVIS' LayerNorm does.
  torch::Tensor encode_vision(const torch::Tensor& images) const;
  // ln_vision output -> [B, NQ, QH] (or the 4-patch concatenation without a Q-Former).
  torch::Tensor image_queries(const torch::Tensor& vision_tokens) const;
  // llama_proj (then llama_proj2 when there are two), cast to the LLM dtype.
  torch::Tensor project(const torch::Tensor& queries) const;

  // `prompt_wrap`: [embed(p_before), img_embeds, embed(p_after)] for a prompt holding one
  // `<ImageHere>`; an empty prompt returns img_embeds unchanged.
  torch::Tensor prompt_wrap(const torch::Tensor& img_embeds, const std::string& prompt,
                            const Tokenizer& tokenizer) const;

  // The id that pads training batches. Vicuna-v0's code (and TinyGPT-V's) pads with eos, so
  // an eos in the text is masked out of the loss like padding; the code of the LLaMA-2
  // variant (`has_qformer: false`, MiniGPT-4 Sep 2023) pads with the token "$$" (its id, or
  // unk where the vocabulary has no such piece), so its end token `</s>` stays a target.
  int64_t pad_id(const Tokenizer& tokenizer) const;

  // `MiniGPT4.forward`: loss of `text + end_sym` after [bos] + wrapped image; targets -100
  // on bos, prompt, image and padding (pad_id) positions. Undefined `images` (with an
  // empty prompt) is a text-only batch: the loss of [bos] + text + end_sym.
  TrainingForward forward(const torch::Tensor& images, const std::vector<std::string>& texts, const std::string& prompt,
                          const Tokenizer& tokenizer) const;

  // `MiniGPTBase.forward` (MiniGPT-v2, TinyGPT-V stage 4) for instruction batches: per
  // sample [bos] + the first question (in prompt_template when it is a conversation or
  // chat_template is set) with the image's embeddings at its `<ImageHere>`, cut to
  // max_context_len; then answer 1 + end_sym, and for each later turn [bos] + question
  // (masked) + answer + end_sym, all cut to max_txt_len. Only answer tokens are targets
  // (single-turn answers also lose their pad-id tokens, as the original masks them); rows
  // are right-padded with pad_id's embedding. With one instruction per sample already in its
  // template this is also the LLaMA-2 variant's forward with `instruction_input`. Undefined `images`: text-only
  // instructions (no `<ImageHere>`).
  TrainingForward forward_instructions(const torch::Tensor& images, const std::vector<Instruction>& samples,
                                       const Tokenizer& tokenizer) const;

  // Embeds a prompt split at `<ImageHere>` with one image embedding [1, NQ, H] per gap;
  // only the first segment gets bos (Chat.get_context_emb).
  torch::Tensor context_embedding(const std::string& prompt, const std::vector<torch::Tensor>& images,
                                  const Tokenizer& tokenizer) const;

  // Sets requires_grad per the freeze flags (only the projector, llama_proj and llama_proj2
  // if present, trains by default). Everything
  // stays in eval mode: none of these modules has dropout active in MiniGPT-4's settings.
  void apply_freezing();

  MiniGPT4Config config;
  std::shared_ptr<EvaVit> visual_encoder;
  std::shared_ptr<LayerNorm> ln_vision;
  std::shared_ptr<QFormer> Qformer;  // null without a Q-Former
  torch::Tensor query_tokens;
  std::shared_ptr<Linear> llama_proj;
  std::shared_ptr<Linear> llama_proj2;    // null unless config.proj_hidden > 0
  std::shared_ptr<CausalLM> llama_model;  // the LLM, of any family, under MiniGPT-4's module name
};

// Builds the model the config describes on `device`, loads every weight it names and checks
// that no frozen parameter was left unloaded. Throws minigpt4::Error naming the file and key.
std::shared_ptr<MiniGPT4> load_minigpt4(const MiniGPT4Config& config, torch::Device device,
                                        LoadReport* report = nullptr);

// The dtype a configured precision runs in on `device`: fp16 is computed in fp32 on the CPU
// (CPU half-precision GEMMs are slow and lose accuracy); bf16 and fp32 run as configured.
torch::Dtype compute_dtype(const std::string& precision, torch::Device device);

}  // namespace minigpt4
