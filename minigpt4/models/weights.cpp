#include "minigpt4/models/weights.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/models/layers.h"

#include <map>

namespace minigpt4 {

std::string summarize_names(const std::vector<std::string>& names, size_t max_listed) {
  std::string out;
  // Names come from weight files: each is quoted short (a stranger's may be megabytes).
  for (size_t i = 0; i < names.size() && i < max_listed; ++i) out += (i ? ", " : "") + excerpt(names[i], 120);
  if (names.size() > max_listed) out += fmt::format(" and {} more", names.size() - max_listed);
  return out;
}

LoadResult load_into(torch::nn::Module& module, const StateDict& state, const LoadSpec& spec,
                     std::set<std::string>& filled) {
  LoadResult result;
  result.source = spec.source;
  auto targets = module.named_parameters(/*recurse=*/true);
  auto buffers = module.named_buffers(/*recurse=*/true);
  // Quantised linear weights (low_resource, llm_weight_bits) take a floating tensor by
  // quantising it, together with their scales: the "cast to the parameter's dtype" of such a
  // layer. Their storage has another shape than the [out, in] a file holds (load_weight checks).
  std::map<std::string, Linear*> quantized_weights;
  auto note_quantized = [&](torch::nn::Module* m, const std::string& name) {
    if (auto* linear = dynamic_cast<Linear*>(m); linear && linear->is_quantized()) quantized_weights[name] = linear;
  };
  note_quantized(&module, "weight");  // (named_modules cannot include a root not held by a shared_ptr)
  for (const auto& item : module.named_modules("", /*include_self=*/false))
    note_quantized(item.value().get(), item.key() + ".weight");
  torch::NoGradGuard no_grad;
  for (const auto& [file_key, value] : state) {
    const std::string name = spec.add_prefix + file_key;
    torch::Tensor* target = targets.find(name);
    if (!target) target = buffers.find(name);
    if (!target) {
      if (spec.is_ignorable && spec.is_ignorable(name))
        result.ignored.push_back(name);
      else
        result.unexpected.push_back(name);
      continue;
    }
    const auto q = quantized_weights.find(name);
    if (q != quantized_weights.end() && at::isFloatingType(value.scalar_type())) {
      q->second->load_weight(value, spec.source + ": '" + excerpt(file_key, 120) + "'");
      filled.insert(name);
      result.loaded.push_back(name);
      continue;
    }
    torch::Tensor source = value;
    if (source.sizes() != target->sizes()) {
      torch::Tensor converted;
      if (spec.reshape) converted = spec.reshape(name, value, *target);
      if (!converted.defined() || converted.sizes() != target->sizes())
        fail("{}: '{}' has shape [{}] but the model expects [{}] (check the config's model sizes)", spec.source,
             excerpt(file_key, 120), fmt::join(value.sizes(), ", "), fmt::join(target->sizes(), ", "));
      source = converted;
    }
    if (!at::isFloatingType(source.scalar_type()) && at::isFloatingType(target->scalar_type()))
      fail("{}: '{}' is stored as {} but the model expects floating point", spec.source, excerpt(file_key, 120),
           c10::toString(source.scalar_type()));
    target->copy_(source);
    filled.insert(name);
    result.loaded.push_back(name);
  }
  return result;
}

std::vector<std::string> unfilled_parameters(const torch::nn::Module& module, const std::set<std::string>& filled,
                                             const std::string& prefix) {
  std::vector<std::string> missing;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto name = prefix + item.key();
    if (!filled.count(name)) missing.push_back(name);
  }
  return missing;
}

}  // namespace minigpt4
