#include "minigpt4/generate/json_constraint.h"

#include "minigpt4/common/strings.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <torch/torch.h>

#include <array>
#include <limits>

namespace minigpt4 {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

const std::vector<std::string> kBooleans = {"false", "true"};
const std::vector<std::string> kNull = {"null"};
constexpr int kMaxChoiceNesting = 16;  // anyOf within anyOf, before any byte is read

// The byte at `at` of a literal, or -1 where it ends: within a range of sorted literals that
// share their first `at` bytes, this never decreases.
int byte_at(const std::string& literal, uint32_t at) {
  return literal.size() > at ? static_cast<unsigned char>(literal[at]) : -1;
}

}  // namespace

JsonPrefix::JsonPrefix() : JsonPrefix(JsonSchema::any_object()) {}

JsonPrefix::JsonPrefix(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  Reading start;
  start.node = schema_->root();
  readings_.push_back(std::move(start));
}

bool JsonPrefix::feed(const std::string& bytes) {
  JsonPrefix next = *this;
  for (const char c : bytes)
    if (!next.feed(c)) return false;
  *this = std::move(next);
  return true;
}

bool JsonPrefix::feed(char c) {
  std::vector<Reading> forks;
  size_t alive = 0;
  for (size_t i = 0; i < readings_.size(); ++i) {
    if (!advance(readings_[i], c, forks)) continue;
    if (i != alive) readings_[alive] = std::move(readings_[i]);  // never onto itself: that empties it
    ++alive;
  }
  readings_.resize(alive);
  for (auto& fork : forks)
    if (readings_.size() < kMaxReadings) readings_.push_back(std::move(fork));
  return !readings_.empty();
}

bool JsonPrefix::complete() const {
  for (const auto& r : readings_) {
    if (r.state == State::Done) return true;
    if (!r.stack.empty()) continue;
    if (r.state == State::Number &&
        (r.number == Num::Zero || r.number == Num::Int || r.number == Num::Frac || r.number == Num::ExpInt))
      return true;
    if (r.state == State::Literal && byte_at((*r.literals)[r.first], r.matched) < 0) return true;
  }
  return false;
}

bool JsonPrefix::may_add_key(const Reading& r) const {
  const auto& top = r.stack.back();
  const auto& object = schema_->node(top.node);
  if (object.additional != JsonSchema::kNone) return true;
  return top.seen != (object.properties.size() == 64 ? ~uint64_t{0} : (uint64_t{1} << object.properties.size()) - 1);
}

bool JsonPrefix::has_required(const Reading& r) const {
  const auto& top = r.stack.back();
  const auto required = schema_->node(top.node).required;
  return (top.seen & required) == required;
}

// A value ends with its last byte (a closing bracket or quote) or, for numbers and literals,
// before the first byte that cannot continue it; then its container takes over.
static void close_value(JsonPrefix::Reading& r) {
  r.state = r.stack.empty() ? JsonPrefix::State::Done : JsonPrefix::State::AfterValue;
  r.space = false, r.newlines = 0, r.indent = 0;
}

// " ", or "\n" or "\n\n" followed by up to kMaxIndent spaces and tabs.
static bool white_space(JsonPrefix::Reading& r, char c) {
  if (r.space) return false;
  if (c == '\n') return r.indent == 0 && r.newlines < 2 && (++r.newlines, true);
  if (c == '\r') return false;
  if (r.newlines == 0) return c == ' ' && !r.indent && (r.space = true, true);
  return r.indent < JsonPrefix::kMaxIndent && (++r.indent, true);
}

