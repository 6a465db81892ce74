#pragma once
// Constrained decoding to JSON (OpenAI's response_format {"type": "json_object"}, llama.cpp's
// JSON grammar): before each token is chosen, every token whose text would take the answer
// out of the set of JSON prefixes is masked, and once the value is complete only the end of
// sequence is left. The check is a pushdown automaton over bytes (RFC 8259), run over the
// answer so far and then over each vocabulary token's text from that state.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4 {

class Tokenizer;

// Where a JSON text stands after some bytes: a stack of open containers and the state within
// the innermost value. Copyable and small; feed() advances it.
class JsonPrefix {
 public:
  // Whether `bytes` may follow what was fed so far (state updated only when they may).
  bool feed(const std::string& bytes);
  bool feed(char byte);
  // A whole value has been read (only white space may follow).
  bool complete() const { return state_ == State::Done; }
  bool require_object = true;  // json_object: the top-level value must be an object
  static constexpr size_t kMaxDepth = 64;

 private:
  enum class State : uint8_t {
    Value,        // before a value (white space allowed)
    ObjectFirst,  // after '{': a key or '}'
    Key,          // after ',' in an object: a key
    Colon,        // after a key: ':'
    AfterValue,   // after a value inside a container: ',' or the closing bracket
    ArrayFirst,   // after '[': a value or ']'
    String,       // inside a string
    Escape,       // after '\'
    Unicode,      // inside \uXXXX (count_ hex digits left)
    Number,       // inside a number (number_ sub-state)
    Literal,      // inside true/false/null (literal_ and count_)
    Done,         // the top-level value is complete
  };
  enum class Num : uint8_t { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpInt };
  bool value_start(char c);
  bool end_value();  // a value ended: back to its container
  bool after_number(char c);

  std::string stack_;  // '{' or '[' per open container (short: no allocation when copied)
  State state_ = State::Value;
  bool string_is_key_ = false;
  Num number_ = Num::Int;
  const char* literal_ = nullptr;
  int count_ = 0;
};

// The mask of one step for a tokenizer's vocabulary: the texts of all tokens, made once.
class JsonConstraint {
 public:
  JsonConstraint(const Tokenizer& tokenizer, int64_t vocab_size, int64_t eos_token_id);
  // Adds -inf to the scores [V] or [1, V] of every token that cannot follow `answer` (the
  // text generated so far); after a complete value, to all but eos. A prefix that already
  // left JSON (it cannot, under this mask) leaves the scores as they are.
  void mask(at::Tensor& scores, const std::string& answer) const;

 private:
  std::vector<std::string> texts_;  // per token id, as it continues a text
  int64_t eos_;
};

}  // namespace minigpt4
