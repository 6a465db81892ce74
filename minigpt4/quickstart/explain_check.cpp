#include "minigpt4/quickstart/explain_check.h"

#include "minigpt4/chat/chat.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/quickstart/heldout.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <numeric>
#include <random>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "Red," -> "red"; a colour, a shape or a shape's plural.
bool is_attribute_word(const std::string& word) {
  std::string w;
  for (const char c : word)
    if (std::isalpha(static_cast<unsigned char>(c)))
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const auto& colour : synth_colours())
    if (w == colour) return true;
  for (const auto& shape : synth_shapes())
    if (w == shape || w == shape_noun(shape, 2)) return true;
  return false;
}

// The boxes' union as a mask over the picture, and each grid cell's share of its pixels
// inside it: [g, g].
struct BoxCover {
  torch::Tensor cell_inside;  // fraction of each cell's pixels inside a box
  double area_share = 0;      // the union's share of the picture
};

BoxCover cover(const std::vector<std::array<int, 4>>& boxes, int64_t width, int64_t height, int64_t grid) {
  auto mask = torch::zeros({height, width}, torch::kFloat32);
  for (const auto& b : boxes)
    mask.slice(0, std::clamp<int64_t>(b[1], 0, height), std::clamp<int64_t>(b[3], 0, height))
        .slice(1, std::clamp<int64_t>(b[0], 0, width), std::clamp<int64_t>(b[2], 0, width))
        .fill_(1.0);
  BoxCover c;
  c.area_share = mask.mean().item<double>();
  c.cell_inside = torch::zeros({grid, grid}, torch::kFloat32);
  for (int64_t r = 0; r < grid; ++r)
    for (int64_t col = 0; col < grid; ++col) {
      const auto cell = mask.slice(0, r * height / grid, (r + 1) * height / grid)
                            .slice(1, col * width / grid, (col + 1) * width / grid);
      c.cell_inside[r][col] = cell.numel() ? cell.mean().item<float>() : 0.0f;
    }
  return c;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  io::AtomicWriter out(path.string());
  out.write(bytes.data(), bytes.size());
  out.commit();
}

// Four times larger, nearest neighbour: a 64 px picture is too small to look at.
torch::Tensor enlarged(const torch::Tensor& rgb) {
  return rgb.repeat_interleave(4, 0).repeat_interleave(4, 1).contiguous();
}

struct Accumulator {
  ExplainScore score;
  double mass = 0, area = 0, ratio = 0;
  void add_picture() { ++score.pictures; }
  void add_word(double in_boxes, double area_share) {
    ++score.words, mass += in_boxes, area += area_share, ratio += in_boxes / area_share;
  }
  ExplainScore done() const {
    ExplainScore s = score;
    if (s.words) s.mass_in_boxes = mass / s.words, s.area_share = area / s.words, s.mean_ratio = ratio / s.words;
    return s;
  }
};

// One forward of the answer span from the prompt's cache, timed: what explain() must cost less than.
double answer_forward_seconds(const ChatModel& model, const torch::Tensor& image, const std::string& question,
                              const std::vector<int64_t>& answer) {
  torch::NoGradGuard no_grad;
  auto conv = model.new_conversation();
  conv.upload_image();
  conv.ask(question);
  conv.start_answer();
  const auto& llm = *model.model->llama_model;
  const auto embeds = model.model->context_embedding(conv.get_prompt(), {image}, *model.tokenizer);
  const int64_t prompt = embeds.size(1);
  KVCache cache;
  CausalLMOptions o;
  o.cache = &cache;
  o.logits_to_keep = 1;
  llm.forward(embeds.slice(1, 0, prompt - 1), o);
  auto span = embeds.slice(1, prompt - 1);
  if (answer.size() > 1) {
    const std::vector<int64_t> fed(answer.begin(), answer.end() - 1);
    span = torch::cat(
        {span, llm.embed(torch::tensor(fed, torch::kLong).view({1, -1}).to(model.device)).to(span.scalar_type())}, 1);
  }
  const auto start = Clock::now();
  llm.forward(span, o);
  return seconds_since(start);
}

struct Costs {
  double explain_answer_map = 0, explain = 0, answer_forward = 0, answer = 0;
};

