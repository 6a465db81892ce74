#include "minigpt4/server/page.h"

#include "minigpt4/common/untrusted.h"

#include <algorithm>
#include <limits>

namespace minigpt4::server {

using json = nlohmann::json;

namespace {

json parse_object(const std::string& body) {
  json j = parse_request_json(body);
  if (!j.is_object()) reject("", "the request body must be a JSON object, got {}", describe_json(j));
  return j;
}

// An integer in [low, high], or a 400 naming `key` (no get<> before the type is known: an
// unsigned above int64's range, a float or a string are all refused the same way).
int64_t int_in(const json& v, const std::string& key, int64_t low, int64_t high) {
  const bool fits =
      v.is_number_integer() &&
      (!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  if (!fits || v.get<int64_t>() < low || v.get<int64_t>() > high)
    reject(key, "'{}' must be an integer in {}..{}, got {}", key, low, high, describe_json(v));
  return v.get<int64_t>();
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
      if (!v.is_string() || v.get_ref<const std::string&>().empty())
        reject(key, "'text' must be a non-empty string, got {}", describe_json(v));
      const auto& text = v.get_ref<const std::string&>();
      if (limits.max_prompt_tokens > 0 && limits.max_prompt_tokens <= (int64_t(1) << 40) &&
          static_cast<int64_t>(text.size()) > limits.max_prompt_tokens * kPromptBytesPerToken)
        throw ApiError(
            400,
            fmt::format("'text' is {} bytes; this server takes at most {} prompt tokens (--max-prompt-tokens), "
                        "and no more than {} bytes of text",
                        text.size(), limits.max_prompt_tokens, limits.max_prompt_tokens * kPromptBytesPerToken),
            "text", "context_length_exceeded");
      ask.text = text;
    } else if (key == "num_beams") {
      ask.options.num_beams = static_cast<int>(int_in(v, key, 1, 10));
    } else if (key == "temperature") {
      if (!v.is_number() || !(v.get<double>() >= 0 && v.get<double>() <= 2))
        reject(key, "'temperature' must be a number in [0, 2], got {}", describe_json(v));
      ask.options.temperature = sampling_temperature(v.get<double>());
    } else if (key == "max_new_tokens") {
      ask.options.max_new_tokens = int_in(v, key, 1, limits.max_tokens);
    } else if (key == "explain") {
      if (!v.is_boolean()) reject(key, "'explain' must be a boolean, got {}", describe_json(v));
      ask.explain = v.get<bool>();
    } else {
      reject(excerpt(key), "unknown field '{}'", excerpt(key));
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
  // One image: the header checks, then a decode within the server's decode budget.
  try {
    auto uri = parse_data_uri(it->get_ref<const std::string&>());
    const auto info = check_image_header(uri.bytes, limits.image, "image");
    if (info.width * info.height > limits.max_request_pixels)
      reject("image", "the image is {}x{}; this server takes at most {} pixels in one request (--max-request-pixels)",
             info.width, info.height, limits.max_request_pixels);
    check_image_decodes(uri.bytes, info, limits.image, "image");
    return std::move(uri.bytes);
  } catch (const ApiError&) {
    throw;
  } catch (const DecodeBusy& e) {
    throw ApiError(503, e.what(), "image", "server_busy");
  } catch (const Error& e) {
    reject("image", "{}", e.what());
  }
}

std::optional<std::string> parse_page_lora(const std::string& body, bool required) {
  if (!required && body.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
  const json j = parse_object(body);
  for (const auto& item : j.items())
    if (item.key() != "lora")
      reject(excerpt(item.key()), "unknown field '{}' (only 'lora' is expected)", excerpt(item.key()));
  const auto it = j.find("lora");
  if (it == j.end() || it->is_null()) {
    if (required) reject("lora", "'lora' is required: an adapter name, or \"original\"");
    return std::nullopt;
  }
  if (!it->is_string() || it->get_ref<const std::string&>().empty())
    reject("lora", "'lora' must be a non-empty string: an adapter name, or \"original\", got {}", describe_json(*it));
  return it->get<std::string>();
}

}  // namespace minigpt4::server
