// load_state_dict: format detection, LAVIS unwrapping, Hugging Face directories (sharded or
// not, safetensors or .bin) and their failure modes; read_json_file.
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "tests/io/io_test_util.h"

#include <cmath>
#include <limits>

using namespace minigpt4;
using namespace minigpt4::test;
using Catch::Contains;

namespace {

bool is_inv_freq(const std::string& name) { return name.find("rotary_emb.inv_freq") != std::string::npos; }

std::string str(const fs::path& p) { return p.string(); }

}  // namespace

TEST_CASE("load_state_dict reads every fixture format", "[io]") {
  const auto cases = parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    INFO(dir.string());
    const auto full = io::load_safetensors(str(dir / "minigpt4_full.safetensors"));
    CHECK(io::load_state_dict(str(dir / "minigpt4_full.safetensors")).size() == full.size());

    if (fs::exists(dir / "eva_vit_g.pth"))
      check_part_of(io::load_state_dict(str(dir / "eva_vit_g.pth")), full, "visual_encoder.");
    if (fs::exists(dir / "eva_vit_g.safetensors"))
      check_part_of(io::load_state_dict(str(dir / "eva_vit_g.safetensors")), full, "visual_encoder.");

    if (fs::exists(dir / "blip2_pretrained.pth")) {
      // {'model': ...} is unwrapped; the BLIP-2 heads MiniGPT-4 drops are still there.
      const auto blip2 = io::load_state_dict(str(dir / "blip2_pretrained.pth"));
      const auto manifest = read_json(dir / "manifest.json");
      const auto ignored = manifest["blip2_keys_ignored_by_minigpt4"].get<std::set<std::string>>();
      for (const auto& [name, t] : blip2) {
        INFO(name);
        if (ignored.count(name)) continue;
        REQUIRE(full.count(name) == 1);
        check_same(name, t, full.at(name));
      }
      CHECK(blip2.count("query_tokens") == 1);
      CHECK(blip2.at("Qformer.bert.embeddings.position_ids").scalar_type() == at::kLong);
    }

    for (const char* name : {"pretrained_minigpt4.pth", "pretrained_minigpt4.safetensors"}) {
      if (!fs::exists(dir / name)) continue;
      const auto sd = io::load_state_dict(str(dir / name));
      INFO(name);
      CHECK(sd.size() == 2);
      check_part_of(sd, full, "", [&](const std::string& n) { return n.rfind("llama_proj.", 0) != 0; });
    }

    // HF directories: safetensors shards omit the rotary buffers, the .bin layouts keep them.
    if (fs::exists(dir / "vicuna"))
      check_part_of(io::load_state_dict(str(dir / "vicuna")), full, "llama_model.", is_inv_freq);
    if (fs::exists(dir / "vicuna_bin_sharded/pytorch_model.bin.index.json"))  // the index stands for its shards
      check_part_of(io::load_state_dict(str(dir / "vicuna_bin_sharded/pytorch_model.bin.index.json")), full,
                    "llama_model.");
    for (const char* sub : {"vicuna_bin", "vicuna_bin_sharded"}) {
      if (!fs::exists(dir / sub)) continue;
      INFO(sub);
      const auto sd = io::load_state_dict(str(dir / sub));
      check_part_of(sd, full, "llama_model.");
    }
  }
}

TEST_CASE("load_state_dict unwraps 'model' and 'state_dict', keeps flat files flat", "[io]") {
  TempDir tmp;
  const StateDict sd{{"a.weight", torch::ones({2, 2})}, {"b", torch::arange(3)}};
  for (const std::string wrap : {"model", "state_dict", ""}) {
    const auto path = tmp.file("w_" + wrap + ".pth");
    io::save_torch_checkpoint(path, sd, wrap);
    const auto loaded = io::load_state_dict(path);
    INFO(wrap);
    REQUIRE(loaded.size() == 2);
    check_same("a.weight", loaded.at("a.weight"), sd.at("a.weight"));
    check_same("b", loaded.at("b"), sd.at("b"));
  }
}

TEST_CASE("load_state_dict goes by content, not by file name", "[io]") {
  TempDir tmp;
  const StateDict sd{{"x", torch::arange(4, torch::kFloat)}};
  io::save_safetensors(tmp.file("really_safetensors.bin"), sd);
  io::save_torch_checkpoint(tmp.file("really_torch.safetensors"), sd);
  check_same("x", io::load_state_dict(tmp.file("really_safetensors.bin")).at("x"), sd.at("x"));
  check_same("x", io::load_state_dict(tmp.file("really_torch.safetensors")).at("x"), sd.at("x"));
}

TEST_CASE("Hugging Face directories with a single weight file", "[io]") {
  TempDir tmp;
  const StateDict sd{{"model.norm.weight", torch::ones({4})}, {"lm_head.weight", torch::eye(4)}};
  fs::create_directories(tmp.path() / "st");
  io::save_safetensors(tmp.file("st/model.safetensors"), sd);
  fs::create_directories(tmp.path() / "bin");
  io::save_torch_checkpoint(tmp.file("bin/pytorch_model.bin"), sd, "");
  for (const char* sub : {"st", "bin"}) {
    const auto loaded = io::load_state_dict(tmp.file(sub));
    REQUIRE(loaded.size() == 2);
    check_same("lm_head.weight", loaded.at("lm_head.weight"), sd.at("lm_head.weight"));
  }
  // safetensors wins over .bin when both exist.
  io::save_safetensors(tmp.file("bin/model.safetensors"), {{"only_here", torch::zeros({1})}});
  CHECK(io::load_state_dict(tmp.file("bin")).count("only_here") == 1);
}

