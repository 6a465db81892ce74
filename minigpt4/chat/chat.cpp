// MiniGPT-4's Chat (minigpt4/conversation/conversation.py) with a KV cache kept across rounds.
#include "minigpt4/chat/chat.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/generate/json_constraint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <limits>

namespace minigpt4 {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// demo.py (Sep 2023): conv_dict = {'pretrain_vicuna0': CONV_VISION_Vicuna0,
// 'pretrain_llama2': CONV_VISION_LLama2}; the quickstart model was trained on CONV_VISION.
std::string template_for(const Config& config) {
  if (config.has("model.conv_template")) {
    const auto name = config.get_string("model.conv_template");
    conversation_template(name);  // throws for an unknown name
    return name;
  }
  const auto model_type = config.get_string("model.model_type", "pretrain_vicuna0");
  if (model_type == "pretrain_llama2") return "llama2";
  if (model_type == "quickstart") return "v0";
  return "vicuna0";
}

// The image side demo.py's processor uses (datasets.cc_sbu_align.vis_processor.train),
// which must be the one the ViT was built for.
int image_size_for(const Config& config, const MiniGPT4& model) {
  const int model_size = static_cast<int>(model.config.vision.image_size);
  for (const auto& dataset : config.keys_under("datasets")) {
    const auto key = "datasets." + dataset + ".vis_processor.train.image_size";
    if (!config.has(key)) continue;
    const auto size = config.get_int(key, model_size);
    if (size != model_size)
      fail("{} is {} but the model's ViT takes {} px images ({})", key, size, model_size, config.source_of(key));
  }
  return model_size;
}

bool is_python_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// What of the answer so far may be shown: up to a stop string '###', without a trailing
// '#'/'##' that may become one, without a trailing incomplete character (sentencepiece's
// byte fallback shows it as U+FFFD until its last byte arrives), and without leading or
// trailing white space (Chat.answer strips the final text).
struct Visible {
  std::string text;
  bool stopped = false;  // '###' seen: the answer is complete
};

Visible visible_answer(std::string text) {
  Visible v;
  if (const auto stop = text.find("###"); stop != std::string::npos) text.resize(stop), v.stopped = true;
  if (!v.stopped) {
    for (int i = 0; i < 2 && !text.empty() && text.back() == '#'; ++i) text.pop_back();
    static const std::string kReplacement = "\xEF\xBF\xBD";
    while (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0) text.resize(text.size() - 3);
    // The start of a clean-up pattern (" n" of " n't", " '" of " 's" or " ' "): the BPE
    // tokenizer's clean_up_tokenization may still drop its space, so it waits for the rest.
    for (const std::string tail : {" n'", " 'v", " 'r", " n", " '"})
      if (text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0) {
        text.resize(text.size() - tail.size());
        break;
      }
  }
  size_t begin = 0, end = text.size();
  while (begin < end && is_python_space(text[begin])) ++begin;
  while (end > begin && is_python_space(text[end - 1])) --end;
  v.text = text.substr(begin, end - begin);
  return v;
}

}  // namespace

// An answer's text as it streams: after each token the answer so far is decoded and what
// became visible is passed on (every token, "" while text is held back, so that the caller
// can cancel whatever is shown).
struct StreamedText {
  StreamedText(const Tokenizer* tokenizer_, int64_t eos_, std::function<bool(const std::string&)> on_text_)
      : tokenizer(tokenizer_), eos(eos_), on_text(std::move(on_text_)) {}
  const Tokenizer* tokenizer;
  int64_t eos;
  std::function<bool(const std::string&)> on_text;
  std::vector<int64_t> ids;  // without eos
  std::string sent;
  bool cancelled = false, stop_text = false;  // the caller said stop; '###' showed

  // Whether generation goes on after `token`.
  bool feed(int64_t token) {
    if (token == eos) return false;
    ids.push_back(token);
    const auto visible = visible_answer(tokenizer->decode(ids));
    stop_text = visible.stopped;
    std::string piece;
    if (starts_with(visible.text, sent) && visible.text.size() > sent.size()) {
      piece = visible.text.substr(sent.size());
      sent = visible.text;
    }
    if (on_text && !on_text(piece)) cancelled = true;
    return !(cancelled || stop_text);
  }
  // The final text's rest beyond what was shown (held-back text the clean-up kept).
  void finish(const std::string& final_text) {
    if (on_text && !cancelled && starts_with(final_text, sent) && final_text.size() > sent.size())
      on_text(final_text.substr(sent.size()));
  }
  std::string finish_reason(const std::string& generation_reason) const {
    return cancelled ? "cancelled" : (generation_reason == "length" && !stop_text ? "length" : "stop");
  }
};