bool JsonPrefix::advance(Reading& r, char c, std::vector<Reading>& forks) const {
  switch (r.state) {
    case State::Value:
    case State::ObjectFirst:
    case State::Key:
    case State::Colon:
    case State::AfterValue:
    case State::ArrayFirst:
      if (is_space(c)) return white_space(r, c);
      r.space = false, r.newlines = 0, r.indent = 0;
      break;
    case State::String:
    case State::Escape:
    case State::Unicode: return r.is_key ? key_byte(r, c) : string_byte(r, c);
    case State::Number: return number_byte(r, c, forks);
    case State::Literal: return literal_byte(r, c, forks);
    case State::Done: return false;
  }
  switch (r.state) {
    case State::Value: return start_value(r, r.node, c, forks);
    case State::ObjectFirst:
    case State::Key:
      if (c == '"' && may_add_key(r)) return r.state = State::String, r.is_key = true, r.key.clear(), true;
      if (c == '}' && r.state == State::ObjectFirst && has_required(r)) return r.stack.pop_back(), close_value(r), true;
      return false;
    case State::Colon:
      if (c == ':') return r.state = State::Value, true;
      return false;
    case State::AfterValue: {
      auto& top = r.stack.back();
      const auto& node = schema_->node(top.node);
      if (top.object) {
        if (c == ',' && may_add_key(r)) return r.state = State::Key, true;
        if (c == '}' && has_required(r)) return r.stack.pop_back(), close_value(r), true;
      } else {
        if (c == ',' && top.count < node.max_items)
          return ++top.count, r.state = State::Value, r.node = node.items, true;
        if (c == ']' && top.count >= node.min_items) return r.stack.pop_back(), close_value(r), true;
      }
      return false;
    }
    case State::ArrayFirst: {
      auto& top = r.stack.back();
      const auto& node = schema_->node(top.node);
      if (c == ']') return node.min_items == 0 && (r.stack.pop_back(), close_value(r), true);
      if (node.max_items == 0) return false;
      top.count = 1;
      return start_value(r, node.items, c, forks);
    }
    default: return false;
  }
}

bool JsonPrefix::start_value(Reading& r, int index, char c, std::vector<Reading>& forks, int choices) const {
  const auto& node = schema_->node(index);
  if (!node.any_of.empty()) {
    if (choices >= kMaxChoiceNesting) return false;
    const Reading before = r;
    bool alive = false;
    for (const int choice : node.any_of) {
      Reading option = before;
      if (!start_value(option, choice, c, forks, choices + 1)) continue;
      if (!alive)
        r = std::move(option), alive = true;
      else
        forks.push_back(std::move(option));
    }
    return alive;
  }
  r.node = index;
  const auto start_literal = [&](const std::vector<std::string>& literals) {
    // The literals beginning with c: a contiguous range of the sorted list.
    const auto begins = [&](const std::string& s) { return byte_at(s, 0) < static_cast<unsigned char>(c); };
    const auto first = std::partition_point(literals.begin(), literals.end(), begins);
    auto last = first;
    while (last != literals.end() && byte_at(*last, 0) == static_cast<unsigned char>(c)) ++last;
    if (first == last) return false;
    r.state = State::Literal, r.literals = &literals, r.matched = 1;
    r.first = static_cast<uint32_t>(first - literals.begin()), r.last = static_cast<uint32_t>(last - literals.begin());
    return true;
  };
  if (node.has_literals) return start_literal(node.literals);
  switch (c) {
    case '{':
    case '[': {
      const bool object = c == '{';
      if (!(node.kinds & (object ? JsonSchema::kObject : JsonSchema::kArray)) || r.stack.size() >= kMaxDepth)
        return false;
      r.stack.push_back({index, object});
      r.state = object ? State::ObjectFirst : State::ArrayFirst;
      return true;
    }
    case '"':
      if (!(node.kinds & JsonSchema::kString)) return false;
      return r.state = State::String, r.is_key = false, r.length = 0, true;
    case 't':
    case 'f': return (node.kinds & JsonSchema::kBoolean) && start_literal(kBooleans);
    case 'n': return (node.kinds & JsonSchema::kNull) && start_literal(kNull);
    default:
      if (c != '-' && !is_digit(c)) return false;
      if (!(node.kinds & (JsonSchema::kInteger | JsonSchema::kNumber))) return false;
      r.state = State::Number, r.integer = !(node.kinds & JsonSchema::kNumber);
      r.number = c == '-' ? Num::Minus : c == '0' ? Num::Zero : Num::Int;
      return true;
  }
}

