// Hostile dataset files (issue 17): each class of attack on the readers ends in a named
// error or a counted skip, within bounded memory and time. Every case here is a small file
// that claims something huge, written at test time; limits are lowered where that makes the
// case cheap (the rule checked is the same as at the defaults).
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/datasets/cc_sbu_align.h"
#include "minigpt4/datasets/instruction_datasets.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/shards.h"
#include "minigpt4/datasets/text_lines.h"
#include "minigpt4/datasets/webdataset.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <archive.h>
#include <archive_entry.h>

#include <chrono>
#include <map>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;

namespace {

// Sets limits for one test and puts the previous ones back at its end.
struct LimitsScope {
  minigpt4::InputLimits saved = minigpt4::input_limits();
  minigpt4::InputLimits limits = saved;
  void apply() const { minigpt4::set_input_limits(limits); }
  ~LimitsScope() { minigpt4::set_input_limits(saved); }
};

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const minigpt4::Error& e) {
    return e.what();
  }
  FAIL("expected a minigpt4::Error");
  return "";
}

// A 512-byte ustar header whose 12-byte size field is given as is (octal text, or
// GNU base-256 when its first byte has the high bit set).
std::string ustar_header(const std::string& name, const std::string& size_field) {
  std::string h(512, '\0');
  h.replace(0, name.size(), name);
  h.replace(100, 8, std::string("0000644\0", 8));
  h.replace(108, 8, std::string("0000000\0", 8));
  h.replace(116, 8, std::string("0000000\0", 8));
  h.replace(124, 12, size_field);
  h.replace(136, 12, std::string("00000000000\0", 12));
  h[156] = '0';
  h.replace(257, 6, std::string("ustar\0", 6));
  h.replace(263, 2, "00");
  h.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  char field[8];
  std::snprintf(field, sizeof field, "%06o", sum);
  h.replace(148, 8, std::string(field, 6) + std::string("\0 ", 2));
  return h;
}

WebDatasetOptions one_shard(const std::string& shard, size_t shuffle = 0) {
  WebDatasetOptions opt;
  opt.name = "laion";
  opt.shards = {shard};
  opt.shuffle_buffer = shuffle;
  return opt;
}

}  // namespace

// ---- webdataset: per-member cap, declared sizes, decompressed total

TEST_CASE("hostile tar: a member over limits.max_tar_member_bytes is not read; its sample is skipped and counted",
          "[data][hostile]") {
  LimitsScope scope;
  scope.limits.max_tar_member_bytes = 4096;
  scope.apply();
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "00000.tar").string();
  mt::write_tar(shard,
                {{"000000001.jpg", std::string(10000, 'x')},
                 {"000000001.txt", "too big"},
                 {"000000002.png", mt::encoded_image(".png", 8, 8, 2)},
                 {"000000002.txt", "fine"}},
                /*gzip=*/true);

  TarShardReader reader(shard);
  auto first = reader.next();
  REQUIRE(first);
  CHECK(first->key == "000000001");
  REQUIRE(first->refused.size() == 1);
  CHECK_THAT(first->refused[0], Catch::Contains("000000001.jpg") && Catch::Contains("10000 bytes") &&
                                    Catch::Contains("limits.max_tar_member_bytes"));
  CHECK(first->find("jpg") == nullptr);
  auto second = reader.next();
  REQUIRE(second);
  CHECK(second->refused.empty());
  CHECK(second->find("png") != nullptr);
  CHECK_FALSE(reader.next());

  WebDatasetStream stream(one_shard(shard));
  const StreamRecord skip = stream.next();
  CHECK(skip.skipped);
  CHECK(skip.reason == SkipReason::TooLarge);
  CHECK_THAT(skip.source, Catch::Contains("000000001"));
  const StreamRecord good = stream.next();
  CHECK_FALSE(good.skipped);
  CHECK(good.caption == "fine");

  LoaderOptions opt;
  DatasetSpec spec;
  spec.name = "laion";
  spec.storage = shard;
  spec.batch_size = 1;
  spec.image_size = 8;
  opt.datasets = {spec};
  opt.num_workers = 0;
  opt.shuffle_buffer = 0;
  DataLoader loader(opt);
  CHECK(loader.next().captions.at(0) == "fine");
  CHECK(loader.stats().skipped(SkipReason::TooLarge) == 1);
  CHECK_THAT(format_data_report(loader.stats()), Catch::Contains("too large: 1"));

  // Skipping a member of a compressed shard means inflating it: beyond 4 x the member
  // limit in all, the rest of the shard is left unread rather than inflated.
  const auto bomb = (dir.path() / "00001.tar").string();
  mt::write_tar(bomb, {{"000000001.jpg", std::string(20000, '\0')}, {"000000002.txt", "unreachable"}}, /*gzip=*/true);
  TarShardReader bomb_reader(bomb);
  CHECK_THAT(error_of([&] { bomb_reader.next(); }),
             Catch::Contains("00001.tar") && Catch::Contains("20000 bytes") && Catch::Contains("left unread"));
}

