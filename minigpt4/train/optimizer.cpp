#include "minigpt4/train/optimizer.h"

#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/strings.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <set>

namespace minigpt4::train {

namespace {

int64_t total_numel(const std::vector<NamedParameter>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.tensor.numel();
  return n;
}

std::vector<at::Tensor> tensors_of(const std::vector<NamedParameter>& params) {
  std::vector<at::Tensor> out;
  for (const auto& p : params) out.push_back(p.tensor);
  return out;
}

}  // namespace

bool uses_weight_decay(const std::string& name, const at::Tensor& parameter) {
  return !(parameter.dim() < 2 || contains(name, "bias") || contains(name, "ln") || contains(name, "bn"));
}

int64_t ParamGroups::numel() const { return total_numel(decay) + total_numel(no_decay); }

std::string ParamGroups::summary() const {
  return fmt::format("trainable parameters: {} (decay: {} tensors / {} params, no decay: {} / {})", numel(),
                     decay.size(), total_numel(decay), no_decay.size(), total_numel(no_decay));
}

ParamGroups split_parameters(const torch::nn::Module& model) {
  ParamGroups groups;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const at::Tensor& p = item.value();
    if (!p.requires_grad()) continue;  // frozen weights
    (uses_weight_decay(item.key(), p) ? groups.decay : groups.no_decay).push_back({item.key(), p});
  }
  return groups;
}

AdamWSettings AdamWSettings::from_run(const RunSettings& run) {
  const OptimizerSettings& in = run.optimizer;
  for (const auto& [key, value] :
       {std::pair{"run.init_lr", in.init_lr}, std::pair{"run.weight_decay", in.weight_decay}})
    if (!value) fail("{}: {} is required to build the AdamW optimizer but is not set", run.config_path, key);
  AdamWSettings s;
  s.lr = *in.init_lr;
  s.weight_decay = *in.weight_decay;
  return s;
}

Optimizer::Optimizer(ParamGroups groups, const AdamWSettings& settings) : groups_(std::move(groups)) {
  auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(settings.lr)
                                                            .betas({settings.beta1, settings.beta2})
                                                            .eps(settings.eps)
                                                            .weight_decay(weight_decay));
  };
  // Both groups always exist (possibly empty), so group 0 / 1 mean the same in every run.
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  param_groups.emplace_back(tensors_of(groups_.decay), options(settings.weight_decay));
  param_groups.emplace_back(tensors_of(groups_.no_decay), options(0.0));
  adamw_ = std::make_unique<torch::optim::AdamW>(param_groups, *options(settings.weight_decay));
}

Optimizer::~Optimizer() = default;

torch::optim::Optimizer& Optimizer::torch_optimizer() { return *adamw_; }
const torch::optim::Optimizer& Optimizer::torch_optimizer() const { return *adamw_; }
void Optimizer::step() { adamw_->step(); }
void Optimizer::zero_grad() { adamw_->zero_grad(/*set_to_none=*/true); }

void Optimizer::set_lr(double lr) {
  for (auto& group : adamw_->param_groups()) group.options().set_lr(lr);
}

double Optimizer::lr() const { return adamw_->param_groups().front().options().get_lr(); }

StateDict Optimizer::state_by_name() const {
  StateDict out;
  const auto& state = adamw_->state();
  for (const auto* list : {&groups_.decay, &groups_.no_decay})
    for (const auto& p : *list) {
      auto it = state.find(p.tensor.unsafeGetTensorImpl());
      if (it == state.end()) continue;  // never stepped
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      out[p.name + "/exp_avg"] = s.exp_avg();
      out[p.name + "/exp_avg_sq"] = s.exp_avg_sq();
      // int64, not Python's float32: exact at any step count.
      out[p.name + "/step"] = torch::tensor(s.step(), torch::kInt64);
    }
  return out;
}

void Optimizer::load_state_by_name(const StateDict& state, const std::string& source) {
  std::map<std::string, const NamedParameter*> by_name;
  for (const auto* list : {&groups_.decay, &groups_.no_decay})
    for (const auto& p : *list) by_name[p.name] = &p;

  // Group the flat entries by parameter: "<name>/<field>" (names never contain '/').
  std::map<std::string, std::map<std::string, at::Tensor>> fields;
  for (const auto& [key, tensor] : state) {
    const auto slash = key.rfind('/');
    if (slash == std::string::npos) fail("{}: optimizer state entry '{}' is not '<parameter>/<field>'", source, key);
    fields[key.substr(0, slash)][key.substr(slash + 1)] = tensor;
  }
  std::vector<std::string> unknown;
  for (const auto& [name, f] : fields)
    if (!by_name.count(name)) unknown.push_back(name);
  if (!unknown.empty())
    fail("{}: optimizer state for parameters this model does not train: {}", source, fmt::join(unknown, ", "));

  auto& map = adamw_->state();
  for (const auto& [name, f] : fields) {
    const at::Tensor& p = by_name[name]->tensor;
    for (const char* field : {"exp_avg", "exp_avg_sq", "step"})
      if (!f.count(field)) fail("{}: optimizer state of '{}' has no '{}'", source, name, field);
    for (const char* field : {"exp_avg", "exp_avg_sq"})
      if (f.at(field).sizes() != p.sizes())
        fail("{}: optimizer state '{}/{}' has shape {}, the parameter has {}", source, name, field,
             f.at(field).sizes().vec(), p.sizes().vec());
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    // Like torch.optim.Optimizer.load_state_dict: state follows the parameter's device/dtype.
    s->exp_avg(f.at("exp_avg").to(p.device(), p.scalar_type(), false, /*copy=*/true));
    s->exp_avg_sq(f.at("exp_avg_sq").to(p.device(), p.scalar_type(), false, /*copy=*/true));
    s->step(static_cast<int64_t>(std::llround(f.at("step").item<double>())));
    map[p.unsafeGetTensorImpl()] = std::move(s);
  }
}

std::unique_ptr<Optimizer> make_optimizer(const torch::nn::Module& model, const RunSettings& run) {
  ParamGroups groups = split_parameters(model);
  log::info("{}", groups.summary());
  if (groups.numel() == 0)
    fail("{}: the model has no trainable parameters (check the freeze settings)", run.config_path);
  return std::make_unique<Optimizer>(std::move(groups), AdamWSettings::from_run(run));
}

}  // namespace minigpt4::train
