#include "minigpt4/train/checkpoint.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/optimizer.h"
#include "minigpt4/io/torch_save.h"

#include <torch/torch.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
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

// A digest of every tensor of a checkpoint except meta/*: name, dtype, shape and bytes, in
// name order, 8 bytes at a time. Each step is a bijection of the state, so any one changed
// word always changes the result; it guards against damage, not against an adversary.
constexpr const char* kDigestName = "words64-v1";

class Digest {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (; n >= 8; p += 8, n -= 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      mix(w);
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p, n);
    mix(tail ^ (static_cast<uint64_t>(n) << 56));
  }
  void add(uint64_t v) { mix(v); }
  void add(const std::string& s) { add(s.data(), s.size()); }
  std::string hex() const { return fmt::format("{:016x}", h_); }

 private:
  void mix(uint64_t w) {
    h_ = (h_ ^ w) * 0x9E3779B97F4A7C15ULL;
    h_ = (h_ << 29) | (h_ >> 35);
  }
  uint64_t h_ = 0x6A09E667F3BCC909ULL;
};

std::string content_digest(const StateDict& tensors) {
  Digest d;
  for (const auto& [name, tensor] : tensors) {
    if (name.compare(0, 5, "meta/") == 0) continue;
    const at::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    d.add(name);
    d.add(std::string(c10::toString(t.scalar_type())));
    d.add(static_cast<uint64_t>(t.dim()));
    for (const int64_t size : t.sizes()) d.add(static_cast<uint64_t>(size));
    d.add(t.data_ptr(), t.nbytes());
  }
  return d.hex();
}

// The tensors of a PyValue tree under the names the checkpoint reader will give them.
void collect_tensors(const PyValue& v, const std::string& prefix, StateDict& out) {
  auto child = [&](const std::string& k) { return prefix.empty() ? k : prefix + "/" + k; };
  switch (v.kind) {
    case K::Tensor: out.emplace(prefix, v.tensor); break;
    case K::Dict:
    case K::OrderedDict:
      for (size_t i = 0; i < v.items.size(); ++i) collect_tensors(v.items[i], child(v.keys[i]), out);
      break;
    case K::Tuple:
      for (size_t i = 0; i < v.items.size(); ++i) collect_tensors(v.items[i], child(std::to_string(i)), out);
      break;
    default: break;
  }
}

