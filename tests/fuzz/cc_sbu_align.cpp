// Fuzz harness: the bytes as cc_sbu_align's filter_cap.json under a temp root (no image
// folder): the annotations are parsed, every image_id resolved under <root>/image, and the
// stream run for a few records. minigpt4::Error is a clean refusal; anything else escaping
// (or a crash) is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/datasets/cc_sbu_align.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

const std::filesystem::path& temp_root() {
  // Never destroyed: the exit handler that removes the folder still reads it.
  static const std::filesystem::path* root = [] {
    auto* p = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                        ("minigpt4_fuzz_cc_sbu_" + std::to_string(::getpid())));
    std::filesystem::create_directories(*p);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(temp_root(), ec);
    });
    return p;
  }();
  return *root;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    std::ofstream out(temp_root() / "filter_cap.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    minigpt4::datasets::CcSbuAlignDataset dataset(temp_root().string());
    for (size_t i = 0; i < dataset.size() && i < 16; ++i) (void)dataset.image_path(i);
    minigpt4::datasets::CcSbuAlignStream stream(std::move(dataset), 42, 0, 1);
    for (int i = 0; i < 16; ++i) (void)stream.next();
  } catch (const minigpt4::Error&) {}
  return 0;
}
