// Weight files from strangers (issue 17): each class of hostile input an attacker found is
// built here, small, at test time, and must end in a minigpt4::Error naming the file and
// the rule or limit broken: no crash, no hang, no memory blow-up, no file opened outside
// its folder, nothing silently accepted.
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/pickle.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "tests/io/io_test_util.h"

#include <chrono>

using namespace minigpt4;
using namespace minigpt4::test;
using Catch::Contains;
namespace pickle = minigpt4::io::pickle;

namespace {

pickle::ValuePtr unpickle(const std::string& program, const pickle::Hooks& hooks = {}) {
  return pickle::unpickle(reinterpret_cast<const uint8_t*>(program.data()), program.size(), hooks, "test.pkl");
}

// The message of the minigpt4::Error `f` throws (and that it throws one).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("no minigpt4::Error was thrown");
  return {};
}

// A safetensors file: 8-byte length, header, data.
std::string safetensors_file(const std::string& header, const std::string& data) {
  const uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string f32_entry(const std::string& name, int64_t begin, int64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string((end - begin) / 4) +
         "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// A pickle program: {'w': tensor over storage "0" of `numel` floats}.
std::string one_tensor_pickle(int32_t numel) {
  Pickle p;
  p.proto().op('}').op('(').str("w").tensor("FloatStorage", "0", numel, 0, {numel}, {1}).op('u').op('.');
  return p.s;
}

}  // namespace

// ---------------------------------------------------------------- pickle: depth, cycles, copies

TEST_CASE("pickle: values nested a million deep are refused, and deep values are freed without recursion",
          "[io][hostile]") {
  Pickle p;
  p.proto().op(']');
  for (int i = 0; i < 1'000'000; ++i) p.op(0x85);  // TUPLE1: (((...),),)
  p.op('.');
  CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("test.pkl") && Contains("limits.max_pickle_depth"));

  // Allowed that deep, the value is built and then freed: a recursive destructor would
  // overflow the stack here.
  LimitsGuard limits;
  limits.set([](InputLimits& l) { l.max_pickle_depth = 2'000'000; });
  auto v = unpickle(p.s);
  CHECK(v->is(pickle::Value::Kind::Tuple));
  v.reset();
}

TEST_CASE("pickle: a list that holds itself is refused as a cycle", "[io][hostile]") {
  Pickle once;  // l = []; l.append(l)
  once.proto().op(']').op(0x94).bin_get(0).op('a').op('.');
  CHECK_THAT(error_of([&] { unpickle(once.s); }), Contains("test.pkl") && Contains("cycle"));
  Pickle twice;  // l = []; l.extend([l, l])
  twice.proto().op(']').op(0x94).op('(').bin_get(0).bin_get(0).op('e').op('.');
  CHECK_THAT(error_of([&] { unpickle(twice.s); }), Contains("cycle"));
}

TEST_CASE("pickle: a chain stitched together through the memo is measured after STOP", "[io][hostile]") {
  // 3000 empty lists, then l[i].append(l[i + 1]) from the top down: each append sees an
  // empty child, so only the final check can see the chain is 3000 deep.
  constexpr uint32_t n = 3000;
  Pickle p;
  p.proto();
  for (uint32_t i = 0; i < n; ++i) p.op(']').long_put(i).op('0');
  for (uint32_t i = 0; i + 1 < n; ++i) p.long_get(i).long_get(i + 1).op('a').op('0');
  Pickle chain = p;
  chain.long_get(0).op('.');
  CHECK_THAT(error_of([&] { unpickle(chain.s); }), Contains("limits.max_pickle_depth"));
  Pickle ring = p;  // and closed into a ring
  ring.long_get(n - 1).long_get(0).op('a').op('0').long_get(0).op('.');
  CHECK_THAT(error_of([&] { unpickle(ring.s); }), Contains("cycle") || Contains("limits.max_pickle_depth"));
}

TEST_CASE("pickle: a memoized 200k-item tuple passed to 200k REDUCEs is shared, not copied", "[io][hostile]") {
  // Copying the arguments into each result would be 4e10 copies: a hang.
  constexpr int n = 200'000;
  Pickle p;
  p.proto().op('(');
  for (int i = 0; i < n; ++i) p.op('N');
  p.op('t').bin_put(0).op('0').global("builtins", "set").bin_put(1).op('0');
  for (int i = 0; i < n; ++i) p.bin_get(1).bin_get(0).op('R').op('0');
  p.op('N').op('.');
  CHECK(unpickle(p.s)->is(pickle::Value::Kind::None));
}

