#pragma once
// An independent check that a JSON value satisfies a schema, for the keywords
// generate/json_schema.h takes: written from the JSON Schema text, not from the automaton,
// so that tests of constrained answers do not grade the mask by itself.
#include <nlohmann/json.hpp>

#include <string>

namespace minigpt4::test {

inline int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

inline bool satisfies(const nlohmann::json& value, const nlohmann::json& schema, const nlohmann::json& root) {
  using json = nlohmann::json;
  if (schema.is_boolean()) return schema.get<bool>();
  if (schema.contains("$ref")) {
    const auto ref = schema["$ref"].get<std::string>();
    return satisfies(value, root.at(json::json_pointer(ref.substr(1))), root);
  }
  if (schema.contains("anyOf")) {
    for (const auto& choice : schema["anyOf"])
      if (satisfies(value, choice, root)) return true;
    return false;
  }
  if (schema.contains("type")) {
    const auto types = schema["type"].is_array() ? schema["type"] : json::array({schema["type"]});
    bool any = false;
    for (const auto& t : types) {
      const auto name = t.get<std::string>();
      any |= (name == "null" && value.is_null()) || (name == "boolean" && value.is_boolean()) ||
             (name == "integer" && (value.is_number_integer() || value.is_number_unsigned())) ||
             (name == "number" && value.is_number()) || (name == "string" && value.is_string()) ||
             (name == "array" && value.is_array()) || (name == "object" && value.is_object());
    }
    if (!any) return false;
  }
  if (schema.contains("enum") && std::find(schema["enum"].begin(), schema["enum"].end(), value) == schema["enum"].end())
    return false;
  if (schema.contains("const") && schema["const"] != value) return false;
  if (value.is_string()) {
    const auto n = code_points(value.get<std::string>());
    if (schema.contains("minLength") && n < schema["minLength"].get<int64_t>()) return false;
    if (schema.contains("maxLength") && n > schema["maxLength"].get<int64_t>()) return false;
  }
  if (value.is_array()) {
    const auto n = static_cast<int64_t>(value.size());
    if (schema.contains("minItems") && n < schema["minItems"].get<int64_t>()) return false;
    if (schema.contains("maxItems") && n > schema["maxItems"].get<int64_t>()) return false;
    if (schema.contains("items"))
      for (const auto& item : value)
        if (!satisfies(item, schema["items"], root)) return false;
  }
  if (value.is_object()) {
    if (schema.contains("required"))
      for (const auto& name : schema["required"])
        if (!value.contains(name.get<std::string>())) return false;
    const auto properties = schema.value("properties", json::object());
    for (const auto& [key, item] : value.items()) {
      if (properties.contains(key)) {
        if (!satisfies(item, properties[key], root)) return false;
      } else if (schema.contains("additionalProperties") && !satisfies(item, schema["additionalProperties"], root)) {
        return false;
      }
    }
  }
  return true;
}

inline bool satisfies(const nlohmann::json& value, const nlohmann::json& schema) {
  return satisfies(value, schema, schema);
}

}  // namespace minigpt4::test
