// Fuzz harness: bytes as a POST /v1/chat/completions body through parse_chat_request (JSON
// with bounded nesting, every field type- and range-checked, data-URI images checked from
// their headers, counted, pixel-budgeted, then decoded once), and as the page's bodies
// through parse_page_ask / parse_page_image / parse_page_lora. An ApiError (a 400, or 503
// from a full decode budget) is a minigpt4::Error: a clean refusal. Anything else escaping,
// or a crash, is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/generate/json_constraint.h"
#include "minigpt4/server/openai.h"
#include "minigpt4/server/page.h"

#include <cstdint>
#include <string>

namespace {

const minigpt4::server::RequestLimits& limits() {
  static const auto l = [] {
    minigpt4::server::RequestLimits r;
    r.max_prompt_tokens = 2000;      // the server's default for a 2048-position LLaMA
    r.image.max_pixels = 4'000'000;  // the rules of the 40 M default, with cheap decodes
    r.max_request_pixels = 8'000'000;
    r.image.decode_budget = std::make_shared<minigpt4::server::PixelBudget>(8'000'000);
    return r;
  }();
  return l;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const auto request = minigpt4::server::parse_chat_request(body, limits());
    // What the parser promises the server.
    if (request.steps.empty() || request.steps.back().kind == minigpt4::server::ChatStep::Kind::Answer)
      __builtin_trap();
    if (request.options.max_new_tokens < 1 || request.options.max_new_tokens > limits().max_tokens) __builtin_trap();
    if (!(request.options.temperature >= 0 && request.options.temperature <= 2)) __builtin_trap();
    // A schema that compiled walks any text without escaping: the body itself, byte by byte.
    if (request.options.json_schema) {
      minigpt4::JsonPrefix prefix(request.options.json_schema);
      for (const char c : body)
        if (!prefix.feed(c)) break;
      (void)prefix.complete();
    }
  } catch (const minigpt4::Error&) {}
  try {
    (void)minigpt4::server::parse_page_ask(body, limits());
  } catch (const minigpt4::Error&) {}
  try {
    (void)minigpt4::server::parse_page_image(body, limits());
  } catch (const minigpt4::Error&) {}
  try {
    (void)minigpt4::server::parse_page_lora(body, false);
  } catch (const minigpt4::Error&) {}
  return 0;
}