TEST_CASE("pickle: containers a hook copies count against max_pickle_items", "[io][hostile]") {
  // OrderedDict(pairs) copies its pairs: a 100k-pair list REDUCEd 1000 times is 1e8 copies.
  TempDir tmp;
  LimitsGuard limits;
  limits.set([](InputLimits& l) { l.max_pickle_items = 2'000'000; });
  Pickle p;
  p.proto().op('(');
  for (int i = 0; i < 100'000; ++i) p.op('N').op('N').op(0x86);
  p.op('l').bin_put(0).op('0').global("collections", "OrderedDict").bin_put(1).op('0');
  for (int i = 0; i < 1000; ++i) p.bin_get(1).bin_get(0).op(0x85).op('R').op('0');
  p.op('}').op('.');
  const auto path = tmp.file("copies.pth");
  write_zip(path, p.s, {});
  CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }),
             Contains("copies.pth") && Contains("limits.max_pickle_items"));
}

// ---------------------------------------------------------------- pickle: globals

TEST_CASE("pickle: globals outside the weights-only allowlist are refused by name", "[io][hostile]") {
  SECTION("GLOBAL os.system") {
    Pickle p;
    p.proto().global("os", "system").str("touch /tmp/pwned").op(0x85).op('R').op('.');
    CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("test.pkl") && Contains("refuses global os.system"));
  }
  SECTION("STACK_GLOBAL builtins.eval") {
    Pickle p;
    p.proto(4).op(0x8c).op(8).raw("builtins", 8).op(0x8c).op(4).raw("eval", 4).op(0x93).str("1").op(0x85).op('R');
    p.op('.');
    CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("refuses global builtins.eval"));
  }
  SECTION("INST subprocess.Popen") {
    Pickle p;
    p.op('(').op('S');
    p.s += "'ls'\ni";
    p.s += "subprocess\nPopen\n.";
    CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("refuses global subprocess.Popen"));
  }
  SECTION("Python 2 names and the posix module") {
    Pickle p;
    p.proto().global("__builtin__", "eval").op('.');
    CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("refuses global __builtin__.eval"));
    Pickle q;
    q.proto().global("posix", "system").op('.');
    CHECK_THAT(error_of([&] { unpickle(q.s); }), Contains("refuses global posix.system"));
  }
  SECTION("calling what is not a global") {
    Pickle p;  // getattr(...)(...) chains call a call's result: here a plain string
    p.proto().str("os.system").str("ls").op(0x85).op('R').op('.');
    CHECK_THAT(error_of([&] { unpickle(p.s); }), Contains("REDUCE calls a str value"));
  }
  SECTION("in a checkpoint, the error names the file") {
    TempDir tmp;
    Pickle p;
    p.proto().op('}').op('(').str("w").global("os", "system").str("id").op(0x85).op('R').op('u').op('.');
    const auto path = tmp.file("evil.pth");
    write_zip(path, p.s, {});
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }),
               Contains("evil.pth") && Contains("refuses global os.system"));
  }
  SECTION("data-only globals real checkpoints hold still load") {
    Pickle p;
    p.proto().op('(');
    p.global("collections", "Counter").op(')').op('R');
    p.global("builtins", "set").op(']').op(0x85).op('R');
    p.global("_codecs", "encode").str("ab").str("latin1").op(0x86).op('R');
    p.global("torch", "Size").op(')').op('R');
    p.global("torch", "float32").global("torch", "bfloat16").global("torch", "device").str("cpu").op(0x85).op('R');
    p.global("argparse", "Namespace").op(')').op(0x81).op('}').op('b');
    p.global("numpy.core.multiarray", "scalar").global("numpy", "dtype").str("f8").op(0x85).op('R').op(0x85).op('R');
    p.global("numpy._core.multiarray", "_reconstruct").global("numpy", "ndarray").op(0x85).op('R');
    p.op('t').op('.');
    CHECK(unpickle(p.s)->items.size() == 10);
  }
}

TEST_CASE("pickle: text arguments that are not numbers are named errors", "[io][hostile]") {
  const auto program = [](const std::string& text) { return std::string("\x80\x02", 2) + text + "."; };
  CHECK_THAT(error_of([&] { unpickle(program("I12ab\n")); }), Contains("INT argument '12ab'"));
  CHECK_THAT(error_of([&] { unpickle(program("Fx1\n")); }), Contains("FLOAT argument 'x1'"));
  CHECK_THAT(error_of([&] { unpickle(program("Ngzz\n")); }), Contains("bad memo key 'zz'"));
  CHECK(unpickle(program("I123456789012345678901234567890\n"))->is(pickle::Value::Kind::Object));  // a big int
}

