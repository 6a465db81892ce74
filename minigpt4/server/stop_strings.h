#pragma once
// OpenAI's `stop` parameter: the answer ends just before the first of the client's stop
// strings. ChatSession already stops on the template's own '###'; these are extra strings
// found in the answer's text as it streams, so a piece is held back while it may still be
// the start of a stop string, and never shown if it turns out to be one.
#include <string>
#include <vector>

namespace minigpt4::server {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  // The next streamed piece in; the text that is safe to show now out. Once a stop string
  // has appeared, stopped() is true and the text before it is the last that is returned.
  std::string feed(const std::string& piece);
  // At the end of the answer: what was held back (nothing once stopped).
  std::string flush();
  bool stopped() const { return stopped_; }

  // A whole answer cut before its first stop string.
  std::string cut(const std::string& text) const;

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace minigpt4::server