std::shared_ptr<ChatModel> ChatModel::load(const Config& config, c10::Device device) {
  auto chat = std::make_shared<ChatModel>();
  const auto model_config = MiniGPT4Config::from_config(config);
  chat->model = load_minigpt4(model_config, device);
  chat->model->eval();
  chat->tokenizer = load_tokenizer(model_config.llama_model);
  chat->processor = std::make_shared<ImageEvalProcessor>(image_size_for(config, *chat->model));
  chat->template_name = template_for(config);
  chat->repetition_penalty = config.get_float("model.repetition_penalty", 1.0);
  if (!(chat->repetition_penalty > 0))
    fail("model.repetition_penalty must be > 0, got {} ({})", chat->repetition_penalty,
         config.source_of("model.repetition_penalty"));
  for (const auto& text : config.get_string_list("model.stop_token_ids")) {
    int64_t id = -1;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), id);
    if (error != std::errc() || end != text.data() + text.size() || id < 0 ||
        id >= chat->model->llama_model->vocab_size())
      fail("model.stop_token_ids: '{}' is not a token id of this LLM (0..{}) ({})", text,
           chat->model->llama_model->vocab_size() - 1, config.source_of("model.stop_token_ids"));
    chat->stop_token_ids.push_back(id);
  }
  chat->name = config.path().empty() ? "minigpt4" : std::filesystem::path(config.path()).stem().string();
  chat->device = device;
  return chat;
}

std::vector<std::vector<int64_t>> ChatModel::stop_sequences() const {
  std::vector<std::vector<int64_t>> extra;
  for (const int64_t id : stop_token_ids) extra.push_back({id});
  if (template_name == "llama2" || template_name == "CONV_VISION_LLama2") return extra;
  // '###' after a space is one piece in LLaMA's vocabulary ([835]), after a word it is
  // '##' '#' ([2277, 29937]); the answer text is checked for '###' as well.
  std::vector<std::vector<int64_t>> stops = {tokenizer->encode("###", false)};
  const auto glued = tokenizer->encode("a###", false);
  const auto a = tokenizer->encode("a", false);
  if (glued.size() > a.size() && std::equal(a.begin(), a.end(), glued.begin()))
    stops.emplace_back(glued.begin() + static_cast<std::ptrdiff_t>(a.size()), glued.end());
  stops.insert(stops.end(), extra.begin(), extra.end());
  return stops;
}

at::Tensor ChatModel::encode_image_rgb(const at::Tensor& rgb_uint8_hwc, at::Tensor* vision_tokens) const {
  torch::NoGradGuard no_grad;
  const auto pixels = (*processor)(rgb_uint8_hwc).unsqueeze(0).to(device);
  if (!vision_tokens) return model->encode_img(pixels);
  *vision_tokens = model->encode_vision(pixels);
  return model->project(model->image_queries(*vision_tokens));
}

at::Tensor ChatModel::encode_image_bytes(const std::string& bytes, const std::string& name_for_errors,
                                         at::Tensor* vision_tokens) const {
  return encode_image_rgb(decode_image_rgb_bytes(bytes, name_for_errors), vision_tokens);
}

at::Tensor ChatModel::encode_image_file(const std::string& path, at::Tensor* vision_tokens) const {
  return encode_image_rgb(decode_image_rgb(path), vision_tokens);
}

std::shared_ptr<const JsonConstraint> ChatModel::json_constraint() const {
  std::lock_guard<std::mutex> lock(json_mutex);
  if (!json_mask)
    json_mask = std::make_shared<JsonConstraint>(*tokenizer, model->llama_model->vocab_size(), tokenizer->eos_id());
  return json_mask;
}

std::vector<std::string> ChatModel::adapter_choices() const {
  std::vector<std::string> choices = {"original"};
  for (auto& name : adapter_names(*model)) choices.push_back(std::move(name));
  return choices;
}

std::string ChatModel::active_adapter() const { return minigpt4::active_adapter(*model); }

void ChatModel::use_adapter(const std::string& name) const {
  const auto choices = adapter_choices();
  if (std::find(choices.begin(), choices.end(), name) == choices.end())
    fail("unknown LoRA adapter '{}'; this model holds: {} (model.lora_path names them)", name,
         fmt::join(choices, ", "));
  if (choices.size() == 1) return;  // no adapters: always the base model
  if (minigpt4::active_adapter(*model) != name) set_active_adapter(*model, name, /*merge=*/false);
}

