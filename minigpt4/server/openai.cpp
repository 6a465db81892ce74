#include "minigpt4/server/openai.h"

#include "minigpt4/chat/grounding.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/generate/json_schema.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <set>

namespace minigpt4::server {

using json = nlohmann::json;

namespace {

std::string type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// A field of an object; nullptr when it is absent or null (OpenAI clients send null for "unset").
const json* field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& param) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      reject(param, "'{}' is out of range: {} does not fit a 64-bit integer", param, u);
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  reject(param, "'{}' must be an integer, got {}", param, type_name(v));
}

double as_number(const json& v, const std::string& param) {
  if (v.is_number()) return v.get<double>();
  reject(param, "'{}' must be a number, got {}", param, type_name(v));
}

bool as_bool(const json& v, const std::string& param) {
  if (v.is_boolean()) return v.get<bool>();
  reject(param, "'{}' must be a boolean, got {}", param, type_name(v));
}

const std::string& as_string(const json& v, const std::string& param) {
  if (v.is_string()) return v.get_ref<const std::string&>();
  reject(param, "'{}' must be a string, got {}", param, type_name(v));
}

double in_range(double value, double low, double high, const std::string& param) {
  if (!(value >= low && value <= high)) reject(param, "'{}' must be in [{}, {}], got {}", param, low, high, value);
  return value;
}

// Fields OpenAI defines that this server takes only at their neutral value (so clients that
// always send them work), and fields it ignores.
void check_neutral(const json& body) {
  for (const char* key : {"frequency_penalty", "presence_penalty"})
    if (const auto* v = field(body, key); v && as_number(*v, key) != 0)
      reject(key, "'{}' is not supported (only 0); use 'repetition_penalty' (Hugging Face's) instead", key);
  for (const char* key : {"tools", "functions"})
    if (const auto* v = field(body, key); v && !v->empty()) reject(key, "'{}' is not supported", key);
  for (const char* key : {"tool_choice", "function_call"})
    if (const auto* v = field(body, key); v && *v != "none" && *v != "auto")
      reject(key, "'{}' is not supported (no tools)", key);
  if (const auto* v = field(body, "response_format")) {
    if (!v->is_object()) reject("response_format", "'response_format' must be an object, got {}", type_name(*v));
    const auto* type = field(*v, "type");
    const std::string name = type && type->is_string() ? type->get<std::string>() : "";
    if (name != "text" && name != "json_object" && name != "json_schema")
      reject("response_format",
             "response_format must be {{\"type\": \"text\"}}, {{\"type\": \"json_object\"}} or "
             "{{\"type\": \"json_schema\", \"json_schema\": {{\"name\": ..., \"schema\": {{...}}}}}}, got type {}",
             type ? describe_json(*type) : "none");
    if (name == "json_schema") {
      const auto* spec = field(*v, "json_schema");
      if (!spec || !spec->is_object() || !field(*spec, "schema"))
        reject("response_format",
               "response_format json_schema needs 'json_schema': {{\"name\": ..., \"schema\": {{...}}}}");
    }
  }
  if (const auto* v = field(body, "modalities"))
    if (*v != json::array({"text"})) reject("modalities", "only the \"text\" output modality is supported");
  for (const char* key : {"audio", "prediction"})
    if (const auto* v = field(body, key); v && !v->is_null())
      reject(key, "'{}' is not supported (text answers only; null is accepted)", key);
}

const std::set<std::string>& known_fields() {
  static const std::set<std::string> fields = {
      // used
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop", "stream",
      "stream_options",
      // extensions: Hugging Face generate() knobs of Chat.answer
      "top_k", "num_beams", "repetition_penalty", "length_penalty",
      // extension: the LoRA task adapter (resolve_adapter)
      "lora",
      // extension: llama.cpp server's (benchmarks use it)
      "ignore_eos",
      // extension: what the answer looked at (docs/explain.md)
      "explain",
      // accepted at their neutral value only (check_neutral)
      "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "tools", "functions", "tool_choice",
      "function_call", "logit_bias", "response_format", "modalities",
      // accepted when null (check_neutral)
      "audio", "prediction",
      // no effect here (docs/serving.md lists them)
      "user", "store", "metadata", "service_tier", "parallel_tool_calls", "reasoning_effort", "verbosity",
      "prompt_cache_key", "safety_identifier", "web_search_options"};
  return fields;
}

