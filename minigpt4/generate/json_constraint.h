#pragma once
// Constrained decoding to JSON (OpenAI's response_format json_object / json_schema, llama.cpp's
// grammars): before each token is chosen, every token whose text would take the answer out of
// the set of prefixes of values the schema accepts is masked, and once the value is complete
// only the end of sequence is left. The check is a pushdown automaton over bytes (RFC 8259
// plus the schema's constraints, json_schema.h), run over the answer so far and then over each
// vocabulary token's text from that state.
#include "minigpt4/generate/json_schema.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4 {

class Tokenizer;

// Where a JSON text stands after some bytes, for one schema. It keeps every reading the
// schema allows (anyOf's choices may share a prefix), each a stack of open containers and
// the state within the innermost value. feed() advances it.
//
// As text to generate, not to validate: white space between tokens is one space, or one or
// two newlines and at most kMaxIndent spaces or tabs (llama.cpp's JSON grammars allow the
// same), and nothing may follow the value, so that a model under the mask comes to an end.
class JsonPrefix {
 public:
  JsonPrefix();  // any JSON object (json_object)
  explicit JsonPrefix(std::shared_ptr<const JsonSchema> schema);
  // Whether `bytes` may follow what was fed so far (state updated only when they may).
  bool feed(const std::string& bytes);
  bool feed(char byte);
  // A whole value has been read: the text may end here.
  bool complete() const;
  static constexpr size_t kMaxDepth = 64;
  static constexpr int kMaxIndent = 20;
  static constexpr size_t kMaxReadings = 32;  // anyOf's choices alive at once

  enum class State : uint8_t {
    Value,        // before a value (white space allowed)
    ObjectFirst,  // after '{': a key or '}'
    Key,          // after ',' in an object: a key
    Colon,        // after a key: ':'
    AfterValue,   // after a value inside a container: ',' or the closing bracket
    ArrayFirst,   // after '[': a value or ']'
    String,       // inside a string
    Escape,       // after '\'
    Unicode,      // inside \uXXXX (hex_left hex digits left)
    Number,       // inside a number (number sub-state)
    Literal,      // inside an enum/const value or true/false/null
    Done,         // the top-level value is complete
  };
  enum class Num : uint8_t { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpInt };
  struct Container {
    int node;
    bool object;
    uint64_t seen = 0;  // objects: the properties written so far, a bit each
    int64_t count = 0;  // arrays: items begun
  };
  // One reading of the text so far.
  struct Reading {
    std::vector<Container> stack;
    State state = State::Value;
    int node = 0;  // the node of the value being read (or about to be, in Value)
    // The white space run before the next token: a space, or newlines then indentation.
    bool space = false;
    uint8_t newlines = 0, indent = 0;
    bool is_key = false;  // the string is an object's key
    std::string key;      // a key's bytes so far, as written (escapes included)
    int64_t length = 0;   // a string's characters so far
    Num number = Num::Int;
    bool integer = false;                                // the number may not have a fraction or exponent
    const std::vector<std::string>* literals = nullptr;  // a literal's candidates, sorted
    uint32_t first = 0, last = 0, matched = 0;           // [first, last) match the `matched` bytes read
    uint8_t hex_left = 0;                                // \uXXXX digits still to come
  };

 private:
  // Each reads one byte into `r` in place (false: the reading ends); anyOf's other choices
  // that also take the byte go to `forks`.
  bool advance(Reading& r, char c, std::vector<Reading>& forks) const;
  bool start_value(Reading& r, int node, char c, std::vector<Reading>& forks, int choices = 0) const;
  bool string_byte(Reading& r, char c) const;
  bool key_byte(Reading& r, char c) const;
  bool end_key(Reading& r) const;
  bool number_byte(Reading& r, char c, std::vector<Reading>& forks) const;
  bool literal_byte(Reading& r, char c, std::vector<Reading>& forks) const;
  bool may_add_key(const Reading& r) const;
  bool has_required(const Reading& r) const;

  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Reading> readings_;
};

// The mask of one step for a tokenizer's vocabulary: the texts of all tokens, made once.
class JsonConstraint {
 public:
  JsonConstraint(const Tokenizer& tokenizer, int64_t vocab_size, int64_t eos_token_id);
  // Adds -inf to the scores [V] or [1, V] of every token that cannot follow `answer` (the
  // text generated so far) under `schema`; after a complete value, to all but eos. A prefix
  // that already left the schema, or one no token continues, leaves only eos.
  void mask(at::Tensor& scores, const std::string& answer, const std::shared_ptr<const JsonSchema>& schema) const;

 private:
  std::vector<std::string> texts_;  // per token id, as it continues a text
  int64_t eos_;
};

}  // namespace minigpt4