GenerationConfig generation_config(const ChatModel& model, const AnswerOptions& o) {
  if (o.max_new_tokens < 1) fail("max_new_tokens must be >= 1, got {}", o.max_new_tokens);
  if (o.num_beams < 1 || o.num_beams > 10) fail("num_beams must be in 1..10, got {}", o.num_beams);
  GenerationConfig c;
  c.max_new_tokens = o.max_new_tokens;
  c.min_length = o.min_length;
  c.num_beams = o.num_beams;
  c.length_penalty = o.length_penalty;
  c.do_sample = o.temperature > 0;
  c.temperature = c.do_sample ? o.temperature : 1.0;
  c.top_p = o.top_p;
  c.top_k = o.top_k;
  c.repetition_penalty = o.repetition_penalty.value_or(model.repetition_penalty);
  c.bos_token_id = model.tokenizer->bos_id();
  c.eos_token_id = model.tokenizer->eos_id();
  c.stop_token_sequences = model.stop_sequences();
  c.seed = o.seed;
  c.logit_bias = o.logit_bias;
  c.top_logprobs = o.top_logprobs;
  return c;
}

ChatSession::ChatSession(std::shared_ptr<const ChatModel> model)
    : model_(std::move(model)), conversation_(model_->new_conversation()) {}

void ChatSession::upload_image(const at::Tensor& image_embeds, const at::Tensor& vision_tokens, uint64_t identity) {
  if (!image_embeds.defined() || image_embeds.dim() != 3 || image_embeds.size(0) != 1)
    fail("upload_image: expected image embeddings [1, NQ, H]");
  if (vision_tokens.defined() && (vision_tokens.dim() != 3 || vision_tokens.size(0) != 1))
    fail("upload_image: vision_tokens must be the ViT output [1, tokens, width]");
  conversation_.upload_image();
  if (identity >= (uint64_t{1} << 40)) fail("upload_image: image identity {} out of range", identity);
  images_.push_back(image_embeds);
  vision_tokens_.push_back(vision_tokens);
  image_ids_.push_back(identity);
}

void ChatSession::ask(const std::string& text) { conversation_.ask(text); }

void ChatSession::add_answer(const std::string& text) {
  last_answer_.reset();
  conversation_.start_answer();
  conversation_.set_answer(text);
}

void ChatSession::reset() {
  conversation_ = model_->new_conversation();
  images_.clear();
  vision_tokens_.clear();
  image_ids_.clear();
  cache_.clear();
  cached_keys_.clear();
  last_answer_.reset();
}

ChatSession::Prompt ChatSession::prompt_for(const AnswerOptions& options) const {
  const auto& tokenizer = *model_->tokenizer;
  // The prompt ends in the open assistant turn; the conversation records the turn only once
  // there is an answer, so a failure leaves it as it was.
  Conversation open = conversation_;
  open.start_answer();
  Prompt p;
  p.text = open.get_prompt();
  p.embeds = model_->model->context_embedding(p.text, images_, tokenizer);

  // What sits at each prompt position, to find the prefix the cache already holds.
  int64_t image_position = 0;
  const auto segments = split_image_placeholder(p.text);
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto ids = tokenizer.encode(segments[i], /*add_special_tokens=*/i == 0);
    p.keys.insert(p.keys.end(), ids.begin(), ids.end());
    if (i < images_.size())
      for (int64_t j = 0; j < images_[i].size(1); ++j) p.keys.push_back(image_key(i, j, image_position++));
  }
  if (static_cast<int64_t>(p.keys.size()) != p.embeds.size(1))
    fail("chat: prompt positions ({}) and embeddings ({}) disagree", p.keys.size(), p.embeds.size(1));

  // Chat.answer: cut the prompt from the left to leave room for the answer.
  const int64_t overflow = p.embeds.size(1) + options.max_new_tokens - options.max_length;
  if (overflow > 0) {
    if (overflow >= p.embeds.size(1))
      fail("chat: max_new_tokens {} leaves no room in max_length {}", options.max_new_tokens, options.max_length);
    p.embeds = p.embeds.slice(1, overflow);
    p.keys.erase(p.keys.begin(), p.keys.begin() + overflow);
    p.cut = overflow;
  }
  return p;
}

