// The loader's settings from a run config, and its position as JSON (saved beside the
// training checkpoints).
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/datasets/instruction_datasets.h"
#include "minigpt4/datasets/loader.h"

#include <filesystem>

namespace minigpt4::datasets {

namespace {

// RefCOCO's files per task when build_info leaves dataset / splitBy out (the original
// configs always set them: refcoco/refcoco+ by unc, refcocog by umd).
std::pair<std::string, std::string> refer_defaults(const std::string& name) {
  if (name == "refcocop" || name == "invrefcocop") return {"refcoco+", "unc"};
  if (name == "refcocog" || name == "invrefcocog") return {"refcocog", "umd"};
  return {"refcoco", "unc"};
}

// build_info of MiniGPT-v2's datasets, under the keys the original configs use.
void read_instruction_build_info(const Config& config, const std::string& key, DatasetSpec& spec) {
  const std::string info = key + ".build_info";
  const auto required = [&](const std::string& sub, const std::string& what) {
    const std::string value = config.get_string(info + "." + sub);
    if (value.empty()) fail("{}: {}.{} is not set; it names {}", config.path(), info, sub, what);
    return value;
  };
  const std::string& name = spec.name;
  const bool lavis =
      name == "coco_caption" || name == "coco_vqa" || name == "ok_vqa" || name == "aok_vqa" || name == "gqa";
  if (lavis) {
    spec.ann_paths = config.get_string_list(info + ".annotations.train.storage");
    if (spec.ann_paths.empty())
      fail("{}: {}.annotations.train.storage is not set; it lists the training annotation file(s) (LAVIS' json)",
           config.path(), info);
    spec.image_root = required("images.storage", "the image folder");
  } else if (name == "refvg") {
    spec.image_root =
        required("data_dir", "the Visual Genome folder (image_data.json, region_descriptions.json, images)");
  } else {
    spec.ann_paths = {required("ann_path", name.find("refcoco") != std::string::npos
                                               ? "the folder holding refcoco/, refcoco+/, refcocog/ (REFER's files)"
                                               : "the annotation file")};
    if (name != "unnatural_instruction") spec.image_root = required("image_path", "the image folder");
  }
  if (name.find("refcoco") != std::string::npos) {
    const auto [dataset, split_by] = refer_defaults(name);
    spec.refer_dataset = config.get_string(info + ".dataset", dataset);
    spec.split_by = config.get_string(info + ".splitBy", split_by);
  }
  // Checked here, before any weight loads; what is inside is checked when the loader reads it.
  for (const auto& path : spec.ann_paths)
    if (!std::filesystem::exists(path))
      fail("{}: {}: the annotations '{}' do not exist (set the dataset's build_info paths; docs/tinygptv.md)",
           config.path(), info, path);
  if (!spec.image_root.empty() && !std::filesystem::is_directory(spec.image_root))
    fail("{}: {}: the image folder '{}' does not exist (set the dataset's build_info paths; docs/tinygptv.md)",
         config.path(), info, spec.image_root);
}

}  // namespace

LoaderOptions loader_options_from_config(const Config& config, const TrainerSettings& run, int rank, int world_size) {
  LoaderOptions opt;
  opt.seed = static_cast<uint64_t>(run.seed);
  opt.num_workers = run.num_workers;
  opt.rank = rank;
  opt.world_size = world_size;
  const auto names = config.keys_under("datasets");
  if (names.empty())
    fail("{}: no datasets configured (a `datasets:` section naming laion, cc_sbu or cc_sbu_align)", config.path());
  for (const auto& name : names) {
    const std::string key = "datasets." + name;
    DatasetSpec spec;
    spec.name = name;
    const bool instruction = is_instruction_dataset(name);
    spec.storage = config.get_string(key + ".build_info.storage");
    if (instruction) read_instruction_build_info(config, key, spec);
    if (spec.storage.empty() && !instruction)
      fail(
          "{}: {}.build_info.storage is not set; it says where the data is (a shard list such as "
          "/data/laion/{{00000..10488}}.tar, or the cc_sbu_align directory)",
          config.path(), key);
    const bool align_layout = std::filesystem::is_regular_file(std::filesystem::path(spec.storage) / "filter_cap.json");
    const std::string data_type = config.get_string(key + ".data_type", "images");
    if (data_type != "images" && data_type != "text")
      fail("{}: {}.data_type is '{}'; expected images or text", config.path(), key, data_type);
    // (unnatural_instruction's original config says data_type: text: it has no images.)
    spec.kind = instruction                              ? DatasetKind::Instruction
                : data_type == "text"                    ? DatasetKind::TextLines
                : name == "cc_sbu_align" || align_layout ? DatasetKind::CcSbuAlign
                                                         : DatasetKind::WebDataset;
    spec.batch_size = static_cast<int>(config.get_int(key + ".batch_size", run.batch_size_train));
    if (spec.batch_size <= 0) fail("{}: neither {}.batch_size nor run.batch_size_train is set", config.path(), key);
    spec.sample_ratio = config.get_float(key + ".sample_ratio", 1.0);
    const std::string vis = key + ".vis_processor.train";
    const std::string vis_name = config.get_string(vis + ".name", "blip2_image_train");
    if (vis_name != "blip2_image_train" && vis_name != "blip2_image_eval")
      fail("{}: {}.name is '{}'; expected blip2_image_train or blip2_image_eval", config.path(), vis, vis_name);
    spec.random_crop = vis_name == "blip2_image_train";
    spec.image_size = static_cast<int>(config.get_int(vis + ".image_size", 224));
    spec.min_scale = config.get_float(vis + ".min_scale", 0.5);
    spec.max_scale = config.get_float(vis + ".max_scale", 1.0);
    spec.max_words = static_cast<int>(config.get_int(key + ".text_processor.train.max_words", 50));
    spec.prompt = config.get_string(key + ".text_processor.train.prompt", "");
    opt.datasets.push_back(std::move(spec));
  }
  return opt;
}

nlohmann::json LoaderPosition::to_json() const {
  nlohmann::json j = {{"batches", batches}, {"seed", seed}, {"rank", rank}, {"world_size", world_size}};
  j["datasets"] = nlohmann::json::object();
  for (const auto& [name, d] : datasets)
    j["datasets"][name] = {{"records", d.records}, {"batches", d.batches}, {"pass", d.pass}};
  return j;
}

namespace {

template <typename T>
T required(const nlohmann::json& j, const std::string& key, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer())
    fail("data loader position: {}\"{}\" is missing or not an integer", where, key);
  return j[key].get<T>();
}

}  // namespace

LoaderPosition LoaderPosition::from_json(const nlohmann::json& j) {
  LoaderPosition pos;
  pos.batches = required<uint64_t>(j, "batches", "");
  pos.seed = required<uint64_t>(j, "seed", "");
  pos.rank = required<int>(j, "rank", "");
  pos.world_size = required<int>(j, "world_size", "");
  if (!j.contains("datasets") || !j["datasets"].is_object())
    fail("data loader position: \"datasets\" is missing or not an object");
  for (const auto& [name, d] : j["datasets"].items()) {
    const std::string where = "datasets." + name + ".";
    pos.datasets[name] = {required<uint64_t>(d, "records", where), required<uint64_t>(d, "batches", where),
                          required<uint64_t>(d, "pass", where)};
  }
  return pos;
}

}  // namespace minigpt4::datasets