// What a request holds so far, against the limits: the prompt's text (and each message's
// template markers) in bytes, the images and their pixels from their headers.
struct Tally {
  const RequestLimits& limits;
  int64_t prompt_bytes = 0, images = 0, pixels = 0;

  void add_text(int64_t bytes, const std::string& param) {
    prompt_bytes += bytes;
    if (limits.max_prompt_tokens <= 0 || limits.max_prompt_tokens > (int64_t(1) << 40)) return;
    const int64_t max_bytes = limits.max_prompt_tokens * kPromptBytesPerToken;
    if (prompt_bytes > max_bytes)
      throw ApiError(400,
                     fmt::format("'{}': the prompt's text is over {} bytes; this server takes at most {} prompt tokens "
                                 "(--max-prompt-tokens), and no more than {} bytes of text",
                                 param, max_bytes, limits.max_prompt_tokens, max_bytes),
                     param, "context_length_exceeded");
  }
  void add_message(const std::string& param) { add_text(kPromptBytesPerToken, param); }
  void add_image(const std::string& param) {
    if (++images > limits.max_images)
      reject(param, "'{}': more than {} images in one request (--max-images-per-request)", param, limits.max_images);
  }
  void add_pixels(const ImageInfo& info, const std::string& param) {
    pixels += info.width * info.height;
    if (pixels > limits.max_request_pixels)
      reject(param,
             "'{}': the request's images hold {} pixels with this one ({}x{}); this server takes at most {} "
             "in one request (--max-request-pixels)",
             param, pixels, info.width, info.height, limits.max_request_pixels);
  }
};

// A message's text: a string, or text parts (assistant and system messages hold no images).
std::string text_only(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    reject(param, "'{}' must be a string or an array of content parts, got {}", param, type_name(content));
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const auto p = fmt::format("{}[{}]", param, i);
    const auto& part = content[i];
    if (!part.is_object()) reject(p, "'{}' must be an object, got {}", p, type_name(part));
    const auto* type = field(part, "type");
    if (!type || as_string(*type, p + ".type") != "text")
      reject(p + ".type", "'{}' must be a text part here (images only come in user messages)", p);
    const auto* t = field(part, "text");
    if (!t) reject(p + ".text", "'{}.text' is missing", p);
    if (!text.empty()) text += "\n";
    text += as_string(*t, p + ".text");
  }
  return text;
}

void add_user_message(const json& content, const std::string& param, Tally& tally, std::vector<ChatStep>& steps,
                      std::vector<ImageInfo>& infos) {
  if (content.is_string()) {
    const auto& text = content.get_ref<const std::string&>();
    tally.add_text(static_cast<int64_t>(text.size()), param);
    steps.push_back({ChatStep::Kind::Ask, text, "", param});
    return;
  }
  if (!content.is_array())
    reject(param, "'{}' must be a string or an array of content parts, got {}", param, type_name(content));
  if (content.empty()) reject(param, "'{}' has no content parts", param);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const auto p = fmt::format("{}[{}]", param, i);
    const auto& part = content[i];
    if (!part.is_object()) reject(p, "'{}' must be an object, got {}", p, type_name(part));
    const auto* type_field = field(part, "type");
    if (!type_field) reject(p + ".type", "'{}.type' is missing", p);
    const auto& type = as_string(*type_field, p + ".type");
    if (type == "text") {
      const auto* t = field(part, "text");
      if (!t) reject(p + ".text", "'{}.text' is missing", p);
      const auto& part_text = as_string(*t, p + ".text");
      tally.add_text(static_cast<int64_t>(part_text.size()) + 1, p + ".text");
      if (!text.empty()) text += "\n";
      text += part_text;
    } else if (type == "image_url") {
      tally.add_image(p);
      const auto* image_url = field(part, "image_url");
      if (!image_url) reject(p + ".image_url", "'{}.image_url' is missing", p);
      // {"url": ..., "detail": ...} as OpenAI defines it; a bare string as some clients send.
      std::string url_param = p + ".image_url";
      const json* url = image_url;
      if (image_url->is_object()) {
        url_param += ".url";
        url = field(*image_url, "url");
        if (!url) reject(url_param, "'{}' is missing", url_param);
      }
      DataUri uri;
      ImageInfo info;
      try {
        uri = parse_data_uri(as_string(*url, url_param));
        info = check_image_header(uri.bytes, tally.limits.image, url_param);
      } catch (const ApiError&) {
        throw;
      } catch (const Error& e) {
        reject(url_param, "{}", e.what());
      }
      tally.add_pixels(info, url_param);
      steps.push_back({ChatStep::Kind::Image, "", std::move(uri.bytes), url_param});
      infos.push_back(info);
    } else {
      reject(p + ".type", "content part type '{}' is not supported (only 'text' and 'image_url')", excerpt(type));
    }
  }
  if (!text.empty()) steps.push_back({ChatStep::Kind::Ask, text, "", param});
}

