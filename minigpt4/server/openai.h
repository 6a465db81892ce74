#pragma once
// The OpenAI chat-completions API as pure functions: a request body in, the steps to replay
// on a ChatSession and the answer's options out; replies, stream chunks and errors built in
// OpenAI's JSON shapes. Nothing here needs a model, so all of it is unit-tested without one.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/error.h"
#include "minigpt4/server/image_input.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4::server {

// An error the client must see, with its HTTP status, sent as OpenAI's
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "");
  int status;
  std::string type;   // "invalid_request_error" for 4xx, "server_error" for 5xx
  std::string param;  // the offending field, e.g. "messages[1].content[0].image_url"
  std::string code;
};

// A 400 about `param`.
template <typename... Args>
[[noreturn]] void reject(const std::string& param, fmt::format_string<Args...> format, Args&&... args) {
  throw ApiError(400, fmt::format(format, std::forward<Args>(args)...), param);
}

struct RequestLimits {
  int64_t max_tokens = 1024;                // the most a request may ask for
  int64_t default_max_tokens = 300;         // Chat.answer's max_new_tokens
  ImageLimits image;                        // each image
  int64_t max_images = 4;                   // images in one request
  int64_t max_request_pixels = 80'000'000;  // their pixels together, from their headers
  // Tokens of the prompt's text (the server counts them with the model's tokenizer before
  // any model work; images add their embedding positions on top). The parsers refuse text
  // longer than kPromptBytesPerToken bytes a token before it is tokenized at all.
  // 0: no limit here (the server sets it from the model's context length).
  int64_t max_prompt_tokens = 0;
};

// No token of either tokenizer is longer than this; text over max_prompt_tokens times as
// many bytes is refused without tokenizing it. Each message also counts this much for its
// template markers, so countless empty messages are refused the same way.
inline constexpr int64_t kPromptBytesPerToken = 32;
// A temperature this small divides the logits into infinities (float32): it samples as
// greedy decoding would, and is run as greedy (0).
inline constexpr double kGreedyBelowTemperature = 1e-4;
inline double sampling_temperature(double t) { return t < kGreedyBelowTemperature ? 0.0 : t; }
// Most choices (`n`) one request may ask for; each takes a slot.
inline constexpr int kMaxChoices = 8;
// Most entries of a request's logit_bias (OpenAI's own limit is 300).
inline constexpr size_t kMaxLogitBias = 300;
// The longest `stop` string (the answer's text is held back by as much while it could be one).
inline constexpr size_t kMaxStopBytes = 512;

// A request body as JSON: nesting bounded by input_limits().max_json_depth; a syntax error, too
// deep a nesting or a number beyond double's range is a 400 naming the field it was in.
nlohmann::json parse_request_json(const std::string& body);

// One operation of the original Chat, replayed in order on a fresh ChatSession.
struct ChatStep {
  enum class Kind { Image, Ask, Answer };
  Kind kind;
  std::string text;   // Ask, Answer
  std::string image;  // Image: the file's bytes (already checked: format, size, decodable)
  std::string param;  // where in the request it came from, for error messages
};

