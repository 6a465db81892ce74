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

#include <chrono>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4 {

class Config;
class JsonConstraint;
class JsonSchema;
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
  std::vector<std::pair<int64_t, double>> logit_bias;  // GenerationConfig::logit_bias
  int top_logprobs = -1;  // >= 0: the reply's logprobs, with this many alternatives (greedy and sampling)
  // Set: the answer is a JSON value this schema accepts (JsonSchema::any_object() for
  // json_object), by ChatModel::json_constraint's mask; greedy and sampling.
  std::shared_ptr<const JsonSchema> json_schema;
  bool reuse_cache = true;  // keep the KV cache of earlier rounds (greedy and sampling; beams recompute)
};

struct ChatReply {
  std::string text;             // the answer as Chat.answer returns it
  std::vector<int64_t> tokens;  // generated ids (stop/eos included)
  std::string finish_reason;    // "stop" (stop sequence or eos), "length", "cancelled"
  int64_t prompt_tokens = 0;    // positions of the prompt (text tokens + image embeddings)
  int64_t reused_tokens = 0;    // prompt positions taken from the KV cache
  double prefill_seconds = 0, decode_seconds = 0;
  std::vector<TokenLogprob> logprobs;  // per token, when AnswerOptions::top_logprobs >= 0
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
  // AnswerOptions::json_schema's mask over this tokenizer's vocabulary (made on first use).
  std::shared_ptr<const JsonConstraint> json_constraint() const;
  mutable std::mutex json_mutex;
  mutable std::shared_ptr<const JsonConstraint> json_mask;
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

class ChatSession;
struct StreamedText;

// An answer generated in steps that its owner drives: the prompt in chunks (prefill), then a
// token per decode step, whose logits the owner computes for many answers at once (the
// server's continuous batching: CausalLM::step_sequences over each answer's cache).
// ChatSession::answer drives one by itself. It holds its session until finish(): one at a
// time per session. Destroyed unfinished (an error, the server stopping), it leaves the
// session's conversation as it was and its cache empty.
class AnswerInProgress {
 public:
  ~AnswerInProgress();
  AnswerInProgress(const AnswerInProgress&) = delete;
  AnswerInProgress& operator=(const AnswerInProgress&) = delete;

  int64_t prompt_positions() const { return static_cast<int64_t>(keys_.size()); }
  int64_t reused_positions() const { return common_; }  // taken from the session's cache
  int64_t prompt_left() const;                          // positions still to prefill
  // Runs up to `max_positions` more of the prompt (all that is left for <= 0) into the cache;
  // the last chunk's logits choose the first token.
  void prefill(int64_t max_positions = 0);
  // The same for a decode step that runs the prompt beside other answers' tokens: the next
  // up to `max_positions` prompt positions as rows [n, 1, H], to go into one step with n
  // consecutive entries of cache() (CausalLM::step_sequences: consecutive positions);
  // then prompt_rows_ran(n, the last row's logits).
  at::Tensor prompt_rows(int64_t max_positions) const;
  void prompt_rows_ran(int64_t n, const at::Tensor& last_logits);
  bool decoding() const { return prompt_left() == 0 && !generation_.finished(); }
  bool finished() const { return generation_.finished(); }
  int64_t generated() const { return static_cast<int64_t>(generation_.output().tokens.size()); }
  // Per generated token, when the options asked for them (so far: a streaming caller reads
  // them as the text comes).
  const std::vector<TokenLogprob>& logprobs() const { return generation_.output().logprobs; }
  // What a decode step feeds: the last token's embedding [1, 1, H], into cache().
  at::Tensor next_input() const;
  KVCache& cache();
  // The decode step's next-token logits for this answer ([V] or [1, V], float32): chooses
  // the next token and streams its text.
  void take(const at::Tensor& logits);
  // Ends generation after the tokens so far (finish_reason "cancelled").
  void cancel();
  // Once finished(): records the answer in the conversation and returns it.
  ChatReply finish();

 private:
  friend class ChatSession;
  AnswerInProgress(ChatSession& session, const AnswerOptions& options, std::function<bool(const std::string&)> on_text);
  bool on_token(int64_t token);

