#pragma once
// Talking with a trained model about images: MiniGPT-4's `Chat` class (upload_img, ask,
// answer) over a model loaded once from an eval config, as demo.py builds it. A ChatModel
// is shared read-only; each conversation is a ChatSession. Unlike the original, which
// recomputes the whole conversation every round, a session keeps the LLM's KV cache and
// recomputes only the positions that changed since the last round (llama.cpp's prompt
// cache); `AnswerOptions::reuse_cache = false` gives the original's behaviour.
#include "minigpt4/chat/conversation.h"
#include "minigpt4/chat/explain.h"
#include "minigpt4/generate/generate.h"
#include "minigpt4/models/llama.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4 {

class Config;
struct MiniGPT4;
class Tokenizer;
class ImageEvalProcessor;

// The knobs of one answer, with Chat.answer's defaults (do_sample with top_p 0.9 and HF's
// top_k 50; the demo's beam width 1-10 and temperature 0.1-2.0).
struct AnswerOptions {
  int64_t max_new_tokens = 300;
  int num_beams = 1;
  int64_t min_length = 1;
  double temperature = 1.0;  // <= 0: greedy (no sampling), as llama.cpp's --temp 0
  double top_p = 0.9;
  int64_t top_k = 50;
  std::optional<double> repetition_penalty;  // unset: the model's (ChatModel::repetition_penalty)
  double length_penalty = 1.0;
  int64_t max_length = 2000;  // the prompt is cut from the left to fit max_length - max_new_tokens
  uint64_t seed = 0;
  bool reuse_cache = true;  // keep the KV cache of earlier rounds (greedy and sampling; beams recompute)
};

struct ChatReply {
  std::string text;             // the answer as Chat.answer returns it
  std::vector<int64_t> tokens;  // generated ids (stop/eos included)
  std::string finish_reason;    // "stop" (stop sequence or eos), "length", "cancelled"
  int64_t prompt_tokens = 0;    // positions of the prompt (text tokens + image embeddings)
  int64_t reused_tokens = 0;    // prompt positions taken from the KV cache
  double prefill_seconds = 0, decode_seconds = 0;
};

// A model ready to chat: MiniGPT-4, its tokenizer, the eval image processor, the template.
struct ChatModel {
  // From an eval config (model: + datasets.*.vis_processor.train.image_size, as demo.py
  // reads it). The template: `chat.template` if given (v0 / vicuna0 / llama2), otherwise by
  // model_type: pretrain_llama2 -> llama2, quickstart -> v0, any other -> vicuna0.
  static std::shared_ptr<ChatModel> load(const Config& eval_config, c10::Device device);

  std::shared_ptr<MiniGPT4> model;
  std::shared_ptr<Tokenizer> tokenizer;
  std::shared_ptr<ImageEvalProcessor> processor;
  std::string template_name;  // a name conversation_template() accepts
  // The penalty of answers that do not set one: model.repetition_penalty, else 1.0.
  double repetition_penalty = 1.0;
  // model.stop_token_ids: ids that end an answer on their own, besides the template's stops.
  std::vector<int64_t> stop_token_ids;
  std::string name;  // model id shown by the API (the eval config's file stem)
  c10::Device device = c10::kCPU;

  Conversation new_conversation() const { return conversation_template(template_name); }
  // The stop sequences of the template: '###' (as MiniGPT-4's stop ids [835], [2277, 29937])
  // for Vicuna; eos alone for LLaMA-2; then each of stop_token_ids.
  std::vector<std::vector<int64_t>> stop_sequences() const;
  // [1, NQ, H] image embeddings of an image file / encoded image bytes; throws
  // minigpt4::Error naming the image when it cannot be decoded. `vision_tokens`, when
  // given, receives the ViT's output the embeddings were made from ([1, 1 + P, W] after
  // ln_vision), which ChatSession::explain differentiates against.
  at::Tensor encode_image_file(const std::string& path, at::Tensor* vision_tokens = nullptr) const;
  at::Tensor encode_image_bytes(const std::string& bytes, const std::string& name_for_errors,
                                at::Tensor* vision_tokens = nullptr) const;
  // The same from uint8 [H, W, 3] RGB already decoded.
  at::Tensor encode_image_rgb(const at::Tensor& rgb_uint8_hwc, at::Tensor* vision_tokens = nullptr) const;

