// torch.save zip checkpoints: the fixtures, the pickle subset torch emits (and the junk
// real training checkpoints carry next to the weights), writing, and broken files.
#include "minigpt4/common/error.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "tests/io/io_test_util.h"

#include <caffe2/serialize/inline_container.h>

#include <cmath>

using namespace minigpt4;
using namespace minigpt4::test;
using Catch::Contains;

namespace {

StateDict full_model(const fs::path& dir) { return io::load_safetensors((dir / "minigpt4_full.safetensors").string()); }

}  // namespace

TEST_CASE("torch.save fixtures have the manifest's names, dtypes and shapes", "[io]") {
  const auto cases = parity_cases();
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    const auto manifest = read_json(dir / "manifest.json");
    for (const auto& file : manifest["files"]) {
      if (file["format"].get<std::string>().rfind("torch.save", 0) != 0) continue;
      const auto path = (dir / file["path"].get<std::string>()).string();
      INFO(path);
      check_against_manifest(io::load_torch_checkpoint(path), file);
    }
  }
}

TEST_CASE("eva_vit_g.pth holds the full model's visual encoder", "[io]") {
  for (const auto& dir : parity_cases("eva_vit_g.pth")) {
    if (!fs::exists(dir / "minigpt4_full.safetensors")) continue;
    const auto eva = io::load_torch_checkpoint((dir / "eva_vit_g.pth").string());
    check_part_of(eva, full_model(dir), "visual_encoder.");
  }
}

TEST_CASE("blip2_pretrained.pth holds the Q-Former MiniGPT-4 keeps plus what it ignores", "[io]") {
  for (const auto& dir : parity_cases("blip2_pretrained.pth")) {
    if (!fs::exists(dir / "minigpt4_full.safetensors")) continue;
    const auto manifest = read_json(dir / "manifest.json");
    const auto full = full_model(dir);
    const auto blip2 = io::load_torch_checkpoint((dir / "blip2_pretrained.pth").string());
    std::set<std::string> unused;
    for (const auto& [name, t] : blip2) {
      REQUIRE(name.rfind("model/", 0) == 0);
      const std::string key = name.substr(6);
      if (full.count(key))
        check_same(key, t, full.at(key));
      else
        unused.insert(key);
    }
    for (const auto& [key, t] : full)
      if (key.rfind("Qformer.", 0) == 0 || key.rfind("ln_vision.", 0) == 0 || key == "query_tokens")
        CHECK(blip2.count("model/" + key) == 1);
    CHECK(unused == manifest["blip2_keys_ignored_by_minigpt4"].get<std::set<std::string>>());

    const auto& ids = blip2.at("model/Qformer.bert.embeddings.position_ids");
    CHECK(ids.scalar_type() == at::kLong);
    CHECK(at::equal(ids.flatten(), torch::arange(ids.numel(), torch::kLong)));
    CHECK(blip2.at("model/temp").dim() == 0);
  }
}

TEST_CASE("pretrained_minigpt4.pth holds llama_proj", "[io]") {
  for (const auto& dir : parity_cases("pretrained_minigpt4.pth")) {
    if (!fs::exists(dir / "minigpt4_full.safetensors")) continue;
    const auto full = full_model(dir);
    const auto sd = io::load_torch_checkpoint((dir / "pretrained_minigpt4.pth").string());
    REQUIRE(sd.size() == 2);
    check_same("llama_proj.weight", sd.at("model/llama_proj.weight"), full.at("llama_proj.weight"));
    check_same("llama_proj.bias", sd.at("model/llama_proj.bias"), full.at("llama_proj.bias"));
  }
}

TEST_CASE("vicuna_bin/pytorch_model.bin holds the LLaMA with its rotary buffers", "[io]") {
  for (const auto& dir : parity_cases("vicuna_bin/pytorch_model.bin")) {
    if (!fs::exists(dir / "minigpt4_full.safetensors")) continue;
    const auto sd = io::load_torch_checkpoint((dir / "vicuna_bin/pytorch_model.bin").string());
    check_part_of(sd, full_model(dir), "llama_model.");

    const auto config = read_json(dir / "vicuna_bin/config.json");
    const int64_t head_dim = config["hidden_size"].get<int64_t>() / config["num_attention_heads"].get<int64_t>();
    const auto expected = 1.0 / torch::pow(10000.0, torch::arange(0, head_dim, 2, torch::kDouble) / head_dim);
    int found = 0;
    for (const auto& [name, t] : sd) {
      if (name.find("rotary_emb.inv_freq") == std::string::npos) continue;
      ++found;
      INFO(name);
      CHECK(torch::allclose(t.to(torch::kDouble), expected, 1e-6, 0));
    }
    CHECK(found == config["num_hidden_layers"].get<int>());
  }
}