  ChatSession* session_;
  GenerationConfig config_;
  SequenceGeneration generation_;
  std::unique_ptr<StreamedText> text_;          // the answer's text as it streams (chat.cpp)
  std::shared_ptr<const JsonConstraint> json_;  // when the answer must be JSON of schema_
  std::shared_ptr<const JsonSchema> schema_;
  std::string prompt_;
  int64_t cut_ = 0;            // positions cut from the left to fit max_length
  std::vector<int64_t> keys_;  // what sits at each prompt position (ChatSession::cached_keys_)
  at::Tensor embeds_;          // the prompt's embeddings after the reused positions [1, P, H]
  int64_t common_ = 0, prefilled_ = 0;
  bool cancelled_ = false, recorded_ = false;
  std::chrono::steady_clock::time_point start_;
  double prefill_seconds_ = 0;
};

// One conversation. Not thread-safe: one answer at a time per session (the server queues).
class ChatSession {
 public:
  explicit ChatSession(std::shared_ptr<const ChatModel> model);

  // Chat.upload_img: the image (already encoded, [1, NQ, H]) enters the conversation as a
  // human turn holding `<Img><ImageHere></Img>`. May come at the start or mid-chat.
  // `vision_tokens` (from encode_image_*) makes answers about it explainable.
  // `identity` (>= 1): the image's content identity (the server's image cache), so that the
  // positions it fills can be matched across conversations (adopt_cache); 0: none.
  void upload_image(const at::Tensor& image_embeds, const at::Tensor& vision_tokens = {}, uint64_t identity = 0);
  // Chat.ask.
  void ask(const std::string& text);
  // Chat.answer: generates the assistant turn and records it in the conversation. on_text
  // gets the answer's text piece by piece as it is generated (the pieces add up to
  // ChatReply::text; text that may still turn out to be the stop string, or an incomplete
  // UTF-8 character, is held back): with greedy decoding or sampling it is called once per
  // token, with "" while nothing new shows, so that returning false cancels promptly
  // (finish_reason "cancelled", the partial answer is recorded).
  ChatReply answer(const AnswerOptions& options, const std::function<bool(const std::string&)>& on_text = {});
  // The same answer in steps driven by the caller (AnswerInProgress): greedy decoding and
  // sampling with the KV cache kept (options.num_beams 1; reuse_cache is implied). Throws
  // minigpt4::Error when the options or the prompt cannot be answered.
  std::unique_ptr<AnswerInProgress> start_answer(const AnswerOptions& options,
                                                 std::function<bool(const std::string&)> on_text = {});
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

  // The positions the next answer's prompt takes (text tokens and image embeddings), before
  // any left cut: what must fit the model's context.
  int64_t prompt_positions() const;
  // What sits at each of those positions: a token id, or a negative key for an image position
  // (from its identity when it has one, else from its place in the conversation).
  std::vector<int64_t> prompt_keys() const;
  // The KV cache and what sits at each of its positions, taken out of the session (its next
  // answer then computes its whole prompt), and a cache given to it: computed by another
  // conversation with the same model and adapter; the next answer reuses its positions as
  // far as their keys agree with its prompt's.
  std::pair<std::vector<int64_t>, KVCache> release_cache();
  void adopt_cache(std::vector<int64_t> keys, KVCache cache);

  const Conversation& conversation() const { return conversation_; }
  size_t image_count() const { return images_.size(); }
  int64_t cached_tokens() const { return static_cast<int64_t>(cached_keys_.size()); }

 private:
  friend class AnswerInProgress;
  std::shared_ptr<const ChatModel> model_;
  Conversation conversation_;
  std::vector<at::Tensor> images_;
  std::vector<at::Tensor> vision_tokens_;  // per image: the ViT output for explanations, or undefined
  std::vector<uint64_t> image_ids_;        // per image: its identity, or 0
  // The last answer, for explain(): its prompt (before the left cut), the cut, what sits at
  // each prompt position after it (as cached_keys_; images as -(1 + k)), and the generated tokens.
  struct LastAnswer {
    std::string prompt;
    int64_t cut = 0;
    std::vector<int64_t> prompt_keys, tokens;
  };
  std::optional<LastAnswer> last_answer_;
  // An answer's prompt: its text, embeddings [1, P, H], what sits at each position (as
  // cached_keys_), after Chat.answer's left cut of `cut` positions.
  struct Prompt {
    std::string text;
    at::Tensor embeds;
    std::vector<int64_t> keys;
    int64_t cut = 0;
  };
  Prompt prompt_for(const AnswerOptions& options) const;
  int64_t image_key(size_t image, int64_t j, int64_t image_position) const;
  // The KV cache and, per cached position, what sits there: a token id, or -(1 + k) for the
  // k-th position of an image (k counts image positions from the start of the conversation).
  KVCache cache_;
  std::vector<int64_t> cached_keys_;
};

// The GenerationConfig an answer runs with (stop sequences, bos/eos from the tokenizer).
GenerationConfig generation_config(const ChatModel& model, const AnswerOptions& options);

}  // namespace minigpt4
