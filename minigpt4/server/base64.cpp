#include "minigpt4/server/base64.h"

#include "minigpt4/common/error.h"

#include <array>
#include <cstdint>

namespace minigpt4::server {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// 0..63 for alphabet characters, -1 for everything else.
const std::array<int8_t, 256>& decode_table() {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  return table;
}

}  // namespace

std::string base64_decode(std::string_view text) {
  // Padding: at most two '=' and only at the very end.
  size_t end = text.size();
  while (end > 0 && text[end - 1] == '=' && text.size() - end < 2) --end;

  const auto& table = decode_table();
  std::string out;
  out.reserve(end / 4 * 3 + 2);
  uint32_t bits = 0;
  int count = 0;
  for (size_t i = 0; i < end; ++i) {
    const int value = table[static_cast<unsigned char>(text[i])];
    if (value < 0) {
      const unsigned char c = static_cast<unsigned char>(text[i]);
      if (c == '=') fail("invalid base64: '=' at offset {} before the end", i);
      if (c >= 0x21 && c < 0x7f) fail("invalid base64: character '{}' at offset {}", static_cast<char>(c), i);
      fail("invalid base64: byte 0x{:02x} at offset {}", c, i);
    }
    bits = (bits << 6) | static_cast<uint32_t>(value);
    if (++count == 4) {
      out.push_back(static_cast<char>((bits >> 16) & 0xFF));
      out.push_back(static_cast<char>((bits >> 8) & 0xFF));
      out.push_back(static_cast<char>(bits & 0xFF));
      bits = 0, count = 0;
    }
  }
  if (end != text.size() && text.size() % 4 != 0)
    fail("invalid base64: padded data must have a length that is a multiple of 4 (got {})", text.size());
  if (count == 1) fail("invalid base64: {} characters cannot encode whole bytes", end);
  // A final group of 2 or 3 characters carries 1 or 2 bytes (its spare low bits are ignored,
  // as Python's base64 module ignores them).
  if (count == 2) {
    out.push_back(static_cast<char>((bits >> 4) & 0xFF));
  } else if (count == 3) {
    out.push_back(static_cast<char>((bits >> 10) & 0xFF));
    out.push_back(static_cast<char>((bits >> 2) & 0xFF));
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v =
        (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) | uint8_t(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> shift) & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (rest == 2) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

}  // namespace minigpt4::server