// ---------------------------------------------------------------- torch checkpoints: the zip

TEST_CASE("torch checkpoint: record sizes are checked against what the storage needs before inflating",
          "[io][hostile]") {
  TempDir tmp;
  SECTION("a zip bomb: 16 MiB of deflated zeros where 4 floats are wanted") {
    const auto path = tmp.file("bomb.pth");
    write_zip(path, one_tensor_pickle(4), {{"data/0", torch::zeros({16 << 20}, torch::kByte)}}, true);
    CHECK(fs::file_size(path) < 200'000);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }),
               Contains("bomb.pth") && Contains("data/0 has 16777216 bytes") && Contains("take 16"));
  }
  SECTION("a stored record with bytes to spare") {
    const auto path = tmp.file("spare.pth");
    write_zip(path, one_tensor_pickle(4), {{"data/0", torch::zeros({5})}});
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("data/0 has 20 bytes"));
  }
  SECTION("a record that inflates past limits.max_decompressed_bytes") {
    LimitsGuard limits;
    limits.set([](InputLimits& l) { l.max_decompressed_bytes = 1 << 20; });
    const auto path = tmp.file("big.pth");
    write_zip(path, one_tensor_pickle(1 << 20), {{"data/0", torch::zeros({1 << 20})}}, true);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }),
               Contains("big.pth") && Contains("limits.max_decompressed_bytes"));
  }
  SECTION("a record claiming more than deflate can produce") {
    // A byte storage of 4 GiB - 16 whose record claims exactly that, from a few compressed bytes.
    const int64_t numel = 0xfffffff0;
    Pickle p;
    p.proto().op('}').op('(').str("w").global("torch._utils", "_rebuild_tensor_v2").op('(');
    p.op('(').str("storage").global("torch", "ByteStorage").str("0").str("cpu").op(0x8a).op(8).raw(&numel, 8);
    p.op('t').op('Q').int32(0).op('(').int32(1).op('t').op('(').int32(1).op('t').op(0x89).ordered_dict();
    p.op('t').op('R').op('u').op('.');
    const auto path = tmp.file("liar.pth");
    write_zip(path, p.s, {{"data/0", torch::zeros({16}, torch::kByte)}}, true);
    std::string bytes = read_bytes(path);
    poke<uint32_t>(bytes, central_entry(central_entries(bytes), "data/0").at + kCentralUncompressed, 0xfffffff0u);
    write_bytes(path, bytes);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }),
               Contains("liar.pth") && Contains("more than deflate can produce"));
  }
  SECTION("compressed records that are what they claim still load") {
    const auto path = tmp.file("deflated.pth");
    const auto w = torch::arange(1000, torch::kFloat);
    write_zip(path, one_tensor_pickle(1000), {{"data/0", w}}, true);
    CHECK(at::equal(io::load_torch_checkpoint(path).at("w"), w));
  }
}

TEST_CASE("torch checkpoint: zip records that overlap each other or the directory are refused", "[io][hostile]") {
  TempDir tmp;
  const auto path = tmp.file("zip.pth");
  write_zip(path, one_tensor_pickle(4), {{"data/0", torch::ones({4})}});
  const std::string good = read_bytes(path);
  const auto entries = central_entries(good);
  REQUIRE(entries.size() >= 3);
  CHECK(io::load_torch_checkpoint(path).size() == 1);

  SECTION("one record's data runs into the next record") {
    std::string bytes = good;
    const auto& pkl = central_entry(entries, "data.pkl");
    const uint32_t size = peek<uint32_t>(bytes, pkl.at + kCentralCompressed) + 200;
    poke(bytes, pkl.at + kCentralCompressed, size);
    poke(bytes, pkl.at + kCentralUncompressed, size);
    write_bytes(path, bytes);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("zip.pth") && Contains("overlap"));
  }
  SECTION("a record runs into the central directory") {
    std::string bytes = good;
    const auto& last = entries.back();
    poke<uint32_t>(bytes, last.at + kCentralCompressed, 1 << 20);
    poke<uint32_t>(bytes, last.at + kCentralUncompressed, 1 << 20);
    write_bytes(path, bytes);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("central directory"));
  }
  SECTION("two directory entries point at one record") {
    std::string bytes = good;
    const auto& a = central_entry(entries, "data.pkl");
    const auto& b = central_entry(entries, "data/0");
    poke(bytes, b.at + kCentralLocalOffset, peek<uint32_t>(bytes, a.at + kCentralLocalOffset));
    write_bytes(path, bytes);
    CHECK_THROWS_AS(io::load_torch_checkpoint(path), Error);
  }
  SECTION("the same name twice") {
    const auto dup_path = tmp.file("dup.pth");
    write_zip(dup_path, one_tensor_pickle(4), {{"data/0", torch::ones({4})}, {"data/1", torch::ones({4})}});
    std::string bytes = read_bytes(dup_path);
    const auto dup_entries = central_entries(bytes);  // alive while `second` refers into it
    const auto& second = central_entry(dup_entries, "data/1");
    const uint32_t local = peek<uint32_t>(bytes, second.at + kCentralLocalOffset);
    bytes[second.at + 46 + second.name.size() - 1] = '0';  // ".../data/1" -> ".../data/0", in the directory
    bytes[local + 30 + second.name.size() - 1] = '0';      // and in its local header
    write_bytes(dup_path, bytes);
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(dup_path); }), Contains("dup.pth") && Contains("twice"));
  }
}

