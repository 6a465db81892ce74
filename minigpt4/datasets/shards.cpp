#include "minigpt4/datasets/shards.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <string_view>

namespace minigpt4::datasets {
namespace {

// Braces may nest this deep (real patterns nest 1 or 2 deep); deeper is refused by name
// rather than risking the stack.
constexpr int kMaxBraceDepth = 64;

// A pattern, parsed once: a sequence of literal text, alternatives (each a sequence) and
// numeric ranges. Its names are counted and sized from this tree BEFORE any is made.
struct Node;
using Seq = std::vector<Node>;
struct Node {
  enum Kind { Literal, Alternatives, Range } kind = Literal;
  std::string text;             // Literal
  std::vector<Seq> alts;        // Alternatives
  int64_t first = 0, step = 1;  // Range: first, first +- step, ..., `count` values
  uint64_t count = 1;
  size_t width = 0;     // zero-padded width (0: none), as the original text gave it
  size_t max_text = 0;  // the longest value's text
};

Node literal(std::string_view text) {
  Node n;
  n.text = std::string(text);
  return n;
}

struct Parser {
  const std::string& pattern;

  [[noreturn]] void error(const std::string& what) const {
    fail("shard pattern '{}': {}", excerpt(pattern, 200), what);
  }

  static bool has_leading_zero(std::string_view n) {
    if (!n.empty() && n[0] == '-') n.remove_prefix(1);
    return n.size() > 1 && n[0] == '0';
  }

  static bool is_integer(std::string_view t) {
    if (!t.empty() && t[0] == '-') t.remove_prefix(1);
    return !t.empty() && t.find_first_not_of("0123456789") == std::string_view::npos;
  }

  // `a..b` or `a..b..step` (each an optionally negative decimal); false if `body` is not one.
  bool parse_range(std::string_view body, Node& node) const {
    std::vector<std::string_view> parts;
    size_t at = 0;
    while (true) {
      const size_t dots = body.find("..", at);
      parts.push_back(body.substr(at, dots == std::string_view::npos ? std::string_view::npos : dots - at));
      if (dots == std::string_view::npos) break;
      at = dots + 2;
    }
    if (parts.size() < 2 || parts.size() > 3) return false;
    for (const auto& p : parts)
      if (!is_integer(p)) return false;
    int64_t first = 0, last = 0, step = 1;
    if (!parse_int64(parts[0], first) || !parse_int64(parts[1], last) ||
        (parts.size() == 3 && !parse_int64(parts[2], step)))
      error(fmt::format("the range {{{}}} has a number that does not fit in 64 bits", excerpt(body, 100)));
    if (step == std::numeric_limits<int64_t>::min()) step = std::numeric_limits<int64_t>::max();
    step = step < 0 ? -step : step;
    if (step == 0) step = 1;
    const __int128 span = static_cast<__int128>(last) - first;
    const unsigned __int128 distance = static_cast<unsigned __int128>(span < 0 ? -span : span);
    const unsigned __int128 count = distance / static_cast<unsigned __int128>(step) + 1;
    node.kind = Node::Range;
    node.first = first;
    node.step = last >= first ? step : -step;
    node.count = count > std::numeric_limits<uint64_t>::max() ? std::numeric_limits<uint64_t>::max()
                                                              : static_cast<uint64_t>(count);
    node.width =
        has_leading_zero(parts[0]) || has_leading_zero(parts[1]) ? std::max(parts[0].size(), parts[1].size()) : 0;
    // The longest text: the padding, or the digits of the larger bound, and a sign.
    const size_t digits = std::max(parts[0].size(), parts[1].size());
    node.max_text = std::max(node.width, digits);
    return true;
  }

  // Index of the '}' closing the '{' at `open`, or npos.
  static size_t matching_brace(std::string_view s, size_t open) {
    int64_t depth = 0;
    for (size_t i = open; i < s.size(); ++i) {
      if (s[i] == '{') ++depth;
      if (s[i] == '}' && --depth == 0) return i;
    }
    return std::string_view::npos;
  }

  static std::vector<std::string_view> split_top_level_commas(std::string_view body) {
    std::vector<std::string_view> parts;
    int64_t depth = 0;
    size_t start = 0;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '{') ++depth;
      if (body[i] == '}') --depth;
      if (body[i] == ',' && depth == 0) {
        parts.push_back(body.substr(start, i - start));
        start = i + 1;
      }
    }
    parts.push_back(body.substr(start));
    return parts;
  }

  // The braces of `s` left to right (a loop, not recursion, along the text; recursion only
  // into a brace's body, at most kMaxBraceDepth deep).
  Seq parse(std::string_view s, int depth) const {
    if (depth > kMaxBraceDepth) error(fmt::format("braces nest deeper than {} levels", kMaxBraceDepth));
    Seq seq;
    while (true) {
      const size_t open = s.find('{');
      const std::string_view prefix = s.substr(0, open);
      if (prefix.find('}') != std::string_view::npos) error("'}' without a matching '{'");
      if (!prefix.empty()) seq.push_back(literal(prefix));
      if (open == std::string_view::npos) return seq;
      const size_t close = matching_brace(s, open);
      if (close == std::string_view::npos) error("'{' without a matching '}'");
      const std::string_view body = s.substr(open + 1, close - open - 1);
      Node node;
      const auto alternatives = split_top_level_commas(body);
      if (alternatives.size() > 1) {
        node.kind = Node::Alternatives;
        for (const auto& alt : alternatives) node.alts.push_back(parse(alt, depth + 1));
      } else if (!parse_range(body, node)) {  // `{x}`: kept literally, braces and all
        node.kind = Node::Alternatives;
        Seq inner{literal("{")};
        for (auto& n : parse(body, depth + 1)) inner.push_back(std::move(n));
        inner.push_back(literal("}"));
        node.alts.push_back(std::move(inner));
      }
      seq.push_back(std::move(node));
      s = s.substr(close + 1);
    }
  }
};

