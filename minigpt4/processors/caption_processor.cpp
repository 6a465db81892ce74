#include "minigpt4/processors/caption_processor.h"

#include <algorithm>
#include <string_view>
#include <vector>

// The reference works on Python str (code points), so we decode UTF-8 to code points,
// apply the same steps, and encode back. Invalid bytes are carried as lone surrogates
// U+DC80..U+DCFF (Python's "surrogateescape") so they survive the round trip unchanged.

namespace minigpt4 {
namespace {

using Text = std::vector<char32_t>;

Text decode_utf8(const std::string& s) {
  Text out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF, as Python's decoder does.
    static constexpr char32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMinForLen[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) {
      out.push_back(0xDC00 + b);  // escaped raw byte
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string encode_utf8(const Text& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c >= 0xDC80 && c <= 0xDCFF) {
      out.push_back(static_cast<char>(c - 0xDC00));  // raw byte from decode_utf8
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// Lowercase of an upper-case letter in the blocks we cover (Unicode simple case mapping,
// which is what Python's str.lower() uses for these); anything else maps to itself.
char32_t to_lower(char32_t c) {
  auto pair_even_upper = [c](char32_t lo, char32_t hi) { return c >= lo && c <= hi && c % 2 == 0; };
  auto pair_odd_upper = [c](char32_t lo, char32_t hi) { return c >= lo && c <= hi && c % 2 == 1; };
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;  // Latin-1 (0xD7 is the × sign)
  // Latin Extended-A: alternating upper/lower pairs, with the parity flipping twice.
  if (pair_even_upper(0x100, 0x137) || pair_odd_upper(0x139, 0x148) || pair_even_upper(0x14A, 0x177) ||
      pair_odd_upper(0x179, 0x17E))
    return c + 1;
  if (c == 0x178) return 0xFF;  // Ÿ -> ÿ
  // Greek.
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
  // Cyrillic.
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (pair_even_upper(0x460, 0x481) || pair_even_upper(0x48A, 0x4BF) || pair_odd_upper(0x4C1, 0x4CE) ||
      pair_even_upper(0x4D0, 0x52F))
    return c + 1;
  if (c == 0x4C0) return 0x4CF;
  if (c >= 0x531 && c <= 0x556) return c + 48;  // Armenian
  // Latin Extended Additional.
  if (pair_even_upper(0x1E00, 0x1E95) || pair_even_upper(0x1EA0, 0x1EFF)) return c + 1;
  if (c == 0x1E9E) return 0xDF;                   // capital sharp s
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;  // fullwidth A-Z
  return c;
}

// A letter with case, for Python's final-sigma rule (approximate outside our blocks).
bool is_cased(char32_t c) {
  if (to_lower(c) != c) return true;
  return (c >= 'a' && c <= 'z') || (c >= 0xDF && c <= 0xFF && c != 0xF7) || (c >= 0x100 && c <= 0x24F) ||
         (c >= 0x3AC && c <= 0x3CE) || (c >= 0x430 && c <= 0x45F) || (c >= 0x461 && c <= 0x52F) ||
         (c >= 0x561 && c <= 0x587) || (c >= 0x1E00 && c <= 0x1EFF) || (c >= 0xFF41 && c <= 0xFF5A);
}

Text python_lower(const Text& in) {
  Text out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char32_t c = in[i];
    if (c == 0x130) {  // İ lowercases to two code points: i + combining dot above
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {  // Σ -> ς at the end of a word, σ elsewhere
      const bool after_letter = i > 0 && is_cased(in[i - 1]);
      const bool before_letter = i + 1 < in.size() && is_cased(in[i + 1]);
      out.push_back(after_letter && !before_letter ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(to_lower(c));
    }
  }
  return out;
}

// Python's str.isspace(), which is what `\s` matches in a str pattern.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_removed_punctuation(char32_t c) {
  constexpr std::u32string_view kChars = U".!\"()*#:;~";
  return kChars.find(c) != std::u32string_view::npos;
}

}  // namespace

std::string blip_caption(const std::string& caption, int max_words) {
  Text text = python_lower(decode_utf8(caption));
  for (auto& c : text)
    if (is_removed_punctuation(c)) c = ' ';

  // re.sub(r"\s{2,}", " ", ...): only runs of two or more are touched.
  Text collapsed;
  collapsed.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t j = i;
    while (j < text.size() && is_python_space(text[j])) ++j;
    if (j - i >= 2) {
      collapsed.push_back(' ');
      i = j;
    } else {
      collapsed.push_back(text[i++]);
    }
  }

  // rstrip("\n") then strip(" ").
  size_t end = collapsed.size();
  while (end > 0 && collapsed[end - 1] == '\n') --end;
  while (end > 0 && collapsed[end - 1] == ' ') --end;
  size_t begin = 0;
  while (begin < end && collapsed[begin] == ' ') ++begin;
  const Text stripped(collapsed.begin() + begin, collapsed.begin() + end);

  // caption.split(" ")[:max_words] when there are more words than max_words.
  std::vector<size_t> word_starts{0};
  for (size_t i = 0; i < stripped.size(); ++i)
    if (stripped[i] == ' ') word_starts.push_back(i + 1);
  const long n_words = static_cast<long>(word_starts.size());
  if (n_words <= max_words) return encode_utf8(stripped);
  const long keep = max_words >= 0 ? max_words : std::max(0L, n_words + max_words);
  if (keep == 0) return "";
  // The kept words end just before the separator that starts word `keep`.
  return encode_utf8(Text(stripped.begin(), stripped.begin() + (word_starts[keep] - 1)));
}

}  // namespace minigpt4
