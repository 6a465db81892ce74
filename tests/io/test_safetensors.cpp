// safetensors reading (fixtures, mapping semantics), writing (layout, every dtype) and
// the validation of broken files.
#include "minigpt4/common/error.h"
#include "minigpt4/io/safetensors.h"
#include "tests/io/io_test_util.h"

#include <cstring>

using namespace minigpt4;
using namespace minigpt4::test;
using Catch::Contains;

namespace {

// A safetensors file from a header written by hand (padded like real writers) and data.
std::string make_file(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

}  // namespace

TEST_CASE("safetensors fixtures have the manifest's names, dtypes and shapes", "[io]") {
  const auto cases = parity_cases();
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    const auto manifest = read_json(dir / "manifest.json");
    for (const auto& file : manifest["files"]) {
      if (file["format"] != "safetensors") continue;
      const auto path = (dir / file["path"].get<std::string>()).string();
      INFO(path);
      check_against_manifest(io::load_safetensors(path), file);
    }
  }
}

TEST_CASE("eva_vit_g.safetensors holds the full model's visual encoder", "[io]") {
  for (const auto& dir : parity_cases("eva_vit_g.safetensors")) {
    if (!fs::exists(dir / "minigpt4_full.safetensors")) continue;
    const auto full = io::load_safetensors((dir / "minigpt4_full.safetensors").string());
    check_part_of(io::load_safetensors((dir / "eva_vit_g.safetensors").string()), full, "visual_encoder.");
    if (full.count("query_tokens"))  // cases with a Q-Former: BERT's int64 buffer survives
      CHECK(full.at("Qformer.bert.embeddings.position_ids").scalar_type() == at::kLong);
  }
}

TEST_CASE("safetensors metadata is read from the header", "[io]") {
  const auto dir = data_dir() / "parity" / "tiny_vicuna0" / "vicuna";
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const auto meta = io::load_safetensors_metadata((dir / shard).string());
    CHECK(meta == std::map<std::string, std::string>{{"format", "pt"}});
  }
}

TEST_CASE("safetensors round trip keeps every dtype, shape and value", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("all.safetensors");
  const auto sd = every_dtype();
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "round \"trip\""}};
  io::save_safetensors(path, sd, meta);

  const auto loaded = io::load_safetensors(path);
  REQUIRE(loaded.size() == sd.size());
  for (const auto& [name, t] : sd) {
    check_same(name, loaded.at(name), t);
    // The writer orders data so that every tensor can be used in place.
    CHECK(reinterpret_cast<uintptr_t>(loaded.at(name).data_ptr()) % loaded.at(name).element_size() == 0);
  }
  CHECK(io::load_safetensors_metadata(path) == meta);

  // Standard layout: 8-byte length, space-padded JSON to a multiple of 8, packed data.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(bytes[8] == '{');
  size_t data_bytes = 0;
  for (const auto& [name, t] : sd) data_bytes += t.nbytes();
  CHECK(bytes.size() == 8 + n + data_bytes);
  // Atomic write: no temporary is left next to the result.
  CHECK(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()) == 1);
}

TEST_CASE("safetensors without metadata and with an empty state dict", "[io]") {
  TempDir tmp;
  io::save_safetensors(tmp.file("empty.safetensors"), {});
  CHECK(io::load_safetensors(tmp.file("empty.safetensors")).empty());
  CHECK(io::load_safetensors_metadata(tmp.file("empty.safetensors")).empty());
}

TEST_CASE("safetensors tensors are mapped copy-on-write and outlive the state dict", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("w.safetensors");
  io::save_safetensors(path, {{"w", torch::arange(6, torch::kFloat)}, {"b", torch::ones({2})}});
  const std::string before = read_bytes(path);

  at::Tensor w;
  {
    auto sd = io::load_safetensors(path);
    w = sd.at("w");
  }            // the state dict is gone; `w` still owns the mapping
  w.mul_(10);  // private copy-on-write page: no crash, the file is untouched
  CHECK(at::equal(w, torch::arange(6, torch::kFloat) * 10));
  CHECK(read_bytes(path) == before);
  CHECK(at::equal(io::load_safetensors(path).at("w"), torch::arange(6, torch::kFloat)));
}

TEST_CASE("safetensors misaligned tensors are copied, not rejected", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("odd.safetensors");
  // A U8 tensor of 1 byte first pushes the I32 to an odd offset (a careless writer).
  const int32_t v[2] = {7, -9};
  std::string data("\x05", 1);
  data.append(reinterpret_cast<const char*>(v), sizeof v);
  write_bytes(path, make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                              R"("b":{"dtype":"I32","shape":[2],"data_offsets":[1,9]}})",
                              data));
  const auto sd = io::load_safetensors(path);
  CHECK(sd.at("a").item<uint8_t>() == 5);
  CHECK(at::equal(sd.at("b"), torch::tensor({7, -9}, torch::kInt)));
}