void parse_messages(const json& messages, Tally& tally, ChatRequest& request, std::vector<ImageInfo>& infos) {
  if (!messages.is_array()) reject("messages", "'messages' must be an array, got {}", type_name(messages));
  if (messages.empty()) reject("messages", "'messages' is empty");
  bool conversation_started = false;
  std::string last_role;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto p = fmt::format("messages[{}]", i);
    const auto& message = messages[i];
    if (!message.is_object()) reject(p, "'{}' must be an object, got {}", p, type_name(message));
    tally.add_message(p);
    const auto* role_field = field(message, "role");
    if (!role_field) reject(p + ".role", "'{}.role' is missing", p);
    const auto& role = as_string(*role_field, p + ".role");
    for (const char* key : {"tool_calls", "function_call"})
      if (const auto* v = field(message, key); v && !v->empty())
        reject(p + "." + key, "'{}.{}' is not supported (no tools)", p, key);
    const auto* content = field(message, "content");
    if (!content) reject(p + ".content", "'{}.content' is missing", p);
    if (role == "system" || role == "developer") {
      // Anywhere, as OpenAI and llama.cpp take them; the template's own system text is used.
      text_only(*content, p + ".content");
      request.system_given = true;
    } else if (role == "user") {
      add_user_message(*content, p + ".content", tally, request.steps, infos);
      conversation_started = true;
    } else if (role == "assistant") {
      auto text = text_only(*content, p + ".content");
      tally.add_text(static_cast<int64_t>(text.size()), p + ".content");
      request.steps.push_back({ChatStep::Kind::Answer, std::move(text), "", p + ".content"});
      conversation_started = true;
    } else if (role == "tool" || role == "function") {
      reject(p + ".role", "'{}': role '{}' is not supported (no tools)", p, role);
    } else {
      reject(p + ".role", "'{}': unknown role '{}' (expected system, user or assistant)", p, excerpt(role));
    }
    last_role = role;
  }
  if (!conversation_started) reject("messages", "'messages' holds no user message");
  if (last_role != "user") reject("messages", "the last message must be the user's (the model answers it)");
}

