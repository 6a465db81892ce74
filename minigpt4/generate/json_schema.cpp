#include "minigpt4/generate/json_schema.h"

#include "minigpt4/common/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>

namespace minigpt4 {

using json = nlohmann::json;

namespace {

// Words that describe a value without constraining it (format is an annotation by default
// in JSON Schema 2020-12; docs/serving.md says so).
const std::set<std::string, std::less<>> kAnnotations = {
    "title",       "description",      "default",         "examples", "$schema",   "$id",
    "$comment",    "format",           "deprecated",      "readOnly", "writeOnly", "$defs",
    "definitions", "contentMediaType", "contentEncoding", "$anchor"};
const std::set<std::string, std::less<>> kTaken = {
    "type",  "enum",     "const",    "anyOf",     "properties", "required", "additionalProperties",
    "items", "minItems", "maxItems", "minLength", "maxLength",  "$ref"};
constexpr int kMaxDepth = 64;       // nesting of the schema itself
constexpr size_t kMaxNodes = 4096;  // a schema is a request's part: keep it small
// anyOf's choices are tried side by side at every byte that starts a value, for every token
// of the vocabulary: a bound on them is a bound on the mask's cost.
constexpr size_t kMaxChoices = 64;

uint8_t kind_named(const json& name, const std::string& where) {
  static const std::map<std::string, uint8_t, std::less<>> kinds = {
      {"null", JsonSchema::kNull},     {"boolean", JsonSchema::kBoolean}, {"integer", JsonSchema::kInteger},
      {"number", JsonSchema::kNumber}, {"string", JsonSchema::kString},   {"array", JsonSchema::kArray},
      {"object", JsonSchema::kObject}};
  const auto it = name.is_string() ? kinds.find(name.get_ref<const std::string&>()) : kinds.end();
  if (it == kinds.end())
    fail("json_schema: 'type' at '{}' must name null, boolean, integer, number, string, array or object, got {}", where,
         name.dump());
  return it->second;
}

uint8_t kind_of(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return JsonSchema::kNull;
    case json::value_t::boolean: return JsonSchema::kBoolean;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return JsonSchema::kInteger | JsonSchema::kNumber;
    case json::value_t::number_float: return JsonSchema::kNumber;
    case json::value_t::string: return JsonSchema::kString;
    case json::value_t::array: return JsonSchema::kArray;
    default: return JsonSchema::kObject;
  }
}

int64_t count_in(const json& schema, const char* key, const std::string& where) {
  const auto& v = schema[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    fail("json_schema: '{}' at '{}' must be a non-negative integer, got {}", key, where, v.dump());
  return v.get<int64_t>();
}

}  // namespace

// Builds the node graph. A $ref names the node of what it points at, so recursive schemas
// become cycles in the graph (JsonPrefix bounds the nesting it reads).
class JsonSchemaCompiler {
 public:
  explicit JsonSchemaCompiler(const json& root) : root_(root), schema_(std::make_shared<JsonSchema>()) {
    schema_->nodes_.emplace_back();  // node 0: any value
  }

  std::shared_ptr<const JsonSchema> run() {
    schema_->root_ = compile(root_, "", 0);
    return schema_;
  }

 private:
  int compile(const json& s, const std::string& where, int depth) {
    if (depth > kMaxDepth) fail("json_schema: nested deeper than {} levels at '{}'", kMaxDepth, where);
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail("json_schema: the schema at '{}' is false: no value can satisfy it", where);
      return 0;
    }
    if (!s.is_object()) fail("json_schema: the schema at '{}' must be an object or a boolean, got {}", where, s.dump());
    if (s.contains("$ref")) return reference(s, where, depth);
    const int index = new_node(where);
    JsonSchema::Node node = build(s, where, depth);
    schema_->nodes_[static_cast<size_t>(index)] = std::move(node);
    return index;
  }

