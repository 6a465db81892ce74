#include "minigpt4/models/lora.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <re2/re2.h>

#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>

namespace minigpt4::lora {

namespace {

std::string parent_name(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

std::string join_name(const std::string& parent, const std::string& child) {
  return parent.empty() ? child : parent + "." + child;
}

// Patterns come from configs and from PEFT adapter files, that is from strangers: RE2 runs
// in time linear in the name (std::regex backtracks, `(.*.*.*.*)*X` never ends). Python's `re`
// syntax that RE2 lacks (backreferences, lookaround) is a named error. Compiled once per pattern.
const RE2& compile(const std::string& pattern, const std::string& what) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::unique_ptr<RE2>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(pattern); it != cache.end()) return *it->second;
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok())
    fail(
        "LoRA {}: '{}' is not a regular expression this reader accepts ({}; RE2 syntax: no backreferences or "
        "lookaround)",
        what, excerpt(pattern, 200), re->error());
  return *cache.emplace(pattern, std::move(re)).first->second;
}

std::optional<int64_t> to_layer(const std::string& digits) {
  int64_t v = 0;
  return parse_int64(digits, v) ? std::optional<int64_t>(v) : std::nullopt;
}

// The layer index PEFT reads from a module name for layers_to_transform: the number after
// the FIRST `<pattern>.` (at the start or after a dot), or without a pattern after the
// first `<segment>.` that follows a dot. None when the name has no such number.
std::optional<int64_t> layer_index(const std::string& name, const std::vector<std::string>& patterns) {
  std::string digits;
  if (patterns.empty()) {
    static const RE2 any_layer(R"(^.*?\.[^.]*\.(\d+)\.)");
    if (RE2::PartialMatch(name, any_layer, &digits)) return to_layer(digits);
    return std::nullopt;
  }
  for (const auto& pattern : patterns) {
    const auto& layer = compile("^(?:|.*?\\.)" + pattern + "\\.(\\d+)\\.", "layers_pattern");
    if (RE2::PartialMatch(name, layer, &digits)) return to_layer(digits);
  }
  return std::nullopt;
}

// PEFT's rank_pattern / alpha_pattern lookup: the first key matching the end of the name.
template <typename Value>
std::optional<Value> pattern_value(const std::map<std::string, Value>& patterns, const std::string& name) {
  for (const auto& [key, value] : patterns)
    if (RE2::FullMatch(name, compile("(.*\\.)?(" + key + ")", "rank/alpha pattern"))) return value;
  return std::nullopt;
}

void check_adapter_name(const std::string& adapter, const std::string& context) {
  if (adapter.empty() || adapter == kOriginal || adapter.find('.') != std::string::npos)
    fail("{}: '{}' cannot name an adapter (it must be non-empty, contain no '.', and not be '{}')", context, adapter,
         kOriginal);
}

// The LoRA layer of a target, created (with its placeholder host for a part) on first use.
LoraLayer& layer_for(const Target& t) {
  for (const auto& layer : t.linear->lora)
    if (layer->part() == t.part) return *layer;
  torch::nn::Module* host = t.linear.get();
  if (!t.part.empty()) {
    if (t.parent->named_children().contains(t.part))
      fail("LoRA: '{}' already has a submodule named '{}'; the part of the fused layer cannot take that name", t.name,
           t.part);
    host = t.parent->register_module(t.part, std::make_shared<torch::nn::Module>()).get();
  }
  t.linear->lora.push_back(std::make_shared<LoraLayer>(*t.linear, *host, t.part, t.row_begin, t.rows));
  return *t.linear->lora.back();
}