TEST_CASE("hostile tar: a header declaring an 8 GiB or 2^62-byte member is refused before any allocation",
          "[data][hostile]") {
  const std::string octal = ustar_header("000000001.jpg", std::string("77777777777\0", 12)) + std::string(1024, '\0');
  std::string base256_size = std::string(12, '\0');
  base256_size[0] = char(0x80);
  base256_size[4] = char(0x40);  // 2^62
  const std::string base256 = ustar_header("000000001.jpg", base256_size) + std::string(1024, '\0');
  for (const std::string& bytes : {octal, base256}) {
    // Either the sample comes back refused and the shard then ends in a named error (its
    // data is not there), or the header itself is refused: never an allocation of its size.
    try {
      auto reader = TarShardReader::from_bytes(bytes, "claims.tar");
      while (auto sample = reader->next()) {
        REQUIRE_FALSE(sample->refused.empty());
        CHECK_THAT(sample->refused[0], Catch::Contains("limits.max_tar_member_bytes"));
      }
    } catch (const minigpt4::Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("claims.tar"));
    }
  }
}

TEST_CASE("hostile tar: a shard inflating past limits.max_decompressed_bytes is an error naming the limit",
          "[data][hostile]") {
  LimitsScope scope;
  scope.limits.max_decompressed_bytes = 200'000;
  scope.apply();
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "bomb.tar.gz").string();
  mt::TarEntries entries;
  for (int i = 0; i < 5; ++i) {
    entries.push_back({"00000000" + std::to_string(i) + ".jpg", std::string(100'000, '\0')});
    entries.push_back({"00000000" + std::to_string(i) + ".txt", "zeros"});
  }
  mt::write_tar(shard, entries, /*gzip=*/true);
  REQUIRE(std::filesystem::file_size(shard) < 10'000);
  const std::string message = error_of([&] {
    TarShardReader reader(shard);
    while (reader.next()) {}
  });
  CHECK_THAT(message, Catch::Contains("bomb.tar.gz") && Catch::Contains("limits.max_decompressed_bytes"));
}

TEST_CASE("hostile tar: over-long member names and keys shared by too many members are refused by name",
          "[data][hostile]") {
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "names.tar").string();
  mt::TarEntries entries{{std::string(kMaxTarMemberNameBytes + 10, 'a') + ".jpg", "x"}};
  const auto max_files = static_cast<size_t>(minigpt4::input_limits().max_files_per_sample);
  for (size_t k = 0; k < max_files + 5; ++k) entries.push_back({"000000002.e" + std::to_string(k), ""});
  entries.push_back({"000000003.png", mt::encoded_image(".png", 8, 8, 3)});
  entries.push_back({"000000003.txt", "after"});
  mt::write_tar(shard, entries);
  TarShardReader reader(shard);
  auto long_name = reader.next();
  REQUIRE(long_name);
  CHECK(long_name->key.size() < 300);
  REQUIRE_FALSE(long_name->refused.empty());
  CHECK_THAT(long_name->refused[0], Catch::Contains("name"));
  auto crowded = reader.next();
  REQUIRE(crowded);
  CHECK(crowded->key == "000000002");
  CHECK(crowded->files.size() == max_files);
  REQUIRE_FALSE(crowded->refused.empty());
  CHECK_THAT(crowded->refused[0], Catch::Contains("more than 1000 members"));
  auto after = reader.next();
  REQUIRE(after);
  CHECK(after->key == "000000003");
  CHECK(after->refused.empty());
}

TEST_CASE("hostile tar: limits.max_files_per_sample sets how many members a sample may have", "[data][hostile]") {
  LimitsScope scope;
  scope.limits.max_files_per_sample = 3;
  scope.apply();
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "few.tar").string();
  mt::write_tar(shard, {{"000000001.jpg", "a"},
                        {"000000001.txt", "b"},
                        {"000000001.json", "{}"},
                        {"000000001.cls", "4"},
                        {"000000002.txt", "next"}});
  TarShardReader reader(shard);
  auto first = reader.next();
  REQUIRE(first);
  CHECK(first->files.size() == 3);
  REQUIRE_FALSE(first->refused.empty());
  CHECK_THAT(first->refused[0],
             Catch::Contains("more than 3 members") && Catch::Contains("limits.max_files_per_sample"));
  auto second = reader.next();
  REQUIRE(second);
  CHECK(second->key == "000000002");
}

TEST_CASE("hostile tar: a sample json nested too deep (or not JSON) falls back to the txt caption", "[data][hostile]") {
  TarSample sample;
  sample.key = "1";
  sample.files = {{"jpg", "x"}, {"json", std::string(1'000'000, '[')}, {"txt", "fallback"}};
  CHECK(pick_image_and_caption(sample).caption == "fallback");
  sample.files[1].second = "{\"caption\": " + std::string(100'000, '[') + std::string(100'000, ']') + "}";
  CHECK(pick_image_and_caption(sample).caption == "fallback");
  sample.files.pop_back();
  CHECK(pick_image_and_caption(sample).skip == SkipReason::NoCaption);
}

TEST_CASE("hostile tar: an in-memory shard reads as the same file does", "[data][hostile]") {
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "s.tar").string();
  mt::write_tar(shard, {{"1.jpg", "a"}, {"1.txt", "b"}, {"2.png", "c"}, {"2.json", "{}"}}, /*gzip=*/true);
  TarShardReader from_file(shard);
  auto from_memory = TarShardReader::from_bytes(mt::read_bytes(shard), "memory");
  while (true) {
    auto a = from_file.next();
    auto b = from_memory->next();
    REQUIRE(a.has_value() == b.has_value());
    if (!a) break;
    CHECK(a->key == b->key);
    CHECK(a->files == b->files);
  }
}

// ---- webdataset: a shard of nothing but skips, and the shuffle buffer's bytes

TEST_CASE("hostile tar: a pass of nothing but skips ends in one error, not ten thousand re-reads of its 1 MB json",
          "[data][hostile]") {
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "00000.tar").string();
  // An image, and a 1 MB json whose caption is not text: parsed, then skipped (no caption).
  mt::write_tar(
      shard,
      {{"000000001.jpg", "x"}, {"000000001.json", "{\"caption\": 5, \"pad\": \"" + std::string(1 << 20, 'y') + "\"}"}},
      /*gzip=*/true);
  WebDatasetStream stream(one_shard(shard, 100));
  int calls = 0;
  std::string message;
  try {
    for (; calls < 5; ++calls) {
      const StreamRecord r = stream.next();
      CHECK(r.skipped);
      CHECK(r.reason == SkipReason::NoCaption);
    }
  } catch (const minigpt4::Error& e) {
    message = e.what();
  }
  CHECK(calls == 1);  // one skip note, then the error at the end of the pass
  CHECK_THAT(message, Catch::Contains("laion") && Catch::Contains("no usable sample") && Catch::Contains("000000001") &&
                          Catch::Contains("caption"));

  // Usable at the stream, unusable at the decoder: the loader stops after one pass too.
  const auto bad_image = (dir.path() / "00001.tar").string();
  mt::write_tar(bad_image, {{"000000001.jpg", "not a jpeg"},
                            {"000000001.json", "{\"caption\": \"" + std::string(1 << 20, 'z') + "\"}"}});
  LoaderOptions opt;
  DatasetSpec spec;
  spec.name = "laion";
  spec.storage = bad_image;
  spec.batch_size = 1;
  opt.datasets = {spec};
  opt.num_workers = 0;
  opt.shuffle_buffer = 0;
  DataLoader loader(opt);
  const std::string loader_message = error_of([&] { loader.next(); });
  CHECK_THAT(loader_message, Catch::Contains("a whole pass (pass 0)") && Catch::Contains("2 samples in a row") &&
                                 Catch::Contains("corrupt image: 2"));
  // The same with the shuffle buffer and worker threads (the defaults' shape).
  opt.shuffle_buffer = 1000;
  opt.num_workers = 2;
  DataLoader shuffled(opt);
  CHECK_THAT(error_of([&] { shuffled.next(); }), Catch::Contains("a whole pass (pass 0)"));
}

