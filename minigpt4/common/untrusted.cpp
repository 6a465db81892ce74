#include "minigpt4/common/untrusted.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"

#include <charconv>
#include <fstream>

namespace minigpt4 {

std::string excerpt(std::string_view text, size_t max_chars) {
  std::string out;
  const size_t shown = std::min(text.size(), max_chars);
  for (size_t i = 0; i < shown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  if (shown < text.size()) out += fmt::format("... ({} bytes)", text.size());
  return out;
}

std::string describe_json(const nlohmann::json& value, size_t max_chars) {
  switch (value.type()) {
    case nlohmann::json::value_t::array: return fmt::format("an array of {} items", value.size());
    case nlohmann::json::value_t::object: return fmt::format("an object with {} keys", value.size());
    case nlohmann::json::value_t::string: return "\"" + excerpt(value.get_ref<const std::string&>(), max_chars) + "\"";
    case nlohmann::json::value_t::binary: return "binary data";
    default: return excerpt(value.dump(), max_chars);  // a number, true/false, null: short
  }
}

nlohmann::json parse_json(std::string_view text, const std::string& source) {
  const int64_t max_depth = input_limits().max_json_depth;
  // The parser itself is iterative; the callback stops a document before its nesting could
  // overflow the stack of anything that walks it later (dump(), recursive readers).
  nlohmann::json::parser_callback_t guard = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    if ((event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start) &&
        depth >= max_depth)
      fail("{}: JSON nested deeper than {} levels (limits.max_json_depth)", source, max_depth);
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), guard);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", source, e.byte, excerpt(e.what(), 200));
  } catch (const nlohmann::json::exception& e) {  // out_of_range 406: a number such as 1e309
    fail("{}: invalid JSON: {}", source, excerpt(e.what(), 200));
  }
}

std::string read_text_file(const std::filesystem::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open {}", what, path.string());
  in.seekg(0, std::ios::end);
  const auto size = static_cast<int64_t>(in.tellg());
  const int64_t limit = input_limits().max_text_file_bytes;
  if (size < 0) fail("{}: cannot read {}", what, path.string());
  if (size > limit)
    fail("{}: {} is {} bytes, more than the {} a text file may have (limits.max_text_file_bytes)", what, path.string(),
         size, limit);
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(text.data(), size)) fail("{}: cannot read {}", what, path.string());
  return text;
}

nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& what) {
  return parse_json(read_text_file(path, what), what == path.string() ? what : what + ": " + path.string());
}

std::filesystem::path confined_path(const std::filesystem::path& root, std::string_view name, const std::string& what) {
  if (name.empty()) fail("{}: empty file name", what);
  if (name.find('\0') != std::string_view::npos) fail("{}: file name '{}' holds a NUL byte", what, excerpt(name));
  const std::filesystem::path relative{std::string(name)};
  if (relative.is_absolute() || relative.has_root_name() || relative.has_root_directory())
    fail("{}: file name '{}' is absolute; names must be relative to {}", what, excerpt(name), root.string());
  for (const auto& part : relative)
    if (part == "..")
      fail("{}: file name '{}' climbs out of its folder ('..'); names must stay under {}", what, excerpt(name),
           root.string());
  return root / relative;
}

bool parse_int64(std::string_view text, int64_t& out) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace minigpt4