TEST_CASE("torch checkpoint round trip keeps every dtype, layout and shared storage", "[io]") {
  TempDir tmp;
  auto sd = every_dtype();
  const auto base = torch::arange(24, torch::kFloat).reshape({4, 6});
  sd["view/base"] = base;
  sd["view/t"] = base.t();
  sd["view/slice"] = base.slice(0, 1, 3).slice(1, 0, 6, 2);
  sd["view/row"] = base[2];
  sd["tied"] = base;

  for (const std::string wrap : {"model", ""}) {
    const auto path = tmp.file("ck" + wrap + ".pth");
    io::save_torch_checkpoint(path, sd, wrap);
    const auto loaded = io::load_torch_checkpoint(path);
    const std::string prefix = wrap.empty() ? "" : wrap + "/";
    REQUIRE(loaded.size() == sd.size());
    for (const auto& [name, t] : sd) {
      const auto& l = loaded.at(prefix + name);
      check_same(name, l, t);
      CHECK(l.strides() == t.strides());
      CHECK(l.storage_offset() == t.storage_offset());
    }
    // Views of one storage come back as views of one storage.
    const void* shared = loaded.at(prefix + "view/base").storage().data();
    for (const char* name : {"view/t", "view/slice", "view/row", "tied"})
      CHECK(loaded.at(prefix + name).storage().data() == shared);
  }
  CHECK(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()) == 2);
}

TEST_CASE("torch checkpoint tensors are copy-on-write views of the file", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("w.pth");
  io::save_torch_checkpoint(path, {{"w", torch::arange(8, torch::kFloat)}});
  const std::string before = read_bytes(path);
  auto w = io::load_torch_checkpoint(path).at("model/w");
  w.fill_(-1);
  CHECK(read_bytes(path) == before);
  CHECK(at::equal(io::load_torch_checkpoint(path).at("model/w"), torch::arange(8, torch::kFloat)));
}

TEST_CASE("non-tensor content of a checkpoint is parsed and left out", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("train.pth");
  Pickle p;
  p.op(0x80).op(2).op('}').op('q').op(0).op('(');
  // 'model': OrderedDict([('w', tensor), ('p', Parameter(tensor view))])
  p.str("model").ordered_dict().op('q').op(1).op('(');
  p.str("w").tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1});
  p.str("p").global("torch._utils", "_rebuild_parameter").op('(');
  p.tensor("FloatStorage", "0", 6, 1, {2}, {3}).op(0x88).ordered_dict().op('t').op('R');
  p.op('u');
  // 'optimizer': {'state': {0: {'step': 10, 'exp_avg': tensor}}, 'param_groups': [{'lr': 1e-3, 'params': [0, 1]}]}
  p.str("optimizer").op('}').op('(');
  p.str("state").op('}').op('(').op('K').op(0).op('}').op('(');
  p.str("step").int32(10).str("exp_avg").tensor("LongStorage", "1", 2, 0, {2}, {1});
  p.op('u').op('u');
  p.str("param_groups").op(']').op('(').op('}').op('(').str("lr").real(1e-3).str("params");
  p.op(']').op('(').op('K').op(0).op('K').op(1).op('e').op('u').op('e');
  p.op('u');
  // 'args': argparse.Namespace(lr=0.1, name='x', scale=tensor, flags=(True, None)) via NEWOBJ + BUILD
  p.str("args").global("argparse", "Namespace").op(')').op(0x81).op('}').op('(');
  p.str("lr").real(0.1).str("name").str("x").str("scale").tensor("FloatStorage", "0", 6, 5, {}, {});
  p.str("flags").op(0x88).op('N').op(0x86).op('u').op('b');
  // unknown callables, huge ints, bytes, memo reuse
  p.str("numpy").global("numpy.core.multiarray", "scalar").op('(').op('N').op('C').op(2).raw("ab", 2).op('t').op('R');
  p.str("big").op(0x8a).op(11).raw("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b", 11);
  p.str("again").op('h').op(1);  // the 'model' OrderedDict a second time, from the memo
  p.str("neg").op(0x8a).op(2).raw("\x00\xff", 2);
  p.op('u').op('.');
  write_zip(path, p.s,
            {{"data/0", torch::arange(6, torch::kFloat)}, {"data/1", torch::tensor({int64_t(5), int64_t(-7)})}});

  const auto sd = io::load_torch_checkpoint(path);
  std::set<std::string> names;
  for (const auto& [name, t] : sd) names.insert(name);
  CHECK(names ==
        std::set<std::string>{"model/w", "model/p", "optimizer/state/0/exp_avg", "args/scale", "again/w", "again/p"});
  CHECK(at::equal(sd.at("model/w"), torch::arange(6, torch::kFloat).reshape({2, 3})));
  CHECK(at::equal(sd.at("model/p"), torch::tensor({1.0f, 4.0f})));
  CHECK(sd.at("model/p").storage().data() == sd.at("model/w").storage().data());
  CHECK(at::equal(sd.at("optimizer/state/0/exp_avg"), torch::tensor({int64_t(5), int64_t(-7)})));
  CHECK(sd.at("args/scale").dim() == 0);
  CHECK(sd.at("args/scale").item<float>() == 5.0f);
}