void parse_options(const json& body, const RequestLimits& limits, ChatRequest& request) {
  auto& o = request.options;
  o.max_new_tokens = std::min(limits.default_max_tokens, limits.max_tokens);
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    const auto* v = field(body, key);
    if (!v) continue;
    const int64_t n = as_int(*v, key);
    if (n < 1) reject(key, "'{}' must be at least 1, got {}", key, n);
    if (n > limits.max_tokens) reject(key, "'{}' is {}; this server allows at most {}", key, n, limits.max_tokens);
    o.max_new_tokens = n;
  }
  if (const auto* v = field(body, "temperature"))
    o.temperature = sampling_temperature(in_range(as_number(*v, "temperature"), 0, 2, "temperature"));
  if (const auto* v = field(body, "top_p")) {
    o.top_p = as_number(*v, "top_p");
    if (!(o.top_p > 0 && o.top_p <= 1)) reject("top_p", "'top_p' must be in (0, 1], got {}", o.top_p);
  }
  if (const auto* v = field(body, "top_k")) {
    o.top_k = as_int(*v, "top_k");
    if (o.top_k < 0) reject("top_k", "'top_k' must be >= 0 (0: off), got {}", o.top_k);
  }
  if (const auto* v = field(body, "n")) {
    const int64_t n = as_int(*v, "n");
    if (n < 1 || n > kMaxChoices) reject("n", "'n' must be in 1..{}, got {}", kMaxChoices, n);
    request.n = static_cast<int>(n);
  }
  if (const auto* v = field(body, "num_beams")) {
    const int64_t beams = as_int(*v, "num_beams");
    if (beams < 1 || beams > 10) reject("num_beams", "'num_beams' must be in 1..10, got {}", beams);
    o.num_beams = static_cast<int>(beams);
  }
  if (const auto* v = field(body, "repetition_penalty")) {
    // Hugging Face takes any positive value; beyond these the penalised logits overflow.
    o.repetition_penalty = in_range(as_number(*v, "repetition_penalty"), 0.01, 100, "repetition_penalty");
  }
  if (const auto* v = field(body, "length_penalty"))
    o.length_penalty = in_range(as_number(*v, "length_penalty"), -10, 10, "length_penalty");
  if (const auto* v = field(body, "seed")) {
    o.seed = static_cast<uint64_t>(as_int(*v, "seed"));
    request.seeded = true;
  }
  if (const auto* v = field(body, "stop")) {
    if (v->is_string()) {
      request.stop = {v->get<std::string>()};
    } else if (v->is_array()) {
      if (v->size() > 4) reject("stop", "'stop' takes at most 4 strings, got {}", v->size());
      for (size_t i = 0; i < v->size(); ++i) request.stop.push_back(as_string((*v)[i], fmt::format("stop[{}]", i)));
    } else {
      reject("stop", "'stop' must be a string or an array of strings, got {}", type_name(*v));
    }
    for (const auto& s : request.stop) {
      if (s.empty()) reject("stop", "'stop' strings must not be empty");
      if (s.size() > kMaxStopBytes)
        reject("stop", "'stop' strings may be at most {} bytes, got {}", kMaxStopBytes, s.size());
    }
  }
  if (const auto* v = field(body, "logit_bias")) {
    if (!v->is_object())
      reject("logit_bias", "'logit_bias' must be an object of token id -> bias, got {}", type_name(*v));
    if (v->size() > kMaxLogitBias)
      reject("logit_bias", "'logit_bias' takes at most {} tokens, got {}", kMaxLogitBias, v->size());
    for (const auto& [key, bias] : v->items()) {
      const auto param = "logit_bias." + excerpt(key);
      int64_t id = -1;
      const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (error != std::errc() || end != key.data() + key.size() || id < 0)
        reject(param, "'logit_bias' keys must be token ids (decimal integers), got '{}'", excerpt(key));
      o.logit_bias.emplace_back(id, in_range(as_number(bias, param), -100, 100, param));
    }
  }
  // llama.cpp's ignore_eos: end of sequence is never chosen (HF's min_length past the
  // answer's end), so the answer runs to max_tokens unless a stop string ends it.
  if (const auto* v = field(body, "ignore_eos"); v && as_bool(*v, "ignore_eos")) o.min_length = o.max_new_tokens + 2;
  bool logprobs = false;
  if (const auto* v = field(body, "logprobs")) logprobs = as_bool(*v, "logprobs");
  if (logprobs) o.top_logprobs = 0;
  if (const auto* v = field(body, "top_logprobs"); v && !v->is_null()) {
    const int64_t n = as_int(*v, "top_logprobs");
    if (n < 0 || n > 20) reject("top_logprobs", "'top_logprobs' must be in 0..20, got {}", n);
    if (!logprobs && n > 0) reject("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (logprobs) o.top_logprobs = static_cast<int>(n);
  }
  if (logprobs && o.num_beams > 1) reject("logprobs", "'logprobs' is not available with beam search ('num_beams' > 1)");
  if (const auto* v = field(body, "response_format"); v && (*v)["type"] != "text") {
    if (o.num_beams > 1)
      reject("response_format", "response_format {} is not available with beam search", (*v)["type"].dump());
    if ((*v)["type"] == "json_object") {
      o.json_schema = JsonSchema::any_object();
    } else {
      try {
        o.json_schema = JsonSchema::compile((*v)["json_schema"]["schema"]);
      } catch (const Error& e) {
        reject("response_format", "response_format {}", e.what());
      }
    }
  }
  if (const auto* v = field(body, "stream")) request.stream = as_bool(*v, "stream");
  if (const auto* v = field(body, "explain")) {
    if (v->is_boolean()) {
      request.explain = v->get<bool>() ? ChatRequest::Explain::Answer : ChatRequest::Explain::No;
    } else if (v->is_string() && v->get_ref<const std::string&>() == "words") {
      request.explain = ChatRequest::Explain::Words;
    } else {
      reject("explain", "'explain' must be true, false or \"words\", got {}", describe_json(*v));
    }
  }
  if (const auto* v = field(body, "stream_options")) {
    if (!request.stream) reject("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (!v->is_object()) reject("stream_options", "'stream_options' must be an object, got {}", type_name(*v));
    if (const auto* u = field(*v, "include_usage")) request.include_usage = as_bool(*u, "stream_options.include_usage");
  }
  if (request.n > 1 && o.num_beams > 1) reject("n", "'n' > 1 is not available with beam search ('num_beams' > 1)");
  if (request.n > 1 && request.explain != ChatRequest::Explain::No)
    reject("n", "'n' > 1 is not available with 'explain'");
}

}  // namespace