  // LoRA adapters (docs/lora.md; ConLoRA's task adapters): "original" (none) first, then
  // every adapter the model holds (model.lora_path), sorted. Just {"original"} without any.
  std::vector<std::string> adapter_choices() const;
  // The adapter in use ("original": none).
  std::string active_adapter() const;
  // Switches to `name` unmerged (cheap: a flag per layer); an unknown name throws
  // minigpt4::Error listing the choices. Image embeddings and KV caches computed under
  // another adapter are stale afterwards. Not thread-safe: call it where the model's
  // forwards run (the server's model thread).
  void use_adapter(const std::string& name) const;
};

// One conversation. Not thread-safe: one answer at a time per session (the server queues).
class ChatSession {
 public:
  explicit ChatSession(std::shared_ptr<const ChatModel> model);

  // Chat.upload_img: the image (already encoded, [1, NQ, H]) enters the conversation as a
  // human turn holding `<Img><ImageHere></Img>`. May come at the start or mid-chat.
  // `vision_tokens` (from encode_image_*) makes answers about it explainable.
  void upload_image(const at::Tensor& image_embeds, const at::Tensor& vision_tokens = {});
  // Chat.ask.
  void ask(const std::string& text);
  // Chat.answer: generates the assistant turn and records it in the conversation. on_text
  // gets the answer's text piece by piece as it is generated (the pieces add up to
  // ChatReply::text; text that may still turn out to be the stop string, or an incomplete
  // UTF-8 character, is held back): with greedy decoding or sampling it is called once per
  // token, with "" while nothing new shows, so that returning false cancels promptly
  // (finish_reason "cancelled", the partial answer is recorded).
  ChatReply answer(const AnswerOptions& options, const std::function<bool(const std::string&)>& on_text = {});
  // What the last answer looked at in the latest image wholly in its prompt (explain.h):
  // one forward of the prompt and answer with autograd on, one backward for the whole
  // answer, and with `per_word` one more per word. The KV cache is left as it was. Throws
  // minigpt4::Error when there is no answer yet, no image in its prompt, or the image was
  // uploaded without vision_tokens.
  Explanation explain(bool per_word = false);
  // An assistant turn given rather than generated: a conversation replayed from an API
  // request's earlier messages.
  void add_answer(const std::string& text);
  // Forgets the conversation, the images and the cache (the demo's "Restart").
  void reset();

  const Conversation& conversation() const { return conversation_; }
  size_t image_count() const { return images_.size(); }
  int64_t cached_tokens() const { return static_cast<int64_t>(cached_keys_.size()); }

 private:
  std::shared_ptr<const ChatModel> model_;
  Conversation conversation_;
  std::vector<at::Tensor> images_;
  std::vector<at::Tensor> vision_tokens_;  // per image: the ViT output for explanations, or undefined
  // The last answer, for explain(): its prompt (before the left cut), the cut, what sits at
  // each prompt position after it (as cached_keys_; images as -(1 + k)), and the generated tokens.
  struct LastAnswer {
    std::string prompt;
    int64_t cut = 0;
    std::vector<int64_t> prompt_keys, tokens;
  };
  std::optional<LastAnswer> last_answer_;
  // The KV cache and, per cached position, what sits there: a token id, or -(1 + k) for the
  // k-th position of an image (k counts image positions from the start of the conversation).
  KVCache cache_;
  std::vector<int64_t> cached_keys_;
};

// The GenerationConfig an answer runs with (stop sequences, bos/eos from the tokenizer).
GenerationConfig generation_config(const ChatModel& model, const AnswerOptions& options);

}  // namespace minigpt4
