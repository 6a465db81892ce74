#include "minigpt4/train/checkpoint.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/io/torch_save.h"

#include <torch/torch.h>

#include <filesystem>
#include <regex>
#include <set>

namespace minigpt4::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "minigpt4-cpp-training-checkpoint";
constexpr int kVersion = 1;

using io::PyValue;
using K = PyValue::Kind;

at::Tensor text_tensor(const std::string& text) {
  return torch::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, torch::kUInt8).clone();
}

std::string tensor_text(const at::Tensor& t) {
  const at::Tensor bytes = t.to(torch::kCPU).contiguous();
  if (bytes.scalar_type() != torch::kUInt8 || bytes.dim() != 1) return {};
  return std::string(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
}

// Everything under "<prefix>/" with the prefix removed.
StateDict section(const StateDict& all, const std::string& prefix) {
  StateDict out;
  const std::string p = prefix + "/";
  for (auto it = all.lower_bound(p); it != all.end() && it->first.compare(0, p.size(), p) == 0; ++it)
    out.emplace(it->first.substr(p.size()), it->second);
  return out;
}

TrainingProgress parse_progress(const StateDict& all, const std::string& path) {
  auto it = all.find("meta/json");
  if (it == all.end())
    fail("{} is not a training checkpoint written by this program (it has no meta/json); to start from its "
         "weights, name it in model.ckpt instead of run.resume_ckpt_path",
         path);
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(tensor_text(it->second));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: meta/json is not valid JSON: {}", path, e.what());
  }
  if (!meta.is_object() || meta.value("format", "") != kFormat)
    fail("{}: meta/json does not describe a '{}' file", path, kFormat);
  if (meta.value("version", 0) > kVersion)
    fail("{}: checkpoint format version {} is newer than this program reads ({})", path, meta.value("version", 0),
         kVersion);
  TrainingProgress p;
  try {
    p.epoch = meta.at("epoch").get<int64_t>();
    p.iter = meta.at("iter").get<int64_t>();
    p.global_step = meta.at("global_step").get<int64_t>();
    p.data_position = meta.value("data_position", nlohmann::json());
    p.config_text = meta.value("config", "");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: meta/json lacks a resume field: {}", path, e.what());
  }
  return p;
}

std::vector<std::pair<std::string, at::Tensor>> trainable(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

StateDict load_file(const std::string& path) {
  if (!fs::is_regular_file(path)) fail("checkpoint {} does not exist or is not a file", path);
  return io::load_torch_checkpoint(path);  // its errors (truncated, corrupt) name the file
}

}  // namespace

std::string epoch_checkpoint_path(const std::string& dir, int64_t epoch) {
  return (fs::path(dir) / fmt::format("checkpoint_{}.pth", epoch)).string();
}

std::string step_checkpoint_path(const std::string& dir, int64_t global_step) {
  return (fs::path(dir) / fmt::format("checkpoint_step_{}.pth", global_step)).string();
}