ApiError::ApiError(int status_code, const std::string& message, std::string param_name, std::string error_code)
    : Error(message),
      status(status_code),
      type(status_code >= 500 ? "server_error" : "invalid_request_error"),
      param(std::move(param_name)),
      code(std::move(error_code)) {}

json parse_request_json(const std::string& body) {
  // Where the parser is, for a message naming the field of an error: one entry per open
  // object (its current key) or array (the index of its current item).
  struct Level {
    bool array;
    std::string key;
    size_t index = 0;
  };
  std::vector<Level> path;
  const auto where = [&] {
    std::string out;
    for (const auto& level : path) {
      if (level.array) {
        out += fmt::format("[{}]", level.index);
      } else if (!level.key.empty()) {
        out += (out.empty() ? "" : ".") + excerpt(level.key, 40);
      }
    }
    return out;
  };
  const auto item_done = [&] {
    if (!path.empty() && path.back().array) ++path.back().index;
  };
  const int64_t max_depth = input_limits().max_json_depth;
  json::parser_callback_t track = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= max_depth)
          throw ApiError(400,
                         fmt::format("the request body nests deeper than {} levels (limits.max_json_depth)", max_depth),
                         excerpt(where(), 80), "invalid_json");
        path.push_back({event == json::parse_event_t::array_start, "", 0});
        break;
      case json::parse_event_t::key:
        if (!path.empty()) path.back().key = parsed.is_string() ? parsed.get<std::string>() : "";
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!path.empty()) path.pop_back();
        item_done();
        break;
      case json::parse_event_t::value: item_done(); break;
    }
    return true;
  };
  try {
    return json::parse(body.begin(), body.end(), track);
  } catch (const json::parse_error& e) {
    throw ApiError(400,
                   fmt::format("the request body is not valid JSON at byte {}: {}", e.byte, excerpt(e.what(), 200)),
                   excerpt(where(), 80), "invalid_json");
  } catch (const json::out_of_range& e) {
    // 406: a number beyond double's range (1e309, or an integer of hundreds of digits).
    const auto param = excerpt(where(), 80);
    throw ApiError(400,
                   fmt::format("'{}': a number too large to represent ({})", param.empty() ? "body" : param,
                               excerpt(e.what(), 80)),
                   param, "invalid_json");
  } catch (const json::exception& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", excerpt(e.what(), 200)),
                   excerpt(where(), 80), "invalid_json");
  }
}