// String bytes, RFC 8259: no raw control characters, escapes as listed; minLength/maxLength
// count characters (a UTF-8 sequence or an escape is one).
bool JsonPrefix::string_byte(Reading& r, char c) const {
  const auto& node = schema_->node(r.node);
  switch (r.state) {
    case State::String:
      if (c == '"') return r.length >= node.min_length && (close_value(r), true);
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if ((c & 0xC0) != 0x80) {  // not a UTF-8 continuation byte: a new character
        if (r.length >= node.max_length) return false;
        ++r.length;
      }
      if (c == '\\') r.state = State::Escape;
      return true;
    case State::Escape:
      if (c == 'u') return r.state = State::Unicode, r.hex_left = 4, true;
      if (std::string_view("\"\\/bfnrt").find(c) == std::string_view::npos) return false;
      return r.state = State::String, true;
    default:  // Unicode
      if (!is_hex(c)) return false;
      if (--r.hex_left == 0) r.state = State::String;
      return true;
  }
}

// A key's bytes: a JSON string that, where the object takes no other keys, stays a prefix of
// a property not written yet.
bool JsonPrefix::key_byte(Reading& r, char c) const {
  if (r.state == State::String && c == '"') return end_key(r);
  if (r.state == State::String) {
    if (static_cast<unsigned char>(c) < 0x20) return false;
    if (c == '\\') r.state = State::Escape;
  } else if (r.state == State::Escape) {
    if (c == 'u')
      r.state = State::Unicode, r.hex_left = 4;
    else if (std::string_view("\"\\/bfnrt").find(c) != std::string_view::npos)
      r.state = State::String;
    else
      return false;
  } else {
    if (!is_hex(c)) return false;
    if (--r.hex_left == 0) r.state = State::String;
  }
  r.key.push_back(c);
  const auto& top = r.stack.back();
  const auto& object = schema_->node(top.node);
  if (object.additional != JsonSchema::kNone) return true;
  for (size_t i = 0; i < object.properties.size(); ++i)
    if (!(top.seen >> i & 1) && starts_with(object.properties[i].key, r.key)) return true;
  return false;
}

bool JsonPrefix::end_key(Reading& r) const {
  auto& top = r.stack.back();
  const auto& object = schema_->node(top.node);
  int value_node = object.additional;
  for (size_t i = 0; i < object.properties.size(); ++i)
    if (object.properties[i].key == r.key) {
      if (top.seen >> i & 1) return false;  // written already
      top.seen |= uint64_t{1} << i;
      value_node = object.properties[i].node;
      break;
    }
  if (value_node == JsonSchema::kNone) return false;
  r.state = State::Colon, r.node = value_node, r.is_key = false;
  return true;
}

bool JsonPrefix::number_byte(Reading& r, char c, std::vector<Reading>& forks) const {
  const bool fraction = !r.integer;
  switch (r.number) {
    case Num::Minus:
      if (!is_digit(c)) return false;
      return r.number = c == '0' ? Num::Zero : Num::Int, true;
    case Num::Zero:
    case Num::Int:
      if (is_digit(c) && r.number == Num::Int) return true;
      if (fraction && c == '.') return r.number = Num::Dot, true;
      if (fraction && (c == 'e' || c == 'E')) return r.number = Num::Exp, true;
      break;
    case Num::Dot:
      if (!is_digit(c)) return false;
      return r.number = Num::Frac, true;
    case Num::Frac:
      if (is_digit(c)) return true;
      if (c == 'e' || c == 'E') return r.number = Num::Exp, true;
      break;
    case Num::Exp:
      if (c == '+' || c == '-') return r.number = Num::ExpSign, true;
      if (!is_digit(c)) return false;
      return r.number = Num::ExpInt, true;
    case Num::ExpSign:
      if (!is_digit(c)) return false;
      return r.number = Num::ExpInt, true;
    case Num::ExpInt:
      if (is_digit(c)) return true;
      break;
  }
  // A number ends at the first byte that cannot continue it, which then counts for what follows.
  close_value(r);
  return advance(r, c, forks);
}

