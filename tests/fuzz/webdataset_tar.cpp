// Fuzz harness: the bytes as one webdataset shard (a tar, or a gzip-compressed tar). Every
// sample goes through the reader and the image/caption choice; then the same bytes, written
// to a temp file, go through WebDatasetStream (shuffle buffer, skip notes, passes) for a
// bounded number of records. minigpt4::Error is a clean refusal; anything else escaping
// (or a crash, a hang, a blow-up) is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/datasets/webdataset.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

// Small limits, so an input that claims a lot is refused quickly and the fuzzer's memory
// stays bounded; the rules checked are the same as with the defaults.
void set_fuzz_limits() {
  static const bool done = [] {
    minigpt4::InputLimits l = minigpt4::input_limits();
    l.max_tar_member_bytes = int64_t(1) << 20;
    l.max_decompressed_bytes = int64_t(64) << 20;
    minigpt4::set_input_limits(l);
    return true;
  }();
  (void)done;
}

const std::string& temp_shard() {
  // Never destroyed: the exit handler that removes the file still reads it.
  static const std::string* path = [] {
    auto* p = new std::string(
        (std::filesystem::temp_directory_path() / ("minigpt4_fuzz_wds_" + std::to_string(::getpid()) + ".tar"))
            .string());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove(temp_shard(), ec);
    });
    return p;
  }();
  return *path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  set_fuzz_limits();
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    auto reader = minigpt4::datasets::TarShardReader::from_bytes(bytes, "fuzz.tar");
    while (auto sample = reader->next()) (void)minigpt4::datasets::pick_image_and_caption(*sample);
  } catch (const minigpt4::Error&) {}
  {
    std::ofstream out(temp_shard(), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  try {
    minigpt4::datasets::WebDatasetOptions opt;
    opt.name = "fuzz";
    opt.shards = {temp_shard()};
    opt.shuffle_buffer = 8;
    opt.shuffle_buffer_bytes = 1 << 20;
    minigpt4::datasets::WebDatasetStream stream(opt);
    for (int i = 0; i < 64; ++i)
      if (stream.next().pass > 2) break;
  } catch (const minigpt4::Error&) {}
  return 0;
}