ExplainScore score(const ChatModel& model, const std::vector<HeldoutItem>& items, const ExplainCheckOptions& options,
                   const std::string& pictures_dir, Costs* costs) {
  Accumulator acc;
  AnswerOptions answer_options;
  answer_options.temperature = 0;  // greedy
  answer_options.max_new_tokens = options.max_new_tokens;
  const int64_t grid = model.model->config.vision.grid();
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& item = items[i];
    if (item.boxes.empty())
      fail("explain check: {} has no object boxes (a world written by an older `minigpt4 synth`; write it again)",
           item.image_path);
    const auto rgb = decode_image_rgb(item.image_path);
    ChatSession session(std::shared_ptr<const ChatModel>(&model, [](const ChatModel*) {}));
    at::Tensor vision_tokens;
    const auto image = model.encode_image_rgb(rgb, &vision_tokens);
    session.upload_image(image, vision_tokens);
    session.ask(options.question);
    auto start = Clock::now();
    const auto reply = session.answer(answer_options);
    const double answer_seconds = seconds_since(start);
    start = Clock::now();
    session.explain(/*per_word=*/false);
    const double answer_map_seconds = seconds_since(start);
    start = Clock::now();
    const auto e = session.explain(/*per_word=*/true);
    if (costs) {
      costs->explain_answer_map += answer_map_seconds;
      costs->explain += seconds_since(start);
      costs->answer += answer_seconds;
      costs->answer_forward += answer_forward_seconds(model, image, options.question, reply.tokens);
    }
    const auto box_cover = cover(item.boxes, rgb.size(1), rgb.size(0), grid);
    bool counted = false;
    std::string first_word;
    at::Tensor first_map;
    for (const auto& w : e.words) {
      if (!is_attribute_word(w.word)) continue;
      acc.add_word((w.map * box_cover.cell_inside).sum().item<double>(), box_cover.area_share);
      counted = true;
      if (first_word.empty()) first_word = w.word, first_map = w.map;
    }
    if (counted) acc.add_picture();
    if (!pictures_dir.empty() && static_cast<int64_t>(i) < options.pictures) {
      fs::create_directories(pictures_dir);
      const auto big = enlarged(rgb);
      write_bytes(fs::path(pictures_dir) / fmt::format("{:02d}_answer.png", i), explanation_png(big, e.answer_map));
      if (first_map.defined()) {
        std::string name;
        for (const char c : first_word)
          if (std::isalpha(static_cast<unsigned char>(c)))
            name += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        write_bytes(fs::path(pictures_dir) / fmt::format("{:02d}_{}.png", i, name), explanation_png(big, first_map));
      }
      log::info("explain check: picture {} ({}): \"{}\"", i, item.image_path, reply.text);
    }
  }
  return acc.done();
}

}  // namespace

nlohmann::json ExplainScore::to_json() const {
  return {{"pictures", pictures},
          {"words", words},
          {"mass_in_boxes", mass_in_boxes},
          {"area_share", area_share},
          {"mean_ratio", mean_ratio}};
}

nlohmann::json ExplainCheckResult::to_json() const {
  return {{"trained", trained.to_json()},
          {"shuffled_projector", shuffled.to_json()},
          {"seconds",
           {{"explain_answer_map", explain_answer_map_seconds},
            {"explain_with_words", explain_seconds},
            {"answer_forward", answer_forward_seconds},
            {"answer", answer_seconds}}},
          {"answer_map_over_answer_forward",
           answer_forward_seconds > 0 ? explain_answer_map_seconds / answer_forward_seconds : 0.0},
          {"answer_map_over_answer", answer_seconds > 0 ? explain_answer_map_seconds / answer_seconds : 0.0}};
}

ExplainCheckResult check_explanations(const ChatModel& model, ChatModel& control, const ExplainCheckOptions& options) {
  auto items = read_heldout(options.heldout_root);
  if (options.limit >= 0 && static_cast<int64_t>(items.size()) > options.limit)
    items.resize(static_cast<size_t>(options.limit));
  if (items.empty()) fail("explain check: no held-out pictures in {}", options.heldout_root);

  ExplainCheckResult result;
  Costs costs;
  result.trained = score(model, items, options, options.pictures_dir, &costs);
  result.explain_seconds = costs.explain;
  result.explain_answer_map_seconds = costs.explain_answer_map;
  result.answer_forward_seconds = costs.answer_forward;
  result.answer_seconds = costs.answer;

  {  // The control: the same model with its projector's weights in a random order.
    torch::NoGradGuard no_grad;
    std::mt19937_64 rng(options.shuffle_seed);
    for (auto* t : {&control.model->llama_proj->weight, &control.model->llama_proj->bias}) {
      if (!t->defined()) continue;
      std::vector<int64_t> order(static_cast<size_t>(t->numel()));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      const auto flat = t->reshape({-1}).index_select(0, torch::tensor(order, torch::kLong).to(t->device()));
      t->copy_(flat.view(t->sizes()));
    }
  }
  result.shuffled =
      score(control, items, options, options.pictures_dir.empty() ? "" : options.pictures_dir + "/shuffled", nullptr);
  return result;
}

}  // namespace minigpt4::quickstart