TEST_CASE("hostile tar: the shuffle buffer holds at most shuffle_buffer_bytes, however many samples it may hold",
          "[data][hostile]") {
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "00000.tar").string();
  mt::TarEntries entries;
  const int n = 40;
  auto key = [](int i) { return "0000000" + std::string(i < 10 ? "0" : "") + std::to_string(i); };
  for (int i = 0; i < n; ++i) {
    entries.push_back({key(i) + ".jpg", std::string(1000, char('a' + i % 26))});
    entries.push_back({key(i) + ".txt", "c"});
  }
  mt::write_tar(shard, entries);
  WebDatasetOptions opt = one_shard(shard, 1000);
  opt.shuffle_buffer_bytes = 3000;  // three samples' images
  WebDatasetStream stream(opt);
  for (int k = 0; k < n - 4; ++k) {  // (the last few outputs may already come from pass 1)
    const StreamRecord r = stream.next();
    REQUIRE_FALSE(r.skipped);
    const int index = std::stoi(r.source.substr(r.source.rfind(':') + 1, 9));
    INFO("output " << k << " is sample " << index << " of pass " << r.pass);
    // The buffer never held more than 3 samples (+ the one that crossed the budget), so
    // the k-th output was read at most 4 samples before it.
    CHECK(r.pass == 0);
    CHECK(index <= k + 3);
  }

  // A shard smaller than the buffer is not read a thousand times over to fill it: the
  // buffer holds samples of three passes at most.
  const auto small = (dir.path() / "small.tar").string();
  mt::write_tar(small, {{"000000001.jpg", "x"}, {"000000001.txt", "only"}});
  WebDatasetStream one(one_shard(small, 1000));
  for (uint64_t k = 0; k < 20; ++k) CHECK(one.next().pass <= k + 2);
}

