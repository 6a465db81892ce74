#include "minigpt4/server/page.h"

#include <algorithm>

namespace minigpt4::server {

using json = nlohmann::json;

namespace {

json parse_object(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()), "", "invalid_json");
  }
  if (!j.is_object()) reject("", "the request body must be a JSON object");
  return j;
}

}  // namespace

PageAsk parse_page_ask(const std::string& body, const RequestLimits& limits) {
  const json j = parse_object(body);
  PageAsk ask;
  ask.options.max_new_tokens = std::min(limits.default_max_tokens, limits.max_tokens);
  for (const auto& item : j.items()) {
    const auto& key = item.key();
    const auto& v = item.value();
    if (key == "text") {
      if (!v.is_string() || v.get_ref<const std::string&>().empty()) reject(key, "'text' must be a non-empty string");
      ask.text = v.get<std::string>();
    } else if (key == "num_beams") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 10)
        reject(key, "'num_beams' must be an integer in 1..10");
      ask.options.num_beams = v.get<int>();
    } else if (key == "temperature") {
      if (!v.is_number() || !(v.get<double>() >= 0 && v.get<double>() <= 2))
        reject(key, "'temperature' must be a number in [0, 2]");
      ask.options.temperature = v.get<double>();
    } else if (key == "max_new_tokens") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > limits.max_tokens)
        reject(key, "'max_new_tokens' must be an integer in 1..{}", limits.max_tokens);
      ask.options.max_new_tokens = v.get<int64_t>();
    } else {
      reject(key, "unknown field '{}'", key);
    }
  }
  if (ask.text.empty()) reject("text", "'text' is required");
  return ask;
}

std::string parse_page_image(const std::string& body, const RequestLimits& limits) {
  const json j = parse_object(body);
  const auto it = j.find("image");
  if (it == j.end() || !it->is_string()) reject("image", "'image' must be a data URI string");
  if (j.size() != 1) reject("", "only the field 'image' is expected");
  try {
    auto uri = parse_data_uri(it->get<std::string>());
    check_image(uri.bytes, limits.image, "image");
    return std::move(uri.bytes);
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    reject("image", "{}", e.what());
  }
}

std::optional<std::string> parse_page_lora(const std::string& body, bool required) {
  if (!required && body.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
  const json j = parse_object(body);
  for (const auto& item : j.items())
    if (item.key() != "lora") reject(item.key(), "unknown field '{}' (only 'lora' is expected)", item.key());
  const auto it = j.find("lora");
  if (it == j.end() || it->is_null()) {
    if (required) reject("lora", "'lora' is required: an adapter name, or \"original\"");
    return std::nullopt;
  }
  if (!it->is_string() || it->get_ref<const std::string&>().empty())
    reject("lora", "'lora' must be a non-empty string: an adapter name, or \"original\"");
  return it->get<std::string>();
}

}  // namespace minigpt4::server
