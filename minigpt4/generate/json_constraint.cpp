#include "minigpt4/generate/json_constraint.h"

#include "minigpt4/common/strings.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <torch/torch.h>

#include <limits>

namespace minigpt4 {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

bool JsonPrefix::feed(const std::string& bytes) {
  JsonPrefix next = *this;
  for (const char c : bytes)
    if (!next.feed(c)) return false;
  *this = std::move(next);
  return true;
}

bool JsonPrefix::value_start(char c) {
  if (stack_.empty() && require_object && c != '{') return false;
  switch (c) {
    case '{':
    case '[':
      if (stack_.size() >= kMaxDepth) return false;
      stack_.push_back(c);
      state_ = c == '{' ? State::ObjectFirst : State::ArrayFirst;
      return true;
    case '"': state_ = State::String, string_is_key_ = false; return true;
    case '-': state_ = State::Number, number_ = Num::Minus; return true;
    case 't':
    case 'f':
    case 'n':
      state_ = State::Literal, literal_ = c == 't' ? "true" : c == 'f' ? "false" : "null", count_ = 1;
      return true;
    default:
      if (!is_digit(c)) return false;
      state_ = State::Number, number_ = c == '0' ? Num::Zero : Num::Int;
      return true;
  }
}

bool JsonPrefix::end_value() {
  state_ = stack_.empty() ? State::Done : State::AfterValue;
  return true;
}

// A number ends at the first byte that cannot continue it, which then counts for what follows.
bool JsonPrefix::after_number(char c) {
  if (number_ != Num::Zero && number_ != Num::Int && number_ != Num::Frac && number_ != Num::ExpInt) return false;
  end_value();
  return feed(c);
}

bool JsonPrefix::feed(char c) {
  switch (state_) {
    case State::Value: return is_space(c) || value_start(c);
    case State::ObjectFirst:
      if (is_space(c)) return true;
      if (c == '"') return state_ = State::String, string_is_key_ = true, true;
      if (c == '}') return stack_.pop_back(), end_value();
      return false;
    case State::Key:
      if (is_space(c)) return true;
      if (c == '"') return state_ = State::String, string_is_key_ = true, true;
      return false;
    case State::Colon:
      if (is_space(c)) return true;
      if (c == ':') return state_ = State::Value, true;
      return false;
    case State::AfterValue:
      if (is_space(c)) return true;
      if (c == ',') return state_ = stack_.back() == '{' ? State::Key : State::Value, true;
      if ((c == '}' && stack_.back() == '{') || (c == ']' && stack_.back() == '['))
        return stack_.pop_back(), end_value();
      return false;
    case State::ArrayFirst:
      if (is_space(c)) return true;
      if (c == ']') return stack_.pop_back(), end_value();
      return value_start(c);
    case State::String:
      if (c == '"') return string_is_key_ ? (state_ = State::Colon, true) : end_value();
      if (c == '\\') return state_ = State::Escape, true;
      return static_cast<unsigned char>(c) >= 0x20;
    case State::Escape:
      if (c == 'u') return state_ = State::Unicode, count_ = 4, true;
      if (std::string_view("\"\\/bfnrt").find(c) != std::string_view::npos) return state_ = State::String, true;
      return false;
    case State::Unicode:
      if (!is_hex(c)) return false;
      if (--count_ == 0) state_ = State::String;
      return true;
    case State::Number:
      switch (number_) {
        case Num::Minus:
          if (!is_digit(c)) return false;
          number_ = c == '0' ? Num::Zero : Num::Int;
          return true;
        case Num::Zero:
        case Num::Int:
          if (is_digit(c) && number_ == Num::Int) return true;
          if (c == '.') return number_ = Num::Dot, true;
          if (c == 'e' || c == 'E') return number_ = Num::Exp, true;
          return after_number(c);
        case Num::Dot:
          if (!is_digit(c)) return false;
          return number_ = Num::Frac, true;
        case Num::Frac:
          if (is_digit(c)) return true;
          if (c == 'e' || c == 'E') return number_ = Num::Exp, true;
          return after_number(c);
        case Num::Exp:
          if (c == '+' || c == '-') return number_ = Num::ExpSign, true;
          if (!is_digit(c)) return false;
          return number_ = Num::ExpInt, true;
        case Num::ExpSign:
          if (!is_digit(c)) return false;
          return number_ = Num::ExpInt, true;
        case Num::ExpInt:
          if (is_digit(c)) return true;
          return after_number(c);
      }
      return false;
    case State::Literal:
      if (c != literal_[count_]) return false;
      if (literal_[++count_] == '\0') end_value();
      return true;
    case State::Done: return is_space(c);
  }
  return false;
}

JsonConstraint::JsonConstraint(const Tokenizer& tokenizer, int64_t vocab_size, int64_t eos_token_id)
    : eos_(eos_token_id) {
  static const std::string kWordStart = "\xE2\x96\x81";  // sentencepiece's U+2581 before a word
  const int64_t known = std::min(vocab_size, tokenizer.vocab_size());
  texts_.resize(static_cast<size_t>(vocab_size));
  for (int64_t id = 0; id < known; ++id) {
    if (id == eos_token_id) continue;
    auto text = tokenizer.decode({id}, /*skip_special_tokens=*/true);
    if (starts_with(tokenizer.id_to_piece(id), kWordStart) && !starts_with(text, " ")) text = " " + text;
    // '#' never: the template's stop string '###' would end the answer in the middle.
    if (text.find('#') != std::string::npos) text.clear();
    texts_[static_cast<size_t>(id)] = std::move(text);
  }
}

void JsonConstraint::mask(at::Tensor& scores, const std::string& answer) const {
  JsonPrefix prefix;
  if (!prefix.feed(answer)) return;
  const auto n = static_cast<int64_t>(texts_.size());
  std::vector<uint8_t> banned(static_cast<size_t>(n), 1);
  if (prefix.complete()) {
    if (eos_ >= 0 && eos_ < n) banned[static_cast<size_t>(eos_)] = 0;
  } else {
    for (int64_t id = 0; id < n; ++id) {
      const auto& text = texts_[static_cast<size_t>(id)];
      if (text.empty()) continue;
      JsonPrefix next = prefix;
      if (next.feed(text)) banned[static_cast<size_t>(id)] = 0;
    }
  }
  const auto mask = torch::from_blob(banned.data(), {n}, torch::kUInt8).to(torch::kBool).to(scores.device());
  scores.masked_fill_(mask.view(scores.sizes()), -std::numeric_limits<float>::infinity());
}

}  // namespace minigpt4
