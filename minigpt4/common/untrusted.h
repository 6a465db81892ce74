#pragma once
// Helpers for text that comes from strangers: parse it with bounded nesting, quote it in a
// message without printing megabytes (or recursing a million levels deep), and resolve a
// file name it gives without leaving the folder it belongs to. Limits: common/limits.h.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>

namespace minigpt4 {

// At most `max_chars` of `text`, control bytes escaped, with "... (N bytes)" when cut.
std::string excerpt(std::string_view text, size_t max_chars = 60);

// A short description of a JSON value for an error message: scalars as JSON (strings cut),
// arrays and objects as "an array of N items" / "an object with N keys". Never recursive.
std::string describe_json(const nlohmann::json& value, size_t max_chars = 60);

// Parses JSON text whose nesting may not exceed input_limits().max_json_depth; a syntax
// error or too deep a nesting is an Error naming `source` and the byte offset.
nlohmann::json parse_json(std::string_view text, const std::string& source);

// Reads a whole file of at most input_limits().max_text_file_bytes (an Error names the file
// and the limit otherwise) ...
std::string read_text_file(const std::filesystem::path& path, const std::string& what);
// ... and parses it as JSON with parse_json.
nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& what);

// `name`, a relative path taken from a data or model file, resolved under `root`. Refused
// with an Error naming `what`: empty names, NUL bytes, absolute paths, and any '..'
// component (a name may not climb out of its folder, even to come back).
std::filesystem::path confined_path(const std::filesystem::path& root, std::string_view name, const std::string& what);

// Decimal integers in text we were given (config values, headers, ids), without std::stoll's
// bare "stoll" message: false when `text` is not an integer that fits.
bool parse_int64(std::string_view text, int64_t& out);

}  // namespace minigpt4
