// Shard lists as configs write them: brace ranges keep their zero padding, several braces
// combine, "::" joins lists, and a name that is not a file is an error naming it.
#include <catch2/catch.hpp>

#include "minigpt4/common/error.h"
#include "minigpt4/datasets/shards.h"
#include "tests/datasets/pipeline_fixtures.h"

using minigpt4::datasets::expand_braces;
using minigpt4::datasets::expand_shard_spec;
using Names = std::vector<std::string>;

TEST_CASE("brace ranges keep the zero-padded width", "[data]") {
  CHECK(expand_braces("/d/{00000..00003}.tar") ==
        Names{"/d/00000.tar", "/d/00001.tar", "/d/00002.tar", "/d/00003.tar"});
  CHECK(expand_braces("{08..11}") == Names{"08", "09", "10", "11"});
  CHECK(expand_braces("{8..11}") == Names{"8", "9", "10", "11"});
  CHECK(expand_braces("{0..10..5}") == Names{"0", "5", "10"});  // "0" alone is no padding
  CHECK(expand_braces("{3..1}") == Names{"3", "2", "1"});
  const auto big = expand_braces("/laion/{00000..10488}.tar");
  REQUIRE(big.size() == 10489);
  CHECK(big.front() == "/laion/00000.tar");
  CHECK(big.back() == "/laion/10488.tar");
}

TEST_CASE("several braces, alternatives and literals", "[data]") {
  CHECK(expand_braces("a{1,2}b{x,y}") == Names{"a1bx", "a1by", "a2bx", "a2by"});
  CHECK(expand_braces("s{0..1}/{000..001}.tar") == Names{"s0/000.tar", "s0/001.tar", "s1/000.tar", "s1/001.tar"});
  CHECK(expand_braces("{a,b{1..2}}") == Names{"a", "b1", "b2"});
  CHECK(expand_braces("plain.tar") == Names{"plain.tar"});
  CHECK(expand_braces("x{y}z") == Names{"x{y}z"});
  CHECK_THROWS_AS(expand_braces("/d/{00..03.tar"), minigpt4::Error);
  CHECK_THROWS_AS(expand_braces("/d/00}.tar"), minigpt4::Error);
}

TEST_CASE("shard specs: '::' lists, every file must exist", "[data]") {
  minigpt4::test::ScratchDir dir;
  for (const char* name : {"00000.tar", "00001.tar", "00002.tar", "extra.tar"}) dir.write(name, "x");
  const std::string d = dir.path().string();
  const auto shards = expand_shard_spec(d + "/{00000..00002}.tar::" + d + "/extra.tar");
  CHECK(shards == Names{d + "/00000.tar", d + "/00001.tar", d + "/00002.tar", d + "/extra.tar"});

  // One missing shard among many: the message names it and the spec.
  const std::string spec = d + "/{00000..00003}.tar";
  try {
    expand_shard_spec(spec);
    FAIL("expected an error");
  } catch (const minigpt4::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains(d + "/00003.tar") && Catch::Contains(spec));
  }
  CHECK_THROWS_AS(expand_shard_spec(""), minigpt4::Error);
  CHECK_THROWS_AS(expand_shard_spec(d + "/00000.tar::"), minigpt4::Error);
}