int64_t ChatSession::image_key(size_t image, int64_t j, int64_t image_position) const {
  // With an identity, position j of image `id` is -(1 + id * 2^16 + j), so that another
  // conversation's cache of the same image matches; without, -(1 + its place here).
  return image_ids_[image] > 0 ? -1 - ((static_cast<int64_t>(image_ids_[image]) << 16) + j) : -1 - image_position;
}

std::vector<int64_t> ChatSession::prompt_keys() const {
  AnswerOptions uncut;
  uncut.max_new_tokens = 0;
  uncut.max_length = std::numeric_limits<int64_t>::max() / 2;
  return prompt_for(uncut).keys;
}

int64_t ChatSession::prompt_positions() const { return static_cast<int64_t>(prompt_keys().size()); }

std::pair<std::vector<int64_t>, KVCache> ChatSession::release_cache() {
  std::pair<std::vector<int64_t>, KVCache> out{std::move(cached_keys_), std::move(cache_)};
  cached_keys_.clear();
  cache_.clear();
  return out;
}

void ChatSession::adopt_cache(std::vector<int64_t> keys, KVCache cache) {
  if (static_cast<int64_t>(keys.size()) != cache.length())
    fail("adopt_cache: {} keys for a cache of {} positions", keys.size(), cache.length());
  cached_keys_ = std::move(keys);
  cache_ = std::move(cache);
}

AnswerInProgress::AnswerInProgress(ChatSession& session, const AnswerOptions& options,
                                   std::function<bool(const std::string&)> on_text)
    : session_(&session),
      config_(generation_config(*session.model_, options)),
      generation_(config_, session.model_->model->llama_model->vocab_size()),
      text_(std::make_unique<StreamedText>(session.model_->tokenizer.get(), config_.eos_token_id, std::move(on_text))),
      start_(Clock::now()) {
  if (options.json_schema) json_ = session.model_->json_constraint(), schema_ = options.json_schema;
  auto prompt = session.prompt_for(options);
  prompt_ = std::move(prompt.text);
  keys_ = std::move(prompt.keys);
  cut_ = prompt.cut;
  const auto& embeds = prompt.embeds;
  auto& cached = session.cached_keys_;
  size_t common = 0;
  while (common < cached.size() && common < keys_.size() && cached[common] == keys_[common]) ++common;
  common = std::min(common, keys_.size() - 1);  // at least one position to feed
  if (common == 0)
    session.cache_.clear();
  else
    session.cache_.truncate(static_cast<int64_t>(common));
  cached.clear();  // valid again once the answer is recorded
  session.last_answer_.reset();
  common_ = static_cast<int64_t>(common);
  embeds_ = embeds.slice(1, common_);
  session.cache_.reserve = prompt_positions() + options.max_new_tokens;  // one buffer for the whole answer
}

AnswerInProgress::~AnswerInProgress() {
  if (!recorded_) session_->cache_.clear();  // holds positions of an answer that was not recorded
}

int64_t AnswerInProgress::prompt_left() const { return embeds_.size(1) - prefilled_; }

KVCache& AnswerInProgress::cache() { return session_->cache_; }

void AnswerInProgress::prefill(int64_t max_positions) {
  torch::NoGradGuard no_grad;
  const int64_t left = prompt_left();
  if (left == 0) return;
  const int64_t n = max_positions > 0 ? std::min(max_positions, left) : left;
  CausalLMOptions options;
  options.cache = &cache();
  options.logits_to_keep = 1;
  const auto& llm = *session_->model_->model->llama_model;
  const auto logits = llm.forward(embeds_.slice(1, prefilled_, prefilled_ + n), options).logits;
  prefilled_ += n;
  if (prompt_left() == 0 && !generation_.finished()) take(logits.select(1, -1));
}

at::Tensor AnswerInProgress::prompt_rows(int64_t max_positions) const {
  const int64_t n = std::min(std::max<int64_t>(max_positions, 1), prompt_left());
  if (n <= 0) fail("chat: no prompt positions left to run");
  return embeds_.slice(1, prefilled_, prefilled_ + n).transpose(0, 1);  // [n, 1, H]
}

void AnswerInProgress::prompt_rows_ran(int64_t n, const at::Tensor& last_logits) {
  if (n <= 0 || n > prompt_left()) fail("chat: {} prompt positions ran, {} were left", n, prompt_left());
  prefilled_ += n;
  if (prompt_left() == 0 && !generation_.finished()) take(last_logits);
}

