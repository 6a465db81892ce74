#include "minigpt4/evaluate/predictor.h"

#include "minigpt4/chat/chat.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>

namespace minigpt4::evaluate {

namespace {

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// [B, T, H] embeddings of prompts of different lengths, each padded on the left with zeros
// that its attention mask hides, as Hugging Face pads a batch for generation.
std::pair<at::Tensor, at::Tensor> left_padded(const std::vector<at::Tensor>& prompts) {
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size(1));
  const auto& first = prompts.front();
  auto embeds = torch::zeros({static_cast<int64_t>(prompts.size()), longest, first.size(2)}, first.options());
  auto mask = torch::zeros({static_cast<int64_t>(prompts.size()), longest}, first.options().dtype(torch::kLong));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t length = prompts[i].size(1), row = static_cast<int64_t>(i);
    embeds[row].narrow(0, longest - length, length).copy_(prompts[i][0]);
    mask[row].narrow(0, longest - length, length).fill_(1);
  }
  return {embeds, mask};
}

}  // namespace

std::string clean_prediction(const std::string& answer, bool short_answer) {
  std::string text = answer;
  if (const auto stop = text.find("###"); stop != std::string::npos) text.resize(stop);
  text = strip(replace_all(text, "<unk>", ""));
  if (short_answer)
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

Predictor::Predictor(std::shared_ptr<const ChatModel> model, const EvalSettings& settings)
    : model_(std::move(model)), settings_(settings) {
  AnswerOptions options;  // greedy or beam search, no sampling: a benchmark answer is deterministic
  options.temperature = 0;
  options.max_new_tokens = settings.max_new_tokens;
  options.num_beams = settings.num_beams;
  options.length_penalty = settings.length_penalty;
  generation_ = generation_config(*model_, options);
}

std::string Predictor::prompt_for(const EvalItem& item) const {
  Conversation conversation = model_->new_conversation();
  conversation.upload_image();
  conversation.ask(replace_all(settings_.prompt, "{question}", item.question));
  conversation.start_answer();
  return conversation.get_prompt();
}

std::vector<std::string> Predictor::predict(const std::vector<EvalItem>& batch) const {
  if (batch.empty()) return {};
  torch::NoGradGuard no_grad;
  const ChatModel& chat = *model_;
  std::vector<at::Tensor> pixels;
  for (const auto& item : batch) pixels.push_back(chat.processor->from_file(item.image_path));
  const auto images = chat.model->encode_img(torch::stack(pixels).to(chat.device));
  std::vector<at::Tensor> prompts;
  for (size_t i = 0; i < batch.size(); ++i)
    prompts.push_back(chat.model->context_embedding(prompt_for(batch[i]),
                                                    {images.narrow(0, static_cast<int64_t>(i), 1)}, *chat.tokenizer));

  const auto& llm = *chat.model->llama_model;
  std::vector<GenerationOutput> outputs;
  if (generation_.num_beams > 1) {
    for (const auto& prompt : prompts) outputs.push_back(generate(llm, prompt, generation_));
  } else {
    const auto [embeds, mask] = left_padded(prompts);
    outputs = generate_batch(llm, embeds, mask, generation_);
  }

  std::vector<std::string> answers;
  for (const auto& out : outputs) {
    auto tokens = out.hf_output();
    if (!tokens.empty() && tokens.back() == generation_.eos_token_id) tokens.pop_back();  // as Chat.answer
    answers.push_back(clean_prediction(postprocess_answer(tokens, *chat.tokenizer), settings_.short_answers()));
  }
  return answers;
}

}  // namespace minigpt4::evaluate