  int new_node(const std::string& where) {
    if (schema_->nodes_.size() >= kMaxNodes) fail("json_schema: more than {} subschemas (at '{}')", kMaxNodes, where);
    schema_->nodes_.emplace_back();
    return static_cast<int>(schema_->nodes_.size()) - 1;
  }

  int reference(const json& s, const std::string& where, int depth) {
    for (const auto& [key, value] : s.items())
      if (key != "$ref" && !kAnnotations.count(key))
        fail("json_schema: '$ref' at '{}' with '{}' beside it is not supported (only annotations may sit beside it)",
             where, key);
    const auto& ref = s["$ref"];
    if (!ref.is_string() || ref.get_ref<const std::string&>().rfind('#', 0) != 0)
      fail("json_schema: '$ref' at '{}' must point inside the schema ('#', '#/$defs/...'), got {}", where, ref.dump());
    const auto pointer = ref.get_ref<const std::string&>().substr(1);
    if (const auto it = refs_.find(pointer); it != refs_.end()) {
      if (it->second < 0)
        fail("json_schema: '$ref' {} at '{}' refers to itself without a value between", ref.dump(), where);
      return it->second;
    }
    const json* target = nullptr;
    try {
      const json::json_pointer ptr(pointer);
      if (root_.contains(ptr)) target = &root_.at(ptr);
    } catch (const json::exception&) {}
    if (!target) fail("json_schema: '$ref' {} at '{}' points at nothing in the schema", ref.dump(), where);
    if (target->is_object() && target->contains("$ref")) {  // a reference to a reference: follow it
      refs_[pointer] = -1;
      const int index = reference(*target, pointer, depth + 1);
      refs_[pointer] = index;
      return index;
    }
    if (!target->is_object()) return refs_[pointer] = compile(*target, pointer, depth + 1);
    const int index = new_node(where);
    refs_[pointer] = index;  // before its parts: they may refer back to it
    JsonSchema::Node node = build(*target, pointer, depth + 1);
    schema_->nodes_[static_cast<size_t>(index)] = std::move(node);
    return index;
  }