std::string example_names(const std::vector<Target>& targets) {
  std::vector<std::string> names;
  for (size_t i = 0; i < targets.size() && names.size() < 4; i += std::max<size_t>(1, targets.size() / 4))
    names.push_back(targets[i].name);
  return names.empty() ? "(none: no linear layer here)" : fmt::format("{}", fmt::join(names, ", "));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// LoraConfig

bool LoraConfig::matches(const std::string& name) const {
  if (!target_regex.empty()) return RE2::FullMatch(name, compile(target_regex, "target regex"));
  bool found = false;
  for (const auto& t : target_modules) {
    if (t == name) return true;  // a full name selects that module whatever the layer list says (PEFT)
    found = found || ends_with(name, "." + t);
  }
  if (!found || layers_to_transform.empty()) return found;
  const auto index = layer_index(name, layers_pattern);
  const auto& layers = layers_to_transform;
  return index && std::find(layers.begin(), layers.end(), *index) != layers.end();
}

int64_t LoraConfig::rank_for(const std::string& name) const { return pattern_value(rank_pattern, name).value_or(r); }

double LoraConfig::alpha_for(const std::string& name) const {
  return pattern_value(alpha_pattern, name).value_or(lora_alpha);
}

double LoraConfig::scale(int64_t rank, double alpha) const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

void LoraConfig::validate(const std::string& context) const {
  if (r <= 0) fail("{}: r must be a positive rank, got {}", context, r);
  if (!std::isfinite(lora_alpha)) fail("{}: lora_alpha must be a number, got {}", context, lora_alpha);
  if (!(lora_dropout >= 0.0 && lora_dropout < 1.0))
    fail("{}: lora_dropout must be in [0, 1), got {}", context, lora_dropout);
  if (target_modules.empty() == target_regex.empty())
    fail("{}: give either target_modules (names) or a target regex, {}", context,
         target_regex.empty() ? "got neither" : "not both");
  if (!target_regex.empty()) compile(target_regex, context + " target regex");
  for (const auto& [key, rank] : rank_pattern)
    if (rank <= 0) fail("{}: rank_pattern '{}' gives rank {}", context, key, rank);
}

// ---------------------------------------------------------------------------------------
// LoraLayer

LoraLayer::LoraLayer(Linear& base, torch::nn::Module& host, std::string part, int64_t row_begin, int64_t rows)
    : base_(base), part_(std::move(part)), row_begin_(row_begin), rows_(rows) {
  if (row_begin < 0 || rows <= 0 || row_begin + rows > base.weight.size(0))
    fail("LoRA: rows [{}, {}) lie outside a layer with {} outputs", row_begin, row_begin + rows, base.weight.size(0));
  a_dict_ = host.register_module("lora_A", std::make_shared<torch::nn::Module>());
  b_dict_ = host.register_module("lora_B", std::make_shared<torch::nn::Module>());
  // Inference by default; the trainer switches dropout on (set_adapters_training).
  a_dict_->eval();
  b_dict_->eval();
}

void LoraLayer::add(const std::string& adapter, int64_t rank, double scale, double dropout,
                    std::shared_ptr<const LoraConfig> config) {
  if (has(adapter)) fail("LoRA: the layer already holds an adapter named '{}'", adapter);
  if (rank <= 0) fail("LoRA: adapter '{}' has rank {}", adapter, rank);
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(base_.weight.device());
  Adapter a;
  a.A = torch::empty({rank, base_.in_features}, options);
  a.B = torch::zeros({rows_, rank}, options);
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::kaiming_uniform_(a.A, std::sqrt(5.0));  // nn.Linear's default, as PEFT's A
  }
  a.scale = scale;
  a.dropout = dropout;
  a.config = std::move(config);
  auto holder = [](const torch::Tensor& weight) {
    auto m = std::make_shared<torch::nn::Module>();
    m->register_parameter("weight", weight);
    return m;
  };
  const bool dropout_on = training();
  a_dict_->register_module(adapter, holder(a.A));
  b_dict_->register_module(adapter, holder(a.B));
  set_training(dropout_on);  // the new children follow the containers' mode
  adapters_.emplace(adapter, std::move(a));
}

void LoraLayer::remove(const std::string& adapter) {
  if (!has(adapter)) return;
  if (active_ == adapter) set_active("");
  a_dict_->unregister_module(adapter);
  b_dict_->unregister_module(adapter);
  adapters_.erase(adapter);
}

std::vector<std::string> LoraLayer::adapter_names() const {
  std::vector<std::string> names;
  for (const auto& item : adapters_) names.push_back(item.first);
  return names;
}

const LoraLayer::Adapter& LoraLayer::adapter(const std::string& name) const {
  const auto it = adapters_.find(name);
  if (it == adapters_.end()) fail("LoRA: no adapter named '{}' on this layer", name);
  return it->second;
}

void LoraLayer::set_active(const std::string& adapter) {
  const std::string next = has(adapter) ? adapter : "";
  if (next == active_) return;
  if (merged()) unmerge();
  active_ = next;
}

void LoraLayer::add_to_base(const torch::Tensor& A, const torch::Tensor& B, double scale) {
  torch::NoGradGuard no_grad;
  auto rows = base_.weight.narrow(0, row_begin_, rows_);
  if (rows.scalar_type() == A.scalar_type()) {
    rows.addmm_(B, A, /*beta=*/1.0, /*alpha=*/scale);
  } else {
    // A half-precision weight: the update is computed in float32 and the sum rounded once
    // (rounding A and B to the weight's dtype first would cost the update ~3 digits).
    rows.add_(torch::mm(B, A), scale);
  }
}