ChatRequest parse_chat_request(const std::string& body, const RequestLimits& limits) {
  const json j = parse_request_json(body);
  if (!j.is_object()) reject("", "the request body must be a JSON object, got {}", type_name(j));
  for (const auto& item : j.items())
    if (!known_fields().count(item.key()))
      reject(excerpt(item.key()), "unrecognized request argument supplied: '{}'", excerpt(item.key()));

  ChatRequest request;
  if (const auto* v = field(j, "model")) request.model = as_string(*v, "model");
  if (const auto* v = field(j, "lora")) {
    request.lora = as_string(*v, "lora");
    if (request.lora->empty()) reject("lora", "'lora' must name an adapter (or \"original\"); see GET /v1/models");
  }
  check_neutral(j);
  parse_options(j, limits, request);
  const auto* messages = field(j, "messages");
  if (!messages) reject("messages", "'messages' is required");
  Tally tally{limits};
  std::vector<ImageInfo> infos;
  parse_messages(*messages, tally, request, infos);
  // Every header, count and budget has passed: now each image is decoded once as a check,
  // within the server's decode budget.
  size_t next = 0;
  for (const auto& step : request.steps) {
    if (step.kind != ChatStep::Kind::Image) continue;
    try {
      check_image_decodes(step.image, infos[next++], limits.image, step.param);
    } catch (const DecodeBusy& e) {
      throw ApiError(503, e.what(), step.param, "server_busy");
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      reject(step.param, "{}", e.what());
    }
  }
  return request;
}

std::string resolve_adapter(const ChatRequest& request, const std::vector<std::string>& choices,
                            const std::string& fallback) {
  const auto held = [&](const std::string& name) {
    return std::find(choices.begin(), choices.end(), name) != choices.end();
  };
  if (request.lora) {
    if (held(*request.lora)) return *request.lora;
    throw ApiError(400,
                   fmt::format("unknown LoRA adapter '{}'; this server holds: {}", excerpt(*request.lora),
                               fmt::join(choices, ", ")),
                   "lora", "unknown_adapter");
  }
  if (!request.model.empty() && request.model != "original" && held(request.model)) return request.model;
  return fallback;
}

json boxes_json(const std::string& answer, int64_t image_width, int64_t image_height) {
  json boxes = json::array();
  for (const auto& box : find_boxes(answer, image_width, image_height)) {
    const auto pixel = [&](int64_t v) { return box.has_pixels ? json(v) : json(nullptr); };
    boxes.push_back({{"x0", pixel(box.x0)},
                     {"y0", pixel(box.y0)},
                     {"x1", pixel(box.x1)},
                     {"y1", pixel(box.y1)},
                     {"bins", box.bins},
                     {"grid", box.grid},
                     {"format", box.format},
                     {"label", box.label.empty() ? json(nullptr) : json(box.label)},
                     {"clamped", box.clamped},
                     {"image_size", box.has_pixels ? json::array({image_width, image_height}) : json(nullptr)},
                     {"text", answer.substr(box.begin, box.end - box.begin)}});
  }
  return boxes;
}