TEST_CASE("protocol-4 framing, memoize and stack globals are understood", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("p4.pth");
  Pickle p;
  p.op(0x80).op(4).op(0x95).raw("\x00\x00\x00\x00\x00\x00\x00\x00", 8);
  p.op('}').op(0x94).op('(');
  p.op(0x8c).op(1).raw("a", 1).op(0x94);
  p.op(0x8c).op(12).raw("torch._utils", 12).op(0x8c).op(18).raw("_rebuild_tensor_v2", 18).op(0x93).op(0x94);
  p.op('(').op('(').str("storage").global("torch", "HalfStorage").str("k").str("cuda:0").int32(3).op('t').op('Q');
  p.int32(0).op('(').int32(3).op('t').op('(').int32(1).op('t').op(0x89).ordered_dict().op('t').op('R');
  p.op(0x8c).op(1).raw("b", 1).op('h').op(1).op('u').op('.');  // 'b' is the string 'a' again: not a tensor
  write_zip(path, p.s, {{"data/k", torch::tensor({1.0, 2.0, 3.0}).to(torch::kHalf)}});
  const auto sd = io::load_torch_checkpoint(path);
  REQUIRE(sd.size() == 1);
  CHECK(at::equal(sd.at("a"), torch::tensor({1.0, 2.0, 3.0}).to(torch::kHalf)));
}

TEST_CASE("broken torch checkpoints raise errors naming the file", "[io]") {
  TempDir tmp;
  const auto fixture = data_dir() / "parity" / "tiny_vicuna0" / "eva_vit_g.pth";
  auto write = [&](const std::string& name, const std::string& bytes) {
    write_bytes(tmp.path() / name, bytes);
    return tmp.file(name);
  };

  SECTION("truncated zip") {
    const std::string bytes = read_bytes(fixture);
    const auto p = write("cut.pth", bytes.substr(0, bytes.size() / 2));
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("cut.pth"));
  }
  SECTION("zip cut just before its end record") {
    const std::string bytes = read_bytes(fixture);
    const auto p = write("tail.pth", bytes.substr(0, bytes.size() - 10));
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("tail.pth"));
  }
  SECTION("garbage") {
    const auto p = write("garbage.pth", std::string(1000, 'z'));
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("garbage.pth") && Contains("not a PyTorch checkpoint"));
  }
  SECTION("empty file") {
    const auto p = write("empty.pth", "");
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("empty.pth"));
  }
  SECTION("missing file") {
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(tmp.file("absent.pth")), Contains("absent.pth"));
  }
  SECTION("legacy pickle file") {
    const auto p = write("legacy.pth", std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("legacy.pth") && Contains("torch>=1.6"));
  }
  SECTION("legacy tar file") {
    std::string tar(1024, '\0');
    tar.replace(257, 5, "ustar");
    const auto p = write("old_tar.pth", tar);
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("old_tar.pth") && Contains("torch>=1.6"));
  }
  SECTION("zip without data.pkl") {
    const auto p = tmp.file("nopkl.pth");
    {
      caffe2::serialize::PyTorchStreamWriter zip(p);
      zip.writeRecord("other.txt", "hi", 2);
      zip.writeEndOfFile();
    }
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("nopkl.pth") && Contains("data.pkl"));
  }
  SECTION("truncated pickle") {
    const auto p = tmp.file("cutpkl.pth");
    Pickle pk;
    pk.op(0x80).op(2).op('}').op('(').str("w").tensor("FloatStorage", "0", 2, 0, {2}, {1});
    write_zip(p, pk.s.substr(0, pk.s.size() - 5), {{"data/0", torch::ones({2})}});
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("cutpkl.pth") && Contains("pickle"));
  }
  SECTION("storage record missing") {
    const auto p = tmp.file("nostorage.pth");
    Pickle pk;
    pk.op(0x80).op(2).op('}').op('(').str("w").tensor("FloatStorage", "7", 2, 0, {2}, {1}).op('u').op('.');
    write_zip(p, pk.s, {});
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("nostorage.pth") && Contains("data/7"));
  }
  SECTION("view past the end of its storage") {
    const auto p = tmp.file("overrun.pth");
    Pickle pk;
    pk.op(0x80).op(2).op('}').op('(').str("w").tensor("FloatStorage", "0", 4, 2, {2, 2}, {2, 1}).op('u').op('.');
    write_zip(p, pk.s, {{"data/0", torch::ones({4})}});
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("overrun.pth") && Contains("past the end"));
  }
  SECTION("unsupported storage type") {
    const auto p = tmp.file("complex.pth");
    Pickle pk;
    pk.op(0x80).op(2).op('}').op('(').str("w").tensor("ComplexFloatStorage", "0", 1, 0, {1}, {1}).op('u').op('.');
    write_zip(p, pk.s, {{"data/0", torch::ones({2})}});
    REQUIRE_THROWS_WITH(io::load_torch_checkpoint(p), Contains("complex.pth") && Contains("ComplexFloatStorage"));
  }
}