bool JsonPrefix::literal_byte(Reading& r, char c, std::vector<Reading>& forks) const {
  const auto& literals = *r.literals;
  const int want = static_cast<unsigned char>(c);
  const auto begin = literals.begin() + r.first, end = literals.begin() + r.last;
  const auto first =
      std::partition_point(begin, end, [&](const std::string& s) { return byte_at(s, r.matched) < want; });
  const auto last =
      std::partition_point(first, end, [&](const std::string& s) { return byte_at(s, r.matched) == want; });
  if (first != last) {
    r.first = static_cast<uint32_t>(first - literals.begin()), r.last = static_cast<uint32_t>(last - literals.begin());
    ++r.matched;
    return true;
  }
  if (byte_at(*begin, r.matched) >= 0) return false;  // no literal ends here
  close_value(r);
  return advance(r, c, forks);
}

JsonConstraint::JsonConstraint(const Tokenizer& tokenizer, int64_t vocab_size, int64_t eos_token_id)
    : eos_(eos_token_id) {
  // A token's text as it continues an answer: decoded after a plain word and cut from there,
  // because decoding a token alone drops what a tokenizer drops at the start of a text (the
  // sentencepiece word-start space, also from "▁▁", which is two spaces mid-text).
  const auto anchor_ids = tokenizer.encode("a", /*add_special_tokens=*/false);
  const int64_t anchor = anchor_ids.empty() ? -1 : anchor_ids.front();
  const std::string anchor_text = anchor < 0 ? "" : tokenizer.decode({anchor}, /*skip_special_tokens=*/true);
  const int64_t known = std::min(vocab_size, tokenizer.vocab_size());
  texts_.resize(static_cast<size_t>(vocab_size));
  for (int64_t id = 0; id < known; ++id) {
    if (id == eos_token_id) continue;
    std::string text;
    const auto after = anchor < 0 ? "" : tokenizer.decode({anchor, id}, /*skip_special_tokens=*/true);
    if (anchor >= 0 && starts_with(after, anchor_text))
      text = after.substr(anchor_text.size());
    else
      text = tokenizer.decode({id}, /*skip_special_tokens=*/true);
    // '#' never: the template's stop string '###' would end the answer in the middle.
    if (text.find('#') != std::string::npos) text.clear();
    texts_[static_cast<size_t>(id)] = std::move(text);
  }
}

void JsonConstraint::mask(at::Tensor& scores, const std::string& answer,
                          const std::shared_ptr<const JsonSchema>& schema) const {
  const auto n = static_cast<int64_t>(texts_.size());
  std::vector<uint8_t> banned(static_cast<size_t>(n), 1);
  bool any = false;
  JsonPrefix prefix(schema);
  if (prefix.feed(answer)) {
    // Most tokens fail on their first byte: find the bytes that may come next once.
    std::array<bool, 256> may_start{};
    for (int b = 0; b < 256; ++b) {
      JsonPrefix next = prefix;
      may_start[static_cast<size_t>(b)] = next.feed(static_cast<char>(b));
    }
    for (int64_t id = 0; id < n; ++id) {
      const auto& text = texts_[static_cast<size_t>(id)];
      if (text.empty() || !may_start[static_cast<unsigned char>(text[0])]) continue;
      JsonPrefix next = prefix;
      if (next.feed(text)) banned[static_cast<size_t>(id)] = 0, any = true;
    }
    if (prefix.complete() && eos_ >= 0 && eos_ < n) banned[static_cast<size_t>(eos_)] = 0, any = true;
  }
  // Nothing can follow (an enum value holding '#', a schema that nests past kMaxDepth): end.
  if (!any && eos_ >= 0 && eos_ < n) banned[static_cast<size_t>(eos_)] = 0;
  const auto mask = torch::from_blob(banned.data(), {n}, torch::kUInt8).to(torch::kBool).to(scores.device());
  scores.masked_fill_(mask.view(scores.sizes()), -std::numeric_limits<float>::infinity());
}

}  // namespace minigpt4