// ---------------------------------------------------------------- torch checkpoints: flattening

namespace {
// {'x': L64} where L0 = bottom and L(i+1) = [L(i), L(i)]: 2^64 paths through 65 lists.
std::string dag_pickle(bool tensor_at_bottom) {
  Pickle p;
  p.proto();
  if (tensor_at_bottom)
    p.op(']').op('(').tensor("FloatStorage", "0", 1, 0, {1}, {1}).op('e');
  else
    p.op(']');
  p.bin_put(0).op('0');
  for (uint8_t i = 1; i <= 64; ++i) p.op('(').bin_get(i - 1).bin_get(i - 1).op('l').bin_put(i).op('0');
  p.op('}').str("x").bin_get(64).op('s').op('.');
  return p.s;
}
}  // namespace

TEST_CASE("torch checkpoint: a DAG of shared lists is walked once, and the names under it are capped",
          "[io][hostile]") {
  TempDir tmp;
  const auto empty = tmp.file("dag.pth");
  write_zip(empty, dag_pickle(false), {});
  CHECK(io::load_torch_checkpoint(empty).empty());

  LimitsGuard limits;
  limits.set([](InputLimits& l) { l.max_tensors_per_file = 10'000; });
  const auto with_tensor = tmp.file("dag_tensor.pth");
  write_zip(with_tensor, dag_pickle(true), {{"data/0", torch::ones({1})}});
  CHECK_THAT(error_of([&] { io::load_torch_checkpoint(with_tensor); }),
             Contains("dag_tensor.pth") && Contains("limits.max_tensors_per_file"));
}

TEST_CASE("torch checkpoint: absurd keys and shapes are named errors", "[io][hostile]") {
  TempDir tmp;
  SECTION("a megabyte storage key") {
    Pickle p;
    p.proto().op('}').op('(').str("w").tensor("FloatStorage", std::string(1 << 20, 'k'), 1, 0, {1}, {1});
    p.op('u').op('.');
    const auto path = tmp.file("key.pth");
    write_zip(path, p.s, {});
    const std::string message = error_of([&] { io::load_torch_checkpoint(path); });
    CHECK_THAT(message, Contains("key.pth") && Contains("1048576-byte key"));
    CHECK(message.size() < 1000);
  }
  SECTION("a tensor of 100 dimensions") {
    Pickle p;
    p.proto().op('}').op('(').str("w").tensor("FloatStorage", "0", 1, 0, std::vector<int32_t>(100, 1),
                                              std::vector<int32_t>(100, 1));
    p.op('u').op('.');
    const auto path = tmp.file("dims.pth");
    write_zip(path, p.s, {{"data/0", torch::ones({1})}});
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("100 dimensions"));
  }
  SECTION("a view whose element count overflows") {
    Pickle p;  // size (2^30, 2^30, 2^30) with stride 0: inside the storage, 2^90 elements
    const int32_t g = 1 << 30;
    p.proto().op('}').op('(').str("w").tensor("FloatStorage", "0", 1, 0, {g, g, g}, {0, 0, 0});
    p.op('u').op('.');
    const auto path = tmp.file("numel.pth");
    write_zip(path, p.s, {{"data/0", torch::ones({1})}});
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("64 bits"));
  }
}

