#include "minigpt4/data/cc_sbu_align.h"

#include "minigpt4/common/error.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <numeric>

namespace minigpt4::data {

namespace fs = std::filesystem;

CcSbuAlignDataset::CcSbuAlignDataset(std::string root) : root_(std::move(root)) {
  const std::string file = (fs::path(root_) / "filter_cap.json").string();
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cc_sbu_align: cannot open {} (expected <root>/filter_cap.json and <root>/image/<image_id>.jpg)", file);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("cc_sbu_align: {} is not valid JSON: {}", file, e.what());
  }
  if (!j.is_object() || !j.contains("annotations") || !j["annotations"].is_array())
    fail("cc_sbu_align: {} has no \"annotations\" list (expected {{\"annotations\": [{{\"image_id\": ..., "
         "\"caption\": ...}}]}})", file);
  const auto& list = j["annotations"];
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& a = list[i];
    if (!a.is_object() || !a.contains("image_id") || !a.contains("caption") || !a["caption"].is_string())
      fail("cc_sbu_align: {}: annotation {} needs an \"image_id\" and a \"caption\" string, got {}", file, i,
           a.dump().substr(0, 200));
    const auto& id = a["image_id"];
    if (!id.is_string() && !id.is_number_integer())
      fail("cc_sbu_align: {}: annotation {} has an image_id that is neither text nor an integer: {}", file, i, id.dump());
    annotations_.push_back({id.is_string() ? id.get<std::string>() : id.dump(), a["caption"].get<std::string>()});
  }
  if (annotations_.empty()) fail("cc_sbu_align: {} holds no annotations", file);
}

std::string CcSbuAlignDataset::image_path(size_t i) const {
  return (fs::path(root_) / "image" / (annotation(i).image_id + ".jpg")).string();
}

CcSbuAlignStream::CcSbuAlignStream(CcSbuAlignDataset dataset, uint64_t seed, int rank, int world_size)
    : dataset_(std::move(dataset)), cursor_(dataset_.size(), seed, rank, world_size, "cc_sbu_align annotations") {}

StreamRecord CcSbuAlignStream::next() {
  const size_t i = cursor_.next();
  StreamRecord rec;
  rec.image_path = dataset_.image_path(i);
  rec.source = rec.image_path;
  rec.caption = dataset_.annotation(i).caption;
  rec.pass = cursor_.pass();
  std::error_code ec;
  if (!fs::is_regular_file(rec.image_path, ec)) {
    rec.skipped = true;
    rec.reason = SkipReason::MissingImage;
    rec.detail = "no such file (annotation image_id \"" + dataset_.annotation(i).image_id + "\")";
  }
  return rec;
}

}  // namespace minigpt4::data