bool all_digits(const std::string& s, size_t begin, size_t end) {
  if (begin >= end) return false;
  for (size_t i = begin; i < end; ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

nlohmann::json parse_meta(const StateDict& all, const std::string& path) {
  auto it = all.find("meta/json");
  if (it == all.end())
    fail(
        "{} is not a training checkpoint written by this program (it has no meta/json); to start from its "
        "weights, name it in model.ckpt instead of run.resume_ckpt_path",
        path);
  return parse_json(tensor_text(it->second), path + ": meta/json");  // depth-limited, errors named
}

TrainingProgress parse_progress(const StateDict& all, const std::string& path) {
  const nlohmann::json meta = parse_meta(all, path);
  auto field_is = [&](const char* key, auto check) { return meta.contains(key) && check(meta.at(key)); };
  if (!meta.is_object() || !field_is("format", [](const auto& f) { return f.is_string() && f == kFormat; }))
    fail("{}: meta/json does not describe a '{}' file", path, kFormat);
  if (field_is("version", [](const auto& v) { return !v.is_number_integer() || v.template get<int64_t>() > kVersion; }))
    fail("{}: checkpoint format version {} is newer than this program reads ({})", path,
         describe_json(meta.at("version")), kVersion);
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

// The digest recorded at writing against the file's contents (older files have none).
void check_digest(const StateDict& all, const std::string& path) {
  const nlohmann::json meta = parse_meta(all, path);
  if (!meta.is_object() || !meta.contains("digest")) return;
  const auto& recorded = meta.at("digest");
  if (!recorded.is_object() || !recorded.contains("algorithm") || recorded.at("algorithm") != kDigestName ||
      !recorded.contains("value") || !recorded.at("value").is_string())
    fail("{}: meta/json has a digest this program does not know (expected {{\"algorithm\": \"{}\", \"value\": ...}})",
         path, kDigestName);
  const std::string actual = content_digest(all);
  if (actual != recorded.at("value").get<std::string>())
    fail(
        "{} is damaged: its contents do not match the digest recorded when it was written ({} now, {} then); "
        "a disk error or an incomplete copy?",
        path, actual, recorded.at("value").get<std::string>());
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

bool is_checkpoint_name(const std::string& filename) {
  static const std::string head = "checkpoint_", step = "step_", tail = ".pth";
  if (filename.size() <= head.size() + tail.size() || filename.compare(0, head.size(), head) != 0 ||
      filename.compare(filename.size() - tail.size(), tail.size(), tail) != 0)
    return false;
  size_t begin = head.size();
  if (filename.compare(begin, step.size(), step) == 0) begin += step.size();
  return all_digits(filename, begin, filename.size() - tail.size());
}

void save_training_checkpoint(const std::string& path, const torch::nn::Module& model, const Optimizer& optimizer,
                              const GradScaler* scaler, const TrainingProgress& progress, bool with_gradients) {
  PyValue weights = PyValue::dict(K::OrderedDict);
  PyValue gradients = PyValue::dict(K::OrderedDict);
  nlohmann::json names = nlohmann::json::array();
  for (const auto& [name, p] : trainable(model)) {
    weights.set(name, PyValue::of(p.detach()));
    if (with_gradients && p.grad().defined()) gradients.set(name, PyValue::of(p.grad().detach()));
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

  PyValue root = PyValue::dict();
  root.set("model", std::move(weights));
  root.set("optimizer", std::move(opt));
  root.set("scaler", std::move(scaler_state));
  if (!gradients.items.empty()) root.set("grad", std::move(gradients));
  root.set("epoch", PyValue::of(progress.epoch));
  root.set("config", PyValue::of(progress.config_text));

  StateDict contents;
  collect_tensors(root, "", contents);
  const nlohmann::json meta = {
      {"format", kFormat},
      {"version", kVersion},
      {"epoch", progress.epoch},
      {"iter", progress.iter},
      {"global_step", progress.global_step},
      {"data_position", progress.data_position},
      {"trainable", names},
      {"config", progress.config_text},
      {"digest", {{"algorithm", kDigestName}, {"value", content_digest(contents)}}},
  };
  PyValue meta_dict = PyValue::dict();
  meta_dict.set("json", PyValue::of(text_tensor(meta.dump())));
  root.set("meta", std::move(meta_dict));

  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) fail("cannot create directory {} for checkpoint {}: {}", parent.string(), path, ec.message());
  io::torch_save(path, root);
}

TrainingProgress read_training_progress(const std::string& path) { return parse_progress(load_file(path), path); }

TrainingProgress verify_training_checkpoint(const std::string& path) {
  const StateDict all = load_file(path);
  TrainingProgress progress = parse_progress(all, path);
  check_digest(all, path);
  return progress;
}

TrainingProgress load_training_checkpoint(const std::string& path, torch::nn::Module& model, Optimizer& optimizer,
                                          GradScaler* scaler) {
  const StateDict all = load_file(path);
  TrainingProgress progress = parse_progress(all, path);
  check_digest(all, path);

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
    fail(
        "{}: the checkpoint's weights do not match the model's trainable parameters (missing: [{}]; not "
        "trainable here: [{}]); were the freeze settings changed?",
        path, fmt::join(missing, ", "), fmt::join(unexpected, ", "));
  for (const auto& [name, p] : params)
    if (weights.at(name).sizes() != p.sizes())
      fail("{}: weight '{}' has shape {}, the model's parameter has {}", path, name, weights.at(name).sizes().vec(),
           p.sizes().vec());
  const StateDict gradients = section(all, "grad");
  std::map<std::string, at::Tensor> by_name(params.begin(), params.end());
  for (const auto& [name, g] : gradients) {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("{}: gradient for '{}', which is not a trainable parameter here", path, name);
    if (g.sizes() != it->second.sizes())
      fail("{}: gradient '{}' has shape {}, the model's parameter has {}", path, name, g.sizes().vec(),
           it->second.sizes().vec());
  }
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : params) {
      at::Tensor target = p;
      target.copy_(weights.at(name));
      // The gradients accumulated before the save, or none (as after zero_grad).
      auto g = gradients.find(name);
      target.mutable_grad() = g == gradients.end() ? at::Tensor() : g->second.to(p.options()).clone();
    }
  }

  optimizer.load_state_by_name(section(all, "optimizer/state"), path + " (optimizer state)");
  // The learning rate of the last step (the schedule sets the next one before it is used;
  // restored so that a checkpoint written again before that step is the same file).
  auto& groups = optimizer.torch_optimizer().param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    auto it = all.find(fmt::format("optimizer/param_groups/{}/lr", g));
    if (it != all.end() && it->second.numel() == 1 && it->second.is_floating_point())
      groups[g].options().set_lr(it->second.item<double>());
  }

  if (scaler != nullptr && scaler->enabled()) {
    const StateDict s = section(all, "scaler");
    if (s.empty())
      log::warn("{} has no grad scaler state (saved without AMP); starting the scale at its initial value", path);
    else
      scaler->load_state_dict(s, path);
  }
  return progress;
}

namespace {

struct Candidate {
  std::string path;
  int64_t step;
  fs::file_time_type time;
};

// The checkpoint_*.pth of `dir` whose metadata reads, furthest into training first;
// `unreadable` gets the others with their error.
std::vector<Candidate> list_checkpoints(const std::string& dir, std::vector<std::string>* unreadable) {
  std::vector<Candidate> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::error_code entry_ec;
    if (!entry.is_regular_file(entry_ec) || !is_checkpoint_name(entry.path().filename().string())) continue;
    const std::string path = entry.path().string();
    try {
      out.push_back({path, read_training_progress(path).global_step, entry.last_write_time(entry_ec)});
    } catch (const std::exception& e) {  // a damaged file must not hide the older good ones
      if (unreadable) unreadable->push_back(e.what());
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
    return a.step != b.step ? a.step > b.step : a.time > b.time;
  });
  return out;
}

}  // namespace

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  std::vector<std::string> unreadable;
  const auto candidates = list_checkpoints(dir, &unreadable);
  for (const auto& why : unreadable) log::warn("skipping checkpoint: {}", why);
  if (candidates.empty()) return std::nullopt;
  return candidates.front().path;
}