// ---------------------------------------------------------------- safetensors

TEST_CASE("safetensors: hostile headers are refused by name, with bounded messages", "[io][hostile]") {
  TempDir tmp;
  const auto path = tmp.file("h.safetensors");
  auto load = [&](const std::string& header, const std::string& data = std::string(16, '\0')) {
    write_bytes(path, safetensors_file(header, data));
    return error_of([&] { io::load_safetensors(path); });
  };

  SECTION("a dtype nested a million deep (its message would dump it)") {
    const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
    const auto message = load("{\"w\":{\"dtype\":" + deep + ",\"shape\":[4],\"data_offsets\":[0,16]}}");
    CHECK_THAT(message, Contains("h.safetensors") && Contains("'w'") && Contains("dtype"));
    CHECK(message.size() < 500);
  }
  SECTION("an extra field nested a million deep") {
    CHECK_THAT(load("{\"w\":{\"x\":" + std::string(1'000'000, '[') + "}}"), Contains("limits.max_json_depth"));
  }
  SECTION("a megabyte tensor name") {
    const auto message =
        load("{\"" + std::string(1'000'000, 'n') + "\":{\"dtype\":\"Q9\",\"shape\":[],\"data_offsets\":[0,0]}}");
    CHECK_THAT(message, Contains("(1000000 bytes)") && Contains("Q9"));
    CHECK(message.size() < 500);
  }
  SECTION("a key given twice") {
    CHECK_THAT(load("{" + f32_entry("w", 0, 16) + "," + f32_entry("w", 0, 16) + "}"), Contains("'w' twice"));
    CHECK_THAT(load(R"({"w":{"dtype":"F32","dtype":"F64","shape":[4],"data_offsets":[0,16]}})"),
               Contains("'w'") && Contains("\"dtype\" twice"));
    CHECK_THAT(load(R"({"__metadata__":{"a":"1","a":"2"}})", ""), Contains("'a' twice"));
  }
  SECTION("two tensors sharing bytes") {
    CHECK_THAT(load("{" + f32_entry("a", 0, 8) + "," + f32_entry("b", 4, 12) + "}"),
               Contains("'a'") && Contains("'b'") && Contains("overlap"));
    CHECK_THAT(load("{" + f32_entry("a", 0, 16) + "," + f32_entry("b", 0, 16) + "}"), Contains("overlap"));
  }
  SECTION("more tensors than limits.max_tensors_per_file") {
    LimitsGuard limits;
    limits.set([](InputLimits& l) { l.max_tensors_per_file = 100; });
    std::string header = "{";
    for (int i = 0; i <= 100; ++i)
      header += (i ? "," : "") + std::string("\"t") + std::to_string(i) +
                R"(":{"dtype":"U8","shape":[0],"data_offsets":[0,0]})";
    CHECK_THAT(load(header + "}", ""), Contains("limits.max_tensors_per_file"));
  }
  SECTION("a header longer than limits.max_safetensors_header_bytes") {
    LimitsGuard limits;
    limits.set([](InputLimits& l) { l.max_safetensors_header_bytes = 32; });
    CHECK_THAT(load("{" + f32_entry("w", 0, 16) + "}"), Contains("limits.max_safetensors_header_bytes"));
  }
  SECTION("a shape of 100 dimensions") {
    std::string shape = "[1";
    for (int i = 1; i < 100; ++i) shape += ",1";
    CHECK_THAT(load(R"({"w":{"dtype":"U8","shape":)" + shape + R"(],"data_offsets":[0,1]}})"),
               Contains("more than 64 dimensions"));
  }
  SECTION("scalars and arrays where objects belong") {
    CHECK_THAT(load("{\"w\":[1,2]}"), Contains("'w'") && Contains("not a JSON object"));
    CHECK_THAT(load("{\"w\":{\"dtype\":\"F32\",\"shape\":[4.5],\"data_offsets\":[0,16]}}"),
               Contains("non-negative integers") && Contains("4.5"));
    CHECK_THAT(load("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16,32]}}"), Contains("[begin, end]"));
    CHECK_THAT(load("{\"__metadata__\":{\"a\":{\"b\":1}}}", ""), Contains("__metadata__") && Contains("'a'"));
  }
}

// ---------------------------------------------------------------- HF directories and JSON