TEST_CASE("broken safetensors files raise errors naming the file and tensor", "[io]") {
  TempDir tmp;
  const std::string good =
      make_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", std::string(16, '\0'));
  auto write = [&](const std::string& name, const std::string& bytes) {
    write_bytes(tmp.path() / name, bytes);
    return tmp.file(name);
  };

  SECTION("the good file loads") { CHECK(io::load_safetensors(write("good.safetensors", good)).size() == 1); }
  SECTION("missing file") {
    REQUIRE_THROWS_WITH(io::load_safetensors(tmp.file("nope.safetensors")), Contains("nope.safetensors"));
  }
  SECTION("shorter than the length field") {
    const auto p = write("tiny.safetensors", "abcd");
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("tiny.safetensors") && Contains("too short"));
    REQUIRE_THROWS_WITH(io::load_safetensors_metadata(p), Contains("tiny.safetensors"));
  }
  SECTION("truncated inside the data") {
    const auto p = write("cut_data.safetensors", good.substr(0, good.size() - 4));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("cut_data.safetensors") && Contains("'w'"));
  }
  SECTION("truncated inside the header") {
    const auto p = write("cut_header.safetensors", good.substr(0, 20));
    REQUIRE_THROWS_WITH(io::load_safetensors(p),
                        Contains("cut_header.safetensors") && Contains("exceeds the file size"));
    REQUIRE_THROWS_WITH(io::load_safetensors_metadata(p), Contains("cut_header.safetensors"));
  }
  SECTION("header JSON is corrupt") {
    const auto p = write("bad_json.safetensors", make_file(R"({"w":{"dtype":"F32",)", std::string(16, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("bad_json.safetensors") && Contains("not valid JSON"));
    REQUIRE_THROWS_WITH(io::load_safetensors_metadata(p), Contains("bad_json.safetensors"));
  }
  SECTION("header is not an object") {
    const auto p = write("array.safetensors", make_file("[1, 2]", ""));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("array.safetensors"));
  }
  SECTION("offsets out of bounds") {
    const auto p = write("oob.safetensors", make_file(R"({"w":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}})",
                                                      std::string(16, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("oob.safetensors") && Contains("'w'") && Contains("outside"));
  }
  SECTION("offsets reversed") {
    const auto p = write("reversed.safetensors",
                         make_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", std::string(16, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("reversed.safetensors") && Contains("'w'"));
  }
  SECTION("byte count disagrees with shape and dtype") {
    const auto p = write("size.safetensors", make_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
                                                       std::string(16, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p),
                        Contains("size.safetensors") && Contains("'w'") && Contains("needs 16"));
  }
  SECTION("unknown dtype") {
    const auto p = write("dtype.safetensors",
                         make_file(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}})", std::string(8, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("dtype.safetensors") && Contains("'w'") && Contains("Q4"));
  }
  SECTION("negative dimension") {
    const auto p = write("neg.safetensors",
                         make_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(8, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("neg.safetensors") && Contains("'w'"));
  }
  SECTION("entry without data_offsets") {
    const auto p = write("fields.safetensors", make_file(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(8, '\0')));
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("fields.safetensors") && Contains("data_offsets"));
  }
  SECTION("metadata value that is not a string") {
    const auto p = write("meta.safetensors", make_file(R"({"__metadata__":{"epoch":3}})", ""));
    REQUIRE_THROWS_WITH(io::load_safetensors_metadata(p), Contains("meta.safetensors") && Contains("epoch"));
  }
  SECTION("absurd header length") {
    std::string bytes = good;
    const uint64_t huge = uint64_t(1) << 62;
    std::memcpy(bytes.data(), &huge, 8);
    const auto p = write("huge.safetensors", bytes);
    REQUIRE_THROWS_WITH(io::load_safetensors(p), Contains("huge.safetensors"));
  }
}

TEST_CASE("save_safetensors rejects what it cannot store", "[io]") {
  TempDir tmp;
  const auto path = tmp.file("bad.safetensors");
  REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"c", torch::zeros({2}, torch::kComplexFloat)}}),
                      Contains("bad.safetensors") && Contains("'c'"));
  REQUIRE_THROWS_WITH(io::save_safetensors(path, {{"u", at::Tensor()}}), Contains("'u'"));
  REQUIRE_THROWS_WITH(io::save_safetensors(tmp.file("no/such/dir.safetensors"), {{"a", torch::ones({1})}}),
                      Contains("dir.safetensors"));
  CHECK(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()) == 0);
}