void LoraLayer::merge() {
  if (active_.empty() || merged()) return;
  if (base_.is_quantized())
    fail("LoRA: adapter '{}' cannot be merged into a quantised ({}) weight; it runs unmerged", active_,
         base_.format().describe());
  const auto& a = adapters_.at(active_);
  // Remembered as its two factors (r x (in + out) floats, not a weight-sized copy), so that
  // unmerging takes out exactly this update even after the adapter trained further.
  Adapter update;
  update.A = a.A.detach().clone();
  update.B = a.B.detach().clone();
  update.scale = a.scale;
  add_to_base(update.A, update.B, update.scale);
  merged_ = std::move(update);
}

void LoraLayer::unmerge() {
  if (!merged_) return;
  add_to_base(merged_->A, merged_->B, -merged_->scale);
  merged_.reset();
}

torch::Tensor LoraLayer::apply(const torch::Tensor& x, torch::Tensor y) const {
  if (active_.empty() || merged()) return y;
  const auto& a = adapters_.at(active_);
  auto h = x.to(a.A.scalar_type()).reshape({-1, x.size(-1)});
  if (a.dropout > 0 && training()) h = torch::dropout(h, a.dropout, /*train=*/true);
  const auto down = torch::mm(h, a.A.t());  // [tokens, r]
  // y is the caller's fresh product: the update goes into it in place (no output copy).
  if (!y.is_contiguous()) y = y.contiguous();
  auto rows = y.view({-1, y.size(-1)});
  if (!part_.empty()) rows = rows.narrow(1, row_begin_, rows_);
  if (y.scalar_type() == a.B.scalar_type())
    rows.addmm_(down, a.B.t(), /*beta=*/1.0, /*alpha=*/a.scale);  // one fused op: y += scale * down B^T
  else
    rows.add_(torch::mm(down, a.B.t()), a.scale);  // computed in float32, rounded once into y
  return y;
}

void LoraLayer::set_training(bool on) {
  a_dict_->train(on);
  b_dict_->train(on);
}

// ---------------------------------------------------------------------------------------
// Whole-model operations

std::vector<Target> linear_targets(torch::nn::Module& root) {
  std::map<std::string, torch::nn::Module*> by_name{{"", &root}};
  const auto modules = root.named_modules("", /*include_self=*/false);
  for (const auto& item : modules) by_name[item.key()] = item.value().get();
  std::vector<Target> targets;
  for (const auto& item : modules) {
    auto linear = std::dynamic_pointer_cast<Linear>(item.value());
    if (!linear) continue;
    targets.push_back({item.key(), linear, nullptr, "", 0, linear->weight.size(0)});
    const auto parent = parent_name(item.key());
    for (const auto& part : linear->parts)
      targets.push_back(
          {join_name(parent, part.name), linear, by_name.at(parent), part.name, part.row_begin, part.rows});
  }
  return targets;
}

std::vector<NamedLoraLayer> lora_layers(torch::nn::Module& root) {
  std::vector<NamedLoraLayer> layers;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    const auto* linear = dynamic_cast<const Linear*>(item.value().get());
    if (!linear) continue;
    for (const auto& layer : linear->lora)
      layers.push_back(
          {layer->part().empty() ? item.key() : join_name(parent_name(item.key()), layer->part()), layer.get()});
  }
  return layers;
}

std::vector<std::string> add_adapter(torch::nn::Module& root, const std::string& adapter, const LoraConfig& config,
                                     const std::string& context) {
  check_adapter_name(adapter, context);
  config.validate(context);
  if (has_adapter(root, adapter)) fail("{}: an adapter named '{}' is already attached", context, adapter);
  const auto shared = std::make_shared<const LoraConfig>(config);
  const auto targets = linear_targets(root);
  std::vector<std::string> names;
  for (const auto& t : targets) {
    if (!config.matches(t.name)) continue;
    const int64_t rank = config.rank_for(t.name);
    layer_for(t).add(adapter, rank, config.scale(rank, config.alpha_for(t.name)), config.lora_dropout, shared);
    names.push_back(t.name);
  }
  if (names.empty()) {
    const std::string selection = config.target_regex.empty()
                                      ? fmt::format("target_modules [{}]", fmt::join(config.target_modules, ", "))
                                      : fmt::format("target regex '{}'", config.target_regex);
    const std::string layers = config.layers_to_transform.empty()
                                   ? ""
                                   : fmt::format(" in layers [{}]", fmt::join(config.layers_to_transform, ", "));
    fail("{}: {}{} match no linear layer; names here look like: {}", context, selection, layers,
         example_names(targets));
  }
  return names;
}