// Saturating arithmetic for the counts: anything past `cap` is just "too many".
uint64_t sat_add(uint64_t a, uint64_t b, uint64_t cap) { return a > cap - std::min(b, cap) ? cap + 1 : a + b; }
uint64_t sat_mul(uint64_t a, uint64_t b, uint64_t cap) {
  if (a == 0 || b == 0) return 0;
  return a > cap / b ? cap + 1 : a * b;
}

// How many names a node gives and (an upper bound of) their total length, capped.
struct Size {
  uint64_t names = 1;
  uint64_t bytes = 0;
};

Size size_of(const Seq& seq, uint64_t cap, int depth);

Size size_of(const Node& node, uint64_t cap, int depth) {
  switch (node.kind) {
    case Node::Literal: return {1, node.text.size()};
    case Node::Range:
      return {std::min(node.count, cap + 1), sat_mul(std::min(node.count, cap + 1), node.max_text + 1, cap)};
    case Node::Alternatives: {
      Size total{0, 0};
      for (const auto& alt : node.alts) {
        const Size s = size_of(alt, cap, depth + 1);
        total.names = sat_add(total.names, s.names, cap);
        total.bytes = sat_add(total.bytes, s.bytes, cap);
      }
      return total;
    }
  }
  return {};
}

// A sequence's names are every combination: n = product of the parts' counts, and each
// part's text appears n / (its count) times for each of its names.
Size size_of(const Seq& seq, uint64_t cap, int depth) {
  Size total{1, 0};
  std::vector<Size> parts;
  for (const auto& node : seq) {
    parts.push_back(size_of(node, cap, depth));
    total.names = sat_mul(total.names, parts.back().names, cap);
  }
  if (total.names > cap) return {cap + 1, cap + 1};
  for (const auto& p : parts)
    total.bytes = sat_add(total.bytes, sat_mul(p.bytes, total.names / std::max<uint64_t>(p.names, 1), cap), cap);
  return total;
}

std::vector<std::string> expand_seq(const Seq& seq);

// Every name of one node, in order.
std::vector<std::string> names_of(const Node& node) {
  std::vector<std::string> out;
  switch (node.kind) {
    case Node::Literal: out.push_back(node.text); break;
    case Node::Range:
      for (uint64_t k = 0; k < node.count; ++k) {
        const int64_t v = node.first + static_cast<int64_t>(k) * node.step;
        std::string text = std::to_string(v < 0 ? -static_cast<uint64_t>(v) : static_cast<uint64_t>(v));
        const size_t digits = node.width > 0 && v < 0 ? node.width - 1 : node.width;
        if (text.size() < digits) text.insert(0, digits - text.size(), '0');
        out.push_back(v < 0 ? "-" + text : text);
      }
      break;
    case Node::Alternatives:  // recursion only into a brace's body: at most kMaxBraceDepth deep
      for (const auto& alt : node.alts)
        for (auto& name : expand_seq(alt)) out.push_back(std::move(name));
      break;
  }
  return out;
}

// Every combination of the parts, the leftmost varying slowest (as braceexpand gives
// them), built part by part: a loop along the sequence, however many parts it has.
std::vector<std::string> expand_seq(const Seq& seq) {
  std::vector<std::string> names{std::string()};
  for (const Node& node : seq) {
    if (node.kind == Node::Literal) {
      for (auto& name : names) name += node.text;
      continue;
    }
    const std::vector<std::string> parts = names_of(node);
    if (parts.size() == 1) {
      for (auto& name : names) name += parts[0];
      continue;
    }
    std::vector<std::string> longer;
    longer.reserve(names.size() * parts.size());
    for (const auto& name : names)
      for (const auto& part : parts) longer.push_back(name + part);
    names = std::move(longer);
  }
  return names;
}

}  // namespace

std::vector<std::string> expand_braces(const std::string& pattern) {
  const Parser parser{pattern};
  const Seq seq = parser.parse(pattern, 0);
  const auto& limits = input_limits();
  const uint64_t max_names = static_cast<uint64_t>(limits.max_brace_names);
  const uint64_t max_bytes = static_cast<uint64_t>(limits.max_brace_bytes);
  const Size size = size_of(seq, std::max(max_names, max_bytes), 0);
  if (size.names > max_names)
    parser.error(fmt::format("it expands to more than {} names (limits.max_brace_names)", max_names));
  if (size.bytes > max_bytes)
    parser.error(
        fmt::format("its {} names would take more than {} bytes (limits.max_brace_bytes)", size.names, max_bytes));
  return expand_seq(seq);
}

std::vector<std::string> expand_shard_spec(const std::string& spec) {
  std::vector<std::string> shards;
  size_t start = 0;
  while (true) {
    const size_t sep = spec.find("::", start);
    const std::string pattern = spec.substr(start, sep == std::string::npos ? std::string::npos : sep - start);
    if (pattern.empty()) fail("shard spec '{}' has an empty pattern (check the '::' separators)", excerpt(spec, 300));
    const auto names = expand_braces(pattern);
    for (const auto& name : names) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(name, ec))
        fail("shard spec '{}': '{}' (from pattern '{}') is not an existing file{}{}", excerpt(spec, 300),
             excerpt(name, 300), excerpt(pattern, 300),
             names.size() > 1 ? fmt::format(" ({} names in that pattern)", names.size()) : "",
             ec && ec != std::errc::no_such_file_or_directory ? " (" + ec.message() + ")" : "");
      shards.push_back(name);
    }
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  return shards;
}

}  // namespace minigpt4::datasets
