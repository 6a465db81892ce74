#include "minigpt4/chat/explain.h"

#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

namespace minigpt4 {

namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string trimmed(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

bool is_punctuation(const std::string& s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::ispunct(static_cast<unsigned char>(c)) != 0; });
}

}  // namespace

at::Tensor patch_saliency(const at::Tensor& vision_token_grad, int64_t grid) {
  const auto g = vision_token_grad.to(torch::kCPU, torch::kFloat32);
  const int64_t patches = grid * grid;
  if (g.dim() != 2 || (g.size(0) != patches + 1 && g.size(0) != patches))
    fail("explain: a gradient over {} vision tokens does not fit a {}x{} patch grid", g.dim() ? g.size(0) : 0, grid,
         grid);
  const auto norms = g.slice(0, g.size(0) - patches).norm(2, -1);  // without the cls token: it is no place
  const double total = norms.sum().item<double>();
  const auto map = total > 0 ? norms / total : torch::full({patches}, 1.0 / static_cast<double>(patches));
  return map.view({grid, grid});
}

std::vector<AnswerWord> answer_words(const std::vector<int64_t>& tokens, const Tokenizer& tokenizer,
                                     const std::vector<int64_t>& stop_ids) {
  // The visible answer: up to eos or a stop id, and before a '###' stop string (whose
  // first '#' tokens would otherwise pass for words).
  std::vector<int64_t> answer;
  for (const int64_t t : tokens) {
    if (t == tokenizer.eos_id() || std::count(stop_ids.begin(), stop_ids.end(), t)) break;
    answer.push_back(t);
  }
  const auto full = tokenizer.decode(answer);
  const size_t visible = std::min(full.find("###"), full.size());

  std::vector<AnswerWord> words;
  std::string previous;
  std::vector<int64_t> prefix;
  for (size_t i = 0; i < answer.size(); ++i) {
    prefix.push_back(answer[i]);
    const auto text = tokenizer.decode(prefix);
    size_t common = 0;
    while (common < previous.size() && common < text.size() && previous[common] == text[common]) ++common;
    previous = text;
    if (common >= visible) break;
    const auto piece = text.substr(common, visible - std::min(common, visible));
    const auto shown = trimmed(piece);
    if (shown.empty()) {  // white space, or a character still incomplete: part of the open word
      if (!words.empty()) words.back().token_indices.push_back(static_cast<int64_t>(i));
      continue;
    }
    const bool new_word =
        words.empty() || is_space(piece.front()) || is_punctuation(shown) || is_punctuation(words.back().text);
    if (new_word) {
      words.push_back({shown, {}});
    } else {
      words.back().text += piece;
    }
    words.back().token_indices.push_back(static_cast<int64_t>(i));
  }
  for (auto& w : words) w.text = trimmed(w.text);
  return words;
}

std::string explanation_png(const cv::Mat& rgb, const at::Tensor& map) {
  if (rgb.empty() || rgb.type() != CV_8UC3) fail("explain: the overlay needs an 8-bit RGB picture");
  const auto m = map.to(torch::kCPU, torch::kFloat32).contiguous();
  if (m.dim() != 2) fail("explain: a map must be [rows, columns]");
  cv::Mat grid(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_32F);
  std::memcpy(grid.data, m.data_ptr<float>(), sizeof(float) * static_cast<size_t>(m.numel()));
  double low = 0, high = 0;
  cv::minMaxLoc(grid, &low, &high);
  cv::Mat scaled;  // least -> 0 (blue), most -> 255 (red); a flat map stays blue
  const double range = high - low;
  grid.convertTo(scaled, CV_8U, range > 1e-12 * std::max(high, 1e-30) ? 255.0 / range : 0.0,
                 range > 1e-12 * std::max(high, 1e-30) ? -255.0 * low / range : 0.0);
  cv::Mat heat_small, heat;
  // Nearest: one block per patch, which is what the map resolves; smoothing would suggest more.
  cv::resize(scaled, heat_small, rgb.size(), 0, 0, cv::INTER_NEAREST);
  cv::applyColorMap(heat_small, heat, cv::COLORMAP_JET);  // BGR
  cv::Mat bgr, blended;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  cv::addWeighted(bgr, 0.5, heat, 0.5, 0.0, blended);
  std::vector<uchar> png;
  if (!cv::imencode(".png", blended, png)) fail("explain: could not encode the overlay as PNG");
  return std::string(png.begin(), png.end());
}

std::string explanation_png(const at::Tensor& rgb_uint8_hwc, const at::Tensor& map) {
  const auto rgb = rgb_uint8_hwc.to(torch::kCPU).contiguous();
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != torch::kUInt8)
    fail("explain: the overlay needs uint8 [H, W, 3] RGB");
  const cv::Mat view(static_cast<int>(rgb.size(0)), static_cast<int>(rgb.size(1)), CV_8UC3, rgb.data_ptr<uint8_t>());
  return explanation_png(view, map);
}

nlohmann::json explanation_json(const Explanation& e) {
  const auto rows = [](const at::Tensor& map) {
    const auto m = map.to(torch::kCPU, torch::kFloat32).contiguous();
    nlohmann::json out = nlohmann::json::array();
    for (int64_t r = 0; r < m.size(0); ++r) {
      nlohmann::json row = nlohmann::json::array();
      for (int64_t c = 0; c < m.size(1); ++c) row.push_back(std::round(m[r][c].item<float>() * 1e6) / 1e6);
      out.push_back(std::move(row));
    }
    return out;
  };
  nlohmann::json words = nlohmann::json::array();
  for (const auto& w : e.words) words.push_back({{"word", w.word}, {"patches", rows(w.map)}});
  return {{"image_index", e.image_index},
          {"grid", {e.grid, e.grid}},
          {"patches", rows(e.answer_map)},
          {"words", std::move(words)}};
}

}  // namespace minigpt4