void add_adapter_at(torch::nn::Module& root, const std::string& adapter, const std::map<std::string, PlacedAdapter>& at,
                    const LoraConfig& config, const std::string& source) {
  check_adapter_name(adapter, source);
  if (has_adapter(root, adapter)) fail("{}: an adapter named '{}' is already attached", source, adapter);
  const auto targets = linear_targets(root);
  std::map<std::string, const Target*> by_name;
  for (const auto& t : targets) by_name[t.name] = &t;
  for (const auto& [name, placed] : at)
    if (!by_name.count(name))
      fail("{}: holds weights for '{}', which is not a linear layer of this model (names here look like: {})", source,
           name, example_names(targets));
  const auto shared = std::make_shared<const LoraConfig>(config);
  for (const auto& [name, placed] : at)
    layer_for(*by_name.at(name)).add(adapter, placed.rank, placed.scale, config.lora_dropout, shared);
}

std::vector<std::string> adapter_names(torch::nn::Module& root) {
  std::set<std::string> names;
  for (const auto& l : lora_layers(root))
    for (const auto& n : l.layer->adapter_names()) names.insert(n);
  return {names.begin(), names.end()};
}

bool has_adapter(torch::nn::Module& root, const std::string& adapter) {
  const auto layers = lora_layers(root);
  return std::any_of(layers.begin(), layers.end(), [&](const auto& l) { return l.layer->has(adapter); });
}

void delete_adapter(torch::nn::Module& root, const std::string& adapter) {
  for (const auto& l : lora_layers(root)) l.layer->remove(adapter);
}

void set_active_adapter(torch::nn::Module& root, const std::string& adapter, bool merge) {
  const std::string target = adapter == kOriginal ? "" : adapter;
  const auto layers = lora_layers(root);
  const bool held = std::any_of(layers.begin(), layers.end(), [&](const auto& l) { return l.layer->has(target); });
  if (!target.empty() && !held) {
    auto known = adapter_names(root);
    known.insert(known.begin(), kOriginal);
    fail("unknown LoRA adapter '{}' (known: {})", adapter, fmt::join(known, ", "));
  }
  for (const auto& l : layers) l.layer->set_active(target);
  if (merge) merge_active_adapter(root);
}

std::string active_adapter(torch::nn::Module& root) {
  for (const auto& l : lora_layers(root))
    if (!l.layer->active().empty()) return l.layer->active();
  return kOriginal;
}

void merge_active_adapter(torch::nn::Module& root) {
  const auto layers = lora_layers(root);
  for (const auto& l : layers)  // refuse before anything changes
    if (!l.layer->active().empty() && l.layer->base().is_quantized())
      fail("LoRA: '{}' has a quantised ({}) weight, which an adapter cannot be merged into; use the adapter unmerged",
           l.name, l.layer->base().format().describe());
  for (const auto& l : layers) l.layer->merge();
}

void unmerge_adapters(torch::nn::Module& root) {
  for (const auto& l : lora_layers(root)) l.layer->unmerge();
}

void set_trainable_adapter(torch::nn::Module& root, const std::string& adapter) {
  for (const auto& l : lora_layers(root))
    for (const auto& name : l.layer->adapter_names()) {
      const auto& a = l.layer->adapter(name);
      a.A.set_requires_grad(name == adapter);
      a.B.set_requires_grad(name == adapter);
    }
}

void set_adapters_training(torch::nn::Module& root, bool on) {
  for (const auto& l : lora_layers(root)) l.layer->set_training(on);
}

bool is_adapter_parameter(const std::string& name) {
  for (const char* container : {"lora_A.", "lora_B."}) {
    const auto at = name.find(container);
    if (at != std::string::npos && (at == 0 || name[at - 1] == '.')) return true;
  }
  return false;
}

std::map<std::string, torch::Tensor> adapter_weights(torch::nn::Module& root, const std::string& adapter,
                                                     const std::string& prefix) {
  std::map<std::string, torch::Tensor> weights;
  for (const auto& l : lora_layers(root)) {
    if (!l.layer->has(adapter)) continue;
    const auto& a = l.layer->adapter(adapter);
    weights[prefix + l.name + ".lora_A.weight"] = a.A;
    weights[prefix + l.name + ".lora_B.weight"] = a.B;
  }
  return weights;
}

std::shared_ptr<const LoraConfig> adapter_config(torch::nn::Module& root, const std::string& adapter) {
  for (const auto& l : lora_layers(root))
    if (l.layer->has(adapter)) return l.layer->adapter(adapter).config;
  return nullptr;
}

}  // namespace minigpt4::lora