at::Tensor AnswerInProgress::next_input() const {
  const auto& tokens = generation_.output().tokens;
  if (tokens.empty() || prompt_left() > 0) fail("chat: no token to feed before the prompt has run");
  const auto& llm = *session_->model_->model->llama_model;
  torch::NoGradGuard no_grad;
  return llm.embed(torch::tensor({tokens.back()}, torch::kLong).view({1, 1}).to(session_->model_->device));
}

void AnswerInProgress::take(const at::Tensor& logits) {
  torch::NoGradGuard no_grad;
  at::Tensor scores = logits;
  if (json_) {  // only what keeps the answer JSON of the schema, then only its end
    scores = logits.to(torch::kFloat).reshape({-1}).clone();
    json_->mask(scores, session_->model_->tokenizer->decode(text_->ids), schema_);
  }
  const int64_t token = generation_.choose(scores);
  // Recorded before its text goes out, so that a streaming caller finds its log-probability.
  generation_.accept(token);
  if (!on_token(token)) generation_.cancel();  // after eos, a stop or the last token: already finished
}

bool AnswerInProgress::on_token(int64_t token) {
  if (prefill_seconds_ == 0) prefill_seconds_ = seconds_since(start_);  // time to the first token
  return text_->feed(token);
}

void AnswerInProgress::cancel() {
  generation_.cancel();
  cancelled_ = text_->cancelled = true;
}

ChatReply AnswerInProgress::finish() {
  if (!finished()) fail("chat: the answer is not finished");
  if (recorded_) fail("chat: the answer was already recorded");
  auto& session = *session_;
  const auto& out = generation_.output();
  ChatReply reply;
  reply.prompt_tokens = prompt_positions();
  reply.reused_tokens = common_;
  reply.prefill_seconds = prefill_seconds_;
  reply.decode_seconds = seconds_since(start_) - prefill_seconds_;
  reply.tokens = out.tokens;
  reply.logprobs = out.logprobs;
  reply.finish_reason = cancelled_ ? "cancelled" : text_->finish_reason(out.finish_reason);
  std::vector<int64_t> answer = out.hf_output();
  if (!answer.empty() && answer.back() == config_.eos_token_id) answer.pop_back();
  reply.text = postprocess_answer(answer, *session.model_->tokenizer);
  text_->finish(reply.text);
  // The cache holds the prompt and every generated token that was fed back.
  std::vector<int64_t> all = keys_;
  all.insert(all.end(), out.tokens.begin(), out.tokens.end());
  const auto cached = std::min<size_t>(all.size(), static_cast<size_t>(session.cache_.length()));
  session.cached_keys_.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(cached));
  session.conversation_.start_answer();
  session.conversation_.set_answer(reply.text);
  session.last_answer_ = ChatSession::LastAnswer{prompt_, cut_, keys_, out.tokens};
  recorded_ = true;
  return reply;
}

std::unique_ptr<AnswerInProgress> ChatSession::start_answer(const AnswerOptions& options,
                                                            std::function<bool(const std::string&)> on_text) {
  if (options.num_beams != 1) fail("chat: beam search answers whole (ChatSession::answer), not in steps");
  return std::unique_ptr<AnswerInProgress>(new AnswerInProgress(*this, options, std::move(on_text)));
}

ChatReply ChatSession::answer(const AnswerOptions& options, const std::function<bool(const std::string&)>& on_text) {
  torch::NoGradGuard no_grad;
  const auto& llm = *model_->model->llama_model;
  if (options.reuse_cache && options.num_beams == 1) {
    auto run = start_answer(options, on_text);
    run->prefill();
    while (run->decoding()) run->take(llm.step_sequences(run->next_input(), {&run->cache()}));
    return run->finish();
  }

  // The original's way: the whole conversation from scratch (and beam search, whose beams
  // reorder a cache of their own).
  if (options.json_schema)
    fail("chat: JSON answers (json_object, json_schema) need the KV cache kept and no beam search");
  const auto gen = generation_config(*model_, options);
  auto prompt = prompt_for(options);
  cache_.clear();
  cached_keys_.clear();
  last_answer_.reset();
  StreamedText text(model_->tokenizer.get(), gen.eos_token_id, on_text);
  ChatReply reply;
  reply.prompt_tokens = static_cast<int64_t>(prompt.keys.size());
  const auto start = Clock::now();
  const auto out = generate(llm, prompt.embeds, gen, [&](int64_t token) {
    if (reply.prefill_seconds == 0) reply.prefill_seconds = seconds_since(start);
    text.feed(token);
  });
  reply.decode_seconds = seconds_since(start) - reply.prefill_seconds;
  reply.tokens = out.tokens;
  reply.finish_reason = text.finish_reason(out.finish_reason);
  std::vector<int64_t> answer = out.hf_output();
  if (!answer.empty() && answer.back() == gen.eos_token_id) answer.pop_back();
  reply.text = postprocess_answer(answer, *model_->tokenizer);
  text.finish(reply.text);
  conversation_.start_answer();
  conversation_.set_answer(reply.text);
  last_answer_ = LastAnswer{prompt.text, prompt.cut, prompt.keys, out.tokens};
  return reply;
}