  JsonSchema::Node build(const json& s, const std::string& where, int depth) {
    for (const auto& [key, value] : s.items())
      if (!kTaken.count(key) && !kAnnotations.count(key))
        fail(
            "json_schema: keyword '{}' at '{}' is not supported. Constraints taken: type, enum, const, anyOf, "
            "properties, required, additionalProperties, items, minItems, maxItems, minLength, maxLength, $ref",
            key, where);
    JsonSchema::Node node;
    if (s.contains("anyOf")) {
      for (const auto& [key, value] : s.items())
        if (key != "anyOf" && kTaken.count(key))
          fail("json_schema: 'anyOf' at '{}' with '{}' beside it is not supported (put it inside each choice)", where,
               key);
      const auto& choices = s["anyOf"];
      if (!choices.is_array() || choices.empty())
        fail("json_schema: 'anyOf' at '{}' must be a non-empty array of schemas", where);
      if (choices.size() > kMaxChoices)
        fail("json_schema: 'anyOf' at '{}' has {} choices, more than the {} taken", where, choices.size(), kMaxChoices);
      for (size_t i = 0; i < choices.size(); ++i)
        node.any_of.push_back(compile(choices[i], fmt::format("{}/anyOf/{}", where, i), depth + 1));
      return node;
    }
    if (s.contains("type")) {
      const auto& type = s["type"];
      node.kinds = 0;
      if (type.is_array()) {
        if (type.empty()) fail("json_schema: 'type' at '{}' is an empty list", where);
        for (const auto& name : type) node.kinds |= kind_named(name, where);
      } else {
        node.kinds = kind_named(type, where);
      }
    }
    if (s.contains("enum") && s.contains("const"))
      fail("json_schema: 'enum' and 'const' together at '{}': use one of them", where);
    if (s.contains("enum") || s.contains("const")) {
      const json values = s.contains("const") ? json::array({s["const"]}) : s["enum"];
      if (!values.is_array() || values.empty()) fail("json_schema: 'enum' at '{}' must be a non-empty array", where);
      node.has_literals = true;
      for (const auto& value : values)
        if (kind_of(value) & node.kinds) node.literals.push_back(value.dump());
      std::sort(node.literals.begin(), node.literals.end());
      node.literals.erase(std::unique(node.literals.begin(), node.literals.end()), node.literals.end());
      if (node.literals.empty()) fail("json_schema: no value of 'enum' at '{}' has the schema's 'type'", where);
    }
    if (s.contains("properties")) {
      const auto& properties = s["properties"];
      if (!properties.is_object()) fail("json_schema: 'properties' at '{}' must be an object", where);
      if (properties.size() > JsonSchema::kMaxProperties)
        fail("json_schema: more than {} properties at '{}'", JsonSchema::kMaxProperties, where);
      for (const auto& [name, sub] : properties.items()) {
        const auto key = json(name).dump();
        node.properties.push_back(
            {key.substr(1, key.size() - 2), compile(sub, where + "/properties/" + name, depth + 1)});
      }
    }
    if (s.contains("additionalProperties")) {
      const auto& extra = s["additionalProperties"];
      node.additional = extra.is_boolean() && !extra.get<bool>()
                            ? JsonSchema::kNone
                            : compile(extra, where + "/additionalProperties", depth + 1);
    }
    if (s.contains("required")) {
      const auto& required = s["required"];
      if (!required.is_array()) fail("json_schema: 'required' at '{}' must be an array of names", where);
      for (const auto& name : required) {
        if (!name.is_string()) fail("json_schema: 'required' at '{}' must hold names, got {}", where, name.dump());
        const auto key = name.dump().substr(1, name.dump().size() - 2);
        auto it = std::find_if(node.properties.begin(), node.properties.end(),
                               [&](const JsonSchema::Property& p) { return p.key == key; });
        if (it == node.properties.end()) {
          if (node.additional == JsonSchema::kNone)
            fail(
                "json_schema: 'required' at '{}' names '{}', which 'properties' lacks and additionalProperties "
                "forbids",
                where, name.get<std::string>());
          if (node.properties.size() >= JsonSchema::kMaxProperties)
            fail("json_schema: more than {} properties at '{}'", JsonSchema::kMaxProperties, where);
          node.properties.push_back({key, node.additional});
          it = node.properties.end() - 1;
        }
        node.required |= uint64_t{1} << (it - node.properties.begin());
      }
    }
    if (s.contains("items")) {
      if (s["items"].is_array())
        fail("json_schema: 'items' at '{}' is a list (tuple form), which is not supported", where);
      node.items = compile(s["items"], where + "/items", depth + 1);
    }
    if (s.contains("minItems")) node.min_items = count_in(s, "minItems", where);
    if (s.contains("maxItems")) node.max_items = count_in(s, "maxItems", where);
    if (s.contains("minLength")) node.min_length = count_in(s, "minLength", where);
    if (s.contains("maxLength")) node.max_length = count_in(s, "maxLength", where);
    if (node.min_items > node.max_items) fail("json_schema: minItems > maxItems at '{}'", where);
    if (node.min_length > node.max_length) fail("json_schema: minLength > maxLength at '{}'", where);
    return node;
  }

  const json& root_;
  std::shared_ptr<JsonSchema> schema_;
  std::map<std::string, int> refs_;  // JSON pointer -> node (-1 while a reference is followed)
};

std::shared_ptr<const JsonSchema> JsonSchema::compile(const nlohmann::json& schema) {
  return JsonSchemaCompiler(schema).run();
}

std::shared_ptr<const JsonSchema> JsonSchema::any_object() {
  static const auto object = compile(json{{"type", "object"}});
  return object;
}

}  // namespace minigpt4
