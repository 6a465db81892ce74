// Hostile configs and the helpers every parser uses for untrusted text (issue 17): each case
// must end in a named error, quickly and in bounded memory, never a crash or a hang.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

using namespace minigpt4;
using Catch::Contains;

TEST_CASE("parse_json refuses nesting beyond the limit and names the source", "[untrusted]") {
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  CHECK_THROWS_WITH(parse_json(deep, "deep.json"), Contains("deep.json") && Contains("limits.max_json_depth"));
  CHECK_THROWS_WITH(parse_json("{\"a\": ", "cut.json"), Contains("cut.json") && Contains("invalid JSON"));
  // A number too large for a double (nlohmann's out_of_range, not a parse_error), quoted short.
  try {
    parse_json("{\"lr\": 1" + std::string(100'000, '0') + "}", "big.json");
    FAIL("an out-of-range number was accepted");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Contains("big.json"));
    CHECK(std::string(e.what()).size() < 400);
  }
  CHECK_THROWS_WITH(parse_json("[1e309]", "inf.json"), Contains("inf.json"));
  const std::string ok = std::string(100, '[') + std::string(100, ']');
  CHECK(parse_json(ok, "ok.json").is_array());
}

TEST_CASE("describe_json and excerpt stay short whatever they are given", "[untrusted]") {
  const std::string long_text(1 << 20, 'x');
  CHECK(excerpt(long_text).size() < 100);
  CHECK_THAT(excerpt(long_text), Contains("1048576 bytes"));
  CHECK(excerpt(std::string("a\0b\n", 4)) == "a\\x00b\\x0a");
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) big.push_back(i);
  CHECK(describe_json(big) == "an array of 1000 items");
  CHECK(describe_json(nlohmann::json{{"a", 1}}) == "an object with 1 keys");
  CHECK(describe_json(long_text).size() < 100);
  CHECK(describe_json(3) == "3");
}

TEST_CASE("confined_path keeps names from data files under their root", "[untrusted]") {
  const std::filesystem::path root = "/data/cc_sbu_align/image";
  CHECK(confined_path(root, "2.jpg", "ann") == root / "2.jpg");
  CHECK(confined_path(root, "sub/2.jpg", "ann") == root / "sub/2.jpg");
  CHECK_THROWS_WITH(confined_path(root, "../../secret", "ann"), Contains("ann") && Contains(".."));
  CHECK_THROWS_WITH(confined_path(root, "a/../../b", "ann"), Contains(".."));
  CHECK_THROWS_WITH(confined_path(root, "/etc/passwd", "ann"), Contains("absolute"));
  CHECK_THROWS_WITH(confined_path(root, std::string("x.jpg\0/etc/passwd", 17), "ann"), Contains("NUL"));
  CHECK_THROWS_WITH(confined_path(root, "", "ann"), Contains("empty"));
}

