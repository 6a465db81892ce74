#include "minigpt4/datasets/cc_sbu_align.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace minigpt4::datasets {

namespace fs = std::filesystem;

CcSbuAlignDataset::CcSbuAlignDataset(std::string root) : root_(std::move(root)) {
  const fs::path file_path = fs::path(root_) / "filter_cap.json";
  const std::string file = file_path.string();
  std::error_code ec;
  if (!fs::exists(file_path, ec))
    fail("cc_sbu_align: cannot open {} (expected <root>/filter_cap.json and <root>/image/<image_id>.jpg)", file);
  // Size-capped, depth-limited; errors name the file and the byte offset.
  const nlohmann::json j = read_json_file(file_path, "cc_sbu_align annotations");
  const auto list_it = j.is_object() ? j.find("annotations") : j.end();
  if (!j.is_object() || list_it == j.end() || !list_it->is_array())
    fail(
        "cc_sbu_align: {} has no \"annotations\" list (expected {{\"annotations\": [{{\"image_id\": ..., "
        "\"caption\": ...}}]}}, got {})",
        file, describe_json(j));
  const auto& list = *list_it;
  const fs::path image_dir = fs::path(root_) / "image";
  annotations_.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& a = list[i];
    const auto id_it = a.is_object() ? a.find("image_id") : a.end();
    const auto caption_it = a.is_object() ? a.find("caption") : a.end();
    if (!a.is_object() || id_it == a.end() || caption_it == a.end() || !caption_it->is_string())
      fail("cc_sbu_align: {}: annotation {} needs an \"image_id\" and a \"caption\" string, got {}", file, i,
           describe_json(a));
    const auto& id = *id_it;
    if (!id.is_string() && !id.is_number_integer())
      fail("cc_sbu_align: {}: annotation {} has an image_id that is neither text nor an integer: {}", file, i,
           describe_json(id));
    std::string image_id = id.is_string() ? id.get<std::string>() : id.dump();
    if (image_id.size() > kMaxFileNameBytes)
      fail("cc_sbu_align: {}: annotation {} has an image_id of {} bytes ('{}'), more than the {} a file name may have",
           file, i, image_id.size(), excerpt(image_id), kMaxFileNameBytes);
    // The image is <root>/image/<image_id>.jpg: the id may not name a file elsewhere.
    confined_path(image_dir, image_id + ".jpg", fmt::format("cc_sbu_align: {}: annotation {} image_id", file, i));
    annotations_.push_back({std::move(image_id), caption_it->get<std::string>()});
  }
  if (annotations_.empty()) fail("cc_sbu_align: {} holds no annotations", file);
}

std::string CcSbuAlignDataset::image_path(size_t i) const {
  return confined_path(fs::path(root_) / "image", annotation(i).image_id + ".jpg", "cc_sbu_align image_id").string();
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
    rec.detail =
        (ec && ec != std::errc::no_such_file_or_directory ? "cannot read it: " + ec.message() : "no such file") +
        " (annotation image_id \"" + excerpt(dataset_.annotation(i).image_id, 200) + "\")";
  }
  return rec;
}

}  // namespace minigpt4::datasets
