// Boxes in an answer: ConLoRA's `<bin_N>` quadruples and MiniGPT-v2's `{<N><N><N><N>}`
// (grounding.h describes both conventions and the rounding).
#include "minigpt4/chat/grounding.h"
#include "minigpt4/common/strings.h"

#include <algorithm>
#include <optional>

namespace minigpt4 {

namespace {

enum class Kind { Bin, Number };

// Larger numbers are held at this value: they are clamped to the grid anyway.
constexpr int64_t kSaturated = 1'000'000'000;

struct Token {
  Kind kind;
  int64_t value;
  size_t end;  // one past '>'
};

bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

bool starts_with_at(const std::string& s, size_t at, const char* prefix) {
  for (size_t i = 0; prefix[i]; ++i)
    if (at + i >= s.size() || s[at + i] != prefix[i]) return false;
  return true;
}

size_t skip_spaces(const std::string& s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

// `<bin_N>` or `<N>` at `at`, N an optional '-' and at least one digit.
std::optional<Token> coordinate_at(const std::string& s, size_t at) {
  if (at >= s.size() || s[at] != '<') return std::nullopt;
  size_t i = at + 1;
  Kind kind = Kind::Number;
  if (starts_with_at(s, i, "bin_")) kind = Kind::Bin, i += 4;
  const bool negative = i < s.size() && s[i] == '-';
  if (negative) ++i;
  const size_t digits = i;
  int64_t value = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) value = std::min(kSaturated, value * 10 + (s[i] - '0'));
  if (i == digits || i >= s.size() || s[i] != '>') return std::nullopt;
  return Token{kind, negative ? -value : value, i + 1};
}

// round(value * size / divisor), halves up, for 0 <= value <= divisor, in integers.
int64_t scale(int64_t value, int64_t size, int64_t divisor) { return (2 * value * size + divisor) / (2 * divisor); }

// Four coordinates of one kind from `at` (white space between them allowed), optionally in
// braces; the pixels are filled in when the size is known.
std::optional<GroundingBox> box_at(const std::string& s, size_t at, int64_t width, int64_t height,
                                   const GroundingOptions& options) {
  size_t i = at;
  const bool braced = i < s.size() && s[i] == '{';
  if (braced) i = skip_spaces(s, i + 1);
  GroundingBox box;
  Kind kind = Kind::Number;
  for (int k = 0; k < 4; ++k) {
    if (k > 0) i = skip_spaces(s, i);
    const auto token = coordinate_at(s, i);
    if (!token || (k > 0 && token->kind != kind)) return std::nullopt;
    kind = token->kind;
    box.bins[static_cast<size_t>(k)] = token->value;
    i = token->end;
  }
  if (braced) {
    i = skip_spaces(s, i);
    if (i >= s.size() || s[i] != '}') return std::nullopt;  // the bare tokens are tried from the next character
    ++i;
  }
  box.begin = at;
  box.end = i;
  // The largest bin and the divisor that maps it to the far edge.
  int64_t last = 0;
  if (kind == Kind::Bin) {
    box.format = "conlora";
    box.grid = std::max<int64_t>(2, options.bin_grid);
    last = box.grid - 1;
  } else {
    box.format = "minigptv2";
    box.grid = std::max<int64_t>(1, options.number_grid);
    last = box.grid;
  }
  std::array<int64_t, 4> clamped{};
  for (size_t k = 0; k < 4; ++k) {
    clamped[k] = std::clamp<int64_t>(box.bins[k], 0, last);
    if (clamped[k] != box.bins[k]) box.clamped = true;
  }
  if (width > 0 && height > 0) {
    box.has_pixels = true;
    const int64_t x0 = scale(clamped[0], width, last), y0 = scale(clamped[1], height, last);
    const int64_t x1 = scale(clamped[2], width, last), y1 = scale(clamped[3], height, last);
    box.x0 = std::min(x0, x1), box.x1 = std::max(x0, x1);
    box.y0 = std::min(y0, y1), box.y1 = std::max(y0, y1);
  }
  return box;
}

}  // namespace

std::vector<GroundingBox> find_boxes(const std::string& answer, int64_t width, int64_t height,
                                     const GroundingOptions& options) {
  std::vector<GroundingBox> boxes;
  // A phrase `<p>label</p>` names the boxes right after it (white space and `<delim>` between
  // them allowed); any other text ends it.
  std::string label;
  bool label_open = false;
  size_t i = 0;
  while (i < answer.size()) {
    if (starts_with_at(answer, i, "<p>")) {
      if (const auto close = answer.find("</p>", i + 3); close != std::string::npos) {
        label = strip(answer.substr(i + 3, close - i - 3));
        label_open = true;
        i = close + 4;
        continue;
      }
    }
    if (answer[i] == '{' || answer[i] == '<') {
      if (auto box = box_at(answer, i, width, height, options)) {
        if (label_open) box->label = label;
        i = box->end;
        boxes.push_back(std::move(*box));
        continue;
      }
    }
    if (starts_with_at(answer, i, "<delim>")) {
      i += 7;
      continue;
    }
    if (!is_space(answer[i]) && answer[i] != '{' && answer[i] != '}') label_open = false;
    ++i;
  }
  return boxes;
}

}  // namespace minigpt4