Explanation ChatSession::explain(bool per_word) {
  if (!last_answer_) fail("explain: there is no generated answer to explain yet");
  const auto& last = *last_answer_;
  const auto& keys = last.prompt_keys;
  const auto& model = *model_->model;
  const auto& llm = *model.llama_model;
  const auto& tokenizer = *model_->tokenizer;

  // The latest image whose every position survived the left cut: image i's first and last
  // keys are both in the prompt.
  std::optional<size_t> image;
  int64_t first = 0;
  for (size_t i = 0; i < images_.size(); ++i) {
    const int64_t nq = images_[i].size(1);
    const auto at = std::find(keys.begin(), keys.end(), image_key(i, 0, first));
    if (at != keys.end() && keys.end() - at >= nq && *(at + nq - 1) == image_key(i, nq - 1, first + nq - 1)) image = i;
    first += nq;
  }
  if (!image) fail("explain: no image is wholly in the last answer's prompt (none uploaded, or cut to fit max_length)");
  if (!vision_tokens_[*image].defined())
    fail("explain: image {} was uploaded without its vision_tokens (encode it with them to explain answers)",
         *image + 1);

  const auto words = answer_words(last.tokens, tokenizer, model_->stop_token_ids);
  if (words.empty()) fail("explain: the answer has no words to explain");

  // The prompt and the answer once more with autograd on, from the ViT's output of the
  // image: its tokens are the only thing that requires a gradient (the model is frozen).
  torch::AutoGradMode grad_mode(true);
  const auto vision = vision_tokens_[*image].detach().clone().set_requires_grad(true);
  auto images = images_;
  images[*image] = model.project(model.image_queries(vision));
  auto inputs = model.context_embedding(last.prompt, images, tokenizer).slice(1, last.cut);
  if (inputs.size(1) != static_cast<int64_t>(keys.size()))
    fail("explain: the prompt no longer has {} positions", keys.size());
  const int64_t answer_tokens = static_cast<int64_t>(last.tokens.size());
  if (answer_tokens > 1) {
    const std::vector<int64_t> fed(last.tokens.begin(), last.tokens.end() - 1);
    const auto ids = torch::tensor(fed, torch::kLong).view({1, -1}).to(model_->device);
    inputs = torch::cat({inputs, llm.embed(ids).to(inputs.scalar_type())}, 1);
  }
  CausalLMOptions options;
  options.logits_to_keep = answer_tokens;  // the rows that predicted the answer's tokens
  const auto logits = llm.forward(inputs, options).logits[0];
  const auto targets = torch::tensor(last.tokens, torch::kLong).to(logits.device()).unsqueeze(1);
  const auto log_probs = torch::log_softmax(logits, -1).gather(1, targets).squeeze(1);  // [answer tokens]

  const int64_t grid = model.config.vision.grid();
  const auto saliency = [&](const std::vector<int64_t>& token_indices, bool keep_graph) {
    const auto rows = torch::tensor(token_indices, torch::kLong).to(log_probs.device());
    const auto grad = torch::autograd::grad({log_probs.index_select(0, rows).sum()}, {vision}, {}, keep_graph)[0];
    return patch_saliency(grad[0], grid);
  };
  Explanation e;
  e.image_index = *image;
  e.grid = grid;
  std::vector<int64_t> all;
  for (const auto& w : words) all.insert(all.end(), w.token_indices.begin(), w.token_indices.end());
  e.answer_map = saliency(all, per_word);
  if (per_word)
    for (size_t i = 0; i < words.size(); ++i)
      e.words.push_back({words[i].text, saliency(words[i].token_indices, i + 1 < words.size())});
  return e;
}

}  // namespace minigpt4