std::string new_completion_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("chatcmpl-{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

std::string openai_finish_reason(const std::string& reason) { return reason == "stop" ? "stop" : "length"; }

namespace {

json with_lora(json body, const CompletionMeta& meta) {
  if (!meta.lora.empty()) body["lora"] = meta.lora;
  return body;
}

}  // namespace

json completion_json(const CompletionMeta& meta, const std::string& text, const std::string& finish_reason,
                     int64_t prompt_tokens, int64_t completion_tokens, const json& boxes) {
  json message = {{"role", "assistant"}, {"content", text}};
  if (!boxes.empty()) message["boxes"] = boxes;
  return with_lora(
      {{"id", meta.id},
       {"object", "chat.completion"},
       {"created", meta.created},
       {"model", meta.model},
       {"choices",
        json::array({{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}})},
       {"usage",
        {{"prompt_tokens", prompt_tokens},
         {"completion_tokens", completion_tokens},
         {"total_tokens", prompt_tokens + completion_tokens}}}},
      meta);
}

json chunk_json(const CompletionMeta& meta, const json& delta, const std::optional<std::string>& finish_reason) {
  return with_lora(
      {{"id", meta.id},
       {"object", "chat.completion.chunk"},
       {"created", meta.created},
       {"model", meta.model},
       {"choices", json::array({{{"index", 0},
                                 {"delta", delta},
                                 {"logprobs", nullptr},
                                 {"finish_reason", finish_reason ? json(*finish_reason) : json(nullptr)}}})}},
      meta);
}

namespace {

// A token as text, as OpenAI's logprobs show it: with its leading space (sentencepiece
// drops the one of a word-initial piece, "▁", when it decodes the token alone).
std::string token_text(int64_t id, const Tokenizer& tokenizer) {
  auto text = tokenizer.decode({id});
  static const std::string kWordStart = "\xE2\x96\x81";  // U+2581
  if (starts_with(tokenizer.id_to_piece(id), kWordStart) && !starts_with(text, " ")) text = " " + text;
  return text;
}

json token_json(int64_t id, double logprob, const Tokenizer& tokenizer) {
  auto text = token_text(id, tokenizer);
  json bytes = json::array();
  // A byte-fallback piece ("<0xE2>": part of a character) is that byte, shown escaped as
  // OpenAI shows such tokens.
  const auto piece = tokenizer.id_to_piece(id);
  unsigned byte = 0;
  if (piece.size() == 6 && starts_with(piece, "<0x") && piece[5] == '>' &&
      std::sscanf(piece.c_str() + 3, "%2x", &byte) == 1) {
    text = fmt::format("\\x{:02x}", byte);
    bytes.push_back(byte);
  } else {
    for (const unsigned char c : text) bytes.push_back(c);
  }
  // -inf (a banned token among the alternatives) is not JSON: OpenAI sends -9999 for it.
  return {{"token", text}, {"logprob", std::isfinite(logprob) ? logprob : -9999.0}, {"bytes", std::move(bytes)}};
}

}  // namespace

json logprobs_json(const std::vector<TokenLogprob>& entries, const Tokenizer& tokenizer) {
  json content = json::array();
  for (const auto& e : entries) {
    auto j = token_json(e.token, e.logprob, tokenizer);
    j["top_logprobs"] = json::array();
    for (const auto& [id, logprob] : e.top) j["top_logprobs"].push_back(token_json(id, logprob, tokenizer));
    content.push_back(std::move(j));
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json timings_json(const ChatReply& reply) {
  const int64_t computed = reply.prompt_tokens - reply.reused_tokens;
  const auto predicted = static_cast<int64_t>(reply.tokens.size());
  return {
      {"prompt_n", computed},
      {"cache_n", reply.reused_tokens},
      {"prompt_ms", reply.prefill_seconds * 1000},
      {"prompt_per_second", reply.prefill_seconds > 0 ? static_cast<double>(computed) / reply.prefill_seconds : 0.0},
      {"predicted_n", predicted},
      {"predicted_ms", reply.decode_seconds * 1000},
      {"predicted_per_second",
       reply.decode_seconds > 0 && predicted > 1 ? static_cast<double>(predicted - 1) / reply.decode_seconds : 0.0}};
}

json usage_chunk_json(const CompletionMeta& meta, int64_t prompt_tokens, int64_t completion_tokens) {
  return with_lora({{"id", meta.id},
                    {"object", "chat.completion.chunk"},
                    {"created", meta.created},
                    {"model", meta.model},
                    {"choices", json::array()},
                    {"usage",
                     {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens}}}},
                   meta);
}

json models_json(const std::string& model_name, int64_t created, const std::vector<std::string>& adapters,
                 const std::string& default_adapter) {
  json base = {{"id", model_name}, {"object", "model"}, {"created", created}, {"owned_by", "minigpt4-cpp"}};
  json data = json::array();
  if (adapters.size() > 1) {
    base["adapters"] = adapters;
    base["default_adapter"] = default_adapter.empty() ? json("original") : json(default_adapter);
  }
  data.push_back(base);
  for (const auto& adapter : adapters)
    if (adapter != "original")
      data.push_back({{"id", adapter},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "minigpt4-cpp"},
                      {"parent", model_name},
                      {"lora", adapter}});
  return {{"object", "list"}, {"data", data}};
}

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

std::string dump_json(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& value) { return "data: " + dump_json(value) + "\n\n"; }

}  // namespace minigpt4::server
