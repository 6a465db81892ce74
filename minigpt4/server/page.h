#pragma once
// The web demo: one HTML page (minigpt4/server/page.html, built into the binary) and the
// small JSON API it calls. The page keeps its conversation on the server (a ChatSession per
// browser tab, see sessions.h): the image is uploaded and encoded once, and each round
// reuses the KV cache of the last, as `minigpt4 chat` does. Third-party clients use the
// stateless OpenAI endpoint instead (openai.h).
#include "minigpt4/chat/chat.h"
#include "minigpt4/server/openai.h"

#include <optional>
#include <string>

namespace minigpt4::server {

// The page: HTML, CSS and JavaScript in one document that loads nothing from elsewhere.
const std::string& page_html();

// POST /api/sessions/{id}/ask: {"text": "...", "num_beams": 1-10, "temperature": 0-2,
// "max_new_tokens": n}, the demo's two sliders plus an optional length. Throws ApiError (400).
struct PageAsk {
  std::string text;
  AnswerOptions options;
  bool explain = false;  // "explain": true -> the done event carries the answer's and each word's patch grid
};
PageAsk parse_page_ask(const std::string& body, const RequestLimits& limits);

// POST /api/sessions/{id}/image: {"image": "data:image/...;base64,..."}; returns the image's
// bytes, checked as the OpenAI endpoint checks them. Throws ApiError (400).
std::string parse_page_image(const std::string& body, const RequestLimits& limits);

// POST /api/sessions (optional body) and /api/sessions/{id}/lora (required): {"lora": name},
// the page's task selector. The name is returned as given (the server checks it against its
// adapters); nullopt for an empty body when not required. Throws ApiError (400).
std::optional<std::string> parse_page_lora(const std::string& body, bool required);

}  // namespace minigpt4::server