// ---- shard patterns

TEST_CASE("hostile shard patterns are counted and sized before they are expanded", "[data][hostile]") {
  LimitsScope scope;
  scope.limits.max_brace_names = 1000;
  scope.limits.max_brace_bytes = 100'000;
  scope.apply();
  CHECK(expand_braces("s{0..9}/{000..099}.tar").size() == 1000);
  CHECK_THAT(error_of([] { expand_braces("s{0..9}/{000..100}.tar"); }),
             Catch::Contains("more than 1000 names") && Catch::Contains("limits.max_brace_names"));
  // 1000 names of 1 KB each: 1 MB, over the 100 KB allowed, refused before any is made.
  CHECK_THAT(error_of([] { expand_braces(std::string(1000, 'a') + "{000..999}"); }),
             Catch::Contains("limits.max_brace_bytes"));
  // Exponential patterns and ranges over the whole int64 line: refused in microseconds.
  std::string doubling;
  for (int i = 0; i < 64; ++i) doubling += "{a,b}";
  CHECK_THAT(error_of([&] { expand_braces(doubling); }), Catch::Contains("limits.max_brace_names"));
  CHECK_THAT(error_of([] { expand_braces("{-9223372036854775808..9223372036854775807}"); }),
             Catch::Contains("limits.max_brace_names"));
  CHECK_THAT(error_of([] { expand_braces("{0..99999999999999999999999}"); }),
             Catch::Contains("does not fit in 64 bits"));
  // Nesting a hundred thousand deep: a named error, not a stack overflow.
  const std::string deep = std::string(100'000, '{') + "a,b" + std::string(100'000, '}');
  CHECK_THAT(error_of([&] { expand_braces(deep); }), Catch::Contains("deeper than"));
}

TEST_CASE("hostile shard patterns: the default limits refuse 10 M long names up front", "[data][hostile]") {
  // 10 M names of 100 bytes would be 1 GB of strings: refused by limits.max_brace_bytes.
  CHECK_THROWS_WITH(expand_braces(std::string(93, 'x') + "{0000000..9999999}"),
                    Catch::Contains("limits.max_brace_bytes"));
  CHECK_THROWS_WITH(expand_braces("{0..9999999}{0..9}"), Catch::Contains("limits.max_brace_names"));
  // A hundred thousand braces one after the other: expanded by a loop, not a recursion
  // per brace (that overflowed the stack).
  std::string sequence;
  for (int i = 0; i < 100'000; ++i) sequence += "{a}";
  CHECK(expand_braces(sequence) == std::vector<std::string>{sequence});
}

// ---- annotation files: nesting, quoting, confinement

TEST_CASE("hostile annotations: cc_sbu_align nested a million deep is a named error", "[data][hostile]") {
  mt::ScratchDir dir;
  dir.write("filter_cap.json", "{\"annotations\": " + std::string(1'000'000, '[') + std::string(1'000'000, ']') + "}");
  CHECK_THAT(error_of([&] { CcSbuAlignDataset d(dir.path().string()); }),
             Catch::Contains("filter_cap.json") && Catch::Contains("limits.max_json_depth"));
  // An entry that is a deep (but allowed) structure is described, not dumped.
  dir.write("filter_cap.json", "{\"annotations\": [" + std::string(200, '[') + std::string(200, ']') + "]}");
  const std::string message = error_of([&] { CcSbuAlignDataset d(dir.path().string()); });
  CHECK_THAT(message, Catch::Contains("annotation 0") && Catch::Contains("an array of 1 items"));
  dir.write("filter_cap.json", "{\"annotations\": [{\"image_id\": \"1\", \"caption\": \"" + std::string(1 << 20, 'c') +
                                   "\", \"x\": 1}, {\"image_id\": {\"k\": \"" + std::string(1 << 20, 'k') +
                                   "\"}, \"caption\": \"c\"}]}");
  const std::string bounded = error_of([&] { CcSbuAlignDataset d(dir.path().string()); });
  CHECK_THAT(bounded, Catch::Contains("annotation 1") && Catch::Contains("an object with 1 keys"));
  CHECK(bounded.size() < 1000);
  // A number past double's range: a named error, not nlohmann's out_of_range.
  dir.write("filter_cap.json", "{\"annotations\": [{\"image_id\": 9E9999, \"caption\": \"c\"}]}");
  CHECK_THAT(error_of([&] { CcSbuAlignDataset d(dir.path().string()); }), Catch::Contains("filter_cap.json"));
}

TEST_CASE("hostile annotations: cc_sbu_align image_ids may not leave <root>/image", "[data][hostile]") {
  mt::ScratchDir dir;
  dir.write("secret.jpg", mt::encoded_image(".jpg", 8, 8, 1));
  for (const std::string& id :
       {std::string("../secret"), std::string("../../secret"), std::string("/etc/passwd"),
        std::string("/etc/passwd\\u0000"), std::string("a/../../secret"), std::string("1\\u0000")}) {
    INFO(id);
    dir.write("filter_cap.json", "{\"annotations\": [{\"image_id\": \"" + id + "\", \"caption\": \"c\"}]}");
    const std::string message = error_of([&] { CcSbuAlignDataset d(dir.path().string()); });
    CHECK_THAT(message, Catch::Contains("filter_cap.json") && Catch::Contains("annotation 0 image_id"));
  }
  dir.write("filter_cap.json",
            "{\"annotations\": [{\"image_id\": \"" + std::string(100'000, '9') + "\", \"caption\": \"c\"}]}");
  const std::string long_id = error_of([&] { CcSbuAlignDataset d(dir.path().string()); });
  CHECK_THAT(long_id, Catch::Contains("100000 bytes"));
  CHECK(long_id.size() < 1000);
  // A name the OS finds too long (one 300-byte component) is a named skip, not a bare message.
  dir.write("filter_cap.json",
            "{\"annotations\": [{\"image_id\": \"" + std::string(300, 'a') + "\", \"caption\": \"c\"}]}");
  CcSbuAlignStream stream(CcSbuAlignDataset(dir.path().string()), 1, 0, 1);
  const StreamRecord r = stream.next();
  CHECK(r.skipped);
  CHECK(r.reason == SkipReason::MissingImage);
  CHECK_THAT(r.detail, Catch::Contains("image_id"));
}

TEST_CASE("hostile annotations: instruction datasets are depth-limited, quoted and confined", "[data][hostile]") {
  mt::ScratchDir dir;
  DatasetSpec spec;
  spec.kind = DatasetKind::Instruction;
  spec.ann_paths = {(dir.path() / "ann.json").string()};
  spec.image_root = (dir.path() / "images").string();
  auto load_error = [&](const std::string& name) {
    spec.name = name;
    return error_of([&] { load_instruction_source(spec); });
  };
  dir.write("ann.json", std::string(1'000'000, '['));
  CHECK_THAT(load_error("llava_detail"), Catch::Contains("ann.json") && Catch::Contains("limits.max_json_depth"));

  dir.write("ann.json", R"([{"id": 1, "conversations": )" + std::string(200, '[') + std::string(200, ']') + "}]");
  const std::string quoted = load_error("llava_detail");
  CHECK_THAT(quoted, Catch::Contains("entry 0") && Catch::Contains("an object with 2 keys"));
  CHECK(quoted.size() < 1000);

  dir.write("ann.json", R"([{"image_id": "../../secret", "grounded_caption": "c"}])");
  CHECK_THAT(load_error("flickr_grounded_caption"), Catch::Contains("entry 0") && Catch::Contains("climbs out"));
  dir.write("ann.json", R"([{"image": "/etc/passwd", "question": "q", "answer": "a"}])");
  CHECK_THAT(load_error("gqa"), Catch::Contains("entry 0") && Catch::Contains("absolute"));
  dir.write("ann.json", R"({"data": [{"image_id": "x\u0000y", "caption_str": "c"}]})");
  CHECK_THAT(load_error("textcaps_caption"), Catch::Contains("NUL"));
  dir.write("ann.json", R"([{"image_id": ")" + std::string(10'000, 'n') + R"(", "grounded_caption": "c"}])");
  const std::string long_name = load_error("flickr_grounded_caption");
  CHECK_THAT(long_name, Catch::Contains("bytes"));
  CHECK(long_name.size() < 1000);
  dir.write("ann.json", R"([{"image_id": 7, "grounded_caption": ["not", "text"]}])");
  CHECK_THAT(load_error("flickr_grounded_caption"), Catch::Contains("\"grounded_caption\" to be text"));
}

TEST_CASE("hostile annotations: a text dataset larger than limits.max_text_file_bytes is refused by name",
          "[data][hostile]") {
  LimitsScope scope;
  scope.limits.max_text_file_bytes = 1000;
  scope.apply();
  mt::ScratchDir dir;
  const auto file = dir.write("corpus.txt", std::string(2000, 'w'));
  CHECK_THROWS_WITH(TextLinesStream(file.string(), 0, 0, 1),
                    Catch::Contains("corpus.txt") && Catch::Contains("limits.max_text_file_bytes"));
}

// ---- the attacks at full size and default limits (hidden: run by hand, under a memory
// limit and a timer, e.g. `prlimit --as=3500000000 timeout 60 test_data_pipeline
// "[hostile_defaults]"`; LibTorch's libraries alone take ~3 GB of address space)

namespace {

// A gzip-compressed tar with members of `size` zero bytes each, written in 1 MB pieces.
void write_zero_members(const std::filesystem::path& path, const std::vector<std::string>& names, int64_t size,
                        const mt::TarEntries& extra = {}) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_add_filter_gzip(a);
  REQUIRE(archive_write_open_filename(a, path.c_str()) == ARCHIVE_OK);
  const std::string zeros(1 << 20, '\0');
  auto header = [&](const std::string& name, int64_t bytes) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, bytes);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    archive_entry_free(e);
  };
  for (const auto& name : names) {
    header(name, size);
    for (int64_t left = size; left > 0; left -= int64_t(zeros.size()))
      archive_write_data(a, zeros.data(), static_cast<size_t>(std::min<int64_t>(left, int64_t(zeros.size()))));
  }
  for (const auto& [name, bytes] : extra) {
    header(name, static_cast<int64_t>(bytes.size()));
    archive_write_data(a, bytes.data(), bytes.size());
  }
  archive_write_close(a);
  archive_write_free(a);
}

}  // namespace

TEST_CASE("hostile defaults: a 4 MB tar.gz whose member inflates to 4 GiB", "[.][hostile_defaults]") {
  mt::ScratchDir dir;
  const auto shard = dir.path() / "bomb.tar.gz";
  write_zero_members(shard, {"000000001.jpg"}, int64_t(4) << 30,
                     {{"000000001.txt", "bomb"},
                      {"000000002.png", mt::encoded_image(".png", 8, 8, 2)},
                      {"000000002.txt", "after the bomb"}});
  WARN("shard: " << std::filesystem::file_size(shard) << " bytes");
  const auto start = std::chrono::steady_clock::now();
  WebDatasetStream stream(one_shard(shard.string()));
  const StreamRecord skip = stream.next();  // too much to inflate past: the rest of the shard is lost
  CHECK(skip.reason == SkipReason::BadShard);
  CHECK_THAT(skip.detail, Catch::Contains("left unread"));
  WARN(skip.detail);
  CHECK_THROWS_WITH(stream.next(), Catch::Contains("no usable sample"));
  WARN("read in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
}

TEST_CASE("hostile defaults: a shard of one skipped sample with a 6 MB caption, through the loader",
          "[.][hostile_defaults]") {
  mt::ScratchDir dir;
  const auto no_caption = (dir.path() / "a.tar").string();
  mt::write_tar(no_caption, {{"000000001.jpg", "x"},
                             {"000000001.json", "{\"caption\": 5, \"pad\": \"" + std::string(6 << 20, 'y') + "\"}"}});
  const auto bad_image = (dir.path() / "b.tar").string();
  mt::write_tar(bad_image,
                {{"000000001.jpg", "x"}, {"000000001.json", "{\"caption\": \"" + std::string(6 << 20, 'y') + "\"}"}});
  for (const auto& shard : {no_caption, bad_image}) {
    const auto start = std::chrono::steady_clock::now();
    LoaderOptions opt;  // the defaults: 4 workers, shuffle buffer 1000
    DatasetSpec spec;
    spec.name = "laion";
    spec.storage = shard;
    opt.datasets = {spec};
    DataLoader loader(opt);
    const std::string message = error_of([&] { loader.next(); });
    WARN(message.substr(0, 300));
    WARN("stopped after " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
  }
}

TEST_CASE("hostile defaults: 1000 samples of 3 MB in the shuffle buffer", "[.][hostile_defaults]") {
  mt::ScratchDir dir;
  const auto shard = dir.path() / "big.tar.gz";
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_add_filter_gzip(a);
  REQUIRE(archive_write_open_filename(a, shard.c_str()) == ARCHIVE_OK);
  const std::string image(3 << 20, '\0');
  for (int i = 0; i < 1000; ++i) {
    for (const auto& [ext, bytes] : {std::pair<std::string, const std::string*>{"jpg", &image},
                                     std::pair<std::string, const std::string*>{"txt", nullptr}}) {
      const std::string body = bytes ? *bytes : "caption";
      archive_entry* e = archive_entry_new();
      archive_entry_set_pathname(e, (std::to_string(100000 + i) + "." + ext).c_str());
      archive_entry_set_size(e, static_cast<int64_t>(body.size()));
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_perm(e, 0644);
      REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
      archive_write_data(a, body.data(), body.size());
      archive_entry_free(e);
    }
  }
  archive_write_close(a);
  archive_write_free(a);
  WARN("shard: " << std::filesystem::file_size(shard) << " bytes");
  const auto start = std::chrono::steady_clock::now();
  WebDatasetStream stream(one_shard(shard.string(), 1000));
  for (int i = 0; i < 1000; ++i) REQUIRE_FALSE(stream.next().skipped);
  WARN("read in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
}