void save_training_checkpoint(const std::string& path, const torch::nn::Module& model, const Optimizer& optimizer,
                              const GradScaler* scaler, const TrainingProgress& progress) {
  PyValue weights = PyValue::dict(K::OrderedDict);
  nlohmann::json names = nlohmann::json::array();
  for (const auto& [name, p] : trainable(model)) {
    weights.set(name, PyValue::of(p.detach()));
    names.push_back(name);
  }

  // optimizer: {"state": {name: {...}}, "param_groups": ({lr, weight_decay, params}, ...)}
  PyValue state = PyValue::dict();
  std::map<std::string, PyValue> per_param;
  std::vector<std::string> order;
  for (const auto& [key, tensor] : optimizer.state_by_name()) {
    const auto slash = key.rfind('/');
    const std::string name = key.substr(0, slash);
    if (!per_param.count(name)) order.push_back(name);
    auto& entry = per_param.try_emplace(name, PyValue::dict()).first->second;
    entry.set(key.substr(slash + 1), PyValue::of(tensor));
  }
  for (const auto& name : order) state.set(name, std::move(per_param.at(name)));
  std::vector<PyValue> groups;
  const auto& adamw = optimizer.torch_optimizer();
  const auto& lists = optimizer.groups();
  for (size_t g = 0; g < adamw.param_groups().size(); ++g) {
    const auto& opts = static_cast<const torch::optim::AdamWOptions&>(adamw.param_groups()[g].options());
    std::vector<PyValue> params;
    for (const auto& p : g == 0 ? lists.decay : lists.no_decay) params.push_back(PyValue::of(p.name));
    PyValue group = PyValue::dict();
    group.set("lr", PyValue::of(torch::tensor(opts.lr(), torch::kFloat64)));
    group.set("weight_decay", PyValue::of(torch::tensor(opts.weight_decay(), torch::kFloat64)));
    group.set("params", PyValue::tuple(std::move(params)));
    groups.push_back(std::move(group));
  }
  PyValue opt = PyValue::dict();
  opt.set("state", std::move(state));
  opt.set("param_groups", PyValue::tuple(std::move(groups)));

  PyValue scaler_state = PyValue::none();
  if (scaler != nullptr && scaler->enabled()) {
    scaler_state = PyValue::dict();
    for (const auto& [key, tensor] : scaler->state_dict()) scaler_state.set(key, PyValue::of(tensor));
  }

  const nlohmann::json meta = {
      {"format", kFormat},        {"version", kVersion},
      {"epoch", progress.epoch},  {"iter", progress.iter},
      {"global_step", progress.global_step},
      {"data_position", progress.data_position},
      {"trainable", names},       {"config", progress.config_text},
  };
  PyValue meta_dict = PyValue::dict();
  meta_dict.set("json", PyValue::of(text_tensor(meta.dump())));

  PyValue root = PyValue::dict();
  root.set("model", std::move(weights));
  root.set("optimizer", std::move(opt));
  root.set("scaler", std::move(scaler_state));
  root.set("epoch", PyValue::of(progress.epoch));
  root.set("config", PyValue::of(progress.config_text));
  root.set("meta", std::move(meta_dict));

  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) fail("cannot create directory {} for checkpoint {}: {}", parent.string(), path, ec.message());
  io::torch_save(path, root);
}

TrainingProgress read_training_progress(const std::string& path) { return parse_progress(load_file(path), path); }

TrainingProgress load_training_checkpoint(const std::string& path, torch::nn::Module& model, Optimizer& optimizer,
                                          GradScaler* scaler) {
  const StateDict all = load_file(path);
  TrainingProgress progress = parse_progress(all, path);

  // Model: exactly the trainable parameters, by name.
  const StateDict weights = section(all, "model");
  const auto params = trainable(model);
  std::vector<std::string> missing, unexpected;
  std::set<std::string> known;
  for (const auto& [name, p] : params) {
    known.insert(name);
    if (!weights.count(name)) missing.push_back(name);
  }
  for (const auto& [name, t] : weights)
    if (!known.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty())
    fail("{}: the checkpoint's weights do not match the model's trainable parameters (missing: [{}]; not "
         "trainable here: [{}]); were the freeze settings changed?",
         path, fmt::join(missing, ", "), fmt::join(unexpected, ", "));
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : params) {
      const at::Tensor& t = weights.at(name);
      if (t.sizes() != p.sizes())
        fail("{}: weight '{}' has shape {}, the model's parameter has {}", path, name, t.sizes().vec(),
             p.sizes().vec());
      at::Tensor target = p;
      target.copy_(t);
    }
  }

  optimizer.load_state_by_name(section(all, "optimizer/state"), path + " (optimizer state)");

  if (scaler != nullptr && scaler->enabled()) {
    const StateDict s = section(all, "scaler");
    if (s.empty())
      log::warn("{} has no grad scaler state (saved without AMP); starting the scale at its initial value", path);
    else
      scaler->load_state_dict(s, path);
  }
  return progress;
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  static const std::regex name(R"(checkpoint_(step_)?\d+\.pth)");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  std::optional<std::string> best;
  int64_t best_step = -1;
  fs::file_time_type best_time{};
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file() || !std::regex_match(entry.path().filename().string(), name)) continue;
    const std::string path = entry.path().string();
    int64_t step;
    try {
      step = read_training_progress(path).global_step;
    } catch (const std::exception& e) {  // a damaged file must not hide the older good ones
      log::warn("skipping checkpoint {}: {}", path, e.what());
      continue;
    }
    const auto time = entry.last_write_time(ec);
    if (step > best_step || (step == best_step && time > best_time)) {
      best = path;
      best_step = step;
      best_time = time;
    }
  }
  return best;
}

}  // namespace minigpt4::train
