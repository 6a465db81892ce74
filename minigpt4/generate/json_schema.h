#pragma once
// A JSON Schema compiled for constrained decoding (OpenAI's response_format json_schema):
// a graph of nodes that JsonPrefix (json_constraint.h) walks byte by byte. Only keywords
// whose effect can be checked on a prefix as it grows are taken; any other constraint is
// refused by name rather than silently ignored (docs/serving.md lists the subset).
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4 {

class JsonSchema {
 public:
  // JSON kinds a node allows; a number node also takes integers.
  enum Kind : uint8_t {
    kNull = 1,
    kBoolean = 2,
    kInteger = 4,
    kNumber = 8,
    kString = 16,
    kArray = 32,
    kObject = 64,
    kAnyKind = 127
  };
  static constexpr int kNone = -1;              // no node: e.g. additionalProperties false
  static constexpr size_t kMaxProperties = 64;  // per object (a bit each in JsonPrefix)

  struct Property {
    std::string key;  // as written between the quotes in compact JSON (escaped)
    int node = 0;
  };
  struct Node {
    uint8_t kinds = kAnyKind;
    // enum / const: the value is one of these, written as compact JSON (sorted bytewise).
    bool has_literals = false;
    std::vector<std::string> literals;
    std::vector<int> any_of;  // when set, the value matches one of these nodes instead
    // Objects.
    std::vector<Property> properties;
    uint64_t required = 0;  // bit i: properties[i] must appear
    int additional = 0;     // node of the other keys' values, or kNone
    // Arrays.
    int items = 0;
    int64_t min_items = 0, max_items = std::numeric_limits<int64_t>::max();
    // Strings, in characters (code points).
    int64_t min_length = 0, max_length = std::numeric_limits<int64_t>::max();
  };

  // Throws minigpt4::Error naming the keyword and where it sits (a JSON pointer) for a
  // schema outside the subset or one no value can satisfy.
  static std::shared_ptr<const JsonSchema> compile(const nlohmann::json& schema);
  // Any JSON object: response_format json_object.
  static std::shared_ptr<const JsonSchema> any_object();

  const Node& node(int index) const { return nodes_[static_cast<size_t>(index)]; }
  int root() const { return root_; }

 private:
  std::vector<Node> nodes_;  // node 0 is any value
  int root_ = 0;
  friend class JsonSchemaCompiler;
};

}  // namespace minigpt4