TEST_CASE("broken weight paths raise errors naming what is wrong", "[io]") {
  TempDir tmp;
  const auto vicuna = data_dir() / "parity" / "tiny_vicuna0" / "vicuna";

  SECTION("path does not exist") { REQUIRE_THROWS_WITH(io::load_state_dict(tmp.file("nowhere")), Contains("nowhere")); }
  SECTION("empty directory") {
    fs::create_directories(tmp.path() / "empty_model");
    REQUIRE_THROWS_WITH(io::load_state_dict(tmp.file("empty_model")),
                        Contains("empty_model") && Contains("model.safetensors") && Contains("pytorch_model.bin"));
  }
  SECTION("garbage file") {
    write_bytes(tmp.path() / "junk.bin", std::string(64, '\x07'));
    REQUIRE_THROWS_WITH(io::load_state_dict(tmp.file("junk.bin")), Contains("junk.bin"));
  }
  SECTION("truncated .pth") {
    const auto bytes = read_bytes(data_dir() / "parity" / "tiny_vicuna0" / "pretrained_minigpt4.pth");
    write_bytes(tmp.path() / "half.pth", bytes.substr(0, bytes.size() / 2));
    REQUIRE_THROWS_WITH(io::load_state_dict(tmp.file("half.pth")), Contains("half.pth"));
  }
  SECTION("index names a shard that is missing") {
    const auto dir = tmp.path() / "sharded";
    fs::create_directories(dir);
    fs::copy_file(vicuna / "model.safetensors.index.json", dir / "model.safetensors.index.json");
    fs::copy_file(vicuna / "model-00001-of-00002.safetensors", dir / "model-00001-of-00002.safetensors");
    REQUIRE_THROWS_WITH(io::load_state_dict(dir.string()), Contains("model-00002-of-00002.safetensors"));
  }
  SECTION("index names a tensor its shard lacks") {
    const auto dir = tmp.path() / "lying";
    fs::create_directories(dir);
    auto index = read_json(vicuna / "model.safetensors.index.json");
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    fs::copy_file(vicuna / "model-00001-of-00002.safetensors", dir / "model-00001-of-00002.safetensors");
    fs::copy_file(vicuna / "model-00002-of-00002.safetensors", dir / "model-00002-of-00002.safetensors");
    REQUIRE_THROWS_WITH(io::load_state_dict(dir.string()),
                        Contains("model.extra.weight") && Contains("model-00001-of-00002.safetensors"));
  }
  SECTION("index that is not JSON") {
    const auto dir = tmp.path() / "badindex";
    fs::create_directories(dir);
    write_bytes(dir / "pytorch_model.bin.index.json", "{\"weight_map\": ");
    REQUIRE_THROWS_WITH(io::load_state_dict(dir.string()), Contains("pytorch_model.bin.index.json"));
  }
  SECTION("index without weight_map") {
    const auto dir = tmp.path() / "nomap";
    fs::create_directories(dir);
    write_bytes(dir / "model.safetensors.index.json", "{\"metadata\": {}}");
    REQUIRE_THROWS_WITH(io::load_state_dict(dir.string()),
                        Contains("model.safetensors.index.json") && Contains("weight_map"));
  }
  SECTION("a shard that is itself broken") {
    const auto dir = tmp.path() / "broken_shard";
    fs::create_directories(dir);
    fs::copy_file(vicuna / "model.safetensors.index.json", dir / "model.safetensors.index.json");
    fs::copy_file(vicuna / "model-00001-of-00002.safetensors", dir / "model-00001-of-00002.safetensors");
    const auto bytes = read_bytes(vicuna / "model-00002-of-00002.safetensors");
    write_bytes(dir / "model-00002-of-00002.safetensors", bytes.substr(0, bytes.size() - 100));
    REQUIRE_THROWS_WITH(io::load_state_dict(dir.string()), Contains("model-00002-of-00002.safetensors"));
  }
}

TEST_CASE("read_json_file parses files and names the broken ones", "[io]") {
  TempDir tmp;
  write_bytes(tmp.path() / "ok.json", R"({"a": [1, 2], "b": "c"})");
  const auto j = io::read_json_file(tmp.file("ok.json"));
  CHECK(j["a"][1] == 2);
  CHECK(j["b"] == "c");
  const auto config = io::read_json_file(str(data_dir() / "parity" / "tiny_vicuna0" / "vicuna" / "config.json"));
  CHECK(config["model_type"] == "llama");

  // Python's json writes these non-JSON literals (the fixture manifests contain Infinity).
  write_bytes(tmp.path() / "python.json", R"({"a": Infinity, "b": [-Infinity, NaN], "c": "NaN and Infinity \" NaN"})");
  const auto py = io::read_json_file(tmp.file("python.json"));
  CHECK(py["a"].get<double>() == std::numeric_limits<double>::infinity());
  CHECK(py["b"][0].get<double>() == -std::numeric_limits<double>::infinity());
  CHECK(std::isnan(py["b"][1].get<double>()));
  CHECK(py["c"] == "NaN and Infinity \" NaN");

  write_bytes(tmp.path() / "broken.json", R"({"a": [1, 2)");
  REQUIRE_THROWS_WITH(io::read_json_file(tmp.file("broken.json")), Contains("broken.json") && Contains("invalid JSON"));
  REQUIRE_THROWS_WITH(io::read_json_file(tmp.file("missing.json")), Contains("missing.json"));
  REQUIRE_THROWS_WITH(io::read_json_file(tmp.path().string()), Contains("directory"));
}