std::optional<std::string> find_resumable_checkpoint(const std::string& dir) {
  std::vector<std::string> faults;
  const auto candidates = list_checkpoints(dir, &faults);
  for (const auto& why : faults) log::warn("not resuming from a damaged checkpoint: {}", why);
  for (const auto& c : candidates) {
    try {
      verify_training_checkpoint(c.path);
      if (!faults.empty())
        log::warn("resuming from {} (step {}), the newest checkpoint in {} that is whole", c.path, c.step, dir);
      return c.path;
    } catch (const std::exception& e) {
      log::warn("not resuming from a damaged checkpoint: {}", e.what());
      faults.push_back(e.what());
    }
  }
  if (!faults.empty())
    fail(
        "run.resume_ckpt_path=latest: none of the {} checkpoint(s) in {} can be resumed from: {}. Move them "
        "away to start afresh, or name one in run.resume_ckpt_path",
        faults.size(), dir, fmt::join(faults, "; "));
  return std::nullopt;
}

std::vector<std::string> remove_checkpoint_temporaries(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string final_name;
    long pid = 0;
    const std::string name = entry.path().filename().string();
    if (!io::parse_temporary_name(name, &final_name, &pid) || !is_checkpoint_name(final_name)) continue;
    // A writer that still runs (another process saving into this folder right now) keeps its file.
    if (pid != ::getpid() && pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) {
      log::warn("leaving {}: process {} that writes it is still running", entry.path().string(), pid);
      continue;
    }
    std::error_code remove_ec;
    if (fs::remove(entry.path(), remove_ec)) {
      log::warn("removed {}, a checkpoint left half-written by a run that was stopped", entry.path().string());
      removed.push_back(entry.path().string());
    } else if (remove_ec) {
      log::warn("cannot remove the leftover temporary {}: {}", entry.path().string(), remove_ec.message());
    }
  }
  return removed;
}

}  // namespace minigpt4::train