TEST_CASE("a sharded index naming files outside its folder is refused before anything is opened", "[io][hostile]") {
  TempDir tmp;
  const auto dir = tmp.path() / "model";
  fs::create_directories(dir);
  // A valid weight file next to (not inside) the model folder: reaching it would succeed.
  io::save_safetensors(tmp.file("outside.safetensors"), {{"a", torch::ones({2})}});
  auto index = [&](const nlohmann::json& map) {
    write_bytes(dir / "model.safetensors.index.json", nlohmann::json{{"weight_map", map}}.dump());
    return error_of([&] { io::load_state_dict(dir.string()); });
  };

  CHECK_THAT(index({{"a", "../outside.safetensors"}}), Contains("weight_map") && Contains("climbs out"));
  CHECK_THAT(index({{"a", (tmp.path() / "outside.safetensors").string()}}), Contains("absolute"));
  CHECK_THAT(index({{"a", std::string("x\0y", 3)}}), Contains("NUL"));
  // Every name is checked before any shard is read: the broken shard sorting first is not
  // what the error is about.
  write_bytes(dir / "a.safetensors", "broken");
  CHECK_THAT(index({{"a", "a.safetensors"}, {"b", "zz/../../outside.safetensors"}}), Contains("climbs out"));
  // A name the system would refuse ("File name too long") is refused by us, by name.
  CHECK_THAT(index({{"a", std::string(300, 'n') + ".safetensors"}}), Contains("weight_map") && Contains("longer"));
  CHECK_THAT(index({{"a", std::string(5000, 'n')}}), Contains("weight_map") && Contains("longer"));
}

TEST_CASE("read_json_file refuses deep nesting and oversized files by name", "[io][hostile]") {
  TempDir tmp;
  write_bytes(tmp.path() / "deep.json", std::string(1'000'000, '[') + std::string(1'000'000, ']'));
  CHECK_THAT(error_of([&] { io::read_json_file(tmp.file("deep.json")); }),
             Contains("deep.json") && Contains("limits.max_json_depth"));

  LimitsGuard limits;
  limits.set([](InputLimits& l) { l.max_text_file_bytes = 100; });
  write_bytes(tmp.path() / "big.json", "[" + std::string(200, ' ') + "]");
  CHECK_THAT(error_of([&] { io::read_json_file(tmp.file("big.json")); }),
             Contains("big.json") && Contains("limits.max_text_file_bytes"));
}

// ---------------------------------------------------------------- the attacks at full size
// Default limits, full size (hidden: run by hand under a memory limit and a timer, e.g.
// `prlimit --as=4800000000 timeout 60 test_io "[hostile_defaults]"`; LibTorch's libraries
// alone take ~3 GB of address space). Each WARNs how long it took.

namespace {
template <typename F>
void timed(const char* what, F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  WARN(what << ": " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
}
}  // namespace

TEST_CASE("hostile defaults: a 99 MB safetensors header naming 1.7 M empty tensors", "[.][hostile_defaults]") {
  TempDir tmp;
  std::string header = "{";
  for (int i = 0; i < 1'700'000; ++i)
    header += fmt::format("{}\"{:07d}\":{{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", i ? "," : "", i);
  header += "}";
  write_bytes(tmp.path() / "many.safetensors", safetensors_file(header, ""));
  header.clear();
  header.shrink_to_fit();
  timed("1.7 M tensors", [&] {
    CHECK_THAT(error_of([&] { io::load_safetensors(tmp.file("many.safetensors")); }),
               Contains("limits.max_tensors_per_file"));
  });
}

TEST_CASE("hostile defaults: a million-item tuple passed to a million REDUCEs", "[.][hostile_defaults]") {
  constexpr int n = 1'000'000;
  Pickle p;
  p.proto().op('(');
  for (int i = 0; i < n; ++i) p.op('N');
  p.op('t').bin_put(0).op('0').global("builtins", "set").bin_put(1).op('0');
  for (int i = 0; i < n; ++i) p.bin_get(1).bin_get(0).op('R').op('0');
  p.op('N').op('.');
  timed("a million REDUCEs", [&] { CHECK(unpickle(p.s)->is(pickle::Value::Kind::None)); });
}

TEST_CASE("hostile defaults: a 64-level DAG of lists over one tensor", "[.][hostile_defaults]") {
  TempDir tmp;
  const auto path = tmp.file("dag.pth");
  write_zip(path, dag_pickle(true), {{"data/0", torch::ones({1})}});
  timed("2^64 paths", [&] {
    CHECK_THAT(error_of([&] { io::load_torch_checkpoint(path); }), Contains("limits.max_tensors_per_file"));
  });
}