TEST_CASE("parse_int64 accepts integers that fit and nothing else", "[untrusted]") {
  int64_t v = 0;
  CHECK((parse_int64("42", v) && v == 42));
  CHECK((parse_int64("-9223372036854775808", v) && v == INT64_MIN));
  CHECK_FALSE(parse_int64("9223372036854775808", v));
  CHECK_FALSE(parse_int64(std::string(100'000, '9'), v));
  CHECK_FALSE(parse_int64("12x", v));
  CHECK_FALSE(parse_int64("", v));
  CHECK_FALSE(parse_int64(" 1", v));
}

TEST_CASE("hostile configs end in named errors", "[config][untrusted]") {
  // Aliases that repeat a 4 KB string 20000 times: 80 MB once expanded ("billion laughs").
  std::string bomb =
      "model:\n  arch: minigpt4\n  prompt: &p \"" + std::string(4096, 'x') + "\"\nrun:\n  train_splits: [";
  for (int i = 0; i < 20000; ++i) bomb += i ? ",*p" : "*p";
  bomb += "]\n";
  CHECK_THROWS_WITH(Config::from_yaml(bomb, "bomb.yaml"), Contains("bomb.yaml") && Contains("limits.max_config_bytes"));

  // A number of a million digits: no std::regex recursion, no bare "stoll".
  const std::string huge_int = "run:\n  max_epoch: " + std::string(1'000'000, '9') + "\n";
  CHECK_THROWS_WITH(Config::from_yaml(huge_int, "int.yaml"),
                    Contains("int.yaml") && Contains("run.max_epoch") && Contains("64-bit"));
  const std::string huge_float = "run:\n  init_lr: 1" + std::string(1'000'000, '0') + "\n";
  CHECK_THROWS_WITH(Config::from_yaml(huge_float, "f.yaml"), Contains("run.init_lr") && Contains("range"));
  CHECK_THROWS_WITH(Config::from_yaml("run:\n  init_lr: 1e309\n", "f.yaml"), Contains("run.init_lr"));
  CHECK(Config::from_yaml("run:\n  init_lr: 1e-400\n", "f.yaml").get_float("run.init_lr", 1) == 0.0);
  CHECK(Config::from_yaml("run:\n  init_lr: .5e-3\n", "f.yaml").get_float("run.init_lr", 1) == Approx(5e-4));
  CHECK_THROWS_WITH(Config::from_yaml("run:\n  init_lr: 1e\n", "f.yaml"), Contains("must be a number"));

  // Nesting far beyond anything a config holds: yaml-cpp's depth guard, as a named error.
  const std::string deep = "model: " + std::string(100'000, '[') + std::string(100'000, ']') + "\n";
  CHECK_THROWS_WITH(Config::from_yaml(deep, "deep.yaml"), Contains("deep.yaml"));

  // Null where a name is expected, a list as a key, a map where a string map's value goes.
  CHECK_NOTHROW(Config::from_yaml("model:\n  arch: ~\n  model_type: ~\n", "null.yaml"));
  CHECK_NOTHROW(Config::from_yaml("model:\n  arch: minigpt4\n  model_type: ~\n", "null.yaml"));
  CHECK_THROWS_WITH(Config::from_yaml("? [a, b]\n: 1\n", "key.yaml"), Contains("key.yaml") && Contains("not a name"));
  CHECK_THROWS_WITH(Config::from_yaml("model:\n  lora_path: {a: [1, 2]}\n", "map.yaml"),
                    Contains("model.lora_path") && Contains("map of names to strings"));
  // Long keys: YAML caps plain keys at 1024 characters; below that an unknown key is quoted,
  // not printed whole.
  for (const size_t length : {1000, 1'000'000}) {
    try {
      Config::from_yaml("run:\n  " + std::string(length, 'k') + ": 1\n", "long.yaml");
      FAIL("a long unknown key was accepted");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).size() < 600);
      CHECK_THAT(e.what(), Contains("long.yaml"));
      if (length < 1024) CHECK_THAT(e.what(), Contains("unknown key"));
    }
  }
}

TEST_CASE("limits.* keys set the process-wide input limits", "[config][untrusted]") {
  const InputLimits saved = input_limits();
  const auto config = Config::from_yaml(
      "limits:\n  max_image_pixels: 1000\n  max_json_depth: 8\n  max_files_per_sample: 7\n"
      "  max_loader_readahead_bytes: 65536\n  max_encoded_image_bytes: 4096\n",
      "l.yaml");
  apply_input_limits(config);
  CHECK(input_limits().max_image_pixels == 1000);
  CHECK(input_limits().max_files_per_sample == 7);
  CHECK(input_limits().max_loader_readahead_bytes == 65536);
  CHECK(input_limits().max_encoded_image_bytes == 4096);
  CHECK_THROWS_WITH(parse_json("[[[[[[[[[[]]]]]]]]]]", "x.json"), Contains("8 levels"));
  set_input_limits(saved);
  CHECK_THROWS_WITH(apply_input_limits(Config::from_yaml("limits:\n  max_json_depth: 0\n", "z.yaml")),
                    Contains("limits.max_json_depth") && Contains("positive"));
  CHECK_THROWS_WITH(Config::from_yaml("limits:\n  max_pixels: 3\n", "u.yaml"), Contains("unknown key"));
}
