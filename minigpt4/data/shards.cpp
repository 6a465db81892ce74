#include "minigpt4/data/shards.h"

#include "minigpt4/common/error.h"

#include <cstdlib>
#include <filesystem>
#include <regex>

namespace minigpt4::data {
namespace {

// A pattern that expands to more names than this is surely a typo (and would exhaust memory).
constexpr size_t kMaxNames = 10'000'000;

// Index of the '}' closing the '{' at `open`, or npos.
size_t matching_brace(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return std::string::npos;
}

std::vector<std::string> split_top_level_commas(const std::string& body) {
  std::vector<std::string> parts(1);
  int depth = 0;
  for (char c : body) {
    if (c == '{') ++depth;
    if (c == '}') --depth;
    if (c == ',' && depth == 0) {
      parts.emplace_back();
    } else {
      parts.back() += c;
    }
  }
  return parts;
}

bool has_leading_zero(const std::string& n) {
  const std::string digits = n[0] == '-' ? n.substr(1) : n;
  return digits.size() > 1 && digits[0] == '0';
}

// `{a..b}` / `{a..b..step}` -> the numbers as text; false if `body` is not a range.
bool expand_range(const std::string& body, const std::string& pattern, std::vector<std::string>& out) {
  static const std::regex range(R"((-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?)");
  std::smatch m;
  if (!std::regex_match(body, m, range)) return false;
  const long long first = std::stoll(m[1]);
  const long long last = std::stoll(m[2]);
  long long step = m[3].matched ? std::llabs(std::stoll(m[3])) : 1;
  if (step == 0) step = 1;
  const size_t width = has_leading_zero(m[1]) || has_leading_zero(m[2]) ? std::max(m[1].length(), m[2].length()) : 0;
  if (static_cast<unsigned long long>(std::llabs(last - first)) / step >= kMaxNames)
    fail("shard pattern '{}': the range {{{}}} has more than {} values", pattern, body, kMaxNames);
  const long long dir = last >= first ? 1 : -1;
  for (long long v = first; dir > 0 ? v <= last : v >= last; v += dir * step) {
    std::string text = std::to_string(std::llabs(v));
    const size_t digits = width > 0 && v < 0 ? width - 1 : width;
    if (text.size() < digits) text.insert(0, digits - text.size(), '0');
    out.push_back(v < 0 ? "-" + text : text);
  }
  return true;
}

std::vector<std::string> expand(const std::string& s, const std::string& pattern) {
  const size_t open = s.find('{');
  if (open == std::string::npos) {
    if (s.find('}') != std::string::npos) fail("shard pattern '{}': '}}' without a matching '{{'", pattern);
    return {s};
  }
  const size_t close = matching_brace(s, open);
  if (close == std::string::npos) fail("shard pattern '{}': '{{' without a matching '}}'", pattern);
  const std::string prefix = s.substr(0, open);
  if (prefix.find('}') != std::string::npos) fail("shard pattern '{}': '}}' without a matching '{{'", pattern);
  const std::string body = s.substr(open + 1, close - open - 1);

  std::vector<std::string> items;
  const auto alternatives = split_top_level_commas(body);
  if (alternatives.size() > 1) {
    for (const auto& alt : alternatives)
      for (auto& e : expand(alt, pattern)) items.push_back(std::move(e));
  } else if (!expand_range(body, pattern, items)) {
    for (auto& e : expand(body, pattern)) items.push_back("{" + e + "}");
  }
  const auto rest = expand(s.substr(close + 1), pattern);
  if (items.size() * rest.size() > kMaxNames) fail("shard pattern '{}' expands to more than {} names", pattern, kMaxNames);
  std::vector<std::string> out;
  out.reserve(items.size() * rest.size());
  for (const auto& item : items)
    for (const auto& r : rest) out.push_back(prefix + item + r);
  return out;
}

}  // namespace

std::vector<std::string> expand_braces(const std::string& pattern) { return expand(pattern, pattern); }

std::vector<std::string> expand_shard_spec(const std::string& spec) {
  std::vector<std::string> shards;
  size_t start = 0;
  while (true) {
    const size_t sep = spec.find("::", start);
    const std::string pattern = spec.substr(start, sep == std::string::npos ? std::string::npos : sep - start);
    if (pattern.empty()) fail("shard spec '{}' has an empty pattern (check the '::' separators)", spec);
    const auto names = expand_braces(pattern);
    for (const auto& name : names) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(name, ec))
        fail("shard spec '{}': '{}' (from pattern '{}') is not an existing file{}", spec, name, pattern,
             names.size() > 1 ? fmt::format(" ({} names in that pattern)", names.size()) : "");
      shards.push_back(name);
    }
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  return shards;
}

}  // namespace minigpt4::data
