#include "minigpt4/quickstart/heldout.h"

#include "minigpt4/chat/conversation.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/generate/generate.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

std::vector<HeldoutItem> read_heldout(const std::string& root) {
  const auto file = (fs::path(root) / "annotations.json").string();
  std::ifstream in(file);
  if (!in) fail("held-out set: cannot open {}", file);
  nlohmann::json list;
  try {
    list = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("held-out set: {} is not valid JSON: {}", file, e.what());
  }
  if (!list.is_array()) fail("held-out set: {} must hold a list", file);
  std::vector<HeldoutItem> items;
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& a = list[i];
    try {
      HeldoutItem item;
      item.image_path = (fs::path(root) / a.at("image").get<std::string>()).string();
      item.truth.shape = a.at("shape").get<std::string>();
      item.truth.colour = a.at("colour").get<std::string>();
      item.truth.count = a.at("count").get<int>();
      item.truth.position = a.at("position").get<std::string>();
      if (a.contains("boxes"))
        for (const auto& box : a.at("boxes")) item.boxes.push_back(box.get<std::array<int, 4>>());
      items.push_back(std::move(item));
    } catch (const nlohmann::json::exception& e) {
      fail(
          "held-out set: {} entry {} needs image, shape, colour, count and position (boxes, if any, as [x0, y0, x1, "
          "y1]): {}",
          file, i, e.what());
    }
  }
  return items;
}

namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!w.empty()) {
      words.push_back(w), w.clear();
    }
  }
  if (!w.empty()) words.push_back(w);
  return words;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

StatedAttributes parse_scene_answer(const std::string& answer) {
  const auto words = words_of(answer);
  const auto& shapes = synth_shapes();
  const auto& colours = synth_colours();
  StatedAttributes out;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (!out.colour && contains(colours, w)) out.colour = w;
    for (const auto& s : shapes)
      if (!out.shape && (w == s || w == s + "s")) out.shape = s;
    if (!out.count) {
      for (int n = 1; n <= 5; ++n)
        if (w == count_word(n) || w == std::to_string(n)) out.count = n;
      const bool before_object =
          i + 1 < words.size() && (contains(colours, words[i + 1]) || contains(shapes, words[i + 1]));
      if (!out.count && (w == "a" || w == "an") && before_object) out.count = 1;
    }
    if (!out.position) {
      if (w == "left" || w == "right" || w == "top" || w == "bottom" || w == "centre") out.position = w;
      if (w == "center" || w == "middle") out.position = "centre";
    }
  }
  return out;
}

void AttributeTally::add(const StatedAttributes& s, const SceneAttributes& t) {
  ++items;
  shape += s.shape && *s.shape == t.shape;
  colour += s.colour && *s.colour == t.colour;
  count += s.count && *s.count == t.count;
  position += s.position && *s.position == t.position;
}

double AttributeTally::accuracy() const {
  return items == 0 ? 0.0 : static_cast<double>(shape + colour + count + position) / (4.0 * static_cast<double>(items));
}

nlohmann::json AttributeTally::to_json() const {
  const double n = std::max<double>(1.0, static_cast<double>(items));
  return {{"items", items},
          {"accuracy", accuracy()},
          {"shape", static_cast<double>(shape) / n},
          {"colour", static_cast<double>(colour) / n},
          {"count", static_cast<double>(count) / n},
          {"position", static_cast<double>(position) / n}};
}

HeldoutResult evaluate_heldout(const MiniGPT4& model, const Tokenizer& tokenizer, const std::vector<HeldoutItem>& items,
                               const HeldoutOptions& options) {
  torch::NoGradGuard no_grad;
  const auto start = std::chrono::steady_clock::now();
  const ImageEvalProcessor processor(static_cast<int>(model.config.vision.image_size));

  // The chat's prompt, as `minigpt4 chat` builds it; blind: the same turn without the image.
  auto prompt_for = [&](bool with_image) {
    Conversation conv = conversation_template(options.conversation);
    if (with_image) {
      conv.upload_image();
    } else {
      conv.append_message(conv.roles()[0], std::string("<Img></Img>"));
    }
    conv.ask(options.question);
    conv.start_answer();
    return conv.get_prompt();
  };
  const std::string seeing_prompt = prompt_for(true), blind_prompt = prompt_for(false);

  GenerationConfig gen;
  gen.max_new_tokens = options.max_new_tokens;
  gen.eos_token_id = tokenizer.eos_id();
  gen.bos_token_id = tokenizer.bos_id();
  gen.stop_token_sequences = {tokenizer.encode("###", false), tokenizer.encode(" ###", false)};

  std::ofstream answers;
  if (!options.answers_path.empty()) {
    answers.open(options.answers_path);
    if (!answers) fail("cannot write {}", options.answers_path);
  }
  HeldoutResult result;
  const size_t n = options.limit >= 0 ? std::min(items.size(), static_cast<size_t>(options.limit)) : items.size();
  for (size_t i = 0; i < n; ++i) {
    const auto& item = items[i];
    const auto image = processor.from_file(item.image_path).unsqueeze(0);
    const auto img_embeds = model.encode_img(image);
    const auto seeing =
        generate(*model.llama_model, model.context_embedding(seeing_prompt, {img_embeds}, tokenizer), gen);
    const std::string seeing_text = postprocess_answer(seeing.hf_output(), tokenizer);
    result.seeing.add(parse_scene_answer(seeing_text), item.truth);
    nlohmann::json record = {
        {"image", item.image_path}, {"truth", canonical_caption(item.truth)}, {"answer", seeing_text}};
    if (options.blind) {
      const auto blind = generate(*model.llama_model, model.context_embedding(blind_prompt, {}, tokenizer), gen);
      const std::string blind_text = postprocess_answer(blind.hf_output(), tokenizer);
      result.blind.add(parse_scene_answer(blind_text), item.truth);
      record["blind_answer"] = blind_text;
    }
    if (answers.is_open()) answers << record.dump() << "\n";
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace minigpt4::quickstart