struct ChatRequest {
  std::string model;  // as the client named it ("" when absent); any name is accepted
  std::vector<ChatStep> steps;
  bool system_given = false;  // system messages are accepted, but the template's system text is used
  AnswerOptions options;
  bool seeded = false;  // `seed` given; otherwise the server draws one
  std::vector<std::string> stop;
  int n = 1;  // choices, each its own answer (seed + i); 1..kMaxChoices
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Extension: the LoRA task adapter to answer with (a name GET /v1/models lists, or
  // "original"); absent: the server's default (see resolve_adapter).
  std::optional<std::string> lora;
  // Extension: "explain": true (what the answer looked at, over the latest image: a PNG and
  // the patch grid) or "words" (also one grid per word; one more backward pass per word).
  enum class Explain { No, Answer, Words } explain = Explain::No;
};

// Parses and validates a /v1/chat/completions body. User messages map onto Chat's
// operations: a message's images first (upload_img each), then its text parts joined by
// newlines (ask); assistant messages are recorded as given (add_answer); the last message
// must be the user's. Throws ApiError (400) naming the field for malformed JSON, wrong types,
// numbers out of range, unknown roles or fields, unsupported values, remote image URLs, bad
// data URIs, images over `limits` (each, their count, their pixels together: all checked from
// the headers before any image is decoded) and text too long for max_prompt_tokens; 503
// when the image decode budget stays full.
ChatRequest parse_chat_request(const std::string& body, const RequestLimits& limits);

// The adapter a request answers with: its `lora` when given (which must be one of
// `choices`: "original" and the adapters the model holds, else a 400 naming `lora` and
// listing them); else its `model` when that names an adapter (as /v1/models lists them, the
// way vLLM offers LoRA modules); else `fallback`, the server's default.
std::string resolve_adapter(const ChatRequest& request, const std::vector<std::string>& choices,
                            const std::string& fallback);

// Boxes in an answer (minigpt4/chat/grounding.h: ConLoRA's `<bin_N>` and MiniGPT-v2's
// `{<N><N><N><N>}`) as JSON: [{"x0", "y0", "x1", "y1" (pixels of the image, null when no
// image size is known), "bins": [4], "grid", "format", "label" (null when none),
// "clamped", "image_size": [width, height] or null, "text": the box as written}].
nlohmann::json boxes_json(const std::string& answer, int64_t image_width, int64_t image_height);

struct CompletionMeta {
  std::string id;  // "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  std::string lora;  // the adapter answering; when set, replies and chunks carry it as "lora"
};

std::string new_completion_id();
// ChatReply::finish_reason -> OpenAI's: "stop" and "length" as they are; a cancelled answer
// (the server's time limit) counts as "length", cut short by a limit.
std::string openai_finish_reason(const std::string& chat_finish_reason);

// `boxes` (boxes_json), when not empty, becomes choices[0].message.boxes.
nlohmann::json completion_json(const CompletionMeta& meta, const std::string& text, const std::string& finish_reason,
                               int64_t prompt_tokens, int64_t completion_tokens,
                               const nlohmann::json& boxes = nlohmann::json::array());
// A chat.completion.chunk: `delta` is {"role": ...} / {"content": ...} / {}; finish_reason
// only on the last.
nlohmann::json chunk_json(const CompletionMeta& meta, const nlohmann::json& delta,
                          const std::optional<std::string>& finish_reason = std::nullopt);
// choices[i].logprobs of OpenAI's API for these tokens: {"content": [{"token", "logprob",
// "bytes", "top_logprobs": [...]}], "refusal": null}. The log-probabilities are of the
// processed scores (logit_bias, repetition penalty) before temperature, top-k and top-p.
nlohmann::json logprobs_json(const std::vector<TokenLogprob>& entries, const Tokenizer& tokenizer);
// llama.cpp server's `timings` of an answer: prompt_n (prompt positions computed), cache_n
// (taken from a KV cache), prompt_ms (to the first token, waiting for a slot's turn
// included), predicted_n (tokens), predicted_ms (after the first), and their rates
// (predicted_per_second over the tokens after the first).
nlohmann::json timings_json(const ChatReply& reply);
// stream_options.include_usage: the extra last chunk with no choices and the usage.
nlohmann::json usage_chunk_json(const CompletionMeta& meta, int64_t prompt_tokens, int64_t completion_tokens);
// The served model; with LoRA adapters (`adapters`: "original" first, as
// ChatModel::adapter_choices) it also lists "adapters" and "default_adapter", and one entry
// per adapter ({"id": name, "parent": model_name, "lora": name}), which requests may name
// as their `model`.
nlohmann::json models_json(const std::string& model_name, int64_t created,
                           const std::vector<std::string>& adapters = {}, const std::string& default_adapter = "");
nlohmann::json error_json(const ApiError& error);

// A JSON value as one server-sent event ("data: ...\n\n"); text that is not valid UTF-8 is
// replaced rather than thrown on.
std::string sse_event(const nlohmann::json& value);
std::string dump_json(const nlohmann::json& value);

}  // namespace minigpt4::server
