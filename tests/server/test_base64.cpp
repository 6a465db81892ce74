// The base64 decoder the data URIs go through: RFC 4648's test vectors, round trips over
// every byte value, and the malformed inputs it must refuse rather than turn into noise.
#include "minigpt4/common/error.h"
#include "minigpt4/server/base64.h"

#include <catch2/catch.hpp>

#include <random>

using namespace minigpt4;
using namespace minigpt4::server;
using Catch::Contains;

TEST_CASE("base64 decodes RFC 4648's test vectors, with and without padding", "[server]") {
  const std::vector<std::pair<std::string, std::string>> vectors = {{"", ""},
                                                                    {"f", "Zg=="},
                                                                    {"fo", "Zm8="},
                                                                    {"foo", "Zm9v"},
                                                                    {"foob", "Zm9vYg=="},
                                                                    {"fooba", "Zm9vYmE="},
                                                                    {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    CHECK(base64_encode(plain) == encoded);
    CHECK(base64_decode(encoded) == plain);
    std::string unpadded = encoded;
    while (!unpadded.empty() && unpadded.back() == '=') unpadded.pop_back();
    CHECK(base64_decode(unpadded) == plain);
  }
}

TEST_CASE("base64 round-trips arbitrary bytes", "[server]") {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  CHECK(base64_decode(base64_encode(all)) == all);
  std::mt19937 rng(7);
  for (size_t n = 0; n < 70; ++n) {
    std::string bytes(n, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng() & 0xFF);
    INFO("length " << n);
    CHECK(base64_decode(base64_encode(bytes)) == bytes);
  }
  CHECK(base64_decode("+/+/") == "\xfb\xff\xbf");
}

TEST_CASE("base64 refuses malformed input with the offset", "[server]") {
  CHECK_THROWS_WITH(base64_decode("Zm9v YmFy"), Contains("offset 4"));
  CHECK_THROWS_WITH(base64_decode("Zm9v\nYmFy"), Contains("0x0a") && Contains("offset 4"));
  CHECK_THROWS_WITH(base64_decode("Zm9v-_"), Contains("'-'"));  // URL-safe alphabet
  CHECK_THROWS_WITH(base64_decode("Zg==Zg=="), Contains("'='"));
  CHECK_THROWS_WITH(base64_decode("Zg="), Contains("multiple of 4"));
  CHECK_THROWS_WITH(base64_decode("Z"), Contains("whole bytes"));
  CHECK_THROWS_WITH(base64_decode("Zm9vY"), Contains("whole bytes"));
  CHECK_THROWS_WITH(base64_decode("Zg==="), Contains("'='"));
  CHECK_THROWS_AS(base64_decode("\xff\xfe"), Error);
}
